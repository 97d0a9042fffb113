//! What a Mercure token allows.

use serde_json::Value;
use url::Url;

use super::AuthError;
use crate::protocol::mercure::matcher::{MatcherType, TopicMatcher};

/// The authorization detail type Mercure defines.
pub const DETAIL_TYPE: &str = "https://mercure.rocks/authorization-detail";

/// Limits on what a token may carry.
#[derive(Debug, Clone, Copy)]
pub struct GrantLimits {
    /// Mercure authorization details per token.
    pub max_details: usize,
    /// Entries in one `topics` array.
    pub max_topics: usize,
    /// Length of one matcher.
    pub max_pattern_len: usize,
}

impl Default for GrantLimits {
    fn default() -> Self {
        GrantLimits {
            max_details: 100,
            max_topics: 100,
            max_pattern_len: 2048,
        }
    }
}

/// The rights of one verified token.
#[derive(Debug, Default)]
pub struct Grants {
    /// Topics the token may publish to.
    pub publish: Vec<TopicMatcher>,
    /// Topics whose private updates the token may receive.
    pub subscribe: Vec<TopicMatcher>,
    /// `subscribe` details carrying a payload, in token order.
    pub payloads: Vec<(Vec<TopicMatcher>, Value)>,
    /// The legacy claim's single payload, for every subscription.
    pub legacy_payload: Option<Value>,
    /// `exp`, in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// `sub`.
    pub subject: Option<String>,
}

impl Grants {
    /// True when the token may publish to every one of `topics`.
    pub fn may_publish<'a>(&self, mut topics: impl Iterator<Item = &'a str>) -> bool {
        topics.all(|t| self.publish.iter().any(|m| m.matches(t)))
    }

    /// True when the token may receive a private update with `topics`.
    pub fn may_read<'a>(&self, topics: impl Iterator<Item = &'a str> + Clone) -> bool {
        self.subscribe.iter().any(|m| m.matches_any(topics.clone()))
    }

    /// The payload attached to a subscription whose matcher is `matcher`:
    /// the first `subscribe` detail whose topics match the matcher string.
    pub fn payload_for(&self, matcher: &str) -> Option<&Value> {
        self.payloads
            .iter()
            .find(|(topics, _)| topics.iter().any(|m| m.matches(matcher)))
            .map(|(_, p)| p)
            .or(self.legacy_payload.as_ref())
    }

    /// Reads RFC 9396 `authorization_details`. Any malformed Mercure detail
    /// invalidates the whole token (no partial acceptance).
    pub fn from_authorization_details(
        claims: &Value,
        hub: &Url,
        limits: &GrantLimits,
    ) -> Result<Grants, AuthError> {
        let invalid = |m: &str| AuthError::InvalidToken(m.to_owned());
        let mut grants = Grants::default();
        let details = match claims.get("authorization_details") {
            None => return Ok(grants),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(invalid("authorization_details is not an array")),
        };
        let mercure: Vec<&Value> = details
            .iter()
            .filter(|d| d.get("type").and_then(Value::as_str) == Some(DETAIL_TYPE))
            .collect();
        if mercure.len() > limits.max_details {
            return Err(invalid("too many authorization details"));
        }
        for detail in mercure {
            let actions = match detail.get("actions") {
                Some(Value::Array(a)) if !a.is_empty() => a,
                _ => return Err(invalid("actions must be a non-empty array")),
            };
            let mut publish = false;
            let mut subscribe = false;
            for a in actions {
                match a.as_str() {
                    Some("publish") => publish = true,
                    Some("subscribe") => subscribe = true,
                    Some(_) => {} // unknown actions grant nothing
                    None => return Err(invalid("an action is not a string")),
                }
            }
            let topics = match detail.get("topics") {
                Some(Value::Array(t)) if !t.is_empty() => t,
                _ => return Err(invalid("topics must be a non-empty array")),
            };
            if topics.len() > limits.max_topics {
                return Err(invalid("too many topics in an authorization detail"));
            }
            let compile = || -> Result<Vec<TopicMatcher>, AuthError> {
                topics
                    .iter()
                    .map(|t| topic_matcher(t, hub, limits))
                    .collect()
            };
            let payload = match detail.get("payload") {
                None => None,
                Some(p @ Value::Object(_)) => Some(p.clone()),
                Some(_) => return Err(invalid("payload must be an object")),
            };
            let matchers = compile()?;
            if publish {
                grants.publish.extend(compile()?);
            }
            if subscribe {
                if let Some(p) = payload {
                    grants.payloads.push((compile()?, p));
                }
                grants.subscribe.extend(matchers);
            }
        }
        Ok(grants)
    }

    /// Reads the pre-standardization `mercure` claim
    /// (`{"publish": [...], "subscribe": [...], "payload": ...}`), whose
    /// selectors are exact topics, URI templates or `*`.
    pub fn from_legacy_claim(
        claims: &Value,
        hub: &Url,
        limits: &GrantLimits,
    ) -> Result<Grants, AuthError> {
        let invalid = |m: &str| AuthError::InvalidToken(m.to_owned());
        let mut grants = Grants::default();
        let Some(claim) = claims.get("mercure") else {
            return Ok(grants);
        };
        if !claim.is_object() {
            return Err(invalid("the mercure claim is not an object"));
        }
        for (name, out) in [
            ("publish", &mut grants.publish),
            ("subscribe", &mut grants.subscribe),
        ] {
            match claim.get(name) {
                None | Some(Value::Null) => {}
                Some(Value::Array(selectors)) => {
                    if selectors.len() > limits.max_topics {
                        return Err(invalid("too many selectors"));
                    }
                    for s in selectors {
                        let s = s
                            .as_str()
                            .ok_or_else(|| invalid("a selector is not a string"))?;
                        if s.len() > limits.max_pattern_len {
                            return Err(invalid("selector too long"));
                        }
                        out.push(
                            TopicMatcher::new(MatcherType::Legacy, s, hub)
                                .map_err(|e| AuthError::InvalidToken(e.to_string()))?,
                        );
                    }
                }
                Some(_) => return Err(invalid("selectors must be an array")),
            }
        }
        grants.legacy_payload = claim.get("payload").cloned();
        Ok(grants)
    }
}

fn topic_matcher(
    entry: &Value,
    hub: &Url,
    limits: &GrantLimits,
) -> Result<TopicMatcher, AuthError> {
    let invalid = |m: &str| AuthError::InvalidToken(m.to_owned());
    let obj = entry
        .as_object()
        .ok_or_else(|| invalid("a topic matcher is not an object"))?;
    let pattern = obj
        .get("match")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("a topic matcher has no string \"match\""))?;
    if pattern.len() > limits.max_pattern_len {
        return Err(invalid("topic matcher too long"));
    }
    let kind = match obj.get("match_type") {
        None => MatcherType::Exact,
        Some(Value::String(t)) => {
            MatcherType::from_draft_name(t).ok_or_else(|| invalid("unsupported match_type"))?
        }
        Some(_) => return Err(invalid("match_type is not a string")),
    };
    TopicMatcher::new(kind, pattern, hub).map_err(|e| AuthError::InvalidToken(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hub() -> Url {
        Url::parse("https://hub.example.com/.well-known/mercure").unwrap()
    }

    #[test]
    fn reads_authorization_details_and_payloads() {
        let claims = json!({"authorization_details": [
            {"type": DETAIL_TYPE, "actions": ["subscribe"],
             "topics": [{"match": "https://e.com/foo"}], "payload": {"a": 1}},
            {"type": DETAIL_TYPE, "actions": ["subscribe", "future"],
             "topics": [{"match": "https://e.com/bar/:id", "match_type": "urlpattern"}],
             "payload": {"b": 2}},
            {"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "*"}]},
            {"type": "https://other.example/ignored", "whatever": true}
        ]});
        let g =
            Grants::from_authorization_details(&claims, &hub(), &GrantLimits::default()).unwrap();
        assert!(g.may_publish(["x", "y"].into_iter()));
        assert!(g.may_read(["https://e.com/bar/1"].into_iter()));
        assert!(!g.may_read(["https://e.com/baz"].into_iter()));
        assert_eq!(g.payload_for("https://e.com/foo").unwrap()["a"], 1);
        assert_eq!(g.payload_for("https://e.com/bar/:id").unwrap()["b"], 2);
        assert!(g.payload_for("nothing").is_none());
    }

    #[test]
    fn any_malformed_detail_rejects_the_token() {
        let l = GrantLimits::default();
        for bad in [
            json!({"authorization_details": {}}),
            json!({"authorization_details": [{"type": DETAIL_TYPE, "actions": [], "topics": [{"match": "a"}]}]}),
            json!({"authorization_details": [{"type": DETAIL_TYPE, "actions": [1], "topics": [{"match": "a"}]}]}),
            json!({"authorization_details": [{"type": DETAIL_TYPE, "actions": ["publish"], "topics": ["a"]}]}),
            json!({"authorization_details": [{"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "a", "match_type": "regex"}]}]}),
            json!({"authorization_details": [{"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "https://e.com/(", "match_type": "urlpattern"}]}]}),
        ] {
            assert!(
                Grants::from_authorization_details(&bad, &hub(), &l).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn reads_the_legacy_claim() {
        let claims = json!({"mercure": {"publish": ["https://e.com/books/{id}"], "subscribe": ["*"], "payload": {"u": 1}}});
        let g = Grants::from_legacy_claim(&claims, &hub(), &GrantLimits::default()).unwrap();
        assert!(g.may_publish(["https://e.com/books/1"].into_iter()));
        assert!(!g.may_publish(["https://e.com/authors/1"].into_iter()));
        assert!(g.may_read(["anything"].into_iter()));
        assert_eq!(g.payload_for("x").unwrap()["u"], 1);
    }
}
