//! The WebSocket transport for Centrifugo clients (`/connection/websocket`).
//!
//! The handshake is refused (403) when the `Origin` is neither the hub's own
//! nor in `centrifugo.allowed_origins`: browsers send cookies with
//! cross-site WebSocket handshakes, so accepting any origin would let any
//! site act as the user (cross-site WebSocket hijacking). The subprotocol
//! `centrifuge-protobuf` selects the Protobuf encoding; JSON otherwise.
//!
//! The handshake is checked here ([`Handshake`]: RFC 6455 over HTTP/1.1,
//! RFC 8441 extended CONNECT over HTTP/2) and answered with an
//! [`Upgrade`]; the server then hands over the connection's byte stream,
//! and tungstenite (whose own CI runs the Autobahn|Testsuite) takes the
//! frames from there. The connection itself runs in
//! `transport::pump` over a [`WsWire`]: a batch of output is one
//! WebSocket message, and the connection ends with a close frame carrying
//! the disconnect code. `/connection/uni_websocket` is the same with a
//! unidirectional session (JSON only, as in Centrifugo).
//!
//! With `centrifugo.websocket_compression`, a client offering
//! permessage-deflate gets it: its compressed messages are inflated before
//! tungstenite reads them ([`InflatingSocket`]), and batches go out as
//! compressed pieces, each publication's push compressed once for all
//! (`protocol::websocket::deflate`).

use std::future::poll_fn;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::centrifugo::{self as connection, Start};
use super::inflating::InflatingSocket;
use super::live::{Socket, Upgrade};
use super::pump::{Batch, Close, Inbound, Wire};
use super::writer::{self, WriteError};
use super::{origin, CentrifugoState, ConnectQuery};
use crate::centrifugo::Transport;
use crate::protocol::centrifuge::Encoding;
use crate::protocol::websocket::{self, deflate, Opcode};

/// Initial read buffer of a WebSocket: most client frames are small
/// commands; larger ones grow it up to `centrifugo.max_frame`.
const READ_BUFFER: usize = 512;

/// Subprotocols we speak, in order of preference.
const PROTOCOLS: [&str; 2] = ["centrifuge-protobuf", "centrifuge-json"];

/// A WebSocket handshake request (RFC 6455 over HTTP/1.1, RFC 8441 over
/// HTTP/2), checked: what the answer needs.
pub struct Handshake {
    /// `Sec-WebSocket-Key` (HTTP/1.1 only).
    key: Option<HeaderValue>,
    /// The subprotocols the client offered.
    protocols: Vec<String>,
    /// Its `Sec-WebSocket-Extensions` offers.
    extensions: Vec<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        let refuse = |status: StatusCode, why: &str| (status, format!("{why}\n")).into_response();
        let key = if parts.version <= Version::HTTP_11 {
            if parts.method != Method::GET {
                return Err(refuse(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "a WebSocket handshake is a GET",
                ));
            }
            if !header_has_token(&parts.headers, header::CONNECTION, "upgrade")
                || !header_has_token(&parts.headers, header::UPGRADE, "websocket")
            {
                return Err(refuse(
                    StatusCode::UPGRADE_REQUIRED,
                    "this endpoint needs a WebSocket upgrade (Connection: upgrade, Upgrade: websocket)",
                ));
            }
            let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
                return Err(refuse(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"));
            };
            Some(key.clone())
        } else {
            let websocket = parts
                .extensions
                .get::<hyper::ext::Protocol>()
                .is_some_and(|p| p.as_str() == "websocket");
            if parts.method != Method::CONNECT || !websocket {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "a WebSocket over HTTP/2 is an extended CONNECT with :protocol websocket",
                ));
            }
            None
        };
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            let mut res = refuse(StatusCode::BAD_REQUEST, "unsupported Sec-WebSocket-Version");
            res.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return Err(res);
        }
        let protocols = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .collect();
        let extensions = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        Ok(Handshake {
            key,
            protocols,
            extensions,
        })
    }
}

impl Handshake {
    /// The subprotocol we pick among the client's offers.
    fn protocol(&self) -> Option<&'static str> {
        PROTOCOLS
            .into_iter()
            .find(|p| self.protocols.iter().any(|o| o == p))
    }

    /// True when the client offered permessage-deflate as we can agree it.
    fn offers_compression(&self) -> bool {
        deflate::accepts_offer(self.extensions.iter().map(String::as_str))
    }

    /// The handshake answer, running `session` on the upgraded connection.
    fn accept<F, Fut>(
        self,
        protocol: Option<&'static str>,
        compression: bool,
        session: F,
    ) -> Response
    where
        F: FnOnce(Socket, Bytes) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        // HTTP/2 (RFC 8441): a 200 with no headers of its own.
        let mut res = Response::new(Body::empty());
        if let Some(key) = &self.key {
            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = res.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
            }
        }
        if let Some(p) = protocol {
            res.headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        if compression {
            res.headers_mut().insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_static(deflate::AGREED),
            );
        }
        Upgrade::attach(&mut res, session);
        res
    }
}

/// True when a comma-separated header holds `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `GET /connection/websocket`.
pub async fn bidirectional(
    state: State<Arc<CentrifugoState>>,
    connect_info: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Handshake,
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
    ws: Handshake,
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
    ws: Handshake,
    transport: Transport,
    first_frame: Option<Bytes>,
) -> Response {
    if !state.node.transport_enabled(transport) {
        return StatusCode::NOT_FOUND.into_response();
    }
    if !origin::may_connect(&headers, &state.node.settings.allowed_origins) {
        return (
            StatusCode::FORBIDDEN,
            "cross-origin WebSocket handshake refused: origin not allowed\n",
        )
            .into_response();
    }
    let protocol = ws.protocol();
    let encoding = match protocol {
        Some("centrifuge-protobuf") if !transport.unidirectional() => Encoding::Protobuf,
        _ => Encoding::Json,
    };
    // Small buffers: an idle connection should cost kilobytes, not the
    // library's 128 KiB default read buffer (docs/decisions.md).
    let max_frame = state.node.settings.max_frame;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame));
    let compression = state
        .node
        .settings
        .websocket_compression
        .filter(|_| ws.offers_compression());
    let forwarded = state.node.proxy.forwarded_headers(&headers);
    let node = state.node.clone();
    ws.accept(
        protocol,
        compression.is_some(),
        move |socket, read_ahead| async move {
            // Compressed messages are inflated before tungstenite reads them,
            // those that came with the handshake too.
            let (socket, read_ahead) = match compression {
                Some(_) => (
                    InflatingSocket::inflating(socket, &read_ahead, max_frame),
                    Vec::new(),
                ),
                None => (InflatingSocket::plain(socket), read_ahead.to_vec()),
            };
            let socket = WebSocketStream::from_partially_read(
                socket,
                read_ahead,
                Role::Server,
                Some(config),
            )
            .await;
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
                compression,
            };
            let stall = node.limits.write_timeout;
            connection::run(WsWire::new(socket, encoding, stall), node, start).await
        },
    )
}

/// A WebSocket as a connection's wire.
struct WsWire {
    socket: WebSocketStream<InflatingSocket>,
    encoding: Encoding,
    /// `limits.write_timeout`: a write making no progress this long ends
    /// the connection.
    stall: Duration,
    /// tungstenite said it has no frame; until the socket turns readable
    /// there is no need to ask it again (the loop polls on every delivery).
    drained: bool,
    /// A frame was read since tungstenite last flushed: it may owe a pong.
    pong_pending: bool,
}

impl WsWire {
    fn new(
        socket: WebSocketStream<InflatingSocket>,
        encoding: Encoding,
        stall: Duration,
    ) -> WsWire {
        WsWire {
            socket,
            encoding,
            stall,
            drained: false,
            pong_pending: false,
        }
    }
}

impl Wire for WsWire {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        if self.drained && self.socket.get_ref().poll_read_ready(cx).is_pending() {
            return Poll::Pending;
        }
        loop {
            let Poll::Ready(message) = self.socket.poll_next_unpin(cx) else {
                self.drained = true;
                return Poll::Pending;
            };
            self.drained = false;
            self.pong_pending = true;
            return Poll::Ready(match message {
                Some(Ok(Message::Text(t))) => Inbound::Frame(Bytes::from(t)),
                Some(Ok(Message::Binary(b))) => Inbound::Frame(b),
                Some(Ok(Message::Close(_))) | None => Inbound::Gone,
                Some(Ok(_)) => continue, // WebSocket ping/pong frames
                Some(Err(e)) => match self.socket.get_ref().failure() {
                    Some(inflating) => Inbound::Broken(inflating.close_code(), inflating.reason()),
                    None => {
                        let (code, reason) = classify(e);
                        Inbound::Broken(code, reason)
                    }
                },
            });
        }
    }

    /// One data frame per batch, written by us beside its header in one
    /// `writev` (tungstenite would copy it into its buffer first); a
    /// compressed batch is its pieces, shared ones included, uncopied.
    /// Whatever tungstenite still has to send (a pong) goes out before it,
    /// so frames never interleave.
    async fn send(&mut self, batch: Batch<'_>) -> Result<(), WriteError> {
        self.write(batch).await
    }

    async fn close(mut self, close: &Close) {
        let frame = CloseFrame {
            code: CloseCode::from(close.code),
            reason: close.reason.clone().into(),
        };
        let _ =
            tokio::time::timeout(self.stall, self.socket.send(Message::Close(Some(frame)))).await;
    }
}

impl WsWire {
    /// Writes one batch as one data frame (see [`Wire::send`]).
    async fn write(&mut self, batch: Batch<'_>) -> Result<(), WriteError> {
        if self.pong_pending {
            let flushed =
                tokio::time::timeout(self.stall, poll_fn(|cx| self.socket.poll_flush_unpin(cx)))
                    .await;
            match flushed {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(WriteError::Gone),
                Err(_) => return Err(WriteError::Stalled),
            }
            self.pong_pending = false;
        }
        let opcode = match self.encoding {
            Encoding::Json => Opcode::Text,
            Encoding::Protobuf => Opcode::Binary,
        };
        let mut header = [0u8; websocket::MAX_HEADER];
        let (stall, socket) = (self.stall, self.socket.get_mut());
        match batch {
            Batch::Plain(batch) => {
                let header = websocket::frame_header(opcode, false, batch.len(), &mut header);
                let mut parts = [IoSlice::new(header), IoSlice::new(batch)];
                writer::write_all(socket, &mut parts, stall).await?;
            }
            Batch::Pieces(pieces) | Batch::Compressed(pieces) => {
                let compressed = matches!(batch, Batch::Compressed(_));
                let len = pieces.iter().map(Bytes::len).sum();
                let header = websocket::frame_header(opcode, compressed, len, &mut header);
                let mut parts = Vec::with_capacity(pieces.len() + 1);
                parts.push(IoSlice::new(header));
                parts.extend(pieces.iter().map(|p| IoSlice::new(p)));
                writer::write_all(socket, &mut parts, stall).await?;
            }
        }
        // A TLS or HTTP/2 stream buffers: what it holds must go too.
        writer::flush(socket, stall).await
    }
}

/// Maps a read error to a WebSocket close code.
fn classify(e: tokio_tungstenite::tungstenite::Error) -> (u16, &'static str) {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error};
    match e {
        Error::Capacity(CapacityError::MessageTooLong { .. }) => (1009, "message too big"),
        Error::Utf8(_) => (1007, "invalid UTF-8"),
        _ => (1002, "protocol error"),
    }
}
