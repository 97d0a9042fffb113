//! The demo behind the index page (`demo = true`, the default of a
//! zero-config run): a stock ticker published on `demo:ticker` four times a
//! second, and `GET /demo/session` handing the page a Centrifugo connection
//! token for the chat. The page itself is in `src/web/`.
//!
//! Ticker publications go through the hub like any other, so the page can
//! receive the same ones over SSE (Mercure, topic `demo:ticker`) and over
//! WebSocket (Centrifugo, channel `demo:ticker`) and compare them. Each
//! carries `seq` (to spot gaps and repeats) and `sent` (milliseconds since
//! the Unix epoch, for the latency meter).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::centrifugo::Node;
use crate::history::Draft;
use crate::hub::Hub;
use crate::time::now_ms;

/// The ticker's channel (and Mercure topic).
pub const TICKER: &str = "demo:ticker";

/// How often the ticker publishes.
const TICK: Duration = Duration::from_millis(250);

/// The instruments of the ticker and their opening prices.
const INSTRUMENTS: &[(&str, f64)] = &[
    ("TDNG", 142.10),
    ("SSE", 87.35),
    ("WSKT", 64.80),
    ("MRCR", 212.55),
    ("CFGO", 31.20),
];

/// A small deterministic random walk (xorshift), enough for a demo.
struct Walk(u64);

impl Walk {
    /// A step in [-0.5%, +0.5%].
    fn step(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 % 10_001) as f64 / 10_000.0 - 0.5) / 100.0
    }
}

/// Publishes the ticker until `shutdown`.
pub async fn run_ticker(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut walk = Walk(now_ms() | 1);
    let mut prices: Vec<f64> = INSTRUMENTS.iter().map(|(_, p)| *p).collect();
    let mut tick = tokio::time::interval(TICK);
    for seq in 1u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let quotes: Vec<_> = INSTRUMENTS
            .iter()
            .zip(prices.iter_mut())
            .map(|((symbol, _), price)| {
                let change = *price * walk.step();
                *price = (*price + change).max(1.0);
                json!({ "symbol": symbol, "price": (*price * 100.0).round() / 100.0, "change": (change * 100.0).round() / 100.0 })
            })
            .collect();
        let data = json!({ "seq": seq, "sent": now_ms(), "quotes": quotes });
        let draft = Draft {
            channel: TICKER.into(),
            alternates: Vec::new(),
            id: format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            data: data.to_string().into(),
            event_type: None,
            retry: None,
            private: false,
            info: None,
            tags: Default::default(),
        };
        if hub.publish(draft).await.is_err() {
            return; // the hub is shutting down
        }
    }
}

/// `?name=` of `/demo/session`.
#[derive(serde::Deserialize)]
pub struct SessionQuery {
    name: String,
}

/// `GET /demo/session?name=…`: a Centrifugo connection token for the chat
/// (user = the name, valid a day). Only exists in demo mode, which only
/// runs with the development keys on a loopback address by default.
pub async fn session(State(node): State<Arc<Node>>, Query(q): Query<SessionQuery>) -> Response {
    let name: String = q.name.trim().chars().take(32).collect();
    if name.is_empty() || name.chars().any(char::is_control) {
        return (
            StatusCode::BAD_REQUEST,
            "name: 1 to 32 printable characters\n",
        )
            .into_response();
    }
    let claims = json!({
        "sub": name,
        "exp": now_ms() / 1000 + 24 * 3600,
        "info": { "name": name },
    });
    let s = &node.settings;
    match crate::auth::jwt::mint(&claims, &s.token_key, s.token_algorithm, false) {
        Ok(token) => axum::Json(json!({ "user": name, "token": token })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_stays_within_half_a_percent() {
        let mut walk = Walk(42);
        for _ in 0..10_000 {
            let s = walk.step();
            assert!((-0.005..=0.005).contains(&s), "{s}");
        }
    }
}
