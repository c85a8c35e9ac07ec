//! Pluggable authentication (RFC 4954).

use std::future::Future;
use std::pin::Pin;

use smtp_proto::EnhancedCode;
use smtp_proto::sasl::Credentials;

use crate::error::SmtpError;
use crate::session::{ConnectionInfo, Identity};

/// One step of an extension SASL mechanism (see
/// [`Authenticator::step`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslStep {
    /// Send this challenge (raw octets; the server base64-encodes it in a
    /// `334` reply) and wait for another response.
    Challenge(Vec<u8>),
    /// The exchange succeeded.
    Done(Identity),
}

/// Checks credentials. `PLAIN` (RFC 4616) and `LOGIN` are decoded by the
/// server and handed to [`Authenticator::authenticate`]; other mechanisms
/// listed by [`Authenticator::mechanisms`] run through
/// [`Authenticator::step`].
///
/// A refusal is an [`SmtpError`]; the usual one is [`invalid_credentials`].
/// Each refusal counts toward the failed-`AUTH` limit of the connection
/// and toward the client network's [`AuthThrottle`](crate::AuthThrottle).
/// An internal error ([`SmtpError::other`]) is answered `454 4.7.0`, a
/// temporary failure (RFC 4954 §6).
///
/// For a fixed set of accounts use [`StaticUsers`](crate::StaticUsers),
/// which also bounds the cost of password hashing. A custom authenticator,
/// for example over a user database:
///
/// ```
/// use smtp_server::{
///     Authenticator, ConnectionInfo, Credentials, Identity, SmtpError, invalid_credentials,
/// };
///
/// struct Directory;
///
/// impl Directory {
///     async fn check_password(&self, user: &str, password: &str) -> Result<bool, std::io::Error> {
///         Ok(user == "alice" && password == "wonderland")
///     }
/// }
///
/// impl Authenticator for Directory {
///     async fn authenticate(
///         &self,
///         _info: &ConnectionInfo,
///         _mechanism: &str,
///         credentials: &Credentials,
///     ) -> Result<Identity, SmtpError> {
///         let username = credentials.username();
///         // RFC 4616 §2: acting as another identity needs a right that
///         // this directory grants nobody.
///         if credentials.authzid().is_some_and(|authzid| authzid != username) {
///             return Err(invalid_credentials());
///         }
///         // Only passwords are checked here: refuse any other kind.
///         let Some(password) = credentials.as_password() else {
///             return Err(invalid_credentials());
///         };
///         // `?` on an I/O error answers 454 4.7.0 (try again later).
///         if self.check_password(username, password).await? {
///             Ok(Identity::new(username))
///         } else {
///             Err(invalid_credentials())
///         }
///     }
/// }
/// ```
pub trait Authenticator: Send + Sync + 'static {
    /// Mechanism names to advertise, uppercase. Default: `PLAIN` and
    /// `LOGIN`.
    fn mechanisms(&self) -> Vec<String> {
        vec!["PLAIN".to_owned(), "LOGIN".to_owned()]
    }

    /// Checks the credentials of `PLAIN` or `LOGIN` (`mechanism` names
    /// which), decoded into [`Credentials::Password`]. Read them with
    /// [`Credentials::username`], [`Credentials::authzid`] and
    /// [`Credentials::as_password`]; refuse ([`invalid_credentials`]) a kind
    /// of credentials this authenticator does not check, such as a token
    /// where it expects a password.
    fn authenticate(
        &self,
        info: &ConnectionInfo,
        mechanism: &str,
        credentials: &Credentials,
    ) -> impl Future<Output = Result<Identity, SmtpError>> + Send;

    /// Runs an extension mechanism statelessly: `responses` holds every
    /// decoded client response so far (the initial response first, empty
    /// when the client sent none). Return a challenge to get one more
    /// response. Default: the mechanism is not supported (`504 5.5.4`).
    fn step(
        &self,
        info: &ConnectionInfo,
        mechanism: &str,
        responses: &[Vec<u8>],
    ) -> impl Future<Output = Result<SaslStep, SmtpError>> + Send {
        let _ = (info, mechanism, responses);
        async { Err(unsupported_mechanism()) }
    }
}

/// `535 5.7.8 Authentication credentials invalid` (RFC 4954 §6).
pub fn invalid_credentials() -> SmtpError {
    SmtpError::new(
        535,
        EnhancedCode::new(5, 7, 8),
        "Authentication credentials invalid",
    )
}

/// `504 5.5.4 Unrecognized authentication type` (RFC 4954 §6).
pub fn unsupported_mechanism() -> SmtpError {
    SmtpError::new(
        504,
        EnhancedCode::new(5, 5, 4),
        "Unrecognized authentication type",
    )
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe form of [`Authenticator`], so the server holds one without a
/// type parameter.
pub(crate) trait DynAuthenticator: Send + Sync {
    fn mechanisms(&self) -> Vec<String>;
    fn authenticate<'a>(
        &'a self,
        info: &'a ConnectionInfo,
        mechanism: &'a str,
        credentials: &'a Credentials,
    ) -> BoxFuture<'a, Result<Identity, SmtpError>>;
    fn step<'a>(
        &'a self,
        info: &'a ConnectionInfo,
        mechanism: &'a str,
        responses: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<SaslStep, SmtpError>>;
}

impl<A: Authenticator> DynAuthenticator for A {
    fn mechanisms(&self) -> Vec<String> {
        Authenticator::mechanisms(self)
            .into_iter()
            .map(|name| name.to_ascii_uppercase())
            .collect()
    }

    fn authenticate<'a>(
        &'a self,
        info: &'a ConnectionInfo,
        mechanism: &'a str,
        credentials: &'a Credentials,
    ) -> BoxFuture<'a, Result<Identity, SmtpError>> {
        Box::pin(Authenticator::authenticate(
            self,
            info,
            mechanism,
            credentials,
        ))
    }

    fn step<'a>(
        &'a self,
        info: &'a ConnectionInfo,
        mechanism: &'a str,
        responses: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<SaslStep, SmtpError>> {
        Box::pin(Authenticator::step(self, info, mechanism, responses))
    }
}
