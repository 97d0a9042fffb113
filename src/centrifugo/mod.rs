//! Centrifugo semantics on the hub: client sessions and the node that
//! tracks them.
//!
//! - [`session::Session`]: one client connection — commands in, replies
//!   and pushes out — independent of the transport that carries the frames
//!   (WebSocket now; HTTP streaming and SSE emulation later).
//! - [`Node`]: what sessions and the server API share: the hub, the
//!   settings, the token key, and the registry of live connections (by
//!   client id and by user) through which the API reaches them.

pub mod session;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::auth::jwt::TrustedKey;
use crate::config::CentrifugoSettings;
use crate::hub::Hub;

/// Something the server asks a live connection to do.
#[derive(Debug, Clone)]
pub enum Control {
    /// Subscribe to a channel (server-side subscription).
    Subscribe(String),
    /// Unsubscribe from a channel.
    Unsubscribe(String),
    /// Close the connection with a disconnect code.
    Disconnect(u16, String),
    /// Change when the connection expires (None: never).
    Refresh(Option<u64>),
}

/// A registered connection.
#[derive(Clone)]
struct Registered {
    user: String,
    control: mpsc::UnboundedSender<Control>,
}

/// Shared state of all Centrifugo connections on this node.
pub struct Node {
    /// The hub.
    pub hub: Arc<Hub>,
    /// Settings.
    pub settings: CentrifugoSettings,
    /// Verifies connection and subscription tokens.
    pub key: TrustedKey,
    /// When the node started.
    pub started: Instant,
    /// A random name of this node.
    pub name: String,
    clients: Mutex<HashMap<String, Registered>>,
    users: Mutex<HashMap<String, HashSet<String>>>,
}

impl Node {
    /// A node for `hub`.
    pub fn new(hub: Arc<Hub>, settings: CentrifugoSettings) -> Result<Arc<Node>, String> {
        let key = TrustedKey::new(&settings.token_key, settings.token_algorithm)?;
        Ok(Arc::new(Node {
            hub,
            settings,
            key,
            started: Instant::now(),
            name: format!(
                "tidings-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            clients: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
        }))
    }

    fn register(&self, client: &str, user: &str, control: mpsc::UnboundedSender<Control>) {
        self.clients.lock().insert(
            client.to_owned(),
            Registered {
                user: user.to_owned(),
                control,
            },
        );
        self.users
            .lock()
            .entry(user.to_owned())
            .or_default()
            .insert(client.to_owned());
    }

    fn unregister(&self, client: &str) {
        let Some(r) = self.clients.lock().remove(client) else {
            return;
        };
        let mut users = self.users.lock();
        if let Some(set) = users.get_mut(&r.user) {
            set.remove(client);
            if set.is_empty() {
                users.remove(&r.user);
            }
        }
    }

    /// Sends `control` to the user's connections (or only to `client`);
    /// returns how many received it.
    pub fn control(&self, user: &str, client: Option<&str>, control: Control) -> usize {
        let targets: Vec<mpsc::UnboundedSender<Control>> = {
            let clients = self.clients.lock();
            match client.filter(|c| !c.is_empty()) {
                Some(c) => clients
                    .get(c)
                    .filter(|r| r.user == user)
                    .map(|r| r.control.clone())
                    .into_iter()
                    .collect(),
                None => self
                    .users
                    .lock()
                    .get(user)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| clients.get(c).map(|r| r.control.clone()))
                    .collect(),
            }
        };
        targets
            .into_iter()
            .filter(|t| t.send(control.clone()).is_ok())
            .count()
    }

    /// (connections, distinct users) on this node.
    pub fn counts(&self) -> (usize, usize) {
        (self.clients.lock().len(), self.users.lock().len())
    }
}
