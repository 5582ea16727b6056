//! Estuary's control plane: the registry of sites and nodes, their health (heartbeats plus a
//! Traffic Monitor-style poll of every node's `/readyz`, with hysteresis), the versioned state
//! feed steering consumes, and an audit log of operator actions. SQLite (one control plane) or
//! PostgreSQL (replicas sharing it) keeps what must survive a restart.

// Handlers return ready-made error responses; see the origin crate for the same choice.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod cli;
pub mod config;
pub mod health;
pub mod history;
pub mod identity;
pub mod meetings;
pub mod meetings_shared;
pub mod monitor;
pub mod placement;
pub mod plan;
pub mod purge;
pub mod pushes;
pub mod registry;
pub mod replica;
pub mod store;
pub mod writeback;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use config::ControlPlaneConfig;

/// Runs the control plane until SIGTERM or SIGINT.
pub async fn run(config: ControlPlaneConfig) -> anyhow::Result<()> {
    // Every node heartbeats and the steering feeds long-poll (see `estuary_common::fds`).
    let life = estuary_common::service::Lifecycle::start(
        &config.shutdown,
        estuary_common::fds::UNCAPPED_SLOTS,
    );
    let store = match config.database.database() {
        Ok(config::Database::Sqlite(path)) => {
            store::Store::open_sqlite(&path, config.database.timeout)
        }
        Ok(config::Database::Postgres(url)) => {
            store::Store::open_postgres(&url, config.database.timeout).await
        }
        Err(why) => return Err(anyhow::anyhow!("database.url: {why}")),
    }
    .map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
    let (sites, nodes) = store.load().await?;
    tracing::info!(
        sites = sites.len(),
        nodes = nodes.len(),
        "The registry was loaded; every node is checked again."
    );
    let h = &config.health;
    let registry = registry::Registry::new(sites, nodes, h.down_after, h.up_after)
        .with_panic_threshold(h.panic_threshold);
    let listen = config.listen.http;
    let limits = config.limits.clone();
    let history_step = config.dashboard.history_step.as_secs();
    let http = app::outbound_client(&config, std::time::Duration::from_secs(5), 16 << 20)
        .map_err(|e| anyhow::anyhow!("client.ca_file: {e}"))?;
    let app = Arc::new(app::App {
        http,
        config,
        registry,
        store,
        metrics: app::Metrics::new(),
        ready: AtomicBool::new(false),
        purge_wake: Arc::new(tokio::sync::Notify::new()),
        history: std::sync::Mutex::new(history::History::new(history_step, 3600)),
        refusals_audited: Default::default(),
        pending: Default::default(),
        placements_seen: Default::default(),
        site_tokens_used: Default::default(),
        stop: life.stop_signal(),
        meetings: Default::default(),
        started: std::time::Instant::now(),
    });
    let tls = match &app.config.tls {
        Some(files) => Some(
            files
                .server_config()
                .map_err(|e| anyhow::anyhow!("tls: {e}"))?,
        ),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("listen.http {listen}: {e}"))?;
    let stop_rx = app.stop.clone();
    let monitor = tokio::spawn(monitor::run(Arc::clone(&app), stop_rx.clone()));
    let purger = tokio::spawn(purge::run(
        Arc::clone(&app),
        Arc::clone(&app.purge_wake),
        stop_rx.clone(),
    ));
    let replica = tokio::spawn(replica::run(Arc::clone(&app), stop_rx.clone()));
    let pushes = tokio::spawn(pushes::run(Arc::clone(&app), stop_rx.clone()));
    let server = tokio::spawn(estuary_common::listener::serve(
        listener,
        limits,
        app::router(Arc::clone(&app)),
        Some(stop_rx.clone()),
        tls,
    ));
    app.ready.store(true, Ordering::SeqCst);
    tracing::info!(http = %listen, "The control plane is serving.");
    life.wait_for_stop().await;
    tracing::info!("Stopping.");
    app.ready.store(false, Ordering::SeqCst);
    life.lame_duck().await;
    life.begin_drain();
    let _ = life.drain(server).await;
    let _ = monitor.await;
    let _ = purger.await;
    let _ = replica.await;
    let _ = pushes.await;
    Ok(())
}
