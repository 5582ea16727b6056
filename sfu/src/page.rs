//! The meeting page at `GET /rooms/<room>`: one self-contained HTML file (`page.html`, inline
//! style and script, nothing from elsewhere) that joins the room over `/rooms/<room>/ws` with
//! the token from its own URL (`?token=..` or `#token=..`), publishes the camera and the
//! microphone, and shows every other participant.
//!
//! The Content-Security-Policy allows the page's own inline script and style by their SHA-256
//! hashes only (no `'unsafe-inline'`), WebSockets to this host, media from `MediaStream`s
//! (`blob:`/`mediastream:`), and nothing else; the page never sends its URL (which carries
//! the token) as a referrer.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use estuary_common::page::inline_hashes;

const PAGE: &str = include_str!("page.html");

fn policy(html: &str) -> String {
    let (script, style) = inline_hashes(html);
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         media-src 'self' blob: mediastream:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
        script, style,
    )
}

/// The page's policy header (`None`: it cannot be written, and the page is not served).
pub fn csp() -> Option<HeaderValue> {
    HeaderValue::from_str(&policy(PAGE)).ok()
}

/// `GET /rooms/<room>` (the room name and the token are read by the page from its URL).
pub async fn page(State(app): State<Arc<crate::http::App>>) -> Response {
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
        let csp = policy(PAGE);
        if let Err(why) = policy_fits(PAGE, &csp) {
            panic!("{why}");
        }
    }
}
