//! Pushes as desired state. A push is an operator's intent: when it cannot be placed at once
//! (the asset not yet on an origin that is up, no edge up with room in a wanted site), it is
//! recorded as pending, shown in `fill status` and the dashboard, and placed by [`run`] as
//! soon as it can be. Placing writes the placements before it forgets the pending push, so a
//! failure in between repeats the placement (placements are upserts) and never loses it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::App;
use crate::store::{PendingPush, StoreError};

/// Why a push was not placed.
pub enum NotPlaced {
    /// Not yet: what is missing (kept as a pending push).
    Later(String),
    /// The control plane itself cannot place assets (its config): the operator must act.
    Refused(String),
    Store(StoreError),
}

/// Places `asset` on `replicas` edges per wanted site (all sites with an edge when `sites` is
/// `None`); the asset's bytes and the chosen (node, site) pairs.
pub async fn place(
    app: &App,
    asset: &str,
    sites: Option<&[String]>,
    replicas: usize,
) -> Result<(u64, Vec<(String, String)>), NotPlaced> {
    let (bytes, merkle_root) = crate::app::asset_size(app, asset).await?;
    let placements = app.store.placements().await.map_err(NotPlaced::Store)?;
    let used = crate::app::used_bytes(&placements, Some(asset));
    let snap = app.registry.snapshot(estuary_common::unix_now());
    let chosen = crate::placement::place(asset, bytes, &snap, sites, replicas, &used)
        .map_err(NotPlaced::Later)?;
    app.store
        .add_placements(asset, bytes, &merkle_root, chosen.clone())
        .await
        .map_err(NotPlaced::Store)?;
    Ok((bytes, chosen))
}

/// The node list of an audit entry.
pub fn nodes_of(chosen: &[(String, String)]) -> String {
    chosen
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Tries every pending push once.
pub async fn place_pending(app: &App) {
    let Ok(pending) = app.store.pending_pushes().await else {
        // The database's health says why (and the next round tries again).
        return;
    };
    for push in pending {
        match place(app, &push.asset, push.sites.as_deref(), push.replicas).await {
            Ok((bytes, chosen)) => {
                if app.store.take_pending_push(&push.asset).await.is_ok() {
                    let waited = estuary_common::unix_now().saturating_sub(push.since);
                    app.audit(
                        &push.who,
                        "push.placed",
                        &push.asset,
                        format!(
                            "{bytes} bytes to {} after {waited} s pending",
                            nodes_of(&chosen)
                        ),
                    )
                    .await;
                }
            }
            Err(NotPlaced::Later(reason) | NotPlaced::Refused(reason)) if reason != push.reason => {
                let _ = app
                    .store
                    .put_pending_push(&PendingPush { reason, ..push })
                    .await;
            }
            Err(_) => {}
        }
    }
}

/// Places pending pushes every poll interval (at least every second) until `stop` turns
/// true.
pub async fn run(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let every = app.config.health.poll_interval.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        place_pending(&app).await;
    }
}
