//! AUTH failure accounting per client network, shared by all connections
//! (Postfix's anvil, Dovecot's auth penalty).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Default failures from one client network before it is refused.
pub const DEFAULT_AUTH_THROTTLE_FAILURES: u32 = 10;
/// Default time a client network is refused after too many failures.
pub const DEFAULT_AUTH_THROTTLE_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Default time after its last failure when a network's count is
/// forgotten.
pub const DEFAULT_AUTH_THROTTLE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Default delay before the first failure reply; it doubles with each
/// further failure.
pub const DEFAULT_AUTH_THROTTLE_DELAY: Duration = Duration::from_millis(250);
/// Default cap on that delay.
pub const DEFAULT_AUTH_THROTTLE_DELAY_MAX: Duration = Duration::from_secs(4);
/// Default number of client networks tracked at once; past it the one
/// whose last failure is oldest is forgotten.
pub const DEFAULT_AUTH_THROTTLE_TRACKED: usize = 65_536;

/// Failed-`AUTH` accounting per client network, shared by every connection
/// of a server: a plain struct, set the fields you need and take the rest
/// from [`Default`]. On by default.
///
/// A network is the client's IPv4 address, or the /64 of its IPv6 address
/// (one subscriber usually holds a whole /64). IPv4-mapped IPv6 addresses
/// (`::ffff:192.0.2.1`, as a dual-stack listener sees IPv4 clients) count
/// as the IPv4 address. The PROXY protocol's client address is used when
/// present.
///
/// Each failure from a network delays the failure reply: [`delay`] for
/// the first, doubling up to [`delay_max`]. After [`max_failures`] the
/// network's `AUTH` attempts are refused with `454 4.7.0` for [`lockout`],
/// correct password or not (attempts during the refusal are delayed like
/// failures but do not extend it). A network's count is forgotten
/// [`window`] after its last failure (until then, one more failure after a
/// refusal ended starts another); a successful login does not reset it, so
/// a valid account cannot be used to launder guesses.
///
/// The per-connection limit ([`Limits::max_auth_failures`]) still closes a
/// connection after its own failures.
///
/// [`delay`]: AuthThrottle::delay
/// [`delay_max`]: AuthThrottle::delay_max
/// [`max_failures`]: AuthThrottle::max_failures
/// [`lockout`]: AuthThrottle::lockout
/// [`window`]: AuthThrottle::window
/// [`Limits::max_auth_failures`]: crate::Limits::max_auth_failures
///
/// ```
/// use std::time::Duration;
/// use smtp_server::AuthThrottle;
/// let strict = AuthThrottle {
///     max_failures: 5,
///     lockout: Duration::from_secs(3600),
///     ..AuthThrottle::default()
/// };
/// assert!(strict.enabled);
/// let off = AuthThrottle::disabled();
/// assert!(!off.enabled);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthThrottle {
    /// Whether failures are counted at all. Default on.
    pub enabled: bool,
    /// Failures from one network before it is refused. Default
    /// [`DEFAULT_AUTH_THROTTLE_FAILURES`]; floor 1.
    pub max_failures: u32,
    /// How long a network is refused after that. Default
    /// [`DEFAULT_AUTH_THROTTLE_LOCKOUT`].
    pub lockout: Duration,
    /// A network's count is forgotten this long after its last failure.
    /// Default [`DEFAULT_AUTH_THROTTLE_WINDOW`].
    pub window: Duration,
    /// Delay before the first failure reply. Default
    /// [`DEFAULT_AUTH_THROTTLE_DELAY`]; zero turns delays off.
    pub delay: Duration,
    /// Cap on the delay. Default [`DEFAULT_AUTH_THROTTLE_DELAY_MAX`].
    pub delay_max: Duration,
    /// Networks tracked at once; memory stays bounded whatever the number
    /// of attacking addresses. Default [`DEFAULT_AUTH_THROTTLE_TRACKED`];
    /// floor 1.
    pub max_tracked: usize,
}

impl Default for AuthThrottle {
    fn default() -> Self {
        Self {
            enabled: true,
            max_failures: DEFAULT_AUTH_THROTTLE_FAILURES,
            lockout: DEFAULT_AUTH_THROTTLE_LOCKOUT,
            window: DEFAULT_AUTH_THROTTLE_WINDOW,
            delay: DEFAULT_AUTH_THROTTLE_DELAY,
            delay_max: DEFAULT_AUTH_THROTTLE_DELAY_MAX,
            max_tracked: DEFAULT_AUTH_THROTTLE_TRACKED,
        }
    }
}

impl AuthThrottle {
    /// No accounting: only the per-connection limit applies.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }
}

/// The key failures are counted under: the IPv4 address, or the IPv6 /64,
/// after turning IPv4-mapped addresses back into IPv4.
pub(crate) fn network_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

/// The shared table behind an [`AuthThrottle`].
#[derive(Debug)]
pub(crate) struct Throttle {
    config: AuthThrottle,
    table: Mutex<HashMap<IpAddr, Entry>>,
}

impl Throttle {
    pub(crate) fn new(config: AuthThrottle) -> Self {
        Self {
            config: AuthThrottle {
                max_failures: config.max_failures.max(1),
                max_tracked: config.max_tracked.max(1),
                ..config
            },
            table: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `ip`'s network is refused now.
    pub(crate) fn is_locked(&self, ip: IpAddr) -> bool {
        if !self.config.enabled {
            return false;
        }
        let now = Instant::now();
        let key = network_key(ip);
        let mut table = self.table();
        match table.get(&key) {
            Some(entry) if entry.locked_until.is_some_and(|until| until > now) => true,
            Some(entry) if self.expired(entry, now) => {
                table.remove(&key);
                false
            }
            _ => false,
        }
    }

    fn expired(&self, entry: &Entry, now: Instant) -> bool {
        let locked = entry.locked_until.is_some_and(|until| until > now);
        !locked && now.saturating_duration_since(entry.last_failure) >= self.config.window
    }

    /// Counts a failure from `ip`; returns how long to wait before the
    /// failure reply.
    pub(crate) fn record_failure(&self, ip: IpAddr) -> Duration {
        if !self.config.enabled {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let key = network_key(ip);
        let mut table = self.table();
        if !table.contains_key(&key) && table.len() >= self.config.max_tracked {
            table.retain(|_, entry| !self.expired(entry, now));
            if table.len() >= self.config.max_tracked
                && let Some(oldest) = table
                    .iter()
                    .min_by_key(|(_, entry)| entry.last_failure)
                    .map(|(key, _)| *key)
            {
                table.remove(&oldest);
            }
        }
        let entry = table.entry(key).or_insert(Entry {
            failures: 0,
            last_failure: now,
            locked_until: None,
        });
        if self.expired(entry, now) {
            *entry = Entry {
                failures: 0,
                last_failure: now,
                locked_until: None,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        let locked = entry.locked_until.is_some_and(|until| until > now);
        // The refusal period runs from the failure that reached the limit;
        // attempts during it do not extend it.
        if entry.failures >= self.config.max_failures && !locked {
            entry.locked_until = now.checked_add(self.config.lockout);
            tracing::warn!(network = %key, failures = entry.failures, "AUTH refused for a while");
        }
        let doublings = entry.failures.saturating_sub(1).min(16);
        self.config
            .delay
            .saturating_mul(1u32 << doublings)
            .min(self.config.delay_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_ipv4_addresses_and_ipv6_slash_64s() {
        let key = |text: &str| network_key(text.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff::1"), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_delay_then_lock_then_are_forgotten() {
        let throttle = Throttle::new(AuthThrottle {
            max_failures: 3,
            lockout: Duration::from_secs(60),
            window: Duration::from_secs(600),
            delay: Duration::from_millis(100),
            delay_max: Duration::from_millis(250),
            ..AuthThrottle::default()
        });
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(!throttle.is_locked(ip));
        assert_eq!(throttle.record_failure(ip), Duration::from_millis(100));
        assert_eq!(
            throttle.record_failure(neighbour),
            Duration::from_millis(200)
        );
        assert!(!throttle.is_locked(ip));
        assert_eq!(throttle.record_failure(ip), Duration::from_millis(250));
        assert!(throttle.is_locked(neighbour), "the whole /64 is refused");
        assert!(!throttle.is_locked("192.0.2.1".parse().unwrap()));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!throttle.is_locked(ip), "the lockout ends");
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(
            throttle.record_failure(ip),
            Duration::from_millis(100),
            "the count was forgotten"
        );
    }

    #[test]
    fn the_table_stays_bounded() {
        let throttle = Throttle::new(AuthThrottle {
            max_tracked: 8,
            ..AuthThrottle::default()
        });
        for last in 0..100u8 {
            throttle.record_failure(IpAddr::from([198, 51, 100, last]));
        }
        assert_eq!(throttle.table().len(), 8);
    }

    #[test]
    fn disabled_counts_nothing() {
        let throttle = Throttle::new(AuthThrottle::disabled());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..100 {
            assert_eq!(throttle.record_failure(ip), Duration::ZERO);
        }
        assert!(!throttle.is_locked(ip));
    }
}
