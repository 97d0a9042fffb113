//! HTTP surfaces: request handling that joins codecs, auth, hub and
//! transports.
//!
//! - [`mercure`]: the Mercure hub (subscribe, publish, subscriptions API,
//!   protected resource metadata).
//! - [`centrifugo`]: the Centrifugo server API (`POST /api/<method>`).
//! - [`admin`]: the same API for the admin dashboard, behind its password.

pub mod admin;
pub mod centrifugo;
pub mod mercure;
