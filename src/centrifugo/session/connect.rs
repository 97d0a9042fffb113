//! Connecting and staying connected: the connect command (tokens, the
//! connect proxy, server-side subscriptions), the unidirectional connect
//! request, token expiry and refresh, subscription refresh.

use super::*;

impl Session {
    /// Connects a unidirectional client: the result is a `connect` push,
    /// a refusal a disconnect.
    pub(super) async fn connect_unidirectional(
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
    pub(super) fn resume_id(&self) -> Option<String> {
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

    pub(super) async fn connect(
        &mut self,
        id: u32,
        req: proto::ConnectRequest,
    ) -> Result<Reply, Disconnect> {
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
        let (data, meta, mut chan_infos) = match from_backend {
            Some(b) => (b.data, b.meta, b.chan_infos),
            None => (Bytes::new(), None, HashMap::new()),
        };
        let mut channels = token.channels.clone();
        let mut sub_data = HashMap::new();
        for (channel, sub) in &token.subs {
            if !channels.contains(channel) {
                channels.push(channel.clone());
            }
            chan_infos.insert(channel.clone(), sub.info.clone());
            sub_data.insert(channel.clone(), sub.data.clone());
        }
        if channels.len() > s.channel_limit {
            return Err(close(disconnect::CHANNEL_LIMIT));
        }
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
        for channel in &channels {
            let wanted = req.subs.get(channel).cloned().unwrap_or_default();
            let sub_req = proto::SubscribeRequest {
                channel: channel.clone(),
                ..wanted
            };
            let chan_info = chan_infos.remove(channel).flatten();
            match self.join_channel(&sub_req, chan_info, true).await {
                Ok(mut result) => {
                    result.data = sub_data.remove(channel).unwrap_or_default();
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
    pub(super) fn client_context(&self) -> backend::ClientContext {
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
    pub(super) async fn ask<T: serde::de::DeserializeOwned + Default>(
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
    pub(super) async fn connect_proxy(
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
            subs: HashMap::new(),
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

    /// When the connection's expiry is acted on: at once when the refresh
    /// proxy decides, else `expired_close_delay` after it, for a client
    /// that refreshes at the last moment.
    pub fn expiry_due(&self) -> Option<u64> {
        let expires_at = self.connected.as_ref()?.expires_at?;
        Some(if self.node.proxy.settings.refresh.is_some() {
            expires_at
        } else {
            expires_at + self.node.settings.expired_close_delay.as_secs()
        })
    }

    /// When the next subscription is due to be refreshed or to expire.
    pub fn next_sub_refresh(&self) -> Option<u64> {
        let grace = self.node.settings.expired_sub_close_delay.as_secs();
        self.subs
            .values()
            .flat_map(|s| [s.refresh_at, s.expires_at.map(|at| at + grace)])
            .flatten()
            .min()
    }

    /// Ends every subscription whose expiry passed unrefreshed (unsubscribe
    /// 2501; a server-side one closes the connection, 3006), and asks the
    /// sub refresh proxy about every one that is due.
    pub async fn refresh_subscriptions(&mut self, out: &mut Outbox) -> Result<(), Disconnect> {
        let now = crate::time::now_secs();
        let grace = self.node.settings.expired_sub_close_delay.as_secs();
        let expired: Vec<(String, bool)> = self
            .subs
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|at| at + grace <= now))
            .map(|(c, s)| (c.clone(), s.server_side))
            .collect();
        for (channel, server_side) in expired {
            if server_side {
                return Err(close(disconnect::SUB_EXPIRED));
            }
            self.server_unsubscribe(channel, proto::unsubscribe::EXPIRED, out);
        }
        let Some(endpoint) = self.node.proxy.settings.sub_refresh.clone() else {
            return Ok(());
        };
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
                None => self.server_unsubscribe(channel, proto::unsubscribe::EXPIRED, out),
            }
        }
        Ok(())
    }

    pub(super) fn ttl(&self, expires_at: Option<u64>) -> (bool, u32) {
        match expires_at {
            Some(exp) => (true, exp.saturating_sub(crate::time::now_secs()) as u32),
            None => (false, 0),
        }
    }

    pub(super) fn refresh(&mut self, id: u32, token: &str) -> Result<Reply, Disconnect> {
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

    /// A new subscription token for a subscribed channel: the
    /// subscription lives on until the new expiry.
    pub(super) fn sub_refresh(&mut self, id: u32, req: proto::SubRefreshRequest) -> Reply {
        let user = self.user().to_owned();
        match tokens::subscription(&self.node.key, &req.token) {
            Ok(t)
                if t.channel == req.channel
                    && t.user == user
                    && t.client.as_ref().is_none_or(|c| *c == self.client) =>
            {
                let Some(sub) = self.subs.get_mut(&req.channel) else {
                    return error_reply(id, errors::PERMISSION_DENIED);
                };
                sub.expires_at = t.expires_at;
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
}
