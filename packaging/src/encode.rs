//! The per-rendition workers: each takes decoded source frames on a channel, filters them
//! (libavfilter), encodes them (libx264 or FFmpeg's AAC) and muxes one CMAF track, cutting a
//! fragment at every segment boundary.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;

use ffmpeg_next::{
    ChannelLayout, Dictionary, Packet, Rational, codec, filter, format, frame, picture,
    util::error::EAGAIN,
};

use crate::error::PackageError;
use crate::ladder::Rendition;
use crate::mux::{FragmentMuxer, find_encoder};
use crate::timing::{frames_per_segment, segment_index};

/// The audio rendition's fixed shape.
pub const AUDIO_RATE: u32 = 48_000;
pub const AUDIO_CHANNELS: u32 = 2;
pub const AUDIO_BITRATE: usize = 128_000;

/// What a worker produced: the muxed track and where its segments start.
#[derive(Debug)]
pub(crate) struct EncodedTrack {
    /// The fragmented MP4 file (one fragment per segment).
    pub file: PathBuf,
    /// The MP4 track's time base.
    pub time_base: Rational,
    /// Earliest presentation time of each segment, in `time_base`.
    pub segment_starts: Vec<i64>,
    /// End of the last sample, in `time_base`.
    pub end: i64,
}

/// Settings shared by every video rendition of one job.
#[derive(Debug, Clone)]
pub(crate) struct VideoJob {
    /// Filters making the picture upright (may be empty), each ending in a comma.
    pub orientation: String,
    pub frame_rate: (i32, i32),
    pub segment_seconds: u32,
    pub preset: String,
    /// The source stream's time base (frames arrive with timestamps in it).
    pub source_tb: Rational,
}

fn is_again(e: &ffmpeg_next::Error) -> bool {
    matches!(e, ffmpeg_next::Error::Other { errno } if *errno == EAGAIN)
        || matches!(e, ffmpeg_next::Error::Eof)
}

/// Tracks segment boundaries on encoded packets and cuts fragments there.
struct Segmenter {
    muxer: FragmentMuxer,
    time_base: Rational,
    segment_seconds: u32,
    current: Option<i64>,
    starts: Vec<i64>,
    end: i64,
    /// Only key frames may start a segment (video); every packet is a sync sample (audio).
    need_key: bool,
}

impl Segmenter {
    /// Writes a packet, cutting the fragment before it when it opens a new segment.
    fn push(&mut self, mut packet: Packet, encoder_tb: Rational) -> Result<(), PackageError> {
        let pts = packet.pts().or(packet.dts()).unwrap_or(0);
        let idx = segment_index(
            pts,
            (encoder_tb.numerator(), encoder_tb.denominator()),
            self.segment_seconds,
        );
        let opens = match self.current {
            None => true,
            Some(c) => idx > c && (!self.need_key || packet.is_key()),
        };
        if opens && self.current.is_some() {
            self.muxer.cut()?;
        }
        // libx264 leaves packet durations unset: a video packet lasts one frame (the encoder's
        // time base is one frame).
        let duration = match packet.duration() {
            d if d > 0 => d,
            _ if self.need_key => 1,
            _ => 0,
        };
        self.muxer.write(&mut packet)?;
        let mux_pts = packet.pts().or(packet.dts()).unwrap_or(0);
        let mux_duration =
            duration * i64::from(self.time_base.denominator()) * i64::from(encoder_tb.numerator())
                / (i64::from(encoder_tb.denominator()).max(1)
                    * i64::from(self.time_base.numerator()).max(1));
        if opens {
            self.current = Some(idx);
            self.starts.push(mux_pts);
        } else if let Some(first) = self.starts.last_mut() {
            // With B-frames the key frame is not the earliest picture of its segment only in
            // open GOPs; closed GOPs keep it first, but take the minimum to be safe.
            *first = (*first).min(mux_pts);
        }
        self.end = self.end.max(mux_pts + mux_duration);
        Ok(())
    }

    fn finish(self) -> Result<EncodedTrack, PackageError> {
        let time_base = self.time_base;
        let file = self.muxer.finish()?;
        Ok(EncodedTrack {
            file,
            time_base,
            segment_starts: self.starts,
            end: self.end,
        })
    }
}

/// Encodes one video rendition from the frames on `frames` into `file`.
pub(crate) fn video_worker(
    rendition: Rendition,
    job: VideoJob,
    frames: Receiver<frame::Video>,
    file: PathBuf,
) -> Result<EncodedTrack, PackageError> {
    let codec = find_encoder("libx264")?;
    let stage = |what: &str| format!("{} {what}", rendition.name);
    let (rate_num, rate_den) = job.frame_rate;
    let time_base = Rational::new(rate_den, rate_num);

    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(PackageError::media(stage("video encoder")))?;
    enc.set_width(rendition.width);
    enc.set_height(rendition.height);
    enc.set_format(format::Pixel::YUV420P);
    enc.set_time_base(time_base);
    enc.set_frame_rate(Some(Rational::new(rate_num, rate_den)));
    enc.set_aspect_ratio(Rational::new(1, 1));
    enc.set_bit_rate(usize::try_from(rendition.bitrate).unwrap_or(usize::MAX));
    enc.set_max_bit_rate(usize::try_from(rendition.bitrate * 3 / 2).unwrap_or(usize::MAX));
    enc.set_flags(codec::Flags::GLOBAL_HEADER);
    let keyint = frames_per_segment(job.frame_rate, job.segment_seconds);
    let mut opts = Dictionary::new();
    opts.set("preset", &job.preset);
    opts.set("forced-idr", "1");
    opts.set(
        "x264-params",
        &format!(
            "keyint={keyint}:min-keyint={keyint}:scenecut=0:open-gop=0:bframes=0:vbv-maxrate={}:vbv-bufsize={}",
            rendition.bitrate * 3 / 2 / 1000,
            rendition.bitrate * 2 / 1000
        ),
    );
    let mut encoder = enc
        .open_as_with(codec, opts)
        .map_err(PackageError::media(stage("open libx264")))?;
    let enc_tb = time_base;

    let muxer = FragmentMuxer::new(&file, codec, codec::Parameters::from(&encoder), enc_tb)?;
    let mut seg = Segmenter {
        time_base: muxer.stream_time_base(),
        muxer,
        segment_seconds: job.segment_seconds,
        current: None,
        starts: Vec::new(),
        end: 0,
        need_key: true,
    };

    let mut graph: Option<filter::Graph> = None;
    let mut filtered = frame::Video::empty();
    let mut packet = Packet::empty();
    let mut last_segment: Option<i64> = None;
    let mut frames_out = 0u64;

    let mut drain_encoder = |encoder: &mut ffmpeg_next::encoder::Video,
                             seg: &mut Segmenter|
     -> Result<(), PackageError> {
        loop {
            match encoder.receive_packet(&mut packet) {
                Ok(()) => {
                    let p = std::mem::replace(&mut packet, Packet::empty());
                    seg.push(p, enc_tb)?;
                }
                Err(e) if is_again(&e) => return Ok(()),
                Err(e) => return Err(PackageError::media(stage("encode"))(e)),
            }
        }
    };

    let mut encode_filtered = |graph: &mut filter::Graph,
                               encoder: &mut ffmpeg_next::encoder::Video,
                               seg: &mut Segmenter,
                               drain: &mut dyn FnMut(
        &mut ffmpeg_next::encoder::Video,
        &mut Segmenter,
    ) -> Result<(), PackageError>|
     -> Result<(), PackageError> {
        let Some(mut sink) = graph.get("out") else {
            return Err(PackageError::Internal(
                "filter graph without its sink".into(),
            ));
        };
        loop {
            match sink.sink().frame(&mut filtered) {
                Ok(()) => {
                    let pts = filtered.pts().unwrap_or(0);
                    let idx = segment_index(
                        pts,
                        (enc_tb.numerator(), enc_tb.denominator()),
                        job.segment_seconds,
                    );
                    // A key frame exactly at every segment boundary, and nowhere else forced.
                    let kind = if last_segment.is_none_or(|l| idx > l) {
                        last_segment = Some(idx);
                        picture::Type::I
                    } else {
                        picture::Type::None
                    };
                    filtered.set_kind(kind);
                    encoder
                        .send_frame(&filtered)
                        .map_err(PackageError::media(stage("encode")))?;
                    frames_out += 1;
                    drain(encoder, seg)?;
                }
                Err(e) if is_again(&e) => return Ok(()),
                Err(e) => return Err(PackageError::media(stage("filter"))(e)),
            }
        }
    };

    // The end of the last frame, so the fps filter keeps it (closing at its start drops it).
    let mut last_pts: Option<i64> = None;
    let mut last_delta = 1i64;
    for frame in frames.iter() {
        if let Some(pts) = frame.pts() {
            if let Some(prev) = last_pts
                && pts > prev
            {
                last_delta = pts - prev;
            }
            last_pts = Some(last_pts.map_or(pts, |p| p.max(pts)));
        }
        if graph.is_none() {
            graph = Some(
                video_graph(&rendition, &job, &frame)
                    .map_err(PackageError::media(stage("filter graph")))?,
            );
        }
        let Some(g) = graph.as_mut() else { continue };
        {
            let Some(mut src) = g.get("in") else {
                return Err(PackageError::Internal(
                    "filter graph without its source".into(),
                ));
            };
            src.source()
                .add(&frame)
                .map_err(PackageError::media(stage("filter input")))?;
        }
        encode_filtered(g, &mut encoder, &mut seg, &mut drain_encoder)?;
    }
    // The channel closed: the source is finished (or the job is being abandoned; the caller
    // then ignores this result).
    if let Some(g) = graph.as_mut() {
        if let Some(mut src) = g.get("in") {
            let end = match last_pts {
                Some(p) => src.source().close(p.saturating_add(last_delta)),
                None => src.source().flush(),
            };
            end.map_err(PackageError::media(stage("filter end")))?;
        }
        encode_filtered(g, &mut encoder, &mut seg, &mut drain_encoder)?;
    }
    encoder
        .send_eof()
        .map_err(PackageError::media(stage("encoder end")))?;
    drain_encoder(&mut encoder, &mut seg)?;
    if frames_out == 0 {
        return Err(PackageError::Damaged(
            "no video frame could be decoded".into(),
        ));
    }
    seg.finish()
}

/// buffer -> orientation -> fps -> scale -> yuv420p -> buffersink, sized from the first frame.
fn video_graph(
    rendition: &Rendition,
    job: &VideoJob,
    first: &frame::Video,
) -> Result<filter::Graph, ffmpeg_next::Error> {
    let mut graph = filter::Graph::new();
    let pix = first
        .format()
        .descriptor()
        .map(|d| d.name())
        .unwrap_or("yuv420p");
    let sar = first.aspect_ratio();
    let (sar_num, sar_den) = if sar.numerator() > 0 && sar.denominator() > 0 {
        (sar.numerator(), sar.denominator())
    } else {
        (1, 1)
    };
    let args = format!(
        "video_size={}x{}:pix_fmt={pix}:time_base={}/{}:pixel_aspect={sar_num}/{sar_den}",
        first.width(),
        first.height(),
        job.source_tb.numerator(),
        job.source_tb.denominator()
    );
    let buffer = filter::find("buffer").ok_or(ffmpeg_next::Error::FilterNotFound)?;
    let sink = filter::find("buffersink").ok_or(ffmpeg_next::Error::FilterNotFound)?;
    graph.add(&buffer, "in", &args)?;
    graph.add(&sink, "out", "")?;
    let spec = format!(
        "{}fps=fps={}/{}:start_time=0,scale=w={}:h={}:flags=bicubic,setsar=1,format=yuv420p",
        job.orientation, job.frame_rate.0, job.frame_rate.1, rendition.width, rendition.height
    );
    graph.output("in", 0)?.input("out", 0)?.parse(&spec)?;
    graph.validate()?;
    Ok(graph)
}

/// Encodes the audio rendition (48 kHz stereo AAC-LC) from the frames on `frames`.
pub(crate) fn audio_worker(
    segment_seconds: u32,
    source_tb: Rational,
    frames: Receiver<frame::Audio>,
    file: PathBuf,
) -> Result<EncodedTrack, PackageError> {
    let codec = find_encoder("aac")?;
    let time_base = Rational::new(1, AUDIO_RATE as i32);
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .audio()
        .map_err(PackageError::media("audio encoder"))?;
    enc.set_rate(AUDIO_RATE as i32);
    enc.set_channel_layout(ChannelLayout::STEREO);
    enc.set_channels(AUDIO_CHANNELS as i32);
    enc.set_format(format::Sample::F32(format::sample::Type::Planar));
    enc.set_bit_rate(AUDIO_BITRATE);
    enc.set_time_base(time_base);
    enc.set_flags(codec::Flags::GLOBAL_HEADER);
    let mut encoder = enc
        .open_as(codec)
        .map_err(PackageError::media("open the aac encoder"))?;
    let frame_size = encoder.frame_size().max(1);

    let muxer = FragmentMuxer::new(&file, codec, codec::Parameters::from(&encoder), time_base)?;
    let mut seg = Segmenter {
        time_base: muxer.stream_time_base(),
        muxer,
        segment_seconds,
        current: None,
        starts: Vec::new(),
        end: 0,
        need_key: false,
    };
    let mut graph: Option<filter::Graph> = None;
    let mut filtered = frame::Audio::empty();
    let mut packet = Packet::empty();
    let mut samples = 0u64;

    let mut drain_encoder = |encoder: &mut ffmpeg_next::encoder::Audio,
                             seg: &mut Segmenter|
     -> Result<(), PackageError> {
        loop {
            match encoder.receive_packet(&mut packet) {
                Ok(()) => {
                    let p = std::mem::replace(&mut packet, Packet::empty());
                    seg.push(p, time_base)?;
                }
                Err(e) if is_again(&e) => return Ok(()),
                Err(e) => return Err(PackageError::media("encode audio")(e)),
            }
        }
    };
    let mut encode_filtered = |graph: &mut filter::Graph,
                               encoder: &mut ffmpeg_next::encoder::Audio,
                               seg: &mut Segmenter,
                               drain: &mut dyn FnMut(
        &mut ffmpeg_next::encoder::Audio,
        &mut Segmenter,
    ) -> Result<(), PackageError>|
     -> Result<(), PackageError> {
        let Some(mut sink) = graph.get("out") else {
            return Err(PackageError::Internal(
                "filter graph without its sink".into(),
            ));
        };
        loop {
            match sink.sink().frame(&mut filtered) {
                Ok(()) => {
                    samples += filtered.samples() as u64;
                    encoder
                        .send_frame(&filtered)
                        .map_err(PackageError::media("encode audio"))?;
                    drain(encoder, seg)?;
                }
                Err(e) if is_again(&e) => return Ok(()),
                Err(e) => return Err(PackageError::media("filter audio")(e)),
            }
        }
    };

    for frame in frames.iter() {
        if graph.is_none() {
            graph = Some(
                audio_graph(&frame, source_tb, frame_size)
                    .map_err(PackageError::media("audio filter graph"))?,
            );
        }
        let Some(g) = graph.as_mut() else { continue };
        {
            let Some(mut src) = g.get("in") else {
                return Err(PackageError::Internal(
                    "filter graph without its source".into(),
                ));
            };
            src.source()
                .add(&frame)
                .map_err(PackageError::media("audio filter input"))?;
        }
        encode_filtered(g, &mut encoder, &mut seg, &mut drain_encoder)?;
    }
    if let Some(g) = graph.as_mut() {
        if let Some(mut src) = g.get("in") {
            src.source()
                .flush()
                .map_err(PackageError::media("audio filter end"))?;
        }
        encode_filtered(g, &mut encoder, &mut seg, &mut drain_encoder)?;
    }
    encoder
        .send_eof()
        .map_err(PackageError::media("audio encoder end"))?;
    drain_encoder(&mut encoder, &mut seg)?;
    if samples == 0 {
        return Err(PackageError::Damaged("no audio could be decoded".into()));
    }
    seg.finish()
}

/// abuffer -> aresample (48 kHz, timestamps kept, silence before a late start) -> aformat
/// (fltp stereo) -> abuffersink in frames of the encoder's size.
fn audio_graph(
    first: &frame::Audio,
    source_tb: Rational,
    frame_size: u32,
) -> Result<filter::Graph, ffmpeg_next::Error> {
    let mut graph = filter::Graph::new();
    let layout = if first.channel_layout().bits() != 0 {
        first.channel_layout()
    } else {
        ChannelLayout::default(i32::from(first.channels()))
    };
    let args = format!(
        "time_base={}/{}:sample_rate={}:sample_fmt={}:channel_layout=0x{:x}",
        source_tb.numerator(),
        source_tb.denominator(),
        first.rate(),
        first.format().name(),
        layout.bits()
    );
    let abuffer = filter::find("abuffer").ok_or(ffmpeg_next::Error::FilterNotFound)?;
    let sink = filter::find("abuffersink").ok_or(ffmpeg_next::Error::FilterNotFound)?;
    graph.add(&abuffer, "in", &args)?;
    graph.add(&sink, "out", "")?;
    let spec = format!(
        "aresample={AUDIO_RATE}:async=1:first_pts=0,aformat=sample_fmts=fltp:sample_rates={AUDIO_RATE}:channel_layouts=stereo"
    );
    graph.output("in", 0)?.input("out", 0)?.parse(&spec)?;
    graph.validate()?;
    if let Some(mut out) = graph.get("out") {
        out.sink().set_frame_size(frame_size);
    }
    Ok(graph)
}
