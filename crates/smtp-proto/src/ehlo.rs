//! EHLO capabilities (RFC 5321 §4.1.1.1): the service extensions a server
//! offers, read from its EHLO reply by clients and written into one by
//! servers.
//!
//! ```
//! use smtp_proto::{ehlo::Capabilities, Reply};
//!
//! let reply = Reply::with_lines(
//!     250,
//!     None,
//!     vec!["mx.example.org Hello", "PIPELINING", "SIZE 10485760", "AUTH PLAIN LOGIN"],
//! );
//! let caps = Capabilities::from_reply(&reply);
//! assert_eq!(caps.domain, "mx.example.org");
//! assert!(caps.pipelining);
//! assert_eq!(caps.size, Some(10_485_760));
//! assert!(caps.supports_auth("plain"));
//! assert_eq!(caps.to_reply(), reply);
//! ```

use std::borrow::Cow;

use crate::Reply;
use crate::reply::utf8_text;

/// What a server announced in its EHLO reply.
///
/// Clients build it with [`from_reply`](Self::from_reply) and consult it
/// before using an extension; servers fill it in and send
/// [`to_reply`](Self::to_reply). Keywords this type does not know are kept
/// verbatim in [`other`](Self::other), so nothing the server said is lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The domain the server names itself with: the first word of the first
    /// line.
    pub domain: String,
    /// The rest of the first line, after the domain and one space; `None`
    /// when there is nothing after the domain.
    pub greeting: Option<String>,
    /// `SIZE` (RFC 1870): the largest message the server accepts, in
    /// octets. `Some(0)` means SIZE is offered without a fixed limit
    /// (announced as a bare `SIZE`, `SIZE 0`, or with an unreadable number).
    pub size: Option<u64>,
    /// `PIPELINING` (RFC 2920): commands may be sent in groups.
    pub pipelining: bool,
    /// `8BITMIME` (RFC 6152): `BODY=8BITMIME` is accepted.
    pub eight_bit_mime: bool,
    /// `BINARYMIME` (RFC 3030): `BODY=BINARYMIME` is accepted (with BDAT).
    pub binary_mime: bool,
    /// `CHUNKING` (RFC 3030): the `BDAT` command is accepted.
    pub chunking: bool,
    /// `SMTPUTF8` (RFC 6531): UTF-8 addresses and headers are accepted.
    pub smtputf8: bool,
    /// `STARTTLS` (RFC 3207): the connection can be upgraded to TLS.
    pub starttls: bool,
    /// `DSN` (RFC 3461): `RET`, `ENVID`, `NOTIFY` and `ORCPT` are accepted.
    pub dsn: bool,
    /// `ENHANCEDSTATUSCODES` (RFC 2034): replies carry RFC 3463 codes.
    pub enhanced_status_codes: bool,
    /// `REQUIRETLS` (RFC 8689): `MAIL FROM ... REQUIRETLS` is accepted.
    pub requiretls: bool,
    /// `AUTH` (RFC 4954): the SASL mechanisms offered, uppercased, in the
    /// order first announced, each once.
    pub auth: Vec<String>,
    /// Every other line, verbatim (for example `VRFY`, `ETRN`,
    /// `XCLIENT NAME ADDR`).
    pub other: Vec<String>,
}

/// The EHLO keywords [`Capabilities`] has a field for.
#[derive(Debug, Clone, Copy)]
enum Keyword {
    Pipelining,
    EightBitMime,
    BinaryMime,
    Chunking,
    SmtpUtf8,
    StartTls,
    Dsn,
    EnhancedStatusCodes,
    RequireTls,
    Size,
    Auth,
}

impl Keyword {
    /// The keyword spelled `upper`, which must be in upper case.
    fn of(upper: &[u8]) -> Option<Keyword> {
        Some(match upper {
            b"PIPELINING" => Keyword::Pipelining,
            b"8BITMIME" => Keyword::EightBitMime,
            b"BINARYMIME" => Keyword::BinaryMime,
            b"CHUNKING" => Keyword::Chunking,
            b"SMTPUTF8" => Keyword::SmtpUtf8,
            b"STARTTLS" => Keyword::StartTls,
            b"DSN" => Keyword::Dsn,
            b"ENHANCEDSTATUSCODES" => Keyword::EnhancedStatusCodes,
            b"REQUIRETLS" => Keyword::RequireTls,
            b"SIZE" => Keyword::Size,
            b"AUTH" => Keyword::Auth,
            _ => return None,
        })
    }
}

/// Room for the longest keyword matched by name, `ENHANCEDSTATUSCODES`.
const KEYWORD_MAX: usize = 20;

impl Capabilities {
    /// Reads the capabilities from an EHLO reply.
    ///
    /// The caller checks that the reply is positive (250) first. Keywords
    /// are matched without regard to case (RFC 5321 §2.4). Both the
    /// standard `AUTH PLAIN LOGIN` and the obsolete `AUTH=PLAIN LOGIN` form
    /// that some servers still send for old clients are understood.
    pub fn from_reply(reply: &Reply) -> Capabilities {
        let mut capabilities = Capabilities::default();
        let mut lines = reply.lines().iter();
        if let Some(first) = lines.next() {
            capabilities.set_first_line(first);
        }
        for line in lines {
            capabilities.add_line(line);
        }
        capabilities
    }

    /// Records the first line of the reply: `domain [SP greeting]`.
    pub(crate) fn set_first_line(&mut self, first: &str) {
        match first.as_bytes().iter().position(|&b| b == b' ') {
            // A space is one byte, so `at` is a character boundary.
            Some(at) => {
                let (domain, greeting) = (&first[..at], &first[at + 1..]);
                self.domain = domain.to_owned();
                if !greeting.is_empty() {
                    self.greeting = Some(greeting.to_owned());
                }
            }
            None => self.domain = first.to_owned(),
        }
    }

    /// Records one extension line (`ehlo-keyword *(SP ehlo-param)`,
    /// RFC 5321 §4.1.1.1).
    fn add_line(&mut self, line: &str) {
        if !self.add_bare_keyword(line.as_bytes()) {
            self.add_extension(line);
        }
    }

    /// [`add_line`](Self::add_line) for a line not yet known to be UTF-8:
    /// a bare keyword needs no check; other text is taken as
    /// [`Reply`] takes it (invalid UTF-8 replaced).
    pub(crate) fn add_line_bytes(&mut self, line: &[u8]) {
        if !self.add_bare_keyword(line) {
            self.add_extension(&crate::reply::utf8_text(line));
        }
    }

    /// Most lines are a bare keyword as servers send it: upper case,
    /// nothing around it. Those need no splitting into words; true when
    /// `line` was one.
    fn add_bare_keyword(&mut self, line: &[u8]) -> bool {
        match Keyword::of(line).and_then(|known| self.flag(known)) {
            Some(flag) => {
                *flag = true;
                true
            }
            None => false,
        }
    }

    /// Records an extension line that is not a bare flag keyword.
    fn add_extension(&mut self, line: &str) {
        let trimmed = line.trim_ascii_start();
        let (keyword, params) = match trimmed.bytes().position(|b| b.is_ascii_whitespace()) {
            // ASCII whitespace is one byte, so `at` is a character boundary.
            Some(at) => (&trimmed[..at], &trimmed[at..]),
            None => (trimmed, ""),
        };
        let mut words = params.split_ascii_whitespace();
        // Keywords are case-insensitive (RFC 5321 §2.4). Servers send them
        // in upper case, so try the keyword as it is first; only then
        // upper-case it into a small stack buffer (longer keywords are
        // none we know).
        let known = Keyword::of(keyword.as_bytes()).or_else(|| {
            let mut buffer = [0u8; KEYWORD_MAX];
            let upper = buffer.get_mut(..keyword.len())?;
            upper.copy_from_slice(keyword.as_bytes());
            upper.make_ascii_uppercase();
            Keyword::of(upper)
        });
        match known {
            Some(Keyword::Size) => {
                // RFC 1870 §4: the number is optional, and 0 means no fixed
                // limit; a number we cannot read still means SIZE works.
                let limit = words.next().and_then(|word| word.parse().ok());
                self.size = Some(limit.unwrap_or(0));
            }
            Some(Keyword::Auth) => {
                self.add_mechanisms(words);
            }
            None if keyword
                .get(.."AUTH=".len())
                .is_some_and(|head| head.eq_ignore_ascii_case("AUTH=")) =>
            {
                // The pre-standard form: the first mechanism is glued to
                // the keyword by "=".
                let first = keyword["AUTH=".len()..].split_ascii_whitespace();
                self.add_mechanisms(first.chain(words));
            }
            None => self.other.push(line.to_owned()),
            Some(known) => {
                if let Some(flag) = self.flag(known) {
                    *flag = true;
                }
            }
        }
    }

    /// The flag a keyword without parameters sets; `None` for the
    /// keywords that carry parameters.
    fn flag(&mut self, keyword: Keyword) -> Option<&mut bool> {
        Some(match keyword {
            Keyword::Pipelining => &mut self.pipelining,
            Keyword::EightBitMime => &mut self.eight_bit_mime,
            Keyword::BinaryMime => &mut self.binary_mime,
            Keyword::Chunking => &mut self.chunking,
            Keyword::SmtpUtf8 => &mut self.smtputf8,
            Keyword::StartTls => &mut self.starttls,
            Keyword::Dsn => &mut self.dsn,
            Keyword::EnhancedStatusCodes => &mut self.enhanced_status_codes,
            Keyword::RequireTls => &mut self.requiretls,
            Keyword::Size | Keyword::Auth => return None,
        })
    }

    fn add_mechanisms<'a>(&mut self, mechanisms: impl Iterator<Item = &'a str>) {
        for mechanism in mechanisms {
            if !self
                .auth
                .iter()
                .any(|known| known.eq_ignore_ascii_case(mechanism))
            {
                self.auth.push(mechanism.to_ascii_uppercase());
            }
        }
    }

    /// Writes the EHLO reply: code 250, no enhanced code (RFC 2034 §3), the
    /// first line `domain greeting`, then one line per capability in this
    /// fixed order: PIPELINING, SIZE, 8BITMIME, BINARYMIME, CHUNKING,
    /// SMTPUTF8, DSN, ENHANCEDSTATUSCODES, STARTTLS, REQUIRETLS, AUTH, then
    /// the [`other`](Self::other) lines as given.
    ///
    /// `SIZE` is written bare when [`size`](Self::size) is `Some(0)`, and
    /// `AUTH` only when at least one mechanism is offered.
    pub fn to_reply(&self) -> Reply {
        let mut lines = Vec::with_capacity(12 + self.other.len());
        lines.push(match &self.greeting {
            Some(greeting) if !greeting.is_empty() => format!("{} {greeting}", self.domain),
            _ => self.domain.clone(),
        });
        if self.pipelining {
            lines.push("PIPELINING".to_owned());
        }
        match self.size {
            Some(0) => lines.push("SIZE".to_owned()),
            Some(limit) => lines.push(format!("SIZE {limit}")),
            None => {}
        }
        let flags = [
            (self.eight_bit_mime, "8BITMIME"),
            (self.binary_mime, "BINARYMIME"),
            (self.chunking, "CHUNKING"),
            (self.smtputf8, "SMTPUTF8"),
            (self.dsn, "DSN"),
            (self.enhanced_status_codes, "ENHANCEDSTATUSCODES"),
            (self.starttls, "STARTTLS"),
            (self.requiretls, "REQUIRETLS"),
        ];
        for (offered, keyword) in flags {
            if offered {
                lines.push(keyword.to_owned());
            }
        }
        if !self.auth.is_empty() {
            lines.push(format!("AUTH {}", self.auth.join(" ")));
        }
        lines.extend(self.other.iter().cloned());
        Reply::with_lines(250, None, lines)
    }

    /// Whether the server offers the SASL `mechanism` (any case).
    pub fn supports_auth(&self, mechanism: &str) -> bool {
        self.auth
            .iter()
            .any(|offered| offered.eq_ignore_ascii_case(mechanism))
    }
}

/// What one extension line announces, read from its bytes with the rules
/// of [`Capabilities`].
enum Extension<'l> {
    Flag(Keyword),
    Size(u64),
    /// `AUTH` and its mechanisms: `first` glued to an obsolete `AUTH=`,
    /// then the words of `rest`.
    Auth {
        first: &'l [u8],
        rest: &'l [u8],
    },
    Other,
}

impl Extension<'_> {
    fn of(line: &[u8]) -> Extension<'_> {
        if let Some(known) = Keyword::of(line)
            && !matches!(known, Keyword::Size | Keyword::Auth)
        {
            return Extension::Flag(known);
        }
        let trimmed = line.trim_ascii_start();
        let at = trimmed
            .iter()
            .position(u8::is_ascii_whitespace)
            .unwrap_or(trimmed.len());
        let (keyword, params) = trimmed.split_at(at);
        let known = Keyword::of(keyword).or_else(|| {
            let mut buffer = [0u8; KEYWORD_MAX];
            let upper = buffer.get_mut(..keyword.len())?;
            upper.copy_from_slice(keyword);
            upper.make_ascii_uppercase();
            Keyword::of(upper)
        });
        match known {
            Some(Keyword::Size) => Extension::Size(
                // RFC 1870 §4, as in `Capabilities`.
                words(params)
                    .next()
                    .and_then(|word| std::str::from_utf8(word).ok()?.parse().ok())
                    .unwrap_or(0),
            ),
            Some(Keyword::Auth) => Extension::Auth {
                first: b"",
                rest: params,
            },
            None if keyword
                .get(.."AUTH=".len())
                .is_some_and(|head| head.eq_ignore_ascii_case(b"AUTH=")) =>
            {
                Extension::Auth {
                    first: &keyword["AUTH=".len()..],
                    rest: params,
                }
            }
            None => Extension::Other,
            Some(known) => Extension::Flag(known),
        }
    }
}

/// The words of `text`, split at ASCII whitespace.
fn words(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(u8::is_ascii_whitespace)
        .filter(|word| !word.is_empty())
}

/// The capabilities of an EHLO reply, borrowed from the bytes that carry it:
/// read by [`ReplyDecoder::parse_ehlo`](crate::reply::ReplyDecoder::parse_ehlo)
/// without allocating (text that is not UTF-8 is the one exception: it is
/// replaced, as [`Reply`] does). The flags and `size` mean what they mean
/// in [`Capabilities`]; the mechanisms and other lines are read from the
/// reply when asked for. [`to_owned`](Self::to_owned) gives the owned
/// [`Capabilities`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilitiesRef<'a> {
    /// The domain the server names itself with.
    pub domain: Cow<'a, str>,
    /// The rest of the first line; `None` when there is nothing after the
    /// domain.
    pub greeting: Option<Cow<'a, str>>,
    /// `SIZE` (RFC 1870), as [`Capabilities::size`].
    pub size: Option<u64>,
    /// `PIPELINING` (RFC 2920).
    pub pipelining: bool,
    /// `8BITMIME` (RFC 6152).
    pub eight_bit_mime: bool,
    /// `BINARYMIME` (RFC 3030).
    pub binary_mime: bool,
    /// `CHUNKING` (RFC 3030).
    pub chunking: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `STARTTLS` (RFC 3207).
    pub starttls: bool,
    /// `DSN` (RFC 3461).
    pub dsn: bool,
    /// `ENHANCEDSTATUSCODES` (RFC 2034).
    pub enhanced_status_codes: bool,
    /// `REQUIRETLS` (RFC 8689).
    pub requiretls: bool,
    pub(crate) lines: ExtensionLines<'a>,
}

/// The extension lines of a checked 250 reply (every line after the
/// first, each ending in CRLF), and the first line's enhanced code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ExtensionLines<'a> {
    pub(crate) raw: &'a [u8],
    pub(crate) enhanced: Option<crate::EnhancedCode>,
}

impl<'a> ExtensionLines<'a> {
    /// The text of each line, as [`Reply::lines`] holds it.
    fn texts(self) -> impl Iterator<Item = &'a [u8]> {
        self.raw
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(move |line| {
                // Checked: every line is `code [sep text] CR LF`.
                let line = &line[..line.len() - 1];
                crate::reply::strip_same_enhanced(self.enhanced, line.get(4..).unwrap_or_default())
            })
    }
}

impl<'a> CapabilitiesRef<'a> {
    pub(crate) fn set_first_line(&mut self, first: &'a [u8]) {
        match first.iter().position(|&b| b == b' ') {
            Some(at) => {
                self.domain = utf8_text(&first[..at]);
                if at + 1 < first.len() {
                    self.greeting = Some(utf8_text(&first[at + 1..]));
                }
            }
            None => self.domain = utf8_text(first),
        }
    }

    pub(crate) fn add_line(&mut self, line: &[u8]) {
        match Extension::of(line) {
            Extension::Flag(keyword) => {
                let flag = match keyword {
                    Keyword::Pipelining => &mut self.pipelining,
                    Keyword::EightBitMime => &mut self.eight_bit_mime,
                    Keyword::BinaryMime => &mut self.binary_mime,
                    Keyword::Chunking => &mut self.chunking,
                    Keyword::SmtpUtf8 => &mut self.smtputf8,
                    Keyword::StartTls => &mut self.starttls,
                    Keyword::Dsn => &mut self.dsn,
                    Keyword::EnhancedStatusCodes => &mut self.enhanced_status_codes,
                    Keyword::RequireTls => &mut self.requiretls,
                    Keyword::Size | Keyword::Auth => return,
                };
                *flag = true;
            }
            Extension::Size(limit) => self.size = Some(limit),
            Extension::Auth { .. } | Extension::Other => {}
        }
    }

    /// The SASL mechanisms offered (RFC 4954), as sent: in the order
    /// announced, repeats included (`AUTH` and an obsolete `AUTH=` line
    /// often name the same ones).
    pub fn auth(&self) -> impl Iterator<Item = Cow<'a, str>> + 'a {
        self.lines
            .texts()
            .filter_map(|text| match Extension::of(text) {
                Extension::Auth { first, rest } => {
                    Some(words(first).chain(words(rest)).map(utf8_text))
                }
                _ => None,
            })
            .flatten()
    }

    /// Whether the server offers the SASL `mechanism` (any case).
    pub fn supports_auth(&self, mechanism: &str) -> bool {
        self.auth()
            .any(|offered| offered.eq_ignore_ascii_case(mechanism))
    }

    /// Every line this type has no field for, verbatim, as
    /// [`Capabilities::other`].
    pub fn other(&self) -> impl Iterator<Item = Cow<'a, str>> + 'a {
        self.lines
            .texts()
            .filter(|text| matches!(Extension::of(text), Extension::Other))
            .map(utf8_text)
    }

    /// The owned [`Capabilities`], equal to [`Capabilities::from_reply`]
    /// of the same reply.
    pub fn to_owned(&self) -> Capabilities {
        let mut capabilities = Capabilities {
            domain: self.domain.clone().into_owned(),
            greeting: self.greeting.clone().map(Cow::into_owned),
            ..Capabilities::default()
        };
        for text in self.lines.texts() {
            capabilities.add_line_bytes(text);
        }
        capabilities
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::{BorrowedEhlo, EhloReply, ReplyDecoder};
    use bytes::BytesMut;

    fn parse(lines: &[&'static str]) -> Capabilities {
        Capabilities::from_reply(&Reply::with_lines(250, None, lines.to_vec()))
    }

    #[test]
    fn decode_ehlo_hands_back_other_replies_and_errors() {
        let mut decoder = ReplyDecoder::new();
        let mut input = BytesMut::from(&b"554-5.7.1 go away\r\n554 5.7.1 really\r\n250 OK\r\n"[..]);
        match decoder.decode_ehlo(&mut input).unwrap().unwrap() {
            EhloReply::Other(reply) => {
                assert_eq!(reply.code(), 554);
                assert_eq!(reply.lines(), ["go away", "really"]);
            }
            EhloReply::Capabilities(caps) => panic!("a 554 read as capabilities: {caps:?}"),
        }
        assert!(!decoder.is_partial());
        // The same checks as `decode`: one code on every line, CRLF only.
        let mut input = BytesMut::from(&b"250-mx\r\n251 PIPELINING\r\n"[..]);
        assert_eq!(
            decoder.decode_ehlo(&mut input),
            Err(crate::reply::ReplyError::InconsistentCode)
        );
        let mut input = BytesMut::from(&b"250-mx\r\n250-PIPE\nLINING\r\n"[..]);
        assert_eq!(
            decoder.decode_ehlo(&mut input),
            Err(crate::reply::ReplyError::BareLineEnding)
        );
        // After an error the decoder starts afresh.
        let mut input = BytesMut::from(&b"250-mx\r\n"[..]);
        assert_eq!(decoder.decode_ehlo(&mut input), Ok(None));
        assert!(decoder.is_partial());
        input.extend_from_slice(b"250 8BITMIME\r\n");
        let Some(EhloReply::Capabilities(caps)) = decoder.decode_ehlo(&mut input).unwrap() else {
            panic!("a 250 reply");
        };
        assert_eq!(caps.domain, "mx");
        assert!(caps.eight_bit_mime);
        assert!(!decoder.is_partial());
    }

    #[test]
    fn parse_ehlo_borrows_and_hands_other_codes_back() {
        let decoder = ReplyDecoder::new();
        let input = b"250-mx.example.org Hi\r\n250-AUTH=login\r\n250-auth PLAIN LOGIN\r\n250-VRFY\r\n250-size 100\r\n250 8bitmime\r\nQUIT";
        let Some(BorrowedEhlo::Capabilities { capabilities, len }) =
            decoder.parse_ehlo(input).unwrap()
        else {
            panic!("a 250 reply");
        };
        assert_eq!(len, input.len() - 4);
        assert!(matches!(
            capabilities.domain,
            Cow::Borrowed("mx.example.org")
        ));
        assert_eq!(capabilities.greeting.as_deref(), Some("Hi"));
        assert_eq!(capabilities.size, Some(100));
        assert!(capabilities.eight_bit_mime);
        assert!(!capabilities.pipelining);
        assert_eq!(
            capabilities.auth().collect::<Vec<_>>(),
            ["login", "PLAIN", "LOGIN"]
        );
        assert!(capabilities.supports_auth("Plain"));
        assert!(!capabilities.supports_auth("CRAM-MD5"));
        assert_eq!(capabilities.other().collect::<Vec<_>>(), ["VRFY"]);
        assert_eq!(capabilities.to_owned().auth, ["LOGIN", "PLAIN"]);

        assert_eq!(
            decoder.parse_ehlo(b"502 5.5.1 Unknown\r\n"),
            Ok(Some(BorrowedEhlo::Other { code: 502 }))
        );
        assert_eq!(
            decoder.parse_ehlo(b"250-mx\r\n251 DSN\r\n"),
            Err(crate::reply::ReplyError::InconsistentCode)
        );
        assert_eq!(
            decoder.parse_ehlo(b"250-mx\r\n250 DSN\n"),
            Err(crate::reply::ReplyError::BareLineEnding)
        );
        assert_eq!(decoder.parse_ehlo(b"250-mx\r\n250 DS"), Ok(None));
    }

    #[test]
    fn reads_a_typical_reply() {
        let caps = parse(&[
            "mx.example.org",
            "PIPELINING",
            "SIZE 10240000",
            "VRFY",
            "ETRN",
            "STARTTLS",
            "AUTH PLAIN LOGIN",
            "AUTH=PLAIN LOGIN",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            "DSN",
            "SMTPUTF8",
            "CHUNKING",
        ]);
        let expected = Capabilities {
            domain: "mx.example.org".into(),
            greeting: None,
            size: Some(10_240_000),
            pipelining: true,
            eight_bit_mime: true,
            binary_mime: false,
            chunking: true,
            smtputf8: true,
            starttls: true,
            dsn: true,
            enhanced_status_codes: true,
            requiretls: false,
            auth: vec!["PLAIN".into(), "LOGIN".into()],
            other: vec!["VRFY".into(), "ETRN".into()],
        };
        assert_eq!(caps, expected);
    }

    #[test]
    fn keywords_are_case_insensitive() {
        let caps = parse(&[
            "mx",
            "pipelining",
            "8bitmime",
            "BinaryMime",
            "chunking",
            "smtputf8",
            "StartTLS",
            "dsn",
            "enhancedstatuscodes",
            "requiretls",
            "size 42",
            "auth cram-md5 Plain",
        ]);
        assert!(caps.pipelining && caps.eight_bit_mime && caps.binary_mime && caps.chunking);
        assert!(caps.smtputf8 && caps.starttls && caps.dsn && caps.enhanced_status_codes);
        assert!(caps.requiretls);
        assert_eq!(caps.size, Some(42));
        assert_eq!(caps.auth, ["CRAM-MD5", "PLAIN"]);
        assert!(caps.other.is_empty());
    }

    #[test]
    fn size_with_and_without_a_number() {
        assert_eq!(parse(&["mx", "SIZE"]).size, Some(0));
        assert_eq!(parse(&["mx", "SIZE 0"]).size, Some(0));
        assert_eq!(parse(&["mx", "SIZE 35882577"]).size, Some(35_882_577));
        assert_eq!(parse(&["mx", "SIZE lots"]).size, Some(0));
        assert_eq!(parse(&["mx", "SIZE 99999999999999999999999"]).size, Some(0));
        assert_eq!(parse(&["mx"]).size, None);
    }

    #[test]
    fn auth_in_both_forms() {
        let caps = parse(&["mx", "AUTH=LOGIN PLAIN"]);
        assert_eq!(caps.auth, ["LOGIN", "PLAIN"]);
        let caps = parse(&["mx", "auth=xoauth2"]);
        assert_eq!(caps.auth, ["XOAUTH2"]);
        // Both lines, as many servers send them: each mechanism once.
        let caps = parse(&["mx", "AUTH LOGIN PLAIN XOAUTH2", "AUTH=LOGIN PLAIN"]);
        assert_eq!(caps.auth, ["LOGIN", "PLAIN", "XOAUTH2"]);
        assert!(caps.supports_auth("xoauth2"));
        assert!(caps.supports_auth("Plain"));
        assert!(!caps.supports_auth("CRAM-MD5"));
        assert!(!caps.supports_auth(""));
        assert!(parse(&["mx", "AUTH"]).auth.is_empty());
    }

    #[test]
    fn unknown_lines_are_kept_verbatim() {
        let caps = parse(&[
            "mx",
            "XCLIENT NAME ADDR",
            "x-foo  Bar=1 ",
            "",
            "AUTHX PLAIN",
            "SIZED 5",
        ]);
        assert_eq!(
            caps.other,
            [
                "XCLIENT NAME ADDR",
                "x-foo  Bar=1 ",
                "",
                "AUTHX PLAIN",
                "SIZED 5"
            ]
        );
        assert!(caps.auth.is_empty());
        assert_eq!(caps.size, None);
    }

    #[test]
    fn domain_and_greeting() {
        let caps = parse(&["mx.example.org Hello client [192.0.2.1]"]);
        assert_eq!(caps.domain, "mx.example.org");
        assert_eq!(caps.greeting.as_deref(), Some("Hello client [192.0.2.1]"));
        let caps = parse(&["mx.example.org "]);
        assert_eq!(caps.domain, "mx.example.org");
        assert_eq!(caps.greeting, None);
        let empty = Capabilities::from_reply(&Reply::with_lines(250, None, Vec::<String>::new()));
        assert_eq!(empty, Capabilities::default());
    }

    #[test]
    fn writes_a_reply_in_a_stable_order() {
        let caps = Capabilities {
            domain: "mx.example.org".into(),
            greeting: Some("greets client".into()),
            size: Some(0),
            pipelining: true,
            eight_bit_mime: true,
            binary_mime: true,
            chunking: true,
            smtputf8: true,
            starttls: true,
            dsn: true,
            enhanced_status_codes: true,
            requiretls: true,
            auth: vec!["PLAIN".into(), "LOGIN".into()],
            other: vec!["VRFY".into()],
        };
        let reply = caps.to_reply();
        assert_eq!(reply.code(), 250);
        assert_eq!(reply.enhanced(), None);
        let mut wire = BytesMut::new();
        reply.encode(&mut wire);
        assert_eq!(
            std::str::from_utf8(&wire).unwrap(),
            "250-mx.example.org greets client\r\n250-PIPELINING\r\n250-SIZE\r\n\
             250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250-SMTPUTF8\r\n250-DSN\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-REQUIRETLS\r\n\
             250-AUTH PLAIN LOGIN\r\n250 VRFY\r\n"
        );
        // Nothing offered: a single line.
        let bare = Capabilities {
            domain: "mx".into(),
            size: Some(1000),
            ..Capabilities::default()
        };
        assert_eq!(bare.to_reply().lines(), ["mx", "SIZE 1000"]);
        assert_eq!(Capabilities::from_reply(&bare.to_reply()), bare);
    }

    mod proptests {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn capabilities() -> impl Strategy<Value = Capabilities> {
            let flags = vec(any::<bool>(), 9);
            let auth = vec("[A-Z0-9_-]{1,20}", 0..5).prop_map(|mut mechanisms| {
                let mut seen = Vec::new();
                mechanisms.retain(|mechanism| {
                    let new = !seen.contains(mechanism);
                    seen.push(mechanism.clone());
                    new
                });
                mechanisms
            });
            // Unknown keywords: X-prefixed, so never one of ours.
            let other = vec("X[A-Za-z0-9-]{0,10}( [!-~]{1,10}){0,3}", 0..4);
            (
                // Starts with a letter: a first line such as "2.0.0 x"
                // would read as an enhanced status code on the wire.
                "[a-z][a-z0-9.-]{0,29}",
                proptest::option::of("[^\r\n\x00]{1,30}"),
                proptest::option::of(any::<u64>()),
                flags,
                auth,
                other,
            )
                .prop_map(|(domain, greeting, size, flags, auth, other)| {
                    Capabilities {
                        domain,
                        greeting,
                        size,
                        pipelining: flags[0],
                        eight_bit_mime: flags[1],
                        binary_mime: flags[2],
                        chunking: flags[3],
                        smtputf8: flags[4],
                        starttls: flags[5],
                        dsn: flags[6],
                        enhanced_status_codes: flags[7],
                        requiretls: flags[8],
                        auth,
                        other,
                    }
                })
        }

        proptest! {
            /// Capabilities → reply → wire → ReplyDecoder → Capabilities.
            #[test]
            fn round_trip_through_the_wire(caps in capabilities()) {
                let mut wire = BytesMut::new();
                caps.to_reply().encode(&mut wire);
                let reply = ReplyDecoder::new().decode(&mut wire).unwrap().unwrap();
                prop_assert!(wire.is_empty());
                prop_assert_eq!(Capabilities::from_reply(&reply), caps);
            }

            /// `decode_ehlo` reads a 250 reply into the same capabilities
            /// as `decode` then `from_reply`, whole or split in two reads.
            #[test]
            fn decode_ehlo_matches_decode_then_from_reply(
                caps in capabilities(),
                extra in proptest::collection::vec("[ -~]{0,20}", 0..4),
                split in 0usize..400,
            ) {
                let mut lines: Vec<String> =
                    caps.to_reply().lines().iter().map(|line| line.to_string()).collect();
                lines.extend(extra);
                let mut wire = BytesMut::new();
                Reply::with_lines(250, None, lines).encode(&mut wire);
                let expected = match ReplyDecoder::new().decode(&mut wire.clone()) {
                    Ok(Some(reply)) => Ok(Some(Capabilities::from_reply(&reply))),
                    Ok(None) => Ok(None),
                    Err(error) => Err(error),
                };
                let mut decoder = ReplyDecoder::new();
                let at = split.min(wire.len());
                let mut input = BytesMut::from(&wire[..at]);
                let first = decoder.decode_ehlo(&mut input);
                let got = match first {
                    Ok(Some(reply)) => Ok(Some(reply)),
                    Ok(None) => {
                        input.extend_from_slice(&wire[at..]);
                        decoder.decode_ehlo(&mut input)
                    }
                    Err(error) => Err(error),
                };
                let got = got.map(|reply| reply.map(|reply| match reply {
                    EhloReply::Capabilities(caps) => caps,
                    EhloReply::Other(reply) => panic!("not read as capabilities: {reply:?}"),
                }));
                prop_assert_eq!(got, expected);
            }

            /// `parse_ehlo` borrows what `decode` then `from_reply` own:
            /// the same capabilities, length, errors and mechanisms.
            #[test]
            fn parse_ehlo_matches_decode_then_from_reply(
                caps in capabilities(),
                extra in proptest::collection::vec("[ -~]{0,20}", 0..4),
                cut in 0usize..400,
            ) {
                let mut lines: Vec<String> =
                    caps.to_reply().lines().iter().map(|line| line.to_string()).collect();
                lines.extend(extra);
                let mut wire = BytesMut::new();
                Reply::with_lines(250, None, lines).encode(&mut wire);
                wire.extend_from_slice(b"250 OK\r\n");
                let whole = wire.len() - b"250 OK\r\n".len();
                let input = &wire[..cut.min(wire.len())];
                let mut buffer = BytesMut::from(input);
                let expected = ReplyDecoder::new().decode(&mut buffer);
                let got = ReplyDecoder::new().parse_ehlo(input);
                match (expected, got) {
                    (Ok(Some(reply)), Ok(Some(BorrowedEhlo::Capabilities { capabilities, len }))) => {
                        prop_assert_eq!(len, whole);
                        let owned = Capabilities::from_reply(&reply);
                        prop_assert_eq!(capabilities.to_owned(), owned.clone());
                        prop_assert_eq!(capabilities.size, owned.size);
                        prop_assert_eq!(capabilities.pipelining, owned.pipelining);
                        prop_assert_eq!(capabilities.starttls, owned.starttls);
                        prop_assert_eq!(capabilities.domain.as_ref(), owned.domain.as_str());
                        let mut auth: Vec<String> = Vec::new();
                        for mechanism in capabilities.auth() {
                            let upper = mechanism.to_ascii_uppercase();
                            if !auth.contains(&upper) {
                                auth.push(upper);
                            }
                        }
                        prop_assert_eq!(auth, owned.auth.clone());
                        let other: Vec<String> = capabilities.other().map(|line| line.into_owned()).collect();
                        prop_assert_eq!(other, owned.other.clone());
                        for mechanism in &owned.auth {
                            prop_assert!(capabilities.supports_auth(mechanism));
                        }
                    }
                    (Ok(None), Ok(None)) => {}
                    (Err(a), Err(b)) => prop_assert_eq!(a, b),
                    (expected, got) => prop_assert!(false, "decode {:?}, parse_ehlo {:?}", expected, got),
                }
            }

            /// Adding the obsolete AUTH= line with the same mechanisms, in
            /// lower case, changes nothing.
            #[test]
            fn obsolete_auth_line_adds_nothing(caps in capabilities()) {
                let mut reply_lines: Vec<String> =
                    caps.to_reply().lines().iter().map(|line| line.to_string()).collect();
                if !caps.auth.is_empty() {
                    reply_lines.insert(1, format!("auth={}", caps.auth.join(" ").to_lowercase()));
                }
                let reply = Reply::with_lines(250, None, reply_lines);
                prop_assert_eq!(Capabilities::from_reply(&reply), caps);
            }
        }
    }
}
