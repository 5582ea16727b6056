//! Datagrams on the SFU's shared UDP port, as anyone on the network could send them: each
//! routed by `Routes::route` (STUN by its USERNAME's ufrag, the rest by source address) with
//! two peers known. The input is a list of datagrams, each prefixed by one byte that picks
//! its source port. Never a panic; the table never learns more than its bound.
#![no_main]

use std::net::SocketAddr;

use estuary_sfu::demux::{MAX_ADDRS_PER_PEER, Route, Routes, stun_local_ufrag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut routes = Routes::new();
    routes.add_peer("abcd".into(), Route { shard: 0, peer: 1 });
    routes.add_peer("efgh".into(), Route { shard: 0, peer: 2 });
    for chunk in data.split(|b| *b == 0xfe) {
        let Some((port, datagram)) = chunk.split_first() else {
            continue;
        };
        let src = SocketAddr::from(([127, 0, 0, 1], 5000 + u16::from(*port)));
        let _ = stun_local_ufrag(datagram);
        if let Ok(route) = routes.route(datagram, src) {
            assert!(route.peer == 1 || route.peer == 2);
        }
        assert!(routes.addresses() <= 2 * MAX_ADDRS_PER_PEER);
    }
    routes.remove_peer("abcd");
    routes.remove_peer("efgh");
    assert_eq!(routes.addresses(), 0);
});
