//! Scripted fake servers on 127.0.0.1 for the client tests: each test
//! writes the server's side of the conversation line by line, and every
//! expectation that fails panics inside the server task, which the test
//! sees when it awaits the task.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_client::{ClientConfig, ClientConfigBuilder, Timeouts, Tls, TlsConfig};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Any byte stream the script can run over: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The server side of one connection.
pub struct Script {
    io: BufReader<Box<dyn Io>>,
    read_limit: Duration,
}

/// A bound on every single read in a script, so a client bug shows up as
/// a failed expectation instead of a hung test.
const READ_LIMIT: Duration = Duration::from_secs(20);

impl Script {
    pub fn new(io: Box<dyn Io>) -> Self {
        Self {
            io: BufReader::new(io),
            read_limit: READ_LIMIT,
        }
    }

    /// Changes the bound on each read (for paused-clock tests where an
    /// idle client is expected to stay silent for long).
    pub fn with_read_limit(mut self, limit: Duration) -> Self {
        self.read_limit = limit;
        self
    }

    /// Writes `line` plus CRLF.
    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    /// Writes bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let io = self.io.get_mut();
        io.write_all(bytes).await.expect("server write");
        io.flush().await.expect("server flush");
    }

    /// Reads one CRLF-terminated line, without the CRLF; `None` at EOF.
    pub async fn try_line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        let read = tokio::time::timeout(self.read_limit, self.io.read_until(b'\n', &mut line))
            .await
            .expect("the client went silent")
            .ok()?;
        if read == 0 {
            return None;
        }
        assert!(line.ends_with(b"\r\n"), "line without CRLF: {line:?}");
        line.truncate(line.len() - 2);
        Some(String::from_utf8(line).expect("UTF-8 line"))
    }

    /// Reads one line.
    pub async fn line(&mut self) -> String {
        self.try_line()
            .await
            .expect("the client closed the connection")
    }

    /// Reads one line and checks it.
    pub async fn expect(&mut self, expected: &str) {
        let line = self.line().await;
        assert_eq!(line, expected);
    }

    /// Reads one line and checks its start; returns it.
    pub async fn expect_prefix(&mut self, prefix: &str) -> String {
        let line = self.line().await;
        assert!(
            line.starts_with(prefix),
            "{line:?} does not start with {prefix:?}"
        );
        line
    }

    /// Checks that the client sends nothing for `period`.
    pub async fn expect_silence(&mut self, period: Duration) {
        let mut byte = [0u8; 1];
        if let Ok(result) = tokio::time::timeout(period, self.io.read(&mut byte)).await {
            panic!("expected silence, the client sent {result:?} {byte:?}");
        }
    }

    /// Checks that nothing is buffered and the client closes (EOF or reset).
    pub async fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(READ_LIMIT, self.io.read_to_end(&mut rest))
            .await
            .expect("the client did not close the connection");
        assert!(
            rest.is_empty(),
            "unexpected bytes before EOF: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// Reads everything until the client closes.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(self.read_limit, self.io.read_to_end(&mut rest))
            .await
            .expect("the client did not close the connection");
        rest
    }

    /// Reads a DATA body up to and including the lone "." line; returns
    /// the bytes as sent (dot-stuffed, without the final ".\r\n").
    pub async fn read_data(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let mut line = Vec::new();
            let read = tokio::time::timeout(READ_LIMIT, self.io.read_until(b'\n', &mut line))
                .await
                .expect("the client went silent in DATA")
                .expect("read DATA");
            assert!(read > 0, "EOF inside DATA");
            if line == b".\r\n" {
                return body;
            }
            body.extend_from_slice(&line);
        }
    }

    /// Reads exactly `len` bytes (a BDAT chunk).
    pub async fn read_exact(&mut self, len: usize) -> Vec<u8> {
        let mut chunk = vec![0; len];
        tokio::time::timeout(READ_LIMIT, self.io.read_exact(&mut chunk))
            .await
            .expect("the client went silent in BDAT")
            .expect("read BDAT chunk");
        chunk
    }

    /// How many bytes are already buffered (sent by the client but not yet
    /// read by the script).
    pub fn buffered(&self) -> usize {
        self.io.buffer().len()
    }

    /// The raw stream; panics if the client sent bytes not read yet.
    pub fn into_inner(self) -> Box<dyn Io> {
        assert_eq!(self.io.buffer().len(), 0, "client pipelined past STARTTLS");
        self.io.into_inner()
    }

    /// Upgrades to TLS with `acceptor`; panics if the client had sent
    /// anything beyond the STARTTLS line.
    pub async fn starttls(self, acceptor: &tokio_rustls::TlsAcceptor) -> Script {
        let io = self.into_inner();
        let tls = acceptor.accept(io).await.expect("server TLS handshake");
        Script::new(Box::new(tls))
    }

    /// The usual opening: greeting and one EHLO reply.
    pub async fn greet(&mut self, ehlo_lines: &[&str]) {
        self.send("220 test.example ESMTP").await;
        self.expect("EHLO localhost").await;
        self.ehlo_reply(ehlo_lines).await;
    }

    /// A multi-line 250 reply to EHLO: the domain, then `lines`.
    pub async fn ehlo_reply(&mut self, lines: &[&str]) {
        let mut reply = String::new();
        let all: Vec<&str> = std::iter::once("test.example")
            .chain(lines.iter().copied())
            .collect();
        for (index, line) in all.iter().enumerate() {
            let separator = if index + 1 == all.len() { ' ' } else { '-' };
            reply.push_str(&format!("250{separator}{line}\r\n"));
        }
        self.send_raw(reply.as_bytes()).await;
    }

    /// QUIT and its reply, then EOF.
    pub async fn quit(&mut self) {
        self.expect("QUIT").await;
        self.send("221 bye").await;
    }
}

/// Serves one connection with `script`; the handle yields its result.
pub async fn serve<T, F, Fut>(script: F) -> (SocketAddr, JoinHandle<T>)
where
    T: Send + 'static,
    F: FnOnce(Script) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        script(Script::new(Box::new(tcp))).await
    });
    (addr, handle)
}

/// Serves every connection with `script(connection_number, script)`, each
/// in its own task, up to `max` connections; the handle yields the number
/// of connections accepted once the listener is dropped by `stop`.
pub async fn serve_each<F, Fut>(max: usize, script: F) -> (SocketAddr, JoinHandle<usize>)
where
    F: Fn(usize, Script) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let script = Arc::new(script);
    let handle = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for index in 0..max {
            let Ok((tcp, _)) = listener.accept().await else {
                break;
            };
            let script = Arc::clone(&script);
            tasks.push(tokio::spawn(async move {
                script(index, Script::new(Box::new(tcp))).await;
            }));
        }
        let count = tasks.len();
        for task in tasks {
            task.await.expect("server connection task");
        }
        count
    });
    (addr, handle)
}

/// A client configuration for a fake server at `addr`, plaintext, with
/// generous timeouts.
pub fn config(addr: SocketAddr) -> ClientConfigBuilder {
    ClientConfig::builder(addr.ip().to_string())
        .port(addr.port())
        .tls(Tls::None)
        .timeouts(Timeouts::uniform(Duration::from_secs(10)))
}

/// A certificate authority and a server certificate for "localhost",
/// generated for this test run.
pub struct TestPki {
    pub ca_pem: String,
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub ca: rcgen::Certificate,
    pub ca_key: rcgen::KeyPair,
}

impl TestPki {
    pub fn new() -> Self {
        Self::with_client_verifier(None)
    }

    /// With a verifier, the server asks for a client certificate.
    pub fn with_client_verifier(
        verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ferry test CA");
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::from_params(&params, &ca_key);
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let server = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params")
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let server_config = builder
            .with_single_cert(
                vec![server.der().clone()],
                rustls_pki_types::PrivateKeyDer::try_from(server_key.serialize_der())
                    .expect("server key DER"),
            )
            .expect("server TLS config");
        Self {
            ca_pem: ca.pem(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server_config)),
            ca,
            ca_key,
        }
    }

    /// Client TLS settings trusting this CA, checking the name "localhost".
    pub fn client_tls(&self) -> TlsConfig {
        TlsConfig::new()
            .add_root_certificates_pem(self.ca_pem.as_bytes())
            .expect("CA PEM")
            .server_name("localhost")
    }
}
