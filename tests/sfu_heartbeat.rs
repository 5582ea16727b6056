//! With `[control_plane]` the SFU registers as an `sfu` node with its own credential, is
//! polled up by the monitor, and reports its rooms and peers in its load.
mod common;

use std::time::{Duration, Instant};

use common::cp_site::{ControlPlane, cred};
use common::sfu::{Sfu, synthetic_offer};

#[test]
fn sfu_registers_with_the_control_plane_and_reports_rooms_and_peers() {
    let cp = ControlPlane::new("sfu-cp");
    let _cp_process = cp.start();
    let sfu = Sfu::start(
        "sfu-heartbeat",
        &format!(
            "[control_plane]\nurl = \"{}\"\ntoken = \"{}\"\ninterval = \"1s\"\n",
            cp.url(),
            cred("sfu-test")
        ),
    );
    let node = cp.wait_node("sfu-test", true, Duration::from_secs(20));
    assert_eq!(node["role"], "sfu", "{node}");
    assert_eq!(node["site"], "lab");
    assert_eq!(node["addresses"]["http"], format!("http://{}", sfu.http));
    // Two sessions in one room, one in another: the next beats say 2 rooms, 3 peers.
    for (kind, room, dir) in [
        ("whip", "r1", "sendonly"),
        ("whep", "r1", "recvonly"),
        ("whep", "r2", "recvonly"),
    ] {
        let (s, _, body) = sfu.offer(kind, room, &synthetic_offer(dir));
        assert_eq!(s, 201, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        last = cp
            .nodes()
            .into_iter()
            .find(|n| n["id"] == "sfu-test" || n["node"] == "sfu-test")
            .unwrap_or_default();
        if last["load"]["rooms"] == 2 && last["load"]["peers"] == 3 {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the control plane never saw 2 rooms and 3 peers: {last}");
}
