//! The geo-DNS's fast path on the wire: the one query shape that carries nearly all the load
//! (one question, class IN, type A or AAAA, at most an OPT record whose only option is an
//! EDNS Client Subnet) read straight from the datagram, and its answer written straight into
//! the output buffer, with no message objects in between. Anything else (and anything odd
//! about this shape) is `None` here and goes the general way through hickory-proto, so this
//! module only has to be right about what it accepts; a property test in `dns.rs` checks
//! that both ways write the same bytes. Pure: bytes in, bytes out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The parts of a fast-path query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    pub id: u16,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// The question's name in wire form (labels, then the root's zero), all lowercase.
    pub name: &'a [u8],
    /// The whole question section (name, type, class), echoed as is.
    pub question: &'a [u8],
    /// 1 (A) or 28 (AAAA).
    pub qtype: u16,
    /// The OPT record's payload size, when the query has one.
    pub edns_payload: Option<u16>,
    /// The ECS option: address (truncated to the source prefix) and source prefix.
    pub subnet: Option<(IpAddr, u8)>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads a query of the fast shape; `None` for anything else.
pub fn parse_query(packet: &[u8]) -> Option<Query<'_>> {
    let flags = u16_at(packet, 2)?;
    // A query (QR 0), opcode QUERY, no AA/TC/RA/Z/AD bits or response code.
    if flags & 0xfeef != 0 {
        return None;
    }
    if (u16_at(packet, 4)?, u16_at(packet, 6)?, u16_at(packet, 8)?) != (1, 0, 0) {
        return None;
    }
    let additional = u16_at(packet, 10)?;
    if additional > 1 {
        return None;
    }
    // The name: plain labels (no compression), lowercase, at most 255 bytes.
    let mut at = 12;
    loop {
        let len = usize::from(*packet.get(at)?);
        if len == 0 {
            at += 1;
            break;
        }
        // With the root's zero byte the name may take 255 bytes (RFC 1035 3.1), so its
        // labels 254: found by the fuzz target `dns_query` (hickory refused our answer).
        if len > 63 || at + 1 + len - 12 > 254 {
            return None;
        }
        let label = packet.get(at + 1..at + 1 + len)?;
        if label.iter().any(|b| b.is_ascii_uppercase() || *b == b'.') {
            return None;
        }
        at += 1 + len;
    }
    let name = &packet[12..at];
    let qtype = u16_at(packet, at)?;
    if !matches!(qtype, 1 | 28) || u16_at(packet, at + 2)? != 1 {
        return None;
    }
    at += 4;
    let question = &packet[12..at];
    let (mut edns_payload, mut subnet) = (None, None);
    if additional == 1 {
        // OPT: the root name, type 41, payload, extended rcode 0, version 0, no flags.
        if packet.get(at) != Some(&0) || u16_at(packet, at + 1)? != 41 {
            return None;
        }
        edns_payload = Some(u16_at(packet, at + 3)?);
        if packet.get(at + 5..at + 9)? != [0, 0, 0, 0] {
            return None;
        }
        let rdlen = usize::from(u16_at(packet, at + 9)?);
        let rdata = packet.get(at + 11..at + 11 + rdlen)?;
        at += 11 + rdlen;
        let mut o = 0;
        while o < rdata.len() {
            let code = u16_at(rdata, o)?;
            let len = usize::from(u16_at(rdata, o + 2)?);
            let data = rdata.get(o + 4..o + 4 + len)?;
            if code != 8 || subnet.is_some() {
                return None;
            }
            subnet = Some(parse_subnet(data)?);
            o += 4 + len;
        }
    }
    if at != packet.len() {
        return None;
    }
    Some(Query {
        id: u16_at(packet, 0)?,
        recursion_desired: flags & 0x0100 != 0,
        checking_disabled: flags & 0x0010 != 0,
        name,
        question,
        qtype,
        edns_payload,
        subnet,
    })
}

/// An ECS option's data in its strict form (scope 0, exactly the source prefix's bytes, no
/// bits past it); `None` otherwise.
fn parse_subnet(data: &[u8]) -> Option<(IpAddr, u8)> {
    let family = u16_at(data, 0)?;
    let source = *data.get(2)?;
    if *data.get(3)? != 0 {
        return None;
    }
    let bytes = data.get(4..)?;
    let max = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    if source > max || bytes.len() != usize::from(source).div_ceil(8) {
        return None;
    }
    if source % 8 != 0 {
        let last = bytes.last()?;
        if last & (0xffu8 >> (source % 8)) != 0 {
            return None;
        }
    }
    let addr = if family == 1 {
        let mut o = [0u8; 4];
        o[..bytes.len()].copy_from_slice(bytes);
        IpAddr::V4(Ipv4Addr::from(o))
    } else {
        let mut o = [0u8; 16];
        o[..bytes.len()].copy_from_slice(bytes);
        IpAddr::V6(Ipv6Addr::from(o))
    };
    Some((addr, source))
}

/// What the answer holds.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a> {
    pub authoritative: bool,
    pub truncated: bool,
    /// Addresses of the question's type, owned by the question's name.
    pub addresses: &'a [IpAddr],
    pub ttl: u32,
    /// The ECS option to echo (address, source, scope).
    pub subnet: Option<(IpAddr, u8, u8)>,
}

/// The size [`write_response`] will write.
pub fn response_len(query: &Query<'_>, response: &Response<'_>) -> usize {
    let records: usize = response
        .addresses
        .iter()
        .map(|a| 12 + if a.is_ipv4() { 4 } else { 16 })
        .sum();
    let opt = query.edns_payload.map_or(0, |_| {
        11 + response
            .subnet
            .map_or(0, |(_, source, _)| 8 + usize::from(source).div_ceil(8))
    });
    12 + query.question.len() + records + opt
}

/// Writes the answer to `query` into `out` (cleared first), as hickory-proto would encode it.
pub fn write_response(query: &Query<'_>, response: &Response<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&query.id.to_be_bytes());
    let mut flags: u16 = 0x8000;
    if response.authoritative {
        flags |= 0x0400;
    }
    if response.truncated {
        flags |= 0x0200;
    }
    if query.recursion_desired {
        flags |= 0x0100;
    }
    if query.checking_disabled {
        flags |= 0x0010;
    }
    out.extend_from_slice(&flags.to_be_bytes());
    let answers = u16::try_from(response.addresses.len()).unwrap_or(u16::MAX);
    let additional = u16::from(query.edns_payload.is_some());
    for count in [1, answers, 0, additional] {
        out.extend_from_slice(&count.to_be_bytes());
    }
    out.extend_from_slice(query.question);
    for addr in response.addresses {
        // The owner is the question's name, at offset 12.
        out.extend_from_slice(&[0xc0, 0x0c]);
        let (rtype, rdata): (u16, &[u8]) = match addr {
            IpAddr::V4(a) => (1, &a.octets()[..]),
            IpAddr::V6(a) => (28, &a.octets()[..]),
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&response.ttl.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(rdata);
    }
    if let Some(payload) = query.edns_payload {
        out.push(0);
        out.extend_from_slice(&41u16.to_be_bytes());
        out.extend_from_slice(&payload.max(512).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        match response.subnet {
            None => out.extend_from_slice(&0u16.to_be_bytes()),
            Some((addr, source, scope)) => {
                let n = usize::from(source).div_ceil(8);
                out.extend_from_slice(&((8 + n) as u16).to_be_bytes());
                out.extend_from_slice(&8u16.to_be_bytes());
                out.extend_from_slice(&((4 + n) as u16).to_be_bytes());
                let family: u16 = if addr.is_ipv4() { 1 } else { 2 };
                out.extend_from_slice(&family.to_be_bytes());
                out.push(source);
                out.push(scope);
                match addr {
                    IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..n.min(4)]),
                    IpAddr::V6(a) => out.extend_from_slice(&a.octets()[..n.min(16)]),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_of_more_than_255_bytes_is_refused() {
        let query = |labels: usize| {
            let mut p = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            for _ in 0..labels {
                p.push(1);
                p.push(b'a');
            }
            p.extend_from_slice(&[0, 0, 1, 0, 1]);
            p
        };
        // 127 one-byte labels: 254 bytes and the root's zero, 255 in all.
        assert!(parse_query(&query(127)).is_some());
        assert!(parse_query(&query(128)).is_none());
    }
    use proptest::prelude::*;

    fn query(name: &[&str], qtype: u16, opt: Option<&[u8]>) -> Vec<u8> {
        let mut p = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(opt.is_some()),
        ];
        for l in name {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        if let Some(rdata) = opt {
            p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
            p.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            p.extend_from_slice(rdata);
        }
        p
    }

    #[test]
    fn the_fast_shape_is_read_and_everything_else_is_left_alone() {
        let ecs = [0, 8, 0, 7, 0, 1, 24, 0, 10, 1, 2];
        let p = query(&["edge", "cdn", "example"], 1, Some(&ecs));
        let q = parse_query(&p).expect("fast");
        assert_eq!(q.id, 0x1234);
        assert!(q.recursion_desired);
        assert_eq!(q.edns_payload, Some(1232));
        assert_eq!(q.subnet, Some((IpAddr::from([10, 1, 2, 0]), 24)));
        // Uppercase, other types, a cookie, a non-zero scope, bits past the source prefix,
        // a short address, trailing bytes: the general path.
        assert!(parse_query(&query(&["EDGE", "cdn", "example"], 1, None)).is_none());
        assert!(parse_query(&query(&["edge", "cdn", "example"], 6, None)).is_none());
        let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        assert!(parse_query(&query(&["edge", "cdn", "example"], 1, Some(&cookie))).is_none());
        for bad in [
            [0, 8, 0, 7, 0, 1, 24, 8, 10, 1, 2].as_slice(),
            &[0, 8, 0, 7, 0, 1, 23, 0, 10, 1, 3],
            &[0, 8, 0, 6, 0, 1, 24, 0, 10, 1],
        ] {
            assert!(parse_query(&query(&["edge", "cdn", "example"], 1, Some(bad))).is_none());
        }
        let mut trailing = query(&["edge", "cdn", "example"], 1, None);
        trailing.push(0);
        assert!(parse_query(&trailing).is_none());
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(p in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(q) = parse_query(&p) {
                prop_assert!(q.question.len() + 12 <= p.len());
            }
        }
    }
}
