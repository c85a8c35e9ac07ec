//! Choosing the AUTH mechanism, against scripted servers: the client uses
//! exactly the mechanism asked for, and never another one in its place.

mod common;

use common::{Script, config, serve};
use smtp_client::{AuthMechanism, Connection, Credentials, ErrorKind, Step};
use smtp_proto::sasl;

fn password() -> Credentials {
    Credentials::password("alice", "hunter2")
}

#[tokio::test]
async fn login_is_used_when_chosen_although_plain_comes_first() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["AUTH PLAIN LOGIN"]).await;
        s.expect("AUTH LOGIN").await;
        s.send(&format!("334 {}", sasl::LOGIN_USERNAME_CHALLENGE))
            .await;
        s.expect(&sasl::login_response("alice")).await;
        s.send(&format!("334 {}", sasl::LOGIN_PASSWORD_CHALLENGE))
            .await;
        s.expect(&sasl::login_response("hunter2")).await;
        s.send("235 2.7.0 Authentication successful").await;
        s.quit().await;
    })
    .await;
    let config = config(addr)
        .credentials(password())
        .auth_mechanism(AuthMechanism::Login)
        .allow_plaintext_auth(true)
        .build()
        .unwrap();
    let connection = Connection::connect(&config).await.unwrap();
    assert!(connection.is_authenticated());
    connection.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn plain_is_used_when_chosen_although_login_is_offered_first() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["AUTH LOGIN PLAIN"]).await;
        s.expect(&format!(
            "AUTH PLAIN {}",
            sasl::plain_response(None, "alice", "hunter2")
        ))
        .await;
        s.send("235 2.7.0 Authentication successful").await;
        s.quit().await;
    })
    .await;
    let config = config(addr)
        .credentials(password())
        .auth_mechanism(AuthMechanism::Plain)
        .allow_plaintext_auth(true)
        .build()
        .unwrap();
    let connection = Connection::connect(&config).await.unwrap();
    assert!(connection.is_authenticated());
    connection.quit().await.unwrap();
    server.await.unwrap();
}

/// A chosen mechanism the server does not offer is an AUTH error: no AUTH
/// command at all goes out, only the courtesy QUIT.
#[tokio::test]
async fn a_chosen_mechanism_the_server_lacks_is_an_error_without_fallback() {
    for (offered, chosen) in [
        ("AUTH PLAIN", AuthMechanism::Login),
        ("AUTH LOGIN", AuthMechanism::Plain),
        ("AUTH PLAIN LOGIN", AuthMechanism::XOAuth2),
    ] {
        let (addr, server) = serve(move |mut s: Script| async move {
            s.greet(&[offered]).await;
            s.expect("QUIT").await;
            s.expect_eof().await;
        })
        .await;
        let credentials = match chosen {
            AuthMechanism::XOAuth2 => Credentials::oauth2("alice", "token"),
            _ => password(),
        };
        let config = config(addr)
            .credentials(credentials)
            .auth_mechanism(chosen)
            .allow_plaintext_auth(true)
            .build()
            .unwrap();
        let error = Connection::connect(&config).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Auth, "{chosen}");
        assert_eq!(error.step(), Step::Auth);
        assert!(error.reply().is_none());
        let text = error.to_string();
        assert!(
            text.contains(&format!("AUTH {chosen} was chosen"))
                && text.ends_with(offered.trim_start_matches("AUTH ")),
            "{text}"
        );
        server.await.unwrap();
    }
}

/// Without a choice, a password goes with PLAIN when offered, else LOGIN.
#[tokio::test]
async fn without_a_choice_login_is_the_fallback_for_passwords() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["AUTH CRAM-MD5 LOGIN"]).await;
        s.expect("AUTH LOGIN").await;
        s.send("334 VXNlcm5hbWU6").await;
        s.expect(&sasl::login_response("alice")).await;
        s.send("334 UGFzc3dvcmQ6").await;
        s.expect(&sasl::login_response("hunter2")).await;
        s.send("535 5.7.8 Authentication credentials invalid").await;
        s.expect("QUIT").await;
    })
    .await;
    let config = config(addr)
        .credentials(password())
        .allow_plaintext_auth(true)
        .build()
        .unwrap();
    let error = Connection::connect(&config).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth);
    assert_eq!(error.reply().map(|reply| reply.code()), Some(535));
    assert!(error.is_permanent());
    server.await.unwrap();
}

/// The plaintext guard comes before the choice: nothing of AUTH is sent
/// without TLS unless allowed.
#[tokio::test]
async fn a_chosen_mechanism_still_needs_tls_or_explicit_permission() {
    let (addr, server) = serve(|mut s: Script| async move {
        s.greet(&["AUTH PLAIN LOGIN"]).await;
        s.expect("QUIT").await;
        s.expect_eof().await;
    })
    .await;
    let config = config(addr)
        .credentials(password())
        .auth_mechanism(AuthMechanism::Login)
        .build()
        .unwrap();
    let error = Connection::connect(&config).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth);
    assert!(error.to_string().contains("without TLS"), "{error}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_long_initial_response_waits_for_the_334_challenge() {
    // RFC 4954 §4: an initial response that would make the AUTH line
    // longer than 512 octets is sent after an empty 334 instead.
    let token = "t".repeat(600);
    let expected = sasl::xoauth2_response("alice@example.com", &token);
    let (addr, server) = serve(move |mut s: Script| async move {
        s.greet(&["AUTH XOAUTH2"]).await;
        s.expect("AUTH XOAUTH2").await;
        s.send("334 ").await;
        s.expect(&expected).await;
        s.send("235 2.7.0 Authentication successful").await;
        s.quit().await;
    })
    .await;
    let config = config(addr)
        .credentials(Credentials::oauth2("alice@example.com", token))
        .allow_plaintext_auth(true)
        .build()
        .unwrap();
    let connection = Connection::connect(&config).await.unwrap();
    assert!(connection.is_authenticated());
    connection.quit().await.unwrap();
    server.await.unwrap();
}
