//! The control plane's wire types as a hostile node or replica could send them: heartbeats
//! (parsed, then range-checked), heartbeat replies and state snapshots never panic.
#![no_main]

use estuary_common::cp::{Heartbeat, HeartbeatReply, StateSnapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hb) = serde_json::from_slice::<Heartbeat>(data) {
        let _ = hb.check();
    }
    let _ = serde_json::from_slice::<HeartbeatReply>(data);
    let _ = serde_json::from_slice::<StateSnapshot>(data);
});
