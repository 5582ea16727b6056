//! Estuary packaging: one source file into a CMAF ladder with HLS and DASH manifests and an
//! `asset.json`, published atomically.
//!
//! A job decodes the input once on the calling thread and hands every decoded frame to one
//! worker thread per rendition (each video rendition and the audio rendition), which filters,
//! encodes and muxes its own CMAF track. When every worker is done, each track file is cut
//! into `init.mp4` and numbered segments, the playlists, the MPD and `asset.json` are written,
//! and the staging folder is renamed into place.

pub mod boxes;
mod encode;
pub mod error;
pub mod ladder;
pub mod manifests;
mod mux;
pub mod publish;
pub mod rotation;
pub mod timing;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use estuary_common::asset::{
    AssetManifest, AudioRendition, MANIFEST_FILE, MANIFEST_VERSION, VideoRendition,
};
use ffmpeg_next::{Rational, codec, format, frame, media};

use encode::{AUDIO_CHANNELS, AUDIO_RATE, EncodedTrack, VideoJob};
pub use error::PackageError;
use manifests::{Segment, Track, TrackKind};
use publish::Staging;

/// What to package and how.
#[derive(Debug, Clone)]
pub struct PackageOptions {
    pub input: PathBuf,
    /// The final asset folder; must not exist.
    pub out: PathBuf,
    /// The ladder, e.g. `1080p,720p,480p` ([`ladder::DEFAULT_LADDER`]).
    pub ladder: String,
    /// Target segment length in whole seconds (1..=30).
    pub segment_seconds: u32,
    /// The asset id written into `asset.json` (defaults to the folder name).
    pub asset_id: Option<String>,
    /// The x264 preset.
    pub preset: String,
    /// Set from outside (a signal handler) to abandon the job; it then fails and cleans up.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct PackageReport {
    pub asset: String,
    pub dir: PathBuf,
    pub duration_seconds: f64,
    /// Packets that could not be decoded and were skipped.
    pub skipped_packets: u64,
    pub manifest: AssetManifest,
}

use estuary_common::packaging::{SEGMENT_SECONDS, X264_PRESETS};

/// A rendition's encoding thread.
type Worker = JoinHandle<Result<EncodedTrack, PackageError>>;

/// A source stream's decoder and where its frames go.
struct Input<D> {
    index: usize,
    decoder: D,
    /// Start offset subtracted from every timestamp, in the stream's time base.
    offset: i64,
    time_base: Rational,
}

/// Packages `opts.input` into `opts.out`. `progress` is called now and then with the
/// fraction of the source decoded (0..1). On error nothing is left at `opts.out`.
pub fn package(
    opts: &PackageOptions,
    progress: &mut dyn FnMut(f64),
) -> Result<PackageReport, PackageError> {
    let rungs = ladder::parse_ladder(&opts.ladder)?;
    if !SEGMENT_SECONDS.contains(&opts.segment_seconds) {
        return Err(PackageError::Usage(format!(
            "--segment-seconds: between {} and {}",
            SEGMENT_SECONDS.start(),
            SEGMENT_SECONDS.end()
        )));
    }
    if !X264_PRESETS.contains(&opts.preset.as_str()) {
        return Err(PackageError::Usage(format!(
            "--preset: one of {}",
            X264_PRESETS.join(", ")
        )));
    }
    let asset = match &opts.asset_id {
        Some(id) => id.clone(),
        None => opts
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    // The fleet's rule (the control plane and the edges refuse any other id): an asset the
    // packager makes is one that can be pushed and served.
    if !estuary_common::asset::valid_asset_id(&asset) {
        return Err(PackageError::Usage(format!(
            "--asset-id: {asset:?} is not a valid asset id ({})",
            estuary_common::asset::ASSET_ID_RULE
        )));
    }
    let input_err = |reason: String| PackageError::Input {
        path: opts.input.clone(),
        reason,
    };
    let meta = std::fs::metadata(&opts.input).map_err(|e| input_err(e.to_string()))?;
    if !meta.is_file() {
        return Err(input_err("not a regular file".into()));
    }
    if meta.len() == 0 {
        return Err(input_err("the file is empty".into()));
    }
    ffmpeg_next::init().map_err(PackageError::media("initialize FFmpeg"))?;
    ffmpeg_next::log::set_level(ffmpeg_next::log::Level::Fatal);

    let staging = Staging::create(&opts.out)?;
    let mut ictx = format::input(&opts.input)
        .map_err(|e| input_err(format!("not a media file FFmpeg can read ({e})")))?;

    // Pick the streams: the best video stream that is not a cover picture, the best audio.
    let video_stream = ictx
        .streams()
        .filter(|s| s.parameters().medium() == media::Type::Video)
        .filter(|s| {
            !s.disposition()
                .contains(format::stream::Disposition::ATTACHED_PIC)
        })
        .max_by_key(|s| {
            let p = s.parameters();
            // SAFETY-free: width/height come from the codec parameters.
            decoder_size(&p)
                .map(|(w, h)| u64::from(w) * u64::from(h))
                .unwrap_or(0)
        })
        .map(|s| s.index());
    let audio_stream = ictx.streams().best(media::Type::Audio).map(|s| s.index());
    if video_stream.is_none() && audio_stream.is_none() {
        return Err(PackageError::Unsupported(
            "the input has neither video nor audio".into(),
        ));
    }

    // The common start: every track starts at 0 = the earliest stream start.
    let start_seconds = [video_stream, audio_stream]
        .iter()
        .flatten()
        .filter_map(|&i| ictx.stream(i))
        .filter(|s| s.start_time() != ffmpeg_next::ffi::AV_NOPTS_VALUE)
        .map(|s| s.start_time() as f64 * f64::from(s.time_base()))
        .fold(f64::INFINITY, f64::min);
    let start_seconds = if start_seconds.is_finite() {
        start_seconds
    } else {
        0.0
    };
    let offset_in = |tb: Rational| -> i64 {
        if tb.numerator() <= 0 {
            return 0;
        }
        (start_seconds * f64::from(tb.denominator()) / f64::from(tb.numerator())).round() as i64
    };
    let declared_seconds = {
        let d = ictx.duration();
        if d > 0 {
            d as f64 / f64::from(ffmpeg_next::ffi::AV_TIME_BASE)
        } else {
            0.0
        }
    };

    let mut video: Option<Input<ffmpeg_next::decoder::Video>> = None;
    let mut plan = Vec::new();
    let mut job = None;
    if let Some(idx) = video_stream {
        let stream = ictx
            .stream(idx)
            .ok_or_else(|| PackageError::Internal("video stream vanished".into()))?;
        let mut ctx = codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| PackageError::Unsupported(format!("video stream: {e}")))?;
        ctx.set_threading(codec::threading::Config {
            kind: codec::threading::Type::Frame,
            count: 2,
            ..Default::default()
        });
        let mut decoder = ctx.decoder();
        decoder.set_packet_time_base(stream.time_base());
        let decoder = decoder.video().map_err(|e| {
            PackageError::Unsupported(format!("cannot decode the video stream: {e}"))
        })?;
        let (w, h) = (decoder.width(), decoder.height());
        if w == 0 || h == 0 {
            return Err(PackageError::Damaged(
                "the video stream has no picture size".into(),
            ));
        }
        ladder::check_source_size(w, h)?;
        let matrix = stream
            .side_data()
            .find(|sd| sd.kind() == codec::packet::side_data::Type::DisplayMatrix)
            .and_then(|sd| rotation::parse_matrix(sd.data()));
        let orientation = rotation::orientation(matrix);
        let sar = decoder.aspect_ratio();
        let display_w = if sar.numerator() > 0 && sar.denominator() > 0 {
            ((f64::from(w) * f64::from(sar)).round() as u32).max(2)
        } else {
            w
        };
        let (dw, dh) = if orientation.swaps {
            (h, display_w)
        } else {
            (display_w, h)
        };
        plan = ladder::select(&rungs, dw, dh)?;
        let avg = stream.avg_frame_rate();
        let guess = stream.rate();
        let frame_rate = timing::output_frame_rate(
            (avg.numerator(), avg.denominator()),
            (guess.numerator(), guess.denominator()),
        );
        job = Some(VideoJob {
            orientation: orientation.filters,
            frame_rate,
            segment_seconds: opts.segment_seconds,
            preset: opts.preset.clone(),
            source_tb: stream.time_base(),
        });
        video = Some(Input {
            index: idx,
            decoder,
            offset: offset_in(stream.time_base()),
            time_base: stream.time_base(),
        });
    }
    let mut audio: Option<Input<ffmpeg_next::decoder::Audio>> = None;
    if let Some(idx) = audio_stream {
        let stream = ictx
            .stream(idx)
            .ok_or_else(|| PackageError::Internal("audio stream vanished".into()))?;
        let opened = codec::context::Context::from_parameters(stream.parameters()).and_then(|c| {
            let mut d = c.decoder();
            d.set_packet_time_base(stream.time_base());
            d.audio()
        });
        match opened {
            Ok(decoder) => {
                audio = Some(Input {
                    index: idx,
                    decoder,
                    offset: offset_in(stream.time_base()),
                    time_base: stream.time_base(),
                })
            }
            Err(e) if video.is_some() => {
                eprintln!(
                    "estuary package: warning: the audio stream cannot be decoded ({e}); packaging video only"
                );
            }
            Err(e) => {
                return Err(PackageError::Unsupported(format!(
                    "cannot decode the audio stream: {e}"
                )));
            }
        }
    }

    // Start the workers: one per video rendition, one for audio.
    let mut video_workers: Vec<(ladder::Rendition, SyncSender<frame::Video>, Worker)> = Vec::new();
    if let Some(job) = &job {
        for rendition in &plan {
            let dir = staging.dir.join(&rendition.name);
            std::fs::create_dir(&dir).map_err(PackageError::io("create", &dir))?;
            let (tx, rx) = sync_channel::<frame::Video>(4);
            let (r, j, file) = (rendition.clone(), job.clone(), dir.join("track.mp4"));
            let handle = std::thread::Builder::new()
                .name(format!("package-{}", rendition.name))
                .spawn(move || encode::video_worker(r, j, rx, file))
                .map_err(PackageError::io("start a worker thread", &dir))?;
            video_workers.push((rendition.clone(), tx, handle));
        }
    }
    let mut audio_worker: Option<(SyncSender<frame::Audio>, Worker)> = None;
    if let Some(a) = &audio {
        let dir = staging.dir.join("audio");
        std::fs::create_dir(&dir).map_err(PackageError::io("create", &dir))?;
        let (tx, rx) = sync_channel::<frame::Audio>(16);
        let (seg, tb, file) = (opts.segment_seconds, a.time_base, dir.join("track.mp4"));
        let handle = std::thread::Builder::new()
            .name("package-audio".into())
            .spawn(move || encode::audio_worker(seg, tb, rx, file))
            .map_err(PackageError::io("start a worker thread", &dir))?;
        audio_worker = Some((tx, handle));
    }

    // Decode once, fan out.
    let mut skipped = 0u64;
    let mut decoded_end = 0.0f64;
    let mut last_progress = -1.0f64;
    let mut worker_gone = false;
    let mut vframe = frame::Video::empty();
    let mut aframe = frame::Audio::empty();
    let mut read_error = None;
    let mut eof = false;
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    };
    while !eof && !worker_gone {
        if cancelled() {
            // Dropping the senders and the staging folder on return stops the workers and
            // removes everything written so far.
            return Err(PackageError::Cancelled);
        }
        // A fresh packet each time: `av_read_frame` does not release the buffer of the packet
        // it reads into, so reusing one packet kept every packet of the source in memory (the
        // packager grew by one byte per byte of source). This one is freed at the end of the
        // loop body.
        let mut packet = ffmpeg_next::Packet::empty();
        match packet.read(&mut ictx) {
            Ok(()) => {}
            Err(ffmpeg_next::Error::Eof) => eof = true,
            Err(ffmpeg_next::Error::InvalidData) => {
                skipped += 1;
                continue;
            }
            Err(e) => {
                read_error = Some(e);
                eof = true;
            }
        }
        let stream = packet.stream();
        if let Some(v) = video.as_mut().filter(|v| eof || v.index == stream) {
            let sent = if eof {
                v.decoder.send_eof()
            } else {
                v.decoder.send_packet(&packet)
            };
            if sent.is_err() && !eof {
                skipped += 1;
            }
            while v.decoder.receive_frame(&mut vframe).is_ok() {
                let Some(ts) = vframe.timestamp() else {
                    skipped += 1;
                    continue;
                };
                let (fw, fh) = (vframe.width(), vframe.height());
                if ladder::check_source_size(fw, fh).is_err() || fw == 0 || fh == 0 {
                    return Err(PackageError::Damaged(format!(
                        "a video frame of {fw}x{fh} in the middle of the stream"
                    )));
                }
                let pts = ts - v.offset;
                vframe.set_pts(Some(pts));
                vframe.set_kind(ffmpeg_next::picture::Type::None);
                decoded_end = decoded_end.max(pts as f64 * f64::from(v.time_base));
                for (_, tx, _) in &video_workers {
                    if tx.send(mux::share_video(&vframe)).is_err() {
                        worker_gone = true;
                    }
                }
            }
        }
        if let Some(a) = audio.as_mut().filter(|a| eof || a.index == stream) {
            let sent = if eof {
                a.decoder.send_eof()
            } else {
                a.decoder.send_packet(&packet)
            };
            if sent.is_err() && !eof {
                skipped += 1;
            }
            while a.decoder.receive_frame(&mut aframe).is_ok() {
                let Some(ts) = aframe.timestamp() else {
                    skipped += 1;
                    continue;
                };
                let pts = ts - a.offset;
                aframe.set_pts(Some(pts));
                let end = pts as f64 * f64::from(a.time_base)
                    + aframe.samples() as f64 / f64::from(aframe.rate().max(1));
                decoded_end = decoded_end.max(end);
                if let Some((tx, _)) = &audio_worker
                    && tx.send(aframe.clone()).is_err()
                {
                    worker_gone = true;
                }
            }
        }
        if declared_seconds > 0.0 {
            let fraction = (decoded_end / declared_seconds).clamp(0.0, 1.0);
            if fraction - last_progress >= 0.05 {
                last_progress = fraction;
                progress(fraction * 0.99);
            }
        }
    }

    // Close the channels and collect the workers; the first error wins.
    let mut first_error: Option<PackageError> = None;
    let mut video_tracks = Vec::new();
    for (rendition, tx, handle) in video_workers {
        drop(tx);
        match handle.join() {
            Ok(Ok(t)) => video_tracks.push((rendition, t)),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(PackageError::Internal(format!(
                    "the {} worker panicked",
                    rendition.name
                )));
            }
        }
    }
    let mut audio_track = None;
    if let Some((tx, handle)) = audio_worker {
        drop(tx);
        match handle.join() {
            Ok(Ok(t)) => audio_track = Some(t),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error
                    .get_or_insert(PackageError::Internal("the audio worker panicked".into()));
            }
        }
    }
    if cancelled() {
        return Err(PackageError::Cancelled);
    }
    if let Some(e) = read_error {
        return Err(PackageError::Damaged(format!(
            "reading the input failed after {decoded_end:.1} s: {e}"
        )));
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if declared_seconds > 0.0 && decoded_end < declared_seconds * 0.9 - 0.5 {
        return Err(PackageError::Damaged(format!(
            "the input ends early: {decoded_end:.1} s decoded of the {declared_seconds:.1} s its header declares (truncated file?)"
        )));
    }

    // Cut every track into its files.
    let mut videos: Vec<Track> = Vec::new();
    for (rendition, encoded) in &video_tracks {
        let (codecs, segments) = cut_track(&staging.dir.join(&rendition.name), encoded, true)?;
        let (n, d) = job.as_ref().map(|j| j.frame_rate).unwrap_or((25, 1));
        videos.push(Track {
            name: rendition.name.clone(),
            kind: TrackKind::Video {
                width: rendition.width,
                height: rendition.height,
                frame_rate: (n, d),
            },
            codecs,
            timescale: timescale(encoded.time_base)?,
            segments,
        });
    }
    let audio = match &audio_track {
        Some(encoded) => {
            let (codecs, segments) = cut_track(&staging.dir.join("audio"), encoded, false)?;
            Some(Track {
                name: "audio".into(),
                kind: TrackKind::Audio {
                    sample_rate: AUDIO_RATE,
                    channels: AUDIO_CHANNELS,
                },
                codecs,
                timescale: timescale(encoded.time_base)?,
                segments,
            })
        }
        None => None,
    };
    let duration_seconds = videos
        .first()
        .or(audio.as_ref())
        .map(Track::duration_seconds)
        .unwrap_or(0.0);
    if duration_seconds <= 0.0 {
        return Err(PackageError::Damaged("nothing could be decoded".into()));
    }

    // Manifests.
    for t in videos.iter().chain(audio.iter()) {
        publish::write_new(
            &staging.dir.join(&t.name).join("index.m3u8"),
            manifests::media_playlist(t).as_bytes(),
        )?;
    }
    publish::write_new(
        &staging.dir.join("master.m3u8"),
        manifests::master_playlist(&videos, audio.as_ref()).as_bytes(),
    )?;
    publish::write_new(
        &staging.dir.join("manifest.mpd"),
        manifests::mpd(
            &videos,
            audio.as_ref(),
            duration_seconds,
            f64::from(opts.segment_seconds),
        )
        .as_bytes(),
    )?;

    let files = publish::digest_files(&staging.dir, MANIFEST_FILE)?;
    let merkle_root = publish::segments_merkle_root(&files);
    let manifest = AssetManifest {
        version: MANIFEST_VERSION,
        asset: asset.clone(),
        duration_seconds,
        segment_seconds: f64::from(opts.segment_seconds),
        video: videos
            .iter()
            .map(|t| {
                let (width, height) = match t.kind {
                    TrackKind::Video { width, height, .. } => (width, height),
                    TrackKind::Audio { .. } => (0, 0),
                };
                VideoRendition {
                    name: t.name.clone(),
                    width,
                    height,
                    bandwidth: t.peak_bandwidth(),
                    average_bandwidth: t.average_bandwidth(),
                    codecs: t.codecs.clone(),
                    frame_rate: t.frame_rate().unwrap_or(0.0),
                    playlist: format!("{}/index.m3u8", t.name),
                    init: format!("{}/init.mp4", t.name),
                    segments: u32::try_from(t.segments.len()).unwrap_or(u32::MAX),
                }
            })
            .collect(),
        audio: audio
            .iter()
            .map(|t| AudioRendition {
                name: t.name.clone(),
                bandwidth: t.peak_bandwidth(),
                average_bandwidth: t.average_bandwidth(),
                codecs: t.codecs.clone(),
                channels: AUDIO_CHANNELS,
                sample_rate: AUDIO_RATE,
                playlist: format!("{}/index.m3u8", t.name),
                init: format!("{}/init.mp4", t.name),
                segments: u32::try_from(t.segments.len()).unwrap_or(u32::MAX),
            })
            .collect(),
        files,
        merkle_root,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| PackageError::Internal(format!("asset.json: {e}")))?;
    publish::write_new(&staging.dir.join(MANIFEST_FILE), &json)?;
    let dir = staging.publish()?;
    progress(1.0);
    Ok(PackageReport {
        asset,
        dir,
        duration_seconds,
        skipped_packets: skipped,
        manifest,
    })
}

fn decoder_size(p: &codec::Parameters) -> Option<(u32, u32)> {
    let ctx = codec::context::Context::from_parameters(p.clone()).ok()?;
    let v = ctx.decoder().video().ok()?;
    Some((v.width(), v.height()))
}

fn timescale(tb: Rational) -> Result<u32, PackageError> {
    if tb.numerator() != 1 || tb.denominator() <= 0 {
        return Err(PackageError::Internal(format!(
            "unexpected mp4 time base {tb}"
        )));
    }
    u32::try_from(tb.denominator()).map_err(|_| PackageError::Internal("mp4 time base".into()))
}

/// The largest `ftyp`+`moov` header, or run of boxes before a fragment's `mdat`, that
/// cutting reads into memory. The muxer writes a few kilobytes of each; anything this large
/// is not its output.
const MAX_BOX_RUN: usize = 64 << 20;

/// Reads `range` of `file` (at most [`MAX_BOX_RUN`] bytes).
fn read_range(
    file: &mut std::fs::File,
    path: &Path,
    range: std::ops::Range<usize>,
) -> Result<Vec<u8>, PackageError> {
    use std::io::{Read, Seek, SeekFrom};
    let n = range.end.saturating_sub(range.start);
    if n > MAX_BOX_RUN {
        return Err(PackageError::Internal(format!(
            "{}: {n} bytes of mp4 boxes before media data at byte {}",
            path.display(),
            range.start
        )));
    }
    let mut bytes = vec![0u8; n];
    file.seek(SeekFrom::Start(range.start as u64))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(PackageError::io("read", path))?;
    Ok(bytes)
}

/// Cuts a worker's fragmented MP4 into `init.mp4` and `seg_NNNNN.m4s` in `dir` and removes
/// it. Returns the codec string and the segments. The track is read box by box and each
/// fragment's media data copied through a small buffer: memory stays the same for a track
/// of a megabyte or of many gigabytes.
fn cut_track(
    dir: &Path,
    encoded: &EncodedTrack,
    is_video: bool,
) -> Result<(String, Vec<Segment>), PackageError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let path = &encoded.file;
    let mut file = std::fs::File::open(path).map_err(PackageError::io("open", path))?;
    let len = file
        .metadata()
        .map_err(PackageError::io("stat", path))?
        .len();
    let len = usize::try_from(len)
        .map_err(|_| PackageError::Internal(format!("{}: too large", path.display())))?;
    let layout = boxes::layout(&boxes::top_level_boxes_in(&mut file, len)?, len)?;
    if layout.fragments.len() != encoded.segment_starts.len() {
        return Err(PackageError::Internal(format!(
            "{}: {} fragments for {} segments",
            dir.display(),
            layout.fragments.len(),
            encoded.segment_starts.len()
        )));
    }
    let init = read_range(&mut file, path, 0..layout.header_end)?;
    let codecs = if is_video {
        boxes::avc_codec_string(&init)
            .ok_or_else(|| PackageError::Internal("no avcC box in the video init segment".into()))?
    } else {
        "mp4a.40.2".to_owned()
    };
    publish::write_new(&dir.join("init.mp4"), &init)?;
    drop(init);
    // Segment times come from the file itself (`tfdt`): the muxer shifts a track so that it
    // starts at 0 (the AAC encoder's priming makes audio start at -1024 samples).
    let mut starts = Vec::with_capacity(layout.fragments.len());
    for fragment in &layout.fragments {
        let head = read_range(&mut file, path, fragment.start..fragment.mdat)?;
        let t = boxes::tfdt(&head)
            .ok_or_else(|| PackageError::Internal("a fragment without tfdt".into()))?;
        let t = i64::try_from(t).map_err(|_| PackageError::Internal("tfdt out of range".into()))?;
        if starts.last().is_some_and(|&prev| t <= prev) {
            return Err(PackageError::Internal("fragment times go backwards".into()));
        }
        starts.push(t);
    }
    let shift =
        starts.first().copied().unwrap_or(0) - encoded.segment_starts.first().copied().unwrap_or(0);
    let end = encoded.end + shift;
    // A last audio fragment of a few samples (encoder padding) joins the one before it: a
    // media segment may hold more than one fragment.
    let mut groups: Vec<(usize, usize)> = (0..layout.fragments.len()).map(|i| (i, i + 1)).collect();
    if !is_video && groups.len() > 1 {
        let last_start = starts[starts.len() - 1];
        if ((end - last_start) as f64) < 0.5 * f64::from(timescale(encoded.time_base)?) {
            groups.pop();
            if let Some(g) = groups.last_mut() {
                g.1 += 1;
            }
        }
    }
    let styp = boxes::styp();
    let mut segments = Vec::with_capacity(groups.len());
    for (n, &(first, last)) in groups.iter().enumerate() {
        let start = starts[first];
        let stop = starts.get(last).copied().unwrap_or(end);
        let out_path = dir.join(manifests::segment_name(n + 1));
        let mut out = std::io::BufWriter::with_capacity(1 << 20, publish::create_new(&out_path)?);
        let write_err = PackageError::io("write", &out_path);
        let mut size = styp.len() as u64;
        let mut write = || -> std::io::Result<()> {
            out.write_all(&styp)?;
            for fragment in &layout.fragments[first..last] {
                let head = read_range(&mut file, path, fragment.start..fragment.mdat)
                    .map_err(std::io::Error::other)?;
                let head = head.strip_prefix(&styp[..]).unwrap_or(&head);
                out.write_all(head)?;
                file.seek(SeekFrom::Start(fragment.mdat as u64))?;
                let media = (fragment.end - fragment.mdat) as u64;
                let copied = std::io::copy(&mut Read::by_ref(&mut file).take(media), &mut out)?;
                if copied != media {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the track ended inside a fragment",
                    ));
                }
                size += head.len() as u64 + media;
            }
            out.flush()
        };
        write().map_err(write_err)?;
        segments.push(Segment {
            start,
            duration: (stop - start).max(1),
            size,
        });
    }
    drop(file);
    std::fs::remove_file(&encoded.file).map_err(PackageError::io("remove", &encoded.file))?;
    Ok((codecs, segments))
}

/// Sets `cancel` if this process's parent goes away (the parent pid changes): a packaging job
/// run by an origin that was killed outright stops and removes its staging folder instead of
/// running on as an orphan. Polls twice a second on a small thread.
pub fn cancel_when_orphaned(
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<()> {
    let parent = std::os::unix::process::parent_id();
    std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(500));
                if std::os::unix::process::parent_id() != parent {
                    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            }
        })
        .map(drop)
}
