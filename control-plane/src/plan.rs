//! The popularity plan: from predicted views per (asset, site), choose per site the assets
//! that cover the most views within the site's disk capacity. This is a knapsack; the plan
//! takes assets by views per byte, then fills what room is left with anything that still
//! fits (the classic greedy, within a factor of the optimum that is small when assets are
//! small against a site's disk, as titles are against an edge's NVMe). Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One line of the popularity file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    pub asset: String,
    pub site: String,
    pub views: f64,
}

/// One chosen asset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pick {
    pub asset: String,
    pub views: f64,
    pub bytes: u64,
}

/// The plan of one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SitePlan {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub chosen: Vec<Pick>,
    pub covered_views: f64,
    pub total_views: f64,
    /// Assets left out (no room, or unknown size), with why.
    pub left_out: Vec<(String, String)>,
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
/// `capacity`: bytes per site.
pub fn choose(
    demand: &[Demand],
    sizes: &BTreeMap<String, u64>,
    capacity: &BTreeMap<String, u64>,
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
        let plans = choose(&demand, &sizes, &capacity);
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
}
