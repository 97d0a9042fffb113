//! Every configuration key and how it is written in the environment and on
//! the command line, derived from the schema ([`super::schema`]) so that
//! the two cannot drift: adding a field to a schema struct adds its key.

use std::sync::OnceLock;

use serde_reflection::{ContainerFormat, Format, Registry, Samples, Tracer, TracerConfig};

use super::schema::Config;
use super::Kind;

/// Every key, dotted (`history.size`), with its kind, in schema order.
/// Tables of tables (`centrifugo.namespaces`) are not keys: they are
/// written in the file only.
pub fn keys() -> &'static [(String, Kind)] {
    static KEYS: OnceLock<Vec<(String, Kind)>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut tracer = Tracer::new(TracerConfig::default());
        let samples = Samples::new();
        // The schema is plain serde structs: tracing them cannot fail.
        if tracer.trace_type::<Config>(&samples).is_err() {
            return Vec::new();
        }
        let Ok(registry) = tracer.registry() else {
            return Vec::new();
        };
        let mut keys = Vec::new();
        walk(&registry, "Config", "", &mut keys);
        // The default namespace has no name: its options are the schema's
        // `Namespace` all the same.
        keys.retain(|(k, _)| k != "centrifugo.channel.name");
        keys
    })
}

fn walk(registry: &Registry, container: &str, prefix: &str, keys: &mut Vec<(String, Kind)>) {
    let Some(ContainerFormat::Struct(fields)) = registry.get(container) else {
        return;
    };
    for field in fields {
        let key = format!("{prefix}{}", field.name);
        match kind(&field.value) {
            Some(Field::Value(kind)) => keys.push((key, kind)),
            Some(Field::Table(name)) => walk(registry, &name, &format!("{key}."), keys),
            None => {}
        }
    }
}

enum Field {
    Value(Kind),
    Table(String),
}

fn kind(format: &Format) -> Option<Field> {
    Some(match format {
        Format::Option(inner) => return kind(inner),
        Format::Str => Field::Value(Kind::Str),
        Format::Bool => Field::Value(Kind::Bool),
        Format::U8 | Format::U16 | Format::U32 | Format::U64 | Format::I32 | Format::I64 => {
            Field::Value(Kind::Int)
        }
        Format::Seq(inner) if matches!(**inner, Format::Str) => Field::Value(Kind::List),
        Format::TypeName(name) => Field::Table(name.clone()),
        _ => return None,
    })
}

/// Earlier names of namespace options (and Centrifugo's `_enabled` names
/// of the proxy switches), accepted everywhere the current name is: in the
/// file, in the environment and with `--set`. (Not serde aliases: those
/// would confuse the schema tracing above.)
const NAMESPACE_ALIASES: &[(&str, &str)] = &[
    ("allow_subscribe", "allow_subscribe_for_client"),
    ("allow_anonymous", "allow_subscribe_for_anonymous"),
    ("allow_publish", "allow_publish_for_client"),
    ("allow_presence", "allow_presence_for_client"),
    ("allow_history", "allow_history_for_client"),
    ("subscribe_proxy_enabled", "subscribe_proxy"),
    ("publish_proxy_enabled", "publish_proxy"),
    ("sub_refresh_proxy_enabled", "sub_refresh_proxy"),
];

const DEFAULT_NAMESPACE: &str = "centrifugo.channel.";

/// The current name of `key` if it is an alias.
pub fn canonical(key: &str) -> Option<String> {
    let leaf = key.strip_prefix(DEFAULT_NAMESPACE)?;
    NAMESPACE_ALIASES
        .iter()
        .find(|(old, _)| *old == leaf)
        .map(|(_, new)| format!("{DEFAULT_NAMESPACE}{new}"))
}

/// The aliases of `key` (empty for most keys).
pub fn aliases(key: &str) -> impl Iterator<Item = String> + '_ {
    let leaf = key.strip_prefix(DEFAULT_NAMESPACE).unwrap_or_default();
    NAMESPACE_ALIASES
        .iter()
        .filter(move |(_, new)| !leaf.is_empty() && *new == leaf)
        .map(|(old, _)| format!("{DEFAULT_NAMESPACE}{old}"))
}

/// Renames aliases to current names in the file's namespace tables
/// (`[centrifugo.channel]`, `[[centrifugo.namespaces]]`); both names in
/// one table is an error.
pub fn rename_aliases(config: &mut toml::Table) -> Result<(), String> {
    let Some(toml::Value::Table(centrifugo)) = config.get_mut("centrifugo") else {
        return Ok(());
    };
    let mut tables: Vec<&mut toml::Table> = Vec::new();
    for (key, value) in centrifugo.iter_mut() {
        match (key.as_str(), value) {
            ("channel", toml::Value::Table(t)) => tables.push(t),
            ("namespaces", toml::Value::Array(list)) => {
                tables.extend(list.iter_mut().filter_map(toml::Value::as_table_mut))
            }
            _ => {}
        }
    }
    for table in tables {
        for (old, new) in NAMESPACE_ALIASES {
            if let Some(value) = table.remove(*old) {
                if table.contains_key(*new) {
                    return Err(format!(
                        "`{old}` and `{new}` are the same option: keep `{new}`"
                    ));
                }
                table.insert((*new).to_owned(), value);
            }
        }
    }
    Ok(())
}
