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
use estuary_common::metrics::must;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry as Prom};

use crate::config::ControlPlaneConfig;
use crate::registry::{Registry, Seen};
use crate::store::{AuditEntry, Store, StoreError};
use estuary_common::api::{
    Applied, FillRow, Placed, PlanReply, PlanRequest, PurgeRequest, PushReply, PushRequest,
    RemoveReply,
};

pub use crate::identity::Caller;

/// A client for the control plane's calls to nodes, trusting `[client] ca_file` besides the
/// system's roots.
pub fn outbound_client(
    config: &ControlPlaneConfig,
    timeout: Duration,
    max_body: usize,
) -> Result<estuary_common::http::HttpClient, estuary_common::http::HttpError> {
    estuary_common::http::HttpClient::new(estuary_common::http::ClientOptions {
        connect_timeout: timeout.min(Duration::from_secs(3)),
        timeout,
        max_body,
        ca_file: config.client.ca_file.clone(),
        ..Default::default()
    })
}

/// The most nodes one deprecated site token may register in its site.
pub const MAX_NODES_PER_SITE_TOKEN: usize = 256;

/// The control plane's metrics.
pub struct Metrics {
    pub registry: Prom,
    pub heartbeats: IntCounter,
    pub heartbeats_refused: IntCounter,
    pub checks_ok: IntCounter,
    pub checks_failed: IntCounter,
    pub version: IntGauge,
    nodes: IntGaugeVec,
    database_up: IntGauge,
    database_errors: IntCounter,
    pending_writes: IntGauge,
    held_up: IntGaugeVec,
    placements: IntGaugeVec,
    placement_bytes: IntGaugeVec,
    /// Meeting requests by outcome ([`MEETING_OUTCOMES`]).
    pub meeting_requests: IntCounterVec,
}

/// The `result` label values of `estuary_cp_meeting_requests_total`.
pub const MEETING_OUTCOMES: [&str; 8] = [
    "created",
    "kept",
    "moved",
    "unknown",
    "no_sfu",
    "full",
    "cascaded",
    "cascade_failed",
];

/// The states of a placement as `fill status` shows them (the edge's own report when it has
/// one), the label values of `estuary_cp_placements`.
const PLACEMENT_STATES: [&str; 7] = [
    "assigned", "filling", "present", "failed", "removing", "pending", "other",
];

impl Metrics {
    pub fn new() -> Self {
        let registry = estuary_common::metrics::registry(&[]);
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
        let database_up = must(IntGauge::new(
            "estuary_cp_database_up",
            "1 when the last database call was answered, 0 while the database is out of reach.",
        ));
        let database_errors = must(IntCounter::new(
            "estuary_cp_database_unavailable_total",
            "Database calls that found the database out of reach (refused, timed out, closed).",
        ));
        let pending_writes = must(IntGauge::new(
            "estuary_cp_pending_writes",
            "Heartbeat and site writes received but not yet written to the database.",
        ));
        let held_up = must(IntGaugeVec::new(
            Opts::new(
                "estuary_cp_panic_held_edges",
                "Edges kept in rotation by the panic threshold, by scope (a site, or * for the fleet). Anything above 0 is an alarm.",
            ),
            &["scope"],
        ));
        let placements = must(IntGaugeVec::new(
            Opts::new(
                "estuary_cp_placements",
                "Asset placements on edges (pre-positioning fills), by state: assigned (not reported yet), filling, present, failed, removing, and pushes still pending.",
            ),
            &["state"],
        ));
        let placement_bytes = must(IntGaugeVec::new(
            Opts::new(
                "estuary_cp_placement_bytes",
                "Size of the assets placed on edges, by placement state (pending pushes count 0).",
            ),
            &["state"],
        ));
        let meeting_requests = must(IntCounterVec::new(
            Opts::new(
                "estuary_cp_meeting_requests_total",
                "Meeting requests (POST and GET /v1/meetings, POST /v1/meetings/<room>/participants), one result each: created, kept (same SFU), moved (its SFU was gone), unknown (no such meeting or it ended), no_sfu, full, cascaded (a participant sent to a cascade SFU at its own site, which took the order to relay the room), cascade_failed (that SFU did not take the order: the participant was sent to the meeting's SFU).",
            ),
            &["result"],
        ));
        for r in MEETING_OUTCOMES {
            meeting_requests.with_label_values(&[r]);
        }
        for state in PLACEMENT_STATES {
            placements.with_label_values(&[state]);
            placement_bytes.with_label_values(&[state]);
        }
        held_up.with_label_values(&["*"]);
        let heartbeats = hb.with_label_values(&["ok"]);
        let heartbeats_refused = hb.with_label_values(&["refused"]);
        let checks_ok = checks.with_label_values(&["ok"]);
        let checks_failed = checks.with_label_values(&["failed"]);
        estuary_common::metrics::register_all(
            &registry,
            [
                Box::new(hb) as Box<dyn prometheus::core::Collector>,
                Box::new(checks),
                Box::new(version.clone()),
                Box::new(nodes.clone()),
                Box::new(database_up.clone()),
                Box::new(database_errors.clone()),
                Box::new(pending_writes.clone()),
                Box::new(held_up.clone()),
                Box::new(placements.clone()),
                Box::new(placement_bytes.clone()),
                Box::new(meeting_requests.clone()),
            ],
        );
        Self {
            registry,
            heartbeats,
            heartbeats_refused,
            checks_ok,
            checks_failed,
            version,
            nodes,
            database_up,
            database_errors,
            pending_writes,
            held_up,
            placements,
            placement_bytes,
            meeting_requests,
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
    /// The last hour of bandwidth and hit ratio per site (the dashboard's plots).
    pub history: std::sync::Mutex<crate::history::History>,
    /// When each refused identity was last written to the audit log: one entry a minute per
    /// (who, node, reason), so a hostile node cannot flood the log.
    pub refusals_audited: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Sites whose deprecated shared token has been used (warned about once each).
    pub site_tokens_used: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Writes received while the database was out of reach.
    pub pending: crate::writeback::Pending,
    /// Outbound calls: purges and origin probes (5 s, 16 MiB).
    pub http: estuary_common::http::HttpClient,
    /// The placements of each node as last read, for heartbeat replies while the database
    /// is out of reach.
    pub placements_seen:
        std::sync::Mutex<std::collections::HashMap<String, Vec<crate::store::Placement>>>,
    /// Turns true when the drain begins: long-polls of the state feed answer at once, so they
    /// do not hold the drain for their whole wait.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Meetings placed on SFUs (`POST /v1/meetings`) as this replica last read or decided
    /// them (the database holds them; see `crate::meetings_shared`).
    pub meetings: std::sync::Mutex<crate::meetings::Meetings>,
    /// When this control plane started (its monitor has judged every node some polls later).
    pub started: std::time::Instant,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("App")
    }
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
        crate::identity::identify(&self.config.auth, token)
            .ok_or_else(|| (StatusCode::FORBIDDEN, "forbidden\n").into_response())
    }

    fn operator(&self, headers: &HeaderMap) -> Result<String, Response> {
        match self.caller(headers)? {
            Caller::Operator(name) => Ok(name),
            _ => Err((StatusCode::FORBIDDEN, "operators only\n").into_response()),
        }
    }

    /// Warns, once per site, that a deprecated site token is in use.
    fn warn_site_token(&self, site: &str) {
        let first = self
            .site_tokens_used
            .lock()
            .is_ok_and(|mut used| used.insert(site.to_owned()));
        if first {
            tracing::warn!(
                site,
                "A node used the deprecated [auth.node_tokens] site token; give each node its own credential in [auth.nodes] (site tokens stop working in the next release)."
            );
        }
    }

    /// Refuses a node's heartbeat with `status`: counted, and written to the audit log (and
    /// a WARN line) at most once a minute for the same caller, node and `kind` of refusal.
    /// The kind, not the text, is the key: a text that carries a figure (an age, a count)
    /// would otherwise make every refusal new.
    async fn refuse_node(
        &self,
        caller: &Caller,
        node: &str,
        status: StatusCode,
        kind: &str,
        why: &str,
    ) -> Response {
        self.metrics.heartbeats_refused.inc();
        let caller = caller.audit_name();
        let now = estuary_common::unix_now();
        let key = format!("{caller}\0{node}\0{kind}");
        let fresh = self.refusals_audited.lock().is_ok_and(|mut seen| {
            if seen.len() >= 4096 {
                seen.retain(|_, at| now.saturating_sub(*at) < 60);
                if seen.len() >= 4096 {
                    seen.clear();
                }
            }
            match seen.get(&key) {
                Some(at) if now.saturating_sub(*at) < 60 => false,
                _ => {
                    seen.insert(key, now);
                    true
                }
            }
        });
        if fresh {
            tracing::warn!(
                caller,
                node,
                reason = why,
                "A node's heartbeat was refused."
            );
            self.audit(&caller, "heartbeat-refused", node, why.to_owned())
                .await;
        }
        (status, format!("refused: {why}\n")).into_response()
    }

    /// How long after its start this control plane has judged every node: `up_after` polls
    /// (each up to its timeout) and one more.
    fn settle_time(&self) -> Duration {
        let h = &self.config.health;
        (h.poll_interval + h.poll_timeout).saturating_mul(h.up_after.saturating_add(1))
    }

    fn internal(&self, e: impl std::fmt::Display) -> Response {
        tracing::error!(error = %e, "An internal error answered a request with 500.");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
    }

    /// A database call on a heartbeat's path: skipped (as out of reach) while the database is
    /// known to be, so that heartbeats do not each wait for its timeout; the replica task's
    /// flush finds out when it is back.
    async fn write<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if !self.store.health().is_up() {
            return Err(StoreError::OutOfReach);
        }
        call.await
    }

    /// A failed database call as an answer: 503 with the reason and `Retry-After` while the
    /// database is out of reach (the state feed still answers from memory), else 500.
    fn store_failed(&self, e: StoreError) -> Response {
        if !e.is_unavailable() {
            return self.internal(e);
        }
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the control plane's database is unavailable ({e}); reads answer from memory, writes are refused until it is back\n"
            ),
        )
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    }

    pub(crate) async fn audit(&self, who: &str, action: &str, target: &str, detail: String) {
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

    /// Refreshes the gauges from the registry and the store's health.
    pub fn update_gauges(&self) {
        let snap = self.registry.snapshot(estuary_common::unix_now());
        self.metrics.version.set(snap.version as i64);
        let db = self.store.health();
        self.metrics.database_up.set(i64::from(db.is_up()));
        let new_errors = db
            .errors()
            .saturating_sub(self.metrics.database_errors.get());
        self.metrics.database_errors.inc_by(new_errors);
        self.metrics.pending_writes.set(self.pending.len() as i64);
        self.metrics.held_up.reset();
        // The fleet-wide series is always there (0 when nothing is held), so an alert on it
        // has a series to watch; per-site series come and go with the sites that panic.
        self.metrics.held_up.with_label_values(&["*"]).set(0);
        for (scope, held) in self.registry.panicking() {
            self.metrics
                .held_up
                .with_label_values(&[scope.as_str()])
                .set(held.len() as i64);
        }
        self.metrics.nodes.reset();
        for n in snap.nodes.values() {
            self.metrics
                .nodes
                .with_label_values(&[n.role.as_str(), if n.up { "true" } else { "false" }])
                .inc();
        }
    }
}

impl App {
    /// Sets the placement gauges from the store and the edges' reports, as `fill status`
    /// shows them. A store that does not answer leaves the last values (its outage is in
    /// `estuary_cp_database_up`).
    async fn update_placement_gauges(&self) {
        let (Ok(placements), Ok(pending)) = (
            self.store.placements().await,
            self.store.pending_pushes().await,
        ) else {
            return;
        };
        let mut counts = [(0i64, 0i64); PLACEMENT_STATES.len()];
        let index = |state: &str| {
            PLACEMENT_STATES
                .iter()
                .position(|s| *s == state)
                .unwrap_or(PLACEMENT_STATES.len() - 1)
        };
        for p in &placements {
            let reported = self
                .registry
                .inventory(&p.node)
                .into_iter()
                .find(|i| i.asset == p.asset)
                .map(|i| i.state);
            let state = match (p.state.as_str(), reported) {
                ("removing", _) => "removing".to_owned(),
                (_, Some(s)) => s,
                (_, None) => "assigned".to_owned(),
            };
            let c = &mut counts[index(&state)];
            c.0 += 1;
            c.1 =
                c.1.saturating_add(i64::try_from(p.bytes).unwrap_or(i64::MAX));
        }
        counts[index("pending")].0 += pending.len() as i64;
        for (state, (n, bytes)) in PLACEMENT_STATES.iter().zip(counts) {
            self.metrics.placements.with_label_values(&[state]).set(n);
            self.metrics
                .placement_bytes
                .with_label_values(&[state])
                .set(bytes);
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
        .route("/v1/history", get(history))
        .route("/v1/purges", post(add_purge))
        .route("/v1/assets/{asset}/push", post(push))
        .route("/v1/assets/{asset}/remove", post(remove_asset))
        .route("/v1/fill", get(fill_status))
        .route("/v1/fill/plan", post(fill_plan))
        .route("/v1/purges/{id}", get(get_purge))
        .route("/v1/meetings", post(create_meeting))
        .route("/v1/meetings/{room}", get(get_meeting))
        .route("/v1/meetings/{room}/participants", post(add_participant))
        .route("/", get(dashboard))
        .merge(estuary_common::service::admin::router())
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
    if let Err(why) = hb.check() {
        return refuse(
            &app,
            (StatusCode::BAD_REQUEST, format!("not a heartbeat: {why}\n")).into_response(),
        );
    }
    // A credential speaks for its own node, site and role only.
    if let Err(why) = crate::identity::admit(&app.config.auth, &caller, &hb) {
        let why = why.to_string();
        return app
            .refuse_node(&caller, &hb.node, StatusCode::FORBIDDEN, &why, &why)
            .await;
    }
    if let Caller::SiteEdge(site) = &caller {
        app.warn_site_token(site);
        // A shared site token could otherwise register any number of made-up edges, each
        // a target the health monitor polls.
        let (known, n) = app.registry.census(&hb.node, site, |node| {
            !app.config.auth.nodes.contains_key(node)
        });
        if !known && n >= MAX_NODES_PER_SITE_TOKEN {
            let why = format!(
                "site token {site:?} already registered {n} nodes (at most {MAX_NODES_PER_SITE_TOKEN}); give each node its own credential"
            );
            return app
                .refuse_node(&caller, &hb.node, StatusCode::FORBIDDEN, "census", &why)
                .await;
        }
    }
    let now = estuary_common::unix_now();
    // Two live processes never share one node id.
    if let Some(age) = app.registry.held_by_other(
        &hb.node,
        &hb.instance,
        now,
        app.config.auth.takeover_after.as_secs(),
    ) {
        let why = format!(
            "node {:?} is held by another live process (its last heartbeat {age} s ago)",
            hb.node
        );
        return app
            .refuse_node(&caller, &hb.node, StatusCode::CONFLICT, "held", &why)
            .await;
    }
    if !app.registry.has_site(&hb.site) {
        let site = Site {
            name: hb.site.clone(),
            ..Site::default()
        };
        if let Err(e) = app.write(app.store.put_site(&site)).await {
            if !e.is_unavailable() {
                return app.store_failed(e);
            }
            app.pending.site(site.clone());
        }
        app.registry.upsert_site(site);
        tracing::info!(site = %hb.site, "A site was registered by its first node.");
    }
    let stored = hb.clone();
    // With a shared database every heartbeat is written through (before the registry sees it,
    // so that a replica's merge never takes the node for removed), and the other replicas
    // fold it in; with SQLite only changes are written. A heartbeat counts when it is
    // received: one that cannot be written is queued (and shields its node from the merge).
    let shared = app.store.is_shared();
    if shared && let Err(e) = app.write(app.store.put_node(&stored, now)).await {
        if !e.is_unavailable() {
            return app.store_failed(e);
        }
        app.pending.node(stored.clone(), now);
    }
    let (version, seen) = app.registry.heartbeat(hb, now);
    if seen != Seen::Same {
        if seen == Seen::New {
            tracing::info!(node = %stored.node, site = %stored.site, role = stored.role.as_str(), "A node registered.");
        } else {
            tracing::info!(node = %stored.node, "A node's addresses or capacity changed.");
        }
        if !shared && let Err(e) = app.write(app.store.put_node(&stored, now)).await {
            if !e.is_unavailable() {
                return app.store_failed(e);
            }
            app.pending.node(stored.clone(), now);
        }
    }
    app.metrics.heartbeats.inc();
    let (assignments, remove) = match assignments_for(&app, &stored).await {
        Ok(a) => a,
        Err(e) => return app.store_failed(e),
    };
    json(
        StatusCode::OK,
        &HeartbeatReply {
            state_version: version,
            assignments,
            remove,
        },
    )
}

/// The assets a node should hold (with sources: same-site peers holding them, then origins)
/// and drop. Removals the node has done are forgotten.
async fn assignments_for(
    app: &App,
    hb: &Heartbeat,
) -> Result<(Vec<estuary_common::cp::Assignment>, Vec<String>), crate::store::StoreError> {
    // While the database is out of reach the node is told what it was last told (and
    // nothing is dropped): fills go on, nothing new is placed.
    let (mine, fresh) = match app.write(app.store.placements_of(&hb.node)).await {
        Ok(mine) => {
            if let Ok(mut seen) = app.placements_seen.lock() {
                if mine.is_empty() {
                    seen.remove(&hb.node);
                } else {
                    seen.insert(hb.node.clone(), mine.clone());
                }
            }
            (mine, true)
        }
        Err(e) if e.is_unavailable() => {
            let seen = app
                .placements_seen
                .lock()
                .ok()
                .and_then(|s| s.get(&hb.node).cloned())
                .unwrap_or_default();
            (seen, false)
        }
        Err(e) => return Err(e),
    };
    if mine.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let snap = app.registry.snapshot(estuary_common::unix_now());
    let holds = |asset: &str| hb.inventory.iter().any(|i| i.asset == asset);
    let mut assignments = Vec::new();
    let mut remove = Vec::new();
    for p in mine {
        if p.state == "removing" {
            if holds(&p.asset) {
                remove.push(p.asset.clone());
            } else if fresh {
                app.store.drop_placement(&p.asset, &p.node).await?;
            }
            continue;
        }
        let peers = snap.nodes.values().filter(|n| {
            n.site == hb.site && n.id != hb.node && n.up && n.assets.contains(&p.asset)
        });
        let origins = snap
            .nodes
            .values()
            .filter(|n| n.role == estuary_common::cp::Role::Origin && n.up);
        let sources = peers
            .chain(origins)
            .filter_map(|n| n.addresses.http.clone())
            .collect();
        assignments.push(estuary_common::cp::Assignment {
            asset: p.asset.clone(),
            sources,
            merkle_root: p.merkle_root.clone(),
        });
    }
    Ok((assignments, remove))
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
    // The feed is for steering and operators; an edge or an origin has no use for it.
    match app.caller(&headers) {
        Ok(Caller::Operator(_))
        | Ok(Caller::Node {
            role: estuary_common::cp::Role::Steering,
            ..
        }) => {}
        Ok(_) => {
            return (
                StatusCode::FORBIDDEN,
                "the state feed is for steering and operators\n",
            )
                .into_response();
        }
        Err(r) => return r,
    }
    let known = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut rx = app.registry.subscribe();
    if let (Some(etag), Some(wait)) = (&known, q.wait) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.min(120));
        let mut stop = app.stop.clone();
        while *etag == etag_of(*rx.borrow_and_update()) && !*stop.borrow() {
            tokio::select! {
                changed = tokio::time::timeout_at(deadline, rx.changed()) => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = estuary_common::listener::stopped(&mut stop) => break,
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
        return app.store_failed(e);
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
        return app.store_failed(e);
    }
    app.audit(&who, "node.delete", &id, String::new()).await;
    StatusCode::NO_CONTENT.into_response()
}

/// A purge target: an absolute path of printable ASCII, without `..`, optionally ending in `*`.
fn valid_target(t: &str) -> bool {
    let path = t.strip_suffix('*').unwrap_or(t);
    t.len() <= 1024
        && path.starts_with('/')
        && !path.contains('*')
        && path.bytes().all(|b| b.is_ascii_graphic())
        && !path.split('/').any(|s| s == ".." || s == ".")
        && escapes_an_edge_accepts(path)
}

/// Whether every `%` escape in a path is one an edge's canonical path keeps: two hex digits,
/// and not an escaped `%`, `?`, `#`, `/` or `\` (which edges refuse with 400, so a purge of
/// such a path could never be applied).
fn escapes_an_edge_accepts(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let Some(hex) = path.get(i + 1..i + 3) else {
                return false;
            };
            match u8::from_str_radix(hex, 16) {
                Ok(b'%' | b'?' | b'#' | b'/' | b'\\') | Err(_) => return false,
                Ok(b) if b < 0x20 || b == 0x7f => return false,
                Ok(_) => {}
            }
            i += 3;
        } else {
            if bytes[i] == b'?' || bytes[i] == b'#' {
                return false;
            }
            i += 1;
        }
    }
    true
}

/// `POST /v1/purges` `{"target": "/v/abc/*"}`: purges on every edge; answers with the
/// per-edge results after the first round (up to 10 s); edges that are down get it when
/// they are back (`GET /v1/purges/<id>` follows it).
async fn add_purge(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let who = match app.operator(&headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    if app.config.purge.edge_token.is_none()
        && !app
            .config
            .auth
            .nodes
            .values()
            .any(|c| c.role == estuary_common::cp::Role::Edge)
    {
        return (
            StatusCode::CONFLICT,
            "purges need edges with their own credentials in [auth.nodes] (or the deprecated [purge] edge_token)\n",
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
        Err(e) => return app.store_failed(e),
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
            Err(e) => return app.store_failed(e),
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

/// Bytes placed on each node, leaving out the placements of `except` (an asset being placed
/// again).
pub(crate) fn used_bytes(
    placements: &[crate::store::Placement],
    except: Option<&str>,
) -> std::collections::HashMap<String, u64> {
    let mut used = std::collections::HashMap::new();
    for p in placements
        .iter()
        .filter(|p| Some(p.asset.as_str()) != except)
    {
        *used.entry(p.node.clone()).or_default() += p.bytes;
    }
    used
}

/// The total size of an asset, from its `asset.json` on an origin that is up.
pub(crate) async fn asset_size(
    app: &App,
    asset: &str,
) -> Result<(u64, String), crate::pushes::NotPlaced> {
    use crate::pushes::NotPlaced;
    let keys = estuary_common::signing::ManifestKeys::from_hex(&app.config.manifest_keys)
        .map_err(|(id, why)| NotPlaced::Refused(format!("manifest_keys.{id}: {why}")))?;
    if keys.is_empty() {
        return Err(NotPlaced::Refused(
            "the control plane has no [manifest_keys], so it trusts no asset.json".into(),
        ));
    }
    asset_size_from_origins(app, asset, &keys).await
}

async fn asset_size_from_origins(
    app: &App,
    asset: &str,
    keys: &estuary_common::signing::ManifestKeys,
) -> Result<(u64, String), crate::pushes::NotPlaced> {
    use crate::pushes::NotPlaced;
    let snap = app.registry.snapshot(estuary_common::unix_now());
    let origins: Vec<String> = snap
        .nodes
        .values()
        .filter(|n| n.role == estuary_common::cp::Role::Origin && n.up)
        .filter_map(|n| n.addresses.http.clone())
        .collect();
    if origins.is_empty() {
        return Err(NotPlaced::Later("no origin is registered and up".into()));
    }
    let client = &app.http;
    let mut last = String::new();
    // A manifest that does not verify (or names another asset) is refused, not waited for.
    let mut forged = None;
    for base in origins {
        let base = base.trim_end_matches('/');
        let manifest = format!("{base}/v/{asset}/{}", estuary_common::asset::MANIFEST_FILE);
        let signature = format!(
            "{base}/v/{asset}/{}",
            estuary_common::signing::SIGNATURE_FILE
        );
        let body = match get_small(client, &manifest, 16 << 20).await {
            Ok(b) => b,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let sig = match get_small(
            client,
            &signature,
            estuary_common::signing::MAX_SIGNATURE_FILE,
        )
        .await
        {
            Ok(sig) => sig,
            Err(e) => {
                // Not signed yet (the origin publishes the signature last).
                last = e;
                continue;
            }
        };
        if let Err(e) = keys.verify(&body, &sig) {
            // A manifest no trusted key signed is never believed, whoever served it.
            let e = format!("{manifest}: {e}");
            tracing::warn!(asset, origin = base, error = %e, "An origin served an asset.json that does not verify.");
            forged = Some(e);
            continue;
        }
        let m: estuary_common::asset::AssetManifest = match serde_json::from_slice(&body) {
            Ok(m) => m,
            Err(e) => {
                forged = Some(format!("{manifest}: {e}"));
                continue;
            }
        };
        if m.asset != asset {
            forged = Some(format!("{manifest}: names asset {:?}", m.asset));
            continue;
        }
        return Ok((
            m.files.iter().map(|f| f.size).sum::<u64>() + body.len() as u64,
            m.merkle_root,
        ));
    }
    match forged {
        Some(e) => Err(NotPlaced::Refused(format!(
            "no origin serves a manifest that verifies ({e})"
        ))),
        None => Err(NotPlaced::Later(format!(
            "the asset is not on any origin ({last})"
        ))),
    }
}

/// GETs `url` (within the client's 5 s); the body if the answer is 200 and at most `limit`
/// bytes.
async fn get_small(
    client: &estuary_common::http::HttpClient,
    url: &str,
    limit: usize,
) -> Result<Bytes, String> {
    let resp = client
        .get(url, &[])
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("{url}: {}", resp.status()));
    }
    let body = resp.into_body();
    if body.len() > limit {
        return Err(format!("{url}: larger than {limit} bytes"));
    }
    Ok(body)
}

/// `POST /v1/assets/<asset>/push` `{"sites": [...], "replicas": N}`: places the asset on
/// edges; each edge fills it on its next heartbeat.
async fn push(
    State(app): State<Arc<App>>,
    Path(asset): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let who = match app.operator(&headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    if !estuary_common::asset::valid_asset_id(&asset) {
        return (StatusCode::BAD_REQUEST, "asset: 1-64 of A-Z a-z 0-9 - _\n").into_response();
    }
    let req: PushRequest = if body.is_empty() {
        PushRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("not a push: {e}\n")).into_response();
            }
        }
    };
    let replicas = req.replicas.unwrap_or(1);
    if !(1..=64).contains(&replicas) {
        return (StatusCode::BAD_REQUEST, "replicas: 1 to 64\n").into_response();
    }
    match crate::pushes::place(&app, &asset, req.sites.as_deref(), replicas).await {
        Ok((bytes, chosen)) => {
            // A push placed now replaces one still pending.
            if let Err(e) = app.store.take_pending_push(&asset).await {
                return app.store_failed(e);
            }
            let detail = format!("{bytes} bytes to {}", crate::pushes::nodes_of(&chosen));
            app.audit(&who, "push", &asset, detail).await;
            json(
                StatusCode::ACCEPTED,
                &PushReply {
                    asset,
                    bytes,
                    placements: chosen
                        .into_iter()
                        .map(|(node, site)| Placed { node, site })
                        .collect(),
                    pending: None,
                },
            )
        }
        Err(crate::pushes::NotPlaced::Later(reason)) => {
            // The operator's intent is kept and placed when it can be.
            let pending = crate::store::PendingPush {
                asset: asset.clone(),
                sites: req.sites,
                replicas,
                who: who.clone(),
                since: estuary_common::unix_now(),
                reason: reason.clone(),
            };
            if let Err(e) = app.store.put_pending_push(&pending).await {
                return app.store_failed(e);
            }
            app.audit(&who, "push.pending", &asset, reason.clone())
                .await;
            json(
                StatusCode::ACCEPTED,
                &PushReply {
                    asset,
                    bytes: 0,
                    placements: Vec::new(),
                    pending: Some(reason),
                },
            )
        }
        Err(crate::pushes::NotPlaced::Refused(reason)) => {
            (StatusCode::CONFLICT, format!("{reason}\n")).into_response()
        }
        Err(crate::pushes::NotPlaced::Store(e)) => app.store_failed(e),
    }
}

/// `POST /v1/assets/<asset>/remove`: every edge holding it drops it on its next heartbeat.
async fn remove_asset(
    State(app): State<Arc<App>>,
    Path(asset): Path<String>,
    headers: HeaderMap,
) -> Response {
    let who = match app.operator(&headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let was_pending = match app.store.take_pending_push(&asset).await {
        Ok(p) => p,
        Err(e) => return app.store_failed(e),
    };
    match app.store.remove_placements(&asset).await {
        Ok(0) if was_pending => {
            app.audit(&who, "push.remove", &asset, "the pending push".into())
                .await;
            json(StatusCode::ACCEPTED, &RemoveReply { asset, removing: 0 })
        }
        Ok(0) => (StatusCode::NOT_FOUND, "the asset is placed nowhere\n").into_response(),
        Ok(n) => {
            app.audit(&who, "push.remove", &asset, format!("{n} placements"))
                .await;
            json(StatusCode::ACCEPTED, &RemoveReply { asset, removing: n })
        }
        Err(e) => app.store_failed(e),
    }
}

#[derive(Debug, serde::Deserialize)]
struct FillQuery {
    #[serde(default)]
    asset: Option<String>,
}

/// `GET /v1/fill[?asset=]`: every placement with what its node reports (assigned, filling,
/// present, failed with the reason, removing).
async fn fill_status(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<FillQuery>,
) -> Response {
    if let Err(r) = app.operator(&headers) {
        return r;
    }
    let placements = match app.store.placements().await {
        Ok(p) => p,
        Err(e) => return app.store_failed(e),
    };
    let rows: Vec<FillRow> = placements
        .into_iter()
        .filter(|p| q.asset.as_ref().is_none_or(|a| *a == p.asset))
        .map(|p| {
            let item = app
                .registry
                .inventory(&p.node)
                .into_iter()
                .find(|i| i.asset == p.asset);
            let state = match (&p.state[..], &item) {
                ("removing", _) => "removing".to_owned(),
                (_, Some(i)) => i.state.clone(),
                (_, None) => "assigned".to_owned(),
            };
            FillRow {
                asset: p.asset,
                node: p.node,
                site: p.site,
                bytes: p.bytes,
                state,
                filled_bytes: item.as_ref().map_or(0, |i| i.bytes),
                error: item.and_then(|i| i.error),
            }
        })
        .collect();
    let pending = match app.store.pending_pushes().await {
        Ok(p) => p,
        Err(e) => return app.store_failed(e),
    };
    let mut rows = rows;
    rows.extend(
        pending
            .into_iter()
            .filter(|p| q.asset.as_ref().is_none_or(|a| *a == p.asset))
            .map(|p| FillRow {
                asset: p.asset,
                node: String::new(),
                site: p.sites.map(|s| s.join(",")).unwrap_or_default(),
                bytes: 0,
                state: "pending".to_owned(),
                filled_bytes: 0,
                error: Some(p.reason),
            }),
    );
    json(StatusCode::OK, &rows)
}

/// `POST /v1/fill/plan` `{"demand": [{"asset","site","views"}], "apply": false}`: per site,
/// the assets that cover the most predicted views within the site's disk, with more copies
/// for the hits; with `apply`, they are pushed.
async fn fill_plan(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let who = match app.operator(&headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let req: PlanRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a plan request: {e}\n"),
            )
                .into_response();
        }
    };
    if req.demand.len() > 100_000 {
        return (StatusCode::PAYLOAD_TOO_LARGE, "at most 100000 lines\n").into_response();
    }
    let mut sizes = std::collections::BTreeMap::new();
    let mut roots = std::collections::BTreeMap::new();
    let mut assets: Vec<&str> = req.demand.iter().map(|d| d.asset.as_str()).collect();
    assets.sort_unstable();
    assets.dedup();
    for asset in assets {
        if estuary_common::asset::valid_asset_id(asset)
            && let Ok((bytes, root)) = asset_size(&app, asset).await
        {
            sizes.insert(asset.to_owned(), bytes);
            roots.insert(asset.to_owned(), root);
        }
    }
    let snap = app.registry.snapshot(estuary_common::unix_now());
    let mut capacity = std::collections::BTreeMap::new();
    let mut edges = std::collections::BTreeMap::new();
    for n in snap.nodes.values() {
        if n.role == estuary_common::cp::Role::Edge && n.up {
            *edges.entry(n.site.clone()).or_default() += 1;
            let c: &mut u64 = capacity.entry(n.site.clone()).or_default();
            // An edge that does not know its disk makes the site's capacity unknown.
            *c = if n.capacity.disk_bytes == 0 || *c == u64::MAX {
                u64::MAX
            } else {
                c.saturating_add(n.capacity.disk_bytes)
            };
        }
    }
    let plans = crate::plan::choose(&req.demand, &sizes, &capacity, &edges);
    let mut applied = Vec::new();
    if req.apply {
        let placements = match app.store.placements().await {
            Ok(p) => p,
            Err(e) => return app.store_failed(e),
        };
        let mut used = used_bytes(&placements, None);
        for (site, plan) in &plans {
            for pick in &plan.chosen {
                let sites = [site.clone()];
                match crate::placement::place(
                    &pick.asset,
                    pick.bytes,
                    &snap,
                    Some(&sites),
                    pick.replicas,
                    &used,
                ) {
                    Ok(chosen) => {
                        for (node, _) in &chosen {
                            *used.entry(node.clone()).or_default() += pick.bytes;
                        }
                        if let Err(e) = app
                            .store
                            .add_placements(
                                &pick.asset,
                                pick.bytes,
                                roots.get(&pick.asset).map_or("", String::as_str),
                                chosen.clone(),
                            )
                            .await
                        {
                            return app.store_failed(e);
                        }
                        applied.extend(chosen.into_iter().map(|(node, site)| Applied {
                            asset: pick.asset.clone(),
                            node: Some(node),
                            site,
                            error: None,
                        }));
                    }
                    Err(e) => applied.push(Applied {
                        asset: pick.asset.clone(),
                        node: None,
                        site: site.clone(),
                        error: Some(e.to_string()),
                    }),
                }
            }
        }
        app.audit(
            &who,
            "fill.plan.apply",
            "",
            format!("{} placements", applied.len()),
        )
        .await;
    }
    json(
        StatusCode::OK,
        &PlanReply {
            sites: plans,
            applied,
        },
    )
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
        Err(e) => app.store_failed(e),
    }
}

async fn audit_log(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = app.operator(&headers) {
        return r;
    }
    match app.store.audit_log(200).await {
        Ok(entries) => json(StatusCode::OK, &entries),
        Err(e) => app.store_failed(e),
    }
}

/// `GET /v1/history`: the last hour of bandwidth, requests and hit ratio per site, one point
/// per `[dashboard] history_step`, oldest first.
async fn history(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = app.operator(&headers) {
        return r;
    }
    let Ok(h) = app.history.lock() else {
        return app.internal("the history lock is poisoned");
    };
    let points: Vec<&crate::history::Point> = h.points().collect();
    json(
        StatusCode::OK,
        &serde_json::json!({ "step_seconds": h.step(), "points": points }),
    )
}

/// The operator dashboard: a static page that asks for an operator token and long-polls the
/// state feed (no data without a token).
async fn dashboard() -> Response {
    let mut r = include_str!("../assets/dashboard.html").into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

impl estuary_common::service::admin::AdminEndpoints for App {
    fn registry(&self) -> &Prom {
        &self.metrics.registry
    }

    fn serving(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Ready while serving: a database out of reach does not take a replica out of a load
    /// balancer, because the state feed and heartbeats work from memory (writes answer 503;
    /// the database's state is in `/healthz` and `estuary_cp_database_up`).
    async fn check_ready(&self) -> Result<String, String> {
        if !self.store.health().is_up() {
            return Ok(
                "ready (the database is unavailable: reads answer from memory, writes answer 503)\n"
                    .to_owned(),
            );
        }
        Ok("ready\n".to_owned())
    }

    async fn refresh_metrics(&self) {
        self.update_gauges();
        self.update_placement_gauges().await;
    }

    /// Alive, with what an operator needs at a glance: the database's state (since when it is
    /// out of reach, why, writes queued) and where the panic threshold holds edges in rotation.
    /// Anyone who can reach the port learns only that the process is alive and whether the
    /// database is up; the reason (a database error names hosts, users and paths) and the
    /// held edges' ids are for a caller with an operator token.
    fn health(&self, headers: &HeaderMap) -> estuary_common::service::admin::Answer {
        let db = self.store.health();
        let operator = matches!(self.caller(headers), Ok(Caller::Operator(_)));
        let body = if operator {
            let now = estuary_common::unix_now();
            let outage = db.outage();
            serde_json::json!({
                "status": "ok",
                "database": {
                    "up": db.is_up(),
                    "unavailable_for_seconds": outage.as_ref().map(|(since, _)| now.saturating_sub(*since)),
                    "reason": outage.map(|(_, why)| why),
                    "pending_writes": self.pending.len(),
                },
                "panic_held_edges": self.registry.panicking(),
            })
        } else {
            serde_json::json!({
                "status": "ok",
                "database": { "up": db.is_up() },
                "detail": "send an operator token (Authorization: Bearer) for the database's state and the edges held in rotation",
            })
        };
        estuary_common::service::admin::Answer::json(StatusCode::OK, &body)
    }
}

/// `POST /v1/meetings` (operators): places a new meeting on an SFU near its first participant
/// and answers its room, SFU URLs and a room token (201).
async fn create_meeting(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let config = match meetings_config(&app, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let near = match meeting_near(&body) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let now = estuary_common::unix_now();
    let snap = app.registry.snapshot(now);
    let home = match crate::meetings::home_site(&snap, &app.config.auth.site_networks, &near) {
        Ok(h) => h,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let room = format!("m-{:016x}", rand::random::<u64>());
    let view = FleetView::now(&app, config, snap, now);
    let fleet = view.fleet();
    let placed = match app.meetings.lock() {
        Ok(mut meetings) => {
            meetings.create(&fleet, room, near, home.as_deref(), config.max_meetings)
        }
        Err(_) => return app.internal("the meeting table's lock is poisoned"),
    };
    match placed {
        Ok(m) => {
            crate::meetings_shared::store_new(&app, &m).await;
            count_meeting_request(&app, "created");
            tracing::info!(room = %m.room, node = %m.node, "A meeting was placed on an SFU.");
            meeting_answer(&app, config, &view, &m, StatusCode::CREATED)
        }
        Err(e) => {
            let outcome = match e {
                crate::meetings::CreateError::Full(_) => "full",
                _ => "no_sfu",
            };
            count_meeting_request(&app, outcome);
            no_sfu(&e.to_string())
        }
    }
}

/// `GET /v1/meetings/<room>` (operators): the meeting's SFU (the same one while the meeting
/// lasts; another when its SFU is gone) and a fresh room token; 404 once it ended.
async fn get_meeting(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    let config = match meetings_config(&app, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !valid_name(&room) {
        return (StatusCode::BAD_REQUEST, "room: 1-64 of A-Z a-z 0-9 - _ .\n").into_response();
    }
    let now = estuary_common::unix_now();
    let view = FleetView::now(&app, config, app.registry.snapshot(now), now);
    let found = match crate::meetings_shared::decide(&app, &room, |meetings| {
        lookup_meeting(&app, meetings, &view, &room)
    })
    .await
    {
        Ok(found) => found,
        Err(e) => return app.internal(e),
    };
    match lasting(&app, found) {
        Ok((m, outcome)) => {
            count_meeting_request(&app, outcome);
            meeting_answer(&app, config, &view, &m, StatusCode::OK)
        }
        Err(r) => r,
    }
}

/// The meeting of `room` now (`Meetings::lookup`, a moved meeting placed again for its first
/// participant's home site).
fn lookup_meeting(
    app: &App,
    meetings: &mut crate::meetings::Meetings,
    view: &FleetView,
    room: &str,
) -> crate::meetings::Lookup {
    let networks = &app.config.auth.site_networks;
    meetings.lookup(&view.fleet(), room, |near| {
        crate::meetings::home_site(&view.snap, networks, near)
            .ok()
            .flatten()
    })
}

fn count_meeting_request(app: &App, outcome: &str) {
    app.metrics
        .meeting_requests
        .with_label_values(&[outcome])
        .inc();
}

/// A looked-up meeting that lasts, with the outcome to count (`kept` or `moved`, a move
/// logged); the answer for one that ended or has no SFU (404, 503), already counted.
fn lasting(
    app: &App,
    found: crate::meetings::Lookup,
) -> Result<(crate::meetings::Meeting, &'static str), Response> {
    match found {
        crate::meetings::Lookup::Kept(m) => Ok((m, "kept")),
        crate::meetings::Lookup::Moved { meeting, from } => {
            tracing::warn!(room = %meeting.room, from = %from, to = %meeting.node, "A meeting's SFU is gone; the meeting moved to another.");
            Ok((meeting, "moved"))
        }
        crate::meetings::Lookup::Unknown => {
            count_meeting_request(app, "unknown");
            Err((StatusCode::NOT_FOUND, "no such meeting (or it ended)\n").into_response())
        }
        crate::meetings::Lookup::NoSfu => {
            count_meeting_request(app, "no_sfu");
            Err(no_sfu("its SFU is gone and no other SFU is up"))
        }
    }
}

/// `POST /v1/meetings/<room>/participants` (operators): where a later participant of the
/// meeting joins. The meeting is looked up as `GET /v1/meetings/<room>` does; a participant
/// whose home site has usable SFUs but not the meeting's goes to a cascade SFU there
/// (`meetings::choose_cascade`), once that SFU has taken the order to relay the room from the
/// meeting's SFU; otherwise, or when the order fails, to the meeting's SFU.
async fn add_participant(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = match meetings_config(&app, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !valid_name(&room) {
        return (StatusCode::BAD_REQUEST, "room: 1-64 of A-Z a-z 0-9 - _ .\n").into_response();
    }
    let near = match meeting_near(&body) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let now = estuary_common::unix_now();
    let view = FleetView::now(&app, config, app.registry.snapshot(now), now);
    let snap = &view.snap;
    // A bad request is refused before the meeting table is touched (and a meeting moved).
    let home = match crate::meetings::home_site(snap, &app.config.auth.site_networks, &near) {
        Ok(h) => h,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let (found, cascade) = match crate::meetings_shared::decide(&app, &room, |meetings| {
        let found = lookup_meeting(&app, meetings, &view, &room);
        let cascade = match found {
            crate::meetings::Lookup::Kept(_) | crate::meetings::Lookup::Moved { .. } => {
                meetings.cascade(&view.fleet(), &room, home.as_deref())
            }
            _ => None,
        };
        (found, cascade)
    })
    .await
    {
        Ok(decided) => decided,
        Err(e) => return app.internal(e),
    };
    let count = |outcome: &str| count_meeting_request(&app, outcome);
    let (meeting, plain_outcome) = match lasting(&app, found) {
        Ok(found) => found,
        Err(r) => return r,
    };
    let Some(node) = cascade else {
        count(plain_outcome);
        return meeting_answer(&app, config, &view, &meeting, StatusCode::OK);
    };
    // The meetings lock is released: the order waits on another node.
    match order_cascade(&app, config, snap, &meeting, &node, now).await {
        Ok(upstream) => {
            count("cascaded");
            tracing::info!(room = %meeting.room, node = %node, upstream = %meeting.node, "A participant was sent to a cascade SFU at its own site.");
            sfu_answer(
                &app,
                config,
                &view,
                &meeting.room,
                &node,
                Some(upstream),
                StatusCode::OK,
            )
        }
        Err(why) => {
            count("cascade_failed");
            tracing::warn!(room = %meeting.room, node = %node, upstream = %meeting.node, reason = %why, "A cascade SFU did not take the order to relay a meeting's room; the participant joins the meeting's SFU instead.");
            meeting_answer(&app, config, &view, &meeting, StatusCode::OK)
        }
    }
}

/// How long a cascade SFU has to take an order: the participant's answer waits for it.
const CASCADE_ORDER_TIMEOUT: Duration = Duration::from_secs(3);

/// Orders SFU `node` to relay meeting `m`'s room from the meeting's SFU (`PUT
/// <node>/cascade/<room>`, with a token of acl `/cascade/<room>` signed with `[meetings]`'s
/// key); where it relays from, or why the order was not taken.
async fn order_cascade(
    app: &App,
    config: &crate::config::MeetingsConfig,
    snap: &estuary_common::cp::StateSnapshot,
    m: &crate::meetings::Meeting,
    node: &str,
    now: u64,
) -> Result<estuary_common::api::MeetingCascade, String> {
    let http_of = |id: &str| {
        snap.nodes
            .get(id)
            .and_then(|n| n.addresses.http.as_deref().map(|h| (n, h)))
    };
    let (Some((upstream, upstream_http)), Some((_, cascade_http))) =
        (http_of(&m.node), http_of(node))
    else {
        return Err("an SFU has no http address".into());
    };
    let secret = config.secret().map_err(|e| e.to_string())?;
    let token = estuary_common::token::sign(
        &estuary_common::token::Claims {
            kid: config.key_id.clone(),
            acl: format!("/cascade/{}", m.room),
            exp: now.saturating_add(config.token_ttl.as_secs()),
            st: None,
            ip: None,
        },
        &secret,
    );
    let order = estuary_common::api::CascadeOrder {
        upstream: upstream_http.trim_end_matches('/').to_owned(),
        upstream_node: upstream.id.clone(),
    };
    let body = serde_json::to_vec(&order).map_err(|e| e.to_string())?;
    let url = format!("{}/cascade/{}", cascade_http.trim_end_matches('/'), m.room);
    let auth = format!("Bearer {token}");
    let request = estuary_common::http::request(
        http::Method::PUT,
        &url,
        &[
            (header::AUTHORIZATION, auth.as_str()),
            (header::CONTENT_TYPE, "application/json"),
        ],
        Bytes::from(body),
    )
    .map_err(|e| e.to_string())?;
    // The shared client's own timeout is longer; a participant should not wait that long.
    let answer = tokio::time::timeout(CASCADE_ORDER_TIMEOUT, app.http.send(request))
        .await
        .map_err(|_| format!("no answer within {CASCADE_ORDER_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    if !answer.status().is_success() {
        return Err(format!("PUT {url} answered {}", answer.status()));
    }
    Ok(estuary_common::api::MeetingCascade {
        upstream_node: upstream.id.clone(),
        upstream_site: upstream.site.clone(),
    })
}

/// The (first) participant's whereabouts from a `MeetingRequest` body; 400 when it is not one
/// or gives not exactly one of `region` and `client`.
fn meeting_near(body: &[u8]) -> Result<crate::meetings::Near, Response> {
    let request: estuary_common::api::MeetingRequest =
        serde_json::from_slice(body).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("not a meeting request: {e}\n"),
            )
                .into_response()
        })?;
    match (request.region, request.client) {
        (Some(region), None) if valid_name(&region) => Ok(crate::meetings::Near::Region(region)),
        (None, Some(client)) => match client.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(crate::meetings::Near::Client(ip)),
            Err(_) => Err((StatusCode::BAD_REQUEST, "client: not an IP address\n").into_response()),
        },
        _ => Err((
            StatusCode::BAD_REQUEST,
            "give exactly one of region (a site name) and client (an IP address)\n",
        )
            .into_response()),
    }
}

/// `[meetings]`, for an operator: 401/403 for anyone else, 404 when it is not configured.
fn meetings_config<'a>(
    app: &'a App,
    headers: &HeaderMap,
) -> Result<&'a crate::config::MeetingsConfig, Response> {
    app.operator(headers)?;
    app.config.meetings.as_ref().ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            "meetings are not configured ([meetings])\n",
        )
            .into_response()
    })
}

/// What a meeting decision reads, taken once per request.
struct FleetView {
    snap: estuary_common::cp::StateSnapshot,
    rooms: std::collections::HashMap<String, Vec<String>>,
    policy: crate::meetings::Policy,
    now: u64,
    grace: u64,
    settled: bool,
}

impl FleetView {
    fn now(
        app: &App,
        config: &crate::config::MeetingsConfig,
        snap: estuary_common::cp::StateSnapshot,
        now: u64,
    ) -> Self {
        Self {
            snap,
            rooms: app.registry.rooms(),
            policy: crate::meetings::Policy {
                peers_per_sfu: config.peers_per_sfu,
                load_threshold: config.load_threshold,
            },
            now,
            grace: config.grace.as_secs(),
            settled: app.started.elapsed() >= app.settle_time(),
        }
    }

    fn fleet(&self) -> crate::meetings::Fleet<'_> {
        crate::meetings::Fleet {
            snap: &self.snap,
            rooms: &self.rooms,
            policy: &self.policy,
            now: self.now,
            grace: self.grace,
            settled: self.settled,
        }
    }
}

fn no_sfu(why: &str) -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("no SFU can take the meeting: {why}\n"),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

/// The answer for meeting `m`: its SFU's URLs and a room token signed with `[meetings] key`.
fn meeting_answer(
    app: &App,
    config: &crate::config::MeetingsConfig,
    view: &FleetView,
    m: &crate::meetings::Meeting,
    status: StatusCode,
) -> Response {
    sfu_answer(app, config, view, &m.room, &m.node, None, status)
}

/// The answer sending a participant of `room` to SFU `node` (the meeting's, or a cascade SFU
/// relaying from `cascade`'s): its URLs and a room token signed with `[meetings] key`.
fn sfu_answer(
    app: &App,
    config: &crate::config::MeetingsConfig,
    view: &FleetView,
    room: &str,
    node: &str,
    cascade: Option<estuary_common::api::MeetingCascade>,
    status: StatusCode,
) -> Response {
    let now = view.now;
    let Some((node, http)) = view
        .snap
        .nodes
        .get(node)
        .and_then(|n| n.addresses.http.as_ref().map(|h| (n, h)))
    else {
        return app.internal("a chosen SFU has no http address");
    };
    let secret = match config.secret() {
        Ok(s) => s,
        Err(e) => return app.internal(e),
    };
    let expires = now.saturating_add(config.token_ttl.as_secs());
    let token = estuary_common::token::sign(
        &estuary_common::token::Claims {
            kid: config.key_id.clone(),
            acl: format!("/rooms/{room}"),
            exp: expires,
            st: None,
            ip: None,
        },
        &secret,
    );
    let (whip, whep, ws) = crate::meetings::sfu_urls(http, room);
    json(
        status,
        &estuary_common::api::MeetingReply {
            room: room.to_owned(),
            sfu: estuary_common::api::MeetingSfu {
                node: node.id.clone(),
                site: node.site.clone(),
                whip,
                whep,
                ws,
            },
            token,
            expires,
            cascade,
        },
    )
}
