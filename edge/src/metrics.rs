//! The edge's metrics. Every series is registered up front with a bounded label set, and the
//! hot path only touches pre-resolved handles.

use estuary_common::metrics::{self, must};
use estuary_common::token::Rejection;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The protocol a request arrived over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    H1,
    H2,
    H3,
}

impl Protocol {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::H1 => "h1",
            Protocol::H2 => "h2",
            Protocol::H3 => "h3",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    const ALL: [Protocol; 3] = [Protocol::H1, Protocol::H2, Protocol::H3];
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Handles to every edge metric.
pub struct Metrics {
    pub registry: Registry,
    requests: Vec<[IntCounter; 5]>,
    response_bytes: Vec<IntCounter>,
    duration: Vec<Histogram>,
    open_connections: Vec<IntGauge>,
    /// TCP connections in their TLS handshake (protocol not chosen yet).
    handshaking: IntGauge,
    token_rejections: Vec<IntCounter>,
    pub store_hits: IntCounter,
    pub store_misses: IntCounter,
    pub store_refused_outside_root: IntCounter,
    pub bad_paths: IntCounter,
    pub tls_reloads_ok: IntCounter,
    pub tls_reloads_failed: IntCounter,
    pub access_log_dropped: IntCounter,
    /// HTTP/3 connections closed for cancelling too many request streams (Rapid Reset).
    pub h3_reset_flood_closes: IntCounter,
    pub draining: IntGauge,
    pub cache_hits_ram: IntCounter,
    pub cache_hits_disk: IntCounter,
    pub cache_misses: IntCounter,
    pub stale_serves: IntCounter,
    fills: IntCounterVec,
    fill_duration: prometheus::HistogramVec,
    pub fill_coalesced: IntCounter,
    pub upstream_bytes: IntCounter,
    pub integrity_failures: IntCounter,
    pub ram_evictions: IntCounter,
    pub ram_evicted_bytes: IntCounter,
    pub disk_admitted: IntCounter,
    pub disk_rejected: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Registers every metric in a new registry, labelled with the node's id and site.
    pub fn new(node_id: &str, site: &str) -> Self {
        let registry = metrics::registry(&[("node", node_id), ("site", site)]);

        let requests_vec = must(IntCounterVec::new(
            Opts::new(
                "estuary_edge_requests_total",
                "Requests answered, by protocol and status class.",
            ),
            &["protocol", "status_class"],
        ));
        let bytes_vec = must(IntCounterVec::new(
            Opts::new(
                "estuary_edge_response_body_bytes_total",
                "Response body bytes sent, by protocol.",
            ),
            &["protocol"],
        ));
        let duration_vec = must(prometheus::HistogramVec::new(
            HistogramOpts::new(
                "estuary_edge_request_duration_seconds",
                "Time from a request's head to the last byte of its response handed to the connection, by protocol.",
            )
            .buckets(estuary_common::metrics::DURATION_BUCKETS.to_vec()),
            &["protocol"],
        ));
        let conns_vec = must(IntGaugeVec::new(
            Opts::new(
                "estuary_edge_open_connections",
                "Open client connections, by protocol (tls-handshake: a TLS handshake under way).",
            ),
            &["protocol"],
        ));
        let rejections_vec = must(IntCounterVec::new(
            Opts::new(
                "estuary_edge_token_rejections_total",
                "Requests refused with 403 for their token, by reason.",
            ),
            &["reason"],
        ));
        let store_vec = must(IntCounterVec::new(
            Opts::new(
                "estuary_edge_store_lookups_total",
                "Lookups in the pre-positioned store, by result.",
            ),
            &["result"],
        ));
        let reload_vec = must(IntCounterVec::new(
            Opts::new(
                "estuary_edge_tls_reloads_total",
                "Certificate reloads on SIGHUP, by result.",
            ),
            &["result"],
        ));
        let bad_paths = must(IntCounter::new(
            "estuary_edge_bad_paths_total",
            "Requests refused with 400 for a malformed or hostile path.",
        ));
        let access_log_dropped = must(IntCounter::new(
            "estuary_edge_access_log_dropped_total",
            "Access-log lines dropped because the writer fell behind.",
        ));
        let h3_reset_flood_closes = must(IntCounter::new(
            "estuary_edge_h3_reset_flood_closes_total",
            "HTTP/3 connections closed with H3_EXCESSIVE_LOAD for cancelling more than limits.h3_max_reset_streams request streams within 10 s (Rapid Reset).",
        ));
        let draining = must(IntGauge::new(
            "estuary_edge_draining",
            "1 while the node drains after SIGTERM, else 0.",
        ));

        let cache_vec = must(IntCounterVec::new(
            Opts::new(
                "estuary_edge_cache_lookups_total",
                "Lookups in the pull-through cache, by result: hit_ram, hit_disk, miss, stale (served past its lifetime).",
            ),
            &["result"],
        ));
        let fills = must(IntCounterVec::new(
            Opts::new(
                "estuary_edge_fills_total",
                "Fetches from upstream, by source kind and result.",
            ),
            &["source", "result"],
        ));
        let fill_duration = must(prometheus::HistogramVec::new(
            HistogramOpts::new(
                "estuary_edge_fill_duration_seconds",
                "Time to fetch one object from upstream, by source kind.",
            )
            .buckets(estuary_common::metrics::DURATION_BUCKETS.to_vec()),
            &["source"],
        ));
        let fill_coalesced = must(IntCounter::new(
            "estuary_edge_fill_coalesced_total",
            "Requests that joined a fill already in flight instead of fetching again.",
        ));
        let upstream_bytes = must(IntCounter::new(
            "estuary_edge_upstream_body_bytes_total",
            "Body bytes fetched from upstream (compare with response bytes for offload).",
        ));
        let integrity_failures = must(IntCounter::new(
            "estuary_edge_integrity_failures_total",
            "Fills refused because the body did not match Content-Digest/Repr-Digest.",
        ));
        let evictions = must(IntCounter::new(
            "estuary_edge_cache_ram_evictions_total",
            "Objects evicted from the RAM tier to make room (S3-FIFO).",
        ));
        let evicted_bytes = must(IntCounter::new(
            "estuary_edge_cache_ram_evicted_bytes_total",
            "Body bytes of the objects evicted from the RAM tier.",
        ));
        let admission_vec = must(IntCounterVec::new(
            Opts::new(
                "estuary_edge_cache_disk_admissions_total",
                "Objects offered to the disk tier, by the admission filter's verdict (rejected: filled fewer than cache.disk_min_fills times).",
            ),
            &["result"],
        ));
        let disk_admitted = admission_vec.with_label_values(&["admitted"]);
        let disk_rejected = admission_vec.with_label_values(&["rejected"]);
        for source in ["peer", "parent", "origin"] {
            for result in ["ok", "failed"] {
                fills.with_label_values(&[source, result]);
            }
            fill_duration.with_label_values(&[source]);
        }
        let cache_hits_ram = cache_vec.with_label_values(&["hit_ram"]);
        let cache_hits_disk = cache_vec.with_label_values(&["hit_disk"]);
        let cache_misses = cache_vec.with_label_values(&["miss"]);
        let stale_serves = cache_vec.with_label_values(&["stale"]);

        let requests = Protocol::ALL
            .iter()
            .map(|p| STATUS_CLASSES.map(|c| requests_vec.with_label_values(&[p.as_str(), c])))
            .collect();
        let response_bytes = Protocol::ALL
            .iter()
            .map(|p| bytes_vec.with_label_values(&[p.as_str()]))
            .collect();
        let duration = Protocol::ALL
            .iter()
            .map(|p| duration_vec.with_label_values(&[p.as_str()]))
            .collect();
        let open_connections = Protocol::ALL
            .iter()
            .map(|p| conns_vec.with_label_values(&[p.as_str()]))
            .collect();
        let handshaking = conns_vec.with_label_values(&["tls-handshake"]);
        let token_rejections = Rejection::ALL
            .iter()
            .map(|r| rejections_vec.with_label_values(&[r.as_str()]))
            .collect();
        let store_hits = store_vec.with_label_values(&["hit"]);
        let store_misses = store_vec.with_label_values(&["miss"]);
        let store_refused_outside_root = store_vec.with_label_values(&["outside_root"]);
        let tls_reloads_ok = reload_vec.with_label_values(&["ok"]);
        let tls_reloads_failed = reload_vec.with_label_values(&["failed"]);

        metrics::register_all(
            &registry,
            [
                Box::new(evictions.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(evicted_bytes.clone()),
                Box::new(admission_vec),
                Box::new(cache_vec),
                Box::new(fills.clone()),
                Box::new(fill_duration.clone()),
                Box::new(fill_coalesced.clone()),
                Box::new(upstream_bytes.clone()),
                Box::new(integrity_failures.clone()),
                Box::new(requests_vec),
                Box::new(bytes_vec),
                Box::new(duration_vec),
                Box::new(conns_vec),
                Box::new(rejections_vec),
                Box::new(store_vec),
                Box::new(reload_vec),
                Box::new(bad_paths.clone()),
                Box::new(access_log_dropped.clone()),
                Box::new(h3_reset_flood_closes.clone()),
                Box::new(draining.clone()),
            ],
        );
        Self {
            registry,
            requests,
            response_bytes,
            duration,
            open_connections,
            handshaking,
            token_rejections,
            store_hits,
            store_misses,
            store_refused_outside_root,
            bad_paths,
            tls_reloads_ok,
            tls_reloads_failed,
            access_log_dropped,
            h3_reset_flood_closes,
            draining,
            cache_hits_ram,
            cache_hits_disk,
            cache_misses,
            stale_serves,
            fills,
            fill_duration,
            fill_coalesced,
            upstream_bytes,
            integrity_failures,
            ram_evictions: evictions,
            ram_evicted_bytes: evicted_bytes,
            disk_admitted,
            disk_rejected,
        }
    }

    /// Totals for heartbeats: requests answered, response body bytes, open connections.
    pub fn totals(&self) -> (u64, u64, u64) {
        let requests = self.requests.iter().flatten().map(IntCounter::get).sum();
        let bytes = self.response_bytes.iter().map(IntCounter::get).sum();
        let connections = self
            .open_connections
            .iter()
            .chain([&self.handshaking])
            .map(|g| g.get().max(0) as u64)
            .sum();
        (requests, bytes, connections)
    }

    /// Counts one finished response.
    pub fn observe_response(&self, protocol: Protocol, status: u16, body_bytes: u64, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        let p = protocol.index();
        self.requests[p][class].inc();
        self.response_bytes[p].inc_by(body_bytes);
        self.duration[p].observe(seconds);
    }

    /// Counts one token rejection.
    pub fn token_rejected(&self, reason: Rejection) {
        if let Some(i) = Rejection::ALL.iter().position(|r| *r == reason) {
            self.token_rejections[i].inc();
        }
    }

    /// Marks a TCP connection in its TLS handshake until the returned guard is dropped.
    pub fn handshake_started(&self) -> ConnectionGuard {
        self.handshaking.inc();
        ConnectionGuard(self.handshaking.clone())
    }

    /// Marks a connection open until the returned guard is dropped.
    pub fn connection_opened(&self, protocol: Protocol) -> ConnectionGuard {
        let gauge = self.open_connections[protocol.index()].clone();
        gauge.inc();
        ConnectionGuard(gauge)
    }
}

impl crate::fill::FillObserver for Metrics {
    fn fill_started(&self, _source_kind: &'static str) {}

    fn fill_finished(&self, source_kind: &'static str, ok: bool, seconds: f64, bytes: u64) {
        let result = if ok { "ok" } else { "failed" };
        self.fills.with_label_values(&[source_kind, result]).inc();
        self.fill_duration
            .with_label_values(&[source_kind])
            .observe(seconds);
        self.upstream_bytes.inc_by(bytes);
    }

    fn integrity_failure(&self) {
        self.integrity_failures.inc();
    }

    fn coalesced(&self) {
        self.fill_coalesced.inc();
    }
}

/// Decrements the open-connections gauge when the connection ends.
#[derive(Debug)]
pub struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_present_from_the_start() {
        let m = Metrics::new("edge-1", "lab");
        m.observe_response(Protocol::H3, 206, 10, 0.001);
        m.token_rejected(Rejection::Expired);
        let text = estuary_common::metrics::encode(&m.registry);
        let value = |name: &str, labels: &[&str]| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        let h3_2xx = [
            "protocol=\"h3\"",
            "status_class=\"2xx\"",
            "node=\"edge-1\"",
            "site=\"lab\"",
        ];
        assert_eq!(
            value("estuary_edge_requests_total", &h3_2xx).as_deref(),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            value(
                "estuary_edge_token_rejections_total",
                &["reason=\"bad_hmac\""]
            )
            .as_deref(),
            Some("0")
        );
        assert_eq!(
            value(
                "estuary_edge_token_rejections_total",
                &["reason=\"expired\""]
            )
            .as_deref(),
            Some("1")
        );
    }
}
