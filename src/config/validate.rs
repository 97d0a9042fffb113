//! Checking a configuration and building each subsystem's settings from it:
//! a bad value stops the hub with a message naming its key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use url::Url;

use super::{
    demo_namespace, invalid, Config, ConfigError, Settings, Store, DEMO_NAMESPACE, DEV_KEY,
};
use crate::centrifugo::settings::{CentrifugoSettings, Namespace};
use crate::mercure::settings::MercureSettings;

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
                // 0 turns history off for clients; the hub still keeps the
                // latest publication, which holds the channel's position.
                size: ns.history_size.map_or(base.size, |n| n.max(1)),
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
            token_audience: c.token_audience.clone().filter(|a| !a.is_empty()),
            token_issuer: c.token_issuer.clone().filter(|i| !i.is_empty()),
            api_key: c.api_key.clone(),
            anonymous: c.anonymous,
            allowed_origins: c.allowed_origins.clone(),
            ping_interval: duration("centrifugo.ping_interval", &c.ping_interval)?
                .max(Duration::from_millis(100)),
            pong_timeout: duration("centrifugo.pong_timeout", &c.pong_timeout)?,
            handshake_timeout: duration("centrifugo.handshake_timeout", &c.handshake_timeout)?,
            expired_close_delay: duration(
                "centrifugo.expired_close_delay",
                &c.expired_close_delay,
            )?,
            expired_sub_close_delay: duration(
                "centrifugo.expired_sub_close_delay",
                &c.expired_sub_close_delay,
            )?,
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
            channel_regexes: std::iter::once(&c.channel)
                .chain(&c.namespaces)
                .filter_map(|ns| Some((ns.name.clone(), ns.channel_regex.as_deref()?)))
                .map(|(name, re)| {
                    regex::Regex::new(re)
                        .map(|r| (name, r))
                        .map_err(|e| invalid("centrifugo.namespaces.channel_regex", e.to_string()))
                })
                .collect::<Result<_, _>>()?,
            default_namespace: c.channel.clone(),
            namespaces,
        })
    }
}
