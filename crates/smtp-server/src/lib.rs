//! A tokio SMTP, ESMTP and LMTP server library (in progress: the
//! connection driver follows once the protocol codec is available).

// The connection driver that uses the crate-private items is not here yet.
#![allow(dead_code)]

mod auth;
mod config;
mod error;
mod limiter;
pub mod proxy;
mod received;
mod session;
mod tls;

pub use auth::{Authenticator, SaslStep, invalid_credentials, unsupported_mechanism};
pub use config::{AuthPolicy, BareLineEndings, Extensions, Limits, Timeouts};
pub use error::{ConfigError, SmtpError};
pub use received::ReceivedHeader;
pub use session::{
    Backend, Body, BodyError, ConnectionInfo, Envelope, Identity, ProxiedAddresses, Recipient,
    Session, TlsInfo,
};
pub use tls::{TlsConfig, TlsError};
