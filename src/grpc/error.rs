//! Errors a request can meet, and the gRPC status each one becomes at the edge.

use tonic::{Code, Status};

use crate::sessions::registry::RegistryError;
use endcall_core::machine::Rejection;

/// A refused request. Every message names the field (or the limit) at fault.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("session_id: no session {id:?} (never seen, or its retention has passed)")]
    NotFound { id: String },
    #[error("{field}: {reason}")]
    FailedPrecondition { field: &'static str, reason: String },
    #[error("{0}")]
    ResourceExhausted(String),
    /// The state journal cannot make the event durable; the server is stopping.
    #[error("state journal failed: the event was not made durable; retry once the sidecar has restarted")]
    Unavailable,
    #[error("too many open WatchSession streams (limit {limit}, --max-watchers)")]
    TooManyWatchers { limit: usize },
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The label of `endcall_requests_rejected_total` this refusal counts under.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument { .. } => "validation",
            ApiError::NotFound { .. } => "not_found",
            ApiError::FailedPrecondition { .. } => "precondition",
            ApiError::ResourceExhausted(_) => "session_limit",
            ApiError::Unavailable => "journal",
            ApiError::TooManyWatchers { .. } => "watcher_limit",
        }
    }

    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument { .. } => Code::InvalidArgument,
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::FailedPrecondition { .. } => Code::FailedPrecondition,
            ApiError::ResourceExhausted(_) | ApiError::TooManyWatchers { .. } => {
                Code::ResourceExhausted
            }
            ApiError::Unavailable => Code::Unavailable,
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::TooManySessions { limit } => ApiError::ResourceExhausted(format!(
                "session_id: too many live sessions (limit {limit}, --max-sessions)"
            )),
            RegistryError::NotFound => ApiError::NotFound { id: String::new() },
            RegistryError::JournalFailed => ApiError::Unavailable,
            RegistryError::Rejected(rejection) => {
                let field = match rejection {
                    Rejection::Closed => "session_id",
                    Rejection::OptionsConflict => "options",
                    Rejection::MaxDurationConflict => "max_duration",
                    Rejection::WarningsConflict => "max_duration_warnings",
                };
                ApiError::FailedPrecondition {
                    field,
                    reason: rejection.to_string(),
                }
            }
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}
