//! `netlab capture --filter EXPR`: a small subset of tcpdump's filter language compiled to
//! classic BPF and attached to the capture socket, so the kernel drops what does not match
//! before it is copied to netlab.
//!
//! The subset (Ethernet frames; IPv4 and IPv6 without extension headers):
//!
//! ```text
//! expr  := expr or expr | expr and expr | not expr | ( expr )    (also || && !)
//! prim  := arp | ip | ip6 | icmp | icmp6 | tcp | udp
//!        | [src|dst] host ADDR          IPv4 or IPv6 address
//!        | [src|dst] net CIDR           IPv4 network
//!        | [tcp|udp] [src|dst] port N
//! ```
//!
//! `and` binds tighter than `or`, as in tcpdump. Ports match only unfragmented IPv4 packets
//! and first fragments (the header length is read from the packet).

use std::net::IpAddr;

use ipnetwork::Ipv4Network;

use crate::error::{Error, Result};

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Opcodes (linux/filter.h).
const LD_W_ABS: u16 = 0x20;
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const LD_H_IND: u16 = 0x48;
const LDX_B_MSH: u16 = 0xb1;
const ALU_AND_K: u16 = 0x54;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

const ETH_IP: u32 = 0x0800;
const ETH_IP6: u32 = 0x86dd;
const ETH_ARP: u32 = 0x0806;

/// The filter's syntax tree, down to single loads and compares.
#[derive(Debug, Clone)]
enum Node {
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    /// Load `width` bytes at `off`, mask, compare with `val`.
    Eq {
        width: u16,
        off: u32,
        mask: Option<u32>,
        val: u32,
    },
    /// An IPv4 port (`off` 0: source, 2: destination) behind a variable-length header.
    Port4 {
        off: u32,
        port: u16,
    },
}

fn and(a: Node, b: Node) -> Node {
    Node::And(Box::new(a), Box::new(b))
}
fn or(a: Node, b: Node) -> Node {
    Node::Or(Box::new(a), Box::new(b))
}
fn eq(width: u16, off: u32, val: u32) -> Node {
    Node::Eq {
        width,
        off,
        mask: None,
        val,
    }
}
fn ethertype(t: u32) -> Node {
    eq(LD_H_ABS, 12, t)
}

/// Compiles `expr` to a program that returns the whole frame on a match and 0 otherwise.
pub fn compile(expr: &str) -> Result<Vec<Insn>> {
    let tokens = tokenize(expr);
    if tokens.is_empty() {
        return Err(Error::Invalid("--filter: empty expression".into()));
    }
    let mut p = Parser { t: &tokens, i: 0 };
    let tree = p.or()?;
    if p.i < tokens.len() {
        return Err(Error::Invalid(format!(
            "--filter {expr:?}: unexpected {:?}",
            tokens[p.i]
        )));
    }
    let mut g = Gen::default();
    let (accept, reject) = (g.label(), g.label());
    g.node(&tree, accept, reject);
    g.place(accept);
    g.ops.push(Op::Ins(Insn {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: 0x40000,
    }));
    g.place(reject);
    g.ops.push(Op::Ins(Insn {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: 0,
    }));
    g.resolve()
        .map_err(|e| Error::Invalid(format!("--filter {expr:?}: {e}")))
}

fn tokenize(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let flush = |cur: &mut String, out: &mut Vec<String>| {
        if !cur.is_empty() {
            out.push(std::mem::take(cur));
        }
    };
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '(' | ')' => {
                flush(&mut cur, &mut out);
                out.push(c.to_string());
            }
            '!' => {
                flush(&mut cur, &mut out);
                out.push("not".into());
            }
            '&' | '|' if chars.get(i + 1) == Some(&c) => {
                flush(&mut cur, &mut out);
                out.push(if c == '&' { "and" } else { "or" }.into());
                i += 1;
            }
            c if c.is_whitespace() => flush(&mut cur, &mut out),
            c => cur.push(c),
        }
        i += 1;
    }
    flush(&mut cur, &mut out);
    out
}

struct Parser<'a> {
    t: &'a [String],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&str> {
        self.t.get(self.i).map(String::as_str)
    }
    fn next(&mut self) -> Option<&str> {
        let t = self.t.get(self.i).map(String::as_str);
        self.i += 1;
        t
    }
    fn or(&mut self) -> Result<Node> {
        let mut n = self.and()?;
        while self.peek() == Some("or") {
            self.i += 1;
            n = or(n, self.and()?);
        }
        Ok(n)
    }
    fn and(&mut self) -> Result<Node> {
        let mut n = self.not()?;
        while self.peek() == Some("and") {
            self.i += 1;
            n = and(n, self.not()?);
        }
        Ok(n)
    }
    fn not(&mut self) -> Result<Node> {
        if self.peek() == Some("not") {
            self.i += 1;
            return Ok(Node::Not(Box::new(self.not()?)));
        }
        if self.peek() == Some("(") {
            self.i += 1;
            let n = self.or()?;
            if self.next() != Some(")") {
                return Err(Error::Invalid("--filter: missing ')'".into()));
            }
            return Ok(n);
        }
        self.prim()
    }
    fn prim(&mut self) -> Result<Node> {
        let word = self
            .next()
            .ok_or_else(|| Error::Invalid("--filter: expression ends too early".into()))?
            .to_string();
        let proto_num = |p: &str| match p {
            "tcp" => Some(6u32),
            "udp" => Some(17),
            _ => None,
        };
        match word.as_str() {
            "arp" => Ok(ethertype(ETH_ARP)),
            "ip" => Ok(ethertype(ETH_IP)),
            "ip6" => Ok(ethertype(ETH_IP6)),
            "icmp" => Ok(and(ethertype(ETH_IP), eq(LD_B_ABS, 23, 1))),
            "icmp6" => Ok(and(ethertype(ETH_IP6), eq(LD_B_ABS, 20, 58))),
            "tcp" | "udp" if self.peek() == Some("port") || self.dir_then_port() => {
                let dir = self.dir();
                self.port(dir, proto_num(&word))
            }
            "tcp" | "udp" => {
                let n = proto_num(&word).unwrap_or(0);
                Ok(or(
                    and(ethertype(ETH_IP), eq(LD_B_ABS, 23, n)),
                    and(ethertype(ETH_IP6), eq(LD_B_ABS, 20, n)),
                ))
            }
            "src" | "dst" => {
                let d = Some(word == "src");
                match self.next() {
                    Some("host") => self.host(d),
                    Some("net") => self.net(d),
                    Some("port") => {
                        self.i -= 1;
                        self.port(d, None)
                    }
                    other => Err(Error::Invalid(format!(
                        "--filter: {word} must be followed by host, net or port, not {other:?}"
                    ))),
                }
            }
            "host" => self.host(None),
            "net" => self.net(None),
            "port" => {
                self.i -= 1;
                self.port(None, None)
            }
            other => Err(Error::Invalid(format!(
                "--filter: unknown word {other:?} (netlab knows arp ip ip6 icmp icmp6 tcp udp, \
                 [src|dst] host/net/port, and/or/not, parentheses)"
            ))),
        }
    }
    fn dir_then_port(&self) -> bool {
        matches!(self.peek(), Some("src" | "dst"))
            && self.t.get(self.i + 1).map(String::as_str) == Some("port")
    }
    fn dir(&mut self) -> Option<bool> {
        match self.peek() {
            Some("src") => {
                self.i += 1;
                Some(true)
            }
            Some("dst") => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }
    fn value(&mut self, what: &str) -> Result<String> {
        self.next()
            .map(str::to_string)
            .ok_or_else(|| Error::Invalid(format!("--filter: {what} needs a value")))
    }
    fn host(&mut self, src: Option<bool>) -> Result<Node> {
        let v = self.value("host")?;
        let ip: IpAddr = v
            .parse()
            .map_err(|_| Error::Invalid(format!("--filter: host {v:?} is not an IP address")))?;
        Ok(match ip {
            IpAddr::V4(a) => {
                let k = u32::from(a);
                let s = eq(LD_W_ABS, 26, k);
                let d = eq(LD_W_ABS, 30, k);
                and(ethertype(ETH_IP), pick(src, s, d))
            }
            IpAddr::V6(a) => {
                let words: Vec<u32> = a
                    .octets()
                    .chunks(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let at = |base: u32| {
                    words
                        .iter()
                        .enumerate()
                        .map(|(i, w)| eq(LD_W_ABS, base + 4 * i as u32, *w))
                        .reduce(and)
                        .unwrap_or_else(|| ethertype(ETH_IP6))
                };
                and(ethertype(ETH_IP6), pick(src, at(22), at(38)))
            }
        })
    }
    fn net(&mut self, src: Option<bool>) -> Result<Node> {
        let v = self.value("net")?;
        let n: Ipv4Network = v
            .parse()
            .map_err(|_| Error::Invalid(format!("--filter: net {v:?} is not an IPv4 network")))?;
        let mask = u32::from(n.mask());
        let val = u32::from(n.network());
        let m = |off| Node::Eq {
            width: LD_W_ABS,
            off,
            mask: Some(mask),
            val,
        };
        Ok(and(ethertype(ETH_IP), pick(src, m(26), m(30))))
    }
    fn port(&mut self, src: Option<bool>, proto: Option<u32>) -> Result<Node> {
        if self.next() != Some("port") {
            return Err(Error::Invalid("--filter: expected port".into()));
        }
        let v = self.value("port")?;
        let port: u16 = v
            .parse()
            .map_err(|_| Error::Invalid(format!("--filter: port {v:?} is not a number")))?;
        let protos = |off: u32| match proto {
            Some(p) => eq(LD_B_ABS, off, p),
            None => or(eq(LD_B_ABS, off, 6), eq(LD_B_ABS, off, 17)),
        };
        let v4 = and(
            and(ethertype(ETH_IP), protos(23)),
            pick(
                src,
                Node::Port4 { off: 0, port },
                Node::Port4 { off: 2, port },
            ),
        );
        let v6 = and(
            and(ethertype(ETH_IP6), protos(20)),
            pick(
                src,
                eq(LD_H_ABS, 54, u32::from(port)),
                eq(LD_H_ABS, 56, u32::from(port)),
            ),
        );
        Ok(or(v4, v6))
    }
}

/// Source only, destination only, or either.
fn pick(src: Option<bool>, s: Node, d: Node) -> Node {
    match src {
        Some(true) => s,
        Some(false) => d,
        None => or(s, d),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Label(usize);

enum Op {
    Ins(Insn),
    /// A conditional jump to labels.
    Jump {
        code: u16,
        k: u32,
        t: Label,
        f: Label,
    },
    Place(Label),
}

#[derive(Default)]
struct Gen {
    ops: Vec<Op>,
    labels: usize,
}

impl Gen {
    fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }
    fn place(&mut self, l: Label) {
        self.ops.push(Op::Place(l));
    }
    fn stmt(&mut self, code: u16, k: u32) {
        self.ops.push(Op::Ins(Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        }));
    }
    /// Emits code that jumps to `t` when `n` holds and to `f` otherwise. Both labels are
    /// placed after this code, so every jump goes forward, as classic BPF requires.
    fn node(&mut self, n: &Node, t: Label, f: Label) {
        match n {
            Node::And(a, b) => {
                let m = self.label();
                self.node(a, m, f);
                self.place(m);
                self.node(b, t, f);
            }
            Node::Or(a, b) => {
                let m = self.label();
                self.node(a, t, m);
                self.place(m);
                self.node(b, t, f);
            }
            Node::Not(a) => self.node(a, f, t),
            Node::Eq {
                width,
                off,
                mask,
                val,
            } => {
                self.stmt(*width, *off);
                if let Some(m) = mask {
                    self.stmt(ALU_AND_K, *m);
                }
                self.ops.push(Op::Jump {
                    code: JEQ_K,
                    k: *val,
                    t,
                    f,
                });
            }
            Node::Port4 { off, port } => {
                // Fragments after the first carry no ports.
                let whole = self.label();
                self.stmt(LD_H_ABS, 20);
                self.ops.push(Op::Jump {
                    code: JSET_K,
                    k: 0x1fff,
                    t: f,
                    f: whole,
                });
                self.place(whole);
                self.stmt(LDX_B_MSH, 14);
                self.stmt(LD_H_IND, 14 + off);
                self.ops.push(Op::Jump {
                    code: JEQ_K,
                    k: u32::from(*port),
                    t,
                    f,
                });
            }
        }
    }
    fn resolve(self) -> std::result::Result<Vec<Insn>, String> {
        // Where each label lands: the index of the next real instruction.
        let mut at = vec![usize::MAX; self.labels];
        let mut n = 0;
        for op in &self.ops {
            match op {
                Op::Place(l) => at[l.0] = n,
                _ => n += 1,
            }
        }
        let mut out = Vec::with_capacity(n);
        for op in &self.ops {
            match op {
                Op::Place(_) => {}
                Op::Ins(i) => out.push(*i),
                Op::Jump { code, k, t, f } => {
                    let here = out.len() + 1;
                    let off = |l: &Label| -> std::result::Result<u8, String> {
                        at[l.0]
                            .checked_sub(here)
                            .and_then(|d| u8::try_from(d).ok())
                            .ok_or_else(|| "the expression is too long for one BPF program".into())
                    };
                    out.push(Insn {
                        code: *code,
                        jt: off(t)?,
                        jf: off(f)?,
                        k: *k,
                    });
                }
            }
        }
        if out.len() > 4096 {
            return Err("the expression is too long for one BPF program".into());
        }
        Ok(out)
    }
}

/// Runs `prog` on `pkt` like the kernel does (for the tests and `--filter` checks).
pub fn run(prog: &[Insn], pkt: &[u8]) -> u32 {
    let (mut a, mut x): (u32, u32) = (0, 0);
    let mut pc = 0;
    let ld = |off: usize, w: usize| -> Option<u32> {
        let b = pkt.get(off..off + w)?;
        Some(b.iter().fold(0u32, |v, byte| (v << 8) | u32::from(*byte)))
    };
    while let Some(i) = prog.get(pc) {
        pc += 1;
        let k = i.k as usize;
        match i.code {
            LD_W_ABS | LD_H_ABS | LD_B_ABS => {
                let w = match i.code {
                    LD_W_ABS => 4,
                    LD_H_ABS => 2,
                    _ => 1,
                };
                match ld(k, w) {
                    Some(v) => a = v,
                    None => return 0,
                }
            }
            LD_H_IND => match ld(x as usize + k, 2) {
                Some(v) => a = v,
                None => return 0,
            },
            LDX_B_MSH => match pkt.get(k) {
                Some(b) => x = u32::from(b & 0x0f) * 4,
                None => return 0,
            },
            ALU_AND_K => a &= i.k,
            JEQ_K | JSET_K => {
                let hit = if i.code == JEQ_K {
                    a == i.k
                } else {
                    a & i.k != 0
                };
                pc += usize::from(if hit { i.jt } else { i.jf });
            }
            RET_K => return i.k,
            _ => return 0,
        }
    }
    0
}

/// The program as `tcpdump -d` would list it (for `--filter` debugging).
pub fn dump(prog: &[Insn]) -> String {
    prog.iter()
        .enumerate()
        .map(|(n, i)| {
            format!(
                "({n:03}) code 0x{:02x} jt {} jf {} k 0x{:x}\n",
                i.code, i.jt, i.jf, i.k
            )
        })
        .collect()
}

/// Attaches `prog` to socket `fd` (`SO_ATTACH_FILTER`).
pub fn attach(fd: std::os::fd::RawFd, prog: &[Insn]) -> std::io::Result<()> {
    let filters: Vec<libc::sock_filter> = prog
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: u16::try_from(filters.len()).unwrap_or(u16::MAX),
        filter: filters.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `filters`, which outlives the call; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame from 10.0.0.1:5000 to 10.0.0.2:`dport`.
    fn udp4(dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&5000u16.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    fn hit(expr: &str, f: &[u8]) -> bool {
        run(&compile(expr).unwrap_or_default(), f) != 0
    }

    #[test]
    fn filters_match_like_tcpdump() {
        let f = udp4(9999);
        assert!(hit("udp port 9999", &f));
        assert!(hit("udp dst port 9999", &f));
        assert!(!hit("udp src port 9999", &f));
        assert!(!hit("tcp port 9999", &f));
        assert!(hit("src host 10.0.0.1 and dst host 10.0.0.2", &f));
        assert!(!hit("dst host 10.0.0.1", &f));
        assert!(hit("net 10.0.0.0/24 && !icmp", &f));
        assert!(hit("arp or (udp and port 5000)", &f));
        assert!(!hit("arp or ip6", &f));
        assert!(hit("not tcp", &f));
        assert!(!hit("udp port 53", &udp4(54)));
        assert!(compile("udp port").is_err());
        assert!(compile("bogus").is_err());
        assert!(compile("(udp").is_err());
        assert!(compile("").is_err());
    }
}
