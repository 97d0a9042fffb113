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

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::encode::{self, client_info};
use super::settings::Namespace;
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

/// Unsubscribe code when a subscription's refresh says it expired.
const SUBSCRIPTION_EXPIRED: (u32, &str) = (2501, "subscription expired");
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

    /// When the connection token expires (seconds since the Unix epoch).
    pub fn expires_at(&self) -> Option<u64> {
        self.connected.as_ref().and_then(|c| c.expires_at)
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

    /// Connects a unidirectional client: the result is a `connect` push,
    /// a refusal a disconnect.
    async fn connect_unidirectional(
        &mut self,
        mut req: proto::ConnectRequest,
        out: &mut Outbox,
    ) -> Result<(), Disconnect> {
        for p in std::mem::take(&mut self.resume_from) {
            let wanted = req.subs.entry(p.channel).or_default();
            (wanted.recover, wanted.offset, wanted.epoch) = (true, p.offset, p.epoch);
        }
        let reply = self.connect(0, req).await?;
        if let Some(e) = reply.error {
            return Err(close(match e.code {
                c if c == errors::TOKEN_EXPIRED.0 => disconnect::EXPIRED,
                c if c == errors::PERMISSION_DENIED.0 => disconnect::PERMISSION_DENIED,
                c if c == errors::UNAUTHORIZED.0 => disconnect::INVALID_TOKEN,
                _ => disconnect::SERVER_ERROR,
            }));
        }
        let r = reply.connect.unwrap_or_default();
        let push = proto::Push {
            connect: Some(proto::Connect {
                client: r.client,
                version: r.version,
                data: r.data,
                subs: r.subs,
                expires: r.expires,
                ttl: r.ttl,
                ping: r.ping,
                pong: false,
                session: r.session,
                node: r.node,
            }),
            ..Default::default()
        };
        out.message_with_id(&push, self.resume_id().as_deref());
        for p in std::mem::take(&mut self.replay) {
            self.push(Delivery::Publication(p), out)?;
        }
        Ok(())
    }

    /// The `uni_sse` event id: every channel's position.
    fn resume_id(&self) -> Option<String> {
        if self.transport != Transport::UniSse {
            return None;
        }
        let mut positions: Vec<(&str, u64, &str)> = self
            .subs
            .iter()
            .map(|(c, s)| (c.as_str(), s.skip_upto, s.epoch.as_str()))
            .collect();
        positions.sort_unstable();
        Some(resume::encode(positions))
    }

    async fn handle_command(&mut self, cmd: proto::Command) -> Result<Option<Reply>, Disconnect> {
        let id = cmd.id;
        if let Some(req) = cmd.connect {
            return self.connect(id, req).await.map(Some);
        }
        if self.connected.is_none() {
            // Anything before connect is a protocol violation.
            return Err(close(disconnect::BAD_REQUEST));
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
        } else if id == 0 {
            // An empty command is the client's pong.
            self.got_pong = true;
            return Ok(None);
        } else {
            error_reply(id, errors::METHOD_NOT_FOUND)
        };
        Ok(Some(reply))
    }

    async fn connect(&mut self, id: u32, req: proto::ConnectRequest) -> Result<Reply, Disconnect> {
        if self.connected.is_some() {
            return Err(close(disconnect::BAD_REQUEST));
        }
        let node = self.node.clone();
        let s = &node.settings;
        let mut from_backend = None;
        let token = if req.token.is_empty() && node.proxy.settings.connect.is_some() {
            match self.connect_proxy(&req).await {
                Ok((token, answer)) => {
                    from_backend = Some(answer);
                    token
                }
                Err(refusal) => return refusal.reply(id),
            }
        } else if req.token.is_empty() {
            if !s.anonymous {
                crate::metrics::auth_failure("centrifugo", "missing token");
                return Ok(error_reply(id, errors::UNAUTHORIZED));
            }
            tokens::ConnectionToken::default()
        } else {
            match tokens::connection(&self.node.key, &req.token) {
                Ok(t) => t,
                Err(TokenError::Expired) => {
                    crate::metrics::auth_failure("centrifugo", "token expired");
                    return Ok(error_reply(id, errors::TOKEN_EXPIRED));
                }
                Err(TokenError::Invalid) => {
                    crate::metrics::auth_failure("centrifugo", "invalid token");
                    return Err(close(disconnect::INVALID_TOKEN));
                }
            }
        };
        if token.channels.len() > s.channel_limit {
            return Err(close(disconnect::CHANNEL_LIMIT));
        }
        let (data, meta, mut chan_infos) = match from_backend {
            Some(b) => (b.data, b.meta, b.chan_infos),
            None => (Bytes::new(), None, HashMap::new()),
        };
        let connected = Connected {
            user: token.user.clone(),
            conn_info: token.info.clone(),
            expires_at: token.expires_at,
            meta,
        };
        if !self
            .node
            .register(&self.client, &token.user, self.sink.clone())
        {
            return Err(close(disconnect::CONNECTION_LIMIT));
        }
        self.connected = Some(connected);
        if self.node.webhooks.wants(EventKind::Connect) {
            self.node.webhooks.emit(self.event(EventKind::Connect));
        }
        let mut subs = HashMap::new();
        for channel in &token.channels {
            let wanted = req.subs.get(channel).cloned().unwrap_or_default();
            let sub_req = proto::SubscribeRequest {
                channel: channel.clone(),
                ..wanted
            };
            let chan_info = chan_infos.remove(channel).flatten();
            match self.join_channel(&sub_req, chan_info).await {
                Ok(result) => {
                    subs.insert(channel.clone(), result);
                }
                Err(code) => {
                    tracing::debug!(channel, code = code.0, "server-side subscription refused")
                }
            }
        }
        // With a refresh proxy the hub refreshes the session itself: the
        // client is not told to (it would ask for a token it has not got).
        let (expires, ttl) = if node.proxy.settings.refresh.is_some() {
            (false, 0)
        } else {
            self.ttl(token.expires_at)
        };
        Ok(Reply {
            id,
            connect: Some(proto::ConnectResult {
                client: self.client.clone(),
                version: VERSION.into(),
                expires,
                ttl,
                data,
                subs,
                ping: s.ping_interval.as_secs().max(1) as u32,
                pong: !self.transport.unidirectional(),
                session: self.session_id.clone(),
                node: if self.transport.emulation() {
                    self.node.name.clone()
                } else {
                    String::new()
                },
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// The fields every proxy request carries.
    fn client_context(&self) -> backend::ClientContext {
        backend::ClientContext {
            client: self.client.clone(),
            transport: self.transport.name(),
            protocol: match self.encoding {
                Encoding::Json => "json",
                Encoding::Protobuf => "protobuf",
            },
            encoding: match self.encoding {
                Encoding::Json => "json",
                Encoding::Protobuf => "binary",
            },
            user: self.user().to_owned(),
            meta: self.connected.as_ref().and_then(|c| c.meta.clone()),
        }
    }

    /// Asks the backend at `endpoint`; its refusals and failures become the
    /// protocol's (a failure is a temporary internal error: the client
    /// retries, it never hangs).
    async fn ask<T: serde::de::DeserializeOwned + Default>(
        &self,
        kind: &'static str,
        endpoint: &url::Url,
        request: &impl serde::Serialize,
    ) -> Result<T, Refusal> {
        match self
            .node
            .proxy
            .call::<T>(kind, endpoint, request, &self.headers)
            .await
        {
            Ok(Decision::Allow(result)) => Ok(result),
            Ok(Decision::Error(e)) => Err(Refusal::Error(proto::Error {
                code: e.code,
                message: e.message,
                temporary: e.temporary,
            })),
            Ok(Decision::Disconnect(d)) => {
                let mut reason = d.reason;
                // Close frames carry at most 123 bytes; the protocol says 32.
                while reason.len() > 32 {
                    reason.pop();
                }
                Err(Refusal::Close((d.code, reason)))
            }
            Err(_) => Err(Refusal::Error(internal_error())),
        }
    }

    /// A connect without a token, decided by the connect proxy.
    async fn connect_proxy(
        &self,
        req: &proto::ConnectRequest,
    ) -> Result<(tokens::ConnectionToken, FromBackend), Refusal> {
        let Some(endpoint) = self.node.proxy.settings.connect.clone() else {
            return Err(Refusal::Error(internal_error()));
        };
        let request = backend::ConnectRequest {
            ctx: self.client_context(),
            name: req.name.clone(),
            version: req.version.clone(),
            payload: Payload::of(&req.data),
        };
        let r: backend::ConnectResult = self.ask("connect", &endpoint, &request).await?;
        let malformed = |_| Refusal::Error(internal_error());
        let mut channels = r.channels;
        let mut chan_infos = HashMap::new();
        for (channel, options) in r.subs {
            chan_infos.insert(channel.clone(), options.info.text().map_err(malformed)?);
            if !channels.contains(&channel) {
                channels.push(channel);
            }
        }
        let token = tokens::ConnectionToken {
            user: r.user,
            expires_at: (r.expire_at > 0).then_some(r.expire_at),
            info: r.info.text().map_err(malformed)?,
            channels,
        };
        let data = r.payload.bytes().map_err(malformed)?.unwrap_or_default();
        Ok((
            token,
            FromBackend {
                data,
                meta: r.meta,
                chan_infos,
            },
        ))
    }

    /// The connection's session expired: ask the refresh proxy, if there is
    /// one, whether it goes on.
    pub async fn expired(&mut self) -> Result<(), Disconnect> {
        let Some(endpoint) = self.node.proxy.settings.refresh.clone() else {
            return Err(close(disconnect::EXPIRED));
        };
        let request = backend::RefreshRequest {
            ctx: self.client_context(),
        };
        let answer: Result<backend::RefreshResult, _> =
            self.ask("refresh", &endpoint, &request).await;
        let Some(c) = self.connected.as_mut() else {
            return Err(close(disconnect::EXPIRED));
        };
        match answer {
            Ok(r) if r.expired || (r.expire_at > 0 && r.expire_at <= crate::time::now_secs()) => {
                Err(close(disconnect::EXPIRED))
            }
            Ok(r) => {
                c.expires_at = (r.expire_at > 0).then_some(r.expire_at);
                if let Ok(Some(info)) = r.info.text() {
                    c.conn_info = Some(info);
                }
                Ok(())
            }
            // The backend is down: keep the connection and ask again soon.
            Err(_) => {
                c.expires_at = Some(crate::time::now_secs() + REFRESH_RETRY_SECS);
                Ok(())
            }
        }
    }

    /// When the next subscription refresh is due.
    pub fn next_sub_refresh(&self) -> Option<u64> {
        self.subs.values().filter_map(|s| s.refresh_at).min()
    }

    /// Asks the sub refresh proxy about every subscription that is due; an
    /// expired one is unsubscribed (2501).
    pub async fn refresh_subscriptions(&mut self, out: &mut Outbox) {
        let Some(endpoint) = self.node.proxy.settings.sub_refresh.clone() else {
            return;
        };
        let now = crate::time::now_secs();
        let due: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.refresh_at.is_some_and(|at| at <= now))
            .map(|(c, _)| c.clone())
            .collect();
        for channel in due {
            let request = backend::ChannelRequest {
                ctx: self.client_context(),
                channel: channel.clone(),
                payload: Payload::default(),
            };
            let answer: Result<backend::RefreshResult, _> =
                self.ask("sub_refresh", &endpoint, &request).await;
            let next = match answer {
                Ok(r) if r.expired || (r.expire_at > 0 && r.expire_at <= now) => None,
                Ok(r) => Some((r.expire_at > 0).then_some(r.expire_at)),
                Err(_) => Some(Some(now + REFRESH_RETRY_SECS)),
            };
            match next {
                Some(at) => {
                    if let Some(sub) = self.subs.get_mut(&channel) {
                        sub.refresh_at = at;
                    }
                }
                None => self.server_unsubscribe(channel, SUBSCRIPTION_EXPIRED, out),
            }
        }
    }

    fn ttl(&self, expires_at: Option<u64>) -> (bool, u32) {
        match expires_at {
            Some(exp) => (true, exp.saturating_sub(crate::time::now_secs()) as u32),
            None => (false, 0),
        }
    }

    fn namespace(&self, channel: &str) -> Result<&Namespace, errors::Code> {
        if channel.is_empty() {
            return Err(errors::BAD_REQUEST);
        }
        self.node
            .settings
            .namespace(channel)
            .ok_or(errors::UNKNOWN_CHANNEL)
    }

    async fn subscribe(
        &mut self,
        id: u32,
        req: proto::SubscribeRequest,
    ) -> Result<Reply, Disconnect> {
        let ns = match self.namespace(&req.channel) {
            Ok(ns) => ns.clone(),
            Err(code) => return Ok(error_reply(id, code)),
        };
        if self.subs.contains_key(&req.channel) {
            return Ok(error_reply(id, errors::ALREADY_SUBSCRIBED));
        }
        if self.subs.len() >= self.node.settings.channel_limit {
            return Ok(error_reply(id, errors::LIMIT_EXCEEDED));
        }
        let user = self.user().to_owned();
        let mut chan_info = None;
        let mut sub_exp = None;
        let mut data = Bytes::new();
        if !req.token.is_empty() {
            match tokens::subscription(&self.node.key, &req.token) {
                Ok(t) if t.channel == req.channel && t.user == user => {
                    chan_info = t.info;
                    sub_exp = t.expires_at;
                }
                Ok(_) | Err(TokenError::Invalid) => {
                    crate::metrics::auth_failure("centrifugo", "invalid subscription token");
                    return Ok(error_reply(id, errors::PERMISSION_DENIED));
                }
                Err(TokenError::Expired) => {
                    crate::metrics::auth_failure("centrifugo", "subscription token expired");
                    return Ok(error_reply(id, errors::TOKEN_EXPIRED));
                }
            }
        } else if let (true, Some(endpoint)) = (
            ns.subscribe_proxy,
            self.node.proxy.settings.subscribe.clone(),
        ) {
            let request = backend::ChannelRequest {
                ctx: self.client_context(),
                channel: req.channel.clone(),
                payload: Payload::of(&req.data),
            };
            let r: backend::SubscribeResult = match self.ask("subscribe", &endpoint, &request).await
            {
                Ok(r) => r,
                Err(refusal) => return refusal.reply(id),
            };
            let (Ok(info), Ok(reply_data)) = (r.info.text(), r.payload.bytes()) else {
                return Ok(error_reply(id, errors::INTERNAL));
            };
            chan_info = info;
            data = reply_data.unwrap_or_default();
            sub_exp = (r.expire_at > 0).then_some(r.expire_at);
        } else if !ns.allow_subscribe || (user.is_empty() && !ns.allow_anonymous) {
            return Ok(error_reply(id, errors::PERMISSION_DENIED));
        }
        Ok(match self.join_channel(&req, chan_info).await {
            Ok(mut result) => {
                result.data = data;
                if ns.sub_refresh_proxy && sub_exp.is_some() {
                    // The hub refreshes it through the proxy; the client
                    // is not told it expires.
                    if let Some(sub) = self.subs.get_mut(&req.channel) {
                        sub.refresh_at = sub_exp;
                    }
                } else {
                    (result.expires, result.ttl) = self.ttl(sub_exp);
                }
                Reply {
                    id,
                    subscribe: Some(result),
                    ..Default::default()
                }
            }
            Err(code) => error_reply(id, code),
        })
    }

    /// Registers a subscription, answers its position (recovering missed
    /// publications when asked), and records presence.
    async fn join_channel(
        &mut self,
        req: &proto::SubscribeRequest,
        chan_info: Option<String>,
    ) -> Result<proto::SubscribeResult, errors::Code> {
        let ns = self.namespace(&req.channel)?.clone();
        if self.subs.contains_key(&req.channel) {
            return Err(errors::ALREADY_SUBSCRIBED);
        }
        if ns.wildcards && is_pattern(&req.channel) {
            return self.join_pattern(req, &ns, chan_info);
        }
        let hub = &self.node.hub;
        let matcher = TopicMatcher::new(MatcherType::Exact, &req.channel, &url_base())
            .map_err(|_| errors::BAD_REQUEST)?;
        // Register first, so nothing published from now on is missed.
        let handle = hub.subscribe_on(
            &self.sink,
            vec![matcher],
            Arc::new(PublicOnly),
            ns.join_leave,
        );
        let recovering =
            req.recover || (ns.force_recovery && (req.offset > 0 || !req.epoch.is_empty()));
        let history = hub.history();
        let internal = |e: crate::history::HistoryError| {
            tracing::error!(error = %e, "history read failed");
            errors::INTERNAL
        };
        let (publications, position, recovered) = if recovering {
            let (pubs, pos) = history
                .read_channel(&req.channel, req.offset, MAX_RECOVER)
                .await
                .map_err(internal)?;
            let pos = if pos.epoch.is_empty() {
                history.position(&req.channel).await.map_err(internal)?
            } else {
                pos
            };
            let contiguous = match pubs.first() {
                Some(first) => first.offset == req.offset + 1,
                None => pos.offset == req.offset,
            };
            let recovered = pos.epoch == req.epoch && contiguous && pubs.len() < MAX_RECOVER;
            (pubs, pos, recovered)
        } else {
            (
                Vec::new(),
                history.position(&req.channel).await.map_err(internal)?,
                false,
            )
        };
        let user = self
            .connected
            .as_ref()
            .map(|c| c.user.clone())
            .unwrap_or_default();
        let conn_info = self.connected.as_ref().and_then(|c| c.conn_info.clone());
        let info = Arc::new(ClientInfo {
            user,
            client: self.client.clone(),
            conn_info,
            chan_info,
        });
        // uni_sse sends recovered publications as events of their own, each
        // with its id, so a drop during the replay loses nothing either.
        let replay_as_events = self.transport == Transport::UniSse && recovered;
        let skip_upto = if replay_as_events {
            req.offset
        } else {
            publications
                .last()
                .map_or(position.offset, |p| p.offset.max(position.offset))
        };
        if ns.presence {
            hub.presence().add(&req.channel, info.clone()).await;
        }
        if ns.join_leave {
            hub.announce_join(&req.channel, info.clone());
        }
        self.subscribed_event(&req.channel, &ns);
        self.subs.insert(
            req.channel.clone(),
            ChannelSub {
                _handle: handle,
                pattern: None,
                refresh_at: None,
                skip_upto,
                epoch: position.epoch.to_string(),
                info,
                presence: ns.presence,
                join_leave: ns.join_leave,
            },
        );
        let offset = if replay_as_events {
            position
                .offset
                .max(publications.last().map_or(0, |p| p.offset))
        } else {
            skip_upto
        };
        if replay_as_events {
            self.replay
                .extend(publications.iter().filter(|p| !p.draft.private).cloned());
        }
        Ok(proto::SubscribeResult {
            recoverable: true,
            epoch: position.epoch,
            offset,
            recovered,
            was_recovering: recovering,
            positioned: req.positioned,
            publications: if (recovered || recovering) && !replay_as_events {
                publications
                    .iter()
                    .filter(|p| !p.draft.private)
                    .map(|p| encode::publication(p, self.encoding))
                    .collect()
            } else {
                Vec::new()
            },
            ..Default::default()
        })
    }

    /// Subscribes to every channel matching a pattern: permission was
    /// checked on the pattern; publications arrive with their channel name
    /// (the publication's `channel` and its `channel` tag). Not recoverable
    /// (positions are per channel), no presence, no join/leave.
    fn join_pattern(
        &mut self,
        req: &proto::SubscribeRequest,
        ns: &Namespace,
        chan_info: Option<String>,
    ) -> Result<proto::SubscribeResult, errors::Code> {
        let matcher = TopicMatcher::channel_pattern(&req.channel).map_err(|e| {
            tracing::debug!(channel = %req.channel, error = %e, "bad channel pattern");
            errors::BAD_REQUEST
        })?;
        let handle = self.node.hub.subscribe_on(
            &self.sink,
            vec![matcher.clone()],
            Arc::new(PublicOnly),
            false,
        );
        let info = Arc::new(ClientInfo {
            user: self.user().to_owned(),
            client: self.client.clone(),
            conn_info: self.connected.as_ref().and_then(|c| c.conn_info.clone()),
            chan_info,
        });
        self.subscribed_event(&req.channel, ns);
        self.patterns += 1;
        self.subs.insert(
            req.channel.clone(),
            ChannelSub {
                _handle: handle,
                pattern: Some(matcher),
                refresh_at: None,
                skip_upto: 0,
                epoch: String::new(),
                info,
                presence: false,
                join_leave: false,
            },
        );
        Ok(proto::SubscribeResult::default())
    }

    /// A webhook event about this connection.
    fn event(&self, kind: EventKind) -> Event {
        let mut e = Event::new(kind);
        e.protocol = "centrifugo";
        e.transport = self.transport.name();
        e.client.clone_from(&self.client);
        e.user = self.user().to_owned();
        e
    }

    fn subscribed_event(&self, channel: &str, ns: &Namespace) {
        if ns.webhooks_on() && self.node.webhooks.wants(EventKind::Subscribe) {
            let mut e = self.event(EventKind::Subscribe);
            e.channel = channel.to_owned();
            self.node.webhooks.emit(e);
        }
    }

    /// Leaves a channel because the server decided to, and tells the client.
    fn server_unsubscribe(&mut self, channel: String, code: (u32, &str), out: &mut Outbox) {
        if self.leave(&channel, code.1) {
            let push = proto::Push {
                channel,
                unsubscribe: Some(proto::Unsubscribe {
                    code: code.0,
                    reason: code.1.into(),
                }),
                ..Default::default()
            };
            self.write_push(push, out);
        }
    }

    /// Leaves a channel at the client's request (no-op if not subscribed).
    pub fn unsubscribe(&mut self, channel: &str) -> bool {
        self.leave(channel, "client")
    }

    /// Leaves a channel for `reason` (told to webhooks).
    fn leave(&mut self, channel: &str, reason: &str) -> bool {
        let Some(sub) = self.subs.remove(channel) else {
            return false;
        };
        if sub.pattern.is_some() {
            self.patterns -= 1;
        }
        if self.node.webhooks.wants(EventKind::Unsubscribe)
            && self
                .node
                .settings
                .namespace(channel)
                .is_none_or(Namespace::webhooks_on)
        {
            let mut e = self.event(EventKind::Unsubscribe);
            e.channel = channel.to_owned();
            e.reason = reason.to_owned();
            self.node.webhooks.emit(e);
        }
        let hub = &self.node.hub;
        if sub.presence {
            hub.presence().remove(channel, &self.client);
        }
        if sub.join_leave {
            hub.announce_leave(channel, sub.info.clone());
        }
        true
    }

    async fn publish(&mut self, id: u32, req: proto::PublishRequest) -> Result<Reply, Disconnect> {
        let ns = match self.namespace(&req.channel) {
            Ok(ns) => ns.clone(),
            Err(code) => return Ok(error_reply(id, code)),
        };
        if self.publish_rate.as_mut().is_some_and(|r| !r.allow()) {
            return Ok(error_reply(id, errors::TOO_MANY_REQUESTS));
        }
        if req.data.is_empty() || (ns.wildcards && is_pattern(&req.channel)) {
            // A pattern names many channels: one cannot publish to it.
            return Ok(error_reply(id, errors::BAD_REQUEST));
        }
        let mut data = req.data;
        let mut tags = std::collections::BTreeMap::new();
        if let (true, Some(endpoint)) = (ns.publish_proxy, self.node.proxy.settings.publish.clone())
        {
            let request = backend::ChannelRequest {
                ctx: self.client_context(),
                channel: req.channel.clone(),
                payload: Payload::of(&data),
            };
            let r: backend::PublishResult = match self.ask("publish", &endpoint, &request).await {
                Ok(r) => r,
                Err(refusal) => return refusal.reply(id),
            };
            match r.payload.bytes() {
                Ok(Some(replaced)) => data = replaced,
                Ok(None) => {}
                Err(_) => return Ok(error_reply(id, errors::INTERNAL)),
            }
            tags.extend(r.tags);
        } else if !ns.allow_publish {
            return Ok(error_reply(id, errors::PERMISSION_DENIED));
        }
        let info = self
            .subs
            .get(&req.channel)
            .map(|s| (*s.info).clone())
            .unwrap_or_else(|| ClientInfo {
                user: self.user().to_owned(),
                client: self.client.clone(),
                conn_info: self.connected.as_ref().and_then(|c| c.conn_info.clone()),
                chan_info: None,
            });
        let draft = Draft::to_channel(req.channel, data, Some(info), tags);
        Ok(match self.node.hub.publish(draft).await {
            Ok(_) => Reply {
                id,
                publish: Some(proto::PublishResult {}),
                ..Default::default()
            },
            Err(e) => {
                tracing::error!(error = %e, "client publish failed");
                error_reply(id, errors::INTERNAL)
            }
        })
    }

    /// An RPC call, answered by the RPC proxy.
    async fn rpc(&mut self, id: u32, req: proto::RpcRequest) -> Result<Reply, Disconnect> {
        let Some(endpoint) = self.node.proxy.settings.rpc.clone() else {
            return Ok(error_reply(id, errors::NOT_AVAILABLE));
        };
        let request = backend::RpcRequest {
            ctx: self.client_context(),
            method: req.method,
            payload: Payload::of(&req.data),
        };
        let r: backend::RpcResult = match self.ask("rpc", &endpoint, &request).await {
            Ok(r) => r,
            Err(refusal) => return refusal.reply(id),
        };
        let Ok(data) = r.payload.bytes() else {
            return Ok(error_reply(id, errors::INTERNAL));
        };
        Ok(Reply {
            id,
            rpc: Some(proto::RpcResult {
                data: data.unwrap_or_default(),
            }),
            ..Default::default()
        })
    }

    async fn presence(&self, id: u32, channel: &str, stats: bool) -> Reply {
        let ns = match self.namespace(channel) {
            Ok(ns) => ns,
            Err(code) => return error_reply(id, code),
        };
        if !ns.allow_presence {
            return error_reply(id, errors::PERMISSION_DENIED);
        }
        if !ns.presence {
            return error_reply(id, errors::NOT_AVAILABLE);
        }
        let presence = self.node.hub.presence();
        if stats {
            let (clients, users) = presence.stats(channel).await;
            Reply {
                id,
                presence_stats: Some(proto::PresenceStatsResult {
                    num_clients: clients as u32,
                    num_users: users as u32,
                }),
                ..Default::default()
            }
        } else {
            let map = presence
                .get(channel)
                .await
                .into_iter()
                .map(|(k, v)| (k, client_info(&v)))
                .collect();
            Reply {
                id,
                presence: Some(proto::PresenceResult { presence: map }),
                ..Default::default()
            }
        }
    }

    async fn history(&self, id: u32, req: proto::HistoryRequest) -> Reply {
        let ns = match self.namespace(&req.channel) {
            Ok(ns) => ns,
            Err(code) => return error_reply(id, code),
        };
        if !ns.allow_history {
            return error_reply(id, errors::PERMISSION_DENIED);
        }
        match read_history(
            &self.node,
            &req.channel,
            req.since.as_ref(),
            req.limit,
            req.reverse,
        )
        .await
        {
            Ok((pubs, pos)) => Reply {
                id,
                history: Some(proto::HistoryResult {
                    publications: pubs
                        .iter()
                        .map(|p| encode::publication(p, self.encoding))
                        .collect(),
                    epoch: pos.epoch,
                    offset: pos.offset,
                }),
                ..Default::default()
            },
            Err(code) => error_reply(id, code),
        }
    }

    fn refresh(&mut self, id: u32, token: &str) -> Result<Reply, Disconnect> {
        let t = match tokens::connection(&self.node.key, token) {
            Ok(t) => t,
            Err(TokenError::Expired) => return Ok(error_reply(id, errors::TOKEN_EXPIRED)),
            Err(TokenError::Invalid) => return Err(close(disconnect::INVALID_TOKEN)),
        };
        let Some(c) = self.connected.as_mut() else {
            return Err(close(disconnect::BAD_REQUEST));
        };
        if t.user != c.user {
            return Err(close(disconnect::INVALID_TOKEN));
        }
        c.expires_at = t.expires_at;
        let (expires, ttl) = self.ttl(t.expires_at);
        Ok(Reply {
            id,
            refresh: Some(proto::RefreshResult {
                client: self.client.clone(),
                version: VERSION.into(),
                expires,
                ttl,
            }),
            ..Default::default()
        })
    }

    fn sub_refresh(&mut self, id: u32, req: proto::SubRefreshRequest) -> Reply {
        let user = self
            .connected
            .as_ref()
            .map(|c| c.user.clone())
            .unwrap_or_default();
        match tokens::subscription(&self.node.key, &req.token) {
            Ok(t)
                if t.channel == req.channel
                    && t.user == user
                    && self.subs.contains_key(&req.channel) =>
            {
                let (expires, ttl) = self.ttl(t.expires_at);
                Reply {
                    id,
                    sub_refresh: Some(proto::SubRefreshResult { expires, ttl }),
                    ..Default::default()
                }
            }
            Err(TokenError::Expired) => error_reply(id, errors::TOKEN_EXPIRED),
            _ => error_reply(id, errors::PERMISSION_DENIED),
        }
    }

    /// Appends the push for a hub delivery. A publication from a new epoch
    /// of a subscribed channel ends the subscription (or, on a
    /// unidirectional transport, the connection) as insufficient state.
    pub fn push(&mut self, delivery: Delivery, out: &mut Outbox) -> Result<(), Disconnect> {
        match delivery {
            Delivery::Publication(p) => {
                let Some(sub) = self.subs.get_mut(p.channel()) else {
                    self.push_matched(&p, out);
                    return Ok(());
                };
                if *p.epoch != *sub.epoch {
                    // The channel's history began again while subscribed:
                    // offsets restarted, so neither the de-duplication below
                    // nor the client's position can compare them. The client
                    // resubscribes, and recovery tells it what is lost.
                    if self.transport.unidirectional() {
                        return Err(close(disconnect::INSUFFICIENT_STATE));
                    }
                    let channel = p.channel().to_owned();
                    self.server_unsubscribe(channel, proto::unsubscribe::INSUFFICIENT, out);
                    return Ok(());
                }
                if p.offset <= sub.skip_upto {
                    return Ok(());
                }
                sub.skip_upto = p.offset;
                let encoded = encode::push(&p, self.encoding);
                if self.transport.unidirectional() {
                    if let Some(push) = push_of_json_reply(encoded) {
                        out.encoded(&push, self.resume_id().as_deref());
                    }
                } else {
                    let encoding = self.encoding;
                    out.shared(encoded, |level| {
                        encode::push_deflated(&p, encoding, level).clone()
                    });
                }
            }
            Delivery::Join(channel, info) => self.push_presence(&channel, &info, true, out),
            Delivery::Leave(channel, info) => self.push_presence(&channel, &info, false, out),
            // Async: the connection loop hands them to `Session::control`.
            Delivery::Control(_) => {}
        }
        Ok(())
    }

    /// A publication that reached this connection through a pattern: pushed
    /// under the pattern (the subscription the client knows), carrying its
    /// own channel. Encoded for this connection alone.
    fn push_matched(&mut self, p: &Publication, out: &mut Outbox) {
        if self.patterns == 0 || p.seq <= self.last_pattern_seq {
            return;
        }
        let Some(pattern) = self
            .subs
            .iter()
            .find(|(_, s)| s.pattern.as_ref().is_some_and(|m| m.matches(p.channel())))
            .map(|(name, _)| name.clone())
        else {
            return;
        };
        self.last_pattern_seq = p.seq;
        let mut publication = encode::publication(p, self.encoding);
        publication.channel = p.channel().to_owned();
        publication
            .tags
            .entry("channel".into())
            .or_insert_with(|| p.channel().to_owned());
        let push = proto::Push {
            channel: pattern,
            publication: Some(publication),
            ..Default::default()
        };
        self.write_push(push, out);
    }

    fn push_presence(&self, channel: &str, info: &ClientInfo, joined: bool, out: &mut Outbox) {
        if !self.subs.contains_key(channel) {
            return;
        }
        let info = Some(client_info(info));
        let mut push = proto::Push {
            channel: channel.to_owned(),
            ..Default::default()
        };
        if joined {
            push.join = Some(proto::Join { info });
        } else {
            push.leave = Some(proto::Leave { info });
        }
        self.write_push(push, out);
    }

    /// Writes a push: wrapped in a reply, or on its own to unidirectional
    /// clients.
    fn write_push(&self, push: proto::Push, out: &mut Outbox) {
        if self.transport.unidirectional() {
            out.message(&push);
        } else {
            out.message(&Reply {
                push: Some(push),
                ..Default::default()
            });
        }
    }

    /// Writes the disconnect push that tells a client on a stream transport
    /// why it is closed and whether to reconnect (WebSocket uses its close
    /// frame instead).
    pub fn write_disconnect(&self, code: u16, reason: &str, out: &mut Outbox) {
        let push = proto::Push {
            disconnect: Some(proto::Disconnect {
                code: code.into(),
                reason: reason.to_owned(),
                // The protocol's rule: 3500–3999 and 4500–4999 are final.
                reconnect: !matches!(code, 3500..=3999 | 4500..=4999),
            }),
            ..Default::default()
        };
        self.write_push(push, out);
    }

    /// Applies a server control.
    pub async fn control(&mut self, control: Control, out: &mut Outbox) -> Result<(), Disconnect> {
        match control {
            Control::Disconnect(code, reason) => Err((code, reason)),
            Control::Unsubscribe(channel) => {
                self.server_unsubscribe(channel, proto::unsubscribe::SERVER, out);
                Ok(())
            }
            Control::Subscribe(channel) => {
                let req = proto::SubscribeRequest {
                    channel: channel.clone(),
                    ..Default::default()
                };
                if let Ok(result) = self.join_channel(&req, None).await {
                    let push = proto::Push {
                        channel,
                        subscribe: Some(proto::Subscribe {
                            recoverable: result.recoverable,
                            epoch: result.epoch,
                            offset: result.offset,
                            positioned: result.positioned,
                            data: Bytes::new(),
                        }),
                        ..Default::default()
                    };
                    self.write_push(push, out);
                }
                Ok(())
            }
            Control::Refresh(expires_at) => {
                if let Some(c) = self.connected.as_mut() {
                    c.expires_at = expires_at;
                }
                Ok(())
            }
        }
    }

    /// A ping (an empty reply; an empty push to unidirectional clients,
    /// which is the same `{}`).
    pub fn ping(&mut self, out: &mut Outbox) {
        self.got_pong = false;
        out.message(&Reply::default());
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
/// `limit` (0: only the position; negative: no limit), `reverse`.
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
    let from = since.map_or(0, |s| s.offset);
    let (mut pubs, position) = history
        .read_channel(channel, from, MAX_RECOVER)
        .await
        .map_err(internal)?;
    pubs.retain(|p| !p.draft.private);
    if reverse {
        pubs.reverse();
    }
    if limit > 0 {
        pubs.truncate(limit as usize);
    }
    Ok((pubs, position))
}
