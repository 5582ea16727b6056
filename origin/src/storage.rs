//! Where packaged assets live: a local folder or an S3-compatible bucket, through the
//! `object_store` crate. Assets are kept under `v/<asset>/`; an asset becomes visible when its
//! `asset.json` is written, which happens last (see [`Storage::publish`]).

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

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
}

/// The asset store.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// Shown in logs.
    pub describe: String,
}

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
                describe: format!("folder {}", root.display()),
            });
        }
        let Some(url) = &config.url else {
            return Err(StorageError::Config("no root and no url".into()));
        };
        let parsed = url::Url::parse(url).map_err(|e| StorageError::Config(e.to_string()))?;
        let bucket = parsed.host_str().unwrap_or_default().to_owned();
        let s3 = &config.s3;
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_allow_http(s3.allow_http);
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
            describe: format!("bucket {url}"),
        })
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
        match self.store.get_opts(&self.path(rel), options).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether an object exists.
    pub async fn exists(&self, rel: &str) -> Result<bool, StorageError> {
        match self.store.head(&self.path(rel)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a whole (small) object; `None` when it does not exist.
    pub async fn get_bytes(&self, rel: &str) -> Result<Option<Bytes>, StorageError> {
        match self.get(rel, None).await? {
            Some(r) => Ok(Some(r.bytes().await?)),
            None => Ok(None),
        }
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
            bytes += data.len() as u64;
            self.store
                .put(
                    &self.path(&format!("v/{asset}/{rel}")),
                    PutPayload::from(data),
                )
                .await?;
        }
        Ok(bytes)
    }

    /// Removes every object of an asset (`asset.json` first, so it stops being served).
    pub async fn remove_asset(&self, asset: &str) -> Result<(), StorageError> {
        let manifest = self.path(&format!(
            "v/{asset}/{}",
            estuary_common::asset::MANIFEST_FILE
        ));
        match self.store.delete(&manifest).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let prefix = self.path(&format!("v/{asset}"));
        let mut listing = self.store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            match self.store.delete(&meta?.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Whether the store answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        match self.store.head(&self.path("v/.estuary-ping")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => true,
            Err(e) => {
                tracing::warn!(error = %e, "The asset store does not answer.");
                false
            }
        }
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
