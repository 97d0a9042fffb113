//! `POST /emulation`: the client-to-server half of an emulated connection.
//!
//! A client on `/connection/http_stream` or `/connection/sse` receives on
//! that stream and sends every later command here, naming its session and
//! the node that holds it (both from its connect reply). The body is the
//! JSON `{"session","node","data"}` (with `data` the command frame as a
//! string) or, with `Content-Type: application/octet-stream`, the Protobuf
//! `EmulationRequest`.
//!
//! Answers follow centrifuge-js' expectations: 204 once the commands are
//! queued, and also when the session has ended (its stream tells the client
//! why); 404 when the node is not this one (the client reconnects); 400
//! for a body that is not an emulation request; 413 when too large; 503
//! when the connection has too many commands waiting (the client
//! reconnects).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::http_stream::{is_protobuf, read_body};
use super::{origin, CentrifugoState};
use crate::centrifugo::Emulated;
use crate::protocol::centrifuge::decode_emulation;

/// `POST /emulation`.
pub async fn handle(State(state): State<Arc<CentrifugoState>>, req: Request) -> Response {
    let node = &state.node;
    if !node.emulation_enabled() {
        return (StatusCode::NOT_FOUND, "emulation disabled\n").into_response();
    }
    if !origin::may_connect(req.headers(), &node.settings.allowed_origins) {
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let protobuf = is_protobuf(req.headers());
    let body = match read_body(req, node.settings.max_frame).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let emulation = match decode_emulation(protobuf, &body) {
        Ok(e) => e,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    if emulation.node != node.name {
        return (StatusCode::NOT_FOUND, "unknown node\n").into_response();
    }
    match node.emulate(&emulation.session, emulation.data) {
        Emulated::Queued | Emulated::NoSession => StatusCode::NO_CONTENT.into_response(),
        Emulated::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many commands waiting for this connection\n",
        )
            .into_response(),
    }
}
