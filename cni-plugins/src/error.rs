//! CNI error replies: `{"cniVersion", "code", "msg", "details"}` on stdout, exit status 1.
//!
//! Codes 1–99 belong to the CNI specification; netloom's own start at 100 so a runtime (or a
//! person reading its logs) can tell "your config is wrong" from "the address pool is empty".
//!
//! | code | meaning | produced for |
//! |-----:|---------|--------------|
//! | 1    | incompatible CNI version | unsupported `cniVersion`; CHECK below 0.4.0; GC/STATUS below 1.1.0; [`ErrorKind::Incompatible`] |
//! | 2    | unsupported field | unknown `CNI_ARGS` key without `IgnoreUnknown`; [`ErrorKind::Unsupported`] |
//! | 3    | container unknown (runtime need not call DEL) | only when a plugin says so explicitly ([`CniError::unknown_container`]) |
//! | 4    | invalid or missing environment variable | `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH` |
//! | 5    | I/O failure | reading stdin, local files; [`ErrorKind::Io`] |
//! | 6    | failed to decode content | stdin is not JSON / has wrong types; unreadable `prevResult` |
//! | 7    | invalid network configuration | values that decode but make no sense; [`ErrorKind::InvalidConfig`] |
//! | 8    | invalid network namespace | only when a plugin says so explicitly ([`CniError::invalid_netns`]) |
//! | 11   | try again later | [`ErrorKind::Busy`] (a lock or a newer version held elsewhere) |
//! | 50   | STATUS: plugin cannot serve ADD | [`CniError::unavailable`] |
//! | 51   | STATUS: cannot serve ADD and existing containers may be degraded | [`CniError::unavailable_degraded`] |
//! | 100  | a pool or other finite resource is exhausted | [`ErrorKind::Exhausted`] |
//! | 101  | conflict with something that exists (address, port, subnet) | [`ErrorKind::Conflict`] |
//! | 102  | the kernel refused (netlink, setns, mount...) | [`ErrorKind::Kernel`] |
//! | 103  | programming the firewall failed | [`ErrorKind::Firewall`] |
//! | 104  | something asked about does not exist | [`ErrorKind::NotFound`] |
//! | 199  | internal error (a bug) | [`ErrorKind::Internal`] |
//!
//! `msg` is the whole message with its context ("network web: pool … has no free address");
//! `details` is the innermost cause alone, left out of the JSON when there is no context (the
//! reference plugins do the same).

use std::fmt;

use engine_core::ErrorKind;
use serde::Serialize;

/// The numeric codes, named.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const INVALID_NETNS: u32 = 8;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const UNAVAILABLE: u32 = 50;
    pub const UNAVAILABLE_DEGRADED: u32 = 51;
    pub const EXHAUSTED: u32 = 100;
    pub const CONFLICT: u32 = 101;
    pub const KERNEL: u32 = 102;
    pub const FIREWALL: u32 = 103;
    pub const NOT_FOUND: u32 = 104;
    pub const INTERNAL: u32 = 199;
}

/// A CNI error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    /// What went wrong, for the person reading the runtime's error.
    pub msg: String,
    /// Why (the causes), possibly empty.
    pub details: String,
}

/// The wire shape; field order follows the spec's examples.
#[derive(Serialize)]
struct Reply<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    details: &'a str,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn incompatible(msg: impl Into<String>) -> Self {
        Self::new(code::INCOMPATIBLE_VERSION, msg)
    }

    pub fn unsupported_field(msg: impl Into<String>) -> Self {
        Self::new(code::UNSUPPORTED_FIELD, msg)
    }

    /// Code 3 tells the runtime it need not call DEL; only say it when that is certain.
    pub fn unknown_container(msg: impl Into<String>) -> Self {
        Self::new(code::UNKNOWN_CONTAINER, msg)
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg)
    }

    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(code::IO, msg)
    }

    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(code::DECODE, msg)
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }

    pub fn invalid_netns(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_NETNS, msg)
    }

    pub fn try_again_later(msg: impl Into<String>) -> Self {
        Self::new(code::TRY_AGAIN_LATER, msg)
    }

    /// STATUS: this plugin cannot serve ADD right now (code 50).
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::new(code::UNAVAILABLE, msg)
    }

    /// STATUS: cannot serve ADD, and containers already attached may be affected (code 51).
    pub fn unavailable_degraded(msg: impl Into<String>) -> Self {
        Self::new(code::UNAVAILABLE_DEGRADED, msg)
    }

    /// Turns an engine error into a STATUS answer (50, or 51 when `degraded`), keeping its
    /// message and causes: STATUS only has those two codes for "not ready".
    pub fn status_from(err: &engine_core::Error, degraded: bool) -> Self {
        let mut e = CniError::from(err);
        e.code = if degraded {
            code::UNAVAILABLE_DEGRADED
        } else {
            code::UNAVAILABLE
        };
        e
    }

    /// The reply as JSON text, stamped with the request's CNI version.
    pub fn to_json(&self, cni_version: &str) -> String {
        let reply = Reply {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        };
        // Serialising a struct of strings and an integer cannot fail; fall back to a fixed
        // reply rather than panicking in the one path that must always produce output.
        serde_json::to_string(&reply).unwrap_or_else(|_| {
            format!(
                r#"{{"cniVersion":"{}","code":{},"msg":"unprintable error"}}"#,
                cni_version, self.code
            )
        })
    }
}

impl fmt::Display for CniError {
    /// Same shape libcni gives runtimes: `msg; details`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "{}; {}", self.msg, self.details)
        }
    }
}

impl std::error::Error for CniError {}

/// The CNI code for an engine error kind (see the table in the module docs).
pub fn code_for_kind(kind: ErrorKind) -> u32 {
    match kind {
        ErrorKind::Incompatible => code::INCOMPATIBLE_VERSION,
        ErrorKind::Unsupported => code::UNSUPPORTED_FIELD,
        ErrorKind::Io => code::IO,
        ErrorKind::InvalidConfig => code::INVALID_CONFIG,
        ErrorKind::Busy => code::TRY_AGAIN_LATER,
        ErrorKind::Exhausted => code::EXHAUSTED,
        ErrorKind::Conflict => code::CONFLICT,
        ErrorKind::Kernel => code::KERNEL,
        ErrorKind::Firewall => code::FIREWALL,
        ErrorKind::NotFound => code::NOT_FOUND,
        ErrorKind::Internal => code::INTERNAL,
    }
}

impl From<&engine_core::Error> for CniError {
    fn from(err: &engine_core::Error) -> Self {
        // The whole chain reads as one sentence ("network web: pool 10.1.0.0/26 has no free
        // address"); runtimes often show only `msg`, so the cause must be in it. `details`
        // repeats the innermost cause on its own for tools that want just that.
        let chain = err.chain();
        let msg = err.to_string();
        let details = if chain.len() > 1 {
            chain.last().cloned().unwrap_or_default()
        } else {
            String::new()
        };
        CniError {
            code: code_for_kind(err.kind()),
            msg,
            details,
        }
    }
}

impl From<engine_core::Error> for CniError {
    fn from(err: engine_core::Error) -> Self {
        CniError::from(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_core::Error;

    #[test]
    fn every_kind_has_its_documented_code() {
        let table = [
            (ErrorKind::Incompatible, 1),
            (ErrorKind::Unsupported, 2),
            (ErrorKind::Io, 5),
            (ErrorKind::InvalidConfig, 7),
            (ErrorKind::Busy, 11),
            (ErrorKind::Exhausted, 100),
            (ErrorKind::Conflict, 101),
            (ErrorKind::Kernel, 102),
            (ErrorKind::Firewall, 103),
            (ErrorKind::NotFound, 104),
            (ErrorKind::Internal, 199),
        ];
        for (kind, want) in table {
            assert_eq!(code_for_kind(kind), want, "{kind:?}");
        }
    }

    #[test]
    fn golden_without_details() {
        let e = CniError::invalid_config("subnet 10.1.0.0/24 overlaps network web");
        assert_eq!(
            e.to_json("1.0.0"),
            r#"{"cniVersion":"1.0.0","code":7,"msg":"subnet 10.1.0.0/24 overlaps network web"}"#
        );
    }

    #[test]
    fn golden_with_details_matches_recorded_reply_shape() {
        // Byte-for-byte the reply recorded in libcni-invocations (fault-ADD-portmap).
        let e = CniError::invalid_config("injected portmap failure")
            .with_details("injected by CNCL_FAULT");
        assert_eq!(
            e.to_json("1.0.0"),
            r#"{"cniVersion":"1.0.0","code":7,"msg":"injected portmap failure","details":"injected by CNCL_FAULT"}"#
        );
    }

    #[test]
    fn json_escapes_quotes_in_messages() {
        let e = CniError::invalid_env(r#"CNI_IFNAME "a/b" is invalid"#);
        let v: serde_json::Value = serde_json::from_str(&e.to_json("0.4.0")).unwrap();
        assert_eq!(v["msg"], r#"CNI_IFNAME "a/b" is invalid"#);
        assert_eq!(v["code"], 4);
    }

    #[test]
    fn engine_chain_becomes_msg_and_details() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let err = Error::io("write lease 10.1.0.5", io)
            .context("lease for c1/eth0")
            .context("network web");
        let e = CniError::from(&err);
        assert_eq!(e.code, 5);
        assert_eq!(
            e.to_json("1.1.0"),
            r#"{"cniVersion":"1.1.0","code":5,"msg":"network web: lease for c1/eth0: write lease 10.1.0.5: permission denied","details":"permission denied"}"#
        );
        let netlink = Error::Netlink {
            context: "create veth".into(),
            errno: Some(17),
            message: "File exists".into(),
        };
        let e = CniError::from(netlink.context("endpoint abc"));
        assert_eq!(
            (e.code, e.msg.as_str()),
            (102, "endpoint abc: create veth: netlink: File exists")
        );
        assert_eq!(e.details, "create veth: netlink: File exists");
    }

    #[test]
    fn single_message_errors_have_no_details() {
        let e = CniError::from(Error::Exhausted(
            "pool 10.1.0.0/24 has no free address".into(),
        ));
        assert_eq!(
            e,
            CniError::new(100, "pool 10.1.0.0/24 has no free address")
        );
        let e = CniError::from(Error::Conflict("port 8080/tcp is taken".into()));
        assert_eq!(e.code, 101);
        let e = CniError::from(Error::NotFound("network web".into()));
        assert_eq!(e.code, 104);
        let e = CniError::from(Error::Busy("network web is locked".into()));
        assert_eq!(e.code, 11);
    }

    #[test]
    fn status_answers_use_50_or_51() {
        let err = Error::Busy("netloomd socket not answering".into()).context("reach netloomd");
        let e = CniError::status_from(&err, false);
        assert_eq!(
            (e.code, e.msg.as_str()),
            (50, "reach netloomd: netloomd socket not answering")
        );
        assert_eq!(e.details, "netloomd socket not answering");
        assert_eq!(CniError::status_from(&err, true).code, 51);
    }

    #[test]
    fn display_joins_like_libcni() {
        let e = CniError::io("read stdin").with_details("broken pipe");
        assert_eq!(e.to_string(), "read stdin; broken pipe");
        assert_eq!(CniError::io("read stdin").to_string(), "read stdin");
    }
}
