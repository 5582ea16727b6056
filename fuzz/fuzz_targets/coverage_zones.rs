//! Steering's coverage-zone file (JSON: zones with networks and coordinates): arbitrary
//! bytes never panic the parser, and a file it accepts answers lookups of any address and
//! of the networks inside any client network.
#![no_main]

use estuary_steering::geo::CoverageZones;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(zones) = CoverageZones::parse(text) else {
        return;
    };
    for ip in ["10.1.2.3", "192.0.2.1", "::1", "2001:db8::7", "0.0.0.0", "255.255.255.255"] {
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        let _ = zones.lookup(ip);
        if let Some((_, prefix)) = zones.lookup_prefix(ip) {
            assert!(prefix <= 128);
        }
        // The networks strictly inside the client's network (the geo-DNS asks for each
        // query's ECS network), with the shortcut for networks as long as the longest.
        let max = if ip.is_ipv4() { 32 } else { 128 };
        for len in [0u8, 8, 16, 20, 24, 32, 48, 56, 64, 128].into_iter().filter(|l| *l <= max) {
            let Ok(net) = ipnet::IpNet::new(ip, len) else {
                continue;
            };
            if let Some(deeper) = zones.deepest_within(net) {
                assert!(deeper > len && deeper <= max, "{deeper} inside /{len}");
            }
        }
    }
});
