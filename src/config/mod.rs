//! Configuration: a TOML file, `TIDINGS_*` environment variables and CLI
//! flags, merged in that order (a flag beats the environment, which beats
//! the file), then validated once at start so a bad value stops the hub with
//! a message naming the key.
//!
//! The layers, in the order a value goes through them:
//!
//! - [`schema`]: what can be written, as serde structs, with the default of
//!   every key (the only place defaults live);
//! - [`keys`]: the list of keys and their kinds, derived from the schema
//!   (the environment variable of a key is `TIDINGS_` followed by the key
//!   upper-cased with `.` replaced by `_`: `history.size` →
//!   `TIDINGS_HISTORY_SIZE`); docs/configuration.md documents each of them,
//!   and a test keeps the two equal;
//! - this module: reading and merging the three sources;
//! - [`validate`]: checking values and building each subsystem's own
//!   settings type (`hub::HubOptions`, `centrifugo::settings`,
//!   `mercure::settings`, `limits::LimitSettings`…), which live next to
//!   the code that uses them and know nothing of this module.

mod keys;
pub mod schema;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use keys::keys;
pub use schema::Config;

use crate::centrifugo::settings::{CentrifugoSettings, Namespace};
use crate::mercure::settings::MercureSettings;

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

/// The environment variable of a key.
pub fn env_name(key: &str) -> String {
    format!("TIDINGS_{}", key.to_ascii_uppercase().replace('.', "_"))
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
    keys::rename_aliases(&mut table).map_err(ConfigError::Parse)?;
    for (key, kind) in keys() {
        let names = std::iter::once(key.clone()).chain(keys::aliases(key));
        if let Some((var, raw)) = names
            .map(|k| env_name(&k))
            .find_map(|var| Some((var.clone(), env(&var)?)))
        {
            set(&mut table, key, value_of(*kind, &raw, &var)?);
        }
    }
    for (key, raw) in overrides {
        let key = keys::canonical(key).unwrap_or_else(|| key.clone());
        let (name, kind) = keys()
            .iter()
            .find(|(k, _)| *k == key)
            .ok_or_else(|| ConfigError::Parse(format!("unknown configuration key `{key}`")))?;
        set(&mut table, name, value_of(*kind, raw, name)?);
    }
    Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse(e.to_string()))
}

/// The settings a command runs with: `file`, the process environment,
/// then `sets` (`KEY=VALUE`, as given to `--set`) and `flags` (keys set by
/// a command's own options, when given), validated.
pub fn from_process(
    file: Option<&std::path::Path>,
    sets: &[String],
    flags: &[(&str, Option<String>)],
) -> Result<Settings, ConfigError> {
    let mut overrides = Vec::new();
    for kv in sets {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| ConfigError::Parse(format!("--set {kv:?}: expected KEY=VALUE")))?;
        overrides.push((k.to_owned(), v.to_owned()));
    }
    for (k, v) in flags {
        if let Some(v) = v {
            overrides.push((k.to_string(), v.clone()));
        }
    }
    load(file, |k| std::env::var(k).ok(), &overrides)?.validate()
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
        allow_subscribe_for_client: true,
        allow_publish_for_client: true,
        allow_presence_for_client: true,
        allow_history_for_client: true,
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
    fn earlier_namespace_option_names_still_work() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        let text = "[centrifugo.channel]\nallow_subscribe = true\n\
                    [[centrifugo.namespaces]]\nname = \"chat\"\nallow_anonymous = true\n\
                    allow_history = true\npublish_proxy_enabled = true\n";
        std::fs::write(&file, text).unwrap();
        let env = |k: &str| (k == "TIDINGS_CENTRIFUGO_CHANNEL_ALLOW_PUBLISH").then(|| "1".into());
        let sets = [("centrifugo.channel.allow_presence".into(), "true".into())];
        let c = load(Some(&file), env, &sets).unwrap();
        let ch = &c.centrifugo.channel;
        assert!(ch.allow_subscribe_for_client && ch.allow_publish_for_client);
        assert!(ch.allow_presence_for_client && !ch.allow_subscribe_for_anonymous);
        let chat = &c.centrifugo.namespaces[0];
        assert!(chat.allow_subscribe_for_anonymous && chat.allow_history_for_client);
        assert!(chat.publish_proxy && !chat.allow_subscribe_for_client);
        std::fs::write(
            &file,
            "[centrifugo.channel]\nallow_publish = true\nallow_publish_for_client = false\n",
        )
        .unwrap();
        let err = load(Some(&file), no_env, &[]).unwrap_err().to_string();
        assert!(err.contains("same option"), "{err}");
    }

    #[test]
    fn every_key_is_documented_and_settable() {
        let doc = include_str!("../../docs/configuration.md");
        for (key, kind) in keys() {
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
        // And every key the documentation names exists.
        let file_only = ["centrifugo.namespaces"];
        for line in doc.lines().filter(|l| l.starts_with("| `")) {
            let key = line[3..].split('`').next().unwrap_or_default();
            assert!(
                keys().iter().any(|(k, _)| k == key) || file_only.contains(&key),
                "docs/configuration.md documents `{key}`, which is not a key"
            );
        }
        assert!(
            keys().len() > 100,
            "the schema walk found only {} keys",
            keys().len()
        );
    }
}
