//! Just enough HTTP/1.1 to talk to etcd's JSON gateway: one POST per connection
//! (`Connection: close`), bodies framed by Content-Length, chunked encoding or EOF.
//!
//! A client crate would hide the socket, and the watch stream needs it: a dropped watcher shuts
//! the socket down to stop its reader thread, and dead peers are found with TCP keepalive.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The longest status line + headers we accept (etcd sends a few hundred bytes).
const MAX_HEAD: usize = 64 * 1024;

/// Connects to `endpoint` ("host:port"), trying each address it resolves to.
pub(super) fn connect(endpoint: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in endpoint.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Sends one POST with a JSON body; the answer's status and a reader over its body.
pub(super) fn post(
    stream: TcpStream,
    host: &str,
    path: &str,
    body: &[u8],
) -> io::Result<(u16, Body)> {
    let mut w = &stream;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // One write for head and body: small requests leave in one segment.
    let mut req = Vec::with_capacity(head.len() + body.len());
    req.extend_from_slice(head.as_bytes());
    req.extend_from_slice(body);
    w.write_all(&req)?;
    let mut r = BufReader::new(stream);
    let (status, framing) = read_head(&mut r)?;
    Ok((status, Body { r, framing }))
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_line(r: &mut impl BufRead, budget: &mut usize) -> io::Result<String> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(*budget as u64)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before the answer",
        ));
    }
    if line.last() != Some(&b'\n') {
        return Err(bad("answer header too long"));
    }
    *budget -= n;
    let s = String::from_utf8(line).map_err(|_| bad("answer header is not UTF-8"))?;
    Ok(s.trim_end_matches(['\r', '\n']).to_string())
}

fn read_head(r: &mut impl BufRead) -> io::Result<(u16, Framing)> {
    let mut budget = MAX_HEAD;
    let status_line = read_line(r, &mut budget)?;
    let mut parts = status_line.split_whitespace();
    let status = match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code,
        _ => return Err(bad(format!("not an HTTP answer: {status_line:?}"))),
    };
    let mut framing = Framing::Eof;
    loop {
        let line = read_line(r, &mut budget)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if value.to_ascii_lowercase().contains("chunked") {
                framing = Framing::Chunked {
                    left: 0,
                    first: true,
                };
            }
        } else if name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked { .. })
        {
            let n = value
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {value:?}")))?;
            framing = Framing::Length(n);
        }
    }
    Ok((status, framing))
}

#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked { left: u64, first: bool },
    Eof,
    Done,
}

/// An answer's body, decoded from its framing.
pub(super) struct Body {
    r: BufReader<TcpStream>,
    framing: Framing,
}

impl Body {
    /// The whole body (for unary calls).
    pub(super) fn read_all(mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_to_end(&mut out)?;
        Ok(out)
    }

    /// The socket under the body, to set timeouts or shut it down from another thread.
    pub(super) fn socket(&self) -> &TcpStream {
        self.r.get_ref()
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match &mut self.framing {
                Framing::Done => return Ok(0),
                Framing::Eof => return self.r.read(buf),
                Framing::Length(left) => {
                    if *left == 0 {
                        self.framing = Framing::Done;
                        return Ok(0);
                    }
                    let want = buf.len().min(*left as usize);
                    let n = self.r.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "answer body cut short",
                        ));
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
                Framing::Chunked { left, first } => {
                    if *left > 0 {
                        let want = buf.len().min(*left as usize);
                        let n = self.r.read(&mut buf[..want])?;
                        if n == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "chunk cut short",
                            ));
                        }
                        *left -= n as u64;
                        return Ok(n);
                    }
                    let mut budget = MAX_HEAD;
                    if !*first {
                        // The CRLF that ends the previous chunk's data.
                        read_line(&mut self.r, &mut budget)?;
                    }
                    let size_line = read_line(&mut self.r, &mut budget)?;
                    let hex = size_line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(hex, 16)
                        .map_err(|_| bad(format!("bad chunk size {size_line:?}")))?;
                    if size == 0 {
                        // Trailers, then the empty line.
                        while !read_line(&mut self.r, &mut budget)?.is_empty() {}
                        self.framing = Framing::Done;
                        return Ok(0);
                    }
                    self.framing = Framing::Chunked {
                        left: size,
                        first: false,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves `answer` verbatim to one connection and returns what the client sent.
    fn serve(answer: &'static [u8]) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = vec![0u8; 4096];
            let n = s.read(&mut req).unwrap();
            s.write_all(answer).unwrap();
            req.truncate(n);
            req
        });
        (addr, t)
    }

    fn call(answer: &'static [u8]) -> (u16, Vec<u8>, Vec<u8>) {
        let (addr, t) = serve(answer);
        let s = connect(&addr, Duration::from_secs(1)).unwrap();
        let (status, body) = post(s, &addr, "/v3/kv/range", b"{}").unwrap();
        let body = body.read_all().unwrap();
        (status, body, t.join().unwrap())
    }

    #[test]
    fn content_length_body() {
        let (status, body, req) = call(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{}\r\nextra");
        assert_eq!(status, 200);
        assert_eq!(body, b"{}\r\n");
        let req = String::from_utf8(req).unwrap();
        assert!(req.starts_with("POST /v3/kv/range HTTP/1.1\r\n"), "{req}");
        assert!(req.ends_with("\r\n\r\n{}"), "{req}");
    }

    #[test]
    fn chunked_body_with_extension_and_trailer() {
        let (status, body, _) = call(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
        );
        assert_eq!(status, 404);
        assert_eq!(body, b"abcde");
    }

    #[test]
    fn body_to_eof_and_truncation_is_an_error() {
        let (_, body, _) = call(b"HTTP/1.1 200 OK\r\n\r\nall of it");
        assert_eq!(body, b"all of it");
        let (addr, t) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort");
        let s = connect(&addr, Duration::from_secs(1)).unwrap();
        let (_, body) = post(s, &addr, "/", b"").unwrap();
        assert!(body.read_all().is_err());
        t.join().unwrap();
    }

    #[test]
    fn garbage_is_not_an_answer() {
        let (addr, t) = serve(b"SSH-2.0-OpenSSH\r\n\r\n");
        let s = connect(&addr, Duration::from_secs(1)).unwrap();
        let err = post(s, &addr, "/", b"").err().unwrap();
        assert!(err.to_string().contains("not an HTTP answer"), "{err}");
        t.join().unwrap();
    }
}
