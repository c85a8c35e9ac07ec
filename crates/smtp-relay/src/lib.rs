//! A durable SMTP relay on top of `smtp-server` and `smtp-client`.
//!
//! The relay accepts a message, commits it to stable storage before it says
//! `250`, routes each recipient (local delivery, a static route, a
//! smarthost or MX delivery per RFC 5321 §5.1), delivers with retries and
//! backoff, and reports failures to the sender as RFC 3464 delivery status
//! notifications.

pub mod dns;
pub mod dsn;
