//! The server: configuration, listeners, accept loop and graceful shutdown.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use ipnet::IpNet;
use smtp_proto::{EnhancedCode, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use crate::auth::{Authenticator, DynAuthenticator};
use crate::config::{
    AuthPolicy, BareLineEndings, DEFAULT_SHUTDOWN_TIMEOUT, Extensions, Limits, Stress, Timeouts,
};
use crate::connection::{self, RunState};
use crate::error::ConfigError;
use crate::limiter::{AcceptErrors, ConnectionLimiter, Load};
use crate::proxy::{self, ProxyHeader};
use crate::session::{Backend, ConnectionInfo};
use crate::throttle::{AuthThrottle, Throttle};
use crate::tls::TlsConfig;
use crate::transcript::{Transcript, TranscriptHook, TranscriptLine};

/// Time connections get to write their `421` and close once the shutdown
/// deadline has passed, before their tasks are aborted.
const SHUTDOWN_FINAL_GRACE: Duration = Duration::from_secs(5);

/// Everything a connection needs to know, shared by all of them.
pub(crate) struct Config {
    pub(crate) hostname: String,
    pub(crate) banner: String,
    pub(crate) limits: Limits,
    pub(crate) timeouts: Timeouts,
    pub(crate) stress: Stress,
    /// Connections being served by [`Listening::serve`], against the
    /// stress high-water mark.
    pub(crate) load: Load,
    pub(crate) extensions: Extensions,
    pub(crate) authenticator: Option<Arc<dyn DynAuthenticator>>,
    pub(crate) auth_policy: AuthPolicy,
    pub(crate) require_tls: bool,
    pub(crate) bare_line_endings: BareLineEndings,
    pub(crate) lmtp: bool,
    pub(crate) proxy_trusted: Vec<IpNet>,
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) transcript: Option<TranscriptHook>,
    pub(crate) auth_throttle: Arc<Throttle>,
}

struct Shared<B> {
    backend: B,
    config: Config,
    listeners: Vec<ListenerSpec>,
    /// Set `SO_REUSEPORT` on every listener (see
    /// [`ServerBuilder::reuse_port`]).
    reuse_port: bool,
    /// The connection limits, shared by every accept loop of the server
    /// (several with [`Server::bind_at`]).
    limiter: ConnectionLimiter,
}

#[derive(Debug, Clone, Copy)]
struct ListenerSpec {
    addr: SocketAddr,
    implicit_tls: bool,
}

/// An SMTP, ESMTP or LMTP server. Cheap to clone.
///
/// Build one with [`Server::builder`], then either [`Server::bind`] and
/// [`Listening::serve`], or hand it streams with
/// [`Server::serve_connection`].
pub struct Server<B: Backend> {
    shared: Arc<Shared<B>>,
}

impl<B: Backend> Clone for Server<B> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<B: Backend> std::fmt::Debug for Server<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("hostname", &self.shared.config.hostname)
            .field("lmtp", &self.shared.config.lmtp)
            .finish_non_exhaustive()
    }
}

/// Configures a [`Server`]. Every setting has a safe default.
pub struct ServerBuilder<B: Backend> {
    backend: B,
    config: Config,
    listeners: Vec<ListenerSpec>,
    reuse_port: bool,
}

impl<B: Backend> std::fmt::Debug for ServerBuilder<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("hostname", &self.config.hostname)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Server<B> {
    /// Starts configuring a server whose sessions `backend` opens.
    pub fn builder(backend: B) -> ServerBuilder<B> {
        ServerBuilder {
            backend,
            config: Config {
                hostname: "localhost".to_owned(),
                banner: "ready".to_owned(),
                limits: Limits::default(),
                timeouts: Timeouts::default(),
                stress: Stress::default(),
                load: Load::default(),
                extensions: Extensions::default(),
                authenticator: None,
                auth_policy: AuthPolicy::default(),
                require_tls: false,
                bare_line_endings: BareLineEndings::Reject,
                lmtp: false,
                proxy_trusted: Vec::new(),
                tls: None,
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                transcript: None,
                auth_throttle: Arc::new(Throttle::new(AuthThrottle::default())),
            },
            listeners: Vec::new(),
            reuse_port: false,
        }
    }

    /// The backend the server was built with.
    pub fn backend(&self) -> &B {
        &self.shared.backend
    }

    /// Binds every configured listener. Port 0 picks a free port: read the
    /// result from [`Listening::local_addrs`].
    pub async fn bind(&self) -> io::Result<Listening<B>> {
        let mut listeners = Vec::with_capacity(self.shared.listeners.len());
        for spec in &self.shared.listeners {
            let listener = if self.shared.reuse_port {
                listen_reusing_port(spec.addr)?
            } else {
                TcpListener::bind(spec.addr).await?
            };
            let addr = listener.local_addr()?;
            listeners.push(BoundListener {
                listener,
                addr,
                implicit_tls: spec.implicit_tls,
            });
        }
        Ok(Listening {
            server: self.clone(),
            listeners,
        })
    }

    /// Binds the configured listeners once more, at `addrs`: the addresses
    /// of a first [`Server::bind`] ([`Listening::local_addrs`], in that
    /// order, so a port 0 is the port picked then). Needs
    /// [`ServerBuilder::reuse_port`]. Each [`Listening`] runs its own accept
    /// loop, typically one per thread, each thread with its own
    /// single-threaded tokio runtime; the kernel spreads new connections
    /// among the loops, and the connection limits hold for all of them
    /// together. Call it inside the runtime that will serve the result.
    ///
    /// ```
    /// # use smtp_server::{Backend, Body, ConnectionInfo, Envelope, Server, Session, SmtpError};
    /// # struct Sink;
    /// # struct SinkSession;
    /// # impl Session for SinkSession {
    /// #     async fn data(&mut self, _: &Envelope, _: Body) -> Result<(), SmtpError> {
    /// #         Ok(())
    /// #     }
    /// # }
    /// # impl Backend for Sink {
    /// #     type Session = SinkSession;
    /// #     async fn new_session(&self, _: &ConnectionInfo) -> Result<SinkSession, SmtpError> {
    /// #         Ok(SinkSession)
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = Server::builder(Sink)
    ///     .listen("127.0.0.1:0".parse()?)
    ///     .reuse_port(true)
    ///     .build()?;
    /// let first = server.bind().await?;
    /// let addrs = first.local_addrs();
    /// let other = std::thread::spawn({
    ///     let server = server.clone();
    ///     move || {
    ///         let runtime = tokio::runtime::Builder::new_current_thread()
    ///             .enable_all()
    ///             .build()?;
    ///         runtime.block_on(async {
    ///             let second = server.bind_at(&addrs)?;
    ///             // ... second.serve(shutdown).await
    ///             # drop(second);
    ///             Ok::<_, std::io::Error>(())
    ///         })
    ///     }
    /// });
    /// other.join().unwrap()?;
    /// # drop(first);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] without `reuse_port` or when `addrs`
    /// does not have one address per configured listener; otherwise the
    /// error of binding.
    pub fn bind_at(&self, addrs: &[SocketAddr]) -> io::Result<Listening<B>> {
        if !self.shared.reuse_port {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "binding a listener again needs reuse_port",
            ));
        }
        if addrs.len() != self.shared.listeners.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "one address per configured listener",
            ));
        }
        let mut listeners = Vec::with_capacity(addrs.len());
        for (spec, addr) in self.shared.listeners.iter().zip(addrs) {
            let listener = listen_reusing_port(*addr)?;
            listeners.push(BoundListener {
                addr: listener.local_addr()?,
                listener,
                implicit_tls: spec.implicit_tls,
            });
        }
        Ok(Listening {
            server: self.clone(),
            listeners,
        })
    }

    /// Serves one SMTP session over `stream`, which is already connected:
    /// greeting, commands, messages, until the client quits or a limit ends
    /// it. No PROXY header and no implicit TLS are expected; `STARTTLS`
    /// works if TLS is configured. Errors are I/O errors of the stream.
    pub async fn serve_connection<S>(&self, stream: S, info: ConnectionInfo) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The sender stays alive for the whole session, so the connection
        // never sees a shutdown.
        let (_state, state_rx) = watch::channel(RunState::Running);
        let span = session_span(&info);
        connection::run(
            &self.shared.backend,
            &self.shared.config,
            stream,
            info,
            false,
            state_rx,
        )
        .instrument(span)
        .await
    }
}

fn session_span(info: &ConnectionInfo) -> tracing::Span {
    tracing::info_span!("smtp", id = %info.id, peer = %info.client_addr())
}

impl<B: Backend> ServerBuilder<B> {
    /// The server's name, in the greeting, the `EHLO` reply and
    /// `Received:` headers. Default `localhost`.
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.config.hostname = hostname.into();
        self
    }

    /// Text after the hostname and protocol in the greeting. Default
    /// `ready`.
    pub fn banner(mut self, banner: impl Into<String>) -> Self {
        self.config.banner = banner.into();
        self
    }

    /// Adds a plain listener (`STARTTLS` is offered if TLS is configured).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listeners.push(ListenerSpec {
            addr,
            implicit_tls: false,
        });
        self
    }

    /// Adds an implicit-TLS listener (RFC 8314 §3.3, port 465 style): the
    /// TLS handshake comes first. Needs [`ServerBuilder::tls`].
    pub fn listen_tls(mut self, addr: SocketAddr) -> Self {
        self.listeners.push(ListenerSpec {
            addr,
            implicit_tls: true,
        });
        self
    }

    /// Sets `SO_REUSEPORT` on every listener (Linux, the BSDs), so that
    /// [`Server::bind_at`] can bind the same addresses again for more
    /// accept loops: one per core, each on its own single-threaded
    /// runtime, serves without handing tasks between threads. Another
    /// socket of the same user with `SO_REUSEPORT` can then bind the port
    /// too and share its connections. Off by default.
    pub fn reuse_port(mut self, reuse: bool) -> Self {
        self.reuse_port = reuse;
        self
    }

    /// TLS for `STARTTLS` and implicit-TLS listeners. Keep a clone of
    /// `tls` to replace the certificate while the server runs.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// Size and count limits (see [`Limits`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Timeouts (see [`Timeouts`]).
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.config.timeouts = timeouts;
        self
    }

    /// Load-adaptive limits (see [`Stress`]). On by default.
    pub fn stress(mut self, stress: Stress) -> Self {
        self.config.stress = stress;
        self
    }

    /// Which ESMTP extensions are offered (see [`Extensions`]).
    pub fn extensions(mut self, extensions: Extensions) -> Self {
        self.config.extensions = extensions;
        self
    }

    /// Enables `AUTH` with `authenticator` under `policy`.
    pub fn auth<A: Authenticator>(mut self, authenticator: A, policy: AuthPolicy) -> Self {
        self.config.authenticator = Some(Arc::new(authenticator));
        self.config.auth_policy = policy;
        self
    }

    /// Failed-`AUTH` accounting per client network, shared by all
    /// connections: growing delays before failure replies, then refusal
    /// for a while (see [`AuthThrottle`]). On by default; pass
    /// [`AuthThrottle::disabled`] to turn it off.
    pub fn auth_throttle(mut self, throttle: AuthThrottle) -> Self {
        self.config.auth_throttle = Arc::new(Throttle::new(throttle));
        self
    }

    /// Refuse mail commands with `530 5.7.0` until the client has started
    /// TLS (RFC 3207 §4). Needs [`ServerBuilder::tls`]. Off by default.
    pub fn require_tls(mut self, require: bool) -> Self {
        self.config.require_tls = require;
        self
    }

    /// What to do with a bare CR or LF in message content. Default
    /// [`BareLineEndings::Reject`].
    pub fn bare_line_endings(mut self, policy: BareLineEndings) -> Self {
        self.config.bare_line_endings = policy;
        self
    }

    /// Speak LMTP (RFC 2033) instead of SMTP: `LHLO`, and one reply per
    /// recipient after the message. Off by default.
    pub fn lmtp(mut self, lmtp: bool) -> Self {
        self.config.lmtp = lmtp;
        self
    }

    /// Expect a PROXY protocol v1 or v2 header on connections from these
    /// networks (and only from them). Empty by default.
    pub fn proxy_protocol(mut self, trusted: Vec<IpNet>) -> Self {
        self.config.proxy_trusted = trusted;
        self
    }

    /// How long connections in flight may go on after shutdown starts
    /// before they get `421 4.3.2`. Default 30 seconds.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Calls `hook` with every line of every session's conversation:
    /// commands and replies, one line per call, with message bodies
    /// summarised and AUTH payloads replaced by `***` (see
    /// [`TranscriptLine`]). For debugging and test servers; off by default.
    ///
    /// The hook runs on the connection's task between protocol steps: keep
    /// it short (print, or send to a channel). A panic in it is caught and
    /// logged.
    ///
    /// ```
    /// # use smtp_server::{Backend, Body, ConnectionInfo, Envelope, Server, Session, SmtpError};
    /// # struct Sink;
    /// # struct SinkSession;
    /// # impl Session for SinkSession {
    /// #     async fn data(&mut self, _: &Envelope, _: Body) -> Result<(), SmtpError> {
    /// #         Ok(())
    /// #     }
    /// # }
    /// # impl Backend for Sink {
    /// #     type Session = SinkSession;
    /// #     async fn new_session(&self, _: &ConnectionInfo) -> Result<SinkSession, SmtpError> {
    /// #         Ok(SinkSession)
    /// #     }
    /// # }
    /// let server = Server::builder(Sink)
    ///     .transcript(|line| println!("[{}] {line}", line.session_id))
    ///     .build()?;
    /// # Ok::<(), smtp_server::ConfigError>(())
    /// ```
    pub fn transcript(
        mut self,
        hook: impl Fn(&TranscriptLine<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.config.transcript = Some(Arc::new(hook));
        self
    }

    /// Checks the configuration and builds the server.
    pub fn build(mut self) -> Result<Server<B>, ConfigError> {
        let hostname = &self.config.hostname;
        if hostname.is_empty()
            || hostname.len() > smtp_proto::limits::DOMAIN_MAX
            || hostname
                .bytes()
                .any(|byte| byte <= b' ' || byte == 0x7f || byte == b'<' || byte == b'>')
        {
            return Err(ConfigError::InvalidHostname);
        }
        let has_tls = self.config.tls.is_some();
        if !has_tls && self.listeners.iter().any(|spec| spec.implicit_tls) {
            return Err(ConfigError::TlsListenerWithoutTls);
        }
        if !has_tls && self.config.require_tls {
            return Err(ConfigError::TlsRequiredWithoutTls);
        }
        if self.config.auth_policy.require && self.config.authenticator.is_none() {
            return Err(ConfigError::AuthRequiredWithoutAuthenticator);
        }
        if self.config.extensions.smtputf8 && !self.config.extensions.eight_bit_mime {
            return Err(ConfigError::Smtputf8WithoutEightBitMime);
        }
        // The banner is peer-visible text on one line.
        self.config.banner = self
            .config
            .banner
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        self.config.limits = self.config.limits.normalized();
        self.config.timeouts = self.config.timeouts.normalized();
        self.config.stress = self.config.stress.clone().normalized();
        self.config.load = Load::new(
            self.config
                .stress
                .threshold(self.config.limits.max_connections),
        );
        let limits = &self.config.limits;
        let limiter = ConnectionLimiter::new(limits.max_connections, limits.max_connections_per_ip);
        Ok(Server {
            shared: Arc::new(Shared {
                backend: self.backend,
                config: self.config,
                listeners: self.listeners,
                reuse_port: self.reuse_port,
                limiter,
            }),
        })
    }
}

struct BoundListener {
    listener: TcpListener,
    addr: SocketAddr,
    implicit_tls: bool,
}

/// A server with its listeners bound, ready to [`serve`](Listening::serve).
pub struct Listening<B: Backend> {
    server: Server<B>,
    listeners: Vec<BoundListener>,
}

impl<B: Backend> std::fmt::Debug for Listening<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listening")
            .field("local_addrs", &self.local_addrs())
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Listening<B> {
    /// The bound addresses, in the order the listeners were added.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|bound| bound.addr).collect()
    }

    /// The server being served.
    pub fn server(&self) -> &Server<B> {
        &self.server
    }

    /// Accepts and serves connections until `shutdown` completes, then shuts
    /// down gracefully: stops accepting, closes idle sessions with
    /// `421 4.3.2`, lets transactions in flight finish until the shutdown
    /// timeout, then closes the rest with `421 4.3.2`.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> io::Result<()> {
        let shared = Arc::clone(&self.server.shared);
        let limiter = shared.limiter.clone();
        let (state_tx, state_rx) = watch::channel(RunState::Running);
        let mut tasks = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let listeners = self.listeners;
        let mut accept_errors = AcceptErrors::default();
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = accept_any(&listeners) => accepted,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            match accepted {
                Ok((stream, peer, implicit_tls)) => {
                    accept_errors.succeeded();
                    let permit = limiter.acquire_total();
                    // Refused connections are not load: they end at once.
                    let load = permit.as_ref().map(|_| {
                        let (guard, began) = shared.config.load.enter();
                        if began {
                            tracing::warn!(
                                connections = shared.config.load.open(),
                                "under stress: shorter timeouts and error limits"
                            );
                        }
                        guard
                    });
                    let shared = Arc::clone(&shared);
                    let limiter = limiter.clone();
                    let state_rx = state_rx.clone();
                    tasks.spawn(async move {
                        let total = permit;
                        accepted_connection(
                            shared,
                            stream,
                            peer,
                            implicit_tls,
                            total.is_some(),
                            limiter,
                            state_rx,
                        )
                        .await;
                        drop(load);
                        drop(total);
                    });
                }
                Err(error) => {
                    let Some(pause) = accept_errors.failed(&error) else {
                        continue;
                    };
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        drop(listeners);
        tracing::info!(connections = tasks.len(), "shutting down");
        let _ = state_tx.send(RunState::Draining);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(shared.config.shutdown_timeout, drain)
            .await
            .is_err()
        {
            let _ = state_tx.send(RunState::Stop);
            let rest = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout(SHUTDOWN_FINAL_GRACE, rest)
                .await
                .is_err()
            {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
            }
        }
        Ok(())
    }
}

impl<B: Backend> Listening<B> {
    /// Serves on a background tokio task and returns a handle to stop it,
    /// like aiosmtpd's `Controller.start()` or go-smtp's `Serve` in a
    /// goroutine. This is the way to run a server inside a test:
    ///
    /// ```
    /// # use smtp_server::{Backend, Body, ConnectionInfo, Envelope, Server, Session, SmtpError};
    /// # struct Sink;
    /// # struct SinkSession;
    /// # impl Session for SinkSession {
    /// #     async fn data(&mut self, _: &Envelope, _: Body) -> Result<(), SmtpError> {
    /// #         Ok(())
    /// #     }
    /// # }
    /// # impl Backend for Sink {
    /// #     type Session = SinkSession;
    /// #     async fn new_session(&self, _: &ConnectionInfo) -> Result<SinkSession, SmtpError> {
    /// #         Ok(SinkSession)
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = Server::builder(Sink)
    ///     .listen("127.0.0.1:0".parse()?)
    ///     .build()?;
    /// let handle = server.bind().await?.spawn();
    /// let addr = handle.local_addr();
    /// // ... connect to `addr` and send mail ...
    /// # let _ = addr;
    /// handle.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Must be called within a tokio runtime.
    pub fn spawn(self) -> ServerHandle {
        let local_addrs = self.local_addrs();
        let (stop, stopped) = oneshot::channel::<()>();
        // The receiver also completes when the sender is dropped, so a
        // dropped handle starts a graceful shutdown.
        let task = tokio::spawn(self.serve(async move {
            let _ = stopped.await;
        }));
        ServerHandle {
            local_addrs,
            stop: Some(stop),
            task,
        }
    }
}

/// A server running on a background task, from [`Listening::spawn`].
///
/// - [`ServerHandle::shutdown`] stops it gracefully and waits: no new
///   connections, idle sessions get `421 4.3.2`, transactions in flight may
///   finish until the shutdown timeout
///   ([`ServerBuilder::shutdown_timeout`]), then the rest get `421 4.3.2`
///   (go-smtp's `Shutdown`).
/// - [`ServerHandle::abort`] stops it at once: listeners and connections
///   are closed without a reply, hooks in flight are cancelled (go-smtp's
///   `Close`).
/// - Dropping the handle starts the same graceful shutdown as
///   [`ServerHandle::shutdown`] without waiting for it; the background task
///   finishes on its own (or when the runtime shuts down).
#[derive(Debug)]
pub struct ServerHandle {
    local_addrs: Vec<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl ServerHandle {
    /// The bound addresses, in the order the listeners were added.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The first bound address: the only one for a server with one
    /// listener.
    ///
    /// # Panics
    ///
    /// If the server has no listener.
    pub fn local_addr(&self) -> SocketAddr {
        *self
            .local_addrs
            .first()
            .expect("the server has at least one listener")
    }

    /// Whether the background task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Shuts down gracefully (see [`Listening::serve`]) and waits until
    /// every connection has ended: at most the shutdown timeout plus a few
    /// seconds for the last `421` replies. The error is an I/O error of the
    /// server, or a panic of its task as [`io::ErrorKind::Other`].
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(error) => Err(io::Error::other(error)),
        }
    }

    /// Stops at once: closes the listeners and every connection without a
    /// reply, cancelling hooks in flight. Returns when the listeners are
    /// closed.
    pub async fn abort(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // Dropping `stop` completes the shutdown future; nothing else to do.
        self.stop.take();
    }
}

/// A listener on `addr` with `SO_REUSEPORT` (and `SO_REUSEADDR`, as
/// [`TcpListener::bind`] sets it), in the current runtime.
fn listen_reusing_port(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    ))]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    // The backlog std and tokio use for `bind`.
    socket.listen(1024)
}

/// Waits for a connection on any listener.
async fn accept_any(listeners: &[BoundListener]) -> io::Result<(TcpStream, SocketAddr, bool)> {
    if listeners.is_empty() {
        return std::future::pending().await;
    }
    poll_fn(|cx| {
        for bound in listeners {
            if let Poll::Ready(result) = bound.listener.poll_accept(cx) {
                return Poll::Ready(
                    result.map(|(stream, peer)| (stream, peer, bound.implicit_tls)),
                );
            }
        }
        Poll::Pending
    })
    .await
}

async fn accepted_connection<B: Backend>(
    shared: Arc<Shared<B>>,
    mut stream: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    under_total_limit: bool,
    limiter: ConnectionLimiter,
    state_rx: watch::Receiver<RunState>,
) {
    let local = match stream.local_addr() {
        Ok(local) => local,
        Err(error) => {
            tracing::debug!(%error, "connection lost before it was served");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut info = ConnectionInfo::new(peer, local);
    let span = tracing::info_span!("smtp", id = %info.id, peer = %peer);
    async move {
        let config = &shared.config;
        if !under_total_limit {
            tracing::warn!("connection limit reached");
            refuse(
                &mut stream,
                config,
                &info,
                "Too many connections, try again later",
            )
            .await;
            return;
        }
        // A dual-stack listener sees an IPv4 peer as `::ffff:a.b.c.d`:
        // match it against IPv4 networks too.
        let (ip, canonical) = (peer.ip(), peer.ip().to_canonical());
        if config
            .proxy_trusted
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
        {
            let header = tokio::time::timeout(
                config.timeouts.proxy_header,
                read_proxy_header(&mut stream, config.limits.proxy_header_max),
            )
            .await;
            match header {
                Ok(Ok(ProxyHeader::Proxied(addresses))) => {
                    tracing::debug!(client = %addresses.source, "PROXY header");
                    info.proxied = Some(addresses);
                }
                Ok(Ok(ProxyHeader::Local | ProxyHeader::Unknown)) => {}
                Ok(Err(error)) => {
                    tracing::info!(%error, "bad PROXY header, closing");
                    return;
                }
                Err(_) => {
                    tracing::info!("no PROXY header in time, closing");
                    return;
                }
            }
        }
        let Some(_per_ip) = limiter.acquire_ip(info.client_addr().ip()) else {
            tracing::warn!(client = %info.client_addr(), "per-address connection limit reached");
            refuse(
                &mut stream,
                config,
                &info,
                "Too many connections from your address",
            )
            .await;
            return;
        };
        if let Err(error) = connection::run(
            &shared.backend,
            config,
            stream,
            info,
            implicit_tls,
            state_rx,
        )
        .await
        {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
    .instrument(span)
    .await;
}

/// Sends `421 4.7.0` and closes, for connections over a limit.
async fn refuse(stream: &mut TcpStream, config: &Config, info: &ConnectionInfo, text: &str) {
    let mut out = BytesMut::new();
    Reply::new(421, EnhancedCode::new(4, 7, 0), text.to_owned()).encode(&mut out);
    if let Some(hook) = &config.transcript {
        Transcript::new(Arc::clone(hook), info.id.clone()).server(&out);
    }
    let write = async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
}

/// Reads exactly one PROXY header, never a byte past it, so the SMTP (or
/// TLS) bytes behind it stay in the socket.
async fn read_proxy_header(stream: &mut TcpStream, max: usize) -> io::Result<ProxyHeader> {
    let mut buffer = Vec::with_capacity(64);
    loop {
        match proxy::decode(&buffer, max) {
            Ok(Some((header, _))) => return Ok(header),
            Ok(None) => {}
            Err(error) => return Err(io::Error::new(io::ErrorKind::InvalidData, error)),
        }
        // A v2 header states its length after 16 octets: read the rest at
        // once. A v1 header ends at CRLF: read octet by octet (at most 107).
        let want = if buffer.len() >= 16 && buffer[0] == b'\r' {
            16 + usize::from(u16::from_be_bytes([buffer[14], buffer[15]])) - buffer.len()
        } else {
            1
        };
        let start = buffer.len();
        buffer.resize(start + want, 0);
        stream.read_exact(&mut buffer[start..]).await?;
    }
}
