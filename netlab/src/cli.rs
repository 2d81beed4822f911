//! The `netlab` command line: argument parsing, human or JSON output, exit codes. Lives in the
//! library so the integration tests can run the very same CLI in-process inside a fake host.

use std::ffi::OsString;
use std::io::Write;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::discover::{self, Discovery};
use crate::error::{Error, Result};
use crate::{inventory, render, target};

#[derive(Parser)]
#[command(
    name = "netlab",
    version,
    about = "See, enter, probe, capture and diagnose container networks"
)]
#[command(propagate_version = true)]
pub struct Cli {
    /// Print JSON instead of tables (every read command).
    #[arg(long, global = true)]
    json: bool,
    /// Skip /proc/*/ns/net when looking for namespaces.
    #[arg(long, global = true)]
    no_processes: bool,
    /// Skip the Docker API socket when looking for namespaces.
    #[arg(long, global = true)]
    no_docker: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List every network namespace with its interfaces, addresses, default route and veth peers.
    Ls,
    /// Run a command inside a target's network namespace (only the netns: host files and tools).
    Exec {
        /// netns name, namespace path, pid, Docker container name/id, CNI container id, or "host".
        target: String,
        /// The command and its arguments (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Show the host's topology: bridges, veth pairs and the namespace of each end, parents.
    Topo {
        #[arg(long, value_enum, default_value_t = TopoFormat::Text)]
        format: TopoFormat,
    },
    /// Check the host's container networking; each check has a verdict and a fix. Exits 3 when a
    /// check fails.
    Doctor,
    /// Capture packets inside a target's netns (AF_PACKET socket opened there; nothing is
    /// installed in it). Prints one line per packet, or writes pcap with -w.
    Capture {
        target: String,
        /// Only this interface (default: all of the namespace's interfaces).
        #[arg(short = 'i', long)]
        interface: Option<String>,
        /// Stop after this many packets.
        #[arg(short = 'c', long)]
        count: Option<usize>,
        /// Write the packets to this pcap file (tcpdump -r, Wireshark).
        #[arg(short = 'w', long)]
        write: Option<std::path::PathBuf>,
        /// Stop after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Keep only packets matching this filter (a tcpdump subset compiled to classic BPF:
        /// arp ip ip6 icmp icmp6 tcp udp, [src|dst] host/net/port, and/or/not, parentheses).
        #[arg(long)]
        filter: Option<String>,
        /// Print the compiled filter program and exit.
        #[arg(long, requires = "filter")]
        dump_filter: bool,
    },
    /// Send real traffic from SRC's netns to DST (an address or a target) and report the
    /// latency; on failure, the likely cause (route, neighbour, firewall rule, masquerade,
    /// rp_filter, MTU). Exits 1 when the probe fails.
    Probe {
        /// Where the traffic starts: a target (netns name, path, pid, container…).
        src: String,
        /// An IP address, or a target (its first address is used).
        dst: String,
        #[arg(long, value_enum, default_value_t = crate::probe::Proto::Icmp)]
        proto: crate::probe::Proto,
        /// Destination port (tcp, udp; dns defaults to 53).
        #[arg(long)]
        port: Option<u16>,
        /// IP packet size in bytes, sent with don't-fragment; on failure netlab finds the path
        /// MTU.
        #[arg(long)]
        size: Option<usize>,
        /// Number of probes.
        #[arg(short = 'c', long, default_value_t = 3)]
        count: usize,
        /// Seconds to wait for each answer.
        #[arg(long, default_value_t = 1.0)]
        timeout: f64,
    },
    /// Show the path from SRC to DST hop by hop: NAT, routes, filter rules, neighbours, veths
    /// and bridges (computed from the kernels' state; sends nothing).
    Trace {
        src: String,
        /// An IP address, or a target (its first address is used).
        dst: String,
        /// Match filter and NAT rules for this protocol.
        #[arg(long, value_enum)]
        proto: Option<crate::probe::Proto>,
        #[arg(long)]
        port: Option<u16>,
    },
    /// Declarative labs (TOML): namespaces, bridges, veth links, addresses, routes.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
}

/// Runs netlab with `args` (the program name first) and returns the exit status.
pub fn main_with<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netlab: {e}");
            e.exit_code()
        }
    }
}

/// The clap command, for completions and the man page.
pub fn command() -> clap::Command {
    Cli::command()
}

fn discovery(cli: &Cli) -> Discovery {
    let opts = discover::Options {
        processes: !cli.no_processes,
        docker: !cli.no_docker,
        ..Default::default()
    };
    discover::discover(&opts)
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut text =
        serde_json::to_string_pretty(v).map_err(|e| Error::Invalid(format!("encode JSON: {e}")))?;
    text.push('\n');
    print_text(&text)
}

fn print_text(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`netlab ls | head`) is not an error worth a message.
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(|e| Error::io("write to stdout", e)),
    }
}

fn run(cli: Cli) -> Result<i32> {
    match &cli.cmd {
        Cmd::Ls => {
            let inv = inventory::collect(&discovery(&cli));
            if cli.json {
                print_json(&inv)?;
            } else {
                print_text(&render::ls(&inv))?;
            }
        }
        Cmd::Topo { format } => {
            let t = crate::topo::build(&inventory::collect(&discovery(&cli)));
            match (format, cli.json) {
                (TopoFormat::Json, _) | (_, true) => print_json(&t)?,
                (TopoFormat::Dot, _) => print_text(&crate::topo::dot(&t))?,
                (TopoFormat::Text, _) => print_text(&crate::topo::text(&t))?,
            }
        }
        Cmd::Doctor => {
            let r = crate::doctor::run(&inventory::collect(&discovery(&cli)), &Default::default());
            if cli.json {
                print_json(&r)?;
            } else {
                print_text(&crate::doctor::text(&r))?;
            }
            if r.verdict == crate::doctor::Verdict::Fail {
                return Ok(3);
            }
        }
        Cmd::Capture {
            target,
            interface,
            count,
            write,
            timeout,
            filter,
            dump_filter,
        } => {
            let prog = filter.as_deref().map(crate::bpf::compile).transpose()?;
            if *dump_filter {
                print_text(&crate::bpf::dump(prog.as_deref().unwrap_or_default()))?;
                return Ok(0);
            }
            return capture(
                &cli,
                target,
                interface.as_deref(),
                *count,
                write.as_deref(),
                *timeout,
                prog.as_deref()
                    .map(|p| (filter.as_deref().unwrap_or_default(), p)),
            );
        }
        Cmd::Exec { target, cmd } => return exec(&cli, target, cmd),
        Cmd::Probe {
            src,
            dst,
            proto,
            port,
            size,
            count,
            timeout,
        } => {
            let timeout = std::time::Duration::try_from_secs_f64(*timeout)
                .ok()
                .filter(|t| !t.is_zero())
                .ok_or_else(|| {
                    Error::Invalid(format!("--timeout {timeout}: not a number of seconds"))
                })?;
            if *count == 0 {
                return Err(Error::Invalid("--count 0: send at least one probe".into()));
            }
            let found = discovery(&cli);
            let inv = inventory::collect(&found);
            let mut w = crate::trace::World::new(&inv);
            let (s, d) = endpoints(&w, &found, src, dst)?;
            let opts = crate::probe::Options {
                proto: *proto,
                port: *port,
                size: *size,
                count: *count,
                timeout,
            };
            let r = crate::probe::probe(&mut w, s, d, &opts)?;
            if cli.json {
                print_json(&r)?;
            } else {
                print_text(&crate::probe::text(&r))?;
            }
            return Ok(if r.ok { 0 } else { 1 });
        }
        Cmd::Trace {
            src,
            dst,
            proto,
            port,
        } => {
            let found = discovery(&cli);
            let inv = inventory::collect(&found);
            let mut w = crate::trace::World::new(&inv);
            let (s, d) = endpoints(&w, &found, src, dst)?;
            let port = port.or(matches!(proto, Some(crate::probe::Proto::Dns)).then_some(53));
            let t = crate::trace::trace(&mut w, s, d, proto.map(|p| p.name()), port);
            if cli.json {
                print_json(&t)?;
            } else {
                print_text(&crate::trace::text(&t))?;
            }
            return Ok(if t.reached { 0 } else { 1 });
        }
        Cmd::Lab { cmd } => return lab(&cli, cmd),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "netlab",
                &mut std::io::stdout(),
            );
        }
        Cmd::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| Error::io("write the man page", e))?;
        }
    }
    Ok(0)
}

fn lab(cli: &Cli, cmd: &LabCmd) -> Result<i32> {
    use crate::lab;
    let dir = lab::state_dir();
    match cmd {
        LabCmd::Up { file, name } => {
            let l = lab::load(file, name.as_deref())?;
            let r = lab::up(&l, Some(file), &dir)?;
            if cli.json {
                print_json(&r)?;
            } else {
                let mut out = String::new();
                for c in &r.created {
                    out.push_str(&format!("created  {c}\n"));
                }
                for c in &r.already {
                    out.push_str(&format!("present  {c}\n"));
                }
                out.push_str(&format!(
                    "lab {} is up ({} created, {} already there)\n",
                    r.name,
                    r.created.len(),
                    r.already.len()
                ));
                print_text(&render::wrap(&out))?;
            }
        }
        LabCmd::Down { lab: which, name } => {
            let path = std::path::Path::new(which);
            let lab_name = if name.is_some() || path.is_file() {
                match name {
                    Some(n) => n.clone(),
                    None => lab::load(path, None)?.name,
                }
            } else {
                which.clone()
            };
            let removed = lab::down(&lab_name, &dir)?;
            if cli.json {
                print_json(&serde_json::json!({ "name": lab_name, "removed": removed }))?;
            } else {
                let mut out = String::new();
                for r in &removed {
                    out.push_str(&format!("removed  {r}\n"));
                }
                out.push_str(&format!("lab {lab_name} is down\n"));
                print_text(&out)?;
            }
        }
        LabCmd::Ls => {
            let labs = lab::list(&dir)?;
            if cli.json {
                print_json(&labs)?;
            } else {
                print_text(&lab::list_text(&labs))?;
            }
        }
    }
    Ok(0)
}

/// SRC as an inventory index and DST as an address (a target's first address).
fn endpoints(
    w: &crate::trace::World<'_>,
    found: &Discovery,
    src: &str,
    dst: &str,
) -> Result<(usize, std::net::IpAddr)> {
    let s_ns = target::resolve(src, found)?;
    let s = w
        .index_of_inode(s_ns.inode)
        .ok_or_else(|| Error::Invalid(format!("{src}: namespace could not be read")))?;
    if let Ok(ip) = dst.parse::<std::net::IpAddr>() {
        return Ok((s, ip));
    }
    let d_ns = target::resolve(dst, found)?;
    let view = w
        .index_of_inode(d_ns.inode)
        .map(|i| &w.inv.namespaces[i])
        .ok_or_else(|| Error::Invalid(format!("{dst}: namespace could not be read")))?;
    let addrs: Vec<std::net::IpAddr> = view
        .interfaces
        .iter()
        .filter(|i| i.name != "lo")
        .flat_map(|i| i.addresses.iter().map(|a| a.ip()))
        .collect();
    let pick = addrs.iter().find(|a| a.is_ipv4()).or_else(|| {
        addrs
            .iter()
            .find(|a| matches!(a, std::net::IpAddr::V6(v) if (v.segments()[0] & 0xffc0) != 0xfe80))
    });
    pick.copied().map(|d| (s, d)).ok_or_else(|| {
        Error::Invalid(format!(
            "{dst} ({}) has no address to send to: give an IP address instead",
            view.label
        ))
    })
}

fn exec(cli: &Cli, t: &str, argv: &[String]) -> Result<i32> {
    let ns = target::resolve(t, &discovery(cli))?;
    let handle = ns.open()?;
    let Some((prog, args)) = argv.split_first() else {
        return Err(Error::Invalid("no command given after the target".into()));
    };
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args);
    handle.command(&mut cmd)?;
    let status = cmd
        .status()
        .map_err(|e| Error::io(format!("run {prog} in {}", ns.label()), e))?;
    use std::os::unix::process::ExitStatusExt;
    // Like a shell: the command's own code, or 128 + the signal that killed it.
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

fn capture(
    cli: &Cli,
    t: &str,
    interface: Option<&str>,
    count: Option<usize>,
    write: Option<&std::path::Path>,
    timeout: Option<f64>,
    filter: Option<(&str, &[crate::bpf::Insn])>,
) -> Result<i32> {
    use crate::capture;
    let ns = target::resolve(t, &discovery(cli))?;
    let cap = capture::Capture::open(&ns.open()?, interface, filter.map(|f| f.1))?;
    let timeout = timeout
        .map(|s| {
            std::time::Duration::try_from_secs_f64(s)
                .map_err(|_| Error::Invalid(format!("--timeout {s}: not a number of seconds")))
        })
        .transpose()?;
    let mut file = match write {
        Some(p) => {
            let f = std::fs::File::create(p)
                .map_err(|e| Error::io(format!("create {}", p.display()), e))?;
            let mut w = std::io::BufWriter::new(f);
            capture::write_pcap_header(&mut w)
                .map_err(|e| Error::io(format!("write {}", p.display()), e))?;
            Some((p, w))
        }
        None => None,
    };
    eprintln!(
        "netlab: capturing in {} on {}{}",
        ns.label(),
        interface.unwrap_or("all interfaces"),
        filter
            .map(|(e, _)| format!(" (filter: {e})"))
            .unwrap_or_default()
    );
    let n = cap.run(count, timeout, |p| {
        if let Some((path, w)) = file.as_mut() {
            capture::write_pcap_record(w, p)
                .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        } else if cli.json {
            print_text(&format!(
                "{}\n",
                serde_json::to_string(p).unwrap_or_default()
            ))?;
        } else {
            let secs = p.ts.as_secs() % 86400;
            let line = format!(
                "{:02}:{:02}:{:02}.{:06} {} {:<5} {}\n",
                secs / 3600,
                secs / 60 % 60,
                secs % 60,
                p.ts.subsec_micros(),
                p.ifname,
                p.direction,
                p.summary
            );
            print_text(&render::clamp(&line))?;
        }
        Ok(())
    })?;
    if let Some((path, mut w)) = file {
        w.flush()
            .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        eprintln!("netlab: {n} packets written to {}", path.display());
    }
    Ok(0)
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build the lab in FILE (idempotent: completes a lab that is already up).
    Up {
        file: std::path::PathBuf,
        /// Use this lab name instead of the file's (namespaces are named NAME-<ns>).
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove exactly what `lab up` made, by lab name or by its file.
    Down {
        lab: String,
        /// With a FILE: the name it was brought up under.
        #[arg(long)]
        name: Option<String>,
    },
    /// The labs that are up.
    Ls,
}

#[derive(Clone, Copy, ValueEnum)]
enum TopoFormat {
    Text,
    Dot,
    Json,
}
