//! Test harness: runs the real `tidings` binary and talks to it over HTTP.
#![allow(dead_code)]

pub mod backend;
pub mod ws;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tidings::auth::jwt;
use tidings::protocol::sse::{ParsedEvent, Parser};

pub const KEY: &str = "integration-test-key";
pub const ISSUER: &str = "https://issuer.test";

/// A running hub.
pub struct Hub {
    child: Option<Child>,
    pub addr: String,
    /// `http`, or `https` when the hub serves TLS.
    pub scheme: &'static str,
    pub data_dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Hub {
    /// Starts a hub with the test key and `extra` `--set` pairs.
    pub fn start(extra: &[(&str, &str)]) -> Hub {
        Hub::start_with_file("", extra)
    }

    /// Starts a hub with a configuration file holding `toml`, then `extra`.
    pub fn start_with_file(toml: &str, extra: &[(&str, &str)]) -> Hub {
        let data_dir = tempfile::tempdir().unwrap();
        let file = data_dir.path().join("tidings.toml");
        std::fs::write(&file, toml).unwrap();
        let mut args = vec![
            format!("@{}", file.display()),
            format!("mercure.key={KEY}"),
            format!("mercure.issuer={ISSUER}"),
            "mercure.heartbeat=30s".into(),
        ];
        args.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        let mut hub = Hub {
            child: None,
            addr: String::new(),
            scheme: "http",
            data_dir,
            args,
        };
        hub.spawn("127.0.0.1:0");
        hub
    }

    fn spawn(&mut self, listen: &str) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--log-level")
            .arg("warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for a in &self.args {
            match a.strip_prefix('@') {
                Some(file) => cmd.arg("--config").arg(file),
                None => cmd.arg("--set").arg(a),
            };
        }
        let mut child = cmd.spawn().expect("spawn tidings");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let (scheme, addr) = line
            .trim()
            .strip_prefix("tidings listening on ")
            .and_then(|url| url.split_once("://"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        self.scheme = if scheme == "https" { "https" } else { "http" };
        let addr = addr.to_owned();
        self.addr = addr;
        self.child = Some(child);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    pub fn hub_url(&self) -> String {
        self.url("/.well-known/mercure")
    }

    /// Sends SIGTERM without waiting for the exit.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// The hub's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or_default()
    }

    /// Sends `signal` to the hub process.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// SIGKILL: the node dies without cleaning up anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        self.terminate();
        self.child
            .take()
            .is_none_or(|mut child| child.wait().unwrap().success())
    }

    /// Graceful restart on the same address and data directory.
    pub fn restart(&mut self) {
        assert!(self.stop(), "hub did not exit cleanly");
        let addr = self.addr.clone();
        self.spawn(&addr);
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A hub whose Centrifugo side is open for tests: `secret` verifies
/// connection tokens, `api_key` opens the server API, and channels without a
/// namespace allow subscribe, publish, history and presence.
pub fn centrifugo_hub(secret: &str, api_key: &str, extra: &[(&str, &str)]) -> Hub {
    let mut args = vec![
        ("centrifugo.token_key", secret),
        ("centrifugo.api_key", api_key),
        ("centrifugo.channel.allow_subscribe", "true"),
        ("centrifugo.channel.allow_publish", "true"),
        ("centrifugo.channel.allow_history", "true"),
        ("centrifugo.channel.allow_presence", "true"),
        ("centrifugo.channel.presence", "true"),
    ];
    args.extend_from_slice(extra);
    Hub::start(&args)
}

/// Claims for a draft access token for `hub` granting `details`.
pub fn claims(hub: &Hub, details: Value, exp_in: i64) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    json!({"iss": ISSUER, "aud": hub.hub_url(), "sub": "tester", "client_id": ISSUER,
           "iat": now, "jti": "j", "exp": now + exp_in, "authorization_details": details})
}

pub fn detail(actions: &[&str], topics: &[&str]) -> Value {
    let topics: Vec<Value> = topics
        .iter()
        .map(|t| {
            if t.contains("/:") {
                json!({"match": t, "match_type": "urlpattern"})
            } else {
                json!({"match": t})
            }
        })
        .collect();
    json!({"type": "https://mercure.rocks/authorization-detail", "actions": actions, "topics": topics})
}

pub fn token(hub: &Hub, actions: &[&str], topics: &[&str]) -> String {
    jwt::mint(
        &claims(hub, json!([detail(actions, topics)]), 3600),
        KEY,
        jsonwebtoken::Algorithm::HS256,
        true,
    )
    .unwrap()
}

pub fn publisher(hub: &Hub) -> String {
    token(hub, &["publish"], &["*"])
}

/// POSTs a form to the hub; returns (status, headers, body).
pub async fn post(
    hub: &Hub,
    token: Option<&str>,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new()
        .post(hub.hub_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap())
}

/// Publishes a public update; returns its id.
pub async fn publish(hub: &Hub, topic: &str, data: &str) -> String {
    let body = format!(
        "topic={}&data={}",
        tidings::protocol::mercure::form::encode(topic),
        tidings::protocol::mercure::form::encode(data)
    );
    let (status, _, id) = post(hub, Some(&publisher(hub)), &body).await;
    assert_eq!(status, 200, "publish failed: {id}");
    id
}

/// An open event stream.
pub struct Stream {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    body: Option<futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    parser: Parser,
    pending: std::collections::VecDeque<ParsedEvent>,
    pub raw: Vec<u8>,
    pub ended: bool,
}

/// Opens an event stream the way `EventSource` does (`Accept:
/// text/event-stream`), so it takes the hub's lean HTTP/1.1 path.
pub async fn open(hub: &Hub, query: &str, headers: &[(&str, &str)]) -> Stream {
    let mut req = reqwest::Client::new()
        .get(format!("{}?{}", hub.hub_url(), query))
        .header("accept", "text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Stream::from_response(req.send().await.unwrap())
}

impl Stream {
    /// Reads any `text/event-stream` response.
    pub fn from_response(res: reqwest::Response) -> Stream {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        Stream {
            status,
            headers,
            body: Some(res.bytes_stream().boxed()),
            parser: Parser::default(),
            pending: Default::default(),
            raw: Vec::new(),
            ended: false,
        }
    }

    /// The next event, or None if none arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<ParsedEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            let body = self.body.as_mut()?;
            match tokio::time::timeout_at(deadline, body.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => {
                    self.ended = true;
                    self.body = None;
                    return None;
                }
                Ok(Some(Ok(chunk))) => {
                    self.raw.extend_from_slice(&chunk);
                    self.pending.extend(self.parser.feed(&chunk));
                }
            }
        }
    }

    pub async fn next(&mut self) -> ParsedEvent {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("no event within 5s")
    }

    /// Reads until the stream ends (or `wait` passes); returns the events.
    pub async fn drain(&mut self, wait: Duration) -> Vec<ParsedEvent> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Some(e) = self
            .next_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            out.push(e);
        }
        out
    }

    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

pub fn enc(s: &str) -> String {
    tidings::protocol::mercure::form::encode(s)
}
