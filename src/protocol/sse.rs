//! Server-Sent Events (`text/event-stream`): events encoded, and parsed
//! back (for the CLI and the tests). Both protocols use it: Mercure for its
//! updates, Centrifugo for its SSE transports (one JSON message per event).
//!
//! `data` is split into one `data:` line per line of the value (on CR, LF or
//! CRLF) so a value containing `\nevent:` can never inject a field. `id` and
//! `event` were validated at publish time and carry no line breaks; the
//! encoder still strips them defensively so that no caller can split an
//! event.

use bytes::{BufMut, Bytes, BytesMut};

/// The fields of one SSE event.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The `id:` field (Mercure event id).
    pub id: &'a str,
    /// The `event:` field, when the update has a type.
    pub event_type: Option<&'a str>,
    /// The `retry:` field, in milliseconds.
    pub retry: Option<u64>,
    /// The payload, split into `data:` lines.
    pub data: &'a str,
}

/// Encodes one event, including its terminating blank line.
pub fn encode(event: &Event<'_>) -> Bytes {
    let mut out = BytesMut::with_capacity(event.data.len() + event.id.len() + 32);
    put_field(&mut out, "id", event.id);
    if let Some(t) = event.event_type {
        put_field(&mut out, "event", t);
    }
    if let Some(r) = event.retry {
        put_field(&mut out, "retry", &r.to_string());
    }
    // Data lines hold no CR or LF once split; anything else (NUL included)
    // is the payload and goes through untouched.
    for line in split_lines(event.data) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// Opens an event whose data is one line the caller writes next (JSON text
/// never holds a raw line break): the `id:` field if any, then `data: `.
/// [`close_single_line`] ends it.
pub fn open_single_line(out: &mut BytesMut, id: Option<&str>) {
    if let Some(id) = id {
        put_field(out, "id", id);
    }
    out.put_slice(b"data: ");
}

/// Ends an event opened by [`open_single_line`].
pub fn close_single_line(out: &mut BytesMut) {
    out.put_slice(b"\n\n");
}

/// A comment line: a heartbeat, or a reason before the stream ends.
pub fn comment(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 3);
    out.put_u8(b':');
    if !text.is_empty() {
        out.put_u8(b' ');
        out.put_slice(single_line(text).as_bytes());
    }
    out.put_slice(b"\n\n");
    out.freeze()
}

/// A stand-alone `retry:` field setting the client's reconnection delay.
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

fn put_field(out: &mut BytesMut, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(single_line(value).as_bytes());
    out.put_u8(b'\n');
}

fn single_line(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\r', '\n', '\0']) {
        value.replace(['\r', '\n', '\0'], " ").into()
    } else {
        value.into()
    }
}

/// Splits on CRLF, CR or LF; an empty value is one empty line so that the
/// event still carries a `data` field and `EventSource` dispatches it.
fn split_lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

/// Parses an event stream back into `(id, event, data)` triples; used by the
/// CLI subscriber and by tests to check that encoding round-trips.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

/// One event decoded by [`Parser`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEvent {
    /// Last `id:` seen (sticky, as in `EventSource`).
    pub id: Option<String>,
    /// `event:` field, if any.
    pub event: Option<String>,
    /// Joined `data:` lines.
    pub data: String,
}

impl Parser {
    /// Feeds bytes; returns the events completed by them.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<ParsedEvent> {
        let mut events = Vec::new();
        // Only the new bytes can hold a line break we have not seen yet.
        let mut scan = self.buf.len();
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(rel) = self.buf[scan..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
        {
            let pos = scan + rel;
            // A CR at the very end may be the first half of CRLF.
            if self.buf[pos] == b'\r' && pos + 1 == self.buf.len() {
                break;
            }
            let skip = if self.buf[pos] == b'\r' && self.buf.get(pos + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            let line = String::from_utf8_lossy(&self.buf[start..pos]).into_owned();
            start = pos + skip;
            scan = start;
            self.line(line, &mut events);
        }
        self.buf.drain(..start);
        events
    }

    fn line(&mut self, line: String, events: &mut Vec<ParsedEvent>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                events.push(ParsedEvent {
                    id: self.id.clone(),
                    event: self.event.take(),
                    data,
                });
            }
            self.event = None;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (name, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line.as_str(), ""),
        };
        match name {
            "id" => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_multiline_data_as_several_fields() {
        let bytes = encode(&Event {
            id: "urn:uuid:1",
            event_type: Some("update"),
            retry: Some(1000),
            data: "a\nb\r\nc\rd",
        });
        assert_eq!(
            &bytes[..],
            b"id: urn:uuid:1\nevent: update\nretry: 1000\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn data_cannot_inject_fields() {
        let bytes = encode(&Event {
            id: "1",
            event_type: None,
            retry: None,
            data: "x\nevent: forged\nid: 666\n\ndata: y",
        });
        let events = Parser::default().feed(&bytes);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, None);
        assert_eq!(events[0].id.as_deref(), Some("1"));
        assert_eq!(events[0].data, "x\nevent: forged\nid: 666\n\ndata: y");
    }

    #[test]
    fn id_and_type_never_split_an_event() {
        let bytes = encode(&Event {
            id: "1\n\ndata: evil",
            event_type: Some("t\r\nid: 2"),
            retry: None,
            data: "ok",
        });
        let events = Parser::default().feed(&bytes);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "ok");
    }

    #[test]
    fn empty_data_still_dispatches() {
        let bytes = encode(&Event {
            id: "1",
            event_type: None,
            retry: None,
            data: "",
        });
        assert_eq!(&bytes[..], b"id: 1\ndata: \n\n");
        assert_eq!(Parser::default().feed(&bytes)[0].data, "");
    }

    #[test]
    fn parser_handles_split_chunks_and_comments() {
        let mut p = Parser::default();
        assert!(p.feed(b":\n\nid: 7\nda").is_empty());
        let ev = p.feed(b"ta: hello\r\n\r\n");
        assert_eq!(ev[0].data, "hello");
        assert_eq!(ev[0].id.as_deref(), Some("7"));
    }
}
