//! Centrifugo connections over plain HTTP responses, for clients behind
//! proxies that refuse the WebSocket upgrade and for clients with no SDK.
//!
//! | endpoint                      | request carries            | response body        |
//! |-------------------------------|----------------------------|----------------------|
//! | `POST /connection/http_stream`| the connect command frame  | replies and pushes   |
//! | `GET /connection/sse`         | `?cf_connect=` command     | SSE, one per message |
//! | `POST /connection/uni_http_stream` | a connect request     | pushes               |
//! | `GET /connection/uni_sse`     | `?cf_connect=` request     | SSE pushes, with ids |
//!
//! The two bidirectional ones are "emulated": the client sends its later
//! commands with `POST /emulation` (see `transport::emulation`), quoting the
//! session id and node name of its connect reply. `/connection/sse` and
//! `/connection/uni_sse` also accept the frame as a POST body.
//!
//! The response body is written by the connection's pump itself (a
//! [`Body`]: straight to the socket on plain HTTP/1.1, through hyper
//! otherwise), with the write deadline and slow-consumer rules of every
//! other transport.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::body::Body;
use super::centrifugo::{self as connection, Start};
use super::live::LiveBody;
use super::pump::{Batch, Close, Inbound, Wire};
use super::writer::WriteError;
use super::{origin, CentrifugoState, ConnectQuery};
use crate::centrifugo::{EmulationInbox, Transport};
use crate::protocol::centrifuge::outbox::Framing;
use crate::protocol::centrifuge::{resume, Encoding};

/// `POST /connection/http_stream`.
pub async fn http_stream(
    state: State<Arc<CentrifugoState>>,
    remote: ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    open_stream(state, remote, Transport::HttpStream, None, req).await
}

/// `GET|POST /connection/sse`.
pub async fn sse(
    state: State<Arc<CentrifugoState>>,
    remote: ConnectInfo<SocketAddr>,
    Query(query): Query<ConnectQuery>,
    req: Request,
) -> Response {
    open_stream(state, remote, Transport::Sse, query.cf_connect, req).await
}

/// `POST /connection/uni_http_stream`.
pub async fn uni_http_stream(
    state: State<Arc<CentrifugoState>>,
    remote: ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    open_stream(state, remote, Transport::UniHttpStream, None, req).await
}

/// `GET|POST /connection/uni_sse`.
pub async fn uni_sse(
    state: State<Arc<CentrifugoState>>,
    remote: ConnectInfo<SocketAddr>,
    Query(query): Query<ConnectQuery>,
    req: Request,
) -> Response {
    open_stream(state, remote, Transport::UniSse, query.cf_connect, req).await
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, format!("{message}\n")).into_response()
}

/// Reads a request body of at most `limit` bytes.
pub async fn read_body(req: Request, limit: usize) -> Result<Bytes, Response> {
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body larger than {limit} bytes (centrifugo.max_frame)"),
            )
        })
}

/// True when the request says its body is Protobuf.
pub fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/octet-stream")
}

async fn open_stream(
    State(state): State<Arc<CentrifugoState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    transport: Transport,
    query_frame: Option<String>,
    req: Request,
) -> Response {
    let node = &state.node;
    if !node.transport_enabled(transport) {
        return refuse(StatusCode::NOT_FOUND, "transport disabled");
    }
    if !origin::may_connect(req.headers(), &node.settings.allowed_origins) {
        return refuse(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let event_stream = transport.framing() == Framing::EventStream;
    let encoding = if !event_stream && is_protobuf(req.headers()) && !transport.unidirectional() {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    let resume_from = match transport {
        Transport::UniSse => req
            .headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(resume::decode)
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let forwarded = node.proxy.forwarded_headers(req.headers());
    let first_frame = match (req.method(), query_frame) {
        (&Method::GET, Some(q)) if event_stream => Bytes::from(q),
        (&Method::GET, None) if transport == Transport::UniSse => Bytes::new(),
        (&Method::GET, None) if event_stream => {
            return refuse(StatusCode::BAD_REQUEST, "missing cf_connect parameter")
        }
        (&Method::POST, _) => match read_body(req, node.settings.max_frame).await {
            Ok(body) => body,
            Err(refused) => return refused,
        },
        _ => return refuse(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    };
    if first_frame.is_empty() && !transport.unidirectional() {
        return refuse(StatusCode::BAD_REQUEST, "missing connect command");
    }
    let inbox = transport.emulation().then(|| node.open_emulation());
    let session_id = match &inbox {
        Some(inbox) => inbox.session().to_owned(),
        None if transport.unidirectional() => uuid::Uuid::new_v4().to_string(),
        None => String::new(),
    };
    let start = Start {
        transport,
        encoding,
        session_id,
        first_frame: Some(first_frame),
        resume_from,
        remote: remote.to_string(),
        headers: forwarded,
        compression: None,
    };
    let node = node.clone();
    let content_type = match (event_stream, encoding) {
        (true, _) => "text/event-stream; charset=utf-8",
        (false, Encoding::Json) => "application/json",
        (false, Encoding::Protobuf) => "application/octet-stream",
    };
    let mut response =
        LiveBody::response(move |body| connection::run(Emulated { body, inbox }, node, start));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    // Tell nginx-like proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A response body (plus, when emulated, the inbox of commands posted to
/// `/emulation`) as a connection's wire.
struct Emulated {
    body: Body,
    inbox: Option<EmulationInbox>,
}

impl Wire for Emulated {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        if let Poll::Ready(gone) = self.body.poll_recv(cx) {
            return Poll::Ready(gone);
        }
        match &mut self.inbox {
            Some(inbox) => inbox
                .frames
                .poll_recv(cx)
                .map(|frame| frame.map_or(Inbound::Gone, Inbound::Frame)),
            None => Poll::Pending,
        }
    }

    async fn send(&mut self, batch: Batch<'_>) -> Result<(), WriteError> {
        self.body.send(batch).await
    }

    async fn close(self, close: &Close) {
        self.body.close(close).await
    }
}
