//! The core driven with a store in memory and a made-up clock.

use super::*;
use crate::store::SqliteStore;

struct Harness {
    relay: Relay<SqliteStore, ()>,
    now: u64,
}

impl Harness {
    fn new(limits: ChatLimits) -> Self {
        Self {
            relay: Relay::new(SqliteStore::in_memory().expect("store"), limits, ()),
            now: 1_000_000,
        }
    }

    fn input(&mut self, input: Input) -> Vec<Output> {
        self.now += 10;
        self.relay.handle_input(self.now, input)
    }

    fn open(&mut self, conn: ConnId, user: &str, device: &str) -> Vec<Output> {
        self.input(Input::Open {
            conn,
            user: user.into(),
            device: device.into(),
        })
    }

    /// Alice (on `conn`) says hi to bob: the outputs and the message id.
    fn hi_to_bob(&mut self, conn: ConnId) -> (Vec<Output>, String) {
        let out = self.text(
            conn,
            r#"{"type":"send","id":"c1","to":{"user":"bob"},"body":"hi"}"#,
        );
        let msg = sent_msg(&out, conn);
        (out, msg)
    }

    fn ack(&mut self, conn: ConnId, msg: &str) -> Vec<Output> {
        self.text(conn, &format!(r#"{{"type":"ack","ids":["{msg}"]}}"#))
    }

    fn read_alice(&mut self, conn: ConnId, msg: &str) -> Vec<Output> {
        self.text(
            conn,
            &format!(r#"{{"type":"read","conversation":"user:alice","upto":"{msg}"}}"#),
        )
    }

    fn text(&mut self, conn: ConnId, json: &str) -> Vec<Output> {
        self.input(Input::Text {
            conn,
            text: json.into(),
        })
    }
}

fn frames_for(out: &[Output], conn: ConnId) -> Vec<ServerFrame> {
    out.iter()
        .filter_map(|o| match o {
            Output::Frame { conn: c, frame } if *c == conn => Some(frame.clone()),
            Output::Fanout { conns, frame } if conns.contains(&conn) => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

fn msg_ids(frames: &[ServerFrame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message(m) => Some(m.msg.clone()),
            _ => None,
        })
        .collect()
}

fn sent_msg(out: &[Output], conn: ConnId) -> String {
    match frames_for(out, conn).first() {
        Some(ServerFrame::Sent { msg, .. }) => msg.clone(),
        other => panic!("expected sent, got {other:?}"),
    }
}

fn error_code(out: &[Output], conn: ConnId) -> String {
    match frames_for(out, conn).first() {
        Some(ServerFrame::Error { code, .. }) => code.clone(),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[test]
fn an_online_message_gets_all_three_ticks() {
    let mut h = Harness::new(ChatLimits::default());
    h.open(1, "alice", "phone");
    h.open(2, "bob", "phone");
    let (out, msg) = h.hi_to_bob(1);
    match frames_for(&out, 2).as_slice() {
        [ServerFrame::Message(m)] => {
            assert_eq!(
                (m.from.as_str(), m.conversation.as_str()),
                ("alice", "user:alice")
            );
            assert_eq!(m.body.as_deref(), Some("hi"));
        }
        other => panic!("{other:?}"),
    }
    let out = h.ack(2, &msg);
    assert!(matches!(frames_for(&out, 1).as_slice(),
        [ServerFrame::Receipt { state: ReceiptState::Delivered, by, .. }] if by == "bob"));
    let out = h.read_alice(2, &msg);
    assert!(matches!(
        frames_for(&out, 1).as_slice(),
        [ServerFrame::Receipt {
            state: ReceiptState::Read,
            ..
        }]
    ));
    // A second ack or read gives no second receipt.
    assert!(h.ack(2, &msg).is_empty());
    assert!(h.read_alice(2, &msg).is_empty());
}

#[test]
fn an_offline_sender_gets_its_ticks_on_reconnect_once() {
    let mut h = Harness::new(ChatLimits::default());
    h.open(1, "alice", "phone");
    h.open(2, "bob", "phone");
    let (_, msg) = h.hi_to_bob(1);
    h.input(Input::Closed { conn: 1 });
    h.ack(2, &msg);
    h.read_alice(2, &msg);
    let states = |out: &[Output], conn| -> Vec<ReceiptState> {
        frames_for(out, conn)
            .into_iter()
            .filter_map(|f| match f {
                ServerFrame::Receipt { state, .. } => Some(state),
                _ => None,
            })
            .collect()
    };
    let out = h.open(3, "alice", "phone");
    assert_eq!(
        states(&out, 3),
        [ReceiptState::Delivered, ReceiptState::Read]
    );
    h.input(Input::Closed { conn: 3 });
    assert!(
        states(&h.open(4, "alice", "phone"), 4).is_empty(),
        "handed once"
    );
    assert!(
        states(&h.open(5, "alice", "tablet"), 5).is_empty(),
        "a new device starts after the receipts given before it"
    );
}

#[test]
fn a_retried_send_creates_nothing_new() {
    let mut h = Harness::new(ChatLimits::default());
    h.open(1, "alice", "phone");
    h.open(2, "bob", "phone");
    let send = r#"{"type":"send","id":"c1","to":{"user":"bob"},"body":"hi"}"#;
    let first = h.text(1, send);
    let again = h.text(1, send);
    assert_eq!(sent_msg(&first, 1), sent_msg(&again, 1));
    assert!(frames_for(&again, 2).is_empty(), "no second delivery");
    // The same client id from another device is another message.
    h.open(3, "alice", "laptop");
    let other = h.text(3, send);
    assert_ne!(sent_msg(&other, 3), sent_msg(&first, 1));
}

#[test]
fn an_offline_device_gets_its_inbox_in_order_and_only_what_it_did_not_ack() {
    let mut h = Harness::new(ChatLimits::default());
    h.open(1, "alice", "phone");
    h.open(2, "bob", "phone");
    h.input(Input::Closed { conn: 2 });
    let mut sent = Vec::new();
    for i in 0..5 {
        let out = h.text(
            1,
            &format!(r#"{{"type":"send","id":"c{i}","to":{{"user":"bob"}},"body":"{i}"}}"#),
        );
        sent.push(sent_msg(&out, 1));
    }
    let out = h.open(3, "bob", "phone");
    assert_eq!(msg_ids(&frames_for(&out, 3)), sent);
    h.text(
        3,
        &format!(r#"{{"type":"ack","ids":["{}","{}"]}}"#, sent[0], sent[1]),
    );
    h.input(Input::Closed { conn: 3 });
    let out = h.open(4, "bob", "phone");
    assert_eq!(msg_ids(&frames_for(&out, 4)), sent[2..].to_vec());
}

#[test]
fn each_device_has_its_own_inbox() {
    let mut h = Harness::new(ChatLimits::default());
    h.open(1, "bob", "phone");
    h.open(2, "bob", "laptop");
    h.input(Input::Closed { conn: 1 });
    h.input(Input::Closed { conn: 2 });
    h.open(3, "alice", "phone");
    let msg = sent_msg(
        &h.text(
            3,
            r#"{"type":"send","id":"c1","to":{"user":"bob"},"body":"hi"}"#,
        ),
        3,
    );
    let out = h.open(4, "bob", "phone");
    assert_eq!(msg_ids(&frames_for(&out, 4)), vec![msg.clone()]);
    h.text(4, &format!(r#"{{"type":"ack","ids":["{msg}"]}}"#));
    let out = h.open(5, "bob", "laptop");
    assert_eq!(
        msg_ids(&frames_for(&out, 5)),
        vec![msg],
        "the laptop did not ack it"
    );
    assert_eq!(h.relay.store_mut().inbox_depth().expect("depth"), 1);
}

#[test]
fn groups_check_membership_and_the_member_limit() {
    let limits = ChatLimits {
        group_member_limit: 3,
        ..ChatLimits::default()
    };
    let mut h = Harness::new(limits);
    h.open(1, "alice", "phone");
    h.open(2, "bob", "phone");
    h.open(3, "carol", "phone");
    let out = h.text(
        1,
        r#"{"type":"group.create","group":"g1","members":["bob","carol","dave"]}"#,
    );
    assert_eq!(error_code(&out, 1), "group_full");
    let out = h.text(
        1,
        r#"{"type":"group.create","group":"g1","members":["bob"]}"#,
    );
    assert!(
        matches!(frames_for(&out, 1).as_slice(), [ServerFrame::Group { members, .. }] if members.len() == 2)
    );
    let out = h.text(
        3,
        r#"{"type":"send","id":"x","to":{"group":"g1"},"body":"hi"}"#,
    );
    assert_eq!(error_code(&out, 3), "not_member");
    let out = h.text(
        1,
        r#"{"type":"send","id":"x","to":{"group":"g1"},"body":"hi"}"#,
    );
    assert!(
        matches!(frames_for(&out, 2).as_slice(), [ServerFrame::Message(m)] if m.conversation == "group:g1")
    );
    assert!(frames_for(&out, 3).is_empty());
    let out = h.text(
        2,
        r#"{"type":"group.remove","group":"g1","members":["alice"]}"#,
    );
    assert_eq!(error_code(&out, 2), "not_allowed");
}

#[test]
fn bad_input_gets_an_error_frame_and_floods_are_closed() {
    let limits = ChatLimits {
        messages_per_second: 5,
        max_frame_bytes: 1024,
        ..ChatLimits::default()
    };
    let mut h = Harness::new(limits);
    h.open(1, "alice", "phone");
    assert_eq!(error_code(&h.text(1, "{not json"), 1), "bad_json");
    assert_eq!(
        error_code(&h.text(1, r#"{"type":"dance"}"#), 1),
        "unknown_type"
    );
    assert_eq!(error_code(&h.text(1, r#"{"type":"send"}"#), 1), "bad_frame");
    assert_eq!(error_code(&h.text(1, "[]"), 1), "bad_frame");
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(2000));
    assert!(matches!(
        h.text(1, &big).as_slice(),
        [Output::Close { code: 1009, .. }]
    ));
    assert!(
        h.text(1, r#"{"type":"ping"}"#).is_empty(),
        "a closing connection is ignored"
    );
    h.input(Input::Closed { conn: 1 });
    h.open(1, "alice", "phone");
    // Burst of 10 at 5/s, refilled: then refusals, then the close and nothing after it.
    h.now += 10_000;
    let mut codes = Vec::new();
    for _ in 0..20 {
        h.now -= 10; // no time passes
        for o in h.text(1, r#"{"type":"ping"}"#) {
            codes.push(match o {
                Output::Frame {
                    frame: ServerFrame::Pong,
                    ..
                } => "pong".to_owned(),
                Output::Frame {
                    frame: ServerFrame::Error { code, .. },
                    ..
                } => code,
                Output::Close { code, .. } => code.to_string(),
                other => format!("{other:?}"),
            });
        }
    }
    assert_eq!(&codes[..10], &["pong"; 10]);
    assert_eq!(&codes[10..14], &["rate_limited"; 4]);
    assert_eq!(codes[14..], ["1008"], "nothing after the close");
}

#[test]
fn presence_goes_to_subscribers_with_last_seen() {
    let mut h = Harness::new(ChatLimits::default());
    h.open(1, "alice", "phone");
    let out = h.text(1, r#"{"type":"presence.subscribe","users":["bob"]}"#);
    assert!(matches!(
        frames_for(&out, 1).as_slice(),
        [ServerFrame::Presence {
            online: false,
            last_seen: None,
            ..
        }]
    ));
    let out = h.open(2, "bob", "phone");
    assert!(matches!(
        frames_for(&out, 1).as_slice(),
        [ServerFrame::Presence { online: true, .. }]
    ));
    let out = h.input(Input::Closed { conn: 2 });
    let at = h.now;
    assert!(
        matches!(frames_for(&out, 1).as_slice(), [ServerFrame::Presence { online: false, last_seen: Some(t), .. }] if *t == at)
    );
    h.open(3, "carol", "phone");
    let out = h.text(3, r#"{"type":"presence.subscribe","users":["bob"]}"#);
    assert!(
        matches!(frames_for(&out, 3).as_slice(), [ServerFrame::Presence { last_seen: Some(t), .. }] if *t == at)
    );
}

mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    /// Frames a client could send: arbitrary text, and well-formed types with fields of any
    /// shape, so that both the parser and the handlers see nonsense.
    fn frame() -> impl Strategy<Value = String> {
        let types = prop::sample::select(CLIENT_TYPES.to_vec());
        let value = prop_oneof![
            Just("null".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            "[a-z0-9:]{0,6}".prop_map(|s| format!("{s:?}")),
            "[a-c]{1,2}".prop_map(|s| format!("{{\"user\":{s:?}}}")),
            "[a-c]{1,2}".prop_map(|s| format!("{{\"group\":{s:?}}}")),
            prop::collection::vec("[a-c0-9]{1,2}", 0..4).prop_map(|v| format!("{v:?}")),
        ];
        let field = prop::sample::select(vec![
            "id",
            "to",
            "body",
            "ids",
            "conversation",
            "upto",
            "users",
            "before",
            "limit",
            "group",
            "members",
            "room",
            "media",
        ]);
        prop_oneof![
            ".{0,40}",
            (types, prop::collection::vec((field, value), 0..5)).prop_map(|(t, fields)| {
                let mut text = format!("{{\"type\":{t:?}");
                for (k, v) in fields {
                    text.push_str(&format!(",{k:?}:{v}"));
                }
                text + "}"
            }),
        ]
    }

    #[derive(Debug, Clone)]
    enum Step {
        Open(u64, u8, u8),
        Text(u64, String),
        Closed(u64),
        Wait(u16),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            1 => (0..4u64, 0..3u8, 0..2u8).prop_map(|(c, u, d)| Step::Open(c, u, d)),
            6 => (0..4u64, frame()).prop_map(|(c, t)| Step::Text(c, t)),
            1 => (0..4u64).prop_map(Step::Closed),
            1 => any::<u16>().prop_map(Step::Wait),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever clients send, in whatever order, the relay never panics and only ever
        /// writes to connections it has open (or closes one it just replaced).
        #[test]
        fn hostile_clients_never_break_the_relay(steps in prop::collection::vec(step(), 1..60)) {
            let mut h = Harness::new(ChatLimits { messages_per_second: 5, ..ChatLimits::default() });
            let mut open = std::collections::HashSet::new();
            for s in steps {
                let (outputs, conn) = match s {
                    Step::Open(c, u, d) if !open.contains(&c) => {
                        open.insert(c);
                        (h.open(c, ["a", "b", "c"][u as usize], ["p", "q"][d as usize]), c)
                    }
                    Step::Open(..) => continue,
                    Step::Text(c, t) => (h.text(c, &t), c),
                    Step::Closed(c) => {
                        open.remove(&c);
                        (h.input(Input::Closed { conn: c }), c)
                    }
                    Step::Wait(ms) => {
                        h.now += u64::from(ms);
                        continue;
                    }
                };
                for o in outputs {
                    match o {
                        Output::Frame { conn: to, .. } => prop_assert!(open.contains(&to) || to == conn),
                        Output::Fanout { conns, .. } => prop_assert!(conns.iter().all(|to| open.contains(to))),
                        Output::Signal(_) => prop_assert!(false, "a relay outside a cluster signals nothing"),
                        Output::Push(_) => prop_assert!(false, "a relay without [push] pushes nothing"),
                        // The shell ends it; the core keeps it until its `Closed`.
                        Output::Close { .. } => {}
                    }
                }
            }
        }
    }
}

fn room_limits() -> ChatLimits {
    ChatLimits {
        room_member_limit: 3,
        rooms_per_connection: 2,
        room_slow_mode: std::time::Duration::from_secs(5),
        messages_per_second: 1000,
        ..ChatLimits::default()
    }
}

const POST_R1: &str = r#"{"type":"send","id":"p1","to":{"room":"r1"},"body":"goal!"}"#;

#[test]
fn a_room_message_reaches_every_other_member_once_and_is_not_stored() {
    let mut h = Harness::new(room_limits());
    for (conn, user) in [(1, "alice"), (2, "bob"), (3, "carol"), (4, "dave")] {
        h.open(conn, user, "d");
    }
    for conn in 1..=3 {
        let out = h.text(conn, r#"{"type":"room.join","room":"r1"}"#);
        assert!(matches!(
            frames_for(&out, conn).as_slice(),
            [ServerFrame::Room { joined: true, members, .. }] if *members == conn as usize
        ));
    }
    // The room is full; dave is refused, and outsiders may not post.
    let out = h.text(4, r#"{"type":"room.join","room":"r1"}"#);
    assert_eq!(error_code(&out, 4), "room_full");
    let out = h.text(4, POST_R1);
    assert_eq!(error_code(&out, 4), "not_member");

    let out = h.text(1, POST_R1);
    let msg = sent_msg(&out, 1);
    assert!(msg.starts_with('r'), "{msg}");
    let fanouts: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Fanout { conns, .. } => Some(conns.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(fanouts.len(), 1, "one encoded frame for the room");
    let mut members = fanouts[0].clone();
    members.sort();
    assert_eq!(members, vec![2, 3], "everyone but the poster");
    assert!(matches!(
        frames_for(&out, 2).as_slice(),
        [ServerFrame::Message(m)] if m.conversation == "room:r1" && m.from == "alice"
    ));
    // Ephemeral: no inbox, no history, no receipts.
    h.input(Input::Closed { conn: 3 });
    let out = h.open(5, "carol", "d");
    assert!(msg_ids(&frames_for(&out, 5)).is_empty());
    let out = h.text(
        2,
        r#"{"type":"history","conversation":"room:r1","before":null,"limit":10}"#,
    );
    assert_eq!(error_code(&out, 2), "not_stored");
}

#[test]
fn slow_mode_lets_a_user_post_once_per_span() {
    let mut h = Harness::new(room_limits());
    h.open(1, "alice", "d");
    h.open(2, "bob", "d");
    h.text(1, r#"{"type":"room.join","room":"r1"}"#);
    h.text(2, r#"{"type":"room.join","room":"r1"}"#);
    sent_msg(&h.text(1, POST_R1), 1);
    let out = h.text(1, POST_R1);
    assert_eq!(error_code(&out, 1), "slow_mode");
    assert!(frames_for(&out, 2).is_empty());
    // Another user is not held back by alice's post.
    sent_msg(
        &h.text(
            2,
            r#"{"type":"send","id":"b1","to":{"room":"r1"},"body":"yes"}"#,
        ),
        2,
    );
    h.now += 5_000;
    sent_msg(&h.text(1, POST_R1), 1);
}

#[test]
fn leaving_and_closing_free_room_places() {
    let mut h = Harness::new(room_limits());
    h.open(1, "alice", "d");
    h.open(2, "bob", "d");
    h.text(1, r#"{"type":"room.join","room":"r1"}"#);
    h.text(1, r#"{"type":"room.join","room":"r2"}"#);
    let out = h.text(1, r#"{"type":"room.join","room":"r3"}"#);
    assert_eq!(error_code(&out, 1), "too_many_rooms");
    let out = h.text(1, r#"{"type":"room.leave","room":"r2"}"#);
    assert!(matches!(
        frames_for(&out, 1).as_slice(),
        [ServerFrame::Room {
            joined: false,
            members: 0,
            ..
        }]
    ));
    let out = h.text(1, r#"{"type":"room.leave","room":"r2"}"#);
    assert_eq!(error_code(&out, 1), "not_member");
    h.text(2, r#"{"type":"room.join","room":"r1"}"#);
    h.input(Input::Closed { conn: 1 });
    assert_eq!(h.relay.rooms.get("r1").map(|r| r.members.len()), Some(1));
    assert_eq!(h.relay.room_members, 1);
    h.input(Input::Closed { conn: 2 });
    assert!(h.relay.rooms.is_empty());
    assert_eq!(h.relay.room_members, 0);
}

type Replica = Relay<crate::store::ReplicatedStore<crate::store::replicated::MemoryLog>, ()>;

fn replica(log: &crate::store::replicated::MemoryLog) -> Replica {
    let store = crate::store::ReplicatedStore::new(
        SqliteStore::in_memory().expect("store"),
        log.clone(),
        "CHAT",
        std::time::Duration::from_secs(1),
    )
    .expect("replica");
    Relay::new(store, ChatLimits::default(), ())
}

fn open_on(r: &mut Replica, now: u64, conn: ConnId, user: &str) -> Vec<Output> {
    r.handle_input(
        now,
        Input::Open {
            conn,
            user: user.into(),
            device: "d".into(),
        },
    )
}

fn text_on(r: &mut Replica, now: u64, conn: ConnId, json: &str) -> Vec<Output> {
    r.handle_input(
        now,
        Input::Text {
            conn,
            text: json.into(),
        },
    )
}

#[test]
fn two_relays_on_one_log_deliver_ack_and_agree() {
    let log = crate::store::replicated::MemoryLog::default();
    let (mut a, mut b) = (replica(&log), replica(&log));
    open_on(&mut a, 1, 1, "alice");
    open_on(&mut b, 2, 2, "bob");
    // Alice (on a) writes to bob (on b): b delivers it when its log advances.
    let out = text_on(
        &mut a,
        3,
        1,
        r#"{"type":"send","id":"c1","to":{"user":"bob"},"body":"hi"}"#,
    );
    let msg = sent_msg(&out, 1);
    assert!(frames_for(&out, 2).is_empty(), "bob is not on relay a");
    let out = b.handle_input(4, Input::LogAdvanced);
    assert_eq!(msg_ids(&frames_for(&out, 2)), vec![msg.clone()]);
    // Bob acks on b: alice gets the delivered tick through a.
    text_on(
        &mut b,
        5,
        2,
        &format!(r#"{{"type":"ack","ids":["{msg}"]}}"#),
    );
    let out = a.handle_input(6, Input::LogAdvanced);
    assert!(matches!(
        frames_for(&out, 1).as_slice(),
        [ServerFrame::Receipt { msg: m, state: ReceiptState::Delivered, .. }] if *m == msg
    ));
    // Alice's retry through b (her relay died before `sent`) is the same message.
    open_on(&mut b, 7, 3, "alice");
    let out = text_on(
        &mut b,
        8,
        3,
        r#"{"type":"send","id":"c1","to":{"user":"bob"},"body":"hi"}"#,
    );
    assert_eq!(sent_msg(&out, 3), msg);
    assert!(frames_for(&out, 2).is_empty(), "bob already acked it");
    // A group made on a is known to b; a second create on b is refused everywhere.
    text_on(
        &mut a,
        9,
        1,
        r#"{"type":"group.create","group":"g1","members":["bob"]}"#,
    );
    let out = text_on(
        &mut b,
        10,
        2,
        r#"{"type":"group.create","group":"g1","members":["carol"]}"#,
    );
    assert_eq!(error_code(&out, 2), "group_exists");
    let out = text_on(
        &mut b,
        11,
        2,
        r#"{"type":"send","id":"b1","to":{"group":"g1"},"body":"yo"}"#,
    );
    let group_msg = sent_msg(&out, 2);
    assert!(
        msg_ids(&frames_for(&out, 3)).contains(&group_msg),
        "alice's connection on b"
    );
    let out = a.handle_input(12, Input::LogAdvanced);
    assert!(msg_ids(&frames_for(&out, 1)).contains(&group_msg));
}

fn signals(out: &[Output]) -> Vec<Signal> {
    out.iter()
        .filter_map(|o| match o {
            Output::Signal(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn presence_of(out: &[Output], conn: ConnId) -> Vec<(String, bool)> {
    frames_for(out, conn)
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Presence { user, online, .. } => Some((user, online)),
            _ => None,
        })
        .collect()
}

#[test]
fn presence_spans_relays_and_a_silent_or_restarted_relay_takes_its_users_offline() {
    let log = crate::store::replicated::MemoryLog::default();
    let mut a = replica(&log).in_cluster("a");
    let mut b = replica(&log).in_cluster("b");
    open_on(&mut a, 1_000, 1, "alice");
    text_on(
        &mut a,
        1_001,
        1,
        r#"{"type":"presence.subscribe","users":["bob"]}"#,
    );
    let out = open_on(&mut b, 1_002, 2, "bob");
    let mut seen = Vec::new();
    for s in signals(&out) {
        seen.extend(presence_of(&a.handle_input(1_003, Input::Signal(s)), 1));
    }
    assert_eq!(seen, vec![("bob".to_owned(), true)]);
    // b falls silent: after the silence limit its users are offline.
    let out = a.handle_input(1_003 + RELAY_SILENCE_MS + 1, Input::Tick);
    assert_eq!(presence_of(&out, 1), vec![("bob".to_owned(), false)]);
    // b is heard again (it was cut off, not dead): a asks it for its users, and bob is back.
    let now = 10_000;
    let mut seen = Vec::new();
    for s in signals(&b.handle_input(now, Input::Tick)) {
        for asked in signals(&a.handle_input(now, Input::Signal(s))) {
            for told in signals(&b.handle_input(now + 1, Input::Signal(asked))) {
                seen.extend(presence_of(
                    &a.handle_input(now + 2, Input::Signal(told)),
                    1,
                ));
            }
        }
    }
    assert_eq!(seen, vec![("bob".to_owned(), true)]);
    // b is killed and restarted within the limit: its hello takes bob offline at once.
    let mut restarted = replica(&log).in_cluster("b");
    let mut seen = Vec::new();
    for s in signals(&restarted.handle_input(now + 3, Input::Tick)) {
        seen.extend(presence_of(&a.handle_input(now + 4, Input::Signal(s)), 1));
    }
    assert_eq!(seen, vec![("bob".to_owned(), false)]);
}

fn media_harness() -> Harness {
    let text = "origin = \"http://127.0.0.1:1\"\ncdn = \"http://edge.test\"\nupload_key = { kid = \"relay\", secret = \"00112233445566778899aabbccddeeff\" }\ncdn_key = { kid = \"k1\", secret = \"ffeeddccbbaa99887766554433221100\" }\n";
    let config: crate::config::MediaConfig =
        estuary_common::config::from_toml(text).expect("media config");
    let issuer = MediaIssuer::from_config(&config).expect("issuer");
    let mut h = Harness::new(ChatLimits::default());
    h.relay = Relay::new(
        SqliteStore::in_memory().expect("store"),
        ChatLimits::default(),
        (),
    )
    .with_media(issuer, rand::SeedableRng::seed_from_u64(1));
    h
}

#[test]
fn without_media_config_an_upload_is_unsupported() {
    let mut h = Harness::new(ChatLimits::default());
    h.open(1, "alice", "phone");
    let out = h.text(
        1,
        r#"{"type":"media.upload","id":"u1","mime":"image/jpeg","size":5}"#,
    );
    assert_eq!(error_code(&out, 1), "unsupported");
}

#[test]
fn issued_media_is_kept_bare_and_signed_afresh_for_every_delivery() {
    let mut h = media_harness();
    h.open(1, "alice", "phone");
    let out = h.text(
        1,
        r#"{"type":"media.upload","id":"u1","mime":"image/jpeg","size":5}"#,
    );
    let media = match frames_for(&out, 1).as_slice() {
        [ServerFrame::MediaUpload { id, upload, media }] => {
            assert_eq!(id.as_deref(), Some("u1"));
            assert_eq!(upload.url, "http://127.0.0.1:1/uploads/");
            assert!(upload.headers["Authorization"].starts_with("Bearer exp="));
            assert!(
                media.url.starts_with("http://edge.test/v/chat-"),
                "{media:?}"
            );
            media.clone()
        }
        other => panic!("{other:?}"),
    };
    // Two asks, two assets.
    let again = h.text(1, r#"{"type":"media.upload","mime":"image/jpeg","size":5}"#);
    assert!(matches!(frames_for(&again, 1).as_slice(),
        [ServerFrame::MediaUpload { media: m, .. }] if m.url != media.url));
    let send = serde_json::json!({"type":"send","id":"c1","to":{"user":"bob"},"media":media});
    let out = h.text(1, &send.to_string());
    let msg = sent_msg(&out, 1);
    // Bob connects later: his inbox copy is signed at his connection time.
    h.now += 5_000_000;
    let out = h.open(2, "bob", "phone");
    let delivered = match frames_for(&out, 2).as_slice() {
        [ServerFrame::Message(m)] => m.media.clone().expect("media"),
        other => panic!("{other:?}"),
    };
    assert_eq!((delivered.mime.as_str(), delivered.size), ("image/jpeg", 5));
    let path = media.url.split('?').next().expect("path");
    assert!(delivered.url.starts_with(&format!("{path}?token=exp%3D")));
    assert_ne!(delivered.url, media.url, "a fresh token");
    // History hands the same file out, signed again; the store kept the bare path.
    let out = h.text(
        2,
        r#"{"type":"history","conversation":"user:alice","before":null,"limit":10}"#,
    );
    match frames_for(&out, 2).as_slice() {
        [ServerFrame::History { messages, .. }] => {
            assert_eq!(messages.len(), 1);
            assert_eq!(messages[0].msg, msg);
            let url = &messages[0].media.as_ref().expect("media").url;
            assert!(url.starts_with(&format!("{path}?token=")), "{url}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn media_not_issued_by_the_service_and_bad_uploads_are_refused() {
    let mut h = media_harness();
    h.open(1, "alice", "phone");
    for frame in [
        r#"{"type":"send","id":"c2","to":{"user":"bob"},"media":{"url":"http://edge.test/v/premium/master.m3u8","mime":"image/jpeg","size":5}}"#,
        r#"{"type":"send","id":"c2","to":{"user":"bob"},"media":{"url":"http://edge.test/v/chat-aaaaaaaaaaaaaaaaaaaa-000000000000000000000000/media.jpg","mime":"image/jpeg","size":5}}"#,
        r#"{"type":"media.upload","id":"c2","mime":"text/html","size":5}"#,
        r#"{"type":"media.upload","id":"c2","mime":"image/jpeg","size":0}"#,
        r#"{"type":"media.upload","id":"c2","mime":"image/jpeg","size":16777217}"#,
    ] {
        let out = h.text(1, frame);
        match frames_for(&out, 1).as_slice() {
            [ServerFrame::Error { code, id, .. }] => {
                assert_eq!(
                    (code.as_str(), id.as_deref()),
                    ("bad_media", Some("c2")),
                    "{frame}"
                );
            }
            other => panic!("{frame}: {other:?}"),
        }
    }
}

mod hostile_signals {
    use super::*;
    use crate::strategies::{self, ts};
    use estuary_common::chat::ChatMessage;
    use proptest::prelude::*;

    const POOL: &[&str] = &["a", "b", "x", "alice", "bob", "lobby", ""];

    fn name() -> impl Strategy<Value = String> + Clone {
        strategies::name(POOL)
    }

    fn names() -> impl Strategy<Value = Vec<String>> {
        strategies::names(POOL)
    }

    fn message() -> impl Strategy<Value = ChatMessage> {
        (
            name(),
            name(),
            name(),
            prop::option::of(name()),
            strategies::media(POOL),
            ts(),
        )
            .prop_map(|(msg, from, conversation, body, media, ts)| ChatMessage {
                msg,
                from,
                conversation,
                body,
                media,
                ts,
            })
    }

    fn signal() -> impl Strategy<Value = Signal> {
        prop_oneof![
            (name(), name(), names(), name()).prop_map(|(relay, from, to, conversation)| {
                Signal::Typing {
                    relay,
                    from,
                    to,
                    conversation,
                }
            }),
            (name(), names(), any::<bool>(), ts()).prop_map(|(relay, users, online, ts)| {
                Signal::Presence {
                    relay,
                    users,
                    online,
                    ts,
                }
            }),
            (name(), name(), message()).prop_map(|(relay, room, message)| Signal::Room {
                relay,
                room,
                message
            }),
            (name(), name()).prop_map(|(relay, of)| Signal::Resync { relay, of }),
            (name(), any::<bool>()).prop_map(|(relay, hello)| Signal::Alive { relay, hello }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever another relay (or anyone holding the cluster's credential) says, the relay
        /// neither panics nor stops serving its own clients.
        #[test]
        fn any_signals_from_other_relays_are_handled(
            signals in prop::collection::vec((signal(), 0u64..20_000), 1..30)
        ) {
            let log = crate::store::replicated::MemoryLog::default();
            let mut a = replica(&log).in_cluster("a");
            open_on(&mut a, 1_000, 1, "alice");
            open_on(&mut a, 1_001, 2, "bob");
            text_on(
                &mut a,
                1_002,
                1,
                r#"{"type":"presence.subscribe","users":["bob","x","alice"]}"#,
            );
            text_on(&mut a, 1_003, 2, r#"{"type":"room.join","room":"lobby"}"#);
            let mut now = 1_004;
            for (s, gap) in signals {
                now += gap;
                a.handle_input(now, Input::Signal(s));
            }
            let out = text_on(
                &mut a,
                now + 1,
                1,
                r#"{"type":"send","id":"after","to":{"user":"bob"},"body":"still here"}"#,
            );
            prop_assert!(!msg_ids(&frames_for(&out, 2)).is_empty(), "{out:?}");
        }
    }
}
