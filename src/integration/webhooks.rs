//! Webhooks: the application is told what happens on the hub.
//!
//! Connect, disconnect (with the code and reason), subscribe, unsubscribe,
//! and a channel becoming occupied (first subscriber on this node) or
//! vacated (last one gone) are [`Event`]s. [`Webhooks::emit`] never blocks
//! the connection that causes one: events go through a channel to a writer
//! task that appends them, in batches, to every endpoint's durable queue
//! ([`super::queue`]). One delivery task per endpoint then POSTs batches
//! `{"events": [...]}`, signed, and removes them only once the endpoint
//! answered 2xx; a failure is retried with exponential backoff, forever
//! (the queue's bound is what gives). Delivery is at least once: an
//! endpoint may see an event twice (after a timeout, a restart, or a node
//! taking over a dead node's queue) and deduplicates by its `id`.
//!
//! Signature: `X-Tidings-Timestamp: <unix seconds>` and
//! `X-Tidings-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`,
//! so a receiver can refuse forged and replayed requests.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::queue::EventQueue;

/// The kinds of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A client connected.
    Connect,
    /// A client's connection ended.
    Disconnect,
    /// A client subscribed to a channel.
    Subscribe,
    /// A client left a channel.
    Unsubscribe,
    /// A channel got its first subscriber on a node.
    Occupied,
    /// A channel lost its last subscriber on a node.
    Vacated,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 6] = [
        EventKind::Connect,
        EventKind::Disconnect,
        EventKind::Subscribe,
        EventKind::Unsubscribe,
        EventKind::Occupied,
        EventKind::Vacated,
    ];

    /// The name in configuration and in events.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::Disconnect => "disconnect",
            EventKind::Subscribe => "subscribe",
            EventKind::Unsubscribe => "unsubscribe",
            EventKind::Occupied => "occupied",
            EventKind::Vacated => "vacated",
        }
    }

    /// The kind of that name.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One event, as the endpoint receives it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique: the receiver deduplicates by it.
    pub id: String,
    /// What happened.
    pub event: EventKind,
    /// When (Unix milliseconds).
    pub time: u64,
    /// The node it happened on.
    pub node: String,
    /// `centrifugo` or `mercure` (empty for channel events).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub protocol: &'static str,
    /// The transport (`websocket`, `sse`…).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub transport: &'static str,
    /// The client id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client: String,
    /// The user id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// The channel (or Mercure topic selector).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub channel: String,
    /// Disconnect code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// Disconnect or unsubscribe reason.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Event {
    /// A new event of `kind` (fill in the rest).
    pub fn new(kind: EventKind) -> Event {
        Event {
            id: uuid::Uuid::new_v4().to_string(),
            event: kind,
            time: crate::time::now_ms(),
            node: String::new(),
            protocol: "",
            transport: "",
            client: String::new(),
            user: String::new(),
            channel: String::new(),
            code: None,
            reason: String::new(),
        }
    }
}

/// Validated `[webhooks]`.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Endpoints (none: webhooks off).
    pub endpoints: Vec<Url>,
    /// HMAC secret (None: unsigned).
    pub secret: Option<String>,
    /// Events delivered.
    pub events: Vec<EventKind>,
    /// Most events per request.
    pub batch_size: usize,
    /// How long a batch waits to fill.
    pub batch_wait: Duration,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Longest pause between retries.
    pub max_backoff: Duration,
    /// Most events queued per endpoint.
    pub max_queue: usize,
}

/// How often a delivery task looks at a queue other nodes also fill.
const SHARED_POLL: Duration = Duration::from_millis(500);

/// The webhook machinery of a node.
pub struct Webhooks {
    wanted: Vec<EventKind>,
    node: String,
    /// Taken away at shutdown, which lets the writer drain and end.
    tx: Mutex<Option<mpsc::UnboundedSender<Event>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stop: CancellationToken,
}

impl Webhooks {
    /// No endpoints: every event is ignored.
    pub fn off() -> Arc<Webhooks> {
        Arc::new(Webhooks {
            wanted: Vec::new(),
            node: String::new(),
            tx: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            stop: CancellationToken::new(),
        })
    }

    /// Starts the writer and one delivery task per endpoint.
    pub fn start(settings: WebhookSettings, queue: Arc<dyn EventQueue>, node: String) -> Arc<Self> {
        if settings.endpoints.is_empty() || settings.events.is_empty() {
            return Webhooks::off();
        }
        let settings = Arc::new(settings);
        let client = reqwest::Client::new();
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut targets = Vec::new();
        for url in &settings.endpoints {
            let target = Arc::new(Target {
                name: queue_name(url),
                url: url.clone(),
                pushed: Notify::new(),
            });
            targets.push(target.clone());
            tasks.push(tokio::spawn(deliver(
                target,
                queue.clone(),
                settings.clone(),
                client.clone(),
                stop.clone(),
            )));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        // The writer is awaited on shutdown (it ends when `tx` is dropped),
        // so it is kept apart from the delivery tasks.
        let writer = tokio::spawn(write(rx, targets, queue, settings.clone()));
        tasks.insert(0, writer);
        Arc::new(Webhooks {
            wanted: settings.events.clone(),
            node,
            tx: Mutex::new(Some(tx)),
            tasks: Mutex::new(tasks),
            stop,
        })
    }

    /// Whether events of `kind` are delivered (callers skip building them
    /// otherwise).
    pub fn wants(&self, kind: EventKind) -> bool {
        self.wanted.contains(&kind)
    }

    /// Queues an event for every endpoint; never blocks.
    pub fn emit(&self, mut event: Event) {
        if !self.wants(event.event) {
            return;
        }
        event.node.clone_from(&self.node);
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(event);
        }
    }

    /// Stops delivering, after everything emitted so far is in the queues
    /// (what is not delivered yet goes out after the restart).
    pub async fn shutdown(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock());
        if tasks.is_empty() {
            return;
        }
        let writer = tasks.remove(0);
        self.tx.lock().take();
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .is_err()
        {
            tracing::warn!("webhook events still unqueued at shutdown");
        }
        for t in tasks {
            t.abort();
        }
    }
}

/// One endpoint and its queue.
struct Target {
    name: String,
    url: Url,
    /// Woken when this node queued events for it.
    pushed: Notify,
}

/// The queue of an endpoint: a short digest of its URL, so the same
/// endpoint keeps its queue across restarts and nodes.
fn queue_name(url: &Url) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, url.as_str().as_bytes());
    hex(&digest.as_ref()[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Appends emitted events to every endpoint's queue, in batches.
async fn write(
    mut rx: mpsc::UnboundedReceiver<Event>,
    targets: Vec<Arc<Target>>,
    queue: Arc<dyn EventQueue>,
    settings: Arc<WebhookSettings>,
) {
    let mut batch = Vec::new();
    let mut backoff = crate::time::Backoff::default();
    loop {
        if batch.is_empty() {
            let mut events = Vec::new();
            // Ends when the last sender is gone (shutdown) and all is read.
            if rx.recv_many(&mut events, 1024).await == 0 {
                return;
            }
            batch = events
                .iter()
                .filter_map(|e| serde_json::to_vec(e).ok().map(Bytes::from))
                .collect();
        }
        let mut failed = false;
        for t in &targets {
            match queue.push(&t.name, &batch, settings.max_queue).await {
                Ok(dropped) => {
                    if dropped > 0 {
                        crate::metrics::webhook_events("dropped", dropped);
                        tracing::warn!(endpoint = %t.url, dropped, "webhook queue full: oldest events dropped");
                    }
                    t.pushed.notify_one();
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot queue webhook events");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            // Keep the batch and try again (a queue that took it already
            // may get it twice: at least once).
            backoff.wait().await;
            continue;
        }
        backoff.reset();
        crate::metrics::webhook_events("queued", batch.len());
        batch.clear();
    }
}

/// Delivers one endpoint's queue.
async fn deliver(
    target: Arc<Target>,
    queue: Arc<dyn EventQueue>,
    settings: Arc<WebhookSettings>,
    client: reqwest::Client,
    stop: CancellationToken,
) {
    let mut pause = Duration::ZERO;
    loop {
        let batch = match queue.peek(&target.name, settings.batch_size).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read webhook queue");
                Vec::new()
            }
        };
        if batch.is_empty() {
            let wait = if queue.shared() {
                SHARED_POLL
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                _ = target.pushed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
            // Let a burst fill the batch.
            tokio::time::sleep(settings.batch_wait).await;
            continue;
        }
        let body = envelope(batch.iter().map(|q| &q.body[..]));
        match post(&client, &target.url, &settings, body).await {
            Ok(()) => {
                pause = Duration::ZERO;
                let ids: Vec<String> = batch.iter().map(|q| q.id.clone()).collect();
                crate::metrics::webhook_events("delivered", ids.len());
                if let Err(e) = queue.ack(&target.name, &ids).await {
                    tracing::error!(error = %e, "cannot remove delivered webhook events");
                }
            }
            Err(why) => {
                crate::metrics::webhook_failure(target.url.as_str(), &why);
                pause = (pause * 2)
                    .max(Duration::from_millis(100))
                    .min(settings.max_backoff);
                tracing::warn!(endpoint = %target.url, %why, retry_in = ?pause, "webhook delivery failed");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// `{"events":[e1,e2,…]}` from event bodies that are JSON already.
fn envelope<'a>(events: impl Iterator<Item = &'a [u8]>) -> Bytes {
    let mut body = BytesMut::from(&b"{\"events\":["[..]);
    for (i, e) in events.enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(e);
    }
    body.put_slice(b"]}");
    body.freeze()
}

/// The signature header value for `body` sent at `timestamp`.
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex(ctx.sign().as_ref()))
}

async fn post(
    client: &reqwest::Client,
    url: &Url,
    settings: &WebhookSettings,
    body: Bytes,
) -> Result<(), String> {
    let timestamp = crate::time::now_ms() / 1000;
    let mut request = client
        .post(url.clone())
        .timeout(settings.timeout)
        .header("content-type", "application/json")
        .header("x-tidings-timestamp", timestamp.to_string());
    if let Some(secret) = &settings.secret {
        request = request.header("x-tidings-signature", signature(secret, timestamp, &body));
    }
    let response = request.body(body).send().await.map_err(|e| {
        if e.is_timeout() {
            "timeout".to_owned()
        } else {
            format!("unreachable: {e}")
        }
    })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", response.status().as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_joins_events() {
        let b = envelope([&b"{\"a\":1}"[..], b"{\"b\":2}"].into_iter());
        assert_eq!(&b[..], br#"{"events":[{"a":1},{"b":2}]}"#);
        assert_eq!(&envelope(std::iter::empty())[..], br#"{"events":[]}"#);
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // Python: hmac.new(b"secret", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature("secret", 1_700_000_000, b"{}"),
            "sha256=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
        assert_ne!(signature("secret", 1, b"{}"), signature("secret", 2, b"{}"));
    }

    #[test]
    fn event_json_omits_empty_fields() {
        let mut e = Event::new(EventKind::Vacated);
        e.channel = "news".into();
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "vacated");
        assert_eq!(v["channel"], "news");
        assert!(v.get("user").is_none() && v.get("code").is_none());
    }
}
