//! The ladder both packagers encode, and the ffmpeg CLI command line that does what
//! `estuary package` does. Pure: builds argument lists, runs nothing.

use std::path::Path;

/// One rung of the ladder: the same sizes and bitrates as `estuary package`'s default ladder
/// on a 1920x1080 source (docs/packaging.md, `packaging/src/ladder.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    pub name: &'static str,
    pub width: u32,
    pub height: u32,
    /// Target video bitrate in kb/s; maxrate is 1.5x, the VBV buffer 2x (as in
    /// `packaging/src/encode.rs`).
    pub kbps: u32,
}

impl Rung {
    pub fn maxrate_kbps(self) -> u32 {
        self.kbps * 3 / 2
    }

    pub fn bufsize_kbps(self) -> u32 {
        self.kbps * 2
    }
}

/// The default ladder on a 1080p source.
pub const LADDER: [Rung; 5] = [
    Rung {
        name: "1080p",
        width: 1920,
        height: 1080,
        kbps: 5000,
    },
    Rung {
        name: "720p",
        width: 1280,
        height: 720,
        kbps: 3000,
    },
    Rung {
        name: "480p",
        width: 854,
        height: 480,
        kbps: 1200,
    },
    Rung {
        name: "360p",
        width: 640,
        height: 360,
        kbps: 800,
    },
    Rung {
        name: "240p",
        width: 426,
        height: 240,
        kbps: 400,
    },
];

/// AAC bitrate of the audio rendition, both packagers.
pub const AUDIO_KBPS: u32 = 128;

/// What both packagers are asked for.
#[derive(Debug, Clone)]
pub struct Job {
    pub fps: u32,
    pub segment_seconds: u32,
    pub preset: String,
}

impl Job {
    /// Frames per segment: x264's `keyint` and `min-keyint` in `estuary package`.
    pub fn keyint(&self) -> u32 {
        self.fps * self.segment_seconds
    }

    /// `--ladder` for `estuary package`.
    pub fn estuary_ladder() -> String {
        LADDER.map(|r| r.name).join(",")
    }

    /// Arguments of `estuary package`.
    pub fn estuary_args(&self, source: &Path, out: &Path) -> Vec<String> {
        vec![
            "package".to_owned(),
            source.display().to_string(),
            "--out".to_owned(),
            out.display().to_string(),
            "--ladder".to_owned(),
            Self::estuary_ladder(),
            "--segment-seconds".to_owned(),
            self.segment_seconds.to_string(),
            "--preset".to_owned(),
            self.preset.clone(),
        ]
    }

    /// The filter graph of the ffmpeg CLI: decode once, constant frame rate, split, and per
    /// rung the same scale chain as `estuary package` (`packaging/src/encode.rs`).
    pub fn ffmpeg_filter_graph(&self) -> String {
        let n = LADDER.len();
        let mut graph = format!("[0:v]fps={},split={n}", self.fps);
        for i in 0..n {
            graph.push_str(&format!("[s{i}]"));
        }
        for (i, r) in LADDER.iter().enumerate() {
            graph.push_str(&format!(
                ";[s{i}]scale=w={}:h={}:flags=bicubic,setsar=1,format=yuv420p[v{i}]",
                r.width, r.height
            ));
        }
        graph
    }

    /// The ffmpeg CLI arguments (after `ffmpeg`) that package `source` into `out` with the
    /// HLS muxer and fMP4 segments: one process, one decode, the same libx264 settings per rung
    /// as `estuary package` (preset, bitrate, maxrate and VBV buffer, a closed GOP of one
    /// segment, no scene-cut key frames, no B-frames, an IDR forced at every segment
    /// boundary) and AAC-LC 48 kHz stereo at 128 kb/s.
    pub fn ffmpeg_hls_args(&self, source: &Path, out: &Path) -> Vec<String> {
        let mut a: Vec<String> = [
            "-hide_banner",
            "-nostats",
            "-loglevel",
            "warning",
            "-y",
            "-i",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        a.push(source.display().to_string());
        a.push("-filter_complex".to_owned());
        a.push(self.ffmpeg_filter_graph());
        for i in 0..LADDER.len() {
            a.push("-map".to_owned());
            a.push(format!("[v{i}]"));
        }
        a.extend(["-map", "0:a:0"].map(str::to_owned));
        let keyint = self.keyint().to_string();
        a.extend(
            [
                "-c:v",
                "libx264",
                "-preset",
                &self.preset,
                "-g",
                &keyint,
                "-keyint_min",
                &keyint,
                "-sc_threshold",
                "0",
                "-bf",
                "0",
                "-flags",
                "+cgop",
                "-forced-idr",
                "1",
                "-force_key_frames",
                &format!("expr:gte(t,n_forced*{})", self.segment_seconds),
            ]
            .map(str::to_owned),
        );
        for (i, r) in LADDER.iter().enumerate() {
            a.extend([
                format!("-b:v:{i}"),
                format!("{}k", r.kbps),
                format!("-maxrate:v:{i}"),
                format!("{}k", r.maxrate_kbps()),
                format!("-bufsize:v:{i}"),
                format!("{}k", r.bufsize_kbps()),
            ]);
        }
        a.extend(
            [
                "-c:a",
                "aac",
                "-b:a",
                &format!("{AUDIO_KBPS}k"),
                "-ar",
                "48000",
                "-ac",
                "2",
                "-f",
                "hls",
                "-hls_time",
                &self.segment_seconds.to_string(),
                "-hls_playlist_type",
                "vod",
                "-hls_segment_type",
                "fmp4",
                "-hls_fmp4_init_filename",
                "init.mp4",
                "-hls_segment_filename",
                &out.join("%v/seg_%05d.m4s").display().to_string(),
                "-master_pl_name",
                "master.m3u8",
                "-var_stream_map",
            ]
            .map(str::to_owned),
        );
        let mut map: Vec<String> = LADDER
            .iter()
            .enumerate()
            .map(|(i, r)| format!("v:{i},agroup:aud,name:{}", r.name))
            .collect();
        map.push("a:0,agroup:aud,name:audio".to_owned());
        a.push(map.join(" "));
        a.push(out.join("%v/index.m3u8").display().to_string());
        a
    }
}

/// A command line as one shell line, quoting what needs it (for the report).
pub fn shell_line(program: &str, args: &[String]) -> String {
    let quote = |s: &str| -> String {
        if !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./:,=+%@".contains(&b))
        {
            s.to_owned()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    std::iter::once(program.to_owned())
        .chain(args.iter().map(|a| quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            fps: 30,
            segment_seconds: 4,
            preset: "veryfast".to_owned(),
        }
    }

    #[test]
    fn the_ladder_matches_estuarys_rules() {
        // Bitrates from docs/packaging.md; sizes even and 16:9.
        for r in LADDER {
            assert_eq!(r.width % 2, 0);
            assert_eq!(r.height % 2, 0);
            let w = f64::from(r.height) * 16.0 / 9.0;
            assert!((f64::from(r.width) - w).abs() <= 1.0, "{r:?}");
        }
        assert_eq!(LADDER[0].maxrate_kbps(), 7500);
        assert_eq!(LADDER[0].bufsize_kbps(), 10000);
        assert_eq!(Job::estuary_ladder(), "1080p,720p,480p,360p,240p");
    }

    #[test]
    fn the_ffmpeg_command_has_one_encoder_per_rung() {
        let j = job();
        let a = j.ffmpeg_hls_args(Path::new("/s.mp4"), Path::new("/o"));
        let g = j.ffmpeg_filter_graph();
        assert!(g.starts_with("[0:v]fps=30,split=5[s0][s1][s2][s3][s4];"));
        assert!(g.contains("[s2]scale=w=854:h=480:flags=bicubic,setsar=1,format=yuv420p[v2]"));
        let pos = |x: &str| a.iter().position(|y| y == x).expect(x);
        assert_eq!(a[pos("-g") + 1], "120");
        assert_eq!(a[pos("-keyint_min") + 1], "120");
        assert_eq!(a[pos("-b:v:4") + 1], "400k");
        assert_eq!(a[pos("-bufsize:v:1") + 1], "6000k");
        assert_eq!(a[pos("-force_key_frames") + 1], "expr:gte(t,n_forced*4)");
        assert!(a[pos("-var_stream_map") + 1].ends_with("a:0,agroup:aud,name:audio"));
        assert_eq!(a.last().map(String::as_str), Some("/o/%v/index.m3u8"));
        assert_eq!(a.iter().filter(|x| *x == "-map").count(), 6);
    }

    #[test]
    fn shell_lines_quote_what_needs_it() {
        let line = shell_line(
            "ffmpeg",
            &["-i".to_owned(), "a b".to_owned(), "[v0]".to_owned()],
        );
        assert_eq!(line, "ffmpeg -i 'a b' '[v0]'");
    }
}
