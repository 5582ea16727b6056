//! Meetings (`POST /v1/meetings`): which SFU hosts a room. Pure: the state snapshot, the
//! rooms each SFU listed in its last heartbeat and the time are inputs, so the choice and the
//! lifetime of an assignment are tested without a network.
//!
//! The site: the one the caller names (`region`), else the client's home site (a site whose
//! `coverage` holds its address, else one whose `[auth] site_networks` does). Sites are tried
//! home first, then the others nearest first by the home site's location (the same haversine
//! steering ranks sites with), then those without a location by name; with no home site at
//! all, every site is tried and the least loaded SFU anywhere wins. Inside a site: SFUs the
//! control plane holds up, with an `http` address, below the load threshold, least loaded
//! first (load: the larger of CPU share and peers over `peers_per_sfu`), ties by node id. When
//! every SFU is at or above the threshold the least loaded one anywhere is taken.
//!
//! An assignment lasts while its SFU (or one of its cascade SFUs) lists the room in its
//! heartbeats, or until `grace` after it was made (the first participant has that long to
//! join). A meeting whose SFU is no longer up, while the meeting still lasts, is placed again
//! as it was first placed (same room name, same `region` or `client`), and its grace starts
//! over.
//!
//! Cascades (`POST /v1/meetings/<room>/participants`): a later participant whose home site is
//! not the meeting's SFU's goes to a cascade SFU at its own site, which relays the room from
//! the meeting's SFU; one per site and meeting, kept while it is usable (even when loaded, as
//! the meeting's own SFU is), else the least loaded usable SFU there (below the threshold
//! first). Never another site's: with no usable SFU at home, the participant joins the
//! meeting's SFU directly, which is what it was placed for. A cascade SFU that lists the room
//! keeps the meeting lasting: its participants are still in the meeting even once nobody is
//! left on the meeting's own SFU, and the room name must stay theirs.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use estuary_common::cp::{NodeState, Role, StateSnapshot, haversine_km};

/// Where the first participant is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Near {
    /// A site named by the caller.
    Region(String),
    /// The client's address.
    Client(IpAddr),
}

/// The knobs of the choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Peers an SFU carries at full load (the peers half of its load figure).
    pub peers_per_sfu: u64,
    /// SFUs at or above this load are passed over while another is below it.
    pub load_threshold: f64,
}

/// Why no SFU was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlaceError {
    #[error("no site is named {0:?}")]
    UnknownRegion(String),
    #[error("no SFU is up")]
    NoSfu,
}

/// An SFU's load: the larger of its CPU share and its peers over `peers_per_sfu`.
pub fn sfu_load(node: &NodeState, policy: &Policy) -> f64 {
    let peers = node.load.peers as f64 / policy.peers_per_sfu.max(1) as f64;
    let load = node.load.cpu.max(peers);
    if load.is_finite() { load } else { f64::MAX }
}

/// The home site of `near`: the region when it is a known site; for a client, the site whose
/// coverage holds it, else the site whose node networks hold it (`None`: nowhere known).
pub fn home_site(
    snap: &StateSnapshot,
    site_networks: &std::collections::BTreeMap<String, Vec<ipnet::IpNet>>,
    near: &Near,
) -> Result<Option<String>, PlaceError> {
    match near {
        Near::Region(site) => {
            let known =
                snap.sites.contains_key(site) || snap.nodes.values().any(|n| &n.site == site);
            if known {
                Ok(Some(site.clone()))
            } else {
                Err(PlaceError::UnknownRegion(site.clone()))
            }
        }
        Near::Client(ip) => {
            let ip = estuary_common::token::canonical_ip(*ip);
            // The most specific network wins, as in steering's coverage zones.
            let mut best: Option<(u8, &str)> = None;
            let covering = snap.sites.iter().flat_map(|(name, s)| {
                s.coverage
                    .iter()
                    .filter_map(|c| c.parse::<ipnet::IpNet>().ok())
                    .map(move |net| (net, name.as_str()))
            });
            for (net, name) in covering {
                if net.contains(&ip) && best.is_none_or(|(len, _)| net.prefix_len() > len) {
                    best = Some((net.prefix_len(), name));
                }
            }
            if best.is_none() {
                for (name, nets) in site_networks {
                    for net in nets {
                        if net.contains(&ip) && best.is_none_or(|(len, _)| net.prefix_len() > len) {
                            best = Some((net.prefix_len(), name.as_str()));
                        }
                    }
                }
            }
            Ok(best.map(|(_, name)| name.to_owned()))
        }
    }
}

/// The sites to try: `home` first, then the others nearest first from the home site's
/// location, then those without a location (or all, with no home location) by name.
pub fn site_order(snap: &StateSnapshot, home: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = snap
        .sites
        .keys()
        .cloned()
        .chain(snap.nodes.values().map(|n| n.site.clone()))
        .collect();
    names.sort();
    names.dedup();
    let from = home
        .and_then(|h| snap.sites.get(h))
        .and_then(|s| s.location);
    let distance = |name: &str| -> Option<f64> {
        let to = snap.sites.get(name)?.location?;
        from.map(|f| haversine_km(f, to)).filter(|d| d.is_finite())
    };
    let mut rest: Vec<(Option<f64>, String)> = names
        .into_iter()
        .filter(|n| Some(n.as_str()) != home)
        .map(|n| (distance(&n), n))
        .collect();
    rest.sort_by(|(da, a), (db, b)| match (da, db) {
        (Some(x), Some(y)) => x.total_cmp(y).then_with(|| a.cmp(b)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(b),
    });
    home.map(str::to_owned)
        .into_iter()
        .chain(rest.into_iter().map(|(_, n)| n))
        .collect()
}

/// SFUs that can take a meeting: up, with an `http` address.
fn usable(node: &NodeState) -> bool {
    is_meeting_sfu(node) && node.up
}

/// An SFU with an `http` address, up or not.
fn is_meeting_sfu(node: &NodeState) -> bool {
    node.role == Role::Sfu && node.addresses.http.is_some()
}

/// The least loaded of `nodes`, ties by node id.
fn least_loaded<'a>(
    nodes: impl Iterator<Item = &'a NodeState>,
    policy: &Policy,
) -> Option<&'a NodeState> {
    nodes.min_by(|a, b| {
        sfu_load(a, policy)
            .total_cmp(&sfu_load(b, policy))
            .then_with(|| a.id.cmp(&b.id))
    })
}

/// The least loaded usable SFU of `site` below the load threshold.
fn below_threshold_at<'a>(
    snap: &'a StateSnapshot,
    site: &str,
    policy: &Policy,
) -> Option<&'a NodeState> {
    let here = snap
        .nodes
        .values()
        .filter(|n| usable(n) && n.site == site && sfu_load(n, policy) < policy.load_threshold);
    least_loaded(here, policy)
}

/// The SFU for a new meeting whose first participant's home site is `home`.
pub fn choose_sfu<'a>(
    snap: &'a StateSnapshot,
    home: Option<&str>,
    policy: &Policy,
) -> Option<&'a NodeState> {
    if home.is_some() {
        for site in site_order(snap, home) {
            if let Some(n) = below_threshold_at(snap, &site, policy) {
                return Some(n);
            }
        }
    }
    least_loaded(snap.nodes.values().filter(|n| usable(n)), policy)
}

/// The cascade SFU for a later participant of meeting `m` whose home site is `home`: `None`
/// when it should join the meeting's SFU itself (no home site, the meeting's SFU's own site,
/// or no usable SFU at home). The one `m` recorded for that site while it is usable, else the
/// least loaded usable SFU there, below the threshold first; like `choose_sfu`'s fallback,
/// one at or above it still beats crossing to another site, the meeting's SFU's included.
pub fn choose_cascade<'a>(
    snap: &'a StateSnapshot,
    m: &Meeting,
    home: Option<&str>,
    policy: &Policy,
) -> Option<&'a NodeState> {
    let home = home?;
    let meeting_site = snap.nodes.get(&m.node).map(|n| n.site.as_str());
    if meeting_site == Some(home) {
        return None;
    }
    let usable_here = |n: &&NodeState| usable(n) && n.site == home && n.id != m.node;
    if let Some(kept) = m
        .cascades
        .get(home)
        .and_then(|id| snap.nodes.get(id))
        .filter(usable_here)
    {
        return Some(kept);
    }
    below_threshold_at(snap, home, policy)
        .filter(usable_here)
        .or_else(|| least_loaded(snap.nodes.values().filter(usable_here), policy))
}

/// What the meeting table decides with: the fleet as the control plane sees it now.
#[derive(Debug, Clone, Copy)]
pub struct Fleet<'a> {
    pub snap: &'a StateSnapshot,
    /// The rooms each SFU listed in its last heartbeat.
    pub rooms: &'a HashMap<String, Vec<String>>,
    pub policy: &'a Policy,
    /// Unix seconds.
    pub now: u64,
    /// Seconds a meeting lasts after its placement without its SFU listing it.
    pub grace: u64,
    /// Whether this control plane has had time to judge every node since it started. Before,
    /// a meeting whose SFU is not up yet keeps it (the SFU is most likely up and merely not
    /// checked yet), rather than being moved off it.
    pub settled: bool,
}

/// One meeting's assignment (stored in the control plane's database as JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meeting {
    pub room: String,
    pub node: String,
    /// Where it was placed for (used again if it must move).
    pub near: Near,
    /// Unix seconds when it was (last) placed.
    pub placed_at: u64,
    /// Its cascade SFUs: node id by site (never the meeting's SFU's own site).
    pub cascades: BTreeMap<String, String>,
}

impl Meeting {
    /// Whether it still lasts: its SFU or one of its cascade SFUs listed the room in its last
    /// heartbeat, or the grace after its placement has not run out.
    pub fn lasts(&self, now: u64, grace: u64, rooms: &HashMap<String, Vec<String>>) -> bool {
        let lists = |node: &String| rooms.get(node).is_some_and(|r| r.contains(&self.room));
        now < self.placed_at.saturating_add(grace)
            || lists(&self.node)
            || self.cascades.values().any(lists)
    }
}

/// What became of a meeting asked for by room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// It lasts on its SFU.
    Kept(Meeting),
    /// Its SFU is gone; it was placed again.
    Moved { meeting: Meeting, from: String },
    /// No such meeting (never made, or it ended).
    Unknown,
    /// It lasts but no SFU is up to take it.
    NoSfu,
}

/// Every meeting this control plane placed, by room.
#[derive(Debug, Default)]
pub struct Meetings {
    rooms: HashMap<String, Meeting>,
}

impl Meetings {
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Forgets the meetings that ended.
    pub fn prune(&mut self, now: u64, grace: u64, rooms: &HashMap<String, Vec<String>>) {
        self.rooms.retain(|_, m| m.lasts(now, grace, rooms));
    }

    /// The meeting of `room` as this table holds it.
    pub fn get(&self, room: &str) -> Option<&Meeting> {
        self.rooms.get(room)
    }

    /// Takes `m` as the meeting of its room (read from the database: another replica's, or
    /// one placed before a restart), in place of what this table held.
    pub fn learn(&mut self, m: Meeting) {
        self.rooms.insert(m.room.clone(), m);
    }

    /// Places a new meeting `room` (a name not in use) for `near`, unless `max` meetings last
    /// already (after the ended ones are forgotten).
    pub fn create(
        &mut self,
        fleet: &Fleet<'_>,
        room: String,
        near: Near,
        home: Option<&str>,
        max: usize,
    ) -> Result<Meeting, CreateError> {
        if self.rooms.len() >= max {
            self.prune(fleet.now, fleet.grace, fleet.rooms);
            if self.rooms.len() >= max {
                return Err(CreateError::Full(max));
            }
        }
        let node = choose_sfu(fleet.snap, home, fleet.policy)
            .ok_or(CreateError::Place(PlaceError::NoSfu))?;
        let m = Meeting {
            room: room.clone(),
            node: node.id.clone(),
            near,
            placed_at: fleet.now,
            cascades: BTreeMap::new(),
        };
        self.rooms.insert(room, m.clone());
        Ok(m)
    }

    /// The meeting of `room` now: kept, moved off a gone SFU (to the SFU `choose_sfu` picks
    /// for its `near`, whose home site `home` works out), or unknown once it ended.
    pub fn lookup(
        &mut self,
        fleet: &Fleet<'_>,
        room: &str,
        home: impl Fn(&Near) -> Option<String>,
    ) -> Lookup {
        let Fleet {
            snap,
            rooms,
            policy,
            now,
            grace,
            settled,
        } = *fleet;
        let Some(m) = self.rooms.get(room) else {
            return Lookup::Unknown;
        };
        if !m.lasts(now, grace, rooms) {
            self.rooms.remove(room);
            return Lookup::Unknown;
        }
        // Before the control plane has settled, a "down" SFU may merely be unchecked.
        if snap
            .nodes
            .get(&m.node)
            .is_some_and(|n| usable(n) || (!settled && is_meeting_sfu(n)))
        {
            return Lookup::Kept(m.clone());
        }
        let from = m.node.clone();
        let home_site = home(&m.near);
        let Some(node) = choose_sfu(snap, home_site.as_deref(), policy) else {
            return Lookup::NoSfu;
        };
        // Its cascades stay (their participants are still there, and the next participant
        // request points them at the new SFU), but not one at the new SFU's own site: that
        // site's participants join the meeting's SFU itself now.
        let mut cascades = m.cascades.clone();
        cascades.retain(|site, id| *site != node.site && *id != node.id);
        let moved = Meeting {
            room: room.to_owned(),
            node: node.id.clone(),
            near: m.near.clone(),
            placed_at: now,
            cascades,
        };
        self.rooms.insert(room.to_owned(), moved.clone());
        Lookup::Moved {
            meeting: moved,
            from,
        }
    }

    /// The cascade SFU for a later participant of `room` (a meeting `lookup` just kept or
    /// moved) whose home site is `home`, recorded in the meeting; `None`: the participant
    /// joins the meeting's SFU (see [`choose_cascade`]).
    pub fn cascade(&mut self, fleet: &Fleet<'_>, room: &str, home: Option<&str>) -> Option<String> {
        let m = self.rooms.get_mut(room)?;
        let node = choose_cascade(fleet.snap, m, home, fleet.policy)?;
        m.cascades.insert(node.site.clone(), node.id.clone());
        Some(node.id.clone())
    }
}

/// Why a meeting was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    #[error(transparent)]
    Place(#[from] PlaceError),
    #[error("{0} meetings last already (meetings.max_meetings)")]
    Full(usize),
}

/// The URLs a participant uses on SFU `http` (its advertised base URL) for `room`:
/// (WHIP, WHEP, WebSocket).
pub fn sfu_urls(http: &str, room: &str) -> (String, String, String) {
    let base = http.trim_end_matches('/');
    let ws = match base.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => format!("wss://{rest}"),
        Some((_, rest)) => format!("ws://{rest}"),
        None => base.to_owned(),
    };
    (
        format!("{base}/whip/{room}"),
        format!("{base}/whep/{room}"),
        format!("{ws}/rooms/{room}/ws"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use estuary_common::cp::{Addresses, Capacity, Load, Site, Usage};
    use proptest::prelude::*;

    const POLICY: Policy = Policy {
        peers_per_sfu: 100,
        load_threshold: 0.9,
    };

    fn sfu(id: &str, site: &str, peers: u64, cpu: f64, up: bool) -> NodeState {
        NodeState {
            id: id.into(),
            site: site.into(),
            role: Role::Sfu,
            addresses: Addresses {
                http: Some(format!("http://{id}.example:7300")),
                ..Addresses::default()
            },
            capacity: Capacity::default(),
            up,
            down_reason: None,
            held_up: None,
            last_heartbeat: 0,
            load: Load {
                peers,
                cpu,
                ..Load::default()
            },
            polled_load: None,
            usage: Usage::default(),
            version: String::new(),
            assets: vec![],
        }
    }

    /// Paris (with 192.0.2.0/24) and Berlin nearby, Tokyo far away.
    fn snap(nodes: Vec<NodeState>) -> StateSnapshot {
        let site = |name: &str, loc: [f64; 2], cov: &[&str]| {
            (
                name.to_owned(),
                Site {
                    name: name.into(),
                    location: Some(loc),
                    coverage: cov.iter().map(|c| (*c).to_owned()).collect(),
                },
            )
        };
        StateSnapshot {
            version: 1,
            generated_at: 0,
            sites: [
                site("paris", [48.86, 2.35], &["192.0.2.0/24"]),
                site("berlin", [52.52, 13.40], &[]),
                site("tokyo", [35.68, 139.69], &["198.51.100.0/24"]),
            ]
            .into(),
            nodes: nodes.into_iter().map(|n| (n.id.clone(), n)).collect(),
        }
    }

    fn fleet<'a>(
        snap: &'a StateSnapshot,
        rooms: &'a HashMap<String, Vec<String>>,
        now: u64,
        grace: u64,
    ) -> Fleet<'a> {
        Fleet {
            snap,
            rooms,
            policy: &POLICY,
            now,
            grace,
            settled: true,
        }
    }

    fn nets() -> std::collections::BTreeMap<String, Vec<ipnet::IpNet>> {
        [(
            "berlin".to_owned(),
            vec!["203.0.113.0/24".parse().expect("net")],
        )]
        .into()
    }

    #[test]
    fn the_home_site_comes_from_the_region_the_coverage_or_the_site_networks() {
        let s = snap(vec![]);
        let home = |near: Near| home_site(&s, &nets(), &near);
        assert_eq!(home(Near::Region("tokyo".into())), Ok(Some("tokyo".into())));
        assert_eq!(
            home(Near::Region("mars".into())),
            Err(PlaceError::UnknownRegion("mars".into()))
        );
        let ip = |t: &str| Near::Client(t.parse().expect("ip"));
        assert_eq!(home(ip("192.0.2.7")), Ok(Some("paris".into())));
        assert_eq!(home(ip("203.0.113.9")), Ok(Some("berlin".into())));
        assert_eq!(home(ip("::ffff:198.51.100.1")), Ok(Some("tokyo".into())));
        assert_eq!(home(ip("10.0.0.1")), Ok(None));
    }

    #[test]
    fn the_least_loaded_sfu_of_the_home_site_wins_then_the_nearest_site() {
        let s = snap(vec![
            sfu("p1", "paris", 50, 0.1, true),
            sfu("p2", "paris", 10, 0.2, true),
            sfu("b1", "berlin", 0, 0.0, true),
            sfu("t1", "tokyo", 0, 0.0, true),
        ]);
        let pick = |s: &StateSnapshot, home: Option<&str>| {
            choose_sfu(s, home, &POLICY).map(|n| n.id.clone())
        };
        // p2: max(0.2, 0.1) beats p1: max(0.1, 0.5), though b1 idles next door.
        assert_eq!(pick(&s, Some("paris")).as_deref(), Some("p2"));
        assert_eq!(site_order(&s, Some("paris")), ["paris", "berlin", "tokyo"]);
        assert_eq!(site_order(&s, Some("tokyo"))[0], "tokyo");
        // Paris full or down: Berlin (nearer) before Tokyo.
        let mut full = s.clone();
        for id in ["p1", "p2"] {
            if let Some(n) = full.nodes.get_mut(id) {
                n.load.peers = 95;
            }
        }
        assert_eq!(pick(&full, Some("paris")).as_deref(), Some("b1"));
        let mut down = s.clone();
        for n in down.nodes.values_mut() {
            n.up = n.site != "paris";
        }
        assert_eq!(pick(&down, Some("paris")).as_deref(), Some("b1"));
        // Nobody below the threshold: the least loaded anywhere; nobody up: none.
        for n in full.nodes.values_mut() {
            n.load.cpu = if n.id == "t1" { 0.95 } else { 0.99 };
        }
        assert_eq!(pick(&full, Some("paris")).as_deref(), Some("t1"));
        for n in down.nodes.values_mut() {
            n.up = false;
        }
        assert_eq!(pick(&down, Some("paris")), None);
        // No home: least loaded anywhere, ties by id.
        assert_eq!(pick(&s, None).as_deref(), Some("b1"));
        // Edges are never chosen.
        let mut edge = sfu("e0", "paris", 0, 0.0, true);
        edge.role = Role::Edge;
        let only_edge = snap(vec![edge]);
        assert_eq!(pick(&only_edge, Some("paris")), None);
    }

    /// Just after a start (a restart, a new replica), nodes read from the database are not
    /// checked yet: a meeting keeps its SFU rather than move off it; once settled, it moves.
    #[test]
    fn a_meeting_is_not_moved_before_the_control_plane_has_judged_its_sfu() {
        let mut s = snap(vec![
            sfu("p1", "paris", 0, 0.0, true),
            sfu("p2", "paris", 5, 0.0, true),
        ]);
        let rooms: HashMap<String, Vec<String>> = HashMap::new();
        let mut m = Meetings::default();
        let made = m
            .create(
                &fleet(&s, &rooms, 1000, 300),
                "m-1".into(),
                Near::Region("paris".into()),
                Some("paris"),
                10,
            )
            .expect("placed");
        assert_eq!(made.node, "p1");
        // Restarted: p1 not checked yet (down for now), p2 already up.
        if let Some(n) = s.nodes.get_mut("p1") {
            n.up = false;
        }
        let home = |_: &Near| Some("paris".to_owned());
        let mut unsettled = fleet(&s, &rooms, 1010, 300);
        unsettled.settled = false;
        assert_eq!(m.lookup(&unsettled, "m-1", home), Lookup::Kept(made));
        let Lookup::Moved { meeting, .. } = m.lookup(&fleet(&s, &rooms, 1020, 300), "m-1", home)
        else {
            panic!("not moved once settled");
        };
        assert_eq!(meeting.node, "p2");
    }

    #[test]
    fn a_meeting_keeps_its_sfu_while_it_lasts_moves_when_the_sfu_dies_and_ends() {
        let mut s = snap(vec![
            sfu("p1", "paris", 0, 0.0, true),
            sfu("p2", "paris", 5, 0.0, true),
        ]);
        let mut m = Meetings::default();
        let mut rooms: HashMap<String, Vec<String>> = HashMap::new();
        let grace = 300;
        let near = Near::Region("paris".into());
        let made = m
            .create(
                &fleet(&s, &rooms, 1000, grace),
                "m-1".into(),
                near.clone(),
                Some("paris"),
                10,
            )
            .expect("placed");
        assert_eq!(made.node, "p1");
        let home = |_: &Near| Some("paris".to_owned());
        // p1 fills up, but the meeting stays on it.
        if let Some(n) = s.nodes.get_mut("p1") {
            n.load.peers = 80;
        }
        let look = |m: &mut Meetings, s: &StateSnapshot, r: &HashMap<String, Vec<String>>, now| {
            m.lookup(&fleet(s, r, now, grace), "m-1", home)
        };
        assert_eq!(look(&mut m, &s, &rooms, 1100), Lookup::Kept(made.clone()));
        // Past the grace it lasts only while p1 lists the room.
        rooms.insert("p1".into(), vec!["m-1".into()]);
        assert_eq!(look(&mut m, &s, &rooms, 5000), Lookup::Kept(made.clone()));
        // p1 dies (its last beat still lists the room): moved to p2, grace anew.
        if let Some(n) = s.nodes.get_mut("p1") {
            n.up = false;
        }
        let Lookup::Moved { meeting, from } = look(&mut m, &s, &rooms, 6000) else {
            panic!("not moved");
        };
        assert_eq!((meeting.node.as_str(), from.as_str()), ("p2", "p1"));
        assert_eq!(meeting.placed_at, 6000);
        assert_eq!(look(&mut m, &s, &rooms, 6100), Lookup::Kept(meeting));
        // p2 never lists it: it ends after the grace.
        assert_eq!(look(&mut m, &s, &rooms, 6000 + grace), Lookup::Unknown);
        assert!(m.is_empty());
        assert_eq!(
            m.lookup(&fleet(&s, &rooms, 0, grace), "nope", home),
            Lookup::Unknown
        );
    }

    #[test]
    fn meetings_are_bounded_and_ended_ones_make_room() {
        let s = snap(vec![sfu("p1", "paris", 0, 0.0, true)]);
        let rooms = HashMap::new();
        let mut m = Meetings::default();
        let near = Near::Region("paris".into());
        let make = |m: &mut Meetings, room: &str, now| {
            m.create(
                &fleet(&s, &rooms, now, 10),
                room.into(),
                near.clone(),
                Some("paris"),
                2,
            )
        };
        assert!(make(&mut m, "a", 0).is_ok());
        assert!(make(&mut m, "b", 0).is_ok());
        assert_eq!(make(&mut m, "c", 5), Err(CreateError::Full(2)));
        assert!(make(&mut m, "c", 10).is_ok());
        assert_eq!(m.len(), 1);
        let none = snap(vec![]);
        assert_eq!(
            m.create(
                &fleet(&none, &rooms, 0, 10),
                "d".into(),
                Near::Region("paris".into()),
                None,
                9
            ),
            Err(CreateError::Place(PlaceError::NoSfu))
        );
    }

    /// A meeting on `node`, placed at 0 for Paris, without cascades.
    fn meeting_on(node: &str) -> Meeting {
        Meeting {
            room: "m-1".into(),
            node: node.into(),
            near: Near::Region("paris".into()),
            placed_at: 0,
            cascades: BTreeMap::new(),
        }
    }

    #[test]
    fn a_later_participant_from_another_site_cascades_to_the_least_loaded_sfu_there() {
        let mut s = snap(vec![
            sfu("p1", "paris", 0, 0.0, true),
            sfu("p2", "paris", 0, 0.0, true),
            sfu("t1", "tokyo", 50, 0.1, true),
            sfu("t2", "tokyo", 10, 0.2, true),
            sfu("t3", "tokyo", 0, 0.0, false),
        ]);
        let m = meeting_on("p1");
        let pick = |s: &StateSnapshot, m: &Meeting, home: Option<&str>| {
            choose_cascade(s, m, home, &POLICY).map(|n| n.id.clone())
        };
        // t2: max(0.2, 0.1) beats t1: max(0.1, 0.5); t3 is down.
        assert_eq!(pick(&s, &m, Some("tokyo")).as_deref(), Some("t2"));
        // The meeting's own site (though p2 idles there), or no home: the meeting's SFU.
        assert_eq!(pick(&s, &m, Some("paris")), None);
        assert_eq!(pick(&s, &m, None), None);
        // No usable SFU at home: the meeting's SFU, never a third site's.
        assert_eq!(pick(&s, &m, Some("berlin")), None);
        let mut no_http = s.clone();
        for n in no_http.nodes.values_mut() {
            if n.site == "tokyo" {
                n.addresses.http = None;
            }
        }
        assert_eq!(pick(&no_http, &m, Some("tokyo")), None);
        // Every Tokyo SFU at or above the threshold: still the least loaded one there.
        let mut full = s.clone();
        for n in full.nodes.values_mut() {
            if n.site == "tokyo" {
                n.load.cpu = 0.95;
            }
        }
        assert_eq!(pick(&full, &m, Some("tokyo")).as_deref(), Some("t1"));
        // A recorded cascade SFU is kept while usable, even when another is less loaded now.
        let mut recorded = meeting_on("p1");
        recorded.cascades.insert("tokyo".into(), "t1".into());
        assert_eq!(pick(&s, &recorded, Some("tokyo")).as_deref(), Some("t1"));
        // It is replaced once it is down, or no longer an SFU of that site.
        if let Some(n) = s.nodes.get_mut("t1") {
            n.up = false;
        }
        assert_eq!(pick(&s, &recorded, Some("tokyo")).as_deref(), Some("t2"));
        recorded.cascades.insert("tokyo".into(), "p2".into());
        assert_eq!(pick(&s, &recorded, Some("tokyo")).as_deref(), Some("t2"));
    }

    #[test]
    fn cascades_are_recorded_keep_the_meeting_lasting_and_follow_a_move() {
        let mut s = snap(vec![
            sfu("p1", "paris", 0, 0.0, true),
            sfu("t1", "tokyo", 0, 0.0, true),
            sfu("t2", "tokyo", 5, 0.0, true),
        ]);
        let mut rooms: HashMap<String, Vec<String>> = HashMap::new();
        let grace = 300;
        let mut m = Meetings::default();
        m.create(
            &fleet(&s, &rooms, 0, grace),
            "m-1".into(),
            Near::Region("paris".into()),
            Some("paris"),
            10,
        )
        .expect("placed");
        let home = |_: &Near| Some("paris".to_owned());
        let f = fleet(&s, &rooms, 10, grace);
        assert_eq!(m.cascade(&f, "m-1", Some("paris")), None);
        assert_eq!(m.cascade(&f, "m-1", Some("tokyo")).as_deref(), Some("t1"));
        assert_eq!(m.cascade(&f, "nope", Some("tokyo")), None);
        // t1 fills up: later Tokyo participants still go where the first ones went.
        if let Some(n) = s.nodes.get_mut("t1") {
            n.load.peers = 95;
        }
        let f = fleet(&s, &rooms, 20, grace);
        assert_eq!(m.cascade(&f, "m-1", Some("tokyo")).as_deref(), Some("t1"));
        // Past the grace, only t1 lists the room: the meeting lasts.
        rooms.insert("t1".into(), vec!["m-1".into()]);
        let Lookup::Kept(kept) = m.lookup(&fleet(&s, &rooms, 1000, grace), "m-1", home) else {
            panic!("the cascade SFU's listing did not keep the meeting");
        };
        assert_eq!(kept.cascades.get("tokyo").map(String::as_str), Some("t1"));
        // p1 dies: the meeting moves (to Tokyo, the only site left), and the Tokyo cascade,
        // now the meeting's own site, is dropped.
        if let Some(n) = s.nodes.get_mut("p1") {
            n.up = false;
        }
        let Lookup::Moved { meeting, .. } = m.lookup(&fleet(&s, &rooms, 1100, grace), "m-1", home)
        else {
            panic!("not moved");
        };
        assert_eq!(meeting.node, "t2");
        assert!(meeting.cascades.is_empty(), "{meeting:?}");
        let f = fleet(&s, &rooms, 1100, grace);
        assert_eq!(m.cascade(&f, "m-1", Some("tokyo")), None);
        // Nobody lists it any more: it ends.
        rooms.clear();
        assert_eq!(
            m.lookup(&fleet(&s, &rooms, 1100 + grace, grace), "m-1", home),
            Lookup::Unknown
        );
    }

    #[test]
    fn urls_follow_the_sfu_address() {
        let (whip, whep, ws) = sfu_urls("https://sfu.example:8443/", "m-1");
        assert_eq!(whip, "https://sfu.example:8443/whip/m-1");
        assert_eq!(whep, "https://sfu.example:8443/whep/m-1");
        assert_eq!(ws, "wss://sfu.example:8443/rooms/m-1/ws");
        assert_eq!(sfu_urls("http://a:1", "r").2, "ws://a:1/rooms/r/ws");
    }

    proptest! {
        /// Whatever the loads and verdicts: the chosen SFU is up; it is at the first site
        /// (in order) that has an up SFU below the threshold, and no SFU there is less loaded;
        /// with none below anywhere it is the least loaded up SFU.
        #[test]
        fn the_choice_is_up_nearest_and_least_loaded(
            nodes in proptest::collection::vec((0usize..3, 0u64..200, 0.0f64..1.0, any::<bool>()), 0..12),
            home in 0usize..4,
        ) {
            let sites = ["paris", "berlin", "tokyo"];
            let s = snap(nodes.iter().enumerate().map(|(i, (site, peers, cpu, up))| {
                sfu(&format!("n{i:02}"), sites[*site], *peers, *cpu, *up)
            }).collect());
            let home = sites.get(home).copied();
            let chosen = choose_sfu(&s, home, &POLICY);
            let up: Vec<&NodeState> = s.nodes.values().filter(|n| n.up).collect();
            prop_assert_eq!(chosen.is_some(), !up.is_empty());
            let Some(c) = chosen else { return Ok(()); };
            prop_assert!(c.up);
            let load = |n: &NodeState| sfu_load(n, &POLICY);
            let below = |n: &&&NodeState| load(n) < POLICY.load_threshold;
            let first_site = home.and_then(|_| {
                site_order(&s, home).into_iter().find(|site| up.iter().filter(below).any(|n| &n.site == site))
            });
            match first_site {
                Some(site) => {
                    prop_assert_eq!(&c.site, &site);
                    prop_assert!(up.iter().filter(|n| n.site == site).filter(below).all(|n| load(c) <= load(n)));
                }
                None => prop_assert!(up.iter().all(|n| load(c) <= load(n))),
            }
        }

        /// Whatever the loads, verdicts and record: a cascade SFU is usable, at the
        /// participant's home site, which is not the meeting's; it is the recorded one when
        /// that is usable, else no SFU of the site below the threshold is less loaded (none
        /// below: none there is); and there is one whenever the site has a usable SFU.
        #[test]
        fn the_cascade_is_at_home_usable_and_least_loaded_or_the_recorded_one(
            nodes in proptest::collection::vec((0usize..3, 0u64..200, 0.0f64..1.0, any::<bool>()), 1..12),
            meeting_node in 0usize..12,
            recorded in proptest::option::of(0usize..12),
            home in 0usize..4,
        ) {
            let sites = ["paris", "berlin", "tokyo"];
            let s = snap(nodes.iter().enumerate().map(|(i, (site, peers, cpu, up))| {
                sfu(&format!("n{i:02}"), sites[*site], *peers, *cpu, *up)
            }).collect());
            let id = |i: usize| format!("n{:02}", i % nodes.len());
            let mut m = meeting_on(&id(meeting_node));
            let home = sites.get(home).copied();
            if let (Some(r), Some(h)) = (recorded, home) {
                m.cascades.insert(h.to_owned(), id(r));
            }
            let meeting_site = s.nodes.get(&m.node).map(|n| n.site.clone());
            let chosen = choose_cascade(&s, &m, home, &POLICY);
            let at_home: Vec<&NodeState> = s.nodes.values()
                .filter(|n| n.up && Some(n.site.as_str()) == home)
                .collect();
            let wanted = home.is_some() && meeting_site.as_deref() != home && !at_home.is_empty();
            prop_assert_eq!(chosen.is_some(), wanted);
            let Some(c) = chosen else { return Ok(()); };
            prop_assert!(c.up);
            prop_assert_eq!(Some(c.site.as_str()), home);
            let recorded_usable = home
                .and_then(|h| m.cascades.get(h))
                .and_then(|r| s.nodes.get(r))
                .filter(|n| n.up && Some(n.site.as_str()) == home);
            match recorded_usable {
                Some(r) => prop_assert_eq!(&c.id, &r.id),
                None => {
                    let load = |n: &NodeState| sfu_load(n, &POLICY);
                    let below: Vec<&&NodeState> = at_home.iter().filter(|n| load(n) < POLICY.load_threshold).collect();
                    if below.is_empty() {
                        prop_assert!(at_home.iter().all(|n| load(c) <= load(n)));
                    } else {
                        prop_assert!(load(c) < POLICY.load_threshold);
                        prop_assert!(below.iter().all(|n| load(c) <= load(n)));
                    }
                }
            }
        }
    }
}
