//! Where an asset goes: inside each site, rendezvous hashing of the asset id over the site's
//! edges that are up, taking the first `replicas` that have room for it (their disk capacity
//! minus what is already placed on them). Pure, so it is tested without a network.

use std::collections::HashMap;

use estuary_common::cp::{Role, StateSnapshot};

/// Chooses (node, site) pairs for `asset` of `bytes`. `sites`: the sites to place in (`None`:
/// every site with an edge). `used`: bytes already placed per node. Errors name the sites
/// where no edge had room or was up.
pub fn place(
    asset: &str,
    bytes: u64,
    snap: &StateSnapshot,
    sites: Option<&[String]>,
    replicas: usize,
    used: &HashMap<String, u64>,
) -> Result<Vec<(String, String)>, String> {
    let mut wanted: Vec<String> = match sites {
        Some(s) => s.to_vec(),
        None => snap
            .nodes
            .values()
            .filter(|n| n.role == Role::Edge)
            .map(|n| n.site.clone())
            .collect(),
    };
    wanted.sort();
    wanted.dedup();
    if wanted.is_empty() {
        return Err("no site has an edge".into());
    }
    let mut chosen = Vec::new();
    let mut problems = Vec::new();
    for site in &wanted {
        let edges: Vec<&estuary_common::cp::NodeState> = snap
            .nodes
            .values()
            .filter(|n| n.role == Role::Edge && &n.site == site && n.up)
            .collect();
        if edges.is_empty() {
            problems.push(format!("site {site}: no edge is up"));
            continue;
        }
        let ring = hrw_hash::HrwNodes::new(edges.iter().map(|n| n.id.clone()));
        let mut taken = 0;
        for id in ring.sorted(&asset) {
            if taken == replicas {
                break;
            }
            let Some(node) = edges.iter().find(|n| &n.id == id) else {
                continue;
            };
            let room = node.capacity.disk_bytes == 0
                || used.get(id).copied().unwrap_or(0).saturating_add(bytes)
                    <= node.capacity.disk_bytes;
            if room {
                chosen.push((id.clone(), site.clone()));
                taken += 1;
            }
        }
        if taken == 0 {
            problems.push(format!("site {site}: no edge has room for {bytes} bytes"));
        } else if taken < replicas {
            tracing::warn!(site = %site, asset, replicas, placed = taken, "Fewer replicas than asked: not enough edges with room.");
        }
    }
    if chosen.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use estuary_common::cp::{Addresses, Capacity, Load, NodeState, Usage};

    fn edge(id: &str, site: &str, up: bool, disk: u64) -> (String, NodeState) {
        (
            id.into(),
            NodeState {
                id: id.into(),
                site: site.into(),
                role: Role::Edge,
                addresses: Addresses::default(),
                capacity: Capacity {
                    gbps: 10.0,
                    disk_bytes: disk,
                },
                up,
                down_reason: None,
                held_up: None,
                last_heartbeat: 0,
                load: Load::default(),
                polled_load: None,
                usage: Usage::default(),
                version: String::new(),
                assets: vec![],
            },
        )
    }

    #[test]
    fn placement_is_stable_spreads_and_respects_room_and_health() {
        let snap = StateSnapshot {
            nodes: [
                edge("a1", "a", true, 0),
                edge("a2", "a", true, 0),
                edge("a3", "a", true, 0),
                edge("b1", "b", false, 0),
                edge("c1", "c", true, 100),
            ]
            .into_iter()
            .collect(),
            ..StateSnapshot::default()
        };
        let none = HashMap::new();
        let one = place("title-1", 10, &snap, Some(&["a".into()]), 1, &none).expect("place");
        assert_eq!(one.len(), 1);
        // Stable: the same asset lands on the same edge.
        assert_eq!(
            one,
            place("title-1", 10, &snap, Some(&["a".into()]), 1, &none).expect("again")
        );
        // Different assets spread over the site's edges.
        let spread: std::collections::HashSet<String> = (0..30)
            .map(|i| {
                place(&format!("t{i}"), 10, &snap, Some(&["a".into()]), 1, &none).expect("p")[0]
                    .0
                    .clone()
            })
            .collect();
        assert_eq!(spread.len(), 3);
        assert_eq!(
            place("x", 10, &snap, Some(&["a".into()]), 2, &none)
                .expect("2")
                .len(),
            2
        );
        // A site whose only edge is down, a site without room.
        assert!(place("x", 10, &snap, Some(&["b".into()]), 1, &none).is_err());
        let full: HashMap<String, u64> = [("c1".to_owned(), 95)].into_iter().collect();
        assert!(place("x", 10, &snap, Some(&["c".into()]), 1, &full).is_err());
        assert!(place("x", 5, &snap, Some(&["c".into()]), 1, &full).is_ok());
        // Every site: the ones that work are placed.
        let all = place("x", 10, &snap, None, 1, &none).expect("all");
        assert_eq!(all.len(), 2, "{all:?}");
    }
}
