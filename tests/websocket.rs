//! The Centrifugo client protocol over WebSocket and the server API, against
//! a running server: framing, the handshake, bad input and its isolation.

mod common;

use std::time::Duration;

use common::ws::*;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn several_commands_in_one_frame_get_their_replies_in_one_frame() {
    let hub = start(&[]);
    let mut ws = dial(&hub, None).await.unwrap();
    let frame = [
        json!({"id": 1, "connect": {"token": conn_token("u1", 3600)}}),
        json!({"id": 2, "subscribe": {"channel": "room"}}),
        json!({"id": 3, "presence_stats": {"channel": "room"}}),
        json!({"id": 4, "publish": {"channel": "room", "data": {"hello": "world"}}}),
        json!({"id": 5, "history": {"channel": "room", "limit": 10}}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    send(&mut ws, &frame).await;
    let replies = recv(&mut ws).await;
    let ids: Vec<u64> = replies.iter().filter_map(|r| r["id"].as_u64()).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    assert_eq!(replies[0]["connect"]["ping"], 25);
    assert_eq!(replies[0]["connect"]["pong"], true);
    assert_eq!(replies[0]["connect"]["expires"], true);
    assert!(replies[1]["subscribe"]["epoch"].is_string());
    assert_eq!(replies[2]["presence_stats"]["num_clients"], 1);
    assert_eq!(
        replies[4]["history"]["publications"][0]["data"]["hello"],
        "world"
    );
    // The publication push arrives too (maybe in the same frame).
    let mut all = replies.clone();
    while !all
        .iter()
        .any(|m| m["push"]["pub"]["data"]["hello"] == "world")
    {
        all.extend(recv(&mut ws).await);
    }
}

#[tokio::test]
async fn cross_origin_handshakes_are_refused() {
    let hub = start(&[("centrifugo.allowed_origins", "https://app.example")]);
    assert_eq!(
        dial(&hub, Some("https://evil.example")).await.err(),
        Some(403)
    );
    assert_eq!(dial(&hub, Some("null")).await.err(), Some(403));
    assert!(dial(&hub, Some("https://app.example")).await.is_ok());
    assert!(
        dial(&hub, Some(&format!("http://{}", hub.addr)))
            .await
            .is_ok(),
        "same origin"
    );
    assert!(
        dial(&hub, None).await.is_ok(),
        "non-browser clients send no Origin"
    );
}

#[tokio::test]
async fn protocol_errors_and_disconnects() {
    let hub = start(&[
        ("centrifugo.channel_limit", "2"),
        ("centrifugo.max_frame", "4096"),
        ("centrifugo.handshake_timeout", "500ms"),
    ]);
    // A bystander subscribed to a channel must be unaffected by all of this.
    let mut bystander = connected(&hub, "bystander").await;
    send(
        &mut bystander,
        &json!({"id": 2, "subscribe": {"channel": "calm"}}).to_string(),
    )
    .await;
    recv(&mut bystander).await;

    // Malformed JSON → 3501 bad request.
    let mut ws = connected(&hub, "a").await;
    send(&mut ws, "{not json").await;
    assert_eq!(closed(&mut ws).await.0, 3501);
    // A command before connect → 3501.
    let mut ws = dial(&hub, None).await.unwrap();
    send(
        &mut ws,
        &json!({"id": 1, "subscribe": {"channel": "x"}}).to_string(),
    )
    .await;
    assert_eq!(closed(&mut ws).await.0, 3501);
    // An invalid token → 3500; an expired one → error 109; none → error 101.
    let mut ws = dial(&hub, None).await.unwrap();
    send(
        &mut ws,
        &json!({"id": 1, "connect": {"token": "garbage"}}).to_string(),
    )
    .await;
    assert_eq!(closed(&mut ws).await, (3500, "invalid token".into()));
    let mut ws = dial(&hub, None).await.unwrap();
    send(
        &mut ws,
        &json!({"id": 1, "connect": {"token": conn_token("a", -10)}}).to_string(),
    )
    .await;
    assert_eq!(recv(&mut ws).await[0]["error"]["code"], 109);
    send(&mut ws, &json!({"id": 2, "connect": {}}).to_string()).await;
    assert_eq!(recv(&mut ws).await[0]["error"]["code"], 101);
    // An oversized frame → 1009.
    let mut ws = connected(&hub, "a").await;
    send(
        &mut ws,
        &format!(
            "{{\"id\":2,\"publish\":{{\"channel\":\"x\",\"data\":\"{}\"}}}}",
            "x".repeat(8000)
        ),
    )
    .await;
    assert_eq!(closed(&mut ws).await.0, 1009);
    // Invalid UTF-8 in a text frame → 1007.
    let mut ws = connected(&hub, "a").await;
    let raw = tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
        vec![0xff, 0xfe],
        tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
            tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    );
    ws.send(Message::Frame(raw)).await.unwrap();
    assert_eq!(closed(&mut ws).await.0, 1007);
    // No connect command in time → 3502 stale.
    let mut ws = dial(&hub, None).await.unwrap();
    assert_eq!(closed(&mut ws).await.0, 3502);

    // Errors that keep the connection: unknown namespace, already
    // subscribed, channel limit, RPC without a backend. (A command with no
    // method it knows closes with 3501, as in Centrifugo: see
    // `commands_centrifugo_refuses_close_with_bad_request`.)
    let mut ws = connected(&hub, "b").await;
    let frame = [
        json!({"id": 3, "subscribe": {"channel": "nons:x"}}),
        json!({"id": 4, "subscribe": {"channel": "one"}}),
        json!({"id": 5, "subscribe": {"channel": "one"}}),
        json!({"id": 6, "subscribe": {"channel": "two"}}),
        json!({"id": 7, "subscribe": {"channel": "three"}}),
        json!({"id": 8, "rpc": {"method": "m", "data": {}}}),
        json!({"id": 9, "subscribe": {"channel": ""}}),
        json!({"id": 10, "publish": {"channel": "one"}}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    send(&mut ws, &frame).await;
    let mut replies = Vec::new();
    while replies.len() < 8 {
        replies.extend(recv(&mut ws).await.into_iter().filter(|r| r["id"].is_u64()));
    }
    let codes: Vec<Value> = replies.iter().map(|r| r["error"]["code"].clone()).collect();
    assert_eq!(
        codes,
        vec![
            json!(102),
            Value::Null,
            json!(105),
            Value::Null,
            json!(106),
            json!(108),
            json!(107),
            json!(107)
        ]
    );

    // The bystander still receives publications.
    let (status, body) = api(
        &hub,
        "publish",
        json!({"channel": "calm", "data": {"still": "here"}}),
    )
    .await;
    assert_eq!((status, body["result"]["offset"].clone()), (200, json!(1)));
    let msgs = recv(&mut bystander).await;
    assert_eq!(msgs[0]["push"]["pub"]["data"]["still"], "here");
}

#[tokio::test]
async fn permissions_follow_namespaces_and_subscription_tokens() {
    let hub = start(&[
        ("centrifugo.channel.allow_subscribe", "false"),
        ("centrifugo.channel.allow_publish", "false"),
    ]);
    let mut ws = connected(&hub, "u").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sub_token = |user: &str, channel: &str| {
        tidings::auth::jwt::mint(
            &json!({"sub": user, "channel": channel, "exp": now + 60, "info": {"role": "reader"}}),
            SECRET,
            jsonwebtoken::Algorithm::HS256,
            false,
        )
        .unwrap()
    };
    let frame = [
        json!({"id": 2, "subscribe": {"channel": "closed"}}),
        json!({"id": 3, "subscribe": {"channel": "closed", "token": "not.a.token"}}),
        json!({"id": 4, "subscribe": {"channel": "closed", "token": sub_token("u", "closed")}}),
        json!({"id": 5, "publish": {"channel": "closed", "data": {}}}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    send(&mut ws, &frame).await;
    let replies = recv(&mut ws).await;
    let codes: Vec<Value> = replies.iter().map(|r| r["error"]["code"].clone()).collect();
    assert_eq!(codes, vec![json!(103), json!(103), Value::Null, json!(103)]);
    assert_eq!(replies[2]["subscribe"]["expires"], true);
    // A token for another user or channel is a forged one: Centrifugo
    // closes the connection (3500), and so does the hub.
    for token in [
        sub_token("someone-else", "closed2"),
        sub_token("u", "other"),
    ] {
        let mut ws = connected(&hub, "u").await;
        let frame = json!({"id": 2, "subscribe": {"channel": "closed2", "token": token}});
        send(&mut ws, &frame.to_string()).await;
        assert_eq!(closed(&mut ws).await.0, 3500);
    }
}

#[tokio::test]
async fn server_pings_and_missing_pongs() {
    let hub = start(&[
        ("centrifugo.ping_interval", "300ms"),
        ("centrifugo.pong_timeout", "200ms"),
    ]);
    let mut ws = connected(&hub, "p").await;
    // A ping is an empty object; answer one, then ignore the next.
    let ping = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ping, Message::text("{}"));
    send(&mut ws, "{}").await;
    let (code, _) = closed(&mut ws).await;
    assert_eq!(code, 3012, "no pong");
}

#[tokio::test]
async fn recovery_from_a_position() {
    let hub = start(&[]);
    for i in 1..=5 {
        api(&hub, "publish", json!({"channel": "r", "data": {"i": i}})).await;
    }
    let mut ws = connected(&hub, "r").await;
    send(
        &mut ws,
        &json!({"id": 2, "subscribe": {"channel": "r"}}).to_string(),
    )
    .await;
    let sub = recv(&mut ws).await[0]["subscribe"].clone();
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    assert_eq!(sub["offset"], 5);
    send(
        &mut ws,
        &json!({"id": 3, "unsubscribe": {"channel": "r"}}).to_string(),
    )
    .await;
    recv(&mut ws).await;
    api(&hub, "publish", json!({"channel": "r", "data": {"i": 6}})).await;
    send(&mut ws, &json!({"id": 4, "subscribe": {"channel": "r", "recover": true, "offset": 3, "epoch": epoch}}).to_string()).await;
    let sub = recv(&mut ws).await[0]["subscribe"].clone();
    assert_eq!(sub["recovered"], true);
    let got: Vec<Value> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["i"].clone())
        .collect();
    assert_eq!(got, vec![json!(4), json!(5), json!(6)]);
    // A wrong epoch is not recovered: the client is told, not given a gap.
    send(
        &mut ws,
        &json!({"id": 5, "unsubscribe": {"channel": "r"}}).to_string(),
    )
    .await;
    recv(&mut ws).await;
    send(&mut ws, &json!({"id": 6, "subscribe": {"channel": "r", "recover": true, "offset": 3, "epoch": "bogus"}}).to_string()).await;
    let sub = recv(&mut ws).await[0]["subscribe"].clone();
    // `false` fields are omitted on the wire, as Centrifugo does.
    assert_ne!(sub["recovered"], true);
    assert_eq!(sub["was_recovering"], true);
    // History since a position in another epoch is an unrecoverable position.
    send(&mut ws, &json!({"id": 7, "history": {"channel": "r", "limit": 10, "since": {"offset": 1, "epoch": "bogus"}}}).to_string()).await;
    assert_eq!(recv(&mut ws).await[0]["error"]["code"], 112);
}

#[tokio::test]
async fn server_api_errors() {
    let hub = start(&[]);
    let client = reqwest::Client::new();
    let res = client
        .post(hub.url("/api/publish"))
        .header("X-API-Key", "wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = client
        .post(hub.url("/api/publish"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = client
        .post(hub.url("/api/publish"))
        .header("Authorization", format!("apikey {API_KEY}"))
        .json(&json!({"channel": "a", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(api(&hub, "nope", json!({})).await.0, 404);
    let res = client
        .post(hub.url("/api/publish"))
        .header("X-API-Key", API_KEY)
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        api(&hub, "publish", json!({"channel": "ns:x", "data": 1}))
            .await
            .1["error"]["code"],
        102
    );
    assert_eq!(
        api(&hub, "publish", json!({"channel": "x"})).await.1["error"]["code"],
        107
    );
    assert_eq!(
        api(&hub, "publish", json!({"data": 1})).await.1["error"]["code"],
        107
    );
    let (_, body) = api(
        &hub,
        "publish",
        json!({"channel": "b64", "b64data": "aGVsbG8="}),
    )
    .await;
    assert_eq!(body["result"]["offset"], 1);
    let (_, body) = api(
        &hub,
        "batch",
        json!({"commands": [{"publish": {"channel": "x", "data": 1}}, {"nope": {}}]}),
    )
    .await;
    assert_eq!(body["replies"][0]["publish"]["offset"], 1);
    assert_eq!(body["replies"][1]["error"]["code"], 104);
    // With no key configured, the API is closed.
    let closed = Hub::start(&[]);
    let res = client
        .post(closed.url("/api/info"))
        .header("X-API-Key", "")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn mercure_updates_reach_websocket_subscribers_and_back() {
    let hub = start(&[]);
    let mut ws = connected(&hub, "x").await;
    send(
        &mut ws,
        &json!({"id": 2, "subscribe": {"channel": "shared"}}).to_string(),
    )
    .await;
    recv(&mut ws).await;
    let mut sse = open(&hub, "match=shared", &[]).await;
    publish(&hub, "shared", "plain text from Mercure").await;
    publish(&hub, "shared", "{\"json\":true}").await;
    let body = "topic=shared&data=secret&private=on";
    assert_eq!(post(&hub, Some(&publisher(&hub)), body).await.0, 200);
    api(
        &hub,
        "publish",
        json!({"channel": "shared", "data": {"from": "api"}}),
    )
    .await;
    let mut pushes = Vec::new();
    while pushes.len() < 3 {
        pushes.extend(
            recv(&mut ws)
                .await
                .into_iter()
                .map(|m| m["push"]["pub"]["data"].clone()),
        );
    }
    // Text becomes a JSON string, JSON passes through, private updates stay on the Mercure side.
    assert_eq!(
        pushes,
        vec![
            json!("plain text from Mercure"),
            json!({"json": true}),
            json!({"from": "api"})
        ]
    );
    let got: Vec<String> = sse
        .drain(Duration::from_millis(400))
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(
        got,
        vec![
            "plain text from Mercure",
            "{\"json\":true}",
            "{\"from\":\"api\"}"
        ]
    );
}

#[tokio::test]
async fn shutdown_closes_websockets_with_3001() {
    let mut hub = start(&[]);
    let mut ws = connected(&hub, "s").await;
    assert!(hub.stop());
    assert_eq!(closed(&mut ws).await.0, 3001);
}

#[tokio::test]
async fn namespaces_set_their_own_history_size_and_mercure_urls_are_reachable() {
    let hub = Hub::start_with_file(
        "[[centrifugo.namespaces]]\nname = \"short\"\nallow_history = true\nhistory_size = 2\n",
        &[
            ("centrifugo.token_key", SECRET),
            ("centrifugo.api_key", API_KEY),
            ("centrifugo.channel.allow_subscribe", "true"),
        ],
    );
    for i in 1..=4 {
        api(&hub, "publish", json!({"channel": "short:x", "data": i})).await;
        api(&hub, "publish", json!({"channel": "long", "data": i})).await;
    }
    let (_, short) = api(&hub, "history", json!({"channel": "short:x", "limit": -1})).await;
    let (_, long) = api(&hub, "history", json!({"channel": "long", "limit": -1})).await;
    assert_eq!(short["result"]["publications"].as_array().unwrap().len(), 2);
    assert_eq!(long["result"]["publications"].as_array().unwrap().len(), 4);
    // A Mercure topic URL is a channel of the default namespace.
    let mut ws = connected(&hub, "u").await;
    send(
        &mut ws,
        &json!({"id": 2, "subscribe": {"channel": "https://example.com/books/1"}}).to_string(),
    )
    .await;
    assert!(recv(&mut ws).await[0]["subscribe"].is_object());
    send(
        &mut ws,
        &json!({"id": 3, "subscribe": {"channel": "unknown:x"}}).to_string(),
    )
    .await;
    assert_eq!(recv(&mut ws).await[0]["error"]["code"], 102);
}

#[tokio::test]
async fn connections_expire_unless_refreshed() {
    // Centrifugo grants `expired_close_delay` past the expiry, so that a
    // client refreshing at the last moment is not disconnected.
    let hub = start(&[("centrifugo.expired_close_delay", "3s")]);
    let connect =
        |exp_in: i64| json!({"id": 1, "connect": {"token": conn_token("e", exp_in)}}).to_string();
    let mut stale = dial(&hub, None).await.unwrap();
    send(&mut stale, &connect(1)).await;
    assert_eq!(
        recv(&mut stale).await[0]["connect"]["ttl"]
            .as_u64()
            .map(|t| t <= 1),
        Some(true)
    );
    let mut fresh = dial(&hub, None).await.unwrap();
    send(&mut fresh, &connect(1)).await;
    recv(&mut fresh).await;
    // Both tokens have expired now; the grace has not.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send(&mut stale, &json!({"id": 2, "ping": {}}).to_string()).await;
    assert!(
        recv(&mut stale).await[0]["ping"].is_object(),
        "open during the grace"
    );
    send(
        &mut fresh,
        &json!({"id": 2, "refresh": {"token": conn_token("e", 3600)}}).to_string(),
    )
    .await;
    let r = recv(&mut fresh).await;
    assert_eq!(r[0]["refresh"]["expires"], true);
    assert!(r[0]["refresh"]["ttl"].as_u64().unwrap() > 3000);
    assert_eq!(
        closed(&mut stale).await.0,
        3005,
        "the unrefreshed connection expired"
    );
    send(&mut fresh, &json!({"id": 3, "ping": {}}).to_string()).await;
    assert!(
        recv(&mut fresh).await[0]["ping"].is_object(),
        "the refreshed connection is still open"
    );
    // A refresh for another user is an invalid token.
    send(
        &mut fresh,
        &json!({"id": 4, "refresh": {"token": conn_token("someone-else", 3600)}}).to_string(),
    )
    .await;
    assert_eq!(closed(&mut fresh).await.0, 3500);
}

#[tokio::test]
async fn a_frame_sent_right_behind_the_handshake_is_read() {
    use tokio::io::AsyncWriteExt;
    // A client may write its first frame without waiting for the 101: the
    // server has read it with the handshake and must not lose it.
    let hub = start(&[]);
    let mut tcp = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
    let mut bytes = b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    let connect = json!({"id": 1, "connect": {"token": conn_token("eager", 3600)}}).to_string();
    bytes.extend(ws_frame(0x81, connect.as_bytes(), true));
    tcp.write_all(&bytes).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        skip_head(tcp).await,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let replies = recv_on(&mut ws).await;
    assert_eq!(replies[0]["id"], 1);
    assert!(replies[0]["connect"]["client"].is_string(), "{replies:?}");
}

/// Reads the handshake answer off `tcp` (byte by byte, so nothing after it
/// is consumed) and returns the socket.
async fn skip_head(mut tcp: tokio::net::TcpStream) -> tokio::net::TcpStream {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// permessage-deflate: a client that offers it gets it (with both sides
/// without context takeover), its compressed commands are understood, and
/// publications arrive compressed, inflating to exactly what an
/// uncompressed client receives. An offer the hub cannot honour, or no
/// offer, gets plain frames; with compression off, nobody gets it.
#[tokio::test]
async fn compression_is_agreed_and_works_both_ways() {
    use tokio::io::AsyncWriteExt;
    let hub = start(&[("centrifugo.websocket_compression", "true")]);
    let (mut tcp, head) = raw_dial(
        &hub.addr,
        Some("permessage-deflate; client_max_window_bits"),
    )
    .await;
    let agreed = head
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("sec-websocket-extensions:")
        })
        .expect("extension agreed");
    assert!(agreed.contains("permessage-deflate"), "{agreed}");
    assert!(agreed.contains("server_no_context_takeover"), "{agreed}");
    assert!(agreed.contains("client_no_context_takeover"), "{agreed}");

    // Commands, compressed (RSV1), in one frame.
    let commands = [
        json!({"id": 1, "connect": {"token": conn_token("zip", 3600)}}),
        json!({"id": 2, "subscribe": {"channel": "zipped"}}),
    ]
    .map(|v| v.to_string())
    .join("\n");
    tcp.write_all(&ws_frame(0xc1, &deflate_message(commands.as_bytes()), true))
        .await
        .unwrap();
    let mut replies = Vec::new();
    while replies.len() < 2 {
        let (first, payload) = read_frame(&mut tcp).await;
        assert_eq!(first & 0x0f, 0x1, "text");
        assert_eq!(first & 0x40, 0x40, "compressed");
        let text = String::from_utf8(inflate_message(&payload)).unwrap();
        replies.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    assert!(replies[0]["connect"]["client"].is_string(), "{replies:?}");
    assert!(replies[1]["subscribe"].is_object(), "{replies:?}");

    // A plain subscriber beside it, on the same channel.
    let mut plain = connected(&hub, "plain").await;
    send(
        &mut plain,
        &json!({"id": 2, "subscribe": {"channel": "zipped"}}).to_string(),
    )
    .await;
    recv(&mut plain).await;

    // Publications (a burst: several may share a message) arrive
    // compressed, and inflate to what the plain client gets.
    let long = "compressible ".repeat(40);
    for i in 0..5 {
        let (status, _) = api(
            &hub,
            "publish",
            json!({"channel": "zipped", "data": {"i": i, "text": long}}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let mut zipped_bytes = 0;
    let mut got = Vec::new();
    while got.len() < 5 {
        let (first, payload) = read_frame(&mut tcp).await;
        assert_eq!(first & 0x40, 0x40, "compressed");
        zipped_bytes += payload.len();
        let text = String::from_utf8(inflate_message(&payload)).unwrap();
        got.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    let mut expected = Vec::new();
    while expected.len() < 5 {
        expected.extend(recv(&mut plain).await);
    }
    assert_eq!(got, expected);
    let plain_bytes: usize = expected.iter().map(|v| v.to_string().len()).sum();
    assert!(
        zipped_bytes * 4 < plain_bytes,
        "{zipped_bytes} vs {plain_bytes}"
    );

    // A compressed publish from the client reaches the plain one.
    let publish = json!({"id": 3, "publish": {"channel": "zipped", "data": {"from": "zip"}}});
    tcp.write_all(&ws_frame(
        0xc1,
        &deflate_message(publish.to_string().as_bytes()),
        true,
    ))
    .await
    .unwrap();
    let mut seen = false;
    while !seen {
        seen = recv(&mut plain)
            .await
            .iter()
            .any(|m| m["push"]["pub"]["data"]["from"] == "zip");
    }

    // Offers the hub declines, and no offer: plain frames.
    for offer in [Some("permessage-deflate; server_max_window_bits=10"), None] {
        let (_, head) = raw_dial(&hub.addr, offer).await;
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("sec-websocket-extensions"),
            "{offer:?}: {head}"
        );
    }
    // Compression off (the default): an offer is not taken up.
    let off = start(&[]);
    let (_, head) = raw_dial(&off.addr, Some("permessage-deflate")).await;
    assert!(!head
        .to_ascii_lowercase()
        .contains("sec-websocket-extensions"));
}

#[tokio::test]
async fn commands_centrifugo_refuses_close_with_bad_request() {
    let hub = start(&[]);
    let second_connect = json!({"id": 2, "connect": {"token": conn_token("x", 3600)}});
    let id_less = json!({"subscribe": {"channel": "a"}});
    let no_method = json!({"id": 3, "unknown_method": {}});
    // A pong when no ping was sent.
    let unsolicited_pong = json!({});
    for frame in [second_connect, id_less, no_method, unsolicited_pong] {
        let mut ws = connected(&hub, "x").await;
        send(&mut ws, &frame.to_string()).await;
        assert_eq!(closed(&mut ws).await.0, 3501, "{frame}");
    }
}

#[tokio::test]
async fn centrifugo_v6_api_forms_legacy_route_query_key_and_transport_errors() {
    let hub = start(&[]);
    let client = reqwest::Client::new();
    // The legacy form: `POST /api`, one command per line, one reply each.
    let body = [
        json!({"id": 1, "method": "publish", "params": {"channel": "legacy", "data": {"n": 1}}}),
        json!({"method": "history", "params": {"channel": "legacy", "limit": 10}}),
        json!({"id": 3, "method": "nope", "params": {}}),
        json!({"id": 4, "method": "publish", "params": {"channel": "ns:x", "data": 1}}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    let res = client
        .post(hub.url(&format!("/api?api_key={API_KEY}")))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let replies: Vec<Value> = res
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), 4, "{replies:?}");
    assert_eq!(
        (
            replies[0]["id"].clone(),
            replies[0]["result"]["offset"].clone()
        ),
        (json!(1), json!(1))
    );
    assert_eq!(replies[1]["result"]["publications"][0]["data"]["n"], 1);
    assert_eq!(replies[2]["error"]["code"], 104);
    assert_eq!(replies[3]["error"]["code"], 102);
    // A wrong key in the query is refused like a wrong header; a body that
    // holds no command is a bad request.
    let res = client
        .post(hub.url("/api?api_key=wrong"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = client
        .post(hub.url("/api"))
        .header("X-API-Key", API_KEY)
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // Transport error mode: the HTTP status says what failed.
    let transport = |path: &str, body: Value| {
        client
            .post(hub.url(path))
            .header("X-API-Key", API_KEY)
            .header("X-Centrifugo-Error-Mode", "transport")
            .json(&body)
            .send()
    };
    let res = transport("/api/publish", json!({"channel": "ns:x", "data": 1}))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], 102);
    let res = transport("/api/publish", json!({"channel": "x"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = transport(
        "/api/history",
        json!({"channel": "legacy", "limit": 1, "since": {"offset": 1, "epoch": "bogus"}}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 416);
    let res = transport("/api/publish", json!({"channel": "ok", "data": 1}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["result"]["offset"], 1);
}

#[tokio::test]
async fn configured_audience_and_issuer_are_required() {
    let hub = start(&[
        ("centrifugo.token_audience", "chat-app"),
        ("centrifugo.token_issuer", "https://auth.example"),
    ]);
    let now = tidings::time::now_secs();
    let token = |claims: Value| {
        tidings::auth::jwt::mint(&claims, SECRET, jsonwebtoken::Algorithm::HS256, false).unwrap()
    };
    let connect = |t: String| json!({"id": 1, "connect": {"token": t}}).to_string();
    let good = json!({"sub": "u", "exp": now + 60, "aud": ["other", "chat-app"], "iss": "https://auth.example"});
    let mut ws = dial(&hub, None).await.unwrap();
    send(&mut ws, &connect(token(good.clone()))).await;
    assert!(recv(&mut ws).await[0]["connect"]["client"].is_string());
    // A subscription token is held to the same claims.
    let sub =
        |claims: Value| json!({"id": 2, "subscribe": {"channel": "$a", "token": token(claims)}});
    send(
        &mut ws,
        &sub(json!({"sub": "u", "channel": "$a"})).to_string(),
    )
    .await;
    assert_eq!(recv(&mut ws).await[0]["error"]["code"], 103);
    for bad in [
        json!({"sub": "u", "exp": now + 60, "iss": "https://auth.example"}),
        json!({"sub": "u", "exp": now + 60, "aud": "elsewhere", "iss": "https://auth.example"}),
        json!({"sub": "u", "exp": now + 60, "aud": "chat-app"}),
        json!({"sub": "u", "exp": now + 60, "aud": "chat-app", "iss": "https://evil.example"}),
    ] {
        let mut ws = dial(&hub, None).await.unwrap();
        send(&mut ws, &connect(token(bad.clone()))).await;
        assert_eq!(closed(&mut ws).await.0, 3500, "{bad}");
    }
}
