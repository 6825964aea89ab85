//! Message queries: the seq-allocating insert and the history reads.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr,
    sea_query::Expr, sea_query::ExprTrait,
};

use super::{
    Store,
    batch::BatchOutcome,
    entity::{groups, messages},
};
use crate::{
    domain::model::{Attachment, Message},
    error::DomainError,
    ids::{Email, GroupId, MessageId, OrgId},
};

/// What an insert did: stored a new message, or found the one already stored under the same
/// `clientMessageId` (an idempotent retry).
#[derive(Debug)]
pub enum InsertOutcome {
    Stored(Message),
    Replayed(Message),
}

fn to_message(m: messages::Model) -> Result<Message, DomainError> {
    Ok(Message {
        id: MessageId(m.id),
        group_id: GroupId(m.group_id),
        org_id: OrgId::parse(&m.org_id)?,
        seq: m.seq,
        from: Email::parse(&m.sender)?,
        content: m.content,
        content_type: m.content_type,
        attachments: serde_json::from_str::<Vec<Attachment>>(&m.attachments)
            .map_err(|e| DomainError::Internal(format!("stored attachments: {e}")))?,
        reply_to: m.reply_to.map(MessageId),
        client_message_id: m.client_message_id,
        created_at: m.created_at,
    })
}

impl Store {
    /// Stores `message` with the group's next seq, in one transaction: the seq is taken by an
    /// `UPDATE ... RETURNING` on the group row, whose lock serialises writers of this group only,
    /// so seqs have no gaps (a rolled-back insert rolls its seq back too). The seq and id in
    /// `message` are ignored. With a `clientMessageId` already stored, the stored message is
    /// returned instead and nothing is written.
    pub async fn insert_message(&self, message: Message) -> Result<InsertOutcome, DomainError> {
        let (org, group, from) = (message.org_id.clone(), message.group_id, message.from.clone());
        let client_id = message.client_message_id.clone();
        match self.try_insert_message(message).await? {
            Some(outcome) => Ok(outcome),
            // A concurrent retry with the same clientMessageId won the race (unique index).
            None => self.replayed(&org, group, &from, client_id.as_deref()).await,
        }
    }

    /// The message already stored under this sender's clientMessageId, after an insert of it
    /// hit the unique index.
    async fn replayed(
        &self,
        org: &OrgId,
        group: GroupId,
        from: &Email,
        client_id: Option<&str>,
    ) -> Result<InsertOutcome, DomainError> {
        let Some(client_id) = client_id else {
            return Err(DomainError::Internal("insert conflicted without a client id".into()));
        };
        match self.find_by_client_id(org, group, from, client_id).await? {
            Some(stored) => Ok(InsertOutcome::Replayed(stored)),
            None => Err(DomainError::Internal("idempotent insert lost its row".into())),
        }
    }

    /// The one-round-trip post of a member (Postgres): one statement checks that `message.from`
    /// is a member and that `replyTo` is a message of the group, takes the next seq and inserts,
    /// atomically in autocommit (a failed insert rolls its seq back too). `Ok(None)`: it did not
    /// apply (not a member, no such group, bad `replyTo`, or SQLite) and the caller takes the
    /// checked path, which says which it was. With group commit on, the post joins the batch of
    /// posts waiting at the same time (`batch.rs`); a failed batch falls back to this statement.
    pub async fn insert_member_message(&self, message: &Message) -> Result<Option<InsertOutcome>, DomainError> {
        if self.backend() != DbBackend::Postgres {
            return Ok(None);
        }
        if let Some(batcher) = &self.batcher {
            match batcher.post(message).await? {
                BatchOutcome::Stored(seq) => {
                    return Ok(Some(InsertOutcome::Stored(Message { seq, ..message.clone() })));
                }
                BatchOutcome::NotApplied => return Ok(None),
                BatchOutcome::Retry => {}
            }
        }

        let attachments = serde_json::to_string(&message.attachments)
            .map_err(|e| DomainError::Internal(format!("attachments: {e}")))?;
        let pool = self.db.get_postgres_connection_pool();
        match super::batch::insert_one(pool, message, &attachments).await {
            Ok(Some(seq)) => Ok(Some(InsertOutcome::Stored(Message { seq, ..message.clone() }))),
            Ok(None) => Ok(None),
            // The same clientMessageId is stored already (a retry, or a racing one).
            Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                let client_id = message.client_message_id.as_deref();
                (self
                    .replayed(&message.org_id, message.group_id, &message.from, client_id)
                    .await)
                    .map(Some)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `Ok(None)`: a unique-constraint conflict (only possible on the client id).
    async fn try_insert_message(&self, mut message: Message) -> Result<Option<InsertOutcome>, DomainError> {
        let write = self.begin_write().await?;
        let txn = &write.txn;
        let org = message.org_id.as_str().to_owned();
        let updated = groups::Entity::update_many()
            .col_expr(groups::Column::LastSeq, Expr::col(groups::Column::LastSeq).add(1))
            .filter(groups::Column::OrgId.eq(org.as_str()))
            .filter(groups::Column::Id.eq(message.group_id.0))
            .exec_with_returning(txn)
            .await?;
        let Some(group_row) = updated.into_iter().next() else {
            return Err(DomainError::not_found("group not found"));
        };
        // Under the group lock: a retry that committed before us is visible now.
        if let Some(client_id) = &message.client_message_id {
            let stored = messages::Entity::find()
                .filter(messages::Column::OrgId.eq(org.as_str()))
                .filter(messages::Column::GroupId.eq(message.group_id.0))
                .filter(messages::Column::Sender.eq(message.from.as_str()))
                .filter(messages::Column::ClientMessageId.eq(client_id.as_str()))
                .one(txn)
                .await?;
            if let Some(stored) = stored {
                // Dropping the transaction rolls the seq increment back.
                return Ok(Some(InsertOutcome::Replayed(to_message(stored)?)));
            }
        }
        message.seq = group_row.last_seq;
        let attachments = serde_json::to_string(&message.attachments)
            .map_err(|e| DomainError::Internal(format!("attachments: {e}")))?;
        let row = messages::ActiveModel {
            org_id: Set(org),
            group_id: Set(message.group_id.0),
            seq: Set(message.seq),
            id: Set(message.id.0),
            sender: Set(message.from.as_str().to_owned()),
            content: Set(message.content.clone()),
            content_type: Set(message.content_type.clone()),
            attachments: Set(attachments),
            reply_to: Set(message.reply_to.map(|r| r.0)),
            client_message_id: Set(message.client_message_id.clone()),
            created_at: Set(message.created_at),
        };
        match messages::Entity::insert(row).exec_without_returning(txn).await {
            Ok(_) => {}
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        match write.txn.commit().await {
            Ok(()) => Ok(Some(InsertOutcome::Stored(message))),
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn find_by_client_id(
        &self,
        org: &OrgId,
        group: GroupId,
        from: &Email,
        client_id: &str,
    ) -> Result<Option<Message>, DomainError> {
        messages::Entity::find()
            .filter(messages::Column::OrgId.eq(org.as_str()))
            .filter(messages::Column::GroupId.eq(group.0))
            .filter(messages::Column::Sender.eq(from.as_str()))
            .filter(messages::Column::ClientMessageId.eq(client_id))
            .one(&self.db)
            .await?
            .map(to_message)
            .transpose()
    }

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
