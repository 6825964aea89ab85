//! Message reads: history, catch-up and cursors. Posting is in `post.rs`.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{Store, entity::messages, post::parse_attachments};
use crate::{
    domain::model::Message,
    error::DomainError,
    ids::{Email, GroupId, MessageId, OrgId},
};

pub(super) fn to_message(m: messages::Model) -> Result<Message, DomainError> {
    Ok(Message {
        id: MessageId(m.id),
        group_id: GroupId(m.group_id),
        org_id: OrgId::parse(&m.org_id)?,
        seq: m.seq,
        from: Email::parse(&m.sender)?,
        content: m.content,
        content_type: m.content_type,
        attachments: parse_attachments(&m.attachments)?,
        reply_to: m.reply_to.map(MessageId),
        client_message_id: m.client_message_id,
        created_at: m.created_at,
    })
}

impl Store {
    /// The seq of a message of this group, for cursors and `replyTo` (`None`: not in this group).
    pub async fn seq_of(&self, org: &OrgId, group: GroupId, id: MessageId) -> Result<Option<i64>, DomainError> {
        let seq: Option<(uuid::Uuid, i64)> = messages::Entity::find()
            .select_only()
            .column(messages::Column::GroupId)
            .column(messages::Column::Seq)
            .filter(messages::Column::OrgId.eq(org.as_str()))
            .filter(messages::Column::Id.eq(id.0))
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(seq.filter(|(g, _)| *g == group.0).map(|(_, s)| s))
    }

    /// Up to `limit` messages with seq below `before` (all when `None`), newest first.
    pub async fn messages_before(
        &self,
        org: &OrgId,
        group: GroupId,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<Message>, DomainError> {
        let mut query = messages::Entity::find()
            .filter(messages::Column::OrgId.eq(org.as_str()))
            .filter(messages::Column::GroupId.eq(group.0));
        if let Some(before) = before {
            query = query.filter(messages::Column::Seq.lt(before));
        }
        let rows = query
            .order_by_desc(messages::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(to_message).collect()
    }

    /// Up to `limit` messages with seq above `after`, oldest first (catch-up).
    pub async fn messages_after(
        &self,
        org: &OrgId,
        group: GroupId,
        after: i64,
        limit: u64,
    ) -> Result<Vec<Message>, DomainError> {
        let rows = messages::Entity::find()
            .filter(messages::Column::OrgId.eq(org.as_str()))
            .filter(messages::Column::GroupId.eq(group.0))
            .filter(messages::Column::Seq.gt(after))
            .order_by_asc(messages::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(to_message).collect()
    }
}
