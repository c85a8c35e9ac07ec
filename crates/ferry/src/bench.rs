//! `ferry bench`: the messages it sends.

use bytes::{BufMut, Bytes, BytesMut};

/// Builds benchmark message number `index`: a small header block with an
/// `X-Ferry-Bench` field (so receivers can count what arrived), then
/// filler lines of 78 characters plus CRLF, padded so the whole message is
/// exactly `size` octets when `size` exceeds the header block (otherwise
/// the message is the header block and a one-line body).
pub fn message(size: usize, index: u64, from: &str, to: &str) -> Bytes {
    // Read once: `getpid` is a system call per message otherwise.
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    let head = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: ferry bench {index}\r\n\
         Message-ID: <bench.{index}.{pid}@ferry.invalid>\r\nX-Ferry-Bench: {index}\r\n\r\n"
    );
    let mut out = BytesMut::with_capacity(size.max(head.len() + 4));
    out.put_slice(head.as_bytes());
    const LINE: &[u8; 78] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnop";
    let mut remaining = size.saturating_sub(head.len()).max(4);
    while remaining > 0 {
        if remaining >= LINE.len() + 2 {
            out.put_slice(LINE);
            out.put_slice(b"\r\n");
            remaining -= LINE.len() + 2;
        } else {
            // The last line: whatever fits before its CRLF (possibly an
            // empty line).
            let text = remaining.saturating_sub(2);
            out.put_slice(&LINE[..text]);
            out.put_slice(b"\r\n");
            remaining = 0;
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_sizes_and_shape() {
        for size in [300usize, 301, 379, 380, 381, 1024, 10_000, 65_537] {
            let m = message(size, 7, "a@example.com", "b@example.com");
            assert_eq!(m.len(), size, "size {size}");
            assert!(m.ends_with(b"\r\n"));
            let text = std::str::from_utf8(&m).unwrap();
            assert!(text.contains("\r\nX-Ferry-Bench: 7\r\n"));
            // CRLF only, short lines, no line that starts with a dot.
            assert!(!text.replace("\r\n", "").contains('\n'));
            assert!(
                text.split("\r\n")
                    .all(|l| l.len() <= 998 && !l.starts_with('.'))
            );
        }
        // Tiny sizes still give a complete message.
        let m = message(0, 1, "a@b", "c@d");
        assert!(m.ends_with(b"X-Ferry-Bench: 1\r\n\r\nab\r\n"), "{m:?}");
    }
}
