//! Where `ferry serve` puts accepted messages: a Maildir, or nowhere
//! (`--sink`).

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use bytes::Bytes;

use crate::maildir::{self, Delivery, Maildir, Received, TraceHeaders};

/// The destination of accepted messages.
#[derive(Debug, Clone)]
pub enum Store {
    /// Deliver into this Maildir.
    Maildir(Maildir),
    /// Accept and discard.
    Sink,
}

/// What the server knows about one transaction when its data begins.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// The reverse-path; `None` for `<>`.
    pub sender: Option<&'a str>,
    /// The accepted forward-paths, in order.
    pub recipients: &'a [String],
    /// The HELO/EHLO/LHLO name.
    pub helo: &'a str,
    /// The client's address.
    pub peer: IpAddr,
    /// The protocol type for the Received field's `with` clause (RFC 3848,
    /// RFC 6531 §3.7.3), as `smtp_server::Envelope::protocol` names it.
    pub protocol: &'a str,
    /// True in `--lmtp` mode: one copy per recipient.
    pub lmtp: bool,
    /// The transaction id for the Received field.
    pub id: &'a str,
}

/// The header block of every copy: one for SMTP (all recipients), one per
/// recipient for LMTP (RFC 2033 §4.2: each recipient gets its own
/// delivery and reply).
pub fn copies(envelope: &Envelope<'_>, by: &str, date: &str) -> Vec<Vec<u8>> {
    let with = envelope.protocol;
    let copy = |recipients: &[String]| {
        let received = Received {
            helo: envelope.helo,
            peer: envelope.peer,
            by,
            with,
            id: envelope.id,
            for_rcpt: match recipients {
                [only] => Some(only.as_str()),
                _ => None,
            },
            date,
        };
        TraceHeaders {
            return_path: envelope.sender.map(str::to_owned),
            delivered_to: recipients.to_vec(),
            received: received.value(),
        }
        .to_bytes()
    };
    if envelope.lmtp {
        envelope
            .recipients
            .iter()
            .map(|r| copy(std::slice::from_ref(r)))
            .collect()
    } else {
        vec![copy(envelope.recipients)]
    }
}

/// A message being stored.
#[derive(Debug)]
pub enum Incoming {
    /// Being written into a Maildir.
    Maildir(Delivery),
    /// Being discarded; counts octets.
    Sink(u64),
}

impl Store {
    /// Starts storing a message for `envelope`; `by` is this server's name.
    pub async fn begin(&self, envelope: &Envelope<'_>, by: &str) -> io::Result<Incoming> {
        match self {
            Store::Maildir(maildir) => {
                let copies = copies(envelope, by, &maildir::rfc5322_now());
                Ok(Incoming::Maildir(maildir.begin(copies).await?))
            }
            Store::Sink => Ok(Incoming::Sink(0)),
        }
    }
}

impl Incoming {
    /// Adds a body chunk.
    pub async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        match self {
            Incoming::Maildir(delivery) => delivery.write(chunk).await,
            Incoming::Sink(size) => {
                *size += chunk.len() as u64;
                Ok(())
            }
        }
    }

    /// Makes the message durable; returns the stored files (none for the
    /// sink). After `Ok` the server may say 250.
    pub async fn commit(self) -> io::Result<Vec<PathBuf>> {
        match self {
            Incoming::Maildir(delivery) => delivery.commit().await,
            Incoming::Sink(_) => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope<'a>(recipients: &'a [String], lmtp: bool) -> Envelope<'a> {
        Envelope {
            sender: Some("alice@example.com"),
            recipients,
            helo: "client.example",
            peer: "127.0.0.1".parse().unwrap(),
            protocol: if lmtp { "LMTP" } else { "ESMTP" },
            lmtp,
            id: "id1",
        }
    }

    const DATE: &str = "Thu, 1 Jan 1970 00:00:00 +0000";

    #[test]
    fn smtp_one_copy_for_all() {
        let rcpts = vec!["bob@example.com".to_owned(), "carol@example.com".to_owned()];
        let copies = copies(&envelope(&rcpts, false), "mx.example", DATE);
        assert_eq!(copies.len(), 1);
        assert_eq!(
            String::from_utf8(copies[0].clone()).unwrap(),
            "Return-Path: <alice@example.com>\r\n\
             Delivered-To: bob@example.com\r\n\
             Delivered-To: carol@example.com\r\n\
             Received: from client.example ([127.0.0.1])\r\n\
             \tby mx.example (ferry) with ESMTP id id1; Thu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn lmtp_one_copy_per_recipient() {
        let rcpts = vec!["bob@example.com".to_owned(), "carol@example.com".to_owned()];
        let copies = copies(&envelope(&rcpts, true), "mx.example", DATE);
        assert_eq!(copies.len(), 2);
        let second = String::from_utf8(copies[1].clone()).unwrap();
        assert!(second.contains("Delivered-To: carol@example.com\r\n"));
        assert!(!second.contains("bob@"));
        assert!(second.contains("with LMTP id id1\r\n\tfor <carol@example.com>;"));
    }

    #[tokio::test]
    async fn maildir_and_sink() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Maildir(Maildir::open(dir.path(), "mx").unwrap());
        let rcpts = vec!["bob@example.com".to_owned()];
        let env = envelope(&rcpts, false);
        let mut incoming = store.begin(&env, "mx.example").await.unwrap();
        incoming
            .write(Bytes::from_static(b"Subject: x\r\n\r\nhi\r\n"))
            .await
            .unwrap();
        let paths = incoming.commit().await.unwrap();
        let stored = std::fs::read(&paths[0]).unwrap();
        assert!(stored.starts_with(b"Return-Path: <alice@example.com>\r\nDelivered-To: bob@example.com\r\nReceived: from client.example ([127.0.0.1])\r\n\tby mx.example (ferry) with ESMTP id id1\r\n\tfor <bob@example.com>; "));
        assert!(stored.ends_with(b"\r\nSubject: x\r\n\r\nhi\r\n"));

        let mut sink = Store::Sink.begin(&env, "mx").await.unwrap();
        sink.write(Bytes::from_static(b"abc")).await.unwrap();
        assert!(matches!(sink, Incoming::Sink(3)));
        assert!(sink.commit().await.unwrap().is_empty());
    }
}
