//! Who a Mercure request is: its token (the `Authorization` header wins
//! over cookies, which are ambient; then the legacy `authorization` query
//! parameter), what it grants, and the authorization hook that decides for
//! requests without one.

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use serde_json::{json, Value};

use super::{MercureError, MercureState};
use crate::auth::{AuthError, Grants};
use crate::history::Publication;
use crate::hub::Filter;
use crate::integration::proxy::Decision;
use crate::protocol::mercure::form;

/// Legacy cookie name of pre-standardization hubs.
const LEGACY_COOKIE: &str = "mercureAuthorization";

/// Where a request's token came from.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Cookie,
    Query,
}

/// Finds the token: the `Authorization` header wins over cookies (which are
/// ambient), then the legacy `authorization` query parameter.
pub fn find_token(
    headers: &HeaderMap,
    state: &MercureState,
    query_token: Option<String>,
) -> Result<Option<(String, TokenSource)>, AuthError> {
    if let Some(given) = crate::api::authorization(headers) {
        return match given {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                Ok(Some((token.to_owned(), TokenSource::Header)))
            }
            _ => Err(AuthError::InvalidRequest(
                "the Authorization header must be `Bearer <token>`".into(),
            )),
        };
    }
    let mut names = vec![state.settings.cookie_name.as_str()];
    if state.settings.compat {
        names.push(LEGACY_COOKIE);
    }
    for name in names {
        if let Some(v) = cookie(headers, name) {
            return Ok(Some((v, TokenSource::Cookie)));
        }
    }
    Ok(query_token.map(|t| (t, TokenSource::Query)))
}

/// The pre-standardization `authorization` query parameter (compat only).
pub fn legacy_query_token(state: &MercureState, uri: &axum::http::Uri) -> Option<String> {
    if !state.settings.compat {
        return None;
    }
    form::parse(uri.query().unwrap_or("").as_bytes())
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// Admits public updates, and private ones the token may read.
pub struct PrivateFilter(pub Option<Arc<Grants>>);

impl Filter for PrivateFilter {
    fn admits(&self, p: &Publication) -> bool {
        !p.draft.private || self.0.as_ref().is_some_and(|g| g.may_read(p.topics()))
    }
}

/// The Mercure authorization hook's request.
#[derive(serde::Serialize)]
struct HookRequest {
    action: &'static str,
    topics: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    private: bool,
}

/// Asks `proxy.mercure_endpoint` about a request that carries no token.
/// Its `result` is what the legacy `mercure` claim holds (`subscribe`:
/// selectors whose private updates the subscriber may receive, `payload`);
/// an `error` refuses with 403; a failure is a 503 (try again).
pub async fn ask_hook(
    state: &MercureState,
    action: &'static str,
    topics: Vec<String>,
    private: bool,
    headers: &HeaderMap,
) -> Result<Grants, MercureError> {
    let Some(endpoint) = &state.proxy.settings.mercure else {
        return Err(AuthError::Missing.into());
    };
    let request = HookRequest {
        action,
        topics,
        private,
    };
    let forwarded = state.proxy.forwarded_headers(headers);
    let unavailable =
        || MercureError::Unavailable("the authorization backend is unavailable".into());
    match state
        .proxy
        .call::<Value>("mercure", endpoint, &request, &forwarded)
        .await
    {
        Ok(Decision::Allow(result)) => {
            let claims = json!({ "mercure": result });
            let limits = crate::auth::grants::GrantLimits::default();
            Grants::from_legacy_claim(&claims, &state.settings.hub_url, &limits).map_err(|e| {
                tracing::warn!(error = %e, "malformed Mercure hook answer");
                unavailable()
            })
        }
        Ok(Decision::Error(e)) => Err(MercureError::Refused(if e.message.is_empty() {
            format!("refused by the authorization backend ({})", e.code)
        } else {
            e.message
        })),
        Ok(Decision::Disconnect(d)) => Err(MercureError::Refused(d.reason)),
        Err(_) => Err(unavailable()),
    }
}
