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

pub mod clock;
#[cfg(test)]
mod index_model_tests;
pub mod presence;
pub mod sink;
#[cfg(test)]
mod sink_model_tests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use indexmap::IndexMap;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::engine::{Broker, ClusterEvent, Engine, Envelope, Feed};
use crate::history::{ClientInfo, Draft, History, Publication};
use crate::protocol::mercure::matcher::{topic_keys, TopicMatcher};
pub use presence::Presence;
pub use sink::{Offer, Sink};

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

struct Subscriber {
    id: u64,
    matchers: Vec<TopicMatcher>,
    filter: Arc<dyn Filter>,
    sink: Arc<Sink>,
    join_leave: bool,
}

impl Subscriber {
    fn only_exact(&self) -> bool {
        self.matchers.iter().all(|m| m.exact_topic().is_some())
    }

    /// The key of its pattern group, when it has exactly one pattern: the
    /// pattern's meaning, not its spelling (a Mercure `*` and a Centrifugo
    /// channel pattern `*` select different topics).
    fn pattern_key(&self) -> Option<String> {
        match &self.matchers[..] {
            [m] if m.exact_topic().is_none() => Some(m.identity()),
            _ => None,
        }
    }
}

/// Subscribers of one pattern: the pattern is tested once per publication,
/// whatever the number of its subscribers.
struct PatternGroup {
    matcher: TopicMatcher,
    /// Its index key (see [`TopicMatcher::index_key`]), if it has one.
    key: Option<String>,
    subscribers: Subscribers,
}

/// Subscribers by id, in a dense array: fan-out walks it as fast as a
/// `Vec`, and removing one is O(1) (a mass disconnect of a hot channel
/// must not hold the index's write lock for O(n) per client).
type Subscribers = IndexMap<u64, Arc<Subscriber>>;

/// Told when a channel gets its first exact subscriber on this node (true)
/// or loses its last (false): webhooks' `occupied` and `vacated`.
pub type OccupancyHandler = Box<dyn Fn(&str, bool) + Send + Sync>;

#[derive(Default)]
struct Index {
    by_id: HashMap<u64, Arc<Subscriber>>,
    /// Subscribers whose matchers are all exact, by topic.
    exact: HashMap<String, Subscribers>,
    /// Subscribers with one pattern, grouped by the pattern's identity.
    patterns: HashMap<String, PatternGroup>,
    /// The groups every publication is tested against (their pattern has
    /// no index key).
    unkeyed: HashSet<String>,
    /// The other groups, by index key: a publication is tested only
    /// against those found under its topics' keys.
    keyed: HashMap<String, HashSet<String>>,
    /// The hub URL keyed URL patterns resolve topics against (and how many
    /// there are: topics are parsed as URLs only when some are).
    url_base: Option<(url::Url, usize)>,
    /// Subscribers with several matchers, some patterns: evaluated per
    /// publication.
    scanned: Subscribers,
}

impl Index {
    /// Subscribers with a pattern that selects `topics` (each group's
    /// pattern tested once), then the scanned ones.
    fn matching<'a>(
        &'a self,
        topics: impl Iterator<Item = &'a str> + Clone + 'a,
    ) -> impl Iterator<Item = &'a Arc<Subscriber>> + 'a {
        let mut groups: Vec<&'a String> = self.unkeyed.iter().collect();
        if !self.keyed.is_empty() {
            let base = self.url_base.as_ref().map(|(base, _)| base);
            let mut several = false;
            for (i, topic) in topics.clone().enumerate() {
                several |= i > 0;
                for key in topic_keys(topic, base) {
                    groups.extend(self.keyed.get(&key).into_iter().flatten());
                }
            }
            if several {
                // Alternate topics may lead to a group twice.
                let mut seen = HashSet::new();
                groups.retain(|g| seen.insert(*g));
            }
        }
        let t = topics.clone();
        groups
            .into_iter()
            .filter_map(|id| self.patterns.get(id))
            .filter(move |g| g.matcher.matches_any(t.clone()))
            .flat_map(|g| g.subscribers.values())
            .chain(
                self.scanned
                    .values()
                    .filter(move |s| s.matchers.iter().any(|m| m.matches_any(topics.clone()))),
            )
    }

    /// Adds a subscriber with one pattern to its group.
    fn join_group(&mut self, identity: String, matcher: &TopicMatcher, s: Arc<Subscriber>) {
        if !self.patterns.contains_key(&identity) {
            let key = matcher.index_key().filter(|key| {
                // Keyed URL patterns must all resolve against one base.
                if !key.starts_with("u:") {
                    return true;
                }
                let base = matcher.url_base().cloned();
                match (&mut self.url_base, base) {
                    (Some((b, n)), Some(base)) if *b == base => {
                        *n += 1;
                        true
                    }
                    (slot @ None, Some(base)) => {
                        *slot = Some((base, 1));
                        true
                    }
                    _ => false,
                }
            });
            match &key {
                Some(key) => self
                    .keyed
                    .entry(key.clone())
                    .or_default()
                    .insert(identity.clone()),
                None => self.unkeyed.insert(identity.clone()),
            };
            let group = PatternGroup {
                matcher: matcher.clone(),
                key,
                subscribers: Subscribers::default(),
            };
            self.patterns.insert(identity.clone(), group);
        }
        if let Some(group) = self.patterns.get_mut(&identity) {
            group.subscribers.insert(s.id, s);
        }
    }

    /// Removes a subscriber from its pattern group, and the group once empty.
    fn leave_group(&mut self, identity: &str, id: u64) {
        let Some(group) = self.patterns.get_mut(identity) else {
            return;
        };
        group.subscribers.swap_remove(&id);
        if !group.subscribers.is_empty() {
            return;
        }
        let key = self.patterns.remove(identity).and_then(|g| g.key);
        let Some(key) = key else {
            self.unkeyed.remove(identity);
            return;
        };
        if let Some(ids) = self.keyed.get_mut(&key) {
            ids.remove(identity);
            if ids.is_empty() {
                self.keyed.remove(&key);
            }
        }
        if key.starts_with("u:") {
            if let Some((_, n)) = &mut self.url_base {
                *n -= 1;
                if *n == 0 {
                    self.url_base = None;
                }
            }
        }
    }
}

/// The subscriber index and the fan-out step.
struct Fanout {
    index: RwLock<Index>,
    /// Sequence of the last publication fanned out; read under the write
    /// lock at subscribe time so replay and live delivery meet exactly.
    last_seq: AtomicU64,
    deliveries: AtomicU64,
    drops: AtomicU64,
    slow_disconnects: AtomicU64,
    on_occupancy: OnceLock<OccupancyHandler>,
}

impl Fanout {
    fn occupancy(&self, channel: &str, occupied: bool) {
        if let Some(handler) = self.on_occupancy.get() {
            handler(channel, occupied);
        }
    }

    fn deliver(&self, p: &Arc<Publication>) {
        let (mut queued, mut overflowed) = (0, 0);
        {
            let index = self.index.read();
            let mut offer = |s: &Arc<Subscriber>| {
                if !s.filter.admits(p) {
                    return;
                }
                match s.sink.offer(Delivery::Publication(p.clone())) {
                    Offer::Queued => queued += 1,
                    Offer::Overflow => overflowed += 1,
                    Offer::Closed => {}
                }
            };
            if p.draft.alternates.is_empty() {
                if let Some(list) = index.exact.get(p.channel()) {
                    list.values().for_each(&mut offer);
                }
            } else {
                let mut seen = HashSet::new();
                for topic in p.topics() {
                    for s in index.exact.get(topic).into_iter().flat_map(|l| l.values()) {
                        if seen.insert(s.id) {
                            offer(s);
                        }
                    }
                }
            }
            if !index.patterns.is_empty() || !index.scanned.is_empty() {
                for s in index.matching(p.topics()) {
                    offer(s);
                }
            }
            self.last_seq.store(p.seq, Ordering::Release);
        }
        self.deliveries.fetch_add(queued, Ordering::Relaxed);
        if overflowed > 0 {
            self.drops.fetch_add(overflowed, Ordering::Relaxed);
            self.slow_disconnects
                .fetch_add(overflowed, Ordering::Relaxed);
        }
    }

    /// Delivers a join or leave to the channel's subscribers that asked for
    /// them. A full queue here closes the connection like a publication would.
    fn deliver_event(&self, channel: &str, event: Delivery) {
        let index = self.index.read();
        let exact = index
            .exact
            .get(channel)
            .into_iter()
            .flat_map(|l| l.values());
        for s in exact.chain(index.matching(std::iter::once(channel))) {
            if s.join_leave {
                s.sink.offer(event.clone());
            }
        }
    }

    fn remove(&self, id: u64) {
        let mut index = self.index.write();
        let Some(s) = index.by_id.remove(&id) else {
            return;
        };
        let mut vacated = Vec::new();
        if s.only_exact() {
            for m in &s.matchers {
                let topic = m.exact_topic().unwrap_or_default();
                if let Some(list) = index.exact.get_mut(topic) {
                    list.swap_remove(&id);
                    if list.is_empty() {
                        index.exact.remove(topic);
                        vacated.push(topic);
                    }
                }
            }
        } else if let Some(key) = s.pattern_key() {
            index.leave_group(&key, id);
        } else {
            index.scanned.swap_remove(&id);
        }
        drop(index);
        for topic in vacated {
            self.occupancy(topic, false);
        }
    }
}

/// One subscription of a connection. Dropping it unsubscribes.
pub struct SubscriptionHandle {
    /// Hub-internal subscriber number.
    pub id: u64,
    /// Last sequence fanned out before this subscription was registered:
    /// replay covers `..=snapshot_seq`, live delivery everything after.
    pub snapshot_seq: u64,
    fanout: Weak<Fanout>,
}

impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        if let Some(f) = self.fanout.upgrade() {
            f.remove(self.id);
        }
    }
}

/// A connection with a single subscription (an SSE stream).
pub struct Subscription {
    /// The subscription.
    pub handle: SubscriptionHandle,
    /// The connection's queue: deliveries, in order.
    pub sink: Arc<Sink>,
}

struct Job {
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
        let mut index = self.fanout.index.write();
        let mut occupied = Vec::new();
        if s.only_exact() {
            for m in &s.matchers {
                let topic = m.exact_topic().unwrap_or_default();
                let list = index.exact.entry(topic.to_owned()).or_default();
                if list.is_empty() {
                    occupied.push(topic);
                }
                list.insert(id, s.clone());
            }
        } else if let Some(key) = s.pattern_key() {
            index.join_group(key, &s.matchers[0], s.clone());
        } else {
            index.scanned.insert(id, s.clone());
        }
        index.by_id.insert(id, s.clone());
        let snapshot_seq = self.fanout.last_seq.load(Ordering::Acquire);
        drop(index);
        for topic in occupied {
            self.fanout.occupancy(topic, true);
        }
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

async fn run_log(
    mut rx: mpsc::Receiver<Job>,
    history: Arc<dyn History>,
    fanout: Arc<Fanout>,
    max_batch: usize,
    publications: Arc<AtomicU64>,
    deliver: bool,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let (drafts, replies): (Vec<_>, Vec<_>) =
            jobs.drain(..).map(|j| (j.draft, j.reply)).unzip();
        let started = std::time::Instant::now();
        let appended = history.append(drafts).await;
        crate::metrics::history_append(started, replies.len());
        match appended {
            Ok(pubs) => {
                publications.fetch_add(pubs.len() as u64, Ordering::Relaxed);
                // Stored: publishers are answered before the fan-out, which
                // they need not wait for.
                for (p, reply) in pubs.iter().zip(replies) {
                    let _ = reply.send(Ok(p.clone()));
                }
                if deliver {
                    for p in &pubs {
                        fanout.deliver(p);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "history append failed");
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(HubError::History(
                        crate::history::HistoryError::Store(msg.clone()),
                    )));
                }
            }
        }
    }
}

/// Fans out what the shared engine feeds this node, in `seq` order.
async fn run_feed(mut feed: mpsc::Receiver<Feed>, hub: Weak<Hub>, engine: &'static str) {
    while let Some(item) = feed.recv().await {
        let Some(hub) = hub.upgrade() else {
            return;
        };
        match item {
            Feed::Publications(pubs) => {
                for p in pubs {
                    // A reconnecting feed may repeat what was delivered.
                    if p.seq > hub.fanout.last_seq.load(Ordering::Acquire) {
                        crate::metrics::engine_lag(p.time_ms);
                        hub.fanout.deliver(&p);
                    }
                }
            }
            Feed::Reset { last_seq, why } => {
                tracing::warn!(engine, %why, "engine reset: clients sent to recover from history");
                crate::metrics::engine_reset(engine, &why);
                hub.fanout.last_seq.store(last_seq, Ordering::Release);
                hub.disconnect_all(ENGINE_RESET);
            }
            Feed::Event(ClusterEvent::Join(channel, info)) => {
                let event = Delivery::Join(channel.as_str().into(), Arc::new(info));
                hub.fanout.deliver_event(&channel, event);
            }
            Feed::Event(ClusterEvent::Leave(channel, info)) => {
                let event = Delivery::Leave(channel.as_str().into(), Arc::new(info));
                hub.fanout.deliver_event(&channel, event);
            }
            Feed::Event(ClusterEvent::Control {
                user,
                client,
                control,
            }) => {
                if let Some(handler) = hub.on_control.get() {
                    handler(&user, client.as_deref(), control);
                }
            }
        }
    }
}

/// Keeps this node's shared presence entries from expiring.
async fn run_presence_refresh(hub: Weak<Hub>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else {
            return;
        };
        hub.presence.refresh().await;
    }
}

async fn run_sweep(history: Arc<dyn History>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match history.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired history reclaimed"),
            Err(e) => tracing::warn!(error = %e, "history sweep failed"),
        }
    }
}
