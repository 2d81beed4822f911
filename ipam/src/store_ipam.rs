//! [`StoreIpam`]: the [`Ipam`] contract over a [`StateStore`], safe for many processes at once.
//!
//! There is no daemon: CNI binaries run in parallel and each one is a short-lived process. Every
//! decision that must be unique is therefore an atomic store operation:
//!
//! - an address is reserved by creating its lease key with `Expect::Absent` (host-local's
//!   `O_EXCL` file);
//! - an owner's index entry is written, with compare-and-swap, *before* its lease, and is
//!   confirmed by a second compare-and-swap after the lease exists: requests for the same
//!   owner are ordered by that one key, and a lease whose confirmation fails is deleted;
//! - pool creation, deletion and the choice of a default subnet happen under the store lock
//!   [`layout::POOLS_LOCK`]; address work never takes it.
//!
//! A process killed at any point leaves at worst an index entry without a lease (completed by
//! the next request of that owner, replaced if the address went to someone else, removed by gc),
//! an unconfirmed lease that its index entry names (a complete lease: the owner gets it back),
//! or data of a deleted pool (wiped when a pool with that id is created again, or by gc). Only
//! a process killed while undoing a lost same-owner race can leave a second lease for an owner;
//! release by owner and gc remove it.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine_core::ipam::{AddressRequest, Ipam, Lease, Pool, PoolRequest, RangeSpec, Release};
use engine_core::store::LockGuard;
use engine_core::{Error, Expect, Key, PutOutcome, Result, ResultExt, StateStore, Versioned};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::allocator::{from_u128, net_bounds, RangeSet, StaticRefusal};
use crate::defaults::DefaultPools;

/// Lists the routes of the host, so default pools avoid subnets already reachable some other
/// way. Tests inject fixed lists; netloom's front doors pass a netlink dump.
pub type RouteProvider = Box<dyn Fn() -> Result<Vec<IpNetwork>> + Send + Sync>;

/// A provider for hosts (and tests) where no route needs avoiding.
pub fn no_host_routes() -> RouteProvider {
    Box::new(|| Ok(Vec::new()))
}

/// Where IPAM keeps its state. Pool records sit apart from lease data so listing pools reads
/// only the records, never every lease of every pool.
pub mod layout {
    use engine_core::Key;
    use std::net::IpAddr;

    /// The store lock held while pools are created or deleted and default subnets chosen.
    pub const POOLS_LOCK: &str = "ipam-pools";

    /// `ipam/pools`: one JSON record per pool below it.
    pub fn pools() -> Key {
        Key::new(["ipam", "pools"])
    }

    /// `ipam/pools/<pool id>`: the pool record (ranges, reserved, refs, generation).
    pub fn pool(id: &str) -> Key {
        pools().join(id)
    }

    /// `ipam/leases/<pool id>`: the pool's leases.
    pub fn leases(id: &str) -> Key {
        Key::new(["ipam", "leases", id])
    }

    /// `ipam/leases/<pool id>/<ip>` = owner. Created with `Expect::Absent`: the reservation.
    pub fn lease(id: &str, ip: IpAddr) -> Key {
        leases(id).join(&ip.to_string())
    }

    /// `ipam/owners/<pool id>`: the owner index.
    pub fn owners(id: &str) -> Key {
        Key::new(["ipam", "owners", id])
    }

    /// `ipam/owners/<pool id>/<owner>` = ip. Trusted only when the lease names the same owner.
    pub fn owner(id: &str, owner: &str) -> Key {
        owners(id).join(owner)
    }

    /// `ipam/last/<pool id>` = the last address handed out dynamically (a hint).
    pub fn last(id: &str) -> Key {
        Key::new(["ipam", "last", id])
    }
}

/// The pool as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PoolRecord {
    id: String,
    /// With start and end filled in.
    ranges: Vec<RangeSpec>,
    #[serde(default)]
    reserved: Vec<IpAddr>,
    refs: u32,
    /// Tells this pool apart from an earlier one with the same id: an allocation that raced
    /// with a release_pool notices the pool it started on is gone.
    generation: String,
    /// The subnet was chosen from the default pools (the request had no ranges).
    #[serde(default)]
    auto: bool,
}

impl PoolRecord {
    fn to_pool(&self) -> Pool {
        Pool {
            id: self.id.clone(),
            ranges: self.ranges.clone(),
            reserved: self.reserved.clone(),
            refs: self.refs,
        }
    }

    fn subnets(&self) -> Vec<IpNetwork> {
        self.ranges.iter().map(|r| r.subnet).collect()
    }
}

/// How many times one request may lose a race against a request for the same owner before it
/// gives up with `Busy`. Requests for different owners never make each other retry.
const MAX_ATTEMPTS: u32 = 64;

/// Candidates probed one by one after the `last` hint before listing the pool's leases. A
/// handful covers a burst of parallel ADDs; past that a listing is cheaper than more probes.
const PROBES_BEFORE_LISTING: usize = 4;

/// IPAM over a state store. Cheap to share: every method works on the store directly.
pub struct StoreIpam {
    store: Arc<dyn StateStore>,
    defaults: DefaultPools,
    host_routes: RouteProvider,
    lock_timeout: Duration,
}

impl fmt::Debug for StoreIpam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreIpam")
            .field("store", &self.store.describe())
            .field("defaults", &self.defaults)
            .field("lock_timeout", &self.lock_timeout)
            .finish_non_exhaustive()
    }
}

enum Outcome {
    Done {
        lease: Lease,
        created: Option<Created>,
    },
    Retry,
}

/// The keys a request wrote, for undoing them if the pool turns out to be gone.
struct Created {
    ip: IpAddr,
    lease_version: u64,
    index_version: u64,
}

impl StoreIpam {
    /// IPAM over `store` with Docker's default pools and a 10 s wait for the pools lock.
    pub fn new(store: Arc<dyn StateStore>, host_routes: RouteProvider) -> Self {
        StoreIpam {
            store,
            defaults: DefaultPools::default(),
            host_routes,
            lock_timeout: Duration::from_secs(10),
        }
    }

    pub fn with_default_pools(mut self, defaults: DefaultPools) -> Self {
        self.defaults = defaults;
        self
    }

    /// How long pool creation and deletion wait for another process doing the same.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    fn lock_pools(&self) -> Result<Box<dyn LockGuard>> {
        self.store
            .lock(layout::POOLS_LOCK, self.lock_timeout)
            .context("IPAM pools")
    }

    fn load(&self, id: &str) -> Result<Option<(u64, PoolRecord)>> {
        let key = layout::pool(id);
        match self.store.get(&key)? {
            None => Ok(None),
            Some(v) => Ok(Some((v.version, decode_record(&key, &v)?))),
        }
    }

    fn load_with_set(&self, id: &str) -> Result<Option<(PoolRecord, RangeSet)>> {
        match self.load(id)? {
            None => Ok(None),
            Some((_, rec)) => {
                let set = RangeSet::new(&rec.ranges, &rec.reserved).map_err(|e| {
                    Error::Internal(format!("stored IPAM pool {id} is not valid: {e}"))
                })?;
                Ok(Some((rec, set)))
            }
        }
    }

    fn all_pools(&self) -> Result<Vec<PoolRecord>> {
        let prefix = layout::pools();
        let depth = prefix.segments().len() + 1;
        let mut out = Vec::new();
        for (key, v) in self.store.list(&prefix)? {
            if key.segments().len() == depth {
                out.push(decode_record(&key, &v)?);
            }
        }
        Ok(out)
    }

    fn bump_refs(&self, id: &str) -> Result<Pool> {
        let (version, mut rec) = self.load(id)?.ok_or_else(|| {
            Error::Internal(format!(
                "IPAM pool {id} vanished while the pools lock was held"
            ))
        })?;
        rec.refs = rec.refs.saturating_add(1);
        put_json(
            &*self.store,
            &layout::pool(id),
            &rec,
            Expect::Version(version),
        )?
        .ok_or_else(|| lock_bypassed(id))?;
        tracing::debug!(pool = %id, refs = rec.refs, "IPAM pool requested again");
        Ok(rec.to_pool())
    }

    /// Creates a pool record; the caller holds the pools lock.
    fn create(&self, id: String, set: &RangeSet, auto: bool) -> Result<Pool> {
        // Leftovers of an earlier pool with this id (a process died while deleting it) must
        // not become leases of the new one.
        self.wipe_data(&id)?;
        let rec = PoolRecord {
            id: id.clone(),
            ranges: set.ranges().iter().map(|r| r.to_spec()).collect(),
            reserved: set.reserved(),
            refs: 1,
            generation: new_generation(),
            auto,
        };
        put_json(&*self.store, &layout::pool(&id), &rec, Expect::Absent)?
            .ok_or_else(|| lock_bypassed(&id))?;
        tracing::info!(pool = %id, subnets = %set.describe(), auto, "IPAM pool created");
        Ok(rec.to_pool())
    }

    fn wipe_data(&self, id: &str) -> Result<()> {
        for prefix in [layout::leases(id), layout::owners(id)] {
            for (key, _) in self.store.list(&prefix)? {
                self.store.delete(&key, Expect::Any)?;
            }
        }
        self.store.delete(&layout::last(id), Expect::Any)?;
        Ok(())
    }

    fn request_explicit(&self, req: &PoolRequest, set: RangeSet) -> Result<Pool> {
        let id = match &req.id {
            Some(id) => id.clone(),
            None => set.describe(),
        };
        let ranges: Vec<RangeSpec> = set.ranges().iter().map(|r| r.to_spec()).collect();
        let _lock = self.lock_pools()?;
        let pools = self.all_pools()?;
        if let Some(rec) = pools.iter().find(|p| p.id == id) {
            if !rec.auto && rec.ranges == ranges && rec.reserved == set.reserved() {
                return self.bump_refs(&id);
            }
            return Err(different_settings(rec));
        }
        // CNI networks are independent by name (host-local keeps a directory per network), so
        // their ranges may overlap; everyone else gets the overlap check.
        let allow_overlap = req
            .options
            .get(engine_core::ipam::OPT_ALLOW_OVERLAP)
            .map(String::as_str)
            == Some("true");
        for r in set.ranges().iter().filter(|_| !allow_overlap) {
            for other in &pools {
                if let Some(s) = other.subnets().into_iter().find(|s| overlaps(s, &r.subnet)) {
                    let detail = if s == r.subnet {
                        String::new()
                    } else {
                        format!(" (subnet {s})")
                    };
                    return Err(Error::Conflict(format!(
                        "subnet {} overlaps pool {}{detail}",
                        r.subnet, other.id
                    )));
                }
            }
        }
        self.create(id, &set, false)
    }

    fn request_default(&self, req: &PoolRequest) -> Result<Pool> {
        let family = if req.v6 { "IPv6" } else { "IPv4" };
        let reserved: Vec<IpAddr> = req
            .reserved
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let _lock = self.lock_pools()?;
        let pools = self.all_pools()?;
        if let Some(id) = &req.id {
            if let Some(rec) = pools.iter().find(|p| &p.id == id) {
                let same_family = rec.ranges.first().map(|r| r.subnet.is_ipv6()) == Some(req.v6);
                if rec.auto && same_family && rec.reserved == reserved {
                    return self.bump_refs(id);
                }
                return Err(different_settings(rec));
            }
        }
        let mut in_use: Vec<IpNetwork> = pools.iter().flat_map(PoolRecord::subnets).collect();
        in_use.extend(
            (self.host_routes)().context("list the host's routes to pick a free default subnet")?,
        );
        let subnet = self.defaults.choose(req.v6, &in_use).ok_or_else(|| {
            let bases: Vec<String> = self
                .defaults
                .pools()
                .iter()
                .filter(|p| p.base.is_ipv6() == req.v6)
                .map(|p| format!("{} as /{}", p.base, p.size))
                .collect();
            Error::Exhausted(format!(
                "no free default {family} subnet: every candidate in the default pools ({}) overlaps a pool or a route on this host; give a subnet or configure more default address pools",
                if bases.is_empty() { "none configured".to_string() } else { bases.join(", ") }
            ))
        })?;
        // Like host-local and Docker's bridge: the first address is the gateway.
        let (network, _) = net_bounds(&subnet);
        let spec = RangeSpec {
            subnet,
            start: None,
            end: None,
            gateway: Some(from_u128(network + 1, req.v6)),
        };
        let set = RangeSet::new(&[spec], &reserved)?;
        let id = match &req.id {
            Some(id) => id.clone(),
            None => {
                // A caller-chosen id may happen to look like a subnet; never share it.
                let base = subnet.to_string();
                let taken: HashSet<&str> = pools.iter().map(|p| p.id.as_str()).collect();
                (1..)
                    .map(|n| {
                        if n == 1 {
                            base.clone()
                        } else {
                            format!("{base}#{n}")
                        }
                    })
                    .find(|c| !taken.contains(c.as_str()))
                    .unwrap_or(base)
            }
        };
        self.create(id, &set, true)
    }

    /// Who holds `ip` in the pool, and the lease version.
    fn holder(&self, pool_id: &str, ip: IpAddr) -> Result<Option<(u64, String)>> {
        Ok(self
            .store
            .get(&layout::lease(pool_id, ip))?
            .map(|v| (v.version, owner_of(&v))))
    }

    /// The owner's index entry: its version and the address it names (None if unreadable).
    fn index(&self, pool_id: &str, owner: &str) -> Result<Option<(u64, Option<IpAddr>)>> {
        Ok(self
            .store
            .get(&layout::owner(pool_id, owner))?
            .map(|v| (v.version, parse_ip(&v))))
    }

    /// One attempt at an allocation; `Retry` when a request for the same owner interfered.
    fn try_allocate(
        &self,
        rec: &PoolRecord,
        set: &RangeSet,
        req: &AddressRequest,
    ) -> Result<Outcome> {
        let pool_id = rec.id.as_str();
        let owner = req.owner.as_str();
        let mut index_expect = Expect::Absent;
        if let Some((vi, named)) = self.index(pool_id, owner)? {
            index_expect = Expect::Version(vi);
            if let Some(x) = named {
                match self.holder(pool_id, x)? {
                    Some((_, h)) if h == owner => {
                        return match req.address {
                            Some(a) if a != x => Err(Error::Conflict(format!(
                                "{owner} already holds {x} in pool {pool_id}; release it before asking for {a}"
                            ))),
                            _ => Ok(Outcome::Done { lease: lease_for(rec, set, owner, x)?, created: None }),
                        };
                    }
                    None if req.address.is_none_or(|a| a == x) && set.check_static(x).is_ok() => {
                        // Either a request for this owner is between its index write and its
                        // lease write, or one died there. Completing the reservation is right
                        // in both cases; the confirming swap on the index settles who keeps it.
                        return match self.store.put(
                            &layout::lease(pool_id, x),
                            owner.as_bytes(),
                            Expect::Absent,
                        )? {
                            PutOutcome::Written(vl) => self.confirm(rec, set, owner, x, vl, vi),
                            PutOutcome::Mismatch(_) => Ok(Outcome::Retry),
                        };
                    }
                    // Held by someone else (or unusable): the entry is stale and gets replaced.
                    _ => {}
                }
            }
        }
        match req.address {
            Some(a) => self.claim_static(rec, set, owner, a, index_expect),
            None => self.claim_next(rec, set, owner, index_expect),
        }
    }

    fn claim_static(
        &self,
        rec: &PoolRecord,
        set: &RangeSet,
        owner: &str,
        a: IpAddr,
        index_expect: Expect,
    ) -> Result<Outcome> {
        let pool_id = rec.id.as_str();
        let index_key = layout::owner(pool_id, owner);
        let PutOutcome::Written(vn) =
            self.store
                .put(&index_key, a.to_string().as_bytes(), index_expect)?
        else {
            return Ok(Outcome::Retry);
        };
        match self
            .store
            .put(&layout::lease(pool_id, a), owner.as_bytes(), Expect::Absent)?
        {
            PutOutcome::Written(vl) => self.confirm(rec, set, owner, a, vl, vn),
            PutOutcome::Mismatch(_) => match self.holder(pool_id, a)? {
                // A request for this owner completed our reservation and confirmed it (the
                // next attempt returns it) or is about to fail its confirmation.
                Some((_, h)) if h == owner => Ok(Outcome::Retry),
                Some((_, h)) => {
                    self.store.delete(&index_key, Expect::Version(vn))?;
                    Err(Error::Conflict(format!(
                        "address {a} is already leased to {h} in pool {pool_id}"
                    )))
                }
                // Released in between: the next attempt finds our index entry and completes it.
                None => Ok(Outcome::Retry),
            },
        }
    }

    fn claim_next(
        &self,
        rec: &PoolRecord,
        set: &RangeSet,
        owner: &str,
        mut index_expect: Expect,
    ) -> Result<Outcome> {
        let pool_id = rec.id.as_str();
        let index_key = layout::owner(pool_id, owner);
        let last = self
            .store
            .get(&layout::last(pool_id))?
            .and_then(|v| parse_ip(&v));
        let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
        let mut listed: Option<usize> = None;
        let mut written_index: Option<u64> = None;
        loop {
            let Some(cand) = set.next_free(last, &taken) else {
                if listed.is_none() {
                    // Only what we collided with is known so far; look at everything once.
                    listed = Some(self.add_leases(pool_id, &mut taken)?);
                    continue;
                }
                if let Some(vn) = written_index {
                    self.store.delete(&index_key, Expect::Version(vn))?;
                }
                let in_use = listed.unwrap_or(taken.len());
                return Err(Error::Exhausted(format!(
                    "pool {pool_id} has no free address ({in_use} in use)"
                )));
            };
            let PutOutcome::Written(vn) =
                self.store
                    .put(&index_key, cand.ip.to_string().as_bytes(), index_expect)?
            else {
                return Ok(Outcome::Retry);
            };
            written_index = Some(vn);
            index_expect = Expect::Version(vn);
            match self.store.put(
                &layout::lease(pool_id, cand.ip),
                owner.as_bytes(),
                Expect::Absent,
            )? {
                PutOutcome::Written(vl) => {
                    let outcome = self.confirm(rec, set, owner, cand.ip, vl, vn)?;
                    if matches!(outcome, Outcome::Done { .. }) {
                        // Only a hint: a lost update moves the next search a little backwards.
                        if let Err(e) = self.store.put(
                            &layout::last(pool_id),
                            cand.ip.to_string().as_bytes(),
                            Expect::Any,
                        ) {
                            tracing::debug!(pool = %pool_id, error = %e, "could not record the last allocated address");
                        }
                    }
                    return Ok(outcome);
                }
                // Held by another owner, or by this owner through a request that completed our
                // reservation: then our next index write fails and the retry returns it.
                PutOutcome::Mismatch(_) => {
                    taken.insert(cand.ip);
                    if listed.is_none() && taken.len() >= PROBES_BEFORE_LISTING {
                        listed = Some(self.add_leases(pool_id, &mut taken)?);
                    }
                }
            }
        }
    }

    /// Adds every leased address of the pool to `taken`; returns how many leases there are.
    fn add_leases(&self, pool_id: &str, taken: &mut BTreeSet<IpAddr>) -> Result<usize> {
        let leases = self.store.list(&layout::leases(pool_id))?;
        let mut n = 0;
        for (key, _) in leases {
            if let Some(ip) = key.last().and_then(|s| s.parse().ok()) {
                taken.insert(ip);
                n += 1;
            }
        }
        Ok(n)
    }

    /// After creating a lease: keep it only if the owner index is still at the version that
    /// named this address, and bump that version in the same compare-and-swap. A request for the
    /// same owner that read the index earlier and wants to point it elsewhere now fails its own
    /// swap, so the index key orders all requests of one owner and at most one lease survives.
    fn confirm(
        &self,
        rec: &PoolRecord,
        set: &RangeSet,
        owner: &str,
        ip: IpAddr,
        lease_version: u64,
        index_version: u64,
    ) -> Result<Outcome> {
        let index_key = layout::owner(&rec.id, owner);
        match self.store.put(
            &index_key,
            ip.to_string().as_bytes(),
            Expect::Version(index_version),
        )? {
            PutOutcome::Written(confirmed) => {
                let lease = lease_for(rec, set, owner, ip)?;
                Ok(Outcome::Done {
                    lease,
                    created: Some(Created {
                        ip,
                        lease_version,
                        index_version: confirmed,
                    }),
                })
            }
            PutOutcome::Mismatch(_) => {
                self.store
                    .delete(&layout::lease(&rec.id, ip), Expect::Version(lease_version))?;
                Ok(Outcome::Retry)
            }
        }
    }

    /// Undoes a fresh reservation (the pool went away under it).
    fn undo(&self, pool_id: &str, owner: &str, c: &Created) -> Result<()> {
        self.store.delete(
            &layout::lease(pool_id, c.ip),
            Expect::Version(c.lease_version),
        )?;
        self.store.delete(
            &layout::owner(pool_id, owner),
            Expect::Version(c.index_version),
        )?;
        Ok(())
    }

    /// Deletes the lease of `ip` if it still is at `version`, then the holder's index entry
    /// if it names `ip`. Lease first: an index entry without a lease is harmless, the reverse
    /// would hide a lease from its owner.
    fn free(&self, pool_id: &str, ip: IpAddr, version: u64, holder: &str) -> Result<bool> {
        if !self
            .store
            .delete(&layout::lease(pool_id, ip), Expect::Version(version))?
            .is_written()
        {
            return Ok(false);
        }
        if let Some((vi, Some(named))) = self.index(pool_id, holder)? {
            if named == ip {
                self.store
                    .delete(&layout::owner(pool_id, holder), Expect::Version(vi))?;
            }
        }
        tracing::debug!(pool = %pool_id, %ip, owner = %holder, "IPAM lease released");
        Ok(true)
    }

    fn release_owner(&self, pool_id: &str, owner: &str) -> Result<()> {
        let index = self.index(pool_id, owner)?;
        if let Some((_, Some(x))) = index {
            if let Some((vl, h)) = self.holder(pool_id, x)? {
                if h == owner {
                    self.free(pool_id, x, vl, owner)?;
                    return Ok(());
                }
            }
        }
        // No usable index entry: a lease could only exist after a request for this owner lost
        // a race and died before undoing it. Rare, and DEL must not leave it behind.
        for (key, v) in self.store.list(&layout::leases(pool_id))? {
            if owner_of(&v) == owner {
                if let Some(ip) = key.last().and_then(|s| s.parse().ok()) {
                    self.free(pool_id, ip, v.version, owner)?;
                }
            }
        }
        if let Some((vi, _)) = index {
            self.store
                .delete(&layout::owner(pool_id, owner), Expect::Version(vi))?;
        }
        Ok(())
    }

    fn release_ip(&self, pool_id: &str, ip: IpAddr) -> Result<()> {
        // A new lease may be created between our read and delete; then it is someone else's
        // address and the one asked about is already free.
        if let Some((vl, h)) = self.holder(pool_id, ip)? {
            self.free(pool_id, ip, vl, &h)?;
        }
        Ok(())
    }
}

impl Ipam for StoreIpam {
    fn request_pool(&self, req: &PoolRequest) -> Result<Pool> {
        if req.id.as_deref() == Some("") {
            return Err(Error::InvalidConfig("a pool id must not be empty".into()));
        }
        if req.ranges.is_empty() {
            self.request_default(req)
        } else {
            let set = RangeSet::new(&req.ranges, &req.reserved)?;
            self.request_explicit(req, set)
        }
    }

    fn release_pool(&self, pool_id: &str) -> Result<()> {
        let _lock = self.lock_pools()?;
        let (version, mut rec) = self
            .load(pool_id)?
            .ok_or_else(|| Error::NotFound(format!("pool {pool_id} does not exist")))?;
        if rec.refs > 1 {
            rec.refs -= 1;
            put_json(
                &*self.store,
                &layout::pool(pool_id),
                &rec,
                Expect::Version(version),
            )?
            .ok_or_else(|| lock_bypassed(pool_id))?;
            return Ok(());
        }
        // Record first: allocations racing with us see the pool gone and undo themselves.
        if !self
            .store
            .delete(&layout::pool(pool_id), Expect::Version(version))?
            .is_written()
        {
            return Err(lock_bypassed(pool_id));
        }
        self.wipe_data(pool_id)?;
        tracing::info!(pool = %pool_id, "IPAM pool released");
        Ok(())
    }

    fn get_pool(&self, pool_id: &str) -> Result<Option<Pool>> {
        Ok(self.load(pool_id)?.map(|(_, r)| r.to_pool()))
    }

    fn list_pools(&self) -> Result<Vec<Pool>> {
        Ok(self.all_pools()?.iter().map(PoolRecord::to_pool).collect())
    }

    fn request_address(&self, pool_id: &str, req: &AddressRequest) -> Result<Lease> {
        if req.owner.is_empty() {
            return Err(Error::InvalidConfig(
                "an address request needs an owner".into(),
            ));
        }
        let (rec, set) = self
            .load_with_set(pool_id)?
            .ok_or_else(|| Error::NotFound(format!("pool {pool_id} does not exist")))?;
        if let Some(a) = req.address {
            check_static(&rec, &set, a)?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let Outcome::Done { lease, created } = self.try_allocate(&rec, &set, req)? else {
                continue;
            };
            if let Some(c) = created {
                // The pool may have been released (and even re-created) while we worked.
                let current = self.load(pool_id)?.map(|(_, r)| r.generation);
                if current.as_deref() != Some(rec.generation.as_str()) {
                    self.undo(pool_id, &req.owner, &c)?;
                    return Err(Error::NotFound(format!(
                        "pool {pool_id} was released while an address was being leased from it"
                    )));
                }
                tracing::debug!(pool = %pool_id, owner = %req.owner, address = %lease.address, "IPAM lease granted");
            }
            return Ok(lease);
        }
        Err(Error::Busy(format!(
            "could not lease an address for {} in pool {pool_id}: {MAX_ATTEMPTS} attempts lost races with other requests for the same owner",
            req.owner
        )))
    }

    fn release_address(&self, pool_id: &str, which: &Release) -> Result<()> {
        match which {
            Release::Owner(owner) => self.release_owner(pool_id, owner),
            Release::Address(ip) => self.release_ip(pool_id, *ip),
        }
        .with_context(|| format!("release address in pool {pool_id}"))
    }

    fn leases(&self, pool_id: &str) -> Result<Vec<Lease>> {
        let (rec, set) = self
            .load_with_set(pool_id)?
            .ok_or_else(|| Error::NotFound(format!("pool {pool_id} does not exist")))?;
        let mut out = Vec::new();
        for (key, v) in self.store.list(&layout::leases(pool_id))? {
            if let Some(ip) = key.last().and_then(|s| s.parse().ok()) {
                if let Ok(lease) = lease_for(&rec, &set, &owner_of(&v), ip) {
                    out.push(lease);
                }
            }
        }
        // Keys sort as text (10.1.0.10 before 10.1.0.2); people read addresses in order.
        out.sort_by_key(|l| l.address.ip());
        Ok(out)
    }

    fn gc(&self, pool_id: &str, live: &[String]) -> Result<Vec<Lease>> {
        let Some((rec, set)) = self.load_with_set(pool_id)? else {
            // Nothing can be leased from a pool that does not exist; remove what a process
            // that died while deleting it may have left.
            let _lock = self.lock_pools()?;
            if self.load(pool_id)?.is_none() {
                self.wipe_data(pool_id)?;
            }
            return Ok(Vec::new());
        };
        let live: HashSet<&str> = live.iter().map(String::as_str).collect();
        let mut freed = Vec::new();
        for (key, v) in self.store.list(&layout::leases(pool_id))? {
            let holder = owner_of(&v);
            if live.contains(holder.as_str()) {
                continue;
            }
            let Some(ip) = key.last().and_then(|s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            if self.free(pool_id, ip, v.version, &holder)? {
                if let Ok(lease) = lease_for(&rec, &set, &holder, ip) {
                    freed.push(lease);
                }
            }
        }
        // Index entries of owners that are gone and hold no lease (a request died before its
        // lease write).
        for (key, v) in self.store.list(&layout::owners(pool_id))? {
            let Some(owner) = key.last() else { continue };
            if live.contains(owner.as_str()) {
                continue;
            }
            let holds = match parse_ip(&v) {
                Some(ip) => self.holder(pool_id, ip)?.is_some_and(|(_, h)| h == owner),
                None => false,
            };
            if !holds {
                self.store.delete(&key, Expect::Version(v.version))?;
            }
        }
        freed.sort_by_key(|l| l.address.ip());
        Ok(freed)
    }
}

fn check_static(rec: &PoolRecord, set: &RangeSet, a: IpAddr) -> Result<()> {
    let id = &rec.id;
    match set.check_static(a) {
        Ok(_) => Ok(()),
        Err(StaticRefusal::OutsideSubnets) => Err(Error::InvalidConfig(format!(
            "address {a} is not in pool {id} ({})",
            set.describe()
        ))),
        Err(StaticRefusal::NetworkAddress(net)) => Err(Error::InvalidConfig(format!(
            "address {a} is the network address of {net}"
        ))),
        Err(StaticRefusal::Broadcast(net)) => Err(Error::InvalidConfig(format!(
            "address {a} is the broadcast address of {net}"
        ))),
        Err(StaticRefusal::Gateway) => Err(Error::Conflict(format!(
            "address {a} is the gateway of pool {id}"
        ))),
        Err(StaticRefusal::Reserved) => Err(Error::Conflict(format!(
            "address {a} is reserved in pool {id}"
        ))),
    }
}

fn lease_for(rec: &PoolRecord, set: &RangeSet, owner: &str, ip: IpAddr) -> Result<Lease> {
    let idx = set.check_static(ip).map_err(|_| {
        Error::Internal(format!(
            "leased address {ip} is not usable in pool {}",
            rec.id
        ))
    })?;
    let range = &set.ranges()[idx];
    let address = IpNetwork::new(ip, range.subnet.prefix())
        .map_err(|e| Error::Internal(format!("address {ip}/{}: {e}", range.subnet.prefix())))?;
    Ok(Lease {
        pool_id: rec.id.clone(),
        owner: owner.to_string(),
        address,
        gateway: range.gateway(),
    })
}

fn different_settings(rec: &PoolRecord) -> Error {
    let subnets: Vec<String> = rec.subnets().iter().map(ToString::to_string).collect();
    Error::Conflict(format!(
        "pool {} already exists with different settings (subnets {}{}); use the same settings, another id, or release it first",
        rec.id,
        subnets.join(","),
        if rec.auto { ", chosen from the default pools" } else { "" }
    ))
}

fn lock_bypassed(id: &str) -> Error {
    Error::Internal(format!(
        "IPAM pool {id} changed although the pools lock was held"
    ))
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    if a.is_ipv6() != b.is_ipv6() {
        return false;
    }
    let (a_lo, a_hi) = net_bounds(a);
    let (b_lo, b_hi) = net_bounds(b);
    a_lo <= b_hi && b_lo <= a_hi
}

fn decode_record(key: &Key, v: &Versioned) -> Result<PoolRecord> {
    serde_json::from_slice(&v.value)
        .map_err(|e| Error::Internal(format!("IPAM pool record {key} is corrupt: {e}")))
}

fn put_json<T: Serialize>(
    store: &dyn StateStore,
    key: &Key,
    value: &T,
    expect: Expect,
) -> Result<Option<u64>> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::json(format!("encode {key}"), e))?;
    Ok(match store.put(key, &bytes, expect)? {
        PutOutcome::Written(v) => Some(v),
        PutOutcome::Mismatch(_) => None,
    })
}

fn owner_of(v: &Versioned) -> String {
    String::from_utf8_lossy(&v.value).into_owned()
}

fn parse_ip(v: &Versioned) -> Option<IpAddr> {
    std::str::from_utf8(&v.value).ok()?.trim().parse().ok()
}

fn new_generation() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{nanos:x}-{:x}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
