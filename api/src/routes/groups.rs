use axum::{Json, extract::State, http::StatusCode};
use community_chat_shared::{
    domain::model::{CreateGroup, Group, ListGroups, UpdateGroup},
    error::DomainError,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::group_id;
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{AuthCaller, JsonBody, PathParams, QueryParams},
};

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// The caller's groups (default).
    Mine,
    /// The org's public groups, joined or not.
    Public,
}

/// The largest `pageNum`. Far more pages than any caller has groups, and small enough that
/// the row offset it asks for (`(pageNum - 1) * limit`) stays a modest number for every store.
pub const MAX_PAGE_NUM: u64 = 1_000_000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only groups attached to this page id.
    page: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u64>,
    /// 1-based page number, 1 to 1,000,000 (default 1).
    // `MAX_PAGE_NUM`, spelled out: the attribute takes literals only.
    #[param(minimum = 1, maximum = 1_000_000)]
    page_num: Option<u64>,
    /// `mine` (default) or `public`.
    visibility: Option<Visibility>,
}

#[derive(Serialize, ToSchema)]
pub struct GroupList {
    pub data: Vec<Group>,
    /// All matching groups, across pages.
    pub total: u64,
}

/// Create a group; the caller becomes its admin.
#[utoipa::path(post, path = "/client/community/groups", tag = "groups",
    request_body = CreateGroup,
    responses((status = 201, body = Group), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])), params(("orgid" = String, Header)))]
pub async fn create_group(
    State(state): State<AppState>,
    AuthCaller(caller): AuthCaller,
    JsonBody(input): JsonBody<CreateGroup>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    let group = state.service.create_group(&caller, input).await?;
    Ok((StatusCode::CREATED, Json(group)))
}

/// List the caller's groups (or the org's public groups).
#[utoipa::path(get, path = "/client/community/groups", tag = "groups",
    params(ListQuery, ("orgid" = String, Header)),
    responses((status = 200, body = GroupList), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_groups(
    State(state): State<AppState>,
    AuthCaller(caller): AuthCaller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<GroupList>, ApiError> {
    let page_num = query.page_num.unwrap_or(1);
    if !(1..=MAX_PAGE_NUM).contains(&page_num) {
        return Err(DomainError::invalid(format!("pageNum must be between 1 and {MAX_PAGE_NUM}")).into());
    }
    let page = state
        .service
        .list_groups(
            &caller,
            ListGroups {
                page: query.page,
                public_only: query.visibility == Some(Visibility::Public),
                limit: query.limit,
                page_num,
            },
        )
        .await?;
    Ok(Json(GroupList {
        data: page.data,
        total: page.total,
    }))
}

/// Read a group with its members.
#[utoipa::path(get, path = "/client/community/groups/{groupId}", tag = "groups",
    params(("groupId" = String, Path), ("orgid" = String, Header)),
    responses((status = 200, body = Group), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_group(
    State(state): State<AppState>,
    AuthCaller(caller): AuthCaller,
    PathParams(id): PathParams<String>,
) -> Result<Json<Group>, ApiError> {
    Ok(Json(state.service.get_group(&caller, group_id(&id)?).await?))
}

/// Rename, describe, change type or page (admins).
#[utoipa::path(patch, path = "/client/community/groups/{groupId}", tag = "groups",
    request_body = UpdateGroup,
    params(("groupId" = String, Path), ("orgid" = String, Header)),
    responses((status = 200, body = Group), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_group(
    State(state): State<AppState>,
    AuthCaller(caller): AuthCaller,
    PathParams(id): PathParams<String>,
    JsonBody(input): JsonBody<UpdateGroup>,
) -> Result<Json<Group>, ApiError> {
    let id = group_id(&id)?;
    Ok(Json(state.service.update_group(&caller, id, input).await?))
}

/// Delete a group with its messages (admins).
#[utoipa::path(delete, path = "/client/community/groups/{groupId}", tag = "groups",
    params(("groupId" = String, Path), ("orgid" = String, Header)),
    responses((status = 204), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_group(
    State(state): State<AppState>,
    AuthCaller(caller): AuthCaller,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    state.service.delete_group(&caller, group_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
