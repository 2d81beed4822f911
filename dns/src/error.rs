//! The dns crate's one error type.

/// What can go wrong registering names, talking to the server or serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state store: {0}")]
    Store(#[from] engine_core::Error),
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The server answered a control command with an error (e.g. a listen address it could not
    /// bind).
    #[error("netloom-dnsd: {0}")]
    Server(String),
    /// No server answers on the control socket.
    #[error("netloom-dnsd is not running ({0})")]
    NotRunning(String),
    #[error("DNS wire format: {0}")]
    Proto(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
