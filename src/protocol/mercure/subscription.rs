//! Documents of the active-subscriptions feature: subscription events and
//! the subscriptions API.
//!
//! Draft subscriptions live at
//! `{hub path}/subscriptions/{match_type}/{match}/{subscriber}`; legacy
//! (`topic=`) subscriptions keep the pre-standardization shape
//! `{hub path}/subscriptions/{topic}/{subscriber}` and document format so
//! that old clients tracking presence keep working.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::matcher::MatcherType;

/// Everything but RFC 3986 unreserved characters is encoded, exactly once.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a template variable value (RFC 6570 simple expansion).
pub fn encode_component(value: &str) -> String {
    utf8_percent_encode(value, COMPONENT).to_string()
}

/// One subscription of one connection.
#[derive(Debug, Clone)]
pub struct SubscriptionDoc<'a> {
    /// The hub URL's path, e.g. `/.well-known/mercure`.
    pub hub_path: &'a str,
    /// How the matcher is interpreted.
    pub match_type: MatcherType,
    /// The matcher as the subscriber wrote it.
    pub matcher: &'a str,
    /// The hub-generated connection id.
    pub subscriber: &'a str,
    /// False in the event sent when the subscription ends.
    pub active: bool,
    /// The payload the subscriber's token attaches to this subscription.
    pub payload: Option<&'a Value>,
}

impl SubscriptionDoc<'_> {
    /// The subscription's topic, which is also its `id` and API URL path.
    pub fn topic(&self) -> String {
        match self.match_type {
            MatcherType::Legacy => format!(
                "{}/subscriptions/{}/{}",
                self.hub_path,
                encode_component(self.matcher),
                encode_component(self.subscriber)
            ),
            t => format!(
                "{}/subscriptions/{}/{}/{}",
                self.hub_path,
                t.name(),
                encode_component(self.matcher),
                encode_component(self.subscriber)
            ),
        }
    }

    /// The JSON document.
    pub fn to_json(&self) -> Value {
        let mut doc = match self.match_type {
            MatcherType::Legacy => json!({
                "@context": "https://mercure.rocks/",
                "id": self.topic(),
                "type": "Subscription",
                "topic": self.matcher,
                "subscriber": self.subscriber,
                "active": self.active,
            }),
            t => json!({
                "id": self.topic(),
                "type": "subscription",
                "match_type": t.name(),
                "match": self.matcher,
                "subscriber": self.subscriber,
                "active": self.active,
            }),
        };
        if let (Some(p), Some(obj)) = (self.payload, doc.as_object_mut()) {
            obj.insert("payload".into(), p.clone());
        }
        doc
    }
}

/// A collection document of the subscriptions API.
pub fn collection(id: &str, legacy: bool, last_event_id: &str, subscriptions: Vec<Value>) -> Value {
    if legacy {
        json!({
            "@context": "https://mercure.rocks/",
            "id": id,
            "type": "Subscriptions",
            "lastEventID": last_event_id,
            "subscriptions": subscriptions,
        })
    } else {
        json!({ "id": id, "type": "subscriptions", "subscriptions": subscriptions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_topic_encodes_each_variable_once() {
        let payload = json!({"foo": "bar"});
        let doc = SubscriptionDoc {
            hub_path: "/.well-known/mercure",
            match_type: MatcherType::Urlpattern,
            matcher: "https://example.com/:selector",
            subscriber: "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6",
            active: true,
            payload: Some(&payload),
        };
        assert_eq!(
            doc.topic(),
            "/.well-known/mercure/subscriptions/urlpattern/https%3A%2F%2Fexample.com%2F%3Aselector/urn%3Auuid%3Abb3de268-05b0-4c65-b44e-8f9acefc29d6"
        );
        let j = doc.to_json();
        assert_eq!(j["type"], "subscription");
        assert_eq!(j["payload"]["foo"], "bar");
        let pct = SubscriptionDoc {
            matcher: "a%20b",
            ..doc
        };
        assert!(pct.topic().contains("a%2520b"));
    }

    #[test]
    fn legacy_shape() {
        let doc = SubscriptionDoc {
            hub_path: "/.well-known/mercure",
            match_type: MatcherType::Legacy,
            matcher: "https://e.com/{id}",
            subscriber: "s",
            active: false,
            payload: None,
        };
        assert_eq!(
            doc.topic(),
            "/.well-known/mercure/subscriptions/https%3A%2F%2Fe.com%2F%7Bid%7D/s"
        );
        assert_eq!(doc.to_json()["type"], "Subscription");
    }
}
