//! The load's WebRTC peers: str0m in RTP mode with full ICE (the controlling or controlled
//! side as the signaling makes it), one UDP socket each on the bench's address, one tokio task each.
//!
//! A publisher sends a VP8-shaped video stream (one 1,200-byte packet per frame at 50
//! frames/s, a valid VP8 payload descriptor and frame header, a keyframe every 25 frames and
//! on request) and an Opus-shaped audio stream (100-byte packets every 20 ms). The last 8
//! bytes of every payload are the send time (nanoseconds since the bench's epoch, one
//! process clock), so a subscriber times each packet it receives: the SFU forwards payloads
//! without looking inside.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use str0m::config::{CryptoProvider, DtlsCert};
use str0m::format::Codec;
use str0m::media::{KeyframeRequest, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;

/// Video: frames per second, one packet each.
pub const FPS: u32 = 50;
pub const VIDEO_PACKET: usize = 1200;
pub const AUDIO_PACKET: usize = 100;
const KEYFRAME_EVERY: u32 = 25;

/// What every peer shares with the bench.
pub struct Shared {
    /// The address every peer's socket binds (the servers' media address too).
    pub address: std::net::IpAddr,
    pub epoch: Instant,
    pub crypto: Arc<CryptoProvider>,
    pub cert: DtlsCert,
    /// Subscribers count and time packets only while this is set.
    pub measuring: AtomicBool,
    pub stop: AtomicBool,
    /// Peers whose ICE and DTLS are up.
    pub connected: AtomicU64,
    /// Subscribers that received at least one video packet.
    pub receiving: AtomicU64,
    /// Packets subscribers received while measuring.
    pub received: AtomicU64,
    /// Packets publishers sent while measuring.
    pub sent: AtomicU64,
}

impl Shared {
    pub fn new(address: std::net::IpAddr) -> anyhow::Result<Arc<Self>> {
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        let cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| anyhow::anyhow!("no DTLS certificate"))?;
        Ok(Arc::new(Self {
            address,
            epoch: Instant::now(),
            crypto,
            cert,
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            connected: AtomicU64::new(0),
            receiving: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }))
    }
}

/// A peer before signaling: its `Rtc` and socket.
pub struct Peer {
    pub rtc: Rtc,
    pub socket: UdpSocket,
    pub local: SocketAddr,
}

impl Peer {
    pub async fn new(shared: &Shared) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(shared.address, 0)).await?;
        let local = socket.local_addr()?;
        let mut rtc = Rtc::builder()
            .set_crypto_provider(Arc::clone(&shared.crypto))
            .set_dtls_cert(shared.cert.clone())
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp")?);
        Ok(Self { rtc, socket, local })
    }
}

/// What a peer does once connected.
pub enum Role {
    /// Sends on these mids.
    Publisher { audio: Mid, video: Mid },
    /// Receives; collects latencies (microseconds).
    Subscriber,
}

/// A finished peer's latencies (subscribers), microseconds.
pub type Latencies = Vec<u32>;

/// Runs a peer until the bench stops.
pub async fn drive(mut peer: Peer, role: Role, shared: Arc<Shared>) -> anyhow::Result<Latencies> {
    let mut lat = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut pub_state = match role {
        Role::Publisher { audio, video } => Some(Sender::new(audio, video)),
        Role::Subscriber => None,
    };
    let mut connected = false;
    let mut receiving = false;
    let frame = Duration::from_secs(1) / FPS;
    let mut next_media = Instant::now() + frame;
    while !shared.stop.load(Ordering::Relaxed) {
        let timeout = loop {
            match peer.rtc.poll_output()? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = peer.socket.try_send_to(&t.contents, t.destination);
                }
                Output::Event(e) => match e {
                    Event::Connected => {
                        connected = true;
                        shared.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected)
                        if connected =>
                    {
                        connected = false;
                        shared.connected.fetch_sub(1, Ordering::Relaxed);
                    }
                    Event::KeyframeRequest(KeyframeRequest { .. }) => {
                        if let Some(s) = pub_state.as_mut() {
                            s.key_next = true;
                        }
                    }
                    Event::RtpPacket(p) if p.payload.len() >= 8 => {
                        if !receiving && p.payload.len() == VIDEO_PACKET {
                            receiving = true;
                            shared.receiving.fetch_add(1, Ordering::Relaxed);
                        }
                        if shared.measuring.load(Ordering::Relaxed) {
                            let tail = &p.payload[p.payload.len() - 8..];
                            let mut b = [0u8; 8];
                            b.copy_from_slice(tail);
                            let sent = shared.epoch + Duration::from_nanos(u64::from_be_bytes(b));
                            let us = p.timestamp.saturating_duration_since(sent).as_micros();
                            lat.push(u32::try_from(us).unwrap_or(u32::MAX));
                            shared.received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                },
            }
        };
        let now = Instant::now();
        if let Some(s) = pub_state.as_mut()
            && connected
            && now >= next_media
        {
            next_media += frame;
            if next_media < now {
                next_media = now + frame;
            }
            let n = s.send(&mut peer.rtc, &shared, now);
            if shared.measuring.load(Ordering::Relaxed) {
                shared.sent.fetch_add(n, Ordering::Relaxed);
            }
            continue;
        }
        let wake = if pub_state.is_some() && connected {
            timeout.min(next_media)
        } else {
            timeout
        };
        let wake = wake.min(now + Duration::from_millis(100));
        let input = tokio::select! {
            r = peer.socket.recv_from(&mut buf) => match r {
                Ok((n, src)) => Receive::new(Protocol::Udp, src, peer.local, &buf[..n])
                    .ok()
                    .map(|r| Input::Receive(Instant::now(), r)),
                Err(_) => None,
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                Some(Input::Timeout(Instant::now()))
            }
        };
        if let Some(i) = input {
            peer.rtc.handle_input(i)?;
        }
    }
    if receiving {
        shared.receiving.fetch_sub(1, Ordering::Relaxed);
    }
    if connected {
        shared.connected.fetch_sub(1, Ordering::Relaxed);
    }
    peer.rtc.disconnect();
    Ok(lat)
}

/// A publisher's two streams.
struct Sender {
    audio: Mid,
    video: Mid,
    pts: Option<(Pt, Pt)>,
    seq: u64,
    frame: u32,
    picture_id: u16,
    key_next: bool,
}

impl Sender {
    fn new(audio: Mid, video: Mid) -> Self {
        Self {
            audio,
            video,
            pts: None,
            seq: 1,
            frame: 0,
            picture_id: 0,
            key_next: true,
        }
    }

    /// One video frame and one audio packet; returns how many packets were written.
    fn send(&mut self, rtc: &mut Rtc, shared: &Shared, now: Instant) -> u64 {
        let pts = *self.pts.get_or_insert_with(|| {
            let find = |c: Codec| {
                rtc.codec_config()
                    .params()
                    .iter()
                    .find(|p| p.spec().codec == c)
                    .map(|p| p.pt())
            };
            (
                find(Codec::Opus).unwrap_or(Pt::from(111)),
                find(Codec::Vp8).unwrap_or(Pt::from(96)),
            )
        });
        let stamp = u64::try_from(now.duration_since(shared.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .to_be_bytes();
        let key = self.key_next || self.frame.is_multiple_of(KEYFRAME_EVERY);
        self.key_next = false;
        let video = vp8_payload(self.picture_id, key, &stamp);
        let audio = {
            let mut a = vec![0xfcu8; AUDIO_PACKET];
            a[AUDIO_PACKET - 8..].copy_from_slice(&stamp);
            a
        };
        let seq = self.seq;
        let vts = self.frame.wrapping_mul(90_000 / FPS);
        let ats = self.frame.wrapping_mul(48_000 / FPS);
        self.frame = self.frame.wrapping_add(1);
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        self.seq += 1;
        let mut n = 0;
        let mut api = rtc.direct_api();
        if let Some(tx) = api.stream_tx_by_mid(self.video, None) {
            tx.write_rtp(
                RtpWrite::new(pts.1, SeqNo::from(seq), vts, now, video)
                    .marker(true)
                    .nackable(true),
            );
            n += 1;
        }
        if let Some(tx) = api.stream_tx_by_mid(self.audio, None) {
            tx.write_rtp(RtpWrite::new(pts.0, SeqNo::from(seq), ats, now, audio));
            n += 1;
        }
        n
    }
}

/// A one-packet VP8 frame (RFC 7741): descriptor with a 15-bit picture id, the frame tag
/// (and for a keyframe the start code and a 640x360 size), zeros, then the send time.
pub fn vp8_payload(picture_id: u16, key: bool, stamp: &[u8; 8]) -> Vec<u8> {
    let mut p = vec![0u8; VIDEO_PACKET];
    p[0] = 0x90; // X, S, partition 0
    p[1] = 0x80; // I: picture id present
    p[2] = 0x80 | ((picture_id >> 8) as u8 & 0x7f); // M: 15 bits
    p[3] = (picture_id & 0xff) as u8;
    // Frame tag: P (bit 0) is 0 for a keyframe; show_frame (bit 4).
    p[4] = if key { 0x10 } else { 0x11 };
    if key {
        p[7..10].copy_from_slice(&[0x9d, 0x01, 0x2a]);
        p[10..12].copy_from_slice(&640u16.to_le_bytes());
        p[12..14].copy_from_slice(&360u16.to_le_bytes());
    }
    p[VIDEO_PACKET - 8..].copy_from_slice(stamp);
    p
}

/// Whether the VP8 payload above is seen as a keyframe by str0m (as the SFU sees it).
#[cfg(test)]
fn is_keyframe(p: &[u8]) -> bool {
    str0m::format::detect_vp8_keyframe(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframes_are_keyframes_and_others_are_not() {
        let stamp = [0u8; 8];
        assert!(is_keyframe(&vp8_payload(0, true, &stamp)));
        assert!(!is_keyframe(&vp8_payload(1, false, &stamp)));
        let d =
            str0m::rtp::Vp8Descriptor::parse(&vp8_payload(300, false, &stamp)).expect("descriptor");
        assert_eq!(d.picture_id(), Some(300));
    }
}
