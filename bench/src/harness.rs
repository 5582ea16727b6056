//! What every bench subcommand shares: how it reads its common arguments (duration,
//! repetitions, the estuary binary, the work folder), the notes it gathers for its report,
//! measured runs that are repeated while other programs disturb them, and how the report is
//! printed and written into its markdown file.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::procfs;

/// The options every peer bench shares: where its report goes and which estuary binary it
/// runs.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Put the report into this markdown file (between the subcommand's markers).
    #[arg(long)]
    pub write_md: Option<PathBuf>,
    /// The estuary binary (default: `estuary` next to this program).
    #[arg(long)]
    pub estuary: Option<PathBuf>,
}

/// The command line as the report shows it: the release binary with this run's arguments.
pub fn command_line() -> String {
    std::iter::once("target/release/estuary-bench".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How long each measured run lasts: `--duration`, or 3 s with `--quick`; at least 1 s.
pub fn run_duration(quick: bool, duration: Duration) -> anyhow::Result<Duration> {
    let duration = if quick {
        Duration::from_secs(3)
    } else {
        duration
    };
    if duration < Duration::from_secs(1) {
        bail!("--duration must be at least 1s");
    }
    Ok(duration)
}

/// Runs per figure: `--repeat`, or 3 (1 with `--quick`); at least one.
pub fn repetitions(repeat: Option<usize>, quick: bool) -> usize {
    repeat.unwrap_or(if quick { 1 } else { 3 }).max(1)
}

/// `--estuary`, or `estuary` next to this program (which may not exist).
pub fn estuary_binary(arg: Option<&Path>) -> anyhow::Result<PathBuf> {
    Ok(match arg {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no parent folder")?
            .join("estuary"),
    })
}

/// [`estuary_binary`], which must exist.
pub fn existing_estuary_binary(arg: Option<&Path>) -> anyhow::Result<PathBuf> {
    let estuary = estuary_binary(arg)?;
    if !estuary.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release` or pass --estuary",
            estuary.display()
        );
    }
    Ok(estuary)
}

/// Creates the work folder `out` and returns its canonical path.
pub fn work_folder(out: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    Ok(std::fs::canonicalize(out)?)
}

/// The commit the bench runs from, as `git describe` says it, or "unknown".
pub fn git_describe() -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// What a program writes to stdout and then stderr when run with `args`; `None` when it
/// cannot be run.
pub fn program_output(program: &Path, args: &[&str]) -> Option<String> {
    Command::new(program).args(args).output().ok().map(|o| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// The indices `0..n` in the order of turn `turn`: reversed on every other turn, so that no
/// server always goes first.
pub fn alternating_order(n: usize, turn: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if turn % 2 == 1 {
        order.reverse();
    }
    order
}

/// Prints the report and, with `--write-md`, puts it between `begin` and `end` in that file.
pub fn publish_report(
    write_md: Option<&Path>,
    begin: &str,
    end: &str,
    markdown: &str,
) -> anyhow::Result<()> {
    println!("{markdown}");
    if let Some(path) = write_md {
        crate::report::write_between_markers(path, begin, end, markdown)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("Wrote the report into {}.", path.display());
    }
    Ok(())
}

/// Notes for the report, gathered along the way; each is kept once, however often it is made.
#[derive(Debug, Default)]
pub struct Notes(RefCell<Vec<String>>);

impl Notes {
    pub fn add(&self, note: String) {
        let mut notes = self.0.borrow_mut();
        if !notes.contains(&note) {
            notes.push(note);
        }
    }

    /// The notes so far, taken out.
    pub fn take(&self) -> Vec<String> {
        self.0.take()
    }

    /// Appends the notes as a markdown list under "Notes:", if there are any.
    pub fn write_markdown(&self, s: &mut String) {
        let notes = self.0.borrow();
        if !notes.is_empty() {
            let _ = writeln!(s, "Notes:\n");
            for n in notes.iter() {
                let _ = writeln!(s, "- {n}");
            }
        }
    }

    /// Notes how busy the machine was (all CPUs) in the second before the bench started, and
    /// returns that share in percent.
    pub fn background_load(&self) -> anyhow::Result<f64> {
        let (b0, t0) = procfs::machine_jiffies()?;
        std::thread::sleep(Duration::from_secs(1));
        let (b1, t1) = procfs::machine_jiffies()?;
        let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64 * 100.0;
        self.add(format!(
            "The machine was {busy:.0}% busy (all CPUs) in the second before the bench started."
        ));
        Ok(busy)
    }
}

/// When a measured run counts as undisturbed, and how often a disturbed one is run again.
#[derive(Debug, Clone, Copy)]
pub struct Quiet {
    /// Before each run, wait at most this long for the machine to be idle.
    pub wait: Duration,
    /// The discarded run before the measured one.
    pub warmup: Duration,
    /// Run again at most this many times while more than [`crate::DISTURBED_SHARE`] of the
    /// CPU went to neither the server nor the bench.
    pub max_retries: usize,
}

/// One measured run of `duration` with its figures.
#[derive(Debug)]
pub struct CpuMeasured<T> {
    pub value: T,
    /// CPU time of the server's processes during the run.
    pub server_cpu_seconds: f64,
    /// The share of the machine's CPU that went to neither the server nor the bench (and its
    /// reaped children, the load tools).
    pub unattributed_cpu: f64,
}

/// Runs `load` for `duration` once, reading the server's CPU time (`server_ticks`) and the
/// machine's around it.
pub fn measured_run<T>(
    duration: Duration,
    server_ticks: impl Fn() -> u64,
    load: impl FnOnce(Duration) -> anyhow::Result<T>,
) -> anyhow::Result<CpuMeasured<T>> {
    let ticks_per_second = procfs::clock_ticks_per_second();
    let (busy0, total0) = procfs::machine_jiffies()?;
    let server0 = server_ticks();
    let own0 = procfs::own_and_reaped_children_ticks()?;
    let value = load(duration)?;
    let server1 = server_ticks();
    let own1 = procfs::own_and_reaped_children_ticks()?;
    let (busy1, total1) = procfs::machine_jiffies()?;
    let server = server1.saturating_sub(server0);
    let ours = server + own1.saturating_sub(own0);
    let other = (busy1 - busy0).saturating_sub(ours);
    Ok(CpuMeasured {
        value,
        server_cpu_seconds: server as f64 / ticks_per_second,
        unattributed_cpu: other as f64 / (total1 - total0).max(1) as f64,
    })
}

/// Waits for a quiet machine, runs `load` once for the warm-up (discarded), then a
/// [`measured_run`]; repeats both while other programs took a noticeable share of the CPU.
pub fn measure_undisturbed<T>(
    quiet: Quiet,
    duration: Duration,
    server_ticks: impl Fn() -> u64,
    load: impl Fn(Duration) -> anyhow::Result<T>,
) -> anyhow::Result<CpuMeasured<T>> {
    let mut retries = 0;
    loop {
        crate::wait_for_quiet_machine_within(quiet.wait);
        load(quiet.warmup)?;
        let m = measured_run(duration, &server_ticks, &load)?;
        if m.unattributed_cpu > crate::DISTURBED_SHARE && retries < quiet.max_retries {
            retries += 1;
            eprintln!(
                "    {:.0}% of the CPU went elsewhere during that run; running it again",
                m.unattributed_cpu * 100.0
            );
            continue;
        }
        return Ok(m);
    }
}

impl CpuMeasured<crate::load::Measurement> {
    /// The load tool's measurement with the CPU figures filled in, after printing its
    /// summary line.
    pub fn into_measurement(self) -> crate::load::Measurement {
        let mut m = self.value;
        m.server_cpu_seconds = Some(self.server_cpu_seconds);
        m.unattributed_cpu = Some(self.unattributed_cpu);
        eprintln!(
            "    {:.0} req/s, {:.1} MB/s, server CPU {:.2} s, unattributed CPU {:.0}%",
            m.requests_per_second(),
            m.bytes_per_second() / 1e6,
            self.server_cpu_seconds,
            self.unattributed_cpu * 100.0
        );
        m
    }
}
