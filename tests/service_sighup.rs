//! SIGHUP never ends a service: not an edge that receives it while it is still starting (its
//! default action would end the process, and systemd counts that as a clean exit, so
//! `Restart=on-failure` would leave the node dead), and not a service with nothing to reload.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::origin_site::*;
use common::*;

/// Sends SIGHUP to `pid` every few milliseconds for `how_long`, from the moment it starts.
fn hangups(pid: u32, how_long: Duration) -> usize {
    let deadline = Instant::now() + how_long;
    let mut sent = 0;
    while Instant::now() < deadline {
        let ok = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    sent
}

#[test]
fn an_edge_hung_up_on_while_it_starts_keeps_starting() {
    let site = Site::new("hup-starting");
    let config = site.write_config();
    let mut edge = spawn_service("edge", &config, site.admin, site.dir.path());
    // From its first log line (the runtime is up) until it serves, as a deployment tool that
    // reloads right after a start does.
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge.log().is_empty() {
        assert!(Instant::now() < deadline, "the edge logged nothing");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SIGHUP is caught (bit 1 of the caught-signals mask) from before the first log line.
    let status = std::fs::read_to_string(format!("/proc/{}/status", edge.pid())).expect("status");
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .expect("SigCgt");
    assert!(
        caught & (1 << 0) != 0,
        "SIGHUP not caught yet: SigCgt {caught:x}"
    );
    let sent = hangups(edge.pid() as u32, Duration::from_millis(400));
    assert!(sent > 10, "only {sent} SIGHUPs were sent");
    edge.wait_until(|| matches!(http_get_raw(site.admin, "/readyz"), Ok((200, _))));
    assert_eq!(
        http_get_raw(site.http, "/pub/hello.txt").expect("get").0,
        200
    );
}

#[test]
fn a_service_with_nothing_to_reload_logs_a_sighup_and_goes_on() {
    let origin_site = OriginSite::new("hup-origin");
    let origin = origin_site.start();
    origin.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !origin.log().contains("nothing to reload") {
        assert!(Instant::now() < deadline, "no log line: {}", origin.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        matches!(http_get_raw(origin_site.admin, "/readyz"), Ok((200, _))),
        "the origin stopped serving after SIGHUP: {}",
        origin.log()
    );
}
