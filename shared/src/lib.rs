//! community-chat's shared core: everything both tiers need, none of their transports.
//!
//! - [`ids`]: newtype ids that cannot hold invalid values.
//! - [`domain`]: the product's rules ([`domain::ChatService`]) and its wire shapes; the
//!   gateway's narrow capabilities ([`domain::MessageLog`], [`domain::EventFeed`]).
//! - [`store`]: sea-orm persistence on Postgres and SQLite, with migrations. It takes and
//!   returns domain types. Posting has one home, `store/post.rs` (its header has a table of
//!   each rule and where it is enforced), used alone or by group commit (`store/group_commit.rs`).
//! - [`bus`]: how events travel from writers to gateways (in-process or Redis).
//! - [`auth`]: JWT verification and development tokens.
//! - [`metrics`]: counters and histograms, and the one writer of Prometheus text.
//! - [`config`], [`telemetry`]: settings and logging.

pub mod auth;
pub mod bus;
pub mod config;
pub mod domain;
pub mod error;
pub mod ids;
pub mod metrics;
pub mod store;
pub mod telemetry;
