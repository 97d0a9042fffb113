//! Centrifugo connections without a WebSocket: HTTP streaming and SSE with
//! bidirectional emulation (`POST /emulation`), the unidirectional
//! transports, `uni_sse` resuming from `Last-Event-ID`, bad input on all of
//! them, and the `/metrics` counters moving by exactly what a test did.

mod common;

use std::time::Duration;

use bytes::{Buf, Bytes};
use common::*;
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::{json, Value};
use tidings::protocol::centrifuge as proto;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "http-transports-test-secret";
const API_KEY: &str = "http-transports-test-api-key";

fn start(extra: &[(&str, &str)]) -> Hub {
    let mut args = vec![("centrifugo.max_frame", "4096")];
    args.extend_from_slice(extra);
    centrifugo_hub(SECRET, API_KEY, &args)
}

fn conn_token(user: &str, channels: &[&str]) -> String {
    tidings::auth::jwt::mint(
        &json!({"sub": user, "channels": channels}),
        SECRET,
        jsonwebtoken::Algorithm::HS256,
        false,
    )
    .unwrap()
}

async fn api(hub: &Hub, method: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(hub.url(&format!("/api/{method}")))
        .header("x-api-key", API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn publish(hub: &Hub, channel: &str, data: Value) {
    let reply = api(hub, "publish", json!({"channel": channel, "data": data})).await;
    assert!(reply.get("result").is_some(), "{reply}");
}

/// Newline-delimited JSON messages of an HTTP stream.
struct Lines {
    status: u16,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    buf: Vec<u8>,
}

impl Lines {
    fn new(res: reqwest::Response) -> Lines {
        Lines {
            status: res.status().as_u16(),
            body: Some(res.bytes_stream().boxed()),
            buf: Vec::new(),
        }
    }

    /// The next message, or None when the stream ends or `wait` passes.
    async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).expect("a JSON line"));
            }
            let body = self.body.as_mut()?;
            match tokio::time::timeout_at(deadline, body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(_) => {
                    self.body = None;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("no message within 5 s")
    }

    /// True when the stream ended (within a second).
    async fn ended(&mut self) -> bool {
        self.next_within(Duration::from_secs(1)).await.is_none() && self.body.is_none()
    }
}

async fn post_stream(hub: &Hub, path: &str, body: impl Into<reqwest::Body>) -> Lines {
    let res = reqwest::Client::new()
        .post(hub.url(path))
        .body(body)
        .send()
        .await
        .unwrap();
    Lines::new(res)
}

async fn emulate(hub: &Hub, session: &str, node: &str, commands: &str) -> u16 {
    reqwest::Client::new()
        .post(hub.url("/emulation"))
        .json(&json!({"session": session, "node": node, "data": commands}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// An emulated HTTP-streaming connection: (stream, session, node).
async fn connect_http_stream(hub: &Hub, user: &str) -> (Lines, String, String) {
    let connect = json!({"id": 1, "connect": {"token": conn_token(user, &[])}}).to_string();
    let mut lines = post_stream(hub, "/connection/http_stream", connect).await;
    assert_eq!(lines.status, 200);
    let reply = lines.next().await;
    assert_eq!(reply["id"], 1, "{reply}");
    let result = &reply["connect"];
    assert_eq!(result["pong"], true, "{reply}");
    let session = result["session"].as_str().unwrap().to_owned();
    let node = result["node"].as_str().unwrap().to_owned();
    assert!(!session.is_empty() && !node.is_empty(), "{reply}");
    (lines, session, node)
}

#[tokio::test]
async fn http_stream_emulation_subscribes_publishes_and_recovers() {
    let hub = start(&[]);
    let (mut lines, session, node) = connect_http_stream(&hub, "ann").await;
    let subscribe = json!({"id": 2, "subscribe": {"channel": "news"}}).to_string();
    assert_eq!(emulate(&hub, &session, &node, &subscribe).await, 204);
    let reply = lines.next().await;
    assert_eq!(reply["id"], 2, "{reply}");
    let epoch = reply["subscribe"]["epoch"].as_str().unwrap().to_owned();

    publish(&hub, "news", json!({"n": 1})).await;
    let push = lines.next().await;
    assert_eq!(push["push"]["channel"], "news");
    assert_eq!(push["push"]["pub"]["data"], json!({"n": 1}));
    assert_eq!(push["push"]["pub"]["offset"], 1);

    // A client publish and a ping, two commands in one emulation request.
    let commands = format!(
        "{}\n{}",
        json!({"id": 3, "publish": {"channel": "news", "data": {"n": 2}}}),
        json!({"id": 4, "ping": {}})
    );
    assert_eq!(emulate(&hub, &session, &node, &commands).await, 204);
    let mut got = vec![lines.next().await, lines.next().await, lines.next().await];
    got.sort_by_key(|m| m["id"].as_u64().unwrap_or(0));
    assert_eq!(got[0]["push"]["pub"]["data"], json!({"n": 2}), "{got:?}");
    assert_eq!(got[1]["id"], 3);
    assert_eq!(got[2]["id"], 4);
    drop(lines);

    // Missed while away, recovered on a new emulated connection.
    publish(&hub, "news", json!({"n": 3})).await;
    let (mut lines, session2, _) = connect_http_stream(&hub, "ann").await;
    let recover = json!({"id": 2, "subscribe": {"channel": "news", "recover": true, "offset": 2, "epoch": epoch}});
    assert_eq!(
        emulate(&hub, &session2, &node, &recover.to_string()).await,
        204
    );
    let reply = lines.next().await;
    assert_eq!(reply["subscribe"]["recovered"], true, "{reply}");
    let pubs = reply["subscribe"]["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 1, "{reply}");
    assert_eq!(pubs[0]["data"], json!({"n": 3}));

    // The first session has ended: its commands are answered 204 and dropped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(emulate(&hub, &session, &node, &subscribe).await, 204);
}

#[tokio::test]
async fn sse_emulation_and_protobuf_http_stream() {
    let hub = start(&[]);
    // SSE: the connect command travels in the URL.
    let connect = json!({"id": 1, "connect": {"token": conn_token("bob", &[])}}).to_string();
    let res = reqwest::Client::new()
        .get(hub.url(&format!("/connection/sse?cf_connect={}", enc(&connect))))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let mut events = Stream::from_response(res);
    let reply: Value = serde_json::from_str(&events.next().await.data).unwrap();
    let session = reply["connect"]["session"].as_str().unwrap();
    let node = reply["connect"]["node"].as_str().unwrap();
    let subscribe = json!({"id": 2, "subscribe": {"channel": "sse-news"}}).to_string();
    assert_eq!(emulate(&hub, session, node, &subscribe).await, 204);
    let reply: Value = serde_json::from_str(&events.next().await.data).unwrap();
    assert_eq!(reply["id"], 2);
    publish(&hub, "sse-news", json!("hello")).await;
    let push: Value = serde_json::from_str(&events.next().await.data).unwrap();
    assert_eq!(push["push"]["pub"]["data"], "hello");

    // Protobuf over HTTP streaming: length-prefixed messages both ways.
    let mut frame = Vec::new();
    proto::Command {
        id: 1,
        connect: Some(proto::ConnectRequest {
            token: conn_token("pb", &["pb-news"]),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_length_delimited(&mut frame)
    .unwrap();
    let res = reqwest::Client::new()
        .post(hub.url("/connection/http_stream"))
        .header("content-type", "application/octet-stream")
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/octet-stream");
    let mut body = res.bytes_stream();
    let mut buf = bytes::BytesMut::new();
    let mut next_reply = async || loop {
        let mut view = &buf[..];
        if let Ok(reply) = proto::Reply::decode_length_delimited(&mut view) {
            let used = buf.len() - view.len();
            buf.advance(used);
            return reply;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("a reply within 5 s")
            .unwrap()
            .unwrap();
        buf.extend_from_slice(&chunk);
    };
    let reply = next_reply().await;
    let connect = reply.connect.expect("a connect result");
    assert!(connect.subs.contains_key("pb-news"));
    assert!(!connect.session.is_empty());
    publish(&hub, "pb-news", json!({"x": 1})).await;
    let push = next_reply().await.push.expect("a push");
    assert_eq!(push.channel, "pb-news");
    assert_eq!(&push.publication.unwrap().data[..], br#"{"x":1}"#);
}

#[tokio::test]
async fn unidirectional_transports_push_without_commands() {
    let hub = start(&[]);
    // uni_http_stream: a connect request in the body; pushes come unwrapped.
    let connect = json!({"token": conn_token("uni", &["feed"])}).to_string();
    let mut lines = post_stream(&hub, "/connection/uni_http_stream", connect.clone()).await;
    let first = lines.next().await;
    assert!(first["connect"]["subs"]["feed"].is_object(), "{first}");
    assert!(first["connect"]["session"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(first["connect"].get("pong"), None, "no pongs on uni");

    // uni_websocket: the connect request is the first message.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/connection/uni_websocket", hub.addr))
            .await
            .unwrap();
    ws.send(Message::text(connect)).await.unwrap();
    let first: Value = match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(first["connect"]["subs"]["feed"].is_object(), "{first}");

    publish(&hub, "feed", json!({"k": 1})).await;
    let push = lines.next().await;
    assert_eq!(
        push,
        json!({"channel": "feed", "pub": {"data": {"k": 1}, "offset": 1}})
    );
    let push: Value = match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(push["pub"]["data"], json!({"k": 1}));

    // Frames after connect are ignored, not errors.
    ws.send(Message::text("{\"id\":1,\"ping\":{}}"))
        .await
        .unwrap();
    publish(&hub, "feed", json!({"k": 2})).await;
    let push: Value = match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(push["pub"]["offset"], 2);
}

async fn uni_sse(hub: &Hub, user: &str, last_event_id: Option<&str>) -> Stream {
    let connect = json!({"token": conn_token(user, &["ticks", "other"])}).to_string();
    let mut req = reqwest::Client::new()
        .get(hub.url(&format!("/connection/uni_sse?cf_connect={}", enc(&connect))));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    Stream::from_response(req.send().await.unwrap())
}

#[tokio::test]
async fn uni_sse_resumes_from_last_event_id_with_nothing_lost_or_repeated() {
    let hub = start(&[]);
    let mut events = uni_sse(&hub, "eve", None).await;
    let connect = events.next().await;
    let pushed: Value = serde_json::from_str(&connect.data).unwrap();
    assert!(pushed["connect"]["subs"]["ticks"].is_object());
    assert!(connect.id.is_some(), "the connect event carries positions");
    for n in 1..=2 {
        publish(&hub, "ticks", json!(n)).await;
    }
    let mut last_id = None;
    for n in 1..=2 {
        let e = events.next().await;
        let push: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(push["pub"]["data"], json!(n));
        last_id = e.id;
    }
    drop(events);
    for n in 3..=5 {
        publish(&hub, "ticks", json!(n)).await;
    }
    publish(&hub, "other", json!("x")).await;

    let last_id = last_id.unwrap();
    let mut events = uni_sse(&hub, "eve", Some(&last_id)).await;
    let connect: Value = serde_json::from_str(&events.next().await.data).unwrap();
    assert_eq!(
        connect["connect"]["subs"]["ticks"]["recovered"], true,
        "{connect}"
    );
    let mut got = Vec::new();
    for e in events.drain(Duration::from_millis(700)).await {
        let push: Value = serde_json::from_str(&e.data).unwrap();
        got.push((push["channel"].clone(), push["pub"]["data"].clone()));
    }
    assert_eq!(
        got,
        vec![
            (json!("ticks"), json!(3)),
            (json!("ticks"), json!(4)),
            (json!("ticks"), json!(5)),
            (json!("other"), json!("x")),
        ],
        "exactly what was missed, on both channels"
    );

    // A position in another epoch cannot be recovered: the client is told.
    let forged = tidings::protocol::centrifuge::resume::encode([("ticks", 1, "not-the-epoch")]);
    let mut events = uni_sse(&hub, "eve", Some(&forged)).await;
    let connect: Value = serde_json::from_str(&events.next().await.data).unwrap();
    assert_eq!(
        connect["connect"]["subs"]["ticks"].get("recovered"),
        None,
        "{connect}"
    );
    assert!(events.drain(Duration::from_millis(300)).await.is_empty());
}

#[tokio::test]
async fn bad_input_on_http_transports_is_refused_and_hurts_no_one() {
    let hub = start(&[]);
    let connect = json!({"token": conn_token("bystander", &["calm"])}).to_string();
    let mut bystander = post_stream(&hub, "/connection/uni_http_stream", connect).await;
    bystander.next().await;
    let (mut victim, session, node) = connect_http_stream(&hub, "victim").await;
    let client = reqwest::Client::new();
    let status = |path: &str, method: reqwest::Method, body: &'static [u8], ct: &str| {
        client
            .request(method, hub.url(path))
            .header("content-type", ct.to_owned())
            .body(body)
            .send()
    };
    use reqwest::Method;
    let cases: Vec<(&str, Method, &'static [u8], &str, u16)> = vec![
        (
            "/emulation",
            Method::POST,
            b"not json",
            "application/json",
            400,
        ),
        (
            "/emulation",
            Method::POST,
            b"{\"session\":1}",
            "application/json",
            400,
        ),
        (
            "/emulation",
            Method::POST,
            b"\xff\xff\xff",
            "application/octet-stream",
            400,
        ),
        ("/emulation", Method::GET, b"", "", 405),
        (
            "/connection/http_stream",
            Method::POST,
            b"",
            "application/json",
            400,
        ),
        ("/connection/http_stream", Method::GET, b"", "", 405),
        ("/connection/sse", Method::GET, b"", "", 400),
    ];
    for (path, method, body, ct, want) in cases {
        let res = status(path, method.clone(), body, ct).await.unwrap();
        assert_eq!(res.status().as_u16(), want, "{method} {path} {body:?}");
        publish(&hub, "calm", json!(path)).await;
    }
    let big = "x".repeat(5000);
    let res = client
        .post(hub.url("/emulation"))
        .json(&json!({"session": session, "node": node, "data": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(emulate(&hub, &session, "another-node", "{}").await, 404);
    assert_eq!(emulate(&hub, "no-such-session", &node, "{}").await, 204);
    let res = client
        .post(hub.url("/connection/http_stream"))
        .header("origin", "https://evil.example")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    // Bad frames on a stream: the stream says why and ends.
    let expect_disconnect = async |mut lines: Lines, code: u64, wrapped: bool| {
        let msg = lines.next().await;
        let d = if wrapped {
            &msg["push"]["disconnect"]
        } else {
            &msg["disconnect"]
        };
        assert_eq!(d["code"], code, "{msg}");
        assert!(lines.ended().await, "the stream ends after a disconnect");
    };
    let bad = post_stream(&hub, "/connection/http_stream", "{{{").await;
    expect_disconnect(bad, 3501, true).await;
    let bad = post_stream(
        &hub,
        "/connection/http_stream",
        r#"{"id":1,"connect":{"token":"x.y.z"}}"#,
    )
    .await;
    expect_disconnect(bad, 3500, true).await;
    let bad = post_stream(&hub, "/connection/uni_http_stream", "[1,2]").await;
    expect_disconnect(bad, 3501, false).await;
    let bad = post_stream(&hub, "/connection/uni_http_stream", r#"{"token":"x.y.z"}"#).await;
    expect_disconnect(bad, 3500, false).await;
    let anonymous = post_stream(&hub, "/connection/uni_http_stream", "").await;
    expect_disconnect(anonymous, 3500, false).await;
    // A bad command posted for a live emulated connection closes only it.
    assert_eq!(emulate(&hub, &session, &node, "{oops").await, 204);
    let msg = victim.next().await;
    assert_eq!(msg["push"]["disconnect"]["code"], 3501, "{msg}");
    assert_eq!(
        msg["push"]["disconnect"]["reconnect"],
        json!(null),
        "3501 is final"
    );

    publish(&hub, "calm", json!("last")).await;
    let mut got = 0;
    while let Some(msg) = bystander.next_within(Duration::from_millis(500)).await {
        assert_eq!(msg["channel"], "calm");
        got += 1;
    }
    assert_eq!(got, 8, "the bystander received every publication");
}

#[tokio::test]
async fn transports_can_be_disabled() {
    let hub = start(&[("centrifugo.transports", "websocket,uni_sse")]);
    let res = reqwest::Client::new()
        .post(hub.url("/connection/http_stream"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        emulate(&hub, "s", "n", "{}").await,
        404,
        "no emulation either"
    );
    let events = uni_sse(&hub, "u", None).await;
    assert_eq!(events.status, 200);
}

/// The value of one series in a Prometheus text exposition (0 if absent).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let body = rest.trim_end_matches('}');
            let found = labels
                .iter()
                .all(|(k, v)| body.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            found.then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

async fn scrape(hub: &Hub) -> String {
    let res = reqwest::get(hub.url("/metrics")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    res.text().await.unwrap()
}

#[tokio::test]
async fn metrics_move_by_exactly_what_happened() {
    let hub = start(&[]);
    assert_eq!(
        reqwest::get(hub.url("/readyz")).await.unwrap().status(),
        200
    );
    let before = scrape(&hub).await;
    let connect = json!({"token": conn_token("m", &["metered"])}).to_string();
    let mut subs = Vec::new();
    for _ in 0..2 {
        let mut s = post_stream(&hub, "/connection/uni_http_stream", connect.clone()).await;
        s.next().await;
        subs.push(s);
    }
    for n in 0..5 {
        publish(&hub, "metered", json!(n)).await;
    }
    for s in &mut subs {
        for _ in 0..5 {
            s.next().await;
        }
    }
    let res = reqwest::Client::new()
        .post(hub.url("/api/info"))
        .header("x-api-key", "wrong")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let during = scrape(&hub).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric(&during, name, labels) - metric(&before, name, labels)
    };
    assert_eq!(delta("tidings_publications_total", &[]), 5.0);
    assert_eq!(delta("tidings_deliveries_total", &[]), 10.0);
    assert_eq!(
        delta(
            "tidings_api_commands_total",
            &[("method", "publish"), ("outcome", "ok")]
        ),
        5.0
    );
    assert_eq!(
        delta(
            "tidings_http_requests_total",
            &[("route", "/api/{method}"), ("status", "200")]
        ),
        5.0
    );
    assert_eq!(
        delta(
            "tidings_auth_failures_total",
            &[("protocol", "api"), ("reason", "invalid api key")]
        ),
        1.0
    );
    let open = |text: &str| {
        metric(
            text,
            "tidings_connections",
            &[("protocol", "centrifugo"), ("transport", "uni_http_stream")],
        )
    };
    assert_eq!(open(&during), 2.0);
    assert_eq!(metric(&during, "tidings_channels", &[]), 1.0);
    assert!(metric(&during, "tidings_history_append_seconds_count", &[]) >= 5.0);

    drop(subs);
    let mut closed = false;
    for _ in 0..50 {
        if open(&scrape(&hub).await) == 0.0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the connection gauge returns to zero");
}

#[tokio::test]
async fn readiness_turns_off_while_draining_before_shutdown() {
    let mut hub = start(&[("shutdown_drain", "2s")]);
    let ready = async |hub: &Hub| {
        let res = reqwest::get(hub.url("/readyz")).await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    };
    assert_eq!(ready(&hub).await.0, 200);
    hub.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = ready(&hub).await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    assert_eq!(
        reqwest::get(hub.url("/healthz")).await.unwrap().status(),
        200,
        "still serving"
    );
    assert!(hub.stop(), "then it shuts down cleanly");
}
