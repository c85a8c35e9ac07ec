//! The in-process test server: one per test, on its own port.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use smtp_server::{
    AuthPolicy, Backend, Body, ConnectionInfo, Envelope, Server, Session, SmtpError, StaticUsers,
    Timeouts, TlsConfig, UsersError,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::faults::{self, FaultAuthenticator, FaultBackend, FaultEngine, Faults};
use crate::message::ReceivedMessage;
use crate::transcript::{self, Transcript};

/// The messages received so far, and a signal for each new one.
#[derive(Debug)]
struct Mailbox {
    messages: Mutex<Vec<ReceivedMessage>>,
    arrived: watch::Sender<u64>,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Vec<ReceivedMessage>> {
        match self.messages.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn push(&self, message: ReceivedMessage) {
        self.lock().push(message);
        self.arrived.send_modify(|count| *count += 1);
    }
}

/// The backend that keeps every accepted message.
#[derive(Debug, Clone)]
struct Keeper {
    mailbox: Arc<Mailbox>,
}

#[derive(Debug)]
struct KeeperSession {
    mailbox: Arc<Mailbox>,
}

impl Backend for Keeper {
    type Session = KeeperSession;

    async fn new_session(&self, _info: &ConnectionInfo) -> Result<KeeperSession, SmtpError> {
        Ok(KeeperSession {
            mailbox: Arc::clone(&self.mailbox),
        })
    }
}

impl Session for KeeperSession {
    async fn data(&mut self, envelope: &Envelope, body: Body) -> Result<(), SmtpError> {
        // Bounded by the server's own size limit.
        let raw = body.read_to_end().await?;
        self.mailbox
            .push(ReceivedMessage::new(envelope.clone(), raw));
        Ok(())
    }
}

/// Why a [`TestServer`] did not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The certificate could not be made or loaded.
    Tls(String),
    /// smtp-server refused the configuration.
    Config(smtp_server::ConfigError),
    /// A user given to [`TestServerBuilder::user`] was refused (an empty
    /// name or password).
    Users(UsersError),
    /// No port on 127.0.0.1 could be bound.
    Bind(std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tls(why) => write!(f, "test certificate: {why}"),
            Self::Config(error) => write!(f, "server configuration: {error}"),
            Self::Users(error) => write!(f, "test user: {error}"),
            Self::Bind(error) => write!(f, "cannot listen on 127.0.0.1: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Configures a [`TestServer`]; see [`TestServer::builder`].
#[derive(Debug)]
#[must_use = "call .start().await to run the server"]
pub struct TestServerBuilder {
    tls: bool,
    require_tls: bool,
    require_auth: bool,
    users: Vec<(String, String)>,
    faults: Faults,
    hostname: String,
    timeouts: Option<Timeouts>,
}

impl TestServerBuilder {
    /// Offers `STARTTLS` with a certificate for `localhost` and
    /// `127.0.0.1` generated now; trust [`TestServer::ca_pem`] in the
    /// client.
    pub fn tls_self_signed(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Refuses mail commands until the client started TLS. Implies
    /// [`tls_self_signed`](Self::tls_self_signed).
    pub fn require_tls(mut self) -> Self {
        self.tls = true;
        self.require_tls = true;
        self
    }

    /// Adds a user for `AUTH PLAIN` and `AUTH LOGIN`. AUTH is offered
    /// with or without TLS (this is a test server).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.users.push((name.into(), password.into()));
        self
    }

    /// Refuses mail commands until the client authenticated.
    pub fn require_auth(mut self) -> Self {
        self.require_auth = true;
        self
    }

    /// Misbehaves as `faults` say (see [`faults`](crate::faults)).
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// The name in the greeting and the EHLO reply. Default `localhost`.
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = hostname.into();
        self
    }

    /// The server's own timeouts (smtp-server's defaults otherwise).
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = Some(timeouts);
        self
    }

    /// Binds `127.0.0.1:0` and starts serving in a background task.
    pub async fn start(self) -> Result<TestServer, StartError> {
        let mailbox = Arc::new(Mailbox {
            messages: Mutex::new(Vec::new()),
            arrived: watch::channel(0).0,
        });
        let recorder = transcript::Recorder::default();
        let engine = FaultEngine::new(self.faults);
        let fired = recorder.clone();
        engine.on_fire(move |rule| fired.fired(rule));
        let backend = FaultBackend::new(
            Keeper {
                mailbox: Arc::clone(&mailbox),
            },
            engine.clone(),
        );
        let lines = recorder.clone();
        let mut builder = Server::builder(backend)
            .hostname(self.hostname)
            .transcript(move |line| lines.line(line))
            .shutdown_timeout(Duration::from_secs(1));
        let mut ca_pem = None;
        if self.tls {
            let generated = TlsConfig::self_signed(["localhost", "127.0.0.1"])
                .map_err(|error| StartError::Tls(error.to_string()))?;
            builder = builder.tls(generated.tls).require_tls(self.require_tls);
            ca_pem = Some(generated.certificate_pem);
        }
        if !self.users.is_empty() || self.require_auth {
            let users = StaticUsers::from_plain(self.users).map_err(StartError::Users)?;
            let policy = AuthPolicy::new()
                .allow_insecure(true)
                .require(self.require_auth);
            builder = builder.auth(FaultAuthenticator::new(users, engine.clone()), policy);
        }
        if let Some(timeouts) = self.timeouts {
            builder = builder.timeouts(timeouts);
        }
        let server = builder.build().map_err(StartError::Config)?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(StartError::Bind)?;
        let addr = listener.local_addr().map_err(StartError::Bind)?;
        let task = tokio::spawn(async move {
            let _ = faults::serve(server, [listener], std::future::pending()).await;
        });
        Ok(TestServer {
            addr,
            ca_pem,
            mailbox,
            recorder,
            engine,
            task,
        })
    }
}

/// `wait_for` gave up: what did arrive.
#[derive(Debug, Clone)]
pub struct WaitError {
    timeout: Duration,
    wanted: Option<usize>,
    arrived: Vec<ReceivedMessage>,
}

impl WaitError {
    /// Every message that arrived, matching or not.
    pub fn arrived(&self) -> &[ReceivedMessage] {
        &self.arrived
    }
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.wanted {
            Some(count) => write!(f, "expected {count} messages within {:?}, ", self.timeout)?,
            None => write!(f, "no message matched within {:?}; ", self.timeout)?,
        }
        match self.arrived.len() {
            0 => write!(f, "none arrived")?,
            1 => write!(f, "1 arrived:")?,
            n => write!(f, "{n} arrived:")?,
        }
        for (index, message) in self.arrived.iter().enumerate() {
            write!(f, "\n  {}. {message}", index + 1)?;
        }
        Ok(())
    }
}

impl std::error::Error for WaitError {}

/// A real SMTP server (smtp-server) on `127.0.0.1` with an ephemeral port,
/// keeping every message it accepts. Dropping it stops the server and cuts
/// its connections.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use smtp_test::TestServer;
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
///
/// let server = TestServer::builder().start().await?;
///
/// // Any client will do; here, the protocol by hand, one reply at a time.
/// let stream = tokio::net::TcpStream::connect(server.addr()).await?;
/// let (read, mut write) = stream.into_split();
/// let mut lines = BufReader::new(read).lines();
/// let mut reply = async || -> std::io::Result<String> {
///     loop {
///         let line = lines.next_line().await?.unwrap_or_default();
///         if line.as_bytes().get(3) != Some(&b'-') { return Ok(line); }
///     }
/// };
/// assert!(reply().await?.starts_with("220"));
/// for command in ["EHLO app.test", "MAIL FROM:<app@example.com>",
///                 "RCPT TO:<bob@example.com>", "DATA",
///                 "Subject: Welcome\r\n\r\nYour code is 123456.\r\n.", "QUIT"] {
///     write.write_all(format!("{command}\r\n").as_bytes()).await?;
///     reply().await?;
/// }
///
/// let msg = server.wait_for(|m| m.to("bob@example.com"), Duration::from_secs(5)).await?;
/// assert_eq!(msg.subject(), Some("Welcome"));
/// assert_eq!(msg.one_time_code().as_deref(), Some("123456"));
/// # Ok(())
/// # }
/// ```
pub struct TestServer {
    addr: SocketAddr,
    ca_pem: Option<String>,
    mailbox: Arc<Mailbox>,
    recorder: transcript::Recorder,
    engine: FaultEngine,
    task: JoinHandle<()>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("tls", &self.ca_pem.is_some())
            .field("messages", &self.mailbox.lock().len())
            .finish_non_exhaustive()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its set of connection tasks,
        // which aborts them too.
        self.task.abort();
    }
}

impl TestServer {
    /// Starts configuring a server: plain SMTP, no AUTH, no faults unless
    /// asked.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder {
            tls: false,
            require_tls: false,
            require_auth: false,
            users: Vec::new(),
            faults: Faults::default(),
            hostname: "localhost".to_owned(),
            timeouts: None,
        }
    }

    /// A server with the defaults.
    pub async fn start() -> Result<Self, StartError> {
        Self::builder().start().await
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A connection URL in the form `smtp_client::ClientConfig::from_url`
    /// reads: `smtp://127.0.0.1:PORT` (STARTTLS required) with
    /// [`TestServerBuilder::tls_self_signed`], else
    /// `smtp://127.0.0.1:PORT?tls=none`.
    pub fn url(&self) -> String {
        if self.ca_pem.is_some() {
            format!("smtp://{}", self.addr)
        } else {
            format!("smtp://{}?tls=none", self.addr)
        }
    }

    /// The generated certificate (PEM), to add as a trusted root in the
    /// client; `None` without [`TestServerBuilder::tls_self_signed`]. It
    /// names `localhost` and `127.0.0.1`.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Every message received so far, in order of arrival.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.mailbox.lock().clone()
    }

    /// Removes and returns every message received so far.
    pub fn take(&self) -> Vec<ReceivedMessage> {
        std::mem::take(&mut *self.mailbox.lock())
    }

    /// Forgets every message received so far.
    pub fn clear(&self) {
        self.mailbox.lock().clear();
    }

    /// How many messages listed `address` as an envelope recipient.
    pub fn count_for(&self, address: &str) -> usize {
        self.mailbox
            .lock()
            .iter()
            .filter(|message| message.to(address))
            .count()
    }

    /// Messages per envelope recipient (lowercased).
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for message in self.mailbox.lock().iter() {
            for recipient in message.recipients() {
                *counts.entry(recipient.to_lowercase()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// The first message, received before or during the wait, for which
    /// `predicate` holds. After `timeout`, an error that lists what did
    /// arrive.
    pub async fn wait_for(
        &self,
        predicate: impl Fn(&ReceivedMessage) -> bool,
        timeout: Duration,
    ) -> Result<ReceivedMessage, WaitError> {
        let mut arrived = self.mailbox.arrived.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            arrived.borrow_and_update();
            if let Some(found) = self.mailbox.lock().iter().find(|m| predicate(m)) {
                return Ok(found.clone());
            }
            let changed = tokio::time::timeout_at(deadline, arrived.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return Err(WaitError {
                    timeout,
                    wanted: None,
                    arrived: self.messages(),
                });
            }
        }
    }

    /// Waits until at least `count` messages have arrived and returns them
    /// all.
    pub async fn wait_for_count(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>, WaitError> {
        let mut arrived = self.mailbox.arrived.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            arrived.borrow_and_update();
            let messages = self.messages();
            if messages.len() >= count {
                return Ok(messages);
            }
            let changed = tokio::time::timeout_at(deadline, arrived.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return Err(WaitError {
                    timeout,
                    wanted: Some(count),
                    arrived: self.messages(),
                });
            }
        }
    }

    /// Every session so far, AUTH masked, with the fault rules that fired.
    pub fn transcript(&self) -> Transcript {
        self.recorder.snapshot()
    }

    /// Replaces the fault rules for every later check.
    pub fn set_faults(&self, faults: Faults) {
        self.engine.replace(faults);
    }
}
