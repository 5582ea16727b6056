//! The pull-through cache: objects filled from upstream, kept in RAM over an NVMe tier by
//! foyer's hybrid cache. RAM eviction is S3-FIFO (one-hit wonders leave the small queue
//! before they displace the working set). Objects are written to the disk tier when inserted,
//! after their integrity was checked, so a restart (even after kill -9) finds every object
//! whose write completed; foyer checksums entries and drops torn ones on recovery.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy, PsyncIoEngineConfig, RecoverMode, S3FifoConfig,
};

/// Format version of [`CachedObject`] on disk; objects of another version are dropped.
const VERSION: u8 = 1;

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
    pub body: Bytes,
}

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
            w.write_all(&(self.body.len() as u64).to_le_bytes())?;
            w.write_all(&self.body)
        })
    }

    fn decode(r: &mut impl Read) -> foyer::Result<Self> {
        let inner = |r: &mut dyn Read| -> std::io::Result<Self> {
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
            let len = get_u64(&mut r)?;
            if len > 1 << 34 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "body too long",
                ));
            }
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
                body: Bytes::from(body),
            })
        };
        inner(r).map_err(foyer::Error::io_error)
    }

    fn estimated_size(&self) -> usize {
        1 + 2
            + 12
            + self.content_type.len()
            + self.upstream_etag.len()
            + self.last_modified.len()
            + 32
            + 32
            + 8
            + self.body.len()
    }
}

impl CachedObject {
    /// Whether the object may be served without asking upstream at `now`.
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fresh_until
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
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cache")
    }
}

impl Cache {
    /// Opens (and recovers) the cache.
    pub async fn open(tiers: &TierConfig<'_>) -> anyhow::Result<Self> {
        let builder = HybridCacheBuilder::new()
            .with_name("estuary-edge")
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .with_flush_on_close(true)
            .memory(tiers.ram_bytes.max(1))
            .with_shards(8)
            .with_eviction_config(S3FifoConfig::default())
            .with_weighter(|key: &String, value: &CachedObject| {
                key.len() + value.body.len() + value.content_type.len() + 160
            })
            .storage();
        let inner = match tiers.disk_dir {
            Some(dir) if tiers.disk_bytes > 0 => {
                std::fs::create_dir_all(dir)?;
                let device = FsDeviceBuilder::new(dir)
                    .with_capacity(tiers.disk_bytes)
                    .build()?;
                builder
                    .with_io_engine_config(PsyncIoEngineConfig::new())
                    .with_engine_config(
                        BlockEngineConfig::new(device)
                            .with_block_size(tiers.max_object_bytes)
                            // Purges and refreshes overwrite keys: a tombstone log keeps a
                            // removed object from coming back after a restart.
                            .with_tombstone_log(true),
                    )
                    // Never panic on a damaged disk tier: skip what does not verify.
                    .with_recover_mode(RecoverMode::Quiet)
                    .build()
                    .await?
            }
            _ => builder.build().await?,
        };
        Ok(Self { inner })
    }

    /// Looks an object up in RAM, then on disk; says which tier answered.
    pub async fn get(&self, key: &str) -> Option<(Arc<CachedObject>, Tier)> {
        match self.inner.get(&key.to_owned()).await {
            Ok(Some(entry)) => {
                let tier = match entry.source() {
                    foyer::Source::Disk => Tier::Disk,
                    _ => Tier::Ram,
                };
                Some((Arc::new(entry.value().clone()), tier))
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
        self.inner.insert(key, object);
    }

    /// Removes one object from both tiers.
    pub fn remove(&self, key: &str) {
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
            body: Bytes::from_static(b"hello world"),
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
    }

    #[tokio::test]
    async fn the_disk_tier_survives_a_reopen() {
        let dir = std::env::temp_dir().join(format!("estuary-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tiers = TierConfig {
            ram_bytes: 1 << 20,
            disk_dir: Some(&dir),
            disk_bytes: 64 << 20,
            max_object_bytes: 4 << 20,
        };
        {
            let cache = Cache::open(&tiers).await.expect("open");
            cache.insert("/a".into(), object());
            cache.insert("/gone".into(), object());
            cache.remove("/gone");
            cache.close().await;
        }
        let cache = Cache::open(&tiers).await.expect("reopen");
        let (got, tier) = cache.get("/a").await.expect("recovered");
        assert_eq!(*got, object());
        assert_eq!(tier, Tier::Disk);
        assert!(cache.get("/gone").await.is_none());
        cache.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
