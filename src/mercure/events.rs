//! What a subscription's life tells others: subscription events (private
//! updates at `{hub}/subscriptions/…`, published when it starts and ends,
//! and listed by the subscriptions API meanwhile) and the connection's
//! webhooks (connect, subscribe, unsubscribe, disconnect).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::MercureState;
use crate::auth::Grants;
use crate::history::Draft;
use crate::integration::webhooks::{Event, EventKind, Webhooks};
use crate::protocol::mercure::matcher::{MatcherType, TopicMatcher};
use crate::protocol::mercure::subscription::SubscriptionDoc;
use crate::protocol::mercure::RESERVED_EVENT_TYPE;

/// One active subscription, as the subscriptions API reports it.
#[derive(Debug, Clone)]
pub struct Active {
    pub(crate) match_type: MatcherType,
    pub(crate) matcher: String,
    pub(crate) payload: Option<Value>,
}

/// Publishes the subscription events of a new connection and returns a
/// guard that, when the stream ends, publishes their `active: false`
/// counterparts and removes them from the subscriptions API.
pub fn announce(
    state: &Arc<MercureState>,
    subscriber: &str,
    matchers: &[TopicMatcher],
    grants: Option<&Grants>,
) -> SubscriptionGuard {
    let active: Vec<Active> = matchers
        .iter()
        .map(|m| Active {
            match_type: m.kind(),
            matcher: m.raw().to_owned(),
            payload: grants.and_then(|g| g.payload_for(m.raw())).cloned(),
        })
        .collect();
    state
        .active
        .lock()
        .insert(subscriber.to_owned(), active.clone());
    publish_events(state, subscriber, &active, true);
    SubscriptionGuard {
        state: state.clone(),
        subscriber: subscriber.to_owned(),
    }
}

fn publish_events(state: &Arc<MercureState>, subscriber: &str, active: &[Active], is_active: bool) {
    let drafts: Vec<Draft> = active
        .iter()
        .map(|a| {
            let doc = SubscriptionDoc {
                hub_path: state.hub_path(),
                match_type: a.match_type,
                matcher: &a.matcher,
                subscriber,
                active: is_active,
                payload: a.payload.as_ref(),
            };
            Draft {
                channel: doc.topic(),
                alternates: Vec::new(),
                id: format!("urn:uuid:{}", uuid::Uuid::new_v4()),
                data: Bytes::from(doc.to_json().to_string()),
                event_type: Some(RESERVED_EVENT_TYPE.to_owned()),
                retry: None,
                private: true,
                info: None,
                tags: Default::default(),
            }
        })
        .collect();
    let hub = state.hub.clone();
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            for d in drafts {
                if let Err(e) = hub.publish(d).await {
                    tracing::debug!(error = %e, "subscription event not published");
                }
            }
        });
    }
}

pub struct SubscriptionGuard {
    state: Arc<MercureState>,
    subscriber: String,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        let removed = self.state.active.lock().remove(&self.subscriber);
        if let Some(active) = removed {
            publish_events(&self.state, &self.subscriber, &active, false);
        }
    }
}

/// Emits a Mercure subscriber's connect and subscribe events; the returned
/// guard emits unsubscribe and disconnect when the stream ends.
pub fn tell_webhooks(
    state: &MercureState,
    subscriber: &str,
    matchers: &[TopicMatcher],
    grants: Option<&Grants>,
) -> Option<WebhookGuard> {
    let w = &state.webhooks;
    if ![
        EventKind::Connect,
        EventKind::Subscribe,
        EventKind::Unsubscribe,
        EventKind::Disconnect,
    ]
    .into_iter()
    .any(|k| w.wants(k))
    {
        return None;
    }
    let guard = WebhookGuard {
        webhooks: w.clone(),
        client: subscriber.to_owned(),
        user: grants.and_then(|g| g.subject.clone()).unwrap_or_default(),
        selectors: matchers.iter().map(|m| m.raw().to_owned()).collect(),
    };
    w.emit(guard.event(EventKind::Connect, ""));
    for selector in &guard.selectors {
        w.emit(guard.event(EventKind::Subscribe, selector));
    }
    Some(guard)
}

pub struct WebhookGuard {
    webhooks: Arc<Webhooks>,
    client: String,
    user: String,
    selectors: Vec<String>,
}

impl WebhookGuard {
    fn event(&self, kind: EventKind, channel: &str) -> Event {
        let mut e = Event::new(kind);
        e.protocol = "mercure";
        e.transport = "sse";
        e.client.clone_from(&self.client);
        e.user.clone_from(&self.user);
        e.channel = channel.to_owned();
        e
    }
}

impl Drop for WebhookGuard {
    fn drop(&mut self) {
        for selector in &self.selectors {
            let mut e = self.event(EventKind::Unsubscribe, selector);
            e.reason = "disconnect".into();
            self.webhooks.emit(e);
        }
        let mut e = self.event(EventKind::Disconnect, "");
        e.reason = "stream closed".into();
        self.webhooks.emit(e);
    }
}
