//! Command line and optional TOML config file; flags win over the file, the file over defaults.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;
use engine_core::firewall::FirewallChoice;
use serde::Deserialize;

/// netloomd: netloom's Docker network and IPAM plugins.
///
/// Serves Docker's remote NetworkDriver protocol on <plugin-dir>/<prefix>-bridge.sock and the
/// IpamDriver protocol on <plugin-dir>/<prefix>-ipam.sock, so that
/// `docker network create -d netloom-bridge --ipam-driver netloom-ipam …` works; and a small admin
/// API (health, networks, endpoints, Prometheus metrics) on --admin-socket.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "netloomd", version)]
pub struct Cli {
    /// TOML file with any of the settings below (kebab-case keys); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State store directory, shared with the CNI plugins [default: /var/lib/netloom, or
    /// $NETLOOM_STATE_DIR].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where Docker looks for plugin sockets [default: /run/docker/plugins].
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Firewall backend for masquerade, isolation and published ports: nftables, iptables or
    /// auto [default: auto].
    #[arg(long, value_name = "BACKEND")]
    pub firewall: Option<String>,
    /// Log filter: error, warn, info, debug, trace, or tracing directives [default: info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Admin API socket; "none" disables it [default: /run/netloom/admin.sock].
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// Prefix of the plugin (driver) names: <prefix>-bridge, <prefix>-ipam [default: netloom].
    #[arg(long, value_name = "NAME")]
    pub plugin_prefix: Option<String>,
    /// Serve the bridge NetworkDriver and the IpamDriver on this one socket in --plugin-dir
    /// instead of one socket per driver: a Docker managed plugin has exactly one socket.
    #[arg(long, value_name = "FILE")]
    pub combined_socket: Option<String>,
    /// Global store shared by the hosts of a cluster, for overlay networks:
    /// etcd://HOST:PORT[,HOST:PORT...]. With it netloomd runs the overlay agent.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// This host's tunnel (VXLAN) address [default: the address of the interface with the
    /// default route].
    #[arg(long, value_name = "IP")]
    pub advertise_addr: Option<std::net::IpAddr>,
    /// UDP port of the overlays' VXLAN traffic [default: 4789].
    #[arg(long, value_name = "PORT")]
    pub vxlan_port: Option<u16>,
    /// Seconds this host's record outlives netloomd: after a crash or power loss the other
    /// hosts remove this host's containers that long after the last renewal [default: 10].
    #[arg(long, value_name = "SECS")]
    pub host_ttl: Option<u64>,
    /// Seconds a host whose lease expired keeps its overlay records (endpoints, addresses)
    /// before the other hosts purge them; 0: never [default: 86400].
    #[arg(long, value_name = "SECS")]
    pub purge_hosts_after: Option<u64>,
    /// Remove the overlay records (endpoints, address leases) of the host with this tunnel
    /// address from the global store (`--store`), then exit; refused while its agent is alive.
    #[arg(long, value_name = "VTEP")]
    pub purge_overlay_host: Option<std::net::IpAddr>,
}

/// The config file: the same settings as the flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub state_dir: Option<PathBuf>,
    pub plugin_dir: Option<PathBuf>,
    pub firewall: Option<String>,
    pub log_level: Option<String>,
    pub admin_socket: Option<PathBuf>,
    pub plugin_prefix: Option<String>,
    pub combined_socket: Option<String>,
    pub store: Option<String>,
    pub advertise_addr: Option<std::net::IpAddr>,
    pub vxlan_port: Option<u16>,
    pub host_ttl: Option<u64>,
    pub purge_hosts_after: Option<u64>,
}

/// The resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub plugin_dir: PathBuf,
    pub firewall: FirewallChoice,
    pub log_level: String,
    pub admin_socket: Option<PathBuf>,
    pub plugin_prefix: String,
    /// One socket for both drivers (managed plugin), by file name in `plugin_dir`.
    pub combined_socket: Option<String>,
    /// The global store for overlays (`etcd://…`); None: no overlays, no agent.
    pub store: Option<String>,
    /// The local tunnel address; None: the default route's interface address.
    pub advertise_addr: Option<std::net::IpAddr>,
    pub vxlan_port: u16,
    /// Lifetime of this host's leased record in the global store.
    pub host_ttl: std::time::Duration,
    /// How long a departed host's overlay records stay; None: until purged by hand.
    pub purge_hosts_after: Option<std::time::Duration>,
    /// One-shot: purge this host's overlay records and exit.
    pub purge_overlay_host: Option<std::net::IpAddr>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }
}

impl Settings {
    /// Flags, then the config file (if `--config`), then defaults.
    pub fn resolve(cli: &Cli) -> anyhow::Result<Self> {
        let file = match &cli.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        Self::merge(cli, &file)
    }

    pub fn merge(cli: &Cli, file: &FileConfig) -> anyhow::Result<Self> {
        let firewall_text = cli
            .firewall
            .clone()
            .or_else(|| file.firewall.clone())
            .unwrap_or_else(|| "auto".into());
        let firewall: FirewallChoice = firewall_text
            .parse()
            .map_err(|e: engine_core::Error| anyhow::anyhow!("--firewall: {e}"))?;
        let plugin_prefix = cli
            .plugin_prefix
            .clone()
            .or_else(|| file.plugin_prefix.clone())
            .unwrap_or_else(|| "netloom".into());
        // The prefix becomes a socket file name and a Docker driver name.
        let ok = !plugin_prefix.is_empty()
            && plugin_prefix.len() <= 64
            && plugin_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            bail!("--plugin-prefix {plugin_prefix:?}: use letters, digits, '-' and '_'");
        }
        let combined_socket = cli
            .combined_socket
            .clone()
            .or_else(|| file.combined_socket.clone());
        if let Some(c) = &combined_socket {
            if c.is_empty() || c.contains('/') || !c.ends_with(".sock") {
                bail!("--combined-socket {c:?}: give a file name ending in .sock (it goes in --plugin-dir)");
            }
        }
        let admin_socket = cli
            .admin_socket
            .clone()
            .or_else(|| file.admin_socket.clone())
            .unwrap_or_else(|| PathBuf::from("/run/netloom/admin.sock"));
        Ok(Settings {
            state_dir: cli
                .state_dir
                .clone()
                .or_else(|| file.state_dir.clone())
                .unwrap_or_else(engine_core::store::default_state_dir),
            plugin_dir: cli
                .plugin_dir
                .clone()
                .or_else(|| file.plugin_dir.clone())
                .unwrap_or_else(|| PathBuf::from("/run/docker/plugins")),
            firewall,
            log_level: cli
                .log_level
                .clone()
                .or_else(|| file.log_level.clone())
                .unwrap_or_else(|| "info".into()),
            admin_socket: (admin_socket.as_os_str() != "none").then_some(admin_socket),
            plugin_prefix,
            combined_socket,
            store: cli
                .store
                .clone()
                .or_else(|| file.store.clone())
                .filter(|s| !s.is_empty()),
            advertise_addr: cli.advertise_addr.or(file.advertise_addr),
            vxlan_port: match cli.vxlan_port.or(file.vxlan_port) {
                Some(0) => bail!("--vxlan-port 0: give a UDP port (1-65535)"),
                Some(p) => p,
                None => drivers::overlay::options::DEFAULT_PORT,
            },
            host_ttl: match cli.host_ttl.or(file.host_ttl) {
                Some(0) => bail!("--host-ttl 0: give at least 1 second"),
                Some(s) => std::time::Duration::from_secs(s),
                None => std::time::Duration::from_secs(10),
            },
            purge_hosts_after: match cli.purge_hosts_after.or(file.purge_hosts_after) {
                Some(0) => None,
                Some(s) => Some(std::time::Duration::from_secs(s)),
                None => Some(drivers::overlay::agent::DEFAULT_PURGE_AFTER),
            },
            purge_overlay_host: cli.purge_overlay_host,
        })
    }

    /// The socket of a network driver: `<plugin-dir>/<prefix>-<driver>.sock`.
    pub fn network_socket(&self, driver: &str) -> (String, PathBuf) {
        let name = format!("{}-{driver}", self.plugin_prefix);
        let path = self.plugin_dir.join(format!("{name}.sock"));
        (name, path)
    }

    /// The IPAM driver's socket: `<plugin-dir>/<prefix>-ipam.sock`.
    pub fn ipam_socket(&self) -> (String, PathBuf) {
        let name = format!("{}-ipam", self.plugin_prefix);
        let path = self.plugin_dir.join(format!("{name}.sock"));
        (name, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file: FileConfig = toml::from_str(
            r#"
            state-dir = "/srv/netloom"
            firewall = "nftables"
            log-level = "debug"
            plugin-prefix = "nl"
            "#,
        )
        .unwrap();
        let cli = Cli {
            log_level: Some("warn".into()),
            admin_socket: Some("none".into()),
            ..Default::default()
        };
        let s = Settings::merge(&cli, &file).unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/srv/netloom"));
        assert_eq!(s.firewall, FirewallChoice::Nftables);
        assert_eq!(s.log_level, "warn");
        assert_eq!(s.admin_socket, None);
        assert_eq!(s.plugin_dir, PathBuf::from("/run/docker/plugins"));
        assert_eq!(
            s.network_socket("bridge"),
            (
                "nl-bridge".into(),
                PathBuf::from("/run/docker/plugins/nl-bridge.sock")
            )
        );
        assert_eq!(s.ipam_socket().0, "nl-ipam");
        let d = Settings::merge(&Cli::default(), &FileConfig::default()).unwrap();
        assert_eq!(
            d.admin_socket,
            Some(PathBuf::from("/run/netloom/admin.sock"))
        );
        assert_eq!(d.firewall, FirewallChoice::Auto);
        assert_eq!(d.plugin_prefix, "netloom");
    }

    #[test]
    fn overlay_settings() {
        let file: FileConfig = toml::from_str(
            r#"
            store = "etcd://10.0.0.1:2379"
            advertise-addr = "10.0.0.11"
            host-ttl = 5
            "#,
        )
        .unwrap();
        let cli = Cli {
            vxlan_port: Some(8472),
            ..Default::default()
        };
        let s = Settings::merge(&cli, &file).unwrap();
        assert_eq!(s.store.as_deref(), Some("etcd://10.0.0.1:2379"));
        assert_eq!(s.advertise_addr, Some("10.0.0.11".parse().unwrap()));
        assert_eq!(s.vxlan_port, 8472);
        assert_eq!(s.host_ttl, std::time::Duration::from_secs(5));
        let d = Settings::merge(&Cli::default(), &FileConfig::default()).unwrap();
        assert_eq!(d.store, None);
        assert_eq!(d.vxlan_port, 4789);
        assert_eq!(d.host_ttl, std::time::Duration::from_secs(10));
        assert_eq!(
            d.purge_hosts_after,
            Some(std::time::Duration::from_secs(86400))
        );
        for bad in [
            Cli {
                vxlan_port: Some(0),
                ..Default::default()
            },
            Cli {
                host_ttl: Some(0),
                ..Default::default()
            },
        ] {
            assert!(Settings::merge(&bad, &FileConfig::default()).is_err());
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(toml::from_str::<FileConfig>("statedir = \"/x\"").is_err());
        let cli = Cli {
            firewall: Some("pf".into()),
            ..Default::default()
        };
        assert!(Settings::merge(&cli, &FileConfig::default()).is_err());
        let cli = Cli {
            plugin_prefix: Some("a/b".into()),
            ..Default::default()
        };
        assert!(Settings::merge(&cli, &FileConfig::default()).is_err());
        let cli = Cli {
            combined_socket: Some("../x.sock".into()),
            ..Default::default()
        };
        assert!(Settings::merge(&cli, &FileConfig::default()).is_err());
        let cli = Cli {
            combined_socket: Some("netloom.sock".into()),
            ..Default::default()
        };
        let s = Settings::merge(&cli, &FileConfig::default()).unwrap();
        assert_eq!(s.combined_socket.as_deref(), Some("netloom.sock"));
    }
}
