//! The HLS playlists (m3u8-rs) and the DASH MPD of a packaged asset, written from what the
//! encoders produced. Pure: tracks in, text out.

use std::fmt::Write as _;

use m3u8_rs::{
    AlternativeMedia, AlternativeMediaType, MasterPlaylist, MediaPlaylist, MediaPlaylistType,
    MediaSegment, Resolution, VariantStream,
};

/// The audio group id in the master playlist.
pub const AUDIO_GROUP: &str = "audio";

/// One media segment of a track, in the track's timescale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Earliest presentation time.
    pub start: i64,
    pub duration: i64,
    /// File size in bytes.
    pub size: u64,
}

/// What kind of track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrackKind {
    Video {
        width: u32,
        height: u32,
        frame_rate: (i32, i32),
    },
    Audio {
        sample_rate: u32,
        channels: u32,
    },
}

/// One packaged rendition: its folder name, codec and segments.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// Folder name: `720p`, `audio`.
    pub name: String,
    pub kind: TrackKind,
    /// RFC 6381 codec string.
    pub codecs: String,
    /// Units per second of `Segment` times (the MP4 track's timescale).
    pub timescale: u32,
    pub segments: Vec<Segment>,
}

/// The file name of segment `number` (1-based).
pub fn segment_name(number: usize) -> String {
    format!("seg_{number:05}.m4s")
}

impl Track {
    pub fn segment_seconds(&self, s: &Segment) -> f64 {
        s.duration as f64 / f64::from(self.timescale.max(1))
    }

    pub fn duration_seconds(&self) -> f64 {
        self.segments.iter().map(|s| self.segment_seconds(s)).sum()
    }

    /// Peak bits per second over any segment (a last segment shorter than half a second is
    /// left out: its few bytes over a tiny duration would overstate the peak).
    pub fn peak_bandwidth(&self) -> u64 {
        let rate =
            |s: &Segment| (s.size as f64 * 8.0 / self.segment_seconds(s).max(1e-3)).ceil() as u64;
        let n = self.segments.len();
        self.segments
            .iter()
            .enumerate()
            .filter(|(i, s)| n == 1 || *i + 1 < n || self.segment_seconds(s) >= 0.5)
            .map(|(_, s)| rate(s))
            .max()
            .unwrap_or(0)
    }

    /// Mean bits per second over the whole track.
    pub fn average_bandwidth(&self) -> u64 {
        let bytes: u64 = self.segments.iter().map(|s| s.size).sum();
        (bytes as f64 * 8.0 / self.duration_seconds().max(1e-3)).ceil() as u64
    }

    pub fn frame_rate(&self) -> Option<f64> {
        match self.kind {
            TrackKind::Video {
                frame_rate: (n, d), ..
            } if d > 0 => Some(f64::from(n) / f64::from(d)),
            _ => None,
        }
    }
}

fn write_to_string(f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut buf = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = f(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The media playlist of one track: fMP4 segments after an EXT-X-MAP, VOD, ended.
pub fn media_playlist(track: &Track) -> String {
    let target = track
        .segments
        .iter()
        .map(|s| track.segment_seconds(s).round() as u64)
        .max()
        .unwrap_or(1)
        .max(1);
    let segments = track
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| MediaSegment {
            uri: segment_name(i + 1),
            duration: track.segment_seconds(s) as f32,
            map: (i == 0).then(|| m3u8_rs::Map {
                uri: "init.mp4".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let playlist = MediaPlaylist {
        version: Some(7),
        target_duration: target,
        media_sequence: 1,
        segments,
        end_list: true,
        playlist_type: Some(MediaPlaylistType::Vod),
        independent_segments: true,
        ..Default::default()
    };
    write_to_string(|w| playlist.write_to(w))
}

/// The master playlist: one variant per video track (each with the audio group when there is
/// audio), or a single audio-only variant when there is no video.
pub fn master_playlist(video: &[Track], audio: Option<&Track>) -> String {
    let mut master = MasterPlaylist {
        version: Some(7),
        independent_segments: true,
        ..Default::default()
    };
    if let Some(a) = audio {
        let channels = match a.kind {
            TrackKind::Audio { channels, .. } => channels,
            TrackKind::Video { .. } => 2,
        };
        master.alternatives.push(AlternativeMedia {
            media_type: AlternativeMediaType::Audio,
            uri: Some(format!("{}/index.m3u8", a.name)),
            group_id: AUDIO_GROUP.into(),
            language: Some("und".into()),
            name: "Audio".into(),
            default: true,
            autoselect: true,
            channels: Some(channels.to_string()),
            ..Default::default()
        });
    }
    for v in video {
        let (width, height) = match v.kind {
            TrackKind::Video { width, height, .. } => (width, height),
            TrackKind::Audio { .. } => (0, 0),
        };
        let (codecs, peak, average) = match audio {
            Some(a) => (
                format!("{},{}", v.codecs, a.codecs),
                v.peak_bandwidth() + a.peak_bandwidth(),
                v.average_bandwidth() + a.average_bandwidth(),
            ),
            None => (v.codecs.clone(), v.peak_bandwidth(), v.average_bandwidth()),
        };
        master.variants.push(VariantStream {
            uri: format!("{}/index.m3u8", v.name),
            bandwidth: peak,
            average_bandwidth: Some(average),
            codecs: Some(codecs),
            resolution: Some(Resolution {
                width: u64::from(width),
                height: u64::from(height),
            }),
            frame_rate: v.frame_rate().map(|f| (f * 1000.0).round() / 1000.0),
            audio: audio.map(|_| AUDIO_GROUP.to_owned()),
            ..Default::default()
        });
    }
    if video.is_empty()
        && let Some(a) = audio
    {
        master.variants.push(VariantStream {
            uri: format!("{}/index.m3u8", a.name),
            bandwidth: a.peak_bandwidth(),
            average_bandwidth: Some(a.average_bandwidth()),
            codecs: Some(a.codecs.clone()),
            ..Default::default()
        });
    }
    write_to_string(|w| master.write_to(w))
}

/// An ISO 8601 duration with millisecond precision.
fn iso_duration(seconds: f64) -> String {
    format!("PT{:.3}S", seconds.max(0.0))
}

/// Escapes text for an XML attribute value.
fn xml_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `<SegmentTemplate>` with a `<SegmentTimeline>` over the track's segments (runs of equal
/// durations folded into `r`).
fn segment_template(out: &mut String, t: &Track) {
    let name = xml_attr(&t.name);
    let _ = writeln!(
        out,
        r#"        <SegmentTemplate timescale="{}" initialization="{name}/init.mp4" media="{name}/seg_$Number%05d$.m4s" startNumber="1">"#,
        t.timescale
    );
    out.push_str("          <SegmentTimeline>\n");
    let mut i = 0;
    while i < t.segments.len() {
        let s = t.segments[i];
        let mut repeat = 0;
        while let Some(next) = t.segments.get(i + 1 + repeat) {
            let prev = t.segments[i + repeat];
            if next.duration != s.duration || next.start != prev.start + prev.duration {
                break;
            }
            repeat += 1;
        }
        if repeat > 0 {
            let _ = writeln!(
                out,
                r#"            <S t="{}" d="{}" r="{repeat}"/>"#,
                s.start, s.duration
            );
        } else {
            let _ = writeln!(
                out,
                r#"            <S t="{}" d="{}"/>"#,
                s.start, s.duration
            );
        }
        i += 1 + repeat;
    }
    out.push_str("          </SegmentTimeline>\n        </SegmentTemplate>\n");
}

/// A static DASH MPD (live profile: SegmentTemplate) over the same CMAF segments.
pub fn mpd(
    video: &[Track],
    audio: Option<&Track>,
    duration_seconds: f64,
    segment_seconds: f64,
) -> String {
    let mut out = String::new();
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011,urn:mpeg:dash:profile:cmaf:2019" type="static" mediaPresentationDuration="{}" minBufferTime="{}">"#,
        iso_duration(duration_seconds),
        iso_duration(segment_seconds)
    );
    out.push_str("  <Period id=\"0\" start=\"PT0S\">\n");
    let mut set_id = 0;
    if !video.is_empty() {
        let (max_w, max_h) = video.iter().fold((0, 0), |(mw, mh), t| match t.kind {
            TrackKind::Video { width, height, .. } => (mw.max(width), mh.max(height)),
            TrackKind::Audio { .. } => (mw, mh),
        });
        let _ = writeln!(
            out,
            r#"    <AdaptationSet id="{set_id}" contentType="video" mimeType="video/mp4" segmentAlignment="true" startWithSAP="1" maxWidth="{max_w}" maxHeight="{max_h}">"#
        );
        set_id += 1;
        for t in video {
            let TrackKind::Video {
                width,
                height,
                frame_rate: (n, d),
            } = t.kind
            else {
                continue;
            };
            let _ = writeln!(
                out,
                r#"      <Representation id="{}" codecs="{}" bandwidth="{}" width="{width}" height="{height}" frameRate="{n}/{d}" sar="1:1">"#,
                xml_attr(&t.name),
                xml_attr(&t.codecs),
                t.peak_bandwidth()
            );
            segment_template(&mut out, t);
            out.push_str("      </Representation>\n");
        }
        out.push_str("    </AdaptationSet>\n");
    }
    if let Some(t) = audio {
        let (rate, channels) = match t.kind {
            TrackKind::Audio {
                sample_rate,
                channels,
            } => (sample_rate, channels),
            TrackKind::Video { .. } => (48_000, 2),
        };
        let _ = writeln!(
            out,
            r#"    <AdaptationSet id="{set_id}" contentType="audio" mimeType="audio/mp4" lang="und" segmentAlignment="true" startWithSAP="1">"#
        );
        let _ = writeln!(
            out,
            r#"      <Representation id="{}" codecs="{}" bandwidth="{}" audioSamplingRate="{rate}">"#,
            xml_attr(&t.name),
            xml_attr(&t.codecs),
            t.peak_bandwidth()
        );
        let _ = writeln!(
            out,
            r#"        <AudioChannelConfiguration schemeIdUri="urn:mpeg:dash:23003:3:audio_channel_configuration:2011" value="{channels}"/>"#
        );
        segment_template(&mut out, t);
        out.push_str("      </Representation>\n    </AdaptationSet>\n");
    }
    out.push_str("  </Period>\n</MPD>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(name: &str, w: u32, h: u32) -> Track {
        Track {
            name: name.into(),
            kind: TrackKind::Video {
                width: w,
                height: h,
                frame_rate: (30, 1),
            },
            codecs: "avc1.64001f".into(),
            timescale: 15360,
            segments: vec![
                Segment {
                    start: 0,
                    duration: 30720,
                    size: 250_000,
                },
                Segment {
                    start: 30720,
                    duration: 30720,
                    size: 500_000,
                },
                Segment {
                    start: 61440,
                    duration: 15360,
                    size: 100_000,
                },
            ],
        }
    }

    fn audio() -> Track {
        Track {
            name: "audio".into(),
            kind: TrackKind::Audio {
                sample_rate: 48000,
                channels: 2,
            },
            codecs: "mp4a.40.2".into(),
            timescale: 48000,
            segments: vec![
                Segment {
                    start: 0,
                    duration: 96256,
                    size: 32_000,
                },
                Segment {
                    start: 96256,
                    duration: 95232,
                    size: 32_000,
                },
                Segment {
                    start: 191488,
                    duration: 48512,
                    size: 16_000,
                },
            ],
        }
    }

    #[test]
    fn bandwidths() {
        let v = video("720p", 1280, 720);
        assert_eq!(v.peak_bandwidth(), 2_000_000);
        assert_eq!(v.average_bandwidth(), 1_360_000);
        assert!((v.duration_seconds() - 5.0).abs() < 1e-9);
    }

    #[test]
    fn playlists_parse_back() {
        let v = video("720p", 1280, 720);
        let a = audio();
        let master = master_playlist(std::slice::from_ref(&v), Some(&a));
        let parsed = m3u8_rs::parse_master_playlist_res(master.as_bytes()).expect("master");
        assert_eq!(parsed.variants.len(), 1);
        let var = &parsed.variants[0];
        assert_eq!(var.bandwidth, 2_000_000 + a.peak_bandwidth());
        assert_eq!(var.codecs.as_deref(), Some("avc1.64001f,mp4a.40.2"));
        assert_eq!(var.audio.as_deref(), Some(AUDIO_GROUP));
        assert_eq!(var.frame_rate, Some(30.0));
        assert_eq!(
            parsed.alternatives[0].uri.as_deref(),
            Some("audio/index.m3u8")
        );
        assert!(master.contains("#EXT-X-INDEPENDENT-SEGMENTS"));

        let media = media_playlist(&v);
        let parsed = m3u8_rs::parse_media_playlist_res(media.as_bytes()).expect("media");
        assert_eq!(parsed.target_duration, 2);
        assert!(parsed.end_list);
        assert_eq!(parsed.segments.len(), 3);
        assert_eq!(
            parsed.segments[0].map.as_ref().map(|m| m.uri.as_str()),
            Some("init.mp4")
        );
        assert_eq!(parsed.segments[2].uri, "seg_00003.m4s");

        let audio_only = master_playlist(&[], Some(&a));
        let parsed = m3u8_rs::parse_master_playlist_res(audio_only.as_bytes()).expect("audio only");
        assert_eq!(parsed.variants[0].codecs.as_deref(), Some("mp4a.40.2"));
        let video_only = master_playlist(std::slice::from_ref(&v), None);
        assert!(!video_only.contains("EXT-X-MEDIA"));
    }

    #[test]
    fn mpd_timeline_folds_repeats() {
        let v = video("720p", 1280, 720);
        let text = mpd(std::slice::from_ref(&v), Some(&audio()), 5.0, 2.0);
        assert!(text.contains(r#"<S t="0" d="30720" r="1"/>"#), "{text}");
        assert!(text.contains(r#"<S t="61440" d="15360"/>"#));
        assert!(text.contains(r#"media="720p/seg_$Number%05d$.m4s""#));
        assert!(text.contains(r#"contentType="audio""#));
        assert!(text.contains(r#"mediaPresentationDuration="PT5.000S""#));
    }
}
