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
        } => {
            return capture(
                &cli,
                target,
                interface.as_deref(),
                *count,
                write.as_deref(),
                *timeout,
            )
        }
        Cmd::Exec { target, cmd } => return exec(&cli, target, cmd),
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
) -> Result<i32> {
    use crate::capture;
    let ns = target::resolve(t, &discovery(cli))?;
    let cap = capture::Capture::open(&ns.open()?, interface)?;
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
        "netlab: capturing in {} on {}",
        ns.label(),
        interface.unwrap_or("all interfaces")
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

#[derive(Clone, Copy, ValueEnum)]
enum TopoFormat {
    Text,
    Dot,
    Json,
}
