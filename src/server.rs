//! The HTTP server: builds the hub from settings, routes requests, and shuts
//! down gracefully.
//!
//! Shutdown order matters for "nothing acknowledged is lost": stop
//! accepting, end every event stream (clients reconnect elsewhere or later
//! with their last id), let in-flight publishes finish, drain the hub's log
//! into history, close history.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api::mercure::{self, MercureState};
use crate::centrifugo::Node;
use crate::config::Settings;
use crate::history::{disk::DiskHistory, memory::MemoryHistory, History};
use crate::hub::Hub;
use crate::transport::websocket::{self, WsState};

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
    Ok(if settings.disk_history {
        Arc::new(DiskHistory::open(
            &settings.data_dir,
            settings.retention.clone(),
        )?)
    } else {
        Arc::new(MemoryHistory::new(settings.retention.clone()))
    })
}

/// Builds the router for a hub: the Mercure endpoints, the Centrifugo
/// WebSocket endpoint and server API, health and the index page.
pub fn router(mercure: Arc<MercureState>, ws: Arc<WsState>, cors_origins: &[String]) -> Router {
    let centrifugo = Router::new()
        .route("/api/{method}", post(crate::api::centrifugo::handle))
        .with_state(ws.node.clone())
        .merge(
            Router::new()
                .route("/connection/websocket", get(websocket::upgrade))
                .with_state(ws),
        );
    let hub_path = mercure.hub_path().to_owned();
    let router = Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
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
        .with_state(mercure)
        .merge(centrifugo);
    match cors(cors_origins) {
        Some(layer) => router.layer(layer),
        None => router,
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

async fn index() -> Html<&'static str> {
    Html(include_str!("web/index.html"))
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
    let history = open_history(&settings)?;
    let hub = Hub::start(history, settings.hub.clone());
    let shutdown = CancellationToken::new();
    let mercure = MercureState::new(hub.clone(), settings.mercure.clone(), shutdown.clone())
        .map_err(ServerError::Setup)?;
    let node = Node::new(hub.clone(), settings.centrifugo.clone()).map_err(ServerError::Setup)?;
    let ws = Arc::new(WsState {
        node,
        shutdown: shutdown.clone(),
    });
    let app = router(mercure, ws, &settings.mercure.cors_origins);
    on_bound(addr);
    tracing::info!(%addr, hub = %settings.mercure.hub_url, disk = settings.disk_history, "listening");

    let stop = shutdown.clone();
    let grace = settings.shutdown_grace;
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        signal.await;
        tracing::info!("shutting down: ending streams, finishing publishes");
        stop.cancel();
    });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        r = &mut server => r?,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("connections still open after the grace period; closing them");
        }
    }
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
