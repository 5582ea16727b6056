//! Resumable uploads with TUS 1.0 (core, creation, termination and checksum extensions) at
//! `/uploads/`. Bytes go to `<state>/uploads/<id>.bin`; the offset the database holds is the
//! number of bytes written *and* synced, and it is the only offset ever reported: bytes past
//! it (received when the origin died) are cut off before the next `PATCH` writes. A completed
//! upload queues its asset's packaging in the same transaction.

use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::StreamExt;
use sha1::Digest as _;

use crate::app::App;
use crate::db::{DbError, Upload};

/// The protocol version this server speaks.
pub const TUS_VERSION: &str = "1.0.0";
/// Bytes written between two syncs of a long `PATCH` (what a crash can lose of it).
const SYNC_EVERY: u64 = 8 * 1024 * 1024;

fn tus(mut r: Response) -> Response {
    r.headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A header holding a byte count (`Upload-Length`, `Upload-Offset`).
fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn plain(status: StatusCode, text: &str) -> Response {
    tus((status, format!("{text}\n")).into_response())
}

/// Checks `Tus-Resumable` (every request but `OPTIONS`) and the bearer token; the assets
/// the token manages.
fn admit(app: &App, headers: &HeaderMap) -> Result<crate::app::Grant, Response> {
    match headers.get("tus-resumable").map(HeaderValue::as_bytes) {
        Some(v) if v == TUS_VERSION.as_bytes() => {}
        _ => {
            let mut r = plain(
                StatusCode::PRECONDITION_FAILED,
                "Tus-Resumable: 1.0.0 required",
            );
            r.headers_mut()
                .insert("tus-version", HeaderValue::from_static(TUS_VERSION));
            return Err(r);
        }
    }
    app.authorize(headers).map_err(tus)
}

/// `OPTIONS /uploads/`: what the server supports (no token needed).
pub async fn options(State(app): State<Arc<App>>) -> Response {
    let mut r = tus(StatusCode::NO_CONTENT.into_response());
    let h = r.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert(
        "tus-extension",
        HeaderValue::from_static("creation,termination,checksum"),
    );
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static("sha1,sha256"),
    );
    h.insert(
        "tus-max-size",
        HeaderValue::from(app.config.uploads.max_size.as_u64()),
    );
    r
}

/// Parses `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be
/// absent). `None` when malformed.
pub fn parse_metadata(value: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    if value.trim().is_empty() {
        return Some(out);
    }
    for pair in value.split(',') {
        let mut parts = pair.trim().splitn(2, ' ');
        let key = parts.next().filter(|k| !k.is_empty())?;
        if !key.bytes().all(|b| b.is_ascii_graphic()) || key.len() > 128 {
            return None;
        }
        let decoded = match parts.next() {
            Some(v) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.trim())
                    .ok()?;
                String::from_utf8(bytes).ok()?
            }
            None => String::new(),
        };
        out.push((key.to_owned(), decoded));
    }
    Some(out)
}

use estuary_common::asset::valid_asset_id;

fn random_id(len: usize) -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn upload_file(app: &App, id: &str) -> PathBuf {
    app.uploads_dir.join(format!("{id}.bin"))
}

/// `POST /uploads/`: creates an upload of `Upload-Length` bytes. `Upload-Metadata` must name
/// the `filename`; `asset` chooses the asset id (else one is made up).
pub async fn create(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let grant = match admit(&app, &headers) {
        Ok(g) => g,
        Err(r) => return r,
    };
    if headers.contains_key("upload-defer-length") {
        return plain(
            StatusCode::BAD_REQUEST,
            "Upload-Defer-Length is not supported",
        );
    }
    let Some(length) = header_u64(&headers, "upload-length") else {
        return plain(StatusCode::BAD_REQUEST, "Upload-Length required");
    };
    if length > app.config.uploads.max_size.as_u64() {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "larger than Tus-Max-Size");
    }
    // A raw-upload credential declares the exact size (the relay hands that size to the
    // message's recipients).
    if let Some(raw) = &grant.raw {
        if length > raw.size {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "larger than the upload credential allows",
            );
        }
        if length < raw.size {
            return plain(
                StatusCode::BAD_REQUEST,
                "Upload-Length must be the size the upload credential declares",
            );
        }
    }
    let raw_metadata = headers
        .get("upload-metadata")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let Some(metadata) = parse_metadata(&raw_metadata) else {
        return plain(StatusCode::BAD_REQUEST, "malformed Upload-Metadata");
    };
    let find = |k: &str| metadata.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let raw_name = grant.raw.as_ref().map(|r| r.media.file_name());
    let Some(filename) = find("filename")
        .or(raw_name.as_ref())
        .filter(|f| !f.is_empty() && f.len() <= 255)
    else {
        return plain(
            StatusCode::BAD_REQUEST,
            "Upload-Metadata must carry a filename",
        );
    };
    let asset = match find("asset") {
        Some(a) if valid_asset_id(a) => a.clone(),
        Some(_) => {
            return plain(
                StatusCode::BAD_REQUEST,
                "asset: 1-64 of a-z A-Z 0-9 - _, starting with a letter or digit",
            );
        }
        // A scoped token's assets share its prefix.
        None => match &grant.scope {
            crate::config::AssetScope::Prefix(p) => format!("{p}{}", random_id(12)),
            crate::config::AssetScope::One(one) => one.clone(),
            crate::config::AssetScope::All => random_id(12),
        },
    };
    if let Err(r) = grant.may(&asset) {
        return tus(r);
    }
    match app.asset_id_free_in_storage(&asset).await {
        Ok(true) => {}
        Ok(false) => {
            return plain(
                StatusCode::CONFLICT,
                &format!("asset {asset} is published in the storage by another origin"),
            );
        }
        Err(r) => return tus(r),
    }
    let id = random_id(32);
    let file = upload_file(&app, &id);
    if let Err(e) = std::fs::File::create(&file) {
        tracing::error!(error = %e, file = %file.display(), "Cannot create an upload file.");
        return plain(StatusCode::INSUFFICIENT_STORAGE, "cannot store the upload");
    }
    let upload = Upload {
        id: id.clone(),
        asset: asset.clone(),
        filename: filename.clone(),
        length,
        offset: 0,
        metadata: raw_metadata,
        created_at: estuary_common::unix_now(),
        complete: false,
    };
    // The storage holds no asset.json under this id (checked above): an asset this origin
    // thinks ready lost its objects, and a new upload may replace it.
    let raw = grant.raw.as_ref().map(|r| crate::db::Raw {
        mime: r.media.mime.to_owned(),
        size: r.size,
    });
    match app.db.create_upload(upload, false, raw).await {
        Ok(old_source) => {
            if let Some(old) = old_source {
                let _ = std::fs::remove_file(old);
            }
        }
        Err(DbError::AssetExists(a, state)) => {
            let _ = std::fs::remove_file(&file);
            return plain(
                StatusCode::CONFLICT,
                &format!("asset {a} exists and is {state}"),
            );
        }
        Err(e) => {
            let _ = std::fs::remove_file(&file);
            return app.internal(e);
        }
    }
    tracing::info!(upload = %id, asset = %asset, length, filename = %filename, "An upload was created.");
    // A path, resolved by the client against the URL it used (RFC 9110 allows a relative
    // Location): never the client's own Host header echoed back.
    let mut r = tus(StatusCode::CREATED.into_response());
    if let Ok(v) = HeaderValue::from_str(&format!("/uploads/{id}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&asset) {
        r.headers_mut().insert("x-estuary-asset", v);
    }
    r.headers_mut()
        .insert("upload-offset", HeaderValue::from(0));
    r
}

/// The offset to report and resume from: the recorded (synced) offset, or the bytes on disk
/// if there are fewer (the file was cut behind the origin's back): never an offset whose
/// bytes are not there. A lower figure is recorded.
async fn durable_offset(app: &App, upload: &Upload) -> Result<u64, Response> {
    if upload.complete {
        // Its file has gone to packaging.
        return Ok(upload.offset);
    }
    let on_disk = match std::fs::metadata(upload_file(app, &upload.id)) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(app.internal(e)),
    };
    if on_disk >= upload.offset {
        return Ok(upload.offset);
    }
    tracing::warn!(upload = %upload.id, recorded = upload.offset, on_disk, "An upload file holds fewer bytes than its recorded offset; the upload resumes from the bytes on disk.");
    if let Err(e) = app.db.set_offset(&upload.id, on_disk).await {
        return Err(app.internal(e));
    }
    Ok(on_disk)
}

async fn known(app: &App, id: &str) -> Result<Upload, Response> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(plain(StatusCode::NOT_FOUND, "no such upload"));
    }
    match app.db.upload(id).await {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(plain(StatusCode::NOT_FOUND, "no such upload")),
        Err(e) => Err(app.internal(e)),
    }
}

/// `HEAD /uploads/<id>`: the offset to resume from.
pub async fn head(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let grant = match admit(&app, &headers) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let upload = match known(&app, &id).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Err(r) = grant.may(&upload.asset) {
        return tus(r);
    }
    let offset = match durable_offset(&app, &upload).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let mut r = tus(StatusCode::OK.into_response());
    let h = r.headers_mut();
    h.insert("upload-offset", HeaderValue::from(offset));
    h.insert("upload-length", HeaderValue::from(upload.length));
    if let Ok(v) = HeaderValue::from_str(&upload.metadata)
        && !upload.metadata.is_empty()
    {
        h.insert("upload-metadata", v);
    }
    r
}

/// `DELETE /uploads/<id>`: termination.
pub async fn delete(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let grant = match admit(&app, &headers) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let upload = match known(&app, &id).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Err(r) = grant.may(&upload.asset) {
        return tus(r);
    }
    if upload.complete {
        return plain(StatusCode::CONFLICT, "the upload is complete");
    }
    if let Err(e) = app.db.delete_upload(&id).await {
        return app.internal(e);
    }
    let _ = std::fs::remove_file(upload_file(&app, &id));
    tracing::info!(upload = %id, "An upload was terminated.");
    tus(StatusCode::NO_CONTENT.into_response())
}

/// An `Upload-Checksum` header: the algorithm's hasher and the expected digest.
pub enum Checksum {
    Sha1(sha1::Sha1, Vec<u8>),
    Sha256(sha2::Sha256, Vec<u8>),
}

impl Checksum {
    /// Reads the header; `Err` says what is wrong with it.
    pub fn parse(value: &str) -> Result<Self, &'static str> {
        let (alg, b64) = value
            .trim()
            .split_once(' ')
            .ok_or("malformed Upload-Checksum")?;
        let want = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| "malformed Upload-Checksum")?;
        match alg {
            "sha1" => Ok(Self::Sha1(sha1::Sha1::new(), want)),
            "sha256" => Ok(Self::Sha256(sha2::Sha256::new(), want)),
            _ => Err("unsupported checksum algorithm (sha1, sha256)"),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha1(h, _) => h.update(data),
            Self::Sha256(h, _) => h.update(data),
        }
    }

    fn matches(self) -> bool {
        match self {
            Self::Sha1(h, want) => h.finalize().as_slice() == want.as_slice(),
            Self::Sha256(h, want) => h.finalize().as_slice() == want.as_slice(),
        }
    }
}

/// `PATCH /uploads/<id>`: appends the body at `Upload-Offset`.
pub async fn patch(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let grant = match admit(&app, &headers) {
        Ok(g) => g,
        Err(r) => return r,
    };
    if headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes)
        != Some(b"application/offset+octet-stream")
    {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type: application/offset+octet-stream required",
        );
    }
    let Some(offset) = header_u64(&headers, "upload-offset") else {
        return plain(StatusCode::BAD_REQUEST, "Upload-Offset required");
    };
    let mut checksum = match headers.get("upload-checksum").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => match Checksum::parse(v) {
            Ok(c) => Some(c),
            Err(why) => return plain(StatusCode::BAD_REQUEST, why),
        },
        Some(Err(_)) => return plain(StatusCode::BAD_REQUEST, "malformed Upload-Checksum"),
    };
    let Some(_lock) = app.lock_upload(&id) else {
        return plain(
            StatusCode::LOCKED,
            "another PATCH of this upload is running",
        );
    };
    let upload = match known(&app, &id).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Err(r) = grant.may(&upload.asset) {
        return tus(r);
    }
    if upload.complete {
        return plain(StatusCode::FORBIDDEN, "the upload is complete");
    }
    let durable = match durable_offset(&app, &upload).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    if offset != durable {
        return plain(StatusCode::CONFLICT, "Upload-Offset does not match");
    }
    let path = upload_file(&app, &id);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| {
            // Bytes past the acknowledged offset were never confirmed to the client.
            f.set_len(offset)?;
            f.seek(SeekFrom::Start(offset))?;
            Ok(f)
        });
    let mut file = match file {
        Ok(f) => f,
        Err(e) => return app.internal(e),
    };
    let room = upload.length - offset;
    let mut written: u64 = 0;
    let mut synced: u64 = 0;
    let mut stream = body.into_data_stream();
    let mut too_long = false;
    let mut cut = false;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            // The client went away: keep what arrived (unless it had to be verified).
            cut = true;
            break;
        };
        if written + chunk.len() as u64 > room {
            too_long = true;
            break;
        }
        if let Some(c) = checksum.as_mut() {
            c.update(&chunk);
        }
        let io = tokio::task::block_in_place(|| file.write_all(&chunk));
        if let Err(e) = io {
            tracing::error!(error = %e, upload = %id, "An upload could not be written.");
            let _ = file.set_len(offset + synced);
            return plain(StatusCode::INSUFFICIENT_STORAGE, "cannot store the upload");
        }
        written += chunk.len() as u64;
        app.metrics.upload_bytes.inc_by(chunk.len() as u64);
        if checksum.is_none()
            && written - synced >= SYNC_EVERY
            && tokio::task::block_in_place(|| file.sync_data()).is_ok()
        {
            synced = written;
            if let Err(e) = app.db.set_offset(&id, offset + synced).await {
                return app.internal(e);
            }
        }
    }
    let rollback = |file: &std::fs::File| {
        let _ = file.set_len(offset);
    };
    if too_long {
        // What was synced has been recorded as the offset already: keep exactly that, so
        // that the offset reported is always the bytes on disk.
        let _ = file.set_len(offset + synced);
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body goes past Upload-Length",
        );
    }
    if let Some(c) = checksum {
        if cut {
            rollback(&file);
            return plain(StatusCode::BAD_REQUEST, "the body was cut short");
        }
        if !c.matches() {
            rollback(&file);
            return tus((
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
                "checksum mismatch\n",
            )
                .into_response());
        }
    }
    if let Err(e) = tokio::task::block_in_place(|| file.sync_data()) {
        let _ = file.set_len(offset + synced);
        tracing::error!(error = %e, upload = %id, "An upload could not be synced.");
        return plain(StatusCode::INSUFFICIENT_STORAGE, "cannot store the upload");
    }
    let new_offset = offset + written;
    let done = new_offset == upload.length;
    let saved = if done {
        app.db.complete_upload(&id, &path.to_string_lossy()).await
    } else {
        app.db.set_offset(&id, new_offset).await
    };
    if let Err(e) = saved {
        return app.internal(e);
    }
    if done {
        app.metrics.uploads_completed.inc();
        tracing::info!(upload = %id, asset = %upload.asset, "An upload completed; its packaging is queued.");
        app.jobs_wake.notify_one();
    }
    let mut r = tus(StatusCode::NO_CONTENT.into_response());
    r.headers_mut()
        .insert("upload-offset", HeaderValue::from(new_offset));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn metadata_pairs() {
        let m = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
            .expect("valid");
        assert_eq!(
            m[0],
            ("filename".into(), "world_domination_plan.pdf".into())
        );
        assert_eq!(m[1], ("is_confidential".into(), String::new()));
        assert_eq!(parse_metadata("").map(|m| m.len()), Some(0));
        assert!(parse_metadata("filename !!!").is_none());
        assert!(parse_metadata(",").is_none());
    }

    #[test]
    fn asset_ids() {
        assert!(valid_asset_id("big-buck_bunny2"));
        for bad in ["", "-x", "_x", "a/b", "a.b", "..", &"a".repeat(65)] {
            assert!(!valid_asset_id(bad), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn metadata_parsing_never_panics(v in "\\PC{0,80}") {
            let _ = parse_metadata(&v);
        }
    }
}
