//! Shared harness for the black-box tests: starts the real `estuary` binary on loopback with a
//! fresh content folder and certificate, and offers real clients (curl, a Rust HTTP/1.1 and
//! HTTP/2 client, the in-tree HTTP/3 client).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod chat;
pub mod cp_site;
pub mod media;
pub mod netns;
pub mod origin;
pub mod origin_site;
pub mod postgres;
pub mod sfu;
pub mod steering_site;
pub mod udp_proxy;

pub const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// The test origin's manifest-signing key (`[signing]`): every test asset is signed with
/// it, and every test edge and control plane trusts its public half.
pub const MANIFEST_KEY_ID: &str = "test-origin";
pub const MANIFEST_SECRET_HEX: &str =
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

pub fn manifest_signer() -> estuary_common::signing::ManifestSigner {
    estuary_common::signing::ManifestSigner::from_hex(MANIFEST_KEY_ID, MANIFEST_SECRET_HEX)
        .expect("test key")
}

/// `[manifest_keys]` trusting the test origin's key.
pub fn manifest_keys_toml() -> String {
    format!(
        "[manifest_keys]\n{MANIFEST_KEY_ID} = \"{}\"\n",
        manifest_signer().public_hex()
    )
}

pub const KEY2_HEX: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff00112233445566778899aabbccddeeff";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh folder under the target dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = base.join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command and fails loudly if it cannot be started (a missing tool is a failure,
/// never a skip).
pub fn run(cmd: &mut Command) -> Output {
    let desc = format!("{cmd:?}");
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {desc}: {e} (run scripts/test.sh to install the test tools)")
    })
}

/// Writes a self-signed EC certificate for localhost and 127.0.0.1 with the openssl CLI.
pub fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    let out = run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Takes `m` even when a test that held it panicked (its lock is then poisoned, but what it
/// guards is still good): the locks that keep browser and media tests from overlapping, and
/// shared lists.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A loopback port free for both TCP and UDP right now.
pub fn free_port() -> u16 {
    // A port is free once it is released, so the kernel may hand the same one out twice in a
    // row: remember what this process gave out and never give it again.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            let mut given = lock(&GIVEN);
            if !given.contains(&port) {
                given.push(port);
                return port;
            }
        }
    }
    panic!("no free port");
}

/// A site: a content folder with a few files, a certificate and an edge config.
pub struct Site {
    pub dir: TempDir,
    pub content: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    /// Extra TOML appended to the config (sections after the defaults).
    pub extra: String,
    pub protected: Vec<String>,
    /// `[node] id`.
    pub node_id: String,
}

impl Site {
    pub fn new(name: &str) -> Self {
        let dir = TempDir::new(name);
        let content = dir.path().join("content");
        std::fs::create_dir_all(content.join("v/abc/720p")).expect("mkdir");
        std::fs::create_dir_all(content.join("pub")).expect("mkdir");
        std::fs::write(content.join("v/abc/master.m3u8"), MASTER).expect("write");
        std::fs::write(content.join("v/abc/720p/index.m3u8"), MEDIA).expect("write");
        std::fs::write(content.join("v/abc/720p/seg_000.m4s"), pattern(700_000)).expect("write");
        std::fs::write(content.join("v/abc/720p/init.mp4"), pattern(900)).expect("write");
        std::fs::write(content.join("v/other.m4s"), pattern(10)).expect("write");
        std::fs::write(content.join("pub/big.mp4"), pattern(8_000_000)).expect("write");
        std::fs::write(content.join("pub/hello.txt"), b"hello\n").expect("write");
        std::fs::write(dir.path().join("secret.txt"), b"TOP-SECRET-OUTSIDE-ROOT\n").expect("write");
        let (cert, key) = make_cert(dir.path(), "cert");
        let https_port = free_port();
        Self {
            content,
            cert,
            key,
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            https: SocketAddr::from(([127, 0, 0, 1], https_port)),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            extra: String::new(),
            protected: vec!["/v/".into()],
            node_id: "edge-test".into(),
            dir,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("edge.toml")
    }

    pub fn write_config(&self) -> PathBuf {
        let protected: Vec<String> = self.protected.iter().map(|p| format!("\"{p}\"")).collect();
        let text = format!(
            r#"[node]
id = "{node_id}"
site = "lab"
[listen]
http = "{http}"
https = "{https}"
admin = "{admin}"
[tls]
cert = "{cert}"
key = "{key}"
[store]
root = "{root}"
revalidate = "1s"
{manifest_keys}[auth]
protected = [{protected}]
[auth.keys]
k1 = "{KEY_HEX}"
k2 = "{KEY2_HEX}"
{extra}"#,
            http = self.http,
            https = self.https,
            admin = self.admin,
            cert = self.cert.display(),
            key = self.key.display(),
            root = self.content.display(),
            protected = protected.join(", "),
            extra = self.extra,
            node_id = self.node_id,
            manifest_keys = manifest_keys_toml(),
        );
        let path = self.config_path();
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Starts the edge and waits until /readyz answers 200.
    pub fn start(&self) -> EdgeProcess {
        self.start_with(&self.write_config())
    }

    /// Starts the edge with the config file `config` (its access log and log in this site's
    /// folder) and waits until /readyz answers 200.
    pub fn start_with(&self, config: &Path) -> EdgeProcess {
        let stdout = std::fs::File::create(self.dir.path().join("access.log")).expect("log");
        let stderr = std::fs::File::create(self.dir.path().join("edge.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_estuary"))
            .arg("edge")
            .arg("--config")
            .arg(config)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start estuary");
        let mut p = EdgeProcess {
            child: Some(child),
            admin: self.admin,
            log_dir: self.dir.path().to_owned(),
            log_file: self.dir.path().join("edge.log"),
        };
        p.wait_ready();
        p
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn surl(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{}", self.https.port(), path)
    }

    /// A token for `acl` signed by the CLI (an independent path through the code).
    pub fn sign(&self, acl: &str, extra: &[&str]) -> String {
        cli_sign(acl, extra).swap_remove(0)
    }
}

/// `estuary token sign` with key `k1` = [`KEY_HEX`] for `acl`: its output lines (the token;
/// with `--path`, then the query-form and the path-form URLs).
pub fn cli_sign(acl: &str, extra: &[&str]) -> Vec<String> {
    let out = run(Command::new(env!("CARGO_BIN_EXE_estuary"))
        .args([
            "token", "sign", "--key-id", "k1", "--key", KEY_HEX, "--acl", acl,
        ])
        .args(extra));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(!lines.is_empty(), "estuary token sign printed nothing");
    lines
}

/// A running service (edge, origin); killed on drop.
pub struct EdgeProcess {
    pub child: Option<Child>,
    pub admin: SocketAddr,
    pub log_dir: PathBuf,
    /// Its standard error (the JSON log).
    pub log_file: PathBuf,
}

/// Starts `estuary <service> --config <config>` with its log in `log_dir/<service>.log` and
/// waits until `admin` answers `/readyz` with 200.
pub fn start_service(
    service: &str,
    config: &Path,
    admin: SocketAddr,
    log_dir: &Path,
) -> EdgeProcess {
    let mut p = spawn_service(service, config, admin, log_dir);
    p.wait_ready();
    p
}

/// Starts `estuary <service> --config <config>` as `start_service` does, without waiting for
/// it to be ready (a start that must fail, or one checked another way).
pub fn spawn_service(
    service: &str,
    config: &Path,
    admin: SocketAddr,
    log_dir: &Path,
) -> EdgeProcess {
    let log_file = log_dir.join(format!("{service}.log"));
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_estuary"))
        .arg(service)
        .arg("--config")
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start estuary");
    EdgeProcess {
        child: Some(child),
        admin,
        log_dir: log_dir.to_owned(),
        log_file,
    }
}

impl EdgeProcess {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// The size of its descriptor table (`FDSize`) and its soft open-file limit, from /proc.
    pub fn fd_table(&self) -> (u64, u64) {
        let proc = PathBuf::from(format!("/proc/{}", self.pid()));
        let status = std::fs::read_to_string(proc.join("status")).expect("/proc status");
        let size = status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("FDSize");
        let limits = std::fs::read_to_string(proc.join("limits")).expect("/proc limits");
        let soft = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("Max open files");
        (size, soft)
    }

    /// Asserts that it raised its open-file limit above the usual 1024 and sized its
    /// descriptor table at start for `slots` descriptors (or that limit, if lower), as
    /// `estuary_common::fds` does: without it a busy table grows by doubling, and each growth
    /// stalls the accepting worker.
    pub fn assert_fd_table_sized(&self, slots: u64) {
        let (size, soft) = self.fd_table();
        assert!(soft > 1024, "the open-file limit was not raised: {soft}");
        let want = slots.min(soft);
        assert!(
            size >= want,
            "descriptor table of {size} slots, {want} expected (limit {soft})"
        );
    }

    fn wait_ready(&mut self) {
        let admin = self.admin;
        self.wait_until(|| matches!(http_get_raw(admin, "/readyz"), Ok((200, _))));
    }

    /// Waits until `ready` says so (or the process exits: a panic with its log).
    pub fn wait_until(&mut self, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("estuary exited early ({status}): {}", self.log());
            }
            if ready() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("estuary did not become ready: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.log_dir.join("access.log")).unwrap_or_default()
    }

    /// The access log once `done` says it holds what the test waits for (the writer writes
    /// its batch every 20 ms); the log as it is after 10 s otherwise.
    pub fn access_log_until(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.access_log();
            if done(&log) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The access log's JSON lines once there are at least `n` of them (or after 10 s).
    pub fn access_log_json(&self, n: usize) -> Vec<serde_json::Value> {
        self.access_log_until(|log| log.lines().count() >= n)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
            .collect()
    }

    pub fn signal(&self, sig: &str) {
        let out = run(Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string()));
        assert!(out.status.success());
    }

    /// Waits for the process to exit and returns whether it exited with status 0.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("estuary did not exit: {}", self.log());
    }

    /// The value of one metric series whose line contains every `labels` fragment.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, text) = http_get_raw(self.admin, "/metrics").expect("metrics");
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no series {name} {labels:?} in:\n{text}"))
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET over a raw TCP socket: (status, body as text).
pub fn http_get_raw(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let (status, _, body) = raw_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends raw bytes and reads until the server closes: (status, head, body).
pub fn raw_request(addr: SocketAddr, request: &str) -> anyhow::Result<(u16, String, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of head")?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, head, buf[split + 4..].to_vec()))
}

/// curl with the given arguments; returns (stdout bytes, stderr text, success).
pub fn curl(args: &[&str]) -> (Vec<u8>, String, bool) {
    let out = run(Command::new("curl")
        .args(["-s", "--max-time", "30"])
        .args(args));
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// curl printing only the status code and selected response headers (`-D -`).
pub fn curl_head(args: &[&str]) -> (u16, String) {
    let (out, err, _) = curl(&[&["-o", "/dev/null", "-D", "-"], args].concat());
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status from curl {args:?}: {err}"));
    // Header names are case-insensitive: lower-case them, keep values as sent.
    let head = text
        .lines()
        .map(|l| match l.split_once(':') {
            Some((name, value)) => format!("{}:{value}", name.to_ascii_lowercase()),
            None => l.to_ascii_lowercase(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    (status, head)
}

/// The bytes of a test file generated by [`Site::new`].
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

pub const MASTER: &str =
    "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=3000000,RESOLUTION=1280x720\n720p/index.m3u8\n";
pub const MEDIA: &str = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:4.0,\nseg_000.m4s\n#EXT-X-ENDLIST\n";

/// A Rust HTTP/1.1 or HTTP/2 client over TLS (rustls + hyper) that trusts `ca`.
pub async fn rust_get(
    addr: SocketAddr,
    ca: &Path,
    h2: bool,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(http::Response<()>, bytes::Bytes)> {
    use http_body_util::BodyExt;
    let roots = estuary_common::tls::read_certs(ca)?;
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let tls = estuary_common::tls::client_config_trusting(&roots, alpn)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let stream = connector.connect(name, tcp).await?;
    let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let io = hyper_util::rt::TokioIo::new(stream);
    let mut builder = http::Request::get(format!("https://localhost:{}{path}", addr.port()));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = if h2 {
        if negotiated.as_deref() != Some(b"h2") {
            bail!("the server did not negotiate h2");
        }
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((http::Response::from_parts(parts, ()), body))
}

/// A site whose edge fills what is not pre-positioned from `origins` through a RAM and disk
/// cache; `extra` is appended to its config.
/// Two cached sites in front of `origins`, `{name}-a` and `{name}-b`, each listing both as
/// its peers (so that each object has one owning peer) and protecting `/v/`.
pub fn peer_pair(name: &str, origins: &[String]) -> Vec<Site> {
    let (port_a, port_b) = (free_port(), free_port());
    let peers = format!("peers = [\"http://127.0.0.1:{port_a}\", \"http://127.0.0.1:{port_b}\"]");
    let mut sites = Vec::new();
    for (suffix, port) in [("a", port_a), ("b", port_b)] {
        let mut site = cached_site(&format!("{name}-{suffix}"), origins, "");
        site.http = SocketAddr::from(([127, 0, 0, 1], port));
        site.protected = vec!["/v/".into()];
        site.extra = site.extra.replace(
            "[upstream]\n",
            &format!("[upstream]\n{peers}\nself_url = \"http://127.0.0.1:{port}\"\n"),
        );
        sites.push(site);
    }
    sites
}

pub fn cached_site(name: &str, origins: &[String], extra: &str) -> Site {
    let cache = "ram = \"64MiB\"\ndisk = \"256MiB\"\nmax_object = \"16MiB\"\ndisk_min_fills = 1";
    cached_site_with(name, origins, cache, extra)
}

/// [`cached_site`] with the keys of its `[cache]` table (besides `disk_dir`) given.
pub fn cached_site_with(name: &str, origins: &[String], cache: &str, extra: &str) -> Site {
    let mut site = Site::new(name);
    let list: Vec<String> = origins.iter().map(|o| format!("\"{o}\"")).collect();
    site.extra = format!(
        "[cache]\ndisk_dir = \"{}\"\n{cache}\n[upstream]\norigin = [{}]\nconnect_timeout = \"1s\"\nread_timeout = \"3s\"\n[admin.tokens]\nops = \"0123456789abcdef-operator\"\n{extra}",
        site.dir.path().join("cache").display(),
        list.join(", ")
    );
    site.protected.clear();
    site
}

/// GET over plain HTTP/1.1 with the Rust client and extra request headers: (status, headers,
/// body); a body the server cut short reads as `<cut>`.
pub async fn plain_get(
    site: &Site,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, bytes::Bytes) {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(site.http)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "edge");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("req");
    let resp = send
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("response head for {path}: {e}"));
    let (parts, body) = resp.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => bytes::Bytes::from_static(b"<cut>"),
    };
    (parts.status.as_u16(), parts.headers, body)
}

/// `curl -sS -D - URL` with extra arguments: (status, lower-case headers, body).
pub fn fetch(url: &str, extra: &[&str]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let dir = std::env::temp_dir();
    let head_file = dir.join(format!(
        "origin-head-{}-{}",
        std::process::id(),
        free_port()
    ));
    let mut args = vec![
        "-sS",
        "-D",
        head_file.to_str().expect("path"),
        "--path-as-is",
    ];
    args.extend_from_slice(extra);
    args.push(url);
    let (body, err, ok) = curl(&args);
    assert!(ok, "curl {url}: {err}");
    let dump = std::fs::read_to_string(&head_file).unwrap_or_default();
    let _ = std::fs::remove_file(&head_file);
    // The last response head (after any `100 Continue`).
    let head = dump
        .split("\r\n\r\n")
        .filter(|b| b.starts_with("HTTP/"))
        .last()
        .unwrap_or("");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Plays `url` for `seconds` of media time in headless Chromium with hls.js (`kind` "hls") or
/// dash.js ("dash"), through tests/clients/play.mjs; returns its report and fails the test on
/// a player error or when playback does not get that far.
pub fn play_in_chromium(kind: &str, url: &str, seconds: u32) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/play.mjs");
    let out = run(Command::new("node").args([script, kind, url, &seconds.to_string()]));
    let report: serde_json::Value = serde_json::from_slice(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .as_bytes(),
    )
    .unwrap_or(serde_json::Value::Null);
    assert!(
        out.status.success() && report["ok"] == true,
        "{kind} playback of {url} failed: {report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

/// Anonymous memory of a process, in KiB.
pub fn rss_anon_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon")
}
