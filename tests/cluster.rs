//! Several nodes sharing Redis or NATS JetStream: fan-out between nodes, a
//! node killed mid-stream, the engine restarted under load, presence.
//!
//! Needs Redis on 127.0.0.1:6379 and NATS with JetStream on 127.0.0.1:4222.
//! Without them the tests print why and skip, except under `CI=true`, where
//! they fail. Each test works under its own key/stream prefix.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::ws::*;
use common::*;
use parking_lot::Mutex;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug)]
enum Engine {
    Redis,
    Nats,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Redis => "redis",
            Engine::Nats => "nats",
        }
    }

    fn url(self, port: u16) -> String {
        format!("{}://127.0.0.1:{port}", self.name())
    }

    fn default_port(self) -> u16 {
        match self {
            Engine::Redis => 6379,
            Engine::Nats => 4222,
        }
    }

    /// Whether the shared service answers; under CI it must.
    fn available(self) -> bool {
        let addr = format!("127.0.0.1:{}", self.default_port());
        let up = std::net::TcpStream::connect_timeout(
            &addr.parse().unwrap(),
            Duration::from_millis(500),
        )
        .is_ok();
        if !up {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{} is not reachable on {addr}, and CI=true requires it",
                self.name()
            );
            eprintln!(
                "skipped: {} is not reachable on {addr} (start it to run this test)",
                self.name()
            );
        }
        up
    }
}

/// A node of a cluster on `engine` at `port`, under `prefix`.
fn node(engine: Engine, port: u16, prefix: &str, extra: &[(&str, &str)]) -> Hub {
    let url = engine.url(port);
    let url_key = format!("cluster.{}_url", engine.name());
    let mut args = vec![
        ("history.engine", engine.name()),
        (url_key.as_str(), url.as_str()),
        ("cluster.prefix", prefix),
        ("cluster.presence_ttl", "2s"),
        ("centrifugo.channel.join_leave", "true"),
    ];
    args.extend_from_slice(extra);
    start(&args)
}

fn prefix(test: &str, engine: Engine) -> String {
    format!("t{}-{test}-{}", std::process::id(), engine.name())
}

/// Removes what a test left in the shared Redis or NATS.
async fn clean_up(engine: Engine, prefix: &str) {
    match engine {
        Engine::Redis => {
            let client = redis::Client::open(engine.url(6379)).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            if !keys.is_empty() {
                let _: () = redis::cmd("DEL")
                    .arg(keys)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
        Engine::Nats => {
            let client = async_nats::connect(engine.url(4222)).await.unwrap();
            let js = async_nats::jetstream::new(client);
            for name in ["LOG", "IDS", "PRESENCE"] {
                let _ = js.delete_stream(format!("{prefix}_{name}")).await;
            }
        }
    }
}

async fn subscribe(ws: &mut Ws, id: u32, channel: &str, position: Option<(u64, &str)>) -> Value {
    // Asking for joins and leaves, as centrifuge-js `joinLeave: true` does.
    let mut sub = json!({"channel": channel, "join_leave": true});
    if let Some((offset, epoch)) = position {
        sub["recover"] = json!(true);
        sub["offset"] = json!(offset);
        sub["epoch"] = json!(epoch);
    }
    send(ws, &json!({"id": id, "subscribe": sub}).to_string()).await;
    loop {
        for m in recv(ws).await {
            if m["id"] == id {
                assert!(m["error"].is_null(), "{m}");
                return m["subscribe"].clone();
            }
        }
    }
}

/// The `i` of each publication push in the next frame, with its offset.
async fn pushed(ws: &mut Ws) -> Vec<(u64, u64)> {
    recv(ws)
        .await
        .iter()
        .filter_map(|m| {
            let p = &m["push"]["pub"];
            Some((p["data"]["i"].as_u64()?, p["offset"].as_u64().unwrap_or(0)))
        })
        .collect()
}

fn sse_numbers(events: &[tidings::protocol::sse::ParsedEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok()?["i"].as_u64())
        .collect()
}

async fn publish_i(hub: &Hub, channel: &str, i: u64) -> bool {
    let res = reqwest::Client::new()
        .post(hub.url("/api/publish"))
        .header("X-API-Key", API_KEY)
        .json(&json!({"channel": channel, "data": {"i": i}}))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    matches!(res, Ok(r) if r.status().is_success())
}

async fn fan_out_reaches_every_node_in_order(engine: Engine) {
    if !engine.available() {
        return;
    }
    let p = prefix("fanout", engine);
    let port = engine.default_port();
    let nodes: Vec<Hub> = (0..3).map(|_| node(engine, port, &p, &[])).collect();
    let mut sse = open(&nodes[1], "topic=orders", &[]).await;
    let mut ws = connected(&nodes[2], "carol").await;
    subscribe(&mut ws, 2, "orders", None).await;
    for i in 1..=30 {
        assert!(publish_i(&nodes[0], "orders", i).await);
    }
    let mut over_ws = Vec::new();
    while over_ws.len() < 30 {
        over_ws.extend(pushed(&mut ws).await.into_iter().map(|(i, _)| i));
    }
    let over_sse = sse_numbers(&sse.drain(Duration::from_millis(500)).await);
    let expected: Vec<u64> = (1..=30).collect();
    assert_eq!(over_ws, expected, "WebSocket on node 3");
    assert_eq!(over_sse, expected, "SSE on node 2");
    // Mercure publishing on node 3 reaches node 2 too, and history is shared:
    // node 1 replays from an id that node 2 delivered.
    let id = publish(&nodes[2], "orders", r#"{"i":31}"#).await;
    let live = sse.next().await;
    let live_id = live.id.unwrap();
    assert_eq!(live_id, id);
    let mut replay = open(&nodes[0], "topic=orders", &[("Last-Event-ID", &live_id)]).await;
    publish(&nodes[1], "orders", r#"{"i":32}"#).await;
    assert_eq!(sse_numbers(&[replay.next().await]), vec![32]);
    clean_up(engine, &p).await;
}

#[tokio::test]
async fn redis_fan_out_reaches_every_node_in_order() {
    fan_out_reaches_every_node_in_order(Engine::Redis).await;
}

#[tokio::test]
async fn nats_fan_out_reaches_every_node_in_order() {
    fan_out_reaches_every_node_in_order(Engine::Nats).await;
}

/// Publishes `{"i": 1..=n}` to `channel` through `hub`, every `every`;
/// returns the numbers that were acknowledged.
fn publisher(
    hub: &Hub,
    channel: &'static str,
    n: u64,
    every: Duration,
) -> tokio::task::JoinHandle<Vec<u64>> {
    let url = hub.url("/api/publish");
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut acked = Vec::new();
        for i in 1..=n {
            let res = client
                .post(&url)
                .header("X-API-Key", API_KEY)
                .json(&json!({"channel": channel, "data": {"i": i}}))
                .timeout(Duration::from_secs(3))
                .send()
                .await;
            if matches!(res, Ok(r) if r.status().is_success()) {
                acked.push(i);
            }
            tokio::time::sleep(every).await;
        }
        acked
    })
}

async fn killed_node_clients_recover_elsewhere(engine: Engine) {
    if !engine.available() {
        return;
    }
    let p = prefix("kill", engine);
    let port = engine.default_port();
    let publishing = node(engine, port, &p, &[]);
    let mut victim = node(engine, port, &p, &[]);
    let refuge = node(engine, port, &p, &[]);
    const N: u64 = 150;

    let mut sse = open(&victim, "topic=ticks", &[]).await;
    let mut ws = connected(&victim, "walt").await;
    let sub = subscribe(&mut ws, 2, "ticks", None).await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();

    let acked = publisher(&publishing, "ticks", N, Duration::from_millis(10));
    // Read until 40 arrived, then the node dies (SIGKILL: no goodbye).
    let mut over_ws: Vec<(u64, u64)> = Vec::new();
    while over_ws.len() < 40 {
        over_ws.extend(pushed(&mut ws).await);
    }
    let mut sse_events = Vec::new();
    while sse_numbers(&sse_events).len() < 40 {
        sse_events.push(sse.next().await);
    }
    victim.kill();
    sse_events.extend(sse.drain(Duration::from_millis(100)).await);
    // Publications keep coming while the clients are away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last_id = sse_events.last().unwrap().id.clone().unwrap();
    let last_offset = over_ws.last().unwrap().1;

    // Both clients come back on another node with their position.
    let mut sse = open(&refuge, "topic=ticks", &[("Last-Event-ID", &last_id)]).await;
    let mut ws = connected(&refuge, "walt").await;
    let sub = subscribe(&mut ws, 2, "ticks", Some((last_offset, &epoch))).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    let missed = sub["publications"].as_array().cloned().unwrap_or_default();
    assert!(
        !missed.is_empty(),
        "the client missed some while away: {sub}"
    );
    for p in &missed {
        over_ws.push((
            p["data"]["i"].as_u64().unwrap(),
            p["offset"].as_u64().unwrap(),
        ));
    }
    let acked = acked.await.unwrap();
    assert_eq!(acked.len() as u64, N, "every publish was acknowledged");
    while over_ws.last().map(|x| x.0) != Some(N) {
        over_ws.extend(pushed(&mut ws).await);
    }
    let mut numbers = sse_numbers(&sse_events);
    while numbers.last() != Some(&N) {
        sse_events.push(sse.next().await);
        numbers = sse_numbers(&sse_events);
    }
    let expected: Vec<u64> = (1..=N).collect();
    let ws_numbers: Vec<u64> = over_ws.iter().map(|x| x.0).collect();
    assert_eq!(
        ws_numbers, expected,
        "WebSocket: nothing lost, nothing repeated"
    );
    assert_eq!(numbers, expected, "SSE: nothing lost, nothing repeated");
    clean_up(engine, &p).await;
}

#[tokio::test]
async fn redis_killed_node_clients_recover_elsewhere() {
    killed_node_clients_recover_elsewhere(Engine::Redis).await;
}

#[tokio::test]
async fn nats_killed_node_clients_recover_elsewhere() {
    killed_node_clients_recover_elsewhere(Engine::Nats).await;
}

/// An engine server of the test's own, on its own port.
struct OwnEngine {
    engine: Engine,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnEngine {
    fn start(engine: Engine, port: u16) -> OwnEngine {
        let mut own = OwnEngine {
            engine,
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        own.spawn();
        own
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().unwrap();
        let mut cmd = match self.engine {
            Engine::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
                    .args(["--appendonly", "no", "--dir", dir]);
                c
            }
            Engine::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd", dir]);
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the engine server");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not start on {port}", self.engine.name());
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnEngine {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn engine_restart_under_load_is_reported(engine: Engine, port: u16) {
    if !engine.available() {
        return;
    }
    let binary = match engine {
        Engine::Redis => "redis-server",
        Engine::Nats => "nats-server",
    };
    if Command::new(binary).arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{binary} is not installed, and CI=true requires it"
        );
        eprintln!("skipped: {binary} is not installed (the test restarts its own engine)");
        return;
    }
    let mut server = OwnEngine::start(engine, port);
    let p = prefix("restart", engine);
    let a = node(engine, port, &p, &[]);
    let b = node(engine, port, &p, &[]);
    let mut ws = connected(&b, "rita").await;
    let sub = subscribe(&mut ws, 2, "load", None).await;
    let mut epoch = sub["epoch"].as_str().unwrap().to_owned();

    const N: u64 = 300;
    let acked = publisher(&a, "load", N, Duration::from_millis(10));
    // The client: records every number it gets; on a disconnect it comes
    // back with its position and notes whether the hub could recover it.
    let received = Arc::new(Mutex::new(Vec::<u64>::new()));
    let told_lost = Arc::new(Mutex::new(false));
    let (r, t, b_addr) = (received.clone(), told_lost.clone(), b.addr.clone());
    let client = tokio::spawn(async move {
        let mut last_offset = 0;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(8), recv_or_close(&mut ws)).await;
            match frame {
                Ok(Ok(pubs)) => {
                    for (i, offset) in pubs {
                        r.lock().push(i);
                        last_offset = offset;
                    }
                    if r.lock().last() == Some(&N) {
                        return;
                    }
                }
                Ok(Err(code)) => {
                    assert_eq!(code, 3010, "an engine reset asks clients to recover");
                    ws = connected_at(&b_addr, "rita").await;
                    let sub = subscribe(&mut ws, 2, "load", Some((last_offset, &epoch))).await;
                    if sub["recovered"] != true {
                        *t.lock() = true;
                    }
                    epoch = sub["epoch"].as_str().unwrap_or_default().to_owned();
                    for p in sub["publications"].as_array().into_iter().flatten() {
                        r.lock().push(p["data"]["i"].as_u64().unwrap());
                        last_offset = p["offset"].as_u64().unwrap();
                    }
                    last_offset = last_offset.max(sub["offset"].as_u64().unwrap_or(0));
                }
                Err(_) => return,
            }
        }
    });
    // Let the load run, then restart the engine in the middle of it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.spawn();
    let acked = acked.await.unwrap();
    client.await.unwrap();

    // The nodes came back: both still answer and publishing works again.
    for hub in [&a, &b] {
        let health = reqwest::get(hub.url("/healthz")).await.unwrap();
        assert!(health.status().is_success());
    }
    assert!(acked.contains(&N), "publishing resumed after the restart");
    let received = received.lock().clone();
    let mut sorted = received.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), received.len(), "nothing repeated");
    assert!(received.windows(2).all(|w| w[0] < w[1]), "in order");
    let got: BTreeSet<u64> = received.iter().copied().collect();
    let missing: Vec<u64> = acked.iter().filter(|i| !got.contains(i)).copied().collect();
    if *told_lost.lock() {
        // Loss is allowed only when the client was told.
        eprintln!(
            "{}: told unrecovered; {} acknowledged publications missing",
            engine.name(),
            missing.len()
        );
    } else {
        assert!(missing.is_empty(), "silent gap: {missing:?}");
    }
    if matches!(engine, Engine::Redis) {
        // This Redis keeps nothing on disk: the restart lost the history.
        assert!(
            *told_lost.lock(),
            "Redis lost its data and the client was not told"
        );
    }
}

async fn recv_or_close(ws: &mut Ws) -> Result<Vec<(u64, u64)>, u16> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let pubs = t
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter_map(|m| {
                        let p = &m["push"]["pub"];
                        Some((p["data"]["i"].as_u64()?, p["offset"].as_u64()?))
                    })
                    .collect();
                return Ok(pubs);
            }
            Some(Ok(Message::Close(Some(f)))) => return Err(f.code.into()),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(1006),
        }
    }
}

#[tokio::test]
async fn redis_restart_under_load_is_reported() {
    engine_restart_under_load_is_reported(Engine::Redis, 16391).await;
}

#[tokio::test]
async fn nats_restart_under_load_is_reported() {
    engine_restart_under_load_is_reported(Engine::Nats, 14231).await;
}

async fn presence_spans_nodes_and_dead_nodes_expire(engine: Engine) {
    if !engine.available() {
        return;
    }
    let p = prefix("presence", engine);
    let port = engine.default_port();
    let a = node(engine, port, &p, &[]);
    let mut b = node(engine, port, &p, &[]);
    let mut ann = connected(&a, "ann").await;
    subscribe(&mut ann, 2, "room", None).await;
    let mut bob = connected(&b, "bob").await;
    subscribe(&mut bob, 2, "room", None).await;
    // Ann, on node 1, sees Bob join on node 2.
    let join = loop {
        let msgs = recv(&mut ann).await;
        if let Some(j) = msgs
            .iter()
            .find(|m| m["push"]["join"]["info"]["user"] == "bob")
        {
            break j.clone();
        }
    };
    assert_eq!(join["push"]["join"]["info"]["user"], "bob");
    let users = |v: &Value| -> BTreeSet<String> {
        v["result"]["presence"]
            .as_object()
            .map(|m| {
                m.values()
                    .map(|c| c["user"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (_, both) = api(&a, "presence", json!({"channel": "room"})).await;
    assert_eq!(users(&both), BTreeSet::from(["ann".into(), "bob".into()]));
    let (_, stats) = api(&b, "presence_stats", json!({"channel": "room"})).await;
    assert_eq!(stats["result"]["num_users"], 2);
    // The server API reaches a client on another node: disconnect Bob from A.
    api(&a, "disconnect", json!({"user": "bob"})).await;
    assert_eq!(closed(&mut bob).await.0, 3503);
    let mut bob = connected(&b, "bob").await;
    subscribe(&mut bob, 2, "room", None).await;
    // Node 2 dies without cleaning up: Bob's entry expires (presence_ttl 2s).
    b.kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let (_, now) = api(&a, "presence", json!({"channel": "room"})).await;
        if users(&now) == BTreeSet::from(["ann".into()]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob never expired: {now}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(bob);
    clean_up(engine, &p).await;
}

#[tokio::test]
async fn redis_presence_spans_nodes_and_dead_nodes_expire() {
    presence_spans_nodes_and_dead_nodes_expire(Engine::Redis).await;
}

#[tokio::test]
async fn nats_presence_spans_nodes_and_dead_nodes_expire() {
    presence_spans_nodes_and_dead_nodes_expire(Engine::Nats).await;
}

async fn graceful_shutdown_sends_clients_elsewhere(engine: Engine) {
    if !engine.available() {
        return;
    }
    let p = prefix("drain", engine);
    let port = engine.default_port();
    let a = node(engine, port, &p, &[]);
    let mut leaving = node(engine, port, &p, &[]);
    let mut ws = connected(&leaving, "gina").await;
    let sub = subscribe(&mut ws, 2, "news", None).await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    assert!(publish_i(&a, "news", 1).await);
    let mut got = Vec::new();
    while got.is_empty() {
        got = pushed(&mut ws).await;
    }
    assert_eq!(got, vec![(1, 1)]);
    // SIGTERM: the client is told to reconnect (3001), not dropped.
    leaving.terminate();
    assert_eq!(closed(&mut ws).await.0, 3001);
    assert!(leaving.stop(), "the node exits cleanly");
    assert!(publish_i(&a, "news", 2).await);
    let mut ws = connected(&a, "gina").await;
    let sub = subscribe(&mut ws, 2, "news", Some((1, &epoch))).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    assert_eq!(sub["publications"][0]["data"]["i"], 2);
    clean_up(engine, &p).await;
}

#[tokio::test]
async fn redis_graceful_shutdown_sends_clients_elsewhere() {
    graceful_shutdown_sends_clients_elsewhere(Engine::Redis).await;
}

#[tokio::test]
async fn nats_graceful_shutdown_sends_clients_elsewhere() {
    graceful_shutdown_sends_clients_elsewhere(Engine::Nats).await;
}
