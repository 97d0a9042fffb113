//! Limits and overload: each limit refuses with the protocol's own error,
//! and the clients already connected keep receiving everything.

mod common;

use std::time::{Duration, Instant};

use common::ws::*;
use common::*;
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A plain GET on a fresh TCP connection from `client` (a loopback address);
/// returns the status line and the whole answer.
async fn raw_get(hub: &Hub, client: &str, path: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{client}:0").parse().unwrap()).unwrap();
    let mut tcp = socket.connect(hub.addr.parse().unwrap()).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer)).await;
    answer
}

/// Reads until the peer closes; returns how long that took (None: not
/// within `wait`).
async fn closed_within(tcp: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + wait).into(), tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Subscribes a Centrifugo client to `channel`.
async fn subscribed(hub: &Hub, user: &str, channel: &str) -> Ws {
    let mut ws = connected(hub, user).await;
    send(
        &mut ws,
        &json!({"id": 2, "subscribe": {"channel": channel}}).to_string(),
    )
    .await;
    assert!(recv(&mut ws).await[0]["subscribe"].is_object());
    ws
}

/// The data of the publications in the next frame pushed to `ws` that
/// carries any (a frame may carry several: the hub batches writes).
async fn next_pubs(ws: &mut Ws) -> Vec<serde_json::Value> {
    loop {
        let pubs: Vec<_> = recv(ws)
            .await
            .iter()
            .filter_map(|m| m["push"]["pub"].as_object().map(|p| p["data"].clone()))
            .collect();
        if !pubs.is_empty() {
            return pubs;
        }
    }
}

/// The next publication's data pushed to `ws`, when only one is expected.
async fn next_pub(ws: &mut Ws) -> serde_json::Value {
    next_pubs(ws).await.remove(0)
}

#[tokio::test]
async fn total_and_per_ip_connection_limits_refuse_only_new_connections() {
    let hub = start(&[
        ("limits.max_connections", "4"),
        ("limits.max_connections_per_ip", "3"),
    ]);
    // Two live clients, one per protocol, from 127.0.0.1.
    let mut sse = open(&hub, "match=room", &[]).await;
    let mut ws = subscribed(&hub, "u1", "room").await;
    let idle = TcpStream::connect(&hub.addr).await.unwrap();

    // A fourth connection from the same address: 429, per-IP limit.
    let answer = raw_get(&hub, "127.0.0.1", "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("max_connections_per_ip"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 5"));
    // Another address still gets in...
    assert!(raw_get(&hub, "127.0.0.2", "/healthz")
        .await
        .ends_with("ok\n"));
    // ...until the total is reached: 503 for everybody. (The connection
    // just closed may hold its place a moment longer, so the fourth place
    // is taken by a connection that was answered 200 and kept alive; a
    // refused one is answered only once it sends a request, so silence
    // would prove nothing.)
    let _held = loop {
        let other = tokio::net::TcpSocket::new_v4().unwrap();
        other.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        let mut held = other.connect(hub.addr.parse().unwrap()).await.unwrap();
        held.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        held.read_exact(&mut head).await.unwrap();
        if head.starts_with(b"HTTP/1.1 200") {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let answer = raw_get(&hub, "127.0.0.4", "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("connection limit"), "{answer}");
    assert_eq!(dial(&hub, None).await.err(), Some(503));

    // Freeing places lets a publisher in; the open clients got nothing wrong.
    drop(idle);
    drop(_held);
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let body = "topic=room&data=after";
        status = post(&hub, Some(&publisher(&hub)), body).await.0;
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200);
    assert_eq!(sse.next().await.data, "after");
    assert_eq!(next_pub(&mut ws).await, json!("after"));
}

#[tokio::test]
async fn per_user_connection_limit_closes_with_3504() {
    let hub = start(&[("limits.max_connections_per_user", "2")]);
    let _a = connected(&hub, "alice").await;
    let b = connected(&hub, "alice").await;
    let mut third = dial(&hub, None).await.unwrap();
    send(
        &mut third,
        &json!({"id": 1, "connect": {"token": conn_token("alice", 3600)}}).to_string(),
    )
    .await;
    assert_eq!(closed(&mut third).await, (3504, "connection limit".into()));
    // Other users are not affected; a freed place can be taken again.
    let _bob = connected(&hub, "bob").await;
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _again = connected(&hub, "alice").await;
}

#[tokio::test]
async fn client_publish_rate_answers_111_and_keeps_the_connection() {
    let hub = start(&[("limits.publish_rate", "5")]);
    let mut reader = subscribed(&hub, "reader", "rate").await;
    let mut writer = connected(&hub, "writer").await;
    let frame: Vec<String> = (0..20)
        .map(|i| json!({"id": 10 + i, "publish": {"channel": "rate", "data": i}}).to_string())
        .collect();
    send(&mut writer, &frame.join("\n")).await;
    let mut replies = Vec::new();
    while replies.len() < 20 {
        replies.extend(recv(&mut writer).await);
    }
    let ok = replies.iter().filter(|r| r["publish"].is_object()).count();
    let limited = replies
        .iter()
        .filter(|r| r["error"]["code"] == 111 && r["error"]["message"] == "too many requests")
        .count();
    assert_eq!((ok, limited), (5, 15), "{replies:?}");
    let mut got = Vec::new();
    while got.len() < 5 {
        got.extend(next_pubs(&mut reader).await);
    }
    assert_eq!(got, (0..5).map(|i| json!(i)).collect::<Vec<_>>());
    // The bucket refills: the same connection publishes again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(
        &mut writer,
        &json!({"id": 99, "publish": {"channel": "rate", "data": "later"}}).to_string(),
    )
    .await;
    assert!(recv(&mut writer).await[0]["publish"].is_object());
    assert_eq!(next_pub(&mut reader).await, json!("later"));
}

#[tokio::test]
async fn api_publish_rate_is_per_credential_with_429() {
    let hub = start(&[("limits.api_publish_rate", "3")]);
    let mut sse = open(&hub, "match=api", &[]).await;
    let mut api_statuses = Vec::new();
    for i in 0..5 {
        let body = json!({"channel": "api", "data": {"n": i}});
        api_statuses.push(api(&hub, "publish", body).await.0);
    }
    assert_eq!(api_statuses, [200, 200, 200, 429, 429]);
    // Mercure publisher tokens are credentials of their own.
    let first = publisher(&hub);
    let second = token(&hub, &["publish"], &["api"]);
    let mut mercure = Vec::new();
    for i in 0..4 {
        let (status, headers, body) =
            post(&hub, Some(&first), &format!("topic=api&data={i}")).await;
        if status == 429 {
            assert_eq!(headers["retry-after"], "1");
            assert!(body.contains("api_publish_rate"), "{body}");
        }
        mercure.push(status);
    }
    assert_eq!(mercure, [200, 200, 200, 429]);
    assert_eq!(post(&hub, Some(&second), "topic=api&data=x").await.0, 200);
    // Exactly the accepted publications arrived.
    let got: Vec<String> = sse
        .drain(Duration::from_millis(500))
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(got.len(), 7, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_bytes_limit_drops_a_stalled_client_with_3008_only() {
    const N: usize = 60;
    let hub = start(&[
        ("limits.queue_bytes", "2000000"),
        ("history.engine", "memory"),
    ]);
    let mut stalled = subscribed(&hub, "stalled", "big").await;
    let mut reading = subscribed(&hub, "reading", "big").await;
    let payload = "x".repeat(256 * 1024);
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            for data in next_pubs(&mut reading).await {
                assert_eq!(data.as_str().map(str::len), Some(256 * 1024));
                n += 1;
            }
            let _ = progress_tx.send(n);
        }
    });
    // 60 × 256 KiB (15 MiB) is far more than the stalled client's socket
    // buffers and 2 MB queue, and far fewer than hub.queue_size (4096):
    // only the byte limit can drop it.
    for i in 0..N {
        let (status, _) = api(&hub, "publish", json!({"channel": "big", "data": payload})).await;
        assert_eq!(status, 200);
        progress.wait_for(|&n| n + 4 > i).await.unwrap();
    }
    reader.await.unwrap();
    let mut pubs = 0;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => pubs += t.matches("\"pub\"").count(),
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                break (u16::from(f.code), f.reason.to_string())
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close, (3008, "slow".into()));
    assert!(pubs < N, "the stalled client got everything: {pubs}");
}

#[tokio::test]
async fn slow_headers_are_cut_at_header_timeout_without_hurting_others() {
    let hub = start(&[("limits.header_timeout", "1s")]);
    let mut sse = open(&hub, "match=calm", &[]).await;
    // Slowloris: a header line every 200 ms, never the blank line.
    let mut slow = TcpStream::connect(&hub.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let drip = async {
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), drip).await;
    let took = closed_within(&mut slow, Duration::from_secs(3)).await;
    assert!(took.is_some(), "the slowloris connection is still open");
    // A connection that never sends a byte is cut too.
    let mut silent = TcpStream::connect(&hub.addr).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(took.is_some_and(|t| t < Duration::from_secs(3)), "{took:?}");
    publish(&hub, "calm", "still here").await;
    assert_eq!(sse.next().await.data, "still here");
}

#[tokio::test]
async fn idle_connections_are_closed_but_streams_live_on() {
    let hub = start(&[
        ("limits.idle_timeout", "2s"),
        ("limits.header_timeout", "10s"),
        ("mercure.heartbeat", "500ms"),
        ("centrifugo.ping_interval", "1s"),
    ]);
    let mut sse = open(&hub, "match=alive", &[]).await;
    let mut ws = subscribed(&hub, "u", "alive").await;
    // A keep-alive connection after its request: closed once idle.
    let mut tcp = TcpStream::connect(&hub.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let took = closed_within(&mut tcp, Duration::from_secs(6)).await;
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(1500)),
        "idle keep-alive connection: {took:?}"
    );
    // The streams outlived two idle timeouts and still deliver.
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish(&hub, "alive", "yes").await;
    assert_eq!(sse.next().await.data, "yes");
    assert_eq!(next_pub(&mut ws).await, json!("yes"));
}

#[tokio::test]
async fn limits_are_validated_with_the_key_named() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--set", "limits.idle_timeout=5s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.idle_timeout"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--set", "tls.cert_file=/nonexistent.pem"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("tls.key_file"),
        "{err}"
    );
}

#[tokio::test]
async fn oversized_publications_are_refused_in_each_protocol() {
    let hub = start(&[
        ("mercure.max_body", "1000"),
        ("centrifugo.max_frame", "1000"),
    ]);
    let mut sse = open(&hub, "match=size", &[]).await;
    let big = "x".repeat(2000);
    let (status, _, body) = post(
        &hub,
        Some(&publisher(&hub)),
        &format!("topic=size&data={big}"),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let mut ws = connected(&hub, "u").await;
    send(
        &mut ws,
        &json!({"id": 5, "publish": {"channel": "size", "data": big}}).to_string(),
    )
    .await;
    let (code, reason) = closed(&mut ws).await;
    assert!(code == 1009 || code == 3501, "{code} {reason}");
    publish(&hub, "size", "small").await;
    assert_eq!(sse.next().await.data, "small");
    let _ = ws.next().await;
}
