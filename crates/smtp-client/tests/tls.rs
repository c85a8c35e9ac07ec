//! STARTTLS, implicit TLS, certificates and AUTH against scripted servers
//! with certificates generated for each run.

mod common;

use std::sync::Arc;

use common::{Script, TestPki, config, serve};
use smtp_client::{Client, Connection, Credentials, Envelope, ErrorKind, Step, Tls, TlsConfig};

fn envelope() -> Envelope {
    Envelope::new("alice@example.com", ["bob@example.org"]).unwrap()
}

/// Greeting, EHLO offering STARTTLS, the STARTTLS exchange and the
/// handshake; returns the TLS script after the client's fresh EHLO.
async fn starttls(mut s: Script, pki: &TestPki, after_tls: &[&str]) -> Script {
    s.greet(&["PIPELINING", "STARTTLS"]).await;
    s.expect("STARTTLS").await;
    s.send("220 2.0.0 ready").await;
    let mut s = s.starttls(&pki.acceptor).await;
    // RFC 3207 §4.2: the client must start over with EHLO.
    s.expect("EHLO localhost").await;
    s.ehlo_reply(after_tls).await;
    s
}

async fn deliver(s: &mut Script) {
    s.expect("MAIL FROM:<alice@example.com>").await;
    s.expect("RCPT TO:<bob@example.org>").await;
    s.expect("DATA").await;
    s.send_raw(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
    s.read_data().await;
    s.send("250 ok").await;
}

#[tokio::test]
async fn required_starttls_then_fresh_ehlo_then_auth_plain() {
    let pki = Arc::new(TestPki::new());
    let server_pki = Arc::clone(&pki);
    let (addr, server) = serve(move |s: Script| async move {
        let mut s = starttls(s, &server_pki, &["PIPELINING", "AUTH PLAIN LOGIN"]).await;
        let auth = s.expect_prefix("AUTH PLAIN ").await;
        s.send("235 2.7.0 ok").await;
        deliver(&mut s).await;
        s.quit().await;
        auth
    })
    .await;
    let config = config(addr)
        .tls(Tls::Required)
        .tls_config(pki.client_tls())
        .credentials(Credentials::password("alice", "secret"))
        .build()
        .unwrap();
    let mut connection = Connection::connect(&config).await.unwrap();
    assert!(connection.is_encrypted());
    assert!(connection.is_authenticated());
    assert!(
        !connection.capabilities().starttls,
        "capabilities come from the EHLO after TLS"
    );
    connection.send(&envelope(), "hi").await.unwrap();
    connection.quit().await.unwrap();
    let auth = server.await.unwrap();
    assert_eq!(
        auth,
        format!(
            "AUTH PLAIN {}",
            smtp_proto::sasl::plain_response(None, "alice", "secret")
        )
    );
}

#[tokio::test]
async fn bytes_after_the_220_to_starttls_abort_the_connection() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["STARTTLS"]).await;
        s.expect("STARTTLS").await;
        // A man in the middle appends a reply to be read inside TLS.
        s.send_raw(b"220 ready\r\n250-injected\r\n250 AUTH PLAIN\r\n")
            .await;
        s.expect_eof().await;
    })
    .await;
    let pki = TestPki::new();
    let config = config(addr)
        .tls(Tls::Opportunistic)
        .tls_config(pki.client_tls())
        .build()
        .unwrap();
    let error = Connection::connect(&config).await.unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Protocol, Step::StartTls)
    );
    assert!(error.to_string().contains("injection"), "{error}");
    server.await.unwrap();
}

#[tokio::test]
async fn required_tls_without_starttls_offered_never_sends_mail() {
    // TLS stripping: the STARTTLS capability was removed on the way.
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["PIPELINING", "AUTH PLAIN"]).await;
        // The very next thing is QUIT: no AUTH, no MAIL in plaintext.
        s.expect("QUIT").await;
    })
    .await;
    let config = config(addr)
        .tls(Tls::Required)
        .credentials(Credentials::password("alice", "secret"))
        .allow_plaintext_auth(true)
        .build()
        .unwrap();
    let error = Client::new(config)
        .send(&envelope(), "x")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TlsUnavailable);
    // Deferred, not bounced: a server's TLS setup is fixed on the server.
    assert!(error.is_transient());
    server.await.unwrap();
}

#[tokio::test]
async fn starttls_refused_fails_when_required() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["STARTTLS"]).await;
        s.expect("STARTTLS").await;
        s.send("454 4.7.0 TLS not available").await;
        s.expect("QUIT").await;
    })
    .await;
    let config = config(addr).tls(Tls::Required).build().unwrap();
    let error = Connection::connect(&config).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TlsUnavailable);
    assert_eq!(error.reply().unwrap().code(), 454);
    assert!(error.is_transient());
    server.await.unwrap();
}

#[tokio::test]
async fn starttls_refused_goes_on_in_plaintext_when_opportunistic() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["PIPELINING", "STARTTLS"]).await;
        s.expect("STARTTLS").await;
        s.send("454 4.7.0 TLS not available").await;
        deliver(&mut s).await;
        s.quit().await;
    })
    .await;
    let config = config(addr).tls(Tls::Opportunistic).build().unwrap();
    let mut connection = Connection::connect(&config).await.unwrap();
    assert!(!connection.is_encrypted());
    connection.send(&envelope(), "x").await.unwrap();
    connection.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn implicit_tls_from_the_first_byte() {
    let pki = Arc::new(TestPki::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = pki.acceptor.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let mut s = Script::new(Box::new(tls));
        s.greet(&["PIPELINING"]).await;
        deliver(&mut s).await;
        s.quit().await;
    });
    let config = config(addr)
        .tls(Tls::Implicit)
        .tls_config(pki.client_tls())
        .build()
        .unwrap();
    let result = Client::new(config).send(&envelope(), "x").await.unwrap();
    assert!(result.is_complete());
    server.await.unwrap();
}

#[tokio::test]
async fn an_untrusted_certificate_fails_unless_dangerously_accepted() {
    let pki = Arc::new(TestPki::new());
    for accept_invalid in [false, true] {
        let server_pki = Arc::clone(&pki);
        let (addr, server) = serve(move |mut s: Script| async move {
            s.greet(&["STARTTLS"]).await;
            s.expect("STARTTLS").await;
            s.send("220 ready").await;
            let io_result = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                server_pki.acceptor.accept(common_inner(s)),
            )
            .await
            .expect("handshake finished");
            if let Ok(tls) = io_result {
                let mut s = Script::new(Box::new(tls));
                s.expect("EHLO localhost").await;
                s.ehlo_reply(&[]).await;
                s.quit().await;
            }
        })
        .await;
        // Default roots (webpki) do not know the test CA.
        let tls = TlsConfig::new()
            .server_name("localhost")
            .dangerous_accept_invalid_certs(accept_invalid);
        let config = config(addr)
            .tls(Tls::Required)
            .tls_config(tls)
            .build()
            .unwrap();
        let result = Connection::connect(&config).await;
        if accept_invalid {
            let connection = result.unwrap();
            assert!(connection.is_encrypted());
            connection.quit().await.unwrap();
        } else {
            let error = result.unwrap_err();
            assert_eq!(
                (error.kind(), error.step()),
                (ErrorKind::Tls, Step::TlsHandshake)
            );
            assert!(error.is_transient());
        }
        server.await.unwrap();
    }
}

/// The raw stream under a script that has read nothing past STARTTLS.
fn common_inner(s: Script) -> Box<dyn common::Io> {
    s.into_inner()
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_asked() {
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert = rcgen::CertificateParams::new(vec!["client.example".into()])
        .unwrap()
        .self_signed(&client_key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_cert.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let pki = Arc::new(TestPki::with_client_verifier(Some(verifier)));
    let server_pki = Arc::clone(&pki);
    let (addr, server) = serve(move |s: Script| async move {
        let mut s = starttls(s, &server_pki, &["PIPELINING"]).await;
        s.quit().await;
    })
    .await;
    let tls = pki
        .client_tls()
        .client_certificate_pem(
            client_cert.pem().as_bytes(),
            client_key.serialize_pem().as_bytes(),
        )
        .unwrap();
    let config = config(addr)
        .tls(Tls::Required)
        .tls_config(tls)
        .build()
        .unwrap();
    let connection = Connection::connect(&config).await.unwrap();
    connection.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn auth_is_refused_over_plaintext_unless_allowed() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["AUTH PLAIN"]).await;
        s.expect("QUIT").await;
    })
    .await;
    let config = config(addr)
        .credentials(Credentials::password("alice", "secret"))
        .build()
        .unwrap();
    let error = Connection::connect(&config).await.unwrap_err();
    assert_eq!((error.kind(), error.step()), (ErrorKind::Auth, Step::Auth));
    server.await.unwrap();
}

#[tokio::test]
async fn auth_login_when_plain_is_not_offered() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["AUTH LOGIN"]).await;
        s.expect("AUTH LOGIN").await;
        s.send("334 VXNlcm5hbWU6").await;
        let user = s.line().await;
        s.send("334 UGFzc3dvcmQ6").await;
        let password = s.line().await;
        s.send("235 ok").await;
        s.quit().await;
        (user, password)
    })
    .await;
    let config = config(addr)
        .credentials(Credentials::password("alice", "secret"))
        .allow_plaintext_auth(true)
        .build()
        .unwrap();
    Connection::connect(&config)
        .await
        .unwrap()
        .quit()
        .await
        .unwrap();
    let (user, password) = server.await.unwrap();
    assert_eq!(user, smtp_proto::sasl::login_response("alice"));
    assert_eq!(password, smtp_proto::sasl::login_response("secret"));
}

#[tokio::test]
async fn a_failed_xoauth2_is_an_auth_error_with_the_final_reply() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["AUTH PLAIN XOAUTH2"]).await;
        let line = s.expect_prefix("AUTH XOAUTH2 ").await;
        // XOAUTH2 reports the failure as a challenge, then waits for an
        // empty line before the final reply.
        s.send("334 eyJzdGF0dXMiOiI0MDEifQ==").await;
        s.expect("").await;
        s.send("535 5.7.8 bad token").await;
        s.expect("QUIT").await;
        line
    })
    .await;
    let config = config(addr)
        .credentials(Credentials::oauth2("alice@example.com", "tok"))
        .allow_plaintext_auth(true)
        .build()
        .unwrap();
    let error = Connection::connect(&config).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth);
    assert_eq!(error.reply().unwrap().code(), 535);
    assert!(error.is_permanent());
    let line = server.await.unwrap();
    assert_eq!(
        line,
        format!(
            "AUTH XOAUTH2 {}",
            smtp_proto::sasl::xoauth2_response("alice@example.com", "tok")
        )
    );
}

#[tokio::test]
async fn no_common_mechanism_is_an_auth_error() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["AUTH CRAM-MD5"]).await;
        s.expect("QUIT").await;
    })
    .await;
    let config = config(addr)
        .credentials(Credentials::password("alice", "secret"))
        .allow_plaintext_auth(true)
        .build()
        .unwrap();
    let error = Connection::connect(&config).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth);
    assert!(error.to_string().contains("CRAM-MD5"), "{error}");
    server.await.unwrap();
}
