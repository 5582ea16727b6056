//! The systemd units in ansible/ are valid units (systemd-analyze verify) that run the real
//! binary, and their hardening stays at an acceptable exposure level.

mod common;

use std::process::Command;

use common::*;

fn render(template: &str) -> String {
    template
        .replace("{{ estuary_user }}", "estuary")
        .replace("{{ estuary_store_root }}", "/srv/estuary/content")
        .replace("/usr/local/bin/estuary", env!("CARGO_BIN_EXE_estuary"))
}

#[test]
fn edge_unit_verifies() {
    let dir = TempDir::new("units");
    let unit = render(include_str!(
        "../ansible/roles/edge/templates/estuary-edge.service.j2"
    ));
    assert!(
        !unit.contains("{{"),
        "unrendered template variables:\n{unit}"
    );
    let path = dir.path().join("estuary-edge.service");
    std::fs::write(&path, &unit).expect("write");
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("estuary-edge.service"),
        "{stderr}"
    );
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&path));
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for estuary-edge.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(level <= 4.5, "exposure level {level}:\n{text}");
    // The unit reloads with SIGHUP (certificate reload) and stops with SIGTERM (drain).
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("KillSignal=SIGTERM"));
}
