//! What the services' self-contained demo pages share (the chat relay's and the SFU's): the
//! CSP hash of an inline element, and the response with the page's headers.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

/// The body of the first `<tag>...</tag>` element of `html`.
pub fn element<'a>(html: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = html.find(&open)? + open.len();
    let len = html[start..].find(&format!("</{tag}>"))?;
    Some(&html[start..start + len])
}

/// `'sha256-<base64>'`, the CSP source of an inline element with this text.
pub fn hash_source(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The CSP sources of `html`'s inline `<script>` and `<style>` (empty when it has none).
pub fn inline_hashes(html: &str) -> (String, String) {
    let hashes = |tag| element(html, tag).map(hash_source).unwrap_or_default();
    (hashes("script"), hashes("style"))
}

/// `page` as HTML under `csp`; its URL carries a token, so it is never sent as a referrer.
pub fn response(page: &'static str, csp: HeaderValue) -> Response {
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ),
        (header::CONTENT_SECURITY_POLICY, csp),
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
    (headers, page).into_response()
}

/// Why `csp` would not let `html` work as written, if it would not: the policy must name the
/// hashes of the page's one inline script and one inline style and allow nothing `unsafe`,
/// and the page must have no second script or style element, no inline style attribute and
/// no inline event handler (the policy would refuse them), and the policy must be a valid
/// header value.
pub fn policy_fits(html: &str, csp: &str) -> Result<(), String> {
    let script = element(html, "script").ok_or("the page has no inline script")?;
    let style = element(html, "style").ok_or("the page has no inline style")?;
    if !csp.contains(&format!("script-src {};", hash_source(script))) {
        return Err(format!("the policy does not name the script's hash: {csp}"));
    }
    if !csp.contains(&format!("style-src {};", hash_source(style))) {
        return Err(format!("the policy does not name the style's hash: {csp}"));
    }
    if csp.contains("unsafe") {
        return Err(format!("the policy allows something unsafe: {csp}"));
    }
    if html.matches("<script").count() != 1 || html.matches("<style").count() != 1 {
        return Err("the page has more than one script or style element".into());
    }
    if html.contains(" style=") {
        return Err("the page has an inline style attribute".into());
    }
    if html
        .split_whitespace()
        .any(|w| w.starts_with("on") && w.contains("=\""))
    {
        return Err("the page has an inline event handler".into());
    }
    HeaderValue::from_str(csp).map_err(|_| "the policy is not a valid header value".to_owned())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hash() {
        // echo -n 'alert(1)' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            hash_source("alert(1)"),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
        );
        assert_eq!(element("<p><b>x</b></p>", "b"), Some("x"));
    }
}
