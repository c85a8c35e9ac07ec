//! One client connection: greeting, EHLO, STARTTLS, AUTH, and sending
//! messages with pipelining, BDAT and per-recipient outcomes.
//!
//! The connection keeps its own read buffer and drives
//! `smtp_proto::reply::ReplyDecoder` directly rather than through a
//! `Framed` codec: the STARTTLS check needs to see exactly which bytes
//! arrived behind the `220`, and message bodies go from the encoder's
//! buffer to the socket without another copy into a frame buffer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use smtp_proto::Reply;
use smtp_proto::body::DataEncoder;
use smtp_proto::command::{BodyType, Command, MailParameters, RcptParameters};
use smtp_proto::ehlo::Capabilities;
use smtp_proto::reply::ReplyDecoder;
use smtp_proto::sasl::{self, Credentials};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use smtp_proto::transcript::{self, Direction, LineKind, MASK, TranscriptLine};

use crate::config::{AuthMechanism, ClientConfig, Protocol};
use crate::envelope::{Envelope, RecipientOutcome, SendResult};
use crate::error::{Error, ErrorKind, Step};
use crate::message::Message;
use crate::stream::Stream;
use crate::tls::{self, Tls};

/// At most this many commands go into one pipelined write (RFC 2920 §3.1:
/// a client must not deadlock by writing more than the peer's buffers hold
/// while the peer waits for its replies to be read).
const PIPELINE_BATCH_COMMANDS: usize = 100;

/// At most this many octets of commands go into one pipelined write.
const PIPELINE_BATCH_BYTES: usize = 16 * 1024;

/// Bound on a courtesy `QUIT` sent while giving up on a connection.
const COURTESY_QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// An open connection to an SMTP or LMTP server, ready to send messages.
///
/// Opened with [`Connection::connect`], which performs the greeting, EHLO,
/// STARTTLS and AUTH as configured. Send any number of messages with
/// [`Connection::send`], then [`Connection::quit`].
///
/// ```no_run
/// # async fn run() -> Result<(), smtp_client::Error> {
/// use smtp_client::{ClientConfig, Connection, Envelope, Tls};
///
/// let config = ClientConfig::builder("mail.example.com").tls(Tls::Required).build()?;
/// let mut connection = Connection::connect(&config).await?;
/// let envelope = Envelope::new("alice@example.com", ["bob@example.org"])?;
/// let result = connection
///     .send(&envelope, "Subject: hello\r\n\r\nHi Bob!\r\n")
///     .await?;
/// for rejected in result.rejected() {
///     eprintln!("{} rejected: {:?}", rejected.address, rejected.reply);
/// }
/// connection.quit().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Connection {
    /// `None` only while STARTTLS swaps the plain stream for a TLS one, or
    /// after that swap failed.
    stream: Option<Stream>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    decoder: ReplyDecoder,
    config: ClientConfig,
    greeting: Option<Reply>,
    capabilities: Capabilities,
    /// EHLO (or LHLO) succeeded; false after the HELO fallback.
    extended: bool,
    authenticated: bool,
    usable: bool,
    /// Set while a send is in progress. A send whose future is dropped
    /// part-way leaves it set, so the connection, whose replies are now
    /// out of step, is never used again.
    in_transaction: bool,
    messages: usize,
    opened: Instant,
    last_used: Instant,
    /// Names the connection in transcripts and logs.
    id: String,
    /// The whole-send deadline in force, if any: every step's timeout is
    /// cut to it.
    deadline: Option<Instant>,
}

/// A process-wide counter naming connections `c1`, `c2`, ...
fn next_connection_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("c{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// What [`Connection::plan`] decided for one message.
struct Plan {
    mail_params: MailParameters,
    use_bdat: bool,
    binary: bool,
    pipelining: bool,
    dsn: bool,
    /// Abort if an 8-bit byte shows up (undeclared stream, no `8BITMIME`).
    forbid_eight_bit: bool,
    /// Abort if the body grows past this (the server's `SIZE`).
    size_limit: Option<u64>,
}

/// Where a transaction ended, when it ran to its end.
struct TransactionEnd {
    /// Recipients to retry in a follow-up transaction (after a `452`).
    deferred: Vec<usize>,
    /// The SMTP reply to the end of data, when the message was delivered.
    final_reply: Option<Reply>,
}

impl Connection {
    /// Connects to the configured server: TCP (and TLS for
    /// [`Tls::Implicit`]), the greeting, EHLO (HELO when the server answers
    /// 500 or 502), STARTTLS and a fresh EHLO as the TLS mode asks, then
    /// AUTH when credentials are configured.
    pub async fn connect(config: &ClientConfig) -> Result<Connection, Error> {
        Self::connect_until(config, None).await
    }

    /// [`Connection::connect`] with every step cut to `deadline`.
    pub(crate) async fn connect_until(
        config: &ClientConfig,
        deadline: Option<Instant>,
    ) -> Result<Connection, Error> {
        let inner = &config.inner;
        let timeouts = inner.timeouts;
        let host = inner.host.trim_start_matches('[').trim_end_matches(']');
        let (limit, clipped) = clip(timeouts.connect, deadline);
        let tcp = match tokio::time::timeout(limit, TcpStream::connect((host, inner.port))).await {
            Err(_) => return Err(timeout_error(Step::Connect, clipped)),
            Ok(Err(error)) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    Step::Connect,
                    format!("cannot connect to {}:{}", inner.host, inner.port),
                )
                .with_source(error));
            }
            Ok(Ok(tcp)) => tcp,
        };
        // Commands are batched into whole writes already; Nagle would only
        // delay them.
        let _ = tcp.set_nodelay(true);
        let stream = if inner.tls == Tls::Implicit {
            Stream::Tls(Box::new(tls_handshake(config, tcp, deadline).await?))
        } else {
            Stream::Plain(tcp)
        };
        let now = Instant::now();
        let mut connection = Connection {
            stream: Some(stream),
            read_buf: BytesMut::with_capacity(4096),
            write_buf: BytesMut::with_capacity(4096),
            decoder: ReplyDecoder::with_limits(inner.max_reply_line, inner.max_reply_lines),
            config: config.clone(),
            greeting: None,
            capabilities: Capabilities::default(),
            extended: false,
            authenticated: false,
            usable: true,
            in_transaction: false,
            messages: 0,
            opened: now,
            last_used: now,
            id: next_connection_id(),
            deadline,
        };
        connection.establish().await?;
        connection.deadline = None;
        Ok(connection)
    }

    async fn establish(&mut self) -> Result<(), Error> {
        let timeouts = self.config.inner.timeouts;
        let greeting = self.read_reply(Step::Greeting, timeouts.greeting).await?;
        if greeting.code() != 220 {
            // RFC 5321 §3.1: after a 554 greeting the client should QUIT.
            self.courtesy_quit().await;
            return Err(Error::rejected(Step::Greeting, greeting));
        }
        self.greeting = Some(greeting);
        self.hello().await?;
        match self.config.inner.tls {
            Tls::None | Tls::Implicit => {}
            Tls::Opportunistic => {
                if self.extended && self.capabilities.starttls {
                    self.starttls(false).await?;
                }
            }
            Tls::Required => {
                if !(self.extended && self.capabilities.starttls) {
                    self.courtesy_quit().await;
                    return Err(Error::new(
                        ErrorKind::TlsUnavailable,
                        Step::StartTls,
                        "TLS is required but the server does not offer STARTTLS",
                    ));
                }
                self.starttls(true).await?;
            }
        }
        if self.config.inner.credentials.is_some()
            && let Err(error) = self.authenticate().await
        {
            if self.usable {
                self.courtesy_quit().await;
            }
            return Err(error);
        }
        Ok(())
    }

    /// EHLO, or HELO when the server does not know EHLO (RFC 5321 §3.2:
    /// 500 or 502); LHLO for LMTP (RFC 2033 §4.1), without fallback.
    async fn hello(&mut self) -> Result<(), Error> {
        let name = self.config.inner.hello_name.clone();
        let timeout = self.config.inner.timeouts.command;
        let command = match self.config.inner.protocol {
            Protocol::Smtp => Command::Ehlo {
                domain: name.clone(),
            },
            Protocol::Lmtp => Command::Lhlo {
                domain: name.clone(),
            },
        };
        self.queue(&command)?;
        self.flush(Step::Hello, timeout).await?;
        let reply = self.read_reply(Step::Hello, timeout).await?;
        if reply.code() == 250 {
            self.capabilities = Capabilities::from_reply(&reply);
            self.extended = true;
            return Ok(());
        }
        let fallback =
            self.config.inner.protocol == Protocol::Smtp && matches!(reply.code(), 500 | 502);
        if !fallback {
            self.courtesy_quit().await;
            return Err(Error::rejected(Step::Hello, reply));
        }
        self.queue(&Command::Helo { domain: name })?;
        self.flush(Step::Hello, timeout).await?;
        let reply = self.read_reply(Step::Hello, timeout).await?;
        if reply.code() != 250 {
            self.courtesy_quit().await;
            return Err(Error::rejected(Step::Hello, reply));
        }
        self.capabilities = Capabilities::default();
        self.extended = false;
        Ok(())
    }

    /// STARTTLS (RFC 3207). With `required`, a refusal is an error;
    /// otherwise the session goes on in plaintext.
    async fn starttls(&mut self, required: bool) -> Result<(), Error> {
        let timeout = self.config.inner.timeouts.command;
        self.queue(&Command::StartTls)?;
        self.flush(Step::StartTls, timeout).await?;
        let reply = self.read_reply(Step::StartTls, timeout).await?;
        if reply.code() != 220 {
            if required {
                self.courtesy_quit().await;
                return Err(Error::new(
                    ErrorKind::TlsUnavailable,
                    Step::StartTls,
                    "TLS is required but the server refused STARTTLS",
                )
                .with_reply(reply));
            }
            tracing::debug!(reply = %reply, "STARTTLS refused; going on without TLS");
            return Ok(());
        }
        // RFC 3207 §4.2 (CVE-2011-0411): bytes that follow the 220 were
        // sent in plaintext and could be taken for replies inside TLS.
        if !self.read_buf.is_empty() || self.decoder.is_partial() {
            self.usable = false;
            self.stream = None;
            return Err(Error::new(
                ErrorKind::Protocol,
                Step::StartTls,
                "the server sent data after its 220 reply to STARTTLS (response injection); connection closed",
            ));
        }
        let Some(Stream::Plain(tcp)) = self.stream.take() else {
            self.usable = false;
            return Err(Error::new(
                ErrorKind::Protocol,
                Step::StartTls,
                "STARTTLS on a connection that already uses TLS",
            ));
        };
        let tls = match tls_handshake(&self.config, tcp, self.deadline).await {
            Ok(tls) => tls,
            Err(error) => {
                self.usable = false;
                return Err(error);
            }
        };
        self.stream = Some(Stream::Tls(Box::new(tls)));
        // RFC 3207 §4.2: forget everything learnt before TLS and ask again.
        self.decoder = ReplyDecoder::with_limits(
            self.config.inner.max_reply_line,
            self.config.inner.max_reply_lines,
        );
        self.capabilities = Capabilities::default();
        self.extended = false;
        self.hello().await
    }

    /// AUTH (RFC 4954) with the mechanism chosen in the configuration, or
    /// else the first of PLAIN, LOGIN (passwords) or XOAUTH2 (tokens) that
    /// the server offers.
    async fn authenticate(&mut self) -> Result<(), Error> {
        let Some(credentials) = self.config.inner.credentials.clone() else {
            return Ok(());
        };
        let starttls_hint = if !self.is_encrypted() && self.capabilities.starttls {
            "; the server offers STARTTLS: use Tls::Required (or Tls::Opportunistic)"
        } else {
            ""
        };
        if !self.is_encrypted() && !self.config.inner.allow_plaintext_auth {
            return Err(Error::new(
                ErrorKind::Auth,
                Step::Auth,
                format!(
                    "refusing to send credentials without TLS (allow_plaintext_auth is off){starttls_hint}"
                ),
            ));
        }
        if !self.extended || self.capabilities.auth.is_empty() {
            let message = if starttls_hint.is_empty() {
                "the server does not offer AUTH".to_owned()
            } else {
                // RFC 3207 §4 / RFC 4954 §4: servers commonly announce AUTH
                // only once the session is encrypted.
                format!(
                    "the server does not offer AUTH on this plaintext connection, but it offers \
                     STARTTLS and AUTH is usually offered only after it{starttls_hint}"
                )
            };
            return Err(Error::new(ErrorKind::Auth, Step::Auth, message));
        }
        let mechanism = self.choose_mechanism(&credentials)?;
        let timeout = self.config.inner.timeouts.command;
        match (mechanism, &credentials) {
            (
                AuthMechanism::Plain,
                Credentials::Password {
                    authzid,
                    username,
                    password,
                    ..
                },
            ) => {
                let response = sasl::plain_response(authzid.as_deref(), username, password);
                self.auth_with_response("PLAIN", &response).await
            }
            (
                AuthMechanism::Login,
                Credentials::Password {
                    username, password, ..
                },
            ) => {
                self.queue(&Command::Auth {
                    mechanism: "LOGIN".to_owned(),
                    initial_response: None,
                })?;
                self.flush(Step::Auth, timeout).await?;
                for value in [username.as_str(), password.as_str()] {
                    let reply = self.read_reply(Step::Auth, timeout).await?;
                    if reply.code() != 334 {
                        return self.auth_outcome(reply).await;
                    }
                    self.queue_secret_line(&sasl::login_response(value));
                    self.flush(Step::Auth, timeout).await?;
                }
                let reply = self.read_reply(Step::Auth, timeout).await?;
                self.auth_outcome(reply).await
            }
            (
                AuthMechanism::XOAuth2,
                Credentials::OAuth2 {
                    username, token, ..
                },
            ) => {
                let response = sasl::xoauth2_response(username, token);
                self.auth_with_response("XOAUTH2", &response).await
            }
            // The builder refuses a mechanism that cannot carry the
            // credentials, and the automatic choice never picks one.
            (mechanism, _) => Err(Error::invalid(format!(
                "AUTH {mechanism} cannot send these credentials"
            ))),
        }
    }

    /// Runs a one-response mechanism. The response goes on the AUTH line
    /// when the line fits in 512 octets; otherwise it waits for the
    /// server's empty `334` challenge (RFC 4954 §4: a client MUST NOT send
    /// an initial response that would make the command line too long).
    async fn auth_with_response(&mut self, mechanism: &str, response: &str) -> Result<(), Error> {
        let timeout = self.config.inner.timeouts.command;
        // "AUTH " + mechanism + " " + response + CRLF.
        let line_length = 5 + mechanism.len() + 1 + response.len() + 2;
        if line_length <= smtp_proto::limits::COMMAND_LINE_MIN {
            self.queue_auth(mechanism, response)?;
            self.flush(Step::Auth, timeout).await?;
            let reply = self.read_reply(Step::Auth, timeout).await?;
            return self.auth_outcome(reply).await;
        }
        self.queue(&Command::Auth {
            mechanism: mechanism.to_owned(),
            initial_response: None,
        })?;
        self.flush(Step::Auth, timeout).await?;
        let reply = self.read_reply(Step::Auth, timeout).await?;
        if reply.code() != 334 {
            return self.auth_outcome(reply).await;
        }
        self.queue_secret_line(response);
        self.flush(Step::Auth, timeout).await?;
        let reply = self.read_reply(Step::Auth, timeout).await?;
        self.auth_outcome(reply).await
    }

    /// The configured mechanism when the server offers it (never another
    /// one in its place), or the first the server offers that fits the
    /// credentials.
    fn choose_mechanism(&self, credentials: &Credentials) -> Result<AuthMechanism, Error> {
        if let Some(chosen) = self.config.inner.auth_mechanism {
            if self.capabilities.supports_auth(chosen.as_str()) {
                return Ok(chosen);
            }
            return Err(Error::new(
                ErrorKind::Auth,
                Step::Auth,
                format!(
                    "AUTH {chosen} was chosen but the server offers only {}",
                    self.capabilities.auth.join(" ")
                ),
            ));
        }
        let candidates: &[AuthMechanism] = match credentials {
            Credentials::Password { .. } => &[AuthMechanism::Plain, AuthMechanism::Login],
            Credentials::OAuth2 { .. } => &[AuthMechanism::XOAuth2],
            // The builder refuses credentials of any other kind.
            _ => &[],
        };
        candidates
            .iter()
            .copied()
            .find(|mechanism| self.capabilities.supports_auth(mechanism.as_str()))
            .ok_or_else(|| {
                let wanted: Vec<&str> = candidates.iter().map(|m| m.as_str()).collect();
                self.no_common_mechanism(&wanted.join(" or "))
            })
    }

    fn no_common_mechanism(&self, wanted: &str) -> Error {
        Error::new(
            ErrorKind::Auth,
            Step::Auth,
            format!(
                "no common AUTH mechanism: need {wanted}, the server offers {}",
                self.capabilities.auth.join(" ")
            ),
        )
    }

    /// Ends an AUTH exchange: 235 is success; a 334 at this point is a
    /// challenge we have no answer for (XOAUTH2 sends its error details
    /// that way), answered with an empty line or `*` to get the final reply.
    async fn auth_outcome(&mut self, mut reply: Reply) -> Result<(), Error> {
        let timeout = self.config.inner.timeouts.command;
        if reply.code() == 334 {
            // RFC 4954 §4: "*" cancels; XOAUTH2 servers expect an empty line
            // after their error challenge. Either way a final reply follows.
            self.queue_secret_line("");
            self.flush(Step::Auth, timeout).await?;
            reply = self.read_reply(Step::Auth, timeout).await?;
        }
        if reply.code() == 235 {
            self.authenticated = true;
            return Ok(());
        }
        Err(Error::new(ErrorKind::Auth, Step::Auth, "authentication failed").with_reply(reply))
    }

    /// Sends one message.
    ///
    /// Every recipient is tried; the result lists who accepted the message
    /// and who rejected it, with the server's reply. The send is an error
    /// only when no recipient accepted the message (see
    /// [`ErrorKind::RecipientsRejected`]) or the transaction failed as a
    /// whole. Recipients refused with `452` (too many recipients, RFC 5321
    /// §4.5.3.1.10) after others were accepted are sent in a follow-up
    /// transaction; a message from a reader or stream cannot be sent twice,
    /// so for it they are reported as rejected instead.
    ///
    /// An error carries every recipient's outcome ([`Error::recipients`]);
    /// [`RecipientOutcomes`](crate::RecipientOutcomes) reads them from
    /// either result.
    ///
    /// With [`Timeouts::send_deadline`](crate::Timeouts::send_deadline) the
    /// whole send ends by that deadline, whatever the per-step timeouts.
    ///
    /// # Cancellation
    ///
    /// Dropping the future before it completes is safe for the program: the
    /// connection notices that its last send never finished, refuses any
    /// further command ([`Connection::is_usable`] is false) and should be
    /// dropped. For the message it means: dropped before the end of data was
    /// written, nothing is delivered (the server discards an unfinished
    /// transaction when the connection closes, RFC 5321 §3.3); dropped while
    /// waiting for the reply to the end of data, the server may have
    /// accepted it, so treat the outcome as unknown and retry later (a
    /// duplicate is better than a loss, RFC 5321 §6.1).
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        message: impl Into<Message>,
    ) -> Result<SendResult, Error> {
        let mut message = message.into();
        let deadline = self
            .config
            .inner
            .timeouts
            .send_deadline
            .map(|limit| Instant::now() + limit);
        self.send_until(envelope, &mut message, deadline)
            .await
            .map_err(|error| error.for_envelope(envelope))
    }

    /// Sends with every step cut to `deadline`.
    pub(crate) async fn send_until(
        &mut self,
        envelope: &Envelope,
        message: &mut Message,
        deadline: Option<Instant>,
    ) -> Result<SendResult, Error> {
        self.deadline = deadline;
        let result = self.send_message(envelope, message).await;
        self.deadline = None;
        result
    }

    async fn send_message(
        &mut self,
        envelope: &Envelope,
        message: &mut Message,
    ) -> Result<SendResult, Error> {
        envelope.validate()?;
        if !self.is_usable() {
            return Err(Error::new(
                ErrorKind::Closed,
                Step::Mail,
                "the connection is no longer usable",
            ));
        }
        if !self.read_buf.is_empty() || self.decoder.is_partial() {
            // Bytes nobody asked for would be read as the replies to this
            // transaction: the connection is out of step. Usually it is a
            // 421 from a server closing an idle connection, which a pool
            // answers by sending on a fresh one.
            let unsolicited = self.decoder.decode(&mut self.read_buf).ok().flatten();
            self.abort();
            let error = Error::new(
                ErrorKind::Closed,
                Step::Mail,
                "the server spoke before the transaction began; the connection is closed",
            );
            return Err(match unsolicited {
                Some(reply) => error.with_reply(reply),
                None => error,
            });
        }
        let plan = self.plan(envelope, message)?;
        self.in_transaction = true;
        self.messages += 1;
        let count = envelope.recipients().len();
        let mut outcomes: Vec<Option<RecipientOutcome>> = vec![None; count];
        let mut pending: Vec<usize> = (0..count).collect();
        let mut transactions = 0;
        let mut final_reply = None;
        let mut failure = None;
        while !pending.is_empty() {
            transactions += 1;
            let result = self
                .transaction(envelope, &pending, message, &plan, &mut outcomes)
                .await;
            match result {
                Ok(end) => {
                    if end.final_reply.is_some() {
                        final_reply = end.final_reply;
                    }
                    pending = end.deferred;
                    if !pending.is_empty() && !message.is_replayable() {
                        // The body was consumed: the deferred recipients
                        // keep their 452 as the outcome.
                        break;
                    }
                }
                Err(error) => {
                    for &index in &pending {
                        let slot = &mut outcomes[index];
                        // Rejections decided in this transaction stand; the
                        // rest (accepted at RCPT, or never answered) failed
                        // with the transaction.
                        // So do deliveries already confirmed (an LMTP
                        // recipient's own 250 before the connection failed):
                        // reporting them failed would invite a duplicate.
                        let keep = slot.as_ref().is_some_and(|outcome| {
                            outcome.accepted
                                || outcome
                                    .reply
                                    .as_ref()
                                    .is_some_and(|reply| !reply.is_positive_completion())
                        });
                        if !keep {
                            // Only a refusal decides a recipient; after an
                            // unexpected reply (a second 354, say) its fate
                            // is unknown, which is no reply at all.
                            let refusal = error
                                .reply()
                                .filter(|reply| reply.is_transient() || reply.is_permanent());
                            *slot = Some(RecipientOutcome {
                                address: envelope.recipients()[index].address().clone(),
                                accepted: false,
                                reply: refusal.cloned(),
                            });
                        }
                    }
                    failure = Some(error);
                    break;
                }
            }
        }
        self.in_transaction = false;
        self.last_used = Instant::now();
        let recipients: Vec<RecipientOutcome> = outcomes
            .into_iter()
            .enumerate()
            .map(|(index, outcome)| {
                outcome.unwrap_or_else(|| RecipientOutcome {
                    address: envelope.recipients()[index].address().clone(),
                    accepted: false,
                    reply: None,
                })
            })
            .collect();
        if recipients.iter().any(|outcome| outcome.accepted) {
            return Ok(SendResult {
                recipients,
                reply: final_reply,
                transactions,
                dsn_offered: plan.dsn,
            });
        }
        Err(match failure {
            Some(error) => error.with_recipients(recipients),
            None => {
                let last = recipients
                    .iter()
                    .rev()
                    .find_map(|outcome| outcome.reply.clone());
                let mut error = Error::new(
                    ErrorKind::RecipientsRejected,
                    Step::Rcpt,
                    "every recipient was rejected",
                );
                if let Some(reply) = last {
                    error = error.with_reply(reply);
                }
                error.with_recipients(recipients)
            }
        })
    }

    /// Checks the message against the server's capabilities and chooses the
    /// parameters, before anything is written.
    fn plan(&self, envelope: &Envelope, message: &Message) -> Result<Plan, Error> {
        let caps = &self.capabilities;
        let unsupported = |text: String| Error::new(ErrorKind::Unsupported, Step::Validate, text);
        let use_bdat = self.config.inner.chunking && self.extended && caps.chunking;
        let mut params = MailParameters::default();
        let mut forbid_eight_bit = false;
        let mut binary = false;
        match message.detected_body_type() {
            Some(BodyType::BinaryMime) => {
                if !(use_bdat && caps.binary_mime) {
                    return Err(unsupported(
                        "the message is BINARYMIME but the server does not offer BINARYMIME with CHUNKING"
                            .into(),
                    ));
                }
                binary = true;
                params.body = Some(BodyType::BinaryMime);
            }
            Some(BodyType::EightBitMime) => {
                if !caps.eight_bit_mime {
                    return Err(unsupported(
                        "the message has 8-bit content but the server does not offer 8BITMIME"
                            .into(),
                    ));
                }
                params.body = Some(BodyType::EightBitMime);
            }
            Some(BodyType::SevenBit) => {
                // Declared explicitly: say so when the server knows BODY=.
                if message.declared_body_type().is_some() && caps.eight_bit_mime {
                    params.body = Some(BodyType::SevenBit);
                }
            }
            None => {
                if caps.eight_bit_mime {
                    params.body = Some(BodyType::EightBitMime);
                } else {
                    forbid_eight_bit = true;
                }
            }
        }
        if envelope.needs_smtputf8() {
            if !caps.smtputf8 {
                return Err(unsupported(
                    "the envelope needs SMTPUTF8 but the server does not offer it".into(),
                ));
            }
            params.smtputf8 = true;
        }
        if envelope.requiretls() {
            if !self.is_encrypted() || !caps.requiretls {
                return Err(unsupported(
                    "REQUIRETLS needs a TLS connection to a server offering REQUIRETLS".into(),
                ));
            }
            params.requiretls = true;
        }
        // RFC 1870 §6: SIZE 0 (or no number) means no fixed limit.
        let size_limit = caps.size.filter(|&limit| limit > 0);
        if let (Some(limit), Some(size)) = (size_limit, message.len())
            && size > limit
        {
            return Err(unsupported(format!(
                "the message ({size} octets) exceeds the server's SIZE limit of {limit} octets"
            )));
        }
        if caps.size.is_some() {
            params.size = message.len();
        }
        // RFC 3461 §4: DSN parameters only go to a server that offers DSN.
        let dsn = caps.dsn;
        if dsn {
            params.ret = envelope.ret();
            params.envid = envelope.envid().map(str::to_owned);
        }
        Ok(Plan {
            mail_params: params,
            use_bdat,
            binary,
            pipelining: self.config.inner.pipelining && self.extended && caps.pipelining,
            dsn,
            forbid_eight_bit,
            size_limit,
        })
    }

    /// One mail transaction for the `pending` recipients. Fills the
    /// outcomes it decides; on `Err` the transaction failed as a whole.
    async fn transaction(
        &mut self,
        envelope: &Envelope,
        pending: &[usize],
        message: &mut Message,
        plan: &Plan,
        outcomes: &mut [Option<RecipientOutcome>],
    ) -> Result<TransactionEnd, Error> {
        let timeouts = self.config.inner.timeouts;
        // Encode everything first, so an invalid value fails before any of
        // the transaction is written.
        let mut commands = Vec::with_capacity(pending.len() + 1);
        commands.push(encode(&Command::Mail {
            from: envelope.from().cloned(),
            params: plan.mail_params.clone(),
        })?);
        for &index in pending {
            let recipient = &envelope.recipients()[index];
            let params = if plan.dsn {
                RcptParameters {
                    notify: recipient.notify_value(),
                    orcpt: recipient.orcpt_value().cloned(),
                }
            } else {
                RcptParameters::default()
            };
            commands.push(encode(&Command::Rcpt {
                to: recipient.address().clone(),
                params,
            })?);
        }
        let data_command = encode(&Command::Data)?;

        let batch_commands = if plan.pipelining {
            PIPELINE_BATCH_COMMANDS
        } else {
            1
        };
        let mut mail_accepted = false;
        let mut accepted: Vec<usize> = Vec::new();
        let mut deferred: Vec<usize> = Vec::new();
        let mut data_reply: Option<Reply> = None;
        for &index in pending {
            outcomes[index] = None;
        }
        let mut next = 0;
        while next < commands.len() {
            let start = next;
            while next < commands.len()
                && next - start < batch_commands
                && (next == start
                    || self.write_buf.len() + commands[next].len() <= PIPELINE_BATCH_BYTES)
            {
                self.queue_encoded(&commands[next]);
                next += 1;
            }
            // RFC 2920 §3.1: DATA ends the last group of commands.
            let with_data = plan.pipelining && !plan.use_bdat && next == commands.len();
            if with_data {
                self.queue_encoded(&data_command);
            }
            let step = if start == 0 { Step::Mail } else { Step::Rcpt };
            self.flush(step, timeouts.mail).await?;
            for position in start..next {
                if position == 0 {
                    let reply = self.read_reply(Step::Mail, timeouts.mail).await?;
                    mail_accepted = reply.is_positive_completion();
                    if !mail_accepted {
                        // Read the replies already asked for (503s) to
                        // stay in step, then give up on the transaction.
                        for _ in 1..(next - start) {
                            self.read_reply(Step::Rcpt, timeouts.rcpt).await?;
                        }
                        if with_data {
                            let reply = self
                                .read_reply(Step::Data, timeouts.data_initiation)
                                .await?;
                            self.end_refused_data(reply).await?;
                        }
                        return Err(Error::rejected(Step::Mail, reply));
                    }
                    continue;
                }
                let index = pending[position - 1];
                let reply = self.read_reply(Step::Rcpt, timeouts.rcpt).await?;
                if reply.is_positive_completion() {
                    accepted.push(index);
                } else if is_too_many_recipients(&reply) && !accepted.is_empty() {
                    // RFC 5321 §4.5.3.1.10: too many recipients for this
                    // message; they go in another transaction. Only when
                    // this one delivers to someone, so every transaction
                    // makes progress.
                    deferred.push(index);
                }
                outcomes[index] = Some(RecipientOutcome {
                    address: envelope.recipients()[index].address().clone(),
                    accepted: false,
                    reply: Some(reply),
                });
            }
            if with_data {
                data_reply = Some(
                    self.read_reply(Step::Data, timeouts.data_initiation)
                        .await?,
                );
            }
            if let Some(&first) = deferred.first()
                && next < commands.len()
            {
                // Stop asking: every recipient not sent yet waits for
                // the next transaction, with the 452 that stopped us.
                let reply = outcomes[first]
                    .as_ref()
                    .and_then(|outcome| outcome.reply.clone());
                for &index in &pending[next - 1..] {
                    deferred.push(index);
                    outcomes[index] = Some(RecipientOutcome {
                        address: envelope.recipients()[index].address().clone(),
                        accepted: false,
                        reply: reply.clone(),
                    });
                }
                break;
            }
        }

        if accepted.is_empty() {
            if let Some(reply) = data_reply {
                self.end_refused_data(reply).await?;
            }
            if mail_accepted {
                self.reset_after_failure().await;
            }
            return Ok(TransactionEnd {
                deferred,
                final_reply: None,
            });
        }

        if !plan.use_bdat {
            let reply = match data_reply {
                Some(reply) => reply,
                None => {
                    self.queue_encoded(&data_command);
                    self.flush(Step::Data, timeouts.data_initiation).await?;
                    self.read_reply(Step::Data, timeouts.data_initiation)
                        .await?
                }
            };
            if reply.code() != 354 {
                if !(reply.is_transient() || reply.is_permanent()) {
                    // A 250 (or any other code) where only 354, 4xx or 5xx
                    // may come: the server is out of step. Nothing of the
                    // message went out; the connection is not used again.
                    self.abort();
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        Step::Data,
                        format!(
                            "the server answered DATA with {} instead of 354; the message was not sent",
                            reply.code()
                        ),
                    )
                    .with_reply(reply));
                }
                self.reset_after_failure().await;
                return Err(Error::rejected(Step::Data, reply));
            }
            self.write_data_body(message, plan).await?;
        } else {
            self.write_bdat_body(message, plan).await?;
        }
        let final_reply = self.read_final_replies(&accepted, outcomes).await?;
        Ok(TransactionEnd {
            deferred,
            final_reply,
        })
    }

    /// Reads the reply to the end of data: one for SMTP, one per accepted
    /// recipient for LMTP (RFC 2033 §4.2).
    async fn read_final_replies(
        &mut self,
        accepted: &[usize],
        outcomes: &mut [Option<RecipientOutcome>],
    ) -> Result<Option<Reply>, Error> {
        let timeout = self.config.inner.timeouts.data_termination;
        match self.config.inner.protocol {
            Protocol::Smtp => {
                let reply = self.read_reply(Step::DataEnd, timeout).await?;
                if !reply.is_positive_completion() {
                    return Err(self.final_reply_error(reply));
                }
                for &index in accepted {
                    if let Some(outcome) = outcomes[index].as_mut() {
                        outcome.accepted = true;
                        outcome.reply = Some(reply.clone());
                    }
                }
                Ok(Some(reply))
            }
            Protocol::Lmtp => {
                for &index in accepted {
                    let reply = self.read_reply(Step::DataEnd, timeout).await?;
                    if reply.code() < 400 && !reply.is_positive_completion() {
                        return Err(self.final_reply_error(reply));
                    }
                    if let Some(outcome) = outcomes[index].as_mut() {
                        outcome.accepted = reply.is_positive_completion();
                        outcome.reply = Some(reply);
                    }
                }
                Ok(None)
            }
        }
    }

    /// The error for a reply to the end of data that is not a success: a
    /// 4xx or 5xx refuses the message; anything else (a second 354, a 1xx)
    /// is a protocol error whose outcome is unknown, so it is transient
    /// (RFC 5321 §6.1: a duplicate is better than a loss) and the
    /// connection, now out of step, is closed.
    fn final_reply_error(&mut self, reply: Reply) -> Error {
        if reply.is_transient() || reply.is_permanent() {
            return Error::rejected(Step::DataEnd, reply);
        }
        self.abort();
        Error::new(
            ErrorKind::Protocol,
            Step::DataEnd,
            format!(
                "the server answered the end of data with {}; whether the message was delivered is unknown",
                reply.code()
            ),
        )
        .with_reply(reply)
    }

    /// A pipelined DATA got its reply although no recipient was accepted.
    /// If the server still said 354, RFC 2920 §3.1 has the client end the
    /// (empty) message with a lone "." and take whatever reply comes.
    async fn end_refused_data(&mut self, reply: Reply) -> Result<(), Error> {
        if reply.code() == 354 {
            self.write_buf.put_slice(b".\r\n");
            self.log(Direction::Client, LineKind::Wire, ".");
            let timeouts = self.config.inner.timeouts;
            self.flush(Step::DataEnd, timeouts.data_block).await?;
            self.read_reply(Step::DataEnd, timeouts.data_termination)
                .await?;
        }
        Ok(())
    }

    /// RSET after a transaction that did not complete; a connection whose
    /// RSET fails is not used again.
    async fn reset_after_failure(&mut self) {
        if self.usable && self.reset_transaction().await.is_err() {
            self.usable = false;
        }
    }

    /// Streams the body after 354: CRLF-normalised and dot-stuffed on the
    /// fly, then `<CRLF>.<CRLF>`.
    async fn write_data_body(&mut self, message: &mut Message, plan: &Plan) -> Result<(), Error> {
        let block_timeout = self.config.inner.timeouts.data_block;
        let chunk_size = self.config.inner.chunk_size;
        let mut encoder = DataEncoder::new();
        let mut out = BytesMut::with_capacity(chunk_size + chunk_size / 8);
        let mut offset = 0;
        let mut total: u64 = 0;
        loop {
            let block = self
                .read_message_block(message, &mut offset, chunk_size)
                .await?;
            if block.is_empty() {
                break;
            }
            total += block.len() as u64;
            self.check_streamed(&block, total, plan)?;
            encoder.encode(&block, &mut out);
            // Written once a chunk's worth is encoded; the rest goes out
            // with the end of data, so a small message is one write.
            if out.len() >= chunk_size {
                self.write_body(&out, block_timeout).await?;
                out.clear();
            }
        }
        encoder.finish(&mut out);
        self.write_body(&out, block_timeout).await?;
        self.log(
            Direction::Client,
            LineKind::Summary,
            &format!("<message body: {total} octets>"),
        );
        Ok(())
    }

    /// Sends the body as BDAT chunks (RFC 3030); the last carries `LAST`.
    /// Its reply is read by the caller.
    async fn write_bdat_body(&mut self, message: &mut Message, plan: &Plan) -> Result<(), Error> {
        let timeouts = self.config.inner.timeouts;
        let chunk_size = self.config.inner.chunk_size;
        let mut encoder = DataEncoder::without_dot_stuffing();
        let mut chunk = BytesMut::with_capacity(chunk_size + chunk_size / 8);
        let mut offset = 0;
        let mut total: u64 = 0;
        let mut unacknowledged = 0;
        loop {
            chunk.clear();
            let mut last = false;
            while chunk.len() < chunk_size {
                let block = self
                    .read_message_block(message, &mut offset, chunk_size - chunk.len())
                    .await?;
                if block.is_empty() {
                    last = true;
                    break;
                }
                total += block.len() as u64;
                self.check_streamed(&block, total, plan)?;
                if plan.binary {
                    chunk.extend_from_slice(&block);
                } else {
                    encoder.encode(&block, &mut chunk);
                }
            }
            if last && !plan.binary {
                encoder.finish(&mut chunk);
            }
            let header = if last {
                format!("BDAT {} LAST", chunk.len())
            } else {
                format!("BDAT {}", chunk.len())
            };
            self.log(Direction::Client, LineKind::Wire, &header);
            self.log(
                Direction::Client,
                LineKind::Summary,
                &format!("<BDAT chunk: {} octets>", chunk.len()),
            );
            self.write_buf.put_slice(header.as_bytes());
            self.write_buf.put_slice(b"\r\n");
            self.flush(Step::Body, timeouts.data_block).await?;
            self.write_body(&chunk, timeouts.data_block).await?;
            if last {
                // Replies to earlier chunks come before the reply to LAST,
                // which the caller reads.
                while unacknowledged > 0 {
                    unacknowledged -= 1;
                    self.bdat_chunk_reply(unacknowledged + 1).await?;
                }
                return Ok(());
            }
            unacknowledged += 1;
            // With PIPELINING one chunk may be in flight while the next is
            // prepared (RFC 3030 §4.2), so a slow link stays busy; without
            // it every chunk waits for its reply.
            let window = if plan.pipelining { 1 } else { 0 };
            if unacknowledged > window {
                unacknowledged -= 1;
                self.bdat_chunk_reply(unacknowledged).await?;
            }
        }
    }

    /// Reads the reply to a non-final BDAT chunk. On a failure the replies
    /// to the `in_flight` chunks sent after it are read too, then RSET
    /// (RFC 3030 §2: the server discards the transaction's data).
    async fn bdat_chunk_reply(&mut self, in_flight: usize) -> Result<(), Error> {
        let timeout = self.config.inner.timeouts.data_initiation;
        let reply = self.read_reply(Step::Data, timeout).await?;
        if reply.is_positive_completion() {
            return Ok(());
        }
        for _ in 0..in_flight {
            self.read_reply(Step::Data, timeout).await?;
        }
        self.reset_after_failure().await;
        Err(Error::rejected(Step::Data, reply))
    }

    async fn read_message_block(
        &mut self,
        message: &mut Message,
        offset: &mut usize,
        max: usize,
    ) -> Result<bytes::Bytes, Error> {
        message.read_block(offset, max).await.map_err(|error| {
            // Mid-body there is no way to end the message without
            // delivering what was sent so far: drop the connection.
            self.abort();
            Error::new(ErrorKind::Io, Step::Body, "reading the message failed").with_source(error)
        })
    }

    /// Checks what is only known while streaming; on failure the connection
    /// is closed before the end of data, so nothing is delivered.
    fn check_streamed(&mut self, block: &[u8], total: u64, plan: &Plan) -> Result<(), Error> {
        if let Some(limit) = plan.size_limit
            && total > limit
        {
            self.abort();
            return Err(Error::new(
                ErrorKind::Unsupported,
                Step::Body,
                format!(
                    "the message exceeds the server's SIZE limit of {limit} octets; sending aborted"
                ),
            ));
        }
        if plan.forbid_eight_bit && block.iter().any(|&byte| byte >= 0x80) {
            self.abort();
            return Err(Error::new(
                ErrorKind::Unsupported,
                Step::Body,
                "the message has 8-bit content but the server does not offer 8BITMIME; sending aborted",
            ));
        }
        Ok(())
    }

    /// Makes the connection unusable and closes it without ending the
    /// message.
    fn abort(&mut self) {
        self.usable = false;
        self.stream = None;
    }

    /// `RSET`: abandons the current transaction.
    pub async fn rset(&mut self) -> Result<(), Error> {
        self.check_in_step(Step::Rset)?;
        self.reset_transaction().await
    }

    /// RSET from inside a send, where the transaction flag is set.
    async fn reset_transaction(&mut self) -> Result<(), Error> {
        let timeout = self.config.inner.timeouts.command;
        self.queue(&Command::Rset)?;
        self.flush(Step::Rset, timeout).await?;
        let reply = self.read_reply(Step::Rset, timeout).await?;
        if !reply.is_positive_completion() {
            self.usable = false;
            return Err(Error::rejected(Step::Rset, reply));
        }
        Ok(())
    }

    /// `NOOP`: checks that the server is still there. A connection whose
    /// NOOP fails should be dropped.
    pub async fn noop(&mut self) -> Result<Reply, Error> {
        self.noop_within(self.config.inner.timeouts.command).await
    }

    /// [`Connection::noop`] with its own time limit, for liveness checks
    /// that must not wait a whole command timeout on a dead peer.
    pub(crate) async fn noop_within(&mut self, timeout: Duration) -> Result<Reply, Error> {
        self.check_in_step(Step::Noop)?;
        self.queue(&Command::Noop)?;
        self.flush(Step::Noop, timeout).await?;
        let reply = self.read_reply(Step::Noop, timeout).await?;
        if !reply.is_positive_completion() {
            self.usable = false;
            return Err(Error::rejected(Step::Noop, reply));
        }
        self.last_used = Instant::now();
        Ok(reply)
    }

    /// Refuses to talk on a connection whose last send never finished.
    fn check_in_step(&self, step: Step) -> Result<(), Error> {
        if self.in_transaction {
            return Err(Error::new(
                ErrorKind::Closed,
                step,
                "the previous send did not finish; the connection is out of step",
            ));
        }
        Ok(())
    }

    /// `QUIT`, then closes the connection.
    pub async fn quit(mut self) -> Result<(), Error> {
        self.quit_in_place().await
    }

    /// [`Connection::quit`] for a connection that cannot be moved; leaves
    /// it unusable.
    pub(crate) async fn quit_in_place(&mut self) -> Result<(), Error> {
        if !self.is_usable() {
            return Ok(());
        }
        // Nothing depends on the reply to QUIT: a server slow to give it
        // must not hold the caller (or a pool slot) for a command timeout.
        let timeout = self
            .config
            .inner
            .timeouts
            .command
            .min(COURTESY_QUIT_TIMEOUT);
        self.queue(&Command::Quit)?;
        self.flush(Step::Quit, timeout).await?;
        let reply = self.read_reply(Step::Quit, timeout).await;
        if let Some(stream) = self.stream.as_mut() {
            let _ = tokio::time::timeout(COURTESY_QUIT_TIMEOUT, stream.shutdown()).await;
        }
        self.usable = false;
        match reply {
            Ok(reply) if reply.code() == 221 => Ok(()),
            Ok(reply) => Err(Error::rejected(Step::Quit, reply)),
            Err(error) => Err(error),
        }
    }

    /// Writes `QUIT` without waiting for the reply, while giving up on a
    /// connection that is still in step (RFC 5321 §4.1.1.10).
    async fn courtesy_quit(&mut self) {
        if !self.usable {
            return;
        }
        if self.queue(&Command::Quit).is_ok() {
            let _ = self.flush(Step::Quit, COURTESY_QUIT_TIMEOUT).await;
        }
        self.usable = false;
    }

    /// The `220` greeting.
    pub fn greeting(&self) -> Option<&Reply> {
        self.greeting.as_ref()
    }

    /// What the server announced in its last EHLO reply (empty after the
    /// HELO fallback).
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Whether the server answered EHLO (or LHLO) rather than only HELO.
    pub fn is_extended(&self) -> bool {
        self.extended
    }

    /// Whether the connection uses TLS.
    pub fn is_encrypted(&self) -> bool {
        self.stream.as_ref().is_some_and(Stream::is_tls)
    }

    /// Whether AUTH succeeded.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether the connection can send another message: false after an
    /// I/O error, a timeout, a 421, a protocol error, a failed RSET or an
    /// aborted body.
    pub fn is_usable(&self) -> bool {
        self.usable && self.stream.is_some() && !self.in_transaction
    }

    /// How many messages were sent (or attempted) on this connection.
    pub fn messages_sent(&self) -> usize {
        self.messages
    }

    /// When the connection was opened.
    pub fn opened_at(&self) -> Instant {
        self.opened
    }

    /// When the connection last finished a send or a NOOP.
    pub fn last_used_at(&self) -> Instant {
        self.last_used
    }

    /// The connection's name in transcripts and logs (`c1`, `c2`, ...,
    /// unique in the process): the
    /// [`TranscriptLine::session_id`](smtp_proto::transcript::TranscriptLine::session_id)
    /// of its lines.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The configuration the connection was opened with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    // ---- framing ----

    /// Encodes `command` into the write buffer and the transcript.
    fn queue(&mut self, command: &Command) -> Result<(), Error> {
        let encoded = encode(command)?;
        self.queue_encoded(&encoded);
        Ok(())
    }

    fn queue_encoded(&mut self, encoded: &[u8]) {
        self.write_buf.put_slice(encoded);
        if self.has_transcript() {
            let line = encoded.strip_suffix(b"\r\n").unwrap_or(encoded);
            self.log(Direction::Client, LineKind::Wire, &transcript::escape(line));
        }
    }

    /// `AUTH <mechanism> <initial response>`, masked in the transcript.
    fn queue_auth(&mut self, mechanism: &str, response: &str) -> Result<(), Error> {
        let encoded = encode(&Command::Auth {
            mechanism: mechanism.to_owned(),
            initial_response: Some(response.to_owned()),
        })?;
        self.write_buf.put_slice(&encoded);
        if self.has_transcript() {
            let line = encoded.strip_suffix(b"\r\n").unwrap_or(&encoded);
            let masked = transcript::mask_auth_command(line);
            self.log(Direction::Client, LineKind::Wire, &masked);
        }
        Ok(())
    }

    /// A SASL response line (base64, so never CR or LF), masked in the
    /// transcript.
    fn queue_secret_line(&mut self, line: &str) {
        self.write_buf.put_slice(line.as_bytes());
        self.write_buf.put_slice(b"\r\n");
        self.log(
            Direction::Client,
            LineKind::Wire,
            if line.is_empty() { "" } else { MASK },
        );
    }

    /// Writes the buffered commands.
    async fn flush(&mut self, step: Step, timeout: Duration) -> Result<(), Error> {
        let mut buffer = std::mem::take(&mut self.write_buf);
        let result = self.write_bytes(&buffer, step, timeout).await;
        buffer.clear();
        self.write_buf = buffer;
        result
    }

    /// Writes message data in full within the data block timeout.
    async fn write_body(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), Error> {
        self.write_bytes(bytes, Step::Body, timeout).await
    }

    /// Writes `bytes` in full within `timeout`.
    async fn write_bytes(
        &mut self,
        bytes: &[u8],
        step: Step,
        timeout: Duration,
    ) -> Result<(), Error> {
        if bytes.is_empty() {
            return Ok(());
        }
        let Some(stream) = self.stream.as_mut() else {
            self.usable = false;
            return Err(Error::closed(step));
        };
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        let (timeout, clipped) = clip(timeout, self.deadline);
        match run_with_timeout(timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                self.usable = false;
                Err(Error::io(step, error))
            }
            Err(()) => {
                self.abort();
                Err(timeout_error(step, clipped))
            }
        }
    }

    /// Reads one complete reply within `timeout`. A 421 (the server is
    /// closing the connection, RFC 5321 §3.8) is returned as an error.
    async fn read_reply(&mut self, step: Step, timeout: Duration) -> Result<Reply, Error> {
        let max_line = self.config.inner.max_reply_line;
        let Some(stream) = self.stream.as_mut() else {
            self.usable = false;
            return Err(Error::closed(step));
        };
        let decoder = &mut self.decoder;
        let read_buf = &mut self.read_buf;
        let read = async {
            loop {
                match decoder.decode(read_buf) {
                    Ok(Some(reply)) => return Ok(reply),
                    Ok(None) => {}
                    Err(error) => {
                        return Err(Error::new(
                            ErrorKind::Protocol,
                            step,
                            format!("unusable reply during {step}"),
                        )
                        .with_source(error));
                    }
                }
                // The decoder keeps at most one partial line in the buffer;
                // this bound holds even if that ever changed.
                if read_buf.len() > max_line {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        step,
                        format!("reply line longer than {max_line} octets"),
                    ));
                }
                read_buf.reserve(4096);
                match stream.read_buf(read_buf).await {
                    Ok(0) => return Err(Error::closed(step)),
                    Ok(_) => {}
                    Err(error) => return Err(Error::io(step, error)),
                }
            }
        };
        let (timeout, clipped) = clip(timeout, self.deadline);
        let reply = match run_with_timeout(timeout, read).await {
            Err(()) => {
                self.abort();
                return Err(timeout_error(step, clipped));
            }
            Ok(Err(error)) => {
                self.usable = false;
                return Err(error);
            }
            Ok(Ok(reply)) => reply,
        };
        if self.has_transcript() {
            let mut wire = BytesMut::new();
            reply.encode(&mut wire);
            let wire = String::from_utf8_lossy(&wire).into_owned();
            for line in wire.split_terminator("\r\n") {
                let text = transcript::escape(line.as_bytes());
                self.log(Direction::Server, LineKind::Wire, &text);
            }
        }
        if reply.code() == 421 {
            self.usable = false;
            return Err(Error::rejected(step, reply));
        }
        Ok(reply)
    }

    fn has_transcript(&self) -> bool {
        self.config.inner.transcript.is_some()
            || tracing::enabled!(target: "smtp_client::transcript", tracing::Level::TRACE)
    }

    fn log(&self, direction: Direction, kind: LineKind, text: &str) {
        let line = TranscriptLine::new(&self.id, direction, kind, text);
        tracing::trace!(target: "smtp_client::transcript", connection = %self.id, "{line}");
        if let Some(transcript) = &self.config.inner.transcript {
            transcript(&line);
        }
    }
}

fn encode(command: &Command) -> Result<BytesMut, Error> {
    let mut buffer = BytesMut::new();
    command.encode(&mut buffer).map_err(|error| {
        Error::invalid(format!("cannot write {}", command.verb())).with_source(error)
    })?;
    Ok(buffer)
}

async fn run_with_timeout<T>(timeout: Duration, future: impl Future<Output = T>) -> Result<T, ()> {
    tokio::time::timeout(timeout, future).await.map_err(|_| ())
}

/// `timeout`, or less when `deadline` comes first (then `true`).
fn clip(timeout: Duration, deadline: Option<Instant>) -> (Duration, bool) {
    match deadline {
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < timeout {
                (left, true)
            } else {
                (timeout, false)
            }
        }
        None => (timeout, false),
    }
}

/// The error for a step that ran out of time: its own timeout, or the
/// whole-send deadline.
fn timeout_error(step: Step, deadline: bool) -> Error {
    if deadline {
        Error::new(
            ErrorKind::Timeout,
            step,
            format!("the send deadline passed during {step}"),
        )
    } else {
        Error::timeout(step)
    }
}

async fn tls_handshake(
    config: &ClientConfig,
    tcp: TcpStream,
    deadline: Option<Instant>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    let inner = &config.inner;
    let Some(tls_config) = inner.tls_config.as_ref() else {
        return Err(Error::new(
            ErrorKind::Tls,
            Step::TlsHandshake,
            "TLS is switched off in this configuration",
        ));
    };
    let name = tls::server_name(&inner.tls_server_name)?;
    let connector = TlsConnector::from(Arc::clone(tls_config));
    let (limit, clipped) = clip(inner.timeouts.tls_handshake, deadline);
    match run_with_timeout(limit, connector.connect(name, tcp)).await {
        Err(()) => Err(timeout_error(Step::TlsHandshake, clipped)),
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
            let message = if inner.tls == Tls::Implicit && is_plaintext_reply(&error) {
                // A plaintext "220 ..." greeting read as a TLS record.
                "TLS handshake failed: the server greeted in plain text: use STARTTLS \
                 (port 587/25) or implicit TLS on 465"
            } else {
                "TLS handshake failed"
            };
            Err(Error::new(ErrorKind::Tls, Step::TlsHandshake, message).with_source(error))
        }
        Ok(Err(error)) => Err(Error::io(Step::TlsHandshake, error)),
    }
}

/// Whether a handshake failed because the peer sent something that is not a
/// TLS record at all, as a plaintext SMTP greeting is.
fn is_plaintext_reply(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|inner| {
            matches!(
                inner,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
            )
        })
}

/// A reply to RCPT that means "too many recipients for this message": 452,
/// or the older 552 that RFC 5321 §4.5.3.1.10 asks clients to treat the
/// same way (unless its enhanced code says something else, such as 5.2.2
/// mailbox full).
fn is_too_many_recipients(reply: &Reply) -> bool {
    match reply.code() {
        452 => true,
        552 => reply
            .enhanced()
            .is_none_or(|code| (code.subject, code.detail) == (5, 3)),
        _ => false,
    }
}
