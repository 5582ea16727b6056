//! The health monitor (Traffic Monitor style): every poll interval it checks every node, by
//! its `/readyz` when the node advertised an admin address, and by the age of its last
//! heartbeat always; the registry's hysteresis turns the results into up/down verdicts. Every
//! change is logged.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::sync::watch;

use crate::app::App;
use crate::health::Change;
use crate::registry::Target;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

/// Runs until `stop` turns true.
pub async fn run(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let h = app.config.health.clone();
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_connect_timeout(Some(h.poll_timeout));
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
    let mut tick = tokio::time::interval(h.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = estuary_common::unix_now();
        let checks = app.registry.targets().into_iter().map(|t| {
            let client = client.clone();
            async move {
                let result = check(&client, &t, now, h.heartbeat_timeout, h.poll_timeout).await;
                (t.id, result)
            }
        });
        for (id, result) in futures_join_all(checks).await {
            if result.is_ok() {
                app.metrics.checks_ok.inc();
            } else {
                app.metrics.checks_failed.inc();
            }
            let reason = result.as_ref().err().cloned();
            match app.registry.observe(&id, result) {
                Some(Change::Up) => tracing::info!(node = %id, "A node is up."),
                Some(Change::Down) => {
                    tracing::warn!(node = %id, reason = reason.as_deref().unwrap_or(""), "A node is down.");
                }
                None => {}
            }
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

async fn check(
    client: &Client,
    t: &Target,
    now: u64,
    heartbeat_timeout: Duration,
    poll_timeout: Duration,
) -> Result<(), String> {
    let age = now.saturating_sub(t.last_heartbeat);
    if age > heartbeat_timeout.as_secs() {
        return Err(format!("no heartbeat for {age} s"));
    }
    let Some(admin) = &t.admin else {
        // Without an admin address the node's own word is all there is.
        return if t.ready {
            Ok(())
        } else {
            Err("the node reports itself not ready".into())
        };
    };
    let url = format!("{}/readyz", admin.trim_end_matches('/'));
    let request = http::Request::get(&url)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("bad admin address {admin}: {e}"))?;
    match tokio::time::timeout(poll_timeout, client.request(request)).await {
        Ok(Ok(resp)) => {
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("readyz answered {status}"))
            }
        }
        Ok(Err(e)) => Err(format!("readyz: {e}")),
        Err(_) => Err("readyz timed out".into()),
    }
}
