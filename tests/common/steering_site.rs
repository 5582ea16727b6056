//! A steering service for the black-box tests: its config, coverage zones, an optional state
//! file, and the real `estuary steering` process.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{EdgeProcess, KEY_HEX, TempDir, free_port, start_service};

pub struct SteeringSite {
    pub dir: TempDir,
    pub http: SocketAddr,
    /// The `[control_plane]` table's body.
    pub source: String,
    /// The coverage zone file's JSON (none when empty).
    pub coverage: String,
    /// Keys of the `[steering]` table.
    pub steering: String,
    /// The geo-DNS address (UDP and TCP) and the `[dns]` table's body, when DNS is served.
    pub dns: Option<(SocketAddr, String)>,
    /// The `[node]` table, when it registers with a control plane.
    pub node: String,
}

impl SteeringSite {
    pub fn new(name: &str) -> Self {
        Self {
            dir: TempDir::new(name),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            source: String::new(),
            coverage: String::new(),
            steering: String::new(),
            dns: None,
            node: String::new(),
        }
    }

    /// Serves the geo-DNS for `zone` on a fresh loopback port, with extra `[dns]` keys.
    pub fn with_dns(&mut self, zone: &str, keys: &str) -> SocketAddr {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        self.dns = Some((addr, format!("zone = \"{zone}\"\n{keys}")));
        addr
    }

    /// Steers from a static state file with this JSON.
    pub fn with_state_file(&mut self, snapshot: &serde_json::Value) {
        let path = self.dir.path().join("sites.json");
        std::fs::write(&path, serde_json::to_vec_pretty(snapshot).expect("json")).expect("write");
        self.source = "state_file = \"sites.json\"\n".into();
    }

    /// Steers from a control plane's live state feed, and registers with it as node
    /// `steering-test` of site `lab`.
    pub fn with_control_plane(&mut self, url: &str, token: &str) {
        self.source = format!(
            "url = \"{url}\"\ntoken = \"{token}\"\npoll_wait = \"20s\"\ninterval = \"1s\"\n"
        );
        self.node = "[node]\nid = \"steering-test\"\nsite = \"lab\"\n".into();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `GET /v1/playback/<asset>`: its status and the node ids of the edges offered, in
    /// their order.
    pub fn playback_edges(&self, asset: &str) -> (u16, Vec<String>, serde_json::Value) {
        self.ranked_nodes(&format!("/v1/playback/{asset}"), "edges")
    }

    /// `GET /v1/chat/relays?client=<client>`: its status, the relays' node ids in their
    /// order, and the whole answer.
    pub fn chat_relays(&self, client: &str) -> (u16, Vec<String>, serde_json::Value) {
        self.ranked_nodes(&format!("/v1/chat/relays?client={client}"), "relays")
    }

    /// GETs `path`: its status, the `node` of each entry of the answer's `list`, and the
    /// whole answer.
    fn ranked_nodes(&self, path: &str, list: &str) -> (u16, Vec<String>, serde_json::Value) {
        let (status, _, body) = super::fetch(&self.url(path), &[]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let ids = v[list]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["node"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        (status, ids, v)
    }

    pub fn write_config(&self) -> PathBuf {
        let geo = if self.coverage.is_empty() {
            String::new()
        } else {
            std::fs::write(self.dir.path().join("coverage.json"), &self.coverage).expect("write");
            "coverage_zones = \"coverage.json\"\n".to_owned()
        };
        let (dns_listen, dns_table) = match &self.dns {
            Some((addr, keys)) => (format!("dns = \"{addr}\"\n"), format!("[dns]\n{keys}\n")),
            None => (String::new(), String::new()),
        };
        let text = format!(
            "{}[listen]\nhttp = \"{}\"\n{dns_listen}[control_plane]\n{}[geo]\n{geo}[tokens]\nkid = \"k1\"\nkey = \"{KEY_HEX}\"\nttl = \"1h\"\n[steering]\n{}\n{dns_table}[shutdown]\ndrain_timeout = \"2s\"\n",
            self.node, self.http, self.source, self.steering
        );
        let path = self.dir.path().join("steering.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Starts the service and waits until `/readyz` answers 200 (a snapshot is loaded).
    pub fn start(&self) -> EdgeProcess {
        let config = self.write_config();
        start_service("steering", &config, self.http, self.dir.path())
    }
}
