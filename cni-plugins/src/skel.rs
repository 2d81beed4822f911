//! The dispatcher every netloom plugin binary runs: environment + stdin in, one JSON document
//! on stdout, exit status out.
//!
//! Order of checks (each failure is one error reply, exit 1):
//! 1. `CNI_COMMAND` and the variables that command needs (code 4). VERSION stops here and
//!    answers; it validates nothing else (libcni calls it with `CNI_NETNS=dummy`).
//! 2. stdin is a JSON object (code 6).
//! 3. its version is one the plugin supports, and new enough for the command: CHECK ≥0.4.0,
//!    GC/STATUS ≥1.1.0 (code 1).
//! 4. the rest of the configuration (codes 6, 7), then `CNI_ARGS` keys (code 2).
//! 5. the plugin. ADD's result is printed in the request's version; DEL, CHECK, GC and STATUS
//!    print nothing on success.
//!
//! Error replies carry the request's `cniVersion` as written, or the latest netloom speaks when
//! the request has none that could be read.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use engine_core::AttachmentKey;
use serde_json::{Map, Value};

use crate::config::{parse_object, NetConf};
use crate::env::{CniArgs, CniEnv, Command, K8S_ARGS};
use crate::error::CniError;
use crate::result::CniResult;
use crate::version::{require_for_command, select_version, version_reply, CniVersion};

/// An ADD, DEL or CHECK request.
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    /// `CNI_CONTAINERID` + `CNI_IFNAME`, validated.
    pub key: AttachmentKey,
    /// Always `Some` for ADD and CHECK; `None` on DEL when the runtime has no namespace left.
    pub netns: Option<PathBuf>,
    pub args: CniArgs,
    pub cni_path: Vec<PathBuf>,
    /// The version the request is in, and the one the result is printed in.
    pub version: CniVersion,
    pub config: NetConf,
    /// stdin exactly as received, for delegating to another plugin (IPAM gets identical bytes).
    pub stdin: Vec<u8>,
}

impl Request {
    /// The namespace path; only DEL can lack one, and then this is a code 4 error.
    pub fn netns(&self) -> Result<&Path, CniError> {
        self.netns.as_deref().ok_or_else(|| {
            CniError::invalid_env(format!("CNI_NETNS is not set for {}", self.command))
        })
    }

    /// The parsed `prevResult`, if the runtime sent one.
    pub fn prev_result(&self) -> Option<&CniResult> {
        self.config.prev_result.as_ref().map(|p| &p.result)
    }
}

/// A STATUS request: configuration only (the runtime sends no container variables).
#[derive(Debug, Clone)]
pub struct StatusRequest {
    pub version: CniVersion,
    pub config: NetConf,
    pub cni_path: Vec<PathBuf>,
    pub stdin: Vec<u8>,
}

/// A GC request: remove what belongs to attachments not in the valid list.
#[derive(Debug, Clone)]
pub struct GcRequest {
    pub version: CniVersion,
    pub config: NetConf,
    pub cni_path: Vec<PathBuf>,
    pub stdin: Vec<u8>,
}

impl GcRequest {
    /// The attachments the runtime still uses; `None` when it sent no list.
    pub fn valid_attachments(&self) -> Option<&[AttachmentKey]> {
        self.config.valid_attachments.as_deref()
    }

    /// Whether `key` must be kept. With no list at all nothing is kept: that is how libcni
    /// behaves (it has already run DEL for every cached attachment of the network). An entry
    /// without an ifname keeps every interface of its container.
    pub fn is_valid(&self, key: &AttachmentKey) -> bool {
        self.valid_attachments()
            .unwrap_or_default()
            .iter()
            .any(|a| {
                a.container_id == key.container_id
                    && (a.ifname.is_empty() || a.ifname == key.ifname)
            })
    }
}

/// What a plugin binary implements; the dispatcher does the protocol.
pub trait Plugin {
    /// The binary's name, used in messages ("netloom-bridge").
    fn name(&self) -> &str;

    /// Versions this plugin accepts; the VERSION answer lists them.
    fn supported_versions(&self) -> &[CniVersion] {
        &CniVersion::ALL
    }

    /// `CNI_ARGS` keys this plugin understands; others are refused unless `IgnoreUnknown` is
    /// set. Runtimes send the Kubernetes keys even outside Kubernetes, so they are the default.
    fn known_args(&self) -> &[&str] {
        K8S_ARGS
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError>;

    /// Must succeed when the resources are already gone, and without a namespace.
    fn del(&self, req: &Request) -> Result<(), CniError>;

    fn check(&self, req: &Request) -> Result<(), CniError>;

    /// Ready to serve ADD? The default says yes: a plugin without a daemon or a pool to run
    /// dry has nothing that could be unready.
    fn status(&self, _req: &StatusRequest) -> Result<(), CniError> {
        Ok(())
    }

    /// The default collects nothing: right for plugins that leave no state outside the
    /// container's namespace, which disappears with it.
    fn gc(&self, _req: &GcRequest) -> Result<(), CniError> {
        Ok(())
    }
}

/// The `cniVersion` string of stdin, if stdin is an object that has one (for stamping error
/// replies and answering VERSION, where nothing may be validated).
fn peek_version(stdin: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(stdin).ok()? {
        Value::Object(m) => m
            .get("cniVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// The version an error reply is stamped with.
fn reply_version(stdin: &[u8]) -> String {
    peek_version(stdin)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| CniVersion::LATEST.as_str().to_string())
}

/// Everything that ends in a reply: `Ok(Some(json))`, `Ok(None)` for no output, or an error.
fn dispatch<P: Plugin + ?Sized>(
    plugin: &P,
    env: CniEnv,
    stdin: &[u8],
) -> Result<Option<String>, CniError> {
    let command = env.command;
    if command == Command::Version {
        return Ok(Some(version_reply(
            peek_version(stdin).as_deref(),
            plugin.supported_versions(),
        )));
    }

    let raw = parse_object(stdin)?;
    let version = request_version(plugin, &raw)?;
    require_for_command(command, version)?;
    let config = if command == Command::Del && raw.contains_key("runtimeConfig") {
        // DEL must clean up whatever the runtime sends it: capability arguments that ADD
        // refused (so nothing was made from them) must not stop the chain's DEL, or the main
        // plugin's interface behind this one would never be removed.
        match NetConf::from_map(raw.clone(), version) {
            Ok(c) => c,
            Err(e) => {
                let mut lenient = raw;
                lenient.remove("runtimeConfig");
                NetConf::from_map(lenient, version).map_err(|_| e)?
            }
        }
    } else {
        NetConf::from_map(raw, version)?
    };
    let stdin = stdin.to_vec();

    match command {
        Command::Add | Command::Del | Command::Check => {
            env.args.check_known(plugin.name(), plugin.known_args())?;
            let key = env.attachment.ok_or_else(|| {
                CniError::new(
                    crate::error::code::INTERNAL,
                    "environment parsed without an attachment",
                )
            })?;
            let req = Request {
                command,
                key,
                netns: env.netns,
                args: env.args,
                cni_path: env.cni_path,
                version,
                config,
                stdin,
            };
            match command {
                Command::Add => plugin.add(&req).map(|r| Some(r.to_json(version))),
                Command::Del => plugin.del(&req).map(|()| None),
                _ => plugin.check(&req).map(|()| None),
            }
        }
        Command::Status => plugin
            .status(&StatusRequest {
                version,
                config,
                cni_path: env.cni_path,
                stdin,
            })
            .map(|()| None),
        Command::Gc => plugin
            .gc(&GcRequest {
                version,
                config,
                cni_path: env.cni_path,
                stdin,
            })
            .map(|()| None),
        Command::Version => Ok(None),
    }
}

/// The request's version from the raw object (code 6 when the keys have the wrong type).
fn request_version<P: Plugin + ?Sized>(
    plugin: &P,
    raw: &Map<String, Value>,
) -> Result<CniVersion, CniError> {
    let cni_version = match raw.get("cniVersion") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            return Err(CniError::decode(format!(
                "network configuration key \"cniVersion\" must be a string, not {other}"
            )))
        }
    };
    let cni_versions: Vec<String> = match raw.get("cniVersions") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            CniError::decode(format!(
                "network configuration key \"cniVersions\" cannot be decoded: {e}"
            ))
        })?,
    };
    select_version(
        plugin.name(),
        cni_version,
        &cni_versions,
        plugin.supported_versions(),
    )
}

/// Runs one invocation: `env` answers `CNI_*` lookups, `stdin` is the configuration, the reply
/// goes to `stdout`. Returns the exit status (0 or 1).
pub fn run<P: Plugin + ?Sized>(
    plugin: &P,
    env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    stdout: &mut impl Write,
) -> i32 {
    respond(plugin, CniEnv::parse(env), stdin, stdout)
}

/// Dispatches with an already parsed environment and writes the reply.
fn respond<P: Plugin + ?Sized>(
    plugin: &P,
    env: Result<CniEnv, CniError>,
    stdin: &[u8],
    stdout: &mut impl Write,
) -> i32 {
    let outcome = env.and_then(|env| dispatch(plugin, env, stdin));
    let (text, status) = match outcome {
        Ok(None) => return 0,
        Ok(Some(json)) => (json, 0),
        Err(e) => (e.to_json(&reply_version(stdin)), 1),
    };
    // If stdout is gone there is nobody to tell; the exit status still says it failed.
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => status,
        Err(_) => 1,
    }
}

/// [`run`] on the process's own environment, stdin and stdout; the `main` of every binary:
/// `std::process::exit(cni_plugins::skel::run_process(&MyPlugin))`.
pub fn run_process<P: Plugin + ?Sized>(plugin: &P) -> i32 {
    let mut stdout = std::io::stdout().lock();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut stdin) {
        let reply = CniError::io("cannot read the network configuration from stdin")
            .with_details(e.to_string());
        let _ = stdout.write_all(reply.to_json(CniVersion::LATEST.as_str()).as_bytes());
        return 1;
    }
    respond(plugin, CniEnv::from_process(), &stdin, &mut stdout)
}
