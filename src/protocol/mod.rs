//! Wire codecs: pure functions from bytes to values and back, with no I/O.
//!
//! Everything a client sends is decoded here and everything the hub sends is
//! encoded here, so the parsers can be unit-tested and fuzzed in isolation.
//! Transports (`crate::transport`) move the bytes; the hub (`crate::hub`)
//! never sees a wire format.

pub mod centrifuge;
pub mod http1;
pub mod mercure;
pub mod sse;
pub mod websocket;
