//! Replies: a three-digit code, an optional RFC 3463 enhanced status code,
//! and one or more lines of text (RFC 5321 §4.2).

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
    pub fn with_lines(
        code: u16,
        enhanced: Option<EnhancedCode>,
        lines: Vec<Cow<'static, str>>,
    ) -> Self {
        Self {
            code,
            enhanced,
            lines,
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
            dst.put_u8(if byte == b'\r' || byte == b'\n' || byte == 0 { b' ' } else { byte });
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
