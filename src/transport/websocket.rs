//! The WebSocket transport for Centrifugo clients (`/connection/websocket`).
//!
//! The handshake is refused (403) when the `Origin` is neither the hub's own
//! nor in `centrifugo.allowed_origins`: browsers send cookies with
//! cross-site WebSocket handshakes, so accepting any origin would let any
//! site act as the user (cross-site WebSocket hijacking). The subprotocol
//! `centrifuge-protobuf` selects the Protobuf encoding; JSON otherwise.
//!
//! The connection itself runs in `centrifugo::connection` over a
//! [`WsWire`]: a batch of output is one WebSocket message, and the
//! connection ends with a close frame carrying the disconnect code.
//! `/connection/uni_websocket` is the same with a unidirectional session
//! (JSON only, as in Centrifugo).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::{origin_allowed, CentrifugoState, ConnectQuery};
use crate::centrifugo::connection::{self, Inbound, Start, Wire};
use crate::centrifugo::Transport;
use crate::protocol::centrifuge::Encoding;

/// Initial read buffer of a WebSocket: most client frames are small
/// commands; larger ones grow it up to `centrifugo.max_frame`.
const READ_BUFFER: usize = 4096;

/// `GET /connection/websocket`.
pub async fn bidirectional(
    state: State<Arc<CentrifugoState>>,
    connect_info: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(state, connect_info, headers, ws, Transport::WebSocket, None)
}

/// `GET /connection/uni_websocket`: the connect request is the first
/// message, or the `cf_connect` query parameter.
pub async fn unidirectional(
    state: State<Arc<CentrifugoState>>,
    connect_info: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<ConnectQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let first = query.cf_connect.map(Bytes::from);
    upgrade(
        state,
        connect_info,
        headers,
        ws,
        Transport::UniWebSocket,
        first,
    )
}

fn upgrade(
    State(state): State<Arc<CentrifugoState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
    transport: Transport,
    first_frame: Option<Bytes>,
) -> Response {
    if !state.node.transport_enabled(transport) {
        return StatusCode::NOT_FOUND.into_response();
    }
    if !origin_allowed(&headers, &state.node.settings.allowed_origins) {
        return (
            StatusCode::FORBIDDEN,
            "cross-origin WebSocket handshake refused: origin not allowed\n",
        )
            .into_response();
    }
    // Small buffers: an idle connection should cost kilobytes, not the
    // library's 128 KiB default read buffer (docs/decisions.md).
    let ws = ws
        .protocols(["centrifuge-protobuf", "centrifuge-json"])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(state.node.settings.max_frame)
        .max_frame_size(state.node.settings.max_frame);
    let encoding = match ws.selected_protocol().map(|p| p.as_bytes()) {
        Some(b"centrifuge-protobuf") if !transport.unidirectional() => Encoding::Protobuf,
        _ => Encoding::Json,
    };
    let forwarded = state.node.proxy.forwarded_headers(&headers);
    ws.on_upgrade(move |socket| {
        let start = Start {
            transport,
            encoding,
            session_id: if transport.unidirectional() {
                uuid::Uuid::new_v4().to_string()
            } else {
                String::new()
            },
            first_frame,
            resume_from: Vec::new(),
            remote: remote.to_string(),
            headers: forwarded,
        };
        let wire = WsWire { socket, encoding };
        connection::run(wire, state.node.clone(), state.shutdown.clone(), start)
    })
}

/// A WebSocket as a connection's wire.
struct WsWire {
    socket: WebSocket,
    encoding: Encoding,
}

impl Wire for WsWire {
    async fn recv(&mut self) -> Inbound {
        loop {
            return match self.socket.recv().await {
                Some(Ok(Message::Text(t))) => Inbound::Frame(Bytes::from(t)),
                Some(Ok(Message::Binary(b))) => Inbound::Frame(b),
                Some(Ok(Message::Close(_))) | None => Inbound::Gone,
                Some(Ok(_)) => continue, // WebSocket ping/pong frames
                Some(Err(e)) => {
                    let (code, reason) = classify(e);
                    Inbound::Broken(code, reason)
                }
            };
        }
    }

    async fn send(&mut self, batch: Bytes) -> bool {
        let msg = match self.encoding {
            // Frames we encode are UTF-8 (no copy); the lossy path only satisfies the type.
            Encoding::Json => Message::Text(
                Utf8Bytes::try_from(batch.clone())
                    .unwrap_or_else(|_| String::from_utf8_lossy(&batch).into_owned().into()),
            ),
            Encoding::Protobuf => Message::Binary(batch),
        };
        self.socket.send(msg).await.is_ok()
    }

    async fn close(mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: reason.to_owned().into(),
        };
        let _ = self.socket.send(Message::Close(Some(frame))).await;
    }
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
