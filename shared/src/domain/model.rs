//! The wire and domain shapes of groups, members and messages (DESIGN.md, REST). The same
//! structs are returned over REST, carried on the bus and emitted on sockets, so the three
//! can never disagree.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::ids::{Email, GroupId, MessageId, OrgId};

/// A member's role in one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
    /// Admins add and remove members, rename, change type, and delete the group.
    pub fn can_manage(self) -> bool {
        self == Role::Admin
    }
}

/// The last-admin rule: a group always keeps at least one admin. `from` is the member's role
/// now, `to` its role after the change (`None`: it leaves or is removed), `admins` the group's
/// admin count, read under the group's lock (the store calls this inside the transaction that
/// makes the change, so two concurrent demotions cannot both pass). 409 when it would leave
/// the group without an admin.
pub fn check_last_admin(from: Role, to: Option<Role>, admins: u64) -> Result<(), crate::error::DomainError> {
    let loses_an_admin = from == Role::Admin && to != Some(Role::Admin);
    if !loses_an_admin || admins > 1 {
        return Ok(());
    }
    Err(crate::error::DomainError::conflict(match to {
        Some(_) => "the last admin cannot be demoted: promote another member first",
        None => "the last admin cannot leave or be removed: promote another member first",
    }))
}

/// Public groups are readable and joinable by anyone in the org; private ones are invisible
/// (404) to non-members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupType {
    Public,
    Private,
}

impl GroupType {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupType::Public => "public",
            GroupType::Private => "private",
        }
    }
    /// Who may see a group at all: members always, others only when it is public. Everything
    /// else answers 404, so a private group's existence does not leak.
    pub fn visible_to(self, member: bool) -> bool {
        member || self == GroupType::Public
    }
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "public" => Some(GroupType::Public),
            "private" => Some(GroupType::Private),
            _ => None,
        }
    }
}

/// Also an input (the `members` of a create), so unknown fields are rejected like in every body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Member {
    #[schema(value_type = String, format = "email")]
    pub email: Email,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    #[schema(value_type = String, format = "uuid")]
    pub id: GroupId,
    #[schema(value_type = String)]
    pub org_id: OrgId,
    pub name: String,
    pub description: String,
    #[serde(rename = "type")]
    pub group_type: GroupType,
    /// The community page this group is attached to.
    pub page: Option<String>,
    #[schema(value_type = String, format = "email")]
    pub created_by: Email,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub member_count: i64,
    /// The caller's role; `null` for a non-member reading a public group, and in events
    /// broadcast to a room (each recipient's role differs).
    pub my_role: Option<Role>,
    /// Only on the single-group read.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub members: Option<Vec<Member>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Attachment {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Time-ordered (UUIDv7).
    #[schema(value_type = String, format = "uuid")]
    pub id: MessageId,
    #[schema(value_type = String, format = "uuid")]
    pub group_id: GroupId,
    #[schema(value_type = String)]
    pub org_id: OrgId,
    /// Per-group sequence: 1, 2, 3, ... with no gaps. The catch-up cursor.
    pub seq: i64,
    #[schema(value_type = String, format = "email")]
    pub from: Email,
    pub content: String,
    pub content_type: String,
    pub attachments: Vec<Attachment>,
    #[schema(value_type = Option<String>, format = "uuid")]
    pub reply_to: Option<MessageId>,
    pub client_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /client/community/groups`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateGroup {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Defaults to `private`.
    #[serde(rename = "type", default)]
    pub group_type: Option<GroupType>,
    #[serde(default)]
    pub members: Vec<Member>,
    #[serde(default)]
    pub page: Option<String>,
}

/// Body of `PATCH /client/community/groups/:groupId`: only the fields present change;
/// `page: null` detaches the page.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateGroup {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(rename = "type", default)]
    pub group_type: Option<GroupType>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub page: Option<Option<String>>,
}

/// Body of `POST /client/community/groups/:groupId/messages` (and the socket send, plus its
/// `groupId`).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostMessage {
    pub content: String,
    /// Defaults to `text`.
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = "uuid")]
    pub reply_to: Option<MessageId>,
    /// Makes the send idempotent per (group, sender).
    #[serde(default)]
    pub client_message_id: Option<String>,
}

/// Body of `POST /client/community/groups/:groupId/members`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddMember {
    #[schema(value_type = String, format = "email")]
    pub email: Email,
    /// Defaults to `member`.
    #[serde(default)]
    pub role: Option<Role>,
}

/// Which groups `GET /client/community/groups` lists.
#[derive(Clone, Debug, Default)]
pub struct ListGroups {
    pub page: Option<String>,
    /// `true`: the org's public groups, joined or not; `false`: the caller's groups.
    pub public_only: bool,
    /// 1 to 100; `None`: the default (20).
    pub limit: Option<u64>,
    /// 1-based.
    pub page_num: u64,
}

/// Where a history read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryCursor {
    /// The newest messages, newest first.
    Latest,
    /// Messages older than this one, newest first.
    Before(MessageId),
    /// Messages newer than this one, oldest first (catch-up).
    After(MessageId),
    /// Messages with a larger seq, oldest first (catch-up by seq; 0 means from the start).
    AfterSeq(i64),
}

/// Distinguishes "absent" (outer `None`) from "null" (`Some(None)`) in a PATCH body.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod last_admin_tests {
    use super::{Role, check_last_admin};

    #[test]
    fn the_last_admin_can_neither_be_demoted_nor_leave() {
        assert_eq!(
            check_last_admin(Role::Admin, Some(Role::Member), 1).map_err(|e| e.status_code()),
            Err(409)
        );
        assert_eq!(
            check_last_admin(Role::Admin, None, 1).map_err(|e| e.status_code()),
            Err(409)
        );
    }

    #[test]
    fn an_admin_with_another_admin_may_step_down_or_leave() {
        assert!(check_last_admin(Role::Admin, Some(Role::Member), 2).is_ok());
        assert!(check_last_admin(Role::Admin, None, 2).is_ok());
    }

    #[test]
    fn members_and_admins_staying_admins_are_not_concerned() {
        assert!(check_last_admin(Role::Member, None, 1).is_ok());
        assert!(check_last_admin(Role::Admin, Some(Role::Admin), 1).is_ok());
    }
}
