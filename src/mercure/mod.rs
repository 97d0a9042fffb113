//! The Mercure hub's side of things: who may subscribe and publish (tokens,
//! cookies, the authorization hook), what a subscriber missed (replay),
//! what a subscription's life tells others (subscription events, webhooks,
//! the subscriptions API), and how a publication looks as an SSE event.
//! The HTTP endpoints are `api::mercure`; a subscriber's stream runs on the
//! transport layer's pump (`transport::mercure`).
//!
//! - [`auth`]: token discovery, grants, the authorization hook.
//! - [`replay`]: `Last-Event-ID` replay, honoured only when nothing was lost.
//! - [`events`]: subscription events and connection webhooks.
//! - [`subscriptions`]: the subscriptions API's documents.
//! - [`settings`]: `[mercure]`, validated.

pub mod auth;
pub mod events;
pub mod replay;
pub mod settings;
pub mod subscriptions;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::auth::{AuthError, Verifier};
use crate::history::{Publication, Wire};
use crate::hub::Hub;
use crate::integration::proxy::Proxy;
use crate::integration::webhooks::Webhooks;
use crate::limits::KeyedRateLimiter;
use crate::protocol::mercure::request::RequestError;
use crate::protocol::sse;
use settings::MercureSettings;

/// Shared state of the Mercure endpoints.
pub struct MercureState {
    pub(crate) hub: Arc<Hub>,
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) webhooks: Arc<Webhooks>,
    pub(crate) verifier: Verifier,
    pub(crate) settings: MercureSettings,
    pub(crate) active: Mutex<HashMap<String, Vec<events::Active>>>,
    pub(crate) api_rate: Arc<KeyedRateLimiter>,
}

impl MercureState {
    /// Builds the state from validated settings.
    pub fn new(
        hub: Arc<Hub>,
        settings: MercureSettings,
        proxy: Arc<Proxy>,
        webhooks: Arc<Webhooks>,
        api_rate: Arc<KeyedRateLimiter>,
    ) -> Result<Arc<Self>, String> {
        let key = |m: &str| crate::auth::jwt::TrustedKey::new(m, settings.algorithm);
        let verifier = Verifier {
            publisher: vec![key(&settings.publisher_key)?],
            subscriber: vec![key(&settings.subscriber_key)?],
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            legacy: settings.compat,
            hub: settings.hub_url.clone(),
            limits: Default::default(),
        };
        Ok(Arc::new(MercureState {
            hub,
            proxy,
            webhooks,
            verifier,
            settings,
            active: Mutex::new(HashMap::new()),
            api_rate,
        }))
    }

    /// The validated Mercure settings.
    pub fn settings(&self) -> &MercureSettings {
        &self.settings
    }

    /// The hub URL's path (`/.well-known/mercure` by default).
    pub fn hub_path(&self) -> &str {
        self.settings.hub_url.path()
    }

    /// Path of the protected resource metadata document (RFC 9728).
    pub fn metadata_path(&self) -> String {
        format!("/.well-known/oauth-protected-resource{}", self.hub_path())
    }

    /// The URL of the protected resource metadata document.
    pub fn metadata_url(&self) -> String {
        let mut u = self.settings.hub_url.clone();
        u.set_path(&self.metadata_path());
        u.set_query(None);
        u.to_string()
    }
}

/// Why a Mercure request is refused (`api::mercure` answers each with its
/// HTTP status).
#[derive(Debug)]
pub enum MercureError {
    /// Authorization failure (RFC 6750).
    Auth(AuthError),
    /// Malformed or oversized request.
    Request(RequestError),
    /// Wrong media type for a publish.
    UnsupportedMediaType,
    /// The hub cannot serve the request now.
    Unavailable(String),
    /// No such resource.
    NotFound,
    /// The authorization hook refused.
    Refused(String),
    /// The publisher's credential is over `limits.api_publish_rate`.
    TooManyRequests,
}

impl From<AuthError> for MercureError {
    fn from(e: AuthError) -> Self {
        MercureError::Auth(e)
    }
}

impl From<RequestError> for MercureError {
    fn from(e: RequestError) -> Self {
        MercureError::Request(e)
    }
}

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
