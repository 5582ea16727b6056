//! The relay's metrics, pre-registered with bounded labels: `estuary_chat_relay_<name>_<unit>`.

use std::sync::atomic::{AtomicI64, Ordering};

use estuary_common::chat::ReceiptState;
use estuary_common::metrics::{must, register_all};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

use crate::relay::Observer;
use crate::store::StoreError;

/// The close and error codes the core reports, one series each.
const REFUSALS: [&str; 17] = [
    "bad_json",
    "bad_frame",
    "unknown_type",
    "rate_limited",
    "flood",
    "too_big",
    "not_member",
    "no_such_group",
    "group_exists",
    "group_full",
    "not_allowed",
    "unsupported",
    "not_stored",
    "slow_mode",
    "room_full",
    "too_many_rooms",
    "bad_media",
];

/// What became of a push event.
pub const PUSH_RESULTS: [&str; 3] = ["sent", "failed", "dropped"];

pub struct Metrics {
    pub registry: prometheus::Registry,
    pub connections: IntGauge,
    pub connections_total: IntCounter,
    pub messages_in: IntCounter,
    pub messages_out: IntCounter,
    pub delivery_latency: Histogram,
    pub inbox_depth: IntGauge,
    inbox_entries: AtomicI64,
    receipts: IntCounterVec,
    refused: IntCounterVec,
    pub store_errors: IntCounter,
    pub slow_closed: IntCounter,
    rooms: IntGauge,
    room_members: IntGauge,
    pushes: IntCounterVec,
    pub tokens_refused: IntCounterVec,
    media_uploads: IntCounter,
}

impl Metrics {
    pub fn new(node: &str, site: &str) -> Self {
        let registry = estuary_common::metrics::registry(&[("node", node), ("site", site)]);
        let m = Self {
            connections: must(IntGauge::new(
                "estuary_chat_relay_connections",
                "WebSocket connections open now.",
            )),
            connections_total: must(IntCounter::new(
                "estuary_chat_relay_connections_total",
                "WebSocket connections accepted.",
            )),
            messages_in: must(IntCounter::new(
                "estuary_chat_relay_messages_in_total",
                "send frames received.",
            )),
            messages_out: must(IntCounter::new(
                "estuary_chat_relay_messages_out_total",
                "message frames written to devices.",
            )),
            delivery_latency: must(Histogram::with_opts(
                HistogramOpts::new(
                    "estuary_chat_relay_delivery_latency_seconds",
                    "Time from a message's storing to the first ack by a recipient.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0,
                    86400.0,
                ]),
            )),
            inbox_depth: must(IntGauge::new(
                "estuary_chat_relay_inbox_depth_messages",
                "Inbox entries waiting for a device's ack, all devices together.",
            )),
            inbox_entries: AtomicI64::new(0),
            receipts: must(IntCounterVec::new(
                Opts::new("estuary_chat_relay_receipts_total", "Receipts recorded."),
                &["state"],
            )),
            refused: must(IntCounterVec::new(
                Opts::new(
                    "estuary_chat_relay_frames_refused_total",
                    "Client frames answered with an error frame or a close, by code.",
                ),
                &["code"],
            )),
            media_uploads: must(IntCounter::new(
                "estuary_chat_relay_media_uploads_total",
                "media.upload requests answered with an upload credential.",
            )),
            store_errors: must(IntCounter::new(
                "estuary_chat_relay_store_errors_total",
                "Store calls that failed.",
            )),
            slow_closed: must(IntCounter::new(
                "estuary_chat_relay_slow_readers_closed_total",
                "Connections closed with 4002 because their send queue was full.",
            )),
            rooms: must(IntGauge::new(
                "estuary_chat_relay_rooms",
                "Live rooms with at least one connection.",
            )),
            room_members: must(IntGauge::new(
                "estuary_chat_relay_room_members",
                "Connections in live rooms, all rooms together.",
            )),
            pushes: must(IntCounterVec::new(
                Opts::new(
                    "estuary_chat_relay_push_events_total",
                    "Offline push events, by result: sent, failed (after retries), dropped (queue full).",
                ),
                &["result"],
            )),
            tokens_refused: must(IntCounterVec::new(
                Opts::new(
                    "estuary_chat_relay_tokens_refused_total",
                    "WebSocket requests refused for their token, by reason.",
                ),
                &["reason"],
            )),
            registry,
        };
        for s in [ReceiptState::Delivered, ReceiptState::Read] {
            m.receipts.with_label_values(&[s.as_str()]);
        }
        for result in PUSH_RESULTS {
            m.pushes.with_label_values(&[result]);
        }
        for code in REFUSALS {
            m.refused.with_label_values(&[code]);
        }
        for r in estuary_common::token::Rejection::ALL {
            m.tokens_refused.with_label_values(&[r.as_str()]);
        }
        register_all(
            &m.registry,
            [
                Box::new(m.connections.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(m.connections_total.clone()),
                Box::new(m.messages_in.clone()),
                Box::new(m.messages_out.clone()),
                Box::new(m.delivery_latency.clone()),
                Box::new(m.inbox_depth.clone()),
                Box::new(m.receipts.clone()),
                Box::new(m.refused.clone()),
                Box::new(m.store_errors.clone()),
                Box::new(m.slow_closed.clone()),
                Box::new(m.tokens_refused.clone()),
                Box::new(m.rooms.clone()),
                Box::new(m.room_members.clone()),
                Box::new(m.pushes.clone()),
                Box::new(m.media_uploads.clone()),
            ],
        );
        m
    }

    /// Counts a push event by result (one of [`PUSH_RESULTS`]).
    pub fn push(&self, result: &'static str) {
        if PUSH_RESULTS.contains(&result) {
            self.pushes.with_label_values(&[result]).inc();
        }
    }

    /// Sets the inbox depth read from the store at start.
    pub fn set_inbox_depth(&self, n: u64) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.inbox_entries.store(n, Ordering::Relaxed);
        self.inbox_depth.set(n);
    }
}

impl Observer for std::sync::Arc<Metrics> {
    fn media_upload(&self) {
        self.media_uploads.inc();
    }
    fn message_in(&self) {
        self.messages_in.inc();
    }
    fn message_out(&self, n: u64) {
        self.messages_out.inc_by(n);
    }
    fn rooms(&self, rooms: usize, members: usize) {
        self.rooms.set(i64::try_from(rooms).unwrap_or(i64::MAX));
        self.room_members
            .set(i64::try_from(members).unwrap_or(i64::MAX));
    }
    fn delivered(&self, latency_ms: u64) {
        self.delivery_latency.observe(latency_ms as f64 / 1000.0);
    }
    fn receipt(&self, state: ReceiptState) {
        self.receipts.with_label_values(&[state.as_str()]).inc();
    }
    fn inbox(&self, delta: i64) {
        let n = self.inbox_entries.fetch_add(delta, Ordering::Relaxed) + delta;
        self.inbox_depth.set(n);
    }
    fn refused(&self, code: &'static str) {
        if REFUSALS.contains(&code) {
            self.refused.with_label_values(&[code]).inc();
        }
    }
    fn store_failed(&self, error: &StoreError) {
        self.store_errors.inc();
        tracing::error!(error = %error, "A store call failed.");
    }
}
