//! `estuary-bench package-vs-ffmpeg`: `estuary package` against the ffmpeg CLI on the same
//! source, ladder and x264 settings, in one run (speed, CPU, quality per rendition, bitrate),
//! and the TUS upload throughput of `estuary origin` on loopback with its ceilings.

mod ladder;
mod quality;
mod report;
mod upload;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;

use crate::procfs;
use ladder::{Job, LADDER};

#[derive(clap::Args, Debug)]
pub struct PackageVsFfmpegArgs {
    /// Short runs for a quick look: a 10 s source, one run each, a 256 MiB upload.
    #[arg(long)]
    pub quick: bool,
    /// Length of the generated 1080p30 source, in seconds (default 60, or 10 with --quick).
    #[arg(long)]
    pub seconds: Option<u32>,
    /// Runs of each packager (the median is kept); default 3, or 1 with --quick.
    #[arg(long)]
    pub repeat: Option<usize>,
    /// The x264 preset both packagers use.
    #[arg(long, default_value = "veryfast")]
    pub preset: String,
    /// Segment length in seconds, both packagers.
    #[arg(long, default_value_t = 4)]
    pub segment_seconds: u32,
    /// Size of the uploaded file in MiB (default 1024, or 256 with --quick).
    #[arg(long)]
    pub upload_mib: Option<u64>,
    /// Port of the `estuary origin` that receives the uploads.
    #[arg(long, default_value_t = 19400)]
    pub origin_port: u16,
    /// Work folder for the source, the outputs and the logs.
    #[arg(long, default_value = "bench-out-package")]
    pub out: PathBuf,
    /// Put the report into this markdown file (between the bench's markers).
    #[arg(long)]
    pub write_md: Option<PathBuf>,
    /// The estuary binary (default: `estuary` next to this program).
    #[arg(long)]
    pub estuary: Option<PathBuf>,
    /// Run only these parts (default: both).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Part>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// `estuary package` against the ffmpeg CLI.
    Package,
    /// TUS uploads to `estuary origin`.
    Upload,
}

/// Which packager a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packager {
    Estuary,
    Ffmpeg,
}

impl Packager {
    pub fn label(self) -> &'static str {
        match self {
            Packager::Estuary => "estuary package",
            Packager::Ffmpeg => "ffmpeg CLI (hls muxer)",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Packager::Estuary => "estuary",
            Packager::Ffmpeg => "ffmpeg",
        }
    }
}

/// One timed run of a program.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    pub wall: f64,
    /// User + system CPU seconds of the child (from the kernel's account of reaped children).
    pub cpu: f64,
    /// Share of the machine's CPU time that went to other programs during the run.
    pub other: f64,
}

/// Runs `cmd` to completion with its output in `log`, timing it.
fn run_timed(cmd: &mut Command, log: &Path) -> anyhow::Result<Timed> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let hz = procfs::clock_ticks_per_second();
    let (busy0, total0) = procfs::machine_jiffies()?;
    let children0 = procfs::reaped_children_ticks()?;
    let start = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    let wall = start.elapsed().as_secs_f64();
    let children1 = procfs::reaped_children_ticks()?;
    let (busy1, total1) = procfs::machine_jiffies()?;
    if !status.success() {
        let tail = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(5).collect();
        bail!(
            "{:?} failed ({status}): {}",
            cmd.get_program(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    let ticks = children1.saturating_sub(children0);
    Ok(Timed {
        wall,
        cpu: ticks as f64 / hz,
        other: (busy1 - busy0).saturating_sub(ticks) as f64 / (total1 - total0).max(1) as f64,
    })
}

/// Waits while another `estuary-bench` (another worktree's benchmark) runs: two benchmarks
/// at once on two cores measure nothing.
fn wait_for_other_benches() {
    let me = std::process::id();
    let others = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|pid| *pid != me)
                    .filter(|pid| {
                        std::fs::read_to_string(format!("/proc/{pid}/comm"))
                            .is_ok_and(|c| c.trim() == "estuary-bench")
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut warned = false;
    let deadline = Instant::now() + Duration::from_secs(3 * 3600);
    while Instant::now() < deadline {
        let pids = others();
        if pids.is_empty() {
            return;
        }
        if !warned {
            eprintln!("    another estuary-bench is running (pid {pids:?}); waiting for it to end");
            warned = true;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// Before a measured run: no other bench, and a quiet machine.
fn guard() {
    wait_for_other_benches();
    crate::wait_for_quiet_machine();
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The generated source and how it was made.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: PathBuf,
    pub command: String,
    pub seconds: u32,
    pub bytes: u64,
}

const SOURCE_FPS: u32 = 30;

/// Concurrent uploads (and concurrent `dd` writers) of the aggregate rows.
pub const UPLOAD_CONCURRENCY: usize = 4;

fn source_args(seconds: u32, out: &Path) -> Vec<String> {
    let mut a: Vec<String> = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
    ]
    .map(str::to_owned)
    .to_vec();
    a.push(format!(
        "testsrc2=size=1920x1080:rate={SOURCE_FPS}:duration={seconds}"
    ));
    a.extend(["-f", "lavfi", "-i"].map(str::to_owned));
    a.push(format!(
        "sine=frequency=440:beep_factor=4:sample_rate=48000:duration={seconds}"
    ));
    a.extend(
        [
            "-vf",
            "noise=alls=4:allf=t",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-crf",
            "18",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "192k",
            "-ac",
            "2",
            "-movflags",
            "+faststart",
        ]
        .map(str::to_owned),
    );
    a.push(out.display().to_string());
    a
}

/// Generates the source once (kept in the work folder for later runs with the same command).
fn make_source(work: &Path, seconds: u32) -> anyhow::Result<Source> {
    let file = work.join(format!("source-{seconds}s.mp4"));
    let tmp = work.join(format!("source-{seconds}s.tmp.mp4"));
    let args = source_args(seconds, &tmp);
    let command = ladder::shell_line("ffmpeg", &source_args(seconds, &file));
    let stamp = work.join(format!("source-{seconds}s.cmd"));
    let fresh = std::fs::read_to_string(&stamp).is_ok_and(|c| c == command) && file.is_file();
    if !fresh {
        eprintln!("Generating the {seconds} s 1080p source ...");
        let out = Command::new("ffmpeg")
            .args(&args)
            .output()
            .context("running ffmpeg")?;
        if !out.status.success() {
            bail!(
                "generating the source failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        std::fs::rename(&tmp, &file)?;
        std::fs::write(&stamp, &command)?;
    }
    Ok(Source {
        bytes: std::fs::metadata(&file)?.len(),
        file,
        command,
        seconds,
    })
}

/// Quality and size of one rendition of one packager.
#[derive(Debug, Clone)]
pub struct RenditionResult {
    pub kbps: f64,
    pub n_segments: usize,
    pub quality: Option<quality::Quality>,
}

/// Everything the packaging part measured.
#[derive(Debug)]
pub struct PackageResults {
    pub source: Source,
    pub estuary_command: String,
    pub ffmpeg_command: String,
    pub quality_command: String,
    pub runs: Vec<(Packager, Vec<Timed>)>,
    /// Per packager, one entry per rung of LADDER, then the audio rendition.
    pub renditions: Vec<(Packager, Vec<RenditionResult>, Option<RenditionResult>)>,
    pub output_bytes: Vec<(Packager, u64)>,
    pub notes: Vec<String>,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}

fn package_part(
    args: &PackageVsFfmpegArgs,
    work: &Path,
    estuary: &Path,
    seconds: u32,
    repeat: usize,
) -> anyhow::Result<PackageResults> {
    let source = make_source(work, seconds)?;
    let job = Job {
        fps: SOURCE_FPS,
        segment_seconds: args.segment_seconds,
        preset: args.preset.clone(),
    };
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let out_dir = |p: Packager| work.join(format!("out-{}", p.slug()));
    let estuary_args = job.estuary_args(&source.file, &out_dir(Packager::Estuary));
    let ffmpeg_args = job.ffmpeg_hls_args(&source.file, &out_dir(Packager::Ffmpeg));
    let mut runs = vec![
        (Packager::Estuary, Vec::new()),
        (Packager::Ffmpeg, Vec::new()),
    ];
    for rep in 0..repeat {
        let mut order = [0usize, 1];
        if rep % 2 == 1 {
            order.reverse();
        }
        for k in order {
            let who = runs[k].0;
            let dir = out_dir(who);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            guard();
            eprintln!("  {} (run {} of {repeat}) ...", who.label(), rep + 1);
            let log = logs.join(format!("{}-{}.log", who.slug(), rep + 1));
            let t = match who {
                Packager::Estuary => run_timed(Command::new(estuary).args(&estuary_args), &log)?,
                Packager::Ffmpeg => {
                    std::fs::create_dir_all(&dir)?;
                    run_timed(Command::new("ffmpeg").args(&ffmpeg_args), &log)?
                }
            };
            eprintln!(
                "    {:.1} s wall, {:.1} s CPU, {:.0}% of the machine to other programs",
                t.wall,
                t.cpu,
                t.other * 100.0
            );
            runs[k].1.push(t);
        }
    }

    let mut notes = Vec::new();
    // The estuary ladder should be the one the ffmpeg command encodes.
    let master = std::fs::read_to_string(out_dir(Packager::Estuary).join("master.m3u8"))
        .context("reading estuary's master playlist")?;
    for r in LADDER {
        if !master.contains(&format!("RESOLUTION={}x{}", r.width, r.height)) {
            bail!(
                "estuary's ladder has no {}x{} rendition: the bench's ladder table is stale",
                r.width,
                r.height
            );
        }
    }

    eprintln!("Measuring quality (PSNR, SSIM) against the source ...");
    let qdir = work.join("quality");
    let _ = std::fs::remove_dir_all(&qdir);
    std::fs::create_dir_all(&qdir)?;
    let mut renditions = Vec::new();
    let mut output_bytes = Vec::new();
    let mut quality_command = String::new();
    for who in [Packager::Estuary, Packager::Ffmpeg] {
        let dir = out_dir(who);
        output_bytes.push((who, dir_bytes(&dir)));
        let mut joined = Vec::new();
        for r in LADDER {
            let j = quality::join_rendition(
                &dir.join(r.name).join("index.m3u8"),
                &qdir.join(format!("{}-{}.mp4", who.slug(), r.name)),
            )
            .with_context(|| format!("{} {}", who.label(), r.name))?;
            joined.push(j);
        }
        let audio = quality::join_rendition(
            &dir.join("audio").join("index.m3u8"),
            &qdir.join(format!("{}-audio.mp4", who.slug())),
        )
        .ok()
        .map(|a| RenditionResult {
            kbps: a.kbps(),
            n_segments: a.n_segments,
            quality: None,
        });
        let mut qargs: Vec<String> = ["-hide_banner", "-nostats", "-i"]
            .map(str::to_owned)
            .to_vec();
        qargs.push(source.file.display().to_string());
        for j in &joined {
            qargs.push("-i".to_owned());
            qargs.push(j.file.display().to_string());
        }
        qargs.push("-filter_complex".to_owned());
        qargs.push(quality::quality_graph(&LADDER, 1920, 1080));
        qargs.extend(["-f", "null", "-"].map(str::to_owned));
        if quality_command.is_empty() {
            quality_command = ladder::shell_line("ffmpeg", &qargs);
        }
        guard();
        let out = Command::new("ffmpeg")
            .args(&qargs)
            .output()
            .context("running ffmpeg for PSNR/SSIM")?;
        let log = String::from_utf8_lossy(&out.stderr);
        std::fs::write(logs.join(format!("quality-{}.log", who.slug())), &*log)?;
        let q = if out.status.success() {
            match quality::parse_quality(&log, LADDER.len()) {
                Ok(q) => q.into_iter().map(Some).collect(),
                Err(e) => {
                    notes.push(format!("Quality of {}: {e:#}.", who.label()));
                    vec![None; LADDER.len()]
                }
            }
        } else {
            notes.push(format!(
                "Quality of {}: ffmpeg failed ({}); see logs/quality-{}.log.",
                who.label(),
                out.status,
                who.slug()
            ));
            vec![None; LADDER.len()]
        };
        let per_rung = joined
            .iter()
            .zip(q)
            .map(|(j, q)| RenditionResult {
                kbps: j.kbps(),
                n_segments: j.n_segments,
                quality: q,
            })
            .collect();
        renditions.push((who, per_rung, audio));
    }
    let _ = std::fs::remove_dir_all(&qdir);

    Ok(PackageResults {
        source,
        estuary_command: ladder::shell_line("target/release/estuary", &estuary_args),
        ffmpeg_command: ladder::shell_line("ffmpeg", &ffmpeg_args),
        quality_command,
        runs,
        renditions,
        output_bytes,
        notes,
    })
}

/// One upload figure: seconds of each run, the bytes each run moved.
#[derive(Debug, Clone)]
pub struct UploadRow {
    pub label: String,
    pub bytes: u64,
    pub seconds: Vec<f64>,
    pub error: Option<String>,
}

impl UploadRow {
    pub fn mb_per_second(&self) -> Option<f64> {
        let s = median(self.seconds.clone());
        (s.is_finite() && s > 0.0).then(|| self.bytes as f64 / s / 1e6)
    }
}

#[derive(Debug)]
pub struct UploadResults {
    pub file_bytes: u64,
    pub rows: Vec<UploadRow>,
    pub tuspy_version: String,
}

fn upload_part(
    work: &Path,
    estuary: &Path,
    mib: u64,
    repeat: usize,
    port: u16,
) -> anyhow::Result<UploadResults> {
    let file = work.join(format!("upload-{mib}MiB.bin"));
    let len = mib << 20;
    eprintln!("Writing {mib} MiB of pseudo-random bytes to upload ...");
    upload::random_file(&file, len)?;
    let sink = upload::Sink::start()?;
    let origin = upload::Origin::start(estuary, work, port)?;
    let dd_dir = work.join("origin").join("dd");
    const CHUNK: u64 = 8 << 20;
    type Measure<'a> = Box<dyn Fn() -> anyhow::Result<f64> + 'a>;
    let tests: Vec<(String, u64, Measure<'_>)> = vec![
        (
            "TUS, curl, one PATCH of the whole file".to_owned(),
            len,
            Box::new(|| upload::curl_uploads(&origin, &file, 1)),
        ),
        (
            format!(
                "TUS, tuspy {}, 8 MiB chunks (one PATCH each)",
                tuspy_version()
            ),
            len,
            Box::new(|| upload::tuspy_upload(&origin, work, &file, CHUNK)),
        ),
        (
            format!(
                "TUS, {UPLOAD_CONCURRENCY} concurrent uploads (curl, one PATCH each), aggregate"
            ),
            len * UPLOAD_CONCURRENCY as u64,
            Box::new(|| upload::curl_uploads(&origin, &file, UPLOAD_CONCURRENCY)),
        ),
        (
            "Loopback: curl PATCH to a sink that discards the body (no disk)".to_owned(),
            len,
            Box::new(|| upload::curl_to_sink(&sink, &file)),
        ),
        (
            "Disk: dd bs=8M oflag=dsync (a sync every 8 MiB, like the origin)".to_owned(),
            len,
            Box::new(|| upload::dd_copy(&file, &dd_dir, true, 1)),
        ),
        (
            format!("Disk: {UPLOAD_CONCURRENCY} concurrent dd bs=8M oflag=dsync, aggregate"),
            len * UPLOAD_CONCURRENCY as u64,
            Box::new(|| upload::dd_copy(&file, &dd_dir, true, UPLOAD_CONCURRENCY)),
        ),
        (
            "Disk: dd bs=8M conv=fsync (one fsync at the end)".to_owned(),
            len,
            Box::new(|| upload::dd_copy(&file, &dd_dir, false, 1)),
        ),
    ];
    let mut rows: Vec<UploadRow> = tests
        .iter()
        .map(|(label, bytes, _)| UploadRow {
            label: label.clone(),
            bytes: *bytes,
            seconds: Vec::new(),
            error: None,
        })
        .collect();
    for rep in 0..repeat {
        for (row, (label, bytes, measure)) in rows.iter_mut().zip(&tests) {
            if row.error.is_some() {
                continue;
            }
            guard();
            eprintln!("  {label} (run {} of {repeat}) ...", rep + 1);
            match measure() {
                Ok(s) => {
                    eprintln!("    {:.0} MB/s", *bytes as f64 / s / 1e6);
                    row.seconds.push(s);
                }
                Err(e) => {
                    eprintln!("    failed: {e:#}");
                    row.error = Some(format!("{e:#}"));
                }
            }
        }
    }
    drop(tests);
    drop(origin);
    Ok(UploadResults {
        file_bytes: len,
        rows,
        tuspy_version: tuspy_version(),
    })
}

fn tuspy_version() -> String {
    Command::new("python3")
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('tuspy'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

pub fn run(args: PackageVsFfmpegArgs) -> anyhow::Result<()> {
    let command = crate::harness::command_line();
    let seconds = args.seconds.unwrap_or(if args.quick { 10 } else { 60 });
    let repeat = crate::harness::repetitions(args.repeat, args.quick);
    let mib = args
        .upload_mib
        .unwrap_or(if args.quick { 256 } else { 1024 });
    if seconds < args.segment_seconds.max(1) {
        bail!("--seconds must be at least one segment");
    }
    for (p, pkg) in [
        ("ffmpeg", "ffmpeg"),
        ("curl", "curl"),
        ("dd", "coreutils"),
        ("python3", "python3"),
    ] {
        crate::require(p, pkg)?;
    }
    let run_part = |p: Part| args.only.is_empty() || args.only.contains(&p);
    if run_part(Part::Upload) && tuspy_version() == "unknown" {
        bail!("the Python package tuspy is missing (pip install tuspy)");
    }
    let estuary = crate::harness::existing_estuary_binary(args.estuary.as_deref())?;
    let work = crate::harness::work_folder(&args.out)?;

    // Even generating the source would disturb another bench's figures.
    wait_for_other_benches();
    let started = Instant::now();
    let package = if run_part(Part::Package) {
        Some(package_part(&args, &work, &estuary, seconds, repeat)?)
    } else {
        None
    };
    let uploads = if run_part(Part::Upload) {
        Some(upload_part(&work, &estuary, mib, repeat, args.origin_port)?)
    } else {
        None
    };
    let git = crate::harness::git_describe();
    let r = report::Report {
        run: crate::report::RunInfo::new(
            command,
            vec![
                ("estuary".to_owned(), format!("commit {git}")),
                (
                    "ffmpeg".to_owned(),
                    first_line("ffmpeg", &["-version"])
                        .trim_start_matches("ffmpeg version ")
                        .split(' ')
                        .next()
                        .unwrap_or("unknown")
                        .to_owned(),
                ),
                (
                    "curl".to_owned(),
                    first_line("curl", &["--version"])
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("unknown")
                        .to_owned(),
                ),
            ],
        ),
        repeat,
        segment_seconds: args.segment_seconds,
        preset: args.preset.clone(),
        package,
        uploads,
        minutes: started.elapsed().as_secs_f64() / 60.0,
    };
    crate::harness::publish_report(
        args.write_md.as_deref(),
        report::BEGIN,
        report::END,
        &r.markdown(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5.0]), 5.0);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn the_source_command_is_1080p30_with_audio() {
        let a = source_args(60, Path::new("/w/s.mp4"));
        assert!(a.contains(&"testsrc2=size=1920x1080:rate=30:duration=60".to_owned()));
        assert!(a.iter().any(|x| x.starts_with("sine=")));
        assert_eq!(a.last().map(String::as_str), Some("/w/s.mp4"));
    }
}
