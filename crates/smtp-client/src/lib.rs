//! A tokio SMTP and LMTP client with TLS, AUTH, pipelining, per-recipient
//! results and a connection pool.
//!
//! - [`ClientConfig`] says where and how to connect: from a URL
//!   ([`ClientConfig::from_url`]: `smtp://user:pass@host:587`,
//!   `smtps://host`, `lmtp://host:24`, ...) or a builder; TLS mode
//!   ([`Tls`]: none, opportunistic or required `STARTTLS`, implicit TLS)
//!   with certificates in [`TlsConfig`], [`Credentials`] for `AUTH` (with an
//!   optional [`AuthMechanism`] to pin the mechanism), [`Timeouts`] for
//!   every step and for the whole send, SMTP or LMTP ([`Protocol`]), and an
//!   optional [`Transcript`] of the protocol lines (the same
//!   [`TranscriptLine`] type smtp-server uses).
//! - [`Envelope`] takes addresses as strings or [`Address`]es, or comes
//!   from the message's own header fields ([`Envelope::from_message`]).
//! - [`Connection`] is one open session: [`Connection::send`] takes an
//!   [`Envelope`] and a [`Message`] (bytes, an `AsyncRead` or a stream,
//!   streamed through the dot-stuffing encoder, never collected whole) and
//!   returns a [`SendResult`] with one [`RecipientOutcome`] per recipient;
//!   [`RecipientOutcomes`] reads them from an error too.
//! - [`Client`] sends one message per connection; [`Pool`] shares
//!   connections between tasks, within a server's per-client connection
//!   limit, with an optional [`RetryPolicy`].
//! - [`Error`] carries an [`ErrorKind`], the [`Step`] that failed and the
//!   server's reply; [`Error::is_transient`] says whether to retry. Its
//!   `Display` leaves the cause to [`source`](std::error::Error::source).
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
//! let envelope = Envelope::new("alice@example.com", ["bob@example.org"])?;
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
mod headers;
mod message;
mod pool;
mod stream;
mod tls;
mod url;

pub use config::{
    AuthMechanism, ClientConfig, ClientConfigBuilder, DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE, Protocol,
    Timeouts, Transcript,
};
pub use connection::Connection;
pub use envelope::{
    ENVID_MAX, Envelope, EnvelopeBuilder, ORCPT_MAX, Recipient, RecipientOutcome,
    RecipientOutcomes, SendResult,
};
pub use error::{Error, ErrorKind, Step};
pub use message::Message;
pub use pool::{Pool, PoolConfig, PoolStats, RETRY_BACKOFF_MAX, RetryPolicy};
pub use tls::{Tls, TlsConfig};

/// The protocol crate this client is built on, for what the root does not
/// re-export.
pub use smtp_proto;

// The protocol types the API uses, re-exported so callers need not depend
// on smtp-proto directly. smtp-server re-exports the shared ones
// (`Address`, `Credentials`, `EnhancedCode`, `Reply`, `BodyType`, `Notify`,
// `Ret`) the same way, so both crates name the same types.
pub use smtp_proto::address::Address;
pub use smtp_proto::command::{BodyType, Notify, Ret};
pub use smtp_proto::ehlo::Capabilities;
pub use smtp_proto::sasl::Credentials;
pub use smtp_proto::transcript::{Direction, LineKind, TranscriptLine};
pub use smtp_proto::{EnhancedCode, Reply};

/// The crate README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

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

    /// Validates the envelope, connects, sends the message and quits. An
    /// error carries every recipient's outcome ([`Error::recipients`]).
    /// [`Timeouts::send_deadline`] bounds the whole call, connecting
    /// included. Dropping the future is safe (see the cancellation notes
    /// of [`Connection::send`]).
    pub async fn send(
        &self,
        envelope: &Envelope,
        message: impl Into<Message>,
    ) -> Result<SendResult, Error> {
        let deadline = self
            .config
            .inner
            .timeouts
            .send_deadline
            .map(|limit| tokio::time::Instant::now() + limit);
        let mut message = message.into();
        let result = async {
            envelope.validate()?;
            let mut connection = Connection::connect_until(&self.config, deadline).await?;
            let result = connection
                .send_until(envelope, &mut message, deadline)
                .await;
            if connection.is_usable() {
                // The message's fate is decided; a failed QUIT changes nothing.
                let _ = connection.quit().await;
            }
            result
        }
        .await;
        result.map_err(|error| error.for_envelope(envelope))
    }
}
