//! A publication: one update on one channel, positioned in history.
//!
//! Publications are shared as `Arc<Publication>` by every subscriber that
//! receives them, and each wire encoding is computed at most once, on first
//! use, then shared as `Bytes` (the encode-once rule of the data path).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::centrifuge::{self, Encoding};
use crate::protocol::mercure::sse;

/// A client's info in the protocol's form.
pub fn client_info(info: &super::ClientInfo) -> centrifuge::ClientInfo {
    let raw = |v: &Option<String>| {
        v.as_ref()
            .map(|t| Bytes::from(t.clone()))
            .unwrap_or_default()
    };
    centrifuge::ClientInfo {
        user: info.user.clone(),
        client: info.client.clone(),
        conn_info: raw(&info.conn_info),
        chan_info: raw(&info.chan_info),
    }
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
    pub info: Option<super::ClientInfo>,
    /// Publisher-supplied tags (Centrifugo).
    pub tags: std::collections::BTreeMap<String, String>,
}

impl Draft {
    /// A public publication to one channel, as the Centrifugo side makes
    /// them (client publish, server API): a fresh id, no SSE fields.
    pub fn to_channel(
        channel: String,
        data: Bytes,
        info: Option<super::ClientInfo>,
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
    sse: OnceLock<Bytes>,
    #[serde(skip)]
    centrifuge_json: OnceLock<Bytes>,
    #[serde(skip)]
    centrifuge_protobuf: OnceLock<Bytes>,
    #[serde(skip)]
    centrifuge_json_deflated: OnceLock<Bytes>,
    #[serde(skip)]
    centrifuge_protobuf_deflated: OnceLock<Bytes>,
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
            sse: OnceLock::new(),
            centrifuge_json: OnceLock::new(),
            centrifuge_protobuf: OnceLock::new(),
            centrifuge_json_deflated: OnceLock::new(),
            centrifuge_protobuf_deflated: OnceLock::new(),
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

    /// The `text/event-stream` encoding, computed once and shared.
    pub fn sse(&self) -> &Bytes {
        self.sse.get_or_init(|| {
            sse::encode(&sse::Event {
                id: &self.draft.id,
                event_type: self.draft.event_type.as_deref(),
                retry: self.draft.retry,
                data: &String::from_utf8_lossy(&self.draft.data),
            })
        })
    }

    /// The publication as the Centrifugo protocol's publication object.
    pub fn to_centrifuge(&self, encoding: Encoding) -> centrifuge::Publication {
        let d = &self.draft;
        centrifuge::Publication {
            data: match encoding {
                Encoding::Json => centrifuge::json_payload(&d.data),
                Encoding::Protobuf => d.data.clone(),
            },
            info: d.info.as_ref().map(client_info),
            offset: self.offset,
            tags: d.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ..Default::default()
        }
    }

    /// The Centrifugo publication push for this publication's channel,
    /// encoded once per encoding and shared by every WebSocket receiver.
    pub fn centrifuge_push(&self, encoding: Encoding) -> &Bytes {
        let cell = match encoding {
            Encoding::Json => &self.centrifuge_json,
            Encoding::Protobuf => &self.centrifuge_protobuf,
        };
        cell.get_or_init(|| {
            let reply = centrifuge::Reply {
                push: Some(centrifuge::Push {
                    channel: self.draft.channel.clone(),
                    publication: Some(self.to_centrifuge(encoding)),
                    ..Default::default()
                }),
                ..Default::default()
            };
            centrifuge::encode(encoding, &reply)
        })
    }

    /// [`Publication::centrifuge_push`] as a permessage-deflate piece,
    /// compressed once at `level` (the level is the same for the whole hub)
    /// and shared by every WebSocket receiver that agreed to compression.
    pub fn centrifuge_push_deflated(&self, encoding: Encoding, level: u32) -> &Bytes {
        let cell = match encoding {
            Encoding::Json => &self.centrifuge_json_deflated,
            Encoding::Protobuf => &self.centrifuge_protobuf_deflated,
        };
        cell.get_or_init(|| {
            crate::protocol::websocket::deflate::piece(self.centrifuge_push(encoding), level)
        })
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
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
        assert!(std::ptr::eq(p.sse().as_ptr(), p.sse().as_ptr()));
        assert_eq!(&p.sse()[..], b"id: urn:uuid:1\ndata: x\ndata: y\n\n");
        assert_eq!(p.topics().collect::<Vec<_>>(), vec!["a", "b"]);
    }
}
