//! `netlab probe SRC DST`: real traffic from SRC's namespace (ICMP echo, a TCP connect, a UDP
//! datagram or a DNS query), its latency, and on failure the likely cause from what netlab can
//! see: the kernel's route decisions along the path, neighbour states, nft rules whose counters
//! moved during the probe (or that would match it), ip_forward and rp_filter, the reply path
//! (missing masquerade), and with `--size` the path MTU found with don't-fragment probes.
//!
//! Sockets are opened inside SRC's namespace on a throwaway thread ([`Netns::run`]); they stay
//! bound to it and are used from netlab's own thread. ICMP uses a raw socket (CAP_NET_RAW):
//! unlike a ping socket it also receives the ICMP errors routers send back (unreachable,
//! fragmentation needed), and it does not depend on `ping_group_range`.

use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use engine_core::netns::Netns;
use serde::Serialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::error::{Error, Result};
use crate::trace::{self, Trace, World};

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Icmp,
    Tcp,
    Udp,
    Dns,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Icmp => "icmp",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Dns => "dns",
        }
    }
}

/// The probe's settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub proto: Proto,
    pub port: Option<u16>,
    /// The IP packet's total size in bytes (headers included), sent with don't-fragment.
    pub size: Option<usize>,
    pub count: usize,
    pub timeout: Duration,
}

/// A cause netlab found for a failure.
#[derive(Debug, Clone, Serialize)]
pub struct Cause {
    /// `no_route`, `neighbour`, `firewall`, `masquerade`, `rp_filter`, `forwarding`, `mtu`,
    /// `port_closed`, `reply_path`, `unreachable`.
    pub kind: String,
    pub netns: String,
    pub detail: String,
    pub fix: String,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub src: String,
    pub dst: IpAddr,
    /// The namespace holding DST, when netlab sees it.
    pub dst_netns: Option<String>,
    pub proto: Proto,
    pub port: Option<u16>,
    pub size: Option<usize>,
    pub sent: usize,
    pub received: usize,
    /// Round-trip times of the answered probes, in milliseconds.
    pub rtt_ms: Vec<f64>,
    pub ok: bool,
    /// What happened, in words (`3 replies`, `connection refused`, `no answer within 1s`).
    pub outcome: String,
    /// With `--size`: the largest packet that got through, when it is smaller than the size.
    pub path_mtu: Option<usize>,
    pub causes: Vec<Cause>,
    /// The path as computed after the probe (on failure).
    pub trace: Option<Trace>,
}

/// The result of one round of traffic.
#[derive(Debug, Default)]
struct Round {
    sent: usize,
    rtts: Vec<Duration>,
    /// The reason the last probe failed, in words.
    failure: Option<String>,
    /// An ICMP error that came back: (type-ish kind, from, mtu).
    icmp_error: Option<IcmpError>,
    /// The kernel refused to send: the local route's MTU is too small.
    local_emsgsize: bool,
    refused: bool,
}

#[derive(Debug, Clone)]
struct IcmpError {
    from: IpAddr,
    /// `frag_needed`, `net_unreachable`, `host_unreachable`, `port_unreachable`,
    /// `admin_prohibited`, `time_exceeded`, `unreachable`.
    what: &'static str,
    mtu: Option<u32>,
}

/// Probes from namespace `src` (an index in `w`'s inventory) to `dst`.
pub fn probe(w: &mut World<'_>, src: usize, dst: IpAddr, opts: &Options) -> Result<Report> {
    let port = match opts.proto {
        Proto::Icmp => None,
        Proto::Dns => Some(opts.port.unwrap_or(53)),
        Proto::Tcp | Proto::Udp => Some(opts.port.ok_or_else(|| {
            Error::Invalid(format!("--proto {} needs --port", opts.proto.name()))
        })?),
    };
    let min = min_size(dst, opts.proto);
    if let Some(s) = opts.size {
        if s < min || s > 65535 {
            return Err(Error::Invalid(format!(
                "--size {s}: an IP packet of this kind is {min}..65535 bytes"
            )));
        }
        if matches!(opts.proto, Proto::Tcp) {
            return Err(Error::Invalid("--size works with icmp, udp and dns".into()));
        }
    }
    let label = w.inv.namespaces[src].label.clone();
    let ns = Netns::open(&w.inv.namespaces[src].path)?;
    let path_before = trace::trace(w, src, dst, Some(opts.proto.name()), port);
    let on_path = path_namespaces(w, &path_before, src);
    let before: Vec<_> = on_path.iter().map(|&i| (i, w.rules(i, true))).collect();

    let round = send_round(&ns, dst, port, opts, opts.size, opts.count)?;
    let mut r = Report {
        src: label.clone(),
        dst,
        dst_netns: w
            .owner_of(dst)
            .map(|(i, _)| w.inv.namespaces[i].label.clone()),
        proto: opts.proto,
        port,
        size: opts.size,
        sent: round.sent,
        received: round.rtts.len(),
        rtt_ms: round
            .rtts
            .iter()
            .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
            .collect(),
        ok: !round.rtts.is_empty(),
        outcome: String::new(),
        path_mtu: None,
        causes: Vec::new(),
        trace: None,
    };
    if r.ok {
        r.outcome = format!("{} of {} answered", r.received, r.sent);
        return Ok(r);
    }
    r.outcome = round
        .failure
        .clone()
        .unwrap_or_else(|| format!("no answer within {:?}", opts.timeout));

    // What moved while the probe ran: drop rules whose counters grew.
    let mut counted = false;
    for (i, old) in &before {
        let new = w.rules(*i, true);
        for rule in new.rules.iter().filter(|r| r.drops()) {
            let grew = rule.counter.map(|(p, _)| p).unwrap_or(0)
                > old
                    .rules
                    .iter()
                    .find(|o| {
                        o.handle == rule.handle
                            && o.table == rule.table
                            && o.family == rule.family
                            && o.chain == rule.chain
                    })
                    .and_then(|o| o.counter.map(|(p, _)| p))
                    .unwrap_or(0);
            if grew {
                counted = true;
                r.causes.push(Cause {
                    kind: "firewall".into(),
                    netns: w.inv.namespaces[*i].label.clone(),
                    detail: format!("its counter grew during the probe: {}", rule.describe()),
                    fix: format!(
                        "remove or narrow that rule (nft delete rule {} {} {} handle {}), or \
                         accept this traffic before it",
                        rule.family, rule.table, rule.chain, rule.handle
                    ),
                });
            }
        }
    }

    if round.refused {
        r.causes.push(Cause {
            kind: "port_closed".into(),
            netns: r.dst_netns.clone().unwrap_or_else(|| dst.to_string()),
            detail: format!(
                "{dst} answered that nothing listens on {}/{}",
                opts.proto.name(),
                port.unwrap_or(0)
            ),
            fix: "start the service, or probe the port it listens on".into(),
        });
    }
    if let Some(e) = &round.icmp_error {
        if e.what != "frag_needed" && !(round.refused && e.what == "port_unreachable") {
            r.causes.push(Cause {
                kind: "unreachable".into(),
                netns: w
                    .owner_of(e.from)
                    .map(|(i, _)| w.inv.namespaces[i].label.clone())
                    .unwrap_or_else(|| e.from.to_string()),
                detail: format!("{} sent ICMP {}", e.from, e.what.replace('_', " ")),
                fix: if e.what == "admin_prohibited" {
                    "a firewall rule rejects the packet there: look for a reject rule".into()
                } else {
                    "see the path below for where the route or neighbour is missing".into()
                },
            });
        }
    }

    // MTU: the kernel refused, a router said so, or big packets vanish while small ones pass.
    if let Some(size) = opts.size {
        let mtu = if round.local_emsgsize {
            local_mtu(w, src, &path_before)
        } else {
            round
                .icmp_error
                .as_ref()
                .filter(|e| e.what == "frag_needed")
                .and_then(|e| e.mtu)
                .map(|m| m as usize)
        };
        let mtu = match mtu {
            Some(m) => Some(m),
            None if !round.refused && !counted => search_mtu(&ns, dst, port, opts, size)?,
            None => None,
        };
        if let Some(m) = mtu.filter(|m| *m < size) {
            r.path_mtu = Some(m);
            let smallest = smallest_link(w, &path_before);
            r.causes.push(Cause {
                kind: "mtu".into(),
                netns: smallest
                    .as_ref()
                    .map(|(l, _, _)| l.clone())
                    .unwrap_or_else(|| label.clone()),
                detail: format!(
                    "packets of {size} bytes with don't-fragment do not get through; the path \
                     MTU is {m}{}",
                    smallest
                        .as_ref()
                        .map(|(l, i, mtu)| format!(
                            " (smallest link on the path: {l}:{i} mtu {mtu})"
                        ))
                        .unwrap_or_default()
                ),
                fix: format!(
                    "give every link on the path the same MTU, or set the sender's MTU to {m}"
                ),
            });
        }
    }

    // The path as it stands now (neighbour states have moved on).
    let t = trace::trace(w, src, dst, Some(opts.proto.name()), port);
    diagnose_path(w, &t, &mut r, counted);
    r.trace = Some(t);
    Ok(r)
}

/// Causes that can be read off the path: where it stops, the neighbour that did not answer,
/// filter rules that would drop it, and a reply path that does not come back.
fn diagnose_path(w: &mut World<'_>, t: &Trace, r: &mut Report, counted: bool) {
    for h in &t.hops {
        if let Some(n) = &h.neighbour {
            if n.ends_with("FAILED") || n.ends_with("INCOMPLETE") {
                let ip = n.split_whitespace().next().unwrap_or("?");
                r.causes.push(Cause {
                    kind: "neighbour".into(),
                    netns: h.netns.clone(),
                    detail: format!(
                        "nobody answers {} for {ip} on {} (neighbour entry {})",
                        if ip.contains(':') {
                            "neighbour solicitation"
                        } else {
                            "ARP who-has"
                        },
                        h.oif.as_deref().unwrap_or("?"),
                        n.rsplit(' ').next().unwrap_or("?")
                    ),
                    fix: format!(
                        "check that {ip} is configured and up on that segment (bridge port up, \
                         veth peer up, same subnet)"
                    ),
                });
            }
        }
        if let Some(p) = &h.problem {
            let kind = if p.starts_with("no route") {
                "no_route"
            } else if p.starts_with("reverse-path") {
                "rp_filter"
            } else if p.starts_with("forwarding is off") {
                "forwarding"
            } else if p.starts_with("dropped by the firewall") {
                if counted {
                    continue;
                }
                "firewall"
            } else if p.contains("netlab can see") {
                // Leaving the host is not a cause in itself; a failed neighbour is.
                continue;
            } else {
                "path"
            };
            let fix = match kind {
                "no_route" => format!(
                    "add a route for {} in {} (or a default route)",
                    h.dst, h.netns
                ),
                "rp_filter" => format!(
                    "set net.ipv4.conf.{}.rp_filter=2 (loose) or 0 in {}, or fix the return route",
                    h.iif.as_deref().unwrap_or("all"),
                    h.netns
                ),
                "forwarding" => format!("sysctl -w net.ipv4.ip_forward=1 in {}", h.netns),
                "firewall" => "accept this traffic before that rule, or remove it".into(),
                _ => "see the path below".into(),
            };
            r.causes.push(Cause {
                kind: kind.into(),
                netns: h.netns.clone(),
                detail: p.clone(),
                fix,
            });
        }
        if !counted {
            for f in h.filter.iter().filter(|f| f.starts_with("may ")) {
                r.causes.push(Cause {
                    kind: "firewall".into(),
                    netns: h.netns.clone(),
                    detail: format!("this would drop the probe: {f}"),
                    fix: "accept this traffic before that rule, or remove it".into(),
                });
            }
        }
    }
    // The reply path: from where the packet is delivered back to the source address it carries.
    if t.reached {
        let Some(last) = t.hops.last() else { return };
        let (Some(i), Some(back_to)) = (w.index_of_label(&last.netns), last.src) else {
            return;
        };
        let back = trace::trace(w, i, back_to, None, None);
        if !back.reached {
            let why = back
                .hops
                .iter()
                .find_map(|h| h.problem.clone())
                .unwrap_or_else(|| "the reply does not find its way back".into());
            let fwd = t
                .hops
                .iter()
                .find(|h| h.action == "forward" && h.nat.is_empty());
            match fwd {
                Some(f) => r.causes.push(Cause {
                    kind: "masquerade".into(),
                    netns: f.netns.clone(),
                    detail: format!(
                        "{} forwards {} out of {} without masquerade, and the reply cannot come \
                         back: {why}",
                        f.netns,
                        back_to,
                        f.oif.as_deref().unwrap_or("?")
                    ),
                    fix: format!(
                        "nft add rule ip nat postrouting ip saddr {back_to} oifname {} \
                         masquerade (in {}), or route the source's subnet back from {}",
                        f.oif.as_deref().unwrap_or("?"),
                        f.netns,
                        last.netns
                    ),
                }),
                None => r.causes.push(Cause {
                    kind: "reply_path".into(),
                    netns: last.netns.clone(),
                    detail: format!("the reply to {back_to} cannot come back: {why}"),
                    fix: format!("add a route back to {back_to} in {}", last.netns),
                }),
            }
        }
    }
}

/// The namespaces a path visits (the source first).
fn path_namespaces(w: &World<'_>, t: &Trace, src: usize) -> Vec<usize> {
    let mut v = vec![src];
    for h in &t.hops {
        if let Some(i) = w.index_of_label(&h.netns) {
            if !v.contains(&i) {
                v.push(i);
            }
        }
    }
    v
}

/// The MTU of the source's output interface.
fn local_mtu(w: &World<'_>, src: usize, t: &Trace) -> Option<usize> {
    let oif = t.hops.first()?.oif.as_deref()?;
    w.inv.namespaces[src].iface(oif).map(|f| f.mtu as usize)
}

/// The link with the smallest MTU among the interfaces the path uses.
fn smallest_link(w: &World<'_>, t: &Trace) -> Option<(String, String, u32)> {
    let mut best: Option<(String, String, u32)> = None;
    let mut consider = |label: &str, ifname: &str| {
        let Some(i) = w.index_of_label(label) else {
            return;
        };
        if let Some(f) = w.inv.namespaces[i].iface(ifname) {
            if best.as_ref().is_none_or(|b| f.mtu < b.2) {
                best = Some((label.to_string(), ifname.to_string(), f.mtu));
            }
        }
    };
    for h in &t.hops {
        if let Some(o) = &h.oif {
            consider(&h.netns, o);
        }
        if let Some(i) = &h.iif {
            consider(&h.netns, i);
        }
        for l in &h.link {
            // "veth a:x ═ b:y", "bridge ns:br → port p (…)", "ns:p is a port of bridge br"
            for word in l.split_whitespace() {
                if let Some((ns, ifname)) = word.split_once(':') {
                    consider(ns, ifname.trim_end_matches(','));
                }
            }
        }
    }
    best
}

/// Binary search for the largest don't-fragment packet that gets an answer, between the
/// smallest packet and `size`. `None` when even the smallest gets none (not an MTU problem).
fn search_mtu(
    ns: &Netns,
    dst: IpAddr,
    port: Option<u16>,
    opts: &Options,
    size: usize,
) -> Result<Option<usize>> {
    let quick = Options {
        timeout: opts.timeout.min(Duration::from_millis(500)),
        ..opts.clone()
    };
    let mut lo = min_size(dst, opts.proto);
    if send_round(ns, dst, port, &quick, Some(lo), 1)?
        .rtts
        .is_empty()
    {
        return Ok(None);
    }
    let mut hi = size;
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let round = send_round(ns, dst, port, &quick, Some(mid), 1)?;
        if round.rtts.is_empty() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(lo))
}

/// The smallest IP packet of this kind: headers plus a few bytes of payload.
fn min_size(dst: IpAddr, proto: Proto) -> usize {
    let ip = if dst.is_ipv4() { 20 } else { 40 };
    match proto {
        Proto::Icmp => ip + 8 + 8,
        Proto::Udp | Proto::Tcp => ip + 8 + 1,
        Proto::Dns => ip + 8 + 38,
    }
}

/// Sends `count` probes of `size` bytes (or the default) and collects the answers.
fn send_round(
    ns: &Netns,
    dst: IpAddr,
    port: Option<u16>,
    opts: &Options,
    size: Option<usize>,
    count: usize,
) -> Result<Round> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let (ty, proto) = match opts.proto {
        Proto::Icmp if dst.is_ipv4() => (Type::RAW, Protocol::ICMPV4),
        Proto::Icmp => (Type::RAW, Protocol::ICMPV6),
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        Proto::Udp | Proto::Dns => (Type::DGRAM, Protocol::UDP),
    };
    let sock = ns
        .run(move || Socket::new(domain, ty, Some(proto)))?
        .map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::EPERM) {
                " (ICMP needs CAP_NET_RAW: run as root, or use --proto tcp/udp)"
            } else {
                ""
            };
            Error::io(
                format!("open a probe socket in {}{hint}", ns.path().display()),
                e,
            )
        })?;
    if size.is_some() || opts.proto == Proto::Icmp {
        set_dont_fragment(&sock, dst, size.is_some())?;
    }
    let mut round = Round::default();
    let target = SockAddr::from(SocketAddr::new(dst, port.unwrap_or(0)));
    match opts.proto {
        Proto::Tcp => {
            for seq in 0..count {
                let s = if seq == 0 {
                    sock.try_clone()
                        .map_err(|e| Error::io("duplicate the probe socket", e))?
                } else {
                    ns.run(move || Socket::new(domain, Type::STREAM, Some(Protocol::TCP)))?
                        .map_err(|e| Error::io("open a probe socket", e))?
                };
                round.sent += 1;
                let t0 = Instant::now();
                match s.connect_timeout(&target, opts.timeout) {
                    Ok(()) => round.rtts.push(t0.elapsed()),
                    Err(e) => {
                        round.refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
                        round.failure = Some(describe_io(&e, opts.timeout));
                        break;
                    }
                }
                pause(seq, count);
            }
        }
        Proto::Udp | Proto::Dns => {
            sock.connect(&target)
                .map_err(|e| Error::io(format!("connect a UDP socket to {dst}"), e))?;
            for seq in 0..count {
                let id = (std::process::id() as u16) ^ (seq as u16).wrapping_mul(7919);
                let payload = if opts.proto == Proto::Dns {
                    dns_query(id)
                } else {
                    let n = size
                        .map(|s| s - min_size(dst, Proto::Udp) + 1)
                        .unwrap_or(16);
                    vec![b'n'; n]
                };
                let mut payload = payload;
                if let (Some(s), Proto::Dns) = (size, opts.proto) {
                    // Pad the query (the server ignores trailing bytes or answers FORMERR;
                    // either is an answer).
                    payload.resize(s - min_size(dst, Proto::Udp) + 1, 0);
                }
                round.sent += 1;
                let t0 = Instant::now();
                if let Err(e) = sock.send(&payload) {
                    round.local_emsgsize = e.raw_os_error() == Some(libc::EMSGSIZE);
                    round.failure = Some(describe_io(&e, opts.timeout));
                    break;
                }
                match recv_until(&sock, t0 + opts.timeout, |b| {
                    opts.proto != Proto::Dns || b.get(..2) == Some(&id.to_be_bytes()[..])
                }) {
                    Ok(true) => round.rtts.push(t0.elapsed()),
                    Ok(false) => {
                        round.failure = Some(format!("no answer within {:?}", opts.timeout));
                        break;
                    }
                    Err(e) => {
                        round.refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
                        round.local_emsgsize = e.raw_os_error() == Some(libc::EMSGSIZE);
                        round.failure = Some(describe_io(&e, opts.timeout));
                        break;
                    }
                }
                pause(seq, count);
            }
        }
        Proto::Icmp => icmp_round(&sock, dst, &target, opts, size, count, &mut round),
    }
    Ok(round)
}

fn pause(seq: usize, count: usize) {
    if seq + 1 < count {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn describe_io(e: &std::io::Error, timeout: Duration) -> String {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            format!("no answer within {timeout:?}")
        }
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ if e.raw_os_error() == Some(libc::ENOBUFS) => {
            "dropped as it was sent (ENOBUFS: a veth whose peer has a smaller MTU, or a full \
             queue)"
                .into()
        }
        _ => e.to_string(),
    }
}

/// Don't-fragment on (`--size`: find the path MTU) or the kernel's default.
fn set_dont_fragment(sock: &Socket, dst: IpAddr, on: bool) -> Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name, value) = if dst.is_ipv4() {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            if on {
                libc::IP_PMTUDISC_PROBE
            } else {
                libc::IP_PMTUDISC_WANT
            },
        )
    } else {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            if on {
                libc::IPV6_PMTUDISC_PROBE
            } else {
                libc::IPV6_PMTUDISC_WANT
            },
        )
    };
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(Error::io(
            "set don't-fragment on the probe socket",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Waits for a datagram `accept` likes until `deadline`; `Ok(false)` on timeout.
fn recv_until(
    sock: &Socket,
    deadline: Instant,
    mut accept: impl FnMut(&[u8]) -> bool,
) -> std::io::Result<bool> {
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Ok(false);
        };
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                // SAFETY: recv initialised the first n bytes.
                let data: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
                if accept(data) {
                    return Ok(true);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A DNS query for `netlab-probe.invalid. A` (`.invalid` is reserved: no real name is asked).
fn dns_query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(40);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["netlab-probe", "invalid"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// ICMP echo over a raw socket: replies are matched by identifier and sequence, and ICMP
/// errors about our own echo requests (they quote its header) are recorded.
fn icmp_round(
    sock: &Socket,
    dst: IpAddr,
    target: &SockAddr,
    opts: &Options,
    size: Option<usize>,
    count: usize,
    round: &mut Round,
) {
    let v4 = dst.is_ipv4();
    // Raw ICMP sockets see every echo reply in the namespace: the identifier (pid mixed with
    // the clock, so two probes of one process differ) picks out ours.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let ident = (std::process::id() as u16) ^ ((nanos >> 10) as u16);
    let payload_len = size
        .map(|s| s - min_size(dst, Proto::Icmp) + 8)
        .unwrap_or(56);
    for seq in 0..count {
        let seq16 = seq as u16 + 1;
        let mut pkt = vec![0u8; 8 + payload_len];
        pkt[0] = if v4 { 8 } else { 128 };
        pkt[4..6].copy_from_slice(&ident.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq16.to_be_bytes());
        for (i, b) in pkt[8..].iter_mut().enumerate() {
            *b = i as u8;
        }
        if v4 {
            // ICMPv6's checksum is the kernel's job on raw sockets; ICMPv4's is ours.
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
        }
        round.sent += 1;
        let t0 = Instant::now();
        if let Err(e) = sock.send_to(&pkt, target) {
            round.local_emsgsize = e.raw_os_error() == Some(libc::EMSGSIZE);
            round.failure = Some(describe_io(&e, opts.timeout));
            return;
        }
        let deadline = t0 + opts.timeout;
        let mut err = None;
        let got = recv_until(sock, deadline, |b| {
            let icmp = if v4 {
                let ihl = usize::from(b.first().map(|x| x & 0x0f).unwrap_or(5)) * 4;
                b.get(ihl..).unwrap_or_default()
            } else {
                b
            };
            match parse_icmp(icmp, v4, dst, ident, seq16) {
                Some(Ok(())) => true,
                Some(Err(e)) => {
                    err = Some(IcmpError {
                        from: if v4 { src_of_v4(b).unwrap_or(dst) } else { dst },
                        ..e
                    });
                    true
                }
                None => false,
            }
        });
        match (got, err) {
            (Ok(true), None) => round.rtts.push(t0.elapsed()),
            (Ok(true), Some(e)) => {
                round.failure = Some(format!("ICMP {} from {}", e.what.replace('_', " "), e.from));
                round.icmp_error = Some(e);
                return;
            }
            (Ok(false), _) => {
                round.failure = Some(format!("no answer within {:?}", opts.timeout));
                return;
            }
            (Err(e), _) => {
                round.failure = Some(describe_io(&e, opts.timeout));
                return;
            }
        }
        pause(seq, count);
    }
}

fn src_of_v4(b: &[u8]) -> Option<IpAddr> {
    let s: [u8; 4] = b.get(12..16)?.try_into().ok()?;
    Some(IpAddr::from(s))
}

/// `Some(Ok)` for our echo reply, `Some(Err)` for an ICMP error quoting our request, `None`
/// for anything else (other pings, other traffic).
fn parse_icmp(
    b: &[u8],
    v4: bool,
    dst: IpAddr,
    ident: u16,
    seq: u16,
) -> Option<std::result::Result<(), IcmpError>> {
    let (ty, code) = (*b.first()?, *b.get(1)?);
    let ours = |h: &[u8]| {
        h.get(4..6) == Some(&ident.to_be_bytes()[..]) && h.get(6..8) == Some(&seq.to_be_bytes()[..])
    };
    let reply = if v4 { 0 } else { 129 };
    if ty == reply {
        return ours(b).then_some(Ok(()));
    }
    // The quoted packet: its IP header, then the first bytes of our echo request.
    let quoted = b.get(8..)?;
    let inner = if v4 {
        let ihl = usize::from(quoted.first()? & 0x0f) * 4;
        let qdst: [u8; 4] = quoted.get(16..20)?.try_into().ok()?;
        if IpAddr::from(qdst) != dst {
            return None;
        }
        quoted.get(ihl..)?
    } else {
        let qdst: [u8; 16] = quoted.get(24..40)?.try_into().ok()?;
        if IpAddr::from(qdst) != dst {
            return None;
        }
        quoted.get(40..)?
    };
    if !ours(inner) {
        return None;
    }
    let mtu = u32::from(u16::from_be_bytes([*b.get(6)?, *b.get(7)?]));
    let what = match (v4, ty, code) {
        (true, 3, 4) | (false, 2, _) => "frag_needed",
        (true, 3, 0) | (false, 1, 0) => "net_unreachable",
        (true, 3, 1) | (false, 1, 3) => "host_unreachable",
        (true, 3, 3) | (false, 1, 4) => "port_unreachable",
        (true, 3, 9 | 10 | 13) | (false, 1, 1) => "admin_prohibited",
        (true, 11, _) | (false, 3, _) => "time_exceeded",
        (true, 3, _) | (false, 1, _) => "unreachable",
        _ => return None,
    };
    let mtu = match (v4, what) {
        (true, "frag_needed") => Some(mtu),
        (false, "frag_needed") => Some(u32::from_be_bytes([
            *b.get(4)?,
            *b.get(5)?,
            *b.get(6)?,
            *b.get(7)?,
        ])),
        _ => None,
    };
    Some(Err(IcmpError {
        from: dst,
        what,
        mtu,
    }))
}

/// The Internet checksum (RFC 1071).
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The report in words.
pub fn text(r: &Report) -> String {
    let mut out = format!(
        "probe {} → {}{} {}{}{}\n",
        r.src,
        r.dst,
        r.dst_netns
            .as_ref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default(),
        r.proto.name(),
        r.port.map(|p| format!("/{p}")).unwrap_or_default(),
        r.size
            .map(|s| format!(", {s} bytes, don't fragment"))
            .unwrap_or_default()
    );
    for (i, ms) in r.rtt_ms.iter().enumerate() {
        out.push_str(&format!("  answer {}: {ms:.3} ms\n", i + 1));
    }
    if r.ok {
        let min = r.rtt_ms.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = r.rtt_ms.iter().cloned().fold(0.0, f64::max);
        let avg = r.rtt_ms.iter().sum::<f64>() / r.rtt_ms.len().max(1) as f64;
        out.push_str(&format!(
            "ok: {} sent, {} answered, rtt min/avg/max {min:.3}/{avg:.3}/{max:.3} ms\n",
            r.sent, r.received
        ));
        return out;
    }
    out.push_str(&format!(
        "FAILED: {} sent, {} answered: {}\n",
        r.sent, r.received, r.outcome
    ));
    if let Some(m) = r.path_mtu {
        out.push_str(&format!("path MTU: {m}\n"));
    }
    if r.causes.is_empty() {
        out.push_str("no cause found along the path netlab can see\n");
    } else {
        out.push_str("likely cause:\n");
        for c in &r.causes {
            out.push_str(&format!("  {:<11} {}: {}\n", c.kind, c.netns, c.detail));
            out.push_str(&format!("              fix: {}\n", c.fix));
        }
    }
    if let Some(t) = &r.trace {
        out.push_str("path:\n");
        for l in trace::text(t).lines() {
            out.push_str(&format!("  {l}\n"));
        }
    }
    crate::render::wrap(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_and_icmp_parsing() {
        // An echo request with all-zero payload: checksum of type 8 and the id/seq words.
        let mut p = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&p), 0);
        let dst: IpAddr = "10.0.0.9".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let mut reply = p.clone();
        reply[0] = 0;
        assert!(matches!(
            parse_icmp(&reply, true, dst, 0x1234, 1),
            Some(Ok(()))
        ));
        assert!(parse_icmp(&reply, true, dst, 0x1234, 2).is_none());
        // Fragmentation needed, MTU 1280, quoting an IP header to 10.0.0.9 and our request.
        let mut err = vec![3u8, 4, 0, 0, 0, 0, 0x05, 0x00];
        let mut iph = vec![0x45u8; 1];
        iph.extend_from_slice(&[0; 15]);
        iph.extend_from_slice(&[10, 0, 0, 9]);
        err.extend_from_slice(&iph);
        err.extend_from_slice(&p);
        match parse_icmp(&err, true, dst, 0x1234, 1) {
            Some(Err(e)) => {
                assert_eq!(e.what, "frag_needed");
                assert_eq!(e.mtu, Some(1280));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(dns_query(7).len(), 38);
    }
}
