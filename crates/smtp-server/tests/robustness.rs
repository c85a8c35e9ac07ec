//! Reply batching under PIPELINING, and random sessions that must never
//! panic or acknowledge a message the handler did not accept.
#![allow(clippy::field_reassign_with_default)]

mod common;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{Client, TestBackend, builder};
use smtp_server::{ConnectionInfo, Extensions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// Counts the writes the server makes.
struct CountingStream {
    inner: DuplexStream,
    writes: Arc<AtomicUsize>,
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn info() -> ConnectionInfo {
    ConnectionInfo::new(
        "192.0.2.10:40000".parse().unwrap(),
        "192.0.2.1:25".parse().unwrap(),
    )
}

async fn writes_for_pipelined_group(extensions: Extensions) -> usize {
    let backend = TestBackend::new();
    let server = builder(&backend).extensions(extensions).build().unwrap();
    let (client_side, server_side) = tokio::io::duplex(64 * 1024);
    let writes = Arc::new(AtomicUsize::new(0));
    let stream = CountingStream {
        inner: server_side,
        writes: Arc::clone(&writes),
    };
    tokio::spawn(async move { server.serve_connection(stream, info()).await });
    let mut client = Client::new(client_side);
    client.expect("220").await;
    let before = writes.load(Ordering::SeqCst);
    client
        .send("EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nNOOP\r\n")
        .await;
    client.expect("250-").await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("250 2.0.0").await;
    writes.load(Ordering::SeqCst) - before
}

#[tokio::test]
async fn pipelined_replies_are_written_in_one_batch() {
    assert_eq!(writes_for_pipelined_group(Extensions::default()).await, 1);
    let mut no_pipelining = Extensions::default();
    no_pipelining.pipelining = false;
    assert_eq!(writes_for_pipelined_group(no_pipelining).await, 4);
}

/// xorshift64*: a fixed-seed generator, so failures reproduce.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const FRAGMENTS: &[&[u8]] = &[
    b"EHLO c\r\n",
    b"HELO c\r\n",
    b"MAIL FROM:<a@x.test>\r\n",
    b"MAIL FROM:<a@x.test> BODY=BINARYMIME\r\n",
    b"RCPT TO:<b@x.test>\r\n",
    b"RCPT TO:<c@x.test>\r\n",
    b"DATA\r\n",
    b"BDAT 3\r\n",
    b"BDAT 2 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY x\r\n",
    b"AUTH PLAIN\r\n",
    b"*\r\n",
    b"STARTTLS\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r",
    b"\n",
    b"x",
    b"..",
    b"\0",
    b"\xff\xfe",
    b"QUIT\r\n",
];

#[tokio::test]
async fn random_sessions_never_panic_and_never_acknowledge_unaccepted_mail() {
    let mut random = Random(0x5EED_1234_ABCD_0001);
    let mut total_accepted = 0;
    let mut total_replies = 0;
    for round in 0..1000 {
        let backend = TestBackend::new();
        let server = builder(&backend).build().unwrap();
        let (mut client, server_side) = tokio::io::duplex(1024 * 1024);
        let task = tokio::spawn(async move { server.serve_connection(server_side, info()).await });
        // Wait for the greeting, as a client does.
        let mut greeting = [0u8; 25];
        client.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"220 mx.test ESMTP ready\r\n");
        let mut script = Vec::new();
        // Half the sessions open a valid transaction first, so the random
        // part also lands in RCPT, DATA and BDAT states.
        let opening: &[&[u8]] = match random.below(4) {
            0 => &[
                b"EHLO c\r\n",
                b"MAIL FROM:<a@x.test>\r\n",
                b"RCPT TO:<b@x.test>\r\n",
            ],
            1 => &[
                b"EHLO c\r\n",
                b"MAIL FROM:<a@x.test>\r\n",
                b"RCPT TO:<b@x.test>\r\n",
                b"DATA\r\n",
            ],
            _ => &[],
        };
        let random_part = 1 + random.below(40);
        let mut fragments = opening.iter().map(|f| f.to_vec()).collect::<Vec<_>>();
        for _ in 0..random_part {
            let fragment: Vec<u8> = if random.below(30) == 0 {
                vec![b'A'; 3000]
            } else {
                FRAGMENTS[random.below(FRAGMENTS.len())].to_vec()
            };
            fragments.push(fragment);
        }
        for fragment in fragments {
            script.extend_from_slice(&fragment);
            // Written piece by piece so the server answers DATA before the
            // body arrives, as a real client would wait for 354.
            if client.write_all(&fragment).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let _ = client.shutdown().await;
        let mut output = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut output));
        let _ = read
            .await
            .expect("the server closes once the client is done");
        task.await
            .expect("the connection task never panics")
            .expect("no I/O error on an in-memory stream");

        let text = String::from_utf8(output).expect("replies are UTF-8");
        for line in text.split_terminator("\r\n") {
            let bytes = line.as_bytes();
            assert!(
                bytes.len() >= 4
                    && bytes[..3].iter().all(u8::is_ascii_digit)
                    && (bytes[3] == b' ' || bytes[3] == b'-'),
                "round {round}: bad reply line {line:?} for {:?}",
                String::from_utf8_lossy(&script)
            );
        }
        let accepted = text.matches("250 2.0.0 Message accepted").count();
        total_accepted += accepted;
        total_replies += text.matches("\r\n").count();
        let clean = backend
            .messages()
            .iter()
            .filter(|message| message.error.is_none())
            .count();
        assert!(
            accepted <= clean,
            "round {round}: {accepted} acknowledged, {clean} accepted, for {:?}",
            String::from_utf8_lossy(&script)
        );
    }
    // The generator must reach deep states, or the test proves nothing.
    assert!(total_accepted > 0, "no message was ever accepted");
    assert!(total_replies > 1000, "only {total_replies} replies");
}
