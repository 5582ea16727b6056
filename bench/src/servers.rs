//! Starting, watching and stopping the servers under test: `estuary edge` and nginx, and the
//! config each is started with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::child::{self, Startup};
use crate::httpget::Http1Conn;
use crate::procfs;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Edge,
    Nginx,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Edge => "edge",
            Kind::Nginx => "nginx",
        }
    }
}

/// The TCP ports a server listens on (HTTP/3 shares the TLS port number over UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub plain: u16,
    pub tls: u16,
    /// The edge's admin port (readiness).
    pub admin: Option<u16>,
}

/// The edge's ports, as its bench config sets them.
pub const EDGE_PORTS: Ports = Ports {
    plain: 18080,
    tls: 18443,
    admin: Some(18081),
};

impl Ports {
    pub fn plain_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.plain))
    }

    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls))
    }

    fn all(&self) -> impl Iterator<Item = u16> {
        [self.plain, self.tls].into_iter().chain(self.admin)
    }
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct Setup {
    pub work: PathBuf,
    pub estuary_bin: PathBuf,
    pub nginx_bin: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub edge_config: PathBuf,
    /// The edge's config with its access log written to [`Setup::access_log_path`].
    pub edge_config_logged: PathBuf,
    /// Whether the servers write an access log to a file (nginx in its default combined
    /// format, the edge its JSON lines); off unless a test asks for it.
    pub access_log: bool,
    pub as_root: bool,
    pub nginx_ports: Ports,
}

impl Setup {
    pub fn ports(&self, kind: Kind) -> Ports {
        match kind {
            Kind::Edge => EDGE_PORTS,
            Kind::Nginx => self.nginx_ports,
        }
    }

    /// Where a server writes its access log when [`Setup::access_log`] is set.
    pub fn access_log_path(&self, kind: Kind) -> PathBuf {
        access_log_path(&self.work, kind)
    }
}

/// Where a server writes its access log in the work folder `work`.
pub fn access_log_path(work: &Path, kind: Kind) -> PathBuf {
    work.join("logs")
        .join(format!("{}-access.log", kind.label()))
}

/// A running server; stopped when dropped.
pub struct Server {
    pub kind: Kind,
    pub ports: Ports,
    child: Child,
}

/// Fails early when something already listens on a port the bench needs (a server left over
/// from an interrupted run, or another program).
pub fn check_ports_free(kind: Kind, ports: Ports) -> anyhow::Result<()> {
    child::check_tcp_ports_free(ports.all(), kind.label())
}

impl Server {
    /// Starts a server and waits until it answers. Pinned: the server runs on CPU 0 only with
    /// one worker (nginx `worker_processes 1`, the edge `TOKIO_WORKER_THREADS=1`).
    pub fn start(kind: Kind, setup: &Setup, pinned: bool) -> anyhow::Result<Self> {
        let ports = setup.ports(kind);
        check_ports_free(kind, ports)?;
        let logs = setup.work.join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = |name: &str| child::log_file(&logs.join(name));
        if setup.access_log {
            // Each start begins with an empty log, so that the runs do not fill the disk.
            let _ = std::fs::remove_file(setup.access_log_path(kind));
        }
        let program = match kind {
            Kind::Edge => &setup.estuary_bin,
            Kind::Nginx => &setup.nginx_bin,
        };
        let mut cmd = if pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        match kind {
            Kind::Edge => {
                let config = if setup.access_log {
                    &setup.edge_config_logged
                } else {
                    &setup.edge_config
                };
                cmd.arg("edge").arg("--config").arg(config);
                if pinned {
                    cmd.env("TOKIO_WORKER_THREADS", "1");
                } else {
                    cmd.env_remove("TOKIO_WORKER_THREADS");
                }
            }
            Kind::Nginx => {
                let workers = if pinned { "1" } else { "auto" };
                let conf = nginx_config(
                    &setup.work,
                    &setup.cert,
                    &setup.key,
                    workers,
                    setup.as_root,
                    ports,
                    setup
                        .access_log
                        .then(|| setup.access_log_path(Kind::Nginx))
                        .as_deref(),
                )?;
                let prefix = setup.work.join("nginx");
                // In the foreground, so that the bench is its parent and can stop it; the config
                // file itself does not say so, and works as a normal daemon config elsewhere.
                cmd.arg("-g")
                    .arg("daemon off;")
                    .arg("-p")
                    .arg(&prefix)
                    .arg("-e")
                    .arg(prefix.join("logs/error.log"))
                    .arg("-c")
                    .arg(&conf);
            }
        }
        let label = format!("{}{}", kind.label(), if pinned { "-pinned" } else { "" });
        cmd.stdin(Stdio::null())
            .stdout(log(&format!("{label}.stdout"))?)
            .stderr(log(&format!("{label}.stderr"))?);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", kind.label()))?;
        let mut server = Self { kind, ports, child };
        server.wait_ready(Duration::from_secs(20))?;
        Ok(server)
    }

    fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let ports = self.ports;
        let ready = || {
            let answers = match ports.admin {
                // The edge: its readiness endpoint says when it serves.
                Some(admin) => Http1Conn::connect(SocketAddr::from(([127, 0, 0, 1], admin)))
                    .and_then(|mut c| c.get("/readyz"))
                    .is_ok_and(|(status, _)| status == 200),
                // nginx: any answer on the plain port.
                None => Http1Conn::connect(ports.plain_addr())
                    .and_then(|mut c| c.get("/"))
                    .is_ok(),
            };
            answers && accepts(ports.tls_addr())
        };
        match child::wait_ready(&mut self.child, within, Duration::from_millis(50), ready)? {
            Startup::Ready => Ok(()),
            Startup::Exited(status) => bail!(
                "{} exited during start-up ({status}); see the logs in the work folder",
                self.kind.label()
            ),
            Startup::TimedOut => bail!(
                "{} did not become ready within {within:?}",
                self.kind.label()
            ),
        }
    }

    /// The server's processes: the edge is one; nginx is its master and workers.
    pub fn pids(&self) -> Vec<u32> {
        let main = self.child.id();
        let mut pids = vec![main];
        if self.kind == Kind::Nginx {
            pids.extend(procfs::children(main));
        }
        pids
    }

    /// CPU time of all server processes so far, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        procfs::total_cpu_ticks(&self.pids())
    }

    /// Resident memory summed over the server processes.
    pub fn rss(&self) -> procfs::Rss {
        self.pids()
            .into_iter()
            .filter_map(|p| procfs::rss(p).ok())
            .fold(procfs::Rss::default(), |a, b| a + b)
    }

    /// Threads of the main process (to confirm the edge's worker count).
    pub fn threads(&self) -> usize {
        procfs::threads(self.child.id())
    }

    /// SIGTERM, then SIGKILL if it has not exited within ten seconds.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        // A server that had already exited is not waited for: its ports may be another's.
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        child::terminate(&mut self.child, self.kind.label())?;
        child::wait_ports_free(|| check_ports_free(self.kind, self.ports))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// Whether something accepts TCP connections at an address.
fn accepts(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The TLS version and cipher suite an OpenSSL client (with its default preferences, as wrk
/// and h2load have) ends up with, e.g. "TLSv1.3 TLS_AES_128_GCM_SHA256".
pub fn negotiated_tls(addr: SocketAddr) -> anyhow::Result<String> {
    let output = Command::new("openssl")
        .args(["s_client", "-servername", "localhost", "-connect"])
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .output()
        .context("running openssl s_client")?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "New, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256"
    text.lines()
        .find_map(|l| l.strip_prefix("New, "))
        .map(|rest| rest.replace(", Cipher is ", " "))
        .with_context(|| format!("no cipher in openssl s_client's output for {addr}"))
}

/// Finds a program on PATH (or in /usr/sbin, where Debian puts nginx).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether the bench runs as root (then nginx runs its workers as root too, which can read
/// the work folder wherever it is).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1))
            == Some("0")
    })
}

/// The edge's `[limits]` in every bench: long timeouts (idle keep-alive connections stay
/// open for the idle connection test) and connection caps no load tool reaches.
pub const EDGE_LIMITS: &str = r#"[limits]
header_read_timeout = "300s"
first_byte_timeout = "300s"
idle_timeout = "300s"
max_connections = 100000
max_connections_per_ip = 100000
"#;

/// The edge's config for the bench, as given in the bench's brief: every default except
/// `access = "off"` (nginx logs nothing either) or, with `access_log`, the access log written
/// to that file; a long idle keep-alive (for the idle connection test) and a high connection
/// limit.
pub fn edge_config(work: &Path, access_log: Option<&Path>) -> anyhow::Result<PathBuf> {
    let ports = EDGE_PORTS;
    let text = format!(
        r#"# Written by estuary-bench; relative paths are relative to this file.
[node]
id = "bench-edge"
site = "bench"

[listen]
http = "127.0.0.1:{plain}"
https = "127.0.0.1:{tls}"
admin = "127.0.0.1:{admin}"

[tls]
cert = "cert.pem"
key = "key.pem"

[store]
root = "content"

[log]
access = "{access}"

{EDGE_LIMITS}"#,
        plain = ports.plain,
        tls = ports.tls,
        admin = ports.admin.unwrap_or(18081),
        access = access_log.map_or("off".to_owned(), |p| p.display().to_string()),
    );
    let name = if access_log.is_some() {
        "edge-access-log.toml"
    } else {
        "edge.toml"
    };
    let path = work.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The lines of an nginx config before its `http` block, for a server whose prefix (pid file
/// and error log) is `dir`. As root, the workers run as root too.
pub fn nginx_main_context(
    as_root: bool,
    workers: &str,
    dir: &Path,
    worker_connections: u32,
) -> String {
    let user = if as_root { "user root;\n" } else { "" };
    let dir = dir.display();
    format!(
        "{user}worker_processes {workers};\n\
         worker_rlimit_nofile 65536;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/logs/error.log warn;\n\
         events {{ worker_connections {worker_connections}; multi_accept on; }}\n"
    )
}

/// nginx's config, from `peers/nginx-origin.conf` (plain and TLS 1.3 + h2 servers only).
/// `workers` is `auto` or a count; `access_log`, a file for the access log in nginx's default
/// combined format (off without it, as in the peer config).
pub fn nginx_config(
    work: &Path,
    cert: &Path,
    key: &Path,
    workers: &str,
    as_root: bool,
    ports: Ports,
    access_log: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let dir = work.join("nginx");
    std::fs::create_dir_all(dir.join("logs"))?;
    let root = work.join("content");
    let main = nginx_main_context(as_root, workers, &dir, 20_000);
    let text = format!(
        r#"# Written by estuary-bench from peers/nginx-origin.conf.
{main}http {{
    types {{ application/vnd.apple.mpegurl m3u8; video/iso.segment m4s; video/mp4 mp4; video/mp2t ts; }}
    default_type application/octet-stream;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    sendfile_max_chunk 2m;
    open_file_cache max=10000 inactive=60s; open_file_cache_valid 60s;
    open_file_cache_min_uses 1; open_file_cache_errors on;
    keepalive_timeout 65s; keepalive_requests 1000000;
    access_log {access_log};
    expires 1h;
    root {root};

    server {{ listen 127.0.0.1:{plain} reuseport backlog=4096; location / {{ }} }}

    server {{
        listen 127.0.0.1:{tls} ssl http2 reuseport backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_prefer_server_ciphers on;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
        ssl_session_cache shared:SSL:10m;
        location / {{ }}
    }}
}}
"#,
        root = root.display(),
        cert = cert.display(),
        key = key.display(),
        plain = ports.plain,
        tls = ports.tls,
        access_log = access_log.map_or("off".to_owned(), |p| p.display().to_string()),
    );
    let suffix = if access_log.is_some() {
        "-access-log"
    } else {
        ""
    };
    let path = dir.join(format!("nginx-{workers}{suffix}.conf"));
    std::fs::write(&path, text)?;
    Ok(path)
}
