//! The geo-DNS fast path: any packet either is refused by `parse_query` or gets an answer of
//! exactly `response_len` bytes that hickory reads back with the query's id and question.
#![no_main]

use std::net::IpAddr;

use estuary_steering::dns_wire::{Response, parse_query, response_len, write_response};
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(q) = parse_query(data) else {
        return;
    };
    let addresses: Vec<IpAddr> = if q.qtype == 28 {
        vec!["2001:db8::1".parse().expect("v6")]
    } else {
        vec![IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2])]
    };
    let response = Response {
        authoritative: true,
        truncated: false,
        addresses: &addresses,
        ttl: 30,
        subnet: q.subnet.map(|(a, source)| (a, source, source)),
    };
    let mut out = Vec::new();
    write_response(&q, &response, &mut out);
    assert_eq!(out.len(), response_len(&q, &response));
    let m = Message::from_vec(&out).expect("hickory reads our answer");
    assert_eq!(m.metadata.id, q.id);
    assert_eq!(m.queries.len(), 1);
});
