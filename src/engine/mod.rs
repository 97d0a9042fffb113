//! Engines shared by many nodes: Redis and NATS JetStream.
//!
//! A single node keeps history in its embedded store and fans out in
//! process. Several nodes behind a load balancer share an engine instead,
//! one the operator already runs, and each node becomes stateless besides
//! its connections. An engine plays three parts:
//!
//! - [`History`](crate::history::History): it positions and stores every
//!   publication (hub-wide `seq`, per-channel `offset` + `epoch`), so any
//!   node answers a Mercure `Last-Event-ID` or a Centrifugo recovery alike;
//! - [`Broker`]: it carries every positioned publication to every node, in
//!   `seq` order, and tells a node when it cannot ([`Feed::Reset`]): the node
//!   then disconnects its clients so that they recover from history, or are
//!   told the position is lost, instead of living with a silent gap;
//! - [`PresenceStore`]: who is in a channel on any node, with expiry, so a
//!   dead node's clients disappear.
//!
//! Both engines carry publications by tailing one hub-wide log (a Redis
//! stream, a JetStream stream) rather than through fire-and-forget pub/sub:
//! a node that falls behind or reconnects resumes from the last `seq` it
//! delivered, so nothing is lost between nodes; docs/decisions.md has why.

pub mod nats;
pub mod queue;
pub mod redis;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::history::History;
use crate::history::{ClientInfo, Publication};

/// An engine failure (connection, protocol, or data it cannot read).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(String),
    /// NATS failed.
    #[error("nats: {0}")]
    Nats(String),
}

impl From<EngineError> for crate::history::HistoryError {
    fn from(e: EngineError) -> Self {
        crate::history::HistoryError::Store(e.to_string())
    }
}

/// What an engine feeds a node, in order.
#[derive(Debug)]
pub enum Feed {
    /// Publications from any node, ascending by `seq`, none skipped.
    Publications(Vec<Arc<Publication>>),
    /// The engine lost state this node relied on (data lost in a restart,
    /// publications trimmed before this node read them). Deliveries go on
    /// from `last_seq`; clients must recover from history, which tells them
    /// what can no longer be recovered.
    Reset {
        /// The hub-wide position the feed continues after.
        last_seq: u64,
        /// What happened, for the log.
        why: String,
    },
    /// An event another node broadcast.
    Event(ClusterEvent),
}

/// Events nodes tell each other (best effort, like Centrifugo's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClusterEvent {
    /// A client joined a channel.
    Join(String, ClientInfo),
    /// A client left a channel.
    Leave(String, ClientInfo),
    /// A server API command for a user's connections, wherever they are.
    Control {
        /// The user.
        user: String,
        /// One client of the user, or all of them.
        client: Option<String>,
        /// What to do, encoded by the protocol that asks it (the engine
        /// and the hub only carry it).
        control: bytes::Bytes,
    },
}

/// A [`ClusterEvent`] with the node it came from (a node ignores its own).
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending node's id.
    pub node: String,
    /// The event.
    pub event: ClusterEvent,
}

impl Envelope {
    fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Envelope> {
        postcard::from_bytes(bytes).ok()
    }
}

/// Carries publications and events between nodes.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Starts this node's feed: every publication with `seq > after`, in
    /// order, and the events other nodes broadcast. The engine reconnects by
    /// itself (with backoff) and resumes where it was.
    fn feed(&self, node: String, after: u64) -> mpsc::Receiver<Feed>;

    /// Sends an event to every node.
    async fn broadcast(&self, envelope: &Envelope) -> Result<(), EngineError>;
}

/// Presence shared by all nodes. Entries expire unless refreshed, so the
/// clients of a node that died without cleaning up disappear by themselves.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Records (or refreshes) `info` in `channel`.
    async fn add(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError>;
    /// Removes a client from `channel`.
    async fn remove(&self, channel: &str, client: &str) -> Result<(), EngineError>;
    /// Everyone in `channel` on any node, by client id.
    async fn get(&self, channel: &str) -> Result<HashMap<String, Arc<ClientInfo>>, EngineError>;
}

/// One engine's three parts, as the hub uses them.
#[derive(Clone)]
pub struct Engine {
    /// `redis` or `nats` (for logs and metrics).
    pub name: &'static str,
    /// Positions and stores publications.
    pub history: Arc<dyn History>,
    /// Carries them to every node.
    pub broker: Arc<dyn Broker>,
    /// Presence across nodes.
    pub presence: Arc<dyn PresenceStore>,
    /// How long a presence entry lives without a refresh.
    pub presence_ttl: std::time::Duration,
    /// Where webhook events wait for delivery.
    pub events: Arc<dyn crate::integration::queue::EventQueue>,
}

/// What a shared engine needs to know besides its URL.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Prefix of every key, subject and stream, so several hubs can share one
    /// Redis or NATS.
    pub prefix: String,
    /// Publications kept in the hub-wide log (Mercure replay, node catch-up).
    pub log_size: usize,
    /// Retention per channel.
    pub retention: crate::history::RetentionPolicy,
    /// Lifetime of a presence entry that is not refreshed.
    pub presence_ttl: std::time::Duration,
}

/// Tells the node about publications it can never read (`after + 1` up to
/// `next - 1` are gone from the log); false when the node went away.
pub(crate) async fn report_gap(tx: &mpsc::Sender<Feed>, after: u64, next: u64) -> bool {
    if next <= after + 1 {
        return true;
    }
    let why = format!(
        "publications {}..{} left the log before this node read them",
        after + 1,
        next - 1
    );
    tx.send(Feed::Reset {
        last_seq: next - 1,
        why,
    })
    .await
    .is_ok()
}

/// Passes another node's event on to this node; false when the node went
/// away. Undecodable events are counted and skipped.
pub(crate) async fn forward_event(
    tx: &mpsc::Sender<Feed>,
    node: &str,
    engine: &'static str,
    bytes: &[u8],
) -> bool {
    let Some(envelope) = Envelope::from_bytes(bytes) else {
        crate::metrics::engine_error(engine, "decode");
        return true;
    };
    envelope.node == node || tx.send(Feed::Event(envelope.event)).await.is_ok()
}
