//! A publication: one update on one channel, positioned in history.
//!
//! Publications are shared as `Arc<Publication>` by every subscriber that
//! receives them, and each wire encoding is computed at most once, on first
//! use, then shared as `Bytes` (the encode-once rule of the data path). The
//! encodings themselves belong to the protocols (`mercure`, `centrifugo`):
//! here is only one cell per wire format.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Who a client is, as other clients see it (Centrifugo's `ClientInfo`):
/// the publisher of a client publication, a member of a channel's presence.
/// `conn_info` and `chan_info` are JSON documents kept as text: they pass
/// through to every wire format untouched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The user id (`sub` of the connection token; empty when anonymous).
    pub user: String,
    /// The connection's client id.
    pub client: String,
    /// Connection info from the token (`info` claim), as JSON text.
    pub conn_info: Option<String>,
    /// Channel info from the subscription token, as JSON text.
    pub chan_info: Option<String>,
}

/// What a publisher asks to publish, before history positions it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    /// The channel (Mercure canonical topic).
    pub channel: String,
    /// Mercure alternate topics: the update also reaches their subscribers.
    pub alternates: Vec<String>,
    /// The Mercure event id (publisher-supplied or hub-generated).
    pub id: String,
    /// The payload.
    pub data: Bytes,
    /// The SSE event type.
    pub event_type: Option<String>,
    /// The SSE retry delay in milliseconds.
    pub retry: Option<u64>,
    /// Only subscribers authorized for one of its topics may receive it.
    pub private: bool,
    /// The publishing client, when a client (not a backend) published it.
    pub info: Option<ClientInfo>,
    /// Publisher-supplied tags (Centrifugo).
    pub tags: std::collections::BTreeMap<String, String>,
}

impl Draft {
    /// A public publication to one channel, as the Centrifugo side makes
    /// them (client publish, server API): a fresh id, no SSE fields.
    pub fn to_channel(
        channel: String,
        data: Bytes,
        info: Option<ClientInfo>,
        tags: std::collections::BTreeMap<String, String>,
    ) -> Draft {
        Draft {
            channel,
            alternates: Vec::new(),
            id: format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            data,
            event_type: None,
            retry: None,
            private: false,
            info,
            tags,
        }
    }
}

/// The wire formats a publication is sent in: each has one cell, filled
/// once by the protocol that speaks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// A Mercure SSE event.
    Sse,
    /// A Centrifugo publication push, JSON.
    CentrifugeJson,
    /// A Centrifugo publication push, Protobuf.
    CentrifugeProtobuf,
    /// The JSON push as a permessage-deflate piece.
    CentrifugeJsonDeflated,
    /// The Protobuf push as a permessage-deflate piece.
    CentrifugeProtobufDeflated,
}

const WIRES: usize = 5;

/// A stored, positioned publication.
#[derive(Debug, Serialize, Deserialize)]
pub struct Publication {
    /// Hub-wide order; Mercure replay follows it.
    pub seq: u64,
    /// Position within the channel, counting from 1 in each epoch.
    pub offset: u64,
    /// The channel's history generation; a new epoch means offsets restarted.
    pub epoch: Arc<str>,
    /// Milliseconds since the Unix epoch when history accepted it.
    pub time_ms: u64,
    /// The update itself.
    pub draft: Draft,
    #[serde(skip)]
    encoded: [OnceLock<Bytes>; WIRES],
}

impl Publication {
    /// Positions a draft.
    pub fn new(draft: Draft, seq: u64, offset: u64, epoch: Arc<str>, time_ms: u64) -> Self {
        Publication {
            seq,
            offset,
            epoch,
            time_ms,
            draft,
            encoded: Default::default(),
        }
    }

    /// The channel (canonical topic).
    pub fn channel(&self) -> &str {
        &self.draft.channel
    }

    /// The canonical topic followed by the alternate topics.
    pub fn topics(&self) -> impl Iterator<Item = &str> + Clone {
        std::iter::once(self.draft.channel.as_str())
            .chain(self.draft.alternates.iter().map(String::as_str))
    }

    /// The Mercure event id.
    pub fn id(&self) -> &str {
        &self.draft.id
    }

    /// Its encoding for `wire`: made by `encode` the first time, shared
    /// after.
    pub fn encoded(&self, wire: Wire, encode: impl FnOnce(&Publication) -> Bytes) -> &Bytes {
        self.encoded[wire as usize].get_or_init(|| encode(self))
    }

    /// Serializes for a durable store.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Reads back what [`Publication::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_encodes_once() {
        let p = Publication::new(
            Draft {
                channel: "a".into(),
                alternates: vec!["b".into()],
                id: "urn:uuid:1".into(),
                data: Bytes::from_static(b"x\ny"),
                event_type: None,
                retry: None,
                private: true,
                info: None,
                tags: Default::default(),
            },
            7,
            3,
            "e1".into(),
            42,
        );
        let q = Publication::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!((q.seq, q.offset, &*q.epoch, q.time_ms), (7, 3, "e1", 42));
        assert_eq!(q.draft, p.draft);
        let mut calls = 0;
        let mut encode = |_: &Publication| {
            calls += 1;
            Bytes::from_static(b"encoded")
        };
        let first = p.encoded(Wire::Sse, &mut encode).as_ptr();
        let again = p.encoded(Wire::Sse, &mut encode).as_ptr();
        assert!(std::ptr::eq(first, again));
        assert_eq!(calls, 1);
        assert_eq!(p.topics().collect::<Vec<_>>(), vec!["a", "b"]);
    }
}
