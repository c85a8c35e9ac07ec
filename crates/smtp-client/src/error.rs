//! The client's error type: one struct with a classified [`ErrorKind`], the
//! protocol [`Step`] that failed, and the server's reply where there is one.

use std::fmt;
use std::io;

use smtp_proto::Reply;

use crate::envelope::RecipientOutcome;

/// What went wrong, grouped by what the caller can do about it.
///
/// Use [`Error::is_transient`] to decide whether to retry later; the kind
/// says why.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration, the envelope or the message is invalid (for
    /// example a CR, LF or NUL in a parameter). Nothing was written to the
    /// server. Fix the input; retrying cannot help.
    InvalidInput,
    /// The connection could not be opened or failed while in use. Transient.
    Io,
    /// The server closed the connection (end of stream, or a 421 reply)
    /// before the step completed. Transient.
    Closed,
    /// A step did not complete within its timeout. The attempt is over and
    /// the connection is closed. Transient.
    Timeout,
    /// The server replied with something the protocol does not allow: a
    /// malformed or oversized reply, an unexpected code, or bytes after its
    /// `220` to `STARTTLS` (a response-injection attempt, RFC 3207 §4.2).
    Protocol,
    /// TLS could not be set up: a failed handshake or an untrusted server
    /// certificate. Transient, as mail servers treat it (Postfix defers
    /// such mail): the usual cause is on the server (an expired or
    /// replaced certificate) and is fixed there, so the message waits for
    /// a later attempt rather than being returned to its sender.
    Tls,
    /// TLS is required but the server did not offer `STARTTLS` or refused
    /// it. No plaintext fallback is attempted. Transient, like
    /// [`ErrorKind::Tls`].
    TlsUnavailable,
    /// Authentication failed, no common mechanism exists, or it was refused
    /// over a plaintext connection.
    Auth,
    /// The message needs an extension the server does not offer
    /// (`SMTPUTF8`, `8BITMIME`, `BINARYMIME`, `REQUIRETLS`) or exceeds its
    /// `SIZE` limit.
    Unsupported,
    /// The server rejected a step (greeting, `MAIL`, `DATA`, the end of
    /// data, ...) with the reply in [`Error::reply`].
    Rejected,
    /// Every recipient was rejected, so no message data was sent; the
    /// outcome of each is in [`Error::recipients`].
    RecipientsRejected,
}

/// The protocol step during which an error happened.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Checking configuration, envelope or message before any I/O.
    Validate,
    /// Opening the TCP connection.
    Connect,
    /// The TLS handshake (implicit TLS or after `STARTTLS`).
    TlsHandshake,
    /// Waiting for the `220` greeting.
    Greeting,
    /// `EHLO`, `HELO` or, for LMTP, `LHLO`.
    Hello,
    /// `STARTTLS`.
    StartTls,
    /// `AUTH` and its challenge rounds.
    Auth,
    /// `MAIL FROM`.
    Mail,
    /// `RCPT TO`.
    Rcpt,
    /// `DATA` (waiting for `354`) or a non-final `BDAT` chunk.
    Data,
    /// Writing the message body.
    Body,
    /// The reply to the end of data (`<CRLF>.<CRLF>` or `BDAT ... LAST`).
    DataEnd,
    /// `RSET`.
    Rset,
    /// `NOOP`.
    Noop,
    /// `QUIT`.
    Quit,
}

impl Step {
    /// A short name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Validate => "validation",
            Step::Connect => "connect",
            Step::TlsHandshake => "TLS handshake",
            Step::Greeting => "greeting",
            Step::Hello => "EHLO",
            Step::StartTls => "STARTTLS",
            Step::Auth => "AUTH",
            Step::Mail => "MAIL",
            Step::Rcpt => "RCPT",
            Step::Data => "DATA",
            Step::Body => "message body",
            Step::DataEnd => "end of data",
            Step::Rset => "RSET",
            Step::Noop => "NOOP",
            Step::Quit => "QUIT",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from the client.
///
/// Carries its [`ErrorKind`], the [`Step`] it happened in, the server's
/// reply when the server gave one, and the underlying cause (an I/O or TLS
/// error) as [`std::error::Error::source`].
///
/// Following the Rust API guidelines, [`Display`](fmt::Display) shows this
/// error's own message (with the server's reply, which is part of it) but
/// not its source: walk [`source`](std::error::Error::source) for the cause,
/// as `anyhow`'s `{:#}` and most error reporters do, and each cause is
/// printed once.
///
/// ```
/// use smtp_client::ClientConfig;
/// let error = ClientConfig::builder("127.0.0.1:2525").build().unwrap_err();
/// let mut text = error.to_string();
/// let mut cause = std::error::Error::source(&error);
/// while let Some(inner) = cause {
///     text.push_str(&format!(": {inner}"));
///     cause = inner.source();
/// }
/// assert!(text.contains(".port("), "{text}");
/// ```
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    step: Step,
    message: String,
    reply: Option<Reply>,
    recipients: Vec<RecipientOutcome>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, step: Step, message: impl Into<String>) -> Self {
        Self {
            kind,
            step,
            message: message.into(),
            reply: None,
            recipients: Vec::new(),
            source: None,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, Step::Validate, message)
    }

    pub(crate) fn io(step: Step, error: io::Error) -> Self {
        let kind = match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => ErrorKind::Closed,
            io::ErrorKind::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Io,
        };
        let message = match kind {
            ErrorKind::Closed => format!("connection lost during {step}"),
            _ => format!("I/O error during {step}"),
        };
        Self::new(kind, step, message).with_source(error)
    }

    pub(crate) fn closed(step: Step) -> Self {
        Self::new(
            ErrorKind::Closed,
            step,
            format!("the server closed the connection during {step}"),
        )
    }

    pub(crate) fn timeout(step: Step) -> Self {
        Self::new(ErrorKind::Timeout, step, format!("timed out during {step}"))
    }

    /// An error for a reply that ends `step` unsuccessfully. A 421 is the
    /// server closing the connection (RFC 5321 §3.8).
    pub(crate) fn rejected(step: Step, reply: Reply) -> Self {
        let kind = if reply.code() == 421 {
            ErrorKind::Closed
        } else {
            ErrorKind::Rejected
        };
        Self::new(kind, step, format!("{step} rejected")).with_reply(reply)
    }

    pub(crate) fn with_reply(mut self, reply: Reply) -> Self {
        self.reply = Some(reply);
        self
    }

    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub(crate) fn with_recipients(mut self, recipients: Vec<RecipientOutcome>) -> Self {
        self.recipients = recipients;
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The protocol step that failed.
    pub fn step(&self) -> Step {
        self.step
    }

    /// The server's reply that caused the error, when there was one.
    pub fn reply(&self) -> Option<&Reply> {
        self.reply.as_ref()
    }

    /// The outcome of every envelope recipient, in envelope order, when the
    /// error ended a send ([`Connection::send`](crate::Connection::send),
    /// [`Client::send`](crate::Client::send), [`Pool::send`](crate::Pool::send)):
    /// the rejections decided before the failure, and every other recipient
    /// as not accepted with the error's reply (or none). Empty for errors
    /// that did not come from a send (building a configuration, `NOOP`,
    /// ...). See [`RecipientOutcomes`](crate::RecipientOutcomes) for one
    /// accessor over both ways a send ends.
    pub fn recipients(&self) -> &[RecipientOutcome] {
        &self.recipients
    }

    /// Fills in one outcome per recipient for an error from a send that
    /// failed before any recipient had one.
    pub(crate) fn for_envelope(mut self, envelope: &crate::Envelope) -> Self {
        if self.recipients.is_empty() {
            self.recipients = envelope
                .recipients()
                .iter()
                .map(|recipient| RecipientOutcome {
                    address: recipient.address().clone(),
                    accepted: false,
                    reply: self.reply.clone(),
                })
                .collect();
        }
        self
    }

    /// Whether the same send may succeed later: a 4xx reply, a timeout, a
    /// lost or closed connection, I/O or TLS trouble (RFC 5321 §4.2.1,
    /// §4.5.4.1), or an unexpected reply to `DATA` or to the end of data
    /// (an unknown outcome is never reported as permanent). When every
    /// recipient was rejected, transient only if every rejection was a 4xx.
    pub fn is_transient(&self) -> bool {
        match self.kind {
            ErrorKind::Io | ErrorKind::Closed | ErrorKind::Timeout => true,
            // Postfix defers on TLS trouble too: the server's side is the
            // usual cause and is fixed there.
            ErrorKind::Tls | ErrorKind::TlsUnavailable => true,
            ErrorKind::Rejected | ErrorKind::Auth => {
                self.reply.as_ref().is_some_and(Reply::is_transient)
            }
            ErrorKind::RecipientsRejected => {
                !self.recipients.is_empty()
                    && self
                        .recipients
                        .iter()
                        .all(|outcome| outcome.reply().is_some_and(Reply::is_transient))
            }
            // A garbled or unexpected reply to the end of data may hide an
            // acceptance: RFC 5321 §6.1 prefers a duplicate to a lost
            // message. One to DATA means nothing was sent, and the next
            // attempt (on a fresh connection) may well succeed.
            ErrorKind::Protocol => matches!(self.step, Step::Data | Step::DataEnd),
            ErrorKind::InvalidInput | ErrorKind::Unsupported => false,
        }
    }

    /// Whether the failure is permanent: retrying the same message will fail
    /// the same way. The opposite of [`Error::is_transient`].
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(reply) = &self.reply {
            write!(f, ": {reply}")?;
        }
        // The source is not repeated here: `source()` returns it.
        Ok(())
    }
}

impl From<smtp_proto::address::AddressError> for Error {
    /// An invalid address is invalid input: nothing was sent.
    fn from(error: smtp_proto::address::AddressError) -> Self {
        Error::invalid(format!("invalid address ({error})"))
    }
}

impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_decide_transience() {
        let transient = Error::rejected(Step::Mail, Reply::plain(451, "later"));
        assert!(transient.is_transient());
        let permanent = Error::rejected(Step::Mail, Reply::plain(550, "no"));
        assert!(permanent.is_permanent());
        let closing = Error::rejected(Step::Rcpt, Reply::plain(421, "bye"));
        assert_eq!(closing.kind(), ErrorKind::Closed);
        assert!(closing.is_transient());
        assert!(Error::timeout(Step::Data).is_transient());
        assert!(Error::invalid("bad").is_permanent());
    }

    #[test]
    fn io_errors_are_classified() {
        let eof = Error::io(Step::Mail, io::Error::from(io::ErrorKind::UnexpectedEof));
        assert_eq!(eof.kind(), ErrorKind::Closed);
        let refused = Error::io(
            Step::Connect,
            io::Error::from(io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(refused.kind(), ErrorKind::Io);
        assert!(refused.is_transient());
        assert!(std::error::Error::source(&refused).is_some());
    }

    #[test]
    fn the_cause_is_printed_once() {
        let error = Error::io(
            Step::Connect,
            io::Error::new(io::ErrorKind::ConnectionRefused, "refused by peer"),
        );
        let mut chain = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(inner) = cause {
            chain.push_str(&format!(": {inner}"));
            cause = inner.source();
        }
        assert_eq!(chain, "I/O error during connect: refused by peer");
        assert_eq!(chain.matches("refused by peer").count(), 1);
    }

    #[test]
    fn address_errors_convert() {
        let error: Error = smtp_proto::address::Address::parse("no-domain", true)
            .unwrap_err()
            .into();
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
        assert_eq!(error.step(), Step::Validate);
        assert!(error.to_string().contains("no domain"), "{error}");
    }

    #[test]
    fn display_carries_the_reply() {
        let error = Error::rejected(Step::DataEnd, Reply::plain(554, "spam"));
        assert_eq!(error.to_string(), "end of data rejected: 554 spam");
    }
}
