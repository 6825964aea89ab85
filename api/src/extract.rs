//! Extractors: the caller from `orgid` + `Authorization`, and JSON / query / path extractors
//! whose rejections use the app's error shape.

use axum::{
    extract::{FromRequest, FromRequestParts, Path, Query},
    http::{header::AUTHORIZATION, request::Parts},
};
use community_chat_shared::{auth::Caller, error::DomainError, ids::OrgId};
use serde::de::DeserializeOwned;

use crate::{AppState, error::ApiError};

/// The authenticated caller. 400 without `orgid`, 401 without or with a bad token, 403 for a
/// token of another org.
pub struct AuthCaller(pub Caller);

impl FromRequestParts<AppState> for AuthCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        let token = match headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            None => {
                return Err(DomainError::Unauthenticated("missing Authorization: Bearer token".into()).into());
            }
            Some(value) => value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or_else(|| DomainError::Unauthenticated("Authorization must be 'Bearer <token>'".into()))?,
        };
        let org = headers
            .get("orgid")
            .ok_or_else(|| DomainError::invalid("missing orgid header"))?;
        // A header that is not even text still gets the org id rules' message.
        let org = OrgId::parse(&String::from_utf8_lossy(org.as_bytes()))?;
        Ok(Self(state.auth.verify(token, &org)?))
    }
}

/// `axum::Json` with our error shape.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// `axum::extract::Query` with our error shape.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// `axum::extract::Path` with our error shape.
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}
