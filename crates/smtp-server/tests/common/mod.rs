//! Test backend that records what the hooks saw, and a scripted raw client.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
// Everything a hook signature uses comes from the crate root.
use smtp_server::{
    Address, Authenticator, Backend, Body, BodyError, ConnectionInfo, Credentials, EnhancedCode,
    Envelope, Identity, MailParameters, RcptParameters, Server, ServerBuilder, Session, SmtpError,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

/// One message as the handler saw it.
#[derive(Debug, Clone)]
pub struct Message {
    pub envelope: Envelope,
    pub body: Vec<u8>,
    pub error: Option<BodyError>,
}

#[derive(Debug, Default)]
pub struct Log {
    pub events: Vec<String>,
    pub messages: Vec<Message>,
    pub infos: Vec<ConnectionInfo>,
    /// What the `mail` and `rcpt` hooks saw of the session, in order.
    pub views: Vec<(String, Envelope)>,
}

/// How the test session answers.
#[derive(Clone, Default)]
pub struct Behavior {
    /// Recipients refused with `550 5.1.1`.
    pub unknown_users: Vec<String>,
    /// A recipient whose RCPT hook panics.
    pub panic_rcpt: Option<String>,
    /// A recipient whose RCPT hook fails with an internal error.
    pub broken_rcpt: Option<String>,
    /// The data hook's result after reading the whole body.
    pub data_result: Option<SmtpError>,
    /// The data hook panics after reading the body.
    pub data_panic: bool,
    /// The data hook returns Ok at once without reading the body.
    pub data_returns_early: bool,
    /// LMTP: recipients that get a failure.
    pub lmtp_failures: Vec<String>,
    /// Delay in the data hook before reading.
    pub data_delay: Option<Duration>,
    /// The quit hook's result.
    pub quit_result: Option<SmtpError>,
}

#[derive(Clone, Default)]
pub struct TestBackend {
    pub log: Arc<Mutex<Log>>,
    pub behavior: Behavior,
}

impl TestBackend {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(behavior: Behavior) -> Self {
        Self {
            log: Arc::default(),
            behavior,
        }
    }

    pub fn messages(&self) -> Vec<Message> {
        self.log.lock().unwrap().messages.clone()
    }

    pub fn events(&self) -> Vec<String> {
        self.log.lock().unwrap().events.clone()
    }

    pub fn infos(&self) -> Vec<ConnectionInfo> {
        self.log.lock().unwrap().infos.clone()
    }

    pub fn views(&self) -> Vec<(String, Envelope)> {
        self.log.lock().unwrap().views.clone()
    }
}

pub struct TestSession {
    log: Arc<Mutex<Log>>,
    behavior: Behavior,
}

impl TestSession {
    fn event(&self, event: String) {
        self.log.lock().unwrap().events.push(event);
    }

    async fn read_body(&self, envelope: &Envelope, mut body: Body) -> Option<BodyError> {
        if let Some(delay) = self.behavior.data_delay {
            tokio::time::sleep(delay).await;
        }
        let mut bytes = Vec::new();
        let mut error = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        self.log.lock().unwrap().messages.push(Message {
            envelope: envelope.clone(),
            body: bytes,
            error,
        });
        error
    }
}

impl Backend for TestBackend {
    type Session = TestSession;

    async fn new_session(&self, info: &ConnectionInfo) -> Result<TestSession, SmtpError> {
        self.log.lock().unwrap().infos.push(info.clone());
        Ok(TestSession {
            log: Arc::clone(&self.log),
            behavior: self.behavior.clone(),
        })
    }
}

impl Session for TestSession {
    async fn helo(&mut self, domain: &str) -> Result<(), SmtpError> {
        self.event(format!("helo {domain}"));
        Ok(())
    }

    async fn authenticated(&mut self, identity: &Identity) {
        self.event(format!("auth {}", identity.name));
    }

    async fn mail(
        &mut self,
        session: &Envelope,
        from: Option<&Address>,
        _parameters: &MailParameters,
    ) -> Result<(), SmtpError> {
        self.log
            .lock()
            .unwrap()
            .views
            .push(("mail".to_owned(), session.clone()));
        self.event(format!(
            "mail {}",
            from.map_or(String::new(), |a| a.to_string())
        ));
        Ok(())
    }

    async fn rcpt(
        &mut self,
        transaction: &Envelope,
        to: &Address,
        _parameters: &RcptParameters,
    ) -> Result<(), SmtpError> {
        let to = to.to_string();
        self.log
            .lock()
            .unwrap()
            .views
            .push((format!("rcpt {to}"), transaction.clone()));
        if self.behavior.panic_rcpt.as_deref() == Some(to.as_str()) {
            panic!("rcpt hook panicked on purpose");
        }
        if self.behavior.broken_rcpt.as_deref() == Some(to.as_str()) {
            return Err(SmtpError::other(std::io::Error::other("database down")));
        }
        if self.behavior.unknown_users.contains(&to) {
            return Err(SmtpError::new(
                550,
                EnhancedCode::new(5, 1, 1),
                "No such user",
            ));
        }
        self.event(format!("rcpt {to}"));
        Ok(())
    }

    async fn data(&mut self, envelope: &Envelope, body: Body) -> Result<(), SmtpError> {
        if self.behavior.data_returns_early {
            self.event("data early".to_owned());
            return Ok(());
        }
        let error = self.read_body(envelope, body).await;
        if self.behavior.data_panic {
            panic!("data hook panicked on purpose");
        }
        if let Some(error) = error {
            return Err(SmtpError::other(error));
        }
        match &self.behavior.data_result {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    async fn lmtp_data(&mut self, envelope: &Envelope, body: Body) -> Vec<Result<(), SmtpError>> {
        let error = self.read_body(envelope, body).await;
        envelope
            .recipients
            .iter()
            .map(|recipient| {
                if error.is_some() {
                    Err(SmtpError::other(std::io::Error::other("body error")))
                } else if self
                    .behavior
                    .lmtp_failures
                    .contains(&recipient.address.to_string())
                {
                    Err(SmtpError::new(
                        452,
                        EnhancedCode::new(4, 2, 2),
                        "Mailbox full",
                    ))
                } else {
                    Ok(())
                }
            })
            .collect()
    }

    async fn reset(&mut self) {
        self.event("reset".to_owned());
    }

    async fn quit(&mut self) -> Result<(), SmtpError> {
        self.event("quit".to_owned());
        match &self.behavior.quit_result {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    async fn close(&mut self) {
        self.event("close".to_owned());
    }
}

/// Accepts user `alice` with password `secret`.
pub struct TestAuthenticator;

impl Authenticator for TestAuthenticator {
    async fn authenticate(
        &self,
        _info: &ConnectionInfo,
        _mechanism: &str,
        credentials: &Credentials,
    ) -> Result<Identity, SmtpError> {
        if credentials.username() == "alice" && credentials.as_password() == Some("secret") {
            Ok(Identity::new("alice"))
        } else {
            Err(smtp_server::invalid_credentials())
        }
    }
}

pub fn builder(backend: &TestBackend) -> ServerBuilder<TestBackend> {
    Server::builder(backend.clone()).hostname("mx.test")
}

/// Serves one in-memory connection; returns the client side.
pub fn connect(server: &Server<TestBackend>) -> Client<DuplexStream> {
    let (client, server_side) = tokio::io::duplex(64 * 1024);
    let server = server.clone();
    let info = ConnectionInfo::new(
        "192.0.2.10:40000".parse().unwrap(),
        "192.0.2.1:25".parse().unwrap(),
    );
    tokio::spawn(async move {
        let _ = server.serve_connection(server_side, info).await;
    });
    Client::new(client)
}

/// A scripted raw client.
pub struct Client<S> {
    pub stream: S,
    buffer: Vec<u8>,
    pub wait: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
            wait: Duration::from_secs(10),
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Reads one whole reply (all its lines), as text with CRLFs.
    pub async fn reply(&mut self) -> String {
        let wait = self.wait;
        tokio::time::timeout(wait, self.read_reply())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no reply; buffered {:?}",
                    String::from_utf8_lossy(&self.buffer)
                )
            })
    }

    async fn read_reply(&mut self) -> String {
        let mut reply = String::new();
        loop {
            let line = self.line().await;
            let last = line.as_bytes().get(3) != Some(&b'-');
            reply.push_str(&line);
            if last {
                return reply;
            }
        }
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buffer.drain(..end + 2).collect();
                return String::from_utf8(line).unwrap();
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "connection closed; buffered {:?}",
                String::from_utf8_lossy(&self.buffer)
            );
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads one reply and asserts it starts with `prefix`.
    pub async fn expect(&mut self, prefix: &str) -> String {
        let reply = self.reply().await;
        assert!(
            reply.starts_with(prefix),
            "expected {prefix:?}, got {reply:?}"
        );
        reply
    }

    /// Asserts the server closed the connection with nothing more to say.
    pub async fn expect_closed(&mut self) {
        let wait = self.wait;
        let mut chunk = [0u8; 1024];
        loop {
            let read = tokio::time::timeout(wait, self.stream.read(&mut chunk))
                .await
                .expect("connection still open");
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
        assert!(
            self.buffer.is_empty(),
            "unexpected bytes before close: {:?}",
            String::from_utf8_lossy(&self.buffer)
        );
    }

    /// Greeting, then EHLO.
    pub async fn hello(&mut self) -> String {
        self.expect("220 ").await;
        self.send("EHLO client.test\r\n").await;
        self.expect("250-mx.test").await
    }
}

impl<S> Client<S> {
    /// The stream, once every byte received has been read as replies.
    pub fn into_inner(self) -> S {
        assert!(
            self.buffer.is_empty(),
            "bytes after the last reply: {:?}",
            String::from_utf8_lossy(&self.buffer)
        );
        self.stream
    }
}

/// A self-signed certificate for `name`: the server's TLS configuration
/// and the certificate for the client's trust store.
pub fn test_tls(
    name: &str,
) -> (
    smtp_server::TlsConfig,
    rustls_pki_types::CertificateDer<'static>,
) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let tls = smtp_server::TlsConfig::from_pem(
        certified.cert.pem().as_bytes(),
        certified.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    (tls, certified.cert.der().clone())
}

/// A TLS client trusting only `root`.
pub fn tls_connector(
    root: &rustls_pki_types::CertificateDer<'static>,
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

pub fn server_name(name: &str) -> rustls_pki_types::ServerName<'static> {
    rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap()
}
