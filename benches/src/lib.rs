//! Benchmarks for the ferry crates: the inputs and routines measured, shared
//! by the criterion benchmarks (`benches/proto.rs`) and by `proto-count`,
//! which runs one routine a given number of times so that instruction
//! counts (callgrind) can be taken per iteration. See `docs/benchmarks.md`.

use std::hint::black_box;

use bytes::BytesMut;
use smtp_proto::body::{BodyEvent, DataDecoder, DataEncoder};
use smtp_proto::codec::{ClientCodec, ServerCodec, ServerFrame};
use smtp_proto::reply::{BorrowedEhlo, EhloReply, ReplyDecoder};
use tokio_util::codec::Decoder;

/// One pipelined transaction with ESMTP parameters, as a busy MX sees it.
pub fn transaction(recipients: usize) -> Vec<u8> {
    let mut input = Vec::new();
    input.extend_from_slice(b"EHLO client.example.org\r\n");
    input.extend_from_slice(
        b"MAIL FROM:<sender.name+tag@example.org> SIZE=123456 BODY=8BITMIME RET=HDRS ENVID=QQ314159\r\n",
    );
    for index in 0..recipients {
        input.extend_from_slice(
            format!("RCPT TO:<recipient{index}@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;recipient{index}@example.net\r\n")
                .as_bytes(),
        );
    }
    input.extend_from_slice(b"NOOP\r\nRSET\r\n");
    input
}

/// A message of about `size` octets with 78-octet lines, a tenth of them
/// starting with a dot, already dot-stuffed and terminated.
pub fn stuffed_body(size: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size + 100);
    let mut line = 0usize;
    while body.len() < size {
        if line.is_multiple_of(10) {
            body.extend_from_slice(b"..");
        }
        body.extend_from_slice(&[b'x'; 76]);
        body.extend_from_slice(b"\r\n");
        line += 1;
    }
    body.extend_from_slice(b".\r\n");
    body
}

/// About 1 MiB of 76-octet lines ending in bare LF, a tenth starting with a
/// dot: input for the DATA encoder.
pub fn lf_message() -> Vec<u8> {
    let mut message = Vec::new();
    for line in 0..13_000u32 {
        if line.is_multiple_of(10) {
            message.push(b'.');
        }
        message.extend_from_slice(&[b'y'; 76]);
        message.push(b'\n');
    }
    message
}

/// A ten-line EHLO reply.
pub const EHLO_REPLY: &[u8] =
    b"250-mx.example.net at your service\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n\
250-PIPELINING\r\n250-CHUNKING\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n\
250-AUTH PLAIN LOGIN\r\n250-DSN\r\n250 STARTTLS\r\n";

/// ferry: frames and parses every command of `input`, borrowed from the
/// buffer (`ServerCodec::decode_command`, the zero-copy path).
pub fn ferry_commands(input: &[u8]) -> usize {
    let mut codec = ServerCodec::new(2048);
    let mut buffer = BytesMut::from(input);
    let mut count = 0;
    while let Some(ok) = codec.decode_command(&mut buffer, |command| {
        black_box(&command);
        command.is_ok()
    }) {
        assert!(ok);
        count += 1;
    }
    count
}

/// ferry: frames and parses every command of `input` into owned values
/// (`Decoder::decode`, `ServerFrame::Command`).
pub fn ferry_commands_owned(input: &[u8]) -> usize {
    let mut codec = ServerCodec::new(2048);
    let mut buffer = BytesMut::from(input);
    let mut count = 0;
    while let Some(frame) = codec.decode(&mut buffer).unwrap() {
        assert!(matches!(frame, ServerFrame::Command(Ok(_))));
        count += 1;
    }
    count
}

/// Stalwart: parses every command of `input`.
pub fn stalwart_commands(input: &[u8]) -> usize {
    let mut receiver = stalwart_smtp_proto::request::receiver::RequestReceiver::default();
    let mut bytes = input.iter();
    let mut count = 0;
    loop {
        match receiver.ingest(&mut bytes) {
            Ok(request) => {
                black_box(&request);
                count += 1;
            }
            Err(stalwart_smtp_proto::Error::NeedsMoreData { .. }) => break,
            Err(error) => panic!("{error:?}"),
        }
    }
    count
}

/// ferry: decodes a dot-stuffed body from the buffer a connection read it
/// into, with every check of the body summary. Includes copying `input`
/// into that buffer; see [`ferry_decode_buffer`] for the decoder alone.
pub fn ferry_decode(input: &[u8]) -> usize {
    ferry_decode_buffer(BytesMut::from(input))
}

/// ferry: decodes a dot-stuffed body that is already in the buffer a
/// connection read it into, and drops the buffer: the decoder's own work,
/// as [`stalwart_decode`] is Stalwart's (which starts from the input
/// slice). Not inlined, so that callgrind can count it alone
/// (`--toggle-collect`).
#[inline(never)]
pub fn ferry_decode_buffer(mut buffer: BytesMut) -> usize {
    let mut decoder = DataDecoder::new(u64::MAX);
    let mut total = 0;
    while let Some(event) = decoder.decode(&mut buffer) {
        match event {
            BodyEvent::Chunk(chunk) => total += chunk.len(),
            BodyEvent::End(summary) => {
                black_box(summary);
                break;
            }
        }
    }
    total
}

/// Stalwart: unstuffs a body into a `Vec`.
pub fn stalwart_decode(input: &[u8]) -> usize {
    let mut receiver = stalwart_smtp_proto::request::receiver::DataReceiver::new();
    let mut out = Vec::with_capacity(input.len());
    let done = receiver.ingest(&mut input.iter(), &mut out);
    assert!(done);
    out.len()
}

/// ferry: dot-stuffs `message` in 64 KiB pieces.
pub fn ferry_encode(message: &[u8]) -> usize {
    let mut encoder = DataEncoder::new();
    let mut out = BytesMut::with_capacity(message.len() + message.len() / 20);
    for chunk in message.chunks(64 * 1024) {
        encoder.encode(chunk, &mut out);
    }
    encoder.finish(&mut out);
    out.len()
}

/// ferry: decodes an EHLO reply with the client codec into a general
/// `Reply`, then reads the capabilities from it (the owned two-step API).
pub fn ferry_ehlo_via_reply(reply: &[u8]) -> smtp_proto::ehlo::Capabilities {
    let mut codec = ClientCodec::new();
    let mut buffer = BytesMut::from(reply);
    let reply = codec.decode(&mut buffer).unwrap().unwrap();
    smtp_proto::ehlo::Capabilities::from_reply(&reply)
}

/// ferry: reads an EHLO reply's capabilities borrowed from the bytes
/// (`ReplyDecoder::parse_ehlo`, the zero-copy path), with every check of
/// the reply decoder.
pub fn ferry_ehlo(reply: &[u8]) -> usize {
    let decoder = ReplyDecoder::new();
    match decoder.parse_ehlo(reply).unwrap().unwrap() {
        BorrowedEhlo::Capabilities { capabilities, len } => {
            black_box(&capabilities);
            len
        }
        BorrowedEhlo::Other { code } => panic!("not a 250 reply: {code}"),
    }
}

/// ferry: decodes an EHLO reply with the client codec straight into the
/// owned capabilities (`ClientCodec::decode_ehlo`), from the buffer a
/// connection read it into.
pub fn ferry_ehlo_owned(reply: &[u8]) -> smtp_proto::ehlo::Capabilities {
    let mut codec = ClientCodec::new();
    let mut buffer = BytesMut::from(reply);
    match codec.decode_ehlo(&mut buffer).unwrap().unwrap() {
        EhloReply::Capabilities(capabilities) => capabilities,
        EhloReply::Other(reply) => panic!("not a 250 reply: {reply}"),
    }
}

/// Stalwart: parses an EHLO reply.
pub fn stalwart_ehlo(reply: &[u8]) -> stalwart_smtp_proto::EhloResponse<String> {
    stalwart_smtp_proto::EhloResponse::parse(&mut reply.iter()).unwrap()
}

/// ferry: writes a one-line reply with an enhanced code, as a server does
/// for every command.
pub fn ferry_reply_encode(out: &mut BytesMut) -> usize {
    out.clear();
    smtp_proto::Reply::new(250, smtp_proto::EnhancedCode::new(2, 1, 5), "Recipient OK").encode(out);
    out.len()
}
