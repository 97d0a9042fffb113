//! The benchmark's subscribers and publishers, kept cheap: the bench shares
//! the machine with the server, so every cycle it spends is one the server
//! cannot use. Subscribers never parse what they receive beyond finding
//! the `"seq":` and `"t":` markers of each delivery (`accounting::scan`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::accounting::{latency_histogram, scan, Tally};
use super::BenchError;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// What one subscriber measured since the last [`Received::take`].
#[derive(Default)]
pub struct Received {
    /// Its channel's deliveries.
    pub tally: Tally,
    /// Latencies in microseconds (created at the first delivery).
    pub latencies: Option<hdrhistogram::Histogram<u64>>,
    /// Bytes read after the subscription was set up.
    pub bytes: u64,
}

impl Received {
    fn record(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        let now = now_us();
        let Received {
            tally, latencies, ..
        } = self;
        scan(chunk, |seq, sent| {
            tally.record(seq);
            if sent > 0 {
                let h = latencies.get_or_insert_with(latency_histogram);
                let _ = h.record(now.saturating_sub(sent).max(1));
            }
        });
    }

    /// Takes what was measured so far and starts counting afresh (the
    /// tally keeps its position, so a new step does not see old sequence
    /// numbers as reordered).
    pub fn take(&mut self) -> Received {
        let taken = Received {
            tally: self.tally.clone(),
            latencies: self.latencies.take(),
            bytes: self.bytes,
        };
        self.tally.reset_counts();
        self.bytes = 0;
        taken
    }
}

/// How a subscriber connects.
#[derive(Debug, Clone)]
pub enum Subscribe {
    /// `GET url` with `Accept: text/event-stream`.
    Sse {
        /// The URL.
        url: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// A WebSocket to `url`; `init` messages are sent first and the
    /// subscription is ready after `ready_replies` messages came back.
    WebSocket {
        /// The URL.
        url: String,
        /// Messages to send after the handshake.
        init: Vec<String>,
        /// Replies that mean "subscribed".
        ready_replies: usize,
        /// Answer `{}` pings with `{}` (Centrifugo).
        pong: bool,
    },
}

/// A live subscriber: its measurements and how long it took to be ready.
pub struct Subscriber {
    /// What it received (shared with its task).
    pub received: Arc<Mutex<Received>>,
    /// From dialing to the subscription being ready.
    pub connect_time: Duration,
}

/// Connects a subscriber; it runs until `stop`.
pub async fn subscribe(how: &Subscribe, stop: CancellationToken) -> Result<Subscriber, BenchError> {
    let started = Instant::now();
    let received = Arc::new(Mutex::new(Received::default()));
    match how {
        Subscribe::Sse { url, headers } => {
            let uri: hyper::Uri = url
                .parse()
                .map_err(|e| BenchError::Target(format!("{url}: {e}")))?;
            let mut sender = dial(&uri).await?;
            let mut req = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
                .header("host", uri.authority().map_or("", |a| a.as_str()))
                .header("accept", "text/event-stream");
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let req = req
                .body(Full::new(Bytes::new()))
                .map_err(|e| BenchError::Target(e.to_string()))?;
            let res = sender.send_request(req).await.map_err(BenchError::io)?;
            if !res.status().is_success() {
                return Err(BenchError::Target(format!("{url}: HTTP {}", res.status())));
            }
            let connect_time = started.elapsed();
            let mut body = res.into_body();
            let sink = received.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        frame = body.frame() => match frame {
                            Some(Ok(f)) => {
                                if let Some(data) = f.data_ref() {
                                    sink.lock().record(data);
                                }
                            }
                            _ => return,
                        },
                        _ = stop.cancelled() => return,
                    }
                }
            });
            Ok(Subscriber {
                received,
                connect_time,
            })
        }
        Subscribe::WebSocket {
            url,
            init,
            ready_replies,
            pong,
        } => {
            // Small buffers: ten thousand idle clients must fit beside the server.
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let (mut ws, _) =
                tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true)
                    .await
                    .map_err(|e| BenchError::Target(format!("{url}: {e}")))?;
            for m in init {
                ws.send(Message::text(m.clone()))
                    .await
                    .map_err(|e| BenchError::Target(e.to_string()))?;
            }
            let mut replies = 0;
            while replies < *ready_replies {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        if t.contains("\"error\"") {
                            return Err(BenchError::Target(format!("{url}: {t}")));
                        }
                        replies += t.lines().filter(|l| l.contains("\"id\"")).count();
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        return Err(BenchError::Target(format!(
                            "{url}: closed while subscribing"
                        )))
                    }
                }
            }
            let connect_time = started.elapsed();
            let sink = received.clone();
            let pong = *pong;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        msg = ws.next() => match msg {
                            Some(Ok(Message::Text(t))) => {
                                if pong && t.as_str() == "{}" {
                                    let _ = ws.send(Message::text("{}")).await;
                                    continue;
                                }
                                sink.lock().record(t.as_bytes());
                            }
                            Some(Ok(Message::Binary(b))) => sink.lock().record(&b),
                            Some(Ok(_)) => {}
                            _ => return,
                        },
                        _ = stop.cancelled() => return,
                    }
                }
            });
            Ok(Subscriber {
                received,
                connect_time,
            })
        }
    }
}

async fn dial(uri: &hyper::Uri) -> Result<http1::SendRequest<Full<Bytes>>, BenchError> {
    let host = uri.host().unwrap_or("127.0.0.1");
    let port = uri.port_u16().unwrap_or(80);
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(BenchError::io)?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(BenchError::io)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// How a publication is sent.
#[derive(Debug, Clone)]
pub struct Publish {
    /// URL template (`{channel}`).
    pub url: String,
    /// Body template: `{channel}`, `{payload}` (as is), `{payload_form}`
    /// (form-encoded).
    pub body: String,
    /// Headers (`Content-Type`, credentials).
    pub headers: Vec<(String, String)>,
}

/// One keep-alive connection that publishes, in order, what it is given.
pub struct Publisher {
    how: Publish,
    /// Request path of each channel, worked out once.
    paths: std::collections::HashMap<String, String>,
    sender: http1::SendRequest<Full<Bytes>>,
    authority: String,
}

impl Publisher {
    /// Connects to the publish URL's server.
    pub async fn connect(how: Publish) -> Result<Publisher, BenchError> {
        let probe = how.url.replace("{channel}", "x");
        let uri: hyper::Uri = probe
            .parse()
            .map_err(|e| BenchError::Target(format!("{probe}: {e}")))?;
        let sender = dial(&uri).await?;
        Ok(Publisher {
            paths: Default::default(),
            authority: uri.authority().map_or(String::new(), |a| a.to_string()),
            how,
            sender,
        })
    }

    /// Publishes `payload` on `channel`; true when the server accepted it.
    pub async fn publish(&mut self, channel: &str, payload: &str) -> bool {
        let path = self
            .paths
            .entry(channel.to_owned())
            .or_insert_with(|| {
                let url = self.how.url.replace("{channel}", channel);
                url.parse::<hyper::Uri>()
                    .ok()
                    .and_then(|u| u.path_and_query().map(|p| p.to_string()))
                    .unwrap_or_else(|| "/".into())
            })
            .clone();
        let mut body = self.how.body.replace("{channel}", channel);
        if body.contains("{payload_form}") {
            body = body.replace(
                "{payload_form}",
                &crate::protocol::mercure::form::encode(payload),
            );
        }
        let body = body.replace("{payload}", payload);
        let mut req = hyper::Request::post(path).header("host", &self.authority);
        for (k, v) in &self.how.headers {
            req = req.header(k, v);
        }
        let Ok(req) = req.body(Full::new(Bytes::from(body))) else {
            return false;
        };
        if self.sender.ready().await.is_err() {
            return false;
        }
        match self.sender.send_request(req).await {
            Ok(res) => {
                let ok = res.status().is_success();
                let _ = res.into_body().collect().await;
                ok
            }
            Err(_) => false,
        }
    }
}
