//! The bench's WebSocket clients, all in this one process: chat relay users (a signed token
//! each, JSON text frames) and MQTT clients of mosquitto (MQTT 3.1.1 in binary frames,
//! subprotocol `mqtt`). Each connection comes from one of 127.0.0.2-127.0.0.250 in turn, and
//! once set up is driven by a task of its own that answers pings and times every message it
//! receives against the send time written into the message's body.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::mqtt;
use super::servers::{ChatServer, KEY_HEX, KEY_ID};

/// How long a connection (TCP, WebSocket handshake and the first exchange) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// MQTT keepalive: longer than any run, so the idle clients send nothing at all.
const MQTT_KEEPALIVE_SECS: u16 = 1800;

/// The first and last source address; clients take them in turn.
const FIRST_SOURCE: u8 = 2;
const LAST_SOURCE: u8 = 250;

/// The source address of client `i`: 127.0.0.2, 127.0.0.3, ... 127.0.0.250, 127.0.0.2, ...
pub fn source_addr(i: usize) -> Ipv4Addr {
    let span = usize::from(LAST_SOURCE - FIRST_SOURCE) + 1;
    // `i % span` is below 249, so the sum fits in a byte.
    Ipv4Addr::new(127, 0, 0, FIRST_SOURCE + (i % span) as u8)
}

/// How many source addresses the clients are spread over.
pub fn source_count() -> usize {
    usize::from(LAST_SOURCE - FIRST_SOURCE) + 1
}

type Ws = WebSocketStream<TcpStream>;

/// Small buffers: tungstenite's default read buffer (128 KiB) would cost the bench gigabytes
/// with fifteen thousand connections open.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

async fn tcp_from(source: Ipv4Addr, server: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .with_context(|| format!("binding to {source}"))?;
    let stream = socket
        .connect(server)
        .await
        .with_context(|| format!("connecting from {source} to {server}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The send time and sequence number the bench writes into every message body:
/// `<seq>:<microseconds since the bench's epoch>`.
pub fn stamp(seq: u32, sent_us: u64) -> String {
    format!("{seq}:{sent_us}")
}

/// The (sequence number, send time) of a body written by [`stamp`].
pub fn parse_stamp(body: &str) -> Option<(u32, u64)> {
    let (seq, us) = body.split_once(':')?;
    Some((seq.parse().ok()?, us.parse().ok()?))
}

/// A set-up client connection of either server.
pub enum Conn {
    Relay(Ws),
    Mqtt(Ws, mqtt::Decoder),
}

/// What a connection's reader saw until it was stopped.
#[derive(Debug, Default)]
pub struct Received {
    /// Receive time minus send time of each timed message, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Error frames (the relay's `error`), e.g. a refused send.
    pub errors: Vec<String>,
    /// Why the connection ended before it was stopped, if it did.
    pub ended: Option<String>,
}

/// A payload that arrived on a connection.
enum Payload {
    /// A timed message body.
    Body(String),
    /// A relay frame other than a message, with its type.
    Frame(serde_json::Value),
    /// Nothing the bench needs (a ping, an MQTT packet other than PUBLISH).
    Nothing,
}

impl Conn {
    /// Connects as relay user `user` (device `d`) with a freshly signed token.
    pub async fn relay(source: Ipv4Addr, user: &str) -> anyhow::Result<Conn> {
        let secret = estuary_common::token::decode_secret(KEY_HEX)?;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 3 * 3600;
        let claims = estuary_common::token::Claims {
            kid: KEY_ID.to_owned(),
            acl: format!("/chat/user/{user}"),
            exp,
            st: None,
            ip: None,
        };
        let token = estuary_common::token::sign(&claims, &secret);
        let url = format!(
            "ws://127.0.0.1:{}/ws?{}&device=d",
            ChatServer::Relay.port(),
            estuary_common::token::query_pair(&token)
        );
        let connect = async {
            let tcp = tcp_from(source, ChatServer::Relay.addr()).await?;
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config())).await?;
            anyhow::Ok(Conn::Relay(ws))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| anyhow::anyhow!("no WebSocket to the relay within {CONNECT_TIMEOUT:?}"))?
            .with_context(|| format!("relay user {user}"))
    }

    /// Connects to mosquitto as MQTT client `client_id` (clean session), and subscribes to
    /// `topic` at QoS 0 if given.
    pub async fn mqtt(
        source: Ipv4Addr,
        client_id: &str,
        topic: Option<&str>,
    ) -> anyhow::Result<Conn> {
        let setup = async {
            let mut request = format!("ws://127.0.0.1:{}/mqtt", ChatServer::Mosquitto.port())
                .into_client_request()?;
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                http::HeaderValue::from_static("mqtt"),
            );
            let tcp = tcp_from(source, ChatServer::Mosquitto.addr()).await?;
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(request, tcp, Some(ws_config()))
                    .await?;
            let mut conn = Conn::Mqtt(ws, mqtt::Decoder::default());
            conn.send_binary(mqtt::connect(client_id, MQTT_KEEPALIVE_SECS))
                .await?;
            match conn.next_mqtt().await? {
                mqtt::Incoming::ConnAck { return_code: 0 } => {}
                other => bail!("CONNECT answered with {other:?}"),
            }
            if let Some(topic) = topic {
                conn.send_binary(mqtt::subscribe(1, topic, 0)).await?;
                match conn.next_mqtt().await? {
                    mqtt::Incoming::SubAck {
                        packet_id: 1,
                        return_codes,
                    } if return_codes.first().is_some_and(|c| *c <= 2) => {}
                    other => bail!("SUBSCRIBE {topic} answered with {other:?}"),
                }
            }
            anyhow::Ok(conn)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, setup)
            .await
            .map_err(|_| anyhow::anyhow!("no MQTT session within {CONNECT_TIMEOUT:?}"))?
            .with_context(|| format!("MQTT client {client_id}"))
    }

    fn ws(&mut self) -> &mut Ws {
        match self {
            Conn::Relay(ws) | Conn::Mqtt(ws, _) => ws,
        }
    }

    async fn send_binary(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.ws().send(Message::Binary(bytes.into())).await?;
        Ok(())
    }

    /// Sends a relay JSON frame.
    pub async fn send_json(&mut self, frame: &serde_json::Value) -> anyhow::Result<()> {
        self.ws().send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    /// Sends one timed message: to the relay group or room, or published on the MQTT topic.
    pub async fn send_timed(&mut self, to: &Target, seq: u32, sent_us: u64) -> anyhow::Result<()> {
        let body = stamp(seq, sent_us);
        match (to, &*self) {
            (Target::Mqtt(topic), Conn::Mqtt(..)) => {
                self.send_binary(mqtt::publish_qos0(topic, body.as_bytes()))
                    .await
            }
            (Target::RelayGroup(group), Conn::Relay(_)) => {
                let frame = serde_json::json!({"type": "send", "id": format!("m{seq}"),
                    "to": {"group": group}, "body": body});
                self.send_json(&frame).await
            }
            (Target::RelayRoom(room), Conn::Relay(_)) => {
                let frame = serde_json::json!({"type": "send", "id": format!("m{seq}"),
                    "to": {"room": room}, "body": body});
                self.send_json(&frame).await
            }
            _ => bail!("a target of the other server"),
        }
    }

    /// The next MQTT packet (an error on a relay connection or when the connection ends).
    async fn next_mqtt(&mut self) -> anyhow::Result<mqtt::Incoming> {
        let Conn::Mqtt(ws, decoder) = self else {
            bail!("not an MQTT connection");
        };
        loop {
            if let Some(p) = decoder.next_packet()? {
                return Ok(p);
            }
            match ws.next().await {
                Some(Ok(Message::Binary(bytes))) => decoder.push(&bytes),
                Some(Ok(Message::Close(c))) => bail!("closed by mosquitto: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the connection ended"),
            }
        }
    }

    /// The next payload; `Ok(None)` when the connection has ended.
    async fn next_payload(&mut self) -> anyhow::Result<Option<Payload>> {
        match self {
            Conn::Mqtt(..) => match self.next_mqtt().await? {
                mqtt::Incoming::Publish { payload, .. } => Ok(Some(Payload::Body(
                    String::from_utf8_lossy(&payload).into_owned(),
                ))),
                _ => Ok(Some(Payload::Nothing)),
            },
            Conn::Relay(ws) => match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let frame: serde_json::Value = serde_json::from_str(text.as_str())
                        .with_context(|| format!("a relay frame that is not JSON: {text}"))?;
                    if frame["type"] == "message"
                        && let Some(body) = frame["body"].as_str()
                    {
                        return Ok(Some(Payload::Body(body.to_owned())));
                    }
                    Ok(Some(Payload::Frame(frame)))
                }
                Some(Ok(Message::Close(c))) => bail!("closed by the relay: {c:?}"),
                Some(Ok(_)) => Ok(Some(Payload::Nothing)),
                Some(Err(e)) => Err(e.into()),
                None => Ok(None),
            },
        }
    }

    /// Waits (up to 20 s) for the relay frame of type `kind`, skipping any other; fails on an
    /// `error` frame.
    pub async fn expect_frame(&mut self, kind: &str) -> anyhow::Result<serde_json::Value> {
        let wait = async {
            loop {
                match self.next_payload().await? {
                    Some(Payload::Frame(f)) if f["type"] == kind => return Ok(f),
                    Some(Payload::Frame(f)) if f["type"] == "error" => {
                        bail!("the relay answered {f} while the bench waited for {kind}")
                    }
                    Some(_) => {}
                    None => bail!("the connection ended while the bench waited for {kind}"),
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, wait)
            .await
            .map_err(|_| anyhow::anyhow!("no {kind} frame within {CONNECT_TIMEOUT:?}"))?
    }

    /// Reads until `stop` turns true, timing every stamped message against `epoch` and
    /// counting it in `timed`.
    async fn drive(
        mut self,
        mut stop: watch::Receiver<bool>,
        epoch: Instant,
        timed: Arc<AtomicUsize>,
    ) -> Received {
        let mut got = Received::default();
        loop {
            let payload = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                p = self.next_payload() => p,
            };
            let now_us = epoch.elapsed().as_micros() as u64;
            match payload {
                Ok(Some(Payload::Body(body))) => {
                    if let Some((_, sent_us)) = parse_stamp(&body) {
                        got.latencies_us.push(now_us.saturating_sub(sent_us));
                        timed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Some(Payload::Frame(f))) if f["type"] == "error" => {
                    got.errors.push(f.to_string());
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    got.ended = Some("the connection ended".to_owned());
                    break;
                }
                Err(e) => {
                    got.ended = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        let _ = self.ws().close(None).await;
        got
    }
}

/// Where timed messages go.
#[derive(Debug, Clone)]
pub enum Target {
    RelayGroup(String),
    RelayRoom(String),
    Mqtt(String),
}

/// Connections driven by tasks of their own, until [`Fleet::finish`].
pub struct Fleet {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Received>>,
    /// Timed messages received so far, all connections together.
    timed: Arc<AtomicUsize>,
}

impl Fleet {
    /// Hands each connection to a task that reads and times what it receives.
    pub fn drive(conns: Vec<Conn>, epoch: Instant) -> Fleet {
        let (stop, watching) = watch::channel(false);
        let timed = Arc::new(AtomicUsize::new(0));
        let tasks = conns
            .into_iter()
            .map(|c| tokio::spawn(c.drive(watching.clone(), epoch, Arc::clone(&timed))))
            .collect();
        Fleet { stop, tasks, timed }
    }

    /// Waits until the connections together have received `expected` timed messages, or
    /// `longest` has passed; returns how many they received.
    pub async fn wait_for(&self, expected: usize, longest: Duration) -> usize {
        let deadline = Instant::now() + longest;
        loop {
            let n = self.timed.load(Ordering::Relaxed);
            if n >= expected || Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Stops every reader and gathers what each saw.
    pub async fn finish(self) -> Vec<Received> {
        let _ = self.stop.send(true);
        let mut all = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            all.push(t.await.unwrap_or_else(|e| Received {
                ended: Some(format!("the reader task failed: {e}")),
                ..Received::default()
            }));
        }
        all
    }
}

/// Opens `count` connections with `open(i)` (client `i` from [`source_addr`]`(i)`), at most
/// `in_flight` at a time, and returns them in order; the first failure ends it.
pub async fn open_many<F, Fut>(count: usize, in_flight: usize, open: F) -> anyhow::Result<Vec<Conn>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Conn>>,
{
    let mut opened: Vec<(usize, Conn)> = Vec::with_capacity(count);
    let mut pending = futures_util::stream::iter(0..count)
        .map(|i| {
            let fut = open(i);
            async move {
                fut.await
                    .map(|c| (i, c))
                    .with_context(|| format!("client {} of {count}", i + 1))
            }
        })
        .buffer_unordered(in_flight.max(1));
    let started = Instant::now();
    while let Some(r) = pending.next().await {
        opened.push(r?);
        if opened.len().is_multiple_of(5000) {
            eprintln!(
                "    {} connections open ({:.1} s)",
                opened.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    opened.sort_by_key(|(i, _)| *i);
    Ok(opened.into_iter().map(|(_, c)| c).collect())
}

/// What the sender saw while it sent.
#[derive(Debug, Default)]
pub struct Sent {
    pub messages: u32,
    /// Frames the relay refused (`error`), e.g. `rate_limited`.
    pub refused: Vec<String>,
}

/// Sends `count` timed messages from `sender` to `target`, one every `interval`, reading (and
/// counting) what comes back meanwhile; then keeps reading for `drain` so that late `sent`
/// answers are not left in the socket.
pub async fn send_paced(
    mut sender: Conn,
    target: &Target,
    count: u32,
    interval: Duration,
    epoch: Instant,
) -> anyhow::Result<(Conn, Sent)> {
    let mut sent = Sent::default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while sent.messages < count {
        tokio::select! {
            _ = ticks.tick() => {
                let now_us = epoch.elapsed().as_micros() as u64;
                sender.send_timed(target, sent.messages, now_us).await?;
                sent.messages += 1;
            }
            p = sender.next_payload() => match p? {
                Some(Payload::Frame(f)) if f["type"] == "error" => sent.refused.push(f.to_string()),
                Some(_) => {}
                None => bail!("the sender's connection ended after {} messages", sent.messages),
            },
        }
    }
    Ok((sender, sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_cycle_over_249_loopback_addresses() {
        assert_eq!(source_addr(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(248), Ipv4Addr::new(127, 0, 0, 250));
        assert_eq!(source_addr(249), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_count(), 249);
    }

    #[test]
    fn stamps_round_trip_and_garbage_is_ignored() {
        assert_eq!(parse_stamp(&stamp(7, 123_456)), Some((7, 123_456)));
        assert_eq!(parse_stamp("hello"), None);
        assert_eq!(parse_stamp("1:x"), None);
        assert_eq!(parse_stamp(":"), None);
    }
}
