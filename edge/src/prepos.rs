//! Pre-positioning: the assets the control plane assigns to this edge are pulled into the
//! store (`<root>/v/<asset>/`) from a same-site peer that holds them, else from an origin.
//! Every file is checked against the asset's `asset.json` (size and sha-256, and the manifest
//! against its Merkle root) in a staging folder; only a complete, verified asset is renamed
//! into place, so a half-filled asset is never served. Fills run one at a time, within the
//! configured rate and hours, and are reported in heartbeats.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use estuary_common::asset::{
    AssetManifest, MANIFEST_FILE, valid_asset_id as valid_asset, valid_file_path as valid_file,
};
use estuary_common::cp::{Assignment, HeartbeatReply, InventoryItem};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::fill::PeerTokenSigner;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Present,
    Filling,
    Failed(String, Instant),
}

#[derive(Debug, Clone)]
struct Item {
    state: State,
    bytes: u64,
}

/// Settings of pre-positioning.
#[derive(Clone)]
pub struct PreposConfig {
    pub root: PathBuf,
    /// Bytes per second for all fills together (0: no cap).
    pub max_rate: u64,
    /// UTC hours (start, end) when new fills may start; `None`: any time.
    pub window: Option<(u32, u32)>,
    /// Signs the token a fill from a peer carries.
    pub signer: Option<PeerTokenSigner>,
}

/// The pre-positioning manager.
pub struct Prepositioner {
    config: PreposConfig,
    client: Client<HttpConnector, http_body_util::Empty<Bytes>>,
    items: Mutex<BTreeMap<String, Item>>,
    /// One fill at a time.
    busy: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Prepositioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prepositioner")
    }
}

/// Whether `hour` (UTC) is inside the window `[start, end)`, which may wrap past midnight.
pub fn in_window(window: Option<(u32, u32)>, hour: u32) -> bool {
    match window {
        None => true,
        Some((start, end)) if start <= end => (start..end).contains(&hour),
        Some((start, end)) => hour >= start || hour < end,
    }
}

impl Prepositioner {
    /// Scans the store for assets already in place (they were verified before they were
    /// renamed in) and removes staging folders a crash left behind.
    pub fn open(config: PreposConfig) -> Arc<Self> {
        let _ = std::fs::remove_dir_all(config.root.join(".fill"));
        let mut items = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir(config.root.join("v")) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let manifest = entry.path().join(MANIFEST_FILE);
                if valid_asset(&name)
                    && let Ok(text) = std::fs::read(&manifest)
                    && let Ok(m) = serde_json::from_slice::<AssetManifest>(&text)
                {
                    let bytes = m.files.iter().map(|f| f.size).sum();
                    items.insert(
                        name,
                        Item {
                            state: State::Present,
                            bytes,
                        },
                    );
                }
            }
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        Arc::new(Self {
            config,
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
            items: Mutex::new(items),
            busy: tokio::sync::Semaphore::new(1),
        })
    }

    /// What the heartbeat reports.
    pub fn inventory(&self) -> Vec<InventoryItem> {
        let Ok(items) = self.items.lock() else {
            return Vec::new();
        };
        items
            .iter()
            .map(|(asset, item)| {
                let (state, error) = match &item.state {
                    State::Present => ("present", None),
                    State::Filling => ("filling", None),
                    State::Failed(e, _) => ("failed", Some(e.clone())),
                };
                InventoryItem {
                    asset: asset.clone(),
                    state: state.into(),
                    bytes: item.bytes,
                    error,
                }
            })
            .collect()
    }

    /// Acts on a heartbeat reply: starts fills of new assignments (and retries failed ones
    /// after a pause), removes what the control plane asks to drop.
    pub fn apply(self: &Arc<Self>, reply: HeartbeatReply) {
        for asset in reply.remove {
            if !valid_asset(&asset) {
                continue;
            }
            let filling = self
                .items
                .lock()
                .map(|i| i.get(&asset).is_some_and(|x| x.state == State::Filling))
                .unwrap_or(true);
            if filling {
                continue;
            }
            let dir = self.config.root.join("v").join(&asset);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!(asset = %asset, "A pre-positioned asset was removed."),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(asset = %asset, error = %e, "A pre-positioned asset could not be removed.");
                    continue;
                }
            }
            if let Ok(mut items) = self.items.lock() {
                items.remove(&asset);
            }
        }
        let hour = ((estuary_common::unix_now() / 3600) % 24) as u32;
        if !in_window(self.config.window, hour) {
            return;
        }
        for assignment in reply.assignments {
            if !valid_asset(&assignment.asset) {
                continue;
            }
            let start = self
                .items
                .lock()
                .map(|mut items| {
                    let go = match items.get(&assignment.asset).map(|i| &i.state) {
                        None => true,
                        Some(State::Failed(_, at)) => at.elapsed() > Duration::from_secs(10),
                        Some(_) => false,
                    };
                    if go {
                        items.insert(
                            assignment.asset.clone(),
                            Item {
                                state: State::Filling,
                                bytes: 0,
                            },
                        );
                    }
                    go
                })
                .unwrap_or(false);
            if start {
                let this = Arc::clone(self);
                tokio::spawn(async move { this.run(assignment).await });
            }
        }
    }

    async fn run(self: Arc<Self>, assignment: Assignment) {
        let Ok(_permit) = self.busy.acquire().await else {
            return;
        };
        let asset = assignment.asset.clone();
        let mut errors = Vec::new();
        let mut done = None;
        for source in &assignment.sources {
            match self.fill_from(source, &asset).await {
                Ok(bytes) => {
                    done = Some((bytes, source.clone()));
                    break;
                }
                Err(e) => {
                    tracing::warn!(asset = %asset, source = %source, error = %e, "A pre-positioning fill failed; trying the next source.");
                    errors.push(format!("{source}: {e}"));
                }
            }
        }
        let state = match &done {
            Some((bytes, source)) => {
                tracing::info!(asset = %asset, source = %source, bytes, "An asset was pre-positioned and verified.");
                Item {
                    state: State::Present,
                    bytes: *bytes,
                }
            }
            None => Item {
                state: State::Failed(
                    if errors.is_empty() {
                        "no source".into()
                    } else {
                        errors.join("; ")
                    },
                    Instant::now(),
                ),
                bytes: 0,
            },
        };
        if let Ok(mut items) = self.items.lock() {
            items.insert(asset, state);
        }
    }

    async fn get(
        &self,
        base: &str,
        asset: &str,
        file: &str,
    ) -> Result<hyper::body::Incoming, String> {
        let path = format!("/v/{asset}/{file}");
        let url = match &self.config.signer {
            Some(sign) => format!(
                "{}{path}?{}",
                base.trim_end_matches('/'),
                estuary_common::token::query_pair(&sign(&format!("/v/{asset}/*")))
            ),
            None => format!("{}{path}", base.trim_end_matches('/')),
        };
        let request = http::Request::get(&url)
            .header(crate::fill::FILL_HEADER, "preposition")
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .map_err(|_| format!("{path}: timed out"))?
            .map_err(|e| format!("{path}: {e}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("{path}: {}", response.status()));
        }
        Ok(response.into_body())
    }

    /// Fills the asset from one source into a staging folder and renames it into place.
    async fn fill_from(&self, base: &str, asset: &str) -> Result<u64, String> {
        let manifest_bytes = self
            .get(base, asset, MANIFEST_FILE)
            .await?
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if manifest_bytes.len() > 16 * 1024 * 1024 {
            return Err("asset.json is too large".into());
        }
        let manifest: AssetManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| format!("asset.json: {e}"))?;
        if manifest.asset != asset {
            return Err(format!("asset.json names {:?}", manifest.asset));
        }
        if manifest.computed_merkle_root().as_deref() != Some(manifest.merkle_root.as_str()) {
            return Err("asset.json: the Merkle root does not match its files".into());
        }
        if let Some(bad) = manifest.files.iter().find(|f| !valid_file(&f.path)) {
            return Err(format!("asset.json: bad file name {:?}", bad.path));
        }
        let staging = self
            .config
            .root
            .join(".fill")
            .join(format!("{asset}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let result = self.fill_files(base, asset, &manifest, &staging).await;
        let total = match result {
            Ok(total) => total,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let write = async {
            tokio::fs::write(staging.join(MANIFEST_FILE), &manifest_bytes)
                .await
                .map_err(|e| e.to_string())?;
            let dest_dir = self.config.root.join("v");
            tokio::fs::create_dir_all(&dest_dir)
                .await
                .map_err(|e| e.to_string())?;
            let dest = dest_dir.join(asset);
            // Replace an older copy: move it aside first, so the rename is atomic.
            let old = self.config.root.join(".fill").join(format!("{asset}-old"));
            let _ = tokio::fs::remove_dir_all(&old).await;
            if tokio::fs::metadata(&dest).await.is_ok() {
                tokio::fs::rename(&dest, &old)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            tokio::fs::rename(&staging, &dest)
                .await
                .map_err(|e| e.to_string())?;
            let _ = tokio::fs::remove_dir_all(&old).await;
            Ok::<(), String>(())
        };
        if let Err(e) = write.await {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        Ok(total)
    }

    async fn fill_files(
        &self,
        base: &str,
        asset: &str,
        manifest: &AssetManifest,
        staging: &Path,
    ) -> Result<u64, String> {
        let started = Instant::now();
        let mut total: u64 = 0;
        for f in &manifest.files {
            let target = staging.join(&f.path);
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let mut out = tokio::fs::File::create(&target)
                .await
                .map_err(|e| e.to_string())?;
            let mut body = self.get(base, asset, &f.path).await?;
            let mut hasher = Sha256::new();
            let mut size: u64 = 0;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("{}: {e}", f.path))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                size += data.len() as u64;
                if size > f.size {
                    return Err(format!("{}: longer than asset.json says", f.path));
                }
                hasher.update(&data);
                out.write_all(&data).await.map_err(|e| e.to_string())?;
                total += data.len() as u64;
                if self.config.max_rate > 0 {
                    let due = Duration::from_secs_f64(total as f64 / self.config.max_rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            if size != f.size {
                return Err(format!(
                    "{}: {size} bytes, asset.json says {}",
                    f.path, f.size
                ));
            }
            let digest = hex::encode(hasher.finalize());
            if !digest.eq_ignore_ascii_case(&f.sha256) {
                return Err(format!("{}: sha-256 does not match asset.json", f.path));
            }
            out.sync_all().await.map_err(|e| e.to_string())?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_names() {
        assert!(in_window(None, 13));
        assert!(in_window(Some((1, 6)), 1));
        assert!(!in_window(Some((1, 6)), 6));
        assert!(in_window(Some((22, 4)), 23));
        assert!(in_window(Some((22, 4)), 3));
        assert!(!in_window(Some((22, 4)), 12));
        assert!(valid_file("720p/seg_00001.m4s"));
        for bad in ["../x", "a//b", ".hidden", "a/../b", "a\\b", ""] {
            assert!(!valid_file(bad), "{bad}");
        }
        assert!(!valid_asset("../x"));
    }
}
