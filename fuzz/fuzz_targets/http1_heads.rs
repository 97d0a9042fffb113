//! The heads of the lean HTTP/1.1 path: any bytes at the start of a
//! connection are classified without panicking; a request taken as
//! long-lived is a bodiless GET whose head fits the input; and a response
//! head written with its header fields parses back (httparse) to the same
//! status and fields, one per line, with the framing the path chose.
//!
//! Inputs are either raw bytes or a request assembled from arbitrary parts
//! around what the path looks for (so the fuzzer reaches the long-lived
//! case at once).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tidings::protocol::http1::{first_request, response_head, FirstRequest, Framing};

#[derive(Arbitrary, Debug)]
struct Input {
    raw: Option<Vec<u8>>,
    path: Vec<u8>,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    websocket: bool,
    tail: Vec<u8>,
    status: u16,
}

fuzz_target!(|input: Input| {
    let bytes = match &input.raw {
        Some(raw) => raw.clone(),
        None => {
            let mut b = b"GET /".to_vec();
            b.extend_from_slice(&input.path);
            b.extend_from_slice(b" HTTP/1.1\r\n");
            for (name, value) in &input.fields {
                b.extend_from_slice(name);
                b.extend_from_slice(b": ");
                b.extend_from_slice(value);
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(if input.websocket {
                b"Upgrade: websocket\r\n\r\n"
            } else {
                b"Accept: text/event-stream\r\n\r\n"
            });
            b.extend_from_slice(&input.tail);
            b
        }
    };
    let FirstRequest::LongLived(req, len) = first_request(&bytes) else {
        return;
    };
    assert!(len <= bytes.len());
    assert_eq!(req.method(), http::Method::GET);
    assert!(req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .is_none_or(|v| v == "0"));
    assert!(!req.headers().contains_key(http::header::TRANSFER_ENCODING));

    // Echo the request's fields in a response: whatever they hold, the
    // head must parse back field for field.
    let status = http::StatusCode::from_u16(100 + input.status % 500).unwrap_or(http::StatusCode::OK);
    let mut res = http::Response::new(());
    *res.status_mut() = status;
    for (name, value) in req.headers() {
        let framing = [http::header::CONTENT_LENGTH, http::header::TRANSFER_ENCODING, http::header::DATE];
        if !framing.contains(name) {
            res.headers_mut().append(name, value.clone());
        }
    }
    let (parts, ()) = res.into_parts();
    let head = response_head(&parts, Framing::Chunked);
    let mut fields = vec![httparse::EMPTY_HEADER; parts.headers.len() + 4];
    let mut parsed = httparse::Response::new(&mut fields);
    assert_eq!(parsed.parse(&head).map(|s| s.is_complete()), Ok(true));
    assert_eq!(parsed.code, Some(status.as_u16()));
    let got: Vec<(String, Vec<u8>)> = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    for (name, value) in &parts.headers {
        assert!(
            got.iter().any(|(n, v)| n == name.as_str() && v == value.as_bytes()),
            "{name} lost"
        );
    }
    assert!(got.iter().any(|(n, v)| n == "transfer-encoding" && v == b"chunked"));
    assert_eq!(got.len(), parts.headers.len() + 2, "one line per field, plus date and framing");
});
