//! An SFU on loopback, room tokens, raw WHIP/WHEP requests and the aiortc client
//! (`tests/clients/whip_whep.py`).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{EdgeProcess, KEY_HEX, TempDir, free_port, raw_request, run, start_service};

/// aiortc encodes and decodes in Python, a core's worth per client: at most two clients run
/// at once in a test binary, so that tests running in parallel do not starve one another's
/// frame counts on a small machine.
const CLIENTS_AT_ONCE: usize = 2;
static CLIENTS_BUSY: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static CLIENT_FREED: std::sync::Condvar = std::sync::Condvar::new();

/// A running client's slot, given back on drop.
pub struct ClientSlot;

impl ClientSlot {
    pub fn take() -> Self {
        let mut busy = super::lock(&CLIENTS_BUSY);
        while *busy >= CLIENTS_AT_ONCE {
            busy = CLIENT_FREED.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy += 1;
        ClientSlot
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut busy = super::lock(&CLIENTS_BUSY);
        *busy = busy.saturating_sub(1);
        CLIENT_FREED.notify_one();
    }
}

pub struct Sfu {
    pub dir: TempDir,
    pub http: SocketAddr,
    pub udp: SocketAddr,
    /// The ICE-TCP listener (the UDP port's number), when started with one.
    pub tcp: Option<SocketAddr>,
    pub process: EdgeProcess,
}

/// A syntactically valid offer with one Opus m-line in `direction` (`sendonly` for WHIP,
/// `recvonly` for WHEP): enough for signaling tests; it never connects.
pub fn synthetic_offer(direction: &str) -> String {
    let fingerprint = vec!["AB"; 32].join(":");
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\na={direction}\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
    )
}

/// A room token for `room` (acl `/rooms/<room>`, an hour), signed with the test key.
pub fn room_token(room: &str) -> String {
    sign(&format!("/rooms/{room}"), "k1", KEY_HEX)
}

/// A token with any acl and key.
pub fn sign(acl: &str, kid: &str, key_hex: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    estuary_common::token::sign(
        &estuary_common::token::Claims {
            kid: kid.into(),
            acl: acl.into(),
            exp,
            st: None,
            ip: None,
        },
        &hex::decode(key_hex).expect("hex key"),
    )
}

impl Sfu {
    /// Writes a config (`extra` appended) and starts `estuary sfu` as node `sfu-test`.
    pub fn start(name: &str, extra: &str) -> Self {
        Self::start_with(name, None, "127.0.0.1", extra)
    }

    /// [`Sfu::start`], with `/metrics`, `/healthz` and `/readyz` on `admin` when given, and
    /// `public_ip` in the candidates (media still listened for on 127.0.0.1).
    pub fn start_with(name: &str, admin: Option<SocketAddr>, public_ip: &str, extra: &str) -> Self {
        Self::start_node(name, "sfu-test", "lab", admin, public_ip, extra)
    }

    /// [`Sfu::start`] with ICE-TCP on (`[listen] tcp` on the UDP port's number).
    pub fn start_tcp(name: &str, extra: &str) -> Self {
        Self::start_full(name, "sfu-test", "lab", None, "127.0.0.1", true, extra)
    }

    /// [`Sfu::start_with`] as node `id` of `site`.
    pub fn start_node(
        name: &str,
        id: &str,
        site: &str,
        admin: Option<SocketAddr>,
        public_ip: &str,
        extra: &str,
    ) -> Self {
        Self::start_full(name, id, site, admin, public_ip, false, extra)
    }

    fn start_full(
        name: &str,
        id: &str,
        site: &str,
        admin: Option<SocketAddr>,
        public_ip: &str,
        with_tcp: bool,
        extra: &str,
    ) -> Self {
        let dir = TempDir::new(name);
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let udp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let tcp = with_tcp.then_some(udp);
        let admin_line = admin
            .map(|a| format!("admin = \"{a}\"\n"))
            .unwrap_or_default();
        let tcp_line = tcp.map(|t| format!("tcp = \"{t}\"\n")).unwrap_or_default();
        let config = format!(
            "[node]\nid = \"{id}\"\nsite = \"{site}\"\n[listen]\nhttp = \"{http}\"\n{admin_line}udp = \"{udp}\"\n{tcp_line}public_ip = \"{public_ip}\"\n[auth.keys]\nk1 = \"{KEY_HEX}\"\n[shutdown]\ndrain_timeout = \"5s\"\n{extra}"
        );
        let path = dir.path().join("sfu.toml");
        std::fs::write(&path, config).expect("config");
        let process = start_service("sfu", &path, admin.unwrap_or(http), dir.path());
        Self {
            dir,
            http,
            udp,
            tcp,
            process,
        }
    }

    /// An SFU whose HTTP, admin and UDP listeners are all on `ip` (an address of a test's
    /// veth pair), as node `sfu-test`.
    pub fn start_on(name: &str, ip: &str, extra: &str) -> Self {
        let dir = TempDir::new(name);
        let http: SocketAddr = format!("{ip}:{}", free_port()).parse().expect("addr");
        let udp: SocketAddr = format!("{ip}:{}", free_port()).parse().expect("addr");
        let config = format!(
            "[node]\nid = \"sfu-test\"\nsite = \"lab\"\n[listen]\nhttp = \"{http}\"\nudp = \"{udp}\"\npublic_ip = \"{ip}\"\n[auth.keys]\nk1 = \"{KEY_HEX}\"\n[shutdown]\ndrain_timeout = \"5s\"\n{extra}"
        );
        let path = dir.path().join("sfu.toml");
        std::fs::write(&path, config).expect("config");
        let process = start_service("sfu", &path, http, dir.path());
        Self {
            dir,
            http,
            udp,
            tcp: None,
            process,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// A request with an optional bearer token and content type: (status, head, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: &str,
    ) -> (u16, String, String) {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(c) = content_type {
            req.push_str(&format!("Content-Type: {c}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        let (status, head, body) = raw_request(self.http, &req).expect("request");
        (status, head, String::from_utf8_lossy(&body).into_owned())
    }

    /// `POST /<whip|whep>/<room>` with an SDP body and the room's token.
    pub fn offer(&self, kind: &str, room: &str, sdp: &str) -> (u16, String, String) {
        self.request(
            "POST",
            &format!("/{kind}/{room}"),
            Some(&room_token(room)),
            Some("application/sdp"),
            sdp,
        )
    }

    /// The sum of every series of `name` whose line contains each `labels` fragment.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, text) = super::http_get_raw(self.http, "/metrics").expect("metrics");
        text.lines()
            .filter(|l| {
                (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                    && labels.iter().all(|x| l.contains(x))
            })
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    /// The SFU's own counters and gauges (`estuary_sfu_*`, histograms left out), for a failed
    /// assertion to show what the SFU did.
    pub fn metrics_summary(&self) -> String {
        let Ok((_, text)) = super::http_get_raw(self.http, "/metrics") else {
            return "(no /metrics)".to_owned();
        };
        text.lines()
            .filter(|l| l.starts_with("estuary_sfu_") && !l.contains("_bucket{"))
            .filter(|l| !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits (up to 10 s) until `name` with `labels` satisfies `ok`; returns its last value.
    pub fn wait_metric(&self, name: &str, labels: &[&str], ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(name, labels);
            if ok(v) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The aiortc client's command line (`publish`, `watch` or `pair`) against this SFU.
    pub fn client_command(&self, mode: &str, room: &str, extra: &[&str]) -> Command {
        self.client_command_with(mode, room, &room_token(room), extra)
    }

    /// [`Sfu::client_command`] with a given room token.
    pub fn client_command_with(
        &self,
        mode: &str,
        room: &str,
        token: &str,
        extra: &[&str],
    ) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/whip_whep.py"
        ))
        .arg(mode)
        .arg("--url")
        .arg(self.url())
        .arg("--room")
        .arg(room)
        .arg("--token")
        .arg(token)
        .args(extra);
        cmd
    }

    /// Runs the aiortc client (`publish`, `watch` or `pair`) against this SFU and returns its
    /// JSON line; fails the test with its output and the SFU's log if it fails.
    pub fn client(&self, mode: &str, room: &str, extra: &[&str]) -> serde_json::Value {
        self.client_with(mode, room, &room_token(room), extra)
    }

    /// [`Sfu::client`] with a given room token. At most two aiortc clients run at once.
    pub fn client_with(
        &self,
        mode: &str,
        room: &str,
        token: &str,
        extra: &[&str],
    ) -> serde_json::Value {
        let slot = ClientSlot::take();
        let out = run(&mut self.client_command_with(mode, room, token, extra));
        drop(slot);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "whip_whep.py {mode} failed:\n{stdout}\n{}\nSFU log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.process.log()
        );
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("client JSON")
    }
}
