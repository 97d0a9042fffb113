//! The pages the binary serves: the demo at `/`, the admin dashboard at
//! `/admin`, and their scripts and styles under `/assets/`. Everything is
//! compiled in (no build step, no CDN): a machine with no internet access
//! shows the same pages.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

/// The demo page.
pub const INDEX: &str = include_str!("index.html");
/// The admin dashboard.
pub const ADMIN: &str = include_str!("admin.html");

/// `(name, content type, content)` of every asset.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("app.css"),
    ),
    (
        "client.js",
        "text/javascript; charset=utf-8",
        include_str!("client.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_str!("chart.js"),
    ),
    (
        "demo.js",
        "text/javascript; charset=utf-8",
        include_str!("demo.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_str!("admin.js"),
    ),
];

/// `GET /`.
pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

/// `GET /assets/{name}`.
pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}
