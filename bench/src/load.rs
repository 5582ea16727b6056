//! The load tools: wrk (HTTP/1.1, plain and TLS) and h2load (HTTP/2 over TLS), run as
//! programs, with their output parsed into a [`Measurement`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// What one load run measured, as the client saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measurement {
    /// Completed requests.
    pub requests: u64,
    /// Bytes received, response heads included.
    pub bytes: u64,
    /// Length of the measured run.
    pub seconds: f64,
    /// Median and 99th percentile latency in milliseconds, when the tool reports them.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Failed requests: socket errors, timeouts and responses that were not 2xx/3xx.
    pub errors: u64,
    /// Server CPU (user + system) used during the run, in seconds.
    pub server_cpu_seconds: Option<f64>,
    /// The share of the machine's CPU time during the run that went neither to the server nor
    /// to the bench and its load tool (other programs, and kernel work not charged to any
    /// process): a sign that the run was disturbed.
    pub unattributed_cpu: Option<f64>,
    /// Requests/s of every run this figure is the median of.
    pub runs_requests_per_second: Vec<f64>,
}

impl Measurement {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }

    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9)
    }

    /// Half the range of requests/s over the runs, relative to this (median) run.
    pub fn spread(&self) -> Option<f64> {
        let runs = &self.runs_requests_per_second;
        if runs.len() < 2 {
            return None;
        }
        let max = runs.iter().copied().fold(f64::MIN, f64::max);
        let min = runs.iter().copied().fold(f64::MAX, f64::min);
        Some((max - min) / 2.0 / self.requests_per_second().max(1e-9))
    }

    /// Server CPU seconds per 10^9 bytes served.
    pub fn cpu_seconds_per_gb(&self) -> Option<f64> {
        let cpu = self.server_cpu_seconds?;
        (self.bytes > 0).then(|| cpu / (self.bytes as f64 / 1e9))
    }
}

/// Concurrency and placement of a load tool.
#[derive(Debug, Clone)]
pub struct LoadShape {
    /// TCP connections.
    pub connections: u32,
    /// Tool threads.
    pub threads: u32,
    /// HTTP/2 streams in flight per connection (h2load only).
    pub streams_per_connection: u32,
    /// Run the tool on this CPU only.
    pub cpu: Option<u32>,
}

fn command(program: &Path, cpu: Option<u32>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A wrk Lua script that cycles through `paths` (each wrk thread from a different place) and
/// prints exact totals and percentiles on one line at the end.
pub fn wrk_script(paths: &[String]) -> String {
    let mut s = String::from("-- Written by estuary-bench.\nlocal paths = {\n");
    for p in paths {
        let _ = writeln!(s, "  {p:?},");
    }
    s.push_str(
        r#"}
local n_threads = 0
function setup(thread)
  thread:set("first", n_threads * 37)
  n_threads = n_threads + 1
end
local i = 0
function init(args)
  i = first or 0
end
function request()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%.0f bytes=%.0f duration_us=%.0f p50_us=%.0f p99_us=%.0f connect=%.0f read=%.0f write=%.0f status=%.0f timeout=%.0f\n",
    summary.requests, summary.bytes, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"#,
    );
    s
}

/// Runs wrk against `base_url` (scheme, host and port) with a script from [`wrk_script`] and
/// keeps its output in `log`.
pub fn run_wrk(
    wrk: &Path,
    shape: &LoadShape,
    base_url: &str,
    script: &Path,
    duration: Duration,
    log: &Path,
) -> anyhow::Result<Measurement> {
    // wrk takes whole seconds.
    let seconds = duration.as_secs_f64().ceil().max(1.0) as u64;
    let output = command(wrk, shape.cpu)
        .arg(format!("-t{}", shape.threads))
        .arg(format!("-c{}", shape.connections))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout")
        .arg("10s")
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(base_url)
        .stdin(Stdio::null())
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    std::fs::write(log, format!("{stdout}\n--- stderr ---\n{stderr}"))?;
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {}",
            output.status,
            first_line_of(&stderr)
                .or(first_line_of(&stdout))
                .unwrap_or("")
        );
    }
    parse_wrk(&stdout)
}

fn first_line_of(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}

/// Reads the `BENCH ...` line the script's `done` prints.
pub fn parse_wrk(stdout: &str) -> anyhow::Result<Measurement> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .context("wrk printed no BENCH line (did the Lua script run?)")?;
    let value = |key: &str| -> anyhow::Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .with_context(|| format!("no {key} in {line:?}"))?
            .parse::<f64>()
            .with_context(|| format!("{key} in {line:?}"))
    };
    let errors = ["connect", "read", "write", "status", "timeout"]
        .iter()
        .map(|k| value(k))
        .sum::<anyhow::Result<f64>>()?;
    Ok(Measurement {
        requests: value("requests")? as u64,
        bytes: value("bytes")? as u64,
        seconds: value("duration_us")? / 1e6,
        p50_ms: Some(value("p50_us")? / 1e3),
        p99_ms: Some(value("p99_us")? / 1e3),
        errors: errors as u64,
        server_cpu_seconds: None,
        unattributed_cpu: None,
        runs_requests_per_second: Vec::new(),
    })
}

/// Runs h2load over TLS (HTTP/2 by ALPN) against the URIs listed in `uri_file`, with
/// per-request times logged to `request_log` for the percentiles.
pub fn run_h2load(
    h2load: &Path,
    shape: &LoadShape,
    uri_file: &Path,
    duration: Duration,
    log: &Path,
    request_log: &Path,
) -> anyhow::Result<Measurement> {
    let seconds = duration.as_secs_f64().ceil().max(1.0) as u64;
    let output = command(h2load, shape.cpu)
        .arg(format!("--clients={}", shape.connections))
        .arg(format!("--threads={}", shape.threads))
        .arg(format!(
            "--max-concurrent-streams={}",
            shape.streams_per_connection
        ))
        .arg(format!("--duration={seconds}"))
        .arg(format!("--log-file={}", request_log.display()))
        .arg("--input-file")
        .arg(uri_file)
        .stdin(Stdio::null())
        .output()
        .context("running h2load (apt-get install nghttp2-client)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    std::fs::write(log, format!("{stdout}\n--- stderr ---\n{stderr}"))?;
    if !output.status.success() {
        bail!(
            "h2load failed ({}): {}",
            output.status,
            first_line_of(&stderr)
                .or(first_line_of(&stdout))
                .unwrap_or("")
        );
    }
    let mut m = parse_h2load(&stdout)?;
    let (p50, p99) = h2load_percentiles(request_log)?;
    m.p50_ms = p50;
    m.p99_ms = p99;
    Ok(m)
}

/// Parses h2load's summary: duration, succeeded and failed requests, total traffic.
pub fn parse_h2load(stdout: &str) -> anyhow::Result<Measurement> {
    let protocol = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Application protocol:"))
        .map(str::trim);
    if protocol != Some("h2") {
        bail!("h2load did not negotiate h2 (Application protocol: {protocol:?})");
    }
    let finished = stdout
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .context("no 'finished in' line in h2load's output")?;
    let seconds = parse_h2load_duration(finished.split(',').next().unwrap_or(""))?;
    let requests_line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .context("no 'requests:' line in h2load's output")?;
    let count = |what: &str| -> anyhow::Result<u64> {
        requests_line
            .split(',')
            .map(str::trim)
            .find_map(|part| part.strip_suffix(what))
            .with_context(|| format!("no '{what}' in {requests_line:?}"))?
            .trim()
            .parse()
            .with_context(|| format!("'{what}' in {requests_line:?}"))
    };
    let statuses = stdout
        .lines()
        .find_map(|l| l.strip_prefix("status codes: "))
        .context("no 'status codes:' line in h2load's output")?;
    let status_count = |class: &str| -> u64 {
        statuses
            .split(',')
            .map(str::trim)
            .find_map(|p| p.strip_suffix(class))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let traffic = stdout
        .lines()
        .find_map(|l| l.strip_prefix("traffic: "))
        .context("no 'traffic:' line in h2load's output")?;
    let bytes = traffic
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .context("no byte count in h2load's traffic line")?
        .0
        .parse::<u64>()
        .context("h2load's traffic byte count")?;
    Ok(Measurement {
        requests: count("succeeded")?,
        bytes,
        seconds,
        p50_ms: None,
        p99_ms: None,
        errors: count("failed")?
            + count("errored")?
            + count("timeout")?
            + status_count("4xx")
            + status_count("5xx"),
        server_cpu_seconds: None,
        unattributed_cpu: None,
        runs_requests_per_second: Vec::new(),
    })
}

/// The TLS version and cipher suite h2load reports, e.g. "TLSv1.3 TLS_AES_128_GCM_SHA256".
pub fn h2load_tls(stdout: &str) -> Option<String> {
    let field = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
    };
    Some(format!("{} {}", field("TLS Protocol:")?, field("Cipher:")?))
}

/// "10.00s", "850.12ms", "12us", "1m02s": h2load's duration formats.
fn parse_h2load_duration(text: &str) -> anyhow::Result<f64> {
    let t = text.trim();
    let number = |s: &str| -> anyhow::Result<f64> {
        s.parse::<f64>()
            .with_context(|| format!("h2load duration {t:?}"))
    };
    if let Some(v) = t.strip_suffix("ms") {
        return Ok(number(v)? / 1e3);
    }
    if let Some(v) = t.strip_suffix("us") {
        return Ok(number(v)? / 1e6);
    }
    if let Some((m, s)) = t.split_once('m') {
        return Ok(number(m)? * 60.0 + number(s.trim_end_matches('s'))?);
    }
    if let Some(v) = t.strip_suffix('s') {
        return number(v);
    }
    bail!("unrecognized h2load duration {t:?}")
}

/// The median and 99th percentile of h2load's per-request log (tab-separated: start time,
/// status, microseconds to the end of the response), in milliseconds.
pub fn h2load_percentiles(request_log: &Path) -> anyhow::Result<(Option<f64>, Option<f64>)> {
    let text = std::fs::read_to_string(request_log)
        .with_context(|| format!("reading {}", request_log.display()))?;
    let mut micros: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    micros.sort_unstable();
    Ok((
        percentile(&micros, 50.0).map(|us| us as f64 / 1e3),
        percentile(&micros, 99.0).map(|us| us as f64 / 1e3),
    ))
}

/// The `p`th percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Writes one URI per line for h2load's `--input-file`.
pub fn write_uri_file(path: &Path, base_url: &str, paths: &[String]) -> anyhow::Result<PathBuf> {
    let text: String = paths.iter().map(|p| format!("{base_url}{p}\n")).collect();
    std::fs::write(path, text)?;
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_wrk_summary_line() {
        let out = "Running 10s test @ http://127.0.0.1:28080\n  2 threads and 64 connections\n\
                   BENCH requests=1234 bytes=5678900 duration_us=10000500 p50_us=850 p99_us=4200 connect=0 read=1 write=0 status=2 timeout=0\n";
        let m = parse_wrk(out).expect("parse");
        assert_eq!(m.requests, 1234);
        assert_eq!(m.bytes, 5_678_900);
        assert!((m.seconds - 10.0005).abs() < 1e-9);
        assert_eq!(m.p50_ms, Some(0.85));
        assert_eq!(m.p99_ms, Some(4.2));
        assert_eq!(m.errors, 3);
        assert!(parse_wrk("Running 10s test\n").is_err());
    }

    #[test]
    fn parses_the_h2load_summary() {
        let out = "starting benchmark...\nspawning thread #0: 8 total client(s). Timing-based test with 0s of warm-up time and 10s of main duration for measurements.\n\
Application protocol: h2\n\
\n\
finished in 10.00s, 41234.50 req/s, 1.23GB/s\n\
requests: 412345 total, 412400 started, 412345 done, 412340 succeeded, 5 failed, 0 errored, 0 timeout\n\
status codes: 412340 2xx, 0 3xx, 5 4xx, 0 5xx\n\
traffic: 12.34GB (13254678901) total, 1.23MB (1234567) headers (space savings 95.00%), 12.30GB (13234567890) data\n";
        let m = parse_h2load(out).expect("parse");
        assert_eq!(m.requests, 412_340);
        assert_eq!(m.bytes, 13_254_678_901);
        assert!((m.seconds - 10.0).abs() < 1e-9);
        assert_eq!(m.errors, 10);
        assert!(parse_h2load(&out.replace("h2\n", "http/1.1\n")).is_err());
        let tls =
            "TLS Protocol: TLSv1.3\nCipher: TLS_AES_128_GCM_SHA256\nApplication protocol: h2\n";
        assert_eq!(
            h2load_tls(tls).as_deref(),
            Some("TLSv1.3 TLS_AES_128_GCM_SHA256")
        );
        assert_eq!(h2load_tls(out), None);
    }

    #[test]
    fn h2load_durations() {
        assert_eq!(parse_h2load_duration("10.00s").ok(), Some(10.0));
        assert_eq!(parse_h2load_duration("850ms").ok(), Some(0.85));
        assert_eq!(parse_h2load_duration("1m02s").ok(), Some(62.0));
        assert!(parse_h2load_duration("soon").is_err());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn the_wrk_script_lists_every_path() {
        let s = wrk_script(&["/a.m3u8".to_owned(), "/b \"x\".m4s".to_owned()]);
        assert!(s.contains("\"/a.m3u8\","));
        assert!(s.contains("\"/b \\\"x\\\".m4s\","));
        assert!(s.contains("function done("));
    }
}
