//! The hub: publish, subscribe, fan-out. Shared by every transport.
//!
//! Publishing goes through one ordered log task: drafts queue up, are
//! appended to [`History`] in batches (one durable commit per batch), and
//! each positioned publication is then fanned out, in order, to the
//! subscribers whose matchers select one of its topics. A publisher's call
//! returns once its publication is stored, so nothing acknowledged is lost.
//!
//! Fan-out never blocks on a subscriber: each has a bounded queue, and one
//! that is full is dropped from the hub with the reason
//! [`SLOW_CONSUMER`]; it resumes from history when it reconnects.

pub mod publication;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::history::History;
use crate::protocol::mercure::matcher::TopicMatcher;
pub use publication::{Draft, Publication};

/// Close reason for a subscriber whose queue overflowed.
pub const SLOW_CONSUMER: &str = "slow consumer: the delivery queue is full";
/// Close reason when the hub shuts down.
pub const SHUTTING_DOWN: &str = "the hub is shutting down";

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

/// A filter that admits everything.
pub struct AdmitAll;

impl Filter for AdmitAll {
    fn admits(&self, _: &Publication) -> bool {
        true
    }
}

/// Tunables of the hub core.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Publications a subscriber may have queued before it is dropped.
    pub queue_capacity: usize,
    /// Most publications appended in one history commit.
    pub max_batch: usize,
    /// How often expired history is reclaimed.
    pub sweep_interval: Duration,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            queue_capacity: 4096,
            max_batch: 512,
            sweep_interval: Duration::from_secs(60),
        }
    }
}

struct Subscriber {
    id: u64,
    matchers: Vec<TopicMatcher>,
    filter: Arc<dyn Filter>,
    tx: mpsc::Sender<Arc<Publication>>,
    closed: Arc<OnceLock<&'static str>>,
}

impl Subscriber {
    fn only_exact(&self) -> bool {
        self.matchers.iter().all(|m| m.exact_topic().is_some())
    }
}

#[derive(Default)]
struct Index {
    by_id: HashMap<u64, Arc<Subscriber>>,
    /// Subscribers whose matchers are all exact, by topic.
    exact: HashMap<String, Vec<Arc<Subscriber>>>,
    /// Subscribers with a pattern or wildcard: evaluated per publication.
    scanned: Vec<Arc<Subscriber>>,
}

/// The subscriber index and the fan-out step.
struct Fanout {
    index: RwLock<Index>,
    /// Sequence of the last publication fanned out; read under the write
    /// lock at subscribe time so replay and live delivery meet exactly.
    last_seq: AtomicU64,
    deliveries: AtomicU64,
    slow_disconnects: AtomicU64,
}

impl Fanout {
    fn deliver(&self, p: &Arc<Publication>) {
        let mut slow = Vec::new();
        {
            let index = self.index.read();
            let mut offer = |s: &Arc<Subscriber>| {
                if !s.filter.admits(p) {
                    return;
                }
                match s.tx.try_send(p.clone()) {
                    Ok(()) => {
                        self.deliveries.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => slow.push(s.id),
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            };
            if p.draft.alternates.is_empty() {
                if let Some(list) = index.exact.get(p.channel()) {
                    list.iter().for_each(&mut offer);
                }
            } else {
                let mut seen = HashSet::new();
                for topic in p.topics() {
                    for s in index.exact.get(topic).into_iter().flatten() {
                        if seen.insert(s.id) {
                            offer(s);
                        }
                    }
                }
            }
            for s in &index.scanned {
                if s.matchers.iter().any(|m| m.matches_any(p.topics())) {
                    offer(s);
                }
            }
            self.last_seq.store(p.seq, Ordering::Release);
        }
        for id in slow {
            self.slow_disconnects.fetch_add(1, Ordering::Relaxed);
            self.remove(id, Some(SLOW_CONSUMER));
        }
    }

    fn remove(&self, id: u64, reason: Option<&'static str>) {
        let mut index = self.index.write();
        let Some(s) = index.by_id.remove(&id) else {
            return;
        };
        if let Some(reason) = reason {
            let _ = s.closed.set(reason);
        }
        if s.only_exact() {
            for m in &s.matchers {
                let topic = m.exact_topic().unwrap_or_default();
                if let Some(list) = index.exact.get_mut(topic) {
                    list.retain(|o| o.id != id);
                    if list.is_empty() {
                        index.exact.remove(topic);
                    }
                }
            }
        } else {
            index.scanned.retain(|o| o.id != id);
        }
    }
}

/// A live subscription. Dropping it unsubscribes.
pub struct Subscription {
    /// Hub-internal subscriber number.
    pub id: u64,
    /// Last sequence fanned out before this subscription was registered:
    /// replay covers `..=snapshot_seq`, live delivery everything after.
    pub snapshot_seq: u64,
    /// Publications delivered live, in order.
    pub rx: mpsc::Receiver<Arc<Publication>>,
    closed: Arc<OnceLock<&'static str>>,
    fanout: Weak<Fanout>,
}

impl Subscription {
    /// Why the hub ended this subscription, once `rx` is exhausted.
    pub fn close_reason(&self) -> Option<&'static str> {
        self.closed.get().copied()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(f) = self.fanout.upgrade() {
            f.remove(self.id, None);
        }
    }
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
    /// Subscribers dropped for not keeping up.
    pub slow_disconnects: u64,
}

/// The hub core.
pub struct Hub {
    history: Arc<dyn History>,
    fanout: Arc<Fanout>,
    log_tx: RwLock<Option<mpsc::Sender<Job>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
    publications: Arc<AtomicU64>,
    options: HubOptions,
}

impl Hub {
    /// Starts a hub on `history` (spawns the log and sweep tasks).
    pub fn start(history: Arc<dyn History>, options: HubOptions) -> Arc<Hub> {
        let fanout = Arc::new(Fanout {
            index: RwLock::new(Index::default()),
            last_seq: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            slow_disconnects: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(options.max_batch * 8);
        let publications = Arc::new(AtomicU64::new(0));
        let log = tokio::spawn(run_log(
            rx,
            history.clone(),
            fanout.clone(),
            options.max_batch,
            publications.clone(),
        ));
        let sweep = tokio::spawn(run_sweep(history.clone(), options.sweep_interval));
        Arc::new(Hub {
            history,
            fanout,
            log_tx: RwLock::new(Some(tx)),
            tasks: Mutex::new(vec![log, sweep]),
            next_id: AtomicU64::new(1),
            publications,
            options,
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

    /// Registers a subscriber; publications selected by any of `matchers`
    /// and admitted by `filter` arrive on the returned subscription.
    pub fn subscribe(&self, matchers: Vec<TopicMatcher>, filter: Arc<dyn Filter>) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.options.queue_capacity);
        let closed = Arc::new(OnceLock::new());
        let s = Arc::new(Subscriber {
            id,
            matchers,
            filter,
            tx,
            closed: closed.clone(),
        });
        let mut index = self.fanout.index.write();
        if s.only_exact() {
            for m in &s.matchers {
                let topic = m.exact_topic().unwrap_or_default().to_owned();
                index.exact.entry(topic).or_default().push(s.clone());
            }
        } else {
            index.scanned.push(s.clone());
        }
        index.by_id.insert(id, s);
        let snapshot_seq = self.fanout.last_seq.load(Ordering::Acquire);
        drop(index);
        Subscription {
            id,
            snapshot_seq,
            rx,
            closed,
            fanout: Arc::downgrade(&self.fanout),
        }
    }

    /// Disconnects every subscriber (they see `reason`).
    pub fn disconnect_all(&self, reason: &'static str) {
        let ids: Vec<u64> = self.fanout.index.read().by_id.keys().copied().collect();
        for id in ids {
            self.fanout.remove(id, Some(reason));
        }
    }

    /// The history behind this hub.
    pub fn history(&self) -> &Arc<dyn History> {
        &self.history
    }

    /// Current counters.
    pub fn stats(&self) -> HubStats {
        HubStats {
            subscribers: self.fanout.index.read().by_id.len(),
            publications: self.publications.load(Ordering::Relaxed),
            deliveries: self.fanout.deliveries.load(Ordering::Relaxed),
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
        self.disconnect_all(SHUTTING_DOWN);
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
) {
    let mut jobs = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let (drafts, replies): (Vec<_>, Vec<_>) =
            jobs.drain(..).map(|j| (j.draft, j.reply)).unzip();
        match history.append(drafts).await {
            Ok(pubs) => {
                publications.fetch_add(pubs.len() as u64, Ordering::Relaxed);
                for (p, reply) in pubs.into_iter().zip(replies) {
                    fanout.deliver(&p);
                    let _ = reply.send(Ok(p));
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
