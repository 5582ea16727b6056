//! Chat media through the CDN (`[media]`), pure: what the relay answers to `media.upload`,
//! which media URLs it accepts in a `send`, and the signed URL each delivery carries.
//!
//! `media.upload` gets an asset id `chat-<nonce>-<mac>`, where the MAC (HMAC-SHA256 with the
//! upload key's secret, truncated to 96 bits) covers the nonce, the declared size and type:
//! any relay holding the secret recognises an id it (or another relay of the cluster)
//! issued, for that size and type, without a lookup. With it come an upload credential for
//! the origin (the edge token format, acl [`RawUpload::acl`], signed with the upload key)
//! and the CDN URL the file will have. A `send` with media is accepted only for such an id;
//! the message keeps the bare path `/v/<asset>/media.<ext>`, and every delivery signs a fresh
//! URL on this relay's CDN (acl: that one path; key: the CDN key).

use std::collections::BTreeMap;

use base64::Engine as _;
use estuary_common::chat::{Media, UploadTicket};
use estuary_common::media::{MediaType, RawUpload, parse_media_path};
use estuary_common::token::{self, Claims};
use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq as _;

use crate::config::{ConfigError, MediaConfig};

/// The length of an asset id's random part (a-z 0-9: about 103 bits).
pub const NONCE_LEN: usize = 20;
/// The MAC's length in an asset id, in hex digits (96 bits).
const MAC_HEX: usize = 24;

/// Why a `media.upload` or a `send`'s media is refused (an `error` `bad_media`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    #[error("{0:?} is not a media type this relay accepts (it accepts {1})")]
    TypeNotAllowed(String, String),
    #[error("the size must be between 1 and {0} bytes")]
    BadSize(u64),
    #[error("the media URL is not a chat media file (/v/<asset>/media.<ext>)")]
    NotMediaUrl,
    #[error("the media URL names an asset no relay of this service issued for that type and size")]
    NotIssued,
    #[error("the media's mime type is not its file's")]
    MimeMismatch,
}

/// The `[media]` settings, decoded once.
pub struct MediaIssuer {
    origin: String,
    cdn: String,
    upload_kid: String,
    upload_secret: Vec<u8>,
    cdn_kid: String,
    cdn_secret: Vec<u8>,
    allowed: Vec<&'static MediaType>,
    max_size: u64,
    /// Seconds.
    upload_ttl: u64,
    /// Seconds.
    url_ttl: u64,
}

impl std::fmt::Debug for MediaIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs.
        f.debug_struct("MediaIssuer")
            .field("origin", &self.origin)
            .field("cdn", &self.cdn)
            .finish()
    }
}

/// Hands out uploads, accepts and presents media URLs.
impl MediaIssuer {
    /// Decodes a validated `[media]` table.
    pub fn from_config(c: &MediaConfig) -> Result<Self, ConfigError> {
        c.validate()?;
        Ok(Self {
            origin: c.origin.trim_end_matches('/').to_owned(),
            cdn: c.cdn.trim_end_matches('/').to_owned(),
            upload_kid: c.upload_key.kid.clone(),
            upload_secret: c.upload_key.secret("media.upload_key")?,
            cdn_kid: c.cdn_key.kid.clone(),
            cdn_secret: c.cdn_key.secret("media.cdn_key")?,
            allowed: c
                .mime_types
                .iter()
                .filter_map(|m| MediaType::from_mime(m))
                .collect(),
            max_size: c.max_size.as_u64(),
            upload_ttl: c.upload_ttl.as_secs(),
            url_ttl: c.url_ttl.as_secs(),
        })
    }

    /// The answer to `media.upload` of `size` bytes of `mime` at `now_ms`: the upload to make
    /// and the media object (with a signed CDN URL) to send once it is ready. `nonce` is
    /// [`NONCE_LEN`] random characters of a-z 0-9 (the caller's random source).
    pub fn issue(
        &self,
        now_ms: u64,
        nonce: &str,
        mime: &str,
        size: u64,
    ) -> Result<(UploadTicket, Media), MediaError> {
        let Some(media) = self.allowed.iter().copied().find(|t| t.mime == mime) else {
            let list: Vec<&str> = self.allowed.iter().map(|t| t.mime).collect();
            return Err(MediaError::TypeNotAllowed(
                mime.chars().take(100).collect(),
                list.join(", "),
            ));
        };
        if size == 0 || size > self.max_size {
            return Err(MediaError::BadSize(self.max_size));
        }
        let raw = RawUpload {
            asset: self.asset_id(nonce, size, media.mime),
            size,
            media,
        };
        let exp = now_ms / 1000 + self.upload_ttl;
        let credential = token::sign(
            &Claims {
                kid: self.upload_kid.clone(),
                acl: raw.acl(),
                exp,
                st: None,
                ip: None,
            },
            &self.upload_secret,
        );
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let headers = BTreeMap::from([
            ("Authorization".to_owned(), format!("Bearer {credential}")),
            ("Tus-Resumable".to_owned(), "1.0.0".to_owned()),
            ("Upload-Length".to_owned(), size.to_string()),
            (
                "Upload-Metadata".to_owned(),
                format!(
                    "filename {},asset {}",
                    b64(&media.file_name()),
                    b64(&raw.asset)
                ),
            ),
        ]);
        let ticket = UploadTicket {
            url: format!("{}/uploads/", self.origin),
            headers,
            expires: exp * 1000,
        };
        let path = Media {
            url: raw.path(),
            mime: media.mime.to_owned(),
            size,
        };
        Ok((ticket, self.present(&path, now_ms)))
    }

    /// The asset id for `nonce`, `size` and `mime`: `chat-<nonce>-<mac>`.
    pub fn asset_id(&self, nonce: &str, size: u64, mime: &str) -> String {
        format!("chat-{nonce}-{}", self.id_mac(nonce, size, mime))
    }

    fn id_mac(&self, nonce: &str, size: u64, mime: &str) -> String {
        // The prefix keeps this MAC from ever meaning a token's (whose text starts `exp=`).
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.upload_secret)
            .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"));
        mac.update(format!("estuary chat media id\n{nonce}\n{size}\n{mime}").as_bytes());
        let digest = mac.finalize().into_bytes();
        hex::encode(&digest[..MAC_HEX / 2])
    }

    /// The media of a `send`, as the message keeps it (the bare path), if it names an asset
    /// issued for its type and size. The URL may be absolute (any host: each delivery uses
    /// the delivering relay's CDN) or a path, with or without a query.
    pub fn accept(&self, media: &Media) -> Result<Media, MediaError> {
        let url = media.url.as_str();
        let path = match url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
        {
            Some(rest) => rest.find('/').map_or("", |i| &rest[i..]),
            None => url,
        };
        let path = path.split(['?', '#']).next().unwrap_or("");
        let (asset, kind) = parse_media_path(path).ok_or(MediaError::NotMediaUrl)?;
        if kind.mime != media.mime {
            return Err(MediaError::MimeMismatch);
        }
        let (nonce, mac) = asset
            .strip_prefix("chat-")
            .and_then(|r| r.rsplit_once('-'))
            .ok_or(MediaError::NotIssued)?;
        let nonce_ok = nonce.len() == NONCE_LEN
            && nonce
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !nonce_ok
            || mac.len() != MAC_HEX
            || !bool::from(
                self.id_mac(nonce, media.size, kind.mime)
                    .as_bytes()
                    .ct_eq(mac.as_bytes()),
            )
        {
            return Err(MediaError::NotIssued);
        }
        Ok(Media {
            url: path.to_owned(),
            mime: kind.mime.to_owned(),
            size: media.size,
        })
    }

    /// The media as a recipient gets it at `now_ms`: a kept path becomes a URL on this
    /// relay's CDN signed for that one path; anything else (a message stored before `[media]`
    /// was set) is handed on as it is.
    pub fn present(&self, media: &Media, now_ms: u64) -> Media {
        if !media.url.starts_with('/') || parse_media_path(&media.url).is_none() {
            return media.clone();
        }
        let signed = token::sign(
            &Claims {
                kid: self.cdn_kid.clone(),
                acl: media.url.clone(),
                exp: now_ms / 1000 + self.url_ttl,
                st: None,
                ip: None,
            },
            &self.cdn_secret,
        );
        Media {
            url: format!("{}{}?{}", self.cdn, media.url, token::query_pair(&signed)),
            mime: media.mime.clone(),
            size: media.size,
        }
    }
}

/// A random nonce of [`NONCE_LEN`] characters of a-z 0-9 from `rng`.
pub fn nonce(rng: &mut impl rand::Rng) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..NONCE_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use estuary_common::token::{KeySet, Request};

    const UPLOAD: &str = "00112233445566778899aabbccddeeff";
    const CDN: &str = "ffeeddccbbaa99887766554433221100";

    fn issuer() -> MediaIssuer {
        let text = format!(
            "origin = \"http://origin:8080\"\ncdn = \"https://cdn.example/\"\nupload_key = {{ kid = \"relay\", secret = \"{UPLOAD}\" }}\ncdn_key = {{ kid = \"k1\", secret = \"{CDN}\" }}\nmime_types = [\"image/jpeg\", \"image/png\"]\nmax_size = \"1MiB\"\n"
        );
        let c: MediaConfig = estuary_common::config::from_toml(&text).expect("media");
        MediaIssuer::from_config(&c).expect("issuer")
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn an_upload_carries_a_credential_the_origin_reads_and_a_signed_cdn_url() {
        let m = issuer();
        let nonce = "abcdefghij0123456789";
        let (ticket, media) = m.issue(NOW, nonce, "image/jpeg", 1234).expect("issue");
        assert_eq!(ticket.url, "http://origin:8080/uploads/");
        assert_eq!(ticket.expires, (NOW / 1000 + 900) * 1000);
        let bearer = ticket.headers["Authorization"]
            .strip_prefix("Bearer ")
            .expect("bearer");
        let parsed = token::parse(bearer).expect("token");
        let raw = RawUpload::parse_acl(parsed.acl).expect("raw acl");
        assert_eq!(raw.asset, m.asset_id(nonce, 1234, "image/jpeg"));
        assert_eq!((raw.size, raw.media.mime), (1234, "image/jpeg"));
        let keys = KeySet::from_hex([("relay", UPLOAD)]).expect("keys");
        let at = |now| Request {
            path: parsed.acl,
            client: [127, 0, 0, 1].into(),
            now,
            max_ttl: None,
        };
        assert_eq!(token::verify(bearer, &keys, at(NOW / 1000)), Ok(()));
        assert!(token::verify(bearer, &keys, at(NOW / 1000 + 901)).is_err());
        // The CDN URL: the asset's one file, a token for exactly that path.
        let path = raw.path();
        let (base, query) = media.url.split_once('?').expect("query");
        assert_eq!(base, format!("https://cdn.example{path}"));
        let text = percent_encoding::percent_decode_str(query.strip_prefix("token=").expect("t"))
            .decode_utf8()
            .expect("utf8");
        let keys = KeySet::from_hex([("k1", CDN)]).expect("keys");
        let req = |p| Request {
            path: p,
            client: [127, 0, 0, 1].into(),
            now: NOW / 1000,
            max_ttl: None,
        };
        assert_eq!(token::verify(&text, &keys, req(&path)), Ok(()));
        assert!(token::verify(&text, &keys, req("/v/premium/master.m3u8")).is_err());
    }

    #[test]
    fn only_issued_ids_of_the_declared_type_and_size_are_accepted() {
        let m = issuer();
        let nonce = "abcdefghij0123456789";
        let (_, media) = m.issue(NOW, nonce, "image/png", 99).expect("issue");
        let kept = m.accept(&media).expect("accepted");
        assert!(kept.url.starts_with("/v/chat-") && kept.url.ends_with("/media.png"));
        // Another relay's CDN or a bare path: the same asset.
        let elsewhere = Media {
            url: format!("http://edge-b:81{}?token=x", kept.url),
            ..media.clone()
        };
        assert_eq!(m.accept(&elsewhere), Ok(kept.clone()));
        // The kept path is presented as a fresh signed URL.
        assert!(
            m.present(&kept, NOW)
                .url
                .starts_with("https://cdn.example/v/chat-")
        );
        let lie = |url: &str, mime: &str, size| Media {
            url: url.to_owned(),
            mime: mime.to_owned(),
            size,
        };
        assert_eq!(
            m.accept(&lie(&kept.url, "image/png", 100)),
            Err(MediaError::NotIssued)
        );
        assert_eq!(
            m.accept(&lie(&kept.url, "image/jpeg", 99)),
            Err(MediaError::MimeMismatch)
        );
        let forged = kept.url.replace(nonce, "zzzzzzzzzz0123456789");
        assert_eq!(
            m.accept(&lie(&forged, "image/png", 99)),
            Err(MediaError::NotIssued)
        );
        for bad in [
            "https://cdn.example/v/premium/master.m3u8",
            "https://cdn.example/v/premium/media.png",
            "/etc/passwd",
            "",
            "javascript:alert(1)",
        ] {
            assert!(m.accept(&lie(bad, "image/png", 99)).is_err(), "{bad}");
        }
        // Another secret issued it: not ours.
        let other = MediaIssuer {
            upload_secret: vec![7; 16],
            ..issuer()
        };
        let (_, theirs) = other.issue(NOW, nonce, "image/png", 99).expect("issue");
        assert_eq!(m.accept(&theirs), Err(MediaError::NotIssued));
        // A URL that is not a kept path is handed on untouched.
        let plain = lie("https://example.net/cat.png", "image/png", 5);
        assert_eq!(m.present(&plain, NOW), plain);
    }

    #[test]
    fn types_and_sizes_outside_the_config_are_refused() {
        let m = issuer();
        let n = "abcdefghij0123456789";
        assert!(matches!(
            m.issue(NOW, n, "image/gif", 10),
            Err(MediaError::TypeNotAllowed(..))
        ));
        assert!(matches!(
            m.issue(NOW, n, "text/html", 10),
            Err(MediaError::TypeNotAllowed(..))
        ));
        assert_eq!(
            m.issue(NOW, n, "image/png", 0).err(),
            Some(MediaError::BadSize(1 << 20))
        );
        assert!(m.issue(NOW, n, "image/png", (1 << 20) + 1).is_err());
        assert!(m.issue(NOW, n, "image/png", 1 << 20).is_ok());
    }

    #[test]
    fn nonces_are_asset_id_characters() {
        use rand::SeedableRng as _;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = nonce(&mut rng);
        assert_eq!(a.len(), NONCE_LEN);
        assert_ne!(a, nonce(&mut rng));
        let id = issuer().asset_id(&a, 1, "image/png");
        assert!(estuary_common::media::chat_asset_id(&id), "{id}");
    }
}
