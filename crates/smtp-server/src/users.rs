//! [`StaticUsers`]: an [`Authenticator`] over a fixed set of accounts.
// Without argon2 only plain passwords remain, and the hash verifier is idle.
#![cfg_attr(not(feature = "argon2"), allow(dead_code, unused_imports))]

use std::collections::HashMap;
use std::fmt;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_proto::EnhancedCode;
use smtp_proto::sasl::Credentials;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout_at};

use crate::auth::{Authenticator, invalid_credentials};
use crate::error::SmtpError;
use crate::session::{ConnectionInfo, Identity};
use crate::throttle::network_key;

/// Default cap on a users file: 16 MiB, room for about 100,000 accounts.
pub const DEFAULT_USERS_FILE_MAX: u64 = 16 * 1024 * 1024;
/// Default cap on one line of a users file: a name and a PHC string take a
/// few hundred octets.
pub const DEFAULT_USERS_LINE_MAX: usize = 4096;
/// Default largest argon2 memory cost accepted at load, in KiB: 256 MiB.
/// The usual recommendations are 19 MiB (OWASP) and 64 MiB (RFC 9106
/// §4's second choice). At most [`PasswordLimits::max_concurrent`]
/// verifications run at once, so this times that bounds the memory AUTH can
/// take.
pub const DEFAULT_ARGON2_MAX_MEMORY_KIB: u32 = 256 * 1024;
/// Default largest argon2 iteration count (`t`) accepted at load.
pub const DEFAULT_ARGON2_MAX_ITERATIONS: u32 = 16;
/// Default largest argon2 parallelism (`p`) accepted at load.
pub const DEFAULT_ARGON2_MAX_PARALLELISM: u32 = 16;
/// Default longest wait for a verification slot before `454 4.7.0`.
pub const DEFAULT_VERIFY_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest time one password verification may take before
/// `454 4.7.0`.
pub const DEFAULT_VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds on what loading and checking passwords may cost: a plain struct,
/// set the fields you need and take the rest from [`Default`].
///
/// Password hashing is slow and memory-hungry on purpose (argon2 with the
/// usual 19 MiB per verification). Without a bound, concurrent `AUTH`
/// attempts with wrong passwords exhaust memory and delay every other
/// login; Dovecot runs hashing in a fixed pool of workers for the same
/// reason.
///
/// ```
/// use std::time::Duration;
/// use smtp_server::{PasswordLimits, StaticUsers};
/// let users = StaticUsers::with_limits(PasswordLimits {
///     max_concurrent: 4,
///     verify_timeout: Duration::from_secs(2),
///     ..PasswordLimits::default()
/// });
/// assert!(users.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordLimits {
    /// Verifications running at once, across all connections. Others wait
    /// in a first-come, first-served queue. Default: the number of CPU
    /// cores. Floor 1.
    pub max_concurrent: usize,
    /// Longest wait in that queue; past it the client gets `454 4.7.0`
    /// (RFC 4954 §6, temporary failure). Default
    /// [`DEFAULT_VERIFY_QUEUE_TIMEOUT`].
    pub queue_timeout: Duration,
    /// Longest time one verification may take; past it the client gets
    /// `454 4.7.0`. The computation finishes in the background and keeps
    /// its slot until then, so the memory bound holds. Default
    /// [`DEFAULT_VERIFY_TIMEOUT`].
    pub verify_timeout: Duration,
    /// Largest users file [`StaticUsers::load_file`] reads, in octets.
    /// Default [`DEFAULT_USERS_FILE_MAX`].
    pub max_file_size: u64,
    /// Longest line of a users file, in octets. Default
    /// [`DEFAULT_USERS_LINE_MAX`].
    pub max_line: usize,
    /// Largest argon2 memory cost (`m`, KiB) accepted at load. Default
    /// [`DEFAULT_ARGON2_MAX_MEMORY_KIB`].
    pub argon2_max_memory_kib: u32,
    /// Largest argon2 iteration count (`t`) accepted at load. Default
    /// [`DEFAULT_ARGON2_MAX_ITERATIONS`].
    pub argon2_max_iterations: u32,
    /// Largest argon2 parallelism (`p`) accepted at load. Default
    /// [`DEFAULT_ARGON2_MAX_PARALLELISM`].
    pub argon2_max_parallelism: u32,
}

impl Default for PasswordLimits {
    fn default() -> Self {
        Self {
            max_concurrent: std::thread::available_parallelism().map_or(1, usize::from),
            queue_timeout: DEFAULT_VERIFY_QUEUE_TIMEOUT,
            verify_timeout: DEFAULT_VERIFY_TIMEOUT,
            max_file_size: DEFAULT_USERS_FILE_MAX,
            max_line: DEFAULT_USERS_LINE_MAX,
            argon2_max_memory_kib: DEFAULT_ARGON2_MAX_MEMORY_KIB,
            argon2_max_iterations: DEFAULT_ARGON2_MAX_ITERATIONS,
            argon2_max_parallelism: DEFAULT_ARGON2_MAX_PARALLELISM,
        }
    }
}

/// Why an account could not be added or a users file not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsersError {
    /// The user name is empty.
    EmptyName,
    /// The password is empty.
    EmptyPassword(String),
    /// The same name was added twice.
    Duplicate(String),
    /// The hash is not an argon2 PHC string, or its parameters are out of
    /// bounds (see [`PasswordLimits`]).
    Hash {
        /// The user.
        name: String,
        /// What is wrong with the hash.
        message: String,
    },
    /// The users file could not be read.
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The users file is larger than [`PasswordLimits::max_file_size`].
    FileTooLarge {
        /// The file.
        path: String,
        /// The limit, in octets.
        max: u64,
    },
    /// A line of the users file is wrong.
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

impl fmt::Display for UsersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyName => f.write_str("empty user name"),
            Self::EmptyPassword(name) => write!(f, "user {name:?}: empty password"),
            Self::Duplicate(name) => write!(f, "user {name:?} is defined twice"),
            Self::Hash { name, message } => write!(f, "user {name:?}: {message}"),
            Self::Read { path, message } => write!(f, "{path}: {message}"),
            Self::FileTooLarge { path, max } => {
                write!(f, "{path}: larger than {max} octets, refusing to read it")
            }
            Self::Line {
                path,
                line,
                message,
            } => write!(f, "{path}:{line}: {message}"),
        }
    }
}

impl std::error::Error for UsersError {}

#[derive(Clone)]
enum Secret {
    Plain(String),
    /// A PHC string already checked to parse, with parameters in bounds.
    #[cfg(feature = "argon2")]
    Argon2(Arc<str>),
}

/// Counters of password verification, for monitoring (see
/// [`StaticUsers::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyStats {
    /// Hash verifications started, including those against the dummy hash
    /// for unknown users.
    pub verifications: u64,
    /// Hash verifications running now.
    pub in_flight: usize,
    /// The most hash verifications that ever ran at once.
    pub peak_in_flight: usize,
    /// Attempts answered `454 4.7.0` because the queue or the verification
    /// took too long.
    pub timeouts: u64,
}

/// An [`Authenticator`] for `PLAIN` and `LOGIN` over a fixed set of
/// accounts: argon2 password hashes (PHC strings, the
/// `argon2`-feature, on by default) or plain passwords for tests.
///
/// - Plain passwords are compared in constant time; hashes are verified
///   on tokio's blocking pool, at most [`PasswordLimits::max_concurrent`]
///   at once in a fair queue, one at a time per client network, with a
///   timeout.
/// - An unknown user is checked against a dummy hash with the same
///   parameters as the real ones, so the answer time does not tell which
///   names exist.
/// - An authorization identity (RFC 4616 §2 `authzid`) other than the user
///   name itself asks to act as someone else; `StaticUsers` grants no such
///   right and refuses it with `535 5.7.8`.
/// - argon2 parameters are checked when an account is added, against
///   [`PasswordLimits`]: a hash that would take gigabytes or minutes to
///   verify is refused at load, not at the first `AUTH`.
///
/// Failed attempts are also throttled per client address by the server
/// itself (see [`AuthThrottle`](crate::AuthThrottle)), whatever the
/// authenticator.
///
/// ```
/// use smtp_server::{AuthPolicy, Server, StaticUsers};
/// # use smtp_server::{Backend, Body, ConnectionInfo, Envelope, Session, SmtpError};
/// # struct Sink;
/// # struct SinkSession;
/// # impl Session for SinkSession {
/// #     async fn data(&mut self, _: &Envelope, _: Body) -> Result<(), SmtpError> { Ok(()) }
/// # }
/// # impl Backend for Sink {
/// #     type Session = SinkSession;
/// #     async fn new_session(&self, _: &ConnectionInfo) -> Result<SinkSession, SmtpError> {
/// #         Ok(SinkSession)
/// #     }
/// # }
/// // Plain passwords, for tests:
/// let users = StaticUsers::from_plain([("alice", "wonderland"), ("bob", "builder")])?;
/// let server = Server::builder(Sink)
///     .auth(users, AuthPolicy::new().allow_insecure(true))
///     .build()?;
/// # let _ = server;
///
/// // In production, argon2 hashes (from `smtp_server::hash_password`, or
/// // `echo -n PASSWORD | argon2 SALT -id -e`), or a users file with
/// // `name:hash` lines (`StaticUsers::load_file`):
/// let mut hashed = StaticUsers::new();
/// hashed.add_argon2(
///     "carol",
///     "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$k9ohroejZy1PN5E1SbHNPug6vB8eQAahb5SOAp6iGF4",
/// )?;
/// // A hash that would take 4 GiB per verification is refused at load.
/// assert!(hashed
///     .add_argon2(
///         "mallory",
///         "$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$k9ohroejZy1PN5E1SbHNPug6vB8eQAahb5SOAp6iGF4",
///     )
///     .is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct StaticUsers {
    accounts: HashMap<String, Secret>,
    limits: PasswordLimits,
    verifier: Arc<Verifier>,
    /// How many accounts use each argon2 parameter set, with one of their
    /// hashes: the most common set is the dummy's.
    #[cfg(feature = "argon2")]
    parameter_sets: HashMap<String, (usize, Arc<str>)>,
    /// What an unknown user is checked against.
    #[cfg(feature = "argon2")]
    dummy: Option<Arc<str>>,
}

impl Default for StaticUsers {
    fn default() -> Self {
        Self::with_limits(PasswordLimits::default())
    }
}

impl fmt::Debug for StaticUsers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print passwords or hashes.
        let mut names: Vec<&String> = self.accounts.keys().collect();
        names.sort();
        f.debug_struct("StaticUsers")
            .field("names", &names)
            .field("limits", &self.limits)
            .finish()
    }
}

impl StaticUsers {
    /// No accounts, the default [`PasswordLimits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// No accounts, with `limits`.
    pub fn with_limits(limits: PasswordLimits) -> Self {
        let verifier = Arc::new(Verifier::new(&limits));
        Self {
            accounts: HashMap::new(),
            limits,
            verifier,
            #[cfg(feature = "argon2")]
            parameter_sets: HashMap::new(),
            #[cfg(feature = "argon2")]
            dummy: None,
        }
    }

    /// Accounts with plain passwords, from a map or any list of
    /// `(name, password)` pairs. For tests and demos: a plain password in
    /// a configuration is a password leaked.
    pub fn from_plain<N, P>(users: impl IntoIterator<Item = (N, P)>) -> Result<Self, UsersError>
    where
        N: Into<String>,
        P: Into<String>,
    {
        let mut out = Self::new();
        for (name, password) in users {
            out.add_plain(name, password)?;
        }
        Ok(out)
    }

    /// The limits in force.
    pub fn limits(&self) -> &PasswordLimits {
        &self.limits
    }

    /// True when no account is defined.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// How many accounts are defined.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Whether `name` has an account.
    pub fn contains(&self, name: &str) -> bool {
        self.accounts.contains_key(name)
    }

    /// Verification counters, shared by the clones of this value.
    pub fn stats(&self) -> VerifyStats {
        self.verifier.stats()
    }

    /// Adds an account with a plain password (compared in constant time).
    pub fn add_plain(
        &mut self,
        name: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<(), UsersError> {
        let name = name.into();
        let password = password.into();
        if password.is_empty() {
            return Err(UsersError::EmptyPassword(name));
        }
        self.insert(name, Secret::Plain(password))
    }

    /// Adds an account with an argon2 password hash in PHC form
    /// (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`; argon2id, argon2i or
    /// argon2d), as argon2 tools and most password libraries print it. The
    /// parameters must be within [`PasswordLimits`].
    #[cfg(feature = "argon2")]
    pub fn add_argon2(&mut self, name: impl Into<String>, phc: &str) -> Result<(), UsersError> {
        let name = name.into();
        let parameters = match check_argon2(phc, &self.limits) {
            Ok(parameters) => parameters,
            Err(message) => return Err(UsersError::Hash { name, message }),
        };
        let phc: Arc<str> = Arc::from(phc);
        self.insert(name, Secret::Argon2(Arc::clone(&phc)))?;
        let count = {
            let entry = self
                .parameter_sets
                .entry(parameters)
                .or_insert_with(|| (0, Arc::clone(&phc)));
            entry.0 += 1;
            entry.0
        };
        let best = self
            .parameter_sets
            .values()
            .map(|(count, _)| *count)
            .max()
            .unwrap_or(0);
        if self.dummy.is_none() || count >= best {
            self.dummy = dummy_hash(&phc);
        }
        Ok(())
    }

    /// Reads a users file: one `name:hash` per line, the hash an argon2
    /// PHC string (see [`StaticUsers::add_argon2`]). Blank lines and lines
    /// starting with `#` are ignored. The file is refused unread past
    /// [`PasswordLimits::max_file_size`], and a line past
    /// [`PasswordLimits::max_line`] is an error.
    #[cfg(feature = "argon2")]
    pub fn load_file(&mut self, path: &Path) -> Result<(), UsersError> {
        let shown = path.display().to_string();
        let read_error = |error: std::io::Error| UsersError::Read {
            path: shown.clone(),
            message: error.to_string(),
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let max = self.limits.max_file_size;
        // Read at most one octet past the cap: a device such as /dev/zero,
        // or a file growing while it is read, cannot exhaust memory.
        let mut data = Vec::new();
        file.take(max.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(read_error)?;
        if data.len() as u64 > max {
            return Err(UsersError::FileTooLarge { path: shown, max });
        }
        let text = String::from_utf8(data).map_err(|_| UsersError::Read {
            path: shown.clone(),
            message: "not UTF-8 text".to_owned(),
        })?;
        self.load_str(&shown, &text)
    }

    /// Reads users-file text (see [`StaticUsers::load_file`]); `origin`
    /// names it in error messages.
    #[cfg(feature = "argon2")]
    pub fn load_str(&mut self, origin: &str, text: &str) -> Result<(), UsersError> {
        for (index, raw) in text.split('\n').enumerate() {
            let err = |message: String| UsersError::Line {
                path: origin.to_owned(),
                line: index + 1,
                message,
            };
            if raw.len() > self.limits.max_line {
                return Err(err(format!(
                    "line longer than {} octets",
                    self.limits.max_line
                )));
            }
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| err("expected name:hash".into()))?;
            if name.is_empty() {
                return Err(err("empty user name".into()));
            }
            match self.add_argon2(name, hash) {
                Ok(()) => {}
                Err(UsersError::Hash { name, message }) => {
                    return Err(err(format!("user {name:?}: {message}")));
                }
                Err(UsersError::Duplicate(name)) => {
                    return Err(err(format!("user {name:?} is defined twice")));
                }
                Err(other) => return Err(err(other.to_string())),
            }
        }
        Ok(())
    }

    fn insert(&mut self, name: String, secret: Secret) -> Result<(), UsersError> {
        if name.is_empty() {
            return Err(UsersError::EmptyName);
        }
        if self.accounts.contains_key(&name) {
            return Err(UsersError::Duplicate(name));
        }
        self.accounts.insert(name, secret);
        Ok(())
    }

    async fn verify(
        &self,
        info: &ConnectionInfo,
        name: &str,
        password: &str,
    ) -> Result<bool, SmtpError> {
        match self.accounts.get(name) {
            Some(Secret::Plain(expected)) => {
                Ok(constant_time_eq(expected.as_bytes(), password.as_bytes()))
            }
            #[cfg(feature = "argon2")]
            Some(Secret::Argon2(phc)) => {
                self.verifier
                    .verify_argon2(info, Arc::clone(phc), password.to_owned())
                    .await
            }
            None => {
                #[cfg(feature = "argon2")]
                {
                    if let Some(dummy) = &self.dummy {
                        // Same cost as a real account; the result is
                        // always a refusal.
                        self.verifier
                            .verify_argon2(info, Arc::clone(dummy), password.to_owned())
                            .await?;
                        return Ok(false);
                    }
                }
                let _ = info;
                let _ = constant_time_eq(password.as_bytes(), password.as_bytes());
                Ok(false)
            }
        }
    }
}

impl Authenticator for StaticUsers {
    async fn authenticate(
        &self,
        info: &ConnectionInfo,
        _mechanism: &str,
        credentials: &Credentials,
    ) -> Result<Identity, SmtpError> {
        let username = credentials.username();
        // RFC 4616 §2: an authorization identity other than the user name
        // asks to act as someone else; no account here has that right.
        if credentials
            .authzid()
            .is_some_and(|authzid| authzid != username)
        {
            return Err(invalid_credentials());
        }
        // The accounts have passwords only: a token is never valid here.
        let Some(password) = credentials.as_password() else {
            return Err(invalid_credentials());
        };
        if self.verify(info, username, password).await? {
            Ok(Identity::new(username))
        } else {
            Err(invalid_credentials())
        }
    }
}

/// `454 4.7.0` (RFC 4954 §6): the check could not be made now.
fn temporary_failure() -> SmtpError {
    SmtpError::new(
        454,
        EnhancedCode::new(4, 7, 0),
        "Temporary authentication failure",
    )
}

/// The shared part of a [`StaticUsers`]: the verification slots, the
/// per-network queue and the counters.
struct Verifier {
    slots: Arc<Semaphore>,
    queue_timeout: Duration,
    verify_timeout: Duration,
    /// One verification at a time per client network, so many connections
    /// from one place queue behind each other instead of filling every
    /// slot.
    networks: Arc<Mutex<HashMap<IpAddr, Arc<Semaphore>>>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    verifications: AtomicU64,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    timeouts: AtomicU64,
}

impl Verifier {
    fn new(limits: &PasswordLimits) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            queue_timeout: limits.queue_timeout,
            verify_timeout: limits.verify_timeout,
            networks: Arc::default(),
            counters: Arc::default(),
        }
    }

    fn stats(&self) -> VerifyStats {
        VerifyStats {
            verifications: self.counters.verifications.load(Ordering::Relaxed),
            in_flight: self.counters.in_flight.load(Ordering::Relaxed),
            peak_in_flight: self.counters.peak_in_flight.load(Ordering::Relaxed),
            timeouts: self.counters.timeouts.load(Ordering::Relaxed),
        }
    }

    fn timed_out(&self) -> SmtpError {
        self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("password verification timed out");
        temporary_failure()
    }

    /// Runs one argon2 verification within the queue and time bounds.
    #[cfg(feature = "argon2")]
    async fn verify_argon2(
        &self,
        info: &ConnectionInfo,
        phc: Arc<str>,
        password: String,
    ) -> Result<bool, SmtpError> {
        let queued_until = Instant::now() + self.queue_timeout;
        let mut turn = NetworkTurn::new(&self.networks, network_key(info.client_addr().ip()));
        let network = Arc::clone(&turn.semaphore);
        match timeout_at(queued_until, network.acquire_owned()).await {
            Ok(Ok(permit)) => turn.permit = Some(permit),
            Ok(Err(_)) => return Err(temporary_failure()),
            Err(_) => return Err(self.timed_out()),
        }
        let slot = match timeout_at(queued_until, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(temporary_failure()),
            Err(_) => return Err(self.timed_out()),
        };
        let counters = Arc::clone(&self.counters);
        let task = tokio::task::spawn_blocking(move || {
            // The slot is held until the computation ends, even when the
            // caller gave up waiting: the memory bound holds.
            let _slot = slot;
            counters.verifications.fetch_add(1, Ordering::Relaxed);
            let now = counters.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            counters.peak_in_flight.fetch_max(now, Ordering::Relaxed);
            let ok = verify_phc(&phc, &password);
            counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            ok
        });
        let result = match tokio::time::timeout(self.verify_timeout, task).await {
            Ok(Ok(ok)) => Ok(ok),
            Ok(Err(error)) => Err(SmtpError::other(error)),
            Err(_) => Err(self.timed_out()),
        };
        drop(turn);
        result
    }
}

/// A place in the per-network queue; leaving it removes the network's
/// entry once nobody else uses it.
struct NetworkTurn {
    networks: Arc<Mutex<HashMap<IpAddr, Arc<Semaphore>>>>,
    key: IpAddr,
    semaphore: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl NetworkTurn {
    fn new(networks: &Arc<Mutex<HashMap<IpAddr, Arc<Semaphore>>>>, key: IpAddr) -> Self {
        let semaphore = {
            let mut map = networks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::clone(
                map.entry(key)
                    .or_insert_with(|| Arc::new(Semaphore::new(1))),
            )
        };
        Self {
            networks: Arc::clone(networks),
            key,
            semaphore,
            permit: None,
        }
    }
}

impl Drop for NetworkTurn {
    fn drop(&mut self) {
        self.permit = None;
        let mut map = self
            .networks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The map and this turn hold the only references: nobody waits.
        if Arc::strong_count(&self.semaphore) == 2 {
            map.remove(&self.key);
        }
    }
}

/// Checks that `phc` is an argon2 PHC string with parameters in bounds;
/// returns its algorithm, version and parameters as one key.
#[cfg(feature = "argon2")]
fn check_argon2(phc: &str, limits: &PasswordLimits) -> Result<String, String> {
    let hash = argon2::PasswordHash::new(phc)
        .map_err(|error| format!("not a PHC password hash ($argon2id$...): {error}"))?;
    argon2::Algorithm::try_from(hash.algorithm)
        .map_err(|_| "unsupported hash scheme; use argon2id, argon2i or argon2d".to_owned())?;
    if hash.hash.is_none() || hash.salt.is_none() {
        return Err("the PHC string has no salt or no hash".to_owned());
    }
    let params = argon2::Params::try_from(&hash)
        .map_err(|error| format!("invalid argon2 parameters: {error}"))?;
    if params.m_cost() > limits.argon2_max_memory_kib {
        return Err(format!(
            "argon2 memory cost m={} KiB is above the limit of {} KiB",
            params.m_cost(),
            limits.argon2_max_memory_kib
        ));
    }
    if params.t_cost() > limits.argon2_max_iterations {
        return Err(format!(
            "argon2 iteration count t={} is above the limit of {}",
            params.t_cost(),
            limits.argon2_max_iterations
        ));
    }
    if params.p_cost() > limits.argon2_max_parallelism {
        return Err(format!(
            "argon2 parallelism p={} is above the limit of {}",
            params.p_cost(),
            limits.argon2_max_parallelism
        ));
    }
    let output_len = hash.hash.map_or(0, |output| output.len());
    Ok(format!(
        "{} {:?} {} {output_len}",
        hash.algorithm, hash.version, hash.params
    ))
}

/// Hashes `password` for [`StaticUsers::add_argon2`] or a users file:
/// argon2id with the argon2 crate's defaults (m = 19 MiB, t = 2, p = 1,
/// the OWASP recommendation) and a random salt.
///
/// Takes tens of milliseconds in an optimised build, on purpose.
#[cfg(feature = "argon2")]
pub fn hash_password(password: &str) -> String {
    use argon2::PasswordHasher as _;
    use argon2::password_hash::SaltString;
    use argon2::password_hash::rand_core::OsRng;
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .unwrap_or_else(|error| unreachable!("argon2 defaults are valid: {error}"))
}

/// Verifies `password` against a PHC string; algorithm, version and cost
/// come from the string.
#[cfg(feature = "argon2")]
fn verify_phc(phc: &str, password: &str) -> bool {
    use argon2::PasswordVerifier as _;
    match argon2::PasswordHash::new(phc) {
        Ok(hash) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// `phc` with its output inverted: the same algorithm, parameters and
/// salt, so verifying against it costs the same, and no known password
/// matches it.
#[cfg(feature = "argon2")]
fn dummy_hash(phc: &str) -> Option<Arc<str>> {
    let mut hash = argon2::PasswordHash::new(phc).ok()?;
    let output = hash.hash?;
    let inverted: Vec<u8> = output.as_bytes().iter().map(|byte| !byte).collect();
    hash.hash = Some(argon2::password_hash::Output::new(&inverted).ok()?);
    Some(Arc::from(hash.to_string()))
}

/// Compares two byte strings in time that depends only on their lengths,
/// not on where they first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abc\0"));
        assert!(!constant_time_eq(b"", b"\0"));
    }

    #[test]
    fn plain_accounts() {
        let users = StaticUsers::from_plain([("alice", "s3cr:et")]).unwrap();
        assert_eq!(users.len(), 1);
        assert!(users.contains("alice"));
        let mut users = users;
        assert_eq!(
            users.add_plain("alice", "other"),
            Err(UsersError::Duplicate("alice".into()))
        );
        assert_eq!(users.add_plain("", "x"), Err(UsersError::EmptyName));
        assert_eq!(
            users.add_plain("bob", ""),
            Err(UsersError::EmptyPassword("bob".into()))
        );
        assert!(!format!("{users:?}").contains("s3cr"));
    }
}

#[cfg(all(test, feature = "argon2"))]
mod hashing_tests {
    use super::*;

    #[test]
    fn hash_password_makes_a_verifiable_argon2id_hash() {
        let phc = hash_password("correct horse");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_phc(&phc, "correct horse"));
        assert!(!verify_phc(&phc, "battery staple"));
        assert_ne!(phc, hash_password("correct horse"), "salts are random");
        let mut users = StaticUsers::new();
        users.add_argon2("alice", &phc).unwrap();
        // The dummy for unknown users shares the parameters, not the hash.
        let dummy = users.dummy.clone().unwrap();
        assert!(dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_ne!(&*dummy, phc.as_str());
        assert!(!verify_phc(&dummy, "correct horse"));
    }
}
