//! Frame rate choice and segment arithmetic. Pure.

/// Frame rates that sources commonly have; a measured average rate within 1% of one of these
/// snaps to it, so 29.97 stays 30000/1001 rather than becoming 2997/100.
const STANDARD_RATES: &[(i32, i32)] = &[
    (24000, 1001),
    (24, 1),
    (25, 1),
    (30000, 1001),
    (30, 1),
    (48, 1),
    (50, 1),
    (60000, 1001),
    (60, 1),
];

/// The highest output frame rate; faster sources are brought down to it.
pub const MAX_FRAME_RATE: i32 = 60;

/// The constant output frame rate for a source whose average rate is `avg` and whose
/// guessed base rate is `guess` (each `(num, den)`, possibly 0/0 when unknown).
pub fn output_frame_rate(avg: (i32, i32), guess: (i32, i32)) -> (i32, i32) {
    let as_f64 = |(n, d): (i32, i32)| (n > 0 && d > 0).then(|| f64::from(n) / f64::from(d));
    let Some(rate) = as_f64(avg)
        .filter(|r| (1.0..=1000.0).contains(r))
        .or_else(|| as_f64(guess).filter(|r| (1.0..=1000.0).contains(r)))
    else {
        return (25, 1);
    };
    // The container's base rate, when it is a standard one close to the average, is the
    // better estimate (an average over a clip whose last frame is short is a little off).
    if let Some(g) = as_f64(guess)
        && let Some(&(n, d)) = STANDARD_RATES
            .iter()
            .find(|&&(n, d)| (f64::from(n) / f64::from(d) - g).abs() < 1e-6)
        && (rate - g).abs() / g < 0.01
    {
        return (n, d);
    }
    if rate >= f64::from(MAX_FRAME_RATE) {
        return (MAX_FRAME_RATE, 1);
    }
    let nearest = STANDARD_RATES.iter().copied().min_by(|a, b| {
        let da = (rate - f64::from(a.0) / f64::from(a.1)).abs();
        let db = (rate - f64::from(b.0) / f64::from(b.1)).abs();
        da.total_cmp(&db)
    });
    if let Some((n, d)) = nearest {
        let standard = f64::from(n) / f64::from(d);
        if (rate - standard).abs() / standard < 0.01 {
            return (n, d);
        }
    }
    ((rate.round() as i32).clamp(1, MAX_FRAME_RATE), 1)
}

/// The 0-based segment a timestamp falls in: `floor(pts * tb / segment_seconds)`, with
/// negative timestamps in the first segment.
pub fn segment_index(pts: i64, time_base: (i32, i32), segment_seconds: u32) -> i64 {
    let (num, den) = time_base;
    if pts <= 0 || num <= 0 || den <= 0 || segment_seconds == 0 {
        return 0;
    }
    let value = i128::from(pts) * i128::from(num);
    let unit = i128::from(den) * i128::from(segment_seconds);
    i64::try_from(value / unit).unwrap_or(i64::MAX)
}

/// The largest number of frames a segment can hold at `rate`: x264's keyint.
pub fn frames_per_segment(rate: (i32, i32), segment_seconds: u32) -> u32 {
    let (n, d) = rate;
    if n <= 0 || d <= 0 {
        return 1;
    }
    let frames = (i64::from(n) * i64::from(segment_seconds) + i64::from(d) - 1) / i64::from(d);
    u32::try_from(frames.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frame_rates() {
        assert_eq!(output_frame_rate((30, 1), (30, 1)), (30, 1));
        assert_eq!(output_frame_rate((2997, 100), (30000, 1001)), (30000, 1001));
        assert_eq!(output_frame_rate((120, 1), (120, 1)), (60, 1));
        assert_eq!(output_frame_rate((0, 0), (25, 1)), (25, 1));
        assert_eq!(output_frame_rate((0, 0), (0, 0)), (25, 1));
        assert_eq!(output_frame_rate((273, 10), (90000, 1)), (27, 1));
        assert_eq!(output_frame_rate((1, 2), (0, 0)), (25, 1));
        assert_eq!(output_frame_rate((7425, 248), (30, 1)), (30, 1));
    }

    #[test]
    fn segments() {
        assert_eq!(segment_index(-5, (1, 30), 2), 0);
        assert_eq!(segment_index(59, (1, 30), 2), 0);
        assert_eq!(segment_index(60, (1, 30), 2), 1);
        assert_eq!(segment_index(120, (1001, 30000), 4), 1);
        assert_eq!(segment_index(119, (1001, 30000), 4), 0);
        assert_eq!(frames_per_segment((30, 1), 2), 60);
        assert_eq!(frames_per_segment((30000, 1001), 4), 120);
    }

    proptest! {
        #[test]
        fn segment_index_is_monotonic(a in -1000i64..1_000_000, b in 0i64..1000, den in 1i32..100_000, s in 1u32..30) {
            prop_assert!(segment_index(a, (1, den), s) <= segment_index(a + b, (1, den), s));
        }
    }
}
