//! `ChatService`: every operation on groups, members and messages, with its authorization.
//! Writes commit first and publish after (DESIGN.md): a crash between the two loses nothing,
//! because clients catch up from the store by seq.
//!
//! Where each rule lives:
//! - visibility (private groups are 404 to non-members): [`GroupType::visible_to`], used by
//!   every read here and by the post statement;
//! - posting (membership, `replyTo`, `clientMessageId` replay, gap-free seq): the store's post
//!   module (`store/post.rs`), one statement on Postgres, with a table of rule and place;
//! - the last admin can neither leave nor be demoted: [`check_last_admin`](super::model::check_last_admin), which the store
//!   calls under the group's lock in `upsert_member` and `remove_member`;
//! - who may manage a group: [`Role::can_manage`].

use std::sync::Arc;

use tracing::Instrument;

use super::{
    model::{
        AddMember, CreateGroup, Group, GroupType, HistoryCursor, ListGroups, Member, Message, PostMessage, Role,
        UpdateGroup,
    },
    validate,
};
use crate::{
    auth::Caller,
    bus::{Bus, Envelope, Event, Topic},
    config::Limits,
    error::DomainError,
    ids::{Email, GroupId, MessageId},
    store::{MemberChange, PostOutcome, Store, now_millis},
};

/// A page of groups: `{ data, total }` on the wire.
pub struct Page {
    pub data: Vec<Group>,
    pub total: u64,
}

/// A slice of history: `{ data, hasMore }` on the wire.
pub struct History {
    pub data: Vec<Message>,
    pub has_more: bool,
}

pub const DEFAULT_LIST_LIMIT: u64 = 20;
pub const MAX_LIST_LIMIT: u64 = 100;
pub const DEFAULT_HISTORY_LIMIT: u64 = 50;
pub const MAX_HISTORY_LIMIT: u64 = 200;

#[derive(Clone)]
pub struct ChatService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    bus: Arc<dyn Bus>,
    limits: Limits,
}

impl ChatService {
    pub fn new(store: Store, bus: Arc<dyn Bus>, limits: Limits) -> Self {
        Self {
            inner: Arc::new(Inner { store, bus, limits }),
        }
    }

    /// The store itself, for start-up, operators' tools and tests. The tiers go through this
    /// service's operations and its narrow capabilities (`MessageLog`, `EventFeed`) instead.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn bus(&self) -> &Arc<dyn Bus> {
        &self.inner.bus
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub async fn create_group(&self, caller: &Caller, input: CreateGroup) -> Result<Group, DomainError> {
        let limits = &self.inner.limits;
        let name = validate::name(limits, &input.name)?;
        let description = validate::description(limits, input.description.as_deref().unwrap_or(""))?;
        let page = validate::page(input.page.as_deref())?;
        if input.members.len() > limits.max_initial_members as usize {
            return Err(DomainError::invalid(format!(
                "more than {} members",
                limits.max_initial_members
            )));
        }
        // The creator is an admin; a listed e-mail twice keeps its highest role.
        let mut members: Vec<Member> = vec![Member {
            email: caller.email.clone(),
            role: Role::Admin,
        }];
        for m in input.members {
            match members.iter_mut().find(|x| x.email == m.email) {
                Some(existing) if m.role == Role::Admin => existing.role = Role::Admin,
                Some(_) => {}
                None => members.push(m),
            }
        }
        let now = now_millis();
        let group = Group {
            id: GroupId::new_v7(),
            org_id: caller.org.clone(),
            name,
            description,
            group_type: input.group_type.unwrap_or(GroupType::Private),
            page,
            created_by: caller.email.clone(),
            created_at: now,
            updated_at: now,
            member_count: members.len() as i64,
            my_role: Some(Role::Admin),
            members: None,
        };
        self.inner.store.insert_group(&group, &members).await?;
        let broadcast = Group {
            my_role: None,
            ..group.clone()
        };
        let events: Vec<Envelope> = members
            .iter()
            .map(|m| {
                Envelope::new(
                    Topic::user(&caller.org, &m.email),
                    Event::AddedToGroup {
                        group: Group {
                            my_role: Some(m.role),
                            ..broadcast.clone()
                        },
                    },
                )
            })
            .collect();
        self.publish_all(events).await;
        Ok(group)
    }

    pub async fn list_groups(&self, caller: &Caller, query: ListGroups) -> Result<Page, DomainError> {
        let limit = validate::limit(query.limit, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)?;
        if query.page_num == 0 {
            return Err(DomainError::invalid("pageNum must be 1 or more"));
        }
        let offset = (query.page_num - 1).saturating_mul(limit);
        let page = query.page.as_deref();
        let store = &self.inner.store;
        let (rows, total) = if query.public_only {
            store
                .list_public_groups(&caller.org, &caller.email, page, limit, offset)
                .await?
        } else {
            store
                .list_groups_of(&caller.org, &caller.email, page, limit, offset)
                .await?
        };
        Ok(Page { data: rows, total })
    }

    pub async fn get_group(&self, caller: &Caller, id: GroupId) -> Result<Group, DomainError> {
        let mut group = self.visible_group(caller, id).await?;
        group.members = Some(self.inner.store.list_members(&caller.org, id).await?);
        Ok(group)
    }

    pub async fn update_group(&self, caller: &Caller, id: GroupId, input: UpdateGroup) -> Result<Group, DomainError> {
        let limits = &self.inner.limits;
        let current = self.visible_group(caller, id).await?;
        require_admin(&current, "only admins can change the group")?;
        let mut changed = current;
        if let Some(name) = &input.name {
            changed.name = validate::name(limits, name)?;
        }
        if let Some(description) = &input.description {
            changed.description = validate::description(limits, description)?;
        }
        if let Some(group_type) = input.group_type {
            changed.group_type = group_type;
        }
        if let Some(page) = &input.page {
            changed.page = validate::page(page.as_deref())?;
        }
        changed.updated_at = now_millis();
        let group = self
            .inner
            .store
            .update_group(&changed)
            .await?
            .ok_or_else(|| DomainError::not_found("group not found"))?;
        self.publish_all([Envelope::new(
            Topic::group(&caller.org, id),
            Event::GroupUpdated {
                group: Group {
                    my_role: None,
                    ..group.clone()
                },
            },
        )])
        .await;
        Ok(group)
    }

    pub async fn delete_group(&self, caller: &Caller, id: GroupId) -> Result<(), DomainError> {
        let current = self.visible_group(caller, id).await?;
        require_admin(&current, "only admins can delete the group")?;
        if !self.inner.store.delete_group(&caller.org, id).await? {
            return Err(DomainError::not_found("group not found"));
        }
        self.publish_all([Envelope::new(
            Topic::group(&caller.org, id),
            Event::GroupDeleted { group_id: id },
        )])
        .await;
        Ok(())
    }

    /// Stores a message; `(message, true)` when it is a replay of an earlier send with the same
    /// `clientMessageId` (nothing new is stored or published).
    #[tracing::instrument(name = "post_message", skip_all, fields(org = %caller.org, group = %id))]
    pub async fn post_message(
        &self,
        caller: &Caller,
        id: GroupId,
        input: PostMessage,
    ) -> Result<(Message, bool), DomainError> {
        let content_type = validate::message(&self.inner.limits, &input)?;
        let message = Message {
            id: MessageId::new_v7(),
            group_id: id,
            org_id: caller.org.clone(),
            seq: 0,
            from: caller.email.clone(),
            content: input.content,
            content_type,
            attachments: input.attachments,
            reply_to: input.reply_to,
            client_message_id: input.client_message_id.map(|c| c.trim().to_owned()),
            created_at: now_millis(),
        };
        // One round trip on Postgres: rules, replay and seq are all in the post statement.
        match self.inner.store.post_message(message).await? {
            PostOutcome::Replayed(stored) => Ok((stored, true)),
            PostOutcome::Stored(stored) => {
                self.publish_all([Envelope::new(
                    Topic::group(&caller.org, id),
                    Event::NewGroupMessage(stored.clone()),
                )])
                .await;
                Ok((stored, false))
            }
        }
    }

    pub async fn history(
        &self,
        caller: &Caller,
        id: GroupId,
        cursor: HistoryCursor,
        limit: Option<u64>,
    ) -> Result<History, DomainError> {
        let limit = validate::limit(limit, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)?;
        self.visible_group(caller, id).await?;
        let store = &self.inner.store;
        let seq_of = |message: MessageId| async move {
            store
                .seq_of(&caller.org, id, message)
                .await?
                .ok_or_else(|| DomainError::invalid("cursor is not a message of this group"))
        };
        let mut data = match cursor {
            HistoryCursor::Latest => store.messages_before(&caller.org, id, None, limit + 1).await?,
            HistoryCursor::Before(m) => {
                store
                    .messages_before(&caller.org, id, Some(seq_of(m).await?), limit + 1)
                    .await?
            }
            HistoryCursor::After(m) => {
                store
                    .messages_after(&caller.org, id, seq_of(m).await?, limit + 1)
                    .await?
            }
            HistoryCursor::AfterSeq(seq) if seq < 0 => {
                return Err(DomainError::invalid("afterSeq must be 0 or more"));
            }
            HistoryCursor::AfterSeq(seq) => store.messages_after(&caller.org, id, seq, limit + 1).await?,
        };
        let has_more = data.len() as u64 > limit;
        data.truncate(limit as usize);
        Ok(History { data, has_more })
    }

    /// Adds a member or changes its role; `true` when the member is new (201 over REST).
    pub async fn add_member(
        &self,
        caller: &Caller,
        id: GroupId,
        input: AddMember,
    ) -> Result<(Member, bool), DomainError> {
        let group = self.visible_group(caller, id).await?;
        let role = input.role.unwrap_or(Role::Member);
        let is_admin = group.my_role.is_some_and(Role::can_manage);
        let self_join = input.email == caller.email
            && group.group_type == GroupType::Public
            && role == Role::Member
            && group.my_role.is_none();
        if !is_admin && !self_join {
            return Err(DomainError::forbidden("only admins can add members or change roles"));
        }
        let change = self
            .inner
            .store
            .upsert_member(&caller.org, id, &input.email, role)
            .await?;
        let member = Member {
            email: input.email,
            role,
        };
        if change != MemberChange::Unchanged {
            let mut events = vec![Envelope::new(
                Topic::group(&caller.org, id),
                Event::GroupMemberAdded {
                    group_id: id,
                    member: member.clone(),
                },
            )];
            if change == MemberChange::Added
                && let Some(group) = self.inner.store.find_group(&caller.org, id, &member.email).await?
            {
                events.push(Envelope::new(
                    Topic::user(&caller.org, &member.email),
                    Event::AddedToGroup { group },
                ));
            }
            self.publish_all(events).await;
        }
        Ok((member, change == MemberChange::Added))
    }

    pub async fn remove_member(&self, caller: &Caller, id: GroupId, email: &Email) -> Result<(), DomainError> {
        let group = self.visible_group(caller, id).await?;
        let is_admin = group.my_role.is_some_and(Role::can_manage);
        if !is_admin && *email != caller.email {
            return Err(DomainError::forbidden("only admins can remove other members"));
        }
        self.inner.store.remove_member(&caller.org, id, email).await?;
        self.publish_all([
            Envelope::new(
                Topic::user(&caller.org, email),
                Event::RemovedFromGroup { group_id: id },
            ),
            Envelope::new(
                Topic::group(&caller.org, id),
                Event::GroupMemberRemoved {
                    group_id: id,
                    email: email.clone(),
                },
            ),
        ])
        .await;
        Ok(())
    }

    /// The ids of the caller's groups (the socket auto-join).
    pub async fn my_group_ids(&self, caller: &Caller) -> Result<Vec<GroupId>, DomainError> {
        self.inner.store.group_ids_of(&caller.org, &caller.email).await
    }

    /// 404 unless the caller is a member (`joinGroup`; private and public alike).
    pub async fn require_member(&self, caller: &Caller, id: GroupId) -> Result<Role, DomainError> {
        let group = self.visible_group(caller, id).await?;
        group
            .my_role
            .ok_or_else(|| DomainError::forbidden("only members can join this group's room"))
    }

    /// The group if the caller may see it: members always, others only when it is public.
    /// Everything else is 404, so a private group's existence does not leak.
    async fn visible_group(&self, caller: &Caller, id: GroupId) -> Result<Group, DomainError> {
        match self.inner.store.find_group(&caller.org, id, &caller.email).await? {
            Some(g) if g.group_type.visible_to(g.my_role.is_some()) => Ok(g),
            _ => Err(DomainError::not_found("group not found")),
        }
    }

    async fn publish_all(&self, envelopes: impl IntoIterator<Item = Envelope>) {
        for envelope in envelopes {
            let event = envelope.event.name();
            let span = tracing::info_span!("publish", event);
            if let Err(e) = self.inner.bus.publish(envelope).instrument(span).await {
                // The write is committed; clients catch up by seq. Log and go on.
                tracing::warn!(error = %e, event, "publishing an event failed");
            }
        }
    }
}

fn require_admin(group: &Group, message: &str) -> Result<(), DomainError> {
    if group.my_role.is_some_and(Role::can_manage) {
        Ok(())
    } else {
        Err(DomainError::forbidden(message))
    }
}
