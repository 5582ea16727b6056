//! Splitting a fragmented MP4 file into a CMAF header (init segment) and media segments, by
//! walking its top-level boxes; reading the codec string out of the header. Pure.

use std::io::{Read, Seek, SeekFrom};

use crate::error::PackageError;

/// One top-level box: its type and its byte range in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoxRange {
    pub kind: [u8; 4],
    pub start: usize,
    pub end: usize,
}

/// The box whose header starts `header` (at least 8 bytes, 16 for a 64-bit size, fewer only
/// when the file ends) at byte `pos` of a file of `len` bytes.
fn parse_header(header: &[u8], pos: usize, len: usize) -> Result<BoxRange, PackageError> {
    let bad = |why: &str| PackageError::Internal(format!("mp4 box at byte {pos}: {why}"));
    let head = header.get(..8).ok_or_else(|| bad("truncated header"))?;
    let size32 = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let kind = [head[4], head[5], head[6], head[7]];
    let size = match size32 {
        0 => len - pos,
        1 => {
            let large = header
                .get(8..16)
                .ok_or_else(|| bad("truncated large size"))?;
            let mut b = [0u8; 8];
            b.copy_from_slice(large);
            usize::try_from(u64::from_be_bytes(b)).map_err(|_| bad("size too large"))?
        }
        n => n as usize,
    };
    let min = if size32 == 1 { 16 } else { 8 };
    if size < min {
        return Err(bad("size smaller than its header"));
    }
    let end = pos
        .checked_add(size)
        .filter(|e| *e <= len)
        .ok_or_else(|| bad("runs past the end"))?;
    Ok(BoxRange {
        kind,
        start: pos,
        end,
    })
}

/// The top-level boxes of `data`, in order. Refuses truncated or malformed box headers.
pub fn top_level_boxes(data: &[u8]) -> Result<Vec<BoxRange>, PackageError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let b = parse_header(&data[pos..data.len().min(pos + 16)], pos, data.len())?;
        pos = b.end;
        out.push(b);
    }
    Ok(out)
}

/// The top-level boxes of a file of `len` bytes, reading only their headers (so that a track
/// of many gigabytes is walked in a few kilobytes of memory).
pub fn top_level_boxes_in(
    file: &mut (impl Read + Seek),
    len: usize,
) -> Result<Vec<BoxRange>, PackageError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut header = [0u8; 16];
    while pos < len {
        let want = (len - pos).min(16);
        let io = |e: std::io::Error| PackageError::Internal(format!("mp4 box at byte {pos}: {e}"));
        file.seek(SeekFrom::Start(pos as u64)).map_err(io)?;
        file.read_exact(&mut header[..want]).map_err(io)?;
        let b = parse_header(&header[..want], pos, len)?;
        pos = b.end;
        out.push(b);
    }
    Ok(out)
}

/// Where one fragment lies in its file: it starts at `start` (its first `styp`, `sidx`,
/// `prft`, `emsg` or `moof`), its `mdat` starts at `mdat`, and it ends at `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentRange {
    pub start: usize,
    pub mdat: usize,
    pub end: usize,
}

/// A fragmented MP4 file's shape: its header is `0..header_end`, then its fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub header_end: usize,
    pub fragments: Vec<FragmentRange>,
}

/// Finds the header and the fragments of a fragmented MP4 file of `len` bytes from its
/// top-level boxes. The header is everything before the first fragment; a fragment starts at
/// the first box that belongs to it (`styp`, `sidx`, `prft`, `emsg` or `moof`) and ends after
/// its `mdat`. Trailing index boxes (`mfra`) are dropped.
pub fn layout(boxes: &[BoxRange], len: usize) -> Result<Layout, PackageError> {
    let first = boxes.iter().position(|b| is_fragment_box(&b.kind));
    let header_end = first.map(|i| boxes[i].start).unwrap_or(len);
    let header = &boxes[..first.unwrap_or(boxes.len())];
    if header.iter().any(|b| &b.kind == b"mdat") {
        return Err(PackageError::Internal(
            "media data before the first fragment (not a fragmented mp4)".into(),
        ));
    }
    if !header.iter().any(|b| &b.kind == b"ftyp") || !header.iter().any(|b| &b.kind == b"moov") {
        return Err(PackageError::Internal(
            "fragmented mp4 without ftyp and moov before its fragments".into(),
        ));
    }
    let mut fragments = Vec::new();
    let mut start: Option<usize> = None;
    let mut seen_moof = false;
    for b in boxes.iter().skip(first.unwrap_or(boxes.len())) {
        match &b.kind {
            b"mdat" => {
                let s = start.take().filter(|_| seen_moof).ok_or_else(|| {
                    PackageError::Internal(format!("mdat at byte {} without a moof", b.start))
                })?;
                fragments.push(FragmentRange {
                    start: s,
                    mdat: b.start,
                    end: b.end,
                });
                seen_moof = false;
            }
            b"mfra" | b"free" | b"skip" => {
                if start.is_some() {
                    return Err(PackageError::Internal("a fragment without its mdat".into()));
                }
            }
            kind if is_fragment_box(kind) => {
                if seen_moof && kind == b"moof" {
                    return Err(PackageError::Internal(
                        "two moof boxes without an mdat".into(),
                    ));
                }
                start.get_or_insert(b.start);
                seen_moof |= kind == b"moof";
            }
            other => {
                return Err(PackageError::Internal(format!(
                    "unexpected top-level box {:?} after the header",
                    String::from_utf8_lossy(other)
                )));
            }
        }
    }
    if start.is_some() {
        return Err(PackageError::Internal(
            "the last fragment has no mdat".into(),
        ));
    }
    Ok(Layout {
        header_end,
        fragments,
    })
}

/// A fragmented MP4 file cut into its header and its fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split<'a> {
    /// `ftyp` + `moov`: the CMAF header.
    pub init: &'a [u8],
    /// One entry per fragment: `moof` + `mdat` (with any `styp`/`sidx`/`prft`/`emsg` that
    /// precede the `moof`).
    pub fragments: Vec<&'a [u8]>,
}

/// Splits a fragmented MP4 file held in memory (see [`layout`]; packaging itself walks the
/// file with [`top_level_boxes_in`] and never holds a whole track).
pub fn split_fragmented(data: &[u8]) -> Result<Split<'_>, PackageError> {
    let layout = layout(&top_level_boxes(data)?, data.len())?;
    Ok(Split {
        init: &data[..layout.header_end],
        fragments: layout
            .fragments
            .iter()
            .map(|f| &data[f.start..f.end])
            .collect(),
    })
}

fn is_fragment_box(kind: &[u8; 4]) -> bool {
    matches!(kind, b"styp" | b"sidx" | b"prft" | b"emsg" | b"moof")
}

/// The RFC 6381 codec string of the H.264 track in an init segment (`avc1.PPCCLL` from the
/// `avcC` box's profile, constraint flags and level).
pub fn avc_codec_string(init: &[u8]) -> Option<String> {
    let at = init.windows(4).position(|w| w == b"avcC")?;
    let cfg = init.get(at + 4..at + 8)?;
    if cfg[0] != 1 {
        return None;
    }
    Some(format!("avc1.{:02x}{:02x}{:02x}", cfg[1], cfg[2], cfg[3]))
}

/// The `baseMediaDecodeTime` of a fragment (`moof/traf/tfdt`), version 0 or 1.
pub fn tfdt(fragment: &[u8]) -> Option<u64> {
    let at = fragment.windows(4).position(|w| w == b"tfdt")?;
    let version = *fragment.get(at + 4)?;
    let body = fragment.get(at + 8..)?;
    match version {
        0 => Some(u64::from(u32::from_be_bytes(
            body.get(..4)?.try_into().ok()?,
        ))),
        1 => Some(u64::from_be_bytes(body.get(..8)?.try_into().ok()?)),
        _ => None,
    }
}

/// A `styp` box for a CMAF media segment (brands `msdh`, `msix`, `cmfs`), which media
/// segments start with so each file names its own type.
pub fn styp() -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    b.extend_from_slice(&28u32.to_be_bytes());
    b.extend_from_slice(b"styp");
    b.extend_from_slice(b"msdh");
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(b"msdh");
    b.extend_from_slice(b"msix");
    b.extend_from_slice(b"cmfs");
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn splits_header_and_fragments() {
        let mut file = mp4_box(b"ftyp", b"iso6");
        file.extend(mp4_box(b"moov", b"....avcC\x01\x64\x00\x1f..."));
        let init_len = file.len();
        let f1 = [mp4_box(b"moof", b"1"), mp4_box(b"mdat", b"one")].concat();
        let f2 = [
            mp4_box(b"styp", b"msdh"),
            mp4_box(b"moof", b"2"),
            mp4_box(b"mdat", b"two"),
        ]
        .concat();
        file.extend(&f1);
        file.extend(&f2);
        file.extend(mp4_box(b"mfra", b"index"));
        let split = split_fragmented(&file).expect("split");
        assert_eq!(
            top_level_boxes_in(&mut std::io::Cursor::new(&file), file.len()).expect("walk"),
            top_level_boxes(&file).expect("boxes")
        );
        assert_eq!(split.init, &file[..init_len]);
        assert_eq!(split.fragments, vec![&f1[..], &f2[..]]);
        assert_eq!(avc_codec_string(split.init).as_deref(), Some("avc1.64001f"));
        assert_eq!(top_level_boxes(&styp()).expect("styp").len(), 1);
        let traf = mp4_box(b"traf", &mp4_box(b"tfdt", &[0, 0, 0, 0, 0, 0, 0x30, 0x39]));
        assert_eq!(tfdt(&mp4_box(b"moof", &traf)), Some(12345));
        let traf = mp4_box(
            b"traf",
            &mp4_box(b"tfdt", &[1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
        );
        assert_eq!(tfdt(&mp4_box(b"moof", &traf)), Some(1 << 32));
    }

    #[test]
    fn refuses_malformed_files() {
        let ftyp = mp4_box(b"ftyp", b"iso6");
        let moov = mp4_box(b"moov", b"x");
        let moof = mp4_box(b"moof", b"1");
        let mdat = mp4_box(b"mdat", b"1");
        for bad in [
            vec![],
            [&ftyp[..], &moof, &mdat].concat(),
            [&ftyp[..], &moov, &moof].concat(),
            [&ftyp[..], &moov, &mdat].concat(),
            [&ftyp[..], &moov, &moof, &moof, &mdat].concat(),
            [&ftyp[..], &moov, &moof, &mdat[..5]].concat(),
            [&ftyp[..], &moov, &[0, 0, 0, 3, b'x', b'x', b'x', b'x']].concat(),
        ] {
            assert!(split_fragmented(&bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = split_fragmented(&data);
            // Walking a file by its headers finds the same boxes as walking it in memory.
            let in_file = top_level_boxes_in(&mut std::io::Cursor::new(&data), data.len());
            prop_assert_eq!(in_file.ok(), top_level_boxes(&data).ok());
            let _ = avc_codec_string(&data);
            let _ = tfdt(&data);
        }
    }
}
