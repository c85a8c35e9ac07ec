//! Tests of the kind applications write: send a welcome mail through a
//! real client library, then assert on what arrived; retry loops and pools
//! against a server that misbehaves on purpose.

use std::time::Duration;

use smtp_client::{
    Client, ClientConfig, Credentials, Envelope, ErrorKind, Pool, PoolConfig, Step, Timeouts, Tls,
    TlsConfig,
};
use smtp_test::TestServer;
use smtp_test::faults::Faults;
use tokio::time::Instant;

const PDF: &[u8] = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n";

/// The application's mailer, written against lettre.
mod lettre_app {
    use lettre::message::header::ContentType;
    use lettre::message::{Attachment, MultiPart};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    pub(crate) struct Mailer {
        transport: AsyncSmtpTransport<Tokio1Executor>,
    }

    impl Mailer {
        pub(crate) fn plain(port: u16) -> Mailer {
            Mailer {
                transport: AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                    .port(port)
                    .build(),
            }
        }

        pub(crate) fn submission(port: u16, ca_pem: &str, user: &str, password: &str) -> Mailer {
            let tls = TlsParameters::builder("localhost".to_owned())
                .add_root_certificate(Certificate::from_pem(ca_pem.as_bytes()).unwrap())
                .build()
                .unwrap();
            Mailer {
                transport: AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                    .port(port)
                    .tls(Tls::Required(tls))
                    .credentials(Credentials::new(user.to_owned(), password.to_owned()))
                    .build(),
            }
        }

        pub(crate) async fn send_welcome(&self, to: &str, code: &str, invoice: &[u8]) {
            let text = format!(
                "Welcome aboard!\n\nYour code is {code}.\nConfirm: https://app.test/confirm?code={code}\n"
            );
            let html = format!(
                "<p>Welcome aboard!</p><p>Your code is <b>{code}</b>.</p>\
                 <p><a href=\"https://app.test/confirm?code={code}&amp;src=mail\">Confirm</a></p>"
            );
            let email = Message::builder()
                .from("App <app@example.com>".parse().unwrap())
                .to(to.parse().unwrap())
                .subject("Welcome")
                .multipart(
                    MultiPart::mixed()
                        .multipart(MultiPart::alternative_plain_html(text, html))
                        .singlepart(Attachment::new("invoice.pdf".to_owned()).body(
                            invoice.to_vec(),
                            ContentType::parse("application/pdf").unwrap(),
                        )),
                )
                .unwrap();
            self.transport.send(email).await.expect("lettre send");
        }
    }
}

#[tokio::test]
async fn a_welcome_mail_sent_through_lettre_is_asserted_by_subject_body_and_attachment() {
    let server = TestServer::builder().start().await.unwrap();
    lettre_app::Mailer::plain(server.port())
        .send_welcome("bob@example.com", "482913", PDF)
        .await;

    let msg = server
        .wait_for(|m| m.to("bob@example.com"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(msg.subject(), Some("Welcome"));
    assert_eq!(msg.from(), Some("app@example.com"));
    assert!(msg.text().unwrap().contains("Your code is 482913."));
    assert!(msg.html().unwrap().contains("<b>482913</b>"));
    assert_eq!(msg.one_time_code().as_deref(), Some("482913"));
    assert_eq!(
        msg.links(),
        [
            "https://app.test/confirm?code=482913",
            "https://app.test/confirm?code=482913&src=mail"
        ]
    );
    assert_eq!(msg.attachments().len(), 1);
    let invoice = &msg.attachments()[0];
    assert_eq!(invoice.filename(), Some("invoice.pdf"));
    assert_eq!(invoice.content_type(), "application/pdf");
    assert_eq!(invoice.bytes(), PDF);
    assert_eq!(msg.header("to"), Some("bob@example.com"));
    assert!(msg.header("Date").is_some(), "{:?}", msg.headers());
    assert!(msg.tls().is_none());
    assert_eq!(server.count_for("bob@example.com"), 1);
}

#[tokio::test]
async fn lettre_with_starttls_and_auth_shows_in_the_envelope_and_the_transcript_masks_auth() {
    let server = TestServer::builder()
        .tls_self_signed()
        .user("alice", "s3cret-pass")
        .require_auth()
        .start()
        .await
        .unwrap();
    let ca = server.ca_pem().unwrap().to_owned();
    lettre_app::Mailer::submission(server.port(), &ca, "alice", "s3cret-pass")
        .send_welcome("carol@example.org", "1234", b"x")
        .await;
    let msg = server
        .wait_for(|m| m.to("carol@example.org"), Duration::from_secs(5))
        .await
        .unwrap();
    let tls = msg.tls().expect("the message came over TLS");
    assert_eq!(tls.version, "TLSv1_3", "{tls:?}");
    assert_eq!(msg.authenticated_as(), Some("alice"));
    assert!(!msg.envelope().helo.is_empty());
    let transcript = server.transcript();
    assert!(transcript.contains("C: STARTTLS"), "{transcript}");
    assert!(transcript.contains("235 2.7.0"), "{transcript}");
    // Neither the password nor its base64 forms appear.
    assert!(!transcript.to_string().contains("s3cret"), "{transcript}");
    assert!(!transcript.to_string().contains("czNjcmV0"), "{transcript}");
}

fn config(server: &TestServer) -> smtp_client::ClientConfigBuilder {
    ClientConfig::builder("127.0.0.1")
        .port(server.port())
        .tls(Tls::None)
}

fn envelope(to: &[&str]) -> Envelope {
    Envelope::new("app@example.com", to.iter().copied()).unwrap()
}

#[tokio::test]
async fn smtp_client_with_tls_auth_and_parameters_shows_the_whole_envelope() {
    let server = TestServer::builder()
        .tls_self_signed()
        .user("alice", "secret")
        .start()
        .await
        .unwrap();
    let tls_config = TlsConfig::new()
        .add_root_certificates_pem(server.ca_pem().unwrap().as_bytes())
        .unwrap();
    let config = config(&server)
        .tls(Tls::Required)
        .tls_config(tls_config)
        .credentials(Credentials::password("alice", "secret"))
        .build()
        .unwrap();
    let body = mail_builder::MessageBuilder::new()
        .from(("App", "app@example.com"))
        .to("bob@example.com")
        .subject("Your report")
        .text_body("See the attached report.")
        .attachment("text/csv", "report.csv", "a,b\r\n1,2\r\n")
        .write_to_vec()
        .unwrap();
    let result = Client::new(config)
        .send(&envelope(&["bob@example.com", "ann@example.com"]), body)
        .await
        .unwrap();
    assert!(result.is_complete());
    let msg = server
        .wait_for(
            |m| m.subject() == Some("Your report"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(msg.recipients(), ["bob@example.com", "ann@example.com"]);
    assert_eq!(msg.authenticated_as(), Some("alice"));
    assert!(msg.tls().is_some());
    assert!(msg.envelope().mail_parameters.size.is_some());
    assert_eq!(msg.attachments()[0].filename(), Some("report.csv"));
    assert_eq!(msg.attachments()[0].bytes(), b"a,b\r\n1,2\r\n");
    assert!(msg.raw().starts_with(b"From: "));
}

#[tokio::test]
async fn wait_for_lists_what_did_arrive_when_nothing_matches() {
    let server = TestServer::start().await.unwrap();
    let client = Client::new(config(&server).build().unwrap());
    client
        .send(
            &envelope(&["bob@example.com"]),
            "Subject: Hello Bob\r\n\r\nhi\r\n",
        )
        .await
        .unwrap();
    let error = server
        .wait_for(|m| m.to("carol@example.com"), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(error.arrived().len(), 1);
    assert_eq!(
        error.to_string(),
        format!(
            "no message matched within 300ms; 1 arrived:\n  1. from <app@example.com> to <bob@example.com> subject \"Hello Bob\" ({} octets)",
            error.arrived()[0].raw().len()
        )
    );
    // take, clear and the counts.
    client
        .send(
            &envelope(&["bob@example.com", "carol@example.com"]),
            "Subject: two\r\n\r\nhi\r\n",
        )
        .await
        .unwrap();
    assert_eq!(
        server
            .wait_for_count(2, Duration::from_secs(5))
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(server.count_for("BOB@example.com"), 2);
    assert_eq!(
        server.counts().into_iter().collect::<Vec<_>>(),
        [
            ("bob@example.com".to_owned(), 2),
            ("carol@example.com".to_owned(), 1)
        ]
    );
    assert_eq!(server.take().len(), 2);
    assert!(server.messages().is_empty());
    client
        .send(&envelope(&["bob@example.com"]), "Subject: 3\r\n\r\nhi\r\n")
        .await
        .unwrap();
    server.clear();
    assert_eq!(server.count_for("bob@example.com"), 0);
}

/// The application's retry loop: try again after `backoff` while the
/// failure is transient, at most `attempts` times.
async fn send_with_retries(
    client: &Client,
    envelope: &Envelope,
    message: &str,
    attempts: usize,
    backoff: Duration,
) -> Result<usize, smtp_client::Error> {
    let mut attempt = 1;
    loop {
        match client.send(envelope, message.to_owned()).await {
            Ok(_) => return Ok(attempt),
            Err(error) if error.is_transient() && attempt < attempts => {
                tokio::time::sleep(backoff).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_loop_gets_through_greylisting() {
    let server = TestServer::builder()
        .faults(Faults::parse("rcpt greylist 5m").unwrap())
        .start()
        .await
        .unwrap();
    let client = Client::new(config(&server).build().unwrap());
    let start = Instant::now();
    let attempts = send_with_retries(
        &client,
        &envelope(&["bob@example.com"]),
        "Subject: greylisted\r\n\r\nhi\r\n",
        10,
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    // Deferred at 0, 2 and 4 minutes; accepted at 6.
    assert_eq!(attempts, 4);
    let elapsed = start.elapsed();
    assert!(
        (Duration::from_secs(360)..Duration::from_secs(361)).contains(&elapsed),
        "{elapsed:?}"
    );
    assert_eq!(server.count_for("bob@example.com"), 1);
    assert_eq!(
        server
            .transcript()
            .lines()
            .iter()
            .filter(|line| line.starts_with("S: 451 4.7.1 Greylisted"))
            .count(),
        3
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_loop_survives_451_three_times_and_gives_up_on_550() {
    let server = TestServer::builder()
        .faults(
            Faults::parse(
                "rcpt message ..3 reply 451 4.3.0 \"try again later\"\n\
                 rcpt to \"gone@example.com\" reply 550 5.1.1 \"no such user\"",
            )
            .unwrap(),
        )
        .start()
        .await
        .unwrap();
    let client = Client::new(config(&server).build().unwrap());
    let attempts = send_with_retries(
        &client,
        &envelope(&["bob@example.com"]),
        "Subject: eventually\r\n\r\nhi\r\n",
        5,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(attempts, 4);
    assert_eq!(server.messages().len(), 1);
    // A permanent refusal is not retried.
    let error = send_with_retries(
        &client,
        &envelope(&["gone@example.com"]),
        "Subject: never\r\n\r\nhi\r\n",
        5,
        Duration::from_secs(30),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RecipientsRejected);
    assert!(error.is_permanent());
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn a_pool_recovers_from_421_after_three_messages_per_connection() {
    let server = TestServer::builder()
        .faults(
            Faults::parse(
                "mail rate 3/min per connection reply 421 4.7.0 \"too many messages on this connection\"",
            )
            .unwrap(),
        )
        .start()
        .await
        .unwrap();
    let pool = Pool::new(
        config(&server).build().unwrap(),
        PoolConfig {
            max_connections: 1,
            ..PoolConfig::default()
        },
    );
    for n in 0..10 {
        pool.send(
            &envelope(&["bob@example.com"]),
            format!("Subject: {n}\r\n\r\nhi\r\n"),
        )
        .await
        .unwrap_or_else(|error| panic!("message {n}: {error}\n{}", server.transcript()));
    }
    pool.close().await;
    let subjects: Vec<String> = server
        .messages()
        .iter()
        .map(|m| m.subject().unwrap().to_owned())
        .collect();
    assert_eq!(subjects, (0..10).map(|n| n.to_string()).collect::<Vec<_>>());
    let transcript = server.transcript();
    // Three messages per connection: four connections, three refused.
    assert_eq!(transcript.sessions().len(), 4, "{transcript}");
    assert_eq!(
        transcript
            .lines()
            .iter()
            .filter(|line| line.starts_with("S: 421 4.7.0 too many messages"))
            .count(),
        3
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_timeout_fires_against_a_slow_greeting() {
    let server = TestServer::builder()
        .faults(Faults::parse("greeting delay 10m").unwrap())
        .start()
        .await
        .unwrap();
    let timeouts = Timeouts {
        greeting: Duration::from_secs(5),
        ..Timeouts::default()
    };
    let client = Client::new(config(&server).timeouts(timeouts).build().unwrap());
    let start = Instant::now();
    let error = client
        .send(&envelope(&["bob@example.com"]), "Subject: x\r\n\r\nhi\r\n")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    assert_eq!(error.step(), Step::Greeting);
    assert!(error.is_transient());
    let elapsed = start.elapsed();
    assert!(
        (Duration::from_secs(5)..Duration::from_millis(5100)).contains(&elapsed),
        "{elapsed:?}"
    );
    assert!(server.messages().is_empty());
}

/// lettre 0.11's `timeout()` bounds the TCP connect only: against this
/// server, a one-second timeout let a send wait three seconds for a
/// delayed greeting, and as long for a delayed RCPT reply. An application
/// that must not hang puts its own deadline around the send; this is the
/// test that proves it does.
#[tokio::test(start_paused = true)]
async fn an_application_deadline_around_lettre_fires_against_a_slow_greeting() {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
    let server = TestServer::builder()
        .faults(Faults::parse("greeting delay 10m").unwrap())
        .start()
        .await
        .unwrap();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(server.port())
        .timeout(Some(Duration::from_secs(5)))
        .build();
    let email = lettre::Message::builder()
        .from("app@example.com".parse().unwrap())
        .to("bob@example.com".parse().unwrap())
        .subject("never")
        .body("hi".to_owned())
        .unwrap();
    let start = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), mailer.send(email)).await;
    assert!(outcome.is_err(), "the send finished: {outcome:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    assert!(server.messages().is_empty());
}
