//! `asset.json`: the integrity manifest of a packaged asset. Packaging writes it, the origin
//! serves it, and edges and the control plane verify fills against it: every file's size and
//! sha-256, a Merkle root over the media segments, the ladder and the duration.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Format version written into [`AssetManifest::version`].
pub const MANIFEST_VERSION: u32 = 1;

/// The file name of the manifest inside an asset folder.
pub const MANIFEST_FILE: &str = "asset.json";

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetManifest {
    pub version: u32,
    /// The asset id (the folder name under `/v/`).
    pub asset: String,
    pub duration_seconds: f64,
    /// The target segment duration; every segment but the last lasts exactly this long.
    pub segment_seconds: f64,
    /// Video renditions, highest first (empty for an audio-only asset).
    pub video: Vec<VideoRendition>,
    /// Audio renditions (empty for a video-only asset).
    pub audio: Vec<AudioRendition>,
    /// Every file of the asset except `asset.json` itself, sorted by path.
    pub files: Vec<FileDigest>,
    /// [`merkle_root`] over the sha-256 of the media segments (`.m4s` files, in `files`
    /// order), hex.
    pub merkle_root: String,
}

/// One video rendition of the ladder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoRendition {
    /// Folder name, for example `720p`.
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Peak bits per second over any segment (HLS `BANDWIDTH`).
    pub bandwidth: u64,
    /// Mean bits per second (HLS `AVERAGE-BANDWIDTH`).
    pub average_bandwidth: u64,
    /// RFC 6381 codec string, for example `avc1.64001f`.
    pub codecs: String,
    pub frame_rate: f64,
    /// Paths relative to the asset folder.
    pub playlist: String,
    pub init: String,
    pub segments: u32,
}

/// One audio rendition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioRendition {
    pub name: String,
    pub bandwidth: u64,
    pub average_bandwidth: u64,
    pub codecs: String,
    pub channels: u32,
    pub sample_rate: u32,
    pub playlist: String,
    pub init: String,
    pub segments: u32,
}

/// One file of the asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// Relative path with `/` separators, for example `720p/seg_00001.m4s`.
    pub path: String,
    pub size: u64,
    /// sha-256 of the file, lowercase hex.
    pub sha256: String,
}

impl AssetManifest {
    /// The digest entry of `path`, if the asset has that file.
    pub fn file(&self, path: &str) -> Option<&FileDigest> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .and_then(|i| self.files.get(i))
    }

    /// The Merkle root the files list implies (compare with [`AssetManifest::merkle_root`]).
    pub fn computed_merkle_root(&self) -> Option<String> {
        let leaves: Option<Vec<[u8; 32]>> = self
            .files
            .iter()
            .filter(|f| f.path.ends_with(".m4s"))
            .map(|f| decode_sha256(&f.sha256))
            .collect();
        Some(hex::encode(merkle_root(&leaves?)))
    }
}

/// The asset-id rule, as errors state it.
pub const ASSET_ID_RULE: &str = "1 to 64 of a-z A-Z 0-9 - _, starting with a letter or digit";

/// An asset id: 1 to 64 of `a-z A-Z 0-9 - _`, starting with a letter or digit. Asset ids are
/// folder names under `/v/` on origins and edges alike; the packager, the origin's uploads,
/// the control plane, steering and the edges all check this one rule.
pub fn valid_asset_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && id.as_bytes()[0].is_ascii_alphanumeric()
}

/// A file path inside an asset (as `asset.json` lists them): at most 512 bytes of `/`-separated
/// segments of 1 to 128 of `A-Z a-z 0-9 . - _`, none starting with a dot. Such a path can
/// never leave its asset's folder.
pub fn valid_file_path(path: &str) -> bool {
    path.len() <= 512
        && path.split('/').all(|s| {
            !s.is_empty()
                && s.len() <= 128
                && !s.starts_with('.')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        })
}

/// Parses a lowercase or uppercase hex sha-256.
pub fn decode_sha256(hex_text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_text).ok()?;
    bytes.try_into().ok()
}

/// The Merkle root of `leaves` (each a sha-256): pairs are hashed as `sha256(left || right)`
/// level by level; an odd node at the end of a level is carried up unchanged. The root of no
/// leaves is `sha256("")`; of one leaf, the leaf.
pub fn merkle_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return Sha256::digest(b"").into();
    }
    let mut level: Vec<[u8; 32]> = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => {
                    let mut h = Sha256::new();
                    h.update(left);
                    h.update(right);
                    h.finalize().into()
                }
                // chunks(2) yields pairs and, at the end of an odd level, one node.
                _ => pair.first().copied().unwrap_or_default(),
            })
            .collect();
    }
    level.first().copied().unwrap_or_default()
}

/// One line of `estuary package --progress`: JSON lines on its standard output, read by the
/// origin's packaging worker. The event name comes first (`{"event":"progress",...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PackageEvent {
    /// The share of the source decoded so far (0 to 1).
    Progress { fraction: f64 },
    /// Packaged: the asset's id and duration.
    Done {
        asset: String,
        duration_seconds: f64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_events_round_trip_with_the_event_name_first() {
        for e in [
            PackageEvent::Progress { fraction: 0.25 },
            PackageEvent::Done {
                asset: "movie".into(),
                duration_seconds: 30.5,
            },
        ] {
            let line = serde_json::to_string(&e).expect("json");
            assert!(line.starts_with(r#"{"event":""#), "{line}");
            assert_eq!(
                serde_json::from_str::<PackageEvent>(&line).expect("back"),
                e
            );
        }
        assert!(serde_json::from_str::<PackageEvent>(r#"{"event":"nope"}"#).is_err());
    }

    #[test]
    fn asset_ids() {
        for good in ["a", "big-buck_bunny2", "7", &"a".repeat(64)] {
            assert!(valid_asset_id(good), "{good}");
        }
        // The packager used to accept all but the first four of these (any 200 characters
        // without a slash or a control character), which no edge or control plane takes.
        for bad in [
            "",
            "-a",
            "_a",
            "..",
            "a/b",
            "a\\b",
            "a.b",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!valid_asset_id(bad), "{bad}");
        }
    }

    fn leaf(n: u8) -> [u8; 32] {
        Sha256::digest([n]).into()
    }

    fn pair(a: [u8; 32], b: [u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(a);
        h.update(b);
        h.finalize().into()
    }

    #[test]
    fn merkle_roots() {
        assert_eq!(merkle_root(&[]), <[u8; 32]>::from(Sha256::digest(b"")));
        assert_eq!(merkle_root(&[leaf(1)]), leaf(1));
        assert_eq!(merkle_root(&[leaf(1), leaf(2)]), pair(leaf(1), leaf(2)));
        assert_eq!(
            merkle_root(&[leaf(1), leaf(2), leaf(3)]),
            pair(pair(leaf(1), leaf(2)), leaf(3))
        );
    }

    #[test]
    fn manifests_round_trip_and_refuse_unknown_keys() {
        let m = AssetManifest {
            version: MANIFEST_VERSION,
            asset: "a1".into(),
            duration_seconds: 8.0,
            segment_seconds: 4.0,
            video: vec![],
            audio: vec![],
            files: vec![FileDigest {
                path: "audio/seg_00001.m4s".into(),
                size: 3,
                sha256: hex::encode(leaf(1)),
            }],
            merkle_root: hex::encode(leaf(1)),
        };
        let text = serde_json::to_string(&m).expect("json");
        let back: AssetManifest = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, m);
        assert_eq!(back.computed_merkle_root(), Some(m.merkle_root.clone()));
        assert!(back.file("audio/seg_00001.m4s").is_some());
        let extra = text.replacen('{', "{\"surprise\":1,", 1);
        assert!(serde_json::from_str::<AssetManifest>(&extra).is_err());
    }
}
