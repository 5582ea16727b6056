//! The DNS servers under test, each run in the foreground as a child of the bench, alone on
//! loopback on its own port, pinned to CPU 0 with one worker: Estuary's geo-DNS (`estuary
//! steering` with `[listen] dns`), gdnsd with its geoip plugin, Knot DNS with its geoip module,
//! and Knot with a plain static zone (the ceiling).

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ValueEnum;

use super::data::{self, Topology};
use crate::child;
pub use crate::child::{ServerProcess, check_port_free};

/// A DNS server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DnsServer {
    /// Estuary's geo-DNS: `estuary steering` with `[listen] dns`.
    Estuary,
    /// The same with hickory-server's per-query log lines filtered out
    /// (`RUST_LOG=info,hickory_server=warn`): a diagnostic row, not a configuration, and not
    /// in a default run.
    EstuaryQuietLog,
    /// gdnsd with plugin_geoip (a `nets` map, no MaxMind database).
    Gdnsd,
    /// Knot DNS with its geoip module in subnet mode.
    Knot,
    /// Knot DNS with a plain static zone (no geo answers): the ceiling.
    KnotStatic,
}

/// Ports: UDP and TCP DNS on each; Estuary's steering also needs an HTTP listener.
pub const ESTUARY_DNS_PORT: u16 = 19153;
pub const GDNSD_PORT: u16 = 19154;
pub const KNOT_PORT: u16 = 19155;
pub const KNOT_STATIC_PORT: u16 = 19156;
/// The HTTP listener of the steering instance that serves DNS (readiness only).
pub const ESTUARY_DNS_HTTP_PORT: u16 = 19161;
/// The steering instance measured with wrk (no DNS listener).
pub const STEERING_API_PORT: u16 = 19160;

/// The asset every edge holds, which the steering API runs ask for.
pub const ASSET: &str = "bench-asset";
/// The token key of the bench's steering configs (32 bytes, hex).
const TOKEN_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

impl DnsServer {
    /// The servers of a default run (the diagnostic row only on request: since main's
    /// 8392df6 hickory's crates log at warn by default, so it equals the first).
    pub const ALL: [DnsServer; 4] = [
        DnsServer::Estuary,
        DnsServer::Gdnsd,
        DnsServer::Knot,
        DnsServer::KnotStatic,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DnsServer::Estuary => "Estuary geo-DNS",
            DnsServer::EstuaryQuietLog => "Estuary geo-DNS, hickory_server logs off",
            DnsServer::Gdnsd => "gdnsd geoip",
            DnsServer::Knot => "Knot geoip",
            DnsServer::KnotStatic => "Knot, static",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            DnsServer::Estuary => "estuary",
            DnsServer::EstuaryQuietLog => "estuary-quiet-log",
            DnsServer::Gdnsd => "gdnsd",
            DnsServer::Knot => "knot",
            DnsServer::KnotStatic => "knot-static",
        }
    }

    pub fn port(self) -> u16 {
        match self {
            DnsServer::Estuary | DnsServer::EstuaryQuietLog => ESTUARY_DNS_PORT,
            DnsServer::Gdnsd => GDNSD_PORT,
            DnsServer::Knot => KNOT_PORT,
            DnsServer::KnotStatic => KNOT_STATIC_PORT,
        }
    }

    pub fn addr(self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port()))
    }

    /// Whether this is Estuary (in either logging set-up).
    pub fn is_estuary(self) -> bool {
        matches!(self, DnsServer::Estuary | DnsServer::EstuaryQuietLog)
    }
}

/// The programs and the work folder.
#[derive(Debug, Clone)]
pub struct DnsSetup {
    pub work: PathBuf,
    pub estuary_bin: PathBuf,
    pub gdnsd_bin: Option<PathBuf>,
    pub knotd_bin: Option<PathBuf>,
}

impl DnsSetup {
    /// Why a server cannot run here, if it cannot.
    pub fn missing(&self, server: DnsServer) -> Option<String> {
        match server {
            DnsServer::Estuary | DnsServer::EstuaryQuietLog if !self.estuary_bin.is_file() => {
                Some(format!(
                    "{} not found (cargo build --release -p estuary)",
                    self.estuary_bin.display()
                ))
            }
            DnsServer::Gdnsd if self.gdnsd_bin.is_none() => {
                Some("gdnsd is not installed (apt-get install gdnsd)".to_owned())
            }
            DnsServer::Knot | DnsServer::KnotStatic if self.knotd_bin.is_none() => {
                Some("knotd is not installed (apt-get install knot)".to_owned())
            }
            DnsServer::Knot if !knot_geoip_module_installed() => Some(
                "Knot's geoip module is not installed (apt-get install knot-module-geoip)"
                    .to_owned(),
            ),
            _ => None,
        }
    }

    pub fn dir(&self, server: DnsServer) -> PathBuf {
        self.work.join("servers").join(server.slug())
    }
}

/// Whether Debian's `knot-module-geoip` is there (Knot loads it from its module folder).
fn knot_geoip_module_installed() -> bool {
    let Ok(dir) = fs::read_dir("/usr/lib") else {
        return false;
    };
    dir.filter_map(Result::ok).any(|arch| {
        fs::read_dir(arch.path().join("knot"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|m| m.path().join("geoip.so").is_file())
            })
            .unwrap_or(false)
    })
}

fn ports(server: DnsServer) -> Vec<u16> {
    match server {
        DnsServer::Estuary | DnsServer::EstuaryQuietLog => {
            vec![ESTUARY_DNS_PORT, ESTUARY_DNS_HTTP_PORT]
        }
        s => vec![s.port()],
    }
}

/// Checks every port of `server`.
pub fn check_ports_free(server: DnsServer) -> anyhow::Result<()> {
    for p in ports(server) {
        check_port_free(p, server.label())?;
    }
    Ok(())
}

/// Writes Estuary's steering files (state snapshot, coverage zones) into `dir` and a config
/// that listens for HTTP on `http_port` and, with `dns_port`, serves the geo-DNS zone.
/// Returns the config's path. These are the keys the bench needs of the steering config.
pub fn write_estuary_config(
    dir: &Path,
    topology: &Topology,
    http_port: u16,
    dns_port: Option<u16>,
) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    fs::write(
        dir.join("state.json"),
        serde_json::to_vec_pretty(&topology.estuary_state(ASSET))?,
    )?;
    fs::write(
        dir.join("coverage.json"),
        serde_json::to_vec(&topology.estuary_coverage())?,
    )?;
    let dns_listen = dns_port.map_or(String::new(), |p| format!("dns = \"127.0.0.1:{p}\"\n"));
    let dns_table = if dns_port.is_some() {
        format!(
            "\n[dns]\nzone = \"{zone}\"\nttl = \"{ttl}s\"\n\
             # A site's two edges, as the peers answer.\nanswers = 2\n\
             # One UDP worker, as gdnsd's udp_threads and Knot's udp-workers.\nworkers = 1\n\
             nameservers = [\"ns1.{zone}\"]\nns_addresses = [\"{ns}\"]\n\
             # On, but too high to limit: dnsperf sends every query from 127.0.0.1, one client\n\
             # /24, yet the limiter's cost per query is measured (gdnsd has no rate limiting,\n\
             # and Knot's rrl module is not loaded).\nrrl_responses_per_second = 100000000\n",
            zone = data::ZONE,
            ttl = data::GEO_TTL,
            ns = data::NS_ADDR,
        )
    } else {
        String::new()
    };
    let config = format!(
        r#"# Written by estuary-bench dns-vs-peers; relative paths are relative to this file.
[listen]
http = "127.0.0.1:{http_port}"
{dns_listen}
[control_plane]
state_file = "state.json"

[geo]
coverage_zones = "coverage.json"

[tokens]
kid = "k1"
key = "{TOKEN_KEY}"
ttl = "6h"

[steering]
# Two pathways: a site's two edges.
pathways = 2
scheme = "http"
check_assets = true
{dns_table}
[shutdown]
drain_timeout = "2s"
"#
    );
    let path = dir.join("steering.toml");
    fs::write(&path, config)?;
    Ok(path)
}

impl ServerProcess {
    /// Writes the server's config afresh into its folder, starts it pinned to CPU 0 (one
    /// worker) and waits until it answers a DNS query.
    pub fn start_dns(
        server: DnsServer,
        setup: &DnsSetup,
        topology: &Topology,
    ) -> anyhow::Result<Self> {
        if let Some(why) = setup.missing(server) {
            bail!("{why}");
        }
        check_ports_free(server)?;
        let dir = setup.dir(server);
        child::fresh_dir(&dir)?;
        let d = dir.display().to_string();
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"]);
        match server {
            DnsServer::Estuary | DnsServer::EstuaryQuietLog => {
                let config = write_estuary_config(
                    &dir,
                    topology,
                    ESTUARY_DNS_HTTP_PORT,
                    Some(ESTUARY_DNS_PORT),
                )?;
                cmd.arg(&setup.estuary_bin)
                    .arg("steering")
                    .arg("--config")
                    .arg(config)
                    .env("TOKIO_WORKER_THREADS", "1");
                if server == DnsServer::EstuaryQuietLog {
                    cmd.env("RUST_LOG", "info,hickory_server=warn");
                } else {
                    cmd.env_remove("RUST_LOG");
                }
            }
            DnsServer::Gdnsd => {
                fs::create_dir_all(dir.join("zones"))?;
                fs::write(dir.join("nets"), topology.gdnsd_nets())?;
                fs::write(
                    dir.join("config"),
                    topology.gdnsd_config(
                        server.port(),
                        &format!("{d}/run"),
                        &format!("{d}/state"),
                        &format!("{d}/nets"),
                    ),
                )?;
                fs::write(
                    dir.join("zones").join(data::ZONE.trim_end_matches('.')),
                    topology.gdnsd_zone(),
                )?;
                let program = setup.gdnsd_bin.as_ref().context("gdnsd is not installed")?;
                cmd.arg(program).arg("-c").arg(&dir).arg("start");
            }
            DnsServer::Knot | DnsServer::KnotStatic => {
                fs::create_dir_all(dir.join("run"))?;
                fs::create_dir_all(dir.join("db"))?;
                let zone = dir.join("cdn.example.zone");
                fs::write(&zone, topology.knot_zone())?;
                let geo = if server == DnsServer::Knot {
                    let geo = dir.join("geo.conf");
                    fs::write(&geo, topology.knot_geo())?;
                    Some(geo.display().to_string())
                } else {
                    None
                };
                let conf = dir.join("knot.conf");
                fs::write(
                    &conf,
                    topology.knot_config(
                        server.port(),
                        &d,
                        &zone.display().to_string(),
                        geo.as_deref(),
                    ),
                )?;
                let program = setup.knotd_bin.as_ref().context("knotd is not installed")?;
                cmd.arg(program).arg("-c").arg(&conf);
            }
        }
        let mut process = Self::spawn(server.label(), ports(server), cmd, &dir)?;
        process.wait_until(Duration::from_secs(30), || answers_dns(server.addr()))?;
        Ok(process)
    }

    /// Starts the steering service (no DNS listener) pinned to CPU 0 with one worker thread,
    /// for the HTTP API runs; waits for `/readyz`.
    pub fn start_steering_api(setup: &DnsSetup, topology: &Topology) -> anyhow::Result<Self> {
        let label = "Estuary steering API";
        if !setup.estuary_bin.is_file() {
            bail!(
                "{} not found (cargo build --release -p estuary)",
                setup.estuary_bin.display()
            );
        }
        check_port_free(STEERING_API_PORT, label)?;
        let dir = setup.work.join("servers").join("steering-api");
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let config = write_estuary_config(&dir, topology, STEERING_API_PORT, None)?;
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"])
            .arg(&setup.estuary_bin)
            .arg("steering")
            .arg("--config")
            .arg(config)
            .env("TOKIO_WORKER_THREADS", "1");
        let mut process = Self::spawn(label, vec![STEERING_API_PORT], cmd, &dir)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], STEERING_API_PORT));
        process.wait_until(Duration::from_secs(30), || {
            crate::httpget::Http1Conn::connect(addr)
                .and_then(|mut c| c.get("/readyz"))
                .is_ok_and(|(status, _)| status == 200)
        })?;
        Ok(process)
    }
}

/// Whether a DNS server answers a plain query for the zone's SOA-less name over UDP.
pub fn answers_dns(addr: SocketAddr) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    if sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .is_err()
    {
        return false;
    }
    let q = data::query_message(0x4242, data::GEO_NAME, None);
    if sock.send_to(&q, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    matches!(sock.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[..2] == [0x42, 0x42])
}
