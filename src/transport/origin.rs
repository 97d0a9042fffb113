//! Where a browser's request comes from, and whether the hub trusts it.
//!
//! Browsers send cookies with cross-site requests, so a request carrying
//! ambient credentials must come from a trusted origin, or any site could
//! act as the user: cross-site WebSocket hijacking for connections, CSRF
//! for cookie-authenticated publishing.

use axum::http::{header, HeaderMap};

/// The request's origin: its `Origin` header, else the origin of its
/// `Referer`.
pub fn of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get(header::REFERER)
                .and_then(|v| v.to_str().ok())
                .and_then(|r| url::Url::parse(r).ok())
                .map(|u| u.origin().ascii_serialization())
        })
}

/// The rule for connections (and `POST /emulation`): no `Origin` (not a
/// browser), the same origin as the request's `Host`, or one of `allowed`.
pub fn may_connect(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (url::Url::parse(origin), host) {
        (Ok(u), Some(host)) => {
            let authority = match u.port() {
                Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
                None => u.host_str().unwrap_or_default().to_owned(),
            };
            authority.eq_ignore_ascii_case(host)
        }
        _ => false,
    }
}

/// The rule for requests authenticated by a cookie alone: the request
/// names its origin (`Origin`, or `Referer`), and it is `own` or one of
/// `allowed`.
pub fn is_trusted(headers: &HeaderMap, own: &str, allowed: &[String]) -> bool {
    of(headers).is_some_and(|o| o == own || allowed.contains(&o))
}
