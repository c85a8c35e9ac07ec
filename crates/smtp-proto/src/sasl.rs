//! SASL steps of the AUTH command (RFC 4954): decoding client responses,
//! the PLAIN mechanism (RFC 4616), LOGIN and XOAUTH2.
//!
//! The server sends challenges as `334 <base64>` and reads each client
//! response as one base64 line; [`decode_response`] turns such a line (or
//! the initial response of `AUTH <mechanism> <initial-response>`) into
//! bytes. The client builds its responses with [`plain_response`],
//! [`login_response`] and [`xoauth2_response`].
//!
//! ```
//! use smtp_proto::sasl::{decode_response, parse_plain, plain_response};
//!
//! let line = plain_response(None, "user", "secret");
//! assert_eq!(line, "AHVzZXIAc2VjcmV0");
//! let credentials = parse_plain(&decode_response(line.as_bytes()).unwrap()).unwrap();
//! assert_eq!(credentials.username(), "user");
//! assert_eq!(credentials.as_password(), Some("secret"));
//! ```

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::limits::SASL_LINE_MAX;
use crate::{EnhancedCode, Reply};

/// A SASL mechanism name, as offered in the EHLO `AUTH` keyword and named
/// in the AUTH command.
///
/// ```
/// use smtp_proto::sasl::Mechanism;
/// assert_eq!(Mechanism::parse("plain"), Mechanism::Plain);
/// assert_eq!(Mechanism::parse("cram-md5").as_str(), "CRAM-MD5");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `PLAIN` (RFC 4616): authorization identity, authentication identity
    /// and password in one response.
    Plain,
    /// `LOGIN` (draft-murchison-sasl-login): user name and password in two
    /// responses to the challenges [`LOGIN_USERNAME_CHALLENGE`] and
    /// [`LOGIN_PASSWORD_CHALLENGE`].
    Login,
    /// `XOAUTH2`: an OAuth 2.0 bearer token, see [`xoauth2_response`].
    XOAuth2,
    /// Any other mechanism, its name in upper case.
    Other(String),
}

impl Mechanism {
    /// Recognises a mechanism name, ignoring case (RFC 4422 §3.1 names are
    /// upper case; peers do not always send them so).
    pub fn parse(name: &str) -> Mechanism {
        if name.eq_ignore_ascii_case("PLAIN") {
            Mechanism::Plain
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Mechanism::Login
        } else if name.eq_ignore_ascii_case("XOAUTH2") {
            Mechanism::XOAuth2
        } else {
            Mechanism::Other(name.to_ascii_uppercase())
        }
    }

    /// The name as sent on the wire, in upper case.
    pub fn as_str(&self) -> &str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::Other(name) => name,
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mechanism {
    type Err = std::convert::Infallible;

    /// The same as [`Mechanism::parse`]; never fails.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(Mechanism::parse(name))
    }
}

/// Credentials for `AUTH` (RFC 4954), the one type both ends use: the
/// client sends them, and the server decodes a client's `PLAIN` (RFC 4616)
/// or `LOGIN` response into them and hands them to its authenticator.
///
/// Build them with [`Credentials::password`] or [`Credentials::oauth2`],
/// and [`Credentials::with_authzid`] to ask to act as another identity.
/// Read them with [`username`](Credentials::username),
/// [`authzid`](Credentials::authzid), [`as_password`](Credentials::as_password)
/// and [`as_token`](Credentials::as_token), or by matching the variants
/// (with `..`: variants may gain fields, and the enum may gain variants for
/// other mechanisms).
///
/// `Debug` never shows the password or the token (they print as
/// [`MASK`](crate::transcript::MASK)), so credentials logged by accident
/// do not leak them.
///
/// ```
/// use smtp_proto::sasl::Credentials;
///
/// let credentials = Credentials::password("alice", "wonderland");
/// assert_eq!(credentials.username(), "alice");
/// assert_eq!(credentials.authzid(), None);
/// assert_eq!(credentials.as_password(), Some("wonderland"));
/// assert!(!format!("{credentials:?}").contains("wonderland"));
///
/// // Acting as a shared mailbox: the server must grant that right.
/// let delegated = Credentials::password("alice", "wonderland").with_authzid("sales");
/// assert_eq!(delegated.authzid(), Some("sales"));
///
/// let token = Credentials::oauth2("alice@example.com", "ya29.token");
/// assert_eq!(token.as_password(), None);
/// assert_eq!(token.as_token(), Some("ya29.token"));
///
/// // What an authenticator does with them.
/// match &credentials {
///     Credentials::Password { username, password, .. } => {
///         assert_eq!((username.as_str(), password.as_str()), ("alice", "wonderland"));
///     }
///     Credentials::OAuth2 { .. } => unreachable!(),
///     _ => unreachable!("a mechanism this code does not know"),
/// }
/// ```
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password: what `PLAIN` (RFC 4616) and `LOGIN`
    /// carry. Build it with [`Credentials::password`].
    #[non_exhaustive]
    Password {
        /// The authorization identity (RFC 4616 §2 `authzid`): the
        /// identity the client asks to act as, when it named one. `None`
        /// (or the same name as `username`) means "act as myself"; any
        /// other value asks for a right the server must grant explicitly.
        authzid: Option<String>,
        /// The user name: the authentication identity whose password this
        /// is (RFC 4616 §2 `authcid`; LOGIN's user name).
        username: String,
        /// The password.
        password: String,
    },
    /// A user name and an OAuth 2.0 bearer token: what `XOAUTH2` carries.
    /// Build it with [`Credentials::oauth2`].
    #[non_exhaustive]
    OAuth2 {
        /// The authorization identity, as for `Password`. `XOAUTH2` has no
        /// field for it, so smtp-client refuses to send OAuth2 credentials
        /// that have one.
        authzid: Option<String>,
        /// The user (mailbox) the token belongs to.
        username: String,
        /// The access token.
        token: String,
    },
}

impl Credentials {
    /// A user name and password, without an authorization identity.
    pub fn password(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials::Password {
            authzid: None,
            username: username.into(),
            password: password.into(),
        }
    }

    /// A user name and an OAuth 2.0 access token, without an authorization
    /// identity.
    pub fn oauth2(username: impl Into<String>, token: impl Into<String>) -> Self {
        Credentials::OAuth2 {
            authzid: None,
            username: username.into(),
            token: token.into(),
        }
    }

    /// The same credentials asking to act as `authzid` (RFC 4616 §2). An
    /// empty `authzid` means none, as in a PLAIN response.
    ///
    /// ```
    /// use smtp_proto::sasl::Credentials;
    /// let credentials = Credentials::password("alice", "secret").with_authzid("sales");
    /// assert_eq!(credentials.authzid(), Some("sales"));
    /// assert_eq!(credentials.with_authzid("").authzid(), None);
    /// ```
    pub fn with_authzid(mut self, authzid: impl Into<String>) -> Self {
        let authzid = authzid.into();
        let value = (!authzid.is_empty()).then_some(authzid);
        match &mut self {
            Credentials::Password { authzid, .. } | Credentials::OAuth2 { authzid, .. } => {
                *authzid = value;
            }
        }
        self
    }

    /// The user name: the authentication identity (RFC 4616 §2 `authcid`).
    pub fn username(&self) -> &str {
        match self {
            Credentials::Password { username, .. } | Credentials::OAuth2 { username, .. } => {
                username
            }
        }
    }

    /// The authorization identity, when the client asked to act as someone
    /// (RFC 4616 §2 `authzid`); never `Some("")`.
    pub fn authzid(&self) -> Option<&str> {
        match self {
            Credentials::Password { authzid, .. } | Credentials::OAuth2 { authzid, .. } => {
                authzid.as_deref().filter(|authzid| !authzid.is_empty())
            }
        }
    }

    /// The password of [`Credentials::Password`]; `None` for other kinds
    /// of credentials, which a password check must refuse.
    ///
    /// (The constructor [`Credentials::password`] has the name
    /// `password`, so this accessor is `as_password`.)
    pub fn as_password(&self) -> Option<&str> {
        match self {
            Credentials::Password { password, .. } => Some(password),
            Credentials::OAuth2 { .. } => None,
        }
    }

    /// The access token of [`Credentials::OAuth2`]; `None` otherwise.
    pub fn as_token(&self) -> Option<&str> {
        match self {
            Credentials::OAuth2 { token, .. } => Some(token),
            Credentials::Password { .. } => None,
        }
    }
}

impl fmt::Debug for Credentials {
    /// Shows the variant, the identities and [`MASK`](crate::transcript::MASK)
    /// in place of the password or token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mask = format_args!("{}", crate::transcript::MASK);
        match self {
            Credentials::Password {
                authzid, username, ..
            } => f
                .debug_struct("Password")
                .field("authzid", authzid)
                .field("username", username)
                .field("password", &mask)
                .finish(),
            Credentials::OAuth2 {
                authzid, username, ..
            } => f
                .debug_struct("OAuth2")
                .field("authzid", authzid)
                .field("username", username)
                .field("token", &mask)
                .finish(),
        }
    }
}

/// Why a SASL exchange failed; each maps to one [`Reply`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// The client answered `*` to cancel the exchange (RFC 4954 §4).
    Cancelled,
    /// The response is not valid base64 (standard alphabet, canonical
    /// padding, no whitespace).
    InvalidBase64,
    /// The decoded response does not have the shape the mechanism needs.
    Malformed,
    /// The response line is longer than [`SASL_LINE_MAX`] octets.
    TooLong,
}

impl SaslError {
    /// The reply a server sends for this error, after which the AUTH
    /// command has failed and the session goes on unauthenticated.
    ///
    /// RFC 4954 §4 gives 501 for a cancelled exchange and for a response
    /// that cannot be decoded; 500 5.5.6 (RFC 3463: authentication
    /// exchange line too long) for an over-long line.
    pub fn reply(&self) -> Reply {
        match self {
            SaslError::Cancelled => {
                Reply::new(501, EnhancedCode::new(5, 7, 0), "Authentication cancelled")
            }
            SaslError::InvalidBase64 => Reply::new(
                501,
                EnhancedCode::new(5, 5, 2),
                "Authentication response is not valid base64",
            ),
            SaslError::Malformed => Reply::new(
                501,
                EnhancedCode::new(5, 5, 2),
                "Malformed authentication response",
            ),
            SaslError::TooLong => Reply::new(
                500,
                EnhancedCode::new(5, 5, 6),
                "Authentication exchange line is too long",
            ),
        }
    }
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SaslError::Cancelled => "the client cancelled the authentication exchange",
            SaslError::InvalidBase64 => "the authentication response is not valid base64",
            SaslError::Malformed => "the authentication response is malformed",
            SaslError::TooLong => "the authentication response line is too long",
        })
    }
}

impl std::error::Error for SaslError {}

/// Decodes one client response line (without its `<CRLF>`), or the
/// initial response of an AUTH command.
///
/// `*` cancels the exchange (RFC 4954 §4). `=` is the empty initial
/// response (RFC 4954 §4), and an empty line is an empty response. Anything
/// else must be base64 with the standard alphabet and canonical padding.
/// The line is refused unread when it is longer than [`SASL_LINE_MAX`].
///
/// ```
/// use smtp_proto::sasl::{decode_response, SaslError};
/// assert_eq!(decode_response(b"dXNlcg=="), Ok(b"user".to_vec()));
/// assert_eq!(decode_response(b"="), Ok(Vec::new()));
/// assert_eq!(decode_response(b"*"), Err(SaslError::Cancelled));
/// assert_eq!(decode_response(b"dXNlcg"), Err(SaslError::InvalidBase64));
/// ```
pub fn decode_response(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    if line.len() > SASL_LINE_MAX {
        return Err(SaslError::TooLong);
    }
    match line {
        b"*" => Err(SaslError::Cancelled),
        b"=" | b"" => Ok(Vec::new()),
        _ => STANDARD.decode(line).map_err(|_| SaslError::InvalidBase64),
    }
}

/// Parses a decoded PLAIN response (RFC 4616 §2):
/// `[authzid] NUL authcid NUL passwd`, all UTF-8.
///
/// The result is a [`Credentials::Password`]; an empty `authzid` means
/// none. An empty `authcid` or password, a
/// missing or extra NUL, or bytes that are not UTF-8 give
/// [`SaslError::Malformed`].
pub fn parse_plain(decoded: &[u8]) -> Result<Credentials, SaslError> {
    let mut fields = decoded.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::Malformed);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed);
    }
    let text = |field: &[u8]| {
        std::str::from_utf8(field)
            .map(str::to_owned)
            .map_err(|_| SaslError::Malformed)
    };
    Ok(Credentials::Password {
        authzid: if authzid.is_empty() {
            None
        } else {
            Some(text(authzid)?)
        },
        username: text(authcid)?,
        password: text(password)?,
    })
}

/// The LOGIN challenge for the user name: base64 of `"Username:"`.
pub const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";

/// The LOGIN challenge for the password: base64 of `"Password:"`.
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// Encodes a server challenge for a `334` reply; empty data gives an empty
/// string (RFC 4954 §4: the reply is then `"334 "`).
pub fn encode_challenge(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// The client's PLAIN response (RFC 4616 §2), base64-encoded:
/// `[authzid] NUL authcid NUL password`.
pub fn plain_response(authzid: Option<&str>, authcid: &str, password: &str) -> String {
    let authzid = authzid.unwrap_or("");
    let mut message = Vec::with_capacity(authzid.len() + authcid.len() + password.len() + 2);
    message.extend_from_slice(authzid.as_bytes());
    message.push(0);
    message.extend_from_slice(authcid.as_bytes());
    message.push(0);
    message.extend_from_slice(password.as_bytes());
    STANDARD.encode(message)
}

/// The client's answer to one LOGIN challenge (the user name, then the
/// password), base64-encoded.
pub fn login_response(value: &str) -> String {
    STANDARD.encode(value)
}

/// The client's XOAUTH2 initial response, base64-encoded:
/// `user=<user>^Aauth=Bearer <token>^A^A`, where `^A` is the octet 0x01.
pub fn xoauth2_response(user: &str, token: &str) -> String {
    STANDARD.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cancel_and_empty_responses() {
        assert_eq!(decode_response(b"*"), Err(SaslError::Cancelled));
        assert_eq!(decode_response(b"="), Ok(Vec::new()));
        assert_eq!(decode_response(b""), Ok(Vec::new()));
    }

    #[test]
    fn strict_base64() {
        assert_eq!(decode_response(b"AHUAcA=="), Ok(b"\0u\0p".to_vec()));
        for bad in [
            &b"AHUAcA"[..],         // padding missing
            b"AHUAcA=",             // padding short
            b"AHUAcA===",           // padding long
            b"AHUA cA==",           // whitespace
            b"AHUAcA==\r",          // line ending left on
            b"AHUAc-==",            // URL-safe alphabet
            b"AHUAcB==",            // non-zero trailing bits
            b"**",                  // not a lone "*"
            b"==",                  // not a lone "="
            "d\u{e9}A=".as_bytes(), // not ASCII
        ] {
            assert_eq!(
                decode_response(bad),
                Err(SaslError::InvalidBase64),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn line_length_limit() {
        // SASL_LINE_MAX is a multiple of 4, so this is valid base64.
        let at_limit = vec![b'A'; SASL_LINE_MAX];
        assert_eq!(
            decode_response(&at_limit).map(|v| v.len()),
            Ok(SASL_LINE_MAX / 4 * 3)
        );
        let over = vec![b'A'; SASL_LINE_MAX + 1];
        assert_eq!(decode_response(&over), Err(SaslError::TooLong));
        // Too long is decided before anything else.
        let mut star = vec![b'*'];
        star.resize(SASL_LINE_MAX + 4, b'A');
        assert_eq!(decode_response(&star), Err(SaslError::TooLong));
    }

    #[test]
    fn plain_with_and_without_authzid() {
        assert_eq!(
            parse_plain(b"\0user\0pass"),
            Ok(Credentials::password("user", "pass"))
        );
        assert_eq!(
            parse_plain("admin\0us\u{e9}r\0p\u{e4}ss word".as_bytes()),
            Ok(Credentials::password("us\u{e9}r", "p\u{e4}ss word").with_authzid("admin"))
        );
    }

    #[test]
    fn plain_malformed() {
        for bad in [
            &b""[..],
            b"user",
            b"\0user",           // one NUL
            b"\0\0pass",         // empty authcid
            b"\0user\0",         // empty password
            b"a\0user\0pass\0",  // three NULs
            b"a\0user\0pa\0ss",  // NUL inside the password
            b"\0us\xffer\0pass", // authcid not UTF-8
            b"\0user\0pa\xc3",   // password not UTF-8
            b"\xfe\0user\0pass", // authzid not UTF-8
        ] {
            assert_eq!(parse_plain(bad), Err(SaslError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn credentials_debug_never_shows_secrets() {
        let password = Credentials::password("user", "hunter2").with_authzid("boss");
        let token = Credentials::oauth2("user@example.com", "ya29.sekrit");
        for (credentials, secret, kind) in [
            (&password, "hunter2", "Password"),
            (&token, "ya29.sekrit", "OAuth2"),
        ] {
            for shown in [format!("{credentials:?}"), format!("{credentials:#?}")] {
                assert!(!shown.contains(secret), "{shown}");
                assert!(shown.starts_with(kind), "{shown}");
                assert!(shown.contains("user"), "{shown}");
                assert!(
                    shown.contains(crate::transcript::MASK),
                    "the secret shows as the transcript mask: {shown}"
                );
            }
        }
        assert!(format!("{password:?}").contains("\"boss\""));
        // A secret equal to an identity is not hidden by that identity's
        // presence: the secret field itself is always the mask.
        let same = Credentials::password("alice", "alice");
        assert_eq!(
            format!("{same:?}"),
            format!(
                "Password {{ authzid: None, username: \"alice\", password: {} }}",
                crate::transcript::MASK
            )
        );
    }

    #[test]
    fn credentials_constructors_and_accessors() {
        let password = Credentials::password("alice", "secret");
        assert_eq!(password.username(), "alice");
        assert_eq!(password.authzid(), None);
        assert_eq!(password.as_password(), Some("secret"));
        assert_eq!(password.as_token(), None);
        let delegated = password.clone().with_authzid("sales");
        assert_eq!(delegated.authzid(), Some("sales"));
        assert_eq!(delegated.as_password(), Some("secret"));
        assert_ne!(delegated, password);
        // An empty authorization identity is none (RFC 4616 §2).
        assert_eq!(delegated.with_authzid(""), password);

        let token = Credentials::oauth2("bob@example.com", "tok");
        assert_eq!(token.username(), "bob@example.com");
        assert_eq!(token.as_password(), None);
        assert_eq!(token.as_token(), Some("tok"));
        assert_eq!(token.clone().with_authzid("x").authzid(), Some("x"));
        assert_ne!(token, Credentials::password("bob@example.com", "tok"));

        // Fields are public; an empty authzid written into one still reads
        // as none.
        let mut edited = Credentials::password("alice", "secret");
        if let Credentials::Password { authzid, .. } = &mut edited {
            *authzid = Some(String::new());
        }
        assert_eq!(edited.authzid(), None);
    }

    #[test]
    fn mechanisms() {
        assert_eq!(Mechanism::parse("PLAIN"), Mechanism::Plain);
        assert_eq!(Mechanism::parse("Login"), Mechanism::Login);
        assert_eq!(Mechanism::parse("xoauth2"), Mechanism::XOAuth2);
        assert_eq!(
            Mechanism::parse("scram-sha-256"),
            Mechanism::Other("SCRAM-SHA-256".into())
        );
        for name in ["PLAIN", "LOGIN", "XOAUTH2", "CRAM-MD5"] {
            let mechanism: Mechanism = name.to_ascii_lowercase().parse().unwrap();
            assert_eq!(mechanism.as_str(), name);
            assert_eq!(mechanism.to_string(), name);
        }
    }

    #[test]
    fn login_challenges_are_the_usual_prompts() {
        assert_eq!(
            decode_response(LOGIN_USERNAME_CHALLENGE.as_bytes()).unwrap(),
            b"Username:"
        );
        assert_eq!(
            decode_response(LOGIN_PASSWORD_CHALLENGE.as_bytes()).unwrap(),
            b"Password:"
        );
        assert_eq!(encode_challenge(b"Username:"), LOGIN_USERNAME_CHALLENGE);
        assert_eq!(encode_challenge(b""), "");
    }

    #[test]
    fn client_responses() {
        // RFC 4616 §4 example, with and without an authorization identity.
        assert_eq!(
            plain_response(None, "tim", "tanstaaftanstaaf"),
            "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
        );
        assert_eq!(
            plain_response(Some("Ursel"), "Kurt", "xipj3plmq"),
            STANDARD.encode("Ursel\0Kurt\0xipj3plmq")
        );
        assert_eq!(login_response("user"), "dXNlcg==");
        assert_eq!(
            decode_response(xoauth2_response("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg").as_bytes()).unwrap(),
            b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
        );
    }

    #[test]
    fn error_replies() {
        let cases = [
            (SaslError::Cancelled, 501, EnhancedCode::new(5, 7, 0)),
            (SaslError::InvalidBase64, 501, EnhancedCode::new(5, 5, 2)),
            (SaslError::Malformed, 501, EnhancedCode::new(5, 5, 2)),
            (SaslError::TooLong, 500, EnhancedCode::new(5, 5, 6)),
        ];
        for (error, code, enhanced) in cases {
            let reply = error.reply();
            assert_eq!(reply.code(), code, "{error}");
            assert_eq!(reply.enhanced(), Some(enhanced), "{error}");
            assert!(reply.is_permanent(), "{error}");
            assert!(!error.to_string().is_empty());
        }
    }

    proptest! {
        #[test]
        fn plain_round_trip(
            authzid in proptest::option::of("[^\0]{1,20}"),
            authcid in "[^\0]{1,20}",
            password in "[^\0]{1,20}",
        ) {
            let line = plain_response(authzid.as_deref(), &authcid, &password);
            let credentials = parse_plain(&decode_response(line.as_bytes()).unwrap()).unwrap();
            prop_assert_eq!(credentials.username(), authcid.as_str());
            prop_assert_eq!(credentials.as_password(), Some(password.as_str()));
            prop_assert_eq!(credentials.authzid(), authzid.as_deref());
        }

        #[test]
        fn challenge_round_trip(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            prop_assert_eq!(decode_response(encode_challenge(&data).as_bytes()), Ok(data));
        }

        #[test]
        fn decode_response_never_panics(line in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_response(&line).map(|bytes| parse_plain(&bytes));
        }
    }
}
