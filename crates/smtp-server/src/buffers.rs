//! Connection buffers sized to what is in them.
//!
//! A fixed pair of 8 KiB buffers per connection (tokio-util's default)
//! makes an idle session cost 16 KiB. Instead, a connection starts with a
//! read buffer for one command line and no write buffer, and before it
//! waits for the client:
//!
//! - the write buffer, just flushed and so empty, gives its memory back
//!   (a reply is small, and allocating it again costs far less than the
//!   write that sends it);
//! - waiting for a command, an empty read buffer larger than
//!   2 × [`COMMAND_READ`] is released and one of [`COMMAND_READ`] octets
//!   taken instead, so a session idle between messages holds only that;
//! - waiting for message text, the read buffer is given at least
//!   [`BODY_READ`] octets of room, so a body arrives in few large reads.
//!
//! Longer lines still fit: the framed stream grows a full buffer before it
//! reads again.

use bytes::BytesMut;
use tokio_util::codec::Framed;

/// Room in the read buffer of a session waiting for a command: two
/// command lines (RFC 5321 §4.5.3.1.4: 512 octets, CRLF included).
pub(crate) const COMMAND_READ: usize = 1024;

/// Room in the read buffer while message text is expected.
pub(crate) const BODY_READ: usize = 16 * 1024;

/// A framed stream with no write buffer and a read buffer of
/// [`COMMAND_READ`] octets.
pub(crate) fn framed<T, U>(io: T, codec: U) -> Framed<T, U> {
    let mut framed = Framed::with_capacity(io, codec, 0);
    *framed.read_buffer_mut() = BytesMut::with_capacity(COMMAND_READ);
    framed
}

/// Sizes the buffers of `framed` for waiting: for message text when
/// `body`, otherwise for a command. Call with the write buffer flushed.
pub(crate) fn before_wait<T, U>(framed: &mut Framed<T, U>, body: bool) {
    let write = framed.write_buffer_mut();
    if write.is_empty() && write.capacity() > 0 {
        *write = BytesMut::new();
    }
    size_read(framed, body);
}

/// Gives the read buffer room for the next read: [`BODY_READ`] octets for
/// message text, [`COMMAND_READ`] for a command. Called before each body
/// frame too, not only before a wait: when message text is already
/// waiting in the socket (a client that pipelines, or a body sent behind
/// the `354`), the frames come without a wait, and a buffer left at a
/// command's room read the body 1 KiB per system call.
pub(crate) fn size_read<T, U>(framed: &mut Framed<T, U>, body: bool) {
    let read = framed.read_buffer_mut();
    let room = if body { BODY_READ } else { COMMAND_READ };
    if !body && read.is_empty() && read.capacity() > 2 * COMMAND_READ {
        *read = BytesMut::with_capacity(COMMAND_READ);
    }
    // A command, or a whole pipelined group of commands, comes in one
    // read: text after STARTTLS in the same packet is discarded whole
    // (RFC 3207 §4.2), never left for the TLS handshake to read.
    if read.capacity() - read.len() < room / 2 {
        // A new buffer, not `reserve`: a buffer remembers the capacity it
        // was made with, and that is what it grows by while chunks split
        // off it are still held (a body on its way to the session), so it
        // must be made with the room wanted.
        let mut fresh = BytesMut::with_capacity(room.max(2 * read.len()));
        fresh.extend_from_slice(read);
        *read = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::BytesCodec;

    #[test]
    fn an_idle_command_wait_holds_one_small_read_buffer_and_no_write_buffer() {
        let mut framed = framed(tokio::io::empty(), BytesCodec::new());
        assert_eq!(framed.read_buffer().capacity(), COMMAND_READ);
        assert_eq!(framed.write_buffer().capacity(), 0);
        before_wait(&mut framed, false);
        assert_eq!(framed.read_buffer().capacity(), COMMAND_READ);
        assert_eq!(framed.write_buffer().capacity(), 0);

        // After a message: a large, empty read buffer and a used write
        // buffer are given back before the next wait for a command.
        before_wait(&mut framed, true);
        assert!(framed.read_buffer().capacity() >= BODY_READ);
        framed
            .write_buffer_mut()
            .extend_from_slice(b"250 2.0.0 Ok\r\n");
        framed.write_buffer_mut().clear();
        before_wait(&mut framed, false);
        assert_eq!(framed.read_buffer().capacity(), COMMAND_READ);
        assert_eq!(framed.write_buffer().capacity(), 0);

        // A buffer grown a little by a long line is brought back up to a
        // whole command's room.
        *framed.read_buffer_mut() = BytesMut::with_capacity(32);
        before_wait(&mut framed, false);
        assert!(framed.read_buffer().capacity() >= COMMAND_READ);
    }

    /// While a chunk split off the buffer is still held (on its way to the
    /// session), the framed stream's next read still gets room for a
    /// large read, not a few octets.
    #[test]
    fn a_body_buffer_regrows_by_a_large_read_while_chunks_are_held() {
        let mut framed = framed(tokio::io::empty(), BytesCodec::new());
        for body in [false, true] {
            before_wait(&mut framed, body);
            let room = if body { BODY_READ } else { COMMAND_READ };
            let read = framed.read_buffer_mut();
            let full = read.capacity();
            read.resize(full, b'x');
            let held = read.split_to(full).freeze();
            // What the framed stream does before each read.
            read.reserve(1);
            assert!(read.capacity() >= room, "{} < {room}", read.capacity());
            drop(held);
        }
    }

    /// Before a body frame that needs no wait, the buffer still gets a
    /// body's room, so the next read is a large one.
    #[test]
    fn body_frames_without_a_wait_still_read_large() {
        let mut framed = framed(tokio::io::empty(), BytesCodec::new());
        framed.read_buffer_mut().extend_from_slice(&[b'x'; 600]);
        size_read(&mut framed, true);
        let read = framed.read_buffer();
        assert_eq!(read.len(), 600);
        assert!(read.capacity() - read.len() >= BODY_READ / 2);
        // Room enough already: nothing is copied.
        let before = framed.read_buffer().as_ptr();
        size_read(&mut framed, true);
        assert_eq!(framed.read_buffer().as_ptr(), before);
    }

    #[test]
    fn buffered_input_is_kept() {
        let mut framed = framed(tokio::io::empty(), BytesCodec::new());
        framed
            .read_buffer_mut()
            .extend_from_slice(&[b'x'; 3 * COMMAND_READ]);
        before_wait(&mut framed, false);
        assert_eq!(framed.read_buffer().len(), 3 * COMMAND_READ);
        assert!(framed.read_buffer().capacity() > 3 * COMMAND_READ);
        before_wait(&mut framed, true);
        assert_eq!(framed.read_buffer().len(), 3 * COMMAND_READ);
        assert!(framed.read_buffer().capacity() - framed.read_buffer().len() >= BODY_READ / 2);
    }
}
