//! The live registry: sites, nodes with their last heartbeat, and each node's health verdict,
//! behind one lock, with the state version that steering and operators long-poll on. No IO:
//! the API and the monitor feed it, the store persists what must survive a restart.

use std::collections::BTreeMap;
use std::sync::Mutex;

use estuary_common::cp::{Heartbeat, NodeState, Site, StateSnapshot};
use tokio::sync::watch;

use crate::health::{Change, Tracker};

struct NodeEntry {
    heartbeat: Heartbeat,
    last_heartbeat: u64,
    tracker: Tracker,
    down_reason: Option<String>,
    /// Down for missing heartbeats alone (the node answered its polls, or has no admin
    /// address to poll): what the panic threshold may hold in rotation.
    down_silent: bool,
    /// Load from the monitor's own polls of the node's `/metrics`.
    polled_load: Option<estuary_common::cp::Load>,
}

impl NodeEntry {
    /// A node just seen (registered, loaded from the store, or folded in from another
    /// replica): down until the monitor has checked it.
    fn new(heartbeat: Heartbeat, last_heartbeat: u64, down_after: u32, up_after: u32) -> Self {
        Self {
            heartbeat,
            last_heartbeat,
            tracker: Tracker::new(down_after, up_after),
            down_reason: Some("not checked yet".into()),
            down_silent: false,
            polled_load: None,
        }
    }
}

struct Inner {
    version: u64,
    sites: BTreeMap<String, Site>,
    nodes: BTreeMap<String, NodeEntry>,
}

/// A failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    /// Only the heartbeats are missing: the node answered its `/readyz` poll (or has no
    /// admin address, so there is nothing else to go by).
    pub silent_only: bool,
}

impl Failure {
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            silent_only: false,
        }
    }

    pub fn silence(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            silent_only: true,
        }
    }
}

/// A node to check, as the monitor needs it.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: String,
    pub admin: Option<String>,
    pub last_heartbeat: u64,
    pub ready: bool,
}

/// What a heartbeat changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A node never seen before (or since it was removed).
    New,
    /// Its site, role, addresses or capacity changed.
    Changed,
    /// Only its figures moved.
    Same,
}

/// Whether a new heartbeat changes what the state feed says beyond figures: site, role,
/// addresses, capacity or the assets present.
fn matters(old: &Heartbeat, new: &Heartbeat) -> bool {
    let present = |h: &Heartbeat| -> Vec<String> {
        h.inventory
            .iter()
            .filter(|i| i.state == "present")
            .map(|i| i.asset.clone())
            .collect()
    };
    old.site != new.site
        || old.role != new.role
        || old.addresses != new.addresses
        || old.capacity != new.capacity
        || present(old) != present(new)
}

/// The registry.
pub struct Registry {
    inner: Mutex<Inner>,
    version: watch::Sender<u64>,
    down_after: u32,
    up_after: u32,
    /// See `[health] panic_threshold`.
    panic_threshold: f64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    /// A registry holding what the store kept; every node starts down until it is checked.
    pub fn new(
        sites: Vec<Site>,
        nodes: Vec<(Heartbeat, u64)>,
        down_after: u32,
        up_after: u32,
    ) -> Self {
        let inner = Inner {
            version: 1,
            sites: sites.into_iter().map(|s| (s.name.clone(), s)).collect(),
            nodes: nodes
                .into_iter()
                .map(|(hb, at)| {
                    (
                        hb.node.clone(),
                        NodeEntry::new(hb, at, down_after, up_after),
                    )
                })
                .collect(),
        };
        Self {
            inner: Mutex::new(inner),
            version: watch::channel(1).0,
            down_after,
            up_after,
            panic_threshold: 1.0,
        }
    }

    /// The largest share of a site's (or the fleet's) edges that missing heartbeats alone
    /// may take out of rotation (1.0: any share).
    pub fn with_panic_threshold(mut self, share: f64) -> Self {
        self.panic_threshold = share;
        self
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Option<T> {
        self.inner.lock().ok().map(|mut g| f(&mut g))
    }

    fn bump(&self, inner: &mut Inner) -> u64 {
        inner.version += 1;
        let v = inner.version;
        self.version.send_replace(v);
        v
    }

    /// The current state version.
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Wakes when the version changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Adds or replaces a site; `true` when it changed anything.
    pub fn upsert_site(&self, site: Site) -> bool {
        self.with(|inner| {
            if inner.sites.get(&site.name) == Some(&site) {
                return false;
            }
            inner.sites.insert(site.name.clone(), site);
            self.bump(inner);
            true
        })
        .unwrap_or(false)
    }

    pub fn has_site(&self, name: &str) -> bool {
        self.with(|inner| inner.sites.contains_key(name))
            .unwrap_or(false)
    }

    /// Records a heartbeat at `now` (unix seconds).
    /// How long ago another live process of node `id` sent its last heartbeat, when one did
    /// less than `takeover_after` seconds ago: `instance` would then be a second process
    /// claiming the same id. A process that left (its last heartbeat said `leaving`) or one
    /// whose heartbeats carry no instance holds nothing.
    pub fn held_by_other(
        &self,
        id: &str,
        instance: &str,
        now: u64,
        takeover_after: u64,
    ) -> Option<u64> {
        self.with(|inner| {
            let entry = inner.nodes.get(id)?;
            let held = &entry.heartbeat;
            let age = now.saturating_sub(entry.last_heartbeat);
            (!held.instance.is_empty()
                && held.instance != instance
                && !held.leaving
                && age < takeover_after)
                .then_some(age)
        })
        .flatten()
    }

    /// Whether node `id` is registered, and how many nodes of `site` pass `counted`.
    pub fn census(&self, id: &str, site: &str, counted: impl Fn(&str) -> bool) -> (bool, usize) {
        self.with(|inner| {
            let known = inner.nodes.contains_key(id);
            let n = inner
                .nodes
                .iter()
                .filter(|(node, e)| e.heartbeat.site == site && counted(node))
                .count();
            (known, n)
        })
        .unwrap_or((true, 0))
    }

    pub fn heartbeat(&self, hb: Heartbeat, now: u64) -> (u64, Seen) {
        let (down_after, up_after) = (self.down_after, self.up_after);
        self.with(|inner| {
            let seen = match inner.nodes.get_mut(&hb.node) {
                Some(entry) => {
                    let changed = matters(&entry.heartbeat, &hb);
                    entry.heartbeat = hb;
                    entry.last_heartbeat = now;
                    if changed { Seen::Changed } else { Seen::Same }
                }
                None => {
                    inner.nodes.insert(
                        hb.node.clone(),
                        NodeEntry::new(hb, now, down_after, up_after),
                    );
                    Seen::New
                }
            };
            let v = if seen == Seen::Same {
                inner.version
            } else {
                self.bump(inner)
            };
            (v, seen)
        })
        .unwrap_or((0, Seen::Same))
    }

    /// Folds in what the shared database holds (heartbeats other replicas received, sites
    /// and removals they made), read at `read_at` (unix seconds, taken before the read).
    /// Newer heartbeats replace older ones; a node missing from the database is forgotten
    /// unless its last heartbeat here is as recent as the read or is still to be written
    /// (`keep`). Whether anything changed.
    pub fn merge(
        &self,
        sites: Vec<Site>,
        nodes: Vec<(Heartbeat, u64)>,
        read_at: u64,
        keep: &std::collections::BTreeSet<String>,
    ) -> bool {
        let (down_after, up_after) = (self.down_after, self.up_after);
        self.with(|inner| {
            let mut changed = false;
            for site in sites {
                if inner.sites.get(&site.name) != Some(&site) {
                    inner.sites.insert(site.name.clone(), site);
                    changed = true;
                }
            }
            let stored: std::collections::BTreeSet<String> =
                nodes.iter().map(|(hb, _)| hb.node.clone()).collect();
            for (hb, at) in nodes {
                match inner.nodes.get_mut(&hb.node) {
                    Some(entry) if at > entry.last_heartbeat => {
                        changed |= matters(&entry.heartbeat, &hb);
                        entry.heartbeat = hb;
                        entry.last_heartbeat = at;
                    }
                    Some(_) => {}
                    None => {
                        inner.nodes.insert(
                            hb.node.clone(),
                            NodeEntry::new(hb, at, down_after, up_after),
                        );
                        changed = true;
                    }
                }
            }
            let before = inner.nodes.len();
            inner.nodes.retain(|id, e| {
                stored.contains(id) || e.last_heartbeat >= read_at || keep.contains(id)
            });
            changed |= inner.nodes.len() != before;
            if changed {
                self.bump(inner);
            }
            changed
        })
        .unwrap_or(false)
    }

    /// Forgets a node; `true` if it was known.
    pub fn remove_node(&self, id: &str) -> bool {
        self.with(|inner| {
            let known = inner.nodes.remove(id).is_some();
            if known {
                self.bump(inner);
            }
            known
        })
        .unwrap_or(false)
    }

    /// What a node reported holding in its last heartbeat.
    pub fn inventory(&self, id: &str) -> Vec<estuary_common::cp::InventoryItem> {
        self.with(|inner| {
            inner
                .nodes
                .get(id)
                .map(|e| e.heartbeat.inventory.clone())
                .unwrap_or_default()
        })
        .unwrap_or_default()
    }

    /// The rooms every node listed in its last heartbeat (SFUs; others list none).
    pub fn rooms(&self) -> std::collections::HashMap<String, Vec<String>> {
        self.with(|inner| {
            inner
                .nodes
                .iter()
                .filter(|(_, e)| !e.heartbeat.rooms.is_empty())
                .map(|(id, e)| (id.clone(), e.heartbeat.rooms.clone()))
                .collect()
        })
        .unwrap_or_default()
    }

    /// The nodes to check now.
    pub fn targets(&self) -> Vec<Target> {
        self.with(|inner| {
            inner
                .nodes
                .values()
                .map(|e| Target {
                    id: e.heartbeat.node.clone(),
                    admin: e.heartbeat.addresses.admin.clone(),
                    last_heartbeat: e.last_heartbeat,
                    ready: e.heartbeat.ready,
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// Feeds one check result; a change of verdict bumps the version and is returned.
    pub fn observe(&self, id: &str, result: Result<(), Failure>) -> Option<Change> {
        self.with(|inner| {
            let entry = inner.nodes.get_mut(id)?;
            let was_silent = entry.down_silent;
            let change = entry.tracker.observe(result.is_ok());
            match (&result, change) {
                (Err(f), Some(Change::Down)) => {
                    entry.down_reason = Some(f.reason.clone());
                    entry.down_silent = f.silent_only;
                }
                (_, Some(Change::Up)) => {
                    entry.down_reason = None;
                    entry.down_silent = false;
                }
                // Down for silence, and now failing its polls too: down for good reason.
                (Err(f), None) if was_silent && !f.silent_only && !entry.tracker.is_up() => {
                    entry.down_reason = Some(f.reason.clone());
                    entry.down_silent = false;
                }
                _ => {}
            }
            if change.is_some() || was_silent != entry.down_silent {
                self.bump(inner);
            }
            change
        })
        .flatten()
    }

    /// The edges kept in rotation by the panic threshold, each with why: per site, when
    /// missing heartbeats alone took more than the threshold's share of its edges out, those
    /// edges stay in; then the same over the whole fleet.
    fn held_up(&self, inner: &Inner) -> BTreeMap<String, String> {
        let mut held = BTreeMap::new();
        if self.panic_threshold >= 1.0 {
            return held;
        }
        let edges: Vec<&NodeEntry> = inner
            .nodes
            .values()
            .filter(|e| e.heartbeat.role == estuary_common::cp::Role::Edge)
            .collect();
        let silent = |e: &NodeEntry| !e.tracker.is_up() && e.down_silent;
        let too_many = |out: usize, of: usize| out as f64 > self.panic_threshold * of as f64;
        let mut sites: BTreeMap<&str, (usize, Vec<&str>)> = BTreeMap::new();
        for e in &edges {
            let s = sites.entry(e.heartbeat.site.as_str()).or_default();
            s.0 += 1;
            if silent(e) {
                s.1.push(e.heartbeat.node.as_str());
            }
        }
        for (site, (of, out)) in &sites {
            if too_many(out.len(), *of) {
                for id in out {
                    held.insert(
                        (*id).to_owned(),
                        format!(
                            "heartbeats are missing from {} of site {site:?}'s {of} edges, more than the panic threshold ({}): kept in rotation",
                            out.len(),
                            self.panic_threshold
                        ),
                    );
                }
            }
        }
        let out: Vec<&str> = edges
            .iter()
            .filter(|e| silent(e))
            .map(|e| e.heartbeat.node.as_str())
            .collect();
        if too_many(out.len(), edges.len()) {
            for id in &out {
                held.entry((*id).to_owned()).or_insert_with(|| {
                    format!(
                        "heartbeats are missing from {} of the fleet's {} edges, more than the panic threshold ({}): kept in rotation",
                        out.len(),
                        edges.len(),
                        self.panic_threshold
                    )
                });
            }
        }
        held
    }

    /// Where the panic threshold holds edges in rotation now: the sites (and `*` for the
    /// whole fleet), each with the edges held.
    pub fn panicking(&self) -> BTreeMap<String, Vec<String>> {
        self.with(|inner| {
            let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (id, why) in self.held_up(inner) {
                let scope = match inner.nodes.get(&id) {
                    Some(e) if why.contains("of site") => e.heartbeat.site.clone(),
                    _ => "*".to_owned(),
                };
                out.entry(scope).or_default().push(id);
            }
            out
        })
        .unwrap_or_default()
    }

    /// Records the load the monitor measured from the node's metrics (figures only: the
    /// version does not move).
    pub fn set_polled_load(&self, id: &str, load: estuary_common::cp::Load) {
        self.with(|inner| {
            if let Some(entry) = inner.nodes.get_mut(id) {
                entry.polled_load = Some(load);
            }
        });
    }

    /// The snapshot served at `/v1/state`.
    pub fn snapshot(&self, now: u64) -> StateSnapshot {
        self.with(|inner| {
            let mut held = self.held_up(inner);
            StateSnapshot {
                version: inner.version,
                generated_at: now,
                sites: inner.sites.clone(),
                nodes: inner
                    .nodes
                    .values()
                    .map(|e| {
                        let hb = &e.heartbeat;
                        let held_up = held.remove(&hb.node);
                        let up = e.tracker.is_up() || held_up.is_some();
                        (
                            hb.node.clone(),
                            NodeState {
                                id: hb.node.clone(),
                                site: hb.site.clone(),
                                role: hb.role,
                                addresses: hb.addresses.clone(),
                                capacity: hb.capacity.clone(),
                                up,
                                down_reason: (!up).then(|| e.down_reason.clone()).flatten(),
                                held_up,
                                last_heartbeat: e.last_heartbeat,
                                load: hb.load.clone(),
                                polled_load: e.polled_load.clone(),
                                usage: hb.usage.clone(),
                                version: hb.version.clone(),
                                assets: hb
                                    .inventory
                                    .iter()
                                    .filter(|i| i.state == "present")
                                    .map(|i| i.asset.clone())
                                    .collect(),
                            },
                        )
                    })
                    .collect(),
            }
        })
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use estuary_common::cp::Role;

    fn beat(node: &str, admin: &str) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            site: "lab".into(),
            role: Role::Edge,
            addresses: estuary_common::cp::Addresses {
                admin: Some(admin.into()),
                ..Default::default()
            },
            capacity: Default::default(),
            ready: true,
            load: Default::default(),
            usage: Default::default(),
            version: "1".into(),
            inventory: vec![],
            rooms: vec![],
            instance: String::new(),
            leaving: false,
        }
    }

    #[test]
    fn versions_move_on_changes_that_matter_only() {
        let r = Registry::new(vec![], vec![], 2, 1);
        let v0 = r.version();
        let (v1, seen) = r.heartbeat(beat("e1", "http://a"), 10);
        assert_eq!((seen, v1 > v0), (Seen::New, true));
        let mut figures = beat("e1", "http://a");
        figures.load.connections = 99;
        assert_eq!(r.heartbeat(figures, 11), (v1, Seen::Same));
        let (v2, seen) = r.heartbeat(beat("e1", "http://b"), 12);
        assert_eq!((seen, v2 > v1), (Seen::Changed, true));
        assert!(!r.snapshot(12).nodes["e1"].up);
        assert_eq!(r.observe("e1", Ok(())), Some(Change::Up));
        assert!(r.version() > v2);
        assert!(r.snapshot(12).nodes["e1"].up);
        assert_eq!(r.observe("e1", Err(Failure::new("refused"))), None);
        assert_eq!(
            r.observe("e1", Err(Failure::new("refused"))),
            Some(Change::Down)
        );
        let s = r.snapshot(13);
        assert_eq!(s.nodes["e1"].down_reason.as_deref(), Some("refused"));
        assert!(r.upsert_site(Site {
            name: "lab".into(),
            ..Default::default()
        }));
        assert!(!r.upsert_site(Site {
            name: "lab".into(),
            ..Default::default()
        }));
        assert!(r.remove_node("e1"));
        assert!(r.snapshot(14).nodes.is_empty());
    }

    #[test]
    fn merging_takes_newer_heartbeats_and_removals_but_keeps_fresh_local_nodes() {
        let r = Registry::new(vec![], vec![], 2, 1);
        r.heartbeat(beat("e1", "http://a"), 100);
        r.heartbeat(beat("e2", "http://b"), 100);
        let v = r.version();
        // Another replica saw e1 later with a new address, and e3 registered there.
        let stored = vec![
            (beat("e1", "http://a2"), 105),
            (beat("e2", "http://b"), 90),
            (beat("e3", "http://c"), 104),
        ];
        assert!(r.merge(vec![], stored.clone(), 106, &Default::default()));
        assert!(r.version() > v);
        let s = r.snapshot(106);
        assert_eq!(s.nodes["e1"].addresses.admin.as_deref(), Some("http://a2"));
        assert_eq!(s.nodes["e1"].last_heartbeat, 105);
        // An older stored heartbeat does not roll a node back.
        assert_eq!(s.nodes["e2"].last_heartbeat, 100);
        assert!(!s.nodes["e3"].up);
        assert!(!r.merge(vec![], stored, 106, &Default::default()));
        // e2 was deleted elsewhere: gone, unless it sent a heartbeat here since the read.
        r.heartbeat(beat("e3", "http://c"), 110);
        let only_e1 = vec![(beat("e1", "http://a2"), 105)];
        assert!(r.merge(vec![], only_e1, 108, &Default::default()));
        let s = r.snapshot(110);
        assert!(s.nodes.contains_key("e1") && s.nodes.contains_key("e3"));
        assert!(!s.nodes.contains_key("e2"));
    }

    #[test]
    fn missing_heartbeats_alone_never_take_more_than_the_threshold_out() {
        let r = Registry::new(vec![], vec![], 1, 1).with_panic_threshold(0.5);
        for id in ["e1", "e2", "e3", "e4"] {
            r.heartbeat(beat(id, "http://a"), 10);
            r.observe(id, Ok(()));
        }
        let silence = || Err(Failure::silence("no heartbeat for 30 s"));
        // One of four silent: within the threshold, out.
        r.observe("e1", silence());
        let s = r.snapshot(40);
        assert!(!s.nodes["e1"].up && s.nodes["e1"].held_up.is_none());
        assert!(r.panicking().is_empty());
        // Two of four: still within (at most half).
        r.observe("e2", silence());
        assert!(!r.snapshot(40).nodes["e2"].up);
        // Three of four: past it, so all three silent ones stay in, and it alarms.
        r.observe("e3", silence());
        let s = r.snapshot(40);
        for id in ["e1", "e2", "e3"] {
            assert!(s.nodes[id].up, "{id}");
            let why = s.nodes[id].held_up.as_deref().unwrap_or_default();
            assert!(why.contains("3 of site \"lab\"'s 4 edges"), "{why}");
        }
        assert_eq!(r.panicking()["lab"], vec!["e1", "e2", "e3"]);
        // A node failing its polls too is down for a reason, held or not.
        r.observe("e3", Err(Failure::new("readyz: connection refused")));
        let s = r.snapshot(40);
        assert!(!s.nodes["e3"].up);
        assert_eq!(
            s.nodes["e3"].down_reason.as_deref(),
            Some("readyz: connection refused")
        );
        // Now two silent of four: back within the threshold, they go out.
        assert!(!s.nodes["e1"].up && !s.nodes["e2"].up);
        // Off at 1.0.
        let r = Registry::new(vec![], vec![], 1, 1);
        r.heartbeat(beat("e1", "http://a"), 10);
        r.observe("e1", Ok(()));
        r.observe("e1", silence());
        assert!(!r.snapshot(40).nodes["e1"].up);
    }
}
