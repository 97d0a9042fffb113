//! What a configuration file can say, key by key, and the default of each
//! key: the schema the key list, the environment, the flags and the
//! documentation are all derived from or checked against.

use std::path::PathBuf;

use serde::Deserialize;

use crate::centrifugo::settings::Namespace;

/// The whole configuration, as read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// Where durable history lives.
    pub data_dir: Option<PathBuf>,
    /// Logging.
    pub log: LogConfig,
    /// How long shutdown waits for connections to finish.
    pub shutdown_grace: String,
    /// How long, after the signal, `/readyz` says "draining" while the
    /// hub still serves, so a load balancer stops sending new clients.
    pub shutdown_drain: String,
    /// Run the demo page's ticker and its `demo` namespace (default: on
    /// when both protocols use the development keys, i.e. zero config).
    pub demo: Option<bool>,
    /// The admin dashboard.
    pub admin: AdminConfig,
    /// History storage and retention.
    pub history: HistoryConfig,
    /// The shared engine (`history.engine = "redis"` or `"nats"`).
    pub cluster: ClusterConfig,
    /// Hub core tunables.
    pub hub: HubConfig,
    /// The Mercure hub.
    pub mercure: MercureConfig,
    /// The Centrifugo protocol (WebSocket) and server API.
    pub centrifugo: CentrifugoConfig,
    /// Proxies: the application's backend decides on client events.
    pub proxy: ProxyConfig,
    /// Webhooks: the application's backend is told what happened.
    pub webhooks: WebhooksConfig,
    /// HTTPS: certificate and key files.
    pub tls: TlsConfig,
    /// What one client, address or credential may take of the hub.
    pub limits: LimitsConfig,
}

/// `[tls]`: when both files are set the hub serves HTTPS only (HTTP/2 and
/// HTTP/1.1 chosen by ALPN); SIGHUP reloads them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// `[limits]`. Counts of 0 mean "no limit".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open TCP connections, all clients together.
    pub max_connections: usize,
    /// Open TCP connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Centrifugo sessions of one user (anonymous users are not counted).
    pub max_connections_per_user: usize,
    /// Concurrent HTTP/2 streams on one connection.
    pub max_streams: usize,
    /// Time a client has to send a request's headers (and finish TLS).
    pub header_timeout: String,
    /// An HTTP connection with no bytes either way for this long is closed.
    pub idle_timeout: String,
    /// A write to a client that makes no progress for this long closes the
    /// connection (a client that stopped reading).
    pub write_timeout: String,
    /// Client publications per second on one Centrifugo connection.
    pub publish_rate: usize,
    /// Publications per second through one server credential (Centrifugo
    /// API key, Mercure publisher token).
    pub api_publish_rate: usize,
    /// Bytes of publications queued for one connection before it is
    /// dropped as a slow consumer.
    pub queue_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            max_connections_per_ip: 0,
            max_connections_per_user: 0,
            max_streams: 256,
            header_timeout: "10s".into(),
            idle_timeout: "120s".into(),
            write_timeout: "10s".into(),
            publish_rate: 100,
            api_publish_rate: 0,
            queue_bytes: 16 << 20,
        }
    }
}

/// `[proxy]`: endpoints of the application asked to decide on client
/// events (Centrifugo's proxy request/response format), and the Mercure
/// authorization hook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// How long one proxy request may take.
    pub timeout: String,
    /// Headers of the client's connection request forwarded to the backend.
    pub http_headers: Vec<String>,
    /// Asked when a client connects without a token.
    pub connect_endpoint: Option<String>,
    /// Asked when a connection's session expires.
    pub refresh_endpoint: Option<String>,
    /// Asked on subscribe in namespaces with `subscribe_proxy`.
    pub subscribe_endpoint: Option<String>,
    /// Asked on client publish in namespaces with `publish_proxy`.
    pub publish_endpoint: Option<String>,
    /// Asked when a subscription expires in namespaces with `sub_refresh_proxy`.
    pub sub_refresh_endpoint: Option<String>,
    /// Answers client RPC calls.
    pub rpc_endpoint: Option<String>,
    /// Decides Mercure publishes and subscriptions instead of JWT claims.
    pub mercure_endpoint: Option<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            timeout: "1s".into(),
            http_headers: Vec::new(),
            connect_endpoint: None,
            refresh_endpoint: None,
            subscribe_endpoint: None,
            publish_endpoint: None,
            sub_refresh_endpoint: None,
            rpc_endpoint: None,
            mercure_endpoint: None,
        }
    }
}

/// `[webhooks]`: where events are delivered and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Endpoints receiving every event (each has its own queue).
    pub endpoints: Vec<String>,
    /// Secret of the HMAC-SHA256 signature header.
    pub secret: Option<String>,
    /// Events delivered.
    pub events: Vec<String>,
    /// Most events in one request.
    pub batch_size: usize,
    /// How long a batch waits for more events.
    pub batch_wait: String,
    /// How long one delivery may take.
    pub timeout: String,
    /// Longest pause between retries.
    pub max_backoff: String,
    /// Most events queued per endpoint; past it new events are dropped.
    pub max_queue: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            endpoints: Vec::new(),
            secret: None,
            events: crate::integration::webhooks::EventKind::ALL
                .iter()
                .map(|e| e.name().to_owned())
                .collect(),
            batch_size: 100,
            batch_wait: "50ms".into(),
            timeout: "5s".into(),
            max_backoff: "60s".into(),
            max_queue: 1_000_000,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Password of `/admin` (the dashboard is off when unset).
    pub password: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8000".into(),
            data_dir: None,
            log: LogConfig::default(),
            shutdown_grace: "10s".into(),
            shutdown_drain: "0s".into(),
            demo: None,
            admin: AdminConfig::default(),
            history: HistoryConfig::default(),
            cluster: ClusterConfig::default(),
            hub: HubConfig::default(),
            mercure: MercureConfig::default(),
            centrifugo: CentrifugoConfig::default(),
            proxy: ProxyConfig::default(),
            webhooks: WebhooksConfig::default(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `tidings=debug,warn`…
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[history]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// `disk` (default, durable), `memory`, or a shared engine for many
    /// nodes: `redis` or `nats`.
    pub engine: String,
    /// Publications kept per channel.
    pub size: usize,
    /// How long publications are kept.
    pub ttl: String,
    /// How long an idle, empty channel keeps its position.
    pub meta_ttl: String,
    /// How often expired history is reclaimed.
    pub sweep_interval: String,
    /// Bytes of the disk store kept cached in memory.
    pub cache_size: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            engine: "disk".into(),
            size: 1000,
            ttl: "24h".into(),
            meta_ttl: "30d".into(),
            sweep_interval: "60s".into(),
            cache_size: 32 << 20,
        }
    }
}

/// `[cluster]`: the engine several nodes share.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis URL (`history.engine = "redis"`).
    pub redis_url: String,
    /// NATS URL (`history.engine = "nats"`).
    pub nats_url: String,
    /// Prefix of every key, subject and stream.
    pub prefix: String,
    /// Publications kept in the hub-wide log.
    pub log_size: usize,
    /// Lifetime of a presence entry its node stopped refreshing.
    pub presence_ttl: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            prefix: "tidings".into(),
            log_size: 100_000,
            presence_ttl: "60s".into(),
        }
    }
}

/// `[hub]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Publications a subscriber may have queued before it is dropped.
    pub queue_size: usize,
    /// Most publications per history commit.
    pub max_batch: usize,
    /// Shortest time between two writes of publications to a connection.
    pub write_interval: String,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            queue_size: 4096,
            max_batch: 512,
            write_interval: "20ms".into(),
        }
    }
}

/// `[mercure]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MercureConfig {
    /// Public URL of the hub; default `http://<listen>/.well-known/mercure`.
    pub hub_url: Option<String>,
    /// Trusted `iss` of access tokens.
    pub issuer: String,
    /// Required `aud`; default the hub URL.
    pub audience: Option<String>,
    /// Signature algorithm of the keys.
    pub algorithm: String,
    /// Key for both roles.
    pub key: Option<String>,
    /// Key for publisher tokens.
    pub publisher_key: Option<String>,
    /// Key for subscriber tokens.
    pub subscriber_key: Option<String>,
    /// PEM file with the publisher key.
    pub publisher_key_file: Option<PathBuf>,
    /// PEM file with the subscriber key.
    pub subscriber_key_file: Option<PathBuf>,
    /// Allow subscribers without a token (public updates only).
    pub anonymous: bool,
    /// Accept the pre-standardization wire format too.
    pub compat: bool,
    /// Active subscriptions: events and API.
    pub subscriptions: bool,
    /// Interval of keep-alive comments.
    pub heartbeat: String,
    /// `retry:` sent at the start of each stream (ms), if set.
    pub sse_retry: Option<u64>,
    /// Longest a subscription may stay open, if set (e.g. `1h`).
    pub max_lifetime: Option<String>,
    /// Cookie carrying the access token.
    pub cookie_name: String,
    /// Origins allowed by CORS (with credentials).
    pub cors_origins: Vec<String>,
    /// Largest publish body, in bytes.
    pub max_body: usize,
    /// Most `topic` fields per publish.
    pub max_topics: usize,
    /// Longest publish field other than `data`, in bytes.
    pub max_field_len: usize,
    /// Most matchers per subscribe.
    pub max_matchers: usize,
    /// Most pattern matchers per subscribe without a token.
    pub max_anonymous_patterns: usize,
    /// Longest matcher, in bytes.
    pub max_matcher_len: usize,
}

impl Default for MercureConfig {
    fn default() -> Self {
        MercureConfig {
            hub_url: None,
            issuer: "tidings".into(),
            audience: None,
            algorithm: "HS256".into(),
            key: None,
            publisher_key: None,
            subscriber_key: None,
            publisher_key_file: None,
            subscriber_key_file: None,
            anonymous: true,
            compat: true,
            subscriptions: true,
            heartbeat: "15s".into(),
            sse_retry: None,
            max_lifetime: None,
            cookie_name: "__Secure-mercure_access_token".into(),
            cors_origins: Vec::new(),
            max_body: 1024 * 1024,
            max_topics: 100,
            max_field_len: 2048,
            max_matchers: 100,
            max_anonymous_patterns: 10,
            max_matcher_len: 2048,
        }
    }
}

/// `[centrifugo]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CentrifugoConfig {
    /// Key verifying connection and subscription tokens (HMAC secret or PEM).
    pub token_key: Option<String>,
    /// PEM file with that key.
    pub token_key_file: Option<PathBuf>,
    /// Algorithm of that key.
    pub token_algorithm: String,
    /// `aud` connection and subscription tokens must carry.
    pub token_audience: Option<String>,
    /// `iss` connection and subscription tokens must carry.
    pub token_issuer: Option<String>,
    /// Key of the server API (`X-API-Key`); the API is closed when unset.
    pub api_key: Option<String>,
    /// Allow connections without a token.
    pub anonymous: bool,
    /// Origins allowed to open WebSockets besides the hub's own.
    pub allowed_origins: Vec<String>,
    /// Interval of server pings.
    pub ping_interval: String,
    /// How long a pong may take.
    pub pong_timeout: String,
    /// How long a new connection may take to send its connect command.
    pub handshake_timeout: String,
    /// How long past its token's expiry a connection may still refresh
    /// before it is closed (3005).
    pub expired_close_delay: String,
    /// How long past its expiry a subscription may still be refreshed
    /// before it ends (unsubscribe 2501).
    pub expired_sub_close_delay: String,
    /// Most channels per connection.
    pub channel_limit: usize,
    /// Largest inbound frame, in bytes.
    pub max_frame: usize,
    /// Agree to permessage-deflate with WebSocket clients that offer it.
    pub websocket_compression: bool,
    /// Deflate level of what the hub sends (1 fastest … 9 smallest).
    pub websocket_compression_level: u32,
    /// Enabled connection transports (`websocket`, `http_stream`, `sse`,
    /// `uni_websocket`, `uni_http_stream`, `uni_sse`).
    pub transports: Vec<String>,
    /// Options of channels without a namespace.
    pub channel: Namespace,
    /// Namespaces: `name:` channel prefixes with their own options.
    pub namespaces: Vec<Namespace>,
}

impl Default for CentrifugoConfig {
    fn default() -> Self {
        CentrifugoConfig {
            token_key: None,
            token_key_file: None,
            token_algorithm: "HS256".into(),
            token_audience: None,
            token_issuer: None,
            api_key: None,
            anonymous: false,
            allowed_origins: Vec::new(),
            ping_interval: "25s".into(),
            pong_timeout: "8s".into(),
            handshake_timeout: "10s".into(),
            expired_close_delay: "25s".into(),
            expired_sub_close_delay: "25s".into(),
            channel_limit: 128,
            max_frame: 65536,
            websocket_compression: false,
            websocket_compression_level: 1,
            transports: crate::centrifugo::Transport::ALL
                .iter()
                .map(|t| t.name().to_owned())
                .collect(),
            channel: Namespace::default(),
            namespaces: Vec::new(),
        }
    }
}
