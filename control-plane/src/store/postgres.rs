//! The PostgreSQL store, for two or more control-plane replicas sharing one database. The same
//! tables as the SQLite store; times and sizes are `BIGINT`. A pool of connections
//! (deadpool-postgres) reconnects by itself after the server restarts.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use estuary_common::cp::{Heartbeat, Site};
use tokio_postgres::NoTls;

use super::{AuditEntry, Delivery, PendingPush, Placement, PurgeStatus, StoreError};

/// The PostgreSQL store; cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresStore")
    }
}

/// Replicas starting at the same moment create the schema one after the other (the key is
/// "estuary" in ASCII).
const SCHEMA_LOCK: i64 = 0x0065_7374_7561_7279;

/// The schema, one step per version, as in the SQLite store: `MIGRATIONS[i]` takes a database
/// at version `i` (the row of `schema_version`, 0 without one) to `i + 1`. Databases made
/// before the schema had a version hold the tables of version 1, which its `IF NOT EXISTS`
/// keeps. Append a step for every change; never edit one that shipped.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Version 2: pushes recorded before they could be placed (`body`: [`super::PendingPush`]).
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS pending_pushes (asset TEXT PRIMARY KEY, body TEXT NOT NULL);
";

/// Version 3: meetings and the SFUs they are on (`body`: `crate::meetings::Meeting`).
const SCHEMA_V3: &str = "
CREATE TABLE IF NOT EXISTS meetings (room TEXT PRIMARY KEY, body TEXT NOT NULL);
";

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS sites (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (id TEXT PRIMARY KEY, body TEXT NOT NULL, last_heartbeat BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS purges (
    id BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL, who TEXT NOT NULL, target TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS purge_deliveries (
    purge BIGINT NOT NULL, node TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
    last_error TEXT, updated_at BIGINT NOT NULL, PRIMARY KEY (purge, node)
);
CREATE TABLE IF NOT EXISTS placements (
    asset TEXT NOT NULL, node TEXT NOT NULL, site TEXT NOT NULL, state TEXT NOT NULL,
    bytes BIGINT NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (asset, node)
);
CREATE TABLE IF NOT EXISTS asset_roots (asset TEXT PRIMARY KEY, merkle_root TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL
);
";

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        // Keep the server's error, with its SQLSTATE.
        deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
        e => StoreError::Pool(e.to_string()),
    }
}

/// Why connecting at start failed, in words that say what to fix: the server out of reach,
/// authentication, a database that does not exist, or a missing permission.
fn explain_open(e: StoreError, config: &tokio_postgres::Config) -> StoreError {
    let user = config.get_user().unwrap_or("(none)");
    let db = config.get_dbname().unwrap_or(user);
    let server = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
            tokio_postgres::config::Host::Unix(d) => format!("{}/.s.PGSQL.{p}", d.display()),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let text = match &e {
        StoreError::Postgres(pg) => match pg.code().map(|c| c.code()) {
            Some("28P01") => format!(
                "authentication failed: PostgreSQL refused the password of user {user:?} ({})",
                super::postgres_text(pg)
            ),
            Some("28000") => format!(
                "authentication failed: PostgreSQL does not let user {user:?} in (pg_hba.conf, or the role is missing; {})",
                super::postgres_text(pg)
            ),
            Some("3D000") => format!(
                "database {db:?} does not exist on {server} (create it: CREATE DATABASE {db} OWNER {user})"
            ),
            Some("42501") => format!(
                "permission denied: user {user:?} may not create or use the control plane's tables in {db:?} (GRANT CREATE, USAGE ON SCHEMA public TO {user}; {})",
                super::postgres_text(pg)
            ),
            Some(_) => format!("PostgreSQL refused: {}", super::postgres_text(pg)),
            None => format!(
                "cannot reach PostgreSQL at {server}: {}",
                super::postgres_text(pg)
            ),
        },
        StoreError::Timeout(d) => format!("PostgreSQL at {server} did not answer within {d:?}"),
        other => format!("PostgreSQL at {server}: {other}"),
    };
    StoreError::Open(text)
}

fn to_db(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Range)
}

fn from_db(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Range)
}

/// Checks a `postgres://` URL without connecting: the config error names what is wrong.
pub fn check_url(url: &str) -> Result<(), String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(
            "sslmode=require: TLS to PostgreSQL is not built in; reach the database over a \
             local socket or a private network"
                .into(),
        );
    }
    if config.get_dbname().is_none() {
        return Err("no database name (postgres://user@host/DATABASE)".into());
    }
    Ok(())
}

impl PostgresStore {
    pub async fn open(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        check_url(url).map_err(StoreError::Pool)?;
        let mut config: tokio_postgres::Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("estuary-control-plane");
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let schema = async {
            let mut client = pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
            )
            .await?;
            let found = tx
                .query_opt("SELECT version FROM schema_version", &[])
                .await?
                .map_or(0, |r| r.get::<_, i32>(0));
            let found = u32::try_from(found).map_err(|_| StoreError::Range)?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::SchemaTooNew {
                    found,
                    known: SCHEMA_VERSION,
                });
            }
            for step in &MIGRATIONS[found as usize..] {
                tx.batch_execute(step).await?;
            }
            // One row, whatever was there (none before versions existed).
            tx.execute("DELETE FROM schema_version", &[]).await?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&(SCHEMA_VERSION as i32)],
            )
            .await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        };
        // Creating the schema may wait for another replica's lock: more time than one call.
        let wait = timeout.max(Duration::from_secs(30));
        match tokio::time::timeout(wait, schema).await {
            Ok(Ok(())) => Ok(Self { pool }),
            Ok(Err(e)) => Err(explain_open(e, &config)),
            Err(_) => Err(explain_open(StoreError::Timeout(wait), &config)),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.client().await?.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    pub async fn load(&self) -> Result<(Vec<Site>, Vec<(Heartbeat, u64)>), StoreError> {
        let c = self.client().await?;
        let mut sites = Vec::new();
        for row in c.query("SELECT body FROM sites ORDER BY name", &[]).await? {
            match serde_json::from_str::<Site>(row.try_get::<_, &str>(0)?) {
                Ok(s) => sites.push(s),
                Err(e) => {
                    tracing::warn!(error = %e, "A stored site could not be read; it is skipped.")
                }
            }
        }
        let mut nodes = Vec::new();
        for row in c
            .query("SELECT body, last_heartbeat FROM nodes ORDER BY id", &[])
            .await?
        {
            let at = from_db(row.try_get(1)?)?;
            match serde_json::from_str::<Heartbeat>(row.try_get::<_, &str>(0)?) {
                Ok(hb) => nodes.push((hb, at)),
                Err(e) => {
                    tracing::warn!(error = %e, "A stored node could not be read; it is skipped.")
                }
            }
        }
        Ok((sites, nodes))
    }

    pub async fn put_site(&self, site: &Site) -> Result<(), StoreError> {
        let body = serde_json::to_string(site)?;
        self.put_body("sites", "name", &site.name, &body).await
    }

    /// Stores the JSON `body` of `key` in a `(key_column, body)` table.
    async fn put_body(
        &self,
        table: &'static str,
        key_column: &'static str,
        key: &str,
        body: &str,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {table} ({key_column}, body) VALUES ($1, $2)
             ON CONFLICT ({key_column}) DO UPDATE SET body = EXCLUDED.body"
        );
        self.client().await?.execute(&sql, &[&key, &body]).await?;
        Ok(())
    }

    /// Every `body` of `table`, in `key_column` order.
    async fn bodies(
        &self,
        table: &'static str,
        key_column: &'static str,
    ) -> Result<Vec<String>, StoreError> {
        let sql = format!("SELECT body FROM {table} ORDER BY {key_column}");
        self.client()
            .await?
            .query(&sql, &[])
            .await?
            .iter()
            .map(|r| Ok(r.try_get::<_, String>(0)?))
            .collect()
    }

    /// Stores a heartbeat unless a newer one (from another replica) is already there.
    pub async fn put_node(&self, hb: &Heartbeat, at: u64) -> Result<(), StoreError> {
        let body = serde_json::to_string(hb)?;
        self.client()
            .await?
            .execute(
                "INSERT INTO nodes (id, body, last_heartbeat) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body,
                 last_heartbeat = excluded.last_heartbeat
                 WHERE nodes.last_heartbeat <= excluded.last_heartbeat",
                &[&hb.node, &body, &to_db(at)?],
            )
            .await?;
        Ok(())
    }

    pub async fn remove_node(&self, id: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute("DELETE FROM nodes WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    pub async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO audit (at, who, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &to_db(entry.at)?,
                    &entry.who,
                    &entry.action,
                    &entry.target,
                    &entry.detail,
                ],
            )
            .await?;
        Ok(())
    }

    pub async fn add_purge(
        &self,
        who: &str,
        target: &str,
        nodes: Vec<String>,
    ) -> Result<i64, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let now = to_db(estuary_common::unix_now())?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO purges (at, who, target) VALUES ($1, $2, $3) RETURNING id",
                &[&now, &who, &target],
            )
            .await?
            .try_get(0)?;
        for node in nodes {
            tx.execute(
                "INSERT INTO purge_deliveries (purge, node, state, attempts, last_error, updated_at)
                 VALUES ($1, $2, 'pending', 0, NULL, $3)",
                &[&id, &node, &now],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    pub async fn pending_deliveries(&self) -> Result<Vec<(i64, String, String)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT d.purge, p.target, d.node FROM purge_deliveries d JOIN purges p ON p.id = d.purge
                 WHERE d.state = 'pending' ORDER BY d.purge",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    pub async fn delivery_result(
        &self,
        purge: i64,
        node: &str,
        result: Result<(), (String, bool)>,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        let now = to_db(estuary_common::unix_now())?;
        match result {
            Ok(()) => {
                c.execute(
                    "UPDATE purge_deliveries SET state = 'done', attempts = attempts + 1, last_error = NULL,
                     updated_at = $3 WHERE purge = $1 AND node = $2",
                    &[&purge, &node, &now],
                )
                .await?
            }
            Err((e, retry)) => {
                c.execute(
                    "UPDATE purge_deliveries SET attempts = attempts + 1, last_error = $3, updated_at = $4,
                     state = CASE WHEN $5 THEN state ELSE 'refused' END
                     WHERE purge = $1 AND node = $2",
                    &[&purge, &node, &e, &now, &retry],
                )
                .await?
            }
        };
        Ok(())
    }

    pub async fn purge(&self, id: i64) -> Result<Option<PurgeStatus>, StoreError> {
        let c = self.client().await?;
        let Some(head) = c
            .query_opt("SELECT at, who, target FROM purges WHERE id = $1", &[&id])
            .await?
        else {
            return Ok(None);
        };
        let edges = c
            .query(
                "SELECT node, state, attempts, last_error FROM purge_deliveries WHERE purge = $1 ORDER BY node",
                &[&id],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(Delivery {
                    node: r.try_get(0)?,
                    state: r.try_get(1)?,
                    attempts: u32::try_from(r.try_get::<_, i32>(2)?)
                        .map_err(|_| StoreError::Range)?,
                    last_error: r.try_get(3)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some(PurgeStatus {
            id,
            at: from_db(head.try_get(0)?)?,
            who: head.try_get(1)?,
            target: head.try_get(2)?,
            edges,
        }))
    }

    pub async fn add_placements(
        &self,
        asset: &str,
        bytes: u64,
        merkle_root: &str,
        nodes: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let now = to_db(estuary_common::unix_now())?;
        let bytes = to_db(bytes)?;
        if !merkle_root.is_empty() {
            tx.execute(
                "INSERT INTO asset_roots (asset, merkle_root) VALUES ($1, $2)
                 ON CONFLICT (asset) DO UPDATE SET merkle_root = EXCLUDED.merkle_root",
                &[&asset, &merkle_root],
            )
            .await?;
        }
        for (node, site) in nodes {
            tx.execute(
                "INSERT INTO placements (asset, node, site, state, bytes, created_at)
                 VALUES ($1, $2, $3, 'assigned', $4, $5)
                 ON CONFLICT (asset, node) DO UPDATE SET state = 'assigned'",
                &[&asset, &node, &site, &bytes, &now],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_placements(&self, asset: &str) -> Result<usize, StoreError> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE placements SET state = 'removing' WHERE asset = $1",
                &[&asset],
            )
            .await?;
        usize::try_from(n).map_err(|_| StoreError::Range)
    }

    pub async fn drop_placement(&self, asset: &str, node: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM placements WHERE asset = $1 AND node = $2 AND state = 'removing'",
                &[&asset, &node],
            )
            .await?;
        Ok(())
    }

    pub async fn placements(&self) -> Result<Vec<Placement>, StoreError> {
        self.placements_where(None).await
    }

    pub async fn placements_of(&self, node: &str) -> Result<Vec<Placement>, StoreError> {
        self.placements_where(Some(node)).await
    }

    async fn placements_where(&self, node: Option<&str>) -> Result<Vec<Placement>, StoreError> {
        self.client()
            .await?
            .query(
                "SELECT p.asset, p.node, p.site, p.state, p.bytes, r.merkle_root
                 FROM placements p LEFT JOIN asset_roots r ON r.asset = p.asset
                 WHERE $1::TEXT IS NULL OR p.node = $1 ORDER BY p.asset, p.node",
                &[&node],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(Placement {
                    asset: r.try_get(0)?,
                    node: r.try_get(1)?,
                    site: r.try_get(2)?,
                    state: r.try_get(3)?,
                    bytes: from_db(r.try_get(4)?)?,
                    merkle_root: r.try_get(5)?,
                })
            })
            .collect()
    }

    pub async fn put_pending_push(&self, push: &PendingPush) -> Result<(), StoreError> {
        let body = serde_json::to_string(push)?;
        self.put_body("pending_pushes", "asset", &push.asset, &body)
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
        let n = self
            .client()
            .await?
            .execute("DELETE FROM pending_pushes WHERE asset = $1", &[&asset])
            .await?;
        Ok(n == 1)
    }

    pub async fn meeting(&self, room: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT body FROM meetings WHERE room = $1", &[&room])
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<_, String>(0)?),
            None => None,
        })
    }

    pub async fn meetings(&self) -> Result<Vec<String>, StoreError> {
        self.bodies("meetings", "room").await
    }

    pub async fn insert_meeting(&self, room: &str, body: String) -> Result<bool, StoreError> {
        let n = self
            .client()
            .await?
            .execute(
                "INSERT INTO meetings (room, body) VALUES ($1, $2) ON CONFLICT (room) DO NOTHING",
                &[&room, &body],
            )
            .await?;
        Ok(n == 1)
    }

    pub async fn replace_meeting(
        &self,
        room: &str,
        old: String,
        new: String,
    ) -> Result<bool, StoreError> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE meetings SET body = $3 WHERE room = $1 AND body = $2",
                &[&room, &old, &new],
            )
            .await?;
        Ok(n == 1)
    }

    pub async fn remove_meeting(&self, room: &str, old: String) -> Result<bool, StoreError> {
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM meetings WHERE room = $1 AND body = $2",
                &[&room, &old],
            )
            .await?;
        Ok(n == 1)
    }

    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.client()
            .await?
            .query(
                "SELECT at, who, action, target, detail FROM audit ORDER BY id DESC LIMIT $1",
                &[&i64::from(limit)],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: from_db(r.try_get(0)?)?,
                    who: r.try_get(1)?,
                    action: r.try_get(2)?,
                    target: r.try_get(3)?,
                    detail: r.try_get(4)?,
                })
            })
            .collect()
    }
}
