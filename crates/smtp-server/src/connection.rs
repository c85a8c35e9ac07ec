//! One connection: the SMTP state machine driven over a framed stream.

use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use smtp_proto::address::Address;
use smtp_proto::body::{BodyCheck, BodySummary};
use smtp_proto::codec::ServerFrame;
use smtp_proto::command::{BodyType, Command, MailParameters, RcptParameters};
use smtp_proto::ehlo::Capabilities;
use smtp_proto::sasl::{self, Credentials, SaslError};
use smtp_proto::{EnhancedCode, Reply};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;

use crate::auth::{DynAuthenticator, SaslStep};
use crate::buffers;
use crate::config::{BareLineEndings, TIMEOUT_MAX};
use crate::error::SmtpError;
use crate::server::Config;
use crate::session::{
    Backend, Body, BodyError, BodyMessage, ConnectionInfo, Envelope, Identity, Recipient, Session,
};
use crate::transcript::{RecordingCodec, Transcript};
use crate::transport::Transport;

/// Chunks queued between the connection and a slow message handler.
/// Together with the read buffer this bounds the memory of a transfer.
const BODY_CHANNEL_CAPACITY: usize = 4;
/// Queued reply bytes above which the server flushes even in the middle of
/// a pipelined batch, so a client that never reads cannot grow the buffer.
const WRITE_HIGH_WATER: usize = 16 * 1024;
/// Time allowed for the last reply and the TLS close at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// `duration` from now; an instant [`TIMEOUT_MAX`] away where the sum
/// would overflow, so no configured timeout can panic.
fn after(duration: Duration) -> Instant {
    after_from(Instant::now(), duration)
}

/// `duration` after `start`, saturating like [`after`].
fn after_from(start: Instant, duration: Duration) -> Instant {
    start
        .checked_add(duration)
        .or_else(|| start.checked_add(TIMEOUT_MAX))
        .unwrap_or(start)
}

/// The time `octets` earn at `rate` octets per second.
fn time_for(octets: usize, rate: u64) -> Duration {
    let nanos = (octets as u128 * 1_000_000_000) / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Shutdown progress, sent by the listening server to every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RunState {
    /// Serving normally.
    Running,
    /// Finishing transactions in flight; idle sessions close.
    Draining,
    /// The deadline passed: every session closes.
    Stop,
}

/// Why the session loop stopped. Any final reply has been sent.
#[derive(Debug)]
enum Ended {
    /// Closed normally, by the client, or by a limit.
    Closed,
    /// A hook panicked; `421 4.3.0` was sent.
    Panicked,
}

type Flow<T = ()> = Result<T, Ended>;

/// What a command asks of the outer loop.
enum Next {
    Continue,
    StartTls,
}

/// How a message transfer ended, seen from the wire.
enum Feed {
    /// The whole message arrived; `violation` says if it broke a policy.
    Complete { violation: Option<BodyError> },
    /// A BDAT transfer was interrupted by a command that ends it.
    Interrupted(Command),
    /// The connection must end; any reply has been sent.
    Closed(Ended),
}

enum HandlerOutput {
    Smtp(Result<(), SmtpError>),
    Lmtp(Vec<Result<(), SmtpError>>),
}

enum Wait {
    /// A command: the command timeout applies, and a draining server closes
    /// the session unless a transaction is in flight.
    Command { in_transaction: bool },
    /// Message data: the data-block timeout applies.
    Body,
}

/// Sends body messages to the handler; notices when it stopped listening.
struct BodySender {
    sender: Option<mpsc::Sender<BodyMessage>>,
    timeout: Duration,
}

/// The handler did not take a chunk in time.
struct Stalled;

impl BodySender {
    async fn send(&mut self, message: BodyMessage) -> Result<(), Stalled> {
        let Some(sender) = &self.sender else {
            return Ok(());
        };
        match timeout(self.timeout, sender.send(message)).await {
            Ok(Ok(())) => Ok(()),
            // The handler dropped the body: it has decided; drain the rest.
            Ok(Err(_)) => {
                self.sender = None;
                Ok(())
            }
            Err(_) => Err(Stalled),
        }
    }

    /// Ends the stream with `message` and stops sending.
    async fn finish(&mut self, message: BodyMessage) -> Result<(), Stalled> {
        let result = self.send(message).await;
        self.sender = None;
        result
    }
}

/// A one-line reply; a `&'static str` text is not copied.
fn reply(code: u16, enhanced: (u8, u16, u16), text: impl Into<Cow<'static, str>>) -> Reply {
    Reply::new(
        code,
        EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2),
        text.into(),
    )
}

fn bad_sequence(text: &'static str) -> Reply {
    reply(503, (5, 5, 1), text)
}

fn unsupported_parameter(text: &'static str) -> Reply {
    reply(555, (5, 5, 4), text)
}

fn internal_error() -> Reply {
    reply(
        451,
        (4, 3, 0),
        "Requested action aborted: local error in processing",
    )
}

fn message_internal_error() -> Reply {
    reply(
        554,
        (5, 3, 0),
        "Message not accepted: local error in processing",
    )
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

/// Runs a hook, turning a panic into `Err`.
async fn guarded<F: Future>(future: F) -> Result<F::Output, Box<dyn Any + Send>> {
    AssertUnwindSafe(future).catch_unwind().await
}

/// Waits until the server reaches `state`; forever if it never will.
async fn reached(receiver: &mut watch::Receiver<RunState>, state: RunState) {
    if receiver
        .wait_for(|current| *current >= state)
        .await
        .is_err()
    {
        std::future::pending::<()>().await;
    }
}

/// Runs one connection to the end.
pub(crate) async fn run<B, S>(
    backend: &B,
    config: &Config,
    stream: S,
    mut info: ConnectionInfo,
    implicit_tls: bool,
    shutdown: watch::Receiver<RunState>,
) -> io::Result<()>
where
    B: Backend,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = after(config.timeouts.session);
    let transport = if implicit_tls {
        match handshake(config, stream, deadline).await {
            Some(tls) => tls,
            None => return Ok(()),
        }
    } else {
        Transport::Plain(stream)
    };
    info.tls = transport.tls_info();
    let transcript = config
        .transcript
        .as_ref()
        .map(|hook| Transcript::new(Arc::clone(hook), info.id.clone()));
    let framed = buffers::framed(
        transport,
        RecordingCodec::new(config.limits.max_line, transcript.is_some()),
    );
    let state = Envelope {
        lmtp: config.lmtp,
        tls: info.tls.clone(),
        client_addr: Some(info.client_addr()),
        session_id: info.id.clone(),
        ..Envelope::default()
    };
    let mut connection = Connection {
        config,
        framed,
        info,
        state,
        greeted: false,
        in_transaction: false,
        errors: 0,
        auth_failures: 0,
        shutdown,
        deadline,
        transcript,
        junk: 0,
        data_deadline: None,
    };
    connection.serve(backend).await;
    Ok(())
}

async fn handshake<S>(config: &Config, stream: S, deadline: Instant) -> Option<Transport<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = config.tls.as_ref()?;
    let acceptor = TlsAcceptor::from(tls.current());
    let limit = after(config.timeouts.tls_handshake).min(deadline);
    match timeout_at(limit, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(Transport::Tls(Box::new(stream))),
        Ok(Err(error)) => {
            tracing::info!(%error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!("TLS handshake timed out");
            None
        }
    }
}

struct Connection<'c, S> {
    config: &'c Config,
    framed: Framed<Transport<S>, RecordingCodec>,
    info: ConnectionInfo,
    /// What the hooks see: the session (greeting, TLS, identity) and the
    /// transaction so far. Kept up to date as commands succeed.
    state: Envelope,
    /// A greeting (`HELO`, `EHLO` or `LHLO`) was accepted.
    greeted: bool,
    /// `MAIL` was accepted and the transaction has not ended.
    in_transaction: bool,
    errors: u32,
    auth_failures: u32,
    shutdown: watch::Receiver<RunState>,
    deadline: Instant,
    transcript: Option<Transcript>,
    /// Commands that did not move a transaction on, since the last message.
    junk: u32,
    /// When the message transfer in progress must have ended, given the
    /// minimum data rate; moved on by every octet received.
    data_deadline: Option<Instant>,
}

impl<'c, S> Connection<'c, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn serve<B: Backend>(&mut self, backend: &B) {
        let mut session = match guarded(backend.new_session(&self.info)).await {
            Ok(Ok(session)) => session,
            Ok(Err(error)) => {
                let refusal = error.to_reply_or(|| reply(421, (4, 3, 0), "Service not available"));
                tracing::info!(reply = %refusal, "session refused");
                let _ = self.send_now(refusal).await;
                self.close_transport().await;
                return;
            }
            Err(payload) => {
                tracing::error!(panic = panic_message(&*payload), "new_session panicked");
                let _ = self
                    .send_now(reply(421, (4, 3, 0), "Service not available"))
                    .await;
                self.close_transport().await;
                return;
            }
        };
        tracing::debug!("session opened");
        let ended = self.greet_and_run(&mut session).await;
        // A session whose hook panicked is not called again.
        if !matches!(ended, Ended::Panicked) {
            let _ = guarded(session.close()).await;
        }
        self.close_transport().await;
        tracing::debug!("session closed");
    }

    async fn close_transport(&mut self) {
        let _ = timeout(CLOSE_TIMEOUT, self.framed.get_mut().shutdown()).await;
    }

    async fn greet_and_run<T: Session>(&mut self, session: &mut T) -> Ended {
        if !self.config.timeouts.greeting_delay.is_zero() {
            tokio::time::sleep(self.config.timeouts.greeting_delay).await;
        }
        // RFC 5321 §3.1 and §4.3.1: the client waits for the greeting. One
        // that talks first is not a conforming client; refuse it.
        if self.talked_early() {
            tracing::info!("client talked before the greeting");
            let _ = self
                .send_now(reply(
                    554,
                    (5, 5, 0),
                    "Protocol error: talking before the greeting",
                ))
                .await;
            return Ended::Closed;
        }
        let protocol = if self.config.lmtp { "LMTP" } else { "ESMTP" };
        let greeting = Reply::plain(
            220,
            format!("{} {protocol} {}", self.config.hostname, self.config.banner),
        );
        if let Err(ended) = self.queue(greeting).await {
            return ended;
        }
        loop {
            match self.run_commands(session).await {
                Ok(Next::Continue) => {}
                Ok(Next::StartTls) => match Box::pin(self.start_tls(session)).await {
                    Ok(()) => {}
                    Err(ended) => return ended,
                },
                Err(ended) => return ended,
            }
        }
    }

    /// Serves commands until one needs the transport changed.
    async fn run_commands<T: Session>(&mut self, session: &mut T) -> Flow<Next> {
        loop {
            let in_transaction = self.in_transaction;
            let frame = self.next_frame(Wait::Command { in_transaction }).await?;
            let next = match frame {
                ServerFrame::Command(Ok(command)) => self.command(command, session).await?,
                ServerFrame::Command(Err(error)) => {
                    tracing::debug!(%error, "bad command");
                    self.protocol_error(error.reply()).await?;
                    Next::Continue
                }
                _ => {
                    tracing::warn!("unexpected frame in command mode");
                    return Err(Ended::Closed);
                }
            };
            if let Next::StartTls = next {
                return Ok(next);
            }
        }
    }

    // ----- output -----

    /// Queues a reply. With PIPELINING, replies are written in one batch
    /// when no complete command is left to read (RFC 2920 §3.1); without
    /// it, at once.
    async fn queue(&mut self, reply: Reply) -> Flow {
        tracing::trace!(code = reply.code(), "reply");
        let start = self.framed.write_buffer().len();
        reply.encode(self.framed.write_buffer_mut());
        if let Some(transcript) = &mut self.transcript {
            transcript.server(&self.framed.write_buffer()[start..]);
        }
        if !self.config.extensions.pipelining
            || self.framed.write_buffer().len() >= WRITE_HIGH_WATER
        {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Flow {
        if self.framed.write_buffer().is_empty() {
            return Ok(());
        }
        let pending = self.framed.write_buffer_mut().split();
        // A client that never reads cannot hold the connection forever.
        let limit = after(self.command_timeout()).min(self.deadline);
        let stream = self.framed.get_mut();
        let write = async {
            stream.write_all(&pending).await?;
            stream.flush().await
        };
        match timeout_at(limit, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                tracing::debug!(%error, "write failed");
                Err(Ended::Closed)
            }
            Err(_) => {
                tracing::info!("write timed out");
                Err(Ended::Closed)
            }
        }
    }

    async fn send_now(&mut self, reply: Reply) -> Flow {
        self.queue(reply).await?;
        self.flush().await
    }

    /// Sends a final reply and ends the session.
    async fn close_with<T>(&mut self, reply: Reply) -> Flow<T> {
        let _ = self.send_now(reply).await;
        Err(Ended::Closed)
    }

    /// Answers a protocol error and counts it; past the limit, closes with
    /// `421 4.7.0` like Postfix's hard error limit.
    async fn protocol_error(&mut self, error: Reply) -> Flow {
        self.queue(error).await?;
        self.count_error().await
    }

    /// Counts a junk command (one that does not move a transaction on);
    /// past the junk limit each one also counts as an error, as Postfix's
    /// `smtpd_junk_command_limit`.
    async fn junk_command(&mut self) -> Flow {
        self.junk = self.junk.saturating_add(1);
        if self.junk > self.max_junk_commands() {
            return self.count_error().await;
        }
        Ok(())
    }

    /// Counts a protocol error whose reply is queued.
    async fn count_error(&mut self) -> Flow {
        self.errors = self.errors.saturating_add(1);
        if self.errors >= self.max_errors() {
            tracing::info!(errors = self.errors, "error limit reached");
            return self
                .close_with(reply(
                    421,
                    (4, 7, 0),
                    format!("{} Error: too many errors", self.config.hostname),
                ))
                .await;
        }
        Ok(())
    }

    /// Turns a hook's panic into `421 4.3.0` and the end of the session.
    async fn hook<O>(&mut self, result: Result<O, Box<dyn Any + Send>>) -> Flow<O> {
        match result {
            Ok(output) => Ok(output),
            Err(payload) => {
                tracing::error!(panic = panic_message(&*payload), "session hook panicked");
                let _ = self
                    .send_now(reply(421, (4, 3, 0), "Internal error, closing connection"))
                    .await;
                Err(Ended::Panicked)
            }
        }
    }

    // ----- load -----

    /// True while the server has at least the stress high-water mark of
    /// connections open.
    fn stressed(&self) -> bool {
        self.config.load.stressed()
    }

    fn command_timeout(&self) -> Duration {
        let normal = self.config.timeouts.command;
        if self.stressed() {
            normal.min(self.config.stress.timeout)
        } else {
            normal
        }
    }

    fn data_block_timeout(&self) -> Duration {
        let normal = self.config.timeouts.data_block;
        if self.stressed() {
            normal.min(self.config.stress.timeout)
        } else {
            normal
        }
    }

    fn max_errors(&self) -> u32 {
        let normal = self.config.limits.max_errors;
        if self.stressed() {
            normal.min(self.config.stress.max_errors)
        } else {
            normal
        }
    }

    fn max_junk_commands(&self) -> u32 {
        let normal = self.config.limits.max_junk_commands;
        if self.stressed() {
            normal.min(self.config.stress.max_junk_commands)
        } else {
            normal
        }
    }

    /// Starts the deadline of one message transfer: the data-block timeout
    /// from now, moved on by every octet received (see
    /// [`Limits::min_data_rate`](crate::Limits::min_data_rate)).
    fn start_data_deadline(&mut self) {
        if self.config.limits.min_data_rate > 0 {
            self.data_deadline = Some(after(self.data_block_timeout()));
        }
    }

    /// `octets` of message data arrived: they earn their time.
    fn data_received(&mut self, octets: usize) {
        if let Some(at) = &mut self.data_deadline {
            let earned = time_for(octets, self.config.limits.min_data_rate);
            *at = at.checked_add(earned).unwrap_or(*at);
        }
    }

    // ----- input -----

    /// The next frame: at once if one is buffered, otherwise after flushing
    /// the queued replies, within the timeout.
    async fn next_frame(&mut self, wait: Wait) -> Flow<ServerFrame> {
        if let Wait::Body = wait {
            buffers::size_read(&mut self.framed, true);
        }
        if let Some(item) = self.framed.next().now_or_never() {
            return self.frame(item).await;
        }
        self.flush().await?;
        buffers::before_wait(&mut self.framed, matches!(wait, Wait::Body));
        let started = Instant::now();
        enum Event {
            Item(Option<io::Result<ServerFrame>>),
            Timeout { too_slow: bool },
            Shutdown,
            Stress,
        }
        let event = loop {
            // Chosen again when stress begins during the wait, so sessions
            // already idle give their slot up too.
            let stressed = self.stressed();
            let (limit, stop_at) = match wait {
                Wait::Command { in_transaction } => (
                    self.command_timeout(),
                    if in_transaction {
                        RunState::Stop
                    } else {
                        RunState::Draining
                    },
                ),
                Wait::Body => (self.data_block_timeout(), RunState::Stop),
            };
            let mut limit = after_from(started, limit).min(self.deadline);
            let mut too_slow = false;
            if let Some(data_deadline) = self.data_deadline
                && data_deadline < limit
            {
                limit = data_deadline;
                too_slow = true;
            }
            let framed = &mut self.framed;
            let shutdown = &mut self.shutdown;
            let load = &self.config.load;
            let event = tokio::select! {
                item = framed.next() => Event::Item(item),
                () = sleep_until(limit) => Event::Timeout { too_slow },
                () = reached(shutdown, stop_at) => Event::Shutdown,
                () = load.until_stressed(), if !stressed => Event::Stress,
            };
            if !matches!(event, Event::Stress) {
                break event;
            }
        };
        match event {
            Event::Item(item) => self.frame(item).await,
            Event::Timeout { too_slow: true } => {
                tracing::info!("message data below the minimum rate");
                self.close_with(reply(
                    421,
                    (4, 4, 2),
                    "Timeout: message data arrives too slowly, closing connection",
                ))
                .await
            }
            Event::Timeout { too_slow: false } => {
                tracing::info!("timeout");
                self.close_with(reply(421, (4, 4, 2), "Timeout, closing connection"))
                    .await
            }
            // The loop above only ends on another event than `Stress`.
            Event::Shutdown | Event::Stress => {
                tracing::info!("closing for shutdown");
                self.close_with(reply(421, (4, 3, 2), "Server shutting down"))
                    .await
            }
        }
    }

    /// True when the client sent something the protocol says it must wait
    /// to send; the frame, if whole, goes to the transcript.
    fn talked_early(&mut self) -> bool {
        match self.framed.next().now_or_never() {
            Some(Some(Ok(frame))) => {
                self.note(&frame);
                true
            }
            Some(_) => true,
            None => !self.framed.read_buffer().is_empty(),
        }
    }

    /// Reports a frame from the client to the transcript.
    fn note(&mut self, frame: &ServerFrame) {
        if let Some(transcript) = &mut self.transcript {
            let line = self.framed.codec_mut().take_line();
            transcript.client(frame, line.as_deref());
        }
    }

    async fn frame(&mut self, item: Option<io::Result<ServerFrame>>) -> Flow<ServerFrame> {
        match item {
            Some(Ok(frame)) => {
                self.note(&frame);
                Ok(frame)
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "read failed");
                Err(Ended::Closed)
            }
            None => {
                tracing::debug!("client closed the connection");
                Err(Ended::Closed)
            }
        }
    }

    // ----- commands -----

    async fn command<T: Session>(&mut self, command: Command, session: &mut T) -> Flow<Next> {
        let mut command = command;
        loop {
            tracing::debug!(verb = command.verb(), "command");
            let interrupted = match command {
                Command::Ehlo { domain } => {
                    self.helo(session, domain, Greeting::Ehlo).await?;
                    None
                }
                Command::Helo { domain } => {
                    self.helo(session, domain, Greeting::Helo).await?;
                    None
                }
                Command::Lhlo { domain } => {
                    self.helo(session, domain, Greeting::Lhlo).await?;
                    None
                }
                Command::Mail { from, params } => {
                    self.mail(session, from, params).await?;
                    None
                }
                Command::Rcpt { to, params } => {
                    self.rcpt(session, to, params).await?;
                    None
                }
                // The message transfer, AUTH and STARTTLS are boxed: their
                // state is large, and held inline it would be part of every
                // idle session's task (see `buffers`).
                Command::Data => {
                    Box::pin(self.data(session)).await?;
                    None
                }
                Command::Bdat { size, last } => Box::pin(self.bdat(session, size, last)).await?,
                Command::Rset => {
                    self.end_transaction();
                    let result = guarded(session.reset()).await;
                    self.hook(result).await?;
                    self.queue(reply(250, (2, 0, 0), "OK")).await?;
                    self.junk_command().await?;
                    None
                }
                Command::Noop => {
                    self.queue(reply(250, (2, 0, 0), "OK")).await?;
                    self.junk_command().await?;
                    None
                }
                Command::Quit => {
                    let result = guarded(session.quit()).await;
                    let answer = match self.hook(result).await? {
                        Ok(()) => reply(
                            221,
                            (2, 0, 0),
                            format!("{} closing connection", self.config.hostname),
                        ),
                        Err(error) => error.to_reply_or(internal_error),
                    };
                    let _ = self.send_now(answer).await;
                    return Err(Ended::Closed);
                }
                Command::Vrfy { argument } => {
                    if let Some(refusal) = self.access_refusal() {
                        self.protocol_error(refusal).await?;
                    } else {
                        let result = guarded(session.vrfy(&argument)).await;
                        let answer = match self.hook(result).await? {
                            Ok(answer) => answer,
                            Err(error) => error.to_reply_or(internal_error),
                        };
                        self.queue(answer).await?;
                    }
                    self.junk_command().await?;
                    None
                }
                Command::Expn { .. } => {
                    self.queue(reply(502, (5, 5, 1), "EXPN not supported"))
                        .await?;
                    self.junk_command().await?;
                    None
                }
                Command::Help { .. } => {
                    self.queue(reply(
                        214,
                        (2, 0, 0),
                        "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
                    ))
                    .await?;
                    self.junk_command().await?;
                    None
                }
                Command::StartTls => return self.starttls_command().await,
                Command::Auth {
                    mechanism,
                    initial_response,
                } => {
                    Box::pin(self.auth(session, mechanism, initial_response)).await?;
                    None
                }
                _ => {
                    self.protocol_error(reply(502, (5, 5, 1), "Command not implemented"))
                        .await?;
                    None
                }
            };
            match interrupted {
                Some(next) => command = next,
                None => return Ok(Next::Continue),
            }
        }
    }

    /// The `530 5.7.0` a mail command gets before TLS or authentication
    /// when those are required (RFC 3207 §4, RFC 4954 §4).
    fn access_refusal(&self) -> Option<Reply> {
        if self.config.require_tls && self.state.tls.is_none() {
            return Some(reply(530, (5, 7, 0), "Must issue a STARTTLS command first"));
        }
        if self.config.auth_policy.require && self.state.identity.is_none() {
            return Some(reply(530, (5, 7, 0), "Authentication required"));
        }
        None
    }

    /// Forgets the transaction: sender, parameters and recipients.
    fn end_transaction(&mut self) {
        self.in_transaction = false;
        self.state.from = None;
        self.state.mail_parameters = MailParameters::default();
        self.state.recipients.clear();
    }

    async fn abandon_transaction<T: Session>(&mut self, session: &mut T) -> Flow {
        if self.in_transaction {
            self.end_transaction();
            let result = guarded(session.reset()).await;
            self.hook(result).await?;
        }
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        let config = self.config;
        let extensions = &config.extensions;
        let encrypted = self.state.tls.is_some();
        let mut capabilities = Capabilities {
            domain: config.hostname.clone(),
            size: extensions.size.then_some(config.limits.max_message_size),
            pipelining: extensions.pipelining,
            eight_bit_mime: extensions.eight_bit_mime,
            chunking: extensions.chunking,
            binary_mime: extensions.chunking && extensions.binary_mime,
            smtputf8: extensions.smtputf8,
            starttls: config.tls.is_some() && !encrypted,
            dsn: extensions.dsn,
            enhanced_status_codes: true,
            // RFC 8689 §4: offered only on a TLS session.
            requiretls: extensions.requiretls && encrypted,
            ..Capabilities::default()
        };
        if let Some(authenticator) = &config.authenticator
            && (encrypted || config.auth_policy.allow_insecure)
            && self.state.identity.is_none()
        {
            capabilities.auth = authenticator.mechanisms();
        }
        capabilities
    }

    async fn helo<T: Session>(&mut self, session: &mut T, domain: String, kind: Greeting) -> Flow {
        match (kind, self.config.lmtp) {
            (Greeting::Lhlo, false) => {
                return self
                    .protocol_error(reply(500, (5, 5, 1), "Command unrecognized"))
                    .await;
            }
            (Greeting::Ehlo | Greeting::Helo, true) => {
                // RFC 2033 §4.1: an LMTP server does not accept HELO/EHLO.
                return self
                    .protocol_error(reply(500, (5, 5, 1), "This is an LMTP server: use LHLO"))
                    .await;
            }
            _ => {}
        }
        // RFC 5321 §4.1.4: a new greeting resets the session like RSET.
        self.abandon_transaction(session).await?;
        let result = guarded(session.helo(&domain)).await;
        if let Err(error) = self.hook(result).await? {
            return self.queue(error.to_reply_or(internal_error)).await;
        }
        self.state.helo = domain;
        self.state.extended = kind != Greeting::Helo;
        self.greeted = true;
        let answer = if self.state.extended {
            self.capabilities().to_reply()
        } else {
            Reply::plain(250, self.config.hostname.clone())
        };
        self.queue(answer).await
    }

    /// Checks MAIL parameters against the extensions offered.
    fn mail_parameter_refusal(&self, parameters: &MailParameters) -> Option<Reply> {
        let extensions = &self.config.extensions;
        if let Some(size) = parameters.size {
            if !extensions.size {
                return Some(unsupported_parameter("SIZE not supported"));
            }
            // RFC 1870 §6.
            if size > self.config.limits.max_message_size {
                return Some(reply(
                    552,
                    (5, 3, 4),
                    "Message size exceeds fixed maximum message size",
                ));
            }
        }
        match parameters.body {
            Some(BodyType::EightBitMime) if !extensions.eight_bit_mime => {
                return Some(unsupported_parameter("8BITMIME not supported"));
            }
            Some(BodyType::BinaryMime) if !(extensions.chunking && extensions.binary_mime) => {
                return Some(unsupported_parameter("BINARYMIME not supported"));
            }
            _ => {}
        }
        if parameters.smtputf8 && !extensions.smtputf8 {
            return Some(unsupported_parameter("SMTPUTF8 not supported"));
        }
        if (parameters.ret.is_some() || parameters.envid.is_some()) && !extensions.dsn {
            return Some(unsupported_parameter("DSN not supported"));
        }
        if parameters.requiretls && !(extensions.requiretls && self.state.tls.is_some()) {
            return Some(unsupported_parameter("REQUIRETLS not supported"));
        }
        if parameters.auth.is_some() && self.config.authenticator.is_none() {
            return Some(unsupported_parameter("AUTH not supported"));
        }
        None
    }

    async fn mail<T: Session>(
        &mut self,
        session: &mut T,
        from: Option<Address>,
        parameters: MailParameters,
    ) -> Flow {
        if !self.greeted {
            let greeting_first = if self.config.lmtp {
                "Send LHLO first"
            } else {
                "Send HELO/EHLO first"
            };
            return self.protocol_error(bad_sequence(greeting_first)).await;
        }
        if let Some(refusal) = self.access_refusal() {
            return self.protocol_error(refusal).await;
        }
        if self.in_transaction {
            return self
                .protocol_error(bad_sequence("Sender already specified"))
                .await;
        }
        if let Some(refusal) = self.mail_parameter_refusal(&parameters) {
            return self.protocol_error(refusal).await;
        }
        let result = guarded(session.mail(&self.state, from.as_ref(), &parameters)).await;
        if let Err(error) = self.hook(result).await? {
            return self.queue(error.to_reply_or(internal_error)).await;
        }
        self.state.from = from;
        self.state.mail_parameters = parameters;
        self.in_transaction = true;
        self.queue(reply(250, (2, 1, 0), "Sender OK")).await
    }

    async fn rcpt<T: Session>(
        &mut self,
        session: &mut T,
        to: Address,
        parameters: RcptParameters,
    ) -> Flow {
        if let Some(refusal) = self.access_refusal() {
            return self.protocol_error(refusal).await;
        }
        if !self.in_transaction {
            return self
                .protocol_error(bad_sequence("Need MAIL before RCPT"))
                .await;
        }
        // RFC 5321 §4.5.3.1.10: the earlier recipients keep their place.
        if self.state.recipients.len() >= self.config.limits.max_recipients {
            return self
                .queue(reply(452, (4, 5, 3), "Too many recipients"))
                .await;
        }
        // RFC 6531 §3.4: a UTF-8 address needs SMTPUTF8 on MAIL.
        if to.is_utf8() && !self.state.mail_parameters.smtputf8 {
            return self
                .queue(reply(
                    553,
                    (5, 6, 7),
                    "UTF-8 address needs the SMTPUTF8 parameter on MAIL",
                ))
                .await;
        }
        if (parameters.notify.is_some() || parameters.orcpt.is_some())
            && !self.config.extensions.dsn
        {
            return self
                .protocol_error(unsupported_parameter("DSN not supported"))
                .await;
        }
        let result = guarded(session.rcpt(&self.state, &to, &parameters)).await;
        if let Err(error) = self.hook(result).await? {
            return self.queue(error.to_reply_or(internal_error)).await;
        }
        self.state.recipients.push(Recipient {
            address: to,
            parameters,
        });
        self.queue(reply(250, (2, 1, 5), "Recipient OK")).await
    }

    /// Why DATA or BDAT cannot start a message now.
    fn message_refusal(&self) -> Option<Reply> {
        if let Some(refusal) = self.access_refusal() {
            return Some(refusal);
        }
        if !self.in_transaction {
            return Some(bad_sequence("Need MAIL command"));
        }
        match self.state.recipients.is_empty() {
            // RFC 2033 §4.2: in LMTP, DATA without a successful RCPT MUST
            // fail with 503; SMTP answers 554 (RFC 5321 §3.3).
            true if self.config.lmtp => Some(bad_sequence("No valid recipients")),
            true => Some(reply(554, (5, 5, 1), "No valid recipients")),
            false => None,
        }
    }

    async fn data<T: Session>(&mut self, session: &mut T) -> Flow {
        if let Some(refusal) = self.message_refusal() {
            return self.protocol_error(refusal).await;
        }
        let binary = self.state.mail_parameters.body == Some(BodyType::BinaryMime);
        if binary {
            // RFC 3030 §3: BINARYMIME content goes with BDAT only.
            return self
                .protocol_error(bad_sequence("BODY=BINARYMIME requires BDAT"))
                .await;
        }
        // RFC 2920 §3.1: DATA ends a pipelined group; the client waits for
        // 354. Message bytes already here were sent blind: refuse them.
        if self.talked_early() {
            tracing::info!("message data before the 354 reply");
            return self
                .close_with(reply(
                    554,
                    (5, 5, 0),
                    "Protocol error: data sent before the 354 reply",
                ))
                .await;
        }
        self.queue(Reply::plain(
            354,
            "Start mail input; end with <CRLF>.<CRLF>",
        ))
        .await?;
        self.flush().await?;
        // Only a BDAT transfer can be interrupted by a command; DATA never
        // hands one back.
        self.transfer(session, Transfer::Data).await.map(drop)
    }

    async fn bdat<T: Session>(
        &mut self,
        session: &mut T,
        size: u64,
        last: bool,
    ) -> Flow<Option<Command>> {
        let refusal = if self.config.extensions.chunking {
            self.message_refusal()
        } else {
            Some(reply(502, (5, 5, 1), "BDAT not supported"))
        };
        if let Some(refusal) = refusal {
            // RFC 3030 §2: the chunk is consumed whatever the reply, so its
            // bytes are never read as commands.
            self.skip_chunk(size).await?;
            self.protocol_error(refusal).await?;
            return Ok(None);
        }
        self.transfer(session, Transfer::Bdat { size, last }).await
    }

    async fn skip_chunk(&mut self, size: u64) -> Flow {
        self.framed.codec_mut().expect_bdat(size);
        self.start_data_deadline();
        let skipped = self.skip_chunk_data().await;
        self.data_deadline = None;
        skipped
    }

    async fn skip_chunk_data(&mut self) -> Flow {
        loop {
            match self.next_frame(Wait::Body).await? {
                ServerFrame::BodyChunk(chunk) => self.data_received(chunk.len()),
                ServerFrame::BdatEnd => return Ok(()),
                _ => {
                    tracing::warn!("unexpected frame in a BDAT chunk");
                    return Err(Ended::Closed);
                }
            }
        }
    }

    /// Streams one message to the handler while reading it, then answers.
    /// Returns a command that interrupted a BDAT transfer, to be served
    /// next.
    async fn transfer<T: Session>(
        &mut self,
        session: &mut T,
        transfer: Transfer,
    ) -> Flow<Option<Command>> {
        let envelope = self.state.clone();
        let binary = envelope.mail_parameters.body == Some(BodyType::BinaryMime);
        let lmtp = self.config.lmtp;
        let handler_timeout = self.config.timeouts.data_termination;
        let (sender, receiver) = mpsc::channel(BODY_CHANNEL_CAPACITY);
        let body = Body::new(receiver);
        self.start_data_deadline();
        let sender = BodySender {
            sender: Some(sender),
            timeout: handler_timeout,
        };
        let (feed, handled) = {
            let handler = guarded(async {
                if lmtp {
                    HandlerOutput::Lmtp(session.lmtp_data(&envelope, body).await)
                } else {
                    HandlerOutput::Smtp(session.data(&envelope, body).await)
                }
            });
            let feeder = async {
                // Owned here, so the handler sees the stream cut short
                // whenever the feeder stops without ending it.
                let mut sender = sender;
                match transfer {
                    Transfer::Data => self.feed_data(&mut sender).await,
                    Transfer::Bdat { size, last } => {
                        self.feed_bdat(&mut sender, size, last, binary).await
                    }
                }
            };
            let mut handler = std::pin::pin!(handler);
            let mut feeder = std::pin::pin!(feeder);
            let mut early = None;
            let feed = loop {
                tokio::select! {
                    output = &mut handler, if early.is_none() => early = Some(output),
                    feed = &mut feeder => break feed,
                }
            };
            let handled = match early {
                Some(output) => Some(output),
                None => timeout(handler_timeout, &mut handler).await.ok(),
            };
            (feed, handled)
        };
        self.end_transaction();
        let closed = matches!(feed, Feed::Closed(_));
        self.data_deadline = None;
        if matches!(feed, Feed::Complete { .. }) {
            // Postfix resets its junk command count after each message.
            self.junk = 0;
        }
        let output = match handled {
            None => {
                tracing::warn!("message handler timed out");
                if !closed {
                    let _ = self
                        .send_now(reply(
                            421,
                            (4, 4, 2),
                            "Timeout waiting for the message handler",
                        ))
                        .await;
                }
                return Err(Ended::Closed);
            }
            Some(Err(payload)) => {
                tracing::error!(panic = panic_message(&*payload), "message handler panicked");
                if !closed {
                    let _ = self
                        .send_now(reply(421, (4, 3, 0), "Internal error, closing connection"))
                        .await;
                }
                return Err(Ended::Panicked);
            }
            Some(Ok(output)) => output,
        };
        match feed {
            Feed::Closed(ended) => Err(ended),
            Feed::Interrupted(command) => {
                let result = guarded(session.reset()).await;
                self.hook(result).await?;
                Ok(Some(command))
            }
            Feed::Complete { violation } => {
                self.answer_message(&envelope, violation, output).await?;
                Ok(None)
            }
        }
    }

    async fn answer_message(
        &mut self,
        envelope: &Envelope,
        violation: Option<BodyError>,
        output: HandlerOutput,
    ) -> Flow {
        // The same replies as `From<BodyError> for SmtpError`.
        let violation_reply =
            violation.map(|violation| SmtpError::from(violation).to_reply_or(internal_error));
        if let Some(refusal) = &violation_reply {
            tracing::info!(reply = %refusal, "message refused");
        }
        if self.config.lmtp {
            // RFC 2033 §4.2: one reply per accepted recipient, in order.
            let results = match output {
                HandlerOutput::Lmtp(results) => results,
                HandlerOutput::Smtp(result) => vec![result; envelope.recipients.len()],
            };
            for (index, recipient) in envelope.recipients.iter().enumerate() {
                let answer = match (&violation_reply, results.get(index)) {
                    (Some(refusal), _) => refusal.clone(),
                    (None, Some(Ok(()))) => reply(
                        250,
                        (2, 0, 0),
                        format!("<{}> Message accepted", recipient.address),
                    ),
                    (None, Some(Err(error))) => error.to_reply_or(message_internal_error),
                    (None, None) => reply(451, (4, 3, 0), "No status from the delivery agent"),
                };
                self.queue(answer).await?;
            }
            return Ok(());
        }
        let result = match output {
            HandlerOutput::Smtp(result) => result,
            HandlerOutput::Lmtp(mut results) => {
                if results.is_empty() {
                    Err(SmtpError::reply(message_internal_error()))
                } else {
                    results.swap_remove(0)
                }
            }
        };
        let answer = match (violation_reply, result) {
            (Some(refusal), _) => refusal,
            // Invariant: 250 only for a complete, clean message the
            // handler accepted.
            (None, Ok(())) => reply(250, (2, 0, 0), "Message accepted"),
            (None, Err(error)) => error.to_reply_or(message_internal_error),
        };
        self.queue(answer).await
    }

    fn violation(&self, summary: &BodySummary, binary: bool) -> Option<BodyError> {
        if summary.too_large {
            Some(BodyError::TooLarge)
        } else if !binary
            && summary.has_bare_line_ending()
            && self.config.bare_line_endings == BareLineEndings::Reject
        {
            Some(BodyError::BareLineEnding)
        } else {
            None
        }
    }

    async fn stalled(&mut self) -> Feed {
        tracing::warn!("message handler stopped reading the body");
        let _ = self
            .send_now(reply(
                421,
                (4, 4, 2),
                "Timeout waiting for the message handler",
            ))
            .await;
        Feed::Closed(Ended::Closed)
    }

    async fn feed_data(&mut self, sender: &mut BodySender) -> Feed {
        self.framed
            .codec_mut()
            .expect_data(self.config.limits.max_message_size);
        loop {
            let frame = match self.next_frame(Wait::Body).await {
                Ok(frame) => frame,
                Err(ended) => return Feed::Closed(ended),
            };
            match frame {
                ServerFrame::BodyChunk(chunk) => {
                    self.data_received(chunk.len());
                    if sender.send(BodyMessage::Chunk(chunk)).await.is_err() {
                        return self.stalled().await;
                    }
                }
                ServerFrame::DataEnd(summary) => {
                    let violation = self.violation(&summary, false);
                    let last = violation.map_or(BodyMessage::End, BodyMessage::Error);
                    if sender.finish(last).await.is_err() {
                        return self.stalled().await;
                    }
                    return Feed::Complete { violation };
                }
                _ => {
                    tracing::warn!("unexpected frame in DATA");
                    return Feed::Closed(Ended::Closed);
                }
            }
        }
    }

    async fn feed_bdat(
        &mut self,
        sender: &mut BodySender,
        size: u64,
        last: bool,
        binary: bool,
    ) -> Feed {
        let max = self.config.limits.max_message_size;
        let mut check = BodyCheck::new(max);
        let mut total: u64 = 0;
        let (mut size, mut last) = (size, last);
        loop {
            total = total.saturating_add(size);
            // RFC 3030 §2: a chunk past the limit is consumed, answered
            // 552, and ends the transaction. Nothing past the limit reaches
            // the handler.
            let too_large = total > max;
            self.framed.codec_mut().expect_bdat(size);
            loop {
                let frame = match self.next_frame(Wait::Body).await {
                    Ok(frame) => frame,
                    Err(ended) => return Feed::Closed(ended),
                };
                match frame {
                    ServerFrame::BodyChunk(chunk) => {
                        self.data_received(chunk.len());
                        if !too_large {
                            check.update(&chunk);
                            if sender.send(BodyMessage::Chunk(chunk)).await.is_err() {
                                return self.stalled().await;
                            }
                        }
                    }
                    ServerFrame::BdatEnd => break,
                    _ => {
                        tracing::warn!("unexpected frame in a BDAT chunk");
                        return Feed::Closed(Ended::Closed);
                    }
                }
            }
            if too_large || last {
                let violation = if too_large {
                    Some(BodyError::TooLarge)
                } else {
                    self.violation(&check.finish(), binary)
                };
                let end = violation.map_or(BodyMessage::End, BodyMessage::Error);
                if sender.finish(end).await.is_err() {
                    return self.stalled().await;
                }
                return Feed::Complete { violation };
            }
            if let Err(ended) = self
                .queue(reply(250, (2, 0, 0), format!("{size} octets received")))
                .await
            {
                return Feed::Closed(ended);
            }
            // Between chunks only BDAT continues the message (RFC 3030 §2).
            loop {
                let frame = match self
                    .next_frame(Wait::Command {
                        in_transaction: true,
                    })
                    .await
                {
                    Ok(frame) => frame,
                    Err(ended) => return Feed::Closed(ended),
                };
                let answered = match frame {
                    ServerFrame::Command(Ok(Command::Bdat {
                        size: next_size,
                        last: next_last,
                    })) => {
                        size = next_size;
                        last = next_last;
                        break;
                    }
                    ServerFrame::Command(Ok(Command::Noop)) => {
                        match self.queue(reply(250, (2, 0, 0), "OK")).await {
                            Ok(()) => self.junk_command().await,
                            Err(ended) => Err(ended),
                        }
                    }
                    ServerFrame::Command(Ok(
                        command @ (Command::Rset
                        | Command::Quit
                        | Command::Ehlo { .. }
                        | Command::Helo { .. }
                        | Command::Lhlo { .. }),
                    )) => return Feed::Interrupted(command),
                    ServerFrame::Command(Ok(_)) => {
                        self.protocol_error(bad_sequence(
                            "Only BDAT, RSET, NOOP or QUIT may follow a BDAT chunk",
                        ))
                        .await
                    }
                    ServerFrame::Command(Err(error)) => self.protocol_error(error.reply()).await,
                    _ => {
                        tracing::warn!("unexpected frame between BDAT chunks");
                        return Feed::Closed(Ended::Closed);
                    }
                };
                if let Err(ended) = answered {
                    return Feed::Closed(ended);
                }
            }
        }
    }

    // ----- STARTTLS -----

    async fn starttls_command(&mut self) -> Flow<Next> {
        if self.config.tls.is_none() {
            self.protocol_error(reply(502, (5, 5, 1), "STARTTLS not supported"))
                .await?;
            return Ok(Next::Continue);
        }
        if self.state.tls.is_some() {
            self.protocol_error(bad_sequence("TLS already active"))
                .await?;
            return Ok(Next::Continue);
        }
        if self.in_transaction {
            self.protocol_error(bad_sequence(
                "STARTTLS not allowed during a mail transaction",
            ))
            .await?;
            return Ok(Next::Continue);
        }
        self.send_now(reply(220, (2, 0, 0), "Ready to start TLS"))
            .await?;
        Ok(Next::StartTls)
    }

    /// Upgrades the transport after `220` to STARTTLS.
    async fn start_tls<T: Session>(&mut self, session: &mut T) -> Flow {
        let detached = buffers::framed(
            Transport::Detached,
            RecordingCodec::new(self.config.limits.max_line, false),
        );
        let parts = std::mem::replace(&mut self.framed, detached).into_parts();
        // RFC 3207 §4.2, CVE-2011-0411: anything the client sent after
        // STARTTLS in plaintext is discarded, never read as a command.
        if !parts.read_buf.is_empty() {
            tracing::info!(
                octets = parts.read_buf.len(),
                "discarding plaintext sent after STARTTLS"
            );
            if let Some(transcript) = &mut self.transcript {
                transcript.client_summary(&format!(
                    "<discarded {} octets sent after STARTTLS>",
                    parts.read_buf.len()
                ));
            }
        }
        let Transport::Plain(stream) = parts.io else {
            return Err(Ended::Closed);
        };
        let Some(transport) = handshake(self.config, stream, self.deadline).await else {
            return Err(Ended::Closed);
        };
        self.state.tls = transport.tls_info();
        self.framed = buffers::framed(
            transport,
            RecordingCodec::new(self.config.limits.max_line, self.transcript.is_some()),
        );
        // RFC 3207 §4.2: forget everything learned before TLS.
        self.state.helo.clear();
        self.state.extended = false;
        self.greeted = false;
        self.state.identity = None;
        self.end_transaction();
        let result = guarded(session.reset()).await;
        self.hook(result).await?;
        tracing::debug!("TLS started");
        Ok(())
    }

    // ----- AUTH -----

    async fn auth<T: Session>(
        &mut self,
        session: &mut T,
        mechanism: String,
        initial_response: Option<String>,
    ) -> Flow {
        let config: &'c Config = self.config;
        let Some(authenticator) = config.authenticator.as_deref() else {
            return self
                .protocol_error(reply(502, (5, 5, 1), "AUTH not supported"))
                .await;
        };
        if !self.state.extended {
            return self.protocol_error(bad_sequence("Send EHLO first")).await;
        }
        if self.state.identity.is_some() {
            return self
                .protocol_error(bad_sequence("Already authenticated"))
                .await;
        }
        if self.in_transaction {
            return self
                .protocol_error(bad_sequence("AUTH not allowed during a mail transaction"))
                .await;
        }
        if self.state.tls.is_none() && !config.auth_policy.allow_insecure {
            // RFC 4954 §6.
            return self
                .protocol_error(reply(
                    538,
                    (5, 7, 11),
                    "Encryption required for requested authentication mechanism",
                ))
                .await;
        }
        let mechanism = mechanism.to_ascii_uppercase();
        if !authenticator.mechanisms().contains(&mechanism) {
            return self
                .protocol_error(reply(504, (5, 5, 4), "Unrecognized authentication type"))
                .await;
        }
        let client_ip = self.info.client_addr().ip();
        // Refused at once while the client's network is locked out; this
        // still counts toward the connection's own limit.
        let outcome = if config.auth_throttle.is_locked(client_ip) {
            tracing::info!(%mechanism, "AUTH refused: too many failures from this network");
            Err(reply(
                454,
                (4, 7, 0),
                "Too many failed authentication attempts, try again later",
            ))
        } else {
            // Only the mechanism is logged: responses carry secrets.
            tracing::debug!(%mechanism, "authentication started");
            self.auth_outcome(authenticator, &mechanism, initial_response.as_deref())
                .await?
        };
        self.auth_finish(session, &mechanism, outcome, client_ip)
            .await
    }

    async fn auth_outcome(
        &mut self,
        authenticator: &dyn DynAuthenticator,
        mechanism: &str,
        initial_response: Option<&str>,
    ) -> Flow<Result<Identity, Reply>> {
        Ok(match mechanism {
            "PLAIN" => self.auth_plain(authenticator, initial_response).await?,
            "LOGIN" => self.auth_login(authenticator, initial_response).await?,
            _ => {
                self.auth_exchange(authenticator, mechanism, initial_response)
                    .await?
            }
        })
    }

    async fn auth_finish<T: Session>(
        &mut self,
        session: &mut T,
        mechanism: &str,
        outcome: Result<Identity, Reply>,
        client_ip: std::net::IpAddr,
    ) -> Flow {
        let config: &'c Config = self.config;
        match outcome {
            Ok(identity) => {
                tracing::info!(user = %identity.name, %mechanism, "authenticated");
                self.queue(reply(235, (2, 7, 0), "Authentication successful"))
                    .await?;
                let result = guarded(session.authenticated(&identity)).await;
                self.hook(result).await?;
                self.state.identity = Some(identity);
                Ok(())
            }
            Err(refusal) => {
                tracing::info!(%mechanism, code = refusal.code(), "authentication failed");
                // Shared by every connection from the network: a growing
                // delay before the reply (Dovecot's auth penalty).
                let delay = config.auth_throttle.record_failure(client_ip);
                if !delay.is_zero() {
                    self.flush().await?;
                    tokio::time::sleep(
                        delay.min(self.deadline.saturating_duration_since(Instant::now())),
                    )
                    .await;
                }
                self.queue(refusal).await?;
                self.auth_failures += 1;
                if self.auth_failures >= config.limits.max_auth_failures {
                    return self
                        .close_with(reply(
                            421,
                            (4, 7, 0),
                            "Too many failed authentication attempts",
                        ))
                        .await;
                }
                Ok(())
            }
        }
    }

    /// Sends a `334` challenge and reads the client's decoded response.
    async fn challenge(&mut self, challenge: String) -> Flow<Result<Vec<u8>, Reply>> {
        self.queue(Reply::plain(334, challenge)).await?;
        self.framed.codec_mut().expect_auth_response();
        match self
            .next_frame(Wait::Command {
                in_transaction: false,
            })
            .await?
        {
            ServerFrame::AuthResponse(Ok(response)) => Ok(Ok(response)),
            ServerFrame::AuthResponse(Err(error)) => Ok(Err(error.reply())),
            _ => {
                tracing::warn!("unexpected frame in AUTH");
                Err(Ended::Closed)
            }
        }
    }

    /// The first response: the initial one if given, else after a `334`.
    async fn first_response(
        &mut self,
        initial: Option<&str>,
        challenge: &str,
    ) -> Flow<Result<Vec<u8>, Reply>> {
        match initial {
            Some(initial) => Ok(sasl::decode_response(initial.as_bytes()).map_err(|e| e.reply())),
            None => self.challenge(challenge.to_owned()).await,
        }
    }

    async fn check_credentials(
        &mut self,
        authenticator: &dyn DynAuthenticator,
        mechanism: &str,
        credentials: Credentials,
    ) -> Flow<Result<Identity, Reply>> {
        let result = guarded(authenticator.authenticate(&self.info, mechanism, &credentials)).await;
        Ok(self.hook(result).await?.map_err(auth_error_reply))
    }

    async fn auth_plain(
        &mut self,
        authenticator: &dyn DynAuthenticator,
        initial: Option<&str>,
    ) -> Flow<Result<Identity, Reply>> {
        let response = match self.first_response(initial, "").await? {
            Ok(response) => response,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let credentials = match sasl::parse_plain(&response) {
            Ok(credentials) => credentials,
            Err(error) => return Ok(Err(error.reply())),
        };
        self.check_credentials(authenticator, "PLAIN", credentials)
            .await
    }

    async fn auth_login(
        &mut self,
        authenticator: &dyn DynAuthenticator,
        initial: Option<&str>,
    ) -> Flow<Result<Identity, Reply>> {
        let user = match self
            .first_response(initial, sasl::LOGIN_USERNAME_CHALLENGE)
            .await?
        {
            Ok(user) => user,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let password = match self
            .challenge(sasl::LOGIN_PASSWORD_CHALLENGE.to_owned())
            .await?
        {
            Ok(password) => password,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let (Ok(user), Ok(password)) = (String::from_utf8(user), String::from_utf8(password))
        else {
            return Ok(Err(SaslError::Malformed.reply()));
        };
        let credentials = Credentials::password(user, password);
        self.check_credentials(authenticator, "LOGIN", credentials)
            .await
    }

    async fn auth_exchange(
        &mut self,
        authenticator: &dyn DynAuthenticator,
        mechanism: &str,
        initial: Option<&str>,
    ) -> Flow<Result<Identity, Reply>> {
        let mut responses = Vec::new();
        if let Some(initial) = initial {
            match sasl::decode_response(initial.as_bytes()) {
                Ok(response) => responses.push(response),
                Err(error) => return Ok(Err(error.reply())),
            }
        }
        for _ in 0..self.config.limits.max_sasl_steps {
            let result = guarded(authenticator.step(&self.info, mechanism, &responses)).await;
            match self.hook(result).await? {
                Ok(SaslStep::Done(identity)) => return Ok(Ok(identity)),
                Ok(SaslStep::Challenge(challenge)) => {
                    match self.challenge(sasl::encode_challenge(&challenge)).await? {
                        Ok(response) => responses.push(response),
                        Err(refusal) => return Ok(Err(refusal)),
                    }
                }
                Err(error) => return Ok(Err(auth_error_reply(error))),
            }
        }
        Ok(Err(reply(
            535,
            (5, 7, 8),
            "Authentication exchange too long",
        )))
    }
}

/// An authenticator's refusal; an internal error is RFC 4954 §6's
/// temporary failure.
fn auth_error_reply(error: SmtpError) -> Reply {
    error.to_reply_or(|| reply(454, (4, 7, 0), "Temporary authentication failure"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Greeting {
    Helo,
    Ehlo,
    Lhlo,
}

#[derive(Debug, Clone, Copy)]
enum Transfer {
    Data,
    Bdat { size: u64, last: bool },
}
