//! Whether an asset exists, so that an unknown asset id gets a 404 rather than a signed URL
//! that leads nowhere. An asset is known when an edge holds it pre-positioned (the state
//! snapshot says so), or when an origin that is up has its `asset.json`. Answers from the
//! origins are remembered for a while (found: a minute; not found: a few seconds). When no
//! origin can tell (none registered, or none answers), the asset is let through: steering
//! never blocks playback on a lookup it could not make.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use estuary_common::cp::{Role, StateSnapshot};

/// What is known about an asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Yes,
    No,
    /// Nobody could tell.
    Unsure,
}

/// How long a found asset is remembered.
const FOUND_FOR: Duration = Duration::from_secs(60);
/// How long a missing asset is remembered (short: it may be published any moment).
const MISSING_FOR: Duration = Duration::from_secs(5);
/// Entries kept at most; the cache is cleared when it grows past this.
const MAX_ENTRIES: usize = 100_000;

/// The verdict from the origins' answers: any 200 makes it known, 404 from every origin
/// makes it unknown, anything else leaves it open. Pure.
pub fn verdict(statuses: &[Option<u16>]) -> Known {
    if statuses.contains(&Some(200)) {
        Known::Yes
    } else if !statuses.is_empty() && statuses.iter().all(|s| *s == Some(404)) {
        Known::No
    } else {
        Known::Unsure
    }
}

/// The plain-HTTP base URLs of the origins that are up.
pub fn origins(snap: &StateSnapshot) -> Vec<String> {
    snap.nodes
        .values()
        .filter(|n| n.role == Role::Origin && n.up)
        .filter_map(|n| n.addresses.http.as_ref())
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect()
}

/// Whether an edge in the snapshot holds the asset.
pub fn held(snap: &StateSnapshot, asset: &str) -> bool {
    snap.nodes
        .values()
        .any(|n| n.role == Role::Edge && n.assets.iter().any(|a| a == asset))
}

/// Remembered answers.
#[derive(Debug, Default)]
pub struct Catalog {
    entries: Mutex<HashMap<String, (bool, Instant)>>,
}

impl Catalog {
    /// A remembered answer that has not expired.
    pub fn cached(&self, asset: &str, now: Instant) -> Option<bool> {
        let entries = self.entries.lock().ok()?;
        entries.get(asset).and_then(|(found, at)| {
            let ttl = if *found { FOUND_FOR } else { MISSING_FOR };
            (now.duration_since(*at) < ttl).then_some(*found)
        })
    }

    /// Remembers a definite answer.
    pub fn remember(&self, asset: &str, found: bool, now: Instant) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(asset.to_owned(), (found, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_copy_makes_it_known_and_only_unanimous_404s_make_it_unknown() {
        assert_eq!(verdict(&[Some(404), Some(200)]), Known::Yes);
        assert_eq!(verdict(&[Some(404), Some(404)]), Known::No);
        assert_eq!(verdict(&[Some(404), None]), Known::Unsure);
        assert_eq!(verdict(&[Some(503)]), Known::Unsure);
        assert_eq!(verdict(&[]), Known::Unsure);
    }

    #[test]
    fn answers_expire() {
        let c = Catalog::default();
        let t0 = Instant::now();
        c.remember("a", true, t0);
        c.remember("b", false, t0);
        assert_eq!(c.cached("a", t0 + Duration::from_secs(30)), Some(true));
        assert_eq!(c.cached("b", t0 + Duration::from_secs(1)), Some(false));
        assert_eq!(c.cached("b", t0 + Duration::from_secs(6)), None);
        assert_eq!(c.cached("a", t0 + Duration::from_secs(61)), None);
        assert_eq!(c.cached("c", t0), None);
    }
}
