//! History: the single source for replay.
//!
//! Every publication is appended here before it is fanned out. History
//! assigns its positions: a hub-wide sequence (the order Mercure replay
//! follows) and a per-channel offset within an epoch (what Centrifugo
//! recovery uses). Both implementations bound each channel by size and age,
//! so storage never grows without limit.
//!
//! - [`memory::MemoryHistory`]: rings in memory, lost at restart.
//! - [`disk::DiskHistory`]: the default, an embedded redb database; replay
//!   survives a restart.

pub mod disk;
pub mod memory;
pub mod publication;

pub use publication::{ClientInfo, Draft, Publication, Wire};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::protocol::mercure::matcher::TopicMatcher;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The embedded database failed.
    #[error("history store: {0}")]
    Store(String),
    /// The store is closed (shutting down).
    #[error("history is closed")]
    Closed,
}

/// Retention of each channel's history.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Publications kept per channel; older ones are trimmed.
    pub size: usize,
    /// Publications older than this are reclaimed.
    pub ttl: Duration,
    /// A channel with no history keeps its epoch and offset this long, so
    /// that clients can still resume from its current position.
    pub meta_ttl: Duration,
}

/// Ephemeral publications kept in all (the oldest go first): under a storm
/// of connections, subscription events cost a bounded amount of memory.
pub const EPHEMERAL_KEPT: usize = 10_000;

/// Retention per channel: the default, overridden by namespace (`name:`
/// prefix) where the configuration says so.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// Retention of channels without an overriding namespace.
    pub default: Retention,
    /// Retention by namespace name.
    pub namespaces: std::collections::HashMap<String, Retention>,
    /// Channels under this prefix (Mercure subscription events: one
    /// channel per subscriber, two publications each) are kept for
    /// [`EPHEMERAL`] only, and in memory even by the disk store, so that
    /// connection churn can neither grow history nor cost durable writes.
    pub ephemeral_prefix: Option<String>,
}

/// Retention of ephemeral channels: long enough for a subscriber of
/// subscription events to reconnect and catch up, short enough that a
/// million connections leave nothing behind a minute later.
pub const EPHEMERAL: Retention = Retention {
    size: 16,
    ttl: Duration::from_secs(60),
    meta_ttl: Duration::from_secs(60),
};

impl RetentionPolicy {
    /// One retention for every channel.
    pub fn uniform(retention: Retention) -> Self {
        RetentionPolicy {
            default: retention,
            namespaces: Default::default(),
            ephemeral_prefix: None,
        }
    }

    /// True for the channels of [`RetentionPolicy::ephemeral_prefix`].
    pub fn is_ephemeral(&self, channel: &str) -> bool {
        self.ephemeral_prefix
            .as_deref()
            .is_some_and(|p| channel.starts_with(p))
    }

    /// The retention of `channel`.
    pub fn for_channel(&self, channel: &str) -> Retention {
        if self.is_ephemeral(channel) {
            return EPHEMERAL;
        }
        channel
            .split_once(':')
            .and_then(|(ns, _)| self.namespaces.get(ns))
            .copied()
            .unwrap_or(self.default)
    }
}

/// A channel's current position: its epoch and the last offset assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    /// Offset of the newest publication (0 when none was ever published).
    pub offset: u64,
    /// The channel's history generation.
    pub epoch: String,
}

/// Where publications are kept and positioned.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// Appends drafts in order, assigning `seq`, `offset` and `epoch`.
    /// When it returns, the publications are as durable as the store is.
    async fn append(&self, drafts: Vec<Draft>) -> Result<Vec<Arc<Publication>>, HistoryError>;

    /// The hub-wide position of the earliest stored publication with `id`.
    async fn seq_of(&self, id: &str) -> Result<Option<u64>, HistoryError>;

    /// Stored publications that `selection` selects, with
    /// `after < seq <= upto`, ascending, at most `limit` of them (Mercure
    /// replay). The cost follows what is selected, not what is stored.
    /// `gap` is set when a publication the selection would have selected
    /// after `after` is no longer stored (trimmed by size, expired,
    /// removed): a replay from `after` would silently skip it.
    async fn replay(
        &self,
        selection: Arc<Selection>,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<ReplayPage, HistoryError>;

    /// The newest publication's sequence and id, if any is stored.
    async fn last(&self) -> Result<Option<(u64, String)>, HistoryError>;

    /// A channel's publications with `offset > since`, ascending, at most
    /// `limit`, and the channel's current position.
    async fn read_channel(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), HistoryError>;

    /// A channel's current position. A channel never published has one too
    /// (offset 0, and the epoch its first publication will get), so that a
    /// subscriber's first position stays valid; asking writes nothing.
    async fn position(&self, channel: &str) -> Result<StreamPosition, HistoryError>;

    /// Drops a channel's publications (its position is kept).
    async fn remove_channel(&self, channel: &str) -> Result<(), HistoryError>;

    /// Reclaims expired publications and idle channel positions; returns how
    /// many publications were removed.
    async fn sweep(&self) -> Result<usize, HistoryError>;

    /// Flushes and releases the store.
    async fn close(&self) -> Result<(), HistoryError>;
}

/// What a Mercure replay selects: topics named exactly (looked up), and
/// patterns (tested against the names of the topics stored).
#[derive(Debug, Default)]
pub struct Selection {
    exact: Vec<String>,
    patterns: Vec<TopicMatcher>,
}

impl Selection {
    /// The topics `matchers` select.
    pub fn new(matchers: &[TopicMatcher]) -> Selection {
        let mut selection = Selection::default();
        for m in matchers {
            match m.exact_topic() {
                Some(topic) => selection.exact.push(topic.to_owned()),
                None => selection.patterns.push(m.clone()),
            }
        }
        selection
    }

    /// The topics named exactly.
    pub fn exact(&self) -> impl Iterator<Item = &str> {
        self.exact.iter().map(String::as_str)
    }

    /// True when some topics are selected by pattern (every stored topic's
    /// name must then be tested).
    pub fn has_patterns(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// True when a pattern selects `topic`.
    pub fn selects_by_pattern(&self, topic: &str) -> bool {
        self.patterns.iter().any(|m| m.matches(topic))
    }

    /// True when `topic` is selected.
    pub fn selects(&self, topic: &str) -> bool {
        self.exact.iter().any(|t| t == topic) || self.selects_by_pattern(topic)
    }

    /// True when a topic starting with `prefix` may be selected (patterns
    /// are judged by their index key: one without may select anything).
    pub fn may_select_under(&self, prefix: &str) -> bool {
        let compatible = |start: &str| start.starts_with(prefix) || prefix.starts_with(start);
        self.exact.iter().any(|t| t.starts_with(prefix))
            || self.patterns.iter().any(|m| match m.index_key() {
                None => true,
                Some(key) => match key.split_once(':') {
                    Some(("r", start)) => compatible(start),
                    // `u:scheme://host[:port]/path`: the path is what a
                    // relative topic under the prefix resolves to.
                    Some(("u", url)) => url
                        .split_once("://")
                        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
                        .is_none_or(compatible),
                    _ => true,
                },
            })
    }

    /// True when one of the publication's topics is selected.
    pub fn selects_publication(&self, p: &Publication) -> bool {
        p.topics().any(|t| self.selects(t))
    }
}

/// A page of a Mercure replay (see [`History::replay`]).
#[derive(Debug, Default)]
pub struct ReplayPage {
    /// The selected publications, ascending by `seq`.
    pub publications: Vec<Arc<Publication>>,
    /// Something selected after the starting point is no longer stored.
    pub gap: bool,
}

/// A new random epoch, short like Centrifugo's.
pub(crate) fn new_epoch() -> Arc<str> {
    uuid::Uuid::new_v4().simple().to_string()[..8].into()
}
