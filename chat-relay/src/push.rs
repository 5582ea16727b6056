//! The offline push hook (`[push]`): a task that hands each [`PushEvent`] to a webhook
//! (`POST`, JSON, retried on transient failures) and/or a NATS subject. The relay thread never
//! waits for it: a full queue drops the event and counts it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use estuary_common::chat::PushEvent;
use estuary_common::http::{ClientOptions, HttpClient, request, retry};
use tokio::sync::mpsc;

use crate::config::PushConfig;
use crate::metrics::Metrics;

/// Where events go.
pub struct Pusher {
    webhook: Option<(HttpClient, String)>,
    token: Option<String>,
    nats: Option<(async_nats::Client, String)>,
    metrics: Arc<Metrics>,
}

impl Pusher {
    /// Starts the task; the sender the relay thread uses.
    pub fn start(
        config: &PushConfig,
        nats: Option<async_nats::Client>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<mpsc::Sender<PushEvent>> {
        let webhook = match &config.webhook {
            None => None,
            Some(url) => {
                let client = HttpClient::new(ClientOptions {
                    timeout: Duration::from_secs(5),
                    max_body: 64 * 1024,
                    ca_file: config.ca_file.clone(),
                    ..ClientOptions::default()
                })
                .map_err(|e| anyhow::anyhow!("push.webhook: {e}"))?;
                Some((client, url.clone()))
            }
        };
        let nats = match (&config.nats_subject, nats) {
            (Some(subject), Some(client)) => Some((client, subject.clone())),
            (Some(_), None) => anyhow::bail!("push.nats_subject needs [cluster]"),
            (None, _) => None,
        };
        let pusher = Pusher {
            webhook,
            token: config.token.clone(),
            nats,
            metrics,
        };
        let (tx, rx) = mpsc::channel(config.queue);
        tokio::spawn(pusher.run(rx));
        Ok(tx)
    }

    async fn run(self, mut events: mpsc::Receiver<PushEvent>) {
        while let Some(event) = events.recv().await {
            let body = match serde_json::to_vec(&event) {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    tracing::error!(error = %e, "A push event could not be encoded.");
                    continue;
                }
            };
            let mut ok = true;
            if let Some((client, url)) = &self.webhook
                && let Err(e) = self.post(client, url, body.clone()).await
            {
                ok = false;
                tracing::warn!(webhook = %url, error = %e, user = %event.user, "A push event could not be delivered to the webhook.");
            }
            if let Some((client, subject)) = &self.nats
                && let Err(e) = client.publish(subject.clone(), body).await
            {
                ok = false;
                tracing::warn!(subject = %subject, error = %e, "A push event could not be published.");
            }
            self.metrics.push(if ok { "sent" } else { "failed" });
        }
    }

    async fn post(&self, client: &HttpClient, url: &str, body: Bytes) -> Result<(), String> {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        retry(
            3,
            Duration::from_millis(200),
            Duration::from_secs(2),
            |_| {
                let body = body.clone();
                let bearer = bearer.clone();
                async move {
                    let mut headers = vec![(http_header("content-type"), "application/json")];
                    if let Some(b) = bearer.as_deref() {
                        headers.push((http_header("authorization"), b));
                    }
                    let req = request(axum::http::Method::POST, url, &headers, body)
                        .map_err(|e| (e.to_string(), false))?;
                    match client.send(req).await {
                        Ok(resp) if resp.status().is_success() => Ok(()),
                        Ok(resp) => {
                            let status = resp.status();
                            Err((format!("answered {status}"), status.is_server_error()))
                        }
                        Err(e) => {
                            let transient = e.is_transient();
                            Err((e.to_string(), transient))
                        }
                    }
                }
            },
        )
        .await
    }
}

fn http_header(name: &'static str) -> axum::http::HeaderName {
    axum::http::HeaderName::from_static(name)
}
