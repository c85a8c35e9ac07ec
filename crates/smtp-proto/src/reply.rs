//! Replies: a three-digit code, an optional RFC 3463 enhanced status code,
//! and one or more lines of text (RFC 5321 §4.2).
//!
//! Servers build [`Reply`] values and [`encode`](Reply::encode) them; clients
//! read them back with the incremental [`ReplyDecoder`]. The standard
//! enhanced status codes are named in [`codes`].

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, BytesMut};

/// An RFC 3463 enhanced status code, `class.subject.detail` (for example
/// `5.1.1`), as carried in replies when `ENHANCEDSTATUSCODES` (RFC 2034) is
/// in force.
///
/// ```
/// use smtp_proto::EnhancedCode;
/// let code = EnhancedCode::new(2, 1, 0);
/// assert_eq!(code.to_string(), "2.1.0");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject, 0 to 999 (RFC 3463 §3: 1 addressing, 2 mailbox, 3 mail
    /// system, 4 network and routing, 5 protocol, 6 content, 7 security).
    pub subject: u16,
    /// The detail, 0 to 999.
    pub detail: u16,
}

impl EnhancedCode {
    /// Builds a code from its three parts.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parses `class.subject.detail` exactly as RFC 3463 §2 writes it:
    /// class `2`, `4` or `5`, then subject and detail of one to three
    /// digits each. Anything else, including surrounding spaces, is `None`.
    ///
    /// ```
    /// use smtp_proto::EnhancedCode;
    /// assert_eq!(EnhancedCode::parse("5.7.11"), Some(EnhancedCode::new(5, 7, 11)));
    /// assert_eq!(EnhancedCode::parse("3.0.0"), None);
    /// assert_eq!(EnhancedCode::parse("2.1.0 "), None);
    /// ```
    pub fn parse(text: &str) -> Option<EnhancedCode> {
        match Self::parse_prefix(text.as_bytes()) {
            Some((code, len)) if len == text.len() => Some(code),
            _ => None,
        }
    }

    /// Parses a code at the start of `bytes`; returns it with the number of
    /// bytes it spans. What follows the code is not examined.
    fn parse_prefix(bytes: &[u8]) -> Option<(EnhancedCode, usize)> {
        let class = match bytes.first() {
            Some(digit @ (b'2' | b'4' | b'5')) => digit - b'0',
            _ => return None,
        };
        if bytes.get(1) != Some(&b'.') {
            return None;
        }
        let (subject, subject_len) = Self::parse_number(&bytes[2..])?;
        let after_subject = 2 + subject_len;
        if bytes.get(after_subject) != Some(&b'.') {
            return None;
        }
        let (detail, detail_len) = Self::parse_number(&bytes[after_subject + 1..])?;
        let end = after_subject + 1 + detail_len;
        // A fourth digit would make the number longer than RFC 3463 allows.
        if bytes.get(end).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        Some((EnhancedCode::new(class, subject, detail), end))
    }

    /// One to three ASCII digits (RFC 3463 §2 `1*3digit`).
    fn parse_number(bytes: &[u8]) -> Option<(u16, usize)> {
        let len = bytes
            .iter()
            .take(3)
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        if len == 0 {
            return None;
        }
        let value = bytes[..len]
            .iter()
            .fold(0u16, |value, digit| value * 10 + u16::from(digit - b'0'));
        Some((value, len))
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply.
///
/// The enhanced code, when present, is written in front of the text of
/// every line, as RFC 2034 §3 asks. The greeting and the EHLO reply carry
/// none (RFC 2034 §3).
///
/// ```
/// use smtp_proto::{EnhancedCode, Reply};
/// let reply = Reply::new(250, EnhancedCode::new(2, 1, 0), "Sender ok");
/// let mut out = bytes::BytesMut::new();
/// reply.encode(&mut out);
/// assert_eq!(&out[..], b"250 2.1.0 Sender ok\r\n");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    lines: Vec<Cow<'static, str>>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, enhanced: EnhancedCode, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced status code (the greeting, the EHLO
    /// reply, or a reply from a server that does not offer
    /// `ENHANCEDSTATUSCODES`).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    /// A reply with any number of lines. An empty `lines` is written as one
    /// empty line.
    ///
    /// ```
    /// use smtp_proto::Reply;
    /// let reply = Reply::with_lines(250, None, vec!["mx.example.org", "PIPELINING"]);
    /// let mut out = bytes::BytesMut::new();
    /// reply.encode(&mut out);
    /// assert_eq!(&out[..], b"250-mx.example.org\r\n250 PIPELINING\r\n");
    /// ```
    pub fn with_lines(
        code: u16,
        enhanced: Option<EnhancedCode>,
        lines: Vec<impl Into<Cow<'static, str>>>,
    ) -> Self {
        Self {
            code,
            enhanced,
            lines: lines.into_iter().map(Into::into).collect(),
        }
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if the reply carries one.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text of each line, without code or enhanced code.
    pub fn lines(&self) -> &[Cow<'static, str>] {
        &self.lines
    }

    /// The lines joined with `"\n"`: convenient for error messages.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// 2xx: the command succeeded.
    pub fn is_positive_completion(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx: the server waits for more (354 after DATA, 334 during AUTH).
    pub fn is_positive_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: a transient failure; the same command may succeed later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: a permanent failure.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Appends the wire form of the reply, every line ending in `<CRLF>`.
    ///
    /// CR and LF inside a line's text are written as spaces, so a reply can
    /// never be made to carry a second, injected reply.
    pub fn encode(&self, dst: &mut BytesMut) {
        let last = self.lines.len().saturating_sub(1);
        let enhanced = self.enhanced.map(|code| code.to_string());
        if self.lines.is_empty() {
            self.encode_line(dst, ' ', enhanced.as_deref(), "");
            return;
        }
        for (index, line) in self.lines.iter().enumerate() {
            let separator = if index == last { ' ' } else { '-' };
            self.encode_line(dst, separator, enhanced.as_deref(), line);
        }
    }

    fn encode_line(&self, dst: &mut BytesMut, separator: char, enhanced: Option<&str>, text: &str) {
        dst.reserve(text.len() + 16);
        let code = self.code.min(999);
        dst.put_u8(b'0' + (code / 100) as u8);
        dst.put_u8(b'0' + (code / 10 % 10) as u8);
        dst.put_u8(b'0' + (code % 10) as u8);
        dst.put_u8(separator as u8);
        if let Some(enhanced) = enhanced {
            dst.put_slice(enhanced.as_bytes());
            if !text.is_empty() {
                dst.put_u8(b' ');
            }
        }
        for &byte in text.as_bytes() {
            dst.put_u8(if byte == b'\r' || byte == b'\n' || byte == 0 {
                b' '
            } else {
                byte
            });
        }
        dst.put_slice(b"\r\n");
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(enhanced) = self.enhanced {
            write!(f, " {enhanced}")?;
        }
        for (index, line) in self.lines.iter().enumerate() {
            if index == 0 {
                write!(f, " {line}")?;
            } else {
                write!(f, " / {line}")?;
            }
        }
        Ok(())
    }
}

/// Standard enhanced status codes (RFC 3463 §3, as registered in the
/// RFC 5248 registry), with the class a server normally sends them in.
///
/// The subject and detail carry the meaning; the class says whether the
/// failure is transient (4) or permanent (5). Where both classes are common,
/// both are named. Build any other code with [`EnhancedCode::new`].
///
/// ```
/// use smtp_proto::{reply::codes, Reply};
/// let reply = Reply::new(550, codes::BAD_DESTINATION_MAILBOX, "No such user");
/// assert_eq!(reply.to_string(), "550 5.1.1 No such user");
/// ```
pub mod codes {
    use super::EnhancedCode;

    /// 2.0.0: success with nothing more specific to say (HELO, NOOP, RSET,
    /// QUIT, message queued).
    pub const OK: EnhancedCode = EnhancedCode::new(2, 0, 0);
    /// 2.1.0: the sender (MAIL FROM) is accepted (X.1.0, other address
    /// status).
    pub const SENDER_OK: EnhancedCode = EnhancedCode::new(2, 1, 0);
    /// 2.1.5: the recipient (RCPT TO) is valid and accepted (X.1.5,
    /// destination address valid).
    pub const DESTINATION_OK: EnhancedCode = EnhancedCode::new(2, 1, 5);
    /// 2.7.0: authentication succeeded (RFC 4954 §6, `235 2.7.0`).
    pub const AUTH_SUCCEEDED: EnhancedCode = EnhancedCode::new(2, 7, 0);

    /// 5.1.1: the mailbox does not exist at the destination ("user
    /// unknown").
    pub const BAD_DESTINATION_MAILBOX: EnhancedCode = EnhancedCode::new(5, 1, 1);
    /// 5.1.2: the destination system (the domain part) does not exist or
    /// does not accept mail.
    pub const BAD_DESTINATION_SYSTEM: EnhancedCode = EnhancedCode::new(5, 1, 2);
    /// 5.1.3: the recipient address is syntactically invalid.
    pub const BAD_DESTINATION_SYNTAX: EnhancedCode = EnhancedCode::new(5, 1, 3);
    /// 5.1.4: the recipient address is ambiguous (matches several
    /// mailboxes).
    pub const AMBIGUOUS_DESTINATION: EnhancedCode = EnhancedCode::new(5, 1, 4);
    /// 5.1.6: the mailbox has moved and there is no forwarding address.
    pub const DESTINATION_MOVED: EnhancedCode = EnhancedCode::new(5, 1, 6);
    /// 5.1.7: the sender address is syntactically invalid.
    pub const BAD_SENDER_SYNTAX: EnhancedCode = EnhancedCode::new(5, 1, 7);
    /// 5.1.8: the sender's system (the domain part) is invalid, for example
    /// it does not exist in the DNS.
    pub const BAD_SENDER_SYSTEM: EnhancedCode = EnhancedCode::new(5, 1, 8);

    /// 5.2.1: the mailbox exists but is disabled and accepts no mail.
    pub const MAILBOX_DISABLED: EnhancedCode = EnhancedCode::new(5, 2, 1);
    /// 4.2.2: the mailbox is over quota; it may accept mail later.
    pub const MAILBOX_FULL: EnhancedCode = EnhancedCode::new(4, 2, 2);
    /// 5.2.2: the mailbox is over quota and the failure is permanent.
    pub const MAILBOX_FULL_PERMANENT: EnhancedCode = EnhancedCode::new(5, 2, 2);
    /// 5.2.3: the message is larger than this mailbox accepts.
    pub const MESSAGE_TOO_BIG_FOR_MAILBOX: EnhancedCode = EnhancedCode::new(5, 2, 3);

    /// 4.3.0: a transient mail system failure with nothing more specific to
    /// say (for example the message store failed).
    pub const SYSTEM_ERROR: EnhancedCode = EnhancedCode::new(4, 3, 0);
    /// 5.3.0: a permanent mail system failure with nothing more specific to
    /// say.
    pub const SYSTEM_ERROR_PERMANENT: EnhancedCode = EnhancedCode::new(5, 3, 0);
    /// 4.3.1: the mail system is out of storage (RFC 1870, `452`).
    pub const SYSTEM_FULL: EnhancedCode = EnhancedCode::new(4, 3, 1);
    /// 4.3.2: the system is not accepting messages now, for example while
    /// shutting down (`421 4.3.2`).
    pub const SYSTEM_NOT_ACCEPTING: EnhancedCode = EnhancedCode::new(4, 3, 2);
    /// 5.3.3: the system cannot provide a feature the command asked for.
    pub const SYSTEM_NOT_CAPABLE: EnhancedCode = EnhancedCode::new(5, 3, 3);
    /// 5.3.4: the message is larger than the system accepts (RFC 1870,
    /// `552 5.3.4`).
    pub const MESSAGE_TOO_BIG: EnhancedCode = EnhancedCode::new(5, 3, 4);

    /// 4.4.2: bad connection; servers send it when they close an idle or
    /// too slow session (`421 4.4.2` on timeout).
    pub const TIMEOUT: EnhancedCode = EnhancedCode::new(4, 4, 2);
    /// 4.4.5: the mail system is congested; try again later.
    pub const CONGESTION: EnhancedCode = EnhancedCode::new(4, 4, 5);
    /// 5.4.6: a routing loop was detected (too many `Received` header
    /// fields).
    pub const ROUTING_LOOP: EnhancedCode = EnhancedCode::new(5, 4, 6);
    /// 4.4.7: the message stayed in the queue longer than its delivery
    /// time allowed.
    pub const DELIVERY_TIME_EXPIRED: EnhancedCode = EnhancedCode::new(4, 4, 7);

    /// 5.5.1: the command is unknown or not valid now (`500`, `502`, and
    /// `503` bad sequence of commands).
    pub const INVALID_COMMAND: EnhancedCode = EnhancedCode::new(5, 5, 1);
    /// 5.5.2: the command line is syntactically invalid (`500`, and `550`
    /// for bare line endings).
    pub const SYNTAX_ERROR: EnhancedCode = EnhancedCode::new(5, 5, 2);
    /// 4.5.3: too many recipients for this message; the rest may be sent in
    /// another transaction (RFC 5321 §4.5.3.1.10, `452`).
    pub const TOO_MANY_RECIPIENTS: EnhancedCode = EnhancedCode::new(4, 5, 3);
    /// 5.5.3: too many recipients, as a permanent failure.
    pub const TOO_MANY_RECIPIENTS_PERMANENT: EnhancedCode = EnhancedCode::new(5, 5, 3);
    /// 5.5.4: the command's arguments or parameters are invalid (`501`,
    /// `555`).
    pub const INVALID_ARGUMENTS: EnhancedCode = EnhancedCode::new(5, 5, 4);
    /// 5.5.6: an AUTH exchange line is too long (RFC 4954 §4, `500 5.5.6`).
    pub const AUTH_LINE_TOO_LONG: EnhancedCode = EnhancedCode::new(5, 5, 6);

    /// 5.6.1: the message's media type is not supported (for example a
    /// BINARYMIME body the next hop cannot take).
    pub const MEDIA_NOT_SUPPORTED: EnhancedCode = EnhancedCode::new(5, 6, 1);
    /// 5.6.7: a non-ASCII address was given but is not permitted for that
    /// sender or recipient, for example without SMTPUTF8 (RFC 6531).
    pub const NON_ASCII_ADDRESS: EnhancedCode = EnhancedCode::new(5, 6, 7);

    /// 5.7.0: a security or policy failure with nothing more specific to
    /// say.
    pub const SECURITY: EnhancedCode = EnhancedCode::new(5, 7, 0);
    /// 4.7.0: a transient security or policy failure; servers also use it
    /// for rate limits and too many connections.
    pub const SECURITY_TRANSIENT: EnhancedCode = EnhancedCode::new(4, 7, 0);
    /// 5.7.0: authentication is required before this command (RFC 4954 §6,
    /// `530 5.7.0`); also sent as `530 5.7.0` when STARTTLS must come first
    /// (RFC 3207 §4).
    pub const AUTH_REQUIRED: EnhancedCode = EnhancedCode::new(5, 7, 0);
    /// 4.7.0: authentication failed for a transient reason (RFC 4954 §6,
    /// `454 4.7.0`).
    pub const AUTH_TEMPORARY_FAILURE: EnhancedCode = EnhancedCode::new(4, 7, 0);
    /// 5.7.1: delivery not authorized, for example relaying denied.
    pub const DELIVERY_NOT_AUTHORIZED: EnhancedCode = EnhancedCode::new(5, 7, 1);
    /// 5.7.8: the authentication credentials are invalid (RFC 4954 §6,
    /// `535 5.7.8`).
    pub const AUTH_INVALID: EnhancedCode = EnhancedCode::new(5, 7, 8);
    /// 5.7.9: the authentication mechanism is too weak (RFC 4954 §6,
    /// `534 5.7.9`).
    pub const AUTH_MECHANISM_TOO_WEAK: EnhancedCode = EnhancedCode::new(5, 7, 9);
    /// 5.7.11: encryption (TLS) is required for the requested
    /// authentication mechanism (RFC 4954 §6, `538 5.7.11`).
    pub const ENCRYPTION_REQUIRED: EnhancedCode = EnhancedCode::new(5, 7, 11);
    /// 5.7.30: the message requires REQUIRETLS but the path does not
    /// support it (RFC 8689).
    pub const REQUIRETLS_REQUIRED: EnhancedCode = EnhancedCode::new(5, 7, 30);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_code_parse_accepts_rfc3463_forms() {
        assert_eq!(EnhancedCode::parse("2.0.0"), Some(codes::OK));
        assert_eq!(
            EnhancedCode::parse("5.7.11"),
            Some(codes::ENCRYPTION_REQUIRED)
        );
        assert_eq!(
            EnhancedCode::parse("4.999.999"),
            Some(EnhancedCode::new(4, 999, 999))
        );
        // 1*3digit allows leading zeros; the value is what counts.
        assert_eq!(
            EnhancedCode::parse("5.01.001"),
            Some(EnhancedCode::new(5, 1, 1))
        );
    }

    #[test]
    fn enhanced_code_parse_rejects_everything_else() {
        for text in [
            "", "2", "2.", "2.0", "2.0.", "3.0.0", "1.0.0", "6.0.0", "25.0.0", "2.1000.0",
            "2.0.1000", "2..0", "2.0..0", "2.a.0", " 2.0.0", "2.0.0 ", "2.0.0.0", "2,0,0",
            "+2.0.0", "2.-1.0",
        ] {
            assert_eq!(EnhancedCode::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn enhanced_code_display_parse_round_trip() {
        for class in [2, 4, 5] {
            for subject in [0, 1, 9, 10, 99, 100, 999] {
                for detail in [0, 7, 30, 999] {
                    let code = EnhancedCode::new(class, subject, detail);
                    assert_eq!(EnhancedCode::parse(&code.to_string()), Some(code));
                }
            }
        }
    }

    #[test]
    fn with_lines_takes_str_and_string_and_cow() {
        let from_str = Reply::with_lines(250, None, vec!["a", "b"]);
        let from_string = Reply::with_lines(250, None, vec![String::from("a"), String::from("b")]);
        let from_cow = Reply::with_lines(250, None, vec![Cow::Borrowed("a"), Cow::Borrowed("b")]);
        assert_eq!(from_str, from_string);
        assert_eq!(from_str, from_cow);
        assert_eq!(from_str.text(), "a\nb");
    }
}
