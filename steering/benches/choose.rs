//! How long one steering choice takes on a large topology (20 sites of 25 edges, a coverage
//! zone table of 5000 networks): `cargo bench -p estuary-steering --bench choose`. A plain
//! timing loop (no criterion): it prints the mean over many choices and asserts nothing.

use std::collections::HashSet;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use estuary_steering::choose::{ClientPlace, EdgeInfo, Policy, Topology, choose};
use estuary_steering::geo::{CoverageZones, Zone};

fn main() {
    let mut topo = Topology::default();
    let mut zones = CoverageZones::default();
    for s in 0..20u8 {
        let site = topo.add_site(
            &format!("site{s}"),
            Some([f64::from(s) * 4.0 - 40.0, f64::from(s) * 9.0 - 90.0]),
        );
        for e in 0..25u32 {
            topo.add_edge(EdgeInfo {
                id: format!("s{s}-e{e}"),
                site,
                base_url: format!("https://s{s}-e{e}.cdn.example"),
                fetch_url: format!("http://s{s}-e{e}.cdn.example"),
                weight: f64::from(10 + e % 3 * 15),
                load: f64::from(e % 10) / 10.0,
                up: e % 7 != 0,
                assets: (0..50)
                    .map(|a| format!("asset{}", a * 25 + e))
                    .collect::<HashSet<_>>(),
            });
        }
        for n in 0..250u32 {
            // Cannot fail: both octets are below 256 and the prefix is /24.
            let net = format!("10.{s}.{}.0/24", n % 250).parse().expect("net");
            zones.add(
                Zone {
                    name: format!("site{s}"),
                    location: None,
                },
                &[net],
            );
        }
    }
    topo.zones = zones.into();
    let policy = Policy {
        load_threshold: 0.9,
        max_results: 3,
        hash_seed: 1,
    };
    let assets: Vec<String> = (0..1000).map(|i| format!("asset{i}")).collect();
    let n = 20_000;
    let started = Instant::now();
    for i in 0..n {
        let ip = IpAddr::V4(Ipv4Addr::new(10, (i % 23) as u8, (i % 250) as u8, 7));
        let place: ClientPlace = topo.locate(ip);
        let got = choose(&topo, place, &assets[i % assets.len()], &policy);
        black_box(got);
    }
    let per = started.elapsed().as_secs_f64() / n as f64;
    println!(
        "choose (locate + rank, 500 edges in 20 sites, 5000 networks): {:.1} µs per request over {n} requests",
        per * 1e6
    );
}
