//! sea-orm entities. Every table's key starts with `org_id`: the tenant boundary in the data
//! (DESIGN.md, Storage).

pub mod group_members;
pub mod groups;
pub mod messages;
