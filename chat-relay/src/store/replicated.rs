//! A replica of the store the relays of a cluster share. Every write is a [`LogEntry`]
//! appended to the shared log (NATS JetStream); every relay applies every entry, in log
//! order, to its own SQLite file, so that all replicas hold the same messages, inboxes,
//! receipts and groups, and a message's id is its entry's log sequence on every relay. A
//! write returns once the log holds it durably and this replica has applied everything up to
//! it, so that its result (a duplicate `send`, an existing group) is the one every relay
//! reaches. Reads are local. What other relays wrote is handed to the core as [`Remote`]s,
//! for the devices connected here.
//!
//! Applying an entry and recording its sequence are two transactions; after a crash between
//! them the entry is applied again, which changes nothing (every entry is idempotent: client
//! ids, receipt keys and sets).

use std::time::{Duration, Instant};

use estuary_common::chat::LogEntry;

use super::{
    Content, Inserted, NewMessage, Receipt, Remote, SqliteStore, Store, StoreError, StoreResult,
    Stored, StoredReceipt,
};

/// The shared log, as one replica sees it.
pub trait Log {
    /// Appends an entry; its sequence number, once the log holds it durably.
    fn append(&mut self, entry: &LogEntry) -> StoreResult<u64>;
    /// The next entry in log order, if one comes within `wait` (zero: only one already here).
    fn next(&mut self, wait: Duration) -> StoreResult<Option<(u64, LogEntry)>>;
}

/// What applying an entry gave.
enum Outcome {
    Taken(u64),
    Inserted(Inserted),
    Acked(Vec<Stored>),
    Receipt(Option<i64>),
    Created(bool),
    Done,
}

/// [`Store`] over a local SQLite replica of the shared log.
pub struct ReplicatedStore<L> {
    local: SqliteStore,
    log: L,
    /// The log's name, kept in the replica so that it is never applied another log.
    stream: String,
    applied: u64,
    /// An entry that failed to apply, tried again before any other.
    retry: Option<(u64, LogEntry)>,
    remote: Vec<Remote>,
    /// The outcome of this relay's write being waited for, once applied.
    own: Option<Outcome>,
    /// How long a write waits for the log to hand its entry back.
    wait: Duration,
}

fn log_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Log(e.to_string())
}

impl<L: Log> ReplicatedStore<L> {
    /// A replica over `local`, which must be empty or a replica of `stream`.
    pub fn new(local: SqliteStore, log: L, stream: &str, wait: Duration) -> StoreResult<Self> {
        let applied = match local.cluster_position()? {
            Some((s, applied)) if s == stream => applied,
            Some((s, _)) => {
                return Err(log_error(format!(
                    "the store is a replica of the stream {s:?}, not {stream:?}"
                )));
            }
            None if local.is_empty()? => 0,
            None => {
                return Err(log_error(
                    "the store holds a relay's own data (it ran without [cluster]); give a clustered relay a new store.path",
                ));
            }
        };
        Ok(Self {
            local,
            log,
            stream: stream.to_owned(),
            applied,
            retry: None,
            remote: Vec::new(),
            own: None,
            wait,
        })
    }

    /// The last log sequence applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Applies entries until `last` is applied, or fails after `wait` without one.
    pub fn catch_up_to(&mut self, last: u64, wait: Duration) -> StoreResult<()> {
        while self.applied < last {
            if !self.apply_next(wait, None)? {
                return Err(log_error(format!(
                    "the log handed nothing for {wait:?} at sequence {} of {last}",
                    self.applied
                )));
            }
        }
        self.remote.clear();
        Ok(())
    }

    /// Applies the next entry, if one comes within `wait`; `own` is the sequence of this
    /// relay's write being waited for (its outcome is returned, not handed to the core).
    fn apply_next(&mut self, wait: Duration, own: Option<u64>) -> StoreResult<bool> {
        let next = match self.retry.take() {
            Some(e) => Some(e),
            None => self.log.next(wait)?,
        };
        let Some((seq, entry)) = next else {
            return Ok(false);
        };
        if seq <= self.applied {
            // Handed again (the log's reader restarted): applied already.
            return Ok(true);
        }
        match self.apply(seq, entry.clone(), own == Some(seq)) {
            Ok(outcome) => {
                if own == Some(seq) {
                    self.own = Some(outcome);
                }
                Ok(true)
            }
            Err(e) => {
                self.retry = Some((seq, entry));
                Err(e)
            }
        }
    }

    fn apply(&mut self, seq: u64, entry: LogEntry, own: bool) -> StoreResult<Outcome> {
        let id = i64::try_from(seq).map_err(log_error)?;
        let l = &mut self.local;
        let outcome = match entry {
            LogEntry::RegisterDevice { user, device } => {
                Outcome::Taken(l.register_device(&user, &device)?)
            }
            LogEntry::InsertMessage {
                conversation,
                sender,
                sender_device,
                client_id,
                body,
                media,
                ts,
                recipients,
            } => {
                let mut inboxes = Vec::new();
                for user in recipients {
                    for device in l.devices(&user)? {
                        inboxes.push((user.clone(), device));
                    }
                }
                let content = match (body, media) {
                    (_, Some(m)) => Content::Media(m),
                    (b, None) => Content::Body(b.unwrap_or_default()),
                };
                let m = NewMessage {
                    conversation,
                    sender,
                    sender_device,
                    client_id,
                    content,
                    ts,
                };
                l.assign_next_id(id);
                let inserted = l.insert_message(&m, &inboxes)?;
                if let (false, Inserted::New(message, _)) = (own, &inserted) {
                    self.remote.push(Remote::Message {
                        message: message.clone(),
                        inboxes,
                    });
                }
                Outcome::Inserted(inserted)
            }
            LogEntry::Ack { user, device, ids } => Outcome::Acked(l.ack(&user, &device, &ids)?),
            LogEntry::RecordReceipt {
                msg,
                user,
                state,
                ts,
                sender,
            } => {
                l.assign_next_id(id);
                let seq = l.record_receipt(Receipt {
                    msg,
                    user: &user,
                    state,
                    ts,
                    sender: &sender,
                })?;
                if let (false, Some(seq)) = (own, seq) {
                    self.remote.push(Remote::Receipt {
                        sender,
                        receipt: StoredReceipt {
                            seq,
                            msg,
                            by: user,
                            state,
                            ts,
                        },
                    });
                }
                Outcome::Receipt(seq)
            }
            LogEntry::ReceiptsSeen { user, device, seq } => {
                l.receipts_seen(&user, &device, seq)?;
                Outcome::Done
            }
            LogEntry::CreateGroup {
                group,
                owner,
                members,
            } => Outcome::Created(l.create_group(&group, &owner, &members)?),
            LogEntry::AddMembers { group, members } => {
                l.add_members(&group, &members)?;
                Outcome::Done
            }
            LogEntry::RemoveMembers { group, members } => {
                l.remove_members(&group, &members)?;
                Outcome::Done
            }
            LogEntry::SetLastSeen { user, ts } => {
                l.set_last_seen(&user, ts)?;
                Outcome::Done
            }
        };
        self.local.set_cluster_position(&self.stream, seq)?;
        self.applied = seq;
        Ok(outcome)
    }

    /// Appends `entry` and applies the log up to it; its outcome.
    fn write(&mut self, entry: LogEntry) -> StoreResult<Outcome> {
        let seq = self.log.append(&entry)?;
        let deadline = Instant::now() + self.wait;
        self.own = None;
        while self.applied < seq {
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.apply_next(left, Some(seq))? {
                return Err(log_error(format!(
                    "the log did not hand back entry {seq} within {:?}",
                    self.wait
                )));
            }
        }
        self.own
            .take()
            .ok_or_else(|| log_error(format!("entry {seq} was applied before it was written")))
    }
}

fn unexpected() -> StoreError {
    log_error("an entry's outcome does not match its kind")
}

impl<L: Log> Store for ReplicatedStore<L> {
    fn catch_up(&mut self) -> StoreResult<()> {
        while self.apply_next(Duration::ZERO, None)? {}
        Ok(())
    }

    fn take_remote(&mut self) -> Vec<Remote> {
        std::mem::take(&mut self.remote)
    }

    fn register_device(&mut self, user: &str, device: &str) -> StoreResult<u64> {
        match self.write(LogEntry::RegisterDevice {
            user: user.to_owned(),
            device: device.to_owned(),
        })? {
            Outcome::Taken(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    fn devices(&mut self, user: &str) -> StoreResult<Vec<String>> {
        self.local.devices(user)
    }

    /// The inbox entries are made where the entry is applied, for the devices the recipients
    /// (the users of `inboxes`) have at that point of the log.
    fn insert_message(
        &mut self,
        m: &NewMessage,
        inboxes: &[(String, String)],
    ) -> StoreResult<Inserted> {
        let (body, media) = match &m.content {
            Content::Body(b) => (Some(b.clone()), None),
            Content::Media(media) => (None, Some(media.clone())),
        };
        match self.write(LogEntry::InsertMessage {
            conversation: m.conversation.clone(),
            sender: m.sender.clone(),
            sender_device: m.sender_device.clone(),
            client_id: m.client_id.clone(),
            body,
            media,
            ts: m.ts,
            recipients: {
                let mut users: Vec<String> = inboxes.iter().map(|(u, _)| u.clone()).collect();
                users.dedup();
                users
            },
        })? {
            Outcome::Inserted(i) => Ok(i),
            _ => Err(unexpected()),
        }
    }

    fn inbox(&mut self, user: &str, device: &str) -> StoreResult<Vec<Stored>> {
        self.local.inbox(user, device)
    }

    fn ack(&mut self, user: &str, device: &str, ids: &[i64]) -> StoreResult<Vec<Stored>> {
        match self.write(LogEntry::Ack {
            user: user.to_owned(),
            device: device.to_owned(),
            ids: ids.to_vec(),
        })? {
            Outcome::Acked(a) => Ok(a),
            _ => Err(unexpected()),
        }
    }

    fn record_receipt(&mut self, r: Receipt<'_>) -> StoreResult<Option<i64>> {
        match self.write(LogEntry::RecordReceipt {
            msg: r.msg,
            user: r.user.to_owned(),
            state: r.state,
            ts: r.ts,
            sender: r.sender.to_owned(),
        })? {
            Outcome::Receipt(seq) => Ok(seq),
            _ => Err(unexpected()),
        }
    }

    fn receipts_for(&mut self, sender: &str, device: &str) -> StoreResult<Vec<StoredReceipt>> {
        self.local.receipts_for(sender, device)
    }

    fn receipts_seen(&mut self, user: &str, device: &str, seq: i64) -> StoreResult<()> {
        self.write(LogEntry::ReceiptsSeen {
            user: user.to_owned(),
            device: device.to_owned(),
            seq,
        })
        .map(drop)
    }

    fn unread_upto(&mut self, conv: &str, reader: &str, upto: i64) -> StoreResult<Vec<Stored>> {
        self.local.unread_upto(conv, reader, upto)
    }

    fn history(
        &mut self,
        conversation: &str,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<Stored>> {
        self.local.history(conversation, before, limit)
    }

    fn create_group(&mut self, group: &str, owner: &str, members: &[String]) -> StoreResult<bool> {
        match self.write(LogEntry::CreateGroup {
            group: group.to_owned(),
            owner: owner.to_owned(),
            members: members.to_vec(),
        })? {
            Outcome::Created(c) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    fn group(&mut self, group: &str) -> StoreResult<Option<(String, Vec<String>)>> {
        self.local.group(group)
    }

    fn add_members(&mut self, group: &str, members: &[String]) -> StoreResult<()> {
        self.write(LogEntry::AddMembers {
            group: group.to_owned(),
            members: members.to_vec(),
        })
        .map(drop)
    }

    fn remove_members(&mut self, group: &str, members: &[String]) -> StoreResult<()> {
        self.write(LogEntry::RemoveMembers {
            group: group.to_owned(),
            members: members.to_vec(),
        })
        .map(drop)
    }

    fn set_last_seen(&mut self, user: &str, ts: u64) -> StoreResult<()> {
        self.write(LogEntry::SetLastSeen {
            user: user.to_owned(),
            ts,
        })
        .map(drop)
    }

    fn last_seen(&mut self, user: &str) -> StoreResult<Option<u64>> {
        self.local.last_seen(user)
    }

    fn inbox_depth(&mut self) -> StoreResult<u64> {
        self.local.inbox_depth()
    }
}

/// A log in memory that several replicas share, for tests.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct MemoryLog {
    entries: std::sync::Arc<std::sync::Mutex<Vec<LogEntry>>>,
    read: usize,
}

#[cfg(test)]
impl Log for MemoryLog {
    fn append(&mut self, entry: &LogEntry) -> StoreResult<u64> {
        let mut entries = self.entries.lock().map_err(log_error)?;
        entries.push(entry.clone());
        Ok(entries.len() as u64)
    }

    fn next(&mut self, _wait: Duration) -> StoreResult<Option<(u64, LogEntry)>> {
        let entries = self.entries.lock().map_err(log_error)?;
        let next = entries.get(self.read).cloned();
        if next.is_some() {
            self.read += 1;
        }
        Ok(next.map(|e| (self.read as u64, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies::{self, ts};
    use estuary_common::chat::ReceiptState;
    use proptest::prelude::*;

    const POOL: &[&str] = &["a", "b", "c", ""];

    fn name() -> impl Strategy<Value = String> + Clone {
        strategies::name(POOL)
    }

    fn names() -> impl Strategy<Value = Vec<String>> {
        strategies::names(POOL)
    }

    fn int() -> impl Strategy<Value = i64> {
        prop_oneof![0i64..8, any::<i64>()]
    }

    fn entry() -> impl Strategy<Value = LogEntry> {
        let state = prop_oneof![Just(ReceiptState::Delivered), Just(ReceiptState::Read)];
        let media = strategies::media(POOL);
        prop_oneof![
            (name(), name()).prop_map(|(user, device)| LogEntry::RegisterDevice { user, device }),
            (
                name(),
                name(),
                name(),
                name(),
                prop::option::of(name()),
                media,
                ts(),
                names()
            )
                .prop_map(
                    |(
                        conversation,
                        sender,
                        sender_device,
                        client_id,
                        body,
                        media,
                        ts,
                        recipients,
                    )| {
                        LogEntry::InsertMessage {
                            conversation,
                            sender,
                            sender_device,
                            client_id,
                            body,
                            media,
                            ts,
                            recipients,
                        }
                    }
                ),
            (name(), name(), prop::collection::vec(int(), 0..4))
                .prop_map(|(user, device, ids)| LogEntry::Ack { user, device, ids }),
            (int(), name(), state, ts(), name()).prop_map(|(msg, user, state, ts, sender)| {
                LogEntry::RecordReceipt {
                    msg,
                    user,
                    state,
                    ts,
                    sender,
                }
            }),
            (name(), name(), int()).prop_map(|(user, device, seq)| LogEntry::ReceiptsSeen {
                user,
                device,
                seq
            }),
            (name(), name(), names()).prop_map(|(group, owner, members)| {
                LogEntry::CreateGroup {
                    group,
                    owner,
                    members,
                }
            }),
            (name(), names()).prop_map(|(group, members)| LogEntry::AddMembers { group, members }),
            (name(), names())
                .prop_map(|(group, members)| LogEntry::RemoveMembers { group, members }),
            (name(), ts()).prop_map(|(user, ts)| LogEntry::SetLastSeen { user, ts }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a relay (or anyone holding the cluster's credential) appends, every
        /// replica applies the log to its end and agrees: no entry stops the log.
        #[test]
        fn any_log_is_applied_to_its_end(entries in prop::collection::vec(entry(), 1..24)) {
            let log = MemoryLog::default();
            let mut writer = log.clone();
            for e in &entries {
                writer.append(e).expect("appended");
            }
            let mut replica = ReplicatedStore::new(
                SqliteStore::in_memory().expect("store"),
                log.clone(),
                "CHAT",
                Duration::from_secs(1),
            )
            .expect("replica");
            let caught_up = replica.catch_up();
            prop_assert!(caught_up.is_ok(), "{caught_up:?} at {} of {entries:?}", replica.applied());
            prop_assert_eq!(replica.applied(), entries.len() as u64);
        }
    }
}
