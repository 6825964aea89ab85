use axum::{Json, extract::State, http::StatusCode};
use community_chat_shared::{
    domain::model::{HistoryCursor, Message, PostMessage},
    error::DomainError,
    ids::MessageId,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::group_id;
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{AuthCaller, JsonBody, PathParams, QueryParams},
};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u64>,
    /// Messages older than this message id, newest first.
    before: Option<String>,
    /// Messages newer than this message id, oldest first (catch-up).
    after: Option<String>,
    /// Messages with a larger `seq`, oldest first (catch-up by seq; 0 = from the start).
    #[param(minimum = 0)]
    after_seq: Option<i64>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub data: Vec<Message>,
    /// More messages lie beyond this page in the same direction.
    pub has_more: bool,
}

/// Post a message (members). With a `clientMessageId` already used by the caller in this
/// group, the stored message is returned with 200 and nothing new is stored.
#[utoipa::path(post, path = "/client/community/groups/{groupId}/messages", tag = "messages",
    request_body = PostMessage,
    params(("groupId" = String, Path), ("orgid" = String, Header)),
    responses((status = 201, body = Message), (status = 200, description = "an idempotent replay", body = Message),
        (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_message(
    State(state): State<AppState>,
    AuthCaller(caller): AuthCaller,
    PathParams(id): PathParams<String>,
    JsonBody(input): JsonBody<PostMessage>,
) -> Result<(StatusCode, Json<Message>), ApiError> {
    let id = group_id(&id)?;
    let (message, replayed) = state.service.post_message(&caller, id, input).await?;
    let status = if replayed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(message)))
}

/// Read history: newest first (`before`), or oldest first from a cursor (`after`, `afterSeq`).
#[utoipa::path(get, path = "/client/community/groups/{groupId}/messages", tag = "messages",
    params(HistoryQuery, ("groupId" = String, Path), ("orgid" = String, Header)),
    responses((status = 200, body = MessagePage), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn history(
    State(state): State<AppState>,
    AuthCaller(caller): AuthCaller,
    PathParams(id): PathParams<String>,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    let id = group_id(&id)?;
    let cursor_id =
        |raw: &str| MessageId::parse(raw).map_err(|_| DomainError::invalid(format!("'{raw}' is not a message id")));
    let cursor = match (&query.before, &query.after, query.after_seq) {
        (None, None, None) => HistoryCursor::Latest,
        (Some(before), None, None) => HistoryCursor::Before(cursor_id(before)?),
        (None, Some(after), None) => HistoryCursor::After(cursor_id(after)?),
        (None, None, Some(seq)) => HistoryCursor::AfterSeq(seq),
        _ => return Err(DomainError::invalid("use only one of before, after and afterSeq").into()),
    };
    let page = state.service.history(&caller, id, cursor, query.limit).await?;
    Ok(Json(MessagePage {
        data: page.data,
        has_more: page.has_more,
    }))
}
