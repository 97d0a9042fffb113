//! # tidings — a real-time hub
//!
//! Applications publish to channels; browsers and services receive the
//! publications live, over Mercure (SSE) and the Centrifugo protocol
//! (WebSocket, HTTP streaming, SSE). This crate is laid out along the data
//! path of a publication, in layers that only point down:
//!
//! ```text
//! POST /.well-known/mercure            api::mercure → mercure::events
//!  (or POST /api/publish, WS publish)  api::centrifugo, centrifugo::session
//!   → decode + validate the form       protocol::mercure::{form, request}
//!   → verify the token, check rights   auth::{jwt, grants}, mercure::auth
//!   → append to history (positions)    hub::Hub::publish → history::History::append
//!   → fan out to matching subscribers  hub::index (bounded queues: hub::sink)
//!   → encode once per wire format      mercure::event, centrifugo::encode
//!     (cached on the publication)      history::Publication
//!   → write to each connection         transport::pump (one loop), transport::writer
//!     (a busy one once per clock tick) hub::clock
//! ```
//!
//! From the bottom up:
//!
//! - [`protocol`]: pure codecs (no I/O): where bytes become requests and
//!   publications become bytes. Fuzzed.
//! - [`history`]: publications and the `History` trait, memory and disk
//!   (redb) stores. [`engine`]: Redis and NATS, shared by many nodes:
//!   history, fan-out between nodes, presence.
//! - [`hub`]: channels, fan-out, presence, the publish pipeline. Knows no
//!   protocol: what it carries for one (controls) is opaque bytes.
//! - [`mercure`], [`centrifugo`]: the two protocols' sessions on top of
//!   the hub: who may do what, subscribing, replay, publishing.
//! - [`transport`]: one connection pump and one socket writer (with the
//!   write-stall deadline) for every transport: Mercure's event stream,
//!   Centrifugo over WebSocket, HTTP streaming, SSE, and `/emulation`.
//! - [`integration`]: the application's part: proxies (the backend decides
//!   on connect, subscribe, publish, RPC…) and webhooks (it is told what
//!   happened), with their durable event queues.
//! - [`auth`]: JWT verification and Mercure grants.
//! - [`api`]: the HTTP endpoints (Mercure, Centrifugo server API).
//! - [`config`]: schema (the only defaults), keys, validation into each
//!   subsystem's settings.
//! - [`server`]: accepting connections (TCP, TLS with reload, HTTP/1.1,
//!   HTTP/2 and h2c, header and idle timeouts), routing, start and graceful
//!   shutdown, `/readyz`.
//! - [`limits`]: connection admission and publish rate limits.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`web`], [`demo`]: the demo page and admin dashboard, the demo ticker.
//! - [`cli`]: the `publish`, `subscribe` and `token` subcommands.
//! - [`time`]: clocks and reconnect backoff.
//!
//! The load generator (`tidings bench`) is its own crate, `tidings-bench`
//! (in `bench/`): the server does not compile it.

pub mod api;
pub mod auth;
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
