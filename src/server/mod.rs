//! The HTTP server: builds the hub from settings, routes requests, and shuts
//! down gracefully. [`listener`] accepts connections (TLS, HTTP versions,
//! timeouts, admission); [`tls`] holds the reloadable certificate.
//!
//! Shutdown order matters for "nothing acknowledged is lost": stop
//! accepting, end every event stream (clients reconnect elsewhere or later
//! with their last id), let in-flight publishes finish, drain the hub's log
//! into history, close history.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api::admin::AdminState;
use crate::api::mercure;
use crate::centrifugo::Node;
use crate::config::{Settings, Store};
use crate::history::{disk::DiskHistory, memory::MemoryHistory, History};
use crate::hub::Hub;
use crate::integration::proxy::Proxy;
use crate::integration::queue::{DiskQueue, EventQueue, MemoryQueue};
use crate::integration::webhooks::{Event, EventKind, Webhooks};
use crate::mercure::MercureState;
use crate::transport::{emulation, http_stream, websocket, CentrifugoState};
use crate::web;

mod http1;
pub mod listener;
pub mod tls;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// History could not be opened.
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    /// Invalid settings at run time.
    #[error("{0}")]
    Setup(String),
}

/// Opens the configured history.
pub fn open_history(settings: &Settings) -> Result<Arc<dyn History>, ServerError> {
    Ok(match settings.store {
        Store::Disk => Arc::new(DiskHistory::open(
            &settings.data_dir,
            settings.retention.clone(),
            settings.history_cache,
        )?),
        _ => Arc::new(MemoryHistory::new(settings.retention.clone())),
    })
}

/// Starts the hub on the configured store: one node's own history, or a
/// shared engine (Redis, NATS) that other nodes use too. Also returns where
/// webhook events wait: beside the history, or in the shared engine.
pub async fn start_hub(
    settings: &Settings,
) -> Result<(Arc<Hub>, Arc<dyn EventQueue>), ServerError> {
    let options = settings.cluster.clone();
    let engine = match &settings.store {
        Store::Redis(url) => crate::engine::redis::RedisEngine::connect(url, options).await,
        Store::Nats(url) => crate::engine::nats::NatsEngine::connect(url, options).await,
        Store::Disk | Store::Memory => {
            let queue: Arc<dyn EventQueue> = match settings.store {
                Store::Disk if !settings.webhooks.endpoints.is_empty() => Arc::new(
                    DiskQueue::open(&settings.data_dir)
                        .map_err(|e| ServerError::Setup(e.to_string()))?,
                ),
                _ => Arc::new(MemoryQueue::default()),
            };
            let hub = Hub::start(open_history(settings)?, settings.hub.clone())
                .await
                .map_err(|e| ServerError::Setup(format!("cannot read history: {e}")))?;
            return Ok((hub, queue));
        }
    }
    .map_err(|e| ServerError::Setup(format!("cannot reach the shared engine: {e}")))?;
    let queue = engine.events.clone();
    let hub = Hub::start_with_engine(engine, settings.hub.clone())
        .await
        .map_err(|e| ServerError::Setup(format!("cannot start on the shared engine: {e}")))?;
    Ok((hub, queue))
}

/// Starts webhook delivery and tells it when channels become occupied or
/// vacated (unless their namespace turned webhooks off).
fn start_webhooks(
    settings: &Settings,
    hub: &Hub,
    queue: Arc<dyn EventQueue>,
    node_name: &str,
) -> Arc<Webhooks> {
    let webhooks = Webhooks::start(settings.webhooks.clone(), queue, node_name.to_owned());
    if webhooks.wants(EventKind::Occupied) || webhooks.wants(EventKind::Vacated) {
        let weak = Arc::downgrade(&webhooks);
        let centrifugo = settings.centrifugo.clone();
        hub.on_occupancy(Box::new(move |channel, occupied| {
            let Some(webhooks) = weak.upgrade() else {
                return;
            };
            if centrifugo
                .namespace(channel)
                .is_some_and(|ns| !ns.webhooks_on())
            {
                return;
            }
            let mut e = Event::new(if occupied {
                EventKind::Occupied
            } else {
                EventKind::Vacated
            });
            e.channel = channel.to_owned();
            webhooks.emit(e);
        }));
    }
    webhooks
}

/// Builds the router for a hub: the Mercure endpoints, the Centrifugo
/// connection endpoints and server API, health, readiness, metrics and the
/// index page.
pub fn router(
    mercure: Arc<MercureState>,
    centrifugo: Arc<CentrifugoState>,
    admin: Arc<AdminState>,
    demo: bool,
) -> Router {
    let hub_path = mercure.hub_path().to_owned();
    let mercure_cors = cors(&mercure.settings().cors_origins);
    let mercure = Router::new()
        .route(&hub_path, any(mercure_entry))
        .route(
            &format!("{hub_path}/subscriptions"),
            get(mercure::subscriptions),
        )
        .route(
            &format!("{hub_path}/subscriptions/{{*rest}}"),
            get(mercure::subscriptions),
        )
        .route(&mercure.metadata_path(), get(mercure::metadata))
        .with_state(mercure);
    let node = centrifugo.node.clone();
    let connections = Router::new()
        .route(
            "/connection/websocket",
            get(websocket::bidirectional).connect(websocket::bidirectional),
        )
        .route(
            "/connection/uni_websocket",
            get(websocket::unidirectional).connect(websocket::unidirectional),
        )
        .route("/connection/http_stream", post(http_stream::http_stream))
        .route(
            "/connection/sse",
            get(http_stream::sse).post(http_stream::sse),
        )
        .route(
            "/connection/uni_http_stream",
            post(http_stream::uni_http_stream),
        )
        .route(
            "/connection/uni_sse",
            get(http_stream::uni_sse).post(http_stream::uni_sse),
        )
        .route("/emulation", post(emulation::handle))
        .with_state(centrifugo.clone());
    let api = Router::new()
        .route("/api/{method}", post(crate::api::centrifugo::handle))
        .route("/api", post(crate::api::centrifugo::handle_legacy))
        .with_state(node.clone());
    let operations = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(centrifugo);
    let mut pages = Router::new()
        .route("/", get(web::index))
        .route("/assets/{name}", get(web::asset));
    if demo {
        pages = pages.route(
            "/demo/session",
            get(crate::demo::session).with_state(node.clone()),
        );
    }
    let dashboard = Router::new()
        .route("/admin", get(admin_page))
        .route("/admin/api/{method}", post(crate::api::admin::handle))
        .with_state(admin);
    with_layer(mercure, mercure_cors)
        .merge(with_layer(
            connections,
            cors(&node.settings.allowed_origins),
        ))
        .merge(api)
        .merge(operations)
        .merge(pages)
        .merge(dashboard)
        .layer(middleware::from_fn(crate::metrics::track_http))
}

fn with_layer(router: Router, layer: Option<CorsLayer>) -> Router {
    match layer {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

/// `GET /readyz`: 200 when the store answers and the hub is not draining.
async fn readyz(State(state): State<Arc<CentrifugoState>>) -> Response {
    if state.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down\n").into_response();
    }
    let probe = state.node.hub.history().last();
    match tokio::time::timeout(std::time::Duration::from_secs(2), probe).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("history store unavailable: {e}\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "history store did not answer within 2 s\n",
        )
            .into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<Arc<CentrifugoState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&figures(&state.node)),
    )
        .into_response()
}

/// The hub's and the node's own counts, for `/metrics`.
fn figures(node: &crate::centrifugo::Node) -> crate::metrics::Figures {
    let hub = &node.hub;
    let stats = hub.stats();
    let (queued, deepest) = hub.queue_depths();
    let (clients, users) = node.counts();
    crate::metrics::Figures {
        publications: stats.publications,
        deliveries: stats.deliveries,
        drops: stats.drops,
        slow_disconnects: stats.slow_disconnects,
        subscriptions: stats.subscribers,
        channels: hub.channel_count(),
        queued,
        deepest,
        clients,
        users,
    }
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let query = Method::from_bytes(b"QUERY").ok()?;
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, query])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CACHE_CONTROL,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([
            header::LINK,
            header::WWW_AUTHENTICATE,
            HeaderName::from_static("mercure-last-event-id"),
            HeaderName::from_static("last-event-id"),
        ]);
    Some(if origins.iter().any(|o| o == "*") {
        // A wildcard never goes with credentials.
        layer.allow_origin(AllowOrigin::any())
    } else {
        let list: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
        layer
            .allow_origin(AllowOrigin::list(list))
            .allow_credentials(true)
    })
}

async fn mercure_entry(state: State<Arc<MercureState>>, req: Request) -> Response {
    match req.method().as_str() {
        "GET" | "QUERY" => mercure::subscribe(state, req).await,
        "POST" => mercure::publish(state, req).await,
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, QUERY, POST")],
            "use GET or QUERY to subscribe, POST to publish\n",
        )
            .into_response(),
    }
}

/// `GET /admin`: the dashboard, when a password is configured.
async fn admin_page(State(admin): State<Arc<AdminState>>) -> Response {
    match admin.password {
        Some(_) => Html(web::ADMIN).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "the admin dashboard is off: set admin.password to turn it on\n",
        )
            .into_response(),
    }
}

/// Runs the hub until `signal` resolves, then shuts down gracefully.
/// `on_bound` is told the address actually bound (useful with port 0).
pub async fn serve(
    settings: Settings,
    signal: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let mut settings = settings;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: settings.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    settings.mercure.resolve_port(addr.port());
    let (hub, queue) = start_hub(&settings).await?;
    let node_name = format!(
        "tidings-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let webhooks = start_webhooks(&settings, &hub, queue, &node_name);
    let proxy = Arc::new(Proxy::new(settings.proxy.clone()));
    let shutdown = CancellationToken::new();
    let api_rate = Arc::new(crate::limits::KeyedRateLimiter::new(
        settings.limits.api_publish_rate,
    ));
    let mercure = MercureState::new(
        hub.clone(),
        settings.mercure.clone(),
        proxy.clone(),
        webhooks.clone(),
        api_rate.clone(),
    )
    .map_err(ServerError::Setup)?;
    let node = Node::new(
        hub.clone(),
        settings.centrifugo.clone(),
        node_name,
        proxy,
        webhooks.clone(),
        settings.limits.clone(),
        api_rate,
    )
    .map_err(ServerError::Setup)?;
    let live = node.clone();
    let draining = CancellationToken::new();
    let centrifugo = Arc::new(CentrifugoState {
        node,
        draining: draining.clone(),
    });
    crate::metrics::install();
    crate::metrics::spawn_upkeep();
    let admin = Arc::new(AdminState {
        node: centrifugo.node.clone(),
        password: settings.admin_password.clone(),
    });
    if settings.demo {
        tokio::spawn(crate::demo::run_ticker(hub.clone(), shutdown.clone()));
    }
    let app = router(mercure, centrifugo, admin, settings.demo);
    let tls = match &settings.tls {
        Some(files) => {
            let cert = tls::ReloadingCert::new(files.clone())
                .map_err(|e| ServerError::Setup(format!("TLS: {e}")))?;
            cert.reload_on_sighup();
            Some(
                cert.acceptor()
                    .map_err(|e| ServerError::Setup(format!("TLS: {e}")))?,
            )
        }
        None => None,
    };
    on_bound(addr);
    tracing::info!(%addr, hub = %settings.mercure.hub_url, store = ?settings.store, tls = tls.is_some(), "listening");

    let stop_accepting = CancellationToken::new();
    let stop = stop_accepting.clone();
    let streams = shutdown.clone();
    let stopping_hub = hub.clone();
    let drain = settings.shutdown_drain;
    tokio::spawn(async move {
        signal.await;
        draining.cancel();
        if !drain.is_zero() {
            tracing::info!(?drain, "draining: /readyz reports 503, still serving");
            tokio::time::sleep(drain).await;
        }
        tracing::info!("shutting down: ending streams, finishing publishes");
        streams.cancel();
        stopping_hub.stop_streams();
        stop.cancel();
    });
    let connections = listener::serve(listener, tls, &settings.limits, app, stop_accepting).await;
    let grace = settings.shutdown_grace;
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; closing them");
    }
    // Upgraded connections (WebSocket) outlive the HTTP server: wait for
    // their sessions to end, so their disconnect events are queued.
    let _ = tokio::time::timeout(grace, async {
        while live.counts().0 > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    webhooks.shutdown().await;
    hub.shutdown().await;
    tracing::info!("history flushed; bye");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that arrives
/// right after start-up still shuts down gracefully instead of killing the
/// process. Must be called inside the Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
