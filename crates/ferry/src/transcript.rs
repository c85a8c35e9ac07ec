//! `--transcript`: the SMTP conversation as `C:` and `S:` lines, with
//! authentication secrets masked.
//!
//! What is masked: the initial response of `AUTH <mechanism> <response>`
//! and every client line that answers a 334 challenge (RFC 4954 §4), since
//! those carry base64 user names, passwords or tokens. Message bodies are
//! not printed, only a note with their size, so the transcript stays
//! readable and bounded.

use std::fmt::Write as _;

/// The text that replaces a secret.
pub const MASK: &str = "********";

/// Tracks one conversation and formats its lines.
#[derive(Debug, Default, Clone)]
pub struct Transcript {
    /// True after a 334 reply: the next client line is a SASL response.
    in_sasl: bool,
}

impl Transcript {
    /// A transcript at the start of a conversation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Formats one client line (without CRLF) as `C: ...`, masking secrets.
    pub fn client(&mut self, line: &[u8]) -> String {
        let text = printable(line);
        if std::mem::take(&mut self.in_sasl) {
            return if text == "*" {
                "C: *".to_owned()
            } else {
                format!("C: {MASK}")
            };
        }
        let mut words = text.splitn(3, ' ');
        let verb = words.next().unwrap_or("");
        if verb.eq_ignore_ascii_case("AUTH")
            && let Some(mechanism) = words.next()
            && words.next().is_some()
        {
            return format!("C: {verb} {mechanism} {MASK}");
        }
        format!("C: {text}")
    }

    /// Formats the lines of one server reply as `S: ...` lines, as sent
    /// (code, enhanced code and text), and notes a 334 challenge so the
    /// next client line is masked.
    pub fn server(&mut self, reply: &smtp_proto::Reply) -> Vec<String> {
        self.in_sasl = reply.code() == 334;
        let mut bytes = bytes::BytesMut::new();
        reply.encode(&mut bytes);
        String::from_utf8_lossy(&bytes)
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| format!("S: {}", printable(l.as_bytes())))
            .collect()
    }

    /// The note printed in place of a message body.
    pub fn body(size: u64) -> String {
        format!("C: <{size} octets of message data>")
    }
}

/// The line with control bytes shown as `\xNN`, so a hostile peer cannot
/// rewrite the terminal.
fn printable(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_proto::{EnhancedCode, Reply};

    #[test]
    fn plain_commands_pass() {
        let mut t = Transcript::new();
        assert_eq!(t.client(b"EHLO client.example"), "C: EHLO client.example");
        assert_eq!(
            t.client(b"MAIL FROM:<a@example.com>"),
            "C: MAIL FROM:<a@example.com>"
        );
        assert_eq!(t.client(b"AUTH LOGIN"), "C: AUTH LOGIN");
    }

    #[test]
    fn auth_secrets_are_masked() {
        let mut t = Transcript::new();
        assert_eq!(
            t.client(b"AUTH PLAIN AGFsaWNlAHMzY3JldA=="),
            "C: AUTH PLAIN ********"
        );
        assert_eq!(t.client(b"auth plain AGFsaWNl"), "C: auth plain ********");
        // LOGIN: both answers to 334 are masked, the 235 ends masking.
        assert_eq!(t.client(b"AUTH LOGIN"), "C: AUTH LOGIN");
        t.server(&Reply::plain(334, "VXNlcm5hbWU6"));
        assert_eq!(t.client(b"YWxpY2U="), "C: ********");
        t.server(&Reply::plain(334, "UGFzc3dvcmQ6"));
        assert_eq!(t.client(b"czNjcmV0"), "C: ********");
        t.server(&Reply::new(235, EnhancedCode::new(2, 7, 0), "ok"));
        assert_eq!(t.client(b"MAIL FROM:<a@b>"), "C: MAIL FROM:<a@b>");
        // A cancelled exchange shows the `*`.
        t.server(&Reply::plain(334, ""));
        assert_eq!(t.client(b"*"), "C: *");
    }

    #[test]
    fn server_lines_and_control_bytes() {
        let mut t = Transcript::new();
        let reply = Reply::with_lines(250, None, vec!["mx.example", "PIPELINING"]);
        assert_eq!(
            t.server(&reply),
            vec!["S: 250-mx.example", "S: 250 PIPELINING"]
        );
        let reply = Reply::new(550, EnhancedCode::new(5, 1, 1), "no such user");
        assert_eq!(t.server(&reply), vec!["S: 550 5.1.1 no such user"]);
        assert_eq!(t.client(b"NOOP \x1b[2J"), "C: NOOP \\x1b[2J");
        assert_eq!(Transcript::body(42), "C: <42 octets of message data>");
    }
}
