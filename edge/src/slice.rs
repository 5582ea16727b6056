//! Large objects in fixed-size slices: the range math, pure (the reader that walks the slices
//! of a range is `sliced.rs`).
//!
//! A sliced object is a `Meta` entry under its path plus one `Slice` entry per slice (see
//! [`crate::cache::Slicing`]). A range request touches only the slices it overlaps, so a
//! player seeking into a two-hour progressive MP4 costs one slice upstream, not the file.

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
