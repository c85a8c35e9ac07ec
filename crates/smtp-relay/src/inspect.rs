//! Looking into and acting on the queue, the same way on every store: the
//! listing behind `GET /queue` (filtered, paginated by a cursor, never
//! holding the whole queue), one message, a qshape-like summary, hold,
//! release, delete (with or without a bounce) and flush.
//!
//! Holding a message keeps every recipient from being tried until it is
//! released, as Postfix's `postsuper -h` does for a message in the active
//! queue: an attempt already in flight ends as it would have, the
//! recipients it delivered (or that failed for good) stay so, and those it
//! deferred stay held (recording the outcome of the attempt never clears
//! a hold). Releasing a message whose attempt is still in flight does not
//! start a second attempt: the recipients are tried again after that one
//! as their outcome says. A held message still counts towards its queue
//! lifetime.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::notice::{self, NoticeKind, NoticeRecipient};
use crate::queue::{
    AttemptReport, MessageId, MessageKind, NewMessage, QueueStore, QueuedMessage, RecipientState,
};
use crate::spool::{Spool, UpdateSource};

/// Which recipients a listing is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    /// Not tried yet.
    Queued,
    /// Tried and waiting for a retry.
    Deferred,
    /// Held by an operator.
    Held,
}

impl std::str::FromStr for StateFilter {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "queued" => Ok(StateFilter::Queued),
            "deferred" => Ok(StateFilter::Deferred),
            "held" => Ok(StateFilter::Held),
            _ => Err(format!("state {text:?}: expected queued, deferred or held")),
        }
    }
}

/// What a listing or a bulk action selects. A message matches when every
/// given criterion does; the recipient criteria (state, domain,
/// recipient) must hold for one pending recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Recipients in this state.
    pub state: Option<StateFilter>,
    /// Recipients in this domain (no regard to case).
    pub domain: Option<String>,
    /// The envelope sender (no regard to case; `<>` for the null
    /// reverse-path).
    pub sender: Option<String>,
    /// This recipient address (no regard to case).
    pub recipient: Option<String>,
    /// Received at least this long ago.
    pub older_than: Option<Duration>,
}

/// The time the spool stores for a held recipient's next attempt: it is
/// never due (the year 9999).
pub fn held_until() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(253_402_300_799)
}

/// Whether a recipient state is held (on a store that records holds as a
/// next attempt at [`held_until`]).
pub fn is_held_state(state: &RecipientState) -> bool {
    matches!(state, RecipientState::Deferred { next_attempt, .. } if *next_attempt >= held_until())
}

/// A queued message with whether it is held.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The message and its recipients' states.
    pub message: QueuedMessage,
    /// Whether an operator holds it.
    pub held: bool,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    /// The messages, in id order.
    pub messages: Vec<Listed>,
    /// The cursor for the next page, when there may be one.
    pub next: Option<MessageId>,
}

/// The age buckets of [`Summary`], in minutes (as Postfix's qshape: each
/// twice the one before); the last bucket is everything older.
pub const AGE_BUCKETS: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// Pending recipients per destination domain and age (like qshape).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Per domain: the count in each bucket of [`AGE_BUCKETS`], then the
    /// count older than the last one.
    pub domains: BTreeMap<String, [u64; 10]>,
    /// Pending recipients by state: queued, deferred, held.
    pub queued: u64,
    /// Deferred recipients.
    pub deferred: u64,
    /// Held recipients.
    pub held: u64,
    /// When the oldest pending message was received.
    pub oldest: Option<SystemTime>,
}

impl Summary {
    /// Counts one pending recipient.
    pub fn add(&mut self, domain: &str, received_at: SystemTime, now: SystemTime, state: Pending) {
        let minutes = now
            .duration_since(received_at)
            .unwrap_or_default()
            .as_secs()
            / 60;
        self.add_count(domain, minutes, received_at, 1, state);
    }

    /// Counts `count` pending recipients of one domain and state,
    /// `minutes` old, the oldest received at `oldest`.
    pub fn add_count(
        &mut self,
        domain: &str,
        minutes: u64,
        oldest: SystemTime,
        count: u64,
        state: Pending,
    ) {
        let bucket = AGE_BUCKETS
            .iter()
            .position(|&limit| minutes < limit)
            .unwrap_or(AGE_BUCKETS.len());
        self.domains.entry(domain.to_ascii_lowercase()).or_default()[bucket] += count;
        match state {
            Pending::Queued => self.queued += count,
            Pending::Deferred => self.deferred += count,
            Pending::Held => self.held += count,
        }
        if self.oldest.is_none_or(|o| oldest < o) {
            self.oldest = Some(oldest);
        }
    }
}

/// The state of a pending recipient, for [`Summary::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Not tried yet.
    Queued,
    /// Waiting for a retry.
    Deferred,
    /// Held.
    Held,
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// Whether `message` matches `filter` at `now`.
pub fn matches(filter: &Filter, message: &QueuedMessage, held: bool, now: SystemTime) -> bool {
    let envelope = &message.envelope;
    if let Some(sender) = &filter.sender {
        let wanted = sender.trim_start_matches('<').trim_end_matches('>');
        let same = match &envelope.sender {
            None => wanted.is_empty(),
            Some(actual) => actual.eq_ignore_ascii_case(wanted),
        };
        if !same {
            return false;
        }
    }
    if let Some(age) = filter.older_than
        && now.duration_since(envelope.received_at).unwrap_or_default() < age
    {
        return false;
    }
    if filter.state.is_none() && filter.domain.is_none() && filter.recipient.is_none() {
        return true;
    }
    envelope
        .recipients
        .iter()
        .zip(&message.states)
        .any(|(recipient, state)| {
            if state.is_final() {
                return false;
            }
            let state_ok = match filter.state {
                None => true,
                Some(StateFilter::Held) => held || is_held_state(state),
                Some(StateFilter::Queued) => !held && matches!(state, RecipientState::Queued),
                Some(StateFilter::Deferred) => {
                    !held
                        && !is_held_state(state)
                        && matches!(state, RecipientState::Deferred { .. })
                }
            };
            state_ok
                && filter
                    .domain
                    .as_ref()
                    .is_none_or(|d| domain_of(&recipient.address).eq_ignore_ascii_case(d))
                && filter
                    .recipient
                    .as_ref()
                    .is_none_or(|r| recipient.address.eq_ignore_ascii_case(r))
        })
}

/// A store the admin interface can look into and act on.
pub trait QueueInspect: QueueStore + Clone {
    /// Up to `limit` messages matching `filter` after the cursor `after`.
    fn list(
        &self,
        filter: &Filter,
        after: Option<MessageId>,
        limit: usize,
        now: SystemTime,
    ) -> impl Future<Output = io::Result<Page>> + Send;

    /// One message.
    fn get(&self, id: MessageId) -> impl Future<Output = io::Result<Option<Listed>>> + Send;

    /// Holds (`true`) or releases (`false`) a message; `false` when there
    /// is no such message.
    fn set_held(
        &self,
        id: MessageId,
        held: bool,
        now: SystemTime,
    ) -> impl Future<Output = io::Result<bool>> + Send;

    /// Takes a message out of the queue, queueing `notices` in the same
    /// commit; `false` when there is no such message.
    fn remove(
        &self,
        id: MessageId,
        notices: Vec<NewMessage>,
        now: SystemTime,
    ) -> impl Future<Output = io::Result<bool>> + Send;

    /// Makes every deferred recipient (in `domain`, if given) due now;
    /// how many.
    fn flush(
        &self,
        domain: Option<&str>,
        now: SystemTime,
    ) -> impl Future<Output = io::Result<u64>> + Send;

    /// Pending recipients per destination and age.
    fn summary(&self, now: SystemTime) -> impl Future<Output = io::Result<Summary>> + Send;
}

/// The reason a deleted recipient fails with (RFC 3463 §3.8: 5.7.1,
/// delivery not authorized).
pub const DELETED: &str = "550 5.7.1 message deleted from the queue by the postmaster";

/// Deletes message `id`; with `bounce`, the sender gets a failure notice
/// (RFC 3464) for every recipient not yet final, unless the message is
/// itself a notification or has the null sender (no bounce of a bounce,
/// RFC 5321 §6.1). Returns whether there was such a message.
pub async fn delete<S: QueueInspect>(
    store: &S,
    id: MessageId,
    bounce: Option<&str>,
    now: SystemTime,
) -> io::Result<bool> {
    let mut notices = Vec::new();
    if let Some(reporting_mta) = bounce {
        let Some(listed) = store.get(id).await? else {
            return Ok(false);
        };
        let envelope = &listed.message.envelope;
        if envelope.kind == MessageKind::Normal && envelope.sender.is_some() {
            let report = AttemptReport {
                remote_mta: None,
                diagnostic: DELETED.to_owned(),
                at: now,
            };
            let recipients: Vec<NoticeRecipient> = listed
                .message
                .states
                .iter()
                .enumerate()
                .filter(|(n, state)| !state.is_final() && envelope.recipients[*n].wants_failure())
                .map(|(index, _)| NoticeRecipient {
                    index,
                    report: report.clone(),
                    expired: false,
                    relayed: false,
                    will_retry_until: None,
                })
                .collect();
            if !recipients.is_empty() {
                let body: Bytes = store.body(id).await?;
                let message = notice::build(
                    NoticeKind::Failure,
                    envelope,
                    &body,
                    &recipients,
                    reporting_mta,
                    now,
                )
                .map_err(io::Error::other)?;
                notices.push(message);
            }
        }
    }
    store.remove(id, notices, now).await
}

impl QueueInspect for Spool {
    async fn list(
        &self,
        filter: &Filter,
        after: Option<MessageId>,
        limit: usize,
        now: SystemTime,
    ) -> io::Result<Page> {
        let limit = limit.max(1);
        let messages = self.page(after, limit, |m| matches(filter, m, false, now));
        let next = (messages.len() == limit)
            .then(|| messages.last().map(|m| m.id))
            .flatten();
        Ok(Page {
            messages: messages
                .into_iter()
                .map(|message| Listed {
                    held: message.states.iter().any(is_held_state),
                    message,
                })
                .collect(),
            next,
        })
    }

    async fn get(&self, id: MessageId) -> io::Result<Option<Listed>> {
        Ok(self.message(id).map(|message| Listed {
            held: message.states.iter().any(is_held_state),
            message,
        }))
    }

    async fn set_held(&self, id: MessageId, held: bool, now: SystemTime) -> io::Result<bool> {
        let Some(message) = self.message(id) else {
            return Ok(false);
        };
        // The spool records a hold as a next attempt that never comes,
        // and a release as a next attempt now: both are ordinary, durable
        // state updates.
        let outcomes: Vec<(usize, RecipientState)> = message
            .states
            .iter()
            .enumerate()
            .filter(|(_, state)| !state.is_final() && is_held_state(state) != held)
            .map(|(n, state)| {
                let (attempts, last, warned) = match state {
                    RecipientState::Deferred {
                        attempts,
                        last,
                        warned,
                        ..
                    } => (*attempts, last.clone(), *warned),
                    _ => (
                        0,
                        AttemptReport {
                            remote_mta: None,
                            diagnostic: "held by the postmaster".to_owned(),
                            at: now,
                        },
                        false,
                    ),
                };
                let next_attempt = if held { held_until() } else { now };
                (
                    n,
                    RecipientState::Deferred {
                        attempts,
                        next_attempt,
                        last,
                        warned,
                    },
                )
            })
            .collect();
        if !outcomes.is_empty() {
            self.update(id, outcomes, Vec::new(), UpdateSource::Hold)
                .await?;
            if !held {
                // Wake the scheduler: the recipients are due now.
                QueueStore::release(self, id, &[]).await;
            }
        }
        Ok(true)
    }

    async fn remove(
        &self,
        id: MessageId,
        notices: Vec<NewMessage>,
        now: SystemTime,
    ) -> io::Result<bool> {
        let Some(message) = self.message(id) else {
            return Ok(false);
        };
        let report = AttemptReport {
            remote_mta: None,
            diagnostic: DELETED.to_owned(),
            at: now,
        };
        let outcomes = message
            .states
            .iter()
            .enumerate()
            .filter(|(_, state)| !state.is_final())
            .map(|(n, _)| {
                (
                    n,
                    RecipientState::Failed {
                        last: report.clone(),
                    },
                )
            })
            .collect();
        self.update(id, outcomes, notices, UpdateSource::Operator)
            .await?;
        Ok(true)
    }

    async fn flush(&self, domain: Option<&str>, now: SystemTime) -> io::Result<u64> {
        let mut count = 0;
        let mut after = None;
        loop {
            let page = self.page(after, 1000, |_| true);
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for message in page {
                let outcomes: Vec<(usize, RecipientState)> = message
                    .envelope
                    .recipients
                    .iter()
                    .zip(&message.states)
                    .enumerate()
                    .filter_map(|(n, (recipient, state))| match state {
                        RecipientState::Deferred {
                            attempts,
                            next_attempt,
                            last,
                            warned,
                        } if *next_attempt > now
                            && !is_held_state(state)
                            && domain.is_none_or(|d| {
                                domain_of(&recipient.address).eq_ignore_ascii_case(d)
                            }) =>
                        {
                            Some((
                                n,
                                RecipientState::Deferred {
                                    attempts: *attempts,
                                    next_attempt: now,
                                    last: last.clone(),
                                    warned: *warned,
                                },
                            ))
                        }
                        _ => None,
                    })
                    .collect();
                if !outcomes.is_empty() {
                    count += outcomes.len() as u64;
                    self.update(message.id, outcomes, Vec::new(), UpdateSource::Operator)
                        .await?;
                }
            }
        }
        if count > 0 {
            QueueStore::release(self, MessageId(0), &[]).await;
        }
        Ok(count)
    }

    async fn summary(&self, now: SystemTime) -> io::Result<Summary> {
        let mut summary = Summary::default();
        let mut after = None;
        loop {
            let page = self.page(after, 1000, |_| true);
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for message in &page {
                for (recipient, state) in message.envelope.recipients.iter().zip(&message.states) {
                    let pending = match state {
                        _ if is_held_state(state) => Pending::Held,
                        RecipientState::Queued => Pending::Queued,
                        RecipientState::Deferred { .. } => Pending::Deferred,
                        _ => continue,
                    };
                    summary.add(
                        domain_of(&recipient.address),
                        message.envelope.received_at,
                        now,
                        pending,
                    );
                }
            }
        }
        Ok(summary)
    }
}
