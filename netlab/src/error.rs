//! netlab's error type. Each error says which target or object it is about; [`Error::exit_code`]
//! gives the process exit status (2 for an unknown target, as for a usage error).

/// Result with netlab's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A TARGET that names no namespace; `suggestions` are the closest known names.
    #[error("{}", unknown_target_message(.target, .suggestions))]
    UnknownTarget {
        target: String,
        suggestions: Vec<String>,
    },
    /// Bad input (a lab file, an address, a size).
    #[error("{0}")]
    Invalid(String),
    /// Talking to dockerd failed.
    #[error("docker: {0}")]
    Docker(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Core(#[from] engine_core::Error),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The exit status for this error: 2 for an unknown target or bad input, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::UnknownTarget { .. } | Error::Invalid(_) => 2,
            _ => 1,
        }
    }
}

fn unknown_target_message(target: &str, suggestions: &[String]) -> String {
    let mut m = format!(
        "no network namespace matches target {target:?} (tried: netns name under /run/netns, path, \
         pid, Docker container, CNI/netloom container id)"
    );
    if !suggestions.is_empty() {
        m.push_str("\ndid you mean: ");
        m.push_str(&suggestions.join(", "));
    }
    m
}
