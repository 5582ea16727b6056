//! The origin's metrics, registered up front with bounded label sets.

use axum::http::StatusCode;
use estuary_common::metrics::{self, must};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Asset states, the label values of `estuary_origin_assets`.
const STATES: [&str; 6] = [
    "uploading",
    "queued",
    "packaging",
    "ready",
    "failed",
    "missing",
];

/// The reasons of `estuary_origin_upload_credentials_refused_total`.
const CREDENTIAL_REFUSALS: [&str; 12] = [
    "no_keys",
    "not_raw_upload",
    "address_bound",
    "missing",
    "malformed",
    "unknown_kid",
    "bad_hmac",
    "expired",
    "not_yet_valid",
    "outside_acl",
    "ip_mismatch",
    "lifetime_too_long",
];

/// Handles to every origin metric.
pub struct Metrics {
    pub registry: Registry,
    requests: [IntCounter; 5],
    pub response_bytes: IntCounter,
    pub upload_bytes: IntCounter,
    pub uploads_completed: IntCounter,
    pub jobs_ok: IntCounter,
    pub jobs_failed: IntCounter,
    /// Attempts that failed and were queued again.
    pub jobs_retried: IntCounter,
    pub job_duration: Histogram,
    assets: IntGaugeVec,
    /// 1 while the last storage check passed, 0 after one failed.
    pub storage_up: IntGauge,
    /// Storage calls that failed or timed out.
    pub storage_errors: IntCounter,
    /// Objects of half-published assets removed.
    pub orphans_removed: IntCounter,
    /// Bearer values refused as raw-upload credentials, by reason.
    credentials_refused: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(node: &str, site: &str) -> Self {
        let registry = metrics::registry(&[("node", node), ("site", site)]);
        let requests_vec = must(IntCounterVec::new(
            Opts::new(
                "estuary_origin_asset_requests_total",
                "Requests for asset files under /v/, by status class.",
            ),
            &["status_class"],
        ));
        let requests =
            ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| requests_vec.with_label_values(&[c]));
        let response_bytes = must(IntCounter::new(
            "estuary_origin_response_body_bytes_total",
            "Asset body bytes sent.",
        ));
        let upload_bytes = must(IntCounter::new(
            "estuary_origin_upload_bytes_total",
            "Upload bytes received and written (TUS PATCH bodies).",
        ));
        let uploads_completed = must(IntCounter::new(
            "estuary_origin_uploads_completed_total",
            "Uploads received in full (each queues a packaging job).",
        ));
        let jobs_vec = must(IntCounterVec::new(
            Opts::new(
                "estuary_origin_packaging_jobs_total",
                "Packaging attempts ended, by result (ready, failed for good, retried).",
            ),
            &["result"],
        ));
        let jobs_ok = jobs_vec.with_label_values(&["ready"]);
        let jobs_failed = jobs_vec.with_label_values(&["failed"]);
        let jobs_retried = jobs_vec.with_label_values(&["retried"]);
        let job_duration = must(Histogram::with_opts(
            HistogramOpts::new(
                "estuary_origin_packaging_duration_seconds",
                "Time from a job's start to its asset being published.",
            )
            .buckets(vec![1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0]),
        ));
        let assets = must(IntGaugeVec::new(
            Opts::new("estuary_origin_assets", "Assets known, by state."),
            &["state"],
        ));
        for s in STATES {
            assets.with_label_values(&[s]);
        }
        let storage_up = must(IntGauge::new(
            "estuary_origin_storage_up",
            "1 while the asset storage passed its last check (the /readyz check, also run every 10 s), else 0.",
        ));
        let storage_errors = must(IntCounter::new(
            "estuary_origin_storage_errors_total",
            "Asset storage calls that failed or did not answer within [storage] timeout.",
        ));
        let orphans_removed = must(IntCounter::new(
            "estuary_origin_orphan_objects_removed_total",
            "Objects of half-published assets (no asset.json, no job) removed by the sweep.",
        ));
        let credentials_refused = must(IntCounterVec::new(
            Opts::new(
                "estuary_origin_upload_credentials_refused_total",
                "Bearer values that matched no upload token and were refused as raw-upload credentials ([auth.upload_keys]), by reason.",
            ),
            &["reason"],
        ));
        for r in CREDENTIAL_REFUSALS {
            credentials_refused.with_label_values(&[r]);
        }
        metrics::register_all(
            &registry,
            [
                Box::new(requests_vec) as Box<dyn prometheus::core::Collector>,
                Box::new(response_bytes.clone()),
                Box::new(upload_bytes.clone()),
                Box::new(uploads_completed.clone()),
                Box::new(jobs_vec),
                Box::new(job_duration.clone()),
                Box::new(assets.clone()),
                Box::new(storage_up.clone()),
                Box::new(storage_errors.clone()),
                Box::new(orphans_removed.clone()),
                Box::new(credentials_refused.clone()),
            ],
        );
        Self {
            registry,
            requests,
            response_bytes,
            upload_bytes,
            uploads_completed,
            jobs_ok,
            jobs_failed,
            jobs_retried,
            job_duration,
            assets,
            storage_up,
            storage_errors,
            orphans_removed,
            credentials_refused,
        }
    }

    /// Counts a bearer value refused as a raw-upload credential.
    pub fn count_credential_refusal(&self, why: crate::app::CredentialRefusal) {
        let label = why.as_str();
        if CREDENTIAL_REFUSALS.contains(&label) {
            self.credentials_refused.with_label_values(&[label]).inc();
        }
    }

    /// Counts one asset response.
    pub fn count_request(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[class].inc();
    }

    /// Sets the asset gauges from the database's counts.
    pub fn set_asset_counts(&self, counts: &[(String, u64)]) {
        for s in STATES {
            let n = counts
                .iter()
                .find(|(state, _)| state == s)
                .map_or(0, |(_, n)| *n);
            self.assets.with_label_values(&[s]).set(n as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_register() {
        let m = super::Metrics::new("o", "s");
        m.count_request(axum::http::StatusCode::OK);
        let text = estuary_common::metrics::encode(&m.registry);
        assert!(text.contains("estuary_origin_asset_requests_total"));
    }
}
