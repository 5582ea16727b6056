//! One recording: a WHEP watcher of its room inside the SFU process (a str0m `Rtc` in RTP
//! mode, full ICE, its own UDP socket on loopback), whose packets go as plain RTP to an
//! ffmpeg that writes them without transcoding (`-c copy`, Matroska). The watcher gets what
//! any WHEP watcher gets: the room's first audio and video tracks, starting on a keyframe.
//!
//! ffmpeg is started once the codecs are known (the first packet of each kind, or after
//! [`CODEC_WAIT`] with one kind); packets wait in memory until its ports are bound, so the
//! file starts with the keyframe the SFU sent first. RTCP sender reports let ffmpeg line the
//! audio up with the video.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use str0m::change::SdpAnswer;
use str0m::format::Codec as StrCodec;
use str0m::media::{Direction, MediaKind as StrKind};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpPacket;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::oneshot;

use super::rtp::{self, RecCodec, SdpStream};
use super::{Ctx, Recording, State};
use crate::peer::PeerKind;
use crate::shard::{Open, ShardIn};

/// How long the first packets wait for the other kind's codec before ffmpeg starts anyway.
const CODEC_WAIT: Duration = Duration::from_secs(3);
/// Longest wait for ffmpeg to bind its ports.
const FFMPEG_START: Duration = Duration::from_secs(15);
/// Packets held while ffmpeg starts; beyond, the oldest are kept and later ones dropped.
const MAX_HELD: usize = 20_000;
/// A watcher whose ICE is lost this long ends the recording (the SFU is gone).
const ICE_LOST: Duration = Duration::from_secs(10);
/// Longest wait for ffmpeg to finish its file after `q`.
const FFMPEG_STOP: Duration = Duration::from_secs(20);

/// Records until stopped; returns the finished file.
pub fn record(rec: &Recording, ctx: &Ctx) -> Result<PathBuf, String> {
    let local_ip = match ctx.sfu_udp.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0))
        .map_err(|e| format!("the recorder's socket: {e}"))?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let now = Instant::now();
    let mut rtc = ctx.factory.client(now);
    let cand = Candidate::host(local, "udp").map_err(|e| format!("local candidate: {e}"))?;
    rtc.add_local_candidate(cand);
    let mut api = rtc.sdp_api();
    api.add_media(StrKind::Audio, Direction::RecvOnly, None, None, None);
    api.add_media(StrKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api
        .apply()
        .ok_or_else(|| "the recorder's offer is empty".to_owned())?;

    // The room's shard answers, as it answers any WHEP offer.
    let shard = ctx.shard.clone();
    let (reply, answer) = oneshot::channel();
    shard
        .try_send(ShardIn::Open(Open {
            room: rec.room.clone(),
            kind: PeerKind::Whep,
            offer: offer.to_sdp_string(),
            reply,
        }))
        .map_err(|_| "the room's shard is overloaded or stopped".to_owned())?;
    let opened = answer
        .blocking_recv()
        .map_err(|_| "the room's shard stopped".to_owned())?
        .map_err(|e| format!("the SFU refused the recorder: {e}"))?;
    let result = (|| {
        let answer = SdpAnswer::from_sdp_string(&opened.answer)
            .map_err(|e| format!("the SFU's answer: {e}"))?;
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| format!("the SFU's answer: {e}"))?;
        // The SFU's listening address, besides the public one its answer names.
        if let Ok(c) = Candidate::host(ctx.sfu_udp, "udp") {
            rtc.add_remote_candidate(c);
        }
        run(rec, ctx, &mut rtc, &socket, local)
    })();
    rtc.disconnect();
    let (reply, _closed) = oneshot::channel();
    let _ = shard.try_send(ShardIn::Close {
        room: rec.room.clone(),
        session: opened.session,
        kind: PeerKind::Whep,
        reply,
    });
    result
}

/// The watcher's loop: str0m in, plain RTP out to ffmpeg, until stopped.
fn run(
    rec: &Recording,
    ctx: &Ctx,
    rtc: &mut Rtc,
    socket: &UdpSocket,
    local: SocketAddr,
) -> Result<PathBuf, String> {
    let started = Instant::now();
    let mut sink = Sink::new(ctx, &rec.asset)?;
    let mut buf = vec![0u8; 2048];
    let mut lost_since: Option<Instant> = None;
    rec.set_state(State::Recording);
    loop {
        let now = Instant::now();
        if rec.stop.load(Ordering::SeqCst) {
            break;
        }
        if now.duration_since(started) >= ctx.cfg.max_duration {
            tracing::info!(room = %rec.room, "A recording reached recording.max_duration.");
            break;
        }
        if lost_since.is_some_and(|t| now.duration_since(t) >= ICE_LOST) {
            tracing::warn!(room = %rec.room, "The recorder lost its connection to the SFU.");
            break;
        }
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(e)) => match e {
                    Event::RtpPacket(p) => sink.packet(rtc, &p),
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        lost_since.get_or_insert(Instant::now());
                    }
                    Event::IceConnectionStateChange(_) => lost_since = None,
                    _ => {}
                },
                Err(e) => return Err(format!("the recorder's WebRTC session failed: {e}")),
            }
        };
        sink.tick(Instant::now())?;
        rec.bytes.store(sink.file_len(), Ordering::Relaxed);
        let wait = timeout
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(50));
        let _ = socket.set_read_timeout(Some(wait));
        let input = match socket.recv_from(&mut buf) {
            Ok((n, src)) => match Receive::new(Protocol::Udp, src, local, &buf[..n]) {
                Ok(r) => Some(Input::Receive(Instant::now(), r)),
                Err(_) => None,
            },
            Err(_) => Some(Input::Timeout(Instant::now())),
        };
        if let Some(i) = input
            && let Err(e) = rtc.handle_input(i)
        {
            return Err(format!("the recorder's WebRTC session failed: {e}"));
        }
    }
    rec.set_state(State::Finishing);
    sink.finish()
}

/// One kind's stream towards ffmpeg.
struct Stream {
    codec: RecCodec,
    pt: u8,
    ssrc: u32,
    port: u16,
    /// The last packet's RTP timestamp and arrival (for sender reports).
    last: (u32, Instant),
    packets: u32,
    octets: u32,
}

enum Phase {
    /// Codecs being learnt; packets held.
    Learning {
        since: Option<Instant>,
    },
    /// ffmpeg started; packets held until its ports are bound.
    Starting {
        since: Instant,
    },
    Running,
}

/// Where packets go: held, then to ffmpeg.
struct Sink {
    dir: PathBuf,
    asset: String,
    ffmpeg_bin: PathBuf,
    out: UdpSocket,
    audio: Option<Stream>,
    video: Option<Stream>,
    held: Vec<(bool, Vec<u8>)>,
    dropped: u64,
    phase: Phase,
    child: Option<Child>,
    /// Connected sockets towards ffmpeg's RTCP ports, and when each last probed.
    probe: Option<Vec<(UdpSocket, Option<Instant>)>>,
    /// Wall clock and monotonic clock read together (sender reports' NTP times).
    epoch: (SystemTime, Instant),
    last_report: Instant,
}

impl Sink {
    fn new(ctx: &Ctx, asset: &str) -> Result<Self, String> {
        let out = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("the socket towards ffmpeg: {e}"))?;
        let now = Instant::now();
        Ok(Self {
            dir: ctx.cfg.dir.clone(),
            asset: asset.to_owned(),
            ffmpeg_bin: ctx.cfg.ffmpeg.clone(),
            out,
            audio: None,
            video: None,
            held: Vec::new(),
            dropped: 0,
            phase: Phase::Learning { since: None },
            child: None,
            probe: None,
            epoch: (SystemTime::now(), now),
            last_report: now,
        })
    }

    fn path(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.asset))
    }

    fn file_len(&self) -> u64 {
        std::fs::metadata(self.path("mkv")).map_or(0, |m| m.len())
    }

    fn packet(&mut self, rtc: &Rtc, p: &RtpPacket) {
        let pt = p.header.payload_type;
        let Some(codec) = rtc
            .codec_config()
            .params()
            .iter()
            .find(|c| c.pt() == pt)
            .and_then(|c| rec_codec(c.spec().codec))
        else {
            self.dropped += 1;
            return;
        };
        let audio = codec.is_audio();
        let slot = if audio {
            &mut self.audio
        } else {
            &mut self.video
        };
        let stream = slot.get_or_insert_with(|| Stream {
            codec,
            pt: *pt,
            ssrc: if audio { 0x5ec0_0a01 } else { 0x5ec0_0b01 },
            port: 0,
            last: (p.header.timestamp, p.timestamp),
            packets: 0,
            octets: 0,
        });
        if stream.codec != codec {
            // A second codec on one kind (the publisher changed): ffmpeg's SDP has one.
            self.dropped += 1;
            return;
        }
        stream.last = (p.header.timestamp, p.timestamp);
        stream.packets = stream.packets.wrapping_add(1);
        stream.octets = stream
            .octets
            .wrapping_add(u32::try_from(p.payload.len()).unwrap_or(u32::MAX));
        let bytes = rtp::rtp_packet(
            stream.pt,
            p.header.marker,
            p.header.sequence_number,
            p.header.timestamp,
            stream.ssrc,
            &p.payload,
        );
        let port = stream.port;
        match self.phase {
            Phase::Running => {
                let _ = self.out.send_to(&bytes, (Ipv4Addr::LOCALHOST, port));
            }
            Phase::Learning { ref mut since } => {
                since.get_or_insert(p.timestamp);
                self.hold(audio, bytes);
            }
            Phase::Starting { .. } => self.hold(audio, bytes),
        }
    }

    fn hold(&mut self, audio: bool, bytes: Vec<u8>) {
        if self.held.len() < MAX_HELD {
            self.held.push((audio, bytes));
        } else {
            self.dropped += 1;
        }
    }

    /// Starts ffmpeg, flushes what was held, sends sender reports.
    fn tick(&mut self, now: Instant) -> Result<(), String> {
        match self.phase {
            Phase::Learning { since: Some(since) } => {
                let both = self.audio.is_some() && self.video.is_some();
                if both || now.duration_since(since) >= CODEC_WAIT {
                    self.start_ffmpeg()?;
                    self.phase = Phase::Starting { since: now };
                }
            }
            Phase::Learning { since: None } => {}
            Phase::Starting { since } => {
                if self.ports_bound(now) {
                    self.report(now);
                    for (audio, bytes) in std::mem::take(&mut self.held) {
                        let s = if audio { &self.audio } else { &self.video };
                        if let Some(s) = s {
                            let _ = self.out.send_to(&bytes, (Ipv4Addr::LOCALHOST, s.port));
                        }
                    }
                    self.phase = Phase::Running;
                } else if now.duration_since(since) >= FFMPEG_START {
                    return Err(format!(
                        "ffmpeg did not start: {}",
                        tail(&self.path("ffmpeg.log"))
                    ));
                } else if let Some(c) = self.child.as_mut()
                    && let Ok(Some(status)) = c.try_wait()
                {
                    return Err(format!(
                        "ffmpeg ended ({status}): {}",
                        tail(&self.path("ffmpeg.log"))
                    ));
                }
            }
            Phase::Running => {
                if now.duration_since(self.last_report) >= Duration::from_secs(1) {
                    self.report(now);
                }
            }
        }
        Ok(())
    }

    fn report(&mut self, now: Instant) {
        self.last_report = now;
        for s in [&self.audio, &self.video].into_iter().flatten() {
            let wall = self.epoch.0 + s.last.1.saturating_duration_since(self.epoch.1);
            let sr = rtp::sender_report(s.ssrc, rtp::ntp(wall), s.last.0, s.packets, s.octets);
            let _ = self
                .out
                .send_to(&sr, (Ipv4Addr::LOCALHOST, s.port.saturating_add(1)));
        }
    }

    /// Whether ffmpeg listens: a sender report goes to each stream's RTCP port over a
    /// connected socket, and the kernel answers a port nobody has bound with an ICMP error
    /// (`ECONNREFUSED` on the socket), at once on loopback. (`/proc/net/udp` would say it
    /// too, but the unit's `ProcSubset=pid` hides it.)
    fn ports_bound(&mut self, now: Instant) -> bool {
        let Some(probe) = self.probe.as_ref() else {
            return false;
        };
        let mut all = true;
        for (sock, sent_at) in probe {
            let refused = sock.take_error().ok().flatten().is_some();
            let settled =
                sent_at.is_some_and(|t| now.duration_since(t) >= Duration::from_millis(20));
            if refused || !settled {
                all = false;
            }
        }
        if !all {
            // Probe again (an empty RTCP receiver report: 8 bytes ffmpeg ignores).
            if let Some(p) = self.probe.as_mut() {
                for (sock, sent_at) in p.iter_mut() {
                    let rr = [0x80u8, 201, 0, 1, 0x5e, 0xc0, 0, 0];
                    let _ = sock.send(&rr);
                    *sent_at = Some(now);
                }
            }
        }
        all
    }

    fn start_ffmpeg(&mut self) -> Result<(), String> {
        let mut streams = Vec::new();
        for s in [&mut self.video, &mut self.audio].into_iter().flatten() {
            s.port = free_port_pair()?;
            streams.push(SdpStream {
                codec: s.codec,
                pt: s.pt,
                port: s.port,
            });
        }
        let sdp_path = self.path("sdp");
        std::fs::write(&sdp_path, rtp::ffmpeg_sdp(&streams))
            .map_err(|e| format!("{}: {e}", sdp_path.display()))?;
        let log = std::fs::File::create(self.path("ffmpeg.log"))
            .map_err(|e| format!("the ffmpeg log: {e}"))?;
        let child = Command::new(&self.ffmpeg_bin)
            .args(["-hide_banner", "-loglevel", "warning", "-y"])
            .args(["-protocol_whitelist", "file,udp,rtp"])
            .args(["-reorder_queue_size", "2000", "-max_delay", "500000"])
            .arg("-i")
            .arg(&sdp_path)
            .args(["-c", "copy", "-f", "matroska"])
            .arg(self.path("mkv"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.ffmpeg_bin.display()))?;
        self.child = Some(child);
        let mut probe = Vec::new();
        for s in [&self.video, &self.audio].into_iter().flatten() {
            let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|u| {
                    u.connect((Ipv4Addr::LOCALHOST, s.port.saturating_add(1)))
                        .map(|()| u)
                })
                .map_err(|e| format!("the probe towards ffmpeg: {e}"))?;
            probe.push((sock, None));
        }
        self.probe = Some(probe);
        Ok(())
    }

    /// Ends ffmpeg (`q`, as a person would) and returns the file.
    fn finish(mut self) -> Result<PathBuf, String> {
        if self.dropped > 0 {
            tracing::info!(asset = %self.asset, dropped = self.dropped, "Packets the recording could not take.");
        }
        let Some(mut child) = self.child.take() else {
            return Err("no media reached the recorder".into());
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"q");
        }
        let deadline = Instant::now() + FFMPEG_STOP;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    break child.wait().ok();
                }
            }
        };
        let file = self.path("mkv");
        let len = std::fs::metadata(&file).map_or(0, |m| m.len());
        if len == 0 {
            return Err(format!(
                "ffmpeg wrote nothing ({status:?}): {}",
                tail(&self.path("ffmpeg.log"))
            ));
        }
        let _ = std::fs::remove_file(self.path("sdp"));
        Ok(file)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rec_codec(c: StrCodec) -> Option<RecCodec> {
    Some(match c {
        StrCodec::Opus => RecCodec::Opus,
        StrCodec::Vp8 => RecCodec::Vp8,
        StrCodec::Vp9 => RecCodec::Vp9,
        StrCodec::H264 => RecCodec::H264,
        StrCodec::Av1 => RecCodec::Av1,
        _ => return None,
    })
}

/// An even loopback UDP port whose successor is free too (RTP and RTCP for ffmpeg). Both are
/// released before ffmpeg binds them.
fn free_port_pair() -> Result<u16, String> {
    for _ in 0..50 {
        let Ok(a) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
            continue;
        };
        let Ok(port) = a.local_addr().map(|l| l.port()) else {
            continue;
        };
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        if UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free UDP port pair for ffmpeg".into())
}

/// The last line of a log file (what ffmpeg said last).
fn tail(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.lines().last().map(str::to_owned))
        .unwrap_or_default()
}
