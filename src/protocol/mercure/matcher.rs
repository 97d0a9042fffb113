//! Topic matchers: which topics a subscription (or a token grant) covers.
//!
//! The draft defines two matcher types, `exact` (byte-for-byte) and
//! `urlpattern` (the WHATWG URL Pattern standard, relative patterns and
//! topics resolved against the hub URL). Pre-standardization clients send
//! selectors that are either an exact topic or an RFC 6570 URI template;
//! those are the `legacy` kind. The value `*` matches every topic whatever
//! the kind.

use std::fmt;
use std::sync::Arc;

use regex::Regex;
use url::Url;
use urlpattern::{UrlPattern, UrlPatternInit, UrlPatternMatchInput, UrlPatternOptions};

use super::uri_template;

/// The matcher types a subscriber or a token can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatcherType {
    /// Byte-for-byte comparison (the draft's default).
    Exact,
    /// WHATWG URL Pattern.
    Urlpattern,
    /// Pre-standardization selector: exact topic or URI template.
    Legacy,
}

impl MatcherType {
    /// The canonical name, as used in `match_<name>` and `match_type`.
    pub fn name(self) -> &'static str {
        match self {
            MatcherType::Exact => "exact",
            MatcherType::Urlpattern => "urlpattern",
            MatcherType::Legacy => "legacy",
        }
    }

    /// Resolves a draft matcher type name (`exact`, `urlpattern`).
    pub fn from_draft_name(name: &str) -> Option<Self> {
        match name {
            "exact" => Some(MatcherType::Exact),
            "urlpattern" => Some(MatcherType::Urlpattern),
            _ => None,
        }
    }
}

/// Why a matcher value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    /// The value breaks the character rules.
    #[error("invalid matcher: {0}")]
    Chars(String),
    /// The value is not a well-formed URL Pattern.
    #[error("invalid URL pattern {0:?}: {1}")]
    UrlPattern(String, String),
    /// The value is a malformed URI template.
    #[error("{0}")]
    Template(#[from] uri_template::TemplateError),
    /// The value is longer than the configured limit.
    #[error("matcher is {0} bytes long, over the limit of {1}")]
    TooLong(usize, usize),
}

#[derive(Clone)]
enum Compiled {
    Wildcard,
    Exact,
    UrlPattern {
        pattern: Arc<UrlPattern>,
        base: Url,
    },
    Template(Regex),
    /// A Centrifugo channel pattern: the namespace (`ns:`, or empty) must
    /// be equal, the rest is matched as a URL Pattern pathname.
    Channel {
        namespace: String,
        pattern: Arc<UrlPattern>,
    },
}

/// A compiled topic matcher (cheap to clone).
#[derive(Clone)]
pub struct TopicMatcher {
    kind: MatcherType,
    raw: String,
    compiled: Compiled,
}

impl fmt::Debug for TopicMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.name(), self.raw)
    }
}

impl TopicMatcher {
    /// Compiles `raw` as a matcher of `kind`; `base` is the hub URL.
    pub fn new(kind: MatcherType, raw: &str, base: &Url) -> Result<Self, MatcherError> {
        super::text::check_chars("matcher", raw).map_err(MatcherError::Chars)?;
        let compiled = if raw == "*" {
            Compiled::Wildcard
        } else {
            match kind {
                MatcherType::Exact => Compiled::Exact,
                MatcherType::Urlpattern => {
                    cached(kind, raw, base, || compile_url_pattern(raw, base))?
                }
                MatcherType::Legacy if uri_template::looks_like_template(raw) => {
                    cached(kind, raw, base, || {
                        Ok(Compiled::Template(uri_template::compile(raw)?))
                    })?
                }
                MatcherType::Legacy => Compiled::Exact,
            }
        };
        Ok(TopicMatcher {
            kind,
            raw: raw.to_owned(),
            compiled,
        })
    }

    /// A Centrifugo channel pattern such as `rooms:eu/*` or
    /// `rooms::region/lobby`: after the namespace, URL Pattern pathname
    /// syntax (`*`, `:name`, `(regex)`, `{optional}?`).
    pub fn channel_pattern(raw: &str) -> Result<Self, MatcherError> {
        super::text::check_chars("channel pattern", raw).map_err(MatcherError::Chars)?;
        let (namespace, rest) = match raw.split_once(':') {
            Some((ns, rest)) => (format!("{ns}:"), rest),
            None => (String::new(), raw),
        };
        let init = UrlPatternInit {
            pathname: Some(format!("/{rest}")),
            ..Default::default()
        };
        let pattern = UrlPattern::parse(init, UrlPatternOptions { ignore_case: false })
            .map_err(|e| MatcherError::UrlPattern(raw.to_owned(), e.to_string()))?;
        Ok(TopicMatcher {
            kind: MatcherType::Urlpattern,
            raw: raw.to_owned(),
            compiled: Compiled::Channel {
                namespace,
                pattern: Arc::new(pattern),
            },
        })
    }

    /// The matcher type.
    pub fn kind(&self) -> MatcherType {
        self.kind
    }

    /// The matcher as the client wrote it.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// What the matcher means, as a key: two matchers with the same identity
    /// select the same topics. The spelling alone is not enough: `*` is
    /// every topic to Mercure and channels without a namespace to a
    /// Centrifugo channel pattern.
    pub fn identity(&self) -> String {
        let form = match self.compiled {
            Compiled::Wildcard => "wildcard",
            Compiled::Exact => "exact",
            Compiled::UrlPattern { .. } => "urlpattern",
            Compiled::Template(_) => "template",
            Compiled::Channel { .. } => "channel",
        };
        format!("{form}:{}", self.raw)
    }

    /// A key that every topic this pattern selects has among its
    /// [`topic_keys`], so that a publication is tested only against the
    /// patterns found under its topics' keys rather than against every
    /// pattern. `None` when no such key is certain (wildcards, patterns
    /// that begin with a variable part): such a pattern is tested against
    /// every publication.
    ///
    /// - a URI template or a Centrifugo channel pattern: the literal start
    ///   of the raw topic (up to its last `/` or `:`), since both match the
    ///   raw string from its first byte;
    /// - a URL pattern over `http(s)` with a plain literal host: the
    ///   topic's origin and the literal start of its path, compared on the
    ///   parsed URL (the topic's spelling may differ: case, default port,
    ///   dot segments), which is what the pattern is tested against.
    pub fn index_key(&self) -> Option<String> {
        match &self.compiled {
            Compiled::Template(_) => {
                let literal = &self.raw[..self.raw.find('{')?];
                Some(format!("r:{}", cut_at_delimiter(literal, b"/:")?))
            }
            Compiled::Channel { namespace, .. } if !namespace.is_empty() => {
                Some(format!("r:{namespace}"))
            }
            Compiled::UrlPattern { pattern, .. } => {
                let protocol = pattern.protocol();
                let hostname = pattern.hostname();
                let port = pattern.port();
                let plain_host = !hostname.is_empty()
                    && hostname.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                    });
                let plain_port = port.bytes().all(|b| b.is_ascii_digit());
                if !matches!(protocol, "http" | "https") || !plain_host || !plain_port {
                    return None;
                }
                let path = pattern.pathname();
                let literal_end = path
                    .bytes()
                    .position(|b| !(b.is_ascii_alphanumeric() || b"-._~/".contains(&b)))
                    .unwrap_or(path.len());
                let path = cut_at_delimiter(&path[..literal_end], b"/").unwrap_or("/");
                let port = if port.is_empty() {
                    String::new()
                } else {
                    format!(":{port}")
                };
                Some(format!("u:{protocol}://{hostname}{port}{path}"))
            }
            _ => None,
        }
    }

    /// The hub URL a URL pattern resolves topics against.
    pub fn url_base(&self) -> Option<&Url> {
        match &self.compiled {
            Compiled::UrlPattern { base, .. } => Some(base),
            _ => None,
        }
    }

    /// The topic this matcher selects when it is a plain byte comparison:
    /// such matchers are found through the hub's exact-topic index instead
    /// of being evaluated against every update.
    pub fn exact_topic(&self) -> Option<&str> {
        matches!(self.compiled, Compiled::Exact).then_some(self.raw.as_str())
    }

    /// Tests one topic.
    pub fn matches(&self, topic: &str) -> bool {
        match &self.compiled {
            Compiled::Wildcard => true,
            Compiled::Exact => self.raw == topic,
            Compiled::Template(re) => self.raw == topic || re.is_match(topic),
            Compiled::UrlPattern { pattern, base } => match base.join(topic) {
                // A topic that is not a URL reference never matches a pattern.
                Ok(url) => pattern
                    .test(UrlPatternMatchInput::Url(url))
                    .unwrap_or(false),
                Err(_) => false,
            },
            Compiled::Channel { namespace, pattern } => {
                let rest = if namespace.is_empty() {
                    (!topic.contains(':')).then_some(topic)
                } else {
                    topic.strip_prefix(namespace.as_str())
                };
                rest.is_some_and(|rest| {
                    let input = UrlPatternInit {
                        pathname: Some(format!("/{rest}")),
                        ..Default::default()
                    };
                    pattern
                        .test(UrlPatternMatchInput::Init(input))
                        .unwrap_or(false)
                })
            }
        }
    }

    /// Tests whether any of `topics` matches.
    pub fn matches_any<'a>(&self, mut topics: impl Iterator<Item = &'a str>) -> bool {
        topics.any(|t| self.matches(t))
    }
}

/// `s` up to and including its last byte among `delimiters`; `None` when
/// it has none.
fn cut_at_delimiter<'a>(s: &'a str, delimiters: &[u8]) -> Option<&'a str> {
    let end = s.bytes().rposition(|b| delimiters.contains(&b))?;
    Some(&s[..=end])
}

/// The keys a topic may be found under by [`TopicMatcher::index_key`]:
/// each start of the raw topic ending in `/` or `:`, and, when `url_base`
/// is given and the topic resolves against it to an `http(s)` URL, its
/// origin followed by each start of its path ending in `/`.
pub fn topic_keys(topic: &str, url_base: Option<&Url>) -> Vec<String> {
    let mut keys: Vec<String> = topic
        .bytes()
        .enumerate()
        .filter(|(_, b)| *b == b'/' || *b == b':')
        .map(|(i, _)| format!("r:{}", &topic[..=i]))
        .collect();
    if let Some(url) = url_base.and_then(|base| base.join(topic).ok()) {
        if let (true, Some(host)) = (matches!(url.scheme(), "http" | "https"), url.host_str()) {
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            let origin = format!("u:{}://{host}{port}", url.scheme());
            let path = url.path();
            keys.extend(
                path.bytes()
                    .enumerate()
                    .filter(|(_, b)| *b == b'/')
                    .map(|(i, _)| format!("{origin}{}", &path[..=i])),
            );
        }
    }
    keys
}

/// Compiled patterns kept for reuse: compiling one costs up to a
/// millisecond (a regular expression per URL component), matching it a few
/// microseconds, and many subscribers ask for the same few patterns.
const CACHED_PATTERNS: usize = 4096;

type PatternKey = (MatcherType, String, String);

fn pattern_cache() -> &'static parking_lot::Mutex<std::collections::HashMap<PatternKey, Compiled>> {
    static CACHE: std::sync::OnceLock<
        parking_lot::Mutex<std::collections::HashMap<PatternKey, Compiled>>,
    > = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The compiled form of a pattern, from the cache or `compile`.
fn cached(
    kind: MatcherType,
    raw: &str,
    base: &Url,
    compile: impl FnOnce() -> Result<Compiled, MatcherError>,
) -> Result<Compiled, MatcherError> {
    let key = (kind, raw.to_owned(), base.as_str().to_owned());
    if let Some(c) = pattern_cache().lock().get(&key) {
        return Ok(c.clone());
    }
    let compiled = compile()?;
    let mut cache = pattern_cache().lock();
    if cache.len() >= CACHED_PATTERNS {
        // Any one goes: a stranger's patterns cannot pin the cache.
        if let Some(victim) = cache.keys().next().cloned() {
            cache.remove(&victim);
        }
    }
    cache.insert(key, compiled.clone());
    Ok(compiled)
}

/// True when a matcher of `kind` spelled `raw` is a pattern (tested
/// against topics rather than compared with them).
pub fn is_pattern(kind: MatcherType, raw: &str) -> bool {
    raw != "*"
        && match kind {
            MatcherType::Exact => false,
            MatcherType::Urlpattern => true,
            MatcherType::Legacy => uri_template::looks_like_template(raw),
        }
}

fn compile_url_pattern(raw: &str, base: &Url) -> Result<Compiled, MatcherError> {
    let bad = |e: urlpattern::Error| MatcherError::UrlPattern(raw.to_owned(), e.to_string());
    let init = UrlPatternInit::parse_constructor_string::<regex::Regex>(raw, Some(base.clone()))
        .map_err(bad)?;
    let pattern = UrlPattern::parse(init, UrlPatternOptions { ignore_case: false }).map_err(bad)?;
    Ok(Compiled::UrlPattern {
        pattern: Arc::new(pattern),
        base: base.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://hub.example.com/.well-known/mercure").unwrap()
    }

    #[test]
    fn exact_is_byte_for_byte() {
        let m = TopicMatcher::new(MatcherType::Exact, "https://example.com/foo", &base()).unwrap();
        assert!(m.matches("https://example.com/foo"));
        assert!(!m.matches("https://example.com/Foo"));
        assert!(!m.matches("https://example.com/foo/"));
        assert_eq!(m.exact_topic(), Some("https://example.com/foo"));
    }

    #[test]
    fn url_pattern_absolute_and_relative() {
        let m = TopicMatcher::new(
            MatcherType::Urlpattern,
            "https://example.com/books/:id",
            &base(),
        )
        .unwrap();
        assert!(m.matches("https://example.com/books/1"));
        assert!(!m.matches("https://example.com/books/1/reviews"));
        assert!(!m.matches("https://example.com/BOOKS/1"));
        assert!(!m.matches("no scheme at all"));
        let rel = TopicMatcher::new(
            MatcherType::Urlpattern,
            "/.well-known/mercure/subscriptions/exact/:topic/:subscriber",
            &base(),
        )
        .unwrap();
        assert!(rel.matches("/.well-known/mercure/subscriptions/exact/a/b"));
        assert!(rel.matches("https://hub.example.com/.well-known/mercure/subscriptions/exact/a/b"));
        assert!(
            !rel.matches("https://other.example.com/.well-known/mercure/subscriptions/exact/a/b")
        );
    }

    #[test]
    fn wildcard_and_legacy_templates() {
        let all = TopicMatcher::new(MatcherType::Exact, "*", &base()).unwrap();
        assert!(all.matches("anything") && all.exact_topic().is_none());
        let t = TopicMatcher::new(MatcherType::Legacy, "https://e.com/b/{id}", &base()).unwrap();
        assert!(t.matches("https://e.com/b/9") && !t.matches("https://e.com/c/9"));
        assert!(TopicMatcher::new(MatcherType::Legacy, "https://e.com/{id", &base()).is_err());
    }

    #[test]
    fn channel_patterns_match_within_their_namespace() {
        let m = TopicMatcher::channel_pattern("rooms:eu/*").unwrap();
        assert!(m.matches("rooms:eu/paris") && m.matches("rooms:eu/paris/lobby"));
        assert!(!m.matches("rooms:us/nyc") && !m.matches("other:eu/paris"));
        assert!(!m.matches("eu/paris") && m.exact_topic().is_none());
        let named = TopicMatcher::channel_pattern("rooms::region/lobby").unwrap();
        assert!(named.matches("rooms:eu/lobby") && !named.matches("rooms:eu/kitchen"));
        assert!(!named.matches("rooms:eu/x/lobby"));
        let plain = TopicMatcher::channel_pattern("news-*").unwrap();
        assert!(plain.matches("news-sport") && !plain.matches("chat:news-sport"));
        assert!(TopicMatcher::channel_pattern("rooms:(").is_err());
    }

    /// The index never hides a match: every topic a pattern selects has
    /// the pattern's index key among its own keys.
    #[test]
    fn a_selected_topic_has_the_patterns_index_key() {
        let b = base();
        let patterns = [
            (MatcherType::Urlpattern, "https://example.com/books/:id"),
            (MatcherType::Urlpattern, "/books/:id"),
            (MatcherType::Urlpattern, "https://example.com/users/42/*"),
            (MatcherType::Urlpattern, "https://example.com:8080/b/:id"),
            (MatcherType::Urlpattern, "https://example.com/:a/:b"),
            (MatcherType::Urlpattern, "https://example.com/b(ook)?s/:id"),
            (MatcherType::Urlpattern, "http{s}?://example.com/books/:id"),
            (MatcherType::Urlpattern, "https://*.example.com/books/:id"),
            (MatcherType::Legacy, "https://example.com/books/{id}"),
            (MatcherType::Legacy, "https://example.com/books{/id}"),
            (MatcherType::Legacy, "{+any}"),
        ];
        let topics = [
            "https://example.com/books/1",
            "HTTPS://EXAMPLE.COM/books/2",
            "https://example.com:443/books/3",
            "https://example.com/x/../books/4",
            "https://example.com/./books/5",
            "/books/6",
            "https://hub.example.com/books/7",
            "https://example.com/users/42/a/b",
            "https://example.com:8080/b/8",
            "https://example.com/bs/9",
            "http://example.com/books/10",
            "https://www.example.com/books/11",
            "https://example.com/books",
            "https://example.com/books/%41",
            "urn:example:books:1",
            "books/12",
        ];
        let mut checked = 0;
        for (kind, raw) in patterns {
            let m = TopicMatcher::new(kind, raw, &b).unwrap();
            for topic in topics {
                if !m.matches(topic) {
                    continue;
                }
                checked += 1;
                if let Some(key) = m.index_key() {
                    let keys = topic_keys(topic, m.url_base());
                    assert!(
                        keys.contains(&key),
                        "{raw} selects {topic}: {key} not in {keys:?}"
                    );
                }
            }
        }
        let channel = TopicMatcher::channel_pattern("rooms:eu/*").unwrap();
        assert!(channel.matches("rooms:eu/paris"));
        let keys = topic_keys("rooms:eu/paris", None);
        assert!(keys.contains(&channel.index_key().unwrap()));
        assert!(checked >= 15, "too few matches to mean anything: {checked}");
    }

    #[test]
    fn refuses_bad_values() {
        assert!(matches!(
            TopicMatcher::new(MatcherType::Urlpattern, "https://e.com/(", &base()),
            Err(MatcherError::UrlPattern(..))
        ));
        assert!(matches!(
            TopicMatcher::new(MatcherType::Exact, "a\nb", &base()),
            Err(MatcherError::Chars(_))
        ));
    }
}
