//! The systemd units the Debian package installs (scripts/deb/) are valid units
//! (systemd-analyze verify) that run the real binary, their hardening stays at a low exposure
//! level, and only the edge, the one service that reloads on SIGHUP, has an ExecReload.
//! The Ansible roles add drop-ins to them; those are checked on a real target by
//! scripts/test-ansible.sh.

mod common;

use std::process::Command;

use common::*;

/// Verifies a unit (with the binary path pointed at the test build) and returns its text.
fn verify(name: &str, unit: &str) -> String {
    let dir = TempDir::new("units");
    let unit = unit.replace("/usr/bin/estuary", env!("CARGO_BIN_EXE_estuary"));
    let path = dir.path().join(name);
    std::fs::write(&path, &unit).expect("write");
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains(name), "{stderr}");
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&path));
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split(&format!("Overall exposure level for {name}: "))
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    // README.md records 1.4 for every unit; a change that weakens one fails here.
    assert!(level <= 1.5, "{name}: exposure level {level}:\n{text}");
    // Every service stops with SIGTERM (drain), validates its config before it starts, runs
    // as the package's user and holds no capability unless a drop-in grants one.
    assert!(unit.contains("KillSignal=SIGTERM"));
    assert!(unit.contains("ExecStartPre=") && unit.contains(" check-config /etc/estuary/"));
    assert!(unit.contains("User=estuary"));
    assert!(unit.contains("\nCapabilityBoundingSet=\n"));
    assert!(unit.contains("Restart=on-failure") && unit.contains("LimitNOFILE="));
    unit
}

#[test]
fn edge_unit_verifies() {
    let unit = verify(
        "estuary-edge.service",
        include_str!("../scripts/deb/estuary-edge.service"),
    );
    // The edge reloads its certificate on SIGHUP.
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("CacheDirectory=estuary/edge"));
}

#[test]
fn origin_unit_verifies() {
    let unit = verify(
        "estuary-origin.service",
        include_str!("../scripts/deb/estuary-origin.service"),
    );
    // SIGHUP would stop the origin (it has no reload hook): no ExecReload.
    assert!(!unit.contains("ExecReload="));
    assert!(unit.contains("StateDirectory=estuary/origin"));
}

#[test]
fn control_plane_unit_verifies() {
    let unit = verify(
        "estuary-control-plane.service",
        include_str!("../scripts/deb/estuary-control-plane.service"),
    );
    assert!(!unit.contains("ExecReload="));
    assert!(unit.contains("StateDirectory=estuary/control-plane"));
}

#[test]
fn steering_unit_verifies() {
    let unit = verify(
        "estuary-steering.service",
        include_str!("../scripts/deb/estuary-steering.service"),
    );
    assert!(!unit.contains("ExecReload="));
    // Steering keeps no state: it writes nowhere.
    assert!(!unit.contains("ReadWritePaths=") && !unit.contains("StateDirectory="));
    assert!(unit.contains("ExecStart=") && unit.contains(" steering --config "));
}

#[test]
fn chat_relay_unit_verifies() {
    let unit = verify(
        "estuary-chat-relay.service",
        include_str!("../scripts/deb/estuary-chat-relay.service"),
    );
    assert!(!unit.contains("ExecReload="));
    // The store's folder, the one it writes.
    assert!(unit.contains("StateDirectory=estuary/chat-relay"));
    assert!(unit.contains("ExecStart=") && unit.contains(" chat-relay --config "));
}

#[test]
fn sfu_unit_verifies() {
    let unit = verify(
        "estuary-sfu.service",
        include_str!("../scripts/deb/estuary-sfu.service"),
    );
    assert!(!unit.contains("ExecReload="));
    // The SFU writes only its recordings, in its state folder.
    assert!(unit.contains("StateDirectory=estuary/sfu") && !unit.contains("ReadWritePaths="));
    assert!(unit.contains("ExecStart=") && unit.contains(" sfu --config /etc/estuary/sfu.toml"));
}
