//! Slow servers against each timeout, with the default RFC 5321 §4.5.3.2
//! values, on a paused clock: the minutes pass instantly.

mod common;

use std::time::Duration;

use common::{Script, serve};
use smtp_client::{
    ClientConfig, ClientConfigBuilder, Connection, Envelope, ErrorKind, Step, Timeouts, Tls,
};

fn config(addr: std::net::SocketAddr) -> ClientConfigBuilder {
    // Default timeouts, unlike common::config.
    ClientConfig::builder(addr.ip().to_string())
        .port(addr.port())
        .tls(Tls::None)
}

fn envelope() -> Envelope {
    Envelope::new("alice@example.com", ["bob@example.org"]).unwrap()
}

/// Longer than any default timeout.
const FOREVER: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn a_silent_greeting_times_out_after_five_minutes() {
    let (addr, server) = serve(|s: Script| async move {
        tokio::time::sleep(FOREVER).await;
        drop(s);
    })
    .await;
    let started = tokio::time::Instant::now();
    let error = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Timeout, Step::Greeting)
    );
    assert!(error.is_transient());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(300) && waited < Duration::from_secs(301),
        "{waited:?}"
    );
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn a_slow_ehlo_reply_times_out_without_helo_fallback() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.send("220 slow").await;
        s.expect("EHLO localhost").await;
        tokio::time::sleep(FOREVER).await;
    })
    .await;
    let error = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Timeout, Step::Hello)
    );
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn the_timed_out_step_ends_the_attempt_and_closes_the_connection() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.send("220 slow").await;
        s.expect("EHLO localhost").await;
        tokio::time::sleep(Duration::from_secs(301)).await;
        // Too late: the client has given up and closed; no HELO follows.
        s.send_raw(b"502 what\r\n").await;
        assert!(
            s.try_line().await.is_none(),
            "the client went on after a timeout"
        );
    })
    .await;
    let error = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    server.await.unwrap();
}

/// A server that answers EHLO, then stalls at `stall` (0 MAIL, 1 DATA,
/// 2 end of data); returns how long the client waited and its error.
async fn stall_at(stall: usize) -> (Duration, smtp_client::Error) {
    let (addr, server) = serve(move |mut s: Script| async move {
        s.greet(&[]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        if stall == 0 {
            tokio::time::sleep(FOREVER).await;
        }
        s.send("250 ok").await;
        s.expect("RCPT TO:<bob@example.org>").await;
        s.send("250 ok").await;
        s.expect("DATA").await;
        if stall == 1 {
            tokio::time::sleep(FOREVER).await;
        }
        s.send("354 go").await;
        s.read_data().await;
        tokio::time::sleep(FOREVER).await;
    })
    .await;
    let mut connection = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let error = connection.send(&envelope(), "x").await.unwrap_err();
    let waited = started.elapsed();
    assert!(!connection.is_usable());
    server.abort();
    (waited, error)
}

#[tokio::test(start_paused = true)]
async fn each_transaction_step_has_its_rfc_timeout() {
    let (waited, error) = stall_at(0).await;
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Timeout, Step::Mail)
    );
    assert_eq!(waited.as_secs(), 300);
    let (waited, error) = stall_at(1).await;
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Timeout, Step::Data)
    );
    assert_eq!(waited.as_secs(), 120);
    let (waited, error) = stall_at(2).await;
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Timeout, Step::DataEnd)
    );
    assert_eq!(waited.as_secs(), 600);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_tls_handshake_times_out() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["STARTTLS"]).await;
        s.expect("STARTTLS").await;
        s.send("220 go ahead").await;
        // Never answer the ClientHello.
        tokio::time::sleep(FOREVER).await;
    })
    .await;
    let timeouts = Timeouts {
        tls_handshake: Duration::from_secs(7),
        ..Timeouts::default()
    };
    let config = config(addr)
        .tls(Tls::Required)
        .timeouts(timeouts)
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let error = Connection::connect(&config).await.unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Timeout, Step::TlsHandshake)
    );
    assert_eq!(started.elapsed().as_secs(), 7);
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn a_reply_that_trickles_forever_still_times_out() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.send("220 x").await;
        s.expect("EHLO localhost").await;
        // One continuation line a minute: never too many lines before the
        // step's timeout, and never the last line.
        for _ in 0..100 {
            s.send("250-still thinking").await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    })
    .await;
    let error = Connection::connect(&config(addr).build().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Timeout, Step::Hello)
    );
    server.abort();
}
