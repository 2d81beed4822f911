//! The plugin protocol end to end through the axum routers (`oneshot`), over a real engine,
//! state store and IPAM, with an in-memory driver and firewall in place of the kernel: every
//! method and error path without root or Docker. The requests are shaped after
//! shared/docker/protocol-trace.jsonl.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use engine_core::driver::{Capabilities, Driver, Handoff, JoinInfo, Op};
use engine_core::engine::{DriverRegistry, Engine, SandboxConfigurator, SandboxInterface};
use engine_core::firewall::{EndpointRules, Firewaller, NetworkRules};
use engine_core::store::file::FileStore;
use engine_core::{
    AttachmentKey, Drift, Endpoint, EndpointSpec, Error, Network, NetworkSpec, Options,
    PortMapping, Result, RouteSpec, Sandbox, StateStore,
};
use ipam::StoreIpam;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::http::{self, App, Readiness};
use crate::reconcile;
use crate::records;
use crate::service::{AddressSpaces, Service};

// ------------------------------------------------------------------ fakes

/// The bridge driver's contract without the kernel: option validation is the real one.
struct FakeBridge;

impl Driver for FakeBridge {
    fn name(&self) -> &'static str {
        "bridge"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            scope: "local".into(),
            supports_ipv6: true,
            supports_port_mapping: true,
            max_endpoints: None,
            no_interface: false,
        }
    }
    fn validate(&self, spec: &NetworkSpec) -> Result<Options> {
        drivers::bridge::options::normalise(spec)
    }
    fn create_network(&self, _op: &mut Op, _net: &Network) -> Result<()> {
        Ok(())
    }
    fn delete_network(&self, _op: &mut Op, _net: &Network) -> Result<()> {
        Ok(())
    }
    fn create_endpoint(&self, _op: &mut Op, net: &Network, spec: &EndpointSpec) -> Result<Handoff> {
        let h = drivers::naming::host_veth(&net.id, &spec.key);
        Ok(Handoff {
            link: drivers::naming::temp_peer(&net.id, &spec.key),
            mac: spec.mac.clone(),
            host_end: Some(h),
            placed: false,
            host_interfaces: Vec::new(),
        })
    }
    fn delete_endpoint(&self, _op: &mut Op, _net: &Network, _ep: &Endpoint) -> Result<()> {
        Ok(())
    }
    fn join(&self, _op: &mut Op, net: &Network, ep: &Endpoint, _sb: &Sandbox) -> Result<JoinInfo> {
        let mut info = JoinInfo {
            dst_prefix: "eth".into(),
            ..Default::default()
        };
        for v4 in [true, false] {
            if !ep.addresses.iter().any(|a| a.is_ipv4() == v4) {
                continue;
            }
            let gw = net
                .subnets
                .iter()
                .filter(|s| s.subnet.is_ipv4() == v4)
                .find_map(|s| s.gateway);
            if v4 {
                info.gateway_v4 = gw;
            } else {
                info.gateway_v6 = gw;
            }
            if let (Some(gw), false) = (gw, net.internal) {
                let dst = if v4 { "0.0.0.0/0" } else { "::/0" };
                info.routes.push(RouteSpec {
                    destination: dst.parse().unwrap(),
                    gateway: Some(gw),
                });
            }
        }
        Ok(info)
    }
    fn leave(&self, _op: &mut Op, _net: &Network, _ep: &Endpoint) -> Result<()> {
        Ok(())
    }
    fn check(
        &self,
        _h: &engine_core::netlink::Netlink,
        _n: &Network,
        _e: &Endpoint,
    ) -> Result<Vec<Drift>> {
        Ok(Vec::new())
    }
    fn gc(&self, _op: &mut Op, _net: &Network, _live: &[AttachmentKey]) -> Result<Vec<Error>> {
        Ok(Vec::new())
    }
}

struct NoSandboxes;

impl SandboxConfigurator for NoSandboxes {
    fn configure(&self, _op: &mut Op, _sb: &Sandbox, _i: &SandboxInterface<'_>) -> Result<String> {
        Err(Error::Internal(
            "Docker endpoints are configured by Docker".into(),
        ))
    }
    fn deconfigure(&self, _sb: &Sandbox, _ifname: &str) -> Result<()> {
        Ok(())
    }
    fn check(&self, _sb: &Sandbox, _i: &str, _a: &[ipnetwork::IpNetwork]) -> Result<Vec<Drift>> {
        Ok(Vec::new())
    }
}

/// Published ports per (network, owner), with the host-port conflict rule of the real backends.
#[derive(Default)]
struct FakeFirewall {
    networks: Mutex<Vec<String>>,
    ports: Mutex<BTreeMap<(String, String), Vec<PortMapping>>>,
}

impl FakeFirewall {
    fn ports_of(&self, owner_prefix: &str) -> Vec<PortMapping> {
        let p = self.ports.lock().unwrap();
        p.iter()
            .filter(|((_, o), _)| o.starts_with(owner_prefix))
            .flat_map(|(_, v)| v.clone())
            .collect()
    }
}

impl Firewaller for FakeFirewall {
    fn backend(&self) -> &'static str {
        "fake"
    }
    fn setup_network(&self, net: &NetworkRules) -> Result<()> {
        let mut n = self.networks.lock().unwrap();
        if !n.contains(&net.network_id) {
            n.push(net.network_id.clone());
        }
        Ok(())
    }
    fn teardown_network(&self, id: &str) -> Result<()> {
        self.networks.lock().unwrap().retain(|n| n != id);
        self.ports.lock().unwrap().retain(|(n, _), _| n != id);
        Ok(())
    }
    fn add_endpoint(&self, net: &NetworkRules, ep: &EndpointRules) -> Result<()> {
        let mut all = self.ports.lock().unwrap();
        for ((_, owner), held) in all.iter() {
            if owner == &ep.owner {
                continue;
            }
            for a in &ep.ports {
                for b in held {
                    let overlap = a.proto == b.proto
                        && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip)
                        && a.host_port <= b.host_port_end
                        && b.host_port <= a.host_port_end;
                    if overlap {
                        return Err(Error::Conflict(format!(
                            "host port {}/{} is already published by {owner}",
                            a.host_port, a.proto
                        )));
                    }
                }
            }
        }
        all.insert((net.network_id.clone(), ep.owner.clone()), ep.ports.clone());
        Ok(())
    }
    fn del_endpoint(&self, net: &NetworkRules, ep: &EndpointRules) -> Result<()> {
        self.ports
            .lock()
            .unwrap()
            .remove(&(net.network_id.clone(), ep.owner.clone()));
        Ok(())
    }
    fn reapply(&self, _n: &[NetworkRules], _e: &[EndpointRules]) -> Result<Vec<Drift>> {
        Ok(Vec::new())
    }
    fn check(&self, _n: &NetworkRules, _e: &[EndpointRules]) -> Result<Vec<Drift>> {
        Ok(Vec::new())
    }
}

/// A daemon over a private state directory, removed on drop.
struct Rig {
    dir: PathBuf,
    svc: Arc<Service>,
    fw: Arc<FakeFirewall>,
    app: Arc<App>,
    ready: tokio::sync::watch::Sender<Readiness>,
    net: Router,
    ipam: Router,
    admin: Router,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static RIG_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Rig {
    fn new() -> Rig {
        let n = RIG_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("netloomd-unit-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self::open(dir, true)
    }

    /// A daemon over an existing state dir (a restart); `ready` says whether to skip the
    /// startup readiness gate.
    fn open(dir: PathBuf, ready: bool) -> Rig {
        let store: Arc<dyn StateStore> = Arc::new(FileStore::open(&dir).unwrap());
        let ipam = Arc::new(StoreIpam::new(store.clone(), ipam::no_host_routes()));
        let mut reg = DriverRegistry::default();
        reg.register(Arc::new(FakeBridge));
        let fw = Arc::new(FakeFirewall::default());
        let fwd: Arc<dyn Firewaller> = fw.clone();
        let engine = Engine::new(
            store,
            ipam,
            reg,
            Some(fwd.clone()),
            Arc::new(NoSandboxes),
            None,
        );
        let svc = Arc::new(Service::new(
            engine,
            Some(fwd),
            String::new(),
            AddressSpaces::default(),
        ));
        let (app, tx) = App::new(svc.clone());
        if ready {
            tx.send(Readiness::Ready(Box::default())).unwrap();
        }
        let net = http::network_router(app.clone(), "netloom-bridge", "bridge");
        let ipam = http::ipam_router(app.clone());
        let admin = http::admin_router(app.clone());
        Rig {
            dir,
            svc,
            fw,
            app,
            ready: tx,
            net,
            ipam,
            admin,
        }
    }

    fn store(&self) -> &dyn StateStore {
        self.svc.store().as_ref()
    }
}

async fn send(
    router: &Router,
    method: &str,
    path: &str,
    body: &str,
) -> (StatusCode, Value, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    if ctype.starts_with("application/vnd.docker.plugins") {
        assert!(v.is_object(), "plugin answers are JSON objects: {text}");
    }
    (status, v, text)
}

async fn post(router: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let (s, v, _) = send(router, "POST", path, &body.to_string()).await;
    (s, v)
}

/// Posts and requires 200.
async fn ok(router: &Router, path: &str, body: Value) -> Value {
    let (s, v) = post(router, path, body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{path} {body} answered {v}");
    v
}

/// Posts and requires a failure with this status; returns the Err text.
async fn fails(router: &Router, path: &str, body: Value, status: StatusCode) -> String {
    let (s, v) = post(router, path, body.clone()).await;
    assert_eq!(s, status, "{path} {body} answered {v}");
    let err = v["Err"].as_str().unwrap_or_default().to_string();
    assert!(!err.is_empty(), "failure without Err: {v}");
    err
}

const NID: &str = "b88f49005d5a7259ed0fc8294b9e53f3dedae79ef45919b37d22ca5187454e8d";
const NID2: &str = "e53946b75cc22236a5f2b7698a0836af567a7ad9a65e31dbd83f832bd660a8cb";
const EID: &str = "4db9d2767da5d30cb7e1833741d120b691d58aab21625ba434b7f1a8bfb3d8c2";
const EID2: &str = "db68112993e9c295701f61d7e9a9886737d4ecebc76d4ad589adc9f6dbb2ceba";

fn create_network(id: &str, pool: &str, gw: &str, generic: Value) -> Value {
    json!({
        "NetworkID": id,
        "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": generic},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": pool, "Gateway": gw}],
        "IPv6Data": []
    })
}

fn create_endpoint(nid: &str, eid: &str, addr: &str) -> Value {
    json!({
        "NetworkID": nid, "EndpointID": eid,
        "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""},
        "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}
    })
}

fn ep(nid: &str, eid: &str) -> Value {
    json!({"NetworkID": nid, "EndpointID": eid})
}

fn portmap(nid: &str, eid: &str, bindings: Value) -> Value {
    json!({"NetworkID": nid, "EndpointID": eid, "Options": {"com.docker.network.portmap": bindings}})
}

/// Nothing of Docker's is left in the store: records, pools, leases.
fn assert_empty(r: &Rig) {
    assert!(records::list_networks(r.store()).unwrap().is_empty());
    assert!(records::list_endpoints(r.store(), None).unwrap().is_empty());
    assert!(r.svc.engine().list_networks().unwrap().is_empty());
    let pools = r.svc.ipam().list_pools().unwrap();
    assert!(pools.is_empty(), "pools left: {pools:?}");
    let left = r.store().list(&engine_core::Key::new(["ipam"])).unwrap();
    assert!(
        left.is_empty(),
        "IPAM entries left: {:?}",
        left.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>()
    );
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn activation_and_capabilities() {
    let r = Rig::new();
    assert_eq!(
        ok(&r.net, "/Plugin.Activate", Value::Null).await,
        json!({"Implements": ["NetworkDriver"]})
    );
    assert_eq!(
        ok(&r.ipam, "/Plugin.Activate", Value::Null).await,
        json!({"Implements": ["IpamDriver"]})
    );
    assert_eq!(
        ok(&r.net, "/NetworkDriver.GetCapabilities", Value::Null).await,
        json!({"Scope": "local", "ConnectivityScope": "local"})
    );
    assert_eq!(
        ok(&r.ipam, "/IpamDriver.GetCapabilities", Value::Null).await,
        json!({"RequiresMACAddress": false, "RequiresRequestReplay": false})
    );
    assert_eq!(
        ok(&r.ipam, "/IpamDriver.GetDefaultAddressSpaces", Value::Null).await,
        json!({"LocalDefaultAddressSpace": "netloom-local", "GlobalDefaultAddressSpace": "netloom-global"})
    );
    // Discovery is accepted and ignored.
    ok(
        &r.net,
        "/NetworkDriver.DiscoverNew",
        json!({"DiscoveryType": 1, "DiscoveryData": {"Address": "10.0.0.1", "self": true}}),
    )
    .await;
    ok(
        &r.net,
        "/NetworkDriver.DiscoverDelete",
        json!({"DiscoveryType": 1, "DiscoveryData": {}}),
    )
    .await;
}

#[tokio::test]
async fn unknown_methods_are_404_and_bad_bodies_400() {
    let r = Rig::new();
    let e = fails(
        &r.net,
        "/NetworkDriver.AllocateNetwork",
        json!({}),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(e.contains("does not implement"), "{e}");
    fails(
        &r.net,
        "/VolumeDriver.Create",
        json!({}),
        StatusCode::NOT_FOUND,
    )
    .await;
    // The NetworkDriver socket does not serve IPAM and vice versa.
    fails(
        &r.net,
        "/IpamDriver.RequestPool",
        json!({}),
        StatusCode::NOT_FOUND,
    )
    .await;
    fails(
        &r.ipam,
        "/NetworkDriver.Join",
        json!({}),
        StatusCode::NOT_FOUND,
    )
    .await;
    for (router, path) in [
        (&r.net, "/NetworkDriver.CreateNetwork"),
        (&r.net, "/NetworkDriver.DeleteNetwork"),
        (&r.net, "/NetworkDriver.CreateEndpoint"),
        (&r.net, "/NetworkDriver.DeleteEndpoint"),
        (&r.net, "/NetworkDriver.EndpointOperInfo"),
        (&r.net, "/NetworkDriver.Join"),
        (&r.net, "/NetworkDriver.Leave"),
        (&r.net, "/NetworkDriver.ProgramExternalConnectivity"),
        (&r.net, "/NetworkDriver.RevokeExternalConnectivity"),
        (&r.ipam, "/IpamDriver.RequestPool"),
        (&r.ipam, "/IpamDriver.ReleasePool"),
        (&r.ipam, "/IpamDriver.RequestAddress"),
        (&r.ipam, "/IpamDriver.ReleaseAddress"),
    ] {
        let (s, v, _) = send(router, "POST", path, "{not json").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            v["Err"]
                .as_str()
                .unwrap()
                .contains("malformed request body"),
            "{path}: {v}"
        );
        if std::ptr::eq(router, &r.ipam) {
            assert_eq!(
                v["Error"], v["Err"],
                "IPAM errors carry the field libnetwork reads"
            );
        }
        // Well-formed JSON of the wrong shape is malformed too.
        let (s, _, _) = send(router, "POST", path, "[1,2]").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}");
    }
    // Nothing changed.
    assert_empty(&r);
    let m = r.app.metrics.render(&Default::default());
    assert!(m.contains("method=\"unknown\",code=\"404\"} 4"), "{m}");
}

#[tokio::test]
async fn full_lifecycle_as_dockerd_drives_it() {
    let r = Rig::new();
    // docker network create -d netloom-bridge --ipam-driver netloom-ipam --subnet 172.24.1.0/24
    //   --ip-range 172.24.1.128/25 --gateway 172.24.1.1 --aux-address r=172.24.1.5 -o …
    let pool = ok(
        &r.ipam,
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "netloom-local", "Pool": "172.24.1.0/24", "SubPool": "172.24.1.128/25", "Options": {}, "V6": false}),
    )
    .await;
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    assert_eq!(pool["Pool"], "172.24.1.0/24");
    let gw = ok(
        &r.ipam,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "172.24.1.1", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    )
    .await;
    assert_eq!(gw["Address"], "172.24.1.1/24");
    let aux = ok(
        &r.ipam,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "172.24.1.5", "Options": null}),
    )
    .await;
    assert_eq!(aux["Address"], "172.24.1.5/24");
    let mut cn = create_network(
        NID,
        "172.24.1.0/24",
        "172.24.1.1/24",
        json!({"com.docker.network.bridge.name": "br-web", "com.docker.network.bridge.enable_icc": "true",
               "com.docker.network.driver.mtu": "1400", "com.docker.network.container_iface_prefix": "net"}),
    );
    cn["IPv4Data"][0]["AuxAddresses"] = json!({"r": "172.24.1.5/24"});
    assert_eq!(
        ok(&r.net, "/NetworkDriver.CreateNetwork", cn.clone()).await,
        json!({})
    );
    let net = r.svc.engine().get_network(NID).unwrap().unwrap();
    assert_eq!(net.options["bridge"], "br-web");
    assert_eq!(net.mtu, Some(1400));
    // Repeated (Docker lost our answer): same result, nothing doubled. Docker's IPAM leased
    // the addresses; the network holds no engine pool of its own.
    ok(&r.net, "/NetworkDriver.CreateNetwork", cn).await;
    assert_eq!(r.svc.engine().get_network(NID).unwrap().unwrap(), net);
    assert!(net.subnets.iter().all(|s| s.pool_id.is_empty()));
    assert!(r
        .svc
        .ipam()
        .get_pool(&records::shadow_pool_id(NID, false))
        .unwrap()
        .is_none());

    // docker run -p 18280:80: address from IPAM (the sub-pool), then the endpoint.
    let a = ok(
        &r.ipam,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": null}),
    )
    .await;
    let addr = a["Address"].as_str().unwrap().to_string();
    assert!(
        addr.starts_with("172.24.1.1") && addr.ends_with("/24") && addr != "172.24.1.1/24",
        "{addr}"
    );
    let mut ce = create_endpoint(NID, EID, &addr);
    ce["Options"]["com.docker.network.portmap"] = json!([{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18280, "HostPortEnd": 18280}]);
    let ans = ok(&r.net, "/NetworkDriver.CreateEndpoint", ce.clone()).await;
    // Only the MAC, which Docker left empty; never the address it supplied.
    let mac = ans["Interface"]["MacAddress"].as_str().unwrap().to_string();
    assert_eq!(ans, json!({"Interface": {"MacAddress": mac}}));
    assert!(mac.starts_with("02:42:ac:18:01:"));
    assert_eq!(
        ok(&r.net, "/NetworkDriver.CreateEndpoint", ce).await,
        ans,
        "a repeated CreateEndpoint answers the same"
    );

    let join = ok(
        &r.net,
        "/NetworkDriver.Join",
        json!({"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/var/run/docker/netns/7774d2147064", "Options": {}}),
    )
    .await;
    let src = join["InterfaceName"]["SrcName"].as_str().unwrap();
    let key = AttachmentKey::new(EID, "eth").unwrap();
    assert_eq!(src, drivers::naming::temp_peer(NID, &key));
    assert_eq!(join["InterfaceName"]["DstPrefix"], "net");
    assert_eq!(join["Gateway"], "172.24.1.1");
    assert_eq!(join["DisableGatewayService"], true);
    assert!(
        join.get("StaticRoutes").is_none() && join.get("GatewayIPv6").is_none(),
        "{join}"
    );

    ok(
        &r.net,
        "/NetworkDriver.ProgramExternalConnectivity",
        portmap(NID, EID, json!([{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18280, "HostPortEnd": 18280}])),
    )
    .await;
    assert_eq!(
        r.fw.ports_of(EID),
        vec![PortMapping::new(engine_core::Proto::Tcp, None, (18280, 18280), 80).unwrap()]
    );
    let info = ok(&r.net, "/NetworkDriver.EndpointOperInfo", ep(NID, EID)).await;
    assert_eq!(info["Value"]["netloom.src_name"], src);
    assert_eq!(
        info["Value"]["com.docker.network.portmap"][0]["HostPort"],
        18280
    );
    assert_eq!(info["Value"]["netloom.addresses"][0], addr.as_str());

    // Admin API and metrics see it.
    let (s, nets, _) = send(&r.admin, "GET", "/networks", "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(nets[0]["id"], NID);
    assert_eq!(nets[0]["endpoints"], 1);
    let (_, eps, _) = send(&r.admin, "GET", &format!("/endpoints?network={NID}"), "").await;
    assert_eq!(eps[0]["ports"][0]["host_port"], 18280);
    assert_eq!(eps[0]["sandbox"], "/var/run/docker/netns/7774d2147064");
    let (s, one, _) = send(&r.admin, "GET", &format!("/networks/{NID}"), "").await;
    assert_eq!(
        (s, one["bridge"].as_str()),
        (StatusCode::OK, Some("br-web"))
    );
    let (s, _, _) = send(&r.admin, "GET", "/networks/nope", "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, health, _) = send(&r.admin, "GET", "/health", "").await;
    assert_eq!(
        (s, health["status"].as_str(), health["firewall"].as_str()),
        (StatusCode::OK, Some("ok"), Some("fake"))
    );
    let (_, _, metrics) = send(&r.admin, "GET", "/metrics", "").await;
    assert!(
        metrics.contains(&format!(
            "netloom_network_endpoints{{network=\"{NID}\",driver=\"netloom-bridge\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "netloom_plugin_requests_total{method=\"NetworkDriver.Join\",code=\"200\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "netloom_plugin_requests_total{method=\"IpamDriver.RequestAddress\",code=\"200\"} 3"
        ),
        "{metrics}"
    );

    // docker rm -f: Revoke, Leave, DeleteEndpoint, ReleaseAddress.
    ok(
        &r.net,
        "/NetworkDriver.RevokeExternalConnectivity",
        ep(NID, EID),
    )
    .await;
    assert!(r.fw.ports_of(EID).is_empty());
    ok(&r.net, "/NetworkDriver.Leave", ep(NID, EID)).await;
    ok(&r.net, "/NetworkDriver.DeleteEndpoint", ep(NID, EID)).await;
    ok(&r.net, "/NetworkDriver.DeleteEndpoint", ep(NID, EID)).await;
    let ip = addr.split('/').next().unwrap();
    ok(
        &r.ipam,
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID": pool_id, "Address": ip}),
    )
    .await;
    // docker network rm: gateway and aux released, then the pool, then DeleteNetwork.
    ok(
        &r.ipam,
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID": pool_id, "Address": "172.24.1.1"}),
    )
    .await;
    ok(
        &r.ipam,
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID": pool_id, "Address": "172.24.1.5"}),
    )
    .await;
    ok(
        &r.ipam,
        "/IpamDriver.ReleasePool",
        json!({"PoolID": pool_id}),
    )
    .await;
    ok(
        &r.net,
        "/NetworkDriver.DeleteNetwork",
        json!({"NetworkID": NID}),
    )
    .await;
    ok(
        &r.net,
        "/NetworkDriver.DeleteNetwork",
        json!({"NetworkID": NID}),
    )
    .await;
    ok(
        &r.ipam,
        "/IpamDriver.ReleasePool",
        json!({"PoolID": pool_id}),
    )
    .await;
    assert_empty(&r);
    assert!(r.fw.networks.lock().unwrap().is_empty());
}

#[tokio::test]
async fn ipam_pools_refcounts_defaults_and_errors() {
    let r = Rig::new();
    let req = json!({"AddressSpace": "netloom-local", "Pool": "10.20.0.0/24", "SubPool": "", "Options": {}, "V6": false});
    let a = ok(&r.ipam, "/IpamDriver.RequestPool", req.clone()).await;
    let b = ok(&r.ipam, "/IpamDriver.RequestPool", req).await;
    assert_eq!(a["PoolID"], b["PoolID"], "identical requests share a pool");
    let id = a["PoolID"].as_str().unwrap();
    assert_eq!(r.svc.ipam().get_pool(id).unwrap().unwrap().refs, 2);
    // Overlapping but different: refused, with the subnet named.
    let e = fails(
        &r.ipam,
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "netloom-local", "Pool": "10.20.0.0/16", "V6": false}),
        StatusCode::CONFLICT,
    )
    .await;
    assert!(e.contains("10.20.0.0/16"), "{e}");
    // Default pools: distinct subnets, gateway = first address, already excluded from leases.
    let d1 = ok(
        &r.ipam,
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "netloom-local", "Pool": "", "SubPool": "", "V6": false}),
    )
    .await;
    let d2 = ok(
        &r.ipam,
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "", "Pool": "", "SubPool": "", "V6": false}),
    )
    .await;
    assert_ne!(d1["Pool"], d2["Pool"]);
    assert_ne!(d1["PoolID"], d2["PoolID"]);
    assert_eq!(
        d1["Pool"], "172.17.0.0/16",
        "Docker's first default pool on a host without routes"
    );
    let gw = ok(
        &r.ipam,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": d1["PoolID"], "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    )
    .await;
    assert_eq!(gw["Address"], "172.17.0.1/16");
    let first = ok(
        &r.ipam,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": d1["PoolID"], "Address": ""}),
    )
    .await;
    assert_eq!(first["Address"], "172.17.0.2/16");
    let v6 = ok(
        &r.ipam,
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "netloom-local", "Pool": "", "V6": true}),
    )
    .await;
    assert!(
        v6["Pool"].as_str().unwrap().starts_with("fd6e:6574:6c6f:"),
        "{v6}"
    );

    // Explicit pool, gateway by default the first address; exact requests; conflicts.
    let gw = ok(
        &r.ipam,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": id, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    )
    .await;
    assert_eq!(gw["Address"], "10.20.0.1/24");
    let x = ok(
        &r.ipam,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": id, "Address": "10.20.0.50"}),
    )
    .await;
    assert_eq!(x["Address"], "10.20.0.50/24");
    let (s, v) = post(
        &r.ipam,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": id, "Address": "10.20.0.50"}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        v["Error"],
        "address 10.20.0.50 is already in use in 10.20.0.0/24"
    );
    assert_eq!(v["Err"], v["Error"]);
    fails(
        &r.ipam,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": id, "Address": "10.99.0.1"}),
        StatusCode::BAD_REQUEST,
    )
    .await;
    fails(
        &r.ipam,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": id, "Address": "banana"}),
        StatusCode::BAD_REQUEST,
    )
    .await;
    fails(
        &r.ipam,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": "netloom-local/10.99.0.0/24", "Address": ""}),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Pools that are not the IPAM driver's (a network's shadow pool, a CNI pool) are off limits.
    let e = fails(
        &r.ipam,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": "docker-net/x/v4", "Address": ""}),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(e.contains("not handed out by netloom's IPAM driver"), "{e}");
    fails(
        &r.ipam,
        "/IpamDriver.ReleasePool",
        json!({"PoolID": "mynet/0"}),
        StatusCode::BAD_REQUEST,
    )
    .await;

    // Bad pool requests.
    for (body, needle) in [
        (
            json!({"AddressSpace": "other", "Pool": ""}),
            "address space",
        ),
        (
            json!({"AddressSpace": "netloom-local", "Pool": "", "SubPool": "10.1.0.0/25"}),
            "--ip-range needs --subnet",
        ),
        (
            json!({"AddressSpace": "netloom-local", "Pool": "10.1.0.0/24", "SubPool": "10.2.0.0/25"}),
            "not inside",
        ),
        (
            json!({"AddressSpace": "netloom-local", "Pool": "10.1.0.7/24"}),
            "host bits",
        ),
        (
            json!({"AddressSpace": "netloom-local", "Pool": "10.1.0.0/24", "V6": true}),
            "not an IPv6 subnet",
        ),
        (
            json!({"AddressSpace": "netloom-local", "Pool": "nope"}),
            "not a CIDR",
        ),
        (
            json!({"AddressSpace": "netloom-local", "Pool": "10.1.0.0/24", "Options": {"size": "24"}}),
            "--ipam-opt",
        ),
    ] {
        let e = fails(
            &r.ipam,
            "/IpamDriver.RequestPool",
            body.clone(),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(e.contains(needle), "{body}: {e}");
    }

    // Exhaustion: a /30 has two usable addresses, one of them the gateway.
    let small = ok(
        &r.ipam,
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "netloom-local", "Pool": "10.30.0.0/30"}),
    )
    .await;
    let sid = small["PoolID"].as_str().unwrap();
    ok(&r.ipam, "/IpamDriver.RequestAddress", json!({"PoolID": sid, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}})).await;
    ok(
        &r.ipam,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": sid, "Address": ""}),
    )
    .await;
    let e = fails(
        &r.ipam,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": sid, "Address": ""}),
        StatusCode::INSUFFICIENT_STORAGE,
    )
    .await;
    assert!(e.contains("no free address"), "{e}");

    // Refcounted release: the pool stays until its last reference goes; then it is gone.
    ok(&r.ipam, "/IpamDriver.ReleasePool", json!({"PoolID": id})).await;
    assert!(r.svc.ipam().get_pool(id).unwrap().is_some());
    ok(&r.ipam, "/IpamDriver.ReleasePool", json!({"PoolID": id})).await;
    assert!(r.svc.ipam().get_pool(id).unwrap().is_none());
    ok(
        &r.ipam,
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID": id, "Address": "10.20.0.50"}),
    )
    .await;
}

#[tokio::test]
async fn bad_network_requests_change_nothing() {
    let r = Rig::new();
    let cases = [
        (
            create_network(
                NID,
                "10.1.0.0/24",
                "10.1.0.1/24",
                json!({"com.docker.network.bridge.enable_ip_masqurade": "false"}),
            ),
            "did you mean com.docker.network.bridge.enable_ip_masquerade",
        ),
        (
            create_network(
                NID,
                "10.1.0.0/24",
                "10.1.0.1/24",
                json!({"com.docker.network.bridge.inhibit_ipv4": "true"}),
            ),
            "not supported",
        ),
        (
            create_network(
                NID,
                "10.1.0.0/24",
                "10.1.0.1/24",
                json!({"com.docker.network.driver.mtu": "9"}),
            ),
            "MTU",
        ),
        (
            create_network(NID, "10.1.0.0/24", "10.2.0.1/24", json!({})),
            "outside pool",
        ),
        (
            create_network(NID, "10.1.0.0/33", "", json!({})),
            "not a CIDR",
        ),
        (
            create_network("bad id!", "10.1.0.0/24", "10.1.0.1/24", json!({})),
            "not a valid id",
        ),
        (
            json!({"NetworkID": NID, "Options": {}, "IPv4Data": [], "IPv6Data": []}),
            "no subnet",
        ),
    ];
    for (body, needle) in cases {
        let e = fails(
            &r.net,
            "/NetworkDriver.CreateNetwork",
            body.clone(),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(e.contains(needle), "{body}: {e}");
        assert_empty(&r);
    }
    // Overlapping subnets of two netloom networks: refused, the first one untouched.
    ok(
        &r.net,
        "/NetworkDriver.CreateNetwork",
        create_network(NID, "10.1.0.0/24", "10.1.0.1/24", json!({})),
    )
    .await;
    let e = fails(
        &r.net,
        "/NetworkDriver.CreateNetwork",
        create_network(NID2, "10.1.0.0/16", "10.1.0.1/16", json!({})),
        StatusCode::CONFLICT,
    )
    .await;
    assert!(e.contains("overlaps"), "{e}");
    assert!(records::get_network(r.store(), NID2).unwrap().is_none());
    assert!(r
        .svc
        .ipam()
        .get_pool(&records::shadow_pool_id(NID2, false))
        .unwrap()
        .is_none());
    assert_eq!(r.svc.engine().list_networks().unwrap().len(), 1);
    // The same id with other settings.
    let e = fails(
        &r.net,
        "/NetworkDriver.CreateNetwork",
        create_network(NID, "10.9.0.0/24", "10.9.0.1/24", json!({})),
        StatusCode::CONFLICT,
    )
    .await;
    assert!(e.contains("already exists"), "{e}");
    // Unknown ids: delete is idempotent, everything else a clear error.
    ok(
        &r.net,
        "/NetworkDriver.DeleteNetwork",
        json!({"NetworkID": NID2}),
    )
    .await;
    let e = fails(
        &r.net,
        "/NetworkDriver.CreateEndpoint",
        create_endpoint(NID2, EID, "10.1.0.2/24"),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(e.contains("not a netloom network"), "{e}");
    fails(
        &r.net,
        "/NetworkDriver.Join",
        json!({"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/x"}),
        StatusCode::BAD_REQUEST,
    )
    .await;
    fails(
        &r.net,
        "/NetworkDriver.EndpointOperInfo",
        ep(NID, EID),
        StatusCode::BAD_REQUEST,
    )
    .await;
    fails(
        &r.net,
        "/NetworkDriver.ProgramExternalConnectivity",
        portmap(NID, EID, json!([])),
        StatusCode::BAD_REQUEST,
    )
    .await;
    ok(
        &r.net,
        "/NetworkDriver.RevokeExternalConnectivity",
        ep(NID, EID),
    )
    .await;
    ok(&r.net, "/NetworkDriver.Leave", ep(NID, EID)).await;
    ok(&r.net, "/NetworkDriver.DeleteEndpoint", ep(NID, EID)).await;
    ok(
        &r.net,
        "/NetworkDriver.DeleteNetwork",
        json!({"NetworkID": NID}),
    )
    .await;
    assert_empty(&r);
}

#[tokio::test]
async fn endpoint_errors_static_addresses_and_macs() {
    let r = Rig::new();
    ok(
        &r.net,
        "/NetworkDriver.CreateNetwork",
        create_network(NID, "10.1.0.0/24", "10.1.0.1/24", json!({})),
    )
    .await;
    for (addr, needle) in [
        ("10.2.0.5/24", "in no subnet"),
        ("10.1.0.5/16", "in no subnet"),
        ("10.1.0.5", "CIDR"),
        ("", "no IPv4 address"),
        ("10.1.0.1/24", "gateway"),
    ] {
        let (s, v) = post(
            &r.net,
            "/NetworkDriver.CreateEndpoint",
            create_endpoint(NID, EID, addr),
        )
        .await;
        assert!(s.is_client_error(), "{addr}: {s} {v}");
        assert!(v["Err"].as_str().unwrap().contains(needle), "{addr}: {v}");
    }
    assert!(records::list_endpoints(r.store(), None).unwrap().is_empty());
    assert!(r.svc.engine().list_endpoints(NID).unwrap().is_empty());
    // --ip 10.1.0.20 --mac-address: the MAC is Docker's, so the answer is empty.
    let mut ce = create_endpoint(NID, EID, "10.1.0.20/24");
    ce["Interface"]["MacAddress"] = json!("02:42:de:ad:be:ef");
    assert_eq!(
        ok(&r.net, "/NetworkDriver.CreateEndpoint", ce).await,
        json!({})
    );
    let e = r
        .svc
        .engine()
        .get_endpoint(NID, &AttachmentKey::new(EID, "eth").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(e.mac.as_deref(), Some("02:42:de:ad:be:ef"));
    // The same address for another endpoint, or the gateway's: refused, whatever Docker's IPAM
    // said.
    let e = fails(
        &r.net,
        "/NetworkDriver.CreateEndpoint",
        create_endpoint(NID, EID2, "10.1.0.20/24"),
        StatusCode::CONFLICT,
    )
    .await;
    assert!(e.contains("10.1.0.20"), "{e}");
    let e = fails(
        &r.net,
        "/NetworkDriver.CreateEndpoint",
        create_endpoint(NID, EID2, "10.1.0.1/24"),
        StatusCode::CONFLICT,
    )
    .await;
    assert!(e.contains("gateway"), "{e}");
    let mut bad_mac = create_endpoint(NID, EID2, "10.1.0.21/24");
    bad_mac["Interface"]["MacAddress"] = json!("01:00:5e:00:00:01");
    fails(
        &r.net,
        "/NetworkDriver.CreateEndpoint",
        bad_mac,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // A network with endpoints cannot lose its pools under it; DeleteNetwork removes leftovers
    // Docker no longer knows (it sends DeleteNetwork only once its endpoints are gone).
    ok(
        &r.net,
        "/NetworkDriver.DeleteNetwork",
        json!({"NetworkID": NID}),
    )
    .await;
    assert_empty(&r);
}

#[tokio::test]
async fn internal_and_dual_stack_networks() {
    let r = Rig::new();
    let body = json!({
        "NetworkID": NID,
        "Options": {"com.docker.network.enable_ipv6": true, "com.docker.network.internal": true, "com.docker.network.generic": {}},
        "IPv4Data": [{"AddressSpace": "x", "Pool": "10.5.0.0/24", "Gateway": "10.5.0.1/24"}],
        "IPv6Data": [{"AddressSpace": "x", "Pool": "fd00:5::/64", "Gateway": "fd00:5::1/64"}]
    });
    ok(&r.net, "/NetworkDriver.CreateNetwork", body).await;
    let mut ce = create_endpoint(NID, EID, "10.5.0.2/24");
    let e = fails(
        &r.net,
        "/NetworkDriver.CreateEndpoint",
        ce.clone(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(e.contains("no IPv6 address"), "{e}");
    ce["Interface"]["AddressIPv6"] = json!("fd00:5::2/64");
    ok(&r.net, "/NetworkDriver.CreateEndpoint", ce).await;
    let join = ok(
        &r.net,
        "/NetworkDriver.Join",
        json!({"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/var/run/docker/netns/x"}),
    )
    .await;
    // Internal: no way out, so no gateway, and no docker_gwbridge either.
    assert_eq!(
        join,
        json!({"InterfaceName": {"SrcName": join["InterfaceName"]["SrcName"], "DstPrefix": "eth"}, "DisableGatewayService": true})
    );
    // -p on an internal network publishes nothing (as with Docker's bridge).
    ok(
        &r.net,
        "/NetworkDriver.ProgramExternalConnectivity",
        portmap(
            NID,
            EID,
            json!([{"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 8080}]),
        ),
    )
    .await;
    assert!(r.fw.ports_of(EID).is_empty());

    let body = json!({
        "NetworkID": NID2,
        "Options": {"com.docker.network.enable_ipv6": true, "com.docker.network.generic": {}},
        "IPv4Data": [{"Pool": "10.6.0.0/24", "Gateway": "10.6.0.1/24"}],
        "IPv6Data": [{"Pool": "fd00:6::/64", "Gateway": "fd00:6::1/64"}]
    });
    ok(&r.net, "/NetworkDriver.CreateNetwork", body).await;
    let mut ce = create_endpoint(NID2, EID2, "10.6.0.2/24");
    ce["Interface"]["AddressIPv6"] = json!("fd00:6::2/64");
    ok(&r.net, "/NetworkDriver.CreateEndpoint", ce).await;
    let join = ok(
        &r.net,
        "/NetworkDriver.Join",
        json!({"NetworkID": NID2, "EndpointID": EID2, "SandboxKey": "/var/run/docker/netns/y"}),
    )
    .await;
    assert_eq!(
        (join["Gateway"].as_str(), join["GatewayIPv6"].as_str()),
        (Some("10.6.0.1"), Some("fd00:6::1"))
    );
}

#[tokio::test]
async fn published_ports_ranges_choices_and_conflicts() {
    let r = Rig::new();
    ok(
        &r.net,
        "/NetworkDriver.CreateNetwork",
        create_network(
            NID,
            "10.7.0.0/24",
            "10.7.0.1/24",
            json!({"com.docker.network.bridge.host_binding_ipv4": "127.0.0.1"}),
        ),
    )
    .await;
    let eids = [
        EID,
        EID2,
        "0c12d8208625aa1b7f08a87eb0c0282128f9b09b57a311c6f76f3c6e666d74a4",
    ];
    for (i, e) in eids.iter().enumerate() {
        ok(
            &r.net,
            "/NetworkDriver.CreateEndpoint",
            create_endpoint(NID, e, &format!("10.7.0.{}/24", i + 2)),
        )
        .await;
    }
    // -p 20000-20999:20000-20999 arrives as 1000 bindings and is published as one range.
    let many: Vec<Value> = (0..1000).map(|i| json!({"Proto": 6, "Port": 20000 + i, "HostPort": 20000 + i, "HostPortEnd": 20000 + i})).collect();
    ok(
        &r.net,
        "/NetworkDriver.ProgramExternalConnectivity",
        portmap(NID, EID, Value::Array(many)),
    )
    .await;
    let lo = Some("127.0.0.1".parse().unwrap());
    assert_eq!(
        r.fw.ports_of(EID),
        vec![PortMapping::new(engine_core::Proto::Tcp, lo, (20000, 20999), 20000).unwrap()]
    );
    // -p 8000-8001:80 twice: each container gets one free port of the range; a third finds none.
    let choose =
        json!([{"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 8000, "HostPortEnd": 8001}]);
    ok(
        &r.net,
        "/NetworkDriver.ProgramExternalConnectivity",
        portmap(NID, EID2, choose.clone()),
    )
    .await;
    assert_eq!(r.fw.ports_of(EID2)[0].host_port, 8000);
    ok(
        &r.net,
        "/NetworkDriver.ProgramExternalConnectivity",
        portmap(NID, eids[2], choose.clone()),
    )
    .await;
    assert_eq!(r.fw.ports_of(eids[2])[0].host_port, 8001);
    ok(
        &r.net,
        "/NetworkDriver.RevokeExternalConnectivity",
        ep(NID, eids[2]),
    )
    .await;
    let e = fails(
        &r.net,
        "/NetworkDriver.ProgramExternalConnectivity",
        portmap(
            NID,
            eids[2],
            json!([{"Proto": 6, "Port": 80, "HostPort": 20500, "HostPortEnd": 20500}]),
        ),
        StatusCode::CONFLICT,
    )
    .await;
    assert!(e.contains("already published"), "{e}");
    assert!(
        r.fw.ports_of(eids[2]).is_empty(),
        "a refused publication leaves nothing"
    );
    // udp and sctp, explicit host IPs.
    ok(
        &r.net,
        "/NetworkDriver.ProgramExternalConnectivity",
        portmap(
            NID,
            eids[2],
            json!([{"Proto": 17, "Port": 53, "HostIP": "0.0.0.0", "HostPort": 5353, "HostPortEnd": 5353},
                   {"Proto": 132, "Port": 9, "HostIP": "127.0.0.2", "HostPort": 9999, "HostPortEnd": 9999}]),
        ),
    )
    .await;
    assert_eq!(r.fw.ports_of(eids[2]).len(), 2);
    let e = fails(
        &r.net,
        "/NetworkDriver.ProgramExternalConnectivity",
        portmap(
            NID,
            eids[2],
            json!([{"Proto": 1, "Port": 9, "HostPort": 9, "HostPortEnd": 9}]),
        ),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(e.contains("not tcp, udp or sctp"), "{e}");
    assert_eq!(
        r.fw.ports_of(eids[2]).len(),
        2,
        "a bad request changes nothing"
    );
    fails(
        &r.net,
        "/NetworkDriver.ProgramExternalConnectivity",
        portmap(NID, eids[2], json!("x")),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // DeleteEndpoint removes what is published.
    for e in eids {
        ok(&r.net, "/NetworkDriver.DeleteEndpoint", ep(NID, e)).await;
    }
    assert!(r.fw.ports.lock().unwrap().is_empty());
}

#[tokio::test]
async fn state_requests_wait_for_reconciliation_but_activate_does_not() {
    let r = Rig::new();
    let dir = r.dir.clone();
    let r2 = Rig::open(dir, false);
    // Activate and capabilities are constant: answered at once.
    ok(&r2.net, "/Plugin.Activate", Value::Null).await;
    ok(&r2.ipam, "/IpamDriver.GetDefaultAddressSpaces", Value::Null).await;
    let (s, h, _) = send(&r2.admin, "GET", "/health", "").await;
    assert_eq!(
        (s, h["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("starting"))
    );
    let net = r2.net.clone();
    let pending = tokio::spawn(async move {
        post(
            &net,
            "/NetworkDriver.CreateNetwork",
            create_network(NID, "10.8.0.0/24", "10.8.0.1/24", json!({})),
        )
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        !pending.is_finished(),
        "CreateNetwork must wait for reconciliation"
    );
    r2.ready.send(Readiness::Ready(Box::default())).unwrap();
    let (s, _) = pending.await.unwrap();
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn restart_rolls_back_half_done_operations_and_restores_ports() {
    let r = Rig::new();
    ok(
        &r.net,
        "/NetworkDriver.CreateNetwork",
        create_network(NID, "10.9.0.0/24", "10.9.0.1/24", json!({})),
    )
    .await;
    ok(
        &r.net,
        "/NetworkDriver.CreateEndpoint",
        create_endpoint(NID, EID, "10.9.0.2/24"),
    )
    .await;
    ok(
        &r.net,
        "/NetworkDriver.ProgramExternalConnectivity",
        portmap(
            NID,
            EID,
            json!([{"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 8080}]),
        ),
    )
    .await;
    ok(
        &r.net,
        "/NetworkDriver.CreateEndpoint",
        create_endpoint(NID, EID2, "10.9.0.3/24"),
    )
    .await;
    let store = r.svc.store().clone();
    // Simulate what a crash leaves:
    // - CreateEndpoint died after the engine attached, before the record (EID2);
    records::delete_endpoint(store.as_ref(), NID, EID2).unwrap();
    // - DeleteEndpoint died after the engine detached, before the record went (a third one);
    let ghost = "e47591ae9299278fe39aa22f91216c968117e97b30a7eff9793d5b4a2029e4c6";
    let mut rec = records::get_endpoint(store.as_ref(), NID, EID)
        .unwrap()
        .unwrap();
    rec.endpoint_id = ghost.into();
    records::put_endpoint(store.as_ref(), &rec).unwrap();
    // - CreateNetwork died after its record and shadow pool, before the engine network;
    let half = records::NetworkRecord {
        id: NID2.into(),
        driver: "bridge".into(),
        plugin: "netloom-bridge".into(),
        pools: vec![records::shadow_pool_id(NID2, false)],
        host_binding: None,
        iface_prefix: None,
    };
    records::put_network(store.as_ref(), &half).unwrap();
    let mut pr = engine_core::ipam::PoolRequest {
        id: Some(half.pools[0].clone()),
        ranges: vec![engine_core::ipam::RangeSpec {
            subnet: "10.10.0.0/24".parse().unwrap(),
            start: None,
            end: None,
            gateway: None,
        }],
        ..Default::default()
    };
    pr.options
        .insert(engine_core::ipam::OPT_ALLOW_OVERLAP.into(), "true".into());
    r.svc.ipam().request_pool(&pr).unwrap();
    // - a shadow pool whose network record is already gone.
    pr.id = Some(records::shadow_pool_id(
        "f8dbc22b7281a62406448550cbcb93d27ac7fa8df924cfbc32b25d0de0795318",
        false,
    ));
    pr.ranges[0].subnet = "10.11.0.0/24".parse().unwrap();
    r.svc.ipam().request_pool(&pr).unwrap();

    // Restart: a new daemon over the same store (the firewall starts empty, as after a flush).
    let r2 = Rig::open(r.dir.clone(), true);
    let report = reconcile::run(&r2.svc).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(report.networks_rolled_back, vec![NID2.to_string()]);
    // The half-created network's pool went with it; the orphan pool on its own.
    assert_eq!(report.pools_released.len(), 1, "{report:?}");
    assert!(r2
        .svc
        .ipam()
        .get_pool(&records::shadow_pool_id(NID2, false))
        .unwrap()
        .is_none());
    assert_eq!(report.endpoints_rolled_back, vec![EID2.to_string()]);
    assert_eq!(report.endpoint_records_dropped, vec![ghost.to_string()]);
    assert_eq!(report.networks_repaired, 1);
    assert!(records::get_network(store.as_ref(), NID2)
        .unwrap()
        .is_none());
    let eps = r2.svc.engine().list_endpoints(NID).unwrap();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].key.container_id, EID);
    // The surviving endpoint's published port is back, and it still works as before.
    assert_eq!(r2.fw.ports_of(EID).len(), 1);
    let join = ok(
        &r2.net,
        "/NetworkDriver.Join",
        json!({"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/var/run/docker/netns/z"}),
    )
    .await;
    assert_eq!(join["Gateway"], "10.9.0.1");
    // The restarted daemon knows from the store which address the survivor holds.
    let e = fails(
        &r2.net,
        "/NetworkDriver.CreateEndpoint",
        create_endpoint(NID, ghost, "10.9.0.2/24"),
        StatusCode::CONFLICT,
    )
    .await;
    assert!(e.contains("10.9.0.2"), "{e}");
    // The rolled-back endpoint's address is free again.
    ok(
        &r2.net,
        "/NetworkDriver.CreateEndpoint",
        create_endpoint(NID, EID2, "10.9.0.3/24"),
    )
    .await;
    // Reconciling again changes nothing.
    let again = reconcile::run(&r2.svc).unwrap();
    assert!(
        again.networks_rolled_back.is_empty()
            && again.endpoints_rolled_back.is_empty()
            && again.pools_released.is_empty()
    );
    for e in [EID, EID2] {
        ok(&r2.net, "/NetworkDriver.DeleteEndpoint", ep(NID, e)).await;
    }
    // A deleted endpoint's address can be given to the next one.
    ok(
        &r2.net,
        "/NetworkDriver.CreateEndpoint",
        create_endpoint(NID, EID2, "10.9.0.2/24"),
    )
    .await;
    ok(&r2.net, "/NetworkDriver.DeleteEndpoint", ep(NID, EID2)).await;
    ok(
        &r2.net,
        "/NetworkDriver.DeleteNetwork",
        json!({"NetworkID": NID}),
    )
    .await;
    assert_empty(&r2);
}

#[tokio::test]
async fn one_socket_for_both_drivers_as_a_managed_plugin_has() {
    let r = Rig::new();
    let both = http::combined_router(r.app.clone(), "netloom", "bridge");
    assert_eq!(
        ok(&both, "/Plugin.Activate", Value::Null).await,
        json!({"Implements": ["NetworkDriver", "IpamDriver"]})
    );
    let pool = ok(
        &both,
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "netloom-local", "Pool": "10.12.0.0/24"}),
    )
    .await;
    ok(
        &both,
        "/NetworkDriver.CreateNetwork",
        create_network(NID, "10.12.0.0/24", "10.12.0.1/24", json!({})),
    )
    .await;
    ok(
        &both,
        "/NetworkDriver.DeleteNetwork",
        json!({"NetworkID": NID}),
    )
    .await;
    ok(
        &both,
        "/IpamDriver.ReleasePool",
        json!({"PoolID": pool["PoolID"]}),
    )
    .await;
    let (s, v) = post(&both, "/VolumeDriver.Mount", json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["Err"].is_string() && v["Error"].is_string());
    assert_empty(&r);
}
