//! The DNS clients: dnsperf (load, its summary parsed) and dig (answers spot-checked).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// What one dnsperf run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DnsRun {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    /// NOERROR answers (the rest are other response codes).
    pub noerror: u64,
    pub run_seconds: f64,
    pub qps: f64,
    pub avg_latency_ms: f64,
    pub max_latency_ms: f64,
    /// Server CPU (user + system) during the run, in seconds.
    pub server_cpu_seconds: f64,
    /// The share of the machine's CPU time during the run that went neither to the server nor
    /// to the bench and dnsperf.
    pub unattributed_cpu: f64,
    /// Queries/s of every run this one is the median of.
    pub runs_qps: Vec<f64>,
}

impl DnsRun {
    /// Server CPU microseconds per completed query.
    pub fn cpu_us_per_query(&self) -> f64 {
        self.server_cpu_seconds * 1e6 / (self.completed.max(1) as f64)
    }

    /// Half the range of queries/s over the runs, relative to this (median) run.
    pub fn spread(&self) -> Option<f64> {
        if self.runs_qps.len() < 2 {
            return None;
        }
        let max = self.runs_qps.iter().copied().fold(f64::MIN, f64::max);
        let min = self.runs_qps.iter().copied().fold(f64::MAX, f64::min);
        Some((max - min) / 2.0 / self.qps.max(1e-9))
    }
}

/// How dnsperf runs.
#[derive(Debug, Clone, Copy)]
pub struct DnsperfShape {
    /// `-c`: sockets (clients).
    pub clients: u32,
    /// `-q`: queries in flight.
    pub outstanding: u32,
    /// The CPU dnsperf is pinned to.
    pub cpu: u32,
}

/// The dnsperf command line (without the time limit), as the report quotes it.
pub fn dnsperf_args(shape: DnsperfShape, host: &str, port: &str, input: &Path) -> Vec<String> {
    vec![
        "-B".to_owned(),
        "-d".to_owned(),
        input.display().to_string(),
        "-s".to_owned(),
        host.to_owned(),
        "-p".to_owned(),
        port.to_owned(),
        "-T".to_owned(),
        "1".to_owned(),
        "-c".to_owned(),
        shape.clients.to_string(),
        "-q".to_owned(),
        shape.outstanding.to_string(),
        "-t".to_owned(),
        "2".to_owned(),
    ]
}

/// Runs dnsperf pinned to `shape.cpu` for `duration` and parses its summary; the output goes
/// to `log`.
pub fn run_dnsperf(
    dnsperf: &Path,
    shape: DnsperfShape,
    addr: SocketAddr,
    input: &Path,
    duration: Duration,
    log: &Path,
) -> anyhow::Result<DnsRun> {
    let seconds = duration.as_secs_f64().ceil().max(1.0) as u64;
    let output = Command::new("taskset")
        .arg("-c")
        .arg(shape.cpu.to_string())
        .arg(dnsperf)
        .args(dnsperf_args(
            shape,
            &addr.ip().to_string(),
            &addr.port().to_string(),
            input,
        ))
        .arg("-l")
        .arg(seconds.to_string())
        .stdin(Stdio::null())
        .output()
        .context("running dnsperf (apt-get install dnsperf)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    std::fs::write(log, format!("{stdout}\n--- stderr ---\n{stderr}"))?;
    if !output.status.success() {
        bail!(
            "dnsperf failed ({}): {}",
            output.status,
            stderr
                .lines()
                .chain(stdout.lines())
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
        );
    }
    parse_dnsperf(&stdout)
}

/// Parses dnsperf 2.10's statistics block.
pub fn parse_dnsperf(stdout: &str) -> anyhow::Result<DnsRun> {
    let field = |key: &str| -> anyhow::Result<&str> {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
            .with_context(|| format!("no {key:?} in dnsperf's output"))
    };
    let first_number = |key: &str| -> anyhow::Result<f64> {
        let v = field(key)?;
        v.split_whitespace()
            .next()
            .unwrap_or("")
            .parse::<f64>()
            .with_context(|| format!("{key} {v:?}"))
    };
    let sent = first_number("Queries sent:")? as u64;
    let completed = first_number("Queries completed:")? as u64;
    let lost = first_number("Queries lost:")? as u64;
    let run_seconds = first_number("Run time (s):")?;
    let qps = first_number("Queries per second:")?;
    // "Average Latency (s):  0.000123 (min 0.000012, max 0.001234)"
    let latency = field("Average Latency (s):")?;
    let avg_latency_ms = latency
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |s| s * 1e3);
    let max_latency_ms = latency
        .split("max ")
        .nth(1)
        .and_then(|v| v.trim_end_matches(')').trim().parse::<f64>().ok())
        .map_or(0.0, |s| s * 1e3);
    // "Response codes:       NOERROR 1000 (100.00%), NXDOMAIN 3 (0.3%)"
    let noerror = field("Response codes:")
        .ok()
        .and_then(|codes| {
            let mut words = codes.split_whitespace();
            while let Some(w) = words.next() {
                if w == "NOERROR" {
                    return words.next().and_then(|n| n.parse::<u64>().ok());
                }
            }
            None
        })
        .unwrap_or(0);
    Ok(DnsRun {
        sent,
        completed,
        lost,
        noerror,
        run_seconds,
        qps,
        avg_latency_ms,
        max_latency_ms,
        ..DnsRun::default()
    })
}

/// What dig saw for one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigAnswer {
    pub status: String,
    pub addrs: Vec<Ipv4Addr>,
    /// The ECS option of the answer: "ADDRESS/SOURCE/SCOPE" as dig prints it.
    pub client_subnet: Option<String>,
    /// Whether the answer is authoritative (`aa`).
    pub authoritative: bool,
}

/// `dig @addr -p port edge.cdn.example. A +subnet=SUBNET/24 +norecurse` over UDP.
pub fn dig(
    addr: SocketAddr,
    name: &str,
    subnet: Option<(Ipv4Addr, u8)>,
) -> anyhow::Result<DigAnswer> {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .arg(name)
        .arg("A")
        .args(["+norecurse", "+time=2", "+tries=2", "+nocookie"]);
    if let Some((a, len)) = subnet {
        cmd.arg(format!("+subnet={a}/{len}"));
    }
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .context("running dig (apt-get install dnsutils)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("dig failed ({}): {}", output.status, text.trim());
    }
    parse_dig(&text)
}

/// Parses dig's default output: the status, the A records of the answer section, the ECS
/// option and the `aa` flag.
pub fn parse_dig(text: &str) -> anyhow::Result<DigAnswer> {
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .context("no status in dig's output")?
        .trim()
        .to_owned();
    let authoritative = text
        .lines()
        .find_map(|l| l.strip_prefix(";; flags:"))
        .and_then(|f| f.split(';').next())
        .is_some_and(|f| f.split_whitespace().any(|w| w == "aa"));
    let mut addrs = Vec::new();
    let mut in_answer = false;
    for line in text.lines() {
        if line.starts_with(";; ANSWER SECTION:") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() || line.starts_with(";;") {
                break;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() >= 5
                && words[3] == "A"
                && let Ok(a) = words[4].parse::<Ipv4Addr>()
            {
                addrs.push(a);
            }
        }
    }
    addrs.sort();
    let client_subnet = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("; CLIENT-SUBNET:"))
        .map(|s| s.trim().to_owned());
    Ok(DigAnswer {
        status,
        addrs,
        client_subnet,
        authoritative,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dnsperf_statistics() {
        let out = "DNS Performance Testing Tool\nVersion 2.10.0\n\n[Status] Command line: dnsperf -B\n\
Statistics:\n\n  Queries sent:         1500000\n  Queries completed:    1499900 (99.99%)\n  Queries lost:         100 (0.01%)\n\n\
  Response codes:       NOERROR 1499900 (100.00%)\n  Average packet size:  request 52, response 88\n  Run time (s):         10.000123\n\
  Queries per second:   149988.155\n\n  Average Latency (s):  0.000612 (min 0.000021, max 0.004321)\n  Latency StdDev (s):   0.000100\n\n";
        let r = parse_dnsperf(out).expect("parse");
        assert_eq!(r.sent, 1_500_000);
        assert_eq!(r.completed, 1_499_900);
        assert_eq!(r.lost, 100);
        assert_eq!(r.noerror, 1_499_900);
        assert!((r.qps - 149_988.155).abs() < 1e-6);
        assert!((r.avg_latency_ms - 0.612).abs() < 1e-9);
        assert!((r.max_latency_ms - 4.321).abs() < 1e-9);
        assert!(parse_dnsperf("nothing").is_err());
    }

    #[test]
    fn parses_dig_output() {
        let out = "; <<>> DiG 9.18.49 <<>> @127.0.0.1 -p 19154 edge.cdn.example. A\n\
;; global options: +cmd\n;; Got answer:\n\
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 5113\n\
;; flags: qr aa; QUERY: 1, ANSWER: 2, AUTHORITY: 0, ADDITIONAL: 1\n\n\
;; OPT PSEUDOSECTION:\n; EDNS: version: 0, flags:; udp: 1232\n; CLIENT-SUBNET: 1.2.3.0/24/16\n\
;; QUESTION SECTION:\n;edge.cdn.example.\t\tIN\tA\n\n\
;; ANSWER SECTION:\nedge.cdn.example.\t30\tIN\tA\t198.51.100.11\nedge.cdn.example.\t30\tIN\tA\t198.51.100.10\n\n\
;; Query time: 0 msec\n";
        let a = parse_dig(out).expect("parse");
        assert_eq!(a.status, "NOERROR");
        assert!(a.authoritative);
        assert_eq!(
            a.addrs,
            vec![
                Ipv4Addr::new(198, 51, 100, 10),
                Ipv4Addr::new(198, 51, 100, 11)
            ]
        );
        assert_eq!(a.client_subnet.as_deref(), Some("1.2.3.0/24/16"));
    }
}
