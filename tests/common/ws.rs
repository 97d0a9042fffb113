//! WebSocket helpers: a Centrifugo JSON client for tests.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::{centrifugo_hub, Hub};

pub const SECRET: &str = "websocket-test-secret";
pub const API_KEY: &str = "websocket-test-api-key";

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A hub with the Centrifugo side open (see [`centrifugo_hub`]).
pub fn start(extra: &[(&str, &str)]) -> Hub {
    centrifugo_hub(SECRET, API_KEY, extra)
}

pub fn conn_token(user: &str, exp_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    tidings::auth::jwt::mint(
        &json!({"sub": user, "exp": now + exp_in}),
        SECRET,
        jsonwebtoken::Algorithm::HS256,
        false,
    )
    .unwrap()
}

pub async fn dial(hub: &Hub, origin: Option<&str>) -> Result<Ws, u16> {
    dial_addr(&hub.addr, origin).await
}

pub async fn dial_addr(addr: &str, origin: Option<&str>) -> Result<Ws, u16> {
    let mut req = format!("ws://{addr}/connection/websocket")
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

pub async fn send(ws: &mut Ws, frame: &str) {
    ws.send(Message::text(frame)).await.unwrap();
}

/// The next text frame's messages, skipping pings (`{}`).
pub async fn recv(ws: &mut Ws) -> Vec<Value> {
    recv_on(ws).await
}

/// [`recv`] on a WebSocket over any stream (TLS, HTTP/2).
pub async fn recv_on<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Vec<Value>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no frame")
            .expect("closed")
            .unwrap();
        if let Message::Text(t) = msg {
            let msgs: Vec<Value> = t
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .filter(|v: &Value| v != &json!({}))
                .collect();
            if !msgs.is_empty() {
                return msgs;
            }
        }
    }
}

/// Waits for the close frame; returns its code and reason.
pub async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("not closed in time")
        {
            Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{e}"),
        }
    }
}

pub async fn connected(hub: &Hub, user: &str) -> Ws {
    connected_at(&hub.addr, user).await
}

/// A connected client of the hub listening on `addr`.
pub async fn connected_at(addr: &str, user: &str) -> Ws {
    let mut ws = dial_addr(addr, None).await.unwrap();
    send(
        &mut ws,
        &json!({"id": 1, "connect": {"token": conn_token(user, 3600)}}).to_string(),
    )
    .await;
    let r = recv(&mut ws).await;
    assert!(r[0]["connect"]["client"].is_string(), "{r:?}");
    ws
}

pub async fn api(hub: &Hub, method: &str, body: Value) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(hub.url(&format!("/api/{method}")))
        .header("X-API-Key", API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// One client frame: `first` is FIN/RSV/opcode, `masked` as clients must.
pub fn ws_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x11, 0x22, 0x33, 0x44];
    if masked {
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// A WebSocket handshake on a raw TCP connection, offering `extensions`
/// (`Sec-WebSocket-Extensions`), so that the frames after it can be
/// anything a client sends. Returns the socket and the answer's head.
pub async fn raw_dial(addr: &str, extensions: Option<&str>) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let offer = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{offer}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "handshake cut");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (tcp, head)
}

/// The next frame the server sends: its first byte (FIN, RSV, opcode) and
/// payload.
pub async fn read_frame(tcp: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut head = [0u8; 2];
        tcp.read_exact(&mut head).await.unwrap();
        assert_eq!(head[1] & 0x80, 0, "servers do not mask");
        let len = match head[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                tcp.read_exact(&mut n).await.unwrap();
                u16::from_be_bytes(n) as usize
            }
            127 => {
                let mut n = [0u8; 8];
                tcp.read_exact(&mut n).await.unwrap();
                u64::from_be_bytes(n) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.unwrap();
        (head[0], payload)
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("no frame")
}

/// `data` compressed as a permessage-deflate client does (raw deflate,
/// sync flush, the last four bytes dropped). flate2 directly, not the
/// hub's own code.
pub fn deflate_message(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A permessage-deflate message's payload inflated as a client does.
pub fn inflate_message(payload: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(input.len() * 8 + 1024);
    loop {
        let before = d.total_in() as usize;
        d.decompress_vec(&input[before..], &mut out, flate2::FlushDecompress::Sync)
            .expect("valid deflate");
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}
