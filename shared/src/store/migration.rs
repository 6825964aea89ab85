//! Schema migrations, run by `community-chat migrate` (and by `serve` at start-up). One change
//! per statement: some ALTERs are not supported on SQLite.

use sea_orm_migration::prelude::*;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateSchema), Box::new(DropMessagesGroupForeignKey)]
    }
}

#[derive(DeriveIden)]
enum Groups {
    Table,
    OrgId,
    Id,
    Name,
    Description,
    GroupType,
    Page,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
    MemberCount,
    LastSeq,
}

#[derive(DeriveIden)]
enum GroupMembers {
    Table,
    OrgId,
    GroupId,
    Email,
    Role,
    JoinedAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    OrgId,
    GroupId,
    Seq,
    Id,
    Sender,
    Content,
    ContentType,
    Attachments,
    ReplyTo,
    ClientMessageId,
    CreatedAt,
}

#[derive(DeriveMigrationName)]
struct CreateSchema;

#[async_trait::async_trait]
impl MigrationTrait for CreateSchema {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Groups::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Groups::OrgId).string_len(128).not_null())
                    .col(ColumnDef::new(Groups::Id).uuid().not_null())
                    .col(ColumnDef::new(Groups::Name).string().not_null())
                    .col(ColumnDef::new(Groups::Description).text().not_null())
                    .col(ColumnDef::new(Groups::GroupType).string_len(16).not_null())
                    .col(ColumnDef::new(Groups::Page).string().null())
                    .col(ColumnDef::new(Groups::CreatedBy).string().not_null())
                    .col(ColumnDef::new(Groups::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Groups::UpdatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Groups::MemberCount).big_integer().not_null().default(0))
                    .col(ColumnDef::new(Groups::LastSeq).big_integer().not_null().default(0))
                    .primary_key(Index::create().col(Groups::OrgId).col(Groups::Id))
                    .to_owned(),
            )
            .await?;
        // Public listing and the page filter: org first, newest first.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("groups_org_type_created")
                    .table(Groups::Table)
                    .col(Groups::OrgId)
                    .col(Groups::GroupType)
                    .col(Groups::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("groups_org_page")
                    .table(Groups::Table)
                    .col(Groups::OrgId)
                    .col(Groups::Page)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(GroupMembers::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(GroupMembers::OrgId).string_len(128).not_null())
                    .col(ColumnDef::new(GroupMembers::GroupId).uuid().not_null())
                    .col(ColumnDef::new(GroupMembers::Email).string().not_null())
                    .col(ColumnDef::new(GroupMembers::Role).string_len(16).not_null())
                    .col(
                        ColumnDef::new(GroupMembers::JoinedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(GroupMembers::OrgId)
                            .col(GroupMembers::GroupId)
                            .col(GroupMembers::Email),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(GroupMembers::Table, (GroupMembers::OrgId, GroupMembers::GroupId))
                            .to(Groups::Table, (Groups::OrgId, Groups::Id))
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // "My groups": (org, email) -> group ids, with the role in the index (index-only scan).
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("group_members_org_email")
                    .table(GroupMembers::Table)
                    .col(GroupMembers::OrgId)
                    .col(GroupMembers::Email)
                    .col(GroupMembers::GroupId)
                    .col(GroupMembers::Role)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Messages::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Messages::OrgId).string_len(128).not_null())
                    .col(ColumnDef::new(Messages::GroupId).uuid().not_null())
                    .col(ColumnDef::new(Messages::Seq).big_integer().not_null())
                    .col(ColumnDef::new(Messages::Id).uuid().not_null())
                    .col(ColumnDef::new(Messages::Sender).string().not_null())
                    .col(ColumnDef::new(Messages::Content).text().not_null())
                    .col(ColumnDef::new(Messages::ContentType).string_len(64).not_null())
                    .col(ColumnDef::new(Messages::Attachments).text().not_null())
                    .col(ColumnDef::new(Messages::ReplyTo).uuid().null())
                    .col(ColumnDef::new(Messages::ClientMessageId).string_len(128).null())
                    .col(
                        ColumnDef::new(Messages::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(Messages::OrgId)
                            .col(Messages::GroupId)
                            .col(Messages::Seq),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Messages::Table, (Messages::OrgId, Messages::GroupId))
                            .to(Groups::Table, (Groups::OrgId, Groups::Id))
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Cursor look-up by message id (`before`/`after`, `replyTo`).
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("messages_org_id")
                    .table(Messages::Table)
                    .col(Messages::OrgId)
                    .col(Messages::Id)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Idempotent sends; NULL client ids never collide (NULLs are distinct in both databases).
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("messages_org_group_sender_client_id")
                    .table(Messages::Table)
                    .col(Messages::OrgId)
                    .col(Messages::GroupId)
                    .col(Messages::Sender)
                    .col(Messages::ClientMessageId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Messages::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(GroupMembers::Table).to_owned())
            .await?;
        manager.drop_table(Table::drop().table(Groups::Table).to_owned()).await
    }
}

/// Postgres only: messages lose their foreign key to groups. Every insert already takes its
/// group's row lock (the seq is on that row) and `delete_group` deletes the group row first and
/// then its messages, so the key guarded nothing; its per-row check cost ~40 µs of Postgres
/// time per stored message (BENCHMARKS.md). SQLite cannot drop a constraint and keeps it.
struct DropMessagesGroupForeignKey;

// Named by hand: the derive names a migration after its file, and the first one took "migration".
impl MigrationName for DropMessagesGroupForeignKey {
    fn name(&self) -> &str {
        "m2_drop_messages_group_fk"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for DropMessagesGroupForeignKey {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_org_id_group_id_fkey")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE messages ADD CONSTRAINT messages_org_id_group_id_fkey FOREIGN KEY (org_id, group_id) \
                 REFERENCES groups (org_id, id) ON DELETE CASCADE",
            )
            .await?;
        Ok(())
    }
}
