//! The protocol transcript, shared by client and server: which side wrote a
//! line, the line as a hook sees it, the hook's type, and the one rule for
//! hiding AUTH secrets.
//!
//! A transcript is shaped for people and logs, not for replay:
//! - text from the wire is [escaped](escape) so one line is always one
//!   printable line: CR, LF, other control characters, `\` and invalid
//!   UTF-8 octets appear as `\r`, `\n`, `\t`, `\\`, `\xHH` or `\u{HHHH}`,
//!   and a leading `<` as `\x3c`, so wire text never passes for a summary;
//! - message bodies are not shown: one [`LineKind::Summary`] line such as
//!   `<message body: 1234 octets>` stands for them;
//! - AUTH payloads (RFC 4954: they carry passwords and tokens) are replaced
//!   by [`MASK`]: the initial response of `AUTH <mechanism> <response>`
//!   ([`mask_auth_command`]) and every line answering a `334` challenge.
//!
//! ```
//! use smtp_proto::transcript::{Direction, LineKind, TranscriptLine, mask_auth_command};
//!
//! let masked = mask_auth_command(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==");
//! let line = TranscriptLine::new("s1", Direction::Client, LineKind::Wire, &masked);
//! assert_eq!(line.to_string(), "C: AUTH PLAIN ***");
//! ```

use std::fmt;
use std::sync::Arc;

/// What replaces an AUTH secret in a transcript, on both sides.
pub const MASK: &str = "***";

/// Longest SASL mechanism name (RFC 4422 §3.1); a longer "mechanism" in an
/// `AUTH` line may be a misplaced secret and is masked too.
const MECHANISM_NAME_MAX: usize = 20;

/// Which side of the connection wrote a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Written by the client: a command, an AUTH response, or a summary of
    /// message data.
    Client,
    /// Written by the server: one line of a reply.
    Server,
}

impl Direction {
    /// The conventional transcript prefix: `C:` or `S:`.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Client => "C:",
            Self::Server => "S:",
        }
    }
}

/// What a transcript line stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LineKind {
    /// A line as it went over the wire, without its CRLF, [escaped](escape),
    /// with AUTH secrets replaced by [`MASK`]. Never starts with `<`.
    Wire,
    /// A line written in place of data that is not shown, such as
    /// `<message body: 1234 octets>`. Always starts with `<`.
    Summary,
}

/// One line of the conversation, as a [`TranscriptHook`] receives it.
///
/// Its [`Display`](fmt::Display) form is `C: text` or `S: text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TranscriptLine<'a> {
    /// The session (server) or connection (client) the line belongs to, so
    /// lines of concurrent sessions can be told apart.
    pub session_id: &'a str,
    /// Who wrote it.
    pub direction: Direction,
    /// Whether `text` is wire text or a summary.
    pub kind: LineKind,
    /// The line: printable, never containing a CR or LF.
    pub text: &'a str,
}

impl<'a> TranscriptLine<'a> {
    /// A line; `text` must already be escaped (see [`escape`]).
    pub fn new(session_id: &'a str, direction: Direction, kind: LineKind, text: &'a str) -> Self {
        Self {
            session_id,
            direction,
            kind,
            text,
        }
    }
}

impl fmt::Display for TranscriptLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.direction.prefix(), self.text)
    }
}

/// The hook both the client and the server call with every transcript
/// line. Keep it short (print, or send to a channel).
pub type TranscriptHook = Arc<dyn Fn(&TranscriptLine<'_>) + Send + Sync + 'static>;

/// True for a line whose verb is `AUTH`, whether or not it parses.
pub fn is_auth_command(line: &[u8]) -> bool {
    line.get(..4)
        .is_some_and(|verb| verb.eq_ignore_ascii_case(b"AUTH"))
        && line.get(4).is_none_or(|&byte| byte == b' ')
}

/// `AUTH <mechanism> [<initial-response>]` (without CRLF) as a transcript
/// shows it: escaped, with the initial response replaced by [`MASK`]. A
/// mechanism that is not a plausible SASL name (RFC 4422 §3.1: up to 20
/// letters, digits, `-` and `_`) may be a misplaced secret and is masked
/// too.
///
/// ```
/// use smtp_proto::transcript::mask_auth_command;
/// assert_eq!(mask_auth_command(b"AUTH LOGIN"), "AUTH LOGIN");
/// assert_eq!(mask_auth_command(b"AUTH XOAUTH2 dXNlcj1h"), "AUTH XOAUTH2 ***");
/// ```
pub fn mask_auth_command(line: &[u8]) -> String {
    let verb_end = line.len().min(4);
    let mut text = escape(&line[..verb_end]);
    let mut rest = line[verb_end..].splitn(3, |&byte| byte == b' ').skip(1);
    if let Some(mechanism) = rest.next() {
        text.push(' ');
        let plausible = !mechanism.is_empty()
            && mechanism.len() <= MECHANISM_NAME_MAX
            && mechanism
                .iter()
                .all(|&byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if plausible {
            text.push_str(&escape(mechanism));
        } else {
            text.push_str(MASK);
            return text;
        }
    }
    if rest.next().is_some() {
        text.push(' ');
        text.push_str(MASK);
    }
    text
}

/// Escapes wire text so it is one printable line that cannot pass for a
/// summary line (see the [module documentation](self)).
///
/// ```
/// use smtp_proto::transcript::escape;
/// assert_eq!(escape(b"a\rb\x1b[2J"), "a\\rb\\x1b[2J");
/// assert_eq!(escape(b"<forged>"), "\\x3cforged>");
/// ```
pub fn escape(line: &[u8]) -> String {
    use std::fmt::Write;

    let mut text = String::with_capacity(line.len());
    for chunk in line.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\r' => text.push_str("\\r"),
                '\n' => text.push_str("\\n"),
                '\t' => text.push_str("\\t"),
                '\\' => text.push_str("\\\\"),
                '<' if text.is_empty() => text.push_str("\\x3c"),
                c if c.is_ascii_control() => {
                    let _ = write!(text, "\\x{:02x}", u32::from(c));
                }
                // C1 controls (NEL among them) and the Unicode line and
                // paragraph separators break lines in some viewers.
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                    let _ = write!(text, "\\u{{{:04x}}}", u32::from(c));
                }
                c => text.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(text, "\\x{byte:02x}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_makes_one_printable_line() {
        assert_eq!(escape(b"MAIL FROM:<a@b>"), "MAIL FROM:<a@b>");
        assert_eq!(escape(b"a\rb\nc\td\\e\0"), "a\\rb\\nc\\td\\\\e\\x00");
        assert_eq!(
            escape(b"<message body: 1 octets>"),
            "\\x3cmessage body: 1 octets>"
        );
        assert_eq!(escape(b"x\xffy"), "x\\xffy");
        assert_eq!(escape("é\u{85}\u{2028}".as_bytes()), "é\\u{0085}\\u{2028}");
        assert_eq!(escape(b"\x7f"), "\\x7f");
    }

    #[test]
    fn auth_lines_lose_their_payloads() {
        assert_eq!(
            mask_auth_command(b"AUTH PLAIN AGFsaWNlAHNlY3JldA=="),
            "AUTH PLAIN ***"
        );
        assert_eq!(mask_auth_command(b"auth login"), "auth login");
        assert_eq!(mask_auth_command(b"AUTH"), "AUTH");
        assert_eq!(mask_auth_command(b"AUTH PLAIN "), "AUTH PLAIN ***");
        assert_eq!(mask_auth_command(b"AUTH  secret"), "AUTH ***");
        assert_eq!(
            mask_auth_command(b"AUTH c2VjcmV0LXBhc3N3b3JkLXRva2Vu"),
            "AUTH ***"
        );
        assert_eq!(mask_auth_command(b"AUTH X/Y"), "AUTH ***");
        assert!(is_auth_command(b"AUTH"));
        assert!(is_auth_command(b"Auth PLAIN x"));
        assert!(!is_auth_command(b"AUTHX"));
        assert!(!is_auth_command(b"MAIL FROM:<a@b> AUTH=<>"));
    }

    #[test]
    fn lines_display_with_their_prefix() {
        let line = TranscriptLine::new("c1", Direction::Server, LineKind::Wire, "250 OK");
        assert_eq!(line.to_string(), "S: 250 OK");
        assert_eq!(Direction::Client.prefix(), "C:");
    }
}
