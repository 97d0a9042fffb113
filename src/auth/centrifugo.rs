//! Centrifugo tokens: who a WebSocket connection is, and which protected
//! channels it may join.
//!
//! A connection token carries `sub` (the user), optionally `exp`, `info`
//! (connection info shown to others) and `channels` (server-side
//! subscriptions). A subscription token carries `sub` (must be the
//! connection's user), `channel`, optionally `exp` and `info` (channel
//! info). Either may carry `expire_at`: then `exp` only bounds the token's
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
    /// `channels`: server-side subscriptions.
    pub channels: Vec<String>,
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

fn info(claims: &Value) -> Option<String> {
    claims
        .get("info")
        .filter(|v| !v.is_null())
        .map(Value::to_string)
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
        info: info(&claims),
        channels,
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
        info: info(&claims),
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
