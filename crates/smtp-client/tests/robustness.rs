//! A client that a broken or hostile server, or a caller that gives up
//! half-way, cannot lead into misreporting a delivery.

mod common;

use std::time::Duration;

use common::{Script, config, serve};
use smtp_client::{Client, ClientConfig, Connection, Envelope, ErrorKind, Protocol, Step, Tls};

fn envelope(to: &[&str]) -> Envelope {
    Envelope::new(
        Some("alice@example.com".parse().unwrap()),
        to.iter().map(|to| to.parse().unwrap()),
    )
    .unwrap()
}

#[tokio::test]
async fn an_lmtp_delivery_confirmed_before_the_connection_drops_stays_accepted() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.send("220 lmtp.example LMTP").await;
        s.line().await;
        s.ehlo_reply(&["PIPELINING", "ENHANCEDSTATUSCODES"]).await;
        for _ in 0..4 {
            s.line().await; // MAIL, RCPT a, RCPT b, DATA
        }
        s.send_raw(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
            .await;
        s.read_data().await;
        // a is delivered, then the server dies before b's reply.
        s.send("250 2.0.0 <a@example.org> delivered").await;
        drop(s);
    })
    .await;
    let config = config(addr).protocol(Protocol::Lmtp).build().unwrap();
    let result = Client::new(config)
        .send(&envelope(&["a@example.org", "b@example.org"]), "x")
        .await
        .expect("a was delivered: the send succeeded for a");
    server.await.unwrap();
    assert!(result.recipients[0].accepted);
    assert!(!result.recipients[1].accepted);
}

#[tokio::test]
async fn a_send_given_up_half_way_leaves_the_connection_unusable() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&[]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<bob@example.org>").await;
        s.send("250 ok").await;
        s.expect("DATA").await;
        s.send("354 go").await;
        s.read_data().await;
        // The verdict comes after the caller stopped waiting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.send("554 5.7.1 message one refused").await;
        // Nothing more may arrive: a second MAIL would read this 554.
        s.expect_eof().await;
    })
    .await;
    let config = config(addr).build().unwrap();
    let mut connection = Connection::connect(&config).await.unwrap();
    let given_up = tokio::time::timeout(
        Duration::from_millis(200),
        connection.send(&envelope(&["bob@example.org"]), "one\r\n"),
    )
    .await;
    assert!(given_up.is_err());
    assert!(!connection.is_usable());
    let error = connection
        .send(&envelope(&["carol@example.org"]), "two\r\n")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Closed);
    assert!(error.reply().is_none(), "{error}");
    assert!(connection.noop().await.is_err());
    drop(connection);
    server.await.unwrap();
}

#[tokio::test]
async fn a_garbled_reply_to_the_end_of_data_is_transient() {
    // The message may well have been accepted: a retry risks a duplicate,
    // a bounce risks losing it (RFC 5321 §6.1).
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&[]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<bob@example.org>").await;
        s.send("250 ok").await;
        s.expect("DATA").await;
        s.send("354 go").await;
        s.read_data().await;
        s.send_raw(b"250 queued\n").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    let error = Client::new(config(addr).build().unwrap())
        .send(&envelope(&["bob@example.org"]), "x")
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Protocol, Step::DataEnd)
    );
    assert!(error.is_transient());
    server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_answers_quit_does_not_hold_the_caller() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&[]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<bob@example.org>").await;
        s.send("250 ok").await;
        s.expect("DATA").await;
        s.send("354 go").await;
        s.read_data().await;
        s.send("250 queued").await;
        s.expect("QUIT").await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .await;
    // Default timeouts: five minutes per command.
    let config = ClientConfig::builder(addr.ip().to_string())
        .port(addr.port())
        .tls(Tls::None)
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let result = Client::new(config)
        .send(&envelope(&["bob@example.org"]), "x")
        .await
        .unwrap();
    assert!(result.is_complete());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    server.abort();
}
