//! The origin's durable state in SQLite (WAL, `synchronous=FULL`): uploads in progress with
//! their acknowledged offsets, and assets with their packaging state, which is the job queue.
//! A job whose origin died under it is found in state `packaging` at the next start and queued
//! again (up to a number of attempts).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// Errors of the state database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database task failed")]
    Task,
    #[error("the asset {0:?} exists and is {1}")]
    AssetExists(String, String),
    #[error(
        "{path}: schema version {found} is newer than this build knows ({known}); run the estuary that made it, or move the file away"
    )]
    SchemaTooNew {
        path: String,
        found: u32,
        known: u32,
    },
    #[error(
        "the state belongs to storage {recorded}, but [storage] is {configured}: its uploads and jobs are not this storage's; set [state] dir to this storage's own folder (or leave it unset for the default, which is per storage)"
    )]
    OtherStorage {
        recorded: String,
        configured: String,
    },
}

/// An upload as the database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub id: String,
    pub asset: String,
    pub filename: String,
    pub length: u64,
    /// Bytes received, written and synced to disk (what `HEAD` reports).
    pub offset: u64,
    /// The `Upload-Metadata` header as received.
    pub metadata: String,
    pub created_at: u64,
    pub complete: bool,
}

/// An asset's packaging state, as `GET /v1/assets/<id>` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Asset {
    pub id: String,
    /// `uploading`, `queued`, `packaging`, `ready`, `failed`, or `missing` (it was ready,
    /// but its objects are gone from the storage).
    pub state: String,
    /// Fraction of the packaging done (0..1), while packaging.
    pub progress: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub attempts: u32,
    /// When a job queued again after a failed attempt runs next (unix seconds); `error` then
    /// says why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    pub updated_at: u64,
    #[serde(skip)]
    pub source: Option<String>,
    /// A raw upload's declared type: the asset is that one file, not a packaged ladder.
    #[serde(rename = "mime", skip_serializing_if = "Option::is_none")]
    pub raw_mime: Option<String>,
}

/// A packaging job taken from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub asset: String,
    /// The uploaded file.
    pub source: String,
    pub attempt: u32,
    /// A raw upload (chat media), published as is: its declared type and size.
    pub raw: Option<Raw>,
}

/// What a raw upload declared: its MIME type and exact size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw {
    pub mime: String,
    pub size: u64,
}

/// The database handle; cheap to clone. Every call runs on the blocking pool.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

/// The schema, one migration per version: `MIGRATIONS[i]` takes a database at
/// `PRAGMA user_version = i` to `i + 1`, in one transaction with the version's update.
/// Databases made before the schema had a version are at 0 and hold the tables of version 1
/// (with or without `next_attempt_at`), which is why the first steps look before they create.
/// Append a step for every change; never edit one that shipped.
const MIGRATIONS: &[fn(&Connection) -> rusqlite::Result<()>] = &[
    |c| c.execute_batch(SCHEMA_V1),
    // Jobs retried with backoff (made by an unversioned ad-hoc step in some databases).
    |c| {
        let has_next: bool = c
            .prepare("SELECT 1 FROM pragma_table_info('assets') WHERE name = 'next_attempt_at'")?
            .exists([])?;
        if has_next {
            return Ok(());
        }
        c.execute_batch("ALTER TABLE assets ADD COLUMN next_attempt_at INTEGER NOT NULL DEFAULT 0")
    },
    // Facts about the state itself: the storage it belongs to (`Db::bind_storage`).
    |c| c.execute_batch("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"),
    // Chat media published as is (a raw-upload credential): the declared type and size.
    |c| {
        c.execute_batch(
            "ALTER TABLE assets ADD COLUMN raw_mime TEXT;
             ALTER TABLE assets ADD COLUMN raw_size INTEGER;",
        )
    },
];

/// The version the code reads and writes.
const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    asset TEXT NOT NULL,
    filename TEXT NOT NULL,
    length INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS assets (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    duration REAL,
    source TEXT,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS assets_state ON assets(state, updated_at);
";

/// The `error` of a `missing` asset.
pub const MISSING_REASON: &str =
    "the published objects are gone from the storage; upload the asset again";

fn now() -> u64 {
    estuary_common::unix_now()
}

/// Brings the database to [`SCHEMA_VERSION`], one step per transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), DbError> {
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let Some(step) = MIGRATIONS.get(found as usize) else {
            if found > SCHEMA_VERSION {
                return Err(DbError::SchemaTooNew {
                    path: path.display().to_string(),
                    found,
                    known: SCHEMA_VERSION,
                });
            }
            return Ok(());
        };
        step(&tx)?;
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
        if found + 1 == SCHEMA_VERSION {
            tracing::info!(file = %path.display(), version = SCHEMA_VERSION, "The state database's schema was brought up to date.");
        }
    }
}

impl Db {
    /// Opens (creating) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut conn = conn;
        migrate(&mut conn, path)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Records that this state belongs to the storage `identity`
    /// ([`crate::config::StorageConfig::identity`]), or refuses when it belongs to another:
    /// the jobs and uploads of one storage answered for another would say an asset is there
    /// (`409 exists and is ready`) that the storage does not hold. A database made before
    /// the storage was recorded takes the first storage it is opened with.
    pub async fn bind_storage(&self, identity: &str) -> Result<(), DbError> {
        let configured = identity.to_owned();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let recorded: Option<String> = tx
                .query_row("SELECT value FROM meta WHERE key = 'storage'", [], |r| {
                    r.get(0)
                })
                .optional()?;
            match recorded {
                Some(recorded) if recorded != configured => Err(DbError::OtherStorage {
                    recorded,
                    configured,
                }),
                Some(_) => Ok(()),
                None => {
                    tx.execute(
                        "INSERT INTO meta (key, value) VALUES ('storage', ?1)",
                        params![configured],
                    )?;
                    tx.commit()?;
                    Ok(())
                }
            }
        })
        .await
    }

    /// The schema version of the open database.
    pub async fn schema_version(&self) -> Result<u32, DbError> {
        self.with(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .await
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().map_err(|_| DbError::Task)?;
            f(&mut c)
        })
        .await
        .map_err(|_| DbError::Task)?
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        self.with(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .is_ok()
    }

    /// Records a new upload and its asset (state `uploading`). An asset id that is taken is
    /// refused unless its asset failed, is missing, or is `ready` while the storage holds no
    /// `asset.json` for it (`published`: its objects vanished). A raw upload (`raw`) is
    /// refused for any id that is taken: its credential creates one upload, never replaces.
    /// Returns the replaced asset's kept upload file, for the caller to remove.
    pub async fn create_upload(
        &self,
        upload: Upload,
        published: bool,
        raw: Option<Raw>,
    ) -> Result<Option<String>, DbError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let existing: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT state, source FROM assets WHERE id = ?1",
                    [&upload.asset],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let mut old_source = None;
            if let Some((state, source)) = existing {
                let replaceable = raw.is_none()
                    && (state == "failed" || state == "missing" || (state == "ready" && !published));
                if !replaceable {
                    return Err(DbError::AssetExists(upload.asset, state));
                }
                old_source = source;
            }
            tx.execute(
                "INSERT OR REPLACE INTO assets (id, state, progress, error, attempts, duration, source, updated_at, raw_mime, raw_size)
                 VALUES (?1, 'uploading', 0, NULL, 0, NULL, NULL, ?2, ?3, ?4)",
                params![
                    upload.asset,
                    now(),
                    raw.as_ref().map(|r| r.mime.clone()),
                    raw.as_ref().map(|r| r.size)
                ],
            )?;
            tx.execute(
                "INSERT INTO uploads (id, asset, filename, length, offset, metadata, created_at, complete)
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, 0)",
                params![
                    upload.id,
                    upload.asset,
                    upload.filename,
                    upload.length,
                    upload.metadata,
                    upload.created_at
                ],
            )?;
            tx.commit()?;
            Ok(old_source)
        })
        .await
    }

    pub async fn upload(&self, id: &str) -> Result<Option<Upload>, DbError> {
        let id = id.to_owned();
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT id, asset, filename, length, offset, metadata, created_at, complete
                 FROM uploads WHERE id = ?1",
                [id],
                |r| {
                    Ok(Upload {
                        id: r.get(0)?,
                        asset: r.get(1)?,
                        filename: r.get(2)?,
                        length: r.get(3)?,
                        offset: r.get(4)?,
                        metadata: r.get(5)?,
                        created_at: r.get(6)?,
                        complete: r.get::<_, i64>(7)? != 0,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Records bytes received and synced.
    pub async fn set_offset(&self, id: &str, offset: u64) -> Result<(), DbError> {
        let id = id.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE uploads SET offset = ?2 WHERE id = ?1",
                params![id, offset],
            )?;
            Ok(())
        })
        .await
    }

    /// Marks an upload complete and queues its asset's packaging, in one transaction.
    pub async fn complete_upload(&self, id: &str, source: &str) -> Result<(), DbError> {
        let (id, source) = (id.to_owned(), source.to_owned());
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE uploads SET complete = 1, offset = length WHERE id = ?1",
                [&id],
            )?;
            tx.execute(
                "UPDATE assets SET state = 'queued', source = ?2, updated_at = ?3
                 WHERE id = (SELECT asset FROM uploads WHERE id = ?1)",
                params![id, source, now()],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Forgets an upload (TUS termination or expiry); its asset goes too while still
    /// `uploading`.
    pub async fn delete_upload(&self, id: &str) -> Result<(), DbError> {
        let id = id.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM assets WHERE state = 'uploading'
                 AND id = (SELECT asset FROM uploads WHERE id = ?1)",
                [&id],
            )?;
            tx.execute("DELETE FROM uploads WHERE id = ?1", [&id])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Uploads created before `before` (unix seconds) and not complete.
    pub async fn stale_uploads(&self, before: u64) -> Result<Vec<String>, DbError> {
        self.with(move |c| {
            let mut st =
                c.prepare("SELECT id FROM uploads WHERE complete = 0 AND created_at < ?1")?;
            let ids = st
                .query_map([before], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(ids)
        })
        .await
    }

    pub async fn asset(&self, id: &str) -> Result<Option<Asset>, DbError> {
        let id = id.to_owned();
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT id, state, progress, error, attempts, duration, updated_at, source,
                 next_attempt_at, raw_mime FROM assets WHERE id = ?1",
                [id],
                |r| {
                    let state: String = r.get(1)?;
                    let next: u64 = r.get(8)?;
                    Ok(Asset {
                        id: r.get(0)?,
                        next_attempt_at: (state == "queued" && next > 0).then_some(next),
                        state,
                        progress: r.get(2)?,
                        error: r.get(3)?,
                        attempts: r.get(4)?,
                        duration_seconds: r.get(5)?,
                        updated_at: r.get(6)?,
                        source: r.get(7)?,
                        raw_mime: r.get(9)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Jobs interrupted by a stop or a crash (still `packaging`) go back to the queue, or
    /// fail once they have used their attempts. Returns how many were queued again.
    pub async fn requeue_interrupted(&self, max_attempts: u32) -> Result<usize, DbError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE assets SET state = 'failed', updated_at = ?2,
                 error = 'packaging was interrupted ' || attempts || ' times'
                 WHERE state = 'packaging' AND attempts >= ?1",
                params![max_attempts, now()],
            )?;
            let n = tx.execute(
                "UPDATE assets SET state = 'queued', progress = 0, updated_at = ?1
                 WHERE state = 'packaging'",
                [now()],
            )?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    /// Takes the oldest queued job that is due, marking it `packaging`.
    pub async fn claim_job(&self) -> Result<Option<Job>, DbError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let job = tx
                .query_row(
                    "SELECT id, source, attempts, raw_mime, raw_size FROM assets
                     WHERE state = 'queued' AND next_attempt_at <= ?1
                     ORDER BY updated_at, id LIMIT 1",
                    [now()],
                    |r| {
                        let mime: Option<String> = r.get(3)?;
                        let size: Option<u64> = r.get(4)?;
                        Ok(Job {
                            asset: r.get(0)?,
                            source: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                            attempt: r.get::<_, u32>(2)? + 1,
                            raw: mime.zip(size).map(|(mime, size)| Raw { mime, size }),
                        })
                    },
                )
                .optional()?;
            if let Some(j) = &job {
                tx.execute(
                    "UPDATE assets SET state = 'packaging', progress = 0, attempts = ?2,
                     updated_at = ?3 WHERE id = ?1",
                    params![j.asset, j.attempt, now()],
                )?;
            }
            tx.commit()?;
            Ok(job)
        })
        .await
    }

    pub async fn set_progress(&self, asset: &str, progress: f64) -> Result<(), DbError> {
        let asset = asset.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE assets SET progress = ?2 WHERE id = ?1 AND state = 'packaging'",
                params![asset, progress.clamp(0.0, 1.0)],
            )?;
            Ok(())
        })
        .await
    }

    /// Ends a job: `ready` with the asset's duration, or `failed` with the reason; the
    /// upload file is forgotten unless `keep_source` (a failure that was not the input's
    /// fault: `POST /v1/assets/<id>/retry` runs it again).
    pub async fn finish_job(
        &self,
        asset: &str,
        outcome: Result<f64, String>,
        keep_source: bool,
    ) -> Result<(), DbError> {
        let asset = asset.to_owned();
        self.with(move |c| {
            match outcome {
                Ok(duration) => c.execute(
                    "UPDATE assets SET state = 'ready', progress = 1, error = NULL, duration = ?2,
                     source = NULL, next_attempt_at = 0, updated_at = ?3 WHERE id = ?1",
                    params![asset, duration, now()],
                )?,
                Err(reason) => c.execute(
                    "UPDATE assets SET state = 'failed', error = ?2, updated_at = ?3,
                     next_attempt_at = 0, source = CASE WHEN ?4 THEN source END WHERE id = ?1",
                    params![asset, reason, now(), keep_source],
                )?,
            };
            Ok(())
        })
        .await
    }

    /// Queues a job again after a failed attempt, to run at `at` (unix seconds).
    pub async fn retry_job(&self, asset: &str, reason: String, at: u64) -> Result<(), DbError> {
        let asset = asset.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE assets SET state = 'queued', progress = 0, error = ?2, next_attempt_at = ?3,
                 updated_at = ?4 WHERE id = ?1 AND state = 'packaging'",
                params![asset, reason, at, now()],
            )?;
            Ok(())
        })
        .await
    }

    /// Queues a failed asset whose upload was kept again, with its attempts reset; whether
    /// there was one.
    pub async fn requeue_failed(&self, asset: &str) -> Result<bool, DbError> {
        let asset = asset.to_owned();
        self.with(move |c| {
            let n = c.execute(
                "UPDATE assets SET state = 'queued', progress = 0, attempts = 0, error = NULL,
                 next_attempt_at = 0, updated_at = ?2
                 WHERE id = ?1 AND state = 'failed' AND source IS NOT NULL",
                params![asset, now()],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// Records that a ready asset's objects are gone from the storage (state `missing`).
    pub async fn mark_missing(&self, asset: &str) -> Result<(), DbError> {
        let asset = asset.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE assets SET state = 'missing', error = ?2, updated_at = ?3
                 WHERE id = ?1 AND state = 'ready'",
                params![asset, MISSING_REASON, now()],
            )?;
            Ok(())
        })
        .await
    }

    /// Forgets an asset (after it was unpublished).
    pub async fn delete_asset(&self, id: &str) -> Result<(), DbError> {
        let id = id.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM uploads WHERE asset = ?1", [&id])?;
            tx.execute("DELETE FROM assets WHERE id = ?1", [&id])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Counts assets by state (for metrics).
    pub async fn count_by_state(&self) -> Result<Vec<(String, u64)>, DbError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT state, COUNT(*) FROM assets GROUP BY state")?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<(String, u64)>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(id: &str, asset: &str) -> Upload {
        Upload {
            id: id.into(),
            asset: asset.into(),
            filename: "in.mp4".into(),
            length: 10,
            offset: 0,
            metadata: String::new(),
            created_at: 1,
            complete: false,
        }
    }

    /// The tables as the origin made them before the schema had a version, with one asset
    /// queued and one upload in progress; `retries` adds the column of the ad-hoc step.
    fn unversioned_database(file: &Path, retries: bool) {
        let c = Connection::open(file).expect("open");
        c.execute_batch(&format!(
            "CREATE TABLE uploads (id TEXT PRIMARY KEY, asset TEXT NOT NULL, filename TEXT NOT NULL,
                length INTEGER NOT NULL, offset INTEGER NOT NULL, metadata TEXT NOT NULL,
                created_at INTEGER NOT NULL, complete INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE assets (id TEXT PRIMARY KEY, state TEXT NOT NULL,
                progress REAL NOT NULL DEFAULT 0, error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
                duration REAL, source TEXT, updated_at INTEGER NOT NULL{});
             CREATE INDEX assets_state ON assets(state, updated_at);
             INSERT INTO uploads VALUES ('u9', 'a9', 'in.mp4', 10, 4, '', 1, 0);
             INSERT INTO assets (id, state, attempts, source, updated_at)
                VALUES ('a8', 'queued', 1, '/x/a8', 1);",
            if retries {
                ", next_attempt_at INTEGER NOT NULL DEFAULT 0"
            } else {
                ""
            }
        ))
        .expect("old schema");
    }

    #[tokio::test]
    async fn a_database_of_the_unversioned_schema_is_migrated_with_its_data() {
        let dir = std::env::temp_dir().join(format!("estuary-origin-mig-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        for retries in [false, true] {
            let file = dir.join(format!("origin-{retries}.db"));
            unversioned_database(&file, retries);
            let db = Db::open(&file).expect("open the old database");
            assert_eq!(db.schema_version().await.expect("version"), SCHEMA_VERSION);
            let u = db.upload("u9").await.expect("upload").expect("kept");
            assert_eq!((u.asset.as_str(), u.offset), ("a9", 4));
            let job = db
                .claim_job()
                .await
                .expect("claim")
                .expect("the queued asset");
            assert_eq!((job.asset.as_str(), job.attempt), ("a8", 2));
            db.retry_job("a8", "try later".into(), 77)
                .await
                .expect("retry");
            let a = db.asset("a8").await.expect("asset").expect("kept");
            assert_eq!(a.next_attempt_at, Some(77));
            drop(db);
            // Opening again changes nothing.
            let db = Db::open(&file).expect("reopen");
            assert_eq!(db.schema_version().await.expect("version"), SCHEMA_VERSION);
            assert!(db.upload("u9").await.expect("upload").is_some());
        }
        // A database of a newer build is refused, naming the file and both versions.
        let file = dir.join("newer.db");
        Connection::open(&file)
            .and_then(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION + 1))
            .expect("newer");
        let err = Db::open(&file).expect_err("newer").to_string();
        assert!(
            err.contains("newer.db") && err.contains(&format!("version {}", SCHEMA_VERSION + 1)),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_raw_upload_takes_only_a_free_id_and_its_job_knows_it_is_raw() {
        let dir = std::env::temp_dir().join(format!("estuary-origin-raw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let db = Db::open(&dir.join("origin.db")).expect("open");
        let raw = || {
            Some(Raw {
                mime: "image/png".into(),
                size: 10,
            })
        };
        db.create_upload(upload("u1", "chat-a"), true, raw())
            .await
            .expect("create");
        db.complete_upload("u1", "/x/u1").await.expect("complete");
        let job = db.claim_job().await.expect("claim").expect("a job");
        assert_eq!(job.raw, raw());
        db.finish_job("chat-a", Err("not a png".into()), false)
            .await
            .expect("finish");
        let a = db.asset("chat-a").await.expect("asset").expect("kept");
        assert_eq!(
            (a.state.as_str(), a.raw_mime.as_deref()),
            ("failed", Some("image/png"))
        );
        // A packaged upload may replace a failed asset; a raw one never replaces anything.
        assert!(matches!(
            db.create_upload(upload("u2", "chat-a"), true, raw()).await,
            Err(DbError::AssetExists(..))
        ));
        db.create_upload(upload("u3", "chat-a"), true, None)
            .await
            .expect("an operator's upload replaces a failed asset");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_state_is_bound_to_the_storage_it_was_first_opened_with() {
        let dir = std::env::temp_dir().join(format!("estuary-origin-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let db = Db::open(&dir.join("origin.db")).expect("open");
        db.bind_storage("file:///srv/a").await.expect("first");
        db.bind_storage("file:///srv/a").await.expect("same");
        let err = db
            .bind_storage("s3://media/vod")
            .await
            .expect_err("another storage")
            .to_string();
        assert!(
            err.contains("file:///srv/a") && err.contains("s3://media/vod"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_queue_survives_a_reopen_and_requeues_interrupted_jobs() {
        let dir = std::env::temp_dir().join(format!("estuary-origin-db-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("origin.db");
        {
            let db = Db::open(&file).expect("open");
            db.create_upload(upload("u1", "a1"), true, None)
                .await
                .expect("create");
            assert!(matches!(
                db.create_upload(upload("u2", "a1"), true, None).await,
                Err(DbError::AssetExists(..))
            ));
            db.set_offset("u1", 4).await.expect("offset");
            assert_eq!(
                db.upload("u1").await.expect("get").map(|u| u.offset),
                Some(4)
            );
            db.complete_upload("u1", "/x/u1").await.expect("complete");
            let job = db.claim_job().await.expect("claim").expect("a job");
            assert_eq!((job.asset.as_str(), job.attempt), ("a1", 1));
            assert_eq!(db.claim_job().await.expect("claim"), None);
        }
        // The origin died while packaging: the job is queued again at the next start.
        let db = Db::open(&file).expect("reopen");
        assert_eq!(db.requeue_interrupted(3).await.expect("requeue"), 1);
        let job = db.claim_job().await.expect("claim").expect("again");
        assert_eq!(job.attempt, 2);
        db.finish_job("a1", Ok(8.0), false).await.expect("finish");
        let a = db.asset("a1").await.expect("asset").expect("exists");
        assert_eq!((a.state.as_str(), a.duration_seconds), ("ready", Some(8.0)));
        // Out of attempts: failed, not queued forever.
        db.create_upload(upload("u3", "a3"), true, None)
            .await
            .expect("create");
        db.complete_upload("u3", "/x/u3").await.expect("complete");
        for _ in 0..2 {
            db.claim_job().await.expect("claim");
            db.requeue_interrupted(2).await.expect("requeue");
        }
        let a = db.asset("a3").await.expect("asset").expect("exists");
        assert_eq!(a.state, "failed", "{a:?}");
        // A failed attempt waits for its time; a kept upload can be queued again.
        db.create_upload(upload("u5", "a5"), true, None)
            .await
            .expect("create");
        db.complete_upload("u5", "/x/u5").await.expect("complete");
        let job = db.claim_job().await.expect("claim").expect("a job");
        db.retry_job("a5", "storage down".into(), now() + 1000)
            .await
            .expect("retry");
        let a = db.asset("a5").await.expect("asset").expect("exists");
        assert_eq!(
            (a.state.as_str(), a.next_attempt_at),
            ("queued", Some(now() + 1000))
        );
        assert_eq!(db.claim_job().await.expect("claim"), None, "not due yet");
        db.finish_job(&job.asset, Err("out of attempts".into()), true)
            .await
            .expect("finish");
        assert!(db.requeue_failed("a5").await.expect("requeue"));
        let a = db.asset("a5").await.expect("asset").expect("exists");
        assert_eq!((a.state.as_str(), a.attempts), ("queued", 0));
        // A ready asset whose objects vanished is missing, and its id can be uploaded again;
        // a ready one that is still published cannot.
        assert!(matches!(
            db.create_upload(upload("u6", "a1"), true, None).await,
            Err(DbError::AssetExists(..))
        ));
        db.mark_missing("a1").await.expect("missing");
        let a = db.asset("a1").await.expect("asset").expect("exists");
        assert_eq!(a.state, "missing");
        db.create_upload(upload("u6", "a1"), true, None)
            .await
            .expect("replace");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
