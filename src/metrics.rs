//! Prometheus metrics (`GET /metrics`), through the `metrics` facade and
//! its Prometheus exporter.
//!
//! Two kinds of figures, chosen by where they are cheapest:
//!
//! - Events off the hot path (connections opening and closing, disconnects,
//!   auth failures, HTTP requests, history commits) are recorded where they
//!   happen, with the helpers below.
//! - Per-publication counters (publications, deliveries, drops) stay plain
//!   atomics in the hub and are copied into the registry when Prometheus
//!   scrapes ([`render`]), with the gauges that are a snapshot anyway
//!   (subscriptions, channels, queue depth). Fan-out pays one atomic add.
//!
//! Every name is listed with its meaning in docs/operations.md.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Instant;

use parking_lot::Mutex;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: 100 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Publications per history commit: 1 to 512 (`hub.max_batch`).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls reuse it).
/// Returns None if another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(SECONDS_BUCKETS)
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("tidings_history_append_batch".into()),
                    BATCH_BUCKETS,
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

/// Drains histogram samples into their buckets every few seconds. The
/// recorder keeps every sample until then: without this, a hub that nobody
/// scrapes would hold one sample per HTTP request forever (about 30 bytes
/// a connection under connection churn).
pub fn spawn_upkeep() {
    if let Some(handle) = HANDLE.get().and_then(Option::as_ref) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
}

/// The `# HELP` lines.
fn describe() {
    describe_gauge!(
        "tidings_tcp_connections",
        "Open TCP connections admitted by the listener (HTTP/1.1, HTTP/2 with all its streams, upgraded WebSockets)."
    );
    describe_counter!(
        "tidings_limit_refusals_total",
        "Connections, sessions and publications refused by a [limits] setting, by limit."
    );
    describe_counter!(
        "tidings_idle_closes_total",
        "Connections closed for silence (limits.idle_timeout, or no first byte within limits.header_timeout)."
    );
    describe_counter!(
        "tidings_write_stalls_total",
        "Connections closed because a write to them made no progress for limits.write_timeout (the client stopped reading)."
    );
    describe_gauge!(
        "tidings_connections",
        "Open connections by protocol and transport."
    );
    describe_histogram!(
        "tidings_engine_lag_seconds",
        "Time from a publication's acceptance by the shared engine to its arrival at this node."
    );
    describe_counter!(
        "tidings_engine_errors_total",
        "Failed engine operations by engine and operation (connect, feed, events, decode, presence, broadcast)."
    );
    describe_counter!(
        "tidings_engine_resets_total",
        "Times the engine lost state this node relied on; its clients were sent to recover."
    );
    describe_counter!(
        "tidings_connections_opened_total",
        "Connections accepted by protocol and transport."
    );
    describe_counter!(
        "tidings_disconnects_total",
        "Centrifugo connections closed by the server, by transport and disconnect code (3008: slow consumer)."
    );
    describe_gauge!(
        "tidings_subscriptions",
        "Live hub subscriptions (all protocols)."
    );
    describe_gauge!(
        "tidings_channels",
        "Channels with at least one exact subscriber."
    );
    describe_gauge!(
        "tidings_centrifugo_clients",
        "Connected Centrifugo clients on this node."
    );
    describe_gauge!("tidings_centrifugo_users", "Distinct users among them.");
    describe_counter!(
        "tidings_publications_total",
        "Publications stored in history."
    );
    describe_counter!(
        "tidings_deliveries_total",
        "Publications queued to subscribers (one per subscriber reached)."
    );
    describe_counter!(
        "tidings_delivery_drops_total",
        "Publications not queued because a subscriber's queue was full; that subscriber is disconnected and resumes from history."
    );
    describe_counter!(
        "tidings_slow_consumer_disconnects_total",
        "Connections closed because their delivery queue overflowed."
    );
    describe_gauge!(
        "tidings_delivery_queue_depth",
        "Deliveries waiting in all connection queues."
    );
    describe_gauge!(
        "tidings_delivery_queue_depth_max",
        "Deliveries waiting in the fullest connection queue (hub.queue_size is the limit)."
    );
    describe_histogram!(
        "tidings_history_append_seconds",
        "Time of one history commit (a batch of publications)."
    );
    describe_histogram!(
        "tidings_history_append_batch",
        "Publications per history commit."
    );
    describe_counter!(
        "tidings_auth_failures_total",
        "Refused credentials by protocol (mercure, centrifugo, api) and reason."
    );
    describe_counter!(
        "tidings_api_commands_total",
        "Centrifugo server API commands by method and outcome."
    );
    describe_counter!(
        "tidings_http_requests_total",
        "HTTP requests by route, method and status."
    );
    describe_counter!(
        "tidings_proxy_requests_total",
        "Proxy requests to the application by proxy (connect, refresh, subscribe, publish, sub_refresh, rpc, mercure) and result (ok, timeout, unreachable, status, malformed)."
    );
    describe_histogram!(
        "tidings_proxy_request_seconds",
        "Time of one proxy request by proxy."
    );
    describe_counter!(
        "tidings_webhook_events_total",
        "Webhook events by outcome: queued, dropped (queue full), delivered."
    );
    describe_counter!(
        "tidings_webhook_failures_total",
        "Failed webhook deliveries (retried with backoff) by endpoint."
    );
    describe_histogram!(
        "tidings_http_request_seconds",
        "Time to the response head by route and method (streams last longer)."
    );
}

/// The Prometheus text exposition of every metric, with the hub's
/// counters and snapshots brought up to date first.
pub fn render(now: &Figures) -> String {
    let Some(handle) = HANDLE.get().and_then(Option::as_ref) else {
        return String::new();
    };
    counter!("tidings_publications_total").absolute(now.publications);
    counter!("tidings_deliveries_total").absolute(now.deliveries);
    counter!("tidings_delivery_drops_total").absolute(now.drops);
    counter!("tidings_slow_consumer_disconnects_total").absolute(now.slow_disconnects);
    gauge!("tidings_subscriptions").set(now.subscriptions as f64);
    gauge!("tidings_channels").set(now.channels as f64);
    gauge!("tidings_delivery_queue_depth").set(now.queued as f64);
    gauge!("tidings_delivery_queue_depth_max").set(now.deepest as f64);
    gauge!("tidings_centrifugo_clients").set(now.clients as f64);
    gauge!("tidings_centrifugo_users").set(now.users as f64);
    handle.render()
}

/// What the hub counts itself, read when `/metrics` is asked.
#[derive(Debug, Default, Clone, Copy)]
pub struct Figures {
    /// Publications accepted since start.
    pub publications: u64,
    /// Publications queued to subscribers since start.
    pub deliveries: u64,
    /// Publications not queued because a queue was full.
    pub drops: u64,
    /// Subscribers dropped for not keeping up.
    pub slow_disconnects: u64,
    /// Live subscriptions.
    pub subscriptions: usize,
    /// Channels with subscribers.
    pub channels: usize,
    /// Deliveries waiting in all queues.
    pub queued: usize,
    /// Deliveries waiting in the fullest queue.
    pub deepest: usize,
    /// Centrifugo connections.
    pub clients: usize,
    /// Distinct users among them.
    pub users: usize,
}

/// Counts a connection while it lives.
pub struct OpenConnection {
    protocol: &'static str,
    transport: &'static str,
}

/// Records a new connection; the returned guard records its end.
pub fn connection_opened(protocol: &'static str, transport: &'static str) -> OpenConnection {
    counter!("tidings_connections_opened_total", "protocol" => protocol, "transport" => transport)
        .increment(1);
    gauge!("tidings_connections", "protocol" => protocol, "transport" => transport).increment(1.0);
    OpenConnection {
        protocol,
        transport,
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        gauge!("tidings_connections", "protocol" => self.protocol, "transport" => self.transport)
            .decrement(1.0);
    }
}

/// Records a connection closed because a write to it stalled
/// (`limits.write_timeout`).
pub fn write_stalled(transport: &'static str) {
    counter!("tidings_write_stalls_total", "transport" => transport).increment(1);
    remember(
        "disconnect",
        format!("{transport}: write stalled (slow consumer)"),
    );
}

/// Records a Centrifugo disconnect by code (3008 is a slow consumer).
pub fn disconnect(transport: &'static str, code: u16, reason: &str) {
    counter!("tidings_disconnects_total", "transport" => transport, "code" => code.to_string())
        .increment(1);
    remember("disconnect", format!("{transport}: {code} {reason}"));
}

/// Records a failed engine operation.
pub fn engine_error(engine: &'static str, op: &'static str) {
    counter!("tidings_engine_errors_total", "engine" => engine, "op" => op).increment(1);
}

/// Records how long a publication took from the engine to this node.
pub fn engine_lag(time_ms: u64) {
    let lag = crate::time::now_ms().saturating_sub(time_ms);
    histogram!("tidings_engine_lag_seconds").record(lag as f64 / 1000.0);
}

/// Records an engine reset (clients sent to recover).
pub fn engine_reset(engine: &'static str, why: &str) {
    counter!("tidings_engine_resets_total", "engine" => engine).increment(1);
    remember("engine reset", format!("{engine}: {why}"));
}

/// Records a proxy request and its result: `ok`, or the failure's label
/// and message.
pub fn proxy_call(
    proxy: &'static str,
    took: std::time::Duration,
    failure: Option<(&'static str, String)>,
) {
    let result = failure.as_ref().map_or("ok", |(label, _)| label);
    counter!("tidings_proxy_requests_total", "proxy" => proxy, "result" => result).increment(1);
    histogram!("tidings_proxy_request_seconds", "proxy" => proxy).record(took.as_secs_f64());
    if let Some((_, message)) = failure {
        remember("proxy failure", format!("{proxy}: {message}"));
    }
}

/// Records webhook events by outcome (queued, dropped, delivered).
pub fn webhook_events(outcome: &'static str, n: usize) {
    counter!("tidings_webhook_events_total", "outcome" => outcome).increment(n as u64);
}

/// Records a failed webhook delivery.
pub fn webhook_failure(endpoint: &str, why: &str) {
    counter!("tidings_webhook_failures_total", "endpoint" => endpoint.to_owned()).increment(1);
    remember("webhook failure", format!("{endpoint}: {why}"));
}

/// Records a refused credential.
pub fn auth_failure(protocol: &'static str, reason: &'static str) {
    counter!("tidings_auth_failures_total", "protocol" => protocol, "reason" => reason)
        .increment(1);
    remember("auth failure", format!("{protocol}: {reason}"));
}

/// How many recent events the admin dashboard can show.
const RECENT: usize = 100;

/// Something worth an operator's glance: a disconnect, a refused credential.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `disconnect` or `auth failure`.
    pub kind: &'static str,
    /// Transport or protocol, code and reason.
    pub detail: String,
}

static RECENT_EVENTS: Mutex<VecDeque<RecentEvent>> = Mutex::new(VecDeque::new());

fn remember(kind: &'static str, detail: String) {
    let mut events = RECENT_EVENTS.lock();
    if events.len() == RECENT {
        events.pop_front();
    }
    events.push_back(RecentEvent {
        time_ms: crate::time::now_ms(),
        kind,
        detail,
    });
}

/// The latest disconnects and auth failures, newest first.
pub fn recent_events() -> Vec<RecentEvent> {
    RECENT_EVENTS.lock().iter().rev().cloned().collect()
}

/// Records a Centrifugo server API command and its outcome.
pub fn api_command(method: &str, outcome: &'static str) {
    counter!("tidings_api_commands_total", "method" => method.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// Records how long a history commit took.
pub fn history_append(started: Instant, publications: usize) {
    histogram!("tidings_history_append_seconds").record(started.elapsed().as_secs_f64());
    histogram!("tidings_history_append_batch").record(publications as f64);
}

/// Middleware: counts HTTP requests by route, method and status, and times
/// them (to the response head; streams last longer).
pub async fn track_http(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    histogram!("tidings_http_request_seconds", "route" => route.clone(), "method" => method.clone())
        .record(started.elapsed().as_secs_f64());
    counter!("tidings_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}
