//! `GET /rooms/<room>/ws?token=<room token>`: the meeting's WebSocket. The token (acl
//! `/rooms/<room>`) is checked before the upgrade (401 without a valid one, 403 refused).
//! After the upgrade the first message must be `join`; then every message goes to the shard
//! that owns the room, and the shard's events come back on a bounded queue. Bad JSON gets an
//! `error` frame (the fifth closes with 1008), a frame larger than
//! [`signal::MAX_FRAME_BYTES`] closes with 1009, a binary frame with 1003.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::http::{App, Refusal, check_path_token, refuse, room_ok};
use crate::peer::SessionError;
use crate::room::PeerId;
use crate::shard::ShardIn;
use crate::signal::{self, ClientMsg, ErrorCode, ParseError, ServerMsg};

/// Events queued for one participant before it counts as not reading (and is closed).
const EVENT_QUEUE: usize = 256;
/// A connection silent this long is closed; it is pinged at half of it.
const IDLE: Duration = Duration::from_secs(30);
/// How long the first message (`join`) may take.
const JOIN_WAIT: Duration = Duration::from_secs(10);
/// Frames that are not a message before the connection is closed with 1008.
const MAX_BAD_FRAMES: u32 = 5;
const CLOSE_WAIT: Duration = Duration::from_secs(2);

mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED: u16 = 1003;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

pub async fn ws(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    slot: Option<axum::Extension<estuary_common::listener::HeldSlot>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    upgrade_checked(app, client, room, query, slot, upgrade, "rooms")
}

/// Checks a WebSocket request for `/<scope>/<room>` (serving, room name, `?token=` for
/// `/<scope>/<room>`), then upgrades it: a participant's connection for `rooms`, the upstream
/// end of a cascade link for `cascade` (`cascade.rs`).
pub fn upgrade_checked(
    app: Arc<App>,
    client: SocketAddr,
    room: String,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    slot: Option<axum::Extension<estuary_common::listener::HeldSlot>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    scope: &'static str,
) -> Response {
    if !app.serving.load(Ordering::SeqCst) {
        return Refusal::Draining.answer(&app, client);
    }
    if !room_ok(&room) {
        return Refusal::BadRoom.answer(&app, client);
    }
    let Ok(Query(query)) = query else {
        return refuse(
            &app,
            StatusCode::BAD_REQUEST,
            "bad_query",
            "bad query string",
        );
    };
    let token = query.get("token").map(String::as_str);
    let checked = match token {
        Some(t) => check_path_token(&app, t, &format!("/{scope}/{room}"), client),
        None => Err(estuary_common::token::Rejection::Missing),
    };
    if let Err(r) = checked {
        return Refusal::Token(r).answer(&app, client);
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let upgrade = estuary_common::ws::sized(upgrade, signal::MAX_FRAME_BYTES);
    // The connection keeps its listener slot (`[limits]`) for as long as it is open.
    let slot = slot.map(|axum::Extension(s)| s);
    let link = scope == "cascade";
    if link {
        tracing::info!(room = %room, from = %client, "A cascade link connected.");
    }
    upgrade.on_upgrade(move |socket| async move {
        connection(app, socket, room, link).await;
        drop(slot);
    })
}

/// What one frame means.
enum Frame {
    Msg(ClientMsg),
    /// Not a message: answered with an `error` frame.
    Bad(String),
    /// Nothing to do (ping, pong).
    Nothing,
    /// The end, with the close frame to send, if any.
    End(Option<(u16, &'static str)>),
}

fn frame(received: Option<Result<Message, axum::Error>>) -> Frame {
    match received {
        Some(Ok(Message::Text(text))) => match signal::parse(text.as_str()) {
            Ok(m) => Frame::Msg(m),
            Err(ParseError::TooBig) => Frame::End(Some((close::TOO_BIG, "the frame is too big"))),
            Err(e) => Frame::Bad(e.to_string()),
        },
        Some(Ok(Message::Binary(_))) => Frame::End(Some((
            close::UNSUPPORTED,
            "binary frames are not part of the protocol",
        ))),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Frame::Nothing,
        Some(Ok(Message::Close(_))) | None => Frame::End(None),
        Some(Err(e)) => {
            tracing::debug!(error = %e, "A meeting WebSocket failed.");
            Frame::End(Some((close::TOO_BIG, "the frame could not be read")))
        }
    }
}

async fn send(socket: &mut WebSocket, msg: &ServerMsg) -> bool {
    let text = msg.to_text();
    matches!(
        tokio::time::timeout(IDLE, socket.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

/// One participant's WebSocket; with `link`, a cascade link's upstream end (`cascade.rs`),
/// which is joined at once (it sends no `join`).
pub async fn connection(app: Arc<App>, mut socket: WebSocket, room: String, link: bool) {
    // hyper hands the upgraded socket over with its 8 KiB request buffer, freed by the first
    // read: read once now rather than hold it while the participant waits for its shard
    // (the chat relay measured 11-13 KiB per idle connection instead of 6-7 without this).
    let mut early = socket.recv().now_or_never();
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let mut events_tx = Some(events_tx);
    let mut peer: Option<PeerId> = None;
    let mut bad = 0u32;
    let mut stop = app.stop.clone();
    let started = tokio::time::Instant::now();
    let mut heard = started;
    let mut ticks = tokio::time::interval_at(started + IDLE / 2, IDLE / 2);
    if link {
        let joined = match events_tx.take() {
            Some(tx) => join(&app, &room, "cascade".into(), tx, true).await,
            None => Err((ErrorCode::Overloaded, String::new())),
        };
        match joined {
            Ok(id) => peer = Some(id),
            Err((code, text)) => {
                let _ = send(&mut socket, &ServerMsg::error(code, text)).await;
                let reason = "the link was refused";
                estuary_common::ws::close(
                    &mut socket,
                    close::POLICY,
                    reason,
                    CLOSE_WAIT,
                    CLOSE_WAIT,
                )
                .await;
                return;
            }
        }
    }
    let ending: Option<(u16, &'static str)> = loop {
        if let Some(received) = early.take() {
            heard = tokio::time::Instant::now();
            match frame(received) {
                Frame::Nothing => {}
                Frame::End(e) => break e,
                Frame::Bad(text) => {
                    bad += 1;
                    if bad >= MAX_BAD_FRAMES {
                        break Some((close::POLICY, "too many frames that are not messages"));
                    }
                    if !send(&mut socket, &ServerMsg::error(ErrorCode::BadMessage, text)).await {
                        break None;
                    }
                }
                Frame::Msg(ClientMsg::Join { name }) if peer.is_none() => {
                    let Some(tx) = events_tx.take() else {
                        break None;
                    };
                    match join(&app, &room, name, tx, false).await {
                        Ok(id) => {
                            peer = Some(id);
                            // The first participant here opens the room's cascade link, if
                            // the control plane ordered one.
                            crate::cascade::maybe_start(&app, &room);
                        }
                        Err((code, text)) => {
                            let _ = send(&mut socket, &ServerMsg::error(code, text)).await;
                            break Some((close::POLICY, "the join was refused"));
                        }
                    }
                }
                Frame::Msg(_) if peer.is_none() => {
                    let msg = ServerMsg::error(ErrorCode::NotJoined, "the first message is join");
                    if !send(&mut socket, &msg).await {
                        break None;
                    }
                }
                Frame::Msg(msg) => {
                    let Some(id) = peer else { break None };
                    // After `leave` the shard closes the participant: its queue ends, and so
                    // does this loop.
                    let to_shard = ShardIn::Signal { peer: id, msg };
                    if let Err(e) = shard_send(&app, &room, to_shard) {
                        let _ =
                            send(&mut socket, &ServerMsg::error(ErrorCode::Overloaded, e)).await;
                    }
                }
            }
            continue;
        }
        tokio::select! {
            changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                break Some((close::GOING_AWAY, "the SFU is shutting down"));
            },
            _ = ticks.tick() => {
                if peer.is_none() && started.elapsed() >= JOIN_WAIT {
                    break Some((close::POLICY, "no join within 10 seconds"));
                }
                if heard.elapsed() >= IDLE {
                    break Some((close::GOING_AWAY, "nothing received within the idle timeout"));
                }
                let ping = tokio::time::timeout(IDLE, socket.send(Message::Ping(axum::body::Bytes::new())));
                if !matches!(ping.await, Ok(Ok(()))) {
                    break None;
                }
            }
            out = events.recv(), if peer.is_some() => match out {
                Some(msg) => if !send(&mut socket, &msg).await { break None },
                None => break Some((close::NORMAL, "the participant left the room")),
            },
            received = socket.recv() => early = Some(received),
        }
    };
    if let Some(id) = peer {
        let _ = shard_send(&app, &room, ShardIn::Leave { peer: id });
    }
    if let Some((code, reason)) = ending {
        estuary_common::ws::close(&mut socket, code, reason, CLOSE_WAIT, CLOSE_WAIT).await;
    }
}

fn shard_send(app: &App, room: &str, msg: ShardIn) -> Result<(), &'static str> {
    let Some(shard) = app.shard_of(room) else {
        return Err("no shard");
    };
    match shard.try_send(msg) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err("the SFU is overloaded"),
    }
}

async fn join(
    app: &App,
    room: &str,
    name: String,
    events: mpsc::Sender<ServerMsg>,
    link: bool,
) -> Result<PeerId, (ErrorCode, String)> {
    let (reply, answer) = oneshot::channel();
    let msg = ShardIn::Join {
        room: room.to_owned(),
        name,
        events,
        link,
        reply,
    };
    shard_send(app, room, msg).map_err(|e| (ErrorCode::Overloaded, e.to_owned()))?;
    let result = match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(r)) => r,
        _ => Err(SessionError::Overloaded),
    };
    result.map_err(|e| {
        let code = match e {
            SessionError::RoomFull => ErrorCode::RoomFull,
            _ => ErrorCode::Overloaded,
        };
        (code, e.to_string())
    })
}
