//! The Centrifugo side's settings, validated from `[centrifugo]`: what a
//! connection, the server API and every namespace may do.
//!
//! Namespace options carry Centrifugo v6's names and meanings, so that a
//! namespace written for Centrifugo grants exactly what it granted there
//! (tidings' earlier names are accepted as aliases, see
//! [`Namespace`]). Who may do what is decided here, by pure functions of
//! the options and the client, and nowhere else.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

/// Channel options, for the default namespace or a named one.
///
/// Permissions follow Centrifugo: `_for_client` grants connections with a
/// user, `_for_anonymous` extends a grant to connections without one,
/// `_for_subscriber` grants clients subscribed to the channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Namespace {
    /// The prefix before `:` (empty for the default namespace).
    pub name: String,
    /// Connections with a user may subscribe without a subscription token
    /// (alias: `allow_subscribe`).
    pub allow_subscribe_for_client: bool,
    /// … and anonymous ones too (alias: `allow_anonymous`).
    pub allow_subscribe_for_anonymous: bool,
    /// Connections with a user may publish (alias: `allow_publish`).
    pub allow_publish_for_client: bool,
    /// Subscribers of a channel may publish to it.
    pub allow_publish_for_subscriber: bool,
    /// The publish grants above extend to anonymous connections.
    pub allow_publish_for_anonymous: bool,
    /// Connections with a user may ask for presence (alias:
    /// `allow_presence`).
    pub allow_presence_for_client: bool,
    /// Subscribers of a channel may ask for its presence.
    pub allow_presence_for_subscriber: bool,
    /// The presence grants above extend to anonymous connections.
    pub allow_presence_for_anonymous: bool,
    /// Connections with a user may ask for history (alias:
    /// `allow_history`).
    pub allow_history_for_client: bool,
    /// Subscribers of a channel may ask for its history.
    pub allow_history_for_subscriber: bool,
    /// The history grants above extend to anonymous connections.
    pub allow_history_for_anonymous: bool,
    /// Channels ending in `#user1,user2` may be subscribed by those users
    /// alone, without a token.
    pub allow_user_limited_channels: bool,
    /// A regular expression the channel name after the namespace must
    /// match (else error 107).
    pub channel_regex: Option<String>,
    /// Track presence in these channels.
    pub presence: bool,
    /// Announce joins and leaves (pushed to subscribers that ask for them).
    pub join_leave: bool,
    /// Push joins and leaves to every subscriber, asked or not.
    pub force_push_join_leave: bool,
    /// Recover on resubscribe even if the client did not ask.
    pub force_recovery: bool,
    /// Clients may ask for recovery even without history access.
    pub allow_recovery: bool,
    /// Publications kept per channel (default `history.size`; 0: history
    /// is off for clients: no `history`, no recovery).
    pub history_size: Option<usize>,
    /// Age of kept publications (default `history.ttl`).
    pub history_ttl: Option<String>,
    /// Ask `proxy.subscribe_endpoint` on subscribe (instead of tokens or
    /// `allow_subscribe_for_client`; alias: `subscribe_proxy_enabled`).
    pub subscribe_proxy: bool,
    /// Ask `proxy.publish_endpoint` on client publish (alias:
    /// `publish_proxy_enabled`).
    pub publish_proxy: bool,
    /// Ask `proxy.sub_refresh_endpoint` when a subscription expires
    /// (alias: `sub_refresh_proxy_enabled`).
    pub sub_refresh_proxy: bool,
    /// Channel names with URL Pattern syntax (`*`, `:name`…) subscribe to
    /// every matching channel.
    pub wildcards: bool,
    /// Send this namespace's channel events to webhooks (default: on).
    pub webhooks: Option<bool>,
}

/// Who is asking: what Centrifugo's permission options look at.
#[derive(Debug, Clone, Copy)]
pub struct Asker {
    /// The connection has no user.
    pub anonymous: bool,
    /// It is subscribed to the channel (or is being subscribed to it).
    pub subscribed: bool,
}

/// One `allow_X_for_client` / `_for_subscriber` / `_for_anonymous` trio.
fn granted(for_client: bool, for_subscriber: bool, for_anonymous: bool, who: Asker) -> bool {
    let user_ok = !who.anonymous || for_anonymous;
    (for_client || (for_subscriber && who.subscribed)) && user_ok
}

impl Namespace {
    /// Whether its channel events go to webhooks.
    pub fn webhooks_on(&self) -> bool {
        self.webhooks.unwrap_or(true)
    }

    /// Whether clients see history here (`history` and recovery).
    pub fn history_on(&self) -> bool {
        self.history_size != Some(0)
    }

    /// May subscribe without a token, proxy or user-limited channel.
    pub fn may_subscribe(&self, who: Asker) -> bool {
        self.allow_subscribe_for_client && (!who.anonymous || self.allow_subscribe_for_anonymous)
    }

    /// May publish (when no publish proxy decides).
    pub fn may_publish(&self, who: Asker) -> bool {
        granted(
            self.allow_publish_for_client,
            self.allow_publish_for_subscriber,
            self.allow_publish_for_anonymous,
            who,
        )
    }

    /// May ask for presence and presence stats.
    pub fn may_see_presence(&self, who: Asker) -> bool {
        granted(
            self.allow_presence_for_client,
            self.allow_presence_for_subscriber,
            self.allow_presence_for_anonymous,
            who,
        )
    }

    /// May ask for history.
    pub fn may_read_history(&self, who: Asker) -> bool {
        granted(
            self.allow_history_for_client,
            self.allow_history_for_subscriber,
            self.allow_history_for_anonymous,
            who,
        )
    }

    /// Whether a subscription recovers: forced by the namespace, or asked
    /// by the client (`recoverable`) and allowed to it.
    pub fn recovers(&self, asked: bool, who: Asker) -> bool {
        self.history_on()
            && (self.force_recovery
                || (asked && (self.allow_recovery || self.may_read_history(who))))
    }

    /// Whether a subscriber receives join and leave pushes.
    pub fn pushes_join_leave(&self, asked: bool, who: Asker) -> bool {
        self.join_leave && (self.force_push_join_leave || (asked && self.may_see_presence(who)))
    }
}

/// Marks a channel as private: subscribing needs a subscription token
/// whatever the namespace allows (Centrifugo's `channel.private_prefix`).
pub const PRIVATE_PREFIX: &str = "$";
/// Starts the list of users a user-limited channel is for.
pub const USER_BOUNDARY: char = '#';
/// Separates the users of a user-limited channel.
pub const USER_SEPARATOR: char = ',';

/// The users a channel is limited to (`personal#42`, `dialog#42,43`), if
/// it is user-limited.
pub fn limited_to(channel: &str) -> Option<impl Iterator<Item = &str>> {
    let (_, users) = channel.rsplit_once(USER_BOUNDARY)?;
    Some(users.split(USER_SEPARATOR))
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
    /// `aud` every token must carry, if set.
    pub token_audience: Option<String>,
    /// `iss` every token must carry, if set.
    pub token_issuer: Option<String>,
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
    /// How long past its expiry a connection may still send `refresh`.
    pub expired_close_delay: Duration,
    /// How long past its expiry a subscription may still send
    /// `sub_refresh`.
    pub expired_sub_close_delay: Duration,
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
    pub namespaces: HashMap<String, Namespace>,
    /// Compiled `channel_regex` by namespace name ("" for the default).
    pub channel_regexes: HashMap<String, regex::Regex>,
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

    /// Whether `channel`, in namespace `ns`, matches its `channel_regex`
    /// (the part after the namespace is matched, as Centrifugo does).
    pub fn valid_name(&self, ns: &Namespace, channel: &str) -> bool {
        let Some(regex) = self.channel_regexes.get(&ns.name) else {
            return true;
        };
        let rest = if ns.name.is_empty() {
            channel
        } else {
            channel.split_once(':').map_or(channel, |(_, r)| r)
        };
        regex.is_match(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANON: Asker = Asker {
        anonymous: true,
        subscribed: false,
    };
    const USER: Asker = Asker {
        anonymous: false,
        subscribed: false,
    };
    const SUBSCRIBER: Asker = Asker {
        anonymous: false,
        subscribed: true,
    };
    const ANON_SUBSCRIBER: Asker = Asker {
        anonymous: true,
        subscribed: true,
    };

    #[test]
    fn grants_follow_centrifugo() {
        let none = Namespace::default();
        for who in [ANON, USER, SUBSCRIBER, ANON_SUBSCRIBER] {
            assert!(!none.may_subscribe(who));
            assert!(!none.may_publish(who));
            assert!(!none.may_see_presence(who));
            assert!(!none.may_read_history(who));
        }
        let client = Namespace {
            allow_publish_for_client: true,
            allow_subscribe_for_client: true,
            ..Namespace::default()
        };
        assert!(client.may_publish(USER) && client.may_subscribe(USER));
        assert!(!client.may_publish(ANON_SUBSCRIBER) && !client.may_subscribe(ANON));
        let subscriber = Namespace {
            allow_history_for_subscriber: true,
            ..Namespace::default()
        };
        assert!(subscriber.may_read_history(SUBSCRIBER));
        assert!(!subscriber.may_read_history(USER));
        assert!(!subscriber.may_read_history(ANON_SUBSCRIBER));
        let anonymous = Namespace {
            allow_presence_for_subscriber: true,
            allow_presence_for_anonymous: true,
            ..Namespace::default()
        };
        assert!(anonymous.may_see_presence(ANON_SUBSCRIBER));
        assert!(!anonymous.may_see_presence(ANON));
    }

    #[test]
    fn recovery_and_join_leave_need_asking_or_forcing() {
        let ns = Namespace {
            allow_history_for_client: true,
            join_leave: true,
            allow_presence_for_client: true,
            ..Namespace::default()
        };
        assert!(ns.recovers(true, USER) && !ns.recovers(false, USER));
        assert!(!ns.recovers(true, ANON));
        assert!(ns.pushes_join_leave(true, USER) && !ns.pushes_join_leave(false, USER));
        let off = Namespace {
            history_size: Some(0),
            force_recovery: true,
            ..ns.clone()
        };
        assert!(!off.recovers(true, USER));
        let forced = Namespace {
            force_push_join_leave: true,
            ..Namespace::default()
        };
        assert!(!forced.pushes_join_leave(true, USER), "join_leave is off");
        let forced = Namespace {
            join_leave: true,
            ..forced
        };
        assert!(forced.pushes_join_leave(false, ANON));
    }

    #[test]
    fn user_limited_channels() {
        let users = |c| limited_to(c).map(|u| u.collect::<Vec<_>>());
        assert_eq!(users("personal#42"), Some(vec!["42"]));
        assert_eq!(users("chat:dialog#42,43"), Some(vec!["42", "43"]));
        assert_eq!(users("news"), None);
    }
}
