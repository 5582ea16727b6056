//! The SQLite store (WAL, `synchronous=FULL`): one file, one control plane.

use std::path::Path;
use std::sync::{Arc, Mutex};

use estuary_common::cp::{Heartbeat, Site};
use rusqlite::{Connection, OptionalExtension, params};

use super::{AuditEntry, Delivery, PendingPush, Placement, PurgeStatus, StoreError};

/// The SQLite store; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

/// The schema, one step per version: `MIGRATIONS[i]` takes a database at
/// `PRAGMA user_version = i` to `i + 1`, in one transaction with the version's update.
/// Databases made before the schema had a version are at 0 with the tables of version 1, which
/// its `IF NOT EXISTS` keeps. Append a step for every change; never edit one that shipped.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

/// The version the code reads and writes.
pub(crate) const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS sites (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (id TEXT PRIMARY KEY, body TEXT NOT NULL, last_heartbeat INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS purges (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, who TEXT NOT NULL, target TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS purge_deliveries (
    purge INTEGER NOT NULL, node TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
    last_error TEXT, updated_at INTEGER NOT NULL, PRIMARY KEY (purge, node)
);
CREATE TABLE IF NOT EXISTS placements (
    asset TEXT NOT NULL, node TEXT NOT NULL, site TEXT NOT NULL, state TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (asset, node)
);
CREATE TABLE IF NOT EXISTS asset_roots (asset TEXT PRIMARY KEY, merkle_root TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL
);
";

/// Version 2: pushes recorded before they could be placed (`body`: [`super::PendingPush`]).
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS pending_pushes (asset TEXT PRIMARY KEY, body TEXT NOT NULL);
";

/// Version 3: meetings and the SFUs they are on (`body`: `crate::meetings::Meeting`).
const SCHEMA_V3: &str = "
CREATE TABLE IF NOT EXISTS meetings (room TEXT PRIMARY KEY, body TEXT NOT NULL);
";

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut conn = conn;
        loop {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let found: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            match MIGRATIONS.get(found as usize) {
                Some(step) => {
                    tx.execute_batch(step)?;
                    tx.pragma_update(None, "user_version", found + 1)?;
                    tx.commit()?;
                }
                None if found > SCHEMA_VERSION => {
                    return Err(StoreError::SchemaTooNew {
                        found,
                        known: SCHEMA_VERSION,
                    });
                }
                None => break,
            }
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().map_err(|_| StoreError::Task)?;
            f(&mut c)
        })
        .await
        .map_err(|_| StoreError::Task)?
    }

    /// The schema version of the open database.
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        self.with(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .map(|_| ())
    }

    /// Everything kept: sites, and nodes with the time of their last stored heartbeat.
    pub async fn load(&self) -> Result<(Vec<Site>, Vec<(Heartbeat, u64)>), StoreError> {
        self.with(|c| {
            let mut sites = Vec::new();
            let mut st = c.prepare("SELECT body FROM sites ORDER BY name")?;
            for body in st.query_map([], |r| r.get::<_, String>(0))? {
                match serde_json::from_str::<Site>(&body?) {
                    Ok(s) => sites.push(s),
                    Err(e) => tracing::warn!(error = %e, "A stored site could not be read; it is skipped."),
                }
            }
            let mut nodes = Vec::new();
            let mut st = c.prepare("SELECT body, last_heartbeat FROM nodes ORDER BY id")?;
            for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))? {
                let (body, at) = row?;
                match serde_json::from_str::<Heartbeat>(&body) {
                    Ok(hb) => nodes.push((hb, at)),
                    Err(e) => tracing::warn!(error = %e, "A stored node could not be read; it is skipped."),
                }
            }
            Ok((sites, nodes))
        })
        .await
    }

    pub async fn put_site(&self, site: &Site) -> Result<(), StoreError> {
        let body = serde_json::to_string(site)?;
        self.put_body("sites", "name", site.name.clone(), body)
            .await
    }

    /// Stores the JSON `body` of `key` in a `(key_column, body)` table.
    async fn put_body(
        &self,
        table: &'static str,
        key_column: &'static str,
        key: String,
        body: String,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {table} ({key_column}, body) VALUES (?1, ?2)
             ON CONFLICT({key_column}) DO UPDATE SET body = excluded.body"
        );
        self.with(move |c| {
            c.execute(&sql, params![key, body])?;
            Ok(())
        })
        .await
    }

    /// Every `body` of `table`, in `key_column` order.
    async fn bodies(
        &self,
        table: &'static str,
        key_column: &'static str,
    ) -> Result<Vec<String>, StoreError> {
        let sql = format!("SELECT body FROM {table} ORDER BY {key_column}");
        self.with(move |c| {
            let mut st = c.prepare(&sql)?;
            let bodies = st
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(bodies)
        })
        .await
    }

    pub async fn put_node(&self, hb: &Heartbeat, at: u64) -> Result<(), StoreError> {
        let body = serde_json::to_string(hb)?;
        let id = hb.node.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO nodes (id, body, last_heartbeat) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET body = excluded.body, last_heartbeat = excluded.last_heartbeat",
                params![id, body, at],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn remove_node(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.with(move |c| {
            c.execute("DELETE FROM nodes WHERE id = ?1", [id])?;
            Ok(())
        })
        .await
    }

    pub async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO audit (at, who, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    entry.at,
                    entry.who,
                    entry.action,
                    entry.target,
                    entry.detail
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Records a purge of `target` (a path, or a prefix ending in `*`) for `nodes`; its id.
    pub async fn add_purge(
        &self,
        who: &str,
        target: &str,
        nodes: Vec<String>,
    ) -> Result<i64, StoreError> {
        let (who, target) = (who.to_owned(), target.to_owned());
        self.with(move |c| {
            let tx = c.transaction()?;
            let now = estuary_common::unix_now();
            tx.execute(
                "INSERT INTO purges (at, who, target) VALUES (?1, ?2, ?3)",
                params![now, who, target],
            )?;
            let id = tx.last_insert_rowid();
            for node in nodes {
                tx.execute(
                    "INSERT INTO purge_deliveries (purge, node, state, attempts, last_error, updated_at)
                     VALUES (?1, ?2, 'pending', 0, NULL, ?3)",
                    params![id, node, now],
                )?;
            }
            tx.commit()?;
            Ok(id)
        })
        .await
    }

    /// Deliveries still to make: (purge id, target, node).
    pub async fn pending_deliveries(&self) -> Result<Vec<(i64, String, String)>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT d.purge, p.target, d.node FROM purge_deliveries d JOIN purges p ON p.id = d.purge
                 WHERE d.state = 'pending' ORDER BY d.purge",
            )?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Records one delivery attempt.
    pub async fn delivery_result(
        &self,
        purge: i64,
        node: &str,
        result: Result<(), (String, bool)>,
    ) -> Result<(), StoreError> {
        let node = node.to_owned();
        self.with(move |c| {
            let now = estuary_common::unix_now();
            match result {
                Ok(()) => c.execute(
                    "UPDATE purge_deliveries SET state = 'done', attempts = attempts + 1, last_error = NULL,
                     updated_at = ?3 WHERE purge = ?1 AND node = ?2",
                    params![purge, node, now],
                )?,
                Err((e, retry)) => c.execute(
                    "UPDATE purge_deliveries SET attempts = attempts + 1, last_error = ?3, updated_at = ?4,
                     state = CASE WHEN ?5 THEN state ELSE 'refused' END
                     WHERE purge = ?1 AND node = ?2",
                    params![purge, node, e, now, retry],
                )?,
            };
            Ok(())
        })
        .await
    }

    /// A purge and its deliveries.
    pub async fn purge(&self, id: i64) -> Result<Option<PurgeStatus>, StoreError> {
        self.with(move |c| {
            let head: Option<(u64, String, String)> = c
                .query_row(
                    "SELECT at, who, target FROM purges WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .ok();
            let Some((at, who, target)) = head else {
                return Ok(None);
            };
            let mut st = c.prepare(
                "SELECT node, state, attempts, last_error FROM purge_deliveries WHERE purge = ?1 ORDER BY node",
            )?;
            let edges = st
                .query_map([id], |r| {
                    Ok(Delivery {
                        node: r.get(0)?,
                        state: r.get(1)?,
                        attempts: r.get(2)?,
                        last_error: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(PurgeStatus {
                id,
                at,
                who,
                target,
                edges,
            }))
        })
        .await
    }

    /// Assigns `asset` (of `bytes`) to nodes; an existing placement stays (and stops being
    /// removed).
    pub async fn add_placements(
        &self,
        asset: &str,
        bytes: u64,
        merkle_root: &str,
        nodes: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        let asset = asset.to_owned();
        let merkle_root = merkle_root.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            let now = estuary_common::unix_now();
            if !merkle_root.is_empty() {
                tx.execute(
                    "INSERT INTO asset_roots (asset, merkle_root) VALUES (?1, ?2)
                     ON CONFLICT(asset) DO UPDATE SET merkle_root = excluded.merkle_root",
                    params![asset, merkle_root],
                )?;
            }
            for (node, site) in nodes {
                tx.execute(
                    "INSERT INTO placements (asset, node, site, state, bytes, created_at)
                     VALUES (?1, ?2, ?3, 'assigned', ?4, ?5)
                     ON CONFLICT(asset, node) DO UPDATE SET state = 'assigned'",
                    params![asset, node, site, bytes, now],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Marks every placement of `asset` for removal; how many.
    pub async fn remove_placements(&self, asset: &str) -> Result<usize, StoreError> {
        let asset = asset.to_owned();
        self.with(move |c| {
            Ok(c.execute(
                "UPDATE placements SET state = 'removing' WHERE asset = ?1",
                [asset],
            )?)
        })
        .await
    }

    /// Forgets one placement (a removal the node has done).
    pub async fn drop_placement(&self, asset: &str, node: &str) -> Result<(), StoreError> {
        let (asset, node) = (asset.to_owned(), node.to_owned());
        self.with(move |c| {
            c.execute(
                "DELETE FROM placements WHERE asset = ?1 AND node = ?2 AND state = 'removing'",
                params![asset, node],
            )?;
            Ok(())
        })
        .await
    }

    /// Every placement: (asset, node, site, state, bytes).
    pub async fn placements(&self) -> Result<Vec<Placement>, StoreError> {
        self.placements_where(None).await
    }

    /// The placements of one node (what its heartbeat reply needs).
    pub async fn placements_of(&self, node: &str) -> Result<Vec<Placement>, StoreError> {
        self.placements_where(Some(node.to_owned())).await
    }

    async fn placements_where(&self, node: Option<String>) -> Result<Vec<Placement>, StoreError> {
        self.with(move |c| {
            let mut st = c.prepare(
                "SELECT p.asset, p.node, p.site, p.state, p.bytes, r.merkle_root
                 FROM placements p LEFT JOIN asset_roots r ON r.asset = p.asset
                 WHERE ?1 IS NULL OR p.node = ?1 ORDER BY p.asset, p.node",
            )?;
            let rows = st
                .query_map([node], |r| {
                    Ok(Placement {
                        asset: r.get(0)?,
                        node: r.get(1)?,
                        site: r.get(2)?,
                        state: r.get(3)?,
                        bytes: r.get(4)?,
                        merkle_root: r.get(5)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    pub async fn put_pending_push(&self, push: &PendingPush) -> Result<(), StoreError> {
        let body = serde_json::to_string(push)?;
        self.put_body("pending_pushes", "asset", push.asset.clone(), body)
            .await
    }

    pub async fn pending_pushes(&self) -> Result<Vec<PendingPush>, StoreError> {
        self.bodies("pending_pushes", "asset")
            .await?
            .iter()
            .map(|b| Ok(serde_json::from_str(b)?))
            .collect()
    }

    pub async fn take_pending_push(&self, asset: &str) -> Result<bool, StoreError> {
        let asset = asset.to_owned();
        self.with(move |c| {
            Ok(c.execute(
                "DELETE FROM pending_pushes WHERE asset = ?1",
                params![asset],
            )? == 1)
        })
        .await
    }

    pub async fn meeting(&self, room: &str) -> Result<Option<String>, StoreError> {
        let room = room.to_owned();
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT body FROM meetings WHERE room = ?1",
                params![room],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    pub async fn meetings(&self) -> Result<Vec<String>, StoreError> {
        self.bodies("meetings", "room").await
    }

    pub async fn insert_meeting(&self, room: &str, body: String) -> Result<bool, StoreError> {
        let room = room.to_owned();
        self.with(move |c| {
            Ok(c.execute(
                "INSERT INTO meetings (room, body) VALUES (?1, ?2) ON CONFLICT(room) DO NOTHING",
                params![room, body],
            )? == 1)
        })
        .await
    }

    pub async fn replace_meeting(
        &self,
        room: &str,
        old: String,
        new: String,
    ) -> Result<bool, StoreError> {
        let room = room.to_owned();
        self.with(move |c| {
            Ok(c.execute(
                "UPDATE meetings SET body = ?3 WHERE room = ?1 AND body = ?2",
                params![room, old, new],
            )? == 1)
        })
        .await
    }

    pub async fn remove_meeting(&self, room: &str, old: String) -> Result<bool, StoreError> {
        let room = room.to_owned();
        self.with(move |c| {
            Ok(c.execute(
                "DELETE FROM meetings WHERE room = ?1 AND body = ?2",
                params![room, old],
            )? == 1)
        })
        .await
    }

    /// The latest `limit` audit entries, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.with(move |c| {
            let mut st = c.prepare(
                "SELECT at, who, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = st
                .query_map([limit], |r| {
                    Ok(AuditEntry {
                        at: r.get(0)?,
                        who: r.get(1)?,
                        action: r.get(2)?,
                        target: r.get(3)?,
                        detail: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_database_of_the_unversioned_schema_is_migrated_with_its_data() {
        let dir = std::env::temp_dir().join(format!("estuary-cp-mig-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        // The tables as the control plane made them before the schema had a version.
        let file = dir.join("cp.db");
        Connection::open(&file)
            .and_then(|c| {
                c.execute_batch(
                    "CREATE TABLE sites (name TEXT PRIMARY KEY, body TEXT NOT NULL);
                     CREATE TABLE nodes (id TEXT PRIMARY KEY, body TEXT NOT NULL,
                        last_heartbeat INTEGER NOT NULL);
                     CREATE TABLE purges (id INTEGER PRIMARY KEY AUTOINCREMENT,
                        at INTEGER NOT NULL, who TEXT NOT NULL, target TEXT NOT NULL);
                     CREATE TABLE purge_deliveries (purge INTEGER NOT NULL, node TEXT NOT NULL,
                        state TEXT NOT NULL, attempts INTEGER NOT NULL, last_error TEXT,
                        updated_at INTEGER NOT NULL, PRIMARY KEY (purge, node));
                     CREATE TABLE placements (asset TEXT NOT NULL, node TEXT NOT NULL,
                        site TEXT NOT NULL, state TEXT NOT NULL, bytes INTEGER NOT NULL,
                        created_at INTEGER NOT NULL, PRIMARY KEY (asset, node));
                     CREATE TABLE asset_roots (asset TEXT PRIMARY KEY, merkle_root TEXT NOT NULL);
                     CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT,
                        at INTEGER NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
                        target TEXT NOT NULL, detail TEXT NOT NULL);
                     INSERT INTO asset_roots VALUES ('movie', 'abc123');",
                )
            })
            .expect("old schema");
        let store = SqliteStore::open(&file).expect("open the old database");
        assert_eq!(
            store.schema_version().await.expect("version"),
            SCHEMA_VERSION
        );
        let root = store
            .with(|c| {
                Ok(c.query_row(
                    "SELECT merkle_root FROM asset_roots WHERE asset = 'movie'",
                    [],
                    |r| r.get::<_, String>(0),
                )?)
            })
            .await
            .expect("the row survives");
        assert_eq!(root, "abc123");
        drop(store);
        // Opening again changes nothing.
        let store = SqliteStore::open(&file).expect("reopen");
        assert_eq!(
            store.schema_version().await.expect("version"),
            SCHEMA_VERSION
        );
        drop(store);
        // A database of a newer build is refused, naming both versions.
        Connection::open(&file)
            .and_then(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION + 1))
            .expect("newer");
        let err = SqliteStore::open(&file).expect_err("newer").to_string();
        assert!(
            err.contains(&format!("version {} is newer", SCHEMA_VERSION + 1)),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
