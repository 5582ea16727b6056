//! The lifecycle every Estuary node shares, so that each service (edge, origin, control plane,
//! steering, and the ones to come) is written once on it:
//!
//! - [`block_on`]: the process around a service: JSON logs, the one rustls crypto provider, a
//!   multi-thread tokio runtime. `src/main.rs` hands each service's `run` to it.
//! - [`Lifecycle`]: made at the top of a service's `run` from its `[shutdown]` table
//!   ([`ShutdownConfig`]); it sizes the descriptor table ([`crate::fds`]), owns the stop
//!   channel every background task watches, waits for SIGTERM or SIGINT (and calls the
//!   service's reload hook on SIGHUP; SIGHUP never ends a process), and bounds the drain by
//!   `[shutdown] drain_timeout`.
//! - [`admin`]: `/metrics`, `/healthz` and `/readyz` from a registry, a readiness flag and a
//!   check the service supplies.
//! - [`heartbeat`]: the heartbeat loop to the control plane, started from `[node]` and
//!   `[control_plane]` with one vocabulary for every node.
//!
//! The stop channel is a `watch::Receiver<bool>` that turns `true` once: tasks select on
//! `changed()` and serve loops on [`crate::listener::stopped`].

pub mod admin;
pub mod heartbeat;

use std::future::Future;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

/// The drain every node gets without a `[shutdown]` table: long enough for a player's
/// segment download in flight to finish, short enough for a rolling restart.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// `[shutdown]`: draining on SIGTERM or SIGINT, the same table in every service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take to finish after SIGTERM or SIGINT before the
    /// process exits (default 30s).
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long the service goes on serving after SIGTERM or SIGINT with `/readyz` answering
    /// 503, before it stops accepting connections: time for load balancers, the control plane
    /// and steering to take it out of rotation (default 0s: stop accepting at once).
    #[serde(default, with = "humantime_serde")]
    pub lame_duck: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            lame_duck: Duration::ZERO,
        }
    }
}

fn default_drain_timeout() -> Duration {
    DEFAULT_DRAIN_TIMEOUT
}

/// Runs a service's top-level future in the process shape every service shares: JSON logs on
/// standard error, the one rustls crypto provider, a multi-thread runtime whose threads are
/// named after the service.
pub fn block_on<E>(thread_name: &str, service: impl Future<Output = Result<(), E>>) -> Result<(), E>
where
    E: From<std::io::Error>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(thread_name)
        .build()?;
    // SIGHUP's default action ends the process, and systemd counts that as a clean exit
    // (`Restart=on-failure` does not bring it back): take it over before the service starts,
    // so that a reload sent while the service is still starting is not fatal. A handler,
    // once installed, stays for the life of the process; the wait below listens to it.
    runtime.block_on(async {
        if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            eprintln!("estuary: the SIGHUP handler could not be installed: {e}");
        }
    });
    // Logs start after the takeover: a service that has logged cannot die of a SIGHUP.
    crate::logging::init_json();
    crate::tls::install_default_provider();
    runtime.block_on(service)
}

/// What a service goes through from start to exit: the descriptor table sized, a stop channel
/// for its tasks, the wait for a stop signal, and a drain bounded by `[shutdown]`.
#[derive(Debug)]
pub struct Lifecycle {
    stop: watch::Sender<bool>,
    drain_timeout: Duration,
    lame_duck: Duration,
}

impl Lifecycle {
    /// Starts a service's lifecycle: sizes the descriptor table for `descriptor_slots` (see
    /// [`crate::fds::prepare`]; [`crate::fds::UNCAPPED_SLOTS`] for services without a
    /// connection cap) before anything is opened.
    pub fn start(shutdown: &ShutdownConfig, descriptor_slots: u64) -> Self {
        crate::fds::prepare(descriptor_slots);
        let (stop, _) = watch::channel(false);
        Self {
            stop,
            drain_timeout: shutdown.drain_timeout,
            lame_duck: shutdown.lame_duck,
        }
    }

    /// A receiver of the stop channel: it turns `true` when the drain begins.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// `[shutdown] drain_timeout`.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// Waits for SIGTERM or SIGINT. A SIGHUP is logged (the service has nothing to reload).
    pub async fn wait_for_stop(&self) {
        wait_for_signals(|| {
            tracing::info!("SIGHUP: this service has nothing to reload; it goes on as it was.");
        })
        .await;
    }

    /// Waits for SIGTERM or SIGINT, calling `reload` on every SIGHUP meanwhile.
    pub async fn wait_for_stop_or_reload(&self, reload: impl FnMut()) {
        wait_for_signals(reload).await;
    }

    /// Serves on for `[shutdown] lame_duck` (the service has turned `/readyz` to 503 first),
    /// so that whoever routes to it moves away before it stops accepting.
    pub async fn lame_duck(&self) {
        if !self.lame_duck.is_zero() {
            tracing::info!(lame_duck = ?self.lame_duck, "Out of rotation (/readyz 503); still serving until the lame-duck period ends.");
            tokio::time::sleep(self.lame_duck).await;
        }
    }

    /// Begins the drain: every receiver of [`Lifecycle::stop_signal`] sees `true`.
    pub fn begin_drain(&self) {
        self.stop.send_replace(true);
    }

    /// Waits for `work` (the serve loops finishing their requests in flight) at most
    /// `[shutdown] drain_timeout`; `None` when the deadline passed first.
    pub async fn drain<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::time::timeout(self.drain_timeout, work).await.ok()
    }
}

/// Resolves on SIGTERM or SIGINT, calling `reload` on each SIGHUP. When the handlers cannot
/// be installed, falls back to Ctrl-C alone.
async fn wait_for_signals(mut reload: impl FnMut()) {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(mut term), Ok(mut int), Ok(mut hup)) => loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => reload(),
            }
        },
        (term, int, hup) => {
            let e = [term.err(), int.err(), hup.err()]
                .into_iter()
                .flatten()
                .next();
            tracing::warn!(error = ?e, "The signal handlers could not be installed; only Ctrl-C stops the service.");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_gets_the_same_shutdown_table_and_default() {
        let c: ShutdownConfig = crate::config::from_toml("").expect("empty");
        assert_eq!(c.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(ShutdownConfig::default(), c);
        let c: ShutdownConfig = crate::config::from_toml("drain_timeout = \"2s\"").expect("2s");
        assert_eq!(c.drain_timeout, Duration::from_secs(2));
        let e =
            crate::config::from_toml::<ShutdownConfig>("drain_timout = \"2s\"").expect_err("typo");
        assert_eq!(e.key, "drain_timout");
    }

    #[tokio::test]
    async fn the_drain_ends_at_its_deadline_and_the_stop_reaches_every_task() {
        let life = Lifecycle {
            stop: watch::channel(false).0,
            drain_timeout: Duration::from_millis(50),
            lame_duck: Duration::ZERO,
        };
        let mut rx = life.stop_signal();
        let task = tokio::spawn(async move { crate::listener::stopped(&mut rx).await });
        life.begin_drain();
        assert!(life.drain(task).await.is_some(), "the task saw the stop");
        assert_eq!(life.drain(async { 7 }).await, Some(7));
        assert!(life.drain(std::future::pending::<()>()).await.is_none());
    }
}
