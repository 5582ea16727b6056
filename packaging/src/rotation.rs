//! The display matrix of a video stream turned into filters, as the ffmpeg CLI does it
//! (`autorotate`). Pure.

/// What the display matrix asks for: filters to apply and whether width and height swap.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Orientation {
    /// A comma-separated filter chain (empty when the picture is upright), ending in a comma.
    pub filters: String,
    /// True for a quarter turn: the displayed width is the coded height.
    pub swaps: bool,
}

/// Reads the 3x3 display matrix (nine native-endian 32-bit integers, 16.16 fixed point except
/// the last column) from stream side data.
pub fn parse_matrix(bytes: &[u8]) -> Option<[i32; 9]> {
    if bytes.len() < 36 {
        return None;
    }
    let mut m = [0i32; 9];
    for (i, chunk) in bytes.chunks_exact(4).take(9).enumerate() {
        let arr: [u8; 4] = chunk.try_into().ok()?;
        m[i] = i32::from_ne_bytes(arr);
    }
    Some(m)
}

/// The clockwise rotation in degrees, normalized to [0, 360) (FFmpeg's `get_rotation`).
pub fn rotation_degrees(m: &[i32; 9]) -> f64 {
    let fp = |x: i32| f64::from(x) / 65536.0;
    let scale0 = fp(m[0]).hypot(fp(m[3]));
    let scale1 = fp(m[1]).hypot(fp(m[4]));
    if scale0 == 0.0 || scale1 == 0.0 {
        return 0.0;
    }
    // av_display_rotation_get returns the counter-clockwise angle; the CLI negates it.
    let ccw = (fp(m[1]) / scale1).atan2(fp(m[0]) / scale0).to_degrees();
    let mut theta = (ccw).round();
    theta -= 360.0 * (theta / 360.0 + 0.9 / 360.0).floor();
    theta
}

/// The filters that make the picture upright. Angles other than quarter turns are ignored
/// (rare, and a rotated picture with black corners is worse than a tilted one).
pub fn orientation(matrix: Option<[i32; 9]>) -> Orientation {
    let Some(m) = matrix else {
        return Orientation::default();
    };
    let theta = rotation_degrees(&m);
    let near = |a: f64| (theta - a).abs() < 1.0;
    let (filters, swaps) = if near(90.0) {
        (
            if m[3] > 0 {
                "transpose=cclock_flip,"
            } else {
                "transpose=clock,"
            }
            .to_owned(),
            true,
        )
    } else if near(180.0) {
        let mut f = String::new();
        if m[0] < 0 {
            f.push_str("hflip,");
        }
        if m[4] < 0 {
            f.push_str("vflip,");
        }
        (f, false)
    } else if near(270.0) {
        (
            if m[3] < 0 {
                "transpose=clock_flip,"
            } else {
                "transpose=cclock,"
            }
            .to_owned(),
            true,
        )
    } else if theta.abs() < 1.0 || near(360.0) {
        (
            if m[4] < 0 {
                "vflip,".to_owned()
            } else {
                String::new()
            },
            false,
        )
    } else {
        (String::new(), false)
    };
    Orientation { filters, swaps }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// av_display_rotation_set(angle) for a counter-clockwise angle in degrees.
    fn matrix(ccw_degrees: f64) -> [i32; 9] {
        let r = ccw_degrees.to_radians();
        let (c, s) = (r.cos(), r.sin());
        let fp = |x: f64| (x * 65536.0).round() as i32;
        [fp(c), fp(-s), 0, fp(s), fp(c), 0, 0, 0, 1 << 30]
    }

    #[test]
    fn quarter_turns() {
        // `-metadata:s:v rotate=90` stores a matrix of -90 degrees (clockwise display).
        let o = orientation(Some(matrix(-90.0)));
        assert_eq!(
            o,
            Orientation {
                filters: "transpose=clock,".into(),
                swaps: true
            }
        );
        let o = orientation(Some(matrix(90.0)));
        assert_eq!(
            o,
            Orientation {
                filters: "transpose=cclock,".into(),
                swaps: true
            }
        );
        let o = orientation(Some(matrix(180.0)));
        assert_eq!(
            o,
            Orientation {
                filters: "hflip,vflip,".into(),
                swaps: false
            }
        );
        assert_eq!(orientation(Some(matrix(0.0))), Orientation::default());
        assert_eq!(orientation(None), Orientation::default());
        assert_eq!(orientation(Some([0; 9])), Orientation::default());
    }

    #[test]
    fn matrix_bytes() {
        let m = matrix(-90.0);
        let bytes: Vec<u8> = m.iter().flat_map(|x| x.to_ne_bytes()).collect();
        assert_eq!(parse_matrix(&bytes), Some(m));
        assert_eq!(parse_matrix(&bytes[..35]), None);
    }
}
