//! Any body: the DATA decoder never panics, never yields more than its
//! limit, and ends only where the input holds `<CRLF>.<CRLF>`.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use smtp_proto::body::{BodyEvent, DataDecoder};

fuzz_target!(|data: &[u8]| {
    let limit = 1024;
    let mut decoder = DataDecoder::new(limit);
    let mut buffer = BytesMut::new();
    let mut yielded = 0u64;
    let mut ended_at = None;
    for (index, &byte) in data.iter().enumerate() {
        buffer.extend_from_slice(&[byte]);
        while let Some(event) = decoder.decode(&mut buffer) {
            match event {
                BodyEvent::Chunk(chunk) => yielded += chunk.len() as u64,
                BodyEvent::End(summary) => {
                    assert!(summary.size >= yielded.min(limit));
                    ended_at = Some(index);
                }
            }
        }
        if ended_at.is_some() {
            break;
        }
    }
    assert!(yielded <= limit);
    if let Some(end) = ended_at {
        // The terminator is a real <CRLF>.<CRLF>, or a "." line at the very start.
        let seen = &data[..=end];
        assert!(seen.ends_with(b"\r\n.\r\n") || seen == b".\r\n");
    }
});
