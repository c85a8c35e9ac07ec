//! Deciding which rule fires: counters, rate windows, the seeded
//! generator, greylisting memory, and the connections' wire controls.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use smtp_proto::{EnhancedCode, Reply};
use tokio::time::Instant;

use super::Faults;
use super::rules::{Action, Condition, RateScope, Rule, Stage, Then, default_text};
use super::wire::WireControl;

/// The longest window a rate can have; older message times are forgotten.
const LONGEST_WINDOW: Duration = Duration::from_secs(3600);
/// Past this many remembered clients or greylisting triples, entries older
/// than [`LONGEST_WINDOW`] are dropped, so a long-running server's memory
/// stays bounded by its traffic of the last hour.
const SWEEP_ABOVE: usize = 10_000;

/// A rule that fired, as reported to the observer set with
/// [`FaultEngine::on_fire`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FiredRule {
    /// The session it fired in.
    pub session_id: String,
    /// The stage it fired at.
    pub stage: Stage,
    /// The rule's line in its source; 0 for a built-in magic address.
    pub line: usize,
    /// The rule as written (for a magic address: `magic <address>`).
    pub text: String,
}

impl fmt::Display for FiredRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "fault at {}: {}", self.stage, self.text)
        } else {
            write!(
                f,
                "fault at {}: rule on line {}: {}",
                self.stage, self.line, self.text
            )
        }
    }
}

type Observer = Arc<dyn Fn(&FiredRule) + Send + Sync>;

/// One live connection, as the engine knows it.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) id: String,
    pub(crate) number: u64,
    pub(crate) client: IpAddr,
    pub(crate) wire: Arc<WireControl>,
    /// When each message of this connection started (at `MAIL`).
    times: Mutex<VecDeque<Instant>>,
}

/// What is known when a rule is checked.
#[derive(Debug)]
pub(crate) struct Event<'a> {
    pub(crate) stage: Stage,
    pub(crate) connection: &'a Connection,
    /// The server-wide number of the message under way.
    pub(crate) message: Option<u64>,
    /// The reverse-path (`""` for `<>`), once `MAIL` was given.
    pub(crate) from: Option<&'a str>,
    /// The recipient at `rcpt`, or every accepted recipient later.
    pub(crate) to: &'a [String],
}

/// A rule that fired and the action to take.
#[derive(Debug, Clone)]
pub(crate) struct Decision {
    pub(crate) action: Action,
    pub(crate) fired: FiredRule,
}

#[derive(Debug, Default)]
struct State {
    server_times: VecDeque<Instant>,
    client_times: HashMap<IpAddr, VecDeque<Instant>>,
    greylist: HashMap<(IpAddr, String, String), Instant>,
    rng: u64,
}

struct Shared {
    faults: RwLock<Arc<Faults>>,
    connections_seen: AtomicU64,
    messages_seen: AtomicU64,
    state: Mutex<State>,
    connections: Mutex<HashMap<String, Arc<Connection>>>,
    observer: RwLock<Option<Observer>>,
}

/// The fault engine: rules plus what it remembers (connection and message
/// counts, rate windows, greylisting, the seeded generator). Cheap to
/// clone; clones share everything.
///
/// [`FaultEngine::replace`] swaps the rules while the server runs (what
/// `ferry serve` does on `SIGHUP`); the counters and the greylist carry
/// over.
#[derive(Clone)]
pub struct FaultEngine {
    shared: Arc<Shared>,
}

impl fmt::Debug for FaultEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultEngine")
            .field("faults", &**read(&self.shared.faults))
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match lock.read() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// splitmix64: small, fast, and the same sequence for the same seed.
fn next_random(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // 53 random bits as a fraction in [0, 1).
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn count_within(times: &VecDeque<Instant>, window: Duration, now: Instant) -> u64 {
    times
        .iter()
        .filter(|&&at| now.saturating_duration_since(at) < window)
        .count() as u64
}

fn prune(times: &mut VecDeque<Instant>, now: Instant) {
    while times
        .front()
        .is_some_and(|&at| now.saturating_duration_since(at) >= LONGEST_WINDOW)
    {
        times.pop_front();
    }
}

impl FaultEngine {
    /// An engine running `faults`.
    pub fn new(faults: Faults) -> Self {
        let seed = faults.rules.seed.unwrap_or(0);
        Self {
            shared: Arc::new(Shared {
                faults: RwLock::new(Arc::new(faults)),
                connections_seen: AtomicU64::new(0),
                messages_seen: AtomicU64::new(0),
                state: Mutex::new(State {
                    rng: seed,
                    ..State::default()
                }),
                connections: Mutex::new(HashMap::new()),
                observer: RwLock::new(None),
            }),
        }
    }

    /// The rules in force.
    pub fn faults(&self) -> Faults {
        Faults::clone(&read(&self.shared.faults))
    }

    /// Replaces the rules for every later check. A new `seed` restarts the
    /// generator; counters and greylisting memory are kept.
    pub fn replace(&self, faults: Faults) {
        if let Some(seed) = faults.rules.seed {
            lock(&self.shared.state).rng = seed;
        }
        let faults = Arc::new(faults);
        match self.shared.faults.write() {
            Ok(mut guard) => *guard = faults,
            Err(poisoned) => *poisoned.into_inner() = faults,
        }
    }

    /// Calls `observer` each time a rule fires (for transcripts and logs).
    /// Replaces any earlier observer.
    pub fn on_fire(&self, observer: impl Fn(&FiredRule) + Send + Sync + 'static) {
        let observer: Observer = Arc::new(observer);
        match self.shared.observer.write() {
            Ok(mut guard) => *guard = Some(observer),
            Err(poisoned) => *poisoned.into_inner() = Some(observer),
        }
    }

    /// Registers the wire control of a connection about to be served.
    pub(crate) fn attach(&self, id: &str) -> Arc<WireControl> {
        let wire = Arc::new(WireControl::default());
        let number = self.shared.connections_seen.fetch_add(1, Ordering::Relaxed) + 1;
        let connection = Connection {
            id: id.to_owned(),
            number,
            // Set for real when the session opens.
            client: IpAddr::from([0, 0, 0, 0]),
            wire: Arc::clone(&wire),
            times: Mutex::new(VecDeque::new()),
        };
        lock(&self.shared.connections).insert(id.to_owned(), Arc::new(connection));
        wire
    }

    /// The connection `id`, with its client address; counted as a new
    /// connection if it was not attached (served without the fault
    /// stream, so the wire actions have no effect on it).
    pub(crate) fn open(&self, id: &str, client: IpAddr) -> Arc<Connection> {
        let mut connections = lock(&self.shared.connections);
        let existing = connections.get(id).map(|c| (c.number, Arc::clone(&c.wire)));
        let (number, wire) = match existing {
            Some(found) => found,
            None => (
                self.shared.connections_seen.fetch_add(1, Ordering::Relaxed) + 1,
                Arc::new(WireControl::default()),
            ),
        };
        let connection = Arc::new(Connection {
            id: id.to_owned(),
            number,
            client,
            wire,
            times: Mutex::new(VecDeque::new()),
        });
        connections.insert(id.to_owned(), Arc::clone(&connection));
        connection
    }

    /// The open connection `id`, if any.
    pub(crate) fn connection(&self, id: &str) -> Option<Arc<Connection>> {
        lock(&self.shared.connections).get(id).cloned()
    }

    /// Forgets a connection that ended.
    pub(crate) fn detach(&self, id: &str) {
        lock(&self.shared.connections).remove(id);
    }

    /// How many connections the engine knows as open.
    #[cfg(test)]
    pub(crate) fn open_connections(&self) -> usize {
        lock(&self.shared.connections).len()
    }

    /// Counts a new message (at `MAIL`) and returns its server-wide number.
    /// Message times are kept only while a rule has a rate, so a server
    /// without one keeps no per-message memory.
    pub(crate) fn note_message(&self, connection: &Connection) -> u64 {
        let number = self.shared.messages_seen.fetch_add(1, Ordering::Relaxed) + 1;
        if !read(&self.shared.faults).uses_rates() {
            return number;
        }
        let now = Instant::now();
        let mut state = lock(&self.shared.state);
        if state.client_times.len() > SWEEP_ABOVE {
            state.client_times.retain(|_, times| {
                prune(times, now);
                !times.is_empty()
            });
        }
        prune(&mut state.server_times, now);
        state.server_times.push_back(now);
        let client = state.client_times.entry(connection.client).or_default();
        prune(client, now);
        client.push_back(now);
        drop(state);
        let mut times = lock(&connection.times);
        prune(&mut times, now);
        times.push_back(now);
        number
    }

    /// The first rule (or magic address) that fires for `event`.
    pub(crate) fn decide(&self, event: &Event<'_>) -> Option<Decision> {
        let faults = Arc::clone(&read(&self.shared.faults));
        if faults.rules.rules.is_empty() && !faults.rules.magic {
            return None;
        }
        let decision = faults
            .rules
            .rules
            .iter()
            .filter(|rule| rule.stage == event.stage)
            .find(|rule| self.holds(rule, event))
            .map(|rule| Decision {
                action: rule.action.clone(),
                fired: FiredRule {
                    session_id: event.connection.id.clone(),
                    stage: event.stage,
                    line: rule.line,
                    text: rule.text.clone(),
                },
            })
            .or_else(|| {
                faults
                    .rules
                    .magic
                    .then(|| magic(event))
                    .flatten()
                    .map(|(address, action)| Decision {
                        action,
                        fired: FiredRule {
                            session_id: event.connection.id.clone(),
                            stage: event.stage,
                            line: 0,
                            text: format!("magic {address}"),
                        },
                    })
            })?;
        let observer = read(&self.shared.observer).clone();
        if let Some(observer) = observer {
            observer(&decision.fired);
        }
        tracing::info!(session = %decision.fired.session_id, "{}", decision.fired);
        Some(decision)
    }

    fn holds(&self, rule: &Rule, event: &Event<'_>) -> bool {
        let now = Instant::now();
        // Chance is drawn last, only when everything else holds, so the
        // sequence of draws depends only on the traffic the rule sees.
        let mut chance = None;
        for condition in &rule.conditions {
            let holds = match condition {
                Condition::From(glob) => event.from.is_some_and(|from| glob.matches(from)),
                Condition::To(glob) => event.to.iter().any(|to| glob.matches(to)),
                Condition::Client(glob) => glob.matches(&event.connection.client.to_string()),
                Condition::Message(range) => event.message.is_some_and(|n| range.contains(n)),
                Condition::Connection(range) => range.contains(event.connection.number),
                Condition::Rate {
                    limit,
                    window,
                    scope,
                } => {
                    let count = match scope {
                        RateScope::Connection => {
                            count_within(&lock(&event.connection.times), *window, now)
                        }
                        RateScope::Client => {
                            let state = lock(&self.shared.state);
                            state
                                .client_times
                                .get(&event.connection.client)
                                .map_or(0, |times| count_within(times, *window, now))
                        }
                        RateScope::Server => {
                            count_within(&lock(&self.shared.state).server_times, *window, now)
                        }
                    };
                    count > *limit
                }
                Condition::Chance(probability) => {
                    chance = Some(*probability);
                    true
                }
            };
            if !holds {
                return false;
            }
        }
        match chance {
            Some(probability) => next_random(&mut lock(&self.shared.state).rng) < probability,
            None => true,
        }
    }

    /// Whether a greylisted attempt may pass: the same client, sender and
    /// recipients came first at least `retry_after` ago. The first attempt
    /// is remembered.
    pub(crate) fn greylist_passes(&self, event: &Event<'_>, retry_after: Duration) -> bool {
        let key = (
            event.connection.client,
            event.from.unwrap_or_default().to_lowercase(),
            event.to.join(",").to_lowercase(),
        );
        let now = Instant::now();
        let mut state = lock(&self.shared.state);
        if state.greylist.len() > SWEEP_ABOVE {
            state
                .greylist
                .retain(|_, first| now.saturating_duration_since(*first) < LONGEST_WINDOW);
        }
        let first = *state.greylist.entry(key).or_insert(now);
        now.saturating_duration_since(first) >= retry_after
    }
}

/// A built-in magic address: a local part that is a reply code (`550@`,
/// `451-x@`, `421+y@`) or `slow-DURATION` (`slow-5s@`), for the sender at
/// `mail` and the recipient at `rcpt`.
fn magic(event: &Event<'_>) -> Option<(String, Action)> {
    let address = match event.stage {
        Stage::Mail => event.from?,
        Stage::Rcpt => event.to.first()?,
        _ => return None,
    };
    let local = address.rsplit_once('@')?.0;
    let word = local.split(['-', '+']).next().unwrap_or(local);
    let action = if let Ok(code) = word.parse::<u16>() {
        if !(400..=599).contains(&code) || word.len() != 3 {
            return None;
        }
        Action {
            delay: None,
            drip: None,
            then: Then::Reply(magic_reply(code)),
        }
    } else if word.eq_ignore_ascii_case("slow") {
        let rest = local.get(5..)?;
        let duration = rest.split(['-', '+']).next()?;
        Action {
            delay: Some(super::rules::parse_duration(duration)?),
            drip: None,
            then: Then::Proceed,
        }
    } else {
        return None;
    };
    Some((address.to_owned(), action))
}

fn magic_reply(code: u16) -> Reply {
    let (subject, detail) = match code {
        421 => (3, 2),
        450 => (2, 1),
        451 => (3, 0),
        452 => (2, 2),
        550 => (1, 1),
        551 => (1, 6),
        552 => (2, 2),
        553 => (1, 3),
        554 => (7, 1),
        _ => (0, 0),
    };
    // Two-digit codes are excluded by the caller; the class is one digit.
    let class = u8::try_from(code / 100).unwrap_or(5);
    Reply::new(
        code,
        EnhancedCode::new(class, subject, detail),
        format!("{} (magic address)", default_text(code)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(source: &str) -> FaultEngine {
        FaultEngine::new(Faults::parse(source).unwrap())
    }

    fn event<'a>(
        stage: Stage,
        connection: &'a Connection,
        from: Option<&'a str>,
        to: &'a [String],
    ) -> Event<'a> {
        Event {
            stage,
            connection,
            message: None,
            from,
            to,
        }
    }

    #[test]
    fn the_first_matching_rule_fires_and_is_reported() {
        let engine = engine("rcpt to \"*@a.test\" reply 550\nrcpt reply 451\n");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        engine.on_fire(move |fired| lock(&log).push(fired.to_string()));
        engine.attach("s1");
        let connection = engine.open("s1", IpAddr::from([127, 0, 0, 1]));
        let to = ["bob@a.test".to_owned()];
        let first = engine.decide(&event(Stage::Rcpt, &connection, Some(""), &to));
        assert_eq!(first.unwrap().fired.line, 1);
        let to = ["bob@b.test".to_owned()];
        let second = engine.decide(&event(Stage::Rcpt, &connection, Some(""), &to));
        assert_eq!(second.unwrap().fired.line, 2);
        assert!(
            engine
                .decide(&event(Stage::Mail, &connection, Some(""), &[]))
                .is_none()
        );
        assert_eq!(
            *lock(&seen),
            [
                "fault at rcpt: rule on line 1: rcpt to \"*@a.test\" reply 550",
                "fault at rcpt: rule on line 2: rcpt reply 451"
            ]
        );
    }

    #[test]
    fn chance_is_reproducible_with_a_seed() {
        let draws = |seed: u64| {
            let engine = engine(&format!("seed {seed}\nmail chance 30% reply 451\n"));
            let connection = engine.open("s", IpAddr::from([127, 0, 0, 1]));
            (0..200)
                .map(|_| {
                    engine
                        .decide(&event(Stage::Mail, &connection, Some("a@b"), &[]))
                        .is_some()
                })
                .collect::<Vec<bool>>()
        };
        assert_eq!(draws(42), draws(42));
        assert_ne!(draws(42), draws(43));
        let fired = draws(42).iter().filter(|&&fired| fired).count();
        assert!((40..=80).contains(&fired), "{fired} of 200 at 30%");
    }

    #[tokio::test(start_paused = true)]
    async fn rates_count_messages_in_a_sliding_window() {
        let engine = engine("mail rate 2/min per client reply 450 4.7.1 \"slow down\"");
        let one = engine.open("one", IpAddr::from([127, 0, 0, 1]));
        let two = engine.open("two", IpAddr::from([127, 0, 0, 1]));
        let other = engine.open("three", IpAddr::from([127, 0, 0, 2]));
        let mail = |connection: &Connection| {
            let number = engine.note_message(connection);
            let mut event = event(Stage::Mail, connection, Some("a@b"), &[]);
            event.message = Some(number);
            engine.decide(&event).is_some()
        };
        assert!(!mail(&one));
        assert!(!mail(&two));
        assert!(mail(&one), "the third message in a minute from one client");
        assert!(!mail(&other), "another client has its own count");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!mail(&two), "the window slid past");
    }

    #[test]
    fn a_server_wide_rate_and_a_client_glob() {
        let engine = engine(
            "mail client \"127.0.0.2\" reply 550 5.7.1 \"not you\"\n\
             mail rate 2/min per server reply 421 4.7.0 \"busy\"",
        );
        let one = engine.open("one", IpAddr::from([127, 0, 0, 1]));
        let two = engine.open("two", IpAddr::from([127, 0, 0, 3]));
        let other = engine.open("three", IpAddr::from([127, 0, 0, 2]));
        let mail = |connection: &Connection| {
            let number = engine.note_message(connection);
            let mut event = event(Stage::Mail, connection, Some("a@b"), &[]);
            event.message = Some(number);
            engine.decide(&event).map(|decision| decision.fired.line)
        };
        assert_eq!(mail(&other), Some(1));
        assert_eq!(mail(&one), None);
        assert_eq!(mail(&two), Some(2), "the third message on the server");
    }

    #[tokio::test(start_paused = true)]
    async fn greylisting_accepts_a_retry_after_the_delay() {
        let engine = engine("rcpt greylist 10s");
        let connection = engine.open("s", IpAddr::from([127, 0, 0, 1]));
        let to = ["bob@example.com".to_owned()];
        let attempt = event(Stage::Rcpt, &connection, Some("a@b"), &to);
        let retry = Duration::from_secs(10);
        assert!(!engine.greylist_passes(&attempt, retry));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!engine.greylist_passes(&attempt, retry), "too early");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(engine.greylist_passes(&attempt, retry));
        let to = ["carol@example.com".to_owned()];
        let other = event(Stage::Rcpt, &connection, Some("a@b"), &to);
        assert!(!engine.greylist_passes(&other, retry), "a new triple");
    }

    #[test]
    fn magic_addresses_name_their_fault() {
        let engine = FaultEngine::new(Faults::magic());
        let connection = engine.open("s", IpAddr::from([127, 0, 0, 1]));
        let reply_of = |address: &str| {
            let to = [address.to_owned()];
            engine
                .decide(&event(Stage::Rcpt, &connection, Some(""), &to))
                .map(|decision| decision.action)
        };
        let Some(Action {
            then: Then::Reply(reply),
            ..
        }) = reply_of("550@example.com")
        else {
            panic!("550@ did not fire");
        };
        assert_eq!(
            reply.to_string(),
            "550 5.1.1 Requested action not taken: mailbox unavailable (magic address)"
        );
        assert!(matches!(
            reply_of("451-again@example.com").map(|a| a.then),
            Some(Then::Reply(reply)) if reply.code() == 451
        ));
        assert_eq!(
            reply_of("slow-5s@example.com").map(|a| a.delay),
            Some(Some(Duration::from_secs(5)))
        );
        assert_eq!(reply_of("bob@example.com"), None);
        assert_eq!(reply_of("250@example.com"), None);
        assert_eq!(reply_of("5500@example.com"), None);
    }
}
