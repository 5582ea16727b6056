//! The popularity plan: from predicted views per (asset, site), choose per site the assets
//! that cover the most views within the site's disk capacity. This is a knapsack; the plan
//! takes assets by views per byte, then fills what room is left with anything that still
//! fits (the classic greedy, within a factor of the optimum that is small when assets are
//! small against a site's disk, as titles are against an edge's NVMe). Then the room left
//! buys more replicas for the most watched titles: a title expected to draw more than half
//! of one edge's fair share of the site's views gets as many copies as that share needs (up
//! to one per edge), so that no single edge carries a hit alone. Pure.

use std::collections::BTreeMap;

pub use estuary_common::api::{Demand, Pick, SitePlan};

/// A title gets another copy for each half of one edge's fair share of views it draws.
const HOT_FACTOR: f64 = 2.0;

/// How many copies a title drawing `views` of `total` views in a site of `edges` edges should
/// have: 1 to `edges`.
pub fn replicas_wanted(views: f64, total: f64, edges: usize) -> usize {
    if edges <= 1 || total <= 0.0 || views <= 0.0 {
        return 1;
    }
    let want = (views / total * edges as f64 * HOT_FACTOR).ceil();
    (want.max(1.0) as usize).min(edges)
}

/// Parses `asset,site,views` lines (a header line and blank lines are skipped).
pub fn parse_csv(text: &str) -> Result<Vec<Demand>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if n == 0 && cols.get(2).is_some_and(|v| v.parse::<f64>().is_err()) {
            continue;
        }
        let [asset, site, views] = cols[..] else {
            return Err(format!("line {}: expected asset,site,views", n + 1));
        };
        let views: f64 = views
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("line {}: views must be a number >= 0", n + 1))?;
        if asset.is_empty() || site.is_empty() {
            return Err(format!("line {}: empty asset or site", n + 1));
        }
        out.push(Demand {
            asset: asset.to_owned(),
            site: site.to_owned(),
            views,
        });
    }
    Ok(out)
}

/// Chooses per site. `sizes`: bytes per asset (unknown assets are left out);
/// `capacity`: bytes per site; `edges`: edges per site (copies of one title go to different
/// edges, so never more than that).
pub fn choose(
    demand: &[Demand],
    sizes: &BTreeMap<String, u64>,
    capacity: &BTreeMap<String, u64>,
    edges: &BTreeMap<String, usize>,
) -> BTreeMap<String, SitePlan> {
    let mut by_site: BTreeMap<String, Vec<&Demand>> = BTreeMap::new();
    for d in demand {
        by_site.entry(d.site.clone()).or_default().push(d);
    }
    let mut plans = BTreeMap::new();
    for (site, rows) in by_site {
        let cap = capacity.get(&site).copied().unwrap_or(0);
        let mut plan = SitePlan {
            capacity_bytes: cap,
            used_bytes: 0,
            chosen: Vec::new(),
            covered_views: 0.0,
            total_views: rows.iter().map(|d| d.views).sum(),
            left_out: Vec::new(),
        };
        let mut candidates: Vec<(&Demand, u64)> = Vec::new();
        for d in rows {
            match sizes.get(&d.asset) {
                Some(&b) => candidates.push((d, b)),
                None => plan
                    .left_out
                    .push((d.asset.clone(), "not found on any origin".into())),
            }
        }
        // Views per byte, most first; ties by views, then name (stable plans).
        candidates.sort_by(|(a, ab), (b, bb)| {
            let ra = a.views / (*ab).max(1) as f64;
            let rb = b.views / (*bb).max(1) as f64;
            rb.total_cmp(&ra)
                .then(b.views.total_cmp(&a.views))
                .then(a.asset.cmp(&b.asset))
        });
        for (d, bytes) in candidates {
            if plan.used_bytes.saturating_add(bytes) <= cap && d.views > 0.0 {
                plan.used_bytes += bytes;
                plan.covered_views += d.views;
                plan.chosen.push(Pick {
                    asset: d.asset.clone(),
                    views: d.views,
                    bytes,
                    replicas: 1,
                });
            } else {
                let why = if d.views == 0.0 {
                    "no predicted views".to_owned()
                } else {
                    "no room left".to_owned()
                };
                plan.left_out.push((d.asset.clone(), why));
            }
        }
        // More copies of the hits, most watched first, while room lasts.
        let n_edges = edges.get(&site).copied().unwrap_or(1);
        let mut by_views: Vec<usize> = (0..plan.chosen.len()).collect();
        by_views.sort_by(|&a, &b| plan.chosen[b].views.total_cmp(&plan.chosen[a].views));
        for i in by_views {
            let pick = &mut plan.chosen[i];
            let want = replicas_wanted(pick.views, plan.total_views, n_edges);
            while pick.replicas < want && plan.used_bytes.saturating_add(pick.bytes) <= cap {
                pick.replicas += 1;
                plan.used_bytes += pick.bytes;
            }
        }
        plans.insert(site, plan);
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_parsing() {
        let rows = parse_csv("asset,site,views\nm1, lab, 100\n\nm2,lab,5.5\n").expect("csv");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].views, 5.5);
        assert!(parse_csv("m1,lab").is_err());
        assert!(parse_csv("m1,lab,-3").is_err());
        assert!(parse_csv("m1,lab,x\nm2,lab,y").is_err());
    }

    #[test]
    fn the_plan_covers_the_most_views_that_fit() {
        let demand = parse_csv("a,s,100\nb,s,90\nc,s,80\nd,s,1\ne,t,5\nz,s,50").expect("csv");
        let sizes: BTreeMap<String, u64> = [("a", 60), ("b", 50), ("c", 40), ("d", 10), ("e", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let capacity: BTreeMap<String, u64> = [("s".to_owned(), 100), ("t".to_owned(), 0)]
            .into_iter()
            .collect();
        let plans = choose(&demand, &sizes, &capacity, &BTreeMap::new());
        let s = &plans["s"];
        // c (2.0 views/B) and b (1.8) fit in 100: 170 views; a would leave no room for either.
        let names: Vec<&str> = s.chosen.iter().map(|p| p.asset.as_str()).collect();
        assert_eq!(names, ["c", "b", "d"]);
        assert_eq!(s.covered_views, 171.0);
        assert!(s.used_bytes <= s.capacity_bytes);
        assert!(
            s.left_out
                .iter()
                .any(|(a, why)| a == "z" && why.contains("origin"))
        );
        assert!(plans["t"].chosen.is_empty());
    }

    #[test]
    fn hits_get_more_copies_within_the_room_left() {
        assert_eq!(replicas_wanted(30.0, 100.0, 2), 2);
        assert_eq!(replicas_wanted(10.0, 100.0, 2), 1);
        assert_eq!(replicas_wanted(90.0, 100.0, 4), 4);
        assert_eq!(replicas_wanted(90.0, 100.0, 1), 1);
        let demand = parse_csv("hit,s,800\nniche,s,100\nrare,s,100").expect("csv");
        let sizes: BTreeMap<String, u64> = [("hit", 10), ("niche", 10), ("rare", 10)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let capacity: BTreeMap<String, u64> = [("s".to_owned(), 45)].into_iter().collect();
        let edges: BTreeMap<String, usize> = [("s".to_owned(), 4)].into_iter().collect();
        let plan = &choose(&demand, &sizes, &capacity, &edges)["s"];
        let copies: BTreeMap<&str, usize> = plan
            .chosen
            .iter()
            .map(|p| (p.asset.as_str(), p.replicas))
            .collect();
        // Every title once (30 bytes), then the hit's extra copies while room lasts (45).
        assert_eq!(copies["niche"], 1);
        assert_eq!(copies["rare"], 1);
        assert_eq!(copies["hit"], 2);
        assert_eq!(plan.used_bytes, 40);
    }

    proptest::proptest! {
        /// Whatever the demand, sizes, capacity and edges, no site's plan uses more than its
        /// capacity, and no title has more copies than the site has edges.
        #[test]
        fn a_plan_never_exceeds_its_site(
            rows in proptest::collection::vec((0u8..12, 0u8..3, 0u32..10_000), 0..40),
            sizes in proptest::collection::vec(1u64..5_000, 12),
            caps in proptest::collection::vec(0u64..20_000, 3),
            edges in proptest::collection::vec(1usize..6, 3),
        ) {
            let demand: Vec<Demand> = rows
                .iter()
                .map(|(a, s, v)| Demand {
                    asset: format!("a{a}"),
                    site: format!("s{s}"),
                    views: f64::from(*v),
                })
                .collect();
            let sizes: BTreeMap<String, u64> = sizes
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 5 != 4)
                .map(|(i, b)| (format!("a{i}"), *b))
                .collect();
            let capacity: BTreeMap<String, u64> =
                caps.iter().enumerate().map(|(i, c)| (format!("s{i}"), *c)).collect();
            let edges: BTreeMap<String, usize> =
                edges.iter().enumerate().map(|(i, e)| (format!("s{i}"), *e)).collect();
            for (site, plan) in choose(&demand, &sizes, &capacity, &edges) {
                let used: u64 = plan.chosen.iter().map(|p| p.bytes * p.replicas as u64).sum();
                proptest::prop_assert_eq!(used, plan.used_bytes);
                proptest::prop_assert!(plan.used_bytes <= capacity[&site]);
                for p in &plan.chosen {
                    proptest::prop_assert!(p.replicas >= 1 && p.replicas <= edges[&site]);
                }
            }
        }
    }
}
