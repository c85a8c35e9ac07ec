//! Connection counting: a total cap and a cap per client IP address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

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

    /// Takes one slot for `ip`, if that address has one free.
    pub(crate) fn acquire_ip(&self, ip: IpAddr) -> Option<Permit> {
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
}
