//! Mercure subscriber sessions: what a reconnecting subscriber is sent
//! before its live stream.

pub mod replay;
