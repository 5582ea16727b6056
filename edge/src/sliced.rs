//! Reading a byte range of a sliced object (see `slice.rs` for the layout): each slice from
//! the cache, or from a (coalesced) slice fill while it arrives, and [`BodyStream`], the body
//! of a response that is filled while it is sent. Depends on `fill.rs`, never the reverse.

use std::sync::Arc;

use bytes::Bytes;

use crate::cache::{CachedObject, SessionKey, Slicing, slice_key};
use crate::fill::{Fill, FillError, FillReader, Filler};
use crate::slice::slice_bounds;

/// A response body that arrives while it is filled: one fill's body (or a range of it), or a
/// range of a sliced object read slice by slice.
#[derive(Debug)]
pub enum BodyStream {
    Fill(FillReader),
    Sliced(Box<SlicedReader>),
}

impl BodyStream {
    /// The next piece, `None` at the end, or the error of a failed fill.
    pub async fn next(&mut self) -> Option<Result<Bytes, FillError>> {
        match self {
            BodyStream::Fill(r) => r.next().await,
            BodyStream::Sliced(r) => r.next().await,
        }
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
