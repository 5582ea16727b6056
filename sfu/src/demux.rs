//! Which peer a datagram on the shared UDP port is for.
//!
//! Every peer's media arrives on one socket. A STUN binding request names the peer by our
//! half of its USERNAME (the ICE ufrag we chose for that peer); everything else (DTLS, SRTP,
//! SRTCP) is routed by its source address, learned from that peer's STUN requests. A datagram
//! that is neither is dropped here, before it reaches any peer, and counted by reason. Pure:
//! the table is fed by the shell; no socket, no clock.
//!
//! The owning peer still checks every datagram itself (`Rtc::accepts` verifies the STUN
//! MESSAGE-INTEGRITY and the nominated address): a stranger who learns a ufrag and sends from
//! its own address only reaches that peer's checks, never another peer's traffic.

use std::collections::HashMap;
use std::net::SocketAddr;

/// A peer's place: the shard that owns it and its id there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub shard: u16,
    pub peer: u64,
}

/// What kind of datagram it is, by its first byte (RFC 7983).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Stun,
    Dtls,
    Rtp,
    Garbage,
}

/// Why a datagram was dropped (the `reason` label of the dropped-packets counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Not STUN, DTLS or RTP/RTCP at all, or STUN that does not parse.
    Garbage,
    /// DTLS or RTP from an address no peer's STUN came from.
    UnknownSource,
    /// STUN whose ufrag is none of ours.
    UnknownUfrag,
}

impl Drop {
    pub const ALL: [Drop; 3] = [Drop::Garbage, Drop::UnknownSource, Drop::UnknownUfrag];

    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Garbage => "garbage",
            Drop::UnknownSource => "unknown_source",
            Drop::UnknownUfrag => "unknown_ufrag",
        }
    }
}

/// Addresses one peer may send from (its ICE candidates that tried); more are not learned.
pub const MAX_ADDRS_PER_PEER: usize = 8;

/// Classifies a datagram by its first byte (RFC 7983 section 7).
pub fn classify(buf: &[u8]) -> Class {
    match buf.first() {
        Some(0..=3) if buf.len() >= 20 => Class::Stun,
        Some(20..=63) if buf.len() >= 13 => Class::Dtls,
        Some(128..=191) if buf.len() >= 12 => Class::Rtp,
        _ => Class::Garbage,
    }
}

/// Our half of a STUN message's USERNAME (`<our ufrag>:<their ufrag>`), if it is a
/// well-formed STUN message that has one. Only the header and the attribute list are walked;
/// the integrity is checked later by the peer.
pub fn stun_local_ufrag(buf: &[u8]) -> Option<&str> {
    const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    const USERNAME: u16 = 0x0006;
    if buf.len() < 20 || buf[0] & 0xc0 != 0 || buf[4..8] != MAGIC {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if len % 4 != 0 || 20 + len != buf.len() {
        return None;
    }
    let mut rest = &buf[20..];
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let alen = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + alen)?;
        if kind == USERNAME {
            let name = std::str::from_utf8(value).ok()?;
            let (ours, _theirs) = name.split_once(':')?;
            return Some(ours);
        }
        let padded = 4 + alen.div_ceil(4) * 4;
        rest = rest.get(padded..)?;
    }
    None
}

/// The routing table of whoever reads the media socket (the only shard, or the reader thread).
#[derive(Debug, Default)]
pub struct Routes {
    by_ufrag: HashMap<String, Route>,
    by_addr: HashMap<SocketAddr, Route>,
    addrs_of: HashMap<Route, Vec<SocketAddr>>,
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new peer: its STUN requests will name `ufrag`.
    pub fn add_peer(&mut self, ufrag: String, route: Route) {
        self.by_ufrag.insert(ufrag, route);
    }

    /// A peer is gone: its ufrag and every address learned for it are forgotten.
    pub fn remove_peer(&mut self, ufrag: &str) {
        if let Some(route) = self.by_ufrag.remove(ufrag)
            && let Some(addrs) = self.addrs_of.remove(&route)
        {
            for a in addrs {
                if self.by_addr.get(&a) == Some(&route) {
                    self.by_addr.remove(&a);
                }
            }
        }
    }

    pub fn peers(&self) -> usize {
        self.by_ufrag.len()
    }

    pub fn addresses(&self) -> usize {
        self.by_addr.len()
    }

    /// Where a datagram from `src` goes. A STUN request with a known ufrag also teaches the
    /// table its source address (at most [`MAX_ADDRS_PER_PEER`] per peer; an address another
    /// peer's STUN came from moves to the newest).
    pub fn route(&mut self, buf: &[u8], src: SocketAddr) -> Result<Route, Drop> {
        match classify(buf) {
            Class::Garbage => Err(Drop::Garbage),
            Class::Stun => {
                let ufrag = stun_local_ufrag(buf).ok_or(Drop::Garbage)?;
                let route = *self.by_ufrag.get(ufrag).ok_or(Drop::UnknownUfrag)?;
                self.learn(src, route);
                Ok(route)
            }
            Class::Dtls | Class::Rtp => self.by_addr.get(&src).copied().ok_or(Drop::UnknownSource),
        }
    }

    fn learn(&mut self, src: SocketAddr, route: Route) {
        if self.by_addr.get(&src) == Some(&route) {
            return;
        }
        let addrs = self.addrs_of.entry(route).or_default();
        if addrs.len() >= MAX_ADDRS_PER_PEER {
            return;
        }
        addrs.push(src);
        if let Some(old) = self.by_addr.insert(src, route)
            && let Some(list) = self.addrs_of.get_mut(&old)
        {
            list.retain(|a| *a != src);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A STUN binding request with USERNAME `user` (no integrity: the table does not check it).
    fn stun(user: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(user.len() as u16).to_be_bytes());
        attrs.extend_from_slice(user.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn stun_names_the_peer_and_teaches_its_address() {
        let mut r = Routes::new();
        let a = Route { shard: 0, peer: 1 };
        r.add_peer("abcd".into(), a);
        let rtp = [0x80u8; 40];
        assert_eq!(r.route(&rtp, addr(5000)), Err(Drop::UnknownSource));
        assert_eq!(
            r.route(&stun("zzzz:remote"), addr(5000)),
            Err(Drop::UnknownUfrag)
        );
        assert_eq!(r.route(&stun("abcd:remote"), addr(5000)), Ok(a));
        assert_eq!(r.route(&rtp, addr(5000)), Ok(a));
        let dtls = [22u8; 40];
        assert_eq!(r.route(&dtls, addr(5000)), Ok(a));
        assert_eq!(r.route(&dtls, addr(5001)), Err(Drop::UnknownSource));
        r.remove_peer("abcd");
        assert_eq!(r.route(&rtp, addr(5000)), Err(Drop::UnknownSource));
        assert_eq!(
            r.route(&stun("abcd:remote"), addr(5000)),
            Err(Drop::UnknownUfrag)
        );
        assert_eq!((r.peers(), r.addresses()), (0, 0));
    }

    #[test]
    fn garbage_is_told_apart() {
        let mut r = Routes::new();
        r.add_peer("abcd".into(), Route { shard: 0, peer: 1 });
        for g in [&b""[..], &[0xff; 100][..], &[0x80; 5][..], &[0x00; 10][..]] {
            assert_eq!(r.route(g, addr(1)), Err(Drop::Garbage), "{g:?}");
        }
        // STUN-looking, but its length field lies.
        let mut s = stun("abcd:x");
        s[3] = s[3].wrapping_add(4);
        assert_eq!(r.route(&s, addr(1)), Err(Drop::Garbage));
        // No USERNAME at all.
        let mut s = stun("abcd:x");
        s[20] = 0x80;
        assert_eq!(r.route(&s, addr(1)), Err(Drop::Garbage));
    }

    #[test]
    fn one_peer_learns_a_bounded_number_of_addresses() {
        let mut r = Routes::new();
        let a = Route { shard: 0, peer: 1 };
        r.add_peer("abcd".into(), a);
        for port in 0..100 {
            assert_eq!(r.route(&stun("abcd:x"), addr(port)), Ok(a));
        }
        assert_eq!(r.addresses(), MAX_ADDRS_PER_PEER);
        // An address moves to the peer whose STUN came from it last.
        let b = Route { shard: 0, peer: 2 };
        r.add_peer("efgh".into(), b);
        assert_eq!(r.route(&stun("efgh:x"), addr(0)), Ok(b));
        assert_eq!(r.route(&[0x80; 20], addr(0)), Ok(b));
        r.remove_peer("abcd");
        assert_eq!(r.route(&[0x80; 20], addr(0)), Ok(b));
    }

    proptest! {
        #[test]
        fn any_bytes_route_without_panic(bufs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..50), port in any::<u16>()) {
            let mut r = Routes::new();
            r.add_peer("abcd".into(), Route { shard: 0, peer: 1 });
            for b in &bufs {
                let _ = r.route(b, addr(port));
                let _ = stun_local_ufrag(b);
            }
            prop_assert!(r.addresses() <= MAX_ADDRS_PER_PEER);
        }
    }
}
