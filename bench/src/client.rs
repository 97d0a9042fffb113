//! The benchmark's subscribers and publishers, kept cheap: the bench shares
//! the machine with the server, so every cycle it spends is one the server
//! cannot use. Subscribers read their sockets directly (no HTTP or
//! WebSocket library per message: see [`crate::wire`]) and never parse what
//! they receive beyond finding the `"seq":` and `"t":` markers of each
//! delivery (`accounting::scan`). Latencies are kept as plain numbers and
//! put in a histogram once a step is over.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::accounting::{scan, Tally};
use crate::wire::{client_frame, Frames, Lines, Op, Responses};
use crate::BenchError;
use tidings::protocol::websocket::deflate::MessageInflater;

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
    /// Latencies in microseconds, in arrival order.
    pub latencies: Vec<u32>,
    /// Bytes read off the socket after the subscription was set up
    /// (framing included: chunk sizes, WebSocket headers).
    pub bytes: u64,
}

impl Received {
    fn record_all(&mut self, payload: &[u8], now: u64) {
        let Received {
            tally, latencies, ..
        } = self;
        scan(payload, |seq, sent| {
            tally.record(seq);
            if sent > 0 {
                latencies.push(now.saturating_sub(sent).clamp(1, u64::from(u32::MAX)) as u32);
            }
        });
    }

    /// Takes what was measured so far and starts counting afresh (the
    /// tally keeps its position, so a new step does not see old sequence
    /// numbers as reordered).
    pub fn take(&mut self) -> Received {
        let taken = Received {
            tally: self.tally.clone(),
            latencies: std::mem::take(&mut self.latencies),
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
        /// Offer permessage-deflate (and inflate compressed messages).
        compress: bool,
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
    let sink = received.clone();
    match how {
        Subscribe::Sse { url, headers } => {
            let (mut tcp, authority, path) = connect(url).await?;
            let mut req = format!(
                "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\n"
            );
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            tcp.write_all(req.as_bytes())
                .await
                .map_err(BenchError::io)?;
            let (status, body) = read_head(&mut tcp).await?;
            if !(200..300).contains(&status) {
                return Err(BenchError::Target(format!("{url}: HTTP {status}")));
            }
            let connect_time = started.elapsed();
            tokio::spawn(async move {
                let mut lines = Lines::default();
                let mut on = |bytes: &[u8]| {
                    let now = now_us();
                    let mut r = sink.lock();
                    r.bytes += bytes.len() as u64;
                    lines.feed(bytes, |line| r.record_all(line, now));
                    true
                };
                on(&body);
                read_until_stopped(&tcp, stop, on).await;
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
            compress,
        } => {
            let (mut tcp, authority, path) = connect(url).await?;
            let key = {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes())
            };
            let extensions = if *compress {
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            } else {
                ""
            };
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
                 {extensions}\r\n"
            );
            tcp.write_all(req.as_bytes())
                .await
                .map_err(BenchError::io)?;
            let (status, mut pending) = read_head(&mut tcp).await?;
            if status != 101 {
                return Err(BenchError::Target(format!(
                    "{url}: HTTP {status}, not a WebSocket"
                )));
            }
            for m in init {
                tcp.write_all(&client_frame(0x1, m.as_bytes()))
                    .await
                    .map_err(BenchError::io)?;
            }
            // Read until the subscription is confirmed; deliveries that
            // follow the replies in the same read already count.
            let mut frames = Frames::default();
            let mut replies = 0;
            let mut answers = Vec::new();
            let pong = *pong;
            loop {
                let mut error = None;
                let now = now_us();
                let ok = frames.feed(&pending, |op, payload| {
                    if replies >= *ready_replies {
                        on_frame(op, payload, pong, &mut sink.lock(), now, &mut answers);
                    } else if let Some(message) = data(op, payload) {
                        let text = String::from_utf8_lossy(&message);
                        replies += text.lines().filter(|l| l.contains("\"id\"")).count();
                        if text.contains("\"error\"") {
                            error = Some(text.into_owned());
                        }
                    }
                });
                if let Some(e) = error {
                    return Err(BenchError::Target(format!("{url}: {e}")));
                }
                if !ok {
                    return Err(BenchError::Target(format!("{url}: bad frame")));
                }
                if replies >= *ready_replies {
                    break;
                }
                pending = read_some(&mut tcp).await?;
                if pending.is_empty() {
                    return Err(BenchError::Target(format!(
                        "{url}: closed while subscribing"
                    )));
                }
            }
            let connect_time = started.elapsed();
            tokio::spawn(async move {
                let on = |bytes: &[u8]| {
                    let now = now_us();
                    let mut closed = false;
                    {
                        let mut r = sink.lock();
                        r.bytes += bytes.len() as u64;
                        let ok = frames.feed(bytes, |op, payload| {
                            closed |= on_frame(op, payload, pong, &mut r, now, &mut answers);
                        });
                        closed |= !ok;
                    }
                    for answer in answers.drain(..) {
                        // Tiny and rare: the socket always has room.
                        let _ = tcp.try_write(&answer);
                    }
                    !closed
                };
                read_until_stopped(&tcp, stop, on).await;
            });
            Ok(Subscriber {
                received,
                connect_time,
            })
        }
    }
}

thread_local! {
    /// One inflater per bench thread: the server compresses without
    /// context takeover, so each message inflates on its own.
    static INFLATER: std::cell::RefCell<MessageInflater> =
        std::cell::RefCell::new(MessageInflater::new(crate::wire::MAX_FRAME as usize));
}

/// A data frame's message: as it is, or inflated (None if it does not
/// inflate).
fn data(op: Op, payload: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    match op {
        Op::Data => Some(payload.into()),
        Op::Compressed => INFLATER.with(|inflater| {
            let mut inflater = inflater.borrow_mut();
            inflater.reset();
            let mut plain = Vec::new();
            inflater.frame(payload, true, &mut plain).ok()?;
            Some(plain.into())
        }),
        _ => None,
    }
}

/// Handles one frame from the server; true when it is a close.
fn on_frame(
    op: Op,
    payload: &[u8],
    pong: bool,
    r: &mut Received,
    now: u64,
    answers: &mut Vec<Vec<u8>>,
) -> bool {
    match op {
        Op::Data | Op::Compressed => match data(op, payload) {
            Some(m) if pong && *m == *b"{}" => answers.push(client_frame(0x1, b"{}")),
            Some(m) => r.record_all(&m, now),
            None => {}
        },
        Op::Ping => answers.push(client_frame(0xA, payload)),
        Op::Close => return true,
        Op::Other => {}
    }
    false
}

/// Reads until the server closes, `on` says stop, or `stop` fires. Reads
/// go into a buffer on the stack: ten thousand idle subscribers hold no
/// read buffer.
async fn read_until_stopped(
    tcp: &TcpStream,
    stop: CancellationToken,
    mut on: impl FnMut(&[u8]) -> bool,
) {
    // Made once: a token's waiter list is shared by every subscriber, and
    // joining it on every read would make them queue for its lock.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            ready = tcp.readable() => {
                if ready.is_err() {
                    return;
                }
                let mut buf = [0u8; 16 * 1024];
                match tcp.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if !on(&buf[..n]) {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
            _ = &mut stopped => return,
        }
    }
}

/// Dials a URL's host; returns the socket, the authority and the path.
async fn connect(url: &str) -> Result<(TcpStream, String, String), BenchError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| BenchError::Target(format!("{url}: {e}")))?;
    let host = uri.host().unwrap_or("127.0.0.1");
    let port = uri.port_u16().unwrap_or(80);
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(BenchError::io)?;
    let _ = tcp.set_nodelay(true);
    let authority = uri.authority().map_or_else(String::new, |a| a.to_string());
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    Ok((tcp, authority, path))
}

/// Reads a response head; returns its status and the bytes after it.
async fn read_head(tcp: &mut TcpStream) -> Result<(u16, Vec<u8>), BenchError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let chunk = read_some(tcp).await?;
        if chunk.is_empty() {
            return Err(BenchError::Target("closed before answering".into()));
        }
        buf.extend_from_slice(&chunk);
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let status = std::str::from_utf8(&buf[..end])
                .ok()
                .and_then(|head| head.split(' ').nth(1))
                .and_then(|code| code.parse().ok())
                .ok_or_else(|| BenchError::Target("not an HTTP response".into()))?;
            return Ok((status, buf.split_off(end + 4)));
        }
        if buf.len() > 64 * 1024 {
            return Err(BenchError::Target("response head too long".into()));
        }
    }
}

async fn read_some(tcp: &mut TcpStream) -> Result<Vec<u8>, BenchError> {
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.map_err(BenchError::io)?;
    buf.truncate(n);
    Ok(buf)
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

/// Most requests a publisher has in flight on its connection.
const PIPELINE: usize = 64;

/// Called when the server accepted a publication (a 2xx answer).
type OnAccepted = Box<dyn FnOnce() + Send>;

/// One keep-alive connection that publishes, in order, what it is given.
/// Requests are pipelined (HTTP/1.1: the server answers them in order), up
/// to [`PIPELINE`] at a time, so the publish rate is not bounded by one
/// round trip per publication, and a busy server shows as a rate not
/// achieved rather than as a slow bench. A connection the server closes is
/// dialed again; what was in flight on it counts as not accepted.
pub struct Publisher {
    how: Publish,
    /// Request path of each channel, worked out once.
    paths: std::collections::HashMap<String, String>,
    authority: String,
    conn: Pipeline,
}

/// A publishing connection: requests go out on `writer`, a task reads the
/// answers and calls back, in order.
struct Pipeline {
    writer: tokio::net::tcp::OwnedWriteHalf,
    in_flight: Arc<Mutex<std::collections::VecDeque<OnAccepted>>>,
    room: Arc<tokio::sync::Semaphore>,
    closed: CancellationToken,
}

impl Pipeline {
    async fn open(url: &str) -> Result<(Pipeline, String), BenchError> {
        let (tcp, authority, _) = connect(url).await?;
        let (mut reader, writer) = tcp.into_split();
        let in_flight: Arc<Mutex<std::collections::VecDeque<OnAccepted>>> = Default::default();
        let room = Arc::new(tokio::sync::Semaphore::new(PIPELINE));
        let closed = CancellationToken::new();
        let (queue, permits, done) = (in_flight.clone(), room.clone(), closed.clone());
        tokio::spawn(async move {
            let mut responses = Responses::default();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let ok = responses.feed(&buf[..n], |status| {
                    let answered = queue.lock().pop_front();
                    if let Some(on_accepted) = answered {
                        if (200..300).contains(&status) {
                            on_accepted();
                        }
                    }
                    permits.add_permits(1);
                });
                if !ok {
                    break;
                }
            }
            // What is still in flight will not be answered.
            queue.lock().clear();
            done.cancel();
            permits.close();
        });
        let pipeline = Pipeline {
            writer,
            in_flight,
            room,
            closed,
        };
        Ok((pipeline, authority))
    }
}

impl Publisher {
    /// Connects to the publish URL's server.
    pub async fn connect(how: Publish) -> Result<Publisher, BenchError> {
        let (conn, authority) = Pipeline::open(&how.url.replace("{channel}", "x")).await?;
        Ok(Publisher {
            paths: Default::default(),
            authority,
            how,
            conn,
        })
    }

    /// Sends `payload` to `channel` (waiting only while [`PIPELINE`]
    /// requests are unanswered); `on_accepted` runs when the server
    /// accepts it. False when the server cannot be reached.
    pub async fn publish(&mut self, channel: &str, payload: &str, on_accepted: OnAccepted) -> bool {
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
                &tidings::protocol::mercure::form::encode(payload),
            );
        }
        let body = body.replace("{payload}", payload);
        let mut req = format!("POST {path} HTTP/1.1\r\nHost: {}\r\n", self.authority);
        for (k, v) in &self.how.headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        if self.conn.closed.is_cancelled() {
            match Pipeline::open(&self.how.url.replace("{channel}", channel)).await {
                Ok((conn, _)) => self.conn = conn,
                Err(_) => return false,
            }
        }
        let room = tokio::time::timeout(Duration::from_secs(10), self.conn.room.acquire()).await;
        match room {
            Ok(Ok(permit)) => permit.forget(),
            _ => return false,
        }
        self.conn.in_flight.lock().push_back(on_accepted);
        self.conn.writer.write_all(req.as_bytes()).await.is_ok()
    }

    /// Waits until every request sent has its answer (at most `wait`).
    pub async fn drain(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while !self.conn.in_flight.lock().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
