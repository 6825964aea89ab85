use axum::{Json, extract::State, http::StatusCode};
use community_chat_shared::{
    domain::model::{AddMember, Member},
    ids::Email,
};

use super::group_id;
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{AuthCaller, JsonBody, PathParams},
};

/// Add a member (admins), or join a public group yourself. For an existing member it sets the
/// role and answers 200.
#[utoipa::path(post, path = "/client/community/groups/{groupId}/members", tag = "members",
    request_body = AddMember,
    params(("groupId" = String, Path), ("orgid" = String, Header)),
    responses((status = 201, body = Member), (status = 200, description = "role of an existing member set", body = Member),
        (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_member(
    State(state): State<AppState>,
    AuthCaller(caller): AuthCaller,
    PathParams(id): PathParams<String>,
    JsonBody(input): JsonBody<AddMember>,
) -> Result<(StatusCode, Json<Member>), ApiError> {
    let id = group_id(&id)?;
    let (member, added) = state.service.add_member(&caller, id, input).await?;
    Ok((if added { StatusCode::CREATED } else { StatusCode::OK }, Json(member)))
}

/// Remove a member (admins), or leave (the member itself). The last admin cannot (409).
#[utoipa::path(delete, path = "/client/community/groups/{groupId}/members/{email}", tag = "members",
    params(("groupId" = String, Path), ("email" = String, Path), ("orgid" = String, Header)),
    responses((status = 204), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_member(
    State(state): State<AppState>,
    AuthCaller(caller): AuthCaller,
    PathParams((id, email)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = group_id(&id)?;
    let email = Email::parse(&email)?;
    state.service.remove_member(&caller, id, &email).await?;
    Ok(StatusCode::NO_CONTENT)
}
