//! SSE event ids that carry a connection's stream positions (`uni_sse`).
//!
//! Centrifugo's unidirectional SSE sends no event ids, so a plain
//! `EventSource` loses whatever was published while it reconnected. tidings
//! gives every publication event an id holding the position (offset and
//! epoch) of each of the connection's channels; the browser sends the last
//! one back as `Last-Event-ID` when it reconnects, and the hub recovers each
//! channel from there.
//!
//! The id is form-encoded, `channel=offset.epoch&…`: readable, and free of
//! the CR, LF and NUL that would break an SSE `id:` line.

use url::form_urlencoded;

/// A channel's position in its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPosition {
    /// The channel.
    pub channel: String,
    /// The last offset received.
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// The event id for these positions.
pub fn encode<'a>(positions: impl IntoIterator<Item = (&'a str, u64, &'a str)>) -> String {
    let mut id = form_urlencoded::Serializer::new(String::new());
    for (channel, offset, epoch) in positions {
        id.append_pair(channel, &format!("{offset}.{epoch}"));
    }
    id.finish()
}

/// The positions of an event id; `None` if it is not one of ours.
pub fn decode(id: &str) -> Option<Vec<ChannelPosition>> {
    form_urlencoded::parse(id.as_bytes())
        .map(|(channel, position)| {
            let (offset, epoch) = position.split_once('.')?;
            Some(ChannelPosition {
                channel: channel.into_owned(),
                offset: offset.parse().ok()?,
                epoch: epoch.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_an_sse_safe_id() {
        let id = encode([("news", 7, "ab12"), ("chat:a&b=c\n", 0, "")]);
        assert!(!id.contains(['\n', '\r', '\0']), "{id}");
        let back = decode(&id).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            back[0],
            ChannelPosition {
                channel: "news".into(),
                offset: 7,
                epoch: "ab12".into()
            }
        );
        assert_eq!(back[1].channel, "chat:a&b=c\n");
        assert_eq!((back[1].offset, back[1].epoch.as_str()), (0, ""));
    }

    #[test]
    fn foreign_ids_are_refused() {
        assert_eq!(decode("urn:uuid:1"), None);
        assert_eq!(decode("a=x.e"), None);
        assert_eq!(decode(""), Some(Vec::new()));
    }
}
