//! The steering service's HTTP API (axum): playback answers, redirects to the best edge,
//! steered manifests, the Content Steering server, the chat relays for a client, and
//! `/metrics`, `/healthz`, `/readyz`.
//!
//! A request goes through the same phases everywhere: *client* (who is asking:
//! [`crate::client::client_ip`]), *choose* (the pure [`crate::choose::choose`] over the
//! current view), *sign* (path-form tokens for `/v/<asset>/*`), *respond*.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use estuary_common::asset::valid_asset_id;
use estuary_common::cp::StateSnapshot;
use estuary_common::metrics::must;
use estuary_common::token;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};
use serde::Deserialize;

use crate::choose::{Choice, Policy, choose, choose_relays, prioritize};
use crate::client::client_ip;
use crate::config::{Scheme, SteeringConfig};
use crate::manifest::{Pathway, steer_dash, steer_hls};
use crate::state::{FeedObserver, StateHolder, View};

/// Every steering metric, pre-registered.
pub struct Metrics {
    pub registry: prometheus::Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    state_version: IntGauge,
    state_fetches: IntCounterVec,
    edges: prometheus::IntGaugeVec,
    manifest_fetches: IntCounterVec,
    throughput: Histogram,
    choices: IntCounterVec,
    asset_lookups: IntCounterVec,
}

/// The routes, as metric labels.
const ROUTES: [&str; 6] = [
    "playback",
    "redirect",
    "steered",
    "steering",
    "chat_relays",
    "other",
];

impl Metrics {
    pub fn new() -> Self {
        let registry = estuary_common::metrics::registry(&[]);
        let requests = must(IntCounterVec::new(
            Opts::new(
                "estuary_steering_requests_total",
                "Requests answered, by route and status class.",
            ),
            &["route", "status_class"],
        ));
        let duration = must(HistogramVec::new(
            HistogramOpts::new(
                "estuary_steering_request_duration_seconds",
                "Time to answer a request, by route.",
            )
            .buckets(estuary_common::metrics::DURATION_BUCKETS.to_vec()),
            &["route"],
        ));
        let state_version = must(IntGauge::new(
            "estuary_steering_state_version",
            "The version of the state snapshot in use.",
        ));
        let state_fetches = must(IntCounterVec::new(
            Opts::new(
                "estuary_steering_state_fetches_total",
                "Reads of the control plane's state feed, by result.",
            ),
            &["result"],
        ));
        let edges = must(prometheus::IntGaugeVec::new(
            Opts::new(
                "estuary_steering_edges",
                "Edges in the state snapshot, by whether the control plane has them up.",
            ),
            &["up"],
        ));
        let manifest_fetches = must(IntCounterVec::new(
            Opts::new(
                "estuary_steering_manifest_fetches_total",
                "Manifests fetched from edges to rewrite, by result.",
            ),
            &["result"],
        ));
        let throughput = must(Histogram::with_opts(
            HistogramOpts::new(
                "estuary_steering_client_throughput_bytes_per_second",
                "Throughput HLS players report in steering requests (_HLS_throughput, sent in bits per second), in bytes per second.",
            )
            // 250 kbit/s to 128 Mbit/s.
            .buckets(vec![
                31_250.0,
                62_500.0,
                125_000.0,
                250_000.0,
                500_000.0,
                1e6,
                2e6,
                4e6,
                8e6,
                1.6e7,
            ]),
        ));
        let choices = must(IntCounterVec::new(
            Opts::new(
                "estuary_steering_choices_total",
                "Choices made: the best edge in the client's home site, elsewhere because the home site had no edge to offer (overflow), for a client in no site's zone (unplaced), or no edge at all.",
            ),
            &["outcome"],
        ));
        let asset_lookups = must(IntCounterVec::new(
            Opts::new(
                "estuary_steering_asset_lookups_total",
                "Asset existence checks, by how they were answered: held by an edge, remembered, found or missing on the origins, or unsure (no origin could tell; let through).",
            ),
            &["result"],
        ));
        estuary_common::metrics::register_all(
            &registry,
            [
                Box::new(asset_lookups.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(requests.clone()),
                Box::new(duration.clone()),
                Box::new(state_version.clone()),
                Box::new(state_fetches.clone()),
                Box::new(edges.clone()),
                Box::new(manifest_fetches.clone()),
                Box::new(throughput.clone()),
                Box::new(choices.clone()),
            ],
        );
        for route in ROUTES {
            for class in ["2xx", "3xx", "4xx", "5xx"] {
                requests.with_label_values(&[route, class]);
            }
            duration.with_label_values(&[route]);
        }
        for r in ["ok", "error"] {
            state_fetches.with_label_values(&[r]);
        }
        for r in ["ok", "not_found", "error", "unusable"] {
            manifest_fetches.with_label_values(&[r]);
        }
        for r in ["held", "cached", "found", "missing", "unsure"] {
            asset_lookups.with_label_values(&[r]);
        }
        for o in ["home", "overflow", "unplaced", "none"] {
            choices.with_label_values(&[o]);
        }
        for u in ["true", "false"] {
            edges.with_label_values(&[u]);
        }
        Self {
            registry,
            requests,
            duration,
            state_version,
            state_fetches,
            edges,
            manifest_fetches,
            throughput,
            choices,
            asset_lookups,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl FeedObserver for Metrics {
    fn fetched(&self, ok: bool) {
        self.state_fetches
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    fn installed(&self, snapshot: &StateSnapshot) {
        self.state_version.set(snapshot.version as i64);
        let (mut up, mut down) = (0, 0);
        for n in snapshot.nodes.values() {
            if n.role == estuary_common::cp::Role::Edge {
                if n.up {
                    up += 1;
                } else {
                    down += 1;
                }
            }
        }
        self.edges.with_label_values(&["true"]).set(up);
        self.edges.with_label_values(&["false"]).set(down);
    }
}

/// Shared state of the handlers.
pub struct App {
    pub config: SteeringConfig,
    pub state: Arc<StateHolder>,
    pub metrics: Arc<Metrics>,
    pub draining: AtomicBool,
    secret: Vec<u8>,
    public_url: String,
    trusted: Vec<ipnet::IpNet>,
    fetcher: estuary_common::http::HttpClient,
    catalog: crate::catalog::Catalog,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("App")
    }
}

impl App {
    pub fn new(
        config: SteeringConfig,
        state: Arc<StateHolder>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let secret = token::decode_secret(&config.tokens.key)
            .map_err(|e| anyhow::anyhow!("tokens.key: {e}"))?;
        let fetcher = estuary_common::http::HttpClient::new(estuary_common::http::ClientOptions {
            connect_timeout: config.steering.fetch_timeout,
            timeout: config.steering.fetch_timeout,
            max_body: MAX_MANIFEST,
            ca_file: config.control_plane.ca_file.clone(),
            pool_idle: std::time::Duration::from_secs(30),
        })
        .map_err(|e| anyhow::anyhow!("control_plane.ca_file: {e}"))?;
        Ok(Self {
            public_url: config.public_url(),
            trusted: config.trusted_proxies(),
            config,
            state,
            metrics,
            draining: AtomicBool::new(false),
            secret,
            fetcher,
            catalog: crate::catalog::Catalog::default(),
        })
    }

    /// The choice's knobs from `[steering]`.
    pub fn policy(&self) -> Policy {
        Policy {
            load_threshold: self.config.steering.load_threshold,
            max_results: self.config.steering.pathways,
            hash_seed: self.config.steering.hash_seed,
        }
    }

    /// A path-form token for every file of `asset`, valid for `tokens.ttl`.
    fn sign(&self, asset: &str, now: u64) -> (String, u64) {
        let exp = now.saturating_add(self.config.tokens.ttl.as_secs());
        let claims = token::Claims {
            kid: self.config.tokens.kid.clone(),
            acl: format!("/v/{asset}/*"),
            exp,
            st: None,
            ip: None,
        };
        (token::path_prefix(&token::sign(&claims, &self.secret)), exp)
    }
}

/// Query parameters every route understands.
#[derive(Debug, Default, Deserialize)]
pub struct ClientQuery {
    /// Operators: steer as if the client had this address.
    client: Option<String>,
    /// HLS players: the pathway in use.
    #[serde(rename = "_HLS_pathway")]
    hls_pathway: Option<String>,
    #[serde(rename = "_HLS_throughput")]
    hls_throughput: Option<String>,
    /// DASH players: the service location in use.
    #[serde(rename = "_DASH_pathway")]
    dash_pathway: Option<String>,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/playback/{asset}", get(playback))
        .route("/v1/playback/{asset}/{file}", get(playback_file))
        .route("/v1/steering/{kind}/{asset}", get(steering))
        .route("/v1/chat/relays", get(chat_relays))
        .merge(estuary_common::service::admin::router())
        .fallback(|| async { finish(error(StatusCode::NOT_FOUND, "no such endpoint")) })
        .with_state(app)
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let body = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, &serde_json::json!({ "error": message }))
}

/// Headers every API answer carries: players fetch from other origins, and answers are per
/// client.
fn finish(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Counts and times a request.
fn record(app: &App, route: &str, started: Instant, r: Response) -> Response {
    let class = match r.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    app.metrics
        .requests
        .with_label_values(&[route, class])
        .inc();
    app.metrics
        .duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    finish(r)
}

/// The client phase: the address the choice is made for.
fn who(
    app: &App,
    peer: SocketAddr,
    headers: &HeaderMap,
    q: &ClientQuery,
) -> Result<IpAddr, Response> {
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let s = &app.config.steering;
    client_ip(
        peer.ip(),
        &forwarded,
        &app.trusted,
        q.client.as_deref(),
        s.allow_client_param,
    )
    .map_err(|e| error(StatusCode::BAD_REQUEST, &e.to_string()))
}

/// The current view, or the 503 answered before the first snapshot.
fn view(app: &App) -> Result<Arc<View>, Response> {
    app.state.view().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no state snapshot has been loaded yet",
        )
    })
}

/// The choose phase.
fn ranked(app: &App, asset: &str, client: IpAddr) -> Result<Vec<Choice>, Response> {
    let view = view(app)?;
    let topo = &view.topology;
    let place = topo.locate(client);
    let got = choose(topo, place, asset, &app.policy());
    let outcome = match (got.first(), place.home) {
        (None, _) => "none",
        (Some(c), Some(h)) if topo.sites.get(h).is_some_and(|s| s.name == c.site) => "home",
        (Some(_), Some(_)) => "overflow",
        (Some(_), None) => "unplaced",
    };
    app.metrics.choices.with_label_values(&[outcome]).inc();
    if got.is_empty() {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no edge is available",
        ));
    }
    Ok(got)
}

fn check_asset(asset: &str) -> Result<(), Response> {
    if valid_asset_id(asset) {
        Ok(())
    } else {
        Err(error(
            StatusCode::BAD_REQUEST,
            "invalid asset id: 1-64 of A-Z a-z 0-9 - _, starting with a letter or digit",
        ))
    }
}

/// What must be escaped in a query value (addresses pass through as they are).
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'[')
    .add(b']')
    .add(b'\'');

/// `?client=` carried into the URLs this service hands out, so an operator's test session
/// stays in the zone it asked for.
fn client_suffix(q: &ClientQuery) -> String {
    match &q.client {
        Some(c) => format!(
            "?client={}",
            percent_encoding::utf8_percent_encode(c, QUERY_VALUE)
        ),
        None => String::new(),
    }
}

fn edge_url(choice: &Choice, prefix: &str, asset: &str, file: &str) -> String {
    format!("{}{prefix}/v/{asset}/{file}", choice.base_url)
}

/// `GET /v1/playback/<asset>`: the ranked edges with signed manifest URLs, and the steered
/// manifests' URLs.
async fn playback(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(asset): Path<String>,
    Query(q): Query<ClientQuery>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let r = match prepare(&app, peer, &headers, &q, &asset).await {
        Err(r) => r,
        Ok((client, got)) => {
            let (prefix, exp) = app.sign(&asset, estuary_common::unix_now());
            let edges: Vec<serde_json::Value> = got
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "site": c.site,
                        "node": c.node,
                        "prepositioned": c.prepositioned,
                        "base_url": c.base_url,
                        "hls": edge_url(c, &prefix, &asset, "master.m3u8"),
                        "dash": edge_url(c, &prefix, &asset, "manifest.mpd"),
                    })
                })
                .collect();
            let suffix = client_suffix(&q);
            let base = &app.public_url;
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "asset": asset,
                    "client": client.to_string(),
                    "expires": exp,
                    "edges": edges,
                    "steering": {
                        "hls": format!("{base}/v1/playback/{asset}/steered.m3u8{suffix}"),
                        "dash": format!("{base}/v1/playback/{asset}/steered.mpd{suffix}"),
                        "hls_server": format!("{base}/v1/steering/hls/{asset}{suffix}"),
                        "dash_server": format!("{base}/v1/steering/dash/{asset}{suffix}"),
                    },
                }),
            )
        }
    };
    record(&app, "playback", started, r)
}

/// `GET /v1/playback/<asset>/<file>`: `master.m3u8` and `manifest.mpd` redirect to the best
/// edge (signed); `steered.m3u8` and `steered.mpd` are the asset's manifests rewritten for
/// Content Steering.
async fn playback_file(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((asset, file)): Path<(String, String)>,
    Query(q): Query<ClientQuery>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let route = match file.as_str() {
        "master.m3u8" | "manifest.mpd" => "redirect",
        "steered.m3u8" | "steered.mpd" => "steered",
        _ => "other",
    };
    let r = match prepare(&app, peer, &headers, &q, &asset).await {
        Err(r) => r,
        Ok((_, got)) => match file.as_str() {
            "master.m3u8" | "manifest.mpd" => {
                let (prefix, _) = app.sign(&asset, estuary_common::unix_now());
                let location = edge_url(&got[0], &prefix, &asset, &file);
                match HeaderValue::from_str(&location) {
                    Ok(v) => {
                        let mut r = StatusCode::FOUND.into_response();
                        r.headers_mut().insert(header::LOCATION, v);
                        r
                    }
                    Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "unusable edge address"),
                }
            }
            "steered.m3u8" => steered(&app, &asset, &got, &q, Kind::Hls).await,
            "steered.mpd" => steered(&app, &asset, &got, &q, Kind::Dash).await,
            _ => error(
                StatusCode::NOT_FOUND,
                "unknown file: master.m3u8, manifest.mpd, steered.m3u8 or steered.mpd",
            ),
        },
    };
    record(&app, route, started, r)
}

/// The phases before a playback answer: asset id, client, asset lookup, choice.
async fn prepare(
    app: &App,
    peer: SocketAddr,
    headers: &HeaderMap,
    q: &ClientQuery,
    asset: &str,
) -> Result<(IpAddr, Vec<Choice>), Response> {
    check_asset(asset)?;
    let client = who(app, peer, headers, q)?;
    known(app, asset).await?;
    let got = ranked(app, asset, client)?;
    Ok((client, got))
}

/// The lookup phase: a 404 for an asset nobody has (see [`crate::catalog`]).
async fn known(app: &App, asset: &str) -> Result<(), Response> {
    use crate::catalog::{Known, held, origins, verdict};
    if !app.config.steering.check_assets {
        return Ok(());
    }
    // Without a snapshot the choice answers 503 right after.
    let Some(view) = app.state.view() else {
        return Ok(());
    };
    let count = |r: &str| app.metrics.asset_lookups.with_label_values(&[r]).inc();
    if held(&view.snapshot, asset) {
        count("held");
        return Ok(());
    }
    let now = Instant::now();
    let found = match app.catalog.cached(asset, now) {
        Some(found) => {
            count("cached");
            found
        }
        None => {
            let mut statuses = Vec::new();
            for origin in origins(&view.snapshot).iter().take(3) {
                let status = head_status(app, &format!("{origin}/v/{asset}/asset.json")).await;
                statuses.push(status);
                if status == Some(200) {
                    break;
                }
            }
            match verdict(&statuses) {
                Known::Yes => {
                    count("found");
                    app.catalog.remember(asset, true, now);
                    true
                }
                Known::No => {
                    count("missing");
                    app.catalog.remember(asset, false, now);
                    false
                }
                Known::Unsure => {
                    count("unsure");
                    true
                }
            }
        }
    };
    if found {
        Ok(())
    } else {
        Err(error(StatusCode::NOT_FOUND, "unknown asset"))
    }
}

/// The status of a HEAD request (`None` when there is no answer in time).
async fn head_status(app: &App, url: &str) -> Option<u16> {
    let req =
        estuary_common::http::request(http::Method::HEAD, url, &[], bytes::Bytes::new()).ok()?;
    let resp = app.fetcher.send(req).await.ok()?;
    Some(resp.status().as_u16())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hls,
    Dash,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Hls => "hls",
            Kind::Dash => "dash",
        }
    }
}

/// Fetches the asset's manifest from the ranked edges in turn and rewrites it.
async fn steered(app: &App, asset: &str, got: &[Choice], q: &ClientQuery, kind: Kind) -> Response {
    let now = estuary_common::unix_now();
    let (prefix, _) = app.sign(asset, now);
    let file = match kind {
        Kind::Hls => "master.m3u8",
        Kind::Dash => "manifest.mpd",
    };
    let view = match view(app) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut not_found = 0;
    let mut text = None;
    for choice in got.iter().take(3) {
        let Some(edge) = view.topology.edge(&choice.node) else {
            continue;
        };
        let url = format!("{}{prefix}/v/{asset}/{file}", edge.fetch_url);
        match fetch_text(app, &url).await {
            Ok(Some(t)) => {
                app.metrics
                    .manifest_fetches
                    .with_label_values(&["ok"])
                    .inc();
                text = Some(t);
                break;
            }
            Ok(None) => {
                app.metrics
                    .manifest_fetches
                    .with_label_values(&["not_found"])
                    .inc();
                not_found += 1;
            }
            Err(e) => {
                app.metrics
                    .manifest_fetches
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(node = %choice.node, asset, error = %e,
                    "A manifest could not be fetched from an edge; the next one is asked.");
            }
        }
    }
    let Some(text) = text else {
        return if not_found > 0 {
            error(StatusCode::NOT_FOUND, "unknown asset")
        } else {
            error(
                StatusCode::BAD_GATEWAY,
                "no edge answered for the asset's manifest",
            )
        };
    };
    let mut pathways = Vec::new();
    for c in got {
        let Ok(base) = url::Url::parse(&format!("{}{prefix}/v/{asset}/", c.base_url)) else {
            continue;
        };
        if estuary_common::config::name_ok(&c.node) {
            pathways.push(Pathway {
                id: c.node.clone(),
                base,
            });
        }
    }
    let server_uri = format!(
        "{}/v1/steering/{}/{asset}{}",
        app.public_url,
        kind.name(),
        client_suffix(q)
    );
    let (out, content_type) = match kind {
        Kind::Hls => (
            steer_hls(&text, &pathways, &server_uri),
            "application/vnd.apple.mpegurl",
        ),
        Kind::Dash => (
            steer_dash(&text, &pathways, &server_uri),
            "application/dash+xml",
        ),
    };
    match out {
        Ok(body) => {
            let mut r = (StatusCode::OK, body).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            r
        }
        Err(e) => {
            app.metrics
                .manifest_fetches
                .with_label_values(&["unusable"])
                .inc();
            tracing::warn!(asset, error = %e, "An edge's manifest could not be rewritten.");
            error(
                StatusCode::BAD_GATEWAY,
                &format!("the asset's manifest cannot be steered: {e}"),
            )
        }
    }
}

/// The longest manifest accepted from an edge.
const MAX_MANIFEST: usize = 4 << 20;

/// GETs a text file: `Ok(None)` for a 404.
async fn fetch_text(app: &App, url: &str) -> Result<Option<String>, String> {
    let resp = app.fetcher.get(url, &[]).await.map_err(|e| e.to_string())?;
    match resp.status() {
        s if s == StatusCode::NOT_FOUND => return Ok(None),
        s if !s.is_success() => return Err(format!("answered {s}")),
        _ => {}
    }
    String::from_utf8(resp.into_body().to_vec())
        .map(Some)
        .map_err(|_| "the manifest is not UTF-8".to_owned())
}

/// `GET /v1/steering/<hls|dash>/<asset>`: the Content Steering manifest players reload every
/// `TTL` seconds, from the live view (a killed edge drops out once the control plane marks
/// it down).
async fn steering(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((kind, asset)): Path<(String, String)>,
    Query(q): Query<ClientQuery>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let r = (|| {
        let kind = match kind.as_str() {
            "hls" => Kind::Hls,
            "dash" => Kind::Dash,
            _ => return Err(error(StatusCode::NOT_FOUND, "steering kinds: hls, dash")),
        };
        check_asset(&asset)?;
        let client = who(&app, peer, &headers, &q)?;
        // HLS players send the pathway in use; dash.js sends every service location it
        // knows, quoted and comma-separated, best measured throughput first.
        let current = match kind {
            Kind::Hls => q.hls_pathway.as_deref(),
            Kind::Dash => q
                .dash_pathway
                .as_deref()
                .map(|p| p.trim_matches('"'))
                .and_then(|p| p.split(',').next()),
        };
        // Only HLS defines the unit (bits per second), so only its figure is recorded.
        if let Some(bps) = q
            .hls_throughput
            .as_deref()
            .and_then(|t| t.parse::<f64>().ok())
            && bps.is_finite()
            && bps >= 0.0
        {
            app.metrics.throughput.observe(bps / 8.0);
        }
        let got = ranked(&app, &asset, client)?;
        let priority = prioritize(&got, current);
        let reload = format!(
            "{}/v1/steering/{}/{asset}{}",
            app.public_url,
            kind.name(),
            client_suffix(&q)
        );
        let mut body = BTreeMap::new();
        body.insert("VERSION", serde_json::json!(1));
        body.insert("TTL", serde_json::json!(app.config.steering.ttl.as_secs()));
        body.insert("RELOAD-URI", serde_json::json!(reload));
        if kind == Kind::Dash {
            // The DASH-IF name, plus the HLS one that dash.js 4.x reads.
            body.insert("SERVICE-LOCATION-PRIORITY", serde_json::json!(priority));
        }
        body.insert("PATHWAY-PRIORITY", serde_json::json!(priority));
        Ok(json(StatusCode::OK, &serde_json::json!(body)))
    })()
    .unwrap_or_else(|r| r);
    record(&app, "steering", started, r)
}

/// `GET /v1/chat/relays`: the chat relays that are up, ranked for the client as edges are
/// (its zone's site first, then the nearest; load and capacity inside a site), each with its
/// WebSocket URL.
async fn chat_relays(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<ClientQuery>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let r = (|| {
        let client = who(&app, peer, &headers, &q)?;
        let view = view(&app)?;
        let got = choose_relays(&view.relays, client, &app.policy());
        if got.is_empty() {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no chat relay is available",
            ));
        }
        let relays: Vec<serde_json::Value> = got
            .iter()
            .map(|c| serde_json::json!({"site": c.site, "node": c.node, "url": c.base_url}))
            .collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "client": client.to_string(), "relays": relays }),
        ))
    })()
    .unwrap_or_else(|r| r);
    record(&app, "chat_relays", started, r)
}

impl estuary_common::service::admin::AdminEndpoints for App {
    fn registry(&self) -> &prometheus::Registry {
        &self.metrics.registry
    }

    fn serving(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
    }

    async fn check_ready(&self) -> Result<String, String> {
        match self.state.view() {
            Some(_) => Ok("ready\n".to_owned()),
            None => Err("no state snapshot loaded yet\n".to_owned()),
        }
    }
}

/// Whether players get the edges' https or http addresses.
pub fn prefer_https(config: &SteeringConfig) -> bool {
    config.steering.scheme == Scheme::Https
}
