//! Authoritative geo-DNS for `[dns] zone`, served by hickory-server over UDP and TCP.
//!
//! - `edge.<zone>` A/AAAA: the best healthy edges for the client, which is the EDNS Client
//!   Subnet when the resolver sends one (the answer echoes it with its scope set) and the
//!   resolver's own address otherwise; the ranking is [`crate::choose::choose`], the same as
//!   the HTTP API's, keyed by the client's network so one network sticks to its edges.
//! - `<site>.<zone>` A/AAAA: the site's edges that are up.
//! - The apex: SOA and NS (with glue for in-zone name servers from `[dns] ns_addresses`).
//! - Other names in the zone: NXDOMAIN; other types of known names: NODATA; both with the SOA
//!   in the authority section for negative caching. Names outside the zone: REFUSED (this is
//!   an authoritative server, not a resolver).
//! - UDP answers larger than the client's buffer (512 bytes without EDNS) are truncated by the
//!   encoder (TC set), so the resolver retries over TCP.
//! - Response rate limiting per client network (IPv4 /24, IPv6 /56) over UDP, with slip,
//!   across every name and ECS network it asks for, with separate budgets for answers,
//!   negative answers (NXDOMAIN, NODATA) and errors, as BIND and Knot do.
//! - DNS cookies (RFC 7873, server cookies as RFC 9018 lays them out): a client that returns a
//!   valid server cookie has proven its address, so it is neither rate limited nor held to
//!   the amplification cap below.
//! - UDP answers to clients that have not proven their address are at most three times the
//!   size of their query; a larger answer goes out empty with TC set, so the resolver retries
//!   over TCP (or with a cookie).
//!
//! The answer itself is the pure [`Zone::answer`]: it takes the query, the client, the view
//! and the RRL verdict, and returns the sections; the async handler only counts and sends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::{Edns, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use ipnet::IpNet;
use prometheus::{IntCounter, IntCounterVec, Opts};

use crate::choose::{EdgeInfo, Policy, Topology, ranked_edges};
use crate::config::DnsConfig;
use crate::state::{StateHolder, View};

/// What a response carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub response_code: ResponseCode,
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    /// The ECS option to echo, with its scope prefix set.
    pub client_subnet: Option<ClientSubnet>,
    /// Sent empty with TC set (rate limited, slipped).
    pub truncated: bool,
}

impl Answer {
    fn code(response_code: ResponseCode) -> Self {
        Self {
            response_code,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            client_subnet: None,
            truncated: false,
        }
    }
}

/// The zone and how it answers; built once from `[dns]`.
#[derive(Debug, Clone)]
pub struct Zone {
    origin: LowerName,
    origin_labels: usize,
    soa: Record,
    ns: Vec<Record>,
    /// In-zone name server names (lowercase, relative label) and their addresses.
    ns_hosts: Vec<(Name, Vec<IpAddr>)>,
    ttl: u32,
    policy: Policy,
    /// `edge.<zone>` in wire form, lowercase (the fast path's one name), unless a name server
    /// of the zone has that name.
    edge_wire: Option<Vec<u8>>,
    ecs_scope: crate::config::EcsScope,
}

/// The reason a config cannot make a zone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneError {
    #[error("dns.{key}: {name:?} is not a DNS name: {why}")]
    BadName {
        key: &'static str,
        name: String,
        why: String,
    },
}

fn name(key: &'static str, text: &str) -> Result<Name, ZoneError> {
    Name::from_ascii(text)
        .map(|n| n.to_lowercase())
        .map_err(|e| ZoneError::BadName {
            key,
            name: text.to_owned(),
            why: e.to_string(),
        })
}

impl Zone {
    /// The zone of `[dns]`, ranking with `policy` (its `max_results` becomes `[dns] answers`).
    pub fn new(config: &DnsConfig, policy: Policy, serial: u32) -> Result<Self, ZoneError> {
        let origin = name("zone", &config.zone)?;
        let ttl = u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX);
        // `<label>.<zone>`, for the defaults.
        let in_zone = |label: &str| {
            name(
                "zone",
                &format!("{label}.{}", config.zone.trim_start_matches('.')),
            )
        };
        let ns_names: Vec<Name> = if config.nameservers.is_empty() {
            vec![in_zone("ns1")?]
        } else {
            config
                .nameservers
                .iter()
                .map(|n| name("nameservers", n))
                .collect::<Result<_, _>>()?
        };
        let contact = match &config.contact {
            Some(c) => name("contact", c)?,
            None => in_zone("hostmaster")?,
        };
        let soa = Record::from_rdata(
            origin.clone(),
            ttl,
            RData::SOA(SOA::new(
                ns_names[0].clone(),
                contact,
                serial,
                3600,
                600,
                86_400,
                ttl,
            )),
        );
        let ns = ns_names
            .iter()
            .map(|n| Record::from_rdata(origin.clone(), ttl, RData::NS(NS(n.clone()))))
            .collect();
        let zone_lower = LowerName::from(origin.clone());
        let ns_hosts: Vec<(Name, Vec<IpAddr>)> = ns_names
            .into_iter()
            .filter(|n| zone_lower.zone_of(&LowerName::from(n.clone())))
            .map(|n| (n, config.ns_addresses.clone()))
            .collect();
        let edge_name = in_zone("edge")?;
        let edge_wire = (!ns_hosts.iter().any(|(n, _)| *n == edge_name))
            .then(|| edge_name.to_bytes().ok())
            .flatten();
        Ok(Self {
            origin_labels: usize::from(origin.num_labels()),
            origin: zone_lower,
            soa,
            ns,
            ns_hosts,
            ttl,
            edge_wire,
            ecs_scope: config.ecs_scope,
            policy: Policy {
                max_results: config.answers,
                ..policy
            },
        })
    }

    /// The answer to one question (the pure heart of the DNS server), with the view's
    /// topology and its edges' addresses (one per [`Topology::edges`] entry, see
    /// [`edge_ip`]; none before the first snapshot) and the rate limiter's verdict.
    pub fn answer(
        &self,
        question: &Question<'_>,
        topology: Option<(&Topology, &[Option<IpAddr>])>,
        limited: Limited,
    ) -> Option<Answer> {
        let Question {
            name: query_name,
            query_type,
            query_class,
            client,
            subnet,
        } = *question;
        match limited {
            Limited::Drop => return None,
            Limited::Slip => {
                return Some(Answer {
                    truncated: true,
                    ..Answer::code(ResponseCode::NoError)
                });
            }
            Limited::No => {}
        }
        if query_class != DNSClass::IN && query_class != DNSClass::ANY {
            return Some(Answer::code(ResponseCode::Refused));
        }
        if !self.origin.zone_of(query_name) {
            return Some(Answer::code(ResponseCode::Refused));
        }
        let mut out = Answer {
            authoritative: true,
            ..Answer::code(ResponseCode::NoError)
        };
        let labels = usize::from(query_name.num_labels());
        let wants_address = matches!(
            query_type,
            RecordType::A | RecordType::AAAA | RecordType::ANY
        );
        if labels == self.origin_labels {
            match query_type {
                RecordType::SOA => out.answers.push(self.soa.clone()),
                RecordType::NS => {
                    out.answers.extend(self.ns.iter().cloned());
                    out.additionals.extend(self.glue());
                }
                RecordType::ANY => {
                    out.answers.push(self.soa.clone());
                    out.answers.extend(self.ns.iter().cloned());
                }
                _ => {}
            }
        } else if let Some((_, addrs)) = self
            .ns_hosts
            .iter()
            .find(|(n, _)| LowerName::from(n.clone()) == *query_name)
        {
            if wants_address {
                out.answers
                    .extend(address_records(query_name, query_type, addrs, self.ttl));
            }
        } else if labels == self.origin_labels + 1 {
            let label = query_name
                .iter()
                .next()
                .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
                .unwrap_or_default();
            let Some((topo, edge_ips)) = topology else {
                // No snapshot yet: nothing is known to be up.
                return Some(Answer::code(ResponseCode::ServFail));
            };
            if label == "edge" {
                let (addrs, scope) = self.edge_addresses(client, subnet, topo, edge_ips);
                if wants_address {
                    out.answers
                        .extend(address_records(query_name, query_type, &addrs, self.ttl));
                }
                out.client_subnet = subnet
                    .map(|s| ClientSubnet::new(s.addr(), s.source_prefix(), scope.unwrap_or(0)));
            } else if let Some(site) = topo.site_named(&label).or_else(|| {
                topo.sites
                    .iter()
                    .position(|s| s.name.eq_ignore_ascii_case(&label))
            }) {
                if wants_address {
                    let addrs: Vec<IpAddr> = topo.sites[site]
                        .edges
                        .iter()
                        .filter(|i| topo.edges[**i].up)
                        .filter_map(|i| edge_ips.get(*i).copied().flatten())
                        .collect();
                    out.answers
                        .extend(address_records(query_name, query_type, &addrs, self.ttl));
                }
            } else {
                out.response_code = ResponseCode::NXDomain;
            }
        } else {
            out.response_code = ResponseCode::NXDomain;
        }
        if out.answers.is_empty() {
            // NXDOMAIN or NODATA: the SOA tells resolvers how long to remember it.
            out.authorities.push(self.soa.clone());
        }
        if subnet.is_some() && out.client_subnet.is_none() {
            out.client_subnet = subnet.map(|s| ClientSubnet::new(s.addr(), s.source_prefix(), 0));
        }
        Some(out)
    }

    /// `edge.<zone>`'s ranked addresses for a client (both families) and the ECS scope to
    /// answer with: the one ranking the general and the fast path share.
    fn edge_addresses(
        &self,
        client: IpAddr,
        subnet: Option<&ClientSubnet>,
        topo: &Topology,
        edge_ips: &[Option<IpAddr>],
    ) -> (Vec<IpAddr>, Option<u8>) {
        let (edges, scope) = self.edge_ranking(client, subnet, topo, edge_ips);
        let addrs = edges
            .into_iter()
            .filter_map(|i| edge_ips.get(i).copied().flatten())
            .collect();
        (addrs, scope)
    }

    /// [`Zone::edge_addresses`] as the edges' indices in `topo` (only edges with an address).
    fn edge_ranking(
        &self,
        client: IpAddr,
        subnet: Option<&ClientSubnet>,
        topo: &Topology,
        edge_ips: &[Option<IpAddr>],
    ) -> (Vec<usize>, Option<u8>) {
        let (ip, source, scope, zone) = client_network(client, subnet, topo);
        let place = topo.place_in(zone);
        let (key, scope) = match (self.ecs_scope, source) {
            (crate::config::EcsScope::Network, Some(source)) => {
                match network_scope(ip, source, topo) {
                    Some(net) => (
                        NetworkKey::new(net.addr(), Some(net.prefix_len())),
                        Some(net.prefix_len()),
                    ),
                    None => (NetworkKey::new(ip, Some(source)), scope),
                }
            }
            _ => (NetworkKey::new(ip, source), scope),
        };
        let mut edges = ranked_edges(topo, place, key.as_str(), &self.policy);
        edges.retain(|i| edge_ips.get(*i).is_some_and(Option::is_some));
        (edges, scope)
    }

    fn glue(&self) -> Vec<Record> {
        self.ns_hosts
            .iter()
            .flat_map(|(n, addrs)| {
                let owner = LowerName::from(n.clone());
                address_records(&owner, RecordType::ANY, addrs, self.ttl)
            })
            .collect()
    }
}

/// One question and who asks it.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    pub name: &'a LowerName,
    pub query_type: RecordType,
    pub query_class: DNSClass,
    /// The resolver's address.
    pub client: IpAddr,
    /// The query's EDNS Client Subnet option.
    pub subnet: Option<&'a ClientSubnet>,
}

/// The rate limiter's verdict for one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    No,
    /// Over the limit: sent empty and truncated.
    Slip,
    /// Over the limit: not sent.
    Drop,
}

/// A/AAAA records of `addrs` for `owner` as `query_type` asks (ANY: both families).
fn address_records(
    owner: &LowerName,
    query_type: RecordType,
    addrs: &[IpAddr],
    ttl: u32,
) -> Vec<Record> {
    let owner = Name::from(owner);
    addrs
        .iter()
        .filter_map(|ip| match (ip, query_type) {
            (IpAddr::V4(a), RecordType::A | RecordType::ANY) => Some(RData::A(A(*a))),
            (IpAddr::V6(a), RecordType::AAAA | RecordType::ANY) => Some(RData::AAAA(AAAA(*a))),
            _ => None,
        })
        .map(|rdata| Record::from_rdata(owner.clone(), ttl, rdata))
        .collect()
}

/// The address an edge's players connect to, when its URL names one (a host name cannot be
/// an A record).
pub fn edge_ip(edge: &EdgeInfo) -> Option<IpAddr> {
    let url = url::Url::parse(&edge.base_url).ok()?;
    match url.host()? {
        url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
        url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
        url::Host::Domain(_) => None,
    }
}

/// Who the answer is for: the ECS network when there is one (its address truncated to the
/// source prefix), else the resolver. Returns the address to place, the source prefix, and
/// the scope to answer with: the longest of the source prefix, the matched coverage network,
/// and any coverage network inside the source network (never shorter, so a resolver never
/// reuses the answer for clients it may not fit).
/// Also returns the coverage zone the placed address is in (one lookup serves both).
fn client_network<'t>(
    resolver: IpAddr,
    subnet: Option<&ClientSubnet>,
    topo: &'t Topology,
) -> (IpAddr, Option<u8>, Option<u8>, Option<&'t crate::geo::Zone>) {
    let Some(s) = subnet else {
        return (resolver, None, None, topo.zones.lookup(resolver));
    };
    let source = s.source_prefix();
    let ip = IpNet::new(s.addr(), source)
        .map(|n| n.trunc().addr())
        .unwrap_or(s.addr());
    if source == 0 {
        // RFC 7871 7.1.2: a /0 source asks for an answer that does not depend on the client.
        return (resolver, Some(0), Some(0), topo.zones.lookup(resolver));
    }
    let found = topo.zones.lookup_prefix(ip);
    let matched = found.map_or(0, |(_, len)| len);
    let inside = IpNet::new(ip, source)
        .ok()
        .and_then(|net| topo.zones.deepest_within(net))
        .unwrap_or(0);
    (
        ip,
        Some(source),
        Some(source.max(matched).max(inside)),
        found.map(|(zone, _)| zone),
    )
}

/// The widest network around `ip` (a client network of `source` bits) that one answer fits:
/// from its coverage network inward, the first prefix that holds no narrower coverage
/// network, if that is wider than `source`; `None` when there is none (no coverage network,
/// or one as narrow as the client's). Every address in it finds the same coverage network.
fn network_scope(ip: IpAddr, source: u8, topo: &Topology) -> Option<IpNet> {
    let (_, matched) = topo.zones.lookup_prefix(ip)?;
    (matched..source)
        .filter_map(|len| IpNet::new(ip, len).ok().map(|n| n.trunc()))
        .find(|net| topo.zones.deepest_within(*net).is_none())
}

/// The rendezvous key of a client: its network (at most a /24 or a /56), so that one network
/// sticks to its edges; the network's address bytes and prefix length in hex, written on the
/// stack (the geo-DNS makes one per query).
struct NetworkKey {
    text: [u8; 34],
    len: usize,
}

impl NetworkKey {
    fn new(ip: IpAddr, source: Option<u8>) -> Self {
        let (max, octets): (u8, &[u8]) = match &ip {
            IpAddr::V4(a) => (24, &a.octets()[..]),
            IpAddr::V6(a) => (56, &a.octets()[..]),
        };
        let prefix = source.unwrap_or(max).min(max);
        let mut key = Self {
            text: [0; 34],
            len: 0,
        };
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut push = |b: u8| {
            key.text[key.len] = HEX[usize::from(b >> 4)];
            key.text[key.len + 1] = HEX[usize::from(b & 15)];
            key.len += 2;
        };
        for (i, byte) in octets.iter().enumerate() {
            let bits = usize::from(prefix).saturating_sub(i * 8).min(8);
            // Bits past the prefix are zero, so every address of the network has one key.
            let mask = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
            push(byte & mask);
        }
        push(prefix);
        key
    }

    fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.text[..self.len]).unwrap_or("")
    }
}

/// The network a client is rate limited as: its /24 or /56.
fn client_net(ip: IpAddr) -> IpNet {
    let ip = crate::geo::canonical_ip(ip);
    let len = match ip {
        IpAddr::V4(_) => 24,
        IpAddr::V6(_) => 56,
    };
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// Which budget a response spends (as BIND's RRL sorts them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// An answer with records.
    Answers,
    /// NXDOMAIN, or NOERROR without records (NODATA).
    Negative,
    /// REFUSED, SERVFAIL, FORMERR, NOTIMP and the like.
    Errors,
}

impl Budget {
    /// The budget an answer spends.
    pub fn of(answer: &Answer) -> Self {
        match answer.response_code {
            ResponseCode::NoError if !answer.answers.is_empty() => Budget::Answers,
            ResponseCode::NoError | ResponseCode::NXDomain => Budget::Negative,
            _ => Budget::Errors,
        }
    }
}

/// The key of one client network's budget: the network alone, whatever names, types or ECS
/// networks it asks for (varying them must not buy more responses).
fn rrl_key(client: IpAddr) -> IpNet {
    client_net(client)
}

/// Keyed by client network with foldhash (seeded per process), not SipHash: the check runs
/// for every UDP answer.
type KeyedLimiter = governor::RateLimiter<
    IpNet,
    governor::state::keyed::DashMapStateStore<IpNet, foldhash::fast::RandomState>,
    governor::clock::DefaultClock,
>;

fn limiter(per_second: u32) -> Option<KeyedLimiter> {
    NonZeroU32::new(per_second).map(|rate| {
        // A burst of one second's worth.
        governor::RateLimiter::dashmap_with_clock_and_hasher(
            governor::Quota::per_second(rate).allow_burst(rate),
            governor::clock::DefaultClock::default(),
            foldhash::fast::RandomState::default(),
        )
    })
}

/// Response rate limiting: a token bucket per client network and budget, with slip.
pub struct RateLimit {
    answers: Option<KeyedLimiter>,
    negative: Option<KeyedLimiter>,
    errors: Option<KeyedLimiter>,
    slip: u32,
    over: AtomicU64,
}

impl RateLimit {
    /// `per_second` answers, and a tenth of it (at least one) for negative answers and errors.
    pub fn new(per_second: u32, slip: u32) -> Self {
        let tenth = if per_second == 0 {
            0
        } else {
            (per_second / 10).max(1)
        };
        Self::with_budgets(per_second, tenth, tenth, slip)
    }

    pub fn with_budgets(answers: u32, negative: u32, errors: u32, slip: u32) -> Self {
        Self {
            answers: limiter(answers),
            negative: limiter(negative),
            errors: limiter(errors),
            slip,
            over: AtomicU64::new(0),
        }
    }

    /// The limits `[dns]` asks for.
    pub fn from_config(c: &DnsConfig) -> Self {
        let r = c.rrl_responses_per_second;
        let tenth = if r == 0 { 0 } else { (r / 10).max(1) };
        Self::with_budgets(
            r,
            c.rrl_nxdomains_per_second.unwrap_or(tenth),
            c.rrl_errors_per_second.unwrap_or(tenth),
            c.rrl_slip,
        )
    }

    /// The verdict for one UDP response from `budget` to `client`.
    pub fn check(&self, client: IpAddr, budget: Budget) -> Limited {
        let limiter = match budget {
            Budget::Answers => &self.answers,
            Budget::Negative => &self.negative,
            Budget::Errors => &self.errors,
        };
        let Some(limiter) = limiter else {
            return Limited::No;
        };
        if limiter.check_key(&rrl_key(client)).is_ok() {
            return Limited::No;
        }
        let n = self.over.fetch_add(1, Ordering::Relaxed);
        if self.slip > 0 && n.is_multiple_of(u64::from(self.slip)) {
            Limited::Slip
        } else {
            Limited::Drop
        }
    }

    /// Forgets streams that are back under their limit (keeps memory bounded).
    pub fn shrink(&self) {
        for l in [&self.answers, &self.negative, &self.errors]
            .into_iter()
            .flatten()
        {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// The secret server cookies are made with.
#[derive(Clone)]
pub struct CookieSecret([u8; 16]);

impl std::fmt::Debug for CookieSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSecret")
    }
}

/// What a query's COOKIE option says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieCheck {
    /// A client cookie and a server cookie this server made for this client, less than an
    /// hour ago: the client has proven its address.
    Valid([u8; 8]),
    /// A client cookie, without a valid server cookie (first contact, an old or a forged
    /// one): answered with a fresh server cookie, not trusted.
    Unproven([u8; 8]),
    /// A length RFC 7873 does not allow: FORMERR.
    Malformed,
}

/// How long a server cookie is accepted.
const COOKIE_LIFETIME: u32 = 3600;

impl CookieSecret {
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text.trim()).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// A random secret (cookies then last until a restart).
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The 16-byte server cookie for `client_cookie` from `client` at `now` (RFC 9018:
    /// version 1, three reserved bytes, the time, and a SipHash-2-4 of all of it with the
    /// client's address).
    pub fn server_cookie(&self, client_cookie: &[u8; 8], client: IpAddr, now: u32) -> [u8; 16] {
        use std::hash::Hasher;
        let mut head = [0u8; 8];
        head[0] = 1;
        head[4..8].copy_from_slice(&now.to_be_bytes());
        let mut h = siphasher::sip::SipHasher24::new_with_key(&self.0);
        h.write(client_cookie);
        h.write(&head);
        match crate::geo::canonical_ip(client) {
            IpAddr::V4(a) => h.write(&a.octets()),
            IpAddr::V6(a) => h.write(&a.octets()),
        }
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&head);
        out[8..].copy_from_slice(&h.finish().to_be_bytes());
        out
    }

    /// Checks a COOKIE option's data from `client` at `now`.
    pub fn check(&self, option: &[u8], client: IpAddr, now: u32) -> CookieCheck {
        let Some(client_cookie) = option.get(..8).and_then(|c| <[u8; 8]>::try_from(c).ok()) else {
            return CookieCheck::Malformed;
        };
        match option.len() {
            8 => CookieCheck::Unproven(client_cookie),
            16..=40 => {
                let server = &option[8..];
                let valid = server.len() == 16 && server[0] == 1 && {
                    let made = u32::from_be_bytes([server[4], server[5], server[6], server[7]]);
                    let fresh =
                        now.wrapping_sub(made) < COOKIE_LIFETIME || made.wrapping_sub(now) < 300;
                    fresh && {
                        let expected = self.server_cookie(&client_cookie, client, made);
                        bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], server))
                    }
                };
                if valid {
                    CookieCheck::Valid(client_cookie)
                } else {
                    CookieCheck::Unproven(client_cookie)
                }
            }
            _ => CookieCheck::Malformed,
        }
    }
}

/// DNS metrics, with every series resolved up front (the UDP path counts without lookups).
pub struct DnsMetrics {
    responses: [[IntCounter; RCODES.len()]; 2],
    rrl_slipped: IntCounter,
    rrl_dropped: IntCounter,
    malformed: IntCounter,
    capped: IntCounter,
}

/// Response codes with a series of their own; the rest count as `other`.
const RCODES: [&str; 8] = [
    "noerror", "nxdomain", "refused", "formerr", "notimp", "servfail", "badvers", "other",
];

impl DnsMetrics {
    pub fn new(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let responses = IntCounterVec::new(
            Opts::new(
                "estuary_steering_dns_responses_total",
                "DNS responses sent, by transport and response code.",
            ),
            &["transport", "rcode"],
        )?;
        let rrl = IntCounterVec::new(
            Opts::new(
                "estuary_steering_dns_rate_limited_total",
                "UDP responses over the rate limit, by what was done (slipped: sent truncated; dropped).",
            ),
            &["action"],
        )?;
        let malformed = IntCounter::new(
            "estuary_steering_dns_malformed_total",
            "Queries answered FORMERR or NOTIMP (unreadable, more than one question, not a query).",
        )?;
        registry.register(Box::new(responses.clone()))?;
        registry.register(Box::new(rrl.clone()))?;
        let capped = IntCounter::new(
            "estuary_steering_dns_amplification_capped_total",
            "UDP answers to unproven addresses that were over three times their query's size, sent empty and truncated instead.",
        )?;
        registry.register(Box::new(malformed.clone()))?;
        registry.register(Box::new(capped.clone()))?;
        let by_rcode =
            |transport: &str| RCODES.map(|code| responses.with_label_values(&[transport, code]));
        Ok(Self {
            responses: [by_rcode("udp"), by_rcode("tcp")],
            rrl_slipped: rrl.with_label_values(&["slipped"]),
            rrl_dropped: rrl.with_label_values(&["dropped"]),
            malformed,
            capped,
        })
    }

    fn count(&self, protocol: Protocol, code: ResponseCode) {
        let transport = usize::from(protocol != Protocol::Udp);
        let idx = rcode_index(code);
        self.responses[transport][idx].inc();
    }
}

/// The request handler (hickory-server's for TCP, the UDP workers' too): reads the query,
/// asks [`Zone::answer`], sends.
pub struct Handler {
    pub zone: Zone,
    pub state: Arc<StateHolder>,
    pub rrl: RateLimit,
    pub cookies: CookieSecret,
    pub metrics: DnsMetrics,
    /// The current view with its edges' addresses, worked out once per view.
    pub resolved: arc_swap::ArcSwapOption<Resolved>,
}

/// A view and the address of each of its edges (see [`edge_ip`]), worked out once per view.
pub struct Resolved {
    pub view: Arc<View>,
    pub edge_ips: Vec<Option<IpAddr>>,
}

/// The client networks a UDP worker remembers `edge.<zone>`'s addresses for.
pub const MEMO_NETWORKS: usize = 65_536;

/// One UDP worker's memory of what `edge.<zone>` answers each client network in the current
/// view: the ranking ([`Zone::edge_addresses`]: coverage-zone lookups, rendezvous scores, a
/// sort) is a pure function of the client network and the view, and resolvers ask for the
/// same networks again and again, so it is worked out once per network and view. Forgotten
/// whole when the view changes (the state's version), or when [`MEMO_NETWORKS`] networks are
/// remembered (the next queries fill it again with the networks that ask). Everything else
/// (the query's id, name and ECS option, the rate limit, the amplification cap) is per
/// query, as before. One memo serves one [`Handler`] (versions are its state's). Entries are
/// small (edge indices into the view the memo holds, not addresses) so that tens of
/// thousands of networks stay in a core's cache.
#[derive(Default)]
pub struct AnswerMemo {
    version: u64,
    resolved: Option<Arc<Resolved>>,
    answers: HashMap<(IpAddr, Option<u8>), Remembered, foldhash::fast::RandomState>,
}

/// The most edges an [`AnswerMemo`] entry holds (the geo-DNS answers two); a ranking with
/// more is not remembered.
const MEMO_ADDRS: usize = 4;

/// One client network's ranked edges (indices into the view's edges, those with an IPv4
/// address first) and the ECS scope.
struct Remembered {
    edges: [u16; MEMO_ADDRS],
    len: u8,
    v4: u8,
    scope: Option<u8>,
}

/// Addresses of one family for an answer, and the ECS scope.
type Remembered4 = ([IpAddr; MEMO_ADDRS], usize, Option<u8>);

impl AnswerMemo {
    /// The addresses of family `v4` and the scope `edge.<zone>` answers `client` (with its ECS
    /// option) in state `version` of `handler`, from memory or worked out and remembered;
    /// `None` when there is no view, or the ranking is not one to remember (more than
    /// [`MEMO_ADDRS`] edges): the caller works it out itself.
    fn answer(
        &mut self,
        handler: &Handler,
        version: u64,
        client: IpAddr,
        subnet: Option<(IpAddr, u8)>,
        v4: bool,
    ) -> Option<Remembered4> {
        if self.version != version || self.resolved.is_none() {
            // One reference per view, not per query.
            self.resolved = handler.view().as_ref().map(Arc::clone);
            self.version = version;
            self.answers.clear();
        } else if self.answers.len() >= MEMO_NETWORKS {
            self.answers.clear();
        }
        let resolved = self.resolved.as_ref()?;
        // The ranking reads the resolver's address only without an ECS source: the key is
        // the client network it does read.
        let key = match subnet {
            Some((addr, source)) if source > 0 => (
                IpNet::new(addr, source).map_or(addr, |n| n.trunc().addr()),
                Some(source),
            ),
            Some(_) => (client, Some(0)),
            None => (client, None),
        };
        let ip_of = |i: u16| resolved.edge_ips.get(usize::from(i)).copied().flatten();
        let r = match self.answers.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let ecs = subnet.map(|(addr, source)| ClientSubnet::new(addr, source, 0));
                let (edges, scope) = handler.zone.edge_ranking(
                    client,
                    ecs.as_ref(),
                    &resolved.view.topology,
                    &resolved.edge_ips,
                );
                if edges.len() > MEMO_ADDRS {
                    return None;
                }
                let mut r = Remembered {
                    edges: [0; MEMO_ADDRS],
                    len: 0,
                    v4: 0,
                    scope,
                };
                // IPv4 first, each family in its ranking's order.
                for family_v4 in [true, false] {
                    for &i in &edges {
                        let i = u16::try_from(i).ok()?;
                        if ip_of(i).is_some_and(|a| a.is_ipv4() == family_v4) {
                            r.edges[usize::from(r.len)] = i;
                            r.len += 1;
                            r.v4 += u8::from(family_v4);
                        }
                    }
                }
                e.insert(r)
            }
        };
        let held = &r.edges[..usize::from(r.len).min(MEMO_ADDRS)];
        let (four, six) = held.split_at(usize::from(r.v4).min(held.len()));
        let mut out = [IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED); MEMO_ADDRS];
        let mut n = 0;
        for ip in (if v4 { four } else { six })
            .iter()
            .filter_map(|i| ip_of(*i))
        {
            out[n] = ip;
            n += 1;
        }
        Some((out, n, r.scope))
    }
}

impl Handler {
    pub fn new(
        zone: Zone,
        state: Arc<StateHolder>,
        rrl: RateLimit,
        cookies: CookieSecret,
        metrics: DnsMetrics,
    ) -> Self {
        Self {
            zone,
            state,
            rrl,
            cookies,
            metrics,
            resolved: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// The current view and its edges' addresses, borrowed (`None` inside before the first
    /// snapshot). Guards, not reference counts: every query of every worker reads these, and
    /// a shared count written by two cores per query costs more than the answer.
    fn view(&self) -> arc_swap::Guard<Option<Arc<Resolved>>> {
        let current = self.state.view_guard();
        let Some(view) = current.as_ref() else {
            return arc_swap::Guard::from_inner(None);
        };
        let resolved = self.resolved.load();
        if resolved
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(&r.view, view))
        {
            return resolved;
        }
        drop(resolved);
        self.resolved.store(Some(Arc::new(Resolved {
            view: Arc::clone(view),
            edge_ips: view.topology.edges.iter().map(edge_ip).collect(),
        })));
        self.resolved.load()
    }
}

/// What goes back for one request: the header, the sections and the EDNS record.
pub struct Reply {
    pub metadata: Metadata,
    pub answer: Answer,
    pub edns: Option<Edns>,
    /// The client returned a valid server cookie: its address is proven.
    pub verified: bool,
}

impl Handler {
    /// The reply to a decoded request over `protocol` from `src`; `None`: send nothing (rate
    /// limited and dropped).
    pub fn reply(&self, request: &Request) -> Option<Reply> {
        let protocol = request.protocol();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let request_edns = request.edns.as_ref();
        let mut edns = request_edns.map(|e| {
            let mut out = Edns::new();
            out.set_max_payload(e.max_payload().max(512));
            out
        });
        let queries = request.queries.queries();
        let now = u32::try_from(estuary_common::unix_now() % (1 << 32)).unwrap_or(0);
        let cookie = request_edns.and_then(|e| match e.option(EdnsCode::Cookie) {
            Some(EdnsOption::Unknown(_, data)) => {
                Some(self.cookies.check(data, request.src().ip(), now))
            }
            _ => None,
        });
        let verified = matches!(cookie, Some(CookieCheck::Valid(_)));
        let answer = if request.metadata.op_code != OpCode::Query {
            self.metrics.malformed.inc();
            Answer::code(ResponseCode::NotImp)
        } else if queries.len() != 1 || cookie == Some(CookieCheck::Malformed) {
            self.metrics.malformed.inc();
            Answer::code(ResponseCode::FormErr)
        } else if request_edns.is_some_and(|e| e.version() > 0) {
            Answer::code(ResponseCode::BADVERS)
        } else {
            let q = &queries[0];
            let subnet = request_edns.and_then(|e| match e.option(EdnsCode::Subnet) {
                Some(EdnsOption::Subnet(s)) => Some(*s),
                _ => None,
            });
            let question = Question {
                name: q.name(),
                query_type: q.query_type(),
                query_class: q.query_class(),
                client: request.src().ip(),
                subnet: subnet.as_ref(),
            };
            let view = self.view();
            self.zone.answer(
                &question,
                view.as_ref()
                    .map(|v| (&v.view.topology, v.edge_ips.as_slice())),
                Limited::No,
            )?
        };
        // Rate limited per client network and budget, over UDP, unless the client proved its
        // address with a cookie.
        let limited = if protocol == Protocol::Udp && !verified {
            self.rrl.check(request.src().ip(), Budget::of(&answer))
        } else {
            Limited::No
        };
        let answer = match limited {
            Limited::No => answer,
            Limited::Slip => {
                self.metrics.rrl_slipped.inc();
                Answer {
                    truncated: true,
                    client_subnet: answer.client_subnet,
                    ..Answer::code(ResponseCode::NoError)
                }
            }
            Limited::Drop => {
                self.metrics.rrl_dropped.inc();
                return None;
            }
        };
        if let (Some(e), Some(CookieCheck::Valid(c) | CookieCheck::Unproven(c))) =
            (edns.as_mut(), cookie)
        {
            let mut data = Vec::with_capacity(24);
            data.extend_from_slice(&c);
            data.extend_from_slice(&self.cookies.server_cookie(&c, request.src().ip(), now));
            e.options_mut()
                .insert(EdnsOption::Unknown(u16::from(EdnsCode::Cookie), data));
        }
        metadata.response_code = answer.response_code;
        metadata.authoritative = answer.authoritative;
        metadata.truncation = answer.truncated;
        if let (Some(e), Some(s)) = (edns.as_mut(), answer.client_subnet) {
            e.options_mut().insert(EdnsOption::Subnet(s));
        }
        self.metrics.count(protocol, answer.response_code);
        Some(Reply {
            metadata,
            answer,
            edns,
            verified,
        })
    }

    /// Answers one UDP datagram into `out` (cleared first); whether there is anything to send.
    /// Short or garbled packets get FORMERR when their header can be read, nothing otherwise;
    /// responses are never answered.
    pub fn answer_datagram(
        &self,
        packet: &[u8],
        src: SocketAddr,
        out: &mut Vec<u8>,
        memo: &mut AnswerMemo,
    ) -> bool {
        if let Some(query) = crate::dns_wire::parse_query(packet)
            && let Some(sent) = self.answer_fast(&query, packet.len(), src.ip(), out, memo)
        {
            return sent;
        }
        self.answer_general(packet, src, out)
    }

    /// [`Handler::answer_datagram`] through hickory-proto's message types: every query.
    pub fn answer_general(&self, packet: &[u8], src: SocketAddr, out: &mut Vec<u8>) -> bool {
        out.clear();
        let mut decoder = BinDecoder::new(packet);
        let Ok(header) = hickory_proto::op::Header::read(&mut decoder) else {
            return false;
        };
        if header.metadata.message_type == MessageType::Response {
            return false;
        }
        let request = match Request::from_bytes(packet.to_vec(), src, Protocol::Udp) {
            Ok(r) => r,
            Err(_) => {
                self.metrics.malformed.inc();
                self.metrics.count(Protocol::Udp, ResponseCode::FormErr);
                let mut metadata = Metadata::response_from_request(&header.metadata);
                metadata.response_code = ResponseCode::FormErr;
                let header = hickory_proto::op::Header {
                    metadata,
                    counts: Default::default(),
                };
                let mut encoder = BinEncoder::new(out);
                return header.emit(&mut encoder).is_ok();
            }
        };
        let Some(reply) = self.reply(&request) else {
            return false;
        };
        let max = reply
            .edns
            .as_ref()
            .map_or(512, |e| e.max_payload().max(512));
        let response = MessageResponseBuilder::new(&request.queries, reply.edns.as_ref()).build(
            reply.metadata,
            reply.answer.answers.iter(),
            reply.answer.authorities.iter(),
            std::iter::empty(),
            reply.answer.additionals.iter(),
        );
        let mut encoder = BinEncoder::new(out);
        encoder.set_max_size(max);
        if response.destructive_emit(&mut encoder).is_err() {
            return false;
        }
        // Amplification cap: an unproven address gets at most three times its query's size;
        // above it, an empty truncated answer (with the cookie, so the retry can be proven).
        if !reply.verified && out.len() > 3 * packet.len() {
            self.metrics.capped.inc();
            let mut metadata = reply.metadata;
            metadata.truncation = true;
            let response = MessageResponseBuilder::new(&request.queries, reply.edns.as_ref())
                .build(
                    metadata,
                    std::iter::empty(),
                    std::iter::empty(),
                    std::iter::empty(),
                    std::iter::empty(),
                );
            out.clear();
            let mut encoder = BinEncoder::new(out);
            encoder.set_max_size(max);
            return response.destructive_emit(&mut encoder).is_ok();
        }
        true
    }
}

impl Handler {
    /// The fast path of [`Handler::answer_datagram`]: `edge.<zone>` A or AAAA with records to
    /// answer, written without message objects; `None` (nothing spent, nothing counted) for
    /// every other case, which the general path answers.
    fn answer_fast(
        &self,
        query: &crate::dns_wire::Query<'_>,
        query_len: usize,
        client: IpAddr,
        out: &mut Vec<u8>,
        memo: &mut AnswerMemo,
    ) -> Option<bool> {
        use crate::dns_wire::{Response, response_len, write_response};
        if self.zone.edge_wire.as_deref() != Some(query.name) {
            return None;
        }
        // The view is read only for a network the memo does not hold (a hit reads the state's
        // version alone). The version is read first: a view installed meanwhile is newer
        // than it, and the memo is forgotten at the next query.
        let version = self.state.version();
        if version == 0 {
            // No snapshot yet: the general path answers.
            return None;
        }
        let v4 = query.qtype == 1;
        let mut worked_out = Vec::new();
        let (held, n, scope) = match memo.answer(self, version, client, query.subnet, v4) {
            Some(found) => found,
            None => {
                let view = self.view();
                let view = view.as_ref()?;
                let subnet = query
                    .subnet
                    .map(|(addr, source)| ClientSubnet::new(addr, source, 0));
                let (addrs, scope) = self.zone.edge_addresses(
                    client,
                    subnet.as_ref(),
                    &view.view.topology,
                    &view.edge_ips,
                );
                worked_out = addrs;
                worked_out.retain(|a| a.is_ipv4() == v4);
                (
                    [IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED); MEMO_ADDRS],
                    0,
                    scope,
                )
            }
        };
        let addrs: &[IpAddr] = if n > 0 { &held[..n] } else { &worked_out };
        if addrs.is_empty() {
            // NODATA carries the SOA: the general path.
            return None;
        }
        let echo = query
            .subnet
            .map(|(addr, source)| (addr, source, scope.unwrap_or(0)));
        let response = Response {
            authoritative: true,
            truncated: false,
            addresses: addrs,
            ttl: self.zone.ttl,
            subnet: echo,
        };
        let len = response_len(query, &response);
        let max = query.edns_payload.map_or(512, |p| usize::from(p.max(512)));
        if len > max || len > 3 * query_len {
            // Truncation and the amplification cap: the general path.
            return None;
        }
        match self.rrl.check(client, Budget::Answers) {
            Limited::No => write_response(query, &response, out),
            Limited::Slip => {
                self.metrics.rrl_slipped.inc();
                let slip = Response {
                    authoritative: false,
                    truncated: true,
                    addresses: &[],
                    ..response
                };
                write_response(query, &slip, out);
            }
            Limited::Drop => {
                self.metrics.rrl_dropped.inc();
                return Some(false);
            }
        }
        self.metrics.count(Protocol::Udp, ResponseCode::NoError);
        Some(true)
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let Some(reply) = self.reply(request) else {
            return ResponseInfo::from(hickory_proto::op::Header {
                metadata: Metadata::response_from_request(&request.metadata),
                counts: Default::default(),
            });
        };
        let metadata = reply.metadata;
        let response = MessageResponseBuilder::new(&request.queries, reply.edns.as_ref()).build(
            metadata,
            reply.answer.answers.iter(),
            reply.answer.authorities.iter(),
            std::iter::empty(),
            reply.answer.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "A DNS response could not be sent.");
                ResponseInfo::from(hickory_proto::op::Header {
                    metadata,
                    counts: Default::default(),
                })
            }
        }
    }
}

/// The series of a response code in [`RCODES`] (the last one, `other`, for the rest).
fn rcode_index(code: ResponseCode) -> usize {
    match code {
        ResponseCode::NoError => 0,
        ResponseCode::NXDomain => 1,
        ResponseCode::Refused => 2,
        ResponseCode::FormErr => 3,
        ResponseCode::NotImp => 4,
        ResponseCode::ServFail => 5,
        ResponseCode::BADVERS => 6,
        _ => RCODES.len() - 1,
    }
}

/// The DNS sockets, bound.
pub struct Sockets {
    /// One per UDP worker, all on the same address (SO_REUSEPORT: the kernel spreads
    /// datagrams over them).
    udp: Vec<std::net::UdpSocket>,
    tcp: tokio::net::TcpListener,
    addr: SocketAddr,
}

/// Binds `workers` UDP sockets and a TCP listener on `addr` (before anything is spawned, so a
/// taken port stops the start).
pub async fn bind(addr: SocketAddr, workers: usize) -> anyhow::Result<Sockets> {
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("listen.dns {addr} (TCP): {e}"))?;
    let udp = (0..workers.max(1))
        .map(|_| udp_socket(addr).map_err(|e| anyhow::anyhow!("listen.dns {addr} (UDP): {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Sockets { udp, tcp, addr })
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM,
        Some(SockProtocol::UDP),
    )?;
    socket.set_reuse_port(true)?;
    // Room for bursts while a worker is busy.
    let _ = socket.set_recv_buffer_size(4 * 1024 * 1024);
    socket.bind(&addr.into())?;
    let socket: std::net::UdpSocket = socket.into();
    // A worker wakes this often to see whether it should stop.
    socket.set_read_timeout(Some(std::time::Duration::from_millis(250)))?;
    Ok(socket)
}

/// Datagrams taken and answered per system call (recvmmsg, sendmmsg).
const UDP_BATCH: usize = 32;

/// The largest query read over UDP (EDNS queries are far smaller; longer ones are cut and
/// answered FORMERR).
const UDP_QUERY_MAX: usize = 4096;

/// One UDP worker: a plain thread answering datagrams until `stop`, a batch at a time (one
/// recvmmsg takes what is waiting, one sendmmsg sends the answers): no per-query task,
/// channel or system call of its own.
fn udp_worker(
    socket: std::net::UdpSocket,
    handler: Arc<Handler>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;

    let fd = socket.as_raw_fd();
    let mut packets: Vec<Vec<u8>> = (0..UDP_BATCH).map(|_| vec![0u8; UDP_QUERY_MAX]).collect();
    let mut answers: Vec<Vec<u8>> = (0..UDP_BATCH).map(|_| Vec::with_capacity(1232)).collect();
    let mut receive = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut send = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut got: Vec<(usize, Option<SocketAddr>)> = Vec::with_capacity(UDP_BATCH);
    let mut dests: Vec<Option<SockaddrStorage>> = Vec::with_capacity(UDP_BATCH);
    let mut memo = AnswerMemo::default();
    while !stop.load(Ordering::Relaxed) {
        got.clear();
        {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = packets
                .iter_mut()
                .map(|p| [IoSliceMut::new(p.as_mut_slice())])
                .collect();
            // Blocks for the first datagram (up to the socket's read timeout), then takes
            // whatever else is already waiting.
            match recvmmsg(
                fd,
                &mut receive,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(msgs) => got.extend(msgs.map(|m| (m.bytes, m.address.and_then(std_addr)))),
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; they are not fatal.
                    tracing::debug!(error = %e, "DNS datagrams could not be received.");
                    continue;
                }
            }
        }
        dests.clear();
        let mut n = 0;
        for (i, (len, src)) in got.iter().enumerate() {
            let Some(src) = *src else { continue };
            if crate::geo::canonical_ip(src.ip()).is_unspecified() || src.port() == 0 {
                continue;
            }
            let len = (*len).min(UDP_QUERY_MAX);
            if handler.answer_datagram(&packets[i][..len], src, &mut answers[n], &mut memo) {
                dests.push(Some(SockaddrStorage::from(src)));
                n += 1;
            }
        }
        let mut sent = 0;
        while sent < n {
            let slices: Vec<[IoSlice<'_>; 1]> =
                answers[sent..n].iter().map(|a| [IoSlice::new(a)]).collect();
            match sendmmsg(
                fd,
                &mut send,
                slices.iter(),
                &dests[sent..n],
                [],
                MsgFlags::empty(),
            ) {
                Ok(results) => {
                    let count = results.count();
                    if count == 0 {
                        break;
                    }
                    sent += count;
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "DNS responses could not be sent.");
                    // Skip the datagram that failed (a bad destination) and go on.
                    sent += 1;
                }
            }
        }
    }
}

/// A socket address from the kernel's form.
fn std_addr(a: nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(std::net::SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(std::net::SocketAddrV6::from(*v6)))
}

/// Serves the zone on the bound sockets until `stop` turns true: UDP on worker threads, TCP
/// through hickory-server.
pub async fn serve(
    sockets: Sockets,
    handler: Handler,
    tcp_timeout: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Sockets { udp, tcp, addr } = sockets;
    let handler = Arc::new(handler);
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<std::thread::JoinHandle<()>> = udp
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let handler = Arc::clone(&handler);
            let stopping = Arc::clone(&stopping);
            std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || udp_worker(socket, handler, stopping))
        })
        .collect::<std::io::Result<_>>()
        .map_err(|e| anyhow::anyhow!("dns workers: {e}"))?;
    let shrinker = {
        let handler = Arc::clone(&handler);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => handler.rrl.shrink(),
                    _ = stop.changed() => return,
                }
            }
        })
    };
    let mut server = hickory_server::Server::new(SharedHandler(Arc::clone(&handler)));
    server.register_listener(tcp, tcp_timeout, 64 * 1024);
    tracing::info!(dns = %addr, udp_workers = workers.len(), "The geo-DNS is answering (UDP and TCP).");
    let _ = stop.wait_for(|s| *s).await;
    stopping.store(true, Ordering::Relaxed);
    if let Err(e) = server.shutdown_gracefully().await {
        tracing::warn!(error = %e, "The DNS server did not stop cleanly.");
    }
    let _ = shrinker.await;
    let _ = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    })
    .await;
    Ok(())
}

/// The handler behind an `Arc`, shared with the rate limiter's housekeeping.
struct SharedHandler(Arc<Handler>);

#[async_trait::async_trait]
impl RequestHandler for SharedHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use estuary_common::cp::{Addresses, NodeState, Role, Site, StateSnapshot};
    use proptest::prelude::*;
    use std::time::Duration;

    fn topology() -> Topology {
        Topology::from_snapshot(&snapshot(), true, &Default::default())
    }

    fn snapshot() -> StateSnapshot {
        let edge = |id: &str, site: &str, host: &str, up: bool| NodeState {
            id: id.into(),
            site: site.into(),
            role: Role::Edge,
            addresses: Addresses {
                https: Some(format!("https://{host}:8443")),
                ..Default::default()
            },
            capacity: Default::default(),
            up,
            down_reason: None,
            held_up: None,
            last_heartbeat: 0,
            load: Default::default(),
            polled_load: None,
            usage: Default::default(),
            version: String::new(),
            assets: vec![],
        };
        let mut snap = StateSnapshot::default();
        for (name, net) in [("lab", "10.1.0.0/16"), ("far", "10.2.0.0/16")] {
            snap.sites.insert(
                name.into(),
                Site {
                    name: name.into(),
                    location: None,
                    coverage: vec![net.into()],
                },
            );
        }
        for n in [
            edge("l1", "lab", "192.0.2.1", true),
            edge("l2", "lab", "192.0.2.2", false),
            edge("f1", "far", "192.0.2.3", true),
            edge("f2", "far", "edge.example.net", true),
        ] {
            snap.nodes.insert(n.id.clone(), n);
        }
        snap
    }

    /// [`snapshot`] changed: l2 up, and an IPv6 edge in lab.
    fn other_snapshot() -> StateSnapshot {
        let mut snap = snapshot();
        if let Some(l2) = snap.nodes.get_mut("l2") {
            l2.up = true;
        }
        let mut l3 = snap.nodes["l1"].clone();
        l3.id = "l3".into();
        l3.addresses.https = Some("https://[2001:db8::3]:8443".into());
        snap.nodes.insert(l3.id.clone(), l3);
        snap
    }

    fn handler() -> Handler {
        let holder = Arc::new(StateHolder::new(Default::default(), true));
        holder.install(snapshot());
        let registry = prometheus::Registry::new();
        Handler::new(
            zone(),
            holder,
            RateLimit::new(0, 2),
            CookieSecret::random(),
            DnsMetrics::new(&registry).expect("metrics"),
        )
    }

    /// An OPT record: its payload size and an optional ECS network (address, source).
    type Opt = Option<(u16, Option<([u8; 4], u8)>)>;

    /// A query for `edge.cdn.example.` as resolvers send it.
    fn edge_query(id: u16, flags: u16, qtype: u16, opt: Opt) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&flags.to_be_bytes());
        p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
        for l in ["edge", "cdn", "example"] {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        if let Some((payload, ecs)) = opt {
            p.extend_from_slice(&[0, 0, 41]);
            p.extend_from_slice(&payload.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0]);
            let mut rdata = Vec::new();
            if let Some((addr, source)) = ecs {
                let n = usize::from(source).div_ceil(8);
                let mut bytes = addr[..n].to_vec();
                if source % 8 != 0
                    && let Some(last) = bytes.last_mut()
                {
                    *last &= 0xffu8 << (8 - source % 8);
                }
                rdata.extend_from_slice(&8u16.to_be_bytes());
                rdata.extend_from_slice(&((4 + n) as u16).to_be_bytes());
                rdata.extend_from_slice(&[0, 1, source, 0]);
                rdata.extend_from_slice(&bytes);
            }
            p.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            p.extend_from_slice(&rdata);
        }
        p
    }

    #[test]
    fn the_fast_path_answers_resolver_queries_as_the_general_path_does() {
        let h = handler();
        let src = SocketAddr::from(([10, 1, 2, 3], 5353));
        let p = edge_query(7, 0x0100, 1, Some((1232, Some(([10, 1, 2, 0], 24)))));
        let q = crate::dns_wire::parse_query(&p).expect("fast shape");
        let (mut fast, mut general) = (Vec::new(), Vec::new());
        assert_eq!(
            h.answer_fast(&q, p.len(), src.ip(), &mut fast, &mut AnswerMemo::default()),
            Some(true)
        );
        assert!(h.answer_general(&p, src, &mut general));
        same_message(&fast, &general);
    }

    /// Both encodings decode to the same message (the fast path compresses the answers' owner
    /// name, hickory-proto does not, so the bytes differ by that).
    fn same_message(fast: &[u8], general: &[u8]) {
        let decode = |b: &[u8]| hickory_proto::op::Message::from_vec(b).expect("decodes");
        assert_eq!(decode(fast), decode(general));
        assert!(fast.len() <= general.len());
    }

    fn zone() -> Zone {
        zone_with(crate::config::EcsScope::Client)
    }

    fn zone_with(ecs_scope: crate::config::EcsScope) -> Zone {
        let config = DnsConfig {
            zone: "cdn.example.".into(),
            ttl: Duration::from_secs(30),
            answers: 2,
            ecs_scope,
            nameservers: vec![],
            ns_addresses: vec!["192.0.2.53".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))],
            contact: None,
            rrl_responses_per_second: 0,
            rrl_nxdomains_per_second: None,
            rrl_errors_per_second: None,
            cookie_secret: None,
            rrl_slip: 2,
            tcp_timeout: Duration::from_secs(10),
            workers: None,
        };
        let policy = Policy {
            load_threshold: 0.9,
            max_results: 3,
            hash_seed: 0,
        };
        match Zone::new(&config, policy, 1) {
            Ok(z) => z,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Zone::answer`] with the topology's edge addresses worked out here.
    fn answer(z: &Zone, q: &Question<'_>, t: Option<&Topology>, l: Limited) -> Option<Answer> {
        let ips: Vec<Option<IpAddr>> = t
            .map(|t| t.edges.iter().map(edge_ip).collect())
            .unwrap_or_default();
        z.answer(q, t.map(|t| (t, ips.as_slice())), l)
    }

    fn lower(s: &str) -> LowerName {
        LowerName::from(Name::from_ascii(s).unwrap_or_else(|_| Name::root()))
    }

    fn ask(z: &Zone, t: &Topology, name: &str, rtype: RecordType, subnet: &str) -> Answer {
        let subnet: Option<ClientSubnet> = subnet.parse().ok();
        let name = lower(name);
        let q = Question {
            name: &name,
            query_type: rtype,
            query_class: DNSClass::IN,
            client: IpAddr::from([203, 0, 113, 9]),
            subnet: subnet.as_ref(),
        };
        answer(z, &q, Some(t), Limited::No)
            .unwrap_or_else(|| Answer::code(ResponseCode::Unknown(99)))
    }

    fn ips(a: &Answer) -> Vec<String> {
        a.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn edges_by_subnet_with_scope_and_only_those_up_with_an_address() {
        let (z, t) = (zone(), topology());
        let a = ask(&z, &t, "edge.cdn.example.", RecordType::A, "10.1.7.0/24");
        assert_eq!(ips(&a), ["192.0.2.1"]);
        assert!(a.authoritative);
        assert_eq!(a.client_subnet.map(|s| s.scope_prefix()), Some(24));
        let a = ask(&z, &t, "edge.cdn.example.", RecordType::A, "10.2.0.0/12");
        // The source /12 covers more than far's /16, yet only far's /16 matched: scope 16.
        assert_eq!(a.client_subnet.map(|s| s.scope_prefix()), Some(16));
        // An edge known by a host name cannot be an A record; the other one is answered.
        let a = ask(&z, &t, "edge.cdn.example.", RecordType::A, "10.2.1.0/24");
        assert_eq!(ips(&a), ["192.0.2.3"]);
        let a = ask(&z, &t, "lab.cdn.example.", RecordType::A, "");
        assert_eq!(ips(&a), ["192.0.2.1"], "a down edge was listed");
    }

    #[test]
    fn negative_answers_carry_the_soa_and_outside_names_are_refused() {
        let (z, t) = (zone(), topology());
        let a = ask(&z, &t, "missing.cdn.example.", RecordType::A, "");
        assert_eq!(a.response_code, ResponseCode::NXDomain);
        assert_eq!(a.authorities.len(), 1);
        let a = ask(&z, &t, "edge.cdn.example.", RecordType::MX, "");
        assert_eq!(a.response_code, ResponseCode::NoError);
        assert!(a.answers.is_empty() && a.authorities.len() == 1);
        let a = ask(&z, &t, "example.org.", RecordType::A, "");
        assert_eq!(a.response_code, ResponseCode::Refused);
        assert!(!a.authoritative);
        let a = ask(&z, &t, "cdn.example.", RecordType::NS, "");
        assert_eq!(ips(&a), ["ns1.cdn.example."]);
        assert_eq!(a.additionals.len(), 1);
        // No snapshot yet: SERVFAIL rather than a wrong answer.
        let name = lower("edge.cdn.example.");
        let question = Question {
            name: &name,
            query_type: RecordType::A,
            query_class: DNSClass::IN,
            client: IpAddr::from([127, 0, 0, 1]),
            subnet: None,
        };
        let a = answer(&z, &question, None, Limited::No);
        assert_eq!(a.map(|a| a.response_code), Some(ResponseCode::ServFail));
        // Rate limited: dropped, or empty and truncated.
        let q = |l| answer(&z, &question, Some(&t), l);
        assert!(q(Limited::Drop).is_none());
        assert!(q(Limited::Slip).is_some_and(|a| a.truncated && a.answers.is_empty()));
    }

    #[test]
    fn the_rate_limit_slips_every_second_response_over_it_per_network_and_budget() {
        let rrl = RateLimit::with_budgets(3, 2, 1, 2);
        let client = IpAddr::from([198, 51, 100, 7]);
        let verdicts: Vec<Limited> = (0..9).map(|_| rrl.check(client, Budget::Answers)).collect();
        assert_eq!(verdicts[..3], [Limited::No; 3]);
        assert!(verdicts[3..].contains(&Limited::Slip) && verdicts[3..].contains(&Limited::Drop));
        // The same /24 is the same budget whatever it asks; another network has its own.
        assert_ne!(
            rrl.check(IpAddr::from([198, 51, 100, 200]), Budget::Answers),
            Limited::No
        );
        assert_eq!(
            rrl.check(IpAddr::from([198, 51, 101, 7]), Budget::Answers),
            Limited::No
        );
        // Negative answers and errors spend budgets of their own.
        assert_eq!(rrl.check(client, Budget::Negative), Limited::No);
        assert_eq!(rrl.check(client, Budget::Negative), Limited::No);
        assert_ne!(rrl.check(client, Budget::Negative), Limited::No);
        assert_eq!(rrl.check(client, Budget::Errors), Limited::No);
        assert_ne!(rrl.check(client, Budget::Errors), Limited::No);
        assert_eq!(
            RateLimit::new(0, 2).check(client, Budget::Answers),
            Limited::No
        );
    }

    #[test]
    fn network_scope_answers_for_the_widest_network_one_answer_fits() {
        // lab covers 10.1.0.0/16, and a narrower 10.1.128.0/20 inside it belongs to "near".
        let mut snap = snapshot();
        snap.sites.insert(
            "near".into(),
            Site {
                name: "near".into(),
                location: None,
                coverage: vec!["10.1.128.0/20".into()],
            },
        );
        let t = Topology::from_snapshot(&snap, true, &Default::default());
        let scope = |z: &Zone, subnet: &str| {
            let a = ask(z, &t, "edge.cdn.example.", RecordType::A, subnet);
            (a.client_subnet.map(|s| s.scope_prefix()), ips(&a))
        };
        let network = zone_with(crate::config::EcsScope::Network);
        let client = zone();
        // 10.1.2.0/24: the /16 holds the /20, but 10.1.0.0/17 holds nothing narrower.
        let (s, first) = scope(&network, "10.1.2.0/24");
        assert_eq!(s, Some(17));
        // Every client of that /17 gets the same answer, which is what the scope promises.
        for other in ["10.1.99.0/24", "10.1.127.0/24", "10.1.0.0/24"] {
            assert_eq!(scope(&network, other), (Some(17), first.clone()), "{other}");
        }
        // Inside the narrower network: its own scope.
        assert_eq!(scope(&network, "10.1.130.0/24").0, Some(20));
        // far's /16 holds nothing narrower: the /16.
        assert_eq!(scope(&network, "10.2.7.0/24").0, Some(16));
        // Outside every coverage network, and in the default mode: the client's /24.
        assert_eq!(scope(&network, "198.51.100.0/24").0, Some(24));
        assert_eq!(scope(&client, "10.2.7.0/24").0, Some(24));
    }

    #[test]
    fn one_network_one_rendezvous_key() {
        let key = |ip: [u8; 4], source| {
            NetworkKey::new(IpAddr::from(ip), source)
                .as_str()
                .to_owned()
        };
        assert_eq!(key([10, 1, 2, 3], None), key([10, 1, 2, 200], None));
        assert_ne!(key([10, 1, 2, 3], None), key([10, 1, 3, 3], None));
        assert_eq!(key([10, 1, 2, 3], Some(16)), key([10, 1, 99, 3], Some(16)));
        assert_eq!(key([10, 1, 2, 3], Some(32)), key([10, 1, 2, 9], Some(24)));
        assert_eq!(key([10, 1, 2, 3], None), "0a01020018");
        let v6 = |s: &str| {
            NetworkKey::new(s.parse().expect("ip"), None)
                .as_str()
                .to_owned()
        };
        assert_eq!(v6("2001:db8:aa:bb01::1"), v6("2001:db8:aa:bbff::2"));
        assert_ne!(v6("2001:db8:aa:bb01::1"), v6("2001:db8:aa:cc01::1"));
    }

    #[test]
    fn server_cookies_prove_the_address_for_an_hour_only() {
        let secret = CookieSecret::from_hex("000102030405060708090a0b0c0d0e0f").expect("secret");
        let client = IpAddr::from([192, 0, 2, 7]);
        let cc = [7u8; 8];
        assert_eq!(secret.check(&cc, client, 1000), CookieCheck::Unproven(cc));
        let server = secret.server_cookie(&cc, client, 1000);
        let mut option = cc.to_vec();
        option.extend_from_slice(&server);
        assert_eq!(secret.check(&option, client, 1500), CookieCheck::Valid(cc));
        // From another address, too late, with a flipped bit, or from another secret: not proven.
        assert_eq!(
            secret.check(&option, IpAddr::from([192, 0, 2, 8]), 1500),
            CookieCheck::Unproven(cc)
        );
        assert_eq!(
            secret.check(&option, client, 1000 + 3600),
            CookieCheck::Unproven(cc)
        );
        let mut flipped = option.clone();
        flipped[20] ^= 1;
        assert_eq!(
            secret.check(&flipped, client, 1500),
            CookieCheck::Unproven(cc)
        );
        let other = CookieSecret::from_hex("ff0102030405060708090a0b0c0d0e0f").expect("secret");
        assert_eq!(
            other.check(&option, client, 1500),
            CookieCheck::Unproven(cc)
        );
        // Lengths RFC 7873 forbids.
        for len in [0, 7, 9, 15, 41] {
            assert_eq!(
                secret.check(&vec![1u8; len], client, 1500),
                CookieCheck::Malformed,
                "{len}"
            );
        }
        assert!(CookieSecret::from_hex("abcd").is_none());
    }

    /// A client varying its ECS network (to grow the worker's memory, as an attacker would)
    /// finds it bounded: never more than MEMO_NETWORKS networks, and answers after it was
    /// forgotten are those worked out afresh.
    #[test]
    fn the_memo_stays_bounded_whatever_networks_are_asked() {
        let h = handler();
        let mut memo = AnswerMemo::default();
        let src = SocketAddr::from(([192, 168, 1, 1], 5353));
        for i in 0..(MEMO_NETWORKS as u32 + 5_000) {
            let [_, a, b, c] = (0x0a00_0000u32 | (i << 8)).to_be_bytes();
            let p = edge_query(1, 0x0100, 1, Some((1232, Some(([10, a, b, c], 24)))));
            let q = crate::dns_wire::parse_query(&p).expect("fast shape");
            let mut out = Vec::new();
            h.answer_fast(&q, p.len(), src.ip(), &mut out, &mut memo);
            assert!(
                memo.answers.len() <= MEMO_NETWORKS,
                "{}",
                memo.answers.len()
            );
            if i % 10_007 == 0 || i > MEMO_NETWORKS as u32 {
                let mut fresh = Vec::new();
                h.answer_fast(
                    &q,
                    p.len(),
                    src.ip(),
                    &mut fresh,
                    &mut AnswerMemo::default(),
                );
                assert_eq!(out, fresh, "network {i}");
            }
        }
        assert!(
            memo.answers.len() < MEMO_NETWORKS,
            "it was forgotten once full"
        );
    }

    proptest! {
        /// Whatever the resolver asks in the fast shape, the fast path writes the bytes the
        /// general path writes, or leaves the query to it.
        #[test]
        fn the_fast_path_and_the_general_path_write_the_same_bytes(
            id in any::<u16>(),
            rd in any::<bool>(),
            cd in any::<bool>(),
            aaaa in any::<bool>(),
            opt in proptest::option::of((any::<u16>(), proptest::option::of((any::<[u8; 4]>(), 0u8..=32)))),
            client in any::<[u8; 4]>(),
        ) {
            let h = handler();
            let flags = if rd { 0x0100 } else { 0 } | if cd { 0x0010 } else { 0 };
            let p = edge_query(id, flags, if aaaa { 28 } else { 1 }, opt);
            let src = SocketAddr::from((client, 5353));
            let q = crate::dns_wire::parse_query(&p);
            prop_assert!(q.is_some(), "not read as the fast shape");
            let (mut fast, mut general) = (Vec::new(), Vec::new());
            if let Some(q) = q
                && h.answer_fast(&q, p.len(), src.ip(), &mut fast, &mut AnswerMemo::default()) == Some(true)
            {
                prop_assert!(h.answer_general(&p, src, &mut general));
                same_message(&fast, &general);
            }
        }

        /// One worker's memo answers as working the answer out again would: over queries
        /// from a few resolvers and client networks (so networks repeat, with and without
        /// ECS, IPv4 and IPv6 answers), across a change of view, the fast path with the memo
        /// writes what it writes without one, and the general path's message.
        #[test]
        fn the_memo_answers_as_the_ranking_would(
            steps in proptest::collection::vec((0usize..4, 0usize..6, any::<bool>(), any::<u16>()), 1..60),
            change_at in 0usize..60,
        ) {
            let h = handler();
            let mut memo = AnswerMemo::default();
            let resolvers = [[10, 1, 2, 3], [10, 2, 9, 9], [192, 168, 1, 1], [10, 1, 200, 7]];
            let subnets: [Option<([u8; 4], u8)>; 6] = [
                None,
                Some(([10, 1, 2, 0], 24)),
                Some(([10, 1, 2, 77], 24)),
                Some(([10, 2, 0, 0], 16)),
                Some(([10, 9, 9, 0], 24)),
                Some(([0, 0, 0, 0], 0)),
            ];
            for (i, (r, n, aaaa, id)) in steps.into_iter().enumerate() {
                if i == change_at {
                    h.state.install(other_snapshot());
                }
                let p = edge_query(id, 0x0100, if aaaa { 28 } else { 1 }, Some((1232, subnets[n])));
                let src = SocketAddr::from((resolvers[r], 5353));
                let Some(q) = crate::dns_wire::parse_query(&p) else {
                    return Err(TestCaseError::fail("not read as the fast shape"));
                };
                let (mut remembered, mut fresh) = (Vec::new(), Vec::new());
                let a = h.answer_fast(&q, p.len(), src.ip(), &mut remembered, &mut memo);
                let b = h.answer_fast(&q, p.len(), src.ip(), &mut fresh, &mut AnswerMemo::default());
                prop_assert_eq!(a, b);
                prop_assert_eq!(&remembered, &fresh);
                if a == Some(true) {
                    let mut general = Vec::new();
                    prop_assert!(h.answer_general(&p, src, &mut general));
                    same_message(&remembered, &general);
                }
            }
        }

        /// Whatever the name, type and subnet, an answer is in-zone or refused, and a
        /// negative answer carries the SOA.
        #[test]
        fn answers_stay_in_the_zone(
            labels in proptest::collection::vec("[a-z0-9-]{1,12}", 0..4),
            rtype in 0u16..300,
            a in any::<[u8; 4]>(),
            prefix in 0u8..=32,
        ) {
            let (z, t) = (zone(), topology());
            let mut name = labels.join(".");
            if !name.is_empty() { name.push('.'); }
            name.push_str("cdn.example.");
            let subnet = ClientSubnet::new(IpAddr::from(a), prefix, 0);
            let name = lower(&name);
            let question = Question {
                name: &name,
                query_type: RecordType::from(rtype),
                query_class: DNSClass::IN,
                client: IpAddr::from([127, 0, 0, 1]),
                subnet: Some(&subnet),
            };
            let answer = answer(&z, &question, Some(&t), Limited::No);
            let Some(answer) = answer else { return Err(TestCaseError::fail("no answer")); };
            for r in &answer.answers {
                prop_assert!(z.origin.zone_of(&LowerName::from(r.name.clone())));
            }
            if answer.answers.is_empty() && answer.response_code != ResponseCode::Refused {
                prop_assert_eq!(answer.authorities.len(), 1);
            }
            if let Some(s) = answer.client_subnet {
                prop_assert!(s.scope_prefix() == 0 || s.scope_prefix() >= prefix);
            }
        }
    }
}
