//! Signed asset manifests: the trust anchor of every fill between nodes.
//!
//! An origin signs each `asset.json` it publishes with its Ed25519 key and publishes the
//! signature beside it as `asset.json.sig`. Edges, peers and the control plane check that
//! signature against the public keys in their own config before they trust any hash inside
//! the manifest, so a node that serves a manifest can no longer vouch for it itself: a rogue
//! origin or a corrupt peer cannot get its files published, whatever it serves.
//!
//! The signature covers the exact bytes of `asset.json` (which name the asset), prefixed
//! with a domain label, so it cannot be replayed for another asset or another purpose.
//! `asset.json.sig` is a small JSON object: `{"alg":"ed25519","key":"<key id>","signature":
//! "<128 hex digits>"}`.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The file name of a manifest's signature inside an asset folder.
pub const SIGNATURE_FILE: &str = "asset.json.sig";

/// What the signature covers before the manifest's bytes.
const DOMAIN: &[u8] = b"estuary asset.json signature v1\n";

/// The largest `asset.json.sig` accepted.
pub const MAX_SIGNATURE_FILE: usize = 1024;

/// Why a manifest's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("no manifest keys are configured, so no manifest can be trusted")]
    NoKeys,
    #[error("asset.json.sig is not a signature file: {0}")]
    Malformed(String),
    #[error("asset.json is signed with key {0:?}, which is not a trusted manifest key")]
    UnknownKey(String),
    #[error("asset.json's signature does not verify with key {0:?}")]
    BadSignature(String),
}

/// The signature file, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    alg: String,
    key: String,
    signature: String,
}

/// An origin's signing key.
#[derive(Clone)]
pub struct ManifestSigner {
    key_id: String,
    key: SigningKey,
}

impl std::fmt::Debug for ManifestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn decode_32(hex_text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(hex_text.trim()).map_err(|_| "must be 64 hex digits".to_owned())?;
    bytes
        .try_into()
        .map_err(|_| "must be 64 hex digits (32 bytes)".to_owned())
}

impl ManifestSigner {
    /// A signer from a key id and the 32-byte secret key in hex.
    pub fn from_hex(key_id: &str, secret_hex: &str) -> Result<Self, String> {
        if !crate::key_id::valid(key_id) {
            return Err(crate::key_id::RULE.into());
        }
        Ok(Self {
            key_id: key_id.to_owned(),
            key: SigningKey::from_bytes(&decode_32(secret_hex)?),
        })
    }

    /// A new random key (from the operating system's generator, through `rand`).
    pub fn generate(key_id: &str) -> Result<Self, String> {
        let secret: [u8; 32] = rand::random();
        Self::from_hex(key_id, &hex::encode(secret))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The secret key in hex (for `estuary manifest keygen`).
    pub fn secret_hex(&self) -> String {
        hex::encode(self.key.to_bytes())
    }

    /// The public key in hex, for the verifiers' `[manifest_keys]`.
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// The `asset.json.sig` bytes for `manifest` (the exact bytes of `asset.json`).
    pub fn sign(&self, manifest: &[u8]) -> Vec<u8> {
        let signature = self.key.sign(&message(manifest));
        let file = SignatureFile {
            alg: "ed25519".into(),
            key: self.key_id.clone(),
            signature: hex::encode(signature.to_bytes()),
        };
        let mut out = serde_json::to_vec(&file).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Signs `dir/asset.json` into `dir/asset.json.sig` (written to a temporary file, then
/// renamed); the path written.
pub fn sign_folder(
    signer: &ManifestSigner,
    dir: &std::path::Path,
) -> std::io::Result<std::path::PathBuf> {
    let manifest = std::fs::read(dir.join(crate::asset::MANIFEST_FILE))?;
    let target = dir.join(SIGNATURE_FILE);
    let partial = dir.join(format!(".{SIGNATURE_FILE}.partial"));
    std::fs::write(&partial, signer.sign(&manifest))?;
    std::fs::rename(&partial, &target)?;
    Ok(target)
}

fn message(manifest: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + manifest.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(manifest);
    m
}

/// The public keys a verifier trusts, by key id (`[manifest_keys]` in its config).
#[derive(Debug, Clone, Default)]
pub struct ManifestKeys {
    keys: BTreeMap<String, VerifyingKey>,
}

impl ManifestKeys {
    /// Keys from a config table (key id -> 64 hex digits); `Err` names the bad key id.
    pub fn from_hex(table: &BTreeMap<String, String>) -> Result<Self, (String, String)> {
        let mut keys = BTreeMap::new();
        for (id, text) in table {
            if !crate::key_id::valid(id) {
                return Err((id.clone(), crate::key_id::RULE.into()));
            }
            let bytes = decode_32(text).map_err(|e| (id.clone(), e))?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| (id.clone(), "not an Ed25519 public key".to_owned()))?;
            keys.insert(id.clone(), key);
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `signature_file` (the bytes of `asset.json.sig`) over `manifest` (the bytes of
    /// `asset.json`). Only after `Ok` may any hash inside the manifest be trusted.
    pub fn verify(&self, manifest: &[u8], signature_file: &[u8]) -> Result<(), SignatureError> {
        if self.keys.is_empty() {
            return Err(SignatureError::NoKeys);
        }
        if signature_file.len() > MAX_SIGNATURE_FILE {
            return Err(SignatureError::Malformed("too large".into()));
        }
        let file: SignatureFile = serde_json::from_slice(signature_file)
            .map_err(|e| SignatureError::Malformed(e.to_string()))?;
        if file.alg != "ed25519" {
            return Err(SignatureError::Malformed(format!(
                "algorithm {:?} is not ed25519",
                file.alg.chars().take(32).collect::<String>()
            )));
        }
        let key_name: String = file.key.chars().take(32).collect();
        let Some(key) = self.keys.get(&file.key) else {
            return Err(SignatureError::UnknownKey(key_name));
        };
        let bytes: [u8; 64] = hex::decode(&file.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                SignatureError::Malformed("the signature is not 128 hex digits".into())
            })?;
        key.verify_strict(&message(manifest), &Signature::from_bytes(&bytes))
            .map_err(|_| SignatureError::BadSignature(key_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys_of(signer: &ManifestSigner) -> ManifestKeys {
        ManifestKeys::from_hex(&[(signer.key_id().to_owned(), signer.public_hex())].into())
            .expect("keys")
    }

    #[test]
    fn a_signed_manifest_verifies_and_nothing_else_does() {
        let origin = ManifestSigner::generate("o1").expect("key");
        let keys = keys_of(&origin);
        let manifest = br#"{"asset":"movie"}"#;
        let sig = origin.sign(manifest);
        assert_eq!(keys.verify(manifest, &sig), Ok(()));
        // Another manifest under the same signature.
        assert!(matches!(
            keys.verify(br#"{"asset":"movie2"}"#, &sig),
            Err(SignatureError::BadSignature(_))
        ));
        // A rogue signer using a trusted key id.
        let rogue = ManifestSigner::generate("o1").expect("key");
        assert!(matches!(
            keys.verify(manifest, &rogue.sign(manifest)),
            Err(SignatureError::BadSignature(_))
        ));
        // A rogue signer with its own key id.
        let other = ManifestSigner::generate("evil").expect("key");
        assert!(matches!(
            keys.verify(manifest, &other.sign(manifest)),
            Err(SignatureError::UnknownKey(_))
        ));
        assert_eq!(
            ManifestKeys::default().verify(manifest, &sig),
            Err(SignatureError::NoKeys)
        );
        for junk in [&b""[..], b"{}", b"not json", &[b'x'; 4096]] {
            assert!(matches!(
                keys.verify(manifest, junk),
                Err(SignatureError::Malformed(_))
            ));
        }
    }

    #[test]
    fn keys_round_trip_through_hex_and_bad_keys_are_named() {
        let s = ManifestSigner::generate("o1").expect("key");
        let again = ManifestSigner::from_hex("o1", &s.secret_hex()).expect("again");
        assert_eq!(again.public_hex(), s.public_hex());
        assert!(ManifestSigner::from_hex("bad id!", &s.secret_hex()).is_err());
        assert!(ManifestSigner::from_hex("o1", "abcd").is_err());
        let bad = ManifestKeys::from_hex(&[("o2".to_owned(), "zz".to_owned())].into());
        assert_eq!(bad.map(|_| ()).map_err(|e| e.0), Err("o2".to_owned()));
    }

    proptest! {
        #[test]
        fn arbitrary_signature_files_never_verify_or_panic(sig in proptest::collection::vec(any::<u8>(), 0..300)) {
            let s = ManifestSigner::from_hex("o1", &"11".repeat(32)).expect("key");
            let verdict = keys_of(&s).verify(br#"{"asset":"a"}"#, &sig);
            prop_assert!(verdict.is_err());
        }

        #[test]
        fn any_change_to_the_manifest_breaks_the_signature(
            manifest in proptest::collection::vec(any::<u8>(), 1..200),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let s = ManifestSigner::from_hex("o1", &"22".repeat(32)).expect("key");
            let keys = keys_of(&s);
            let sig = s.sign(&manifest);
            prop_assert!(keys.verify(&manifest, &sig).is_ok());
            let mut changed = manifest.clone();
            let i = at.index(changed.len());
            changed[i] ^= 1 << bit;
            prop_assert!(keys.verify(&changed, &sig).is_err());
        }
    }
}
