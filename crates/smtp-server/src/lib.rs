//! A tokio SMTP, ESMTP and LMTP server library.
//!
//! You bring the policy and the mailbox; the library speaks the protocol
//! and defends against hostile clients. Implement [`Backend`] (opens one
//! [`Session`] per connection) and, for `AUTH`, an [`Authenticator`];
//! configure a [`Server`] with [`Server::builder`]; then bind and serve.
//!
//! ```no_run
//! use futures::StreamExt;
//! use smtp_server::{Backend, Body, ConnectionInfo, Envelope, Server, Session, SmtpError};
//!
//! struct Printer;
//! struct PrinterSession;
//!
//! impl Backend for Printer {
//!     type Session = PrinterSession;
//!     async fn new_session(&self, _info: &ConnectionInfo) -> Result<PrinterSession, SmtpError> {
//!         Ok(PrinterSession)
//!     }
//! }
//!
//! impl Session for PrinterSession {
//!     async fn data(&mut self, envelope: &Envelope, mut body: Body) -> Result<(), SmtpError> {
//!         // Streamed chunk by chunk; `?` turns a body error into its reply.
//!         let mut size = 0;
//!         while let Some(chunk) = body.next().await {
//!             size += chunk?.len();
//!         }
//!         println!("{size} octets from {:?}", envelope.from);
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder(Printer)
//!     .hostname("mx.example.net")
//!     .listen("127.0.0.1:2525".parse()?)
//!     .build()?;
//! let listening = server.bind().await?;
//! println!("listening on {}", listening.local_addrs()[0]);
//! listening.serve(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```
//!
//! A receiver for one domain with STARTTLS and `AUTH` (the README's
//! quickstart; needs the default `argon2` and `self-signed` features):
//!
//! ```no_run
//! use smtp_server::{
//!     Address, AuthPolicy, Backend, Body, ConnectionInfo, EnhancedCode, Envelope, RcptParameters,
//!     Server, Session, SmtpError, StaticUsers, TlsConfig,
//! };
//!
//! struct Inbox;
//!
//! impl Backend for Inbox {
//!     type Session = Inbox;
//!     async fn new_session(&self, _: &ConnectionInfo) -> Result<Inbox, SmtpError> {
//!         Ok(Inbox)
//!     }
//! }
//!
//! impl Session for Inbox {
//!     async fn rcpt(&mut self, _: &Envelope, to: &Address, _: &RcptParameters) -> Result<(), SmtpError> {
//!         match to.domain() {
//!             Some(domain) if domain.eq_ignore_ascii_case("example.net") => Ok(()),
//!             _ => Err(SmtpError::new(550, EnhancedCode::new(5, 1, 1), "No such user here")),
//!         }
//!     }
//!
//!     async fn data(&mut self, envelope: &Envelope, body: Body) -> Result<(), SmtpError> {
//!         let message = body.read_to_end().await?; // bounded by the server's size limit
//!         println!("{} octets from {:?}", message.len(), envelope.identity);
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let certificate = TlsConfig::self_signed(["localhost", "127.0.0.1"])?;
//!     std::fs::write("cert.pem", &certificate.certificate_pem)?; // for the client to trust
//!     let users = StaticUsers::from_plain([("alice@example.net", "wonderland")])?;
//!     let server = Server::builder(Inbox)
//!         .hostname("localhost")
//!         .listen("127.0.0.1:2587".parse()?)
//!         .tls(certificate.tls) // STARTTLS; AUTH is offered only after it
//!         .auth(users, AuthPolicy::new().require(true))
//!         .build()?;
//!     let handle = server.bind().await?.spawn();
//!     tokio::signal::ctrl_c().await?;
//!     handle.shutdown().await?; // lets transactions in flight finish
//!     Ok(())
//! }
//! ```
//!
//! What the library guarantees (the defences and their defaults are listed
//! in `docs/security.md`):
//! - a `250` after the message means the handler returned `Ok` for a
//!   complete body within the size limit and the line-ending policy;
//! - the body reaches the handler in chunks as it arrives, never collected
//!   whole; memory per connection is bounded whatever the client sends;
//! - only `<CRLF>.<CRLF>` ends DATA; bare CR or LF is refused by default;
//! - plaintext pipelined behind `STARTTLS` is discarded, and the session
//!   state is reset after the handshake (RFC 3207 §4.2);
//! - a hook error becomes exactly its reply, a hook panic closes only its
//!   own connection with `421 4.3.0`.

mod auth;
mod buffers;
mod config;
mod connection;
mod error;
mod limiter;
pub mod proxy;
mod received;
mod server;
mod session;
mod throttle;
mod tls;
mod transcript;
mod transport;
mod users;

pub use auth::{Authenticator, SaslStep, invalid_credentials, unsupported_mechanism};
pub use config::{
    AuthPolicy, BareLineEndings, DEFAULT_MAX_AUTH_FAILURES, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_IP, DEFAULT_MAX_ERRORS, DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_RECIPIENTS, DEFAULT_MAX_SASL_STEPS, DEFAULT_PROXY_HEADER_MAX,
    DEFAULT_PROXY_HEADER_TIMEOUT, DEFAULT_SESSION_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_TLS_HANDSHAKE_TIMEOUT, Extensions, Limits, PROXY_HEADER_MIN, TIMEOUT_MIN, Timeouts,
};
pub use config::{
    DEFAULT_MAX_JUNK_COMMANDS, DEFAULT_MIN_DATA_RATE, DEFAULT_STRESS_TIMEOUT, Stress, TIMEOUT_MAX,
};
pub use error::{ConfigError, SmtpError};
pub use received::ReceivedHeader;
pub use server::{Listening, Server, ServerBuilder, ServerHandle};
pub use session::{
    Backend, Body, BodyError, ConnectionInfo, Envelope, Identity, ProxiedAddresses, Recipient,
    Session, TlsInfo,
};
pub use throttle::{
    AuthThrottle, DEFAULT_AUTH_THROTTLE_DELAY, DEFAULT_AUTH_THROTTLE_DELAY_MAX,
    DEFAULT_AUTH_THROTTLE_FAILURES, DEFAULT_AUTH_THROTTLE_LOCKOUT, DEFAULT_AUTH_THROTTLE_TRACKED,
    DEFAULT_AUTH_THROTTLE_WINDOW,
};
#[cfg(feature = "self-signed")]
pub use tls::SelfSigned;
pub use tls::{TlsConfig, TlsError};
pub use transcript::{Direction, LineKind, TranscriptHook, TranscriptLine};
#[cfg(feature = "argon2")]
pub use users::hash_password;
pub use users::{
    DEFAULT_ARGON2_MAX_ITERATIONS, DEFAULT_ARGON2_MAX_MEMORY_KIB, DEFAULT_ARGON2_MAX_PARALLELISM,
    DEFAULT_USERS_FILE_MAX, DEFAULT_USERS_LINE_MAX, DEFAULT_VERIFY_QUEUE_TIMEOUT,
    DEFAULT_VERIFY_TIMEOUT, PasswordLimits, StaticUsers, UsersError, VerifyStats,
};

/// Network ranges for [`ServerBuilder::proxy_protocol`].
pub use ipnet::IpNet;
/// The protocol crate this server is built on, for what the root does not
/// re-export.
pub use smtp_proto;

// The protocol types the hooks use, re-exported so a receiver needs no
// direct dependency on smtp-proto. smtp-client re-exports the shared ones
// (`Address`, `Credentials`, `EnhancedCode`, `Reply`, `BodyType`, `Notify`,
// `Ret`) the same way, so both crates name the same types.
pub use smtp_proto::address::Address;
pub use smtp_proto::command::{BodyType, MailParameters, Notify, RcptParameters, Ret};
pub use smtp_proto::sasl::Credentials;
pub use smtp_proto::{EnhancedCode, Reply};
