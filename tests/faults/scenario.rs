//! Scenarios and their runs: start the engine and the nodes, the
//! publishers and the clients, play the seeded schedule of faults, let
//! everything settle, then check.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::check::{self, Rules, Verdict};
use crate::clients::{self, Client, Control, Kind, CHANNEL_PREFIX};
use crate::procs::{Engine, EngineServer, Node};
use crate::publish::{self, Publisher, API_KEY};
use crate::record::Channel;
use crate::rng::Rng;

const SECRET: &str = "faults-connection-secret";
const MERCURE_KEY: &str = "faults-mercure-key";
const ISSUER: &str = "https://issuer.faults.test";
const HUB_URL: &str = "https://hub.faults.test/.well-known/mercure";

/// A fault the schedule can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// A client drops its connection and reconnects with its position.
    ClientDrop,
    /// A client stops reading long enough to be closed as a slow consumer.
    Stall,
    /// A client reads slowly for a while.
    Slow,
    /// A publisher sends a burst far over the hub's queue bound.
    Burst,
    /// A node gets SIGTERM and is started again.
    HubTerm,
    /// A node gets SIGKILL and is started again.
    HubKill,
    /// The Redis or NATS server is killed and started again.
    EngineRestart,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::ClientDrop => "client-drop",
            Fault::Stall => "stalled-reader",
            Fault::Slow => "slow-reader",
            Fault::Burst => "burst",
            Fault::HubTerm => "node-sigterm",
            Fault::HubKill => "node-sigkill",
            Fault::EngineRestart => "engine-restart",
        }
    }
}

/// What a scenario runs.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub engine: Engine,
    pub nodes: usize,
    pub channels: usize,
    /// Clients of each kind (each on one or two channels).
    pub per_kind: usize,
    /// Extra clients that all come back at once when a node restarts.
    pub storm: usize,
    /// Publications per second per channel.
    pub rate: f64,
    pub faults: &'static [Fault],
    /// Milliseconds between two faults.
    pub fault_gap: (u64, u64),
    /// Publications kept per channel.
    pub history_size: usize,
    /// The store keeps everything of the run: "not recovered" is a
    /// violation, and every acknowledged publication must be in history.
    pub keeps_everything: bool,
}

/// Every scenario there is.
pub fn all() -> Vec<Scenario> {
    use Fault::*;
    let base = Scenario {
        name: "disk",
        engine: Engine::Disk,
        nodes: 1,
        channels: 6,
        per_kind: 2,
        storm: 0,
        rate: 15.0,
        faults: &[ClientDrop, Stall, Slow, Burst, HubTerm, HubKill],
        fault_gap: (800, 2500),
        history_size: 1_000_000,
        keeps_everything: true,
    };
    vec![
        base.clone(),
        // Small history: a client away during a burst is told what it lost.
        Scenario {
            name: "trim",
            history_size: 60,
            faults: &[ClientDrop, Stall, Burst, HubKill],
            keeps_everything: false,
            ..base.clone()
        },
        // Nothing survives a restart: clients must be told.
        Scenario {
            name: "memory",
            engine: Engine::Memory,
            faults: &[ClientDrop, Stall, Burst, HubTerm, HubKill],
            keeps_everything: false,
            ..base.clone()
        },
        Scenario {
            name: "redis",
            engine: Engine::Redis,
            nodes: 2,
            per_kind: 1,
            faults: &[ClientDrop, Stall, Burst, HubKill, EngineRestart],
            fault_gap: (1500, 4000),
            keeps_everything: false,
            ..base.clone()
        },
        Scenario {
            name: "nats",
            engine: Engine::Nats,
            nodes: 2,
            per_kind: 1,
            faults: &[ClientDrop, Stall, Burst, HubKill, EngineRestart],
            fault_gap: (1500, 4000),
            keeps_everything: false,
            ..base.clone()
        },
        // Thousands of clients of a restarted node coming back at once.
        Scenario {
            name: "storm",
            channels: 4,
            per_kind: 1,
            storm: 2000,
            rate: 4.0,
            faults: &[HubTerm, HubKill],
            fault_gap: (6000, 9000),
            ..base
        },
    ]
}

/// A run's outcome.
pub struct Report {
    pub verdict: Verdict,
    pub faults: BTreeMap<&'static str, u64>,
    pub clients: usize,
    pub closed_by_hub: u64,
    pub connections: u64,
}

impl Report {
    pub fn print(&self) {
        let v = &self.verdict;
        println!(
            "  publications: {} acknowledged, {} unanswered (hub down mid-request)",
            v.acked, v.maybe
        );
        println!(
            "  clients: {}, connections {}, ended by the hub {}",
            self.clients, self.connections, self.closed_by_hub
        );
        println!("  deliveries checked: {}", v.deliveries);
        let sessions: Vec<String> = ["fresh", "recovered", "lost"]
            .iter()
            .map(|k| format!("{k} {}", v.sessions.get(k).copied().unwrap_or(0)))
            .collect();
        println!("  subscriptions: {}", sessions.join(", "));
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("  faults injected: {}", faults.join(", "));
        println!("  violations: {}", v.violations.len());
        for violation in v.violations.iter().take(30) {
            println!("    {violation}");
        }
    }
}

/// The configuration every node of a run shares.
fn config(s: &Scenario, dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
    let toml = "[[centrifugo.namespaces]]\nname = \"https\"\nallow_subscribe = true\nallow_history = true\n";
    let path = dir.join("tidings.toml");
    std::fs::write(&path, toml).map_err(|e| e.to_string())?;
    let _ = s;
    Ok(path)
}

fn sets(s: &Scenario, engine_url: Option<&str>) -> Vec<String> {
    let mut sets = vec![
        format!("history.engine={}", s.engine.name()),
        format!("history.size={}", s.history_size),
        "history.ttl=24h".into(),
        // Sweeps run during the run, forgetting subscription events.
        "history.sweep_interval=5s".into(),
        "demo=false".into(),
        format!("mercure.hub_url={HUB_URL}"),
        format!("mercure.key={MERCURE_KEY}"),
        format!("mercure.issuer={ISSUER}"),
        "mercure.heartbeat=2s".into(),
        format!("centrifugo.token_key={SECRET}"),
        format!("centrifugo.api_key={API_KEY}"),
        "centrifugo.ping_interval=5s".into(),
        "centrifugo.pong_timeout=4s".into(),
        // Small bounds, so that bursts and stalls reach them.
        "hub.queue_size=200".into(),
        "limits.write_timeout=2s".into(),
        "limits.publish_rate=0".into(),
        "shutdown_grace=3s".into(),
    ];
    match (s.engine, engine_url) {
        (Engine::Redis, Some(url)) => sets.push(format!("cluster.redis_url={url}")),
        (Engine::Nats, Some(url)) => sets.push(format!("cluster.nats_url={url}")),
        _ => {}
    }
    if s.engine == Engine::Redis || s.engine == Engine::Nats {
        sets.push(format!("cluster.prefix=faults{}", std::process::id()));
    }
    sets
}

fn mercure_publisher_token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = json!({
        "iss": ISSUER, "aud": HUB_URL, "sub": "faults", "client_id": ISSUER,
        "iat": now, "jti": "faults", "exp": now + 24 * 3600,
        "authorization_details": [{
            "type": "https://mercure.rocks/authorization-detail",
            "actions": ["publish"], "topics": [{"match": "*"}],
        }],
    });
    tidings::auth::jwt::mint(&claims, MERCURE_KEY, jsonwebtoken::Algorithm::HS256, true)
        .unwrap_or_default()
}

/// One scheduled fault.
struct Planned {
    at: Duration,
    fault: Fault,
    /// Which client, publisher or node it hits.
    target: u64,
}

fn schedule(s: &Scenario, rng: &mut Rng, duration: Duration) -> Vec<Planned> {
    let mut plan = Vec::new();
    // Faults start once clients had time to get going, and stop before the
    // end so that the last subscriptions can settle.
    let mut at = Duration::from_secs(2);
    let end = duration.saturating_sub(Duration::from_secs(3));
    // Each fault kind at least once when the run is long enough.
    let mut order: Vec<Fault> = s.faults.to_vec();
    loop {
        at += rng.millis(s.fault_gap.0, s.fault_gap.1);
        if at >= end {
            break;
        }
        let fault = if order.is_empty() {
            *rng.pick(s.faults)
        } else {
            order.remove(rng.below(order.len() as u64) as usize)
        };
        plan.push(Planned {
            at,
            fault,
            target: rng.next(),
        });
    }
    plan
}

/// Runs `s` with `seed` for `duration`.
pub async fn run(s: &Scenario, seed: u64, duration: Duration) -> Result<Report, String> {
    let root = Rng::new(seed);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut engine = match s.engine {
        Engine::Redis | Engine::Nats => Some(EngineServer::start(s.engine)?),
        _ => None,
    };
    let config = config(s, dir.path())?;
    let engine_url = engine.as_ref().map(EngineServer::url);
    let mut nodes = Vec::new();
    for i in 0..s.nodes {
        let data = dir.path().join(format!("node{i}"));
        nodes.push(Node::start(&data, &config, sets(s, engine_url.as_deref()))?);
    }
    let bases: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.addr)).collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| e.to_string())?;
    let channels: Vec<String> = (0..s.channels)
        .map(|i| format!("{CHANNEL_PREFIX}{i}"))
        .collect();

    let client_env = Arc::new(clients::Env {
        nodes: bases.clone(),
        secret: SECRET.into(),
        http: http.clone(),
    });
    let mut clients = Vec::new();
    let mut crowd_rng = root.fork(1);
    for (k, kind) in Kind::ALL.into_iter().enumerate() {
        for i in 0..s.per_kind {
            let mine = if kind.selects_all() {
                channels.clone()
            } else {
                let a = crowd_rng.below(channels.len() as u64) as usize;
                let b =
                    (a + 1 + crowd_rng.below(channels.len() as u64 - 1) as usize) % channels.len();
                if crowd_rng.chance(0.5) {
                    vec![channels[a].clone()]
                } else {
                    vec![channels[a].clone(), channels[b].clone()]
                }
            };
            let id = k * 1000 + i;
            clients.push(Client::spawn(
                kind,
                id,
                mine,
                client_env.clone(),
                root.fork(100 + id as u64),
            ));
        }
    }
    for i in 0..s.storm {
        let kind = if i % 2 == 0 {
            Kind::MercureExact
        } else {
            Kind::WebSocketJson
        };
        let ch = vec![channels[i % channels.len()].clone()];
        clients.push(Client::spawn(
            kind,
            100_000 + i,
            ch,
            client_env.clone(),
            root.fork(1_000_000 + i as u64),
        ));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Subscribed before anything is published.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let publish_env = Arc::new(publish::Env {
        nodes: bases.clone(),
        mercure_token: mercure_publisher_token(),
        http: http.clone(),
        rate: s.rate,
        paused_until: Default::default(),
    });
    let publishers: Vec<Publisher> = channels
        .iter()
        .enumerate()
        .map(|(i, ch)| Publisher::spawn(ch.clone(), publish_env.clone(), root.fork(10 + i as u64)))
        .collect();

    let mut rng = root.fork(2);
    let plan = schedule(s, &mut rng, duration);
    let started = Instant::now();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    for p in plan {
        tokio::time::sleep_until(started + p.at).await;
        let parts = Parts {
            clients: &clients,
            publishers: &publishers,
            publishing: &publish_env,
        };
        inject(p.fault, p.target, &mut rng, &parts, &mut nodes, &mut engine).await?;
        *faults.entry(p.fault.name()).or_default() += 1;
    }
    tokio::time::sleep_until(started + duration).await;

    // Everything up; publishing stops; what was acknowledged must arrive.
    for node in &mut nodes {
        if !node.is_up() {
            tokio::task::block_in_place(|| node.restart())?;
        }
    }
    let mut channel_records = HashMap::new();
    for p in publishers {
        let (channel, record) = p.stop().await;
        channel_records.insert(channel, record);
    }
    let settling = Instant::now();
    let settle_until = settling + Duration::from_secs(30);
    while Instant::now() < settle_until {
        let caught_up = clients.iter().all(|c| {
            let record = c.record.lock();
            c.channels.iter().all(|ch| {
                let last = channel_records[ch].lock().last_acked();
                record.last_received(ch).unwrap_or(0) >= last
            })
        });
        if caught_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settled = settling.elapsed();
    let run_end = Instant::now().into_std();
    let mut records = Vec::new();
    let (mut closed_by_hub, mut connections) = (0, 0);
    let client_count = clients.len();
    let stopping = Instant::now();
    for c in clients {
        let (name, record) = c.stop().await;
        closed_by_hub += record.closed_by_hub;
        connections += record.connections;
        records.push((name, record));
    }
    println!(
        "  settled in {:.1}s, clients stopped in {:.1}s",
        settled.as_secs_f64(),
        stopping.elapsed().as_secs_f64()
    );
    let published: HashMap<String, Channel> = channel_records
        .into_iter()
        .map(|(k, v)| (k, std::mem::take(&mut *v.lock())))
        .collect();
    let stored = if s.keeps_everything {
        let mut stored = HashMap::new();
        for ch in &channels {
            stored.insert(ch.clone(), history(&http, &bases[0], ch).await?);
        }
        Some(stored)
    } else {
        None
    };
    let rules = Rules {
        expect_recovery: s.keeps_everything,
    };
    let verdict = check::check(&published, &records, stored.as_ref(), &rules, run_end);
    for node in &mut nodes {
        if !tokio::task::block_in_place(|| node.terminate()) {
            return Err("a node did not exit cleanly on SIGTERM".into());
        }
    }
    Ok(Report {
        verdict,
        faults,
        clients: client_count,
        closed_by_hub,
        connections,
    })
}

/// The clients and publishers faults act on.
struct Parts<'a> {
    clients: &'a [Client],
    publishers: &'a [Publisher],
    publishing: &'a publish::Env,
}

/// Injects one fault. Processes are waited for on this thread (the
/// runtime's other threads go on).
async fn inject(
    fault: Fault,
    target: u64,
    rng: &mut Rng,
    parts: &Parts<'_>,
    nodes: &mut [Node],
    engine: &mut Option<EngineServer>,
) -> Result<(), String> {
    let Parts {
        clients,
        publishers,
        publishing,
    } = *parts;
    let client = &clients[(target % clients.len() as u64) as usize];
    match fault {
        Fault::ClientDrop => {
            let _ = client.control.send(Control::Drop(rng.millis(0, 300)));
        }
        Fault::Stall => {
            let _ = client.control.send(Control::Stall(rng.millis(3000, 5000)));
            // Something to fill its buffers with.
            let p = &publishers[(target % publishers.len() as u64) as usize];
            let _ = p.bursts.send(400);
        }
        Fault::Slow => {
            let _ = client.control.send(Control::Slow(rng.millis(1000, 3000)));
        }
        Fault::Burst => {
            let p = &publishers[(target % publishers.len() as u64) as usize];
            let _ = p.bursts.send(300 + rng.below(300) as usize);
        }
        Fault::HubTerm | Fault::HubKill => {
            let n = (target % nodes.len() as u64) as usize;
            // A few clients leave a little before, missing publications,
            // and come back to the restarted node.
            for _ in 0..3 {
                let c = &clients[rng.below(clients.len() as u64) as usize];
                let _ = c.control.send(Control::Drop(rng.millis(1000, 2500)));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            // Half the time, nothing is published until the clients are
            // back: they must get what they missed from history alone.
            let quiet = rng.chance(0.5);
            if quiet {
                publishing.pause(Instant::now() + Duration::from_secs(60));
            }
            let node = &mut nodes[n];
            if fault == Fault::HubTerm {
                if !tokio::task::block_in_place(|| node.terminate()) {
                    return Err("a node did not exit cleanly on SIGTERM".into());
                }
            } else {
                tokio::task::block_in_place(|| node.kill());
            }
            tokio::time::sleep(rng.millis(100, 800)).await;
            tokio::task::block_in_place(|| node.restart())?;
            if quiet {
                publishing.pause(Instant::now() + Duration::from_millis(1500));
            }
        }
        Fault::EngineRestart => {
            if let Some(server) = engine {
                tokio::task::block_in_place(|| server.kill());
                tokio::time::sleep(rng.millis(300, 1200)).await;
                tokio::task::block_in_place(|| server.spawn())?;
            }
        }
    }
    Ok(())
}

/// The publication numbers a channel's history holds now.
async fn history(
    http: &reqwest::Client,
    base: &str,
    channel: &str,
) -> Result<HashSet<u64>, String> {
    let mut numbers = HashSet::new();
    let mut since: Option<(u64, String)> = None;
    loop {
        let mut body = json!({"channel": channel, "limit": 10000});
        if let Some((offset, epoch)) = &since {
            body["since"] = json!({"offset": offset, "epoch": epoch});
        }
        let reply: serde_json::Value = http
            .post(format!("{base}/api/history"))
            .header("x-api-key", API_KEY)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let result = reply
            .get("result")
            .ok_or_else(|| format!("history of {channel}: {reply}"))?;
        let pubs = result["publications"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for p in &pubs {
            if let Some(n) = p["data"]["n"].as_u64() {
                numbers.insert(n);
            }
        }
        let (Some(last), Some(epoch)) = (pubs.last(), result["epoch"].as_str()) else {
            break;
        };
        since = Some((last["offset"].as_u64().unwrap_or(0), epoch.to_owned()));
        if pubs.len() < 10000 {
            break;
        }
    }
    Ok(numbers)
}
