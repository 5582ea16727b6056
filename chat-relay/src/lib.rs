//! Estuary's chat relay: WebSocket chat (1:1 and groups) with sent, delivered and read
//! receipts, presence, typing and per-device offline inboxes on an embedded SQLite store.
//! `relay.rs` is the messaging core (sans-IO), `store/` what it keeps, `server.rs` the
//! WebSocket shell, `config.rs` the config file. The frames are in `estuary_common::chat`.

pub mod cluster;
pub mod config;
pub mod media;
pub mod metrics;
pub mod push;
pub mod relay;
pub mod server;
pub mod store;
#[cfg(test)]
mod strategies;

use std::sync::Arc;
use std::sync::atomic::Ordering;

pub use config::ChatRelayConfig;

/// Runs the chat relay until SIGTERM or SIGINT; on either, every WebSocket gets a close frame
/// 1001 and the store is closed after the last connection.
pub async fn run(config: ChatRelayConfig) -> anyhow::Result<()> {
    let life = estuary_common::service::Lifecycle::start(
        &config.shutdown,
        estuary_common::fds::UNCAPPED_SLOTS,
    );
    let keys = config.key_set()?;
    let local = store::SqliteStore::open(&config.store.path)
        .map_err(|e| anyhow::anyhow!("store.path {}: {e}", config.store.path.display()))?;
    let metrics = Arc::new(metrics::Metrics::new(&config.node.id, &config.node.site));
    let stop = life.stop_signal();
    let shell = server::Shell {
        node: config.node.id.clone(),
        keys,
        max_ttl: config.auth.max_ttl,
        idle_timeout: config.limits.idle_timeout,
        media: config.media.clone(),
    };
    let (app, core) = match &config.cluster {
        None => {
            server::App::start(
                shell,
                config.chat.clone(),
                local,
                Arc::clone(&metrics),
                stop.clone(),
                None,
                config.push.as_ref(),
            )
            .await?
        }
        Some(cluster) => {
            let (store, links) = replica(cluster, &config.node.id, local).await?;
            server::App::start(
                shell,
                config.chat.clone(),
                store,
                Arc::clone(&metrics),
                stop.clone(),
                Some(links),
                config.push.as_ref(),
            )
            .await?
        }
    };
    let listen = config.listen.http;
    let listener = bind(listen, config.chat.socket_send_buffer)
        .map_err(|e| anyhow::anyhow!("listen.http {listen}: {e}"))?;
    let (routes, admin) = estuary_common::listener::with_admin(
        server::router(Arc::clone(&app)),
        server::admin_router(Arc::clone(&app)),
        config.listen.admin,
        &config.limits,
        &stop,
    )
    .await?;
    let server = tokio::spawn(estuary_common::listener::serve_upgradable(
        listener,
        config.limits.clone(),
        routes,
        Some(stop.clone()),
    ));
    let heartbeats = heartbeat(&config, &app, stop);
    tracing::info!(http = %listen, node = %config.node.id, "The chat relay is serving.");
    life.wait_for_stop().await;
    tracing::info!("Stopping: closing every WebSocket (1001) and draining requests.");
    app.serving.store(false, Ordering::SeqCst);
    life.lame_duck().await;
    life.begin_drain();
    app.tracker.close();
    let tracker = app.tracker.clone();
    if life
        .drain(async {
            let _ = server.await;
            tracker.wait().await;
        })
        .await
        .is_none()
    {
        tracing::warn!("The drain timed out; the remaining connections are cut.");
    }
    if let Some(a) = admin {
        let _ = a.await;
    }
    if let Some(h) = heartbeats {
        let _ = h.await;
    }
    // The relay thread ends when the last sender is gone; it closes the store.
    drop(app);
    if life
        .drain(tokio::task::spawn_blocking(move || core.join()))
        .await
        .is_none()
    {
        tracing::warn!("The relay thread did not end in time.");
    }
    Ok(())
}

/// Joins the cluster's log and brings the local replica up to its end before serving.
async fn replica(
    cluster: &config::ClusterConfig,
    node: &str,
    local: store::SqliteStore,
) -> anyhow::Result<(store::ReplicatedStore<cluster::NatsLog>, cluster::Links)> {
    let applied = match local.cluster_position()? {
        Some((_, applied)) => applied,
        None => 0,
    };
    let advanced = Arc::new(tokio::sync::Notify::new());
    let joined = cluster::join(cluster, node, applied, advanced).await?;
    let links = joined.links;
    let wait = cluster.timeout;
    let stream = joined.stream.clone();
    let last = joined.last;
    let store = tokio::task::spawn_blocking(move || {
        let mut store = store::ReplicatedStore::new(local, joined.log, &stream, wait)?;
        store.catch_up_to(last, wait)?;
        Ok::<_, store::StoreError>(store)
    })
    .await??;
    tracing::info!(
        nats = %cluster.nats,
        stream = %cluster.stream,
        applied = store.applied(),
        "The relay joined its cluster's log and caught up."
    );
    Ok((store, links))
}

/// Binds the WebSocket listener; accepted connections inherit its send buffer size.
fn bind(
    addr: std::net::SocketAddr,
    send_buffer: usize,
) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if send_buffer > 0 {
        socket.set_send_buffer_size(u32::try_from(send_buffer).unwrap_or(u32::MAX))?;
    }
    socket.bind(addr)?;
    socket.listen(4096)
}

/// With `[control_plane]`: registers as a `chat-relay` node and beats.
fn heartbeat(
    config: &ChatRelayConfig,
    app: &Arc<server::App>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let client = config.control_plane.clone()?;
    let identity = estuary_common::service::heartbeat::Identity::plain_http(
        &config.node,
        estuary_common::cp::Role::ChatRelay,
        config.listen.http,
        config.listen.admin,
    );
    // The relay reports its readiness and open WebSockets; it has no use for the replies.
    let app = Arc::clone(app);
    let beat = estuary_common::service::heartbeat::start(
        identity,
        client,
        move || estuary_common::service::heartbeat::Report {
            ready: app.serving.load(Ordering::SeqCst),
            load: estuary_common::cp::Load {
                connections: u64::try_from(app.metrics.connections.get()).unwrap_or(0),
                ..Default::default()
            },
            ..Default::default()
        },
        |_| {},
        stop,
    );
    Some(beat)
}
