//! Any byte stream, fed in pieces whose sizes come from the input: the
//! server codec never panics, never holds more than its line limit, and
//! gives the same frames whatever the split.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use smtp_proto::codec::{ServerCodec, ServerFrame};
use smtp_proto::command::Command;
use tokio_util::codec::Decoder;

fn frames(input: &[u8], step: usize) -> Vec<ServerFrame> {
    let mut codec = ServerCodec::new(512);
    let mut buffer = BytesMut::new();
    let mut out: Vec<ServerFrame> = Vec::new();
    for piece in input.chunks(step) {
        buffer.extend_from_slice(piece);
        while let Some(frame) = codec.decode(&mut buffer).unwrap() {
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
    let whole = frames(input, input.len().max(1));
    let split = frames(input, usize::from(step).max(1));
    assert_eq!(whole, split);
});
