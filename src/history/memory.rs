//! History in memory: a ring per channel, an index of alternate topics and
//! a hub-wide ordered log.
//!
//! [`Rings`] is the store itself, positioned by its caller: the
//! [`MemoryHistory`] engine counts `seq` for it, and the disk store keeps
//! its ephemeral channels (Mercure subscription events) in one, so that a
//! storm of connections costs no durable write.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    new_epoch, History, HistoryError, ReplayPage, RetentionPolicy, Selection, StreamPosition,
};
use crate::hub::publication::now_ms;
use crate::hub::{Draft, Publication};

struct Channel {
    epoch: Arc<str>,
    top: u64,
    ring: VecDeque<Arc<Publication>>,
    touched_ms: u64,
    /// Newest `seq` removed from the ring (trimmed, expired or deleted).
    trimmed: u64,
}

/// The publications an alternate topic routes (they live in their
/// canonical channel's ring).
#[derive(Default)]
struct Alternate {
    seqs: BTreeSet<u64>,
    trimmed: u64,
}

/// Channels in memory, positioned by the caller.
pub(crate) struct Rings {
    log: BTreeMap<u64, Arc<Publication>>,
    /// Every stored publication of each event id (publishers may repeat
    /// one; a cursor names the earliest still stored).
    ids: HashMap<String, BTreeSet<u64>>,
    channels: BTreeMap<String, Channel>,
    alternates: BTreeMap<String, Alternate>,
    /// The epoch a channel gets when its first publication arrives, and the
    /// one a never-published channel reports. A new one is drawn whenever a
    /// channel is forgotten, so that a channel born again never reuses the
    /// epoch of its former life.
    epoch_base: Arc<str>,
    /// Newest `seq` of a forgotten topic: a cursor before it may have lost
    /// publications of a topic that no longer exists.
    forgotten: u64,
}

impl Default for Rings {
    fn default() -> Self {
        Rings {
            log: BTreeMap::new(),
            ids: HashMap::new(),
            channels: BTreeMap::new(),
            alternates: BTreeMap::new(),
            epoch_base: new_epoch(),
            forgotten: 0,
        }
    }
}

impl Rings {
    /// Stores `draft` at `seq`, trimming its channel to `size`.
    pub(crate) fn insert(
        &mut self,
        draft: Draft,
        seq: u64,
        now: u64,
        size: usize,
    ) -> Arc<Publication> {
        let base = self.epoch_base.clone();
        let ch = self
            .channels
            .entry(draft.channel.clone())
            .or_insert_with(|| Channel {
                epoch: base,
                top: 0,
                ring: VecDeque::new(),
                touched_ms: now,
                trimmed: 0,
            });
        ch.top += 1;
        ch.touched_ms = now;
        let p = Arc::new(Publication::new(draft, seq, ch.top, ch.epoch.clone(), now));
        ch.ring.push_back(p.clone());
        let mut removed = Vec::new();
        while ch.ring.len() > size {
            removed.extend(ch.ring.pop_front());
        }
        if let Some(last) = removed.last() {
            ch.trimmed = ch.trimmed.max(last.seq);
        }
        for old in removed {
            self.forget(&old);
        }
        for alternate in &p.draft.alternates {
            self.alternates
                .entry(alternate.clone())
                .or_default()
                .seqs
                .insert(seq);
        }
        self.log.insert(seq, p.clone());
        self.ids.entry(p.id().to_owned()).or_default().insert(seq);
        p
    }

    /// Drops a publication removed from its channel's ring.
    fn forget(&mut self, p: &Publication) {
        self.log.remove(&p.seq);
        if let Some(seqs) = self.ids.get_mut(p.id()) {
            seqs.remove(&p.seq);
            if seqs.is_empty() {
                self.ids.remove(p.id());
            }
        }
        for alternate in &p.draft.alternates {
            if let Some(a) = self.alternates.get_mut(alternate) {
                a.seqs.remove(&p.seq);
                a.trimmed = a.trimmed.max(p.seq);
            }
        }
    }

    pub(crate) fn seq_of(&self, id: &str) -> Option<u64> {
        self.ids.get(id)?.first().copied()
    }

    pub(crate) fn last(&self) -> Option<(u64, String)> {
        self.log
            .last_key_value()
            .map(|(s, p)| (*s, p.id().to_owned()))
    }

    /// See [`History::replay`].
    pub(crate) fn replay(
        &self,
        selection: &Selection,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> ReplayPage {
        if after >= upto {
            return ReplayPage::default();
        }
        let mut seqs = BTreeSet::new();
        // A topic forgotten entirely (idle past its `meta_ttl`) took what
        // it lost with it: any cursor before its last publication may have
        // lost something.
        let mut gap = self.forgotten > after;
        // Collects a channel's selected seqs; true when it lost some.
        let mut channel = |ch: &Channel| {
            let start = ch.ring.partition_point(|p| p.seq <= after);
            seqs.extend(
                ch.ring
                    .range(start..)
                    .map(|p| p.seq)
                    .take_while(|&s| s <= upto)
                    .take(limit),
            );
            ch.trimmed > after
        };
        for topic in selection.exact() {
            if let Some(ch) = self.channels.get(topic) {
                gap |= channel(ch);
            }
        }
        for (name, ch) in &self.channels {
            if selection.selects_by_pattern(name) {
                gap |= channel(ch);
            }
        }
        for (name, a) in &self.alternates {
            if selection.selects(name) {
                gap |= a.trimmed > after;
                seqs.extend(a.seqs.range(after + 1..=upto).take(limit));
            }
        }
        let publications = seqs
            .into_iter()
            .take(limit)
            .filter_map(|s| self.log.get(&s).cloned())
            .collect();
        ReplayPage { publications, gap }
    }

    pub(crate) fn read_channel(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
    ) -> (Vec<Arc<Publication>>, StreamPosition) {
        match self.channels.get(channel) {
            Some(ch) => (
                ch.ring
                    .iter()
                    .filter(|p| p.offset > since)
                    .take(limit)
                    .cloned()
                    .collect(),
                StreamPosition {
                    offset: ch.top,
                    epoch: ch.epoch.to_string(),
                },
            ),
            None => (Vec::new(), self.position(channel)),
        }
    }

    /// A channel's position; a channel never published (or forgotten) is
    /// at offset 0 of the current base epoch, and nothing is written.
    pub(crate) fn position(&self, channel: &str) -> StreamPosition {
        match self.channels.get(channel) {
            Some(ch) => StreamPosition {
                offset: ch.top,
                epoch: ch.epoch.to_string(),
            },
            None => StreamPosition {
                offset: 0,
                epoch: self.epoch_base.to_string(),
            },
        }
    }

    pub(crate) fn remove_channel(&mut self, channel: &str) {
        let removed: Vec<_> = match self.channels.get_mut(channel) {
            Some(ch) => {
                let removed: Vec<_> = ch.ring.drain(..).collect();
                if let Some(last) = removed.last() {
                    ch.trimmed = ch.trimmed.max(last.seq);
                }
                removed
            }
            None => return,
        };
        for p in removed {
            self.forget(&p);
        }
    }

    /// Removes expired publications, then channels idle past their
    /// `meta_ttl`; returns how many publications went.
    pub(crate) fn sweep(&mut self, now: u64, retention: &RetentionPolicy) -> usize {
        let mut expired = Vec::new();
        let mut forgotten = 0;
        self.channels.retain(|name, ch| {
            let r = retention.for_channel(name);
            let (ttl, meta_ttl) = (r.ttl.as_millis() as u64, r.meta_ttl.as_millis() as u64);
            while ch
                .ring
                .front()
                .is_some_and(|p| now.saturating_sub(p.time_ms) >= ttl)
            {
                if let Some(p) = ch.ring.pop_front() {
                    ch.trimmed = ch.trimmed.max(p.seq);
                    expired.push(p);
                }
            }
            let keep = !(ch.ring.is_empty() && now.saturating_sub(ch.touched_ms) >= meta_ttl);
            if !keep {
                forgotten = forgotten.max(ch.trimmed);
            }
            keep
        });
        for p in &expired {
            self.forget(p);
        }
        self.alternates.retain(|_, a| {
            let keep = !a.seqs.is_empty();
            if !keep {
                forgotten = forgotten.max(a.trimmed);
            }
            keep
        });
        if forgotten > 0 {
            self.forgotten = self.forgotten.max(forgotten);
            self.epoch_base = new_epoch();
        }
        expired.len()
    }
}

/// Rings in memory: fast, bounded, and gone at restart.
pub struct MemoryHistory {
    retention: RetentionPolicy,
    inner: Mutex<(u64, Rings)>,
}

impl MemoryHistory {
    /// An empty history.
    pub fn new(retention: RetentionPolicy) -> Self {
        MemoryHistory {
            retention,
            inner: Mutex::new((0, Rings::default())),
        }
    }
}

#[async_trait]
impl History for MemoryHistory {
    async fn append(&self, drafts: Vec<Draft>) -> Result<Vec<Arc<Publication>>, HistoryError> {
        let now = now_ms();
        let mut inner = self.inner.lock();
        let (last_seq, rings) = &mut *inner;
        Ok(drafts
            .into_iter()
            .map(|draft| {
                *last_seq += 1;
                let size = self.retention.for_channel(&draft.channel).size;
                rings.insert(draft, *last_seq, now, size)
            })
            .collect())
    }

    async fn seq_of(&self, id: &str) -> Result<Option<u64>, HistoryError> {
        Ok(self.inner.lock().1.seq_of(id))
    }

    async fn replay(
        &self,
        selection: Arc<Selection>,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<ReplayPage, HistoryError> {
        Ok(self.inner.lock().1.replay(&selection, after, upto, limit))
    }

    async fn last(&self) -> Result<Option<(u64, String)>, HistoryError> {
        Ok(self.inner.lock().1.last())
    }

    async fn read_channel(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), HistoryError> {
        Ok(self.inner.lock().1.read_channel(channel, since, limit))
    }

    async fn position(&self, channel: &str) -> Result<StreamPosition, HistoryError> {
        Ok(self.inner.lock().1.position(channel))
    }

    async fn remove_channel(&self, channel: &str) -> Result<(), HistoryError> {
        self.inner.lock().1.remove_channel(channel);
        Ok(())
    }

    async fn sweep(&self) -> Result<usize, HistoryError> {
        Ok(self.inner.lock().1.sweep(now_ms(), &self.retention))
    }

    async fn close(&self) -> Result<(), HistoryError> {
        Ok(())
    }
}
