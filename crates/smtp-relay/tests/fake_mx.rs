//! The fake MX servers do what their scripts say, seen from a real SMTP
//! client.

mod support;

use std::time::{Duration, Instant};

use smtp_client::{Client, ClientConfig, Envelope, ErrorKind, Notify, Recipient, Tls, TlsConfig};
use support::fake_mx::{FakeMx, Outcome, Script, ip};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

const MESSAGE: &[u8] = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: test\r\n\r\n\
.a line that starts with a dot\r\n\
..two dots\r\n\
caf\xc3\xa9 8-bit\r\n\
.\r\n";

fn client(mx: &FakeMx, tls: Tls) -> Client {
    let mut builder = ClientConfig::builder(mx.addr().ip().to_string())
        .port(mx.addr().port())
        .tls(tls)
        .hello_name("relay.test");
    if let Some(pem) = mx.certificate_pem() {
        builder = builder.tls_config(
            TlsConfig::new()
                .add_root_certificates_pem(pem.as_bytes())
                .unwrap()
                .server_name("localhost"),
        );
    }
    Client::new(builder.build().unwrap())
}

fn envelope(to: &[&str]) -> Envelope {
    Envelope::new("a@example.org", to.iter().copied()).unwrap()
}

#[tokio::test]
async fn records_messages_byte_exact_with_their_envelope() {
    let mx = FakeMx::start(ip(2), Script::new()).await.unwrap();
    assert_eq!(mx.addr().ip().to_string(), "127.0.0.2");
    let envelope = Envelope::builder()
        .from("a@example.org")
        .recipient(
            Recipient::new("b@example.net")
                .unwrap()
                .notify(Notify::Never)
                .orcpt("rfc822", "B@example.net"),
        )
        .envid("ENV-1")
        .build()
        .unwrap();
    let result = client(&mx, Tls::Required)
        .send(&envelope, MESSAGE.to_vec())
        .await
        .unwrap();
    assert!(result.is_complete());
    let received = mx.received();
    assert_eq!(received.len(), 1);
    let message = &received[0];
    assert_eq!(message.body, MESSAGE);
    assert_eq!(message.outcome, Outcome::Accepted);
    assert!(message.tls);
    assert_eq!(message.helo, "relay.test");
    assert_eq!(message.from.as_deref(), Some("a@example.org"));
    assert_eq!(message.mail.envid.as_deref(), Some("ENV-1"));
    assert_eq!(message.recipients.len(), 1);
    assert_eq!(message.recipients[0].0, "b@example.net");
    assert_eq!(message.recipients[0].1.notify, Some(Notify::Never));
    assert_eq!(
        message.recipients[0].1.orcpt.as_ref().unwrap().address,
        "B@example.net"
    );
    assert_eq!(mx.accepted(), received);
    assert_eq!(mx.connections(), 1);
}

#[tokio::test]
async fn temporary_failures_then_acceptance() {
    let mx = FakeMx::start(ip(1), Script::new().temp_fail_data(2))
        .await
        .unwrap();
    let client = client(&mx, Tls::Opportunistic);
    for _ in 0..2 {
        let error = client
            .send(&envelope(&["b@example.net"]), MESSAGE.to_vec())
            .await
            .unwrap_err();
        assert!(error.is_transient(), "{error}");
        assert_eq!(error.reply().map(|r| r.code()), Some(451));
    }
    assert!(
        client
            .send(&envelope(&["b@example.net"]), MESSAGE.to_vec())
            .await
            .unwrap()
            .is_complete()
    );
    let outcomes: Vec<Outcome> = mx.received().iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::TempFailed, Outcome::TempFailed, Outcome::Accepted]
    );
    assert_eq!(mx.accepted().len(), 1);
}

#[tokio::test]
async fn chosen_recipients_are_refused() {
    let script = Script::new().reject_rcpt("Bad@example.net", 550, "5.1.1", "no such user");
    let mx = FakeMx::start(ip(1), script).await.unwrap();
    let result = client(&mx, Tls::None)
        .send(
            &envelope(&["good@example.net", "bad@example.net"]),
            MESSAGE.to_vec(),
        )
        .await
        .unwrap();
    let rejected: Vec<_> = result.rejected().collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].address.as_str(), "bad@example.net");
    assert_eq!(rejected[0].reply().unwrap().code(), 550);
    let accepted = mx.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].recipients.len(), 1);
    assert_eq!(accepted[0].recipients[0].0, "good@example.net");
    assert!(!accepted[0].tls);
    assert_eq!(mx.rcpt_commands(), 2);
}

#[tokio::test]
async fn greeting_can_be_a_421() {
    let mx = FakeMx::start(ip(1), Script::new().greeting_reply(421, "4.3.2", "not now"))
        .await
        .unwrap();
    let error = client(&mx, Tls::Opportunistic)
        .send(&envelope(&["b@example.net"]), MESSAGE.to_vec())
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert_eq!(error.reply().map(|r| r.code()), Some(421), "{error:?}");
    assert!(mx.received().is_empty());
}

#[tokio::test]
async fn connection_dropped_after_data_gets_no_reply() {
    let mx = FakeMx::start(ip(1), Script::new().drop_after_data(1))
        .await
        .unwrap();
    let client = client(&mx, Tls::None);
    let error = client
        .send(&envelope(&["b@example.net"]), MESSAGE.to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::Closed | ErrorKind::Io),
        "{error:?}"
    );
    assert!(error.reply().is_none(), "{error:?}");
    // The fake got the whole message before it hung up.
    let received = mx.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].outcome, Outcome::Dropped);
    assert_eq!(received[0].body, MESSAGE);
    assert!(
        mx.wait_until(Duration::from_secs(5), || mx.open_connections() == 0)
            .await
    );
    // The next message goes through.
    assert!(
        client
            .send(&envelope(&["b@example.net"]), MESSAGE.to_vec())
            .await
            .unwrap()
            .is_complete()
    );
}

#[tokio::test]
async fn slow_greeting_waits() {
    let mx = FakeMx::start(
        ip(1),
        Script::new().slow_greeting(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let started = Instant::now();
    client(&mx, Tls::None)
        .send(&envelope(&["b@example.net"]), MESSAGE.to_vec())
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn without_starttls_required_tls_fails_and_opportunistic_goes_plain() {
    let mx = FakeMx::start(ip(1), Script::new().no_starttls())
        .await
        .unwrap();
    assert!(mx.certificate_pem().is_none());
    let error = client(&mx, Tls::Required)
        .send(&envelope(&["b@example.net"]), MESSAGE.to_vec())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TlsUnavailable);
    client(&mx, Tls::Opportunistic)
        .send(&envelope(&["b@example.net"]), MESSAGE.to_vec())
        .await
        .unwrap();
    assert!(!mx.accepted()[0].tls);
}

#[tokio::test]
async fn counts_concurrent_connections() {
    let mx = FakeMx::start(ip(1), Script::new()).await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = BufReader::new(TcpStream::connect(mx.addr()).await.unwrap());
        let mut greeting = String::new();
        stream.read_line(&mut greeting).await.unwrap();
        assert!(greeting.starts_with("220 "), "{greeting}");
        streams.push(stream);
    }
    assert_eq!(mx.open_connections(), 3);
    assert_eq!(mx.max_concurrent(), 3);
    drop(streams);
    assert!(
        mx.wait_until(Duration::from_secs(5), || mx.open_connections() == 0)
            .await
    );
    assert_eq!(mx.max_concurrent(), 3);
    assert_eq!(mx.connections(), 3);
}

#[tokio::test]
async fn a_group_shares_one_port() {
    let mxs = FakeMx::start_group(
        &[ip(2), ip(3)],
        vec![Script::new(), Script::new().temp_fail_data(1)],
    )
    .await
    .unwrap();
    assert_eq!(mxs[0].addr().port(), mxs[1].addr().port());
    assert_ne!(mxs[0].addr().ip(), mxs[1].addr().ip());
    client(&mxs[0], Tls::None)
        .send(&envelope(&["b@example.net"]), MESSAGE.to_vec())
        .await
        .unwrap();
    assert!(
        client(&mxs[1], Tls::None)
            .send(&envelope(&["b@example.net"]), MESSAGE.to_vec())
            .await
            .is_err()
    );
    assert_eq!(mxs[0].accepted().len(), 1);
    assert_eq!(mxs[1].received()[0].outcome, Outcome::TempFailed);
}

#[tokio::test]
async fn dropping_the_fake_closes_its_port() {
    let mx = FakeMx::start(ip(1), Script::new()).await.unwrap();
    let addr = mx.addr();
    drop(mx);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_plain_fake_offers_neither_starttls_nor_dsn_and_keeps_the_command_lines() {
    let mx = FakeMx::start(ip(1), Script::plain()).await.unwrap();
    let envelope = Envelope::builder()
        .from("a@example.org")
        .recipient(
            Recipient::new("b@example.net")
                .unwrap()
                .notify(Notify::Never),
        )
        .build()
        .unwrap();
    let result = client(&mx, Tls::Opportunistic)
        .send(&envelope, MESSAGE.to_vec())
        .await
        .unwrap();
    assert!(!result.dsn_offered);
    assert!(!mx.received()[0].tls);
    // Without DSN the client leaves NOTIFY out, as the wire shows.
    assert_eq!(mx.commands_starting("rcpt"), ["RCPT TO:<b@example.net>"]);
    // No STARTTLS; the body went with CHUNKING.
    let commands = mx.commands();
    assert_eq!(
        commands[..4],
        [
            "EHLO relay.test",
            "MAIL FROM:<a@example.org> SIZE=117 BODY=8BITMIME",
            "RCPT TO:<b@example.net>",
            "BDAT 117 LAST",
        ]
    );
}

#[tokio::test]
async fn auth_after_starttls_records_the_identity_and_refuses_others() {
    let mx = FakeMx::start(ip(1), Script::new().auth("relayuser", "s3cret"))
        .await
        .unwrap();
    let pem = mx.certificate_pem().unwrap().to_owned();
    let with = |password: &str| {
        let config = ClientConfig::builder(mx.addr().ip().to_string())
            .port(mx.addr().port())
            .tls(Tls::Required)
            .hello_name("relay.test")
            .tls_config(
                TlsConfig::new()
                    .add_root_certificates_pem(pem.as_bytes())
                    .unwrap()
                    .server_name("localhost"),
            )
            .credentials(smtp_client::Credentials::password("relayuser", password))
            .build()
            .unwrap();
        Client::new(config)
    };
    let refused = with("wrong")
        .send(&envelope(&["b@example.net"]), MESSAGE.to_vec())
        .await
        .unwrap_err();
    assert_eq!(refused.reply().map(|r| r.code()), Some(535), "{refused}");
    with("s3cret")
        .send(&envelope(&["b@example.net"]), MESSAGE.to_vec())
        .await
        .unwrap();
    let received = mx.accepted();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].identity.as_deref(), Some("relayuser"));
    // The AUTH line is kept with its secret masked.
    assert!(
        mx.commands_starting("AUTH")
            .iter()
            .all(|line| line.contains("***")),
        "{:?}",
        mx.commands_starting("AUTH")
    );
}
