//! Signaling for the load: Estuary's WHIP/WHEP (the peer offers), Janus VideoRoom over its
//! REST API (a publisher offers; Janus offers to a subscriber, which answers), with one
//! Janus session per peer and its events read by long poll.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use estuary_common::http::{ClientOptions, HttpClient, request};
use http::Method;
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind};

use super::peers::{Peer, Role, Shared};
use super::servers::{KEY_HEX, KEY_ID, SfuServer};

pub fn client() -> anyhow::Result<HttpClient> {
    Ok(HttpClient::new(ClientOptions {
        timeout: Duration::from_secs(60),
        ..ClientOptions::default()
    })?)
}

fn room_token(room: &str) -> String {
    let exp = estuary_common::unix_now() + 3600;
    let key = (0..KEY_HEX.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&KEY_HEX[i..i + 2], 16).ok())
        .collect::<Vec<u8>>();
    estuary_common::token::sign(
        &estuary_common::token::Claims {
            kid: KEY_ID.into(),
            acl: format!("/rooms/{room}"),
            exp,
            st: None,
            ip: None,
        },
        &key,
    )
}

/// Estuary: `POST /<kind>/<room>` with the offer; the answer.
async fn post_sdp(
    http: &HttpClient,
    kind: &str,
    room: &str,
    sdp: String,
) -> anyhow::Result<String> {
    let url = format!("{}/{kind}/{room}", SfuServer::Estuary.base_url());
    let auth = format!("Bearer {}", room_token(room));
    let r = http
        .send(request(
            Method::POST,
            &url,
            &[
                (http::header::AUTHORIZATION, &auth),
                (http::header::CONTENT_TYPE, "application/sdp"),
            ],
            Bytes::from(sdp),
        )?)
        .await?;
    if r.status() != http::StatusCode::CREATED {
        bail!(
            "{url}: {} {}",
            r.status(),
            String::from_utf8_lossy(r.body()).trim()
        );
    }
    Ok(String::from_utf8_lossy(r.body()).into_owned())
}

/// Estuary: a WHIP publisher of audio and video in `room`.
pub async fn estuary_publisher(
    shared: &Shared,
    http: &HttpClient,
    room: &str,
) -> anyhow::Result<(Peer, Role)> {
    let mut peer = Peer::new(shared).await?;
    let mut api = peer.rtc.sdp_api();
    let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let video = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().context("an empty offer")?;
    let answer = post_sdp(http, "whip", room, offer.to_sdp_string()).await?;
    peer.rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer)?)?;
    Ok((peer, Role::Publisher { audio, video }))
}

/// Estuary: a WHEP subscriber with an audio and a video m-line per publisher.
pub async fn estuary_subscriber(
    shared: &Shared,
    http: &HttpClient,
    room: &str,
    publishers: usize,
) -> anyhow::Result<(Peer, Role)> {
    let mut peer = Peer::new(shared).await?;
    let mut api = peer.rtc.sdp_api();
    for _ in 0..publishers {
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    }
    let (offer, pending) = api.apply().context("an empty offer")?;
    let answer = post_sdp(http, "whep", room, offer.to_sdp_string()).await?;
    peer.rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer)?)?;
    Ok((peer, Role::Subscriber))
}

/// One Janus session with one VideoRoom handle.
struct Janus<'a> {
    http: &'a HttpClient,
    session: u64,
    handle: u64,
    tx: u64,
}

impl<'a> Janus<'a> {
    async fn post(http: &HttpClient, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", SfuServer::Janus.base_url());
        let r = http
            .send(request(
                Method::POST,
                &url,
                &[(http::header::CONTENT_TYPE, "application/json")],
                Bytes::from(body.to_string()),
            )?)
            .await?;
        let v: Value =
            serde_json::from_slice(r.body()).with_context(|| format!("{url}: not JSON"))?;
        if v["janus"] == "error" {
            bail!("{url}: {v}");
        }
        Ok(v)
    }

    async fn open(http: &'a HttpClient) -> anyhow::Result<Self> {
        let v = Self::post(http, "", &json!({"janus": "create", "transaction": "c"})).await?;
        let session = v["data"]["id"].as_u64().context("no session id")?;
        let v = Self::post(
            http,
            &format!("/{session}"),
            &json!({"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": "a"}),
        )
        .await?;
        let handle = v["data"]["id"].as_u64().context("no handle id")?;
        Ok(Self {
            http,
            session,
            handle,
            tx: 0,
        })
    }

    async fn message(&mut self, body: Value, jsep: Option<Value>) -> anyhow::Result<Value> {
        self.tx += 1;
        let mut m =
            json!({"janus": "message", "transaction": format!("m{}", self.tx), "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        Self::post(self.http, &format!("/{}/{}", self.session, self.handle), &m).await
    }

    /// Says that every candidate of ours was in the SDP (Janus otherwise waits for trickled
    /// ones).
    async fn candidates_done(&mut self) -> anyhow::Result<()> {
        self.tx += 1;
        let m = json!({"janus": "trickle", "transaction": format!("t{}", self.tx),
                       "candidate": {"completed": true}});
        Self::post(self.http, &format!("/{}/{}", self.session, self.handle), &m).await?;
        Ok(())
    }

    /// The next plugin event (with `plugindata`), by long poll.
    async fn event(&self) -> anyhow::Result<Value> {
        let url = format!("{}/{}?maxev=1", SfuServer::Janus.base_url(), self.session);
        for _ in 0..20 {
            let r = self.http.get(&url, &[]).await?;
            let v: Value = serde_json::from_slice(r.body()).unwrap_or(Value::Null);
            let events = match v {
                Value::Array(a) => a,
                other => vec![other],
            };
            for e in events {
                if e["janus"] == "event" && !e["plugindata"].is_null() {
                    if let Some(err) = e["plugindata"]["data"]["error"].as_str() {
                        bail!("Janus: {err}");
                    }
                    return Ok(e);
                }
            }
        }
        bail!("no event from Janus")
    }
}

/// Janus: a VideoRoom publisher in room `room`; its feed id.
pub async fn janus_publisher(
    shared: &Shared,
    http: &HttpClient,
    room: u64,
    name: &str,
) -> anyhow::Result<(Peer, Role, u64)> {
    let mut j = Janus::open(http).await?;
    let mut peer = Peer::new(shared).await?;
    let mut api = peer.rtc.sdp_api();
    let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let video = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().context("an empty offer")?;
    j.message(
        json!({"request": "joinandconfigure", "room": room, "ptype": "publisher", "display": name,
               "audio": true, "video": true}),
        Some(json!({"type": "offer", "sdp": offer.to_sdp_string()})),
    )
    .await?;
    let e = j.event().await?;
    let feed = e["plugindata"]["data"]["id"]
        .as_u64()
        .context("no feed id")?;
    let sdp = e["jsep"]["sdp"].as_str().context("no answer from Janus")?;
    if std::env::var_os("ESTUARY_BENCH_DEBUG").is_some() {
        eprintln!("offer:\n{}\nJanus answer:\n{sdp}", offer.to_sdp_string());
    }
    peer.rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(sdp)?)?;
    Ok((peer, Role::Publisher { audio, video }, feed))
}

/// Janus: a VideoRoom subscriber of `feeds` (one handle, every feed's streams).
pub async fn janus_subscriber(
    shared: &Shared,
    http: &HttpClient,
    room: u64,
    feeds: &[u64],
) -> anyhow::Result<(Peer, Role)> {
    let mut j = Janus::open(http).await?;
    let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
    j.message(
        json!({"request": "join", "room": room, "ptype": "subscriber", "streams": streams}),
        None,
    )
    .await?;
    let e = j.event().await?;
    let sdp = e["jsep"]["sdp"].as_str().context("no offer from Janus")?;
    let mut peer = Peer::new(shared).await?;
    let answer = peer
        .rtc
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(sdp)?)?;
    j.message(
        json!({"request": "start"}),
        Some(json!({"type": "answer", "sdp": answer.to_sdp_string()})),
    )
    .await?;
    j.candidates_done().await?;
    Ok((peer, Role::Subscriber))
}
