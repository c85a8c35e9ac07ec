//! A pool of connections shared by many tasks, with a hard cap on live
//! connections.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::envelope::{Envelope, SendResult};
use crate::error::{Error, ErrorKind, Step};
use crate::message::Message;

/// How long the NOOP check of an idle connection may take. A silently
/// dead peer (a NAT that dropped the flow) never answers; waiting a whole
/// command timeout per idle connection would stall a send for minutes.
const NOOP_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a [`Pool`] starts a send again after a transient failure that
/// happened before any message data was sent ([`PoolConfig::retry_transient`]).
///
/// ```
/// use std::time::Duration;
/// use smtp_client::{PoolConfig, RetryPolicy};
/// let settings = PoolConfig {
///     retry_transient: RetryPolicy { attempts: 2, backoff: Duration::from_millis(500) },
///     ..PoolConfig::default()
/// };
/// assert_eq!(settings.retry_transient.delay(2), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Further attempts after the first (0: no retry).
    pub attempts: u32,
    /// The wait before the first retry; each further retry waits twice as
    /// long as the one before, up to [`RETRY_BACKOFF_MAX`].
    pub backoff: Duration,
}

/// The longest wait between two attempts of a [`RetryPolicy`].
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(60);

impl RetryPolicy {
    /// No retry: every failure is returned at once.
    pub const NONE: RetryPolicy = RetryPolicy {
        attempts: 0,
        backoff: Duration::ZERO,
    };

    /// The wait before retry number `retry` (1 for the first).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.backoff.saturating_mul(factor).min(RETRY_BACKOFF_MAX)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::NONE
    }
}

/// Limits of a [`Pool`]: a plain struct, so set what you need and take
/// the rest from [`Default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// The most connections open at once, busy or idle (at least 1).
    pub max_connections: usize,
    /// A connection is closed after this many messages (at least 1).
    pub max_messages_per_connection: usize,
    /// An idle connection older than this (since its last use) is closed
    /// instead of reused.
    pub idle_timeout: Duration,
    /// A connection is closed once it has been open this long.
    pub max_lifetime: Duration,
    /// A connection idle for at least this long is checked with `NOOP`
    /// before it is reused.
    pub check_after_idle: Duration,
    /// Starts a send again after a transient failure that happened before
    /// any message data was sent: a failed connect, greeting, EHLO, TLS or
    /// AUTH step, a 4xx (or lost connection) at `MAIL`, `RCPT` or `DATA`,
    /// or every recipient refused with a 4xx. Nothing of the message was
    /// accepted then, so a retry cannot duplicate it. Failures after the
    /// data was sent, partial acceptances, and messages from a reader or
    /// stream (which cannot be read twice) are never retried. Default: no
    /// retry.
    pub retry_transient: RetryPolicy,
    /// How long the pool keeps its lowered size after a server refused a
    /// new connection at the greeting while others were open (the server's
    /// per-client connection limit, see [`Pool`]). Default 30 seconds.
    pub throttle_period: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            max_messages_per_connection: 100,
            idle_timeout: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(10 * 60),
            check_after_idle: Duration::from_secs(5),
            retry_transient: RetryPolicy::NONE,
            throttle_period: Duration::from_secs(30),
        }
    }
}

/// A snapshot of a pool's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Connections open now, busy or idle.
    pub open: usize,
    /// Connections open and waiting for a message.
    pub idle: usize,
    /// Messages sent (at least one recipient accepted).
    pub sent: u64,
    /// Sends that ended in an error.
    pub failures: u64,
}

/// A pool of connections to one server: a cheap `Clone + Send + Sync`
/// handle to share between tasks.
///
/// Every send holds one of `max_connections` slots, and each open
/// connection belongs to a slot or waits idle in the pool, so there are
/// never more than `max_connections` connections, busy or idle. A
/// connection that failed in a transaction is dropped, never reused. One
/// that the server closed while it was idle (end of stream or `421` at
/// `MAIL`) is replaced by a fresh connection and the message sent again,
/// which is safe because nothing of it was accepted.
///
/// # The server's per-client connection limit
///
/// Servers cap the connections one client address may hold (smtp-server's
/// `DEFAULT_MAX_CONNECTIONS_PER_IP` is 20, Postfix's
/// `smtpd_client_connection_count_limit` 50) and refuse the rest at the
/// greeting with a 4xx, usually `421 4.7.0`. A pool larger than that limit
/// does not fail messages for it: when a new connection is refused at the
/// greeting with a 4xx while other connections to the server are open (or
/// being opened), the pool lowers its own size to the number of those
/// connections for [`PoolConfig::throttle_period`] and the send waits for
/// one of them instead. So `max_connections` is a ceiling, and the server's
/// limit decides how many connections are really used. A refusal while no
/// other connection is open is the send's error (retried when
/// [`PoolConfig::retry_transient`] allows).
///
/// After a failed connect or a refused greeting, the pool waits before it
/// opens the next connection: 100 ms, doubling with every further failure
/// up to 5 seconds, and back to none after a success. A server that
/// refuses everyone is therefore never hammered with reconnects.
///
/// # Cancellation
///
/// Dropping the future of [`Pool::send`] is safe: the slot is released and
/// a connection in the middle of a transaction is closed, never reused.
/// Whether the message was delivered is then unknown if the end of data was
/// already sent; see [`Connection::send`].
///
/// ```no_run
/// # async fn run() -> Result<(), smtp_client::Error> {
/// use smtp_client::{ClientConfig, Envelope, Pool, PoolConfig};
///
/// let config = ClientConfig::builder("mail.example.com").build()?;
/// let pool = Pool::new(config, PoolConfig { max_connections: 4, ..PoolConfig::default() });
/// let envelope = Envelope::new("alice@example.com", ["bob@example.org"])?;
/// let mut tasks = Vec::new();
/// for n in 0..100 {
///     let pool = pool.clone();
///     let envelope = envelope.clone();
///     tasks.push(tokio::spawn(async move {
///         pool.send(&envelope, format!("Subject: {n}\r\n\r\nHello\r\n")).await
///     }));
/// }
/// for task in tasks {
///     task.await.expect("task panicked")?;
/// }
/// println!("{:?}", pool.stats());
/// pool.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    config: ClientConfig,
    settings: PoolConfig,
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<Pooled>>,
    counters: Arc<Counters>,
    throttle: Mutex<Throttle>,
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    /// Connections being opened (connect, greeting, EHLO, TLS, AUTH).
    opening: AtomicUsize,
    sent: AtomicU64,
    failures: AtomicU64,
    /// Woken whenever a connection goes idle or closes, for sends waiting
    /// under a lowered pool size.
    changed: Notify,
}

/// The pool's reaction to refusals: a lowered size and a reconnect delay.
#[derive(Debug)]
struct Throttle {
    /// The pool size while lowered.
    limit: Option<usize>,
    /// When the lowered size ends.
    until: Instant,
    /// Failed opens in a row.
    failures: u32,
    /// No new connection is opened before this.
    not_before: Instant,
}

/// The first reconnect delay after a failed open; it doubles per failure.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// The longest reconnect delay.
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);
/// How often a waiting send looks again even without a wake-up (the
/// lowered size may have expired).
const WAIT_RECHECK: Duration = Duration::from_millis(250);

/// A connection counted in `Counters::open` until dropped.
#[derive(Debug)]
struct Pooled {
    connection: Connection,
    counters: Arc<Counters>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
        self.counters.changed.notify_waiters();
    }
}

/// Counts a connection being opened until dropped.
struct Opening<'a>(&'a Counters);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.opening.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}

impl Pool {
    /// A pool for the server in `config`. No connection is opened until the
    /// first send.
    pub fn new(config: ClientConfig, settings: PoolConfig) -> Pool {
        let settings = PoolConfig {
            max_connections: settings.max_connections.max(1),
            max_messages_per_connection: settings.max_messages_per_connection.max(1),
            ..settings
        };
        Pool {
            inner: Arc::new(PoolInner {
                config,
                slots: Arc::new(Semaphore::new(settings.max_connections)),
                settings,
                idle: Mutex::new(Vec::new()),
                counters: Arc::new(Counters::default()),
                throttle: Mutex::new(Throttle {
                    limit: None,
                    until: Instant::now(),
                    failures: 0,
                    not_before: Instant::now(),
                }),
            }),
        }
    }

    /// The pool's limits.
    pub fn settings(&self) -> &PoolConfig {
        &self.inner.settings
    }

    /// Sends one message on a pooled connection, waiting for a free slot
    /// when all `max_connections` are busy (or fewer, while the server's
    /// connection limit lowered the pool's size). The result is that of
    /// [`Connection::send`]; a transient failure before the message data
    /// is retried as [`PoolConfig::retry_transient`] says. An error carries
    /// every recipient's outcome ([`Error::recipients`]).
    ///
    /// With [`Timeouts::send_deadline`](crate::Timeouts::send_deadline) the
    /// whole call, waiting and retries included, ends by that deadline.
    ///
    /// Dropping the returned future is safe (see [Cancellation](Pool#cancellation)).
    pub async fn send(
        &self,
        envelope: &Envelope,
        message: impl Into<Message>,
    ) -> Result<SendResult, Error> {
        let mut message = message.into();
        let deadline = self
            .inner
            .config
            .inner
            .timeouts
            .send_deadline
            .map(|limit| Instant::now() + limit);
        let result = self
            .send_with_retries(envelope, &mut message, deadline)
            .await
            .map_err(|error| error.for_envelope(envelope));
        let counter = match result {
            Ok(_) => &self.inner.counters.sent,
            Err(_) => &self.inner.counters.failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn send_with_retries(
        &self,
        envelope: &Envelope,
        message: &mut Message,
        deadline: Option<Instant>,
    ) -> Result<SendResult, Error> {
        envelope.validate()?;
        let policy = self.inner.settings.retry_transient;
        let mut retry = 0;
        loop {
            let result = self.send_message(envelope, message, deadline).await;
            let error = match result {
                Err(error) if retry < policy.attempts && message.is_replayable() => error,
                other => return other,
            };
            if !before_data(&error) || !error.is_transient() {
                return Err(error);
            }
            retry += 1;
            let delay = policy.delay(retry);
            if deadline.is_some_and(|deadline| Instant::now() + delay >= deadline) {
                return Err(error);
            }
            tracing::debug!(%error, retry, ?delay, "transient failure before DATA; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn send_message(
        &self,
        envelope: &Envelope,
        message: &mut Message,
        deadline: Option<Instant>,
    ) -> Result<SendResult, Error> {
        let acquire = Arc::clone(&self.inner.slots).acquire_owned();
        let permit = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, acquire)
                .await
                .map_err(|_| deadline_passed("waiting for a pool slot"))?,
            None => acquire.await,
        }
        .map_err(|_| Error::new(ErrorKind::Closed, Step::Connect, "the pool is closed"))?;
        let (mut pooled, reused) = self.checkout(deadline).await?;
        let mut result = pooled
            .connection
            .send_until(envelope, message, deadline)
            .await;
        if reused && message.is_replayable() && result.as_ref().is_err_and(closed_before_data) {
            // The server closed the connection while it sat idle: nothing
            // of the message was accepted, so send it on a fresh one.
            tracing::debug!("pooled connection was closed by the server; reconnecting");
            drop(pooled);
            pooled = self.checkout(deadline).await?.0;
            result = pooled
                .connection
                .send_until(envelope, message, deadline)
                .await;
        }
        self.checkin(pooled, permit);
        result
    }

    /// A reusable idle connection, or a new one when the pool's (possibly
    /// lowered) size allows; otherwise waits for either.
    async fn checkout(&self, deadline: Option<Instant>) -> Result<(Pooled, bool), Error> {
        let mut refused_before = false;
        loop {
            let changed = self.inner.counters.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(pooled) = self.take_idle(deadline).await {
                return Ok((pooled, true));
            }
            let mut wake_at = Instant::now() + WAIT_RECHECK;
            match self.may_open() {
                Err(not_before) => wake_at = wake_at.min(not_before),
                Ok(()) => match self.open(deadline).await {
                    Ok(pooled) => return Ok((pooled, false)),
                    Err(error) => {
                        if !self.refused_at_limit(&error, refused_before) {
                            return Err(error);
                        }
                        refused_before = true;
                        tracing::debug!(%error, "refused at the greeting; waiting for a pooled connection");
                        continue;
                    }
                },
            }
            let wait = tokio::time::sleep_until(wake_at);
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = wait => {}
                        _ = tokio::time::sleep_until(deadline) => {
                            return Err(deadline_passed("waiting for a pooled connection"));
                        }
                    }
                }
                None => {
                    tokio::select! {
                        _ = changed => {}
                        _ = wait => {}
                    }
                }
            }
        }
    }

    /// A usable idle connection, checking with NOOP one that sat long.
    async fn take_idle(&self, deadline: Option<Instant>) -> Option<Pooled> {
        // Bounded: each turn removes one connection from the idle list.
        loop {
            let mut pooled = self.lock_idle().pop()?;
            if self.expired(&pooled.connection) {
                self.retire(pooled, None);
                continue;
            }
            let idle_for = pooled.connection.last_used_at().elapsed();
            let mut check = NOOP_CHECK_TIMEOUT;
            if let Some(deadline) = deadline {
                check = check.min(deadline.saturating_duration_since(Instant::now()));
            }
            if idle_for >= self.inner.settings.check_after_idle
                && pooled.connection.noop_within(check).await.is_err()
            {
                continue;
            }
            return Some(pooled);
        }
    }

    /// Whether a new connection may be opened now: under the lowered size
    /// (if any) and past the reconnect delay. `Err` holds when to look
    /// again: the end of the delay, or a moment from now when the pool is
    /// full (then a connection going idle or closing wakes the caller).
    fn may_open(&self) -> Result<(), Instant> {
        let counters = &self.inner.counters;
        let live = counters.open.load(Ordering::Relaxed) + counters.opening.load(Ordering::Relaxed);
        let mut throttle = self.lock_throttle();
        let now = Instant::now();
        if throttle.limit.is_some() && now >= throttle.until {
            tracing::debug!("pool size restored after the throttle period");
            throttle.limit = None;
        }
        let limit = throttle
            .limit
            .unwrap_or(self.inner.settings.max_connections);
        // With nothing established, a send may always try (after the
        // delay): a lowered size must not queue sends behind connections
        // that may never come.
        let open = counters.open.load(Ordering::Relaxed);
        if !(live < limit || open == 0) {
            return Err(now + WAIT_RECHECK);
        }
        if now < throttle.not_before {
            return Err(throttle.not_before);
        }
        Ok(())
    }

    /// After a failed open: a 4xx at the greeting while other connections
    /// are open is the server's per-client limit, so the pool lowers its
    /// size to those connections and the caller waits for one. Connections
    /// still being opened count for a send's first refusal only: they may
    /// be refused too, and a send must not wait for them forever.
    fn refused_at_limit(&self, error: &Error, refused_before: bool) -> bool {
        let refused = error.step() == Step::Greeting
            && error.reply().is_some_and(|reply| reply.is_transient());
        if !refused {
            return false;
        }
        let counters = &self.inner.counters;
        let open = counters.open.load(Ordering::Relaxed);
        let opening = counters.opening.load(Ordering::Relaxed);
        let live = open + opening;
        if open == 0 && (refused_before || opening == 0) {
            return false;
        }
        let mut throttle = self.lock_throttle();
        let limit = throttle.limit.map_or(live, |limit| limit.min(live)).max(1);
        if throttle.limit != Some(limit) {
            tracing::info!(
                limit,
                "the server refused a connection at the greeting; lowering the pool size"
            );
        }
        throttle.limit = Some(limit);
        throttle.until = Instant::now() + self.inner.settings.throttle_period;
        true
    }

    async fn open(&self, deadline: Option<Instant>) -> Result<Pooled, Error> {
        let counters = &self.inner.counters;
        counters.opening.fetch_add(1, Ordering::Relaxed);
        let opening = Opening(counters);
        let result = Connection::connect_until(&self.inner.config, deadline).await;
        let mut throttle = self.lock_throttle();
        match result {
            Ok(connection) => {
                throttle.failures = 0;
                drop(throttle);
                counters.open.fetch_add(1, Ordering::Relaxed);
                drop(opening);
                Ok(Pooled {
                    connection,
                    counters: Arc::clone(counters),
                })
            }
            Err(error) => {
                if matches!(
                    error.step(),
                    Step::Connect | Step::Greeting | Step::TlsHandshake
                ) {
                    // Opens that fail together count as one failure, so
                    // the delay doubles per round, not per connection.
                    let now = Instant::now();
                    if now >= throttle.not_before {
                        throttle.failures = throttle.failures.saturating_add(1);
                        let factor = 2u32.saturating_pow(throttle.failures - 1);
                        let delay = RECONNECT_DELAY
                            .saturating_mul(factor)
                            .min(RECONNECT_DELAY_MAX);
                        throttle.not_before = now + delay;
                    }
                }
                drop(throttle);
                drop(opening);
                Err(error)
            }
        }
    }

    /// Returns a connection to the idle list (before its slot is released,
    /// so the cap holds), or retires it.
    fn checkin(&self, pooled: Pooled, permit: OwnedSemaphorePermit) {
        let stale: Vec<Pooled> = {
            let mut idle = self.lock_idle();
            // Nothing is allocated unless an idle connection has expired.
            let stale = if idle.iter().any(|pooled| self.expired(&pooled.connection)) {
                let (keep, stale): (Vec<_>, Vec<_>) = idle
                    .drain(..)
                    .partition(|pooled| !self.expired(&pooled.connection));
                *idle = keep;
                stale
            } else {
                Vec::new()
            };
            if self.expired(&pooled.connection) {
                drop(idle);
                self.retire(pooled, Some(permit));
            } else {
                idle.push(pooled);
                drop(idle);
                drop(permit);
                self.inner.counters.changed.notify_waiters();
            }
            stale
        };
        for pooled in stale {
            self.retire(pooled, None);
        }
    }

    fn expired(&self, connection: &Connection) -> bool {
        let settings = &self.inner.settings;
        !connection.is_usable()
            || connection.messages_sent() >= settings.max_messages_per_connection
            || connection.opened_at().elapsed() >= settings.max_lifetime
            || connection.last_used_at().elapsed() >= settings.idle_timeout
    }

    /// Closes a connection: with `QUIT` in the background when it is still
    /// in step and a slot is free to cover it until it is gone; otherwise
    /// it is dropped at once.
    fn retire(&self, pooled: Pooled, permit: Option<OwnedSemaphorePermit>) {
        if !pooled.connection.is_usable() {
            return;
        }
        let permit = permit.or_else(|| Arc::clone(&self.inner.slots).try_acquire_owned().ok());
        if let Some(permit) = permit {
            tokio::spawn(async move {
                close_pooled(pooled).await;
                drop(permit);
            });
        }
    }

    /// The counters now.
    pub fn stats(&self) -> PoolStats {
        let counters = &self.inner.counters;
        PoolStats {
            open: counters.open.load(Ordering::Relaxed),
            idle: self.lock_idle().len(),
            sent: counters.sent.load(Ordering::Relaxed),
            failures: counters.failures.load(Ordering::Relaxed),
        }
    }

    /// Closes every idle connection with `QUIT`. Busy connections finish
    /// their send and go back to the pool, which stays usable.
    pub async fn close(&self) {
        let idle: Vec<Pooled> = self.lock_idle().drain(..).collect();
        for pooled in idle {
            close_pooled(pooled).await;
        }
    }

    fn lock_throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        // Every change is a plain field store: a poisoned lock is good.
        self.inner
            .throttle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pool's size now: `max_connections`, or less while a server's
    /// per-client connection limit lowered it (see [`Pool`]).
    pub fn effective_size(&self) -> usize {
        let throttle = self.lock_throttle();
        match throttle.limit {
            Some(limit) if Instant::now() < throttle.until => limit,
            _ => self.inner.settings.max_connections,
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Pooled>> {
        // A panic while holding the lock cannot leave the list half
        // changed (every change is one push, pop or swap), so a poisoned
        // lock is still good.
        self.inner
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `QUIT` and close; the open counter drops with `pooled`.
async fn close_pooled(mut pooled: Pooled) {
    let _ = pooled.connection.quit_in_place().await;
}

/// The error for a send that ran out of its whole-send deadline while
/// waiting in the pool.
fn deadline_passed(what: &str) -> Error {
    Error::new(
        ErrorKind::Timeout,
        Step::Connect,
        format!("the send deadline passed while {what}"),
    )
}

/// Whether a failure happened before any message data was sent, so that
/// starting the send again cannot deliver the message twice.
fn before_data(error: &Error) -> bool {
    matches!(
        error.step(),
        Step::Connect
            | Step::TlsHandshake
            | Step::Greeting
            | Step::Hello
            | Step::StartTls
            | Step::Auth
            | Step::Mail
            | Step::Rcpt
            | Step::Data
    ) && error.kind() != ErrorKind::InvalidInput
}

/// Whether a send failed because the connection was gone before any
/// message data was sent: end of stream, a reset or a 421 at `MAIL`,
/// `RCPT` or `DATA`.
fn closed_before_data(error: &Error) -> bool {
    matches!(error.kind(), ErrorKind::Closed | ErrorKind::Io)
        && matches!(error.step(), Step::Mail | Step::Rcpt | Step::Data)
}
