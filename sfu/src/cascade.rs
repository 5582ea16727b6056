//! Cascading: one meeting on SFUs at two (or more) sites. The control plane, placing a
//! participant at a site other than the meeting's own SFU's, orders that site's SFU to relay
//! the room from the meeting's SFU (`PUT /cascade/<room>`, a token whose acl is
//! `/cascade/<room>`, signed with the room tokens' key). When the room's first participant
//! joins here, this SFU opens a **link**: a WebSocket to the upstream SFU's
//! `/cascade/<room>/ws` (the same token) and one WebRTC peer connection (a full-ICE str0m
//! client on a UDP socket of its own; the upstream sees an ICE-lite peer like any other).
//!
//! On both SFUs the link is a member of the room (`Role::Member`): it receives, once per
//! track, what that site's participants publish, and never what came in over it; each of the
//! other site's participants is a local stand-in (`Role::Relayed`) whose tracks are the
//! link's incoming m-lines (their msid stream id names the participant). The link's
//! signaling is the meeting protocol itself: the upstream sends the link the events any
//! participant gets (`joined`, `participant`, `track`, `offer`, `answer`), and the relaying
//! SFU sends `relay` (its participants joining and leaving), `mute`, `offer` and `answer`.
//! Each SFU ranks speakers and picks simulcast layers for its own participants.
//!
//! Offers cross: the relaying SFU is the impolite side (it ignores an offer that arrives while
//! its own is pending); the upstream drops its own, as it does for any participant.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::http::{App, refuse};
use crate::peer::LinkClient;
use crate::room::PeerId;
use crate::shard::ShardIn;
use crate::signal::{self, Change, ClientMsg, RelayEvent, ServerMsg};

/// Orders kept at once (one per room relayed).
pub const MAX_ORDERS: usize = 4096;
/// The largest order body read.
const MAX_ORDER_BYTES: usize = 4096;
/// How long the link's WebSocket may take to open.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// The link is pinged this often; silent for three times as long, it is closed.
const PING_EVERY: Duration = Duration::from_secs(10);
/// Failed links tried again, one after the other, before waiting for the next participant.
const MAX_RETRIES: u32 = 5;
/// A link up this long counts as working: its failure starts the retries over.
const RETRY_RESET: Duration = Duration::from_secs(30);
/// Events queued for the link before it counts as not reading.
const EVENT_QUEUE: usize = 1024;

/// Where the link connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Upstream {
    /// The link's WebSocket URL for `room` with `token`.
    fn ws_url(&self, room: &str, token: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{scheme}://{host}:{}/cascade/{room}/ws?{}",
            self.port,
            estuary_common::token::query_pair(token)
        )
    }
}

/// Reads an upstream base URL: `http` or `https`, a host, an optional port, no user, no path
/// beyond `/`, no query.
pub fn parse_upstream(text: &str) -> Result<Upstream, String> {
    let uri: http::Uri = text.parse().map_err(|_| "upstream: not a URL".to_owned())?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("upstream: the scheme must be http or https".into()),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| "upstream: no host".to_owned())?;
    if authority.as_str().contains('@') {
        return Err("upstream: no user information".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("upstream: a base URL only (no path, no query)".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err("upstream: no host".into());
    }
    Ok(Upstream {
        tls,
        host: host.to_owned(),
        port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
    })
}

/// One order: relay `room` from `upstream`.
struct Order {
    upstream: Upstream,
    upstream_text: String,
    upstream_node: String,
    token: String,
    /// The token's expiry (unix seconds): the order lasts as long.
    expires: u64,
    /// A link runs for it now.
    running: bool,
}

/// The orders this SFU took, by room.
#[derive(Default)]
pub struct Orders {
    map: Mutex<HashMap<String, Order>>,
}

/// Why an order was not kept.
#[derive(Debug, PartialEq, Eq)]
pub enum OrderError {
    Full,
}

impl Orders {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Order>> {
        // A panic while holding it cannot leave the map half-changed (single inserts).
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps (or replaces) the order of `room`; says whether it is new.
    fn put(&self, room: &str, order: Order, now: u64) -> Result<bool, OrderError> {
        let mut map = self.lock();
        map.retain(|_, o| o.running || o.expires > now);
        if let Some(old) = map.get_mut(room) {
            let running = old.running;
            *old = Order { running, ..order };
            return Ok(false);
        }
        if map.len() >= MAX_ORDERS {
            return Err(OrderError::Full);
        }
        map.insert(room.to_owned(), order);
        Ok(true)
    }

    /// The order of `room`, marked running, if one lasts and no link runs for it.
    fn start(&self, room: &str, now: u64) -> Option<(Upstream, String)> {
        let mut map = self.lock();
        let o = map.get_mut(room)?;
        if o.running || o.expires <= now {
            return None;
        }
        o.running = true;
        Some((o.upstream.clone(), o.token.clone()))
    }

    /// The token of `room`'s order now (a newer order may have brought a fresher one).
    fn token(&self, room: &str) -> Option<String> {
        self.lock().get(room).map(|o| o.token.clone())
    }

    fn finished(&self, room: &str) {
        if let Some(o) = self.lock().get_mut(room) {
            o.running = false;
        }
    }

    fn view(&self, room: &str) -> Option<serde_json::Value> {
        let map = self.lock();
        let o = map.get(room)?;
        Some(serde_json::json!({
            "room": room,
            "upstream": o.upstream_text,
            "upstream_node": o.upstream_node,
            "expires": o.expires,
            "link": if o.running { "running" } else { "idle" },
        }))
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The cascade token of a request, checked for `/cascade/<room>`.
fn authorize(
    app: &App,
    headers: &HeaderMap,
    room: &str,
    client: SocketAddr,
) -> Result<(), Box<Response>> {
    crate::http::admit(app, headers, "cascade", room, client, false)
        .map_err(|r| Box::new(r.answer(app, client)))
}

/// `PUT /cascade/<room>`: relay `room` from `upstream` (201 new, 204 replaced).
pub async fn put_order(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&app, &headers, &room, client) {
        return *r;
    }
    if body.len() > MAX_ORDER_BYTES {
        return refuse(
            &app,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_big",
            "the order is too big",
        );
    }
    let order: estuary_common::api::CascadeOrder = match serde_json::from_slice(&body) {
        Ok(o) => o,
        Err(e) => {
            let text = format!("not a cascade order: {e}");
            return refuse(&app, StatusCode::BAD_REQUEST, "bad_order", &text);
        }
    };
    let upstream = match parse_upstream(&order.upstream) {
        Ok(u) => u,
        Err(e) => return refuse(&app, StatusCode::BAD_REQUEST, "bad_order", &e),
    };
    if !estuary_common::config::name_ok(&order.upstream_node) {
        return refuse(
            &app,
            StatusCode::BAD_REQUEST,
            "bad_order",
            "upstream_node: 1-64 of A-Z a-z 0-9 - _ .",
        );
    }
    // The header was checked above; its token is what the link presents upstream.
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    let expires = estuary_common::token::parse(&token).map_or(0, |t| t.exp);
    let now = unix_now();
    let kept = app.cascades.put(
        &room,
        Order {
            upstream,
            upstream_text: order.upstream.clone(),
            upstream_node: order.upstream_node.clone(),
            token,
            expires,
            running: false,
        },
        now,
    );
    match kept {
        Ok(new) => {
            tracing::info!(room = %room, upstream = %order.upstream, node = %order.upstream_node, "A cascade order was taken: the room is relayed from its meeting's SFU.");
            if new {
                StatusCode::CREATED.into_response()
            } else {
                StatusCode::NO_CONTENT.into_response()
            }
        }
        Err(OrderError::Full) => refuse(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_orders",
            "too many cascade orders",
        ),
    }
}

/// `GET /cascade/<room>`: the order and whether its link runs.
pub async fn get_order(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&app, &headers, &room, client) {
        return *r;
    }
    match app.cascades.view(&room) {
        Some(v) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response(),
        None => refuse(&app, StatusCode::NOT_FOUND, "no_order", "no cascade order"),
    }
}

/// `GET /cascade/<room>/ws?token=`: the upstream end of a link (the cascade token, checked
/// as a participant's room token is, before the upgrade).
pub async fn ws(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    slot: Option<axum::Extension<estuary_common::listener::HeldSlot>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    crate::meeting_ws::upgrade_checked(app, client, room, query, slot, upgrade, "cascade")
}

/// After a participant joined `room` here: opens the link if an order asks for one and none
/// runs.
pub fn maybe_start(app: &Arc<App>, room: &str) {
    let Some((upstream, token)) = app.cascades.start(room, unix_now()) else {
        return;
    };
    let app = Arc::clone(app);
    let room = room.to_owned();
    tokio::spawn(async move {
        // A link that fails is tried again a few times (backing off), while this site's
        // participants are in the room (the shard refuses a link for an empty room).
        let mut failures = 0u32;
        loop {
            let started = tokio::time::Instant::now();
            match run(&app, &room, &upstream, &token).await {
                Ok(why) => {
                    tracing::info!(room = %room, upstream = %upstream.host, why, "A cascade link ended.");
                    break;
                }
                Err(e) => {
                    tracing::warn!(room = %room, upstream = %upstream.host, error = %e, "A cascade link failed.");
                }
            }
            if started.elapsed() > RETRY_RESET {
                failures = 0;
            }
            failures += 1;
            if failures > MAX_RETRIES || *app.stop.borrow() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1 << failures.min(4))).await;
        }
        app.cascades.finished(&room);
    });
}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Stream>>;

/// What the link's WebSocket runs over: TCP, or TLS over it.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

async fn connect(upstream: &Upstream, room: &str, token: &str) -> Result<Ws, String> {
    let url = upstream.ws_url(room, token);
    let tcp = tokio::net::TcpStream::connect((upstream.host.as_str(), upstream.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Stream> = if upstream.tls {
        let roots =
            estuary_common::http::root_store(None).map_err(|e| format!("TLS roots: {e}"))?;
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(
            estuary_common::tls::provider(),
        )
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(upstream.host.clone())
            .map_err(|e| format!("TLS name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(signal::MAX_FRAME_BYTES))
        .max_frame_size(Some(signal::MAX_FRAME_BYTES));
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("WebSocket: {e}"))?;
    Ok(ws)
}

/// A message of the upstream SFU to the link (the meeting protocol's server messages; what
/// the link does not use is `Other`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UpstreamMsg {
    Joined {
        #[serde(default)]
        participants: Vec<Named>,
    },
    Participant {
        event: String,
        participant: String,
        #[serde(default)]
        name: String,
    },
    Track {
        event: String,
        track: String,
    },
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Error {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Named {
    pub participant: String,
    #[serde(default)]
    pub name: String,
}

/// Reads one upstream frame (a fuzz target's subject: never panics).
pub fn parse_upstream_msg(text: &str) -> Option<UpstreamMsg> {
    if text.len() > signal::MAX_FRAME_BYTES {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// What the relaying side tells the upstream for one of its own events.
pub fn to_upstream(msg: &ServerMsg) -> Vec<ClientMsg> {
    match msg {
        ServerMsg::Offer { sdp } => vec![ClientMsg::Offer { sdp: sdp.clone() }],
        ServerMsg::Answer { sdp } => vec![ClientMsg::Answer { sdp: sdp.clone() }],
        ServerMsg::Joined { participants, .. } => participants
            .iter()
            .map(|p| ClientMsg::Relay {
                event: RelayEvent::Joined,
                participant: p.participant.clone(),
                name: p.name.clone(),
            })
            .collect(),
        ServerMsg::Participant {
            event,
            participant,
            name,
        } => {
            let event = match event {
                Change::Joined => RelayEvent::Joined,
                Change::Left => RelayEvent::Left,
                _ => return Vec::new(),
            };
            vec![ClientMsg::Relay {
                event,
                participant: participant.clone(),
                name: name.clone(),
            }]
        }
        ServerMsg::Track { event, track } => match event {
            Change::Muted | Change::Unmuted => vec![ClientMsg::Mute {
                track: track.track.clone(),
                muted: *event == Change::Muted,
            }],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// The relaying end of a link, until it ends (the room empties here, the upstream goes, the
/// SFU stops).
async fn run(
    app: &Arc<App>,
    room: &str,
    upstream: &Upstream,
    token: &str,
) -> Result<&'static str, String> {
    let token = app.cascades.token(room).unwrap_or_else(|| token.to_owned());
    let mut ws = tokio::time::timeout(CONNECT_WAIT, connect(upstream, room, &token))
        .await
        .map_err(|_| "the upstream SFU did not answer in time".to_owned())??;
    let shard = app
        .shard_of(room)
        .cloned()
        .ok_or_else(|| "no shard".to_owned())?;
    let socket = UdpSocket::bind(SocketAddr::new(app.link_bind_ip, 0))
        .map_err(|e| format!("the link's socket: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(250)))
        .map_err(|e| e.to_string())?;
    let bound = socket.local_addr().map_err(|e| e.to_string())?;
    let socket = Arc::new(socket);
    let stop = Arc::new(AtomicBool::new(false));
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let (reply, answer) = oneshot::channel();
    let open = ShardIn::LinkOpen {
        room: room.to_owned(),
        events: events_tx,
        client: LinkClient {
            socket: Arc::clone(&socket),
            local: SocketAddr::new(app.link_public_ip, bound.port()),
            stop: Arc::clone(&stop),
        },
        reply,
    };
    shard
        .try_send(open)
        .map_err(|_| "the room's shard is overloaded".to_owned())?;
    let peer = tokio::time::timeout(CONNECT_WAIT, answer)
        .await
        .map_err(|_| "the room's shard did not answer".to_owned())?
        .map_err(|_| "the room's shard stopped".to_owned())?
        .map_err(|e| format!("the link was refused here: {e}"))?;
    let reader = {
        let shard = shard.clone();
        let stop = Arc::clone(&stop);
        let socket = Arc::clone(&socket);
        std::thread::Builder::new()
            .name("sfu-link".into())
            .spawn(move || read_link(&socket, peer, &shard, &stop))
            .map_err(|e| e.to_string())?
    };
    let result = pump(app, &mut ws, &mut events, &shard, peer).await;
    stop.store(true, Ordering::SeqCst);
    let _ = shard.try_send(ShardIn::Leave { peer });
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    result
}

/// The link's datagrams, to its shard, until `stop`.
fn read_link(socket: &UdpSocket, peer: PeerId, shard: &crate::inbox::ShardTx, stop: &AtomicBool) {
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        match socket.recv_from(&mut buf) {
            Ok((n, src)) => {
                let msg = ShardIn::Datagram {
                    peer,
                    src,
                    recv_at: std::time::Instant::now(),
                    buf: buf[..n].to_vec(),
                    tcp: None,
                };
                match shard.try_send(msg) {
                    Ok(()) | Err(TrySendError::Full(_)) => {}
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                tracing::debug!(error = %e, "A cascade link's socket failed.");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Carries the link's signaling both ways until one side ends it.
async fn pump(
    app: &App,
    ws: &mut Ws,
    events: &mut mpsc::Receiver<ServerMsg>,
    shard: &crate::inbox::ShardTx,
    peer: PeerId,
) -> Result<&'static str, String> {
    let mut stop = app.stop.clone();
    let mut ticks = tokio::time::interval(PING_EVERY);
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                return Ok("the SFU is stopping");
            },
            _ = ticks.tick() => {
                if heard.elapsed() >= PING_EVERY * 3 {
                    return Err("the upstream SFU went silent".into());
                }
                ws.send(Message::Ping(Default::default())).await.map_err(|e| e.to_string())?;
            }
            out = events.recv() => match out {
                Some(msg) => for m in to_upstream(&msg) {
                    let text = serde_json::to_string(&m).map_err(|e| e.to_string())?;
                    ws.send(Message::text(text)).await.map_err(|e| e.to_string())?;
                },
                None => return Ok("the room has no participant here any more"),
            },
            received = ws.next() => {
                heard = tokio::time::Instant::now();
                match received {
                    Some(Ok(Message::Text(text))) => match parse_upstream_msg(text.as_str()) {
                        Some(msg) => {
                            let to_shard = ShardIn::Upstream { peer, msg };
                            if shard.try_send(to_shard).is_err() {
                                return Err("the room's shard is overloaded".into());
                            }
                        }
                        None => tracing::debug!("A cascade link frame was not understood."),
                    },
                    Some(Ok(Message::Close(_))) | None => {
                        return Err("the upstream SFU closed the link".into());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_are_base_urls_of_http_or_https() {
        let u = parse_upstream("http://127.0.0.1:7300").expect("plain");
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 7300));
        let u = parse_upstream("https://sfu-a.example/").expect("tls");
        assert_eq!((u.tls, u.port), (true, 443));
        let u = parse_upstream("http://[::1]:9").expect("v6");
        assert_eq!(u.host, "::1");
        assert!(
            u.ws_url("r", "t")
                .starts_with("ws://[::1]:9/cascade/r/ws?token=")
        );
        for bad in [
            "ftp://h",
            "http://u:p@h",
            "http://h/x",
            "http://h?q",
            "h:80",
            "",
            "http://",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn orders_are_bounded_replaced_and_run_once() {
        let orders = Orders::default();
        let order = |exp| Order {
            upstream: parse_upstream("http://h:1").expect("url"),
            upstream_text: "http://h:1".into(),
            upstream_node: "a".into(),
            token: format!("t{exp}"),
            expires: exp,
            running: false,
        };
        assert_eq!(orders.put("r", order(100), 10), Ok(true));
        assert_eq!(orders.put("r", order(200), 10), Ok(false));
        assert_eq!(orders.start("r", 10).map(|s| s.1), Some("t200".into()));
        assert_eq!(orders.start("r", 10), None, "one link per room");
        orders.finished("r");
        assert!(orders.start("r", 300).is_none(), "expired");
        for i in 0..MAX_ORDERS {
            let _ = orders.put(&format!("x{i}"), order(1000), 500);
        }
        assert_eq!(orders.put("y", order(1000), 500), Err(OrderError::Full));
        // Expired ones make room.
        assert_eq!(orders.put("y", order(2000), 1500), Ok(true));
    }

    #[test]
    fn the_relaying_side_tells_joins_leaves_mutes_and_sdp_and_nothing_else() {
        let joined = ServerMsg::Participant {
            event: Change::Joined,
            participant: "p3".into(),
            name: "bob".into(),
        };
        assert_eq!(
            to_upstream(&joined),
            vec![ClientMsg::Relay {
                event: RelayEvent::Joined,
                participant: "p3".into(),
                name: "bob".into()
            }]
        );
        assert!(
            to_upstream(&ServerMsg::Speaker {
                participant: "p3".into()
            })
            .is_empty()
        );
        let text = serde_json::to_string(&to_upstream(&joined)[0]).expect("json");
        assert_eq!(
            signal::parse(&text).ok(),
            Some(to_upstream(&joined)[0].clone())
        );
        let up = parse_upstream_msg(r#"{"type":"speaker","participant":"p1"}"#);
        assert_eq!(up, Some(UpstreamMsg::Other));
        let up = parse_upstream_msg(
            r#"{"type":"joined","participant":"p9","participants":[{"participant":"p1","name":"a"}],"tracks":[]}"#,
        );
        assert!(
            matches!(up, Some(UpstreamMsg::Joined { participants }) if participants.len() == 1)
        );
    }
}
