//! A chat relay on loopback and the Python scenario client (`tests/clients/chat.py`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use super::{EdgeProcess, KEY_HEX, TempDir, free_port, run, start_service};

pub struct ChatRelay {
    pub dir: TempDir,
    pub addr: SocketAddr,
    pub process: Option<EdgeProcess>,
}

impl ChatRelay {
    /// Writes a config (`extra` appended) and starts `estuary chat-relay` as node
    /// `relay-test` of site `lab`.
    pub fn start(name: &str, extra: &str) -> Self {
        Self::start_node(name, "relay-test", "lab", extra)
    }

    /// [`ChatRelay::start`] as node `id` of `site`.
    pub fn start_node(name: &str, id: &str, site: &str, extra: &str) -> Self {
        let dir = TempDir::new(name);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config = format!(
            "[node]\nid = \"{id}\"\nsite = \"{site}\"\n[listen]\nhttp = \"{addr}\"\n[auth.keys]\nk1 = \"{KEY_HEX}\"\n[store]\npath = \"chat.db\"\n[shutdown]\ndrain_timeout = \"5s\"\n{extra}"
        );
        std::fs::write(dir.path().join("relay.toml"), config).expect("config");
        let mut relay = Self {
            dir,
            addr,
            process: None,
        };
        relay.restart();
        relay
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("relay.toml")
    }

    /// Starts the relay (again) on the same config and store.
    pub fn restart(&mut self) {
        self.process = Some(start_service(
            "chat-relay",
            &self.config(),
            self.addr,
            self.dir.path(),
        ));
    }

    pub fn process(&self) -> &EdgeProcess {
        self.process.as_ref().expect("running")
    }

    /// The scenario client's command line.
    pub fn scenario(&self, scenario: &str, extra: &[&str]) -> Command {
        scenario_at(&format!("ws://{}", self.addr), scenario, extra)
    }

    /// Runs a scenario to its end; fails the test with its output and the relay's log if it
    /// fails. Returns its last stdout line as JSON.
    pub fn run_scenario(&self, scenario: &str, extra: &[&str]) -> serde_json::Value {
        let out = run(&mut self.scenario(scenario, extra));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scenario {scenario} failed:\n{stdout}\n{}\nrelay log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.process.as_ref().map(|p| p.log()).unwrap_or_default()
        );
        let last = stdout.lines().last().unwrap_or("{}");
        serde_json::from_str(last).expect("scenario output is JSON")
    }
}

/// The scenario client's command line against the relay at `url` (`ws://host:port`, the
/// scenarios add `/ws`).
pub fn scenario_at(url: &str, scenario: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/chat.py"
    ))
    .arg(scenario)
    .arg("--url")
    .arg(url)
    .arg("--key")
    .arg(KEY_HEX)
    .args(extra);
    cmd
}

/// A NATS server with JetStream (Debian's `nats-server -js`) on loopback, killed on drop.
pub struct Nats {
    pub url: String,
    pub dir: TempDir,
    child: std::process::Child,
}

impl Nats {
    pub fn start(name: &str) -> Self {
        let dir = TempDir::new(name);
        let port = free_port();
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let log = std::fs::File::create(dir.path().join("nats.log")).expect("nats log");
        let child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path().join("jetstream"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server (scripts/setup-debian.sh test installs it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self {
            url: format!("nats://{addr}"),
            dir,
            child,
        }
    }

    /// The `[cluster]` table of a relay on this server.
    pub fn cluster_toml(&self) -> String {
        format!("[cluster]\nnats = \"{}\"\n", self.url)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The secret the media tests' relays and origin share for upload credentials.
pub const UPLOAD_KEY_HEX: &str = "5a5b5c5d5e5f606162636465666768696a6b6c6d6e6f70717273747576777879";

/// What a relay with `[media]` talks to: a real origin that takes the relay's upload
/// credentials and a real edge that fills `/v/` from it, tokens required (the relay signs
/// CDN URLs with the edge's key `k2`).
pub struct MediaSites {
    pub origin: super::origin_site::OriginSite,
    pub edge: super::Site,
    _processes: [EdgeProcess; 2],
}

impl MediaSites {
    pub fn start(name: &str) -> Self {
        let mut origin = super::origin_site::OriginSite::new(&format!("{name}-origin"));
        origin.extra = format!("[auth.upload_keys]\nrelay-media = \"{UPLOAD_KEY_HEX}\"\n");
        let origin_process = origin.start();
        let mut edge = super::cached_site(&format!("{name}-edge"), &[origin.url("")], "");
        edge.protected = vec!["/v/".into()];
        let edge_process = edge.start();
        Self {
            origin,
            edge,
            _processes: [origin_process, edge_process],
        }
    }

    /// The relay's `[media]` table for these sites; `extra` adds keys.
    pub fn relay_toml(&self, extra: &str) -> String {
        format!(
            "[media]\norigin = \"{}\"\ncdn = \"{}\"\nupload_key = {{ kid = \"relay-media\", secret = \"{UPLOAD_KEY_HEX}\" }}\ncdn_key = {{ kid = \"k2\", secret = \"{}\" }}\n{extra}",
            self.origin.url(""),
            self.edge.url(""),
            super::KEY2_HEX,
        )
    }
}

/// A real JPEG of one `size` frame of ffmpeg's test pattern, at `path`.
pub fn test_jpeg(path: &std::path::Path, size: &str) {
    super::media::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size={size}"),
        "-frames:v",
        "1",
        path.to_str().expect("path"),
    ]);
}

/// The chat page's URL on the relay at `relay` for `user` talking to `peer`, with a token
/// signed by the CLI (query form, valid 10 minutes), as scripts/demo.sh prints it.
pub fn page_url(relay: SocketAddr, user: &str, peer: &str) -> String {
    let lines = super::cli_sign(
        &format!("/chat/user/{user}"),
        &[
            "--ttl",
            "600",
            "--path",
            "/chat",
            "--base",
            &format!("http://{relay}"),
        ],
    );
    let query_form = lines.get(1).expect("the query-form URL");
    format!("{query_form}&user={user}&peer={peer}")
}
