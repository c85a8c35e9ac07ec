//! Limits, timeouts, extensions and policies, each with a named default.

use std::time::Duration;

use smtp_proto::limits;

/// Default maximum message size: 32 MiB, advertised with `SIZE` (RFC 1870).
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 32 * 1024 * 1024;
/// Default number of protocol errors (unknown commands, syntax errors, bad
/// sequence) before the server answers `421 4.7.0` and closes, as Postfix's
/// `smtpd_hard_error_limit`.
pub const DEFAULT_MAX_ERRORS: u32 = 20;
/// Default number of failed `AUTH` attempts before `421 4.7.0` and close.
pub const DEFAULT_MAX_AUTH_FAILURES: u32 = 3;
/// Default recipients per transaction: RFC 5321 §4.5.3.1.8's 100, the
/// number a server must be able to buffer. It is a default, not a floor:
/// submission services commonly allow far fewer (Postfix's
/// `smtpd_recipient_limit`), and any value of at least 1 is accepted.
pub const DEFAULT_MAX_RECIPIENTS: usize = limits::RECIPIENTS_MIN;
/// Default maximum number of connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Default maximum number of connections from one client IP address.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 20;
/// Default cap on a PROXY protocol header. A v1 header is at most 107
/// octets; v2 headers carry TLVs and are capped here.
pub const DEFAULT_PROXY_HEADER_MAX: usize = 4096;
/// Smallest accepted PROXY header cap: the v1 maximum (107 octets) and the
/// v2 fixed part with IPv6 addresses (16 + 36) both fit.
pub const PROXY_HEADER_MIN: usize = 108;
/// Default number of SASL challenge/response rounds for an extension
/// mechanism before the exchange is refused.
pub const DEFAULT_MAX_SASL_STEPS: usize = 8;

/// Default time allowed for a TLS handshake.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default total lifetime of one session, whatever it does.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Default time allowed for a PROXY protocol header to arrive.
pub const DEFAULT_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time connections in flight get to finish after shutdown starts.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Smallest accepted timeout: shorter ones are raised to this.
pub const TIMEOUT_MIN: Duration = Duration::from_millis(10);

/// Size and count limits: a plain struct, so set the fields you need and
/// take the rest from [`Default`].
///
/// A value below its floor is raised to the floor when the server is
/// built ([`Limits::normalized`]). Floors exist only where a smaller value
/// would break the protocol (the 512-octet command line, a PROXY header
/// that cannot fit) or make the server refuse everything (zero).
///
/// ```
/// use smtp_server::Limits;
/// let limits = Limits {
///     max_recipients: 5,
///     max_message_size: 10 * 1024 * 1024,
///     ..Limits::default()
/// };
/// assert_eq!(limits.normalized().max_recipients, 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest command line, `<CRLF>` included. Default
    /// [`limits::DEFAULT_COMMAND_LINE_MAX`]; floor
    /// [`limits::COMMAND_LINE_MIN`] (RFC 5321 §4.5.3.1.4).
    pub max_line: usize,
    /// Largest message, in octets after dot-unstuffing. Advertised with
    /// `SIZE`; a larger body gets `552 5.3.4`. Floor 1.
    pub max_message_size: u64,
    /// Recipients per transaction; the next one gets `452 4.5.3`
    /// (RFC 5321 §4.5.3.1.10). Default [`DEFAULT_MAX_RECIPIENTS`] (100,
    /// RFC 5321 §4.5.3.1.8); floor 1.
    pub max_recipients: usize,
    /// Protocol errors before `421 4.7.0` and close. Floor 1.
    pub max_errors: u32,
    /// Failed `AUTH` attempts before `421 4.7.0` and close. Floor 1.
    pub max_auth_failures: u32,
    /// Connections served at once by a listening server. Floor 1.
    pub max_connections: usize,
    /// Connections at once from one client IP address. Floor 1.
    pub max_connections_per_ip: usize,
    /// Largest PROXY protocol header. Floor [`PROXY_HEADER_MIN`].
    pub proxy_header_max: usize,
    /// Challenge/response rounds allowed for an extension SASL mechanism.
    /// Floor 1.
    pub max_sasl_steps: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line: limits::DEFAULT_COMMAND_LINE_MAX,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            max_errors: DEFAULT_MAX_ERRORS,
            max_auth_failures: DEFAULT_MAX_AUTH_FAILURES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            proxy_header_max: DEFAULT_PROXY_HEADER_MAX,
            max_sasl_steps: DEFAULT_MAX_SASL_STEPS,
        }
    }
}

impl Limits {
    /// The limits with every value raised to at least its floor.
    pub fn normalized(mut self) -> Self {
        self.max_line = self.max_line.max(limits::COMMAND_LINE_MIN);
        self.max_message_size = self.max_message_size.max(1);
        self.max_recipients = self.max_recipients.max(1);
        self.max_errors = self.max_errors.max(1);
        self.max_auth_failures = self.max_auth_failures.max(1);
        self.max_connections = self.max_connections.max(1);
        self.max_connections_per_ip = self.max_connections_per_ip.max(1);
        self.proxy_header_max = self.proxy_header_max.max(PROXY_HEADER_MIN);
        self.max_sasl_steps = self.max_sasl_steps.max(1);
        self
    }
}

/// Timeouts. When one expires the server sends `421 4.4.2` and closes.
/// Each is raised to at least [`TIMEOUT_MIN`] (a zero timeout would end
/// every session at once). A plain struct: set the fields you need and take
/// the rest from [`Default`].
///
/// ```
/// use std::time::Duration;
/// use smtp_server::Timeouts;
/// let timeouts = Timeouts {
///     command: Duration::from_secs(60),
///     ..Timeouts::default()
/// };
/// assert_eq!(timeouts.data_block, Duration::from_secs(180));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the next command: 5 minutes (RFC 5321 §4.5.3.2.7).
    pub command: Duration,
    /// Waiting for the next block of message data: 3 minutes
    /// (RFC 5321 §4.5.3.2.5).
    pub data_block: Duration,
    /// For the handler to finish with a message after its end arrived:
    /// 10 minutes (RFC 5321 §4.5.3.2.6, the client's wait for that reply).
    pub data_termination: Duration,
    /// For a TLS handshake (implicit TLS or STARTTLS).
    pub tls_handshake: Duration,
    /// Total lifetime of one session.
    pub session: Duration,
    /// For the PROXY protocol header from a trusted proxy.
    pub proxy_header: Duration,
    /// Pause before the greeting; a client that sends anything during it
    /// gets `554 5.5.0` (it talks before the greeting). Zero by default:
    /// only bytes already received when the greeting is sent are caught.
    pub greeting_delay: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            command: limits::timeouts::SERVER_COMMAND,
            data_block: limits::timeouts::DATA_BLOCK,
            data_termination: limits::timeouts::DATA_TERMINATION,
            tls_handshake: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            session: DEFAULT_SESSION_TIMEOUT,
            proxy_header: DEFAULT_PROXY_HEADER_TIMEOUT,
            greeting_delay: Duration::ZERO,
        }
    }
}

impl Timeouts {
    /// The timeouts with every value raised to at least [`TIMEOUT_MIN`]
    /// (the greeting delay may stay zero).
    pub fn normalized(mut self) -> Self {
        for value in [
            &mut self.command,
            &mut self.data_block,
            &mut self.data_termination,
            &mut self.tls_handshake,
            &mut self.session,
            &mut self.proxy_header,
        ] {
            *value = (*value).max(TIMEOUT_MIN);
        }
        self
    }
}

/// ESMTP extensions the server offers. All are on by default.
/// `ENHANCEDSTATUSCODES` (RFC 2034) is always on; `STARTTLS` is offered when
/// a TLS configuration is set; `AUTH` when an authenticator is set.
///
/// ```
/// use smtp_server::Extensions;
/// let extensions = Extensions {
///     dsn: false,
///     ..Extensions::default()
/// };
/// assert!(extensions.pipelining);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 2920 `PIPELINING`.
    pub pipelining: bool,
    /// RFC 6152 `8BITMIME`.
    pub eight_bit_mime: bool,
    /// RFC 6531 `SMTPUTF8`.
    pub smtputf8: bool,
    /// RFC 3030 `CHUNKING` (the `BDAT` command).
    pub chunking: bool,
    /// RFC 3030 `BINARYMIME`; offered only together with `chunking`.
    pub binary_mime: bool,
    /// RFC 3461 `DSN` parameters (`RET`, `ENVID`, `NOTIFY`, `ORCPT`).
    ///
    /// The library parses the parameters and hands them to the
    /// [`Session`](crate::Session) in the [`Envelope`](crate::Envelope);
    /// producing delivery status notifications (for example a "delivered"
    /// report for `NOTIFY=SUCCESS` at final delivery, RFC 3461 §5.2.2) is
    /// the application's job. Turn this off if the application cannot
    /// honour them.
    pub dsn: bool,
    /// RFC 8689 `REQUIRETLS`; offered only over TLS.
    pub requiretls: bool,
    /// RFC 1870 `SIZE` with the message size limit.
    pub size: bool,
}

impl Default for Extensions {
    fn default() -> Self {
        Self {
            pipelining: true,
            eight_bit_mime: true,
            smtputf8: true,
            chunking: true,
            binary_mime: true,
            dsn: true,
            requiretls: true,
            size: true,
        }
    }
}

/// When `AUTH` is allowed and whether it is required.
///
/// ```
/// use smtp_server::AuthPolicy;
/// let submission = AuthPolicy {
///     require: true,
///     ..AuthPolicy::default()
/// };
/// assert_eq!(submission, AuthPolicy::new().require(true));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Allow `AUTH` (and advertise it) on connections without TLS. Off by
    /// default: `AUTH` before TLS gets `538 5.7.11` (RFC 4954 §4).
    pub allow_insecure: bool,
    /// Refuse `MAIL`, `RCPT`, `DATA`, `BDAT`, `VRFY` and `EXPN` with
    /// `530 5.7.0` until the client has authenticated (submission).
    pub require: bool,
}

impl AuthPolicy {
    /// The default policy: `AUTH` only over TLS, not required.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`AuthPolicy::allow_insecure`].
    pub fn allow_insecure(mut self, allow: bool) -> Self {
        self.allow_insecure = allow;
        self
    }

    /// Sets [`AuthPolicy::require`].
    pub fn require(mut self, require: bool) -> Self {
        self.require = require;
        self
    }
}

/// What to do with a bare CR or bare LF in message content.
///
/// Command lines always end at `<CRLF>` only, and a bare CR or LF inside a
/// command is always answered with `550 5.5.2`, whatever this says
/// (SMTP smuggling, CVE-2023-51764).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BareLineEndings {
    /// Refuse the message with `550 5.5.2` (the default).
    #[default]
    Reject,
    /// Hand the message to the handler with the bare CR or LF as it came.
    /// `<CRLF>.<CRLF>` still is the only end of data.
    Accept,
}
