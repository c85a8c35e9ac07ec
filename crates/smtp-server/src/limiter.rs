//! Connection counting: a total cap, a cap per client IP address, the
//! load that stress mode watches, and the back-off of a failing accept.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// The number of connections being served, and whether that is at or
/// above the stress high-water mark. Sessions read it to choose their
/// timeouts and limits, and wait on it to shorten a wait already begun.
/// Cheap to clone; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    inner: Arc<LoadInner>,
}

#[derive(Debug)]
struct LoadInner {
    open: AtomicUsize,
    /// The high-water mark; `None` when stress mode is off.
    threshold: Option<usize>,
    stressed: watch::Sender<bool>,
}

/// One counted connection; dropping it uncounts it.
#[derive(Debug)]
pub(crate) struct LoadGuard {
    load: Load,
}

impl Default for Load {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Load {
    /// A load gauge with this high-water mark (`None`: never stressed).
    pub(crate) fn new(threshold: Option<usize>) -> Self {
        Self {
            inner: Arc::new(LoadInner {
                open: AtomicUsize::new(0),
                threshold,
                stressed: watch::Sender::new(false),
            }),
        }
    }

    /// Counts one more connection until the guard is dropped; returns the
    /// guard and whether this connection put the server under stress.
    pub(crate) fn enter(&self) -> (LoadGuard, bool) {
        self.inner.open.fetch_add(1, Ordering::Relaxed);
        let began = self.update();
        (LoadGuard { load: self.clone() }, began)
    }

    /// Connections being served now.
    pub(crate) fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// True while at least the high-water mark of connections is open.
    pub(crate) fn stressed(&self) -> bool {
        self.inner
            .threshold
            .is_some_and(|threshold| self.open() >= threshold)
    }

    /// Completes when the server is under stress; never when stress mode
    /// is off.
    pub(crate) async fn until_stressed(&self) {
        let mut receiver = self.inner.stressed.subscribe();
        if self.inner.threshold.is_none() || receiver.wait_for(|on| *on).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Publishes the stress state; true when stress has just begun.
    fn update(&self) -> bool {
        let now = self.stressed();
        let mut began = false;
        self.inner.stressed.send_if_modified(|on| {
            if *on == now {
                return false;
            }
            began = now;
            *on = now;
            true
        });
        began
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.load.inner.open.fetch_sub(1, Ordering::Relaxed);
        if self.load.inner.threshold.is_some() {
            self.load.update();
        }
    }
}

/// Counts open connections. Cheap to clone; clones share the counts.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Permit {
    inner: Arc<Inner>,
    ip: Option<IpAddr>,
}

impl ConnectionLimiter {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_total,
                max_per_ip,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Takes one slot of the total, if any is free.
    pub(crate) fn acquire_total(&self) -> Option<Permit> {
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if state.total >= self.inner.max_total {
            return None;
        }
        state.total += 1;
        Some(Permit {
            inner: Arc::clone(&self.inner),
            ip: None,
        })
    }

    /// Takes one slot for `ip`, if that address has one free. An
    /// IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, how a dual-stack
    /// listener sees an IPv4 peer) counts as the IPv4 address it maps.
    pub(crate) fn acquire_ip(&self, ip: IpAddr) -> Option<Permit> {
        let ip = ip.to_canonical();
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = state.per_ip.entry(ip).or_insert(0);
        if *count >= self.inner.max_per_ip {
            return None;
        }
        *count += 1;
        Some(Permit {
            inner: Arc::clone(&self.inner),
            ip: Some(ip),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match self.ip {
            None => state.total = state.total.saturating_sub(1),
            Some(ip) => {
                if let Some(count) = state.per_ip.get_mut(&ip) {
                    *count -= 1;
                    if *count == 0 {
                        state.per_ip.remove(&ip);
                    }
                }
            }
        }
    }
}

/// First pause after a failed `accept` (for example when out of file
/// descriptors); it doubles while accept keeps failing, up to
/// [`ACCEPT_ERROR_PAUSE_MAX`], so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause between two failed `accept` calls.
const ACCEPT_ERROR_PAUSE_MAX: Duration = Duration::from_secs(1);
/// While accept keeps failing, at most one warning per this interval.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Failed `accept` calls in a row: how long to pause and when to log.
#[derive(Debug, Default)]
pub(crate) struct AcceptErrors {
    /// Failures since the last success.
    streak: u64,
    pause: Duration,
    /// When the last warning was logged, and the streak then.
    logged: Option<(tokio::time::Instant, u64)>,
}

impl AcceptErrors {
    pub(crate) fn succeeded(&mut self) {
        if self.streak > 0 {
            tracing::info!(failures = self.streak, "accept works again");
        }
        *self = Self::default();
    }

    /// Records a failure; returns how long to pause before the next
    /// accept, or `None` when the error concerned only that one connection.
    pub(crate) fn failed(&mut self, error: &io::Error) -> Option<Duration> {
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::Interrupted
        ) {
            tracing::debug!(%error, "accept: connection lost before it was accepted");
            return None;
        }
        self.streak += 1;
        let now = tokio::time::Instant::now();
        let due = self
            .logged
            .is_none_or(|(at, _)| now.duration_since(at) >= ACCEPT_ERROR_LOG_INTERVAL);
        if due {
            match self.logged {
                None => tracing::warn!(%error, "accept failed; backing off until it works again"),
                Some((_, before)) => {
                    tracing::warn!(%error, failures = self.streak - before, "accept still failing");
                }
            }
            self.logged = Some((now, self.streak));
        }
        self.pause = if self.pause.is_zero() {
            ACCEPT_ERROR_PAUSE
        } else {
            (self.pause * 2).min(ACCEPT_ERROR_PAUSE_MAX)
        };
        Some(self.pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_and_per_ip_caps() {
        let limiter = ConnectionLimiter::new(2, 1);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t1 = limiter.acquire_total().unwrap();
        let _t2 = limiter.acquire_total().unwrap();
        assert!(limiter.acquire_total().is_none());
        drop(t1);
        assert!(limiter.acquire_total().is_some());
        let pa = limiter.acquire_ip(a).unwrap();
        assert!(limiter.acquire_ip(a).is_none());
        let _pb = limiter.acquire_ip(b).unwrap();
        drop(pa);
        assert!(limiter.acquire_ip(a).is_some());
        let state = limiter.inner.state.lock().unwrap();
        assert_eq!(state.per_ip.len(), 1, "freed addresses are forgotten");
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let limiter = ConnectionLimiter::new(10, 1);
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let _held = limiter.acquire_ip(v4).unwrap();
        assert!(limiter.acquire_ip(mapped).is_none());
    }

    #[test]
    fn load_counts_open_connections_and_stress() {
        let load = Load::new(Some(2));
        let (a, began) = load.enter();
        assert!(!began && !load.stressed());
        let (b, began) = load.enter();
        assert!(began && load.stressed());
        assert_eq!(load.open(), 2);
        let (_c, began) = load.enter();
        assert!(!began, "stress began only once");
        drop(a);
        drop(b);
        assert_eq!(load.open(), 1);
        assert!(!load.stressed());
        let off = Load::new(None);
        let _held = (off.enter(), off.enter());
        assert!(!off.stressed());
    }
}
