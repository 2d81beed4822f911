//! The server's control socket (`<state>/dns/control.sock`, mode 0600): one line in, the answer
//! out, then the server closes the connection.
//!
//! Commands: `reload` (re-read the registry, bind or drop listeners, swap the table; answers
//! `ok` or `error: …` once the new table serves), `ping` (`ok <pid>`), `metrics` (Prometheus
//! text). An HTTP `GET /metrics` line is answered as HTTP, so
//! `curl --unix-socket <state>/dns/control.sock http://x/metrics` works too.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

/// Sends `command` and returns the server's answer. A socket nobody listens on is
/// [`Error::NotRunning`]; a server that is shutting down answers `exiting`, reported the same.
pub fn request(socket: &Path, command: &str, timeout: Duration) -> Result<String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| Error::NotRunning(format!("{}: {e}", socket.display())))?;
    let io = |e: std::io::Error| Error::io(format!("control socket {}", socket.display()), e);
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.write_all(format!("{command}\n").as_bytes()).map_err(io)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| {
        // A server that exits between accept and answer resets the connection.
        Error::NotRunning(format!("{}: {e}", socket.display()))
    })?;
    let answer = answer.trim_end().to_string();
    if answer == "exiting" || answer.is_empty() {
        return Err(Error::NotRunning("it is shutting down".into()));
    }
    if let Some(msg) = answer.strip_prefix("error: ") {
        return Err(Error::Server(msg.to_string()));
    }
    Ok(answer)
}

/// `reload`: returns once the server answers with the registry as it is now.
pub fn reload(socket: &Path) -> Result<()> {
    request(socket, "reload", Duration::from_secs(10)).map(|_| ())
}
