//! What this replica received but could not write to its database yet: the latest heartbeat
//! of each node and the sites first named by a heartbeat. A heartbeat counts the moment it is
//! received (health is judged from what a replica receives, never from its own storage); its
//! write waits here while the database is out of reach and is flushed, oldest state replaced
//! by newest, once it answers again, so that the other replicas learn what this one saw. No
//! IO of its own: `crate::replica` flushes it through the store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use estuary_common::cp::{Heartbeat, Site};

use crate::store::{Store, StoreError};

#[derive(Default)]
struct Queued {
    sites: BTreeMap<String, Site>,
    /// Node id -> (latest heartbeat, when it was received).
    nodes: BTreeMap<String, (Heartbeat, u64)>,
}

/// The queue; one per control plane.
#[derive(Default)]
pub struct Pending {
    queued: Mutex<Queued>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pending({})", self.len())
    }
}

impl Pending {
    /// Queues a site's write.
    pub fn site(&self, site: Site) {
        if let Ok(mut q) = self.queued.lock() {
            q.sites.insert(site.name.clone(), site);
        }
    }

    /// Queues a node's heartbeat received at `at`; it replaces an older one of that node.
    pub fn node(&self, hb: Heartbeat, at: u64) {
        if let Ok(mut q) = self.queued.lock() {
            match q.nodes.get(&hb.node) {
                Some((_, queued_at)) if *queued_at > at => {}
                _ => {
                    q.nodes.insert(hb.node.clone(), (hb, at));
                }
            }
        }
    }

    /// Writes waiting.
    pub fn len(&self) -> usize {
        self.queued
            .lock()
            .map(|q| q.sites.len() + q.nodes.len())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The nodes whose heartbeat is waiting to be written: a replica folding in the database
    /// must not take them for removed elsewhere.
    pub fn node_ids(&self) -> BTreeSet<String> {
        self.queued
            .lock()
            .map(|q| q.nodes.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Writes everything queued, sites first; what was written leaves the queue (unless a
    /// newer heartbeat of the node arrived meanwhile). Stops at the first failure, which is
    /// returned; how many writes were made otherwise.
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let (sites, nodes) = match self.queued.lock() {
            Ok(q) => (q.sites.clone(), q.nodes.clone()),
            Err(_) => return Ok(0),
        };
        let mut written = 0;
        for (name, site) in sites {
            store.put_site(&site).await?;
            if let Ok(mut q) = self.queued.lock()
                && q.sites.get(&name) == Some(&site)
            {
                q.sites.remove(&name);
            }
            written += 1;
        }
        for (id, (hb, at)) in nodes {
            store.put_node(&hb, at).await?;
            if let Ok(mut q) = self.queued.lock()
                && q.nodes.get(&id).is_some_and(|(_, a)| *a == at)
            {
                q.nodes.remove(&id);
            }
            written += 1;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(node: &str) -> Heartbeat {
        serde_json::from_value(serde_json::json!({
            "node": node, "site": "lab", "role": "edge", "addresses": {},
            "capacity": {"gbps": 1.0, "disk_bytes": 0}, "ready": true,
            "load": {}, "usage": {}, "version": "1", "inventory": []
        }))
        .expect("heartbeat")
    }

    #[test]
    fn the_newest_heartbeat_of_a_node_is_kept() {
        let p = Pending::default();
        p.node(beat("e1"), 10);
        p.node(beat("e1"), 12);
        p.node(beat("e1"), 11);
        p.node(beat("e2"), 5);
        p.site(Site {
            name: "lab".into(),
            ..Site::default()
        });
        assert_eq!(p.len(), 3);
        assert_eq!(
            p.node_ids().into_iter().collect::<Vec<_>>(),
            vec!["e1".to_owned(), "e2".to_owned()]
        );
        let q = p.queued.lock().expect("lock");
        assert_eq!(q.nodes["e1"].1, 12);
    }
}
