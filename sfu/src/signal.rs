//! The meeting's WebSocket protocol: JSON text frames, one message each. [`parse`] reads a
//! client frame and never panics (a fuzz target); [`ServerMsg`] is what the SFU sends.
//! Participant ids are `p<n>`, track ids `p<n>-<i>` (both valid SDP msid tokens: the page
//! finds a participant's media by its stream id).

use serde::{Deserialize, Serialize};

/// The largest text frame read; a larger one closes the WebSocket with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// The longest participant name kept (longer names are cut, not refused).
pub const MAX_NAME_CHARS: usize = 64;

/// A message from a participant (or from the relaying SFU of a cascade link, which sends
/// these too: `cascade.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// The first message: who joins.
    Join {
        #[serde(default)]
        name: String,
    },
    /// An offer from the client (to publish its camera and microphone).
    Offer {
        sdp: String,
    },
    /// The answer to the SFU's last offer.
    Answer {
        sdp: String,
    },
    /// The largest video height wanted for a track (kept for layer selection).
    Subscribe {
        track: String,
        #[serde(default)]
        max_height: Option<u32>,
    },
    /// The client muted or unmuted one of its own tracks.
    Mute {
        track: String,
        muted: bool,
    },
    /// Cascade links only: a participant of the relaying SFU's site joined or left (its
    /// tracks come as m-lines whose stream id is `participant`).
    Relay {
        event: RelayEvent,
        participant: String,
        #[serde(default)]
        name: String,
    },
    // Empty struct variants, not unit ones: serde ignores unknown fields next to the tag of a
    // unit variant even with `deny_unknown_fields`.
    Leave {},
    Ping {},
}

/// What became of a relayed participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayEvent {
    Joined,
    Left,
}

/// Why a client frame was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("the frame is larger than {MAX_FRAME_BYTES} bytes")]
    TooBig,
    #[error("the frame is not a known message: {0}")]
    Bad(String),
}

/// Reads one client frame.
pub fn parse(text: &str) -> Result<ClientMsg, ParseError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(ParseError::TooBig);
    }
    serde_json::from_str(text).map_err(|e| {
        // serde's message names the field or the type, never the input bytes at length; it
        // may quote a few of them, so it is cut at a character boundary (the fuzzer found a
        // frame whose message had a multi-byte character across byte 200).
        let m = e.to_string();
        let mut end = m.len().min(200);
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        ParseError::Bad(m[..end].to_owned())
    })
}

/// A track as the protocol shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackView {
    pub track: String,
    pub participant: String,
    /// `audio` or `video`.
    pub kind: &'static str,
    pub muted: bool,
}

/// A participant as the protocol shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantView {
    pub participant: String,
    pub name: String,
}

/// `joined`/`left`, `added`/`removed`/`muted`/`unmuted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Joined,
    Left,
    Added,
    Removed,
    Muted,
    Unmuted,
}

/// Error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadMessage,
    BadSdp,
    NotJoined,
    AlreadyJoined,
    RoomFull,
    UnknownTrack,
    NoPendingOffer,
    Overloaded,
}

/// A message to a participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Joined {
        participant: String,
        participants: Vec<ParticipantView>,
        tracks: Vec<TrackView>,
    },
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Participant {
        event: Change,
        participant: String,
        name: String,
    },
    Track {
        event: Change,
        #[serde(flatten)]
        track: TrackView,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The active speaker changed.
    Speaker {
        participant: String,
    },
    /// Dynacast, to a publisher: the simulcast rids of its `track` that someone receives;
    /// the others may be paused (the page sets `encodings[i].active`).
    Layers {
        track: String,
        active: Vec<String>,
    },
    Pong,
}

impl ServerMsg {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMsg::Error {
            code,
            message: message.into(),
        }
    }

    /// The frame's text (serializing these types cannot fail: no maps with non-string keys).
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"overloaded","message":"internal"}"#.to_owned()
        })
    }
}

/// `p<n>`.
pub fn participant_id(peer: u64) -> String {
    format!("p{peer}")
}

/// `p<n>-<i>`.
pub fn track_id(peer: u64, idx: u32) -> String {
    format!("p{peer}-{idx}")
}

/// The inverse of [`track_id`].
pub fn parse_track_id(text: &str) -> Option<(u64, u32)> {
    let (p, i) = text.strip_prefix('p')?.split_once('-')?;
    Some((p.parse().ok()?, i.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_multi_byte_characters_is_cut_at_a_character_boundary() {
        // The fuzzer's crash (now the seed fuzz/seeds/sfu_signal/crash-char-boundary): serde's message quotes the bad
        // input, and byte 200 fell inside a three-byte character.
        let frame = format!("\"{}", "\\b\u{4e2d}r".repeat(80));
        for skew in 0..4 {
            let text = format!("{}{frame}", " ".repeat(skew));
            assert!(matches!(parse(&text), Err(ParseError::Bad(_))));
        }
        let crash = String::from_utf8_lossy(include_bytes!(
            "../../fuzz/seeds/sfu_signal/crash-char-boundary"
        ))
        .into_owned();
        assert!(parse(&crash).is_err());
    }
    use proptest::prelude::*;

    #[test]
    fn every_client_message_parses() {
        assert_eq!(
            parse(r#"{"type":"join","name":"alice"}"#),
            Ok(ClientMsg::Join {
                name: "alice".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"join"}"#),
            Ok(ClientMsg::Join { name: "".into() })
        );
        assert_eq!(
            parse(r#"{"type":"offer","sdp":"v=0"}"#),
            Ok(ClientMsg::Offer { sdp: "v=0".into() })
        );
        assert_eq!(
            parse(r#"{"type":"answer","sdp":"v=0"}"#),
            Ok(ClientMsg::Answer { sdp: "v=0".into() })
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","track":"p1-2","max_height":360}"#),
            Ok(ClientMsg::Subscribe {
                track: "p1-2".into(),
                max_height: Some(360)
            })
        );
        assert_eq!(
            parse(r#"{"type":"mute","track":"p1-2","muted":true}"#),
            Ok(ClientMsg::Mute {
                track: "p1-2".into(),
                muted: true
            })
        );
        assert_eq!(parse(r#"{"type":"leave"}"#), Ok(ClientMsg::Leave {}));
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(ClientMsg::Ping {}));
    }

    #[test]
    fn garbage_unknown_types_and_extra_fields_are_refused() {
        for bad in [
            "",
            "{",
            "null",
            "[]",
            r#"{"type":"dance"}"#,
            r#"{"type":"ping","x":1}"#,
            r#"{"type":"offer"}"#,
            r#"{"type":"mute","track":"p1-1","muted":"yes"}"#,
        ] {
            assert!(
                matches!(parse(bad), Err(ParseError::Bad(_))),
                "{bad:?} was accepted"
            );
        }
        let big = format!(
            r#"{{"type":"offer","sdp":"{}"}}"#,
            "a".repeat(MAX_FRAME_BYTES)
        );
        assert_eq!(parse(&big), Err(ParseError::TooBig));
    }

    #[test]
    fn server_messages_have_the_documented_shape() {
        let m = ServerMsg::Track {
            event: Change::Added,
            track: TrackView {
                track: "p1-2".into(),
                participant: "p1".into(),
                kind: "video",
                muted: false,
            },
        };
        assert_eq!(
            m.to_text(),
            r#"{"type":"track","event":"added","track":"p1-2","participant":"p1","kind":"video","muted":false}"#
        );
        assert_eq!(
            ServerMsg::error(ErrorCode::BadSdp, "x").to_text(),
            r#"{"type":"error","code":"bad_sdp","message":"x"}"#
        );
        assert_eq!(ServerMsg::Pong.to_text(), r#"{"type":"pong"}"#);
    }

    #[test]
    fn track_ids_round_trip() {
        assert_eq!(parse_track_id(&track_id(12, 3)), Some((12, 3)));
        assert_eq!(parse_track_id("p-1"), None);
        assert_eq!(parse_track_id("x1-1"), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,300}") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_near_json(
            t in prop::sample::select(vec!["join","offer","answer","subscribe","mute","leave","ping","x"]),
            k in "[a-z_]{0,10}",
            v in prop::sample::select(vec!["1","\"a\"","null","true","[]","{}","-1e999"]),
        ) {
            let _ = parse(&format!(r#"{{"type":"{t}","{k}":{v}}}"#));
        }
    }
}
