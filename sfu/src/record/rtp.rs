//! The pure parts of a recording: the plain RTP and RTCP sender reports handed to ffmpeg on
//! loopback, the SDP that tells ffmpeg what arrives where, and the asset id.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One recorded stream's codec, as ffmpeg's SDP names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecCodec {
    Opus,
    Vp8,
    Vp9,
    H264,
    Av1,
}

impl RecCodec {
    pub fn is_audio(self) -> bool {
        self == RecCodec::Opus
    }

    fn rtpmap(self) -> &'static str {
        match self {
            RecCodec::Opus => "opus/48000/2",
            RecCodec::Vp8 => "VP8/90000",
            RecCodec::Vp9 => "VP9/90000",
            RecCodec::H264 => "H264/90000",
            RecCodec::Av1 => "AV1/90000",
        }
    }
}

/// One stream of the SDP: its codec, payload type and the (even) port ffmpeg listens on;
/// RTCP goes to the next port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdpStream {
    pub codec: RecCodec,
    pub pt: u8,
    pub port: u16,
}

/// The SDP ffmpeg reads (`-i rec.sdp`): one m-line per stream, on loopback.
pub fn ffmpeg_sdp(streams: &[SdpStream]) -> String {
    let mut s = String::from(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=estuary recording\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n",
    );
    for st in streams {
        let kind = if st.codec.is_audio() {
            "audio"
        } else {
            "video"
        };
        s.push_str(&format!(
            "m={kind} {} RTP/AVP {}\r\na=rtpmap:{} {}\r\n",
            st.port,
            st.pt,
            st.pt,
            st.codec.rtpmap()
        ));
        if st.codec == RecCodec::H264 {
            s.push_str(&format!("a=fmtp:{} packetization-mode=1\r\n", st.pt));
        }
        s.push_str("a=recvonly\r\n");
    }
    s
}

/// A plain RTP packet (version 2, no CSRC, no extension).
pub fn rtp_packet(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push((u8::from(marker) << 7) | (pt & 0x7f));
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Seconds between 1900 (NTP's epoch) and 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A wall-clock time as a 64-bit NTP timestamp.
pub fn ntp(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// An RTCP sender report without report blocks: at wall-clock `ntp`, the stream's RTP clock
/// read `rtp_ts`. ffmpeg lines its streams up by these.
pub fn sender_report(ssrc: u32, ntp: u64, rtp_ts: u32, packets: u32, octets: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(28);
    p.push(0x80);
    p.push(200);
    p.extend_from_slice(&6u16.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&ntp.to_be_bytes());
    p.extend_from_slice(&rtp_ts.to_be_bytes());
    p.extend_from_slice(&packets.to_be_bytes());
    p.extend_from_slice(&octets.to_be_bytes());
    p
}

/// The asset a recording of `room` started at `unix` becomes: `<prefix><room>-<unix>`, the
/// room cut so the id stays within 64 characters, and `.` (allowed in rooms, not in asset
/// ids) made `_`.
pub fn asset_id(prefix: &str, room: &str, unix: u64) -> String {
    let tail = format!("-{unix}");
    let room_room = 64usize.saturating_sub(prefix.len() + tail.len());
    let room: String = room
        .chars()
        .take(room_room)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}{room}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_header_fields() {
        let p = rtp_packet(96, true, 0x1234, 0xdead_beef, 7, &[1, 2, 3]);
        assert_eq!(p[0], 0x80);
        assert_eq!(p[1], 0x80 | 96);
        assert_eq!(&p[2..4], &[0x12, 0x34]);
        assert_eq!(&p[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&p[8..12], &[0, 0, 0, 7]);
        assert_eq!(&p[12..], &[1, 2, 3]);
        assert_eq!(rtp_packet(111, false, 0, 0, 0, &[])[1], 111);
    }

    #[test]
    fn sender_report_is_28_bytes_of_type_200() {
        let sr = sender_report(9, 0x0102_0304_0506_0708, 42, 3, 300);
        assert_eq!(sr.len(), 28);
        assert_eq!(sr[1], 200);
        // Length in 32-bit words minus one.
        assert_eq!(u16::from_be_bytes([sr[2], sr[3]]), 6);
        assert_eq!(&sr[8..16], &0x0102_0304_0506_0708u64.to_be_bytes());
    }

    #[test]
    fn ntp_epoch() {
        assert_eq!(ntp(UNIX_EPOCH) >> 32, NTP_UNIX_OFFSET);
        let half = UNIX_EPOCH + Duration::from_millis(500);
        assert_eq!(ntp(half) & 0xffff_ffff, 1 << 31);
    }

    #[test]
    fn sdp_lists_each_stream() {
        let sdp = ffmpeg_sdp(&[
            SdpStream {
                codec: RecCodec::H264,
                pt: 102,
                port: 40000,
            },
            SdpStream {
                codec: RecCodec::Opus,
                pt: 111,
                port: 40002,
            },
        ]);
        assert!(sdp.contains("m=video 40000 RTP/AVP 102\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=1"));
        assert!(sdp.contains("m=audio 40002 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2"));
    }

    #[test]
    fn asset_ids_are_valid_and_bounded() {
        assert_eq!(asset_id("rec-", "demo.room", 17), "rec-demo_room-17");
        let long = "r".repeat(64);
        let id = asset_id("rec-", &long, 1_800_000_000);
        assert_eq!(id.len(), 64);
        assert!(id.ends_with("-1800000000"));
        assert!(estuary_common::asset::valid_asset_id(&id));
    }
}
