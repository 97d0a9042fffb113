//! A publish request body: form decoding, then the Mercure publish rules
//! (topics, id, type, retry, private, reserved namespace, limits).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::protocol::mercure::{form, request};

fuzz_target!(|body: &[u8]| {
    let hub = url::Url::parse("https://hub.example/.well-known/mercure").unwrap();
    if let Ok(pairs) = form::parse(body) {
        if let Ok(update) = request::parse_publish(pairs, &hub, &request::Limits::default()) {
            // What was accepted holds nothing that could split an SSE event.
            for field in update.id.iter().chain(update.event_type.iter()) {
                assert!(!field.contains(['\r', '\n']), "{field:?}");
            }
            assert!(!update.topics.is_empty());
        }
    }
});
