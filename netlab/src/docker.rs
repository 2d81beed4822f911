//! Just enough of the Docker Engine API to map containers to their network namespaces: a tiny
//! HTTP/1.1 client over the daemon's unix socket (no TLS, no TCP, one request per connection).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};

/// A running container and where its network namespace is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub id: String,
    /// Without Docker's leading slash.
    pub name: String,
    /// The init process, when running (0 otherwise).
    pub pid: u32,
    /// Docker's `SandboxKey` (`/var/run/docker/netns/<id>`), when it has one.
    pub sandbox_key: Option<PathBuf>,
}

/// The daemon's socket: `DOCKER_HOST=unix://…` or `/var/run/docker.sock`.
pub fn socket_path() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

/// The running containers; `Ok(None)` when there is no Docker socket on this host.
pub fn containers() -> Result<Option<Vec<Container>>> {
    let sock = socket_path();
    if !sock.exists() {
        return Ok(None);
    }
    let list = get_json(&sock, "/containers/json")?;
    let mut out = Vec::new();
    for c in list.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(id) = c.get("Id").and_then(|v| v.as_str()) else {
            continue;
        };
        // One inspect per container: the list has no pid and no SandboxKey.
        let detail = get_json(&sock, &format!("/containers/{id}/json"))?;
        out.push(parse_inspect(id, &detail));
    }
    Ok(Some(out))
}

fn parse_inspect(id: &str, v: &serde_json::Value) -> Container {
    let name = v
        .get("Name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    let pid = v
        .pointer("/State/Pid")
        .and_then(|p| p.as_u64())
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(0);
    let sandbox_key = v
        .pointer("/NetworkSettings/SandboxKey")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    Container {
        id: id.to_string(),
        name,
        pid,
        sandbox_key,
    }
}

fn get_json(sock: &Path, path: &str) -> Result<serde_json::Value> {
    let body = get(sock, path)?;
    serde_json::from_slice(&body)
        .map_err(|e| Error::Docker(format!("GET {path}: the answer is not JSON: {e}")))
}

/// `GET path` over the unix socket; the body of a 200 answer.
fn get(sock: &Path, path: &str) -> Result<Vec<u8>> {
    let fail = |e: std::io::Error| Error::Docker(format!("GET {path} on {}: {e}", sock.display()));
    let mut s = UnixStream::connect(sock).map_err(fail)?;
    // A hung daemon must not hang `netlab ls`.
    let t = Some(Duration::from_secs(5));
    s.set_read_timeout(t).map_err(fail)?;
    s.set_write_timeout(t).map_err(fail)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(fail)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(fail)?;
    let (status, chunked, body) = split_response(&raw)
        .ok_or_else(|| Error::Docker(format!("GET {path}: malformed HTTP answer")))?;
    let body = if chunked {
        dechunk(body).ok_or_else(|| Error::Docker(format!("GET {path}: bad chunked body")))?
    } else {
        body.to_vec()
    };
    if status != 200 {
        let text = String::from_utf8_lossy(&body);
        return Err(Error::Docker(format!(
            "GET {path}: HTTP {status}: {}",
            text.trim()
        )));
    }
    Ok(body)
}

/// Status code, whether the body is chunked, and the body.
fn split_response(raw: &[u8]) -> Option<(u16, bool, &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Some((status, chunked, &raw[end + 4..]))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_answers() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[{\"a\r\n3\r\n\":1\r\n2\r\n}]\r\n0\r\n\r\n";
        let (status, chunked, body) = split_response(raw).expect("valid response");
        assert_eq!(status, 200);
        assert!(chunked);
        assert_eq!(dechunk(body).expect("valid chunks"), b"[{\"a\":1}]");
    }

    #[test]
    fn parses_plain_answers_and_inspect() {
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}";
        let (status, chunked, body) = split_response(raw).expect("valid response");
        assert_eq!((status, chunked, body), (404, false, &b"{}"[..]));
        let v = serde_json::json!({"Name": "/web", "State": {"Pid": 42},
            "NetworkSettings": {"SandboxKey": "/var/run/docker/netns/abc"}});
        let c = parse_inspect("abc123", &v);
        assert_eq!(c.name, "web");
        assert_eq!(c.pid, 42);
        assert_eq!(
            c.sandbox_key,
            Some(PathBuf::from("/var/run/docker/netns/abc"))
        );
    }
}
