//! Both libraries glob-imported into one module, as a program that sends
//! and receives does: the names both export (`Credentials`, `Address`,
//! `EnhancedCode`, `Reply`) are the same smtp-proto types, so using them
//! is not ambiguous and a value made for one crate works with the other.

use std::net::SocketAddr;

use smtp_client::*;
use smtp_server::*;

#[tokio::test]
async fn one_credentials_type_for_client_and_server() {
    let credentials: Credentials = Credentials::password("alice", "secret");
    // The client takes it...
    ClientConfig::builder("mail.example.com")
        .credentials(credentials.clone())
        .build()
        .unwrap();
    // ...and the server's authenticator checks the very same value.
    let users = StaticUsers::from_plain([("alice", "secret")]).unwrap();
    let info = ConnectionInfo::new(
        SocketAddr::from(([127, 0, 0, 1], 40000)),
        SocketAddr::from(([127, 0, 0, 1], 25)),
    );
    let identity = users
        .authenticate(&info, "PLAIN", &credentials)
        .await
        .unwrap();
    assert_eq!(identity.name, "alice");
    let wrong = Credentials::password("alice", "guess");
    assert!(users.authenticate(&info, "PLAIN", &wrong).await.is_err());

    // The two crates' names are one type, not two look-alikes.
    let from_server: smtp_server::Credentials = smtp_client::Credentials::oauth2("bob", "tok");
    assert_eq!(from_server.as_token(), Some("tok"));

    let address: Address = "alice@example.com".parse().unwrap();
    let reply = Reply::new(250, EnhancedCode::new(2, 1, 0), format!("<{address}> ok"));
    assert_eq!(reply.code(), 250);
}
