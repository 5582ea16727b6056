//! The demo chat page at `GET /` and `GET /chat`: one self-contained HTML file (`page.html`,
//! inline style and script, nothing from elsewhere) that connects to `/ws` on the same host
//! with the token and user name in its own URL (`?token=..&user=..&peer=..`).
//!
//! The Content-Security-Policy allows the page's own inline script and style by their SHA-256
//! hashes only (no `'unsafe-inline'`), WebSockets to this host and, with `[media]`, uploads
//! to the origin and images, video and audio from the CDN, and nothing else; the page never
//! sends its URL (which carries the token) as a referrer.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

const PAGE: &str = include_str!("page.html");

/// The body of the first `<tag>...</tag>` element of `html`.
fn element<'a>(html: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = html.find(&open)? + open.len();
    let len = html[start..].find(&format!("</{tag}>"))?;
    Some(&html[start..start + len])
}

/// `'sha256-<base64>'`, the CSP source of an inline element with this text.
fn hash_source(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The page's Content-Security-Policy: its inline script and style by hash, WebSockets and
/// fetches to its own origin; with `media` (the origin and the CDN of `[media]`), fetches to
/// the origin (the upload) and images, video and audio from the CDN; no other source of
/// anything.
fn policy(html: &str, media: Option<(&str, &str)>) -> String {
    let hashes = |tag| element(html, tag).map(hash_source).unwrap_or_default();
    let (connect, files) = match media {
        Some((origin, cdn)) => (
            format!(" {}", origin.trim_end_matches('/')),
            format!(
                " img-src {cdn}; media-src {cdn};",
                cdn = cdn.trim_end_matches('/')
            ),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'{connect};{files} \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes("script"),
        hashes("style"),
    )
}

/// The page's policy header for this relay (`None`: it cannot be written, and the page is
/// not served).
pub fn csp(media: Option<&crate::config::MediaConfig>) -> Option<HeaderValue> {
    let media = media.map(|m| (m.origin.as_str(), m.cdn.as_str()));
    HeaderValue::from_str(&policy(PAGE, media)).ok()
}

/// `GET /` and `GET /chat`.
pub async fn page(State(app): State<Arc<super::App>>) -> Response {
    // Without its policy the page is not served: a page whose policy is broken must not run.
    let Some(csp) = app.page_csp.clone() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ),
        (header::CONTENT_SECURITY_POLICY, csp),
        // The page's URL carries a token.
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, PAGE).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_pages_own_script_and_style_and_nothing_inline_else() {
        let csp = policy(PAGE, None);
        assert!(csp.contains("connect-src 'self';") && !csp.contains("img-src"));
        let with_media = policy(PAGE, Some(("http://origin:8080/", "https://cdn.example")));
        assert!(
            with_media.contains("connect-src 'self' http://origin:8080;")
                && with_media
                    .contains(" img-src https://cdn.example; media-src https://cdn.example;"),
            "{with_media}"
        );
        let script = element(PAGE, "script").expect("the page has an inline script");
        let style = element(PAGE, "style").expect("the page has an inline style");
        assert!(csp.contains(&format!("script-src {};", hash_source(script))));
        assert!(csp.contains(&format!("style-src {};", hash_source(style))));
        assert!(!csp.contains("unsafe"), "{csp}");
        // One script and one style element: a second would be refused by the policy.
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        // No inline style or event-handler attributes: the policy would refuse them.
        assert!(!PAGE.contains(" style="));
        assert!(
            !PAGE
                .split_whitespace()
                .any(|w| w.starts_with("on") && w.contains("=\"")),
            "an inline event handler"
        );
        assert!(HeaderValue::from_str(&csp).is_ok());
    }

    #[test]
    fn known_hash() {
        // echo -n 'alert(1)' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            hash_source("alert(1)"),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
        );
    }
}
