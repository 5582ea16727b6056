//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so that a call
//! that returned is on disk (the relay says `sent` only after it). The schema has a version
//! and append-only migrations; a newer file is refused.

use std::path::Path;

use estuary_common::chat::{Media, ReceiptState};
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Content, Inserted, MAX_UNREAD, NewMessage, Receipt, Store, StoreError, StoreResult, Stored,
    StoredReceipt,
};

/// The schema this build writes.
pub const SCHEMA_VERSION: i64 = 2;

const MIGRATIONS: [&str; 2] = [
    "
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation TEXT NOT NULL,
        sender TEXT NOT NULL,
        sender_device TEXT NOT NULL,
        client_id TEXT NOT NULL,
        body TEXT,
        media TEXT,
        ts INTEGER NOT NULL,
        UNIQUE (sender, sender_device, client_id)
    );
    CREATE INDEX messages_by_conversation ON messages (conversation, id);
    CREATE TABLE inbox (
        user TEXT NOT NULL,
        device TEXT NOT NULL,
        msg INTEGER NOT NULL REFERENCES messages (id),
        PRIMARY KEY (user, device, msg)
    ) WITHOUT ROWID;
    CREATE TABLE devices (
        user TEXT NOT NULL,
        device TEXT NOT NULL,
        receipts_seen INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user, device)
    ) WITHOUT ROWID;
    CREATE TABLE receipts (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        msg INTEGER NOT NULL,
        user TEXT NOT NULL,
        state TEXT NOT NULL,
        ts INTEGER NOT NULL,
        sender TEXT NOT NULL,
        UNIQUE (msg, user, state)
    );
    CREATE INDEX receipts_by_sender ON receipts (sender, seq);
    CREATE TABLE groups (
        grp TEXT PRIMARY KEY,
        owner TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE members (
        grp TEXT NOT NULL,
        user TEXT NOT NULL,
        PRIMARY KEY (grp, user)
    ) WITHOUT ROWID;
    CREATE TABLE last_seen (
        user TEXT PRIMARY KEY,
        ts INTEGER NOT NULL
    ) WITHOUT ROWID;
",
    "
    CREATE TABLE cluster (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        stream TEXT NOT NULL,
        applied INTEGER NOT NULL
    );
",
];

/// [`Store`] on SQLite.
pub struct SqliteStore {
    conn: Connection,
    /// The id the next stored message or receipt takes (a replica applying its log gives
    /// them the log's sequence numbers); otherwise SQLite numbers them.
    next_id: Option<i64>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::setup(Connection::open(path)?)
    }

    /// A store in memory, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Self {
            conn,
            next_id: None,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        loop {
            let tx = self.conn.transaction()?;
            let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::TooNew {
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            let Some(step) = usize::try_from(found).ok().and_then(|i| MIGRATIONS.get(i)) else {
                return Ok(());
            };
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", found + 1)?;
            tx.commit()?;
        }
    }

    /// Gives the next stored message or receipt this id (once).
    pub fn assign_next_id(&mut self, id: i64) {
        self.next_id = Some(id);
    }

    /// The log this store replicates and the last sequence applied, if it is a replica.
    pub fn cluster_position(&self) -> Result<Option<(String, u64)>, StoreError> {
        let row: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT stream, applied FROM cluster WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.map(|(s, a)| (s, u64::try_from(a).unwrap_or(0))))
    }

    /// Records the last sequence of `stream` applied.
    pub fn set_cluster_position(&mut self, stream: &str, applied: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO cluster (id, stream, applied) VALUES (1, ?1, ?2) ON CONFLICT (id) DO UPDATE SET stream = excluded.stream, applied = excluded.applied",
            params![stream, i64::try_from(applied).unwrap_or(i64::MAX)],
        )?;
        Ok(())
    }

    /// Whether any message or group is stored.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.conn.query_row(
            "SELECT NOT EXISTS (SELECT 1 FROM messages) AND NOT EXISTS (SELECT 1 FROM groups) AND NOT EXISTS (SELECT 1 FROM devices)",
            [],
            |r| r.get(0),
        )?)
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }
}

const MESSAGE_COLUMNS: &str = "m.id, m.conversation, m.sender, m.body, m.media, m.ts";

fn row_to_stored(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Stored, Option<String>)> {
    let body: Option<String> = r.get(3)?;
    let media: Option<String> = r.get(4)?;
    let ts: i64 = r.get(5)?;
    Ok((
        Stored {
            id: r.get(0)?,
            conversation: r.get(1)?,
            sender: r.get(2)?,
            content: Content::Body(body.unwrap_or_default()),
            ts: u64::try_from(ts).unwrap_or(0),
        },
        media,
    ))
}

/// Turns a row's media JSON (if any) into its content.
fn finish((mut stored, media): (Stored, Option<String>)) -> Result<Stored, StoreError> {
    if let Some(json) = media {
        let media: Media =
            serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        stored.content = Content::Media(media);
    }
    Ok(stored)
}

fn collect(
    rows: impl Iterator<Item = rusqlite::Result<(Stored, Option<String>)>>,
) -> Result<Vec<Stored>, StoreError> {
    rows.map(|r| finish(r?)).collect()
}

fn ts_sql(ts: u64) -> i64 {
    i64::try_from(ts).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn register_device(&mut self, user: &str, device: &str) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let known: i64 = tx.query_row(
            "SELECT count(*) FROM devices WHERE user = ?1",
            [user],
            |r| r.get(0),
        )?;
        tx.execute(
            // A new device starts after the receipts given so far.
            "INSERT OR IGNORE INTO devices (user, device, receipts_seen) VALUES (?1, ?2, (SELECT coalesce(max(seq), 0) FROM receipts))",
            [user, device],
        )?;
        let taken = if known == 0 {
            tx.execute(
                "UPDATE inbox SET device = ?2 WHERE user = ?1 AND device = ''",
                [user, device],
            )?
        } else {
            0
        };
        tx.commit()?;
        Ok(taken as u64)
    }

    fn devices(&mut self, user: &str) -> Result<Vec<String>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT device FROM devices WHERE user = ?1 ORDER BY device")?;
        let devices = st
            .query_map([user], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(if devices.is_empty() {
            vec![String::new()]
        } else {
            devices
        })
    }

    fn insert_message(
        &mut self,
        m: &NewMessage,
        inboxes: &[(String, String)],
    ) -> Result<Inserted, StoreError> {
        let forced_id = self.next_id.take();
        let tx = self.conn.transaction()?;
        let existing = tx
            .query_row(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE sender = ?1 AND sender_device = ?2 AND client_id = ?3"
                ),
                [&m.sender, &m.sender_device, &m.client_id],
                row_to_stored,
            )
            .optional()?;
        if let Some(row) = existing {
            return Ok(Inserted::Duplicate(finish(row)?));
        }
        let (body, media) = match &m.content {
            Content::Body(b) => (Some(b.as_str()), None),
            Content::Media(media) => (
                None,
                Some(serde_json::to_string(media).map_err(|e| StoreError::Corrupt(e.to_string()))?),
            ),
        };
        tx.execute(
            "INSERT INTO messages (id, conversation, sender, sender_device, client_id, body, media, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![forced_id, m.conversation, m.sender, m.sender_device, m.client_id, body, media, ts_sql(m.ts)],
        )?;
        let id = tx.last_insert_rowid();
        let mut n = 0;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO inbox (user, device, msg) VALUES (?1, ?2, ?3)",
            )?;
            for (user, device) in inboxes {
                n += st.execute(params![user, device, id])? as u64;
            }
        }
        tx.commit()?;
        Ok(Inserted::New(
            Stored {
                id,
                conversation: m.conversation.clone(),
                sender: m.sender.clone(),
                content: m.content.clone(),
                ts: m.ts,
            },
            n,
        ))
    }

    fn inbox(&mut self, user: &str, device: &str) -> Result<Vec<Stored>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM inbox i JOIN messages m ON m.id = i.msg WHERE i.user = ?1 AND i.device = ?2 ORDER BY i.msg"
        ))?;
        let rows = st.query_map([user, device], row_to_stored)?;
        collect(rows)
    }

    fn ack(&mut self, user: &str, device: &str, ids: &[i64]) -> Result<Vec<Stored>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut acked = Vec::new();
        {
            let mut del = tx
                .prepare_cached("DELETE FROM inbox WHERE user = ?1 AND device = ?2 AND msg = ?3")?;
            let mut get = tx.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = ?1"
            ))?;
            for id in ids {
                if del.execute(params![user, device, id])? == 1
                    && let Some(row) = get.query_row([id], row_to_stored).optional()?
                {
                    acked.push(finish(row)?);
                }
            }
        }
        tx.commit()?;
        Ok(acked)
    }

    fn record_receipt(&mut self, r: Receipt<'_>) -> StoreResult<Option<i64>> {
        let forced_id = self.next_id.take();
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO receipts (seq, msg, user, state, ts, sender) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![forced_id, r.msg, r.user, r.state.as_str(), ts_sql(r.ts), r.sender],
        )?;
        Ok((n == 1).then(|| self.conn.last_insert_rowid()))
    }

    fn receipts_for(&mut self, sender: &str, device: &str) -> StoreResult<Vec<StoredReceipt>> {
        let mut st = self.conn.prepare_cached(
            "SELECT r.seq, r.msg, r.user, r.state, r.ts FROM receipts r JOIN devices d ON d.user = r.sender
             WHERE r.sender = ?1 AND d.device = ?2 AND r.seq > d.receipts_seen ORDER BY r.seq LIMIT ?3",
        )?;
        let rows = st.query_map(params![sender, device, MAX_UNREAD], |r| {
            let state: String = r.get(3)?;
            let ts: i64 = r.get(4)?;
            Ok(StoredReceipt {
                seq: r.get(0)?,
                msg: r.get(1)?,
                by: r.get(2)?,
                state: if state == "read" {
                    ReceiptState::Read
                } else {
                    ReceiptState::Delivered
                },
                ts: u64::try_from(ts).unwrap_or(0),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn receipts_seen(&mut self, user: &str, device: &str, seq: i64) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE devices SET receipts_seen = max(receipts_seen, ?3) WHERE user = ?1 AND device = ?2",
            params![user, device, seq],
        )?;
        Ok(())
    }

    fn unread_upto(&mut self, conv: &str, reader: &str, upto: i64) -> StoreResult<Vec<Stored>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation = ?1 AND m.sender <> ?2 AND m.id <= ?3
             AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r.msg = m.id AND r.user = ?2 AND r.state = 'read')
             ORDER BY m.id LIMIT ?4"
        ))?;
        let rows = st.query_map(params![conv, reader, upto, MAX_UNREAD], row_to_stored)?;
        collect(rows)
    }

    fn history(
        &mut self,
        conversation: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation = ?1 AND m.id < ?2 ORDER BY m.id DESC LIMIT ?3"
        ))?;
        let rows = st.query_map(
            params![conversation, before.unwrap_or(i64::MAX), limit],
            row_to_stored,
        )?;
        let mut out = collect(rows)?;
        out.reverse();
        Ok(out)
    }

    fn create_group(
        &mut self,
        group: &str,
        owner: &str,
        members: &[String],
    ) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        if tx.execute(
            "INSERT OR IGNORE INTO groups (grp, owner) VALUES (?1, ?2)",
            [group, owner],
        )? == 0
        {
            return Ok(false);
        }
        {
            let mut st =
                tx.prepare_cached("INSERT OR IGNORE INTO members (grp, user) VALUES (?1, ?2)")?;
            for m in members {
                st.execute([group, m])?;
            }
        }
        tx.commit()?;
        Ok(true)
    }

    fn group(&mut self, group: &str) -> Result<Option<(String, Vec<String>)>, StoreError> {
        let owner: Option<String> = self
            .conn
            .query_row("SELECT owner FROM groups WHERE grp = ?1", [group], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(owner) = owner else {
            return Ok(None);
        };
        let mut st = self
            .conn
            .prepare_cached("SELECT user FROM members WHERE grp = ?1 ORDER BY user")?;
        let members = st
            .query_map([group], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(Some((owner, members)))
    }

    fn add_members(&mut self, group: &str, members: &[String]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut st =
                tx.prepare_cached("INSERT OR IGNORE INTO members (grp, user) VALUES (?1, ?2)")?;
            for m in members {
                st.execute([group, m])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn remove_members(&mut self, group: &str, members: &[String]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached("DELETE FROM members WHERE grp = ?1 AND user = ?2")?;
            for m in members {
                st.execute([group, m])?;
            }
        }
        tx.execute(
            "DELETE FROM groups WHERE grp = ?1 AND NOT EXISTS (SELECT 1 FROM members WHERE grp = ?1)",
            [group],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn set_last_seen(&mut self, user: &str, ts: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO last_seen (user, ts) VALUES (?1, ?2) ON CONFLICT (user) DO UPDATE SET ts = excluded.ts",
            params![user, ts_sql(ts)],
        )?;
        Ok(())
    }

    fn last_seen(&mut self, user: &str) -> Result<Option<u64>, StoreError> {
        let ts: Option<i64> = self
            .conn
            .query_row("SELECT ts FROM last_seen WHERE user = ?1", [user], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(ts.map(|t| u64::try_from(t).unwrap_or(0)))
    }

    fn inbox_depth(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(client_id: &str, body: &str) -> NewMessage {
        NewMessage {
            conversation: "dm:alice:bob".into(),
            sender: "alice".into(),
            sender_device: "phone".into(),
            client_id: client_id.into(),
            content: Content::Body(body.into()),
            ts: 1000,
        }
    }

    #[test]
    fn a_message_survives_reopening_and_leaves_the_inbox_when_acked() {
        let dir = std::env::temp_dir().join(format!("chat-store-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("chat.db");
        let _ = std::fs::remove_file(&path);
        let inboxes = [
            ("bob".to_owned(), "a".to_owned()),
            ("bob".to_owned(), "b".to_owned()),
        ];
        let id = {
            let mut s = SqliteStore::open(&path).expect("open");
            match s
                .insert_message(&message("c1", "hi"), &inboxes)
                .expect("insert")
            {
                Inserted::New(m, 2) => m.id,
                other => panic!("{other:?}"),
            }
        };
        let mut s = SqliteStore::open(&path).expect("reopen");
        assert_eq!(s.schema_version().expect("version"), SCHEMA_VERSION);
        assert!(matches!(
            s.insert_message(&message("c1", "hi again"), &inboxes),
            Ok(Inserted::Duplicate(m)) if m.id == id && m.content == Content::Body("hi".into())
        ));
        assert_eq!(s.inbox("bob", "a").expect("inbox").len(), 1);
        assert_eq!(s.ack("bob", "a", &[id]).expect("ack").len(), 1);
        assert!(s.ack("bob", "a", &[id]).expect("ack twice").is_empty());
        assert_eq!(s.inbox_depth().expect("depth"), 1);
        assert_eq!(s.inbox("bob", "b").expect("inbox").len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let s = SqliteStore::in_memory().expect("open");
        s.conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump");
        let conn = s.conn;
        assert!(matches!(
            SqliteStore::setup(conn),
            Err(StoreError::TooNew { .. })
        ));
    }

    #[test]
    fn the_first_device_takes_the_entries_kept_for_a_user_without_one() {
        let mut s = SqliteStore::in_memory().expect("open");
        assert_eq!(s.devices("bob").expect("devices"), vec![String::new()]);
        let inboxes = [("bob".to_owned(), String::new())];
        s.insert_message(&message("c1", "hi"), &inboxes)
            .expect("insert");
        assert_eq!(s.register_device("bob", "laptop").expect("register"), 1);
        assert_eq!(s.inbox("bob", "laptop").expect("inbox").len(), 1);
        assert_eq!(s.register_device("bob", "phone").expect("second"), 0);
        assert_eq!(s.devices("bob").expect("devices"), vec!["laptop", "phone"]);
    }
}
