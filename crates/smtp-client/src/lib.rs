//! A tokio SMTP and LMTP client with TLS, AUTH, pipelining, per-recipient
//! results and a connection pool.
//!
//! - [`ClientConfig`] says where and how to connect: TLS mode ([`Tls`]:
//!   none, opportunistic or required `STARTTLS`, implicit TLS) with
//!   certificates in [`TlsConfig`], [`Credentials`] for `AUTH` (with an
//!   optional [`AuthMechanism`] to pin the mechanism), [`Timeouts`]
//!   for every step, SMTP or LMTP ([`Protocol`]), and an optional
//!   [`Transcript`] of the protocol lines.
//! - [`Connection`] is one open session: [`Connection::send`] takes an
//!   [`Envelope`] and a [`Message`] (bytes, an `AsyncRead` or a stream,
//!   streamed through the dot-stuffing encoder, never collected whole) and
//!   returns a [`SendResult`] with one [`RecipientOutcome`] per recipient.
//! - [`Client`] sends one message per connection; [`Pool`] shares
//!   connections between tasks.
//! - [`Error`] carries an [`ErrorKind`], the [`Step`] that failed and the
//!   server's reply; [`Error::is_transient`] says whether to retry.
//!
//! What the client does by itself: EHLO with a HELO fallback, a fresh EHLO
//! after STARTTLS, refusing replies injected behind the `220` to STARTTLS,
//! `PIPELINING` (MAIL, every RCPT and DATA in one write), `CHUNKING`
//! (`BDAT`), `SIZE`, `8BITMIME`, `BINARYMIME`, `SMTPUTF8`, `DSN` and
//! `REQUIRETLS` from the server's capabilities, and a follow-up transaction
//! for recipients refused with `452` after others were accepted.
//!
//! ```no_run
//! # async fn run() -> Result<(), smtp_client::Error> {
//! use smtp_client::{Client, ClientConfig, Credentials, Envelope, Tls};
//!
//! let config = ClientConfig::builder("smtp.example.com")
//!     .port(587)
//!     .tls(Tls::Required)
//!     .credentials(Credentials::password("alice@example.com", "secret"))
//!     .build()?;
//! let envelope = Envelope::new(
//!     Some("alice@example.com".parse().unwrap()),
//!     ["bob@example.org".parse().unwrap()],
//! )?;
//! let result = Client::new(config)
//!     .send(&envelope, "From: alice@example.com\r\nSubject: hi\r\n\r\nHello\r\n")
//!     .await?;
//! assert!(result.is_complete());
//! # Ok(())
//! # }
//! ```

mod config;
mod connection;
mod envelope;
mod error;
mod message;
mod pool;
mod stream;
mod tls;

pub use config::{
    AuthMechanism, ClientConfig, ClientConfigBuilder, Credentials, DEFAULT_CHUNK_SIZE, Direction,
    MIN_CHUNK_SIZE, Protocol, Timeouts, Transcript,
};
pub use connection::Connection;
pub use envelope::{
    ENVID_MAX, Envelope, EnvelopeBuilder, ORCPT_MAX, Recipient, RecipientOutcome, SendResult,
};
pub use error::{Error, ErrorKind, Step};
pub use message::Message;
pub use pool::{Pool, PoolConfig, PoolStats};
pub use tls::{Tls, TlsConfig};

/// The protocol crate this client is built on, for what the root does not
/// re-export.
pub use smtp_proto;

// The protocol types the API uses, re-exported so callers need not depend
// on smtp-proto directly. smtp-server re-exports the shared ones
// (`Address`, `EnhancedCode`, `Reply`, `BodyType`, `Notify`, `Ret`) the same
// way, so both crates name the same types.
pub use smtp_proto::address::Address;
pub use smtp_proto::command::{BodyType, Notify, Ret};
pub use smtp_proto::ehlo::Capabilities;
pub use smtp_proto::{EnhancedCode, Reply};

/// Sends one message per connection: connect, send, `QUIT`.
///
/// For many messages use a [`Pool`], or keep a [`Connection`].
#[derive(Debug, Clone)]
pub struct Client {
    config: ClientConfig,
}

impl Client {
    /// A client for the server in `config`.
    pub fn new(config: ClientConfig) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Opens a connection (see [`Connection::connect`]).
    pub async fn connect(&self) -> Result<Connection, Error> {
        Connection::connect(&self.config).await
    }

    /// Validates the envelope, connects, sends the message and quits.
    pub async fn send(
        &self,
        envelope: &Envelope,
        message: impl Into<Message>,
    ) -> Result<SendResult, Error> {
        envelope.validate()?;
        let mut connection = self.connect().await?;
        let result = connection.send(envelope, message).await;
        if connection.is_usable() {
            // The message's fate is decided; a failed QUIT changes nothing.
            let _ = connection.quit().await;
        }
        result
    }
}
