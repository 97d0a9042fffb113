//! HTTP surfaces: request handling that joins codecs, auth, hub and
//! transports.
//!
//! - [`mercure`]: the Mercure hub (subscribe, publish, subscriptions API,
//!   protected resource metadata).
//! - [`centrifugo`]: the Centrifugo server API (`POST /api/<method>`).

pub mod centrifugo;
pub mod mercure;
