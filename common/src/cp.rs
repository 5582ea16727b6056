//! The control plane's wire types: what nodes send in their heartbeats, and the versioned
//! state snapshot the control plane serves to steering and operators. Every service that
//! talks to the control plane uses these, so they live here and only here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Edge,
    Origin,
    Steering,
    ChatRelay,
    Sfu,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Origin => "origin",
            Role::Steering => "steering",
            Role::ChatRelay => "chat-relay",
            Role::Sfu => "sfu",
        }
    }
}

/// Where a node can be reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Addresses {
    /// Base URL for plain HTTP, for example `http://10.0.0.5:80`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Base URL for HTTPS (and HTTP/3 on the same port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<String>,
    /// Base URL of `/metrics`, `/healthz` and `/readyz`, polled by the health monitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
}

/// What a node can carry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Network capacity in Gb/s.
    #[serde(default)]
    pub gbps: f64,
    /// Disk for content and cache, in bytes.
    #[serde(default)]
    pub disk_bytes: u64,
}

/// Load at the time of a heartbeat (rates over the last interval).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    #[serde(default)]
    pub bytes_per_second: f64,
    #[serde(default)]
    pub requests_per_second: f64,
    #[serde(default)]
    pub connections: u64,
    /// Share of all cores used by the process, 0..1.
    #[serde(default)]
    pub cpu: f64,
    /// SFUs: rooms open now (absent from other nodes' beats and from older SFUs': 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rooms: u64,
    /// SFUs: WebRTC peers (publishers and watchers) connected or connecting now.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub peers: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Cache and disk use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    #[serde(default)]
    pub disk_used_bytes: u64,
    #[serde(default)]
    pub cache_hit_ratio: f64,
}

/// A node's heartbeat: who it is, how it is, and what it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub node: String,
    pub site: String,
    pub role: Role,
    #[serde(default)]
    pub addresses: Addresses,
    #[serde(default)]
    pub capacity: Capacity,
    /// The node's own view of its readiness (its `/readyz`).
    pub ready: bool,
    #[serde(default)]
    pub load: Load,
    #[serde(default)]
    pub usage: Usage,
    /// Software version.
    #[serde(default)]
    pub version: String,
    /// Pre-positioned assets this node holds or is filling (edges).
    #[serde(default)]
    pub inventory: Vec<InventoryItem>,
    /// SFUs: the names of the rooms open now (at most [`MAX_BEAT_ROOMS`]); the control plane
    /// keeps a meeting on its SFU while the SFU lists its room.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    /// Which process sent it: made at random when the heartbeat loop starts
    /// ([`heartbeat_loop`] fills it in). The control plane refuses a second live process
    /// claiming the same node id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// The process is stopping: the last heartbeat it sends, which releases its node id at
    /// once (a restarted process is not taken for a second one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

impl Heartbeat {
    /// Checks every figure and text a node reports against its range (a hostile node must not
    /// put NaN, negative or absurd figures into placement and steering, nor megabytes of text
    /// into the registry); `Err` names the field.
    pub fn check(&self) -> Result<(), String> {
        let figure = |name: &str, v: f64, max: f64| {
            if v.is_finite() && (0.0..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be a number from 0 to {max}"))
            }
        };
        figure("capacity.gbps", self.capacity.gbps, 10_000.0)?;
        figure("load.bytes_per_second", self.load.bytes_per_second, 1e13)?;
        figure(
            "load.requests_per_second",
            self.load.requests_per_second,
            1e9,
        )?;
        figure("load.cpu", self.load.cpu, 1.0)?;
        if self.load.rooms > 10_000_000 || self.load.peers > 10_000_000 {
            return Err("load.rooms and load.peers must be at most 10000000".into());
        }
        figure("usage.cache_hit_ratio", self.usage.cache_hit_ratio, 1.0)?;
        for (name, v) in [
            ("addresses.http", &self.addresses.http),
            ("addresses.https", &self.addresses.https),
            ("addresses.admin", &self.addresses.admin),
        ] {
            if let Some(v) = v
                && (v.len() > 512
                    || !(v.starts_with("http://") || v.starts_with("https://"))
                    || !v.bytes().all(|b| b.is_ascii_graphic()))
            {
                return Err(format!(
                    "{name} must be an http(s) base URL of at most 512 bytes"
                ));
            }
        }
        let short = |name: &str, v: &str| {
            if v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()) {
                Ok(())
            } else {
                Err(format!("{name}: at most 64 printable characters"))
            }
        };
        short("version", &self.version)?;
        short("instance", &self.instance)?;
        if self.rooms.len() > MAX_BEAT_ROOMS {
            return Err(format!("rooms: at most {MAX_BEAT_ROOMS} names"));
        }
        if !self.rooms.iter().all(|r| crate::config::name_ok(r)) {
            return Err("rooms: a room name is 1-64 of A-Z a-z 0-9 - _ .".into());
        }
        if self.inventory.len() > 100_000 {
            return Err("inventory: at most 100000 assets".into());
        }
        for item in &self.inventory {
            if !crate::asset::valid_asset_id(&item.asset) {
                return Err("inventory: an asset id is not valid".into());
            }
            if !matches!(item.state.as_str(), "present" | "filling" | "failed") {
                return Err("inventory: state is present, filling or failed".into());
            }
            if item.error.as_ref().is_some_and(|e| e.len() > 4096) {
                return Err("inventory: an error is at most 4096 bytes".into());
            }
        }
        Ok(())
    }
}

/// The most room names one SFU heartbeat lists.
pub const MAX_BEAT_ROOMS: usize = 10_000;

/// Great-circle distance in km between two (latitude, longitude) points: the one "nearest
/// site" measure, used by steering and by the control plane's meeting placement.
pub fn haversine_km(a: [f64; 2], b: [f64; 2]) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a[0].to_radians(),
        a[1].to_radians(),
        b[0].to_radians(),
        b[1].to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().clamp(0.0, 1.0).asin()
}

/// One pre-positioned asset on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryItem {
    pub asset: String,
    /// `present` (every file verified against `asset.json`), `filling`, or `failed`.
    pub state: String,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An asset a node is to hold: where to fetch it from, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub asset: String,
    /// Base URLs: same-site peers that hold it first, then origins.
    pub sources: Vec<String>,
    /// The Merkle root of the signed `asset.json` the control plane placed: the edge fills
    /// that version only (a source offering another, even validly signed, is passed over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merkle_root: Option<String>,
}

/// The control plane's answer to a heartbeat. (Each node beats at its own
/// `[control_plane] interval`; the control plane does not set the pace.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The state version after this heartbeat.
    pub state_version: u64,
    /// Assets this node should hold (edges fill the ones they lack).
    #[serde(default)]
    pub assignments: Vec<Assignment>,
    /// Assets this node should drop.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A site: a group of nodes in one place.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Its name; in `PUT /v1/sites/<name>` it may be left out (the path names the site).
    #[serde(default)]
    pub name: String,
    /// Latitude and longitude, for "nearest site" choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<[f64; 2]>,
    /// Client networks (CIDRs) this site serves first.
    #[serde(default)]
    pub coverage: Vec<String>,
}

/// One node as the state snapshot shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub id: String,
    pub site: String,
    pub role: Role,
    pub addresses: Addresses,
    pub capacity: Capacity,
    /// The control plane's verdict: the node answers its health checks and heartbeats.
    pub up: bool,
    /// Why it is down, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_reason: Option<String>,
    /// Why the node is `up` although its own verdict is down: the panic threshold keeps it
    /// in rotation (missing heartbeats alone took too many of its site's or the fleet's
    /// edges out at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_up: Option<String>,
    /// Unix seconds of the last heartbeat.
    pub last_heartbeat: u64,
    pub load: Load,
    /// Load as the control plane measured it itself, from two polls of the node's
    /// `/metrics` (bytes and requests per second served, open connections); `None` until two
    /// polls have succeeded. Heartbeats are the node's word, this is the monitor's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polled_load: Option<Load>,
    pub usage: Usage,
    pub version: String,
    /// Assets present on the node (pre-positioned and verified).
    #[serde(default)]
    pub assets: Vec<String>,
}

/// The versioned snapshot served at `GET /v1/state`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateSnapshot {
    /// Grows by one with every change anybody would act on (a node up or down, a node or site
    /// added or changed). Load figures alone do not bump it.
    pub version: u64,
    /// Unix seconds when the snapshot was made.
    pub generated_at: u64,
    pub sites: BTreeMap<String, Site>,
    pub nodes: BTreeMap<String, NodeState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_one_url_or_a_list_and_fail_over_in_turn() {
        let list = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(check_replica_urls("http://a", &[]).is_ok());
        assert!(check_replica_urls("", &list(&["http://a", "https://b"])).is_ok());
        let key = |url: &str, urls: &[&str]| {
            check_replica_urls(url, &list(urls))
                .expect_err("refused")
                .key
                .clone()
        };
        assert_eq!(key("", &[]), "control_plane.url");
        assert_eq!(key("http://a", &["http://b"]), "control_plane.urls");
        assert_eq!(key("ftp://a", &[]), "control_plane.url");
        assert_eq!(key("", &["http://a", "nope"]), "control_plane.urls[1]");
        assert_eq!(key("", &["http://a", "http://a"]), "control_plane.urls[1]");

        let r = Replicas::new(list(&["http://a/", "http://b"]));
        assert_eq!(r.current(), (0, "http://a"));
        // Two requests fail on replica 0 at once: one move, not two.
        assert_eq!(r.fail_over(0), (1, "http://b"));
        assert_eq!(r.fail_over(0), (1, "http://b"));
        assert_eq!(r.fail_over(1), (0, "http://a"));
    }

    #[test]
    fn heartbeats_round_trip_and_refuse_unknown_keys() {
        let hb = Heartbeat {
            node: "edge-1".into(),
            site: "lab".into(),
            role: Role::Edge,
            addresses: Addresses {
                http: Some("http://127.0.0.1:8080".into()),
                ..Addresses::default()
            },
            capacity: Capacity::default(),
            ready: true,
            load: Load::default(),
            usage: Usage::default(),
            version: "0.1.0".into(),
            inventory: vec![],
            rooms: vec![],
            instance: "4f1c".into(),
            leaving: false,
        };
        let text = serde_json::to_string(&hb).expect("json");
        assert!(text.contains("\"role\":\"edge\""));
        assert_eq!(serde_json::from_str::<Heartbeat>(&text).expect("parse"), hb);
        let extra = text.replacen('{', "{\"x\":1,", 1);
        assert!(serde_json::from_str::<Heartbeat>(&extra).is_err());
    }

    #[test]
    fn an_sfu_beat_carries_rooms_and_peers_and_older_beats_still_parse() {
        let older = r#"{"node":"sfu-1","site":"lab","role":"sfu","ready":true,"load":{"connections":2,"cpu":0.5}}"#;
        let hb: Heartbeat = serde_json::from_str(older).expect("older beat");
        assert_eq!((hb.load.rooms, hb.load.peers), (0, 0));
        let mut hb = hb;
        hb.load.rooms = 3;
        hb.load.peers = 7;
        let text = serde_json::to_string(&hb).expect("json");
        assert!(
            text.contains("\"rooms\":3") && text.contains("\"peers\":7"),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Heartbeat>(&text).expect("parse"), hb);
        assert!(hb.check().is_ok());
        // Room names travel too (the control plane keeps meetings by them), bounded and
        // checked like every name.
        hb.rooms = vec!["m-1".into(), "lobby".into()];
        let text = serde_json::to_string(&hb).expect("json");
        assert!(text.contains("\"rooms\":[\"m-1\",\"lobby\"]"), "{text}");
        assert_eq!(serde_json::from_str::<Heartbeat>(&text).expect("parse"), hb);
        assert!(hb.check().is_ok());
        hb.rooms = vec!["a room".into()];
        assert!(hb.check().is_err());
        hb.rooms = vec!["r".into(); MAX_BEAT_ROOMS + 1];
        assert!(hb.check().is_err());
        hb.rooms.clear();
        hb.load.peers = 10_000_001;
        assert!(hb.check().is_err());
        // Nodes without rooms leave the fields out, so an older control plane still reads them.
        let edge = Heartbeat {
            role: Role::Edge,
            load: Load::default(),
            ..hb
        };
        assert!(
            !serde_json::to_string(&edge)
                .expect("json")
                .contains("rooms")
        );
    }
}

/// `[control_plane]` in a node's config: where to register and send heartbeats. Without it a
/// node runs standalone.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The control plane's base URL, for example `http://10.0.0.2:7000`.
    #[serde(default)]
    pub url: String,
    /// Instead of `url`: every control-plane replica's base URL. Heartbeats go to one and
    /// move to the next when it fails (refused, timed out, or 5xx).
    #[serde(default)]
    pub urls: Vec<String>,
    /// A PEM bundle of CA certificates trusted for `https://` control-plane URLs, besides
    /// the system's roots (a private CA).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// This node's own credential (its `[auth.nodes.<id>] token` on the control plane; at
    /// least 32 characters), or, deprecated, its site's token from `[auth.node_tokens]` (edges
    /// only). Edges also accept it for purges sent by the control plane.
    pub token: String,
    /// Time between two heartbeats.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: std::time::Duration,
    /// The addresses other nodes, steering and the health monitor use to reach this node
    /// (default: the listen addresses, which is right only when they are not wildcards).
    #[serde(default)]
    pub advertise: Addresses,
    /// Network capacity in Gb/s, for placement and steering weights.
    #[serde(default = "default_gbps")]
    pub capacity_gbps: f64,
    /// Disk for pre-positioned content ("2TiB"); placement and the popularity plan keep
    /// within it. Unset: unknown (no limit is applied).
    #[serde(default)]
    pub store_capacity: Option<bytesize::ByteSize>,
}

/// `[control_plane] interval` when unset, for every node.
pub const DEFAULT_HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// `[control_plane] capacity_gbps` when unset, for every node.
pub const DEFAULT_CAPACITY_GBPS: f64 = 10.0;

fn default_interval() -> std::time::Duration {
    DEFAULT_HEARTBEAT_INTERVAL
}
fn default_gbps() -> f64 {
    DEFAULT_CAPACITY_GBPS
}

impl ClientConfig {
    /// The replicas' base URLs, from `url` or `urls`.
    pub fn replica_urls(&self) -> Vec<String> {
        if self.urls.is_empty() {
            vec![self.url.clone()]
        } else {
            self.urls.clone()
        }
    }

    /// Checks the URL, token and interval; `Err` names the key (under `control_plane.`).
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        use crate::config::ConfigError;
        check_replica_urls(&self.url, &self.urls)?;
        if let Some(ca) = &self.ca_file {
            crate::http::root_store(Some(ca))
                .map_err(|e| ConfigError::new("control_plane.ca_file", e.to_string()))?;
        }
        if self.token.len() < 16 {
            return Err(ConfigError::new(
                "control_plane.token",
                "must be at least 16 characters",
            ));
        }
        if self.interval < std::time::Duration::from_secs(1)
            || self.interval > std::time::Duration::from_secs(300)
        {
            return Err(ConfigError::new(
                "control_plane.interval",
                "must be between 1s and 5min",
            ));
        }
        if !(self.capacity_gbps > 0.0 && self.capacity_gbps < 10_000.0) {
            return Err(ConfigError::new(
                "control_plane.capacity_gbps",
                "must be above 0 and below 10000",
            ));
        }
        for (key, v) in [
            ("http", &self.advertise.http),
            ("https", &self.advertise.https),
            ("admin", &self.advertise.admin),
        ] {
            if let Some(v) = v
                && !(v.starts_with("http://") || v.starts_with("https://"))
            {
                return Err(ConfigError::new(
                    format!("control_plane.advertise.{key}"),
                    "must be an http:// or https:// base URL",
                ));
            }
        }
        Ok(())
    }
}

/// Sends heartbeats to the control plane every `interval` until `stop` turns true. `make`
/// builds each heartbeat (it is called once per beat, so its figures are current). A control
/// plane that cannot be reached costs a log line, never the node's service: the node keeps
/// serving on what it has.
pub async fn heartbeat_loop(
    config: ClientConfig,
    mut make: impl FnMut() -> Heartbeat + Send + 'static,
    mut on_reply: impl FnMut(HeartbeatReply) + Send + 'static,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = match crate::http::HttpClient::new(crate::http::ClientOptions {
        timeout: std::time::Duration::from_secs(5),
        max_body: 4 << 20,
        ca_file: config.ca_file.clone(),
        ..Default::default()
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "No heartbeat can be sent: the HTTP client cannot be set up.");
            return;
        }
    };
    let replicas = Replicas::new(config.replica_urls());
    let instance = new_instance_id();
    let auth = format!("Bearer {}", config.token);
    // One heartbeat as a request to one replica, with this node's credential.
    let post = |base: &str, beat: &Heartbeat| {
        crate::http::request(
            http::Method::POST,
            &format!("{base}/v1/heartbeat"),
            &[
                (http::header::CONTENT_TYPE, "application/json"),
                (http::header::AUTHORIZATION, &auth),
            ],
            bytes::Bytes::from(serde_json::to_vec(beat).unwrap_or_default()),
        )
    };
    // Err((reason, try another replica)).
    let send = async |base: &str, beat: &Heartbeat| -> Result<HeartbeatReply, (String, bool)> {
        let r = post(base, beat).map_err(|e| (e.to_string(), false))?;
        match client.send(r).await {
            Ok(resp) if resp.status().is_success() => {
                serde_json::from_slice::<HeartbeatReply>(resp.body())
                    .map_err(|e| (format!("unreadable reply: {e}"), true))
            }
            // A refusal (4xx) speaks for every replica; a 5xx is this replica's trouble.
            Ok(resp) => Err((
                format!("answered {}", resp.status()),
                resp.status().is_server_error(),
            )),
            Err(e) => Err((e.to_string(), true)),
        }
    };
    let mut failures: u64 = 0;
    loop {
        let mut beat = make();
        beat.instance = instance.clone();
        // The current replica, then each other one once.
        let mut outcome = Err(String::new());
        for _ in 0..replicas.len() {
            let (i, base) = replicas.current();
            match send(base, &beat).await {
                Ok(reply) => {
                    on_reply(reply);
                    outcome = Ok(());
                    break;
                }
                Err((e, next)) => {
                    outcome = Err(e.clone());
                    if !next || replicas.len() == 1 {
                        break;
                    }
                    let (_, to) = replicas.fail_over(i);
                    tracing::warn!(from = %base, to = %to, error = %e,
                        "A control-plane replica failed a heartbeat; heartbeats go to the next one.");
                }
            }
        }
        let url = replicas.current().1;
        match outcome {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(url = %url, "The control plane is reachable again.");
                }
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                // The first failure and then one in twenty: a long outage does not flood the log.
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(url = %url, error = %e, failures,
                        "A heartbeat to the control plane failed; serving goes on with what this node has.");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            // The last word: release the node id, so that this node's next process is not
            // refused as a second live one. Best effort, and brief.
            let mut beat = make();
            beat.instance = instance;
            beat.ready = false;
            beat.leaving = true;
            if let Ok(r) = post(replicas.current().1, &beat) {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), client.send(r)).await;
            }
            return;
        }
    }
}

/// Checks `[control_plane] url` / `urls`: exactly one of them, each an http(s) URL, no
/// duplicates, at most 16.
pub fn check_replica_urls(url: &str, urls: &[String]) -> Result<(), crate::config::ConfigError> {
    use crate::config::ConfigError;
    let http = |u: &str| u.starts_with("http://") || u.starts_with("https://");
    match (url.is_empty(), urls.is_empty()) {
        (false, false) => Err(ConfigError::new(
            "control_plane.urls",
            "give url (one control plane) or urls (its replicas), not both",
        )),
        (true, true) => Err(ConfigError::new(
            "control_plane.url",
            "required: the control plane's base URL (or urls = [...] for its replicas)",
        )),
        (false, true) if !http(url) => Err(ConfigError::new(
            "control_plane.url",
            "must be an http:// or https:// URL",
        )),
        (false, true) => Ok(()),
        (true, false) => {
            if urls.len() > 16 {
                return Err(ConfigError::new(
                    "control_plane.urls",
                    "at most 16 replicas",
                ));
            }
            for (i, u) in urls.iter().enumerate() {
                if !http(u) {
                    return Err(ConfigError::new(
                        format!("control_plane.urls[{i}]"),
                        "must be an http:// or https:// URL",
                    ));
                }
                if urls[..i].contains(u) {
                    return Err(ConfigError::new(
                        format!("control_plane.urls[{i}]"),
                        "listed twice",
                    ));
                }
            }
            Ok(())
        }
    }
}

/// The control plane's replicas as a client sees them: requests go to the current one; when
/// it fails, the next becomes current (and stays so: no flapping back while it works).
#[derive(Debug)]
pub struct Replicas {
    urls: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
}

impl Replicas {
    /// From base URLs (a trailing `/` is dropped); at least one.
    pub fn new(urls: Vec<String>) -> Self {
        let mut urls: Vec<String> = urls
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect();
        if urls.is_empty() {
            urls.push(String::new());
        }
        Self {
            urls,
            current: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The current replica: its index and base URL.
    pub fn current(&self) -> (usize, &str) {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.urls.len();
        (i, &self.urls[i])
    }

    /// After a failure of replica `index`: the next one becomes current, unless another
    /// request moved on already. The new current replica.
    pub fn fail_over(&self, index: usize) -> (usize, &str) {
        let next = (index + 1) % self.urls.len();
        let _ = self.current.compare_exchange(
            index,
            next,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.current()
    }
}

/// A process's heartbeat instance id: 16 hex digits from the time, the process id and the
/// standard library's random hash keys. Unique, not secret.
fn new_instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:016x}", h.finish())
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat`; 0 when it cannot
/// be read. Heartbeats turn two readings into a share of the machine's cores.
pub fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

/// The unit of `/proc/self/stat`'s times: `sysconf(_SC_CLK_TCK)`, which the kernel chooses
/// (usually 100, but not on every build), never assumed.
fn clock_ticks_per_second() -> f64 {
    match rustix::param::clock_ticks_per_second() {
        0 => 100.0,
        hz => hz as f64,
    }
}

#[cfg(test)]
mod cpu_tests {
    #[test]
    fn cpu_time_is_counted_in_the_kernels_clock_ticks() {
        // SAFETY: sysconf only reads a configuration value.
        #[allow(unsafe_code)]
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        assert!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
        assert_eq!(super::clock_ticks_per_second(), hz as f64);
    }
}

/// Tracks the process's CPU share between two heartbeats.
#[derive(Debug)]
pub struct CpuMeter {
    last: (std::time::Instant, f64),
    cores: f64,
}

impl Default for CpuMeter {
    fn default() -> Self {
        Self {
            last: (std::time::Instant::now(), process_cpu_seconds()),
            cores: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
        }
    }
}

impl CpuMeter {
    /// The share of all cores used since the previous call (0..1).
    pub fn share(&mut self) -> f64 {
        let now = (std::time::Instant::now(), process_cpu_seconds());
        let wall = now.0.duration_since(self.last.0).as_secs_f64();
        let used = now.1 - self.last.1;
        self.last = now;
        if wall <= 0.0 {
            return 0.0;
        }
        (used / wall / self.cores).clamp(0.0, 1.0)
    }
}
