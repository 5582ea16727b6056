//! Who a bearer token belongs to, and whether that identity may send a given heartbeat. Pure:
//! the config and the heartbeat in, a verdict out (the API turns a refusal into a 403 or 409
//! and an audit entry).
//!
//! Every node has its own credential (`[auth.nodes.<id>]`) bound to its id, site and role, so
//! a node can speak only for itself: it cannot register as an origin, claim another site's
//! node, or advertise addresses outside its site's networks.

use estuary_common::cp::{Addresses, Heartbeat, Role};

use crate::config::AuthConfig;

/// Who presented a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An operator, by the name of their token.
    Operator(String),
    /// A node with its own credential.
    Node {
        id: String,
        site: String,
        role: Role,
    },
    /// Deprecated: the holder of a site's shared token, good for edges of that site only.
    SiteEdge(String),
}

impl Caller {
    /// The name the audit log gives this caller.
    pub fn audit_name(&self) -> String {
        match self {
            Caller::Operator(name) => format!("operator:{name}"),
            Caller::Node { id, .. } => format!("node:{id}"),
            Caller::SiteEdge(site) => format!("site-token:{site}"),
        }
    }
}

fn ct_eq(a: &str, b: &str) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()))
}

/// The identity a token belongs to. Every configured token is compared (in constant time),
/// so the time taken does not tell which table a token is in.
pub fn identify(auth: &AuthConfig, token: &str) -> Option<Caller> {
    let mut found = None;
    for (name, t) in &auth.operator_tokens {
        if ct_eq(t, token) && found.is_none() {
            found = Some(Caller::Operator(name.clone()));
        }
    }
    for (id, c) in &auth.nodes {
        if ct_eq(&c.token, token) && found.is_none() {
            found = Some(Caller::Node {
                id: id.clone(),
                site: c.site.clone(),
                role: c.role,
            });
        }
    }
    for (site, t) in &auth.node_tokens {
        if ct_eq(t, token) && found.is_none() {
            found = Some(Caller::SiteEdge(site.clone()));
        }
    }
    found
}

/// Why a heartbeat was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("operators do not send heartbeats")]
    NotANode,
    #[error("this credential is node {credential:?}'s, not {claimed:?}'s")]
    OtherNode { credential: String, claimed: String },
    #[error("node {node:?} belongs to site {credential:?}, not {claimed:?}")]
    OtherSite {
        node: String,
        credential: String,
        claimed: String,
    },
    #[error("node {node:?} has role {credential}, not {claimed}")]
    OtherRole {
        node: String,
        credential: &'static str,
        claimed: &'static str,
    },
    #[error("a site token is good for edges only, not role {0}")]
    SiteTokenRole(&'static str),
    #[error("this site token is for site {credential:?}, not {claimed:?}")]
    SiteTokenSite { credential: String, claimed: String },
    #[error("node {0:?} has its own credential; a site token cannot speak for it")]
    SiteTokenForCredentialed(String),
    #[error("advertised address {address:?} is not in site {site:?}'s networks")]
    AddressOutsideSite { address: String, site: String },
}

/// Whether `caller` may send heartbeat `hb`: the heartbeat's node id, site and role must be
/// the caller's own, and its advertised addresses within its site's networks.
pub fn admit(auth: &AuthConfig, caller: &Caller, hb: &Heartbeat) -> Result<(), Refusal> {
    match caller {
        Caller::Operator(_) => return Err(Refusal::NotANode),
        Caller::Node { id, site, role } => {
            if *id != hb.node {
                return Err(Refusal::OtherNode {
                    credential: id.clone(),
                    claimed: hb.node.clone(),
                });
            }
            if *site != hb.site {
                return Err(Refusal::OtherSite {
                    node: id.clone(),
                    credential: site.clone(),
                    claimed: hb.site.clone(),
                });
            }
            if *role != hb.role {
                return Err(Refusal::OtherRole {
                    node: id.clone(),
                    credential: role.as_str(),
                    claimed: hb.role.as_str(),
                });
            }
        }
        Caller::SiteEdge(site) => {
            if hb.role != Role::Edge {
                return Err(Refusal::SiteTokenRole(hb.role.as_str()));
            }
            if *site != hb.site {
                return Err(Refusal::SiteTokenSite {
                    credential: site.clone(),
                    claimed: hb.site.clone(),
                });
            }
            if auth.nodes.contains_key(&hb.node) {
                return Err(Refusal::SiteTokenForCredentialed(hb.node.clone()));
            }
        }
    }
    if let Some(networks) = auth.site_networks.get(&hb.site) {
        for address in advertised(&hb.addresses) {
            if !in_networks(address, networks) {
                return Err(Refusal::AddressOutsideSite {
                    address: address.chars().take(200).collect(),
                    site: hb.site.clone(),
                });
            }
        }
    }
    Ok(())
}

fn advertised(a: &Addresses) -> impl Iterator<Item = &str> {
    [&a.http, &a.https, &a.admin]
        .into_iter()
        .filter_map(|v| v.as_deref())
}

/// Whether a base URL's host is an IP literal inside one of `networks` (names are refused:
/// what a name resolves to can change after the check).
fn in_networks(url: &str, networks: &[ipnet::IpNet]) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(ip) = host.parse::<std::net::IpAddr>() else {
        return false;
    };
    networks.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeCredential;

    fn auth() -> AuthConfig {
        let mut nodes = std::collections::BTreeMap::new();
        nodes.insert(
            "edge-a1".to_owned(),
            NodeCredential {
                site: "a".into(),
                role: Role::Edge,
                token: "edge-a1-credential-0123456789abcdef".into(),
            },
        );
        nodes.insert(
            "origin-1".to_owned(),
            NodeCredential {
                site: "core".into(),
                role: Role::Origin,
                token: "origin-1-credential-0123456789abcdef".into(),
            },
        );
        AuthConfig {
            operator_tokens: [("ops".to_owned(), "operator-0123456789".to_owned())].into(),
            node_tokens: [("b".to_owned(), "site-b-token-0123456789".to_owned())].into(),
            nodes,
            site_networks: [("a".to_owned(), vec!["10.1.0.0/16".parse().expect("net")])].into(),
            takeover_after: std::time::Duration::from_secs(15),
        }
    }

    fn beat(node: &str, site: &str, role: Role, http: &str) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            site: site.into(),
            role,
            addresses: Addresses {
                http: Some(http.into()),
                ..Addresses::default()
            },
            capacity: Default::default(),
            ready: true,
            load: Default::default(),
            usage: Default::default(),
            version: String::new(),
            inventory: vec![],
            rooms: vec![],
            instance: String::new(),
            leaving: false,
        }
    }

    #[test]
    fn tokens_name_their_holder() {
        let a = auth();
        assert_eq!(
            identify(&a, "operator-0123456789"),
            Some(Caller::Operator("ops".into()))
        );
        assert_eq!(
            identify(&a, "edge-a1-credential-0123456789abcdef"),
            Some(Caller::Node {
                id: "edge-a1".into(),
                site: "a".into(),
                role: Role::Edge
            })
        );
        assert_eq!(
            identify(&a, "site-b-token-0123456789"),
            Some(Caller::SiteEdge("b".into()))
        );
        assert_eq!(identify(&a, "edge-a1-credential-0123456789abcde"), None);
    }

    #[test]
    fn a_credential_speaks_only_for_its_own_node_site_and_role() {
        let a = auth();
        let me = identify(&a, "edge-a1-credential-0123456789abcdef").expect("node");
        let ok = beat("edge-a1", "a", Role::Edge, "http://10.1.2.3:80");
        assert_eq!(admit(&a, &me, &ok), Ok(()));
        let mut other = ok.clone();
        other.node = "edge-b1".into();
        assert!(matches!(
            admit(&a, &me, &other),
            Err(Refusal::OtherNode { .. })
        ));
        let mut site = ok.clone();
        site.site = "b".into();
        assert!(matches!(
            admit(&a, &me, &site),
            Err(Refusal::OtherSite { .. })
        ));
        let mut origin = ok.clone();
        origin.role = Role::Origin;
        assert!(matches!(
            admit(&a, &me, &origin),
            Err(Refusal::OtherRole { .. })
        ));
        for outside in [
            "http://10.2.0.1:80",
            "http://edge.example:80",
            "http://[::1]:80",
            "not a url",
        ] {
            let hb = beat("edge-a1", "a", Role::Edge, outside);
            assert!(
                matches!(admit(&a, &me, &hb), Err(Refusal::AddressOutsideSite { .. })),
                "{outside}"
            );
        }
        let ops = identify(&a, "operator-0123456789").expect("ops");
        assert_eq!(admit(&a, &ops, &ok), Err(Refusal::NotANode));
    }

    #[test]
    fn a_site_token_is_good_for_uncredentialed_edges_of_its_site_only() {
        let a = auth();
        let site_b = identify(&a, "site-b-token-0123456789").expect("site");
        let edge = beat("edge-b7", "b", Role::Edge, "http://192.0.2.1:80");
        assert_eq!(admit(&a, &site_b, &edge), Ok(()));
        let mut origin = edge.clone();
        origin.role = Role::Origin;
        assert_eq!(
            admit(&a, &site_b, &origin),
            Err(Refusal::SiteTokenRole("origin"))
        );
        let mut elsewhere = edge.clone();
        elsewhere.site = "a".into();
        assert!(matches!(
            admit(&a, &site_b, &elsewhere),
            Err(Refusal::SiteTokenSite { .. })
        ));
        let mut credentialed = edge.clone();
        credentialed.node = "edge-a1".into();
        assert!(matches!(
            admit(&a, &site_b, &credentialed),
            Err(Refusal::SiteTokenForCredentialed(_))
        ));
    }
}
