//! Topic selectors: a matcher of any kind built from untrusted text, then
//! matched against an untrusted topic; Centrifugo wildcard channel patterns.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tidings::protocol::mercure::matcher::{MatcherType, TopicMatcher};
use tidings::protocol::mercure::uri_template;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    kind: u8,
    selector: &'a str,
    topic: &'a str,
}

fuzz_target!(|input: Input<'_>| {
    let base = url::Url::parse("https://hub.example/.well-known/mercure").unwrap();
    let kind = match input.kind % 3 {
        0 => MatcherType::Exact,
        1 => MatcherType::Legacy,
        _ => MatcherType::Urlpattern,
    };
    if let Ok(m) = TopicMatcher::new(kind, input.selector, &base) {
        let _ = m.matches(input.topic);
        let _ = m.matches_any([input.topic, input.selector].into_iter());
    }
    if let Ok(re) = uri_template::compile(input.selector) {
        let _ = re.is_match(input.topic);
    }
    if let Ok(m) = TopicMatcher::channel_pattern(input.selector) {
        let _ = m.matches(input.topic);
    }
});
