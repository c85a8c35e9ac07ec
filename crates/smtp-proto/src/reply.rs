//! Replies: a three-digit code, an optional RFC 3463 enhanced status code,
//! and one or more lines of text (RFC 5321 §4.2).
//!
//! Servers build [`Reply`] values and [`encode`](Reply::encode) them; clients
//! read them back with the incremental [`ReplyDecoder`]. The standard
//! enhanced status codes are named in [`codes`].

use std::borrow::Cow;
use std::fmt;

use bytes::{Buf, BufMut, BytesMut};

use crate::ehlo::{Capabilities, CapabilitiesRef, ExtensionLines};

use crate::limits::{
    DEFAULT_CLIENT_REPLY_LINE_MAX, DEFAULT_CLIENT_REPLY_LINES_MAX, REPLY_LINE_MAX,
};

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
        // "c.s.d" in a stack buffer: no allocation per reply.
        let mut digits = [0u8; 16];
        let enhanced = self.enhanced.map(|code| {
            let mut len = put_number(&mut digits, 0, u16::from(code.class));
            digits[len] = b'.';
            len = put_number(&mut digits, len + 1, code.subject);
            digits[len] = b'.';
            len = put_number(&mut digits, len + 1, code.detail);
            len
        });
        let enhanced = enhanced.and_then(|len| std::str::from_utf8(&digits[..len]).ok());
        if self.lines.is_empty() {
            self.encode_line(dst, ' ', enhanced, "");
            return;
        }
        for (index, line) in self.lines.iter().enumerate() {
            let separator = if index == last { ' ' } else { '-' };
            self.encode_line(dst, separator, enhanced, line);
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

/// Reads replies from a server, incrementally (RFC 5321 §4.2).
///
/// Feed it the bytes read from the connection; each call to
/// [`decode`](Self::decode) returns at most one complete reply and leaves
/// the bytes of any later reply in the buffer, so pipelined replies
/// (RFC 2920) come out one by one. `Ok(None)` means more bytes are needed.
///
/// What it accepts:
/// - a line is `code SP text`, `code "-" text` (more lines follow, §4.2.1),
///   or a bare `code`; every line of a reply carries the same code;
/// - the code is three digits, the first one 2 to 5 (§4.2: there are no
///   1yz replies in SMTP); the other two are not checked further, so a
///   client can still act on the first digit of an unusual code;
/// - only `<CRLF>` ends a line: a CR or LF on its own is
///   [`ReplyError::BareLineEnding`] (§2.3.8);
/// - an enhanced status code (RFC 2034 §4) is recognised when the first
///   line's text starts with `class.subject.detail` followed by a space or
///   the end of the line, and the class equals the first digit of the
///   reply code; it is then removed from every line that starts with it;
/// - text is UTF-8 (RFC 6531 servers send it); invalid sequences become
///   U+FFFD rather than errors.
///
/// Memory is bounded whatever the server sends: a line longer than the line
/// cap is an error as soon as that many bytes are buffered without a line
/// end, and a reply with more lines than the line-count cap is an error.
/// Bytes already checked are never scanned again, so a reply that arrives
/// one byte at a time costs linear time.
///
/// After an `Err` the position in the stream is lost: close the connection.
/// The decoder itself is reset and can be reused on a fresh stream.
///
/// ```
/// use bytes::BytesMut;
/// use smtp_proto::{reply::ReplyDecoder, EnhancedCode};
///
/// let mut decoder = ReplyDecoder::new();
/// let mut buf = BytesMut::from(&b"250-mx.example.org\r\n250 SIZE 10240"[..]);
/// assert_eq!(decoder.decode(&mut buf), Ok(None));
/// buf.extend_from_slice(b"000\r\n250 2.1.0 Ok\r\n");
///
/// let ehlo = decoder.decode(&mut buf).unwrap().unwrap();
/// assert_eq!(ehlo.code(), 250);
/// assert_eq!(ehlo.lines(), ["mx.example.org", "SIZE 10240000"]);
///
/// let mail = decoder.decode(&mut buf).unwrap().unwrap();
/// assert_eq!(mail.enhanced(), Some(EnhancedCode::new(2, 1, 0)));
/// assert_eq!(mail.text(), "Ok");
/// assert!(buf.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct ReplyDecoder {
    max_line: usize,
    max_lines: usize,
    /// How many bytes at the front of the buffer belong to the current line
    /// and are known to hold neither CR nor LF.
    scanned: usize,
    /// The code of the reply in progress; meaningful once `lines` is not
    /// empty.
    code: u16,
    enhanced: Option<EnhancedCode>,
    lines: Vec<Cow<'static, str>>,
    /// Lines of the reply in progress so far.
    count: usize,
    /// The capabilities read so far, when [`decode_ehlo`](Self::decode_ehlo)
    /// reads a 250 reply straight into them instead of into `lines`.
    ehlo: Option<Capabilities>,
}

/// What [`ReplyDecoder::decode_ehlo`] read: the reply to EHLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EhloReply {
    /// A 250 reply, read straight into the capabilities it announces
    /// (equal to [`Capabilities::from_reply`] of the same reply).
    Capabilities(Capabilities),
    /// Any other reply (EHLO refused or not understood), as a [`Reply`].
    Other(Reply),
}

/// What [`ReplyDecoder::parse_ehlo`] found at the front of its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BorrowedEhlo<'a> {
    /// A whole 250 reply of `len` octets, CRLF included.
    Capabilities {
        /// What the reply announces, borrowed from the input.
        capabilities: CapabilitiesRef<'a>,
        /// Octets of the reply at the front of the input.
        len: usize,
    },
    /// A reply with another code: read it with [`ReplyDecoder::decode`].
    Other {
        /// The reply's code.
        code: u16,
    },
}

/// Lines reserved at once for a multi-line reply.
const MULTILINE_CAPACITY: usize = 16;

impl Default for ReplyDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyDecoder {
    /// A decoder with the default caps:
    /// [`DEFAULT_CLIENT_REPLY_LINE_MAX`] octets per line (CRLF included) and
    /// [`DEFAULT_CLIENT_REPLY_LINES_MAX`] lines per reply.
    pub fn new() -> Self {
        Self::with_limits(
            DEFAULT_CLIENT_REPLY_LINE_MAX,
            DEFAULT_CLIENT_REPLY_LINES_MAX,
        )
    }

    /// A decoder with explicit caps: `max_line` octets per line, CRLF
    /// included, and `max_lines` lines per reply.
    ///
    /// `max_line` is raised to [`REPLY_LINE_MAX`] (512, RFC 5321
    /// §4.5.3.1.5), the longest line every server may send, and `max_lines`
    /// to 1.
    pub fn with_limits(max_line: usize, max_lines: usize) -> Self {
        Self {
            max_line: max_line.max(REPLY_LINE_MAX),
            max_lines: max_lines.max(1),
            scanned: 0,
            code: 0,
            enhanced: None,
            lines: Vec::new(),
            count: 0,
            ehlo: None,
        }
    }

    /// The cap on one line, CRLF included, after flooring.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// The cap on the number of lines in one reply, after flooring.
    pub fn max_lines(&self) -> usize {
        self.max_lines
    }

    /// Whether lines of an unfinished multi-line reply are held. At the end
    /// of the stream this means the server closed the connection in the
    /// middle of a reply.
    pub fn is_partial(&self) -> bool {
        self.count > 0
    }

    /// Consumes complete reply lines from the front of `src` and returns
    /// the reply once its last line has arrived.
    ///
    /// `Ok(None)` means more bytes are needed: append them to `src` and call
    /// again. Lines of an unfinished reply are removed from `src` and kept
    /// in the decoder; bytes after a complete reply stay in `src` for the
    /// next call. Between calls, only append to `src`.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
        let result = self.decode_lines(src, false);
        if result.is_err() {
            self.reset();
        }
        result.map(|decoded| {
            decoded.map(|reply| match reply {
                EhloReply::Other(reply) => reply,
                // Only a reply begun by `decode_ehlo` is read into
                // capabilities (see there).
                EhloReply::Capabilities(capabilities) => capabilities.to_reply(),
            })
        })
    }

    /// Like [`decode`](Self::decode), for the reply to EHLO: a 250 reply
    /// is read straight into [`Capabilities`], line by line, without
    /// building a [`Reply`] first; any other reply comes back as a
    /// [`Reply`]. The same checks apply (line and line-count caps, CRLF
    /// line ends, one code on every line), and the result equals
    /// [`Capabilities::from_reply`] of what [`decode`](Self::decode) would
    /// return. A reply begun with this method is finished with it (were it
    /// finished with [`decode`](Self::decode), that would return
    /// [`Capabilities::to_reply`] of it).
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use smtp_proto::reply::{EhloReply, ReplyDecoder};
    ///
    /// let mut decoder = ReplyDecoder::new();
    /// let mut buf = BytesMut::from(&b"250-mx.example.org hi\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"[..]);
    /// let Some(EhloReply::Capabilities(caps)) = decoder.decode_ehlo(&mut buf).unwrap() else {
    ///     panic!("a 250 reply");
    /// };
    /// assert_eq!(caps.domain, "mx.example.org");
    /// assert!(caps.pipelining);
    /// assert_eq!(caps.size, Some(1000));
    ///
    /// let mut buf = BytesMut::from(&b"502 5.5.1 Command not implemented\r\n"[..]);
    /// let Some(EhloReply::Other(reply)) = decoder.decode_ehlo(&mut buf).unwrap() else {
    ///     panic!("not a 250 reply");
    /// };
    /// assert_eq!(reply.code(), 502);
    /// ```
    pub fn decode_ehlo(&mut self, src: &mut BytesMut) -> Result<Option<EhloReply>, ReplyError> {
        let result = self.decode_lines(src, true);
        if result.is_err() {
            self.reset();
        }
        result
    }

    fn decode_lines(
        &mut self,
        src: &mut BytesMut,
        ehlo: bool,
    ) -> Result<Option<EhloReply>, ReplyError> {
        // Each turn consumes one line; the line-count cap bounds the loop.
        // The lines taken are removed from `src` once, when the loop ends.
        let mut taken = 0;
        let result = loop {
            let rest = &src[taken..];
            let len = match self.find_line_end(rest) {
                Ok(Some(len)) => len,
                Ok(None) => break Ok(None),
                Err(error) => break Err(error),
            };
            let reply = self.take_line(&rest[..len], ehlo);
            taken += len + 2;
            self.scanned = 0;
            match reply {
                Ok(None) => {}
                Ok(Some(reply)) => break Ok(Some(reply)),
                Err(error) => break Err(error),
            }
        };
        src.advance(taken);
        result
    }

    /// Finds the CRLF that ends the line at the front of `src` and returns
    /// the line's length without it. Scans only bytes not yet checked, and
    /// never more than `max_line` bytes of a line.
    fn find_line_end(&mut self, src: &[u8]) -> Result<Option<usize>, ReplyError> {
        match line_end(src, self.scanned, self.max_line)? {
            Ok(len) => Ok(Some(len)),
            Err(scanned) => {
                self.scanned = scanned;
                Ok(None)
            }
        }
    }

    /// Reads the EHLO reply at the front of `src` without allocating or
    /// consuming anything: a 250 reply becomes a [`CapabilitiesRef`]
    /// borrowed from `src`, with the reply's length, to drop from the
    /// buffer once done with it; for any other code, read the reply with
    /// [`decode`](Self::decode). `Ok(None)` means the reply is not complete
    /// yet (call again with more bytes). The checks are those of
    /// [`decode`](Self::decode) (line and line-count caps, CRLF only, one
    /// code on every line), and [`CapabilitiesRef::to_owned`] equals
    /// [`Capabilities::from_reply`] of the decoded reply. Only this
    /// decoder's caps are used, not its state.
    ///
    /// ```
    /// use smtp_proto::reply::{BorrowedEhlo, ReplyDecoder};
    ///
    /// let input = b"250-mx.example.org hi\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n";
    /// let decoder = ReplyDecoder::new();
    /// let Some(BorrowedEhlo::Capabilities { capabilities, len }) = decoder.parse_ehlo(input).unwrap() else {
    ///     panic!("a whole 250 reply");
    /// };
    /// assert_eq!(len, input.len());
    /// assert_eq!(capabilities.domain, "mx.example.org");
    /// assert!(capabilities.pipelining);
    /// assert!(capabilities.supports_auth("plain"));
    /// assert_eq!(decoder.parse_ehlo(&input[..30]), Ok(None));
    /// ```
    pub fn parse_ehlo<'a>(&self, src: &'a [u8]) -> Result<Option<BorrowedEhlo<'a>>, ReplyError> {
        let mut taken = 0;
        let mut count = 0;
        let mut enhanced = None;
        let mut capabilities = CapabilitiesRef::default();
        let mut rest_start = 0;
        loop {
            let rest = &src[taken..];
            let len = match line_end(rest, 0, self.max_line)? {
                Ok(len) => len,
                Err(_) => return Ok(None),
            };
            let line = &rest[..len];
            let code = parse_code(line).ok_or(ReplyError::InvalidCode)?;
            let last = match line.get(3) {
                None | Some(b' ') => true,
                Some(b'-') => false,
                Some(_) => return Err(ReplyError::InvalidCode),
            };
            if count >= self.max_lines {
                return Err(ReplyError::TooManyLines);
            }
            let mut text = line.get(4..).unwrap_or_default();
            if count == 0 {
                if code != 250 {
                    return Ok(Some(BorrowedEhlo::Other { code }));
                }
                if let Some((code, after)) = split_enhanced(code, text) {
                    enhanced = Some(code);
                    text = after;
                }
                capabilities.set_first_line(text);
                rest_start = len + 2;
            } else if code != 250 {
                return Err(ReplyError::InconsistentCode);
            } else {
                text = strip_same_enhanced(enhanced, text);
                capabilities.add_line(text);
            }
            count += 1;
            taken += len + 2;
            if last {
                capabilities.lines = ExtensionLines {
                    raw: &src[rest_start.min(taken)..taken],
                    enhanced,
                };
                return Ok(Some(BorrowedEhlo::Capabilities {
                    capabilities,
                    len: taken,
                }));
            }
        }
    }

    /// Adds one line (without CRLF) to the reply in progress; returns the
    /// reply when this was its last line. With `ehlo`, a 250 reply is read
    /// into capabilities instead of lines.
    fn take_line(&mut self, line: &[u8], ehlo: bool) -> Result<Option<EhloReply>, ReplyError> {
        let code = parse_code(line).ok_or(ReplyError::InvalidCode)?;
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(ReplyError::InvalidCode),
        };
        if self.count >= self.max_lines {
            return Err(ReplyError::TooManyLines);
        }
        let mut text = line.get(4..).unwrap_or_default();
        let first = self.count == 0;
        if first {
            self.code = code;
            self.enhanced = None;
            if let Some((enhanced, rest)) = split_enhanced(code, text) {
                self.enhanced = Some(enhanced);
                text = rest;
            }
            if ehlo && code == 250 {
                self.ehlo = Some(Capabilities::default());
            } else if !last {
                // A multi-line reply (EHLO above all) has about a dozen
                // lines: grow once instead of line by line.
                self.lines.reserve(MULTILINE_CAPACITY.min(self.max_lines));
            }
        } else if code != self.code {
            return Err(ReplyError::InconsistentCode);
        } else {
            text = strip_same_enhanced(self.enhanced, text);
        }
        self.count += 1;
        match &mut self.ehlo {
            Some(capabilities) if first => capabilities.set_first_line(&utf8_text(text)),
            Some(capabilities) => capabilities.add_line_bytes(text),
            None => self.lines.push(line_text(text)),
        }
        if !last {
            return Ok(None);
        }
        self.count = 0;
        if let Some(capabilities) = self.ehlo.take() {
            self.enhanced = None;
            return Ok(Some(EhloReply::Capabilities(capabilities)));
        }
        let reply = Reply {
            code: self.code,
            enhanced: self.enhanced.take(),
            lines: std::mem::take(&mut self.lines),
        };
        Ok(Some(EhloReply::Other(reply)))
    }

    fn reset(&mut self) {
        self.scanned = 0;
        self.code = 0;
        self.enhanced = None;
        self.lines = Vec::new();
        self.count = 0;
        self.ehlo = None;
    }
}

/// The text of one reply line as the [`Reply`] keeps it.
///
/// The extension keywords that make up most of every EHLO reply are
/// shared statics, so they cost no allocation; other text is copied once
/// (invalid UTF-8 is replaced, as the text is for people and logs).
fn line_text(text: &[u8]) -> Cow<'static, str> {
    let known: &'static str = match text {
        b"PIPELINING" => "PIPELINING",
        b"8BITMIME" => "8BITMIME",
        b"BINARYMIME" => "BINARYMIME",
        b"CHUNKING" => "CHUNKING",
        b"SMTPUTF8" => "SMTPUTF8",
        b"ENHANCEDSTATUSCODES" => "ENHANCEDSTATUSCODES",
        b"DSN" => "DSN",
        b"STARTTLS" => "STARTTLS",
        b"REQUIRETLS" => "REQUIRETLS",
        b"SIZE" => "SIZE",
        b"OK" => "OK",
        _ => {
            return Cow::Owned(match std::str::from_utf8(text) {
                Ok(text) => text.to_owned(),
                Err(_) => String::from_utf8_lossy(text).into_owned(),
            });
        }
    };
    Cow::Borrowed(known)
}

/// Writes `value` in decimal into `buffer` at `at` (room for five digits
/// is the caller's); returns the position after it.
fn put_number(buffer: &mut [u8], at: usize, value: u16) -> usize {
    let mut scratch = [0u8; 5];
    let mut rest = value;
    let mut len = 0;
    loop {
        scratch[len] = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for (offset, &digit) in scratch[..len].iter().rev().enumerate() {
        buffer[at + offset] = digit;
    }
    at + len
}

/// Finds the CRLF that ends the line at the front of `src`, looking from
/// `from` (the octets before it hold neither CR nor LF) and never past
/// `max_line` octets: `Ok(len)`, the line's length without CRLF, or
/// `Err(scanned)` when more octets are needed, `scanned` of them checked.
fn line_end(src: &[u8], from: usize, max_line: usize) -> Result<Result<usize, usize>, ReplyError> {
    let window = src.len().min(max_line);
    let from = from.min(window);
    if let Some(offset) = memchr::memchr2(b'\r', b'\n', &src[from..window]) {
        let at = from + offset;
        if src[at] == b'\n' {
            return Err(ReplyError::BareLineEnding);
        }
        // A CR: the line ends here only if LF follows at once.
        let too_long = at + 2 > max_line;
        return match src.get(at + 1) {
            Some(b'\n') if too_long => Err(ReplyError::LineTooLong),
            Some(b'\n') => Ok(Ok(at)),
            Some(_) => Err(ReplyError::BareLineEnding),
            None if too_long => Err(ReplyError::LineTooLong),
            // Check the CR again when its successor arrives.
            None => Ok(Err(at)),
        };
    }
    if src.len() >= max_line {
        // max_line bytes and still no CRLF: even if the next bytes were
        // CRLF, the line would pass the cap. Fail now, not at the end.
        return Err(ReplyError::LineTooLong);
    }
    Ok(Err(window))
}

/// The text of a line after the first: without its enhanced code when it
/// repeats the first line's (RFC 2034 §4).
pub(crate) fn strip_same_enhanced(first: Option<EnhancedCode>, text: &[u8]) -> &[u8] {
    match first {
        Some(first) => match split_enhanced(u16::from(first.class) * 100, text) {
            Some((enhanced, rest)) if enhanced == first => rest,
            _ => text,
        },
        None => text,
    }
}

/// A reply line's text as `str`: borrowed when it is UTF-8 (as it is in
/// practice), otherwise with invalid sequences replaced, as
/// [`line_text`] does.
pub(crate) fn utf8_text(text: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(text) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(text),
    }
}

/// The three-digit code at the start of a reply line (RFC 5321 §4.2:
/// first digit 2 to 5).
fn parse_code(line: &[u8]) -> Option<u16> {
    match line {
        [
            first @ b'2'..=b'5',
            second @ b'0'..=b'9',
            third @ b'0'..=b'9',
            ..,
        ] => Some(
            u16::from(first - b'0') * 100 + u16::from(second - b'0') * 10 + u16::from(third - b'0'),
        ),
        _ => None,
    }
}

/// Splits `c.s.d SP` (or `c.s.d` alone) off the front of a line's text when
/// `c` is the first digit of `code` (RFC 2034 §4).
fn split_enhanced(code: u16, text: &[u8]) -> Option<(EnhancedCode, &[u8])> {
    let (enhanced, len) = EnhancedCode::parse_prefix(text)?;
    if u16::from(enhanced.class) != code / 100 {
        return None;
    }
    match text.get(len) {
        None => Some((enhanced, &[])),
        Some(b' ') => Some((enhanced, &text[len + 1..])),
        Some(_) => None,
    }
}

/// Why the [`ReplyDecoder`] could not read a reply. Each one means the
/// server is broken or hostile and the stream can no longer be trusted:
/// close the connection (sending QUIT first is optional).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    /// A line passed the line cap without ending in CRLF.
    LineTooLong,
    /// A reply had more lines than the line-count cap.
    TooManyLines,
    /// A line did not start with a three-digit code (first digit 2 to 5)
    /// followed by a space, a hyphen or the end of the line.
    InvalidCode,
    /// The lines of a multi-line reply carried different codes (RFC 5321
    /// §4.2.1 requires the same code on every line).
    InconsistentCode,
    /// A CR or LF appeared that was not part of a CRLF pair.
    BareLineEnding,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplyError::LineTooLong => "reply line is longer than the line limit",
            ReplyError::TooManyLines => "reply has more lines than the line-count limit",
            ReplyError::InvalidCode => "reply line does not start with a valid three-digit code",
            ReplyError::InconsistentCode => "lines of a multi-line reply carry different codes",
            ReplyError::BareLineEnding => "reply contains a CR or LF outside a CRLF pair",
        })
    }
}

impl std::error::Error for ReplyError {}

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

    /// Decodes every complete reply in `input` at once.
    fn decode_whole(input: &[u8]) -> (Vec<Reply>, Option<ReplyError>, BytesMut) {
        let mut decoder = ReplyDecoder::new();
        let mut buf = BytesMut::from(input);
        let mut replies = Vec::new();
        for _ in 0..=input.len() {
            match decoder.decode(&mut buf) {
                Ok(Some(reply)) => replies.push(reply),
                Ok(None) => return (replies, None, buf),
                Err(error) => return (replies, Some(error), buf),
            }
        }
        panic!("decoder did not stop on {input:?}");
    }

    /// Feeds `input` in pieces ending at each of `cuts`, decoding after
    /// every piece; stops at the first error.
    fn decode_pieces(
        decoder: &mut ReplyDecoder,
        input: &[u8],
        cuts: impl IntoIterator<Item = usize>,
    ) -> (Vec<Reply>, Option<ReplyError>, BytesMut) {
        let mut buf = BytesMut::new();
        let mut replies = Vec::new();
        let mut start = 0;
        for end in cuts.into_iter().chain([input.len()]) {
            buf.extend_from_slice(&input[start..end]);
            start = end;
            for _ in 0..=input.len() {
                match decoder.decode(&mut buf) {
                    Ok(Some(reply)) => replies.push(reply),
                    Ok(None) => break,
                    Err(error) => return (replies, Some(error), buf),
                }
            }
        }
        (replies, None, buf)
    }

    fn one(input: &[u8]) -> Reply {
        let (mut replies, error, rest) = decode_whole(input);
        assert_eq!(error, None, "{input:?}");
        assert_eq!(replies.len(), 1, "{input:?}");
        assert!(rest.is_empty(), "{input:?}");
        replies.pop().unwrap()
    }

    fn error(input: &[u8]) -> ReplyError {
        let (_, error, _) = decode_whole(input);
        error.unwrap_or_else(|| panic!("no error for {input:?}"))
    }

    #[test]
    fn single_line_replies() {
        let reply = one(b"220 mx.example.org ESMTP ready\r\n");
        assert_eq!(reply, Reply::plain(220, "mx.example.org ESMTP ready"));
        // A bare code and a code with an empty text are the same reply.
        assert_eq!(one(b"250\r\n"), Reply::plain(250, ""));
        assert_eq!(one(b"250 \r\n"), Reply::plain(250, ""));
        // Only the one separating space is removed.
        assert_eq!(
            one(b"250  two spaces \r\n"),
            Reply::plain(250, " two spaces ")
        );
        assert_eq!(one(b"599 x\r\n").code(), 599);
        assert_eq!(one(b"354 Go ahead\r\n").code(), 354);
    }

    #[test]
    fn multi_line_reply_keeps_every_line() {
        let reply =
            one(b"250-mx.example.org greets you\r\n250-PIPELINING\r\n250-\r\n250 8BITMIME\r\n");
        assert_eq!(reply.code(), 250);
        assert_eq!(reply.enhanced(), None);
        assert_eq!(
            reply.lines(),
            ["mx.example.org greets you", "PIPELINING", "", "8BITMIME"]
        );
        // A bare code can end a multi-line reply too.
        let reply = one(b"250-first\r\n250\r\n");
        assert_eq!(reply.lines(), ["first", ""]);
    }

    #[test]
    fn enhanced_code_is_recognised_and_stripped() {
        let reply = one(b"550-5.1.1 No such user\r\n550 5.1.1 here\r\n");
        assert_eq!(reply.enhanced(), Some(codes::BAD_DESTINATION_MAILBOX));
        assert_eq!(reply.lines(), ["No such user", "here"]);
        // A line without the code keeps its text; a different code is text.
        let reply = one(b"451-4.3.0 one\r\n451-two\r\n451 4.4.5 three\r\n");
        assert_eq!(reply.enhanced(), Some(codes::SYSTEM_ERROR));
        assert_eq!(reply.lines(), ["one", "two", "4.4.5 three"]);
        // The code alone on the line.
        let reply = one(b"250 2.0.0\r\n");
        assert_eq!(reply, Reply::new(250, codes::OK, ""));
    }

    #[test]
    fn enhanced_code_needs_matching_class_and_a_separator() {
        for (input, text) in [
            (&b"250 5.1.1 text\r\n"[..], "5.1.1 text"),
            (b"354 2.0.0 go\r\n", "2.0.0 go"),
            (b"250 2.1.0text\r\n", "2.1.0text"),
            (b"250 2.1.0.1 text\r\n", "2.1.0.1 text"),
            (b"250 2.1000.0 text\r\n", "2.1000.0 text"),
            (b"250  2.1.0 text\r\n", " 2.1.0 text"),
        ] {
            let reply = one(input);
            assert_eq!(reply.enhanced(), None, "{input:?}");
            assert_eq!(reply.text(), text, "{input:?}");
        }
        // Only the first line decides: a code first seen on line two is text.
        let reply = one(b"250-plain\r\n250 2.0.0 coded\r\n");
        assert_eq!(reply.enhanced(), None);
        assert_eq!(reply.lines(), ["plain", "2.0.0 coded"]);
    }

    #[test]
    fn text_is_decoded_as_lossy_utf8() {
        let reply = one("250 Grüße, 世界\r\n".as_bytes());
        assert_eq!(reply.text(), "Grüße, 世界");
        let reply = one(b"250 bad \xff byte\r\n");
        assert_eq!(reply.text(), "bad \u{fffd} byte");
    }

    #[test]
    fn invalid_codes_are_rejected() {
        for input in [
            &b"\r\n"[..],
            b"25\r\n",
            b"2a0 x\r\n",
            b"150 x\r\n",
            b"650 x\r\n",
            b"050 x\r\n",
            b"2500 x\r\n",
            b"250x\r\n",
            b"250\tx\r\n",
            b" 250 x\r\n",
            b"250-ok\r\nxyz\r\n",
        ] {
            assert_eq!(error(input), ReplyError::InvalidCode, "{input:?}");
        }
    }

    #[test]
    fn inconsistent_codes_are_rejected() {
        assert_eq!(error(b"250-a\r\n251 b\r\n"), ReplyError::InconsistentCode);
        assert_eq!(
            error(b"250-a\r\n250-b\r\n550 c\r\n"),
            ReplyError::InconsistentCode
        );
    }

    #[test]
    fn bare_line_endings_are_rejected() {
        for input in [
            &b"250 ok\n"[..],
            b"250 o\nk\r\n",
            b"250 o\rk\r\n",
            b"250 ok\r\r\n",
            b"250-a\r\n250 ok\n",
            b"\n",
        ] {
            assert_eq!(error(input), ReplyError::BareLineEnding, "{input:?}");
        }
        // A bare LF is reported as soon as it arrives, not at a later CRLF.
        let mut decoder = ReplyDecoder::new();
        let mut buf = BytesMut::from(&b"250 ok\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Err(ReplyError::BareLineEnding));
    }

    #[test]
    fn line_cap_counts_crlf_and_is_floored() {
        let decoder = ReplyDecoder::with_limits(10, 0);
        assert_eq!(decoder.max_line(), REPLY_LINE_MAX);
        assert_eq!(decoder.max_lines(), 1);

        let line = |len: usize| {
            let mut line = b"250 ".to_vec();
            line.resize(len - 2, b'a');
            line.extend_from_slice(b"\r\n");
            line
        };
        let mut decoder = ReplyDecoder::with_limits(512, 10);
        let mut buf = BytesMut::from(&line(512)[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().text().len(), 506);
        let mut buf = BytesMut::from(&line(513)[..]);
        assert_eq!(decoder.decode(&mut buf), Err(ReplyError::LineTooLong));
    }

    #[test]
    fn over_long_line_fails_before_its_crlf() {
        let mut decoder = ReplyDecoder::with_limits(512, 10);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"250 ");
        // Byte by byte: fine up to 511 bytes, an error at the 512th, because
        // with a CRLF still to come the line can no longer fit.
        for count in 5..=512 {
            buf.put_u8(b'x');
            let result = decoder.decode(&mut buf);
            if count < 512 {
                assert_eq!(result, Ok(None), "at {count} bytes");
            } else {
                assert_eq!(result, Err(ReplyError::LineTooLong));
            }
        }
        // A line of 511 bytes then CR: still one byte short of a verdict...
        let mut decoder = ReplyDecoder::with_limits(512, 10);
        let mut buf = BytesMut::from(&[b'2', b'5', b'0', b' '][..]);
        buf.resize(510, b'y');
        buf.put_u8(b'\r');
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        // ...and the LF completes a line of exactly 512.
        buf.put_u8(b'\n');
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().code(), 250);
        // A huge buffer without a line end fails without waiting for more.
        let mut decoder = ReplyDecoder::new();
        let mut buf = BytesMut::from(&vec![b'2'; 1 << 20][..]);
        assert_eq!(decoder.decode(&mut buf), Err(ReplyError::LineTooLong));
    }

    #[test]
    fn line_count_is_capped() {
        let mut decoder = ReplyDecoder::with_limits(512, 3);
        let mut buf = BytesMut::from(&b"250-a\r\n250-b\r\n250 c\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().lines().len(), 3);
        let mut buf = BytesMut::from(&b"250-a\r\n250-b\r\n250-c\r\n250 d\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Err(ReplyError::TooManyLines));
        // An endless continuation fails once the cap is passed.
        let mut decoder = ReplyDecoder::with_limits(512, 100);
        let mut buf = BytesMut::new();
        let mut result = Ok(None);
        for _ in 0..101 {
            buf.extend_from_slice(b"250-more\r\n");
            result = decoder.decode(&mut buf);
            if result.is_err() {
                break;
            }
            assert!(decoder.is_partial());
        }
        assert_eq!(result, Err(ReplyError::TooManyLines));
        assert!(!decoder.is_partial(), "an error resets the decoder");
    }

    #[test]
    fn bytes_after_a_reply_stay_in_the_buffer() {
        let mut decoder = ReplyDecoder::new();
        let mut buf = BytesMut::from(&b"220 ready\r\n\x16\x03\x01 tls"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Reply::plain(220, "ready")))
        );
        assert_eq!(&buf[..], b"\x16\x03\x01 tls");
        assert!(!decoder.is_partial());
    }

    #[test]
    fn pipelined_replies_come_out_one_by_one() {
        let input = b"250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n\
            550 5.1.1 Unknown user\r\n354 End data with <CR><LF>.<CR><LF>\r\n";
        let mut decoder = ReplyDecoder::new();
        let mut buf = BytesMut::from(&input[..]);
        let expected = [
            Reply::new(250, codes::SENDER_OK, "Sender ok"),
            Reply::new(250, codes::DESTINATION_OK, "Recipient ok"),
            Reply::new(550, codes::BAD_DESTINATION_MAILBOX, "Unknown user"),
            Reply::plain(354, "End data with <CR><LF>.<CR><LF>"),
        ];
        for reply in expected {
            assert_eq!(decoder.decode(&mut buf), Ok(Some(reply)));
        }
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(buf.is_empty());
    }

    /// Replies and errors that the split tests below feed in every way.
    const STREAMS: &[&[u8]] = &[
        b"220 mx.example.org ESMTP\r\n",
        b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 SMTPUTF8\r\n",
        b"250 2.1.0 ok\r\n250-2.1.5 a\r\n250 2.1.5 b\r\n354 go\r\n221 2.0.0 bye\r\n",
        b"250-a\r\n251 b\r\n",
        b"250-a\r\n250 b\nc",
        b"250 a\rb\r\n",
        b"250 ok\r\n25",
        b"250-a\r\n250-b\r\n",
        b"xyz\r\n",
    ];

    #[test]
    fn split_at_every_offset_matches_one_buffer() {
        for input in STREAMS {
            let whole = decode_whole(input);
            for cut in 0..=input.len() {
                let split = decode_pieces(&mut ReplyDecoder::new(), input, [cut]);
                assert_eq!(split.0, whole.0, "{input:?} cut at {cut}");
                assert_eq!(split.1, whole.1, "{input:?} cut at {cut}");
                if whole.1.is_none() {
                    assert_eq!(split.2, whole.2, "{input:?} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn byte_by_byte_matches_one_buffer() {
        for input in STREAMS {
            let whole = decode_whole(input);
            let split = decode_pieces(&mut ReplyDecoder::new(), input, 1..input.len());
            assert_eq!(split.0, whole.0, "{input:?}");
            assert_eq!(split.1, whole.1, "{input:?}");
            if whole.1.is_none() {
                assert_eq!(split.2, whole.2, "{input:?}");
            }
        }
    }

    #[test]
    fn checked_bytes_are_not_scanned_again() {
        let mut decoder = ReplyDecoder::new();
        let mut buf = BytesMut::from(&b"250 abc"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(decoder.scanned, 7);
        buf.extend_from_slice(b"def\r");
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        // The CR waits for its LF; everything before it is done.
        assert_eq!(decoder.scanned, 10);
        buf.extend_from_slice(b"\n250");
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Reply::plain(250, "abcdef")))
        );
        assert_eq!(&buf[..], b"250");
        assert_eq!(decoder.scanned, 0);
    }

    #[test]
    fn a_shrunken_buffer_does_not_panic() {
        let mut decoder = ReplyDecoder::new();
        let mut buf = BytesMut::from(&b"250 partial"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.clear();
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn errors_display_a_sentence() {
        for error in [
            ReplyError::LineTooLong,
            ReplyError::TooManyLines,
            ReplyError::InvalidCode,
            ReplyError::InconsistentCode,
            ReplyError::BareLineEnding,
        ] {
            let text = error.to_string();
            assert!(
                text.starts_with("reply") || text.starts_with("lines"),
                "{text}"
            );
            let _: &dyn std::error::Error = &error;
        }
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Line text: anything but CR, LF and NUL (which `encode` rewrites),
    /// sometimes shaped like an enhanced code to probe the stripping.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[^\r\n\x00]{0,40}",
            "[0-9. a-z-]{0,12}",
            (
                prop::sample::select(vec![2u8, 4, 5]),
                0u16..1000,
                0u16..1000,
                "[^\r\n\x00]{0,8}"
            )
                .prop_map(|(class, subject, detail, rest)| format!(
                    "{class}.{subject}.{detail} {rest}"
                )),
        ]
    }

    fn plain_reply() -> impl Strategy<Value = Reply> {
        (200u16..600, vec(text(), 1..6))
            // A plain first line that starts like "c.s.d " with the code's
            // class is, on the wire, a reply with an enhanced code.
            .prop_filter("first line reads as an enhanced code", |(code, lines)| {
                split_enhanced(*code, lines[0].as_bytes()).is_none()
            })
            .prop_map(|(code, lines)| Reply::with_lines(code, None, lines))
    }

    fn enhanced_reply() -> impl Strategy<Value = Reply> {
        (
            prop::sample::select(vec![2u16, 4, 5]),
            0u16..100,
            0u16..1000,
            0u16..1000,
            vec(text(), 1..6),
        )
            .prop_map(|(class, rest, subject, detail, lines)| {
                let enhanced = EnhancedCode::new(class as u8, subject, detail);
                Reply::with_lines(class * 100 + rest, Some(enhanced), lines)
            })
    }

    fn reply() -> impl Strategy<Value = Reply> {
        prop_oneof![plain_reply(), enhanced_reply()]
    }

    fn encode_all(replies: &[Reply]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for reply in replies {
            reply.encode(&mut out);
        }
        out.to_vec()
    }

    /// Decodes `input` fed in pieces ending at `cuts` (sorted, in range).
    fn decode_in_pieces(
        decoder: &mut ReplyDecoder,
        input: &[u8],
        cuts: &[usize],
    ) -> (Vec<Reply>, Option<ReplyError>, BytesMut) {
        let mut buf = BytesMut::new();
        let mut replies = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([&input.len()]) {
            buf.extend_from_slice(&input[start..end]);
            start = end;
            for _ in 0..=input.len() {
                match decoder.decode(&mut buf) {
                    Ok(Some(reply)) => replies.push(reply),
                    Ok(None) => break,
                    Err(error) => return (replies, Some(error), buf),
                }
            }
        }
        (replies, None, buf)
    }

    fn cuts(len: usize, raw: Vec<prop::sample::Index>) -> Vec<usize> {
        let mut cuts: Vec<usize> = raw.iter().map(|index| index.index(len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    /// Pieces of reply streams, valid and not, for the garbage test.
    const TOKENS: &[&[u8]] = &[
        b"250 ",
        b"250-",
        b"550-",
        b"354 ",
        b"250",
        b"2.1.0 ",
        b"5.1.1",
        b"text",
        b"\xff\xfe",
        b"\r\n",
        b"\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ];

    proptest! {
        /// The enhanced code is written as `Display` writes it.
        #[test]
        fn encoded_enhanced_code_matches_display(class in 0u8..=255, subject in any::<u16>(), detail in any::<u16>()) {
            let code = EnhancedCode::new(class, subject, detail);
            let mut out = BytesMut::new();
            Reply::new(250, code, "Ok").encode(&mut out);
            let expected = format!("250 {code} Ok\r\n");
            prop_assert_eq!(&out[..], expected.as_bytes());
        }
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(reply in reply()) {
            let mut wire = BytesMut::new();
            reply.encode(&mut wire);
            let mut decoder = ReplyDecoder::new();
            prop_assert_eq!(decoder.decode(&mut wire), Ok(Some(reply)));
            prop_assert!(wire.is_empty());
            prop_assert!(!decoder.is_partial());
        }

        #[test]
        fn pipelined_replies_survive_any_split(
            replies in vec(reply(), 1..6),
            raw_cuts in vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let input = encode_all(&replies);
            let cuts = cuts(input.len(), raw_cuts);
            let (decoded, error, rest) = decode_in_pieces(&mut ReplyDecoder::new(), &input, &cuts);
            prop_assert_eq!(error, None);
            prop_assert_eq!(decoded, replies);
            prop_assert!(rest.is_empty());
        }

        /// Whatever the bytes, splitting them changes nothing and nothing
        /// panics. The alphabet is SMTP-shaped so that valid lines, caps
        /// and every error occur.
        #[test]
        fn any_input_decodes_the_same_however_split(
            tokens in vec(prop::sample::select(TOKENS), 0..60),
            raw_cuts in vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let input = tokens.concat();
            let cuts = cuts(input.len(), raw_cuts);
            let whole = decode_in_pieces(&mut ReplyDecoder::with_limits(512, 4), &input, &[]);
            let split = decode_in_pieces(&mut ReplyDecoder::with_limits(512, 4), &input, &cuts);
            prop_assert_eq!(&split.0, &whole.0);
            prop_assert_eq!(split.1, whole.1);
            if whole.1.is_none() {
                prop_assert_eq!(&split.2, &whole.2);
            }
            for reply in &whole.0 {
                prop_assert!(reply.lines().len() <= 4);
                prop_assert!(reply.lines().iter().all(|line| line.len() <= 512));
            }
        }
    }
}
