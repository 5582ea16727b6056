//! The pull-through cache: objects filled from upstream, kept in RAM over an NVMe tier.
//! With `policy = "video"` (the default) the RAM tier is the edge's own: a map of objects
//! whose admission and eviction the video-aware policy decides (`eviction/video.rs`, a pure
//! state machine fed with the request's session and a monotonic clock), in front of foyer's
//! hybrid cache, which keeps the disk tier (and a small RAM buffer of its own). With
//! `policy = "s3fifo"` foyer's RAM tier does it all with S3-FIFO. Objects are written to the disk tier when inserted,
//! after their integrity was checked, so a restart (even after kill -9) finds every object
//! whose write completed; foyer checksums entries and drops torn ones on recovery.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, Event, EventListener, FsDeviceBuilder, HybridCache,
    HybridCacheBuilder, HybridCachePolicy, PsyncIoEngineConfig, RecoverMode, S3FifoConfig,
    Statistics, StorageFilter, StorageFilterCondition, StorageFilterResult,
};
use std::sync::Mutex;

/// The player session a cache lookup is made for, which the video RAM policy follows.
#[derive(Debug, Clone, Copy)]
pub enum Session<'a> {
    /// The CMCD `sid` the player sent.
    Sid(&'a str),
    /// The client's address, for players that send no `sid`.
    Addr(std::net::IpAddr),
}

/// An owned [`Session`], for what outlives the request (a reader of a sliced object asks for
/// each slice as it gets there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKey {
    /// The CMCD `sid` the player sent.
    Sid(String),
    /// The client's address.
    Addr(std::net::IpAddr),
}

impl SessionKey {
    /// The borrowed form the cache takes.
    pub fn as_session(&self) -> Session<'_> {
        match self {
            Self::Sid(sid) => Session::Sid(sid),
            Self::Addr(addr) => Session::Addr(*addr),
        }
    }
}

impl From<Session<'_>> for SessionKey {
    fn from(s: Session<'_>) -> Self {
        match s {
            Session::Sid(sid) => Self::Sid(sid.to_owned()),
            Session::Addr(addr) => Self::Addr(addr),
        }
    }
}

/// Format version of [`CachedObject`] on disk; objects of another version are dropped.
const VERSION: u8 = 3;

/// The page size that bodies are aligned to on disk.
const PAGE: usize = 4096;
/// The bytes foyer's block engine writes in front of each entry's value (`EntryHeader`:
/// key and value lengths, hash, sequence, checksum, magic). foyer starts every entry on a
/// page boundary, so a body that starts `PAGE - (FOYER_ENTRY_HEADER + head) % PAGE` bytes of
/// padding after our head starts on a page boundary of the cache file. A foyer upgrade that
/// changes this size is caught by the test `bodies_are_page_aligned_in_the_cache_files`.
const FOYER_ENTRY_HEADER: usize = 36;

/// The length of the fixed part of an encoded object in front of the padding.
fn head_len(o: &CachedObject) -> usize {
    // version, status, three strings with u32 lengths, four u64 times, sha-256, slicing tag
    // and three u64, body length, u16 padding length.
    1 + 2
        + 12
        + o.content_type.len()
        + o.upstream_etag.len()
        + o.last_modified.len()
        + 32
        + 32
        + 25
        + 8
        + 2
}

/// Padding between the head and the body that puts the body on a page boundary on disk.
fn body_padding(o: &CachedObject) -> usize {
    if o.body.is_empty() {
        return 0;
    }
    (PAGE - (FOYER_ENTRY_HEADER + head_len(o)) % PAGE) % PAGE
}

/// How a cached entry relates to the object it stores.
///
/// Objects larger than the slice size are kept as a `Meta` entry under the object's path
/// (lengths, validators, freshness) and one `Slice` entry per fixed-size piece, so that a
/// range request fills and keeps only the pieces it touches (nginx's slice module does the
/// same). A slice belongs to one generation of its object: a new version or a purge starts a
/// new generation, and slices of an older one are never served with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Slicing {
    /// The entry's body is the whole object.
    #[default]
    Whole,
    /// The object is kept in slices; the entry has no body.
    Meta {
        total: u64,
        slice_size: u64,
        generation: u64,
    },
    /// Slice `index` (bytes `index * slice_size ..`) of one generation of an object.
    Slice { index: u64, generation: u64 },
}

/// The cache key of slice `index` of `path` (paths never contain NUL: the edge refuses it).
pub fn slice_key(path: &str, index: u64) -> String {
    format!("{path}\0{index}")
}

/// One cached response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedObject {
    /// 200, or 404 for a remembered miss.
    pub status: u16,
    /// Upstream's `Content-Type`, if it sent one.
    pub content_type: String,
    /// Upstream's entity tag (for revalidation), or empty.
    pub upstream_etag: String,
    /// Upstream's `Last-Modified`, or empty.
    pub last_modified: String,
    /// When the object was stored or last revalidated (unix seconds).
    pub stored_at: u64,
    /// Until when it may be served without asking upstream (unix seconds).
    pub fresh_until: u64,
    /// Seconds past `fresh_until` during which it may be served while it is refreshed.
    pub stale_while_revalidate: u64,
    /// Seconds past `fresh_until` during which it may be served when every upstream fails.
    pub stale_if_error: u64,
    /// sha-256 of the body, computed by the edge while filling.
    pub sha256: [u8; 32],
    /// Whole object, slice index, or the index of a sliced one.
    pub slicing: Slicing,
    pub body: Bytes,
    /// The response validators, made on the first hit and kept with the object in RAM.
    pub prepared: Prepared,
}

/// Lazily built response parts of a cached object (not stored on disk; equal whatever they
/// hold, so they never make two objects differ).
#[derive(Debug, Default)]
pub struct Prepared(std::sync::OnceLock<crate::store::FileEntry>);

impl Clone for Prepared {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Prepared {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Prepared {}

fn put_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u32).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn get_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn get_str(r: &mut impl Read) -> std::io::Result<String> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    let len = u32::from_le_bytes(b) as usize;
    if len > 64 * 1024 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "string too long",
        ));
    }
    let mut s = vec![0u8; len];
    r.read_exact(&mut s)?;
    String::from_utf8(s).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

impl Code for CachedObject {
    fn encode(&self, w: &mut impl Write) -> foyer::Result<()> {
        let io = |w: &mut dyn FnMut() -> std::io::Result<()>| w().map_err(foyer::Error::io_error);
        io(&mut || {
            w.write_all(&[VERSION])?;
            w.write_all(&self.status.to_le_bytes())?;
            put_str(w, &self.content_type)?;
            put_str(w, &self.upstream_etag)?;
            put_str(w, &self.last_modified)?;
            for v in [
                self.stored_at,
                self.fresh_until,
                self.stale_while_revalidate,
                self.stale_if_error,
            ] {
                w.write_all(&v.to_le_bytes())?;
            }
            w.write_all(&self.sha256)?;
            let (tag, a, b, c) = match self.slicing {
                Slicing::Whole => (0u8, 0, 0, 0),
                Slicing::Meta {
                    total,
                    slice_size,
                    generation,
                } => (1, total, slice_size, generation),
                Slicing::Slice { index, generation } => (2, index, 0, generation),
            };
            w.write_all(&[tag])?;
            for v in [a, b, c] {
                w.write_all(&v.to_le_bytes())?;
            }
            w.write_all(&(self.body.len() as u64).to_le_bytes())?;
            // Page-aligned bodies on disk: a disk hit reads whole pages, and the body inside
            // them starts on a page (see `body_padding`).
            let pad = body_padding(self);
            w.write_all(&(pad as u16).to_le_bytes())?;
            w.write_all(&[0u8; PAGE][..pad])?;
            w.write_all(&self.body)
        })
    }

    fn decode(r: &mut impl Read) -> foyer::Result<Self> {
        let max_body = match MAX_DISK_BODY.load(std::sync::atomic::Ordering::Relaxed) {
            0 => MAX_DISK_BODY_UNSET,
            n => n,
        };
        Self::decode_at_most(r, max_body).map_err(foyer::Error::io_error)
    }

    fn estimated_size(&self) -> usize {
        head_len(self) + body_padding(self) + self.body.len()
    }
}

/// The largest body the disk-tier decoder accepts, in bytes: the disk tier's block size (from
/// `cache.max_object`), set when a cache opens. foyer's `Code::decode` takes no context, so the
/// limit is process-wide; with several caches in one process (tests) the largest applies.
static MAX_DISK_BODY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// The limit before any cache opened: the largest `cache.max_object` allowed, plus the block's
/// room for the entry's head.
const MAX_DISK_BODY_UNSET: u64 = (1 << 30) + 64 * 1024;

impl CachedObject {
    /// Decodes an entry of the disk tier whose body may be at most `max_body` bytes. The
    /// entry's bytes come from disk and may be damaged: a length above the limit is refused
    /// before anything is allocated for it.
    fn decode_at_most(r: &mut dyn Read, max_body: u64) -> std::io::Result<Self> {
        {
            let mut r = r;
            let mut v = [0u8; 1];
            r.read_exact(&mut v)?;
            if v[0] != VERSION {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "unknown version",
                ));
            }
            let mut s = [0u8; 2];
            r.read_exact(&mut s)?;
            let status = u16::from_le_bytes(s);
            let content_type = get_str(&mut r)?;
            let upstream_etag = get_str(&mut r)?;
            let last_modified = get_str(&mut r)?;
            let stored_at = get_u64(&mut r)?;
            let fresh_until = get_u64(&mut r)?;
            let stale_while_revalidate = get_u64(&mut r)?;
            let stale_if_error = get_u64(&mut r)?;
            let mut sha256 = [0u8; 32];
            r.read_exact(&mut sha256)?;
            let mut tag = [0u8; 1];
            r.read_exact(&mut tag)?;
            let (a, b, c) = (get_u64(&mut r)?, get_u64(&mut r)?, get_u64(&mut r)?);
            let slicing = match tag[0] {
                0 => Slicing::Whole,
                1 if b > 0 => Slicing::Meta {
                    total: a,
                    slice_size: b,
                    generation: c,
                },
                2 => Slicing::Slice {
                    index: a,
                    generation: c,
                },
                _ => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "unknown slicing",
                    ));
                }
            };
            let len = get_u64(&mut r)?;
            if len > max_body {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("body of {len} bytes is longer than the disk tier's {max_body}"),
                ));
            }
            let mut p = [0u8; 2];
            r.read_exact(&mut p)?;
            let pad = u16::from_le_bytes(p) as usize;
            if pad >= PAGE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "padding too long",
                ));
            }
            r.read_exact(&mut [0u8; PAGE][..pad])?;
            let mut body = vec![0u8; len as usize];
            r.read_exact(&mut body)?;
            Ok(Self {
                status,
                content_type,
                upstream_etag,
                last_modified,
                stored_at,
                fresh_until,
                stale_while_revalidate,
                stale_if_error,
                sha256,
                slicing,
                body: Bytes::from(body),
                prepared: Prepared::default(),
            })
        }
    }
}

impl CachedObject {
    /// Whether the object may be served without asking upstream at `now`.
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fresh_until
    }

    /// The body with its validators, as the file rules (conditionals, ranges) want them:
    /// built once per object in RAM, not on every hit.
    pub fn file_entry(&self) -> &crate::store::FileEntry {
        self.prepared.0.get_or_init(|| {
            use http::HeaderValue;
            let modified = httpdate::parse_http_date(&self.last_modified).unwrap_or(
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(self.stored_at),
            );
            let etag = if self.upstream_etag.starts_with('"') {
                self.upstream_etag.clone()
            } else {
                let hex: String = self.sha256[..16]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("\"{hex}\"")
            };
            crate::store::FileEntry {
                body: self.body.clone(),
                etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
                last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified))
                    .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
                modified,
            }
        })
    }

    /// Seconds since it was stored or revalidated (the `Age` header).
    pub fn age(&self, now: u64) -> u64 {
        now.saturating_sub(self.stored_at)
    }
}

/// Sizes and places of the two tiers.
#[derive(Debug, Clone)]
pub struct TierConfig<'a> {
    pub ram_bytes: usize,
    pub disk_dir: Option<&'a Path>,
    pub disk_bytes: usize,
    /// The largest object the disk tier takes (the foyer block size).
    pub max_object_bytes: usize,
    /// An object is written to disk on its `disk_min_fills`-th fill within the doorkeeper's
    /// memory (1: on every fill). One-hit wonders then stay in RAM and never cost a disk
    /// write, as with nginx's `proxy_cache_min_uses` or second-hit caching.
    pub disk_min_fills: u32,
    /// Which policy runs the RAM tier.
    pub policy: RamPolicy,
    /// Seed of the video policy's sampling and hashes.
    pub seed: u64,
}

/// The RAM tier's admission and eviction policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RamPolicy {
    /// The video-aware policy (`eviction/video.rs`) in a RAM tier the edge owns.
    #[default]
    Video,
    /// foyer's S3-FIFO, in foyer's RAM tier.
    S3Fifo,
}

/// The RAM tier of the video policy: the policy and the objects it keeps.
struct VideoRam {
    policy: crate::eviction::video::VideoPolicy,
    objects: std::collections::HashMap<String, Arc<CachedObject>>,
}

/// The weight of an object in RAM (what both policies count against `ram`).
fn weight(key: &str, value: &CachedObject) -> usize {
    key.len() + value.body.len() + value.content_type.len() + 160
}

/// What the cache reports (kept by the edge's metrics).
pub trait CacheObserver: Send + Sync + 'static {
    /// An object left the RAM tier to make room.
    fn ram_evicted(&self, bytes: u64);
    /// The disk tier's admission filter took or refused an object.
    fn disk_admission(&self, admitted: bool);
}

/// Counts RAM evictions.
struct EvictionListener(Arc<dyn CacheObserver>);

impl EventListener for EvictionListener {
    type Key = String;
    type Value = CachedObject;

    fn on_leave(&self, reason: Event, _key: &String, value: &CachedObject) {
        if reason == Event::Evict {
            self.0.ram_evicted(value.body.len() as u64);
        }
    }
}

/// The disk tier's admission filter: remembers how often each key was filled (by foyer's hash
/// of the key, in a bounded moka cache) and admits an object to disk from its
/// `min_fills`-th fill on.
#[derive(Clone)]
struct Doorkeeper {
    fills: moka::sync::Cache<u64, u32>,
    min_fills: u32,
    observer: Arc<dyn CacheObserver>,
}

impl std::fmt::Debug for Doorkeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorkeeper")
            .field("min_fills", &self.min_fills)
            .finish()
    }
}

impl Doorkeeper {
    fn new(keys: u64, min_fills: u32, observer: Arc<dyn CacheObserver>) -> Self {
        Self {
            fills: moka::sync::Cache::builder()
                .max_capacity(keys)
                .time_to_idle(std::time::Duration::from_secs(24 * 3600))
                .build(),
            min_fills,
            observer,
        }
    }

    fn note_fill(&self, hash: u64) {
        if self.min_fills > 1 {
            self.fills
                .entry(hash)
                .and_upsert_with(|old| old.map_or(1, |e| e.into_value().saturating_add(1)));
        }
    }

    fn admits(&self, hash: u64) -> bool {
        self.min_fills <= 1 || self.fills.get(&hash).unwrap_or(0) >= self.min_fills
    }
}

impl StorageFilterCondition for Doorkeeper {
    fn filter(&self, _: &Arc<Statistics>, hash: u64, _: usize) -> StorageFilterResult {
        let admitted = self.admits(hash);
        self.observer.disk_admission(admitted);
        if admitted {
            StorageFilterResult::Admit
        } else {
            StorageFilterResult::Reject
        }
    }
}

/// A cached object as the cache holds it (shared, not copied).
pub enum Hit {
    Foyer(foyer::HybridCacheEntry<String, CachedObject>),
    Ram(Arc<CachedObject>),
}

impl std::ops::Deref for Hit {
    type Target = CachedObject;
    fn deref(&self) -> &CachedObject {
        match self {
            Hit::Foyer(e) => e.value(),
            Hit::Ram(o) => o,
        }
    }
}

impl std::fmt::Debug for Hit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hit::Foyer(e) => f.debug_tuple("Hit").field(&e.key()).finish(),
            Hit::Ram(_) => f.write_str("Hit(ram)"),
        }
    }
}

impl Hit {
    /// An owned copy, for the paths that keep the object past the request (revalidation,
    /// slices).
    pub fn to_arc(&self) -> Arc<CachedObject> {
        match self {
            Hit::Foyer(e) => Arc::new(e.value().clone()),
            Hit::Ram(o) => Arc::clone(o),
        }
    }
}

/// Which tier served a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Ram,
    Disk,
}

/// The cache: keys are normalized paths.
#[derive(Clone)]
pub struct Cache {
    inner: HybridCache<String, CachedObject>,
    doorkeeper: Doorkeeper,
    /// The edge's own RAM tier, with the video policy.
    ram: Option<Arc<Mutex<VideoRam>>>,
    /// The edge's clock, and the instant the policy's time starts at (milliseconds since are
    /// its `now`).
    clock: crate::clock::Clock,
    epoch: std::time::Instant,
    observer: Arc<dyn CacheObserver>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cache")
    }
}

impl Cache {
    /// Opens (and recovers) the cache.
    pub async fn open(
        tiers: &TierConfig<'_>,
        observer: Arc<dyn CacheObserver>,
    ) -> anyhow::Result<Self> {
        // Remember about two keys per object the disk could hold at 512 KiB an object.
        let keys = (tiers.disk_bytes as u64 / (256 * 1024)).clamp(16 * 1024, 1 << 20);
        let doorkeeper = Doorkeeper::new(keys, tiers.disk_min_fills, Arc::clone(&observer));
        // With the video policy, foyer keeps only a small RAM buffer (objects on their way to
        // disk, disk reads) and the edge's tier gets the rest.
        MAX_DISK_BODY.fetch_max(
            tiers.max_object_bytes as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let (foyer_ram, ram) = match tiers.policy {
            RamPolicy::S3Fifo => (tiers.ram_bytes, None),
            RamPolicy::Video => {
                let buffer = (tiers.ram_bytes / 16).min(256 << 20);
                let config = crate::eviction::video::VideoPolicyConfig::new(
                    (tiers.ram_bytes - buffer) as u64,
                    tiers.seed,
                );
                let ram = VideoRam {
                    policy: crate::eviction::video::VideoPolicy::new(config),
                    objects: std::collections::HashMap::new(),
                };
                (buffer, Some(Arc::new(Mutex::new(ram))))
            }
        };
        let builder = HybridCacheBuilder::new()
            .with_name("estuary-edge")
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .with_flush_on_close(true)
            .with_event_listener(Arc::new(EvictionListener(Arc::clone(&observer))))
            .memory(foyer_ram.max(1))
            .with_shards(8)
            .with_eviction_config(S3FifoConfig::default())
            .with_weighter(|key: &String, value: &CachedObject| weight(key, value))
            .storage();
        let inner = match tiers.disk_dir {
            Some(dir) if tiers.disk_bytes > 0 => {
                std::fs::create_dir_all(dir)?;
                // Refuse a tier that cannot fit before foyer makes its files.
                crate::disk_space::check(dir, tiers.disk_bytes as u64)
                    .map_err(|why| anyhow::anyhow!("cache.disk: {why}"))?;
                let device = FsDeviceBuilder::new(dir)
                    .with_capacity(tiers.disk_bytes)
                    .build()?;
                let inner = builder
                    .with_io_engine_config(PsyncIoEngineConfig::new())
                    .with_engine_config(
                        BlockEngineConfig::new(device)
                            .with_block_size(tiers.max_object_bytes)
                            // Purges and refreshes overwrite keys: a tombstone log keeps a
                            // removed object from coming back after a restart.
                            .with_tombstone_log(true)
                            .with_admission_filter(
                                StorageFilter::new().with_condition(doorkeeper.clone()),
                            ),
                    )
                    // Never panic on a damaged disk tier: skip what does not verify.
                    .with_recover_mode(RecoverMode::Quiet)
                    .build()
                    .await?;
                // Its files are sparse: claim their blocks now, so that the tier's writes never
                // meet a full filesystem later.
                match crate::disk_space::claim(dir) {
                    Ok(bytes) => tracing::info!(
                        dir = %dir.display(),
                        bytes,
                        "The disk tier's space is allocated."
                    ),
                    Err(e) if e.kind() == std::io::ErrorKind::Unsupported => tracing::warn!(
                        dir = %dir.display(),
                        "The filesystem cannot allocate ahead (no fallocate): the disk tier \
                         takes its space as it writes, and writes fail if others fill it first."
                    ),
                    Err(e) => {
                        inner.close().await.ok();
                        anyhow::bail!(
                            "cache.disk: could not allocate the disk tier in {}: {e}",
                            dir.display()
                        );
                    }
                }
                inner
            }
            _ => builder.build().await?,
        };
        Ok(Self {
            inner,
            doorkeeper,
            ram,
            clock: crate::clock::Clock::system(),
            epoch: std::time::Instant::now(),
            observer,
        })
    }

    /// Reads time from `clock` (the edge's one clock) from now on.
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Self {
        self.epoch = clock.now();
        self.clock = clock;
        self
    }

    /// The video policy's `now`: milliseconds since the cache opened.
    fn now_ms(&self) -> u64 {
        let elapsed = self.clock.now().saturating_duration_since(self.epoch);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// Locks the video RAM tier (a panic elsewhere while it was held leaves consistent data:
    /// every update completes before the guard drops).
    fn lock_ram(ram: &Mutex<VideoRam>) -> std::sync::MutexGuard<'_, VideoRam> {
        ram.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Offers an object to the video RAM tier; carries out the evictions the policy returns.
    fn offer_ram(&self, ram: &Mutex<VideoRam>, key: &str, object: Arc<CachedObject>) {
        let now = self.now_ms();
        let size = weight(key, &object) as u64;
        let mut evicted_bytes = Vec::new();
        {
            let mut tier = Self::lock_ram(ram);
            let admission = tier.policy.offer(now, key, size);
            for k in &admission.evicted {
                if let Some(o) = tier.objects.remove(&**k) {
                    evicted_bytes.push(o.body.len() as u64);
                }
            }
            if admission.admitted {
                tier.objects.insert(key.to_owned(), object);
            } else {
                tier.objects.remove(key);
            }
        }
        for bytes in evicted_bytes {
            self.observer.ram_evicted(bytes);
        }
    }

    /// Records that `key` is being filled from upstream (for the disk admission filter).
    pub fn note_fill(&self, key: &str) {
        self.doorkeeper
            .note_fill(self.inner.memory().hash(&key.to_owned()));
    }

    /// Looks an object up in RAM, then on disk; says which tier answered.
    pub async fn get(&self, key: &str) -> Option<(Hit, Tier)> {
        self.get_for(key, None).await
    }

    /// Looks an object up for a player session (its CMCD `sid`, or its address), which the
    /// video policy follows to tell which objects will be asked for soon.
    pub async fn get_for(&self, key: &str, session: Option<Session<'_>>) -> Option<(Hit, Tier)> {
        if let Some(ram) = &self.ram {
            let now = self.now_ms();
            let found = {
                let mut tier = Self::lock_ram(ram);
                Self::note_request_locked(&mut tier, now, key, session);
                tier.objects.get(key).cloned()
            };
            if let Some(object) = found {
                return Some((Hit::Ram(object), Tier::Ram));
            }
            let (hit, tier) = self.get_foyer(key).await?;
            // A disk (or buffer) hit is a RAM miss: the policy decides whether it moves up.
            self.offer_ram(ram, key, hit.to_arc());
            return Some((hit, tier));
        }
        self.get_foyer(key).await
    }

    /// Tells the video policy that `session` asks for `key` without looking it up: the
    /// request is answered by a fill already joined (a slice read ahead), which the policy
    /// must still see to follow the session.
    pub fn note_request(&self, key: &str, session: Option<Session<'_>>) {
        if let Some(ram) = &self.ram {
            let now = self.now_ms();
            Self::note_request_locked(&mut Self::lock_ram(ram), now, key, session);
        }
    }

    fn note_request_locked(tier: &mut VideoRam, now: u64, key: &str, session: Option<Session<'_>>) {
        let session = session.map(|s| match s {
            Session::Sid(sid) => tier.policy.session_id(sid),
            Session::Addr(addr) => tier.policy.session_id_of_addr(addr),
        });
        tier.policy.on_request(now, session, key);
    }

    async fn get_foyer(&self, key: &str) -> Option<(Hit, Tier)> {
        // RAM first, without the hybrid lookup's set-up or a copy of the key: the hot path.
        if let Some(entry) = self.inner.memory().get(key) {
            return Some((Hit::Foyer(entry), Tier::Ram));
        }
        match self.inner.get(key).await {
            Ok(Some(entry)) => {
                let tier = match entry.source() {
                    foyer::Source::Disk => Tier::Disk,
                    _ => Tier::Ram,
                };
                Some((Hit::Foyer(entry), tier))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, key, "The disk tier could not read an object.");
                None
            }
        }
    }

    /// Stores an object in RAM and, as it is inserted, on disk.
    pub fn insert(&self, key: String, object: CachedObject) {
        if let Some(ram) = &self.ram {
            self.offer_ram(ram, &key, Arc::new(object.clone()));
        }
        self.inner.insert(key, object);
    }

    /// Whether either tier may hold `key` (no IO; the disk answer may be a false positive).
    pub fn contains(&self, key: &str) -> bool {
        if let Some(ram) = &self.ram
            && Self::lock_ram(ram).objects.contains_key(key)
        {
            return true;
        }
        self.inner.contains(key)
    }

    /// Removes one object from both tiers.
    pub fn remove(&self, key: &str) {
        if let Some(ram) = &self.ram {
            let mut tier = Self::lock_ram(ram);
            tier.policy.remove(key);
            tier.objects.remove(key);
        }
        self.inner.remove(&key.to_owned());
    }

    /// Flushes and closes the disk tier (on shutdown).
    pub async fn close(&self) {
        if let Err(e) = self.inner.close().await {
            tracing::warn!(error = %e, "The cache did not close cleanly.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;
    impl CacheObserver for Quiet {
        fn ram_evicted(&self, _: u64) {}
        fn disk_admission(&self, _: bool) {}
    }

    fn object() -> CachedObject {
        CachedObject {
            status: 200,
            content_type: "video/mp4".into(),
            upstream_etag: "\"abc\"".into(),
            last_modified: "Thu, 01 Jan 1970 00:00:00 GMT".into(),
            stored_at: 10,
            fresh_until: 20,
            stale_while_revalidate: 5,
            stale_if_error: 600,
            sha256: [7; 32],
            slicing: Slicing::Slice {
                index: 3,
                generation: 99,
            },
            body: Bytes::from_static(b"hello world"),
            prepared: Prepared::default(),
        }
    }

    #[test]
    fn objects_round_trip_and_garbage_is_refused() {
        let mut buf = Vec::new();
        object().encode(&mut buf).expect("encode");
        assert_eq!(
            CachedObject::decode(&mut &buf[..]).expect("decode"),
            object()
        );
        assert!(CachedObject::decode(&mut &buf[..buf.len() - 1]).is_err());
        let mut other = buf.clone();
        other[0] = 99;
        assert!(CachedObject::decode(&mut &other[..]).is_err());
        // The body starts on a page once foyer's entry header is in front.
        assert_eq!(object().estimated_size(), buf.len());
        assert_eq!((FOYER_ENTRY_HEADER + buf.len() - 11) % PAGE, 0);
        assert_eq!(&buf[buf.len() - 11..], b"hello world");
    }

    #[test]
    fn a_length_above_the_object_limit_is_refused_before_it_is_allocated() {
        let mut buf = Vec::new();
        object().encode(&mut buf).expect("encode");
        // The body length is the u64 in front of the u16 padding, the padding and the body.
        let pad = body_padding(&object());
        let at = buf.len() - 11 - pad - 2 - 8;
        assert_eq!(buf[at..at + 8], 11u64.to_le_bytes());
        let claim = |len: u64| {
            let mut b = buf[..at].to_vec();
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&buf[at + 8..]);
            b
        };
        // A body one byte over the limit is refused even when that many bytes follow.
        let over = claim(65);
        let mut reader = over[..over.len() - 11].chain(std::io::repeat(7).take(65));
        let err = CachedObject::decode_at_most(&mut reader, 64).expect_err("over the limit");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        // A damaged header claiming 8 GiB is refused without allocating (no short read).
        let huge = claim(8 << 30);
        let err = CachedObject::decode(&mut &huge[..]).expect_err("huge");
        assert!(err.to_string().contains("longer than"), "{err}");
        // At the limit it decodes.
        let mut reader = &buf[..];
        assert_eq!(
            CachedObject::decode_at_most(&mut reader, 11).expect("at the limit"),
            object()
        );
    }

    fn fresh_dir(prefix: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// 1 MiB of RAM over 64 MiB of disk in `dir`.
    fn disk_tiers(dir: &Path, disk_min_fills: u32) -> TierConfig<'_> {
        TierConfig {
            ram_bytes: 1 << 20,
            disk_dir: Some(dir),
            disk_bytes: 64 << 20,
            max_object_bytes: 4 << 20,
            disk_min_fills,
            policy: RamPolicy::Video,
            seed: 1,
        }
    }

    /// Where `needle` starts in any file under `dir`, as (file, offset).
    fn find_in_files(dir: &Path, needle: &[u8]) -> Vec<(std::path::PathBuf, usize)> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let bytes = std::fs::read(&path).expect("read");
                    found.extend(
                        bytes
                            .windows(needle.len())
                            .enumerate()
                            .filter(|(_, w)| *w == needle)
                            .map(|(i, _)| (path.clone(), i)),
                    );
                }
            }
        }
        found
    }

    #[tokio::test]
    async fn bodies_are_page_aligned_in_the_cache_files() {
        let dir = fresh_dir("estuary-align-");
        let tiers = disk_tiers(&dir, 1);
        let mut bodies = Vec::new();
        {
            let cache = Cache::open(&tiers, Arc::new(Quiet)).await.expect("open");
            for (i, size) in [1usize, 700, 5000, 150_000, 600_000]
                .into_iter()
                .enumerate()
            {
                // xorshift bytes: no prefix repeats inside a body or across bodies.
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
                let body: Vec<u8> = (0..size)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let mut o = object();
                o.content_type = "x".repeat(i * 5);
                o.body = Bytes::from(body.clone());
                let key = format!("/aligned/{i}");
                cache.note_fill(&key);
                cache.insert(key, o);
                bodies.push(body);
            }
            cache.close().await;
        }
        for body in &bodies {
            // A prefix long enough to be unique (the first body is a single byte: skip it).
            if body.len() < 64 {
                continue;
            }
            let found = find_in_files(&dir, &body[..64]);
            assert_eq!(
                found.len(),
                1,
                "body of {} bytes found {} times",
                body.len(),
                found.len()
            );
            assert_eq!(
                found[0].1 % PAGE,
                0,
                "body of {} bytes at {:?}",
                body.len(),
                found[0]
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_disk_tier_survives_a_reopen() {
        let dir = fresh_dir("estuary-cache-");
        let tiers = disk_tiers(&dir, 2);
        {
            let cache = Cache::open(&tiers, Arc::new(Quiet)).await.expect("open");
            // Filled twice: admitted to disk; filled once: kept in RAM only.
            cache.note_fill("/a");
            cache.note_fill("/a");
            cache.note_fill("/gone");
            cache.note_fill("/gone");
            cache.insert("/a".into(), object());
            cache.insert("/gone".into(), object());
            cache.remove("/gone");
            cache.note_fill("/once");
            cache.insert("/once".into(), object());
            cache.close().await;
        }
        let cache = Cache::open(&tiers, Arc::new(Quiet)).await.expect("reopen");
        let (got, tier) = cache.get("/a").await.expect("recovered");
        assert_eq!(*got, object());
        assert_eq!(tier, Tier::Disk);
        assert!(cache.get("/gone").await.is_none());
        assert!(
            cache.get("/once").await.is_none(),
            "a one-hit wonder is kept off the disk"
        );
        cache.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
