//! Which edges serve a play request: a pure function of the topology (sites and edges with
//! their health, load and pre-positioned assets), where the client is, the asset and the
//! policy. No IO, no clock, no randomness: the hash seed is an input, so every steering
//! replica (and the geo-DNS front end to come) answers the same for the same state.
//!
//! A topology holds the nodes of one role ([`Members`]): edges for playback and the
//! geo-DNS, chat relays for `/v1/chat/relays` ([`choose_relays`], the same ranking with the
//! client's address as the key). "Edge" below means a member of either.
//!
//! The order of sites: the client's home site (its coverage zone names a site) first, then the
//! others nearest first (haversine from the client's location, or from the home site's); with
//! no location at all, sites ranked by weighted rendezvous hashing of the asset (weight: the
//! site's capacity), so unknown clients spread over sites but each asset stays put.
//!
//! Inside a site: edges that are up and below the load threshold, those holding the asset
//! pre-positioned first, each group ranked by weighted rendezvous hashing (HRW with
//! `score = -weight / ln(h)`, `h` the asset-and-node hash mapped into (0, 1), weight the
//! edge's capacity in Gb/s). A site whose edges are all down or loaded is passed over (the
//! request overflows to the next site). Only when no edge anywhere is below the threshold are
//! loaded edges offered, least loaded first.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use std::sync::Arc;

use estuary_common::cp::{Addresses, Role, StateSnapshot};

use crate::geo::{CoverageZones, Zone, location_ok, parse_net};

/// One edge (or chat relay, in a relay topology) as the choice sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeInfo {
    pub id: String,
    /// Index into [`Topology::sites`].
    pub site: usize,
    /// The base URL players are sent to (no trailing slash); a chat relay's WebSocket URL.
    pub base_url: String,
    /// The base URL steering itself fetches manifests from: the plain HTTP address when there
    /// is one (no trailing slash).
    pub fetch_url: String,
    /// Rendezvous weight: capacity in Gb/s (1 when unknown).
    pub weight: f64,
    /// 0..1 (and above when overloaded): the larger of bandwidth use over capacity and CPU.
    pub load: f64,
    /// The control plane's verdict.
    pub up: bool,
    /// Assets held pre-positioned and verified.
    pub assets: HashSet<String>,
}

/// One site as the choice sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteInfo {
    pub name: String,
    pub location: Option<[f64; 2]>,
    /// Indexes into [`Topology::edges`].
    pub edges: Vec<usize>,
}

/// Sites and edges, indexed for the choice; built once per state snapshot.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub sites: Vec<SiteInfo>,
    pub edges: Vec<EdgeInfo>,
    /// The configured coverage zones plus every site's own `coverage` CIDRs (one copy per
    /// snapshot, shared by the edge and relay topologies).
    pub zones: Arc<CoverageZones>,
    site_index: HashMap<String, usize>,
}

/// Which nodes of a snapshot a topology holds, and the address clients are sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Members {
    /// `Role::Edge` nodes with an address; `prefer_https` picks which one players get when
    /// both exist.
    Edges { prefer_https: bool },
    /// `Role::ChatRelay` nodes with an `http` address, which becomes their WebSocket URL
    /// ([`websocket_url`]); the others are left out.
    ChatRelays,
}

impl Members {
    fn role(self) -> Role {
        match self {
            Members::Edges { .. } => Role::Edge,
            Members::ChatRelays => Role::ChatRelay,
        }
    }

    /// The base URL clients are sent to, if the node has a usable one.
    fn base_url(self, addresses: &Addresses) -> Option<String> {
        match self {
            Members::Edges { prefer_https } => {
                let (first, second) = if prefer_https {
                    (&addresses.https, &addresses.http)
                } else {
                    (&addresses.http, &addresses.https)
                };
                first
                    .as_ref()
                    .or(second.as_ref())
                    .map(|b| b.trim_end_matches('/').to_owned())
            }
            Members::ChatRelays => addresses.http.as_deref().and_then(websocket_url),
        }
    }
}

/// A chat relay's WebSocket URL from its advertised `http` base URL: `http://host:port` gives
/// `ws://host:port/ws`, `https://` gives `wss://`; any other scheme, or no host, gives `None`.
pub fn websocket_url(http: &str) -> Option<String> {
    let (scheme, rest) = http.trim_end_matches('/').split_once("://")?;
    let ws = if scheme.eq_ignore_ascii_case("http") {
        "ws"
    } else if scheme.eq_ignore_ascii_case("https") {
        "wss"
    } else {
        return None;
    };
    if rest.is_empty() || rest.starts_with('/') {
        return None;
    }
    Some(format!("{ws}://{rest}/ws"))
}

/// The coverage zones of a snapshot: the configured `zones`, then every site's own coverage
/// CIDRs (so the file wins for an identical network).
pub fn snapshot_zones(snap: &StateSnapshot, zones: &CoverageZones) -> Arc<CoverageZones> {
    let mut all = zones.clone();
    for (name, site) in &snap.sites {
        let nets: Vec<_> = site.coverage.iter().filter_map(|c| parse_net(c)).collect();
        all.add(
            Zone {
                name: name.clone(),
                location: site.location.filter(|l| location_ok(*l)),
            },
            &nets,
        );
    }
    Arc::new(all)
}

/// Where a client is, as far as it is known.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ClientPlace {
    /// The site its coverage zone names.
    pub home: Option<usize>,
    /// Its location (from its zone's coordinates).
    pub location: Option<[f64; 2]>,
}

/// The knobs of the choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Edges at or above this load are passed over while others are below it.
    pub load_threshold: f64,
    /// The longest list returned.
    pub max_results: usize,
    /// Mixed into every hash.
    pub hash_seed: u64,
}

/// One ranked answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub site: String,
    pub node: String,
    pub base_url: String,
    /// The edge holds the asset pre-positioned.
    pub prepositioned: bool,
}

impl Topology {
    /// Builds the topology from a state snapshot: every edge that is a `Role::Edge` with an
    /// advertised address; `prefer_https` picks which address players get when both exist.
    /// `zones` are the configured coverage zones; sites' own coverage CIDRs are added after
    /// them (so the file wins for an identical network).
    pub fn from_snapshot(snap: &StateSnapshot, prefer_https: bool, zones: &CoverageZones) -> Self {
        Self::of_members(
            snap,
            Members::Edges { prefer_https },
            snapshot_zones(snap, zones),
        )
    }

    /// Builds the topology of `members` from a state snapshot, over `zones` as
    /// [`snapshot_zones`] made them for the same snapshot.
    pub fn of_members(snap: &StateSnapshot, members: Members, zones: Arc<CoverageZones>) -> Self {
        let mut topo = Topology {
            zones,
            ..Topology::default()
        };
        for (name, site) in &snap.sites {
            topo.add_site(name, site.location.filter(|l| location_ok(*l)));
        }
        for node in snap.nodes.values() {
            if node.role != members.role() {
                continue;
            }
            let Some(base_url) = members.base_url(&node.addresses) else {
                continue;
            };
            let gbps = node.capacity.gbps;
            let weight = if gbps.is_finite() && gbps > 0.0 {
                gbps
            } else {
                1.0
            };
            // The node's word and the control plane's own measurement: the larger counts.
            let served = node
                .polled_load
                .as_ref()
                .map_or(node.load.bytes_per_second, |p| {
                    p.bytes_per_second.max(node.load.bytes_per_second)
                });
            let bandwidth_use = if gbps.is_finite() && gbps > 0.0 {
                served * 8.0 / (gbps * 1e9)
            } else {
                0.0
            };
            let load = bandwidth_use.max(node.load.cpu);
            let site = topo.add_site(&node.site, None);
            topo.add_edge(EdgeInfo {
                id: node.id.clone(),
                site,
                fetch_url: node
                    .addresses
                    .http
                    .as_deref()
                    .map_or_else(|| base_url.clone(), |h| h.trim_end_matches('/').to_owned()),
                base_url,
                weight,
                load: if load.is_finite() { load } else { 0.0 },
                up: node.up,
                assets: node.assets.iter().cloned().collect(),
            });
        }
        topo
    }

    /// Adds a site (or returns the one of that name).
    pub fn add_site(&mut self, name: &str, location: Option<[f64; 2]>) -> usize {
        if let Some(i) = self.site_index.get(name) {
            return *i;
        }
        let i = self.sites.len();
        self.sites.push(SiteInfo {
            name: name.to_owned(),
            location,
            edges: Vec::new(),
        });
        self.site_index.insert(name.to_owned(), i);
        i
    }

    /// Adds an edge to its site.
    pub fn add_edge(&mut self, edge: EdgeInfo) {
        let i = self.edges.len();
        if let Some(site) = self.sites.get_mut(edge.site) {
            site.edges.push(i);
            self.edges.push(edge);
        }
    }

    pub fn site_named(&self, name: &str) -> Option<usize> {
        self.site_index.get(name).copied()
    }

    /// Where a client address is: its coverage zone's site and location.
    pub fn locate(&self, ip: IpAddr) -> ClientPlace {
        self.place_in(self.zones.lookup(ip))
    }

    /// The place of a client found in `zone` (a lookup already made).
    pub fn place_in(&self, zone: Option<&crate::geo::Zone>) -> ClientPlace {
        match zone {
            Some(zone) => {
                let home = self.site_named(&zone.name);
                ClientPlace {
                    home,
                    location: zone
                        .location
                        .or_else(|| home.and_then(|h| self.sites[h].location)),
                }
            }
            None => ClientPlace::default(),
        }
    }

    /// The edge of that id.
    pub fn edge(&self, id: &str) -> Option<&EdgeInfo> {
        self.edges.iter().find(|e| e.id == id)
    }

    /// Whether the edge can take new players under `policy`.
    pub fn eligible(&self, edge: &EdgeInfo, policy: &Policy) -> bool {
        edge.up && edge.load < policy.load_threshold
    }
}

/// A stable 64-bit hash of the seed and two strings (FNV-1a, then the splitmix64 finalizer
/// to spread FNV's weak low bits). Stable across builds and platforms, unlike `std`'s hasher.
pub fn hash64(seed: u64, a: &str, b: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    let mut eat = |bytes: &[u8]| {
        for &x in bytes {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(a.as_bytes());
    eat(&[0xff]);
    eat(b.as_bytes());
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Weighted rendezvous score: `-weight / ln(h)` with `h` in (0, 1). Higher wins; an edge
/// with twice the weight wins about twice as often.
pub fn hrw_score(seed: u64, asset: &str, node: &str, weight: f64) -> f64 {
    let h = hash64(seed, asset, node);
    // 53 bits into (0, 1): never 0 (ln would be -inf) nor 1 (ln would be 0).
    let unit = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / unit.ln()
}

pub use estuary_common::cp::haversine_km;

/// The order in which sites are tried for this client and asset.
pub fn site_order(topo: &Topology, place: ClientPlace, asset: &str, seed: u64) -> Vec<usize> {
    let home = place.home.filter(|h| *h < topo.sites.len());
    let from = place
        .location
        .or_else(|| home.and_then(|h| topo.sites[h].location));
    let capacity = |s: usize| -> f64 {
        let w: f64 = topo.sites[s]
            .edges
            .iter()
            .map(|e| topo.edges[*e].weight)
            .sum();
        if w > 0.0 { w } else { 1.0 }
    };
    // Each site's sort key is worked out once (distance, else rendezvous score), not in
    // every comparison.
    let mut rest: Vec<(Option<f64>, f64, usize)> = (0..topo.sites.len())
        .filter(|i| Some(*i) != home)
        .map(|s| {
            let distance = from.and_then(|f| topo.sites[s].location.map(|l| haversine_km(f, l)));
            let score = if distance.is_none() {
                hrw_score(seed, asset, &topo.sites[s].name, capacity(s))
            } else {
                0.0
            };
            (distance, score, s)
        })
        .collect();
    rest.sort_by(|(da, ha, a), (db, hb, b)| match (da, db) {
        (Some(x), Some(y)) => x.total_cmp(y).then_with(|| a.cmp(b)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => hb
            .total_cmp(ha)
            .then_with(|| topo.sites[*a].name.cmp(&topo.sites[*b].name)),
    });
    home.into_iter()
        .chain(rest.into_iter().map(|(_, _, s)| s))
        .collect()
}

/// The ranked edges for `asset` and a client at `place`.
pub fn choose(topo: &Topology, place: ClientPlace, asset: &str, policy: &Policy) -> Vec<Choice> {
    ranked_edges(topo, place, asset, policy)
        .into_iter()
        .map(|i| {
            let e = &topo.edges[i];
            Choice {
                site: topo.sites[e.site].name.clone(),
                node: e.id.clone(),
                base_url: e.base_url.clone(),
                prepositioned: e.assets.contains(asset),
            }
        })
        .collect()
}

/// [`choose`] as indexes into [`Topology::edges`] (no strings built: the geo-DNS's hot path).
pub fn ranked_edges(
    topo: &Topology,
    place: ClientPlace,
    asset: &str,
    policy: &Policy,
) -> Vec<usize> {
    let mut out = Vec::new();
    if policy.max_results == 0 {
        return out;
    }
    // The home site alone is often enough (the geo-DNS asks for two addresses): the other
    // sites are ordered only when it is not.
    let home = place.home.filter(|h| *h < topo.sites.len());
    if let Some(h) = home {
        rank_site(topo, h, asset, policy, &mut out);
        if out.len() == policy.max_results {
            return out;
        }
    }
    for s in site_order(topo, place, asset, policy.hash_seed) {
        if Some(s) == home {
            continue;
        }
        rank_site(topo, s, asset, policy, &mut out);
        if out.len() == policy.max_results {
            return out;
        }
    }
    if out.is_empty() {
        // Everything is loaded: an edge that is up beats no answer.
        let mut loaded: Vec<usize> = (0..topo.edges.len())
            .filter(|i| topo.edges[*i].up)
            .collect();
        loaded.sort_by(|a, b| {
            let (a, b) = (&topo.edges[*a], &topo.edges[*b]);
            a.load.total_cmp(&b.load).then_with(|| a.id.cmp(&b.id))
        });
        out.extend(loaded.into_iter().take(policy.max_results));
    }
    out
}

/// Appends site `s`'s eligible edges for `asset`, best first, up to `policy.max_results` in
/// `out` altogether: pre-positioned edges first, then by weighted rendezvous score.
fn rank_site(topo: &Topology, s: usize, asset: &str, policy: &Policy, out: &mut Vec<usize>) {
    let mut ranked: Vec<(bool, f64, usize)> = topo.sites[s]
        .edges
        .iter()
        .copied()
        .filter(|i| topo.eligible(&topo.edges[*i], policy))
        .map(|i| {
            let e = &topo.edges[i];
            (
                e.assets.contains(asset),
                hrw_score(policy.hash_seed, asset, &e.id, e.weight),
                i,
            )
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| b.1.total_cmp(&a.1))
            .then_with(|| topo.edges[a.2].id.cmp(&topo.edges[b.2].id))
    });
    for (_, _, i) in ranked {
        if out.len() == policy.max_results {
            return;
        }
        out.push(i);
    }
}

/// The ranked chat relays for a client at address `client`: [`choose`] over a
/// [`Members::ChatRelays`] topology, the client's address standing in for the asset (so a
/// client keeps its relay while the relays stay as they are, and a site's clients spread
/// over its relays by weight). Each choice's `base_url` is the relay's WebSocket URL.
pub fn choose_relays(relays: &Topology, client: IpAddr, policy: &Policy) -> Vec<Choice> {
    choose(relays, relays.locate(client), &client.to_string(), policy)
}

/// The pathway order a player is told: the ranked choice, except that the player's current
/// pathway stays first while it is still ranked in the best site (so a player is not moved
/// between equally good edges of one site by a change elsewhere).
pub fn prioritize(ranked: &[Choice], current: Option<&str>) -> Vec<String> {
    let mut ids: Vec<String> = ranked.iter().map(|c| c.node.clone()).collect();
    if let (Some(cur), Some(best)) = (current, ranked.first())
        && let Some(pos) = ranked
            .iter()
            .position(|c| c.node == cur && c.site == best.site)
    {
        let id = ids.remove(pos);
        ids.insert(0, id);
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(max: usize) -> Policy {
        Policy {
            load_threshold: 0.9,
            max_results: max,
            hash_seed: 7,
        }
    }

    /// Three sites: paris (p1, p2), berlin (b1), tokyo (t1, t2), each with a location.
    fn topo() -> Topology {
        let mut t = Topology::default();
        let paris = t.add_site("paris", Some([48.85, 2.35]));
        let berlin = t.add_site("berlin", Some([52.52, 13.40]));
        let tokyo = t.add_site("tokyo", Some([35.68, 139.69]));
        for (id, site) in [
            ("p1", paris),
            ("p2", paris),
            ("b1", berlin),
            ("t1", tokyo),
            ("t2", tokyo),
        ] {
            t.add_edge(edge(id, site));
        }
        t
    }

    fn edge(id: &str, site: usize) -> EdgeInfo {
        EdgeInfo {
            id: id.into(),
            site,
            base_url: format!("https://{id}.example"),
            fetch_url: format!("http://{id}.example"),
            weight: 10.0,
            load: 0.1,
            up: true,
            assets: HashSet::new(),
        }
    }

    fn nodes(c: &[Choice]) -> Vec<&str> {
        c.iter().map(|c| c.node.as_str()).collect()
    }

    fn edge_mut<'a>(t: &'a mut Topology, id: &str) -> &'a mut EdgeInfo {
        t.edges.iter_mut().find(|e| e.id == id).expect("edge")
    }

    #[test]
    fn the_home_site_comes_first_then_the_nearest_sites() {
        let t = topo();
        let home = t.site_named("tokyo");
        let got = choose(
            &t,
            ClientPlace {
                home,
                location: None,
            },
            "movie",
            &policy(5),
        );
        let n = nodes(&got);
        assert!(n[..2].contains(&"t1") && n[..2].contains(&"t2"), "{n:?}");
        // From Tokyo, Berlin is nearer than Paris.
        assert_eq!(n[2], "b1");
        // A client placed in Paris by its zone's coordinates but with no home site.
        let got = choose(
            &t,
            ClientPlace {
                home: None,
                location: Some([48.0, 2.0]),
            },
            "movie",
            &policy(3),
        );
        assert_eq!(got[0].site, "paris");
        assert_eq!(got[1].site, "paris");
        assert_eq!(got[2].site, "berlin");
    }

    #[test]
    fn down_and_loaded_edges_drop_out_and_a_full_site_overflows() {
        let mut t = topo();
        let place = ClientPlace {
            home: t.site_named("paris"),
            location: None,
        };
        edge_mut(&mut t, "p1").up = false;
        let got = choose(&t, place, "movie", &policy(3));
        assert_eq!(nodes(&got), ["p2", "b1", got[2].node.as_str()]);
        assert_eq!(got[2].site, "tokyo");
        edge_mut(&mut t, "p2").load = 0.95;
        let got = choose(&t, place, "movie", &policy(1));
        assert_eq!(nodes(&got), ["b1"]);
        // Every edge loaded or down: the least loaded one that is up is still offered.
        for id in ["b1", "t1", "t2"] {
            edge_mut(&mut t, id).load = 0.99;
        }
        edge_mut(&mut t, "t2").load = 0.97;
        let got = choose(&t, place, "movie", &policy(2));
        assert_eq!(nodes(&got), ["p2", "t2"]);
        for e in &mut t.edges {
            e.up = false;
        }
        assert!(choose(&t, place, "movie", &policy(2)).is_empty());
    }

    #[test]
    fn prepositioned_edges_are_preferred_inside_a_site() {
        let mut t = topo();
        let place = ClientPlace {
            home: t.site_named("paris"),
            location: None,
        };
        let first = choose(&t, place, "movie", &policy(1))[0].node.clone();
        let other = if first == "p1" { "p2" } else { "p1" };
        edge_mut(&mut t, other).assets.insert("movie".into());
        let got = choose(&t, place, "movie", &policy(2));
        assert_eq!(nodes(&got), [other, first.as_str()]);
        assert!(got[0].prepositioned && !got[1].prepositioned);
        // Holding the asset does not pull a client out of its home site.
        edge_mut(&mut t, "b1").assets.insert("trailer".into());
        assert_eq!(choose(&t, place, "trailer", &policy(1))[0].site, "paris");
    }

    #[test]
    fn weights_split_first_choices_in_proportion() {
        let mut t = Topology::default();
        let s = t.add_site("lab", None);
        let mut light = edge("light", s);
        light.weight = 1.0;
        let mut heavy = edge("heavy", s);
        heavy.weight = 3.0;
        t.add_edge(light);
        t.add_edge(heavy);
        let mut heavy_wins = 0;
        let n = 8000;
        for i in 0..n {
            let got = choose(&t, ClientPlace::default(), &format!("a{i}"), &policy(1));
            if got[0].node == "heavy" {
                heavy_wins += 1;
            }
        }
        let share = f64::from(heavy_wins) / f64::from(n);
        assert!((0.72..0.78).contains(&share), "heavy share {share}");
    }

    #[test]
    fn unknown_clients_spread_over_sites_by_asset() {
        let t = topo();
        let mut firsts = HashSet::new();
        for i in 0..200 {
            let got = choose(&t, ClientPlace::default(), &format!("a{i}"), &policy(1));
            firsts.insert(got[0].site.clone());
        }
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }

    #[test]
    fn a_snapshot_becomes_a_topology_with_coverage_and_addresses() {
        use estuary_common::cp::*;
        let mut snap = StateSnapshot::default();
        snap.sites.insert(
            "lab".into(),
            Site {
                name: "lab".into(),
                location: Some([1.0, 2.0]),
                coverage: vec!["198.51.100.0/24".into(), "nonsense".into()],
            },
        );
        let node = |id: &str, role, https: Option<&str>, gbps, bps| NodeState {
            id: id.into(),
            site: "lab".into(),
            role,
            addresses: Addresses {
                http: Some(format!("http://{id}:80/")),
                https: https.map(str::to_owned),
                admin: None,
            },
            capacity: Capacity {
                gbps,
                disk_bytes: 0,
            },
            up: true,
            down_reason: None,
            held_up: None,
            last_heartbeat: 0,
            load: Load {
                bytes_per_second: bps,
                ..Load::default()
            },
            polled_load: None,
            usage: Usage::default(),
            version: String::new(),
            assets: vec!["movie".into()],
        };
        for n in [
            node("e1", Role::Edge, Some("https://e1:443"), 8.0, 5e8),
            node("e2", Role::Edge, None, 0.0, 0.0),
            node("o1", Role::Origin, None, 10.0, 0.0),
        ] {
            snap.nodes.insert(n.id.clone(), n);
        }
        let t = Topology::from_snapshot(&snap, true, &CoverageZones::default());
        assert_eq!(t.edges.len(), 2);
        let e1 = t.edge("e1").expect("e1");
        assert_eq!(e1.base_url, "https://e1:443");
        assert!((e1.load - 0.5).abs() < 1e-9, "{}", e1.load);
        assert_eq!(t.edge("e2").expect("e2").base_url, "http://e2:80");
        assert_eq!(t.edge("e2").expect("e2").weight, 1.0);
        let http_first = Topology::from_snapshot(&snap, false, &CoverageZones::default());
        assert_eq!(http_first.edge("e1").expect("e1").base_url, "http://e1:80");
        let place = t.locate("198.51.100.9".parse().expect("ip"));
        assert_eq!(place.home, t.site_named("lab"));
        assert_eq!(place.location, Some([1.0, 2.0]));
        assert_eq!(
            t.locate("203.0.113.1".parse().expect("ip")),
            ClientPlace::default()
        );
    }

    #[test]
    fn websocket_urls_follow_the_http_scheme() {
        let ws = |s: &str| websocket_url(s);
        assert_eq!(
            ws("http://127.0.0.1:9000").as_deref(),
            Some("ws://127.0.0.1:9000/ws")
        );
        assert_eq!(
            ws("https://chat.example/").as_deref(),
            Some("wss://chat.example/ws")
        );
        assert_eq!(
            ws("HTTP://[::1]:80/relay/").as_deref(),
            Some("ws://[::1]:80/relay/ws")
        );
        for bad in [
            "",
            "ftp://x",
            "http://",
            "http:///ws",
            "chat.example:80",
            "ws://x",
        ] {
            assert_eq!(ws(bad), None, "{bad}");
        }
    }

    /// Sites paris and berlin with coverage; an edge, and chat relays: one per site, one down,
    /// one with only an https address, one with an unusable address.
    fn chat_snapshot() -> StateSnapshot {
        use estuary_common::cp::*;
        let mut snap = StateSnapshot::default();
        for (name, location, net) in [
            ("paris", [48.85, 2.35], "198.51.100.0/24"),
            ("berlin", [52.52, 13.40], "203.0.113.0/24"),
        ] {
            snap.sites.insert(
                name.into(),
                Site {
                    name: name.into(),
                    location: Some(location),
                    coverage: vec![net.into()],
                },
            );
        }
        // Only what the relays differ in; the rest as a node that never beat.
        let node = |id: &str, site: &str, role: Role, http: Option<&str>, up: bool| {
            let addresses = Addresses {
                http: http.map(str::to_owned),
                https: Some(format!("https://{id}:443")),
                admin: None,
            };
            serde_json::from_value::<NodeState>(serde_json::json!({
                "id": id, "site": site, "role": role, "addresses": addresses,
                "capacity": {}, "up": up, "last_heartbeat": 0, "load": {}, "usage": {},
                "version": "",
            }))
            .expect("node")
        };
        for n in [
            node("e1", "paris", Role::Edge, Some("http://e1:80"), true),
            node(
                "r-paris",
                "paris",
                Role::ChatRelay,
                Some("http://r-paris:9000/"),
                true,
            ),
            node(
                "r-berlin",
                "berlin",
                Role::ChatRelay,
                Some("https://r-berlin"),
                true,
            ),
            node(
                "r-down",
                "berlin",
                Role::ChatRelay,
                Some("http://r-down:9000"),
                false,
            ),
            node("r-tls", "paris", Role::ChatRelay, None, true),
            node(
                "r-odd",
                "paris",
                Role::ChatRelay,
                Some("gopher://r-odd"),
                true,
            ),
        ] {
            snap.nodes.insert(n.id.clone(), n);
        }
        snap
    }

    #[test]
    fn chat_relays_are_ranked_like_edges_with_websocket_urls() {
        let snap = chat_snapshot();
        let zones = snapshot_zones(&snap, &CoverageZones::default());
        let edges = Topology::of_members(
            &snap,
            Members::Edges {
                prefer_https: false,
            },
            Arc::clone(&zones),
        );
        let relays = Topology::of_members(&snap, Members::ChatRelays, zones);
        // Each topology holds its own role only; relays without an http(s) address are out.
        assert_eq!(
            edges
                .edges
                .iter()
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>(),
            ["e1"]
        );
        let mut ids: Vec<&str> = relays.edges.iter().map(|e| e.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["r-berlin", "r-down", "r-paris"]);
        assert_eq!(
            relays.edge("r-paris").map(|e| e.base_url.as_str()),
            Some("ws://r-paris:9000/ws")
        );
        assert_eq!(
            relays.edge("r-berlin").map(|e| e.base_url.as_str()),
            Some("wss://r-berlin/ws")
        );
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // A client's own zone first, then the nearest site; the relay that is down never.
        let paris = choose_relays(&relays, ip("198.51.100.7"), &policy(3));
        assert_eq!(nodes(&paris), ["r-paris", "r-berlin"]);
        assert_eq!(paris[0].site, "paris");
        assert_eq!(paris[0].base_url, "ws://r-paris:9000/ws");
        let berlin = choose_relays(&relays, ip("203.0.113.9"), &policy(3));
        assert_eq!(nodes(&berlin), ["r-berlin", "r-paris"]);
        // The same as edges are ranked, the client's address as the key; and `pathways` caps
        // the list.
        let place = relays.locate(ip("203.0.113.9"));
        assert_eq!(berlin, choose(&relays, place, "203.0.113.9", &policy(3)));
        assert_eq!(
            nodes(&choose_relays(&relays, ip("203.0.113.9"), &policy(1))),
            ["r-berlin"]
        );
        // An unplaced client still gets every relay that is up, the same way every time.
        let nowhere = choose_relays(&relays, ip("192.0.2.1"), &policy(3));
        assert_eq!(nowhere.len(), 2);
        assert_eq!(nowhere, choose_relays(&relays, ip("192.0.2.1"), &policy(3)));
        // The edge topology built the old way is the same as before relays existed.
        let old = Topology::from_snapshot(&snap, false, &CoverageZones::default());
        assert_eq!(old.edges, edges.edges);
        assert_eq!(old.sites, edges.sites);
        // No relay up: nothing to offer.
        let mut down = snap.clone();
        for n in down.nodes.values_mut() {
            n.up = false;
        }
        let zones = snapshot_zones(&down, &CoverageZones::default());
        let none = Topology::of_members(&down, Members::ChatRelays, zones);
        assert!(choose_relays(&none, ip("198.51.100.7"), &policy(3)).is_empty());
    }

    #[test]
    fn the_current_pathway_is_kept_only_inside_the_best_site() {
        let c = |site: &str, node: &str| Choice {
            site: site.into(),
            node: node.into(),
            base_url: String::new(),
            prepositioned: false,
        };
        let ranked = [c("a", "a1"), c("a", "a2"), c("b", "b1")];
        assert_eq!(prioritize(&ranked, Some("a2")), ["a2", "a1", "b1"]);
        assert_eq!(prioritize(&ranked, Some("b1")), ["a1", "a2", "b1"]);
        assert_eq!(prioritize(&ranked, Some("gone")), ["a1", "a2", "b1"]);
        assert_eq!(prioritize(&ranked, None), ["a1", "a2", "b1"]);
        assert!(prioritize(&[], Some("a1")).is_empty());
    }

    #[test]
    fn haversine_knows_a_few_distances() {
        let paris = [48.8566, 2.3522];
        let berlin = [52.52, 13.405];
        let d = haversine_km(paris, berlin);
        assert!((870.0..890.0).contains(&d), "{d}");
        assert!(haversine_km(paris, paris).abs() < 1e-9);
        let antipode = haversine_km([0.0, 0.0], [0.0, 180.0]);
        assert!((20_000.0..20_040.0).contains(&antipode), "{antipode}");
    }

    fn arb_topology() -> impl Strategy<Value = Topology> {
        let edge = (
            0usize..4,
            any::<bool>(),
            0.0f64..1.2,
            0.0f64..20.0,
            any::<bool>(),
        );
        proptest::collection::vec(edge, 0..14).prop_map(|edges| {
            let mut t = Topology::default();
            for (i, name) in ["s0", "s1", "s2", "s3"].iter().enumerate() {
                let loc = (i % 2 == 0).then_some([i as f64 * 10.0, i as f64 * 20.0]);
                t.add_site(name, loc);
            }
            for (i, (site, up, load, weight, holds)) in edges.into_iter().enumerate() {
                let mut e = edge_info(i, site, up, load, weight);
                if holds {
                    e.assets.insert("movie".into());
                }
                t.add_edge(e);
            }
            t
        })
    }

    fn edge_info(i: usize, site: usize, up: bool, load: f64, weight: f64) -> EdgeInfo {
        EdgeInfo {
            id: format!("e{i}"),
            site,
            base_url: format!("http://e{i}"),
            fetch_url: format!("http://e{i}"),
            weight,
            load,
            up,
            assets: HashSet::new(),
        }
    }

    proptest! {
        #[test]
        fn choices_are_distinct_up_bounded_and_deterministic(
            t in arb_topology(),
            home in proptest::option::of(0usize..5),
            max in 0usize..6,
            asset in "[a-z0-9]{1,12}",
        ) {
            let place = ClientPlace { home, location: None };
            let p = policy(max);
            let got = choose(&t, place, &asset, &p);
            prop_assert!(got.len() <= max);
            let ids: HashSet<&str> = got.iter().map(|c| c.node.as_str()).collect();
            prop_assert_eq!(ids.len(), got.len());
            for c in &got {
                let e = t.edge(&c.node).ok_or_else(|| TestCaseError::fail("unknown node"))?;
                prop_assert!(e.up);
                prop_assert_eq!(&t.sites[e.site].name, &c.site);
            }
            prop_assert_eq!(&got, &choose(&t, place, &asset, &p));
            // Below-threshold edges are all listed before any loaded one.
            let loaded: Vec<bool> = got.iter().map(|c| t.edge(&c.node).is_none_or(|e| e.load >= p.load_threshold)).collect();
            if loaded.iter().any(|l| *l) {
                prop_assert!(loaded.iter().all(|l| *l));
            }
            // When the home site has an eligible edge, the first choice is in it.
            if let Some(h) = home.filter(|h| *h < t.sites.len())
                && t.sites[h].edges.iter().any(|i| t.eligible(&t.edges[*i], &p))
                && max > 0
            {
                prop_assert_eq!(&got[0].site, &t.sites[h].name);
            }
        }

        #[test]
        fn websocket_urls_are_ws_or_wss_ending_in_ws(s in ".{0,40}") {
            if let Some(url) = websocket_url(&s) {
                prop_assert!(url.starts_with("ws://") || url.starts_with("wss://"), "{}", url);
                prop_assert!(url.ends_with("/ws"));
            }
        }

        // Rendezvous hashing moves only what it must: taking down an edge that was not the
        // first choice never changes the first choice.
        #[test]
        fn removing_another_edge_keeps_the_first_choice(
            t in arb_topology(),
            asset in "[a-z0-9]{1,12}",
            victim in 0usize..14,
        ) {
            let p = policy(1);
            let place = ClientPlace::default();
            let before = choose(&t, place, &asset, &p);
            let mut t2 = t.clone();
            if let Some(e) = t2.edges.get_mut(victim) && before.first().is_some_and(|c| c.node != e.id) {
                e.up = false;
                let after = choose(&t2, place, &asset, &p);
                prop_assert_eq!(before.first(), after.first());
            }
        }
    }
}
