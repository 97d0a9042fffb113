//! Verifying JWT access tokens, and minting them for testing.
//!
//! Draft tokens are RFC 9068 access tokens: `typ` `at+jwt`, an algorithm
//! from the configured allowlist and compatible with the key, `iss` equal to
//! the trusted issuer, the hub's resource identifier in `aud`, `exp`
//! required, `nbf` enforced. Keys come only from configuration (never from
//! `jwk`/`jku`/`x5u` headers). When compatibility with pre-standardization
//! clients is on, a token of any other `typ` is accepted the old way: a
//! signed JWT carrying the `mercure` claim, with `exp` enforced if present.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;
use url::Url;

use super::grants::{GrantLimits, Grants};
use super::AuthError;

/// Which side of the hub a token is presented to: separate keys per role
/// keep a leaked subscriber key from allowing publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publishing updates.
    Publisher,
    /// Subscribing (and reading the subscriptions API).
    Subscriber,
}

/// One trusted verification key with the algorithms allowed for it.
#[derive(Clone)]
pub struct TrustedKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
    /// Required `aud` and `iss` of plain tokens, if configured.
    audience: Option<String>,
    issuer: Option<String>,
}

impl TrustedKey {
    /// A key from configuration: the secret itself for HMAC algorithms, a
    /// PEM document for RSA / EC / EdDSA ones.
    pub fn new(material: &str, algorithm: Algorithm) -> Result<Self, String> {
        use Algorithm::*;
        let key = match algorithm {
            HS256 | HS384 | HS512 => {
                if material.is_empty() {
                    return Err("the HMAC secret is empty".into());
                }
                DecodingKey::from_secret(material.as_bytes())
            }
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                DecodingKey::from_rsa_pem(material.as_bytes()).map_err(|e| e.to_string())?
            }
            ES256 | ES384 => {
                DecodingKey::from_ec_pem(material.as_bytes()).map_err(|e| e.to_string())?
            }
            EdDSA => DecodingKey::from_ed_pem(material.as_bytes()).map_err(|e| e.to_string())?,
        };
        Ok(TrustedKey {
            key,
            algorithms: vec![algorithm],
            audience: None,
            issuer: None,
        })
    }

    /// Plain tokens must carry this `aud` (among others) and this `iss`
    /// (Centrifugo's `token.audience` / `token.issuer`).
    pub fn expecting(mut self, audience: Option<String>, issuer: Option<String>) -> Self {
        self.audience = audience;
        self.issuer = issuer;
        self
    }
}

impl TrustedKey {
    /// Verifies a token's signature, algorithm, `exp` (if present) and `nbf`,
    /// and `aud`/`iss` only where [`TrustedKey::expecting`] asked for them
    /// (Centrifugo tokens), and returns its claims.
    pub fn verify_plain(&self, token: &str) -> Result<Value, PlainTokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| PlainTokenError::Invalid)?;
        if !self.algorithms.contains(&header.alg)
            || header.jku.is_some()
            || header.jwk.is_some()
            || has_critical_extensions(token)
        {
            return Err(PlainTokenError::Invalid);
        }
        let mut v = Validation::new(header.alg);
        v.algorithms = self.algorithms.clone();
        v.leeway = 0;
        v.validate_nbf = true;
        v.validate_aud = false;
        let mut required = Vec::new();
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
            v.validate_aud = true;
            required.push("aud");
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        jsonwebtoken::decode::<Value>(token, &self.key, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => PlainTokenError::Expired,
                _ => PlainTokenError::Invalid,
            })
    }
}

/// Why [`TrustedKey::verify_plain`] refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainTokenError {
    /// `exp` is in the past: the client should get a fresh token.
    Expired,
    /// Anything else.
    Invalid,
}

/// Verifies tokens and turns them into [`Grants`].
pub struct Verifier {
    /// Keys for publisher tokens.
    pub publisher: Vec<TrustedKey>,
    /// Keys for subscriber tokens.
    pub subscriber: Vec<TrustedKey>,
    /// The trusted issuer (`iss`) of draft tokens.
    pub issuer: String,
    /// The hub's resource identifier, required in `aud`.
    pub audience: String,
    /// Accept pre-standardization tokens.
    pub legacy: bool,
    /// The hub URL, base for relative URL patterns in grants.
    pub hub: Url,
    /// Limits on grants.
    pub limits: GrantLimits,
}

fn is_access_token_type(typ: Option<&str>) -> bool {
    typ.is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t == "at+jwt" || t == "application/at+jwt"
    })
}

/// Whether the token's header has `crit`: it names extensions the
/// recipient must understand, and the hub understands none, so such a
/// token is refused (RFC 7515 §4.1.11).
fn has_critical_extensions(token: &str) -> bool {
    use base64::Engine;
    let Some(header) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
        .is_some_and(|h| h.get("crit").is_some())
}

impl Verifier {
    /// Verifies `token` for `role`.
    pub fn verify(&self, token: &str, role: Role) -> Result<Grants, AuthError> {
        let invalid = |m: String| AuthError::InvalidToken(m);
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        if header.jku.is_some() || header.jwk.is_some() || header.x5u.is_some() {
            // Key material from the token is never used; refuse outright.
            return Err(invalid("token carries its own key material".into()));
        }
        if has_critical_extensions(token) {
            return Err(invalid(
                "crit names extensions the hub does not support".into(),
            ));
        }
        let modern = is_access_token_type(header.typ.as_deref());
        if !modern && !self.legacy {
            return Err(invalid("typ is not at+jwt".into()));
        }
        let keys = match role {
            Role::Publisher => &self.publisher,
            Role::Subscriber => &self.subscriber,
        };
        let mut last_err = "no key configured for this role".to_owned();
        for key in keys {
            if !key.algorithms.contains(&header.alg) {
                last_err = format!("algorithm {:?} is not allowed", header.alg);
                continue;
            }
            let mut v = Validation::new(header.alg);
            v.algorithms = key.algorithms.clone();
            v.leeway = 0;
            v.validate_nbf = true;
            if modern {
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                v.set_issuer(&[&self.issuer]);
                v.set_audience(&[&self.audience]);
            } else {
                v.set_required_spec_claims::<&str>(&[]);
                v.validate_aud = false;
            }
            match jsonwebtoken::decode::<Value>(token, &key.key, &v) {
                Ok(data) => {
                    let claims = data.claims;
                    let mut grants = if modern {
                        Grants::from_authorization_details(&claims, &self.hub, &self.limits)?
                    } else {
                        Grants::from_legacy_claim(&claims, &self.hub, &self.limits)?
                    };
                    grants.expires_at = claims.get("exp").and_then(Value::as_u64);
                    grants.subject = claims.get("sub").and_then(Value::as_str).map(String::from);
                    return Ok(grants);
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        Err(invalid(last_err))
    }
}

/// Signs `claims` (for `tidings token` and tests). `typ` is `at+jwt` for
/// draft tokens and `JWT` for pre-standardization ones.
pub fn mint(
    claims: &Value,
    material: &str,
    algorithm: Algorithm,
    access_token: bool,
) -> Result<String, String> {
    use Algorithm::*;
    let key = match algorithm {
        HS256 | HS384 | HS512 => EncodingKey::from_secret(material.as_bytes()),
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
            EncodingKey::from_rsa_pem(material.as_bytes()).map_err(|e| e.to_string())?
        }
        ES256 | ES384 => {
            EncodingKey::from_ec_pem(material.as_bytes()).map_err(|e| e.to_string())?
        }
        EdDSA => EncodingKey::from_ed_pem(material.as_bytes()).map_err(|e| e.to_string())?,
    };
    let mut header = Header::new(algorithm);
    header.typ = Some(if access_token { "at+jwt" } else { "JWT" }.into());
    jsonwebtoken::encode(&header, claims, &key).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "test-secret";

    fn verifier(legacy: bool) -> Verifier {
        Verifier {
            publisher: vec![TrustedKey::new("pub-secret", Algorithm::HS256).unwrap()],
            subscriber: vec![TrustedKey::new(SECRET, Algorithm::HS256).unwrap()],
            issuer: "https://issuer.example".into(),
            audience: "https://hub.example/.well-known/mercure".into(),
            legacy,
            hub: Url::parse("https://hub.example/.well-known/mercure").unwrap(),
            limits: GrantLimits::default(),
        }
    }

    fn claims(exp_offset: i64) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        json!({"iss": "https://issuer.example", "aud": ["x", "https://hub.example/.well-known/mercure"],
               "exp": now + exp_offset, "sub": "me",
               "authorization_details": [{"type": "https://mercure.rocks/authorization-detail",
                  "actions": ["subscribe"], "topics": [{"match": "*"}]}]})
    }

    #[test]
    fn accepts_a_valid_access_token() {
        let t = mint(&claims(60), SECRET, Algorithm::HS256, true).unwrap();
        let g = verifier(false).verify(&t, Role::Subscriber).unwrap();
        assert_eq!(g.subject.as_deref(), Some("me"));
        assert!(g.may_read(["a"].into_iter()));
    }

    /// A token signed with `header` as its JOSE header.
    fn signed_with_header(header: Value, claims: &Value) -> String {
        use base64::Engine;
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
        };
        let message = format!("{}.{}", b64(&header), b64(claims));
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{signature}")
    }

    #[test]
    fn critical_extensions_are_refused() {
        let plain = json!({"alg": "HS256", "typ": "at+jwt"});
        let crit = json!({"alg": "HS256", "typ": "at+jwt", "crit": ["exp-ext"], "exp-ext": 1});
        let v = verifier(false);
        let ok = signed_with_header(plain, &claims(60));
        assert!(
            v.verify(&ok, Role::Subscriber).is_ok(),
            "the same token without crit"
        );
        let t = signed_with_header(crit.clone(), &claims(60));
        assert!(matches!(
            v.verify(&t, Role::Subscriber),
            Err(AuthError::InvalidToken(m)) if m.contains("crit")
        ));
        let key = TrustedKey::new(SECRET, Algorithm::HS256).unwrap();
        let centrifugo = signed_with_header(crit, &json!({"sub": "1"}));
        assert_eq!(key.verify_plain(&centrifugo), Err(PlainTokenError::Invalid));
    }

    #[test]
    fn rejects_bad_tokens() {
        let v = verifier(false);
        let bad = |t: &str, role| matches!(v.verify(t, role), Err(AuthError::InvalidToken(_)));
        // expired
        assert!(bad(
            &mint(&claims(-10), SECRET, Algorithm::HS256, true).unwrap(),
            Role::Subscriber
        ));
        // wrong key / wrong role key
        assert!(bad(
            &mint(&claims(60), "other", Algorithm::HS256, true).unwrap(),
            Role::Subscriber
        ));
        assert!(bad(
            &mint(&claims(60), SECRET, Algorithm::HS256, true).unwrap(),
            Role::Publisher
        ));
        // not at+jwt
        assert!(bad(
            &mint(&claims(60), SECRET, Algorithm::HS256, false).unwrap(),
            Role::Subscriber
        ));
        // algorithm not allowed for the key
        assert!(bad(
            &mint(&claims(60), SECRET, Algorithm::HS512, true).unwrap(),
            Role::Subscriber
        ));
        // wrong audience / issuer / no exp
        let mut c = claims(60);
        c["aud"] = json!("https://elsewhere");
        assert!(bad(
            &mint(&c, SECRET, Algorithm::HS256, true).unwrap(),
            Role::Subscriber
        ));
        let mut c = claims(60);
        c["iss"] = json!("https://evil");
        assert!(bad(
            &mint(&c, SECRET, Algorithm::HS256, true).unwrap(),
            Role::Subscriber
        ));
        let mut c = claims(60);
        c.as_object_mut().unwrap().remove("exp");
        assert!(bad(
            &mint(&c, SECRET, Algorithm::HS256, true).unwrap(),
            Role::Subscriber
        ));
        // not yet valid
        let mut c = claims(60);
        c["nbf"] = json!(c["exp"].as_i64().unwrap() + 100);
        assert!(bad(
            &mint(&c, SECRET, Algorithm::HS256, true).unwrap(),
            Role::Subscriber
        ));
        // alg none and garbage
        let none = format!(
            "{}.{}.",
            base64_url(r#"{"alg":"none","typ":"at+jwt"}"#),
            base64_url(&claims(60).to_string())
        );
        assert!(bad(&none, Role::Subscriber));
        assert!(bad("not.a.token", Role::Subscriber));
    }

    #[test]
    fn legacy_tokens_only_in_compatibility_mode() {
        let t = mint(
            &json!({"mercure": {"subscribe": ["*"]}}),
            SECRET,
            Algorithm::HS256,
            false,
        )
        .unwrap();
        assert!(verifier(false).verify(&t, Role::Subscriber).is_err());
        let g = verifier(true).verify(&t, Role::Subscriber).unwrap();
        assert!(g.may_read(["x"].into_iter()));
    }

    #[test]
    fn rs256_tokens_and_no_algorithm_confusion() {
        let public = include_str!("../../tests/fixtures/rsa_public.pem");
        let private = include_str!("../../tests/fixtures/rsa_private.pem");
        let v = Verifier {
            subscriber: vec![TrustedKey::new(public, Algorithm::RS256).unwrap()],
            ..verifier(false)
        };
        let t = mint(&claims(60), private, Algorithm::RS256, true).unwrap();
        assert!(v.verify(&t, Role::Subscriber).is_ok());
        // An HS256 token "signed" with the public key as HMAC secret.
        let forged = mint(&claims(60), public, Algorithm::HS256, true).unwrap();
        assert!(matches!(
            v.verify(&forged, Role::Subscriber),
            Err(AuthError::InvalidToken(_))
        ));
        // A key that is not a PEM is refused at configuration time.
        assert!(TrustedKey::new("not a pem", Algorithm::RS256).is_err());
    }

    fn base64_url(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }
}
