//! What one process knows of the ruleset at one generation, indexed for cheap updates.
//!
//! Built from a [`Snapshot`] and then kept up to date with the process's own changes, so an
//! endpoint operation costs the same whatever the number of published ports: element lookups
//! by key and by tag, and port claims, are hash lookups, and applying a commit touches only the
//! elements it changed.

use std::collections::{HashMap, HashSet};
use std::ops::Deref;

use super::wire::{ElemInfo, Snapshot};
use crate::firewall::ir::{ElemData, Element, Family};
use crate::firewall::plan::{self, Claims, Holding};

/// An element's identity in its set: key, and range end for interval sets.
pub type Slot = (Vec<u8>, Option<Vec<u8>>);

fn slot(e: &ElemInfo) -> Slot {
    (e.key.clone(), e.key_end.clone())
}

#[derive(Debug, Default)]
pub struct SetElems {
    by_slot: HashMap<Slot, ElemInfo>,
    by_tag: HashMap<String, HashSet<Slot>>,
}

impl SetElems {
    fn insert(&mut self, e: ElemInfo) {
        let s = slot(&e);
        self.remove(&s);
        self.by_tag
            .entry(e.comment.clone())
            .or_default()
            .insert(s.clone());
        self.by_slot.insert(s, e);
    }

    fn remove(&mut self, s: &Slot) -> Option<ElemInfo> {
        let e = self.by_slot.remove(s)?;
        if let Some(t) = self.by_tag.get_mut(&e.comment) {
            t.remove(s);
            if t.is_empty() {
                self.by_tag.remove(&e.comment);
            }
        }
        Some(e)
    }

    /// The element in `e`'s slot, if any.
    pub fn get(&self, e: &ElemInfo) -> Option<&ElemInfo> {
        self.by_slot.get(&slot(e))
    }

    pub fn tagged(&self, tag: &str) -> Vec<&ElemInfo> {
        self.by_tag
            .get(tag)
            .map(|v| v.iter().filter_map(|s| self.by_slot.get(s)).collect())
            .unwrap_or_default()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ElemInfo> {
        self.by_slot.values()
    }
}

/// An element change, to keep a [`View`] current after a commit.
pub enum Change {
    Add(ElemInfo),
    Del(ElemInfo),
}

#[derive(Debug, Default)]
pub struct View {
    snap: Snapshot,
    sets: HashMap<(Family, String), SetElems>,
    pub claims: Claims,
    /// Whether the sets were read whole; a view built from a few element lookups only knows
    /// those elements (and is never cached).
    pub complete: bool,
}

static EMPTY: std::sync::LazyLock<SetElems> = std::sync::LazyLock::new(SetElems::default);

impl View {
    pub fn new(mut snap: Snapshot, complete: bool) -> View {
        let mut v = View {
            complete,
            ..View::default()
        };
        for ((fam, set), elems) in std::mem::take(&mut snap.elements) {
            let mut se = SetElems::default();
            for e in elems {
                if let Some(h) = holding(fam, &set, &e) {
                    v.claims.insert(h);
                }
                se.insert(e);
            }
            v.sets.insert((fam, set), se);
        }
        v.snap = snap;
        v
    }

    pub fn elems(&self, f: Family, set: &str) -> &SetElems {
        self.sets.get(&(f, set.to_string())).unwrap_or(&EMPTY)
    }

    /// Applies the changes of a committed transaction; `genid` is the generation after it.
    pub fn apply(&mut self, changes: Vec<(Family, &'static str, Change)>, genid: u32) {
        for (fam, set, c) in changes {
            let se = self.sets.entry((fam, set.to_string())).or_default();
            match c {
                Change::Add(e) => {
                    if let Some(h) = holding(fam, set, &e) {
                        self.claims.insert(h);
                    }
                    se.insert(e);
                }
                Change::Del(e) => {
                    if let Some(old) = se.remove(&slot(&e)) {
                        if let Some(h) = holding(fam, set, &old) {
                            self.claims.remove(&h);
                        }
                    }
                }
            }
        }
        self.snap.genid = genid;
    }
}

impl Deref for View {
    type Target = Snapshot;
    fn deref(&self) -> &Snapshot {
        &self.snap
    }
}

/// The host-port claim of an element of a DNAT map (None for other sets).
pub fn holding(family: Family, set: &str, x: &ElemInfo) -> Option<Holding> {
    if family != Family::Inet {
        return None;
    }
    let m = plan::DnatMap::by_name(set)?;
    let key = plan::decode_dnat_key(m, &x.key)?;
    let end = x.key_end.as_ref().and_then(|k| plan::decode_dnat_key(m, k));
    let data = x.data.as_ref().and_then(|d| plan::decode_dnat_value(m, d));
    let e = Element {
        key,
        key_end: end,
        data: data.map(ElemData::Values),
        comment: x.comment.clone(),
    };
    Holding::of(m, &e)
}
