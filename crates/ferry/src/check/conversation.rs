//! One SMTP conversation driven by hand, byte for byte: what the checks
//! need that a well-behaved client never does (pipelined groups chosen by
//! the check, bare line feeds, bytes behind STARTTLS), with every step
//! bounded by a timeout and every line recorded for `--transcript`.
//!
//! Replies are read with smtp-proto's [`ReplyDecoder`], the decoder
//! ferry's client uses.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use smtp_proto::reply::ReplyDecoder;
use smtp_proto::{Reply, transcript};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Why a step of the conversation did not produce a reply.
#[derive(Debug)]
pub enum ProbeError {
    /// Nothing arrived within the time limit.
    Timeout(Duration),
    /// The server closed the connection.
    Closed,
    /// A socket error.
    Io(io::Error),
    /// The server sent something that is not an SMTP reply.
    Garbled(smtp_proto::reply::ReplyError),
    /// The TLS handshake failed.
    Tls(io::Error),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Timeout(limit) => write!(f, "no answer within {} s", limit.as_secs()),
            ProbeError::Closed => f.write_str("the server closed the connection"),
            ProbeError::Io(err) => write!(f, "{err}"),
            ProbeError::Garbled(err) => write!(f, "not an SMTP reply: {err}"),
            ProbeError::Tls(err) => write!(f, "TLS handshake failed: {err}"),
        }
    }
}

/// The reply as the server wrote it, first line only when it has many:
/// `250 2.1.0 Ok`.
pub fn show(reply: &Reply) -> String {
    let mut out = reply.code().to_string();
    if let Some(enhanced) = reply.enhanced() {
        out.push_str(&format!(" {enhanced}"));
    }
    if let Some(first) = reply.lines().first().filter(|l| !l.is_empty()) {
        out.push(' ');
        out.push_str(first);
    }
    if reply.lines().len() > 1 {
        out.push_str(&format!(" (+{} lines)", reply.lines().len() - 1));
    }
    out
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Between taking the plain stream for the handshake and getting the
    /// TLS one back; a failed handshake leaves it here.
    Gone,
}

/// What the TLS handshake negotiated and what the certificate verifier
/// found.
#[derive(Debug, Clone)]
pub struct TlsDetails {
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: String,
    /// The negotiated cipher suite.
    pub cipher: String,
    /// The chain the server sent, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The verdict of the webpki verifier against the trusted roots for the
    /// expected name: `Ok` or the rustls error.
    pub verdict: Result<(), rustls::Error>,
    /// How long the handshake took.
    pub elapsed: Duration,
}

/// A certificate verifier that lets every handshake finish and records
/// what the standard webpki verification said, so the checks can report
/// an untrusted or misnamed certificate and still look at it.
#[derive(Debug)]
pub struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    verdict: Mutex<Option<Result<(), rustls::Error>>>,
}

impl RecordingVerifier {
    fn new(roots: Arc<RootCertStore>) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| format!("cannot build the certificate verifier: {e}"))?;
        Ok(RecordingVerifier {
            inner,
            verdict: Mutex::new(None),
        })
    }

    /// What the last verification said, if one ran.
    pub fn verdict(&self) -> Option<Result<(), rustls::Error>> {
        self.verdict.lock().map(|v| v.clone()).unwrap_or(None)
    }

    fn take(&self) -> Option<Result<(), rustls::Error>> {
        self.verdict.lock().map(|mut v| v.take()).unwrap_or(None)
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map(|_| ());
        if let Ok(mut slot) = self.verdict.lock() {
            *slot = Some(verdict);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The trust anchors: the Mozilla roots plus any given with `--ca`.
pub fn root_store(extra: &[CertificateDer<'static>]) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra {
        // A certificate webpki cannot use as an anchor is reported when
        // `--ca` is read; here it is simply not added.
        let _ = roots.add(cert.clone());
    }
    Arc::new(roots)
}

/// A TLS client configuration with a fresh [`RecordingVerifier`], TLS 1.2
/// and 1.3 on the ring provider, and the given ALPN protocols.
pub fn tls_client(
    roots: &Arc<RootCertStore>,
    alpn: &[&[u8]],
) -> Result<(Arc<rustls::ClientConfig>, Arc<RecordingVerifier>), String> {
    let verifier = Arc::new(RecordingVerifier::new(Arc::clone(roots))?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("no usable TLS version: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(config), verifier))
}

/// The TLS server name for `host`: a DNS name, or an IP address when the
/// target was given as one.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let trimmed = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(trimmed.to_owned()).map_err(|e| format!("{host:?}: {e}"))
}

/// Does the TLS handshake on `tcp`, returning the stream and what it
/// negotiated.
pub async fn handshake(
    tcp: TcpStream,
    roots: &Arc<RootCertStore>,
    name: ServerName<'static>,
    limit: Duration,
) -> Result<(TlsStream<TcpStream>, TlsDetails), ProbeError> {
    let (config, verifier) =
        tls_client(roots, &[]).map_err(|e| ProbeError::Tls(io::Error::other(e)))?;
    let started = Instant::now();
    let stream = tokio::time::timeout(limit, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| ProbeError::Timeout(limit))?
        .map_err(ProbeError::Tls)?;
    let elapsed = started.elapsed();
    let (_, connection) = stream.get_ref();
    let version = connection
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let cipher = connection
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let chain = connection
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let verdict = verifier.take().unwrap_or(Err(rustls::Error::General(
        "no certificate was verified".into(),
    )));
    Ok((
        stream,
        TlsDetails {
            version,
            cipher,
            chain,
            verdict,
            elapsed,
        },
    ))
}

/// One connection to a server.
pub struct Conversation {
    stream: Stream,
    buffer: BytesMut,
    decoder: ReplyDecoder,
    /// The time limit for each step.
    pub limit: Duration,
    lines: Vec<String>,
    record: bool,
    masking: bool,
    /// The address connected to.
    pub peer: SocketAddr,
    /// The local address, for `EHLO [address]`.
    pub local: SocketAddr,
}

impl Conversation {
    /// Connects to `addr` within `limit`; returns how long the connection
    /// took.
    pub async fn connect(
        addr: SocketAddr,
        limit: Duration,
        record: bool,
    ) -> Result<(Conversation, Duration), ProbeError> {
        let started = Instant::now();
        let tcp = tokio::time::timeout(limit, TcpStream::connect(addr))
            .await
            .map_err(|_| ProbeError::Timeout(limit))?
            .map_err(ProbeError::Io)?;
        let elapsed = started.elapsed();
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().map_err(ProbeError::Io)?;
        let mut conversation = Conversation {
            stream: Stream::Plain(tcp),
            buffer: BytesMut::with_capacity(4096),
            decoder: ReplyDecoder::new(),
            limit,
            lines: Vec::new(),
            record,
            masking: false,
            peer: addr,
            local,
        };
        conversation.note(format!("connected to {addr}"));
        Ok((conversation, elapsed))
    }

    /// The recorded lines, for `--transcript`.
    pub fn into_transcript(self) -> Vec<String> {
        self.lines
    }

    /// Adds a comment line to the transcript.
    pub fn note(&mut self, text: String) {
        if self.record {
            self.lines.push(format!("-- {text}"));
        }
    }

    fn log(&mut self, prefix: &str, text: &str) {
        if self.record {
            for line in text.split('\n') {
                let shown = super::report::one_line(line);
                self.lines.push(format!("{prefix} {shown}"));
            }
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ProbeError> {
        let limit = self.limit;
        let result = match &mut self.stream {
            Stream::Plain(s) => tokio::time::timeout(limit, write_all(s, bytes)).await,
            Stream::Tls(s) => tokio::time::timeout(limit, write_all(s.as_mut(), bytes)).await,
            Stream::Gone => return Err(ProbeError::Closed),
        };
        result
            .map_err(|_| ProbeError::Timeout(limit))?
            .map_err(ProbeError::Io)
    }

    /// Sends one command line (CRLF is added). An `AUTH` line and the
    /// SASL responses after it are masked in the transcript.
    pub async fn send(&mut self, line: &str) -> Result<(), ProbeError> {
        // The same masking rule as the client's and the server's
        // transcripts (RFC 4954 payloads carry passwords and tokens).
        if transcript::is_auth_command(line.as_bytes()) {
            self.log("C:", &transcript::mask_auth_command(line.as_bytes()));
            self.masking = true;
        } else if self.masking {
            self.log("C:", transcript::MASK);
        } else {
            self.log("C:", line);
        }
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.write(&bytes).await
    }

    /// Sends bytes exactly as given (for pipelined groups and malformed
    /// line endings); they are shown escaped in the transcript.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ProbeError> {
        self.log(
            "C:",
            &super::report::one_line(&String::from_utf8_lossy(bytes)),
        );
        self.write(bytes).await
    }

    async fn fill(&mut self, deadline: Instant) -> Result<(), ProbeError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let buffer = &mut self.buffer;
        let read = match &mut self.stream {
            Stream::Plain(s) => tokio::time::timeout(remaining, s.read_buf(buffer)).await,
            Stream::Tls(s) => tokio::time::timeout(remaining, s.read_buf(buffer)).await,
            Stream::Gone => return Err(ProbeError::Closed),
        };
        match read {
            Err(_) => Err(ProbeError::Timeout(self.limit)),
            Ok(Err(err)) => Err(ProbeError::Io(err)),
            Ok(Ok(0)) => Err(ProbeError::Closed),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Reads one reply within `limit`.
    pub async fn reply_within(&mut self, limit: Duration) -> Result<Reply, ProbeError> {
        let deadline = Instant::now() + limit;
        loop {
            match self.decoder.decode(&mut self.buffer) {
                Ok(Some(reply)) => {
                    let mut text = String::new();
                    let lines = reply.lines();
                    for (i, line) in lines.iter().enumerate() {
                        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
                        let enhanced = match (i, reply.enhanced()) {
                            (_, Some(e)) if i + 1 == lines.len() || lines.len() == 1 => {
                                format!("{e} ")
                            }
                            _ => String::new(),
                        };
                        text.push_str(&format!("{}{sep}{enhanced}{line}\n", reply.code()));
                    }
                    if lines.is_empty() {
                        text.push_str(&reply.code().to_string());
                    }
                    self.log("S:", text.trim_end());
                    if reply.code() == 235 || reply.code() / 100 >= 4 && self.masking {
                        self.masking = false;
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(err) => return Err(ProbeError::Garbled(err)),
            }
            match self.fill(deadline).await {
                Err(ProbeError::Timeout(_)) => return Err(ProbeError::Timeout(limit)),
                other => other?,
            }
        }
    }

    /// Reads one reply within the step limit.
    pub async fn reply(&mut self) -> Result<Reply, ProbeError> {
        self.reply_within(self.limit).await
    }

    /// Sends a command and reads its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, ProbeError> {
        self.send(line).await?;
        self.reply().await
    }

    /// Waits up to `quiet` for more bytes; returns what arrived (empty when
    /// the server stayed silent). Already buffered bytes count.
    pub async fn unsolicited(&mut self, quiet: Duration) -> Result<Vec<u8>, ProbeError> {
        if self.buffer.is_empty() {
            match self.fill(Instant::now() + quiet).await {
                Ok(()) | Err(ProbeError::Timeout(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(self.buffer.to_vec())
    }

    /// Reads whatever arrives next (at least one byte) within `limit`.
    pub async fn read_more(&mut self, limit: Duration) -> Result<(), ProbeError> {
        match self.fill(Instant::now() + limit).await {
            Err(ProbeError::Timeout(_)) => Err(ProbeError::Timeout(limit)),
            other => other,
        }
    }

    /// Sends binary bytes (a hand-built TLS record), shown in the
    /// transcript by `description` only.
    pub async fn send_binary(&mut self, bytes: &[u8], description: &str) -> Result<(), ProbeError> {
        self.log("C:", &format!("<{description}, {} octets>", bytes.len()));
        self.write(bytes).await
    }

    /// Bytes received but not yet read as a reply.
    pub fn buffered(&self) -> &[u8] {
        &self.buffer
    }

    /// Upgrades the connection to TLS (after `220` to `STARTTLS`, or at
    /// once for implicit TLS). Bytes the server sent after its `220` and
    /// before the handshake are returned as an error by the caller's
    /// choice: they are left in [`buffered`](Self::buffered) until then.
    pub async fn start_tls(
        &mut self,
        roots: &Arc<RootCertStore>,
        name: ServerName<'static>,
    ) -> Result<TlsDetails, ProbeError> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(ProbeError::Closed);
        };
        self.buffer.clear();
        self.decoder = ReplyDecoder::new();
        let (stream, details) = handshake(tcp, roots, name, self.limit).await?;
        self.note(format!(
            "TLS {} {} after {} ms",
            details.version,
            details.cipher,
            details.elapsed.as_millis()
        ));
        self.stream = Stream::Tls(Box::new(stream));
        Ok(details)
    }

    /// Sends QUIT and reads the reply, then closes.
    pub async fn quit(mut self) -> (Result<Reply, ProbeError>, Vec<String>) {
        let reply = self.command("QUIT").await;
        (reply, self.lines)
    }
}

async fn write_all<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}
