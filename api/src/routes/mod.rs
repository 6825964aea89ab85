//! REST handlers under `/client/community/groups`. Each parses, calls one `ChatService`
//! method, and maps the result.

pub mod groups;
pub mod members;
pub mod messages;

use community_chat_shared::ids::GroupId;

use crate::error::ApiError;

fn group_id(raw: &str) -> Result<GroupId, ApiError> {
    Ok(GroupId::parse(raw)?)
}
