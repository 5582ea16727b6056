//! The steering service's view of the CDN: the last good state snapshot and the topology built
//! from it. Filled from the control plane's long-polled state feed, or once from a file. A
//! control plane that cannot be reached leaves the last good view in place: steering keeps
//! answering with what it last knew.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use estuary_common::cp::StateSnapshot;
use tokio::sync::watch;

use crate::choose::{Members, Topology, snapshot_zones};
use crate::geo::CoverageZones;

/// A snapshot and its topologies.
#[derive(Debug)]
pub struct View {
    pub snapshot: StateSnapshot,
    /// The edges.
    pub topology: Topology,
    /// The chat relays.
    pub relays: Topology,
}

/// The current view, swapped whole on every new snapshot.
#[derive(Debug)]
pub struct StateHolder {
    current: ArcSwapOption<View>,
    /// Snapshots installed so far (see [`StateHolder::version`]).
    version: std::sync::atomic::AtomicU64,
    zones: CoverageZones,
    prefer_https: bool,
}

impl StateHolder {
    pub fn new(zones: CoverageZones, prefer_https: bool) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            version: std::sync::atomic::AtomicU64::new(0),
            zones,
            prefer_https,
        }
    }

    /// The current view, if a snapshot was ever loaded.
    pub fn view(&self) -> Option<Arc<View>> {
        self.current.load_full()
    }

    /// How many snapshots were installed (0: none yet); it grows after each new view is in
    /// place, so a reader that saw a version and then reads the view gets that view or a
    /// newer one.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The current view borrowed for a moment (no reference count taken: the geo-DNS's
    /// workers read it once per query, and a shared count would bounce between their cores).
    pub fn view_guard(&self) -> arc_swap::Guard<Option<Arc<View>>> {
        self.current.load()
    }

    /// Installs a new snapshot.
    pub fn install(&self, snapshot: StateSnapshot) {
        let zones = snapshot_zones(&snapshot, &self.zones);
        let edges = Members::Edges {
            prefer_https: self.prefer_https,
        };
        let topology = Topology::of_members(&snapshot, edges, Arc::clone(&zones));
        let relays = Topology::of_members(&snapshot, Members::ChatRelays, zones);
        self.current.store(Some(Arc::new(View {
            snapshot,
            topology,
            relays,
        })));
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// Reads a state file (the JSON of a `StateSnapshot`).
pub fn read_state_file(path: &std::path::Path) -> anyhow::Result<StateSnapshot> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("control_plane.state_file {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("control_plane.state_file {}: {e}", path.display()))
}

/// What the feed follower reports, for metrics.
pub trait FeedObserver: Send + Sync {
    fn fetched(&self, ok: bool);
    fn installed(&self, snapshot: &StateSnapshot);
}

type Client = estuary_common::http::HttpClient;

enum Fetch {
    New(StateSnapshot, Option<String>),
    Same,
}

async fn fetch_once(
    client: &Client,
    url: &str,
    token: &str,
    etag: Option<&str>,
    wait: Duration,
) -> Result<Fetch, String> {
    let uri = if etag.is_some() {
        format!("{url}/v1/state?wait={}", wait.as_secs())
    } else {
        format!("{url}/v1/state")
    };
    let auth = format!("Bearer {token}");
    let mut headers = vec![(http::header::AUTHORIZATION, auth.as_str())];
    if let Some(e) = etag {
        headers.push((http::header::IF_NONE_MATCH, e));
    }
    let req = estuary_common::http::request(http::Method::GET, &uri, &headers, bytes::Bytes::new())
        .map_err(|e| e.to_string())?;
    let resp = client.send(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if status == http::StatusCode::NOT_MODIFIED {
        return Ok(Fetch::Same);
    }
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    let new_etag = resp
        .headers()
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.into_body();
    let snap: StateSnapshot =
        serde_json::from_slice(&body).map_err(|e| format!("unreadable snapshot: {e}"))?;
    Ok(Fetch::New(snap, new_etag))
}

/// Where the state feed comes from and how it is read.
#[derive(Debug)]
pub struct Feed {
    pub replicas: estuary_common::cp::Replicas,
    /// Trusted besides the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    pub token: String,
    /// One long-poll's wait.
    pub wait: Duration,
    /// How often the whole snapshot is read again.
    pub load_refresh: Duration,
}

/// Follows the control plane's state feed until `stop` turns true: one plain GET, then
/// long-polls with the last `ETag`, and a plain GET again every `load_refresh` (for load
/// figures, which do not move the version). Failures are logged (the first and one in twenty) and
/// retried with a growing pause (up to 5 s); the last good snapshot stays in place.
pub async fn follow_feed(
    feed: Feed,
    holder: Arc<StateHolder>,
    observer: Arc<dyn FeedObserver>,
    mut stop: watch::Receiver<bool>,
) {
    let Feed {
        replicas,
        ca_file,
        token,
        wait,
        load_refresh,
    } = feed;
    // A long-poll answers within `wait`; the snapshot of a large fleet is a few MiB.
    let client = match Client::new(estuary_common::http::ClientOptions {
        timeout: wait.min(load_refresh).max(Duration::from_secs(1)) + Duration::from_secs(10),
        max_body: 64 << 20,
        ca_file,
        ..Default::default()
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "The state feed cannot be followed: the HTTP client cannot be set up.");
            return;
        }
    };
    let mut etag: Option<String> = None;
    let mut failures: u64 = 0;
    // Load figures do not move the version: a plain read every `load_refresh` fetches them.
    let mut last_full = tokio::time::Instant::now();
    let wait = wait.min(load_refresh).max(Duration::from_secs(1));
    loop {
        let full = last_full.elapsed() >= load_refresh;
        if full {
            last_full = tokio::time::Instant::now();
        }
        let known = if full { None } else { etag.as_deref() };
        let (replica, url) = replicas.current();
        let outcome = tokio::select! {
            r = fetch_once(&client, url, &token, known, wait) => r,
            _ = stop.changed() => return,
        };
        let pause = match outcome {
            Ok(fetch) => {
                observer.fetched(true);
                if failures > 0 {
                    tracing::info!(url = %url, "The control plane's state feed is reachable again.");
                }
                failures = 0;
                if let Fetch::New(snap, new_etag) = fetch {
                    if new_etag != etag {
                        tracing::info!(
                            version = snap.version,
                            sites = snap.sites.len(),
                            nodes = snap.nodes.len(),
                            "A new state snapshot was installed."
                        );
                    }
                    observer.installed(&snap);
                    holder.install(snap);
                    etag = new_etag;
                }
                Duration::ZERO
            }
            Err(e) => {
                observer.fetched(false);
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(url = %url, error = %e, failures,
                        "The state feed could not be read; steering goes on with the last good snapshot.");
                }
                if replicas.len() > 1 {
                    // Each replica numbers its own versions: an ETag means nothing to another.
                    let (_, to) = replicas.fail_over(replica);
                    etag = None;
                    tracing::warn!(from = %url, to = %to, "The state feed moves to the next control-plane replica.");
                }
                // Straight to the next replica; a pause once every one has failed.
                if failures < replicas.len() as u64 {
                    Duration::from_millis(100)
                } else {
                    Duration::from_millis((250 * failures).min(5000))
                }
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
        }
        if *stop.borrow() {
            return;
        }
    }
}
