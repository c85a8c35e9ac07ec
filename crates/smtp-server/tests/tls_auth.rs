//! STARTTLS and AUTH over in-memory streams.

mod common;

use common::{
    Client, TestAuthenticator, TestBackend, builder, connect, server_name, test_tls, tls_connector,
};
use std::sync::{Arc, Mutex};

use smtp_server::smtp_proto::sasl;
use smtp_server::{
    AuthPolicy, Authenticator, ConnectionInfo, Credentials, Identity, SaslStep, SmtpError,
};

fn b64(value: &str) -> String {
    sasl::login_response(value)
}

#[tokio::test]
async fn starttls_discards_injected_plaintext_and_resets_state() {
    let backend = TestBackend::new();
    let (tls, root) = test_tls("mx.test");
    let server = builder(&backend)
        .tls(tls)
        .auth(TestAuthenticator, AuthPolicy::new())
        .build()
        .unwrap();
    let mut client = connect(&server);
    let ehlo = client.hello().await;
    assert!(ehlo.contains("STARTTLS"));
    assert!(
        !ehlo.contains("AUTH"),
        "no AUTH before TLS by default: {ehlo:?}"
    );
    assert!(!ehlo.contains("REQUIRETLS"));
    // CVE-2011-0411: commands pipelined behind STARTTLS in plaintext.
    client.send("STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n").await;
    assert_eq!(client.reply().await, "220 2.0.0 Ready to start TLS\r\n");
    let stream = client.into_inner();
    let tls_stream = tls_connector(&root)
        .connect(server_name("mx.test"), stream)
        .await
        .unwrap();
    let mut client = Client::new(tls_stream);
    // The greeting was forgotten with everything else (RFC 3207 §4.2).
    client.send("MAIL FROM:<a@x.test>\r\n").await;
    client.expect("503 5.5.1").await;
    client.send("EHLO client.test\r\n").await;
    let ehlo = client.expect("250-mx.test").await;
    assert!(!ehlo.contains("STARTTLS"));
    assert!(ehlo.contains("REQUIRETLS"));
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo:?}");
    client.send("STARTTLS\r\n").await;
    client.expect("503 5.5.1").await;
    client
        .send("MAIL FROM:<a@x.test> REQUIRETLS\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
    client.send("secret\r\n.\r\n").await;
    client.expect("250 2.0.0").await;
    assert!(!backend.events().iter().any(|e| e.contains("evil")));
    let message = &backend.messages()[0];
    assert!(message.envelope.tls.is_some());
    assert!(message.envelope.mail_parameters.requiretls);
    assert_eq!(message.envelope.protocol(), "ESMTPS");
    assert!(backend.events().contains(&"reset".to_owned()));
}

#[tokio::test]
async fn require_tls_refuses_mail_before_starttls() {
    let backend = TestBackend::new();
    let (tls, _) = test_tls("mx.test");
    let server = builder(&backend)
        .tls(tls)
        .require_tls(true)
        .build()
        .unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client.send("MAIL FROM:<a@x.test>\r\n").await;
    assert_eq!(
        client.reply().await,
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    client.send("NOOP\r\n").await;
    client.expect("250").await;
}

#[tokio::test]
async fn auth_before_tls_is_refused_by_default() {
    let backend = TestBackend::new();
    let (tls, _) = test_tls("mx.test");
    let server = builder(&backend)
        .tls(tls)
        .auth(TestAuthenticator, AuthPolicy::new())
        .build()
        .unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client
        .send(format!(
            "AUTH PLAIN {}\r\n",
            sasl::plain_response(None, "alice", "secret")
        ))
        .await;
    assert_eq!(
        client.reply().await,
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
}

fn insecure_auth_server(backend: &TestBackend, require: bool) -> smtp_server::Server<TestBackend> {
    builder(backend)
        .auth(
            TestAuthenticator,
            AuthPolicy::new().allow_insecure(true).require(require),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn auth_plain_with_initial_response_and_continuation() {
    let backend = TestBackend::new();
    let server = insecure_auth_server(&backend, true);
    let mut client = connect(&server);
    let ehlo = client.hello().await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"));
    client.send("MAIL FROM:<a@x.test>\r\n").await;
    assert_eq!(
        client.reply().await,
        "530 5.7.0 Authentication required\r\n"
    );
    client.send("AUTH PLAIN\r\n").await;
    assert_eq!(client.reply().await, "334 \r\n");
    client
        .send(format!(
            "{}\r\n",
            sasl::plain_response(None, "alice", "secret")
        ))
        .await;
    assert_eq!(
        client.reply().await,
        "235 2.7.0 Authentication successful\r\n"
    );
    client.send("AUTH PLAIN =\r\n").await;
    client.expect("503 5.5.1").await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
    client.send("x\r\n.\r\n").await;
    client.expect("250 2.0.0").await;
    let message = &backend.messages()[0];
    assert_eq!(message.envelope.identity.as_ref().unwrap().name, "alice");
    assert_eq!(message.envelope.protocol(), "ESMTPA");
    assert!(backend.events().contains(&"auth alice".to_owned()));

    let mut client = connect(&server);
    client.hello().await;
    client
        .send(format!(
            "AUTH PLAIN {}\r\n",
            sasl::plain_response(None, "alice", "secret")
        ))
        .await;
    client.expect("235 2.7.0").await;
}

#[tokio::test]
async fn auth_login() {
    let backend = TestBackend::new();
    let server = insecure_auth_server(&backend, false);
    let mut client = connect(&server);
    client.hello().await;
    client.send("AUTH LOGIN\r\n").await;
    assert_eq!(client.reply().await, "334 VXNlcm5hbWU6\r\n");
    client.send(format!("{}\r\n", b64("alice"))).await;
    assert_eq!(client.reply().await, "334 UGFzc3dvcmQ6\r\n");
    client.send(format!("{}\r\n", b64("secret"))).await;
    client.expect("235 2.7.0").await;
    // With the user name as initial response.
    let mut client = connect(&server);
    client.hello().await;
    client
        .send(format!("AUTH LOGIN {}\r\n", b64("alice")))
        .await;
    assert_eq!(client.reply().await, "334 UGFzc3dvcmQ6\r\n");
    client.send(format!("{}\r\n", b64("secret"))).await;
    client.expect("235 2.7.0").await;
}

/// Keeps every mechanism and credentials it is handed, and refuses them.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(String, Credentials)>>>);

impl Authenticator for Recorder {
    async fn authenticate(
        &self,
        _info: &ConnectionInfo,
        mechanism: &str,
        credentials: &Credentials,
    ) -> Result<Identity, SmtpError> {
        self.0
            .lock()
            .unwrap()
            .push((mechanism.to_owned(), credentials.clone()));
        Err(smtp_server::invalid_credentials())
    }
}

#[tokio::test]
async fn plain_and_login_reach_the_authenticator_as_password_credentials() {
    let backend = TestBackend::new();
    let recorder = Recorder::default();
    let server = builder(&backend)
        .auth(recorder.clone(), AuthPolicy::new().allow_insecure(true))
        .build()
        .unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client
        .send(format!(
            "AUTH PLAIN {}\r\n",
            sasl::plain_response(Some("sales"), "alice", "secret")
        ))
        .await;
    client.expect("535 5.7.8").await;
    client
        .send(format!(
            "AUTH PLAIN {}\r\n",
            sasl::plain_response(None, "bob", "builder")
        ))
        .await;
    client.expect("535 5.7.8").await;
    client
        .send(format!("AUTH LOGIN {}\r\n", b64("carol")))
        .await;
    assert_eq!(client.reply().await, "334 UGFzc3dvcmQ6\r\n");
    client.send(format!("{}\r\n", b64("p\u{e4}ss"))).await;
    client.expect("535 5.7.8").await;
    let seen = recorder.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (
                "PLAIN".to_owned(),
                Credentials::password("alice", "secret").with_authzid("sales")
            ),
            ("PLAIN".to_owned(), Credentials::password("bob", "builder")),
            (
                "LOGIN".to_owned(),
                Credentials::password("carol", "p\u{e4}ss")
            ),
        ]
    );
    assert!(
        seen.iter()
            .all(|(_, c)| matches!(c, Credentials::Password { .. }))
    );
}

#[tokio::test]
async fn auth_failures_cancel_bad_base64_and_the_limit() {
    let backend = TestBackend::new();
    let server = insecure_auth_server(&backend, false);
    let mut client = connect(&server);
    client.hello().await;
    client.send("AUTH CRAM-MD5\r\n").await;
    client.expect("504 5.5.4").await;
    client.send("AUTH PLAIN\r\n").await;
    client.expect("334").await;
    client.send("*\r\n").await;
    client.expect("501 5.7.0").await;
    // Bad base64 on the command line is a syntax error of the command...
    client.send("AUTH PLAIN !!!notbase64\r\n").await;
    client.expect("501 5.5.4").await;
    // ...and in a response, a failed attempt.
    client.send("AUTH PLAIN\r\n").await;
    client.expect("334").await;
    client.send("!!!notbase64\r\n").await;
    client.expect("501 5.5.2").await;
    client
        .send(format!(
            "AUTH PLAIN {}\r\n",
            sasl::plain_response(None, "alice", "wrong")
        ))
        .await;
    assert_eq!(
        client.reply().await,
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    assert_eq!(
        client.reply().await,
        "421 4.7.0 Too many failed authentication attempts\r\n"
    );
    client.expect_closed().await;
    assert!(!backend.events().iter().any(|e| e.starts_with("auth")));
}

struct TokenAuthenticator;

impl Authenticator for TokenAuthenticator {
    fn mechanisms(&self) -> Vec<String> {
        vec!["X-TOKEN".to_owned()]
    }

    async fn authenticate(
        &self,
        _info: &ConnectionInfo,
        _mechanism: &str,
        _credentials: &Credentials,
    ) -> Result<Identity, SmtpError> {
        Err(smtp_server::invalid_credentials())
    }

    async fn step(
        &self,
        _info: &ConnectionInfo,
        _mechanism: &str,
        responses: &[Vec<u8>],
    ) -> Result<SaslStep, SmtpError> {
        match responses {
            [] => Ok(SaslStep::Challenge(b"token?".to_vec())),
            [token] if token == b"abc" => Ok(SaslStep::Done(Identity::new("token-user"))),
            _ => Err(smtp_server::invalid_credentials()),
        }
    }
}

#[tokio::test]
async fn extension_mechanism_runs_through_steps() {
    let backend = TestBackend::new();
    let server = builder(&backend)
        .auth(TokenAuthenticator, AuthPolicy::new().allow_insecure(true))
        .build()
        .unwrap();
    let mut client = connect(&server);
    let ehlo = client.hello().await;
    assert!(ehlo.contains("AUTH X-TOKEN\r\n"), "{ehlo:?}");
    client.send("AUTH PLAIN AAAA\r\n").await;
    client.expect("504 5.5.4").await;
    client.send("AUTH x-token\r\n").await;
    assert_eq!(client.reply().await, "334 dG9rZW4/\r\n");
    client.send(format!("{}\r\n", b64("abc"))).await;
    client.expect("235 2.7.0").await;
    assert!(backend.events().contains(&"auth token-user".to_owned()));
}

#[tokio::test]
async fn mail_and_rcpt_hooks_see_the_session_state() {
    let backend = TestBackend::new();
    let (tls, root) = test_tls("mx.test");
    let server = builder(&backend)
        .tls(tls)
        .auth(TestAuthenticator, AuthPolicy::new())
        .build()
        .unwrap();
    let mut client = connect(&server);
    client.hello().await;
    client.send("STARTTLS\r\n").await;
    client.expect("220").await;
    let stream = tls_connector(&root)
        .connect(server_name("mx.test"), client.into_inner())
        .await
        .unwrap();
    let mut client = Client::new(stream);
    client.send("EHLO secure.test\r\n").await;
    client.expect("250-mx.test").await;
    client
        .send(format!(
            "AUTH PLAIN {}\r\n",
            sasl::plain_response(None, "alice", "secret")
        ))
        .await;
    client.expect("235").await;
    client
        .send("MAIL FROM:<alice@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nQUIT\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("250 2.1.5").await;
    let views = backend.views();
    let names: Vec<&str> = views.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["mail", "rcpt b@x.test", "rcpt c@x.test"]);
    for (_, view) in &views {
        assert_eq!(view.helo, "secure.test");
        assert!(view.extended);
        assert!(view.tls.is_some());
        assert_eq!(view.identity, Some(Identity::new("alice")));
        assert_eq!(view.client_addr, Some("192.0.2.10:40000".parse().unwrap()));
    }
    // MAIL sees no transaction yet; each RCPT sees the sender and the
    // recipients accepted before it.
    assert_eq!(views[0].1.from, None);
    assert!(views[0].1.recipients.is_empty());
    assert_eq!(views[1].1.from.as_ref().unwrap().as_str(), "alice@x.test");
    assert!(views[1].1.recipients.is_empty());
    let earlier: Vec<&str> = views[2]
        .1
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(earlier, ["b@x.test"]);
}
