//! Capability probes, run once per test process.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use engine_core::netns::Netns;

/// Something a test may need from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cap {
    Root,
    Nftables,
    Iptables,
    Veth,
    Bridge,
    Vxlan,
    Macvlan,
    Ipvlan,
    Vlan,
    /// Bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING, which needs 802.1Q).
    BridgeVlan,
    Dummy,
    Dockerd,
    /// Debian's podman (4.3, CNI network backend) with runc, driving our CNI plugins.
    Podman,
    Etcd,
    /// The reference CNI plugins (Debian's containernetworking-plugins) in /usr/lib/cni.
    RefCni,
}

impl Cap {
    /// Whether a CI machine of this project is expected to have it: missing ones then fail
    /// under strict mode instead of being skipped. ipvlan, 802.1Q and dummy are absent from
    /// this kernel; their tests run in the QEMU kernel lane. ./test.sh installs dockerd and
    /// etcd (etcd-server).
    pub fn expected_in_ci(self) -> bool {
        !matches!(self, Cap::Ipvlan | Cap::Vlan | Cap::BridgeVlan | Cap::Dummy)
    }
}

/// Probe results: present, or the reason it is missing.
#[derive(Debug)]
pub struct Caps {
    found: BTreeMap<Cap, Result<(), String>>,
}

impl Caps {
    /// The probes of this process (run once).
    pub fn get() -> &'static Caps {
        static CAPS: OnceLock<Caps> = OnceLock::new();
        CAPS.get_or_init(Caps::probe)
    }

    pub fn has(&self, cap: Cap) -> bool {
        matches!(self.found.get(&cap), Some(Ok(())))
    }

    /// Why `cap` is missing, if it is.
    pub fn missing(&self, cap: Cap) -> Option<&str> {
        match self.found.get(&cap) {
            Some(Ok(())) => None,
            Some(Err(why)) => Some(why),
            None => Some("not probed"),
        }
    }

    pub fn summary(&self) -> String {
        self.found
            .iter()
            .map(|(c, r)| match r {
                Ok(()) => format!("{c:?}: yes"),
                Err(why) => format!("{c:?}: no ({why})"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn probe() -> Caps {
        let mut found = BTreeMap::new();
        let root = nix::unistd::geteuid().is_root();
        found.insert(
            Cap::Root,
            if root {
                Ok(())
            } else {
                Err("not running as root".to_string())
            },
        );
        let ns = if root {
            Netns::create_named(&crate::names::unique("probe"))
                .map_err(|e| format!("cannot create a netns: {e}"))
        } else {
            Err("needs root".to_string())
        };
        for (cap, kind) in [
            (Cap::Veth, "veth"),
            (Cap::Bridge, "bridge"),
            (Cap::Vxlan, "vxlan"),
            (Cap::Macvlan, "macvlan"),
            (Cap::Ipvlan, "ipvlan"),
            (Cap::Vlan, "vlan"),
            (Cap::BridgeVlan, "bridge-vlan"),
            (Cap::Dummy, "dummy"),
        ] {
            let r = match &ns {
                Ok(ns) => probe_link(ns, kind),
                Err(e) => Err(e.clone()),
            };
            found.insert(cap, r);
        }
        let nft = match &ns {
            Ok(ns) => probe_cmd(ns, "nft", &["add", "table", "inet", "nltprobe"]),
            Err(e) => Err(e.clone()),
        };
        found.insert(Cap::Nftables, nft);
        let ipt = match &ns {
            Ok(ns) => probe_cmd(
                ns,
                "iptables",
                &["-w", "-t", "filter", "-L", "FORWARD", "-n"],
            ),
            Err(e) => Err(e.clone()),
        };
        found.insert(Cap::Iptables, ipt);
        found.insert(Cap::Dockerd, which("dockerd"));
        found.insert(
            Cap::Podman,
            which("podman").and_then(|()| which("runc").or_else(|_| which("crun"))),
        );
        found.insert(Cap::Etcd, which("etcd"));
        let refcni = std::path::Path::new("/usr/lib/cni/bridge").is_file();
        found.insert(
            Cap::RefCni,
            if refcni {
                Ok(())
            } else {
                Err(
                    "/usr/lib/cni/bridge missing (apt-get install containernetworking-plugins)"
                        .into(),
                )
            },
        );
        Caps { found }
    }
}

fn which(bin: &str) -> Result<(), String> {
    let ok = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(format!("{bin} is not installed"))
    }
}

fn probe_cmd(ns: &Netns, bin: &str, args: &[&str]) -> Result<(), String> {
    which(bin)?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    ns.command(&mut cmd).map_err(|e| e.to_string())?;
    let out = cmd.output().map_err(|e| format!("{bin}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{bin} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Creates a link of `kind` inside the probe namespace with iproute2 (an independent tool: the
/// harness must not trust the product to probe the kernel).
fn probe_link(ns: &Netns, kind: &str) -> Result<(), String> {
    let args: Vec<&str> = match kind {
        "veth" => vec!["link", "add", "p0", "type", "veth", "peer", "name", "p1"],
        "bridge" => vec!["link", "add", "pb", "type", "bridge"],
        "bridge-vlan" => vec![
            "link",
            "add",
            "pbv",
            "type",
            "bridge",
            "vlan_filtering",
            "1",
        ],
        "vxlan" => vec![
            "link", "add", "pvx", "type", "vxlan", "id", "42", "dstport", "4789",
        ],
        "macvlan" | "ipvlan" | "vlan" => {
            // They need a parent: a bridge works for all three, but one of its own each (the
            // kernel refuses ipvlan on a parent that already has a macvlan).
            let parent = match kind {
                "macvlan" => "ppmacvlan",
                "ipvlan" => "ppipvlan",
                _ => "ppvlan",
            };
            let _ = probe_cmd(ns, "ip", &["link", "add", parent, "type", "bridge"]);
            match kind {
                "macvlan" => vec!["link", "add", "pmv", "link", parent, "type", "macvlan"],
                "ipvlan" => vec!["link", "add", "piv", "link", parent, "type", "ipvlan"],
                _ => vec![
                    "link", "add", "pvl", "link", parent, "type", "vlan", "id", "5",
                ],
            }
        }
        "dummy" => vec!["link", "add", "pd", "type", "dummy"],
        _ => return Err(format!("unknown link kind {kind}")),
    };
    probe_cmd(ns, "ip", &args).map_err(|e| format!("kernel has no {kind} links: {e}"))
}
