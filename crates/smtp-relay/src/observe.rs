//! Metrics and events for any store: [`Observed`] wraps a [`QueueStore`]
//! and reports what passes through it, so the receiver and the scheduler
//! need no change to be watched.
//!
//! Metrics go to the [`metrics`] facade (the program installs an
//! exporter); every accept, attempt, delivery, deferral, bounce and expiry
//! is also an [`Event`] for an [`EventSink`]. The names:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `ferry_messages_accepted_total` | counter | `kind` (`message`, `notification`) |
//! | `ferry_recipients_delivered_total` | counter | |
//! | `ferry_recipients_deferred_total` | counter | `class` |
//! | `ferry_recipients_bounced_total` | counter | `class` |
//! | `ferry_commit_seconds` | histogram | |
//! | `ferry_commit_batch_size` | histogram | (messages per group commit, recorded by the store's committer: see [`record_commit_batch`]) |
//! | `ferry_delivery_seconds` | histogram | (acceptance to delivery) |
//! | `ferry_attempt_seconds` | histogram | (claim to outcome) |
//! | `ferry_deliveries_in_flight` | gauge | `destination` |
//!
//! `class` is the subject of the enhanced status code of the last reply
//! (RFC 3463: `4.4` routing or connection, `5.1` addressing, `5.7`
//! policy, …), `expired` for a recipient that failed because its queue
//! lifetime ran out, `deleted` for recipients of a message an operator
//! deleted, and `other` without a code.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use crate::inspect::{Filter, Listed, Page, QueueInspect, Summary};
use crate::queue::{
    AttemptReport, Claim, MessageId, MessageKind, NewMessage, QueueStore, QueuedMessage,
    RecipientState, Recovery, Slot,
};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A message was committed to the queue (the `250`).
    Accept,
    /// A recipient was claimed for a delivery attempt.
    Attempt,
    /// A recipient was delivered.
    Delivery,
    /// A recipient was deferred.
    Deferral,
    /// A recipient failed permanently.
    Bounce,
    /// A recipient failed because its queue lifetime ran out.
    Expiry,
}

impl EventKind {
    /// The name in the event log.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accept => "accept",
            EventKind::Attempt => "attempt",
            EventKind::Delivery => "delivery",
            EventKind::Deferral => "deferral",
            EventKind::Bounce => "bounce",
            EventKind::Expiry => "expiry",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// When.
    pub at: SystemTime,
    /// The message.
    pub id: MessageId,
    /// The envelope sender (`None` is `<>`), for accepts.
    pub sender: Option<String>,
    /// The recipients concerned (all of them for an accept).
    pub recipients: Vec<String>,
    /// The last reply or error, for outcomes.
    pub diagnostic: Option<String>,
    /// The host that answered, for outcomes.
    pub remote_mta: Option<String>,
    /// The next attempt, for deferrals.
    pub next_attempt: Option<SystemTime>,
    /// The message size in octets, for accepts.
    pub size: Option<u64>,
}

/// Where events go. `emit` must not block: a sink that forwards events
/// somewhere slow buffers them (and says what it drops).
pub trait EventSink: Send + Sync + 'static {
    /// Takes one event.
    fn emit(&self, event: &Event);
}

/// Records one group commit of `messages` accepted messages in
/// `ferry_commit_batch_size`. Called by each store's committer, once per
/// commit that enqueued at least one message (outcomes and the
/// notifications committed with them are not counted), so that the
/// histogram shows how many acceptances share one sync or one
/// transaction.
pub fn record_commit_batch(messages: usize) {
    if messages > 0 {
        metrics::histogram!("ferry_commit_batch_size").record(messages as f64);
    }
}

/// The reason class of a reply (see the module documentation).
pub fn reason_class(diagnostic: &str) -> String {
    let mut words = diagnostic.split_whitespace();
    let _code = words.next();
    match words.next() {
        Some(enhanced)
            if enhanced.len() >= 3
                && enhanced.as_bytes()[1] == b'.'
                && enhanced.as_bytes()[0].is_ascii_digit() =>
        {
            let subject: String = enhanced.split('.').take(2).collect::<Vec<_>>().join(".");
            if subject
                .split('.')
                .all(|p| p.chars().all(|c| c.is_ascii_digit()))
            {
                subject
            } else {
                "other".to_owned()
            }
        }
        _ => "other".to_owned(),
    }
}

#[derive(Debug, Clone)]
struct InFlight {
    address: String,
    received_at: SystemTime,
    claimed: Instant,
}

/// A store that reports metrics and events. Cheap to clone.
pub struct Observed<S> {
    inner: S,
    sink: Option<Arc<dyn EventSink>>,
    claims: Arc<Mutex<HashMap<(u64, usize), InFlight>>>,
}

impl<S: Clone> Clone for Observed<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            sink: self.sink.clone(),
            claims: Arc::clone(&self.claims),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Observed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<S> Observed<S> {
    /// Wraps `inner`; events go to `sink`, if any.
    pub fn new(inner: S, sink: Option<Arc<dyn EventSink>>) -> Self {
        Self {
            inner,
            sink,
            claims: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn emit(&self, event: Event) {
        if let Some(sink) = &self.sink {
            sink.emit(&event);
        }
    }
}

fn outcome_event(
    kind: EventKind,
    id: MessageId,
    address: Option<String>,
    last: &AttemptReport,
    next_attempt: Option<SystemTime>,
) -> Event {
    Event {
        kind,
        at: SystemTime::now(),
        id,
        sender: None,
        recipients: address.into_iter().collect(),
        diagnostic: Some(last.diagnostic.clone()),
        remote_mta: last.remote_mta.clone(),
        next_attempt,
        size: None,
    }
}

impl<S: QueueStore + Clone> QueueStore for Observed<S> {
    async fn enqueue(&self, message: NewMessage) -> io::Result<MessageId> {
        let started = Instant::now();
        let kind = match message.envelope.kind {
            MessageKind::Normal => "message",
            MessageKind::Notification => "notification",
        };
        let sender = message.envelope.sender.clone();
        let recipients: Vec<String> = message
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.clone())
            .collect();
        let size = message.body.len() as u64;
        let id = self.inner.enqueue(message).await?;
        metrics::histogram!("ferry_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("ferry_messages_accepted_total", "kind" => kind).increment(1);
        self.emit(Event {
            kind: EventKind::Accept,
            at: SystemTime::now(),
            id,
            sender,
            recipients,
            diagnostic: None,
            remote_mta: None,
            next_attempt: None,
            size: Some(size),
        });
        Ok(id)
    }

    async fn claim_due(&self, now: SystemTime, max: usize) -> Vec<Claim> {
        let claims = self.inner.claim_due(now, max).await;
        let started = Instant::now();
        let mut table = lock(&self.claims);
        for claim in &claims {
            let envelope = &claim.message.envelope;
            for &n in &claim.recipients {
                table.insert(
                    (claim.message.id.0, n),
                    InFlight {
                        address: envelope.recipients[n].address.clone(),
                        received_at: envelope.received_at,
                        claimed: started,
                    },
                );
            }
        }
        drop(table);
        for claim in &claims {
            self.emit(Event {
                kind: EventKind::Attempt,
                at: SystemTime::now(),
                id: claim.message.id,
                sender: None,
                recipients: claim
                    .recipients
                    .iter()
                    .map(|&n| claim.message.envelope.recipients[n].address.clone())
                    .collect(),
                diagnostic: None,
                remote_mta: None,
                next_attempt: None,
                size: None,
            });
        }
        claims
    }

    async fn record(
        &self,
        id: MessageId,
        outcomes: Vec<(usize, RecipientState)>,
        notices: Vec<NewMessage>,
    ) -> io::Result<()> {
        let notices_count = notices.len() as u64;
        let report: Vec<(usize, RecipientState)> = outcomes.clone();
        self.inner.record(id, outcomes, notices).await?;
        if notices_count > 0 {
            metrics::counter!("ferry_messages_accepted_total", "kind" => "notification")
                .increment(notices_count);
        }
        let now = SystemTime::now();
        for (n, state) in report {
            let known = lock(&self.claims).remove(&(id.0, n));
            if let Some(known) = &known {
                metrics::histogram!("ferry_attempt_seconds")
                    .record(known.claimed.elapsed().as_secs_f64());
            }
            let address = known.as_ref().map(|k| k.address.clone());
            match &state {
                RecipientState::Delivered { last } => {
                    metrics::counter!("ferry_recipients_delivered_total").increment(1);
                    if let Some(known) = &known {
                        let age = now.duration_since(known.received_at).unwrap_or_default();
                        metrics::histogram!("ferry_delivery_seconds").record(age.as_secs_f64());
                    }
                    self.emit(outcome_event(EventKind::Delivery, id, address, last, None));
                }
                RecipientState::Deferred {
                    last, next_attempt, ..
                } => {
                    metrics::counter!("ferry_recipients_deferred_total",
                        "class" => reason_class(&last.diagnostic))
                    .increment(1);
                    self.emit(outcome_event(
                        EventKind::Deferral,
                        id,
                        address,
                        last,
                        Some(*next_attempt),
                    ));
                }
                RecipientState::Failed { last } => {
                    // A temporary reply that ends in failure is an expiry.
                    let expired = last.diagnostic.starts_with('4');
                    let class = if expired {
                        "expired".to_owned()
                    } else {
                        reason_class(&last.diagnostic)
                    };
                    metrics::counter!("ferry_recipients_bounced_total", "class" => class)
                        .increment(1);
                    let kind = if expired {
                        EventKind::Expiry
                    } else {
                        EventKind::Bounce
                    };
                    self.emit(outcome_event(kind, id, address, last, None));
                }
                RecipientState::Queued => {}
            }
        }
        Ok(())
    }

    async fn release(&self, id: MessageId, recipients: &[usize]) {
        {
            let mut table = lock(&self.claims);
            for &n in recipients {
                table.remove(&(id.0, n));
            }
        }
        self.inner.release(id, recipients).await;
    }

    async fn body(&self, id: MessageId) -> io::Result<Bytes> {
        self.inner.body(id).await
    }

    async fn next_due(&self) -> Option<SystemTime> {
        self.inner.next_due().await
    }

    async fn changed(&self) {
        self.inner.changed().await;
    }

    async fn messages(&self) -> Vec<QueuedMessage> {
        self.inner.messages().await
    }

    fn recovery(&self) -> Recovery {
        self.inner.recovery()
    }

    fn flushes(&self) -> u64 {
        self.inner.flushes()
    }

    async fn is_held(&self, id: MessageId) -> bool {
        self.inner.is_held(id).await
    }

    async fn acquire_slot(&self, destination: &str, max: usize) -> Option<Slot> {
        let slot = self.inner.acquire_slot(destination, max).await;
        metrics::gauge!("ferry_deliveries_in_flight", "destination" => destination.to_owned())
            .increment(1.0);
        // Always a slot, so that the scheduler gives it back and the gauge
        // comes down; a store without shared slots gets nothing to free.
        Some(slot.unwrap_or(Slot {
            destination: destination.to_owned(),
            number: u32::MAX,
            token: -1,
        }))
    }

    async fn release_slot(&self, slot: Slot) {
        metrics::gauge!("ferry_deliveries_in_flight", "destination" => slot.destination.clone())
            .decrement(1.0);
        if slot.token != -1 {
            self.inner.release_slot(slot).await;
        }
    }
}

impl<S: QueueInspect> QueueInspect for Observed<S> {
    async fn list(
        &self,
        filter: &Filter,
        after: Option<MessageId>,
        limit: usize,
        now: SystemTime,
    ) -> io::Result<Page> {
        self.inner.list(filter, after, limit, now).await
    }

    async fn get(&self, id: MessageId) -> io::Result<Option<Listed>> {
        self.inner.get(id).await
    }

    async fn set_held(&self, id: MessageId, held: bool, now: SystemTime) -> io::Result<bool> {
        self.inner.set_held(id, held, now).await
    }

    async fn remove(
        &self,
        id: MessageId,
        notices: Vec<NewMessage>,
        now: SystemTime,
    ) -> io::Result<bool> {
        let recipients: Vec<String> = match self.inner.get(id).await? {
            Some(listed) => listed
                .message
                .envelope
                .recipients
                .iter()
                .zip(&listed.message.states)
                .filter(|(_, state)| !state.is_final())
                .map(|(r, _)| r.address.clone())
                .collect(),
            None => return Ok(false),
        };
        let removed = self.inner.remove(id, notices, now).await?;
        if removed {
            // A deletion fails the recipients left: reported as a bounce
            // with the deletion's reason, whether or not the sender is told.
            metrics::counter!("ferry_recipients_bounced_total", "class" => "deleted")
                .increment(recipients.len() as u64);
            self.emit(Event {
                kind: EventKind::Bounce,
                at: SystemTime::now(),
                id,
                sender: None,
                recipients,
                diagnostic: Some(crate::inspect::DELETED.to_owned()),
                remote_mta: None,
                next_attempt: None,
                size: None,
            });
        }
        Ok(removed)
    }

    async fn flush(&self, domain: Option<&str>, now: SystemTime) -> io::Result<u64> {
        self.inner.flush(domain, now).await
    }

    async fn summary(&self, now: SystemTime) -> io::Result<Summary> {
        self.inner.summary(now).await
    }
}

#[cfg(test)]
mod tests {
    use super::reason_class;

    #[test]
    fn reason_classes_are_enhanced_code_subjects() {
        assert_eq!(reason_class("451 4.4.1 no route"), "4.4");
        assert_eq!(reason_class("550 5.1.1 no such user"), "5.1");
        assert_eq!(reason_class("554 5.7.1 relay access denied"), "5.7");
        assert_eq!(reason_class("421 try later"), "other");
        assert_eq!(reason_class("connection refused"), "other");
    }
}
