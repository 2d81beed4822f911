//! Our CNI plugins under a real CNI client: Debian's podman 4.3 with its CNI backend (libcni),
//! the way podman users switch: a conflist with `netloom-bridge`, `netloom-ipam` and
//! `netloom-portmap` in podman's network config dir, then `podman run --network NAME -p …`.
//! podman runs in a fake host; its containers, netns and storage are removed on drop.

use std::time::Duration;

use engine_core::store::file::FileStore;
use engine_core::{Key, StateStore};
use serde_json::json;
use tests::docker::http_get_in;
use tests::podman::{Podman, IMAGE};
use tests::{cni, image, names, run_main, Cap, FakeHost, Suite};

const PODMAN: &[Cap] = &[
    Cap::Root,
    Cap::Veth,
    Cap::Bridge,
    Cap::Nftables,
    Cap::Podman,
];

fn main() {
    let mut s = Suite::new();
    s.test(
        "podman::run_ping_publish_and_remove",
        PODMAN,
        run_ping_publish_remove,
    );
    run_main(s)
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

fn run_ping_publish_remove() -> Result<(), String> {
    let host = FakeHost::new("pod")?;
    let state = host.state_dir().join("netloom");
    let podman = Podman::start(&host, &cni::bin_dir(), &state)?;
    let n = names::next();
    let (net, bridge) = (names::unique("pod"), format!("nlbr-p{n}"));
    let subnet = names::subnet_v4();
    let gateway = subnet.nth(1).ok_or("subnet too small")?.to_string();
    // The conflist a podman user would have, with the reference types swapped for ours. The
    // state dir is in the conflist, not in the environment: podman runs DEL from the cleanup
    // process conmon starts, which does not inherit the caller's environment.
    let state_s = state.to_string_lossy().into_owned();
    podman.add_conflist(
        &net,
        &json!({
            "cniVersion": "1.0.0",
            "name": net,
            "plugins": [
                {
                    "type": "netloom-bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "stateDir": state_s,
                    "ipam": {
                        "type": "netloom-ipam",
                        "ranges": [[{"subnet": subnet.to_string(), "gateway": gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": host.state_dir().join("cni")
                    }
                },
                {
                    "type": "netloom-portmap",
                    "capabilities": {"portMappings": true},
                    "stateDir": state_s
                }
            ]
        }),
    )?;
    let listed = podman.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"])?;
    ensure(listed.contains(&format!("{net} netloom-bridge")), || {
        format!("podman does not list the netloom network: {listed}")
    })?;

    // A web server published on the host, and a client beside it.
    let publish = "18080:80";
    podman.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        &net,
        "-p",
        publish,
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ])?;
    podman.ok(&[
        "run",
        "-d",
        "--name",
        "client",
        "--network",
        &net,
        IMAGE,
        "sleep",
        "300",
    ])?;
    let web = podman.ip_of("web", &net)?;
    ensure(
        web.parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| subnet.contains(a)),
        || format!("web's address {web} is not in {subnet}"),
    )?;
    // The address podman reports is the one on the container's eth0.
    let addrs = podman.ok(&["exec", "web", "ip", "-4", "addr", "show", "eth0"])?;
    ensure(addrs.contains(&format!("{web}/")), || {
        format!("web's eth0 does not carry {web}: {addrs}")
    })?;
    podman.ok(&["exec", "client", "ping", "-c", "1", "-W", "2", &web])?;

    // The published port answers from the host (netloom-portmap's DNAT, no proxy process).
    let addr = format!("{gateway}:18080");
    let mut body = Err(String::from("never tried"));
    for _ in 0..40 {
        body = http_get_in(host.netns().path(), &addr);
        if body.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let body = body?;
    ensure(body == image::INDEX, || {
        format!("GET {addr} returned {body:?}")
    })?;

    // Removing the containers runs DEL through podman: nothing of theirs is left.
    podman.ok(&["rm", "-f", "-t", "0", "web", "client"])?;
    let mut left = Vec::new();
    for _ in 0..50 {
        left = leftovers(&host, &state, &bridge)?;
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure(left.is_empty(), || {
        format!("left after podman rm: {left:?}")
    })?;
    // A second run on the same network after the first ones are gone works and reuses nothing
    // stale (same conflist, fresh ADD).
    podman.ok(&[
        "run",
        "--rm",
        "--network",
        &net,
        IMAGE,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &gateway,
    ])?;
    Ok(())
}

/// Endpoints, leases and journal entries in our store, veths on the bridge, and published-port
/// rules in the fake host.
fn leftovers(
    host: &FakeHost,
    state: &std::path::Path,
    bridge: &str,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let store = FileStore::open(state).map_err(|e| e.to_string())?;
    for prefix in [
        Key::new(["endpoints"]),
        Key::new(["ipam", "leases"]),
        Key::new(["ipam", "owners"]),
        Key::new(["journal"]),
    ] {
        for (k, _) in store.list(&prefix).map_err(|e| e.to_string())? {
            out.push(format!("store {k}"));
        }
    }
    let ports = host.sh(&["ip", "-o", "link", "show", "master", bridge])?;
    for line in String::from_utf8_lossy(&ports.stdout).lines() {
        out.push(format!("bridge port {line}"));
    }
    let rules = host.sh_any(&["nft", "list", "table", "inet", "netloom"])?;
    if String::from_utf8_lossy(&rules.stdout).contains("18080") {
        out.push("nft still maps port 18080".into());
    }
    Ok(out)
}
