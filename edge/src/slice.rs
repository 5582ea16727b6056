//! Large objects in fixed-size slices: the range math (pure), and the reader that serves a
//! byte range of a sliced object from cached slices, filling the missing ones one at a time.
//!
//! A sliced object is a `Meta` entry under its path plus one `Slice` entry per slice (see
//! [`crate::cache::Slicing`]). A range request touches only the slices it overlaps, so a
//! player seeking into a two-hour progressive MP4 costs one slice upstream, not the file.

use std::sync::Arc;

use bytes::Bytes;

use crate::cache::{CachedObject, SessionKey, Slicing, slice_key};
use crate::fill::{Fill, FillError, FillReader, Filler};

/// A parsed `Content-Range` response header (RFC 9110 §14.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes first-last/complete`.
    Bytes {
        first: u64,
        last: u64,
        complete: u64,
    },
    /// `bytes */complete` (with a 416).
    Unsatisfied { complete: u64 },
}

/// Parses `Content-Range`; `None` for anything malformed, an unknown length (`/*`) or a range
/// that is inverted or ends past the complete length.
pub fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes ")?.trim_start();
    let (range, complete) = rest.split_once('/')?;
    let complete = digits(complete)?;
    if range == "*" {
        return Some(ContentRange::Unsatisfied { complete });
    }
    let (first, last) = range.split_once('-')?;
    let (first, last) = (digits(first)?, digits(last)?);
    (first <= last && last < complete).then_some(ContentRange::Bytes {
        first,
        last,
        complete,
    })
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Bytes `start..end` (end exclusive) of slice `index` of an object of `total` bytes.
pub fn slice_bounds(index: u64, slice_size: u64, total: u64) -> (u64, u64) {
    let start = index.saturating_mul(slice_size).min(total);
    (start, start.saturating_add(slice_size).min(total))
}

/// The `Range` header value asking for slice `index`, its length not yet known.
pub fn slice_request(index: u64, slice_size: u64) -> String {
    let start = index.saturating_mul(slice_size);
    format!(
        "bytes={start}-{}",
        start.saturating_add(slice_size).saturating_sub(1)
    )
}

/// The slice where a client's `Range` header starts, when it is one plain `first-` range;
/// 0 otherwise (whole requests, suffix ranges, several ranges, garbage).
pub fn first_slice_of(range: Option<&str>, slice_size: u64) -> u64 {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return 0;
    };
    if slice_size == 0 || spec.contains(',') {
        return 0;
    }
    spec.split_once('-')
        .and_then(|(first, _)| digits(first.trim()))
        .map_or(0, |first| first / slice_size)
}

/// Whether an upstream 206 answers a request for slice `index`: it must start at the slice's
/// first byte and end at its last (or the object's last).
pub fn answers_slice(range: ContentRange, index: u64, slice_size: u64) -> bool {
    match range {
        ContentRange::Bytes {
            first,
            last,
            complete,
        } => {
            let (start, end) = slice_bounds(index, slice_size, complete);
            start < end && first == start && last + 1 == end
        }
        ContentRange::Unsatisfied { .. } => false,
    }
}

/// The facts of a sliced object that reading it needs.
#[derive(Debug, Clone, Copy)]
struct Layout {
    total: u64,
    slice_size: u64,
    generation: u64,
}

/// Streams bytes `pos..end` of a sliced object: each slice from the cache when it holds that
/// slice of the same generation, else from a (coalesced) slice fill, read while it arrives.
/// The next slice is asked for as soon as the current one is being filled, so a long read
/// does not wait for a round trip between slices.
pub struct SlicedReader {
    filler: Arc<Filler>,
    path: String,
    meta: Arc<CachedObject>,
    layout: Layout,
    pos: u64,
    end: u64,
    /// Fills already joined, by slice index (the fill that learned the layout, read-ahead).
    pending: Vec<(u64, Arc<Fill>)>,
    current: Option<(FillReader, u64)>,
    via_peer: bool,
    /// The player session reading, which the cache policy follows from slice to slice.
    session: SessionKey,
}

impl std::fmt::Debug for SlicedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlicedReader")
            .field("path", &self.path)
            .field("pos", &self.pos)
            .field("end", &self.end)
            .finish()
    }
}

impl SlicedReader {
    /// A reader of bytes `first..=last` of the object `meta` describes; `None` when `meta`
    /// is not the index of a sliced object. `fill`, when given, is a fill already publishing
    /// slice `index`.
    pub fn new(
        filler: Arc<Filler>,
        path: &str,
        meta: Arc<CachedObject>,
        (first, last): (u64, u64),
        fill: Option<(u64, Arc<Fill>)>,
        via_peer: bool,
        session: SessionKey,
    ) -> Option<Self> {
        let Slicing::Meta {
            total,
            slice_size,
            generation,
        } = meta.slicing
        else {
            return None;
        };
        Some(Self {
            filler,
            path: path.to_owned(),
            meta,
            layout: Layout {
                total,
                slice_size,
                generation,
            },
            pos: first,
            end: last.saturating_add(1).min(total),
            pending: fill.into_iter().collect(),
            current: None,
            via_peer,
            session,
        })
    }

    /// The next piece of the range, `None` at its end, or the error of a failed slice fill.
    pub async fn next(&mut self) -> Option<Result<Bytes, FillError>> {
        loop {
            if let Some((reader, until)) = self.current.as_mut() {
                match reader.next().await {
                    Some(Ok(chunk)) => {
                        self.pos += chunk.len() as u64;
                        return Some(Ok(chunk));
                    }
                    Some(Err(e)) => {
                        self.current = None;
                        return Some(Err(e));
                    }
                    None => {
                        let short = self.pos < *until;
                        self.current = None;
                        if short {
                            return Some(Err(FillError::Truncated));
                        }
                    }
                }
            }
            if self.pos >= self.end {
                return None;
            }
            let Layout {
                total,
                slice_size,
                generation,
            } = self.layout;
            let index = self.pos / slice_size;
            let (start, slice_end) = slice_bounds(index, slice_size, total);
            let until = self.end.min(slice_end);
            let (from, to) = (self.pos - start, until - start - 1);
            let key = slice_key(&self.path, index);
            let session = Some(self.session.as_session());
            if let Some(i) = self.pending.iter().position(|(k, _)| *k == index) {
                self.filler.cache().note_request(&key, session);
                let (_, fill) = self.pending.swap_remove(i);
                self.current = Some((fill.reader().range(from, to), until));
                continue;
            }
            if let Some((obj, _)) = self.filler.cache().get_for(&key, session).await
                && obj.slicing == (Slicing::Slice { index, generation })
                && obj.body.len() as u64 == slice_end - start
            {
                self.pos = until;
                self.read_ahead(index + 1, until);
                return Some(Ok(obj.body.slice(from as usize..=to as usize)));
            }
            let fill = self
                .filler
                .join_slice(&self.path, index, &self.meta, self.via_peer);
            self.current = Some((fill.reader().range(from, to), until));
            self.read_ahead(index + 1, until);
        }
    }

    /// Starts the fill of slice `index` when the range goes on into it and it is not cached.
    fn read_ahead(&mut self, index: u64, from: u64) {
        if from >= self.end || self.pending.iter().any(|(k, _)| *k == index) {
            return;
        }
        if let Some(fill) =
            self.filler
                .join_slice_if_missing(&self.path, index, &self.meta, self.via_peer)
        {
            self.pending.push((index, fill));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 0-99/1000"),
            Some(ContentRange::Bytes {
                first: 0,
                last: 99,
                complete: 1000
            })
        );
        assert_eq!(
            parse_content_range("bytes */7"),
            Some(ContentRange::Unsatisfied { complete: 7 })
        );
        for bad in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes 0-9/*",
            "items 0-1/2",
            "bytes -1-2/9",
            "bytes 0-1/99999999999999999999",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn slice_math() {
        assert_eq!(slice_bounds(0, 4, 10), (0, 4));
        assert_eq!(slice_bounds(2, 4, 10), (8, 10));
        assert_eq!(slice_bounds(3, 4, 10), (10, 10));
        assert_eq!(slice_request(2, 4), "bytes=8-11");
        assert_eq!(first_slice_of(Some("bytes=9-20"), 4), 2);
        assert_eq!(first_slice_of(Some("bytes=-20"), 4), 0);
        assert_eq!(first_slice_of(Some("bytes=1-2,9-20"), 4), 0);
        assert_eq!(first_slice_of(None, 4), 0);
        let r = |first, last, complete| ContentRange::Bytes {
            first,
            last,
            complete,
        };
        assert!(answers_slice(r(8, 9, 10), 2, 4));
        assert!(answers_slice(r(4, 7, 10), 1, 4));
        assert!(!answers_slice(r(4, 6, 10), 1, 4));
        assert!(!answers_slice(r(0, 9, 10), 1, 4));
    }

    proptest! {
        #[test]
        fn content_range_parsing_never_panics(v in "\\PC{0,40}") {
            if let Some(ContentRange::Bytes { first, last, complete }) = parse_content_range(&v) {
                prop_assert!(first <= last && last < complete);
            }
        }

        #[test]
        fn slices_tile_the_object(total in 0u64..10_000, size in 1u64..3000) {
            let mut next = 0;
            let mut index = 0;
            while next < total {
                let (start, end) = slice_bounds(index, size, total);
                prop_assert_eq!(start, next);
                prop_assert!(end > start && end - start <= size);
                next = end;
                index += 1;
            }
            prop_assert_eq!(slice_bounds(index, size, total), (total, total));
        }

        #[test]
        fn first_slice_never_panics(v in "\\PC{0,40}", size in 0u64..5000) {
            let _ = first_slice_of(Some(&v), size);
        }
    }
}
