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
    EPHEMERAL_KEPT,
};
use super::{Draft, Publication};
use crate::time::now_ms;

struct Channel {
    /// Under the ephemeral prefix (Mercure subscription events).
    ephemeral: bool,
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
    /// Channels under this prefix are ephemeral (see
    /// [`RetentionPolicy::ephemeral_prefix`]).
    ephemeral_prefix: Option<String>,
    /// Ephemeral publications, oldest first (some may be gone already):
    /// at most [`EPHEMERAL_KEPT`] are kept, however fast connections come
    /// and go.
    ephemeral: VecDeque<(u64, String)>,
    /// [`Rings::forgotten`] for ephemeral channels: only selections that may
    /// select one are concerned, and forgetting one draws no new epoch.
    forgotten_ephemeral: u64,
}

impl Rings {
    /// Empty rings; channels under `ephemeral_prefix` are ephemeral.
    pub(crate) fn new(ephemeral_prefix: Option<String>) -> Rings {
        Rings {
            log: BTreeMap::new(),
            ids: HashMap::new(),
            channels: BTreeMap::new(),
            alternates: BTreeMap::new(),
            epoch_base: new_epoch(),
            forgotten: 0,
            ephemeral_prefix,
            ephemeral: VecDeque::new(),
            forgotten_ephemeral: 0,
        }
    }

    fn is_ephemeral(&self, channel: &str) -> bool {
        self.ephemeral_prefix
            .as_deref()
            .is_some_and(|p| channel.starts_with(p))
    }

    /// Drops the oldest ephemeral publication still kept.
    fn evict_ephemeral(&mut self) {
        while let Some((seq, name)) = self.ephemeral.pop_front() {
            let Some(ch) = self.channels.get_mut(&name) else {
                continue;
            };
            if ch.ring.front().is_none_or(|p| p.seq != seq) {
                continue;
            }
            let Some(p) = ch.ring.pop_front() else {
                continue;
            };
            ch.trimmed = ch.trimmed.max(seq);
            if ch.ring.is_empty() {
                self.channels.remove(&name);
                self.forgotten_ephemeral = self.forgotten_ephemeral.max(seq);
            }
            self.forget(&p);
            return;
        }
    }

    /// Stores `draft` at `seq`, trimming its channel to `size`.
    pub(crate) fn insert(
        &mut self,
        draft: Draft,
        seq: u64,
        now: u64,
        size: usize,
    ) -> Arc<Publication> {
        let base = self.epoch_base.clone();
        let ephemeral = self.is_ephemeral(&draft.channel);
        if ephemeral {
            self.ephemeral.push_back((seq, draft.channel.clone()));
        }
        let ch = self
            .channels
            .entry(draft.channel.clone())
            .or_insert_with(|| Channel {
                ephemeral,
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
        while self.ephemeral.len() > EPHEMERAL_KEPT {
            self.evict_ephemeral();
        }
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
        // lost something (of an ephemeral one: only for selections that
        // may select one).
        let mut gap = self.forgotten > after
            || (self.forgotten_ephemeral > after
                && self
                    .ephemeral_prefix
                    .as_deref()
                    .is_some_and(|p| selection.may_select_under(p)));
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
        let (mut forgotten, mut forgotten_ephemeral) = (0, 0);
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
            match (keep, ch.ephemeral) {
                (true, _) => {}
                (false, true) => forgotten_ephemeral = forgotten_ephemeral.max(ch.trimmed),
                (false, false) => forgotten = forgotten.max(ch.trimmed),
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
        self.forgotten_ephemeral = self.forgotten_ephemeral.max(forgotten_ephemeral);
        while self
            .ephemeral
            .front()
            .is_some_and(|(seq, _)| !self.log.contains_key(seq))
        {
            self.ephemeral.pop_front();
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
            inner: Mutex::new((0, Rings::new(retention.ephemeral_prefix.clone()))),
            retention,
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::history::Retention;
    use crate::protocol::mercure::matcher::{MatcherType, TopicMatcher};

    fn draft(channel: &str) -> Draft {
        Draft::to_channel(
            channel.into(),
            Bytes::from_static(b"x"),
            None,
            Default::default(),
        )
    }

    fn selection(raw: &str, kind: MatcherType) -> Selection {
        let base = url::Url::parse("https://hub.example/.well-known/mercure").unwrap();
        Selection::new(&[TopicMatcher::new(kind, raw, &base).unwrap()])
    }

    /// A storm of connections (each with a subscription-events channel of
    /// its own) keeps a bounded number of ephemeral publications, and what
    /// it forgets concerns only those who may select such topics.
    #[test]
    fn ephemeral_channels_are_bounded_and_forget_only_for_their_readers() {
        let mut rings = Rings::new(Some("/sub/".into()));
        rings.insert(draft("news"), 1, 0, 100);
        for i in 0..(EPHEMERAL_KEPT as u64 + 500) {
            rings.insert(draft(&format!("/sub/{i}")), i + 2, 0, 16);
        }
        let kept = rings.channels.values().filter(|c| c.ephemeral).count();
        assert_eq!(kept, EPHEMERAL_KEPT);
        assert_eq!(rings.log.len(), EPHEMERAL_KEPT + 1);
        let news = rings.replay(&selection("news", MatcherType::Exact), 0, u64::MAX, 10);
        assert!(!news.gap);
        assert_eq!(news.publications.len(), 1);
        let subs = rings.replay(&selection("/sub/{i}", MatcherType::Legacy), 1, u64::MAX, 10);
        assert!(subs.gap, "the evicted ones are lost to readers of /sub/");
        let other = rings.replay(
            &selection("https://e.com/{x}", MatcherType::Legacy),
            1,
            u64::MAX,
            10,
        );
        assert!(
            !other.gap,
            "a selection that cannot reach /sub/ lost nothing"
        );
        // Forgetting an ephemeral channel draws no new base epoch.
        let base = rings.epoch_base.clone();
        let mut policy = RetentionPolicy::uniform(Retention {
            size: 1000,
            ttl: std::time::Duration::from_secs(3600),
            meta_ttl: std::time::Duration::from_secs(3600),
        });
        policy.ephemeral_prefix = Some("/sub/".into());
        let removed = rings.sweep(120_000, &policy);
        assert_eq!(removed, EPHEMERAL_KEPT);
        assert_eq!(rings.epoch_base, base);
        assert!(rings.ephemeral.is_empty() && rings.channels.len() == 1);
    }
}
