//! Finding every network namespace on the host, whoever made it.
//!
//! Sources, each optional: the namespace netlab runs in ("host"), iproute2's named namespaces
//! under /run/netns, processes (`/proc/<pid>/ns/net`), Docker containers (the API socket),
//! netloom's endpoints (its state store) and CNI's result cache (/var/lib/cni/results). The
//! same namespace seen several ways is one entry, keyed by its nsfs inode.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use engine_core::netns::{Netns, NETNS_RUN_DIR};
use engine_core::store::file::FileStore;
use engine_core::{Endpoint, Key, StateStoreExt};
use serde::Serialize;

use crate::docker;
use crate::error::Result;

/// One way a namespace is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// The namespace netlab itself runs in.
    Host,
    /// `/run/netns/<name>` (iproute2, CNI runtimes, netloom).
    Netns {
        name: String,
        path: PathBuf,
    },
    /// Processes in it; `pid` is the lowest, `processes` how many there are.
    Process {
        pid: u32,
        comm: String,
        processes: usize,
    },
    Docker {
        id: String,
        name: String,
    },
    /// A container attached by netloom or by a CNI runtime.
    Container {
        id: String,
        network: String,
        ifname: String,
        via: String,
    },
}

/// A network namespace and everything it is known as.
#[derive(Debug, Clone, Serialize)]
pub struct Namespace {
    pub inode: u64,
    /// A path that opens it (the first source's).
    pub path: PathBuf,
    pub sources: Vec<Source>,
}

impl Namespace {
    pub fn is_host(&self) -> bool {
        self.sources.iter().any(|s| matches!(s, Source::Host))
    }

    /// The name people know it by: "host", the netns name, the container, else the process.
    pub fn label(&self) -> String {
        let pick = |rank: u8| {
            self.sources.iter().find_map(|s| match (rank, s) {
                (0, Source::Host) => Some("host".to_string()),
                (1, Source::Netns { name, .. }) => Some(name.clone()),
                (2, Source::Docker { name, .. }) => Some(format!("docker:{name}")),
                (3, Source::Container { id, .. }) => Some(format!("container:{}", short(id))),
                (4, Source::Process { pid, comm, .. }) => Some(format!("pid:{pid}({comm})")),
                _ => None,
            })
        };
        (0..5)
            .find_map(pick)
            .unwrap_or_else(|| format!("inode:{}", self.inode))
    }

    pub fn open(&self) -> Result<Netns> {
        Ok(Netns::open(&self.path)?)
    }
}

/// The first 12 characters of a long id, as Docker prints them.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Which sources to read.
#[derive(Debug, Clone)]
pub struct Options {
    pub processes: bool,
    pub docker: bool,
    /// netloom's state directory (read only if it exists).
    pub state_dir: PathBuf,
    /// CNI's result cache directory (read only if it exists).
    pub cni_results: PathBuf,
    pub netns_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            processes: true,
            docker: true,
            state_dir: engine_core::store::default_state_dir(),
            cni_results: PathBuf::from("/var/lib/cni/results"),
            netns_dir: PathBuf::from(NETNS_RUN_DIR),
        }
    }
}

/// The namespaces found, host first, then named ones, then the rest; and what could not be
/// read (a missing Docker socket is not a warning, an unreachable one is).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Discovery {
    pub namespaces: Vec<Namespace>,
    pub warnings: Vec<String>,
}

#[derive(Default)]
struct Collector {
    by_inode: BTreeMap<u64, Namespace>,
}

impl Collector {
    fn add(&mut self, inode: u64, path: &Path, source: Source) {
        let e = self.by_inode.entry(inode).or_insert_with(|| Namespace {
            inode,
            path: path.to_path_buf(),
            sources: Vec::new(),
        });
        if !e.sources.contains(&source) {
            e.sources.push(source);
        }
    }

    /// Adds the namespace at `path` if it can be stat'ed (it may have gone meanwhile).
    fn add_path(&mut self, path: &Path, source: Source) -> bool {
        match fs::metadata(path) {
            Ok(m) => {
                self.add(m.ino(), path, source);
                true
            }
            Err(_) => false,
        }
    }
}

/// Finds the namespaces. Never fails as a whole: an unreadable source becomes a warning.
pub fn discover(opts: &Options) -> Discovery {
    let mut c = Collector::default();
    let mut warnings = Vec::new();
    c.add_path(Path::new("/proc/thread-self/ns/net"), Source::Host);
    // The host entry must open the same namespace later from any thread.
    if let Some(h) = c.by_inode.values_mut().find(|n| n.is_host()) {
        h.path = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
    }
    named(&mut c, &opts.netns_dir);
    // A named path outlives netlab; prefer it in the output.
    if let Some(h) = c.by_inode.values_mut().find(|n| n.is_host()) {
        if let Some(Source::Netns { path, .. }) =
            h.sources.iter().find(|s| matches!(s, Source::Netns { .. }))
        {
            h.path = path.clone();
        }
    }
    if opts.processes {
        processes(&mut c);
    }
    if opts.docker {
        match docker::containers() {
            Ok(Some(list)) => {
                for d in list {
                    let src = Source::Docker {
                        id: d.id.clone(),
                        name: d.name.clone(),
                    };
                    let added = d
                        .sandbox_key
                        .as_deref()
                        .is_some_and(|k| c.add_path(k, src.clone()));
                    if !added && d.pid != 0 {
                        c.add_path(Path::new(&format!("/proc/{}/ns/net", d.pid)), src);
                    }
                }
            }
            Ok(None) => {}
            Err(e) => warnings.push(e.to_string()),
        }
    }
    if let Err(e) = netloom_endpoints(&mut c, &opts.state_dir) {
        warnings.push(format!("netloom state {}: {e}", opts.state_dir.display()));
    }
    cni_results(&mut c, &opts.cni_results);
    let mut namespaces: Vec<Namespace> = c.by_inode.into_values().collect();
    namespaces.sort_by_key(|n| (order(n), n.label()));
    Discovery {
        namespaces,
        warnings,
    }
}

fn order(n: &Namespace) -> u8 {
    if n.is_host() {
        0
    } else if n.sources.iter().any(|s| matches!(s, Source::Netns { .. })) {
        1
    } else if n
        .sources
        .iter()
        .any(|s| matches!(s, Source::Docker { .. } | Source::Container { .. }))
    {
        2
    } else {
        3
    }
}

fn named(c: &mut Collector, dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        // A file under /run/netns that is not (or no longer) a namespace mount stats as a
        // regular empty file on tmpfs; only nsfs inodes open as namespaces, so check the type.
        if Netns::open(&path).is_ok() {
            let src = Source::Netns {
                name,
                path: path.clone(),
            };
            c.add_path(&path, src);
        }
    }
}

fn processes(c: &mut Collector) {
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    // inode -> (lowest pid, count); pids are visited in directory order, not numerically.
    let mut seen: BTreeMap<u64, (u32, usize)> = BTreeMap::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // netlab itself is always in the host entry already.
        if pid == std::process::id() {
            continue;
        }
        let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let s = seen.entry(m.ino()).or_insert((pid, 0));
        s.0 = s.0.min(pid);
        s.1 += 1;
    }
    for (inode, (pid, processes)) in seen {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        // Namespaces already known by a better name only get the process as extra detail.
        c.add(
            inode,
            &path,
            Source::Process {
                pid,
                comm,
                processes,
            },
        );
    }
}

fn netloom_endpoints(c: &mut Collector, dir: &Path) -> Result<()> {
    // Opening creates the directories; a read-only tool must not, so look first.
    if !dir.join("data").is_dir() {
        return Ok(());
    }
    let store = FileStore::open(dir)?;
    for (_, _, ep) in store.list_json::<Endpoint>(&Key::new(["endpoints"]))? {
        if let Some(sb) = &ep.sandbox {
            let src = Source::Container {
                id: ep.key.container_id.clone(),
                network: ep.network_id.clone(),
                ifname: ep.key.ifname.clone(),
                via: "netloom".into(),
            };
            c.add_path(&sb.netns_path, src);
        }
    }
    Ok(())
}

/// libcni caches each ADD's result as JSON; newer versions record the netns path in it.
fn cni_results(c: &mut Collector, dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(text) = fs::read(e.path()) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else {
            continue;
        };
        let s = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let netns = s("netns");
        if netns.is_empty() {
            continue;
        }
        let src = Source::Container {
            id: s("containerId"),
            network: s("networkName"),
            ifname: s("ifName"),
            via: "cni".into(),
        };
        c.add_path(Path::new(&netns), src);
    }
}
