//! Client address to coverage zone: a longest-prefix match over CIDRs from a coverage zone file
//! shaped like Apache Traffic Control's, plus the `coverage` CIDRs sites carry in the control
//! plane's snapshot. Pure: parsing and lookups, no IO.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use serde::Deserialize;

/// A coverage zone: clients whose address falls in one of its networks.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// The zone's name; when it names a site, its clients go to that site first.
    pub name: String,
    /// Where its clients are (latitude, longitude), for the nearest-site choice.
    pub location: Option<[f64; 2]>,
}

/// A problem in a coverage zone file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeoError {
    #[error("not a coverage zone file: {0}")]
    Json(#[from] serde_json::Error),
    #[error("zone {zone}: {network:?} is not a CIDR")]
    BadNetwork { zone: String, network: String },
    #[error("zone {zone}: coordinates out of range")]
    BadCoordinates { zone: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    coverage_zones: BTreeMap<String, FileZone>,
    // Traffic Control files carry more (revision, customerName); they are not needed here.
    #[serde(flatten)]
    _rest: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct FileZone {
    #[serde(default)]
    network: Vec<String>,
    #[serde(default)]
    network6: Vec<String>,
    #[serde(default)]
    coordinates: Option<Coordinates>,
}

#[derive(Deserialize)]
struct Coordinates {
    latitude: f64,
    longitude: f64,
}

/// Zones and their networks, ready for longest-prefix lookups.
#[derive(Clone, Default)]
pub struct CoverageZones {
    zones: Vec<Zone>,
    v4: PrefixMap<Ipv4Net, usize>,
    v6: PrefixMap<Ipv6Net, usize>,
    /// The longest prefix of any network, per family: no network lies strictly inside one
    /// as long (the geo-DNS asks that of every query's client network, and maps rarely go
    /// narrower than the /24 resolvers send).
    longest_v4: u8,
    longest_v6: u8,
}

impl std::fmt::Debug for CoverageZones {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoverageZones")
            .field("zones", &self.zones.len())
            .field("v4", &self.v4.len())
            .field("v6", &self.v6.len())
            .finish()
    }
}

/// Whether a latitude/longitude pair is on Earth.
pub fn location_ok(l: [f64; 2]) -> bool {
    (-90.0..=90.0).contains(&l[0]) && (-180.0..=180.0).contains(&l[1])
}

impl CoverageZones {
    /// Parses a coverage zone file (JSON).
    pub fn parse(json: &str) -> Result<Self, GeoError> {
        let file: File = serde_json::from_str(json)?;
        let mut zones = CoverageZones::default();
        for (name, z) in file.coverage_zones {
            let location = z.coordinates.map(|c| [c.latitude, c.longitude]);
            if location.is_some_and(|l| !location_ok(l)) {
                return Err(GeoError::BadCoordinates { zone: name });
            }
            let mut nets = Vec::new();
            for n in z.network.iter().chain(z.network6.iter()) {
                let net = parse_net(n).ok_or_else(|| GeoError::BadNetwork {
                    zone: name.clone(),
                    network: n.clone(),
                })?;
                nets.push(net);
            }
            zones.add(Zone { name, location }, &nets);
        }
        Ok(zones)
    }

    /// Adds a zone with its networks. A network already present keeps its first zone.
    pub fn add(&mut self, zone: Zone, networks: &[IpNet]) {
        let idx = self.zones.len();
        self.zones.push(zone);
        for net in networks {
            match net.trunc() {
                IpNet::V4(n) => {
                    if self.v4.get(&n).is_none() {
                        self.v4.insert(n, idx);
                        self.longest_v4 = self.longest_v4.max(n.prefix_len());
                    }
                }
                IpNet::V6(n) => {
                    if self.v6.get(&n).is_none() {
                        self.v6.insert(n, idx);
                        self.longest_v6 = self.longest_v6.max(n.prefix_len());
                    }
                }
            }
        }
    }

    /// The zone of the most specific network holding `ip` (IPv4-mapped IPv6 addresses are
    /// looked up as IPv4).
    pub fn lookup(&self, ip: IpAddr) -> Option<&Zone> {
        let idx = match canonical_ip(ip) {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, i)| *i),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, i)| *i),
        }?;
        self.zones.get(idx)
    }

    /// The zone of the most specific network holding `ip`, with that network's prefix length
    /// (the geo-DNS answers with it as the EDNS Client Subnet scope).
    pub fn lookup_prefix(&self, ip: IpAddr) -> Option<(&Zone, u8)> {
        let (idx, len) = match canonical_ip(ip) {
            IpAddr::V4(a) => self
                .v4
                .get_lpm(&Ipv4Net::from(a))
                .map(|(net, i)| (*i, net.prefix_len()))?,
            IpAddr::V6(a) => self
                .v6
                .get_lpm(&Ipv6Net::from(a))
                .map(|(net, i)| (*i, net.prefix_len()))?,
        };
        self.zones.get(idx).map(|z| (z, len))
    }

    /// The longest prefix among the networks strictly inside `net` (more specific than it),
    /// if any: an answer for `net` as a whole is only as wide as that.
    pub fn deepest_within(&self, net: IpNet) -> Option<u8> {
        let len = net.prefix_len();
        match net.trunc() {
            IpNet::V4(_) if len >= self.longest_v4 => None,
            IpNet::V6(_) if len >= self.longest_v6 => None,
            IpNet::V4(n) => self
                .v4
                .children(&n)
                .map(|(p, _)| p.prefix_len())
                .filter(|l| *l > len)
                .max(),
            IpNet::V6(n) => self
                .v6
                .children(&n)
                .map(|(p, _)| p.prefix_len())
                .filter(|l| *l > len)
                .max(),
        }
    }

    /// The number of zones.
    pub fn len(&self) -> usize {
        self.zones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }
}

/// A CIDR or a bare address (as a host network).
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

pub use estuary_common::token::canonical_ip;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FILE: &str = r#"{
      "revision": "1", "customerName": "lab",
      "coverageZones": {
        "paris": {"network": ["10.1.0.0/16", "192.0.2.0/24"], "network6": ["2001:db8:1::/48"],
                  "coordinates": {"latitude": 48.85, "longitude": 2.35}},
        "paris-office": {"network": ["10.1.7.0/24"]},
        "berlin": {"network": ["10.2.0.0/16"]}
      }}"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_longest_prefix_wins_for_v4_v6_and_mapped_addresses() {
        let z = CoverageZones::parse(FILE).expect("parse");
        assert_eq!(z.len(), 3);
        assert_eq!(z.lookup(ip("10.1.2.3")).map(|z| &z.name[..]), Some("paris"));
        assert_eq!(
            z.lookup(ip("10.1.7.9")).map(|z| &z.name[..]),
            Some("paris-office")
        );
        assert_eq!(
            z.lookup(ip("10.2.0.1")).map(|z| &z.name[..]),
            Some("berlin")
        );
        assert_eq!(
            z.lookup(ip("::ffff:10.2.0.1")).map(|z| &z.name[..]),
            Some("berlin")
        );
        assert_eq!(
            z.lookup(ip("2001:db8:1:ff::1")).map(|z| &z.name[..]),
            Some("paris")
        );
        assert_eq!(z.lookup(ip("10.3.0.1")), None);
        assert_eq!(z.lookup(ip("2001:db8:2::1")), None);
        assert_eq!(
            z.lookup(ip("192.0.2.77")).and_then(|z| z.location),
            Some([48.85, 2.35])
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_zone_named() {
        let e = CoverageZones::parse(r#"{"coverageZones": {"x": {"network": ["10.0.0.0/33"]}}}"#)
            .expect_err("bad cidr");
        assert!(e.to_string().contains("zone x"), "{e}");
        assert!(CoverageZones::parse(r#"{"zones": {}}"#).is_err());
        assert!(
            CoverageZones::parse(
                r#"{"coverageZones": {"x": {"coordinates": {"latitude": 99, "longitude": 0}}}}"#
            )
            .is_err()
        );
    }

    proptest! {
        // The trie agrees with a brute-force scan for the most specific network.
        #[test]
        fn lookups_match_a_linear_scan(
            nets in proptest::collection::vec((any::<u32>(), 0u8..=32), 1..40),
            probes in proptest::collection::vec(any::<u32>(), 1..40),
        ) {
            let mut z = CoverageZones::default();
            let mut list: Vec<(Ipv4Net, usize)> = Vec::new();
            for (i, (addr, len)) in nets.iter().enumerate() {
                let net = Ipv4Net::new(std::net::Ipv4Addr::from(*addr), *len)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .trunc();
                z.add(Zone { name: format!("z{i}"), location: None }, &[IpNet::V4(net)]);
                if !list.iter().any(|(n, _)| *n == net) {
                    list.push((net, i));
                }
            }
            for p in probes {
                let a = std::net::Ipv4Addr::from(p);
                let want = list
                    .iter()
                    .filter(|(n, _)| n.contains(&a))
                    .max_by_key(|(n, _)| n.prefix_len())
                    .map(|(_, i)| format!("z{i}"));
                prop_assert_eq!(z.lookup(IpAddr::V4(a)).map(|z| z.name.clone()), want);
                // And for the deepest network strictly inside each client network of it.
                for len in [8u8, 16, 20, 24, 28, 32] {
                    let net = Ipv4Net::new(a, len)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?
                        .trunc();
                    let deepest = list
                        .iter()
                        .filter(|(n, _)| n.prefix_len() > len && net.contains(n))
                        .map(|(n, _)| n.prefix_len())
                        .max();
                    prop_assert_eq!(z.deepest_within(IpNet::V4(net)), deepest);
                }
            }
        }
    }
}
