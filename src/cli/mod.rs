//! The client subcommands: `publish`, `subscribe` and `token`.
//!
//! They read the same configuration as `serve`, so on a machine running the
//! zero-config hub `tidings publish --topic t --data d` needs no flags: the
//! hub URL, issuer, audience and key come from the same defaults.

use std::time::Duration;

use futures::StreamExt;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::auth::grants::DETAIL_TYPE;
use crate::auth::jwt;
use crate::mercure::settings::MercureSettings;
use crate::protocol::mercure::form;
use crate::protocol::sse;

/// A client-side failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub could not be reached or the connection broke.
    #[error("request to the hub failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The hub refused the request.
    #[error("the hub answered {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// A token could not be signed.
    #[error("cannot sign token: {0}")]
    Token(String),
}

/// What a minted token grants.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// Topic matchers allowed for publishing.
    pub publish: Vec<String>,
    /// Topic matchers allowed for subscribing.
    pub subscribe: Vec<String>,
    /// Treat matchers as URL patterns instead of exact topics.
    pub urlpattern: bool,
    /// Lifetime.
    pub ttl: Duration,
    /// `sub` claim.
    pub subject: String,
    /// Mint a pre-standardization token (`mercure` claim) instead.
    pub legacy: bool,
}

impl TokenRequest {
    /// Publish and subscribe on every topic, for an hour: what the
    /// command-line tools use when no token is given.
    pub fn everything() -> TokenRequest {
        TokenRequest {
            publish: vec!["*".into()],
            subscribe: vec!["*".into()],
            ttl: Duration::from_secs(3600),
            subject: "tidings-cli".into(),
            ..Default::default()
        }
    }
}

/// Signs a token for the hub described by `s` with `key`.
pub fn mint_token(
    s: &MercureSettings,
    key: &str,
    algorithm: Algorithm,
    req: &TokenRequest,
) -> Result<String, ClientError> {
    let now = crate::time::now_ms() / 1000;
    let claims = if req.legacy {
        json!({"exp": now + req.ttl.as_secs(), "sub": req.subject,
               "mercure": {"publish": req.publish, "subscribe": req.subscribe}})
    } else {
        let topics = |list: &[String]| -> Vec<Value> {
            list.iter()
                .map(|m| {
                    if req.urlpattern && m != "*" {
                        json!({"match": m, "match_type": "urlpattern"})
                    } else {
                        json!({"match": m})
                    }
                })
                .collect()
        };
        let mut details = Vec::new();
        if !req.publish.is_empty() {
            details.push(json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": topics(&req.publish)}));
        }
        if !req.subscribe.is_empty() {
            details.push(json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": topics(&req.subscribe)}));
        }
        json!({
            "iss": s.issuer, "aud": s.audience, "sub": req.subject, "client_id": s.issuer,
            "iat": now, "exp": now + req.ttl.as_secs(),
            "jti": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "authorization_details": details,
        })
    };
    jwt::mint(&claims, key, algorithm, !req.legacy).map_err(ClientError::Token)
}

/// An update to publish.
#[derive(Debug, Clone, Default)]
pub struct Update {
    /// Topics (canonical first).
    pub topics: Vec<String>,
    /// Payload.
    pub data: String,
    /// Private update.
    pub private: bool,
    /// Event id.
    pub id: Option<String>,
    /// Event type.
    pub event_type: Option<String>,
    /// Retry delay.
    pub retry: Option<u64>,
}

/// Publishes `update` to the hub at `hub_url`; returns the event id.
pub async fn publish(hub_url: &str, token: &str, update: &Update) -> Result<String, ClientError> {
    let mut body: Vec<String> = update
        .topics
        .iter()
        .map(|t| format!("topic={}", form::encode(t)))
        .collect();
    body.push(format!("data={}", form::encode(&update.data)));
    if update.private {
        body.push("private=on".into());
    }
    if let Some(id) = &update.id {
        body.push(format!("id={}", form::encode(id)));
    }
    if let Some(t) = &update.event_type {
        body.push(format!("type={}", form::encode(t)));
    }
    if let Some(r) = update.retry {
        body.push(format!("retry={r}"));
    }
    let res = reqwest::Client::new()
        .post(hub_url)
        .bearer_auth(token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.join("&"))
        .send()
        .await?;
    let status = res.status().as_u16();
    let text = res.text().await?;
    if status != 200 {
        return Err(ClientError::Refused {
            status,
            body: text.trim().to_owned(),
        });
    }
    Ok(text)
}

/// Subscribes and calls `on_event` with each event as a JSON object
/// (`id`, `type`, `data`) until the stream ends, `count` events arrived, or
/// `on_event` returns false.
pub async fn subscribe(
    hub_url: &str,
    matchers: &[(String, String)],
    last_event_id: Option<&str>,
    token: Option<&str>,
    count: Option<usize>,
    mut on_event: impl FnMut(Value) -> bool,
) -> Result<(), ClientError> {
    let mut url = url::Url::parse(hub_url).map_err(|e| ClientError::Token(e.to_string()))?;
    for (name, value) in matchers {
        url.query_pairs_mut().append_pair(name, value);
    }
    let mut req = reqwest::Client::new()
        .get(url)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await?;
    let status = res.status().as_u16();
    if status != 200 {
        let body = res.text().await.unwrap_or_default();
        return Err(ClientError::Refused {
            status,
            body: body.trim().to_owned(),
        });
    }
    let mut parser = sse::Parser::default();
    let mut seen = 0;
    let mut body = res.bytes_stream();
    while let Some(chunk) = body.next().await {
        for e in parser.feed(&chunk?) {
            seen += 1;
            let keep = on_event(json!({"id": e.id, "type": e.event, "data": e.data}));
            if !keep || count.is_some_and(|c| seen >= c) {
                return Ok(());
            }
        }
    }
    Ok(())
}
