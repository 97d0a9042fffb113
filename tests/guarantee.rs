//! The delivery guarantee, one hole at a time: each test here reproduces a
//! way a client could miss publications (or be told it missed nothing when
//! it did) and checks it no longer can. Every one of them failed on the
//! code it was written against; see docs/security.md.

mod common;

use std::time::Duration;

use common::ws::{self, conn_token, ws_frame, API_KEY};
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SHORT: Duration = Duration::from_millis(600);

fn datas(events: Vec<tidings::protocol::sse::ParsedEvent>) -> Vec<String> {
    events.into_iter().map(|e| e.data).collect()
}

/// Publishes `id` on `topic` (Mercure, with the publisher's own id).
async fn publish_id(hub: &Hub, topic: &str, id: &str, data: &str) {
    let body = format!("topic={}&id={}&data={}", enc(topic), enc(id), enc(data));
    let (status, _, got) = post(hub, Some(&publisher(hub)), &body).await;
    assert_eq!((status, got.as_str()), (200, id));
}

/// Replay after a restart, asked before anything else is published: the
/// hub must know the history it stored before it stopped.
#[tokio::test]
async fn replay_right_after_a_restart_sends_what_was_stored() {
    let mut hub = ws::start(&[("demo", "false"), ("mercure.subscriptions", "false")]);
    for i in 1..=5 {
        publish_id(&hub, "t", &format!("urn:m{i}"), &format!("m{i}")).await;
    }
    hub.restart();
    let mut s = open(&hub, "topic=t&lastEventID=urn:m2", &[]).await;
    assert_eq!(s.headers["mercure-last-event-id"], "urn:m2");
    assert_eq!(datas(s.drain(SHORT).await), ["m3", "m4", "m5"]);
    let mut s = open(&hub, "topic=t&lastEventID=earliest", &[]).await;
    assert_eq!(datas(s.drain(SHORT).await), ["m1", "m2", "m3", "m4", "m5"]);
    // The Centrifugo side reads the same history.
    let (_, reply) = ws::api(&hub, "history", json!({"channel": "t", "limit": -1})).await;
    assert_eq!(
        reply["result"]["publications"].as_array().map(Vec::len),
        Some(5),
        "{reply}"
    );
}

/// A cursor that is still stored, on a topic whose later events were
/// trimmed: the hub must not claim it resumed from it.
#[tokio::test]
async fn a_cursor_followed_by_trimmed_events_is_not_claimed() {
    let hub = Hub::start(&[("history.size", "10")]);
    publish_id(&hub, "A", "urn:x", "x").await;
    for i in 1..=15 {
        publish(&hub, "B", &format!("b{i}")).await;
    }
    // B's first five are gone: resuming after x would skip them.
    let mut s = open(&hub, "match=B&last_event_id=urn:x", &[]).await;
    assert_eq!(s.headers["mercure-last-event-id"], "earliest");
    assert_eq!(datas(s.drain(SHORT).await), Vec::<String>::new());
    // A subscriber of A alone lost nothing: x is honoured for it.
    publish(&hub, "A", "a2").await;
    let mut s = open(&hub, "match=A&last_event_id=urn:x", &[]).await;
    assert_eq!(s.headers["mercure-last-event-id"], "urn:x");
    assert_eq!(datas(s.drain(SHORT).await), ["a2"]);
    // Through a pattern the same holds: it selects B too.
    let mut s = open(&hub, "match_urlpattern=*&last_event_id=urn:x", &[]).await;
    assert_eq!(s.headers["mercure-last-event-id"], "earliest");
    assert_eq!(datas(s.drain(SHORT).await), Vec::<String>::new());
    // A cursor after the trimmed ones is fine.
    let mut s = open(&hub, "match=B&last_event_id=earliest", &[]).await;
    let all = s.drain(SHORT).await;
    let sixth = all[0].id.clone().unwrap();
    assert_eq!(all.len(), 10);
    let mut s = open(&hub, &format!("match=B&last_event_id={}", enc(&sixth)), &[]).await;
    assert_eq!(s.headers["mercure-last-event-id"], sixth.as_str());
    assert_eq!(s.drain(SHORT).await.len(), 9);
}

/// A Mercure subscriber's matching does not depend on a WebSocket client's
/// channel pattern that happens to be spelled the same way, whichever
/// subscribed first.
#[tokio::test]
async fn same_spelled_patterns_keep_each_protocols_meaning() {
    for ws_first in [true, false] {
        let hub = ws::start(&[("centrifugo.channel.wildcards", "true")]);
        let mut client = None;
        let mut sse = None;
        for turn in [ws_first, !ws_first] {
            if turn {
                let mut c = ws::connected(&hub, "u").await;
                ws::send(&mut c, r#"{"id":2,"subscribe":{"channel":"*"}}"#).await;
                let r = ws::recv(&mut c).await;
                assert!(r[0]["subscribe"].is_object(), "{r:?}");
                client = Some(c);
            } else {
                sse = Some(open(&hub, "match_urlpattern=*", &[]).await);
            }
        }
        let (mut client, mut sse) = (client.unwrap(), sse.unwrap());
        publish(&hub, "https://example.com/a", "url").await;
        publish(&hub, "plain", "plain").await;
        let got = datas(sse.drain(SHORT).await);
        assert_eq!(got, ["url", "plain"], "ws subscribed first: {ws_first}");
        // The channel pattern `*` covers channels without a namespace only.
        let r = ws::recv(&mut client).await;
        assert_eq!(r[0]["push"]["pub"]["data"], json!("plain"), "{r:?}");
    }
}

/// The number of open connections of `transport`, from `/metrics`.
async fn open_connections(hub: &Hub, transport: &str) -> f64 {
    let text = reqwest::get(hub.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = format!("transport=\"{transport}\"");
    text.lines()
        .filter(|l| l.starts_with("tidings_connections{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A TCP connection that reads nothing after the head of the answer, with
/// a receive buffer as small as the kernel allows.
async fn stalled_connection(hub: &Hub, request: Vec<u8>) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(hub.addr.parse().unwrap()).await.unwrap();
    tcp.write_all(&request).await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "answer cut");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 101") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    tcp
}

/// The requests of a client of each transport subscribed to `chan`.
fn stalled_request(transport: &str, chan: &str) -> Vec<u8> {
    let token = tidings::auth::jwt::mint(
        &json!({"sub": "stalled", "channels": [chan]}),
        ws::SECRET,
        jsonwebtoken::Algorithm::HS256,
        false,
    )
    .unwrap();
    let connect = json!({"id": 1, "connect": {"token": token}}).to_string();
    let uni = json!({"token": token}).to_string();
    let get = |path: &str, query: &str| {
        format!("GET {path}?{query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .into_bytes()
    };
    let post = |path: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let ws_upgrade = |path: &str, first: &str| {
        let mut r = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes();
        r.extend(ws_frame(0x81, first.as_bytes(), true));
        r
    };
    match transport {
        "sse" => get("/.well-known/mercure", &format!("match={chan}")),
        "websocket" => ws_upgrade("/connection/websocket", &connect),
        "uni_websocket" => ws_upgrade("/connection/uni_websocket", &uni),
        "http_stream" => post("/connection/http_stream", &connect),
        "uni_http_stream" => post("/connection/uni_http_stream", &uni),
        "emulated_sse" => get("/connection/sse", &format!("cf_connect={}", enc(&connect))),
        "uni_sse" => get("/connection/uni_sse", &format!("cf_connect={}", enc(&uni))),
        other => panic!("no transport {other}"),
    }
}

/// A client that stops reading is disconnected within a bounded time on
/// every transport, while a bystander on the same channel gets every
/// publication. The stalled socket is not read until the hub has let it go.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_on_every_transport() {
    const N: usize = 3000;
    let hub = ws::start(&[("history.engine", "memory"), ("limits.write_timeout", "3s")]);
    let transports = [
        ("sse", "sse"),
        ("websocket", "websocket"),
        ("uni_websocket", "uni_websocket"),
        ("http_stream", "http_stream"),
        ("uni_http_stream", "uni_http_stream"),
        ("emulated_sse", "sse"),
        ("uni_sse", "uni_sse"),
    ];
    let mut stalled = Vec::new();
    for (client, _) in transports {
        stalled.push(stalled_connection(&hub, stalled_request(client, "firehose")).await);
    }
    // Everyone is subscribed once the hub counts them.
    let mut bystander = ws::connected(&hub, "bystander").await;
    ws::send(
        &mut bystander,
        r#"{"id":2,"subscribe":{"channel":"firehose"}}"#,
    )
    .await;
    assert!(ws::recv(&mut bystander).await[0]["subscribe"].is_object());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 3000 × 2 KB: far more than the stalled sockets can buffer, far less
    // than the hub's queue bounds (4096 publications, 16 MB): only a write
    // deadline can end them.
    let data = "y".repeat(2000);
    let publisher = async {
        let client = reqwest::Client::new();
        for batch in 0..N / 100 {
            let commands: Vec<Value> = (0..100)
                .map(|i| json!({"publish": {"channel": "firehose", "data": {"n": batch * 100 + i, "pad": data}}}))
                .collect();
            let res = client
                .post(hub.url("/api/batch"))
                .header("x-api-key", API_KEY)
                .json(&json!({"commands": commands}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
        }
    };
    let reader = async {
        let mut next = 0;
        while next < N {
            for m in ws::recv(&mut bystander).await {
                let n = m["push"]["pub"]["data"]["n"].as_u64().unwrap() as usize;
                assert_eq!(n, next, "the bystander lost or reordered one");
                next += 1;
            }
        }
    };
    tokio::join!(publisher, reader);

    let started = tokio::time::Instant::now();
    for (_, transport) in transports {
        loop {
            let left = open_connections(&hub, transport).await;
            let bystanders = if transport == "websocket" { 1.0 } else { 0.0 };
            if left <= bystanders {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{transport}: {left} connections still open 15 s after the burst"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // The sockets were really closed: what is left in them ends.
    for ((client, _), mut tcp) in transports.into_iter().zip(stalled) {
        let mut sink = vec![0u8; 1 << 16];
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match tcp.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "{client}: the stalled socket was never closed");
    }
    // The bystander is still served.
    let (status, _) = ws::api(
        &hub,
        "publish",
        json!({"channel": "firehose", "data": {"n": N}}),
    )
    .await;
    assert_eq!(status, 200);
    let m = ws::recv(&mut bystander).await;
    assert_eq!(m[0]["push"]["pub"]["data"]["n"], json!(N));
    let _ = conn_token;
}

/// A channel whose history began again (a new epoch) while a client was
/// subscribed: the new publications restart at offset 1, and must not be
/// taken for ones the client already has.
#[tokio::test]
async fn a_new_epoch_under_a_live_subscription_is_not_swallowed() {
    let hub = ws::start(&[
        ("history.ttl", "1s"),
        ("history.meta_ttl", "1s"),
        ("history.sweep_interval", "200ms"),
    ]);
    let mut client = ws::connected(&hub, "u").await;
    ws::send(
        &mut client,
        r#"{"id":2,"subscribe":{"channel":"e","recover":true}}"#,
    )
    .await;
    let reply = ws::recv(&mut client).await;
    let epoch = reply[0]["subscribe"]["epoch"].as_str().unwrap().to_owned();
    for i in 1..=3 {
        let (status, _) = ws::api(&hub, "publish", json!({"channel": "e", "data": i})).await;
        assert_eq!(status, 200);
        let m = ws::recv(&mut client).await;
        assert_eq!(m[0]["push"]["pub"]["offset"], json!(i));
    }
    // The sweep expires the three, then forgets the channel.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, reply) = ws::api(&hub, "publish", json!({"channel": "e", "data": "again"})).await;
    assert_ne!(reply["result"]["epoch"], json!(epoch), "{reply}");
    let m = ws::recv(&mut client).await;
    assert_eq!(m[0]["push"]["unsubscribe"]["code"], json!(2500), "{m:?}");
    // Resubscribing with the old position is told it is not recovered.
    let resubscribe = json!({"id": 3, "subscribe": {"channel": "e", "recover": true, "offset": 3, "epoch": epoch}});
    ws::send(&mut client, &resubscribe.to_string()).await;
    let reply = ws::recv(&mut client).await;
    assert_eq!(
        reply[0]["subscribe"]["was_recovering"],
        json!(true),
        "{reply:?}"
    );
    assert_ne!(reply[0]["subscribe"]["recovered"], json!(true), "{reply:?}");
}
