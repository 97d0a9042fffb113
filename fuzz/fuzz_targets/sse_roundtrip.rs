//! SSE encoding round-trip: whatever id, type and data an event carries,
//! it is read back as exactly one event with the same fields (line breaks
//! in data normalised to LF, none in id or type), however the bytes are cut.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tidings::protocol::sse::{encode, Event, Parser};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    id: &'a str,
    event_type: Option<&'a str>,
    data: &'a str,
    cut: usize,
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n', '\0'], " ")
}

fuzz_target!(|input: Input<'_>| {
    let bytes = encode(&Event {
        id: input.id,
        event_type: input.event_type,
        retry: None,
        data: input.data,
    });
    let cut = input.cut % (bytes.len() + 1);
    let mut parser = Parser::default();
    let mut events = parser.feed(&bytes[..cut]);
    events.extend(parser.feed(&bytes[cut..]));
    assert_eq!(events.len(), 1, "{input:?} → {bytes:?}");
    let e = &events[0];
    let data = input.data.replace("\r\n", "\n").replace('\r', "\n");
    assert_eq!(e.data, data);
    assert_eq!(e.id.as_deref(), Some(one_line(input.id).as_str()));
    let event_type = input.event_type.map(one_line).filter(|t| !t.is_empty());
    assert_eq!(
        e.event.as_deref().filter(|t| !t.is_empty()),
        event_type.as_deref()
    );
});
