//! The hub: publish, subscribe, fan-out. Shared by every transport.
//!
//! Publishing goes through one ordered log task: drafts queue up, are
//! appended to [`History`] in batches (one durable commit per batch), and
//! each positioned publication is then fanned out, in order, to the
//! subscribers whose matchers select one of its topics. A publisher's call
//! returns once its publication is stored, so nothing acknowledged is lost.
//!
//! With a shared engine (Redis, NATS) the log task only stores: every
//! node, this one included, fans out what the engine's feed brings, in the
//! engine's `seq` order, so all nodes deliver the same order.
//!
//! Fan-out never blocks on a subscriber: each has a bounded queue, and one
//! that is full is dropped from the hub with the reason
//! [`SLOW_CONSUMER`]; it resumes from history when it reconnects.
//!
//! The hub knows no protocol: what it carries for one (a server command
//! for a Centrifugo connection) is bytes to it.
//!
//! - [`Hub`] (here): the facade — publish, subscribe, presence, shutdown.
//! - `index`: the subscriber index and the fan-out step.
//! - [`sink`]: a connection's bounded queue; [`clock`]: the write clock
//!   that coalesces a busy connection's writes.
//! - [`presence`]: who is in a channel (this node's, and a shared store's).
//! - `tasks`: the publish log, the engine feed, presence refresh, sweep.

pub mod clock;
mod index;
#[cfg(test)]
mod index_model_tests;
pub mod presence;
pub mod sink;
#[cfg(test)]
mod sink_model_tests;
mod tasks;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::engine::{Broker, ClusterEvent, Engine, Envelope};
use crate::history::{ClientInfo, Draft, History, Publication};
use crate::protocol::mercure::matcher::TopicMatcher;
pub use index::SubscriptionHandle;
use index::{Fanout, Index, Subscriber};
pub use presence::Presence;
pub use sink::{Offer, Sink};
use tasks::{run_feed, run_log, run_presence_refresh, run_sweep};

/// Close reason for a subscriber whose queue overflowed.
pub const SLOW_CONSUMER: &str = "slow consumer: the delivery queue is full";
/// Close reason when the hub shuts down.
pub const SHUTTING_DOWN: &str = "the hub is shutting down";
/// Close reason when the shared engine lost state this node relied on:
/// clients reconnect and recover from history, which tells them what is lost.
pub const ENGINE_RESET: &str = "the shared engine lost state: reconnect and recover";

/// Why a hub operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// History refused or failed the operation.
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
    /// The hub is shutting down.
    #[error("the hub is shutting down")]
    Closed,
}

/// Decides, per publication, whether a subscriber may receive it (Mercure
/// private updates, later Centrifugo channel permissions).
pub trait Filter: Send + Sync {
    /// True when the publication may be delivered.
    fn admits(&self, publication: &Publication) -> bool;
}

/// Tunables of the hub core.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Publications a subscriber may have queued before it is dropped.
    pub queue_capacity: usize,
    /// Bytes of publications a subscriber may have queued before it is
    /// dropped (`limits.queue_bytes`).
    pub queue_bytes: usize,
    /// Most publications appended in one history commit.
    pub max_batch: usize,
    /// How often expired history is reclaimed.
    pub sweep_interval: Duration,
    /// The write clock's period (zero: no clock). A connection that has
    /// just written publications writes again at the next tick, with all
    /// that arrived meanwhile: fewer system calls and packets per
    /// publication on busy connections, at most this much added latency
    /// (see [`clock`]).
    pub write_interval: Duration,
}

/// What a connection's queue carries.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A publication on a subscribed channel.
    Publication(Arc<Publication>),
    /// A client joined a channel (for subscriptions asking for join/leave).
    Join(Arc<str>, Arc<ClientInfo>),
    /// A client left a channel.
    Leave(Arc<str>, Arc<ClientInfo>),
    /// A server API command for this connection (Centrifugo).
    Control(Bytes),
}

/// Told when a channel gets its first exact subscriber on this node (true)
/// or loses its last (false): webhooks' `occupied` and `vacated`.
pub type OccupancyHandler = Box<dyn Fn(&str, bool) + Send + Sync>;

/// A connection with a single subscription (an SSE stream).
pub struct Subscription {
    /// The subscription.
    pub handle: SubscriptionHandle,
    /// The connection's queue: deliveries, in order.
    pub sink: Arc<Sink>,
}

pub(crate) struct Job {
    draft: Draft,
    reply: oneshot::Sender<Result<Arc<Publication>, HubError>>,
}

/// Counters of the hub core.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct HubStats {
    /// Live subscribers.
    pub subscribers: usize,
    /// Publications accepted since start.
    pub publications: u64,
    /// Publications queued to subscribers since start.
    pub deliveries: u64,
    /// Publications not queued because the subscriber's queue was full
    /// (the subscriber is then disconnected).
    pub drops: u64,
    /// Subscribers dropped for not keeping up.
    pub slow_disconnects: u64,
}

/// Receives server API commands other nodes broadcast (set by the
/// Centrifugo node: user, client, command).
pub type ControlHandler = Box<dyn Fn(&str, Option<&str>, Bytes) + Send + Sync>;

/// This node's place in a cluster sharing an engine.
struct Cluster {
    engine: &'static str,
    broker: Arc<dyn Broker>,
    node_id: String,
}

/// The hub core.
pub struct Hub {
    cluster: Option<Cluster>,
    on_control: OnceLock<ControlHandler>,
    history: Arc<dyn History>,
    fanout: Arc<Fanout>,
    log_tx: RwLock<Option<mpsc::Sender<Job>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
    open_sinks: Arc<sink::OpenSinks>,
    publications: Arc<AtomicU64>,
    options: HubOptions,
    presence: Presence,
}

impl Hub {
    /// Starts a hub on `history` (spawns the log and sweep tasks). Live
    /// delivery starts after the newest publication already stored, so that
    /// a subscriber's replay covers everything stored before it (a disk
    /// store keeps what it had before a restart).
    pub async fn start(
        history: Arc<dyn History>,
        options: HubOptions,
    ) -> Result<Arc<Hub>, HubError> {
        let after = history.last().await?.map_or(0, |(seq, _)| seq);
        let hub = Hub::build(history, None, Presence::default(), options);
        hub.fanout.last_seq.store(after, Ordering::Release);
        Ok(hub)
    }

    /// Starts a hub that shares `engine` with other nodes: publications are
    /// fanned out from the engine's feed, starting after the newest one
    /// stored now.
    pub async fn start_with_engine(
        engine: Engine,
        options: HubOptions,
    ) -> Result<Arc<Hub>, HubError> {
        let after = engine.history.last().await?.map_or(0, |(seq, _)| seq);
        let node_id = uuid::Uuid::new_v4().simple().to_string();
        let cluster = Cluster {
            engine: engine.name,
            broker: engine.broker.clone(),
            node_id: node_id.clone(),
        };
        let hub = Hub::build(
            engine.history.clone(),
            Some(cluster),
            Presence::shared(engine.presence.clone(), engine.name),
            options,
        );
        hub.fanout.last_seq.store(after, Ordering::Release);
        let feed = engine.broker.feed(node_id, after);
        let weak = Arc::downgrade(&hub);
        let mut tasks = hub.tasks.lock();
        tasks.push(tokio::spawn(run_feed(feed, weak.clone(), engine.name)));
        tasks.push(tokio::spawn(run_presence_refresh(
            weak,
            engine.presence_ttl / 3,
        )));
        drop(tasks);
        Ok(hub)
    }

    fn build(
        history: Arc<dyn History>,
        cluster: Option<Cluster>,
        presence: Presence,
        options: HubOptions,
    ) -> Arc<Hub> {
        let fanout = Arc::new(Fanout {
            index: RwLock::new(Index::default()),
            last_seq: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            slow_disconnects: AtomicU64::new(0),
            on_occupancy: OnceLock::new(),
        });
        let (tx, rx) = mpsc::channel(options.max_batch * 8);
        let publications = Arc::new(AtomicU64::new(0));
        let log = tokio::spawn(run_log(
            rx,
            history.clone(),
            fanout.clone(),
            options.max_batch,
            publications.clone(),
            cluster.is_none(),
        ));
        let sweep = tokio::spawn(run_sweep(history.clone(), options.sweep_interval));
        let clock = (!options.write_interval.is_zero())
            .then(|| clock::WriteClock::start(options.write_interval));
        Arc::new(Hub {
            cluster,
            on_control: OnceLock::new(),
            history,
            fanout,
            log_tx: RwLock::new(Some(tx)),
            tasks: Mutex::new(vec![log, sweep]),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            open_sinks: Arc::new(sink::OpenSinks::new(clock)),
            publications,
            options,
            presence,
        })
    }

    /// Stores a draft in history and fans it out; returns it positioned.
    pub async fn publish(&self, draft: Draft) -> Result<Arc<Publication>, HubError> {
        let tx = self.log_tx.read().clone().ok_or(HubError::Closed)?;
        let (reply, wait) = oneshot::channel();
        tx.send(Job { draft, reply })
            .await
            .map_err(|_| HubError::Closed)?;
        wait.await.map_err(|_| HubError::Closed)?
    }

    /// Opens a connection queue of the configured bounds. Once streams are
    /// stopping (see [`Hub::stop_streams`]) it is born closed.
    pub fn open_queue(&self) -> Arc<Sink> {
        let sink = self.open_sinks.open(
            self.next_id.fetch_add(1, Ordering::Relaxed),
            self.options.queue_capacity,
            self.options.queue_bytes,
        );
        if self.stopping.load(Ordering::Acquire) {
            sink.close(SHUTTING_DOWN);
        }
        sink
    }

    /// Registers a subscription on a connection: publications selected by
    /// any of `matchers` and admitted by `filter` are queued to `sink`, and
    /// joins/leaves too when `join_leave` is set.
    pub fn subscribe_on(
        &self,
        sink: &Arc<Sink>,
        matchers: Vec<TopicMatcher>,
        filter: Arc<dyn Filter>,
        join_leave: bool,
    ) -> SubscriptionHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let s = Arc::new(Subscriber {
            id,
            matchers,
            filter,
            sink: sink.clone(),
            join_leave,
        });
        let snapshot_seq = self.fanout.add(s);
        SubscriptionHandle {
            id,
            snapshot_seq,
            fanout: Arc::downgrade(&self.fanout),
        }
    }

    /// Sets who is told when a channel becomes occupied or vacated on this
    /// node (once; later calls are ignored).
    pub fn on_occupancy(&self, handler: OccupancyHandler) {
        let _ = self.fanout.on_occupancy.set(handler);
    }

    /// A connection with one subscription (what an SSE stream needs).
    pub fn subscribe(&self, matchers: Vec<TopicMatcher>, filter: Arc<dyn Filter>) -> Subscription {
        let sink = self.open_queue();
        let handle = self.subscribe_on(&sink, matchers, filter, false);
        Subscription { handle, sink }
    }

    /// Tells the channel's join/leave subscribers (on every node) that
    /// `info` joined.
    pub fn announce_join(&self, channel: &str, info: Arc<ClientInfo>) {
        self.broadcast(ClusterEvent::Join(channel.into(), (*info).clone()));
        self.fanout
            .deliver_event(channel, Delivery::Join(channel.into(), info));
    }

    /// Tells the channel's join/leave subscribers (on every node) that
    /// `info` left.
    pub fn announce_leave(&self, channel: &str, info: Arc<ClientInfo>) {
        self.broadcast(ClusterEvent::Leave(channel.into(), (*info).clone()));
        self.fanout
            .deliver_event(channel, Delivery::Leave(channel.into(), info));
    }

    /// Sets who acts on server API commands broadcast by other nodes.
    pub fn on_control(&self, handler: ControlHandler) {
        let _ = self.on_control.set(handler);
    }

    /// Sends a server API command to the other nodes (no-op on one node).
    pub fn broadcast_control(&self, user: &str, client: Option<&str>, control: Bytes) {
        self.broadcast(ClusterEvent::Control {
            user: user.to_owned(),
            client: client.map(str::to_owned),
            control,
        });
    }

    /// Sends `event` to the other nodes in the background (best effort).
    fn broadcast(&self, event: ClusterEvent) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let broker = cluster.broker.clone();
        let engine = cluster.engine;
        let envelope = Envelope {
            node: cluster.node_id.clone(),
            event,
        };
        tokio::spawn(async move {
            if let Err(e) = broker.broadcast(&envelope).await {
                crate::metrics::engine_error(engine, "broadcast");
                tracing::warn!(error = %e, "broadcast to other nodes failed");
            }
        });
    }

    /// The shared engine's name, if this node has one.
    pub fn engine(&self) -> Option<&'static str> {
        self.cluster.as_ref().map(|c| c.engine)
    }

    /// Disconnects every connection (they see `reason`). Their
    /// subscriptions leave the index as their connections end.
    pub fn disconnect_all(&self, reason: &'static str) {
        self.open_sinks.close_all(reason);
    }

    /// The first step of a graceful shutdown: every connection's queue is
    /// closed with [`SHUTTING_DOWN`] (each transport tells its client to
    /// reconnect), and queues opened from now on are born closed.
    /// Publishing goes on until [`Hub::shutdown`].
    pub fn stop_streams(&self) {
        self.stopping.store(true, Ordering::Release);
        self.disconnect_all(SHUTTING_DOWN);
    }

    /// The options the hub was started with.
    pub fn options(&self) -> &HubOptions {
        &self.options
    }

    /// Who is present in which channel, on this node.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// The history behind this hub.
    pub fn history(&self) -> &Arc<dyn History> {
        &self.history
    }

    /// Channels with live subscribers (exact subscriptions), with their
    /// subscriber counts.
    pub fn channels(&self) -> Vec<(String, usize)> {
        self.fanout
            .index
            .read()
            .exact
            .iter()
            .map(|(name, subs)| (name.clone(), subs.len()))
            .collect()
    }

    /// How many channels have exact subscribers.
    pub fn channel_count(&self) -> usize {
        self.fanout.index.read().exact.len()
    }

    /// Deliveries waiting in connection queues: (in all, in the fullest).
    pub fn queue_depths(&self) -> (usize, usize) {
        let index = self.fanout.index.read();
        let mut seen = HashSet::new();
        let mut total = 0;
        let mut deepest = 0;
        for s in index.by_id.values() {
            if seen.insert(s.sink.id()) {
                let depth = s.sink.len();
                total += depth;
                deepest = deepest.max(depth);
            }
        }
        (total, deepest)
    }

    /// Current counters.
    pub fn stats(&self) -> HubStats {
        HubStats {
            subscribers: self.fanout.index.read().by_id.len(),
            publications: self.publications.load(Ordering::Relaxed),
            deliveries: self.fanout.deliveries.load(Ordering::Relaxed),
            drops: self.fanout.drops.load(Ordering::Relaxed),
            slow_disconnects: self.fanout.slow_disconnects.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting publications, finishes the queued ones, closes
    /// history. Publications acknowledged before this returns are stored.
    pub async fn shutdown(&self) {
        self.log_tx.write().take();
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        let mut tasks = tasks.into_iter();
        if let Some(log) = tasks.next() {
            let _ = log.await;
        }
        for t in tasks {
            t.abort();
        }
        self.stop_streams();
        if let Err(e) = self.history.close().await {
            tracing::error!(error = %e, "closing history failed");
        }
    }
}
