//! One rendition's fragmented MP4 muxer, cut into fragments where packaging says.

use std::path::{Path, PathBuf};

use ffmpeg_next::{Dictionary, Packet, Rational, codec, encoder, format};

use crate::error::PackageError;

/// The `mp4` muxer writing a CMAF track: an empty `moov` up front, then one `moof`+`mdat`
/// per call to [`FragmentMuxer::cut`] (`frag_custom`), each with a `tfdt`.
pub(crate) struct FragmentMuxer {
    octx: format::context::Output,
    encoder_tb: Rational,
    stream_tb: Rational,
    pub path: PathBuf,
    /// Packets written since the last cut.
    pending: usize,
}

impl FragmentMuxer {
    /// Opens `path` and writes the header for one stream with the encoder's parameters.
    pub fn new(
        path: &Path,
        codec: ffmpeg_next::Codec,
        parameters: codec::Parameters,
        encoder_tb: Rational,
    ) -> Result<Self, PackageError> {
        let mut octx =
            format::output_as(path, "mp4").map_err(PackageError::media("open the mp4 muxer"))?;
        {
            let mut stream = octx
                .add_stream(codec)
                .map_err(PackageError::media("add the mp4 stream"))?;
            stream.set_parameters(parameters);
            stream.set_time_base(encoder_tb);
        }
        let mut opts = Dictionary::new();
        opts.set("movflags", "+frag_custom+empty_moov+default_base_moof+cmaf");
        octx.write_header_with(opts)
            .map_err(PackageError::media("write the mp4 header"))?;
        let stream_tb = octx
            .stream(0)
            .map(|s| s.time_base())
            .ok_or_else(|| PackageError::Internal("the mp4 muxer lost its stream".into()))?;
        Ok(Self {
            octx,
            encoder_tb,
            stream_tb,
            path: path.to_owned(),
            pending: 0,
        })
    }

    /// The track's timescale (units per second of the MP4 timestamps).
    pub fn stream_time_base(&self) -> Rational {
        self.stream_tb
    }

    /// Rescales a packet from the encoder's time base and writes it.
    pub fn write(&mut self, packet: &mut Packet) -> Result<(), PackageError> {
        packet.set_stream(0);
        packet.rescale_ts(self.encoder_tb, self.stream_tb);
        packet.set_position(-1);
        packet
            .write(&mut self.octx)
            .map_err(PackageError::media("mux a packet"))?;
        self.pending += 1;
        Ok(())
    }

    /// Ends the current fragment: what was written so far becomes one `moof`+`mdat`.
    pub fn cut(&mut self) -> Result<(), PackageError> {
        if self.pending == 0 {
            return Ok(());
        }
        flush_fragment(&mut self.octx).map_err(PackageError::media("flush an mp4 fragment"))?;
        self.pending = 0;
        Ok(())
    }

    /// Cuts the last fragment and closes the file.
    pub fn finish(mut self) -> Result<PathBuf, PackageError> {
        self.cut()?;
        self.octx
            .write_trailer()
            .map_err(PackageError::media("finish the mp4 file"))?;
        Ok(self.path)
    }
}

/// `av_write_frame(ctx, NULL)`: with `frag_custom`, the mp4 muxer writes the fragment it has
/// buffered. ffmpeg-next has no safe wrapper for a NULL packet; this and [`share_video`] are
/// the crate's two `unsafe` blocks.
#[allow(unsafe_code)]
fn flush_fragment(octx: &mut format::context::Output) -> Result<(), ffmpeg_next::Error> {
    // SAFETY: `octx` is a live output context whose header has been written; a NULL packet is
    // the documented way to flush a muxer that has AVFMT_ALLOW_FLUSH (mp4 does).
    let ret = unsafe { ffmpeg_next::ffi::av_write_frame(octx.as_mut_ptr(), std::ptr::null_mut()) };
    if ret < 0 {
        Err(ffmpeg_next::Error::from(ret))
    } else {
        Ok(())
    }
}

/// A new reference to a decoded frame's buffers (`av_frame_clone`): every rendition's worker
/// gets its own frame without a copy of the pixels, as ffmpeg's `split` filter does.
/// ffmpeg-next's `Clone` copies the data (`av_frame_copy`), which for a 1080p ladder of five
/// renditions is gigabytes a minute of copying. Falls back to that copy when the frame is not
/// reference-counted or memory runs out.
#[allow(unsafe_code)]
pub(crate) fn share_video(frame: &ffmpeg_next::frame::Video) -> ffmpeg_next::frame::Video {
    // SAFETY: `frame` is a live AVFrame. av_frame_clone allocates a new AVFrame holding new
    // references to the same reference-counted buffers (atomic counts, safe across threads)
    // and copies the properties; it returns NULL when the frame is not reference-counted or
    // on allocation failure. Frame::wrap takes ownership of the new AVFrame, which ffmpeg-next
    // frees (av_frame_free) on drop.
    let shared = unsafe {
        let src = frame.as_ptr();
        if (*src).buf[0].is_null() {
            std::ptr::null_mut()
        } else {
            ffmpeg_next::ffi::av_frame_clone(src)
        }
    };
    if shared.is_null() {
        return frame.clone();
    }
    // SAFETY: `shared` is a valid, owned AVFrame returned by av_frame_clone.
    ffmpeg_next::frame::Video::from(unsafe { ffmpeg_next::frame::Frame::wrap(shared) })
}

/// Finds an encoder by name, or says it is missing from the installed FFmpeg.
pub(crate) fn find_encoder(name: &str) -> Result<ffmpeg_next::Codec, PackageError> {
    encoder::find_by_name(name).ok_or_else(|| {
        PackageError::Missing(format!(
            "the {name} encoder (install Debian's libavcodec with {name})"
        ))
    })
}
