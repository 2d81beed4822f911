//! The HTTP side: one axum Router per socket (each network driver, the IPAM driver, the admin
//! API). Handlers are thin: decode the body, wait until startup reconciliation is done, call the
//! [`Service`] on a blocking thread, encode the answer.
//!
//! Protocol rules (shared/protocols.md B.1): a body that does not decode gets 400 and
//! `{"Err": …}`; a path no handler serves gets 404, which libnetwork reads as "not implemented";
//! a failed operation gets a non-200 status and `{"Err": …}` (IPAM: also `{"Error": …}`, the
//! field libnetwork's IPAM client reads). Operational failures never use 404.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use engine_core::ErrorKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::docker_api::*;
use crate::metrics::{Gauges, Metrics};
use crate::reconcile::Report;
use crate::records;
use crate::service::Service;

/// How long a request waits for startup reconciliation before it is refused (Docker retries).
const READY_WAIT: Duration = Duration::from_secs(60);

/// Startup progress, published by the reconciliation task.
#[derive(Debug, Clone, Default)]
pub enum Readiness {
    #[default]
    Starting,
    Ready(Box<Report>),
    /// Reconciliation failed as a whole; requests are served anyway (the state may need a
    /// look), and /health says why.
    Degraded(String),
}

/// What every handler shares.
pub struct App {
    pub service: Arc<Service>,
    pub metrics: Metrics,
    ready: watch::Receiver<Readiness>,
    started: Instant,
}

impl App {
    /// The app and the sender that publishes readiness.
    pub fn new(service: Arc<Service>) -> (Arc<App>, watch::Sender<Readiness>) {
        let (tx, rx) = watch::channel(Readiness::Starting);
        (
            Arc::new(App {
                service,
                metrics: Metrics::default(),
                ready: rx,
                started: Instant::now(),
            }),
            tx,
        )
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let mut rx = self.ready.clone();
        let ready = matches!(
            tokio::time::timeout(
                READY_WAIT,
                rx.wait_for(|r| !matches!(r, Readiness::Starting))
            )
            .await,
            Ok(Ok(_))
        );
        if ready {
            Ok(())
        } else {
            Err("netloomd is still recovering its state after a restart; retry shortly".into())
        }
    }

    fn readiness(&self) -> Readiness {
        self.ready.borrow().clone()
    }
}

/// Runs blocking engine work off the runtime and waits for it without blocking the runtime.
/// Not `spawn_blocking`: engine-core's netlink client refuses to run on any thread that has a
/// tokio runtime context, and the blocking pool's threads have one; see [`crate::workers`].
pub async fn off_runtime<T, F>(f: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    crate::workers::run(f).await
}

/// Which error body an interface uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Iface {
    Network,
    Ipam,
}

/// The HTTP status for a failure of this kind. Never 404: libnetwork would read it as "method
/// not implemented" and, for optional calls, silently carry on.
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidConfig
        | ErrorKind::Unsupported
        | ErrorKind::Incompatible
        | ErrorKind::NotFound => StatusCode::BAD_REQUEST,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Exhausted => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn plugin_json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(b) => (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], b).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encode answer: {e}"),
        )
            .into_response(),
    }
}

fn plugin_error(iface: Iface, status: StatusCode, msg: String) -> Response {
    match iface {
        Iface::Network => plugin_json(status, &ErrResponse { err: msg }),
        Iface::Ipam => plugin_json(
            status,
            &IpamErrResponse {
                err: msg.clone(),
                error: msg,
            },
        ),
    }
}

/// Decodes, waits for readiness, runs `f` on a blocking thread, encodes.
async fn call<Req, Resp, F>(
    app: Arc<App>,
    iface: Iface,
    method: &'static str,
    body: Bytes,
    f: F,
) -> Response
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: FnOnce(&Service, Req) -> engine_core::Result<Resp> + Send + 'static,
{
    let req: Req = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(method, error = %e, "undecodable request");
            return plugin_error(
                iface,
                StatusCode::BAD_REQUEST,
                format!("{method}: malformed request body: {e}"),
            );
        }
    };
    if let Err(msg) = app.wait_ready().await {
        return plugin_error(iface, StatusCode::SERVICE_UNAVAILABLE, msg);
    }
    let svc = app.service.clone();
    match off_runtime(move || f(&svc, req)).await {
        Ok(Ok(resp)) => plugin_json(StatusCode::OK, &resp),
        Ok(Err(e)) => {
            tracing::warn!(method, kind = ?e.kind(), error = %e, "request failed");
            plugin_error(iface, status_for(e.kind()), e.to_string())
        }
        Err(e) => plugin_error(
            iface,
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{method}: internal error: {e}"),
        ),
    }
}

/// A POST route for a method with a JSON request.
fn op<Req, Resp, F>(app: &Arc<App>, iface: Iface, method: &'static str, f: F) -> MethodRouter
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(&Service, Req) -> engine_core::Result<Resp> + Clone + Send + Sync + 'static,
{
    let app = app.clone();
    post(move |body: Bytes| {
        let app = app.clone();
        let f = f.clone();
        async move { call(app, iface, method, body, move |s, r| f(s, r)).await }
    })
}

/// A POST route answering a constant (no state, no body needed: Activate and capabilities must
/// answer at once, even while reconciliation runs).
fn constant<T: Serialize + Clone + Send + Sync + 'static>(value: T) -> MethodRouter {
    post(move || {
        let value = value.clone();
        async move { plugin_json(StatusCode::OK, &value) }
    })
}

async fn track(
    State(app): State<Arc<App>>,
    path: MatchedPath,
    req: Request,
    next: Next,
) -> Response {
    let method = path.as_str().trim_start_matches('/').to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    app.metrics
        .observe(&method, resp.status().as_u16(), start.elapsed());
    resp
}

fn unknown_method(app: Arc<App>, iface: Iface) -> MethodRouter<()> {
    axum::routing::any(move |req: Request| {
        let app = app.clone();
        async move {
            app.metrics.observe("unknown", 404, Duration::ZERO);
            tracing::debug!(path = %req.uri().path(), "unknown method");
            plugin_error(
                iface,
                StatusCode::NOT_FOUND,
                format!("netloomd does not implement {}", req.uri().path()),
            )
        }
    })
}

/// The NetworkDriver socket of the Docker driver `plugin` (e.g. "netloom-bridge"), backed by the
/// engine driver `driver` (e.g. "bridge").
pub fn network_router(app: Arc<App>, plugin: &str, driver: &str) -> Router {
    let routes = network_routes(&app, plugin, driver);
    finish(routes, app, Iface::Network, &["NetworkDriver"])
}

/// The IpamDriver socket.
pub fn ipam_router(app: Arc<App>) -> Router {
    let routes = ipam_routes(&app);
    finish(routes, app, Iface::Ipam, &["IpamDriver"])
}

/// One socket serving both the network driver `plugin` and the IPAM driver: what a Docker
/// managed (v2) plugin needs, since it has exactly one socket and one name for both.
pub fn combined_router(app: Arc<App>, plugin: &str, driver: &str) -> Router {
    let routes = network_routes(&app, plugin, driver).merge(ipam_routes(&app));
    // Unknown paths answer with both error fields, readable by either client.
    finish(routes, app, Iface::Ipam, &["NetworkDriver", "IpamDriver"])
}

/// Activate, request metrics and the 404 for unknown methods around a set of routes.
fn finish(routes: Router, app: Arc<App>, fallback: Iface, implements: &[&str]) -> Router {
    routes
        .route(
            "/Plugin.Activate",
            constant(ActivateResponse {
                implements: implements.iter().map(|s| s.to_string()).collect(),
            }),
        )
        .route_layer(middleware::from_fn_with_state(app.clone(), track))
        .fallback(unknown_method(app, fallback))
}

fn network_routes(app: &Arc<App>, plugin: &str, driver: &str) -> Router {
    let (p, d) = (plugin.to_string(), driver.to_string());
    let i = Iface::Network;
    Router::new()
        .route(
            "/NetworkDriver.GetCapabilities",
            constant(NetworkCapabilities {
                scope: "local".into(),
                connectivity_scope: "local".into(),
            }),
        )
        .route(
            "/NetworkDriver.CreateNetwork",
            op(
                app,
                i,
                "CreateNetwork",
                move |s, r: CreateNetworkRequest| s.create_network(&p, &d, &r).map(|()| Empty {}),
            ),
        )
        .route(
            "/NetworkDriver.DeleteNetwork",
            op(app, i, "DeleteNetwork", |s, r: NetworkRequest| {
                s.delete_network(&r).map(|()| Empty {})
            }),
        )
        .route(
            "/NetworkDriver.CreateEndpoint",
            op(app, i, "CreateEndpoint", |s, r: CreateEndpointRequest| {
                s.create_endpoint(&r)
            }),
        )
        .route(
            "/NetworkDriver.DeleteEndpoint",
            op(app, i, "DeleteEndpoint", |s, r: EndpointRequest| {
                s.delete_endpoint(&r).map(|()| Empty {})
            }),
        )
        .route(
            "/NetworkDriver.EndpointOperInfo",
            op(app, i, "EndpointOperInfo", |s, r: EndpointRequest| {
                s.endpoint_oper_info(&r)
            }),
        )
        .route(
            "/NetworkDriver.Join",
            op(app, i, "Join", |s, r: JoinRequest| s.join(&r)),
        )
        .route(
            "/NetworkDriver.Leave",
            op(app, i, "Leave", |s, r: EndpointRequest| {
                s.leave(&r).map(|()| Empty {})
            }),
        )
        .route(
            "/NetworkDriver.ProgramExternalConnectivity",
            op(
                app,
                i,
                "ProgramExternalConnectivity",
                |s, r: ProgramExternalConnectivityRequest| {
                    s.program_external_connectivity(&r).map(|()| Empty {})
                },
            ),
        )
        .route(
            "/NetworkDriver.RevokeExternalConnectivity",
            op(
                app,
                i,
                "RevokeExternalConnectivity",
                |s, r: EndpointRequest| s.revoke_external_connectivity(&r).map(|()| Empty {}),
            ),
        )
        // Swarm node discovery: accepted, nothing to do for a local-scope driver.
        .route(
            "/NetworkDriver.DiscoverNew",
            op(app, i, "DiscoverNew", |_, _: DiscoveryRequest| Ok(Empty {})),
        )
        .route(
            "/NetworkDriver.DiscoverDelete",
            op(app, i, "DiscoverDelete", |_, _: DiscoveryRequest| {
                Ok(Empty {})
            }),
        )
}

fn ipam_routes(app: &Arc<App>) -> Router {
    let i = Iface::Ipam;
    let spaces = app.service.address_spaces();
    Router::new()
        .route(
            "/IpamDriver.GetCapabilities",
            constant(IpamCapabilities {
                requires_mac_address: false,
                requires_request_replay: false,
            }),
        )
        .route("/IpamDriver.GetDefaultAddressSpaces", constant(spaces))
        .route(
            "/IpamDriver.RequestPool",
            op(app, i, "RequestPool", |s, r: RequestPoolRequest| {
                s.request_pool(&r)
            }),
        )
        .route(
            "/IpamDriver.ReleasePool",
            op(app, i, "ReleasePool", |s, r: ReleasePoolRequest| {
                s.release_pool(&r).map(|()| Empty {})
            }),
        )
        .route(
            "/IpamDriver.RequestAddress",
            op(app, i, "RequestAddress", |s, r: RequestAddressRequest| {
                s.request_address(&r)
            }),
        )
        .route(
            "/IpamDriver.ReleaseAddress",
            op(app, i, "ReleaseAddress", |s, r: ReleaseAddressRequest| {
                s.release_address(&r).map(|()| Empty {})
            }),
        )
}

// ------------------------------------------------------------------ admin API

/// Runs a read-only query on a blocking thread and answers JSON.
async fn admin_query<F>(app: Arc<App>, f: F) -> Response
where
    F: FnOnce(&Service) -> engine_core::Result<Value> + Send + 'static,
{
    let svc = app.service.clone();
    match off_runtime(move || f(&svc)).await {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => (
            status_for(e.kind()),
            axum::Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

/// Docker networks with their engine view.
pub fn networks_json(svc: &Service) -> engine_core::Result<Value> {
    let store = svc.store().as_ref();
    let mut out = Vec::new();
    for rec in records::list_networks(store)? {
        let net = svc.engine().get_network(&rec.id)?;
        let endpoints = svc.engine().list_endpoints(&rec.id)?.len();
        out.push(json!({
            "id": rec.id,
            "plugin": rec.plugin,
            "driver": rec.driver,
            "bridge": net.as_ref().and_then(|n| n.options.get("bridge").cloned()),
            "subnets": net.as_ref().map(|n| n.subnets.clone()).unwrap_or_default(),
            "internal": net.as_ref().map(|n| n.internal),
            "ipv6": net.as_ref().map(|n| n.enable_ipv6),
            "mtu": net.as_ref().and_then(|n| n.mtu),
            "options": net.as_ref().map(|n| n.options.clone()),
            "host_binding": rec.host_binding,
            "iface_prefix": rec.iface_prefix,
            "endpoints": endpoints,
        }));
    }
    Ok(Value::Array(out))
}

/// Docker endpoints (of one network, or all) with their engine view.
pub fn endpoints_json(svc: &Service, network: Option<&str>) -> engine_core::Result<Value> {
    let mut out = Vec::new();
    for rec in records::list_endpoints(svc.store().as_ref(), network)? {
        let key =
            engine_core::AttachmentKey::new(&rec.endpoint_id, crate::service::ENDPOINT_IFNAME)?;
        let ep = svc.engine().get_endpoint(&rec.network_id, &key)?;
        out.push(json!({
            "network_id": rec.network_id,
            "endpoint_id": rec.endpoint_id,
            "addresses": ep.as_ref().map(|e| e.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
            "mac": rec.mac,
            "host_interface": ep.as_ref().and_then(|e| e.host_ifname.clone()),
            "src_name": rec.src_name,
            "sandbox": rec.sandbox_key,
            "ports": rec.ports,
        }));
    }
    Ok(Value::Array(out))
}

fn gauges(svc: &Service) -> engine_core::Result<Vec<(String, String, usize)>> {
    let mut out = Vec::new();
    for rec in records::list_networks(svc.store().as_ref())? {
        let n = svc.engine().list_endpoints(&rec.id)?.len();
        out.push((rec.id, rec.plugin, n));
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct EndpointsQuery {
    network: Option<String>,
}

/// The admin API: GET /health, /networks, /networks/{id}, /endpoints[?network=ID], /metrics.
pub fn admin_router(app: Arc<App>) -> Router {
    let a = app.clone();
    let health = get(move || {
        let app = a.clone();
        async move {
            let (status, code, detail) = match app.readiness() {
                Readiness::Starting => ("starting", StatusCode::SERVICE_UNAVAILABLE, Value::Null),
                Readiness::Ready(r) if r.problems.is_empty() => ("ok", StatusCode::OK, json!(r)),
                Readiness::Ready(r) => ("degraded", StatusCode::OK, json!(r)),
                Readiness::Degraded(why) => ("degraded", StatusCode::OK, json!({ "error": why })),
            };
            let svc = &app.service;
            let body = json!({
                "status": status,
                "reconcile": detail,
                "firewall": svc.firewall().map(|f| f.backend()),
                "store": svc.store().describe(),
                "drivers": svc.engine().drivers().names(),
                "uptime_seconds": app.started.elapsed().as_secs_f64(),
            });
            (code, axum::Json(body)).into_response()
        }
    });
    let a = app.clone();
    let networks = get(move || admin_query(a.clone(), networks_json));
    let a = app.clone();
    let network = get(move |Path(id): Path<String>| {
        let app = a.clone();
        async move {
            admin_query(app, move |svc| {
                let all = networks_json(svc)?;
                let found = all
                    .as_array()
                    .and_then(|v| v.iter().find(|n| n["id"] == id.as_str()).cloned());
                found.ok_or_else(|| engine_core::Error::NotFound(format!("no Docker network {id}")))
            })
            .await
        }
    });
    let a = app.clone();
    let endpoints = get(move |Query(q): Query<EndpointsQuery>| {
        let app = a.clone();
        async move { admin_query(app, move |svc| endpoints_json(svc, q.network.as_deref())).await }
    });
    let a = app.clone();
    let metrics = get(move || {
        let app = a.clone();
        async move {
            let svc = app.service.clone();
            let networks = off_runtime(move || gauges(&svc))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let g = Gauges {
                networks,
                ready: !matches!(app.readiness(), Readiness::Starting),
                uptime_seconds: app.started.elapsed().as_secs_f64(),
            };
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                app.metrics.render(&g),
            )
                .into_response()
        }
    });
    Router::new()
        .route("/health", health)
        .route("/networks", networks)
        .route("/networks/{id}", network)
        .route("/endpoints", endpoints)
        .route("/metrics", metrics)
}
