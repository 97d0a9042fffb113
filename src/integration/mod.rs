//! Backend integration: the application takes part in what happens on the
//! hub.
//!
//! - [`proxy`]: the hub asks the application to decide (authenticate a
//!   connection with its own session, allow a subscribe, validate or
//!   rewrite a publish, answer an RPC, authorize Mercure requests).
//! - [`webhooks`]: the hub tells the application what happened (connect,
//!   disconnect, subscribe, unsubscribe, channel occupied/vacated), signed,
//!   in batches, at least once.
//! - [`queue`]: where webhook events wait for their endpoint, durably.

pub mod proxy;
pub mod queue;
pub mod webhooks;
