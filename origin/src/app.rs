//! The origin's HTTP face and its shared state: assets under `/v/`, uploads under `/uploads/`,
//! the asset API under `/v1/assets/`, and the operator endpoints.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use estuary_common::asset::{AssetManifest, MANIFEST_FILE};
use estuary_common::http_semantics::{self, RangeChoice, Validators};
use futures_util::StreamExt;

use crate::config::OriginConfig;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::storage::Storage;

/// Everything the handlers and the job workers share.
pub struct App {
    pub config: OriginConfig,
    pub db: Db,
    pub storage: Storage,
    pub uploads_dir: PathBuf,
    pub work_dir: PathBuf,
    pub metrics: Metrics,
    /// Published manifests (and their bytes) by asset id.
    manifests: moka::sync::Cache<String, Arc<(AssetManifest, Bytes)>>,
    /// Wakes a job worker when a job is queued.
    pub jobs_wake: tokio::sync::Notify,
    pub ready: AtomicBool,
    /// Uploads with a `PATCH` in progress.
    patching: Mutex<HashSet<String>>,
    /// `[auth.upload_keys]`: the keys of raw-upload credentials.
    upload_keys: estuary_common::token::KeySet,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("storage", &self.storage)
            .finish()
    }
}

/// Held while a `PATCH` writes an upload; releases it on drop.
pub struct UploadLock<'a> {
    app: &'a App,
    id: String,
}

impl Drop for UploadLock<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.app.patching.lock() {
            set.remove(&self.id);
        }
    }
}

impl App {
    pub fn new(config: OriginConfig, db: Db, storage: Storage, metrics: Metrics) -> Self {
        // `validate` checked the keys before start: an error here cannot happen, and no key
        // (accepting no credential) is the safe reading of one.
        let upload_keys = config.auth.upload_key_set().unwrap_or_default();
        let uploads_dir = config.state.dir.join("uploads");
        let work_dir = config.state.dir.join("work");
        Self {
            config,
            db,
            storage,
            uploads_dir,
            work_dir,
            metrics,
            manifests: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            jobs_wake: tokio::sync::Notify::new(),
            ready: AtomicBool::new(false),
            patching: Mutex::new(HashSet::new()),
            upload_keys,
        }
    }

    /// Checks `Authorization: Bearer <token>` against the upload tokens (constant time); the
    /// assets the token manages.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<Grant, Response> {
        let Some(presented) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            let mut r = (StatusCode::UNAUTHORIZED, "bearer token required\n").into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"estuary-origin\""),
            );
            return Err(r);
        };
        let mut found = None;
        for (name, t) in &self.config.auth.upload_tokens {
            let same = bool::from(subtle::ConstantTimeEq::ct_eq(
                t.token().as_bytes(),
                presented.as_bytes(),
            ));
            if same && found.is_none() {
                found = Some(Grant {
                    name: name.clone(),
                    scope: t.scope(),
                    raw: None,
                });
            }
        }
        if let Some(grant) = found {
            return Ok(grant);
        }
        match raw_upload_grant(&self.upload_keys, presented, estuary_common::unix_now()) {
            Ok(grant) => Ok(grant),
            Err(why) => {
                self.metrics.count_credential_refusal(why);
                Err((StatusCode::FORBIDDEN, "forbidden\n").into_response())
            }
        }
    }

    /// Checks that the request's token manages asset `id` (a valid id): the gate of every
    /// `/v1/assets/<id>` call.
    pub fn admit_asset(&self, headers: &HeaderMap, id: &str) -> Result<Grant, Response> {
        let grant = self.authorize(headers)?;
        if !estuary_common::asset::valid_asset_id(id) {
            return Err((StatusCode::NOT_FOUND, "no such asset\n").into_response());
        }
        grant.may(id)?;
        Ok(grant)
    }

    /// Whether an asset id is free for a new upload: this origin's database does not know it
    /// (checked when the upload is recorded) and the storage holds no published asset under
    /// it (one another origin sharing the bucket published): an upload never replaces or
    /// deletes an asset it did not create.
    pub async fn asset_id_free_in_storage(&self, asset: &str) -> Result<bool, Response> {
        match self
            .storage
            .exists(&format!("v/{asset}/{MANIFEST_FILE}"))
            .await
        {
            Ok(found) => Ok(!found),
            Err(e) => Err(self.storage_failed(e)),
        }
    }

    /// A 503 when the storage is down or slow (the request may succeed later), else a 500.
    pub fn storage_failed(&self, e: crate::storage::StorageError) -> Response {
        if !e.is_store() {
            return self.internal(e);
        }
        self.metrics.storage_errors.inc();
        tracing::warn!(error = %e, "A request failed because the asset storage failed.");
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            "the asset storage is unavailable\n",
        )
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    }

    /// A 500 for an internal failure; the cause goes to the log, not to the client.
    pub fn internal(&self, e: impl std::fmt::Display) -> Response {
        tracing::error!(error = %e, "An internal error answered a request with 500.");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
    }

    /// Takes the write lock of one upload, or `None` when a `PATCH` already holds it.
    pub fn lock_upload(&self, id: &str) -> Option<UploadLock<'_>> {
        let mut set = self.patching.lock().ok()?;
        set.insert(id.to_owned()).then(|| UploadLock {
            app: self,
            id: id.to_owned(),
        })
    }

    /// Forgets the cached manifest of an asset (after it is published or removed).
    pub fn forget_manifest(&self, asset: &str) {
        self.manifests.invalidate(asset);
    }

    /// The published manifest of an asset, if it is published.
    async fn manifest(&self, asset: &str) -> Result<Option<Arc<(AssetManifest, Bytes)>>, Response> {
        if let Some(m) = self.manifests.get(asset) {
            return Ok(Some(m));
        }
        let bytes = match self
            .storage
            .get_bytes(&format!("v/{asset}/{MANIFEST_FILE}"))
            .await
        {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.storage_failed(e)),
        };
        let manifest: AssetManifest = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                return Err(self.internal(format!("v/{asset}/{MANIFEST_FILE}: {e}")));
            }
        };
        let entry = Arc::new((manifest, bytes));
        self.manifests.insert(asset.to_owned(), Arc::clone(&entry));
        Ok(Some(entry))
    }
}

/// `/metrics`, `/healthz`, `/readyz` (see `crate::admin`).
pub fn admin_router() -> Router<Arc<App>> {
    estuary_common::service::admin::router()
}

/// Checks the storage within `[storage] readiness_timeout` and records the outcome in
/// `estuary_origin_storage_up`.
pub async fn check_storage(app: &App) -> Result<(), crate::storage::StorageError> {
    let checked = app
        .storage
        .check(app.config.storage.readiness_timeout)
        .await;
    let up = i64::from(checked.is_ok());
    if app.metrics.storage_up.get() != up {
        match &checked {
            Ok(()) => tracing::info!("The asset storage answers again."),
            Err(e) => tracing::warn!(error = %e, "The asset storage fails its check."),
        }
    }
    app.metrics.storage_up.set(up);
    checked
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut r = (status, format!("{value}\n")).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `GET /v1/assets/<id>`: queued, packaging (with progress), ready (with manifest paths) or
/// failed (with the reason).
pub(crate) async fn asset_status(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = app.admit_asset(&headers, &id) {
        return r;
    }
    match app.db.asset(&id).await {
        Ok(Some(mut a)) => {
            // A ready asset is checked against the storage: objects deleted behind the
            // origin's back make it `missing` (and its id free for a new upload).
            let mut storage_note = None;
            if a.state == "ready" {
                match app.storage.exists(&format!("v/{id}/{MANIFEST_FILE}")).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(asset = %id, "A ready asset's asset.json is gone from the storage.");
                        if let Err(e) = app.db.mark_missing(&id).await {
                            return app.internal(e);
                        }
                        app.forget_manifest(&id);
                        a.state = "missing".into();
                        a.error = Some(crate::db::MISSING_REASON.into());
                    }
                    Err(e) => {
                        app.metrics.storage_errors.inc();
                        tracing::warn!(asset = %id, error = %e, "A ready asset could not be checked in the storage.");
                        storage_note = Some("unavailable");
                    }
                }
            }
            let mut v = serde_json::to_value(&a).unwrap_or_default();
            if let (Some(note), Some(obj)) = (storage_note, v.as_object_mut()) {
                obj.insert("storage".into(), note.into());
            }
            if a.state == "queued"
                && a.attempts > 0
                && let Some(obj) = v.as_object_mut()
            {
                obj.insert(
                    "max_attempts".into(),
                    app.config.packaging.max_attempts.into(),
                );
            }
            let raw_file = a
                .raw_mime
                .as_deref()
                .and_then(estuary_common::media::MediaType::from_mime);
            if let (true, Some(media), Some(obj)) =
                (a.state == "ready", raw_file, v.as_object_mut())
            {
                obj.insert(
                    "files".into(),
                    serde_json::json!({
                        "media": format!("/v/{id}/{}", media.file_name()),
                        "asset_json": format!("/v/{id}/{MANIFEST_FILE}"),
                    }),
                );
            } else if a.state == "ready"
                && let Some(obj) = v.as_object_mut()
            {
                obj.insert(
                    "manifests".into(),
                    serde_json::json!({
                        "hls": format!("/v/{id}/master.m3u8"),
                        "dash": format!("/v/{id}/manifest.mpd"),
                        "asset_json": format!("/v/{id}/{MANIFEST_FILE}"),
                    }),
                );
            }
            json(StatusCode::OK, &v)
        }
        Ok(None) => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
        Err(e) => app.internal(e),
    }
}

/// `DELETE /v1/assets/<id>`: unpublishes a ready or failed asset and forgets it.
pub(crate) async fn asset_delete(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match app.admit_asset(&headers, &id) {
        Ok(grant) if grant.raw.is_some() => return upload_only(),
        Ok(_) => {}
        Err(r) => return r,
    }
    let source = match app.db.asset(&id).await {
        Ok(Some(a)) if ["ready", "failed", "missing"].contains(&a.state.as_str()) => a.source,
        Ok(Some(a)) => {
            return (
                StatusCode::CONFLICT,
                format!(
                    "the asset is {}; wait until it is ready or failed\n",
                    a.state
                ),
            )
                .into_response();
        }
        Ok(None) => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
        Err(e) => return app.internal(e),
    };
    if let Err(e) = app.storage.remove_asset(&id).await {
        return app.storage_failed(e);
    }
    app.forget_manifest(&id);
    if let Err(e) = app.db.delete_asset(&id).await {
        return app.internal(e);
    }
    // The upload a failed asset kept for a retry.
    if let Some(source) = source {
        let _ = std::fs::remove_file(source);
    }
    tracing::info!(asset = %id, "An asset was removed.");
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /v1/assets/<id>/retry`: queues again a failed asset whose upload was kept (its
/// attempts failed for reasons that were not the input's fault), with its attempts reset.
pub(crate) async fn asset_retry(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match app.admit_asset(&headers, &id) {
        Ok(grant) if grant.raw.is_some() => return upload_only(),
        Ok(_) => {}
        Err(r) => return r,
    }
    let kept = match app.db.asset(&id).await {
        Ok(Some(a)) => a
            .source
            .filter(|s| a.state == "failed" && std::path::Path::new(s).is_file()),
        Ok(None) => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
        Err(e) => return app.internal(e),
    };
    if kept.is_none() {
        return (
            StatusCode::CONFLICT,
            "only a failed asset whose upload was kept can be retried; upload it again\n",
        )
            .into_response();
    }
    match app.db.requeue_failed(&id).await {
        Ok(true) => {
            app.jobs_wake.notify_one();
            tracing::info!(asset = %id, "A failed asset was queued again.");
            (StatusCode::ACCEPTED, "queued\n").into_response()
        }
        Ok(false) => (StatusCode::CONFLICT, "the asset is not failed\n").into_response(),
        Err(e) => app.internal(e),
    }
}

/// Splits `<asset>/<file path>` and refuses anything else.
pub fn split_asset_path(rest: &str) -> Option<(&str, &str)> {
    let (asset, file) = rest.split_once('/')?;
    (estuary_common::asset::valid_asset_id(asset) && estuary_common::asset::valid_file_path(file))
        .then_some((asset, file))
}

fn content_type(file: &str) -> &'static str {
    match file.rsplit('.').next().unwrap_or("") {
        "m3u8" => "application/vnd.apple.mpegurl",
        "mpd" => "application/dash+xml",
        "m4s" | "mp4" => "video/mp4",
        "m4a" => "audio/mp4",
        "json" => "application/json",
        "vtt" => "text/vtt",
        // Chat media (`media.<ext>`): the types uploads are checked against.
        ext => estuary_common::media::MediaType::from_ext(ext)
            .map_or("application/octet-stream", |t| t.mime),
    }
}

fn cors(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "Content-Length, Content-Range, ETag, Content-Digest, Repr-Digest",
        ),
    );
}

pub(crate) async fn cors_preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    cors(h);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Range, If-None-Match, If-Range"),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(86_400));
    r
}

fn digest_field(hex_sha256: &str) -> Option<HeaderValue> {
    let bytes = estuary_common::asset::decode_sha256(hex_sha256)?;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    HeaderValue::from_str(&format!("sha-256=:{b64}:")).ok()
}

/// `GET`/`HEAD /v/<asset>/<file>`: a file of a published asset, with a strong ETag from its
/// sha-256, single byte ranges, and RFC 9530 digests: `Content-Digest` on whole responses,
/// `Repr-Digest` (the whole file's) on every response.
pub(crate) async fn serve_asset(
    State(app): State<Arc<App>>,
    uri: axum::http::Uri,
    method: Method,
    headers: HeaderMap,
) -> Response {
    // The raw path, not the router's decoded one: asset paths never need percent-encoding,
    // and a decoded `%2f` must not become a separator.
    let rest = uri.path().strip_prefix("/v/").unwrap_or("");
    let response = serve_asset_inner(&app, rest, &method, &headers).await;
    app.metrics.count_request(response.status());
    response
}

async fn serve_asset_inner(
    app: &App,
    rest: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "not found\n").into_response();
    let Some((asset, file)) = split_asset_path(rest) else {
        return not_found();
    };
    // A chat media file is fetched as soon as its message arrives, which may be while it
    // is still being published: its absence is not worth remembering (only holders of a
    // token for that one path reach the origin through an edge).
    let not_found = || {
        let mut r = not_found();
        if estuary_common::media::chat_asset_id(asset) {
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        r
    };
    let published = match app.manifest(asset).await {
        Ok(Some(m)) => m,
        Ok(None) => return not_found(),
        Err(r) => return r,
    };
    let (manifest, manifest_bytes) = &*published;
    if file == estuary_common::signing::SIGNATURE_FILE {
        return serve_signature(app, asset, method).await;
    }
    let (size, sha256_hex) = if file == MANIFEST_FILE {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(manifest_bytes);
        (manifest_bytes.len() as u64, hex::encode(digest))
    } else {
        match manifest.file(file) {
            Some(f) => (f.size, f.sha256.clone()),
            None => return not_found(),
        }
    };
    let etag = format!("\"{}\"", &sha256_hex[..sha256_hex.len().min(32)]);
    let mut h = HeaderMap::new();
    cors(&mut h);
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        // A chat media file never changes under its name either (its asset id is used once).
        HeaderValue::from_static(
            if file.ends_with(".m4s")
                || file.ends_with(".mp4")
                || estuary_common::media::MediaType::of_file_name(file).is_some()
            {
                "public, max-age=31536000, immutable"
            } else {
                "public, max-age=60"
            },
        ),
    );
    let repr = digest_field(&sha256_hex);
    if let Some(v) = &repr {
        h.insert("repr-digest", v.clone());
    }
    // The same conditional and range rules as the edge (common::http_semantics). An asset
    // file has no modification time here: only its entity tag validates.
    let validators = Validators {
        etag: etag.as_bytes(),
        modified: None,
    };
    if let Some(status) = http_semantics::precondition(headers, &validators) {
        let mut r = status.into_response();
        if status == StatusCode::PRECONDITION_FAILED {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        }
        *r.headers_mut() = h;
        return r;
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(file)),
    );
    let (status, span) = match http_semantics::select_range(headers, &validators, size) {
        RangeChoice::Full => (StatusCode::OK, None),
        RangeChoice::Part(a, b) => (StatusCode::PARTIAL_CONTENT, Some((a, b))),
        RangeChoice::Unsatisfiable => {
            let mut r =
                (StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n").into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let length = match span {
        Some((a, b)) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            b - a + 1
        }
        None => {
            if let Some(v) = repr {
                h.insert("content-digest", v);
            }
            size
        }
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    let body = if *method == Method::HEAD || length == 0 {
        Body::empty()
    } else if file == MANIFEST_FILE {
        let (a, b) = span.unwrap_or((0, size.saturating_sub(1)));
        Body::from(manifest_bytes.slice(a as usize..=b as usize))
    } else {
        let rel = format!("v/{asset}/{file}");
        let got = app
            .storage
            .get(&rel, Some(span.map_or(0..size, |(a, b)| a..b + 1)))
            .await;
        match got {
            Ok(Some(result)) => {
                let bytes = app.metrics.response_bytes.clone();
                Body::from_stream(result.into_stream().map(move |r| {
                    if let Ok(b) = &r {
                        bytes.inc_by(b.len() as u64);
                    }
                    r.map_err(std::io::Error::other)
                }))
            }
            Ok(None) => return listed_file_missing(app, asset, &rel).await,
            Err(e) => return app.storage_failed(e),
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = h;
    r
}

/// A file listed in a published `asset.json` is not in the storage: the cached manifest is
/// dropped, so the origin stops claiming the asset once its `asset.json` is gone too (then
/// `missing`), and the request gets a 503 that says so, never other bytes.
async fn listed_file_missing(app: &App, asset: &str, rel: &str) -> Response {
    tracing::error!(asset = %asset, file = %rel, "A file listed in a published asset.json is missing from the storage.");
    app.forget_manifest(asset);
    if let Ok(false) = app
        .storage
        .exists(&format!("v/{asset}/{MANIFEST_FILE}"))
        .await
    {
        let _ = app.db.mark_missing(asset).await;
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "this file of the asset is missing from the storage\n",
    )
        .into_response()
}

/// Who an upload token belongs to and which assets it manages.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The token's name (logged, never the token).
    pub name: String,
    pub scope: crate::config::AssetScope,
    /// A raw-upload credential (`[auth.upload_keys]`): the one upload it allows. Such a
    /// grant uploads and reads its asset's status; it never deletes or retries.
    pub raw: Option<estuary_common::media::RawUpload>,
}

pub use estuary_common::media::RAW_UPLOAD_MAX_TTL;

/// Why a bearer value is not a raw-upload credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialRefusal {
    #[error("no upload key is configured")]
    NoKeys,
    #[error("the credential is not a signed raw-upload token: {0}")]
    Token(estuary_common::token::Rejection),
    #[error("the credential's acl is not a raw upload")]
    NotRawUpload,
    #[error("the credential is bound to a client address")]
    AddressBound,
}

impl CredentialRefusal {
    /// The label of `estuary_origin_upload_credentials_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoKeys => "no_keys",
            Self::Token(r) => r.as_str(),
            Self::NotRawUpload => "not_raw_upload",
            Self::AddressBound => "address_bound",
        }
    }
}

/// Checks a bearer value as a raw-upload credential signed with one of `keys`, at `now`
/// (unix seconds): MAC, lifetime (at most [`RAW_UPLOAD_MAX_TTL`]) and an acl that is a
/// [`RawUpload`](estuary_common::media::RawUpload). Pure.
pub fn raw_upload_grant(
    keys: &estuary_common::token::KeySet,
    presented: &str,
    now: u64,
) -> Result<Grant, CredentialRefusal> {
    use estuary_common::token;
    if keys.is_empty() {
        return Err(CredentialRefusal::NoKeys);
    }
    let parsed = token::parse(presented).map_err(CredentialRefusal::Token)?;
    let raw = estuary_common::media::RawUpload::parse_acl(parsed.acl)
        .ok_or(CredentialRefusal::NotRawUpload)?;
    if parsed.ip.is_some() {
        // The origin's handlers do not see the client's address; a credential bound to one
        // is refused rather than accepted from anywhere.
        return Err(CredentialRefusal::AddressBound);
    }
    let request = token::Request {
        path: parsed.acl,
        client: std::net::IpAddr::from([0, 0, 0, 0]),
        now,
        max_ttl: Some(RAW_UPLOAD_MAX_TTL),
    };
    token::verify(presented, keys, request).map_err(CredentialRefusal::Token)?;
    Ok(Grant {
        name: format!("upload-key:{}", parsed.kid),
        scope: crate::config::AssetScope::One(raw.asset.clone()),
        raw: Some(raw),
    })
}

/// The answer to a raw-upload credential used for anything but its upload.
fn upload_only() -> Response {
    (
        StatusCode::FORBIDDEN,
        "an upload credential only uploads its asset and reads its status\n",
    )
        .into_response()
}

impl Grant {
    /// `Ok` when the token manages asset `id`, else a 403 that names no other asset.
    pub fn may(&self, id: &str) -> Result<(), Response> {
        if self.scope.covers(id) {
            Ok(())
        } else {
            Err((
                StatusCode::FORBIDDEN,
                "this token does not manage that asset\n",
            )
                .into_response())
        }
    }
}

/// `asset.json.sig` of a published asset (small: read whole, no ranges).
async fn serve_signature(app: &App, asset: &str, method: &Method) -> Response {
    let rel = format!("v/{asset}/{}", estuary_common::signing::SIGNATURE_FILE);
    let bytes = match app.storage.get_bytes(&rel).await {
        Ok(Some(b)) if b.len() <= estuary_common::signing::MAX_SIGNATURE_FILE => b,
        Ok(Some(_)) => return app.internal(format!("{rel} is too large")),
        Ok(None) => return (StatusCode::NOT_FOUND, "this asset is not signed\n").into_response(),
        Err(e) => return app.storage_failed(e),
    };
    let mut h = HeaderMap::new();
    cors(&mut h);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    let mut r = Response::new(body);
    *r.headers_mut() = h;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_upload_credential_grants_its_one_asset_until_it_expires() {
        use estuary_common::token::{Claims, KeySet, sign};
        const SECRET: &str = "00112233445566778899aabbccddeeff";
        let keys = KeySet::from_hex([("relay", SECRET)]).expect("keys");
        let secret = hex::decode(SECRET).expect("hex");
        let mint = |acl: &str, exp: u64| {
            sign(
                &Claims {
                    kid: "relay".into(),
                    acl: acl.into(),
                    exp,
                    st: None,
                    ip: None,
                },
                &secret,
            )
        };
        let acl = "/uploads/raw/chat-abc/10/image/png";
        let grant = raw_upload_grant(&keys, &mint(acl, 1000), 500).expect("grant");
        assert_eq!(
            grant.scope,
            crate::config::AssetScope::One("chat-abc".into())
        );
        let raw = grant.raw.expect("raw");
        assert_eq!((raw.size, raw.media.mime), (10, "image/png"));
        let refused = |text: &str, now| raw_upload_grant(&keys, text, now).err();
        assert_eq!(
            refused(&mint(acl, 1000), 1000),
            Some(CredentialRefusal::Token(
                estuary_common::token::Rejection::Expired
            ))
        );
        assert_eq!(
            refused(&mint(acl, 500 + RAW_UPLOAD_MAX_TTL + 1), 500),
            Some(CredentialRefusal::Token(
                estuary_common::token::Rejection::LifetimeTooLong
            ))
        );
        // A playback token, or one for a packaged or non-chat asset, is no credential.
        for other in [
            "/v/*",
            "/uploads/raw/movie/10/image/png",
            "/uploads/raw/chat-abc/10/image/png!/v/*",
        ] {
            assert_eq!(
                refused(&mint(other, 1000), 500),
                Some(CredentialRefusal::NotRawUpload),
                "{other}"
            );
        }
        let forged = mint(acl, 1000).replace("chat-abc", "chat-abd");
        assert_eq!(
            refused(&forged, 500),
            Some(CredentialRefusal::Token(
                estuary_common::token::Rejection::BadHmac
            ))
        );
        assert_eq!(
            raw_upload_grant(&KeySet::default(), &mint(acl, 1000), 500).err(),
            Some(CredentialRefusal::NoKeys)
        );
    }

    #[test]
    fn asset_paths() {
        assert_eq!(
            split_asset_path("abc/720p/seg_00001.m4s"),
            Some(("abc", "720p/seg_00001.m4s"))
        );
        for bad in [
            "abc",
            "abc/",
            "abc/../x",
            "abc/.hidden",
            "../abc/x",
            "abc//x",
            "a%2f/x",
            "abc/x\\y",
        ] {
            assert_eq!(split_asset_path(bad), None, "{bad}");
        }
    }
}
