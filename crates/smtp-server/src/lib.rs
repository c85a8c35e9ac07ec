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
//!         let mut size = 0;
//!         while let Some(chunk) = body.next().await {
//!             size += chunk.map_err(SmtpError::other)?.len();
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
mod tls;
mod transcript;
mod transport;

pub use auth::{Authenticator, SaslStep, invalid_credentials, unsupported_mechanism};
pub use config::{
    AuthPolicy, BareLineEndings, DEFAULT_MAX_AUTH_FAILURES, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_IP, DEFAULT_MAX_ERRORS, DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_SASL_STEPS, DEFAULT_PROXY_HEADER_MAX, DEFAULT_PROXY_HEADER_TIMEOUT,
    DEFAULT_SESSION_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_TLS_HANDSHAKE_TIMEOUT, Extensions,
    Limits, PROXY_HEADER_MIN, TIMEOUT_MIN, Timeouts,
};
pub use error::{ConfigError, SmtpError};
pub use received::ReceivedHeader;
pub use server::{Listening, Server, ServerBuilder};
pub use session::{
    Backend, Body, BodyError, ConnectionInfo, Envelope, Identity, ProxiedAddresses, Recipient,
    Session, TlsInfo,
};
pub use tls::{TlsConfig, TlsError};
pub use transcript::{Direction, LineKind, TranscriptLine};

/// Network ranges for [`ServerBuilder::proxy_protocol`].
pub use ipnet::IpNet;
/// The protocol crate this server is built on, for its types in the hooks
/// (`Address`, `MailParameters`, `Reply`, ...).
pub use smtp_proto;
