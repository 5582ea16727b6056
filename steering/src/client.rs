//! Who the client is: the connection's source address, or the address a trusted proxy put in
//! `X-Forwarded-For`, or (for operators testing a zone) `?client=`. Pure.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::geo::canonical_ip;

/// Why the client's address could not be taken from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("the client parameter is not an IP address")]
    BadParam,
    #[error("the client parameter is not allowed here")]
    ParamNotAllowed,
}

/// The client's address. `forwarded`: every `X-Forwarded-For` value of the request, in order.
/// `X-Forwarded-For` counts only when the peer is a trusted proxy; it is read from the right,
/// skipping trusted proxies, and the first other address is the client (an unreadable entry
/// stops the walk at the last hop that was believed).
pub fn client_ip(
    peer: IpAddr,
    forwarded: &[&str],
    trusted: &[IpNet],
    param: Option<&str>,
    allow_param: bool,
) -> Result<IpAddr, ClientError> {
    if let Some(p) = param {
        if !allow_param {
            return Err(ClientError::ParamNotAllowed);
        }
        return p
            .trim()
            .parse::<IpAddr>()
            .map(canonical_ip)
            .map_err(|_| ClientError::BadParam);
    }
    let peer = canonical_ip(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Ok(peer);
    }
    let mut client = peer;
    let hops = forwarded
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>().map(canonical_ip) else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn trusted() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().expect("net")]
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let t = trusted();
        // From a trusted proxy: the rightmost untrusted address.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["198.51.100.7"], &t, None, true),
            Ok(ip("198.51.100.7"))
        );
        assert_eq!(
            client_ip(
                ip("10.0.0.1"),
                &["6.6.6.6, 198.51.100.7", "10.9.9.9"],
                &t,
                None,
                true
            ),
            Ok(ip("198.51.100.7"))
        );
        // From anyone else: ignored.
        assert_eq!(
            client_ip(ip("203.0.113.5"), &["198.51.100.7"], &t, None, true),
            Ok(ip("203.0.113.5"))
        );
        // Garbage stops the walk at the last believed hop.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["198.51.100.7, junk"], &t, None, true),
            Ok(ip("10.0.0.1"))
        );
        // Only proxies: the leftmost.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["10.0.0.9"], &t, None, true),
            Ok(ip("10.0.0.9"))
        );
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &["198.51.100.7"], &t, None, true),
            Ok(ip("198.51.100.7"))
        );
    }

    #[test]
    fn the_client_parameter_wins_when_allowed() {
        let t = trusted();
        assert_eq!(
            client_ip(ip("127.0.0.1"), &[], &t, Some("192.0.2.1"), true),
            Ok(ip("192.0.2.1"))
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &[], &t, Some("nope"), true),
            Err(ClientError::BadParam)
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &[], &t, Some("192.0.2.1"), false),
            Err(ClientError::ParamNotAllowed)
        );
    }

    proptest! {
        #[test]
        fn any_header_gives_an_address_without_panicking(h in ".{0,200}", peer in any::<u32>()) {
            let peer = IpAddr::V4(std::net::Ipv4Addr::from(peer));
            let got = client_ip(peer, &[h.as_str()], &trusted(), None, true);
            prop_assert!(got.is_ok());
            if !trusted()[0].contains(&peer) {
                prop_assert_eq!(got, Ok(peer));
            }
        }
    }
}
