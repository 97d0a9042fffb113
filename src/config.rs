//! Configuration: a TOML file, `TIDINGS_*` environment variables and CLI
//! flags, merged in that order (a flag beats the environment, which beats
//! the file), then validated once at start so a bad value stops the hub with
//! a message naming the key.
//!
//! Every key is listed in [`KEYS`]; the environment variable for a key is
//! `TIDINGS_` followed by the key upper-cased with `.` replaced by `_`
//! (`history.size` → `TIDINGS_HISTORY_SIZE`). docs/configuration.md documents
//! each of them, and a test keeps the two in step.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use url::Url;

/// The key used when no Mercure key is configured. It only works for a hub
/// listening on loopback: validation refuses it on any other address.
pub const DEV_KEY: &str = "!ChangeThisMercureHubJWTSecretKey!";

/// A configuration problem, reported before the hub starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or a value is not valid TOML, or a key is unknown.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value is out of range or inconsistent.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// The dotted key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// How a key's value is written in the environment and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text (also durations such as `30s`).
    Str,
    /// Whole number.
    Int,
    /// `true` / `false`.
    Bool,
    /// Comma-separated list of text.
    List,
}

/// Every configuration key and its kind.
pub const KEYS: &[(&str, Kind)] = &[
    ("listen", Kind::Str),
    ("data_dir", Kind::Str),
    ("log.level", Kind::Str),
    ("log.format", Kind::Str),
    ("shutdown_grace", Kind::Str),
    ("shutdown_drain", Kind::Str),
    ("demo", Kind::Bool),
    ("admin.password", Kind::Str),
    ("history.engine", Kind::Str),
    ("history.size", Kind::Int),
    ("history.ttl", Kind::Str),
    ("history.meta_ttl", Kind::Str),
    ("history.sweep_interval", Kind::Str),
    ("history.cache_size", Kind::Int),
    ("cluster.redis_url", Kind::Str),
    ("cluster.nats_url", Kind::Str),
    ("cluster.prefix", Kind::Str),
    ("cluster.log_size", Kind::Int),
    ("cluster.presence_ttl", Kind::Str),
    ("hub.queue_size", Kind::Int),
    ("hub.write_interval", Kind::Str),
    ("hub.max_batch", Kind::Int),
    ("mercure.hub_url", Kind::Str),
    ("mercure.issuer", Kind::Str),
    ("mercure.audience", Kind::Str),
    ("mercure.algorithm", Kind::Str),
    ("mercure.key", Kind::Str),
    ("mercure.publisher_key", Kind::Str),
    ("mercure.subscriber_key", Kind::Str),
    ("mercure.publisher_key_file", Kind::Str),
    ("mercure.subscriber_key_file", Kind::Str),
    ("mercure.anonymous", Kind::Bool),
    ("mercure.compat", Kind::Bool),
    ("mercure.subscriptions", Kind::Bool),
    ("mercure.heartbeat", Kind::Str),
    ("mercure.sse_retry", Kind::Int),
    ("mercure.max_lifetime", Kind::Str),
    ("mercure.cookie_name", Kind::Str),
    ("mercure.cors_origins", Kind::List),
    ("mercure.max_body", Kind::Int),
    ("mercure.max_topics", Kind::Int),
    ("mercure.max_field_len", Kind::Int),
    ("mercure.max_matchers", Kind::Int),
    ("mercure.max_anonymous_patterns", Kind::Int),
    ("mercure.max_matcher_len", Kind::Int),
    ("centrifugo.token_key", Kind::Str),
    ("centrifugo.token_key_file", Kind::Str),
    ("centrifugo.token_algorithm", Kind::Str),
    ("centrifugo.api_key", Kind::Str),
    ("centrifugo.anonymous", Kind::Bool),
    ("centrifugo.allowed_origins", Kind::List),
    ("centrifugo.ping_interval", Kind::Str),
    ("centrifugo.pong_timeout", Kind::Str),
    ("centrifugo.handshake_timeout", Kind::Str),
    ("centrifugo.channel_limit", Kind::Int),
    ("centrifugo.max_frame", Kind::Int),
    ("centrifugo.websocket_compression", Kind::Bool),
    ("centrifugo.websocket_compression_level", Kind::Int),
    ("centrifugo.transports", Kind::List),
    ("centrifugo.channel.allow_subscribe", Kind::Bool),
    ("centrifugo.channel.allow_publish", Kind::Bool),
    ("centrifugo.channel.allow_presence", Kind::Bool),
    ("centrifugo.channel.allow_history", Kind::Bool),
    ("centrifugo.channel.allow_anonymous", Kind::Bool),
    ("centrifugo.channel.presence", Kind::Bool),
    ("centrifugo.channel.join_leave", Kind::Bool),
    ("centrifugo.channel.force_recovery", Kind::Bool),
    ("centrifugo.channel.history_size", Kind::Int),
    ("centrifugo.channel.history_ttl", Kind::Str),
    ("centrifugo.channel.subscribe_proxy", Kind::Bool),
    ("centrifugo.channel.publish_proxy", Kind::Bool),
    ("centrifugo.channel.sub_refresh_proxy", Kind::Bool),
    ("centrifugo.channel.wildcards", Kind::Bool),
    ("centrifugo.channel.webhooks", Kind::Bool),
    ("proxy.timeout", Kind::Str),
    ("proxy.http_headers", Kind::List),
    ("proxy.connect_endpoint", Kind::Str),
    ("proxy.refresh_endpoint", Kind::Str),
    ("proxy.subscribe_endpoint", Kind::Str),
    ("proxy.publish_endpoint", Kind::Str),
    ("proxy.sub_refresh_endpoint", Kind::Str),
    ("proxy.rpc_endpoint", Kind::Str),
    ("proxy.mercure_endpoint", Kind::Str),
    ("webhooks.endpoints", Kind::List),
    ("webhooks.secret", Kind::Str),
    ("webhooks.events", Kind::List),
    ("webhooks.batch_size", Kind::Int),
    ("webhooks.batch_wait", Kind::Str),
    ("webhooks.timeout", Kind::Str),
    ("webhooks.max_backoff", Kind::Str),
    ("webhooks.max_queue", Kind::Int),
    ("tls.cert_file", Kind::Str),
    ("tls.key_file", Kind::Str),
    ("limits.max_connections", Kind::Int),
    ("limits.max_connections_per_ip", Kind::Int),
    ("limits.max_connections_per_user", Kind::Int),
    ("limits.max_streams", Kind::Int),
    ("limits.header_timeout", Kind::Str),
    ("limits.idle_timeout", Kind::Str),
    ("limits.write_timeout", Kind::Str),
    ("limits.publish_rate", Kind::Int),
    ("limits.api_publish_rate", Kind::Int),
    ("limits.queue_bytes", Kind::Int),
];

/// The environment variable of a key.
pub fn env_name(key: &str) -> String {
    format!("TIDINGS_{}", key.to_ascii_uppercase().replace('.', "_"))
}

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
            api_key: None,
            anonymous: false,
            allowed_origins: Vec::new(),
            ping_interval: "25s".into(),
            pong_timeout: "8s".into(),
            handshake_timeout: "10s".into(),
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

/// Channel options, for the default namespace or a named one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Namespace {
    /// The prefix before `:` (empty for the default namespace).
    pub name: String,
    /// Clients may subscribe without a subscription token.
    pub allow_subscribe: bool,
    /// Clients may publish.
    pub allow_publish: bool,
    /// Clients may ask for presence.
    pub allow_presence: bool,
    /// Clients may ask for history.
    pub allow_history: bool,
    /// Anonymous connections may subscribe.
    pub allow_anonymous: bool,
    /// Track presence in these channels.
    pub presence: bool,
    /// Send join/leave pushes.
    pub join_leave: bool,
    /// Recover on resubscribe even if the client did not ask.
    pub force_recovery: bool,
    /// Publications kept per channel (default `history.size`).
    pub history_size: Option<usize>,
    /// Age of kept publications (default `history.ttl`).
    pub history_ttl: Option<String>,
    /// Ask `proxy.subscribe_endpoint` on subscribe (instead of tokens or
    /// `allow_subscribe`).
    pub subscribe_proxy: bool,
    /// Ask `proxy.publish_endpoint` on client publish.
    pub publish_proxy: bool,
    /// Ask `proxy.sub_refresh_endpoint` when a subscription expires.
    pub sub_refresh_proxy: bool,
    /// Channel names with URL Pattern syntax (`*`, `:name`…) subscribe to
    /// every matching channel.
    pub wildcards: bool,
    /// Send this namespace's channel events to webhooks (default: on).
    pub webhooks: Option<bool>,
}

impl Namespace {
    /// Whether its channel events go to webhooks.
    pub fn webhooks_on(&self) -> bool {
        self.webhooks.unwrap_or(true)
    }
}

/// Reads and merges the three sources; `overrides` are `key=value` pairs
/// from CLI flags.
pub fn load(
    file: Option<&std::path::Path>,
    env: impl Fn(&str) -> Option<String>,
    overrides: &[(String, String)],
) -> Result<Config, ConfigError> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            toml::from_str::<toml::Table>(&text)
                .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?
        }
        None => toml::Table::new(),
    };
    for (key, kind) in KEYS {
        if let Some(raw) = env(&env_name(key)) {
            set(&mut table, key, value_of(*kind, &raw, &env_name(key))?);
        }
    }
    for (key, raw) in overrides {
        let (name, kind) = KEYS
            .iter()
            .find(|(k, _)| k == key)
            .ok_or_else(|| ConfigError::Parse(format!("unknown configuration key `{key}`")))?;
        set(&mut table, name, value_of(*kind, raw, name)?);
    }
    Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse(e.to_string()))
}

fn value_of(kind: Kind, raw: &str, origin: &str) -> Result<toml::Value, ConfigError> {
    Ok(match kind {
        Kind::Str => toml::Value::String(raw.to_owned()),
        Kind::Int => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| {
                ConfigError::Parse(format!("{origin}: {raw:?} is not a whole number"))
            })?)
        }
        Kind::Bool => toml::Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                return Err(ConfigError::Parse(format!(
                    "{origin}: {raw:?} is not true or false"
                )))
            }
        }),
        Kind::List => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
    })
}

fn set(table: &mut toml::Table, dotted: &str, value: toml::Value) {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = match entry {
            toml::Value::Table(inner) => inner,
            _ => return,
        };
    }
    t.insert(last.to_owned(), value);
}

/// The namespace of the demo page's channels (`demo:ticker`, `demo:chat`).
pub const DEMO_NAMESPACE: &str = "demo";

/// What the demo page needs of its namespace, unless configured otherwise:
/// open to connected users, with presence, join/leave and history.
fn demo_namespace() -> Namespace {
    Namespace {
        name: DEMO_NAMESPACE.into(),
        allow_subscribe: true,
        allow_publish: true,
        allow_presence: true,
        allow_history: true,
        presence: true,
        join_leave: true,
        force_recovery: true,
        ..Namespace::default()
    }
}

/// The validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory for the disk history.
    pub data_dir: PathBuf,
    /// Logging filter.
    pub log_level: String,
    /// JSON logs.
    pub log_json: bool,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Readiness drain before shutdown starts.
    pub shutdown_drain: Duration,
    /// The demo ticker runs and the `demo` namespace exists.
    pub demo: bool,
    /// The admin dashboard's password (None: dashboard off).
    pub admin_password: Option<String>,
    /// Where history lives.
    pub store: Store,
    /// Options of a shared engine (when `store` is one).
    pub cluster: crate::engine::EngineOptions,
    /// Retention per channel (namespaces may override the default).
    pub retention: crate::history::RetentionPolicy,
    /// Sweep interval.
    pub sweep_interval: Duration,
    /// Bytes of the disk store cached in memory.
    pub history_cache: usize,
    /// Hub options.
    pub hub: crate::hub::HubOptions,
    /// Mercure settings.
    pub mercure: MercureSettings,
    /// Centrifugo settings.
    pub centrifugo: CentrifugoSettings,
    /// Proxy endpoints.
    pub proxy: crate::integration::proxy::ProxySettings,
    /// Webhook delivery.
    pub webhooks: crate::integration::webhooks::WebhookSettings,
    /// HTTPS certificate and key files (None: plain HTTP and h2c).
    pub tls: Option<crate::server::tls::TlsFiles>,
    /// Connection, rate and queue limits.
    pub limits: crate::limits::LimitSettings,
}

/// Where history lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// The embedded redb database (one node, durable).
    Disk,
    /// Memory rings (one node, lost at restart).
    Memory,
    /// Redis at this URL, shared by many nodes.
    Redis(String),
    /// NATS JetStream at this URL, shared by many nodes.
    Nats(String),
}

/// Validated `[centrifugo]`.
#[derive(Debug, Clone)]
pub struct CentrifugoSettings {
    /// Token key material.
    pub token_key: String,
    /// Token algorithm.
    pub token_algorithm: Algorithm,
    /// Whether the development key is in use.
    pub dev_key: bool,
    /// Server API key.
    pub api_key: Option<String>,
    /// Anonymous connections allowed.
    pub anonymous: bool,
    /// Extra allowed WebSocket origins.
    pub allowed_origins: Vec<String>,
    /// Ping interval.
    pub ping_interval: Duration,
    /// Pong timeout.
    pub pong_timeout: Duration,
    /// Handshake timeout.
    pub handshake_timeout: Duration,
    /// Channels per connection.
    pub channel_limit: usize,
    /// Inbound frame limit.
    pub max_frame: usize,
    /// permessage-deflate: the level of what the hub sends, if agreed.
    pub websocket_compression: Option<u32>,
    /// Enabled transports.
    pub transports: Vec<crate::centrifugo::Transport>,
    /// Default namespace options.
    pub default_namespace: Namespace,
    /// Named namespaces.
    pub namespaces: std::collections::HashMap<String, Namespace>,
}

impl CentrifugoSettings {
    /// The options of `channel`'s namespace, or None if it names an unknown
    /// one. A URL-shaped channel (a Mercure topic such as
    /// `https://example.com/x`) whose scheme is not a namespace belongs to
    /// the default namespace, so WebSocket clients can reach Mercure topics.
    pub fn namespace(&self, channel: &str) -> Option<&Namespace> {
        match channel.split_once(':') {
            Some((ns, _)) => self
                .namespaces
                .get(ns)
                .or_else(|| channel.contains("://").then_some(&self.default_namespace)),
            None => Some(&self.default_namespace),
        }
    }
}

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

fn duration(key: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(raw.trim()).map_err(|e| {
        invalid(
            key,
            format!("{raw:?} is not a duration like 30s or 5m ({e})"),
        )
    })?;
    Ok(d)
}

fn positive(key: &'static str, v: usize) -> Result<usize, ConfigError> {
    if v == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(v)
}

fn http_url(key: &'static str, raw: &str) -> Result<Url, ConfigError> {
    match Url::parse(raw) {
        Ok(u) if ["http", "https"].contains(&u.scheme()) => Ok(u),
        _ => Err(invalid(key, format!("{raw:?} is not an http(s) URL"))),
    }
}

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("tidings");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/tidings"),
        None => PathBuf::from("tidings-data"),
    }
}

impl Config {
    /// Checks every value and resolves defaults.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:8000", self.listen),
            )
        })?;
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return Err(invalid("log.format", "must be text or json"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        let store = match self.history.engine.as_str() {
            "disk" => Store::Disk,
            "memory" => Store::Memory,
            "redis" => Store::Redis(self.cluster.redis_url.clone()),
            "nats" => Store::Nats(self.cluster.nats_url.clone()),
            other => {
                return Err(invalid(
                    "history.engine",
                    format!("{other:?} is not disk, memory, redis or nats"),
                ))
            }
        };
        let prefix = &self.cluster.prefix;
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                "cluster.prefix",
                "must be letters, digits, '_' or '-' (it names keys, subjects and streams)",
            ));
        }
        let m = &self.mercure;
        let hub_url = match &m.hub_url {
            Some(u) => {
                Url::parse(u).map_err(|e| invalid("mercure.hub_url", format!("{u:?}: {e}")))?
            }
            None => Url::parse(&format!(
                "{}://{listen}/.well-known/mercure",
                if self.tls.cert_file.is_some() {
                    "https"
                } else {
                    "http"
                }
            ))
            .map_err(|e| invalid("listen", e.to_string()))?,
        };
        if hub_url.cannot_be_a_base() || !["http", "https"].contains(&hub_url.scheme()) {
            return Err(invalid("mercure.hub_url", "must be an http(s) URL"));
        }
        let algorithm: Algorithm = m.algorithm.parse().map_err(|_| {
            invalid(
                "mercure.algorithm",
                format!(
                    "{:?} is not a JWS algorithm such as HS256 or RS256",
                    m.algorithm
                ),
            )
        })?;
        let read_key = |key: &'static str,
                        file: &Option<PathBuf>,
                        inline: &Option<String>|
         -> Result<Option<String>, ConfigError> {
            if let Some(path) = file {
                return std::fs::read_to_string(path)
                    .map(Some)
                    .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())));
            }
            Ok(inline.clone().or_else(|| m.key.clone()))
        };
        let publisher = read_key(
            "mercure.publisher_key_file",
            &m.publisher_key_file,
            &m.publisher_key,
        )?;
        let subscriber = read_key(
            "mercure.subscriber_key_file",
            &m.subscriber_key_file,
            &m.subscriber_key,
        )?;
        let dev_key = publisher.is_none() || subscriber.is_none();
        if dev_key && !listen.ip().is_loopback() {
            return Err(invalid(
                "mercure.key",
                "no key is configured; the development key is only allowed on a loopback address",
            ));
        }
        if dev_key
            && !matches!(
                algorithm,
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
            )
        {
            return Err(invalid(
                "mercure.key",
                "an asymmetric algorithm needs a configured key",
            ));
        }
        let publisher_key = publisher.unwrap_or_else(|| DEV_KEY.into());
        let subscriber_key = subscriber.unwrap_or_else(|| DEV_KEY.into());
        for (key, material) in [
            ("mercure.publisher_key", &publisher_key),
            ("mercure.subscriber_key", &subscriber_key),
        ] {
            crate::auth::jwt::TrustedKey::new(material, algorithm).map_err(|e| invalid(key, e))?;
        }
        for origin in &m.cors_origins {
            let ok = origin == "*"
                || Url::parse(origin).is_ok_and(|u| u.origin().ascii_serialization() == *origin);
            if !ok {
                return Err(invalid(
                    "mercure.cors_origins",
                    format!("{origin:?} is not an origin like https://app.example.com"),
                ));
            }
        }
        if m.cors_origins.iter().any(|o| o == "*") && m.cors_origins.len() > 1 {
            return Err(invalid(
                "mercure.cors_origins",
                "\"*\" cannot be combined with other origins",
            ));
        }
        let issuer = m.issuer.clone();
        if issuer.is_empty() {
            return Err(invalid("mercure.issuer", "must not be empty"));
        }
        let mut centrifugo = self.validate_centrifugo(listen)?;
        // Zero config only: a cluster would run one ticker per node.
        let demo = self.demo.unwrap_or(
            dev_key && centrifugo.dev_key && matches!(store, Store::Disk | Store::Memory),
        );
        if demo {
            centrifugo
                .namespaces
                .entry(DEMO_NAMESPACE.into())
                .or_insert_with(demo_namespace);
        }
        if self.admin.password.as_deref() == Some("") {
            return Err(invalid(
                "admin.password",
                "must not be empty (leave it unset to turn the dashboard off)",
            ));
        }
        let proxy = self.validate_proxy(&centrifugo)?;
        let webhooks = self.validate_webhooks()?;
        let limits = self.validate_limits(&centrifugo)?;
        let queue_bytes = limits.queue_bytes;
        let tls = match (&self.tls.cert_file, &self.tls.key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let files = crate::server::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                };
                files
                    .load()
                    .map_err(|e| invalid("tls.cert_file", e.to_string()))?;
                Some(files)
            }
            (Some(_), None) => return Err(invalid("tls.key_file", "is needed with tls.cert_file")),
            (None, Some(_)) => return Err(invalid("tls.cert_file", "is needed with tls.key_file")),
        };
        Ok(Settings {
            tls,
            limits,
            centrifugo,
            proxy,
            webhooks,
            demo,
            admin_password: self.admin.password.clone(),
            listen,
            data_dir: self.data_dir.clone().unwrap_or_else(default_data_dir),
            log_level: self.log.level.clone(),
            log_json: self.log.format == "json",
            shutdown_grace: duration("shutdown_grace", &self.shutdown_grace)?,
            shutdown_drain: duration("shutdown_drain", &self.shutdown_drain)?,
            store,
            cluster: crate::engine::EngineOptions {
                prefix: prefix.clone(),
                log_size: positive("cluster.log_size", self.cluster.log_size)?,
                retention: self.retention_policy(hub_url.path())?,
                presence_ttl: duration("cluster.presence_ttl", &self.cluster.presence_ttl)?
                    .max(Duration::from_secs(1)),
            },
            retention: self.retention_policy(hub_url.path())?,
            sweep_interval: duration("history.sweep_interval", &self.history.sweep_interval)?
                .max(Duration::from_millis(100)),
            history_cache: positive("history.cache_size", self.history.cache_size)?,
            hub: crate::hub::HubOptions {
                queue_capacity: positive("hub.queue_size", self.hub.queue_size)?,
                queue_bytes,
                max_batch: positive("hub.max_batch", self.hub.max_batch)?,
                write_interval: duration("hub.write_interval", &self.hub.write_interval)?,
                sweep_interval: duration("history.sweep_interval", &self.history.sweep_interval)?
                    .max(Duration::from_millis(100)),
            },
            mercure: MercureSettings {
                audience: m.audience.clone().unwrap_or_else(|| hub_url.to_string()),
                hub_url,
                issuer,
                algorithm,
                publisher_key,
                subscriber_key,
                dev_key,
                anonymous: m.anonymous,
                compat: m.compat,
                subscriptions: m.subscriptions,
                heartbeat: duration("mercure.heartbeat", &m.heartbeat)?
                    .max(Duration::from_millis(100)),
                sse_retry: m.sse_retry,
                max_lifetime: m
                    .max_lifetime
                    .as_deref()
                    .map(|d| duration("mercure.max_lifetime", d))
                    .transpose()?,
                cookie_name: m.cookie_name.clone(),
                cors_origins: m.cors_origins.clone(),
                max_body: positive("mercure.max_body", m.max_body)?,
                limits: crate::protocol::mercure::request::Limits {
                    max_topics: positive("mercure.max_topics", m.max_topics)?,
                    max_field_len: positive("mercure.max_field_len", m.max_field_len)?,
                    max_matchers: positive("mercure.max_matchers", m.max_matchers)?,
                    max_matcher_len: positive("mercure.max_matcher_len", m.max_matcher_len)?,
                    max_patterns: positive("mercure.max_matchers", m.max_matchers)?,
                },
                max_anonymous_patterns: m.max_anonymous_patterns,
            },
        })
    }
}

impl Config {
    fn validate_proxy(
        &self,
        centrifugo: &CentrifugoSettings,
    ) -> Result<crate::integration::proxy::ProxySettings, ConfigError> {
        let p = &self.proxy;
        let endpoint = |key: &'static str, raw: &Option<String>| -> Result<_, ConfigError> {
            raw.as_deref().map(|u| http_url(key, u)).transpose()
        };
        let http_headers = p
            .http_headers
            .iter()
            .map(|h| {
                axum::http::HeaderName::try_from(h.as_str()).map_err(|_| {
                    invalid("proxy.http_headers", format!("{h:?} is not a header name"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let settings = crate::integration::proxy::ProxySettings {
            timeout: duration("proxy.timeout", &p.timeout)?,
            http_headers,
            connect: endpoint("proxy.connect_endpoint", &p.connect_endpoint)?,
            refresh: endpoint("proxy.refresh_endpoint", &p.refresh_endpoint)?,
            subscribe: endpoint("proxy.subscribe_endpoint", &p.subscribe_endpoint)?,
            publish: endpoint("proxy.publish_endpoint", &p.publish_endpoint)?,
            sub_refresh: endpoint("proxy.sub_refresh_endpoint", &p.sub_refresh_endpoint)?,
            rpc: endpoint("proxy.rpc_endpoint", &p.rpc_endpoint)?,
            mercure: endpoint("proxy.mercure_endpoint", &p.mercure_endpoint)?,
        };
        // A namespace that asks a proxy needs its endpoint.
        let namespaces =
            std::iter::once(&centrifugo.default_namespace).chain(centrifugo.namespaces.values());
        for ns in namespaces {
            for (on, set, key) in [
                (
                    ns.subscribe_proxy,
                    settings.subscribe.is_some(),
                    "proxy.subscribe_endpoint",
                ),
                (
                    ns.publish_proxy,
                    settings.publish.is_some(),
                    "proxy.publish_endpoint",
                ),
                (
                    ns.sub_refresh_proxy,
                    settings.sub_refresh.is_some(),
                    "proxy.sub_refresh_endpoint",
                ),
            ] {
                if on && !set {
                    return Err(invalid(
                        key,
                        format!(
                            "namespace {:?} uses this proxy but no endpoint is configured",
                            ns.name
                        ),
                    ));
                }
            }
        }
        Ok(settings)
    }

    fn validate_limits(
        &self,
        centrifugo: &CentrifugoSettings,
    ) -> Result<crate::limits::LimitSettings, ConfigError> {
        let l = &self.limits;
        let idle_timeout = duration("limits.idle_timeout", &l.idle_timeout)?;
        let heartbeat = duration("mercure.heartbeat", &self.mercure.heartbeat)?;
        if idle_timeout <= heartbeat || idle_timeout <= centrifugo.ping_interval {
            return Err(invalid(
                "limits.idle_timeout",
                "must be longer than mercure.heartbeat and centrifugo.ping_interval, which keep live streams busy",
            ));
        }
        let header_timeout = duration("limits.header_timeout", &l.header_timeout)?;
        if header_timeout.is_zero() {
            return Err(invalid("limits.header_timeout", "must be more than 0"));
        }
        let write_timeout = duration("limits.write_timeout", &l.write_timeout)?;
        if write_timeout.is_zero() {
            return Err(invalid("limits.write_timeout", "must be more than 0"));
        }
        let some = |n: usize| (n > 0).then_some(n);
        Ok(crate::limits::LimitSettings {
            max_connections: some(l.max_connections),
            max_connections_per_ip: some(l.max_connections_per_ip),
            max_connections_per_user: some(l.max_connections_per_user),
            max_streams: positive("limits.max_streams", l.max_streams)?,
            header_timeout,
            idle_timeout,
            write_timeout,
            publish_rate: some(l.publish_rate),
            api_publish_rate: some(l.api_publish_rate),
            queue_bytes: positive("limits.queue_bytes", l.queue_bytes)?,
        })
    }

    fn validate_webhooks(
        &self,
    ) -> Result<crate::integration::webhooks::WebhookSettings, ConfigError> {
        use crate::integration::webhooks::EventKind;
        let w = &self.webhooks;
        let endpoints = w
            .endpoints
            .iter()
            .map(|u| http_url("webhooks.endpoints", u))
            .collect::<Result<Vec<_>, _>>()?;
        let events = w
            .events
            .iter()
            .map(|name| {
                EventKind::from_name(name).ok_or_else(|| {
                    invalid(
                        "webhooks.events",
                        format!("{name:?} is not an event (connect, disconnect, subscribe, unsubscribe, occupied, vacated)"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        if w.secret.as_deref() == Some("") {
            return Err(invalid("webhooks.secret", "must not be empty"));
        }
        Ok(crate::integration::webhooks::WebhookSettings {
            endpoints,
            secret: w.secret.clone(),
            events,
            batch_size: positive("webhooks.batch_size", w.batch_size)?,
            batch_wait: duration("webhooks.batch_wait", &w.batch_wait)?,
            timeout: duration("webhooks.timeout", &w.timeout)?,
            max_backoff: duration("webhooks.max_backoff", &w.max_backoff)?
                .max(Duration::from_millis(10)),
            max_queue: positive("webhooks.max_queue", w.max_queue)?,
        })
    }

    fn retention_policy(
        &self,
        hub_path: &str,
    ) -> Result<crate::history::RetentionPolicy, ConfigError> {
        let default = crate::history::Retention {
            size: positive("history.size", self.history.size)?,
            ttl: duration("history.ttl", &self.history.ttl)?,
            meta_ttl: duration("history.meta_ttl", &self.history.meta_ttl)?,
        };
        let with = |ns: &Namespace, base: crate::history::Retention| -> Result<_, ConfigError> {
            Ok(crate::history::Retention {
                size: match ns.history_size {
                    Some(n) => positive("centrifugo.namespaces.history_size", n)?,
                    None => base.size,
                },
                ttl: match &ns.history_ttl {
                    Some(t) => duration("centrifugo.namespaces.history_ttl", t)?,
                    None => base.ttl,
                },
                ..base
            })
        };
        let mut policy =
            crate::history::RetentionPolicy::uniform(with(&self.centrifugo.channel, default)?);
        for ns in &self.centrifugo.namespaces {
            policy
                .namespaces
                .insert(ns.name.clone(), with(ns, default)?);
        }
        policy.ephemeral_prefix = Some(format!("{hub_path}/subscriptions/"));
        Ok(policy)
    }

    fn validate_centrifugo(&self, listen: SocketAddr) -> Result<CentrifugoSettings, ConfigError> {
        let c = &self.centrifugo;
        let token_algorithm: Algorithm = c.token_algorithm.parse().map_err(|_| {
            invalid(
                "centrifugo.token_algorithm",
                format!("{:?} is not a JWS algorithm", c.token_algorithm),
            )
        })?;
        let key = match &c.token_key_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "centrifugo.token_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?),
            None => c.token_key.clone(),
        };
        let dev_key = key.is_none();
        if dev_key && !listen.ip().is_loopback() {
            return Err(invalid(
                "centrifugo.token_key",
                "no key is configured; the development key is only allowed on a loopback address",
            ));
        }
        let token_key = key.unwrap_or_else(|| DEV_KEY.into());
        crate::auth::jwt::TrustedKey::new(&token_key, token_algorithm)
            .map_err(|e| invalid("centrifugo.token_key", e))?;
        if c.api_key.as_deref() == Some("") {
            return Err(invalid(
                "centrifugo.api_key",
                "must not be empty (leave it unset to close the API)",
            ));
        }
        for origin in &c.allowed_origins {
            if Url::parse(origin)
                .map(|u| u.origin().ascii_serialization())
                .ok()
                .as_deref()
                != Some(origin.as_str())
            {
                return Err(invalid(
                    "centrifugo.allowed_origins",
                    format!("{origin:?} is not an origin like https://app.example.com"),
                ));
            }
        }
        let transports = c
            .transports
            .iter()
            .map(|name| {
                crate::centrifugo::Transport::from_name(name).ok_or_else(|| {
                    invalid(
                        "centrifugo.transports",
                        format!("{name:?} is not a transport (websocket, http_stream, sse, uni_websocket, uni_http_stream, uni_sse)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut namespaces = std::collections::HashMap::new();
        for ns in &c.namespaces {
            let ok = !ns.name.is_empty()
                && ns
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
            if !ok {
                return Err(invalid(
                    "centrifugo.namespaces",
                    format!(
                        "{:?} is not a namespace name (letters, digits, - _ .)",
                        ns.name
                    ),
                ));
            }
            if namespaces.insert(ns.name.clone(), ns.clone()).is_some() {
                return Err(invalid(
                    "centrifugo.namespaces",
                    format!("namespace {:?} is defined twice", ns.name),
                ));
            }
        }
        Ok(CentrifugoSettings {
            token_key,
            token_algorithm,
            dev_key,
            api_key: c.api_key.clone(),
            anonymous: c.anonymous,
            allowed_origins: c.allowed_origins.clone(),
            ping_interval: duration("centrifugo.ping_interval", &c.ping_interval)?
                .max(Duration::from_millis(100)),
            pong_timeout: duration("centrifugo.pong_timeout", &c.pong_timeout)?,
            handshake_timeout: duration("centrifugo.handshake_timeout", &c.handshake_timeout)?,
            channel_limit: positive("centrifugo.channel_limit", c.channel_limit)?,
            max_frame: positive("centrifugo.max_frame", c.max_frame)?,
            websocket_compression: match c.websocket_compression_level {
                _ if !c.websocket_compression => None,
                level @ 1..=9 => Some(level),
                _ => {
                    return Err(invalid(
                        "centrifugo.websocket_compression_level",
                        "must be between 1 and 9",
                    ))
                }
            },
            transports,
            default_namespace: c.channel.clone(),
            namespaces,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_validate() {
        let s = load(None, no_env, &[]).unwrap().validate().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8000");
        assert!(s.store == Store::Disk && s.mercure.dev_key && s.mercure.compat);
        assert_eq!(
            s.mercure.hub_url.as_str(),
            "http://127.0.0.1:8000/.well-known/mercure"
        );
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\n[history]\nsize = 5\nengine = \"memory\"\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "TIDINGS_LISTEN" => Some("127.0.0.1:2".to_string()),
            "TIDINGS_HISTORY_SIZE" => Some("7".to_string()),
            _ => None,
        };
        let c = load(Some(&file), env, &[("listen".into(), "127.0.0.1:3".into())]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:3");
        assert_eq!(c.history.size, 7);
        assert_eq!(c.history.engine, "memory");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = |pairs: &[(&str, &str)]| {
            let o: Vec<(String, String)> = pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            match load(None, no_env, &o) {
                Err(e) => e.to_string(),
                Ok(c) => c.validate().unwrap_err().to_string(),
            }
        };
        assert!(err(&[("listen", "nowhere")]).contains("`listen`"));
        assert!(err(&[("history.engine", "tape")]).contains("history.engine"));
        assert!(err(&[("cluster.prefix", "a b")]).contains("cluster.prefix"));
        assert!(err(&[("cluster.presence_ttl", "soon")]).contains("cluster.presence_ttl"));
        assert!(err(&[("history.ttl", "soon")]).contains("history.ttl"));
        assert!(err(&[("history.size", "0")]).contains("history.size"));
        assert!(err(&[("history.size", "many")]).contains("whole number"));
        assert!(err(&[("mercure.algorithm", "XX1")]).contains("mercure.algorithm"));
        assert!(err(&[("mercure.cors_origins", "not an origin")]).contains("cors_origins"));
        assert!(err(&[("listen", "0.0.0.0:8000")]).contains("mercure.key"));
        assert!(err(&[("nope", "1")]).contains("unknown configuration key"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "[history]\nsise = 5\n").unwrap();
        assert!(load(Some(&file), no_env, &[])
            .unwrap_err()
            .to_string()
            .contains("sise"));
    }

    #[test]
    fn every_key_is_documented_and_settable() {
        let doc = include_str!("../docs/configuration.md");
        for (key, kind) in KEYS {
            assert!(
                doc.contains(&format!("`{key}`")),
                "{key} missing from docs/configuration.md"
            );
            assert!(
                doc.contains(&env_name(key)),
                "{} missing from docs",
                env_name(key)
            );
            let sample = match kind {
                Kind::Str => "x",
                Kind::Int => "1",
                Kind::Bool => "true",
                Kind::List => "a,b",
            };
            load(None, no_env, &[(key.to_string(), sample.to_string())])
                .unwrap_or_else(|e| panic!("{key}: {e}"));
        }
    }
}
