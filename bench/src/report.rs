//! The markdown report: one line per figure with the edge's value, nginx's value and their
//! ratio, and the section of BENCHMARKS.md that holds it.

use std::fmt::Write as _;
use std::path::Path;

use crate::load::Measurement;
use crate::procfs::{Machine, Rss};

/// Above this share of unattributed CPU time a figure gets a note.
const DISTURBED_NOTE: f64 = 0.06;

/// A measured row, or why it could not be measured.
pub type Outcome = Result<Measurement, String>;

/// One test on one content set, run against both servers (or the edge alone).
#[derive(Debug)]
pub struct Row {
    /// The protocol and tool, e.g. "HTTP/1.1 TLS (wrk)".
    pub test: String,
    /// What was fetched, e.g. "2 MB segments".
    pub content: String,
    pub edge: Outcome,
    /// `None` when nginx cannot take part (HTTP/3).
    pub nginx: Option<Outcome>,
    /// Whether the target (edge at least 1.0x nginx in requests/s) applies.
    pub target: bool,
    /// Which figures to show.
    pub figures: &'static [Figure],
}

/// The figures a row can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    RequestsPerSecond,
    MegabytesPerSecond,
    P50,
    P99,
    CpuPerGb,
}

impl Figure {
    fn label(self) -> &'static str {
        match self {
            Figure::RequestsPerSecond => "requests/s (± half the range over the runs)",
            Figure::MegabytesPerSecond => "MB/s",
            Figure::P50 => "p50 latency ms (lower is better)",
            Figure::P99 => "p99 latency ms (lower is better)",
            Figure::CpuPerGb => "server CPU s per GB (lower is better)",
        }
    }

    fn value(self, m: &Measurement) -> Option<f64> {
        match self {
            Figure::RequestsPerSecond => Some(m.requests_per_second()),
            Figure::MegabytesPerSecond => Some(m.bytes_per_second() / 1e6),
            Figure::P50 => m.p50_ms,
            Figure::P99 => m.p99_ms,
            Figure::CpuPerGb => m.cpu_seconds_per_gb(),
        }
    }

    fn format(self, v: f64) -> String {
        match self {
            Figure::RequestsPerSecond | Figure::MegabytesPerSecond => group_thousands(v),
            Figure::P50 | Figure::P99 => format!("{v:.2}"),
            Figure::CpuPerGb => format!("{v:.3}"),
        }
    }
}

pub const THROUGHPUT: &[Figure] = &[
    Figure::RequestsPerSecond,
    Figure::MegabytesPerSecond,
    Figure::P50,
    Figure::P99,
    Figure::CpuPerGb,
];
pub const PINNED: &[Figure] = &[
    Figure::RequestsPerSecond,
    Figure::P50,
    Figure::P99,
    Figure::CpuPerGb,
];

/// Memory with idle keep-alive connections open.
#[derive(Debug, Clone, Copy)]
pub struct IdleMemory {
    pub connections: usize,
    pub before: Rss,
    pub after: Rss,
}

/// Idle connections of one protocol, on the edge and (where it speaks the protocol) nginx.
#[derive(Debug)]
pub struct IdleRow {
    /// "plain HTTP/1.1", "HTTP/2 over TLS", "HTTP/3".
    pub protocol: &'static str,
    pub edge: Result<IdleMemory, String>,
    pub nginx: Option<Result<IdleMemory, String>>,
}

/// A figure computed from [`IdleMemory`].
type IdleFigure = fn(&IdleMemory) -> f64;

/// Where, when, how and with which programs a report's figures were made.
#[derive(Debug)]
pub struct RunInfo {
    pub machine: Machine,
    pub date: String,
    pub command: String,
    /// Each program with its version.
    pub versions: Vec<(String, String)>,
}

impl RunInfo {
    /// This machine, now.
    pub fn new(command: String, versions: Vec<(String, String)>) -> Self {
        Self {
            machine: crate::procfs::machine(),
            date: utc_now(),
            command,
            versions,
        }
    }

    /// The report's "Machine" and "Software" lines.
    pub fn write_machine_and_software(&self, s: &mut String) {
        let software: Vec<String> = self
            .versions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        write_machine_and_software(s, &self.machine, &software);
    }
}

/// The "Machine" and "Software" lines of a report's header.
pub fn write_machine_and_software(s: &mut String, m: &Machine, software: &[String]) {
    let _ = writeln!(
        s,
        "- Machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}",
        m.cpus, m.cpu_model, m.memory_gib, m.kernel
    );
    let _ = writeln!(s, "- Software: {}", software.join("; "));
}

/// Everything one run produced.
#[derive(Debug)]
pub struct Report {
    pub run: RunInfo,
    pub rows: Vec<Row>,
    pub idle: Vec<IdleRow>,
    pub notes: Vec<String>,
}

/// 1234567.8 -> "1,234,568"; values under 100 keep one decimal.
fn group_thousands(v: f64) -> String {
    if v.abs() < 100.0 {
        return format!("{v:.1}");
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn cell(o: Option<&Outcome>, f: Figure) -> (String, Option<f64>) {
    match o {
        None => ("n/a".to_owned(), None),
        Some(Err(_)) => ("failed".to_owned(), None),
        Some(Ok(m)) => match f.value(m) {
            Some(v) => {
                let mut text = f.format(v);
                if let (Figure::RequestsPerSecond, Some(spread)) = (f, m.spread()) {
                    let _ = write!(text, " ±{:.0}%", spread * 100.0);
                }
                (text, Some(v))
            }
            None => ("-".to_owned(), None),
        },
    }
}

impl Report {
    /// Rows where the target applies, with whether it is met (`None`: not measured).
    pub fn target_results(&self) -> Vec<(String, Option<bool>, Option<f64>)> {
        self.rows
            .iter()
            .filter(|r| r.target)
            .map(|r| {
                let e = r.edge.as_ref().ok().map(|m| m.requests_per_second());
                let n = match &r.nginx {
                    Some(Ok(m)) => Some(m.requests_per_second()),
                    _ => None,
                };
                let ratio = e.zip(n).map(|(e, n)| e / n);
                (
                    format!("{}, {}", r.test, r.content),
                    ratio.map(|x| x >= 1.0),
                    ratio,
                )
            })
            .collect()
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "### Estuary edge vs nginx: hot hits\n");
        let _ = writeln!(s, "- Date: {}", self.run.date);
        self.run.write_machine_and_software(&mut s);
        let _ = writeln!(s, "- Command: `{}`\n", self.run.command);

        let targets = self.target_results();
        if targets.is_empty() {
            let _ = writeln!(
                s,
                "**Target** (edge at least 1.0x nginx requests/s on every TLS row and on pinned playlists): not measured in this run.\n"
            );
        }
        let met = targets.iter().filter(|t| t.1 == Some(true)).count();
        let _ = writeln!(
            s,
            "**Target** (edge at least 1.0x nginx requests/s on every TLS row and on pinned playlists): \
             met on {met} of {} rows{}.\n",
            targets.len(),
            if met == targets.len() {
                ""
            } else {
                "; NOT met overall"
            }
        );
        for (name, ok, ratio) in &targets {
            let verdict = match ok {
                Some(true) => "met",
                Some(false) => "missed",
                None => "not measured",
            };
            let ratio = ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
            let _ = writeln!(s, "- {name}: {ratio} ({verdict})");
        }
        s.push('\n');

        let _ = writeln!(
            s,
            "| Test | Content | Figure | Estuary edge | nginx | edge/nginx |"
        );
        let _ = writeln!(s, "|---|---|---|---:|---:|---:|");
        for row in &self.rows {
            for f in row.figures {
                let (e, ev) = cell(Some(&row.edge), *f);
                let (n, nv) = cell(row.nginx.as_ref(), *f);
                let ratio = match (ev, nv) {
                    (Some(e), Some(n)) if n > 0.0 => format!("{:.2}x", e / n),
                    _ => "-".to_owned(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {e} | {n} | {ratio} |",
                    row.test,
                    row.content,
                    f.label()
                );
            }
        }
        const MIB: f64 = 1024.0 * 1024.0;
        let figures: [(&str, IdleFigure); 4] = [
            ("VmRSS before, MiB", |i| i.before.total as f64 / MIB),
            ("VmRSS with the connections open, MiB", |i| {
                i.after.total as f64 / MIB
            }),
            ("RssAnon with the connections open, MiB", |i| {
                i.after.anon as f64 / MIB
            }),
            ("VmRSS added per connection, KiB", |i| {
                (i.after.total as f64 - i.before.total as f64)
                    / i.connections.max(1) as f64
                    / 1024.0
            }),
        ];
        for idle in &self.idle {
            let (e, n) = (&idle.edge, idle.nginx.as_ref());
            let count = e
                .as_ref()
                .ok()
                .or(n.and_then(|n| n.as_ref().ok()))
                .map_or(0, |i| i.connections);
            for (label, get) in figures {
                let value = |r: &Result<IdleMemory, String>| r.as_ref().ok().map(get);
                let (ev, nv) = (value(e), n.and_then(value));
                let show =
                    |v: Option<f64>| v.map_or_else(|| "failed".to_owned(), |v| format!("{v:.1}"));
                let ratio = match (ev, nv) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                    _ => "-".to_owned(),
                };
                let nginx = if n.is_some() {
                    show(nv)
                } else {
                    "-".to_owned()
                };
                let _ = writeln!(
                    s,
                    "| {count} idle keep-alive connections ({}) | memory | {label} (lower is better) | {} | {nginx} | {ratio} |",
                    idle.protocol,
                    show(ev),
                );
            }
        }
        s.push('\n');
        for row in &self.rows {
            for (who, o) in [("edge", Some(&row.edge)), ("nginx", row.nginx.as_ref())] {
                match o {
                    Some(Err(e)) => {
                        let _ = writeln!(s, "- {}, {} ({who}) failed: {e}", row.test, row.content);
                    }
                    Some(Ok(m)) => {
                        if m.errors > 0 {
                            let _ = writeln!(
                                s,
                                "- {}, {} ({who}): {} failed requests (not counted above)",
                                row.test, row.content, m.errors
                            );
                        }
                        if let Some(other) = m.unattributed_cpu.filter(|o| *o > DISTURBED_NOTE) {
                            let _ = writeln!(
                                s,
                                "- {}, {} ({who}): {:.0}% of the machine's CPU time went to neither the server nor the load tool during the run (other programs or unattributed kernel work): treat this figure with care",
                                row.test,
                                row.content,
                                other * 100.0
                            );
                        }
                    }
                    None => {}
                }
            }
        }
        let idle_runs = self.idle.iter().flat_map(|r| {
            [("edge", Some(&r.edge)), ("nginx", r.nginx.as_ref())]
                .into_iter()
                .filter_map(move |(who, m)| m.map(|m| (who, r.protocol, m)))
        });
        for (who, protocol, idle) in idle_runs {
            if let Err(e) = idle {
                let _ = writeln!(s, "- Idle connections, {protocol} ({who}) failed: {e}");
            }
            if let Ok(i) = idle {
                let _ = writeln!(
                    s,
                    "- Idle connections, {protocol} ({who}): VmRSS {} -> {} MiB (RssAnon {} -> {}, RssFile {} -> {}).",
                    mib(i.before.total),
                    mib(i.after.total),
                    mib(i.before.anon),
                    mib(i.after.anon),
                    mib(i.before.file),
                    mib(i.after.file)
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(s, "- {note}");
        }
        s
    }
}

/// The markers of the `edge-vs-nginx` section in the markdown file.
pub const BEGIN: &str =
    "<!-- estuary-bench edge-vs-nginx: begin (generated; the bench replaces this part) -->";
pub const END: &str = "<!-- estuary-bench edge-vs-nginx: end -->";

/// Puts `section` between the markers `begin` and `end` in the markdown file at `path`,
/// keeping what is written around them; appends the block (or creates the file) if the
/// markers are not there yet.
pub fn write_between_markers(
    path: &Path,
    begin: &str,
    end: &str,
    section: &str,
) -> anyhow::Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n\n".to_owned(),
        Err(e) => return Err(e.into()),
    };
    let block = format!("{begin}\n{}\n{end}", section.trim_end());
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{block}{}", &old[..b], &old[e + end.len()..])
        }
        _ => format!("{}\n{block}\n", old.trim_end()),
    };
    std::fs::write(path, new)?;
    Ok(())
}

/// The current time in UTC as "YYYY-MM-DD HH:MM UTC".
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// The civil date (year, month 1-12, day 1-31) of a day counted from 1970-01-01 (Howard
/// Hinnant's algorithm).
pub fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(1_234_567.8), "1,234,568");
        assert_eq!(group_thousands(999.0), "999");
        assert_eq!(group_thousands(12.34), "12.3");
    }

    #[test]
    fn replaces_only_its_own_section() {
        let dir = std::env::temp_dir().join(format!("estuary-bench-md-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("B.md");
        let _ = std::fs::remove_file(&p);
        write_between_markers(&p, BEGIN, END, "first").expect("write");
        let text = std::fs::read_to_string(&p).expect("read");
        assert!(text.starts_with("# Benchmarks\n") && text.contains("\nfirst\n"));
        std::fs::write(&p, format!("intro\n{text}\nnotes by hand\n")).expect("write");
        write_between_markers(&p, BEGIN, END, "second").expect("write");
        let text = std::fs::read_to_string(&p).expect("read");
        assert!(text.contains("intro\n") && text.contains("notes by hand\n"));
        assert!(text.contains("\nsecond\n") && !text.contains("first"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn utc_dates_have_the_right_shape() {
        let d = utc_now();
        assert_eq!(d.len(), "2025-01-01 00:00 UTC".len());
        assert!(d.starts_with("20"));
    }
}
