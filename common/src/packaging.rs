//! The packaging options the origin's config and `estuary package` must agree on: the rungs
//! of the bitrate ladder known by name, the default ladder, the x264 presets and the segment
//! length. The origin checks its `[packaging]` table with these rules at start, so a ladder it
//! accepts is one the packager accepts. Pure.

use std::ops::RangeInclusive;

/// Rungs known by name: (short side in pixels, video bits per second). A rung is named after
/// its short side (`720p`); a rung not in this table must name its bitrate (`900p@4000k`).
pub const KNOWN_RUNGS: &[(u32, u64)] = &[
    (2160, 14_000_000),
    (1440, 8_000_000),
    (1080, 5_000_000),
    (720, 3_000_000),
    (480, 1_200_000),
    (360, 800_000),
    (240, 400_000),
    (144, 200_000),
];

/// The default ladder, highest first.
pub const DEFAULT_LADDER: &str = "1080p,720p,480p,360p,240p";

/// The shortest and longest side a rung may name, in pixels (the longest is the 8K limit).
pub const RUNG_SIDES: RangeInclusive<u32> = 16..=8192;

/// An explicit rung bitrate, in kb/s.
const RUNG_KBPS: RangeInclusive<u64> = 50..=100_000;

/// The segment lengths allowed, in whole seconds.
pub const SEGMENT_SECONDS: RangeInclusive<u32> = 1..=30;

/// The x264 presets, fastest first.
pub const X264_PRESETS: [&str; 10] = [
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];

/// One requested rung.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    /// The short side in pixels.
    pub short_side: u32,
    /// Target video bits per second.
    pub bitrate: u64,
}

/// Why a ladder was refused; each names the rung as it was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LadderError {
    #[error("bad rung {0:?} (expected names like 720p or 720p@2500k)")]
    BadRung(String),
    #[error("no default bitrate for {0:?}; give one, e.g. {0}@1500k")]
    NoDefaultBitrate(String),
    #[error("{0} appears twice")]
    Twice(String),
}

/// Parses one rung: `720p`, or `720p@2500k` (an explicit bitrate in kb/s).
pub fn parse_rung(item: &str) -> Result<Rung, LadderError> {
    let bad = || LadderError::BadRung(item.to_owned());
    let (name, rate) = match item.split_once('@') {
        Some((n, r)) => (n, Some(r)),
        None => (item, None),
    };
    let short_side: u32 = name
        .strip_suffix('p')
        .and_then(|n| n.parse().ok())
        .filter(|n| RUNG_SIDES.contains(n))
        .ok_or_else(bad)?;
    let bitrate = match rate {
        Some(r) => r
            .strip_suffix('k')
            .unwrap_or(r)
            .parse::<u64>()
            .ok()
            .filter(|k| RUNG_KBPS.contains(k))
            .map(|k| k * 1000)
            .ok_or_else(bad)?,
        None => KNOWN_RUNGS
            .iter()
            .find(|(s, _)| *s == short_side)
            .map(|(_, b)| *b)
            .ok_or_else(|| LadderError::NoDefaultBitrate(item.to_owned()))?,
    };
    Ok(Rung {
        short_side,
        bitrate,
    })
}

/// Parses a ladder's rungs into rungs highest first; a short side named twice is refused.
pub fn parse_ladder<'a>(
    items: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Rung>, LadderError> {
    let mut rungs: Vec<Rung> = Vec::new();
    for item in items {
        let rung = parse_rung(item.trim())?;
        if rungs.iter().any(|r| r.short_side == rung.short_side) {
            return Err(LadderError::Twice(format!("{}p", rung.short_side)));
        }
        rungs.push(rung);
    }
    rungs.sort_by_key(|r| std::cmp::Reverse(r.short_side));
    Ok(rungs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_rung_and_the_default_ladder_parse() {
        for (side, bitrate) in KNOWN_RUNGS {
            assert_eq!(
                parse_rung(&format!("{side}p")),
                Ok(Rung {
                    short_side: *side,
                    bitrate: *bitrate
                })
            );
        }
        let ladder = parse_ladder(DEFAULT_LADDER.split(',')).expect("default ladder");
        assert_eq!(ladder.len(), 5);
        assert_eq!(ladder[0].short_side, 1080);
    }

    #[test]
    fn rungs_with_a_bitrate_and_bad_rungs() {
        assert_eq!(
            parse_ladder(["240p", "720p@2500k"]).expect("ok")[0],
            Rung {
                short_side: 720,
                bitrate: 2_500_000
            }
        );
        assert_eq!(
            parse_ladder(["720p", "720p@900k"]),
            Err(LadderError::Twice("720p".into()))
        );
        assert_eq!(
            parse_rung("999p"),
            Err(LadderError::NoDefaultBitrate("999p".into()))
        );
        for bad in ["", "720", "4k", "720p@", "720p@1", "abc", "1p", "99999p"] {
            assert_eq!(parse_rung(bad), Err(LadderError::BadRung(bad.into())));
        }
    }
}
