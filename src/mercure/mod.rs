//! Mercure subscriber sessions: what a reconnecting subscriber is sent
//! before its live stream.

pub mod replay;
pub mod settings;

use bytes::Bytes;

use crate::history::{Publication, Wire};
use crate::protocol::sse;

/// The publication as an SSE event (`id`, `event`, `retry`, `data`),
/// encoded once and shared by every subscriber.
pub fn event(p: &Publication) -> &Bytes {
    p.encoded(Wire::Sse, |p| {
        sse::encode(&sse::Event {
            id: &p.draft.id,
            event_type: p.draft.event_type.as_deref(),
            retry: p.draft.retry,
            data: &String::from_utf8_lossy(&p.draft.data),
        })
    })
}
