//! The systemd units in ansible/ are valid units (systemd-analyze verify) that run the real
//! binary, and their hardening stays at an acceptable exposure level.

mod common;

use std::process::Command;

use common::*;

fn render(template: &str) -> String {
    template
        .replace("{{ estuary_user }}", "estuary")
        .replace("{{ estuary_store_root }}", "/srv/estuary/content")
        .replace("{{ estuary_origin_state_dir }}", "/var/lib/estuary/origin")
        .replace("{{ estuary_origin_storage_root }}", "/srv/estuary/origin")
        .replace(
            "{{ estuary_cp_state_dir }}",
            "/var/lib/estuary/control-plane",
        )
        .replace("/usr/local/bin/estuary", env!("CARGO_BIN_EXE_estuary"))
}

/// Verifies a rendered unit and returns its text.
fn verify(name: &str, template: &str) -> String {
    let dir = TempDir::new("units");
    let unit = render(template);
    assert!(
        !unit.contains("{{"),
        "unrendered template variables:\n{unit}"
    );
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
    assert!(level <= 4.5, "{name}: exposure level {level}:\n{text}");
    // Every service stops with SIGTERM (drain) and validates its config before it starts.
    assert!(unit.contains("KillSignal=SIGTERM"));
    assert!(unit.contains("ExecStartPre=") && unit.contains(" check-config "));
    unit
}

#[test]
fn edge_unit_verifies() {
    let unit = verify(
        "estuary-edge.service",
        include_str!("../ansible/roles/edge/templates/estuary-edge.service.j2"),
    );
    // The edge reloads its certificate on SIGHUP.
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
}

#[test]
fn origin_unit_verifies() {
    verify(
        "estuary-origin.service",
        include_str!("../ansible/roles/origin/templates/estuary-origin.service.j2"),
    );
}

#[test]
fn control_plane_unit_verifies() {
    verify(
        "estuary-control-plane.service",
        include_str!("../ansible/roles/control-plane/templates/estuary-control-plane.service.j2"),
    );
}

#[test]
fn steering_unit_verifies() {
    let unit = verify(
        "estuary-steering.service",
        include_str!("../ansible/roles/steering/templates/estuary-steering.service.j2"),
    );
    // Steering keeps no state: it writes nowhere.
    assert!(!unit.contains("ReadWritePaths="));
    assert!(unit.contains("ExecStart=") && unit.contains(" steering --config "));
}
