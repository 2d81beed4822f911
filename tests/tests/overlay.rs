//! Overlay networks across fake hosts: `netloom-vxlan` ADD/DEL in each host, one netloomd per
//! host running the overlay agent, one etcd reachable over the underlay.
//!
//! Topology per test: a "lab" namespace holding the underlay bridge (and etcd on its address),
//! N fake hosts each plugged into it with a veth (`eth0`, default route via the lab), and
//! container namespaces in the hosts. Everything is real: VXLAN devices, FDB and neighbour
//! entries, etcd leases and watches.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::cni::{our_bin, run, Outcome};
use tests::fakehost::run_in_path;
use tests::overlay::*;
use tests::{names, run_main, Cap, Suite};

const CAPS: &[Cap] = &[
    Cap::Root,
    Cap::Veth,
    Cap::Bridge,
    Cap::Vxlan,
    Cap::Nftables,
    Cap::Etcd,
];

fn main() {
    let mut s = Suite::new();
    s.test(
        "overlay::three_hosts_ping_converge_isolate_and_del",
        CAPS,
        three_hosts,
    )
    .test(
        "overlay::host_loss_removes_its_entries_after_the_lease",
        CAPS,
        host_loss,
    )
    .test(
        "overlay::dead_host_records_are_purged_after_the_delay",
        CAPS,
        dead_host_purge,
    )
    .test(
        "overlay::purge_command_removes_a_dead_hosts_records",
        CAPS,
        purge_command,
    )
    .test(
        "overlay::etcd_outage_keeps_traffic_and_fails_add_clearly",
        CAPS,
        etcd_outage,
    )
    .test(
        "overlay::mtu_follows_the_underlay_and_the_option_and_tx_checksum",
        CAPS,
        mtu_follows_underlay,
    )
    .test(
        "overlay::concurrent_creates_never_collide_on_address_or_vni",
        CAPS,
        concurrent_creates,
    )
    .test("overlay::ipv6_underlay", CAPS, ipv6_underlay)
    .test(
        "overlay::restarted_agent_resyncs_what_it_missed",
        CAPS,
        agent_resync,
    )
    .test(
        "overlay::published_port_on_the_containers_host",
        CAPS,
        published_port,
    )
    .test(
        "overlay::docker_and_cni_hosts_share_an_overlay",
        &[
            Cap::Root,
            Cap::Veth,
            Cap::Bridge,
            Cap::Vxlan,
            Cap::Nftables,
            Cap::Etcd,
            Cap::Dockerd,
        ],
        docker_and_cni,
    );
    run_main(s);
}

// ------------------------------------------------------------------ tests

const V4: UnderlaySpec = UnderlaySpec {
    v6: false,
    mtu: 1500,
};

fn three_hosts() -> Result<(), String> {
    let mut lab = Lab::new(3, V4)?;
    let net = names::unique("ovn");
    let subnet = overlay_subnet();
    let mut ctrs = Vec::new();
    for i in 0..3 {
        let c = conf(&lab, &lab.hosts[i], &net, &subnet, json!({}));
        let (ctr, took) = add(&mut lab.hosts[i], &c, &format!("c{i}"))?;
        eprintln!("ADD on host {i}: {took:?}");
        ctrs.push((c, ctr));
    }
    // Every pair, both ways.
    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                ping_until(&ctrs[a].1.netns, &ctrs[b].1.ip, Duration::from_secs(10))
                    .map_err(|e| format!("host {a} → host {b}: {e}"))?;
            }
        }
    }
    // MTU from the underlay (1500 − 50), not a fixed 1450 by accident: checked against a
    // smaller underlay in mtu_follows_the_underlay_and_the_option.
    for (_, c) in &ctrs {
        let m = container_mtu(c)?;
        if m != 1450 {
            return Err(format!("container MTU {m}, want 1500 − 50"));
        }
    }
    // Outbound through the local host with masquerade: the lab has no route back to the
    // overlay subnet, so only masquerade makes this answer come back.
    ping_until(&ctrs[0].1.netns, &lab.outside(), Duration::from_secs(5))
        .map_err(|e| format!("outbound with masquerade: {e}"))?;
    // No flooding: only unicast entries (no all-zero MAC) on the VXLAN devices, one per
    // remote container, pointing at its host.
    let f0 = fdb(&lab.hosts[0], &net)?;
    if f0.contains("00:00:00:00:00:00") {
        return Err(format!("flooding entry on host 0:\n{f0}"));
    }
    for (i, (_, c)) in ctrs.iter().enumerate().skip(1) {
        let want = format!("{} dst {}", c.mac, lab.hosts[i].vtep);
        if !f0.contains(&want) {
            return Err(format!("host 0 fdb lacks `{want}`:\n{f0}"));
        }
    }
    let n0 = neigh(&lab.hosts[0], &net)?;
    if !n0.contains(&ctrs[1].1.ip) || !n0.contains("PERMANENT") {
        return Err(format!("host 0 neighbours lack {}:\n{n0}", ctrs[1].1.ip));
    }

    // A fourth container on host 0, reached from host 1: the agent on host 1 programs it from
    // the etcd watch.
    let c3conf = ctrs[0].0.clone();
    let (c3, took) = add(&mut lab.hosts[0], &c3conf, "c3")?;
    let t = Instant::now();
    let conv = ping_until(&ctrs[1].1.netns, &c3.ip, Duration::from_secs(5))?;
    eprintln!(
        "fourth container: ADD {took:?}, first ping from another host {:?} after ADD returned",
        conv.max(t.elapsed().min(conv))
    );
    if conv > Duration::from_secs(2) {
        return Err(format!("convergence took {conv:?}"));
    }

    // Two overlays with the same subnet on the same hosts stay apart: overlay B's first
    // container gets the same address as overlay A's first, and cannot see A's others.
    let net_b = names::unique("ovb");
    let cb = conf(&lab, &lab.hosts[1], &net_b, &subnet, json!({}));
    let (b1, _) = add(&mut lab.hosts[1], &cb, "b1")?;
    let cb2 = conf(&lab, &lab.hosts[2], &net_b, &subnet, json!({}));
    let (b2, _) = add(&mut lab.hosts[2], &cb2, "b2")?;
    ping_until(&b1.netns, &b2.ip, Duration::from_secs(5)).map_err(|e| format!("overlay B: {e}"))?;
    let a_only = &c3.ip; // held in overlay A only
    if b2.ip == *a_only || b1.ip == *a_only {
        return Err("overlay B got an address only A should have; test setup wrong".into());
    }
    if ping_once(&b1.netns, a_only, "1") {
        return Err(format!("overlay B reached {a_only} of overlay A"));
    }
    let vni = |h: &Host, o: &str| -> Result<String, String> {
        let out = h.fh.sh(&["ip", "-d", "link", "show", &vxlan_dev(o)])?;
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.split("vxlan id ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
            .ok_or(format!("no vxlan id in {s}"))
    };
    if vni(&lab.hosts[1], &net)? == vni(&lab.hosts[1], &net_b)? {
        return Err("two overlays share a VNI".into());
    }
    if vni(&lab.hosts[1], &net)? != vni(&lab.hosts[2], &net)? {
        return Err("one overlay has different VNIs on two hosts".into());
    }

    // A repeated ADD of an attached container is refused and does not withdraw it.
    let again = run(
        &lab.hosts[0].fh,
        &our_bin("netloom-vxlan")?,
        &call("ADD", "c3", Some(&c3.netns)),
        &c3conf,
    )?;
    again.err_code(101)?;
    ping_until(&ctrs[2].1.netns, &c3.ip, Duration::from_secs(2))
        .map_err(|e| format!("after a refused repeated ADD: {e}"))?;
    if !fdb(&lab.hosts[1], &net)?.contains(&format!("{} dst ", c3.mac)) {
        return Err("a refused repeated ADD withdrew the live container".into());
    }

    // DEL withdraws the container everywhere.
    del(&lab.hosts[0], &c3conf, "c3", &c3)?;
    let gone = wait_for(Duration::from_secs(5), || {
        // The VXLAN device's own entry ("dst"); the bridge's learned entry ages out by itself.
        Ok(!fdb(&lab.hosts[1], &net)?.contains(&format!("{} dst ", c3.mac)))
    })?;
    eprintln!("DEL on host 0 removed the entry on host 1 within {gone:?}");
    for (i, (c, ctr)) in ctrs.iter().enumerate() {
        del(&lab.hosts[i], c, &format!("c{i}"), ctr)?;
    }
    del(&lab.hosts[1], &cb, "b1", &b1)?;
    del(&lab.hosts[2], &cb2, "b2", &b2)?;
    Ok(())
}

fn host_loss() -> Result<(), String> {
    let mut lab = Lab::new(3, V4)?;
    let net = names::unique("ovn");
    let subnet = overlay_subnet();
    let ctrs = container_per_host(&mut lab, &net, &subnet)?;
    let want = format!("{} dst {}", ctrs[2].mac, lab.hosts[2].vtep);
    if !fdb(&lab.hosts[0], &net)?.contains(&want) {
        return Err("host 0 has no entry for host 2's container".into());
    }
    // netloomd on host 0 restarts (an upgrade): the others keep host 0's containers all along.
    let entry0 = format!("{} dst {}", ctrs[0].mac, lab.hosts[0].vtep);
    let url = lab.etcd.url();
    let vtep0 = lab.hosts[0].vtep;
    lab.hosts[0].agent = None; // SIGTERM, waited for
    let restarted = Agent::start(&lab.hosts[0].fh, &url, vtep0)?;
    lab.hosts[0].agent = Some(restarted);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        if !fdb(&lab.hosts[1], &net)?.contains(&entry0) {
            return Err(format!(
                "host 1 dropped host 0's container while host 0's netloomd restarted ({:?} in)",
                t.elapsed()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The restarted agent applies new changes: a new container on host 1 reaches host 0.
    let c1b = conf(&lab, &lab.hosts[1], &net, &subnet, json!({}));
    let (late, _) = add(&mut lab.hosts[1], &c1b, "late")?;
    ping_until(&ctrs[0].netns, &late.ip, Duration::from_secs(5))
        .map_err(|e| format!("after netloomd restart: {e}"))?;

    // Host 2 dies: its agent is killed without a chance to withdraw its record.
    let t = Instant::now();
    if let Some(a) = lab.hosts[2].agent.as_mut() {
        a.kill9();
    }
    let gone = wait_for(Duration::from_secs(15), || {
        let f0 = fdb(&lab.hosts[0], &net)?;
        let f1 = fdb(&lab.hosts[1], &net)?;
        let entry = format!("{} dst ", ctrs[2].mac);
        Ok(!f0.contains(&entry) && !f1.contains(&entry))
    })
    .map_err(|e| {
        format!(
            "host 2's entries stayed after its lease: {e}\nhost 0 agent:\n{}",
            lab.hosts[0].agent_log_tail()
        )
    })?;
    eprintln!(
        "host 2 killed: its entries gone from hosts 0 and 1 after {:?} (lease 2 s)",
        t.elapsed().max(gone)
    );
    if neigh(&lab.hosts[0], &net)?.contains(&format!("{} ", ctrs[2].ip)) {
        return Err("host 0 still has a neighbour entry for host 2's container".into());
    }
    // The survivors still reach each other.
    ping_until(&ctrs[0].netns, &ctrs[1].ip, Duration::from_secs(5))?;
    Ok(())
}

fn dead_host_purge() -> Result<(), String> {
    // Lease 2 s (every lab), purge delay 2 s.
    let mut lab = Lab::with_agent_args(3, V4, &["--purge-hosts-after", "2"])?;
    let net = names::unique("ovp");
    let subnet = overlay_subnet();
    let ctrs = container_per_host(&mut lab, &net, &subnet)?;
    let eps = format!("overlay/endpoints/{net}");
    let leases = format!("ipam/leases/cni:overlay:{net}:0");
    let vteps: Vec<String> = lab.hosts.iter().map(|h| format!("/{}/", h.vtep)).collect();
    let on_host = |keys: &[String], h: usize| {
        let v = &vteps[h];
        keys.iter().filter(|k| k.contains(v.as_str())).count()
    };
    let leased = |keys: &[String], c: &Ctr| keys.iter().any(|k| k.ends_with(&format!("/{}", c.ip)));
    let (k, l) = (etcd_keys(&lab, &eps)?, etcd_keys(&lab, &leases)?);
    if (0..3).any(|h| on_host(&k, h) != 1) || !ctrs.iter().all(|c| leased(&l, c)) {
        return Err(format!("setup: endpoint records {k:?}, leases {l:?}"));
    }

    // Host 2 dies for good.
    let t = Instant::now();
    if let Some(a) = lab.hosts[2].agent.as_mut() {
        a.kill9();
    }
    let entry = format!("{} dst ", ctrs[2].mac);
    wait_for(Duration::from_secs(15), || {
        Ok(!fdb(&lab.hosts[0], &net)?.contains(&entry))
    })
    .map_err(|e| format!("host 2's entries stayed after its lease: {e}"))?;
    let expired = t.elapsed();
    // Its lease expired, the purge delay has not passed: the records stay (it may come back).
    let k = etcd_keys(&lab, &eps)?;
    if on_host(&k, 2) != 1 {
        return Err(format!(
            "host 2's endpoint record went with its lease, before the purge delay: {k:?}"
        ));
    }
    let purged = wait_for(Duration::from_secs(20), || {
        let (k, l) = (etcd_keys(&lab, &eps)?, etcd_keys(&lab, &leases)?);
        Ok(on_host(&k, 2) == 0 && !leased(&l, &ctrs[2]))
    })
    .map_err(|e| {
        format!(
            "host 2's records were not purged: {e}\nhost 0 agent:\n{}",
            lab.hosts[0].agent_log_tail()
        )
    })?;
    eprintln!(
        "host 2 killed: lease gone after {expired:?}, its endpoint record and address lease purged {:?} after the kill (lease 2 s, purge delay 2 s)",
        t.elapsed().max(purged)
    );
    // The live hosts' records are untouched, and their containers still talk.
    let (k, l) = (etcd_keys(&lab, &eps)?, etcd_keys(&lab, &leases)?);
    if on_host(&k, 0) != 1 || on_host(&k, 1) != 1 || !leased(&l, &ctrs[0]) || !leased(&l, &ctrs[1])
    {
        return Err(format!("a live host lost records: {k:?}, leases {l:?}"));
    }
    let vtep2 = lab.hosts[2].vtep.to_string();
    if !etcd_keys(&lab, "overlay/departed")?
        .iter()
        .any(|k| k.ends_with(&vtep2))
    {
        return Err("no departed-host note for host 2".into());
    }
    ping_until(&ctrs[0].netns, &ctrs[1].ip, Duration::from_secs(5))?;

    // Host 2 comes back: its agent clears the note and says its records were purged.
    let url = lab.etcd.url();
    let vtep = lab.hosts[2].vtep;
    let back = Agent::start_args(
        &lab.hosts[2].fh,
        &url,
        vtep,
        None,
        &["--purge-hosts-after", "2"],
    )?;
    wait_for(Duration::from_secs(5), || {
        Ok(!etcd_keys(&lab, "overlay/departed")?
            .iter()
            .any(|k| k.ends_with(&vtep2)))
    })
    .map_err(|e| format!("host 2's agent left its departed note: {e}"))?;
    wait_for(Duration::from_secs(5), || {
        Ok(back.log_text().contains("were purged"))
    })
    .map_err(|e| format!("host 2's agent did not warn about its purged records: {e}"))?;
    lab.hosts[2].agent = Some(back);
    Ok(())
}

/// `netloomd --store … --purge-overlay-host VTEP`, run in host 0.
fn purge_cmd(lab: &Lab, vtep: std::net::IpAddr) -> Result<Outcome, String> {
    let mut cmd = lab.hosts[0].fh.command(our_bin("netloomd")?)?;
    cmd.args(["--store", &lab.etcd.url(), "--purge-overlay-host"])
        .arg(vtep.to_string())
        .stdin(Stdio::null());
    let out = cmd.output().map_err(|e| format!("run netloomd: {e}"))?;
    Ok(Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn purge_command() -> Result<(), String> {
    // No automatic purge: only the command removes anything.
    let mut lab = Lab::with_agent_args(2, V4, &["--purge-hosts-after", "0"])?;
    let net = names::unique("ovq");
    let subnet = overlay_subnet();
    let ctrs = container_per_host(&mut lab, &net, &subnet)?;
    let eps = format!("overlay/endpoints/{net}");
    let leases = format!("ipam/leases/cni:overlay:{net}:0");
    let vtep1 = lab.hosts[1].vtep;
    let tag = format!("/{vtep1}/");
    // A live host is refused.
    let out = purge_cmd(&lab, vtep1)?;
    if out.code == 0 || !out.stderr.contains("is registered") {
        return Err(format!("purging a live host: {} {}", out.code, out.stderr));
    }
    if !etcd_keys(&lab, &eps)?.iter().any(|k| k.contains(&tag)) {
        return Err("the refused purge removed records".into());
    }
    // Host 1 dies; once its lease is gone the command removes its record and lease at once.
    if let Some(a) = lab.hosts[1].agent.as_mut() {
        a.kill9();
    }
    let entry = format!("{} dst ", ctrs[1].mac);
    wait_for(Duration::from_secs(15), || {
        Ok(!fdb(&lab.hosts[0], &net)?.contains(&entry))
    })?;
    let out = purge_cmd(&lab, vtep1)?;
    if out.code != 0 || !out.stdout.contains("1 endpoint records, 1 address leases") {
        return Err(format!("purge: {} {} {}", out.code, out.stdout, out.stderr));
    }
    let (k, l) = (etcd_keys(&lab, &eps)?, etcd_keys(&lab, &leases)?);
    let ip1 = format!("/{}", ctrs[1].ip);
    let ip0 = format!("/{}", ctrs[0].ip);
    if k.iter().any(|x| x.contains(&tag)) || l.iter().any(|x| x.ends_with(&ip1)) {
        return Err(format!("host 1's records stayed: {k:?} {l:?}"));
    }
    if k.len() != 1 || !l.iter().any(|x| x.ends_with(&ip0)) {
        return Err(format!("host 0's records were touched: {k:?} {l:?}"));
    }
    Ok(())
}

fn etcd_outage() -> Result<(), String> {
    let mut lab = Lab::new(2, V4)?;
    let net = names::unique("ovn");
    let subnet = overlay_subnet();
    let c0 = conf(&lab, &lab.hosts[0], &net, &subnet, json!({}));
    let c1 = conf(&lab, &lab.hosts[1], &net, &subnet, json!({}));
    let (a, _) = add(&mut lab.hosts[0], &c0, "a")?;
    let (b, _) = add(&mut lab.hosts[1], &c1, "b")?;
    ping_until(&a.netns, &b.ip, Duration::from_secs(10))?;
    lab.etcd.stop()?;
    // Existing traffic continues: the kernel state is untouched.
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        if !ping_once(&a.netns, &b.ip, "1") {
            return Err("traffic stopped while etcd was down".into());
        }
    }
    // A new ADD fails clearly, naming the store, with "try again later".
    let netns = lab.hosts[0].fh.container("x")?;
    let out: Outcome = run(
        &lab.hosts[0].fh,
        &our_bin("netloom-vxlan")?,
        &call("ADD", "x", Some(&netns)),
        &c0,
    )?;
    let msg = out.err_code(11)?;
    if !msg.contains(&lab.etcd.url()) && !msg.contains(&lab.etcd.endpoint()) {
        return Err(format!("error does not name the store: {msg}"));
    }
    eprintln!("ADD with etcd down: {msg}");
    // The failed ADD left nothing in the container.
    let links = run_in_path(&netns, &["ip", "-o", "link"])?;
    if String::from_utf8_lossy(&links.stdout).contains("eth0") {
        return Err("failed ADD left eth0 in the container".into());
    }
    lab.etcd.start_again()?;
    let (c, _) = add(&mut lab.hosts[0], &c0, "c")?;
    ping_until(&b.netns, &c.ip, Duration::from_secs(10))
        .map_err(|e| format!("after etcd came back: {e}"))?;
    ping_until(&a.netns, &b.ip, Duration::from_secs(5))?;
    Ok(())
}

fn mtu_follows_underlay() -> Result<(), String> {
    let mut lab = Lab::new(
        2,
        UnderlaySpec {
            v6: false,
            mtu: 1400,
        },
    )?;
    let net = names::unique("ovn");
    let subnet = overlay_subnet();
    let c0 = conf(&lab, &lab.hosts[0], &net, &subnet, json!({}));
    let c1 = conf(&lab, &lab.hosts[1], &net, &subnet, json!({}));
    let (a, _) = add(&mut lab.hosts[0], &c0, "a")?;
    let (b, _) = add(&mut lab.hosts[1], &c1, "b")?;
    for c in [&a, &b] {
        let m = container_mtu(c)?;
        if m != 1350 {
            return Err(format!("container MTU {m} on a 1400 underlay, want 1350"));
        }
    }
    // A full-size packet crosses without fragmentation (DF set): 1350 − 28 bytes of ICMP.
    run_in_path(
        &a.netns,
        &["ping", "-c1", "-W2", "-M", "do", "-s", "1322", &b.ip],
    )
    .or_else(|_| {
        std::thread::sleep(Duration::from_millis(300));
        run_in_path(
            &a.netns,
            &["ping", "-c1", "-W2", "-M", "do", "-s", "1322", &b.ip],
        )
    })?;
    // The option wins over the underlay.
    let net2 = names::unique("ovm");
    let subnet2 = overlay_subnet();
    let c2 = conf(&lab, &lab.hosts[0], &net2, &subnet2, json!({"mtu": 1300}));
    let (d, _) = add(&mut lab.hosts[0], &c2, "d")?;
    if container_mtu(&d)? != 1300 {
        return Err("mtu option ignored".into());
    }
    // Transmit checksum offload on the VXLAN device, read back with the same ioctl ethtool
    // uses: this kernel (≥ 5.7) keeps it with `auto`; `off` turns it off.
    let host_ns = lab.hosts[0].fh.netns();
    let on = engine_core::netlink::ethtool::tx_checksum(Some(host_ns), &vxlan_dev(&net))
        .map_err(|e| e.to_string())?;
    if engine_core::netlink::ethtool::needs_tx_checksum_workaround() == on {
        return Err(format!(
            "tx checksum offload {on} with txChecksumOffload auto"
        ));
    }
    let net3 = names::unique("ovc");
    let c3 = conf(
        &lab,
        &lab.hosts[0],
        &net3,
        &overlay_subnet(),
        json!({"txChecksumOffload": "off"}),
    );
    add(&mut lab.hosts[0], &c3, "e")?;
    let host_ns = lab.hosts[0].fh.netns();
    if engine_core::netlink::ethtool::tx_checksum(Some(host_ns), &vxlan_dev(&net3))
        .map_err(|e| e.to_string())?
    {
        return Err("txChecksumOffload off left tx checksum offload on".into());
    }
    Ok(())
}

fn concurrent_creates() -> Result<(), String> {
    let lab = Lab::new(2, V4)?;
    let lab = std::sync::Arc::new(std::sync::Mutex::new(lab));
    let net = names::unique("ovn");
    let subnet = overlay_subnet();
    // Two overlays created at the same moment on two hosts, plus several containers of one
    // overlay on both hosts at once.
    let other = [names::unique("ova"), names::unique("ovb")];
    let other_subnets = [overlay_subnet(), overlay_subnet()];
    let mut jobs = Vec::new();
    let confs: Vec<Value> = {
        let l = lab.lock().map_err(|_| "lock")?;
        (0..2)
            .map(|h| conf(&l, &l.hosts[h], &net, &subnet, json!({})))
            .collect()
    };
    let other_confs: Vec<Value> = {
        let l = lab.lock().map_err(|_| "lock")?;
        (0..2)
            .map(|h| conf(&l, &l.hosts[h], &other[h], &other_subnets[h], json!({})))
            .collect()
    };
    // Container namespaces are made up front (FakeHost::container needs &mut).
    let mut netns = Vec::new();
    {
        let mut l = lab.lock().map_err(|_| "lock")?;
        for h in 0..2 {
            for k in 0..4 {
                netns.push((
                    h,
                    format!("p{h}{k}"),
                    l.hosts[h].fh.container(&format!("p{h}{k}"))?,
                ));
            }
            netns.push((
                h,
                format!("o{h}"),
                l.hosts[h].fh.container(&format!("o{h}"))?,
            ));
        }
    }
    // Wait until both agents registered, so the concurrent ADDs below do not race them.
    {
        let mut l = lab.lock().map_err(|_| "lock")?;
        for h in 0..2 {
            let c = conf(
                &l,
                &l.hosts[h],
                &names::unique("ovw"),
                &overlay_subnet(),
                json!({}),
            );
            let (w, _) = add(&mut l.hosts[h], &c, &format!("w{h}"))?;
            del(&l.hosts[h], &c, &format!("w{h}"), &w)?;
        }
    }
    let plugin = our_bin("netloom-vxlan")?;
    let hosts_ns: Vec<PathBuf> = {
        let l = lab.lock().map_err(|_| "lock")?;
        l.hosts
            .iter()
            .map(|h| h.fh.netns().path().to_path_buf())
            .collect()
    };
    for (h, id, ns) in netns {
        let c = if id.starts_with('o') {
            other_confs[h].clone()
        } else {
            confs[h].clone()
        };
        let plugin = plugin.clone();
        let host_ns = hosts_ns[h].clone();
        jobs.push(std::thread::spawn(
            move || -> Result<(String, String), String> {
                let mut cmd = Command::new(&plugin);
                engine_core::netns::Netns::open(&host_ns)
                    .and_then(|n| n.command(&mut cmd))
                    .map_err(|e| e.to_string())?;
                cmd.env_clear()
                    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                    .env("CNI_COMMAND", "ADD")
                    .env("CNI_CONTAINERID", &id)
                    .env("CNI_NETNS", &ns)
                    .env("CNI_IFNAME", "eth0")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut child = cmd.spawn().map_err(|e| e.to_string())?;
                if let Some(mut i) = child.stdin.take() {
                    use std::io::Write;
                    i.write_all(c.to_string().as_bytes())
                        .map_err(|e| e.to_string())?;
                }
                let out = child.wait_with_output().map_err(|e| e.to_string())?;
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                if !out.status.success() {
                    return Err(format!("ADD {id} failed: {stdout}"));
                }
                let v: Value = serde_json::from_str(&stdout).map_err(|e| e.to_string())?;
                let ctr = ctr_from(&v, ns)?;
                Ok((id, ctr.ip))
            },
        ));
    }
    let mut ips = Vec::new();
    for j in jobs {
        let (id, ip) = j.join().map_err(|_| "ADD thread panicked")??;
        if id.starts_with('p') {
            ips.push(ip);
        }
    }
    let mut uniq = ips.clone();
    uniq.sort();
    uniq.dedup();
    if uniq.len() != ips.len() {
        return Err(format!("duplicate addresses across hosts: {ips:?}"));
    }
    let l = lab.lock().map_err(|_| "lock")?;
    let vni = |h: &Host, o: &str| -> Result<String, String> {
        let out = h.fh.sh(&["ip", "-d", "link", "show", &vxlan_dev(o)])?;
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.split("vxlan id ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
            .ok_or(format!("no vxlan id in {s}"))
    };
    let v = [
        vni(&l.hosts[0], &net)?,
        vni(&l.hosts[0], &other[0])?,
        vni(&l.hosts[1], &other[1])?,
    ];
    if v[0] != vni(&l.hosts[1], &net)? {
        return Err("one overlay got two VNIs".into());
    }
    if v[0] == v[1] || v[0] == v[2] || v[1] == v[2] {
        return Err(format!("VNIs collide: {v:?}"));
    }
    // A pinned VNI another overlay holds is refused, naming the holder.
    let taken: u32 = v[1].parse().map_err(|_| "vni")?;
    let mut l = l;
    let pinned = names::unique("ovp");
    let c = conf(
        &l,
        &l.hosts[1],
        &pinned,
        &overlay_subnet(),
        json!({"vni": taken}),
    );
    let ns = l.hosts[1].fh.container("pin")?;
    let out = run(&l.hosts[1].fh, &plugin, &call("ADD", "pin", Some(&ns)), &c)?;
    let msg = out.err_code(101)?;
    if !msg.contains(&format!("VNI {taken} is taken by overlay {}", other[0])) {
        return Err(format!("unclear VNI conflict: {msg}"));
    }
    Ok(())
}

fn ipv6_underlay() -> Result<(), String> {
    let mut lab = Lab::new(
        2,
        UnderlaySpec {
            v6: true,
            mtu: 1500,
        },
    )?;
    let net = names::unique("ovn");
    let subnet = overlay_subnet();
    let c0 = conf(&lab, &lab.hosts[0], &net, &subnet, json!({}));
    let c1 = conf(&lab, &lab.hosts[1], &net, &subnet, json!({}));
    let (a, _) = add(&mut lab.hosts[0], &c0, "a")?;
    let (b, _) = add(&mut lab.hosts[1], &c1, "b")?;
    ping_until(&a.netns, &b.ip, Duration::from_secs(10))?;
    ping_until(&b.netns, &a.ip, Duration::from_secs(10))?;
    if container_mtu(&a)? != 1430 {
        return Err(format!(
            "container MTU {} on an IPv6 underlay, want 1500 − 70",
            container_mtu(&a)?
        ));
    }
    let f = fdb(&lab.hosts[0], &net)?;
    if !f.contains(&format!("dst {}", lab.hosts[1].vtep)) {
        return Err(format!("no IPv6 VTEP in the fdb:\n{f}"));
    }
    // A dual-stack overlay on it: IPv6 neighbour discovery is answered by the VXLAN device's
    // proxy as ARP is.
    let ds = names::unique("ovd");
    let ranges = json!({"ipam": {"type": "host-local", "ranges": [
        [{"subnet": overlay_subnet()}],
        [{"subnet": names::subnet_v6().to_string()}]
    ]}});
    let d0 = conf(&lab, &lab.hosts[0], &ds, "", ranges.clone());
    let d1 = conf(&lab, &lab.hosts[1], &ds, "", ranges);
    let (x, _) = add(&mut lab.hosts[0], &d0, "x")?;
    let (y, _) = add(&mut lab.hosts[1], &d1, "y")?;
    let out = run_in_path(
        &y.netns,
        &[
            "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let y6 = text
        .split("inet6 ")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .ok_or_else(|| format!("no IPv6 address on y: {text}"))?
        .to_string();
    ping_until(&x.netns, &y.ip, Duration::from_secs(10))?;
    ping_until(&x.netns, &y6, Duration::from_secs(10)).map_err(|e| format!("IPv6 overlay: {e}"))?;
    Ok(())
}

/// A TCP server in `netns` answering every connection with `greeting`, until the test ends.
fn serve(netns: &std::path::Path, port: u16, greeting: &'static str) -> Result<(), String> {
    use std::io::Write;
    let ns = engine_core::netns::Netns::open(netns).map_err(|e| e.to_string())?;
    // The socket stays in the namespace it was made in after the thread leaves it.
    let listener = ns
        .run(move || std::net::TcpListener::bind(("0.0.0.0", port)))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("bind {port}: {e}"))?;
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let _ = c.write_all(greeting.as_bytes());
        }
    });
    Ok(())
}

/// Connects from `netns` to `addr` and reads until the server closes.
fn fetch(netns: &std::path::Path, addr: &str) -> Result<String, String> {
    use std::io::Read;
    let ns = engine_core::netns::Netns::open(netns).map_err(|e| e.to_string())?;
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    ns.run(move || -> Result<String, String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        Ok(out)
    })
    .map_err(|e| e.to_string())?
}

fn published_port() -> Result<(), String> {
    let mut lab = Lab::new(2, V4)?;
    let net = names::unique("ovp");
    let subnet = overlay_subnet();
    let c0 = conf(&lab, &lab.hosts[0], &net, &subnet, json!({}));
    let (a, _) = add(&mut lab.hosts[0], &c0, "a")?;
    // CHECK finds bridge, VXLAN device, veth and the container's interface as they should be.
    run(
        &lab.hosts[0].fh,
        &our_bin("netloom-vxlan")?,
        &call("CHECK", "a", Some(&a.netns)),
        &c0,
    )?
    .ok()?;
    // The ADD result again, as prevResult for the chained portmap (a repeated ADD is refused).
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": a.netns.to_string_lossy()}],
        "ips": [{"address": format!("{}/24", a.ip), "interface": 0}]
    });
    let pm = json!({"cniVersion": "1.0.0", "name": net, "type": "netloom-portmap",
        "capabilities": {"portMappings": true},
        "stateDir": lab.hosts[0].fh.state_dir().join("state"),
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]},
        "prevResult": prev});
    run(
        &lab.hosts[0].fh,
        &our_bin("netloom-portmap")?,
        &call("ADD", "a", Some(&a.netns)),
        &pm,
    )?
    .ok()?;
    serve(&a.netns, 8080, "hello from the overlay")?;
    // From outside (the lab) to the container's host's underlay address.
    let got = fetch(
        lab.lab.netns().path(),
        &format!("{}:18080", lab.hosts[0].vtep),
    )?;
    if got != "hello from the overlay" {
        return Err(format!("published port answered {got:?}"));
    }
    run(
        &lab.hosts[0].fh,
        &our_bin("netloom-portmap")?,
        &call("DEL", "a", Some(&a.netns)),
        &pm,
    )?
    .ok()?;
    if fetch(
        lab.lab.netns().path(),
        &format!("{}:18080", lab.hosts[0].vtep),
    )
    .is_ok()
    {
        return Err("the port stayed published after portmap DEL".into());
    }
    Ok(())
}

fn docker_and_cni() -> Result<(), String> {
    use tests::docker::{Dockerd, DOCKER_PLUGIN_DIR};
    let mut lab = Lab::new(2, V4)?;
    // Host 0 runs Docker: its netloomd serves the plugin sockets where dockerd looks.
    let url = lab.etcd.url();
    let vtep0 = lab.hosts[0].vtep;
    lab.hosts[0].agent = None;
    let agent = Agent::start_with(
        &lab.hosts[0].fh,
        &url,
        vtep0,
        Some(std::path::Path::new(DOCKER_PLUGIN_DIR)),
    )?;
    let prefix = agent.prefix.clone();
    lab.hosts[0].agent = Some(agent);
    let root = lab.hosts[0].fh.state_dir().join("docker");
    let dockerd = Dockerd::start(&lab.hosts[0].fh, &root)?;
    dockerd.import_busybox()?;
    let overlay = names::unique("ovk");
    let subnet = overlay_subnet();
    let result = (|| -> Result<(), String> {
        dockerd.ok(&[
            "network",
            "create",
            "-d",
            &format!("{prefix}-overlay"),
            "--ipam-driver",
            &format!("{prefix}-ipam"),
            "--ipam-opt",
            &format!("overlay={overlay}"),
            "-o",
            &format!("overlay={overlay}"),
            "--subnet",
            &subnet,
            "ovk",
        ])?;
        // The image imported offline; never a registry.
        dockerd.ok(&[
            "run",
            "-d",
            "--pull",
            "never",
            "--name",
            "da",
            "--network",
            "ovk",
            tests::docker::IMAGE,
            "sleep",
            "600",
        ])?;
        let ip = dockerd
            .ok(&[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                "da",
            ])?
            .trim()
            .to_string();
        // A CNI container on host 1 in the same overlay: one address pool, one L2 segment.
        let c1 = conf(
            &lab,
            &lab.hosts[1],
            &names::unique("ovc"),
            &subnet,
            json!({"overlay": overlay}),
        );
        let (b, _) = add(&mut lab.hosts[1], &c1, "b")?;
        if b.ip == ip {
            return Err(format!("Docker and CNI hosts both handed out {ip}"));
        }
        ping_until(&b.netns, &ip, Duration::from_secs(10))
            .map_err(|e| format!("CNI host → Docker container: {e}"))?;
        dockerd
            .ok(&["exec", "da", "ping", "-c1", "-W2", &b.ip])
            .map_err(|e| format!("Docker container → CNI host: {e}"))?;
        let mtu = dockerd.ok(&["exec", "da", "cat", "/sys/class/net/eth0/mtu"])?;
        if mtu.trim() != "1450" {
            return Err(format!("Docker container MTU {}, want 1450", mtu.trim()));
        }
        dockerd.ok(&["rm", "-f", "da"])?;
        // The container is withdrawn from host 1 when Docker deletes its endpoint.
        let gone = wait_for(Duration::from_secs(5), || {
            Ok(!neigh(&lab.hosts[1], &overlay)?.contains(&format!("{ip} ")))
        });
        gone.map_err(|e| format!("Docker container still programmed on host 1: {e}"))?;
        dockerd.ok(&["network", "rm", "ovk"])?;
        Ok(())
    })();
    if result.is_err() {
        let _ = dockerd.docker(&["rm", "-f", "da"]);
        let _ = dockerd.docker(&["network", "rm", "ovk"]);
        if let Some(a) = lab.hosts[0].agent.as_ref() {
            eprintln!("host 0 netloomd:\n{}", a.log_tail());
        }
    }
    result
}

fn agent_resync() -> Result<(), String> {
    let mut lab = Lab::new(2, V4)?;
    let net = names::unique("ovr");
    let subnet = overlay_subnet();
    let c0 = conf(&lab, &lab.hosts[0], &net, &subnet, json!({}));
    let c1 = conf(&lab, &lab.hosts[1], &net, &subnet, json!({}));
    let (a, _) = add(&mut lab.hosts[0], &c0, "a")?;
    let (b, _) = add(&mut lab.hosts[1], &c1, "b")?;
    ping_until(&b.netns, &a.ip, Duration::from_secs(10))?;
    // Host 1's netloomd is down while host 0 removes one container and adds another.
    lab.hosts[1].agent = None;
    del(&lab.hosts[0], &c0, "a", &a)?;
    let (c, _) = add(&mut lab.hosts[0], &c0, "c")?;
    let stale = format!("{} dst ", a.mac);
    if !fdb(&lab.hosts[1], &net)?.contains(&stale) {
        return Err("host 1 dropped a's entry without its agent: test setup wrong".into());
    }
    // Back up: the snapshot re-sync removes what went away and adds what came.
    let url = lab.etcd.url();
    let vtep1 = lab.hosts[1].vtep;
    lab.hosts[1].agent = Some(Agent::start(&lab.hosts[1].fh, &url, vtep1)?);
    let took = wait_for(Duration::from_secs(5), || {
        let f = fdb(&lab.hosts[1], &net)?;
        Ok(!f.contains(&stale) && f.contains(&format!("{} dst ", c.mac)))
    })
    .map_err(|e| format!("host 1 did not re-sync after its restart: {e}"))?;
    eprintln!("restarted agent re-synced within {took:?} of starting");
    ping_until(&b.netns, &c.ip, Duration::from_secs(5))?;
    Ok(())
}
