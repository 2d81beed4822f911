//! Replays the invocations real runtimes made (podman 4.3, containerd's go-cni, cnitool; see
//! tests/fixtures/README.md) through the dispatcher with a recording fake plugin, and checks
//! what the plugin was handed and what went back on stdout.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cni_plugins::env::K8S_ARGS;
use cni_plugins::error::code;
use cni_plugins::{
    run, CniError, CniResult, CniVersion, Command, GcRequest, Interface, IpConfig, Plugin, Request,
    Route, StatusRequest,
};
use engine_core::{AttachmentKey, PortMapping, Proto};
use serde_json::{json, Value};

// ---- fixtures --------------------------------------------------------------------------------

/// One recorded plugin execution.
#[derive(Debug, Clone)]
struct Exec {
    /// "<file>#<n>" for messages.
    origin: String,
    plugin: String,
    env: BTreeMap<String, String>,
    stdin: String,
    /// Recorded stdout (libcni records only), trimmed.
    stdout: Option<String>,
    exit: Option<i32>,
}

impl Exec {
    fn var(&self, k: &str) -> &str {
        self.env.get(k).map(String::as_str).unwrap_or("")
    }
    fn command(&self) -> &str {
        self.var("CNI_COMMAND")
    }
    fn stdin_json(&self) -> Value {
        serde_json::from_str(&self.stdin).unwrap_or_else(|e| panic!("{}: stdin: {e}", self.origin))
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load_libcni_file(path: &Path) -> Vec<Exec> {
    let text = std::fs::read_to_string(path).unwrap();
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    let mut out = Vec::new();
    for (n, block) in text
        .split("\n==================== exec ")
        .skip(1)
        .enumerate()
    {
        let mut exec = Exec {
            origin: format!("{file}#{}", n + 1),
            plugin: String::new(),
            env: BTreeMap::new(),
            stdin: String::new(),
            stdout: None,
            exit: None,
        };
        let mut section = "";
        let mut stdout = Vec::new();
        for line in block.lines() {
            if let Some(rest) = line.strip_prefix("# plugin:") {
                exec.plugin = rest.split_whitespace().next().unwrap().to_string();
            } else if let Some(rest) = line.strip_prefix("# exit:") {
                exec.exit = Some(rest.trim().parse().unwrap());
            } else if line.starts_with("## ") {
                section = line;
            } else if section.starts_with("## CNI_* environment") {
                let (k, v) = line.split_once('=').unwrap();
                exec.env.insert(k.to_string(), v.to_string());
            } else if section == "## stdin (exact bytes)" {
                exec.stdin.push_str(line);
            } else if section == "## stdout (exact bytes)" {
                stdout.push(line);
            }
        }
        exec.stdout = Some(stdout.join("\n").trim().to_string());
        assert!(
            !exec.plugin.is_empty() && exec.env.contains_key("CNI_COMMAND"),
            "{}",
            exec.origin
        );
        out.push(exec);
    }
    out
}

fn load_libcni() -> Vec<Exec> {
    let mut files: Vec<_> = std::fs::read_dir(fixtures().join("libcni"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().flat_map(|f| load_libcni_file(f)).collect()
}

fn load_podman() -> Vec<Exec> {
    let text = std::fs::read_to_string(fixtures().join("podman/podman-invocations.log")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (n, pair) in lines.chunks(2).enumerate() {
        let header = pair[0].strip_prefix("=== ").unwrap();
        let mut words = header.split(' ');
        let plugin = words.next().unwrap().to_string();
        let env = words
            .map(|w| w.split_once('=').unwrap())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        out.push(Exec {
            origin: format!("podman-invocations.log#{}", n + 1),
            plugin,
            env,
            stdin: pair[1].to_string(),
            stdout: None,
            exit: None,
        });
    }
    out
}

fn find(file: &str, plugin: &str, command: &str) -> Exec {
    load_libcni_file(&fixtures().join("libcni").join(file))
        .into_iter()
        .find(|e| e.plugin == plugin && e.command() == command)
        .unwrap_or_else(|| panic!("no {plugin} {command} in {file}"))
}

// ---- the fake plugin -------------------------------------------------------------------------

#[derive(Debug)]
enum Seen {
    Add(Request),
    Del(Request),
    Check(Request),
    Status(StatusRequest),
    Gc(GcRequest),
}

struct Fake {
    result: CniResult,
    fail: Option<CniError>,
    versions: Vec<CniVersion>,
    seen: RefCell<Vec<Seen>>,
}

impl Fake {
    fn new() -> Self {
        Fake {
            result: sample_result(),
            fail: None,
            versions: CniVersion::ALL.to_vec(),
            seen: RefCell::new(Vec::new()),
        }
    }
    fn failing(e: CniError) -> Self {
        Fake {
            fail: Some(e),
            ..Fake::new()
        }
    }
    fn returning(result: CniResult) -> Self {
        Fake {
            result,
            ..Fake::new()
        }
    }
    fn outcome(&self) -> Result<(), CniError> {
        self.fail.clone().map_or(Ok(()), Err)
    }
    fn only(&self) -> Seen {
        let mut seen = self.seen.borrow_mut();
        assert_eq!(seen.len(), 1, "expected one call, got {seen:?}");
        seen.remove(0)
    }
    fn calls(&self) -> usize {
        self.seen.borrow().len()
    }
}

impl Plugin for Fake {
    fn name(&self) -> &str {
        "netloom-fake"
    }
    fn supported_versions(&self) -> &[CniVersion] {
        &self.versions
    }
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        self.seen.borrow_mut().push(Seen::Add(req.clone()));
        self.outcome().map(|()| self.result.clone())
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        self.seen.borrow_mut().push(Seen::Del(req.clone()));
        self.outcome()
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        self.seen.borrow_mut().push(Seen::Check(req.clone()));
        self.outcome()
    }
    fn status(&self, req: &StatusRequest) -> Result<(), CniError> {
        self.seen.borrow_mut().push(Seen::Status(req.clone()));
        self.outcome()
    }
    fn gc(&self, req: &GcRequest) -> Result<(), CniError> {
        self.seen.borrow_mut().push(Seen::Gc(req.clone()));
        self.outcome()
    }
}

/// A plugin that relies on the trait's defaults for STATUS and GC.
struct Minimal;

impl Plugin for Minimal {
    fn name(&self) -> &str {
        "netloom-minimal"
    }
    fn add(&self, _: &Request) -> Result<CniResult, CniError> {
        Ok(CniResult::default())
    }
    fn del(&self, _: &Request) -> Result<(), CniError> {
        Ok(())
    }
    fn check(&self, _: &Request) -> Result<(), CniError> {
        Ok(())
    }
}

fn sample_result() -> CniResult {
    CniResult {
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: Some("02:42:0a:4f:00:07".into()),
            mtu: Some(1500),
            sandbox: Some("/run/netns/cncl-a".into()),
            ..Default::default()
        }],
        ips: vec![IpConfig {
            address: "10.79.0.7/24".parse().unwrap(),
            gateway: Some("10.79.0.1".parse().unwrap()),
            interface: Some(0),
        }],
        routes: vec![Route {
            priority: Some(10),
            ..Route::new("0.0.0.0/0".parse().unwrap(), None)
        }],
        dns: Default::default(),
    }
}

/// Runs one invocation; returns (exit status, stdout).
fn invoke(plugin: &impl Plugin, env: &BTreeMap<String, String>, stdin: &str) -> (i32, String) {
    let mut out = Vec::new();
    let status = run(plugin, |k| env.get(k).cloned(), stdin.as_bytes(), &mut out);
    (status, String::from_utf8(out).unwrap())
}

fn replay(plugin: &impl Plugin, e: &Exec) -> (i32, String) {
    invoke(plugin, &e.env, &e.stdin)
}

/// The reference output as netloom renders it: an empty `dns` left out, and 0.x `ips[]` with
/// the `version` the spec asks for (the reference loopback leaves it out).
fn normalized_reference(v: &Value) -> Value {
    let mut v = v.clone();
    let obj = v.as_object_mut().unwrap();
    if obj.get("dns") == Some(&json!({})) {
        obj.remove("dns");
    }
    let old = CniVersion::parse(obj["cniVersion"].as_str().unwrap())
        .unwrap()
        .ips_carry_version();
    if let Some(Value::Array(ips)) = obj.get_mut("ips") {
        for ip in ips {
            let family = if ip["address"].as_str().unwrap().contains(':') {
                "6"
            } else {
                "4"
            };
            let ip = ip.as_object_mut().unwrap();
            if old {
                ip.insert("version".into(), family.into());
            } else {
                ip.remove("version");
            }
        }
    }
    v
}

// ---- every recorded invocation ---------------------------------------------------------------

#[test]
fn every_recorded_invocation_is_accepted_and_parsed_as_sent() {
    let all: Vec<Exec> = load_libcni().into_iter().chain(load_podman()).collect();
    assert_eq!(
        all.iter().filter(|e| e.stdout.is_some()).count(),
        118,
        "libcni execs"
    );
    assert_eq!(all.len(), 118 + 22, "with podman's");

    let mut per_command = BTreeMap::<String, usize>::new();
    for e in &all {
        let fake = Fake::new();
        let (status, stdout) = replay(&fake, e);
        assert_eq!(status, 0, "{}: {stdout}", e.origin);
        *per_command.entry(e.command().to_string()).or_default() += 1;

        let stdin = e.stdin_json();
        let version = stdin["cniVersion"].as_str().unwrap();
        if e.command() == "VERSION" {
            assert_eq!(
                stdout,
                format!(
                    r#"{{"cniVersion":"{version}","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}}"#
                ),
                "{}",
                e.origin
            );
            assert_eq!(fake.calls(), 0);
            continue;
        }
        let v = CniVersion::parse(version).unwrap();
        let (req, config) = match fake.only() {
            Seen::Add(r) => {
                assert_eq!(e.command(), "ADD");
                assert_eq!(stdout, fake.result.to_json(v), "{}", e.origin);
                let c = r.config.clone();
                (Some(r), c)
            }
            Seen::Del(r) | Seen::Check(r) => {
                assert!(matches!(e.command(), "DEL" | "CHECK"), "{}", e.origin);
                assert_eq!(stdout, "", "{}", e.origin);
                let c = r.config.clone();
                (Some(r), c)
            }
            Seen::Status(r) => {
                assert_eq!((e.command(), stdout.as_str(), r.version), ("STATUS", "", v));
                (None, r.config)
            }
            Seen::Gc(r) => {
                assert_eq!((e.command(), stdout.as_str(), r.version), ("GC", "", v));
                assert_eq!(r.cni_path, vec![PathBuf::from(e.var("CNI_PATH"))]);
                (None, r.config)
            }
        };

        // What every verb gets: the config as sent.
        assert_eq!(config.name, stdin["name"].as_str().unwrap(), "{}", e.origin);
        assert_eq!(
            config.plugin_type,
            stdin["type"].as_str().unwrap(),
            "{}",
            e.origin
        );
        assert_eq!(
            Value::Object(config.raw.clone()),
            stdin,
            "{}: raw must be untouched",
            e.origin
        );
        assert_eq!(config.ip_masq, stdin["ipMasq"].as_bool().unwrap_or(false));
        assert_eq!(config.ipam.is_some(), stdin.get("ipam").is_some());
        match (&config.prev_result, stdin.get("prevResult")) {
            (None, None) => {}
            (Some(prev), Some(raw)) => {
                assert_eq!(prev.version.as_str(), raw["cniVersion"].as_str().unwrap());
                assert_eq!(
                    prev.result.to_value(prev.version),
                    normalized_reference(raw),
                    "{}",
                    e.origin
                );
            }
            (got, want) => panic!("{}: prevResult {got:?} vs {want:?}", e.origin),
        }

        // What the attachment verbs get: the environment as sent.
        if let Some(req) = req {
            assert_eq!(req.version, v);
            assert_eq!(
                req.key,
                AttachmentKey::new(e.var("CNI_CONTAINERID"), e.var("CNI_IFNAME")).unwrap()
            );
            let netns = e.var("CNI_NETNS");
            assert_eq!(
                req.netns,
                (!netns.is_empty()).then(|| PathBuf::from(netns)),
                "{}",
                e.origin
            );
            assert_eq!(req.cni_path, vec![PathBuf::from(e.var("CNI_PATH"))]);
            assert_eq!(req.stdin, e.stdin.as_bytes());
            for pair in e.var("CNI_ARGS").split(';') {
                let (k, val) = pair.split_once('=').unwrap();
                assert_eq!(req.args.get(k), Some(val), "{}", e.origin);
            }
            assert!(req.args.ignore_unknown());
            let recorded_ports = stdin
                .pointer("/runtimeConfig/portMappings")
                .and_then(Value::as_array);
            assert_eq!(
                req.config.runtime_config.port_mappings.len(),
                recorded_ports.map_or(0, Vec::len)
            );
        }
    }
    let counts: Vec<_> = per_command
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(
        counts.join(" "),
        "ADD=48 CHECK=15 DEL=57 GC=4 STATUS=2 VERSION=14",
        "{per_command:?}"
    );
}

#[test]
fn reference_plugin_results_survive_parse_and_render() {
    let mut checked = 0;
    for e in load_libcni() {
        let stdout = e.stdout.clone().unwrap_or_default();
        if e.command() != "ADD" || e.exit != Some(0) || !stdout.starts_with('{') {
            continue;
        }
        let (v, result) =
            CniResult::from_json(stdout.as_bytes(), CniVersion::LATEST, "recorded result").unwrap();
        let fake = Fake::returning(result);
        let (status, ours) = replay(&fake, &e);
        assert_eq!(status, 0, "{}", e.origin);
        let recorded: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(recorded["cniVersion"].as_str(), Some(v.as_str()));
        let ours: Value = serde_json::from_str(&ours).unwrap();
        assert_eq!(ours, normalized_reference(&recorded), "{}", e.origin);
        checked += 1;
    }
    // bridge, host-local (IPAM shape, no interfaces), loopback (0.3.1), portmap, bandwidth.
    assert!(checked >= 40, "only {checked} recorded ADD results");
}

#[test]
fn recorded_error_replies_are_reproduced_byte_for_byte() {
    let mut checked = 0;
    for e in load_libcni() {
        let stdout = e.stdout.clone().unwrap_or_default();
        if !stdout.contains("\"code\"") || !stdout.starts_with(r#"{"cniVersion""#) {
            continue;
        }
        let recorded: Value = serde_json::from_str(&stdout).unwrap();
        let err = CniError::new(
            recorded["code"].as_u64().unwrap() as u32,
            recorded["msg"].as_str().unwrap(),
        )
        .with_details(recorded["details"].as_str().unwrap_or(""));
        // The fault wrapper stamped every reply "1.0.0"; the spec wants the request's version,
        // which differs only for loopback's 0.3.1 config.
        let version = e.stdin_json()["cniVersion"].as_str().unwrap().to_string();
        let want = stdout.replacen(
            r#""cniVersion":"1.0.0""#,
            &format!(r#""cniVersion":"{version}""#),
            1,
        );
        let fake = Fake::failing(err);
        assert_eq!(replay(&fake, &e), (1, want), "{}", e.origin);
        checked += 1;
    }
    assert_eq!(checked, 4, "fault replies in the fixtures");
}

// ---- runtime spellings -----------------------------------------------------------------------

fn ports_seen(e: &Exec) -> Vec<PortMapping> {
    let fake = Fake::new();
    assert_eq!(replay(&fake, e).0, 0, "{}", e.origin);
    match fake.only() {
        Seen::Add(r) | Seen::Del(r) | Seen::Check(r) => r.config.runtime_config.port_mappings,
        other => panic!("{other:?}"),
    }
}

#[test]
fn go_cni_pascal_case_port_mappings() {
    let e = find("podsim-ADD.txt", "portmap", "ADD");
    assert!(e.stdin.contains(r#""HostPort":19081"#));
    assert_eq!(
        ports_seen(&e),
        vec![
            PortMapping::new(Proto::Tcp, None, (19081, 19081), 8080).unwrap(),
            PortMapping::new(
                Proto::Tcp,
                Some("127.0.0.1".parse().unwrap()),
                (19082, 19082),
                8080
            )
            .unwrap(),
        ]
    );
    // Same on DEL and CHECK (the cached capability args are replayed).
    assert_eq!(
        ports_seen(&find("podsim-DEL.txt", "portmap", "DEL")).len(),
        2
    );
    assert_eq!(
        ports_seen(&find("podsim-CHECK.txt", "portmap", "CHECK")).len(),
        2
    );
}

#[test]
fn cnitool_and_podman_camel_case_port_mappings() {
    let e = find("cnitool-ADD.txt", "portmap", "ADD");
    assert!(e.stdin.contains(r#""hostPort":19080"#));
    assert_eq!(
        ports_seen(&e),
        vec![PortMapping::new(Proto::Tcp, None, (19080, 19080), 8080).unwrap()]
    );

    let podman = load_podman()
        .into_iter()
        .find(|e| e.stdin.contains("runtimeConfig"))
        .unwrap();
    assert_eq!(
        ports_seen(&podman),
        vec![PortMapping::new(
            Proto::Tcp,
            Some("127.0.0.1".parse().unwrap()),
            (41999, 41999),
            8080
        )
        .unwrap()]
    );
}

#[test]
fn bandwidth_dns_and_annotations_from_go_cni() {
    let fake = Fake::new();
    assert_eq!(
        replay(&fake, &find("podsim-ADD-caps.txt", "bandwidth", "ADD")).0,
        0
    );
    let Seen::Add(r) = fake.only() else { panic!() };
    let bw = r.config.runtime_config.bandwidth.clone().unwrap();
    assert_eq!(
        (bw.ingress_rate, bw.egress_rate),
        (Some(10_000_000), Some(20_000_000))
    );
    assert_eq!(
        (bw.ingress_burst, bw.egress_burst),
        (Some(4_294_967_295), Some(4_294_967_295))
    );
    assert!(r.config.has_capability("bandwidth"));

    let fake = Fake::new();
    assert_eq!(
        replay(&fake, &find("podsim-ADD-caps.txt", "bridge", "ADD")).0,
        0
    );
    let Seen::Add(r) = fake.only() else { panic!() };
    let dns = r.config.runtime_config.dns.clone().unwrap();
    assert_eq!(dns.servers, vec!["10.79.0.53"]);
    assert_eq!(
        dns.searches,
        vec!["cncl-ns.svc.cluster.local", "svc.cluster.local"]
    );
    assert_eq!(dns.options, vec!["ndots:5"]);
    assert_eq!(
        r.config.runtime_config.raw["io.kubernetes.cri.pod-annotations"]
            ["kubernetes.io/egress-bandwidth"],
        "20M"
    );
    assert!(r.config.has_capability("io.kubernetes.cri.pod-annotations"));
}

// ---- verbs with unusual environments ---------------------------------------------------------

#[test]
fn version_with_libcni_dummy_env() {
    let e = find("podsim-VERSION.txt", "bridge", "VERSION");
    assert_eq!(
        (e.var("CNI_NETNS"), e.var("CNI_CONTAINERID")),
        ("dummy", "")
    );
    assert_eq!(
        replay(&Fake::new(), &e),
        (0, r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#.into())
    );
    // Unsupported or missing version on stdin: answer with the latest; never an error.
    for stdin in [r#"{"cniVersion":"0.2.0"}"#, "", "not json", "[]"] {
        let (status, out) = invoke(&Fake::new(), &e.env, stdin);
        assert_eq!(status, 0);
        assert!(
            out.starts_with(r#"{"cniVersion":"1.1.0","supportedVersions""#),
            "{stdin}: {out}"
        );
    }
    // A plugin that narrows its versions says so.
    let narrow = Fake {
        versions: vec![CniVersion::V0_4_0, CniVersion::V1_0_0],
        ..Fake::new()
    };
    assert_eq!(
        replay(&narrow, &e).1,
        r#"{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}"#
    );
}

#[test]
fn del_with_empty_netns() {
    for plugin in ["bridge", "host-local", "loopback", "portmap"] {
        let e = find("podsim-DEL-emptyns.txt", plugin, "DEL");
        assert_eq!(e.var("CNI_NETNS"), "");
        let fake = Fake::new();
        assert_eq!(replay(&fake, &e), (0, String::new()), "{plugin}");
        let Seen::Del(r) = fake.only() else { panic!() };
        assert_eq!(r.netns, None);
        assert_eq!(r.netns().unwrap_err().code, code::INVALID_ENV);
        assert_eq!(r.key.container_id, "podsim-b");
    }
}

#[test]
fn del_without_prev_result_after_cache_is_gone() {
    let e = find("podsim-DEL-again.txt", "portmap", "DEL");
    assert!(!e.stdin.contains("prevResult"));
    let fake = Fake::new();
    assert_eq!(replay(&fake, &e).0, 0);
    let Seen::Del(r) = fake.only() else { panic!() };
    assert!(r.prev_result().is_none());
}

#[test]
fn status_with_only_cni_path() {
    let e = find("modern-podsim-STATUS.txt", "bridge", "STATUS");
    assert_eq!(
        (
            e.var("CNI_CONTAINERID"),
            e.var("CNI_IFNAME"),
            e.var("CNI_NETNS")
        ),
        ("", "", "")
    );
    let fake = Fake::new();
    assert_eq!(replay(&fake, &e), (0, String::new()));
    let Seen::Status(r) = fake.only() else {
        panic!()
    };
    assert_eq!(
        (r.version, r.config.name.as_str()),
        (CniVersion::V1_1_0, "cncl-v11")
    );

    // Default STATUS says ready.
    assert_eq!(replay(&Minimal, &e), (0, String::new()));

    // Not ready: code 50 on stdout, exit 1.
    let down = Fake::failing(CniError::unavailable(
        "netloomd is not answering on /run/netloom/netloomd.sock",
    ));
    assert_eq!(
        replay(&down, &e),
        (1, r#"{"cniVersion":"1.1.0","code":50,"msg":"netloomd is not answering on /run/netloom/netloomd.sock"}"#.into())
    );
}

#[test]
fn gc_valid_attachments_from_either_key() {
    let e = find("modern-podsim-GC.txt", "bridge", "GC");
    let want = vec![
        AttachmentKey {
            container_id: "podsim-x".into(),
            ifname: "eth0".into(),
        },
        AttachmentKey {
            container_id: "podsim-y".into(),
            ifname: "net1".into(),
        },
    ];
    let full = e.stdin_json();
    for keep in ["both", "cni.dev/valid-attachments", "cni.dev/attachments"] {
        let mut stdin = full.clone();
        let obj = stdin.as_object_mut().unwrap();
        match keep {
            "cni.dev/valid-attachments" => drop(obj.remove("cni.dev/attachments")),
            "cni.dev/attachments" => drop(obj.remove("cni.dev/valid-attachments")),
            _ => {}
        }
        let fake = Fake::new();
        assert_eq!(
            invoke(&fake, &e.env, &stdin.to_string()),
            (0, String::new()),
            "{keep}"
        );
        let Seen::Gc(r) = fake.only() else { panic!() };
        assert_eq!(r.valid_attachments(), Some(want.as_slice()), "{keep}");
        assert!(r.is_valid(&want[1]));
        assert!(!r.is_valid(&AttachmentKey {
            container_id: "podsim-y".into(),
            ifname: "eth0".into()
        }));
        assert!(!r.is_valid(&AttachmentKey {
            container_id: "podsim-a".into(),
            ifname: "eth0".into()
        }));
    }

    // portmap's GC call carries the same list.
    let fake = Fake::new();
    assert_eq!(
        replay(&fake, &find("modern-podsim-GC.txt", "portmap", "GC")).0,
        0
    );
    let Seen::Gc(r) = fake.only() else { panic!() };
    assert_eq!(r.valid_attachments(), Some(want.as_slice()));
}

#[test]
fn gc_without_a_list_keeps_nothing() {
    let e = find("modern-cnitool-GC.txt", "bridge", "GC");
    assert!(!e.stdin.contains("attachments"));
    let fake = Fake::new();
    assert_eq!(replay(&fake, &e), (0, String::new()));
    let Seen::Gc(r) = fake.only() else { panic!() };
    assert_eq!(r.valid_attachments(), None);
    assert!(!r.is_valid(&AttachmentKey {
        container_id: "podsim-x".into(),
        ifname: "eth0".into()
    }));
    // Default GC collects nothing and succeeds.
    assert_eq!(replay(&Minimal, &e), (0, String::new()));
}

#[test]
fn loopback_0_3_1_result_carries_ip_versions() {
    let e = find("podsim-ADD.txt", "loopback", "ADD");
    let lo = CniResult {
        interfaces: vec![Interface {
            name: "lo".into(),
            mac: Some("00:00:00:00:00:00".into()),
            sandbox: Some("/run/netns/cncl-a".into()),
            ..Default::default()
        }],
        ips: vec![
            IpConfig {
                address: "127.0.0.1/8".parse().unwrap(),
                gateway: None,
                interface: Some(0),
            },
            IpConfig {
                address: "::1/128".parse().unwrap(),
                gateway: None,
                interface: Some(0),
            },
        ],
        ..Default::default()
    };
    assert_eq!(
        replay(&Fake::returning(lo), &e),
        (
            0,
            r#"{"cniVersion":"0.3.1","interfaces":[{"name":"lo","mac":"00:00:00:00:00:00","sandbox":"/run/netns/cncl-a"}],"ips":[{"version":"4","interface":0,"address":"127.0.0.1/8"},{"version":"6","interface":0,"address":"::1/128"}]}"#
                .into()
        )
    );
}

#[test]
fn prev_result_of_every_version() {
    let e = find("podsim-ADD.txt", "portmap", "ADD");
    let base = e.stdin_json();
    let full = CniResult {
        interfaces: vec![
            Interface {
                name: "cncl0".into(),
                mac: Some("e6:71:c7:7c:20:18".into()),
                mtu: Some(1500),
                ..Default::default()
            },
            Interface {
                name: "eth0".into(),
                mac: Some("86:17:8e:11:c5:d2".into()),
                sandbox: Some("/run/netns/cncl-a".into()),
                pci_id: Some("0000:00:03.0".into()),
                ..Default::default()
            },
        ],
        ips: vec![
            IpConfig {
                address: "10.79.0.3/24".parse().unwrap(),
                gateway: Some("10.79.0.1".parse().unwrap()),
                interface: Some(1),
            },
            IpConfig {
                address: "fd79::3/64".parse().unwrap(),
                gateway: None,
                interface: Some(1),
            },
        ],
        routes: vec![Route {
            table: Some(100),
            scope: Some(0),
            ..Route::new("0.0.0.0/0".parse().unwrap(), None)
        }],
        dns: cni_plugins::Dns {
            nameservers: vec!["10.79.0.1".into()],
            ..Default::default()
        },
    };
    for v in CniVersion::ALL {
        let mut stdin = base.clone();
        stdin["cniVersion"] = v.as_str().into();
        stdin["prevResult"] = full.to_value(v);
        let fake = Fake::new();
        assert_eq!(invoke(&fake, &e.env, &stdin.to_string()).0, 0, "{v}");
        let Seen::Add(r) = fake.only() else { panic!() };
        let prev = r.config.prev_result.clone().unwrap();
        assert_eq!(prev.version, v);
        let got = r.prev_result().unwrap();
        assert_eq!(got.ips, full.ips, "{v}");
        assert_eq!(got.dns, full.dns);
        assert_eq!(
            got.interfaces[1].sandbox.as_deref(),
            Some("/run/netns/cncl-a")
        );
        // 1.1-only fields survive only where the version carries them.
        assert_eq!(
            got.interfaces[0].mtu,
            v.has_1_1_fields().then_some(1500),
            "{v}"
        );
        assert_eq!(
            got.routes[0].table,
            v.has_1_1_fields().then_some(100),
            "{v}"
        );
        if v.has_1_1_fields() {
            assert_eq!(*got, full);
        }
        // Rendering it back in its version reproduces what was sent.
        assert_eq!(got.to_value(v), stdin["prevResult"], "{v}");
    }
}

// ---- error paths, through the dispatcher -----------------------------------------------------

fn portmap_add() -> Exec {
    find("podsim-ADD.txt", "portmap", "ADD")
}

fn with_var(e: &Exec, k: &str, v: &str) -> BTreeMap<String, String> {
    let mut env = e.env.clone();
    env.insert(k.into(), v.into());
    env
}

fn error_of(out: &(i32, String)) -> (i32, Value) {
    (
        out.0,
        serde_json::from_str(&out.1).unwrap_or_else(|e| panic!("{}: {e}", out.1)),
    )
}

#[test]
fn env_errors_are_code_4_and_name_the_variable() {
    let e = portmap_add();
    let cases = [
        (
            "CNI_COMMAND",
            "",
            "CNI_COMMAND is not set; it must be one of ADD, DEL, CHECK, VERSION, STATUS, GC",
        ),
        (
            "CNI_COMMAND",
            "ATTACH",
            "CNI_COMMAND \"ATTACH\" is not a CNI command (ADD, DEL, CHECK, VERSION, STATUS, GC)",
        ),
        ("CNI_CONTAINERID", "", "CNI_CONTAINERID is required for ADD"),
        ("CNI_NETNS", "", "CNI_NETNS is required for ADD"),
        ("CNI_IFNAME", "", "CNI_IFNAME is required for ADD"),
    ];
    for (var, val, msg) in cases {
        let fake = Fake::new();
        let out = invoke(&fake, &with_var(&e, var, val), &e.stdin);
        assert_eq!(
            out,
            (
                1,
                format!(
                    r#"{{"cniVersion":"1.0.0","code":4,"msg":"{}"}}"#,
                    msg.replace('"', "\\\"")
                )
            )
        );
        assert_eq!(fake.calls(), 0);
    }
    for (var, val) in [
        ("CNI_CONTAINERID", "bad/id"),
        ("CNI_IFNAME", "eth0:1"),
        ("CNI_IFNAME", "averyveryverylongname"),
    ] {
        let (status, v) = error_of(&invoke(&Fake::new(), &with_var(&e, var, val), &e.stdin));
        assert_eq!((status, v["code"].as_u64()), (1, Some(4)), "{var}={val}");
        assert!(
            v["msg"].as_str().unwrap().starts_with(&format!("{var}: ")),
            "{v}"
        );
    }
    let (_, v) = error_of(&invoke(
        &Fake::new(),
        &with_var(&e, "CNI_ARGS", "K8S_POD_NAME"),
        &e.stdin,
    ));
    assert_eq!(v["code"], 4);
    let gc = find("modern-podsim-GC.txt", "bridge", "GC");
    let (_, v) = error_of(&invoke(
        &Fake::new(),
        &with_var(&gc, "CNI_PATH", ""),
        &gc.stdin,
    ));
    assert_eq!(
        (v["code"].as_u64(), v["cniVersion"].as_str()),
        (Some(4), Some("1.1.0"))
    );
}

#[test]
fn unknown_cni_args_are_code_2_unless_ignored() {
    let e = portmap_add();
    let strict = "K8S_POD_NAMESPACE=cncl-ns;K8S_POD_NAME=web-a;FOO=bar";
    let fake = Fake::new();
    assert_eq!(
        invoke(&fake, &with_var(&e, "CNI_ARGS", strict), &e.stdin),
        (
            1,
            r#"{"cniVersion":"1.0.0","code":2,"msg":"CNI_ARGS key FOO=bar is not supported by netloom-fake","details":"known keys: K8S_POD_NAME, K8S_POD_NAMESPACE, K8S_POD_INFRA_CONTAINER_ID, K8S_POD_UID; add IgnoreUnknown=1 to CNI_ARGS to ignore unknown keys"}"#
                .into()
        )
    );
    assert_eq!(fake.calls(), 0);
    let k8s_only = K8S_ARGS
        .iter()
        .map(|k| format!("{k}=x"))
        .collect::<Vec<_>>()
        .join(";");
    assert_eq!(
        invoke(&Fake::new(), &with_var(&e, "CNI_ARGS", &k8s_only), &e.stdin).0,
        0
    );
    assert_eq!(
        invoke(
            &Fake::new(),
            &with_var(&e, "CNI_ARGS", "FOO=bar;IgnoreUnknown=true"),
            &e.stdin
        )
        .0,
        0
    );
}

#[test]
fn version_errors_are_code_1_and_say_what_to_change() {
    let e = portmap_add();
    let mut stdin = e.stdin_json();
    stdin.as_object_mut().unwrap().remove("cniVersion");
    let (status, v) = error_of(&invoke(&Fake::new(), &e.env, &stdin.to_string()));
    assert_eq!(
        (status, v["code"].as_u64(), v["cniVersion"].as_str()),
        (1, Some(1), Some("1.1.0"))
    );
    assert!(v["msg"].as_str().unwrap().contains("no \"cniVersion\""));

    stdin["cniVersion"] = "0.2.0".into();
    assert_eq!(
        invoke(&Fake::new(), &e.env, &stdin.to_string()),
        (
            1,
            r#"{"cniVersion":"0.2.0","code":1,"msg":"netloom-fake does not support CNI version \"0.2.0\"","details":"supported versions: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0; set \"cniVersion\" in the network configuration to one of them"}"#
                .into()
        )
    );

    // CHECK before 0.4.0.
    let check = find("podsim-CHECK-noports.txt", "portmap", "CHECK");
    let mut stdin = check.stdin_json();
    stdin["cniVersion"] = "0.3.1".into();
    stdin["prevResult"]["cniVersion"] = "0.3.1".into();
    let fake = Fake::new();
    assert_eq!(
        invoke(&fake, &check.env, &stdin.to_string()),
        (
            1,
            r#"{"cniVersion":"0.3.1","code":1,"msg":"CHECK needs CNI version 0.4.0 or later, but the network configuration says 0.3.1","details":"raise \"cniVersion\" in the network configuration to 0.4.0 or later"}"#
                .into()
        )
    );
    assert_eq!(fake.calls(), 0);

    // GC and STATUS before 1.1.0.
    for (file, cmd) in [
        ("modern-podsim-GC.txt", "GC"),
        ("modern-podsim-STATUS.txt", "STATUS"),
    ] {
        let x = find(file, "bridge", cmd);
        let mut stdin = x.stdin_json();
        stdin["cniVersion"] = "1.0.0".into();
        let (status, v) = error_of(&invoke(&Fake::new(), &x.env, &stdin.to_string()));
        assert_eq!((status, v["code"].as_u64()), (1, Some(1)), "{cmd}");
        assert_eq!(
            v["msg"].as_str().unwrap(),
            format!(
                "{cmd} needs CNI version 1.1.0 or later, but the network configuration says 1.0.0"
            )
        );
    }

    // A version netloom knows but this plugin does not list.
    let narrow = Fake {
        versions: vec![CniVersion::V1_1_0],
        ..Fake::new()
    };
    let (_, v) = error_of(&replay(&narrow, &e));
    assert_eq!(v["code"], 1);
    assert!(v["details"]
        .as_str()
        .unwrap()
        .starts_with("supported versions: 1.1.0;"));

    // cniVersions (list form) without cniVersion: highest common one.
    let mut stdin = e.stdin_json();
    stdin.as_object_mut().unwrap().remove("cniVersion");
    stdin["cniVersions"] = json!(["0.4.0", "1.0.0", "2.0.0"]);
    let fake = Fake::new();
    let (status, out) = invoke(&fake, &e.env, &stdin.to_string());
    assert_eq!(status, 0);
    assert!(out.starts_with(r#"{"cniVersion":"1.0.0""#), "{out}");
}

#[test]
fn decode_and_config_errors_are_6_and_7() {
    let e = portmap_add();
    let (status, v) = error_of(&invoke(&Fake::new(), &e.env, "{\"cniVersion\":"));
    assert_eq!(
        (status, v["code"].as_u64(), v["cniVersion"].as_str()),
        (1, Some(6), Some("1.1.0"))
    );
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .starts_with("network configuration on stdin is not valid JSON: EOF"),
        "{v}"
    );

    let (_, v) = error_of(&invoke(&Fake::new(), &e.env, r#"{"cniVersion":1}"#));
    assert_eq!(v["code"], 6);

    let mut stdin = e.stdin_json();
    stdin["runtimeConfig"]["portMappings"][0]["HostPort"] = json!("19081");
    let (_, v) = error_of(&invoke(&Fake::new(), &e.env, &stdin.to_string()));
    assert_eq!(
        (v["code"].as_u64(), v["cniVersion"].as_str()),
        (Some(6), Some("1.0.0"))
    );
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("invalid type: string \"19081\""),
        "{v}"
    );

    let mut stdin = e.stdin_json();
    stdin["runtimeConfig"]["portMappings"][1]["HostPort"] = json!(0);
    let (_, v) = error_of(&invoke(&Fake::new(), &e.env, &stdin.to_string()));
    assert_eq!(v["code"], 7);
    assert_eq!(
        v["msg"],
        "runtimeConfig.portMappings[1] hostPort 0 is not a port (1-65535)"
    );

    let mut stdin = e.stdin_json();
    stdin["prevResult"]["ips"][0]["address"] = json!("10.79.0.3");
    let (_, v) = error_of(&invoke(&Fake::new(), &e.env, &stdin.to_string()));
    assert_eq!(v["code"], 6);
    assert_eq!(
        v["msg"],
        "prevResult ips[0].address \"10.79.0.3\" is not an address in CIDR notation"
    );

    let mut stdin = e.stdin_json();
    stdin["name"] = json!("cncl net");
    let (_, v) = error_of(&invoke(&Fake::new(), &e.env, &stdin.to_string()));
    assert_eq!(v["code"], 7);
}

#[test]
fn plugin_errors_from_engine_keep_their_kind() {
    let e = find("podsim-ADD.txt", "bridge", "ADD");
    let err = engine_core::Error::Exhausted("pool 10.79.0.0/24 has no free address".into())
        .context("network cncl-net");
    let fake = Fake::failing(CniError::from(err));
    assert_eq!(
        replay(&fake, &e),
        (
            1,
            r#"{"cniVersion":"1.0.0","code":100,"msg":"network cncl-net: pool 10.79.0.0/24 has no free address","details":"pool 10.79.0.0/24 has no free address"}"#
                .into()
        )
    );
}

#[test]
fn a_closed_stdout_still_fails_the_call() {
    struct Closed;
    impl std::io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let e = portmap_add();
    assert_eq!(
        run(
            &Fake::new(),
            |k| e.env.get(k).cloned(),
            e.stdin.as_bytes(),
            &mut Closed
        ),
        1
    );
}

#[test]
fn commands_parse_from_recorded_names() {
    let names: std::collections::BTreeSet<String> = load_libcni()
        .iter()
        .map(|e| e.command().to_string())
        .collect();
    for n in &names {
        assert!(n.parse::<Command>().is_ok(), "{n}");
    }
    assert_eq!(names.len(), 6);
}
