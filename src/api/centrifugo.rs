//! The Centrifugo server API: `POST /api/<method>` with a JSON body,
//! authenticated by `X-API-Key: <key>`, `Authorization: apikey <key>` or
//! `?api_key=<key>`; and Centrifugo's legacy form, `POST /api` with
//! newline-separated `{"method", "params"}` commands.
//!
//! Answers are always HTTP 200 with `{"result": …}` or
//! `{"error": {"code", "message"}}`, as Centrifugo does, except a missing or
//! wrong key (401), an unknown method path (404) and a body that is not a
//! JSON object (400) — or, with `X-Centrifugo-Error-Mode: transport`, an
//! error is the HTTP status Centrifugo maps it to, with the error as body.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::centrifugo::session::{read_history, VERSION};
use crate::centrifugo::{Control, Node, ServerSubscribe};
use crate::history::Draft;
use crate::protocol::centrifuge::{disconnect, errors, json_payload};

type ApiResult = Result<Value, errors::Code>;

fn authorized(node: &Node, headers: &HeaderMap, query: Option<&str>) -> bool {
    let Some(expected) = node.settings.api_key.as_deref() else {
        return false;
    };
    let from_query = || {
        url::form_urlencoded::parse(query?.as_bytes())
            .find(|(k, _)| k == "api_key")
            .map(|(_, v)| v.into_owned())
    };
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            let (scheme, key) = super::authorization(headers)??;
            scheme
                .eq_ignore_ascii_case("apikey")
                .then(|| key.to_owned())
        })
        .or_else(from_query);
    given.is_some_and(|g| secret_eq(&g, expected))
}

/// Compares secrets in constant time (for equal lengths).
pub(crate) fn secret_eq(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The answer to a request without a valid key, or over the publish rate
/// (`publishes`: the request publishes).
fn refusal(node: &Node, headers: &HeaderMap, uri: &Uri, publishes: bool) -> Option<Response> {
    if !authorized(node, headers, uri.query()) {
        let msg = if node.settings.api_key.is_none() {
            "the server API is closed: no centrifugo.api_key is configured\n"
        } else {
            "invalid API key\n"
        };
        crate::metrics::auth_failure("api", "invalid api key");
        return Some((StatusCode::UNAUTHORIZED, msg).into_response());
    }
    if publishes && !node.api_rate.allow("centrifugo-api-key") {
        return Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "1")],
                "publish rate limit exceeded for this API key (limits.api_publish_rate)\n",
            )
                .into_response(),
        );
    }
    None
}

fn publishes(method: &str) -> bool {
    matches!(method, "publish" | "broadcast" | "batch")
}

/// `POST /api/{method}`.
pub async fn handle(
    State(node): State<Arc<Node>>,
    Path(method): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = refusal(&node, &headers, &uri, publishes(&method)) {
        return refused;
    }
    let transport_errors = headers
        .get("x-centrifugo-error-mode")
        .is_some_and(|v| v == "transport");
    if transport_errors && METHODS.contains(&method.as_str()) {
        let Some(params) = object(&body) else {
            return not_an_object();
        };
        return match call(&node, &method, params).await {
            Ok(result) => axum::Json(json!({ "result": result })).into_response(),
            Err((code, message)) => (
                http_status(code),
                axum::Json(json!({ "code": code, "message": message })),
            )
                .into_response(),
        };
    }
    respond(&node, &method, &body).await
}

/// The HTTP status of an error in transport error mode (Centrifugo's
/// mapping: what it does not name is a server error).
fn http_status(code: u32) -> StatusCode {
    match code {
        c if c == errors::UNKNOWN_CHANNEL.0 || c == errors::METHOD_NOT_FOUND.0 => {
            StatusCode::NOT_FOUND
        }
        c if c == errors::BAD_REQUEST.0 || c == errors::NOT_AVAILABLE.0 => StatusCode::BAD_REQUEST,
        c if c == errors::UNRECOVERABLE_POSITION.0 => StatusCode::RANGE_NOT_SATISFIABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// One command of the legacy form.
#[derive(Deserialize)]
struct LegacyCommand {
    #[serde(default)]
    id: u32,
    method: String,
    #[serde(default)]
    params: Value,
}

/// `POST /api`: Centrifugo's legacy form, one `{"id", "method",
/// "params"}` command per line, answered by one `{"id", "result" |
/// "error"}` line each, in order.
pub async fn handle_legacy(
    State(node): State<Arc<Node>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let commands: Result<Vec<LegacyCommand>, _> = serde_json::Deserializer::from_slice(&body)
        .into_iter()
        .collect();
    let commands = match commands {
        Ok(c) if !c.is_empty() => c,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "the body must be one or more {\"method\", \"params\"} commands\n",
            )
                .into_response()
        }
    };
    let publishing = commands.iter().any(|c| publishes(&c.method));
    if let Some(refused) = refusal(&node, &headers, &uri, publishing) {
        return refused;
    }
    let mut lines = Vec::new();
    for c in commands {
        let method = c.method.to_ascii_lowercase();
        let params = if c.params.is_null() {
            json!({})
        } else {
            c.params
        };
        let result = if !METHODS.contains(&method.as_str()) {
            Err(errors::METHOD_NOT_FOUND)
        } else if !params.is_object() {
            Err(errors::BAD_REQUEST)
        } else {
            call(&node, &method, params).await
        };
        let mut reply = envelope(result);
        if c.id != 0 {
            reply["id"] = json!(c.id);
        }
        lines.push(reply.to_string());
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        lines.join("\n"),
    )
        .into_response()
}

/// The body as a JSON object (empty: `{}`), if it is one.
fn object(body: &Bytes) -> Option<Value> {
    if body.is_empty() {
        return Some(json!({}));
    }
    serde_json::from_slice(body).ok().filter(Value::is_object)
}

fn not_an_object() -> Response {
    (StatusCode::BAD_REQUEST, "the body must be a JSON object\n").into_response()
}

/// Runs an authorized API request (also for the admin dashboard).
pub(crate) async fn respond(node: &Node, method: &str, body: &Bytes) -> Response {
    let Some(params) = object(body) else {
        return not_an_object();
    };
    if method == "batch" {
        return axum::Json(batch(node, params).await).into_response();
    }
    if !METHODS.contains(&method) {
        return (
            StatusCode::NOT_FOUND,
            format!("unknown API method {method:?}\n"),
        )
            .into_response();
    }
    axum::Json(envelope(call(node, method, params).await)).into_response()
}

const METHODS: &[&str] = &[
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
];

fn envelope(result: ApiResult) -> Value {
    match result {
        Ok(v) => json!({ "result": v }),
        Err((code, message)) => json!({ "error": { "code": code, "message": message } }),
    }
}

async fn batch(node: &Node, params: Value) -> Value {
    let mut replies = Vec::new();
    for cmd in params
        .get("commands")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let entry = cmd
            .as_object()
            .and_then(|o| o.iter().next())
            .map(|(m, p)| (m.clone(), p.clone()));
        let reply = match entry {
            Some((method, p)) if METHODS.contains(&method.as_str()) => match call(node, &method, p)
                .await
            {
                Ok(v) => json!({ method: v }),
                Err((code, message)) => json!({ "error": { "code": code, "message": message } }),
            },
            _ => {
                json!({ "error": { "code": errors::METHOD_NOT_FOUND.0, "message": errors::METHOD_NOT_FOUND.1 } })
            }
        };
        replies.push(reply);
    }
    json!({ "replies": replies })
}

fn parse<T: for<'de> Deserialize<'de>>(params: Value) -> Result<T, errors::Code> {
    serde_json::from_value(params).map_err(|_| errors::BAD_REQUEST)
}

#[derive(Deserialize)]
struct PublishParams {
    channel: String,
    data: Option<Box<serde_json::value::RawValue>>,
    b64data: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct BroadcastParams {
    channels: Vec<String>,
    data: Option<Box<serde_json::value::RawValue>>,
    b64data: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct UserParams {
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    disconnect: Option<DisconnectParams>,
    #[serde(default)]
    expired: bool,
    #[serde(default)]
    expire_at: Option<u64>,
    /// `subscribe`: channel info, and data for the subscribe push.
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    data: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    b64data: Option<String>,
}

#[derive(Deserialize)]
struct DisconnectParams {
    code: u16,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct ChannelParams {
    channel: String,
}

#[derive(Deserialize)]
struct HistoryParams {
    channel: String,
    #[serde(default)]
    limit: i32,
    #[serde(default)]
    since: Option<crate::protocol::centrifuge::StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

fn payload(
    data: Option<Box<serde_json::value::RawValue>>,
    b64: Option<String>,
) -> Result<Bytes, errors::Code> {
    match (data, b64) {
        (Some(raw), _) => Ok(Bytes::from(raw.get().to_owned())),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Bytes::from)
            .map_err(|_| errors::BAD_REQUEST),
        (None, None) => Err(errors::BAD_REQUEST),
    }
}

fn check_channel(node: &Node, channel: &str) -> Result<(), errors::Code> {
    if channel.is_empty() {
        return Err(errors::BAD_REQUEST);
    }
    node.settings
        .namespace(channel)
        .map(|_| ())
        .ok_or(errors::UNKNOWN_CHANNEL)
}

async fn publish_one(
    node: &Node,
    channel: String,
    data: Bytes,
    tags: BTreeMap<String, String>,
) -> ApiResult {
    check_channel(node, &channel)?;
    let draft = Draft::to_channel(channel, data, None, tags);
    let p = node
        .hub
        .publish(draft)
        .await
        .map_err(|_| errors::INTERNAL)?;
    Ok(json!({ "offset": p.offset, "epoch": &*p.epoch }))
}

/// Runs one API command and counts its outcome.
async fn call(node: &Node, method: &str, params: Value) -> ApiResult {
    let result = run_method(node, method, params).await;
    crate::metrics::api_command(method, if result.is_ok() { "ok" } else { "error" });
    result
}

async fn run_method(node: &Node, method: &str, params: Value) -> ApiResult {
    match method {
        "publish" => {
            let p: PublishParams = parse(params)?;
            let data = payload(p.data, p.b64data)?;
            publish_one(node, p.channel, data, p.tags).await
        }
        "broadcast" => {
            let p: BroadcastParams = parse(params)?;
            let data = payload(p.data, p.b64data)?;
            let mut responses = Vec::new();
            for channel in p.channels {
                responses.push(envelope(
                    publish_one(node, channel, data.clone(), p.tags.clone()).await,
                ));
            }
            Ok(json!({ "responses": responses }))
        }
        "subscribe" | "unsubscribe" => {
            let p: UserParams = parse(params)?;
            check_channel(node, &p.channel)?;
            let control = if method == "subscribe" {
                let data = match (&p.data, &p.b64data) {
                    (None, None) => Bytes::new(),
                    _ => payload(p.data, p.b64data)?,
                };
                Control::Subscribe(ServerSubscribe {
                    channel: p.channel,
                    expire_at: p.expire_at.filter(|&at| at > 0),
                    info: p.info.map(|raw| raw.get().to_owned()),
                    data: data.to_vec(),
                })
            } else {
                Control::Unsubscribe(p.channel)
            };
            node.control_everywhere(&p.user, p.client.as_deref(), control);
            Ok(json!({}))
        }
        "disconnect" => {
            let p: UserParams = parse(params)?;
            let (code, reason) = match p.disconnect {
                Some(d) => (d.code, d.reason),
                None => (
                    disconnect::FORCE_NO_RECONNECT.0,
                    disconnect::FORCE_NO_RECONNECT.1.to_owned(),
                ),
            };
            node.control_everywhere(
                &p.user,
                p.client.as_deref(),
                Control::Disconnect(code, reason),
            );
            Ok(json!({}))
        }
        "refresh" => {
            let p: UserParams = parse(params)?;
            let control = if p.expired {
                Control::Disconnect(disconnect::EXPIRED.0, disconnect::EXPIRED.1.to_owned())
            } else {
                Control::Refresh(p.expire_at)
            };
            node.control_everywhere(&p.user, p.client.as_deref(), control);
            Ok(json!({}))
        }
        "presence" => {
            let p: ChannelParams = parse(params)?;
            check_channel(node, &p.channel)?;
            let clients: serde_json::Map<String, Value> = node
                .hub
                .presence()
                .get(&p.channel)
                .await
                .into_iter()
                .map(|(id, info)| (id, client_info_json(&info)))
                .collect();
            Ok(json!({ "presence": clients }))
        }
        "presence_stats" => {
            let p: ChannelParams = parse(params)?;
            check_channel(node, &p.channel)?;
            let (clients, users) = node.hub.presence().stats(&p.channel).await;
            Ok(json!({ "num_clients": clients, "num_users": users }))
        }
        "history" => {
            let p: HistoryParams = parse(params)?;
            check_channel(node, &p.channel)?;
            let (pubs, pos) =
                read_history(node, &p.channel, p.since.as_ref(), p.limit, p.reverse).await?;
            let publications: Vec<Value> = pubs
                .iter()
                .map(|pb| {
                    let data: Value = serde_json::from_slice(&json_payload(&pb.draft.data))
                        .unwrap_or(Value::Null);
                    let mut v = json!({ "data": data, "offset": pb.offset });
                    if !pb.draft.tags.is_empty() {
                        v["tags"] = json!(pb.draft.tags);
                    }
                    if let Some(info) = &pb.draft.info {
                        v["info"] = client_info_json(info);
                    }
                    v
                })
                .collect();
            Ok(json!({ "publications": publications, "offset": pos.offset, "epoch": pos.epoch }))
        }
        "history_remove" => {
            let p: ChannelParams = parse(params)?;
            check_channel(node, &p.channel)?;
            node.hub
                .history()
                .remove_channel(&p.channel)
                .await
                .map_err(|_| errors::INTERNAL)?;
            Ok(json!({}))
        }
        "channels" => {
            let pattern = params.get("pattern").and_then(Value::as_str).unwrap_or("");
            let channels: serde_json::Map<String, Value> = node
                .hub
                .channels()
                .into_iter()
                .filter(|(name, _)| glob(pattern, name))
                .map(|(name, n)| (name, json!({ "num_clients": n })))
                .collect();
            Ok(json!({ "channels": channels }))
        }
        "info" => {
            let (clients, users) = node.counts();
            let stats = node.hub.stats();
            Ok(json!({ "nodes": [{
                "uid": node.name, "name": node.name, "version": VERSION,
                "num_clients": clients, "num_users": users, "num_subs": stats.subscribers,
                "num_channels": node.hub.channels().len(), "uptime": node.started.elapsed().as_secs(),
            }]}))
        }
        _ => Err(errors::METHOD_NOT_FOUND),
    }
}

fn client_info_json(info: &crate::history::ClientInfo) -> Value {
    let mut v = json!({ "user": info.user, "client": info.client });
    for (key, raw) in [
        ("conn_info", &info.conn_info),
        ("chan_info", &info.chan_info),
    ] {
        if let Some(text) = raw {
            v[key] = serde_json::from_str(text).unwrap_or(Value::Null);
        }
    }
    v
}

/// Centrifugo's channel pattern: `*` matches any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn channel_patterns() {
        assert!(glob("", "any"));
        assert!(glob("chat:*", "chat:room"));
        assert!(!glob("chat:*", "news"));
        assert!(glob("*:room", "chat:room"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("exact", "exactly"));
    }
}
