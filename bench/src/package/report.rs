//! The markdown section of `package-vs-ffmpeg` in BENCHMARKS.md.

use std::fmt::Write as _;

use super::ladder::{AUDIO_KBPS, LADDER};
use super::{PackageResults, Packager, UploadResults, median};
use crate::report::RunInfo;

pub const BEGIN: &str = "<!-- package-vs-ffmpeg: begin -->";
pub const END: &str = "<!-- package-vs-ffmpeg: end -->";

/// The issue's quality target: each rendition within this many dB of the ffmpeg CLI's.
pub const PSNR_TOLERANCE_DB: f64 = 0.3;

#[derive(Debug)]
pub struct Report {
    pub run: RunInfo,
    pub repeat: usize,
    pub segment_seconds: u32,
    pub preset: String,
    pub package: Option<PackageResults>,
    pub uploads: Option<UploadResults>,
    pub minutes: f64,
}

fn runs_list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "### Run of {}\n", self.run.date);
        self.run.write_machine_and_software(&mut s);
        let _ = writeln!(
            s,
            "- Command: `{}` ({:.0} minutes in all)\n",
            self.run.command, self.minutes
        );
        if let Some(p) = &self.package {
            self.package_section(&mut s, p);
        }
        if let Some(u) = &self.uploads {
            self.upload_section(&mut s, u);
        }
        s
    }

    fn package_section(&self, s: &mut String, p: &PackageResults) {
        let src = &p.source;
        let _ = writeln!(s, "#### Packaging: `estuary package` vs the ffmpeg CLI\n");
        let _ = writeln!(
            s,
            "Source: {} s of 1920x1080 at 30 fps with a 440 Hz beeping sine (stereo AAC), \
             {:.1} MB ({:.1} Mb/s), made once with\n\n```\n{}\n```\n",
            src.seconds,
            src.bytes as f64 / 1e6,
            src.bytes as f64 * 8.0 / f64::from(src.seconds) / 1e6,
            src.command
        );
        let _ = writeln!(
            s,
            "Ladder: {} (x264 preset {}, {} s segments, one AAC-LC 48 kHz stereo rendition at \
             {AUDIO_KBPS} kb/s). The two commands, run {} time(s) each, alternating which goes \
             first, each after the idle-CPU guard:\n",
            LADDER
                .iter()
                .map(|r| format!("{} {}x{} @ {} kb/s", r.name, r.width, r.height, r.kbps))
                .collect::<Vec<_>>()
                .join(", "),
            self.preset,
            self.segment_seconds,
            self.repeat
        );
        let _ = writeln!(
            s,
            "```\n{}\n```\n\n```\n{}\n```\n",
            p.estuary_command, p.ffmpeg_command
        );

        let wall = |who: Packager| {
            p.runs
                .iter()
                .find(|(w, _)| *w == who)
                .map(|(_, r)| r.clone())
                .unwrap_or_default()
        };
        let (e, f) = (wall(Packager::Estuary), wall(Packager::Ffmpeg));
        let ew = median(e.iter().map(|t| t.wall).collect());
        let fw = median(f.iter().map(|t| t.wall).collect());
        let speed = fw / ew;
        let speed_ok = speed >= 1.0;

        // Quality verdicts.
        let rend = |who: Packager| p.renditions.iter().find(|(w, _, _)| *w == who);
        let mut diffs = Vec::new();
        if let (Some(er), Some(fr)) = (rend(Packager::Estuary), rend(Packager::Ffmpeg)) {
            for (a, b) in er.1.iter().zip(&fr.1) {
                diffs.push(a.quality.zip(b.quality).map(|(a, b)| a.psnr_y - b.psnr_y));
            }
        }
        let within = diffs
            .iter()
            .filter(|d| d.is_some_and(|d| d.abs() <= PSNR_TOLERANCE_DB))
            .count();
        let _ = writeln!(
            s,
            "**Target, speed** (estuary/ffmpeg at least 1.0, by median wall-clock time): \
             {speed:.2}x, **{}**.\n",
            if speed_ok { "met" } else { "NOT met" }
        );
        let _ = writeln!(
            s,
            "**Target, quality** (luma PSNR of every rendition within {PSNR_TOLERANCE_DB} dB \
             of the ffmpeg CLI's): {within} of {} renditions, **{}**.\n",
            diffs.len(),
            if within == diffs.len() && !diffs.is_empty() {
                "met"
            } else {
                "NOT met"
            }
        );

        let _ = writeln!(
            s,
            "| Packager | wall s (median) | wall s, every run | CPU s (median) | x realtime | \
             other programs' CPU share (max) | output MB |"
        );
        let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|");
        for (who, runs) in [(Packager::Estuary, &e), (Packager::Ffmpeg, &f)] {
            let w = median(runs.iter().map(|t| t.wall).collect());
            let c = median(runs.iter().map(|t| t.cpu).collect());
            let other = runs.iter().map(|t| t.other).fold(0.0, f64::max);
            let bytes = p
                .output_bytes
                .iter()
                .find(|(x, _)| *x == who)
                .map_or(0, |(_, b)| *b);
            let _ = writeln!(
                s,
                "| {} | {w:.1} | {} | {c:.1} | {:.2} | {:.0}% | {:.1} |",
                who.label(),
                runs_list(&runs.iter().map(|t| t.wall).collect::<Vec<_>>()),
                f64::from(src.seconds) / w,
                other * 100.0,
                bytes as f64 / 1e6
            );
        }
        let ec = median(e.iter().map(|t| t.cpu).collect());
        let fc = median(f.iter().map(|t| t.cpu).collect());
        let _ = writeln!(
            s,
            "| estuary/ffmpeg | {speed:.2}x faster | | {:.2}x the CPU | | | |\n",
            ec / fc
        );

        let _ = writeln!(
            s,
            "Quality of each rendition against the source scaled to its size (bicubic, as both \
             packagers scale), over every frame: PSNR of the luma plane and SSIM (Y, U, V \
             together), FFmpeg's `psnr` and `ssim` filters; bitrate is the mean of the media \
             segments (bytes x 8 / playlist duration).\n"
        );
        let _ = writeln!(
            s,
            "| Rendition | target kb/s | estuary kb/s | ffmpeg kb/s | estuary PSNR-Y dB | \
             ffmpeg PSNR-Y dB | difference dB | within {PSNR_TOLERANCE_DB} dB | estuary SSIM | \
             ffmpeg SSIM | segments (estuary / ffmpeg) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|");
        if let (Some(er), Some(fr)) = (rend(Packager::Estuary), rend(Packager::Ffmpeg)) {
            for ((r, a), b) in LADDER.iter().zip(&er.1).zip(&fr.1) {
                let q = |x: &super::RenditionResult, f: fn(&super::quality::Quality) -> f64, d| {
                    x.quality
                        .as_ref()
                        .map_or_else(|| "failed".to_owned(), |q| format!("{:.*}", d, f(q)))
                };
                let diff = a.quality.zip(b.quality).map(|(a, b)| a.psnr_y - b.psnr_y);
                let _ = writeln!(
                    s,
                    "| {} {}x{} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} / {} |",
                    r.name,
                    r.width,
                    r.height,
                    r.kbps,
                    a.kbps,
                    b.kbps,
                    q(a, |q| q.psnr_y, 2),
                    q(b, |q| q.psnr_y, 2),
                    diff.map_or_else(|| "-".to_owned(), |d| format!("{d:+.2}")),
                    match diff {
                        Some(d) if d.abs() <= PSNR_TOLERANCE_DB => "yes",
                        Some(_) => "**no**",
                        None => "-",
                    },
                    q(a, |q| q.ssim, 4),
                    q(b, |q| q.ssim, 4),
                    a.n_segments,
                    b.n_segments
                );
            }
            if let (Some(a), Some(b)) = (&er.2, &fr.2) {
                let _ = writeln!(
                    s,
                    "| audio (AAC) | {AUDIO_KBPS} | {:.0} | {:.0} | | | | | | | {} / {} |",
                    a.kbps, b.kbps, a.n_segments, b.n_segments
                );
            }
        }
        s.push('\n');
        let _ = writeln!(s, "Quality command (one per packager):\n");
        let _ = writeln!(s, "```\n{}\n```\n", p.quality_command);
        for n in &p.notes {
            let _ = writeln!(s, "- {n}");
        }
        let disturbed = e.iter().chain(&f).any(|t| t.other > 0.06);
        if disturbed {
            let _ = writeln!(
                s,
                "- At least one run shared the machine with other programs (over 6% of its CPU \
                 time went elsewhere): treat the speed figures with care."
            );
        }
        let _ = writeln!(
            s,
            "- CPU s is user + system time of the packager process as the kernel accounts it \
             when the bench reaps it; x realtime is source seconds per wall-clock second.\n"
        );
    }

    fn upload_section(&self, s: &mut String, u: &UploadResults) {
        let _ = writeln!(s, "#### TUS uploads to `estuary origin` on loopback\n");
        let _ = writeln!(
            s,
            "One file of {} MiB of pseudo-random bytes (in the page cache), uploaded to `estuary \
             origin` (local state folder on the same disk as below; packaging program \
             `/bin/false`, so a completed upload's job fails at once and nothing else runs). \
             Creation (`POST`) is not timed. MB/s is 10^6 bytes per second, median of {} \
             run(s), each after the idle-CPU guard.\n",
            u.file_bytes >> 20,
            self.repeat
        );
        let _ = writeln!(s, "| Test | MB/s (median) | seconds, every run |");
        let _ = writeln!(s, "|---|---:|---|");
        for r in &u.rows {
            let mb = match (&r.error, r.mb_per_second()) {
                (Some(_), _) => "failed".to_owned(),
                (None, Some(v)) => format!("{v:.0}"),
                (None, None) => "-".to_owned(),
            };
            let secs = r
                .seconds
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(s, "| {} | {mb} | {secs} |", r.label);
        }
        s.push('\n');
        for r in &u.rows {
            if let Some(e) = &r.error {
                let _ = writeln!(s, "- {} failed: {e}", r.label);
            }
        }
        let _ = writeln!(
            s,
            "- What bounds an upload: the origin writes each PATCH body and syncs it \
             (`fdatasync`) every 8 MiB and at its end before it acknowledges the offset. The \
             `dd oflag=dsync` rows write the same 8 MiB blocks with a sync after each, one \
             stream and {} at once, on the same file system; `dd` reads and writes in turn \
             while the origin keeps receiving from the socket during a sync, so one upload can \
             beat one `dd`. The loopback row is the same curl request to a sink with no disk: \
             the most curl and loopback TCP carry. tuspy {}.",
            super::UPLOAD_CONCURRENCY,
            u.tuspy_version
        );
    }
}
