//! What the hub sends a connection: publications, joins and leaves,
//! server controls, pings and the disconnect push.

use super::*;

impl Session {
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
    pub(super) fn push_matched(&mut self, p: &Publication, out: &mut Outbox) {
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

    pub(super) fn push_presence(
        &self,
        channel: &str,
        info: &ClientInfo,
        joined: bool,
        out: &mut Outbox,
    ) {
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
    pub(super) fn write_push(&self, push: proto::Push, out: &mut Outbox) {
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
            Control::Subscribe(sub) => {
                let req = proto::SubscribeRequest {
                    channel: sub.channel.clone(),
                    ..Default::default()
                };
                if let Ok(result) = self.join_channel(&req, sub.info, true).await {
                    if let Some(joined) = self.subs.get_mut(&sub.channel) {
                        joined.expires_at = sub.expire_at;
                    }
                    let push = proto::Push {
                        channel: sub.channel,
                        subscribe: Some(proto::Subscribe {
                            recoverable: result.recoverable,
                            epoch: result.epoch,
                            offset: result.offset,
                            positioned: result.positioned,
                            data: Bytes::from(sub.data),
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
                // The client learns its new expiry (and stops its own
                // refresh timer when there is none).
                let (expires, ttl) = self.ttl(expires_at);
                let push = proto::Push {
                    refresh: Some(proto::Refresh { expires, ttl }),
                    ..Default::default()
                };
                self.write_push(push, out);
                Ok(())
            }
        }
    }

    /// A ping (an empty reply; an empty push to unidirectional clients,
    /// which is the same `{}`).
    pub fn ping(&mut self, out: &mut Outbox) {
        self.got_pong = false;
        self.ping_outstanding = !self.transport.unidirectional();
        out.message(&Reply::default());
    }
}
