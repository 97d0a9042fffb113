//! The subscriber index and the fan-out step: which connections a
//! publication goes to.
//!
//! Subscribers whose matchers are all exact topics are found by topic (a
//! hash lookup per topic); subscribers with one pattern are grouped by the
//! pattern's meaning, each group's pattern tested once per publication,
//! and only the groups found under the publication's topics' index keys
//! (see `TopicMatcher::index_key`); the few with several matchers, some
//! patterns, are tested one by one. Fan-out never blocks on a subscriber:
//! each has a bounded queue, and one that is full is closed as a slow
//! consumer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use indexmap::IndexMap;
use parking_lot::RwLock;

use super::{Delivery, Filter, OccupancyHandler, Offer, Sink};
use crate::history::Publication;
use crate::protocol::mercure::matcher::{topic_keys, TopicMatcher};

pub(super) struct Subscriber {
    pub(super) id: u64,
    pub(super) matchers: Vec<TopicMatcher>,
    pub(super) filter: Arc<dyn Filter>,
    pub(super) sink: Arc<Sink>,
    pub(super) join_leave: bool,
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
pub(super) struct PatternGroup {
    matcher: TopicMatcher,
    /// Its index key (see [`TopicMatcher::index_key`]), if it has one.
    key: Option<String>,
    subscribers: Subscribers,
}

/// Subscribers by id, in a dense array: fan-out walks it as fast as a
/// `Vec`, and removing one is O(1) (a mass disconnect of a hot channel
/// must not hold the index's write lock for O(n) per client).
pub(super) type Subscribers = IndexMap<u64, Arc<Subscriber>>;

#[derive(Default)]
pub(super) struct Index {
    pub(super) by_id: HashMap<u64, Arc<Subscriber>>,
    /// Subscribers whose matchers are all exact, by topic.
    pub(super) exact: HashMap<String, Subscribers>,
    /// Subscribers with one pattern, grouped by the pattern's identity.
    pub(super) patterns: HashMap<String, PatternGroup>,
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
    pub(super) scanned: Subscribers,
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
pub(super) struct Fanout {
    pub(super) index: RwLock<Index>,
    /// Sequence of the last publication fanned out; read under the write
    /// lock at subscribe time so replay and live delivery meet exactly.
    pub(super) last_seq: AtomicU64,
    pub(super) deliveries: AtomicU64,
    pub(super) drops: AtomicU64,
    pub(super) slow_disconnects: AtomicU64,
    pub(super) on_occupancy: OnceLock<OccupancyHandler>,
}

impl Fanout {
    pub(super) fn occupancy(&self, channel: &str, occupied: bool) {
        if let Some(handler) = self.on_occupancy.get() {
            handler(channel, occupied);
        }
    }

    pub(super) fn deliver(&self, p: &Arc<Publication>) {
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
    pub(super) fn deliver_event(&self, channel: &str, event: Delivery) {
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

    /// Registers a subscriber; returns the sequence of the last publication
    /// fanned out before it (its replay covers up to there).
    pub(super) fn add(&self, s: Arc<Subscriber>) -> u64 {
        let mut index = self.index.write();
        let mut occupied = Vec::new();
        if s.only_exact() {
            for m in &s.matchers {
                let topic = m.exact_topic().unwrap_or_default();
                let list = index.exact.entry(topic.to_owned()).or_default();
                if list.is_empty() {
                    occupied.push(topic);
                }
                list.insert(s.id, s.clone());
            }
        } else if let Some(key) = s.pattern_key() {
            index.join_group(key, &s.matchers[0], s.clone());
        } else {
            index.scanned.insert(s.id, s.clone());
        }
        index.by_id.insert(s.id, s.clone());
        let snapshot_seq = self.last_seq.load(Ordering::Acquire);
        drop(index);
        for topic in occupied {
            self.occupancy(topic, true);
        }
        snapshot_seq
    }

    pub(super) fn remove(&self, id: u64) {
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
    pub(super) fanout: Weak<Fanout>,
}

impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        if let Some(f) = self.fanout.upgrade() {
            f.remove(self.id);
        }
    }
}
