//! Media types and content kinds by file extension. Streaming formats are listed here because
//! general MIME tables get them wrong or lack them; everything else comes from `mime_guess`.

use http::HeaderValue;

/// What a file is to a player, which decides its `Cache-Control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A playlist or manifest (`.m3u8`, `.mpd`): may change, cached briefly.
    Manifest,
    /// A media or init segment: never changes under its name.
    Segment,
    /// Anything else.
    Other,
}

/// The `Content-Type` and kind of a path, from its extension.
pub fn classify(path: &str) -> (HeaderValue, Kind) {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    // Extensions are short; lower-case into a stack buffer rather than allocate.
    let mut buf = [0u8; 16];
    let ext = if ext.len() <= buf.len() {
        buf[..ext.len()].copy_from_slice(ext.as_bytes());
        buf[..ext.len()].make_ascii_lowercase();
        std::str::from_utf8(&buf[..ext.len()]).unwrap_or("")
    } else {
        ""
    };
    let known = match ext {
        "m3u8" | "m3u" => Some(("application/vnd.apple.mpegurl", Kind::Manifest)),
        "mpd" => Some(("application/dash+xml", Kind::Manifest)),
        "m4s" | "mp4" | "m4v" | "cmfv" => Some(("video/mp4", Kind::Segment)),
        "ts" => Some(("video/mp2t", Kind::Segment)),
        "m4a" | "cmfa" => Some(("audio/mp4", Kind::Segment)),
        "aac" => Some(("audio/aac", Kind::Segment)),
        "mp3" => Some(("audio/mpeg", Kind::Segment)),
        "webm" => Some(("video/webm", Kind::Segment)),
        "vtt" | "webvtt" => Some(("text/vtt; charset=utf-8", Kind::Other)),
        "json" => Some(("application/json", Kind::Other)),
        "html" | "htm" => Some(("text/html; charset=utf-8", Kind::Other)),
        "js" | "mjs" => Some(("text/javascript; charset=utf-8", Kind::Other)),
        _ => None,
    };
    if let Some((mime, kind)) = known {
        return (HeaderValue::from_static(mime), kind);
    }
    let guessed = mime_guess::from_ext(ext)
        .first_raw()
        .unwrap_or("application/octet-stream");
    (HeaderValue::from_static(guessed), Kind::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_types() {
        let t = |p| {
            classify(p)
                .0
                .to_str()
                .map(str::to_owned)
                .unwrap_or_default()
        };
        assert_eq!(t("/v/a/master.m3u8"), "application/vnd.apple.mpegurl");
        assert_eq!(t("/v/a/manifest.mpd"), "application/dash+xml");
        assert_eq!(t("/v/a/720p/seg_001.m4s"), "video/mp4");
        assert_eq!(t("/v/a/720p/init.mp4"), "video/mp4");
        assert_eq!(t("/v/a/seg.TS"), "video/mp2t");
        assert_eq!(t("/v/a/audio.m4a"), "audio/mp4");
        assert_eq!(t("/v/a/audio.aac"), "audio/aac");
        assert_eq!(t("/v/a/sub.vtt"), "text/vtt; charset=utf-8");
        assert_eq!(t("/v/a/asset.json"), "application/json");
        assert_eq!(t("/v/a/poster.jpg"), "image/jpeg");
        assert_eq!(t("/v/a/thumb.png"), "image/png");
        assert_eq!(t("/v/a/noext"), "application/octet-stream");
        assert_eq!(classify("/a.m3u8").1, Kind::Manifest);
        assert_eq!(classify("/a.m4s").1, Kind::Segment);
        assert_eq!(classify("/a.jpg").1, Kind::Other);
    }
}
