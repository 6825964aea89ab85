//! Group and membership queries.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, FromQueryResult, JoinType, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, RelationTrait, sea_query::Expr, sea_query::ExprTrait,
};
use uuid::Uuid;

use super::{
    Store,
    entity::{group_members, groups},
};
use crate::{
    domain::model::{Group, GroupType, Member, Role, check_last_admin},
    error::DomainError,
    ids::{Email, GroupId, OrgId},
};

/// The domain group of a stored row, with the caller's role when known.
fn group_of(row: groups::Model, my_role: Option<Role>) -> Result<Group, DomainError> {
    Ok(Group {
        id: GroupId(row.id),
        org_id: OrgId::parse(&row.org_id)?,
        name: row.name,
        description: row.description,
        group_type: GroupType::parse(&row.group_type)
            .ok_or_else(|| DomainError::Internal(format!("stored group type '{}'", row.group_type)))?,
        page: row.page,
        created_by: Email::parse(&row.created_by)?,
        created_at: row.created_at,
        updated_at: row.updated_at,
        member_count: row.member_count,
        my_role,
        members: None,
    })
}

/// What an add-member call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    Added,
    RoleChanged,
    Unchanged,
}

#[derive(FromQueryResult)]
struct GroupWithRole {
    org_id: String,
    id: Uuid,
    name: String,
    description: String,
    group_type: String,
    page: Option<String>,
    created_by: String,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    member_count: i64,
    last_seq: i64,
    my_role: String,
}

impl GroupWithRole {
    fn into_group(self) -> Result<Group, DomainError> {
        let my_role = Some(parse_role(&self.my_role)?);
        let row = groups::Model {
            org_id: self.org_id,
            id: self.id,
            name: self.name,
            description: self.description,
            group_type: self.group_type,
            page: self.page,
            created_by: self.created_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
            member_count: self.member_count,
            last_seq: self.last_seq,
        };
        group_of(row, my_role)
    }
}

fn parse_role(raw: &str) -> Result<Role, DomainError> {
    Role::parse(raw).ok_or_else(|| DomainError::Internal(format!("stored role '{raw}'")))
}

impl Store {
    /// Inserts a new group (its seq starts at 0) and its first members in one transaction.
    pub async fn insert_group(&self, group: &Group, members: &[Member]) -> Result<(), DomainError> {
        let write = self.begin_write().await?;
        let joined_at = group.created_at;
        let (org_id, group_id) = (group.org_id.as_str().to_owned(), group.id.0);
        let row = groups::Model {
            org_id: org_id.clone(),
            id: group_id,
            name: group.name.clone(),
            description: group.description.clone(),
            group_type: group.group_type.as_str().to_owned(),
            page: group.page.clone(),
            created_by: group.created_by.as_str().to_owned(),
            created_at: group.created_at,
            updated_at: group.updated_at,
            member_count: group.member_count,
            last_seq: 0,
        };
        groups::Entity::insert(groups::ActiveModel::from(row))
            .exec_without_returning(&write.txn)
            .await?;
        if !members.is_empty() {
            let rows = members.iter().map(|m| group_members::ActiveModel {
                org_id: Set(org_id.clone()),
                group_id: Set(group_id),
                email: Set(m.email.as_str().to_owned()),
                role: Set(m.role.as_str().to_owned()),
                joined_at: Set(joined_at),
            });
            group_members::Entity::insert_many(rows)
                .exec_without_returning(&write.txn)
                .await?;
        }
        write.txn.commit().await?;
        Ok(())
    }

    /// The group and the caller's role in it (`None`: not a member).
    pub async fn find_group(&self, org: &OrgId, id: GroupId, caller: &Email) -> Result<Option<Group>, DomainError> {
        let Some(row) = groups::Entity::find_by_id((org.as_str().to_owned(), id.0))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let my_role = self.role_of(org, id, caller).await?;
        Ok(Some(group_of(row, my_role)?))
    }

    pub async fn role_of(&self, org: &OrgId, id: GroupId, email: &Email) -> Result<Option<Role>, DomainError> {
        let member = group_members::Entity::find_by_id((org.as_str().to_owned(), id.0, email.as_str().to_owned()))
            .one(&self.db)
            .await?;
        member.map(|m| parse_role(&m.role)).transpose()
    }

    pub async fn list_members(&self, org: &OrgId, id: GroupId) -> Result<Vec<Member>, DomainError> {
        let rows = group_members::Entity::find()
            .filter(group_members::Column::OrgId.eq(org.as_str()))
            .filter(group_members::Column::GroupId.eq(id.0))
            .order_by_asc(group_members::Column::JoinedAt)
            .order_by_asc(group_members::Column::Email)
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|m| {
                Ok(Member {
                    email: Email::parse(&m.email)?,
                    role: parse_role(&m.role)?,
                })
            })
            .collect()
    }

    /// The caller's groups, newest first, with the total for paging.
    pub async fn list_groups_of(
        &self,
        org: &OrgId,
        email: &Email,
        page: Option<&str>,
        limit: u64,
        offset: u64,
    ) -> Result<(Vec<Group>, u64), DomainError> {
        let mut query = groups::Entity::find()
            .join(JoinType::InnerJoin, group_members::Relation::Group.def().rev())
            .filter(group_members::Column::OrgId.eq(org.as_str()))
            .filter(group_members::Column::Email.eq(email.as_str()));
        if let Some(page) = page {
            query = query.filter(groups::Column::Page.eq(page));
        }
        let total = query.clone().count(&self.db).await?;
        let rows = query
            .column_as(group_members::Column::Role, "my_role")
            .order_by_desc(groups::Column::CreatedAt)
            .order_by_desc(groups::Column::Id)
            .limit(limit)
            .offset(offset)
            .into_model::<GroupWithRole>()
            .all(&self.db)
            .await?;
        let groups = rows
            .into_iter()
            .map(GroupWithRole::into_group)
            .collect::<Result<_, _>>()?;
        Ok((groups, total))
    }

    /// The org's public groups, joined or not, newest first; `my_role` filled for the caller.
    pub async fn list_public_groups(
        &self,
        org: &OrgId,
        email: &Email,
        page: Option<&str>,
        limit: u64,
        offset: u64,
    ) -> Result<(Vec<Group>, u64), DomainError> {
        let mut query = groups::Entity::find()
            .filter(groups::Column::OrgId.eq(org.as_str()))
            .filter(groups::Column::GroupType.eq(GroupType::Public.as_str()));
        if let Some(page) = page {
            query = query.filter(groups::Column::Page.eq(page));
        }
        let total = query.clone().count(&self.db).await?;
        let rows = query
            .order_by_desc(groups::Column::CreatedAt)
            .order_by_desc(groups::Column::Id)
            .limit(limit)
            .offset(offset)
            .all(&self.db)
            .await?;
        let ids: Vec<Uuid> = rows.iter().map(|g| g.id).collect();
        let mine = group_members::Entity::find()
            .filter(group_members::Column::OrgId.eq(org.as_str()))
            .filter(group_members::Column::Email.eq(email.as_str()))
            .filter(group_members::Column::GroupId.is_in(ids))
            .all(&self.db)
            .await?;
        let out = rows
            .into_iter()
            .map(|row| {
                let my_role = mine
                    .iter()
                    .find(|m| m.group_id == row.id)
                    .map(|m| parse_role(&m.role))
                    .transpose()?;
                group_of(row, my_role)
            })
            .collect::<Result<_, DomainError>>()?;
        Ok((out, total))
    }

    /// Ids of every group the user belongs to (the socket auto-join), in one query (on Postgres
    /// shared with the other look-ups asked at the same time, see `lookups.rs`).
    pub async fn group_ids_of(&self, org: &OrgId, email: &Email) -> Result<Vec<GroupId>, DomainError> {
        if let Some(lookups) = &self.lookups {
            return lookups.group_ids_of(org, email).await;
        }
        let ids: Vec<Uuid> = group_members::Entity::find()
            .select_only()
            .column(group_members::Column::GroupId)
            .filter(group_members::Column::OrgId.eq(org.as_str()))
            .filter(group_members::Column::Email.eq(email.as_str()))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(ids.into_iter().map(GroupId).collect())
    }

    /// The last seq of each of these groups of an org, in one query. Groups that do not exist
    /// are absent. The gateway's fan-out starts each group's ordering from here.
    pub async fn last_seqs(&self, org: &OrgId, ids: &[GroupId]) -> Result<Vec<(GroupId, i64)>, DomainError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(Uuid, i64)> = groups::Entity::find()
            .select_only()
            .column(groups::Column::Id)
            .column(groups::Column::LastSeq)
            .filter(groups::Column::OrgId.eq(org.as_str()))
            .filter(groups::Column::Id.is_in(ids.iter().map(|g| g.0)))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|(id, seq)| (GroupId(id), seq)).collect())
    }

    /// Saves the editable fields (name, description, type, page, updated time); returns the
    /// group as stored, with `updated.my_role`, or `None` if the group is gone.
    pub async fn update_group(&self, updated: &Group) -> Result<Option<Group>, DomainError> {
        let write = self.begin_write().await?;
        let result = groups::Entity::update_many()
            .col_expr(groups::Column::Name, Expr::value(updated.name.clone()))
            .col_expr(groups::Column::Description, Expr::value(updated.description.clone()))
            .col_expr(groups::Column::GroupType, Expr::value(updated.group_type.as_str()))
            .col_expr(groups::Column::Page, Expr::value(updated.page.clone()))
            .col_expr(groups::Column::UpdatedAt, Expr::value(updated.updated_at))
            .filter(groups::Column::OrgId.eq(updated.org_id.as_str()))
            .filter(groups::Column::Id.eq(updated.id.0))
            .exec_with_returning(&write.txn)
            .await?;
        write.txn.commit().await?;
        result
            .into_iter()
            .next()
            .map(|row| group_of(row, updated.my_role))
            .transpose()
    }

    /// Deletes the group with its members and messages. `false` if it did not exist.
    pub async fn delete_group(&self, org: &OrgId, id: GroupId) -> Result<bool, DomainError> {
        let write = self.begin_write().await?;
        // The group row first: its lock waits for posts being stored in this group and stops
        // later ones (messages have no foreign key to groups on Postgres, see migration.rs), so
        // the messages deleted next include every message that will ever be stored in it.
        let deleted = groups::Entity::delete_many()
            .filter(groups::Column::OrgId.eq(org.as_str()))
            .filter(groups::Column::Id.eq(id.0))
            .exec(&write.txn)
            .await?;
        super::entity::messages::Entity::delete_many()
            .filter(super::entity::messages::Column::OrgId.eq(org.as_str()))
            .filter(super::entity::messages::Column::GroupId.eq(id.0))
            .exec(&write.txn)
            .await?;
        group_members::Entity::delete_many()
            .filter(group_members::Column::OrgId.eq(org.as_str()))
            .filter(group_members::Column::GroupId.eq(id.0))
            .exec(&write.txn)
            .await?;
        write.txn.commit().await?;
        Ok(deleted.rows_affected > 0)
    }

    /// Adds a member or sets its role. The group row is locked first, so two concurrent
    /// demotions cannot both pass [`check_last_admin`].
    pub async fn upsert_member(
        &self,
        org: &OrgId,
        id: GroupId,
        email: &Email,
        role: Role,
    ) -> Result<MemberChange, DomainError> {
        let write = self.begin_write().await?;
        let txn = &write.txn;
        lock_group(txn, org, id).await?;
        let key = (org.as_str().to_owned(), id.0, email.as_str().to_owned());
        let existing = group_members::Entity::find_by_id(key.clone()).one(txn).await?;
        let change = match existing {
            None => {
                group_members::Entity::insert(group_members::ActiveModel {
                    org_id: Set(key.0),
                    group_id: Set(key.1),
                    email: Set(key.2),
                    role: Set(role.as_str().to_owned()),
                    joined_at: Set(super::now_millis()),
                })
                .exec_without_returning(txn)
                .await?;
                bump_member_count(txn, org, id, 1).await?;
                MemberChange::Added
            }
            Some(m) if m.role == role.as_str() => MemberChange::Unchanged,
            Some(m) => {
                let current = parse_role(&m.role)?;
                if current == Role::Admin {
                    check_last_admin(current, Some(role), admin_count(txn, org, id).await?)?;
                }
                group_members::Entity::update_many()
                    .col_expr(group_members::Column::Role, Expr::value(role.as_str()))
                    .filter(group_members::Column::OrgId.eq(org.as_str()))
                    .filter(group_members::Column::GroupId.eq(id.0))
                    .filter(group_members::Column::Email.eq(email.as_str()))
                    .exec(txn)
                    .await?;
                MemberChange::RoleChanged
            }
        };
        write.txn.commit().await?;
        Ok(change)
    }

    /// Removes a member; 404 if not a member, 409 for the last admin ([`check_last_admin`],
    /// under the group row's lock).
    pub async fn remove_member(&self, org: &OrgId, id: GroupId, email: &Email) -> Result<(), DomainError> {
        let write = self.begin_write().await?;
        let txn = &write.txn;
        lock_group(txn, org, id).await?;
        let key = (org.as_str().to_owned(), id.0, email.as_str().to_owned());
        let existing = group_members::Entity::find_by_id(key)
            .one(txn)
            .await?
            .ok_or_else(|| DomainError::not_found(format!("{email} is not a member of this group")))?;
        let current = parse_role(&existing.role)?;
        if current == Role::Admin {
            check_last_admin(current, None, admin_count(txn, org, id).await?)?;
        }
        group_members::Entity::delete_many()
            .filter(group_members::Column::OrgId.eq(org.as_str()))
            .filter(group_members::Column::GroupId.eq(id.0))
            .filter(group_members::Column::Email.eq(email.as_str()))
            .exec(txn)
            .await?;
        bump_member_count(txn, org, id, -1).await?;
        write.txn.commit().await?;
        Ok(())
    }
}

/// Takes the group's row lock (a no-op update on Postgres; SQLite is already serialised by the
/// write gate). 404 if the group is gone.
async fn lock_group(txn: &sea_orm::DatabaseTransaction, org: &OrgId, id: GroupId) -> Result<(), DomainError> {
    let result = groups::Entity::update_many()
        .col_expr(groups::Column::MemberCount, Expr::col(groups::Column::MemberCount))
        .filter(groups::Column::OrgId.eq(org.as_str()))
        .filter(groups::Column::Id.eq(id.0))
        .exec(txn)
        .await?;
    if result.rows_affected == 0 {
        return Err(DomainError::not_found("group not found"));
    }
    Ok(())
}

async fn bump_member_count(
    txn: &sea_orm::DatabaseTransaction,
    org: &OrgId,
    id: GroupId,
    by: i64,
) -> Result<(), DomainError> {
    groups::Entity::update_many()
        .col_expr(
            groups::Column::MemberCount,
            Expr::col(groups::Column::MemberCount).add(by),
        )
        .filter(groups::Column::OrgId.eq(org.as_str()))
        .filter(groups::Column::Id.eq(id.0))
        .exec(txn)
        .await?;
    Ok(())
}

async fn admin_count(txn: &sea_orm::DatabaseTransaction, org: &OrgId, id: GroupId) -> Result<u64, DomainError> {
    Ok(group_members::Entity::find()
        .filter(group_members::Column::OrgId.eq(org.as_str()))
        .filter(group_members::Column::GroupId.eq(id.0))
        .filter(group_members::Column::Role.eq(Role::Admin.as_str()))
        .count(txn)
        .await?)
}
