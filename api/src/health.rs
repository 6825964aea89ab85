//! Operational endpoints every process serves: liveness, readiness, metrics, the OpenAPI doc.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ok`, `unavailable`, or `unavailable` while draining for shutdown.
    pub status: &'static str,
    /// `ok`, or why the database does not answer.
    pub database: String,
    /// `ok`, or why the event bus (Redis) does not answer.
    pub bus: String,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// The process's dependencies answer (503 otherwise).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let service = &state.service;
    let timeout = std::time::Duration::from_secs(2);
    let (db, bus) = tokio::join!(
        tokio::time::timeout(timeout, service.ping_store()),
        tokio::time::timeout(timeout, service.ping_bus())
    );
    let describe = |r: Result<Result<(), community_chat_shared::error::DomainError>, _>| match r {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    let (database, bus) = (describe(db), describe(bus));
    let draining = state.draining.load(std::sync::atomic::Ordering::Relaxed);
    let ready = database == "ok" && bus == "ok" && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: if ready { "ok" } else { "unavailable" },
            database,
            bus,
        }),
    )
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, body = Object)))]
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.as_ref().clone(),
    )
}
