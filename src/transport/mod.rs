//! Transports: moving encoded bytes between sockets and the hub.
//!
//! A transport owns no protocol logic: it takes a hub [`Subscription`]
//! (crate::hub::Subscription) and writes the bytes the codecs produced.

pub mod sse;
pub mod websocket;
