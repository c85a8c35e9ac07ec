//! A durable SMTP relay on top of `smtp-server` and `smtp-client`.
//!
//! The relay accepts a message, commits it to stable storage before it says
//! `250`, routes each recipient (local delivery, a static route, a
//! smarthost or MX delivery per RFC 5321 §5.1), delivers with retries and
//! backoff, and reports failures to the sender as RFC 3464 delivery status
//! notifications.
//!
//! - [`queue`]: the queue's data model and the [`queue::QueueStore`] trait;
//! - [`spool`]: the default store, a checksummed log on local disk with
//!   group commit.

mod crc32c;
pub mod dns;
pub mod dsn;
pub mod queue;
pub mod spool;
