//! Estuary's steering service: which edge serves a play request. It follows the control
//! plane's state feed (or reads a static state file), places each client by coverage zone or
//! location, ranks edges with [`choose::choose`] (a pure function the geo-DNS front end will
//! share), hands out signed playback URLs, rewrites manifests for HLS and DASH Content
//! Steering, and answers the players' steering reloads from live health and load.

// Handlers return ready-made error responses, as in the control plane.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod catalog;
pub mod choose;
pub mod client;
pub mod config;
pub mod dns;
pub mod dns_wire;
pub mod geo;
pub mod manifest;
pub mod state;

use std::sync::Arc;
use std::sync::atomic::Ordering;

pub use config::SteeringConfig;

/// Loads the coverage zone file named by `[geo]`, if any.
pub fn load_zones(
    config: &SteeringConfig,
) -> Result<geo::CoverageZones, estuary_common::config::ConfigError> {
    match &config.geo.coverage_zones {
        None => Ok(geo::CoverageZones::default()),
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| {
                estuary_common::config::ConfigError::new(
                    "geo.coverage_zones",
                    format!("{}: {e}", path.display()),
                )
            };
            let text = std::fs::read_to_string(path).map_err(|e| bad(&e))?;
            geo::CoverageZones::parse(&text).map_err(|e| bad(&e))
        }
    }
}

/// Runs the steering service until SIGTERM or SIGINT.
pub async fn run(config: SteeringConfig) -> anyhow::Result<()> {
    // Players poll steering; no connection cap, so room for many (see `estuary_common::fds`).
    let life = estuary_common::service::Lifecycle::start(
        &config.shutdown,
        estuary_common::fds::UNCAPPED_SLOTS,
    );
    let zones = load_zones(&config)?;
    let holder = Arc::new(state::StateHolder::new(zones, app::prefer_https(&config)));
    let metrics = Arc::new(app::Metrics::new());
    if let Some(path) = &config.control_plane.state_file {
        let snap = state::read_state_file(path)?;
        state::FeedObserver::installed(metrics.as_ref(), &snap);
        holder.install(snap);
    }
    let listen = config.listen.http;
    let limits = config.limits.clone();
    let urls = config.control_plane.replica_urls();
    let feed = (!urls.is_empty())
        .then_some(urls)
        .zip(config.control_plane.token.clone());
    let wait = config.control_plane.poll_wait;
    let ca_file = config.control_plane.ca_file.clone();
    let load_refresh = config.control_plane.load_refresh;
    let app = Arc::new(app::App::new(
        config,
        Arc::clone(&holder),
        Arc::clone(&metrics),
    )?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("listen.http {listen}: {e}"))?;
    let stop_rx = life.stop_signal();
    let follower = feed.map(|(urls, token)| {
        tokio::spawn(state::follow_feed(
            state::Feed {
                replicas: estuary_common::cp::Replicas::new(urls),
                ca_file: ca_file.clone(),
                token,
                wait,
                load_refresh,
            },
            Arc::clone(&holder),
            metrics.clone() as Arc<dyn state::FeedObserver>,
            stop_rx.clone(),
        ))
    });
    let dns = match (app.config.listen.dns, &app.config.dns) {
        (Some(addr), Some(dns_config)) => {
            let serial =
                u32::try_from(estuary_common::unix_now() % u64::from(u32::MAX)).unwrap_or(1);
            let zone = dns::Zone::new(dns_config, app.policy(), serial)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let handler = dns::Handler::new(
                zone,
                Arc::clone(&holder),
                dns::RateLimit::from_config(dns_config),
                match &dns_config.cookie_secret {
                    Some(hex) => dns::CookieSecret::from_hex(hex)
                        .ok_or_else(|| anyhow::anyhow!("dns.cookie_secret: 32 hex digits"))?,
                    None => dns::CookieSecret::random(),
                },
                dns::DnsMetrics::new(&metrics.registry)
                    .map_err(|e| anyhow::anyhow!("dns metrics: {e}"))?,
            );
            let sockets = dns::bind(addr, dns_config.udp_workers()).await?;
            Some(tokio::spawn(dns::serve(
                sockets,
                handler,
                dns_config.tcp_timeout,
                stop_rx.clone(),
            )))
        }
        _ => None,
    };
    let heartbeats = heartbeat(&app, &holder, stop_rx.clone());
    // Handlers see the client's address as `ConnectInfo<SocketAddr>`.
    let server = tokio::spawn(estuary_common::listener::serve(
        listener,
        limits,
        app::router(Arc::clone(&app)),
        Some(stop_rx.clone()),
        None,
    ));
    tracing::info!(http = %listen, "The steering service is serving.");
    life.wait_for_stop().await;
    tracing::info!("Stopping: draining requests.");
    app.draining.store(true, Ordering::SeqCst);
    life.lame_duck().await;
    life.begin_drain();
    let _ = life.drain(server).await;
    if let Some(f) = follower {
        let _ = f.await;
    }
    if let Some(h) = heartbeats {
        let _ = h.await;
    }
    if let Some(d) = dns
        && let Ok(Err(e)) = d.await
    {
        tracing::error!(error = %e, "The geo-DNS failed.");
    }
    Ok(())
}

/// With `[node]` and a control plane URL: registers as a `steering` node and beats (ready
/// once a snapshot is loaded), so the control plane lists and checks it like any node.
fn heartbeat(
    app: &Arc<app::App>,
    holder: &Arc<state::StateHolder>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let node = app.config.node.as_ref()?;
    let client = app.config.heartbeat_client()?;
    for (old, new) in app.config.deprecated_keys() {
        tracing::warn!(
            key = old,
            replacement = new,
            "A deprecated config key is in use; it will be refused in a later release."
        );
    }
    let identity = estuary_common::service::heartbeat::Identity {
        id: node.id.clone(),
        site: node.site.clone(),
        role: estuary_common::cp::Role::Steering,
        listening: estuary_common::cp::Addresses {
            http: Some(app.config.public_url()),
            https: None,
            admin: Some(format!("http://{}", app.config.listen.http)),
        },
    };
    let holder = Arc::clone(holder);
    let report = move || estuary_common::service::heartbeat::Report {
        ready: holder.view().is_some(),
        ..Default::default()
    };
    Some(estuary_common::service::heartbeat::start(
        identity,
        client,
        report,
        |_| {},
        stop,
    ))
}
