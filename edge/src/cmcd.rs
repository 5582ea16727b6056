//! Common Media Client Data (CTA-5004): the keys a player sends in the `CMCD` query parameter
//! or the `CMCD-Request`, `CMCD-Object`, `CMCD-Status` and `CMCD-Session` headers, parsed for
//! the access log; the session id (`sid`) also tells the cache policy which requests belong
//! to one player. Nothing here affects what is served.

use serde_json::{Map, Value};

/// The longest CMCD text parsed, in bytes; longer input is ignored.
const MAX_LEN: usize = 2048;

/// The CMCD header names.
pub const HEADERS: [&str; 4] = ["cmcd-request", "cmcd-object", "cmcd-status", "cmcd-session"];

/// Adds the keys of one CMCD text (`br=3200,bl=21300,sid="6e2f...",su`) to `out`. Malformed
/// entries are skipped, never an error: logging must not fail a request.
pub fn parse_into(text: &str, out: &mut Map<String, Value>) {
    if text.len() > MAX_LEN {
        return;
    }
    for entry in split_entries(text) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (key, value) = match entry.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (entry, None),
        };
        if key.is_empty()
            || key.len() > 32
            || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        {
            continue;
        }
        let value = match value {
            None => Value::Bool(true),
            Some(v) if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') => Value::String(
                v[1..v.len() - 1]
                    .replace("\\\"", "\"")
                    .replace("\\\\", "\\"),
            ),
            Some(v) => match v.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => match v.parse::<f64>() {
                    Ok(f) if f.is_finite() => Value::from(f),
                    _ => Value::String(v.to_owned()),
                },
            },
        };
        out.insert(key.to_owned(), value);
    }
}

/// The session id (`sid`) a player sends in CMCD, from the query (`CMCD=`) or the
/// `CMCD-Session` header, if any.
pub fn session_id(query: Option<&str>, headers: &http::HeaderMap) -> Option<String> {
    let mut keys = Map::new();
    if let Some(q) = query {
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("CMCD=")
                && let Ok(v) = percent_encoding::percent_decode_str(v).decode_utf8()
                && v.contains("sid=")
            {
                parse_into(&v, &mut keys);
            }
        }
    }
    if !keys.contains_key("sid")
        && let Some(v) = headers.get("cmcd-session").and_then(|v| v.to_str().ok())
    {
        parse_into(v, &mut keys);
    }
    match keys.get("sid")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Splits on commas that are not inside a quoted string.
fn split_entries(text: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    let mut parts = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_id_comes_from_the_query_or_the_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(session_id(Some("a=1"), &headers), None);
        assert_eq!(
            session_id(Some("CMCD=br%3D3200%2Csid%3D%22abc%22"), &headers).as_deref(),
            Some("abc")
        );
        headers.insert(
            "cmcd-session",
            http::HeaderValue::from_static("sid=\"xyz\""),
        );
        assert_eq!(session_id(None, &headers).as_deref(), Some("xyz"));
    }

    #[test]
    fn parses_typical_cmcd() {
        let mut m = Map::new();
        parse_into(
            r#"bl=21300,br=3200,bs,cid="faec5fc2-ac30-11eabb37-0242ac130002",d=4004,mtp=25400,ot=v,sid="6e2fb550-c457-11e9-bb97-0800200c9a66,x",su"#,
            &mut m,
        );
        assert_eq!(m["br"], Value::from(3200));
        assert_eq!(m["bs"], Value::Bool(true));
        assert_eq!(m["ot"], Value::from("v"));
        assert_eq!(
            m["sid"],
            Value::from("6e2fb550-c457-11e9-bb97-0800200c9a66,x")
        );
        assert_eq!(m.len(), 9);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let mut m = Map::new();
            parse_into(&s, &mut m);
        }
    }
}
