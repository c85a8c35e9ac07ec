//! Errors returned by hooks and by the server itself.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use smtp_proto::{EnhancedCode, Reply};

use crate::session::BodyError;

/// The error a [`Session`](crate::Session), [`Backend`](crate::Backend) or
/// [`Authenticator`](crate::Authenticator) hook returns.
///
/// An error built from a [`Reply`] ([`SmtpError::new`],
/// [`SmtpError::reply`]) is sent to the client exactly as given. Any other
/// error ([`SmtpError::other`], or `?` on an [`std::io::Error`]) is logged
/// and the client sees a generic reply: `451 4.3.0` for commands, `554 5.3.0`
/// after the end of message data. Return a `4xx` reply yourself when a
/// failure is temporary and the client should retry.
///
/// ```
/// use smtp_server::SmtpError;
/// use smtp_proto::EnhancedCode;
/// let err = SmtpError::new(550, EnhancedCode::new(5, 1, 1), "No such user");
/// assert_eq!(err.as_reply().map(|r| r.code()), Some(550));
/// ```
#[derive(Clone)]
pub struct SmtpError {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Reply(Reply),
    Other(Arc<dyn StdError + Send + Sync>),
}

impl SmtpError {
    /// An error that becomes the one-line reply `code enhanced text`.
    pub fn new(code: u16, enhanced: EnhancedCode, text: impl Into<String>) -> Self {
        Self::reply(Reply::new(code, enhanced, text.into()))
    }

    /// An error that becomes exactly `reply`.
    pub fn reply(reply: Reply) -> Self {
        Self {
            kind: Kind::Reply(reply),
        }
    }

    /// An internal error: logged, and answered with a generic reply.
    pub fn other(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            kind: Kind::Other(Arc::from(error.into())),
        }
    }

    /// The reply this error carries, if it was built from one.
    pub fn as_reply(&self) -> Option<&Reply> {
        match &self.kind {
            Kind::Reply(reply) => Some(reply),
            Kind::Other(_) => None,
        }
    }

    /// The reply sent for this error: its own reply, or `fallback` for an
    /// internal error.
    pub(crate) fn to_reply_or(&self, fallback: impl FnOnce() -> Reply) -> Reply {
        match &self.kind {
            Kind::Reply(reply) => reply.clone(),
            Kind::Other(_) => fallback(),
        }
    }
}

impl fmt::Debug for SmtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Reply(reply) => f.debug_tuple("SmtpError::Reply").field(reply).finish(),
            Kind::Other(error) => f.debug_tuple("SmtpError::Other").field(error).finish(),
        }
    }
}

impl fmt::Display for SmtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Reply(reply) => write!(f, "{reply}"),
            Kind::Other(error) => write!(f, "{error}"),
        }
    }
}

impl StdError for SmtpError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            Kind::Reply(_) => None,
            Kind::Other(error) => Some(&**error),
        }
    }
}

impl From<Reply> for SmtpError {
    fn from(reply: Reply) -> Self {
        Self::reply(reply)
    }
}

impl From<std::io::Error> for SmtpError {
    fn from(error: std::io::Error) -> Self {
        Self::other(error)
    }
}

/// The reply a body error stands for, so `body.read_to_end().await?` and
/// `chunk?` work in a data hook:
///
/// | [`BodyError`] | reply |
/// |---|---|
/// | [`TooLarge`](BodyError::TooLarge) | `552 5.3.4` (RFC 1870 §6, RFC 3463) |
/// | [`BareLineEnding`](BodyError::BareLineEnding) | `550 5.5.2` (RFC 5321 §2.3.8) |
/// | [`Aborted`](BodyError::Aborted) | `451 4.3.0` |
///
/// The server sends the size and line-ending replies itself whatever the
/// hook returns; the conversion keeps the hook's result consistent with
/// them.
impl From<BodyError> for SmtpError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::TooLarge => SmtpError::new(
                552,
                EnhancedCode::new(5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ),
            BodyError::BareLineEnding => SmtpError::new(
                550,
                EnhancedCode::new(5, 5, 2),
                "Message contains a bare CR or LF; lines must end with CRLF",
            ),
            BodyError::Aborted => {
                SmtpError::new(451, EnhancedCode::new(4, 3, 0), "Message transfer aborted")
            }
        }
    }
}

/// A configuration the server cannot run with, reported by
/// [`ServerBuilder::build`](crate::ServerBuilder::build).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// An implicit-TLS listener was requested but no TLS configuration was
    /// given: call [`ServerBuilder::tls`](crate::ServerBuilder::tls).
    TlsListenerWithoutTls,
    /// Authentication is required but no authenticator was given: call
    /// [`ServerBuilder::auth`](crate::ServerBuilder::auth).
    AuthRequiredWithoutAuthenticator,
    /// TLS is required but no TLS configuration was given.
    TlsRequiredWithoutTls,
    /// The hostname is empty or contains characters a domain cannot hold.
    InvalidHostname,
    /// `SMTPUTF8` was turned on without `8BITMIME`, which RFC 6531 §3.1
    /// requires alongside it.
    Smtputf8WithoutEightBitMime,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TlsListenerWithoutTls => "an implicit TLS listener needs a TLS configuration",
            Self::AuthRequiredWithoutAuthenticator => {
                "requiring authentication needs an authenticator"
            }
            Self::TlsRequiredWithoutTls => "requiring TLS needs a TLS configuration",
            Self::InvalidHostname => "the hostname is not a valid domain",
            Self::Smtputf8WithoutEightBitMime => "SMTPUTF8 needs 8BITMIME (RFC 6531 §3.1)",
        })
    }
}

impl StdError for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_become_their_replies() {
        let reply = |error: BodyError| {
            let error = SmtpError::from(error);
            let reply = error.as_reply().expect("a reply error").clone();
            (reply.code(), reply.enhanced().map(|e| e.to_string()))
        };
        assert_eq!(reply(BodyError::TooLarge), (552, Some("5.3.4".to_owned())));
        assert_eq!(
            reply(BodyError::BareLineEnding),
            (550, Some("5.5.2".to_owned()))
        );
        assert_eq!(reply(BodyError::Aborted), (451, Some("4.3.0".to_owned())));
    }
}
