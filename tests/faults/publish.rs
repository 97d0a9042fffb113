//! Publishers: one per channel, each waiting for the hub's answer before
//! the next publication, so that a channel's publications are numbered in
//! the order the hub stored them. They alternate the Mercure publish
//! endpoint and the Centrifugo server API, and publish bursts through the
//! API's `batch` when the schedule asks.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::record::{Attempt, Channel, Outcome, Shared};
use crate::rng::Rng;

/// The Centrifugo server API key of a run.
pub const API_KEY: &str = "faults-api-key";

/// What every publisher needs to know.
pub struct Env {
    pub nodes: Vec<String>,
    /// A Mercure publisher token for the hub URL.
    pub mercure_token: String,
    pub http: reqwest::Client,
    /// Publications per second per channel, on average.
    pub rate: f64,
    /// Publishing waits until then (clients of a restarted node come back
    /// before anything new is published: the replay alone must serve them).
    pub paused_until: parking_lot::Mutex<Option<Instant>>,
}

impl Env {
    /// Holds publishing back until `until`.
    pub fn pause(&self, until: Instant) {
        *self.paused_until.lock() = Some(until);
    }

    fn pause_left(&self) -> Option<Duration> {
        let until = (*self.paused_until.lock())?;
        until.checked_duration_since(Instant::now())
    }
}

/// A running publisher.
pub struct Publisher {
    pub channel: String,
    pub record: Shared<Channel>,
    pub bursts: mpsc::UnboundedSender<usize>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Publisher {
    pub fn spawn(channel: String, env: Arc<Env>, rng: Rng) -> Publisher {
        let record = Shared::default();
        let (bursts, burst_rx) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            channel.clone(),
            env,
            rng,
            Arc::clone(&record),
            burst_rx,
            stopped,
        ));
        Publisher {
            channel,
            record,
            bursts,
            stop,
            task,
        }
    }

    /// Stops publishing (after the publication under way).
    pub async fn stop(self) -> (String, Shared<Channel>) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        (self.channel, self.record)
    }
}

/// How one attempt went.
enum Sent {
    /// Every publication of the attempt was acknowledged.
    Acked,
    /// Not sent at all (no connection): the same numbers go again.
    Unsent,
    /// Sent, answer unknown.
    Maybe,
}

async fn run(
    channel: String,
    env: Arc<Env>,
    mut rng: Rng,
    record: Shared<Channel>,
    mut bursts: mpsc::UnboundedReceiver<usize>,
    mut stopped: watch::Receiver<bool>,
) {
    let mean_gap = 1000.0 / env.rate.max(0.1);
    loop {
        let gap = Duration::from_millis(rng.below((2.0 * mean_gap) as u64 + 1));
        let count = tokio::select! {
            _ = tokio::time::sleep(gap) => 1,
            burst = bursts.recv() => burst.unwrap_or(1),
            _ = stopped.changed() => return,
        };
        // The pause may be shortened meanwhile: look again often.
        while let Some(left) = env.pause_left() {
            if *stopped.borrow() {
                return;
            }
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
        let first = record.lock().outcomes.len() as u64 + 1;
        let mut tries = 0;
        loop {
            let node = rng.pick(&env.nodes).clone();
            let sent_at = Instant::now().into_std();
            let sent = if count > 1 {
                batch(&env, &node, &channel, first, count).await
            } else if rng.chance(0.5) {
                mercure(&env, &node, &channel, first).await
            } else {
                api(&env, &node, &channel, first).await
            };
            let outcome = match sent {
                Sent::Acked => Outcome::Acked,
                Sent::Maybe => Outcome::Maybe,
                Sent::Unsent => {
                    tries += 1;
                    if *stopped.borrow() && tries > 50 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let attempt = Attempt {
                outcome,
                sent: sent_at,
                known: Instant::now().into_std(),
            };
            record
                .lock()
                .outcomes
                .extend(std::iter::repeat_n(attempt, count));
            break;
        }
    }
}

fn payload(channel: &str, n: u64) -> serde_json::Value {
    json!({"c": channel, "n": n})
}

fn classify(result: reqwest::Result<reqwest::Response>) -> Result<reqwest::Response, Sent> {
    match result {
        Ok(res) if res.status().is_success() => Ok(res),
        // Refused before storing anything.
        Ok(res) if res.status() == 429 || res.status() == 401 || res.status() == 403 => {
            Err(Sent::Unsent)
        }
        Ok(_) => Err(Sent::Maybe),
        Err(e) if e.is_connect() => Err(Sent::Unsent),
        Err(_) => Err(Sent::Maybe),
    }
}

async fn mercure(env: &Env, node: &str, channel: &str, n: u64) -> Sent {
    let body = format!(
        "topic={}&id={}&data={}",
        tidings::protocol::mercure::form::encode(channel),
        tidings::protocol::mercure::form::encode(&format!("urn:faults:{channel}:{n}")),
        tidings::protocol::mercure::form::encode(&payload(channel, n).to_string())
    );
    let sent = env
        .http
        .post(format!("{node}/.well-known/mercure"))
        .bearer_auth(&env.mercure_token)
        .header("content-type", "application/x-www-form-urlencoded")
        .timeout(Duration::from_secs(10))
        .body(body)
        .send()
        .await;
    match classify(sent) {
        Ok(_) => Sent::Acked,
        Err(s) => s,
    }
}

async fn api(env: &Env, node: &str, channel: &str, n: u64) -> Sent {
    let sent = env
        .http
        .post(format!("{node}/api/publish"))
        .header("x-api-key", API_KEY)
        .timeout(Duration::from_secs(10))
        .json(&json!({"channel": channel, "data": payload(channel, n)}))
        .send()
        .await;
    let res = match classify(sent) {
        Ok(res) => res,
        Err(s) => return s,
    };
    match res.json::<serde_json::Value>().await {
        Ok(v) if v.get("result").is_some() => Sent::Acked,
        _ => Sent::Maybe,
    }
}

/// `count` publications in one `batch` request: acknowledged only when
/// every one of them is.
async fn batch(env: &Env, node: &str, channel: &str, first: u64, count: usize) -> Sent {
    let commands: Vec<_> = (0..count as u64)
        .map(|i| json!({"publish": {"channel": channel, "data": payload(channel, first + i)}}))
        .collect();
    let sent = env
        .http
        .post(format!("{node}/api/batch"))
        .header("x-api-key", API_KEY)
        .timeout(Duration::from_secs(30))
        .json(&json!({"commands": commands}))
        .send()
        .await;
    let res = match classify(sent) {
        Ok(res) => res,
        Err(s) => return s,
    };
    let all_ok = res.json::<serde_json::Value>().await.ok().and_then(|v| {
        let replies = v.get("replies")?.as_array()?.clone();
        Some(replies.len() == count && replies.iter().all(|r| r.get("publish").is_some()))
    });
    if all_ok == Some(true) {
        Sent::Acked
    } else {
        Sent::Maybe
    }
}
