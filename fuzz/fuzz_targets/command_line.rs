//! Any line: parsing never panics, and whatever parses re-encodes to a
//! line that parses to the same command; the borrowed parse agrees with
//! the owned one.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use smtp_proto::command::{Command, CommandRef};

fuzz_target!(|line: &[u8]| {
    assert_eq!(CommandRef::parse(line).map(|c| c.to_command()), Command::parse(line));
    if let Ok(command) = Command::parse(line) {
        let mut encoded = BytesMut::new();
        if command.encode(&mut encoded).is_ok() {
            assert!(encoded.ends_with(b"\r\n"));
            let again = Command::parse(&encoded[..encoded.len() - 2]).expect("encoded command parses");
            assert_eq!(again, command);
        }
    } else if let Err(error) = Command::parse(line) {
        // Every error maps to a reply.
        let reply = error.reply();
        assert!((400..600).contains(&reply.code()));
    }
});
