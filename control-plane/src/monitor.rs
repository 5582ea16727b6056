//! The health monitor (Traffic Monitor style): every poll interval it checks every node, by
//! its `/readyz` and `/metrics` when the node advertised an admin address, and by the age of
//! its last heartbeat always; the registry's hysteresis turns the results into up/down
//! verdicts. Every change is logged. Two scrapes of `/metrics` in a row give the node's load as
//! the control plane measured it (bytes and requests served per second, open connections),
//! next to what the node's heartbeats claim.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use estuary_common::cp::Load;
use tokio::sync::watch;

use crate::app::App;
use crate::health::Change;
use crate::registry::{Failure, Target};

type Client = estuary_common::http::HttpClient;

/// Runs until `stop` turns true.
pub async fn run(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let h = app.config.health.clone();
    let client = match crate::app::outbound_client(&app.config, h.poll_timeout, MAX_METRICS_BYTES) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "No node can be checked: the HTTP client cannot be set up.");
            return;
        }
    };
    let mut tick = tokio::time::interval(h.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_scrapes: HashMap<String, (Instant, Scrape)> = HashMap::new();
    let mut last_panic = std::collections::BTreeMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = estuary_common::unix_now();
        // With a shared database out of reach, heartbeats sent to the other replicas do not
        // reach this one: a node's silence here is no evidence, its own `/readyz` is.
        let blind = app.store.is_shared() && !app.store.health().is_up();
        let checks = app.registry.targets().into_iter().map(|t| {
            let client = client.clone();
            let h = h.clone();
            async move {
                let result = check(&client, &t, now, &h, blind).await;
                (t.id, result)
            }
        });
        let results = futures_join_all(checks).await;
        last_scrapes.retain(|id, _| results.iter().any(|(r, _)| r == id));
        for (id, result) in results {
            if result.is_ok() {
                app.metrics.checks_ok.inc();
            } else {
                app.metrics.checks_failed.inc();
            }
            let reason = result.as_ref().err().map(|f| f.reason.clone());
            if let Ok(Some(scrape)) = &result {
                let at = Instant::now();
                if let Some((then, old)) = last_scrapes.get(&id) {
                    let secs = at.duration_since(*then).as_secs_f64();
                    app.registry
                        .set_polled_load(&id, load_between(old, scrape, secs));
                }
                last_scrapes.insert(id.clone(), (at, *scrape));
            }
            match app.registry.observe(&id, result.map(|_| ())) {
                Some(Change::Up) => tracing::info!(node = %id, "A node is up."),
                Some(Change::Down) => {
                    tracing::warn!(node = %id, reason = reason.as_deref().unwrap_or(""), "A node is down.");
                }
                None => {}
            }
        }
        let panicking = app.registry.panicking();
        if panicking != last_panic {
            if panicking.is_empty() {
                tracing::info!("The panic threshold holds no edge in rotation any more.");
            } else {
                tracing::error!(held = ?panicking, threshold = h.panic_threshold,
                    "Heartbeats are missing from more edges than the panic threshold allows: the ones that were up stay in rotation. Check the network between the nodes and the control plane.");
            }
            last_panic = panicking;
        }
        let now = estuary_common::unix_now();
        let snap = app.registry.snapshot(now);
        if let Ok(mut history) = app.history.lock() {
            history.record(now, &snap);
        }
    }
}

/// Runs the futures concurrently and collects their outputs.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for f in futures {
        set.spawn(f);
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(v) = r {
            out.push(v);
        }
    }
    out
}

/// One check of a node: heartbeat age, `/readyz`, then a scrape of `/metrics`; the scrape's
/// figures when the node has an admin address. A node whose heartbeats stopped but which
/// answers its polls fails for silence only (see the panic threshold), or passes when this
/// replica is `blind` (its shared database is out of reach, so heartbeats sent to another
/// replica cannot reach it).
async fn check(
    client: &Client,
    t: &Target,
    now: u64,
    h: &crate::config::HealthConfig,
    blind: bool,
) -> Result<Option<Scrape>, Failure> {
    let age = now.saturating_sub(t.last_heartbeat);
    let silent = age > h.heartbeat_timeout.as_secs();
    let Some(admin) = &t.admin else {
        // Without an admin address the node's own word is all there is.
        return if silent {
            Err(Failure::silence(format!("no heartbeat for {age} s")))
        } else if t.ready {
            Ok(None)
        } else {
            Err(Failure::new("the node reports itself not ready"))
        };
    };
    let polled = poll(client, admin).await;
    match (polled, silent) {
        (Ok(scrape), false) => Ok(scrape),
        (Ok(scrape), true) if blind => Ok(scrape),
        (Ok(_), true) => Err(Failure::silence(format!(
            "no heartbeat for {age} s (its /readyz answers)"
        ))),
        (Err(why), false) => Err(Failure::new(why)),
        (Err(why), true) => Err(Failure::new(format!("no heartbeat for {age} s; {why}"))),
    }
}

/// `/readyz` then `/metrics` of a node's admin address.
async fn poll(client: &Client, admin: &str) -> Result<Option<Scrape>, String> {
    let admin = admin.trim_end_matches('/');
    let (status, _) = get(client, &format!("{admin}/readyz"))
        .await
        .map_err(|e| format!("readyz: {e}"))?;
    if !status.is_success() {
        return Err(format!("readyz answered {status}"));
    }
    let (status, body) = get(client, &format!("{admin}/metrics"))
        .await
        .map_err(|e| format!("metrics: {e}"))?;
    if !status.is_success() {
        return Err(format!("metrics answered {status}"));
    }
    let text = std::str::from_utf8(&body).map_err(|_| "metrics: not UTF-8".to_owned())?;
    read_scrape(text).map(Some)
}

/// The most a scrape may send.
const MAX_METRICS_BYTES: usize = 8 * 1024 * 1024;

/// GETs `url` within the poll timeout; its status and (bounded) body.
async fn get(client: &Client, url: &str) -> Result<(http::StatusCode, bytes::Bytes), String> {
    let resp = client.get(url, &[]).await.map_err(|e| e.to_string())?;
    Ok((resp.status(), resp.into_body()))
}

/// The figures the monitor takes from a node's `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scrape {
    /// Sum of every `estuary_*_response_body_bytes_total` series.
    pub bytes: f64,
    /// Sum of every `estuary_*_requests_total` series.
    pub requests: f64,
    /// Sum of every `estuary_*_open_connections` series.
    pub connections: f64,
}

/// Reads a Prometheus text exposition.
pub fn read_scrape(text: &str) -> Result<Scrape, String> {
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .map_err(|e| format!("metrics: {e}"))?;
    let mut scrape = Scrape::default();
    for sample in parsed.samples {
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        if !value.is_finite() || !sample.metric.starts_with("estuary_") {
            continue;
        }
        let name = sample.metric.as_str();
        if name.ends_with("_response_body_bytes_total") {
            scrape.bytes += value;
        } else if name.ends_with("_requests_total") {
            scrape.requests += value;
        } else if name.ends_with("_open_connections") {
            scrape.connections += value;
        }
    }
    Ok(scrape)
}

/// The load between two scrapes `secs` apart. A counter that went back (the node restarted)
/// counts from zero.
pub fn load_between(old: &Scrape, new: &Scrape, secs: f64) -> Load {
    let rate = |a: f64, b: f64| {
        if secs <= 0.0 {
            0.0
        } else if b >= a {
            (b - a) / secs
        } else {
            b / secs
        }
    };
    Load {
        bytes_per_second: rate(old.bytes, new.bytes),
        requests_per_second: rate(old.requests, new.requests),
        connections: new.connections.max(0.0) as u64,
        cpu: 0.0,
        ..Load::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_sum_the_served_bytes_requests_and_connections() {
        let text = "# HELP estuary_edge_requests_total Requests.\n\
# TYPE estuary_edge_requests_total counter\n\
estuary_edge_requests_total{protocol=\"h1\",status_class=\"2xx\"} 10\n\
estuary_edge_requests_total{protocol=\"h2\",status_class=\"2xx\"} 5\n\
# TYPE estuary_edge_response_body_bytes_total counter\n\
estuary_edge_response_body_bytes_total 4096\n\
# TYPE estuary_edge_open_connections gauge\n\
estuary_edge_open_connections 3\n\
# TYPE other_requests_total counter\n\
other_requests_total 99\n";
        let s = read_scrape(text).expect("parses");
        assert_eq!(
            s,
            Scrape {
                bytes: 4096.0,
                requests: 15.0,
                connections: 3.0
            }
        );
        let later = Scrape {
            bytes: 4096.0 + 2000.0,
            requests: 25.0,
            connections: 1.0,
        };
        let load = load_between(&s, &later, 2.0);
        assert_eq!(load.bytes_per_second, 1000.0);
        assert_eq!(load.requests_per_second, 5.0);
        assert_eq!(load.connections, 1);
        // A restarted node: its counters start again from zero.
        let restarted = Scrape {
            bytes: 100.0,
            requests: 1.0,
            connections: 0.0,
        };
        assert_eq!(
            load_between(&later, &restarted, 1.0).bytes_per_second,
            100.0
        );
    }

    #[test]
    fn garbage_is_read_without_a_panic() {
        for text in [
            "",
            "{{{",
            "estuary_x_requests_total NaN\n",
            "a b c d e\n\u{0}",
        ] {
            let _ = read_scrape(text);
        }
    }
}
