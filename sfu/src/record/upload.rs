//! Hands a finished recording to the origin: one TUS upload (`POST /uploads/`, then `PATCH`es
//! of at most [`CHUNK`] bytes), resumed from the origin's `Upload-Offset` after a failed
//! `PATCH`. The origin packages it into an asset like any other upload.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use estuary_common::http::{HttpClient, request};
use http::{HeaderName, Method, StatusCode};

/// The largest `PATCH` body.
pub const CHUNK: usize = 8 << 20;
/// Failed exchanges tolerated per upload before it is given up (the file stays for the next
/// start).
const ATTEMPTS: u32 = 6;

/// Why an upload failed; `retry_later` when a later attempt may do better.
#[derive(Debug)]
pub struct UploadError {
    pub text: String,
    pub retry_later: bool,
}

fn fail(text: impl Into<String>, retry_later: bool) -> UploadError {
    UploadError {
        text: text.into(),
        retry_later,
    }
}

/// Uploads `file` as asset `asset`; `Ok` once the origin has every byte.
pub async fn upload(
    client: &HttpClient,
    origin: &str,
    token: &str,
    asset: &str,
    file: &Path,
) -> Result<(), UploadError> {
    let size = std::fs::metadata(file)
        .map_err(|e| fail(format!("{}: {e}", file.display()), false))?
        .len();
    if size == 0 {
        return Err(fail("the recording is empty", false));
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let base = origin.trim_end_matches('/');
    let auth = format!("Bearer {token}");
    let length = size.to_string();
    let metadata = format!(
        "filename {},asset {}",
        b64(&format!("{asset}.mkv")),
        b64(asset)
    );
    let tus = HeaderName::from_static("tus-resumable");
    let create = request(
        Method::POST,
        &format!("{base}/uploads/"),
        &[
            (tus.clone(), "1.0.0"),
            (http::header::AUTHORIZATION, &auth),
            (HeaderName::from_static("upload-length"), &length),
            (HeaderName::from_static("upload-metadata"), &metadata),
        ],
        Bytes::new(),
    )
    .map_err(|e| fail(e.to_string(), false))?;
    let created = client
        .send(create)
        .await
        .map_err(|e| fail(format!("creating the upload: {e}"), true))?;
    if created.status() != StatusCode::CREATED {
        let transient = created.status().is_server_error();
        return Err(fail(
            format!(
                "the origin refused the upload: {} {}",
                created.status(),
                String::from_utf8_lossy(created.body()).trim()
            ),
            transient,
        ));
    }
    let location = created
        .headers()
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| fail("the origin's answer has no Location", false))?;
    let url = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        let origin_root = origin_root(base);
        format!("{origin_root}{location}")
    };

    let mut f = std::fs::File::open(file).map_err(|e| fail(e.to_string(), false))?;
    let mut offset = 0u64;
    let mut failures = 0u32;
    let mut buf = vec![0u8; CHUNK];
    while offset < size {
        let want = usize::try_from((size - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
        let chunk = f
            .seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf[..want]))
            .map(|()| Bytes::copy_from_slice(&buf[..want]))
            .map_err(|e| fail(format!("reading {}: {e}", file.display()), false))?;
        let off = offset.to_string();
        let patch = request(
            Method::PATCH,
            &url,
            &[
                (tus.clone(), "1.0.0"),
                (http::header::AUTHORIZATION, &auth),
                (HeaderName::from_static("upload-offset"), &off),
                (
                    http::header::CONTENT_TYPE,
                    "application/offset+octet-stream",
                ),
            ],
            chunk,
        )
        .map_err(|e| fail(e.to_string(), false))?;
        match client.send(patch).await {
            Ok(r) if r.status() == StatusCode::NO_CONTENT => {
                offset = header_u64(&r, "upload-offset")
                    .ok_or_else(|| fail("a PATCH answer without Upload-Offset", false))?;
                continue;
            }
            Ok(r) if r.status().is_client_error() && r.status() != StatusCode::CONFLICT => {
                return Err(fail(
                    format!(
                        "the origin refused a PATCH: {} {}",
                        r.status(),
                        String::from_utf8_lossy(r.body()).trim()
                    ),
                    false,
                ));
            }
            Ok(r) => {
                tracing::warn!(status = %r.status(), asset, "A recording's PATCH failed; resuming.")
            }
            Err(e) => tracing::warn!(error = %e, asset, "A recording's PATCH failed; resuming."),
        }
        failures += 1;
        if failures >= ATTEMPTS {
            return Err(fail("the origin kept failing", true));
        }
        tokio::time::sleep(Duration::from_millis(250 << failures.min(5))).await;
        // Where the origin is: HEAD answers its offset.
        let head = request(
            Method::HEAD,
            &url,
            &[(tus.clone(), "1.0.0"), (http::header::AUTHORIZATION, &auth)],
            Bytes::new(),
        )
        .map_err(|e| fail(e.to_string(), false))?;
        if let Ok(r) = client.send(head).await
            && let Some(o) = header_u64(&r, "upload-offset")
            && o <= size
        {
            offset = o;
        }
    }
    Ok(())
}

/// `scheme://authority` of the origin's base URL (a `Location` is a path from the root).
fn origin_root(base: &str) -> String {
    match base.find("://") {
        Some(i) => {
            let rest = &base[i + 3..];
            let end = rest.find('/').map_or(base.len(), |j| i + 3 + j);
            base[..end].to_owned()
        }
        None => base.to_owned(),
    }
}

fn header_u64(r: &http::Response<Bytes>, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::origin_root;

    #[test]
    fn origin_root_keeps_scheme_and_authority() {
        assert_eq!(origin_root("http://o:8080"), "http://o:8080");
        assert_eq!(origin_root("https://o.example/base"), "https://o.example");
    }
}
