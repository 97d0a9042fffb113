//! The NATS engine (JetStream).
use super::{Engine, EngineError, EngineOptions};

/// History, broker and presence on NATS JetStream.
pub struct NatsEngine;

impl NatsEngine {
    /// Connects to `url`.
    pub async fn connect(_url: &str, _options: EngineOptions) -> Result<Engine, EngineError> {
        Err(EngineError::Nats("not yet".into()))
    }
}
