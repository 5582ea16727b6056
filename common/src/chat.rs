//! The chat relay's WebSocket frames: JSON text objects with a `type`, as the README's "Chat
//! frames" section lists them. They live here because they cross a process boundary (the
//! relay and its clients, later relays among themselves and the bench's clients).

use serde::{Deserialize, Serialize};

/// Where a `send` or `typing` goes: `{"user":"bob"}`, `{"group":"g1"}` or `{"room":"r1"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    User(String),
    Group(String),
    Room(String),
}

/// A media attachment: the URL the file has on the CDN, its type and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Media {
    pub url: String,
    pub mime: String,
    pub size: u64,
}

/// Where and how to upload a chat media file: a TUS creation request (`POST url` with
/// `headers`, then `PATCH`es of the bytes with the same `Authorization` and `Tus-Resumable`)
/// allowed until `expires` (unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadTicket {
    pub url: String,
    pub headers: std::collections::BTreeMap<String, String>,
    pub expires: u64,
}

/// A frame from a client. Unknown fields are ignored (clients may be newer than the relay);
/// an unknown `type` is refused with an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type")]
pub enum ClientFrame {
    #[serde(rename = "send")]
    Send {
        /// The client's id for this message; a retry with the same id from the same device
        /// is answered with the first `sent` and creates nothing.
        id: String,
        to: Target,
        #[serde(default)]
        body: Option<String>,
        #[serde(default)]
        media: Option<Media>,
    },
    #[serde(rename = "ack")]
    Ack { ids: Vec<String> },
    #[serde(rename = "read")]
    Read { conversation: String, upto: String },
    #[serde(rename = "typing")]
    Typing { to: Target },
    #[serde(rename = "presence.subscribe")]
    PresenceSubscribe { users: Vec<String> },
    #[serde(rename = "history")]
    History {
        conversation: String,
        #[serde(default)]
        before: Option<String>,
        #[serde(default = "default_history_limit")]
        limit: u32,
    },
    #[serde(rename = "group.create")]
    GroupCreate { group: String, members: Vec<String> },
    #[serde(rename = "group.add")]
    GroupAdd { group: String, members: Vec<String> },
    #[serde(rename = "group.remove")]
    GroupRemove { group: String, members: Vec<String> },
    #[serde(rename = "group.leave")]
    GroupLeave { group: String },
    #[serde(rename = "room.join")]
    RoomJoin { room: String },
    #[serde(rename = "room.leave")]
    RoomLeave { room: String },
    /// Asks where to upload `size` bytes of `mime` (answered with `media.upload`).
    #[serde(rename = "media.upload")]
    MediaUpload {
        /// The client's id of the request, echoed in the answer or the error.
        #[serde(default)]
        id: Option<String>,
        mime: String,
        size: u64,
    },
    #[serde(rename = "ping")]
    Ping,
}

fn default_history_limit() -> u32 {
    50
}

/// Every client frame `type`, to tell an unknown type from a known one with bad fields.
pub const CLIENT_TYPES: [&str; 14] = [
    "send",
    "ack",
    "read",
    "typing",
    "presence.subscribe",
    "history",
    "group.create",
    "group.add",
    "group.remove",
    "group.leave",
    "room.join",
    "room.leave",
    "media.upload",
    "ping",
];

/// A message as a recipient sees it (live, from its inbox, or in `history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The relay's id of the message; ids grow with time on one relay.
    pub msg: String,
    pub from: String,
    /// `user:<other party>` for 1:1 (from the reader's side), `group:<id>`, `room:<id>`.
    pub conversation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    /// When the relay stored it, unix milliseconds.
    pub ts: u64,
}

/// Which tick a receipt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptState {
    Delivered,
    Read,
}

impl ReceiptState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptState::Delivered => "delivered",
            ReceiptState::Read => "read",
        }
    }
}

/// A frame from the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerFrame {
    /// The message is durably stored (the first tick).
    #[serde(rename = "sent")]
    Sent { id: String, msg: String, ts: u64 },
    #[serde(rename = "message")]
    Message(ChatMessage),
    /// To the sender's devices: a recipient's device acked (`delivered`) or its user marked
    /// the conversation read up to this message (`read`).
    #[serde(rename = "receipt")]
    Receipt {
        msg: String,
        by: String,
        state: ReceiptState,
        ts: u64,
    },
    #[serde(rename = "presence")]
    Presence {
        user: String,
        online: bool,
        /// Unix milliseconds; absent for a user never seen.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seen: Option<u64>,
    },
    #[serde(rename = "typing")]
    Typing { from: String, conversation: String },
    #[serde(rename = "history")]
    History {
        conversation: String,
        messages: Vec<ChatMessage>,
    },
    /// A group's members after a `group.*` request of this client succeeded.
    #[serde(rename = "group")]
    Group { group: String, members: Vec<String> },
    /// After a `room.join` or `room.leave` of this connection: whether it is in the room now,
    /// and how many connections are.
    #[serde(rename = "room")]
    Room {
        room: String,
        joined: bool,
        members: usize,
    },
    /// The answer to `media.upload`: the upload to make, and the media object to `send` once
    /// the origin has published it (its URL signed for the sender).
    #[serde(rename = "media.upload")]
    MediaUpload {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        upload: UploadTicket,
        media: Media,
    },
    #[serde(rename = "error")]
    Error {
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    #[serde(rename = "pong")]
    Pong,
}

/// One write to the chat relays' shared log (NATS JetStream with `[cluster]`): every relay
/// applies every entry, in log order, to its own replica of the store, so that all replicas
/// agree; a message's id and a receipt's sequence are the entry's log sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LogEntry {
    RegisterDevice {
        user: String,
        device: String,
    },
    InsertMessage {
        conversation: String,
        sender: String,
        sender_device: String,
        client_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media: Option<Media>,
        ts: u64,
        /// Who gets it: an inbox entry for each of their devices known at this point of the
        /// log (the placeholder device `""` for a user with none yet).
        recipients: Vec<String>,
    },
    Ack {
        user: String,
        device: String,
        ids: Vec<i64>,
    },
    RecordReceipt {
        msg: i64,
        user: String,
        state: ReceiptState,
        ts: u64,
        sender: String,
    },
    ReceiptsSeen {
        user: String,
        device: String,
        seq: i64,
    },
    CreateGroup {
        group: String,
        owner: String,
        members: Vec<String>,
    },
    AddMembers {
        group: String,
        members: Vec<String>,
    },
    RemoveMembers {
        group: String,
        members: Vec<String>,
    },
    SetLastSeen {
        user: String,
        ts: u64,
    },
}

/// What relays tell each other that is not kept (NATS core subjects with `[cluster]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Signal {
    /// `from` is typing in `conversation` (a store key) to these users.
    Typing {
        relay: String,
        from: String,
        to: Vec<String>,
        conversation: String,
    },
    /// Users came online (`online`) or went offline on `relay`.
    Presence {
        relay: String,
        users: Vec<String>,
        online: bool,
        ts: u64,
    },
    /// A live room's message, for the room's members on the other relays.
    Room {
        relay: String,
        room: String,
        message: ChatMessage,
    },
    /// `relay` heard again from `of`, which it had given up (silent for too long): `of`
    /// announces its online users again.
    Resync { relay: String, of: String },
    /// `relay` is alive; sent every second. A relay that starts sends `hello: true`, and the
    /// others answer with the users online on them.
    Alive { relay: String, hello: bool },
}

/// What the relay tells a push-notification service (`[push]`) when a message is stored for
/// a user with no device connected to any relay. It carries no body: bodies may be ciphertext,
/// and the push service only needs to wake the user's devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEvent {
    /// Always `"message"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub user: String,
    pub msg: String,
    pub from: String,
    /// As the user names it: `user:<sender>` or `group:<id>`.
    pub conversation: String,
    pub ts: u64,
    /// The relay that stored it.
    pub relay: String,
}

/// The acl of a chat user's token: `/chat/user/<user-id>`.
pub const USER_ACL_PREFIX: &str = "/chat/user/";

/// A user, device, group or room id: 1 to 64 of `A-Z a-z 0-9 - _ . @`.
pub fn id_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

/// The user a token's acl names, if it is exactly one `/chat/user/<user-id>` pattern.
pub fn user_of_acl(acl: &str) -> Option<&str> {
    acl.strip_prefix(USER_ACL_PREFIX).filter(|u| id_ok(u))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_and_write_as_the_readme_shows_them() {
        let f: ClientFrame = serde_json::from_str(
            r#"{"type":"send","id":"c1","to":{"user":"bob"},"body":"hi","extra":1}"#,
        )
        .expect("send");
        assert_eq!(
            f,
            ClientFrame::Send {
                id: "c1".into(),
                to: Target::User("bob".into()),
                body: Some("hi".into()),
                media: None
            }
        );
        let f: ClientFrame = serde_json::from_str(r#"{"type":"ping"}"#).expect("ping");
        assert_eq!(f, ClientFrame::Ping);
        let text = serde_json::to_string(&ServerFrame::Message(ChatMessage {
            msg: "7".into(),
            from: "alice".into(),
            conversation: "user:alice".into(),
            body: Some("hi".into()),
            media: None,
            ts: 5,
        }))
        .expect("json");
        assert_eq!(
            text,
            r#"{"type":"message","msg":"7","from":"alice","conversation":"user:alice","body":"hi","ts":5}"#
        );
        assert_eq!(
            serde_json::to_string(&ServerFrame::Pong).expect("json"),
            r#"{"type":"pong"}"#
        );
    }

    #[test]
    fn only_a_single_user_acl_names_a_user() {
        assert_eq!(user_of_acl("/chat/user/bob"), Some("bob"));
        assert_eq!(user_of_acl("/chat/user/"), None);
        assert_eq!(user_of_acl("/chat/user/*"), None);
        assert_eq!(user_of_acl("/chat/user/a!/chat/user/b"), None);
        assert_eq!(user_of_acl("/v/*"), None);
    }
}
