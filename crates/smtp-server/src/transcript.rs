//! The protocol transcript: one call per command line or reply line, for
//! applications that print or record the conversation.
//!
//! What reaches the hook is shaped for humans and logs, not for replay:
//! - client text is escaped so that one call is always one line: a CR, LF,
//!   other control character, `\` or invalid UTF-8 octet appears as an
//!   escape (`\r`, `\n`, `\t`, `\\`, `\xHH`, `\u{HHHH}`), and a leading `<`
//!   as `\x3c`, so client text can never pass for a summary line;
//! - message bodies are not shown: their end is reported as one
//!   [`LineKind::Summary`] line such as `<message body: 1234 octets>`;
//! - AUTH payloads never reach the hook (RFC 4954 responses carry
//!   passwords and tokens): the initial response of `AUTH <mechanism>
//!   <initial-response>` and every line answering a `334` challenge are
//!   replaced by [`MASK`](smtp_proto::transcript::MASK), and so is any
//!   unparsable line a client sends right after `AUTH` (a response
//!   pipelined blind behind a refused `AUTH`).
//!
//! The types and the masking rule live in [`smtp_proto::transcript`],
//! shared with smtp-client.

use std::fmt;
use std::panic::AssertUnwindSafe;

use bytes::{Bytes, BytesMut};
use smtp_proto::codec::{ServerCodec, ServerFrame};
use smtp_proto::command::CommandError;
use smtp_proto::limits;
pub use smtp_proto::transcript::{Direction, LineKind, TranscriptHook, TranscriptLine};
use smtp_proto::transcript::{MASK, escape, is_auth_command, mask_auth_command};
use tokio_util::codec::Decoder;

/// One connection's transcript state.
pub(crate) struct Transcript {
    hook: TranscriptHook,
    session_id: String,
    /// An `AUTH` line was the last command seen: unparsable lines after it
    /// are taken for misplaced AUTH responses and redacted.
    after_auth: bool,
    /// Octets of the BDAT chunk being read.
    chunk_octets: u64,
}

impl fmt::Debug for Transcript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transcript")
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

impl Transcript {
    pub(crate) fn new(hook: TranscriptHook, session_id: String) -> Self {
        Self {
            hook,
            session_id,
            after_auth: false,
            chunk_octets: 0,
        }
    }

    fn emit(&mut self, direction: Direction, kind: LineKind, text: &str) {
        let line = TranscriptLine::new(&self.session_id, direction, kind, text);
        // The transcript only observes: a panicking hook must not take the
        // session down with it.
        if std::panic::catch_unwind(AssertUnwindSafe(|| (self.hook)(&line))).is_err() {
            tracing::error!("transcript hook panicked");
        }
    }

    /// Reports encoded reply bytes, one call per line.
    pub(crate) fn server(&mut self, encoded: &[u8]) {
        for line in encoded.split(|&byte| byte == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.is_empty() {
                let text = escape(line);
                self.emit(Direction::Server, LineKind::Wire, &text);
            }
        }
    }

    /// Reports a line the library writes in place of client data.
    pub(crate) fn client_summary(&mut self, text: &str) {
        self.emit(Direction::Client, LineKind::Summary, text);
    }

    /// Reports what the client sent for `frame`; `line` is the raw line of
    /// a command or AUTH response, when the codec kept it.
    pub(crate) fn client(&mut self, frame: &ServerFrame, line: Option<&[u8]>) {
        let text = match frame {
            ServerFrame::AuthResponse(_) => MASK.to_owned(),
            ServerFrame::Command(Err(CommandError::LineTooLong)) => {
                return self.client_summary("<command line too long, discarded>");
            }
            ServerFrame::Command(result) => {
                let line = line.unwrap_or_default();
                if is_auth_command(line) {
                    self.after_auth = true;
                    mask_auth_command(line)
                } else if result.is_ok() {
                    self.after_auth = false;
                    escape(line)
                } else if self.after_auth {
                    MASK.to_owned()
                } else {
                    escape(line)
                }
            }
            ServerFrame::BodyChunk(chunk) => {
                self.chunk_octets = self.chunk_octets.saturating_add(chunk.len() as u64);
                return;
            }
            ServerFrame::DataEnd(summary) => {
                // DATA chunks are counted by the decoder's summary.
                self.chunk_octets = 0;
                return self.client_summary(&format!("<message body: {} octets>", summary.size));
            }
            ServerFrame::BdatEnd => {
                let octets = std::mem::take(&mut self.chunk_octets);
                return self.client_summary(&format!("<BDAT chunk: {octets} octets>"));
            }
        };
        self.emit(Direction::Client, LineKind::Wire, &text);
    }
}

/// The server codec, keeping a copy of each command or AUTH response line
/// when a transcript is wanted (the parsed command no longer holds the
/// text as the client wrote it).
#[derive(Debug)]
pub(crate) struct RecordingCodec {
    inner: ServerCodec,
    record: bool,
    /// Bytes at the start of the buffer known to hold no CRLF, so a line
    /// arriving in pieces is searched once.
    scanned: usize,
    line: Option<Bytes>,
}

impl RecordingCodec {
    pub(crate) fn new(max_line: usize, record: bool) -> Self {
        Self {
            inner: ServerCodec::new(max_line),
            record,
            scanned: 0,
            line: None,
        }
    }

    pub(crate) fn expect_data(&mut self, max_size: u64) {
        self.inner.expect_data(max_size);
        self.scanned = 0;
    }

    pub(crate) fn expect_bdat(&mut self, size: u64) {
        self.inner.expect_bdat(size);
        self.scanned = 0;
    }

    pub(crate) fn expect_auth_response(&mut self) {
        self.inner.expect_auth_response();
        self.scanned = 0;
    }

    /// The raw line (without CRLF) of the last command or AUTH response
    /// frame, if recording.
    pub(crate) fn take_line(&mut self) -> Option<Bytes> {
        self.line.take()
    }

    /// Copies the first line of `src`, if complete and within the largest
    /// line the codec accepts.
    fn peek_line(&mut self, src: &BytesMut) -> Option<Bytes> {
        let from = self.scanned.saturating_sub(1).min(src.len());
        match src[from..].windows(2).position(|pair| pair == b"\r\n") {
            Some(at) => {
                let end = from + at;
                self.scanned = 0;
                (end <= limits::SASL_LINE_MAX).then(|| Bytes::copy_from_slice(&src[..end]))
            }
            None => {
                self.scanned = src.len();
                None
            }
        }
    }
}

impl Decoder for RecordingCodec {
    type Item = ServerFrame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ServerFrame>, Self::Error> {
        if !self.record || self.inner.in_body() {
            return self.inner.decode(src);
        }
        let before = src.len();
        let line = self.peek_line(src);
        let frame = self.inner.decode(src)?;
        if src.len() != before {
            // The codec consumed or discarded: offsets moved.
            self.scanned = 0;
        }
        if matches!(
            frame,
            Some(ServerFrame::Command(_) | ServerFrame::AuthResponse(_))
        ) {
            self.line = line;
        }
        Ok(frame)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<ServerFrame>, Self::Error> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None => {
                src.clear();
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use smtp_proto::command::Command;

    use super::*;

    fn transcript() -> (Transcript, Arc<std::sync::Mutex<Vec<String>>>) {
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let hook: TranscriptHook = Arc::new(move |line: &TranscriptLine<'_>| {
            sink.lock().unwrap().push(line.to_string());
        });
        (Transcript::new(hook, "s1".to_owned()), lines)
    }

    #[test]
    fn lines_after_auth_that_are_not_commands_are_redacted() {
        let (mut transcript, lines) = transcript();
        let auth = Command::parse(b"AUTH LOGIN").unwrap();
        transcript.client(&ServerFrame::Command(Ok(auth)), Some(b"AUTH LOGIN"));
        let unknown = ServerFrame::Command(Err(CommandError::UnknownCommand));
        transcript.client(&unknown, Some(b"YWxpY2U="));
        transcript.client(&ServerFrame::Command(Ok(Command::Noop)), Some(b"NOOP"));
        transcript.client(&unknown, Some(b"HELLO"));
        assert_eq!(
            *lines.lock().unwrap(),
            ["C: AUTH LOGIN", "C: ***", "C: NOOP", "C: HELLO"]
        );
    }

    #[test]
    fn replies_are_split_into_lines() {
        let (mut transcript, lines) = transcript();
        transcript.server(b"250-mx.test\r\n250 PIPELINING\r\n");
        assert_eq!(
            *lines.lock().unwrap(),
            ["S: 250-mx.test", "S: 250 PIPELINING"]
        );
    }

    #[test]
    fn a_panicking_hook_is_contained() {
        let hook: TranscriptHook = Arc::new(|_: &TranscriptLine<'_>| panic!("hook"));
        let mut transcript = Transcript::new(hook, "s1".to_owned());
        transcript.server(b"220 ready\r\n");
    }

    #[test]
    fn the_codec_keeps_each_line_split_anywhere() {
        let input = b"EHLO a.test\r\nAUTH PLAIN\r\nAGEAYg==\r\nNOOP\r\n";
        for step in 1..input.len() {
            let mut codec = RecordingCodec::new(512, true);
            let mut buffer = BytesMut::new();
            let mut seen = Vec::new();
            for piece in input.chunks(step) {
                buffer.extend_from_slice(piece);
                while let Some(frame) = codec.decode(&mut buffer).unwrap() {
                    if matches!(frame, ServerFrame::Command(Ok(Command::Auth { .. }))) {
                        codec.expect_auth_response();
                    }
                    seen.push(codec.take_line().unwrap());
                }
            }
            assert_eq!(
                seen,
                ["EHLO a.test", "AUTH PLAIN", "AGEAYg==", "NOOP"],
                "{step}"
            );
        }
    }
}
