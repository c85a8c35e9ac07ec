//! Core SMTP over an in-memory stream: sequencing, DATA, limits, errors.
// Limits and Extensions are non_exhaustive: tests set fields one by one.
#![allow(clippy::field_reassign_with_default)]

mod common;

use common::{Behavior, TestBackend, builder, connect};
use smtp_server::smtp_proto::EnhancedCode;
use smtp_server::{BareLineEndings, BodyError, ConfigError, Extensions, Limits, SmtpError};

#[tokio::test]
async fn whole_transaction_with_exact_replies_and_stored_message() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    assert_eq!(client.reply().await, "220 mx.test ESMTP ready\r\n");
    client.send("EHLO client.test\r\n").await;
    let ehlo = client.reply().await;
    for keyword in [
        "250-mx.test",
        "PIPELINING",
        "SIZE 33554432",
        "8BITMIME",
        "CHUNKING",
        "BINARYMIME",
        "SMTPUTF8",
        "DSN",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(ehlo.contains(keyword), "{keyword} missing from {ehlo:?}");
    }
    // Not offered: no TLS configured, REQUIRETLS only over TLS, no AUTH.
    for keyword in ["STARTTLS", "REQUIRETLS", "AUTH"] {
        assert!(!ehlo.contains(keyword), "{keyword} offered in {ehlo:?}");
    }
    client
        .send("MAIL FROM:<alice@example.org> SIZE=100\r\n")
        .await;
    assert_eq!(client.reply().await, "250 2.1.0 Sender OK\r\n");
    client
        .send("RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE\r\n")
        .await;
    assert_eq!(client.reply().await, "250 2.1.5 Recipient OK\r\n");
    client.send("DATA\r\n").await;
    client.expect("354 ").await;
    client
        .send("Subject: hi\r\n\r\n..leading dot\r\nend\r\n.\r\n")
        .await;
    assert_eq!(client.reply().await, "250 2.0.0 Message accepted\r\n");
    client.send("QUIT\r\n").await;
    client.expect("221 2.0.0").await;
    client.expect_closed().await;

    let messages = backend.messages();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.body, b"Subject: hi\r\n\r\n.leading dot\r\nend\r\n");
    assert_eq!(message.error, None);
    assert_eq!(
        message.envelope.from.as_ref().unwrap().as_str(),
        "alice@example.org"
    );
    assert_eq!(message.envelope.recipients.len(), 1);
    assert_eq!(
        message.envelope.recipients[0].address.as_str(),
        "bob@example.net"
    );
    assert!(message.envelope.recipients[0].parameters.notify.is_some());
    assert_eq!(message.envelope.mail_parameters.size, Some(100));
    assert_eq!(message.envelope.helo, "client.test");
    assert_eq!(message.envelope.protocol(), "ESMTP");
    assert_eq!(
        backend.events(),
        [
            "helo client.test",
            "mail alice@example.org",
            "rcpt bob@example.net",
            "quit",
            "close"
        ]
    );
}

#[tokio::test]
async fn pipelined_group_is_answered_in_order() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.expect("220 ").await;
    client
        .send("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nNOOP\r\nDATA\r\n")
        .await;
    client.expect("250-mx.test").await;
    assert_eq!(client.reply().await, "250 2.1.0 Sender OK\r\n");
    assert_eq!(client.reply().await, "250 2.1.5 Recipient OK\r\n");
    assert_eq!(client.reply().await, "250 2.1.5 Recipient OK\r\n");
    assert_eq!(client.reply().await, "250 2.0.0 OK\r\n");
    client.expect("354 ").await;
    client.send("hello\r\n.\r\nRSET\r\nQUIT\r\n").await;
    client.expect("250 2.0.0 Message accepted").await;
    client.expect("250 2.0.0 OK").await;
    client.expect("221 ").await;
    let messages = backend.messages();
    assert_eq!(messages[0].envelope.from, None, "null reverse-path");
    assert_eq!(messages[0].envelope.recipients.len(), 2);
    assert_eq!(messages[0].body, b"hello\r\n");
}

#[tokio::test]
async fn whole_bdat_transaction_in_one_write() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.expect("220 ").await;
    client
        .send("EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nBDAT 5\r\nhel.oBDAT 5 LAST\r\n\r\n.\r\nQUIT\r\n")
        .await;
    client.expect("250-mx.test").await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    assert_eq!(client.reply().await, "250 2.0.0 5 octets received\r\n");
    assert_eq!(client.reply().await, "250 2.0.0 Message accepted\r\n");
    client.expect("221 ").await;
    assert_eq!(
        backend.messages()[0].body,
        b"hel.o\r\n.\r\n",
        "BDAT is not unstuffed"
    );
}

/// The same session must give the same replies and message however the
/// bytes are split.
#[tokio::test]
async fn input_split_at_every_offset_and_byte_by_byte() {
    let script: &[u8] = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nBDAT 8 LAST\r\nab\r\ncd\r\nNOOP\r\nQUIT\r\n";
    let mut expected: Option<String> = None;
    for split in 0..=script.len() {
        let backend = TestBackend::new();
        let server = builder(&backend).build().unwrap();
        let mut client = connect(&server);
        client.expect("220 ").await;
        client.send(&script[..split]).await;
        tokio::task::yield_now().await;
        client.send(&script[split..]).await;
        let mut replies = String::new();
        for _ in 0..6 {
            replies.push_str(&client.reply().await);
        }
        client.expect_closed().await;
        assert_eq!(backend.messages()[0].body, b"ab\r\ncd\r\n");
        match &expected {
            None => expected = Some(replies),
            Some(expected) => assert_eq!(&replies, expected, "split at {split}"),
        }
    }
    assert!(
        expected
            .unwrap()
            .ends_with("221 2.0.0 mx.test closing connection\r\n")
    );

    // DATA, one byte per write.
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.expect("220 ").await;
    for &byte in b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n" {
        client.send([byte]).await;
    }
    client.expect("250-").await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354 ").await;
    for &byte in b"line\r\n..dot\r\n.\r\n" {
        client.send([byte]).await;
    }
    client.expect("250 2.0.0").await;
    assert_eq!(backend.messages()[0].body, b"line\r\n.dot\r\n");
}

#[tokio::test]
async fn sequencing_errors_are_503() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.expect("220 ").await;
    client.send("MAIL FROM:<a@x.test>\r\n").await;
    assert_eq!(client.reply().await, "503 5.5.1 Send HELO/EHLO first\r\n");
    client.send("RCPT TO:<a@x.test>\r\n").await;
    client.expect("503 5.5.1").await;
    client.send("DATA\r\n").await;
    client.expect("503 5.5.1").await;
    client.send("HELO c\r\n").await;
    assert_eq!(client.reply().await, "250 mx.test\r\n");
    client.send("MAIL FROM:<a@x.test>\r\n").await;
    client.expect("250 2.1.0").await;
    client.send("MAIL FROM:<a@x.test>\r\n").await;
    client.expect("503 5.5.1").await;
    client.send("DATA\r\n").await;
    assert_eq!(client.reply().await, "554 5.5.1 No valid recipients\r\n");
    client.send("RSET\r\n").await;
    client.expect("250 2.0.0").await;
    client.send("RCPT TO:<a@x.test>\r\n").await;
    client.expect("503 5.5.1").await;
    // A new greeting resets the transaction (RFC 5321 §4.1.4).
    client
        .send("MAIL FROM:<a@x.test>\r\nEHLO again\r\nRCPT TO:<b@x.test>\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250-mx.test").await;
    client.expect("503 5.5.1").await;
    assert!(backend.events().contains(&"reset".to_owned()));
}

#[tokio::test]
async fn syntax_errors_use_the_protocol_mapping() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client.send("FROB\r\n").await;
    client.expect("500 5.5.1").await;
    client.send("MAIL FROM:<not an address>\r\n").await;
    client.expect("501 5.1.7").await;
    client.send("MAIL FROM:<a@x.test> FROB=1\r\n").await;
    client.expect("555 5.5.4").await;
    client.send("MAIL FROM:<a@x.test>\r\n").await;
    client.expect("250 2.1.0").await;
    client.send("RCPT TO:<@@>\r\n").await;
    client.expect("501 5.1.3").await;
    // A bare LF inside a command line: 550 5.5.2 (SMTP smuggling).
    client.send("NOOP\nRSET\r\n").await;
    client.expect("550 5.5.2").await;
    // Over-long line: one 500 5.5.2, and the session goes on.
    client
        .send(format!("NOOP {}\r\nNOOP\r\n", "x".repeat(3000)))
        .await;
    client.expect("500 5.5.2").await;
    client.expect("250 2.0.0").await;
    client.send("VRFY bob\r\n").await;
    client.expect("252 2.5.0").await;
    client.send("EXPN list\r\n").await;
    client.expect("502 5.5.1").await;
    client.send("HELP\r\n").await;
    client.expect("214 2.0.0").await;
}

#[tokio::test]
async fn unknown_extension_parameters_are_refused_when_turned_off() {
    let backend = TestBackend::new();
    let mut extensions = Extensions::default();
    extensions.dsn = false;
    extensions.smtputf8 = false;
    extensions.eight_bit_mime = false;
    extensions.chunking = false;
    extensions.pipelining = false;
    let server = builder(&backend).extensions(extensions).build().unwrap();
    let mut client = connect(&server);
    let ehlo = client.hello().await;
    for keyword in ["DSN", "SMTPUTF8", "8BITMIME", "CHUNKING", "PIPELINING"] {
        assert!(!ehlo.contains(keyword), "{keyword} in {ehlo:?}");
    }
    client.send("MAIL FROM:<a@x.test> RET=HDRS\r\n").await;
    client.expect("555 5.5.4").await;
    client.send("MAIL FROM:<a@x.test> BODY=8BITMIME\r\n").await;
    client.expect("555 5.5.4").await;
    client.send("MAIL FROM:<a@x.test> SMTPUTF8\r\n").await;
    client.expect("555 5.5.4").await;
    client.send("MAIL FROM:<a@x.test>\r\n").await;
    client.expect("250 2.1.0").await;
    client.send("RCPT TO:<b@x.test> NOTIFY=NEVER\r\n").await;
    client.expect("555 5.5.4").await;
    client.send("RCPT TO:<b@x.test>\r\n").await;
    client.expect("250 2.1.5").await;
    // BDAT is not offered; its chunk is still consumed.
    client.send("BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n").await;
    client.expect("502 5.5.1").await;
    client.expect("250 2.0.0").await;
}

#[tokio::test]
async fn utf8_addresses_need_smtputf8() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client.send("MAIL FROM:<jörg@example.de>\r\n").await;
    client.expect("553 5.6.7").await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<jörg@example.de>\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("553 5.6.7").await;
    client
        .send("RSET\r\nMAIL FROM:<jörg@example.de> SMTPUTF8\r\nRCPT TO:<jörg@example.de>\r\n")
        .await;
    client.expect("250 2.0.0").await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
}

#[tokio::test]
async fn recipient_limit_keeps_earlier_recipients() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client.send("MAIL FROM:<a@x.test>\r\n").await;
    client.expect("250 2.1.0").await;
    let mut batch = String::new();
    for index in 0..101 {
        batch.push_str(&format!("RCPT TO:<user{index}@x.test>\r\n"));
    }
    client.send(batch).await;
    for _ in 0..100 {
        client.expect("250 2.1.5").await;
    }
    assert_eq!(client.reply().await, "452 4.5.3 Too many recipients\r\n");
    client.send("DATA\r\n").await;
    client.expect("354").await;
    client.send("x\r\n.\r\n").await;
    client.expect("250 2.0.0").await;
    let message = &backend.messages()[0];
    assert_eq!(message.envelope.recipients.len(), 100);
    assert_eq!(
        message.envelope.recipients[99].address.as_str(),
        "user99@x.test"
    );
}

#[tokio::test]
async fn a_recipient_limit_below_the_rfc_default_is_honoured() {
    // RFC 5321's 100 is the default, not a floor (submission services cap
    // recipients far lower); the config structs take `..Default::default()`.
    let backend = TestBackend::new();
    let limits = Limits {
        max_recipients: 5,
        ..Limits::default()
    };
    let server = builder(&backend).limits(limits).build().unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client.send("MAIL FROM:<a@x.test>\r\n").await;
    client.expect("250 2.1.0").await;
    let mut batch = String::new();
    for index in 0..6 {
        batch.push_str(&format!("RCPT TO:<user{index}@x.test>\r\n"));
    }
    client.send(batch).await;
    for _ in 0..5 {
        client.expect("250 2.1.5").await;
    }
    assert_eq!(client.reply().await, "452 4.5.3 Too many recipients\r\n");
    client.send("DATA\r\n").await;
    client.expect("354").await;
    client.send("x\r\n.\r\n").await;
    client.expect("250 2.0.0").await;
    assert_eq!(backend.messages()[0].envelope.recipients.len(), 5);
}

#[tokio::test]
async fn size_limit_is_enforced_while_streaming_and_the_session_goes_on() {
    let backend = TestBackend::new();
    let mut limits = Limits::default();
    limits.max_message_size = 100;
    let server = builder(&backend).limits(limits).build().unwrap();
    let mut client = connect(&server);
    let ehlo = client.hello().await;
    assert!(ehlo.contains("SIZE 100\r\n"));
    client.send("MAIL FROM:<a@x.test> SIZE=101\r\n").await;
    assert_eq!(
        client.reply().await,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    // Twenty digits past u64::MAX are still a size, just too large.
    client
        .send("MAIL FROM:<a@x.test> SIZE=99999999999999999999\r\n")
        .await;
    client.expect("552 5.3.4").await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
    let line = format!("{}\r\n", "y".repeat(60));
    client.send(format!("{line}{line}{line}.\r\n")).await;
    client.expect("552 5.3.4").await;
    let message = &backend.messages()[0];
    assert_eq!(message.error, Some(BodyError::TooLarge));
    assert!(
        message.body.len() <= 100,
        "nothing past the limit reaches the handler"
    );

    // The session stays usable; BDAT over the limit too.
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nBDAT 101 LAST\r\n")
        .await;
    client.send(vec![b'z'; 101]).await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("552 5.3.4").await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
    client.send("small\r\n.\r\n").await;
    client.expect("250 2.0.0").await;
    assert_eq!(backend.messages().len(), 3);
    assert_eq!(backend.messages()[2].body, b"small\r\n");
}

/// Every way to fake an end of data with bare CR or LF: none ends DATA,
/// and the message is refused whole, so the smuggled commands are never
/// run.
#[tokio::test]
async fn smuggling_variants_never_end_data() {
    let variants: &[&[u8]] = &[
        b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\r", b"\r.\n", b"\n.\r", b"\r.\r\n",
    ];
    for variant in variants {
        let backend = TestBackend::new();
        let server = builder(&backend).build().unwrap();
        let mut client = connect(&server);
        client.hello().await;
        client
            .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
            .await;
        client.expect("250 2.1.0").await;
        client.expect("250 2.1.5").await;
        client.expect("354").await;
        let mut body = b"Subject: legit\r\n\r\nbody".to_vec();
        body.extend_from_slice(variant);
        body.extend_from_slice(
            b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@x.test>\r\nDATA\r\nsmuggled\r\n.\r\n",
        );
        client.send(&body).await;
        let reply = client.reply().await;
        assert!(
            reply.starts_with("550 5.5.2"),
            "{:?}: {reply:?}",
            String::from_utf8_lossy(variant)
        );
        client.send("NOOP\r\n").await;
        client.expect("250 2.0.0").await;
        assert_eq!(backend.messages().len(), 1);
        assert_eq!(backend.messages()[0].error, Some(BodyError::BareLineEnding));
        assert!(!backend.events().iter().any(|e| e.contains("evil")));
    }
}

#[tokio::test]
async fn bare_line_endings_can_be_accepted_but_still_never_end_data() {
    let backend = TestBackend::new();
    let server = builder(&backend)
        .bare_line_endings(BareLineEndings::Accept)
        .build()
        .unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
    client.send("a\n.\nMAIL FROM:<evil@x.test>\r\n.\r\n").await;
    client.expect("250 2.0.0").await;
    assert_eq!(backend.messages().len(), 1);
    assert_eq!(
        backend.messages()[0].body,
        b"a\n.\nMAIL FROM:<evil@x.test>\r\n"
    );
}

#[tokio::test]
async fn message_data_before_354_is_refused_and_closed() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\nSubject: blind\r\n\r\n.\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    assert_eq!(
        client.reply().await,
        "554 5.5.0 Protocol error: data sent before the 354 reply\r\n"
    );
    client.expect_closed().await;
    assert!(backend.messages().is_empty());
}

#[tokio::test]
async fn talking_before_the_greeting_is_refused() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let (mut client_side, server_side) = tokio::io::duplex(4096);
    tokio::io::AsyncWriteExt::write_all(&mut client_side, b"EHLO eager\r\n")
        .await
        .unwrap();
    let info = smtp_server::ConnectionInfo::new(
        "192.0.2.10:1".parse().unwrap(),
        "192.0.2.1:25".parse().unwrap(),
    );
    tokio::spawn(async move { server.serve_connection(server_side, info).await });
    let mut client = common::Client::new(client_side);
    assert_eq!(
        client.reply().await,
        "554 5.5.0 Protocol error: talking before the greeting\r\n"
    );
    client.expect_closed().await;
    assert!(!backend.events().iter().any(|e| e.starts_with("helo")));
}

#[tokio::test]
async fn error_limit_closes_with_421() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.expect("220").await;
    client.send("BOGUS\r\n".repeat(25)).await;
    for _ in 0..20 {
        client.expect("500 5.5.1").await;
    }
    assert_eq!(
        client.reply().await,
        "421 4.7.0 mx.test Error: too many errors\r\n"
    );
    client.expect_closed().await;
}

#[tokio::test]
async fn hook_errors_become_their_replies() {
    let mut behavior = Behavior::default();
    behavior.unknown_users = vec!["nobody@x.test".into()];
    behavior.broken_rcpt = Some("broken@x.test".into());
    behavior.data_result = Some(SmtpError::new(
        554,
        EnhancedCode::new(5, 7, 1),
        "Spam detected",
    ));
    let backend = TestBackend::with(behavior);
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<nobody@x.test>\r\nRCPT TO:<broken@x.test>\r\nRCPT TO:<ok@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    assert_eq!(client.reply().await, "550 5.1.1 No such user\r\n");
    client.expect("451 4.3.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
    client.send("spam\r\n.\r\n").await;
    assert_eq!(client.reply().await, "554 5.7.1 Spam detected\r\n");
    assert_eq!(backend.messages()[0].envelope.recipients.len(), 1);
}

#[tokio::test]
async fn internal_error_after_data_is_554() {
    let mut behavior = Behavior::default();
    behavior.data_result = Some(SmtpError::other(std::io::Error::other("disk full")));
    let backend = TestBackend::with(behavior);
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
    client.send("x\r\n.\r\n").await;
    client.expect("554 5.3.0").await;
}

#[tokio::test]
async fn handler_that_returns_early_still_gets_a_checked_message() {
    let mut behavior = Behavior::default();
    behavior.data_returns_early = true;
    let backend = TestBackend::with(behavior);
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
    let big = "z".repeat(200_000);
    client.send(format!("{big}\r\n.\r\n")).await;
    client.expect("250 2.0.0").await;
    // A bare LF after the handler said Ok is still refused.
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
    client.send("bad\nline\r\n.\r\n").await;
    client.expect("550 5.5.2").await;
}

#[tokio::test]
async fn panicking_hook_closes_only_its_connection() {
    let mut behavior = Behavior::default();
    behavior.panic_rcpt = Some("boom@x.test".into());
    let backend = TestBackend::with(behavior);
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<boom@x.test>\r\n")
        .await;
    client.expect("250 2.1.0").await;
    assert_eq!(
        client.reply().await,
        "421 4.3.0 Internal error, closing connection\r\n"
    );
    client.expect_closed().await;
    // The server goes on.
    let mut other = connect(&server);
    other.hello().await;
    other
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<fine@x.test>\r\n")
        .await;
    other.expect("250 2.1.0").await;
    other.expect("250 2.1.5").await;
}

#[tokio::test]
async fn panicking_data_handler_gives_421() {
    let mut behavior = Behavior::default();
    behavior.data_panic = true;
    let backend = TestBackend::with(behavior);
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
    client.send("x\r\n.\r\n").await;
    client.expect("421 4.3.0").await;
    client.expect_closed().await;
}

#[tokio::test]
async fn bdat_rules() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.hello().await;
    // A chunk in a bad state is consumed, then refused.
    client.send("BDAT 6\r\nQUIT\r\nNOOP\r\n").await;
    client.expect("503 5.5.1").await;
    client.expect("250 2.0.0").await;
    client
        .send("MAIL FROM:<a@x.test>\r\nBDAT 4 LAST\r\nRSET")
        .await;
    client.expect("250 2.1.0").await;
    assert_eq!(client.reply().await, "554 5.5.1 No valid recipients\r\n");
    client
        .send("RSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nBDAT 3\r\nabcDATA\r\n")
        .await;
    client.expect("250 2.0.0").await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("250 2.0.0 3 octets received").await;
    // DATA after BDAT is a sequence error; the transfer goes on.
    client.expect("503 5.5.1").await;
    client.send("BDAT 0 LAST\r\n").await;
    client.expect("250 2.0.0 Message accepted").await;
    assert_eq!(backend.messages()[0].body, b"abc");
    // Bare LF in BDAT: refused like DATA...
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nBDAT 4 LAST\r\na\nb\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("550 5.5.2").await;
    // ...unless BODY=BINARYMIME.
    client
        .send("MAIL FROM:<a@x.test> BODY=BINARYMIME\r\nRCPT TO:<b@x.test>\r\nDATA\r\nBDAT 4 LAST\r\na\nb\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client
        .expect("503 5.5.1 BODY=BINARYMIME requires BDAT")
        .await;
    client.expect("250 2.0.0 Message accepted").await;
    let last = backend.messages().pop().unwrap();
    assert_eq!(last.body, b"a\nb\n");
    // RSET in the middle of a BDAT transfer aborts the message.
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nBDAT 2\r\nhiRSET\r\nBDAT 1 LAST\r\nx")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("250 2.0.0 2 octets").await;
    client.expect("250 2.0.0 OK").await;
    client.expect("503 5.5.1").await;
    let aborted = backend.messages().pop().unwrap();
    assert_eq!(aborted.error, Some(BodyError::Aborted));
}

#[tokio::test]
async fn lmtp_data_without_a_recipient_is_a_bad_sequence() {
    // RFC 2033 §4.2: 503, where SMTP says 554.
    let backend = TestBackend::new();
    let server = builder(&backend).lmtp(true).build().unwrap();
    let mut client = connect(&server);
    client.expect("220").await;
    client.send("MAIL FROM:<a@x.test>\r\n").await;
    assert_eq!(client.reply().await, "503 5.5.1 Send LHLO first\r\n");
    client.send("LHLO c\r\n").await;
    client.expect("250-mx.test").await;
    client.send("MAIL FROM:<a@x.test>\r\nDATA\r\n").await;
    client.expect("250 2.1.0").await;
    client.expect("503 5.5.1").await;
    client.send("BDAT 2 LAST\r\nhi").await;
    client.expect("503 5.5.1").await;
    assert!(backend.messages().is_empty());
}

#[test]
fn smtputf8_without_8bitmime_is_a_configuration_error() {
    let backend = TestBackend::new();
    let mut extensions = Extensions::default();
    extensions.eight_bit_mime = false;
    assert!(matches!(
        builder(&backend).extensions(extensions).build(),
        Err(ConfigError::Smtputf8WithoutEightBitMime)
    ));
}

#[tokio::test]
async fn lmtp_gives_one_reply_per_recipient() {
    let mut behavior = Behavior::default();
    behavior.lmtp_failures = vec!["full@x.test".into()];
    let backend = TestBackend::with(behavior);
    let server = builder(&backend).lmtp(true).build().unwrap();
    let mut client = connect(&server);
    assert_eq!(client.reply().await, "220 mx.test LMTP ready\r\n");
    client.send("EHLO c\r\n").await;
    client.expect("500 5.5.1").await;
    client.send("LHLO c\r\n").await;
    client.expect("250-mx.test").await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<one@x.test>\r\nRCPT TO:<full@x.test>\r\nRCPT TO:<two@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    for _ in 0..3 {
        client.expect("250 2.1.5").await;
    }
    client.expect("354").await;
    client.send("hi\r\n.\r\n").await;
    assert_eq!(
        client.reply().await,
        "250 2.0.0 <one@x.test> Message accepted\r\n"
    );
    assert_eq!(client.reply().await, "452 4.2.2 Mailbox full\r\n");
    assert_eq!(
        client.reply().await,
        "250 2.0.0 <two@x.test> Message accepted\r\n"
    );
    // Size violations are reported per recipient too.
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<one@x.test>\r\nRCPT TO:<two@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
    client.send("bare\nlf\r\n.\r\n").await;
    client.expect("550 5.5.2").await;
    client.expect("550 5.5.2").await;
    assert_eq!(backend.messages()[0].envelope.protocol(), "LMTP");
}

#[tokio::test]
async fn vrfy_rset_noop_and_close_hooks() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRSET\r\nQUIT\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.0.0").await;
    client.expect("221 2.0.0").await;
    client.expect_closed().await;
    tokio::task::yield_now().await;
    assert_eq!(
        backend.events(),
        [
            "helo client.test",
            "mail a@x.test",
            "reset",
            "quit",
            "close"
        ]
    );
}

#[tokio::test]
async fn the_quit_hook_runs_before_the_221_and_its_error_replaces_it() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.expect("220 ").await;
    client.send("QUIT\r\n").await;
    client.expect("221 2.0.0").await;
    client.expect_closed().await;
    assert!(backend.events().iter().any(|event| event == "quit"));

    let mut behavior = Behavior::default();
    behavior.quit_result = Some(SmtpError::new(
        421,
        EnhancedCode::new(4, 3, 2),
        "Going away",
    ));
    let backend = TestBackend::with(behavior);
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.expect("220 ").await;
    client.send("QUIT\r\n").await;
    assert_eq!(client.reply().await, "421 4.3.2 Going away\r\n");
    client.expect_closed().await;
}
