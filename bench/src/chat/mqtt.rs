//! The few MQTT 3.1.1 packets the bench's clients need (CONNECT, SUBSCRIBE, PUBLISH at QoS 0,
//! PINGREQ), encoded by hand, and a decoder for what the broker sends back. Pure: bytes in,
//! bytes out; the WebSocket shell carries them in binary frames (subprotocol `mqtt`).

/// A packet from the broker, as far as the bench cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// CONNACK with its return code (0: accepted).
    ConnAck {
        return_code: u8,
    },
    /// SUBACK with the packet id and one return code per topic (0x80: refused).
    SubAck {
        packet_id: u16,
        return_codes: Vec<u8>,
    },
    /// PUBLISH (any QoS) with its topic and payload.
    Publish {
        topic: String,
        payload: Vec<u8>,
    },
    PingResp,
    /// Any other packet type (the upper four bits of its first byte).
    Other {
        packet_type: u8,
    },
}

/// Why the broker's bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("the remaining length takes more than four bytes")]
    LengthTooLong,
    #[error("packet type {packet_type} is shorter than its fields")]
    Truncated { packet_type: u8 },
    #[error("a topic name is not UTF-8")]
    TopicNotUtf8,
}

/// Appends MQTT's variable-length "remaining length" (7 bits a byte, high bit: more follow).
fn put_remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

/// Appends a length-prefixed (u16, big-endian) string or binary field.
fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

/// A packet of `first_byte` with `body` after the remaining length.
fn packet(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first_byte);
    put_remaining_length(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// CONNECT with a clean session, no will, no credentials: protocol "MQTT" level 4.
pub fn connect(client_id: &str, keepalive_secs: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(12 + client_id.len());
    put_field(&mut body, b"MQTT");
    body.push(4); // protocol level: 3.1.1
    body.push(0x02); // connect flags: clean session
    body.extend_from_slice(&keepalive_secs.to_be_bytes());
    put_field(&mut body, client_id.as_bytes());
    packet(0x10, &body)
}

/// SUBSCRIBE to one topic filter at `qos`.
pub fn subscribe(packet_id: u16, topic: &str, qos: u8) -> Vec<u8> {
    let mut body = Vec::with_capacity(5 + topic.len());
    body.extend_from_slice(&packet_id.to_be_bytes());
    put_field(&mut body, topic.as_bytes());
    body.push(qos & 0x03);
    // The fixed header's flags must be 0b0010 for SUBSCRIBE.
    packet(0x82, &body)
}

/// PUBLISH at QoS 0 (no packet id), not retained.
pub fn publish_qos0(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + topic.len() + payload.len());
    put_field(&mut body, topic.as_bytes());
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

/// Reassembles packets from the broker's bytes, whichever way WebSocket frames cut them.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds bytes as they arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole packet, `Ok(None)` when more bytes are needed.
    pub fn next_packet(&mut self) -> Result<Option<Incoming>, DecodeError> {
        let Some(&first) = self.buf.first() else {
            return Ok(None);
        };
        let mut length = 0usize;
        let mut header_len = 1;
        loop {
            let Some(&byte) = self.buf.get(header_len) else {
                return Ok(None);
            };
            if header_len > 4 {
                return Err(DecodeError::LengthTooLong);
            }
            length += usize::from(byte & 0x7F) << (7 * (header_len - 1));
            header_len += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let end = header_len + length;
        if self.buf.len() < end {
            return Ok(None);
        }
        let body: Vec<u8> = self.buf[header_len..end].to_vec();
        self.buf.drain(..end);
        decode(first, &body).map(Some)
    }
}

/// One packet from its first byte and its body (after the remaining length).
fn decode(first: u8, body: &[u8]) -> Result<Incoming, DecodeError> {
    let packet_type = first >> 4;
    let truncated = DecodeError::Truncated { packet_type };
    Ok(match packet_type {
        2 => Incoming::ConnAck {
            return_code: *body.get(1).ok_or(truncated)?,
        },
        9 => {
            let id = body.get(..2).ok_or(truncated.clone())?;
            Incoming::SubAck {
                packet_id: u16::from_be_bytes([id[0], id[1]]),
                return_codes: body[2..].to_vec(),
            }
        }
        3 => {
            let len = body.get(..2).ok_or(truncated.clone())?;
            let topic_end = 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
            let topic = body.get(2..topic_end).ok_or(truncated)?;
            let topic = String::from_utf8(topic.to_vec()).map_err(|_| DecodeError::TopicNotUtf8)?;
            // QoS 1 and 2 carry a packet id after the topic.
            let qos = (first >> 1) & 0x03;
            let payload_start = if qos > 0 { topic_end + 2 } else { topic_end };
            Incoming::Publish {
                topic,
                payload: body.get(payload_start..).unwrap_or_default().to_vec(),
            }
        }
        13 => Incoming::PingResp,
        _ => Incoming::Other { packet_type },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_uses_seven_bits_a_byte() {
        for (n, bytes) in [
            (0, vec![0x00]),
            (127, vec![0x7F]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xFF, 0x7F]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (268_435_455, vec![0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut out = Vec::new();
            put_remaining_length(&mut out, n);
            assert_eq!(out, bytes, "{n}");
        }
    }

    #[test]
    fn connect_matches_the_spec_example_layout() {
        let p = connect("c1", 900);
        assert_eq!(
            p,
            [
                0x10, 14, // CONNECT, remaining length
                0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, // protocol, level, clean session
                0x03, 0x84, // keepalive 900
                0, 2, b'c', b'1', // client id
            ]
        );
    }

    #[test]
    fn subscribe_and_publish_layouts() {
        assert_eq!(
            subscribe(7, "t/a", 0),
            [0x82, 8, 0, 7, 0, 3, b't', b'/', b'a', 0]
        );
        assert_eq!(publish_qos0("t", b"hi"), [0x30, 5, 0, 1, b't', b'h', b'i']);
    }

    #[test]
    fn decoder_reassembles_split_and_joined_packets() {
        let mut bytes = vec![0x20, 0x02, 0x00, 0x00]; // CONNACK accepted
        bytes.extend([0x90, 0x03, 0x00, 0x07, 0x00]); // SUBACK id 7, QoS 0
        let big = vec![b'x'; 200];
        bytes.extend(publish_qos0("room", &big)); // two-byte remaining length
        bytes.extend([0xD0, 0x00]);
        let mut d = Decoder::default();
        let mut got = Vec::new();
        // One byte at a time: every cut in the middle of a packet must wait for more.
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            while let Some(p) = d.next_packet().expect("decodes") {
                got.push(p);
            }
        }
        assert_eq!(
            got,
            vec![
                Incoming::ConnAck { return_code: 0 },
                Incoming::SubAck {
                    packet_id: 7,
                    return_codes: vec![0]
                },
                Incoming::Publish {
                    topic: "room".to_owned(),
                    payload: big
                },
                Incoming::PingResp,
            ]
        );
        assert_eq!(d.next_packet(), Ok(None));
    }

    #[test]
    fn decoder_refuses_garbage_without_panicking() {
        let mut d = Decoder::default();
        d.push(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        assert_eq!(d.next_packet(), Err(DecodeError::LengthTooLong));
        let mut d = Decoder::default();
        d.push(&[0x30, 0x01, 0x00]); // a topic length cut short
        assert_eq!(
            d.next_packet(),
            Err(DecodeError::Truncated { packet_type: 3 })
        );
        let mut d = Decoder::default();
        d.push(&[0x30, 0x04, 0x00, 0x09, b'a', b'b']); // topic longer than the packet
        assert_eq!(
            d.next_packet(),
            Err(DecodeError::Truncated { packet_type: 3 })
        );
        let mut d = Decoder::default();
        d.push(&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x01]); // QoS 1: packet id, empty payload
        assert_eq!(
            d.next_packet(),
            Ok(Some(Incoming::Publish {
                topic: "t".to_owned(),
                payload: Vec::new()
            }))
        );
    }
}
