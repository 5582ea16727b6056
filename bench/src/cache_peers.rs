//! `estuary-bench cache-vs-peers`: the edge's pull-through cache against nginx `proxy_cache`,
//! Varnish and Apache Traffic Server in front of one origin, in one run.
//!
//! 1. Cold-miss collapse: many clients at once on one uncached 2 MB object that the origin
//!    sends slowly (10 MiB/s), so that the fill overlaps the requests. Figures: origin fetches
//!    (from the origin's access log) and the followers' time to first byte.
//! 2. Hot hits from the cache's RAM tier: wrk on warmed segments and playlists, each server
//!    the same way, unpinned and pinned to one core.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ValueEnum;

use crate::collapse::{self, ClientTiming};
use crate::content::{self, Content};
use crate::harness;
use crate::httpget::Http1Conn;
use crate::load::{self, LoadShape, Measurement, percentile};
use crate::origin;
use crate::peers::{self, Peer, PeerProcess, PeerSetup};
use crate::procfs;
use crate::report::{self, Outcome};

const BEGIN: &str = "<!-- cache-peers: begin -->";
const END: &str = "<!-- cache-peers: end -->";

/// Segments of each size in the hot set (all fit every cache's RAM many times over).
const HOT_SEGMENTS: usize = 20;

#[derive(clap::Args, Debug)]
pub struct CacheVsPeersArgs {
    /// How long each measured hot-hit run lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Short runs (3 s, one repetition) for a quick look; the figures are noisier.
    #[arg(long)]
    quick: bool,
    /// Work folder for the content, configs, caches and logs.
    #[arg(long, default_value = "bench-out-cache")]
    out: PathBuf,
    /// Put the report into this markdown file (between the `cache-peers` markers).
    #[arg(long)]
    write_md: Option<PathBuf>,
    /// The estuary binary (default: `estuary` next to this program).
    #[arg(long)]
    estuary: Option<PathBuf>,
    /// Concurrent clients of the cold-miss stampede.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// The origin's pace for `/slow/` paths, in MiB/s.
    #[arg(long, default_value_t = 10.0)]
    origin_mib_per_second: f64,
    /// Concurrent connections for wrk.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Measure each figure this many times and keep the median; default 3, or 1 with --quick.
    #[arg(long)]
    repeat: Option<usize>,
    /// The servers to compare (default: all; the edge always takes part).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<Peer>,
    /// Run only these tests (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<CacheTest>,
    /// Before each run, wait at most this long for the machine to be idle.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    quiet_wait: Duration,
    /// Run a hot-hit figure again at most this many times when other programs took more than
    /// 6% of the CPU during it (then it is kept and flagged in the report).
    #[arg(long, default_value_t = 10)]
    max_retries: usize,
}

/// The tests, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheTest {
    /// Cold-miss collapse: the stampede on one uncached object.
    Collapse,
    /// Hot RAM-tier hits with wrk, unpinned.
    Hot,
    /// Hot playlist hits, the server on CPU 0 and wrk on CPU 1.
    Pinned,
}

/// One stampede on one server.
#[derive(Debug)]
struct CollapseRun {
    fetches: usize,
    clients: Vec<Result<ClientTiming, String>>,
    expected_len: u64,
}

/// Figures of one stampede, in milliseconds.
#[derive(Debug, Clone)]
struct CollapseFigures {
    fetches: usize,
    leader_ttfb_ms: f64,
    ttfb_p50_ms: f64,
    ttfb_p99_ms: f64,
    total_p50_ms: f64,
    total_p99_ms: f64,
    /// Time between the first and the last request write.
    release_spread_ms: f64,
    /// Clients that failed or got a wrong status or length.
    failed: usize,
    first_failure: Option<String>,
}

impl CollapseRun {
    /// Followers are all clients except the one whose request was written first.
    fn figures(&self) -> Option<CollapseFigures> {
        let mut ok: Vec<&ClientTiming> = Vec::new();
        let mut failed = 0;
        let mut first_failure = None;
        for c in &self.clients {
            match c {
                Ok(t) if t.status == 200 && t.body_bytes == self.expected_len => ok.push(t),
                Ok(t) => {
                    failed += 1;
                    first_failure.get_or_insert_with(|| {
                        format!("status {} with {} body bytes", t.status, t.body_bytes)
                    });
                }
                Err(e) => {
                    failed += 1;
                    first_failure.get_or_insert_with(|| e.clone());
                }
            }
        }
        ok.sort_by_key(|t| t.sent_at);
        let (leader, followers) = ok.split_first()?;
        let first_sent = leader.sent_at;
        let last_sent = followers.last().map_or(first_sent, |t| t.sent_at);
        let micros = |f: fn(&ClientTiming) -> Duration| -> Vec<u64> {
            let mut v: Vec<u64> = followers.iter().map(|t| f(t).as_micros() as u64).collect();
            v.sort_unstable();
            v
        };
        let ttfb = micros(|t| t.ttfb);
        let total = micros(|t| t.total);
        let ms = |v: &[u64], p: f64| percentile(v, p).map_or(f64::NAN, |us| us as f64 / 1e3);
        Some(CollapseFigures {
            fetches: self.fetches,
            leader_ttfb_ms: leader.ttfb.as_secs_f64() * 1e3,
            ttfb_p50_ms: ms(&ttfb, 50.0),
            ttfb_p99_ms: ms(&ttfb, 99.0),
            total_p50_ms: ms(&total, 50.0),
            total_p99_ms: ms(&total, 99.0),
            release_spread_ms: (last_sent - first_sent).as_secs_f64() * 1e3,
            failed,
            first_failure,
        })
    }
}

/// The collapse result of one server over the repetitions.
#[derive(Debug)]
struct CollapseResult {
    peer: Peer,
    /// Every repetition's figures (or why it failed).
    runs: Vec<Result<CollapseFigures, String>>,
}

impl CollapseResult {
    /// The run with the median follower TTFB p50.
    fn median(&self) -> Option<&CollapseFigures> {
        let mut ok: Vec<&CollapseFigures> =
            self.runs.iter().filter_map(|r| r.as_ref().ok()).collect();
        ok.sort_by(|a, b| a.ttfb_p50_ms.total_cmp(&b.ttfb_p50_ms));
        ok.get(ok.len() / 2).copied()
    }

    fn fetches_per_run(&self) -> String {
        self.runs
            .iter()
            .map(|r| {
                r.as_ref()
                    .map_or("failed".to_owned(), |f| f.fetches.to_string())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The median of the fetch counts over the runs.
    fn median_fetches(&self) -> Option<usize> {
        let mut v: Vec<usize> = self
            .runs
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|f| f.fetches))
            .collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }
}

/// A figure of the hot-hit table: its label, how to get it from a measurement, and how to
/// show it.
type HotFigure = (
    &'static str,
    fn(&Measurement) -> Option<f64>,
    fn(f64) -> String,
);

/// A set of files the hot-hit rows fetch.
struct HotSet {
    label: String,
    slug: &'static str,
    paths: Vec<String>,
    script: PathBuf,
}

/// One hot-hit row: per server, the median measurement.
struct HotRow {
    test: String,
    content: String,
    results: Vec<(Peer, Outcome)>,
}

struct CacheBench {
    args: CacheVsPeersArgs,
    duration: Duration,
    repeat: usize,
    setup: PeerSetup,
    wrk: PathBuf,
    runtime: tokio::runtime::Runtime,
    origin_log: PathBuf,
    content: Content,
    peers: Vec<Peer>,
    notes: harness::Notes,
}

pub fn run(args: CacheVsPeersArgs) -> anyhow::Result<()> {
    let command = harness::command_line();
    let duration = harness::run_duration(args.quick, args.duration)?;
    if args.clients < 2 {
        bail!("--clients must be at least 2 (a leader and a follower)");
    }
    if !args.origin_mib_per_second.is_finite() || args.origin_mib_per_second <= 0.0 {
        bail!("--origin-mib-per-second must be positive");
    }
    let repeat = harness::repetitions(args.repeat, args.quick);
    let wrk = crate::require("wrk", "wrk")?;
    let nginx_bin = crate::require("nginx", "nginx")?;
    crate::require("taskset", "util-linux")?;
    let estuary_bin = harness::existing_estuary_binary(args.estuary.as_deref())?;
    // The stampede's sockets, wrk's, and the servers' (they inherit the limit).
    crate::idle::raise_nofile_limit(65_536)?;

    let work = harness::work_folder(&args.out)?;
    eprintln!("Generating the content under {} ...", work.display());
    let content = content::generate(&work)?;
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let shm = Path::new("/dev/shm");
    let nginx_cache_dir = if shm.is_dir() {
        shm.join(format!("estuary-bench-nginx-cache-{}", peers::NGINX_PORT))
    } else {
        work.join("nginx-cache")
    };
    let setup = PeerSetup {
        work: work.clone(),
        estuary_bin,
        nginx_bin,
        varnishd_bin: crate::servers::find_program("varnishd"),
        traffic_server_bin: crate::servers::find_program("traffic_server"),
        as_root: crate::servers::running_as_root(),
        nginx_cache_dir,
    };
    let mut peer_list = vec![Peer::Edge];
    let wanted = if args.peers.is_empty() {
        vec![Peer::Nginx, Peer::Varnish, Peer::Ats, Peer::AtsDefaults]
    } else {
        args.peers.clone()
    };
    for p in wanted {
        if !peer_list.contains(&p) {
            peer_list.push(p);
        }
    }
    for p in &peer_list {
        peers::check_ports_free(*p)?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let origin_log = logs.join("origin-access.log");
    let _ = std::fs::remove_file(&origin_log);
    let origin_addr = SocketAddr::from(([127, 0, 0, 1], peers::ORIGIN_PORT));
    let origin = runtime.block_on(origin::start(
        origin_addr,
        &content.root,
        args.origin_mib_per_second * 1024.0 * 1024.0,
        &origin_log,
    ))?;

    let bench = CacheBench {
        duration,
        repeat,
        setup,
        wrk,
        runtime,
        origin_log: origin.log,
        content,
        peers: peer_list,
        notes: Default::default(),
        args,
    };
    bench.note_background_load()?;
    let only = bench.args.only.clone();
    let run = |t: CacheTest| only.is_empty() || only.contains(&t);
    let collapse = if run(CacheTest::Collapse) {
        bench.collapse()?
    } else {
        Vec::new()
    };
    let sets = bench.hot_sets()?;
    let mut hot = Vec::new();
    if run(CacheTest::Hot) {
        hot.extend(bench.hot_rows(&sets, false)?);
    }
    if run(CacheTest::Pinned) {
        hot.extend(bench.hot_rows(&sets[sets.len() - 1..], true)?);
    }
    let markdown = bench.markdown(&command, &collapse, &hot);
    harness::publish_report(bench.args.write_md.as_deref(), BEGIN, END, &markdown)?;
    let _ = std::fs::remove_dir_all(&bench.setup.nginx_cache_dir);
    Ok(())
}

impl CacheBench {
    fn note(&self, note: String) {
        self.notes.add(note);
    }

    fn note_background_load(&self) -> anyhow::Result<()> {
        self.notes.background_load()?;
        self.note(format!(
            "Before each run the bench waited up to {:?} for the machine to be idle (under 10% busy), \
             and ran a hot-hit figure again (up to {} times) when more than 6% of the CPU went to \
             neither the server nor the bench; a figure still disturbed after that is kept and \
             flagged above.",
            self.args.quiet_wait, self.args.max_retries
        ));
        Ok(())
    }

    /// The stampede on a fresh cold object per server and repetition, servers one at a time
    /// (alternating the order between repetitions), each started afresh with an empty cache.
    fn collapse(&self) -> anyhow::Result<Vec<CollapseResult>> {
        let cold_dir = self.content.root.join("cold");
        if cold_dir.exists() {
            std::fs::remove_dir_all(&cold_dir)?;
        }
        std::fs::create_dir_all(&cold_dir)?;
        let source = self
            .content
            .root
            .join(self.content.segments[0][0].trim_start_matches('/'));
        let expected_len = std::fs::metadata(&source)
            .with_context(|| format!("stat {}", source.display()))?
            .len();
        // A new name on every bench run, so that nothing any server kept from an earlier run
        // can answer it.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut results: Vec<CollapseResult> = self
            .peers
            .iter()
            .map(|&peer| CollapseResult {
                peer,
                runs: Vec::new(),
            })
            .collect();
        for rep in 0..self.repeat {
            let order = harness::alternating_order(self.peers.len(), rep);
            for k in order {
                let peer = self.peers[k];
                eprintln!(
                    "Cold-miss collapse: {} clients on {} (run {} of {})",
                    self.args.clients,
                    peer.label(),
                    rep + 1,
                    self.repeat
                );
                let name = format!("{nonce}-{}-r{rep}.m4s", peer.slug());
                std::fs::hard_link(&source, cold_dir.join(&name))
                    .or_else(|_| std::fs::copy(&source, cold_dir.join(&name)).map(|_| ()))?;
                let path = format!("{}/cold/{name}", origin::SLOW_PREFIX);
                let outcome = self
                    .collapse_once(peer, &path, expected_len)
                    .map_err(|e| format!("{e:#}"))
                    .and_then(|run| {
                        run.figures()
                            .ok_or_else(|| "fewer than two clients got the object".to_owned())
                    });
                match &outcome {
                    Ok(f) => eprintln!(
                        "    {} origin fetch(es); followers' TTFB p50 {:.1} ms, p99 {:.1} ms; leader {:.1} ms; {} failed",
                        f.fetches, f.ttfb_p50_ms, f.ttfb_p99_ms, f.leader_ttfb_ms, f.failed
                    ),
                    Err(e) => eprintln!("    failed: {e}"),
                }
                results[k].runs.push(outcome);
            }
        }
        Ok(results)
    }

    fn collapse_once(
        &self,
        peer: Peer,
        path: &str,
        expected_len: u64,
    ) -> anyhow::Result<CollapseRun> {
        let server = PeerProcess::start(peer, &self.setup, false)?;
        crate::wait_for_quiet_machine_within(self.args.quiet_wait);
        let clients = self.runtime.block_on(collapse::stampede(
            peer.addr(),
            path,
            self.args.clients,
            Duration::from_secs(30),
        ))?;
        // Fetches that a server makes after its clients are served (a background fill) count
        // too.
        std::thread::sleep(Duration::from_millis(500));
        server.stop()?;
        let fetches = origin::count_fetches(&self.origin_log, path)?;
        Ok(CollapseRun {
            fetches,
            clients,
            expected_len,
        })
    }

    /// The hot sets: 2 MB segments, 600 KB segments and the playlists (last).
    fn hot_sets(&self) -> anyhow::Result<Vec<HotSet>> {
        let scripts = self.setup.work.join("scripts");
        std::fs::create_dir_all(&scripts)?;
        let mut sets = Vec::new();
        for (i, slug, label) in [
            (0, "hot-2mb", "2 MB segments"),
            (1, "hot-600kb", "600 KB segments"),
        ] {
            let paths: Vec<String> = self.content.segments[i]
                .iter()
                .take(HOT_SEGMENTS)
                .cloned()
                .collect();
            sets.push(HotSet {
                label: format!("{label} ({} files)", paths.len()),
                slug,
                paths,
                script: scripts.join(format!("{slug}.lua")),
            });
        }
        let playlists = self.content.playlists();
        let media_len = self.content.file_len(&self.content.media_playlists[0])?;
        sets.push(HotSet {
            label: format!(
                "playlists ({} files, {:.1} KB media)",
                playlists.len(),
                media_len as f64 / 1e3
            ),
            slug: "hot-playlists",
            paths: playlists,
            script: scripts.join("hot-playlists.lua"),
        });
        for s in &sets {
            std::fs::write(&s.script, load::wrk_script(&s.paths))?;
        }
        Ok(sets)
    }

    /// Fetches every path of every set twice (a miss, then a hit) with the Host header wrk
    /// sends, checking status and length.
    fn warm(&self, peer: Peer, sets: &[HotSet]) -> anyhow::Result<()> {
        let mut conn = Http1Conn::connect(peer.addr())?;
        // wrk's Host header, since Varnish's cache key holds it.
        let host = peer.addr().to_string();
        for set in sets {
            for path in &set.paths {
                let expected = self.content.file_len(path)?;
                for _ in 0..2 {
                    let (status, len) = conn
                        .get_with_host(path, &host)
                        .with_context(|| format!("warming {} with {path}", peer.label()))?;
                    if status != 200 || len != expected {
                        bail!(
                            "{} answered GET {path} with {status} and {len} bytes (expected 200 and {expected})",
                            peer.label()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Hot hits with wrk against every server (ATS with its defaults only takes part in the
    /// collapse), `repeat` times, each repetition starting every server afresh and warming it.
    fn hot_rows(&self, sets: &[HotSet], pinned: bool) -> anyhow::Result<Vec<HotRow>> {
        let peers: Vec<Peer> = self
            .peers
            .iter()
            .copied()
            .filter(|p| *p != Peer::AtsDefaults)
            .collect();
        let shape = if pinned {
            LoadShape {
                connections: self.args.connections,
                threads: 1,
                streams_per_connection: 1,
                cpu: Some(1),
            }
        } else {
            LoadShape {
                connections: self.args.connections,
                threads: 2,
                streams_per_connection: 1,
                cpu: None,
            }
        };
        let mut runs: Vec<Vec<Vec<Outcome>>> = vec![vec![Vec::new(); peers.len()]; sets.len()];
        let mut origin_requests = vec![0usize; peers.len()];
        for rep in 0..self.repeat {
            let order = harness::alternating_order(peers.len(), rep);
            for k in order {
                let peer = peers[k];
                eprintln!(
                    "Hot hits{}: starting {} (run {} of {})",
                    if pinned { ", pinned" } else { "" },
                    peer.label(),
                    rep + 1,
                    self.repeat
                );
                let server = match PeerProcess::start(peer, &self.setup, pinned)
                    .and_then(|s| self.warm(peer, sets).map(|()| s))
                {
                    Ok(s) => s,
                    Err(e) => {
                        let e = format!("{e:#}");
                        eprintln!("    failed: {e}");
                        for row in runs.iter_mut() {
                            row[k].push(Err(e.clone()));
                        }
                        continue;
                    }
                };
                for (row, set) in sets.iter().enumerate() {
                    eprintln!("  {}", set.label);
                    let log = self.setup.work.join("logs").join(format!(
                        "wrk-{}{}-{}-r{rep}.txt",
                        set.slug,
                        if pinned { "-pinned" } else { "" },
                        peer.slug()
                    ));
                    let before = origin::log_lines(&self.origin_log);
                    let outcome = self
                        .measure(&server, |d| {
                            load::run_wrk(
                                &self.wrk,
                                &shape,
                                &format!("http://127.0.0.1:{}", peer.port()),
                                &set.script,
                                d,
                                &log,
                            )
                        })
                        .map_err(|e| format!("{e:#}"));
                    origin_requests[k] += origin::log_lines(&self.origin_log) - before;
                    if let Err(e) = &outcome {
                        eprintln!("    failed: {e}");
                    }
                    runs[row][k].push(outcome);
                }
                server.stop()?;
            }
        }
        for (peer, n) in peers.iter().zip(&origin_requests) {
            if *n > 0 {
                self.note(format!(
                    "{} made {n} origin request(s) during the hot-hit runs{}: not every request was a hit.",
                    peer.label(),
                    if pinned { " (pinned)" } else { "" }
                ));
            }
        }
        if origin_requests.iter().all(|n| *n == 0) {
            self.note(format!(
                "No server made an origin request during the hot-hit runs{} (checked in the origin's access log): every request was a cache hit.",
                if pinned { " (pinned)" } else { "" }
            ));
        }
        let test = if pinned {
            "pinned: server on CPU 0, wrk -t1 on CPU 1"
        } else {
            "wrk -t2"
        };
        Ok(sets
            .iter()
            .zip(runs)
            .map(|(set, per_peer)| HotRow {
                test: test.to_owned(),
                content: set.label.clone(),
                results: peers
                    .iter()
                    .copied()
                    .zip(per_peer.into_iter().map(crate::median))
                    .collect(),
            })
            .collect())
    }

    /// One measured wrk run after a short warm-up run, with the server's CPU time; repeated
    /// (up to ten times) when other programs took a noticeable share of the CPU.
    fn measure(
        &self,
        server: &PeerProcess,
        load: impl Fn(Duration) -> anyhow::Result<Measurement>,
    ) -> anyhow::Result<Measurement> {
        let quiet = harness::Quiet {
            wait: self.args.quiet_wait,
            warmup: Duration::from_secs(1),
            max_retries: self.args.max_retries,
        };
        harness::measure_undisturbed(quiet, self.duration, || server.cpu_ticks(), load)
            .map(harness::CpuMeasured::into_measurement)
    }

    fn versions(&self) -> Vec<String> {
        let mut v = vec![
            format!("estuary commit {}", harness::git_describe()),
            peers::version_line(&self.setup.nginx_bin, &["-v"]).replace("nginx version: ", ""),
        ];
        if let Some(p) = &self.setup.varnishd_bin {
            v.push(
                peers::version_line(p, &["-V"])
                    .split(" revision")
                    .next()
                    .unwrap_or("varnishd")
                    .trim_start_matches("varnishd (")
                    .to_owned(),
            );
        }
        if let Some(p) = &self.setup.traffic_server_bin {
            let line = peers::version_line(p, &["-V"]);
            let version = line
                .split_whitespace()
                .nth(2)
                .map_or(line.clone(), |v| format!("Traffic Server {v}"));
            v.push(version);
        }
        v.push(
            peers::version_line(&self.wrk, &["-v"])
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
        );
        v
    }

    fn markdown(&self, command: &str, collapse: &[CollapseResult], hot: &[HotRow]) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "### Estuary edge vs caching peers: cold-miss collapse and hot hits\n"
        );
        let _ = writeln!(s, "- Date: {}", report::utc_now());
        report::write_machine_and_software(&mut s, &procfs::machine(), &self.versions());
        let _ = writeln!(s, "- Command: `{command}`");
        let _ = writeln!(
            s,
            "- Setup: every server is a cache in front of the same origin (the bench's own, on \
             127.0.0.1:{}), started afresh with an empty cache for each repetition, one at a \
             time; configs are written into the work folder from `bench/peers/` (edge: \
             `[cache] ram = \"2GiB\"`, disk tier on the work folder, empty `[store]`; nginx: \
             `proxy_cache` on tmpfs with `proxy_cache_lock on`; Varnish: `-s malloc,4G`; ATS \
             tuned: read-while-writer settings of `ats-records.config`; ATS defaults: the \
             package's records.config with only ports, user and storage changed). Each figure \
             is the median of {} repetition(s).\n",
            peers::ORIGIN_PORT,
            self.repeat
        );

        if !collapse.is_empty() {
            self.collapse_markdown(&mut s, collapse);
        }
        if !hot.is_empty() {
            self.hot_markdown(&mut s, hot);
        }
        self.notes.write_markdown(&mut s);
        s
    }

    fn collapse_markdown(&self, s: &mut String, collapse: &[CollapseResult]) {
        let edge = collapse.iter().find(|c| c.peer == Peer::Edge);
        let edge_fig = edge.and_then(CollapseResult::median);
        let varnish_fig = collapse
            .iter()
            .find(|c| c.peer == Peer::Varnish)
            .and_then(CollapseResult::median);
        let _ = writeln!(
            s,
            "#### Cold-miss collapse: {} clients on one uncached {:.1} MB object\n",
            self.args.clients,
            self.content
                .file_len(&self.content.segments[0][0])
                .unwrap_or(0) as f64
                / 1e6
        );
        let _ = writeln!(
            s,
            "The origin sends `/slow/` paths at {} MiB/s (a {:.0} ms fill). The bench opens {} \
             connections to the server, then releases one GET on each at once (a barrier); each \
             client times from its request write to the first body byte (TTFB) and to the last. \
             **Followers** are all clients but the one whose request was written first (the \
             leader). Origin fetches are the origin's access-log lines for the object's path, \
             counted half a second after the last client finished. A fresh object name per \
             server and repetition makes every run a cold miss. Ratios are peer / edge (above \
             1.0: the peer fetched more or was slower).\n",
            self.args.origin_mib_per_second,
            self.content
                .file_len(&self.content.segments[0][0])
                .unwrap_or(0) as f64
                / (self.args.origin_mib_per_second * 1024.0 * 1024.0)
                * 1e3,
            self.args.clients
        );
        // Verdict.
        let verdict = match (edge, edge_fig, varnish_fig) {
            (Some(e), Some(ef), Some(vf)) => {
                let one_fetch = e
                    .runs
                    .iter()
                    .all(|r| r.as_ref().is_ok_and(|f| f.fetches == 1));
                let p50_ok = ef.ttfb_p50_ms <= vf.ttfb_p50_ms;
                let p99_ok = ef.ttfb_p99_ms <= vf.ttfb_p99_ms;
                format!(
                    "**Target** (one origin fetch, follower TTFB no worse than Varnish's): {}. \
                     Origin fetches per run: {} ({}). Follower TTFB p50 {:.1} ms vs Varnish {:.1} ms ({}); \
                     p99 {:.1} ms vs Varnish {:.1} ms ({}).",
                    if one_fetch && p50_ok && p99_ok {
                        "**met**"
                    } else {
                        "**NOT met**"
                    },
                    e.fetches_per_run(),
                    if one_fetch { "met" } else { "not met" },
                    ef.ttfb_p50_ms,
                    vf.ttfb_p50_ms,
                    if p50_ok { "met" } else { "not met" },
                    ef.ttfb_p99_ms,
                    vf.ttfb_p99_ms,
                    if p99_ok { "met" } else { "not met" },
                )
            }
            _ => "**Target** (one origin fetch, follower TTFB no worse than Varnish's): not \
                  measured (the edge or Varnish did not complete a run)."
                .to_owned(),
        };
        let _ = writeln!(s, "{verdict}\n");
        let _ = writeln!(
            s,
            "| Server | origin fetches (each run) | fetches / edge | follower TTFB p50 ms | p50 / edge | follower TTFB p99 ms | p99 / edge | follower last byte p50 ms | p99 ms | leader TTFB ms | failed clients |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let ratio = |a: f64, b: Option<f64>| match b {
            Some(b) if b > 0.0 && a.is_finite() => format!("{:.2}x", a / b),
            _ => "-".to_owned(),
        };
        let edge_fetches = edge.and_then(CollapseResult::median_fetches);
        for c in collapse {
            let Some(f) = c.median() else {
                let why = c
                    .runs
                    .iter()
                    .find_map(|r| r.as_ref().err())
                    .cloned()
                    .unwrap_or_else(|| "not run".to_owned());
                let _ = writeln!(
                    s,
                    "| {} | not measured: {} | | | | | | | | | |",
                    c.peer.label(),
                    why.replace('|', "/")
                );
                continue;
            };
            let fetches = c.median_fetches().unwrap_or(f.fetches);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {} |",
                c.peer.label(),
                c.fetches_per_run(),
                ratio(fetches as f64, edge_fetches.map(|n| n as f64)),
                f.ttfb_p50_ms,
                ratio(f.ttfb_p50_ms, edge_fig.map(|e| e.ttfb_p50_ms)),
                f.ttfb_p99_ms,
                ratio(f.ttfb_p99_ms, edge_fig.map(|e| e.ttfb_p99_ms)),
                f.total_p50_ms,
                f.total_p99_ms,
                f.leader_ttfb_ms,
                f.failed
            );
        }
        s.push('\n');
        for c in collapse {
            for (i, r) in c.runs.iter().enumerate() {
                match r {
                    Ok(f) => {
                        if let Some(why) = &f.first_failure {
                            let _ = writeln!(
                                s,
                                "- {} run {}: {} client(s) failed, e.g. {why}.",
                                c.peer.label(),
                                i + 1,
                                f.failed
                            );
                        }
                    }
                    Err(e) => {
                        let _ = writeln!(s, "- {} run {} failed: {e}", c.peer.label(), i + 1);
                    }
                }
            }
        }
        let spreads: Vec<String> = collapse
            .iter()
            .filter_map(|c| {
                c.median()
                    .map(|f| format!("{} {:.1} ms", c.peer.label(), f.release_spread_ms))
            })
            .collect();
        let _ = writeln!(
            s,
            "- Time from the first to the last request write (median runs): {}.\n",
            spreads.join(", ")
        );
    }

    fn hot_markdown(&self, s: &mut String, hot: &[HotRow]) {
        let Some(first) = hot.first() else {
            return;
        };
        let peers: Vec<Peer> = first.results.iter().map(|(p, _)| *p).collect();
        let others: Vec<Peer> = peers.iter().copied().filter(|p| *p != Peer::Edge).collect();
        let _ = writeln!(s, "#### Hot RAM-tier hits (wrk)\n");
        let _ = writeln!(
            s,
            "Each server is warmed by fetching every file twice, then wrk (-c{}, {:?} per run \
             after a 1 s warm-up run, median of {}) fetches the set in a cycle over plain \
             HTTP/1.1. Unpinned rows: server and wrk share both CPUs (wrk -t2). Pinned row: the \
             server on CPU 0 with one worker (edge `TOKIO_WORKER_THREADS=1`, nginx \
             `worker_processes 1`, Varnish `thread_pools=1`, ATS one exec thread), wrk -t1 on \
             CPU 1. CPU is user+system time of all the server's processes during the measured \
             run. Ratios are edge / peer (above 1.0: the edge is ahead, except for latency and \
             CPU where lower is better).\n",
            self.args.connections, self.duration, self.repeat
        );
        // Verdict against nginx.
        let mut met = 0;
        let mut measured = 0;
        let mut lines = Vec::new();
        for row in hot {
            let rps = |p: Peer| {
                row.results
                    .iter()
                    .find(|(q, _)| *q == p)
                    .and_then(|(_, o)| o.as_ref().ok())
                    .map(Measurement::requests_per_second)
            };
            match (rps(Peer::Edge), rps(Peer::Nginx)) {
                (Some(e), Some(n)) if n > 0.0 => {
                    measured += 1;
                    let ok = e / n >= 1.0;
                    if ok {
                        met += 1;
                    }
                    lines.push(format!(
                        "- {}, {}: {:.2}x ({})",
                        row.test,
                        row.content,
                        e / n,
                        if ok { "met" } else { "not met" }
                    ));
                }
                _ => lines.push(format!("- {}, {}: not measured", row.test, row.content)),
            }
        }
        let verdict = if measured == 0 {
            "not measured (nginx was not in this run)".to_owned()
        } else {
            format!(
                "{} on {met} of {} rows{}",
                if met == hot.len() {
                    "**met**"
                } else {
                    "**NOT met**"
                },
                hot.len(),
                if measured < hot.len() {
                    format!(" ({} not measured)", hot.len() - measured)
                } else {
                    String::new()
                }
            )
        };
        let _ = writeln!(
            s,
            "**Target** (edge at least 1.0x nginx proxy_cache in requests/s on every row): {verdict}.\n"
        );
        for l in lines {
            let _ = writeln!(s, "{l}");
        }
        s.push('\n');
        let mut header = "| Test | Content | Figure |".to_owned();
        let mut rule = "|---|---|---|".to_owned();
        for p in &peers {
            let _ = write!(header, " {} |", p.label());
            rule.push_str("---:|");
        }
        for p in &others {
            let _ = write!(header, " edge / {} |", p.label());
            rule.push_str("---:|");
        }
        let _ = writeln!(s, "{header}\n{rule}");
        let figures: [HotFigure; 5] = [
            (
                "requests/s (± half the range)",
                |m| Some(m.requests_per_second()),
                |v| format!("{v:.0}"),
            ),
            (
                "MB/s",
                |m| Some(m.bytes_per_second() / 1e6),
                |v| format!("{v:.1}"),
            ),
            (
                "p50 latency ms (lower is better)",
                |m| m.p50_ms,
                |v| format!("{v:.2}"),
            ),
            (
                "p99 latency ms (lower is better)",
                |m| m.p99_ms,
                |v| format!("{v:.2}"),
            ),
            (
                "server CPU s per GB (lower is better)",
                Measurement::cpu_seconds_per_gb,
                |v| format!("{v:.3}"),
            ),
        ];
        for row in hot {
            let get = |p: Peer| -> Option<&Outcome> {
                row.results.iter().find(|(q, _)| *q == p).map(|(_, o)| o)
            };
            for (label, value, format) in &figures {
                let mut line = format!("| {} | {} | {label} |", row.test, row.content);
                for p in &peers {
                    let cell = match get(*p) {
                        Some(Ok(m)) => match value(m) {
                            Some(v) => {
                                let mut t = format(v);
                                if label.starts_with("requests/s")
                                    && let Some(sp) = m.spread()
                                {
                                    let _ = write!(t, " ±{:.0}%", sp * 100.0);
                                }
                                t
                            }
                            None => "-".to_owned(),
                        },
                        Some(Err(_)) => "failed".to_owned(),
                        None => "n/a".to_owned(),
                    };
                    let _ = write!(line, " {cell} |");
                }
                let edge_v = get(Peer::Edge)
                    .and_then(|o| o.as_ref().ok())
                    .and_then(value);
                for p in &others {
                    let v = get(*p).and_then(|o| o.as_ref().ok()).and_then(value);
                    let cell = match (edge_v, v) {
                        (Some(e), Some(v)) if v > 0.0 => format!("{:.2}x", e / v),
                        _ => "-".to_owned(),
                    };
                    let _ = write!(line, " {cell} |");
                }
                let _ = writeln!(s, "{line}");
            }
        }
        s.push('\n');
        for row in hot {
            for (p, o) in &row.results {
                match o {
                    Err(e) => {
                        let _ = writeln!(
                            s,
                            "- {}, {} ({}) failed: {e}",
                            row.test,
                            row.content,
                            p.label()
                        );
                    }
                    Ok(m) => {
                        if m.errors > 0 {
                            let _ = writeln!(
                                s,
                                "- {}, {} ({}): {} failed requests (not counted above)",
                                row.test,
                                row.content,
                                p.label(),
                                m.errors
                            );
                        }
                        if let Some(other) =
                            m.unattributed_cpu.filter(|o| *o > crate::DISTURBED_SHARE)
                        {
                            let _ = writeln!(
                                s,
                                "- {}, {} ({}): {:.0}% of the machine's CPU time went to neither the server nor the bench during the run: treat this figure with care",
                                row.test,
                                row.content,
                                p.label(),
                                other * 100.0
                            );
                        }
                    }
                }
            }
        }
        s.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn timing(sent_ms: u64, ttfb_ms: u64) -> Result<ClientTiming, String> {
        let base = Instant::now();
        Ok(ClientTiming {
            sent_at: base + Duration::from_millis(sent_ms),
            ttfb: Duration::from_millis(ttfb_ms),
            total: Duration::from_millis(ttfb_ms + 100),
            status: 200,
            body_bytes: 10,
        })
    }

    #[test]
    fn the_leader_is_left_out_of_the_followers() {
        let mut clients = vec![timing(0, 500)];
        clients.extend((1..=100).map(|i| timing(1, i)));
        clients.push(Err("reset".to_owned()));
        let run = CollapseRun {
            fetches: 1,
            clients,
            expected_len: 10,
        };
        let f = run.figures().expect("figures");
        assert_eq!(f.leader_ttfb_ms, 500.0);
        assert_eq!(f.ttfb_p50_ms, 50.0);
        assert_eq!(f.ttfb_p99_ms, 99.0);
        assert_eq!(f.failed, 1);
        assert_eq!(f.first_failure.as_deref(), Some("reset"));
    }
}
