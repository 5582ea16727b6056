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
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(String),
    #[error("database: {0}")]
    Json(#[from] serde_json::Error),
    #[error("database: a stored number is out of range")]
    Range,
    #[error("database task failed")]
    Task,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at: u64,
    /// The operator token's name.
    pub who: String,
    pub action: String,
    pub target: String,
    pub detail: String,
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

/// One edge's delivery of a purge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Delivery {
    pub node: String,
    /// `pending` (retried while the edge is down) or `done`.
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// A purge and where it has been delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PurgeStatus {
    pub id: i64,
    pub at: u64,
    pub who: String,
    pub target: String,
    pub edges: Vec<Delivery>,
}

/// The store; cheap to clone.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// Calls the same method on whichever back end this is.
macro_rules! on_backend {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

impl Store {
    /// Opens the SQLite file at `path`, creating it and the schema when missing.
    pub fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::Sqlite(SqliteStore::open(path)?))
    }

    /// Connects to PostgreSQL at `url` and creates the schema when missing (replicas starting
    /// together take turns through an advisory lock).
    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        Ok(Self::Postgres(PostgresStore::open(url).await?))
    }

    /// Whether other control planes may write the same database, so that this one must write
    /// every heartbeat through and fold in what the others received.
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    pub async fn ping(&self) -> bool {
        on_backend!(self, s => s.ping().await)
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

    /// The latest `limit` audit entries, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        on_backend!(self, s => s.audit_log(limit).await)
    }
}
