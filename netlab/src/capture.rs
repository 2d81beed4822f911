//! `netlab capture`: packets seen inside a target's namespace, without installing anything in
//! it. An `AF_PACKET` socket is opened on a throwaway thread inside the namespace (it stays
//! bound there) and read from netlab's own thread; packets are written as pcap (readable by
//! tcpdump and Wireshark) and/or summarised one line each.

use std::fmt::Write as _;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine_core::netns::Netns;
use serde::Serialize;

use crate::bpf::Insn;
use crate::error::{Error, Result};

/// pcap's link type for Ethernet frames (LINKTYPE_ETHERNET).
const LINKTYPE_ETHERNET: u32 = 1;
const SNAPLEN: usize = 65535;

/// A capture socket inside a namespace.
pub struct Capture {
    fd: OwnedFd,
    /// Interface names by index, read when the socket was opened (for the summaries).
    names: Vec<(u32, String)>,
}

/// One captured frame.
#[derive(Debug, Clone, Serialize)]
pub struct Packet {
    pub time: f64,
    pub ifname: String,
    /// `in`, `out`, `bcast`, `mcast`, `other`.
    pub direction: &'static str,
    pub len: usize,
    pub summary: String,
    #[serde(skip)]
    pub data: Vec<u8>,
    #[serde(skip)]
    pub ts: Duration,
}

impl Capture {
    /// Opens a capture socket in `ns`, on `ifname` only or on every interface, keeping only
    /// the frames `filter` (a compiled [`crate::bpf`] program) accepts.
    pub fn open(ns: &Netns, ifname: Option<&str>, filter: Option<&[Insn]>) -> Result<Capture> {
        let ifname = ifname.map(str::to_string);
        let label = ns.path().display().to_string();
        let cap = ns.run(move || open_here(ifname.as_deref(), &label))??;
        if let Some(prog) = filter {
            crate::bpf::attach(cap.fd.as_raw_fd(), prog)
                .map_err(|e| Error::io("attach the capture filter", e))?;
            // Frames queued between socket() and the attach went past the filter: drop them.
            let mut buf = [0u8; 64];
            // SAFETY: buf is valid for its length; MSG_DONTWAIT never blocks.
            while unsafe {
                libc::recv(
                    cap.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            } >= 0
            {}
        }
        Ok(cap)
    }

    /// Reads up to `count` packets (`None`: no limit) for at most `timeout` (`None`: no limit),
    /// calling `each` with every packet as it arrives.
    pub fn run(
        &self,
        count: Option<usize>,
        timeout: Option<Duration>,
        mut each: impl FnMut(&Packet) -> Result<()>,
    ) -> Result<usize> {
        let start = Instant::now();
        let mut buf = vec![0u8; SNAPLEN];
        let mut n = 0;
        while count.is_none_or(|c| n < c) {
            let wait = match timeout {
                Some(t) => match t.checked_sub(start.elapsed()) {
                    Some(left) => i32::try_from(left.as_millis()).unwrap_or(i32::MAX),
                    None => break,
                },
                None => -1,
            };
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&mut pfd, 1, wait) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::io("poll the capture socket", e));
            }
            if r == 0 {
                break;
            }
            // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut flen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid for the lengths given; the kernel writes at most
            // that much. MSG_TRUNC makes it return the frame's real length.
            let got = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut flen,
                )
            };
            if got < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::io("read the capture socket", e));
            }
            let len = got as usize;
            let data = buf[..len.min(buf.len())].to_vec();
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let index = u32::try_from(from.sll_ifindex).unwrap_or(0);
            let ifname = self
                .names
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, n)| n.clone())
                .unwrap_or_else(|| format!("if{index}"));
            let p = Packet {
                time: ts.as_secs_f64(),
                direction: direction(from.sll_pkttype),
                summary: summarize(&data),
                ifname,
                len,
                data,
                ts,
            };
            each(&p)?;
            n += 1;
        }
        Ok(n)
    }
}

fn open_here(ifname: Option<&str>, label: &str) -> Result<Capture> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked and owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if raw < 0 {
        return Err(Error::io(
            format!("open a packet socket in {label}"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: raw is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let names = interface_names();
    if let Some(name) = ifname {
        let Some(index) = names.iter().find(|(_, n)| n == name).map(|(i, _)| *i) else {
            let known: Vec<&str> = names.iter().map(|(_, n)| n.as_str()).collect();
            return Err(Error::Invalid(format!(
                "no interface {name} in {label} (it has: {})",
                known.join(", ")
            )));
        };
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = i32::try_from(index).unwrap_or(0);
        // SAFETY: sa is a valid sockaddr_ll of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(Error::io(
                format!("bind the packet socket to {name}"),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(Capture { fd, names })
}

/// Index and name of each interface of the calling thread's namespace (/sys is the mount
/// namespace's view, so ask the kernel through if_nameindex instead).
fn interface_names() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array ended by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            out.push(((*p).if_index, name));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

fn direction(pkttype: u8) -> &'static str {
    match pkttype {
        libc::PACKET_HOST => "in",
        libc::PACKET_OUTGOING => "out",
        libc::PACKET_BROADCAST => "bcast",
        libc::PACKET_MULTICAST => "mcast",
        _ => "other",
    }
}

/// Writes the pcap file header.
pub fn write_pcap_header(w: &mut impl Write) -> std::io::Result<()> {
    let mut h = Vec::with_capacity(24);
    h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&0i32.to_le_bytes()); // GMT offset
    h.extend_from_slice(&0u32.to_le_bytes()); // timestamp accuracy
    h.extend_from_slice(&(SNAPLEN as u32).to_le_bytes());
    h.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    w.write_all(&h)
}

/// Writes one pcap record.
pub fn write_pcap_record(w: &mut impl Write, p: &Packet) -> std::io::Result<()> {
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&(p.ts.as_secs() as u32).to_le_bytes());
    h.extend_from_slice(&p.ts.subsec_micros().to_le_bytes());
    h.extend_from_slice(&(p.data.len() as u32).to_le_bytes());
    h.extend_from_slice(&(p.len as u32).to_le_bytes());
    w.write_all(&h)?;
    w.write_all(&p.data)
}

/// Reads a pcap file back: (link type, frames). For tests and `netlab capture -r` later.
pub fn read_pcap(b: &[u8]) -> Option<(u32, Vec<Vec<u8>>)> {
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    if u32_at(0)? != 0xa1b2_c3d4 {
        return None;
    }
    let link = u32_at(20)?;
    let mut frames = Vec::new();
    let mut o = 24;
    while o < b.len() {
        let incl = u32_at(o + 8)? as usize;
        frames.push(b.get(o + 16..o + 16 + incl)?.to_vec());
        o += 16 + incl;
    }
    Some((link, frames))
}

/// One line about an Ethernet frame: protocol, addresses, ports.
pub fn summarize(f: &[u8]) -> String {
    if f.len() < 14 {
        return format!("short frame ({} bytes)", f.len());
    }
    let mac = |o: usize| {
        f[o..o + 6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let (mut ethertype, mut off) = (u16::from_be_bytes([f[12], f[13]]), 14);
    if ethertype == 0x8100 && f.len() >= 18 {
        ethertype = u16::from_be_bytes([f[16], f[17]]);
        off = 18;
    }
    let p = &f[off..];
    match ethertype {
        0x0806 if p.len() >= 28 => {
            let op = u16::from_be_bytes([p[6], p[7]]);
            let spa = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
            let tpa = Ipv4Addr::new(p[24], p[25], p[26], p[27]);
            match op {
                1 => format!("ARP who-has {tpa} tell {spa}"),
                2 => format!("ARP {spa} is-at {}", mac(off + 8)),
                _ => format!("ARP op {op}"),
            }
        }
        0x0800 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            let total = u16::from_be_bytes([p[2], p[3]]);
            l4(
                p[9],
                p.get(ihl..).unwrap_or_default(),
                &src.to_string(),
                &dst.to_string(),
                total,
            )
        }
        0x86dd if p.len() >= 40 => {
            let a = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&p[o..o + 16]);
                Ipv6Addr::from(b).to_string()
            };
            let total = u16::from_be_bytes([p[4], p[5]]) + 40;
            l4(p[6], &p[40..], &a(8), &a(24), total)
        }
        t => format!(
            "{} > {} ethertype 0x{t:04x}, {} bytes",
            mac(6),
            mac(0),
            f.len()
        ),
    }
}

fn l4(proto: u8, p: &[u8], src: &str, dst: &str, total: u16) -> String {
    let port = |o: usize| p.get(o..o + 2).map(|s| u16::from_be_bytes([s[0], s[1]]));
    let mut s = String::new();
    match proto {
        1 | 58 => {
            let kind = match (proto, p.first()) {
                (1, Some(8)) | (58, Some(128)) => "echo request".to_string(),
                (1, Some(0)) | (58, Some(129)) => "echo reply".to_string(),
                (1, Some(3)) => format!("unreachable code {}", p.get(1).copied().unwrap_or(0)),
                (58, Some(135)) => "neighbor solicitation".to_string(),
                (58, Some(136)) => "neighbor advertisement".to_string(),
                (_, Some(t)) => format!("type {t}"),
                (_, None) => "truncated".to_string(),
            };
            let _ = write!(
                s,
                "{src} > {dst}: ICMP{} {kind}",
                if proto == 58 { "6" } else { "" }
            );
        }
        6 | 17 => {
            let name = if proto == 6 { "TCP" } else { "UDP" };
            let (sp, dp) = (port(0).unwrap_or(0), port(2).unwrap_or(0));
            let _ = write!(s, "{src}.{sp} > {dst}.{dp}: {name}");
            if proto == 6 {
                let flags = p.get(13).copied().unwrap_or(0);
                let names = [
                    (0x02, 'S'),
                    (0x10, '.'),
                    (0x01, 'F'),
                    (0x04, 'R'),
                    (0x08, 'P'),
                ];
                let f: String = names
                    .iter()
                    .filter(|(b, _)| flags & b != 0)
                    .map(|(_, c)| *c)
                    .collect();
                let _ = write!(s, " [{f}]");
            }
        }
        other => {
            let _ = write!(s, "{src} > {dst}: proto {other}");
        }
    }
    let _ = write!(s, ", length {total}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcap_round_trip_and_summaries() {
        // Ethernet + IPv4 + UDP 1234 -> 9999.
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        f.extend_from_slice(&[
            0x45, 0, 0, 31, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 3,
        ]);
        f.extend_from_slice(&[0x04, 0xd2, 0x27, 0x0f, 0, 11, 0, 0, b'h', b'i', b'!']);
        assert_eq!(
            summarize(&f),
            "10.0.0.2.1234 > 10.0.0.3.9999: UDP, length 31"
        );
        let p = Packet {
            time: 1.5,
            ifname: "eth0".into(),
            direction: "in",
            len: f.len(),
            summary: String::new(),
            data: f.clone(),
            ts: Duration::from_millis(1500),
        };
        let mut out = Vec::new();
        write_pcap_header(&mut out).expect("write to a Vec");
        write_pcap_record(&mut out, &p).expect("write to a Vec");
        let (link, frames) = read_pcap(&out).expect("valid pcap");
        assert_eq!(link, LINKTYPE_ETHERNET);
        assert_eq!(frames, vec![f]);
    }
}
