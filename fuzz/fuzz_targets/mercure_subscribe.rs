//! A subscribe request: query string and body (split at the first NUL),
//! each form-decoded, then matchers (exact, URI template, URL pattern).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::protocol::mercure::{form, request};

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let (query, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let hub = url::Url::parse("https://hub.example/.well-known/mercure").unwrap();
    let (Ok(query), Ok(body)) = (form::parse(query), form::parse(body)) else {
        return;
    };
    let limits = request::Limits::default();
    if let Ok(req) = request::parse_subscribe(query, body, &hub, flags & 1 == 1, &limits) {
        assert!(req.matchers.len() <= limits.max_matchers);
        for m in &req.matchers {
            let _ = m.matches("https://example.com/books/1");
        }
    }
});
