//! Posting a message: the one place where a post's rules are checked and its seq is taken.
//!
//! Each backend first gathers the [`Facts`] of a post (does the group exist and of which type,
//! is the sender a member, is `replyTo` a message of the group, is this `clientMessageId`
//! stored already), under the group's write lock, and [`verdict`] turns them into the answer.
//! Postgres gathers the facts, takes the seq and inserts in one statement ([`POST_SQL`], one
//! round trip for one post or a whole group-commit batch); SQLite runs the same steps one query
//! at a time in a write transaction. Both answer through [`verdict`], so they cannot disagree
//! on who may post or what a retry gets back.
//!
//! | rule | decided by | enforced in the write by |
//! | --- | --- | --- |
//! | the group exists in the caller's org, else 404 | [`verdict`] | Postgres: `locked` (the org is part of every key); SQLite: [`facts_sqlite`] |
//! | a private group is 404 to non-members ([`GroupType::visible_to`]) | [`verdict`] | (nothing is written for a non-member) |
//! | only members post, else 403 | [`verdict`] | Postgres: `WHERE f.member` in `ok`; SQLite: [`verdict`] before the insert |
//! | `replyTo` is a message of the same group, else 400 | [`verdict`] | Postgres: `reply_in_group` in `ok`; SQLite: [`verdict`] |
//! | one message per (sender, group, `clientMessageId`): a retry gets the stored one back, from the same round trip | [`verdict`] | the statement's `prior` probe; the unique index `messages_org_group_sender_client_id` for racing retries ([`Store::post_message`] runs the loser again) |
//! | seqs are 1, 2, 3, ... per group, with no gap | the group row's `last_seq` | Postgres: `locked` (`FOR UPDATE`, in key order) + `row_number()` + `bumped`, all in one autocommit statement; SQLite: `UPDATE ... RETURNING` under the write gate |
//!
//! Every per-post look-up in [`POST_SQL`] is a `LATERAL ... LIMIT 1` probe of a unique index,
//! so its plan cannot become a hash join that reads a whole table: the group commit connection
//! keeps one generic plan for its life (`group_commit.rs`), made whenever the statistics say
//! `messages` is small, and the statement must cost the same at ten messages and at ten
//! million (BENCHMARKS.md has the plans).

use sea_orm::{
    ActiveValue::Set, ColumnTrait, DbBackend, EntityTrait, QueryFilter, QuerySelect, sea_query::Expr,
    sea_query::ExprTrait, sqlx,
};

use super::{
    Store,
    entity::{group_members, groups, messages},
    messages::to_message,
};
use crate::{
    domain::model::{Attachment, GroupType, Message},
    error::DomainError,
    ids::MessageId,
};

/// What a post did: stored a new message, or found the one already stored under the same
/// `clientMessageId` (an idempotent retry: nothing new is stored or published).
#[derive(Debug)]
pub enum PostOutcome {
    Stored(Message),
    Replayed(Message),
}

/// What the store knows about one post at the moment it is written, under its group's lock:
/// the inputs of [`verdict`].
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// The group's type; `None`: no such group in the post's org.
    pub group: Option<GroupType>,
    /// The sender is a member of the group.
    pub member: bool,
    /// `replyTo` names a message of this group (true when there is no `replyTo`).
    pub reply_in_group: bool,
    /// The message already stored under this sender's `clientMessageId` in this group.
    pub prior: Option<Message>,
}

/// The answer to a post, from its [`Facts`].
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Store it with the group's next seq.
    Store,
    /// A retry: answer with the message stored the first time.
    Replay(Message),
    Refuse(DomainError),
}

/// The rules of posting, in the order they are checked (a refused post never learns about
/// the later ones; a non-member's retry is refused, not replayed).
pub(crate) fn verdict(facts: Facts) -> Verdict {
    let Some(group_type) = facts.group else {
        return Verdict::Refuse(DomainError::not_found("group not found"));
    };
    if !group_type.visible_to(facts.member) {
        return Verdict::Refuse(DomainError::not_found("group not found"));
    }
    if !facts.member {
        return Verdict::Refuse(DomainError::forbidden(
            "only members can post in this group: join it first",
        ));
    }
    if !facts.reply_in_group {
        return Verdict::Refuse(DomainError::invalid("replyTo is not a message of this group"));
    }
    match facts.prior {
        Some(stored) => Verdict::Replay(stored),
        None => Verdict::Store,
    }
}

/// The answer to one post from what the write found and did: `seq` is the seq it was stored
/// with, if it was. The statement and [`verdict`] must agree; a disagreement is a bug, not a
/// client error.
pub(crate) fn conclude(message: &Message, facts: Facts, seq: Option<i64>) -> Result<PostOutcome, DomainError> {
    match (verdict(facts), seq) {
        (Verdict::Store, Some(seq)) => Ok(PostOutcome::Stored(Message { seq, ..message.clone() })),
        (Verdict::Replay(stored), None) => Ok(PostOutcome::Replayed(stored)),
        (Verdict::Refuse(e), None) => Err(e),
        (verdict, seq) => Err(DomainError::Internal(format!(
            "post statement and rules disagree: {verdict:?}, stored seq {seq:?}"
        ))),
    }
}

/// Facts, seq and insert of one post or of a whole batch, in one autocommit statement (one
/// element per post in each array parameter). The groups are locked in key order first
/// (`FOR UPDATE`, which also returns each one's latest `last_seq`), so two batches cannot
/// deadlock; each post the rules accept takes the next seq of its group in arrival order; each
/// group's `last_seq` is then written once. One row comes back per post, in input order.
///
/// Two posts with the same `clientMessageId` must not share a statement (both would find no
/// `prior` and the unique index would refuse the batch); the group commit keeps them apart.
/// The `prior` probe reads the statement's snapshot, so a retry racing on another connection
/// can still commit first: the unique index then refuses this statement and the caller runs
/// the post again, when the probe finds it.
///
/// Public (re-exported hidden as `store::POST_SQL`) only so that `tests/post_rules.rs` can
/// check its plan; nothing outside this crate runs it.
pub const POST_SQL: &str = "WITH input AS MATERIALIZED (
        SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[],
                             $7::text[], $8::uuid[], $9::text[], $10::timestamptz[])
            WITH ORDINALITY AS t(org_id, group_id, sender, id, content, content_type, attachments,
                                 reply_to, client_message_id, created_at, ord)
    ), locked AS MATERIALIZED (
        SELECT g.org_id, g.id, g.group_type, g.last_seq
        FROM (SELECT DISTINCT org_id, group_id FROM input ORDER BY org_id, group_id) k,
             LATERAL (SELECT g.org_id, g.id, g.group_type, g.last_seq FROM groups g
                      WHERE g.org_id = k.org_id AND g.id = k.group_id
                      FOR UPDATE) g
    ), facts AS MATERIALIZED (
        SELECT i.*, l.group_type, l.last_seq,
               mb.member IS NOT NULL AS member,
               (i.reply_to IS NULL OR r.group_id IS NOT DISTINCT FROM i.group_id) AS reply_in_group,
               p.id AS prior_id, p.seq AS prior_seq, p.content AS prior_content,
               p.content_type AS prior_content_type, p.attachments AS prior_attachments,
               p.reply_to AS prior_reply_to, p.created_at AS prior_created_at
        FROM input i
        LEFT JOIN locked l ON l.org_id = i.org_id AND l.id = i.group_id
        LEFT JOIN LATERAL (SELECT 1 AS member FROM group_members m
                           WHERE m.org_id = i.org_id AND m.group_id = i.group_id AND m.email = i.sender
                           LIMIT 1) mb ON true
        LEFT JOIN LATERAL (SELECT r.group_id FROM messages r
                           WHERE i.reply_to IS NOT NULL AND r.org_id = i.org_id AND r.id = i.reply_to
                           LIMIT 1) r ON true
        LEFT JOIN LATERAL (SELECT d.* FROM messages d
                           WHERE i.client_message_id IS NOT NULL AND d.org_id = i.org_id
                             AND d.group_id = i.group_id AND d.sender = i.sender
                             AND d.client_message_id = i.client_message_id
                           LIMIT 1) p ON true
    ), ok AS MATERIALIZED (
        SELECT f.*, f.last_seq + row_number() OVER (PARTITION BY f.org_id, f.group_id ORDER BY f.ord) AS seq
        FROM facts f
        WHERE f.last_seq IS NOT NULL AND f.member AND f.reply_in_group AND f.prior_id IS NULL
    ), bumped AS (
        UPDATE groups g SET last_seq = c.top
        FROM (SELECT org_id, group_id, max(seq) AS top FROM ok GROUP BY org_id, group_id) c
        WHERE g.org_id = c.org_id AND g.id = c.group_id
    ), stored AS (
        INSERT INTO messages (org_id, group_id, seq, id, sender, content, content_type, attachments,
                              reply_to, client_message_id, created_at)
        SELECT org_id, group_id, seq, id, sender, content, content_type, attachments, reply_to,
               client_message_id, created_at
        FROM ok
        RETURNING id, seq
    )
    SELECT f.group_type, f.member, f.reply_in_group, s.seq, f.prior_id, f.prior_seq, f.prior_content,
           f.prior_content_type, f.prior_attachments, f.prior_reply_to, f.prior_created_at
    FROM facts f LEFT JOIN stored s ON s.id = f.id
    ORDER BY f.ord";

/// One post ready for [`POST_SQL`]: the message and its attachments as stored (JSON text).
#[derive(Debug)]
pub(crate) struct Post {
    pub message: Message,
    pub attachments: String,
}

impl Post {
    pub(crate) fn new(message: Message) -> Result<Self, DomainError> {
        let attachments = serde_json::to_string(&message.attachments)
            .map_err(|e| DomainError::Internal(format!("attachments: {e}")))?;
        Ok(Self { message, attachments })
    }
}

/// What [`POST_SQL`] found and did for one post: its facts and the seq it was stored with (an
/// error of that post alone, such as a corrupt stored row, leaves the others' answers intact).
pub(crate) type Written = Result<(Facts, Option<i64>), DomainError>;

type PostRow = (
    Option<String>,
    bool,
    bool,
    Option<i64>,
    Option<uuid::Uuid>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<uuid::Uuid>,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// Runs [`POST_SQL`] for `posts`: per post, in order, its facts and the seq it was stored with.
pub(crate) async fn write_postgres<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    posts: &[&Post],
) -> Result<Vec<Written>, sqlx::Error> {
    let text = |f: &dyn Fn(&Post) -> &str| posts.iter().map(|p| f(p)).collect::<Vec<_>>();
    let rows: Vec<PostRow> = sqlx::query_as(POST_SQL)
        .bind(text(&|p| p.message.org_id.as_str()))
        .bind(posts.iter().map(|p| p.message.group_id.0).collect::<Vec<_>>())
        .bind(text(&|p| p.message.from.as_str()))
        .bind(posts.iter().map(|p| p.message.id.0).collect::<Vec<_>>())
        .bind(text(&|p| p.message.content.as_str()))
        .bind(text(&|p| p.message.content_type.as_str()))
        .bind(text(&|p| p.attachments.as_str()))
        .bind(
            posts
                .iter()
                .map(|p| p.message.reply_to.map(|r| r.0))
                .collect::<Vec<_>>(),
        )
        .bind(
            posts
                .iter()
                .map(|p| p.message.client_message_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(posts.iter().map(|p| p.message.created_at).collect::<Vec<_>>())
        .fetch_all(executor)
        .await?;
    if rows.len() != posts.len() {
        return Err(sqlx::Error::Protocol(format!(
            "post statement answered {} rows for {} posts",
            rows.len(),
            posts.len()
        )));
    }
    Ok(posts
        .iter()
        .zip(rows)
        .map(|(post, row)| facts_of_row(&post.message, row))
        .collect())
}

fn facts_of_row(message: &Message, row: PostRow) -> Written {
    let (
        group_type,
        member,
        reply_in_group,
        seq,
        prior_id,
        prior_seq,
        content,
        content_type,
        attachments,
        reply_to,
        created_at,
    ) = row;
    let group = group_type
        .map(|raw| GroupType::parse(&raw).ok_or_else(|| DomainError::Internal(format!("stored group type '{raw}'"))))
        .transpose()?;
    let prior = match (prior_id, prior_seq, content, content_type, attachments, created_at) {
        (Some(id), Some(seq), Some(content), Some(content_type), Some(attachments), Some(created_at)) => {
            Some(Message {
                id: MessageId(id),
                seq,
                content,
                content_type,
                attachments: parse_attachments(&attachments)?,
                reply_to: reply_to.map(MessageId),
                created_at,
                ..message.clone()
            })
        }
        _ => None,
    };
    let facts = Facts {
        group,
        member,
        reply_in_group,
        prior,
    };
    Ok((facts, seq))
}

pub(crate) fn parse_attachments(stored: &str) -> Result<Vec<Attachment>, DomainError> {
    serde_json::from_str(stored).map_err(|e| DomainError::Internal(format!("stored attachments: {e}")))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.is_unique_violation())
}

impl Store {
    /// Stores `message` with its group's next seq, or answers why not (404, 403, 400), or
    /// returns the message already stored under its `clientMessageId`. The seq and id it
    /// comes with are replaced by the stored ones on a replay. On Postgres, with group commit
    /// on, the post joins the batch of posts waiting at the same time (`group_commit.rs`).
    pub async fn post_message(&self, message: Message) -> Result<PostOutcome, DomainError> {
        let post = std::sync::Arc::new(Post::new(message)?);
        if self.backend() != DbBackend::Postgres {
            return self.post_sqlite(&post).await;
        }
        if let Some(batcher) = &self.batcher
            && let Some(written) = batcher.post(&post).await?
        {
            let (facts, seq) = written?;
            return conclude(&post.message, facts, seq);
        }
        self.post_alone(&post).await
    }

    /// [`POST_SQL`] for one post on the pool: without group commit, and for the posts of a
    /// batch the server refused.
    async fn post_alone(&self, post: &Post) -> Result<PostOutcome, DomainError> {
        let pool = self.db.get_postgres_connection_pool();
        let mut written = write_postgres(pool, &[post]).await;
        if let Err(e) = &written
            && is_unique_violation(e)
        {
            // A retry with the same clientMessageId committed first on another connection:
            // run again, and the statement's probe finds it (a replay).
            written = write_postgres(pool, &[post]).await;
        }
        let (facts, seq) = written?
            .pop()
            .ok_or_else(|| DomainError::Internal("no post row".into()))??;
        conclude(&post.message, facts, seq)
    }

    /// The same steps as [`POST_SQL`], one query at a time under the SQLite write gate (one
    /// writer at a time, so nothing can race between the facts and the insert).
    async fn post_sqlite(&self, post: &Post) -> Result<PostOutcome, DomainError> {
        let write = self.begin_write().await?;
        let txn = &write.txn;
        let facts = facts_sqlite(txn, &post.message).await?;
        let message = &post.message;
        match verdict(facts) {
            Verdict::Refuse(e) => Err(e),
            Verdict::Replay(stored) => Ok(PostOutcome::Replayed(stored)),
            Verdict::Store => {
                let org = message.org_id.as_str();
                let bumped = groups::Entity::update_many()
                    .col_expr(groups::Column::LastSeq, Expr::col(groups::Column::LastSeq).add(1))
                    .filter(groups::Column::OrgId.eq(org))
                    .filter(groups::Column::Id.eq(message.group_id.0))
                    .exec_with_returning(txn)
                    .await?;
                let seq = bumped
                    .first()
                    .map(|g| g.last_seq)
                    .ok_or_else(|| DomainError::Internal("group row vanished under the write gate".into()))?;
                let row = messages::ActiveModel {
                    org_id: Set(org.to_owned()),
                    group_id: Set(message.group_id.0),
                    seq: Set(seq),
                    id: Set(message.id.0),
                    sender: Set(message.from.as_str().to_owned()),
                    content: Set(message.content.clone()),
                    content_type: Set(message.content_type.clone()),
                    attachments: Set(post.attachments.clone()),
                    reply_to: Set(message.reply_to.map(|r| r.0)),
                    client_message_id: Set(message.client_message_id.clone()),
                    created_at: Set(message.created_at),
                };
                messages::Entity::insert(row).exec_without_returning(txn).await?;
                write.txn.commit().await?;
                Ok(PostOutcome::Stored(Message { seq, ..message.clone() }))
            }
        }
    }
}

/// [`Facts`] of one post on SQLite, inside the write transaction.
async fn facts_sqlite(txn: &sea_orm::DatabaseTransaction, message: &Message) -> Result<Facts, DomainError> {
    let org = message.org_id.as_str();
    let group_type: Option<String> = groups::Entity::find()
        .select_only()
        .column(groups::Column::GroupType)
        .filter(groups::Column::OrgId.eq(org))
        .filter(groups::Column::Id.eq(message.group_id.0))
        .into_tuple()
        .one(txn)
        .await?;
    let group = group_type
        .map(|raw| GroupType::parse(&raw).ok_or_else(|| DomainError::Internal(format!("stored group type '{raw}'"))))
        .transpose()?;
    let member =
        group_members::Entity::find_by_id((org.to_owned(), message.group_id.0, message.from.as_str().to_owned()))
            .one(txn)
            .await?
            .is_some();
    let reply_in_group = match message.reply_to {
        None => true,
        Some(reply_to) => {
            let group_of: Option<uuid::Uuid> = messages::Entity::find()
                .select_only()
                .column(messages::Column::GroupId)
                .filter(messages::Column::OrgId.eq(org))
                .filter(messages::Column::Id.eq(reply_to.0))
                .into_tuple()
                .one(txn)
                .await?;
            group_of == Some(message.group_id.0)
        }
    };
    let prior = match &message.client_message_id {
        None => None,
        Some(client_id) => messages::Entity::find()
            .filter(messages::Column::OrgId.eq(org))
            .filter(messages::Column::GroupId.eq(message.group_id.0))
            .filter(messages::Column::Sender.eq(message.from.as_str()))
            .filter(messages::Column::ClientMessageId.eq(client_id.as_str()))
            .one(txn)
            .await?
            .map(to_message)
            .transpose()?,
    };
    Ok(Facts {
        group,
        member,
        reply_in_group,
        prior,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Email, GroupId, OrgId};

    fn message() -> Message {
        Message {
            id: MessageId::new_v7(),
            group_id: GroupId::new_v7(),
            org_id: OrgId::parse("o1").expect("org"),
            seq: 0,
            from: Email::parse("a@example.com").expect("email"),
            content: "hi".into(),
            content_type: "text".into(),
            attachments: vec![],
            reply_to: None,
            client_message_id: Some("c1".into()),
            created_at: chrono::Utc::now(),
        }
    }

    fn member_of(group_type: GroupType) -> Facts {
        Facts {
            group: Some(group_type),
            member: true,
            reply_in_group: true,
            prior: None,
        }
    }

    fn status(v: Verdict) -> u16 {
        match v {
            Verdict::Refuse(e) => e.status_code(),
            Verdict::Store => 201,
            Verdict::Replay(_) => 200,
        }
    }

    #[test]
    fn no_group_is_not_found() {
        assert_eq!(status(verdict(Facts::default())), 404);
    }

    #[test]
    fn a_private_group_is_not_found_for_non_members_and_public_is_forbidden() {
        let outsider = |t| Facts {
            member: false,
            ..member_of(t)
        };
        assert_eq!(status(verdict(outsider(GroupType::Private))), 404);
        assert_eq!(status(verdict(outsider(GroupType::Public))), 403);
    }

    #[test]
    fn a_reply_to_another_groups_message_is_invalid_even_on_a_retry() {
        let facts = Facts {
            reply_in_group: false,
            prior: Some(message()),
            ..member_of(GroupType::Private)
        };
        assert_eq!(status(verdict(facts)), 400);
    }

    #[test]
    fn a_non_members_retry_is_refused_not_replayed() {
        let facts = Facts {
            member: false,
            prior: Some(message()),
            ..member_of(GroupType::Public)
        };
        assert_eq!(status(verdict(facts)), 403);
    }

    #[test]
    fn a_members_retry_gets_the_stored_message() {
        let stored = Message { seq: 7, ..message() };
        let facts = Facts {
            prior: Some(stored.clone()),
            ..member_of(GroupType::Private)
        };
        match conclude(&message(), facts, None) {
            Ok(PostOutcome::Replayed(m)) => assert_eq!((m.id, m.seq), (stored.id, 7)),
            other => panic!("expected a replay, got {other:?}"),
        }
    }

    #[test]
    fn a_members_new_post_takes_the_stored_seq() {
        match conclude(&message(), member_of(GroupType::Public), Some(3)) {
            Ok(PostOutcome::Stored(m)) => assert_eq!(m.seq, 3),
            other => panic!("expected stored, got {other:?}"),
        }
    }

    #[test]
    fn a_statement_that_stored_what_the_rules_refuse_is_an_internal_error() {
        let facts = Facts {
            member: false,
            ..member_of(GroupType::Public)
        };
        assert_eq!(
            conclude(&message(), facts, Some(1))
                .map(|_| ())
                .unwrap_err()
                .status_code(),
            500
        );
        assert_eq!(
            conclude(&message(), member_of(GroupType::Public), None)
                .map(|_| ())
                .unwrap_err()
                .status_code(),
            500
        );
    }
}
