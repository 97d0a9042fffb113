//! The Centrifugo side's settings, validated from `[centrifugo]`: what a
//! connection, the server API and every namespace may do.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

/// Channel options, for the default namespace or a named one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Namespace {
    /// The prefix before `:` (empty for the default namespace).
    pub name: String,
    /// Clients may subscribe without a subscription token.
    pub allow_subscribe: bool,
    /// Clients may publish.
    pub allow_publish: bool,
    /// Clients may ask for presence.
    pub allow_presence: bool,
    /// Clients may ask for history.
    pub allow_history: bool,
    /// Anonymous connections may subscribe.
    pub allow_anonymous: bool,
    /// Track presence in these channels.
    pub presence: bool,
    /// Send join/leave pushes.
    pub join_leave: bool,
    /// Recover on resubscribe even if the client did not ask.
    pub force_recovery: bool,
    /// Publications kept per channel (default `history.size`).
    pub history_size: Option<usize>,
    /// Age of kept publications (default `history.ttl`).
    pub history_ttl: Option<String>,
    /// Ask `proxy.subscribe_endpoint` on subscribe (instead of tokens or
    /// `allow_subscribe`).
    pub subscribe_proxy: bool,
    /// Ask `proxy.publish_endpoint` on client publish.
    pub publish_proxy: bool,
    /// Ask `proxy.sub_refresh_endpoint` when a subscription expires.
    pub sub_refresh_proxy: bool,
    /// Channel names with URL Pattern syntax (`*`, `:name`…) subscribe to
    /// every matching channel.
    pub wildcards: bool,
    /// Send this namespace's channel events to webhooks (default: on).
    pub webhooks: Option<bool>,
}

impl Namespace {
    /// Whether its channel events go to webhooks.
    pub fn webhooks_on(&self) -> bool {
        self.webhooks.unwrap_or(true)
    }
}

/// Validated `[centrifugo]`.
#[derive(Debug, Clone)]
pub struct CentrifugoSettings {
    /// Token key material.
    pub token_key: String,
    /// Token algorithm.
    pub token_algorithm: Algorithm,
    /// Whether the development key is in use.
    pub dev_key: bool,
    /// Server API key.
    pub api_key: Option<String>,
    /// Anonymous connections allowed.
    pub anonymous: bool,
    /// Extra allowed WebSocket origins.
    pub allowed_origins: Vec<String>,
    /// Ping interval.
    pub ping_interval: Duration,
    /// Pong timeout.
    pub pong_timeout: Duration,
    /// Handshake timeout.
    pub handshake_timeout: Duration,
    /// Channels per connection.
    pub channel_limit: usize,
    /// Inbound frame limit.
    pub max_frame: usize,
    /// permessage-deflate: the level of what the hub sends, if agreed.
    pub websocket_compression: Option<u32>,
    /// Enabled transports.
    pub transports: Vec<crate::centrifugo::Transport>,
    /// Default namespace options.
    pub default_namespace: Namespace,
    /// Named namespaces.
    pub namespaces: std::collections::HashMap<String, Namespace>,
}

impl CentrifugoSettings {
    /// The options of `channel`'s namespace, or None if it names an unknown
    /// one. A URL-shaped channel (a Mercure topic such as
    /// `https://example.com/x`) whose scheme is not a namespace belongs to
    /// the default namespace, so WebSocket clients can reach Mercure topics.
    pub fn namespace(&self, channel: &str) -> Option<&Namespace> {
        match channel.split_once(':') {
            Some((ns, _)) => self
                .namespaces
                .get(ns)
                .or_else(|| channel.contains("://").then_some(&self.default_namespace)),
            None => Some(&self.default_namespace),
        }
    }
}
