//! `estuary-bench chat-vs-mosquitto`: the same client load, in one run, against `estuary
//! chat-relay` and Debian's mosquitto (MQTT over WebSockets), one server after the other, each
//! started afresh for each part:
//!
//! 1. idle connections: N WebSocket connections (relay: a signed token per user; mosquitto:
//!    MQTT CONNECT with its own client id and a SUBSCRIBE), then the server's RSS growth / N;
//! 2. fan-out latency in a 100-member group (relay `group.create`, mosquitto: 99 subscribers
//!    of a topic) and in a 10,000-member live room (relay `room.join`, mosquitto: 9,999
//!    subscribers), one sender at a steady pace, each receiver timing every message against
//!    the send time in its body (one process, one monotonic clock).
//!
//! All clients live in this process (tokio + tokio-tungstenite), spread over the source
//! addresses 127.0.0.2-127.0.0.250.

mod clients;
mod mqtt;
mod servers;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use tokio::time::Instant;

use self::clients::{Conn, Fleet, Target, source_addr};
use self::servers::{ChatServer, ChatSetup, Running};
use crate::harness;
use crate::procfs::{self, Rss};
use crate::report;

const BEGIN: &str = "<!-- chat-vs-mosquitto: begin -->";
const END: &str = "<!-- chat-vs-mosquitto: end -->";

/// The issue's target: this many connections at this much memory each.
const TARGET_CONNECTIONS: u64 = 100_000;
const TARGET_KIB_PER_CONNECTION: f64 = 8.0;

/// How long after the last send the receivers may take to get every message; later ones
/// count as lost.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
pub struct ChatVsMosquittoArgs {
    /// A smaller run for a quick look: 2,000 idle connections, a 1,000-member room, fewer
    /// messages.
    #[arg(long)]
    quick: bool,
    /// Idle connections to hold open to each server.
    #[arg(long, default_value_t = 15_000)]
    idle_connections: usize,
    /// Members of the group, the sender included (the relay's default group limit is 100).
    #[arg(long, default_value_t = 100)]
    group_members: usize,
    /// Messages the sender sends to the group.
    #[arg(long, default_value_t = 200)]
    group_messages: u32,
    /// Messages per second to the group.
    #[arg(long, default_value_t = 50)]
    group_rate: u32,
    /// Connections in the live room, the sender included.
    #[arg(long, default_value_t = 10_000)]
    room_members: usize,
    /// Messages the sender posts to the room.
    #[arg(long, default_value_t = 50)]
    room_messages: u32,
    /// Messages per second to the room.
    #[arg(long, default_value_t = 5)]
    room_rate: u32,
    /// Connection set-ups in flight at once while the clients connect.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Work folder for the servers' configs, stores and logs.
    #[arg(long, default_value = "bench-out-chat")]
    out: PathBuf,
    #[command(flatten)]
    report: harness::ReportArgs,
    /// Run only these parts (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Part>,
    /// Before each server's run of a part, wait at most this long for the machine to be idle
    /// (other builds and tests share the two CPUs).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    quiet_wait: Duration,
}

/// The bench's parts, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// Memory with idle connections.
    Idle,
    /// Fan-out latency in a group.
    Group,
    /// Fan-out latency in a live room.
    Room,
}

/// Memory with idle connections open.
#[derive(Debug, Clone, Copy)]
struct IdleRun {
    connections: usize,
    before: Rss,
    after: Rss,
    open_seconds: f64,
}

impl IdleRun {
    fn kib_per_connection(&self) -> f64 {
        (self.after.total as f64 - self.before.total as f64)
            / self.connections.max(1) as f64
            / 1024.0
    }
}

/// The median, 99th percentile and largest of a set of latencies.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LatencySummary {
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl LatencySummary {
    /// From latencies in microseconds (any order); `None` without any.
    fn from_micros(mut us: Vec<u64>) -> Option<Self> {
        us.sort_unstable();
        let ms = |v: Option<u64>| v.map(|v| v as f64 / 1e3);
        Some(Self {
            samples: us.len(),
            p50_ms: ms(crate::load::percentile(&us, 50.0))?,
            p99_ms: ms(crate::load::percentile(&us, 99.0))?,
            max_ms: ms(us.last().copied())?,
        })
    }
}

/// One fan-out run against one server.
#[derive(Debug, Clone)]
struct FanoutRun {
    receivers: usize,
    sent: u32,
    received: usize,
    latency: Option<LatencySummary>,
    /// Frames the relay refused to the sender or sent as errors to the receivers.
    refused: Vec<String>,
    /// Receivers whose connection ended during the run, with the first reason.
    ended: (usize, Option<String>),
    server_cpu_seconds: f64,
    /// The share of the machine's CPU that went to neither the server nor the bench while
    /// the sender sent.
    unattributed_cpu: f64,
}

/// Each part's result per server, in [`ChatServer::ALL`] order.
type PerServer<T> = Vec<(ChatServer, Result<T, String>)>;

/// Whether (and how) the open-file limit could be raised for the issue's 100,000.
struct FdLimits {
    hard_before: u64,
    nr_open: Option<u64>,
    raise_to_target: String,
    soft_now: u64,
}

struct ChatBench {
    args: ChatVsMosquittoArgs,
    setup: ChatSetup,
    runtime: tokio::runtime::Runtime,
    epoch: Instant,
    notes: harness::Notes,
}

pub fn run(mut args: ChatVsMosquittoArgs) -> anyhow::Result<()> {
    let command = harness::command_line();
    if args.quick {
        args.idle_connections = args.idle_connections.min(2_000);
        args.room_members = args.room_members.min(1_000);
        args.group_messages = args.group_messages.min(50);
        args.room_messages = args.room_messages.min(20);
    }
    if args.group_members < 2 || args.room_members < 2 {
        anyhow::bail!("a group and a room need at least two members");
    }
    if args.group_rate == 0 || args.room_rate == 0 {
        anyhow::bail!("--group-rate and --room-rate must be at least 1");
    }
    let mosquitto_bin = crate::require("mosquitto", "mosquitto")?;
    let estuary_bin = harness::existing_estuary_binary(args.report.estuary.as_deref())?;
    let work = harness::work_folder(&args.out)?;

    let largest = args.idle_connections.max(args.room_members);
    let limits = fd_limits(largest as u64 + 1024)?;
    if limits.soft_now < largest as u64 + 256 {
        anyhow::bail!(
            "the open-file limit is {} (hard {}), too low for {largest} connections",
            limits.soft_now,
            limits.hard_before
        );
    }
    let setup = ChatSetup {
        work,
        estuary_bin,
        mosquitto_bin,
        max_connections: largest + 256,
        messages_per_second: 10 * args.group_rate.max(args.room_rate),
        room_member_limit: args.room_members.max(10_000),
    };
    for s in ChatServer::ALL {
        s.check_ports_free()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let bench = ChatBench {
        args,
        setup,
        runtime,
        epoch: Instant::now(),
        notes: Default::default(),
    };
    bench.notes.background_load()?;

    let only = bench.args.only.clone();
    let wants = |p: Part| only.is_empty() || only.contains(&p);
    let idle = if wants(Part::Idle) {
        bench.per_server(|s| bench.idle(s))
    } else {
        Vec::new()
    };
    let group = if wants(Part::Group) {
        bench.per_server(|s| bench.fanout(s, Part::Group))
    } else {
        Vec::new()
    };
    let room = if wants(Part::Room) {
        bench.per_server(|s| bench.fanout(s, Part::Room))
    } else {
        Vec::new()
    };
    let markdown = bench.markdown(&command, &limits, &idle, &group, &room);
    harness::publish_report(bench.args.report.write_md.as_deref(), BEGIN, END, &markdown)
}

/// Tries to raise the open-file limit to the issue's 100,000 connections (plus room), records
/// what happened, then raises the soft limit as far as `needed` allows.
fn fd_limits(needed: u64) -> anyhow::Result<FdLimits> {
    let (_, hard_before) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let target = TARGET_CONNECTIONS + 1024;
    let raise_to_target = match rlimit::setrlimit(rlimit::Resource::NOFILE, target, target) {
        Ok(()) => format!("setrlimit(RLIMIT_NOFILE, {target}) succeeded"),
        Err(e) => format!("setrlimit(RLIMIT_NOFILE, {target}) failed: {e}"),
    };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let soft_now = crate::idle::raise_nofile_limit(needed)?;
    Ok(FdLimits {
        hard_before,
        nr_open,
        raise_to_target,
        soft_now,
    })
}

impl ChatBench {
    /// `f` against each server in turn; a failure is kept as the server's result.
    /// Waits for a quiet machine before each.
    fn per_server<T>(&self, f: impl Fn(ChatServer) -> anyhow::Result<T>) -> PerServer<T> {
        ChatServer::ALL
            .into_iter()
            .map(|s| {
                crate::wait_for_quiet_machine_within(self.args.quiet_wait);
                (s, f(s).map_err(|e| format!("{e:#}")))
            })
            .collect()
    }

    /// Opens client `i` of `server`: relay user `{prefix}{i}`, or MQTT client `{prefix}{i}`
    /// subscribed to `topic` (`None`: the publisher, subscribed to nothing).
    async fn open(
        server: ChatServer,
        prefix: &str,
        i: usize,
        topic: Option<String>,
    ) -> anyhow::Result<Conn> {
        let name = format!("{prefix}{i}");
        match server {
            ChatServer::Relay => Conn::relay(source_addr(i), &name).await,
            ChatServer::Mosquitto => Conn::mqtt(source_addr(i), &name, topic.as_deref()).await,
        }
    }

    /// A fresh server, `idle_connections` clients connected (and, on mosquitto, subscribed
    /// each to a topic of its own), and the server's memory before and with them.
    fn idle(&self, server: ChatServer) -> anyhow::Result<IdleRun> {
        let count = self.args.idle_connections;
        eprintln!("Idle connections: {count} to {} ...", server.label());
        let running = Running::start(server, &self.setup)?;
        let result = self.runtime.block_on(async {
            // One client first, so that what the server sets up lazily counts in "before".
            let first = Self::open(server, "warmup", 0, Some("idle/warmup".to_owned())).await?;
            Fleet::drive(vec![first], self.epoch).finish().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = running.rss();
            let started = Instant::now();
            let conns = clients::open_many(count, self.args.in_flight, |i| {
                Self::open(server, "idle", i, Some(format!("idle/{i}")))
            })
            .await?;
            let open_seconds = started.elapsed().as_secs_f64();
            let fleet = Fleet::drive(conns, self.epoch);
            tokio::time::sleep(Duration::from_secs(3)).await;
            let after = running.rss();
            let seen = fleet.finish().await;
            let ended = seen.iter().filter(|r| r.ended.is_some()).count();
            if ended > 0 {
                anyhow::bail!(
                    "{ended} of {count} idle connections ended before the measurement was over"
                );
            }
            eprintln!(
                "    VmRSS {:.1} -> {:.1} MiB: {:.2} KiB per connection",
                before.total as f64 / 1048576.0,
                after.total as f64 / 1048576.0,
                (after.total as f64 - before.total as f64) / count as f64 / 1024.0
            );
            anyhow::Ok(IdleRun {
                connections: count,
                before,
                after,
                open_seconds,
            })
        });
        running.stop()?;
        result
    }

    /// A fresh server, a group (or room) of members with client 0 as the sender, paced timed
    /// messages, and what every other member received.
    fn fanout(&self, server: ChatServer, part: Part) -> anyhow::Result<FanoutRun> {
        let (members, messages, rate) = match part {
            Part::Room => (
                self.args.room_members,
                self.args.room_messages,
                self.args.room_rate,
            ),
            _ => (
                self.args.group_members,
                self.args.group_messages,
                self.args.group_rate,
            ),
        };
        let (prefix, target) = match (server, part) {
            (ChatServer::Relay, Part::Room) => ("r", Target::RelayRoom("bench-room".to_owned())),
            (ChatServer::Relay, _) => ("g", Target::RelayGroup("bench-group".to_owned())),
            (ChatServer::Mosquitto, Part::Room) => ("r", Target::Mqtt("bench/room".to_owned())),
            (ChatServer::Mosquitto, _) => ("g", Target::Mqtt("bench/group".to_owned())),
        };
        let topic = match &target {
            Target::Mqtt(t) => Some(t.clone()),
            _ => None,
        };
        eprintln!(
            "Fan-out ({part:?}): {members} members on {}, {messages} messages at {rate}/s ...",
            server.label()
        );
        let running = Running::start(server, &self.setup)?;
        let result = self.runtime.block_on(async {
            let mut conns = clients::open_many(members, self.args.in_flight, |i| {
                // The sender subscribes to nothing: it does not receive its own messages
                // from either server.
                Self::open(server, prefix, i, if i == 0 { None } else { topic.clone() })
            })
            .await?;
            match &target {
                Target::RelayGroup(group) => {
                    let names: Vec<String> = (1..members).map(|i| format!("{prefix}{i}")).collect();
                    let create = serde_json::json!({"type": "group.create", "group": group, "members": names});
                    conns[0].send_json(&create).await?;
                    conns[0].expect_frame("group").await?;
                }
                Target::RelayRoom(room) => {
                    let join = serde_json::json!({"type": "room.join", "room": room});
                    let joins = conns.iter_mut().map(|c| {
                        let join = &join;
                        async move {
                            c.send_json(join).await?;
                            c.expect_frame("room").await
                        }
                    });
                    for r in futures_util::future::join_all(joins).await {
                        r.context("joining the room")?;
                    }
                }
                Target::Mqtt(_) => {}
            }
            let sender = conns.remove(0);
            let fleet = Fleet::drive(conns, self.epoch);
            let receivers = fleet.len();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let cpu_before = running.cpu_ticks();
            let own_before = procfs::own_and_reaped_children_ticks()?;
            let (busy_before, total_before) = procfs::machine_jiffies()?;
            let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
            let (sender, sent) =
                clients::send_paced(sender, &target, messages, interval, self.epoch).await?;
            // Time for the last message to reach everyone; what has not come within
            // DELIVERY_WAIT of the last send counts as lost.
            let expected = receivers * sent.messages as usize;
            fleet.wait_for(expected, DELIVERY_WAIT).await;
            // A moment more, so that a duplicate or stray frame would be seen too.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let server_ticks = running.cpu_ticks().saturating_sub(cpu_before);
            let own_ticks = procfs::own_and_reaped_children_ticks()?.saturating_sub(own_before);
            let (busy_after, total_after) = procfs::machine_jiffies()?;
            let elsewhere = busy_after
                .saturating_sub(busy_before)
                .saturating_sub(server_ticks + own_ticks);
            let unattributed_cpu =
                elsewhere as f64 / total_after.saturating_sub(total_before).max(1) as f64;
            let cpu_seconds = server_ticks as f64 / procfs::clock_ticks_per_second();
            let seen = fleet.finish().await;
            drop(sender);
            let mut refused = sent.refused;
            let mut latencies = Vec::with_capacity(receivers * sent.messages as usize);
            let mut ended = (0, None);
            for r in seen {
                latencies.extend(r.latencies_us);
                refused.extend(r.errors);
                if let Some(why) = r.ended {
                    ended.0 += 1;
                    ended.1.get_or_insert(why);
                }
            }
            let received = latencies.len();
            let file = self.setup.work.join(format!(
                "latencies-{}-{}.txt",
                format!("{part:?}").to_lowercase(),
                server.slug()
            ));
            let mut text = String::with_capacity(latencies.len() * 8);
            latencies.sort_unstable();
            for us in &latencies {
                let _ = writeln!(text, "{us}");
            }
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
            let run = FanoutRun {
                receivers,
                sent: sent.messages,
                received,
                latency: LatencySummary::from_micros(latencies),
                refused,
                ended,
                server_cpu_seconds: cpu_seconds,
                unattributed_cpu,
            };
            if let Some(l) = run.latency {
                eprintln!(
                    "    {} of {} deliveries: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    run.received,
                    run.receivers * run.sent as usize,
                    l.p50_ms,
                    l.p99_ms,
                    l.max_ms
                );
            }
            anyhow::Ok(run)
        });
        running.stop()?;
        result
    }

    fn versions(&self) -> Vec<String> {
        vec![
            format!("estuary commit {}", harness::git_describe()),
            format!(
                "mosquitto {}",
                crate::peers::version_line(&self.setup.mosquitto_bin, &["-h"])
                    .trim_start_matches("mosquitto version ")
            ),
            "bench clients: tokio-tungstenite 0.29, MQTT 3.1.1 encoded by hand".to_owned(),
        ]
    }

    fn markdown(
        &self,
        command: &str,
        limits: &FdLimits,
        idle: &PerServer<IdleRun>,
        group: &PerServer<FanoutRun>,
        room: &PerServer<FanoutRun>,
    ) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "### Chat relay vs mosquitto\n");
        let _ = writeln!(s, "- Date: {}", report::utc_now());
        report::write_machine_and_software(&mut s, &procfs::machine(), &self.versions());
        let _ = writeln!(s, "- Command: `{command}`");
        let _ = writeln!(
            s,
            "- Open files: hard limit {} (`ulimit -Hn`), `fs.nr_open` {}; {}; the bench and each \
             server ran with a soft limit of {}.\n",
            limits.hard_before,
            limits
                .nr_open
                .map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
            limits.raise_to_target,
            limits.soft_now
        );
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".to_owned(),
        };
        let show = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "failed".to_owned(), |v| format!("{v:.digits$}"))
        };
        let get = |rows: &PerServer<IdleRun>, who: ChatServer| {
            rows.iter()
                .find(|(s, _)| *s == who)
                .and_then(|(_, r)| r.as_ref().ok().copied())
        };
        let _ = writeln!(
            s,
            "| Part | Figure | Estuary chat relay | mosquitto | relay/mosquitto |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|");
        if !idle.is_empty() {
            let (r, m) = (
                get(idle, ChatServer::Relay),
                get(idle, ChatServer::Mosquitto),
            );
            let n = r.or(m).map_or(0, |i| i.connections);
            const MIB: f64 = 1024.0 * 1024.0;
            type IdleFigure = (&'static str, fn(&IdleRun) -> f64, usize);
            let figures: [IdleFigure; 5] = [
                ("VmRSS before, MiB", |i| i.before.total as f64 / MIB, 1),
                (
                    "VmRSS with the connections open, MiB",
                    |i| i.after.total as f64 / MIB,
                    1,
                ),
                (
                    "RssAnon with the connections open, MiB",
                    |i| i.after.anon as f64 / MIB,
                    1,
                ),
                (
                    "**VmRSS added per connection, KiB** (lower is better)",
                    IdleRun::kib_per_connection,
                    2,
                ),
                ("time to open them all, s", |i| i.open_seconds, 1),
            ];
            for (label, f, digits) in figures {
                let (a, b) = (r.as_ref().map(f), m.as_ref().map(f));
                let _ = writeln!(
                    s,
                    "| {n} idle WebSocket connections | {label} | {} | {} | {} |",
                    show(a, digits),
                    show(b, digits),
                    ratio(a, b)
                );
            }
        }
        for (name, rows) in [("group", group), ("room", room)] {
            if rows.is_empty() {
                continue;
            }
            let find = |who: ChatServer| {
                rows.iter()
                    .find(|(s, _)| *s == who)
                    .and_then(|(_, r)| r.as_ref().ok())
            };
            let (r, m) = (find(ChatServer::Relay), find(ChatServer::Mosquitto));
            let Some(any) = r.or(m) else { continue };
            let shape = format!(
                "{name}: 1 sender, {} receivers, {} messages",
                any.receivers, any.sent
            );
            type FanoutFigure = (&'static str, fn(&FanoutRun) -> Option<f64>, usize);
            let figures: [FanoutFigure; 5] = [
                (
                    "**p50 latency, ms** (lower is better)",
                    |f| f.latency.map(|l| l.p50_ms),
                    2,
                ),
                (
                    "**p99 latency, ms** (lower is better)",
                    |f| f.latency.map(|l| l.p99_ms),
                    2,
                ),
                ("max latency, ms", |f| f.latency.map(|l| l.max_ms), 2),
                (
                    "deliveries received / expected, %",
                    |f| {
                        Some(
                            100.0 * f.received as f64
                                / (f.receivers * f.sent as usize).max(1) as f64,
                        )
                    },
                    2,
                ),
                (
                    "server CPU while sending, s",
                    |f| Some(f.server_cpu_seconds),
                    2,
                ),
            ];
            for (label, f, digits) in figures {
                let (a, b) = (r.and_then(f), m.and_then(f));
                let _ = writeln!(
                    s,
                    "| {shape} | {label} | {} | {} | {} |",
                    show(a, digits),
                    show(b, digits),
                    ratio(a, b)
                );
            }
        }
        s.push('\n');
        let all = idle
            .iter()
            .map(|(w, r)| ("idle", *w, r.as_ref().err()))
            .chain(group.iter().map(|(w, r)| ("group", *w, r.as_ref().err())))
            .chain(room.iter().map(|(w, r)| ("room", *w, r.as_ref().err())));
        for (part, who, err) in all {
            if let Some(e) = err {
                let _ = writeln!(s, "- {part} ({}) failed: {e}", who.label());
            }
        }
        for (part, rows) in [("group", group), ("room", room)] {
            for (who, r) in rows {
                let Ok(f) = r else { continue };
                if !f.refused.is_empty() {
                    let _ = writeln!(
                        s,
                        "- {part} ({}): {} error frames, the first: `{}`",
                        who.label(),
                        f.refused.len(),
                        f.refused[0]
                    );
                }
                if f.unattributed_cpu > crate::DISTURBED_SHARE {
                    let _ = writeln!(
                        s,
                        "- {part} ({}): {:.0}% of the machine's CPU went to neither the server nor \
                         the bench while the sender sent (other programs): treat it with care",
                        who.label(),
                        f.unattributed_cpu * 100.0
                    );
                }
                if f.ended.0 > 0 {
                    let _ = writeln!(
                        s,
                        "- {part} ({}): {} receivers' connections ended during the run: {}",
                        who.label(),
                        f.ended.0,
                        f.ended.1.as_deref().unwrap_or("")
                    );
                }
            }
        }
        if let Some(r) = get(idle, ChatServer::Relay) {
            let kib = r.kib_per_connection();
            let _ = writeln!(
                s,
                "- **Target** ({TARGET_CONNECTIONS} connections at <= {TARGET_KIB_PER_CONNECTION} KiB \
                 each): {TARGET_CONNECTIONS} connections cannot be opened on this machine (see the \
                 open-file limits above: the bench holds one end of each connection and the \
                 server the other, each capped at {} descriptors). At {} connections the relay \
                 added {kib:.2} KiB each: {} the per-connection figure; the 100,000 itself is not \
                 measured.",
                limits.hard_before,
                r.connections,
                if kib <= TARGET_KIB_PER_CONNECTION {
                    "within"
                } else {
                    "over"
                }
            );
        }
        self.notes.add(format!(
            "Each part started each server afresh (relay: release binary, SQLite store, `[chat] \
             messages_per_second = {}`, `room_member_limit = {}`, `[limits] max_connections` and \
             `max_connections_per_ip` = {}; mosquitto: one `protocol websockets` listener \
             (and a plain MQTT one no client uses, without which 2.0.11 does not start), \
             `allow_anonymous true`, `persistence false`, `max_connections -1`, \
             `set_tcp_nodelay true`), the relay first. All clients run in the bench process \
             (tokio, 2 worker threads, on the same 2 CPUs as the server), {} connection set-ups \
             in flight, spread over {} source addresses 127.0.0.2-127.0.0.250.",
            self.setup.messages_per_second,
            self.setup.room_member_limit,
            self.setup.max_connections,
            self.args.in_flight,
            clients::source_count()
        ));
        self.notes.add(
            "Idle: relay clients are users with a signed token each (device `d`) that send \
             nothing (they answer the relay's pings); mosquitto clients send CONNECT (own client \
             id, clean session, keepalive 1800 s) and SUBSCRIBE to a topic of their own. Memory \
             is the server's VmRSS from /proc after one client came and went (before) and 3 s \
             after the last connection opened (with)."
                .to_owned(),
        );
        self.notes.add(format!(
            "Fan-out: the group is made by the sender with `group.create` (relay) or is a topic \
             with every receiver subscribed at QoS 0 (mosquitto); the room is joined by each \
             connection with `room.join` (relay) or is again a topic. The sender sends \
             {} messages at {}/s to the group and {} at {}/s to the room; each body carries its \
             send time in microseconds on the bench's monotonic clock, and each receiver records \
             its receive time minus that. A group message on the relay is committed to SQLite \
             (`synchronous=FULL`, an inbox row per member) before it is fanned out; a room \
             message and an MQTT QoS 0 message are never stored. Receivers do not ack. The \
             sorted latencies of each run are in the work folder (`latencies-*.txt`).",
            self.args.group_messages,
            self.args.group_rate,
            self.args.room_messages,
            self.args.room_rate
        ));
        self.notes.write_markdown(&mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_uses_nearest_rank() {
        let us: Vec<u64> = (1..=1000).rev().map(|i| i * 1000).collect();
        let l = LatencySummary::from_micros(us).expect("samples");
        assert_eq!(l.samples, 1000);
        assert_eq!(l.p50_ms, 500.0);
        assert_eq!(l.p99_ms, 990.0);
        assert_eq!(l.max_ms, 1000.0);
        assert_eq!(LatencySummary::from_micros(Vec::new()), None);
        let one = LatencySummary::from_micros(vec![1500]).expect("one sample");
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (1.5, 1.5, 1.5));
    }

    #[test]
    fn per_connection_memory_is_growth_over_count() {
        let run = IdleRun {
            connections: 1000,
            before: Rss {
                total: 10 << 20,
                ..Rss::default()
            },
            after: Rss {
                total: (10 << 20) + 8 * 1024 * 1000,
                ..Rss::default()
            },
            open_seconds: 1.0,
        };
        assert_eq!(run.kib_per_connection(), 8.0);
    }
}
