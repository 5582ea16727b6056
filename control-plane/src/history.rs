//! The last hour of each site's bandwidth and cache hit ratio, for the dashboard's plots: one
//! point per step (10 s by default) taken from the registry's snapshot, in memory (a restart
//! starts a new hour; each replica keeps its own). Pure: time comes in as an argument.

use std::collections::{BTreeMap, VecDeque};

use estuary_common::cp::{Role, StateSnapshot};
use serde::Serialize;

/// One site at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SitePoint {
    /// Bytes per second served by the site's edges that are up (measured by the monitor where
    /// it could, else as the heartbeats say).
    pub bytes_per_second: f64,
    pub requests_per_second: f64,
    /// Cache hit ratio of the site's edges, weighted by their requests; `None` without edges
    /// that are up.
    pub hit_ratio: Option<f64>,
    pub edges_up: usize,
}

/// Every site at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub at: u64,
    pub sites: BTreeMap<String, SitePoint>,
}

/// The kept points, oldest first.
#[derive(Debug)]
pub struct History {
    step: u64,
    keep: u64,
    points: VecDeque<Point>,
}

impl History {
    /// One point per `step` seconds, kept for `keep` seconds.
    pub fn new(step: u64, keep: u64) -> Self {
        Self {
            step: step.max(1),
            keep,
            points: VecDeque::new(),
        }
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    /// Takes a point from `snap` at `now` if a step has passed since the last one; drops
    /// points older than the kept span. Whether a point was taken.
    pub fn record(&mut self, now: u64, snap: &StateSnapshot) -> bool {
        if self
            .points
            .back()
            .is_some_and(|p| now < p.at.saturating_add(self.step))
        {
            return false;
        }
        self.points.push_back(point(now, snap));
        while self
            .points
            .front()
            .is_some_and(|p| p.at.saturating_add(self.keep) < now)
        {
            self.points.pop_front();
        }
        true
    }

    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter()
    }
}

/// The point `snap` gives at `now`.
pub fn point(now: u64, snap: &StateSnapshot) -> Point {
    let mut sites: BTreeMap<String, SitePoint> = snap
        .sites
        .keys()
        .map(|name| (name.clone(), SitePoint::default()))
        .collect();
    let mut weights: BTreeMap<&str, (f64, f64, f64, usize)> = BTreeMap::new();
    for n in snap.nodes.values() {
        if n.role != Role::Edge || !n.up {
            continue;
        }
        let load = n.polled_load.as_ref().unwrap_or(&n.load);
        let site = sites.entry(n.site.clone()).or_default();
        site.bytes_per_second += load.bytes_per_second.max(0.0);
        site.requests_per_second += load.requests_per_second.max(0.0);
        site.edges_up += 1;
        // (weighted hits, weight, plain sum, count): weighted by requests when there are any.
        let w = weights.entry(n.site.as_str()).or_default();
        let ratio = n.usage.cache_hit_ratio.clamp(0.0, 1.0);
        w.0 += ratio * load.requests_per_second.max(0.0);
        w.1 += load.requests_per_second.max(0.0);
        w.2 += ratio;
        w.3 += 1;
    }
    for (name, (hits, weight, sum, count)) in weights {
        if let Some(site) = sites.get_mut(name) {
            site.hit_ratio = Some(if weight > 0.0 {
                hits / weight
            } else {
                sum / count as f64
            });
        }
    }
    Point { at: now, sites }
}

#[cfg(test)]
mod tests {
    use super::*;
    use estuary_common::cp::{Load, NodeState, Site, Usage};

    fn edge(site: &str, up: bool, bps: f64, rps: f64, hit: f64) -> NodeState {
        NodeState {
            id: format!("{site}-{bps}"),
            site: site.into(),
            role: Role::Edge,
            addresses: Default::default(),
            capacity: Default::default(),
            up,
            down_reason: None,
            held_up: None,
            last_heartbeat: 0,
            load: Load {
                bytes_per_second: bps,
                requests_per_second: rps,
                ..Default::default()
            },
            polled_load: None,
            usage: Usage {
                disk_used_bytes: 0,
                cache_hit_ratio: hit,
            },
            version: String::new(),
            assets: vec![],
        }
    }

    fn snap(nodes: Vec<NodeState>) -> StateSnapshot {
        StateSnapshot {
            sites: ["lab", "far"]
                .into_iter()
                .map(|s| {
                    (
                        s.to_owned(),
                        Site {
                            name: s.into(),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            nodes: nodes.into_iter().map(|n| (n.id.clone(), n)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn points_sum_bandwidth_and_weigh_hit_ratio_by_requests() {
        let s = snap(vec![
            edge("lab", true, 100.0, 30.0, 1.0),
            edge("lab", true, 50.0, 10.0, 0.6),
            edge("lab", false, 999.0, 99.0, 0.0),
        ]);
        let p = point(7, &s);
        let lab = &p.sites["lab"];
        assert_eq!(lab.bytes_per_second, 150.0);
        assert_eq!(lab.edges_up, 2);
        assert!((lab.hit_ratio.unwrap_or(0.0) - 0.9).abs() < 1e-9);
        assert_eq!(p.sites["far"].hit_ratio, None);
    }

    #[test]
    fn one_point_per_step_for_the_kept_span() {
        let s = snap(vec![edge("lab", true, 1.0, 1.0, 0.5)]);
        let mut h = History::new(10, 3600);
        assert!(h.record(1000, &s));
        assert!(!h.record(1005, &s));
        assert!(h.record(1010, &s));
        for t in (1020..=1000 + 7200).step_by(10) {
            h.record(t, &s);
        }
        let ats: Vec<u64> = h.points().map(|p| p.at).collect();
        assert_eq!(ats.len(), 361);
        assert_eq!(ats.first().copied(), Some(1000 + 7200 - 3600));
    }
}
