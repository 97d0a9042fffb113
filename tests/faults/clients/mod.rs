//! Clients of every transport, each a task that connects, receives,
//! reconnects with its position whenever its connection ends, and records
//! what it got (see `record`). The schedule drives them with [`Control`]s.
//!
//! They speak the protocols from the wire up (reqwest for HTTP,
//! tokio-tungstenite for WebSocket); only the Centrifugo message structs
//! and the SSE parser come from the hub's crate.

mod centrifugo;
mod mercure;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::record::{ClientRecord, Shared};
use crate::rng::Rng;

/// The prefix of every channel of a run: a URL, so that Mercure URL
/// patterns and URI templates can select them, and a Centrifugo namespace
/// (`https`) at the same time.
pub const CHANNEL_PREFIX: &str = "https://faults.test/c/";

/// A client's transport and how it subscribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Mercure SSE, `match=` each of its channels.
    MercureExact,
    /// Mercure SSE, `match_urlpattern=` selecting every channel.
    MercurePattern,
    /// Mercure SSE, legacy `topic=` URI template selecting every channel.
    MercureTemplate,
    /// Centrifugo over WebSocket, JSON.
    WebSocketJson,
    /// Centrifugo over WebSocket, Protobuf.
    WebSocketProtobuf,
    /// Centrifugo over HTTP streaming, commands through `/emulation`.
    HttpStream,
    /// Centrifugo over SSE, commands through `/emulation`.
    SseEmulation,
    /// Centrifugo unidirectional SSE, resuming with `Last-Event-ID`.
    UniSse,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::MercureExact,
        Kind::MercurePattern,
        Kind::MercureTemplate,
        Kind::WebSocketJson,
        Kind::WebSocketProtobuf,
        Kind::HttpStream,
        Kind::SseEmulation,
        Kind::UniSse,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::MercureExact => "mercure-exact",
            Kind::MercurePattern => "mercure-urlpattern",
            Kind::MercureTemplate => "mercure-topic-template",
            Kind::WebSocketJson => "ws-json",
            Kind::WebSocketProtobuf => "ws-protobuf",
            Kind::HttpStream => "http-stream",
            Kind::SseEmulation => "sse-emulation",
            Kind::UniSse => "uni-sse",
        }
    }

    /// True when it selects every channel of the run, whatever it is given.
    pub fn selects_all(self) -> bool {
        matches!(self, Kind::MercurePattern | Kind::MercureTemplate)
    }
}

/// What the schedule asks of a client.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    /// Close the connection now; reconnect with the position after this
    /// long.
    Drop(Duration),
    /// Stop reading for this long (the hub should close it as a slow
    /// consumer), then go on.
    Stall(Duration),
    /// Read slowly for this long.
    Slow(Duration),
}

/// What every client needs to know of the run.
pub struct Env {
    /// The nodes' base URLs (`http://127.0.0.1:port`).
    pub nodes: Vec<String>,
    /// Centrifugo connection token key.
    pub secret: String,
    pub http: reqwest::Client,
}

/// A running client.
pub struct Client {
    pub name: String,
    pub channels: Vec<String>,
    pub control: mpsc::UnboundedSender<Control>,
    pub record: Shared<ClientRecord>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Client {
    /// Starts a client of `kind` on `channels` (all of them for the kinds
    /// that select every channel).
    pub fn spawn(kind: Kind, id: usize, channels: Vec<String>, env: Arc<Env>, rng: Rng) -> Client {
        let name = format!("{}#{id}", kind.name());
        let record = Shared::default();
        let (control, controls) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let conn = Conn {
            name: name.clone(),
            kind,
            channels: channels.clone(),
            env,
            record: Arc::clone(&record),
            controls,
            stopped,
            rng,
            slow_until: None,
            away: Duration::ZERO,
        };
        let task = tokio::spawn(run(conn));
        Client {
            name,
            channels,
            control,
            record,
            stop,
            task,
        }
    }

    /// Stops the client and waits for it.
    pub async fn stop(self) -> (String, ClientRecord) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        let record = std::mem::take(&mut *self.record.lock());
        (self.name, record)
    }
}

/// Where a connection's messages come from.
pub trait Source {
    type Item;
    fn next_item(&mut self) -> impl Future<Output = Self::Item> + Send;
}

/// An HTTP response body.
pub struct Body(futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>);

impl Body {
    pub fn of(res: reqwest::Response) -> Body {
        Body(futures::StreamExt::boxed(res.bytes_stream()))
    }
}

impl Source for Body {
    type Item = Option<reqwest::Result<bytes::Bytes>>;
    fn next_item(&mut self) -> impl Future<Output = Self::Item> + Send {
        futures::StreamExt::next(&mut self.0)
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum End {
    /// The client is asked to stop.
    Stopped,
    /// The schedule dropped it.
    Dropped,
    /// The hub ended it (closed, disconnect, reset).
    ClosedByHub,
    /// No connection could be made (the hub is down, or refused).
    Unreachable,
}

/// A client's connection-independent state.
pub struct Conn {
    pub name: String,
    pub kind: Kind,
    pub channels: Vec<String>,
    pub env: Arc<Env>,
    pub record: Shared<ClientRecord>,
    controls: mpsc::UnboundedReceiver<Control>,
    stopped: watch::Receiver<bool>,
    pub rng: Rng,
    slow_until: Option<Instant>,
    /// How long to stay away after the schedule dropped the connection.
    away: Duration,
}

/// What interrupted a wait.
pub enum Interrupt {
    Stop,
    Drop,
    Timeout,
}

impl From<Interrupt> for End {
    fn from(i: Interrupt) -> End {
        match i {
            Interrupt::Stop => End::Stopped,
            Interrupt::Drop => End::Dropped,
            Interrupt::Timeout => End::ClosedByHub,
        }
    }
}

/// Longest silence of a live connection (heartbeats and pings come far
/// more often): past it the connection is taken as dead.
const SILENCE: Duration = Duration::from_secs(30);

impl Conn {
    /// Waits for `next` (the connection's next message), acting on the
    /// schedule's controls meanwhile: a stall stops reading for a while
    /// (`next` is not polled), a drop or a stop interrupts.
    pub async fn read<S: Source>(&mut self, source: &mut S) -> Result<S::Item, Interrupt> {
        loop {
            let item = {
                let next = source.next_item();
                tokio::select! {
                    item = next => Some(item),
                    control = self.controls.recv() => {
                        match control {
                            Some(Control::Drop(away)) => {
                                self.away = away;
                                return Err(Interrupt::Drop);
                            }
                            Some(Control::Stall(d)) => {
                                self.record.lock().stalled();
                                // Not reading at all: the hub must close us.
                                tokio::select! {
                                    _ = tokio::time::sleep(d) => {}
                                    _ = self.stopped.changed() => return Err(Interrupt::Stop),
                                }
                            }
                            Some(Control::Slow(d)) => self.slow_until = Some(Instant::now() + d),
                            None => {}
                        }
                        None
                    }
                    _ = self.stopped.changed() => return Err(Interrupt::Stop),
                    _ = tokio::time::sleep(SILENCE) => return Err(Interrupt::Timeout),
                }
            };
            if let Some(item) = item {
                if self.slow_until.is_some_and(|t| Instant::now() < t) {
                    tokio::time::sleep(self.rng.millis(5, 40)).await;
                }
                return Ok(item);
            }
        }
    }

    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// A node to connect to.
    pub fn node(&mut self) -> String {
        let nodes = &self.env.nodes;
        nodes[self.rng.below(nodes.len() as u64) as usize].clone()
    }

    pub fn anomaly(&self, what: String) {
        self.record.lock().anomalies.push(what);
    }

    /// The publication a payload names: `{"c": channel, "n": number}`.
    pub fn decode(&self, data: &[u8]) -> Option<(String, u64)> {
        let v: serde_json::Value = serde_json::from_slice(data).ok()?;
        let channel = v.get("c")?.as_str()?.to_owned();
        let n = v.get("n")?.as_u64()?;
        if !self.channels.contains(&channel) {
            self.anomaly(format!(
                "publication of {channel}, which it does not select"
            ));
        }
        Some((channel, n))
    }
}

async fn run(mut conn: Conn) {
    let mut state = State::default();
    loop {
        if conn.is_stopped() {
            break;
        }
        conn.record.lock().connections += 1;
        let end = match conn.kind {
            Kind::MercureExact | Kind::MercurePattern | Kind::MercureTemplate => {
                mercure::connection(&mut conn, &mut state).await
            }
            Kind::UniSse => centrifugo::uni_sse(&mut conn, &mut state).await,
            _ => centrifugo::bidirectional(&mut conn, &mut state).await,
        };
        conn.record.lock().ended_all();
        let pause = match end {
            End::Stopped => break,
            End::Dropped => conn.away,
            End::ClosedByHub => {
                conn.record.lock().closed_by_hub += 1;
                conn.rng.millis(50, 500)
            }
            End::Unreachable => conn.rng.millis(100, 600),
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = conn.stopped.changed() => break,
        }
    }
}

/// A client's position, kept across its connections.
#[derive(Default)]
pub struct State {
    /// Mercure: the last event id received.
    pub cursor: Option<String>,
    /// The last publication number received, by channel.
    pub last: std::collections::HashMap<String, u64>,
    /// Centrifugo: each channel's offset and epoch.
    pub positions: std::collections::HashMap<String, (u64, String)>,
}
