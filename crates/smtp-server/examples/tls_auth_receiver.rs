//! A receiver for one domain with STARTTLS and AUTH: mail for other domains
//! gets `550 5.1.1`, clients must authenticate (over TLS) before they send,
//! and an authenticated user may only send as themselves.
//!
//! ```text
//! cargo run -p smtp-server --example tls_auth_receiver -- 127.0.0.1:2587
//! swaks --server 127.0.0.1:2587 --tls --tls-ca-path receiver-cert.pem \
//!       --auth PLAIN --auth-user alice@example.net --auth-password wonderland \
//!       --from alice@example.net --to bob@example.net
//! ```
//!
//! The certificate is generated at start for `localhost` and `127.0.0.1`
//! and written to `receiver-cert.pem` for the client to trust; the key
//! stays in memory. The passwords are plain text for the demonstration:
//! use `StaticUsers::add_argon2` or `StaticUsers::load_file` with argon2
//! hashes in production.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use smtp_server::{
    Address, AuthPolicy, Backend, Body, ConnectionInfo, EnhancedCode, Envelope, MailParameters,
    RcptParameters, Server, Session, SmtpError, StaticUsers, TlsConfig,
};

const DOMAIN: &str = "example.net";

/// One message as received.
struct Received {
    envelope: Envelope,
    content: Vec<u8>,
}

/// Messages received, shared by all sessions.
#[derive(Clone, Default)]
struct Mailbox {
    messages: Arc<Mutex<Vec<Received>>>,
}

struct MailboxSession {
    mailbox: Mailbox,
}

impl Backend for Mailbox {
    type Session = MailboxSession;

    async fn new_session(&self, _info: &ConnectionInfo) -> Result<MailboxSession, SmtpError> {
        Ok(MailboxSession {
            mailbox: self.clone(),
        })
    }
}

impl Session for MailboxSession {
    async fn mail(
        &mut self,
        session: &Envelope,
        from: Option<&Address>,
        _parameters: &MailParameters,
    ) -> Result<(), SmtpError> {
        // AuthPolicy::require guarantees an identity here.
        let user = session.identity.as_ref().map(|identity| &identity.name);
        if from.map(Address::as_str) != user.map(String::as_str) {
            return Err(SmtpError::new(
                553,
                EnhancedCode::new(5, 7, 1),
                "Sender address not owned by the authenticated user",
            ));
        }
        Ok(())
    }

    async fn rcpt(
        &mut self,
        _transaction: &Envelope,
        to: &Address,
        _parameters: &RcptParameters,
    ) -> Result<(), SmtpError> {
        if to
            .domain()
            .is_some_and(|domain| domain.eq_ignore_ascii_case(DOMAIN))
        {
            Ok(())
        } else {
            Err(SmtpError::new(
                550,
                EnhancedCode::new(5, 1, 1),
                "No such user here",
            ))
        }
    }

    async fn data(&mut self, envelope: &Envelope, body: Body) -> Result<(), SmtpError> {
        // Bounded by the server's size limit; `?` answers a body error.
        let message = body.read_to_end().await?;
        println!(
            "{} octets from {:?} for {} recipient(s), {}",
            message.len(),
            envelope.identity.as_ref().map(|identity| &identity.name),
            envelope.recipients.len(),
            envelope.protocol()
        );
        let mut messages = self.mailbox.messages.lock().unwrap();
        messages.push(Received {
            envelope: envelope.clone(),
            content: message,
        });
        println!("{} message(s) so far", messages.len());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2587".to_owned())
        .parse()?;
    let generated = TlsConfig::self_signed(["localhost", "127.0.0.1"])?;
    std::fs::write("receiver-cert.pem", &generated.certificate_pem)?;
    let users = StaticUsers::from_plain([
        ("alice@example.net", "wonderland"),
        ("bob@example.net", "builder"),
    ])?;
    let mailbox = Mailbox::default();
    let server = Server::builder(mailbox.clone())
        .hostname("localhost")
        .listen(addr)
        .tls(generated.tls)
        // AUTH only after STARTTLS (the default), and required for mail.
        .auth(users, AuthPolicy::new().require(true))
        .build()?;
    let handle = server.bind().await?.spawn();
    println!(
        "listening on {}; certificate in receiver-cert.pem",
        handle.local_addr()
    );
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await?;
    for received in mailbox.messages.lock().unwrap().iter() {
        let from = received.envelope.from.as_ref().map(Address::as_str);
        println!("kept: {} octets from {from:?}", received.content.len());
    }
    Ok(())
}
