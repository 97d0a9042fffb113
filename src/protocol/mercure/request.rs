//! Publish and subscribe requests, decoded from form pairs and validated.
//!
//! Every rule the draft puts on request fields lives here, so a transport
//! only maps [`RequestError`] to an HTTP status.

use url::Url;

use super::matcher::{is_pattern, MatcherError, MatcherType, TopicMatcher};
use super::text::check_chars;
use super::{EARLIEST, RESERVED_EVENT_TYPE};

/// A request the hub refuses, with the status class the draft assigns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Malformed or forbidden field: 400.
    #[error("{0}")]
    BadRequest(String),
    /// Over an implementation limit on publish: 413.
    #[error("{0}")]
    TooLarge(String),
}

impl From<MatcherError> for RequestError {
    fn from(e: MatcherError) -> Self {
        RequestError::BadRequest(e.to_string())
    }
}

fn bad(msg: impl Into<String>) -> RequestError {
    RequestError::BadRequest(msg.into())
}

/// Limits applied while decoding requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Maximum `topic` fields in one publish.
    pub max_topics: usize,
    /// Maximum length of any field but `data`, in bytes.
    pub max_field_len: usize,
    /// Maximum matcher parameters in one subscribe.
    pub max_matchers: usize,
    /// Maximum length of one matcher, in bytes.
    pub max_matcher_len: usize,
    /// Maximum pattern matchers (URL patterns, URI templates) in one
    /// subscribe: each may cost a millisecond to compile.
    pub max_patterns: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_topics: 100,
            max_field_len: 2048,
            max_matchers: 100,
            max_matcher_len: 2048,
            max_patterns: 100,
        }
    }
}

/// A validated publish request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// Canonical topic first, then alternate topics.
    pub topics: Vec<String>,
    /// The payload (may be empty).
    pub data: String,
    /// Whether only authorized subscribers may receive it.
    pub private: bool,
    /// The publisher-supplied id, if any.
    pub id: Option<String>,
    /// The SSE event type.
    pub event_type: Option<String>,
    /// The SSE retry delay in milliseconds.
    pub retry: Option<u64>,
}

/// Decodes a publish form; `hub` is the hub URL (for the reserved namespace).
pub fn parse_publish(
    pairs: Vec<(String, String)>,
    hub: &Url,
    limits: &Limits,
) -> Result<PublishRequest, RequestError> {
    let mut req = PublishRequest {
        topics: Vec::new(),
        data: String::new(),
        private: false,
        id: None,
        event_type: None,
        retry: None,
    };
    for (name, value) in pairs {
        if name != "data" && value.len() > limits.max_field_len {
            return Err(RequestError::TooLarge(format!(
                "field {name:?} is {} bytes long, over the limit of {}",
                value.len(),
                limits.max_field_len
            )));
        }
        match name.as_str() {
            "topic" => {
                if req.topics.len() == limits.max_topics {
                    return Err(RequestError::TooLarge(format!(
                        "more than {} topic fields",
                        limits.max_topics
                    )));
                }
                check_chars("topic", &value).map_err(bad)?;
                if value == "*" {
                    return Err(bad("the topic \"*\" is reserved for the wildcard matcher"));
                }
                if addresses_reserved_namespace(&value, hub) {
                    return Err(bad(format!(
                        "the topic {value:?} is in the namespace reserved for the hub"
                    )));
                }
                req.topics.push(value);
            }
            "data" => req.data = value,
            "private" => req.private = true,
            "id" => {
                check_chars("id", &value).map_err(bad)?;
                if value.starts_with('#') {
                    return Err(bad("id must not start with '#'"));
                }
                if value == EARLIEST {
                    return Err(bad("id \"earliest\" is reserved"));
                }
                if value.is_empty() {
                    return Err(bad("id must not be empty"));
                }
                req.id = Some(value);
            }
            "type" => {
                check_chars("type", &value).map_err(bad)?;
                if value == RESERVED_EVENT_TYPE {
                    return Err(bad("type \"mercure\" is reserved for hub events"));
                }
                req.event_type = (!value.is_empty()).then_some(value);
            }
            "retry" => {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("retry must be ASCII digits"));
                }
                req.retry = Some(value.parse().map_err(|_| bad("retry is too large"))?);
            }
            // Unknown fields are ignored, as the draft requires.
            _ => {}
        }
    }
    if req.topics.is_empty() {
        return Err(bad("missing \"topic\" field"));
    }
    Ok(req)
}

/// Whether `topic`, resolved against the hub URL, names a path under the
/// hub's own (reserved for subscription events). Paths are compared after
/// dot-segment removal and decoding of percent-encoded unreserved characters
/// so that `/.well-known/%6Dercure/x` cannot slip through. A URL with an
/// opaque path (`urn:uuid:/.well-known/mercure`) has no path to be under.
pub fn addresses_reserved_namespace(topic: &str, hub: &Url) -> bool {
    let Ok(resolved) = hub.join(topic) else {
        return false;
    };
    if resolved.cannot_be_a_base() {
        return false;
    }
    let decoded = decode_unreserved(resolved.path());
    // Resolved as a relative path, so that what decoding revealed can
    // neither change the scheme nor the host: only dot segments go.
    let path = match resolved
        .join("/")
        .and_then(|root| root.join(&format!(".{decoded}")))
    {
        Ok(u) => u.path().to_owned(),
        Err(_) => decoded,
    };
    let hub_path = hub.path().trim_end_matches('/');
    path == hub_path || path.starts_with(&format!("{hub_path}/"))
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = &path[i + 1..i + 3];
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                let c = v as char;
                if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                    out.push(c);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// A validated subscribe request.
#[derive(Debug)]
pub struct SubscribeRequest {
    /// One subscription per matcher parameter, duplicates removed.
    pub matchers: Vec<TopicMatcher>,
    /// `last_event_id` (or legacy `lastEventID`) from the query or body.
    pub last_event_id: Option<String>,
    /// A token given in the legacy `authorization` query parameter.
    pub legacy_token: Option<String>,
}

/// Decodes subscribe parameters. `query` pairs win over `body` pairs for the
/// single-valued `last_event_id`; matchers are the union of both.
pub fn parse_subscribe(
    query: Vec<(String, String)>,
    body: Vec<(String, String)>,
    hub: &Url,
    legacy: bool,
    limits: &Limits,
) -> Result<SubscribeRequest, RequestError> {
    let mut matchers: Vec<TopicMatcher> = Vec::new();
    let (mut query_cursor, mut body_cursor) = (None, None);
    let (mut params, mut patterns) = (0, 0);
    let mut legacy_token = None;
    for (from_query, (name, value)) in query
        .into_iter()
        .map(|p| (true, p))
        .chain(body.into_iter().map(|p| (false, p)))
    {
        // `get`, not slicing: the name is client text, byte 5 may be inside
        // a character (found by the mercure_subscribe fuzz target).
        let kind = if name
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("match"))
        {
            Some(matcher_type_of(&name)?)
        } else if legacy && name == "topic" {
            Some(MatcherType::Legacy)
        } else {
            None
        };
        if let Some(kind) = kind {
            if value.len() > limits.max_matcher_len {
                return Err(bad(format!(
                    "matcher is {} bytes long, over the limit of {}",
                    value.len(),
                    limits.max_matcher_len
                )));
            }
            params += 1;
            if params > limits.max_matchers {
                return Err(bad(format!(
                    "more than {} topic matchers",
                    limits.max_matchers
                )));
            }
            if is_pattern(kind, &value) {
                patterns += 1;
                if patterns > limits.max_patterns {
                    return Err(bad(format!(
                        "more than {} pattern matchers{}",
                        limits.max_patterns,
                        if limits.max_patterns < limits.max_matchers {
                            " without a token (mercure.max_anonymous_patterns)"
                        } else {
                            ""
                        }
                    )));
                }
            }
            let m = TopicMatcher::new(kind, &value, hub)?;
            if !matchers
                .iter()
                .any(|o| o.kind() == kind && o.raw() == value)
            {
                matchers.push(m);
            }
            continue;
        }
        let is_cursor = name == "last_event_id" || (legacy && name == "lastEventID");
        if is_cursor {
            let slot = if from_query {
                &mut query_cursor
            } else {
                &mut body_cursor
            };
            slot.get_or_insert(value);
        } else if legacy && name == "authorization" && legacy_token.is_none() {
            legacy_token = Some(value);
        }
    }
    // Query beats body for the single-valued cursor.
    let last_event_id = query_cursor.or(body_cursor);
    if matchers.is_empty() {
        return Err(bad(if legacy {
            "missing \"match\" (or legacy \"topic\") parameter"
        } else {
            "missing \"match\" parameter"
        }));
    }
    Ok(SubscribeRequest {
        matchers,
        last_event_id,
        legacy_token,
    })
}

fn matcher_type_of(name: &str) -> Result<MatcherType, RequestError> {
    if name == "match" {
        return Ok(MatcherType::Exact);
    }
    name.strip_prefix("match_")
        .and_then(MatcherType::from_draft_name)
        .ok_or_else(|| bad(format!("unsupported topic matcher parameter {name:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Url {
        Url::parse("https://hub.example.com/.well-known/mercure").unwrap()
    }

    #[test]
    fn parameter_names_with_multibyte_characters_are_refused_not_sliced() {
        for name in ["   c\u{640}", "matc\u{e9}", "\u{1F600}x"] {
            let query = vec![(name.to_owned(), "x".to_owned())];
            let r = parse_subscribe(query, Vec::new(), &hub(), false, &Limits::default());
            assert!(r.is_err(), "{name:?}");
        }
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn publish_fields() {
        let r = parse_publish(
            pairs(&[
                ("topic", "https://e.com/a"),
                ("topic", "alt"),
                ("data", "d"),
                ("private", ""),
                ("id", "my-id"),
                ("type", "t"),
                ("retry", "10"),
                ("unknown", "ignored"),
            ]),
            &hub(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(r.topics, vec!["https://e.com/a", "alt"]);
        assert!(r.private);
        assert_eq!(r.id.as_deref(), Some("my-id"));
        assert_eq!(r.retry, Some(10));
    }

    #[test]
    fn publish_rejections() {
        let l = Limits::default();
        let err = |p: &[(&str, &str)]| parse_publish(pairs(p), &hub(), &l).unwrap_err();
        assert!(matches!(err(&[("data", "x")]), RequestError::BadRequest(_)));
        assert!(matches!(
            err(&[("topic", "*")]),
            RequestError::BadRequest(_)
        ));
        for t in [
            "/.well-known/mercure",
            "/.well-known/mercure/subscriptions/x",
            "https://anything.example/.well-known/mercure/x",
            "/.well-known/%6Dercure/x",
            "/.well-known/mercure/../mercure/x",
            "/a/../.well-known/mercure",
        ] {
            assert!(
                matches!(err(&[("topic", t)]), RequestError::BadRequest(_)),
                "{t}"
            );
        }
        // Opaque paths are not under the hub's path (the WHATWG URL
        // parser agrees: `new URL("urn:uuid:/.well-known/mercure").pathname`
        // is `uuid:/.well-known/mercure`).
        for t in [
            "/.well-known/mercurex",
            "urn:uuid:/.well-known/mercure",
            "urn:x:/.well-known/mercure/x",
        ] {
            assert!(
                parse_publish(pairs(&[("topic", t)]), &hub(), &l).is_ok(),
                "{t}"
            );
        }
        assert!(matches!(
            err(&[("topic", "a"), ("id", "#x")]),
            RequestError::BadRequest(_)
        ));
        assert!(matches!(
            err(&[("topic", "a"), ("id", "earliest")]),
            RequestError::BadRequest(_)
        ));
        assert!(matches!(
            err(&[("topic", "a"), ("id", "a\nb")]),
            RequestError::BadRequest(_)
        ));
        assert!(matches!(
            err(&[("topic", "a"), ("type", "mercure")]),
            RequestError::BadRequest(_)
        ));
        assert!(matches!(
            err(&[("topic", "a"), ("retry", "1s")]),
            RequestError::BadRequest(_)
        ));
        assert!(matches!(
            err(&[("topic", "a\u{200b}")]),
            RequestError::BadRequest(_)
        ));
        let many: Vec<(&str, &str)> = (0..101).map(|_| ("topic", "t")).collect();
        assert!(matches!(err(&many), RequestError::TooLarge(_)));
        let long = "x".repeat(3000);
        assert!(matches!(
            err(&[("topic", long.as_str())]),
            RequestError::TooLarge(_)
        ));
    }

    #[test]
    fn subscribe_parameters() {
        let l = Limits::default();
        let r = parse_subscribe(
            pairs(&[
                ("match", "a"),
                ("match_urlpattern", "https://e.com/:id"),
                ("match", "a"),
            ]),
            pairs(&[("match_exact", "b"), ("last_event_id", "from-body")]),
            &hub(),
            false,
            &l,
        )
        .unwrap();
        assert_eq!(r.matchers.len(), 3);
        assert_eq!(r.last_event_id.as_deref(), Some("from-body"));
        let r = parse_subscribe(
            pairs(&[("match", "a"), ("last_event_id", "q")]),
            pairs(&[("last_event_id", "b")]),
            &hub(),
            false,
            &l,
        )
        .unwrap();
        assert_eq!(r.last_event_id.as_deref(), Some("q"));
    }

    #[test]
    fn subscribe_rejections() {
        let l = Limits::default();
        let sub = |p: &[(&str, &str)], legacy| {
            parse_subscribe(pairs(p), vec![], &hub(), legacy, &l).map(|_| ())
        };
        assert!(sub(&[("match_regex", "a")], false).is_err());
        assert!(sub(&[("Match", "a")], false).is_err());
        assert!(sub(&[("matches", "a")], false).is_err());
        assert!(sub(&[("match_urlpattern", "https://e.com/(")], false).is_err());
        assert!(sub(&[("match", "a\u{1}")], false).is_err());
        assert!(sub(&[("foo", "a")], false).is_err());
        assert!(sub(&[("topic", "a")], false).is_err());
        assert!(sub(&[("topic", "https://e.com/{id}")], true).is_ok());
        assert!(sub(&[("topic", "https://e.com/{id")], true).is_err());
        let many: Vec<(&str, &str)> = (0..101).map(|_| ("match", "t")).collect();
        assert!(sub(&many, false).is_err());
    }

    #[test]
    fn legacy_parameters() {
        let r = parse_subscribe(
            pairs(&[
                ("topic", "a"),
                ("lastEventID", "x"),
                ("authorization", "tok"),
            ]),
            vec![],
            &hub(),
            true,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(r.last_event_id.as_deref(), Some("x"));
        assert_eq!(r.legacy_token.as_deref(), Some("tok"));
    }
}
