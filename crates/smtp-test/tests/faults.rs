//! Every fault action, asserted at the wire: what a client sees, and when
//! (on paused time, so the timings are exact and the tests fast).

mod common;

use std::time::Duration;

use common::{Got, Wire};
use smtp_test::TestServer;
use smtp_test::faults::Faults;
use tokio::time::Instant;

async fn server(rules: &str) -> TestServer {
    TestServer::builder()
        .faults(Faults::parse(rules).unwrap())
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_reply_rule_answers_instead_of_the_server_and_others_pass() {
    let server = server(r#"rcpt to "*@blocked.test" reply 550 5.1.1 "no such user""#).await;
    let mut wire = Wire::ready(server.addr()).await;
    assert_eq!(
        wire.command("MAIL FROM:<app@example.com>").await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        wire.command("RCPT TO:<eve@blocked.test>").await,
        "550 5.1.1 no such user"
    );
    assert_eq!(
        wire.command("RCPT TO:<bob@example.com>").await,
        "250 2.1.5 Recipient OK"
    );
    let transcript = server.transcript();
    assert!(
        transcript.contains(
            "!! fault at rcpt: rule on line 1: rcpt to \"*@blocked.test\" reply 550 5.1.1 \"no such user\""
        ),
        "{transcript}"
    );
}

#[tokio::test]
async fn a_reply_can_have_several_lines() {
    let server = server(r#"ehlo reply 554 5.7.1 "first line" "second line""#).await;
    let mut wire = Wire::greeted(server.addr()).await;
    assert_eq!(
        wire.command("EHLO client.test").await,
        "554-5.7.1 first line\n554 5.7.1 second line"
    );
}

#[tokio::test]
async fn a_421_reply_is_sent_and_then_the_connection_closes() {
    let server = server(r#"mail reply 421 4.7.0 "too busy""#).await;
    let mut wire = Wire::ready(server.addr()).await;
    assert_eq!(
        wire.command("MAIL FROM:<a@example.com>").await,
        "421 4.7.0 too busy"
    );
    assert_eq!(
        wire.next(Duration::from_secs(5)).await,
        Got::Closed(String::new())
    );
}

#[tokio::test]
async fn close_drops_the_connection_without_a_reply_at_connect_and_at_mail() {
    let server = server("connect connection 1 close\nmail close").await;
    let mut first = Wire::connect(server.addr()).await;
    assert_eq!(
        first.next(Duration::from_secs(5)).await,
        Got::Closed(String::new())
    );
    let mut second = Wire::ready(server.addr()).await;
    second.send("MAIL FROM:<a@example.com>").await;
    assert_eq!(
        second.next(Duration::from_secs(5)).await,
        Got::Closed(String::new())
    );
}

#[tokio::test]
async fn close_421_says_so_first() {
    let server = server("rcpt close 421").await;
    let mut wire = Wire::ready(server.addr()).await;
    wire.command("MAIL FROM:<a@example.com>").await;
    assert_eq!(
        wire.command("RCPT TO:<b@example.com>").await,
        "421 4.3.2 Service not available, closing transmission channel"
    );
    assert_eq!(
        wire.next(Duration::from_secs(5)).await,
        Got::Closed(String::new())
    );
}

#[tokio::test(start_paused = true)]
async fn a_delay_holds_the_reply_back() {
    let server = server("mail delay 3s").await;
    let mut wire = Wire::ready(server.addr()).await;
    let start = Instant::now();
    assert_eq!(
        wire.command("MAIL FROM:<a@example.com>").await,
        "250 2.1.0 Sender OK"
    );
    let elapsed = start.elapsed();
    assert!(
        (Duration::from_secs(3)..Duration::from_millis(3100)).contains(&elapsed),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_drip_sends_the_reply_one_octet_per_interval() {
    let server = server("greeting drip 100ms").await;
    let mut wire = Wire::connect(server.addr()).await;
    let octets = wire.line_octets().await;
    let text: Vec<u8> = octets.iter().map(|(octet, _)| *octet).collect();
    assert_eq!(text, b"220 localhost ESMTP ready\r\n");
    for pair in octets.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            (Duration::from_millis(100)..Duration::from_millis(110)).contains(&gap),
            "gap {gap:?}"
        );
    }
    // Only that reply drips; the next comes at once.
    let start = Instant::now();
    assert!(wire.command("EHLO client.test").await.starts_with("250"));
    assert!(start.elapsed() < Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn stop_reading_leaves_the_client_unanswered_then_closes() {
    let server = server("rcpt stop-reading 20s").await;
    let mut wire = Wire::ready(server.addr()).await;
    wire.command("MAIL FROM:<a@example.com>").await;
    let start = Instant::now();
    wire.send("RCPT TO:<b@example.com>").await;
    assert_eq!(wire.next(Duration::from_secs(19)).await, Got::Nothing);
    // The server does not read: more commands get nothing either.
    wire.send("NOOP").await;
    assert_eq!(
        wire.next(Duration::from_secs(5)).await,
        Got::Closed(String::new())
    );
    let elapsed = start.elapsed();
    assert!(
        (Duration::from_secs(20)..Duration::from_millis(20100)).contains(&elapsed),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn greylisting_defers_the_first_attempt_and_accepts_a_late_retry() {
    let server = server("rcpt greylist 60s").await;
    let mut wire = Wire::ready(server.addr()).await;
    wire.command("MAIL FROM:<a@example.com>").await;
    assert_eq!(
        wire.command("RCPT TO:<b@example.com>").await,
        "451 4.7.1 Greylisted, please try again later"
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(
        wire.command("RCPT TO:<b@example.com>")
            .await
            .starts_with("451 4.7.1"),
        "a retry too early is deferred again"
    );
    // Another recipient is another triple.
    assert!(
        wire.command("RCPT TO:<c@example.com>")
            .await
            .starts_with("451 4.7.1")
    );
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(
        wire.command("RCPT TO:<b@example.com>").await,
        "250 2.1.5 Recipient OK"
    );
}

#[tokio::test]
async fn drop_acknowledges_the_message_and_keeps_nothing() {
    let server = server(r#"end-of-data to "*@void.test" drop"#).await;
    let mut wire = Wire::ready(server.addr()).await;
    assert_eq!(
        wire.message("a@example.com", &["x@void.test"], "Subject: gone")
            .await,
        "250 2.0.0 Message accepted"
    );
    assert_eq!(
        wire.message("a@example.com", &["y@kept.test"], "Subject: kept")
            .await,
        "250 2.0.0 Message accepted"
    );
    let messages = server.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].subject(), Some("kept"));
}

#[tokio::test]
async fn an_end_of_data_reply_refuses_the_message_after_it_is_sent() {
    let server = server(r#"eod reply 552 5.3.4 "too big for us""#).await;
    let mut wire = Wire::ready(server.addr()).await;
    assert_eq!(
        wire.message("a@example.com", &["b@example.com"], "Subject: x")
            .await,
        "552 5.3.4 too big for us"
    );
    assert!(server.messages().is_empty());
    // The session goes on.
    assert_eq!(wire.command("NOOP").await, "250 2.0.0 OK");
}

#[tokio::test]
async fn close_at_data_cuts_the_transfer() {
    let server = server("data close").await;
    let mut wire = Wire::ready(server.addr()).await;
    wire.command("MAIL FROM:<a@example.com>").await;
    wire.command("RCPT TO:<b@example.com>").await;
    assert!(wire.command("DATA").await.starts_with("354"));
    let _ = wire.write_raw(b"Subject: x\r\n\r\nbody\r\n.\r\n").await;
    assert_eq!(
        wire.next(Duration::from_secs(5)).await,
        Got::Closed(String::new())
    );
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn the_nth_connection_and_the_nth_message_are_picked_out() {
    let server = server(
        "greeting connection 2 reply 421 4.7.0 \"busy\"\nmail message 2 reply 451 4.3.0 \"second\"",
    )
    .await;
    let mut first = Wire::ready(server.addr()).await;
    let mut second = Wire::connect(server.addr()).await;
    assert_eq!(second.reply().await, "421 4.7.0 busy");
    let _third = Wire::greeted(server.addr()).await;
    assert!(
        first
            .command("MAIL FROM:<a@example.com>")
            .await
            .starts_with("250")
    );
    first.command("RSET").await;
    assert_eq!(
        first.command("MAIL FROM:<a@example.com>").await,
        "451 4.3.0 second"
    );
    assert!(
        first
            .command("MAIL FROM:<a@example.com>")
            .await
            .starts_with("250")
    );
}

#[tokio::test]
async fn a_rate_per_client_counts_across_connections() {
    let server = server(r#"mail rate 2/min per client reply 450 4.7.1 "slow down""#).await;
    let mut one = Wire::ready(server.addr()).await;
    let mut two = Wire::ready(server.addr()).await;
    assert!(one.command("MAIL FROM:<a@x.test>").await.starts_with("250"));
    assert!(two.command("MAIL FROM:<a@x.test>").await.starts_with("250"));
    one.command("RSET").await;
    assert_eq!(
        one.command("MAIL FROM:<a@x.test>").await,
        "450 4.7.1 slow down"
    );
}

#[tokio::test]
async fn chance_with_a_seed_gives_the_same_run_twice() {
    async fn run() -> Vec<bool> {
        let server = server("seed 1234\nmail chance 40% reply 451 4.3.0 \"unlucky\"").await;
        let mut wire = Wire::ready(server.addr()).await;
        let mut outcomes = Vec::new();
        for _ in 0..30 {
            let reply = wire.command("MAIL FROM:<a@example.com>").await;
            outcomes.push(reply.starts_with("451"));
            wire.command("RSET").await;
        }
        outcomes
    }
    let first = run().await;
    assert_eq!(first, run().await);
    let unlucky = first.iter().filter(|&&u| u).count();
    assert!((4..=20).contains(&unlucky), "{unlucky} of 30");
}

#[tokio::test]
async fn an_auth_rule_answers_after_the_credentials() {
    let server = TestServer::builder()
        .user("alice", "secret")
        .faults(Faults::parse(r#"auth reply 454 4.7.0 "try again later""#).unwrap())
        .start()
        .await
        .unwrap();
    let mut wire = Wire::ready(server.addr()).await;
    // AHBhc3N3b3Jk = base64("\0alice\0secret")
    assert_eq!(
        wire.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==").await,
        "454 4.7.0 try again later"
    );
    let transcript = server.transcript();
    assert!(transcript.contains("C: AUTH PLAIN ***"), "{transcript}");
    assert!(!transcript.contains("AGFsaWNl"), "{transcript}");
    assert!(transcript.contains("!! fault at auth"), "{transcript}");
}

#[tokio::test(start_paused = true)]
async fn magic_addresses_do_what_their_names_say() {
    let server = TestServer::builder()
        .faults(Faults::magic())
        .start()
        .await
        .unwrap();
    let mut wire = Wire::ready(server.addr()).await;
    wire.command("MAIL FROM:<a@example.com>").await;
    assert_eq!(
        wire.command("RCPT TO:<550@example.com>").await,
        "550 5.1.1 Requested action not taken: mailbox unavailable (magic address)"
    );
    assert_eq!(
        wire.command("RCPT TO:<451-later@example.com>").await,
        "451 4.3.0 Requested action aborted: local error in processing (magic address)"
    );
    let start = Instant::now();
    assert_eq!(
        wire.command("RCPT TO:<slow-5s@example.com>").await,
        "250 2.1.5 Recipient OK"
    );
    assert!((Duration::from_secs(5)..Duration::from_millis(5100)).contains(&start.elapsed()));
    assert!(
        wire.command("RCPT TO:<421@example.com>")
            .await
            .starts_with("421 4.3.2")
    );
    assert_eq!(
        wire.next(Duration::from_secs(5)).await,
        Got::Closed(String::new())
    );
}

#[tokio::test]
async fn rules_can_be_replaced_while_the_server_runs() {
    let server = server("mail reply 451 4.3.0 \"first rules\"").await;
    let mut wire = Wire::ready(server.addr()).await;
    assert_eq!(
        wire.command("MAIL FROM:<a@example.com>").await,
        "451 4.3.0 first rules"
    );
    server.set_faults(Faults::parse("mail reply 550 5.7.1 \"second rules\"").unwrap());
    assert_eq!(
        wire.command("MAIL FROM:<a@example.com>").await,
        "550 5.7.1 second rules"
    );
}

#[tokio::test(start_paused = true)]
async fn quit_can_be_answered_late_differently_or_not_at_all() {
    let server =
        server("quit connection 1 delay 2s reply 421 4.3.2 \"bye now\"\nquit connection 2 close")
            .await;
    let mut first = Wire::ready(server.addr()).await;
    let start = Instant::now();
    assert_eq!(first.command("QUIT").await, "421 4.3.2 bye now");
    assert!((Duration::from_secs(2)..Duration::from_millis(2100)).contains(&start.elapsed()));
    assert_eq!(
        first.next(Duration::from_secs(5)).await,
        Got::Closed(String::new())
    );
    let mut second = Wire::ready(server.addr()).await;
    second.send("QUIT").await;
    assert_eq!(
        second.next(Duration::from_secs(5)).await,
        Got::Closed(String::new())
    );
    let mut third = Wire::ready(server.addr()).await;
    assert!(third.command("QUIT").await.starts_with("221 2.0.0"));
}

#[tokio::test(start_paused = true)]
async fn a_delay_at_connect_holds_the_greeting_back() {
    let server = server("connect delay 2s").await;
    let mut wire = Wire::connect(server.addr()).await;
    assert_eq!(wire.next(Duration::from_millis(1990)).await, Got::Nothing);
    assert_eq!(wire.reply().await, "220 localhost ESMTP ready");
    let elapsed = wire.connected_at.elapsed();
    assert!(
        (Duration::from_secs(2)..Duration::from_millis(2100)).contains(&elapsed),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn stop_reading_at_data_leaves_the_message_unread_and_unanswered() {
    let server = server("data stop-reading 10s").await;
    let mut wire = Wire::ready(server.addr()).await;
    wire.command("MAIL FROM:<a@example.com>").await;
    wire.command("RCPT TO:<b@example.com>").await;
    assert!(wire.command("DATA").await.starts_with("354"));
    let start = Instant::now();
    let _ = wire
        .write_raw(b"Subject: unread\r\n\r\nbody\r\n.\r\n")
        .await;
    assert_eq!(wire.next(Duration::from_secs(9)).await, Got::Nothing);
    assert_eq!(
        wire.next(Duration::from_secs(5)).await,
        Got::Closed(String::new())
    );
    assert!(start.elapsed() >= Duration::from_secs(10));
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn servers_are_isolated_and_dropping_one_stops_it() {
    let first = TestServer::start().await.unwrap();
    let second = TestServer::start().await.unwrap();
    assert_ne!(first.addr(), second.addr());
    let mut wire = Wire::ready(first.addr()).await;
    wire.message("a@example.com", &["b@example.com"], "Subject: one")
        .await;
    assert_eq!(first.messages().len(), 1);
    assert!(second.messages().is_empty());

    let addr = first.addr();
    drop(first);
    assert_eq!(
        wire.next(Duration::from_secs(5)).await,
        Got::Closed(String::new())
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
