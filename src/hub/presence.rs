//! Presence: who is subscribed to a channel right now.
//!
//! Entries are added when a client subscribes to a channel with presence
//! enabled and removed when it unsubscribes or disconnects, so a dead
//! connection never lingers. With a shared engine, entries also go to its
//! [`PresenceStore`] and reads come from there (every node's clients); the
//! hub refreshes this node's entries well before they expire, so a node that
//! dies without cleaning up leaves nothing behind for long.

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::PresenceStore;
use crate::history::ClientInfo;
use parking_lot::Mutex;

type Clients = HashMap<String, Arc<ClientInfo>>;

/// Per-channel presence: this node's entries, and the shared store if any.
#[derive(Default)]
pub struct Presence {
    channels: Mutex<HashMap<String, Clients>>,
    store: Option<Arc<dyn PresenceStore>>,
    /// The engine's name, for metrics.
    engine: &'static str,
}

impl Presence {
    /// Presence kept in `store` too (the shared engine `engine`).
    pub fn shared(store: Arc<dyn PresenceStore>, engine: &'static str) -> Self {
        Presence {
            channels: Mutex::default(),
            store: Some(store),
            engine,
        }
    }

    /// Records `info` as present in `channel`.
    pub async fn add(&self, channel: &str, info: Arc<ClientInfo>) {
        self.channels
            .lock()
            .entry(channel.to_owned())
            .or_default()
            .insert(info.client.clone(), info.clone());
        let engine = self.engine;
        if let Some(store) = &self.store {
            if let Err(e) = store.add(channel, &info).await {
                crate::metrics::engine_error(engine, "presence_add");
                tracing::warn!(error = %e, channel, "shared presence: add failed");
            }
        }
    }

    /// Removes a client from `channel` (from the shared store in the
    /// background: leaving must not wait, it happens on disconnect).
    pub fn remove(&self, channel: &str, client: &str) {
        {
            let mut channels = self.channels.lock();
            if let Some(clients) = channels.get_mut(channel) {
                clients.remove(client);
                if clients.is_empty() {
                    channels.remove(channel);
                }
            }
        }
        let (Some(store), Ok(runtime)) = (&self.store, tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let (store, channel, client) = (store.clone(), channel.to_owned(), client.to_owned());
        let engine = self.engine;
        runtime.spawn(async move {
            if let Err(e) = store.remove(&channel, &client).await {
                crate::metrics::engine_error(engine, "presence_remove");
                tracing::warn!(error = %e, channel, "shared presence: remove failed");
            }
        });
    }

    /// Everyone in `channel`, by client id (on every node with a shared
    /// engine; this node's only if the engine cannot be reached).
    pub async fn get(&self, channel: &str) -> Clients {
        let engine = self.engine;
        if let Some(store) = &self.store {
            match store.get(channel).await {
                Ok(clients) => return clients,
                Err(e) => {
                    crate::metrics::engine_error(engine, "presence_get");
                    tracing::warn!(error = %e, channel, "shared presence: read failed; answering with this node's");
                }
            }
        }
        self.local(channel)
    }

    fn local(&self, channel: &str) -> Clients {
        self.channels
            .lock()
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }

    /// (clients, distinct users) in `channel`.
    pub async fn stats(&self, channel: &str) -> (usize, usize) {
        let clients = self.get(channel).await;
        let mut users: Vec<&str> = clients.values().map(|c| c.user.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        (clients.len(), users.len())
    }

    /// Writes this node's entries to the shared store again, so they do not
    /// expire while their clients are here.
    pub async fn refresh(&self) {
        let Some(store) = &self.store else {
            return;
        };
        let engine = self.engine;
        let entries: Vec<(String, Arc<ClientInfo>)> = self
            .channels
            .lock()
            .iter()
            .flat_map(|(ch, clients)| clients.values().map(|c| (ch.clone(), c.clone())))
            .collect();
        for (channel, info) in entries {
            if let Err(e) = store.add(&channel, &info).await {
                crate::metrics::engine_error(engine, "presence_refresh");
                tracing::warn!(error = %e, "shared presence: refresh failed");
                return;
            }
        }
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

    #[tokio::test]
    async fn tracks_clients_and_users() {
        let p = Presence::default();
        p.add("c", info("u1", "a")).await;
        p.add("c", info("u1", "b")).await;
        p.add("c", info("u2", "c")).await;
        assert_eq!(p.stats("c").await, (3, 2));
        p.remove("c", "a");
        assert_eq!(p.get("c").await.len(), 2);
        p.remove("c", "b");
        p.remove("c", "c");
        assert_eq!(p.stats("c").await, (0, 0));
    }
}
