//! A pool of connections shared by many tasks, with a hard cap on live
//! connections.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::envelope::{Envelope, SendResult};
use crate::error::{Error, ErrorKind, Step};
use crate::message::Message;

/// How long the NOOP check of an idle connection may take. A silently
/// dead peer (a NAT that dropped the flow) never answers; waiting a whole
/// command timeout per idle connection would stall a send for minutes.
const NOOP_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of a [`Pool`].
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
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            max_messages_per_connection: 100,
            idle_timeout: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(10 * 60),
            check_after_idle: Duration::from_secs(5),
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
/// ```no_run
/// # async fn run() -> Result<(), smtp_client::Error> {
/// use smtp_client::{ClientConfig, Envelope, Pool, PoolConfig};
///
/// let config = ClientConfig::builder("mail.example.com").build()?;
/// let pool = Pool::new(config, PoolConfig { max_connections: 4, ..PoolConfig::default() });
/// let envelope = Envelope::new(
///     Some("alice@example.com".parse().unwrap()),
///     ["bob@example.org".parse().unwrap()],
/// )?;
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
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    sent: AtomicU64,
    failures: AtomicU64,
}

/// A connection counted in `Counters::open` until dropped.
#[derive(Debug)]
struct Pooled {
    connection: Connection,
    counters: Arc<Counters>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
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
            }),
        }
    }

    /// The pool's limits.
    pub fn settings(&self) -> &PoolConfig {
        &self.inner.settings
    }

    /// Sends one message on a pooled connection, waiting for a free slot
    /// when all `max_connections` are busy. The result is that of
    /// [`Connection::send`].
    pub async fn send(
        &self,
        envelope: &Envelope,
        message: impl Into<Message>,
    ) -> Result<SendResult, Error> {
        let mut message = message.into();
        let result = self.send_message(envelope, &mut message).await;
        let counter = match result {
            Ok(_) => &self.inner.counters.sent,
            Err(_) => &self.inner.counters.failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn send_message(
        &self,
        envelope: &Envelope,
        message: &mut Message,
    ) -> Result<SendResult, Error> {
        envelope.validate()?;
        let permit = Arc::clone(&self.inner.slots)
            .acquire_owned()
            .await
            .map_err(|_| Error::new(ErrorKind::Closed, Step::Connect, "the pool is closed"))?;
        let (mut pooled, reused) = self.checkout().await?;
        let mut result = pooled.connection.send_message(envelope, message).await;
        if reused && message.is_replayable() && result.as_ref().is_err_and(closed_before_data) {
            // The server closed the connection while it sat idle: nothing
            // of the message was accepted, so send it on a fresh one.
            tracing::debug!("pooled connection was closed by the server; reconnecting");
            drop(pooled);
            pooled = self.open().await?;
            result = pooled.connection.send_message(envelope, message).await;
        }
        self.checkin(pooled, permit);
        result
    }

    /// A reusable idle connection, or a new one.
    async fn checkout(&self) -> Result<(Pooled, bool), Error> {
        // Bounded: each turn removes one connection from the idle list.
        loop {
            let candidate = self.lock_idle().pop();
            let Some(mut pooled) = candidate else {
                break;
            };
            if self.expired(&pooled.connection) {
                self.retire(pooled, None);
                continue;
            }
            let idle_for = pooled.connection.last_used_at().elapsed();
            if idle_for >= self.inner.settings.check_after_idle
                && pooled
                    .connection
                    .noop_within(NOOP_CHECK_TIMEOUT)
                    .await
                    .is_err()
            {
                continue;
            }
            return Ok((pooled, true));
        }
        Ok((self.open().await?, false))
    }

    async fn open(&self) -> Result<Pooled, Error> {
        let connection = Connection::connect(&self.inner.config).await?;
        self.inner.counters.open.fetch_add(1, Ordering::Relaxed);
        Ok(Pooled {
            connection,
            counters: Arc::clone(&self.inner.counters),
        })
    }

    /// Returns a connection to the idle list (before its slot is released,
    /// so the cap holds), or retires it.
    fn checkin(&self, pooled: Pooled, permit: OwnedSemaphorePermit) {
        let stale: Vec<Pooled> = {
            let mut idle = self.lock_idle();
            let (keep, stale): (Vec<_>, Vec<_>) = idle
                .drain(..)
                .partition(|pooled| !self.expired(&pooled.connection));
            *idle = keep;
            if self.expired(&pooled.connection) {
                drop(idle);
                self.retire(pooled, Some(permit));
            } else {
                idle.push(pooled);
                drop(idle);
                drop(permit);
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

/// Whether a send failed because the connection was gone before any
/// message data was sent: end of stream, a reset or a 421 at `MAIL`,
/// `RCPT` or `DATA`.
fn closed_before_data(error: &Error) -> bool {
    matches!(error.kind(), ErrorKind::Closed | ErrorKind::Io)
        && matches!(error.step(), Step::Mail | Step::Rcpt | Step::Data)
}
