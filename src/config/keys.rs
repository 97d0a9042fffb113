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
