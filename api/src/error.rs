//! The HTTP error mapping, in one place: `{ statusCode, message, error }` (the NestJS shape
//! existing clients parse). Server-side failures are logged here, once, with their detail.

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use community_chat_shared::error::DomainError;
use serde::Serialize;
use utoipa::ToSchema;

/// The error body of every non-2xx answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub status_code: u16,
    pub message: String,
    /// The status's reason phrase, e.g. `Bad Request`.
    pub error: String,
}

#[derive(Debug)]
pub struct ApiError(pub DomainError);

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if self.0.is_server_error() {
            tracing::error!(error = %self.0, status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(error = %self.0, status = status.as_u16(), "request rejected");
        }
        error_response(status, self.0.public_message())
    }
}

pub fn error_response(status: StatusCode, message: String) -> Response {
    let body = ErrorBody {
        status_code: status.as_u16(),
        message,
        error: status.canonical_reason().unwrap_or("Error").to_owned(),
    };
    (status, Json(body)).into_response()
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        Self(match rejection {
            JsonRejection::JsonDataError(e) => {
                DomainError::invalid(format!("invalid body: {}", serde_detail(&e.body_text())))
            }
            JsonRejection::JsonSyntaxError(e) => {
                DomainError::invalid(format!("malformed JSON: {}", serde_detail(&e.body_text())))
            }
            JsonRejection::MissingJsonContentType(_) => DomainError::invalid("Content-Type must be application/json"),
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => DomainError::TooLarge("request body is too large".into()),
            other => DomainError::invalid(other.body_text()),
        })
    }
}

impl From<QueryRejection> for ApiError {
    /// Keeps the parameter's name: `invalid query: pageNum: number too large to fit in target type`.
    fn from(rejection: QueryRejection) -> Self {
        let text = rejection.body_text();
        let detail = text
            .strip_prefix("Failed to deserialize query string: ")
            .map(str::to_owned)
            .unwrap_or_else(|| serde_detail(&text));
        Self(DomainError::invalid(format!("invalid query: {detail}")))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self(DomainError::invalid(format!(
            "invalid path: {}",
            serde_detail(&rejection.body_text())
        )))
    }
}

/// axum prefixes serde's message with its own; keep the part that names the field.
fn serde_detail(text: &str) -> String {
    text.rsplit_once(": ").map(|(_, d)| d).unwrap_or(text).to_owned()
}
