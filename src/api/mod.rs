//! HTTP surfaces: request handling that joins codecs, auth, hub and
//! transports.
//!
//! - [`mercure`]: the Mercure hub (subscribe, publish, subscriptions API,
//!   protected resource metadata).
//! - [`centrifugo`]: the Centrifugo server API (`POST /api/<method>`).
//! - [`admin`]: the same API for the admin dashboard, behind its password.

pub mod admin;
pub mod centrifugo;
pub mod mercure;

use axum::http::{header, HeaderMap};

/// The `Authorization` header as `(scheme, credentials)`, the credentials
/// trimmed: `None` when there is none, `Some(None)` when it is not ASCII
/// `<scheme> <credentials>` with something after the scheme.
pub fn authorization(headers: &HeaderMap) -> Option<Option<(&str, &str)>> {
    let value = headers.get(header::AUTHORIZATION)?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .map(|(scheme, credentials)| (scheme, credentials.trim()))
            .filter(|(_, credentials)| !credentials.is_empty()),
    )
}
