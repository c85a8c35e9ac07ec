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
//!   group commit;
//! - [`receive`]: the smtp-server backend that enforces relay access and
//!   queues before it says `250`;
//! - [`route`]: which next hop each recipient domain goes to;
//! - [`deliver`]: one delivery attempt over smtp-client pools;
//! - [`scheduler`]: claims, retries, expiry and notifications;
//! - [`notice`]: the RFC 3464 notifications the scheduler queues;
//! - [`inspect`]: listing, summary, hold, release, delete and flush on
//!   any store, for the admin interface;
//! - [`observe`]: metrics and events of any store;
//! - [`clock`]: the injected clock;
//! - `postgres` (feature `postgres`): a queue in PostgreSQL shared by
//!   many relay nodes.

pub mod clock;
mod crc32c;
pub mod deliver;
pub mod dns;
pub mod dsn;
pub mod inspect;
pub mod notice;
pub mod observe;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod queue;
pub mod receive;
pub mod route;
pub mod scheduler;
pub mod spool;
