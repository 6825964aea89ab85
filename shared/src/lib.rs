//! community-chat's shared core: everything both tiers need, none of their transports.
//!
//! - [`ids`]: newtype ids that cannot hold invalid values.
//! - [`domain`]: the product's rules ([`domain::ChatService`]) and its wire shapes.
//! - [`store`]: sea-orm persistence on Postgres and SQLite, with migrations.
//! - [`bus`]: how events travel from writers to gateways (in-process or Redis).
//! - [`auth`]: JWT verification and development tokens.
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
