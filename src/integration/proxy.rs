//! Proxies: the application's backend decides on client events.
//!
//! On a connect without a token, a session refresh, a subscribe, a client
//! publish, a subscription refresh or an RPC call, the hub POSTs a JSON
//! request to the configured endpoint in Centrifugo's proxy format
//! (`client`, `transport`, `protocol`, `encoding`, `user`, `channel`,
//! `data`/`b64data`, `meta`) with the client's chosen headers, and the
//! backend answers `{"result": …}`, `{"error": {code, message}}` or
//! `{"disconnect": {code, reason}}`. A backend that is slow, down or
//! answers nonsense is a [`ProxyError`]: the session turns it into the
//! protocol's "internal error" (temporary: the client retries), never a
//! hang. The Mercure authorization hook uses the same client with its own
//! request shape (see docs/integration.md).

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use base64::Engine as _;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

/// Validated `[proxy]`: an endpoint per event (None: not proxied).
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// How long one request may take.
    pub timeout: Duration,
    /// Headers of the client's connection request forwarded to the backend.
    pub http_headers: Vec<HeaderName>,
    /// Connect without a token.
    pub connect: Option<Url>,
    /// Connection session refresh.
    pub refresh: Option<Url>,
    /// Subscribe (namespaces with `subscribe_proxy`).
    pub subscribe: Option<Url>,
    /// Client publish (namespaces with `publish_proxy`).
    pub publish: Option<Url>,
    /// Subscription refresh (namespaces with `sub_refresh_proxy`).
    pub sub_refresh: Option<Url>,
    /// Client RPC.
    pub rpc: Option<Url>,
    /// Mercure publish and subscribe authorization.
    pub mercure: Option<Url>,
}

/// Why the backend gave no decision. Clients see the protocol's internal
/// error; the reason goes to the log and `tidings_proxy_errors_total`.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No answer within `proxy.timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connection refused, reset, DNS…
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// An HTTP status other than 200.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The body is not a proxy response.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

impl ProxyError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::Timeout(_) => "timeout",
            ProxyError::Unreachable(_) => "unreachable",
            ProxyError::Status(_) => "status",
            ProxyError::Malformed(_) => "malformed",
        }
    }
}

/// An error the backend wants the client to see (code 400–1999).
#[derive(Debug, Clone, Deserialize)]
pub struct BackendError {
    /// The error code.
    pub code: u32,
    /// Its message.
    #[serde(default)]
    pub message: String,
    /// Whether the client may retry.
    #[serde(default)]
    pub temporary: bool,
}

/// A disconnect the backend asks for (code 4000–4999).
#[derive(Debug, Clone, Deserialize)]
pub struct BackendDisconnect {
    /// The disconnect code.
    pub code: u16,
    /// Its reason (at most 32 bytes reach the client).
    #[serde(default)]
    pub reason: String,
}

/// What the backend decided.
#[derive(Debug)]
pub enum Decision<T> {
    /// Go ahead, with this result.
    Allow(T),
    /// Refuse with this error.
    Error(BackendError),
    /// Close the connection.
    Disconnect(BackendDisconnect),
}

#[derive(Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
struct Envelope<T> {
    result: Option<T>,
    error: Option<BackendError>,
    disconnect: Option<BackendDisconnect>,
}

/// The fields every Centrifugo proxy request carries.
#[derive(Debug, Clone, Serialize)]
pub struct ClientContext {
    /// The client id.
    pub client: String,
    /// Transport name (`websocket`, `sse`…).
    pub transport: &'static str,
    /// `json` or `protobuf`.
    pub protocol: &'static str,
    /// `json` or `binary`.
    pub encoding: &'static str,
    /// The user (empty on connect).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Meta the connect proxy attached to the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
}

/// A payload in a request: JSON as is (`data`), anything else in base64
/// (`b64data`).
#[derive(Debug, Default, Serialize)]
pub struct Payload {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64data: Option<String>,
}

impl Payload {
    /// Wraps the client's bytes; empty bytes are no payload.
    pub fn of(bytes: &[u8]) -> Payload {
        if bytes.is_empty() {
            return Payload::default();
        }
        match serde_json::from_slice::<Value>(bytes).ok() {
            Some(raw) => Payload {
                data: Some(raw),
                b64data: None,
            },
            None => Payload {
                data: None,
                b64data: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            },
        }
    }
}

/// A payload in an answer: `data` (JSON) or `b64data`.
#[derive(Debug, Default, Deserialize)]
pub struct AnswerPayload {
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    b64data: Option<String>,
}

impl AnswerPayload {
    /// The bytes, if any.
    pub fn bytes(&self) -> Result<Option<Bytes>, ProxyError> {
        if let Some(b64) = &self.b64data {
            return base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(|b| Some(Bytes::from(b)))
                .map_err(|e| ProxyError::Malformed(format!("b64data: {e}")));
        }
        Ok(self.data.as_ref().map(|v| Bytes::from(v.to_string())))
    }
}

/// Connect request.
#[derive(Debug, Serialize)]
pub struct ConnectRequest {
    /// Common fields.
    #[serde(flatten)]
    pub ctx: ClientContext,
    /// SDK name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// SDK version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Data the client sent with connect.
    #[serde(flatten)]
    pub payload: Payload,
}

/// Per-channel options of a connect answer's `subs`.
#[derive(Debug, Default, Deserialize)]
pub struct SubscribeOptions {
    /// Channel info of the connection.
    #[serde(flatten)]
    pub info: InfoPayload,
}

/// An `info`/`b64info` pair of an answer.
#[derive(Debug, Default, Deserialize)]
pub struct InfoPayload {
    #[serde(default)]
    info: Option<Value>,
    #[serde(default)]
    b64info: Option<String>,
}

impl InfoPayload {
    /// The info as text (what the hub keeps), if any.
    pub fn text(&self) -> Result<Option<String>, ProxyError> {
        if let Some(b64) = &self.b64info {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| ProxyError::Malformed(format!("b64info: {e}")))?;
            return String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| ProxyError::Malformed("b64info is not UTF-8".into()));
        }
        Ok(self.info.as_ref().map(Value::to_string))
    }
}

/// Connect answer.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectResult {
    /// The user id (empty: anonymous).
    #[serde(default)]
    pub user: String,
    /// When the connection expires (Unix seconds; 0: never).
    #[serde(default)]
    pub expire_at: u64,
    /// Connection info.
    #[serde(flatten)]
    pub info: InfoPayload,
    /// Data for the client's connect reply.
    #[serde(flatten)]
    pub payload: AnswerPayload,
    /// Server-side subscriptions.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Server-side subscriptions with options.
    #[serde(default)]
    pub subs: HashMap<String, SubscribeOptions>,
    /// Kept with the connection, sent with its later proxy requests.
    #[serde(default)]
    pub meta: Option<Value>,
}

/// Refresh request (the common fields only).
#[derive(Debug, Serialize)]
pub struct RefreshRequest {
    /// Common fields.
    #[serde(flatten)]
    pub ctx: ClientContext,
}

/// Refresh and sub-refresh answer.
#[derive(Debug, Default, Deserialize)]
pub struct RefreshResult {
    /// End it now.
    #[serde(default)]
    pub expired: bool,
    /// New expiry (Unix seconds).
    #[serde(default)]
    pub expire_at: u64,
    /// New info.
    #[serde(flatten)]
    pub info: InfoPayload,
}

/// Subscribe, publish and sub-refresh request.
#[derive(Debug, Serialize)]
pub struct ChannelRequest {
    /// Common fields.
    #[serde(flatten)]
    pub ctx: ClientContext,
    /// The channel (a pattern for a wildcard subscription).
    pub channel: String,
    /// Subscribe data or publication data.
    #[serde(flatten)]
    pub payload: Payload,
}

/// Subscribe answer.
#[derive(Debug, Default, Deserialize)]
pub struct SubscribeResult {
    /// Channel info of the connection.
    #[serde(flatten)]
    pub info: InfoPayload,
    /// Data for the client's subscribe reply.
    #[serde(flatten)]
    pub payload: AnswerPayload,
    /// When the subscription expires (Unix seconds; 0: never).
    #[serde(default)]
    pub expire_at: u64,
}

/// Publish answer.
#[derive(Debug, Default, Deserialize)]
pub struct PublishResult {
    /// Data published instead of the client's.
    #[serde(flatten)]
    pub payload: AnswerPayload,
    /// Tags added to the publication.
    #[serde(default)]
    pub tags: HashMap<String, String>,
}

/// RPC request.
#[derive(Debug, Serialize)]
pub struct RpcRequest {
    /// Common fields.
    #[serde(flatten)]
    pub ctx: ClientContext,
    /// The method the client named.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// The client's data.
    #[serde(flatten)]
    pub payload: Payload,
}

/// RPC answer.
#[derive(Debug, Default, Deserialize)]
pub struct RpcResult {
    /// The data for the client.
    #[serde(flatten)]
    pub payload: AnswerPayload,
}

/// The HTTP client of every proxy.
pub struct Proxy {
    /// The endpoints.
    pub settings: ProxySettings,
    client: reqwest::Client,
}

impl Proxy {
    /// A client for these endpoints.
    pub fn new(settings: ProxySettings) -> Proxy {
        Proxy {
            settings,
            // Pooled keep-alive connections: a proxy call is on the path of
            // every subscribe, so no new TCP handshake each time.
            client: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Picks from the client's request headers those forwarded to the backend.
    pub fn forwarded_headers(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Vec<(HeaderName, HeaderValue)> {
        self.settings
            .http_headers
            .iter()
            .flat_map(|name| {
                headers
                    .get_all(name)
                    .iter()
                    .map(|v| (name.clone(), v.clone()))
            })
            .collect()
    }

    /// POSTs `request` to `endpoint` and reads the decision.
    pub async fn call<T: DeserializeOwned + Default>(
        &self,
        kind: &'static str,
        endpoint: &Url,
        request: &impl Serialize,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Decision<T>, ProxyError> {
        let started = std::time::Instant::now();
        let result = self.post(endpoint, request, headers).await;
        let failure = result.as_ref().err().map(|e| (e.label(), e.to_string()));
        crate::metrics::proxy_call(kind, started.elapsed(), failure);
        if let Err(e) = &result {
            tracing::warn!(proxy = kind, %endpoint, error = %e, "proxy request failed");
        }
        result
    }

    async fn post<T: DeserializeOwned + Default>(
        &self,
        endpoint: &Url,
        request: &impl Serialize,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Decision<T>, ProxyError> {
        let mut builder = self
            .client
            .post(endpoint.clone())
            .timeout(self.settings.timeout)
            .json(request);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let timeout = self.settings.timeout;
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                ProxyError::Timeout(timeout)
            } else {
                ProxyError::Unreachable(e.to_string())
            }
        };
        let response = builder.send().await.map_err(failed)?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(ProxyError::Status(response.status().as_u16()));
        }
        let body = response.bytes().await.map_err(failed)?;
        decode(&body)
    }
}

/// Reads a proxy response body.
pub fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<Decision<T>, ProxyError> {
    let envelope: Envelope<T> =
        serde_json::from_slice(body).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    if let Some(d) = envelope.disconnect {
        return Ok(Decision::Disconnect(d));
    }
    if let Some(e) = envelope.error {
        return Ok(Decision::Error(e));
    }
    match envelope.result {
        Some(r) => Ok(Decision::Allow(r)),
        None => Err(ProxyError::Malformed(
            "no result, error or disconnect".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_kind_of_answer() {
        let ok: Decision<ConnectResult> =
            decode(br#"{"result":{"user":"56","expire_at":99,"info":{"a":1},"data":[1]}}"#)
                .unwrap();
        let Decision::Allow(r) = ok else { panic!() };
        assert_eq!(r.user, "56");
        assert_eq!(r.expire_at, 99);
        assert_eq!(r.info.text().unwrap().as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(r.payload.bytes().unwrap().as_deref(), Some(&b"[1]"[..]));
        let err: Decision<RpcResult> =
            decode(br#"{"error":{"code":1000,"message":"nope"}}"#).unwrap();
        assert!(matches!(err, Decision::Error(e) if e.code == 1000 && e.message == "nope"));
        let dis: Decision<RpcResult> =
            decode(br#"{"disconnect":{"code":4500,"reason":"bye"}}"#).unwrap();
        assert!(matches!(dis, Decision::Disconnect(d) if d.code == 4500));
        let empty: Decision<SubscribeResult> = decode(br#"{"result":{}}"#).unwrap();
        assert!(matches!(empty, Decision::Allow(_)));
    }

    #[test]
    fn refuses_malformed_answers() {
        for body in [&b"not json"[..], b"{}", b"[]", br#"{"result":{"user":5}}"#] {
            assert!(
                matches!(decode::<ConnectResult>(body), Err(ProxyError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let bad_b64: Decision<RpcResult> = decode(br#"{"result":{"b64data":"@@"}}"#).unwrap();
        let Decision::Allow(r) = bad_b64 else {
            panic!()
        };
        assert!(r.payload.bytes().is_err());
    }

    #[test]
    fn payloads_are_json_or_base64() {
        let json = serde_json::to_string(&Payload::of(br#"{"x":1}"#)).unwrap();
        assert_eq!(json, r#"{"data":{"x":1}}"#);
        let bin = serde_json::to_string(&Payload::of(&[0xff, 0])).unwrap();
        assert_eq!(bin, r#"{"b64data":"/wA="}"#);
        assert_eq!(serde_json::to_string(&Payload::of(b"")).unwrap(), "{}");
    }
}
