//! SMTP commands: the RFC 5321 §4.1.1 verbs and the ESMTP parameters of
//! the extensions ferry speaks, parsed on the server side and encoded on
//! the client side.
//!
//! [`Command::parse`] takes one command line without its `<CRLF>` and never
//! panics; every refusal is a [`CommandError`] that maps to exactly one
//! [`Reply`]. [`Command::encode`] writes the canonical wire form and
//! refuses anything that would not parse back to the same command.
//!
//! ```
//! use smtp_proto::command::{BodyType, Command};
//! let command = Command::parse(b"mail from:<a@example.com> size=10 body=8bitmime").unwrap();
//! let Command::Mail { from, params } = &command else { unreachable!() };
//! assert_eq!(from.as_ref().unwrap().as_str(), "a@example.com");
//! assert_eq!(params.size, Some(10));
//! assert_eq!(params.body, Some(BodyType::EightBitMime));
//!
//! let mut wire = bytes::BytesMut::new();
//! command.encode(&mut wire).unwrap();
//! assert_eq!(&wire[..], b"MAIL FROM:<a@example.com> SIZE=10 BODY=8BITMIME\r\n");
//! ```
//!
//! [`CommandRef::parse`] makes the same checks and borrows from the line
//! instead of allocating: addresses, arguments and the xtext values that
//! encode nothing point into it. [`Command::parse`] is that parse followed
//! by [`CommandRef::to_command`].
//!
//! ```
//! use smtp_proto::command::CommandRef;
//! let line = b"RCPT TO:<b@example.net> ORCPT=rfc822;b@example.net";
//! let CommandRef::Rcpt { to, params } = CommandRef::parse(line).unwrap() else { unreachable!() };
//! assert_eq!(to.domain(), Some("example.net"));
//! assert_eq!(params.orcpt.unwrap().address, "b@example.net");
//! ```

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, BytesMut};

use crate::address::{self, Address, AddressError, AddressRef, class};
use crate::reply::{Reply, codes};
use crate::xtext;

/// RFC 3461 §4: an `ENVID` value is at most 100 characters (as sent, in
/// xtext).
const ENVID_MAX: usize = 100;

/// RFC 3461 §4: an `ORCPT` value (`addr-type;xtext`) is at most 500
/// characters.
const ORCPT_MAX: usize = 500;

/// RFC 4954 §4: a SASL mechanism name is 1 to 20 characters.
const SASL_MECHANISM_MAX: usize = 20;

/// Longest parameter keyword quoted back in an [`CommandError::UnknownParameter`]
/// reply, so the reply stays within RFC 5321's 512-octet reply line.
const UNKNOWN_PARAMETER_QUOTE_MAX: usize = 64;

/// One SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `EHLO domain` (RFC 5321 §4.1.1.1); the domain may be an address
    /// literal and is kept as written.
    Ehlo {
        /// The client's domain or address literal.
        domain: String,
    },
    /// `HELO domain` (RFC 5321 §4.1.1.1).
    Helo {
        /// The client's domain or address literal.
        domain: String,
    },
    /// `LHLO domain` (RFC 2033 §4.1), LMTP's EHLO.
    Lhlo {
        /// The client's domain or address literal.
        domain: String,
    },
    /// `MAIL FROM:<reverse-path> [parameters]` (RFC 5321 §4.1.1.2).
    Mail {
        /// The sender; `None` is the null reverse-path `<>` of bounces.
        from: Option<Address>,
        /// The ESMTP parameters.
        params: MailParameters,
    },
    /// `RCPT TO:<forward-path> [parameters]` (RFC 5321 §4.1.1.3).
    Rcpt {
        /// The recipient, possibly [`Address::postmaster`].
        to: Address,
        /// The ESMTP parameters.
        params: RcptParameters,
    },
    /// `DATA` (RFC 5321 §4.1.1.4).
    Data,
    /// `BDAT size [LAST]` (RFC 3030 §2): `size` octets follow the command
    /// line.
    Bdat {
        /// Octets in this chunk.
        size: u64,
        /// True on the final chunk.
        last: bool,
    },
    /// `RSET` (RFC 5321 §4.1.1.5).
    Rset,
    /// `NOOP [string]` (RFC 5321 §4.1.1.9); the argument is ignored.
    Noop,
    /// `QUIT` (RFC 5321 §4.1.1.10).
    Quit,
    /// `VRFY string` (RFC 5321 §4.1.1.6).
    Vrfy {
        /// The user or mailbox to verify, as sent.
        argument: String,
    },
    /// `EXPN string` (RFC 5321 §4.1.1.7).
    Expn {
        /// The mailing list to expand, as sent.
        argument: String,
    },
    /// `HELP [string]` (RFC 5321 §4.1.1.8).
    Help {
        /// The topic, if any.
        topic: Option<String>,
    },
    /// `STARTTLS` (RFC 3207 §4).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4).
    Auth {
        /// The SASL mechanism, upper-cased.
        mechanism: String,
        /// The base64 initial response as sent; `"="` stands for an empty
        /// one. Decode it with `sasl::decode_response`.
        initial_response: Option<String>,
    },
}

/// The parameters of `MAIL FROM:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParameters {
    /// `SIZE=n`, the declared message size in octets (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152, RFC 3030).
    pub body: Option<BodyType>,
    /// `SMTPUTF8` (RFC 6531 §3.4).
    pub smtputf8: bool,
    /// `RET=FULL|HDRS` (RFC 3461 §4.3).
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-decoded (RFC 3461 §4.4).
    pub envid: Option<String>,
    /// `AUTH=`, xtext-decoded; `"<>"` when the client does not vouch for
    /// the sender (RFC 4954 §5).
    pub auth: Option<String>,
    /// `REQUIRETLS` (RFC 8689 §4.1).
    pub requiretls: bool,
}

/// The parameters of `RCPT TO:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParameters {
    /// `NOTIFY=` (RFC 3461 §4.1).
    pub notify: Option<Notify>,
    /// `ORCPT=` (RFC 3461 §4.2).
    pub orcpt: Option<OriginalRecipient>,
}

/// The `BODY=` parameter of `MAIL FROM:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyType {
    /// `7BIT` (RFC 6152 §2).
    SevenBit,
    /// `8BITMIME` (RFC 6152 §2).
    EightBitMime,
    /// `BINARYMIME` (RFC 3030 §3); the body must be sent with BDAT.
    BinaryMime,
}

impl BodyType {
    /// The keyword as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyType::SevenBit => "7BIT",
            BodyType::EightBitMime => "8BITMIME",
            BodyType::BinaryMime => "BINARYMIME",
        }
    }
}

/// The `RET=` parameter of `MAIL FROM:`: how much of the message a failure
/// DSN returns (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ret {
    /// `FULL`: the whole message.
    Full,
    /// `HDRS`: the headers only.
    Headers,
}

impl Ret {
    /// The keyword as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Headers => "HDRS",
        }
    }
}

/// The `NOTIFY=` parameter of `RCPT TO:` (RFC 3461 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Notify {
    /// `NEVER`: no DSN at all. It cannot be combined with other values.
    Never,
    /// A list of conditions; at least one is true.
    On {
        /// `SUCCESS`: report delivery.
        success: bool,
        /// `FAILURE`: report failure.
        failure: bool,
        /// `DELAY`: report delays.
        delay: bool,
    },
}

/// The `ORCPT=` parameter of `RCPT TO:` (RFC 3461 §4.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginalRecipient {
    /// The address type as sent, usually `rfc822` (or `utf-8`, RFC 6533).
    pub addr_type: String,
    /// The original recipient, xtext-decoded.
    pub address: String,
}

/// One SMTP command borrowed from its line: [`Command`] without the
/// allocations, from [`CommandRef::parse`] (or, framed,
/// `ServerCodec::decode_command`). The fields are those of [`Command`]
/// with `&str` for `String`; xtext values are decoded, borrowed when they
/// encode nothing. The one difference: the AUTH mechanism is as sent, not
/// upper-cased (compare it with `eq_ignore_ascii_case`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandRef<'a> {
    /// `EHLO domain`.
    Ehlo {
        /// The client's domain or address literal.
        domain: &'a str,
    },
    /// `HELO domain`.
    Helo {
        /// The client's domain or address literal.
        domain: &'a str,
    },
    /// `LHLO domain`.
    Lhlo {
        /// The client's domain or address literal.
        domain: &'a str,
    },
    /// `MAIL FROM:<reverse-path> [parameters]`.
    Mail {
        /// The sender; `None` is the null reverse-path `<>`.
        from: Option<AddressRef<'a>>,
        /// The ESMTP parameters.
        params: MailParametersRef<'a>,
    },
    /// `RCPT TO:<forward-path> [parameters]`.
    Rcpt {
        /// The recipient, possibly [`AddressRef::postmaster`].
        to: AddressRef<'a>,
        /// The ESMTP parameters.
        params: RcptParametersRef<'a>,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]`.
    Bdat {
        /// Octets in this chunk.
        size: u64,
        /// True on the final chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy {
        /// The user or mailbox to verify, as sent.
        argument: &'a str,
    },
    /// `EXPN string`.
    Expn {
        /// The mailing list to expand, as sent.
        argument: &'a str,
    },
    /// `HELP [string]`.
    Help {
        /// The topic, if any.
        topic: Option<&'a str>,
    },
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]`.
    Auth {
        /// The SASL mechanism as sent (any case).
        mechanism: &'a str,
        /// The base64 initial response as sent; `"="` stands for an empty
        /// one.
        initial_response: Option<&'a str>,
    },
}

/// [`MailParameters`] borrowed from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParametersRef<'a> {
    /// `SIZE=n` (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152, RFC 3030).
    pub body: Option<BodyType>,
    /// `SMTPUTF8` (RFC 6531 §3.4).
    pub smtputf8: bool,
    /// `RET=FULL|HDRS` (RFC 3461 §4.3).
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-decoded (RFC 3461 §4.4).
    pub envid: Option<Cow<'a, str>>,
    /// `AUTH=`, xtext-decoded (RFC 4954 §5).
    pub auth: Option<Cow<'a, str>>,
    /// `REQUIRETLS` (RFC 8689 §4.1).
    pub requiretls: bool,
}

/// [`RcptParameters`] borrowed from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParametersRef<'a> {
    /// `NOTIFY=` (RFC 3461 §4.1).
    pub notify: Option<Notify>,
    /// `ORCPT=` (RFC 3461 §4.2).
    pub orcpt: Option<OriginalRecipientRef<'a>>,
}

/// [`OriginalRecipient`] borrowed from the command line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginalRecipientRef<'a> {
    /// The address type as sent, usually `rfc822`.
    pub addr_type: &'a str,
    /// The original recipient, xtext-decoded.
    pub address: Cow<'a, str>,
}

impl MailParametersRef<'_> {
    /// The owned [`MailParameters`].
    pub fn to_params(&self) -> MailParameters {
        MailParameters {
            size: self.size,
            body: self.body,
            smtputf8: self.smtputf8,
            ret: self.ret,
            envid: self.envid.as_deref().map(str::to_owned),
            auth: self.auth.as_deref().map(str::to_owned),
            requiretls: self.requiretls,
        }
    }
}

impl RcptParametersRef<'_> {
    /// The owned [`RcptParameters`].
    pub fn to_params(&self) -> RcptParameters {
        RcptParameters {
            notify: self.notify,
            orcpt: self.orcpt.as_ref().map(|orcpt| OriginalRecipient {
                addr_type: orcpt.addr_type.to_owned(),
                address: orcpt.address.as_ref().to_owned(),
            }),
        }
    }
}

impl<'a> CommandRef<'a> {
    /// Parses one command line, without its `<CRLF>`, exactly as
    /// [`Command::parse`] does, borrowing from `line`.
    pub fn parse(line: &'a [u8]) -> Result<CommandRef<'a>, CommandError> {
        // Checked before anything else: a bare CR or LF is the signature of
        // SMTP smuggling and gets its own reply.
        // One pass finds any control byte; only then is it worth telling
        // CR and LF from the rest.
        if has_control(line) {
            if memchr::memchr2(b'\r', b'\n', line).is_some() {
                return Err(CommandError::BareLineEnding);
            }
            return Err(CommandError::ForbiddenCharacter);
        }
        let line = std::str::from_utf8(line)
            .map_err(|_| CommandError::Syntax("command line is not valid UTF-8"))?;
        let line = line.trim_end_matches(' ');
        let (verb, args) = match split_once_byte(line, b' ') {
            Some((verb, args)) => (verb, Some(args)),
            None => (line, None),
        };
        let mut upper = [0u8; 8];
        let Some(upper) = upper.get_mut(..verb.len()) else {
            return Err(CommandError::UnknownCommand);
        };
        for (to, from) in upper.iter_mut().zip(verb.bytes()) {
            *to = from.to_ascii_uppercase();
        }
        match &*upper {
            b"EHLO" => parse_hello(args, "EHLO requires a domain or address literal")
                .map(|domain| CommandRef::Ehlo { domain }),
            b"HELO" => parse_hello(args, "HELO requires a domain or address literal")
                .map(|domain| CommandRef::Helo { domain }),
            b"LHLO" => parse_hello(args, "LHLO requires a domain or address literal")
                .map(|domain| CommandRef::Lhlo { domain }),
            b"MAIL" => parse_mail(args),
            b"RCPT" => parse_rcpt(args),
            b"DATA" => no_arguments(args, "DATA takes no arguments", CommandRef::Data),
            b"BDAT" => parse_bdat(args),
            b"RSET" => no_arguments(args, "RSET takes no arguments", CommandRef::Rset),
            // RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
            b"NOOP" => Ok(CommandRef::Noop),
            b"QUIT" => no_arguments(args, "QUIT takes no arguments", CommandRef::Quit),
            b"VRFY" => required_argument(args, "VRFY requires an argument")
                .map(|argument| CommandRef::Vrfy { argument }),
            b"EXPN" => required_argument(args, "EXPN requires an argument")
                .map(|argument| CommandRef::Expn { argument }),
            b"HELP" => Ok(CommandRef::Help {
                topic: optional_argument(args),
            }),
            b"STARTTLS" => no_arguments(args, "STARTTLS takes no arguments", CommandRef::StartTls),
            b"AUTH" => parse_auth(args),
            _ => Err(CommandError::UnknownCommand),
        }
    }

    /// The owned [`Command`]: the borrowed text copied, the AUTH mechanism
    /// upper-cased.
    pub fn to_command(&self) -> Command {
        match self {
            CommandRef::Ehlo { domain } => Command::Ehlo {
                domain: (*domain).to_owned(),
            },
            CommandRef::Helo { domain } => Command::Helo {
                domain: (*domain).to_owned(),
            },
            CommandRef::Lhlo { domain } => Command::Lhlo {
                domain: (*domain).to_owned(),
            },
            CommandRef::Mail { from, params } => Command::Mail {
                from: from.map(AddressRef::to_address),
                params: params.to_params(),
            },
            CommandRef::Rcpt { to, params } => Command::Rcpt {
                to: to.to_address(),
                params: params.to_params(),
            },
            CommandRef::Data => Command::Data,
            CommandRef::Bdat { size, last } => Command::Bdat {
                size: *size,
                last: *last,
            },
            CommandRef::Rset => Command::Rset,
            CommandRef::Noop => Command::Noop,
            CommandRef::Quit => Command::Quit,
            CommandRef::Vrfy { argument } => Command::Vrfy {
                argument: (*argument).to_owned(),
            },
            CommandRef::Expn { argument } => Command::Expn {
                argument: (*argument).to_owned(),
            },
            CommandRef::Help { topic } => Command::Help {
                topic: topic.map(str::to_owned),
            },
            CommandRef::StartTls => Command::StartTls,
            CommandRef::Auth {
                mechanism,
                initial_response,
            } => Command::Auth {
                mechanism: mechanism.to_ascii_uppercase(),
                initial_response: initial_response.map(str::to_owned),
            },
        }
    }
}

impl From<CommandRef<'_>> for Command {
    fn from(command: CommandRef<'_>) -> Command {
        command.to_command()
    }
}

/// Why a command line was refused. Each variant maps to one reply with
/// [`CommandError::reply`]; none of them ends the session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// An empty line or an unknown verb: `500 5.5.1`.
    UnknownCommand,
    /// The line exceeds the configured maximum (reported by the codec, not
    /// by [`Command::parse`]): `500 5.5.2`.
    LineTooLong,
    /// A bare CR or LF inside the line (SMTP smuggling): `550 5.5.2`.
    BareLineEnding,
    /// NUL, TAB or another control character: `500 5.5.2`.
    ForbiddenCharacter,
    /// Malformed arguments; the text says what: `501 5.5.4`.
    Syntax(&'static str),
    /// A bad reverse-path: `501 5.1.7`, or `553 5.6.7` for a UTF-8
    /// address without `SMTPUTF8` (RFC 6531 §3.5).
    InvalidSender(AddressError),
    /// A bad forward-path: `501 5.1.3`, or `553 5.6.7` for a UTF-8 address
    /// the session may not use.
    InvalidRecipient(AddressError),
    /// A parameter keyword this implementation does not know, upper-cased:
    /// `555 5.5.4` (RFC 5321 §4.1.1.11).
    UnknownParameter(String),
    /// A known parameter with a bad value, or given twice: `501 5.5.4`.
    InvalidParameter(&'static str),
}

impl CommandError {
    /// The reply to send for this error.
    pub fn reply(&self) -> Reply {
        let (code, enhanced) = match self {
            CommandError::UnknownCommand => (500, codes::INVALID_COMMAND),
            CommandError::LineTooLong => (500, codes::SYNTAX_ERROR),
            CommandError::BareLineEnding => (550, codes::SYNTAX_ERROR),
            CommandError::ForbiddenCharacter => (500, codes::SYNTAX_ERROR),
            CommandError::Syntax(_) => (501, codes::INVALID_ARGUMENTS),
            CommandError::InvalidSender(AddressError::Utf8NotPermitted)
            | CommandError::InvalidRecipient(AddressError::Utf8NotPermitted) => {
                (553, codes::NON_ASCII_ADDRESS)
            }
            CommandError::InvalidSender(_) => (501, codes::BAD_SENDER_SYNTAX),
            CommandError::InvalidRecipient(_) => (501, codes::BAD_DESTINATION_SYNTAX),
            CommandError::UnknownParameter(_) => (555, codes::INVALID_ARGUMENTS),
            CommandError::InvalidParameter(_) => (501, codes::INVALID_ARGUMENTS),
        };
        Reply::new(code, enhanced, self.to_string())
    }
}

impl fmt::Display for CommandError {
    /// The text of [`CommandError::reply`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::UnknownCommand => f.write_str("Command not recognized"),
            CommandError::LineTooLong => f.write_str("Line too long"),
            CommandError::BareLineEnding => {
                f.write_str("Bare CR or LF not allowed; lines must end with CRLF")
            }
            CommandError::ForbiddenCharacter => {
                f.write_str("Control characters are not allowed in commands")
            }
            CommandError::Syntax(what) => write!(f, "Syntax error: {what}"),
            CommandError::InvalidSender(AddressError::Utf8NotPermitted) => {
                f.write_str("UTF-8 sender address requires the SMTPUTF8 parameter")
            }
            CommandError::InvalidSender(error) => write!(f, "Bad sender address: {error}"),
            CommandError::InvalidRecipient(AddressError::Utf8NotPermitted) => {
                f.write_str("UTF-8 recipient address requires SMTPUTF8")
            }
            CommandError::InvalidRecipient(error) => write!(f, "Bad recipient address: {error}"),
            CommandError::UnknownParameter(name) => write!(f, "Parameter {name} not supported"),
            CommandError::InvalidParameter(what) => write!(f, "Invalid parameter: {what}"),
        }
    }
}

impl std::error::Error for CommandError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CommandError::InvalidSender(error) | CommandError::InvalidRecipient(error) => {
                Some(error)
            }
            _ => None,
        }
    }
}

/// Why [`Command::encode`] refused a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// CR, LF, NUL or another control character in a field, which would
    /// break or smuggle a command line.
    ForbiddenCharacter,
    /// A value the receiving parser would refuse; the text says which.
    Invalid(&'static str),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::ForbiddenCharacter => {
                f.write_str("control character (CR, LF, NUL, ...) in a command field")
            }
            EncodeError::Invalid(what) => write!(f, "invalid command: {what}"),
        }
    }
}

impl std::error::Error for EncodeError {}

impl Command {
    /// Parses one command line, without its `<CRLF>`.
    ///
    /// Verbs and parameter keywords are case-insensitive; addresses and
    /// other arguments are kept as written. Trailing spaces are ignored, as
    /// is a space after `MAIL FROM:` and `RCPT TO:` (real clients send
    /// them). A UTF-8 sender needs the `SMTPUTF8` parameter in the same
    /// command; a UTF-8 recipient is accepted here and left to the server,
    /// which knows whether the transaction asked for `SMTPUTF8`.
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        CommandRef::parse(line).map(|command| command.to_command())
    }

    /// Appends the canonical wire form, `<CRLF>` included, to `dst`.
    ///
    /// Parameters are written in a fixed order and upper case; `ENVID`,
    /// `ORCPT` and `AUTH=` are xtext-encoded. Anything [`Command::parse`]
    /// would refuse is refused here and nothing is appended, so an encoded
    /// command always parses back to itself (the AUTH mechanism is written
    /// upper-cased).
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let start = dst.len();
        let result = self.encode_unchecked(dst);
        if result.is_err() {
            dst.truncate(start);
        }
        result
    }

    /// The verb, upper-cased: `"MAIL"`, `"RCPT"`, `"STARTTLS"`, ...
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo { .. } => "EHLO",
            Command::Helo { .. } => "HELO",
            Command::Lhlo { .. } => "LHLO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Bdat { .. } => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy { .. } => "VRFY",
            Command::Expn { .. } => "EXPN",
            Command::Help { .. } => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
        }
    }

    /// Writes the command, possibly leaving a partial line behind on error
    /// (the caller truncates it).
    fn encode_unchecked(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Command::Ehlo { domain } | Command::Helo { domain } | Command::Lhlo { domain } => {
                check_control(domain)?;
                if !address::is_valid_helo_domain(domain) {
                    return Err(EncodeError::Invalid(
                        "greeting needs a domain or address literal",
                    ));
                }
                put_words(dst, &[self.verb(), " ", domain]);
            }
            Command::Mail { from, params } => {
                if from.as_ref().is_some_and(Address::is_utf8) && !params.smtputf8 {
                    return Err(EncodeError::Invalid(
                        "UTF-8 sender address requires the SMTPUTF8 parameter",
                    ));
                }
                let from = from.as_ref().map_or("", Address::as_str);
                put_words(dst, &["MAIL FROM:<", from, ">"]);
                params.encode(dst)?;
            }
            Command::Rcpt { to, params } => {
                put_words(dst, &["RCPT TO:<", to.as_str(), ">"]);
                params.encode(dst)?;
            }
            Command::Bdat { size, last } => {
                dst.put_slice(b"BDAT ");
                put_decimal(dst, *size);
                if *last {
                    dst.put_slice(b" LAST");
                }
            }
            Command::Vrfy { argument } | Command::Expn { argument } => {
                check_argument(argument)?;
                put_words(dst, &[self.verb(), " ", argument]);
            }
            Command::Help { topic: Some(topic) } => {
                check_argument(topic)?;
                put_words(dst, &["HELP ", topic]);
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                check_control(mechanism)?;
                if !is_sasl_mechanism(mechanism) {
                    return Err(EncodeError::Invalid(
                        "SASL mechanism must be 1 to 20 letters, digits, '-' or '_'",
                    ));
                }
                dst.put_slice(b"AUTH ");
                for byte in mechanism.bytes() {
                    dst.put_u8(byte.to_ascii_uppercase());
                }
                if let Some(response) = initial_response {
                    check_control(response)?;
                    if !is_initial_response(response) {
                        return Err(EncodeError::Invalid(
                            "initial response must be base64, or \"=\" when empty",
                        ));
                    }
                    put_words(dst, &[" ", response]);
                }
            }
            Command::Data
            | Command::Rset
            | Command::Noop
            | Command::Quit
            | Command::StartTls
            | Command::Help { topic: None } => dst.put_slice(self.verb().as_bytes()),
        }
        dst.put_slice(b"\r\n");
        Ok(())
    }
}

impl<'a> MailParametersRef<'a> {
    /// Parses the space-separated parameters after the reverse-path.
    fn parse(params: &'a str) -> Result<MailParametersRef<'a>, CommandError> {
        let mut parsed = MailParametersRef::default();
        for param in split_parameters(params) {
            let (keyword, value) = param?;
            if keyword.eq_ignore_ascii_case("SIZE") {
                if parsed.size.is_some() {
                    return Err(CommandError::InvalidParameter("SIZE given twice"));
                }
                // RFC 1870 §3: size-value = 1*20DIGIT.
                let value = value.unwrap_or_default();
                if value.is_empty() || value.len() > 20 || !is_digits(value) {
                    return Err(CommandError::InvalidParameter(
                        "SIZE must be a number of octets",
                    ));
                }
                // Twenty digits can exceed u64: such a size is valid syntax
                // and simply too large, which the server answers with 552
                // (RFC 1870 §6), so it saturates rather than fail as 501.
                parsed.size = Some(value.parse().unwrap_or(u64::MAX));
            } else if keyword.eq_ignore_ascii_case("BODY") {
                if parsed.body.is_some() {
                    return Err(CommandError::InvalidParameter("BODY given twice"));
                }
                let value = value.unwrap_or_default();
                parsed.body = Some(if value.eq_ignore_ascii_case("7BIT") {
                    BodyType::SevenBit
                } else if value.eq_ignore_ascii_case("8BITMIME") {
                    BodyType::EightBitMime
                } else if value.eq_ignore_ascii_case("BINARYMIME") {
                    BodyType::BinaryMime
                } else {
                    return Err(CommandError::InvalidParameter(
                        "BODY must be 7BIT, 8BITMIME or BINARYMIME",
                    ));
                });
            } else if keyword.eq_ignore_ascii_case("SMTPUTF8") {
                if parsed.smtputf8 {
                    return Err(CommandError::InvalidParameter("SMTPUTF8 given twice"));
                }
                if value.is_some() {
                    return Err(CommandError::InvalidParameter("SMTPUTF8 takes no value"));
                }
                parsed.smtputf8 = true;
            } else if keyword.eq_ignore_ascii_case("RET") {
                if parsed.ret.is_some() {
                    return Err(CommandError::InvalidParameter("RET given twice"));
                }
                let value = value.unwrap_or_default();
                parsed.ret = Some(if value.eq_ignore_ascii_case("FULL") {
                    Ret::Full
                } else if value.eq_ignore_ascii_case("HDRS") {
                    Ret::Headers
                } else {
                    return Err(CommandError::InvalidParameter("RET must be FULL or HDRS"));
                });
            } else if keyword.eq_ignore_ascii_case("ENVID") {
                if parsed.envid.is_some() {
                    return Err(CommandError::InvalidParameter("ENVID given twice"));
                }
                let value = value.unwrap_or_default();
                if value.len() > ENVID_MAX {
                    return Err(CommandError::InvalidParameter(
                        "ENVID longer than 100 characters",
                    ));
                }
                parsed.envid = Some(decode_xtext_value(value, "ENVID must be non-empty xtext")?);
            } else if keyword.eq_ignore_ascii_case("AUTH") {
                if parsed.auth.is_some() {
                    return Err(CommandError::InvalidParameter("AUTH given twice"));
                }
                let value = value.unwrap_or_default();
                parsed.auth = Some(decode_xtext_value(value, "AUTH= must be non-empty xtext")?);
            } else if keyword.eq_ignore_ascii_case("REQUIRETLS") {
                if parsed.requiretls {
                    return Err(CommandError::InvalidParameter("REQUIRETLS given twice"));
                }
                if value.is_some() {
                    return Err(CommandError::InvalidParameter("REQUIRETLS takes no value"));
                }
                parsed.requiretls = true;
            } else {
                return Err(unknown_parameter(keyword));
            }
        }
        Ok(parsed)
    }
}

impl MailParameters {
    fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        if let Some(size) = self.size {
            dst.put_slice(b" SIZE=");
            put_decimal(dst, size);
        }
        if let Some(body) = self.body {
            put_words(dst, &[" BODY=", body.as_str()]);
        }
        if self.smtputf8 {
            dst.put_slice(b" SMTPUTF8");
        }
        if self.requiretls {
            dst.put_slice(b" REQUIRETLS");
        }
        if let Some(ret) = self.ret {
            put_words(dst, &[" RET=", ret.as_str()]);
        }
        if let Some(envid) = &self.envid {
            let encoded = encode_xtext_value(envid, "ENVID must not be empty")?;
            if encoded.len() > ENVID_MAX {
                return Err(EncodeError::Invalid(
                    "ENVID longer than 100 characters once xtext-encoded",
                ));
            }
            put_words(dst, &[" ENVID=", &encoded]);
        }
        if let Some(auth) = &self.auth {
            let encoded = encode_xtext_value(auth, "AUTH= must not be empty")?;
            put_words(dst, &[" AUTH=", &encoded]);
        }
        Ok(())
    }
}

impl<'a> RcptParametersRef<'a> {
    /// Parses the space-separated parameters after the forward-path.
    fn parse(params: &'a str) -> Result<RcptParametersRef<'a>, CommandError> {
        let mut parsed = RcptParametersRef::default();
        for param in split_parameters(params) {
            let (keyword, value) = param?;
            if keyword.eq_ignore_ascii_case("NOTIFY") {
                if parsed.notify.is_some() {
                    return Err(CommandError::InvalidParameter("NOTIFY given twice"));
                }
                parsed.notify = Some(parse_notify(value.unwrap_or_default())?);
            } else if keyword.eq_ignore_ascii_case("ORCPT") {
                if parsed.orcpt.is_some() {
                    return Err(CommandError::InvalidParameter("ORCPT given twice"));
                }
                parsed.orcpt = Some(parse_orcpt(value.unwrap_or_default())?);
            } else {
                return Err(unknown_parameter(keyword));
            }
        }
        Ok(parsed)
    }
}

impl RcptParameters {
    fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self.notify {
            None => {}
            Some(Notify::Never) => dst.put_slice(b" NOTIFY=NEVER"),
            Some(Notify::On {
                success,
                failure,
                delay,
            }) => {
                if !(success || failure || delay) {
                    return Err(EncodeError::Invalid(
                        "NOTIFY needs at least one of SUCCESS, FAILURE, DELAY",
                    ));
                }
                dst.put_slice(b" NOTIFY=");
                let mut separator: &[u8] = b"";
                for (on, name) in [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")] {
                    if on {
                        dst.put_slice(separator);
                        dst.put_slice(name.as_bytes());
                        separator = b",";
                    }
                }
            }
        }
        if let Some(orcpt) = &self.orcpt {
            check_control(&orcpt.addr_type)?;
            if !is_atom(&orcpt.addr_type) {
                return Err(EncodeError::Invalid("ORCPT address type must be an atom"));
            }
            let encoded = encode_xtext_value(&orcpt.address, "ORCPT address must not be empty")?;
            if orcpt.addr_type.len() + 1 + encoded.len() > ORCPT_MAX {
                return Err(EncodeError::Invalid(
                    "ORCPT longer than 500 characters once xtext-encoded",
                ));
            }
            put_words(dst, &[" ORCPT=", &orcpt.addr_type, ";", &encoded]);
        }
        Ok(())
    }
}

fn no_arguments<'a>(
    args: Option<&str>,
    error: &'static str,
    command: CommandRef<'a>,
) -> Result<CommandRef<'a>, CommandError> {
    match args {
        None => Ok(command),
        Some(_) => Err(CommandError::Syntax(error)),
    }
}

/// The argument after the verb, leading spaces dropped; `None` when there
/// is none.
fn optional_argument(args: Option<&str>) -> Option<&str> {
    args.map(|args| args.trim_start_matches(' '))
        .filter(|args| !args.is_empty())
}

fn required_argument<'a>(
    args: Option<&'a str>,
    error: &'static str,
) -> Result<&'a str, CommandError> {
    optional_argument(args).ok_or(CommandError::Syntax(error))
}

/// `EHLO`/`HELO`/`LHLO` take one domain or address literal (RFC 5321
/// §4.1.1.1).
fn parse_hello<'a>(args: Option<&'a str>, missing: &'static str) -> Result<&'a str, CommandError> {
    let domain = optional_argument(args).ok_or(CommandError::Syntax(missing))?;
    if domain.contains(' ') {
        return Err(CommandError::Syntax(
            "expected a single domain or address literal",
        ));
    }
    if !address::is_valid_helo_domain(domain) {
        return Err(CommandError::Syntax("invalid domain or address literal"));
    }
    Ok(domain)
}

/// `"MAIL FROM:" Reverse-path [SP Mail-parameters]` (RFC 5321 §4.1.1.2).
fn parse_mail(args: Option<&str>) -> Result<CommandRef<'_>, CommandError> {
    const EXPECTED: &str = "expected MAIL FROM:<reverse-path>";
    let rest = args
        .and_then(|args| strip_prefix_ignore_case(args, "FROM:"))
        .ok_or(CommandError::Syntax(EXPECTED))?;
    let (path, params) = split_path(rest, CommandError::InvalidSender)?;
    let from = address::reverse_path_in_line(path, true).map_err(CommandError::InvalidSender)?;
    let params = MailParametersRef::parse(params)?;
    // RFC 6531 §3.4: a UTF-8 reverse-path needs SMTPUTF8 on this MAIL.
    if from.as_ref().is_some_and(AddressRef::is_utf8) && !params.smtputf8 {
        return Err(CommandError::InvalidSender(AddressError::Utf8NotPermitted));
    }
    Ok(CommandRef::Mail { from, params })
}

/// `"RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" / Forward-path )
/// [SP Rcpt-parameters]` (RFC 5321 §4.1.1.3).
fn parse_rcpt(args: Option<&str>) -> Result<CommandRef<'_>, CommandError> {
    const EXPECTED: &str = "expected RCPT TO:<forward-path>";
    let rest = args
        .and_then(|args| strip_prefix_ignore_case(args, "TO:"))
        .ok_or(CommandError::Syntax(EXPECTED))?;
    let (path, params) = split_path(rest, CommandError::InvalidRecipient)?;
    let to = address::forward_path_in_line(path, true).map_err(CommandError::InvalidRecipient)?;
    let params = RcptParametersRef::parse(params)?;
    Ok(CommandRef::Rcpt { to, params })
}

/// Splits `rest` (after `FROM:` or `TO:`) into the path, brackets
/// included, and the parameter string.
fn split_path(
    rest: &str,
    invalid: fn(AddressError) -> CommandError,
) -> Result<(&str, &str), CommandError> {
    // Lenient: "MAIL FROM: <a@example.com>" is common in the wild.
    let rest = rest.trim_start_matches(' ');
    if rest.is_empty() {
        return Err(invalid(AddressError::Empty));
    }
    let len = address::path_len(rest).ok_or(invalid(AddressError::MissingAngleBrackets))?;
    let (path, tail) = rest.split_at(len);
    match tail.strip_prefix(' ') {
        Some(params) => Ok((path, params)),
        None if tail.is_empty() => Ok((path, "")),
        None => Err(CommandError::Syntax(
            "expected a space between the path and the parameters",
        )),
    }
}

/// Splits `esmtp-param *(SP esmtp-param)` into keywords and values,
/// checking `esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`
/// (RFC 5321 §4.1.2). Runs of spaces are tolerated. Values are checked by
/// each parameter's own rules.
fn split_parameters(
    params: &str,
) -> impl Iterator<Item = Result<(&str, Option<&str>), CommandError>> {
    split_byte(params, b' ')
        .filter(|param| !param.is_empty())
        .map(|param| {
            let (keyword, value) = split_parameter(param);
            let valid = keyword
                .bytes()
                .next()
                .is_some_and(|first| class::is(first, class::ALNUM))
                && keyword.bytes().all(|byte| class::is(byte, class::KEYWORD));
            if valid {
                Ok((keyword, value))
            } else {
                Err(CommandError::Syntax("invalid parameter keyword"))
            }
        })
}

fn split_parameter(param: &str) -> (&str, Option<&str>) {
    match split_once_byte(param, b'=') {
        Some((keyword, value)) => (keyword, Some(value)),
        None => (param, None),
    }
}

fn unknown_parameter(keyword: &str) -> CommandError {
    // The keyword is ASCII (checked by split_parameters), so any byte index
    // is a character boundary.
    let quoted = &keyword[..keyword.len().min(UNKNOWN_PARAMETER_QUOTE_MAX)];
    CommandError::UnknownParameter(quoted.to_ascii_uppercase())
}

fn decode_xtext_value<'a>(
    value: &'a str,
    error: &'static str,
) -> Result<Cow<'a, str>, CommandError> {
    match xtext::decode_borrowed(value) {
        Ok(decoded) if !decoded.is_empty() => Ok(decoded),
        _ => Err(CommandError::InvalidParameter(error)),
    }
}

/// `NOTIFY=NEVER` or a comma-separated list of `SUCCESS`, `FAILURE` and
/// `DELAY` (RFC 3461 §4.1).
fn parse_notify(value: &str) -> Result<Notify, CommandError> {
    const INVALID: &str = "NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY";
    let (mut never, mut success, mut failure, mut delay) = (false, false, false, false);
    let mut count = 0;
    for item in split_byte(value, b',') {
        count += 1;
        if item.eq_ignore_ascii_case("NEVER") {
            never = true;
        } else if item.eq_ignore_ascii_case("SUCCESS") {
            success = true;
        } else if item.eq_ignore_ascii_case("FAILURE") {
            failure = true;
        } else if item.eq_ignore_ascii_case("DELAY") {
            delay = true;
        } else {
            return Err(CommandError::InvalidParameter(INVALID));
        }
    }
    if never {
        if count > 1 {
            return Err(CommandError::InvalidParameter(
                "NOTIFY=NEVER cannot be combined with other values",
            ));
        }
        return Ok(Notify::Never);
    }
    Ok(Notify::On {
        success,
        failure,
        delay,
    })
}

/// `ORCPT=addr-type ";" xtext` (RFC 3461 §4.2).
fn parse_orcpt(value: &str) -> Result<OriginalRecipientRef<'_>, CommandError> {
    const INVALID: &str = "ORCPT must be addr-type;xtext";
    if value.len() > ORCPT_MAX {
        return Err(CommandError::InvalidParameter(
            "ORCPT longer than 500 characters",
        ));
    }
    let (addr_type, address) =
        split_once_byte(value, b';').ok_or(CommandError::InvalidParameter(INVALID))?;
    if !is_atom(addr_type) {
        return Err(CommandError::InvalidParameter(INVALID));
    }
    Ok(OriginalRecipientRef {
        addr_type,
        address: decode_xtext_value(address, INVALID)?,
    })
}

/// `"BDAT" SP chunk-size [SP end-marker]` (RFC 3030 §2).
fn parse_bdat(args: Option<&str>) -> Result<CommandRef<'_>, CommandError> {
    const EXPECTED: &str = "expected BDAT <size> [LAST]";
    let mut words = split_byte(args.unwrap_or_default(), b' ').filter(|w| !w.is_empty());
    let size = words.next().ok_or(CommandError::Syntax(EXPECTED))?;
    if !is_digits(size) {
        return Err(CommandError::Syntax(EXPECTED));
    }
    let size = size
        .parse()
        .map_err(|_| CommandError::Syntax("BDAT chunk size too large"))?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax(EXPECTED)),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax(EXPECTED));
    }
    Ok(CommandRef::Bdat { size, last })
}

/// `"AUTH" SP sasl-mech [SP initial-response]` (RFC 4954 §4).
fn parse_auth(args: Option<&str>) -> Result<CommandRef<'_>, CommandError> {
    let mut words = split_byte(args.unwrap_or_default(), b' ').filter(|w| !w.is_empty());
    let mechanism = words
        .next()
        .ok_or(CommandError::Syntax("AUTH requires a mechanism"))?;
    if !is_sasl_mechanism(mechanism) {
        return Err(CommandError::Syntax("invalid SASL mechanism name"));
    }
    let initial_response = words.next();
    if initial_response.is_some_and(|response| !is_initial_response(response)) {
        return Err(CommandError::Syntax("initial response is not base64"));
    }
    if words.next().is_some() {
        return Err(CommandError::Syntax(
            "expected AUTH <mechanism> [initial-response]",
        ));
    }
    Ok(CommandRef::Auth {
        mechanism,
        initial_response,
    })
}

/// `sasl-mech = 1*20mech-char`, `mech-char = UPPER-ALPHA / DIGIT / HYPHEN /
/// UNDERSCORE`, case-insensitive as clients send `auth plain`.
fn is_sasl_mechanism(mechanism: &str) -> bool {
    (1..=SASL_MECHANISM_MAX).contains(&mechanism.len())
        && mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `initial-response = base64 / "="` (RFC 4954 §4): base64 characters
/// with at most two `=` of padding at the end. Decoding is left to the
/// SASL step.
fn is_initial_response(response: &str) -> bool {
    if response == "=" {
        return true;
    }
    let data = response.trim_end_matches('=');
    !data.is_empty()
        && response.len() - data.len() <= 2
        && data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// RFC 5322 `atom` without CFWS: `1*atext`, ASCII only.
fn is_atom(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| class::is(b, class::ATOM))
}

/// Whether `line` holds a control octet (below 0x20, or DEL). Written as a
/// branch-free fold over fixed blocks so that it vectorises.
fn has_control(line: &[u8]) -> bool {
    let is_control = |b: u8| u8::from((b < 0x20) | (b == 0x7f));
    // Lane-wise over fixed blocks, the tail padded with a printable octet:
    // the compiler keeps `any` in a vector register and needs no scalar
    // loop (command lines are short, so no early exit).
    let mut any = [0u8; 16];
    let mut blocks = line.chunks_exact(16);
    for block in &mut blocks {
        for k in 0..16 {
            any[k] |= is_control(block[k]);
        }
    }
    let tail = blocks.remainder();
    let mut padded = [b'x'; 16];
    padded[..tail.len()].copy_from_slice(tail);
    for k in 0..16 {
        any[k] |= is_control(padded[k]);
    }
    any.iter().fold(0, |all, &lane| all | lane) != 0
}

/// `str::split_once` for an ASCII separator, without the generic
/// character searcher.
fn split_once_byte(value: &str, separator: u8) -> Option<(&str, &str)> {
    let at = memchr::memchr(separator, value.as_bytes())?;
    // `separator` is ASCII, so both sides are on character boundaries.
    Some((&value[..at], &value[at + 1..]))
}

/// `str::split` for an ASCII separator: empty pieces included.
fn split_byte(value: &str, separator: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let current = rest?;
        match split_once_byte(current, separator) {
            Some((piece, tail)) => {
                rest = Some(tail);
                Some(piece)
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn is_digits(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

/// Refuses CR, LF, NUL and every other control character, none of which
/// [`Command::parse`] accepts.
fn check_control(value: &str) -> Result<(), EncodeError> {
    if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        Err(EncodeError::ForbiddenCharacter)
    } else {
        Ok(())
    }
}

/// A free-text argument (VRFY, EXPN, HELP) that parses back unchanged.
fn check_argument(argument: &str) -> Result<(), EncodeError> {
    check_control(argument)?;
    if argument.is_empty() || argument.starts_with(' ') || argument.ends_with(' ') {
        return Err(EncodeError::Invalid(
            "argument must be non-empty without leading or trailing spaces",
        ));
    }
    Ok(())
}

/// xtext-encodes a parameter value; xtext could carry CR, LF or NUL as
/// `+0D` and the like, but the receiving side refuses them, so they are
/// refused here.
fn encode_xtext_value(value: &str, empty: &'static str) -> Result<String, EncodeError> {
    if memchr::memchr3(b'\r', b'\n', 0, value.as_bytes()).is_some() {
        return Err(EncodeError::ForbiddenCharacter);
    }
    if value.is_empty() {
        return Err(EncodeError::Invalid(empty));
    }
    Ok(xtext::encode(value))
}

fn put_words(dst: &mut BytesMut, words: &[&str]) {
    for word in words {
        dst.put_slice(word.as_bytes());
    }
}

fn put_decimal(dst: &mut BytesMut, value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    dst.put_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EnhancedCode;
    use crate::limits::PATH_MAX;
    use proptest::prelude::*;

    fn parse(line: &str) -> Command {
        Command::parse(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    fn parse_err(line: &str) -> CommandError {
        match Command::parse(line.as_bytes()) {
            Ok(command) => panic!("{line:?} parsed as {command:?}"),
            Err(error) => error,
        }
    }

    fn encode(command: &Command) -> String {
        let mut dst = BytesMut::new();
        command.encode(&mut dst).unwrap();
        String::from_utf8(dst.to_vec()).unwrap()
    }

    fn encode_err(command: &Command) -> EncodeError {
        let mut dst = BytesMut::from(&b"KEEP"[..]);
        let error = command.encode(&mut dst).unwrap_err();
        assert_eq!(&dst[..], b"KEEP", "nothing appended on error");
        error
    }

    fn addr(mailbox: &str) -> Address {
        Address::parse(mailbox, true).unwrap()
    }

    fn mail(line: &str) -> (Option<Address>, MailParameters) {
        match parse(line) {
            Command::Mail { from, params } => (from, params),
            other => panic!("{line:?} parsed as {other:?}"),
        }
    }

    fn rcpt(line: &str) -> (Address, RcptParameters) {
        match parse(line) {
            Command::Rcpt { to, params } => (to, params),
            other => panic!("{line:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn hello_verbs() {
        assert_eq!(
            parse("EHLO client.example.com"),
            Command::Ehlo {
                domain: "client.example.com".into()
            }
        );
        assert_eq!(
            parse("helo Client.Example"),
            Command::Helo {
                domain: "Client.Example".into()
            }
        );
        assert_eq!(
            parse("LHLO [192.0.2.1]"),
            Command::Lhlo {
                domain: "[192.0.2.1]".into()
            }
        );
        assert_eq!(
            parse("EhLo [IPv6:2001:db8::1]"),
            Command::Ehlo {
                domain: "[IPv6:2001:db8::1]".into()
            }
        );
        assert_eq!(
            parse("EHLO my_pc "),
            Command::Ehlo {
                domain: "my_pc".into()
            }
        );
    }

    #[test]
    fn hello_errors() {
        let missing = CommandError::Syntax("EHLO requires a domain or address literal");
        assert_eq!(parse_err("EHLO"), missing);
        assert_eq!(parse_err("EHLO "), missing);
        assert_eq!(parse_err("EHLO").reply().code(), 501);
        assert_eq!(
            parse_err("HELO"),
            CommandError::Syntax("HELO requires a domain or address literal")
        );
        assert_eq!(
            parse_err("LHLO"),
            CommandError::Syntax("LHLO requires a domain or address literal")
        );
        assert_eq!(
            parse_err("EHLO a.example b.example"),
            CommandError::Syntax("expected a single domain or address literal")
        );
        for bad in [
            "EHLO -bad",
            "EHLO [300.1.1.1]",
            "EHLO a..b",
            "EHLO bücher.example",
        ] {
            assert_eq!(
                parse_err(bad),
                CommandError::Syntax("invalid domain or address literal"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn argument_less_verbs() {
        assert_eq!(parse("DATA"), Command::Data);
        assert_eq!(parse("data"), Command::Data);
        assert_eq!(parse("RSET"), Command::Rset);
        assert_eq!(parse("QUIT"), Command::Quit);
        assert_eq!(parse("quit  "), Command::Quit);
        assert_eq!(parse("STARTTLS"), Command::StartTls);
        assert_eq!(parse("StartTLS"), Command::StartTls);
        assert_eq!(parse("NOOP"), Command::Noop);
        assert_eq!(parse("noop anything at all"), Command::Noop);
        assert_eq!(
            parse_err("DATA now"),
            CommandError::Syntax("DATA takes no arguments")
        );
        assert_eq!(
            parse_err("RSET x"),
            CommandError::Syntax("RSET takes no arguments")
        );
        assert_eq!(
            parse_err("QUIT x"),
            CommandError::Syntax("QUIT takes no arguments")
        );
        assert_eq!(
            parse_err("STARTTLS x"),
            CommandError::Syntax("STARTTLS takes no arguments")
        );
    }

    #[test]
    fn vrfy_expn_help() {
        assert_eq!(
            parse("VRFY Smith"),
            Command::Vrfy {
                argument: "Smith".into()
            }
        );
        assert_eq!(
            parse("vrfy  <john doe@example.com> "),
            Command::Vrfy {
                argument: "<john doe@example.com>".into()
            }
        );
        assert_eq!(
            parse("EXPN Example-People"),
            Command::Expn {
                argument: "Example-People".into()
            }
        );
        assert_eq!(parse("HELP"), Command::Help { topic: None });
        assert_eq!(parse("HELP "), Command::Help { topic: None });
        assert_eq!(
            parse("help mail"),
            Command::Help {
                topic: Some("mail".into())
            }
        );
        assert_eq!(
            parse_err("VRFY"),
            CommandError::Syntax("VRFY requires an argument")
        );
        assert_eq!(
            parse_err("EXPN  "),
            CommandError::Syntax("EXPN requires an argument")
        );
        assert_eq!(
            parse("VRFY jöran"),
            Command::Vrfy {
                argument: "jöran".into()
            }
        );
    }

    #[test]
    fn bdat() {
        assert_eq!(
            parse("BDAT 100"),
            Command::Bdat {
                size: 100,
                last: false
            }
        );
        assert_eq!(
            parse("bdat 0 last"),
            Command::Bdat {
                size: 0,
                last: true
            }
        );
        assert_eq!(
            parse("BDAT 18446744073709551615 LAST"),
            Command::Bdat {
                size: u64::MAX,
                last: true
            }
        );
        let expected = CommandError::Syntax("expected BDAT <size> [LAST]");
        for bad in [
            "BDAT",
            "BDAT x",
            "BDAT -1",
            "BDAT +1",
            "BDAT 1 FIRST",
            "BDAT 1 LAST x",
            "BDAT LAST",
        ] {
            assert_eq!(parse_err(bad), expected, "{bad:?}");
        }
        assert_eq!(
            parse_err("BDAT 18446744073709551616"),
            CommandError::Syntax("BDAT chunk size too large")
        );
    }

    #[test]
    fn auth() {
        assert_eq!(
            parse("AUTH PLAIN"),
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: None
            }
        );
        assert_eq!(
            parse("auth plain dGVzdAB0ZXN0ADEyMzQ="),
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some("dGVzdAB0ZXN0ADEyMzQ=".into())
            }
        );
        assert_eq!(
            parse("AUTH EXTERNAL ="),
            Command::Auth {
                mechanism: "EXTERNAL".into(),
                initial_response: Some("=".into())
            }
        );
        assert_eq!(
            parse("AUTH SCRAM-SHA-256 biwsbj11c2VyLHI9"),
            Command::Auth {
                mechanism: "SCRAM-SHA-256".into(),
                initial_response: Some("biwsbj11c2VyLHI9".into())
            }
        );
        assert_eq!(
            parse_err("AUTH"),
            CommandError::Syntax("AUTH requires a mechanism")
        );
        assert_eq!(
            parse_err("AUTH PL@IN"),
            CommandError::Syntax("invalid SASL mechanism name")
        );
        assert_eq!(
            parse_err("AUTH ABCDEFGHIJKLMNOPQRSTU"),
            CommandError::Syntax("invalid SASL mechanism name")
        );
        for bad in [
            "AUTH PLAIN abc!",
            "AUTH PLAIN ab=c",
            "AUTH PLAIN abc===",
            "AUTH PLAIN ==",
        ] {
            assert_eq!(
                parse_err(bad),
                CommandError::Syntax("initial response is not base64"),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_err("AUTH PLAIN abc def"),
            CommandError::Syntax("expected AUTH <mechanism> [initial-response]")
        );
    }

    #[test]
    fn mail_from_basic() {
        let (from, params) = mail("MAIL FROM:<user@example.com>");
        assert_eq!(from, Some(addr("user@example.com")));
        assert_eq!(params, MailParameters::default());
        let (from, _) = mail("mail from:<>");
        assert_eq!(from, None);
        // Lenient: a space (or several) after the colon, trailing spaces.
        let (from, _) = mail("MAIL FROM: <user@example.com>");
        assert_eq!(from, Some(addr("user@example.com")));
        let (from, params) = mail("Mail From:  <user@example.com>   SIZE=5  ");
        assert_eq!(from, Some(addr("user@example.com")));
        assert_eq!(params.size, Some(5));
    }

    #[test]
    fn mail_from_quoted_literals_and_routes() {
        let (from, _) = mail(r#"MAIL FROM:<"john \"q\" doe"@example.com> SIZE=1"#);
        assert_eq!(from.unwrap().local_part(), r#""john \"q\" doe""#);
        let (from, _) = mail(r#"MAIL FROM:<"a> b"@[192.0.2.1]>"#);
        assert_eq!(from.unwrap().domain(), Some("[192.0.2.1]"));
        let (from, _) = mail("MAIL FROM:<user@[IPv6:2001:db8::1]>");
        assert_eq!(from.unwrap().domain(), Some("[IPv6:2001:db8::1]"));
        let (from, _) = mail("MAIL FROM:<@relay.example,@other.example:user@example.com>");
        assert_eq!(from, Some(addr("user@example.com")));
    }

    #[test]
    fn mail_from_errors() {
        let expected = CommandError::Syntax("expected MAIL FROM:<reverse-path>");
        for bad in [
            "MAIL",
            "MAIL TO:<a@b>",
            "MAIL FROM",
            "MAIL FRO:<a@b>",
            "MAILFROM:<a@b>",
        ] {
            let error = parse_err(bad);
            if bad == "MAILFROM:<a@b>" {
                assert_eq!(error, CommandError::UnknownCommand);
            } else {
                assert_eq!(error, expected, "{bad:?}");
            }
        }
        assert_eq!(
            parse_err("MAIL FROM:"),
            CommandError::InvalidSender(AddressError::Empty)
        );
        assert_eq!(
            parse_err("MAIL FROM:user@example.com"),
            CommandError::InvalidSender(AddressError::MissingAngleBrackets)
        );
        assert_eq!(
            parse_err("MAIL FROM:<user@example.com"),
            CommandError::InvalidSender(AddressError::MissingAngleBrackets)
        );
        assert_eq!(
            parse_err("MAIL FROM:<user>"),
            CommandError::InvalidSender(AddressError::MissingDomain)
        );
        assert_eq!(
            parse_err("MAIL FROM:<a..b@example.com>"),
            CommandError::InvalidSender(AddressError::InvalidLocalPart)
        );
        assert_eq!(
            parse_err("MAIL FROM:<a@-example.com>"),
            CommandError::InvalidSender(AddressError::InvalidDomain)
        );
        assert_eq!(
            parse_err("MAIL FROM:<a@[1.2.3]>"),
            CommandError::InvalidSender(AddressError::InvalidAddressLiteral)
        );
        assert_eq!(
            parse_err("MAIL FROM:<Postmaster>"),
            CommandError::InvalidSender(AddressError::MissingDomain)
        );
        assert_eq!(
            parse_err("MAIL FROM:<a@b.example>SIZE=1"),
            CommandError::Syntax("expected a space between the path and the parameters")
        );
    }

    #[test]
    fn mail_utf8_requires_smtputf8() {
        let error = parse_err("MAIL FROM:<jöran@bücher.example>");
        assert_eq!(
            error,
            CommandError::InvalidSender(AddressError::Utf8NotPermitted)
        );
        let reply = error.reply();
        assert_eq!(reply.code(), 553);
        assert_eq!(reply.enhanced(), Some(EnhancedCode::new(5, 6, 7)));
        let (from, params) = mail("MAIL FROM:<jöran@bücher.example> SMTPUTF8");
        assert!(from.unwrap().is_utf8());
        assert!(params.smtputf8);
        let (from, params) = mail("MAIL FROM:<ascii@example.com> smtputf8");
        assert!(!from.unwrap().is_utf8());
        assert!(params.smtputf8);
    }

    #[test]
    fn mail_parameters() {
        let (_, params) = mail(
            "MAIL FROM:<a@example.com> size=1000 BODY=8bitmime SMTPUTF8 RET=hdrs \
             ENVID=QQ314159+2Bx AUTH=e+2Bf@example.com REQUIRETLS",
        );
        assert_eq!(
            params,
            MailParameters {
                size: Some(1000),
                body: Some(BodyType::EightBitMime),
                smtputf8: true,
                ret: Some(Ret::Headers),
                envid: Some("QQ314159+x".into()),
                auth: Some("e+f@example.com".into()),
                requiretls: true,
            }
        );
        assert_eq!(
            mail("MAIL FROM:<> BODY=7BIT").1.body,
            Some(BodyType::SevenBit)
        );
        assert_eq!(
            mail("MAIL FROM:<> BODY=BinaryMIME").1.body,
            Some(BodyType::BinaryMime)
        );
        assert_eq!(mail("MAIL FROM:<> RET=FULL").1.ret, Some(Ret::Full));
        assert_eq!(mail("MAIL FROM:<> AUTH=<>").1.auth, Some("<>".into()));
        assert_eq!(mail("MAIL FROM:<> SIZE=0").1.size, Some(0));
        assert_eq!(
            mail("MAIL FROM:<> SIZE=99999999999999999999").1.size,
            Some(u64::MAX)
        );
        assert_eq!(
            mail("MAIL FROM:<> SIZE=18446744073709551615").1.size,
            Some(u64::MAX)
        );
        assert_eq!(
            mail("MAIL FROM:<> SIZE=00000000000000000001").1.size,
            Some(1)
        );
    }

    #[test]
    fn mail_parameter_errors() {
        for (line, error) in [
            ("SIZE", "SIZE must be a number of octets"),
            ("SIZE=", "SIZE must be a number of octets"),
            ("SIZE=x", "SIZE must be a number of octets"),
            ("SIZE=-1", "SIZE must be a number of octets"),
            ("SIZE=1=2", "SIZE must be a number of octets"),
            (
                "SIZE=000000000000000000001",
                "SIZE must be a number of octets",
            ),
            ("SIZE=1 SIZE=2", "SIZE given twice"),
            ("BODY=9BIT", "BODY must be 7BIT, 8BITMIME or BINARYMIME"),
            ("BODY", "BODY must be 7BIT, 8BITMIME or BINARYMIME"),
            ("BODY=7BIT body=8BITMIME", "BODY given twice"),
            ("SMTPUTF8=yes", "SMTPUTF8 takes no value"),
            ("SMTPUTF8 SMTPUTF8", "SMTPUTF8 given twice"),
            ("RET=ALL", "RET must be FULL or HDRS"),
            ("RET=FULL RET=HDRS", "RET given twice"),
            ("ENVID=", "ENVID must be non-empty xtext"),
            ("ENVID", "ENVID must be non-empty xtext"),
            ("ENVID=a+2b", "ENVID must be non-empty xtext"),
            ("ENVID=a+0D+0A", "ENVID must be non-empty xtext"),
            ("ENVID=a ENVID=b", "ENVID given twice"),
            ("AUTH=", "AUTH= must be non-empty xtext"),
            ("AUTH=a=b", "AUTH= must be non-empty xtext"),
            ("AUTH=<> AUTH=<>", "AUTH given twice"),
            ("REQUIRETLS=1", "REQUIRETLS takes no value"),
            ("REQUIRETLS REQUIRETLS", "REQUIRETLS given twice"),
        ] {
            let line = format!("MAIL FROM:<a@example.com> {line}");
            assert_eq!(
                parse_err(&line),
                CommandError::InvalidParameter(error),
                "{line:?}"
            );
        }
    }

    #[test]
    fn envid_length_limit() {
        let at_limit = format!("MAIL FROM:<> ENVID={}", "x".repeat(100));
        assert_eq!(mail(&at_limit).1.envid.unwrap().len(), 100);
        let over = format!("MAIL FROM:<> ENVID={}", "x".repeat(101));
        assert_eq!(
            parse_err(&over),
            CommandError::InvalidParameter("ENVID longer than 100 characters")
        );
    }

    #[test]
    fn unknown_and_malformed_parameters() {
        assert_eq!(
            parse_err("MAIL FROM:<a@example.com> XFOO=bar"),
            CommandError::UnknownParameter("XFOO".into())
        );
        assert_eq!(
            parse_err("MAIL FROM:<a@example.com> x-foo"),
            CommandError::UnknownParameter("X-FOO".into())
        );
        // NOTIFY belongs to RCPT, SIZE to MAIL.
        assert_eq!(
            parse_err("MAIL FROM:<a@example.com> NOTIFY=NEVER"),
            CommandError::UnknownParameter("NOTIFY".into())
        );
        assert_eq!(
            parse_err("RCPT TO:<a@example.com> SIZE=1"),
            CommandError::UnknownParameter("SIZE".into())
        );
        let long = format!("MAIL FROM:<> {}", "X".repeat(200));
        match parse_err(&long) {
            CommandError::UnknownParameter(name) => assert_eq!(name.len(), 64),
            other => panic!("{other:?}"),
        }
        for bad in ["=1", "-X=1", "X_Y=1", "Ä=1"] {
            let line = format!("MAIL FROM:<a@example.com> {bad}");
            assert_eq!(
                parse_err(&line),
                CommandError::Syntax("invalid parameter keyword"),
                "{line:?}"
            );
        }
    }

    #[test]
    fn rcpt_to() {
        let (to, params) = rcpt("RCPT TO:<user@example.com>");
        assert_eq!(to, addr("user@example.com"));
        assert_eq!(params, RcptParameters::default());
        let (to, _) = rcpt("rcpt to: <User@Example.com> ");
        assert_eq!(to.as_str(), "User@Example.com");
        for line in [
            "RCPT TO:<Postmaster>",
            "RCPT TO:<postmaster>",
            "rcpt to:<POSTMASTER>",
        ] {
            assert_eq!(rcpt(line).0, Address::postmaster(), "{line:?}");
        }
        let (to, _) = rcpt("RCPT TO:<postmaster@example.com>");
        assert_eq!(to.domain(), Some("example.com"));
        let (to, _) = rcpt("RCPT TO:<@hosta.int,@jkl.org:userc@d.bar.org>");
        assert_eq!(to.as_str(), "userc@d.bar.org");
        // UTF-8 recipients are left to the server's transaction check.
        let (to, _) = rcpt("RCPT TO:<用户@例子.广告>");
        assert!(to.is_utf8());
    }

    #[test]
    fn rcpt_errors() {
        assert_eq!(
            parse_err("RCPT"),
            CommandError::Syntax("expected RCPT TO:<forward-path>")
        );
        assert_eq!(
            parse_err("RCPT FROM:<a@b>"),
            CommandError::Syntax("expected RCPT TO:<forward-path>")
        );
        assert_eq!(
            parse_err("RCPT TO:<>"),
            CommandError::InvalidRecipient(AddressError::Empty)
        );
        assert_eq!(
            parse_err("RCPT TO:"),
            CommandError::InvalidRecipient(AddressError::Empty)
        );
        assert_eq!(
            parse_err("RCPT TO:a@example.com"),
            CommandError::InvalidRecipient(AddressError::MissingAngleBrackets)
        );
        assert_eq!(
            parse_err("RCPT TO:<a b@example.com>"),
            CommandError::InvalidRecipient(AddressError::InvalidLocalPart)
        );
    }

    #[test]
    fn rcpt_parameters() {
        let (_, params) =
            rcpt("RCPT TO:<a@example.com> NOTIFY=success,FAILURE ORCPT=rfc822;a+2Bb@example.com");
        assert_eq!(
            params,
            RcptParameters {
                notify: Some(Notify::On {
                    success: true,
                    failure: true,
                    delay: false
                }),
                orcpt: Some(OriginalRecipient {
                    addr_type: "rfc822".into(),
                    address: "a+b@example.com".into()
                }),
            }
        );
        assert_eq!(
            rcpt("RCPT TO:<a@b.c> notify=never").1.notify,
            Some(Notify::Never)
        );
        assert_eq!(
            rcpt("RCPT TO:<a@b.c> NOTIFY=DELAY").1.notify,
            Some(Notify::On {
                success: false,
                failure: false,
                delay: true
            })
        );
        assert_eq!(
            rcpt("RCPT TO:<a@b.c> ORCPT=utf-8;a@b.c")
                .1
                .orcpt
                .unwrap()
                .addr_type,
            "utf-8"
        );
    }

    #[test]
    fn rcpt_parameter_errors() {
        let notify = "NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY";
        let orcpt = "ORCPT must be addr-type;xtext";
        for (param, error) in [
            (
                "NOTIFY=NEVER,SUCCESS",
                "NOTIFY=NEVER cannot be combined with other values",
            ),
            (
                "NOTIFY=DELAY,NEVER",
                "NOTIFY=NEVER cannot be combined with other values",
            ),
            (
                "NOTIFY=NEVER,NEVER",
                "NOTIFY=NEVER cannot be combined with other values",
            ),
            ("NOTIFY=SOMETIMES", notify),
            ("NOTIFY=SUCCESS,", notify),
            ("NOTIFY=", notify),
            ("NOTIFY", notify),
            ("NOTIFY=DELAY NOTIFY=DELAY", "NOTIFY given twice"),
            ("ORCPT=a@b.c", orcpt),
            ("ORCPT=rfc822;", orcpt),
            ("ORCPT=;a@b.c", orcpt),
            ("ORCPT=rfc 822;a", orcpt),
            ("ORCPT=rfc822;a+2c", orcpt),
            ("ORCPT", orcpt),
            ("ORCPT=rfc822;a ORCPT=rfc822;b", "ORCPT given twice"),
        ] {
            let line = format!("RCPT TO:<a@example.com> {param}");
            assert_eq!(
                parse_err(&line),
                CommandError::InvalidParameter(error),
                "{line:?}"
            );
        }
    }

    #[test]
    fn orcpt_length_limit() {
        let at_limit = format!("RCPT TO:<a@b.c> ORCPT=rfc822;{}", "x".repeat(493));
        assert_eq!(rcpt(&at_limit).1.orcpt.unwrap().address.len(), 493);
        let over = format!("RCPT TO:<a@b.c> ORCPT=rfc822;{}", "x".repeat(494));
        assert_eq!(
            parse_err(&over),
            CommandError::InvalidParameter("ORCPT longer than 500 characters")
        );
    }

    #[test]
    fn path_length_limits_in_commands() {
        let domain = format!("{}.{}.{}", "d".repeat(62), "d".repeat(62), "d".repeat(63));
        assert_eq!(domain.len(), 189);
        let at_limit = format!("<{}@{domain}>", "l".repeat(64));
        assert_eq!(at_limit.len(), PATH_MAX);
        mail(&format!("MAIL FROM:{at_limit} SIZE=1"));
        rcpt(&format!("RCPT TO:{at_limit} NOTIFY=NEVER"));
        let over = format!("<{}@{domain}x>", "l".repeat(64));
        assert_eq!(
            parse_err(&format!("MAIL FROM:{over}")),
            CommandError::InvalidSender(AddressError::PathTooLong)
        );
        assert_eq!(
            parse_err(&format!("RCPT TO:{over}")),
            CommandError::InvalidRecipient(AddressError::PathTooLong)
        );
        let long_local = format!("<{}@example.com>", "l".repeat(65));
        assert_eq!(
            parse_err(&format!("MAIL FROM:{long_local}")),
            CommandError::InvalidSender(AddressError::LocalPartTooLong)
        );
        mail(&format!("MAIL FROM:<{}@example.com>", "l".repeat(64)));
    }

    #[test]
    fn verbs_are_case_insensitive() {
        for line in ["ehlo x", "EHLO x", "eHlO x"] {
            assert!(matches!(parse(line), Command::Ehlo { .. }));
        }
        for line in ["starttls", "STARTTLS", "sTaRtTlS"] {
            assert_eq!(parse(line), Command::StartTls);
        }
        assert_eq!(parse("rset"), Command::Rset);
        assert!(matches!(parse("mAiL fRoM:<a@b.c>"), Command::Mail { .. }));
        assert!(matches!(parse("RcPt To:<a@b.c>"), Command::Rcpt { .. }));
    }

    #[test]
    fn unknown_commands() {
        for line in [
            "",
            " ",
            "FOO",
            "FOO bar",
            " MAIL FROM:<a@b.c>",
            "STARTTLSX",
            "XEXCH50 1 2",
            "MAILFROM",
        ] {
            assert_eq!(parse_err(line), CommandError::UnknownCommand, "{line:?}");
        }
    }

    #[test]
    fn bare_line_endings_and_control_characters() {
        for line in [
            &b"MAIL FROM:<a@b.c>\rRCPT TO:<x@y.z>"[..],
            b"DATA\n",
            b"\r",
            b"NOOP \n.\r",
        ] {
            assert_eq!(
                Command::parse(line),
                Err(CommandError::BareLineEnding),
                "{line:?}"
            );
        }
        // A bare line ending wins over other faults on the same line.
        assert_eq!(
            Command::parse(b"\0\xff\n"),
            Err(CommandError::BareLineEnding)
        );
        for line in [
            &b"NOOP\0"[..],
            b"MAIL FROM:<a\0@b.c>",
            b"HELO\tx",
            b"VRFY a\x1bb",
            b"QUIT\x7f",
        ] {
            assert_eq!(
                Command::parse(line),
                Err(CommandError::ForbiddenCharacter),
                "{line:?}"
            );
        }
        assert_eq!(
            Command::parse(b"VRFY \xff\xfe"),
            Err(CommandError::Syntax("command line is not valid UTF-8"))
        );
    }

    #[test]
    fn every_error_maps_to_one_reply() {
        let cases = [
            (
                CommandError::UnknownCommand,
                500,
                (5, 5, 1),
                "Command not recognized",
            ),
            (CommandError::LineTooLong, 500, (5, 5, 2), "Line too long"),
            (
                CommandError::BareLineEnding,
                550,
                (5, 5, 2),
                "Bare CR or LF not allowed; lines must end with CRLF",
            ),
            (
                CommandError::ForbiddenCharacter,
                500,
                (5, 5, 2),
                "Control characters are not allowed in commands",
            ),
            (
                CommandError::Syntax("what"),
                501,
                (5, 5, 4),
                "Syntax error: what",
            ),
            (
                CommandError::InvalidSender(AddressError::MissingDomain),
                501,
                (5, 1, 7),
                "Bad sender address: address has no domain",
            ),
            (
                CommandError::InvalidSender(AddressError::Utf8NotPermitted),
                553,
                (5, 6, 7),
                "UTF-8 sender address requires the SMTPUTF8 parameter",
            ),
            (
                CommandError::InvalidRecipient(AddressError::InvalidDomain),
                501,
                (5, 1, 3),
                "Bad recipient address: invalid domain",
            ),
            (
                CommandError::InvalidRecipient(AddressError::Utf8NotPermitted),
                553,
                (5, 6, 7),
                "UTF-8 recipient address requires SMTPUTF8",
            ),
            (
                CommandError::UnknownParameter("XFOO".into()),
                555,
                (5, 5, 4),
                "Parameter XFOO not supported",
            ),
            (
                CommandError::InvalidParameter("SIZE given twice"),
                501,
                (5, 5, 4),
                "Invalid parameter: SIZE given twice",
            ),
        ];
        for (error, code, (class, subject, detail), text) in cases {
            let reply = error.reply();
            assert_eq!(reply.code(), code, "{error:?}");
            assert_eq!(
                reply.enhanced(),
                Some(EnhancedCode::new(class, subject, detail)),
                "{error:?}"
            );
            assert_eq!(reply.text(), text);
            assert_eq!(error.to_string(), text);
            assert!(reply.is_permanent());
        }
        let mut wire = BytesMut::new();
        CommandError::UnknownCommand.reply().encode(&mut wire);
        assert_eq!(&wire[..], b"500 5.5.1 Command not recognized\r\n");
        use std::error::Error;
        assert!(
            CommandError::InvalidSender(AddressError::Empty)
                .source()
                .is_some()
        );
        assert!(CommandError::UnknownCommand.source().is_none());
    }

    #[test]
    fn every_address_error_reply_for_sender_and_recipient() {
        let all = [
            AddressError::Empty,
            AddressError::MissingAngleBrackets,
            AddressError::MissingDomain,
            AddressError::InvalidLocalPart,
            AddressError::InvalidDomain,
            AddressError::InvalidAddressLiteral,
            AddressError::LocalPartTooLong,
            AddressError::DomainTooLong,
            AddressError::PathTooLong,
            AddressError::ForbiddenCharacter,
        ];
        for error in all {
            let sender = CommandError::InvalidSender(error.clone()).reply();
            assert_eq!(
                (sender.code(), sender.enhanced()),
                (501, Some(EnhancedCode::new(5, 1, 7)))
            );
            assert!(sender.text().ends_with(&error.to_string()));
            let recipient = CommandError::InvalidRecipient(error.clone()).reply();
            assert_eq!(
                (recipient.code(), recipient.enhanced()),
                (501, Some(EnhancedCode::new(5, 1, 3)))
            );
        }
    }

    #[test]
    fn encodes_canonical_forms() {
        let command = Command::Mail {
            from: Some(addr("a@b")),
            params: MailParameters {
                size: Some(10),
                body: Some(BodyType::EightBitMime),
                ..MailParameters::default()
            },
        };
        assert_eq!(
            encode(&command),
            "MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME\r\n"
        );
        let command = Command::Rcpt {
            to: addr("x@y"),
            params: RcptParameters {
                notify: Some(Notify::On {
                    success: true,
                    failure: true,
                    delay: false,
                }),
                orcpt: Some(OriginalRecipient {
                    addr_type: "rfc822".into(),
                    address: "x@y".into(),
                }),
            },
        };
        assert_eq!(
            encode(&command),
            "RCPT TO:<x@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@y\r\n"
        );
        // '@' is an xchar (RFC 3461 §4) and is written raw, as in the RFC's
        // own examples; a peer that hex-encodes it is understood as well.
        assert_eq!(
            rcpt("RCPT TO:<x@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+40y").1,
            match &command {
                Command::Rcpt { params, .. } => params.clone(),
                _ => unreachable!(),
            }
        );
        assert_eq!(
            encode(&Command::Bdat {
                size: 100,
                last: true
            }),
            "BDAT 100 LAST\r\n"
        );
        assert_eq!(
            encode(&Command::Bdat {
                size: 0,
                last: false
            }),
            "BDAT 0\r\n"
        );
        assert_eq!(
            encode(&Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some("dGVz".into())
            }),
            "AUTH PLAIN dGVz\r\n"
        );
        assert_eq!(
            encode(&Command::Auth {
                mechanism: "login".into(),
                initial_response: None
            }),
            "AUTH LOGIN\r\n"
        );
        assert_eq!(
            encode(&Command::Mail {
                from: None,
                params: MailParameters {
                    size: Some(u64::MAX),
                    body: Some(BodyType::BinaryMime),
                    smtputf8: true,
                    ret: Some(Ret::Full),
                    envid: Some("id 1+=".into()),
                    auth: Some("<>".into()),
                    requiretls: true,
                }
            }),
            "MAIL FROM:<> SIZE=18446744073709551615 BODY=BINARYMIME SMTPUTF8 REQUIRETLS \
             RET=FULL ENVID=id+201+2B+3D AUTH=<>\r\n"
        );
        assert_eq!(
            encode(&Command::Rcpt {
                to: Address::postmaster(),
                params: RcptParameters {
                    notify: Some(Notify::Never),
                    orcpt: None
                }
            }),
            "RCPT TO:<Postmaster> NOTIFY=NEVER\r\n"
        );
        for (command, wire) in [
            (
                Command::Ehlo {
                    domain: "c.example".into(),
                },
                "EHLO c.example\r\n",
            ),
            (
                Command::Helo {
                    domain: "[192.0.2.1]".into(),
                },
                "HELO [192.0.2.1]\r\n",
            ),
            (
                Command::Lhlo {
                    domain: "c.example".into(),
                },
                "LHLO c.example\r\n",
            ),
            (Command::Data, "DATA\r\n"),
            (Command::Rset, "RSET\r\n"),
            (Command::Noop, "NOOP\r\n"),
            (Command::Quit, "QUIT\r\n"),
            (Command::StartTls, "STARTTLS\r\n"),
            (
                Command::Vrfy {
                    argument: "Smith".into(),
                },
                "VRFY Smith\r\n",
            ),
            (
                Command::Expn {
                    argument: "list".into(),
                },
                "EXPN list\r\n",
            ),
            (Command::Help { topic: None }, "HELP\r\n"),
            (
                Command::Help {
                    topic: Some("MAIL".into()),
                },
                "HELP MAIL\r\n",
            ),
        ] {
            assert_eq!(encode(&command), wire);
            assert_eq!(parse(wire.trim_end_matches("\r\n")), command);
        }
    }

    #[test]
    fn encode_appends() {
        let mut dst = BytesMut::from(&b"NOOP\r\n"[..]);
        Command::Quit.encode(&mut dst).unwrap();
        assert_eq!(&dst[..], b"NOOP\r\nQUIT\r\n");
    }

    #[test]
    fn encode_refuses_forbidden_characters() {
        let forbidden = [
            Command::Ehlo {
                domain: "a\r\nMAIL FROM:<x@y>".into(),
            },
            Command::Vrfy {
                argument: "a\nb".into(),
            },
            Command::Expn {
                argument: "a\0b".into(),
            },
            Command::Help {
                topic: Some("a\tb".into()),
            },
            Command::Auth {
                mechanism: "PLAIN\r\n".into(),
                initial_response: None,
            },
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some("abc\r\nQUIT".into()),
            },
            Command::Mail {
                from: None,
                params: MailParameters {
                    envid: Some("a\r\nb".into()),
                    ..Default::default()
                },
            },
            Command::Mail {
                from: None,
                params: MailParameters {
                    auth: Some("\0".into()),
                    ..Default::default()
                },
            },
            Command::Rcpt {
                to: addr("a@b"),
                params: RcptParameters {
                    notify: None,
                    orcpt: Some(OriginalRecipient {
                        addr_type: "rfc822".into(),
                        address: "a\nb".into(),
                    }),
                },
            },
            Command::Rcpt {
                to: addr("a@b"),
                params: RcptParameters {
                    notify: None,
                    orcpt: Some(OriginalRecipient {
                        addr_type: "rfc\r822".into(),
                        address: "a".into(),
                    }),
                },
            },
        ];
        for command in forbidden {
            assert_eq!(
                encode_err(&command),
                EncodeError::ForbiddenCharacter,
                "{command:?}"
            );
        }
    }

    #[test]
    fn encode_refuses_invalid_values() {
        let invalid = [
            Command::Ehlo {
                domain: String::new(),
            },
            Command::Helo {
                domain: "a b".into(),
            },
            Command::Vrfy {
                argument: String::new(),
            },
            Command::Vrfy {
                argument: " a".into(),
            },
            Command::Expn {
                argument: "a ".into(),
            },
            Command::Help {
                topic: Some(String::new()),
            },
            Command::Auth {
                mechanism: String::new(),
                initial_response: None,
            },
            Command::Auth {
                mechanism: "PL AIN".into(),
                initial_response: None,
            },
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some(String::new()),
            },
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some("a b".into()),
            },
            Command::Mail {
                from: Some(addr("jöran@example.com")),
                params: MailParameters::default(),
            },
            Command::Mail {
                from: None,
                params: MailParameters {
                    envid: Some(String::new()),
                    ..Default::default()
                },
            },
            Command::Mail {
                from: None,
                params: MailParameters {
                    envid: Some("é".repeat(17)),
                    ..Default::default()
                },
            },
            Command::Mail {
                from: None,
                params: MailParameters {
                    auth: Some(String::new()),
                    ..Default::default()
                },
            },
            Command::Rcpt {
                to: addr("a@b"),
                params: RcptParameters {
                    notify: Some(Notify::On {
                        success: false,
                        failure: false,
                        delay: false,
                    }),
                    orcpt: None,
                },
            },
            Command::Rcpt {
                to: addr("a@b"),
                params: RcptParameters {
                    notify: None,
                    orcpt: Some(OriginalRecipient {
                        addr_type: "rfc 822".into(),
                        address: "a".into(),
                    }),
                },
            },
            Command::Rcpt {
                to: addr("a@b"),
                params: RcptParameters {
                    notify: None,
                    orcpt: Some(OriginalRecipient {
                        addr_type: "rfc822".into(),
                        address: String::new(),
                    }),
                },
            },
            Command::Rcpt {
                to: addr("a@b"),
                params: RcptParameters {
                    notify: None,
                    orcpt: Some(OriginalRecipient {
                        addr_type: "rfc822".into(),
                        address: "=".repeat(165),
                    }),
                },
            },
        ];
        for command in invalid {
            assert!(
                matches!(encode_err(&command), EncodeError::Invalid(_)),
                "{command:?}"
            );
        }
        // The UTF-8 sender is fine once SMTPUTF8 is given.
        let utf8 = Command::Mail {
            from: Some(addr("jöran@example.com")),
            params: MailParameters {
                smtputf8: true,
                ..Default::default()
            },
        };
        assert_eq!(encode(&utf8), "MAIL FROM:<jöran@example.com> SMTPUTF8\r\n");
    }

    #[test]
    fn encode_error_display() {
        assert!(
            EncodeError::ForbiddenCharacter
                .to_string()
                .contains("CR, LF, NUL")
        );
        assert_eq!(EncodeError::Invalid("x").to_string(), "invalid command: x");
    }

    #[test]
    fn verbs() {
        assert_eq!(Command::StartTls.verb(), "STARTTLS");
        assert_eq!(
            Command::Bdat {
                size: 1,
                last: false
            }
            .verb(),
            "BDAT"
        );
        assert_eq!(BodyType::EightBitMime.as_str(), "8BITMIME");
        assert_eq!(BodyType::SevenBit.as_str(), "7BIT");
        assert_eq!(BodyType::BinaryMime.as_str(), "BINARYMIME");
        assert_eq!(Ret::Headers.as_str(), "HDRS");
        assert_eq!(Ret::Full.as_str(), "FULL");
    }

    // ---- property tests -------------------------------------------------

    fn ascii_domain() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]{1,8}){0,3}",
            1 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
                .prop_map(|(a, b, c, d)| format!("[{a}.{b}.{c}.{d}]")),
            1 => any::<[u16; 8]>().prop_map(|groups| {
                format!("[IPv6:{}]", std::net::Ipv6Addr::from(groups))
            }),
        ]
    }

    fn mailbox() -> impl Strategy<Value = Address> {
        let local = prop_oneof![
            4 => "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,12}(\\.[a-zA-Z0-9_-]{1,8}){0,2}",
            1 => "\"([ !#-\\[\\]-~]|\\\\[ -~]){0,12}\"",
            1 => "[a-zé用户ö]{1,8}",
        ];
        let domain = prop_oneof![4 => ascii_domain(), 1 => "[a-z]{1,5}\\.(例子|bücher|δοκιμή)"];
        (local, domain).prop_map(|(local, domain)| addr(&format!("{local}@{domain}")))
    }

    fn xtext_value(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[ -~é\u{7f}\t]{{1,{max}}}")).unwrap()
    }

    fn mail_command() -> impl Strategy<Value = Command> {
        (
            prop::option::of(mailbox()),
            prop::option::of(any::<u64>()),
            prop::option::of(prop_oneof![
                Just(BodyType::SevenBit),
                Just(BodyType::EightBitMime),
                Just(BodyType::BinaryMime)
            ]),
            any::<bool>(),
            prop::option::of(prop_oneof![Just(Ret::Full), Just(Ret::Headers)]),
            prop::option::of(xtext_value(15)),
            prop::option::of(prop_oneof![Just("<>".to_owned()), xtext_value(40)]),
            any::<bool>(),
        )
            .prop_map(
                |(from, size, body, smtputf8, ret, envid, auth, requiretls)| {
                    let smtputf8 = smtputf8 || from.as_ref().is_some_and(Address::is_utf8);
                    Command::Mail {
                        from,
                        params: MailParameters {
                            size,
                            body,
                            smtputf8,
                            ret,
                            envid,
                            auth,
                            requiretls,
                        },
                    }
                },
            )
    }

    fn rcpt_command() -> impl Strategy<Value = Command> {
        let to = prop_oneof![4 => mailbox(), 1 => Just(Address::postmaster())];
        let notify = prop::option::of(prop_oneof![
            Just(Notify::Never),
            (any::<bool>(), any::<bool>(), any::<bool>())
                .prop_filter("one condition", |(s, f, d)| *s || *f || *d)
                .prop_map(|(success, failure, delay)| Notify::On {
                    success,
                    failure,
                    delay
                }),
        ]);
        let orcpt = prop::option::of(
            ("rfc822|RFC822|utf-8|x-[a-z]{1,5}", xtext_value(60))
                .prop_map(|(addr_type, address)| OriginalRecipient { addr_type, address }),
        );
        (to, notify, orcpt).prop_map(|(to, notify, orcpt)| Command::Rcpt {
            to,
            params: RcptParameters { notify, orcpt },
        })
    }

    fn free_text() -> impl Strategy<Value = String> {
        "[!-~é]([ -~é]{0,20}[!-~é])?"
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            ascii_domain().prop_map(|domain| Command::Ehlo { domain }),
            ascii_domain().prop_map(|domain| Command::Helo { domain }),
            ascii_domain().prop_map(|domain| Command::Lhlo { domain }),
            mail_command(),
            rcpt_command(),
            Just(Command::Data),
            (any::<u64>(), any::<bool>()).prop_map(|(size, last)| Command::Bdat { size, last }),
            Just(Command::Rset),
            Just(Command::Noop),
            Just(Command::Quit),
            free_text().prop_map(|argument| Command::Vrfy { argument }),
            free_text().prop_map(|argument| Command::Expn { argument }),
            prop::option::of(free_text()).prop_map(|topic| Command::Help { topic }),
            Just(Command::StartTls),
            (
                "[A-Z0-9_-]{1,20}",
                prop::option::of(prop_oneof![
                    Just("=".to_owned()),
                    prop::collection::vec(any::<u8>(), 1..40).prop_map(|bytes| {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD.encode(bytes)
                    }),
                ]),
            )
                .prop_map(|(mechanism, initial_response)| Command::Auth {
                    mechanism,
                    initial_response
                }),
        ]
    }

    /// Whatever parses encodes, and parses back to itself.
    fn reencodes(command: &Command) -> Result<(), TestCaseError> {
        let mut wire = BytesMut::new();
        command
            .encode(&mut wire)
            .map_err(|e| TestCaseError::fail(format!("{command:?}: {e}")))?;
        prop_assert_eq!(&Command::parse(&wire[..wire.len() - 2]).unwrap(), command);
        Ok(())
    }

    proptest! {
        #[test]
        fn parse_inverts_encode(command in command()) {
            let mut wire = BytesMut::new();
            command.encode(&mut wire).unwrap();
            prop_assert!(wire.ends_with(b"\r\n"));
            let line = &wire[..wire.len() - 2];
            prop_assert!(memchr::memchr2(b'\r', b'\n', line).is_none());
            prop_assert_eq!(Command::parse(line).unwrap(), command);
        }

        #[test]
        fn borrowed_parse_equals_owned_parse(command in command()) {
            let mut wire = BytesMut::new();
            command.encode(&mut wire).unwrap();
            let line = &wire[..wire.len() - 2];
            let borrowed = CommandRef::parse(line).unwrap();
            prop_assert_eq!(borrowed.to_command(), command);
            // Addresses are borrowed from the line, never copied.
            let range = line.as_ptr_range();
            match borrowed {
                CommandRef::Mail { from: Some(from), .. } => {
                    prop_assert!(range.contains(&from.as_str().as_ptr()));
                }
                CommandRef::Rcpt { to, .. } if to.domain().is_some() => {
                    prop_assert!(range.contains(&to.as_str().as_ptr()));
                }
                _ => {}
            }
        }

        #[test]
        fn borrowed_parse_agrees_on_any_bytes(line in prop::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(
                CommandRef::parse(&line).map(|command| command.to_command()),
                Command::parse(&line)
            );
        }

        #[test]
        fn parse_never_panics_on_bytes(line in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = Command::parse(&line);
        }

        #[test]
        fn parse_never_panics_on_near_commands(
            verb in "(?i)(mail from:|rcpt to:|ehlo|helo|lhlo|bdat|auth|vrfy|help|data|noop)",
            rest in "[ -~é\u{0}\t]{0,80}",
        ) {
            let line = format!("{verb}{rest}");
            match Command::parse(line.as_bytes()) {
                Ok(command) => reencodes(&command)?,
                Err(error) => {
                    // Every refusal still becomes a well-formed reply.
                    let reply = error.reply();
                    prop_assert!(reply.is_permanent());
                    prop_assert!(reply.enhanced().is_some());
                }
            }
        }

        #[test]
        fn whatever_parses_reencodes(tokens in prop::collection::vec(prop::sample::select(&[
            "MAIL FROM:", "RCPT TO:", "mail from: ", "EHLO ", "AUTH ", "VRFY ", "HELP", "BDAT ",
            "<", ">", "<>", "a", "@", ".", "b.c", "\"", "\\", " ", "  ", "[", "]", "1.2.3.4",
            "IPv6:", "::1", "é", "Postmaster", "@r.s:", ",", "=", ";", "+2B", "+40", "+0D",
            " SIZE=12", " BODY=8bitmime", " SMTPUTF8", " RET=HDRS", " ENVID=", " AUTH=", " REQUIRETLS",
            " NOTIFY=", "NEVER", "SUCCESS", ",DELAY", " ORCPT=", "rfc822;", "LAST", "PLAIN", "dGVz",
        ][..]), 0..12)) {
            let line = tokens.concat();
            if let Ok(command) = Command::parse(line.as_bytes()) {
                reencodes(&command)?;
            }
        }

        #[test]
        fn parse_never_panics_on_paths(
            prefix in "(?i)(mail from:|rcpt to:) ?<",
            path in "[a-z@.\\[\\]:\"\\\\<> é,=-]{0,60}",
            params in "( [A-Za-z=;+0-9,<>-]{0,20}){0,4}",
        ) {
            if let Ok(command) = Command::parse(format!("{prefix}{path}{params}").as_bytes()) {
                reencodes(&command)?;
            }
        }
    }
}
