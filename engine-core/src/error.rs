//! engine-core's error type.
//!
//! Every error carries a [`ErrorKind`] so the front doors can map it without parsing messages:
//! the CNI binaries turn a kind into a spec error code, netloomd into an HTTP status plus
//! `{"Err": …}`. Messages are written for the person who has to fix the problem.

use std::io;

/// What sort of failure this is, independent of where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The configuration or request is wrong; retrying the same input will fail again.
    InvalidConfig,
    /// A valid request for something netloom does not do (yet), or this host cannot do.
    Unsupported,
    /// The thing asked about does not exist.
    NotFound,
    /// The request clashes with something that exists (overlapping subnet, taken address/port).
    Conflict,
    /// A pool or another finite resource has nothing left.
    Exhausted,
    /// Somebody else holds a lock or a newer version; retry later.
    Busy,
    /// Protocol or format version mismatch.
    Incompatible,
    /// The kernel refused (netlink errno, mount, setns...).
    Kernel,
    /// Programming the firewall failed.
    Firewall,
    /// Reading or writing local files failed.
    Io,
    /// A bug or an invariant that does not hold.
    Internal,
}

/// engine-core's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Busy(String),
    /// A shared store (etcd) cannot be reached. Its kind is [`ErrorKind::Busy`] ("try again
    /// later": CNI code 11, HTTP 503); [`Error::is_unavailable`] tells it from a held lock.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Incompatible(String),
    /// A kernel call failed; `errno` is kept so callers can tell EEXIST from ENODEV.
    #[error("{context}: {source}")]
    Kernel {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error("{context}: netlink: {message}")]
    Netlink {
        context: String,
        /// Positive errno when the kernel answered with one.
        errno: Option<i32>,
        message: String,
    },
    #[error("{0}")]
    Firewall(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Internal(String),
    /// Keeps the kind of the inner error while adding what we were doing.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidConfig(_) => ErrorKind::InvalidConfig,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::Exhausted(_) => ErrorKind::Exhausted,
            Error::Busy(_) | Error::Unavailable(_) => ErrorKind::Busy,
            Error::Incompatible(_) => ErrorKind::Incompatible,
            Error::Kernel { .. } | Error::Netlink { .. } => ErrorKind::Kernel,
            Error::Firewall(_) => ErrorKind::Firewall,
            Error::Io { .. } => ErrorKind::Io,
            Error::Json { .. } => ErrorKind::InvalidConfig,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Context { source, .. } => source.kind(),
        }
    }

    /// Whether a shared store was unreachable somewhere in this error's chain.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Unavailable(_) => true,
            Error::Context { source, .. } => source.is_unavailable(),
            _ => false,
        }
    }

    /// The errno behind a kernel failure, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { source, .. } => Some(*source as i32),
            Error::Netlink { errno, .. } => *errno,
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Context { source, .. } => source.errno(),
            _ => None,
        }
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn kernel(context: impl Into<String>, source: nix::Error) -> Self {
        Error::Kernel {
            context: context.into(),
            source,
        }
    }

    pub fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.into(),
            source,
        }
    }

    /// Wraps the error with what we were doing, keeping its kind.
    pub fn context(self, context: impl Into<String>) -> Self {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// The whole chain, outermost first, one cause per element.
    pub fn chain(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur: &dyn std::error::Error = self;
        loop {
            // Context/Io/Kernel render "ctx: source"; keep only their own part so the chain
            // does not repeat every inner message.
            let own = match (cur.to_string(), cur.source()) {
                (s, Some(src)) => {
                    let inner = src.to_string();
                    s.strip_suffix(&inner)
                        .map(|p| p.trim_end_matches(": ").to_string())
                        .unwrap_or(s)
                }
                (s, None) => s,
            };
            out.push(own);
            match cur.source() {
                Some(next) => cur = next,
                None => break,
            }
        }
        out
    }
}

/// Adds context to any `Result<_, Error>`.
pub trait ResultExt<T> {
    fn context(self, context: impl Into<String>) -> Result<T>;
    fn with_context<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.context(context))
    }
    fn with_context<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| e.context(f()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_kind_and_errno() {
        let e = Error::kernel("create veth", nix::Error::EEXIST)
            .context("endpoint abc")
            .context("network web");
        assert_eq!(e.kind(), ErrorKind::Kernel);
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert_eq!(e.chain()[0], "network web");
        assert_eq!(e.chain()[1], "endpoint abc");
        assert!(e
            .to_string()
            .starts_with("network web: endpoint abc: create veth"));
    }

    #[test]
    fn conflict_message_is_verbatim() {
        let e = Error::Conflict("subnet 10.1.0.0/24 overlaps network web".into());
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(e.to_string(), "subnet 10.1.0.0/24 overlaps network web");
    }
}
