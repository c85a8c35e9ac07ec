//! Any server output: the reply decoder never panics and never buffers
//! more than its caps allow.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use smtp_proto::reply::ReplyDecoder;

fuzz_target!(|data: &[u8]| {
    let mut decoder = ReplyDecoder::with_limits(512, 16);
    let mut buffer = BytesMut::new();
    for piece in data.chunks(7) {
        buffer.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(reply)) => assert!(reply.lines().len() <= 16),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buffer.len() <= 512 * 16 + 16 * 2 + 7);
    }
});
