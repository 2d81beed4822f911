//! The `CNI_*` environment, parsed once from an injected getter.
//!
//! Nothing here reads the process environment except [`CniEnv::from_process`], so tests (and
//! a plugin delegating to another in-process) can hand in any environment without touching the
//! global one, which is not thread-safe to mutate.
//!
//! Which variables each command needs (spec column of the fact sheet, A.3):
//!
//! | var | ADD | DEL | CHECK | GC | STATUS | VERSION |
//! |---|---|---|---|---|---|---|
//! | `CNI_COMMAND` | req | req | req | req | req | req |
//! | `CNI_CONTAINERID` | req | req | req | – | – | – |
//! | `CNI_NETNS` | req | opt | req | – | – | – |
//! | `CNI_IFNAME` | req | req | req | – | – | – |
//! | `CNI_ARGS` | opt | opt | opt | – | – | – |
//! | `CNI_PATH` | opt | opt | opt | req | opt | – |
//!
//! "–" means the variable is ignored, whatever it holds: libcni sends `CNI_NETNS=dummy` on
//! VERSION and empty container variables on GC and STATUS. An empty value counts as unset.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use engine_core::AttachmentKey;

use crate::error::CniError;

/// The CNI verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// Whether the command acts on one attachment (container id + ifname).
    pub fn has_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = CniError;
    /// Exact, upper-case names, as runtimes send them.
    fn from_str(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::invalid_env(format!(
                "CNI_COMMAND {other:?} is not a CNI command (ADD, DEL, CHECK, VERSION, STATUS, GC)"
            )))
            }
        })
    }
}

/// The `CNI_ARGS` key that turns unknown keys from an error into something ignored.
pub const IGNORE_UNKNOWN: &str = "IgnoreUnknown";

/// The keys Kubernetes runtimes (containerd, CRI-O) and podman send.
pub const K8S_ARGS: &[&str] = &[
    "K8S_POD_NAME",
    "K8S_POD_NAMESPACE",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

/// Keys IPAM plugins conventionally read (`IP=10.1.0.5`, comma-separated for several).
pub const IPAM_ARGS: &[&str] = &["IP"];

/// Keys the tuning-style plugins conventionally read.
pub const MAC_ARGS: &[&str] = &["MAC"];

/// `CNI_ARGS`: `K=V;K=V`, any order. Keys are matched exactly as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
    ignore_unknown: bool,
}

impl CniArgs {
    /// Parses `K=V;K=V`. Empty segments (a trailing ';') are skipped; a value may contain '='.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        let mut args = CniArgs::default();
        for part in s.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(CniError::invalid_env(format!(
                    "CNI_ARGS entry {part:?} is not KEY=VALUE"
                )));
            };
            if k.is_empty() {
                return Err(CniError::invalid_env(format!(
                    "CNI_ARGS entry {part:?} has an empty key"
                )));
            }
            if k == IGNORE_UNKNOWN {
                args.ignore_unknown = match v.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => {
                        return Err(CniError::invalid_env(format!(
                        "CNI_ARGS {IGNORE_UNKNOWN}={v} is not a boolean (use 1, true, 0 or false)"
                    )))
                    }
                };
            }
            args.pairs.push((k.to_string(), v.to_string()));
        }
        Ok(args)
    }

    /// The value of `key`; when a key repeats, the last one wins (as Go's loader does).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every pair, in the order given.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    pub fn ignore_unknown(&self) -> bool {
        self.ignore_unknown
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Refuses keys outside `known` (code 2, naming key and value) unless `IgnoreUnknown` is set.
    pub fn check_known(&self, plugin: &str, known: &[&str]) -> Result<(), CniError> {
        if self.ignore_unknown {
            return Ok(());
        }
        for (k, v) in &self.pairs {
            if k != IGNORE_UNKNOWN && !known.contains(&k.as_str()) {
                let known_list = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                return Err(CniError::unsupported_field(format!(
                    "CNI_ARGS key {k}={v} is not supported by {plugin}"
                ))
                .with_details(format!(
                    "known keys: {known_list}; add {IGNORE_UNKNOWN}=1 to CNI_ARGS to ignore unknown keys"
                )));
            }
        }
        Ok(())
    }
}

/// The parsed environment of one invocation. Fields a command does not use are `None`/empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    /// Container id and ifname, validated; `Some` exactly for ADD, DEL and CHECK.
    pub attachment: Option<AttachmentKey>,
    /// `Some` for ADD and CHECK; for DEL only when the runtime still has a namespace.
    pub netns: Option<PathBuf>,
    pub args: CniArgs,
    /// `CNI_PATH` split on ':', empty entries dropped.
    pub cni_path: Vec<PathBuf>,
}

impl CniEnv {
    /// Parses the environment through `get`, applying the per-command rules (errors: code 4).
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        // An empty variable is the same as a missing one: runtimes blank what they do not use.
        let var = |name: &str| get(name).filter(|v| !v.is_empty());

        let command: Command = var("CNI_COMMAND")
            .ok_or_else(|| CniError::invalid_env("CNI_COMMAND is not set; it must be one of ADD, DEL, CHECK, VERSION, STATUS, GC"))?
            .parse()?;

        let mut env = CniEnv {
            command,
            attachment: None,
            netns: None,
            args: CniArgs::default(),
            cni_path: Vec::new(),
        };
        if command == Command::Version {
            return Ok(env);
        }

        env.cni_path = var("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        if command == Command::Gc && env.cni_path.is_empty() {
            return Err(CniError::invalid_env(
                "CNI_PATH is required for GC (plugins delegate GC through it)",
            ));
        }
        if !command.has_attachment() {
            return Ok(env);
        }

        let required = |name: &str| {
            var(name)
                .ok_or_else(|| CniError::invalid_env(format!("{name} is required for {command}")))
        };
        let container_id = required("CNI_CONTAINERID")?;
        engine_core::validate_container_id(&container_id)
            .map_err(|e| CniError::invalid_env(format!("CNI_CONTAINERID: {e}")))?;
        let ifname = required("CNI_IFNAME")?;
        engine_core::validate_ifname(&ifname)
            .map_err(|e| CniError::invalid_env(format!("CNI_IFNAME: {e}")))?;
        env.attachment = Some(AttachmentKey {
            container_id,
            ifname,
        });

        env.netns = match command {
            // DEL must work after the namespace is gone (containerd passes "" then).
            Command::Del => var("CNI_NETNS").map(PathBuf::from),
            _ => Some(PathBuf::from(required("CNI_NETNS")?)),
        };
        env.args = CniArgs::parse(&var("CNI_ARGS").unwrap_or_default())?;
        Ok(env)
    }

    /// From a map (tests, in-process delegation).
    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, CniError> {
        CniEnv::parse(|k| map.get(k).cloned())
    }

    /// From the process environment: the only place netloom reads `CNI_*` variables directly.
    pub fn from_process() -> Result<Self, CniError> {
        // A non-UTF-8 value is kept lossily; container id and ifname validation then rejects it
        // with a message naming the variable, instead of reporting it as unset.
        CniEnv::parse(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_map(&map)
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "podsim-a"),
        ("CNI_NETNS", "/run/netns/cncl-a"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni:"),
        (
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=cncl-ns;K8S_POD_NAME=web-a;IgnoreUnknown=1",
        ),
    ];

    fn with(
        base: &[(&'static str, &'static str)],
        key: &'static str,
        value: &'static str,
    ) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = base.iter().filter(|(k, _)| *k != key).copied().collect();
        v.push((key, value));
        v
    }

    #[test]
    fn add_parses_everything() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(
            e.attachment,
            Some(AttachmentKey {
                container_id: "podsim-a".into(),
                ifname: "eth0".into()
            })
        );
        assert_eq!(e.netns, Some(PathBuf::from("/run/netns/cncl-a")));
        assert_eq!(
            e.cni_path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert_eq!(e.args.get("K8S_POD_NAME"), Some("web-a"));
        assert!(e.args.ignore_unknown());
    }

    #[test]
    fn missing_or_unknown_command_is_code_4() {
        let e = env(&[]).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_COMMAND"));
        let e = env(&[("CNI_COMMAND", "add")]).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("\"add\""), "{}", e.msg);
        assert_eq!(env(&[("CNI_COMMAND", "UPDATE")]).unwrap_err().code, 4);
    }

    #[test]
    fn attachment_commands_need_container_and_ifname() {
        for cmd in ["ADD", "DEL", "CHECK"] {
            let base = with(ADD, "CNI_COMMAND", cmd);
            for (var, bad) in [("CNI_CONTAINERID", ""), ("CNI_IFNAME", "")] {
                let e = env(&with(&base, var, bad)).unwrap_err();
                assert_eq!(e.code, 4, "{cmd} {var}");
                assert_eq!(e.msg, format!("{var} is required for {cmd}"));
            }
        }
    }

    #[test]
    fn invalid_container_id_and_ifname_are_code_4_and_named() {
        let e = env(&with(ADD, "CNI_CONTAINERID", "-bad")).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(
            e.msg
                .starts_with("CNI_CONTAINERID: container id \"-bad\" is invalid"),
            "{}",
            e.msg
        );
        for bad in ["a/b", "0123456789abcdef", "..", "e th0"] {
            let e = env(&with(ADD, "CNI_IFNAME", bad)).unwrap_err();
            assert_eq!(e.code, 4, "{bad}");
            assert!(e.msg.starts_with("CNI_IFNAME: interface name"), "{}", e.msg);
        }
    }

    #[test]
    fn netns_required_for_add_and_check_optional_for_del() {
        for cmd in ["ADD", "CHECK"] {
            let e = env(&with(&with(ADD, "CNI_COMMAND", cmd), "CNI_NETNS", "")).unwrap_err();
            assert_eq!(
                (e.code, e.msg.clone()),
                (4, format!("CNI_NETNS is required for {cmd}"))
            );
        }
        let e = env(&with(&with(ADD, "CNI_COMMAND", "DEL"), "CNI_NETNS", "")).unwrap();
        assert_eq!(e.netns, None);
        assert!(e.attachment.is_some());
    }

    #[test]
    fn version_validates_nothing() {
        // Exactly what libcni sends.
        let e = env(&[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_CONTAINERID", ""),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "dummy"),
            ("CNI_PATH", "dummy"),
            ("CNI_ARGS", "garbage-without-equals"),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Version);
        assert_eq!((e.attachment, e.netns), (None, None));
    }

    #[test]
    fn status_needs_only_the_command_and_gc_needs_cni_path() {
        let e = env(&[
            ("CNI_COMMAND", "STATUS"),
            ("CNI_CONTAINERID", ""),
            ("CNI_IFNAME", ""),
            ("CNI_NETNS", ""),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Status);
        assert_eq!(e.attachment, None);

        let e = env(&[
            ("CNI_COMMAND", "GC"),
            ("CNI_PATH", "/opt/cni-test/plugins"),
            ("CNI_ARGS", "nonsense"),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Gc);
        assert_eq!(e.cni_path, vec![PathBuf::from("/opt/cni-test/plugins")]);
        assert!(e.args.is_empty(), "GC ignores CNI_ARGS");

        let e = env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "")]).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_PATH"));
    }

    #[test]
    fn cni_args_any_order_last_wins_values_may_hold_equals() {
        let a = CniArgs::parse(
            "K8S_POD_UID=0000-aaaa;IgnoreUnknown=1;K8S_POD_NAME=a;X=b=c;K8S_POD_NAME=web-a;",
        )
        .unwrap();
        assert_eq!(a.get("K8S_POD_NAME"), Some("web-a"));
        assert_eq!(a.get("X"), Some("b=c"));
        assert_eq!(a.get("k8s_pod_name"), None, "keys are matched as given");
        assert_eq!(a.pairs().len(), 5);
        assert!(CniArgs::parse("").unwrap().is_empty());
    }

    #[test]
    fn cni_args_malformed_is_code_4() {
        assert_eq!(CniArgs::parse("K8S_POD_NAME").unwrap_err().code, 4);
        assert_eq!(CniArgs::parse("=x").unwrap_err().code, 4);
        let e = CniArgs::parse("IgnoreUnknown=maybe").unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("IgnoreUnknown=maybe"));
        let e = env(&with(ADD, "CNI_ARGS", "oops")).unwrap_err();
        assert_eq!(e.code, 4);
    }

    #[test]
    fn unknown_keys_are_code_2_unless_ignore_unknown() {
        let a = CniArgs::parse("K8S_POD_NAME=web;FOO=bar").unwrap();
        let e = a.check_known("netloom-bridge", K8S_ARGS).unwrap_err();
        assert_eq!(e.code, 2);
        assert_eq!(
            e.msg,
            "CNI_ARGS key FOO=bar is not supported by netloom-bridge"
        );
        assert!(e.details.contains("IgnoreUnknown=1"));

        for flag in ["1", "true", "TRUE", "True"] {
            let a = CniArgs::parse(&format!("FOO=bar;IgnoreUnknown={flag}")).unwrap();
            assert!(a.check_known("p", K8S_ARGS).is_ok(), "{flag}");
        }
        let a = CniArgs::parse("FOO=bar;IgnoreUnknown=0").unwrap();
        assert_eq!(a.check_known("p", K8S_ARGS).unwrap_err().code, 2);

        // A plugin that declares IP accepts it without IgnoreUnknown.
        let a = CniArgs::parse("IP=10.1.0.5;K8S_POD_NAME=web").unwrap();
        let known: Vec<&str> = K8S_ARGS.iter().chain(IPAM_ARGS).copied().collect();
        assert!(a.check_known("netloom-ipam", &known).is_ok());
        assert_eq!(
            a.check_known("netloom-bridge", K8S_ARGS).unwrap_err().code,
            2
        );
    }

    #[test]
    fn commands_round_trip() {
        for c in [
            Command::Add,
            Command::Del,
            Command::Check,
            Command::Version,
            Command::Status,
            Command::Gc,
        ] {
            assert_eq!(c.as_str().parse::<Command>(), Ok(c));
        }
    }
}
