//! Delegated IPAM: another CNI IPAM plugin (the reference `static` or `dhcp`, whereabouts…)
//! found in `CNI_PATH` and run with the very configuration bytes the runtime gave us, as the
//! reference main plugins do. netloom then configures what it answered and never leases those
//! addresses itself.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{code, CniError};
use crate::result::CniResult;
use crate::version::CniVersion;

/// One IPAM plugin binary, resolved in `CNI_PATH`.
#[derive(Debug, Clone)]
pub struct Delegate {
    ipam_type: String,
    binary: PathBuf,
}

impl Delegate {
    /// Looks `ipam_type` up in `cni_path` (first match wins, as in libcni).
    pub fn find(ipam_type: &str, cni_path: &[PathBuf]) -> Result<Self, CniError> {
        // A type is a file name: never a path that could leave CNI_PATH.
        let plain = !ipam_type.is_empty()
            && ipam_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && ipam_type != "."
            && ipam_type != "..";
        if !plain {
            return Err(CniError::invalid_config(format!(
                "ipam type {ipam_type:?} is not a plugin name"
            )));
        }
        let binary = cni_path
            .iter()
            .map(|d| d.join(ipam_type))
            .find(|p| is_executable(p))
            .ok_or_else(|| {
                CniError::invalid_env(format!(
                    "IPAM plugin {ipam_type:?} not found in CNI_PATH ({})",
                    cni_path
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ))
            })?;
        Ok(Delegate {
            ipam_type: ipam_type.to_string(),
            binary,
        })
    }

    /// ADD: the addresses, routes and DNS the plugin hands out.
    pub fn add(&self, stdin: &[u8], version: CniVersion) -> Result<CniResult, CniError> {
        let out = self.run("ADD", stdin)?;
        let what = format!("the result of IPAM plugin {}", self.ipam_type);
        CniResult::from_json(&out, version, &what).map(|(_, r)| r)
    }

    /// DEL, CHECK, GC and STATUS: success or the plugin's error.
    pub fn call(&self, command: &str, stdin: &[u8]) -> Result<(), CniError> {
        self.run(command, stdin).map(|_| ())
    }

    fn run(&self, command: &str, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
        // The runtime's CNI_* variables are inherited; only the command may differ (DEL after
        // a failed ADD).
        let mut child = Command::new(&self.binary)
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                CniError::io(format!("start IPAM plugin {}: {e}", self.binary.display()))
            })?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading its stdin is answered by its exit status.
            let _ = input.write_all(stdin);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| CniError::io(format!("wait for IPAM plugin {}: {e}", self.ipam_type)))?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(self.failure(command, &out.stdout, out.status))
    }

    /// The plugin's own error, keeping its code, or a plain description of how it failed.
    fn failure(&self, command: &str, stdout: &[u8], status: std::process::ExitStatus) -> CniError {
        let reply: Option<serde_json::Value> = serde_json::from_slice(stdout).ok();
        let field = |k: &str| reply.as_ref().and_then(|v| v.get(k).cloned());
        let code = field("code")
            .and_then(|c| c.as_u64())
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(code::INTERNAL);
        let msg = field("msg")
            .and_then(|m| m.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("exited with {status} and no error message"));
        let err = CniError::new(
            code,
            format!("IPAM plugin {} {command}: {msg}", self.ipam_type),
        );
        match field("details").and_then(|d| d.as_str().map(str::to_string)) {
            Some(d) if !d.is_empty() => err.with_details(d),
            _ => err,
        }
    }
}

/// A network's subnets after a delegated plugin's ADD: those it had, plus the subnet of each
/// address just handed out (a `static` plugin may give each container its own). They only
/// grow, so earlier containers keep their gateway. Without a gateway from the plugin,
/// `gateway_default` (a bridge that is the gateway: the subnet's first address) fills it in.
pub fn merge_subnets(
    mut subnets: Vec<engine_core::model::SubnetConfig>,
    leased: &CniResult,
    gateway_default: impl Fn(ipnetwork::IpNetwork) -> Option<std::net::IpAddr>,
) -> Result<Vec<engine_core::model::SubnetConfig>, CniError> {
    for ip in &leased.ips {
        let subnet = ipnetwork::IpNetwork::new(ip.address.network(), ip.address.prefix())
            .map_err(|e| CniError::invalid_config(format!("address {}: {e}", ip.address)))?;
        let gateway = ip.gateway.or_else(|| gateway_default(subnet));
        match subnets.iter_mut().find(|s| s.subnet == subnet) {
            Some(s) => s.gateway = s.gateway.or(gateway),
            // No pool: the engine takes these addresses as they are and never leases them.
            None => subnets.push(engine_core::model::SubnetConfig {
                subnet,
                gateway,
                pool_id: String::new(),
            }),
        }
    }
    Ok(subnets)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_names_not_paths() {
        for bad in ["", "..", "../bin/sh", "a/b", "x y"] {
            let e = Delegate::find(bad, &[PathBuf::from("/usr/lib/cni")]).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad:?}: {}", e.msg);
        }
    }

    #[test]
    fn a_missing_plugin_names_the_path_searched() {
        let e = Delegate::find("no-such-ipam", &[PathBuf::from("/nonexistent/cni")]).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("/nonexistent/cni"), "{}", e.msg);
    }
}
