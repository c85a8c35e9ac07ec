//! The scheduler: claims due recipients from the queue, delivers them per
//! destination with a cap on concurrency, records each recipient's outcome,
//! retries with exponential backoff and jitter, expires, and queues the
//! delivery status notifications the senders asked for.
//!
//! Time comes from the injected [`Clock`], and every wait is a tokio timer,
//! so the whole retry, expiry and delay-warning behaviour runs under
//! tokio's paused time in tests.
//!
//! A destination that failed at connection level is backed off as a whole
//! (RFC 5321 §4.5.4.1). Recipients claimed for it while it is backed off
//! are *parked*: they stay claimed, in memory, without an attempt, without
//! reading their message and without a new record. When the backoff ends
//! (or is cleared, or another attempt reaches the destination) they are
//! given back to the store, which hands them out again with their current
//! state: a message an operator held or deleted meanwhile is not sent. A
//! parked recipient keeps its last committed state, so a restart makes it
//! due at once, as it was. Only when the sender must hear something while
//! the destination is still backed off (the queue lifetime ran out, or a
//! delay warning is due) is the deferral recorded.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{Notify, OnceCell, Semaphore};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::deliver::{AttemptOutcome, Deliverer, RecipientResult};
use crate::notice::{self, NoticeKind, NoticeRecipient};
use crate::queue::{
    AttemptReport, Claim, MessageKind, NewMessage, QueueStore, QueuedEnvelope, RecipientState,
};
use crate::route::Destination;

/// When to try a deferred recipient again.
///
/// Either a fixed schedule (`--retry-schedule 5m,30m,2h`: the n-th retry
/// waits the n-th delay, the last one repeating), or exponential backoff
/// from `first`, doubling up to `max`. Either way each delay is spread by
/// ±10 % so that messages deferred together do not come back together.
///
/// ```
/// use std::time::Duration;
/// use smtp_relay::scheduler::RetryPolicy;
/// let policy = RetryPolicy::default();
/// let first = policy.delay(1, 7);
/// assert!(first >= Duration::from_secs(270) && first <= Duration::from_secs(330));
/// assert!(policy.delay(30, 7) <= Duration::from_secs(4 * 3600));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first retry's delay (default 5 minutes).
    pub first: Duration,
    /// The longest delay (default 4 hours).
    pub max: Duration,
    /// A fixed schedule instead of doubling, when not empty.
    pub schedule: Vec<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(5 * 60),
            max: Duration::from_secs(4 * 3600),
            schedule: Vec::new(),
        }
    }
}

/// splitmix64: a small, well-mixed hash for jitter.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1 for the first retry);
    /// `seed` picks the jitter.
    pub fn delay(&self, attempt: u32, seed: u64) -> Duration {
        let n = attempt.max(1);
        let base = if self.schedule.is_empty() {
            let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
            self.first.saturating_mul(factor).min(self.max)
        } else {
            let at = usize::try_from(n - 1)
                .unwrap_or(usize::MAX)
                .min(self.schedule.len() - 1);
            self.schedule[at]
        };
        // ±10 %: a factor in [0.9, 1.1).
        let unit = (mix(seed ^ u64::from(n) << 48) >> 11) as f64 / (1u64 << 53) as f64;
        let jittered = base.mul_f64(0.9 + 0.2 * unit);
        if self.schedule.is_empty() {
            jittered.min(self.max)
        } else {
            jittered
        }
    }
}

/// How the scheduler behaves.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Retry delays.
    pub retry: RetryPolicy,
    /// How long a message may stay in the queue before its undelivered
    /// recipients fail (default 5 days, RFC 5321 §4.5.4.1 "at least 4-5
    /// days").
    pub max_queue_lifetime: Duration,
    /// After how long a recipient that asked for `NOTIFY=DELAY` gets a
    /// delay warning (default 4 hours).
    pub delay_warning: Duration,
    /// This relay's name in notifications (`Reporting-MTA`).
    pub reporting_mta: String,
    /// The most messages being delivered at once.
    pub max_in_flight: usize,
    /// How long shutdown waits for attempts in flight before it abandons
    /// them (they are retried after the restart).
    pub shutdown_grace: Duration,
}

impl SchedulerConfig {
    /// Defaults, reporting as `reporting_mta`.
    pub fn new(reporting_mta: impl Into<String>) -> Self {
        Self {
            retry: RetryPolicy::default(),
            max_queue_lifetime: Duration::from_secs(5 * 24 * 3600),
            delay_warning: Duration::from_secs(4 * 3600),
            reporting_mta: reporting_mta.into(),
            max_in_flight: 1000,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
struct Backoff {
    failures: u32,
    until: SystemTime,
    last: AttemptReport,
}

/// Drives deliveries out of a [`QueueStore`]. Cheap to clone.
pub struct Scheduler<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Scheduler<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> fmt::Debug for Scheduler<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner<S> {
    store: S,
    deliverer: Deliverer,
    clock: Arc<dyn Clock>,
    config: SchedulerConfig,
    limits: Mutex<HashMap<Destination, Arc<Semaphore>>>,
    backoff: Mutex<HashMap<Destination, Backoff>>,
    parked: Mutex<HashMap<Destination, ParkedList>>,
    /// Wakes the run loop when parked work may have become ready sooner
    /// than it planned (something parked, a backoff cleared).
    wake: Notify,
}

/// Recipients of one message waiting, claimed, for a backed-off
/// destination.
struct Parked {
    claim: Arc<Claim>,
    recipients: Vec<usize>,
    /// When the sender must hear about these recipients even if the
    /// destination is still backed off: the end of the queue lifetime, or
    /// a delay warning that is due.
    deadline: SystemTime,
}

/// What is parked for one destination.
#[derive(Default)]
struct ParkedList {
    groups: Vec<Parked>,
    /// The earliest deadline in `groups`.
    earliest: Option<SystemTime>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<S: QueueStore + Clone> Scheduler<S> {
    /// A scheduler delivering out of `store` with `deliverer`.
    pub fn new(
        store: S,
        deliverer: Deliverer,
        clock: Arc<dyn Clock>,
        config: SchedulerConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                deliverer,
                clock,
                config,
                limits: Mutex::new(HashMap::new()),
                backoff: Mutex::new(HashMap::new()),
                parked: Mutex::new(HashMap::new()),
                wake: Notify::new(),
            }),
        }
    }

    /// Runs until `shutdown` completes, then waits up to
    /// [`SchedulerConfig::shutdown_grace`] for attempts in flight and
    /// abandons the rest: their recipients keep their last committed state
    /// and are tried again after a restart.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let inner = &self.inner;
        let mut tasks = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut flushes = inner.store.flushes();
        loop {
            while tasks.try_join_next().is_some() {}
            // A flush on any node sharing the store: the destinations are
            // said to be back (checked before claiming, and the store
            // wakes this loop after counting it).
            let flushed = inner.store.flushes();
            if flushed != flushes {
                flushes = flushed;
                self.clear_backoff();
            }
            let now = inner.clock.now();
            // Parked recipients that may go are given back and claimed
            // again below with their current state (an operator may have
            // held or deleted the message meanwhile).
            for parked in self.unpark(now) {
                inner
                    .store
                    .release(parked.claim.message.id, &parked.recipients)
                    .await;
            }
            let room = inner.config.max_in_flight.saturating_sub(tasks.len());
            if room > 0 {
                for claim in inner.store.claim_due(now, room).await {
                    let this = self.clone();
                    tasks.spawn(async move { this.deliver_claim(claim).await });
                }
            }
            let next_due = if tasks.len() >= inner.config.max_in_flight {
                None
            } else {
                let due = inner.store.next_due().await;
                match (due, self.parked_wake()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            let wait = async {
                match next_due {
                    Some(due) => inner.clock.sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = inner.store.changed() => {}
                () = inner.wake.notified() => {}
                () = wait => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        let grace = tokio::time::sleep(inner.config.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                () = &mut grace => break,
                next = tasks.join_next() => if next.is_none() { break },
            }
        }
        if !tasks.is_empty() {
            tracing::info!(
                attempts = tasks.len(),
                "abandoning deliveries in flight; they are retried after restart"
            );
            tasks.shutdown().await;
        }
        // Parked recipients go back to the store unattempted (for a shared
        // store, other nodes may take them at once).
        let parked: Vec<ParkedList> = lock(&inner.parked).drain().map(|(_, list)| list).collect();
        for list in parked {
            for group in list.groups {
                inner
                    .store
                    .release(group.claim.message.id, &group.recipients)
                    .await;
            }
        }
        inner.deliverer.close().await;
    }

    fn limit(&self, destination: &Destination) -> Arc<Semaphore> {
        let max = self.inner.deliverer.config().max_per_destination.max(1);
        Arc::clone(
            lock(&self.inner.limits)
                .entry(destination.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(max))),
        )
    }

    async fn deliver_claim(&self, claim: Claim) {
        let inner = &self.inner;
        let claim = Arc::new(claim);
        // Read once, and only if a group is attempted or reported on (a
        // group parked for a backed-off destination needs no body).
        let body = OnceCell::new();
        let router = inner.deliverer.router();
        let mut groups: Vec<(Destination, Vec<usize>)> = Vec::new();
        for &n in &claim.recipients {
            let destination = router.route(&claim.message.envelope.recipients[n].address);
            match groups.iter_mut().find(|(d, _)| *d == destination) {
                Some((_, members)) => members.push(n),
                None => groups.push((destination, vec![n])),
            }
        }
        let attempts = groups.into_iter().map(|(destination, recipients)| {
            let claim = &claim;
            let body = &body;
            async move {
                self.deliver_group(claim, &destination, &recipients, body)
                    .await;
            }
        });
        futures::future::join_all(attempts).await;
    }

    /// The message's content, read from the store the first time a group
    /// of `claim` needs it. `None` (the recipients given back) when the
    /// store cannot read it.
    async fn body(
        &self,
        claim: &Claim,
        recipients: &[usize],
        body: &OnceCell<Bytes>,
    ) -> Option<Bytes> {
        let inner = &self.inner;
        let id = claim.message.id;
        match body.get_or_try_init(|| inner.store.body(id)).await {
            Ok(body) => Some(body.clone()),
            Err(err) => {
                tracing::error!(%id, error = %err, "cannot read a queued message");
                inner.store.release(id, recipients).await;
                None
            }
        }
    }

    async fn deliver_group(
        &self,
        claim: &Arc<Claim>,
        destination: &Destination,
        recipients: &[usize],
        body: &OnceCell<Bytes>,
    ) {
        let inner = &self.inner;
        let id = claim.message.id;
        let envelope = &claim.message.envelope;
        if self.park_if_backed_off(claim, destination, recipients) {
            return;
        }
        let limit = self.limit(destination);
        let Ok(_permit) = limit.acquire_owned().await else {
            inner.store.release(id, recipients).await;
            return;
        };
        // The destination may have failed while this group waited for a
        // connection slot.
        if self.park_if_backed_off(claim, destination, recipients) {
            return;
        }
        let Some(body) = self.body(claim, recipients, body).await else {
            return;
        };
        let now = inner.clock.now();
        let backed_off = lock(&inner.backoff)
            .get(destination)
            .filter(|b| b.until > now)
            .cloned();
        let (outcome, retry_at) = if let Some(backoff) = backed_off {
            // RFC 5321 §4.5.4.1: a destination that cannot be reached is
            // not tried once per message; its mail waits with it.
            let results = recipients
                .iter()
                .map(|_| RecipientResult::Temporary(backoff.last.clone()))
                .collect();
            (
                AttemptOutcome {
                    results,
                    connection_failure: false,
                    dsn_passed_on: false,
                },
                Some(backoff.until),
            )
        } else {
            tracing::debug!(%id, %destination, recipients = recipients.len(), "delivering");
            // The cap across every node sharing the store (RFC 5321
            // §4.5.4.1: limit simultaneous connections to one host).
            let slot = if *destination == Destination::Local {
                None
            } else {
                let max = inner.deliverer.config().max_per_destination.max(1);
                inner
                    .store
                    .acquire_slot(&destination.to_string(), max)
                    .await
            };
            // An operator may have held the message while this group waited
            // for its connection slot: then it is not attempted (the groups
            // already in flight finish as they would have).
            if inner.store.is_held(id).await {
                if let Some(slot) = slot {
                    inner.store.release_slot(slot).await;
                }
                tracing::debug!(%id, %destination, "held while waiting for a slot");
                inner.store.release(id, recipients).await;
                return;
            }
            let outcome = inner
                .deliverer
                .attempt(destination, envelope, recipients, body.clone())
                .await;
            if let Some(slot) = slot {
                inner.store.release_slot(slot).await;
            }
            self.note_destination(destination, &outcome);
            (outcome, None)
        };
        let now = inner.clock.now();
        let (states, notices) = self.outcomes(
            claim,
            destination,
            recipients,
            &outcome,
            retry_at,
            now,
            &body,
        );
        if let Err(err) = inner.store.record(id, states, notices).await {
            tracing::error!(%id, error = %err, "cannot record delivery outcomes");
            inner.store.release(id, recipients).await;
        }
    }

    fn note_destination(&self, destination: &Destination, outcome: &AttemptOutcome) {
        if *destination == Destination::Local {
            return;
        }
        let mut backoff = lock(&self.inner.backoff);
        if outcome.connection_failure {
            let now = self.inner.clock.now();
            let failures = backoff.get(destination).map_or(0, |b| b.failures) + 1;
            let seed = mix(format!("{destination}").len() as u64 ^ u64::from(failures));
            let until = now + self.inner.config.retry.delay(failures, seed);
            let last = outcome
                .results
                .first()
                .map(|r| r.report().clone())
                .unwrap_or(AttemptReport {
                    remote_mta: None,
                    diagnostic: "451 4.4.1 destination unreachable".to_owned(),
                    at: now,
                });
            tracing::info!(%destination, failures, "destination unreachable; backing off");
            backoff.insert(
                destination.clone(),
                Backoff {
                    failures,
                    until,
                    last,
                },
            );
        } else if backoff.remove(destination).is_some() {
            // Parked mail for it can go now.
            self.inner.wake.notify_one();
        }
    }

    /// Parks `recipients` of `claim` when `destination` is backed off and
    /// nothing about them has to be recorded before the backoff ends.
    /// Returns whether they were parked.
    fn park_if_backed_off(
        &self,
        claim: &Arc<Claim>,
        destination: &Destination,
        recipients: &[usize],
    ) -> bool {
        let inner = &self.inner;
        let now = inner.clock.now();
        let Some(until) = lock(&inner.backoff)
            .get(destination)
            .map(|b| b.until)
            .filter(|until| *until > now)
        else {
            return false;
        };
        let deadline = self.park_deadline(claim, recipients);
        if deadline <= now {
            // The sender must hear now: the deferral is recorded.
            return false;
        }
        let mut parked = lock(&inner.parked);
        let list = parked.entry(destination.clone()).or_default();
        let sooner = list.earliest.is_none_or(|e| deadline < e);
        if sooner {
            list.earliest = Some(deadline);
        }
        let first = list.groups.is_empty();
        list.groups.push(Parked {
            claim: Arc::clone(claim),
            recipients: recipients.to_vec(),
            deadline,
        });
        drop(parked);
        tracing::debug!(id = %claim.message.id, %destination, ?until, "parked while the destination is backed off");
        if first || deadline < until && sooner {
            inner.wake.notify_one();
        }
        true
    }

    /// When parked recipients must be looked at even if their destination
    /// is still backed off: the end of the message's queue lifetime, or
    /// the time a delay warning one of them asked for is due.
    fn park_deadline(&self, claim: &Claim, recipients: &[usize]) -> SystemTime {
        let config = &self.inner.config;
        let envelope: &QueuedEnvelope = &claim.message.envelope;
        let mut deadline = envelope.received_at + config.max_queue_lifetime;
        let reportable = envelope.kind == MessageKind::Normal && envelope.sender.is_some();
        if reportable {
            for &n in recipients {
                let warned = matches!(
                    claim.message.states[n],
                    RecipientState::Deferred { warned: true, .. }
                );
                if !warned && envelope.recipients[n].wants_delay() {
                    deadline = deadline.min(envelope.received_at + config.delay_warning);
                }
            }
        }
        deadline
    }

    /// Takes the parked groups that may go now: every group of a
    /// destination that is no longer backed off, and the groups whose
    /// deadline has come.
    fn unpark(&self, now: SystemTime) -> Vec<Parked> {
        let inner = &self.inner;
        let mut out = Vec::new();
        let backoff = lock(&inner.backoff);
        let mut parked = lock(&inner.parked);
        parked.retain(|destination, list| {
            let free = backoff.get(destination).is_none_or(|b| b.until <= now);
            if !free && list.earliest.is_none_or(|e| e > now) {
                return true;
            }
            let mut kept = Vec::new();
            for group in list.groups.drain(..) {
                if free || group.deadline <= now {
                    out.push(group);
                } else {
                    kept.push(group);
                }
            }
            list.earliest = kept.iter().map(|g| g.deadline).min();
            list.groups = kept;
            !list.groups.is_empty()
        });
        out
    }

    /// The earliest time parked work may go: a backoff's end or a
    /// group's deadline.
    fn parked_wake(&self) -> Option<SystemTime> {
        let inner = &self.inner;
        let backoff = lock(&inner.backoff);
        let parked = lock(&inner.parked);
        parked
            .iter()
            .map(|(destination, list)| {
                let until = backoff
                    .get(destination)
                    .map_or(SystemTime::UNIX_EPOCH, |b| b.until);
                list.earliest.map_or(until, |earliest| until.min(earliest))
            })
            .min()
    }

    /// How many recipients are parked, waiting for backed-off destinations
    /// (claimed, not attempted, last committed state unchanged).
    pub fn parked_recipients(&self) -> usize {
        lock(&self.inner.parked)
            .values()
            .flat_map(|list| &list.groups)
            .map(|group| group.recipients.len())
            .sum()
    }

    /// The new state of every recipient of the attempt, and the
    /// notifications to queue with them: at most one per kind (failure,
    /// delay, success) for this batch of recipients.
    #[allow(clippy::too_many_arguments)]
    fn outcomes(
        &self,
        claim: &Claim,
        destination: &Destination,
        recipients: &[usize],
        outcome: &AttemptOutcome,
        retry_at: Option<SystemTime>,
        now: SystemTime,
        body: &Bytes,
    ) -> (Vec<(usize, RecipientState)>, Vec<NewMessage>) {
        let config = &self.inner.config;
        let envelope: &QueuedEnvelope = &claim.message.envelope;
        // RFC 3461 §6.2 and RFC 5321 §6.1: nothing is ever sent about a
        // notification, nor to the null reverse-path.
        let reportable = envelope.kind == MessageKind::Normal && envelope.sender.is_some();
        let age = now.duration_since(envelope.received_at).unwrap_or_default();
        let mut states = Vec::with_capacity(recipients.len());
        let mut failed = Vec::new();
        let mut delayed = Vec::new();
        let mut succeeded = Vec::new();
        for (&n, result) in recipients.iter().zip(&outcome.results) {
            let recipient = &envelope.recipients[n];
            let previous = &claim.message.states[n];
            match result {
                RecipientResult::Delivered(report) => {
                    // RFC 3461 §5.2.1: a next hop that offered DSN got
                    // NOTIFY and ORCPT with the message and reports success
                    // itself; only without it (§5.2.2, `relayed`) or after
                    // local delivery (§5.2.3, `delivered`) is it ours.
                    if reportable && recipient.wants_success() && !outcome.dsn_passed_on {
                        succeeded.push((n, report.clone()));
                    }
                    states.push((
                        n,
                        RecipientState::Delivered {
                            last: report.clone(),
                        },
                    ));
                }
                RecipientResult::Permanent(report) => {
                    if reportable && recipient.wants_failure() {
                        failed.push((n, report.clone(), false));
                    }
                    states.push((
                        n,
                        RecipientState::Failed {
                            last: report.clone(),
                        },
                    ));
                }
                RecipientResult::Temporary(report) => {
                    if age >= config.max_queue_lifetime {
                        if reportable && recipient.wants_failure() {
                            failed.push((n, report.clone(), true));
                        }
                        states.push((
                            n,
                            RecipientState::Failed {
                                last: report.clone(),
                            },
                        ));
                        continue;
                    }
                    let attempts = previous.attempts() + u32::from(retry_at.is_none());
                    let seed = mix(claim.message.id.0 ^ (n as u64) << 32);
                    let next_attempt = retry_at
                        .unwrap_or_else(|| now + config.retry.delay(attempts, seed))
                        // Never past the end of the queue lifetime: the
                        // last try happens then, and fails the recipient.
                        .min(envelope.received_at + config.max_queue_lifetime);
                    let mut warned =
                        matches!(previous, RecipientState::Deferred { warned: true, .. });
                    if !warned
                        && reportable
                        && recipient.wants_delay()
                        && age >= config.delay_warning
                    {
                        delayed.push((n, report.clone()));
                        warned = true;
                    }
                    states.push((
                        n,
                        RecipientState::Deferred {
                            attempts,
                            next_attempt,
                            last: report.clone(),
                            warned,
                        },
                    ));
                }
            }
        }
        let mut notices = Vec::new();
        let relayed = *destination != Destination::Local;
        let mut add = |kind: NoticeKind, list: Vec<NoticeRecipient>| {
            if list.is_empty() {
                return;
            }
            match notice::build(kind, envelope, body, &list, &config.reporting_mta, now) {
                Ok(message) => notices.push(message),
                Err(err) => {
                    tracing::error!(id = %claim.message.id, error = %err, "cannot build a notification");
                }
            }
        };
        add(
            NoticeKind::Failure,
            failed
                .into_iter()
                .map(|(n, report, expired)| NoticeRecipient {
                    index: n,
                    report,
                    expired,
                    relayed: false,
                    will_retry_until: None,
                })
                .collect(),
        );
        add(
            NoticeKind::Delay,
            delayed
                .into_iter()
                .map(|(n, report)| NoticeRecipient {
                    index: n,
                    report,
                    expired: false,
                    relayed: false,
                    will_retry_until: Some(envelope.received_at + config.max_queue_lifetime),
                })
                .collect(),
        );
        add(
            NoticeKind::Success,
            succeeded
                .into_iter()
                .map(|(n, report)| NoticeRecipient {
                    index: n,
                    report,
                    expired: false,
                    relayed,
                    will_retry_until: None,
                })
                .collect(),
        );
        (states, notices)
    }

    /// Forgets every destination's connection-level backoff (an operator's
    /// flush: the destinations are said to be back). Only this scheduler's
    /// backoff; the schedulers of other nodes of a shared queue forget
    /// theirs when the store announces the flush
    /// ([`QueueStore::flushes`]).
    pub fn clear_backoff(&self) {
        lock(&self.inner.backoff).clear();
        // What was parked behind those backoffs goes now.
        self.inner.wake.notify_one();
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }
}
