//! Estuary's SFU: WebRTC selective forwarding. Publishers send over WHIP, watchers receive
//! over WHEP; media is forwarded without decoding.
//!
//! Pure core (no `Rtc`, no socket, no clock; time comes in as an argument): `room.rs` (who
//! receives which track, keyframe requests), `forward.rs` (each outgoing stream's sequence
//! numbers, timestamps and VP8 picture ids), `demux.rs` (which peer a datagram is for),
//! `tcp_framing.rs` (RFC 4571, for ICE-TCP).
//! `signal.rs` (the meeting's WebSocket messages; parsing never panics), `speaker.rs` (the
//! active speaker from audio levels).
//! Shell: `udp.rs` (the one media socket, read by the only shard or a reader thread),
//! `inbox.rs` (a shard's channel, and the eventfd that wakes a shard reading the socket), `tcp.rs` (the ICE-TCP
//! listener: a tokio task per connection), `shard.rs` (threads that
//! own rooms and drive str0m; `shard/meeting.rs` negotiates with meeting participants),
//! `peer.rs` (one `Rtc`), `http.rs` (WHIP/WHEP, the meeting WebSocket), `page.rs` (the
//! meeting page), `metrics.rs`,
//! `config.rs`.

pub mod cascade;
pub mod config;
pub mod demux;
pub mod forward;
pub mod http;
pub mod inbox;
pub mod layers;
pub mod meeting_ws;
pub mod metrics;
pub mod page;
pub mod peer;
pub mod record;
pub mod room;
pub mod shard;
pub mod signal;
pub mod speaker;
pub mod tcp;
pub mod tcp_framing;
pub mod udp;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use config::SfuConfig;

/// Runs the SFU until SIGTERM or SIGINT; then new sessions get 503, `/readyz` turns 503, and
/// after the drain every peer is closed.
pub async fn run(config: SfuConfig) -> anyhow::Result<()> {
    let life = estuary_common::service::Lifecycle::start(
        &config.shutdown,
        estuary_common::fds::UNCAPPED_SLOTS,
    );
    let keys = config.key_set()?;
    let metrics = Arc::new(metrics::Metrics::new(&config.node.id, &config.node.site));
    let mut factory = peer::RtcFactory::new(
        config.media.codecs.clone(),
        config.public_udp(),
        config.media.bwe_initial_bps,
        config.public_tcp(),
    )?;
    factory.publisher_kbps = config.rooms.max_publisher_kbps;
    let tcp_listener = match config.listen.tcp {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("listen.tcp {addr}: {e}"))?,
        ),
        None => None,
    };
    let tcp_ufrags = tcp_listener
        .as_ref()
        .map(|_| Arc::new(tcp::Ufrags::default()));
    let udp_addr = config.listen.udp;
    let socket = Arc::new(
        udp::bind(udp_addr, config.media.socket_recv_buffer)
            .map_err(|e| anyhow::anyhow!("listen.udp {udp_addr}: {e}"))?,
    );

    // Shards, then (with more than one) the UDP reader that feeds them; the only shard reads
    // the socket itself (one thread woken per datagram, not two).
    let (route_tx, route_rx) = std::sync::mpsc::channel();
    let mut route_rx = Some(route_rx);
    let one_shard = config.media.shards == 1;
    let mut shard_tx = Vec::new();
    let mut shard_threads = Vec::new();
    for i in 0..config.media.shards {
        let own_socket = if one_shard { route_rx.take() } else { None };
        let (tx, inbox) = inbox::channel(config.media.udp_queue, own_socket)?;
        let shard = shard::Shard::new(
            shard::ShardConfig {
                index: u16::try_from(i)?,
                factory: factory.clone(),
                limits: room::Limits {
                    max_participants: config.rooms.max_participants,
                    max_publishers: config.rooms.max_publishers,
                    keyframe_interval_min: config.media.keyframe_interval_min,
                    max_audio_forwarded: config.rooms.max_audio_forwarded,
                },
                max_rooms: config.rooms.max_rooms,
                connect_timeout: config.media.connect_timeout,
                ice_disconnect_grace: config.media.ice_disconnect_grace,
                shed_layers_above: config.media.shed_layers_above,
                restore_layers_below: config.media.restore_layers_below,
            },
            Arc::clone(&socket),
            route_tx.clone(),
            tcp_ufrags.clone(),
            Arc::clone(&metrics),
        );
        shard_threads.push(
            std::thread::Builder::new()
                .name(format!("sfu-shard-{i}"))
                .spawn(move || shard.run(inbox))?,
        );
        shard_tx.push(tx);
    }
    drop(route_tx);
    let stop_udp = Arc::new(AtomicBool::new(false));
    let reader = match route_rx {
        None => None,
        Some(route_rx) => {
            let socket = Arc::clone(&socket);
            let shards = shard_tx.clone();
            let metrics = Arc::clone(&metrics);
            let stop = Arc::clone(&stop_udp);
            Some(
                std::thread::Builder::new()
                    .name("sfu-udp".into())
                    .spawn(move || udp::reader(socket, shards, route_rx, metrics, stop))?,
            )
        }
    };

    let recorder = match config.recording.clone() {
        Some(rec) => {
            let r = Arc::new(record::Recorder::new(
                rec,
                factory.clone(),
                config.listen.udp,
                &metrics.registry,
            )?);
            r.upload_leftovers();
            Some(r)
        }
        None => None,
    };
    // ICE-TCP runs until the peers are closed at the end (as UDP media does), not only until
    // the stop signal.
    let (tcp_stop_tx, tcp_stop) = tokio::sync::watch::channel(false);
    let tcp_server = match (tcp_listener, tcp_ufrags) {
        (Some(listener), Some(ufrags)) => Some(tokio::spawn(tcp::serve(
            listener,
            Arc::new(tcp::TcpContext {
                ufrags,
                shards: shard_tx.clone(),
                metrics: Arc::clone(&metrics),
                max_connections: config.media.tcp_max_connections,
                first_frame_timeout: config.media.tcp_first_frame_timeout,
                write_queue: config.media.tcp_write_queue,
            }),
            tcp_stop,
        ))),
        _ => None,
    };

    let stop = life.stop_signal();
    let app = Arc::new(http::App {
        keys,
        max_ttl: config.auth.max_ttl.as_secs(),
        metrics: Arc::clone(&metrics),
        shards: shard_tx,
        shard_keys: (rand::random(), rand::random()),
        serving: AtomicBool::new(true),
        page_csp: page::csp(),
        stop: stop.clone(),
        recorder: recorder.clone(),
        cascades: cascade::Orders::default(),
        link_bind_ip: config.listen.udp.ip(),
        link_public_ip: config.public_udp().ip(),
    });
    let listen = config.listen.http;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("listen.http {listen}: {e}"))?;
    let (routes, admin) = estuary_common::listener::with_admin(
        http::router(Arc::clone(&app)),
        http::admin_router(Arc::clone(&app)),
        config.listen.admin,
        &config.limits,
        &stop,
    )
    .await?;
    // Upgradable: the meeting's WebSockets take their connections over.
    let server = tokio::spawn(estuary_common::listener::serve_upgradable(
        listener,
        config.limits.clone(),
        routes,
        Some(stop.clone()),
    ));
    let heartbeats = heartbeat(&config, &app, stop);
    tracing::info!(http = %listen, udp = %udp_addr, tcp = ?config.listen.tcp, node = %config.node.id, "The SFU is serving.");
    life.wait_for_stop().await;
    tracing::info!("Stopping: new sessions are refused; then every peer is closed.");
    app.serving.store(false, Ordering::SeqCst);
    life.lame_duck().await;
    life.begin_drain();
    if life.drain(server).await.is_none() {
        tracing::warn!("The drain timed out; the remaining requests are cut.");
    }
    if let Some(a) = admin {
        let _ = a.await;
    }
    if let Some(h) = heartbeats {
        let _ = h.await;
    }
    // Recordings are finished and handed to the origin while the shards still run.
    if let Some(r) = recorder {
        let done = life
            .drain(tokio::task::spawn_blocking(move || r.stop_all_and_wait()))
            .await;
        if done.is_none() {
            tracing::warn!(
                "Recordings were still being written or uploaded; the next start uploads them."
            );
        }
    }
    // The ICE-TCP connections and the UDP reader stop first (they hold senders to the
    // shards); the shards end when their last sender is gone (the app's), each closing its
    // peers.
    let _ = tcp_stop_tx.send(true);
    if let Some(t) = tcp_server
        && life.drain(t).await.is_none()
    {
        tracing::warn!("The ICE-TCP connections did not end in time.");
    }
    drop(app);
    let joined = life
        .drain(tokio::task::spawn_blocking(move || {
            stop_udp.store(true, Ordering::SeqCst);
            if let Some(r) = reader {
                let _ = r.join();
            }
            for t in shard_threads {
                let _ = t.join();
            }
        }))
        .await;
    if joined.is_none() {
        tracing::warn!("The media threads did not end in time.");
    }
    Ok(())
}

/// With `[control_plane]`: registers as an `sfu` node and beats with its rooms and peers.
fn heartbeat(
    config: &SfuConfig,
    app: &Arc<http::App>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let client = config.control_plane.clone()?;
    let identity = estuary_common::service::heartbeat::Identity::plain_http(
        &config.node,
        estuary_common::cp::Role::Sfu,
        config.listen.http,
        config.listen.admin,
    );
    let app = Arc::clone(app);
    let beat = estuary_common::service::heartbeat::start(
        identity,
        client,
        move || estuary_common::service::heartbeat::Report {
            ready: app.serving.load(Ordering::SeqCst),
            load: estuary_common::cp::Load {
                rooms: u64::try_from(app.metrics.rooms.get()).unwrap_or(0),
                peers: app.metrics.open_peers(),
                connections: app.metrics.open_peers(),
                ..Default::default()
            },
            rooms: app
                .metrics
                .open_room_names(estuary_common::cp::MAX_BEAT_ROOMS),
            ..Default::default()
        },
        |_| {},
        stop,
    );
    Some(beat)
}
