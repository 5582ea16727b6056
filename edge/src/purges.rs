//! Prefix purges: the cached objects an operator's `DELETE /cache/<prefix>*` took out, kept
//! across restarts in the purge log.
//!
//! Every cache lookup asks whether a prefix purge covers the object it found, so that question
//! costs what the path's length allows and never what the number of purges on record does:
//! the purges are a map from prefix to the time of its newest purge, plus the set of prefix
//! lengths on record, and a lookup probes the map once for each of those lengths that fits in
//! the path (at most the path's length plus one probes, whatever the count of purges). A
//! prefix is a string prefix, not a folder (`/v/ab*` covers `/v/abc/...`), so every length is a
//! candidate, not only those that end at a `/`.
//!
//! The record a lookup reads is an immutable snapshot swapped in by each purge: a lookup never
//! takes a lock. The purge log (a JSON list, replaced atomically: temporary file, fsync,
//! rename) is written on the blocking pool under a lock that only purges take, so writes stay
//! in order and a purge answers once its purge is durable.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The prefix purges on record.
#[derive(Debug, Clone, Default)]
pub struct PrefixPurges {
    /// The time (unix seconds) of the newest purge of each prefix.
    at: HashMap<String, u64>,
    /// How many prefixes on record have each length: the lengths a lookup probes.
    lengths: BTreeMap<usize, usize>,
}

/// What a lookup found, and how many prefixes it probed to find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub purged: bool,
    pub probes: usize,
}

impl PrefixPurges {
    /// The purges of a purge log's list (the newest time of a prefix listed twice).
    pub fn from_list(list: Vec<(String, u64)>) -> Self {
        let mut purges = Self::default();
        for (prefix, at) in list {
            let newest = purges.at.get(&prefix).map_or(at, |old| at.max(*old));
            purges.put(prefix, newest);
        }
        purges
    }

    /// The list the purge log holds, sorted by prefix.
    pub fn to_list(&self) -> Vec<(String, u64)> {
        let mut list: Vec<(String, u64)> = self.at.iter().map(|(p, t)| (p.clone(), *t)).collect();
        list.sort();
        list
    }

    /// How many prefixes are on record.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Records a purge of every path starting with `prefix`, at `at`. The prefixes under it are
    /// dropped: the new purge covers all that they covered. (Linear in the purges on record;
    /// purges are rare, lookups are not.)
    pub fn insert(&mut self, prefix: String, at: u64) {
        let under: Vec<String> = self
            .at
            .keys()
            .filter(|old| old.starts_with(prefix.as_str()))
            .cloned()
            .collect();
        for old in under {
            self.remove(&old);
        }
        self.put(prefix, at);
    }

    /// Whether a purge covers an object of `path` stored at `stored_at` (unix seconds).
    pub fn covers(&self, path: &str, stored_at: u64) -> bool {
        self.lookup(path, stored_at).purged
    }

    /// [`Self::covers`], with the number of prefixes probed.
    pub fn lookup(&self, path: &str, stored_at: u64) -> Probe {
        let mut probes = 0;
        for &len in self.lengths.range(..=path.len()).map(|(len, _)| len) {
            let Some(prefix) = path.get(..len) else {
                continue;
            };
            probes += 1;
            if self.at.get(prefix).is_some_and(|at| stored_at <= *at) {
                return Probe {
                    purged: true,
                    probes,
                };
            }
        }
        Probe {
            purged: false,
            probes,
        }
    }

    fn put(&mut self, prefix: String, at: u64) {
        let len = prefix.len();
        if self.at.insert(prefix, at).is_none() {
            *self.lengths.entry(len).or_default() += 1;
        }
    }

    fn remove(&mut self, prefix: &str) {
        if self.at.remove(prefix).is_some()
            && let Some(count) = self.lengths.get_mut(&prefix.len())
        {
            *count -= 1;
            if *count == 0 {
                self.lengths.remove(&prefix.len());
            }
        }
    }
}

/// Why the purge log could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PurgeLogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a list of prefix purges: {source}")]
    Format {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The prefix purges in force, shared by every request, and their purge log.
#[derive(Debug, Default)]
pub struct PurgeRecord {
    /// The purges as of the last purge; lookups read it without a lock.
    current: ArcSwap<PrefixPurges>,
    /// Taken by purges only, never by a lookup: one purge at a time, log writes in order.
    writer: tokio::sync::Mutex<()>,
    log: Option<PathBuf>,
}

impl PurgeRecord {
    /// A record kept in memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A record kept in `file`, with the purges made before a restart. A file that cannot be
    /// read is an error, not an empty list, so that purged content never comes back silently.
    pub fn open(file: PathBuf) -> Result<Self, PurgeLogError> {
        let purges = match std::fs::read(&file) {
            Ok(bytes) => {
                let list: Vec<(String, u64)> =
                    serde_json::from_slice(&bytes).map_err(|source| PurgeLogError::Format {
                        path: file.clone(),
                        source,
                    })?;
                PrefixPurges::from_list(list)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PrefixPurges::default(),
            Err(source) => return Err(PurgeLogError::Io { path: file, source }),
        };
        Ok(Self {
            current: ArcSwap::from_pointee(purges),
            writer: tokio::sync::Mutex::new(()),
            log: Some(file),
        })
    }

    /// Whether a prefix purge covers an object of `path` stored at `stored_at`. Never blocks.
    pub fn covers(&self, path: &str, stored_at: u64) -> bool {
        self.current.load().covers(path, stored_at)
    }

    /// Records a purge of `prefix` at `at`: lookups see it at once; `also` runs next (the
    /// fills in flight are purged whether or not the log can be written); then the log is
    /// written and synced on the blocking pool, and this returns once it is durable.
    pub async fn purge_prefix(
        &self,
        prefix: String,
        at: u64,
        also: impl FnOnce(),
    ) -> Result<(), PurgeLogError> {
        let _writer = self.writer.lock().await;
        let mut next = PrefixPurges::clone(&self.current.load());
        next.insert(prefix, at);
        let list = self.log.is_some().then(|| next.to_list());
        self.current.store(Arc::new(next));
        also();
        let (Some(file), Some(list)) = (self.log.clone(), list) else {
            return Ok(());
        };
        let path = file.clone();
        tokio::task::spawn_blocking(move || save(&file, &list))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|source| PurgeLogError::Io { path, source })
    }
}

/// Writes the list to `file`: a temporary file, fsync, rename.
fn save(file: &Path, list: &[(String, u64)]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = file.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(list).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rule the record keeps, as the old list scan had it: any purged prefix of the path
    /// at or after the object was stored.
    fn scan(list: &[(String, u64)], path: &str, stored_at: u64) -> bool {
        list.iter()
            .any(|(prefix, at)| path.starts_with(prefix.as_str()) && stored_at <= *at)
    }

    #[test]
    fn a_lookup_among_100000_purges_probes_at_most_the_path_length() {
        // Loaded as from a purge log (inserting one by one checks each against all the others,
        // which is the purge's cost, not the lookup's).
        let mut list: Vec<(String, u64)> = (0..100_000u64)
            .map(|i| (format!("/v/asset-{i}/"), 1_000))
            .collect();
        // Prefixes of many lengths, up to far longer than the path.
        list.extend((1..300).map(|len| (format!("/x/{}", "y".repeat(len)), 1_000)));
        let purges = PrefixPurges::from_list(list);
        assert_eq!(purges.len(), 100_299);
        let path = "/v/asset-99999/720p/seg_00001.m4s";
        let hit = purges.lookup(path, 999);
        assert!(hit.purged);
        assert!(hit.probes <= path.len() + 1, "{hit:?}");
        let stored_later = purges.lookup(path, 1_001);
        assert!(!stored_later.purged);
        assert!(stored_later.probes <= path.len() + 1, "{stored_later:?}");
        let other = "/w/unpurged/seg_1.m4s";
        let miss = purges.lookup(other, 0);
        assert!(!miss.purged);
        assert!(miss.probes <= other.len() + 1, "{miss:?}");
    }

    #[test]
    fn a_prefix_is_a_string_prefix_and_a_newer_purge_supersedes_those_under_it() {
        let mut purges = PrefixPurges::default();
        purges.insert("/v/ab".into(), 10);
        assert!(purges.covers("/v/abc/seg_1.m4s", 10));
        assert!(!purges.covers("/v/abc/seg_1.m4s", 11));
        assert!(!purges.covers("/v/a", 0));
        purges.insert("/v/abc/x".into(), 20);
        purges.insert("/v/".into(), 30);
        assert_eq!(purges.to_list(), vec![("/v/".to_owned(), 30)]);
        assert!(purges.covers("/v/abc/x1", 30));
        // A path with a multi-byte character never splits it.
        assert!(!purges.covers("/é", 0));
    }

    #[tokio::test]
    async fn purges_are_logged_and_come_back_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("estuary-purges-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("prefix-purges.json");
        let record = PurgeRecord::open(file.clone()).expect("open");
        let mut told = false;
        record
            .purge_prefix("/v/a".into(), 5, || told = true)
            .await
            .expect("saved");
        assert!(told && record.covers("/v/a/1", 5));
        let again = PurgeRecord::open(file.clone()).expect("reopen");
        assert!(again.covers("/v/a/1", 5) && !again.covers("/v/a/1", 6));
        std::fs::write(&file, b"nope").expect("write");
        assert!(matches!(
            PurgeRecord::open(file),
            Err(PurgeLogError::Format { .. })
        ));
        // A log that cannot be written: the purge still holds in memory.
        let gone = PurgeRecord::open(dir.join("missing/prefix-purges.json")).expect("open");
        assert!(gone.purge_prefix("/v/b".into(), 5, || ()).await.is_err());
        assert!(gone.covers("/v/b/1", 5));
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest! {
        /// The record answers as the old list scan did, in at most path-length + 1 probes.
        #[test]
        fn lookups_agree_with_a_scan_of_the_list(
            ops in proptest::collection::vec(("/[ab/]{0,6}", 0u64..20), 0..40),
            path in "/[ab/]{0,8}",
            stored_at in 0u64..20,
        ) {
            let mut purges = PrefixPurges::default();
            let mut list: Vec<(String, u64)> = Vec::new();
            for (prefix, at) in ops {
                list.retain(|(old, _)| !old.starts_with(prefix.as_str()));
                list.push((prefix.clone(), at));
                purges.insert(prefix, at);
            }
            let probe = purges.lookup(&path, stored_at);
            prop_assert_eq!(probe.purged, scan(&list, &path, stored_at));
            prop_assert!(probe.probes <= path.len() + 1);
            let reloaded = PrefixPurges::from_list(purges.to_list());
            prop_assert_eq!(reloaded.covers(&path, stored_at), probe.purged);
        }
    }
}
