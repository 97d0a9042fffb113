//! Scratch measurements (not committed): connection churn and replay cost
//! against a running hub given by env vars.
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn rss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}
fn cpu(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn() {
    let Ok(base) = std::env::var("HUB") else {
        return;
    };
    let pid: u32 = std::env::var("HUB_PID").unwrap().parse().unwrap();
    let secret = std::env::var("SECRET").unwrap();
    let api = std::env::var("API_KEY").unwrap();
    let token = tidings::auth::jwt::mint(
        &json!({"sub": "churn"}),
        &secret,
        jsonwebtoken::Algorithm::HS256,
        false,
    )
    .unwrap();
    let http = reqwest::Client::new();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 50 publications/s.
    let pubber = {
        let (http, base, api, stop) = (http.clone(), base.clone(), api.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = http
                    .post(format!("{base}/api/publish"))
                    .header("x-api-key", &api)
                    .json(&json!({"channel": format!("churn-{}", i % 50), "data": {"i": i}}))
                    .send()
                    .await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    println!("start: rss {:?} KB, cpu {:.1}s", rss(pid), cpu(pid));
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        let end = Instant::now() + Duration::from_secs(45);
        let counts = std::sync::Arc::new([
            std::sync::atomic::AtomicU64::new(0),
            std::sync::atomic::AtomicU64::new(0),
        ]);
        let mut tasks = Vec::new();
        for w in 0..40u64 {
            let (base, token, counts, http) =
                (base.clone(), token.clone(), counts.clone(), http.clone());
            tasks.push(tokio::spawn(async move {
                let mut k = w;
                while Instant::now() < end {
                    k += 40;
                    let mode = std::env::var("CHURN").unwrap_or_default();
                    if mode == "sse" || (mode.is_empty() && w % 10 == 0) {
                        // SSE
                        let url = format!("{base}/.well-known/mercure?match=churn-{}", k % 50);
                        if let Ok(res) = http
                            .get(url)
                            .header("accept", "text/event-stream")
                            .send()
                            .await
                        {
                            let mut b = res.bytes_stream();
                            let _ = tokio::time::timeout(Duration::from_millis(50), b.next()).await;
                            counts[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    } else {
                        let url = format!("{}/connection/websocket", base.replace("http", "ws"));
                        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
                            continue;
                        };
                        let frame = format!(
                            "{}\n{}",
                            json!({"id":1,"connect":{"token":token}}),
                            json!({"id":2,"subscribe":{"channel": format!("churn-{}", k % 50)}})
                        );
                        let _ = ws.send(Message::text(frame)).await;
                        let mut got = 0;
                        while got < 1 {
                            match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
                                Ok(Some(Ok(Message::Text(t)))) => {
                                    if t.contains("\"id\":2") {
                                        got += 1
                                    }
                                }
                                _ => break,
                            }
                        }
                        let _ = ws.close(None).await;
                        counts[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        println!(
            "round {round}: ws {} sse {} cycles; rss {:?} KB, cpu {:.1}s",
            counts[0].load(std::sync::atomic::Ordering::Relaxed),
            counts[1].load(std::sync::atomic::Ordering::Relaxed),
            rss(pid),
            cpu(pid)
        );
        tokio::time::sleep(Duration::from_secs(15)).await;
        println!("  after 15 s idle: rss {:?} KB", rss(pid));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = pubber.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_cost() {
    let Ok(base) = std::env::var("HUB_REPLAY") else {
        return;
    };
    let pid: u32 = std::env::var("HUB_PID").unwrap().parse().unwrap();
    let api = std::env::var("API_KEY").unwrap();
    let http = reqwest::Client::new();
    // 100,000 publications on 50 channels.
    let t = Instant::now();
    for b in 0..100 {
        let commands: Vec<_> = (0..1000).map(|i| json!({"publish": {"channel": format!("store-{}", (b * 1000 + i) % 50), "data": {"i": i}}})).collect();
        let r = http
            .post(format!("{base}/api/batch"))
            .header("x-api-key", &api)
            .json(&json!({"commands": commands}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    println!(
        "stored 100k in {:.1}s; rss {:?} KB",
        t.elapsed().as_secs_f64(),
        rss(pid)
    );
    let before = cpu(pid);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (http, base) = (http.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let res = http
                .get(format!(
                    "{base}/.well-known/mercure?topic=nothing-here&lastEventID=earliest"
                ))
                .header("accept", "text/event-stream")
                .send()
                .await
                .unwrap();
            let mut b = res.bytes_stream();
            let _ = b.next().await;
            t.elapsed().as_secs_f64()
        }));
    }
    let mut firsts = Vec::new();
    for t in tasks {
        firsts.push(t.await.unwrap());
    }
    firsts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("20 anonymous earliest replays of an empty topic: first byte median {:.3}s max {:.3}s; server cpu {:.2}s; rss {:?} KB", firsts[10], firsts[19], cpu(pid) - before, rss(pid));
    // 10 anonymous subscribes with 100 URL patterns of 8 named groups.
    let before = cpu(pid);
    let t = Instant::now();
    for r in 0..10 {
        let q: Vec<String> = (0..100)
            .map(|i| {
                format!(
                    "match_urlpattern={}",
                    tidings::protocol::mercure::form::encode(&format!(
                        "https://example.com/{r}/{i}/:a/:b/:c/:d/:e/:f/:g/:h"
                    ))
                )
            })
            .collect();
        let res = http
            .get(format!("{base}/.well-known/mercure?{}", q.join("&")))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        let _ = res.status();
    }
    println!(
        "10 anonymous subscribes with 100 URL patterns: {:.2}s, server cpu {:.2}s",
        t.elapsed().as_secs_f64(),
        cpu(pid) - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_fanout() {
    let Ok(base) = std::env::var("HUB_PATTERNS") else {
        return;
    };
    let pid: u32 = std::env::var("HUB_PID").unwrap().parse().unwrap();
    let token = std::env::var("PUB_TOKEN").unwrap();
    let http = reqwest::Client::new();
    // 1000 subscribers, each with its own URL pattern.
    let mut streams = Vec::new();
    for i in 0..1000 {
        let q = format!(
            "match_urlpattern={}",
            tidings::protocol::mercure::form::encode(&format!("https://example.com/users/{i}/:x"))
        );
        let res = http
            .get(format!("{base}/.well-known/mercure?{q}"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        streams.push(res);
    }
    let before = cpu(pid);
    let t = Instant::now();
    for n in 0..3000 {
        let body = format!(
            "topic={}&data=x",
            tidings::protocol::mercure::form::encode(&format!(
                "https://example.com/users/{}/inbox",
                n % 1000
            ))
        );
        let r = http
            .post(format!("{base}/.well-known/mercure"))
            .bearer_auth(&token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    println!(
        "3000 publications to 1000 distinct URL-pattern subscribers: {:.2}s, server cpu {:.2}s",
        t.elapsed().as_secs_f64(),
        cpu(pid) - before
    );
    drop(streams);
}
