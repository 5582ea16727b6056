//! Recording: `POST /recordings/<room>` starts one, `DELETE` stops it, `GET` says where it
//! is. The token is the room token's format with the acl `/recordings/<room>` (a
//! participant's `/rooms/<room>` token cannot record). A recording is a WHEP watcher inside
//! the SFU (`session.rs`) whose media ffmpeg writes as received (no transcoding); once
//! stopped, the file is uploaded to the origin (`upload.rs`, TUS), which packages it into an
//! asset that plays through the CDN like any video. Files are deleted once the origin has
//! them; a file left by a crash or a failed upload is uploaded again at the next start.

mod rtp;
mod session;
mod upload;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path as UrlPath, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use estuary_common::http::{ClientOptions, HttpClient};
use prometheus::{IntCounterVec, IntGauge, Opts};

use crate::config::RecordingConfig;
use crate::http::App;
use crate::inbox::ShardTx;
use crate::peer::RtcFactory;

pub use rtp::asset_id;

/// Where a recording is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Starting,
    Recording,
    Finishing,
    Uploading,
    Uploaded,
    Failed(String),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Recording => "recording",
            State::Finishing => "finishing",
            State::Uploading => "uploading",
            State::Uploaded => "uploaded",
            State::Failed(_) => "failed",
        }
    }

    fn active(&self) -> bool {
        !matches!(self, State::Uploaded | State::Failed(_))
    }
}

/// One recording of a room.
pub struct Recording {
    pub room: String,
    pub asset: String,
    pub stop: AtomicBool,
    /// Bytes written so far.
    pub bytes: AtomicU64,
    state: Mutex<State>,
    metrics: RecMetrics,
}

impl Recording {
    fn set_state(&self, s: State) {
        if let Ok(mut g) = self.state.lock() {
            *g = s;
        }
    }

    fn state(&self) -> State {
        self.state
            .lock()
            .map_or(State::Failed("poisoned".into()), |g| g.clone())
    }

    fn json(&self) -> serde_json::Value {
        let state = self.state();
        let mut v = serde_json::json!({
            "room": self.room,
            "asset": self.asset,
            "state": state.name(),
            "bytes": self.bytes.load(Ordering::Relaxed),
        });
        if let State::Failed(why) = &state {
            v["error"] = serde_json::Value::String(why.clone());
        }
        v
    }
}

/// What a recording's thread needs.
pub struct Ctx {
    pub cfg: RecordingConfig,
    pub factory: RtcFactory,
    /// Where the SFU's media socket listens (a loopback address when it listens on all).
    pub sfu_udp: SocketAddr,
    pub shard: ShardTx,
}

#[derive(Clone)]
struct RecMetrics {
    active: IntGauge,
    ended: IntCounterVec,
}

/// The recordings of this SFU.
pub struct Recorder {
    cfg: RecordingConfig,
    factory: RtcFactory,
    sfu_udp: SocketAddr,
    http: HttpClient,
    rt: tokio::runtime::Handle,
    /// The latest recording of each room (kept after it ends, for `GET`).
    recordings: Mutex<HashMap<String, Arc<Recording>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    metrics: RecMetrics,
}

impl Recorder {
    /// Checks the folder (created if missing) and registers the metrics.
    pub fn new(
        cfg: RecordingConfig,
        factory: RtcFactory,
        listen_udp: SocketAddr,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| anyhow::anyhow!("recording.dir {}: {e}", cfg.dir.display()))?;
        let http = HttpClient::new(ClientOptions {
            timeout: Duration::from_secs(120),
            max_body: 64 * 1024,
            ca_file: cfg.ca_file.clone(),
            ..ClientOptions::default()
        })
        .map_err(|e| anyhow::anyhow!("recording: {e}"))?;
        // The registry adds `node` and `site` to every series.
        let active = IntGauge::with_opts(Opts::new(
            "estuary_sfu_recordings_active",
            "Recordings being written or uploaded.",
        ))?;
        let ended = IntCounterVec::new(
            Opts::new(
                "estuary_sfu_recordings_total",
                "Recordings ended, by outcome (uploaded, failed).",
            ),
            &["outcome"],
        )?;
        for o in ["uploaded", "failed"] {
            ended.with_label_values(&[o]);
        }
        registry.register(Box::new(active.clone()))?;
        registry.register(Box::new(ended.clone()))?;
        let sfu_udp = match listen_udp.ip() {
            IpAddr::V4(a) if a.is_unspecified() => {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen_udp.port())
            }
            IpAddr::V6(a) if a.is_unspecified() => {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen_udp.port())
            }
            _ => listen_udp,
        };
        Ok(Self {
            cfg,
            factory,
            sfu_udp,
            http,
            rt: tokio::runtime::Handle::current(),
            recordings: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            metrics: RecMetrics { active, ended },
        })
    }

    /// Uploads the recordings a crash or a failed upload left in the folder.
    pub fn upload_leftovers(self: &Arc<Self>) {
        let Ok(entries) = std::fs::read_dir(&self.cfg.dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let asset = match (path.extension(), path.file_stem()) {
                (Some(ext), Some(stem)) if ext == "mkv" => stem.to_string_lossy().into_owned(),
                _ => continue,
            };
            if !estuary_common::asset::valid_asset_id(&asset) {
                continue;
            }
            tracing::info!(asset, "A recording left in recording.dir is uploaded.");
            let this = Arc::clone(self);
            let name = asset.clone();
            self.spawn(&name, move || {
                let _ = this.upload(&asset, &path);
            });
        }
    }

    fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) {
        match std::thread::Builder::new()
            .name(format!("sfu-rec-{name}"))
            .spawn(f)
        {
            Ok(h) => {
                if let Ok(mut t) = self.threads.lock() {
                    t.retain(|h| !h.is_finished());
                    t.push(h);
                }
            }
            Err(e) => tracing::error!(error = %e, "A recording thread could not start."),
        }
    }

    /// Uploads `file` as `asset`; deletes it and its log once the origin has it.
    fn upload(&self, asset: &str, file: &Path) -> Result<(), String> {
        let r = self.rt.block_on(upload::upload(
            &self.http,
            &self.cfg.origin,
            &self.cfg.upload_token,
            asset,
            file,
        ));
        match r {
            Ok(()) => {
                let _ = std::fs::remove_file(file);
                let _ = std::fs::remove_file(file.with_extension("ffmpeg.log"));
                tracing::info!(asset, "A recording was handed to the origin.");
                self.metrics.ended.with_label_values(&["uploaded"]).inc();
                Ok(())
            }
            Err(e) => {
                let later = if e.retry_later {
                    "; the file stays and is uploaded again at the next start"
                } else {
                    ""
                };
                tracing::error!(asset, error = %e.text, file = %file.display(), "A recording's upload failed{later}.");
                if !e.retry_later {
                    // Kept for an operator, out of the next start's way.
                    let _ = std::fs::rename(file, file.with_extension("mkv.failed"));
                }
                self.metrics.ended.with_label_values(&["failed"]).inc();
                Err(e.text)
            }
        }
    }

    /// Starts recording `room`.
    fn start(self: &Arc<Self>, room: &str, shard: ShardTx) -> Result<Arc<Recording>, StartError> {
        let mut all = self.recordings.lock().map_err(|_| StartError::Busy)?;
        if all.get(room).is_some_and(|r| r.state().active()) {
            return Err(StartError::Already);
        }
        let active = all.values().filter(|r| r.state().active()).count();
        if active >= self.cfg.max_active {
            return Err(StartError::Busy);
        }
        let unix = estuary_common::unix_now();
        let rec = Arc::new(Recording {
            room: room.to_owned(),
            asset: rtp::asset_id(&self.cfg.asset_prefix, room, unix),
            stop: AtomicBool::new(false),
            bytes: AtomicU64::new(0),
            state: Mutex::new(State::Starting),
            metrics: self.metrics.clone(),
        });
        all.insert(room.to_owned(), Arc::clone(&rec));
        drop(all);
        rec.metrics.active.inc();
        let ctx = Ctx {
            cfg: self.cfg.clone(),
            factory: self.factory.clone(),
            sfu_udp: self.sfu_udp,
            shard,
        };
        let this = Arc::clone(self);
        let r = Arc::clone(&rec);
        self.spawn(&rec.asset.clone(), move || {
            match session::record(&r, &ctx) {
                Ok(file) => {
                    r.set_state(State::Uploading);
                    match this.upload(&r.asset, &file) {
                        Ok(()) => r.set_state(State::Uploaded),
                        Err(e) => r.set_state(State::Failed(format!("upload: {e}"))),
                    }
                }
                Err(e) => {
                    tracing::warn!(room = %r.room, error = %e, "A recording failed.");
                    r.metrics.ended.with_label_values(&["failed"]).inc();
                    r.set_state(State::Failed(e));
                }
            }
            r.metrics.active.dec();
        });
        Ok(rec)
    }

    fn get(&self, room: &str) -> Option<Arc<Recording>> {
        self.recordings.lock().ok()?.get(room).cloned()
    }

    /// Stops every recording (SIGTERM) and waits for their files to be written and uploaded.
    pub fn stop_all_and_wait(&self) {
        if let Ok(all) = self.recordings.lock() {
            for r in all.values() {
                r.stop.store(true, Ordering::SeqCst);
            }
        }
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in threads {
            let _ = t.join();
        }
    }
}

enum StartError {
    Already,
    Busy,
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{v}\n"),
    )
        .into_response()
}

/// The checks of every recording request; the recorder when they pass.
fn admit(
    app: &App,
    headers: &HeaderMap,
    room: &str,
    client: SocketAddr,
    starting: bool,
) -> Result<Arc<Recorder>, Box<Response>> {
    crate::http::admit(app, headers, "recordings", room, client, !starting)
        .map_err(|r| Box::new(r.answer(app, client)))?;
    app.recorder.clone().ok_or_else(|| {
        Box::new(crate::http::refuse(
            app,
            StatusCode::NOT_FOUND,
            "no_recording",
            "recording is not configured on this SFU",
        ))
    })
}

/// `POST /recordings/<room>`: starts a recording (201), 409 if one is running.
pub async fn start(
    AxState(app): AxState<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    UrlPath(room): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let recorder = match admit(&app, &headers, &room, client, true) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let Some(shard) = app.shard_of(&room).cloned() else {
        return crate::http::refuse(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "no shard",
        );
    };
    match recorder.start(&room, shard) {
        Ok(rec) => {
            tracing::info!(room, asset = %rec.asset, "Recording.");
            let mut r = json(StatusCode::CREATED, &rec.json());
            if let Ok(v) = format!("/recordings/{room}").parse() {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Err(StartError::Already) => crate::http::refuse(
            &app,
            StatusCode::CONFLICT,
            "recording_running",
            "this room is being recorded",
        ),
        Err(StartError::Busy) => crate::http::refuse(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            "recordings_full",
            "too many recordings are running (recording.max_active)",
        ),
    }
}

/// `GET /recordings/<room>`: the room's latest recording.
pub async fn status(
    AxState(app): AxState<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    UrlPath(room): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let recorder = match admit(&app, &headers, &room, client, false) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match recorder.get(&room) {
        Some(rec) => json(StatusCode::OK, &rec.json()),
        None => crate::http::refuse(
            &app,
            StatusCode::NOT_FOUND,
            "no_recording",
            "this room has no recording",
        ),
    }
}

/// `DELETE /recordings/<room>`: stops the running recording (202); it is then written and
/// uploaded (`GET` follows it).
pub async fn stop(
    AxState(app): AxState<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    UrlPath(room): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let recorder = match admit(&app, &headers, &room, client, false) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match recorder.get(&room).filter(|r| r.state().active()) {
        Some(rec) => {
            rec.stop.store(true, Ordering::SeqCst);
            json(StatusCode::ACCEPTED, &rec.json())
        }
        None => crate::http::refuse(
            &app,
            StatusCode::NOT_FOUND,
            "no_recording",
            "this room is not being recorded",
        ),
    }
}
