//! Panics in request handlers. A bug must never cost the client its answer or the process its
//! other requests: [`catch_panics`] answers a panicking handler with 500 and the error shape,
//! and [`report_panics_once`] makes every panic one log event, in the configured log format and
//! inside the request's span, without a backtrace.

use std::{any::Any, sync::Once};

use axum::{http::StatusCode, response::Response};
use community_chat_shared::error::DomainError;
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::error_response;

/// What a panic in a request handler answers.
pub type PanicResponder = fn(Box<dyn Any + Send + 'static>) -> Response;

/// The layer that turns a handler's panic into [`panic_response`].
pub fn catch_panics() -> CatchPanicLayer<PanicResponder> {
    CatchPanicLayer::custom(panic_response as PanicResponder)
}

/// 500 with `{ statusCode, message, error }`. The panic's text stays in the log (the panic hook
/// wrote it there once, see [`report_panics_once`]); the client gets the generic message of an
/// internal error.
pub fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        DomainError::Internal(String::new()).public_message(),
    )
}

/// Replaces the panic hook, once per process (the binary calls it at start-up), with one that logs the panic as a single `error`
/// event with its message and location. The event belongs to the current span, so a handler's
/// panic is logged with its request's method, route and org. Until a log subscriber is set
/// (tools, tests), panics keep the hook they had.
pub fn report_panics_once() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !tracing::dispatcher::has_been_set() {
                previous(info);
                return;
            }
            let message = info.payload_as_str().unwrap_or("(no message)");
            let location = info.location().map(ToString::to_string).unwrap_or_default();
            tracing::error!(panic = message, location = %location, "panicked");
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_answers_500_with_the_error_shape_and_without_its_text() {
        let response = panic_response(Box::new("index out of bounds: the secret is 42"));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .expect("body");
        assert_eq!(
            std::str::from_utf8(&body).expect("utf-8"),
            r#"{"statusCode":500,"message":"Internal server error","error":"Internal Server Error"}"#
        );
    }

    #[tokio::test]
    async fn a_panic_with_a_formatted_message_answers_the_same() {
        let response = panic_response(Box::new(String::from("called `Result::unwrap()` on an `Err` value")));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .expect("body");
        assert!(!String::from_utf8_lossy(&body).contains("unwrap"));
    }
}
