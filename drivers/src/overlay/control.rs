//! The overlay's control plane in the global (cluster-wide) store.
//!
//! | key | value |
//! |---|---|
//! | `overlay/networks/<overlay>` | [`OverlayRecord`]: VNI, subnets, UDP port — created once, by whichever host first uses the name |
//! | `overlay/vni/<vni>` | the overlay name: the VNI's claim, created with `Expect::Absent`, so two hosts never take one VNI |
//! | `overlay/endpoints/<overlay>/<host>/<owner>` | [`EndpointRecord`]: the container's addresses, MAC and the host's tunnel address |
//! | `overlay/hosts/<host>` | [`HostRecord`], leased by the host's agent: it disappears when the agent stops renewing |
//! | `overlay/departed/<host>` | [`DepartedRecord`]: when the agents first saw the host's lease gone, and whether its records were purged since |
//!
//! `<host>` is the host's tunnel address (its VTEP): unique in the cluster by construction.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use engine_core::ipam::{Ipam, Release};
use engine_core::netlink::MacAddr;
use engine_core::{Error, Expect, Key, PutOutcome, Result, StateStore, StateStoreExt};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::names;
use super::options::MAX_VNI;

/// Where the overlay's records live in the global store.
pub fn root() -> Key {
    Key::new(["overlay"])
}
pub fn network_key(overlay: &str) -> Key {
    Key::new(["overlay", "networks", overlay])
}
pub fn vni_key(vni: u32) -> Key {
    Key::new(["overlay", "vni", &vni.to_string()])
}
pub fn endpoints_prefix(overlay: &str) -> Key {
    Key::new(["overlay", "endpoints", overlay])
}
pub fn endpoint_key(overlay: &str, host: &str, owner: &str) -> Key {
    Key::new(["overlay", "endpoints", overlay, host, owner])
}
pub fn hosts_prefix() -> Key {
    Key::new(["overlay", "hosts"])
}
pub fn host_key(host: &str) -> Key {
    Key::new(["overlay", "hosts", host])
}
pub fn departed_key(host: &str) -> Key {
    Key::new(["overlay", "departed", host])
}

/// The host id of a tunnel address.
pub fn host_id(vtep: IpAddr) -> String {
    vtep.to_string()
}

/// Automatically chosen VNIs start here, leaving the low ones for people who pin theirs.
pub const AUTO_VNI_BASE: u32 = 4096;

/// One overlay network, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayRecord {
    pub name: String,
    pub vni: u32,
    pub subnets: Vec<IpNetwork>,
    pub port: u16,
}

/// One container's attachment, as remote hosts need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub ips: Vec<IpAddr>,
    pub mac: MacAddrText,
    /// The tunnel address of the host the container runs on.
    pub vtep: IpAddr,
}

/// A MAC address stored as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MacAddrText(pub String);

impl MacAddrText {
    pub fn mac(&self) -> Result<MacAddr> {
        self.0.parse()
    }
}

/// A host taking part in overlays; present only while its agent renews the lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub vtep: IpAddr,
    pub port: u16,
    /// Seconds since the epoch when the agent registered.
    pub since: u64,
}

impl HostRecord {
    pub fn new(vtep: IpAddr, port: u16) -> Self {
        HostRecord {
            vtep,
            port,
            since: now_secs(),
        }
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A host whose lease expired, as the surviving agents saw it. Its endpoint records and
/// address leases stay (the host may come back with its containers) until it has been gone
/// for the purge delay; then one agent purges them and sets `purged`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepartedRecord {
    /// Seconds since the epoch when an agent first saw the host gone (that agent's clock).
    pub since: u64,
    /// Seconds since the epoch when its records were purged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<u64>,
}

/// Notes that `host` is gone; the first agent to see it sets the time, later ones keep it.
pub fn mark_departed(global: &dyn StateStore, host: &str) -> Result<()> {
    let rec = DepartedRecord {
        since: now_secs(),
        purged: None,
    };
    global.put_json(&departed_key(host), &rec, Expect::Absent)?;
    Ok(())
}

/// What [`purge_host`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    pub endpoints: usize,
    pub addresses: usize,
}

/// Removes every record a host that is gone for good left behind: its containers' endpoint
/// records in every overlay and, with `ipam`, the leases of their addresses in the overlays'
/// global pools (so other hosts can hand them out again). Refuses a host whose agent is
/// registered. A record that changes meanwhile (the host came back and re-published it) is
/// left alone.
pub fn purge_host(
    global: &dyn StateStore,
    ipam: Option<&dyn Ipam>,
    host: &str,
) -> Result<PurgeReport> {
    if host_registered(global, host)? {
        return Err(Error::Conflict(format!(
            "overlay host {host} is registered (its agent is alive); stop it before purging its records"
        )));
    }
    let mut report = PurgeReport::default();
    let pools = match ipam {
        Some(i) => i.list_pools()?,
        None => Vec::new(),
    };
    for (k, v) in global.list(&Key::new(["overlay", "endpoints"]))? {
        let Entry::Endpoint {
            overlay, host: h, ..
        } = classify(&k)
        else {
            continue;
        };
        if h != host {
            continue;
        }
        // Addresses first: a crash in between leaves a record that the next purge finds again,
        // never a leased address nobody remembers.
        if let (Some(ipam), Ok(rec)) = (ipam, serde_json::from_slice::<EndpointRecord>(&v.value)) {
            // The overlay's global pools: netloom-vxlan's `cni:overlay:<overlay>:<i>`, which
            // Docker's netloom-ipam shares.
            let prefix = format!("cni:overlay:{overlay}:");
            for ip in &rec.ips {
                for p in pools.iter().filter(|p| p.id.starts_with(&prefix)) {
                    if !p.ranges.iter().any(|r| r.subnet.contains(*ip)) {
                        continue;
                    }
                    let leased = ipam.leases(&p.id)?.iter().any(|l| l.address.ip() == *ip);
                    if leased {
                        ipam.release_address(&p.id, &Release::Address(*ip))?;
                        report.addresses += 1;
                    }
                }
            }
        }
        if let PutOutcome::Written(_) = global.delete(&k, Expect::Version(v.version))? {
            report.endpoints += 1;
        }
    }
    Ok(report)
}

/// What a front door asks for when it uses an overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayRequest {
    pub name: String,
    pub subnets: Vec<IpNetwork>,
    /// A pinned VNI (`vxlanid`); `None` picks a free one.
    pub vni: Option<u32>,
    pub port: u16,
}

/// Returns the overlay's record, creating it (and claiming a VNI) if it is new. Two hosts
/// creating the same overlay at once end up with the same record; two overlays never share a
/// VNI. A pinned VNI that another overlay holds, or settings that differ from the existing
/// record, are a `Conflict`.
pub fn ensure_overlay(global: &dyn StateStore, req: &OverlayRequest) -> Result<OverlayRecord> {
    if let Some((_, rec)) = global.get_json::<OverlayRecord>(&network_key(&req.name))? {
        return matches(&rec, req).map(|()| rec);
    }
    let (vni, claim_version) = claim_vni(global, req)?;
    let rec = OverlayRecord {
        name: req.name.clone(),
        vni,
        subnets: req.subnets.clone(),
        port: req.port,
    };
    match global.put_json(&network_key(&req.name), &rec, Expect::Absent)? {
        PutOutcome::Written(_) => Ok(rec),
        PutOutcome::Mismatch(_) => {
            // Another host created it a moment ago: theirs wins; give our VNI claim back.
            let (_, theirs) = global
                .get_json::<OverlayRecord>(&network_key(&req.name))?
                .ok_or_else(|| {
                    Error::Busy(format!(
                        "overlay {} was created and removed while we created it; try again",
                        req.name
                    ))
                })?;
            if theirs.vni != vni {
                global.delete(&vni_key(vni), Expect::Version(claim_version))?;
            }
            matches(&theirs, req).map(|()| theirs)
        }
    }
}

fn matches(rec: &OverlayRecord, req: &OverlayRequest) -> Result<()> {
    if let Some(v) = req.vni {
        if v != rec.vni {
            return Err(Error::Conflict(format!(
                "overlay {} already exists with VNI {}, not {v}; drop vxlanid or use {}",
                rec.name, rec.vni, rec.vni
            )));
        }
    }
    if rec.subnets != req.subnets {
        return Err(Error::Conflict(format!(
            "overlay {} already exists with subnets {}, not {}",
            rec.name,
            join(&rec.subnets),
            join(&req.subnets)
        )));
    }
    if rec.port != req.port {
        return Err(Error::Conflict(format!(
            "overlay {} already uses VXLAN port {}, not {}",
            rec.name, rec.port, req.port
        )));
    }
    Ok(())
}

fn join(s: &[IpNetwork]) -> String {
    s.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Claims a VNI for `req.name`: the pinned one, or the first free one from a point derived from
/// the name. A claim left by a crashed earlier attempt for the same name is reused.
fn claim_vni(global: &dyn StateStore, req: &OverlayRequest) -> Result<(u32, u64)> {
    let try_claim = |vni: u32| -> Result<std::result::Result<u64, String>> {
        match global.put(&vni_key(vni), req.name.as_bytes(), Expect::Absent)? {
            PutOutcome::Written(v) => Ok(Ok(v)),
            PutOutcome::Mismatch(_) => match global.get(&vni_key(vni))? {
                Some(cur) if cur.value == req.name.as_bytes() => Ok(Ok(cur.version)),
                Some(cur) => Ok(Err(String::from_utf8_lossy(&cur.value).into_owned())),
                // Released in between: try it again next round.
                None => Ok(Err(String::new())),
            },
        }
    };
    if let Some(vni) = req.vni {
        if !(1..=MAX_VNI).contains(&vni) {
            return Err(Error::InvalidConfig(format!(
                "vxlanid {vni} is not a VXLAN network identifier (1-{MAX_VNI})"
            )));
        }
        return match try_claim(vni)? {
            Ok(v) => Ok((vni, v)),
            Err(other) => Err(Error::Conflict(format!(
                "VNI {vni} is taken by overlay {other}; choose another vxlanid or leave it out"
            ))),
        };
    }
    let span = u64::from(MAX_VNI - AUTO_VNI_BASE + 1);
    let start = AUTO_VNI_BASE + (names::hash(&req.name) % span) as u32;
    let mut vni = start;
    // Collisions are rare (random start in 16 million); bound the walk anyway.
    for _ in 0..4096 {
        if let Ok(v) = try_claim(vni)? {
            return Ok((vni, v));
        }
        vni = if vni >= MAX_VNI {
            AUTO_VNI_BASE
        } else {
            vni + 1
        };
    }
    Err(Error::Exhausted(format!(
        "no free VNI found near {start} for overlay {}",
        req.name
    )))
}

/// Publishes one local container so remote hosts can reach it.
pub fn publish_endpoint(
    global: &dyn StateStore,
    overlay: &str,
    owner: &str,
    rec: &EndpointRecord,
) -> Result<()> {
    let key = endpoint_key(overlay, &host_id(rec.vtep), owner);
    global.put_json(&key, rec, Expect::Any)?;
    Ok(())
}

/// Withdraws one local container (idempotent).
pub fn withdraw_endpoint(
    global: &dyn StateStore,
    overlay: &str,
    vtep: IpAddr,
    owner: &str,
) -> Result<()> {
    global.delete(&endpoint_key(overlay, &host_id(vtep), owner), Expect::Any)?;
    Ok(())
}

/// A parsed record below [`root`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Network(String),
    Host(String),
    Departed(String),
    Endpoint {
        overlay: String,
        host: String,
        owner: String,
    },
    Other,
}

/// What a key below [`root`] is.
pub fn classify(key: &Key) -> Entry {
    let s = key.segments();
    match s.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["overlay", "networks", n] => Entry::Network(n.to_string()),
        ["overlay", "hosts", h] => Entry::Host(h.to_string()),
        ["overlay", "departed", h] => Entry::Departed(h.to_string()),
        ["overlay", "endpoints", o, h, w] => Entry::Endpoint {
            overlay: o.to_string(),
            host: h.to_string(),
            owner: w.to_string(),
        },
        _ => Entry::Other,
    }
}

/// The records of the overlay's endpoints on live hosts other than `self_host`.
pub fn remote_endpoints(
    global: &dyn StateStore,
    overlay: &str,
    self_host: &str,
) -> Result<Vec<EndpointRecord>> {
    let hosts: Vec<String> = global
        .list(&hosts_prefix())?
        .into_iter()
        .filter_map(|(k, _)| match classify(&k) {
            Entry::Host(h) => Some(h),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for (k, v) in global.list(&endpoints_prefix(overlay))? {
        let Entry::Endpoint { host, .. } = classify(&k) else {
            continue;
        };
        if host == self_host || !hosts.contains(&host) {
            continue;
        }
        match serde_json::from_slice::<EndpointRecord>(&v.value) {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::warn!(key = %k, error = %e, "skipping an unreadable endpoint record")
            }
        }
    }
    Ok(out)
}

/// Whether the host's agent is registered (its leased record exists).
pub fn host_registered(global: &dyn StateStore, host: &str) -> Result<bool> {
    Ok(global.get(&host_key(host))?.is_some())
}

/// A MAC for a container, derived from its address as Docker's overlay does (`02:42` + the
/// IPv4 address; for IPv6-only, the last four bytes): addresses are unique in the overlay, so
/// MACs are too, and a remote host can be told the MAC before the container exists.
pub fn mac_for(ip: IpAddr) -> MacAddr {
    let b = match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    MacAddr([0x02, 0x42, b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_core::store::file::FileStore;
    use std::sync::Arc;

    fn store(tag: &str) -> (Arc<dyn StateStore>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "netloom-overlay-control-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        (Arc::new(FileStore::open(&dir).unwrap()), dir)
    }

    fn req(name: &str, vni: Option<u32>) -> OverlayRequest {
        OverlayRequest {
            name: name.into(),
            subnets: vec!["10.9.0.0/24".parse().unwrap()],
            vni,
            port: 4789,
        }
    }

    #[test]
    fn vnis_are_claimed_once_and_taken_ones_skipped() {
        let (s, dir) = store("vni");
        // Someone holds the VNI this name would start at: the next one is taken instead.
        let start =
            AUTO_VNI_BASE + (names::hash("web") % u64::from(MAX_VNI - AUTO_VNI_BASE + 1)) as u32;
        s.put(&vni_key(start), b"other", Expect::Absent).unwrap();
        let web = ensure_overlay(s.as_ref(), &req("web", None)).unwrap();
        assert_ne!(web.vni, start);
        assert_eq!(ensure_overlay(s.as_ref(), &req("web", None)).unwrap(), web);
        // A pinned VNI held by another overlay names the holder.
        let e = ensure_overlay(s.as_ref(), &req("db", Some(start))).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("VNI {start} is taken by overlay other")),
            "{e}"
        );
        // Other settings for an existing overlay are a conflict.
        let mut other = req("web", None);
        other.subnets = vec!["10.8.0.0/24".parse().unwrap()];
        assert_eq!(
            ensure_overlay(s.as_ref(), &other).unwrap_err().kind(),
            engine_core::ErrorKind::Conflict
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn parallel_creates_agree() {
        let (s, dir) = store("par");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    // Half create "a", half create their own overlay.
                    let name = if i % 2 == 0 {
                        "a".to_string()
                    } else {
                        format!("b{i}")
                    };
                    ensure_overlay(s.as_ref(), &req(&name, None)).unwrap()
                })
            })
            .collect();
        let recs: Vec<OverlayRecord> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let a: Vec<&OverlayRecord> = recs.iter().filter(|r| r.name == "a").collect();
        assert!(a.iter().all(|r| *r == a[0]));
        let mut vnis: Vec<u32> = recs
            .iter()
            .filter(|r| r.name != "a")
            .map(|r| r.vni)
            .collect();
        vnis.push(a[0].vni);
        let n = vnis.len();
        vnis.sort();
        vnis.dedup();
        assert_eq!(vnis.len(), n, "VNIs collide");
        // Exactly one claim per overlay is left.
        assert_eq!(s.list(&Key::new(["overlay", "vni"])).unwrap().len(), n);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn purge_removes_only_the_departed_hosts_records() {
        let (s, dir) = store("purge");
        let rec = |vtep: &str, ip: &str| EndpointRecord {
            ips: vec![ip.parse().unwrap()],
            mac: MacAddrText("02:42:0a:09:00:02".into()),
            vtep: vtep.parse().unwrap(),
        };
        publish_endpoint(s.as_ref(), "web", "a/eth0", &rec("10.0.0.1", "10.9.0.2")).unwrap();
        publish_endpoint(s.as_ref(), "db", "b/eth0", &rec("10.0.0.1", "10.8.0.2")).unwrap();
        publish_endpoint(s.as_ref(), "web", "c/eth0", &rec("10.0.0.2", "10.9.0.3")).unwrap();
        // 10.0.0.2 is registered: refused.
        s.put(&host_key("10.0.0.2"), b"{}", Expect::Absent).unwrap();
        let e = purge_host(s.as_ref(), None, "10.0.0.2").unwrap_err();
        assert_eq!(e.kind(), engine_core::ErrorKind::Conflict);
        let r = purge_host(s.as_ref(), None, "10.0.0.1").unwrap();
        assert_eq!(r.endpoints, 2);
        let left: Vec<Entry> = s
            .list(&Key::new(["overlay", "endpoints"]))
            .unwrap()
            .iter()
            .map(|(k, _)| classify(k))
            .collect();
        assert_eq!(
            left,
            vec![Entry::Endpoint {
                overlay: "web".into(),
                host: "10.0.0.2".into(),
                owner: "c/eth0".into()
            }]
        );
        // The first note of a departure wins.
        mark_departed(s.as_ref(), "10.0.0.1").unwrap();
        let (_, first) = s
            .get_json::<DepartedRecord>(&departed_key("10.0.0.1"))
            .unwrap()
            .unwrap();
        mark_departed(s.as_ref(), "10.0.0.1").unwrap();
        let (_, again) = s
            .get_json::<DepartedRecord>(&departed_key("10.0.0.1"))
            .unwrap()
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(
            classify(&departed_key("10.0.0.1")),
            Entry::Departed("10.0.0.1".into())
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn keys_classify() {
        assert_eq!(
            classify(&host_key("fd00::1")),
            Entry::Host("fd00::1".into())
        );
        assert_eq!(
            classify(&endpoint_key("web", "10.0.0.1", "c1/eth0")),
            Entry::Endpoint {
                overlay: "web".into(),
                host: "10.0.0.1".into(),
                owner: "c1/eth0".into()
            }
        );
        assert_eq!(classify(&network_key("web")), Entry::Network("web".into()));
        assert_eq!(classify(&vni_key(42)), Entry::Other);
        assert_eq!(
            mac_for("10.1.2.3".parse().unwrap()).to_string(),
            "02:42:0a:01:02:03"
        );
    }
}
