//! What the relay keeps: messages (for history), per-device inboxes, receipts, groups, devices
//! and last-seen times, behind the small [`Store`] trait the messaging core uses. The one
//! implementation is SQLite ([`sqlite::SqliteStore`]); tests open it in memory.

pub mod replicated;
pub mod sqlite;

pub use replicated::{Log, ReplicatedStore};
pub use sqlite::SqliteStore;

use estuary_common::chat::{Media, ReceiptState};

/// A store call that failed. The relay answers the client with an `error` frame `store` and
/// nothing is acknowledged; a retry may help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("the store failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("a stored value is corrupt: {0}")]
    Corrupt(String),
    #[error("the store's schema version {found} is newer than this build's {supported}")]
    TooNew { found: i64, supported: i64 },
    /// The shared log (NATS JetStream) failed or did not answer in time.
    #[error("the shared log failed: {0}")]
    Log(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Most messages one [`Store::unread_upto`] returns (one `read` frame marks at most these).
pub const MAX_UNREAD: u32 = 1000;

/// What a message holds besides its route: a text body or a media reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Body(String),
    Media(Media),
}

/// A message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// `dm:<a>:<b>` (the two users sorted) or `group:<id>`.
    pub conversation: String,
    pub sender: String,
    pub sender_device: String,
    pub client_id: String,
    pub content: Content,
    pub ts: u64,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: i64,
    pub conversation: String,
    pub sender: String,
    pub content: Content,
    pub ts: u64,
}

/// A recipient's tick for a message.
#[derive(Debug, Clone, Copy)]
pub struct Receipt<'a> {
    pub msg: i64,
    /// The recipient who gave it.
    pub user: &'a str,
    pub state: ReceiptState,
    pub ts: u64,
    /// Who sent the message.
    pub sender: &'a str,
}

/// A recorded receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReceipt {
    pub seq: i64,
    pub msg: i64,
    pub by: String,
    pub state: ReceiptState,
    pub ts: u64,
}

/// The result of storing a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Stored now, with this many inbox entries.
    New(Stored, u64),
    /// The same sender, device and client id were stored before: nothing new.
    Duplicate(Stored),
}

/// What another relay wrote that this relay's connections may need now (a replicated
/// store hands these to the core after applying them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// A message stored by another relay, with its inbox entries.
    Message {
        message: Stored,
        inboxes: Vec<(String, String)>,
    },
    /// A receipt recorded by another relay for `sender`'s message.
    Receipt {
        sender: String,
        receipt: StoredReceipt,
    },
}

/// The relay's storage. Every call is one transaction; a call that returns `Ok` is durable.
pub trait Store {
    /// Applies what other relays wrote since the last call, without waiting (a replicated
    /// store; the embedded one has nothing to do).
    fn catch_up(&mut self) -> StoreResult<()> {
        Ok(())
    }

    /// What other relays wrote that was applied since the last call, in log order.
    fn take_remote(&mut self) -> Vec<Remote> {
        Vec::new()
    }

    /// Records a device of a user. The first device of a user takes over the inbox entries
    /// kept for a user with no device yet; returns how many it took.
    fn register_device(&mut self, user: &str, device: &str) -> Result<u64, StoreError>;

    /// The user's known devices; a user with none gets the placeholder `""`, whose entries
    /// the first device to register takes.
    fn devices(&mut self, user: &str) -> Result<Vec<String>, StoreError>;

    /// Stores a message and one inbox entry per `(user, device)` in `inboxes`, unless the
    /// same sender device sent the same client id before.
    fn insert_message(
        &mut self,
        message: &NewMessage,
        inboxes: &[(String, String)],
    ) -> Result<Inserted, StoreError>;

    /// A device's inbox, oldest first.
    fn inbox(&mut self, user: &str, device: &str) -> Result<Vec<Stored>, StoreError>;

    /// Removes a device's inbox entries for `ids`; returns the messages whose entry was there.
    fn ack(&mut self, user: &str, device: &str, ids: &[i64]) -> Result<Vec<Stored>, StoreError>;

    /// Records a receipt; its sequence number, or `None` when this user already gave this
    /// one for the message.
    fn record_receipt(&mut self, receipt: Receipt<'_>) -> StoreResult<Option<i64>>;

    /// Receipts for `sender`'s messages that its `device` has not been handed yet (at most
    /// [`MAX_UNREAD`], oldest first).
    fn receipts_for(&mut self, sender: &str, device: &str) -> StoreResult<Vec<StoredReceipt>>;

    /// Marks the receipts up to `seq` as handed to the device.
    fn receipts_seen(&mut self, user: &str, device: &str, seq: i64) -> StoreResult<()>;

    /// Messages of `conv` not sent by `reader`, up to and including `upto`, that `reader` has
    /// not marked read yet (at most [`MAX_UNREAD`], oldest first).
    fn unread_upto(&mut self, conv: &str, reader: &str, upto: i64) -> StoreResult<Vec<Stored>>;

    /// The newest `limit` messages of `conversation` before `before`, oldest first.
    fn history(
        &mut self,
        conversation: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Stored>, StoreError>;

    /// Creates a group with its owner and members; `false` if it exists.
    fn create_group(
        &mut self,
        group: &str,
        owner: &str,
        members: &[String],
    ) -> Result<bool, StoreError>;

    /// A group's owner and members (sorted), or `None`.
    fn group(&mut self, group: &str) -> Result<Option<(String, Vec<String>)>, StoreError>;

    /// Adds members to a group.
    fn add_members(&mut self, group: &str, members: &[String]) -> Result<(), StoreError>;

    /// Removes members from a group; the group goes when its last member does.
    fn remove_members(&mut self, group: &str, members: &[String]) -> Result<(), StoreError>;

    fn set_last_seen(&mut self, user: &str, ts: u64) -> Result<(), StoreError>;

    fn last_seen(&mut self, user: &str) -> Result<Option<u64>, StoreError>;

    /// Inbox entries in the whole store.
    fn inbox_depth(&mut self) -> Result<u64, StoreError>;
}
