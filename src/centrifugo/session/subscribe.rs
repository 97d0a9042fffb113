//! Subscribing and leaving: permissions by namespace, recovery from a
//! position, wildcard channels, presence and join/leave, webhooks.

use super::*;

impl Session {
    /// The options of `channel`'s namespace: 102 for an unknown
    /// namespace, 107 for a name its `channel_regex` refuses.
    pub(super) fn namespace(&self, channel: &str) -> Result<&Namespace, errors::Code> {
        if channel.is_empty() {
            return Err(errors::BAD_REQUEST);
        }
        let settings = &self.node.settings;
        let ns = settings.namespace(channel).ok_or(errors::UNKNOWN_CHANNEL)?;
        if !settings.valid_name(ns, channel) {
            return Err(errors::BAD_REQUEST);
        }
        Ok(ns)
    }

    /// Who asks about `channel`, for the namespace's permissions.
    pub(super) fn asker(&self, channel: &str) -> Asker {
        Asker {
            anonymous: self.user().is_empty(),
            subscribed: self.subs.contains_key(channel),
        }
    }

    /// Subscribes at the client's request. Allowed, in Centrifugo's order:
    /// with a subscription token for this channel and user; on a
    /// user-limited channel naming the user; by the subscribe proxy; by
    /// the namespace's `allow_subscribe_for_*`. A private (`$`) channel
    /// needs a token.
    pub(super) async fn subscribe(
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
        let limited_to = ns
            .allow_user_limited_channels
            .then(|| limited_to(&req.channel))
            .flatten();
        let user_limited = limited_to.is_some();
        let user_listed =
            !user.is_empty() && limited_to.is_some_and(|mut users| users.any(|u| u == user));
        if req.token.is_empty() && req.channel.starts_with(PRIVATE_PREFIX) {
            return Ok(error_reply(id, errors::PERMISSION_DENIED));
        }
        let mut chan_info = None;
        let mut sub_exp = None;
        let mut data = Bytes::new();
        if !req.token.is_empty() {
            match tokens::subscription(&self.node.key, &req.token) {
                Ok(t)
                    if t.channel == req.channel
                        && t.user == user
                        && t.client.as_ref().is_none_or(|c| *c == self.client) =>
                {
                    chan_info = t.info;
                    sub_exp = t.expires_at;
                }
                Ok(_) => {
                    // A token for another channel, user or connection:
                    // Centrifugo treats it as a forged one.
                    crate::metrics::auth_failure("centrifugo", "subscription token mismatch");
                    return Err(close(disconnect::INVALID_TOKEN));
                }
                Err(TokenError::Invalid) => {
                    crate::metrics::auth_failure("centrifugo", "invalid subscription token");
                    return Ok(error_reply(id, errors::PERMISSION_DENIED));
                }
                Err(TokenError::Expired) => {
                    crate::metrics::auth_failure("centrifugo", "subscription token expired");
                    return Ok(error_reply(id, errors::TOKEN_EXPIRED));
                }
            }
        } else if user_listed {
            // A user-limited channel naming this user: no token needed.
        } else if let (true, false, Some(endpoint)) = (
            ns.subscribe_proxy,
            user_limited,
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
        } else if user_limited || !ns.may_subscribe(self.asker(&req.channel)) {
            return Ok(error_reply(id, errors::PERMISSION_DENIED));
        }
        Ok(match self.join_channel(&req, chan_info, false).await {
            Ok(mut result) => {
                result.data = data;
                if let Some(sub) = self.subs.get_mut(&req.channel) {
                    if ns.sub_refresh_proxy {
                        // The hub refreshes it through the proxy; the client
                        // is not told it expires.
                        sub.refresh_at = sub_exp;
                    } else {
                        sub.expires_at = sub_exp;
                        (result.expires, result.ttl) = self.ttl(sub_exp);
                    }
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
    ///
    /// What the namespace grants decides whether it recovers (asked with
    /// `recoverable` or `recover`) and pushes joins and leaves (asked with
    /// `join_leave`).
    pub(super) async fn join_channel(
        &mut self,
        req: &proto::SubscribeRequest,
        chan_info: Option<String>,
        server_side: bool,
    ) -> Result<proto::SubscribeResult, errors::Code> {
        let ns = self.namespace(&req.channel)?.clone();
        if self.subs.contains_key(&req.channel) {
            return Err(errors::ALREADY_SUBSCRIBED);
        }
        if ns.wildcards && is_pattern(&req.channel) {
            return self.join_pattern(req, &ns, chan_info);
        }
        let who = Asker {
            subscribed: true,
            ..self.asker(&req.channel)
        };
        let recoverable = ns.recovers(req.recover || req.recoverable, who);
        let push_join_leave = ns.pushes_join_leave(req.join_leave, who);
        let hub = &self.node.hub;
        let matcher = TopicMatcher::new(MatcherType::Exact, &req.channel, &url_base())
            .map_err(|_| errors::BAD_REQUEST)?;
        // Register first, so nothing published from now on is missed.
        let handle = hub.subscribe_on(
            &self.sink,
            vec![matcher],
            Arc::new(PublicOnly),
            push_join_leave,
        );
        let recovering = recoverable && (req.recover || req.offset > 0 || !req.epoch.is_empty());
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
                expires_at: None,
                server_side,
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
            recoverable,
            epoch: position.epoch,
            offset,
            recovered,
            was_recovering: recovering,
            // Nothing checks a subscriber's position against the stream
            // beyond the epoch, so positioning is not claimed.
            positioned: false,
            // A failed recovery sends nothing: the client would take what
            // it got for a complete stream.
            publications: if recovered && !replay_as_events {
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
    pub(super) fn join_pattern(
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
                expires_at: None,
                server_side: false,
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
    pub(super) fn event(&self, kind: EventKind) -> Event {
        let mut e = Event::new(kind);
        e.protocol = "centrifugo";
        e.transport = self.transport.name();
        e.client.clone_from(&self.client);
        e.user = self.user().to_owned();
        e
    }

    pub(super) fn subscribed_event(&self, channel: &str, ns: &Namespace) {
        if ns.webhooks_on() && self.node.webhooks.wants(EventKind::Subscribe) {
            let mut e = self.event(EventKind::Subscribe);
            e.channel = channel.to_owned();
            self.node.webhooks.emit(e);
        }
    }

    /// Leaves a channel because the server decided to, and tells the client.
    pub(super) fn server_unsubscribe(
        &mut self,
        channel: String,
        code: (u32, &str),
        out: &mut Outbox,
    ) {
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
    pub(super) fn leave(&mut self, channel: &str, reason: &str) -> bool {
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
}
