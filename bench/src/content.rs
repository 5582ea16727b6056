//! The work folder both servers serve from: an HLS VOD title (master playlist, three renditions
//! of media playlists and segments) and a self-signed certificate.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Segments per rendition.
pub const N_SEGMENTS: usize = 200;

/// Segment duration written into the playlists, in seconds.
const SEGMENT_SECONDS: f64 = 4.0;

/// One rendition of the title.
#[derive(Debug, Clone, Copy)]
pub struct Rendition {
    /// Folder name under `vod/`.
    pub name: &'static str,
    /// Typical segment size in bytes; each segment differs from it by a few KB.
    pub segment_bytes: usize,
    pub resolution: &'static str,
    pub codecs: &'static str,
}

pub const RENDITIONS: [Rendition; 3] = [
    Rendition {
        name: "1080p",
        segment_bytes: 2_000_000,
        resolution: "1920x1080",
        codecs: "avc1.640028,mp4a.40.2",
    },
    Rendition {
        name: "540p",
        segment_bytes: 600_000,
        resolution: "960x540",
        codecs: "avc1.4d401f,mp4a.40.2",
    },
    Rendition {
        name: "270p",
        segment_bytes: 150_000,
        resolution: "480x270",
        codecs: "avc1.42c015,mp4a.40.2",
    },
];

/// Bumped whenever the generated tree changes, so an old tree is regenerated.
const TREE_VERSION: &str = "estuary-bench content v1";

/// Paths of the generated files, relative to the content root, each starting with '/'.
#[derive(Debug, Clone)]
pub struct Content {
    /// The content root both servers serve.
    pub root: PathBuf,
    /// The master playlist.
    pub master: String,
    /// The media playlist of each rendition, in [`RENDITIONS`] order.
    pub media_playlists: Vec<String>,
    /// The segments of each rendition, in [`RENDITIONS`] order.
    pub segments: Vec<Vec<String>>,
}

impl Content {
    fn layout(root: PathBuf) -> Self {
        Self {
            root,
            master: "/vod/master.m3u8".to_owned(),
            media_playlists: RENDITIONS
                .iter()
                .map(|r| format!("/vod/{}/index.m3u8", r.name))
                .collect(),
            segments: RENDITIONS
                .iter()
                .map(|r| {
                    (1..=N_SEGMENTS)
                        .map(|i| format!("/vod/{}/{}", r.name, segment_name(i)))
                        .collect()
                })
                .collect(),
        }
    }

    /// The playlists: every media playlist and the master.
    pub fn playlists(&self) -> Vec<String> {
        let mut v = self.media_playlists.clone();
        v.push(self.master.clone());
        v
    }

    /// Every file of the title, to warm a server and check what it serves.
    pub fn all_paths(&self) -> Vec<String> {
        let mut v = self.playlists();
        for (r, segments) in RENDITIONS.iter().zip(&self.segments) {
            v.push(format!("/vod/{}/init.mp4", r.name));
            v.extend(segments.iter().cloned());
        }
        v
    }

    /// The size of a file on disk, which is what a server must send for it.
    pub fn file_len(&self, path: &str) -> anyhow::Result<u64> {
        let p = self.root.join(path.trim_start_matches('/'));
        Ok(fs::metadata(&p)
            .with_context(|| format!("stat {}", p.display()))?
            .len())
    }
}

fn segment_name(i: usize) -> String {
    format!("seg_{i:05}.m4s")
}

/// Deterministic pseudo-random bytes (xorshift64*): incompressible enough for a transfer test
/// and the same on every run.
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The size of segment `i` of a rendition: the typical size give or take up to 4 KiB, so
/// files are not all alike.
fn segment_len(r: &Rendition, i: usize) -> usize {
    let jitter = (i.wrapping_mul(2_654_435_761) % 8192) as isize - 4096;
    (r.segment_bytes as isize + jitter) as usize
}

fn media_playlist() -> String {
    let mut s = String::new();
    s.push_str("#EXTM3U\n#EXT-X-VERSION:7\n");
    let _ = writeln!(s, "#EXT-X-TARGETDURATION:{}", SEGMENT_SECONDS as u32);
    s.push_str("#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    s.push_str("#EXT-X-MAP:URI=\"init.mp4\"\n");
    for i in 1..=N_SEGMENTS {
        let _ = writeln!(s, "#EXTINF:{SEGMENT_SECONDS:.3},\n{}", segment_name(i));
    }
    s.push_str("#EXT-X-ENDLIST\n");
    s
}

fn master_playlist() -> String {
    let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for r in &RENDITIONS {
        let bandwidth = (r.segment_bytes as f64 * 8.0 / SEGMENT_SECONDS) as u64;
        let _ = writeln!(
            s,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={bandwidth},RESOLUTION={},CODECS=\"{}\",FRAME-RATE=25.000\n{}/index.m3u8",
            bandwidth * 11 / 10,
            r.resolution,
            r.codecs,
            r.name
        );
    }
    s
}

/// Writes the title under `work/content` unless a complete tree of this version is there.
pub fn generate(work: &Path) -> anyhow::Result<Content> {
    let root = work.join("content");
    let content = Content::layout(root.clone());
    let marker = root.join(".complete");
    if fs::read_to_string(&marker).is_ok_and(|s| s == TREE_VERSION) {
        return Ok(content);
    }
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    let largest = RENDITIONS
        .iter()
        .map(|r| r.segment_bytes)
        .max()
        .unwrap_or(0);
    // One random buffer, reused by every segment from a different offset and behind a header
    // naming the segment.
    let noise = random_bytes(largest + 16 * 1024, 0x5eed_cafe_f00d_d00d);
    let vod = root.join("vod");
    for r in &RENDITIONS {
        let dir = vod.join(r.name);
        fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        fs::write(dir.join("index.m3u8"), media_playlist())?;
        // A stand-in for an fMP4 init segment: the size of a real one.
        fs::write(dir.join("init.mp4"), &noise[..1_200])?;
        for i in 1..=N_SEGMENTS {
            let len = segment_len(r, i);
            let header = format!("estuary-bench {} segment {i:05}\n", r.name);
            let offset = (i * 61) % 8192;
            let mut data = Vec::with_capacity(len);
            data.extend_from_slice(header.as_bytes());
            data.extend_from_slice(&noise[offset..offset + len - header.len()]);
            let path = dir.join(segment_name(i));
            fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    fs::write(vod.join("master.m3u8"), master_playlist())?;
    fs::write(&marker, TREE_VERSION)?;
    Ok(content)
}

/// Creates a self-signed EC P-256 certificate for `localhost` and 127.0.0.1 with the openssl
/// command line tool, unless one is there already. It is marked as an end-entity (not a CA)
/// server certificate, which rustls-webpki insists on when the HTTP/3 client trusts it.
pub fn certificate(work: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = work.join("cert.pem");
    let key = work.join("key.pem");
    let config = work.join("openssl-leaf.cnf");
    const LEAF_CONFIG: &str = "[req]\n\
        distinguished_name = dn\n\
        x509_extensions = leaf\n\
        prompt = no\n\
        [dn]\n\
        CN = localhost\n\
        [leaf]\n\
        basicConstraints = critical, CA:FALSE\n\
        keyUsage = critical, digitalSignature\n\
        extendedKeyUsage = serverAuth\n\
        subjectAltName = DNS:localhost, IP:127.0.0.1\n";
    if cert.exists() && key.exists() && fs::read_to_string(&config).is_ok_and(|c| c == LEAF_CONFIG)
    {
        return Ok((cert, key));
    }
    fs::write(&config, LEAF_CONFIG)?;
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "365", "-config"])
        .arg(&config)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    if !output.status.success() {
        bail!(
            "openssl req failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playlists_look_like_hls() {
        let media = media_playlist();
        assert!(media.starts_with("#EXTM3U\n"));
        assert!(media.ends_with("#EXT-X-ENDLIST\n"));
        assert_eq!(media.matches("#EXTINF:").count(), N_SEGMENTS);
        assert!(media.contains("\nseg_00200.m4s\n"));
        let master = master_playlist();
        assert_eq!(
            master.matches("#EXT-X-STREAM-INF").count(),
            RENDITIONS.len()
        );
        assert!(master.contains("\n540p/index.m3u8\n"));
    }

    #[test]
    fn segment_sizes_stay_near_the_typical_size() {
        for r in &RENDITIONS {
            for i in 1..=N_SEGMENTS {
                let len = segment_len(r, i) as isize;
                assert!((len - r.segment_bytes as isize).abs() <= 4096);
            }
        }
    }
}
