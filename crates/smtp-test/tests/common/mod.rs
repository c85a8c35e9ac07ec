//! A raw SMTP client that reports exactly what came over the wire, and
//! when.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// What a read saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// A complete reply, lines joined with `\n`, without CRLFs.
    Reply(String),
    /// The server closed the connection; any octets of a partial reply.
    Closed(String),
    /// Nothing complete within the time allowed.
    Nothing,
}

pub struct Wire {
    stream: TcpStream,
    buffer: Vec<u8>,
    pub connected_at: Instant,
}

impl Wire {
    pub async fn connect(addr: SocketAddr) -> Wire {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Wire {
            stream,
            buffer: Vec::new(),
            connected_at: Instant::now(),
        }
    }

    /// Connects and checks the 220 greeting.
    pub async fn greeted(addr: SocketAddr) -> Wire {
        let mut wire = Wire::connect(addr).await;
        let greeting = wire.reply().await;
        assert!(greeting.starts_with("220 "), "greeting: {greeting:?}");
        wire
    }

    /// Greeting and EHLO.
    pub async fn ready(addr: SocketAddr) -> Wire {
        let mut wire = Wire::greeted(addr).await;
        let ehlo = wire.command("EHLO client.test").await;
        assert!(ehlo.starts_with("250"), "EHLO: {ehlo:?}");
        wire
    }

    pub async fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
    }

    /// Sends a command and returns its reply (which must come within a
    /// minute).
    pub async fn command(&mut self, line: &str) -> String {
        self.send(line).await;
        self.reply().await
    }

    pub async fn reply(&mut self) -> String {
        match self.next(Duration::from_secs(60)).await {
            Got::Reply(reply) => reply,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn complete_reply(&self) -> Option<usize> {
        let mut start = 0;
        while let Some(end) = self.buffer[start..].windows(2).position(|w| w == b"\r\n") {
            let line = &self.buffer[start..start + end];
            start += end + 2;
            if line.len() < 4 || line[3] != b'-' {
                return Some(start);
            }
        }
        None
    }

    /// The next reply, the end of the stream, or nothing within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Got {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(end) = self.complete_reply() {
                let reply: Vec<u8> = self.buffer.drain(..end).collect();
                let text = String::from_utf8_lossy(&reply)
                    .trim_end()
                    .replace("\r\n", "\n");
                return Got::Reply(text);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Got::Nothing,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return Got::Closed(String::from_utf8_lossy(&self.buffer).into_owned());
                }
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads one octet at a time until CRLF, noting when each arrived.
    pub async fn line_octets(&mut self) -> Vec<(u8, Instant)> {
        let mut out = Vec::new();
        loop {
            let mut octet = [0u8; 1];
            let n = timeout(Duration::from_secs(120), self.stream.read(&mut octet))
                .await
                .expect("octet in time")
                .expect("read");
            assert_eq!(n, 1, "closed after {out:?}");
            out.push((octet[0], Instant::now()));
            if out.len() >= 2 && out[out.len() - 2].0 == b'\r' && octet[0] == b'\n' {
                return out;
            }
        }
    }

    /// Sends a whole message after DATA's 354 and returns the final reply.
    pub async fn message(&mut self, from: &str, to: &[&str], content: &str) -> String {
        let mail = self.command(&format!("MAIL FROM:<{from}>")).await;
        assert!(mail.starts_with("250"), "MAIL: {mail}");
        for rcpt in to {
            let reply = self.command(&format!("RCPT TO:<{rcpt}>")).await;
            assert!(reply.starts_with("250"), "RCPT: {reply}");
        }
        let data = self.command("DATA").await;
        assert!(data.starts_with("354"), "DATA: {data}");
        self.stream
            .write_all(format!("{content}\r\n.\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }
}
