//! The Mercure hub over SSE, against a running server: subscribe, publish,
//! matchers, private updates, reconnection, durability, subscriptions.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SHORT: Duration = Duration::from_millis(400);

#[tokio::test]
async fn publish_reaches_exact_and_pattern_subscribers_with_all_sse_fields() {
    let hub = Hub::start(&[]);
    let mut exact = open(&hub, "match=https%3A%2F%2Fe.com%2Fbooks%2F1", &[]).await;
    let mut pattern = open(
        &hub,
        &format!("match_urlpattern={}", enc("https://e.com/books/:id")),
        &[],
    )
    .await;
    let mut other = open(&hub, "match=unrelated", &[]).await;
    assert_eq!(exact.status, 200);
    assert_eq!(exact.headers["content-type"], "text/event-stream");

    let body = format!(
        "topic={}&data={}&id=book-1-v2&type=book&retry=2500",
        enc("https://e.com/books/1"),
        enc("line one\nline two\r\nline three")
    );
    let (status, headers, id) = post(&hub, Some(&publisher(&hub)), &body).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(id, "book-1-v2");

    for s in [&mut exact, &mut pattern] {
        let e = s.next().await;
        assert_eq!(e.id.as_deref(), Some("book-1-v2"));
        assert_eq!(e.event.as_deref(), Some("book"));
        assert_eq!(e.data, "line one\nline two\nline three");
    }
    assert!(exact
        .raw_text()
        .contains("retry: 2500\ndata: line one\ndata: line two\ndata: line three\n\n"));
    assert!(other.next_within(SHORT).await.is_none());
}

#[tokio::test]
async fn generated_ids_are_urn_uuids_and_order_is_kept() {
    let hub = Hub::start(&[]);
    let mut s = open(&hub, "match=seq", &[]).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(publish(&hub, "seq", &i.to_string()).await);
    }
    assert!(ids.iter().all(|id| id.starts_with("urn:uuid:")));
    for (i, id) in ids.iter().enumerate() {
        let e = s.next().await;
        assert_eq!(e.data, i.to_string());
        assert_eq!(e.id.as_ref(), Some(id));
    }
}

#[tokio::test]
async fn alternate_topics_reach_their_subscribers_once() {
    let hub = Hub::start(&[]);
    let mut both = open(&hub, "match=canonical&match=alternate", &[]).await;
    let mut alt = open(&hub, "match=alternate", &[]).await;
    let (status, _, _) = post(
        &hub,
        Some(&publisher(&hub)),
        "topic=canonical&topic=alternate&data=x",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(alt.next().await.data, "x");
    assert_eq!(both.next().await.data, "x");
    assert!(both.next_within(SHORT).await.is_none(), "delivered twice");
}

#[tokio::test]
async fn private_updates_reach_only_authorized_subscribers() {
    let hub = Hub::start(&[]);
    let books = token(&hub, &["subscribe"], &["https://e.com/books/:id"]);
    let user42 = token(&hub, &["subscribe"], &["https://e.com/users/42/:rest"]);
    let q = format!("match_urlpattern={}", enc("https://e.com/books/:id"));
    let mut anonymous = open(&hub, &q, &[]).await;
    let auth = format!("Bearer {books}");
    let mut reader = open(&hub, &q, &[("authorization", &auth)]).await;
    let cookie = format!("__Secure-mercure_access_token={user42}");
    let mut via_alternate = open(&hub, &q, &[("cookie", &cookie)]).await;

    let body = format!(
        "topic={}&topic={}&data=secret&private=on",
        enc("https://e.com/books/1"),
        enc("https://e.com/users/42/books-1")
    );
    assert_eq!(post(&hub, Some(&publisher(&hub)), &body).await.0, 200);
    let body = format!(
        "topic={}&data=secret2&private",
        enc("https://e.com/books/2")
    );
    assert_eq!(post(&hub, Some(&publisher(&hub)), &body).await.0, 200);
    publish(&hub, "https://e.com/books/3", "public").await;

    assert_eq!(reader.next().await.data, "secret");
    assert_eq!(reader.next().await.data, "secret2");
    assert_eq!(reader.next().await.data, "public");
    // The alternate topic grants only the first private update.
    assert_eq!(via_alternate.next().await.data, "secret");
    assert_eq!(via_alternate.next().await.data, "public");
    assert_eq!(anonymous.next().await.data, "public");
}

#[tokio::test]
async fn reconnection_replays_exactly_what_was_missed() {
    let hub = Hub::start(&[]);
    let first = publish(&hub, "r", "1").await;
    publish(&hub, "elsewhere", "x").await;
    let second = publish(&hub, "r", "2").await;
    publish(&hub, "r", "3").await;

    // Last-Event-ID header.
    let mut s = open(&hub, "match=r", &[("last-event-id", &first)]).await;
    assert_eq!(s.headers["mercure-last-event-id"], first.as_str());
    assert_eq!(
        s.headers["last-event-id"],
        first.as_str(),
        "legacy header in compat mode"
    );
    assert_eq!(s.next().await.data, "2");
    assert_eq!(s.next().await.data, "3");
    publish(&hub, "r", "4").await;
    assert_eq!(s.next().await.data, "4", "live after replay");
    assert!(s.next_within(SHORT).await.is_none());

    // Query parameter, and the header wins over it.
    let mut s = open(
        &hub,
        &format!("match=r&last_event_id={}", enc(&second)),
        &[("last-event-id", &first)],
    )
    .await;
    assert_eq!(s.next().await.data, "2");
    let mut s = open(
        &hub,
        &format!("match=r&last_event_id={}", enc(&second)),
        &[],
    )
    .await;
    assert_eq!(s.next().await.data, "3");
    // Legacy parameter.
    let mut s = open(&hub, &format!("topic=r&lastEventID={}", enc(&second)), &[]).await;
    assert_eq!(s.next().await.data, "3");

    // earliest: everything stored.
    let mut s = open(&hub, "match=r&last_event_id=earliest", &[]).await;
    assert_eq!(s.headers["mercure-last-event-id"], "earliest");
    let got: Vec<String> = s.drain(SHORT).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, vec!["1", "2", "3", "4"]);

    // Unknown id: nothing replayed, `earliest` tells the client it may have lost updates.
    let mut s = open(&hub, "match=r&last_event_id=never-published", &[]).await;
    assert_eq!(s.headers["mercure-last-event-id"], "earliest");
    assert!(s.next_within(SHORT).await.is_none());
}

#[tokio::test]
async fn replay_rechecks_private_updates_against_the_current_token() {
    let hub = Hub::start(&[]);
    let start = publish(&hub, "p", "public-1").await;
    let body = "topic=p&data=private-1&private=on";
    assert_eq!(post(&hub, Some(&publisher(&hub)), body).await.0, 200);
    publish(&hub, "p", "public-2").await;
    let mut anon = open(&hub, &format!("match=p&last_event_id={}", enc(&start)), &[]).await;
    let got: Vec<String> = anon
        .drain(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(got, vec!["public-2"]);
    let auth = format!("Bearer {}", token(&hub, &["subscribe"], &["p"]));
    let mut reader = open(
        &hub,
        &format!("match=p&last_event_id={}", enc(&start)),
        &[("authorization", &auth)],
    )
    .await;
    let got: Vec<String> = reader
        .drain(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(got, vec!["private-1", "public-2"]);
}

#[tokio::test]
async fn history_survives_a_restart_on_the_disk_store() {
    let mut hub = Hub::start(&[]);
    let first = publish(&hub, "durable", "before-1").await;
    publish(&hub, "durable", "before-2").await;
    hub.restart();
    publish(&hub, "durable", "after-1").await;
    let mut s = open(&hub, "match=durable", &[("last-event-id", &first)]).await;
    let got: Vec<String> = s.drain(SHORT).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, vec!["before-2", "after-1"]);
}

#[tokio::test]
async fn memory_history_is_bounded_by_size() {
    let hub = Hub::start(&[("history.engine", "memory"), ("history.size", "3")]);
    for i in 1..=5 {
        publish(&hub, "ring", &i.to_string()).await;
    }
    let mut s = open(&hub, "match=ring&last_event_id=earliest", &[]).await;
    let got: Vec<String> = s.drain(SHORT).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, vec!["3", "4", "5"]);
}

#[tokio::test]
async fn disk_history_is_bounded_by_size_and_ttl() {
    let hub = Hub::start(&[
        ("history.size", "2"),
        ("history.ttl", "1s"),
        ("history.sweep_interval", "200ms"),
    ]);
    let first = publish(&hub, "ttl", "1").await;
    publish(&hub, "ttl", "2").await;
    publish(&hub, "ttl", "3").await;
    let mut s = open(&hub, "match=ttl&last_event_id=earliest", &[]).await;
    let got: Vec<String> = s.drain(SHORT).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, vec!["2", "3"]);
    // The trimmed id is unknown now.
    let s = open(
        &hub,
        &format!("match=ttl&last_event_id={}", enc(&first)),
        &[],
    )
    .await;
    assert_eq!(s.headers["mercure-last-event-id"], "earliest");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut s = open(&hub, "match=ttl&last_event_id=earliest", &[]).await;
    assert!(
        s.next_within(SHORT).await.is_none(),
        "expired history was not reclaimed"
    );
}

#[tokio::test]
async fn legacy_subscribers_and_publishers_still_work() {
    let hub = Hub::start(&[]);
    // URI template selector, legacy token in the `authorization` parameter.
    let legacy = tidings::auth::jwt::mint(
        &json!({"mercure": {"subscribe": ["https://e.com/books/{id}"], "publish": ["*"]}}),
        KEY,
        jsonwebtoken::Algorithm::HS256,
        false,
    )
    .unwrap();
    let mut s = open(
        &hub,
        &format!(
            "topic={}&authorization={}",
            enc("https://e.com/books/{id}"),
            legacy
        ),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    let cookie = format!("mercureAuthorization={legacy}");
    let mut via_cookie = open(&hub, "topic=*", &[("cookie", &cookie)]).await;
    let body = format!(
        "topic={}&data=old-style&private=on",
        enc("https://e.com/books/9")
    );
    let (status, _, _) = post(&hub, Some(&legacy), &body).await;
    assert_eq!(status, 200);
    assert_eq!(s.next().await.data, "old-style");
    assert_eq!(via_cookie.next().await.data, "old-style");
}

#[tokio::test]
async fn compatibility_mode_can_be_switched_off() {
    let hub = Hub::start(&[("mercure.compat", "false")]);
    let s = open(&hub, "topic=a", &[]).await;
    assert_eq!(s.status, 400);
    let legacy = tidings::auth::jwt::mint(
        &json!({"mercure": {"publish": ["*"]}}),
        KEY,
        jsonwebtoken::Algorithm::HS256,
        false,
    )
    .unwrap();
    assert_eq!(post(&hub, Some(&legacy), "topic=a&data=x").await.0, 401);
}

#[tokio::test]
async fn query_method_carries_matchers_in_the_body() {
    let hub = Hub::start(&[]);
    let res = reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(b"QUERY").unwrap(),
            hub.hub_url(),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body("match=from-body")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    publish(&hub, "from-body", "via QUERY").await;
    let mut parser = tidings::protocol::sse::Parser::default();
    let mut got = Vec::new();
    while got.is_empty() {
        let chunk =
            tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut body))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        got.extend(parser.feed(&chunk));
    }
    assert_eq!(got[0].data, "via QUERY");
}

#[tokio::test]
async fn subscription_events_and_api() {
    let hub = Hub::start(&[]);
    let watcher = format!(
        "Bearer {}",
        tidings::auth::jwt::mint(
            &claims(
                &hub,
                json!([detail(
                    &["subscribe"],
                    &["/.well-known/mercure/subscriptions{/rest}*", "*"]
                ),]),
                3600
            ),
            KEY,
            jsonwebtoken::Algorithm::HS256,
            true
        )
        .unwrap()
    );
    let mut events = open(
        &hub,
        &format!(
            "match_urlpattern={}",
            enc("/.well-known/mercure/subscriptions/:type/:match/:subscriber")
        ),
        &[("authorization", &watcher)],
    )
    .await;
    let payload_token = tidings::auth::jwt::mint(
        &claims(&hub, json!([{"type": "https://mercure.rocks/authorization-detail", "actions": ["subscribe"],
            "topics": [{"match": "https://e.com/:x", "match_type": "urlpattern"}], "payload": {"room": "blue"}}]), 3600),
        KEY,
        jsonwebtoken::Algorithm::HS256,
        true,
    )
    .unwrap();
    let auth = format!("Bearer {payload_token}");
    let s = open(
        &hub,
        &format!("match_urlpattern={}", enc("https://e.com/:x")),
        &[("authorization", &auth)],
    )
    .await;
    // The watcher first sees its own subscriptions; find the new one.
    let (e, doc) = loop {
        let e = events.next().await;
        let doc: Value = serde_json::from_str(&e.data).unwrap();
        if doc["match"] == "https://e.com/:x" {
            break (e, doc);
        }
    };
    assert_eq!(e.event.as_deref(), Some("mercure"));
    assert_eq!(doc["type"], "subscription");
    assert_eq!(doc["match_type"], "urlpattern");
    assert_eq!(doc["match"], "https://e.com/:x");
    assert_eq!(doc["active"], true);
    assert_eq!(doc["payload"]["room"], "blue");
    assert_eq!(
        e.id.as_deref().map(|i| i.starts_with("urn:uuid:")),
        Some(true)
    );
    let sub_topic = doc["id"].as_str().unwrap().to_owned();
    assert!(sub_topic.starts_with(
        "/.well-known/mercure/subscriptions/urlpattern/https%3A%2F%2Fe.com%2F%3Ax/urn%3Auuid%3A"
    ));

    // The API lists it, with the cursor in the Link header.
    let client = reqwest::Client::new();
    let res = client
        .get(hub.url("/.well-known/mercure/subscriptions"))
        .header("authorization", &watcher)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["link"]
        .to_str()
        .unwrap()
        .contains("rel=\"mercure\"; last-event-id=\"urn:uuid:"));
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["type"], "subscriptions");
    assert!(list["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["id"] == sub_topic.as_str()));
    let one: Value = client
        .get(hub.url(&sub_topic))
        .header("authorization", &watcher)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["payload"]["room"], "blue");
    let missing = client
        .get(hub.url("/.well-known/mercure/subscriptions/exact/nope/nobody"))
        .header("authorization", &watcher)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // Without a grant on the subscriptions namespace: 403; without a token: 401.
    let narrow = format!(
        "Bearer {}",
        token(&hub, &["subscribe"], &["https://e.com/a"])
    );
    let res = client
        .get(hub.url("/.well-known/mercure/subscriptions"))
        .header("authorization", narrow)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = client
        .get(hub.url("/.well-known/mercure/subscriptions"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // Closing the connection publishes `active: false`.
    drop(s);
    let e = events.next().await;
    let doc: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(doc["active"], false);
    assert_eq!(doc["id"], sub_topic.as_str());
}

#[tokio::test]
async fn subscription_events_are_private() {
    let hub = Hub::start(&[]);
    let mut anon = open(&hub, "match=*", &[]).await;
    let _other = open(&hub, "match=x", &[]).await;
    publish(&hub, "x", "public").await;
    let e = anon.next().await;
    assert_eq!(
        e.data, "public",
        "an anonymous wildcard subscriber saw a subscription event"
    );
}

#[tokio::test]
async fn protected_resource_metadata() {
    let hub = Hub::start(&[]);
    let doc: Value =
        reqwest::get(hub.url("/.well-known/oauth-protected-resource/.well-known/mercure"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(doc["resource"], hub.hub_url());
    assert_eq!(
        doc["authorization_details_types_supported"][0],
        "https://mercure.rocks/authorization-detail"
    );
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    assert_eq!(doc["mercure_cookie"], "__Secure-mercure_access_token");
    assert_eq!(doc["mercure_subscriptions"], true);
}

#[tokio::test]
async fn cors_allows_listed_origins_with_credentials() {
    let hub = Hub::start(&[("mercure.cors_origins", "https://app.example")]);
    let client = reqwest::Client::new();
    let res = client
        .request(reqwest::Method::OPTIONS, hub.hub_url())
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(res.headers()["access-control-allow-credentials"], "true");
    let s = open(&hub, "match=c", &[("origin", "https://app.example")]).await;
    assert_eq!(
        s.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let s = open(&hub, "match=c", &[("origin", "https://evil.example")]).await;
    assert!(s.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn anonymous_subscribers_can_be_refused() {
    let hub = Hub::start(&[("mercure.anonymous", "false")]);
    let s = open(&hub, "match=a", &[]).await;
    assert_eq!(s.status, 401);
    assert!(s.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let auth = format!("Bearer {}", token(&hub, &["subscribe"], &["a"]));
    assert_eq!(
        open(&hub, "match=a", &[("authorization", &auth)])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn heartbeat_and_retry_are_sent() {
    let hub = Hub::start(&[
        ("mercure.heartbeat", "200ms"),
        ("mercure.sse_retry", "1234"),
    ]);
    let mut s = open(&hub, "match=quiet", &[]).await;
    assert!(s.next_within(Duration::from_millis(700)).await.is_none());
    let text = s.raw_text();
    assert!(text.starts_with(":\n\nretry: 1234\n\n"), "{text:?}");
    assert!(
        text.matches(":\n\n").count() >= 3,
        "no heartbeats: {text:?}"
    );
}

#[tokio::test]
async fn stream_ends_when_the_token_expires() {
    let hub = Hub::start(&[]);
    let t = tidings::auth::jwt::mint(
        &claims(&hub, json!([detail(&["subscribe"], &["*"])]), 2),
        KEY,
        jsonwebtoken::Algorithm::HS256,
        true,
    )
    .unwrap();
    let auth = format!("Bearer {t}");
    let mut s = open(&hub, "match=e", &[("authorization", &auth)]).await;
    assert!(s.drain(Duration::from_secs(5)).await.is_empty());
    assert!(s.ended, "the stream outlived its token");
    assert!(s.raw_text().contains("expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_without_hurting_others() {
    const N: usize = 120;
    let hub = Hub::start(&[
        ("hub.queue_size", "64"),
        ("history.engine", "memory"),
        ("mercure.max_body", "2000000"),
        // The queue, not the write deadline, is what this test is about.
        ("limits.write_timeout", "120s"),
    ]);
    let mut stalled = open(&hub, "match=big", &[]).await;
    let mut reading = open(&hub, "match=big", &[]).await;
    let payload = "x".repeat(512 * 1024);
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        for n in 1..=N {
            let e = reading
                .next_within(Duration::from_secs(10))
                .await
                .expect("reading subscriber starved");
            assert_eq!(e.data.len(), 512 * 1024);
            let _ = progress_tx.send(n);
        }
        N
    });
    // 120 × 512 KiB overflows the stalled reader's socket buffers and its
    // queue; the publisher stays at most 8 ahead of the reading subscriber,
    // so that one never comes near its limit whatever the machine's speed.
    for i in 0..N {
        publish(&hub, "big", &payload).await;
        progress.wait_for(|&n| n + 8 > i).await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), N);
    // The stalled one was dropped: it reads what was buffered, then the reason.
    let got = stalled.drain(Duration::from_secs(10)).await.len();
    assert!(stalled.ended);
    assert!(got < N, "the stalled subscriber was never dropped");
    assert!(
        stalled.raw_text().contains("slow consumer"),
        "no slow-consumer reason"
    );
}

#[tokio::test]
async fn graceful_shutdown_ends_streams_cleanly() {
    let mut hub = Hub::start(&[]);
    let mut s = open(&hub, "match=bye", &[]).await;
    publish(&hub, "bye", "last").await;
    assert_eq!(s.next().await.data, "last");
    assert!(hub.stop(), "exit status was not success");
    s.drain(Duration::from_secs(3)).await;
    assert!(s.ended);
    assert!(s.raw_text().contains("shutting down"));
}

#[tokio::test]
async fn rs256_keys_from_files() {
    let public = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa_public.pem");
    let hub = Hub::start(&[
        ("mercure.algorithm", "RS256"),
        ("mercure.publisher_key_file", public),
        ("mercure.subscriber_key_file", public),
    ]);
    let private = include_str!("fixtures/rsa_private.pem");
    let sign = |details: Value| {
        tidings::auth::jwt::mint(
            &claims(&hub, details, 60),
            private,
            jsonwebtoken::Algorithm::RS256,
            true,
        )
        .unwrap()
    };
    let auth = format!("Bearer {}", sign(json!([detail(&["subscribe"], &["rs"])])));
    let mut s = open(&hub, "match=rs", &[("authorization", &auth)]).await;
    assert_eq!(s.status, 200);
    let (status, _, _) = post(
        &hub,
        Some(&sign(json!([detail(&["publish"], &["rs"])]))),
        "topic=rs&data=signed&private=on",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(s.next().await.data, "signed");
    // The HMAC key of the default config no longer works.
    assert_eq!(
        post(&hub, Some(&publisher(&hub)), "topic=rs&data=x")
            .await
            .0,
        401
    );
}

/// Reads from `tcp` until `pattern` has arrived (within 5 s); returns all
/// that was read.
async fn read_until(tcp: &mut tokio::net::TcpStream, pattern: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).contains(pattern) {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!(
                "{pattern:?} not received ({other:?}): {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A subscriber's request as `EventSource` sends it, on a raw connection.
fn sse_request(query: &str) -> String {
    format!(
        "GET /.well-known/mercure?{query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
}

/// The gauge `name` (summed over its labels) in `/metrics`.
async fn gauge(hub: &Hub, name: &str) -> f64 {
    let text = reqwest::get(hub.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn event_streams_on_plain_connections_are_chunked_and_their_end_is_noticed() {
    use tokio::io::AsyncWriteExt;
    let hub = Hub::start(&[]);
    let mut tcp = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
    tcp.write_all(sse_request("topic=plain").as_bytes())
        .await
        .unwrap();
    // The head, then the opening comment as the first chunk.
    let head = read_until(&mut tcp, "3\r\n:\n\n\r\n").await;
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(lower.contains("content-type: text/event-stream"), "{head}");
    assert!(lower.contains("transfer-encoding: chunked"), "{head}");
    assert!(!lower.contains("content-length"), "{head}");
    assert!(lower.contains("\r\ndate: "), "{head}");
    // Each publication is one chunk around its event.
    publish(&hub, "plain", "one").await;
    let event = read_until(&mut tcp, "data: one\n\n\r\n").await;
    let size = event.split("\r\n").next().unwrap();
    let body = event[size.len() + 2..event.len() - 2].to_owned();
    assert_eq!(
        usize::from_str_radix(size, 16).unwrap(),
        body.len(),
        "{event:?}"
    );
    assert!(
        body.starts_with("id: ") && body.ends_with("data: one\n\n"),
        "{body:?}"
    );
    // The client goes away: its subscription goes with it.
    assert_eq!(gauge(&hub, "tidings_subscriptions").await, 1.0);
    drop(tcp);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gauge(&hub, "tidings_subscriptions").await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscription outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_refused_stream_is_answered_whole_and_its_connection_serves_on() {
    use tokio::io::AsyncWriteExt;
    let hub = Hub::start(&[]);
    let mut tcp = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
    // No matcher: 400 with a length, on a connection that stays open.
    tcp.write_all(sse_request("nothing=here").as_bytes())
        .await
        .unwrap();
    let answer = read_until(&mut tcp, "\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let length: usize = answer
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("a length");
    let head_len = answer.find("\r\n\r\n").unwrap() + 4;
    if answer.len() < head_len + length {
        read_until(&mut tcp, "\n").await;
    }
    // The next request on the same connection is served (by hyper).
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let next = read_until(&mut tcp, "ok\n").await;
    assert!(next.contains("HTTP/1.1 200"), "{next}");
}

#[tokio::test]
async fn streams_without_an_event_stream_accept_work_too() {
    // curl and most scripts send no `Accept`: hyper serves them the same stream.
    let hub = Hub::start(&[]);
    let res = reqwest::get(format!("{}?topic=curl", hub.hub_url()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut s = Stream::from_response(res);
    publish(&hub, "curl", "hello").await;
    assert_eq!(s.next().await.data, "hello");
}

#[tokio::test]
async fn strangers_get_few_patterns_and_token_holders_many() {
    let hub = Hub::start(&[]);
    let patterns: Vec<String> = (0..11)
        .map(|i| {
            format!(
                "match_urlpattern={}",
                enc(&format!("https://e.com/{i}/:a/:b"))
            )
        })
        .collect();
    let query = patterns.join("&");
    let refused = open(&hub, &query, &[]).await;
    assert_eq!(refused.status, 400);
    let ten = patterns[..10].join("&");
    assert_eq!(open(&hub, &ten, &[]).await.status, 200);
    // Exact matchers do not count.
    let exact = format!("{ten}&match=plain");
    assert_eq!(open(&hub, &exact, &[]).await.status, 200);
    let token = token(&hub, &["subscribe"], &["*"]);
    let auth = format!("Bearer {token}");
    let mut s = open(&hub, &query, &[("authorization", &auth)]).await;
    assert_eq!(s.status, 200);
    publish(&hub, "https://e.com/10/x/y", "through the eleventh").await;
    assert_eq!(s.next().await.data, "through the eleventh");
}
