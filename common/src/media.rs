//! Chat media through the CDN: what the chat relay and the origin agree on. The relay mints a
//! short-lived upload credential in the edge token format whose acl is a [`RawUpload`]
//! (`/uploads/raw/<asset>/<size>/<type>/<subtype>`); the origin accepts it for exactly one
//! upload of that asset, size and type, publishes the file untouched as
//! `/v/<asset>/media.<ext>` ([`MediaType::file_name`]) with an `asset.json`, and edges fill
//! and verify it like any other asset. Pure.

/// A media type chat clients may send, with the extension its published file carries (edges
/// and the origin choose `Content-Type` by extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaType {
    /// The MIME type, for example `image/jpeg`.
    pub mime: &'static str,
    /// The file extension, without the dot.
    pub ext: &'static str,
}

/// Every media type a chat upload may have: the relay's `[media] mime_types` choose among
/// them, and the origin checks the uploaded bytes against the declared one.
pub const MEDIA_TYPES: [MediaType; 9] = [
    MediaType {
        mime: "image/jpeg",
        ext: "jpg",
    },
    MediaType {
        mime: "image/png",
        ext: "png",
    },
    MediaType {
        mime: "image/webp",
        ext: "webp",
    },
    MediaType {
        mime: "image/gif",
        ext: "gif",
    },
    MediaType {
        mime: "video/mp4",
        ext: "mp4",
    },
    MediaType {
        mime: "video/webm",
        ext: "webm",
    },
    MediaType {
        mime: "audio/ogg",
        ext: "ogg",
    },
    MediaType {
        mime: "audio/mpeg",
        ext: "mp3",
    },
    MediaType {
        mime: "audio/mp4",
        ext: "m4a",
    },
];

impl MediaType {
    /// The known type of a MIME type (exact, lower case).
    pub fn from_mime(mime: &str) -> Option<&'static MediaType> {
        MEDIA_TYPES.iter().find(|t| t.mime == mime)
    }

    /// The known type of a file extension (exact, lower case).
    pub fn from_ext(ext: &str) -> Option<&'static MediaType> {
        MEDIA_TYPES.iter().find(|t| t.ext == ext)
    }

    /// The name of the one file of a chat media asset: `media.<ext>`.
    pub fn file_name(&self) -> String {
        format!("{MEDIA_FILE_STEM}.{}", self.ext)
    }

    /// The type of a published chat media file name (`media.<ext>`).
    pub fn of_file_name(name: &str) -> Option<&'static MediaType> {
        let ext = name.strip_prefix(MEDIA_FILE_STEM)?.strip_prefix('.')?;
        Self::from_ext(ext)
    }
}

/// The stem of a chat media asset's one file.
pub const MEDIA_FILE_STEM: &str = "media";

/// Every chat media asset id starts with this: the namespace raw-upload credentials are
/// confined to.
pub const CHAT_ASSET_PREFIX: &str = "chat-";

/// The longest a raw-upload credential may live, in seconds (relays mint them for minutes;
/// the origin refuses longer ones).
pub const RAW_UPLOAD_MAX_TTL: u64 = 24 * 3600;

/// The acl prefix of a raw-upload credential.
pub const RAW_UPLOAD_ACL_PREFIX: &str = "/uploads/raw/";

/// What a raw-upload credential allows: one upload of asset `asset` (in the chat namespace)
/// of exactly `size` bytes of type `media`, published as is, never packaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawUpload {
    pub asset: String,
    pub size: u64,
    pub media: &'static MediaType,
}

impl RawUpload {
    /// The acl that carries it: `/uploads/raw/<asset>/<size>/<type>/<subtype>`.
    pub fn acl(&self) -> String {
        format!(
            "{RAW_UPLOAD_ACL_PREFIX}{}/{}/{}",
            self.asset, self.size, self.media.mime
        )
    }

    /// Reads an acl written by [`RawUpload::acl`]; `None` for anything else (another form,
    /// an asset outside the chat namespace, a size of 0 or with leading zeros, an unknown
    /// type, several patterns, a wildcard).
    pub fn parse_acl(acl: &str) -> Option<Self> {
        let rest = acl.strip_prefix(RAW_UPLOAD_ACL_PREFIX)?;
        let mut parts = rest.split('/');
        let (Some(asset), Some(size), Some(kind), Some(subtype), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        if !chat_asset_id(asset)
            || size.is_empty()
            || size.len() > 15
            || size.starts_with('0')
            || !size.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let size = size.parse().ok()?;
        let media = MEDIA_TYPES
            .iter()
            .find(|t| t.mime.split_once('/') == Some((kind, subtype)))?;
        Some(Self {
            asset: asset.to_owned(),
            size,
            media,
        })
    }

    /// The path the published file has on origins and edges: `/v/<asset>/media.<ext>`.
    pub fn path(&self) -> String {
        format!("/v/{}/{}", self.asset, self.media.file_name())
    }
}

/// Whether `id` is a valid asset id in the chat media namespace.
pub fn chat_asset_id(id: &str) -> bool {
    crate::asset::valid_asset_id(id)
        && id
            .strip_prefix(CHAT_ASSET_PREFIX)
            .is_some_and(|r| !r.is_empty())
}

/// Splits a chat media path `/v/<asset>/media.<ext>` into the asset id and the file's type;
/// `None` for any other path.
pub fn parse_media_path(path: &str) -> Option<(&str, &'static MediaType)> {
    let rest = path.strip_prefix("/v/")?;
    let (asset, file) = rest.split_once('/')?;
    if !chat_asset_id(asset) {
        return None;
    }
    Some((asset, MediaType::of_file_name(file)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_acl_round_trips_and_nothing_else_reads_as_one() {
        let jpeg = MediaType::from_mime("image/jpeg").expect("jpeg");
        let raw = RawUpload {
            asset: "chat-abc-123".into(),
            size: 2048,
            media: jpeg,
        };
        assert_eq!(raw.acl(), "/uploads/raw/chat-abc-123/2048/image/jpeg");
        assert_eq!(RawUpload::parse_acl(&raw.acl()), Some(raw.clone()));
        assert_eq!(raw.path(), "/v/chat-abc-123/media.jpg");
        for bad in [
            "/uploads/raw/chat-abc/0/image/jpeg",
            "/uploads/raw/chat-abc/012/image/jpeg",
            "/uploads/raw/chat-abc/12/image/jpeg/x",
            "/uploads/raw/chat-abc/12/image",
            "/uploads/raw/chat-abc/12/text/html",
            "/uploads/raw/movie/12/image/jpeg",
            "/uploads/raw/chat-/12/image/jpeg",
            "/uploads/raw/chat-a*/12/image/jpeg",
            "/uploads/raw/chat-a/12/image/jpeg!/v/*",
            "/uploads/raw/chat-a/-1/image/jpeg",
            "/uploads/raw/chat-a/99999999999999999/image/jpeg",
            "/uploads/raw/../12/image/jpeg",
            "/v/chat-a/12/image/jpeg",
            "/uploads/raw/chat-a/12/IMAGE/JPEG",
        ] {
            assert_eq!(RawUpload::parse_acl(bad), None, "{bad}");
        }
    }

    #[test]
    fn media_paths() {
        let (asset, t) = parse_media_path("/v/chat-x1/media.png").expect("path");
        assert_eq!((asset, t.mime), ("chat-x1", "image/png"));
        for bad in [
            "/v/chat-x1/media.exe",
            "/v/chat-x1/other.png",
            "/v/premium/media.png",
            "/v/chat-x1/media.png/x",
            "/v/chat-x1/../media.png",
            "/x/chat-x1/media.png",
            "/v/chat-x1/media.PNG",
        ] {
            assert_eq!(parse_media_path(bad), None, "{bad}");
        }
        for t in MEDIA_TYPES {
            assert_eq!(MediaType::of_file_name(&t.file_name()), Some(&t));
            assert_eq!(MediaType::from_mime(t.mime), Some(&t));
        }
    }

    proptest! {
        #[test]
        fn acl_parsing_never_panics_and_round_trips(s in "\\PC{0,80}") {
            if let Some(raw) = RawUpload::parse_acl(&s) {
                prop_assert_eq!(raw.acl(), s.clone());
            }
            let _ = parse_media_path(&s);
        }
    }
}
