//! What a new user of the libraries does on the first day, end to end:
//! a receiver for one domain with STARTTLS and AUTH from a map of users and
//! a generated certificate, messages collected in shared state; a sender
//! that builds a message with an attachment, derives the envelope from its
//! headers and sends over STARTTLS with AUTH PLAIN; then 200 concurrent
//! sends through a pool of 40 against the server's default limit of 20
//! connections per client address. Every recipient's fate is read through
//! the one accessor, `RecipientOutcomes`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_builder::MessageBuilder;
use smtp_client::{
    AuthMechanism, Client, ClientConfig, Credentials, Pool, PoolConfig, RecipientOutcomes, Tls,
};
use smtp_server::{
    Address, AuthPolicy, Backend, Body, ConnectionInfo, DEFAULT_MAX_CONNECTIONS_PER_IP,
    EnhancedCode, Envelope, RcptParameters, Server, ServerHandle, Session, SmtpError, StaticUsers,
    TlsConfig,
};

const DOMAIN: &str = "example.net";

/// One message as the receiver kept it.
#[derive(Debug, Clone)]
struct Kept {
    user: Option<String>,
    recipients: Vec<String>,
    content: Vec<u8>,
}

#[derive(Clone, Default)]
struct Mailbox {
    kept: Arc<Mutex<Vec<Kept>>>,
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
    async fn rcpt(
        &mut self,
        _transaction: &Envelope,
        to: &Address,
        _parameters: &RcptParameters,
    ) -> Result<(), SmtpError> {
        if to.domain().is_some_and(|d| d.eq_ignore_ascii_case(DOMAIN)) {
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
        let content = body.read_to_end().await?;
        self.mailbox.kept.lock().unwrap().push(Kept {
            user: envelope.identity.as_ref().map(|i| i.name.clone()),
            recipients: envelope
                .recipients
                .iter()
                .map(|r| r.address.as_str().to_owned())
                .collect(),
            content,
        });
        Ok(())
    }
}

struct Receiver {
    handle: ServerHandle,
    mailbox: Mailbox,
    certificate_pem: String,
}

async fn start_receiver() -> Receiver {
    let generated = TlsConfig::self_signed(["localhost"]).unwrap();
    let users = StaticUsers::from_plain([("alice@example.net", "wonderland")]).unwrap();
    let mailbox = Mailbox::default();
    let server = Server::builder(mailbox.clone())
        .hostname("localhost")
        .listen("127.0.0.1:0".parse().unwrap())
        .tls(generated.tls)
        .auth(users, AuthPolicy::new().require(true))
        .build()
        .unwrap();
    // The per-address connection limit stays at its default.
    assert_eq!(DEFAULT_MAX_CONNECTIONS_PER_IP, 20);
    Receiver {
        handle: server.bind().await.unwrap().spawn(),
        mailbox,
        certificate_pem: generated.certificate_pem,
    }
}

fn client_config(receiver: &Receiver) -> ClientConfig {
    let tls = smtp_client::TlsConfig::new()
        .add_root_certificates_pem(receiver.certificate_pem.as_bytes())
        .unwrap();
    ClientConfig::builder("localhost")
        .port(receiver.handle.local_addr().port())
        .tls(Tls::Required)
        .tls_config(tls)
        .credentials(Credentials::password("alice@example.net", "wonderland"))
        .auth_mechanism(AuthMechanism::Plain)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_receiver_and_a_sender_built_from_the_quickstarts() {
    let receiver = start_receiver().await;
    let message = MessageBuilder::new()
        .from(("Alice", "alice@example.net"))
        .to(vec![
            ("Bob", "bob@example.net"),
            ("Eve", "eve@elsewhere.test"),
        ])
        .cc("carol@example.net")
        .subject("Invoice")
        .text_body("The invoice is attached.")
        .attachment(
            "application/pdf",
            "invoice.pdf",
            b"%PDF-1.4 not really".as_slice(),
        )
        .write_to_vec()
        .unwrap();
    let envelope = smtp_client::Envelope::from_message(&message).unwrap();

    let result = Client::new(client_config(&receiver))
        .send(&envelope, message.clone())
        .await;
    let mut fates: Vec<String> = result
        .recipient_outcomes()
        .iter()
        .map(|outcome| {
            let code = outcome.reply().map(|reply| reply.code()).unwrap_or(0);
            println!(
                "{}: accepted={} ({code})",
                outcome.address, outcome.accepted
            );
            format!("{} {} {code}", outcome.address, outcome.accepted)
        })
        .collect();
    fates.sort();
    assert_eq!(
        fates,
        [
            "bob@example.net true 250",
            "carol@example.net true 250",
            "eve@elsewhere.test false 550",
        ]
    );
    // Partial acceptance is a successful send with a rejected recipient.
    let sent = result.expect("two of three recipients were accepted");
    assert_eq!(sent.rejected().count(), 1);

    let kept = receiver.mailbox.kept.lock().unwrap().clone();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].user.as_deref(), Some("alice@example.net"));
    assert_eq!(kept[0].recipients, ["bob@example.net", "carol@example.net"]);
    assert_eq!(kept[0].content, message, "stored byte for byte");
    receiver.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_hundred_concurrent_sends_through_a_pool_of_forty_all_arrive() {
    let receiver = start_receiver().await;
    let pool = Pool::new(
        client_config(&receiver),
        PoolConfig {
            max_connections: 40,
            ..PoolConfig::default()
        },
    );
    let mut sends = tokio::task::JoinSet::new();
    for index in 0..200 {
        let pool = pool.clone();
        sends.spawn(async move {
            let envelope = smtp_client::Envelope::new(
                "alice@example.net",
                [format!("user{index}@example.net")],
            )
            .unwrap();
            let message = format!(
                "From: alice@example.net\r\nTo: user{index}@example.net\r\nSubject: {index}\r\n\r\nmessage {index}\r\n"
            );
            pool.send(&envelope, message).await
        });
    }
    let mut delivered = 0;
    let deadline = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(joined) = sends.join_next().await {
            let result = joined.unwrap();
            for outcome in result.recipient_outcomes() {
                assert!(
                    outcome.accepted,
                    "{}: {:?}",
                    outcome.address,
                    outcome.reply()
                );
            }
            result.expect("every send is delivered");
            delivered += 1;
        }
    });
    deadline.await.expect("200 sends finish within a minute");
    assert_eq!(delivered, 200);
    assert_eq!(receiver.mailbox.kept.lock().unwrap().len(), 200);
    pool.close().await;
    receiver.handle.shutdown().await.unwrap();
}
