//! The bitrate ladder: which renditions a source gets, at which size and bitrate. Pure.
//!
//! A rung is named after its short side (`720p` is 1280x720 for a landscape source and
//! 720x1280 for a portrait one). Rungs larger than the source are dropped and replaced by one
//! rung at the source's own size, so a source is never upscaled and never loses its top
//! quality. Sizes are even (H.264 4:2:0 needs it) and keep the display aspect ratio.

use crate::error::PackageError;

pub use estuary_common::packaging::{DEFAULT_LADDER, KNOWN_RUNGS, Rung};

/// The largest source side accepted (8K); larger inputs are refused before decoding.
pub const MAX_SIDE: u32 = 8192;
/// The largest source area accepted (8K UHD).
pub const MAX_PIXELS: u64 = 7680 * 4320;

/// One rendition to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendition {
    /// The folder name, for example `720p`.
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Target video bits per second (x264 `-b:v`); `maxrate` is 1.5x, `bufsize` 2x.
    pub bitrate: u64,
}

/// Parses `1080p,720p` or `720p@2500k` (an explicit bitrate in kb/s) into rungs, highest
/// first, without duplicates (the rules of [`estuary_common::packaging::parse_ladder`], which
/// the origin checks its config with).
pub fn parse_ladder(text: &str) -> Result<Vec<Rung>, PackageError> {
    estuary_common::packaging::parse_ladder(text.split(','))
        .map_err(|e| PackageError::Usage(format!("--ladder: {e}")))
}

/// Rounds to the nearest even number, at least 2.
fn round_even(x: f64) -> u32 {
    let n = ((x / 2.0).round() * 2.0).max(2.0);
    if n > f64::from(u32::MAX) {
        u32::MAX - 1
    } else {
        n as u32
    }
}

/// Chooses the renditions for a source whose displayed size (after rotation and pixel aspect)
/// is `width` x `height`. Highest first; never larger than the source on either side.
pub fn select(rungs: &[Rung], width: u32, height: u32) -> Result<Vec<Rendition>, PackageError> {
    if width < 2 || height < 2 {
        return Err(PackageError::Unsupported(format!(
            "video of {width}x{height} is too small"
        )));
    }
    let landscape = width >= height;
    let (src_short, src_long) = if landscape {
        (height, width)
    } else {
        (width, height)
    };
    let even_short = src_short & !1;
    let even_long = src_long & !1;
    let size = |short: u32| -> (u32, u32) {
        let long = round_even(f64::from(short) * f64::from(src_long) / f64::from(src_short))
            .min(even_long)
            .max(2);
        if landscape {
            (long, short)
        } else {
            (short, long)
        }
    };
    let mut out: Vec<Rendition> = Vec::new();
    let mut dropped_bitrate = None;
    for rung in rungs {
        if rung.short_side > src_short {
            // Remember the smallest rung above the source: the source-size rung takes its place.
            dropped_bitrate = Some(rung.bitrate);
            continue;
        }
        let (w, h) = size(rung.short_side);
        out.push(Rendition {
            name: format!("{}p", rung.short_side),
            width: w,
            height: h,
            bitrate: rung.bitrate,
        });
    }
    if let Some(above) = dropped_bitrate
        && !out.iter().any(|r| r.name == format!("{even_short}p"))
        && even_short >= 2
    {
        // The source sits between two rungs (or under all of them): add it at its own size, at
        // the bitrate of the rung above scaled down by area.
        let (w, h) = size(even_short);
        let bitrate = match out.first() {
            Some(below) => {
                let ratio = f64::from(w) * f64::from(h)
                    / (f64::from(below.width) * f64::from(below.height));
                ((below.bitrate as f64 * ratio) as u64).clamp(below.bitrate, above)
            }
            None => above,
        };
        out.insert(
            0,
            Rendition {
                name: format!("{even_short}p"),
                width: w,
                height: h,
                bitrate,
            },
        );
    }
    if out.is_empty() {
        return Err(PackageError::Usage(
            "--ladder: no rendition fits this source".into(),
        ));
    }
    Ok(out)
}

/// Refuses sources too large to package on an appliance.
pub fn check_source_size(width: u32, height: u32) -> Result<(), PackageError> {
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(PackageError::Unsupported(format!(
            "video of {width}x{height} is larger than the 8K limit ({MAX_SIDE} pixels a side, {MAX_PIXELS} pixels)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_ladder_on_1080p() {
        let r = select(&parse_ladder(DEFAULT_LADDER).expect("ladder"), 1920, 1080).expect("select");
        let got: Vec<_> = r
            .iter()
            .map(|r| (r.name.as_str(), r.width, r.height, r.bitrate))
            .collect();
        assert_eq!(
            got,
            vec![
                ("1080p", 1920, 1080, 5_000_000),
                ("720p", 1280, 720, 3_000_000),
                ("480p", 854, 480, 1_200_000),
                ("360p", 640, 360, 800_000),
                ("240p", 426, 240, 400_000),
            ]
        );
    }

    #[test]
    fn small_and_odd_sources_are_not_upscaled() {
        let ladder = parse_ladder(DEFAULT_LADDER).expect("ladder");
        let r = select(&ladder, 641, 361).expect("select");
        assert_eq!(
            (r[0].name.as_str(), r[0].width, r[0].height),
            ("360p", 640, 360)
        );
        let r = select(&ladder, 1000, 600).expect("select");
        assert_eq!(
            (r[0].name.as_str(), r[0].width, r[0].height),
            ("600p", 1000, 600)
        );
        assert!(r[0].bitrate >= 1_200_000 && r[0].bitrate <= 3_000_000);
        assert_eq!(r[1].name, "480p");
        let r = select(&ladder, 160, 90).expect("select");
        assert_eq!((r.len(), r[0].width, r[0].height), (1, 160, 90));
    }

    #[test]
    fn portrait_uses_the_short_side() {
        let r = select(&parse_ladder("360p,240p").expect("ladder"), 360, 640).expect("select");
        assert_eq!((r[0].width, r[0].height), (360, 640));
        assert_eq!((r[1].width, r[1].height), (240, 426));
    }

    #[test]
    fn ladder_parsing() {
        assert_eq!(
            parse_ladder("240p,720p@2500k").expect("ok")[0],
            Rung {
                short_side: 720,
                bitrate: 2_500_000
            }
        );
        for bad in [
            "",
            "720",
            "720p,720p",
            "999p",
            "720p@",
            "720p@1",
            "abc",
            "1p",
            "99999p",
        ] {
            assert!(parse_ladder(bad).is_err(), "{bad}");
        }
        assert!(check_source_size(16000, 16000).is_err());
        assert!(check_source_size(7680, 4320).is_ok());
    }

    proptest! {
        #[test]
        fn renditions_are_even_and_within_the_source(w in 2u32..9000, h in 2u32..9000, pick in 1usize..8) {
            let names: Vec<String> = KNOWN_RUNGS.iter().take(pick).map(|(s, _)| format!("{s}p")).collect();
            let ladder = parse_ladder(&names.join(",")).expect("ladder");
            let out = select(&ladder, w, h).expect("select");
            prop_assert!(!out.is_empty());
            for r in &out {
                prop_assert!(r.width % 2 == 0 && r.height % 2 == 0);
                prop_assert!(r.width <= w.max(2) && r.height <= h.max(2));
                prop_assert!(r.width >= 2 && r.height >= 2);
            }
            for pair in out.windows(2) {
                prop_assert!(pair[0].height * pair[0].width >= pair[1].height * pair[1].width);
            }
        }
    }
}
