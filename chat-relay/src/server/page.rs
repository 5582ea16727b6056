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
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use estuary_common::page::inline_hashes;

const PAGE: &str = include_str!("page.html");

/// The page's Content-Security-Policy: its inline script and style by hash, WebSockets and
/// fetches to its own origin; with `media` (the origin and the CDN of `[media]`), fetches to
/// the origin (the upload) and images, video and audio from the CDN; no other source of
/// anything.
fn policy(html: &str, media: Option<(&str, &str)>) -> String {
    let (script, style) = inline_hashes(html);
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
        script, style,
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
    estuary_common::page::response(PAGE, csp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use estuary_common::page::policy_fits;

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
        for policy in [&csp, &with_media] {
            if let Err(why) = policy_fits(PAGE, policy) {
                panic!("{why}");
            }
        }
    }
}
