//! The message to send: bytes in memory, or an async reader or stream that
//! is sent as it is read, never collected whole.

use std::fmt;
use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use smtp_proto::command::BodyType;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A message (RFC 5322 header and body) to send.
///
/// Line endings need not be CRLF: a bare LF or CR is sent as CRLF, and
/// lines starting with `.` are dot-stuffed (RFC 5321 §4.5.2), both on the
/// fly. A body declared [`BodyType::BinaryMime`] is sent unchanged.
///
/// ```
/// use smtp_client::Message;
/// let message = Message::from("Subject: hi\n\nHello\n");
/// // 19 octets, three of them bare LFs sent as CRLF.
/// assert_eq!(message.len(), Some(22));
/// ```
pub struct Message {
    source: Source,
    body_type: Option<BodyType>,
    size: Option<u64>,
    started: bool,
}

enum Source {
    Bytes(Bytes),
    Reader(Pin<Box<dyn AsyncRead + Send>>),
    Stream {
        stream: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
        /// The part of the last item not handed out yet.
        pending: Bytes,
    },
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Bytes(bytes) => format!("{} octets", bytes.len()),
            Source::Reader(_) => "reader".to_owned(),
            Source::Stream { .. } => "stream".to_owned(),
        };
        f.debug_struct("Message")
            .field("source", &source)
            .field("body_type", &self.body_type)
            .field("size", &self.size)
            .finish()
    }
}

/// The size of `bytes` once every bare CR and bare LF is a CRLF and the
/// last line ends with one, as `DataEncoder` sends it.
fn normalized_size(bytes: &[u8]) -> u64 {
    let Some((&first, _)) = bytes.split_first() else {
        return 0;
    };
    let last = bytes[bytes.len() - 1];
    // Each bare CR and each bare LF gains one octet. Every pair of
    // neighbours is looked at once: a CR not followed by LF, an LF not
    // preceded by CR. Counted in runs of 127 pairs with an 8-bit sum (at
    // most 254), which the compiler turns into vector code; a memchr call
    // per line ending cost five times as much on 80-octet lines.
    let mut extra = u64::from(first == b'\n') + u64::from(last == b'\r');
    let (heads, tails) = (&bytes[..bytes.len() - 1], &bytes[1..]);
    for (heads, tails) in heads.chunks(127).zip(tails.chunks(127)) {
        let mut run: u8 = 0;
        for (&head, &tail) in heads.iter().zip(tails) {
            let cr = u8::from(head == b'\r');
            let lf = u8::from(tail == b'\n');
            let crlf = cr & lf;
            run += (cr ^ crlf) + (lf ^ crlf);
        }
        extra += u64::from(run);
    }
    let mut size = bytes.len() as u64 + extra;
    if !matches!(last, b'\r' | b'\n') {
        size += 2;
    }
    size
}

impl Message {
    /// A message held in memory. Its 8-bit content and size are detected
    /// before `MAIL` is sent.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        Self {
            source: Source::Bytes(bytes.into()),
            body_type: None,
            size: None,
            started: false,
        }
    }

    /// A message read from `reader` while it is sent.
    ///
    /// Without [`Message::body_type`], it is announced as `BODY=8BITMIME`
    /// when the server offers it; otherwise an 8-bit byte met while sending
    /// aborts the transaction (the connection is closed before the end of
    /// data, so nothing is delivered). Without [`Message::size`], a message
    /// found to exceed the server's `SIZE` is aborted the same way.
    pub fn from_reader(reader: impl AsyncRead + Send + 'static) -> Self {
        Self {
            source: Source::Reader(Box::pin(reader)),
            body_type: None,
            size: None,
            started: false,
        }
    }

    /// A message produced by a stream of byte chunks, with the same rules
    /// as [`Message::from_reader`].
    pub fn from_stream(stream: impl Stream<Item = io::Result<Bytes>> + Send + 'static) -> Self {
        Self {
            source: Source::Stream {
                stream: Box::pin(stream),
                pending: Bytes::new(),
            },
            body_type: None,
            size: None,
            started: false,
        }
    }

    /// Declares the body type (RFC 6152 `8BITMIME`, RFC 3030
    /// `BINARYMIME`). `BinaryMime` needs a server offering both `CHUNKING`
    /// and `BINARYMIME`, and disables line-ending normalisation.
    pub fn body_type(mut self, body_type: BodyType) -> Self {
        self.body_type = Some(body_type);
        self
    }

    /// Declares the size in octets, sent as `SIZE=` (RFC 1870) and checked
    /// against the server's limit before `MAIL`. Set automatically for
    /// bytes.
    pub fn size(mut self, size: u64) -> Self {
        self.size = Some(size);
        self
    }

    /// The declared or known size: for bytes, the size as it will be
    /// transferred after line-ending normalisation and the final CRLF, but
    /// before dot-stuffing, which RFC 1870 §3 does not count.
    pub fn len(&self) -> Option<u64> {
        self.size.or_else(|| match &self.source {
            Source::Bytes(bytes) if self.body_type == Some(BodyType::BinaryMime) => {
                Some(bytes.len() as u64)
            }
            Source::Bytes(bytes) => Some(normalized_size(bytes)),
            _ => None,
        })
    }

    /// Whether the message is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The declared body type, if any.
    pub fn declared_body_type(&self) -> Option<BodyType> {
        self.body_type
    }

    /// Whether the message can still be sent from its start: always for
    /// bytes, for a reader or stream only until its first read.
    pub fn is_replayable(&self) -> bool {
        matches!(self.source, Source::Bytes(_)) || !self.started
    }

    /// The body type to announce: the declared one, or one detected from
    /// the bytes in memory; `None` for an undeclared reader or stream.
    pub(crate) fn detected_body_type(&self) -> Option<BodyType> {
        if self.body_type.is_some() {
            return self.body_type;
        }
        match &self.source {
            // `is_ascii` checks a word at a time; a byte loop that stops
            // at the first 8-bit octet does not vectorise.
            Source::Bytes(bytes) if !bytes.is_ascii() => Some(BodyType::EightBitMime),
            Source::Bytes(_) => Some(BodyType::SevenBit),
            _ => None,
        }
    }

    /// Reads the next block of at most `max` octets into a new buffer;
    /// empty at the end. Bytes in memory are handed out without copying.
    pub(crate) async fn read_block(&mut self, offset: &mut usize, max: usize) -> io::Result<Bytes> {
        self.started = true;
        match &mut self.source {
            Source::Bytes(bytes) => {
                let start = (*offset).min(bytes.len());
                let end = start.saturating_add(max).min(bytes.len());
                *offset = end;
                Ok(bytes.slice(start..end))
            }
            Source::Reader(reader) => {
                let mut buffer = vec![0; max];
                let read = reader.read(&mut buffer).await?;
                buffer.truncate(read);
                *offset += read;
                Ok(Bytes::from(buffer))
            }
            Source::Stream { stream, pending } => {
                while pending.is_empty() {
                    match stream.next().await {
                        None => return Ok(Bytes::new()),
                        // An empty item is not the end of the stream.
                        Some(Ok(chunk)) => *pending = chunk,
                        Some(Err(error)) => return Err(error),
                    }
                }
                let block = pending.split_to(max.min(pending.len()));
                *offset += block.len();
                Ok(block)
            }
        }
    }
}

impl From<Bytes> for Message {
    fn from(bytes: Bytes) -> Self {
        Message::from_bytes(bytes)
    }
}

impl From<Vec<u8>> for Message {
    fn from(bytes: Vec<u8>) -> Self {
        Message::from_bytes(bytes)
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::from_bytes(text)
    }
}

impl From<&'static str> for Message {
    fn from(text: &'static str) -> Self {
        Message::from_bytes(text)
    }
}

impl From<&'static [u8]> for Message {
    fn from(bytes: &'static [u8]) -> Self {
        Message::from_bytes(bytes)
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use bytes::BytesMut;
    use smtp_proto::body::DataEncoder;

    #[test]
    fn the_declared_size_is_the_normalised_size() {
        let cases: [&[u8]; 9] = [
            b"",
            b"x",
            b"line\r\n",
            b"bare lf\nand more\n",
            b"bare cr\rend",
            b"trailing cr\r",
            b"\n\r\r\n\n",
            b".dot\r\n..two\n",
            b"no final line end",
        ];
        for case in cases {
            let mut wire = BytesMut::new();
            let mut encoder = DataEncoder::without_dot_stuffing();
            encoder.encode(case, &mut wire);
            encoder.finish(&mut wire);
            assert_eq!(
                Message::from_bytes(case.to_vec()).len(),
                Some(wire.len() as u64),
                "{case:?}"
            );
        }
        // Every string of up to seven octets of CR, LF and text.
        for len in 0..=7u32 {
            for mut code in 0..3usize.pow(len) {
                let mut case = Vec::new();
                for _ in 0..len {
                    case.push([b'\r', b'\n', b'x'][code % 3]);
                    code /= 3;
                }
                let mut wire = BytesMut::new();
                let mut encoder = DataEncoder::without_dot_stuffing();
                encoder.encode(&case, &mut wire);
                encoder.finish(&mut wire);
                assert_eq!(normalized_size(&case), wire.len() as u64, "{case:?}");
            }
        }
        let binary = Message::from_bytes(&b"a\nb"[..]).body_type(BodyType::BinaryMime);
        assert_eq!(binary.len(), Some(3));
        assert_eq!(Message::from_bytes(&b"a\n"[..]).size(10).len(), Some(10));
    }

    #[test]
    fn eight_bit_content_is_found_anywhere() {
        let mut text = vec![b'a'; 1000];
        assert_eq!(
            Message::from_bytes(text.clone()).detected_body_type(),
            Some(BodyType::SevenBit)
        );
        for at in [0, 517, 999] {
            text[at] = 0x80;
            assert_eq!(
                Message::from_bytes(text.clone()).detected_body_type(),
                Some(BodyType::EightBitMime),
                "at {at}"
            );
            text[at] = b'a';
        }
    }
}
