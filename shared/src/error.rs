//! The one error type of the domain and store layers. Transports (HTTP, socket.io) map it to
//! their wire shape in one place each; internal details are logged there, never sent.

use thiserror::Error;

#[derive(Clone, Debug, Error)]
pub enum DomainError {
    /// The request is malformed or breaks a limit (400).
    #[error("{0}")]
    Invalid(String),
    /// No token, or one that does not verify (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but not allowed: wrong org or role (403).
    #[error("{0}")]
    Forbidden(String),
    /// Unknown, or invisible to the caller (404). Private groups are 404 to non-members.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state, e.g. removing the last admin (409).
    #[error("{0}")]
    Conflict(String),
    /// A body or field over its size limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// Too many requests from one caller (429).
    #[error("{0}")]
    RateLimited(String),
    /// A dependency (database, Redis) does not answer (503). The text is for logs only.
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure (500). The text is for logs only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl DomainError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::Forbidden(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }
    pub fn conflict(msg: impl Into<String>) -> Self {
        Self::Conflict(msg.into())
    }

    /// The HTTP status this error maps to; the socket ack uses the same number.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::Unauthenticated(_) => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::TooLarge(_) => 413,
            Self::RateLimited(_) => 429,
            Self::Unavailable(_) => 503,
            Self::Internal(_) => 500,
        }
    }

    /// The message a client may see: internal and dependency details stay in the logs.
    pub fn public_message(&self) -> String {
        match self {
            Self::Unavailable(_) => "A dependency is unavailable, try again shortly".into(),
            Self::Internal(_) => "Internal server error".into(),
            other => other.to_string(),
        }
    }

    /// Whether the error is the server's fault (logged at error level) or the client's.
    pub fn is_server_error(&self) -> bool {
        self.status_code() >= 500
    }
}

impl From<sea_orm::DbErr> for DomainError {
    fn from(err: sea_orm::DbErr) -> Self {
        use sea_orm::DbErr;
        match &err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => Self::Unavailable(err.to_string()),
            DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e)) | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e))
                if is_connection_error(e.as_ref()) =>
            {
                Self::Unavailable(err.to_string())
            }
            _ => Self::Internal(err.to_string()),
        }
    }
}

impl From<sea_orm::SqlxError> for DomainError {
    /// For queries run on sqlx directly (group commit, shared look-ups): a lost or unreachable
    /// database is 503, anything else 500.
    fn from(err: sea_orm::SqlxError) -> Self {
        if is_connection_error(&err) {
            Self::Unavailable(err.to_string())
        } else {
            Self::Internal(err.to_string())
        }
    }
}

pub(crate) fn is_connection_error(e: &sea_orm::SqlxError) -> bool {
    use sea_orm::SqlxError;
    matches!(
        e,
        SqlxError::Io(_)
            | SqlxError::PoolTimedOut
            | SqlxError::PoolClosed
            | SqlxError::WorkerCrashed
            | SqlxError::Tls(_)
    )
}
