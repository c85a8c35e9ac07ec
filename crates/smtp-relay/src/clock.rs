//! The relay's clock, injected so that retries, expiry and delay warnings
//! are tested deterministically.
//!
//! [`TokioClock`] follows tokio's clock, so under `tokio::time::pause` the
//! scheduler sees paused time. Tests that also use real sockets use
//! [`ManualClock`] instead: tokio's paused clock jumps ahead whenever the
//! runtime waits for I/O, which would fire every network timeout at once,
//! while a manual clock moves only when the test says so.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::deliver::BoxFuture;

/// Tells the relay what time it is, and waits for a time to come.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;

    /// Completes once [`Clock::now`] is at or after `deadline`.
    fn sleep_until(&self, deadline: SystemTime) -> BoxFuture<'_, ()>;
}

/// Wall-clock time that advances with tokio's clock: the system time when
/// it was created plus the tokio time elapsed since. Under
/// `tokio::time::pause` it stands still and moves only with
/// `tokio::time::advance` (or auto-advance), so the relay's timers and its
/// idea of "now" always agree.
///
/// ```
/// use smtp_relay::clock::{Clock, TokioClock};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let clock = TokioClock::new();
/// let before = clock.now();
/// assert!(clock.now() >= before);
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    system: SystemTime,
    instant: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads the system time now and follows tokio's clock.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock that says `start` now and follows tokio's clock.
    pub fn starting_at(start: SystemTime) -> Self {
        Self {
            system: start,
            instant: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.system + tokio::time::Instant::now().duration_since(self.instant)
    }

    fn sleep_until(&self, deadline: SystemTime) -> BoxFuture<'_, ()> {
        let wait = until(self.now(), deadline);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that moves only when told to ([`ManualClock::advance`]), for
/// tests that drive retries and expiry against real sockets.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use smtp_relay::clock::{Clock, ManualClock};
/// let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000));
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(1_060));
/// ```
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
    changed: watch::Sender<SystemTime>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Mutex::new(start),
            changed: watch::Sender::new(start),
        }
    }

    /// Moves the clock forward by `by`, waking every sleeper whose time
    /// came.
    pub fn advance(&self, by: Duration) {
        let now = {
            let mut now = self
                .now
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *now += by;
            *now
        };
        self.changed.send_replace(now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sleep_until(&self, deadline: SystemTime) -> BoxFuture<'_, ()> {
        let mut receiver = self.changed.subscribe();
        Box::pin(async move {
            while *receiver.borrow_and_update() < deadline {
                if receiver.changed().await.is_err() {
                    // The clock is gone: it will never get there.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

/// How long from `now` until `then` (zero if it has passed).
pub(crate) fn until(now: SystemTime, then: SystemTime) -> Duration {
    then.duration_since(now).unwrap_or(Duration::ZERO)
}
