//! The pre-positioned store: files under one root folder, served from memory maps that are
//! kept open in a bounded cache (like nginx's `open_file_cache`) and checked again after a
//! configured interval. Memory maps rather than reads into buffers: the page cache holds the
//! bytes once, a response is a zero-copy slice of the map into hyper and quinn, and small
//! files are pre-faulted (`MAP_POPULATE`) on the blocking pool so that serving never waits
//! on the disk inside an async task. The price is the rename invariant below.
//!
//! Invariant: no lookup returns a file outside the root. Paths arrive normalized (no `.`/`..`
//! segments), are resolved with every symbolic link followed, and the result must still lie
//! under the canonical root; the final open refuses a symbolic link.
//!
//! Invariant: files under the root are replaced by rename, never rewritten in place. A file
//! truncated in place while mapped would fault the process.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::HeaderValue;
use tokio::sync::OnceCell;

/// Files up to this size are paged in when they are opened, so that serving them never waits
/// on the disk inside an async task.
const POPULATE_LIMIT: u64 = 64 * 1024 * 1024;

/// One open file: its bytes and the validators derived from its metadata.
#[derive(Debug)]
pub struct FileEntry {
    /// The whole content (a memory map, shared by every response that sends it).
    pub body: Bytes,
    /// The strong entity tag: size and modification time in nanoseconds.
    pub etag: HeaderValue,
    /// The `Last-Modified` header value.
    pub last_modified: HeaderValue,
    /// The modification time, to answer `If-Modified-Since`.
    pub modified: SystemTime,
}

impl FileEntry {
    /// The content length.
    pub fn len(&self) -> u64 {
        self.body.len() as u64
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

/// How long a missing path is remembered (at most; never longer than `store.revalidate`).
const MISSING_TTL: Duration = Duration::from_secs(2);

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A regular file under the root.
    Found(Arc<FileEntry>),
    /// No such file (or a folder, or something that is not a regular file).
    NotFound,
    /// The path resolves outside the root through a symbolic link: refused.
    Outside,
}

/// One path walk in progress, awaited by every request for that path (the error shared, so
/// that each waiter reports the walk's own message).
type InflightLookup = OnceCell<Result<Lookup, Arc<io::Error>>>;

/// The pre-positioned content under one root folder.
pub struct Store {
    root: PathBuf,
    files: moka::sync::Cache<String, Arc<FileEntry>>,
    /// Paths found missing, remembered briefly: a request for content that lives in the
    /// pull-through cache must not cost a trip to the blocking pool and a path walk each time.
    missing: moka::sync::Cache<String, ()>,
    /// Lookups on the blocking pool, one per path: a stampede of requests for a path that is
    /// not known yet (a cold object of the pull-through cache) waits for one path walk instead
    /// of queueing one each on the blocking pool, ahead of the fill that serves them.
    inflight: std::sync::Mutex<HashMap<String, Arc<InflightLookup>>>,
    /// Path walks run on the blocking pool since the store opened.
    walks: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

impl Store {
    /// Opens the store at `root`, which must be a folder.
    pub fn open(root: &Path, open_files: u64, revalidate: Duration) -> io::Result<Self> {
        let root = std::fs::canonicalize(root)?;
        if !root.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a folder"));
        }
        let files = moka::sync::Cache::builder()
            .max_capacity(open_files)
            .time_to_live(revalidate)
            .build();
        // New pre-positioned files show up within this time.
        let missing = moka::sync::Cache::builder()
            .max_capacity(open_files.saturating_mul(4).max(1024))
            .time_to_live(revalidate.min(MISSING_TTL))
            .build();
        Ok(Self {
            root,
            files,
            missing,
            inflight: std::sync::Mutex::default(),
            walks: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The canonical root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Looks up a normalized path (starting with '/'). Opening a file that is not cached yet
    /// runs on the blocking pool.
    pub async fn lookup(self: &Arc<Self>, path: &str) -> io::Result<Lookup> {
        if let Some(known) = self.remembered(path) {
            return Ok(known);
        }
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(inflight.entry(path.to_owned()).or_default())
        };
        let result = cell
            .get_or_init(|| async {
                // An earlier walk of this path may have finished (and left the in-flight
                // table) between this request's cache check and its taking a cell.
                if let Some(known) = self.remembered(path) {
                    return Ok(known);
                }
                let this = Arc::clone(self);
                let owned = path.to_owned();
                let found = tokio::task::spawn_blocking(move || this.open_file(&owned))
                    .await
                    .map_err(io::Error::other)
                    .and_then(|r| r);
                match &found {
                    Ok(Lookup::Found(entry)) => {
                        self.files.insert(path.to_owned(), Arc::clone(entry))
                    }
                    Ok(Lookup::NotFound) => self.missing.insert(path.to_owned(), ()),
                    Ok(Lookup::Outside) | Err(_) => {}
                }
                found.map_err(Arc::new)
            })
            .await
            .clone();
        // The caches answer from now on (an error is tried again by the next request).
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            if inflight.get(path).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(path);
            }
        }
        result.map_err(|e| io::Error::new(e.kind(), e))
    }

    /// What the caches remember of `path`: a file opened before, or a recent miss.
    fn remembered(&self, path: &str) -> Option<Lookup> {
        if let Some(entry) = self.files.get(path) {
            return Some(Lookup::Found(entry));
        }
        self.missing.contains_key(path).then_some(Lookup::NotFound)
    }

    /// Forgets a cached file so that the next lookup opens it again.
    pub fn invalidate(&self, path: &str) {
        self.files.invalidate(path);
        self.missing.invalidate(path);
    }

    /// How many path walks ran on the blocking pool (lookups the caches did not answer).
    pub fn walks(&self) -> u64 {
        self.walks.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn open_file(&self, path: &str) -> io::Result<Lookup> {
        self.walks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let relative = path.trim_start_matches('/');
        if relative.is_empty() || path.ends_with('/') {
            return Ok(Lookup::NotFound);
        }
        let joined = self.root.join(relative);
        let canonical = match std::fs::canonicalize(&joined) {
            Ok(p) => p,
            Err(e) if is_absent(&e) => return Ok(Lookup::NotFound),
            Err(e) => return Err(e),
        };
        if !canonical.starts_with(&self.root) {
            return Ok(Lookup::Outside);
        }
        let file = match File::options()
            .read(true)
            .custom_flags(open_flags())
            .open(&canonical)
        {
            Ok(f) => f,
            Err(e) if is_absent(&e) => return Ok(Lookup::NotFound),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Ok(Lookup::NotFound);
        }
        let len = meta.len();
        let body = if len == 0 {
            Bytes::new()
        } else {
            let mut options = memmap2::MmapOptions::new();
            if len <= POPULATE_LIMIT {
                options.populate();
            }
            // SAFETY: the map is read-only and the store's invariant is that files under the
            // root are replaced by rename, never modified in place, so the mapped bytes stay
            // valid and unchanged for the life of the map.
            #[allow(unsafe_code)]
            let map = unsafe { options.map(&file)? };
            Bytes::from_owner(map)
        };
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let mtime_ns = (meta.mtime() as i128) * 1_000_000_000 + meta.mtime_nsec() as i128;
        let etag = format!("\"{len:x}-{mtime_ns:x}\"");
        Ok(Lookup::Found(Arc::new(FileEntry {
            body,
            // Both values are built from hex digits and an HTTP date: always valid.
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified))
                .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
            modified,
        })))
    }
}

/// The open(2) flags of a lookup: refuse a final symlink (one swapped in after the path was
/// canonicalized) and never block on a FIFO. Their values differ between architectures
/// (`O_NOFOLLOW` is 0o400000 on x86 but 0o100000 on arm64), so they come from rustix.
fn open_flags() -> i32 {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    // The flags are small positive bits on every architecture; `custom_flags` takes a C int.
    flags.bits() as i32
}

fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::InvalidFilename
    ) || e.raw_os_error() == Some(40) // ELOOP: a symbolic link where none may be.
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("estuary-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn open_flags_are_the_platforms() {
        assert_eq!(open_flags(), libc::O_NOFOLLOW | libc::O_NONBLOCK);
        // And the kernel agrees: a final symlink is refused with ELOOP.
        let base = tempdir("nofollow");
        std::fs::write(base.join("target"), b"x").expect("write");
        std::os::unix::fs::symlink(base.join("target"), base.join("link")).expect("link");
        let err = File::options()
            .read(true)
            .custom_flags(open_flags())
            .open(base.join("link"))
            .expect_err("a symlink must not be opened");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[tokio::test]
    async fn finds_files_and_refuses_links_out_of_root() {
        let base = tempdir("links");
        let root = base.join("root");
        std::fs::create_dir_all(root.join("v")).expect("mkdir");
        std::fs::write(root.join("v/a.m4s"), b"hello").expect("write");
        std::fs::write(base.join("secret"), b"secret").expect("write");
        std::os::unix::fs::symlink(base.join("secret"), root.join("v/out")).expect("link");
        std::os::unix::fs::symlink(root.join("v/a.m4s"), root.join("v/in")).expect("link");
        std::os::unix::fs::symlink(&base, root.join("up")).expect("link");
        let store = Arc::new(Store::open(&root, 10, Duration::from_secs(5)).expect("open"));
        match store.lookup("/v/a.m4s").await.expect("lookup") {
            Lookup::Found(f) => assert_eq!(&f.body[..], b"hello"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(store.lookup("/v/in").await, Ok(Lookup::Found(_))));
        assert!(matches!(store.lookup("/v/out").await, Ok(Lookup::Outside)));
        assert!(matches!(
            store.lookup("/up/secret").await,
            Ok(Lookup::Outside)
        ));
        assert!(matches!(store.lookup("/v").await, Ok(Lookup::NotFound)));
        assert!(matches!(store.lookup("/v/").await, Ok(Lookup::NotFound)));
        assert!(matches!(store.lookup("/nope").await, Ok(Lookup::NotFound)));
        assert!(matches!(
            store.lookup("/v/a.m4s/x").await,
            Ok(Lookup::NotFound)
        ));
        let _ = std::fs::remove_dir_all(&base);
    }
}

#[cfg(test)]
mod stampede_tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_lookups_of_a_new_path_walk_it_once() {
        let root = std::env::temp_dir().join(format!("estuary-stampede-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("v")).expect("mkdir");
        std::fs::write(root.join("v/here.m4s"), b"bytes").expect("write");
        let store = Arc::new(Store::open(&root, 100, Duration::from_secs(60)).expect("open"));
        for (path, found) in [("/v/cold.m4s", false), ("/v/here.m4s", true)] {
            let before = store.walks();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..64 {
                let store = Arc::clone(&store);
                tasks.spawn(async move { store.lookup(path).await });
            }
            while let Some(r) = tasks.join_next().await {
                let lookup = r.expect("task").expect("lookup");
                assert_eq!(matches!(lookup, Lookup::Found(_)), found, "{path}");
            }
            assert_eq!(store.walks() - before, 1, "{path}: one walk for 64 lookups");
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
