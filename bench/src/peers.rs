//! The caching servers compared in `cache-vs-peers`: `estuary edge` with its pull-through
//! cache, nginx with `proxy_cache`, Varnish and Apache Traffic Server (tuned for collapsed
//! forwarding, and with the package's defaults), all in front of the same origin. Their configs
//! are written from `bench/peers/` into the work folder; each runs in the foreground as
//! a child of the bench.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ValueEnum;

use crate::child::{self, Startup};
use crate::httpget::Http1Conn;
use crate::procfs;

/// A caching server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// `estuary edge` with `[cache]` and `[upstream]`.
    Edge,
    /// nginx `proxy_cache` with `proxy_cache_lock on`.
    Nginx,
    /// Varnish with `-s malloc`.
    Varnish,
    /// Apache Traffic Server tuned for read-while-writer.
    Ats,
    /// Apache Traffic Server with the package's default records.config.
    AtsDefaults,
}

/// The bench's ports; none clash with `edge-vs-nginx` (18080, 18443, 18081, 28080, 28443).
pub const EDGE_PORT: u16 = 19080;
pub const EDGE_ADMIN_PORT: u16 = 19081;
pub const NGINX_PORT: u16 = 19082;
pub const VARNISH_PORT: u16 = 19083;
pub const ATS_PORT: u16 = 19084;
pub const VARNISH_ADMIN_PORT: u16 = 19085;
pub const ORIGIN_PORT: u16 = 19090;

impl Peer {
    pub fn label(self) -> &'static str {
        match self {
            Peer::Edge => "Estuary edge",
            Peer::Nginx => "nginx proxy_cache",
            Peer::Varnish => "Varnish",
            Peer::Ats => "ATS (tuned)",
            Peer::AtsDefaults => "ATS (defaults)",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Peer::Edge => "edge",
            Peer::Nginx => "nginx",
            Peer::Varnish => "varnish",
            Peer::Ats => "ats",
            Peer::AtsDefaults => "ats-defaults",
        }
    }

    /// The port clients use.
    pub fn port(self) -> u16 {
        match self {
            Peer::Edge => EDGE_PORT,
            Peer::Nginx => NGINX_PORT,
            Peer::Varnish => VARNISH_PORT,
            Peer::Ats | Peer::AtsDefaults => ATS_PORT,
        }
    }

    pub fn addr(self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port()))
    }

    /// Every port the server listens on.
    fn ports(self) -> Vec<u16> {
        match self {
            Peer::Edge => vec![EDGE_PORT, EDGE_ADMIN_PORT],
            Peer::Varnish => vec![VARNISH_PORT, VARNISH_ADMIN_PORT],
            p => vec![p.port()],
        }
    }
}

/// The programs and folders the servers need.
#[derive(Debug, Clone)]
pub struct PeerSetup {
    pub work: PathBuf,
    pub estuary_bin: PathBuf,
    pub nginx_bin: PathBuf,
    pub varnishd_bin: Option<PathBuf>,
    pub traffic_server_bin: Option<PathBuf>,
    pub as_root: bool,
    /// Where nginx keeps its cache (tmpfs when there is one, as in the reference setup).
    pub nginx_cache_dir: PathBuf,
}

impl PeerSetup {
    /// Why a peer cannot run here, if it cannot.
    pub fn missing(&self, peer: Peer) -> Option<String> {
        match peer {
            Peer::Varnish if self.varnishd_bin.is_none() => {
                Some("varnishd is not installed (apt-get install varnish)".to_owned())
            }
            Peer::Ats | Peer::AtsDefaults if self.traffic_server_bin.is_none() => {
                Some("traffic_server is not installed (apt-get install trafficserver)".to_owned())
            }
            _ => None,
        }
    }

    fn dir(&self, peer: Peer) -> PathBuf {
        self.work.join("peers").join(peer.slug())
    }
}

/// Fails early when something already listens on a port a server needs.
pub fn check_ports_free(peer: Peer) -> anyhow::Result<()> {
    child::check_tcp_ports_free(peer.ports(), peer.label())
}

/// A running caching server; stopped when dropped.
pub struct PeerProcess {
    pub peer: Peer,
    child: Child,
}

impl PeerProcess {
    /// Writes the server's config afresh (with an empty cache), starts it and waits until it
    /// answers. Pinned: the server runs on CPU 0 only, with one worker where it has a setting
    /// for that.
    pub fn start(peer: Peer, setup: &PeerSetup, pinned: bool) -> anyhow::Result<Self> {
        if let Some(why) = setup.missing(peer) {
            bail!("{why}");
        }
        check_ports_free(peer)?;
        let dir = setup.dir(peer);
        child::fresh_dir(&dir)?;
        let inner = match peer {
            Peer::Edge => edge_command(setup, &dir, pinned)?,
            Peer::Nginx => nginx_command(setup, &dir, pinned)?,
            Peer::Varnish => varnish_command(setup, &dir, pinned)?,
            Peer::Ats | Peer::AtsDefaults => ats_command(setup, &dir, peer, pinned)?,
        };
        let cmd = if pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(inner.get_program());
            c.args(inner.get_args());
            for (k, v) in inner.get_envs() {
                match v {
                    Some(v) => c.env(k, v),
                    None => c.env_remove(k),
                };
            }
            c
        } else {
            inner
        };
        let child = child::spawn_in(cmd, &dir, peer.label())?;
        let mut process = Self { peer, child };
        process.wait_ready(&dir, Duration::from_secs(30))?;
        Ok(process)
    }

    fn wait_ready(&mut self, dir: &Path, within: Duration) -> anyhow::Result<()> {
        let peer = self.peer;
        let ready = || match peer {
            Peer::Edge => Http1Conn::connect(SocketAddr::from(([127, 0, 0, 1], EDGE_ADMIN_PORT)))
                .and_then(|mut c| c.get("/readyz"))
                .is_ok_and(|(status, _)| status == 200),
            // Traffic Server answers before its cache is open; a miss then would not be
            // cached, so wait for the cache too.
            Peer::Ats | Peer::AtsDefaults => {
                fs::read_to_string(dir.join("log/diags.log"))
                    .is_ok_and(|t| t.contains("cache enabled"))
                    && answers(peer.addr())
            }
            _ => answers(peer.addr()),
        };
        match child::wait_ready(&mut self.child, within, Duration::from_millis(50), ready)? {
            Startup::Ready => Ok(()),
            Startup::Exited(status) => bail!(
                "{} exited during start-up ({status}); see the logs in {}",
                peer.label(),
                dir.display()
            ),
            Startup::TimedOut => bail!(
                "{} did not become ready within {within:?}; see the logs in {}",
                peer.label(),
                dir.display()
            ),
        }
    }

    /// The server's processes: the main one and all its descendants (nginx workers, Varnish's
    /// cache process).
    pub fn pids(&self) -> Vec<u32> {
        procfs::with_descendants(self.child.id())
    }

    /// CPU time of all server processes so far, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        procfs::total_cpu_ticks(&self.pids())
    }

    /// SIGTERM, then SIGKILL if it has not exited within ten seconds; then waits for its
    /// ports to be free.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        child::terminate(&mut self.child, self.peer.label())?;
        child::wait_ports_free(|| check_ports_free(self.peer))
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// Whether the server answers an HTTP request (any status) on `addr`.
fn answers(addr: SocketAddr) -> bool {
    Http1Conn::connect(addr)
        .and_then(|mut c| c.get("/estuary-bench-readiness"))
        .is_ok()
}

fn edge_command(setup: &PeerSetup, dir: &Path, pinned: bool) -> anyhow::Result<Command> {
    fs::create_dir_all(dir.join("store"))?;
    fs::create_dir_all(dir.join("disk"))?;
    let config = format!(
        r#"# Written by estuary-bench cache-vs-peers; relative paths are relative to this file.
[node]
id = "bench-cache-edge"
site = "bench"

[listen]
http = "127.0.0.1:{EDGE_PORT}"
admin = "127.0.0.1:{EDGE_ADMIN_PORT}"
http3 = false

# Empty: everything is a cache miss filled from the origin, then a cache hit.
[store]
root = "store"

[cache]
ram = "2GiB"
disk_dir = "disk"
disk = "4GiB"

[upstream]
origin = ["http://127.0.0.1:{ORIGIN_PORT}"]

[log]
access = "off"

{limits}"#,
        limits = crate::servers::EDGE_LIMITS
    );
    let path = dir.join("edge.toml");
    fs::write(&path, config)?;
    let mut cmd = Command::new(&setup.estuary_bin);
    cmd.arg("edge").arg("--config").arg(&path);
    if pinned {
        cmd.env("TOKIO_WORKER_THREADS", "1");
    } else {
        cmd.env_remove("TOKIO_WORKER_THREADS");
    }
    Ok(cmd)
}

/// nginx as a caching proxy, from `peers/nginx-edge.conf`.
fn nginx_command(setup: &PeerSetup, dir: &Path, pinned: bool) -> anyhow::Result<Command> {
    let cache = &setup.nginx_cache_dir;
    if cache.exists() {
        fs::remove_dir_all(cache).with_context(|| format!("removing {}", cache.display()))?;
    }
    fs::create_dir_all(cache)?;
    fs::create_dir_all(dir.join("logs"))?;
    let workers = if pinned { "1" } else { "auto" };
    let main = crate::servers::nginx_main_context(setup.as_root, workers, dir, 8192);
    let config = format!(
        r#"# Written by estuary-bench cache-vs-peers from peers/nginx-edge.conf.
{main}http {{
    sendfile on; tcp_nopush on; tcp_nodelay on;
    sendfile_max_chunk 2m;
    open_file_cache max=10000 inactive=60s; open_file_cache_valid 60s;
    keepalive_timeout 65s; keepalive_requests 1000000;
    access_log off;
    proxy_cache_path {cache} levels=1:2 keys_zone=edge:64m
                     max_size=2500m inactive=2h use_temp_path=off;
    upstream origin {{ server 127.0.0.1:{ORIGIN_PORT}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{NGINX_PORT} reuseport backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_cache edge;
            proxy_cache_key $uri;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10s;
            proxy_cache_lock_age 10s;
            proxy_buffering on;
            proxy_buffers 64 64k;
            proxy_max_temp_file_size 0;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"#,
        cache = cache.display(),
    );
    let path = dir.join("nginx.conf");
    fs::write(&path, config)?;
    let mut cmd = Command::new(&setup.nginx_bin);
    // In the foreground, so that the bench is its parent and can stop it.
    cmd.arg("-g")
        .arg("daemon off;")
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("logs/error.log"))
        .arg("-c")
        .arg(&path);
    Ok(cmd)
}

/// Varnish, from `peers/varnish.vcl` (request coalescing through its waiting list is on by
/// default).
fn varnish_command(setup: &PeerSetup, dir: &Path, pinned: bool) -> anyhow::Result<Command> {
    let vcl = format!(
        r#"vcl 4.1;
# Written by estuary-bench cache-vs-peers from peers/varnish.vcl.
backend origin {{ .host = "127.0.0.1"; .port = "{ORIGIN_PORT}"; }}
sub vcl_recv {{ unset req.http.Cookie; }}
sub vcl_backend_response {{ if (beresp.status == 200) {{ set beresp.ttl = 1h; }} }}
sub vcl_deliver {{ if (obj.hits > 0) {{ set resp.http.X-Cache = "HIT"; }} else {{ set resp.http.X-Cache = "MISS"; }} }}
"#
    );
    let path = dir.join("bench.vcl");
    fs::write(&path, vcl)?;
    let program = setup
        .varnishd_bin
        .as_ref()
        .context("varnishd is not installed")?;
    let mut cmd = Command::new(program);
    cmd.arg("-F")
        .arg("-n")
        .arg(dir.join("state"))
        .arg("-a")
        .arg(format!("127.0.0.1:{VARNISH_PORT}"))
        .arg("-T")
        .arg(format!("127.0.0.1:{VARNISH_ADMIN_PORT}"))
        .arg("-f")
        .arg(&path)
        .arg("-s")
        .arg("malloc,4G");
    if pinned {
        cmd.arg("-p").arg("thread_pools=1");
    }
    Ok(cmd)
}

/// The settings of `peers/ats-records.config` (Traffic Server 9.2 tuned so that it collapses
/// misses), on the bench's ports.
fn ats_tuned_records(pinned: bool) -> String {
    let threads = if pinned {
        // One exec thread, and no binding of threads to cores (which would undo taskset).
        "CONFIG proxy.config.exec_thread.autoconfig INT 0\n\
         CONFIG proxy.config.exec_thread.limit INT 1\n\
         CONFIG proxy.config.exec_thread.affinity INT 0\n"
    } else {
        "CONFIG proxy.config.exec_thread.autoconfig INT 1\n\
         CONFIG proxy.config.exec_thread.autoconfig.scale FLOAT 1.0\n\
         CONFIG proxy.config.exec_thread.limit INT 2\n\
         CONFIG proxy.config.exec_thread.affinity INT 1\n"
    };
    format!(
        "{threads}\
CONFIG proxy.config.accept_threads INT 1
CONFIG proxy.config.task_threads INT 2
CONFIG proxy.config.cache.threads_per_disk INT 8
CONFIG proxy.config.http.insert_request_via_str INT 1
CONFIG proxy.config.http.insert_response_via_str INT 0
CONFIG proxy.config.http.keep_alive_no_activity_timeout_in INT 120
CONFIG proxy.config.http.keep_alive_no_activity_timeout_out INT 120
CONFIG proxy.config.http.cache.http INT 1
CONFIG proxy.config.http.cache.required_headers INT 2
CONFIG proxy.config.net.connections_throttle INT 30000
CONFIG proxy.config.cache.ram_cache.size INT 2147483648
CONFIG proxy.config.cache.ram_cache_cutoff INT 4194304
CONFIG proxy.config.cache.max_doc_size INT 0
CONFIG proxy.config.cache.enable_read_while_writer INT 1
CONFIG proxy.config.http.background_fill_active_timeout INT 0
CONFIG proxy.config.http.background_fill_completed_threshold FLOAT 0.0
CONFIG proxy.config.http.cache.max_open_read_retries INT 20
CONFIG proxy.config.http.cache.open_read_retry_time INT 10
CONFIG proxy.config.http.cache.open_write_fail_action INT 0
CONFIG proxy.config.log.logging_enabled INT 0
CONFIG proxy.config.url_remap.remap_required INT 1
CONFIG proxy.config.url_remap.pristine_host_hdr INT 0
CONFIG proxy.config.reverse_proxy.enabled INT 1
CONFIG proxy.config.diags.debug.enabled INT 0
"
    )
}

/// `base` (the package's records.config) with every variable that `overrides` sets removed,
/// then `overrides` appended.
fn merge_records(base: &str, overrides: &str) -> String {
    let name = |line: &str| -> Option<String> {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("CONFIG"), Some(n)) => Some(n.to_owned()),
            _ => None,
        }
    };
    let overridden: Vec<String> = overrides.lines().filter_map(name).collect();
    let mut out: String = base
        .lines()
        .filter(|l| name(l).is_none_or(|n| !overridden.contains(&n)))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str("# Set by estuary-bench cache-vs-peers:\n");
    out.push_str(overrides);
    out
}

/// Traffic Server in its own runroot: the package's configuration folder copied into the work
/// folder, with the bench's records, remap and storage on top.
fn ats_command(setup: &PeerSetup, dir: &Path, peer: Peer, pinned: bool) -> anyhow::Result<Command> {
    let program = setup
        .traffic_server_bin
        .as_ref()
        .context("traffic_server is not installed")?;
    let etc = dir.join("etc");
    for sub in ["etc", "var", "run", "log", "cache"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let package_etc = Path::new("/etc/trafficserver");
    for entry in fs::read_dir(package_etc).with_context(|| {
        format!(
            "reading {} (apt-get install trafficserver)",
            package_etc.display()
        )
    })? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::copy(entry.path(), etc.join(entry.file_name()))?;
        } else if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &etc.join(entry.file_name()))?;
        }
    }
    // As root, `#-1` keeps Traffic Server from switching to its own user (which could not
    // write the work folder); it refuses to run as the user "root" by name.
    let user = if setup.as_root {
        "#-1"
    } else {
        "trafficserver"
    };
    let common = format!(
        "CONFIG proxy.config.http.server_ports STRING {ATS_PORT}:ipv4:ip-in=127.0.0.1\n\
         CONFIG proxy.config.admin.user_id STRING {user}\n"
    );
    let overrides = match peer {
        Peer::AtsDefaults if pinned => format!(
            "{common}CONFIG proxy.config.exec_thread.autoconfig INT 0\n\
             CONFIG proxy.config.exec_thread.limit INT 1\n\
             CONFIG proxy.config.exec_thread.affinity INT 0\n"
        ),
        Peer::AtsDefaults => common,
        _ => format!("{common}{}", ats_tuned_records(pinned)),
    };
    let base = fs::read_to_string(etc.join("records.config")).unwrap_or_default();
    fs::write(etc.join("records.config"), merge_records(&base, &overrides))?;
    fs::write(
        etc.join("remap.config"),
        format!(
            "map http://127.0.0.1:{ATS_PORT}/ http://127.0.0.1:{ORIGIN_PORT}/\n\
             map http://localhost:{ATS_PORT}/ http://127.0.0.1:{ORIGIN_PORT}/\n\
             map http://localhost/ http://127.0.0.1:{ORIGIN_PORT}/\n"
        ),
    )?;
    // A folder with a size: Traffic Server makes a cache file of that size in it.
    fs::write(
        etc.join("storage.config"),
        format!("{} 2G\n", dir.join("cache").display()),
    )?;
    let runroot = dir.join("runroot.yaml");
    fs::write(
        &runroot,
        format!(
            "prefix: /usr\nexec_prefix: /usr\nbindir: /usr/bin\nsbindir: /usr/sbin\n\
             sysconfdir: {etc}\ndatadir: {cache}\nincludedir: /usr/include\n\
             libdir: /usr/lib/trafficserver\nlibexecdir: /usr/lib/trafficserver/modules\n\
             localstatedir: {var}\nruntimedir: {run}\nlogdir: {log}\ncachedir: {cache}\n",
            etc = etc.display(),
            cache = dir.join("cache").display(),
            var = dir.join("var").display(),
            run = dir.join("run").display(),
            log = dir.join("log").display(),
        ),
    )?;
    let mut cmd = Command::new(program);
    cmd.arg(format!("--run-root={}", runroot.display()));
    Ok(cmd)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if entry.file_type()?.is_file() {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The version a program reports on its first line of `args`' output.
pub fn version_line(program: &Path, args: &[&str]) -> String {
    crate::harness::program_output(program, args).map_or_else(
        || "unknown".to_owned(),
        |text| {
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with("traffic_server: using"))
                .unwrap_or("unknown")
                .to_owned()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_overrides_replace_package_values() {
        let base = "# comment\nCONFIG proxy.config.a INT 1\nCONFIG proxy.config.b INT 2\n";
        let merged = merge_records(base, "CONFIG proxy.config.a INT 9\n");
        assert!(merged.contains("# comment\n"));
        assert!(merged.contains("CONFIG proxy.config.b INT 2\n"));
        assert!(!merged.contains("proxy.config.a INT 1"));
        assert!(merged.ends_with("CONFIG proxy.config.a INT 9\n"));
    }

    #[test]
    fn ports_do_not_clash_with_edge_vs_nginx() {
        let theirs = [18080, 18443, 18081, 28080, 28443];
        for p in [
            Peer::Edge,
            Peer::Nginx,
            Peer::Varnish,
            Peer::Ats,
            Peer::AtsDefaults,
        ] {
            for port in p.ports() {
                assert!(!theirs.contains(&port));
                assert_ne!(port, ORIGIN_PORT);
            }
        }
    }
}
