//! `tidings bench`: a load generator for SSE and WebSocket servers.
//!
//! It opens `channels × subscribers` connections, publishes at a rate for a
//! duration, and measures what came back: connect times, deliveries
//! expected and received, loss, duplicates, reordering, end-to-end latency
//! (an HDR histogram, publish to receipt), deliveries per second, bytes on
//! the wire per delivery, and — given the server's pids — the server's CPU
//! seconds per million deliveries and memory per connection, beside the
//! bench's own CPU time.
//!
//! - [`accounting`]: the pure arithmetic (tested on known streams).
//! - [`client`]: cheap subscribers (SSE and WebSocket read off raw
//!   sockets, see [`wire`]) and keep-alive publishers.
//! - [`procstat`]: /proc readings.
//! - [`report`]: the human table, JSON, charts, and the side-by-side page.
//!
//! Targets are URL templates, so any server can be measured; `Target`
//! has profiles for tidings' two protocols and for nginx + nchan.

pub mod accounting;
pub mod client;
pub mod procstat;
pub mod report;
pub mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use accounting::{latency_histogram, payload};
use client::{now_us, Publish, Publisher, Received, Subscribe, Subscriber};
pub use report::{Report, Step};

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The target refused or failed.
    #[error("target: {0}")]
    Target(String),
    /// Bad options.
    #[error("{0}")]
    Options(String),
}

impl BenchError {
    fn io(e: impl std::fmt::Display) -> BenchError {
        BenchError::Target(e.to_string())
    }
}

/// Which wire the subscribers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Wire {
    /// Server-Sent Events.
    Sse,
    /// WebSocket.
    WebSocket,
}

/// What to measure: how to subscribe to and publish on a channel.
#[derive(Debug, Clone)]
pub struct Target {
    /// A name for reports (`tidings`, `nchan`…).
    pub name: String,
    /// The subscribers' wire.
    pub wire: Wire,
    /// How a subscriber connects; URLs and messages use `{channel}`.
    pub subscribe: Subscribe,
    /// How publications are sent.
    pub publish: Publish,
    /// The server's processes, for CPU and memory.
    pub pids: Vec<u32>,
    /// Other nodes (`host:port`) of the same cluster: subscribers are
    /// spread over them round-robin instead of the publishing node.
    pub sub_nodes: Vec<String>,
}

impl Target {
    /// tidings over Mercure SSE at `base` (`http://host:port`), publishing
    /// with `token`.
    pub fn tidings_sse(base: &str, token: &str) -> Target {
        Target {
            name: "tidings".into(),
            wire: Wire::Sse,
            subscribe: Subscribe::Sse {
                url: format!("{base}/.well-known/mercure?topic={{channel}}"),
                headers: Vec::new(),
            },
            publish: Publish {
                url: format!("{base}/.well-known/mercure"),
                body: "topic={channel}&data={payload_form}".into(),
                headers: vec![
                    (
                        "content-type".into(),
                        "application/x-www-form-urlencoded".into(),
                    ),
                    ("authorization".into(), format!("Bearer {token}")),
                ],
            },
            pids: Vec::new(),
            sub_nodes: Vec::new(),
        }
    }

    /// tidings over the Centrifugo WebSocket protocol, connecting with
    /// `connection_token` and publishing through the server API.
    pub fn tidings_ws(base: &str, connection_token: &str, api_key: &str) -> Target {
        let ws = base.replacen("http", "ws", 1);
        Target {
            name: "tidings".into(),
            wire: Wire::WebSocket,
            subscribe: Subscribe::WebSocket {
                url: format!("{ws}/connection/websocket"),
                init: vec![
                    format!(r#"{{"id":1,"connect":{{"token":"{connection_token}"}}}}"#),
                    r#"{"id":2,"subscribe":{"channel":"{channel}"}}"#.into(),
                ],
                ready_replies: 2,
                pong: true,
                compress: false,
            },
            publish: Publish {
                url: format!("{base}/api/publish"),
                body: r#"{"channel":"{channel}","data":{payload}}"#.into(),
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("x-api-key".into(), api_key.into()),
                ],
            },
            pids: Vec::new(),
            sub_nodes: Vec::new(),
        }
    }

    /// nginx + nchan with `/sub/{channel}` and `/pub/{channel}` locations.
    pub fn nchan(base: &str, wire: Wire) -> Target {
        let subscribe = match wire {
            Wire::Sse => Subscribe::Sse {
                url: format!("{base}/sub/{{channel}}"),
                headers: Vec::new(),
            },
            Wire::WebSocket => Subscribe::WebSocket {
                url: format!("{}/sub/{{channel}}", base.replacen("http", "ws", 1)),
                init: Vec::new(),
                ready_replies: 0,
                pong: false,
                compress: false,
            },
        };
        Target {
            name: "nchan".into(),
            wire,
            subscribe,
            publish: Publish {
                url: format!("{base}/pub/{{channel}}"),
                body: "{payload}".into(),
                headers: vec![("content-type".into(), "application/json".into())],
            },
            pids: Vec::new(),
            sub_nodes: Vec::new(),
        }
    }

    /// How subscriber `i` of `channel` connects.
    fn subscribe_to(&self, channel: &str, i: usize) -> Subscribe {
        let node = match (
            self.sub_nodes.is_empty(),
            url::Url::parse(&self.publish.url),
        ) {
            (false, Ok(u)) => Some((
                format!(
                    "{}:{}",
                    u.host_str().unwrap_or(""),
                    u.port_or_known_default().unwrap_or(80)
                ),
                &self.sub_nodes[i % self.sub_nodes.len()],
            )),
            _ => None,
        };
        let fill = |s: &str| {
            let s = s.replace("{channel}", channel);
            match &node {
                Some((from, to)) => s.replace(from.as_str(), to),
                None => s,
            }
        };
        match &self.subscribe {
            Subscribe::Sse { url, headers } => Subscribe::Sse {
                url: fill(url),
                headers: headers.clone(),
            },
            Subscribe::WebSocket {
                url,
                init,
                ready_replies,
                pong,
                compress,
            } => Subscribe::WebSocket {
                url: fill(url),
                init: init.iter().map(|m| fill(m)).collect(),
                ready_replies: *ready_replies,
                pong: *pong,
                compress: *compress,
            },
        }
    }
}

/// What to run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scenario {
    /// A name for reports.
    pub name: String,
    /// Channels.
    pub channels: usize,
    /// Subscribers per channel.
    pub subscribers: usize,
    /// Publications per second, over all channels (0: connect only).
    pub rate: f64,
    /// Payload size in bytes.
    pub payload: usize,
    /// How long each step publishes.
    pub duration: Duration,
    /// Ramp: multiply the rate by this after each good step (None: one step).
    pub ramp_factor: Option<f64>,
    /// Ramp: a step is good while p99 stays under this and nothing is lost.
    pub ramp_p99: Duration,
    /// Ramp: most steps.
    pub ramp_steps: usize,
    /// Publishing connections (channels are spread over them, so each
    /// channel's order is kept).
    pub publishers: usize,
}

/// Most connections being opened at once.
const DIAL_CONCURRENCY: usize = 128;

/// Runs `scenario` against `target`; `progress` shows a bar when true.
pub async fn run(
    target: &Target,
    scenario: &Scenario,
    progress: bool,
) -> Result<Report, BenchError> {
    if scenario.channels == 0 || scenario.subscribers == 0 {
        return Err(BenchError::Options(
            "channels and subscribers must be positive".into(),
        ));
    }
    let stop = CancellationToken::new();
    let result = run_inner(target, scenario, progress, &stop).await;
    stop.cancel();
    result
}

async fn run_inner(
    target: &Target,
    scenario: &Scenario,
    progress: bool,
    stop: &CancellationToken,
) -> Result<Report, BenchError> {
    let bench_start = procstat::own();
    let server_idle = procstat::usage(&target.pids);
    let total = scenario.channels * scenario.subscribers;
    // Fresh channel names per run: a server's backlog from an earlier run
    // must not reach this run's subscribers.
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let channels: Vec<String> = (0..scenario.channels)
        .map(|i| format!("b{run_id}c{i}"))
        .collect();
    let bar = bar(progress, total as u64, "connecting");
    let started = Instant::now();
    let subscribers: Vec<(usize, Result<Subscriber, BenchError>)> = stream::iter(0..total)
        .map(|i| {
            let channel = i % scenario.channels;
            let how = target.subscribe_to(&channels[channel], i);
            let stop = stop.clone();
            let bar = bar.clone();
            async move {
                let s = client::subscribe(&how, stop).await;
                bar.inc(1);
                (channel, s)
            }
        })
        .buffer_unordered(DIAL_CONCURRENCY)
        .collect()
        .await;
    bar.finish_and_clear();
    let connect_wall = started.elapsed();
    let mut subs = Vec::with_capacity(total);
    let mut failures = Vec::new();
    for (channel, s) in subscribers {
        match s {
            Ok(s) => subs.push((channel, s)),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let mut connect = latency_histogram();
    for (_, s) in &subs {
        let _ = connect.record((s.connect_time.as_micros() as u64).max(1));
    }
    // Let the server settle, then read its memory with everyone connected.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server_connected = procstat::usage(&target.pids);
    let mut report = Report::new(
        target,
        scenario,
        subs.len(),
        &failures,
        connect_wall,
        &connect,
    );
    report.set_memory(server_idle, server_connected, procstat::own());

    if scenario.rate > 0.0 {
        let mut publishers = Vec::new();
        for _ in 0..scenario.publishers.max(1) {
            publishers.push(Publisher::connect(target.publish.clone()).await?);
        }
        let mut seqs = vec![0u64; scenario.channels];
        let mut rate = scenario.rate;
        for _ in 0..scenario.ramp_steps.max(1) {
            let step = run_step(
                target,
                scenario,
                &channels,
                rate,
                &mut publishers,
                &mut seqs,
                &subs,
                progress,
            )
            .await;
            let good = step.good(scenario.ramp_p99.as_secs_f64() * 1000.0);
            report.steps.push(step);
            match scenario.ramp_factor {
                Some(f) if good => rate *= f,
                _ => break,
            }
        }
    }
    report.bench_cpu_seconds = procstat::own().cpu_seconds - bench_start.cpu_seconds;
    Ok(report)
}

/// One publishing step at `rate`.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    target: &Target,
    scenario: &Scenario,
    names: &[String],
    rate: f64,
    publishers: &mut [Publisher],
    seqs: &mut [u64],
    subs: &[(usize, Subscriber)],
    progress: bool,
) -> Step {
    for (_, s) in subs {
        s.received.lock().take();
    }
    let server_before = procstat::usage(&target.pids);
    let bench_before = procstat::own();
    let expected_per_channel = Arc::new(Mutex::new(vec![0u64; scenario.channels]));
    let duration = scenario.duration;
    let bar = bar(
        progress,
        duration.as_secs().max(1),
        &format!("{rate:.0} pub/s"),
    );
    let started = Instant::now();
    // Each publisher owns the channels `c % publishers == i`: per-channel order holds.
    let n = publishers.len();
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let mut tasks = Vec::new();
    for (i, publisher) in publishers.iter_mut().enumerate() {
        let channels: Vec<usize> = (0..scenario.channels).filter(|c| c % n == i).collect();
        if channels.is_empty() {
            continue;
        }
        let share = total * channels.len() as u64 / scenario.channels as u64;
        let first_seqs: Vec<u64> = channels.iter().map(|c| seqs[*c]).collect();
        let expected = expected_per_channel.clone();
        let size = scenario.payload;
        tasks.push(async move {
            let mut next_seq = first_seqs;
            for k in 0..share {
                // Paced: publication k goes out at k / its share of the
                // rate, publishers staggered over one period (not all at
                // the same instant, which would be a burst).
                let due =
                    started + duration.mul_f64((k as f64 + i as f64 / n as f64) / share as f64);
                tokio::time::sleep_until(due.into()).await;
                let slot = (k as usize) % channels.len();
                next_seq[slot] += 1;
                let body = payload(next_seq[slot], now_us(), size);
                let (expected, channel) = (expected.clone(), channels[slot]);
                let on_accepted = Box::new(move || expected.lock()[channel] += 1);
                // Not accepted: not expected either (the server refused it).
                publisher.publish(&names[channel], &body, on_accepted).await;
            }
            publisher.drain(Duration::from_secs(10)).await;
            (channels, next_seq)
        });
    }
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                bar.inc(1);
            }
        })
    };
    for (channels, next) in futures::future::join_all(tasks).await {
        for (c, s) in channels.into_iter().zip(next) {
            seqs[c] = s;
        }
    }
    let publish_wall = started.elapsed();
    // Deliveries still in flight.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ticker.abort();
    bar.finish_and_clear();
    let server_after = procstat::usage(&target.pids);
    let bench_after = procstat::own();
    let expected = expected_per_channel.lock().clone();
    let received: Vec<(usize, Received)> = subs
        .iter()
        .map(|(c, s)| (*c, s.received.lock().take()))
        .collect();
    Step::measure(
        rate,
        publish_wall,
        &expected,
        &received,
        server_after.cpu_seconds - server_before.cpu_seconds,
        bench_after.cpu_seconds - bench_before.cpu_seconds,
    )
}

fn bar(show: bool, len: u64, message: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_message(message.to_owned());
    if let Ok(style) = ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
