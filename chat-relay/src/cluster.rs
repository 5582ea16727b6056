//! The NATS side of a clustered relay (`[cluster]`): the shared log on a JetStream stream
//! (`chat.<stream>.log`), followed in order by an ordered consumer and handed to the relay
//! thread's [`ReplicatedStore`](crate::store::ReplicatedStore) through [`NatsLog`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use estuary_common::chat::{LogEntry, Signal};
use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};

use crate::config::ClusterConfig;
use crate::store::{Log, StoreError, StoreResult};

/// Entries read ahead of the relay thread.
const READ_AHEAD: usize = 4096;

/// The log as the relay thread sees it: appends wait for JetStream's acknowledgement (the
/// entry is stored), entries come in stream order from the follower task.
pub struct NatsLog {
    handle: tokio::runtime::Handle,
    js: jetstream::Context,
    subject: String,
    entries: mpsc::Receiver<(u64, LogEntry)>,
    timeout: Duration,
}

/// A connected cluster: the log, and the stream's last sequence when it was joined.
pub struct Joined {
    pub log: NatsLog,
    pub last: u64,
    pub stream: String,
    pub links: Links,
}

/// What the shell needs besides the log: the wake-up when the log advanced, and the NATS
/// subject of the relays' signals (typing, presence, rooms).
pub struct Links {
    pub advanced: Arc<Notify>,
    pub client: async_nats::Client,
    pub subject: String,
    /// This relay's node id.
    pub me: String,
}

fn log_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Log(e.to_string())
}

/// Connects, creates the stream if needed and starts following it after `applied`; every
/// entry handed over wakes `advanced`.
pub async fn join(
    config: &ClusterConfig,
    node: &str,
    applied: u64,
    advanced: Arc<Notify>,
) -> anyhow::Result<Joined> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("estuary-chat-relay {node}"))
        .connection_timeout(config.timeout);
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    let client = tokio::time::timeout(
        config.timeout,
        async_nats::connect_with_options(config.nats.as_str(), options),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "cluster.nats {}: no answer within {:?}",
            config.nats,
            config.timeout
        )
    })?
    .map_err(|e| anyhow::anyhow!("cluster.nats {}: {e}", config.nats))?;
    let js = jetstream::new(client.clone());
    let subject = format!("chat.{}.log", config.stream);
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            // The log is the record every replica is built from: nothing expires.
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cluster.stream {}: {e}", config.stream))?;
    let last = stream
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("cluster.stream {}: {e}", config.stream))?
        .state
        .last_sequence;
    let (tx, entries) = mpsc::channel(READ_AHEAD);
    tokio::spawn(follow(stream, applied, tx, Arc::clone(&advanced)));
    Ok(Joined {
        log: NatsLog {
            handle: tokio::runtime::Handle::current(),
            js,
            subject,
            entries,
            timeout: config.timeout,
        },
        last,
        stream: config.stream.clone(),
        links: Links {
            advanced,
            client,
            subject: format!("chat.{}.signal", config.stream),
            me: node.to_owned(),
        },
    })
}

/// Publishes the relay's signals until the relay thread drops its sender.
pub async fn publish_signals(
    client: async_nats::Client,
    subject: String,
    mut signals: mpsc::Receiver<Signal>,
) {
    while let Some(signal) = signals.recv().await {
        match serde_json::to_vec(&signal) {
            Ok(payload) => {
                if let Err(e) = client.publish(subject.clone(), payload.into()).await {
                    tracing::warn!(error = %e, "A chat signal could not be published.");
                }
            }
            Err(e) => tracing::error!(error = %e, "A chat signal could not be encoded."),
        }
    }
}

/// The other relays' signals, parsed; a bad one is logged and skipped.
pub async fn subscribe_signals(
    client: &async_nats::Client,
    subject: &str,
) -> anyhow::Result<impl futures_util::Stream<Item = Signal> + use<>> {
    let subscriber = client
        .subscribe(subject.to_owned())
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to {subject}: {e}"))?;
    Ok(subscriber.filter_map(|m| async move {
        match serde_json::from_slice::<Signal>(&m.payload) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "A chat signal is not valid; it is skipped.");
                None
            }
        }
    }))
}

/// Reads the stream in order from `applied + 1`, for as long as the relay runs; after an
/// error it starts again where it stopped.
async fn follow(
    stream: stream::Stream,
    applied: u64,
    tx: mpsc::Sender<(u64, LogEntry)>,
    advanced: Arc<Notify>,
) {
    let mut next = applied + 1;
    loop {
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: next,
                },
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(c) => c.messages().await,
            Err(e) => {
                tracing::warn!(error = %e, "The chat log could not be followed; trying again.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "The chat log could not be read; trying again.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "Reading the chat log failed; following it again.");
                    break;
                }
            };
            let Ok(seq) = message.info().map(|i| i.stream_sequence) else {
                continue;
            };
            if seq < next {
                continue;
            }
            next = seq + 1;
            match serde_json::from_slice::<LogEntry>(&message.payload) {
                Ok(entry) => {
                    if tx.send((seq, entry)).await.is_err() {
                        return;
                    }
                    advanced.notify_one();
                }
                Err(e) => {
                    tracing::error!(seq, error = %e, "A chat log entry is not valid; it is skipped.");
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Log for NatsLog {
    fn append(&mut self, entry: &LogEntry) -> StoreResult<u64> {
        let payload = serde_json::to_vec(entry).map_err(log_error)?;
        let js = self.js.clone();
        let subject = self.subject.clone();
        let timeout = self.timeout;
        // The timer is made inside the runtime's context.
        let ack = self.handle.block_on(async move {
            tokio::time::timeout(timeout, async move {
                js.publish(subject, payload.into()).await?.await
            })
            .await
        });
        match ack {
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(e)) => Err(log_error(e)),
            Err(_) => Err(log_error(format!(
                "no acknowledgement within {:?}",
                self.timeout
            ))),
        }
    }

    fn next(&mut self, wait: Duration) -> StoreResult<Option<(u64, LogEntry)>> {
        if wait.is_zero() {
            return match self.entries.try_recv() {
                Ok(e) => Ok(Some(e)),
                Err(mpsc::error::TryRecvError::Empty) => Ok(None),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    Err(log_error("the follower ended"))
                }
            };
        }
        let entries = &mut self.entries;
        match self
            .handle
            .block_on(async move { tokio::time::timeout(wait, entries.recv()).await })
        {
            Ok(Some(e)) => Ok(Some(e)),
            Ok(None) => Err(log_error("the follower ended")),
            Err(_) => Ok(None),
        }
    }
}
