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

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::hub::{Draft, Publication};

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

impl Default for Retention {
    fn default() -> Self {
        Retention {
            size: 1000,
            ttl: Duration::from_secs(24 * 3600),
            meta_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Retention per channel: the default, overridden by namespace (`name:`
/// prefix) where the configuration says so.
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicy {
    /// Retention of channels without an overriding namespace.
    pub default: Retention,
    /// Retention by namespace name.
    pub namespaces: std::collections::HashMap<String, Retention>,
    /// Channels under this prefix (Mercure subscription events: one
    /// channel per subscriber, two publications each) are kept for
    /// [`EPHEMERAL`] only, so connection churn cannot grow history.
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

    /// The retention of `channel`.
    pub fn for_channel(&self, channel: &str) -> Retention {
        if self
            .ephemeral_prefix
            .as_deref()
            .is_some_and(|p| channel.starts_with(p))
        {
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

    /// Stored publications with `after < seq <= upto`, ascending, at most
    /// `limit` of them.
    async fn read_after(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Publication>>, HistoryError>;

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

    /// A channel's current position, giving the channel an epoch if it has
    /// none yet (so that a subscriber's first position stays valid when the
    /// first publication arrives).
    async fn position(&self, channel: &str) -> Result<StreamPosition, HistoryError>;

    /// Drops a channel's publications (its position is kept).
    async fn remove_channel(&self, channel: &str) -> Result<(), HistoryError>;

    /// Reclaims expired publications and idle channel positions; returns how
    /// many publications were removed.
    async fn sweep(&self) -> Result<usize, HistoryError>;

    /// Flushes and releases the store.
    async fn close(&self) -> Result<(), HistoryError>;
}

/// A new random epoch, short like Centrifugo's.
pub(crate) fn new_epoch() -> Arc<str> {
    uuid::Uuid::new_v4().simple().to_string()[..8].into()
}
