//! The protocol transcript hook: exact lines, AUTH redaction, escaping.

mod common;

use std::sync::{Arc, Mutex};

use common::{
    Client, TestAuthenticator, TestBackend, builder, connect, server_name, test_tls, tls_connector,
};
use smtp_server::smtp_proto::sasl;
use smtp_server::{AuthPolicy, Direction, LineKind, Server};
use tokio::io::DuplexStream;

/// Every line the hook saw: (session id, kind, `C: text` / `S: text`).
type Lines = Arc<Mutex<Vec<(String, LineKind, String)>>>;

fn recording_server(backend: &TestBackend) -> (Server<TestBackend>, Lines) {
    let lines: Lines = Arc::default();
    let sink = Arc::clone(&lines);
    let server = builder(backend)
        .auth(TestAuthenticator, AuthPolicy::new().allow_insecure(true))
        .transcript(move |line| {
            assert!(!line.text.contains(['\r', '\n']));
            assert_eq!(
                line.text.starts_with('<'),
                line.kind == LineKind::Summary,
                "{line}"
            );
            if line.direction == Direction::Server {
                assert_eq!(line.kind, LineKind::Wire);
            }
            sink.lock()
                .unwrap()
                .push((line.session_id.to_owned(), line.kind, line.to_string()));
        })
        .build()
        .unwrap();
    (server, lines)
}

/// Waits until the session has ended, so its last lines are recorded.
async fn finish(mut client: Client<DuplexStream>, backend: &TestBackend) {
    client.expect_closed().await;
    for _ in 0..200 {
        if backend.events().last().map(String::as_str) == Some("close") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("session did not close");
}

fn texts(lines: &Lines) -> Vec<String> {
    lines
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, text)| text.clone())
        .collect()
}

#[tokio::test]
async fn full_session_transcript_with_auth_redacted() {
    let backend = TestBackend::new();
    let (server, lines) = recording_server(&backend);
    let mut client = connect(&server);
    let wrong_plain = sasl::plain_response(None, "alice", "hunter2");
    let user = sasl::login_response("alice");
    let password = sasl::login_response("secret");

    client.hello().await;
    client.send(format!("AUTH PLAIN {wrong_plain}\r\n")).await;
    client.expect("535 5.7.8").await;
    client.send("AUTH LOGIN\r\n").await;
    client.expect("334 VXNlcm5hbWU6").await;
    client.send(format!("{user}\r\n")).await;
    client.expect("334 UGFzc3dvcmQ6").await;
    client.send(format!("{password}\r\n")).await;
    client.expect("235 2.7.0").await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354 ").await;
    // Body lines that look like commands or secrets are not shown.
    client
        .send("Subject: hi\r\n\r\nAUTH PLAIN secret\r\n..dot\r\n.\r\n")
        .await;
    client.expect("250 2.0.0").await;
    client.send("QUIT\r\n").await;
    client.expect("221 2.0.0").await;
    finish(client, &backend).await;

    assert_eq!(
        texts(&lines),
        [
            "S: 220 mx.test ESMTP ready",
            "C: EHLO client.test",
            "S: 250-mx.test",
            "S: 250-PIPELINING",
            "S: 250-SIZE 33554432",
            "S: 250-8BITMIME",
            "S: 250-BINARYMIME",
            "S: 250-CHUNKING",
            "S: 250-SMTPUTF8",
            "S: 250-DSN",
            "S: 250-ENHANCEDSTATUSCODES",
            "S: 250 AUTH PLAIN LOGIN",
            "C: AUTH PLAIN ***",
            "S: 535 5.7.8 Authentication credentials invalid",
            "C: AUTH LOGIN",
            "S: 334 VXNlcm5hbWU6",
            "C: ***",
            "S: 334 UGFzc3dvcmQ6",
            "C: ***",
            "S: 235 2.7.0 Authentication successful",
            // Pipelined commands each come with their reply, in the order
            // they were served.
            "C: MAIL FROM:<a@x.test>",
            "S: 250 2.1.0 Sender OK",
            "C: RCPT TO:<b@x.test>",
            "S: 250 2.1.5 Recipient OK",
            "C: DATA",
            "S: 354 Start mail input; end with <CRLF>.<CRLF>",
            "C: <message body: 40 octets>",
            "S: 250 2.0.0 Message accepted",
            "C: QUIT",
            "S: 221 2.0.0 mx.test closing connection",
        ]
    );
    let recorded = lines.lock().unwrap();
    let id = &backend.infos()[0].id;
    assert!(recorded.iter().all(|(session, _, _)| session == id));
    for (_, _, text) in recorded.iter() {
        for secret in [
            "hunter2",
            "secret",
            wrong_plain.as_str(),
            user.as_str(),
            password.as_str(),
        ] {
            assert!(!text.contains(secret), "{secret:?} leaked in {text:?}");
        }
    }
    let summaries: Vec<_> = recorded
        .iter()
        .filter(|(_, kind, _)| *kind == LineKind::Summary)
        .collect();
    assert_eq!(summaries.len(), 1);
}

#[tokio::test]
async fn client_text_cannot_forge_lines_or_summaries() {
    let backend = TestBackend::new();
    let (server, lines) = recording_server(&backend);
    let mut client = connect(&server);
    client.hello().await;
    client.send("NOOP x\rS: 250 forged\r\n").await;
    client.expect("550 5.5.2").await;
    client.send("<message body: 1 octets>\r\n").await;
    client.expect("500 5.5.1").await;
    client.send("VRFY a\\b\u{85}\r\n").await;
    client.expect("252 ").await;
    client.send("VRFY a\tb\r\n").await;
    client.expect("500 5.5.2").await;
    client.send(b"HELP \xff\x00\r\n").await;
    client.expect("500 5.5.2").await;
    client.send("QUIT\r\n").await;
    client.expect("221").await;
    finish(client, &backend).await;

    let texts = texts(&lines);
    let client_lines: Vec<_> = texts.iter().filter(|t| t.starts_with("C:")).collect();
    assert_eq!(
        client_lines,
        [
            "C: EHLO client.test",
            "C: NOOP x\\rS: 250 forged",
            "C: \\x3cmessage body: 1 octets>",
            "C: VRFY a\\\\b\\u{0085}",
            "C: VRFY a\\tb",
            "C: HELP \\xff\\x00",
            "C: QUIT",
        ]
    );
}

#[tokio::test]
async fn auth_payloads_sent_blind_after_a_refused_auth_are_redacted() {
    let backend = TestBackend::new();
    let (server, lines) = recording_server(&backend);
    let mut client = connect(&server);
    client.expect("220 ").await;
    // AUTH before EHLO is refused, so the response lines pipelined behind
    // it are read as (unknown) commands: they stay hidden all the same.
    let user = sasl::login_response("alice");
    let password = sasl::login_response("secret");
    client
        .send(format!(
            "AUTH LOGIN\r\n{user}\r\n{password}\r\nNOOP\r\nQUIT\r\n"
        ))
        .await;
    client.expect("503 5.5.1").await;
    client.expect("500 5.5.1").await;
    client.expect("500 5.5.1").await;
    client.expect("250 2.0.0").await;
    client.expect("221 2.0.0").await;
    finish(client, &backend).await;

    let texts = texts(&lines);
    let client_lines: Vec<_> = texts.iter().filter(|t| t.starts_with("C:")).collect();
    assert_eq!(
        client_lines,
        ["C: AUTH LOGIN", "C: ***", "C: ***", "C: NOOP", "C: QUIT"]
    );
}

#[tokio::test]
async fn bdat_chunks_and_long_lines_are_summarised() {
    let backend = TestBackend::new();
    let (server, lines) = recording_server(&backend);
    let mut client = connect(&server);
    client.hello().await;
    client.send(format!("NOOP {}\r\n", "x".repeat(5000))).await;
    client.expect("500 5.5.2").await;
    // A DATA message first: its octets are not counted into a BDAT chunk.
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354 ").await;
    client.send("hello\r\n.\r\n").await;
    client.expect("250 2.0.0 Message accepted").await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nBDAT 5\r\nhelloBDAT 3 LAST\r\nabc")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("250 2.0.0 5 octets").await;
    client.expect("250 2.0.0 Message accepted").await;
    client.send("QUIT\r\n").await;
    client.expect("221").await;
    finish(client, &backend).await;

    let texts = texts(&lines);
    let client_lines: Vec<_> = texts.iter().filter(|t| t.starts_with("C:")).collect();
    assert_eq!(
        client_lines,
        [
            "C: EHLO client.test",
            "C: <command line too long, discarded>",
            "C: MAIL FROM:<a@x.test>",
            "C: RCPT TO:<b@x.test>",
            "C: DATA",
            "C: <message body: 7 octets>",
            "C: MAIL FROM:<a@x.test>",
            "C: RCPT TO:<b@x.test>",
            "C: BDAT 5",
            "C: <BDAT chunk: 5 octets>",
            "C: BDAT 3 LAST",
            "C: <BDAT chunk: 3 octets>",
            "C: QUIT",
        ]
    );
}

#[tokio::test]
async fn plaintext_discarded_at_starttls_is_summarised() {
    let backend = TestBackend::new();
    let (tls, root) = test_tls("mx.test");
    let lines: Lines = Arc::default();
    let sink = Arc::clone(&lines);
    let server = builder(&backend)
        .tls(tls)
        .transcript(move |line| {
            sink.lock()
                .unwrap()
                .push((line.session_id.to_owned(), line.kind, line.to_string()));
        })
        .build()
        .unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client.send("STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n").await;
    client.expect("220 2.0.0").await;
    let stream = client.into_inner();
    let tls_stream = tls_connector(&root)
        .connect(server_name("mx.test"), stream)
        .await
        .unwrap();
    let mut client = Client::new(tls_stream);
    client.send("NOOP\r\n").await;
    client.expect("250 2.0.0").await;

    let texts = texts(&lines);
    let client_lines: Vec<_> = texts.iter().filter(|t| t.starts_with("C:")).collect();
    assert_eq!(
        client_lines,
        [
            "C: EHLO client.test",
            "C: STARTTLS",
            "C: <discarded 25 octets sent after STARTTLS>",
            "C: NOOP",
        ]
    );
    let recorded = lines.lock().unwrap();
    let (_, kind, _) = recorded
        .iter()
        .find(|(_, _, text)| text.starts_with("C: <discarded"))
        .unwrap();
    assert_eq!(*kind, LineKind::Summary);
}
