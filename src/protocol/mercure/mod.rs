//! The Mercure protocol (draft-dunglas-mercure-08 and the pre-standardization
//! form): forms and queries in, Server-Sent Events out.
//!
//! - [`form`]: strict `application/x-www-form-urlencoded` parsing (publish
//!   bodies, subscribe queries).
//! - [`text`]: the character rules the draft puts on topics, ids and types.
//! - [`matcher`]: topic matchers (`exact`, `urlpattern`, the legacy URI
//!   template selectors and the `*` wildcard).
//! - [`request`]: publish and subscribe requests decoded and validated.
//! - [`sse`]: encoding one update as a `text/event-stream` event.
//! - [`subscription`]: the JSON documents of the active-subscriptions feature.

pub mod form;
pub mod matcher;
pub mod request;
pub mod subscription;
pub mod text;
pub mod uri_template;

/// The reserved Last-Event-ID value asking for every stored update.
pub const EARLIEST: &str = "earliest";

/// The SSE event type reserved for events the hub generates itself.
pub const RESERVED_EVENT_TYPE: &str = "mercure";
