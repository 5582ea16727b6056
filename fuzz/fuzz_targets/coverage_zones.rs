//! Steering's coverage-zone file (JSON: zones with networks and coordinates): arbitrary
//! bytes never panic the parser, and a file it accepts answers lookups of any address.
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
    }
});
