//! A client that a broken or hostile server, or a caller that gives up
//! half-way, cannot lead into misreporting a delivery.

mod common;

use std::time::Duration;

use common::{Script, config, serve};
use smtp_client::{Client, ClientConfig, Connection, Envelope, ErrorKind, Protocol, Step, Tls};

fn envelope(to: &[&str]) -> Envelope {
    Envelope::new("alice@example.com", to.iter().copied()).unwrap()
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

#[tokio::test]
async fn a_second_354_after_the_data_is_an_unknown_outcome_never_a_delivery() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&[]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<bob@example.org>").await;
        s.send("250 ok").await;
        s.expect("DATA").await;
        s.send("354 go").await;
        s.read_data().await;
        s.send("354 go ahead again").await;
        let _ = s.read_to_end().await;
    })
    .await;
    let error = Client::new(config(addr).build().unwrap())
        .send(&envelope(&["bob@example.org"]), "x")
        .await
        .unwrap_err();
    server.await.unwrap();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Protocol, Step::DataEnd)
    );
    assert!(
        error.is_transient(),
        "an unknown outcome is never permanent"
    );
    let bob = &error.recipients()[0];
    assert!(!bob.accepted);
    assert!(bob.reply().is_none(), "354 decides nothing: {bob:?}");
    assert!(bob.is_transient());
}

#[tokio::test]
async fn a_250_to_data_is_a_protocol_error_and_nothing_is_sent() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&[]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<bob@example.org>").await;
        s.send("250 ok").await;
        s.expect("DATA").await;
        s.send("250 what data").await;
        // The client must not send the body after a reply that is not 354.
        s.read_to_end().await
    })
    .await;
    let error = Client::new(config(addr).build().unwrap())
        .send(&envelope(&["bob@example.org"]), "BODY-MARKER\r\n")
        .await
        .unwrap_err();
    let rest = server.await.unwrap();
    assert!(!String::from_utf8_lossy(&rest).contains("BODY-MARKER"));
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Protocol, Step::Data)
    );
    assert!(error.to_string().contains("instead of 354"), "{error}");
    assert!(error.is_transient());
    assert!(!error.recipients()[0].accepted);
}

#[tokio::test]
async fn implicit_tls_against_a_plaintext_greeting_says_what_to_do() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.send("220 test.example ESMTP").await;
        let _ = s.read_to_end().await;
    })
    .await;
    let config = ClientConfig::builder(addr.ip().to_string())
        .port(addr.port())
        .tls(Tls::Implicit)
        .build()
        .unwrap();
    let error = Client::new(config)
        .send(&envelope(&["bob@example.org"]), "x")
        .await
        .unwrap_err();
    server.abort();
    assert_eq!(error.kind(), ErrorKind::Tls);
    let text = error.to_string();
    assert!(
        text.contains(
            "the server greeted in plain text: use STARTTLS (port 587/25) or implicit TLS on 465"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn auth_offered_only_after_starttls_is_explained_with_tls_none() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["STARTTLS"]).await;
        let _ = s.read_to_end().await;
    })
    .await;
    let config = config(addr)
        .credentials(smtp_client::Credentials::password("alice", "secret"))
        .allow_plaintext_auth(true)
        .build()
        .unwrap();
    let error = Connection::connect(&config).await.unwrap_err();
    server.await.unwrap();
    assert_eq!(error.kind(), ErrorKind::Auth);
    let text = error.to_string();
    assert!(
        text.contains("offers STARTTLS") && text.contains("AUTH is usually offered only after"),
        "{text}"
    );
}
