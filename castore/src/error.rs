//! The error type every store service returns.

/// What went wrong in a store operation. Backends and the gRPC client map
/// their failures onto these, so callers handle them alike.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request or uploaded data is invalid; nothing was stored.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Stored or received data fails verification (digest mismatch,
    /// undecodable bytes).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The backend or server could not be reached in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Local I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Shorthand for results of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// A copy (same variant, same message) for one more waiter on a shared
    /// result; I/O errors keep their kind.
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::NotFound(m) => StoreError::NotFound(m.clone()),
            StoreError::Invalid(m) => StoreError::Invalid(m.clone()),
            StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Io(io) => StoreError::Io(std::io::Error::new(io.kind(), io.to_string())),
        }
    }

    /// The error of a result shared by several waiters (a coalesced read).
    pub fn from_shared(e: std::sync::Arc<StoreError>) -> StoreError {
        std::sync::Arc::try_unwrap(e).unwrap_or_else(|shared| shared.duplicate())
    }
}
