//! Estuary's origin: the source of truth that edges fill from. Receives uploads with TUS 1.0,
//! keeps a durable job queue in SQLite, packages each upload with `estuary package` in a child
//! process, publishes the asset to an object store (a local folder or an S3-compatible
//! bucket), and serves `/v/<asset>/...` with strong ETags, byte ranges and RFC 9530 digests.

// Handlers pass ready-made error responses up with `?`-style early returns; a response is
// built once per request, so its size in a `Result` costs nothing that matters.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod app;
pub mod config;
pub mod db;
pub mod jobs;
pub mod metrics;
pub mod routes;
pub mod storage;
pub mod tus;

use std::sync::Arc;
use std::sync::atomic::Ordering;

pub use config::OriginConfig;

/// Runs the origin until SIGTERM or SIGINT, then drains.
pub async fn run(config: OriginConfig) -> anyhow::Result<()> {
    // Edges fill from the origin over many connections (see `estuary_common::fds`).
    let life = estuary_common::service::Lifecycle::start(
        &config.shutdown,
        estuary_common::fds::UNCAPPED_SLOTS,
    );
    let state = config.state.dir.clone();
    let uploads = state.join("uploads");
    let work = state.join("work");
    for dir in [&state, &uploads] {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("state.dir: cannot create {}: {e}", dir.display()))?;
    }
    // Work of a previous run is unfinished by definition: its jobs are queued again.
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)
        .map_err(|e| anyhow::anyhow!("state.dir: cannot create {}: {e}", work.display()))?;
    let db =
        db::Db::open(&state.join("origin.db")).map_err(|e| anyhow::anyhow!("state.dir: {e}"))?;
    db.bind_storage(&config.storage.identity())
        .await
        .map_err(|e| anyhow::anyhow!("state.dir {}: {e}", state.display()))?;
    let requeued = db
        .requeue_interrupted(config.packaging.max_attempts)
        .await?;
    if requeued > 0 {
        tracing::info!(
            jobs = requeued,
            "Packaging jobs interrupted by the last stop are queued again."
        );
    }
    let storage =
        storage::Storage::open(&config.storage).map_err(|e| anyhow::anyhow!("storage: {e}"))?;
    let metrics = metrics::Metrics::new(&config.node.id, &config.node.site);
    let listen = config.listen.clone();
    let limits = config.limits.clone();
    let workers = config.packaging.workers;
    let expiry = config.uploads.expire_after;
    let app = Arc::new(app::App::new(config, db, storage, metrics));

    let main_listener = tokio::net::TcpListener::bind(listen.http)
        .await
        .map_err(|e| anyhow::anyhow!("listen.http {}: {e}", listen.http))?;
    let admin_listener = match listen.admin {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("listen.admin {addr}: {e}"))?,
        ),
        None => None,
    };

    let stop_rx = life.stop_signal();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(jobs::worker(Arc::clone(&app), stop_rx.clone()));
    }
    tasks.spawn(expire_uploads(Arc::clone(&app), expiry, stop_rx.clone()));
    tasks.spawn(watch_storage(Arc::clone(&app), stop_rx.clone()));
    tasks.spawn(sweep_orphans(Arc::clone(&app)));

    let router = routes::router(Arc::clone(&app), admin_listener.is_none());
    let main = tokio::spawn(estuary_common::listener::serve(
        main_listener,
        limits.clone(),
        router,
        Some(stop_rx.clone()),
        None,
    ));
    if let Some(l) = admin_listener {
        let r = app::admin_router().with_state(Arc::clone(&app));
        // The admin listener answers (readyz 503) until the process exits.
        tokio::spawn(estuary_common::listener::serve(l, limits, r, None, None));
    }
    app.ready.store(true, Ordering::SeqCst);
    tracing::info!(http = %listen.http, storage = %app.storage.describe, "The origin is serving.");
    if let Some(cp) = app.config.control_plane.clone() {
        let (identity, report) = heartbeat(&app);
        let beats = estuary_common::service::heartbeat::start(
            identity,
            cp,
            report,
            |_| {},
            stop_rx.clone(),
        );
        tasks.spawn(async move {
            let _ = beats.await;
        });
    }

    life.wait_for_stop().await;
    tracing::info!(
        "Stopping: draining requests; a job in progress will run again at the next start."
    );
    app.ready.store(false, Ordering::SeqCst);
    life.lame_duck().await;
    life.begin_drain();
    if life.drain(main).await.is_none() {
        tracing::warn!("Requests still running at the drain deadline were cut.");
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Removes uploads that were not completed within `expire_after`.
async fn expire_uploads(
    app: Arc<app::App>,
    expire_after: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let before = estuary_common::unix_now().saturating_sub(expire_after.as_secs());
        if let Ok(ids) = app.db.stale_uploads(before).await {
            for id in ids {
                if app.db.delete_upload(&id).await.is_ok() {
                    let _ = std::fs::remove_file(app.uploads_dir.join(format!("{id}.bin")));
                    tracing::info!(upload = %id, "An unfinished upload expired and was removed.");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(600)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Checks the storage every 10 s, so that `estuary_origin_storage_up` is current even when
/// nobody asks `/readyz`.
async fn watch_storage(app: Arc<app::App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let _ = app::check_storage(&app).await;
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Removes the objects of half-published assets once, at start: prefixes under `v/` with no
/// `asset.json`, whose newest object is older than `[storage] orphan_min_age`, and whose
/// asset this origin is not uploading or packaging. A published asset (with `asset.json`) is
/// never touched; a `ready` one whose `asset.json` vanished becomes `missing`.
async fn sweep_orphans(app: Arc<app::App>) {
    let objects = match app.storage.asset_objects().await {
        Ok(o) => o,
        Err(e) => {
            app.metrics.storage_errors.inc();
            tracing::warn!(error = %e, "The sweep for half-published assets could not list the storage; it runs at the next start.");
            return;
        }
    };
    let min_age = i64::try_from(app.config.storage.orphan_min_age.as_secs()).unwrap_or(i64::MAX);
    let now = i64::try_from(estuary_common::unix_now()).unwrap_or(i64::MAX);
    for (asset, (published, newest)) in objects {
        if published || now.saturating_sub(newest) < min_age {
            continue;
        }
        let state = match app.db.asset(&asset).await {
            Ok(a) => a.map(|a| a.state),
            Err(e) => {
                tracing::warn!(error = %e, asset = %asset, "The sweep skips an asset the database cannot tell about.");
                continue;
            }
        };
        if matches!(state.as_deref(), Some("uploading" | "queued" | "packaging")) {
            continue;
        }
        match app.storage.remove_asset(&asset).await {
            Ok(n) => {
                app.metrics.orphans_removed.inc_by(n);
                app.forget_manifest(&asset);
                if state.as_deref() == Some("ready") {
                    let _ = app.db.mark_missing(&asset).await;
                }
                tracing::info!(asset = %asset, objects = n, "The objects of a half-published asset were removed.");
            }
            Err(e) => {
                app.metrics.storage_errors.inc();
                tracing::warn!(error = %e, asset = %asset, "The objects of a half-published asset could not be removed.");
            }
        }
    }
}

/// The origin as its heartbeats name it, and what each beat reports (its readiness).
fn heartbeat(
    app: &Arc<app::App>,
) -> (
    estuary_common::service::heartbeat::Identity,
    impl FnMut() -> estuary_common::service::heartbeat::Report + Send + 'static,
) {
    let listen = &app.config.listen;
    let identity = estuary_common::service::heartbeat::Identity {
        id: app.config.node.id.clone(),
        site: app.config.node.site.clone(),
        role: estuary_common::cp::Role::Origin,
        listening: estuary_common::cp::Addresses {
            http: Some(format!("http://{}", listen.http)),
            https: None,
            admin: Some(format!("http://{}", listen.admin.unwrap_or(listen.http))),
        },
    };
    let app = Arc::clone(app);
    let report = move || estuary_common::service::heartbeat::Report {
        ready: app.ready.load(Ordering::SeqCst),
        ..Default::default()
    };
    (identity, report)
}
