//! RFC 4571 framing, for ICE-TCP: on a TCP connection every datagram (STUN, DTLS, SRTP) is
//! sent as a 2-byte big-endian length and that many bytes. str0m only says "see RFC 4571";
//! the framing is ours (`tcp.rs` reads and writes the connections). Pure: bytes in, frames
//! out; no socket.
//!
//! The decoder never holds more than one frame's worth of bytes (at most its limit + 2, the
//! limit at most 65 535) and never panics on any input; a zero-length frame is skipped
//! (RFC 4571 allows it; nothing uses it). A length over the limit is an error: the stream
//! cannot be trusted after it, and the connection is closed.

/// The largest frame: the length field is 16 bits.
pub const MAX_FRAME: usize = u16::MAX as usize;

/// Why a frame cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a datagram of {0} bytes does not fit a 16-bit length")]
    TooLong(usize),
    #[error("a frame of {len} bytes is over the limit of {max}")]
    OverLimit { len: usize, max: usize },
}

/// Appends `datagram`, framed, to `out`.
pub fn encode(datagram: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = u16::try_from(datagram.len()).map_err(|_| FrameError::TooLong(datagram.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(datagram);
    Ok(())
}

/// Reassembles frames from a TCP byte stream read in chunks of any size.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder that takes any frame RFC 4571 allows (up to 65 535 bytes).
    pub fn new() -> Self {
        Self::with_max_frame(MAX_FRAME)
    }

    /// A decoder that refuses frames longer than `max` bytes (at most [`MAX_FRAME`]).
    pub fn with_max_frame(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max: max.min(MAX_FRAME),
        }
    }

    /// Takes the next chunk read from the connection; calls `frame` with each complete
    /// datagram, in order. A length over the limit stops decoding with an error (the frames
    /// before it were handed out); the decoder is not to be used after it.
    pub fn push(
        &mut self,
        mut chunk: &[u8],
        frame: &mut dyn FnMut(&[u8]),
    ) -> Result<(), FrameError> {
        while !chunk.is_empty() {
            // Fast path: nothing buffered and whole frames in the chunk are handed out
            // without a copy.
            if self.buf.is_empty() {
                if chunk.len() >= 2 {
                    self.check(chunk)?;
                }
                match Self::whole(chunk) {
                    Some(n) => {
                        if n > 2 {
                            frame(&chunk[2..n]);
                        }
                        chunk = &chunk[n..];
                        continue;
                    }
                    None => {
                        self.buf.extend_from_slice(chunk);
                        return Ok(());
                    }
                }
            }
            // Complete the buffered frame: first its length, then its bytes.
            let need = if self.buf.len() < 2 {
                2 - self.buf.len()
            } else {
                Self::frame_len(&self.buf) + 2 - self.buf.len()
            };
            let take = need.min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() == 2 {
                self.check(&self.buf)?;
            }
            if self.buf.len() >= 2 && self.buf.len() == Self::frame_len(&self.buf) + 2 {
                if self.buf.len() > 2 {
                    frame(&self.buf[2..]);
                }
                self.buf.clear();
            }
        }
        Ok(())
    }

    /// Refuses a frame whose length field (the first two bytes of `b`) is over the limit.
    fn check(&self, b: &[u8]) -> Result<(), FrameError> {
        let len = Self::frame_len(b);
        if len > self.max {
            return Err(FrameError::OverLimit { len, max: self.max });
        }
        Ok(())
    }

    /// Bytes held for an incomplete frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn frame_len(b: &[u8]) -> usize {
        usize::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The length of the whole first frame of `b` (header included), if `b` holds all of it.
    fn whole(b: &[u8]) -> Option<usize> {
        if b.len() < 2 {
            return None;
        }
        let n = Self::frame_len(b) + 2;
        (b.len() >= n).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, usize) {
        let mut d = Decoder::new();
        let mut frames = Vec::new();
        for c in chunks {
            d.push(c, &mut |f| frames.push(f.to_vec()))
                .expect("no frame is over 65535");
        }
        (frames, d.pending())
    }

    #[test]
    fn split_and_merged_frames() {
        let mut wire = Vec::new();
        encode(b"hello", &mut wire).expect("fits");
        encode(b"", &mut wire).expect("fits");
        encode(&[7u8; 300], &mut wire).expect("fits");
        // All at once.
        let (frames, pending) = decode_all(&[&wire]);
        assert_eq!(frames, vec![b"hello".to_vec(), vec![7u8; 300]]);
        assert_eq!(pending, 0);
        // One byte at a time.
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        let (frames, pending) = decode_all(&bytes);
        assert_eq!(frames, vec![b"hello".to_vec(), vec![7u8; 300]]);
        assert_eq!(pending, 0);
        // A cut in the length field, then in the body.
        let (frames, pending) = decode_all(&[&wire[..1], &wire[1..4]]);
        assert_eq!(frames, Vec::<Vec<u8>>::new());
        assert_eq!(pending, 4);
    }

    #[test]
    fn the_largest_frame_and_one_too_large() {
        let big = vec![1u8; MAX_FRAME];
        let mut wire = Vec::new();
        encode(&big, &mut wire).expect("65535 fits");
        assert_eq!(&wire[..2], &[0xff, 0xff]);
        let (frames, _) = decode_all(&[&wire[..1000], &wire[1000..]]);
        assert_eq!(frames, vec![big]);
        assert_eq!(
            encode(&[0u8; MAX_FRAME + 1], &mut Vec::new()),
            Err(FrameError::TooLong(MAX_FRAME + 1))
        );
    }

    #[test]
    fn a_length_over_the_limit_is_an_error_wherever_the_cut_falls() {
        let mut wire = Vec::new();
        encode(b"ok", &mut wire).expect("fits");
        encode(&[3u8; 101], &mut wire).expect("fits");
        for cut in 0..wire.len() {
            let mut d = Decoder::with_max_frame(100);
            let mut frames = Vec::new();
            let first = d.push(&wire[..cut], &mut |f| frames.push(f.to_vec()));
            let result =
                first.and_then(|()| d.push(&wire[cut..], &mut |f| frames.push(f.to_vec())));
            assert_eq!(
                result,
                Err(FrameError::OverLimit { len: 101, max: 100 }),
                "cut at {cut}"
            );
            assert_eq!(frames, vec![b"ok".to_vec()], "cut at {cut}");
            assert!(d.pending() <= 102);
        }
        // At the limit: fine.
        let mut d = Decoder::with_max_frame(101);
        let mut n = 0;
        d.push(&wire, &mut |_| n += 1).expect("at the limit");
        assert_eq!(n, 2);
    }

    proptest! {
        /// Whatever the datagrams and however the stream is cut, decoding gives back exactly
        /// the datagrams sent (empty ones are skipped), and nothing is left over.
        #[test]
        fn decode_of_encode_is_identity_over_any_chunking(
            datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..2000), 0..20),
            cuts in prop::collection::vec(0usize..5000, 0..30),
        ) {
            let mut wire = Vec::new();
            for d in &datagrams {
                encode(d, &mut wire).expect("fits");
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.push(0);
            cuts.push(wire.len());
            cuts.sort_unstable();
            let chunks: Vec<&[u8]> = cuts.windows(2).map(|w| &wire[w[0]..w[1]]).collect();
            let (frames, pending) = decode_all(&chunks);
            let want: Vec<Vec<u8>> = datagrams.into_iter().filter(|d| !d.is_empty()).collect();
            prop_assert_eq!(frames, want);
            prop_assert_eq!(pending, 0);
        }

        /// Garbage never panics and never makes the decoder hold more than one frame.
        #[test]
        fn garbage_is_bounded(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 0..40), max in 0usize..70_000) {
            let mut d = Decoder::with_max_frame(max);
            let limit = max.min(MAX_FRAME);
            for c in &chunks {
                let r = d.push(c, &mut |f| assert!(f.len() <= limit));
                prop_assert!(d.pending() <= limit + 2);
                if r.is_err() {
                    break;
                }
            }
        }
    }
}
