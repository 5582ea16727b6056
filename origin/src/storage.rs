//! Where packaged assets live: a local folder or an S3-compatible bucket, through the
//! `object_store` crate. Assets are kept under `v/<asset>/`; an asset becomes visible when its
//! `asset.json` is written, which happens last (see [`Storage::publish`]).

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResult, ObjectStore, ObjectStoreExt, PutPayload};

use crate::config::StorageConfig;

/// Errors of the asset store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("{0}: {1}")]
    Local(String, std::io::Error),
    #[error("storage config: {0}")]
    Config(String),
    #[error("the store did not answer {0} within {1:?}")]
    Timeout(&'static str, Duration),
}

impl StorageError {
    /// Whether the store failed (unreachable, slow, refusing), as opposed to a local file of
    /// this machine that could not be read.
    pub fn is_store(&self) -> bool {
        matches!(self, Self::Store(_) | Self::Timeout(..))
    }
}

/// The asset store.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The local root, for a folder store.
    root: Option<std::path::PathBuf>,
    /// The bound of every call (`[storage] timeout`).
    timeout: Duration,
    /// Shown in logs.
    pub describe: String,
}

/// A write may take the call timeout plus this long per MiB (a slow link is not a dead one).
const WRITE_TIME_PER_MIB: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl Storage {
    /// Opens the store the config names (creating a local root).
    pub fn open(config: &StorageConfig) -> Result<Self, StorageError> {
        if let Some(root) = &config.root {
            std::fs::create_dir_all(root)
                .map_err(|e| StorageError::Local(root.display().to_string(), e))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(root)?
                .with_automatic_cleanup(true);
            return Ok(Self {
                store: Arc::new(store),
                prefix: Path::default(),
                root: Some(root.clone()),
                timeout: config.timeout,
                describe: format!("folder {}", root.display()),
            });
        }
        let Some(url) = &config.url else {
            return Err(StorageError::Config("no root and no url".into()));
        };
        let parsed = url::Url::parse(url).map_err(|e| StorageError::Config(e.to_string()))?;
        let bucket = parsed.host_str().unwrap_or_default().to_owned();
        let s3 = &config.s3;
        // The client's own retries stay within one call's timeout: a store that is down fails
        // the call in `timeout`, not after minutes of retrying (the crate's default is ten
        // retries over up to three minutes of 30-second requests).
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: config.timeout,
        };
        let client = object_store::ClientOptions::new()
            .with_allow_http(s3.allow_http)
            .with_connect_timeout(config.timeout.min(Duration::from_secs(5)))
            // No bound on a whole request (a large object streamed to a slow client takes
            // its time), but none may stall for longer than `timeout` between pieces.
            .with_timeout_disabled()
            .with_read_timeout(config.timeout);
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_allow_http(s3.allow_http)
            .with_retry(retry)
            .with_client_options(client);
        if let Some(v) = &s3.endpoint {
            builder = builder
                .with_endpoint(v)
                .with_virtual_hosted_style_request(false);
        }
        if let Some(v) = &s3.region {
            builder = builder.with_region(v);
        }
        if let Some(v) = &s3.access_key_id {
            builder = builder.with_access_key_id(v);
        }
        if let Some(v) = &s3.secret_access_key {
            builder = builder.with_secret_access_key(v);
        }
        let store = builder.build()?;
        let prefix = Path::from(parsed.path().trim_matches('/'));
        Ok(Self {
            store: Arc::new(store),
            prefix,
            root: None,
            timeout: config.timeout,
            describe: format!("bucket {url}"),
        })
    }

    /// Runs one store call within `limit`.
    async fn bounded<T>(
        &self,
        what: &'static str,
        limit: Duration,
        call: impl std::future::Future<Output = Result<T, object_store::Error>>,
    ) -> Result<T, StorageError> {
        match tokio::time::timeout(limit, call).await {
            Ok(r) => r.map_err(StorageError::from),
            Err(_) => Err(StorageError::Timeout(what, limit)),
        }
    }

    fn path(&self, rel: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    /// Reads an object (or a byte range of it); `None` when it does not exist.
    pub async fn get(
        &self,
        rel: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<GetResult>, StorageError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let path = self.path(rel);
        let got = self
            .bounded("a read", self.timeout, self.store.get_opts(&path, options))
            .await;
        not_found_as_none(got)
    }

    /// Whether an object exists.
    pub async fn exists(&self, rel: &str) -> Result<bool, StorageError> {
        let path = self.path(rel);
        let got = self
            .bounded("a head request", self.timeout, self.store.head(&path))
            .await;
        Ok(not_found_as_none(got)?.is_some())
    }

    /// Reads a whole (small) object; `None` when it does not exist.
    pub async fn get_bytes(&self, rel: &str) -> Result<Option<Bytes>, StorageError> {
        let path = self.path(rel);
        let got = self
            .bounded("a read", self.timeout, async {
                self.store.get(&path).await?.bytes().await
            })
            .await;
        not_found_as_none(got)
    }

    /// Publishes a packaged asset folder under `v/<asset>/`: every file, then `asset.json`
    /// last, so that the asset is served only once all of it is in place. Objects of a
    /// previous failed attempt are removed first.
    pub async fn publish(&self, asset: &str, dir: &FsPath) -> Result<u64, StorageError> {
        self.remove_asset(asset).await?;
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files)
            .map_err(|e| StorageError::Local(dir.display().to_string(), e))?;
        files.sort_by_key(|rel| rel == estuary_common::asset::MANIFEST_FILE);
        let mut bytes = 0;
        for rel in files {
            let local = dir.join(&rel);
            let data = tokio::fs::read(&local)
                .await
                .map_err(|e| StorageError::Local(local.display().to_string(), e))?;
            let size = data.len() as u64;
            bytes += size;
            let limit =
                self.timeout + WRITE_TIME_PER_MIB * u32::try_from(size >> 20).unwrap_or(u32::MAX);
            let path = self.path(&format!("v/{asset}/{rel}"));
            self.bounded(
                "a write",
                limit,
                self.store.put(&path, PutPayload::from(data)),
            )
            .await?;
        }
        Ok(bytes)
    }

    /// Removes every object of an asset (`asset.json` first, so it stops being served); how
    /// many objects besides `asset.json` there were.
    pub async fn remove_asset(&self, asset: &str) -> Result<u64, StorageError> {
        let manifest = self.path(&format!(
            "v/{asset}/{}",
            estuary_common::asset::MANIFEST_FILE
        ));
        self.delete(&manifest).await?;
        let objects = self.list_asset(asset).await?;
        for meta in &objects {
            self.delete(&meta.location).await?;
        }
        Ok(objects.len() as u64)
    }

    /// Deletes one object (gone already is fine).
    async fn delete(&self, path: &Path) -> Result<(), StorageError> {
        let done = self
            .bounded("a delete", self.timeout, self.store.delete(path))
            .await;
        not_found_as_none(done.map(Some)).map(drop)
    }

    /// Every object under `v/<asset>/`, each listing page within the timeout.
    async fn list_asset(&self, asset: &str) -> Result<Vec<object_store::ObjectMeta>, StorageError> {
        let prefix = self.path(&format!("v/{asset}"));
        let mut listing = self.store.list(Some(&prefix));
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(self.timeout, listing.next()).await {
                Ok(Some(meta)) => out.push(meta?),
                Ok(None) => return Ok(out),
                Err(_) => return Err(StorageError::Timeout("a listing", self.timeout)),
            }
        }
    }

    /// Whether the store is there and answers within `limit` (for `/readyz`): a folder store's
    /// root is a folder; a bucket answers a listing of its asset prefix (one request; a
    /// missing bucket, bad credentials or a store that does not answer all fail it).
    pub async fn check(&self, limit: Duration) -> Result<(), StorageError> {
        if let Some(root) = &self.root {
            // A folder on a dead network mount can hang too: bounded like the bucket.
            return match tokio::time::timeout(limit, tokio::fs::metadata(root)).await {
                Ok(Ok(m)) if m.is_dir() => Ok(()),
                Ok(Ok(_)) => Err(StorageError::Config(format!(
                    "{} is not a folder",
                    root.display()
                ))),
                Ok(Err(e)) => Err(StorageError::Local(root.display().to_string(), e)),
                Err(_) => Err(StorageError::Timeout("a folder check", limit)),
            };
        }
        let prefix = self.path("v");
        let first = tokio::time::timeout(limit, async {
            self.store.list(Some(&prefix)).next().await.transpose()
        })
        .await;
        match first {
            Ok(r) => r.map(drop).map_err(StorageError::from),
            Err(_) => Err(StorageError::Timeout("a listing", limit)),
        }
    }

    /// The assets that have objects under `v/`, from one listing of every object: asset id
    /// -> (whether its `asset.json` is among them, the newest object's time in unix seconds).
    pub async fn asset_objects(
        &self,
    ) -> Result<std::collections::BTreeMap<String, (bool, i64)>, StorageError> {
        let root = self.path("v");
        let mut listing = self.store.list(Some(&root));
        let mut out = std::collections::BTreeMap::<String, (bool, i64)>::new();
        loop {
            let meta = match tokio::time::timeout(self.timeout, listing.next()).await {
                Ok(Some(meta)) => meta?,
                Ok(None) => return Ok(out),
                Err(_) => return Err(StorageError::Timeout("a listing", self.timeout)),
            };
            let Some(mut parts) = meta.location.prefix_match(&root) else {
                continue;
            };
            let Some(asset) = parts.next() else { continue };
            let rest: Vec<_> = parts.collect();
            let is_manifest =
                rest.len() == 1 && rest[0].as_ref() == estuary_common::asset::MANIFEST_FILE;
            let entry = out
                .entry(asset.as_ref().to_owned())
                .or_insert((false, i64::MIN));
            entry.0 |= is_manifest;
            entry.1 = entry.1.max(meta.last_modified.timestamp());
        }
    }
}

/// `NotFound` as `None`.
fn not_found_as_none<T>(r: Result<T, StorageError>) -> Result<Option<T>, StorageError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StorageError::Store(object_store::Error::NotFound { .. })) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Relative paths (with `/`) of every file under `dir`.
fn collect_files(root: &FsPath, dir: &FsPath, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            collect_files(root, &path, out)?;
        } else if kind.is_file()
            && let Ok(rel) = path.strip_prefix(root)
        {
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}
