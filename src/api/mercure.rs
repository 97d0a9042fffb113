//! The Mercure hub endpoints.
//!
//! `GET|QUERY {hub}` subscribes (SSE), `POST {hub}` publishes,
//! `GET {hub}/subscriptions…` lists active subscriptions, and
//! `GET /.well-known/oauth-protected-resource{hub path}` describes the hub
//! as an OAuth protected resource. Errors follow RFC 6750 (401/403 with a
//! `WWW-Authenticate: Bearer` challenge) and the draft (400, 413).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::auth::grants::DETAIL_TYPE;
use crate::auth::{AuthError, Grants, Role, Verifier};
use crate::history::{Draft, Publication};
use crate::hub::{Filter, Hub};
use crate::integration::proxy::{Decision, Proxy};
use crate::integration::webhooks::{Event, EventKind, Webhooks};
use crate::limits::KeyedRateLimiter;
use crate::mercure::replay::{Replay, Start};
use crate::mercure::settings::MercureSettings;
use crate::protocol::mercure::matcher::{MatcherType, TopicMatcher};
use crate::protocol::mercure::request::{self, RequestError};
use crate::protocol::mercure::subscription::{self, SubscriptionDoc};
use crate::protocol::mercure::{form, EARLIEST, RESERVED_EVENT_TYPE};
use crate::transport::live::LiveBody;
use crate::transport::mercure::{EventStream, StreamOptions};
use crate::transport::origin;

/// Legacy cookie name of pre-standardization hubs.
const LEGACY_COOKIE: &str = "mercureAuthorization";

/// One active subscription, as the subscriptions API reports it.
#[derive(Debug, Clone)]
struct Active {
    match_type: MatcherType,
    matcher: String,
    payload: Option<Value>,
}

/// Shared state of the Mercure endpoints.
pub struct MercureState {
    hub: Arc<Hub>,
    proxy: Arc<Proxy>,
    webhooks: Arc<Webhooks>,
    verifier: Verifier,
    settings: MercureSettings,
    active: Mutex<HashMap<String, Vec<Active>>>,
    api_rate: Arc<KeyedRateLimiter>,
}

impl MercureState {
    /// Builds the state from validated settings.
    pub fn new(
        hub: Arc<Hub>,
        settings: MercureSettings,
        proxy: Arc<Proxy>,
        webhooks: Arc<Webhooks>,
        api_rate: Arc<KeyedRateLimiter>,
    ) -> Result<Arc<Self>, String> {
        let key = |m: &str| crate::auth::jwt::TrustedKey::new(m, settings.algorithm);
        let verifier = Verifier {
            publisher: vec![key(&settings.publisher_key)?],
            subscriber: vec![key(&settings.subscriber_key)?],
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            legacy: settings.compat,
            hub: settings.hub_url.clone(),
            limits: Default::default(),
        };
        Ok(Arc::new(MercureState {
            hub,
            proxy,
            webhooks,
            verifier,
            settings,
            active: Mutex::new(HashMap::new()),
            api_rate,
        }))
    }

    /// The validated Mercure settings.
    pub fn settings(&self) -> &MercureSettings {
        &self.settings
    }

    /// The hub URL's path (`/.well-known/mercure` by default).
    pub fn hub_path(&self) -> &str {
        self.settings.hub_url.path()
    }

    /// Path of the protected resource metadata document (RFC 9728).
    pub fn metadata_path(&self) -> String {
        format!("/.well-known/oauth-protected-resource{}", self.hub_path())
    }

    fn metadata_url(&self) -> String {
        let mut u = self.settings.hub_url.clone();
        u.set_path(&self.metadata_path());
        u.set_query(None);
        u.to_string()
    }
}

/// An error response of the Mercure endpoints.
#[derive(Debug)]
pub enum MercureError {
    /// Authorization failure (RFC 6750).
    Auth(AuthError),
    /// Malformed or oversized request.
    Request(RequestError),
    /// Wrong media type for a publish.
    UnsupportedMediaType,
    /// The hub cannot serve the request now.
    Unavailable(String),
    /// No such resource.
    NotFound,
    /// The authorization hook refused.
    Refused(String),
    /// The publisher's credential is over `limits.api_publish_rate`.
    TooManyRequests,
}

impl From<AuthError> for MercureError {
    fn from(e: AuthError) -> Self {
        MercureError::Auth(e)
    }
}

impl From<RequestError> for MercureError {
    fn from(e: RequestError) -> Self {
        MercureError::Request(e)
    }
}

fn plain(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

impl MercureError {
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

/// Where a request's token came from.
#[derive(Debug, PartialEq, Eq)]
enum TokenSource {
    Header,
    Cookie,
    Query,
}

/// Finds the token: the `Authorization` header wins over cookies (which are
/// ambient), then the legacy `authorization` query parameter.
fn find_token(
    headers: &HeaderMap,
    state: &MercureState,
    query_token: Option<String>,
) -> Result<Option<(String, TokenSource)>, AuthError> {
    if let Some(given) = super::authorization(headers) {
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
fn legacy_query_token(state: &MercureState, uri: &axum::http::Uri) -> Option<String> {
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
struct PrivateFilter(Option<Arc<Grants>>);

impl Filter for PrivateFilter {
    fn admits(&self, p: &Publication) -> bool {
        !p.draft.private || self.0.as_ref().is_some_and(|g| g.may_read(p.topics()))
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

/// Publishes the subscription events of a new connection and returns a
/// guard that, when the stream ends, publishes their `active: false`
/// counterparts and removes them from the subscriptions API.
fn announce(
    state: &Arc<MercureState>,
    subscriber: &str,
    matchers: &[TopicMatcher],
    grants: Option<&Grants>,
) -> SubscriptionGuard {
    let active: Vec<Active> = matchers
        .iter()
        .map(|m| Active {
            match_type: m.kind(),
            matcher: m.raw().to_owned(),
            payload: grants.and_then(|g| g.payload_for(m.raw())).cloned(),
        })
        .collect();
    state
        .active
        .lock()
        .insert(subscriber.to_owned(), active.clone());
    publish_events(state, subscriber, &active, true);
    SubscriptionGuard {
        state: state.clone(),
        subscriber: subscriber.to_owned(),
    }
}

fn publish_events(state: &Arc<MercureState>, subscriber: &str, active: &[Active], is_active: bool) {
    let drafts: Vec<Draft> = active
        .iter()
        .map(|a| {
            let doc = SubscriptionDoc {
                hub_path: state.hub_path(),
                match_type: a.match_type,
                matcher: &a.matcher,
                subscriber,
                active: is_active,
                payload: a.payload.as_ref(),
            };
            Draft {
                channel: doc.topic(),
                alternates: Vec::new(),
                id: format!("urn:uuid:{}", uuid::Uuid::new_v4()),
                data: Bytes::from(doc.to_json().to_string()),
                event_type: Some(RESERVED_EVENT_TYPE.to_owned()),
                retry: None,
                private: true,
                info: None,
                tags: Default::default(),
            }
        })
        .collect();
    let hub = state.hub.clone();
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            for d in drafts {
                if let Err(e) = hub.publish(d).await {
                    tracing::debug!(error = %e, "subscription event not published");
                }
            }
        });
    }
}

struct SubscriptionGuard {
    state: Arc<MercureState>,
    subscriber: String,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        let removed = self.state.active.lock().remove(&self.subscriber);
        if let Some(active) = removed {
            publish_events(&self.state, &self.subscriber, &active, false);
        }
    }
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
async fn ask_hook(
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

/// Emits a Mercure subscriber's connect and subscribe events; the returned
/// guard emits unsubscribe and disconnect when the stream ends.
fn tell_webhooks(
    state: &MercureState,
    subscriber: &str,
    matchers: &[TopicMatcher],
    grants: Option<&Grants>,
) -> Option<WebhookGuard> {
    let w = &state.webhooks;
    if ![
        EventKind::Connect,
        EventKind::Subscribe,
        EventKind::Unsubscribe,
        EventKind::Disconnect,
    ]
    .into_iter()
    .any(|k| w.wants(k))
    {
        return None;
    }
    let guard = WebhookGuard {
        webhooks: w.clone(),
        client: subscriber.to_owned(),
        user: grants.and_then(|g| g.subject.clone()).unwrap_or_default(),
        selectors: matchers.iter().map(|m| m.raw().to_owned()).collect(),
    };
    w.emit(guard.event(EventKind::Connect, ""));
    for selector in &guard.selectors {
        w.emit(guard.event(EventKind::Subscribe, selector));
    }
    Some(guard)
}

struct WebhookGuard {
    webhooks: Arc<Webhooks>,
    client: String,
    user: String,
    selectors: Vec<String>,
}

impl WebhookGuard {
    fn event(&self, kind: EventKind, channel: &str) -> Event {
        let mut e = Event::new(kind);
        e.protocol = "mercure";
        e.transport = "sse";
        e.client.clone_from(&self.client);
        e.user.clone_from(&self.user);
        e.channel = channel.to_owned();
        e
    }
}

impl Drop for WebhookGuard {
    fn drop(&mut self) {
        for selector in &self.selectors {
            let mut e = self.event(EventKind::Unsubscribe, selector);
            e.reason = "disconnect".into();
            self.webhooks.emit(e);
        }
        let mut e = self.event(EventKind::Disconnect, "");
        e.reason = "stream closed".into();
        self.webhooks.emit(e);
    }
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
    let grants = state.verifier.verify(&token, Role::Subscriber)?;
    if !grants.may_read(std::iter::once(path.as_str())) {
        return Err(AuthError::InsufficientScope.into());
    }
    let base = format!("{}/subscriptions", state.hub_path());
    let rest = path.strip_prefix(&base).unwrap_or_default();
    let segments: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    // Which subscriptions the path selects, and whether it names one.
    let (kind, matcher, subscriber): (Option<MatcherType>, Option<&str>, Option<&str>) =
        match segments.as_slice() {
            [] => (None, None, None),
            [t, m] if MatcherType::from_draft_name(t).is_some() => {
                (MatcherType::from_draft_name(t), Some(m), None)
            }
            [t, m, s] if MatcherType::from_draft_name(t).is_some() => {
                (MatcherType::from_draft_name(t), Some(m), Some(s))
            }
            [m] if state.settings.compat => (Some(MatcherType::Legacy), Some(m), None),
            [m, s] if state.settings.compat => (Some(MatcherType::Legacy), Some(m), Some(s)),
            _ => return Err(MercureError::NotFound),
        };
    let last_event_id = state
        .hub
        .history()
        .last()
        .await
        .map_err(|e| MercureError::Unavailable(e.to_string()))?
        .map(|(_, id)| id)
        .unwrap_or_else(|| EARLIEST.to_owned());
    let docs: Vec<Value> = {
        let active = state.active.lock();
        let mut docs = Vec::new();
        for (sub_id, subs) in active.iter() {
            if subscriber.is_some_and(|s| s != sub_id) {
                continue;
            }
            for a in subs {
                if kind.is_some_and(|k| k != a.match_type)
                    || matcher.is_some_and(|m| m != a.matcher)
                {
                    continue;
                }
                docs.push(
                    SubscriptionDoc {
                        hub_path: state.hub_path(),
                        match_type: a.match_type,
                        matcher: &a.matcher,
                        subscriber: sub_id,
                        active: true,
                        payload: a.payload.as_ref(),
                    }
                    .to_json(),
                );
            }
        }
        docs
    };
    let legacy = kind == Some(MatcherType::Legacy);
    let body = if subscriber.is_some() {
        docs.into_iter().next().ok_or(MercureError::NotFound)?
    } else {
        subscription::collection(&path, legacy, &last_event_id, docs)
    };
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
