//! Quality and size of a packaged rendition: its media playlist read back, its init segment
//! and segments joined into one MP4, and PSNR and SSIM against the source with FFmpeg's
//! `psnr` and `ssim` filters. The text parts are pure and tested.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::ladder::Rung;

/// A rendition's media playlist: the init segment and the segments with their durations.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaPlaylist {
    pub init: Option<String>,
    pub segments: Vec<(f64, String)>,
}

/// Reads the `EXT-X-MAP` URI and the `EXTINF` + URI pairs of an HLS media playlist.
pub fn parse_media_playlist(text: &str) -> anyhow::Result<MediaPlaylist> {
    let mut init = None;
    let mut segments = Vec::new();
    let mut pending: Option<f64> = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("#EXT-X-MAP:") {
            let uri = rest
                .split("URI=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .context("EXT-X-MAP without a URI")?;
            init = Some(uri.to_owned());
        } else if let Some(rest) = line.strip_prefix("#EXTINF:") {
            let d = rest.split(',').next().unwrap_or("").trim();
            pending = Some(d.parse().with_context(|| format!("EXTINF {d:?}"))?);
        } else if !line.is_empty() && !line.starts_with('#') {
            let d = pending
                .take()
                .with_context(|| format!("segment {line} without EXTINF"))?;
            segments.push((d, line.to_owned()));
        }
    }
    if segments.is_empty() {
        bail!("a media playlist without segments");
    }
    Ok(MediaPlaylist { init, segments })
}

/// A rendition on disk, joined into one playable file.
#[derive(Debug, Clone)]
pub struct Joined {
    pub file: PathBuf,
    /// Bytes of the media segments (init segment not counted).
    pub segment_bytes: u64,
    /// Sum of the `EXTINF` durations.
    pub seconds: f64,
    pub n_segments: usize,
}

impl Joined {
    /// Mean bitrate of the segments, in kb/s.
    pub fn kbps(&self) -> f64 {
        self.segment_bytes as f64 * 8.0 / self.seconds.max(1e-9) / 1000.0
    }
}

/// Joins the init segment and the segments listed by the media playlist at `playlist` into
/// `into` (fMP4 init + fragments concatenated make one fragmented MP4).
pub fn join_rendition(playlist: &Path, into: &Path) -> anyhow::Result<Joined> {
    let text = std::fs::read_to_string(playlist)
        .with_context(|| format!("reading {}", playlist.display()))?;
    let list = parse_media_playlist(&text).with_context(|| playlist.display().to_string())?;
    let dir = playlist.parent().context("a playlist without a folder")?;
    let init = list
        .init
        .as_deref()
        .context("no EXT-X-MAP (init segment)")?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(into).with_context(|| format!("creating {}", into.display()))?,
    );
    let mut copy = |name: &str| -> anyhow::Result<u64> {
        if name.contains("..") || name.starts_with('/') || name.contains("://") {
            bail!("unexpected segment URI {name:?}");
        }
        let bytes = std::fs::read(dir.join(name))
            .with_context(|| format!("reading {}", dir.join(name).display()))?;
        out.write_all(&bytes)?;
        Ok(bytes.len() as u64)
    };
    copy(init)?;
    let mut segment_bytes = 0;
    for (_, name) in &list.segments {
        segment_bytes += copy(name)?;
    }
    out.flush()?;
    Ok(Joined {
        file: into.to_owned(),
        segment_bytes,
        seconds: list.segments.iter().map(|(d, _)| d).sum(),
        n_segments: list.segments.len(),
    })
}

/// The filter graph comparing inputs 1..=n (the renditions of `rungs`, in order) with input 0
/// (the source), each rendition against the source scaled to its size with the same scaler
/// the packagers use. Both sides start at time 0. Filter instances are named `psnr@q<i>` and
/// `ssim@q<i>` so their summary lines can be told apart.
pub fn quality_graph(rungs: &[Rung], source_width: u32, source_height: u32) -> String {
    let n = rungs.len();
    let mut g = format!("[0:v]setpts=PTS-STARTPTS,split={n}");
    for i in 0..n {
        g.push_str(&format!("[r{i}]"));
    }
    for (i, r) in rungs.iter().enumerate() {
        let scale = if (r.width, r.height) == (source_width, source_height) {
            "null".to_owned()
        } else {
            format!("scale=w={}:h={}:flags=bicubic", r.width, r.height)
        };
        g.push_str(&format!(
            ";[r{i}]{scale},split[ra{i}][rb{i}];[{}:v]setpts=PTS-STARTPTS,split[da{i}][db{i}];\
             [da{i}][ra{i}]psnr@q{i};[db{i}][rb{i}]ssim@q{i}",
            i + 1
        ));
    }
    g
}

/// PSNR and SSIM of one rendition against the source.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quality {
    /// PSNR of the luma plane, dB.
    pub psnr_y: f64,
    /// PSNR over Y, U and V weighted by their sizes, dB.
    pub psnr_avg: f64,
    /// SSIM over Y, U and V ("All").
    pub ssim: f64,
}

/// Finds `key:<number>` in a filter's summary line.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
}

/// Reads the summary lines of the `psnr@q<i>` and `ssim@q<i>` filters from FFmpeg's log.
pub fn parse_quality(log: &str, n: usize) -> anyhow::Result<Vec<Quality>> {
    let mut out = vec![Quality::default(); n];
    let mut seen = vec![(false, false); n];
    for line in log.lines() {
        for (i, q) in out.iter_mut().enumerate() {
            if line.contains(&format!("[psnr@q{i} @")) {
                q.psnr_y = field(line, "y:").context("PSNR line without y:")?;
                q.psnr_avg = field(line, "average:").context("PSNR line without average:")?;
                seen[i].0 = true;
            } else if line.contains(&format!("[ssim@q{i} @")) {
                q.ssim = field(line, "All:").context("SSIM line without All:")?;
                seen[i].1 = true;
            }
        }
    }
    if let Some(i) = seen.iter().position(|s| !(s.0 && s.1)) {
        bail!("ffmpeg printed no PSNR/SSIM summary for rendition {i}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::ladder::LADDER;
    use super::*;

    #[test]
    fn reads_media_playlists_of_both_packagers() {
        let ffmpeg = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n#EXT-X-MAP:URI=\"init.mp4\"\n\
                      #EXTINF:4.000000,\nseg_00000.m4s\n#EXTINF:2.000000,\nseg_00001.m4s\n#EXT-X-ENDLIST\n";
        let p = parse_media_playlist(ffmpeg).expect("parse");
        assert_eq!(p.init.as_deref(), Some("init.mp4"));
        assert_eq!(
            p.segments,
            vec![
                (4.0, "seg_00000.m4s".to_owned()),
                (2.0, "seg_00001.m4s".to_owned())
            ]
        );
        let estuary = "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:4,\nseg_00001.m4s\n";
        assert_eq!(
            parse_media_playlist(estuary).expect("parse").segments.len(),
            1
        );
        assert!(parse_media_playlist("#EXTM3U\n").is_err());
        assert!(parse_media_playlist("#EXTM3U\nseg.m4s\n").is_err());
    }

    #[test]
    fn the_graph_compares_every_rendition() {
        let g = quality_graph(&LADDER, 1920, 1080);
        assert!(g.starts_with("[0:v]setpts=PTS-STARTPTS,split=5[r0][r1][r2][r3][r4];"));
        assert!(g.contains("[r0]null,split[ra0][rb0]"));
        assert!(g.contains("[r4]scale=w=426:h=240:flags=bicubic,split[ra4][rb4]"));
        assert!(g.contains("[5:v]setpts=PTS-STARTPTS"));
        assert!(g.contains("[db4][rb4]ssim@q4"));
    }

    #[test]
    fn parses_ffmpeg_summaries() {
        let log = "\
[ssim@q1 @ 0x5651] SSIM Y:0.995251 (23.234179) U:0.992692 (21.361954) V:0.993626 (21.955995) All:0.994554 (22.639084)
[psnr@q1 @ 0x5652] PSNR y:46.936606 u:44.823864 v:44.599245 average:46.061459 min:38.217511 max:49.922622
[ssim@q0 @ 0x5653] SSIM Y:0.962415 (14.249908) U:0.961848 (14.184855) V:0.963109 (14.330834) All:0.962437 (14.252348)
[psnr@q0 @ 0x5654] PSNR y:40.405696 u:39.659615 v:39.754475 average:40.160015 min:37.068799 max:44.657695
";
        let q = parse_quality(log, 2).expect("parse");
        assert!((q[0].psnr_y - 40.405696).abs() < 1e-9);
        assert!((q[1].psnr_avg - 46.061459).abs() < 1e-9);
        assert!((q[1].ssim - 0.994554).abs() < 1e-9);
        assert!(parse_quality(log, 3).is_err());
    }
}
