//! Centrifugo semantics on the hub: client sessions and the node that
//! tracks them.
//!
//! - [`session::Session`]: one client connection — commands in, replies
//!   and pushes out — independent of the transport that carries the frames.
//! - [`encode`]: publications in the protocol's form, encoded once.
//! - [`settings`]: what connections, the server API and namespaces may do.
//! - [`Node`]: what sessions and the server API share: the hub, the
//!   settings, the token key, the registry of live connections (by client
//!   id and by user) through which the API reaches them, and the inboxes of
//!   emulated connections (whose commands arrive by `POST /emulation`).
//!
//! The connection loop that drives a session over any [`Transport`]
//! (WebSocket, HTTP streaming, SSE, and their unidirectional forms) is the
//! transport layer's pump (`transport::centrifugo`).

pub mod encode;
pub mod session;
pub mod settings;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::auth::jwt::TrustedKey;
use crate::hub::{Delivery, Hub, Offer, Sink};
use crate::integration::proxy::Proxy;
use crate::integration::webhooks::Webhooks;
use crate::limits::{KeyedRateLimiter, LimitSettings, Refusal};
use crate::protocol::centrifuge::outbox::Framing;
use settings::CentrifugoSettings;

/// The transports a Centrifugo client connects over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Bidirectional WebSocket (`/connection/websocket`).
    WebSocket,
    /// HTTP streaming with bidirectional emulation (`/connection/http_stream`).
    HttpStream,
    /// SSE with bidirectional emulation (`/connection/sse`).
    Sse,
    /// Pushes only, over WebSocket (`/connection/uni_websocket`).
    UniWebSocket,
    /// Pushes only, over HTTP streaming (`/connection/uni_http_stream`).
    UniHttpStream,
    /// Pushes only, over SSE (`/connection/uni_sse`).
    UniSse,
}

impl Transport {
    /// Every transport.
    pub const ALL: [Transport; 6] = [
        Transport::WebSocket,
        Transport::HttpStream,
        Transport::Sse,
        Transport::UniWebSocket,
        Transport::UniHttpStream,
        Transport::UniSse,
    ];

    /// The name Centrifugo gives it (also its endpoint and config name).
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::HttpStream => "http_stream",
            Transport::Sse => "sse",
            Transport::UniWebSocket => "uni_websocket",
            Transport::UniHttpStream => "uni_http_stream",
            Transport::UniSse => "uni_sse",
        }
    }

    /// The transport of that name.
    pub fn from_name(name: &str) -> Option<Transport> {
        Transport::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Pushes only: the client sends one connect request, then nothing.
    pub fn unidirectional(self) -> bool {
        matches!(
            self,
            Transport::UniWebSocket | Transport::UniHttpStream | Transport::UniSse
        )
    }

    /// Bidirectional over a one-way stream: commands come by `POST /emulation`.
    pub fn emulation(self) -> bool {
        matches!(self, Transport::HttpStream | Transport::Sse)
    }

    /// How its messages are framed.
    pub fn framing(self) -> Framing {
        match self {
            Transport::WebSocket | Transport::UniWebSocket => Framing::Frame,
            Transport::HttpStream | Transport::UniHttpStream => Framing::Stream,
            Transport::Sse | Transport::UniSse => Framing::EventStream,
        }
    }

    /// WebSocket says why it closes in its close frame; the others with a
    /// disconnect push before the stream ends.
    pub fn disconnect_in_band(self) -> bool {
        !matches!(self, Transport::WebSocket | Transport::UniWebSocket)
    }
}

/// Most command frames waiting for an emulated connection.
const EMULATION_INBOX: usize = 64;

/// What became of commands posted to `/emulation`.
#[derive(Debug, PartialEq, Eq)]
pub enum Emulated {
    /// Queued for the connection.
    Queued,
    /// No such session on this node (it ended, or never was).
    NoSession,
    /// The connection has too many commands waiting.
    Busy,
}

/// The commands of one emulated connection; leaves the node when dropped.
pub struct EmulationInbox {
    node: Arc<Node>,
    session: String,
    /// Command frames, in the order they were posted.
    pub frames: mpsc::Receiver<bytes::Bytes>,
}

impl EmulationInbox {
    /// The session id the client quotes in its emulation requests.
    pub fn session(&self) -> &str {
        &self.session
    }
}

impl Drop for EmulationInbox {
    fn drop(&mut self) {
        self.node.emulated.lock().remove(&self.session);
    }
}

/// Something the server asks a live connection to do. The hub and the
/// engines carry it as bytes ([`Control::to_bytes`]) without reading it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Control {
    /// Subscribe to a channel (server-side subscription).
    Subscribe(ServerSubscribe),
    /// Unsubscribe from a channel.
    Unsubscribe(String),
    /// Close the connection with a disconnect code.
    Disconnect(u16, String),
    /// Change when the connection expires (None: never).
    Refresh(Option<u64>),
}

impl Control {
    /// The bytes the hub carries.
    pub fn to_bytes(&self) -> bytes::Bytes {
        bytes::Bytes::from(postcard::to_stdvec(self).unwrap_or_default())
    }

    /// Reads back [`Control::to_bytes`] (None: not a control).
    pub fn from_bytes(bytes: &[u8]) -> Option<Control> {
        postcard::from_bytes(bytes).ok()
    }
}

/// A server-side subscription asked through the server API.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerSubscribe {
    /// The channel.
    pub channel: String,
    /// When the subscription ends (seconds since the Unix epoch).
    pub expire_at: Option<u64>,
    /// Channel info, as JSON text.
    pub info: Option<String>,
    /// Data for the subscribe push.
    pub data: Vec<u8>,
}

/// A registered connection: controls reach it through its queue.
#[derive(Clone)]
struct Registered {
    user: String,
    sink: Arc<Sink>,
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
    /// The application's proxy endpoints.
    pub proxy: Arc<Proxy>,
    /// Where connection and subscription events go.
    pub webhooks: Arc<Webhooks>,
    /// Per-user connections, client publish rate.
    pub limits: LimitSettings,
    /// Publications per second through the API key.
    pub api_rate: Arc<KeyedRateLimiter>,
    clients: Mutex<HashMap<String, Registered>>,
    users: Mutex<HashMap<String, HashSet<String>>>,
    emulated: Mutex<HashMap<String, mpsc::Sender<bytes::Bytes>>>,
}

impl Node {
    /// A node for `hub`, named `name`.
    pub fn new(
        hub: Arc<Hub>,
        settings: CentrifugoSettings,
        name: String,
        proxy: Arc<Proxy>,
        webhooks: Arc<Webhooks>,
        limits: LimitSettings,
        api_rate: Arc<KeyedRateLimiter>,
    ) -> Result<Arc<Node>, String> {
        let key = TrustedKey::new(&settings.token_key, settings.token_algorithm)?.expecting(
            settings.token_audience.clone(),
            settings.token_issuer.clone(),
        );
        let node = Arc::new(Node {
            hub,
            settings,
            key,
            started: Instant::now(),
            name,
            proxy,
            webhooks,
            limits,
            api_rate,
            clients: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            emulated: Mutex::new(HashMap::new()),
        });
        // Commands other nodes broadcast reach this node's connections.
        let weak = Arc::downgrade(&node);
        node.hub.on_control(Box::new(move |user, client, control| {
            let (Some(node), Some(control)) = (weak.upgrade(), Control::from_bytes(&control))
            else {
                return;
            };
            node.control(user, client, control);
        }));
        Ok(node)
    }

    /// Whether clients may connect over `transport`.
    pub fn transport_enabled(&self, transport: Transport) -> bool {
        self.settings.transports.contains(&transport)
    }

    /// Whether `/emulation` is open (an emulated transport is enabled).
    pub fn emulation_enabled(&self) -> bool {
        self.settings.transports.iter().any(|t| t.emulation())
    }

    /// Opens the inbox of a new emulated connection, under a fresh session id.
    pub fn open_emulation(self: &Arc<Self>) -> EmulationInbox {
        let session = uuid::Uuid::new_v4().to_string();
        let (tx, frames) = mpsc::channel(EMULATION_INBOX);
        self.emulated.lock().insert(session.clone(), tx);
        EmulationInbox {
            node: self.clone(),
            session,
            frames,
        }
    }

    /// Hands a command frame to the emulated connection `session`.
    pub fn emulate(&self, session: &str, frame: bytes::Bytes) -> Emulated {
        let Some(tx) = self.emulated.lock().get(session).cloned() else {
            return Emulated::NoSession;
        };
        match tx.try_send(frame) {
            Ok(()) => Emulated::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Emulated::Busy,
            Err(mpsc::error::TrySendError::Closed(_)) => Emulated::NoSession,
        }
    }

    /// Registers a connected client; false when its (authenticated) user
    /// already has `limits.max_connections_per_user` connections here.
    fn register(&self, client: &str, user: &str, sink: Arc<Sink>) -> bool {
        let mut clients = self.clients.lock();
        let mut users = self.users.lock();
        if let Some(max) = self.limits.max_connections_per_user {
            if !user.is_empty() && users.get(user).is_some_and(|c| c.len() >= max) {
                Refusal::ConnectionsPerUser.count();
                return false;
            }
        }
        clients.insert(
            client.to_owned(),
            Registered {
                user: user.to_owned(),
                sink,
            },
        );
        users
            .entry(user.to_owned())
            .or_default()
            .insert(client.to_owned());
        true
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

    /// Sends `control` to the user's connections on every node (the server
    /// API's `subscribe`, `unsubscribe`, `disconnect`, `refresh`).
    pub fn control_everywhere(&self, user: &str, client: Option<&str>, control: Control) {
        self.hub.broadcast_control(user, client, control.to_bytes());
        self.control(user, client, control);
    }

    /// Sends `control` to the user's connections on this node (or only to
    /// `client`); returns how many received it.
    pub fn control(&self, user: &str, client: Option<&str>, control: Control) -> usize {
        let targets: Vec<Arc<Sink>> = {
            let clients = self.clients.lock();
            match client.filter(|c| !c.is_empty()) {
                Some(c) => clients
                    .get(c)
                    .filter(|r| r.user == user)
                    .map(|r| r.sink.clone())
                    .into_iter()
                    .collect(),
                None => self
                    .users
                    .lock()
                    .get(user)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| clients.get(c).map(|r| r.sink.clone()))
                    .collect(),
            }
        };
        targets
            .into_iter()
            .filter(|t| t.offer(Delivery::Control(control.to_bytes())) == Offer::Queued)
            .count()
    }

    /// (connections, distinct users) on this node.
    pub fn counts(&self) -> (usize, usize) {
        (self.clients.lock().len(), self.users.lock().len())
    }
}
