//! # tidings — a real-time hub
//!
//! Applications publish to channels; browsers and services receive the
//! publications live. This crate is laid out along the data path of a
//! publication (see DESIGN.md):
//!
//! ```text
//! POST /.well-known/mercure            api::mercure::publish
//!  (or POST /api/publish, WS publish)  api::centrifugo, centrifugo::session
//!   → decode + validate the form       protocol::mercure::{form, request}
//!   → verify the token, check rights   auth::{jwt, grants}
//!   → append to history (positions)    hub::Hub::publish → history::History::append
//!   → fan out to matching subscribers  hub (index, bounded queues, slow consumers)
//!   → encode once per wire format      hub::Publication::sse → protocol::sse
//!     and per Centrifugo encoding      hub::Publication::centrifuge_push
//!   → write to each connection         transport::sse::EventStream, transport::websocket
//!     (a busy one once per clock tick) hub::clock
//! ```
//!
//! - [`protocol`]: pure codecs (no I/O): where bytes become requests and
//!   publications become bytes.
//! - [`transport`]: the Mercure SSE response body; the Centrifugo
//!   transports (WebSocket, HTTP streaming, SSE, their unidirectional forms,
//!   and `/emulation` for the commands of emulated connections).
//! - [`centrifugo`]: Centrifugo client sessions (commands in, replies and
//!   pushes out), the connection loop shared by every transport, and the
//!   node registry the server API reaches them through.
//! - [`hub`]: channels, fan-out, the publish pipeline.
//! - [`history`]: the `History` trait, memory and disk (redb) stores.
//! - [`engine`]: Redis and NATS, shared by many nodes: history, fan-out
//!   between nodes, presence.
//! - [`integration`]: the application's part: proxies (the backend decides
//!   on connect, subscribe, publish, RPC…) and webhooks (it is told what
//!   happened), with their durable event queues.
//! - [`auth`]: JWT verification and Mercure grants.
//! - [`api`]: the HTTP endpoints (Mercure, Centrifugo server API).
//! - [`config`]: file + env + flags, validated once.
//! - [`server`]: accepting connections (TCP, TLS with reload, HTTP/1.1,
//!   HTTP/2 and h2c, header and idle timeouts), routing, start and graceful
//!   shutdown, `/readyz`.
//! - [`limits`]: connection admission and publish rate limits.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`web`], [`demo`]: the demo page and admin dashboard, the demo ticker.
//! - [`cli`]: the `publish`, `subscribe` and `token` subcommands.

pub mod api;
pub mod auth;
pub mod bench;
pub mod centrifugo;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod history;
pub mod hub;
pub mod integration;
pub mod limits;
pub mod mercure;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod time;
pub mod transport;
pub mod web;
