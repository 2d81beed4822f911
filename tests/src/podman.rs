//! A private podman (Debian's 4.3, CNI network backend) in a fake host, driving our CNI plugins
//! the way podman users run them: a conflist in podman's network config dir, `podman run
//! --network NAME`. Everything podman keeps (storage, run root, netns, containers) lives under
//! one directory of the fake host and is removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::fakehost::FakeHost;

/// The image every podman test runs (busybox, imported offline).
pub const IMAGE: &str = "localhost/nlt-busybox:1";

pub struct Podman {
    dir: PathBuf,
    netns: PathBuf,
    conf: PathBuf,
    state_dir: PathBuf,
}

impl Podman {
    /// A podman whose CNI plugins are in `plugin_dir` and keep their state in `state_dir`.
    pub fn start(host: &FakeHost, plugin_dir: &Path, state_dir: &Path) -> Result<Podman, String> {
        let dir = host.state_dir().join("podman");
        for d in ["net", "root", "runroot", "tmp", "static", "volumes"] {
            std::fs::create_dir_all(dir.join(d)).map_err(|e| format!("create {d}: {e}"))?;
        }
        let conf = dir.join("containers.conf");
        // cgroupfs and a file event log: no systemd needed. The ulimits: podman's defaults ask
        // for more open files and processes than a sandboxed machine may grant.
        let text = format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{plugins}\"]\n\
             network_config_dir = \"{net}\"\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\n\
             static_dir = \"{d}/static\"\nvolume_path = \"{d}/volumes\"\n",
            plugins = plugin_dir.display(),
            net = dir.join("net").display(),
            d = dir.display(),
        );
        std::fs::write(&conf, text).map_err(|e| format!("write containers.conf: {e}"))?;
        let p = Podman {
            dir,
            netns: host.netns().path().to_path_buf(),
            conf,
            state_dir: state_dir.to_path_buf(),
        };
        let tar = crate::image::busybox_rootfs_tar(&p.dir)?;
        let tar_s = tar.to_string_lossy().into_owned();
        let r = p.ok(&["import", "--change", "ENV PATH=/bin", &tar_s, IMAGE]);
        let _ = std::fs::remove_file(&tar);
        r?;
        Ok(p)
    }

    /// Puts a network's conflist where podman finds it.
    pub fn add_conflist(&self, name: &str, conflist: &serde_json::Value) -> Result<(), String> {
        let path = self.dir.join("net").join(format!("{name}.conflist"));
        std::fs::write(&path, conflist.to_string()).map_err(|e| format!("write conflist: {e}"))
    }

    /// Runs podman in the fake host; the output whatever the status.
    pub fn podman(&self, args: &[&str]) -> Result<Output, String> {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            // Seen by the plugins podman execs for ADD, but not by those of the cleanup
            // process conmon starts (DEL): conflists must carry `stateDir` themselves.
            .env("NETLOOM_STATE_DIR", &self.state_dir)
            .stdin(Stdio::null());
        engine_core::netns::Netns::open(&self.netns)
            .and_then(|ns| ns.command(&mut cmd))
            .map_err(|e| e.to_string())?;
        cmd.output().map_err(|e| format!("run podman: {e}"))
    }

    /// podman, requiring success; its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.podman(args)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "`podman {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// podman, requiring failure; its stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String, String> {
        let out = self.podman(args)?;
        if out.status.success() {
            Err(format!(
                "`podman {}` succeeded but should not",
                args.join(" ")
            ))
        } else {
            Ok(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// A container's address on a network.
    pub fn ip_of(&self, container: &str, network: &str) -> Result<String, String> {
        let f = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        self.ok(&["inspect", "-f", &f, container])
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (podman runs the CNI DEL and removes its netns), then whatever
        // storage mounts remain, then the directory.
        if let Err(e) = self.ok(&["rm", "-a", "-f", "-t", "0"]) {
            eprintln!("podman cleanup: {e}");
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
