//! Pre-positioning: the assets the control plane assigns to this edge are pulled into the
//! store (`<root>/v/<asset>/`) from a same-site peer that holds them, else from an origin.
//! Every file is checked against the asset's `asset.json` (size and sha-256, and the manifest
//! against its Merkle root) in a staging folder; only a complete, verified asset is renamed
//! into place, so a half-filled asset is never served. Fills run one at a time, within the
//! configured rate and hours, and are reported in heartbeats (with their progress).
//!
//! A fill resumes where it stopped: the staging folder (`<root>/.fill/<asset>`) survives a
//! restart or kill -9, a staged file whose size and hash match is kept, a shorter one is
//! completed with a range request, and every file is hashed whole again before the asset
//! counts as present (a resumed file that does not verify is fetched again from its start).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use estuary_common::asset::{
    AssetManifest, MANIFEST_FILE, valid_asset_id as valid_asset, valid_file_path as valid_file,
};
use estuary_common::cp::{Assignment, HeartbeatReply, InventoryItem};
use estuary_common::signing::SIGNATURE_FILE;
use http_body_util::BodyExt;
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
    /// The origins' public keys: an `asset.json` is trusted only with a signature from one.
    pub keys: estuary_common::signing::ManifestKeys,
    /// The client fills go through (`[control_plane] ca_file` for `https://` sources).
    pub client: estuary_common::http::HttpClient,
}

/// The pre-positioning manager.
pub struct Prepositioner {
    config: PreposConfig,
    client: estuary_common::http::HttpClient,
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
    /// renamed in). Staging folders a crash left behind are kept for the fill to resume,
    /// except copies moved aside and folders nobody touched for a day.
    pub fn open(config: PreposConfig) -> Arc<Self> {
        clean_staging(&config.root.join(".fill"));
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
        Arc::new(Self {
            client: config.client.clone(),
            config,
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
                    // The control plane takes at most 4 KiB of it.
                    State::Failed(e, _) => ("failed", Some(e.chars().take(1000).collect())),
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
            let _ = std::fs::remove_dir_all(self.config.root.join(".fill").join(&asset));
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
            match self
                .fill_from(source, &asset, assignment.merkle_root.as_deref())
                .await
            {
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

    /// GETs one file of `asset` from `base`, from byte `from` on; the body and whether it
    /// starts at `from` (a 206 for that offset) or at 0 (a 200).
    async fn get(
        &self,
        base: &str,
        asset: &str,
        file: &str,
        from: u64,
    ) -> Result<(hyper::body::Incoming, bool), String> {
        let path = format!("/v/{asset}/{file}");
        let url = match &self.config.signer {
            Some(sign) => format!(
                "{}{path}?{}",
                base.trim_end_matches('/'),
                estuary_common::token::query_pair(&sign(&format!("/v/{asset}/*")))
            ),
            None => format!("{}{path}", base.trim_end_matches('/')),
        };
        let range = format!("bytes={from}-");
        let mut headers = vec![(
            http::HeaderName::from_static(crate::fill::FILL_HEADER),
            "preposition",
        )];
        if from > 0 {
            headers.push((http::header::RANGE, range.as_str()));
        }
        let request =
            estuary_common::http::request(http::Method::GET, &url, &headers, Bytes::new())
                .map_err(|e| e.to_string())?;
        let response = self
            .client
            .send_streaming(request)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        match response.status() {
            http::StatusCode::OK => Ok((response.into_body(), false)),
            http::StatusCode::PARTIAL_CONTENT if from > 0 => {
                let starts_at_from = response
                    .headers()
                    .get(http::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split_once('-'))
                    .and_then(|(first, _)| first.parse::<u64>().ok())
                    == Some(from);
                if starts_at_from {
                    Ok((response.into_body(), true))
                } else {
                    Err(format!("{path}: a 206 for another range"))
                }
            }
            status => Err(format!("{path}: {status}")),
        }
    }

    /// A whole small file of the asset, refused past `limit` bytes (a source cannot make the
    /// edge buffer more).
    async fn get_small(
        &self,
        base: &str,
        asset: &str,
        file: &str,
        limit: usize,
    ) -> Result<Bytes, String> {
        http_body_util::Limited::new(self.get(base, asset, file, 0).await?.0, limit)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("{file}: {e}"))
    }

    /// Fills the asset from one source into a staging folder and renames it into place.
    async fn fill_from(
        &self,
        base: &str,
        asset: &str,
        expected_root: Option<&str>,
    ) -> Result<u64, String> {
        let manifest_bytes = self.get_small(base, asset, MANIFEST_FILE, 16 << 20).await?;
        // The trust anchor: the origin's signature, checked against this edge's own keys,
        // before any hash inside the manifest is believed. Whoever served it cannot vouch
        // for it.
        let signature = self
            .get_small(
                base,
                asset,
                SIGNATURE_FILE,
                estuary_common::signing::MAX_SIGNATURE_FILE,
            )
            .await?;
        self.config
            .keys
            .verify(&manifest_bytes, &signature)
            .map_err(|e| e.to_string())?;
        let manifest: AssetManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| format!("asset.json: {e}"))?;
        if manifest.asset != asset {
            return Err(format!("asset.json names {:?}", manifest.asset));
        }
        if manifest.computed_merkle_root().as_deref() != Some(manifest.merkle_root.as_str()) {
            return Err("asset.json: the Merkle root does not match its files".into());
        }
        if let Some(expected) = expected_root
            && expected != manifest.merkle_root
        {
            return Err(format!(
                "asset.json is another version (Merkle root {}, the control plane placed {expected})",
                manifest.merkle_root
            ));
        }
        if let Some(bad) = manifest.files.iter().find(|f| !valid_file(&f.path)) {
            return Err(format!("asset.json: bad file name {:?}", bad.path));
        }
        // Kept after a failure too: the next source, or the next start, resumes it.
        let staging = self.config.root.join(".fill").join(asset);
        let total = self.fill_files(base, asset, &manifest, &staging).await?;
        let write = async {
            tokio::fs::write(staging.join(SIGNATURE_FILE), &signature)
                .await
                .map_err(|e| e.to_string())?;
            tokio::fs::write(staging.join(MANIFEST_FILE), &manifest_bytes)
                .await
                .map_err(|e| e.to_string())?;
            let dest_dir = self.config.root.join("v");
            tokio::fs::create_dir_all(&dest_dir)
                .await
                .map_err(|e| e.to_string())?;
            let dest = dest_dir.join(asset);
            // Replace an older copy: move it aside first, so the rename is atomic.
            let old = self
                .config
                .root
                .join(".fill")
                .join(format!("{asset}{OLD_SUFFIX}"));
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
        let mut rate = RateLimit::new(self.config.max_rate);
        let mut total: u64 = 0;
        let mut kept_bytes: u64 = 0;
        for f in &manifest.files {
            let target = staging.join(&f.path);
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let staged = tokio::fs::metadata(&target).await.map_or(0, |m| m.len());
            let kept = if staged > 0 && staged <= f.size {
                match self
                    .fill_file(base, asset, f, &target, staged, &mut rate)
                    .await
                {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::info!(asset = %asset, file = %f.path, error = %e, "A staged file did not complete; it is fetched again from its start.");
                        false
                    }
                }
            } else {
                false
            };
            if !kept {
                self.fill_file(base, asset, f, &target, 0, &mut rate)
                    .await?;
            }
            if kept {
                kept_bytes += staged;
            }
            total += f.size;
            self.progress(asset, total);
        }
        if kept_bytes > 0 {
            tracing::info!(asset = %asset, kept_bytes, total_bytes = total, "A fill resumed from staged files; every file was verified whole.");
        }
        Ok(total)
    }

    /// Completes one staged file from byte `from` (0: from scratch), then hashes it whole.
    async fn fill_file(
        &self,
        base: &str,
        asset: &str,
        f: &estuary_common::asset::FileDigest,
        target: &Path,
        from: u64,
        rate: &mut RateLimit,
    ) -> Result<(), String> {
        let mut hasher = Sha256::new();
        let mut size = from;
        if from < f.size {
            let (mut body, resumed) = self.get(base, asset, &f.path, from).await?;
            if resumed {
                tracing::info!(asset = %asset, file = %f.path, from, "A staged file is completed with a range request.");
            }
            let mut out = tokio::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(!resumed)
                .append(resumed)
                .open(target)
                .await
                .map_err(|e| e.to_string())?;
            if !resumed {
                size = 0;
            }
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("{}: {e}", f.path))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                size += data.len() as u64;
                if size > f.size {
                    return Err(format!("{}: longer than asset.json says", f.path));
                }
                out.write_all(&data).await.map_err(|e| e.to_string())?;
                rate.account(data.len() as u64).await;
            }
            out.sync_all().await.map_err(|e| e.to_string())?;
        }
        if size != f.size {
            return Err(format!(
                "{}: {size} bytes, asset.json says {}",
                f.path, f.size
            ));
        }
        // The whole file is hashed from disk, so a resumed file is checked as strictly as a
        // fresh one (and what is renamed into place is exactly what was checked).
        let mut file = tokio::fs::File::open(target)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let digest = hex::encode(hasher.finalize());
        if !digest.eq_ignore_ascii_case(&f.sha256) {
            let _ = tokio::fs::remove_file(target).await;
            return Err(format!("{}: sha-256 does not match asset.json", f.path));
        }
        Ok(())
    }

    /// Records how many bytes of a filling asset are staged and verified.
    fn progress(&self, asset: &str, bytes: u64) {
        if let Ok(mut items) = self.items.lock()
            && let Some(item) = items.get_mut(asset)
            && item.state == State::Filling
        {
            item.bytes = bytes;
        }
    }
}

/// The suffix of an older copy moved aside while a new one is renamed in.
const OLD_SUFFIX: &str = ".old";

/// At start: drops copies moved aside and staging folders untouched for a day.
fn clean_staging(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(24 * 3600));
        if name.ends_with(OLD_SUFFIX) || !valid_asset(&name) || stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Paces fills to a byte rate (0: no cap).
struct RateLimit {
    max_rate: u64,
    started: Instant,
    bytes: u64,
}

impl RateLimit {
    fn new(max_rate: u64) -> Self {
        Self {
            max_rate,
            started: Instant::now(),
            bytes: 0,
        }
    }

    async fn account(&mut self, n: u64) {
        self.bytes += n;
        if self.max_rate > 0 {
            let due = Duration::from_secs_f64(self.bytes as f64 / self.max_rate as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
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
