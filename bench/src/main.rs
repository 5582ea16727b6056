//! `estuary-bench`: end-to-end comparisons of Estuary with peer servers on one machine.
//!
//! `estuary-bench edge-vs-nginx` serves one generated HLS title from `estuary edge` and from
//! nginx, one server at a time, measures hot hits with wrk, h2load and an HTTP/3 client, and
//! reports every figure as an edge/nginx ratio from the same run.
//!
//! `estuary-bench cache-vs-peers` puts the edge's pull-through cache next to nginx
//! `proxy_cache`, Varnish and Apache Traffic Server in front of one origin: a stampede of
//! clients on one cold object (origin fetches, followers' time to first byte) and hot RAM-tier
//! hits with wrk.
//!
//! `estuary-bench dns-vs-peers` puts Estuary's geo-DNS next to gdnsd and Knot DNS under
//! dnsperf, and measures the steering HTTP API under wrk.
//!
//! `estuary-bench chat-vs-mosquitto` puts the chat relay next to mosquitto (MQTT over
//! WebSockets) under the same client load: memory per idle connection and fan-out latency.

mod cache_peers;
mod chat;
mod child;
mod collapse;
mod content;
mod dns;
mod h3load;
mod harness;
mod httpget;
mod idle;
mod load;
mod origin;
mod package;
mod peers;
mod procfs;
mod report;
mod servers;
mod sfu;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::content::{Content, RENDITIONS};
use crate::httpget::Http1Conn;
use crate::load::{LoadShape, Measurement};
use crate::report::{IdleMemory, Outcome, Report, Row};

/// The protocols the idle-connection test holds connections of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdleProtocol {
    Plain,
    H2,
    H3,
}

impl IdleProtocol {
    fn label(self) -> &'static str {
        match self {
            Self::Plain => "plain HTTP/1.1",
            Self::H2 => "HTTP/2 over TLS",
            Self::H3 => "HTTP/3",
        }
    }
}
use crate::servers::{Kind, Server, Setup};

/// Estuary's benchmarks against peer servers on the same machine.
#[derive(Parser, Debug)]
#[command(name = "estuary-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Hot hits on the same files: `estuary edge` against nginx over HTTP/1.1 (plain and TLS)
    /// and HTTP/2, pinned playlist requests (also with both writing an access log), HTTP/3
    /// (edge only) and idle connection memory.
    EdgeVsNginx(EdgeVsNginxArgs),
    /// The edge's pull-through cache against nginx proxy_cache, Varnish and Apache Traffic
    /// Server in front of the same origin: cold-miss collapse (200 clients on one uncached
    /// object) and hot RAM-tier hits (wrk).
    CacheVsPeers(cache_peers::CacheVsPeersArgs),
    /// `estuary package` against the equivalent ffmpeg CLI command on one 1080p source (speed,
    /// CPU, PSNR/SSIM and bitrate per rendition), and TUS upload throughput of `estuary origin`
    /// on loopback against curl-to-a-sink and dd ceilings.
    PackageVsFfmpeg(package::PackageVsFfmpegArgs),
    /// Estuary's geo-DNS against gdnsd (geoip plugin) and Knot DNS (geoip module, and a
    /// static zone) under dnsperf with a different EDNS Client Subnet per query: queries/s,
    /// server CPU per query, lost queries, answers checked with dig; and the steering HTTP API
    /// under wrk.
    DnsVsPeers(dns::DnsVsPeersArgs),
    /// `estuary chat-relay` against mosquitto (MQTT over WebSockets) under the same client
    /// load: memory per idle connection, and fan-out latency (p50/p99) in a 100-member group
    /// and a 10,000-member live room.
    ChatVsMosquitto(chat::ChatVsMosquittoArgs),
    /// `estuary sfu` against Janus's VideoRoom under the same WebRTC load (str0m peers on
    /// loopback): packets forwarded per second and per CPU-second, and per-packet latency
    /// p50/p99, for rooms of 2, 10 and 50 participants.
    SfuVsJanus(sfu::SfuVsJanusArgs),
}

#[derive(clap::Args, Debug)]
struct EdgeVsNginxArgs {
    /// How long each measured run lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Short runs (3 s) for a quick look; the figures are noisier.
    #[arg(long)]
    quick: bool,
    /// Work folder for the content, configs, certificate and logs.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Put the report into this markdown file (between the bench's markers).
    #[arg(long)]
    write_md: Option<PathBuf>,
    /// The estuary binary (default: `estuary` next to this program).
    #[arg(long)]
    estuary: Option<PathBuf>,
    /// Concurrent connections for wrk (h2load uses a quarter of them with 4 streams each).
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Idle keep-alive connections for the memory test.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// QUIC connections of the HTTP/3 load.
    #[arg(long, default_value_t = 4)]
    h3_connections: usize,
    /// Requests in flight on each QUIC connection.
    #[arg(long, default_value_t = 8)]
    h3_streams: usize,
    /// Measure each row this many times and keep the median run (by requests/s); default 3,
    /// or 1 with --quick.
    #[arg(long)]
    repeat: Option<usize>,
    /// nginx's plain and TLS ports (the edge's are fixed by its bench config:
    /// 18080, 18443 and admin 18081).
    #[arg(long, value_name = "PLAIN,TLS", default_value = "28080,28443", value_parser = parse_nginx_ports)]
    nginx_ports: servers::Ports,
    /// Run only these tests (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Test>,
}

/// The tests, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Test {
    /// HTTP/1.1 without TLS (wrk).
    Plain,
    /// HTTP/1.1 over TLS (wrk).
    Tls,
    /// HTTP/2 over TLS (h2load).
    H2,
    /// Playlists with the server on CPU 0 and wrk on CPU 1.
    Pinned,
    /// TLS playlists pinned as above, with both servers writing an access log to a file.
    PinnedLog,
    /// HTTP/3, edge only.
    H3,
    /// Memory with idle keep-alive connections.
    Idle,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        BenchCommand::EdgeVsNginx(args) => edge_vs_nginx(args),
        BenchCommand::CacheVsPeers(args) => cache_peers::run(args),
        BenchCommand::PackageVsFfmpeg(args) => package::run(args),
        BenchCommand::DnsVsPeers(args) => dns::run(args),
        BenchCommand::ChatVsMosquitto(args) => chat::run(args),
        BenchCommand::SfuVsJanus(args) => sfu::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("estuary-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The programs the bench runs.
struct Tools {
    wrk: PathBuf,
    h2load: PathBuf,
}

/// A set of files one row fetches, with the load tools' inputs for it.
struct ContentSet {
    label: String,
    /// A short name for file names: the rendition or "playlists".
    slug: String,
    paths: Vec<String>,
    wrk_script: PathBuf,
}

/// What every test needs.
struct Bench {
    args: EdgeVsNginxArgs,
    duration: Duration,
    /// Runs per figure; the median is kept.
    repeat: usize,
    warmup: Duration,
    setup: Setup,
    tools: Tools,
    content: Content,
    sets: Vec<ContentSet>,
    /// Notes for the report, gathered along the way.
    notes: harness::Notes,
    /// Whether the servers started now write an access log to a file.
    access_log: std::cell::Cell<bool>,
    /// The runtime of the bench's async clients (idle HTTP/2 and HTTP/3 connections).
    clients: std::cell::OnceCell<tokio::runtime::Runtime>,
}

/// A run in which more than this share of the machine's CPU went to neither the server nor the
/// load tool is considered disturbed and repeated.
const DISTURBED_SHARE: f64 = 0.06;

/// How long a run waits at most for the machine to be nearly idle, unless told otherwise.
const QUIET_WAIT: Duration = Duration::from_secs(120);

/// Waits (up to two minutes) until the machine is nearly idle, so that a run does not start
/// while other programs (a build, a test suite) hold the CPUs.
fn wait_for_quiet_machine() {
    wait_for_quiet_machine_within(QUIET_WAIT);
}

/// Waits (up to `longest`) until the machine is nearly idle.
fn wait_for_quiet_machine_within(longest: Duration) {
    let deadline = std::time::Instant::now() + longest;
    let mut warned = false;
    while std::time::Instant::now() < deadline {
        let Ok((b0, t0)) = procfs::machine_jiffies() else {
            return;
        };
        std::thread::sleep(Duration::from_millis(300));
        let Ok((b1, t1)) = procfs::machine_jiffies() else {
            return;
        };
        let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
        if busy < 0.1 {
            return;
        }
        if !warned {
            eprintln!(
                "    the machine is {:.0}% busy with other work; waiting for it to calm down",
                busy * 100.0
            );
            warned = true;
        }
    }
}

/// "28080,28443" -> nginx's plain and TLS ports.
fn parse_nginx_ports(text: &str) -> Result<servers::Ports, String> {
    let parse = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{p:?}: {e}"));
    match text.split_once(',') {
        Some((plain, tls)) => Ok(servers::Ports {
            plain: parse(plain)?,
            tls: parse(tls)?,
            admin: None,
        }),
        None => Err("expected two ports: PLAIN,TLS".to_owned()),
    }
}

fn require(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    servers::find_program(name)
        .with_context(|| format!("{name} is not installed (apt-get install {package})"))
}

fn edge_vs_nginx(args: EdgeVsNginxArgs) -> anyhow::Result<()> {
    let command = harness::command_line();
    let duration = harness::run_duration(args.quick, args.duration)?;
    let repeat = harness::repetitions(args.repeat, args.quick);
    let tools = Tools {
        wrk: require("wrk", "wrk")?,
        h2load: require("h2load", "nghttp2-client")?,
    };
    let nginx_bin = require("nginx", "nginx")?;
    require("openssl", "openssl")?;
    require("taskset", "util-linux")?;
    let estuary_bin = harness::existing_estuary_binary(args.estuary.as_deref())?;

    let needed_fds = args.idle_connections as u64 + 4096;
    let nofile = idle::raise_nofile_limit(needed_fds)?;
    if nofile < needed_fds {
        bail!(
            "the open-file limit is {nofile}, and {} idle connections need about {needed_fds}",
            args.idle_connections
        );
    }

    let work = harness::work_folder(&args.out)?;
    eprintln!("Generating the content under {} ...", work.display());
    let content = content::generate(&work)?;
    let (cert, key) = content::certificate(&work)?;
    let edge_config = servers::edge_config(&work, None)?;
    let edge_config_logged =
        servers::edge_config(&work, Some(&servers::access_log_path(&work, Kind::Edge)))?;
    let sets = content_sets(&work, &content)?;
    let setup = Setup {
        work: work.clone(),
        estuary_bin,
        nginx_bin,
        cert,
        key,
        edge_config,
        edge_config_logged,
        access_log: false,
        as_root: servers::running_as_root(),
        nginx_ports: args.nginx_ports,
    };
    for kind in [Kind::Edge, Kind::Nginx] {
        servers::check_ports_free(kind, setup.ports(kind))?;
    }

    let bench = Bench {
        warmup: Duration::from_secs(1).min(duration / 3),
        duration,
        repeat,
        setup,
        tools,
        content,
        sets,
        notes: Default::default(),
        access_log: Default::default(),
        clients: std::cell::OnceCell::new(),
        args,
    };
    bench.note_background_load()?;

    let only = bench.args.only.clone();
    let run = |t: Test| only.is_empty() || only.contains(&t);
    let mut rows = Vec::new();
    if run(Test::Plain) {
        rows.extend(bench.wrk_rows(false)?);
    }
    if run(Test::Tls) {
        rows.extend(bench.wrk_rows(true)?);
    }
    if run(Test::H2) {
        rows.extend(bench.h2_rows()?);
    }
    if run(Test::Pinned) {
        rows.extend(bench.pinned_rows()?);
    }
    if run(Test::PinnedLog) {
        rows.push(bench.pinned_log_row()?);
    }
    if run(Test::H3) {
        rows.extend(bench.h3_rows()?);
    }
    let idle = if run(Test::Idle) {
        [IdleProtocol::Plain, IdleProtocol::H2, IdleProtocol::H3]
            .into_iter()
            .map(|p| report::IdleRow {
                protocol: p.label(),
                edge: bench.idle_memory(Kind::Edge, p),
                // nginx from Debian 12 speaks no HTTP/3.
                nginx: (p != IdleProtocol::H3).then(|| bench.idle_memory(Kind::Nginx, p)),
            })
            .collect()
    } else {
        Vec::new()
    };

    bench.describe_shapes();
    let report = Report {
        run: report::RunInfo::new(command, versions(&bench)),
        rows,
        idle,
        notes: bench.notes.take(),
    };
    harness::publish_report(
        bench.args.write_md.as_deref(),
        report::BEGIN,
        report::END,
        &report.markdown(),
    )
}

/// A pinned row from the outcomes of the edge and nginx, in that order.
fn pinned_row(test: &str, content: &str, per_kind: Vec<Outcome>) -> Row {
    let mut per_kind = per_kind.into_iter();
    Row {
        test: test.to_owned(),
        content: content.to_owned(),
        edge: per_kind.next().unwrap_or(Err("not run".to_owned())),
        nginx: per_kind.next(),
        target: true,
        figures: report::PINNED,
    }
}

/// The segment sets (one per rendition) and the playlists, with a wrk script for each.
fn content_sets(work: &Path, content: &Content) -> anyhow::Result<Vec<ContentSet>> {
    let scripts = work.join("scripts");
    std::fs::create_dir_all(&scripts)?;
    let mut sets = Vec::new();
    let mut add = |label: String, slug: &str, paths: Vec<String>| -> anyhow::Result<()> {
        let wrk_script = scripts.join(format!("{slug}.lua"));
        std::fs::write(&wrk_script, load::wrk_script(&paths))?;
        sets.push(ContentSet {
            label,
            slug: slug.to_owned(),
            paths,
            wrk_script,
        });
        Ok(())
    };
    for (r, segments) in RENDITIONS.iter().zip(&content.segments) {
        let label = match r.segment_bytes {
            b if b >= 1_000_000 => format!("{} MB segments", b / 1_000_000),
            b => format!("{} KB segments", b / 1_000),
        };
        add(label, r.name, segments.clone())?;
    }
    let playlists = content.playlists();
    let media_len = content.file_len(&content.media_playlists[0])?;
    let master_len = content.file_len(&content.master)?;
    add(
        format!(
            "playlists ({}x {:.1} KB media + {:.1} KB master)",
            content.media_playlists.len(),
            media_len as f64 / 1e3,
            master_len as f64 / 1e3
        ),
        "playlists",
        playlists,
    )?;
    Ok(sets)
}

impl Bench {
    /// Adds a note for the report (once, however often it is made).
    fn note(&self, note: String) {
        self.notes.add(note);
    }

    fn logs(&self) -> PathBuf {
        self.setup.work.join("logs")
    }

    fn playlist_set(&self) -> &ContentSet {
        // content_sets puts the playlists last.
        &self.sets[self.sets.len() - 1]
    }

    /// Records how busy the machine is before the bench starts: other work on the two cores
    /// would distort the figures.
    fn note_background_load(&self) -> anyhow::Result<()> {
        let busy = self.notes.background_load()?;
        if busy > 10.0 {
            eprintln!(
                "warning: the machine was {busy:.0}% busy before the bench started; figures will be noisy"
            );
        }
        Ok(())
    }

    /// Starts a server and fetches every file once over plain HTTP/1.1, checking the status
    /// and length of each: the warm-up that makes every later request a hot hit.
    fn start(&self, kind: Kind, pinned: bool) -> anyhow::Result<Server> {
        eprintln!(
            "Starting {}{} ...",
            kind.label(),
            if pinned { " (pinned to CPU 0)" } else { "" }
        );
        let setup = Setup {
            access_log: self.access_log.get(),
            ..self.setup.clone()
        };
        let server = Server::start(kind, &setup, pinned)?;
        let mut conn = Http1Conn::connect(server.ports.plain_addr())?;
        for path in self.content.all_paths() {
            let (status, len) = conn
                .get(&path)
                .with_context(|| format!("warming {} with {path}", kind.label()))?;
            let expected = self.content.file_len(&path)?;
            if status != 200 || len != expected {
                bail!(
                    "{} answered GET {path} with {status} and {len} bytes (expected 200 and {expected})",
                    kind.label()
                );
            }
        }
        Ok(server)
    }

    /// Runs `load` against `server` once: a short warm-up run (discarded), then the measured
    /// run with the server's CPU time and the machine's read around it. A run during which
    /// other programs took a noticeable share of the CPU is repeated (up to ten times).
    fn measure_once(
        &self,
        server: &Server,
        load: impl Fn(Duration) -> anyhow::Result<Measurement>,
    ) -> anyhow::Result<Measurement> {
        let quiet = harness::Quiet {
            wait: QUIET_WAIT,
            warmup: self.warmup,
            max_retries: 10,
        };
        harness::measure_undisturbed(quiet, self.duration, || server.cpu_ticks(), load)
            .map(harness::CpuMeasured::into_measurement)
    }

    /// Runs `n_rows` rows against each server in `kinds`, `self.repeat` times. Every
    /// repetition starts each server afresh (alternating which starts first) and runs each row
    /// against every server back to back, alternating which goes first from row to row and
    /// from repetition to repetition, so that the runs compared with each other lie seconds
    /// apart: this machine's speed changes between spells minutes long, and a server measured
    /// in a slow spell against one measured in a fast spell said more about the spells than
    /// about the servers. Only one server is under load at a time; the other sits idle. Returns,
    /// per row, the median outcome for each server (by requests/s).
    fn run_group(
        &self,
        kinds: &[Kind],
        pinned: bool,
        n_rows: usize,
        label: impl Fn(usize) -> String,
        run: impl Fn(&Server, usize, Duration) -> anyhow::Result<Measurement>,
    ) -> anyhow::Result<Vec<Vec<Outcome>>> {
        let mut runs: Vec<Vec<Vec<Outcome>>> = vec![vec![Vec::new(); kinds.len()]; n_rows];
        for rep in 0..self.repeat {
            let start_order = harness::alternating_order(kinds.len(), rep);
            let mut servers: Vec<Option<Server>> = (0..kinds.len()).map(|_| None).collect();
            for &k in &start_order {
                servers[k] = Some(self.start(kinds[k], pinned)?);
            }
            for (row, row_runs) in runs.iter_mut().enumerate() {
                let order = harness::alternating_order(kinds.len(), rep + row);
                for k in order {
                    let Some(server) = servers[k].as_ref() else {
                        continue;
                    };
                    eprintln!(
                        "  {} from {} (run {} of {})",
                        label(row),
                        kinds[k].label(),
                        rep + 1,
                        self.repeat
                    );
                    let outcome = self
                        .measure_once(server, |d| run(server, row, d))
                        .map_err(|e| format!("{e:#}"));
                    if let Err(e) = &outcome {
                        eprintln!("    failed: {e}");
                    }
                    row_runs[k].push(outcome);
                }
            }
            for server in servers.into_iter().flatten() {
                server.stop()?;
            }
        }
        Ok(runs
            .into_iter()
            .map(|per_kind| per_kind.into_iter().map(median).collect())
            .collect())
    }

    fn wrk_shape(&self) -> LoadShape {
        LoadShape {
            connections: self.args.connections,
            threads: 2,
            streams_per_connection: 1,
            cpu: None,
        }
    }

    fn h2_shape(&self) -> LoadShape {
        LoadShape {
            connections: (self.args.connections / 4).max(2),
            threads: 2,
            streams_per_connection: 4,
            cpu: None,
        }
    }

    fn pinned_shape(&self) -> LoadShape {
        LoadShape {
            connections: self.args.connections,
            threads: 1,
            streams_per_connection: 1,
            cpu: Some(1),
        }
    }

    /// wrk over HTTP/1.1, plain or TLS: every content set against the edge and nginx.
    fn wrk_rows(&self, tls: bool) -> anyhow::Result<Vec<Row>> {
        let test = if tls {
            "HTTP/1.1 TLS (wrk)"
        } else {
            "HTTP/1.1 plain (wrk)"
        };
        let scheme = if tls { "tls" } else { "plain" };
        let shape = self.wrk_shape();
        let results = self.run_sets(test, |server, row, set, duration| {
                let kind = server.kind;
                let base = if tls {
                    format!("https://127.0.0.1:{}", server.ports.tls)
                } else {
                    format!("http://127.0.0.1:{}", server.ports.plain)
                };
                if tls && row == 0 {
                    let negotiated = servers::negotiated_tls(server.ports.tls_addr())
                        .unwrap_or_else(|e| format!("unknown ({e:#})"));
                    self.note(format!(
                        "TLS as wrk negotiates it (OpenSSL's default order, AES-256-GCM first; checked with openssl s_client): {} {negotiated}.",
                        kind.label()
                    ));
                }
                let log = self.logs().join(format!(
                    "wrk-{scheme}-{}-{}.txt",
                    set.slug,
                    kind.label()
                ));
                load::run_wrk(&self.tools.wrk, &shape, &base, &set.wrk_script, duration, &log)
            },
        )?;
        Ok(self.rows_from(test, tls, results, report::THROUGHPUT))
    }

    /// [`Bench::run_group`] with every content set as a row, against the edge and nginx, not
    /// pinned.
    fn run_sets(
        &self,
        test: &str,
        run: impl Fn(&Server, usize, &ContentSet, Duration) -> anyhow::Result<Measurement>,
    ) -> anyhow::Result<Vec<Vec<Outcome>>> {
        self.run_group(
            &[Kind::Edge, Kind::Nginx],
            false,
            self.sets.len(),
            |row| format!("{test}: {}", self.sets[row].label),
            |server, row, duration| run(server, row, &self.sets[row], duration),
        )
    }

    fn rows_from(
        &self,
        test: &str,
        target: bool,
        results: Vec<Vec<Outcome>>,
        figures: &'static [report::Figure],
    ) -> Vec<Row> {
        self.sets
            .iter()
            .zip(results)
            .map(|(set, per_kind)| {
                let mut per_kind = per_kind.into_iter();
                Row {
                    test: test.to_owned(),
                    content: set.label.clone(),
                    edge: per_kind.next().unwrap_or(Err("not run".to_owned())),
                    nginx: per_kind.next(),
                    target,
                    figures,
                }
            })
            .collect()
    }

    /// h2load over TLS (HTTP/2 by ALPN).
    fn h2_rows(&self) -> anyhow::Result<Vec<Row>> {
        let test = "HTTP/2 TLS (h2load)";
        let shape = self.h2_shape();
        let results = self.run_sets(test, |server, row, set, duration| {
                let kind = server.kind;
                let base = format!("https://127.0.0.1:{}", server.ports.tls);
                let name = format!("h2load-{}-{}", set.slug, kind.label());
                let uris = load::write_uri_file(
                    &self.logs().join(format!("{name}.uris")),
                    &base,
                    &set.paths,
                )?;
                let log = self.logs().join(format!("{name}.txt"));
                let request_log = self.logs().join(format!("{name}.requests.tsv"));
                let m = load::run_h2load(
                    &self.tools.h2load,
                    &shape,
                    &uris,
                    duration,
                    &log,
                    &request_log,
                );
                // The per-request log is large and only needed for the percentiles.
                let _ = std::fs::remove_file(&request_log);
                if row == 0 {
                    let tls = std::fs::read_to_string(&log)
                        .ok()
                        .and_then(|out| load::h2load_tls(&out))
                        .unwrap_or_else(|| "unknown".to_owned());
                    self.note(format!(
                        "TLS as h2load negotiated it (its own cipher order, AES-128-GCM first): {} {tls}.",
                        kind.label()
                    ));
                }
                m
            },
        )?;
        Ok(self.rows_from(test, true, results, report::THROUGHPUT))
    }

    /// Playlists with the server on CPU 0 (one worker) and wrk on CPU 1, plain and TLS.
    fn pinned_rows(&self) -> anyhow::Result<Vec<Row>> {
        let set = self.playlist_set();
        let edge_threads = std::cell::Cell::new(0);
        let results = self.run_group(
            &[Kind::Edge, Kind::Nginx],
            true,
            2,
            |row| {
                format!(
                    "pinned playlists, {}",
                    if row == 1 { "TLS" } else { "plain" }
                )
            },
            |server, row, duration| {
                let tls = row == 1;
                let m = self.pinned_wrk(server, tls, if tls { "tls" } else { "plain" }, duration);
                if server.kind == Kind::Edge {
                    edge_threads.set(edge_threads.get().max(server.threads()));
                }
                m
            },
        )?;
        self.note(format!(
            "Pinned rows: the server on CPU 0 (nginx `worker_processes 1`; the edge with \
             TOKIO_WORKER_THREADS=1, {} threads in all while serving), wrk -t1 -c{} on CPU 1.",
            edge_threads.get(),
            self.args.connections
        ));
        Ok(results
            .into_iter()
            .zip(["HTTP/1.1 plain, pinned (wrk)", "HTTP/1.1 TLS, pinned (wrk)"])
            .map(|(per_kind, test)| pinned_row(test, &set.label, per_kind))
            .collect())
    }

    /// One pinned wrk run on the playlists against `server`, its output in
    /// `wrk-pinned-{name}-{server}.txt`.
    fn pinned_wrk(
        &self,
        server: &Server,
        tls: bool,
        name: &str,
        duration: Duration,
    ) -> anyhow::Result<Measurement> {
        let base = if tls {
            format!("https://127.0.0.1:{}", server.ports.tls)
        } else {
            format!("http://127.0.0.1:{}", server.ports.plain)
        };
        let log = self
            .logs()
            .join(format!("wrk-pinned-{name}-{}.txt", server.kind.label()));
        load::run_wrk(
            &self.tools.wrk,
            &self.pinned_shape(),
            &base,
            &self.playlist_set().wrk_script,
            duration,
            &log,
        )
    }

    /// TLS playlists pinned as in [`Bench::pinned_rows`], with both servers writing an access
    /// log to a file: nginx in its default combined format (one `write` per request), the
    /// edge its JSON lines.
    fn pinned_log_row(&self) -> anyhow::Result<Row> {
        self.access_log.set(true);
        let results = self.run_group(
            &[Kind::Edge, Kind::Nginx],
            true,
            1,
            |_| "pinned playlists, TLS, access log to a file".to_owned(),
            |server, _, duration| self.pinned_wrk(server, true, "tls-access-log", duration),
        );
        self.access_log.set(false);
        // The row means little if a server wrote no log at all.
        for kind in [Kind::Edge, Kind::Nginx] {
            let path = self.setup.access_log_path(kind);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if len == 0 {
                bail!("{} wrote no access log to {}", kind.label(), path.display());
            }
        }
        self.note(
            "Access-log row: TLS playlists pinned as in the pinned rows, nginx with `access_log \
             FILE` (the default combined format, unbuffered), the edge with `[log] access = \
             \"FILE\"` (its JSON lines); each server starts with an empty file."
                .to_owned(),
        );
        Ok(pinned_row(
            "HTTP/1.1 TLS, pinned, access log to a file (wrk)",
            &self.playlist_set().label,
            results?.into_iter().next().unwrap_or_default(),
        ))
    }

    /// HTTP/3 against the edge alone (nginx 1.22 has none): the 600 KB rendition and the
    /// playlists.
    fn h3_rows(&self) -> anyhow::Result<Vec<Row>> {
        let shape = h3load::H3Shape {
            connections: self.args.h3_connections,
            streams_per_connection: self.args.h3_streams,
        };
        let sets: Vec<&ContentSet> = self
            .sets
            .iter()
            .filter(|s| s.slug == "540p" || s.slug == "playlists")
            .collect();
        let results = self.run_group(
            &[Kind::Edge],
            false,
            sets.len(),
            |row| format!("HTTP/3: {}", sets[row].label),
            |_, row, duration| {
                h3load::run(
                    servers::EDGE_PORTS.tls_addr(),
                    &self.setup.cert,
                    &sets[row].paths,
                    shape,
                    duration,
                )
            },
        )?;
        self.note(format!(
            "HTTP/3 rows: the bench's own client (quinn + h3, {} connections x {} requests in \
             flight) runs inside the bench process on the same two CPUs as the edge.",
            shape.connections, shape.streams_per_connection
        ));
        Ok(sets
            .iter()
            .zip(results)
            .map(|(set, per_kind)| Row {
                test: format!(
                    "HTTP/3 (bench h3 client, {}x{})",
                    shape.connections, shape.streams_per_connection
                ),
                content: set.label.clone(),
                edge: per_kind
                    .into_iter()
                    .next()
                    .unwrap_or(Err("not run".to_owned())),
                nginx: None,
                target: false,
                figures: report::THROUGHPUT,
            })
            .collect())
    }

    /// A freshly started server (one playlist fetched, no segments mapped), then
    /// `idle_connections` keep-alive connections that each made one small request.
    fn idle_memory(&self, kind: Kind, protocol: IdleProtocol) -> Result<IdleMemory, String> {
        let run = || -> anyhow::Result<IdleMemory> {
            eprintln!(
                "Idle connections ({}): {} to {} ...",
                protocol.label(),
                self.args.idle_connections,
                kind.label()
            );
            let server = Server::start(kind, &self.setup, false)?;
            let path = &self.content.master;
            let mut first = Http1Conn::connect(server.ports.plain_addr())?;
            first.get(path)?;
            drop(first);
            std::thread::sleep(Duration::from_millis(500));
            let before = server.rss();
            let count = self.args.idle_connections;
            let tls = server.ports.tls_addr();
            let cert = &self.setup.cert;
            let held: Vec<idle::Held> = match protocol {
                IdleProtocol::Plain => idle::open(server.ports.plain_addr(), path, count)?
                    .into_iter()
                    .map(|c| Box::new(c) as idle::Held)
                    .collect(),
                IdleProtocol::H2 => self
                    .client_runtime()?
                    .block_on(idle::open_h2(tls, cert, path, count))?,
                IdleProtocol::H3 => self
                    .client_runtime()?
                    .block_on(idle::open_h3(tls, cert, path, count))?,
            };
            std::thread::sleep(Duration::from_secs(2));
            let after = server.rss();
            drop(held);
            server.stop()?;
            Ok(IdleMemory {
                connections: count,
                before,
                after,
            })
        };
        run().map_err(|e| format!("{e:#}"))
    }

    /// A runtime for the bench's async clients; the connections it opened keep being driven
    /// by its worker thread while the bench reads the server's memory.
    fn client_runtime(&self) -> anyhow::Result<&tokio::runtime::Runtime> {
        if let Some(rt) = self.clients.get() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        Ok(self.clients.get_or_init(|| rt))
    }

    fn describe_shapes(&self) {
        let w = self.wrk_shape();
        let h = self.h2_shape();
        self.note(format!(
            "Each figure is the median of {} run(s) of {:?}, each after a {:?} warm-up run. Each \
             repetition started both servers afresh and warmed each by fetching every file once, then \
             ran each row against one server and at once against the other (alternating which went \
             first), never both under load at once. wrk: -t{} -c{}; h2load: -t{} -c{} -m{}. \
             Latency percentiles are per request as the load tool saw it; MB/s counts the \
             response bytes the client read (heads included for wrk and h2load, bodies only for \
             HTTP/3). CPU is user+system time of all server processes (nginx master and workers) \
             during the measured run.",
            self.repeat,
            self.duration,
            self.warmup,
            w.threads,
            w.connections,
            h.threads,
            h.connections,
            h.streams_per_connection
        ));
    }
}

/// The median run by requests/s, remembering every run's requests/s; the first error if any
/// run failed.
fn median(runs: Vec<Outcome>) -> Outcome {
    let mut kept = runs.into_iter().collect::<Result<Vec<_>, _>>()?;
    if kept.is_empty() {
        return Err("not run".to_owned());
    }
    let all: Vec<f64> = kept.iter().map(Measurement::requests_per_second).collect();
    kept.sort_by(|a, b| a.requests_per_second().total_cmp(&b.requests_per_second()));
    let mut m = kept.swap_remove(kept.len() / 2);
    m.runs_requests_per_second = all;
    Ok(m)
}

/// Versions of everything that took part, as the programs report them.
fn versions(bench: &Bench) -> Vec<(String, String)> {
    let first_line = |program: &Path, args: &[&str]| -> String {
        harness::program_output(program, args).map_or_else(
            || "unknown".to_owned(),
            |text| text.lines().next().unwrap_or("").trim().to_owned(),
        )
    };
    vec![
        (
            "estuary".to_owned(),
            format!("commit {}", harness::git_describe()),
        ),
        (
            "nginx".to_owned(),
            first_line(&bench.setup.nginx_bin, &["-v"])
                .trim_start_matches("nginx version: nginx/")
                .to_owned(),
        ),
        (
            "wrk".to_owned(),
            first_line(&bench.tools.wrk, &["-v"])
                .split_whitespace()
                .nth(1)
                .unwrap_or("unknown")
                .to_owned(),
        ),
        (
            "h2load".to_owned(),
            first_line(&bench.tools.h2load, &["--version"])
                .trim_start_matches("h2load nghttp2/")
                .to_owned(),
        ),
        (
            "OpenSSL".to_owned(),
            first_line(Path::new("openssl"), &["version"])
                .trim_start_matches("OpenSSL ")
                .split(" (")
                .next()
                .unwrap_or("unknown")
                .to_owned(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "estuary-bench",
            "edge-vs-nginx",
            "--duration",
            "5s",
            "--only",
            "plain,h3",
            "--write-md",
            "BENCHMARKS.md",
        ])
        .expect("parse");
        let BenchCommand::EdgeVsNginx(args) = cli.command else {
            unreachable!("parsed as edge-vs-nginx")
        };
        assert_eq!(args.duration, Duration::from_secs(5));
        assert_eq!(args.only, vec![Test::Plain, Test::H3]);
        assert_eq!(args.out, PathBuf::from("bench-out"));
        assert_eq!(
            (args.nginx_ports.plain, args.nginx_ports.tls),
            (28080, 28443)
        );
        let cli = Cli::try_parse_from([
            "estuary-bench",
            "edge-vs-nginx",
            "--nginx-ports",
            "38080,38443",
        ])
        .expect("parse");
        let BenchCommand::EdgeVsNginx(args) = cli.command else {
            unreachable!("parsed as edge-vs-nginx")
        };
        assert_eq!(
            (args.nginx_ports.plain, args.nginx_ports.tls),
            (38080, 38443)
        );
        assert!(
            Cli::try_parse_from(["estuary-bench", "edge-vs-nginx", "--nginx-ports", "38080"])
                .is_err()
        );
    }

    /// `estuary-bench <args>` parses into a command, or `None` when clap refuses it.
    fn parse(args: &[&str]) -> Option<BenchCommand> {
        Cli::try_parse_from(std::iter::once("estuary-bench").chain(args.iter().copied()))
            .ok()
            .map(|cli| cli.command)
    }

    #[test]
    fn the_peer_command_lines_parse() {
        type Case<'a> = (&'a [&'a str], fn(&BenchCommand) -> bool, [&'a str; 3]);
        let cases: [Case<'_>; 2] = [
            (
                &[
                    "cache-vs-peers",
                    "--quick",
                    "--peers",
                    "nginx,varnish,ats-defaults",
                    "--only",
                    "collapse,pinned",
                ],
                |c| matches!(c, BenchCommand::CacheVsPeers(_)),
                ["cache-vs-peers", "--peers", "squid"],
            ),
            (
                &[
                    "dns-vs-peers",
                    "--quick",
                    "--servers",
                    "gdnsd,knot,knot-static,estuary",
                    "--only",
                    "dns",
                ],
                |c| matches!(c, BenchCommand::DnsVsPeers(_)),
                ["dns-vs-peers", "--servers", "bind"],
            ),
        ];
        // Each command with all its options, then with a server it does not know.
        for (args, is_command, unknown_server) in cases {
            assert!(parse(args).as_ref().is_some_and(is_command), "{args:?}");
            assert!(parse(&unknown_server).is_none(), "{unknown_server:?}");
        }
    }

    #[test]
    fn the_package_command_line_parses() {
        let cli = Cli::try_parse_from([
            "estuary-bench",
            "package-vs-ffmpeg",
            "--quick",
            "--only",
            "upload",
            "--write-md",
            "BENCHMARKS.md",
        ])
        .expect("parse");
        let BenchCommand::PackageVsFfmpeg(args) = cli.command else {
            unreachable!("parsed as package-vs-ffmpeg")
        };
        assert!(args.quick);
        assert_eq!(args.only, vec![package::Part::Upload]);
        assert_eq!(args.preset, "veryfast");
        assert_eq!(args.segment_seconds, 4);
    }
}
