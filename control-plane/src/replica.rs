//! The database's side of the registry, every poll interval: first the writes this replica
//! queued while its database was out of reach (see `crate::writeback`), then, with a shared
//! PostgreSQL database, what the other replicas wrote (new nodes, newer heartbeats, sites,
//! removals), folded into the registry; every 30 s, ended meetings are forgotten. Placements, purges and the audit log are read from
//! the database when needed, so they are shared already. Health is judged by each replica's
//! own monitor, as Traffic Monitor instances each poll every cache.

use std::sync::Arc;

use tokio::sync::watch;

use crate::app::App;

/// How often ended meetings are forgotten (in memory and in the database).
const MEETING_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs until `stop` turns true.
pub async fn run(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(app.config.health.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pruned = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Some(meetings) = &app.config.meetings
            && pruned.elapsed() >= MEETING_PRUNE_EVERY
        {
            crate::meetings_shared::prune(&app, meetings.grace.as_secs()).await;
            pruned = std::time::Instant::now();
        }
        if !app.pending.is_empty() {
            match app.pending.flush(&app.store).await {
                Ok(n) => tracing::info!(
                    writes = n,
                    "Writes queued during the database outage were made."
                ),
                // Not yet: the store's health says so (and logs it once).
                Err(_) => continue,
            }
        }
        if !app.store.is_shared() {
            // Nothing else may find out that the database is back.
            if !app.store.health().is_up() {
                app.store.ping().await;
            }
            continue;
        }
        let read_at = estuary_common::unix_now();
        if let Ok((sites, nodes)) = app.store.load().await
            && app
                .registry
                .merge(sites, nodes, read_at, &app.pending.node_ids())
        {
            tracing::debug!("Changes from other replicas were folded in.");
        }
    }
}
