//! The rules of the product (spec + DESIGN.md) and the one service both transports call.
//! A REST handler or socket event parses its input, calls one method here, maps the result.

mod message_log;
pub mod model;
mod service;
mod validate;

pub use message_log::{EventFeed, MessageLog};
pub use service::{ChatService, History, Page};
