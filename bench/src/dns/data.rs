//! The data every DNS server under test serves, generated deterministically from a seed: sites
//! with two edge addresses each, a coverage map of client networks to sites, the dnsperf query
//! file (wire format, one EDNS Client Subnet per query), and each server's rendering of the
//! same zone (gdnsd's geoip `nets` map, Knot's geoip subnet file, Estuary's state snapshot and
//! coverage zone file).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// The zone every server answers for.
pub const ZONE: &str = "cdn.example.";
/// The geo-answered name.
pub const GEO_NAME: &str = "edge.cdn.example.";
/// TTL of the geo answers, in seconds (the same everywhere).
pub const GEO_TTL: u32 = 30;
/// The name server's own address in the zone (answers are only data).
pub const NS_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
/// First octets never used for client networks (private, loopback, link-local, the
/// documentation ranges the answers use, multicast and above).
const RESERVED_FIRST_OCTETS: &[u8] = &[0, 10, 127, 169, 172, 192, 198, 203];

/// A site: a name, a place, and its two edges' addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// `site01`, `site02`, ...
    pub name: String,
    pub location: [f64; 2],
    pub addrs: [Ipv4Addr; 2],
}

/// A client network of the coverage map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: Ipv4Addr,
    pub len: u8,
    /// Index into [`Topology::sites`].
    pub site: usize,
}

impl Network {
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.addr, self.len)
    }
}

/// One dnsperf query: the ECS /24 it carries and the site whose addresses are the right answer
/// (`None`: no network of the map covers it, so each server gives its default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub subnet: Ipv4Addr,
    pub site: Option<usize>,
}

/// Sites, the coverage map and the queries.
#[derive(Debug, Clone)]
pub struct Topology {
    pub sites: Vec<Site>,
    pub networks: Vec<Network>,
    pub queries: Vec<Query>,
}

/// splitmix64: a small, seeded, reproducible generator (the data must be the same in every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The most sites the address plan has room for (two addresses each in 198.51.100.0/24).
pub const MAX_SITES: usize = 100;

impl Topology {
    /// `n_sites` sites, `n_networks` client networks (each in its own /16: 60% /24, 30% /20,
    /// 10% /16, so none overlaps another), and `n_queries` queries with distinct /24 subnets,
    /// nine in ten inside a network of the map and one in ten outside every network (in a /16
    /// of the map outside its network, or in a /16 the map does not touch).
    pub fn generate(n_sites: usize, n_networks: usize, n_queries: usize, seed: u64) -> Self {
        let n_sites = n_sites.clamp(1, MAX_SITES);
        let mut rng = Rng(seed);
        let sites: Vec<Site> = (0..n_sites)
            .map(|i| {
                let a = 10 + 2 * i as u8;
                Site {
                    name: format!("site{:02}", i + 1),
                    location: [
                        (rng.below(1200) as f64 / 10.0) - 60.0,
                        (rng.below(3600) as f64 / 10.0) - 180.0,
                    ],
                    addrs: [
                        Ipv4Addr::new(198, 51, 100, a),
                        Ipv4Addr::new(198, 51, 100, a + 1),
                    ],
                }
            })
            .collect();
        // At most the /16s there are room for.
        let usable_16s = (1..=223u32)
            .filter(|a| !RESERVED_FIRST_OCTETS.contains(&(*a as u8)))
            .count()
            * 256;
        let n_networks = n_networks.min(usable_16s / 2);
        let mut used_16s: HashSet<u16> = HashSet::new();
        let mut networks = Vec::with_capacity(n_networks);
        let random_16 = |rng: &mut Rng| -> (u8, u8) {
            loop {
                let a = 1 + rng.below(223) as u8;
                if !RESERVED_FIRST_OCTETS.contains(&a) {
                    return (a, rng.below(256) as u8);
                }
            }
        };
        while networks.len() < n_networks {
            let (a, b) = random_16(&mut rng);
            if !used_16s.insert(u16::from_be_bytes([a, b])) {
                continue;
            }
            let (len, c) = match rng.below(10) {
                0..=5 => (24, rng.below(256) as u8),
                6..=8 => (20, (rng.below(16) as u8) << 4),
                _ => (16, 0),
            };
            networks.push(Network {
                addr: Ipv4Addr::new(a, b, c, 0),
                len,
                site: (networks.len() * 7 + rng.below(3) as usize) % n_sites,
            });
        }
        let mut seen: HashSet<Ipv4Addr> = HashSet::new();
        let n_matched = if networks.is_empty() {
            0
        } else {
            n_queries - n_queries / 10
        };
        let mut queries = Vec::with_capacity(n_queries);
        // Bounded: the map may hold fewer distinct /24s than queries asked for.
        let mut attempts = 0usize;
        while queries.len() < n_matched && attempts < n_queries.saturating_mul(20) {
            attempts += 1;
            let n = networks[rng.below(networks.len() as u64) as usize];
            let [a, b, c, _] = n.addr.octets();
            let c = match n.len {
                24 => c,
                20 => c | rng.below(16) as u8,
                _ => rng.below(256) as u8,
            };
            let subnet = Ipv4Addr::new(a, b, c, 0);
            if seen.insert(subnet) {
                queries.push(Query {
                    subnet,
                    site: Some(n.site),
                });
            }
        }
        while queries.len() < n_queries && attempts < n_queries.saturating_mul(40) {
            attempts += 1;
            let subnet = if rng.below(2) == 0 && !networks.is_empty() {
                // Inside a /16 of the map but outside its network: longest-prefix matching
                // must not stretch a network to its /16.
                let n = networks[rng.below(networks.len() as u64) as usize];
                let [a, b, c, _] = n.addr.octets();
                let outside = match n.len {
                    24 => c.wrapping_add(1 + rng.below(255) as u8),
                    20 => {
                        (c & 0xf0).wrapping_add(16 * (1 + rng.below(15) as u8))
                            | rng.below(16) as u8
                    }
                    _ => continue,
                };
                Ipv4Addr::new(a, b, outside, 0)
            } else {
                let (a, b) = random_16(&mut rng);
                if used_16s.contains(&u16::from_be_bytes([a, b])) {
                    continue;
                }
                Ipv4Addr::new(a, b, rng.below(256) as u8, 0)
            };
            if seen.insert(subnet) {
                queries.push(Query { subnet, site: None });
            }
        }
        // Mix the two kinds (Fisher-Yates with the same generator).
        for i in (1..queries.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            queries.swap(i, j);
        }
        Topology {
            sites,
            networks,
            queries,
        }
    }

    /// Which site's addresses answer a client in `subnet` (the map's networks do not overlap).
    #[cfg(test)]
    pub fn site_of(&self, subnet: Ipv4Addr) -> Option<usize> {
        let ip = u32::from(subnet);
        self.networks
            .iter()
            .find(|n| {
                let mask = u32::MAX.checked_shl(32 - u32::from(n.len)).unwrap_or(0);
                ip & mask == u32::from(n.addr) & mask
            })
            .map(|n| n.site)
    }

    /// The answer for clients no network covers, for the peers (gdnsd's first datacenter,
    /// Knot's zone record): the first site's.
    pub fn default_site(&self) -> usize {
        0
    }

    /// The dnsperf `-B` input: every query as in a TCP stream (RFC 1035 4.2.2), a two-byte
    /// length then the message.
    pub fn dnsperf_input(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.queries.len() * 64);
        for (i, q) in self.queries.iter().enumerate() {
            let msg = query_message(i as u16, GEO_NAME, Some((q.subnet, 24)));
            out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            out.extend_from_slice(&msg);
        }
        out
    }

    /// gdnsd's `config` (in its config folder), with the geoip plugin reading `nets_file`.
    pub fn gdnsd_config(
        &self,
        port: u16,
        run_dir: &str,
        state_dir: &str,
        nets_file: &str,
    ) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Written by estuary-bench dns-vs-peers.");
        let _ = writeln!(s, "options => {{");
        let _ = writeln!(
            s,
            "  listen => {{ 127.0.0.1:{port} => {{ udp_threads => 1, tcp_threads => 1 }} }}"
        );
        let _ = writeln!(s, "  run_dir => \"{run_dir}\"");
        let _ = writeln!(s, "  state_dir => \"{state_dir}\"");
        let _ = writeln!(s, "  edns_client_subnet => true");
        let _ = writeln!(s, "}}");
        let dcs: Vec<&str> = self.sites.iter().map(|s| s.name.as_str()).collect();
        let _ = writeln!(s, "plugins => {{ geoip => {{");
        let _ = writeln!(s, "  maps => {{ bench => {{");
        let _ = writeln!(s, "    datacenters => [ {} ]", dcs.join(", "));
        let _ = writeln!(s, "    nets => \"{nets_file}\"");
        let _ = writeln!(s, "  }} }}");
        let _ = writeln!(s, "  resources => {{ edge => {{");
        let _ = writeln!(s, "    map => bench");
        let _ = writeln!(s, "    dcmap => {{");
        for site in &self.sites {
            let _ = writeln!(
                s,
                "      {} => [ {}, {} ]",
                site.name, site.addrs[0], site.addrs[1]
            );
        }
        let _ = writeln!(s, "    }}");
        let _ = writeln!(s, "  }} }}");
        let _ = writeln!(s, "}} }}");
        s
    }

    /// gdnsd's `nets` file: `CIDR => datacenter`, one a line.
    pub fn gdnsd_nets(&self) -> String {
        let mut s = String::from("# Written by estuary-bench dns-vs-peers.\n");
        for n in &self.networks {
            let _ = writeln!(s, "{} => {}", n.cidr(), self.sites[n.site].name);
        }
        s
    }

    /// gdnsd's zone file (`zones/cdn.example`): SOA, NS, and `edge` as a geoip DYNA.
    pub fn gdnsd_zone(&self) -> String {
        format!(
            "; Written by estuary-bench dns-vs-peers.\n$TTL 86400\n\
             @ SOA ns1 hostmaster 1 7200 1800 259200 900\n\
             @ NS ns1\n\
             ns1 A {NS_ADDR}\n\
             edge {GEO_TTL} DYNA geoip!edge\n"
        )
    }

    /// Knot's zone file: SOA, NS, and `edge` with the default site's addresses (what the geoip
    /// module answers when no subnet matches, and all that the static run answers).
    pub fn knot_zone(&self) -> String {
        let d = &self.sites[self.default_site()];
        format!(
            "; Written by estuary-bench dns-vs-peers.\n$ORIGIN {ZONE}\n$TTL 86400\n\
             @ SOA ns1 hostmaster 1 7200 1800 259200 900\n\
             @ NS ns1\n\
             ns1 A {NS_ADDR}\n\
             edge {GEO_TTL} A {}\n\
             edge {GEO_TTL} A {}\n",
            d.addrs[0], d.addrs[1]
        )
    }

    /// Knot's geoip module file in subnet mode: every network with its site's addresses.
    pub fn knot_geo(&self) -> String {
        let mut s = String::from("# Written by estuary-bench dns-vs-peers.\n");
        let _ = writeln!(s, "{}:", GEO_NAME.trim_end_matches('.'));
        for n in &self.networks {
            let site = &self.sites[n.site];
            let _ = writeln!(s, "  - net: {}", n.cidr());
            let _ = writeln!(s, "    A: [ {}, {} ]", site.addrs[0], site.addrs[1]);
        }
        s
    }

    /// Knot's config: one UDP and one TCP worker, the zone, and the geoip module or none.
    /// `edns-client-subnet: on` is needed for the module to use the option at all: without it
    /// Knot 3.2 answers by the query's source address and leaves ECS out of the answer.
    pub fn knot_config(
        &self,
        port: u16,
        dir: &str,
        zone_file: &str,
        geo_file: Option<&str>,
    ) -> String {
        let mut s = format!(
            "# Written by estuary-bench dns-vs-peers.\n\
             server:\n    rundir: \"{dir}/run\"\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n    edns-client-subnet: on\n\
             database:\n    storage: \"{dir}/db\"\n\
             log:\n  - target: stderr\n    any: warning\n"
        );
        if let Some(geo) = geo_file {
            let _ = write!(
                s,
                "mod-geoip:\n  - id: bench\n    config-file: \"{geo}\"\n    ttl: {GEO_TTL}\n    mode: subnet\n"
            );
        }
        let _ = write!(
            s,
            "zone:\n  - domain: {ZONE}\n    file: \"{zone_file}\"\n    zonefile-sync: -1\n    journal-content: none\n"
        );
        if geo_file.is_some() {
            let _ = writeln!(s, "    module: mod-geoip/bench");
        }
        s
    }

    /// Estuary's state snapshot (the JSON of `common::cp::StateSnapshot`): every site, and two
    /// edges per site that are up, hold `asset` and advertise their address as the host of
    /// their URLs (the address a DNS answer gives).
    pub fn estuary_state(&self, asset: &str) -> serde_json::Value {
        let mut sites = serde_json::Map::new();
        let mut nodes = serde_json::Map::new();
        for site in &self.sites {
            sites.insert(
                site.name.clone(),
                serde_json::json!({
                    "name": site.name, "location": site.location, "coverage": []
                }),
            );
            for (i, addr) in site.addrs.iter().enumerate() {
                let id = format!("{}-edge{}", site.name, i + 1);
                nodes.insert(
                    id.clone(),
                    serde_json::json!({
                        "id": id, "site": site.name, "role": "edge",
                        "addresses": {
                            "http": format!("http://{addr}"),
                            "https": format!("https://{addr}"),
                        },
                        "capacity": {"gbps": 10.0},
                        "up": true, "last_heartbeat": 0,
                        "load": {}, "usage": {}, "version": "bench",
                        "assets": [asset],
                    }),
                );
            }
        }
        serde_json::json!({
            "version": 1, "generated_at": 0, "sites": sites, "nodes": nodes,
        })
    }

    /// Estuary's coverage zone file (Traffic Control's shape): one zone per site, named after
    /// it, with its networks.
    pub fn estuary_coverage(&self) -> serde_json::Value {
        let mut zones = serde_json::Map::new();
        for (i, site) in self.sites.iter().enumerate() {
            let networks: Vec<String> = self
                .networks
                .iter()
                .filter(|n| n.site == i)
                .map(Network::cidr)
                .collect();
            zones.insert(
                site.name.clone(),
                serde_json::json!({
                    "network": networks,
                    "coordinates": {"latitude": site.location[0], "longitude": site.location[1]},
                }),
            );
        }
        serde_json::json!({ "revision": "estuary-bench", "coverageZones": zones })
    }
}

/// A DNS query message for `name` type A, class IN, without recursion desired, with an OPT
/// record (UDP size 1232) that carries an EDNS Client Subnet option (RFC 7871) when `ecs` is
/// given: IPv4, the source prefix length, scope 0, and only the prefix's bytes of the address.
pub fn query_message(id: u16, name: &str, ecs: Option<(Ipv4Addr, u8)>) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes()); // QR=0, opcode QUERY, RD=0
    m.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    m.extend_from_slice(&0u16.to_be_bytes()); // ANCOUNT
    m.extend_from_slice(&0u16.to_be_bytes()); // NSCOUNT
    m.extend_from_slice(&1u16.to_be_bytes()); // ARCOUNT: the OPT record
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&1u16.to_be_bytes()); // QTYPE A
    m.extend_from_slice(&1u16.to_be_bytes()); // QCLASS IN
    // OPT: root name, type 41, class = UDP payload size, TTL = extended RCODE, version, flags.
    m.push(0);
    m.extend_from_slice(&41u16.to_be_bytes());
    m.extend_from_slice(&1232u16.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes());
    match ecs {
        Some((addr, prefix)) => {
            let prefix = prefix.min(32);
            let addr_bytes = usize::from(prefix).div_ceil(8);
            let option_len = 4 + addr_bytes;
            m.extend_from_slice(&((4 + option_len) as u16).to_be_bytes()); // RDLENGTH
            m.extend_from_slice(&8u16.to_be_bytes()); // OPTION-CODE: edns-client-subnet
            m.extend_from_slice(&(option_len as u16).to_be_bytes());
            m.extend_from_slice(&1u16.to_be_bytes()); // FAMILY: IPv4
            m.push(prefix); // SOURCE PREFIX-LENGTH
            m.push(0); // SCOPE PREFIX-LENGTH
            // Bits past the prefix must be zero.
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            let masked = (u32::from(addr) & mask).to_be_bytes();
            m.extend_from_slice(&masked[..addr_bytes]);
        }
        None => m.extend_from_slice(&0u16.to_be_bytes()),
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_is_deterministic_and_consistent() {
        let a = Topology::generate(20, 3000, 20_000, 7);
        let b = Topology::generate(20, 3000, 20_000, 7);
        assert_eq!(a.networks, b.networks);
        assert_eq!(a.queries, b.queries);
        assert_eq!(a.sites.len(), 20);
        assert_eq!(a.networks.len(), 3000);
        assert_eq!(a.queries.len(), 20_000);
        let distinct: HashSet<Ipv4Addr> = a.queries.iter().map(|q| q.subnet).collect();
        assert_eq!(distinct.len(), a.queries.len());
        for q in &a.queries {
            assert_eq!(a.site_of(q.subnet), q.site, "{}", q.subnet);
        }
        let unmatched = a.queries.iter().filter(|q| q.site.is_none()).count();
        assert_eq!(unmatched, 2000);
        // Every site serves some networks.
        for i in 0..a.sites.len() {
            assert!(a.networks.iter().any(|n| n.site == i));
        }
    }

    #[test]
    fn a_query_message_is_well_formed() {
        let m = query_message(
            0x1234,
            "edge.cdn.example.",
            Some((Ipv4Addr::new(1, 2, 3, 4), 24)),
        );
        assert_eq!(&m[..2], &[0x12, 0x34]);
        // Header 12 + name 18 + type/class 4 + OPT 11 + option 4 + ECS 4 + 3 address bytes.
        assert_eq!(m.len(), 12 + 18 + 4 + 11 + 4 + 4 + 3);
        assert_eq!(&m[m.len() - 3..], &[1, 2, 3]);
        assert_eq!(&m[12..17], b"\x04edge");
        let plain = query_message(1, "cdn.example.", None);
        assert_eq!(plain.len(), 12 + 13 + 4 + 11);
    }

    #[test]
    fn the_dnsperf_input_is_length_prefixed() {
        let t = Topology::generate(3, 50, 100, 1);
        let bytes = t.dnsperf_input();
        let mut at = 0;
        let mut count = 0;
        while at < bytes.len() {
            let len = usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
            at += 2 + len;
            count += 1;
        }
        assert_eq!(at, bytes.len());
        assert_eq!(count, t.queries.len());
    }

    #[test]
    fn the_peers_files_name_every_network() {
        let t = Topology::generate(4, 40, 10, 3);
        assert_eq!(t.gdnsd_nets().lines().count(), 41);
        assert_eq!(t.knot_geo().matches("- net:").count(), 40);
        let state = t.estuary_state("a");
        assert_eq!(state["nodes"].as_object().map(|o| o.len()), Some(8));
        let cov = t.estuary_coverage();
        let total: usize = cov["coverageZones"]
            .as_object()
            .map(|z| {
                z.values()
                    .map(|v| v["network"].as_array().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0);
        assert_eq!(total, 40);
    }
}
