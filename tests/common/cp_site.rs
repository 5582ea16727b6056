//! A control plane for the black-box tests: its config and the real `estuary control-plane`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{EdgeProcess, Site, TempDir, fetch, free_port, run, spawn_service, start_service};

/// The token edges accept for purges (their `[admin.tokens]`), presented by the control plane.
pub const PURGE: &str = "0123456789abcdef-operator";
pub const OPS: &str = "operator-token-0123456789";
pub const LAB: &str = "lab-node-token-0123456789";
pub const OTHER: &str = "other-site-token-0123456789";

/// Nodes with their own credential (`[auth.nodes]`): id, site, role. Edges not listed use
/// the deprecated site tokens `LAB` and `OTHER`.
pub const NODES: &[(&str, &str, &str)] = &[
    ("origin-test", "lab", "origin"),
    ("steering-test", "lab", "steering"),
    ("edge-a1", "a", "edge"),
    ("edge-b1", "b", "edge"),
    ("edge-own", "lab", "edge"),
    ("relay-test", "lab", "chat-relay"),
    ("relay-paris", "paris", "chat-relay"),
    ("relay-berlin", "berlin", "chat-relay"),
    ("relay-tokyo", "tokyo", "chat-relay"),
    ("sfu-test", "lab", "sfu"),
    ("sfu-paris-1", "paris", "sfu"),
    ("sfu-paris-2", "paris", "sfu"),
    ("sfu-tokyo", "tokyo", "sfu"),
];

/// The credential of node `id` (one of [`NODES`]).
pub fn cred(id: &str) -> String {
    format!("{id}-credential-0123456789abcdefghij")
}

pub struct ControlPlane {
    pub dir: TempDir,
    pub http: SocketAddr,
    /// `[database] url`; SQLite in `dir` when `None`.
    pub database: Option<String>,
    /// Keys added to `[health]`.
    pub health: String,
    /// `[health] poll_timeout` (200 ms unless a test needs polls to survive a loaded machine).
    pub poll_timeout: &'static str,
    /// `[tls]` (certificate, key): the API speaks HTTPS only.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Tables appended to the config (e.g. `[meetings]`).
    pub extra: String,
}

/// Where a test's control plane keeps its state: the same scenarios run on both.
pub enum Backend {
    Sqlite,
    /// A fresh PostgreSQL server started for the test.
    Postgres,
}

impl ControlPlane {
    pub fn new(name: &str) -> Self {
        Self {
            dir: TempDir::new(name),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            database: None,
            health: String::new(),
            poll_timeout: "200ms",
            tls: None,
            extra: String::new(),
        }
    }

    /// A control plane on `backend`; the PostgreSQL server, when there is one, lives as long
    /// as the returned guard.
    pub fn on(backend: &Backend, name: &str) -> (Self, Option<super::postgres::Postgres>) {
        let mut cp = Self::new(name);
        match backend {
            Backend::Sqlite => (cp, None),
            Backend::Postgres => {
                let pg = super::postgres::Postgres::start(name);
                cp.database = Some(pg.database("estuary_cp"));
                (cp, Some(pg))
            }
        }
    }

    /// A control plane on `database` (a `postgres://` URL another one may share).
    pub fn with_database(name: &str, database: &str) -> Self {
        let mut cp = Self::new(name);
        cp.database = Some(database.to_owned());
        cp
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.http)
    }

    pub fn start(&self) -> EdgeProcess {
        let config: PathBuf = self.dir.path().join("cp.toml");
        std::fs::write(
            &config,
            format!(
                "[listen]\nhttp = \"{}\"\n[database]\nurl = \"{}\"\n[auth.operator_tokens]\nops = \"{OPS}\"\n[auth.node_tokens]\nlab = \"{LAB}\"\nother = \"{OTHER}\"\n{nodes}[auth.site_networks]\na = [\"127.0.0.0/8\"]\n[health]\npoll_interval = \"200ms\"\npoll_timeout = \"{poll_timeout}\"\ndown_after = 3\nup_after = 2\nheartbeat_timeout = \"5s\"\n{health}[purge]\nedge_token = \"{PURGE}\"\n[dashboard]\nhistory_step = \"1s\"\n{keys}",
                self.http,
                self.database.clone().unwrap_or_else(|| format!(
                    "sqlite://{}",
                    self.dir.path().join("cp.db").display()
                )),
                nodes = NODES
                    .iter()
                    .map(|(id, site, role)| format!(
                        "[auth.nodes.{id}]\nsite = \"{site}\"\nrole = \"{role}\"\ntoken = \"{}\"\n",
                        cred(id)
                    ))
                    .collect::<String>(),
                keys = super::manifest_keys_toml(),
                health = self.health,
                poll_timeout = self.poll_timeout,
            ) + &self
                .tls
                .as_ref()
                .map(|(c, k)| format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", c.display(), k.display()))
                .unwrap_or_default()
                + &self.extra,
        )
        .expect("write config");
        match &self.tls {
            None => start_service("control-plane", &config, self.http, self.dir.path()),
            Some((cert, _)) => {
                let mut p = spawn_service("control-plane", &config, self.http, self.dir.path());
                let url = format!("{}/readyz", self.url());
                let cacert = cert.display().to_string();
                p.wait_until(|| {
                    let out = run(Command::new("curl")
                        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                        .args([&cacert, &url]));
                    out.stdout == b"200"
                });
                p
            }
        }
    }

    pub fn get(
        &self,
        path: &str,
        token: &str,
        extra: &[&str],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let auth = format!("Authorization: Bearer {token}");
        let cacert = self.tls.as_ref().map(|(c, _)| c.display().to_string());
        let mut args = vec!["-H", auth.as_str()];
        if let Some(c) = &cacert {
            args.extend_from_slice(&["--cacert", c]);
        }
        args.extend_from_slice(extra);
        fetch(&format!("{}{path}", self.url()), &args)
    }

    /// `PUT /v1/sites/<name>` with this JSON body, as an operator; fails the test unless
    /// it is accepted.
    pub fn put_site(&self, name: &str, site: &serde_json::Value) {
        let body = site.to_string();
        let (status, _, answer) = self.get(
            &format!("/v1/sites/{name}"),
            OPS,
            &[
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/json",
                "--data",
                &body,
            ],
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    }

    /// Runs the operator CLI (`estuary ARGS --control-plane URL`); its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = run(Command::new(env!("CARGO_BIN_EXE_estuary"))
            .args(args)
            .args(["--control-plane", &self.url()])
            .envs(self.tls.as_ref().map(|(c, _)| ("ESTUARY_CA_FILE", c)))
            .env("ESTUARY_TOKEN", OPS));
        assert!(
            out.status.success(),
            "estuary {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `estuary fill status ASSET --json`, parsed.
    pub fn fill_status(&self, asset: &str) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.cli(&["fill", "status", asset, "--json"])).expect("json")
    }

    /// Waits until `estuary fill status ASSET` shows `node` in `state`.
    pub fn wait_fill(&self, asset: &str, node: &str, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let rows = self.fill_status(asset);
            if rows
                .iter()
                .any(|r| r["node"] == node && r["state"] == state)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{node} never reached {state} for {asset}: {rows:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `estuary nodes --json` (the CLI), parsed.
    pub fn nodes(&self) -> Vec<serde_json::Value> {
        let out = run(Command::new(env!("CARGO_BIN_EXE_estuary"))
            .args(["nodes", "--json", "--control-plane", &self.url()])
            .envs(self.tls.as_ref().map(|(c, _)| ("ESTUARY_CA_FILE", c)))
            .env("ESTUARY_TOKEN", OPS));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("json")
    }

    /// Waits until node `id` is listed with `up == want`.
    pub fn wait_node(&self, id: &str, want: bool, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(n) = self.nodes().into_iter().find(|n| n["id"] == id)
                && n["up"] == want
            {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} never became up={want}: {:?}",
                self.nodes()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The `[control_plane]` table of a node that knows every replica in `cps` (the first is
/// its first choice) and joins with `token`, beating every second.
pub fn joined_all(cps: &[&ControlPlane], token: &str) -> String {
    let urls: Vec<String> = cps.iter().map(|c| format!("\"{}\"", c.url())).collect();
    format!(
        "[control_plane]\nurls = [{}]\ntoken = \"{token}\"\ninterval = \"1s\"\n",
        urls.join(", ")
    )
}

/// The `[control_plane]` table of a node that joins `cp` with `token`, beating every second.
pub fn joined(cp: &ControlPlane, token: &str) -> String {
    format!(
        "[control_plane]\nurl = \"{}\"\ntoken = \"{token}\"\ninterval = \"1s\"\n",
        cp.url()
    )
}

pub fn edge_with_control_plane(name: &str, cp_url: &str, token: &str) -> Site {
    let mut site = Site::new(name);
    site.extra =
        format!("[control_plane]\nurl = \"{cp_url}\"\ntoken = \"{token}\"\ninterval = \"1s\"\n");
    site
}

/// `[meetings]` as the meeting tests use it: room tokens signed with the test key `k1`, an
/// hour long; a meeting lasts 10 minutes unlisted; an SFU is full at 4 peers.
pub fn meetings_config() -> String {
    format!(
        "[meetings]\nkey_id = \"k1\"\nkey = \"{}\"\ntoken_ttl = \"1h\"\ngrace = \"10min\"\npeers_per_sfu = 4\n",
        super::KEY_HEX
    )
}

/// Sites `paris` (covering 192.0.2.0/24) and `tokyo` (covering 198.51.100.0/24), with their
/// locations.
pub fn paris_and_tokyo(cp: &ControlPlane) {
    cp.put_site(
        "paris",
        &serde_json::json!({"location": [48.86, 2.35], "coverage": ["192.0.2.0/24"]}),
    );
    cp.put_site(
        "tokyo",
        &serde_json::json!({"location": [35.68, 139.69], "coverage": ["198.51.100.0/24"]}),
    );
}
