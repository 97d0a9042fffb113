//! Bad input: every malformed or unauthorized request gets a clear error in
//! the protocol's form, and none of them affects other subscribers.

mod common;

use std::time::Duration;

use common::ws::{deflate_message, raw_dial, ws_frame};
use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn challenge(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_bad_request_is_refused_and_no_subscriber_is_affected() {
    let hub = Hub::start(&[("mercure.max_body", "10000")]);
    // A bystander that must receive every good publication, in order.
    let mut bystander = open(&hub, "match=good", &[]).await;
    let mut sent = Vec::new();
    let publisher = publisher(&hub);
    let narrow = token(&hub, &["publish"], &["allowed"]);
    let expired = tidings::auth::jwt::mint(
        &claims(&hub, json!([detail(&["publish"], &["*"])]), -60),
        KEY,
        jsonwebtoken::Algorithm::HS256,
        true,
    )
    .unwrap();
    let wrong_key = tidings::auth::jwt::mint(
        &claims(&hub, json!([detail(&["publish"], &["*"])]), 60),
        "not-the-key",
        jsonwebtoken::Algorithm::HS256,
        true,
    )
    .unwrap();

    // (token, body, status, challenge error) for publish requests.
    let cases: Vec<(Option<&str>, String, u16, Option<&str>)> = vec![
        (None, "topic=good&data=x".into(), 401, None),
        (
            Some("garbage"),
            "topic=good&data=x".into(),
            401,
            Some("invalid_token"),
        ),
        (
            Some(&expired),
            "topic=good&data=x".into(),
            401,
            Some("invalid_token"),
        ),
        (
            Some(&wrong_key),
            "topic=good&data=x".into(),
            401,
            Some("invalid_token"),
        ),
        (
            Some(&narrow),
            "topic=not-allowed&data=x".into(),
            403,
            Some("insufficient_scope"),
        ),
        (
            Some(&narrow),
            "topic=allowed&topic=not-allowed&data=x".into(),
            403,
            Some("insufficient_scope"),
        ),
        (Some(&publisher), "data=no-topic".into(), 400, None),
        (Some(&publisher), "topic=%2A&data=x".into(), 400, None),
        (
            Some(&publisher),
            format!("topic={}", enc("/.well-known/mercure/subscriptions/x")),
            400,
            None,
        ),
        (Some(&publisher), "topic=good&id=%23frag".into(), 400, None),
        (Some(&publisher), "topic=good&id=earliest".into(), 400, None),
        (
            Some(&publisher),
            "topic=good&id=a%0Aevent%3A%20forged".into(),
            400,
            None,
        ),
        (
            Some(&publisher),
            "topic=good&type=mercure".into(),
            400,
            None,
        ),
        (Some(&publisher), "topic=good&type=a%0Db".into(), 400, None),
        (Some(&publisher), "topic=good&retry=soon".into(), 400, None),
        (Some(&publisher), "topic=good%FF&data=x".into(), 400, None),
        (
            Some(&publisher),
            format!("topic=good&data={}", "x".repeat(20_000)),
            413,
            None,
        ),
        (
            Some(&publisher),
            (0..101)
                .map(|i| format!("topic=t{i}"))
                .collect::<Vec<_>>()
                .join("&"),
            413,
            None,
        ),
    ];
    for (i, (token, body, status, error)) in cases.iter().enumerate() {
        let (got, headers, text) = post(&hub, *token, body).await;
        assert_eq!(got, *status, "case {i}: {body:.60} → {text}");
        assert!(!text.trim().is_empty(), "case {i}: no message");
        if *status == 401 || *status == 403 {
            let c = challenge(&headers);
            assert!(c.starts_with("Bearer"), "case {i}: no Bearer challenge");
            assert!(c.contains("resource_metadata="), "case {i}: {c}");
            match error {
                Some(e) => assert!(c.contains(&format!("error=\"{e}\"")), "case {i}: {c}"),
                None => assert!(!c.contains("error="), "case {i}: {c}"),
            }
        }
        // A good publication between every bad request.
        sent.push(publish(&hub, "good", &format!("after case {i}")).await);
    }

    // A malformed Authorization header is an invalid_request.
    let res = reqwest::Client::new()
        .post(hub.hub_url())
        .header("authorization", "Basic dXNlcjpwYXNz")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("topic=good")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(challenge(res.headers()).contains("error=\"invalid_request\""));
    // The wrong media type.
    let res = reqwest::Client::new()
        .post(hub.hub_url())
        .bearer_auth(&publisher)
        .header("content-type", "application/json")
        .body("{\"topic\":\"good\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);

    // Bad subscribe requests.
    for (query, status) in [
        ("", 400),
        ("foo=bar", 400),
        ("match_regex=.*", 400),
        ("MATCH=a", 400),
        ("matchx=a", 400),
        ("match_urlpattern=https%3A%2F%2Fe.com%2F(", 400),
        ("match=a%00b", 400),
        ("match=a%E2%80%8Bb", 400),
        ("match=%FF", 400),
        ("topic=https%3A%2F%2Fe.com%2F%7Bid", 400),
        // A parameter name with a character across byte 5 (fuzzing found a
        // panic there).
        ("%20%20%20c%D9%80=x", 400),
    ] {
        let s = open(&hub, query, &[]).await;
        assert_eq!(s.status, status, "subscribe {query:?}");
        sent.push(publish(&hub, "good", &format!("after subscribe {query}")).await);
    }
    let huge: Vec<String> = (0..101).map(|i| format!("match=t{i}")).collect();
    assert_eq!(open(&hub, &huge.join("&"), &[]).await.status, 400);
    let long = format!("match={}", "a".repeat(3000));
    assert_eq!(open(&hub, &long, &[]).await.status, 400);
    let s = open(&hub, "match=a", &[("authorization", "Bearer nope")]).await;
    assert_eq!(s.status, 401);
    assert!(challenge(&s.headers).contains("invalid_token"));

    // A token whose authorization details are malformed is invalid as a whole.
    let bad_details = tidings::auth::jwt::mint(
        &claims(&hub, json!([detail(&["subscribe"], &["*"]), {"type": "https://mercure.rocks/authorization-detail", "actions": ["subscribe"], "topics": [{"match": "x", "match_type": "nope"}]}]), 60),
        KEY,
        jsonwebtoken::Algorithm::HS256,
        true,
    )
    .unwrap();
    let auth = format!("Bearer {bad_details}");
    assert_eq!(
        open(&hub, "match=a", &[("authorization", &auth)])
            .await
            .status,
        401
    );

    // The bystander saw every good publication, once, in order.
    for id in &sent {
        let e = bystander.next().await;
        assert_eq!(e.id.as_ref(), Some(id));
    }
    assert!(bystander
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
}

#[tokio::test]
async fn publishing_with_a_cookie_requires_a_matching_origin() {
    let hub = Hub::start(&[("mercure.cors_origins", "https://app.example")]);
    let cookie = format!("__Secure-mercure_access_token={}", publisher(&hub));
    let send = |origin: Option<&'static str>| {
        let mut req = reqwest::Client::new()
            .post(hub.hub_url())
            .header("cookie", cookie.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body("topic=c&data=x");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send(None).await, 403, "no Origin or Referer");
    assert_eq!(send(Some("https://evil.example")).await, 403);
    assert_eq!(send(Some("https://app.example")).await, 200);
}

/// A WebSocket handshake on a raw TCP connection, so that the frames after
/// it can be anything a broken or hostile client sends.
async fn raw_websocket(hub: &Hub) -> tokio::net::TcpStream {
    raw_dial(&hub.addr, None).await.0
}

/// The close code the server sends (None: the connection ended without a
/// close frame), within 5 s.
async fn server_close_code(tcp: &mut tokio::net::TcpStream) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Server frames are unmasked: [fin+op][len][payload...] (short ones).
        while buf.len() >= 2 {
            let op = buf[0] & 0x0f;
            let len = (buf[1] & 0x7f) as usize;
            let (start, len) = match len {
                126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                126 => break,
                127 => panic!("unexpected huge server frame"),
                n => (2, n),
            };
            if buf.len() < start + len {
                break;
            }
            if op == 0x8 {
                return (len >= 2).then(|| u16::from_be_bytes([buf[start], buf[start + 1]]));
            }
            buf.drain(..start + len);
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("the server neither closed nor answered"),
        }
    }
}

/// Hostile WebSocket frames, handshakes and tokens while publications flow:
/// each gets its close code or HTTP error, and the bystanders on both
/// protocols receive every publication, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_and_tokens_lose_no_publication() {
    use tokio::io::AsyncWriteExt;
    const SECRET: &str = "bad-input-secret";
    const N: usize = 150;
    let hub = centrifugo_hub(
        SECRET,
        "bad-input-api-key",
        &[("centrifugo.websocket_compression", "true")],
    );
    let mut sse = open(&hub, "match=steady", &[]).await;
    let mut ws = {
        let token = tidings::auth::jwt::mint(
            &json!({"sub": "bystander"}),
            SECRET,
            jsonwebtoken::Algorithm::HS256,
            false,
        )
        .unwrap();
        let (mut ws, _) = tokio_tungstenite::connect_async(
            hub.url("/connection/websocket").replace("http", "ws"),
        )
        .await
        .unwrap();
        use futures::SinkExt;
        let frame = [
            json!({"id": 1, "connect": {"token": token}}),
            json!({"id": 2, "subscribe": {"channel": "steady"}}),
        ]
        .map(|v| v.to_string())
        .join("\n");
        ws.send(tokio_tungstenite::tungstenite::Message::text(frame))
            .await
            .unwrap();
        // Subscribed before anything is published.
        use futures::StreamExt;
        let mut subscribed = false;
        while !subscribed {
            let msg = ws.next().await.unwrap().unwrap();
            subscribed = msg.to_text().unwrap_or_default().lines().any(|l| {
                serde_json::from_str::<Value>(l)
                    .is_ok_and(|v| v["id"] == 2 && v["subscribe"].is_object())
            });
        }
        ws
    };
    // Publications flow throughout.
    let publishing = {
        let (url, token) = (hub.hub_url(), publisher(&hub));
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..N {
                let res = client
                    .post(&url)
                    .bearer_auth(&token)
                    .form(&[("topic", "steady"), ("data", &format!("p{i}"))])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // Frames a conforming server must refuse (RFC 6455 §5), with the code.
    let text = |first: u8| ws_frame(first, b"{}", true);
    let frames: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        (
            "reserved bit RSV1 without an extension",
            text(0x80 | 0x40 | 0x1),
            Some(1002),
        ),
        (
            "reserved bits RSV2+RSV3",
            text(0x80 | 0x30 | 0x1),
            Some(1002),
        ),
        ("unknown data opcode 0x3", text(0x80 | 0x3), Some(1002)),
        ("unknown control opcode 0xB", text(0x80 | 0xB), Some(1002)),
        (
            "fragmented ping (FIN=0)",
            ws_frame(0x9, b"p", true),
            Some(1002),
        ),
        (
            "control frame over 125 bytes",
            ws_frame(0x89, &[b'p'; 126], true),
            Some(1002),
        ),
        (
            "unmasked client frame",
            ws_frame(0x81, b"{}", false),
            Some(1002),
        ),
        (
            "continuation without a start",
            ws_frame(0x80, b"{}", true),
            Some(1002),
        ),
        (
            "invalid UTF-8 in a text frame",
            ws_frame(0x81, &[0xc3, 0x28], true),
            Some(1007),
        ),
        (
            "text frame split inside a UTF-8 sequence, then invalid",
            {
                let mut f = ws_frame(0x01, &[0xe2, 0x82], true);
                f.extend(ws_frame(0x80, &[0x28], true));
                f
            },
            Some(1007),
        ),
    ];
    for (what, bytes, expected) in frames {
        let mut tcp = raw_websocket(&hub).await;
        tcp.write_all(&bytes).await.unwrap();
        assert_eq!(server_close_code(&mut tcp).await, expected, "{what}");
    }
    // With permessage-deflate agreed: RFC 7692's rules and limits.
    let zipped = |data: &[u8]| ws_frame(0xc1, &deflate_message(data), true);
    let deflate_frames: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "RSV1 on a ping",
            ws_frame(0x80 | 0x40 | 0x9, b"p", true),
            1002,
        ),
        (
            "RSV1 on a continuation frame",
            {
                let mut f = ws_frame(0x01, b"{", true);
                f.extend(ws_frame(0x80 | 0x40, b"}", true));
                f
            },
            1002,
        ),
        (
            "invalid compressed data",
            ws_frame(0xc1, &[0xff; 32], true),
            1007,
        ),
        (
            "a deflate bomb (past centrifugo.max_frame once inflated)",
            zipped(&vec![b'{'; 1 << 20]),
            1009,
        ),
        (
            "an unmasked compressed frame",
            {
                let mut f = zipped(b"{}");
                f[1] &= 0x7f;
                f.drain(2..6);
                f
            },
            1002,
        ),
        (
            "compressed text inflating to invalid UTF-8",
            zipped(&[0xc3, 0x28]),
            1007,
        ),
    ];
    for (what, bytes, expected) in deflate_frames {
        let (mut tcp, head) = raw_dial(&hub.addr, Some("permessage-deflate")).await;
        assert!(head.contains("permessage-deflate"), "{what}: not agreed");
        tcp.write_all(&bytes).await.unwrap();
        assert_eq!(server_close_code(&mut tcp).await, Some(expected), "{what}");
    }
    // A frame announcing 2^62 bytes: refused before anything is buffered.
    let mut tcp = raw_websocket(&hub).await;
    let mut huge = vec![0x81, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    tcp.write_all(&huge).await.unwrap();
    assert_eq!(server_close_code(&mut tcp).await, Some(1009), "huge length");
    // A truncated frame, then the client goes away: the session just ends.
    let mut tcp = raw_websocket(&hub).await;
    let mut cut = ws_frame(0x81, &[b'x'; 1000], true);
    cut.truncate(40);
    tcp.write_all(&cut).await.unwrap();
    tcp.shutdown().await.unwrap();
    assert!(server_close_code(&mut tcp).await.is_none_or(|c| c == 1002));
    // Not a handshake at all.
    let mut tcp = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
    tcp.write_all(b"\x16\x03\x01\x00\x05hello\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    use tokio::io::AsyncReadExt;
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer)).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // A cross-origin handshake (CSWSH) is refused with 403.
    let mut req = hub
        .url("/connection/websocket")
        .replace("http", "ws")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("cross-origin handshake: {:?}", other.map(|_| ())),
    }

    // Tokens: `alg: none`, the wrong key, expired, not yet valid.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let unsigned = {
        use base64::Engine;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": "mallory"}))
        )
    };
    let signed = |claims: Value, key: &str| {
        tidings::auth::jwt::mint(&claims, key, jsonwebtoken::Algorithm::HS256, false).unwrap()
    };
    let centrifugo_tokens = [
        ("alg none", unsigned.clone(), 3500),
        (
            "wrong key",
            signed(json!({"sub": "m"}), "not-the-secret"),
            3500,
        ),
        (
            "not yet valid",
            signed(json!({"sub": "m", "nbf": now + 600}), SECRET),
            3500,
        ),
    ];
    for (what, token, code) in centrifugo_tokens {
        let mut tcp = raw_websocket(&hub).await;
        let connect = json!({"id": 1, "connect": {"token": token}}).to_string();
        tcp.write_all(&ws_frame(0x81, connect.as_bytes(), true))
            .await
            .unwrap();
        assert_eq!(server_close_code(&mut tcp).await, Some(code), "{what}");
    }
    let mercure_unsigned = {
        use base64::Engine;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let mut c = claims(&hub, json!([detail(&["publish"], &["*"])]), 60);
        c["sub"] = json!("mallory");
        format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "at+jwt"})),
            b64(c)
        )
    };
    let mut early = claims(&hub, json!([detail(&["publish"], &["*"])]), 600);
    early["nbf"] = json!(now + 300);
    let early =
        tidings::auth::jwt::mint(&early, KEY, jsonwebtoken::Algorithm::HS256, true).unwrap();
    for (what, token) in [("alg none", mercure_unsigned), ("not yet valid", early)] {
        let (status, headers, _) = post(&hub, Some(&token), "topic=steady&data=forged").await;
        assert_eq!(status, 401, "{what}");
        assert!(challenge(&headers).contains("invalid_token"), "{what}");
    }

    // Every publication reached both bystanders, once, in order.
    publishing.await.unwrap();
    for i in 0..N {
        assert_eq!(sse.next().await.data, format!("p{i}"), "SSE bystander");
    }
    let mut got = Vec::new();
    while got.len() < N {
        use futures::StreamExt;
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("WS bystander starved")
            .unwrap()
            .unwrap();
        for line in msg.to_text().unwrap_or_default().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            if let Some(data) = v["push"]["pub"]["data"].as_str() {
                got.push(data.to_owned());
            }
        }
    }
    let expected: Vec<String> = (0..N).map(|i| format!("p{i}")).collect();
    assert_eq!(got, expected, "WS bystander");
    assert!(
        sse.drain(Duration::from_millis(200)).await.is_empty(),
        "forged publication"
    );
}
