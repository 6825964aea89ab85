//! The REST tier: an axum router over [`ChatService`]. Handlers live in [`routes`], the error
//! shape in [`error`], the caller extractor in [`extract`], the answer to a panicking handler
//! in [`panics`]; this file wires them together with tracing, metrics, CORS and body limits.

pub mod error;
pub mod extract;
pub mod health;
pub mod panics;
pub mod routes;

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::Response,
};
use community_chat_shared::{
    auth::Authenticator,
    config::Config,
    domain::ChatService,
    metrics::{Metrics, UNMATCHED_ROUTE},
};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::error_response;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub service: ChatService,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    /// The OpenAPI document, rendered once.
    pub openapi: Arc<String>,
    /// Set on SIGTERM: `/readyz` answers 503 so load balancers stop sending new work.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "community-chat", description = "Group chat REST API. Every call carries `orgid` and `Authorization: Bearer <JWT>`."),
    modifiers(&BearerAuth),
    // Referenced by the `visibility` query parameter, which utoipa does not collect by itself.
    components(schemas(routes::groups::Visibility)),
    tags((name = "groups"), (name = "messages"), (name = "members"), (name = "operations"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Every route with its documentation: the router and the OpenAPI document come from the same
/// registration, so they cannot disagree.
fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::groups::create_group, routes::groups::list_groups))
        .routes(routes!(
            routes::groups::get_group,
            routes::groups::update_group,
            routes::groups::delete_group
        ))
        .routes(routes!(routes::messages::post_message, routes::messages::history))
        .routes(routes!(routes::members::add_member))
        .routes(routes!(routes::members::remove_member))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi))
}

/// The OpenAPI 3.1 document of every route.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = documented_routes().split_for_parts().1;
    describe_responses(&mut doc);
    doc
}

/// OpenAPI 3.1 requires a `description` on every response, and utoipa leaves out an empty one:
/// a response without its own gets its status's reason phrase (`OK`, `Created`, `Client error`).
fn describe_responses(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            for (status, response) in &mut operation.responses.responses {
                if let utoipa::openapi::RefOr::T(response) = response
                    && response.description.is_empty()
                {
                    response.description = describe_status(status);
                }
            }
        }
    }
}

fn describe_status(status: &str) -> String {
    let reason = status
        .parse::<u16>()
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .and_then(|s| s.canonical_reason());
    let class = match status.as_bytes().first() {
        Some(b'1') => "Informational",
        Some(b'2') => "Success",
        Some(b'3') => "Redirection",
        Some(b'4') => "Client error",
        Some(b'5') => "Server error",
        _ => "Response",
    };
    reason.unwrap_or(class).to_owned()
}

impl AppState {
    pub fn new(service: ChatService, auth: Arc<Authenticator>, metrics: Arc<Metrics>) -> Self {
        let openapi = openapi_document().to_pretty_json().unwrap_or_else(|_| "{}".to_owned());
        Self {
            service,
            auth,
            metrics,
            draining: Arc::default(),
            openapi: Arc::new(openapi),
        }
    }
}

/// The REST router with its middleware, ready to serve (or to be merged with the gateway).
/// Fails with a message naming the setting when CORS_ORIGINS is invalid.
pub fn router(state: AppState, config: &Config) -> Result<Router, String> {
    let (routes, _) = documented_routes().split_for_parts();
    let mut router = routes
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such route".into()) })
        .method_not_allowed_fallback(|| async {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route".into(),
            )
        })
        .layer(DefaultBodyLimit::max(config.limits.max_body_bytes as usize))
        // Inside `observe_request`, so that a panic is counted and logged as the 500 it answers.
        .layer(panics::catch_panics())
        .layer(middleware::from_fn_with_state(state.clone(), observe_request))
        .with_state(state);
    if let Some(cors) = cors_layer(config.cors_origins.as_deref())? {
        router = router.layer(cors);
    }
    Ok(router)
}

/// The operational routes only (`/healthz`, `/readyz`, `/metrics`), for gateway processes.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", axum::routing::get(health::healthz))
        .route("/readyz", axum::routing::get(health::readyz))
        .route("/metrics", axum::routing::get(health::metrics))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such route".into()) })
        .layer(panics::catch_panics())
        .layer(middleware::from_fn_with_state(state.clone(), observe_request))
        .with_state(state)
}

fn cors_layer(origins: Option<&str>) -> Result<Option<CorsLayer>, String> {
    let Some(origins) = origins.map(str::trim).filter(|o| !o.is_empty()) else {
        return Ok(None);
    };
    let allow = if origins == "*" {
        AllowOrigin::any()
    } else {
        let list = origins
            .split(',')
            .map(|o| HeaderValue::from_str(o.trim()).map_err(|_| format!("CORS_ORIGINS has an invalid origin '{o}'")))
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("orgid"),
            ]),
    ))
}

/// One span per request (method, route, org, status, latency) and the HTTP metrics. The route
/// is the matched template, or `unmatched`: never the request's path, so that neither logs nor
/// metrics grow with the paths clients invent.
async fn observe_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let org = request
        .headers()
        .get("orgid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let span = tracing::info_span!("request", method = %method, route = %route, org = %org, status = tracing::field::Empty, latency_ms = tracing::field::Empty);
    community_chat_shared::telemetry::set_parent_from(
        &span,
        request
            .headers()
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v))),
    );
    let response = {
        use tracing::Instrument;
        next.run(request).instrument(span.clone()).await
    };
    let latency = started.elapsed();
    let status = response.status().as_u16();
    span.record("status", status);
    span.record("latency_ms", latency.as_secs_f64() * 1000.0);
    span.in_scope(|| tracing::info!(status, latency_ms = latency.as_secs_f64() * 1000.0, "request"));
    state.metrics.record_http(method.as_str(), &route, status, latency);
    response
}
