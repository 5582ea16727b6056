//! `asset.json` and `asset.json.sig` as a node receives them from another: arbitrary bytes
//! never panic the manifest's parser, its Merkle root, file lookups or the signature check,
//! and no signature verifies under a key that did not make it.
#![no_main]

use std::collections::BTreeMap;

use estuary_common::asset::{AssetManifest, valid_file_path};
use estuary_common::signing::{ManifestKeys, ManifestSigner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The manifest, then (after the first NUL) the signature file.
    let cut = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (manifest, signature) = (&data[..cut], data.get(cut + 1..).unwrap_or_default());
    if let Ok(m) = serde_json::from_slice::<AssetManifest>(manifest) {
        let _ = m.computed_merkle_root();
        for f in &m.files {
            let _ = valid_file_path(&f.path);
            let _ = m.file(&f.path);
        }
    }
    let Ok(signer) = ManifestSigner::from_hex(
        "fuzz",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    ) else {
        return;
    };
    let table = BTreeMap::from([("fuzz".to_owned(), signer.public_hex())]);
    let Ok(keys) = ManifestKeys::from_hex(&table) else {
        return;
    };
    let _ = keys.verify(manifest, signature);
    // A true signature verifies; the same over other bytes does not.
    let good = signer.sign(manifest);
    assert!(keys.verify(manifest, &good).is_ok());
    let mut other = manifest.to_vec();
    other.push(b' ');
    assert!(keys.verify(&other, &good).is_err());
});
