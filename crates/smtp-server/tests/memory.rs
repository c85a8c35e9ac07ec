//! Memory per connection stays bounded under a hostile client.
//!
//! The server's stream is wrapped in a meter that records how much it read
//! and the largest read it offered: `Framed` reads into the spare capacity
//! of its read buffer, so a buffer that grew with the input would show up
//! as ever larger reads. Time is paused: waiting lets the server do all it
//! can, and its timeouts pass instantly.

mod common;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{Behavior, Client, TestBackend, builder};
use smtp_server::{ConnectionInfo, Limits, Server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// The largest read the server may offer: its read buffer stays this small.
const READ_OFFER_CAP: usize = 64 * 1024;
/// What a stalled server may have read beyond what it handed on: the read
/// buffer plus the body channel's few chunks.
const BUFFERED_CAP: usize = 128 * 1024;

#[derive(Default)]
struct Meter {
    read: AtomicUsize,
    largest_offer: AtomicUsize,
}

impl Meter {
    fn read(&self) -> usize {
        self.read.load(Ordering::SeqCst)
    }

    fn largest_offer(&self) -> usize {
        self.largest_offer.load(Ordering::SeqCst)
    }
}

/// The server's side of the connection, measured.
struct Metered {
    inner: DuplexStream,
    meter: Arc<Meter>,
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.meter
            .largest_offer
            .fetch_max(buf.remaining(), Ordering::SeqCst);
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.meter.read.fetch_add(read, Ordering::SeqCst);
        result
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn connect_metered(server: &Server<TestBackend>) -> (Client<DuplexStream>, Arc<Meter>) {
    let (client, server_side) = tokio::io::duplex(64 * 1024);
    let meter = Arc::new(Meter::default());
    let stream = Metered {
        inner: server_side,
        meter: Arc::clone(&meter),
    };
    let server = server.clone();
    let info = ConnectionInfo::new(
        "192.0.2.10:40000".parse().unwrap(),
        "192.0.2.1:25".parse().unwrap(),
    );
    tokio::spawn(async move {
        let _ = server.serve_connection(stream, info).await;
    });
    (Client::new(client), meter)
}

/// Lets the server run until it waits for the client (paused time moves
/// only when every task is idle).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn ten_megabytes_without_a_line_end() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let (mut client, meter) = connect_metered(&server);
    client.hello().await;
    let junk = vec![b'x'; 1 << 20];
    for _ in 0..10 {
        client.send(&junk).await;
    }
    client.send("\r\nNOOP\r\n").await;
    assert_eq!(
        client.reply().await,
        "500 5.5.2 Line too long\r\n",
        "the whole line was read and discarded"
    );
    client.expect("250 2.0.0").await;
    assert!(meter.read() > 10 << 20);
    assert!(
        meter.largest_offer() <= READ_OFFER_CAP,
        "read buffer grew to {}",
        meter.largest_offer()
    );
}

#[tokio::test(start_paused = true)]
async fn fifty_megabytes_of_data_to_a_stalled_handler() {
    let backend = TestBackend::with(Behavior {
        // The handler reads nothing for a minute.
        data_delay: Some(Duration::from_secs(60)),
        ..Behavior::default()
    });
    let limits = Limits {
        max_message_size: 1 << 20,
        ..Limits::default()
    };
    let server = builder(&backend).limits(limits).build().unwrap();
    let (mut client, meter) = connect_metered(&server);
    client.hello().await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354 ").await;
    let line = [&[b'y'; 998][..], b"\r\n"].concat();
    let block = line.repeat(1024);
    let body_size = 50 * block.len();
    let (reader, mut writer) = tokio::io::split(client.stream);
    let write = tokio::spawn(async move {
        for _ in 0..50 {
            writer.write_all(&block).await.unwrap();
        }
        writer.write_all(b".\r\n").await.unwrap();
        writer
    });
    // While the handler sleeps, the server reads only what its buffers
    // hold; the rest waits in the client's socket.
    settle().await;
    let stalled = meter.read();
    assert!(
        stalled < BUFFERED_CAP,
        "read {stalled} octets for a handler that took none"
    );
    settle().await;
    assert_eq!(meter.read(), stalled, "the server kept reading");
    assert!(!write.is_finished());

    let writer = write.await.unwrap();
    let mut client = Client::new(reader.unsplit(writer));
    assert_eq!(
        client.reply().await,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert!(meter.read() > body_size);
    assert!(meter.largest_offer() <= READ_OFFER_CAP);
    let messages = backend.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body.len(), 1 << 20);
    // The session goes on.
    client.send("NOOP\r\n").await;
    client.expect("250 2.0.0").await;
}

#[tokio::test(start_paused = true)]
async fn pipelined_commands_from_a_client_that_never_reads() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let (mut client, meter) = connect_metered(&server);
    client.hello().await;
    const COMMANDS: usize = 100_000;
    let script = "NOOP\r\n".repeat(COMMANDS);
    let (reader, mut writer) = tokio::io::split(client.stream);
    let write = tokio::spawn(async move {
        writer.write_all(script.as_bytes()).await.unwrap();
        writer
    });
    // Replies fill the client's socket; the server stops writing, then
    // stops reading commands it could not answer.
    settle().await;
    let stalled = meter.read();
    assert!(
        stalled < BUFFERED_CAP,
        "read {stalled} octets of commands it cannot answer"
    );
    settle().await;
    assert_eq!(meter.read(), stalled, "the server kept reading");
    assert!(!write.is_finished());

    // Once the client reads, every command is answered.
    let mut reader = reader;
    let expected = "250 2.0.0 OK\r\n".repeat(COMMANDS);
    let mut replies = vec![0; expected.len()];
    reader.read_exact(&mut replies).await.unwrap();
    assert!(replies == expected.as_bytes());
    let writer = write.await.unwrap();
    let mut client = Client::new(reader.unsplit(writer));
    client.send("QUIT\r\n").await;
    client.expect("221 ").await;
    assert!(meter.largest_offer() <= READ_OFFER_CAP);
}
