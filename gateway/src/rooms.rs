//! Room names. The org is part of every name, so no room is ever shared across orgs.

use community_chat_shared::ids::{Email, GroupId, OrgId};

/// The room of a group's sockets.
pub fn group(org: &OrgId, group: GroupId) -> String {
    format!("g:{org}:{group}")
}

/// The room of one user's sockets (membership events reach all their tabs and devices).
pub fn user(org: &OrgId, email: &Email) -> String {
    format!("u:{org}:{email}")
}
