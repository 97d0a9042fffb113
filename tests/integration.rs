//! Backend integration against a real backend (an HTTP server in the test):
//! every proxy with success, refusal, timeout, backend down and malformed
//! answers; webhooks (signed, batched, retried, kept across a restart);
//! wildcard channels; the Mercure authorization hook.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::backend::{down_url, Answer, Backend};
use common::ws::*;
use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const TIMEOUT: &str = "300ms";

/// A hub whose every proxy goes to `base` (`/connect`, `/subscribe`…), with
/// the `room` namespace proxying subscribe, publish and sub refresh.
fn proxied_hub(base: &str, extra: &[(&str, &str)]) -> Hub {
    let toml = format!(
        r#"
[proxy]
timeout = "{TIMEOUT}"
http_headers = ["Cookie", "X-Request-Id"]
connect_endpoint = "{base}/connect"
subscribe_endpoint = "{base}/subscribe"
publish_endpoint = "{base}/publish"
rpc_endpoint = "{base}/rpc"
sub_refresh_endpoint = "{base}/sub_refresh"

[[centrifugo.namespaces]]
name = "room"
subscribe_proxy = true
publish_proxy = true
sub_refresh_proxy = true
"#
    );
    let mut args = vec![
        ("centrifugo.token_key", SECRET),
        ("centrifugo.api_key", API_KEY),
    ];
    args.extend_from_slice(extra);
    Hub::start_with_file(&toml, &args)
}

/// Opens a WebSocket with a session cookie and sends a tokenless connect.
async fn connect_with_cookie(hub: &Hub) -> (Ws, Vec<Value>) {
    let mut req = format!("ws://{}/connection/websocket", hub.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", "session=abc123".parse().unwrap());
    req.headers_mut()
        .insert("x-not-forwarded", "secret".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    send(&mut ws, r#"{"id":1,"connect":{"data":{"app":"test"}}}"#).await;
    let r = recv(&mut ws).await;
    (ws, r)
}

/// A connection the connect proxy accepted as user 56.
async fn accepted(hub: &Hub, backend: &Backend) -> Ws {
    backend.answer("/connect", Answer::Json(json!({"result": {"user": "56"}})));
    let (ws, r) = connect_with_cookie(hub).await;
    assert!(r[0]["connect"]["client"].is_string(), "{r:?}");
    ws
}

async fn command(ws: &mut Ws, cmd: Value) -> Value {
    send(ws, &cmd.to_string()).await;
    loop {
        for m in recv(ws).await {
            if m["id"] == cmd["id"] {
                return m;
            }
        }
    }
}

#[tokio::test]
async fn connect_proxy_decides_and_every_failure_is_a_clear_error() {
    let backend = Backend::start().await;
    let hub = proxied_hub(&backend.url, &[]);

    // Success: user, info, data for the client, server-side subscriptions.
    backend.answer(
        "/connect",
        Answer::Json(json!({"result": {
            "user": "56", "info": {"name": "Ann"}, "data": {"welcome": true},
            "channels": ["news"], "meta": {"plan": "pro"}
        }})),
    );
    let (mut ws, r) = connect_with_cookie(&hub).await;
    let c = &r[0]["connect"];
    assert_eq!(c["data"], json!({"welcome": true}), "{r:?}");
    assert!(c["subs"]["news"].is_object(), "{r:?}");
    let seen = backend.last("/connect");
    assert_eq!(seen.headers["cookie"], "session=abc123");
    assert!(seen.headers.get("x-not-forwarded").is_none());
    assert_eq!(seen.body["transport"], "websocket");
    assert_eq!(seen.body["protocol"], "json");
    assert_eq!(seen.body["encoding"], "json");
    assert_eq!(seen.body["data"], json!({"app": "test"}));
    assert_eq!(seen.body["client"], c["client"]);
    // The connect proxy's meta comes back with later proxy requests.
    backend.answer("/rpc", Answer::Json(json!({"result": {"data": {"ok": 1}}})));
    let reply = command(
        &mut ws,
        json!({"id": 2, "rpc": {"method": "m", "data": {}}}),
    )
    .await;
    assert_eq!(reply["rpc"]["data"], json!({"ok": 1}));
    assert_eq!(backend.last("/rpc").body["meta"], json!({"plan": "pro"}));
    assert_eq!(backend.last("/rpc").body["user"], "56");

    // Refusal with an error: the client sees it as is.
    backend.answer(
        "/connect",
        Answer::Json(json!({"error": {"code": 1000, "message": "who are you"}})),
    );
    let (_, r) = connect_with_cookie(&hub).await;
    assert_eq!(r[0]["error"]["code"], 1000, "{r:?}");
    assert_eq!(r[0]["error"]["message"], "who are you");

    // Refusal with a disconnect: the connection closes with that code.
    backend.answer(
        "/connect",
        Answer::Json(json!({"disconnect": {"code": 4501, "reason": "unauthorized"}})),
    );
    let (mut ws, _) = {
        let mut req = format!("ws://{}/connection/websocket", hub.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("cookie", "x=1".parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap()
    };
    send(&mut ws, r#"{"id":1,"connect":{}}"#).await;
    assert_eq!(closed(&mut ws).await, (4501, "unauthorized".into()));

    // Timeout and malformed answers: a temporary internal error, fast.
    for answer in [
        Answer::Slow(Duration::from_secs(3), json!({"result": {"user": "1"}})),
        Answer::Garbage,
        Answer::Status(500),
        Answer::Json(json!({"result": {"user": 5}})),
    ] {
        backend.answer("/connect", answer.clone());
        let started = std::time::Instant::now();
        let (_, r) = connect_with_cookie(&hub).await;
        assert_eq!(r[0]["error"]["code"], 100, "{answer:?}: {r:?}");
        assert_eq!(r[0]["error"]["temporary"], true, "{answer:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "{answer:?}");
    }
}

#[tokio::test]
async fn subscribe_publish_and_rpc_proxies_decide_per_namespace() {
    let backend = Backend::start().await;
    let hub = proxied_hub(&backend.url, &[]);
    let mut ws = accepted(&hub, &backend).await;

    // Subscribe: allowed with channel info and data for the client.
    backend.answer(
        "/subscribe",
        Answer::Json(json!({"result": {"info": {"role": "mod"}, "data": {"topic": "cats"}}})),
    );
    let reply = command(
        &mut ws,
        json!({"id": 2, "subscribe": {"channel": "room:1", "data": {"pw": "x"}}}),
    )
    .await;
    assert_eq!(
        reply["subscribe"]["data"],
        json!({"topic": "cats"}),
        "{reply}"
    );
    let seen = backend.last("/subscribe");
    assert_eq!(seen.body["channel"], "room:1");
    assert_eq!(seen.body["data"], json!({"pw": "x"}));
    assert_eq!(seen.body["user"], "56");

    // Publish: the backend rewrites the data and adds tags.
    backend.answer(
        "/publish",
        Answer::Json(json!({"result": {"data": {"text": "clean"}, "tags": {"checked": "yes"}}})),
    );
    let reply = command(
        &mut ws,
        json!({"id": 3, "publish": {"channel": "room:1", "data": {"text": "dirty"}}}),
    )
    .await;
    assert!(reply["publish"].is_object(), "{reply}");
    let mut got = None;
    for _ in 0..5 {
        if let Some(p) = recv(&mut ws)
            .await
            .into_iter()
            .find(|m| m["push"]["pub"].is_object())
        {
            got = Some(p);
            break;
        }
    }
    let p = got.expect("publication");
    assert_eq!(p["push"]["pub"]["data"], json!({"text": "clean"}));
    assert_eq!(p["push"]["pub"]["tags"]["checked"], "yes");
    assert_eq!(
        p["push"]["pub"]["info"]["chan_info"],
        json!({"role": "mod"})
    );
    assert_eq!(
        backend.last("/publish").body["data"],
        json!({"text": "dirty"})
    );

    // Refusals, timeouts and malformed answers, for each of the three.
    let cases: [(&str, &str, Value); 3] = [
        ("/subscribe", "subscribe", json!({"channel": "room:2"})),
        (
            "/publish",
            "publish",
            json!({"channel": "room:1", "data": {"a": 1}}),
        ),
        ("/rpc", "rpc", json!({"method": "m", "data": {}})),
    ];
    let mut id = 10;
    for (path, method, params) in cases {
        for (answer, code) in [
            (
                Answer::Json(json!({"error": {"code": 403, "message": "no"}})),
                403,
            ),
            (
                Answer::Slow(Duration::from_secs(3), json!({"result": {}})),
                100,
            ),
            (Answer::Garbage, 100),
            (Answer::Json(json!({"result": {"b64data": "%%%"}})), 100),
        ] {
            backend.answer(path, answer.clone());
            id += 1;
            let reply = command(&mut ws, json!({"id": id, method: params.clone()})).await;
            assert_eq!(reply["error"]["code"], code, "{method} {answer:?}: {reply}");
        }
    }
    // A disconnect answer closes the connection.
    backend.answer(
        "/rpc",
        Answer::Json(json!({"disconnect": {"code": 4000, "reason": "bye"}})),
    );
    send(&mut ws, r#"{"id":99,"rpc":{"method":"m"}}"#).await;
    assert_eq!(closed(&mut ws).await, (4000, "bye".into()));
}

#[tokio::test]
async fn every_proxy_with_its_backend_down_gives_a_temporary_error() {
    let hub = proxied_hub(&down_url(), &[]);
    // Connect proxy down: internal error, the SDK retries.
    let (_, r) = connect_with_cookie(&hub).await;
    assert_eq!(r[0]["error"]["code"], 100, "{r:?}");
    assert_eq!(r[0]["error"]["temporary"], true);
    // With a token the connection does not need the connect proxy.
    let mut ws = dial(&hub, None).await.unwrap();
    send(
        &mut ws,
        &json!({"id": 1, "connect": {"token": conn_token("u", 600)}}).to_string(),
    )
    .await;
    recv(&mut ws).await;
    for (id, method, params) in [
        (2, "subscribe", json!({"channel": "room:1"})),
        (3, "publish", json!({"channel": "room:1", "data": {}})),
        (4, "rpc", json!({"method": "x"})),
    ] {
        let reply = command(&mut ws, json!({"id": id, method: params})).await;
        assert_eq!(reply["error"]["code"], 100, "{method}: {reply}");
    }
}

/// A hub with a refresh proxy whose connect proxy accepts user 56 for one
/// second; returns the time now (Unix seconds).
async fn refreshing_hub() -> (Backend, Hub, u64) {
    let backend = Backend::start().await;
    let refresh = format!("{}/refresh", backend.url);
    let hub = proxied_hub(&backend.url, &[("proxy.refresh_endpoint", &refresh)]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    backend.answer(
        "/connect",
        Answer::Json(json!({"result": {"user": "56", "expire_at": now + 1}})),
    );
    (backend, hub, now)
}

#[tokio::test]
async fn refresh_and_sub_refresh_proxies_extend_or_end() {
    let (backend, hub, now) = refreshing_hub().await;
    let (mut ws, r) = connect_with_cookie(&hub).await;
    // The hub refreshes by itself: the client is not told to.
    assert!(r[0]["connect"].get("expires").is_none(), "{r:?}");
    backend.answer(
        "/subscribe",
        Answer::Json(json!({"result": {"expire_at": now + 1}})),
    );
    let reply = command(
        &mut ws,
        json!({"id": 2, "subscribe": {"channel": "room:a"}}),
    )
    .await;
    assert!(reply["subscribe"].get("expires").is_none(), "{reply}");

    // Backend down, slow or malformed: the connection and subscription stay.
    backend.answer("/refresh", Answer::Garbage);
    backend.answer(
        "/sub_refresh",
        Answer::Slow(Duration::from_secs(2), json!({"result": {}})),
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!backend.received("/refresh").is_empty());
    assert!(!backend.received("/sub_refresh").is_empty());
    assert_eq!(backend.last("/sub_refresh").body["channel"], "room:a");
    backend.answer("/rpc", Answer::Json(json!({"result": {}})));
    let reply = command(&mut ws, json!({"id": 3, "rpc": {"method": "m"}})).await;
    assert!(reply["rpc"].is_object(), "{reply}");

    // Sub refresh says expired: unsubscribed with 2501, connection stays.
    backend.answer(
        "/sub_refresh",
        Answer::Json(json!({"result": {"expired": true}})),
    );
    backend.answer(
        "/refresh",
        Answer::Json(json!({"result": {"expire_at": now + 3600}})),
    );
    // The failed calls are retried 10 s later.
    let mut unsubscribed = false;
    for _ in 0..20 {
        let msgs = tokio::time::timeout(Duration::from_secs(1), recv(&mut ws)).await;
        if let Ok(msgs) = msgs {
            if msgs
                .iter()
                .any(|m| m["push"]["unsubscribe"]["code"] == 2501)
            {
                unsubscribed = true;
                break;
            }
        }
    }
    assert!(unsubscribed, "no 2501 unsubscribe");
    // The refresh said the connection goes on: it is still open.
    let reply = command(&mut ws, json!({"id": 4, "rpc": {"method": "m"}})).await;
    assert!(reply["rpc"].is_object(), "{reply}");
}

#[tokio::test]
async fn refresh_proxy_expired_closes_the_connection() {
    let (backend, hub, _) = refreshing_hub().await;
    backend.answer(
        "/refresh",
        Answer::Json(json!({"result": {"expired": true}})),
    );
    let (mut ws, _) = connect_with_cookie(&hub).await;
    assert_eq!(closed(&mut ws).await.0, 3005);
    assert_eq!(backend.last("/refresh").body["user"], "56");
}

#[tokio::test]
async fn wildcard_subscriptions_deliver_matching_channels_with_their_names() {
    let toml = r#"
[[centrifugo.namespaces]]
name = "rooms"
allow_subscribe = true
wildcards = true
"#;
    let hub = Hub::start_with_file(
        toml,
        &[
            ("centrifugo.token_key", SECRET),
            ("centrifugo.api_key", API_KEY),
        ],
    );
    let mut ws = connected(&hub, "u").await;
    let reply = command(
        &mut ws,
        json!({"id": 2, "subscribe": {"channel": "rooms:eu/*"}}),
    )
    .await;
    assert!(reply["subscribe"].is_object(), "{reply}");
    // A pattern is not a channel one can publish to; a bad pattern is refused.
    let reply = command(
        &mut ws,
        json!({"id": 3, "publish": {"channel": "rooms:eu/*", "data": {}}}),
    )
    .await;
    assert_eq!(reply["error"]["code"], 107);
    let reply = command(
        &mut ws,
        json!({"id": 4, "subscribe": {"channel": "rooms:eu/("}}),
    )
    .await;
    assert_eq!(reply["error"]["code"], 107);
    for channel in ["rooms:us/nyc", "rooms:eu/paris", "rooms:eu/rome/lobby"] {
        let (status, _) = api(
            &hub,
            "publish",
            json!({"channel": channel, "data": {"c": channel}}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        for m in recv(&mut ws).await {
            if let Some(p) = m["push"]["pub"].as_object() {
                assert_eq!(m["push"]["channel"], "rooms:eu/*");
                assert_eq!(p["tags"]["channel"], p["data"]["c"]);
                got.push(p["channel"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(got, ["rooms:eu/paris", "rooms:eu/rome/lobby"]);
}

fn verify_signature(r: &common::backend::Received, secret: &str) {
    let ts: u64 = r.headers["x-tidings-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let expected = tidings::integration::webhooks::signature(secret, ts, &r.raw);
    assert_eq!(r.headers["x-tidings-signature"].to_str().unwrap(), expected);
}

fn events(backend: &Backend) -> Vec<Value> {
    backend
        .received("/hooks")
        .iter()
        .flat_map(|r| r.body["events"].as_array().cloned().unwrap_or_default())
        .collect()
}

async fn wait_for(backend: &Backend, what: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..100 {
        let e = events(backend);
        if what(&e) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("events never arrived: {:#?}", events(backend));
}

fn has(events: &[Value], kind: &str, channel: &str) -> bool {
    events
        .iter()
        .any(|e| e["event"] == kind && (channel.is_empty() || e["channel"] == channel))
}

#[tokio::test]
async fn webhooks_are_signed_batched_and_cover_both_protocols() {
    let backend = Backend::start().await;
    backend.answer("/hooks", Answer::Status(204));
    let hook = backend.at("/hooks");
    let hub = start(&[
        ("webhooks.endpoints", &hook),
        ("webhooks.secret", "hook-secret"),
    ]);
    let mut ws = connected(&hub, "alice").await;
    command(&mut ws, json!({"id": 2, "subscribe": {"channel": "news"}})).await;
    command(
        &mut ws,
        json!({"id": 3, "unsubscribe": {"channel": "news"}}),
    )
    .await;
    let mut sse = open(&hub, "topic=https://example.com/feed", &[]).await;
    drop(ws);
    let _ = sse.next_within(Duration::from_millis(200)).await;
    drop(sse);
    let got = wait_for(&backend, |e| {
        e.iter().filter(|e| e["event"] == "disconnect").count() >= 2
    })
    .await;
    for (kind, channel) in [
        ("connect", ""),
        ("subscribe", "news"),
        ("occupied", "news"),
        ("unsubscribe", "news"),
        ("vacated", "news"),
        ("subscribe", "https://example.com/feed"),
        ("occupied", "https://example.com/feed"),
        ("vacated", "https://example.com/feed"),
    ] {
        assert!(has(&got, kind, channel), "no {kind} {channel}: {got:#?}");
    }
    let alice: Vec<&Value> = got.iter().filter(|e| e["user"] == "alice").collect();
    assert!(alice
        .iter()
        .all(|e| e["protocol"] == "centrifugo" && e["transport"] == "websocket"));
    assert!(got
        .iter()
        .any(|e| e["protocol"] == "mercure" && e["event"] == "connect"));
    for r in backend.received("/hooks") {
        verify_signature(&r, "hook-secret");
    }
    // Ids are unique.
    let ids: HashSet<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), got.len());
}

#[tokio::test]
async fn webhook_events_survive_a_failing_backend_and_a_restart() {
    let backend = Backend::start().await;
    // Down (500), then too slow: nothing is acknowledged.
    backend.answer("/hooks", Answer::Status(500));
    let hook = backend.at("/hooks");
    let mut hub = start(&[
        ("webhooks.endpoints", &hook),
        ("webhooks.timeout", "200ms"),
        ("webhooks.max_backoff", "300ms"),
    ]);
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut ws = connected(&hub, &format!("user{i}")).await;
        command(
            &mut ws,
            json!({"id": 2, "subscribe": {"channel": format!("c{i}")}}),
        )
        .await;
        clients.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    backend.answer("/hooks", Answer::Slow(Duration::from_secs(1), json!({})));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The clients' disconnects happen at shutdown and are queued too.
    hub.restart();
    drop(clients);
    backend.answer("/hooks", Answer::Status(200));
    let got = wait_for(&backend, |e| {
        (0..5).all(|i| {
            let user = format!("user{i}");
            ["connect", "subscribe", "unsubscribe", "disconnect"]
                .iter()
                .all(|k| e.iter().any(|ev| ev["event"] == *k && ev["user"] == user))
        })
    })
    .await;
    let shutdown = got
        .iter()
        .filter(|e| e["event"] == "disconnect" && e["code"] == 3001)
        .count();
    assert!(shutdown >= 5, "{got:#?}");
    // At least once: duplicates are possible, but no event is lost and each
    // id stands for one event.
    let ids: HashSet<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert!(ids.len() >= 5 * 4 + 10, "{}", ids.len());
}

#[tokio::test]
async fn mercure_hook_decides_requests_without_a_token() {
    let backend = Backend::start().await;
    let hook = backend.at("/mercure");
    let hub = Hub::start(&[
        ("proxy.mercure_endpoint", &hook),
        ("proxy.http_headers", "Cookie"),
        ("mercure.anonymous", "false"),
    ]);
    let form = "topic=https://example.com/private&data=secret&private=on";
    let post_form = |body: &'static str| {
        reqwest::Client::new()
            .post(hub.hub_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", "session=s1")
            .body(body)
            .send()
    };
    // Subscribe: the backend grants private updates of one topic.
    backend.answer(
        "/mercure",
        Answer::Json(json!({"result": {"subscribe": ["https://example.com/private"]}})),
    );
    let mut stream = open(
        &hub,
        "topic=https://example.com/private",
        &[("cookie", "session=s1")],
    )
    .await;
    let seen = backend.last("/mercure");
    assert_eq!(seen.body["action"], "subscribe");
    assert_eq!(seen.body["topics"], json!(["https://example.com/private"]));
    assert_eq!(seen.headers["cookie"], "session=s1");
    // Publish: allowed.
    backend.answer("/mercure", Answer::Json(json!({"result": {}})));
    let res = post_form(form).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(backend.last("/mercure").body["private"], true);
    assert_eq!(stream.next().await.data, "secret");
    // Refused: 403 with the backend's message; down or malformed: 503.
    backend.answer(
        "/mercure",
        Answer::Json(json!({"error": {"code": 403, "message": "not yours"}})),
    );
    let res = post_form(form).await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("not yours"));
    for answer in [
        Answer::Garbage,
        Answer::Slow(Duration::from_secs(3), json!({"result": {}})),
        Answer::Json(json!({"result": {"subscribe": "not a list"}})),
    ] {
        backend.answer("/mercure", answer.clone());
        let res = post_form(form).await.unwrap();
        assert_eq!(res.status(), 503, "{answer:?}");
    }
    // With a token, JWT decides as before (the hook is not asked).
    let before = backend.received("/mercure").len();
    publish(&hub, "https://example.com/private", "with token").await;
    assert_eq!(backend.received("/mercure").len(), before);
}
