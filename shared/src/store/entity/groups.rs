use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "groups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub org_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// `public` or `private`.
    pub group_type: String,
    pub page: Option<String>,
    pub created_by: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Kept in the same transaction as member inserts and deletes, so listing never counts.
    pub member_count: i64,
    /// The last `seq` handed out; its row lock serialises writes to this group only.
    pub last_seq: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl Related<super::group_members::Entity> for Entity {
    fn to() -> RelationDef {
        super::group_members::Relation::Group.def().rev()
    }
}

impl ActiveModelBehavior for ActiveModel {}
