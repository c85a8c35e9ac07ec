//! Any byte stream, fed in pieces whose sizes come from the input: the
//! server codec never panics, never holds more than its line limit, and
//! gives the same frames whatever the split, whether commands are read
//! owned (`decode`) or borrowed (`decode_command`).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use smtp_proto::codec::{ServerCodec, ServerFrame};
use smtp_proto::command::Command;
use tokio_util::codec::Decoder;

/// The next frame; with `borrowed`, command lines go through
/// `decode_command` and are copied out with `to_command`.
fn next(codec: &mut ServerCodec, buffer: &mut BytesMut, borrowed: bool) -> Option<ServerFrame> {
    if borrowed && !codec.in_body() {
        if let Some(command) = codec.decode_command(buffer, |command| command.map(|c| c.to_command())) {
            return Some(ServerFrame::Command(command));
        }
    }
    codec.decode(buffer).unwrap()
}

fn frames(input: &[u8], step: usize, borrowed: bool) -> Vec<ServerFrame> {
    let mut codec = ServerCodec::new(512);
    let mut buffer = BytesMut::new();
    let mut out: Vec<ServerFrame> = Vec::new();
    for piece in input.chunks(step) {
        buffer.extend_from_slice(piece);
        while let Some(frame) = next(&mut codec, &mut buffer, borrowed) {
            match &frame {
                ServerFrame::Command(Ok(Command::Data)) => codec.expect_data(4096),
                ServerFrame::Command(Ok(Command::Bdat { size, .. })) => codec.expect_bdat(*size),
                ServerFrame::Command(Ok(Command::Auth { .. })) => codec.expect_auth_response(),
                _ => {}
            }
            if let (Some(ServerFrame::BodyChunk(last)), ServerFrame::BodyChunk(next)) = (out.last_mut(), &frame) {
                let mut joined = BytesMut::from(&last[..]);
                joined.extend_from_slice(next);
                *last = joined.freeze();
            } else {
                out.push(frame);
            }
        }
        if !codec.in_body() {
            assert!(buffer.len() <= smtp_proto::limits::SASL_LINE_MAX + 2);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let whole = frames(input, input.len().max(1), false);
    let split = frames(input, usize::from(step).max(1), false);
    assert_eq!(whole, split);
    let borrowed = frames(input, usize::from(step).max(1), true);
    assert_eq!(whole, borrowed);
});
