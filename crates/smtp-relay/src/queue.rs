//! The queue: what a queued message and its recipients look like, and the
//! [`QueueStore`] trait every store implements.
//!
//! A message enters the queue with [`QueueStore::enqueue`], which returns
//! only once the message and its envelope are committed (RFC 5321 §6.1: the
//! `250` after DATA hands responsibility to the relay). Each recipient then
//! moves on its own through the states of [`RecipientState`]:
//!
//! ```text
//!   queued ──▶ (claimed: in flight) ──▶ delivered
//!     ▲                 │          └──▶ failed
//!     │                 ▼
//!     └──────────── deferred (last reply, next attempt)
//! ```
//!
//! "In flight" is never written down: after a crash a claimed recipient is
//! simply due again, which is the RFC 5321 §6.1 "at least once" rule (a
//! duplicate is possible only for an attempt that was in flight).

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use smtp_proto::command::{BodyType, Notify, OriginalRecipient, Ret};

/// The identifier of a queued message, unique within its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// Why a message is in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A message a client submitted.
    Normal,
    /// A delivery status notification this relay generated. It has the
    /// null reverse-path and is never itself reported on (RFC 3461 §6.2,
    /// RFC 5321 §6.1: no bounce of a bounce).
    Notification,
}

/// The envelope of a queued message: everything but the body and the
/// recipients' states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEnvelope {
    /// The reverse-path; `None` is `<>`.
    pub sender: Option<String>,
    /// `RET=` (RFC 3461 §4.3).
    pub ret: Option<Ret>,
    /// `ENVID=` (RFC 3461 §4.4), xtext-decoded.
    pub envid: Option<String>,
    /// `SMTPUTF8` was given (RFC 6531).
    pub smtputf8: bool,
    /// `BODY=` (RFC 6152, RFC 3030).
    pub body_type: Option<BodyType>,
    /// `REQUIRETLS` was given (RFC 8689).
    pub requiretls: bool,
    /// When the relay accepted the message (its queue lifetime starts here).
    pub received_at: SystemTime,
    /// A submitted message or a notification.
    pub kind: MessageKind,
    /// The recipients, in the order they were accepted.
    pub recipients: Vec<QueuedRecipient>,
}

/// One recipient of a queued message, as accepted by `RCPT TO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRecipient {
    /// The forward-path.
    pub address: String,
    /// `NOTIFY=` (RFC 3461 §4.1); `None` means the default, FAILURE.
    pub notify: Option<Notify>,
    /// `ORCPT=` (RFC 3461 §4.2).
    pub orcpt: Option<OriginalRecipient>,
}

impl QueuedRecipient {
    /// A recipient without DSN parameters.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            notify: None,
            orcpt: None,
        }
    }

    /// Whether the sender asked to hear about failures (the default,
    /// RFC 3461 §4.1).
    pub fn wants_failure(&self) -> bool {
        match self.notify {
            None => true,
            Some(Notify::Never) => false,
            Some(Notify::On { failure, .. }) => failure,
        }
    }

    /// Whether the sender asked for a delay warning (`NOTIFY=DELAY`).
    pub fn wants_delay(&self) -> bool {
        matches!(self.notify, Some(Notify::On { delay: true, .. }))
    }

    /// Whether the sender asked for a success notice (`NOTIFY=SUCCESS`).
    pub fn wants_success(&self) -> bool {
        matches!(self.notify, Some(Notify::On { success: true, .. }))
    }
}

/// What the relay last heard about a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    /// The host that answered (the `Remote-MTA` of a DSN), when one did.
    pub remote_mta: Option<String>,
    /// The reply or the local error, as one line: `"550 5.1.1 no such
    /// user"` (the `Diagnostic-Code` of a DSN when it is an SMTP reply).
    pub diagnostic: String,
    /// When it happened.
    pub at: SystemTime,
}

/// Where one recipient of a queued message stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientState {
    /// Not tried yet.
    Queued,
    /// Tried and not delivered yet; tried again at `next_attempt`.
    Deferred {
        /// How many attempts were made.
        attempts: u32,
        /// When to try again.
        next_attempt: SystemTime,
        /// The last attempt's result.
        last: AttemptReport,
        /// Whether a delay warning was sent (at most one per recipient).
        warned: bool,
    },
    /// The next hop took responsibility, or the message was stored locally.
    Delivered {
        /// The next hop's reply.
        last: AttemptReport,
    },
    /// Given up: a permanent error, or the queue lifetime ran out.
    Failed {
        /// The reason.
        last: AttemptReport,
    },
}

impl RecipientState {
    /// Whether nothing more will happen to this recipient.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RecipientState::Delivered { .. } | RecipientState::Failed { .. }
        )
    }

    /// When the recipient is due for an attempt, if it is not final.
    pub fn due_at(&self, received_at: SystemTime) -> Option<SystemTime> {
        match self {
            RecipientState::Queued => Some(received_at),
            RecipientState::Deferred { next_attempt, .. } => Some(*next_attempt),
            _ => None,
        }
    }

    /// How many attempts were made.
    pub fn attempts(&self) -> u32 {
        match self {
            RecipientState::Deferred { attempts, .. } => *attempts,
            _ => 0,
        }
    }
}

/// A message to enqueue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Its envelope.
    pub envelope: QueuedEnvelope,
    /// The whole message as it will be relayed (trace header included).
    pub body: Bytes,
}

/// A message as the queue holds it.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Its identifier.
    pub id: MessageId,
    /// Its envelope (shared, never changes).
    pub envelope: Arc<QueuedEnvelope>,
    /// One state per recipient of `envelope.recipients`.
    pub states: Vec<RecipientState>,
}

/// Recipients handed to the scheduler by [`QueueStore::claim_due`]. They
/// stay claimed (never handed out again) until their outcome is recorded
/// with [`QueueStore::record`] or they are given back with
/// [`QueueStore::release`].
#[derive(Debug, Clone)]
pub struct Claim {
    /// The message, with the state of every recipient at claim time.
    pub message: QueuedMessage,
    /// The indexes into `message.envelope.recipients` that are claimed.
    pub recipients: Vec<usize>,
}

/// What a store found when it opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Messages with at least one recipient not final.
    pub messages: usize,
    /// Recipients not final.
    pub pending_recipients: usize,
    /// Octets cut off the end of the store because they did not form a
    /// complete, intact record (a write the crash interrupted; never a
    /// message that was acknowledged).
    pub truncated_bytes: u64,
}

/// A queue store: the durable half of the relay.
///
/// Every method that changes the queue returns only once the change is
/// committed as the store's durability setting says. Every method that
/// reads or claims is async too, so a store behind a network (a shared
/// PostgreSQL queue) fits the same trait. Implementations:
/// [`Spool`](crate::spool::Spool) (a checksummed log on local disk).
pub trait QueueStore: Send + Sync + 'static {
    /// Commits a new message; after `Ok` the receiver may say `250`.
    /// Concurrent calls share one commit (group commit).
    fn enqueue(&self, message: NewMessage) -> impl Future<Output = io::Result<MessageId>> + Send;

    /// Claims every recipient due at `now` (queued, or deferred with a next
    /// attempt not after `now`) that is not claimed yet, grouped by
    /// message, at most `max` messages.
    ///
    /// Async because a shared store (PostgreSQL) claims over the network;
    /// a store that cannot reach its storage logs the error and claims
    /// nothing, and the scheduler asks again on its next wake-up.
    fn claim_due(&self, now: SystemTime, max: usize) -> impl Future<Output = Vec<Claim>> + Send;

    /// Records new states for recipients of `id` and, in the same commit
    /// and before it, enqueues `notices` (delivery status notifications
    /// about them). The recipients named are no longer claimed. A message
    /// whose recipients are all final leaves the queue.
    fn record(
        &self,
        id: MessageId,
        outcomes: Vec<(usize, RecipientState)>,
        notices: Vec<NewMessage>,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// Gives claimed recipients back without an outcome (an attempt
    /// abandoned at shutdown); they are due again at once.
    fn release(&self, id: MessageId, recipients: &[usize]) -> impl Future<Output = ()> + Send;

    /// The message's content.
    fn body(&self, id: MessageId) -> impl Future<Output = io::Result<Bytes>> + Send;

    /// The earliest time a recipient that is not claimed is due.
    fn next_due(&self) -> impl Future<Output = Option<SystemTime>> + Send;

    /// Completes when a message was enqueued or a claim was released after
    /// the last call (so a waiting scheduler wakes up).
    fn changed(&self) -> impl Future<Output = ()> + Send;

    /// Every message in the queue, for inspection and tests.
    fn messages(&self) -> impl Future<Output = Vec<QueuedMessage>> + Send;

    /// What the store found when it opened.
    fn recovery(&self) -> Recovery;

    /// Waits for one of the `max` delivery slots of `destination` that
    /// every node sharing this store counts against (a per-destination
    /// cap across nodes). `None` means the store has no shared slots: a
    /// store used by one node, where the scheduler's own cap is the cap.
    fn acquire_slot(
        &self,
        destination: &str,
        max: usize,
    ) -> impl Future<Output = Option<Slot>> + Send {
        let _ = (destination, max);
        async { None }
    }

    /// How many operator flushes this node heard of, from any node sharing
    /// the store (this one included): when it grows, the scheduler forgets
    /// its destination backoff, so that a flush on one node makes every
    /// node try the flushed mail. A store used by one node returns 0 (its
    /// flush reaches the scheduler directly).
    fn flushes(&self) -> u64 {
        0
    }

    /// Whether an operator holds message `id` now. The scheduler asks
    /// before each destination's attempt of a claim, once it has its
    /// connection slot: a hold that arrives while a claimed message waits
    /// for a slot stops the attempts that have not started (the claim is
    /// given back and stays held). A store without holds returns false.
    fn is_held(&self, id: MessageId) -> impl Future<Output = bool> + Send {
        let _ = id;
        async { false }
    }

    /// Gives back a slot from [`QueueStore::acquire_slot`].
    fn release_slot(&self, slot: Slot) -> impl Future<Output = ()> + Send {
        let _ = slot;
        async {}
    }
}

/// One delivery slot of a destination held by this node; see
/// [`QueueStore::acquire_slot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The destination, as the scheduler names it.
    pub destination: String,
    /// Which of the destination's slots.
    pub number: u32,
    /// Identifies this holding of the slot (a slot taken over after its
    /// lease ran out has a new one).
    pub token: i64,
}

/// Milliseconds since the Unix epoch (0 before it), for storage.
pub(crate) fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    })
}

/// The time `millis` after the Unix epoch.
pub(crate) fn from_unix_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}
