//! A bounded soak: connections churn over both protocols while publications
//! flow, then the hub must be back where it started — no connection,
//! subscription, channel or user left behind, memory back near its
//! baseline, and every publication delivered to the clients that stayed.
//!
//! `TIDINGS_SOAK_SECS` sets the length (CI runs the default 20 s; the
//! documented run in docs/security.md is 600 s).

mod common;

use std::time::{Duration, Instant};

use common::ws::*;
use common::*;
use serde_json::json;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The hub's gauges that must return to zero, by name.
async fn gauges(hub: &Hub) -> Vec<(String, f64)> {
    let text = reqwest::get(hub.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let wanted = [
        "tidings_connections",
        "tidings_subscriptions",
        "tidings_channels",
        "tidings_centrifugo_clients",
        "tidings_centrifugo_users",
        "tidings_tcp_connections",
    ];
    text.lines()
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            wanted.contains(&name)
        })
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Opens `n` SSE streams and `n` WebSocket clients on `channel`, reads one
/// publication on each, and closes them all.
async fn churn_once(hub: &Hub, round: usize, n: usize) {
    let channel = format!("churn{}", round % 7);
    let mut streams = Vec::new();
    for _ in 0..n {
        streams.push(open(hub, &format!("match={channel}"), &[]).await);
    }
    let mut sockets = Vec::new();
    for i in 0..n {
        let mut ws = connected(hub, &format!("user{}", i % 5)).await;
        send(
            &mut ws,
            &json!({"id": 2, "subscribe": {"channel": channel}}).to_string(),
        )
        .await;
        recv(&mut ws).await;
        sockets.push(ws);
    }
    publish(hub, &channel, &format!("round {round}")).await;
    for s in &mut streams {
        assert_eq!(s.next().await.data, format!("round {round}"));
    }
    for ws in &mut sockets {
        let got = recv(ws).await;
        assert_eq!(got[0]["push"]["pub"]["data"], format!("round {round}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_nothing_behind() {
    let secs: u64 = std::env::var("TIDINGS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    // Swept every 5 s, Mercure subscription events (kept 60 s) reach their
    // steady level about a minute in.
    let hub = start(&[
        ("history.engine", "memory"),
        ("history.sweep_interval", "5s"),
    ]);
    // A steady subscriber through the whole run, and a steady publisher.
    let mut steady = open(&hub, "match=steady", &[]).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = {
        let (url, token, stop) = (hub.hub_url(), publisher(&hub), stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut sent = 0usize;
            while !stop.is_cancelled() {
                let res = client
                    .post(&url)
                    .bearer_auth(&token)
                    .form(&[("topic", "steady"), ("data", &sent.to_string())])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        })
    };
    let reader = tokio::spawn(async move {
        let mut next = 0usize;
        while let Some(e) = steady.next_within(Duration::from_secs(5)).await {
            assert_eq!(
                e.data,
                next.to_string(),
                "steady subscriber: lost or reordered"
            );
            next += 1;
        }
        next
    });

    // The baseline is the RSS halfway through: by then allocator arenas,
    // pools and the 60 s of Mercure subscription events (history::EPHEMERAL)
    // are at their steady level, so the second half must not grow.
    let start = Instant::now();
    let (mut rounds, mut baseline) = (0, None);
    while start.elapsed() < Duration::from_secs(secs) {
        churn_once(&hub, rounds, 50).await;
        rounds += 1;
        if baseline.is_none() && start.elapsed() >= Duration::from_secs(secs / 2) {
            baseline = Some(rss_kib(hub.pid()));
        }
        if rounds % 100 == 0 {
            eprintln!("soak: round {rounds}, RSS {} KiB", rss_kib(hub.pid()));
        }
    }
    let baseline = baseline.unwrap_or_default();
    stop.cancel();
    let sent = publisher.await.unwrap();
    let received = reader.await.unwrap();
    assert_eq!(received, sent, "the steady subscriber missed publications");

    // Everything the churn opened is gone.
    let mut left = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = gauges(&hub)
            .await
            .into_iter()
            // The /metrics request itself holds one TCP connection.
            .filter(|(name, v)| {
                *v > if name == "tidings_tcp_connections" {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        if left.is_empty() {
            break;
        }
    }
    assert!(
        left.is_empty(),
        "left behind after {rounds} rounds: {left:?}"
    );
    let end = rss_kib(hub.pid());
    eprintln!(
        "soak: {rounds} rounds × 100 connections in {:?}, {sent} steady publications; RSS {baseline} KiB → {end} KiB",
        start.elapsed()
    );
    assert!(
        end < baseline + baseline / 8 + 8 * 1024,
        "memory did not return near its baseline: {baseline} KiB → {end} KiB"
    );
}
