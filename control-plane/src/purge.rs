//! Purge fan-out: a purge is stored with one delivery per edge, and this task delivers each to
//! the edge's admin listener (`DELETE /cache/<path>` or `/cache/<prefix>*`), authenticated with
//! that edge's own credential (`[auth.nodes.<id>] token`, which the edge also holds as its
//! `[control_plane] token`). Deliveries to an
//! edge that is down stay pending and are made when it is up again, even across restarts of
//! the control plane.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::App;

type Client = estuary_common::http::HttpClient;

/// Runs until `stop` turns true; `wake` starts a round at once.
pub async fn run(app: Arc<App>, wake: Arc<tokio::sync::Notify>, mut stop: watch::Receiver<bool>) {
    let client = app.http.clone();
    loop {
        round(&app, &client).await;
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Delivers every pending purge to every edge that is up now.
pub async fn round(app: &App, client: &Client) {
    let pending = match app.store.pending_deliveries().await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "Pending purges cannot be read.");
            return;
        }
    };
    if pending.is_empty() {
        return;
    }
    let snap = app.registry.snapshot(estuary_common::unix_now());
    for (purge, target, node) in pending {
        let Some(state) = snap.nodes.get(&node) else {
            continue;
        };
        if !state.up {
            continue;
        }
        let Some(admin) = &state.addresses.admin else {
            let _ = app
                .store
                .delivery_result(
                    purge,
                    &node,
                    Err(("the edge has no admin address".into(), true)),
                )
                .await;
            continue;
        };
        // Each edge is sent its own credential, which only it holds; the deprecated shared
        // token goes only to edges that registered with a site token.
        let token = match app.config.auth.nodes.get(&node) {
            Some(c) => c.token.as_str(),
            None => match &app.config.purge.edge_token {
                Some(t) => t.as_str(),
                None => {
                    let _ = app
                        .store
                        .delivery_result(
                            purge,
                            &node,
                            Err(("no credential for this edge: give it [auth.nodes] (or set [purge] edge_token)".into(), true)),
                        )
                        .await;
                    continue;
                }
            },
        };
        let result = deliver(client, admin, &target, token).await;
        match &result {
            Ok(()) => {
                tracing::info!(purge, node = %node, target = %target, "A purge reached an edge.")
            }
            Err((e, true)) => {
                tracing::warn!(purge, node = %node, target = %target, error = %e, "A purge did not reach an edge; it will be retried.")
            }
            Err((e, false)) => {
                tracing::warn!(purge, node = %node, target = %target, error = %e, "An edge refused a purge it can never apply; it is not retried.")
            }
        }
        if let Err(e) = app.store.delivery_result(purge, &node, result).await {
            tracing::error!(error = %e, "A purge delivery could not be recorded.");
        }
    }
}

/// Sends one purge; `Err((why, retry))`, where `retry` is false when the edge says the
/// request itself is wrong (400, 414, 422: it would answer the same forever).
async fn deliver(
    client: &Client,
    admin: &str,
    target: &str,
    token: &str,
) -> Result<(), (String, bool)> {
    let url = format!("{}/cache{target}", admin.trim_end_matches('/'));
    let auth = format!("Bearer {token}");
    let request = estuary_common::http::request(
        http::Method::DELETE,
        &url,
        &[(http::header::AUTHORIZATION, &auth)],
        bytes::Bytes::new(),
    )
    .map_err(|e| (e.to_string(), false))?;
    match client.send(request).await {
        Ok(resp) => {
            let status = resp.status();
            if status.is_success() {
                Ok(())
            } else {
                let retry = !matches!(status.as_u16(), 400 | 414 | 422);
                Err((format!("the edge answered {status}"), retry))
            }
        }
        Err(e) => Err((e.to_string(), true)),
    }
}
