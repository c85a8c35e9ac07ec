//! The client side of a connection: reads replies, writes commands and
//! body bytes.

use std::{fmt, io};

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::Reply;
use crate::command::{Command, EncodeError};
use crate::reply::{EhloReply, ReplyDecoder, ReplyError};

/// Frames the client side of an SMTP connection.
///
/// Replies are read with a [`ReplyDecoder`] whose caps on line length and
/// line count keep memory bounded against a hostile server. Commands are
/// written with [`Command::encode`], which refuses CR, LF and NUL in any
/// argument; body bytes (already dot-stuffed by
/// [`DataEncoder`](crate::body::DataEncoder)) are written as they are.
///
/// ```
/// use bytes::BytesMut;
/// use smtp_proto::codec::ClientCodec;
/// use tokio_util::codec::Decoder;
///
/// let mut codec = ClientCodec::new();
/// let mut input = BytesMut::from(&b"220 mx.example.com ready\r\n"[..]);
/// let greeting = codec.decode(&mut input).unwrap().unwrap();
/// assert_eq!(greeting.code(), 220);
/// ```
#[derive(Debug, Default)]
pub struct ClientCodec {
    replies: ReplyDecoder,
}

impl ClientCodec {
    /// A codec with the default reply caps
    /// ([`DEFAULT_CLIENT_REPLY_LINE_MAX`](crate::limits::DEFAULT_CLIENT_REPLY_LINE_MAX)
    /// octets a line,
    /// [`DEFAULT_CLIENT_REPLY_LINES_MAX`](crate::limits::DEFAULT_CLIENT_REPLY_LINES_MAX)
    /// lines a reply).
    pub fn new() -> Self {
        Self {
            replies: ReplyDecoder::new(),
        }
    }

    /// Decodes the reply to EHLO: a 250 reply straight into
    /// [`Capabilities`](crate::ehlo::Capabilities), any other as a
    /// [`Reply`] (see [`ReplyDecoder::decode_ehlo`]).
    pub fn decode_ehlo(
        &mut self,
        src: &mut BytesMut,
    ) -> Result<Option<EhloReply>, ClientCodecError> {
        Ok(self.replies.decode_ehlo(src)?)
    }

    /// A codec with the given caps on reply line length and line count.
    pub fn with_limits(max_line: usize, max_lines: usize) -> Self {
        Self {
            replies: ReplyDecoder::with_limits(max_line, max_lines),
        }
    }
}

/// Why the client side of a connection cannot go on.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientCodecError {
    /// Reading or writing the connection failed.
    Io(io::Error),
    /// The server sent something that is not a well-formed reply, or one
    /// over the caps; framing is lost and the connection must be closed.
    Reply(ReplyError),
    /// A command could not be written (for example an argument held CR,
    /// LF or NUL); nothing of it was sent.
    Encode(EncodeError),
}

impl fmt::Display for ClientCodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(error) => write!(f, "connection error: {error}"),
            Self::Reply(error) => write!(f, "malformed reply from the server: {error}"),
            Self::Encode(error) => write!(f, "cannot send command: {error}"),
        }
    }
}

impl std::error::Error for ClientCodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(error) => Some(error),
            Self::Reply(error) => Some(error),
            Self::Encode(error) => Some(error),
        }
    }
}

impl From<io::Error> for ClientCodecError {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

impl From<ReplyError> for ClientCodecError {
    fn from(error: ReplyError) -> Self {
        Self::Reply(error)
    }
}

impl From<EncodeError> for ClientCodecError {
    fn from(error: EncodeError) -> Self {
        Self::Encode(error)
    }
}

impl Decoder for ClientCodec {
    type Item = Reply;
    type Error = ClientCodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, ClientCodecError> {
        Ok(self.replies.decode(src)?)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, ClientCodecError> {
        match self.decode(src)? {
            Some(reply) => Ok(Some(reply)),
            None if src.is_empty() && !self.replies.is_partial() => Ok(None),
            None => Err(ClientCodecError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a reply",
            ))),
        }
    }
}

impl Encoder<&Command> for ClientCodec {
    type Error = ClientCodecError;

    fn encode(&mut self, command: &Command, dst: &mut BytesMut) -> Result<(), ClientCodecError> {
        // Encode into a scratch buffer first so a refused command leaves
        // nothing half-written in the output.
        let mut line = BytesMut::new();
        command.encode(&mut line)?;
        dst.extend_from_slice(&line);
        Ok(())
    }
}

impl Encoder<Bytes> for ClientCodec {
    type Error = ClientCodecError;

    fn encode(&mut self, bytes: Bytes, dst: &mut BytesMut) -> Result<(), ClientCodecError> {
        dst.extend_from_slice(&bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Address;
    use crate::command::MailParameters;

    #[test]
    fn replies_split_anywhere_decode_the_same() {
        let input = b"250-mx.example.com\r\n250-PIPELINING\r\n250 SIZE 1000\r\n354 go ahead\r\n";
        for step in 1..input.len() {
            let mut codec = ClientCodec::new();
            let mut buffer = BytesMut::new();
            let mut codes = Vec::new();
            for piece in input.chunks(step) {
                buffer.extend_from_slice(piece);
                while let Some(reply) = codec.decode(&mut buffer).unwrap() {
                    codes.push((reply.code(), reply.lines().len()));
                }
            }
            assert_eq!(codes, vec![(250, 3), (354, 1)], "split every {step}");
        }
    }

    #[test]
    fn a_connection_closed_mid_reply_is_an_error() {
        for partial in [&b"250-first\r\n"[..], b"250 no end"] {
            let mut codec = ClientCodec::new();
            let mut buffer = BytesMut::from(partial);
            assert!(codec.decode(&mut buffer).unwrap().is_none());
            assert!(
                matches!(codec.decode_eof(&mut buffer), Err(ClientCodecError::Io(_))),
                "{partial:?}"
            );
        }
    }

    #[test]
    fn a_refused_command_writes_nothing() {
        let mut codec = ClientCodec::new();
        let mut out = BytesMut::from(&b"pending"[..]);
        let command = Command::Helo {
            domain: "evil\r\nRCPT TO:<x@y>".to_owned(),
        };
        assert!(matches!(
            codec.encode(&command, &mut out),
            Err(ClientCodecError::Encode(_))
        ));
        assert_eq!(&out[..], b"pending");
        let mail = Command::Mail {
            from: Some(Address::parse("a@example.com", false).unwrap()),
            params: MailParameters::default(),
        };
        codec.encode(&mail, &mut out).unwrap();
        assert_eq!(&out[..], b"pendingMAIL FROM:<a@example.com>\r\n");
    }

    #[test]
    fn an_over_long_reply_line_is_an_error() {
        let mut codec = ClientCodec::with_limits(512, 10);
        let mut buffer = BytesMut::from(&[b'2'; 600][..]);
        assert!(matches!(
            codec.decode(&mut buffer),
            Err(ClientCodecError::Reply(ReplyError::LineTooLong))
        ));
    }
}
