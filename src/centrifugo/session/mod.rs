//! One Centrifugo client connection, independent of its transport.
//!
//! The transport feeds it frames ([`Session::handle_frame`]), hub
//! deliveries ([`Session::push`]) and server controls
//! ([`Session::control`]); each call appends what must be written to the
//! [`Outbox`]. A `Err(code)` means: close the connection with that
//! disconnect code.
//!
//! On a unidirectional transport the client sends one connect request (not
//! a command) and then only listens: replies become pushes (`connect`,
//! `disconnect`) and pushes are written unwrapped. On `uni_sse` every
//! publication event carries an id with the connection's positions, so a
//! plain `EventSource` resumes where it was (see `protocol::centrifuge::resume`).
//!
//! Here: the session's state, its frames and commands dispatched, its end.
//! `connect` (tokens, proxies, expiry and refresh), `subscribe`
//! (permissions, recovery, wildcards, presence), `commands` (publish, RPC,
//! presence, history) and `push` (what the hub sends) hold the rest.

mod commands;
mod connect;
mod push;
mod subscribe;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::encode::{self, client_info};
use super::settings::{limited_to, Asker, Namespace, PRIVATE_PREFIX};
use super::{Control, Node, Transport};
use crate::auth::centrifugo::{self as tokens, TokenError};
use crate::history::{ClientInfo, Draft, Publication};
use crate::hub::{Delivery, Filter, Sink, SubscriptionHandle};
use crate::integration::proxy::{self as backend, Decision, Payload};
use crate::integration::webhooks::{Event, EventKind};
use crate::limits::RateLimiter;
use crate::protocol::centrifuge::outbox::Outbox;
use crate::protocol::centrifuge::resume::{self, ChannelPosition};
use crate::protocol::centrifuge::{
    self as proto, disconnect, error_reply, errors, push_of_json_reply, Encoding, Reply,
};
use crate::protocol::mercure::matcher::{MatcherType, TopicMatcher};

/// A disconnect: `(code, reason)`.
pub type Disconnect = (u16, String);

fn close(code: disconnect::Code) -> Disconnect {
    (code.0, code.1.to_owned())
}

/// Most publications returned by one recovery or history call.
const MAX_RECOVER: usize = 10_000;

/// The server version reported to clients.
pub const VERSION: &str = concat!("tidings ", env!("CARGO_PKG_VERSION"));

/// Centrifugo subscribers receive public publications only: private
/// Mercure updates need Mercure grants, which a WebSocket client lacks.
struct PublicOnly;

impl Filter for PublicOnly {
    fn admits(&self, p: &Publication) -> bool {
        !p.draft.private
    }
}

struct ChannelSub {
    _handle: SubscriptionHandle,
    /// A wildcard subscription's pattern (None: a plain channel).
    pattern: Option<TopicMatcher>,
    /// When the subscribe proxy's `expire_at` comes (sub refresh proxy).
    refresh_at: Option<u64>,
    /// When the subscription expires unless the client sends `sub_refresh`
    /// (its token's expiry; `expired_sub_close_delay` is granted on top).
    expires_at: Option<u64>,
    /// Made by the server (connection token, server API): it cannot be
    /// unsubscribed alone, so its expiry closes the connection.
    server_side: bool,
    /// Live publications at or below this offset were sent in the
    /// subscribe reply (or precede the client's position).
    skip_upto: u64,
    epoch: String,
    info: Arc<ClientInfo>,
    presence: bool,
    join_leave: bool,
}

struct Connected {
    user: String,
    conn_info: Option<String>,
    expires_at: Option<u64>,
    /// Meta the connect proxy attached (sent back with later proxy calls).
    meta: Option<serde_json::Value>,
}

/// How a backend refused: an error reply, or closing the connection.
enum Refusal {
    Error(proto::Error),
    Close(Disconnect),
}

impl Refusal {
    fn reply(self, id: u32) -> Result<Reply, Disconnect> {
        match self {
            Refusal::Error(e) => Ok(Reply {
                id,
                error: Some(e),
                ..Default::default()
            }),
            Refusal::Close(d) => Err(d),
        }
    }
}

/// How long a failed refresh proxy call waits before trying again.
const REFRESH_RETRY_SECS: u64 = 10;

/// What a connect proxy answered besides the connection's identity.
struct FromBackend {
    /// Data for the connect reply.
    data: Bytes,
    meta: Option<serde_json::Value>,
    /// Channel info of server-side subscriptions.
    chan_infos: HashMap<String, Option<String>>,
}

/// The error a client sees when a backend failed (temporary: it retries).
fn internal_error() -> proto::Error {
    proto::Error {
        code: errors::INTERNAL.0,
        message: errors::INTERNAL.1.into(),
        temporary: true,
    }
}

/// Whether a channel in a wildcard namespace is a pattern: it uses URL
/// Pattern syntax after the namespace.
fn is_pattern(channel: &str) -> bool {
    let rest = channel.split_once(':').map_or(channel, |(_, r)| r);
    rest.contains(['*', ':', '(', '{', '+', '?', '\\'])
}

/// One client connection.
pub struct Session {
    node: Arc<Node>,
    transport: Transport,
    encoding: Encoding,
    sink: Arc<Sink>,
    client: String,
    /// Emulated and unidirectional connections' session id (else empty).
    session_id: String,
    connected: Option<Connected>,
    subs: HashMap<String, ChannelSub>,
    /// Positions a `uni_sse` client resumes from (its `Last-Event-ID`).
    resume_from: Vec<ChannelPosition>,
    /// Recovered publications a `uni_sse` connect sends as events of their own.
    replay: Vec<Arc<Publication>>,
    /// Request headers forwarded to proxies.
    headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    /// Wildcard subscriptions held (their deliveries need matching).
    patterns: usize,
    /// Sequence of the last publication pushed through a pattern, so one
    /// matched by two patterns is pushed once.
    last_pattern_seq: u64,
    /// Set when a pong (an empty command) arrives.
    pub got_pong: bool,
    /// A ping was sent and not answered yet: a pong at any other time is
    /// a protocol error, as in Centrifugo.
    ping_outstanding: bool,
    /// `limits.publish_rate` for this connection.
    publish_rate: Option<RateLimiter>,
}

impl Session {
    /// A new, not yet connected session over `transport`, writing to
    /// `sink`; `session_id` is the id emulated and unidirectional clients
    /// are given. Server controls arrive through `sink` once connected.
    pub fn new(
        node: Arc<Node>,
        transport: Transport,
        encoding: Encoding,
        sink: Arc<Sink>,
        session_id: String,
        headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    ) -> Session {
        Session {
            publish_rate: node.limits.publish_rate.map(RateLimiter::new),
            node,
            transport,
            encoding,
            sink,
            client: uuid::Uuid::new_v4().to_string(),
            session_id,
            connected: None,
            subs: HashMap::new(),
            resume_from: Vec::new(),
            replay: Vec::new(),
            headers,
            patterns: 0,
            last_pattern_seq: 0,
            got_pong: false,
            ping_outstanding: false,
        }
    }

    /// Recover these channels from these positions when connecting
    /// (`uni_sse`: the positions in the browser's `Last-Event-ID`).
    pub fn resume_from(&mut self, positions: Vec<ChannelPosition>) {
        self.resume_from = positions;
    }

    /// The connected user (empty when anonymous or not yet connected).
    pub fn user(&self) -> &str {
        self.connected.as_ref().map_or("", |c| c.user.as_str())
    }

    /// Whether the connect command succeeded.
    pub fn is_connected(&self) -> bool {
        self.connected.is_some()
    }

    /// The client id.
    pub fn client(&self) -> &str {
        &self.client
    }

    /// Handles one inbound frame.
    pub async fn handle_frame(&mut self, frame: &[u8], out: &mut Outbox) -> Result<(), Disconnect> {
        if self.transport.unidirectional() {
            if self.connected.is_some() {
                return Ok(()); // pushes only: anything after connect is ignored
            }
            let req = if frame.iter().all(u8::is_ascii_whitespace) {
                proto::ConnectRequest::default()
            } else {
                serde_json::from_slice(frame).map_err(|e| {
                    tracing::debug!(client = %self.client, error = %e, "bad connect request");
                    close(disconnect::BAD_REQUEST)
                })?
            };
            return self.connect_unidirectional(req, out).await;
        }
        let commands = proto::decode_commands(self.encoding, frame).map_err(|e| {
            tracing::debug!(client = %self.client, error = %e, "bad frame");
            close(disconnect::BAD_REQUEST)
        })?;
        for cmd in commands {
            if let Some(reply) = self.handle_command(cmd).await? {
                out.message(&reply);
            }
        }
        Ok(())
    }

    async fn handle_command(&mut self, cmd: proto::Command) -> Result<Option<Reply>, Disconnect> {
        let id = cmd.id;
        let is_pong = cmd == proto::Command::default();
        if self.connected.is_none() && cmd.connect.is_none() {
            // Anything before connect is a protocol violation.
            return Err(close(disconnect::BAD_REQUEST));
        }
        if id == 0 && cmd.send.is_none() && !is_pong {
            // Only pongs and `send` go without an id.
            return Err(close(disconnect::BAD_REQUEST));
        }
        if let Some(req) = cmd.connect {
            return self.connect(id, req).await.map(Some);
        }
        let reply = if let Some(req) = cmd.subscribe {
            self.subscribe(id, req).await?
        } else if let Some(req) = cmd.unsubscribe {
            self.unsubscribe(&req.channel);
            Reply {
                id,
                unsubscribe: Some(proto::UnsubscribeResult {}),
                ..Default::default()
            }
        } else if let Some(req) = cmd.publish {
            self.publish(id, req).await?
        } else if let Some(req) = cmd.presence {
            self.presence(id, &req.channel, false).await
        } else if let Some(req) = cmd.presence_stats {
            self.presence(id, &req.channel, true).await
        } else if let Some(req) = cmd.history {
            self.history(id, req).await
        } else if cmd.ping.is_some() {
            Reply {
                id,
                ping: Some(proto::PingResult {}),
                ..Default::default()
            }
        } else if cmd.send.is_some() {
            // Asynchronous messages have nowhere to go (no send proxy).
            return Ok(None);
        } else if let Some(req) = cmd.rpc {
            self.rpc(id, req).await?
        } else if let Some(req) = cmd.refresh {
            return self.refresh(id, &req.token).map(Some);
        } else if let Some(req) = cmd.sub_refresh {
            self.sub_refresh(id, req)
        } else {
            // A command without a method: a malformed one, or the pong
            // answering a ping (empty, id 0) — anything else is a
            // protocol error, as Centrifugo has it.
            if !is_pong || !std::mem::take(&mut self.ping_outstanding) {
                return Err(close(disconnect::BAD_REQUEST));
            }
            self.got_pong = true;
            return Ok(None);
        };
        Ok(Some(reply))
    }
}

impl Session {
    /// The connection ended (None: the client went away): leaves every
    /// channel and tells webhooks why.
    pub fn ended(&mut self, why: Option<&Disconnect>) {
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for c in channels {
            self.leave(&c, "disconnect");
        }
        if self.connected.is_some() && self.node.webhooks.wants(EventKind::Disconnect) {
            let mut e = self.event(EventKind::Disconnect);
            match why {
                Some((code, reason)) => {
                    e.code = Some(*code);
                    e.reason.clone_from(reason);
                }
                None => e.reason = "connection closed".into(),
            }
            self.node.webhooks.emit(e);
        }
        self.connected = None;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Normally `ended` ran already; this covers a task that was dropped.
        self.ended(None);
        self.node.unregister(&self.client);
    }
}

/// The base URL channel names are resolved against for matchers (exact
/// matchers never use it).
fn url_base() -> url::Url {
    url::Url::parse("http://localhost/").unwrap_or_else(|_| unreachable!())
}

/// Reads a channel's history the way the protocol's `history` asks:
/// `since` (offset + epoch; a different epoch is an unrecoverable position),
/// `limit` (0: only the position; negative: no limit), `reverse` (newest
/// first; with `since`, the publications before it).
pub async fn read_history(
    node: &Node,
    channel: &str,
    since: Option<&proto::StreamPosition>,
    limit: i32,
    reverse: bool,
) -> Result<(Vec<Arc<Publication>>, crate::history::StreamPosition), errors::Code> {
    let history = node.hub.history();
    let internal = |_| errors::INTERNAL;
    let position = history.position(channel).await.map_err(internal)?;
    if let Some(s) = since {
        if !s.epoch.is_empty() && s.epoch != position.epoch {
            return Err(errors::UNRECOVERABLE_POSITION);
        }
    }
    if limit == 0 {
        return Ok((Vec::new(), position));
    }
    let wanted = if limit > 0 {
        (limit as usize).min(MAX_RECOVER)
    } else {
        MAX_RECOVER
    };
    // Forward: what follows `since`. Backward: what precedes it (or the
    // newest), so that paging back with the oldest offset seen goes on.
    let (from, before) = match (reverse, since) {
        (false, s) => (s.map_or(0, |s| s.offset), u64::MAX),
        (true, s) => {
            let before = s.map_or(position.offset + 1, |s| s.offset);
            (before.saturating_sub(wanted as u64 + 1), before)
        }
    };
    let most = if reverse {
        (before - from) as usize
    } else {
        MAX_RECOVER
    };
    let (mut pubs, position) = history
        .read_channel(channel, from, most)
        .await
        .map_err(internal)?;
    pubs.retain(|p| p.offset < before && !p.draft.private);
    if reverse {
        pubs.reverse();
    }
    pubs.truncate(wanted);
    Ok((pubs, position))
}
