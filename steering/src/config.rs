//! The steering service's configuration file (TOML). Unknown keys are errors; `validate`
//! runs before anything starts. Relative paths are resolved against the config file's folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

pub use estuary_common::config::ConfigError;

/// The whole steering configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteeringConfig {
    /// `[node]`: who this steering node is; with `[control_plane] url` it registers with the
    /// control plane (role `steering`) and sends heartbeats.
    #[serde(default)]
    pub node: Option<NodeConfig>,
    pub listen: ListenConfig,
    pub control_plane: StateSource,
    /// `[geo]`: how a client address becomes a site (its presence marks a steering config).
    pub geo: GeoConfig,
    pub tokens: TokensConfig,
    #[serde(default)]
    pub steering: SteeringPolicy,
    /// `[dns]`: the geo-DNS zone, answered on `listen.dns` (both are needed together).
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    /// `[shutdown]`: the drain after SIGTERM or SIGINT (the table every service shares).
    #[serde(default)]
    pub shutdown: estuary_common::service::ShutdownConfig,
    /// `[limits]`: how long a client may take and how many connections it may hold, on every
    /// listener (see `estuary_common::listener`).
    #[serde(default)]
    pub limits: estuary_common::listener::ListenerLimits,
}

/// `[node]`: `id` and `site`, as in every node's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (1-64 of A-Z a-z 0-9 - _ .).
    pub id: String,
    /// Its site (the site's node token is `[control_plane] token`).
    pub site: String,
    /// Deprecated: `[control_plane] advertise.admin`, as in every node's config (accepted,
    /// with a warning at start; not together with it).
    #[serde(default)]
    pub admin_url: Option<String>,
    /// Deprecated: `[control_plane] interval`, as in every node's config (accepted, with a
    /// warning at start; not together with it).
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// The HTTP API (`/v1/playback/`, `/v1/steering/`) and `/metrics`, `/healthz`, `/readyz`.
    pub http: SocketAddr,
    /// UDP and TCP address for the authoritative geo-DNS of `[dns] zone`.
    #[serde(default)]
    pub dns: Option<SocketAddr>,
}

impl StateSource {
    /// The replicas' base URLs (`url` or `urls`); empty with a state file.
    pub fn replica_urls(&self) -> Vec<String> {
        match &self.url {
            Some(u) => vec![u.clone()],
            None => self.urls.clone(),
        }
    }
}

/// `[control_plane]`: where the sites, edges and their health come from. Exactly one of `url`
/// (the live state feed) and `state_file` (a static snapshot, for labs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSource {
    /// The control plane's base URL; `GET /v1/state` is long-polled from it.
    #[serde(default)]
    pub url: Option<String>,
    /// Instead of `url`: every control-plane replica's base URL; the feed (and heartbeats)
    /// move to the next when one fails.
    #[serde(default)]
    pub urls: Vec<String>,
    /// A PEM bundle of CA certificates trusted besides the system's, for `https://`
    /// control-plane URLs and edges (the fleet's private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A bearer token the control plane accepts on `/v1/state` (a site's node token or an
    /// operator token). Required with `url`.
    #[serde(default)]
    pub token: Option<String>,
    /// How long one long-poll of the state feed may wait for a change (`?wait=`).
    #[serde(default = "default_poll_wait", with = "humantime_serde")]
    pub poll_wait: Duration,
    /// The control plane moves the state version for changes of health and membership, not
    /// for load figures alone; this often the whole snapshot is read again anyway, so the
    /// load threshold works on fresh figures.
    #[serde(default = "default_load_refresh", with = "humantime_serde")]
    pub load_refresh: Duration,
    /// A JSON file shaped like the state feed's snapshot (sites, nodes with addresses,
    /// capacity, `up`, load and assets), read once at start.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// With `[node]` and `url`: the time between two heartbeats (default 5s), as in every
    /// node's `[control_plane]`.
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// The addresses the control plane and its monitor use to reach this node (default:
    /// `http` is `[steering] public_url`, `admin` is `http://<listen.http>`, which is right
    /// only when that is not a wildcard address), as in every node's `[control_plane]`.
    #[serde(default)]
    pub advertise: estuary_common::cp::Addresses,
    /// Network capacity in Gb/s reported in heartbeats (default 10), as in every node's
    /// `[control_plane]`.
    #[serde(default = "default_gbps")]
    pub capacity_gbps: f64,
}

/// `[geo]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoConfig {
    /// A coverage zone file in Apache Traffic Control's shape:
    /// `{"coverageZones": {"<zone>": {"network": [CIDR...], "network6": [CIDR...],
    /// "coordinates": {"latitude": F, "longitude": F}}}}`. A zone named after a site sends its
    /// clients there; any zone's coordinates place its clients for the nearest-site choice.
    /// Sites' own `coverage` CIDRs from the control plane are used as well.
    #[serde(default)]
    pub coverage_zones: Option<PathBuf>,
    /// A MaxMind database. Not supported in this build; refused by `validate`.
    #[serde(default)]
    pub mmdb: Option<PathBuf>,
}

/// `[tokens]`: how playback URLs are signed (the edges' `[auth.keys]` must hold this key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    /// The key id the edges know the secret by.
    pub kid: String,
    /// The hex secret (at least 16 bytes).
    pub key: String,
    /// How long a signed URL stays valid.
    #[serde(default = "default_token_ttl", with = "humantime_serde")]
    pub ttl: Duration,
}

/// How wide an `edge.<zone>` answer to an ECS query says it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EcsScope {
    /// The client's own network (its /24 or /56, or the coverage network when that is
    /// narrower): each client network gets its own rendezvous order of the site's edges, so a
    /// site's load spreads over its edges network by network; resolvers cache per /24.
    #[default]
    Client,
    /// The widest network around the client that one answer fits: its coverage network,
    /// unless that holds a narrower coverage network, as gdnsd answers. Every client of it
    /// gets the same order of the site's edges (the key is that network), so resolvers cache
    /// one answer for all of it, and a site's load spreads over its edges only as widely as
    /// its coverage networks are many.
    Network,
}

/// Which base URL of an edge players are sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// The edge's advertised `https` address, else its `http` one.
    Https,
    /// The edge's advertised `http` address, else its `https` one.
    Http,
}

/// `[steering]`: the choice's knobs and what players are told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteeringPolicy {
    /// The base URL players reach this service at, used in `RELOAD-URI`, `SERVER-URI` and the
    /// DASH `<ContentSteering>` element (default: `http://` + `listen.http`).
    #[serde(default)]
    pub public_url: Option<String>,
    /// How long players keep a steering answer before asking again (`TTL`).
    #[serde(default = "default_steering_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// How many edges (pathways) a steered manifest and a playback answer list.
    #[serde(default = "default_pathways")]
    pub pathways: usize,
    /// An edge whose load (the larger of its bandwidth use over capacity and its CPU share)
    /// reaches this is passed over while others have room (0 < threshold <= 1).
    #[serde(default = "default_load_threshold")]
    pub load_threshold: f64,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs). From anyone else it is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Whether `?client=ADDRESS` may name the client (for operators testing a zone).
    #[serde(default = "default_true")]
    pub allow_client_param: bool,
    /// Which of an edge's advertised addresses players get.
    #[serde(default = "default_scheme")]
    pub scheme: Scheme,
    /// The longest wait for an edge when fetching a manifest to rewrite.
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// A seed mixed into every rendezvous hash (steering replicas must share it).
    #[serde(default)]
    pub hash_seed: u64,
    /// Whether an asset is looked up before it is answered for: known when an edge holds it
    /// pre-positioned, or when an origin that is up has its `asset.json`; an asset every
    /// origin answers 404 for gets a 404. When no origin can tell, the request goes ahead.
    #[serde(default = "default_true")]
    pub check_assets: bool,
}

impl Default for SteeringPolicy {
    fn default() -> Self {
        Self {
            public_url: None,
            ttl: default_steering_ttl(),
            pathways: default_pathways(),
            load_threshold: default_load_threshold(),
            trusted_proxies: Vec::new(),
            allow_client_param: true,
            scheme: default_scheme(),
            fetch_timeout: default_fetch_timeout(),
            hash_seed: 0,
            check_assets: true,
        }
    }
}

/// `[dns]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// The zone answered, fully qualified (`cdn.example.`).
    pub zone: String,
    /// TTL of answers (and of the SOA's negative caching).
    #[serde(default = "default_dns_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Addresses in one `edge.<zone>` answer (the best edges first), 1 to 16.
    #[serde(default = "default_dns_answers")]
    pub answers: usize,
    /// The ECS scope of `edge.<zone>` answers: `"client"` (the default) or `"network"`.
    #[serde(default)]
    pub ecs_scope: EcsScope,
    /// The zone's name servers (fully qualified); default `ns1.<zone>`.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// Addresses of the name servers that are inside the zone (their A/AAAA records and the
    /// glue of NS answers); usually this server's public addresses.
    #[serde(default)]
    pub ns_addresses: Vec<std::net::IpAddr>,
    /// The SOA's contact mailbox as a name (`hostmaster.cdn.example.`); default
    /// `hostmaster.<zone>`.
    #[serde(default)]
    pub contact: Option<String>,
    /// Response rate limiting against amplification: UDP answers (NOERROR with records) per
    /// second to one client network (an IPv4 /24 or an IPv6 /56), whatever names or ECS
    /// networks it asks for; 0 turns it off. Clients that return a valid DNS cookie (RFC
    /// 7873) are not limited.
    #[serde(default = "default_rrl_rate")]
    pub rrl_responses_per_second: u32,
    /// The same for negative answers (NXDOMAIN and NODATA): a random-subdomain flood spends
    /// this budget, not the answers'. Default: a tenth of `rrl_responses_per_second`.
    #[serde(default)]
    pub rrl_nxdomains_per_second: Option<u32>,
    /// The same for errors (REFUSED, SERVFAIL, FORMERR, NOTIMP). Default: a tenth of
    /// `rrl_responses_per_second`.
    #[serde(default)]
    pub rrl_errors_per_second: Option<u32>,
    /// The secret server cookies are made with (32 hex digits); give every server of an
    /// anycast group the same one. Default: a random secret made at start (cookies then
    /// last until a restart).
    #[serde(default)]
    pub cookie_secret: Option<String>,
    /// Of the responses over the limit, every `rrl_slip`-th is sent truncated (empty, TC set,
    /// so a real resolver retries over TCP) and the others are dropped; 0 drops them all.
    #[serde(default = "default_rrl_slip")]
    pub rrl_slip: u32,
    /// Idle time after which a TCP connection is closed.
    #[serde(default = "default_dns_tcp_timeout", with = "humantime_serde")]
    pub tcp_timeout: Duration,
    /// Threads answering UDP, each on its own socket of the same address; default: one per
    /// core this process may run on.
    #[serde(default)]
    pub workers: Option<usize>,
}

impl DnsConfig {
    /// The UDP worker threads to run.
    pub fn udp_workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

fn default_gbps() -> f64 {
    estuary_common::cp::DEFAULT_CAPACITY_GBPS
}
fn default_poll_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_load_refresh() -> Duration {
    Duration::from_secs(10)
}
fn default_token_ttl() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_steering_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_pathways() -> usize {
    3
}
fn default_load_threshold() -> f64 {
    0.9
}
fn default_true() -> bool {
    true
}
fn default_scheme() -> Scheme {
    Scheme::Https
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_dns_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_dns_answers() -> usize {
    2
}
fn default_rrl_rate() -> u32 {
    2000
}
fn default_rrl_slip() -> u32 {
    2
}
fn default_dns_tcp_timeout() -> Duration {
    Duration::from_secs(10)
}

fn http_url(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && url::Url::parse(s).is_ok()
}

impl SteeringConfig {
    /// Parses and validates a config text; relative paths are resolved against `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = estuary_common::config::from_toml(text)?;
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        };
        if let Some(p) = config.control_plane.state_file.as_mut() {
            resolve(p);
        }
        if let Some(p) = config.control_plane.ca_file.as_mut() {
            resolve(p);
        }
        if let Some(p) = config.geo.coverage_zones.as_mut() {
            resolve(p);
        }
        config.validate()?;
        Ok(config)
    }

    /// The trusted proxies' networks (checked by `validate`).
    pub fn trusted_proxies(&self) -> Vec<IpNet> {
        self.steering
            .trusted_proxies
            .iter()
            .filter_map(|p| crate::geo::parse_net(p))
            .collect()
    }

    /// The heartbeat client: with `[node]`, a control-plane URL and a token, the
    /// `[control_plane]` keys every node shares (the deprecated `[node] heartbeat_interval`
    /// and `admin_url` stand in for `interval` and `advertise.admin`).
    pub fn heartbeat_client(&self) -> Option<estuary_common::cp::ClientConfig> {
        let node = self.node.as_ref()?;
        let cp = &self.control_plane;
        let urls = cp.replica_urls();
        if urls.is_empty() {
            return None;
        }
        let mut advertise = cp.advertise.clone();
        if advertise.admin.is_none() {
            advertise.admin.clone_from(&node.admin_url);
        }
        Some(estuary_common::cp::ClientConfig {
            url: String::new(),
            urls,
            ca_file: cp.ca_file.clone(),
            token: cp.token.clone()?,
            interval: cp
                .interval
                .or(node.heartbeat_interval)
                .unwrap_or(estuary_common::cp::DEFAULT_HEARTBEAT_INTERVAL),
            advertise,
            capacity_gbps: cp.capacity_gbps,
            store_capacity: None,
        })
    }

    /// The deprecated keys this config uses, each with the key that replaces it.
    pub fn deprecated_keys(&self) -> Vec<(&'static str, &'static str)> {
        let mut keys = Vec::new();
        if let Some(node) = &self.node {
            if node.heartbeat_interval.is_some() {
                keys.push(("node.heartbeat_interval", "control_plane.interval"));
            }
            if node.admin_url.is_some() {
                keys.push(("node.admin_url", "control_plane.advertise.admin"));
            }
        }
        keys
    }

    /// The base URL players reach this service at, without a trailing slash.
    pub fn public_url(&self) -> String {
        match &self.steering.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen.http),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        let cp = &self.control_plane;
        let live = cp.url.is_some() || !cp.urls.is_empty();
        match (live, &cp.state_file) {
            (true, Some(_)) | (false, None) => {
                return Err(ConfigError::new(
                    "control_plane",
                    "set exactly one of url (or urls: the live state feed) and state_file",
                ));
            }
            (true, None) => {
                estuary_common::cp::check_replica_urls(
                    cp.url.as_deref().unwrap_or_default(),
                    &cp.urls,
                )?;
                if let Some(ca) = &cp.ca_file {
                    estuary_common::http::root_store(Some(ca))
                        .map_err(|e| ConfigError::new("control_plane.ca_file", e.to_string()))?;
                }
                match &cp.token {
                    Some(t) if t.len() >= 16 => {}
                    _ => {
                        return Err(ConfigError::new(
                            "control_plane.token",
                            "required with url: a token of at least 16 characters that the control plane accepts on /v1/state",
                        ));
                    }
                }
            }
            (false, Some(_)) => {}
        }
        if cp.poll_wait < Duration::from_secs(1) || cp.poll_wait > Duration::from_secs(120) {
            return Err(ConfigError::new(
                "control_plane.poll_wait",
                "must be between 1s and 2min",
            ));
        }
        if cp.load_refresh < Duration::from_secs(1) || cp.load_refresh > Duration::from_secs(600) {
            return Err(ConfigError::new(
                "control_plane.load_refresh",
                "must be between 1s and 10min",
            ));
        }
        if self.geo.mmdb.is_some() {
            return Err(ConfigError::new(
                "geo.mmdb",
                "MaxMind databases are not supported in this build; use coverage_zones",
            ));
        }
        let t = &self.tokens;
        if !estuary_common::key_id::valid(&t.kid) {
            return Err(ConfigError::new("tokens.kid", estuary_common::key_id::RULE));
        }
        if let Err(e) = estuary_common::token::decode_secret(&t.key) {
            return Err(ConfigError::new("tokens.key", e.to_string()));
        }
        if t.ttl < Duration::from_secs(60) || t.ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err(ConfigError::new(
                "tokens.ttl",
                "must be between 1min and 7 days",
            ));
        }
        let s = &self.steering;
        if let Some(u) = &s.public_url
            && !http_url(u)
        {
            return Err(ConfigError::new(
                "steering.public_url",
                "must be an http:// or https:// base URL",
            ));
        }
        for (i, p) in s.trusted_proxies.iter().enumerate() {
            if crate::geo::parse_net(p).is_none() {
                return Err(ConfigError::new(
                    format!("steering.trusted_proxies[{i}]"),
                    format!("{p:?} is not a CIDR or an address"),
                ));
            }
        }
        if s.ttl < Duration::from_secs(1) || s.ttl > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "steering.ttl",
                "must be between 1s and 1h",
            ));
        }
        if !(1..=16).contains(&s.pathways) {
            return Err(ConfigError::new("steering.pathways", "must be 1 to 16"));
        }
        if !(s.load_threshold > 0.0 && s.load_threshold <= 1.0) {
            return Err(ConfigError::new(
                "steering.load_threshold",
                "must be above 0 and at most 1",
            ));
        }
        if s.fetch_timeout < Duration::from_millis(100) || s.fetch_timeout > Duration::from_secs(60)
        {
            return Err(ConfigError::new(
                "steering.fetch_timeout",
                "must be between 100ms and 1min",
            ));
        }
        if let Some(dns) = &self.dns {
            let fqdn = |name: &str| {
                name.ends_with('.')
                    && name.len() >= 2
                    && hickory_proto::rr::Name::from_ascii(name).is_ok()
            };
            if !fqdn(&dns.zone) {
                return Err(ConfigError::new(
                    "dns.zone",
                    "must be a fully qualified name ending in '.'",
                ));
            }
            if let Some(bad) = dns.nameservers.iter().find(|n| !fqdn(n)) {
                return Err(ConfigError::new(
                    "dns.nameservers",
                    format!("{bad:?} is not a fully qualified name ending in '.'"),
                ));
            }
            if dns.contact.as_deref().is_some_and(|c| !fqdn(c)) {
                return Err(ConfigError::new(
                    "dns.contact",
                    "must be a fully qualified name ending in '.' (hostmaster.cdn.example.)",
                ));
            }
            if dns.workers.is_some_and(|w| !(1..=256).contains(&w)) {
                return Err(ConfigError::new("dns.workers", "must be 1 to 256"));
            }
            if let Some(secret) = &dns.cookie_secret
                && crate::dns::CookieSecret::from_hex(secret).is_none()
            {
                return Err(ConfigError::new(
                    "dns.cookie_secret",
                    "must be 32 hex digits (16 bytes)",
                ));
            }
            if !(1..=16).contains(&dns.answers) {
                return Err(ConfigError::new("dns.answers", "must be 1 to 16"));
            }
            if dns.ttl.as_secs() > 86_400 {
                return Err(ConfigError::new("dns.ttl", "must be at most 1 day"));
            }
            if dns.tcp_timeout < Duration::from_secs(1)
                || dns.tcp_timeout > Duration::from_secs(300)
            {
                return Err(ConfigError::new(
                    "dns.tcp_timeout",
                    "must be between 1s and 5min",
                ));
            }
        }
        if let Some(node) = &self.node {
            for (key, v) in [("node.id", &node.id), ("node.site", &node.site)] {
                if !estuary_common::config::name_ok(v) {
                    return Err(ConfigError::new(key, "1-64 of A-Z a-z 0-9 - _ ."));
                }
            }
            if node.admin_url.as_deref().is_some_and(|u| !http_url(u)) {
                return Err(ConfigError::new(
                    "node.admin_url",
                    "must be an http:// or https:// URL",
                ));
            }
            if node.admin_url.is_some() && cp.advertise.admin.is_some() {
                return Err(ConfigError::new(
                    "node.admin_url",
                    "deprecated and given with control_plane.advertise.admin: keep only the latter",
                ));
            }
            if let Some(i) = node.heartbeat_interval {
                if cp.interval.is_some() {
                    return Err(ConfigError::new(
                        "node.heartbeat_interval",
                        "deprecated and given with control_plane.interval: keep only the latter",
                    ));
                }
                if i < Duration::from_secs(1) || i > Duration::from_secs(300) {
                    return Err(ConfigError::new(
                        "node.heartbeat_interval",
                        "must be between 1s and 5min",
                    ));
                }
            }
        }
        // The keys every node's [control_plane] shares, checked as every node checks them.
        if let Some(client) = self.heartbeat_client() {
            client.validate()?;
        } else if cp
            .interval
            .is_some_and(|i| i < Duration::from_secs(1) || i > Duration::from_secs(300))
        {
            return Err(ConfigError::new(
                "control_plane.interval",
                "must be between 1s and 5min",
            ));
        }
        if self.listen.dns.is_some() != self.dns.is_some() {
            return Err(ConfigError::new(
                if self.dns.is_none() {
                    "dns"
                } else {
                    "listen.dns"
                },
                "listen.dns and [dns] go together: set both to answer DNS, or neither",
            ));
        }
        Ok(())
    }
}

impl estuary_common::config::ServiceConfig for SteeringConfig {
    const SERVICE: &'static str = "steering";

    fn claims(table: &estuary_common::config::Table) -> bool {
        table.contains_key("geo")
    }

    fn parse_text(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        Self::parse(text, base_dir)
    }

    /// The coverage zone file is part of the config: a broken one fails `check-config` too.
    fn check_more(&self) -> Result<(), ConfigError> {
        crate::load_zones(self).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_mistakes_name_their_key() {
        let text = include_str!("../../docs/steering.example.toml");
        let c = SteeringConfig::parse(text, Path::new("/etc/estuary")).expect("example");
        assert_eq!(
            c.geo.coverage_zones.as_deref(),
            Some(Path::new("/etc/estuary/coverage.json"))
        );
        assert_eq!(c.steering.pathways, 3);
        let bad = |t: &str, key: &str| {
            let e = SteeringConfig::parse(t, Path::new("/etc")).expect_err(t);
            assert!(e.key.starts_with(key), "{e} (wanted {key})");
        };
        bad(&text.replace("[steering]", "[steerin]"), "steerin");
        bad(
            &text.replace("pathways = 3", "pathwys = 3"),
            "steering.pathwys",
        );
        bad(
            &text.replace("pathways = 3", "pathways = 0"),
            "steering.pathways",
        );
        bad(&text.replace("kid = \"k1\"", "kid = \"k~1\""), "tokens.kid");
        bad(
            &text.replace("load_threshold = 0.9", "load_threshold = 1.5"),
            "steering.load_threshold",
        );
        bad(
            &text.replace(
                "# state_file = \"sites.json\"",
                "state_file = \"sites.json\"",
            ),
            "control_plane",
        );
        bad(
            &text.replace("# mmdb = \"GeoLite2-City.mmdb\"", "mmdb = \"x.mmdb\""),
            "geo.mmdb",
        );
        bad(
            &text.replace("zone = \"cdn.example.\"", "zone = \"cdn\""),
            "dns.zone",
        );
        // Heartbeats: the keys every node shares; the old [node] keys still work, never
        // both at once.
        let hb = c.heartbeat_client().expect("heartbeats");
        assert_eq!(hb.interval, Duration::from_secs(5));
        assert_eq!(hb.capacity_gbps, estuary_common::cp::DEFAULT_CAPACITY_GBPS);
        assert!(c.deprecated_keys().is_empty());
        let old = text.replace("interval = \"5s\"", "").replace(
            "site = \"lab\"\n",
            "site = \"lab\"\nheartbeat_interval = \"2s\"\nadmin_url = \"http://10.0.0.5:7100\"\n",
        );
        let c = SteeringConfig::parse(&old, Path::new("/etc")).expect("deprecated keys");
        let hb = c.heartbeat_client().expect("heartbeats");
        assert_eq!(hb.interval, Duration::from_secs(2));
        assert_eq!(hb.advertise.admin.as_deref(), Some("http://10.0.0.5:7100"));
        assert_eq!(c.deprecated_keys().len(), 2);
        // (what the example says, what a mistake makes of it, the key named)
        for (from, to, key) in [
            (
                "site = \"lab\"\n",
                "site = \"lab\"\nheartbeat_interval = \"2s\"\n",
                "node.heartbeat_interval",
            ),
            (
                "interval = \"5s\"",
                "interval = \"0s\"",
                "control_plane.interval",
            ),
            (
                "# capacity_gbps = 10.0",
                "capacity_gbps = -1.0",
                "control_plane.capacity_gbps",
            ),
        ] {
            bad(&text.replace(from, to), key);
        }
        bad(
            &text.replace(
                "trusted_proxies = [\"10.0.0.0/8\"]",
                "trusted_proxies = [\"ten\"]",
            ),
            "steering.trusted_proxies",
        );
    }
}
