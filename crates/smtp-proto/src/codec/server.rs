//! The server side of a connection: reads commands, AUTH responses and
//! message bodies, writes replies.

use std::io;

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::Reply;
use crate::body::{BdatDecoder, BdatEvent, BodyEvent, BodySummary, DataDecoder};
use crate::command::{Command, CommandError, CommandRef};
use crate::limits;
use crate::sasl::{self, SaslError};

/// One thing read from the client.
///
/// Protocol errors are values (`Command(Err(..))`, `AuthResponse(Err(..))`)
/// that the server answers with [`CommandError::reply`] or
/// [`SaslError::reply`]; the connection stays framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// A command line, or why it could not be read as one.
    Command(Result<Command, CommandError>),
    /// The client's answer to a `334` AUTH challenge, base64-decoded.
    AuthResponse(Result<Vec<u8>, SaslError>),
    /// A piece of the message body (after dot-unstuffing for DATA), in the
    /// order received. Never more than the size limit in total.
    BodyChunk(bytes::Bytes),
    /// `<CRLF>.<CRLF>` ended the DATA body; what the decoder saw in it.
    DataEnd(BodySummary),
    /// The last octet of the current BDAT chunk was read.
    BdatEnd,
}

#[derive(Debug)]
enum Mode {
    Command,
    AuthResponse,
    Data(DataDecoder),
    Bdat(BdatDecoder),
}

/// Frames the server side of an SMTP connection.
///
/// The codec starts in command mode. The server switches it with
/// [`expect_data`](Self::expect_data) after sending `354`,
/// [`expect_bdat`](Self::expect_bdat) after reading `BDAT n` and
/// [`expect_auth_response`](Self::expect_auth_response) after sending `334`;
/// it returns to command mode by itself after [`ServerFrame::DataEnd`],
/// [`ServerFrame::BdatEnd`] or [`ServerFrame::AuthResponse`]. Since
/// `Framed` decodes only when polled, a switch made before the next poll
/// applies to the bytes already buffered, which is what pipelining needs.
///
/// Only `<CRLF>` ends a line (RFC 5321 §2.3.8). A bare CR or LF stays inside
/// the line and makes it [`CommandError::BareLineEnding`]. An `AUTH` command
/// line may be [`AUTH_COMMAND_LINE_MAX`] long whatever the command-line
/// limit, for its initial response (RFC 4954 §4). A line longer
/// than the limit is discarded up to its `<CRLF>` and reported once as
/// [`CommandError::LineTooLong`], so memory stays bounded whatever the
/// client sends.
///
/// ```
/// use bytes::BytesMut;
/// use smtp_proto::codec::{ServerCodec, ServerFrame};
/// use smtp_proto::command::Command;
/// use tokio_util::codec::Decoder;
///
/// let mut codec = ServerCodec::new(512);
/// let mut input = BytesMut::from(&b"NOOP\r\nQUIT\r\n"[..]);
/// assert_eq!(codec.decode(&mut input).unwrap(), Some(ServerFrame::Command(Ok(Command::Noop))));
/// assert_eq!(codec.decode(&mut input).unwrap(), Some(ServerFrame::Command(Ok(Command::Quit))));
/// assert_eq!(codec.decode(&mut input).unwrap(), None);
/// ```
#[derive(Debug)]
pub struct ServerCodec {
    mode: Mode,
    max_line: usize,
    /// Bytes of the buffer already searched for a line end, so a slow
    /// client sending a long line byte by byte costs linear time.
    scanned: usize,
    /// Set while dropping the rest of a line that passed the limit.
    discarding: bool,
}

impl ServerCodec {
    /// A codec in command mode whose command lines may be `max_line` octets
    /// long, `<CRLF>` included. The limit never goes below RFC 5321
    /// §4.5.3.1.4's 512 octets ([`limits::COMMAND_LINE_MIN`]).
    pub fn new(max_line: usize) -> Self {
        Self {
            mode: Mode::Command,
            max_line: max_line.max(limits::COMMAND_LINE_MIN),
            scanned: 0,
            discarding: false,
        }
    }

    /// Reads command lines next (the default).
    pub fn expect_command(&mut self) {
        self.mode = Mode::Command;
        self.scanned = 0;
        self.discarding = false;
    }

    /// Reads a DATA body next, yielding at most `max_size` octets of it.
    pub fn expect_data(&mut self, max_size: u64) {
        self.mode = Mode::Data(DataDecoder::new(max_size));
        self.scanned = 0;
        self.discarding = false;
    }

    /// Reads exactly `size` octets of a BDAT chunk next (RFC 3030 §2).
    pub fn expect_bdat(&mut self, size: u64) {
        self.mode = Mode::Bdat(BdatDecoder::new(size));
        self.scanned = 0;
        self.discarding = false;
    }

    /// Reads one AUTH response line next (RFC 4954 §4), up to
    /// [`limits::SASL_LINE_MAX`] octets.
    pub fn expect_auth_response(&mut self) {
        self.mode = Mode::AuthResponse;
        self.scanned = 0;
        self.discarding = false;
    }

    /// True while the codec reads a message body (DATA or BDAT).
    pub fn in_body(&self) -> bool {
        matches!(self.mode, Mode::Data(_) | Mode::Bdat(_))
    }

    /// Reads the next command line and hands it to `f` parsed by
    /// [`CommandRef::parse`], borrowed from the buffer: the zero-copy form
    /// of `decode` in command mode, with the same framing (the line limit,
    /// the longer `AUTH` line, a too-long line dropped and reported once as
    /// [`CommandError::LineTooLong`]). The line is consumed when `f`
    /// returns.
    ///
    /// `None` when no whole line is buffered yet, or when the codec is not
    /// in command mode (then `src` is untouched: read bodies and AUTH
    /// responses with `decode`).
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use smtp_proto::codec::ServerCodec;
    /// use smtp_proto::command::CommandRef;
    ///
    /// let mut codec = ServerCodec::new(512);
    /// let mut input = BytesMut::from(&b"RCPT TO:<b@example.net>\r\nQUIT\r\n"[..]);
    /// let domain = codec.decode_command(&mut input, |command| match command {
    ///     Ok(CommandRef::Rcpt { to, .. }) => to.domain().map(str::to_owned),
    ///     _ => None,
    /// });
    /// assert_eq!(domain, Some(Some("example.net".to_owned())));
    /// assert_eq!(&input[..], b"QUIT\r\n");
    /// ```
    pub fn decode_command<T>(
        &mut self,
        src: &mut BytesMut,
        f: impl FnOnce(Result<CommandRef<'_>, CommandError>) -> T,
    ) -> Option<T> {
        if !matches!(self.mode, Mode::Command) {
            return None;
        }
        // The line starts at the front of the buffer (unless a too-long
        // line is being dropped, when the limit no longer matters).
        let max = if is_auth_line(src) {
            self.max_line.max(AUTH_COMMAND_LINE_MAX)
        } else {
            self.max_line
        };
        let mut f = Some(f);
        match self.next_line(src, max, |line| {
            f.take().map(|f| f(CommandRef::parse(line)))
        })? {
            Ok(parsed) => parsed,
            Err(()) => f.take().map(|f| f(Err(CommandError::LineTooLong))),
        }
    }

    /// Finds the next `<CRLF>`-terminated line of at most `max` octets.
    ///
    /// `Some(Ok(f(line)))` is `f` applied to the line without its `<CRLF>`;
    /// `Some(Err(()))` says a line passed the limit and has now been
    /// dropped whole.
    ///
    /// The line is handed to `f` in place, so reading a command costs no
    /// buffer split.
    fn next_line<T>(
        &mut self,
        src: &mut BytesMut,
        max: usize,
        f: impl FnOnce(&[u8]) -> T,
    ) -> Option<Result<T, ()>> {
        {
            // Resume one byte early: a CR at the end of the last read may
            // pair with an LF at the start of this one.
            let from = self.scanned.saturating_sub(1);
            let found = find_crlf(&src[from..]).map(|at| from + at);
            match found {
                Some(cr) => {
                    self.scanned = 0;
                    if self.discarding || cr + 2 > max {
                        src.advance(cr + 2);
                        self.discarding = false;
                        return Some(Err(()));
                    }
                    let line = f(&src[..cr]);
                    src.advance(cr + 2);
                    Some(Ok(line))
                }
                None if self.discarding || src.len() > max => {
                    // Too long: keep only a trailing CR that may start the
                    // line end, drop the rest.
                    self.discarding = true;
                    let keep = usize::from(src.last() == Some(&b'\r'));
                    let drop = src.len() - keep;
                    let _ = src.split_to(drop);
                    self.scanned = src.len();
                    None
                }
                None => {
                    self.scanned = src.len();
                    None
                }
            }
        }
    }
}

/// Longest `AUTH` command line, `<CRLF>` included: RFC 4954 §4 lets the
/// initial response be as long as any SASL response
/// ([`limits::SASL_LINE_MAX`], 12288 octets), plus room for `AUTH`, a
/// mechanism name (at most 20 characters, RFC 4422 §3.1) and the spaces.
pub const AUTH_COMMAND_LINE_MAX: usize = limits::SASL_LINE_MAX + 32;

/// Whether a command line starts with `AUTH ` (any case): such a line may
/// be [`AUTH_COMMAND_LINE_MAX`] long. Fewer than five octets are not yet
/// an `AUTH` line; the ordinary limit is far above that.
fn is_auth_line(line: &[u8]) -> bool {
    line.len() >= 5 && line[..4].eq_ignore_ascii_case(b"AUTH") && line[4] == b' '
}

/// Position of the first `<CRLF>` in `haystack`. Jumps from LF to LF,
/// which is cheaper for short lines than building a substring searcher.
fn find_crlf(haystack: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = memchr::memchr(b'\n', &haystack[from..]) {
        let lf = from + at;
        if lf > 0 && haystack[lf - 1] == b'\r' {
            return Some(lf - 1);
        }
        from = lf + 1;
    }
    None
}

impl Decoder for ServerCodec {
    type Item = ServerFrame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ServerFrame>, io::Error> {
        let frame = match &mut self.mode {
            Mode::Command => self
                .decode_command(src, |command| command.map(|command| command.to_command()))
                .map(ServerFrame::Command),
            Mode::AuthResponse => {
                let frame = self
                    .next_line(src, limits::SASL_LINE_MAX, sasl::decode_response)
                    .map(|line| {
                        ServerFrame::AuthResponse(match line {
                            Ok(response) => response,
                            Err(()) => Err(SaslError::TooLong),
                        })
                    });
                if frame.is_some() {
                    self.expect_command();
                }
                frame
            }
            Mode::Data(decoder) => match decoder.decode(src) {
                Some(BodyEvent::Chunk(chunk)) => Some(ServerFrame::BodyChunk(chunk)),
                Some(BodyEvent::End(summary)) => {
                    self.expect_command();
                    Some(ServerFrame::DataEnd(summary))
                }
                None => None,
            },
            Mode::Bdat(decoder) => match decoder.decode(src) {
                Some(BdatEvent::Chunk(chunk)) => Some(ServerFrame::BodyChunk(chunk)),
                Some(BdatEvent::End) => {
                    self.expect_command();
                    Some(ServerFrame::BdatEnd)
                }
                None => None,
            },
        };
        Ok(frame)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<ServerFrame>, io::Error> {
        // An unfinished line or body at end of stream is not a frame: the
        // server sees the stream end without DataEnd and discards the
        // transaction.
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None => {
                src.clear();
                Ok(None)
            }
        }
    }
}

impl Encoder<Reply> for ServerCodec {
    type Error = io::Error;

    fn encode(&mut self, reply: Reply, dst: &mut BytesMut) -> Result<(), io::Error> {
        reply.encode(dst);
        Ok(())
    }
}

impl Encoder<&Reply> for ServerCodec {
    type Error = io::Error;

    fn encode(&mut self, reply: &Reply, dst: &mut BytesMut) -> Result<(), io::Error> {
        reply.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, CommandError};

    /// Decodes `input` fed in pieces of `step` octets, switching modes the
    /// way a server does: DATA → body, BDAT n → chunk, AUTH → response.
    fn frames_fed_by(input: &[u8], step: usize) -> Vec<ServerFrame> {
        let mut codec = ServerCodec::new(512);
        let mut buffer = BytesMut::new();
        let mut frames = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buffer.extend_from_slice(piece);
            while let Some(frame) = codec.decode(&mut buffer).unwrap() {
                match &frame {
                    ServerFrame::Command(Ok(Command::Data)) => codec.expect_data(1 << 20),
                    ServerFrame::Command(Ok(Command::Bdat { size, .. })) => {
                        codec.expect_bdat(*size)
                    }
                    ServerFrame::Command(Ok(Command::Auth {
                        initial_response: None,
                        ..
                    })) => codec.expect_auth_response(),
                    _ => {}
                }
                frames.push(frame);
            }
        }
        merge_chunks(frames)
    }

    /// Joins adjacent body chunks, whose boundaries depend on how the input
    /// was split.
    fn merge_chunks(frames: Vec<ServerFrame>) -> Vec<ServerFrame> {
        let mut merged: Vec<ServerFrame> = Vec::new();
        for frame in frames {
            if let (Some(ServerFrame::BodyChunk(last)), ServerFrame::BodyChunk(next)) =
                (merged.last_mut(), &frame)
            {
                let mut joined = BytesMut::from(&last[..]);
                joined.extend_from_slice(next);
                *last = joined.freeze();
                continue;
            }
            merged.push(frame);
        }
        merged
    }

    const SESSION: &[u8] =
        b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n\
DATA\r\nSubject: hi\r\n\r\n..dot\r\nbody\r\n.\r\nBDAT 5 LAST\r\nhello\
AUTH PLAIN\r\nAGEAYg==\r\nNOOP\r\nQUIT\r\n";

    #[test]
    fn a_pipelined_session_decodes_the_same_whatever_the_split() {
        let whole = frames_fed_by(SESSION, SESSION.len());
        assert_eq!(whole.len(), 13, "{whole:#?}");
        assert_eq!(
            whole[4],
            ServerFrame::BodyChunk(bytes::Bytes::from_static(
                b"Subject: hi\r\n\r\n.dot\r\nbody\r\n"
            ))
        );
        assert!(matches!(whole[5], ServerFrame::DataEnd(_)));
        assert_eq!(
            whole[7],
            ServerFrame::BodyChunk(bytes::Bytes::from_static(b"hello"))
        );
        assert_eq!(whole[8], ServerFrame::BdatEnd);
        assert_eq!(whole[10], ServerFrame::AuthResponse(Ok(b"\0a\0b".to_vec())));
        assert_eq!(whole[12], ServerFrame::Command(Ok(Command::Quit)));
        for step in 1..SESSION.len() {
            assert_eq!(
                frames_fed_by(SESSION, step),
                whole,
                "split every {step} octets"
            );
        }
    }

    /// Command lines that exercise every borrowed field and every framing
    /// error: xtext with and without escapes, a UTF-8 address, a bare LF,
    /// a line over the limit, an `AUTH` line over it but within its own.
    fn command_stream() -> Vec<u8> {
        let mut input = Vec::new();
        input.extend_from_slice(b"EHLO client.example\r\n");
        input.extend_from_slice(
            b"MAIL FROM:<s\xc3\xa9@example.org> SMTPUTF8 ENVID=a+2Bb AUTH=<> SIZE=10\r\n",
        );
        input.extend_from_slice(
            b"RCPT TO:<b@example.net> NOTIFY=SUCCESS ORCPT=rfc822;b@example.net\r\n",
        );
        input.extend_from_slice(b"RCPT TO:<Postmaster> ORCPT=rfc822;c+2Bd@example.net\r\n");
        input.extend_from_slice(b"RCPT TO:<bare\nlf@example.net>\r\n");
        input.extend_from_slice(b"VRFY ");
        input.extend_from_slice(&[b'x'; 600]);
        input.extend_from_slice(b"\r\nauth plain ");
        input.extend_from_slice(&[b'A'; 700]);
        input.extend_from_slice(b"\r\nHELP topic\r\nBDAT 0 LAST\r\nFROB\r\nQUIT\r\n");
        input
    }

    /// Reads `pieces` with `decode` or with `decode_command`, the borrowed
    /// commands copied out with `to_command`.
    fn commands_of(pieces: &[&[u8]], borrowed: bool) -> Vec<Result<Command, CommandError>> {
        let mut codec = ServerCodec::new(512);
        let mut buffer = BytesMut::new();
        let mut commands = Vec::new();
        for piece in pieces {
            buffer.extend_from_slice(piece);
            loop {
                let command = if borrowed {
                    codec.decode_command(&mut buffer, |command| command.map(|c| c.to_command()))
                } else {
                    match codec.decode(&mut buffer).unwrap() {
                        Some(ServerFrame::Command(command)) => Some(command),
                        Some(other) => panic!("not a command: {other:?}"),
                        None => None,
                    }
                };
                match command {
                    Some(command) => commands.push(command),
                    None => break,
                }
            }
        }
        commands
    }

    #[test]
    fn borrowed_commands_equal_owned_ones_whatever_the_split() {
        let input = command_stream();
        let owned = commands_of(&[&input], false);
        assert_eq!(owned.len(), 11, "{owned:#?}");
        assert_eq!(owned[4], Err(CommandError::BareLineEnding));
        assert_eq!(owned[5], Err(CommandError::LineTooLong));
        assert!(matches!(owned[6], Ok(Command::Auth { .. })));
        for at in 0..=input.len() {
            let pieces = [&input[..at], &input[at..]];
            assert_eq!(commands_of(&pieces, true), owned, "split at {at}");
            assert_eq!(commands_of(&pieces, false), owned, "split at {at}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(commands_of(&bytes, true), owned, "byte by byte");
    }

    #[test]
    fn borrowed_commands_point_into_the_buffer() {
        use crate::command::CommandRef;
        use std::borrow::Cow;
        let mut codec = ServerCodec::new(512);
        let mut buffer = BytesMut::from(
            &b"RCPT TO:<b@example.net> ORCPT=rfc822;b@example.net\r\nRCPT TO:<c@example.net> ORCPT=rfc822;c+2Bd@example.net\r\n"[..],
        );
        let range = buffer.as_ptr_range();
        let inside = |text: &str| range.contains(&text.as_ptr());
        let first = codec.decode_command(&mut buffer, |command| {
            let Ok(CommandRef::Rcpt { to, params }) = command else {
                return false;
            };
            let orcpt = params.orcpt.unwrap();
            inside(to.as_str())
                && inside(orcpt.addr_type)
                && matches!(orcpt.address, Cow::Borrowed(address) if inside(address))
        });
        assert_eq!(first, Some(true));
        // An xtext escape is decoded into an owned string.
        let second = codec.decode_command(&mut buffer, |command| {
            let Ok(CommandRef::Rcpt { params, .. }) = command else {
                return None;
            };
            match params.orcpt.unwrap().address {
                Cow::Owned(address) => Some(address),
                Cow::Borrowed(_) => None,
            }
        });
        assert_eq!(second, Some(Some("c+d@example.net".to_owned())));
        assert!(buffer.is_empty());
    }

    #[test]
    fn decode_command_leaves_bodies_to_decode() {
        let mut codec = ServerCodec::new(512);
        codec.expect_data(1024);
        let mut buffer = BytesMut::from(&b"NOOP\r\n.\r\n"[..]);
        assert_eq!(codec.decode_command(&mut buffer, |_| ()), None);
        assert_eq!(&buffer[..], b"NOOP\r\n.\r\n");
    }

    #[test]
    fn only_crlf_ends_a_command_line() {
        for input in [
            &b"NOOP\nQUIT\r\n"[..],
            b"NOOP\rQUIT\r\n",
            b"NOOP\r\rQUIT\r\n",
        ] {
            let frames = frames_fed_by(input, input.len());
            assert_eq!(
                frames,
                vec![ServerFrame::Command(Err(CommandError::BareLineEnding))],
                "{input:?}"
            );
        }
        let frames = frames_fed_by(b"NOOP\r", 5);
        assert!(frames.is_empty());
    }

    #[test]
    fn a_long_line_is_reported_once_and_memory_stays_bounded() {
        let mut codec = ServerCodec::new(512);
        let mut buffer = BytesMut::new();
        for _ in 0..100 {
            buffer.extend_from_slice(&[b'A'; 1000]);
            assert_eq!(codec.decode(&mut buffer).unwrap(), None);
            assert!(buffer.len() <= 1, "buffer holds {} octets", buffer.len());
        }
        buffer.extend_from_slice(b"\r");
        assert_eq!(codec.decode(&mut buffer).unwrap(), None);
        buffer.extend_from_slice(b"\nNOOP\r\n");
        assert_eq!(
            codec.decode(&mut buffer).unwrap(),
            Some(ServerFrame::Command(Err(CommandError::LineTooLong)))
        );
        assert_eq!(
            codec.decode(&mut buffer).unwrap(),
            Some(ServerFrame::Command(Ok(Command::Noop)))
        );
    }

    #[test]
    fn auth_lines_may_carry_a_sasl_sized_initial_response() {
        // RFC 4954 §4: the initial response may be as long as any response.
        let mut codec = ServerCodec::new(512);
        let response = "A".repeat(limits::SASL_LINE_MAX);
        let mut buffer = BytesMut::from(format!("auth PLAIN {response}\r\n").as_bytes());
        match codec.decode(&mut buffer).unwrap() {
            Some(ServerFrame::Command(Ok(Command::Auth {
                initial_response, ..
            }))) => assert_eq!(initial_response.as_deref(), Some(response.as_str())),
            other => panic!("{other:?}"),
        }
        // Past the AUTH limit, and any other command past its own.
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(b"AUTH PLAIN ");
        buffer.extend_from_slice(&[b'A'; AUTH_COMMAND_LINE_MAX]);
        buffer.extend_from_slice(b"\r\nNOOP ");
        buffer.extend_from_slice(&[b'x'; 600]);
        buffer.extend_from_slice(b"\r\n");
        for _ in 0..2 {
            assert_eq!(
                codec.decode(&mut buffer).unwrap(),
                Some(ServerFrame::Command(Err(CommandError::LineTooLong)))
            );
        }
    }

    #[test]
    fn the_line_limit_counts_the_crlf() {
        let mut codec = ServerCodec::new(512);
        let mut exact = BytesMut::from(&b"NOOP "[..]);
        exact.extend_from_slice(&[b'x'; 505]);
        exact.extend_from_slice(b"\r\n");
        assert_eq!(exact.len(), 512);
        assert!(matches!(
            codec.decode(&mut exact).unwrap(),
            Some(ServerFrame::Command(Ok(_)))
        ));
        let mut over = BytesMut::from(&b"NOOP "[..]);
        over.extend_from_slice(&[b'x'; 506]);
        over.extend_from_slice(b"\r\n");
        assert_eq!(
            codec.decode(&mut over).unwrap(),
            Some(ServerFrame::Command(Err(CommandError::LineTooLong)))
        );
    }

    #[test]
    fn a_limit_below_the_rfc_floor_is_raised() {
        let mut codec = ServerCodec::new(10);
        let mut line = BytesMut::from(&b"MAIL FROM:<someone@example.com>\r\n"[..]);
        assert!(matches!(
            codec.decode(&mut line).unwrap(),
            Some(ServerFrame::Command(Ok(Command::Mail { .. })))
        ));
    }

    #[test]
    fn an_auth_response_returns_to_command_mode() {
        let frames = frames_fed_by(b"AUTH LOGIN\r\n*\r\nNOOP\r\n", 3);
        assert_eq!(
            frames[1],
            ServerFrame::AuthResponse(Err(SaslError::Cancelled))
        );
        assert_eq!(frames[2], ServerFrame::Command(Ok(Command::Noop)));
    }

    #[test]
    fn an_unfinished_body_at_end_of_stream_is_not_a_frame() {
        let mut codec = ServerCodec::new(512);
        codec.expect_data(100);
        let mut buffer = BytesMut::from(&b"half a message\r\n."[..]);
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode_eof(&mut buffer).unwrap() {
            frames.push(frame);
        }
        assert!(
            !frames
                .iter()
                .any(|frame| matches!(frame, ServerFrame::DataEnd(_)))
        );
    }

    #[test]
    fn replies_are_encoded() {
        let mut codec = ServerCodec::new(512);
        let mut out = BytesMut::new();
        codec.encode(Reply::plain(221, "Bye"), &mut out).unwrap();
        assert_eq!(&out[..], b"221 Bye\r\n");
    }
}
