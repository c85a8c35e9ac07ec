//! Sending over plaintext connections against scripted servers.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Script, config, serve};
use smtp_client::{
    Address, BodyType, Client, Connection, Direction, Envelope, ErrorKind, Message, Notify,
    Protocol, Recipient, Ret, Step,
};

fn mailbox(text: &str) -> Address {
    text.parse().expect("address")
}

fn envelope(to: &[&str]) -> Envelope {
    Envelope::new(
        mailbox("alice@example.com"),
        to.iter().map(|to| mailbox(to)),
    )
    .expect("envelope")
}

const PIPELINING: &[&str] = &[
    "PIPELINING",
    "8BITMIME",
    "SIZE 1000000",
    "ENHANCEDSTATUSCODES",
];

#[tokio::test]
async fn pipelining_sends_mail_rcpt_and_data_in_one_write() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(PIPELINING).await;
        // All four commands arrive before any reply is sent: if the client
        // waited for the MAIL reply, this would stall and fail.
        // SIZE counts the message as sent: 33 octets, five line ends made CRLF.
        s.expect("MAIL FROM:<alice@example.com> SIZE=38").await;
        s.expect("RCPT TO:<bob@example.org>").await;
        s.expect("RCPT TO:<carol@example.org>").await;
        s.expect("DATA").await;
        s.send_raw(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
            .await;
        let body = s.read_data().await;
        s.send("250 2.0.0 queued as 1").await;
        s.quit().await;
        body
    })
    .await;
    let config = config(addr).build().unwrap();
    let mut connection = Connection::connect(&config).await.unwrap();
    assert!(connection.capabilities().pipelining);
    let result = connection
        .send(
            &envelope(&["bob@example.org", "carol@example.org"]),
            "Subject: t\n\n.leading dot\nbare\rcr\n",
        )
        .await
        .unwrap();
    connection.quit().await.unwrap();
    assert!(result.is_complete());
    assert_eq!(result.transactions, 1);
    assert_eq!(result.reply.as_ref().unwrap().code(), 250);
    assert_eq!(result.recipients.len(), 2);
    let body = server.await.unwrap();
    assert_eq!(body, b"Subject: t\r\n\r\n..leading dot\r\nbare\r\ncr\r\n");
}

#[tokio::test]
async fn without_pipelining_each_reply_is_awaited() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["8BITMIME"]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.expect_silence(Duration::from_millis(100)).await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<bob@example.org>").await;
        s.expect_silence(Duration::from_millis(100)).await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<carol@example.org>").await;
        s.send("250 ok").await;
        s.expect("DATA").await;
        s.expect_silence(Duration::from_millis(100)).await;
        s.send("354 go").await;
        let body = s.read_data().await;
        s.send("250 queued").await;
        s.quit().await;
        body
    })
    .await;
    let config = config(addr).build().unwrap();
    let client = Client::new(config);
    let result = client
        .send(
            &envelope(&["bob@example.org", "carol@example.org"]),
            "hello",
        )
        .await
        .unwrap();
    assert!(result.is_complete());
    assert_eq!(server.await.unwrap(), b"hello\r\n");
}

#[tokio::test]
async fn a_421_greeting_is_a_transient_error() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.send("421 4.3.2 busy, try later").await;
        s.expect_eof().await;
    })
    .await;
    let error = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Closed);
    assert_eq!(error.step(), Step::Greeting);
    assert_eq!(error.reply().unwrap().code(), 421);
    assert!(error.is_transient());
    server.await.unwrap();
}

#[tokio::test]
async fn a_554_greeting_is_permanent_and_the_client_quits() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.send("554 no service for you").await;
        s.expect("QUIT").await;
    })
    .await;
    let error = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Rejected);
    assert!(error.is_permanent());
    server.await.unwrap();
}

#[tokio::test]
async fn ehlo_falls_back_to_helo_on_502() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.send("220 old.example SMTP").await;
        s.expect("EHLO localhost").await;
        s.send("502 command not implemented").await;
        s.expect("HELO localhost").await;
        s.send("250 old.example").await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<bob@example.org>").await;
        s.send("250 ok").await;
        s.expect("DATA").await;
        s.send("354 go").await;
        s.read_data().await;
        s.send("250 ok").await;
        s.quit().await;
    })
    .await;
    let client = Client::new(config(addr).build().unwrap());
    let mut connection = client.connect().await.unwrap();
    assert!(!connection.is_extended());
    connection
        .send(&envelope(&["bob@example.org"]), "hi\r\n")
        .await
        .unwrap();
    connection.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn ehlo_rejected_otherwise_is_an_error_without_helo() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.send("220 x").await;
        s.expect("EHLO localhost").await;
        s.send("550 go away").await;
        s.expect("QUIT").await;
    })
    .await;
    let error = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Rejected, Step::Hello)
    );
    server.await.unwrap();
}

#[tokio::test]
async fn partial_rejection_is_success_with_rejections() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(PIPELINING).await;
        for _ in 0..4 {
            s.line().await;
        }
        s.send_raw(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
            .await;
        s.read_data().await;
        s.send("250 ok").await;
        s.quit().await;
    })
    .await;
    let client = Client::new(config(addr).build().unwrap());
    let result = client
        .send(&envelope(&["bob@example.org", "nobody@example.org"]), "x")
        .await
        .unwrap();
    assert!(!result.is_complete());
    let rejected: Vec<_> = result.rejected().collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].address.as_str(), "nobody@example.org");
    assert_eq!(rejected[0].reply.as_ref().unwrap().code(), 550);
    assert_eq!(result.accepted().count(), 1);
    server.await.unwrap();
}

#[tokio::test]
async fn total_rejection_sends_no_body_and_resets() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(PIPELINING).await;
        for _ in 0..4 {
            s.line().await;
        }
        s.send_raw(b"250 ok\r\n550 no\r\n450 4.2.1 later\r\n554 5.5.1 no valid recipients\r\n")
            .await;
        s.expect("RSET").await;
        s.send("250 ok").await;
        s.quit().await;
    })
    .await;
    let mut connection = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap();
    let error = connection
        .send(&envelope(&["a@example.org", "b@example.org"]), "x")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RecipientsRejected);
    assert_eq!(error.recipients().len(), 2);
    assert!(!error.is_transient(), "one rejection was permanent");
    assert!(connection.is_usable());
    connection.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn total_rejection_without_pipelining_never_sends_data() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&[]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<a@example.org>").await;
        s.send("450 4.2.1 try later").await;
        s.expect("RSET").await;
        s.send("250 ok").await;
        s.quit().await;
    })
    .await;
    let mut connection = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap();
    let error = connection
        .send(&envelope(&["a@example.org"]), "x")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RecipientsRejected);
    assert!(error.is_transient(), "every rejection was a 4xx");
    connection.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_354_with_no_accepted_recipient_gets_a_lone_dot() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(PIPELINING).await;
        for _ in 0..3 {
            s.line().await;
        }
        s.send_raw(b"250 ok\r\n550 no\r\n354 go anyway\r\n").await;
        assert!(s.read_data().await.is_empty());
        s.send("554 no recipients").await;
        s.expect("RSET").await;
        s.send("250 ok").await;
        s.quit().await;
    })
    .await;
    let mut connection = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap();
    let error = connection
        .send(&envelope(&["a@example.org"]), "x")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RecipientsRejected);
    connection.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn recipients_past_a_452_go_in_a_follow_up_transaction() {
    let total = 150;
    let (addr, server) = serve(move |mut s: Script| async move {
        s.greet(PIPELINING).await;
        // Replies go out as commands arrive, whatever the client's grouping.
        s.expect_prefix("MAIL FROM:").await;
        s.send("250 ok").await;
        for n in 0..total {
            s.expect(&format!("RCPT TO:<user{n}@example.org>")).await;
            if n < 100 {
                s.send("250 ok").await;
            } else {
                s.send("452 4.5.3 too many recipients").await;
            }
        }
        s.expect("DATA").await;
        s.send("354 go").await;
        let first = s.read_data().await;
        s.send("250 first batch").await;
        s.expect_prefix("MAIL FROM:").await;
        s.send("250 ok").await;
        for n in 100..total {
            s.expect(&format!("RCPT TO:<user{n}@example.org>")).await;
            s.send("250 ok").await;
        }
        s.expect("DATA").await;
        s.send("354 go").await;
        let second = s.read_data().await;
        s.send("250 second batch").await;
        s.quit().await;
        assert_eq!(first, second);
    })
    .await;
    let recipients: Vec<String> = (0..total).map(|n| format!("user{n}@example.org")).collect();
    let recipients: Vec<&str> = recipients.iter().map(String::as_str).collect();
    let client = Client::new(config(addr).build().unwrap());
    let result = client
        .send(&envelope(&recipients), "body\r\n")
        .await
        .unwrap();
    assert!(result.is_complete());
    assert_eq!(result.transactions, 2);
    assert_eq!(
        result.recipients[0].reply.as_ref().unwrap().text(),
        "first batch"
    );
    assert_eq!(
        result.recipients[120].reply.as_ref().unwrap().text(),
        "second batch"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn without_pipelining_a_452_stops_the_rcpts_until_the_next_transaction() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&[]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<a@example.org>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<b@example.org>").await;
        s.send("452 too many recipients").await;
        s.expect("DATA").await;
        s.send("354 go").await;
        s.read_data().await;
        s.send("250 one").await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<b@example.org>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<c@example.org>").await;
        s.send("250 ok").await;
        s.expect("DATA").await;
        s.send("354 go").await;
        s.read_data().await;
        s.send("250 two").await;
        s.quit().await;
    })
    .await;
    let client = Client::new(config(addr).build().unwrap());
    let result = client
        .send(
            &envelope(&["a@example.org", "b@example.org", "c@example.org"]),
            "x",
        )
        .await
        .unwrap();
    assert!(result.is_complete());
    assert_eq!(result.transactions, 2);
    server.await.unwrap();
}

#[tokio::test]
async fn an_old_style_552_too_many_recipients_is_deferred_like_452() {
    // RFC 5321 §4.5.3.1.10: clients treat 552 to RCPT as "too many", but
    // 552 5.2.2 (mailbox full) stays a rejection.
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&[]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<a@example.org>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<full@example.org>").await;
        s.send("552 5.2.2 mailbox full").await;
        s.expect("RCPT TO:<b@example.org>").await;
        s.send("552 too many recipients").await;
        s.expect("DATA").await;
        s.send("354 go").await;
        s.read_data().await;
        s.send("250 one").await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<b@example.org>").await;
        s.send("250 ok").await;
        s.expect("DATA").await;
        s.send("354 go").await;
        s.read_data().await;
        s.send("250 two").await;
        s.quit().await;
    })
    .await;
    let client = Client::new(config(addr).build().unwrap());
    let result = client
        .send(
            &envelope(&["a@example.org", "full@example.org", "b@example.org"]),
            "x",
        )
        .await
        .unwrap();
    assert_eq!(result.transactions, 2);
    let accepted: Vec<bool> = result.recipients.iter().map(|r| r.accepted).collect();
    assert_eq!(accepted, [true, false, true]);
    server.await.unwrap();
}

#[tokio::test]
async fn mail_rejection_and_data_end_rejection_are_errors() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(PIPELINING).await;
        for _ in 0..3 {
            s.line().await;
        }
        s.send_raw(b"550 5.7.1 sender refused\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n")
            .await;
        for _ in 0..3 {
            s.line().await;
        }
        s.send_raw(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
        s.read_data().await;
        s.send("451 4.3.0 local error").await;
        s.quit().await;
    })
    .await;
    let mut connection = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap();
    let error = connection
        .send(&envelope(&["a@example.org"]), "x")
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Rejected, Step::Mail)
    );
    assert!(error.is_permanent());
    let error = connection
        .send(&envelope(&["a@example.org"]), "x")
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Rejected, Step::DataEnd)
    );
    assert!(error.is_transient());
    assert_eq!(error.reply().unwrap().code(), 451);
    assert!(connection.is_usable());
    connection.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_421_mid_transaction_ends_the_connection() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(PIPELINING).await;
        for _ in 0..3 {
            s.line().await;
        }
        s.send("421 4.3.2 shutting down").await;
    })
    .await;
    let mut connection = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap();
    let error = connection
        .send(&envelope(&["a@example.org"]), "x")
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Closed, Step::Mail)
    );
    assert!(error.is_transient());
    assert!(!connection.is_usable());
    server.await.unwrap();
}

#[tokio::test]
async fn capabilities_are_checked_before_mail() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["SIZE 100", "PIPELINING"]).await;
        s.quit().await;
    })
    .await;
    let mut connection = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap();
    let too_big = connection
        .send(&envelope(&["a@example.org"]), vec![b'x'; 101])
        .await
        .unwrap_err();
    assert_eq!(too_big.kind(), ErrorKind::Unsupported);
    let eight_bit = connection
        .send(&envelope(&["a@example.org"]), "caf\u{e9}")
        .await
        .unwrap_err();
    assert_eq!(eight_bit.kind(), ErrorKind::Unsupported);
    let utf8 = Envelope::null_sender([mailbox("j\u{f6}rg@example.org")]).unwrap();
    let needs_utf8 = connection.send(&utf8, "x").await.unwrap_err();
    assert_eq!(needs_utf8.kind(), ErrorKind::Unsupported);
    let binary = connection
        .send(
            &envelope(&["a@example.org"]),
            Message::from("x").body_type(BodyType::BinaryMime),
        )
        .await
        .unwrap_err();
    assert_eq!(binary.kind(), ErrorKind::Unsupported);
    let requiretls = Envelope::builder()
        .to(mailbox("a@example.org"))
        .requiretls(true)
        .build()
        .unwrap();
    let over_plaintext = connection.send(&requiretls, "x").await.unwrap_err();
    assert_eq!(over_plaintext.kind(), ErrorKind::Unsupported);
    let declared_too_big = connection
        .send(
            &envelope(&["a@example.org"]),
            Message::from_reader(std::io::Cursor::new(Vec::new())).size(500),
        )
        .await
        .unwrap_err();
    assert_eq!(declared_too_big.kind(), ErrorKind::Unsupported);
    assert!(connection.is_usable());
    connection.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn extensions_add_their_parameters() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["PIPELINING", "8BITMIME", "SMTPUTF8", "DSN", "SIZE"])
            .await;
        let mail = s.line().await;
        let rcpt = s.line().await;
        s.expect("DATA").await;
        s.send_raw(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
        let body = s.read_data().await;
        s.send("250 ok").await;
        s.quit().await;
        (mail, rcpt, body)
    })
    .await;
    let envelope = Envelope::builder()
        .from(mailbox("alice@example.com"))
        .recipient(
            Recipient::from(mailbox("j\u{f6}rg@example.org"))
                .notify(Notify::On {
                    success: true,
                    failure: true,
                    delay: false,
                })
                .orcpt("rfc822", "jorg@example.org"),
        )
        .ret(Ret::Headers)
        .envid("id+1")
        .build()
        .unwrap();
    let client = Client::new(config(addr).build().unwrap());
    let result = client.send(&envelope, "caf\u{e9}\r\n").await.unwrap();
    assert!(result.dsn_offered, "the server offered DSN");
    let (mail, rcpt, body) = server.await.unwrap();
    for parameter in [
        "SIZE=7",
        "BODY=8BITMIME",
        "SMTPUTF8",
        "RET=HDRS",
        "ENVID=id+2B1",
    ] {
        assert!(mail.contains(parameter), "{mail:?} lacks {parameter}");
    }
    assert!(
        rcpt.starts_with("RCPT TO:<j\u{f6}rg@example.org>"),
        "{rcpt}"
    );
    assert!(rcpt.contains("NOTIFY=SUCCESS,FAILURE"), "{rcpt}");
    assert!(rcpt.contains("ORCPT=rfc822;jorg@example.org"), "{rcpt}");
    assert_eq!(body, "caf\u{e9}\r\n".as_bytes());
}

#[tokio::test]
async fn dsn_parameters_are_left_out_when_dsn_is_not_offered() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["PIPELINING"]).await;
        let mail = s.line().await;
        let rcpt = s.line().await;
        s.expect("DATA").await;
        s.send_raw(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
        s.read_data().await;
        s.send("250 ok").await;
        s.quit().await;
        (mail, rcpt)
    })
    .await;
    let envelope = Envelope::builder()
        .from(mailbox("alice@example.com"))
        .recipient(Recipient::from(mailbox("b@example.org")).notify(Notify::Never))
        .ret(Ret::Full)
        .build()
        .unwrap();
    let result = Client::new(config(addr).build().unwrap())
        .send(&envelope, "x")
        .await
        .unwrap();
    assert!(!result.dsn_offered, "the server did not offer DSN");
    let (mail, rcpt) = server.await.unwrap();
    assert_eq!(mail, "MAIL FROM:<alice@example.com>");
    assert_eq!(rcpt, "RCPT TO:<b@example.org>");
}

#[tokio::test]
async fn chunking_sends_bdat_and_binarymime_unchanged() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["PIPELINING", "CHUNKING", "BINARYMIME", "8BITMIME"])
            .await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.expect("RCPT TO:<b@example.org>").await;
        // MAIL and RCPT are pipelined, but the body waits for their replies.
        s.expect_silence(Duration::from_millis(100)).await;
        s.send_raw(b"250 ok\r\n250 ok\r\n").await;
        s.expect("BDAT 10 LAST").await;
        let text = s.read_exact(10).await;
        s.send("250 text ok").await;
        s.expect("MAIL FROM:<alice@example.com> BODY=BINARYMIME")
            .await;
        s.expect("RCPT TO:<b@example.org>").await;
        s.send_raw(b"250 ok\r\n250 ok\r\n").await;
        s.expect("BDAT 4 LAST").await;
        let binary = s.read_exact(4).await;
        s.send("250 binary ok").await;
        s.quit().await;
        (text, binary)
    })
    .await;
    let mut connection = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap();
    let to = envelope(&["b@example.org"]);
    connection.send(&to, "a\n.b\nc").await.unwrap();
    connection
        .send(
            &to,
            Message::from(&b"\0\r\n\n"[..]).body_type(BodyType::BinaryMime),
        )
        .await
        .unwrap();
    connection.quit().await.unwrap();
    let (text, binary) = server.await.unwrap();
    assert_eq!(text, b"a\r\n.b\r\nc\r\n");
    assert_eq!(binary, b"\0\r\n\n");
}

#[tokio::test]
async fn a_streamed_message_is_sent_in_bdat_chunks() {
    let body: Vec<u8> = (0..5000u32)
        .map(|n| b"abcdefghij\n"[(n % 11) as usize])
        .collect();
    let expected: Vec<u8> = {
        let mut out = Vec::new();
        for &byte in &body {
            if byte == b'\n' {
                out.extend_from_slice(b"\r\n");
            } else {
                out.push(byte);
            }
        }
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    };
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["CHUNKING"]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<b@example.org>").await;
        s.send("250 ok").await;
        let mut received = Vec::new();
        let mut chunks = 0;
        loop {
            let header = s.expect_prefix("BDAT ").await;
            let mut words = header.split(' ').skip(1);
            let size: usize = words.next().unwrap().parse().unwrap();
            let last = words.next() == Some("LAST");
            received.extend(s.read_exact(size).await);
            chunks += 1;
            s.send("250 chunk ok").await;
            if last {
                break;
            }
        }
        s.quit().await;
        (received, chunks)
    })
    .await;
    let config = config(addr).chunk_size(1024).build().unwrap();
    let message = Message::from_reader(std::io::Cursor::new(body));
    Client::new(config)
        .send(&envelope(&["b@example.org"]), message)
        .await
        .unwrap();
    let (received, chunks) = server.await.unwrap();
    assert_eq!(received, expected);
    assert!(chunks > 2, "{chunks} chunks");
}

#[tokio::test]
async fn a_large_streamed_body_goes_through_data() {
    let line = b"0123456789 the quick brown fox\r\n";
    let body: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(line.len() * 20_000)
        .collect();
    let expected = body.clone();
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["PIPELINING", "8BITMIME"]).await;
        for _ in 0..3 {
            s.line().await;
        }
        s.send_raw(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
        let body = s.read_data().await;
        s.send("250 ok").await;
        s.quit().await;
        body
    })
    .await;
    let stream = futures::stream::iter(
        body.chunks(7777)
            .map(|chunk| Ok(bytes::Bytes::copy_from_slice(chunk)))
            .collect::<Vec<_>>(),
    );
    Client::new(config(addr).build().unwrap())
        .send(&envelope(&["b@example.org"]), Message::from_stream(stream))
        .await
        .unwrap();
    assert_eq!(server.await.unwrap(), expected);
}

#[tokio::test]
async fn eight_bit_in_a_stream_without_8bitmime_aborts_before_the_end_of_data() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["PIPELINING"]).await;
        for _ in 0..3 {
            s.line().await;
        }
        s.send_raw(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
        // The connection closes without the final ".": nothing delivered.
        let mut lines = Vec::new();
        while let Some(line) = s.try_line().await {
            lines.push(line);
        }
        assert!(!lines.iter().any(|line| line == "."), "{lines:?}");
    })
    .await;
    let message = Message::from_reader(std::io::Cursor::new("caf\u{e9}\r\n".as_bytes().to_vec()));
    let error = Client::new(config(addr).build().unwrap())
        .send(&envelope(&["b@example.org"]), message)
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Unsupported, Step::Body)
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_streamed_message_over_the_size_limit_aborts_before_the_end_of_data() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["PIPELINING", "8BITMIME", "SIZE 2000"]).await;
        let mail = s.line().await;
        s.line().await;
        s.line().await;
        s.send_raw(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
        // The connection closes without the final ".": nothing delivered.
        let rest = s.read_to_end().await;
        assert!(!rest.is_empty());
        assert!(!rest.ends_with(b"\r\n.\r\n"));
        mail
    })
    .await;
    let message = Message::from_reader(std::io::Cursor::new(b"x\r\n".repeat(1000)));
    let error = Client::new(config(addr).chunk_size(1024).build().unwrap())
        .send(&envelope(&["b@example.org"]), message)
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Unsupported, Step::Body)
    );
    // No size was declared, so none was sent.
    assert_eq!(
        server.await.unwrap(),
        "MAIL FROM:<alice@example.com> BODY=8BITMIME"
    );
}

#[tokio::test]
async fn lmtp_reads_one_reply_per_accepted_recipient() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.send("220 lmtp.example LMTP").await;
        s.expect("LHLO localhost").await;
        s.ehlo_reply(&["PIPELINING", "ENHANCEDSTATUSCODES"]).await;
        for _ in 0..5 {
            s.line().await;
        }
        s.send_raw(b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n")
            .await;
        s.read_data().await;
        s.send_raw(b"250 2.0.0 a delivered\r\n452 4.2.2 c over quota\r\n")
            .await;
        s.quit().await;
    })
    .await;
    let config = config(addr).protocol(Protocol::Lmtp).build().unwrap();
    let result = Client::new(config)
        .send(
            &envelope(&["a@example.org", "b@example.org", "c@example.org"]),
            "x",
        )
        .await
        .unwrap();
    let accepted: Vec<bool> = result
        .recipients
        .iter()
        .map(|outcome| outcome.accepted)
        .collect();
    assert_eq!(accepted, [true, false, false]);
    assert_eq!(result.recipients[2].reply.as_ref().unwrap().code(), 452);
    assert!(result.reply.is_none());
    server.await.unwrap();
}

#[tokio::test]
async fn an_endless_reply_is_cut_off() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.send("220 x").await;
        s.expect("EHLO localhost").await;
        let mut block = String::new();
        for _ in 0..100 {
            block.push_str("250-STILL GOING\r\n");
        }
        // More lines than the cap, never a last line: the client must give
        // up once the cap is reached, whatever comes next.
        for _ in 0..20 {
            if s_send_ok(&mut s, block.as_bytes()).await.is_err() {
                break;
            }
        }
    })
    .await;
    let config = config(addr).reply_limits(4096, 1000).build().unwrap();
    let error = Connection::connect(&config).await.unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Protocol, Step::Hello)
    );
    server.await.unwrap();
}

async fn s_send_ok(s: &mut Script, bytes: &[u8]) -> Result<(), ()> {
    // The client may have closed already; that is the point of the test.
    let write = async { s.send_raw(bytes).await };
    tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .map_err(|_| ())
}

#[tokio::test]
async fn an_overlong_reply_line_is_cut_off() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.send_raw(format!("220 {}", "x".repeat(5000)).as_bytes())
            .await;
        s.expect_eof().await;
    })
    .await;
    let error = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Protocol, Step::Greeting)
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_bare_lf_in_a_reply_is_a_protocol_error() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.send_raw(b"220 hello\n").await;
        s.expect_eof().await;
    })
    .await;
    let error = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Protocol);
    server.await.unwrap();
}

#[tokio::test]
async fn the_transcript_shows_both_sides_and_masks_auth() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["AUTH PLAIN LOGIN"]).await;
        s.expect_prefix("AUTH PLAIN ").await;
        s.send("235 ok").await;
        s.quit().await;
    })
    .await;
    let sink = Arc::clone(&lines);
    let config = config(addr)
        .credentials(smtp_client::Credentials::password("alice", "hunter2"))
        .allow_plaintext_auth(true)
        .transcript(move |line| {
            assert!(line.session_id.starts_with('c'), "{line:?}");
            if line.direction == Direction::Server {
                assert_eq!(line.kind, smtp_client::LineKind::Wire);
            }
            sink.lock().unwrap().push(line.to_string());
        })
        .build()
        .unwrap();
    let connection = Connection::connect(&config).await.unwrap();
    assert!(connection.is_authenticated());
    connection.quit().await.unwrap();
    server.await.unwrap();
    let lines = lines.lock().unwrap().clone();
    assert_eq!(lines[0], "S: 220 test.example ESMTP");
    assert_eq!(lines[1], "C: EHLO localhost");
    assert!(lines.contains(&"C: AUTH PLAIN ***".to_owned()), "{lines:?}");
    assert!(lines.contains(&"S: 235 ok".to_owned()));
    assert_eq!(lines.last().unwrap(), "S: 221 bye");
    let joined = lines.join("\n");
    let secret = base64_plain("alice", "hunter2");
    assert!(!joined.contains(&secret) && !joined.contains("hunter2"));
}

fn base64_plain(user: &str, password: &str) -> String {
    smtp_proto::sasl::plain_response(None, user, password)
}

#[test]
fn line_breaks_in_envelope_values_are_errors_before_any_connection() {
    // An envelope can only be built valid, so nothing invalid ever
    // reaches a connection.
    let bad = Envelope::builder()
        .to(mailbox("b@example.org"))
        .envid("x\r\nRSET")
        .build();
    assert_eq!(bad.unwrap_err().kind(), ErrorKind::InvalidInput);
    let bad = Envelope::builder()
        .recipient(Recipient::from(mailbox("b@example.org")).orcpt("rfc822", "b@x\r\nDATA"))
        .build();
    assert_eq!(bad.unwrap_err().kind(), ErrorKind::InvalidInput);
    assert!("a\r\n@example.org".parse::<Address>().is_err());
    assert!("a@exa\0mple.org".parse::<Address>().is_err());
    let no_recipients = Envelope::null_sender(Vec::<Address>::new());
    assert_eq!(no_recipients.unwrap_err().kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn a_connect_that_never_completes_times_out() {
    // A listener that never accepts, with its backlog filled: further SYNs
    // are dropped and the connection attempt hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    let timeouts = smtp_client::Timeouts {
        connect: Duration::from_millis(300),
        ..smtp_client::Timeouts::default()
    };
    let config = config(addr).timeouts(timeouts).build().unwrap();
    let error = Connection::connect(&config).await.unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Timeout, Step::Connect)
    );
    drop(listener);
}

/// Reads one BDAT command and its chunk; returns whether it was LAST.
async fn read_bdat(s: &mut Script) -> bool {
    let header = s.expect_prefix("BDAT ").await;
    let mut words = header.split(' ').skip(1);
    let size: usize = words.next().unwrap().parse().unwrap();
    let last = words.next() == Some("LAST");
    s.read_exact(size).await;
    last
}

fn lines_message(lines: usize) -> Message {
    let text: String = (0..lines).map(|n| format!("line {n:04}\r\n")).collect();
    Message::from_reader(std::io::Cursor::new(text.into_bytes()))
}

#[tokio::test]
async fn with_pipelining_one_bdat_chunk_stays_in_flight() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["PIPELINING", "CHUNKING"]).await;
        s.line().await;
        s.line().await;
        s.send_raw(b"250 ok\r\n250 ok\r\n").await;
        assert!(!read_bdat(&mut s).await);
        // The second chunk arrives before the first is acknowledged.
        let mut last = read_bdat(&mut s).await;
        let mut chunks = 2;
        s.send("250 chunk ok").await;
        while !last {
            last = read_bdat(&mut s).await;
            chunks += 1;
            s.send("250 chunk ok").await;
        }
        s.send("250 message ok").await;
        s.quit().await;
        chunks
    })
    .await;
    let config = config(addr).chunk_size(1024).build().unwrap();
    let result = Client::new(config)
        .send(&envelope(&["b@example.org"]), lines_message(400))
        .await
        .unwrap();
    assert_eq!(result.reply.unwrap().text(), "message ok");
    assert!(server.await.unwrap() >= 4);
}

#[tokio::test]
async fn a_rejected_bdat_chunk_drains_the_window_and_resets() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["PIPELINING", "CHUNKING"]).await;
        s.line().await;
        s.line().await;
        s.send_raw(b"250 ok\r\n250 ok\r\n").await;
        assert!(!read_bdat(&mut s).await);
        assert!(!read_bdat(&mut s).await);
        s.send_raw(b"552 5.3.4 message too big\r\n503 5.5.1 transaction failed\r\n")
            .await;
        s.expect("RSET").await;
        s.send("250 ok").await;
        s.quit().await;
    })
    .await;
    let config = config(addr).chunk_size(1024).build().unwrap();
    let mut connection = Connection::connect(&config).await.unwrap();
    let error = connection
        .send(&envelope(&["b@example.org"]), lines_message(400))
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Rejected, Step::Data)
    );
    assert_eq!(error.reply().unwrap().code(), 552);
    assert!(connection.is_usable());
    connection.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn the_transcript_summarises_bodies_and_escapes_server_text() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&[]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<bob@example.org>").await;
        s.send("250 ok\x1b[2J").await;
        s.expect("DATA").await;
        s.send("354 go").await;
        s.read_data().await;
        s.send("250 queued").await;
        s.quit().await;
    })
    .await;
    let sink = Arc::clone(&lines);
    let config = config(addr)
        .transcript(move |line| {
            sink.lock()
                .unwrap()
                .push((line.kind, line.to_string(), line.session_id.to_owned()));
        })
        .build()
        .unwrap();
    Client::new(config)
        .send(
            &envelope(&["bob@example.org"]),
            "Subject: x\r\n\r\nhello\r\n",
        )
        .await
        .unwrap();
    server.await.unwrap();
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.iter().all(|(_, _, id)| id == &lines[0].2),
        "one connection id"
    );
    assert!(
        lines.contains(&(
            smtp_client::LineKind::Summary,
            "C: <message body: 21 octets>".to_owned(),
            lines[0].2.clone()
        )),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|(_, text, _)| text == "S: 250 ok\\x1b[2J"),
        "{lines:?}"
    );
}
