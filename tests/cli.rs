//! The command line: --help, --version, check-config naming the bad key, token sign.

mod common;

use std::process::Command;

use common::*;

fn estuary(args: &[&str]) -> (bool, String, String) {
    let out = run(Command::new(env!("CARGO_BIN_EXE_estuary")).args(args));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version() {
    let (ok, out, _) = estuary(&["--help"]);
    assert!(ok);
    for sub in ["edge", "check-config", "token", "package", "steering"] {
        assert!(out.contains(sub), "{out}");
    }
    let (ok, out, _) = estuary(&["steering", "--help"]);
    assert!(ok);
    assert!(
        out.contains("--config") && out.contains("/v1/playback/") && out.contains("SIGTERM"),
        "{out}"
    );
    let (ok, out, _) = estuary(&["edge", "--help"]);
    assert!(ok);
    assert!(out.contains("SIGHUP") && out.contains("--config"), "{out}");
    let (ok, out, _) = estuary(&["--version"]);
    assert!(ok);
    assert!(out.starts_with("estuary 0."), "{out}");
}

#[test]
fn check_config_names_the_bad_key() {
    let site = Site::new("check-config");
    let good = site.write_config();
    let (ok, out, err) = estuary(&["check-config", &good.to_string_lossy()]);
    assert!(ok, "{err}");
    assert!(out.contains("valid edge config"));

    let text = std::fs::read_to_string(&good).expect("read");
    let cases = [
        (
            text.replace("revalidate = \"1s\"", "revalidate = \"1s\"\nopen_filez = 3"),
            "store.open_filez",
            "unknown field",
        ),
        (
            text.replace("http = \"", "http = \"not-an-address")
                .replace("not-an-address127", "x127"),
            "listen.http",
            "invalid",
        ),
        (
            format!("{text}[limits]\nmax_connections = 0\n"),
            "limits.max_connections",
            "at least 1",
        ),
        (
            format!("{text}[limits]\nheader_read_timeout = \"forever\"\n"),
            "limits.header_read_timeout",
            "expected a duration",
        ),
        (text.replace(KEY2_HEX, "abcd"), "auth.keys.k2", "16 bytes"),
        (
            text.replace(KEY2_HEX, "not hex at all"),
            "auth.keys.k2",
            "hex",
        ),
        (
            text.replace(&site.cert.display().to_string(), "/no/such/cert.pem"),
            "tls.cert",
            "/no/such/cert.pem",
        ),
        (
            text.replace(&site.content.display().to_string(), "/no/such/root"),
            "store.root",
            "/no/such/root",
        ),
        (
            text.replace("protected = [\"/v/\"]", "protected = [\"v/\"]"),
            "auth.protected[0]",
            "start with '/'",
        ),
        (
            format!("{text}[cors]\nallow_origins = [\"https://x.example/path/\"]\n"),
            "cors.allow_origins[0]",
            "origin",
        ),
        (text.replace("[node]", "[nodes]"), "nodes", "unknown field"),
        (
            format!(
                "{text}[cache]\ndisk_dir = \"{}\"\ndisk = \"1EiB\"\n",
                site.dir.path().join("cache").display()
            ),
            "cache.disk",
            "1.0 EiB does not fit in",
        ),
    ];
    for (i, (bad, key, why)) in cases.iter().enumerate() {
        // An empty reason would match any message.
        assert!(!why.is_empty(), "case {i} ({key}) checks no reason");
        let path = site.dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, bad).expect("write");
        let (ok, _, err) = estuary(&["check-config", &path.to_string_lossy()]);
        assert!(!ok, "case {i} ({key}) passed");
        assert!(err.contains(key), "case {i}: expected key {key} in: {err}");
        assert!(err.contains(why), "case {i}: expected '{why}' in: {err}");
        // The edge itself refuses to start on the same file, with the same message.
        let (ok, _, err2) = estuary(&["edge", "--config", &path.to_string_lossy()]);
        assert!(!ok);
        assert!(err2.contains(key), "edge start, case {i}: {err2}");
    }
    let path = site.dir.path().join("not-toml.toml");
    std::fs::write(&path, "this is = = not toml").expect("write");
    let (ok, _, err) = estuary(&["check-config", &path.to_string_lossy()]);
    assert!(!ok && err.contains("not valid TOML"), "{err}");
    let (ok, _, err) = estuary(&["check-config", "/no/such/file.toml"]);
    assert!(!ok && err.contains("cannot read"), "{err}");
}

#[test]
fn a_token_listed_twice_in_the_control_planes_auth_is_refused_naming_both_keys() {
    let dir = TempDir::new("dup-token");
    let example = include_str!("../docs/control-plane.example.toml");
    let node = "change-me-to-a-random-secret-of-32-or-more-characters";
    let good = dir.path().join("good.toml");
    std::fs::write(&good, example).expect("write");
    let (ok, _, err) = estuary(&["check-config", &good.to_string_lossy()]);
    assert!(ok, "{err}");
    let shared = "a-shared-site-token-0123456789";
    let cases = [
        // Two sites with one site token: the second site's nodes were silently refused.
        (
            example.replace(
                "# [auth.node_tokens]",
                &format!("[auth.node_tokens]\nlab-west = \"{shared}\"\nlab-east = \"{shared}\""),
            ),
            ["auth.node_tokens.lab-west", "auth.node_tokens.lab-east"],
        ),
        // A site token that is also a node's own credential.
        (
            example.replace(
                "# [auth.node_tokens]",
                &format!("[auth.node_tokens]\nlab = \"{node}\""),
            ),
            ["auth.node_tokens.lab", "auth.nodes.edge-lab-1.token"],
        ),
        // An operator token that is also a node's credential.
        (
            example.replace(
                "[auth.operator_tokens]",
                &format!("[auth.operator_tokens]\nrobot = \"{node}\""),
            ),
            ["auth.operator_tokens.robot", "auth.nodes.edge-lab-1.token"],
        ),
    ];
    for (i, (bad, keys)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("dup-{i}.toml"));
        std::fs::write(&path, bad).expect("write");
        for args in [
            vec!["check-config", path.to_str().expect("utf-8")],
            vec!["control-plane", "--config", path.to_str().expect("utf-8")],
        ] {
            let (ok, _, err) = estuary(&args);
            assert!(!ok, "case {i}: {args:?} accepted a token listed twice");
            for key in keys {
                assert!(
                    err.contains(key),
                    "case {i}: {args:?}: expected {key} in: {err}"
                );
            }
            assert!(err.contains("the same token"), "case {i}: {err}");
        }
    }
}

#[test]
fn the_documented_example_is_valid_once_its_files_exist() {
    let dir = TempDir::new("example");
    let (cert, key) = make_cert(dir.path(), "cert");
    std::fs::create_dir_all(dir.path().join("content")).expect("mkdir");
    let text = include_str!("../docs/edge.example.toml")
        .replace(
            "/srv/estuary/content",
            &dir.path().join("content").to_string_lossy(),
        )
        .replace("\"cert.pem\"", &format!("\"{}\"", cert.display()))
        .replace("\"key.pem\"", &format!("\"{}\"", key.display()))
        // The disk tier must fit its filesystem's free space (this machine may not have the
        // example's 200 GiB free).
        .replace(
            "/var/cache/estuary",
            &dir.path().join("cache").to_string_lossy(),
        )
        .replace("disk = \"200GiB\"", "disk = \"1GiB\"");
    let path = dir.path().join("edge.toml");
    std::fs::write(&path, text).expect("write");
    let (ok, _, err) = estuary(&["check-config", &path.to_string_lossy()]);
    assert!(ok, "{err}");
}

#[test]
fn token_sign_refuses_bad_input() {
    for args in [
        vec!["--key-id", "k1", "--key", "zz", "--acl", "/v/*"],
        vec!["--key-id", "k1", "--key", KEY_HEX, "--acl", "v/*"],
        vec!["--key-id", "k~1", "--key", KEY_HEX, "--acl", "/v/*"],
        vec![
            "--key-id",
            "k1",
            "--key",
            KEY_HEX,
            "--acl",
            "/v/*",
            "--ip",
            "999.1.1.1",
        ],
        vec![
            "--key-id", "k1", "--key", KEY_HEX, "--acl", "/v/*", "--path", "no-slash",
        ],
    ] {
        let (ok, _, err) = estuary(&[&["token", "sign"], &args[..]].concat());
        assert!(!ok, "{args:?}");
        assert!(err.starts_with("estuary: --"), "{args:?}: {err}");
    }
}

#[test]
fn manifest_keygen_and_sign_make_a_signature_the_printed_public_key_verifies() {
    let (ok, out, err) = estuary(&["manifest", "keygen", "--key-id", "o7"]);
    assert!(ok, "{err}");
    let value = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("no {prefix} in {out}"))
    };
    let (secret, public) = (value("key = "), value("o7 = "));
    let dir = common::TempDir::new("manifest-sign");
    let manifest = br#"{"asset":"movie"}"#;
    std::fs::write(dir.path().join("asset.json"), manifest).expect("write");
    let folder = dir.path().to_str().expect("utf-8");
    let (ok, _, err) = estuary(&[
        "manifest", "sign", folder, "--key-id", "o7", "--key", &secret,
    ]);
    assert!(ok, "{err}");
    let sig = std::fs::read(dir.path().join("asset.json.sig")).expect("signature");
    let keys = estuary_common::signing::ManifestKeys::from_hex(&[("o7".into(), public)].into())
        .expect("keys");
    assert_eq!(keys.verify(manifest, &sig), Ok(()));
    assert!(keys.verify(br#"{"asset":"other"}"#, &sig).is_err());
    // A bad secret is named, and nothing is written.
    let (ok, _, err) = estuary(&["manifest", "sign", folder, "--key-id", "o7", "--key", "zz"]);
    assert!(!ok && err.contains("--key"), "{err}");
}
