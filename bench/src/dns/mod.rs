//! `estuary-bench dns-vs-peers` (issue 6): Estuary's geo-DNS against gdnsd with its geoip
//! plugin and Knot DNS with its geoip module, all serving the same zone and coverage map, one
//! at a time on loopback, the server pinned to CPU 0 and dnsperf to CPU 1, with a different
//! EDNS Client Subnet in every query (dnsperf's binary input). Figures: queries/s, server CPU
//! per query, lost queries, each as a ratio to gdnsd and to Knot; the answers are spot-checked
//! with dig first. Then the steering HTTP API under wrk (playback JSON and the redirect), with
//! no peer: absolute figures and server CPU per request.

pub mod data;
pub mod servers;
pub mod tools;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::ValueEnum;

use self::data::Topology;
use self::servers::{DnsServer, DnsSetup, ServerProcess};
use self::tools::{DnsRun, DnsperfShape};
use crate::harness;
use crate::load::{self, LoadShape, Measurement};
use crate::procfs;
use crate::report;

const BEGIN: &str = "<!-- dns-vs-peers: begin -->";
const END: &str = "<!-- dns-vs-peers: end -->";

#[derive(clap::Args, Debug)]
pub struct DnsVsPeersArgs {
    /// How long each measured run lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Short runs (3 s, one repetition) for a quick look; the figures are noisier.
    #[arg(long)]
    quick: bool,
    /// Measure each figure this many times and keep the median; default 3, or 1 with --quick.
    #[arg(long)]
    repeat: Option<usize>,
    /// Work folder for the zone data, configs, query file and logs.
    #[arg(long, default_value = "bench-out-dns")]
    out: PathBuf,
    #[command(flatten)]
    report: harness::ReportArgs,
    /// The DNS servers to measure (default: all).
    #[arg(long, value_delimiter = ',')]
    servers: Vec<DnsServer>,
    /// Run only these parts (default: both).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Part>,
    /// Sites, each with two edge addresses.
    #[arg(long, default_value_t = 20)]
    sites: usize,
    /// Client networks in the coverage map.
    #[arg(long, default_value_t = 3000)]
    networks: usize,
    /// Queries in the dnsperf input, each with its own /24 client subnet (dnsperf cycles
    /// through them).
    #[arg(long, default_value_t = 50_000)]
    queries: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 6)]
    seed: u64,
    /// dnsperf `-c`: sockets.
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// dnsperf `-q`: queries in flight.
    #[arg(long, default_value_t = 200)]
    outstanding: u32,
    /// wrk connections for the steering API.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Before each run, wait at most this long for the machine to be idle.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    quiet_wait: Duration,
    /// Run a figure again at most this many times when other programs took more than 6% of
    /// the CPU during it (then it is kept and flagged in the report).
    #[arg(long, default_value_t = 5)]
    max_retries: usize,
}

/// The bench's two halves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// Geo-DNS under dnsperf against the peers.
    Dns,
    /// The steering HTTP API under wrk.
    Api,
}

/// A spot check of one server's answer for one client subnet.
#[derive(Debug, Clone)]
struct Check {
    subnet: String,
    /// What the subnet is (which kind of network of the map, or none).
    case: String,
    expected: String,
    got: String,
    scope: String,
    ok: Option<bool>,
}

/// Every server's median dnsperf run (or why it has none).
type DnsRows = Vec<(DnsServer, Result<DnsRun, String>)>;

/// Every server's spot checks.
type Checks = Vec<(DnsServer, Vec<Check>)>;

/// One steering API route's result.
struct ApiRow {
    route: String,
    example: String,
    outcome: report::Outcome,
}

struct DnsBench {
    args: DnsVsPeersArgs,
    duration: Duration,
    repeat: usize,
    setup: DnsSetup,
    dnsperf: PathBuf,
    topology: Topology,
    input: PathBuf,
    shape: DnsperfShape,
    notes: harness::Notes,
}

pub fn run(args: DnsVsPeersArgs) -> anyhow::Result<()> {
    let command = harness::command_line();
    let duration = harness::run_duration(args.quick, args.duration)?;
    if args.sites == 0 || args.sites > data::MAX_SITES {
        bail!("--sites must be 1 to {}", data::MAX_SITES);
    }
    if args.queries == 0 || args.queries > 65_536 * 16 {
        bail!("--queries must be 1 to {}", 65_536 * 16);
    }
    let repeat = harness::repetitions(args.repeat, args.quick);
    let only = args.only.clone();
    let wants = |p: Part| only.is_empty() || only.contains(&p);
    let dnsperf = if wants(Part::Dns) {
        crate::require("dnsperf", "dnsperf")?
    } else {
        PathBuf::from("dnsperf")
    };
    if wants(Part::Dns) {
        crate::require("dig", "dnsutils")?;
    }
    if wants(Part::Api) {
        crate::require("wrk", "wrk")?;
    }
    crate::require("taskset", "util-linux")?;
    let estuary_bin = harness::estuary_binary(args.report.estuary.as_deref())?;
    let work = harness::work_folder(&args.out)?;
    std::fs::create_dir_all(work.join("logs"))?;
    let setup = DnsSetup {
        work: work.clone(),
        estuary_bin,
        gdnsd_bin: crate::servers::find_program("gdnsd"),
        knotd_bin: crate::servers::find_program("knotd"),
    };
    eprintln!(
        "Generating the zone data and queries under {} ...",
        work.display()
    );
    let topology = Topology::generate(args.sites, args.networks, args.queries, args.seed);
    let input = work.join("queries.bin");
    std::fs::write(&input, topology.dnsperf_input())?;
    let shape = DnsperfShape {
        clients: args.clients.max(1),
        outstanding: args.outstanding.max(1),
        cpu: 1,
    };
    let bench = DnsBench {
        duration,
        repeat,
        setup,
        dnsperf,
        topology,
        input,
        shape,
        notes: Default::default(),
        args,
    };
    let servers = bench.servers();
    if wants(Part::Dns) {
        for s in &servers {
            servers::check_ports_free(*s)?;
        }
    }
    if wants(Part::Api) {
        servers::check_port_free(servers::STEERING_API_PORT, "the steering API")?;
    }
    bench.note_background_load()?;
    let (dns, checks) = if wants(Part::Dns) {
        bench.dns_rows(&servers)?
    } else {
        (Vec::new(), Vec::new())
    };
    let api = if wants(Part::Api) {
        bench.api_rows()?
    } else {
        Vec::new()
    };
    let markdown = bench.markdown(&command, &dns, &checks, &api);
    harness::publish_report(bench.args.report.write_md.as_deref(), BEGIN, END, &markdown)?;
    Ok(())
}

/// The median run by queries/s, remembering every run's queries/s.
fn median_dns(runs: &[Result<DnsRun, String>]) -> Result<DnsRun, String> {
    let mut ok: Vec<DnsRun> = runs
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    if ok.is_empty() {
        return Err(runs
            .iter()
            .find_map(|r| r.as_ref().err().cloned())
            .unwrap_or_else(|| "not run".to_owned()));
    }
    let all: Vec<f64> = ok.iter().map(|r| r.qps).collect();
    ok.sort_by(|a, b| a.qps.total_cmp(&b.qps));
    let mut m = ok.swap_remove(ok.len() / 2);
    m.runs_qps = all;
    Ok(m)
}

impl DnsBench {
    fn servers(&self) -> Vec<DnsServer> {
        if self.args.servers.is_empty() {
            return DnsServer::ALL.to_vec();
        }
        let mut v = Vec::new();
        for s in &self.args.servers {
            if !v.contains(s) {
                v.push(*s);
            }
        }
        v
    }

    fn note(&self, note: String) {
        self.notes.add(note);
    }

    fn note_background_load(&self) -> anyhow::Result<()> {
        self.notes.background_load()?;
        self.note(format!(
            "Before each run the bench waited up to {:?} for the machine to be idle (under 10% \
             busy), and ran a figure again (up to {} times) when more than 6% of the CPU went to \
             neither the server nor the bench and its load tool; a figure still disturbed after \
             that is kept and flagged.",
            self.args.quiet_wait, self.args.max_retries
        ));
        Ok(())
    }

    /// One measured run after a short warm-up run, with the server's CPU time and the share of
    /// CPU that went elsewhere; repeated when that share is above 6%.
    fn measure<T>(
        &self,
        pids_ticks: impl Fn() -> u64,
        load: impl Fn(Duration) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, f64, f64)> {
        let quiet = harness::Quiet {
            wait: self.args.quiet_wait,
            warmup: Duration::from_secs(1),
            max_retries: self.args.max_retries,
        };
        let m = harness::measure_undisturbed(quiet, self.duration, pids_ticks, load)?;
        Ok((m.value, m.server_cpu_seconds, m.unattributed_cpu))
    }

    /// dnsperf against every server, `repeat` times, servers one at a time (alternating the
    /// order), each started afresh; the answers are spot-checked in the first repetition.
    fn dns_rows(&self, servers: &[DnsServer]) -> anyhow::Result<(DnsRows, Checks)> {
        let mut runs: Vec<Vec<Result<DnsRun, String>>> = vec![Vec::new(); servers.len()];
        let mut checks: Checks = Vec::new();
        for rep in 0..self.repeat {
            let order = harness::alternating_order(servers.len(), rep);
            for k in order {
                let server = servers[k];
                eprintln!(
                    "dnsperf: {} on 127.0.0.1:{} (run {} of {})",
                    server.label(),
                    server.port(),
                    rep + 1,
                    self.repeat
                );
                let process = match ServerProcess::start_dns(server, &self.setup, &self.topology) {
                    Ok(p) => p,
                    Err(e) => {
                        let e = format!("{e:#}");
                        eprintln!("    failed: {e}");
                        runs[k].push(Err(e));
                        continue;
                    }
                };
                if rep == 0 {
                    checks.push((server, self.spot_checks(server)));
                    if server.is_estuary() {
                        self.note(format!(
                            "Estuary ran as `estuary steering` with TOKIO_WORKER_THREADS=1 ({} threads in all).",
                            process.threads()
                        ));
                    }
                }
                let log = self
                    .setup
                    .work
                    .join("logs")
                    .join(format!("dnsperf-{}-r{rep}.txt", server.slug()));
                let outcome = self
                    .measure(
                        || process.cpu_ticks(),
                        |d| {
                            tools::run_dnsperf(
                                &self.dnsperf,
                                self.shape,
                                server.addr(),
                                &self.input,
                                d,
                                &log,
                            )
                        },
                    )
                    .map(|(mut r, cpu, other)| {
                        r.server_cpu_seconds = cpu;
                        r.unattributed_cpu = other;
                        r
                    })
                    .map_err(|e| format!("{e:#}"));
                match &outcome {
                    Ok(r) => eprintln!(
                        "    {:.0} q/s, {:.2} µs server CPU per query, {} lost, {:.0}% elsewhere",
                        r.qps,
                        r.cpu_us_per_query(),
                        r.lost,
                        r.unattributed_cpu * 100.0
                    ),
                    Err(e) => eprintln!("    failed: {e}"),
                }
                runs[k].push(outcome);
                process.stop()?;
            }
        }
        let rows = servers
            .iter()
            .zip(runs.iter())
            .map(|(s, r)| (*s, median_dns(r)))
            .collect();
        Ok((rows, checks))
    }

    /// Subnets to ask every server about: one inside a /24, a /20 and a /16 network of the
    /// map, and one no network covers.
    fn spot_subnets(&self) -> Vec<(String, Ipv4Addr, Option<usize>)> {
        let t = &self.topology;
        let mut out = Vec::new();
        for len in [24u8, 20, 16] {
            if let Some(n) = t.networks.iter().find(|n| n.len == len) {
                let [a, b, c, _] = n.addr.octets();
                let c = if len == 24 { c } else { c | 5 };
                out.push((
                    format!("inside {}", n.cidr()),
                    Ipv4Addr::new(a, b, c, 0),
                    Some(n.site),
                ));
            }
        }
        if let Some(q) = t.queries.iter().find(|q| q.site.is_none()) {
            out.push(("in no network".to_owned(), q.subnet, None));
        }
        out
    }

    fn spot_checks(&self, server: DnsServer) -> Vec<Check> {
        let t = &self.topology;
        let show = |addrs: &[Ipv4Addr]| {
            addrs
                .iter()
                .map(Ipv4Addr::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let site_label = |i: usize| {
            let s = &t.sites[i];
            format!("{} ({})", s.name, show(&s.addrs))
        };
        self.spot_subnets()
            .into_iter()
            .map(|(case, subnet, site)| {
                // The static zone answers the default site to everyone; the geo peers answer
                // it to clients no network covers; Estuary picks by its own policy then.
                let expected: Option<usize> = match (server, site) {
                    (DnsServer::KnotStatic, _) => Some(t.default_site()),
                    (_, Some(i)) => Some(i),
                    (s, None) if s.is_estuary() => None,
                    (_, None) => Some(t.default_site()),
                };
                let expected_text = expected.map_or_else(
                    || "any site's edges (its own choice)".to_owned(),
                    site_label,
                );
                match tools::dig(server.addr(), data::GEO_NAME, Some((subnet, 24))) {
                    Ok(a) => {
                        let mut got = format!("{} {}", a.status, show(&a.addrs));
                        if !a.authoritative {
                            got.push_str(" (not aa)");
                        }
                        let ok = match expected {
                            Some(i) => {
                                let mut want = t.sites[i].addrs.to_vec();
                                want.sort();
                                a.status == "NOERROR" && a.addrs == want && a.authoritative
                            }
                            None => a.status == "NOERROR" && !a.addrs.is_empty(),
                        };
                        Check {
                            subnet: format!("{subnet}/24"),
                            case,
                            expected: expected_text,
                            got,
                            scope: a
                                .client_subnet
                                .clone()
                                .unwrap_or_else(|| "no ECS option".to_owned()),
                            ok: Some(ok),
                        }
                    }
                    Err(e) => Check {
                        subnet: format!("{subnet}/24"),
                        case,
                        expected: expected_text,
                        got: format!("dig failed: {e:#}"),
                        scope: "-".to_owned(),
                        ok: Some(false),
                    },
                }
            })
            .collect()
    }

    /// Paths for the steering API under wrk: one client address per network of the map (up
    /// to 2,000) plus one in ten outside every network.
    fn api_paths(&self, suffix: &str) -> Vec<String> {
        self.topology
            .queries
            .iter()
            .take(2000)
            .map(|q| {
                let [a, b, c, _] = q.subnet.octets();
                format!(
                    "/v1/playback/{}{suffix}?client={}",
                    servers::ASSET,
                    Ipv4Addr::new(a, b, c, 7)
                )
            })
            .collect()
    }

    /// wrk against the playback JSON route and the redirect route, `repeat` times, the
    /// service started afresh for each repetition.
    fn api_rows(&self) -> anyhow::Result<Vec<ApiRow>> {
        let wrk = crate::require("wrk", "wrk")?;
        let scripts = self.setup.work.join("scripts");
        std::fs::create_dir_all(&scripts)?;
        let routes = [
            ("playback JSON: GET /v1/playback/ASSET?client=IP", ""),
            (
                "redirect (302): GET /v1/playback/ASSET/master.m3u8?client=IP",
                "/master.m3u8",
            ),
        ];
        let mut sets = Vec::new();
        for (i, (label, suffix)) in routes.iter().enumerate() {
            let paths = self.api_paths(suffix);
            let script = scripts.join(format!("steering-{i}.lua"));
            std::fs::write(&script, load::wrk_script(&paths))?;
            sets.push(((*label).to_owned(), paths, script));
        }
        let shape = LoadShape {
            connections: self.args.connections,
            threads: 1,
            streams_per_connection: 1,
            cpu: Some(1),
        };
        let base = format!("http://127.0.0.1:{}", servers::STEERING_API_PORT);
        let mut runs: Vec<Vec<report::Outcome>> = vec![Vec::new(); sets.len()];
        for rep in 0..self.repeat {
            eprintln!(
                "Steering API: starting estuary steering (run {} of {})",
                rep + 1,
                self.repeat
            );
            let process = match ServerProcess::start_steering_api(&self.setup, &self.topology) {
                Ok(p) => p,
                Err(e) => {
                    let e = format!("{e:#}");
                    eprintln!("    failed: {e}");
                    for r in runs.iter_mut() {
                        r.push(Err(e.clone()));
                    }
                    continue;
                }
            };
            for (i, (label, paths, script)) in sets.iter().enumerate() {
                eprintln!("  {label}");
                let outcome = self
                    .check_api(&paths[0], if i == 0 { 200 } else { 302 })
                    .and_then(|()| {
                        let log = self
                            .setup
                            .work
                            .join("logs")
                            .join(format!("wrk-steering-{i}-r{rep}.txt"));
                        self.measure(
                            || process.cpu_ticks(),
                            |d| load::run_wrk(&wrk, &shape, &base, script, d, &log),
                        )
                    })
                    .map(|(mut m, cpu, other): (Measurement, f64, f64)| {
                        m.server_cpu_seconds = Some(cpu);
                        m.unattributed_cpu = Some(other);
                        m
                    })
                    .map_err(|e| format!("{e:#}"));
                match &outcome {
                    Ok(m) => eprintln!(
                        "    {:.0} req/s, p99 {:.2} ms, server CPU {:.2} s, {} errors",
                        m.requests_per_second(),
                        m.p99_ms.unwrap_or(0.0),
                        m.server_cpu_seconds.unwrap_or(0.0),
                        m.errors
                    ),
                    Err(e) => eprintln!("    failed: {e}"),
                }
                runs[i].push(outcome);
            }
            process.stop()?;
        }
        Ok(sets
            .into_iter()
            .zip(runs)
            .map(|((route, paths, _), r)| ApiRow {
                route,
                example: paths.first().cloned().unwrap_or_default(),
                outcome: crate::median(r),
            })
            .collect())
    }

    /// One request before the load: the route answers with the expected status.
    fn check_api(&self, path: &str, status: u16) -> anyhow::Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], servers::STEERING_API_PORT));
        let mut conn = crate::httpget::Http1Conn::connect(addr)?;
        let (got, _) = conn.get(path)?;
        if got != status {
            bail!("GET {path} answered {got}, expected {status}");
        }
        Ok(())
    }

    fn versions(&self) -> Vec<String> {
        let git = harness::git_describe();
        let package = |name: &str| -> String {
            std::process::Command::new("dpkg-query")
                .args(["-W", "-f", "${Version}", name])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| format!("{name} {}", String::from_utf8_lossy(&o.stdout).trim()))
                .unwrap_or_else(|| format!("{name} (version unknown)"))
        };
        vec![
            format!("estuary commit {git}"),
            package("gdnsd"),
            package("knot"),
            package("knot-module-geoip"),
            package("dnsperf"),
            package("bind9-dnsutils"),
            package("wrk"),
        ]
    }

    fn markdown(
        &self,
        command: &str,
        dns: &[(DnsServer, Result<DnsRun, String>)],
        checks: &[(DnsServer, Vec<Check>)],
        api: &[ApiRow],
    ) -> String {
        let mut s = String::new();
        let t = &self.topology;
        let _ = writeln!(s, "### Geo-DNS vs gdnsd and Knot, and the steering API\n");
        let _ = writeln!(s, "- Date: {}", report::utc_now());
        report::write_machine_and_software(&mut s, &procfs::machine(), &self.versions());
        let _ = writeln!(s, "- Command: `{command}`");
        let matched = t.queries.iter().filter(|q| q.site.is_some()).count();
        let _ = writeln!(
            s,
            "- Data (seed {}): zone `{}` with SOA, NS and `{}` answered by client subnet: {} sites \
             with 2 edge addresses each, a coverage map of {} client networks ({} /24, {} /20, \
             {} /16, each in its own /16), {} queries each with its own /24 ECS subnet ({} inside \
             a network of the map, {} outside every one).\n",
            self.args.seed,
            data::ZONE,
            data::GEO_NAME,
            t.sites.len(),
            t.networks.len(),
            t.networks.iter().filter(|n| n.len == 24).count(),
            t.networks.iter().filter(|n| n.len == 20).count(),
            t.networks.iter().filter(|n| n.len == 16).count(),
            t.queries.len(),
            matched,
            t.queries.len() - matched,
        );
        if !dns.is_empty() {
            self.dns_markdown(&mut s, dns, checks);
        }
        if !api.is_empty() {
            self.api_markdown(&mut s, api);
        }
        self.notes.write_markdown(&mut s);
        s
    }

    fn dns_markdown(
        &self,
        s: &mut String,
        dns: &[(DnsServer, Result<DnsRun, String>)],
        checks: &[(DnsServer, Vec<Check>)],
    ) {
        let find = |who: DnsServer| {
            dns.iter()
                .find(|(k, _)| *k == who)
                .and_then(|(_, r)| r.as_ref().ok())
        };
        let gdnsd = find(DnsServer::Gdnsd);
        let knot = find(DnsServer::Knot);
        let estuary = find(DnsServer::Estuary);
        let _ = writeln!(s, "#### Geo-DNS under dnsperf\n");
        let args = tools::dnsperf_args(self.shape, "127.0.0.1", "PORT", &self.input).join(" ");
        let _ = writeln!(
            s,
            "Each server alone on 127.0.0.1 (its own port), pinned to CPU 0 with one worker \
             (gdnsd `udp_threads => 1`, Knot `udp-workers: 1`, Estuary `[dns] workers = 1` and `TOKIO_WORKER_THREADS=1`), \
             started afresh for each repetition, one at a time, alternating the order. dnsperf \
             on CPU 1: `taskset -c 1 dnsperf {args} -l {}`, after a 1 s warm-up \
             run. Each figure is the median run of {} (by queries/s). Server CPU is user+system \
             time of the server's processes from /proc during the measured run, divided by the \
             queries completed. Ratios are row / peer (above 1.0: more queries/s, or more CPU \
             per query, which is worse).\n",
            self.duration.as_secs_f64().ceil(),
            self.repeat
        );
        let verdict = match (estuary, gdnsd, knot) {
            (Some(e), Some(g), Some(k)) => {
                let vs_g = e.qps / g.qps.max(1e-9);
                let vs_k = e.qps / k.qps.max(1e-9);
                format!(
                    "**Target** (Estuary at least 1.0x gdnsd and at least 0.7x Knot in queries/s): {}. \
                     {:.2}x gdnsd ({}), {:.2}x Knot geoip ({}).",
                    if vs_g >= 1.0 && vs_k >= 0.7 {
                        "**met**"
                    } else {
                        "**NOT met**"
                    },
                    vs_g,
                    if vs_g >= 1.0 { "met" } else { "missed" },
                    vs_k,
                    if vs_k >= 0.7 { "met" } else { "missed" },
                )
            }
            _ => "**Target** (Estuary at least 1.0x gdnsd and at least 0.7x Knot in queries/s): \
                  not measured in this run (a server did not complete a run; see below)."
                .to_owned(),
        };
        let _ = writeln!(s, "{verdict}\n");
        let _ = writeln!(
            s,
            "| Server | queries/s (± half the range) | / gdnsd | / Knot geoip | server CPU µs per query | / gdnsd | / Knot geoip | server CPU busy | avg latency ms | lost (median run) | NOERROR | queries/s, every run |"
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        let ratio = |a: f64, b: Option<f64>| match b {
            Some(b) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".to_owned(),
        };
        for (server, r) in dns {
            match r {
                Ok(r) => {
                    let spread = r
                        .spread()
                        .map_or(String::new(), |x| format!(" ±{:.0}%", x * 100.0));
                    let cpu = r.cpu_us_per_query();
                    let _ = writeln!(
                        s,
                        "| {} | {:.0}{spread} | {} | {} | {:.2} | {} | {} | {:.0}% | {:.3} | {} | {:.1}% | {} |",
                        server.label(),
                        r.qps,
                        ratio(r.qps, gdnsd.map(|g| g.qps)),
                        ratio(r.qps, knot.map(|k| k.qps)),
                        cpu,
                        ratio(cpu, gdnsd.map(DnsRun::cpu_us_per_query)),
                        ratio(cpu, knot.map(DnsRun::cpu_us_per_query)),
                        r.server_cpu_seconds / r.run_seconds.max(1e-9) * 100.0,
                        r.avg_latency_ms,
                        r.lost,
                        r.noerror as f64 * 100.0 / r.completed.max(1) as f64,
                        r.runs_qps
                            .iter()
                            .map(|q| format!("{q:.0}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        s,
                        "| {} | not measured: {} | | | | | | | | | | |",
                        server.label(),
                        e.replace('|', "/")
                    );
                }
            }
        }
        s.push('\n');
        for (server, r) in dns {
            if let Ok(r) = r
                && r.unattributed_cpu > crate::DISTURBED_SHARE
            {
                let _ = writeln!(
                    s,
                    "- {}: {:.0}% of the machine's CPU went to neither the server nor dnsperf during the median run: treat it with care.",
                    server.label(),
                    r.unattributed_cpu * 100.0
                );
            }
        }
        if dns.iter().any(|(k, _)| *k == DnsServer::EstuaryQuietLog) {
            let _ = writeln!(
                s,
                "- \"{}\" is a diagnostic row, not a configuration: the same binary and config \
                 with `RUST_LOG=info,hickory_server=warn`. With the default filter (`info`), \
                 hickory-server writes two INFO lines per query (the request and the query) into \
                 the service's JSON log on standard error; the target applies to the first row.",
                DnsServer::EstuaryQuietLog.label()
            );
        }
        let _ = writeln!(
            s,
            "- Lost queries are those dnsperf had no answer for within 2 s; the queries still in \
             flight when the time limit ends (up to `-q`) count as lost too.\n"
        );
        if !checks.is_empty() {
            let _ = writeln!(s, "#### Answers, spot-checked with dig\n");
            let _ = writeln!(
                s,
                "`dig @127.0.0.1 -p PORT {} A +norecurse +nocookie +subnet=SUBNET/24`, before the \
                 first measured run of each server. Right: NOERROR, authoritative, and exactly \
                 the expected site's two addresses (clients in no network: the first site for \
                 the peers, whose default it is; for Estuary any answer, since its policy then \
                 picks by rendezvous hash). ECS is the answer's option as dig prints it: \
                 ADDRESS/SOURCE/SCOPE.\n",
                data::GEO_NAME
            );
            let _ = writeln!(
                s,
                "| Server | client subnet | case | expected | answer | ECS in the answer | right |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|");
            for (server, list) in checks {
                for c in list {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} | {} |",
                        server.label(),
                        c.subnet,
                        c.case,
                        c.expected,
                        c.got.replace('|', "/"),
                        c.scope,
                        match c.ok {
                            Some(true) => "yes",
                            Some(false) => "**no**",
                            None => "-",
                        }
                    );
                }
            }
            s.push('\n');
        }
    }

    fn api_markdown(&self, s: &mut String, api: &[ApiRow]) {
        let _ = writeln!(s, "#### Steering HTTP API under wrk (no peer)\n");
        let _ = writeln!(
            s,
            "`estuary steering` with a state file ({} sites, {} edges, all up, every edge holding \
             the asset; no control plane) and the same coverage map, pinned to CPU 0 with \
             TOKIO_WORKER_THREADS=1 and started afresh for each repetition; `taskset -c 1 wrk \
             -t1 -c{} -d{}s --latency` on CPU 1 with a Lua script cycling through {} client \
             addresses (`?client=`), after a 1 s warm-up run; median of {} by requests/s. There \
             is no peer for this API, so the figures are absolute; server CPU per request comes \
             from /proc as above.\n",
            self.topology.sites.len(),
            self.topology.sites.len() * 2,
            self.args.connections,
            self.duration.as_secs_f64().ceil(),
            self.topology.queries.len().min(2000),
            self.repeat
        );
        let _ = writeln!(
            s,
            "| Route | requests/s (± half the range) | p50 ms | p99 ms | server CPU µs per request | server CPU busy | failed requests | example |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---|");
        for row in api {
            match &row.outcome {
                Ok(m) => {
                    let cpu = m.server_cpu_seconds.unwrap_or(0.0);
                    let spread = m
                        .spread()
                        .map_or(String::new(), |x| format!(" ±{:.0}%", x * 100.0));
                    let _ = writeln!(
                        s,
                        "| {} | {:.0}{spread} | {:.2} | {:.2} | {:.1} | {:.0}% | {} | `{}` |",
                        row.route,
                        m.requests_per_second(),
                        m.p50_ms.unwrap_or(f64::NAN),
                        m.p99_ms.unwrap_or(f64::NAN),
                        cpu * 1e6 / (m.requests.max(1) as f64),
                        cpu / m.seconds.max(1e-9) * 100.0,
                        m.errors,
                        row.example
                    );
                    if m.unattributed_cpu
                        .is_some_and(|o| o > crate::DISTURBED_SHARE)
                    {
                        self.note(format!(
                            "{}: {:.0}% of the CPU went elsewhere during the median run.",
                            row.route,
                            m.unattributed_cpu.unwrap_or(0.0) * 100.0
                        ));
                    }
                }
                Err(e) => {
                    let _ = writeln!(
                        s,
                        "| {} | not measured: {} | | | | | | `{}` |",
                        row.route,
                        e.replace('|', "/"),
                        row.example
                    );
                }
            }
        }
        s.push('\n');
    }
}
