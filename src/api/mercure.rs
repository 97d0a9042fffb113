//! The Mercure hub endpoints.
//!
//! `GET|QUERY {hub}` subscribes (SSE), `POST {hub}` publishes,
//! `GET {hub}/subscriptions…` lists active subscriptions, and
//! `GET /.well-known/oauth-protected-resource{hub path}` describes the hub
//! as an OAuth protected resource. Errors follow RFC 6750 (401/403 with a
//! `WWW-Authenticate: Bearer` challenge) and the draft (400, 413). What
//! each request means is `crate::mercure`; a subscriber's stream runs on
//! the pump (`transport::mercure`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::grants::DETAIL_TYPE;
use crate::auth::{AuthError, Role};
use crate::history::Draft;
use crate::hub::Filter;
use crate::mercure::auth::{ask_hook, find_token, legacy_query_token, PrivateFilter, TokenSource};
use crate::mercure::events::{announce, tell_webhooks};
use crate::mercure::replay::{Replay, Start};
use crate::mercure::{subscriptions as subscription_api, MercureError, MercureState};
use crate::protocol::mercure::request::{self, RequestError};
use crate::protocol::mercure::{form, EARLIEST};
use crate::transport::live::LiveBody;
use crate::transport::mercure::{EventStream, StreamOptions};
use crate::transport::origin;

fn plain(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

/// The answer to a refused request.
trait IntoMercureResponse {
    fn into_response_for(self, state: &MercureState) -> Response;
}

impl IntoMercureResponse for MercureError {
    fn into_response_for(self, state: &MercureState) -> Response {
        let challenge = |error: Option<&str>| {
            let mut c = String::from("Bearer");
            if let Some(e) = error {
                c.push_str(&format!(" error=\"{e}\","));
            }
            c.push_str(&format!(" resource_metadata=\"{}\"", state.metadata_url()));
            HeaderValue::from_str(&c).unwrap_or(HeaderValue::from_static("Bearer"))
        };
        if let MercureError::Auth(e) = &self {
            crate::metrics::auth_failure(
                "mercure",
                match e {
                    AuthError::Missing => "missing token",
                    AuthError::InvalidToken(_) => "invalid token",
                    AuthError::InvalidRequest(_) => "invalid request",
                    AuthError::InsufficientScope => "insufficient scope",
                },
            );
        }
        let (status, error, message) = match self {
            MercureError::Auth(AuthError::Missing) => (
                StatusCode::UNAUTHORIZED,
                None,
                "an access token is required".to_owned(),
            ),
            MercureError::Auth(AuthError::InvalidToken(reason)) => {
                tracing::info!(%reason, "invalid token");
                (
                    StatusCode::UNAUTHORIZED,
                    Some("invalid_token"),
                    "invalid access token".to_owned(),
                )
            }
            MercureError::Auth(AuthError::InvalidRequest(m)) => {
                (StatusCode::BAD_REQUEST, Some("invalid_request"), m)
            }
            MercureError::Auth(AuthError::InsufficientScope) => (
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                "the access token does not allow this operation".to_owned(),
            ),
            MercureError::Request(RequestError::BadRequest(m)) => {
                return plain(StatusCode::BAD_REQUEST, m)
            }
            MercureError::Request(RequestError::TooLarge(m)) => {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, m)
            }
            MercureError::UnsupportedMediaType => {
                return plain(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "publish requests must be application/x-www-form-urlencoded".into(),
                )
            }
            MercureError::Unavailable(m) => return plain(StatusCode::SERVICE_UNAVAILABLE, m),
            MercureError::NotFound => {
                return plain(StatusCode::NOT_FOUND, "no such subscription".into())
            }
            MercureError::Refused(m) => return plain(StatusCode::FORBIDDEN, m),
            MercureError::TooManyRequests => {
                let mut res = plain(
                    StatusCode::TOO_MANY_REQUESTS,
                    "publish rate limit exceeded for this credential (limits.api_publish_rate)"
                        .into(),
                );
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return res;
            }
        };
        let mut res = plain(status, message);
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge(error));
        res
    }
}

/// `GET|QUERY {hub}`: opens an event stream.
pub async fn subscribe(State(state): State<Arc<MercureState>>, req: Request) -> Response {
    match subscribe_inner(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response_for(&state),
    }
}

async fn subscribe_inner(
    state: &Arc<MercureState>,
    req: Request,
) -> Result<Response, MercureError> {
    let (parts, body) = req.into_parts();
    let bad = |e: form::FormError| MercureError::Request(RequestError::BadRequest(e.to_string()));
    let query = form::parse(parts.uri.query().unwrap_or("").as_bytes()).map_err(bad)?;
    let body_pairs = if parts.method == Method::GET {
        Vec::new()
    } else {
        let limit = state.settings.max_body;
        let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
            RequestError::BadRequest(format!("the request body is over {limit} bytes"))
        })?;
        form::parse(&bytes).map_err(bad)?
    };
    let s = &state.settings;
    // Patterns cost a stranger's request most (compiling them): without a
    // token, fewer are allowed.
    let tokenless = find_token(&parts.headers, state, None)?.is_none()
        && !(s.compat && query.iter().any(|(k, _)| k == "authorization"));
    let mut limits = s.limits.clone();
    if tokenless {
        limits.max_patterns = limits.max_patterns.min(s.max_anonymous_patterns);
    }
    let req = request::parse_subscribe(query, body_pairs, &s.hub_url, s.compat, &limits)?;

    let grants = match find_token(&parts.headers, state, req.legacy_token.clone())? {
        Some((token, _)) => Some(Arc::new(state.verifier.verify(&token, Role::Subscriber)?)),
        None if state.proxy.settings.mercure.is_some() => {
            let topics = req.matchers.iter().map(|m| m.raw().to_owned()).collect();
            Some(Arc::new(
                ask_hook(state, "subscribe", topics, false, &parts.headers).await?,
            ))
        }
        None if s.anonymous => None,
        None => return Err(AuthError::Missing.into()),
    };
    let header_cursor = parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let cursor = header_cursor.or(req.last_event_id);

    let filter: Arc<dyn Filter> = Arc::new(PrivateFilter(grants.clone()));
    let subscription = state.hub.subscribe(req.matchers.clone(), filter.clone());
    let (replay, response_cursor) = match cursor {
        None => (None, None),
        Some(cursor) => {
            let history = state.hub.history().clone();
            let upto = subscription.handle.snapshot_seq;
            match Replay::start(history, &req.matchers, filter, &cursor, upto).await {
                Ok(Start::From(replay)) => (Some(replay), Some(cursor)),
                Ok(Start::Lost) => (None, Some(EARLIEST.to_owned())),
                Err(e) => return Err(MercureError::Unavailable(e.to_string())),
            }
        }
    };

    let subscriber = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let announced = s
        .subscriptions
        .then(|| announce(state, &subscriber, &req.matchers, grants.as_deref()));
    let told = tell_webhooks(state, &subscriber, &req.matchers, grants.as_deref());
    let guard = Some(Box::new((announced, told)) as Box<dyn Send + Sync>);
    let now = tokio::time::Instant::now();
    let token_deadline = grants.as_ref().and_then(|g| g.expires_at).map(|exp| {
        now + std::time::Duration::from_secs(exp.saturating_sub(crate::time::now_secs()))
    });
    let lifetime_deadline = s.max_lifetime.map(|d| now + d);
    let deadline = match (token_deadline, lifetime_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let sink = subscription.sink;
    let stream = EventStream::new(
        subscription.handle,
        replay,
        StreamOptions {
            heartbeat: s.heartbeat,
            retry: s.sse_retry,
            deadline,
        },
        guard,
    );
    let mut res =
        LiveBody::response(move |body| crate::transport::mercure::run(stream, sink, body));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(c) = response_cursor.and_then(|c| HeaderValue::from_str(&c).ok()) {
        if s.compat {
            h.insert("last-event-id", c.clone());
        }
        h.insert("mercure-last-event-id", c);
    }
    Ok(res)
}

/// `POST {hub}`: publishes an update.
pub async fn publish(State(state): State<Arc<MercureState>>, req: Request) -> Response {
    match publish_inner(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response_for(&state),
    }
}

async fn publish_inner(state: &Arc<MercureState>, req: Request) -> Result<Response, MercureError> {
    let (parts, body) = req.into_parts();
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(MercureError::UnsupportedMediaType);
        }
    }
    let query_token = legacy_query_token(state, &parts.uri);
    let grants = match find_token(&parts.headers, state, query_token)? {
        Some((token, source)) => {
            let grants = state.verifier.verify(&token, Role::Publisher)?;
            if !state.api_rate.allow(&token) {
                return Err(MercureError::TooManyRequests);
            }
            let own = state.settings.hub_url.origin().ascii_serialization();
            let trusted = origin::is_trusted(&parts.headers, &own, &state.settings.cors_origins);
            if source == TokenSource::Cookie && !trusted {
                // Cookie-authenticated publishing is a CSRF target.
                return Err(AuthError::InsufficientScope.into());
            }
            Some(grants)
        }
        // The hook decides, once the request is read.
        None if state.proxy.settings.mercure.is_some() => None,
        None => return Err(AuthError::Missing.into()),
    };
    let limit = state.settings.max_body;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| RequestError::TooLarge(format!("the request body is over {limit} bytes")))?;
    let pairs = form::parse(&bytes).map_err(|e| RequestError::BadRequest(e.to_string()))?;
    let s = &state.settings;
    let update = request::parse_publish(pairs, &s.hub_url, &s.limits)?;
    match grants {
        Some(g) if !g.may_publish(update.topics.iter().map(String::as_str)) => {
            return Err(AuthError::InsufficientScope.into())
        }
        Some(_) => {}
        None => {
            ask_hook(
                state,
                "publish",
                update.topics.clone(),
                update.private,
                &parts.headers,
            )
            .await?;
        }
    }
    let mut topics = update.topics.into_iter();
    let channel = topics.next().unwrap_or_default();
    let draft = Draft {
        channel,
        alternates: topics.collect(),
        id: update
            .id
            .unwrap_or_else(|| format!("urn:uuid:{}", uuid::Uuid::new_v4())),
        data: Bytes::from(update.data),
        event_type: update.event_type,
        retry: update.retry,
        private: update.private,
        info: None,
        tags: Default::default(),
    };
    let p = state
        .hub
        .publish(draft)
        .await
        .map_err(|e| MercureError::Unavailable(e.to_string()))?;
    Ok(plain_id(p.id()))
}

fn plain_id(id: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        id.to_owned(),
    )
        .into_response()
}

/// `GET {hub}/subscriptions[/…]`: the subscriptions API.
pub async fn subscriptions(State(state): State<Arc<MercureState>>, req: Request) -> Response {
    match subscriptions_inner(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response_for(&state),
    }
}

async fn subscriptions_inner(
    state: &Arc<MercureState>,
    req: Request,
) -> Result<Response, MercureError> {
    if !state.settings.subscriptions {
        return Err(MercureError::NotFound);
    }
    let path = req.uri().path().to_owned();
    let query_token = legacy_query_token(state, req.uri());
    let (token, _) = find_token(req.headers(), state, query_token)?.ok_or(AuthError::Missing)?;
    let (body, last_event_id) = subscription_api::document(state, &path, &token).await?;
    let link = format!(
        "<{}>; rel=\"mercure\"; last-event-id=\"{}\"; type=\"mercure\"; content-type=\"application/json\"",
        state.settings.hub_url,
        last_event_id.replace('"', "%22")
    );
    let mut res = (StatusCode::OK, axum::Json(body)).into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&link) {
        h.insert(header::LINK, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", last_event_id.replace('"', "%22"))) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("must-revalidate"),
    );
    Ok(res)
}

/// `GET /.well-known/oauth-protected-resource{hub}` (RFC 9728).
pub async fn metadata(State(state): State<Arc<MercureState>>) -> Response {
    let s = &state.settings;
    let mut doc = json!({
        "resource": s.audience,
        "authorization_details_types_supported": [DETAIL_TYPE],
        "bearer_methods_supported": ["header"],
        "mercure_cookie": s.cookie_name,
        "mercure_matcher_types_supported": ["exact", "urlpattern"],
    });
    if s.subscriptions {
        doc["mercure_subscriptions"] = json!(true);
    }
    axum::Json(doc).into_response()
}
