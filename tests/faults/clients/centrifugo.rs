//! Centrifugo clients: bidirectional over WebSocket (JSON and Protobuf),
//! HTTP streaming and SSE (those two send their commands with
//! `POST /emulation`), and unidirectional SSE resuming with
//! `Last-Event-ID`. Each subscription asks to recover from the client's
//! offset and epoch once it has one, as the SDKs do.

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::json;
use tidings::protocol::centrifuge as proto;
use tidings::protocol::sse::Parser;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::{Body, Conn, End, Interrupt, Kind, Source, State};
use crate::record::Start;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const CONNECT_WAIT: Duration = Duration::from_secs(5);

fn token(c: &Conn, channels: &[String]) -> String {
    let claims = if channels.is_empty() {
        json!({"sub": c.name})
    } else {
        json!({"sub": c.name, "channels": channels})
    };
    tidings::auth::jwt::mint(
        &claims,
        &c.env.secret,
        jsonwebtoken::Algorithm::HS256,
        false,
    )
    .unwrap_or_default()
}

/// Where a bidirectional connection's frames come from and go to.
enum Wire {
    Ws {
        ws: Box<Ws>,
        protobuf: bool,
    },
    /// HTTP streaming (newline-delimited JSON) or SSE (one reply per
    /// event), with commands posted to `/emulation`.
    Emulated {
        body: Body,
        sse: Option<Parser>,
        buf: Vec<u8>,
        emulation: String,
        session: String,
        node: String,
    },
}

impl Wire {
    fn encode(&self, commands: &[proto::Command]) -> Vec<u8> {
        match self {
            Wire::Ws { protobuf: true, .. } => {
                let mut out = Vec::new();
                for c in commands {
                    out.extend(c.encode_length_delimited_to_vec());
                }
                out
            }
            _ => commands
                .iter()
                .map(|c| serde_json::to_string(c).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes(),
        }
    }

    async fn send(&mut self, http: &reqwest::Client, commands: &[proto::Command]) -> bool {
        let frame = self.encode(commands);
        match self {
            Wire::Ws { ws, protobuf } => {
                let message = if *protobuf {
                    Message::binary(frame)
                } else {
                    Message::text(String::from_utf8_lossy(&frame).into_owned())
                };
                matches!(
                    tokio::time::timeout(CONNECT_WAIT, ws.send(message)).await,
                    Ok(Ok(()))
                )
            }
            Wire::Emulated {
                emulation,
                session,
                node,
                ..
            } => {
                let body = json!({"session": session, "node": node, "data": String::from_utf8_lossy(&frame)});
                let sent = http.post(emulation.as_str()).json(&body).send();
                matches!(tokio::time::timeout(CONNECT_WAIT, sent).await, Ok(Ok(r)) if r.status().is_success())
            }
        }
    }

    /// The messages of the next frame (empty: nothing complete yet);
    /// `None` when the connection ended.
    async fn next(&mut self) -> Option<Result<Vec<proto::Reply>, String>> {
        match self {
            Wire::Ws { ws, protobuf } => loop {
                return match ws.next().await? {
                    Ok(Message::Text(t)) => Some(decode_json(t.as_bytes())),
                    Ok(Message::Binary(b)) if *protobuf => Some(decode_protobuf(&b)),
                    Ok(Message::Close(_)) => None,
                    Ok(Message::Binary(_)) => Some(Err("a binary frame on JSON".into())),
                    Ok(_) => continue,
                    Err(_) => None,
                };
            },
            Wire::Emulated { body, sse, buf, .. } => {
                let chunk = match body.next_item().await? {
                    Ok(chunk) => chunk,
                    Err(_) => return None,
                };
                Some(match sse {
                    Some(parser) => parser
                        .feed(&chunk)
                        .into_iter()
                        .map(|e| decode_json(e.data.as_bytes()))
                        .collect::<Result<Vec<Vec<_>>, _>>()
                        .map(|v| v.into_iter().flatten().collect()),
                    None => {
                        buf.extend_from_slice(&chunk);
                        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                        let lines: Vec<u8> = buf.drain(..complete).collect();
                        decode_json(&lines)
                    }
                })
            }
        }
    }
}

impl Source for Wire {
    type Item = Option<Result<Vec<proto::Reply>, String>>;
    fn next_item(&mut self) -> impl std::future::Future<Output = Self::Item> + Send {
        self.next()
    }
}

fn decode_json(frame: &[u8]) -> Result<Vec<proto::Reply>, String> {
    frame
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(|l| {
            serde_json::from_slice(l).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(l)))
        })
        .collect()
}

fn decode_protobuf(mut frame: &[u8]) -> Result<Vec<proto::Reply>, String> {
    let mut out = Vec::new();
    while !frame.is_empty() {
        out.push(proto::Reply::decode_length_delimited(&mut frame).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// Opens the transport and sends the connect command.
async fn open(c: &mut Conn) -> Option<Wire> {
    let node = c.node();
    let connect = proto::Command {
        id: 1,
        connect: Some(proto::ConnectRequest {
            token: token(c, &[]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let http = c.env.http.clone();
    let emulated = |body: reqwest::Response, sse: bool| Wire::Emulated {
        body: Body::of(body),
        sse: sse.then(Parser::default),
        buf: Vec::new(),
        emulation: format!("{node}/emulation"),
        session: String::new(),
        node: String::new(),
    };
    let line = serde_json::to_string(&connect).unwrap_or_default();
    let wire = match c.kind {
        Kind::WebSocketJson | Kind::WebSocketProtobuf => {
            let protobuf = c.kind == Kind::WebSocketProtobuf;
            let url = format!("{}/connection/websocket", node.replace("http://", "ws://"));
            let mut req = url.into_client_request().ok()?;
            if protobuf {
                req.headers_mut().insert(
                    "sec-websocket-protocol",
                    "centrifuge-protobuf".parse().ok()?,
                );
            }
            let (ws, _) = tokio::time::timeout(CONNECT_WAIT, tokio_tungstenite::connect_async(req))
                .await
                .ok()?
                .ok()?;
            let mut wire = Wire::Ws {
                ws: Box::new(ws),
                protobuf,
            };
            if !wire.send(&http, &[connect]).await {
                return None;
            }
            wire
        }
        Kind::HttpStream => {
            let req = http
                .post(format!("{node}/connection/http_stream"))
                .body(line);
            let res = tokio::time::timeout(CONNECT_WAIT, req.send())
                .await
                .ok()?
                .ok()?;
            if res.status() != 200 {
                return None;
            }
            emulated(res, false)
        }
        _ => {
            let url = format!(
                "{node}/connection/sse?cf_connect={}",
                tidings::protocol::mercure::form::encode(&line)
            );
            let res = tokio::time::timeout(CONNECT_WAIT, http.get(url).send())
                .await
                .ok()?
                .ok()?;
            if res.status() != 200 {
                return None;
            }
            emulated(res, true)
        }
    };
    Some(wire)
}

/// One bidirectional connection, until it ends.
pub async fn bidirectional(c: &mut Conn, state: &mut State) -> End {
    let Some(mut wire) = open(c).await else {
        return End::Unreachable;
    };
    let http = c.env.http.clone();
    // The connect reply first.
    loop {
        let replies = match c.read(&mut wire).await {
            Err(i) => return i.into(),
            Ok(None) => return End::ClosedByHub,
            Ok(Some(Err(e))) => {
                c.anomaly(format!("undecodable frame: {e}"));
                return End::ClosedByHub;
            }
            Ok(Some(Ok(r))) => r,
        };
        let Some(reply) = replies.into_iter().find(|r| r.id == 1) else {
            continue;
        };
        let Some(connect) = reply.connect else {
            // Refused (shutting down, …): try again.
            return End::ClosedByHub;
        };
        if let Wire::Emulated { session, node, .. } = &mut wire {
            (*session, *node) = (connect.session, connect.node);
        }
        break;
    }
    let mut next_id = 2;
    let mut pending: HashMap<u32, String> = HashMap::new();
    let subscribes: Vec<proto::Command> = c
        .channels
        .iter()
        .map(|ch| subscribe(ch, state, &mut next_id, &mut pending))
        .collect();
    if !wire.send(&http, &subscribes).await {
        return End::ClosedByHub;
    }
    loop {
        let replies = match c.read(&mut wire).await {
            Err(Interrupt::Drop) => return End::Dropped,
            Err(i) => return i.into(),
            Ok(None) => return End::ClosedByHub,
            Ok(Some(Err(e))) => {
                c.anomaly(format!("undecodable frame: {e}"));
                return End::ClosedByHub;
            }
            Ok(Some(Ok(r))) => r,
        };
        let mut commands = Vec::new();
        for reply in replies {
            if let Some(channel) = pending.remove(&reply.id) {
                match reply.subscribe {
                    Some(result) => subscribed(c, state, &channel, result),
                    None => {
                        // Refused (a node shutting down…): ask again.
                        let e = reply.error.unwrap_or_default();
                        if !e.temporary && e.code != 100 {
                            c.anomaly(format!("subscribe to {channel} refused: {e:?}"));
                        }
                        commands.push(subscribe(&channel, state, &mut next_id, &mut pending));
                    }
                }
                continue;
            }
            let Some(push) = reply.push else {
                if reply.id == 0 && reply.error.is_none() {
                    // A ping: answer with a pong (an empty command).
                    commands.push(proto::Command::default());
                }
                continue;
            };
            if let Some(p) = push.publication {
                received(c, state, &push.channel, &p.data, p.offset);
            } else if push.unsubscribe.is_some() {
                // Insufficient state, slow…: resubscribe and recover.
                let mut record = c.record.lock();
                record.ended(&push.channel);
                record.closed_by_hub += 1;
                drop(record);
                commands.push(subscribe(&push.channel, state, &mut next_id, &mut pending));
            } else if push.disconnect.is_some() {
                return End::ClosedByHub;
            }
        }
        if !commands.is_empty() && !wire.send(&http, &commands).await {
            return End::ClosedByHub;
        }
    }
}

/// A subscribe command, recovering from the channel's position if any.
fn subscribe(
    channel: &str,
    state: &State,
    next_id: &mut u32,
    pending: &mut HashMap<u32, String>,
) -> proto::Command {
    let id = *next_id;
    *next_id += 1;
    pending.insert(id, channel.to_owned());
    let mut req = proto::SubscribeRequest {
        channel: channel.to_owned(),
        ..Default::default()
    };
    if let Some((offset, epoch)) = state.positions.get(channel) {
        (req.recover, req.offset, req.epoch) = (true, *offset, epoch.clone());
    }
    proto::Command {
        id,
        subscribe: Some(req),
        ..Default::default()
    }
}

/// A subscription started: record how, then what it carries.
fn subscribed(c: &Conn, state: &mut State, channel: &str, result: proto::SubscribeResult) {
    let start = if result.recovered {
        Start::Recovered
    } else if result.was_recovering {
        Start::Lost
    } else {
        Start::Fresh
    };
    let asked_after = match start {
        Start::Recovered => state.last.get(channel).copied(),
        // What it had is no longer where it continues from.
        _ => state.last.remove(channel).and(None),
    };
    c.record.lock().started(channel, start, asked_after);
    state
        .positions
        .insert(channel.to_owned(), (result.offset, result.epoch.clone()));
    for p in &result.publications {
        received(c, state, channel, &p.data, p.offset);
    }
    // The reply's offset is the channel's top when it was answered.
    if let Some((offset, _)) = state.positions.get_mut(channel) {
        *offset = (*offset).max(result.offset);
    }
}

fn received(c: &Conn, state: &mut State, channel: &str, data: &[u8], offset: u64) {
    match c.decode(data) {
        Some((named, n)) if named == channel => {
            c.record.lock().received(channel, n);
            state.last.insert(channel.to_owned(), n);
            if let Some(position) = state.positions.get_mut(channel) {
                position.0 = offset;
            }
        }
        other => c.anomaly(format!("publication on {channel} carrying {other:?}")),
    }
}

/// One unidirectional SSE connection (`/connection/uni_sse`): the
/// subscriptions are the token's channels, positions travel in event ids.
pub async fn uni_sse(c: &mut Conn, state: &mut State) -> End {
    let connect = json!({"token": token(c, &c.channels.clone())}).to_string();
    let url = format!(
        "{}/connection/uni_sse?cf_connect={}",
        c.node(),
        tidings::protocol::mercure::form::encode(&connect)
    );
    let mut req = c.env.http.get(url);
    if let Some(id) = &state.cursor {
        req = req.header("last-event-id", id);
    }
    let res = match tokio::time::timeout(CONNECT_WAIT, req.send()).await {
        Ok(Ok(res)) if res.status() == 200 => res,
        _ => return End::Unreachable,
    };
    let mut body = Body::of(res);
    let mut parser = Parser::default();
    let mut connected = false;
    loop {
        let chunk = match c.read(&mut body).await {
            Err(i) => return i.into(),
            Ok(Some(Ok(chunk))) => chunk,
            Ok(_) => return End::ClosedByHub,
        };
        for event in parser.feed(&chunk) {
            let push: serde_json::Value = match serde_json::from_str(&event.data) {
                Ok(v) => v,
                Err(_) => {
                    c.anomaly(format!("undecodable uni_sse event {:?}", event.data));
                    continue;
                }
            };
            if let Some(result) = push.get("connect") {
                connected = true;
                let subs = result.get("subs").cloned().unwrap_or_default();
                for ch in c.channels.clone() {
                    let sub = subs.get(&ch);
                    let flag = |k: &str| {
                        sub.and_then(|s| s.get(k)).and_then(|v| v.as_bool()) == Some(true)
                    };
                    let start = if flag("recovered") {
                        Start::Recovered
                    } else if flag("was_recovering") {
                        Start::Lost
                    } else {
                        Start::Fresh
                    };
                    let asked_after = match start {
                        Start::Recovered => state.last.get(&ch).copied(),
                        _ => state.last.remove(&ch).and(None),
                    };
                    c.record.lock().started(&ch, start, asked_after);
                    let pubs = sub
                        .and_then(|s| s.get("publications"))
                        .and_then(|p| p.as_array());
                    for p in pubs.into_iter().flatten() {
                        let data = p.get("data").map(|d| d.to_string()).unwrap_or_default();
                        received(c, state, &ch, data.as_bytes(), 0);
                    }
                }
            } else if let (Some(channel), Some(p)) = (
                push.get("channel").and_then(|v| v.as_str()),
                push.get("pub"),
            ) {
                if !connected {
                    c.anomaly("a publication before the connect push".into());
                }
                let data = p.get("data").map(|d| d.to_string()).unwrap_or_default();
                received(c, state, channel, data.as_bytes(), 0);
            } else if push.get("disconnect").is_some() || push.get("unsubscribe").is_some() {
                return End::ClosedByHub;
            }
            if let Some(id) = event.id {
                state.cursor = Some(id);
            }
        }
    }
}
