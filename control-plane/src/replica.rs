//! Replicas sharing one PostgreSQL database: each receives the heartbeats of the nodes that
//! talk to it and writes them through; this task folds in, every poll interval, what the
//! others wrote (new nodes, newer heartbeats, sites, removals). Placements, purges and the
//! audit log are read from the database when needed, so they are shared already. Health is
//! judged by each replica's own monitor, as Traffic Monitor instances each poll every cache.

use std::sync::Arc;

use tokio::sync::watch;

use crate::app::App;

/// Runs until `stop` turns true.
pub async fn run(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(app.config.health.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let read_at = estuary_common::unix_now();
        match app.store.load().await {
            Ok((sites, nodes)) => {
                if failing {
                    tracing::info!("The shared database answers again.");
                    failing = false;
                }
                if app.registry.merge(sites, nodes, read_at) {
                    tracing::debug!("Changes from other replicas were folded in.");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "The shared database cannot be read; this replica serves what it last knew.");
                    failing = true;
                }
            }
        }
    }
}
