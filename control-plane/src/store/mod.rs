//! What the control plane keeps across restarts: sites, the nodes that registered (their last
//! heartbeat), placements (what each edge should hold), purges with their per-edge deliveries,
//! and the audit log of operator actions. Health verdicts are not stored: each control plane
//! measures them again itself.
//!
//! Two back ends with the same operations: SQLite (one file, one control plane; the default)
//! and PostgreSQL (two or more control-plane replicas sharing one database). With a shared
//! database every heartbeat is written through, and each replica folds what the others
//! received into its registry (see `crate::replica`).

mod postgres;
mod sqlite;

use std::path::Path;

use estuary_common::cp::{Heartbeat, Site};
use serde::Serialize;

pub use postgres::{PostgresStore, check_url as check_postgres_url};
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database: {}", postgres_text(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// Connecting at start failed; the text says which of reaching the server,
    /// authentication, the database's existence or a permission.
    #[error("{0}")]
    Open(String),
    #[error("database pool: {0}")]
    Pool(String),
    #[error("database: {0}")]
    Json(#[from] serde_json::Error),
    #[error("database: a stored number is out of range")]
    Range,
    #[error("database task failed")]
    Task,
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// Not tried: the database is known to be out of reach.
    #[error("the database is out of reach")]
    OutOfReach,
    /// The database was made by a newer build: this one would misread it.
    #[error(
        "database: schema version {found} is newer than this build knows ({known}); run the estuary that made it"
    )]
    SchemaTooNew { found: u32, known: u32 },
}

/// A PostgreSQL error as an operator needs it: the server's own message and SQLSTATE when it
/// sent one (tokio-postgres's `Display` says only "db error"), else the client's error and
/// its cause.
pub(crate) fn postgres_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

impl StoreError {
    /// Whether the database is out of reach (down, frozen, restarting, refusing connections)
    /// rather than refusing this one statement: a write then answers 503, and a retry later
    /// may succeed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Timeout(_)
            | StoreError::Pool(_)
            | StoreError::Task
            | StoreError::Open(_)
            | StoreError::OutOfReach => true,
            StoreError::Postgres(e) => match e.code() {
                // No SQLSTATE: the connection itself failed.
                None => true,
                Some(code) => {
                    let c = code.code();
                    // 08: connection exception; 53: insufficient resources; 57P: the server
                    // is shutting down, crashed or starting.
                    c.starts_with("08") || c.starts_with("53") || c.starts_with("57P")
                }
            },
            StoreError::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            StoreError::Json(_) | StoreError::Range | StoreError::SchemaTooNew { .. } => false,
        }
    }
}

/// What this control plane knows of its database's health: fed by the outcome of every
/// store call, read by `/healthz`, `/metrics` and the monitor (which must not take a stale
/// view of the shared database for silence from the nodes).
#[derive(Debug, Default)]
pub struct DbHealth {
    up: std::sync::atomic::AtomicBool,
    /// When the database last answered (unix seconds).
    last_ok: std::sync::atomic::AtomicU64,
    /// When the current outage began (unix seconds; 0: none) and why.
    down: std::sync::Mutex<Option<(u64, String)>>,
    errors: std::sync::atomic::AtomicU64,
}

impl DbHealth {
    fn new() -> Self {
        let h = Self::default();
        h.ok();
        h
    }

    fn ok(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.up.store(true, Relaxed);
        self.last_ok.store(estuary_common::unix_now(), Relaxed);
        if let Ok(mut d) = self.down.lock()
            && let Some((since, _)) = d.take()
        {
            tracing::info!(
                seconds = estuary_common::unix_now().saturating_sub(since),
                "The database answers again."
            );
        }
    }

    fn failed(&self, e: &StoreError) {
        use std::sync::atomic::Ordering::Relaxed;
        if !e.is_unavailable() {
            // The database answered (with a refusal of this statement).
            self.ok();
            return;
        }
        self.errors.fetch_add(1, Relaxed);
        self.up.store(false, Relaxed);
        if let Ok(mut d) = self.down.lock() {
            match d.as_mut() {
                Some((_, why)) => *why = e.to_string(),
                None => {
                    tracing::error!(error = %e, "The database is unavailable: nodes are still judged by what this replica receives, the state feed answers from memory, writes answer 503.");
                    *d = Some((estuary_common::unix_now(), e.to_string()));
                }
            }
        }
    }

    /// Whether the last call reached the database.
    pub fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Seconds since the database last answered.
    pub fn silent_for(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_ok.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Calls that found the database out of reach, since the start.
    pub fn errors(&self) -> u64 {
        self.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When the current outage began and the latest reason; `None` when up.
    pub fn outage(&self) -> Option<(u64, String)> {
        self.down.lock().ok().and_then(|d| d.clone())
    }
}

pub use estuary_common::api::{AuditEntry, Delivery, PurgeStatus};

use crate::meetings::Meeting;

/// An operator's push that could not be placed when it was made (the asset not yet on the
/// origin, or no edge up with room): kept, and placed by the control plane when it can be.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingPush {
    pub asset: String,
    pub sites: Option<Vec<String>>,
    pub replicas: usize,
    /// The operator who pushed.
    pub who: String,
    /// Unix seconds.
    pub since: u64,
    /// Why it is not placed yet.
    pub reason: String,
}

/// An asset assigned to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Placement {
    pub asset: String,
    pub node: String,
    pub site: String,
    /// `assigned` or `removing`.
    pub state: String,
    pub bytes: u64,
    /// The Merkle root of the signed `asset.json` the asset was placed with: edges fill that
    /// version and no other. `None` for placements made before roots were kept.
    pub merkle_root: Option<String>,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// The store; cheap to clone. Every call is bounded by the configured timeout (a frozen
/// database must not hold a request, or the monitor, for minutes) and feeds [`DbHealth`].
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    timeout: std::time::Duration,
    health: std::sync::Arc<DbHealth>,
}

/// Calls the same method on whichever back end this is, within the timeout.
macro_rules! on_backend {
    ($self:ident, $s:ident => $call:expr) => {
        $self
            .bounded(async {
                match &$self.backend {
                    Backend::Sqlite($s) => $call,
                    Backend::Postgres($s) => $call,
                }
            })
            .await
    };
}

impl Store {
    /// Opens the SQLite file at `path`, creating it and the schema when missing.
    pub fn open_sqlite(path: &Path, timeout: std::time::Duration) -> Result<Self, StoreError> {
        Ok(Self::new(
            Backend::Sqlite(SqliteStore::open(path)?),
            timeout,
        ))
    }

    /// Connects to PostgreSQL at `url` and creates the schema when missing (replicas starting
    /// together take turns through an advisory lock).
    pub async fn open_postgres(
        url: &str,
        timeout: std::time::Duration,
    ) -> Result<Self, StoreError> {
        Ok(Self::new(
            Backend::Postgres(PostgresStore::open(url, timeout).await?),
            timeout,
        ))
    }

    fn new(backend: Backend, timeout: std::time::Duration) -> Self {
        Self {
            backend,
            timeout,
            health: std::sync::Arc::new(DbHealth::new()),
        }
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let r = match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        match &r {
            Ok(_) => self.health.ok(),
            Err(e) => self.health.failed(e),
        }
        r
    }

    /// What is known of the database's health.
    pub fn health(&self) -> &DbHealth {
        &self.health
    }

    /// Whether other control planes may write the same database, so that this one must write
    /// every heartbeat through and fold in what the others received.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Whether the database answers a trivial query within the timeout.
    pub async fn ping(&self) -> bool {
        let r: Result<(), StoreError> = on_backend!(self, s => s.ping().await);
        r.is_ok()
    }

    /// Everything kept: sites, and nodes with the time of their last stored heartbeat.
    pub async fn load(&self) -> Result<(Vec<Site>, Vec<(Heartbeat, u64)>), StoreError> {
        on_backend!(self, s => s.load().await)
    }

    pub async fn put_site(&self, site: &Site) -> Result<(), StoreError> {
        on_backend!(self, s => s.put_site(site).await)
    }

    pub async fn put_node(&self, hb: &Heartbeat, at: u64) -> Result<(), StoreError> {
        on_backend!(self, s => s.put_node(hb, at).await)
    }

    pub async fn remove_node(&self, id: &str) -> Result<(), StoreError> {
        on_backend!(self, s => s.remove_node(id).await)
    }

    pub async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        on_backend!(self, s => s.audit(entry).await)
    }

    /// Records a purge of `target` (a path, or a prefix ending in `*`) for `nodes`; its id.
    pub async fn add_purge(
        &self,
        who: &str,
        target: &str,
        nodes: Vec<String>,
    ) -> Result<i64, StoreError> {
        on_backend!(self, s => s.add_purge(who, target, nodes).await)
    }

    /// Deliveries still to make: (purge id, target, node).
    pub async fn pending_deliveries(&self) -> Result<Vec<(i64, String, String)>, StoreError> {
        on_backend!(self, s => s.pending_deliveries().await)
    }

    /// Records one delivery attempt: `Ok` done; `Err((reason, retry))`, pending again when
    /// `retry`, else `refused` for good (the edge can never apply it).
    pub async fn delivery_result(
        &self,
        purge: i64,
        node: &str,
        result: Result<(), (String, bool)>,
    ) -> Result<(), StoreError> {
        on_backend!(self, s => s.delivery_result(purge, node, result).await)
    }

    /// A purge and its deliveries.
    pub async fn purge(&self, id: i64) -> Result<Option<PurgeStatus>, StoreError> {
        on_backend!(self, s => s.purge(id).await)
    }

    /// Assigns `asset` (of `bytes`, whose signed manifest has `merkle_root`) to nodes; an
    /// existing placement stays (and stops being removed); the asset's expected root is
    /// replaced by this one.
    pub async fn add_placements(
        &self,
        asset: &str,
        bytes: u64,
        merkle_root: &str,
        nodes: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        on_backend!(self, s => s.add_placements(asset, bytes, merkle_root, nodes).await)
    }

    /// Marks every placement of `asset` for removal; how many.
    pub async fn remove_placements(&self, asset: &str) -> Result<usize, StoreError> {
        on_backend!(self, s => s.remove_placements(asset).await)
    }

    /// Forgets one placement (a removal the node has done).
    pub async fn drop_placement(&self, asset: &str, node: &str) -> Result<(), StoreError> {
        on_backend!(self, s => s.drop_placement(asset, node).await)
    }

    /// Every placement.
    pub async fn placements(&self) -> Result<Vec<Placement>, StoreError> {
        on_backend!(self, s => s.placements().await)
    }

    /// The placements of one node (what its heartbeat reply needs).
    pub async fn placements_of(&self, node: &str) -> Result<Vec<Placement>, StoreError> {
        on_backend!(self, s => s.placements_of(node).await)
    }

    /// Records a push that cannot be placed yet (replacing an earlier one for the asset).
    pub async fn put_pending_push(&self, push: &PendingPush) -> Result<(), StoreError> {
        on_backend!(self, s => s.put_pending_push(push).await)
    }

    /// Every push waiting to be placed.
    pub async fn pending_pushes(&self) -> Result<Vec<PendingPush>, StoreError> {
        on_backend!(self, s => s.pending_pushes().await)
    }

    /// Removes the asset's pending push; true when this call removed it (of replicas
    /// placing pending pushes at once, only the one that takes it places it).
    pub async fn take_pending_push(&self, asset: &str) -> Result<bool, StoreError> {
        on_backend!(self, s => s.take_pending_push(asset).await)
    }

    /// The latest `limit` audit entries, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        on_backend!(self, s => s.audit_log(limit).await)
    }

    /// The stored meeting of `room`.
    pub async fn meeting(&self, room: &str) -> Result<Option<Stored<Meeting>>, StoreError> {
        let body: Option<String> = on_backend!(self, s => s.meeting(room).await)?;
        body.map(Stored::read).transpose()
    }

    /// Every stored meeting (one that cannot be read is skipped, logged).
    pub async fn meetings(&self) -> Result<Vec<Stored<Meeting>>, StoreError> {
        let bodies: Vec<String> = on_backend!(self, s => s.meetings().await)?;
        Ok(bodies
            .into_iter()
            .filter_map(|b| match Stored::read(b) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "A stored meeting could not be read; it is skipped.");
                    None
                }
            })
            .collect())
    }

    /// Stores a new meeting; false when its room is stored already.
    pub async fn insert_meeting(&self, m: &Meeting) -> Result<bool, StoreError> {
        let body = serde_json::to_string(m)?;
        on_backend!(self, s => s.insert_meeting(&m.room, body.clone()).await)
    }

    /// Replaces the stored meeting `old` (as it was read) with `new`; false when it is no
    /// longer stored as read (another replica changed or removed it).
    pub async fn replace_meeting(
        &self,
        old: &Stored<Meeting>,
        new: &Meeting,
    ) -> Result<bool, StoreError> {
        let body = serde_json::to_string(new)?;
        on_backend!(self, s => s.replace_meeting(&new.room, old.body.clone(), body.clone()).await)
    }

    /// Removes the stored meeting `old` (as it was read); false when it is no longer stored
    /// as read.
    pub async fn remove_meeting(&self, old: &Stored<Meeting>) -> Result<bool, StoreError> {
        on_backend!(self, s => s.remove_meeting(&old.value.room, old.body.clone()).await)
    }
}

/// A value as read from the database, with the stored text it was read from: a change is
/// written only over that same text (compare and set), so that of two replicas changing one
/// row at once, the second learns it lost and reads again.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<T> {
    pub value: T,
    body: String,
}

impl<T: serde::de::DeserializeOwned> Stored<T> {
    fn read(body: String) -> Result<Self, StoreError> {
        Ok(Self {
            value: serde_json::from_str(&body)?,
            body,
        })
    }
}

#[cfg(test)]
mod meeting_tests {
    use super::*;
    use crate::meetings::Near;

    fn meeting(node: &str, placed_at: u64) -> Meeting {
        Meeting {
            room: "m-1".into(),
            node: node.into(),
            near: Near::Region("paris".into()),
            placed_at,
            cascades: Default::default(),
        }
    }

    /// Of two replicas changing one stored meeting, the second finds out it lost.
    #[tokio::test]
    async fn stored_meetings_change_only_as_they_were_read() {
        let dir = std::env::temp_dir().join(format!("estuary-cp-meet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open_sqlite(&dir.join("cp.db"), std::time::Duration::from_secs(5))
            .expect("open");
        assert_eq!(store.meeting("m-1").await.expect("read"), None);
        assert!(
            store
                .insert_meeting(&meeting("sfu-1", 10))
                .await
                .expect("insert")
        );
        assert!(
            !store
                .insert_meeting(&meeting("sfu-2", 11))
                .await
                .expect("insert"),
            "the room is taken"
        );
        let read_by_a = store.meeting("m-1").await.expect("read").expect("stored");
        let read_by_b = read_by_a.clone();
        assert_eq!(read_by_a.value, meeting("sfu-1", 10));
        // A moves it first; B's move, made on what it read before, is refused.
        assert!(
            store
                .replace_meeting(&read_by_a, &meeting("sfu-2", 20))
                .await
                .expect("cas")
        );
        assert!(
            !store
                .replace_meeting(&read_by_b, &meeting("sfu-3", 20))
                .await
                .expect("cas")
        );
        assert!(!store.remove_meeting(&read_by_b).await.expect("cas"));
        let now = store.meeting("m-1").await.expect("read").expect("stored");
        assert_eq!(now.value.node, "sfu-2");
        assert_eq!(store.meetings().await.expect("all").len(), 1);
        assert!(store.remove_meeting(&now).await.expect("cas"));
        assert_eq!(store.meeting("m-1").await.expect("read"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
