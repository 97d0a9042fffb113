//! The admin dashboard's API: `POST /admin/api/{method}`.
//!
//! The same methods as the Centrifugo server API (publish, disconnect,
//! presence, channels, history_remove, info…), run by the same code, plus
//! `recent` (the latest disconnects and auth failures). Authenticated with
//! HTTP Basic and `admin.password` (any user name); when no password is
//! configured the dashboard and this API answer 404.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::centrifugo::{respond, secret_eq};
use crate::centrifugo::Node;

/// What the admin endpoints need.
pub struct AdminState {
    /// The node the API acts on.
    pub node: Arc<Node>,
    /// `admin.password`; None turns the dashboard off.
    pub password: Option<String>,
}

fn password_of(headers: &HeaderMap) -> Option<String> {
    let (scheme, encoded) = super::authorization(headers)??;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split_once(':')?.1.to_owned())
}

/// `POST /admin/api/{method}`.
pub async fn handle(
    State(state): State<Arc<AdminState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(expected) = state.password.as_deref() else {
        return (StatusCode::NOT_FOUND, "the admin dashboard is off\n").into_response();
    };
    if !password_of(&headers).is_some_and(|given| secret_eq(&given, expected)) {
        crate::metrics::auth_failure("admin", "wrong password");
        // No WWW-Authenticate challenge: the dashboard has its own login form.
        return (StatusCode::UNAUTHORIZED, "wrong admin password\n").into_response();
    }
    if method == "recent" {
        let events = crate::metrics::recent_events();
        return axum::Json(serde_json::json!({ "result": { "events": events } })).into_response();
    }
    respond(&state.node, &method, &body).await
}
