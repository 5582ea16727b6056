//! `estuary-bench sfu-vs-janus`: the same WebRTC load, in one run, against `estuary sfu` and
//! Debian's Janus 1.1 (VideoRoom), one server after the other, each started afresh for each
//! room size and pinned to CPU 0 while the load runs on CPU 1.
//!
//! A room of N participants has P publishers (1 for N = 2, 2 up to 10, N/10 beyond) sending
//! audio and VP8-shaped video (`peers.rs`) and N - P subscribers, each receiving every
//! publisher; rooms are added until about `--participants` peers are connected. Both servers
//! decrypt SRTP in and encrypt it per subscriber out, as a real call does. Measured over
//! `--duration` after a warm-up: packets the subscribers received per second, the server's
//! CPU time (all its threads, `/proc`), hence packets forwarded per CPU-second, and each
//! packet's latency from the publisher's send to the subscriber's socket (p50, p99).

mod peers;
mod servers;
mod signal;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use self::peers::{Latencies, Shared};
use self::servers::{Running, SfuServer};
use crate::{harness, procfs};

const BEGIN: &str = "<!-- sfu-vs-janus: begin -->";
const END: &str = "<!-- sfu-vs-janus: end -->";
const WARMUP: Duration = Duration::from_secs(3);

#[derive(clap::Args, Debug)]
pub struct SfuVsJanusArgs {
    /// Room sizes (participants per room).
    #[arg(long, value_delimiter = ',', default_value = "2,10,50")]
    sizes: Vec<usize>,
    /// Peers across the rooms of one size (rooms = this / size, at least one).
    #[arg(long, default_value_t = 100)]
    participants: usize,
    /// How long each measured run lasts.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Short runs (5 s) for a quick look.
    #[arg(long)]
    quick: bool,
    /// The SFU's `[media] shards`.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// The SFU's `[media] bwe_initial_bps` (default: the SFU's own default).
    #[arg(long)]
    bwe_initial_bps: Option<u64>,
    /// The address the servers' media and the peers use (default: this machine's first
    /// global IPv4 address; Janus's ICE (libnice) never offers a loopback address, so both
    /// servers and the load use this one; the traffic stays inside the machine).
    #[arg(long)]
    address: Option<std::net::IpAddr>,
    /// The Janus binary.
    #[arg(long, default_value = "/usr/bin/janus")]
    janus: PathBuf,
    /// Work folder for the servers' configs and logs.
    #[arg(long, default_value = "bench-out-sfu")]
    out: PathBuf,
    #[command(flatten)]
    report: harness::ReportArgs,
}

/// Publishers in a room of `n`.
pub fn publishers_for(n: usize) -> usize {
    match n {
        0..=2 => 1,
        3..=10 => 2,
        _ => n / 10,
    }
}

/// One server's figures for one room size.
#[derive(Debug, Clone)]
struct Figures {
    received_per_s: f64,
    cpu_s_per_s: f64,
    per_cpu_s: f64,
    delivered: f64,
    p50_us: u32,
    p99_us: u32,
    /// Estuary only: its own receive-to-send histogram over the window (upper bucket
    /// bounds, seconds), p50 and p99.
    own: Option<(f64, f64)>,
}

pub fn run(args: SfuVsJanusArgs) -> anyhow::Result<()> {
    let command = harness::command_line();
    let estuary = harness::existing_estuary_binary(args.report.estuary.as_deref())?;
    if !args.janus.is_file() {
        bail!("{} not found (apt-get install janus)", args.janus.display());
    }
    let work = harness::work_folder(&args.out)?;
    let address = match args.address {
        Some(a) => a,
        None => global_ipv4().context("no global IPv4 address found: give --address")?,
    };
    let duration = if args.quick {
        Duration::from_secs(5)
    } else {
        args.duration
    };
    let machine = procfs::machine();
    // The load on CPU 1, the server on CPU 0.
    let me = std::process::id().to_string();
    let pinned = std::process::Command::new("taskset")
        .args(["-a", "-cp", "1", &me])
        .output()
        .is_ok_and(|o| o.status.success());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &n in &args.sizes {
        if n < 2 {
            bail!("--sizes: a room has at least 2 participants");
        }
        let p = publishers_for(n);
        let rooms = (args.participants / n).max(1);
        let mut figs = Vec::new();
        for server in SfuServer::ALL {
            eprintln!(
                "{}: {rooms} rooms of {n} ({p} publishers)...",
                server.label()
            );
            let running = Running::start(
                server,
                &work,
                &estuary,
                &args.janus,
                rooms,
                (args.shards, args.bwe_initial_bps),
                address,
            )?;
            let f = rt
                .block_on(measure(server, &running, address, rooms, n, p, duration))
                .with_context(|| format!("{} with rooms of {n}", server.label()))?;
            running.process.stop()?;
            eprintln!("  {f:?}");
            figs.push(f);
        }
        rows.push((n, p, rooms, figs));
    }
    let mut md = String::from("### Estuary SFU vs Janus VideoRoom\n\n");
    let _ = writeln!(md, "- Date: {}", crate::report::utc_now());
    let _ = writeln!(
        md,
        "Command: `{command}` (estuary commit {}; {} cores, {}; SFU on CPU 0, load on CPU 1{}; media on {address}; \
         {}s measured per row after {}s of warm-up; Estuary `[media] shards = {}`{}).\n",
        harness::git_describe(),
        machine.cpus,
        machine.cpu_model,
        if pinned { "" } else { " (pinning failed)" },
        duration.as_secs(),
        WARMUP.as_secs(),
        args.shards,
        args.bwe_initial_bps
            .map(|b| format!(", `bwe_initial_bps = {b}`"))
            .unwrap_or_default(),
    );
    md.push_str("| rooms × (publishers + subscribers) | server | packets/s forwarded | server CPU (cores) | packets per CPU-second | delivered | latency p50 | latency p99 | SFU's own p50 / p99 |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (n, p, rooms, figs) in &rows {
        for (server, f) in SfuServer::ALL.iter().zip(figs) {
            let _ = writeln!(
                md,
                "| {rooms} × ({p} + {}) | {} | {:.0} | {:.2} | {:.0} | {:.1}% | {:.2} ms | {:.2} ms | {} |",
                n - p,
                server.label(),
                f.received_per_s,
                f.cpu_s_per_s,
                f.per_cpu_s,
                f.delivered * 100.0,
                f64::from(f.p50_us) / 1000.0,
                f64::from(f.p99_us) / 1000.0,
                f.own.map_or("n/a".to_owned(), |(a, b)| format!(
                    "≤ {} / ≤ {} ms",
                    a * 1000.0,
                    b * 1000.0
                )),
            );
        }
        if let [e, j] = figs.as_slice() {
            let _ = writeln!(
                md,
                "| | **Estuary / Janus** | {:.2}x | {:.2}x | **{:.2}x** | | {:.2}x | {:.2}x | |",
                e.received_per_s / j.received_per_s.max(1e-9),
                e.cpu_s_per_s / j.cpu_s_per_s.max(1e-9),
                e.per_cpu_s / j.per_cpu_s.max(1e-9),
                f64::from(e.p50_us) / f64::from(j.p50_us.max(1)),
                f64::from(e.p99_us) / f64::from(j.p99_us.max(1)),
            );
        }
    }
    harness::publish_report(args.report.write_md.as_deref(), BEGIN, END, &md)
}

/// Connects the rooms, waits until every subscriber receives video, measures, stops.
async fn measure(
    server: SfuServer,
    running: &Running,
    address: std::net::IpAddr,
    rooms: usize,
    n: usize,
    p: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let shared = Shared::new(address)?;
    let http = signal::client()?;
    let mut tasks = Vec::new();
    let spawn = |tasks: &mut Vec<tokio::task::JoinHandle<anyhow::Result<Latencies>>>,
                 peer: peers::Peer,
                 role: peers::Role| {
        tasks.push(tokio::spawn(peers::drive(peer, role, Arc::clone(&shared))));
    };
    // Publishers first, connected before anyone subscribes (Janus lists a feed only once
    // its publisher's media is up).
    let mut feeds: Vec<Vec<u64>> = Vec::new();
    for r in 1..=rooms {
        let room = format!("bench-{r}");
        let mut room_feeds = Vec::new();
        for i in 0..p {
            match server {
                SfuServer::Estuary => {
                    let (peer, role) = signal::estuary_publisher(&shared, &http, &room).await?;
                    spawn(&mut tasks, peer, role);
                }
                SfuServer::Janus => {
                    let (peer, role, feed) =
                        signal::janus_publisher(&shared, &http, r as u64, &format!("p{i}")).await?;
                    room_feeds.push(feed);
                    spawn(&mut tasks, peer, role);
                }
            }
        }
        feeds.push(room_feeds);
    }
    wait_for(&shared, (rooms * p) as u64, 0).await?;
    for (r, room_feeds) in (1..=rooms).zip(&feeds) {
        let room = format!("bench-{r}");
        for _ in p..n {
            let (peer, role) = match server {
                SfuServer::Estuary => signal::estuary_subscriber(&shared, &http, &room, p).await?,
                SfuServer::Janus => {
                    signal::janus_subscriber(&shared, &http, r as u64, room_feeds).await?
                }
            };
            spawn(&mut tasks, peer, role);
        }
    }
    let peers = (rooms * n) as u64;
    let subscribers = (rooms * (n - p)) as u64;
    wait_for(&shared, peers, subscribers).await?;
    tokio::time::sleep(WARMUP).await;
    let h0 = own_histogram(&http, server).await;
    let t0 = Instant::now();
    let c0 = running.cpu_ticks();
    shared.measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(duration).await;
    shared.measuring.store(false, Ordering::SeqCst);
    let c1 = running.cpu_ticks();
    let elapsed = t0.elapsed().as_secs_f64();
    let h1 = own_histogram(&http, server).await;
    shared.stop.store(true, Ordering::SeqCst);
    let mut lat: Latencies = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(l)) => lat.extend(l),
            Ok(Err(e)) => eprintln!("  a peer failed: {e:#}"),
            Err(e) => eprintln!("  a peer task failed: {e}"),
        }
    }
    lat.sort_unstable();
    let pct = |q: f64| -> u32 {
        if lat.is_empty() {
            return 0;
        }
        let i = ((lat.len() as f64 - 1.0) * q).round() as usize;
        lat[i.min(lat.len() - 1)]
    };
    let received = shared.received.load(Ordering::Relaxed) as f64;
    let sent = shared.sent.load(Ordering::Relaxed) as f64;
    let cpu_s = (c1.saturating_sub(c0)) as f64 / procfs::clock_ticks_per_second();
    let expected = sent * (n - p) as f64;
    Ok(Figures {
        received_per_s: received / elapsed,
        cpu_s_per_s: cpu_s / elapsed,
        per_cpu_s: if cpu_s > 0.0 { received / cpu_s } else { 0.0 },
        delivered: if expected > 0.0 {
            received / expected
        } else {
            0.0
        },
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        own: match (h0, h1) {
            (Some(a), Some(b)) => {
                let d: Vec<(f64, f64)> = b
                    .iter()
                    .zip(&a)
                    .map(|((le, x), (_, y))| (*le, x - y))
                    .collect();
                Some((bucket_quantile(&d, 0.5), bucket_quantile(&d, 0.99)))
            }
            _ => None,
        },
    })
}

/// Estuary's `estuary_sfu_forward_latency_seconds` buckets (upper bound, cumulative count).
async fn own_histogram(
    http: &estuary_common::http::HttpClient,
    server: SfuServer,
) -> Option<Vec<(f64, f64)>> {
    if server != SfuServer::Estuary {
        return None;
    }
    let url = format!("{}/metrics", server.base_url());
    let r = http.get(&url, &[]).await.ok()?;
    let text = String::from_utf8_lossy(r.body()).into_owned();
    let mut v: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with("estuary_sfu_forward_latency_seconds_bucket{"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(v)
}

/// The upper bound of the bucket holding quantile `q` of cumulative `buckets`.
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total && total > 0.0)
        .map_or(f64::NAN, |(le, _)| *le)
}

/// The first global IPv4 address of this machine (`ip -4 -o addr show scope global`).
fn global_ipv4() -> Option<std::net::IpAddr> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut w = l.split_whitespace();
        w.find(|x| *x == "inet")?;
        w.next()?.split('/').next()?.parse().ok()
    })
}

/// Waits until `peers` peers are connected and `subscribers` receive video.
async fn wait_for(shared: &Shared, peers: u64, subscribers: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while shared.connected.load(Ordering::Relaxed) < peers
        || shared.receiving.load(Ordering::Relaxed) < subscribers
    {
        if Instant::now() > deadline {
            shared.stop.store(true, Ordering::SeqCst);
            bail!(
                "after 90 s, {} of {peers} peers connected and {} of {subscribers} subscribers receive video",
                shared.connected.load(Ordering::Relaxed),
                shared.receiving.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::publishers_for;

    #[test]
    fn quantiles_of_cumulative_buckets() {
        let b = [
            (0.001, 50.0),
            (0.002, 99.0),
            (0.005, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(super::bucket_quantile(&b, 0.5), 0.001);
        assert_eq!(super::bucket_quantile(&b, 0.99), 0.002);
        assert_eq!(super::bucket_quantile(&b, 1.0), 0.005);
        assert!(super::bucket_quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn publishers_per_room() {
        assert_eq!(publishers_for(2), 1);
        assert_eq!(publishers_for(10), 2);
        assert_eq!(publishers_for(50), 5);
    }
}
