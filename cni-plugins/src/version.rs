//! CNI specification versions: which ones netloom speaks, which one a request uses, and the
//! VERSION reply.
//!
//! Versions are matched as exact strings, as the Go skel does: "1.0" is not "1.0.0".
//! 0.1.0 and 0.2.0 (the `ip4`/`ip6` result shape) are not supported; a configuration without
//! `cniVersion` means 0.1.0 (libcni's reading) and is therefore refused with code 1.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::env::Command;
use crate::error::CniError;

/// A CNI specification version netloom implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// What a configuration without `cniVersion` means.
pub const IMPLIED_VERSION: &str = "0.1.0";

impl CniVersion {
    /// Every version netloom implements, oldest first.
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Exact match against the versions netloom implements.
    pub fn parse(s: &str) -> Option<Self> {
        CniVersion::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Results before 1.0.0 carry `"version": "4"|"6"` in every `ips[]` entry.
    pub fn ips_carry_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// 1.1.0 added interface mtu/socketPath/pciID and route mtu/advmss/priority/table/scope.
    pub fn has_1_1_fields(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// The oldest version a command exists in: CHECK came with 0.4.0, GC and STATUS with 1.1.0.
    pub fn minimum_for(command: Command) -> CniVersion {
        match command {
            Command::Check => CniVersion::V0_4_0,
            Command::Gc | Command::Status => CniVersion::V1_1_0,
            Command::Add | Command::Del | Command::Version => CniVersion::V0_3_0,
        }
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CniVersion {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, CniError> {
        CniVersion::parse(s)
            .ok_or_else(|| unsupported_version_error("netloom", s, &CniVersion::ALL))
    }
}

impl Serialize for CniVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

fn list(versions: &[CniVersion]) -> String {
    versions
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn unsupported_version_error(plugin: &str, requested: &str, supported: &[CniVersion]) -> CniError {
    CniError::incompatible(format!(
        "{plugin} does not support CNI version {requested:?}"
    ))
    .with_details(format!(
        "supported versions: {}; set \"cniVersion\" in the network configuration to one of them",
        list(supported)
    ))
}

/// The version a request is in: `cniVersion` when present (the runtime injects the one it chose);
/// otherwise the highest entry of `cniVersions` this plugin also supports; otherwise 0.1.0, which
/// is refused. Errors are code 1 and say what to change.
pub fn select_version(
    plugin: &str,
    cni_version: Option<&str>,
    cni_versions: &[String],
    supported: &[CniVersion],
) -> Result<CniVersion, CniError> {
    let accept = |s: &str| CniVersion::parse(s).filter(|v| supported.contains(v));
    if let Some(v) = cni_version {
        return accept(v).ok_or_else(|| unsupported_version_error(plugin, v, supported));
    }
    if !cni_versions.is_empty() {
        return cni_versions
            .iter()
            .filter_map(|s| accept(s))
            .max()
            .ok_or_else(|| {
                CniError::incompatible(format!(
                    "{plugin} supports none of the CNI versions listed in \"cniVersions\" ({})",
                    cni_versions.join(", ")
                ))
                .with_details(format!("supported versions: {}", list(supported)))
            });
    }
    Err(CniError::incompatible(format!(
        "the network configuration has no \"cniVersion\", which means {IMPLIED_VERSION}, and {plugin} does not support it"
    ))
    .with_details(format!("add \"cniVersion\" with one of: {}", list(supported))))
}

/// Refuses a command the request's version does not have (code 1).
pub fn require_for_command(command: Command, version: CniVersion) -> Result<(), CniError> {
    let min = CniVersion::minimum_for(command);
    if version >= min {
        return Ok(());
    }
    Err(CniError::incompatible(format!(
        "{command} needs CNI version {min} or later, but the network configuration says {version}"
    ))
    .with_details(format!(
        "raise \"cniVersion\" in the network configuration to {min} or later"
    )))
}

#[derive(Serialize)]
struct VersionReply<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    #[serde(rename = "supportedVersions")]
    supported_versions: Vec<&'static str>,
}

/// The VERSION answer. Echoes the requested version when this plugin supports it (what the spec
/// asks), otherwise names the latest one it supports.
pub fn version_reply(requested: Option<&str>, supported: &[CniVersion]) -> String {
    let latest = supported
        .iter()
        .max()
        .copied()
        .unwrap_or(CniVersion::LATEST);
    let echo = requested
        .and_then(CniVersion::parse)
        .filter(|v| supported.contains(v))
        .unwrap_or(latest);
    let reply = VersionReply {
        cni_version: echo.as_str(),
        supported_versions: supported.iter().map(|v| v.as_str()).collect(),
    };
    serde_json::to_string(&reply).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_exactly_and_order() {
        for v in CniVersion::ALL {
            assert_eq!(CniVersion::parse(v.as_str()), Some(v));
        }
        for bad in ["0.1.0", "0.2.0", "1.0", "v1.0.0", "1.2.0", ""] {
            assert_eq!(CniVersion::parse(bad), None, "{bad}");
        }
        assert!(CniVersion::V0_3_1 < CniVersion::V0_4_0 && CniVersion::V1_0_0 < CniVersion::V1_1_0);
        assert_eq!(
            "1.1.0".parse::<CniVersion>().map_err(|e| e.code),
            Ok(CniVersion::V1_1_0)
        );
        assert_eq!("0.2.0".parse::<CniVersion>().map_err(|e| e.code), Err(1));
    }

    #[test]
    fn select_prefers_cni_version_then_highest_common_listed() {
        let all = &CniVersion::ALL;
        assert_eq!(
            select_version("p", Some("0.4.0"), &[], all),
            Ok(CniVersion::V0_4_0)
        );
        let listed = vec![
            "0.3.1".to_string(),
            "1.0.0".to_string(),
            "9.9.9".to_string(),
        ];
        assert_eq!(
            select_version("p", None, &listed, all),
            Ok(CniVersion::V1_0_0)
        );
        // cniVersion wins: it is the one the runtime chose.
        assert_eq!(
            select_version("p", Some("0.3.1"), &listed, all),
            Ok(CniVersion::V0_3_1)
        );
        let only_old = [CniVersion::V0_3_1];
        assert_eq!(
            select_version("p", None, &listed, &only_old),
            Ok(CniVersion::V0_3_1)
        );
    }

    #[test]
    fn select_refuses_with_code_1_and_says_what_to_change() {
        let all = &CniVersion::ALL;
        let e = select_version("netloom-bridge", None, &[], all).unwrap_err();
        assert_eq!(e.code, 1);
        assert!(
            e.msg.contains("no \"cniVersion\"") && e.msg.contains("0.1.0"),
            "{}",
            e.msg
        );
        assert!(e.details.contains("1.1.0"), "{}", e.details);

        let e = select_version("netloom-bridge", Some("0.2.0"), &[], all).unwrap_err();
        assert_eq!(e.code, 1);
        assert_eq!(
            e.msg,
            "netloom-bridge does not support CNI version \"0.2.0\""
        );
        assert!(
            e.details.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
            "{}",
            e.details
        );

        let e = select_version("p", None, &["0.2.0".to_string()], all).unwrap_err();
        assert_eq!(e.code, 1);

        // A plugin may narrow its list; a version outside it is refused even if netloom knows it.
        let e = select_version("p", Some("0.3.0"), &[], &[CniVersion::V1_0_0]).unwrap_err();
        assert_eq!(e.code, 1);
    }

    #[test]
    fn command_minimums() {
        assert!(require_for_command(Command::Check, CniVersion::V0_4_0).is_ok());
        let e = require_for_command(Command::Check, CniVersion::V0_3_1).unwrap_err();
        assert_eq!(e.code, 1);
        assert_eq!(
            e.msg,
            "CHECK needs CNI version 0.4.0 or later, but the network configuration says 0.3.1"
        );
        assert!(e.details.contains("raise \"cniVersion\""));
        for cmd in [Command::Gc, Command::Status] {
            assert_eq!(
                require_for_command(cmd, CniVersion::V1_0_0)
                    .unwrap_err()
                    .code,
                1
            );
            assert!(require_for_command(cmd, CniVersion::V1_1_0).is_ok());
        }
        assert!(require_for_command(Command::Add, CniVersion::V0_3_0).is_ok());
        assert!(require_for_command(Command::Del, CniVersion::V0_3_0).is_ok());
    }

    #[test]
    fn version_reply_goldens() {
        let all = &CniVersion::ALL;
        assert_eq!(
            version_reply(Some("1.0.0"), all),
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
        assert_eq!(
            version_reply(Some("0.2.0"), all),
            r#"{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
        assert_eq!(
            version_reply(None, all),
            r#"{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
        assert_eq!(
            version_reply(Some("1.1.0"), &[CniVersion::V0_4_0, CniVersion::V1_0_0]),
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}"#
        );
    }

    #[test]
    fn result_shape_switches() {
        assert!(CniVersion::V0_4_0.ips_carry_version());
        assert!(!CniVersion::V1_0_0.ips_carry_version());
        assert!(!CniVersion::V1_0_0.has_1_1_fields());
        assert!(CniVersion::V1_1_0.has_1_1_fields());
    }
}
