//! The disk tier's space, claimed on its filesystem at start.
//!
//! foyer makes the disk tier's files with `set_len`: sparse files that take their blocks from
//! the filesystem only as objects are written. A `cache.disk` larger than the free space, or
//! logs and other programs filling the filesystem later, then makes the tier's writes fail one
//! by one with ENOSPC while the edge runs (every object is still served from its fill, but
//! none reaches the disk and each failure is logged). Instead, as nginx's operators learn to do
//! by hand and Varnish's file storage and Traffic Server's raw disks do by design, the edge
//! checks at start that the tier fits, and then allocates its files' blocks (`fallocate`), so
//! that the space stays the cache's whatever else writes to the filesystem.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The prefix of foyer's file names in the disk tier's folder.
const FOYER_FILE_PREFIX: &str = "foyer-storage-direct-fs-";

/// The disk tier's files in `dir` (foyer's, by name).
fn tier_files(dir: &Path) -> io::Result<Vec<std::fs::DirEntry>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(FOYER_FILE_PREFIX)
            && entry.file_type()?.is_file()
        {
            files.push(entry);
        }
    }
    Ok(files)
}

/// Bytes of the filesystem the tier's files in `dir` already hold (blocks allocated, not their
/// sparse lengths).
fn held(dir: &Path) -> io::Result<u64> {
    let mut bytes = 0u64;
    for entry in tier_files(dir)? {
        let meta = entry.metadata()?;
        bytes = bytes.saturating_add((meta.blocks() * 512).min(meta.len()));
    }
    Ok(bytes)
}

/// Checks, before the tier is built, that `wanted` bytes fit in `dir`: the free space (to
/// unprivileged users) plus what the tier's files there already hold. `dir` need not exist
/// yet: its nearest existing ancestor's filesystem is asked. The error is the reason, for the
/// caller to put after the key (`cache.disk`).
pub fn check(dir: &Path, wanted: u64) -> Result<(), String> {
    let held = match held(dir) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let existing = dir.ancestors().find(|a| a.exists()).unwrap_or_else(|| {
        // Only the empty ancestor of a relative path is left: the working folder.
        Path::new(if dir.is_relative() { "." } else { "/" })
    });
    let fs = rustix::fs::statvfs(existing).map_err(|e| format!("{}: {e}", existing.display()))?;
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    if free.saturating_add(held) < wanted {
        return Err(format!(
            "{} does not fit in {}: {} free on its filesystem{}; lower cache.disk or free some \
             space",
            bytesize::ByteSize(wanted).display().iec(),
            dir.display(),
            bytesize::ByteSize(free).display().iec(),
            if held > 0 {
                format!(
                    " besides the {} the cache already holds",
                    bytesize::ByteSize(held).display().iec()
                )
            } else {
                String::new()
            }
        ));
    }
    Ok(())
}

/// Allocates the blocks of every file of the tier in `dir` (what is already allocated, and the
/// data in it, are left as they are). Returns the bytes the files hold afterwards. A
/// filesystem without `fallocate` gives `Unsupported`.
pub fn claim(dir: &Path) -> io::Result<u64> {
    for entry in tier_files(dir)? {
        let file = std::fs::OpenOptions::new().write(true).open(entry.path())?;
        let len = file.metadata()?.len();
        if len > 0 {
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len).map_err(
                |e| {
                    if e == rustix::io::Errno::OPNOTSUPP {
                        io::Error::new(io::ErrorKind::Unsupported, e)
                    } else {
                        io::Error::from(e)
                    }
                },
            )?;
        }
    }
    held(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("estuary-space-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn sparse_files_are_claimed_and_their_data_kept() {
        let dir = fresh_dir("claim");
        let path = dir.join(format!("{FOYER_FILE_PREFIX}00000000"));
        std::fs::write(&path, b"kept").expect("write");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        file.set_len(4 << 20).expect("set_len");
        drop(file);
        // Not ours: left alone.
        let other = dir.join("prefix-purges.json");
        std::fs::write(&other, b"[]").expect("write");
        assert!(
            held(&dir).expect("held") < 4 << 20,
            "the file starts sparse"
        );
        assert_eq!(claim(&dir).expect("claim"), 4 << 20);
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(&bytes[..4], b"kept");
        assert!(bytes[4..].iter().all(|&b| b == 0));
        // Held bytes count as the tier's own when it is checked again at the next start.
        check(&dir, 4 << 20).expect("what the tier holds fits");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_tier_larger_than_the_filesystem_is_refused_by_name() {
        let dir = fresh_dir("refuse");
        let text = check(&dir, u64::MAX / 2).expect_err("no filesystem here holds 8 EiB");
        assert!(text.starts_with("8.0 EiB does not fit in "), "{text}");
        assert!(text.contains("free on its filesystem"), "{text}");
        check(&dir, 4096).expect("a page fits");
        // A folder still to be made is checked on the filesystem it will be made in.
        check(&dir.join("not/yet"), 4096).expect("a page fits");
        assert!(check(&dir.join("not/yet"), u64::MAX / 2).is_err());
        // A relative folder still to be made: the working folder's filesystem.
        check(Path::new("estuary-not-made-yet/cache"), 4096).expect("a page fits");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
