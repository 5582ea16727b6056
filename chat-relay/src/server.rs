//! The network shell around [`crate::relay::Relay`]: the `/ws` endpoint (token checked before
//! the upgrade), one task per WebSocket, and one thread that owns the relay and its store and
//! handles every connection's inputs in turn (SQLite calls block; the thread keeps them off
//! the runtime and keeps the core single-owner).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use estuary_common::chat::{id_ok, user_of_acl};
use estuary_common::listener::{HeldSlot, stopped};
use estuary_common::token::{self, KeySet, Rejection};
use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

use crate::config::ChatLimits;
use crate::metrics::Metrics;
use crate::relay::{ConnId, Input, Output, Relay, close};
use crate::store::Store;

/// How long a closing connection waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How long a close frame may take to be written (a slow reader's kernel buffers drain
/// first); then the connection is cut.
const CLOSE_WRITE_WAIT: Duration = Duration::from_secs(5);
/// Inputs waiting for the relay thread; a full queue holds the readers back.
const INPUT_QUEUE: usize = 4096;

/// What one connection's task is told to write.
struct Outbox {
    frames: mpsc::Sender<Utf8Bytes>,
    close: Arc<Closer>,
}

/// How the relay thread closes a connection: the close frame to write (after the frames
/// already queued, which explain it), or, for a slow reader, at once: a wake-up for a task
/// blocked writing to it, and the frames still queued are dropped.
#[derive(Default)]
struct Closer {
    with: OnceLock<(u16, &'static str)>,
    now: tokio::sync::Notify,
}

impl Closer {
    fn close(&self, code: u16, reason: &'static str) {
        let _ = self.with.set((code, reason));
    }

    fn cut(&self, code: u16, reason: &'static str) {
        self.close(code, reason);
        self.now.notify_one();
    }

    fn frame(&self) -> Option<(u16, &'static str)> {
        Some(
            self.with
                .get()
                .copied()
                .unwrap_or((close::INTERNAL, "the relay closed the connection")),
        )
    }
}

enum ToRelay {
    Open {
        conn: ConnId,
        user: String,
        device: String,
        outbox: Outbox,
    },
    Input(Input),
}

/// What the shell takes from the config besides `[chat]`.
pub struct Shell {
    /// `[node] id`.
    pub node: String,
    pub keys: KeySet,
    /// `[auth] max_ttl`.
    pub max_ttl: Duration,
    /// `[limits] idle_timeout`: a WebSocket that sends nothing (not even a pong to the
    /// relay's pings, sent every half of it) for this long is closed with 4001.
    pub idle_timeout: Duration,
    /// `[media]`: uploads through the CDN.
    pub media: Option<crate::config::MediaConfig>,
}

/// What the handlers share.
pub struct App {
    keys: KeySet,
    /// `[auth] max_ttl`, seconds.
    max_ttl: u64,
    idle_timeout: Duration,
    limits: ChatLimits,
    pub metrics: Arc<Metrics>,
    to_relay: mpsc::Sender<ToRelay>,
    next_conn: AtomicU64,
    pub serving: AtomicBool,
    stop: watch::Receiver<bool>,
    /// The demo page's Content-Security-Policy (it names `[media]`'s origin and CDN).
    page_csp: Option<HeaderValue>,
    pub tracker: TaskTracker,
}

impl estuary_common::service::admin::AdminEndpoints for App {
    fn registry(&self) -> &prometheus::Registry {
        &self.metrics.registry
    }

    fn serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl App {
    /// Starts the relay thread over `store` and returns the shared state and the thread.
    /// In a cluster (`links`), the thread is also woken when other relays wrote to the log,
    /// hears their signals, publishes its own and ticks every second.
    pub async fn start<S: Store + Send + 'static>(
        shell: Shell,
        limits: ChatLimits,
        mut store: S,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
        links: Option<crate::cluster::Links>,
        push: Option<&crate::config::PushConfig>,
    ) -> anyhow::Result<(Arc<App>, std::thread::JoinHandle<()>)> {
        match store.inbox_depth() {
            Ok(n) => metrics.set_inbox_depth(n),
            Err(e) => tracing::warn!(error = %e, "The inbox depth could not be read."),
        }
        let (to_relay, rx) = mpsc::channel(INPUT_QUEUE);
        let mut relay = Relay::new(store, limits.clone(), Arc::clone(&metrics));
        if let Some(media) = &shell.media {
            let issuer = crate::media::MediaIssuer::from_config(media)?;
            relay = relay.with_media(issuer, rand::SeedableRng::from_os_rng());
        }
        let mut signals_out = None;
        let mut nats = None;
        if let Some(links) = links {
            nats = Some(links.client.clone());
            relay = relay.in_cluster(&links.me);
            let (tx, signals) = mpsc::channel(INPUT_QUEUE);
            signals_out = Some(tx);
            tokio::spawn(crate::cluster::publish_signals(
                links.client.clone(),
                links.subject.clone(),
                signals,
            ));
            let heard = crate::cluster::subscribe_signals(&links.client, &links.subject).await?;
            tokio::spawn(feed_cluster(
                to_relay.clone(),
                links.advanced,
                Box::pin(heard),
                stop.clone(),
            ));
        }
        let pushes = match push {
            Some(p) => {
                relay = relay.with_push(&shell.node);
                Some(crate::push::Pusher::start(p, nats, Arc::clone(&metrics))?)
            }
            None => None,
        };
        let thread_metrics = Arc::clone(&metrics);
        let thread = std::thread::Builder::new()
            .name("chat-relay-core".into())
            .spawn(move || {
                relay_thread(
                    relay,
                    rx,
                    thread_metrics,
                    Outlets {
                        signals: signals_out,
                        pushes,
                    },
                )
            })?;
        Ok((
            Arc::new(App {
                keys: shell.keys,
                max_ttl: shell.max_ttl.as_secs(),
                idle_timeout: shell.idle_timeout,
                limits,
                metrics,
                to_relay,
                next_conn: AtomicU64::new(1),
                serving: AtomicBool::new(true),
                stop,
                page_csp: page::csp(shell.media.as_ref()),
                tracker: TaskTracker::new(),
            }),
            thread,
        ))
    }
}

/// Owns the relay: handles inputs in arrival order and routes its outputs.
/// Where the relay thread sends what is not for a connection.
struct Outlets {
    signals: Option<mpsc::Sender<estuary_common::chat::Signal>>,
    pushes: Option<mpsc::Sender<estuary_common::chat::PushEvent>>,
}

fn relay_thread<S: Store>(
    mut relay: Relay<S, Arc<Metrics>>,
    mut rx: mpsc::Receiver<ToRelay>,
    metrics: Arc<Metrics>,
    outlets: Outlets,
) {
    let mut outboxes: HashMap<ConnId, Outbox> = HashMap::new();
    while let Some(msg) = rx.blocking_recv() {
        let input = match msg {
            ToRelay::Open {
                conn,
                user,
                device,
                outbox,
            } => {
                outboxes.insert(conn, outbox);
                Input::Open { conn, user, device }
            }
            ToRelay::Input(input) => input,
        };
        let closed = match &input {
            Input::Closed { conn } => Some(*conn),
            _ => None,
        };
        for output in relay.handle_input(unix_ms(), input) {
            match output {
                Output::Frame { conn, frame } => {
                    if outboxes.contains_key(&conn)
                        && let Some(text) = encode(&frame)
                    {
                        queue(&mut outboxes, conn, text, &metrics);
                    }
                }
                Output::Fanout { conns, frame } => {
                    // Encoded once; each queue holds a reference to the same bytes.
                    if let Some(text) = encode(&frame) {
                        for conn in conns {
                            queue(&mut outboxes, conn, text.clone(), &metrics);
                        }
                    }
                }
                Output::Close { conn, code, reason } => {
                    if let Some(outbox) = outboxes.remove(&conn) {
                        outbox.close.close(code, reason);
                    }
                }
                Output::Signal(signal) => {
                    if let Some(tx) = &outlets.signals
                        && tx.try_send(signal).is_err()
                    {
                        tracing::warn!("A chat signal was dropped: the publisher is behind.");
                    }
                }
                Output::Push(event) => {
                    if let Some(tx) = &outlets.pushes
                        && tx.try_send(event).is_err()
                    {
                        metrics.push("dropped");
                    }
                }
            }
        }
        if let Some(conn) = closed {
            outboxes.remove(&conn);
        }
    }
}

/// Feeds the relay thread what the cluster says: wake-ups when the log advanced, the other
/// relays' signals, and a tick every second; until the relay stops.
async fn feed_cluster(
    to_relay: mpsc::Sender<ToRelay>,
    advanced: Arc<tokio::sync::Notify>,
    mut heard: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = estuary_common::chat::Signal> + Send>,
    >,
    mut stop: watch::Receiver<bool>,
) {
    use futures_util::StreamExt;
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        let input = tokio::select! {
            _ = stopped(&mut stop) => return,
            // One wake-up at a time is enough: the relay applies everything that came.
            _ = advanced.notified() => Input::LogAdvanced,
            signal = heard.next() => match signal {
                Some(s) => Input::Signal(s),
                None => return,
            },
            _ = ticks.tick() => Input::Tick,
        };
        if to_relay.send(ToRelay::Input(input)).await.is_err() {
            return;
        }
    }
}

fn encode(frame: &estuary_common::chat::ServerFrame) -> Option<Utf8Bytes> {
    match serde_json::to_string(frame) {
        Ok(t) => Some(t.into()),
        Err(e) => {
            tracing::error!(error = %e, "A frame could not be encoded.");
            None
        }
    }
}

/// Queues a frame for a connection without ever waiting: a reader whose queue is full is
/// closed with 4002 and its queue dropped, so that fan-out never stalls on it. Its stored
/// messages stay in its inbox for its next connection.
fn queue(outboxes: &mut HashMap<ConnId, Outbox>, conn: ConnId, text: Utf8Bytes, metrics: &Metrics) {
    let Some(outbox) = outboxes.get(&conn) else {
        return;
    };
    if let Err(mpsc::error::TrySendError::Full(_)) = outbox.frames.try_send(text) {
        metrics.slow_closed.inc();
        outbox
            .close
            .cut(close::SLOW, "too slow: the send queue is full");
        outboxes.remove(&conn);
    }
}

mod page;

/// The relay's routes: `/ws`, and the demo chat page at `/` and `/chat`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/ws", get(ws))
        .route("/", get(page::page))
        .route("/chat", get(page::page))
        .with_state(app)
}

/// The admin routes, for `[listen] http` or `[listen] admin`.
pub fn admin_router(app: Arc<App>) -> Router {
    estuary_common::service::admin::router::<App>().with_state(app)
}

fn refuse(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

async fn ws(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    slot: Option<axum::Extension<HeldSlot>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if !app.serving.load(Ordering::SeqCst) {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    let Ok(Query(query)) = query else {
        return refuse(StatusCode::BAD_REQUEST, "bad query string\n");
    };
    let user = match check_token(&app, query.get("token").map(String::as_str), peer) {
        Ok(user) => user,
        Err(r) => {
            app.metrics
                .tokens_refused
                .with_label_values(&[r.as_str()])
                .inc();
            tracing::debug!(client = %peer, reason = r.as_str(), "A chat token was refused.");
            return match r {
                Rejection::Missing | Rejection::Malformed => {
                    refuse(StatusCode::UNAUTHORIZED, "a valid token is needed\n")
                }
                _ => refuse(StatusCode::FORBIDDEN, "the token is refused\n"),
            };
        }
    };
    let device = query
        .get("device")
        .cloned()
        .unwrap_or_else(|| "default".to_owned());
    if !id_ok(&device) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "device: 1-64 of A-Z a-z 0-9 - _ . @\n",
        );
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let upgrade = estuary_common::ws::sized(upgrade, app.limits.max_frame_bytes);
    let slot = slot.map(|axum::Extension(s)| s);
    let token = app.tracker.token();
    upgrade.on_upgrade(move |socket| async move {
        connection(app, socket, user, device, slot).await;
        drop(token);
    })
}

/// The user a token names, if it is valid for `/chat/user/<user>`.
fn check_token(app: &App, text: Option<&str>, peer: SocketAddr) -> Result<String, Rejection> {
    let text = text.ok_or(Rejection::Missing)?;
    let parsed = token::parse(text)?;
    let user = user_of_acl(parsed.acl).ok_or(Rejection::OutsideAcl)?;
    token::verify(
        text,
        &app.keys,
        token::Request {
            path: parsed.acl,
            client: peer.ip(),
            now: estuary_common::unix_now(),
            max_ttl: Some(app.max_ttl),
        },
    )?;
    Ok(user.to_owned())
}

/// Writes one frame. A write blocked by a reader that does not read ends when the relay
/// closes the connection (its queued frames are dropped), or after the idle timeout; the
/// error is the close frame to try to write, if any.
async fn write(
    socket: &mut WebSocket,
    message: Message,
    closer: &Closer,
    idle: Duration,
) -> Result<(), Option<(u16, &'static str)>> {
    tokio::select! {
        sent = socket.send(message) => sent.map_err(|_| None),
        _ = closer.now.notified() => Err(closer.frame()),
        _ = tokio::time::sleep(idle) => Err(Some((
            close::SLOW,
            "too slow: nothing could be written within the idle timeout",
        ))),
    }
}

/// What one read from a WebSocket means for the relay.
enum Received {
    Input(Input),
    /// A ping or a pong (answered by the WebSocket layer).
    Nothing,
    /// The connection is over: with the close frame to send, if any.
    End(Option<(u16, &'static str)>),
}

fn received_input(conn: ConnId, received: Option<Result<Message, axum::Error>>) -> Received {
    match received {
        Some(Ok(Message::Text(text))) => Received::Input(Input::Text {
            conn,
            text: text.as_str().to_owned(),
        }),
        Some(Ok(Message::Binary(_))) => Received::Input(Input::Binary { conn }),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Received::Nothing,
        Some(Ok(Message::Close(_))) | None => Received::End(None),
        Some(Err(e)) => {
            tracing::debug!(error = %e, "A WebSocket failed.");
            Received::End(Some((close::TOO_BIG, "the frame could not be read")))
        }
    }
}

async fn connection(
    app: Arc<App>,
    mut socket: WebSocket,
    user: String,
    device: String,
    slot: Option<HeldSlot>,
) {
    // The connection keeps its listener slot for as long as it is open.
    let _slot = slot;
    let conn = app.next_conn.fetch_add(1, Ordering::Relaxed);
    let (frames, mut outgoing) = mpsc::channel(app.limits.send_queue);
    let closer = Arc::new(Closer::default());
    // hyper hands the upgraded socket over with its 8 KiB request buffer, freed by the first
    // read. Read once now: while the core is busy (a burst of connections, each registering
    // its device) a connection can wait a long time below for its turn, and 15,000 of them
    // held 8 KiB each that the allocator could not give back afterwards (11-13 KiB per idle
    // connection instead of 6-7). A frame that is already there is handled after `Open`.
    let mut early = socket.recv().now_or_never();
    let open = ToRelay::Open {
        conn,
        user,
        device,
        outbox: Outbox {
            frames,
            close: Arc::clone(&closer),
        },
    };
    if app.to_relay.send(open).await.is_err() {
        return;
    }
    app.metrics.connections.inc();
    app.metrics.connections_total.inc();
    let mut stop = app.stop.clone();
    // A peer that vanished without a FIN would hold its slot and stay "online": ping it, and
    // close it when it has been silent for the idle timeout.
    let idle = app.idle_timeout;
    let mut heard = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval_at(heard + idle / 2, idle / 2);
    let ending: Option<(u16, &'static str)> = loop {
        if let Some(received) = early.take() {
            heard = tokio::time::Instant::now();
            match received_input(conn, received) {
                Received::Input(input) => {
                    if app.to_relay.send(ToRelay::Input(input)).await.is_err() {
                        break Some((close::GOING_AWAY, "the relay is shutting down"));
                    }
                }
                Received::Nothing => {}
                Received::End(ending) => break ending,
            }
            continue;
        }
        tokio::select! {
            _ = stopped(&mut stop) => break Some((close::GOING_AWAY, "the relay is shutting down")),
            _ = ticks.tick() => {
                if heard.elapsed() >= idle {
                    break Some((close::IDLE, "nothing received within the idle timeout"));
                }
                if let Err(ending) = write(&mut socket, Message::Ping(axum::body::Bytes::new()), &closer, idle).await {
                    break ending;
                }
            }
            out = outgoing.recv() => match out {
                Some(text) => if let Err(ending) = write(&mut socket, Message::Text(text), &closer, idle).await {
                    break ending;
                },
                None => break closer.frame(),
            },
            received = socket.recv() => early = Some(received),
        }
    };
    if let Some((code, reason)) = ending {
        estuary_common::ws::close(&mut socket, code, reason, CLOSE_WRITE_WAIT, CLOSE_WAIT).await;
    }
    app.metrics.connections.dec();
    let _ = app
        .to_relay
        .send(ToRelay::Input(Input::Closed { conn }))
        .await;
}
