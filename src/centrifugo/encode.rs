//! Publications in the Centrifugo protocol's form: the publication object,
//! and the publication push, encoded once per encoding (and compressed once
//! per encoding for permessage-deflate) for every connection that gets it.

use bytes::Bytes;

use crate::history::{ClientInfo, Publication, Wire};
use crate::protocol::centrifuge::{self as proto, Encoding};

/// A client's info in the protocol's form.
pub fn client_info(info: &ClientInfo) -> proto::ClientInfo {
    let raw = |v: &Option<String>| {
        v.as_ref()
            .map(|t| Bytes::from(t.clone()))
            .unwrap_or_default()
    };
    proto::ClientInfo {
        user: info.user.clone(),
        client: info.client.clone(),
        conn_info: raw(&info.conn_info),
        chan_info: raw(&info.chan_info),
    }
}

/// The publication as the protocol's publication object.
pub fn publication(p: &Publication, encoding: Encoding) -> proto::Publication {
    let d = &p.draft;
    proto::Publication {
        data: match encoding {
            Encoding::Json => proto::json_payload(&d.data),
            Encoding::Protobuf => d.data.clone(),
        },
        info: d.info.as_ref().map(client_info),
        offset: p.offset,
        tags: d.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..Default::default()
    }
}

/// The publication push for the publication's channel, encoded once per
/// encoding and shared by every receiver.
pub fn push(p: &Publication, encoding: Encoding) -> &Bytes {
    let wire = match encoding {
        Encoding::Json => Wire::CentrifugeJson,
        Encoding::Protobuf => Wire::CentrifugeProtobuf,
    };
    p.encoded(wire, |p| {
        let reply = proto::Reply {
            push: Some(proto::Push {
                channel: p.draft.channel.clone(),
                publication: Some(publication(p, encoding)),
                ..Default::default()
            }),
            ..Default::default()
        };
        proto::encode(encoding, &reply)
    })
}

/// [`push`] as a permessage-deflate piece, compressed once at `level` (the
/// level is the same for the whole hub) and shared by every WebSocket
/// receiver that agreed to compression.
pub fn push_deflated(p: &Publication, encoding: Encoding, level: u32) -> &Bytes {
    let wire = match encoding {
        Encoding::Json => Wire::CentrifugeJsonDeflated,
        Encoding::Protobuf => Wire::CentrifugeProtobufDeflated,
    };
    p.encoded(wire, |p| {
        crate::protocol::websocket::deflate::piece(push(p, encoding), level)
    })
}
