//! Client configuration: where to connect, how to protect and authenticate
//! the connection, timeouts and reply caps.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::limits;
use smtp_proto::transcript::TranscriptLine;

use crate::error::Error;
use crate::tls::{Tls, TlsConfig};
use smtp_proto::sasl::Credentials;

/// Which protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// SMTP (RFC 5321): `EHLO`, one reply after the end of data.
    #[default]
    Smtp,
    /// LMTP (RFC 2033): `LHLO`, one reply per accepted recipient after the
    /// end of data.
    Lmtp,
}

/// The timeout of each protocol step.
///
/// The defaults are those of RFC 5321 §4.5.3.2, plus 30 seconds to open the
/// TCP connection and 30 seconds for a TLS handshake. A step that times out
/// ends the attempt: the connection is closed and not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening the TCP connection (all resolved addresses together).
    pub connect: Duration,
    /// A TLS handshake, implicit or after `STARTTLS`.
    pub tls_handshake: Duration,
    /// The `220` greeting (§4.5.3.2.1: 5 minutes).
    pub greeting: Duration,
    /// `EHLO`/`HELO`/`LHLO`, `STARTTLS`, `AUTH`, `RSET`, `NOOP`, `QUIT`
    /// (no RFC value; 5 minutes like `MAIL`).
    pub command: Duration,
    /// The reply to `MAIL` (§4.5.3.2.2: 5 minutes).
    pub mail: Duration,
    /// The reply to each `RCPT` (§4.5.3.2.3: 5 minutes).
    pub rcpt: Duration,
    /// The `354` reply to `DATA`, or the reply to a non-final `BDAT` chunk
    /// (§4.5.3.2.4: 2 minutes).
    pub data_initiation: Duration,
    /// Each write of a block of message data (§4.5.3.2.5: 3 minutes).
    pub data_block: Duration,
    /// The reply to the end of data (§4.5.3.2.6: 10 minutes).
    pub data_termination: Duration,
    /// A bound on a whole send, besides the per-step timeouts: from the
    /// start of [`Connection::send`](crate::Connection::send) (of
    /// [`Client::send`](crate::Client::send) and
    /// [`Pool::send`](crate::Pool::send), including connecting, waiting for
    /// a pool slot and retries) to its result. Every step's timeout is cut
    /// to what is left; a send that runs out fails with
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) at the step it
    /// reached. `None` (the default): only the per-step timeouts apply.
    pub send_deadline: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            tls_handshake: Duration::from_secs(30),
            greeting: limits::timeouts::GREETING,
            command: limits::timeouts::MAIL,
            mail: limits::timeouts::MAIL,
            rcpt: limits::timeouts::RCPT,
            data_initiation: limits::timeouts::DATA_INIT,
            data_block: limits::timeouts::DATA_BLOCK,
            data_termination: limits::timeouts::DATA_TERMINATION,
            send_deadline: None,
        }
    }
}

impl Timeouts {
    /// The same duration for every step: handy for tests and for callers
    /// that want one overall bound per step.
    pub fn uniform(timeout: Duration) -> Self {
        Self {
            connect: timeout,
            tls_handshake: timeout,
            greeting: timeout,
            command: timeout,
            mail: timeout,
            rcpt: timeout,
            data_initiation: timeout,
            data_block: timeout,
            data_termination: timeout,
            send_deadline: None,
        }
    }
}

/// CR, LF and NUL would split or forge protocol lines (and NUL is the
/// PLAIN separator, RFC 4616 §2), so none may appear in credentials; the
/// user name may not be empty, and XOAUTH2 has no field for an
/// authorization identity.
fn validate_credentials(credentials: &Credentials) -> Result<(), Error> {
    let mut fields = vec![("user name", credentials.username())];
    if let Some(password) = credentials.as_password() {
        fields.push(("password", password));
    }
    if let Some(token) = credentials.as_token() {
        fields.push(("token", token));
    }
    if let Some(authzid) = credentials.authzid() {
        fields.push(("authorization identity", authzid));
    }
    for (name, value) in fields {
        if has_forbidden_byte(value) {
            return Err(Error::invalid(format!("CR, LF or NUL in the AUTH {name}")));
        }
    }
    if credentials.username().is_empty() {
        return Err(Error::invalid("empty AUTH user name"));
    }
    match credentials {
        Credentials::Password { .. } => Ok(()),
        Credentials::OAuth2 { .. } if credentials.authzid().is_some() => Err(Error::invalid(
            "XOAUTH2 cannot carry an authorization identity: use Credentials::oauth2 without \
             with_authzid",
        )),
        Credentials::OAuth2 { .. } => Ok(()),
        _ => Err(Error::invalid(
            "these credentials are of a kind this client cannot send",
        )),
    }
}

/// The SASL mechanism `AUTH` uses (RFC 4954), chosen with
/// [`ClientConfigBuilder::auth_mechanism`].
///
/// Without a choice the client takes `PLAIN`, then `LOGIN`, for a password,
/// and `XOAUTH2` for a token, whichever the server offers first in that
/// order.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMechanism {
    /// `PLAIN` (RFC 4616): user name and password in one response.
    Plain,
    /// `LOGIN`: user name and password, each answering a challenge. Not
    /// standardised, but offered by many servers.
    Login,
    /// `XOAUTH2`: a user name and an OAuth 2.0 bearer token.
    XOAuth2,
}

impl AuthMechanism {
    /// The mechanism name as the server advertises it.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::Login => "LOGIN",
            AuthMechanism::XOAuth2 => "XOAUTH2",
        }
    }

    /// Whether `credentials` can be sent with this mechanism.
    fn fits(self, credentials: &Credentials) -> bool {
        matches!(
            (self, credentials),
            (
                AuthMechanism::Plain | AuthMechanism::Login,
                Credentials::Password { .. }
            ) | (AuthMechanism::XOAuth2, Credentials::OAuth2 { .. })
        )
    }
}

impl fmt::Display for AuthMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The transcript hook: called with every protocol line (see
/// [`smtp_proto::transcript`] for the shape of the lines). Secrets sent
/// during `AUTH` are replaced by [`MASK`](smtp_proto::transcript::MASK), and
/// the message body is summarised as one `<message body: N octets>` (or
/// `<BDAT chunk: N octets>`) line. The same type as smtp-server's hook.
pub type Transcript = smtp_proto::transcript::TranscriptHook;

/// Everything a [`Connection`](crate::Connection) needs: built with
/// [`ClientConfig::builder`], cheap to clone.
///
/// ```
/// use smtp_client::{ClientConfig, Credentials, Tls};
/// let config = ClientConfig::builder("mail.example.com")
///     .port(587)
///     .tls(Tls::Required)
///     .credentials(Credentials::password("alice", "secret"))
///     .build()
///     .unwrap();
/// assert_eq!(config.port(), 587);
/// ```
#[derive(Clone)]
pub struct ClientConfig {
    pub(crate) inner: Arc<ConfigInner>,
}

pub(crate) struct ConfigInner {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Tls,
    pub(crate) tls_config: Option<Arc<rustls::ClientConfig>>,
    pub(crate) tls_server_name: String,
    pub(crate) hello_name: String,
    pub(crate) protocol: Protocol,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) auth_mechanism: Option<AuthMechanism>,
    pub(crate) allow_plaintext_auth: bool,
    pub(crate) pipelining: bool,
    pub(crate) chunking: bool,
    pub(crate) chunk_size: usize,
    pub(crate) timeouts: Timeouts,
    pub(crate) max_reply_line: usize,
    pub(crate) max_reply_lines: usize,
    pub(crate) transcript: Option<Transcript>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("ClientConfig")
            .field("host", &inner.host)
            .field("port", &inner.port)
            .field("tls", &inner.tls)
            .field("tls_server_name", &inner.tls_server_name)
            .field("hello_name", &inner.hello_name)
            .field("protocol", &inner.protocol)
            .field("credentials", &inner.credentials)
            .field("auth_mechanism", &inner.auth_mechanism)
            .field("allow_plaintext_auth", &inner.allow_plaintext_auth)
            .field("pipelining", &inner.pipelining)
            .field("chunking", &inner.chunking)
            .field("chunk_size", &inner.chunk_size)
            .field("timeouts", &inner.timeouts)
            .field("max_reply_line", &inner.max_reply_line)
            .field("max_reply_lines", &inner.max_reply_lines)
            .field("transcript", &inner.transcript.is_some())
            .finish()
    }
}

impl ClientConfig {
    /// Starts a configuration for the server at `host` (a DNS name or an IP
    /// address; IPv6 with or without brackets).
    pub fn builder(host: impl Into<String>) -> ClientConfigBuilder {
        ClientConfigBuilder {
            host: host.into(),
            port: None,
            tls: Tls::default(),
            tls_config: TlsConfig::default(),
            hello_name: None,
            protocol: Protocol::Smtp,
            credentials: None,
            auth_mechanism: None,
            allow_plaintext_auth: false,
            pipelining: true,
            chunking: true,
            chunk_size: DEFAULT_CHUNK_SIZE,
            timeouts: Timeouts::default(),
            max_reply_line: limits::DEFAULT_CLIENT_REPLY_LINE_MAX,
            max_reply_lines: limits::DEFAULT_CLIENT_REPLY_LINES_MAX,
            transcript: None,
        }
    }

    /// A configuration from a connection URL; see
    /// [`ClientConfig::builder_from_url`] for the forms. One URL in one
    /// setting (for example an `SMTP_URL` environment variable) then says
    /// everything about the connection, in production and in tests alike.
    ///
    /// ```
    /// use smtp_client::{ClientConfig, Tls};
    /// let config = ClientConfig::from_url("smtp://alice:s%40cret@mail.example.com:587")?;
    /// assert_eq!((config.host(), config.port(), config.tls()), ("mail.example.com", 587, Tls::Required));
    /// # Ok::<(), smtp_client::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<ClientConfig, Error> {
        Self::builder_from_url(url)?.build()
    }

    /// A builder preset from a connection URL, for settings a URL cannot
    /// carry (certificates, timeouts, a transcript):
    ///
    /// | URL | meaning |
    /// | --- | --- |
    /// | `smtp://host` | SMTP, `STARTTLS` required ([`Tls::Required`]), port 25 |
    /// | `smtp://user:pass@host:587` | the same with `AUTH`, on the submission port |
    /// | `smtps://host` | implicit TLS ([`Tls::Implicit`], RFC 8314), port 465 |
    /// | `smtp://host:25?tls=opportunistic` | `STARTTLS` when offered ([`Tls::Opportunistic`]) |
    /// | `smtp://host:2525?tls=none` | plaintext ([`Tls::None`]) |
    /// | `lmtp://host:24` | LMTP (RFC 2033), `STARTTLS` when offered, port 24 |
    ///
    /// The user name and password are percent-decoded (`%40` for `@`, `%3A`
    /// for `:`). `tls` takes `none`, `opportunistic`, `required` (or
    /// `starttls`) and `implicit`; `helo` sets the EHLO name. Anything else
    /// (another scheme, a path, an unknown parameter) is an
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) error
    /// rather than silently ignored. Credentials are never sent without TLS
    /// unless [`ClientConfigBuilder::allow_plaintext_auth`] says so.
    ///
    /// ```
    /// use smtp_client::{ClientConfig, Protocol, Tls};
    /// let config = ClientConfig::builder_from_url("lmtp://127.0.0.1:2424?tls=none")?.build()?;
    /// assert_eq!(config.protocol(), Protocol::Lmtp);
    /// assert_eq!(config.tls(), Tls::None);
    /// # Ok::<(), smtp_client::Error>(())
    /// ```
    pub fn builder_from_url(url: &str) -> Result<ClientConfigBuilder, Error> {
        let parsed = crate::url::ConnectionUrl::parse(url)?;
        let mut builder = ClientConfig::builder(parsed.host)
            .tls(parsed.tls)
            .protocol(parsed.protocol);
        if let Some(port) = parsed.port {
            builder = builder.port(port);
        }
        if let Some((username, password)) = parsed.credentials {
            builder = builder.credentials(Credentials::password(username, password));
        }
        if let Some(helo) = parsed.helo {
            builder = builder.hello_name(helo);
        }
        Ok(builder)
    }

    /// The server host.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The server port.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The TLS mode.
    pub fn tls(&self) -> Tls {
        self.inner.tls
    }

    /// The protocol, SMTP or LMTP.
    pub fn protocol(&self) -> Protocol {
        self.inner.protocol
    }

    /// The name sent with `EHLO`/`HELO`/`LHLO`.
    pub fn hello_name(&self) -> &str {
        &self.inner.hello_name
    }

    /// The timeouts.
    pub fn timeouts(&self) -> &Timeouts {
        &self.inner.timeouts
    }

    /// The `AUTH` mechanism chosen with
    /// [`ClientConfigBuilder::auth_mechanism`]; `None` lets the client pick.
    pub fn auth_mechanism(&self) -> Option<AuthMechanism> {
        self.inner.auth_mechanism
    }
}

/// Default size of a `BDAT` chunk, and of the blocks a streamed body is read
/// in: large enough that round trips do not dominate, small enough to bound
/// memory per connection.
pub const DEFAULT_CHUNK_SIZE: usize = 128 * 1024;

/// The smallest accepted chunk size.
pub const MIN_CHUNK_SIZE: usize = 1024;

/// Builder for [`ClientConfig`]; [`ClientConfigBuilder::build`] validates
/// everything, so a built configuration cannot fail later for a reason it
/// could have caught.
#[derive(Clone)]
pub struct ClientConfigBuilder {
    host: String,
    port: Option<u16>,
    tls: Tls,
    tls_config: TlsConfig,
    hello_name: Option<String>,
    protocol: Protocol,
    credentials: Option<Credentials>,
    auth_mechanism: Option<AuthMechanism>,
    allow_plaintext_auth: bool,
    pipelining: bool,
    chunking: bool,
    chunk_size: usize,
    timeouts: Timeouts,
    max_reply_line: usize,
    max_reply_lines: usize,
    transcript: Option<Transcript>,
}

impl fmt::Debug for ClientConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfigBuilder")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("tls_config", &self.tls_config)
            .field("credentials", &self.credentials)
            .field("auth_mechanism", &self.auth_mechanism)
            .finish_non_exhaustive()
    }
}

impl ClientConfigBuilder {
    /// The port; by default 465 for [`Tls::Implicit`], 24 for LMTP (the
    /// usual choice: RFC 2033 §5 keeps LMTP off port 25) and 25 otherwise.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The TLS mode (default [`Tls::Opportunistic`]).
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// Certificates, SNI and verification settings for TLS.
    pub fn tls_config(mut self, tls_config: TlsConfig) -> Self {
        self.tls_config = tls_config;
        self
    }

    /// The name sent with `EHLO` (RFC 5321 §4.1.1.1: the client's fully
    /// qualified domain name, or an address literal). Default `localhost`.
    pub fn hello_name(mut self, name: impl Into<String>) -> Self {
        self.hello_name = Some(name.into());
        self
    }

    /// SMTP (default) or LMTP.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Authenticates after the greeting (and after TLS).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Authenticates with `mechanism` only. When the server does not offer
    /// it, connecting fails with [`ErrorKind::Auth`](crate::ErrorKind::Auth)
    /// rather than trying another mechanism: the caller asked for this one
    /// (for example to keep a password away from a mechanism it distrusts).
    /// Needs [`ClientConfigBuilder::credentials`] of the matching kind.
    pub fn auth_mechanism(mut self, mechanism: AuthMechanism) -> Self {
        self.auth_mechanism = Some(mechanism);
        self
    }

    /// Allows `AUTH` over a connection without TLS. Off by default: the
    /// credentials would cross the network in the clear.
    pub fn allow_plaintext_auth(mut self, allow: bool) -> Self {
        self.allow_plaintext_auth = allow;
        self
    }

    /// Uses `PIPELINING` (RFC 2920) when offered. On by default.
    pub fn pipelining(mut self, enabled: bool) -> Self {
        self.pipelining = enabled;
        self
    }

    /// Uses `BDAT` (RFC 3030 `CHUNKING`) when offered. On by default.
    pub fn chunking(mut self, enabled: bool) -> Self {
        self.chunking = enabled;
        self
    }

    /// The size of `BDAT` chunks and of body reads (default
    /// [`DEFAULT_CHUNK_SIZE`], at least [`MIN_CHUNK_SIZE`]).
    pub fn chunk_size(mut self, size: usize) -> Self {
        self.chunk_size = size.max(MIN_CHUNK_SIZE);
        self
    }

    /// All timeouts at once.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Caps on one reply: the longest line, `<CRLF>` included, and the most
    /// lines. Defaults 4096 and 1000; floors 512 (RFC 5321 §4.5.3.1.5) and 1.
    pub fn reply_limits(mut self, max_line: usize, max_lines: usize) -> Self {
        self.max_reply_line = max_line.max(limits::REPLY_LINE_MAX);
        self.max_reply_lines = max_lines.max(1);
        self
    }

    /// Calls `hook` with every protocol line (see [`Transcript`]); the
    /// line's `session_id` is the [`Connection::id`](crate::Connection::id).
    ///
    /// ```
    /// use smtp_client::ClientConfig;
    /// let config = ClientConfig::builder("127.0.0.1")
    ///     .transcript(|line| eprintln!("[{}] {line}", line.session_id))
    ///     .build()
    ///     .unwrap();
    /// # drop(config);
    /// ```
    pub fn transcript(
        mut self,
        hook: impl Fn(&TranscriptLine<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.transcript = Some(Arc::new(hook));
        self
    }

    /// Validates the settings and builds the configuration (including the
    /// rustls configuration, unless TLS is [`Tls::None`]).
    pub fn build(self) -> Result<ClientConfig, Error> {
        let host = self.host.trim().to_owned();
        if host.is_empty() || has_forbidden_byte(&host) || host.contains(char::is_whitespace) {
            return Err(Error::invalid(format!("invalid host {:?}", self.host)));
        }
        if let Some((name, port)) = host_with_port(&host) {
            return Err(Error::invalid(format!(
                "invalid host {host:?}: the host is a name or an address without a port; \
                 give the port with .port({port}), as in ClientConfig::builder({name:?}).port({port})"
            )));
        }
        let hello_name = self.hello_name.unwrap_or_else(|| "localhost".to_owned());
        validate_hello_name(&hello_name)?;
        if let Some(credentials) = &self.credentials {
            validate_credentials(credentials)?;
        }
        if let Some(mechanism) = self.auth_mechanism {
            match &self.credentials {
                None => {
                    return Err(Error::invalid(format!(
                        "AUTH {mechanism} was chosen but no credentials were given"
                    )));
                }
                Some(credentials) if !mechanism.fits(credentials) => {
                    return Err(Error::invalid(format!(
                        "AUTH {mechanism} cannot send these credentials \
                         (PLAIN and LOGIN take a password, XOAUTH2 a token)"
                    )));
                }
                Some(_) => {}
            }
        }
        let tls_server_name = self
            .tls_config
            .server_name_override()
            .unwrap_or(&host)
            .to_owned();
        let tls_config = match self.tls {
            Tls::None => None,
            _ => {
                crate::tls::server_name(&tls_server_name)?;
                Some(self.tls_config.build()?)
            }
        };
        let port = self.port.unwrap_or(match self.protocol {
            Protocol::Lmtp if self.tls != Tls::Implicit => 24,
            _ => self.tls.default_port(),
        });
        Ok(ClientConfig {
            inner: Arc::new(ConfigInner {
                host,
                port,
                tls: self.tls,
                tls_config,
                tls_server_name,
                hello_name,
                protocol: self.protocol,
                credentials: self.credentials,
                auth_mechanism: self.auth_mechanism,
                allow_plaintext_auth: self.allow_plaintext_auth,
                pipelining: self.pipelining,
                chunking: self.chunking,
                chunk_size: self.chunk_size,
                timeouts: self.timeouts,
                max_reply_line: self.max_reply_line,
                max_reply_lines: self.max_reply_lines,
                transcript: self.transcript,
            }),
        })
    }
}

/// `host:port` (or `[v6]:port`) written where only a host belongs.
fn host_with_port(host: &str) -> Option<(&str, u16)> {
    let (name, port) = host.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let bracketed = name.starts_with('[') && name.ends_with(']');
    // A bare IPv6 address has colons of its own.
    (bracketed || !name.contains(':')).then_some((name, port))
}

pub(crate) fn has_forbidden_byte(value: &str) -> bool {
    value.bytes().any(|byte| matches!(byte, b'\r' | b'\n' | 0))
}

/// RFC 5321 §4.1.1.1: the `EHLO` argument is a domain or an address
/// literal. Checked loosely (servers differ on what they accept), but never
/// empty, never with spaces or control bytes, and within the domain limit.
fn validate_hello_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid("empty EHLO name"));
    }
    if name.len() > limits::DOMAIN_MAX {
        return Err(Error::invalid("EHLO name longer than 255 octets"));
    }
    if name
        .bytes()
        .any(|byte| byte.is_ascii_control() || byte == b' ' || byte >= 0x80)
    {
        return Err(Error::invalid(format!(
            "EHLO name {name:?} holds a space, a control byte or non-ASCII"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn defaults_follow_rfc_5321_timeouts() {
        let timeouts = Timeouts::default();
        assert_eq!(timeouts.greeting, Duration::from_secs(300));
        assert_eq!(timeouts.data_initiation, Duration::from_secs(120));
        assert_eq!(timeouts.data_block, Duration::from_secs(180));
        assert_eq!(timeouts.data_termination, Duration::from_secs(600));
    }

    #[test]
    fn ports_follow_the_mode() {
        let implicit = ClientConfig::builder("h")
            .tls(Tls::Implicit)
            .build()
            .unwrap();
        assert_eq!(implicit.port(), 465);
        let plain = ClientConfig::builder("h").tls(Tls::None).build().unwrap();
        assert_eq!(plain.port(), 25);
        let lmtp = ClientConfig::builder("h")
            .protocol(Protocol::Lmtp)
            .build()
            .unwrap();
        assert_eq!(lmtp.port(), 24);
    }

    #[test]
    fn line_breaks_in_hello_name_or_credentials_are_rejected() {
        for name in ["bad\r\nMAIL FROM:<x>", "a b", "", "nul\0"] {
            let error = ClientConfig::builder("h")
                .hello_name(name)
                .build()
                .unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{name:?}");
        }
        for credentials in [
            Credentials::password("user\r\n", "p"),
            Credentials::password("user", "p\n"),
            Credentials::oauth2("user", "tok\0en"),
            Credentials::password("u", "p").with_authzid("a\rb"),
            Credentials::password("", "p"),
            Credentials::oauth2("user", "token").with_authzid("boss"),
        ] {
            let error = ClientConfig::builder("h")
                .credentials(credentials)
                .build()
                .unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn a_chosen_mechanism_needs_matching_credentials() {
        let password = Credentials::password("alice", "secret");
        let token = Credentials::oauth2("alice", "token");
        for (mechanism, credentials) in [
            (AuthMechanism::Plain, None),
            (AuthMechanism::Login, Some(token.clone())),
            (AuthMechanism::XOAuth2, Some(password.clone())),
        ] {
            let mut builder = ClientConfig::builder("h").auth_mechanism(mechanism);
            if let Some(credentials) = credentials {
                builder = builder.credentials(credentials);
            }
            let error = builder.build().unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{mechanism}");
        }
        for (mechanism, credentials) in [
            (AuthMechanism::Plain, password.clone()),
            (AuthMechanism::Login, password),
            (AuthMechanism::XOAuth2, token),
        ] {
            let config = ClientConfig::builder("h")
                .credentials(credentials)
                .auth_mechanism(mechanism)
                .build()
                .unwrap();
            assert_eq!(config.auth_mechanism(), Some(mechanism));
        }
        assert_eq!(
            ClientConfig::builder("h").build().unwrap().auth_mechanism(),
            None
        );
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let text = format!("{:?}", Credentials::password("alice", "hunter2"));
        assert!(text.contains("alice") && !text.contains("hunter2"));
        let text = format!("{:?}", Credentials::oauth2("alice", "tok123"));
        assert!(!text.contains("tok123"));
    }

    #[test]
    fn a_port_in_the_host_says_to_use_port() {
        for host in ["127.0.0.1:2525", "mail.example.com:587", "[::1]:25"] {
            let error = ClientConfig::builder(host).build().unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput);
            assert!(error.to_string().contains(".port("), "{error}");
        }
        assert!(ClientConfig::builder("::1").build().is_ok());
        assert!(ClientConfig::builder("[::1]").build().is_ok());
    }

    #[test]
    fn reply_limits_have_floors() {
        let config = ClientConfig::builder("h")
            .reply_limits(10, 0)
            .build()
            .unwrap();
        assert_eq!(config.inner.max_reply_line, limits::REPLY_LINE_MAX);
        assert_eq!(config.inner.max_reply_lines, 1);
    }
}
