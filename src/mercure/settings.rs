//! The Mercure hub's settings, validated from `[mercure]`.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use url::Url;

/// Validated `[mercure]`.
#[derive(Debug, Clone)]
pub struct MercureSettings {
    /// Hub URL (resource identifier, base for relative topics).
    pub hub_url: Url,
    /// Trusted issuer.
    pub issuer: String,
    /// Required audience.
    pub audience: String,
    /// Key algorithm.
    pub algorithm: Algorithm,
    /// Publisher key material (secret or PEM).
    pub publisher_key: String,
    /// Subscriber key material (secret or PEM).
    pub subscriber_key: String,
    /// Whether the built-in development key is in use.
    pub dev_key: bool,
    /// Anonymous subscribers allowed.
    pub anonymous: bool,
    /// Pre-standardization compatibility.
    pub compat: bool,
    /// Active subscriptions.
    pub subscriptions: bool,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Stream `retry:`.
    pub sse_retry: Option<u64>,
    /// Maximum subscription lifetime.
    pub max_lifetime: Option<Duration>,
    /// Token cookie name.
    pub cookie_name: String,
    /// CORS origins.
    pub cors_origins: Vec<String>,
    /// Publish body limit.
    pub max_body: usize,
    /// Request limits.
    pub limits: crate::protocol::mercure::request::Limits,
    /// Pattern matchers a subscribe without a token may use.
    pub max_anonymous_patterns: usize,
}

impl MercureSettings {
    /// When listening on port 0, the hub URL derived from `listen` (and the
    /// audience derived from it) take the port actually bound.
    pub fn resolve_port(&mut self, port: u16) {
        if self.hub_url.port() == Some(0) {
            let derived_audience = self.audience == self.hub_url.as_str();
            let _ = self.hub_url.set_port(Some(port));
            if derived_audience {
                self.audience = self.hub_url.to_string();
            }
        }
    }
}
