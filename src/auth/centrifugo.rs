//! Centrifugo tokens: who a WebSocket connection is, and which protected
//! channels it may join.
//!
//! A connection token carries `sub` (the user), optionally `exp`, `info`
//! or `b64info` (connection info shown to others), `channels` and `subs`
//! (server-side subscriptions; `subs` with each one's `info` and `data`).
//! A subscription token carries `sub` (must be the connection's user),
//! `channel`, optionally `client` (then only that connection may use it),
//! `exp` and `info` / `b64info` (channel info). Either may carry `expire_at`: then `exp` only bounds the token's
//! use, and the connection or subscription lasts until `expire_at` (0:
//! for ever), as in Centrifugo.

use serde_json::Value;

use super::jwt::{PlainTokenError, TrustedKey};

/// A verified connection token.
#[derive(Debug, Clone, Default)]
pub struct ConnectionToken {
    /// `sub`.
    pub user: String,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// `info`, as JSON text.
    pub info: Option<String>,
    /// `channels`, and the channels of `subs`: server-side subscriptions.
    pub channels: Vec<String>,
    /// `subs`: channel info and subscribe data of server-side
    /// subscriptions, by channel.
    pub subs: std::collections::HashMap<String, ServerSideSub>,
}

/// What a connection token's `subs` says of one server-side subscription.
#[derive(Debug, Clone, Default)]
pub struct ServerSideSub {
    /// `info` / `b64info`, as text.
    pub info: Option<String>,
    /// `data` / `b64data`, for the subscribe result.
    pub data: bytes::Bytes,
}

/// A verified subscription token.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionToken {
    /// `sub`.
    pub user: String,
    /// `channel`.
    pub channel: String,
    /// `exp`.
    pub expires_at: Option<u64>,
    /// `info`, as JSON text.
    pub info: Option<String>,
    /// `client`: the only connection that may use the token.
    pub client: Option<String>,
}

/// Why a token was refused.
pub type TokenError = PlainTokenError;

/// When what the token grants expires: `expire_at` if present (0: never),
/// else `exp`. An `expire_at` already past refuses the token.
fn expiry(claims: &Value) -> Result<Option<u64>, TokenError> {
    match claims.get("expire_at").filter(|v| !v.is_null()) {
        Some(v) => match v.as_u64().ok_or(TokenError::Invalid)? {
            0 => Ok(None),
            at if at <= crate::time::now_secs() => Err(TokenError::Expired),
            at => Ok(Some(at)),
        },
        None => Ok(claims.get("exp").and_then(Value::as_u64)),
    }
}

/// `name` as JSON text, or `b64name` decoded (as text: the JSON protocol
/// carries it inline).
fn payload(claims: &Value, name: &str) -> Result<Option<String>, TokenError> {
    use base64::Engine;
    if let Some(v) = claims.get(name).filter(|v| !v.is_null()) {
        return Ok(Some(v.to_string()));
    }
    match claims.get(format!("b64{name}")).and_then(Value::as_str) {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(|bytes| Some(String::from_utf8_lossy(&bytes).into_owned()))
            .map_err(|_| TokenError::Invalid),
        None => Ok(None),
    }
}

fn info(claims: &Value) -> Result<Option<String>, TokenError> {
    payload(claims, "info")
}

/// `subs`: `{channel: {info, b64info, data, b64data}}`.
fn server_side_subs(
    claims: &Value,
) -> Result<std::collections::HashMap<String, ServerSideSub>, TokenError> {
    let Some(subs) = claims.get("subs").filter(|v| !v.is_null()) else {
        return Ok(Default::default());
    };
    let subs = subs.as_object().ok_or(TokenError::Invalid)?;
    subs.iter()
        .map(|(channel, options)| {
            let sub = ServerSideSub {
                info: info(options)?,
                data: payload(options, "data")?
                    .map(bytes::Bytes::from)
                    .unwrap_or_default(),
            };
            Ok((channel.clone(), sub))
        })
        .collect()
}

/// Verifies a connection token.
pub fn connection(key: &TrustedKey, token: &str) -> Result<ConnectionToken, TokenError> {
    let claims = key.verify_plain(token)?;
    let channels = match claims.get("channels") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|c| c.as_str().map(String::from).ok_or(TokenError::Invalid))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(TokenError::Invalid),
    };
    Ok(ConnectionToken {
        user: claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        expires_at: expiry(&claims)?,
        info: info(&claims)?,
        channels,
        subs: server_side_subs(&claims)?,
    })
}

/// Verifies a subscription token.
pub fn subscription(key: &TrustedKey, token: &str) -> Result<SubscriptionToken, TokenError> {
    let claims = key.verify_plain(token)?;
    let channel = claims
        .get("channel")
        .and_then(Value::as_str)
        .ok_or(TokenError::Invalid)?;
    Ok(SubscriptionToken {
        user: claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        channel: channel.to_owned(),
        expires_at: expiry(&claims)?,
        info: info(&claims)?,
        client: claims
            .get("client")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    fn key() -> TrustedKey {
        TrustedKey::new("k", Algorithm::HS256).unwrap()
    }

    fn sign(claims: Value) -> String {
        super::super::jwt::mint(&claims, "k", Algorithm::HS256, false).unwrap()
    }

    #[test]
    fn connection_tokens() {
        let t = connection(
            &key(),
            &sign(json!({"sub": "42", "info": {"name": "Ann"}, "channels": ["news"]})),
        )
        .unwrap();
        assert_eq!(t.user, "42");
        assert_eq!(t.info.as_deref(), Some("{\"name\":\"Ann\"}"));
        assert_eq!(t.channels, vec!["news"]);
        assert_eq!(
            connection(&key(), &sign(json!({"sub": "1", "exp": 1}))).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(
            connection(&key(), "x.y.z").unwrap_err(),
            TokenError::Invalid
        );
        assert_eq!(
            connection(&key(), &sign(json!({"channels": "news"}))).unwrap_err(),
            TokenError::Invalid
        );
        let other = super::super::jwt::mint(&json!({"sub": "1"}), "other", Algorithm::HS256, false)
            .unwrap();
        assert_eq!(connection(&key(), &other).unwrap_err(), TokenError::Invalid);
    }

    #[test]
    fn server_side_subs_and_b64_payloads() {
        let t = connection(
            &key(),
            &sign(
                json!({"sub": "1", "b64info": "eyJhIjoxfQ==", "channels": ["a"],
                         "subs": {"b": {"info": {"r": 1}, "b64data": "eyJoaSI6MX0="}}}),
            ),
        )
        .unwrap();
        assert_eq!(t.info.as_deref(), Some("{\"a\":1}"));
        assert_eq!(t.subs["b"].info.as_deref(), Some("{\"r\":1}"));
        assert_eq!(&t.subs["b"].data[..], b"{\"hi\":1}");
        assert!(connection(&key(), &sign(json!({"subs": ["b"]}))).is_err());
        assert!(connection(&key(), &sign(json!({"b64info": "%%"}))).is_err());
    }

    #[test]
    fn expire_at_outlives_exp() {
        let now = crate::time::now_secs();
        let t = |claims| subscription(&key(), &sign(claims)).map(|t| t.expires_at);
        let base = json!({"sub": "1", "channel": "c", "exp": now + 60});
        assert_eq!(t(base.clone()), Ok(Some(now + 60)));
        let mut later = base.clone();
        later["expire_at"] = json!(now + 3600);
        assert_eq!(t(later), Ok(Some(now + 3600)));
        let mut never = base.clone();
        never["expire_at"] = json!(0);
        assert_eq!(t(never), Ok(None));
        let mut past = base;
        past["expire_at"] = json!(now - 1);
        assert_eq!(t(past), Err(TokenError::Expired));
    }

    #[test]
    fn subscription_tokens_need_a_channel() {
        let t = subscription(&key(), &sign(json!({"sub": "42", "channel": "secret"}))).unwrap();
        assert_eq!(t.channel, "secret");
        assert!(subscription(&key(), &sign(json!({"sub": "42"}))).is_err());
    }
}
