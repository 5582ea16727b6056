//! Signaling over HTTP: WHIP (`POST /whip/<room>`) to publish, WHEP (`POST /whep/<room>`) to
//! watch, `DELETE` on the session's `Location` to end it, `OPTIONS` for browsers' CORS
//! preflight. The room token (the edge's token format, acl `/rooms/<room>`) comes as
//! `Authorization: Bearer`; it is checked before the body is read. The offer is answered by
//! the shard that owns the room.

use std::hash::Hasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::TrySendError;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use estuary_common::token::{self, KeySet, Rejection};
use tokio::sync::oneshot;

use crate::inbox::ShardTx;
use crate::metrics::Metrics;
use crate::peer::{PeerKind, SessionError};
use crate::shard::{Open, ShardIn};

/// The largest offer read.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// How long a handler waits for its shard's answer.
const SHARD_WAIT: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct App {
    pub keys: KeySet,
    /// `[auth] max_ttl`, seconds.
    pub max_ttl: u64,
    pub metrics: Arc<Metrics>,
    pub shards: Vec<ShardTx>,
    /// Keys of the room → shard hash (random per process).
    pub shard_keys: (u64, u64),
    pub serving: AtomicBool,
    /// The meeting page's Content-Security-Policy (`None`: it could not be written, and the
    /// page is not served).
    pub page_csp: Option<HeaderValue>,
    /// Turns true when the SFU stops (WebSockets close with 1001).
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// `[recording]`, when configured.
    pub recorder: Option<Arc<crate::record::Recorder>>,
    /// Cascade orders taken (`PUT /cascade/<room>`).
    pub cascades: crate::cascade::Orders,
    /// Cascade links' sockets bind to this address (`[listen] udp`'s) ...
    pub link_bind_ip: std::net::IpAddr,
    /// ... and their candidates name this one (`public_ip`).
    pub link_public_ip: std::net::IpAddr,
}

impl estuary_common::service::admin::AdminEndpoints for App {
    fn registry(&self) -> &prometheus::Registry {
        &self.metrics.registry
    }

    fn serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }
}

impl App {
    pub fn shard_of(&self, room: &str) -> Option<&ShardTx> {
        let mut h =
            siphasher::sip::SipHasher13::new_with_keys(self.shard_keys.0, self.shard_keys.1);
        h.write(room.as_bytes());
        let n = self.shards.len().max(1) as u64;
        self.shards.get((h.finish() % n) as usize)
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/rooms/{room}", get(crate::page::page))
        .route("/rooms/{room}/ws", get(crate::meeting_ws::ws))
        .route(
            "/cascade/{room}",
            axum::routing::put(crate::cascade::put_order).get(crate::cascade::get_order),
        )
        .route("/cascade/{room}/ws", get(crate::cascade::ws))
        .route(
            "/recordings/{room}",
            post(crate::record::start)
                .get(crate::record::status)
                .delete(crate::record::stop),
        )
        .route("/{kind}/{room}", post(offer).options(preflight))
        .route("/{kind}/{room}/{session}", delete(end).options(preflight))
        .with_state(app)
}

pub fn admin_router(app: Arc<App>) -> Router {
    estuary_common::service::admin::router::<App>().with_state(app)
}

/// A refusal: its status, a one-line body, counted by reason.
pub fn refuse(app: &App, status: StatusCode, reason: &'static str, text: &str) -> Response {
    app.metrics.refuse(reason);
    cors((status, format!("{text}\n")).into_response())
}

fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location"),
    );
    r
}

async fn preflight() -> Response {
    let mut r = cors(StatusCode::NO_CONTENT.into_response());
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

/// Room names: 1 to 64 of `A-Z a-z 0-9 - _ .`.
pub fn room_ok(room: &str) -> bool {
    estuary_common::config::name_ok(room) && room != "." && room != ".."
}

/// Checks the `Authorization: Bearer` token for `path` (`/rooms/<room>`,
/// `/recordings/<room>`, `/cascade/<room>`).
fn check_bearer(
    app: &App,
    headers: &HeaderMap,
    path: &str,
    client: SocketAddr,
) -> Result<(), Rejection> {
    let text = headers
        .get(header::AUTHORIZATION)
        .ok_or(Rejection::Missing)?
        .to_str()
        .map_err(|_| Rejection::Malformed)?;
    let token = text.strip_prefix("Bearer ").ok_or(Rejection::Malformed)?;
    check_path_token(app, token, path, client)
}

/// Checks a token (a bearer header's, or a WebSocket's `?token=`) for `path`.
pub fn check_path_token(
    app: &App,
    token: &str,
    path: &str,
    client: SocketAddr,
) -> Result<(), Rejection> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    token::verify(
        token.trim(),
        &app.keys,
        token::Request {
            path,
            client: client.ip(),
            now,
            max_ttl: Some(app.max_ttl),
        },
    )
}

/// Why a request was refused before its body was read.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    Draining,
    BadRoom,
    Token(Rejection),
}

impl Refusal {
    pub fn answer(self, app: &App, client: SocketAddr) -> Response {
        match self {
            Refusal::Draining => {
                refuse(app, StatusCode::SERVICE_UNAVAILABLE, "draining", "draining")
            }
            Refusal::BadRoom => refuse(
                app,
                StatusCode::BAD_REQUEST,
                "bad_room",
                "room: 1-64 of A-Z a-z 0-9 - _ .",
            ),
            Refusal::Token(r) => {
                app.metrics
                    .tokens_refused
                    .with_label_values(&[r.as_str()])
                    .inc();
                tracing::debug!(client = %client, reason = r.as_str(), "A room token was refused.");
                match r {
                    Rejection::Missing | Rejection::Malformed => refuse(
                        app,
                        StatusCode::UNAUTHORIZED,
                        "no_token",
                        "a valid token is needed (Authorization: Bearer)",
                    ),
                    _ => refuse(
                        app,
                        StatusCode::FORBIDDEN,
                        "bad_token",
                        "the token is refused",
                    ),
                }
            }
        }
    }
}

/// The checks every room-scoped request makes before its body: serving (unless it ends work,
/// which is allowed while draining), room name, and a bearer token for `/<scope>/<room>`
/// (`rooms` for WHIP and WHEP, `recordings`, `cascade`).
pub fn admit(
    app: &App,
    headers: &HeaderMap,
    scope: &str,
    room: &str,
    client: SocketAddr,
    ending: bool,
) -> Result<(), Refusal> {
    if !ending && !app.serving.load(Ordering::SeqCst) {
        return Err(Refusal::Draining);
    }
    if !room_ok(room) {
        return Err(Refusal::BadRoom);
    }
    check_bearer(app, headers, &format!("/{scope}/{room}"), client).map_err(Refusal::Token)
}

/// `whip` or `whep`, the first path segment.
fn kind_of(segment: &str) -> Option<PeerKind> {
    match segment {
        "whip" => Some(PeerKind::Whip),
        "whep" => Some(PeerKind::Whep),
        _ => None,
    }
}

/// `POST /whip/<room>` (publish) and `POST /whep/<room>` (watch).
async fn offer(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path((kind, room)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(kind) = kind_of(&kind) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Err(r) = admit(&app, &headers, "rooms", &room, client, false) {
        return r.answer(&app, client);
    }
    let sdp_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/sdp"));
    if !sdp_type {
        return refuse(
            &app,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "wrong_type",
            "the offer must be application/sdp",
        );
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_OFFER_BYTES).await else {
        return refuse(
            &app,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_big",
            "the offer is larger than 64 KiB",
        );
    };
    let Ok(text) = String::from_utf8(bytes.to_vec()) else {
        return refuse(
            &app,
            StatusCode::BAD_REQUEST,
            "bad_sdp",
            "the offer is not UTF-8",
        );
    };
    let Some(shard) = app.shard_of(&room) else {
        return refuse(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "no shard",
        );
    };
    let (reply, answer) = oneshot::channel();
    let msg = ShardIn::Open(Open {
        room: room.clone(),
        kind,
        offer: text,
        reply,
    });
    match shard.try_send(msg) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            return refuse(
                &app,
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the SFU is overloaded",
            );
        }
    }
    let result = match tokio::time::timeout(SHARD_WAIT, answer).await {
        Ok(Ok(r)) => r,
        _ => Err(SessionError::Overloaded),
    };
    match result {
        Ok(opened) => {
            let location = format!("/{}/{room}/{}", kind.as_str(), opened.session);
            let mut r = (StatusCode::CREATED, opened.answer).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/sdp"),
            );
            if let Ok(v) = HeaderValue::from_str(&location) {
                h.insert(header::LOCATION, v);
            }
            cors(r)
        }
        Err(e) => {
            let (status, reason) = match &e {
                SessionError::BadSdp(_)
                | SessionError::Refused(_)
                | SessionError::WrongMedia(_) => (StatusCode::BAD_REQUEST, "bad_sdp"),
                SessionError::RoomFull => (StatusCode::CONFLICT, "room_full"),
                SessionError::TooManyRooms => (StatusCode::SERVICE_UNAVAILABLE, "too_many_rooms"),
                SessionError::Overloaded | SessionError::Internal => {
                    (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
                }
            };
            tracing::debug!(room, error = %e, "An offer was refused.");
            refuse(&app, status, reason, &e.client_text())
        }
    }
}

/// `DELETE` on a session's `Location`.
async fn end(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path((kind, room, session)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(kind) = kind_of(&kind) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Err(r) = admit(&app, &headers, "rooms", &room, client, true) {
        return r.answer(&app, client);
    }
    let Some(shard) = app.shard_of(&room) else {
        return cors(StatusCode::NOT_FOUND.into_response());
    };
    let (reply, found) = oneshot::channel();
    if shard
        .try_send(ShardIn::Close {
            room,
            session,
            kind,
            reply,
        })
        .is_err()
    {
        return refuse(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the SFU is overloaded",
        );
    }
    match tokio::time::timeout(SHARD_WAIT, found).await {
        Ok(Ok(true)) => cors(StatusCode::OK.into_response()),
        Ok(Ok(false)) => cors((StatusCode::NOT_FOUND, "no such session\n").into_response()),
        _ => refuse(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the SFU is overloaded",
        ),
    }
}
