//! Transports: moving bytes between sockets and the hub, for every live
//! connection the same way.
//!
//! - [`pump`]: the one loop every connection runs — the client's frames,
//!   the hub queue and the session's deadlines in, one write per wake-up
//!   out — given a protocol's [`pump::Session`] and a [`pump::Wire`];
//! - [`writer`]: the one way bytes reach a socket, with the write-stall
//!   deadline (`limits.write_timeout`);
//! - wires: [`websocket`] (with [`inflating`] for permessage-deflate) and
//!   [`body`] (a live HTTP response body, on plain HTTP/1.1 or through
//!   hyper); [`live`] hands them to the server;
//! - sessions: [`mercure`] (a subscriber's event stream) and
//!   [`centrifugo`] (a Centrifugo connection's timers and ends, over any of
//!   its transports);
//! - the Centrifugo endpoints over HTTP: [`http_stream`] (streams, SSE,
//!   their unidirectional forms) and [`emulation`] (the commands of
//!   emulated connections).

pub mod body;
pub mod centrifugo;
pub mod emulation;
pub mod http_stream;
pub mod inflating;
pub mod live;
pub mod mercure;
pub mod origin;
pub mod pump;
pub mod websocket;
pub mod writer;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::centrifugo::Node;

/// What the Centrifugo connection endpoints need.
pub struct CentrifugoState {
    /// Sessions' shared state.
    pub node: Arc<Node>,
    /// Shutdown is coming: `/readyz` answers 503 (fires before `shutdown`).
    pub draining: CancellationToken,
}

/// The `cf_connect` query parameter of unidirectional transports.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ConnectQuery {
    /// The connect request, as JSON.
    pub cf_connect: Option<String>,
}
