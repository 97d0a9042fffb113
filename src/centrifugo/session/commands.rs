//! The commands a connected client sends besides subscribing: publish,
//! RPC, presence, history.

use super::*;

impl Session {
    pub(super) async fn publish(
        &mut self,
        id: u32,
        req: proto::PublishRequest,
    ) -> Result<Reply, Disconnect> {
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
        } else if !ns.may_publish(self.asker(&req.channel)) {
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
    pub(super) async fn rpc(
        &mut self,
        id: u32,
        req: proto::RpcRequest,
    ) -> Result<Reply, Disconnect> {
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

    pub(super) async fn presence(&self, id: u32, channel: &str, stats: bool) -> Reply {
        let ns = match self.namespace(channel) {
            Ok(ns) => ns,
            Err(code) => return error_reply(id, code),
        };
        if !ns.presence {
            return error_reply(id, errors::NOT_AVAILABLE);
        }
        if !ns.may_see_presence(self.asker(channel)) {
            return error_reply(id, errors::PERMISSION_DENIED);
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

    pub(super) async fn history(&self, id: u32, req: proto::HistoryRequest) -> Reply {
        let ns = match self.namespace(&req.channel) {
            Ok(ns) => ns,
            Err(code) => return error_reply(id, code),
        };
        if !ns.history_on() {
            return error_reply(id, errors::NOT_AVAILABLE);
        }
        if !ns.may_read_history(self.asker(&req.channel)) {
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
}
