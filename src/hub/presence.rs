//! Presence: who is subscribed to a channel right now, on this node.
//!
//! Entries are added when a client subscribes to a channel with presence
//! enabled and removed when it unsubscribes or disconnects, so a dead
//! connection never lingers. (Cross-node presence with expiry belongs to the
//! Redis and NATS engines.)

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Who a client is, as other clients see it (Centrifugo's `ClientInfo`).
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

/// Per-channel presence of this node.
#[derive(Default)]
pub struct Presence {
    channels: Mutex<HashMap<String, HashMap<String, Arc<ClientInfo>>>>,
}

impl Presence {
    /// Records `info` as present in `channel`.
    pub fn add(&self, channel: &str, info: Arc<ClientInfo>) {
        self.channels
            .lock()
            .entry(channel.to_owned())
            .or_default()
            .insert(info.client.clone(), info);
    }

    /// Removes a client from `channel`.
    pub fn remove(&self, channel: &str, client: &str) {
        let mut channels = self.channels.lock();
        if let Some(clients) = channels.get_mut(channel) {
            clients.remove(client);
            if clients.is_empty() {
                channels.remove(channel);
            }
        }
    }

    /// Everyone in `channel`, by client id.
    pub fn get(&self, channel: &str) -> HashMap<String, Arc<ClientInfo>> {
        self.channels
            .lock()
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }

    /// (clients, distinct users) in `channel`.
    pub fn stats(&self, channel: &str) -> (usize, usize) {
        let channels = self.channels.lock();
        let Some(clients) = channels.get(channel) else {
            return (0, 0);
        };
        let mut users: Vec<&str> = clients.values().map(|c| c.user.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        (clients.len(), users.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(user: &str, client: &str) -> Arc<ClientInfo> {
        Arc::new(ClientInfo {
            user: user.into(),
            client: client.into(),
            conn_info: None,
            chan_info: None,
        })
    }

    #[test]
    fn tracks_clients_and_users() {
        let p = Presence::default();
        p.add("c", info("u1", "a"));
        p.add("c", info("u1", "b"));
        p.add("c", info("u2", "c"));
        assert_eq!(p.stats("c"), (3, 2));
        p.remove("c", "a");
        assert_eq!(p.get("c").len(), 2);
        p.remove("c", "b");
        p.remove("c", "c");
        assert_eq!(p.stats("c"), (0, 0));
    }
}
