//! The WebSocket transport for Centrifugo clients (`/connection/websocket`).
//!
//! The handshake is refused (403) when the `Origin` is neither the hub's own
//! nor in `centrifugo.allowed_origins`: browsers send cookies with
//! cross-site WebSocket handshakes, so accepting any origin would let any
//! site act as the user (cross-site WebSocket hijacking). The subprotocol
//! `centrifuge-protobuf` selects the Protobuf encoding; JSON otherwise.
//!
//! One task per connection: it reads frames into the session, writes
//! everything the session produced (replies and queued pushes) as one frame,
//! sends pings, and closes with the protocol's disconnect code when the
//! session, the hub or the server says so.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::centrifugo::session::{Disconnect, Session};
use crate::centrifugo::Node;
use crate::hub::SHUTTING_DOWN;
use crate::protocol::centrifuge::{disconnect, Encoding};

/// Most queued deliveries written in one frame.
const BATCH: usize = 256;

/// What the WebSocket endpoint needs.
pub struct WsState {
    /// Sessions' shared state.
    pub node: Arc<Node>,
    /// Server shutdown.
    pub shutdown: CancellationToken,
}

/// True when a browser's `Origin` may open a WebSocket: no `Origin` (not a
/// browser), the same origin as the request's `Host`, or a listed origin.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (url::Url::parse(origin), host) {
        (Ok(u), Some(host)) => {
            let authority = match u.port() {
                Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
                None => u.host_str().unwrap_or_default().to_owned(),
            };
            authority.eq_ignore_ascii_case(host)
        }
        _ => false,
    }
}

/// `GET /connection/websocket`.
pub async fn upgrade(
    State(state): State<Arc<WsState>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&headers, &state.node.settings.allowed_origins) {
        return (
            StatusCode::FORBIDDEN,
            "cross-origin WebSocket handshake refused: origin not allowed\n",
        )
            .into_response();
    }
    let ws = ws
        .protocols(["centrifuge-protobuf", "centrifuge-json"])
        .max_message_size(state.node.settings.max_frame)
        .max_frame_size(state.node.settings.max_frame);
    let encoding = match ws.selected_protocol().map(|p| p.as_bytes()) {
        Some(b"centrifuge-protobuf") => Encoding::Protobuf,
        _ => Encoding::Json,
    };
    ws.on_upgrade(move |socket| run(socket, state, encoding))
}

async fn run(mut socket: WebSocket, state: Arc<WsState>, encoding: Encoding) {
    let node = state.node.clone();
    let (sink, mut deliveries) = node.hub.open_queue();
    let kicked = sink.closed().clone();
    let (mut session, mut controls) = Session::new(node.clone(), encoding, sink.clone());
    let settings = &node.settings;
    let far = || Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let handshake_deadline = Instant::now() + settings.handshake_timeout;
    let mut next_ping = Instant::now() + settings.ping_interval;
    let mut pong_deadline: Option<Instant> = None;
    let mut batch = Vec::with_capacity(BATCH);
    let result: Result<(), Disconnect> = loop {
        let mut out = BytesMut::new();
        let expiry = session
            .expires_at()
            .map(|exp| Instant::now() + Duration::from_secs(exp.saturating_sub(now_secs())))
            .unwrap_or_else(far);
        let step: Result<(), Disconnect> = tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => session.handle_frame(t.as_bytes(), &mut out).await,
                Some(Ok(Message::Binary(b))) => session.handle_frame(&b, &mut out).await,
                Some(Ok(Message::Close(_))) | None => break Ok(()),
                Some(Ok(_)) => Ok(()), // WebSocket ping/pong frames
                Some(Err(e)) => {
                    tracing::debug!(client = session.client(), error = %e, "websocket read error");
                    let (code, reason) = classify(e);
                    let _ = socket.send(close_message(code, reason)).await;
                    return;
                }
            },
            n = deliveries.recv_many(&mut batch, BATCH) => {
                if n == 0 { break Ok(()) }
                for d in batch.drain(..) {
                    session.push(d, &mut out);
                }
                Ok(())
            }
            Some(control) = controls.recv() => session.control(control, &mut out).await,
            _ = kicked.cancelled() => break Err(match sink.close_reason() {
                Some(r) if r == SHUTTING_DOWN => to_disconnect(disconnect::SHUTDOWN),
                _ => to_disconnect(disconnect::SLOW),
            }),
            _ = state.shutdown.cancelled() => break Err(to_disconnect(disconnect::SHUTDOWN)),
            _ = sleep_until(handshake_deadline), if !session.is_connected() => break Err(to_disconnect(disconnect::STALE)),
            _ = sleep_until(next_ping), if session.is_connected() => {
                session.ping(&mut out);
                next_ping = Instant::now() + settings.ping_interval;
                pong_deadline = Some(Instant::now() + settings.pong_timeout);
                Ok(())
            }
            _ = sleep_until(pong_deadline.unwrap_or_else(far)), if pong_deadline.is_some() => {
                if session.got_pong { pong_deadline = None; Ok(()) } else { Err(to_disconnect(disconnect::NO_PONG)) }
            }
            _ = sleep_until(expiry), if session.expires_at().is_some() => {
                if session.expires_at().is_some_and(|e| e <= now_secs()) { Err(to_disconnect(disconnect::EXPIRED)) } else { Ok(()) }
            }
        };
        if session.got_pong {
            pong_deadline = None;
        }
        if !out.is_empty() {
            let frame = out.freeze();
            let msg = match encoding {
                // Frames we encode are UTF-8 (no copy); the lossy path only satisfies the type.
                Encoding::Json => Message::Text(
                    Utf8Bytes::try_from(frame.clone())
                        .unwrap_or_else(|_| String::from_utf8_lossy(&frame).into_owned().into()),
                ),
                Encoding::Protobuf => Message::Binary(frame),
            };
            if socket.send(msg).await.is_err() {
                return;
            }
        }
        if let Err(d) = step {
            break Err(d);
        }
    };
    if let Err((code, reason)) = result {
        let _ = socket.send(close_message(code, &reason)).await;
    }
}

fn to_disconnect(code: disconnect::Code) -> Disconnect {
    (code.0, code.1.to_owned())
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }))
}

/// Maps a read error to a WebSocket close code.
fn classify(e: axum::Error) -> (u16, &'static str) {
    use tungstenite::error::{CapacityError, Error};
    match e.into_inner().downcast::<Error>().map(|b| *b) {
        Ok(Error::Capacity(CapacityError::MessageTooLong { .. })) => (1009, "message too big"),
        Ok(Error::Utf8(_)) => (1007, "invalid UTF-8"),
        _ => (1002, "protocol error"),
    }
}

fn now_secs() -> u64 {
    crate::hub::publication::now_ms() / 1000
}
