//! Authentication and authorization.
//!
//! - [`jwt`]: verifying tokens (keys, algorithms, `typ`, `iss`, `aud`,
//!   `exp`, `nbf`) and minting them for the CLI.
//! - [`grants`]: what a verified Mercure token allows: `publish` and
//!   `subscribe` topic matchers and subscription payloads, read from RFC 9396
//!   `authorization_details` or from the pre-standardization `mercure` claim.

pub mod centrifugo;
pub mod grants;
pub mod jwt;

pub use grants::Grants;
pub use jwt::{Role, Verifier};

/// An authorization failure, mapped by transports to RFC 6750 responses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token where one is required: 401 without an error code.
    #[error("an access token is required")]
    Missing,
    /// The token failed validation: 401 `invalid_token`. The detail is for
    /// logs only; clients are not told why (the draft's advice).
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The token's presentation is malformed: 400 `invalid_request`.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The token does not allow the operation: 403 `insufficient_scope`.
    #[error("the token does not allow this operation")]
    InsufficientScope,
}
