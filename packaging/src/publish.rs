//! Atomic publishing: the asset is built in a sibling folder and renamed into place only when
//! complete; a failed job removes its folder.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use estuary_common::asset::{FileDigest, decode_sha256, merkle_root};
use sha2::{Digest, Sha256};

use crate::error::PackageError;

/// The folder a job writes into, removed on drop unless published.
#[derive(Debug)]
pub struct Staging {
    pub dir: PathBuf,
    pub target: PathBuf,
    published: bool,
}

impl Staging {
    /// Creates `<target>.partial-<pid>` next to `target`. Fails if `target` exists.
    pub fn create(target: &Path) -> Result<Self, PackageError> {
        if target.symlink_metadata().is_ok() {
            return Err(PackageError::OutputExists(target.to_owned()));
        }
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .ok_or_else(|| {
                PackageError::Usage(format!("--out {}: needs a folder name", target.display()))
            })?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(PackageError::Usage(format!(
                "--out: parent folder {} does not exist",
                parent.display()
            )));
        }
        let dir = parent.join(format!("{name}.partial-{}", std::process::id()));
        // A leftover from a crashed job with the same pid is ours to replace.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).map_err(PackageError::io("create", &dir))?;
        Ok(Self {
            dir,
            target: target.to_owned(),
            published: false,
        })
    }

    /// fsyncs every file and folder, renames the folder to its final name and fsyncs the parent.
    pub fn publish(mut self) -> Result<PathBuf, PackageError> {
        sync_tree(&self.dir)?;
        if self.target.symlink_metadata().is_ok() {
            return Err(PackageError::OutputExists(self.target.clone()));
        }
        fs::rename(&self.dir, &self.target)
            .map_err(PackageError::io("rename into place", &self.target))?;
        self.published = true;
        if let Some(parent) = self.target.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            if let Ok(d) = fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(self.target.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn sync_tree(dir: &Path) -> Result<(), PackageError> {
    let fsync = |path: &Path| {
        fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(PackageError::io("fsync", path))
    };
    visit_tree(dir, &mut |path| fsync(path), &mut |dir| fsync(dir))
}

/// Calls `on_file` for every file under `dir` and `after_dir` for every folder (`dir`
/// included) once its entries are done, in `read_dir` order.
fn visit_tree(
    dir: &Path,
    on_file: &mut impl FnMut(&Path) -> Result<(), PackageError>,
    after_dir: &mut impl FnMut(&Path) -> Result<(), PackageError>,
) -> Result<(), PackageError> {
    for entry in fs::read_dir(dir).map_err(PackageError::io("list", dir))? {
        let entry = entry.map_err(PackageError::io("list", dir))?;
        let path = entry.path();
        if entry
            .file_type()
            .map_err(PackageError::io("stat", &path))?
            .is_dir()
        {
            visit_tree(&path, on_file, after_dir)?;
        } else {
            on_file(&path)?;
        }
    }
    after_dir(dir)
}

/// Creates a new file for writing (never replacing one).
pub fn create_new(path: &Path) -> Result<fs::File, PackageError> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(PackageError::io("create", path))
}

/// Writes a new file (never replacing one).
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), PackageError> {
    create_new(path)?
        .write_all(bytes)
        .map_err(PackageError::io("write", path))
}

/// Size and sha-256 of every file under `root` (relative `/` paths, sorted), skipping
/// `skip`.
pub fn digest_files(root: &Path, skip: &str) -> Result<Vec<FileDigest>, PackageError> {
    let mut out = Vec::new();
    visit_tree(
        root,
        &mut |path| {
            out.push(file_digest(root, path)?);
            Ok(())
        },
        &mut |_| Ok(()),
    )?;
    out.retain(|f| f.path != skip);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The digest of the file at `path` under `root`, named by its relative `/` path.
fn file_digest(root: &Path, path: &Path) -> Result<FileDigest, PackageError> {
    let (size, sha256) = digest_file(path)?;
    let rel = path
        .strip_prefix(root)
        .map_err(|_| PackageError::Internal(format!("{} outside the asset", path.display())))?;
    let rel: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    Ok(FileDigest {
        path: rel.join("/"),
        size,
        sha256,
    })
}

/// The size and hex sha-256 of a file, read through a small buffer (a segment may be large).
fn digest_file(path: &Path) -> Result<(u64, String), PackageError> {
    use std::io::Read;
    let mut file = fs::File::open(path).map_err(PackageError::io("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PackageError::io("read", path)(e)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// The Merkle root over the `.m4s` files of `files` (in order), hex.
pub fn segments_merkle_root(files: &[FileDigest]) -> String {
    let leaves: Vec<[u8; 32]> = files
        .iter()
        .filter(|f| f.path.ends_with(".m4s"))
        .filter_map(|f| decode_sha256(&f.sha256))
        .collect();
    hex::encode(merkle_root(&leaves))
}
