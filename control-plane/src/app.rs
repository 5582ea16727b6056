//! The control plane's HTTP API: sites and nodes for operators, heartbeats for nodes, and the
//! versioned state feed (`GET /v1/state`, with `ETag` and long-poll) for steering.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use estuary_common::cp::{Heartbeat, HeartbeatReply, Site};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry as Prom};

use crate::config::ControlPlaneConfig;
use crate::registry::{Registry, Seen};
use crate::store::{AuditEntry, Store};

/// Who presented a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator(String),
    /// A node of this site.
    Node(String),
}

/// The control plane's metrics.
pub struct Metrics {
    pub registry: Prom,
    pub heartbeats: IntCounter,
    pub heartbeats_refused: IntCounter,
    pub checks_ok: IntCounter,
    pub checks_failed: IntCounter,
    pub version: IntGauge,
    nodes: IntGaugeVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("metric registration: {e}"))
}

impl Metrics {
    pub fn new() -> Self {
        let registry = must(Prom::new_custom(None, None));
        let hb = must(IntCounterVec::new(
            Opts::new(
                "estuary_cp_heartbeats_total",
                "Heartbeats received, by result.",
            ),
            &["result"],
        ));
        let checks = must(IntCounterVec::new(
            Opts::new(
                "estuary_cp_health_checks_total",
                "Health checks of nodes (readyz polls and heartbeat age), by result.",
            ),
            &["result"],
        ));
        let version = must(IntGauge::new(
            "estuary_cp_state_version",
            "The version of the state snapshot.",
        ));
        let nodes = must(IntGaugeVec::new(
            Opts::new("estuary_cp_nodes", "Registered nodes, by role and verdict."),
            &["role", "up"],
        ));
        let heartbeats = hb.with_label_values(&["ok"]);
        let heartbeats_refused = hb.with_label_values(&["refused"]);
        let checks_ok = checks.with_label_values(&["ok"]);
        let checks_failed = checks.with_label_values(&["failed"]);
        for c in [
            Box::new(hb) as Box<dyn prometheus::core::Collector>,
            Box::new(checks),
            Box::new(version.clone()),
            Box::new(nodes.clone()),
        ] {
            must(registry.register(c));
        }
        Self {
            registry,
            heartbeats,
            heartbeats_refused,
            checks_ok,
            checks_failed,
            version,
            nodes,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Shared state of the handlers and the monitor.
pub struct App {
    pub config: ControlPlaneConfig,
    pub registry: Registry,
    pub store: Store,
    pub metrics: Metrics,
    pub ready: AtomicBool,
    /// Wakes the purge deliverer.
    pub purge_wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("App")
    }
}

fn ct_eq(a: &str, b: &str) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()))
}

impl App {
    /// Identifies the bearer token: 401 without one, 403 for an unknown one.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, Response> {
        let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return Err((StatusCode::UNAUTHORIZED, "bearer token required\n").into_response());
        };
        let mut found = None;
        for (name, t) in &self.config.auth.operator_tokens {
            if ct_eq(t, token) {
                found = Some(Caller::Operator(name.clone()));
            }
        }
        for (site, t) in &self.config.auth.node_tokens {
            if ct_eq(t, token) && found.is_none() {
                found = Some(Caller::Node(site.clone()));
            }
        }
        found.ok_or_else(|| (StatusCode::FORBIDDEN, "forbidden\n").into_response())
    }

    fn operator(&self, headers: &HeaderMap) -> Result<String, Response> {
        match self.caller(headers)? {
            Caller::Operator(name) => Ok(name),
            Caller::Node(_) => Err((StatusCode::FORBIDDEN, "operators only\n").into_response()),
        }
    }

    fn internal(&self, e: impl std::fmt::Display) -> Response {
        tracing::error!(error = %e, "An internal error answered a request with 500.");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
    }

    async fn audit(&self, who: &str, action: &str, target: &str, detail: String) {
        tracing::info!(who, action, target, detail = %detail, "Operator action.");
        let entry = AuditEntry {
            at: estuary_common::unix_now(),
            who: who.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
        };
        if let Err(e) = self.store.audit(entry).await {
            tracing::error!(error = %e, "An operator action could not be written to the audit log.");
        }
    }

    /// Refreshes the gauges from the registry.
    pub fn update_gauges(&self) {
        let snap = self.registry.snapshot(estuary_common::unix_now());
        self.metrics.version.set(snap.version as i64);
        self.metrics.nodes.reset();
        for n in snap.nodes.values() {
            self.metrics
                .nodes
                .with_label_values(&[n.role.as_str(), if n.up { "true" } else { "false" }])
                .inc();
        }
    }
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/state", get(state))
        .route("/v1/sites", get(sites))
        .route("/v1/sites/{name}", put(put_site))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{id}", axum::routing::delete(delete_node))
        .route("/v1/audit", get(audit_log))
        .route("/v1/purges", post(add_purge))
        .route("/v1/purges/{id}", get(get_purge))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(app)
}

fn valid_name(s: &str) -> bool {
    estuary_common::config::name_ok(s)
}

/// `POST /v1/heartbeat` with a node token of the heartbeat's site.
async fn heartbeat(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let refuse = |app: &App, r: Response| {
        app.metrics.heartbeats_refused.inc();
        r
    };
    let caller = match app.caller(&headers) {
        Ok(c) => c,
        Err(r) => return refuse(&app, r),
    };
    let hb: Heartbeat = match serde_json::from_slice(&body) {
        Ok(hb) => hb,
        Err(e) => {
            return refuse(
                &app,
                (StatusCode::BAD_REQUEST, format!("not a heartbeat: {e}\n")).into_response(),
            );
        }
    };
    if !valid_name(&hb.node) || !valid_name(&hb.site) {
        return refuse(
            &app,
            (
                StatusCode::BAD_REQUEST,
                "node and site: 1-64 of A-Z a-z 0-9 - _ .\n",
            )
                .into_response(),
        );
    }
    // A node token is good for its own site only.
    if let Caller::Node(site) = &caller
        && *site != hb.site
    {
        return refuse(
            &app,
            (StatusCode::FORBIDDEN, "this token is for another site\n").into_response(),
        );
    }
    let now = estuary_common::unix_now();
    if !app.registry.has_site(&hb.site) {
        let site = Site {
            name: hb.site.clone(),
            ..Site::default()
        };
        if let Err(e) = app.store.put_site(&site).await {
            return app.internal(e);
        }
        app.registry.upsert_site(site);
        tracing::info!(site = %hb.site, "A site was registered by its first node.");
    }
    let stored = hb.clone();
    let (version, seen) = app.registry.heartbeat(hb, now);
    if seen != Seen::Same {
        if seen == Seen::New {
            tracing::info!(node = %stored.node, site = %stored.site, role = stored.role.as_str(), "A node registered.");
        } else {
            tracing::info!(node = %stored.node, "A node's addresses or capacity changed.");
        }
        if let Err(e) = app.store.put_node(&stored, now).await {
            return app.internal(e);
        }
    }
    app.metrics.heartbeats.inc();
    json(
        StatusCode::OK,
        &HeartbeatReply {
            state_version: version,
            interval_seconds: 5,
        },
    )
}

#[derive(Debug, serde::Deserialize)]
struct StateQuery {
    /// Long-poll: wait up to this many seconds for a version newer than `If-None-Match`.
    #[serde(default)]
    wait: Option<u64>,
}

fn etag_of(version: u64) -> String {
    format!("\"v{version}\"")
}

/// `GET /v1/state`: the versioned snapshot. With `If-None-Match: "v<N>"` and `?wait=S`, the
/// answer waits until the version moves past N (200) or S seconds pass (304).
async fn state(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<StateQuery>,
) -> Response {
    if let Err(r) = app.caller(&headers) {
        return r;
    }
    let known = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut rx = app.registry.subscribe();
    if let (Some(etag), Some(wait)) = (&known, q.wait) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.min(120));
        while *etag == etag_of(*rx.borrow_and_update()) {
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                break;
            }
        }
    }
    let snap = app.registry.snapshot(estuary_common::unix_now());
    let etag = etag_of(snap.version);
    if known.as_deref() == Some(etag.as_str()) {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&etag) {
            r.headers_mut().insert(header::ETAG, v);
        }
        return r;
    }
    let mut r = json(StatusCode::OK, &snap);
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn sites(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = app.operator(&headers) {
        return r;
    }
    let snap = app.registry.snapshot(estuary_common::unix_now());
    json(StatusCode::OK, &snap.sites.values().collect::<Vec<_>>())
}

/// `PUT /v1/sites/<name>`: adds or changes a site (location, coverage networks).
async fn put_site(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let who = match app.operator(&headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    if !valid_name(&name) {
        return (StatusCode::BAD_REQUEST, "site: 1-64 of A-Z a-z 0-9 - _ .\n").into_response();
    }
    let mut site: Site = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not a site: {e}\n")).into_response(),
    };
    if site.name.is_empty() {
        site.name = name.clone();
    }
    if site.name != name {
        return (StatusCode::BAD_REQUEST, "the body names another site\n").into_response();
    }
    for net in &site.coverage {
        if net.parse::<ipnet::IpNet>().is_err() {
            return (
                StatusCode::BAD_REQUEST,
                format!("coverage: not a CIDR: {net}\n"),
            )
                .into_response();
        }
    }
    if let Some([lat, lon]) = site.location
        && !((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon))
    {
        return (StatusCode::BAD_REQUEST, "location: [latitude, longitude]\n").into_response();
    }
    if let Err(e) = app.store.put_site(&site).await {
        return app.internal(e);
    }
    app.registry.upsert_site(site.clone());
    app.audit(
        &who,
        "site.put",
        &name,
        serde_json::to_string(&site).unwrap_or_default(),
    )
    .await;
    json(StatusCode::OK, &site)
}

async fn nodes(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = app.operator(&headers) {
        return r;
    }
    let snap = app.registry.snapshot(estuary_common::unix_now());
    json(StatusCode::OK, &snap.nodes.values().collect::<Vec<_>>())
}

/// `DELETE /v1/nodes/<id>`: forgets a decommissioned node (it comes back if it beats again).
async fn delete_node(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let who = match app.operator(&headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    if !app.registry.remove_node(&id) {
        return (StatusCode::NOT_FOUND, "no such node\n").into_response();
    }
    if let Err(e) = app.store.remove_node(&id).await {
        return app.internal(e);
    }
    app.audit(&who, "node.delete", &id, String::new()).await;
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    /// A path (`/v/abc/seg_001.m4s`) or a prefix ending in `*` (`/v/abc/*`).
    target: String,
}

/// A purge target: an absolute path of printable ASCII, without `..`, optionally ending in `*`.
fn valid_target(t: &str) -> bool {
    let path = t.strip_suffix('*').unwrap_or(t);
    t.len() <= 1024
        && path.starts_with('/')
        && !path.contains('*')
        && path.bytes().all(|b| b.is_ascii_graphic())
        && !path.split('/').any(|s| s == ".." || s == ".")
}

/// `POST /v1/purges` `{"target": "/v/abc/*"}`: purges on every edge; answers with the
/// per-edge results after the first round (up to 10 s); edges that are down get it when
/// they are back (`GET /v1/purges/<id>` follows it).
async fn add_purge(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let who = match app.operator(&headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    if app.config.purge.edge_token.is_none() {
        return (
            StatusCode::CONFLICT,
            "purges need [purge] edge_token in the control plane's config\n",
        )
            .into_response();
    }
    let req: PurgeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not a purge: {e}\n")).into_response(),
    };
    if !valid_target(&req.target) {
        return (
            StatusCode::BAD_REQUEST,
            "target: an absolute path, or a prefix ending in *\n",
        )
            .into_response();
    }
    let snap = app.registry.snapshot(estuary_common::unix_now());
    let edges: Vec<String> = snap
        .nodes
        .values()
        .filter(|n| n.role == estuary_common::cp::Role::Edge)
        .map(|n| n.id.clone())
        .collect();
    let id = match app.store.add_purge(&who, &req.target, edges.clone()).await {
        Ok(id) => id,
        Err(e) => return app.internal(e),
    };
    app.audit(
        &who,
        "purge",
        &req.target,
        format!("id {id}, {} edges", edges.len()),
    )
    .await;
    app.purge_wake.notify_one();
    // Wait for the edges that are up to be done (or the first round to fail them).
    let up: Vec<&String> = edges
        .iter()
        .filter(|e| snap.nodes.get(*e).is_some_and(|n| n.up))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = match app.store.purge(id).await {
            Ok(Some(s)) => s,
            Ok(None) => return (StatusCode::NOT_FOUND, "no such purge\n").into_response(),
            Err(e) => return app.internal(e),
        };
        let settled = status
            .edges
            .iter()
            .filter(|d| up.contains(&&d.node))
            .all(|d| d.state == "done" || d.attempts > 0);
        if settled || tokio::time::Instant::now() > deadline {
            return json(StatusCode::ACCEPTED, &status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_purge(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = app.operator(&headers) {
        return r;
    }
    match app.store.purge(id).await {
        Ok(Some(s)) => json(StatusCode::OK, &s),
        Ok(None) => (StatusCode::NOT_FOUND, "no such purge\n").into_response(),
        Err(e) => app.internal(e),
    }
}

async fn audit_log(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = app.operator(&headers) {
        return r;
    }
    match app.store.audit_log(200).await {
        Ok(entries) => json(StatusCode::OK, &entries),
        Err(e) => app.internal(e),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.update_gauges();
    let mut r = estuary_common::metrics::encode(&app.metrics.registry).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if !app.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if !app.store.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response();
    }
    "ready\n".into_response()
}
