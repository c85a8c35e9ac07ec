//! smtp-client against smtp-server with ferry's Maildir store, in one
//! process on 127.0.0.1: every TLS mode, AUTH, the ESMTP extensions, LMTP,
//! odd and large bodies, one pool shared by many tasks, a server restarted
//! under a live pool and a graceful shutdown under load. Every case checks
//! the replies and the stored bytes exactly.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::maildir::{Maildir, Received, TraceHeaders};
use ferry::serve::{StoreBackend, StoreSession};
use ferry::store::Store;
use futures::StreamExt;
use smtp_client::{
    Address, AuthMechanism, BodyType, ClientConfig, ClientConfigBuilder, Connection, Credentials,
    Envelope, ErrorKind, Message, Notify, Pool, PoolConfig, Protocol, Recipient, Ret, SendResult,
    Step, Timeouts, Tls, TlsConfig,
};
use smtp_server::smtp_proto::command::{MailParameters, OriginalRecipient, RcptParameters};
use smtp_server::smtp_proto::{EnhancedCode, Reply};
use smtp_server::{
    AuthPolicy, Authenticator, Backend, Body, ConnectionInfo, Extensions, Identity, Limits, Server,
    ServerBuilder, Session, SmtpError, StaticUsers,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The server's name in greetings and Received fields.
const HOSTNAME: &str = "mx.test";
/// The client's EHLO name.
const HELO: &str = "client.test";
/// A bound on every wait in this file.
const LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------
// The server side: ferry's store backend, wrapped to record what reached
// the hooks.
// ---------------------------------------------------------------------

/// What the hooks saw, shared by every session of a server.
#[derive(Default)]
struct Log {
    /// MAIL commands that reached the session.
    mails: AtomicUsize,
    /// The envelope of every message handed to the data hook.
    envelopes: Mutex<Vec<smtp_server::Envelope>>,
    /// The mechanism of every AUTH attempt that reached the authenticator.
    auth: Mutex<Vec<String>>,
}

impl Log {
    fn envelopes(&self) -> Vec<smtp_server::Envelope> {
        self.envelopes.lock().unwrap().clone()
    }

    fn auth(&self) -> Vec<String> {
        self.auth.lock().unwrap().clone()
    }
}

/// ferry's [`StoreBackend`] with recording sessions around its sessions.
#[derive(Clone)]
struct Recorder {
    store: StoreBackend,
    log: Arc<Log>,
}

struct RecorderSession {
    inner: StoreSession,
    log: Arc<Log>,
}

/// Recipients whose local part starts with this are refused at RCPT.
const UNKNOWN: &str = "unknown";
/// In LMTP, recipients whose local part starts with this are refused after
/// the message (one reply per recipient, RFC 2033 §4.2).
const FULL: &str = "full";

impl Backend for Recorder {
    type Session = RecorderSession;

    async fn new_session(&self, info: &ConnectionInfo) -> Result<RecorderSession, SmtpError> {
        Ok(RecorderSession {
            inner: self.store.new_session(info).await?,
            log: Arc::clone(&self.log),
        })
    }
}

impl Session for RecorderSession {
    async fn mail(
        &mut self,
        _session: &smtp_server::Envelope,
        _from: Option<&Address>,
        _parameters: &MailParameters,
    ) -> Result<(), SmtpError> {
        self.log.mails.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn rcpt(
        &mut self,
        _transaction: &smtp_server::Envelope,
        to: &Address,
        _parameters: &RcptParameters,
    ) -> Result<(), SmtpError> {
        if to.local_part().starts_with(UNKNOWN) {
            return Err(SmtpError::new(
                550,
                EnhancedCode::new(5, 1, 1),
                "No such user",
            ));
        }
        Ok(())
    }

    async fn data(
        &mut self,
        envelope: &smtp_server::Envelope,
        body: Body,
    ) -> Result<(), SmtpError> {
        self.log.envelopes.lock().unwrap().push(envelope.clone());
        self.inner.data(envelope, body).await
    }

    async fn lmtp_data(
        &mut self,
        envelope: &smtp_server::Envelope,
        body: Body,
    ) -> Vec<Result<(), SmtpError>> {
        self.log.envelopes.lock().unwrap().push(envelope.clone());
        let full =
            |recipient: &smtp_server::Recipient| recipient.address.local_part().starts_with(FULL);
        let mut deliverable = envelope.clone();
        deliverable.recipients.retain(|recipient| !full(recipient));
        let delivered = self.inner.data(&deliverable, body).await;
        envelope
            .recipients
            .iter()
            .map(|recipient| {
                if full(recipient) {
                    Err(SmtpError::new(
                        452,
                        EnhancedCode::new(4, 2, 2),
                        "Mailbox full",
                    ))
                } else {
                    delivered.clone()
                }
            })
            .collect()
    }
}

/// The [`StaticUsers`] authenticator `ferry serve` uses, advertising
/// chosen mechanisms and recording each attempt.
struct RecordingAuth {
    inner: StaticUsers,
    mechanisms: Vec<String>,
    log: Arc<Log>,
}

impl Authenticator for RecordingAuth {
    fn mechanisms(&self) -> Vec<String> {
        self.mechanisms.clone()
    }

    async fn authenticate(
        &self,
        info: &ConnectionInfo,
        mechanism: &str,
        credentials: &Credentials,
    ) -> Result<Identity, SmtpError> {
        self.log.auth.lock().unwrap().push(mechanism.to_owned());
        self.inner.authenticate(info, mechanism, credentials).await
    }
}

/// AUTH for the user `alice` with password `secret`, offering `mechanisms`.
fn alice(log: &Arc<Log>, mechanisms: &[&str]) -> RecordingAuth {
    RecordingAuth {
        inner: ferry::users::load(&["alice:secret".to_owned()], None).unwrap(),
        mechanisms: mechanisms.iter().map(|m| (*m).to_owned()).collect(),
        log: Arc::clone(log),
    }
}

/// A self-signed certificate for `localhost`, made by ferry's own code
/// (rcgen) for this run: the server's TLS configuration and the PEM the
/// client trusts.
struct Pki {
    server: smtp_server::TlsConfig,
    pem: String,
}

impl Pki {
    fn new() -> Pki {
        let (identity, pem) = ferry::certs::self_signed("localhost").unwrap();
        let config = ferry::certs::server_config(identity).unwrap();
        Pki {
            server: smtp_server::TlsConfig::new(config),
            pem,
        }
    }

    /// Client TLS settings trusting only this certificate.
    fn client(&self) -> TlsConfig {
        TlsConfig::new()
            .add_root_certificates_pem(self.pem.as_bytes())
            .unwrap()
            .server_name("localhost")
    }
}

/// A running server with its Maildir.
struct TestServer {
    addr: SocketAddr,
    /// The implicit-TLS listener, when one was asked for.
    tls_addr: Option<SocketAddr>,
    maildir: PathBuf,
    log: Arc<Log>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

type Configure = Box<dyn FnOnce(ServerBuilder<Recorder>, &Arc<Log>) -> ServerBuilder<Recorder>>;

/// How to build a test server; every option defaults to the library's
/// default.
#[derive(Default)]
struct Options {
    /// Listen on this port (0: any free port).
    port: u16,
    /// Deliver into this Maildir instead of a new temporary one.
    maildir: Option<PathBuf>,
    /// Also listen with implicit TLS.
    implicit_tls: bool,
    configure: Option<Configure>,
}

impl Options {
    fn with(
        configure: impl FnOnce(ServerBuilder<Recorder>, &Arc<Log>) -> ServerBuilder<Recorder> + 'static,
    ) -> Options {
        Options {
            configure: Some(Box::new(configure)),
            ..Options::default()
        }
    }
}

impl TestServer {
    async fn start(options: Options) -> TestServer {
        let (dir, maildir) = match options.maildir {
            Some(path) => (None, path),
            None => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("mail");
                (Some(dir), path)
            }
        };
        let log = Arc::new(Log::default());
        let store = Store::Maildir(Maildir::open(&maildir, HOSTNAME).unwrap());
        let backend = Recorder {
            store: StoreBackend::new(store, HOSTNAME),
            log: Arc::clone(&log),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], options.port));
        let mut builder = Server::builder(backend).hostname(HOSTNAME).listen(addr);
        if options.implicit_tls {
            builder = builder.listen_tls("127.0.0.1:0".parse().unwrap());
        }
        if let Some(configure) = options.configure {
            builder = configure(builder, &log);
        }
        let server = builder.build().unwrap();
        // A port just released by a stopped server may take a moment.
        let deadline = Instant::now() + LIMIT;
        let listening = loop {
            match server.bind().await {
                Ok(listening) => break listening,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("bind {addr}: {error}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("bind {addr}: {error}"),
            }
        };
        let addrs = listening.local_addrs();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(listening.serve(async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr: addrs[0],
            tls_addr: addrs.get(1).copied(),
            maildir,
            log,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Shuts down gracefully and waits until the server is gone.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(LIMIT, task)
                .await
                .expect("the server did not stop in time")
                .expect("server task")
                .expect("server error");
        }
    }

    /// Every stored message (files in `new/`), sorted by file name.
    fn stored(&self) -> Vec<Vec<u8>> {
        stored_files(&self.maildir)
    }

    /// The one stored message.
    fn stored_one(&self) -> Vec<u8> {
        let mut files = self.stored();
        assert_eq!(files.len(), 1, "expected exactly one stored message");
        files.remove(0)
    }

    /// Checks that nothing was stored, and nothing is left half-written in
    /// `tmp/` once the server has noticed the client is gone.
    async fn assert_nothing_stored(&self) {
        assert!(self.stored().is_empty(), "a message was stored");
        let tmp = self.maildir.join("tmp");
        wait_until("tmp/ to be empty", || {
            std::fs::read_dir(&tmp).unwrap().next().is_none()
        })
        .await;
    }
}

fn stored_files(maildir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| std::fs::read(path).unwrap())
        .collect()
}

/// Polls `condition` every 10 ms, for at most [`LIMIT`].
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------
// The client side.
// ---------------------------------------------------------------------

fn client(addr: SocketAddr, tls: Tls) -> ClientConfigBuilder {
    ClientConfig::builder("127.0.0.1")
        .port(addr.port())
        .tls(tls)
        .hello_name(HELO)
        .timeouts(Timeouts::uniform(LIMIT))
}

fn address(text: &str) -> Address {
    Address::parse(text, true).unwrap()
}

fn envelope(from: &str, to: &[&str]) -> Envelope {
    Envelope::new(address(from), to.iter().map(|to| address(to))).unwrap()
}

/// Connects, sends one message and quits; returns the result and whether
/// the connection was encrypted.
async fn deliver(
    config: &ClientConfig,
    envelope: &Envelope,
    message: impl Into<Message>,
) -> Result<(SendResult, bool), smtp_client::Error> {
    let mut connection = Connection::connect(config).await?;
    let encrypted = connection.is_encrypted();
    let result = connection.send(envelope, message).await?;
    connection.quit().await?;
    Ok((result, encrypted))
}

/// A transcript that collects the client's lines.
fn recording_transcript() -> (
    impl Fn(&smtp_client::TranscriptLine<'_>) + Send + Sync + 'static,
    Arc<Mutex<Vec<String>>>,
) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let transcript = move |line: &smtp_client::TranscriptLine<'_>| {
        sink.lock().unwrap().push(line.to_string());
    };
    (transcript, lines)
}

// ---------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------

fn assert_reply(reply: Option<&Reply>, expected: &str) {
    let reply = reply.expect("a reply");
    assert_eq!(reply.to_string(), expected);
}

/// Every recipient accepted with the SMTP end-of-data reply.
fn assert_all_accepted(result: &SendResult, count: usize) {
    assert_eq!(result.recipients.len(), count);
    for outcome in &result.recipients {
        assert!(outcome.accepted, "{} not accepted", outcome.address);
        assert_reply(outcome.reply(), "250 2.0.0 Message accepted");
    }
    assert_reply(result.reply.as_ref(), "250 2.0.0 Message accepted");
}

/// What a stored file must hold, apart from the session id and the date,
/// which are read from the file and checked for shape.
struct Expected<'a> {
    from: Option<&'a str>,
    recipients: &'a [&'a str],
    /// The Received field's protocol (`ESMTPS`, `LMTP`, ...).
    with: &'a str,
    /// The message after dot-unstuffing.
    body: &'a [u8],
}

/// Checks a stored file byte for byte: Return-Path, one Delivered-To per
/// recipient, the Received field, then the message. Returns the session id
/// the Received field names.
fn check_stored(stored: &[u8], expected: &Expected<'_>) -> String {
    let start = find(stored, b"Received: ").expect("a Received field");
    // The Received field ends at the first CRLF not followed by a tab.
    let mut end = start;
    loop {
        let crlf = end + find(&stored[end..], b"\r\n").expect("CRLF after Received");
        end = crlf + 2;
        if stored.get(end) != Some(&b'\t') {
            break;
        }
    }
    let received = std::str::from_utf8(&stored[start..end - 2]).expect("UTF-8 Received");
    let (_, date) = received.rsplit_once("; ").expect("a date in Received");
    let id_start = received.find(" id ").expect("an id in Received") + 4;
    let id: String = received[id_start..]
        .chars()
        .take_while(|c| !matches!(c, ';' | '\r'))
        .collect();
    assert!(!id.is_empty() && date.contains(':'), "{received}");
    let for_rcpt = match expected.recipients {
        [only] => Some(*only),
        _ => None,
    };
    let mut want = TraceHeaders {
        return_path: expected.from.map(str::to_owned),
        delivered_to: expected
            .recipients
            .iter()
            .map(|r| (*r).to_owned())
            .collect(),
        received: Received {
            helo: HELO,
            peer: "127.0.0.1".parse().unwrap(),
            by: HOSTNAME,
            with: maildir_protocol(expected.with),
            id: &id,
            for_rcpt,
            date,
        }
        .value(),
    }
    .to_bytes();
    want.extend_from_slice(expected.body);
    assert_bytes(stored, &want);
    id
}

/// `with`, checked to be an RFC 3848 / RFC 6531 §3.7.3 protocol name.
fn maildir_protocol(with: &str) -> &str {
    let base = with.trim_end_matches('A').trim_end_matches('S');
    assert!(
        with == "SMTP" || ["ESMTP", "LMTP", "UTF8SMTP", "UTF8LMTP"].contains(&base),
        "{with} is not a protocol ferry writes"
    );
    with
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// `assert_eq!` for byte strings that may be megabytes long: reports the
/// first difference with some context instead of both values.
fn assert_bytes(actual: &[u8], expected: &[u8]) {
    if actual == expected {
        return;
    }
    let at = actual
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(actual.len().min(expected.len()));
    let show = |bytes: &[u8]| {
        let from = at.saturating_sub(40);
        let to = (at + 40).min(bytes.len());
        String::from_utf8_lossy(&bytes[from..to]).into_owned()
    };
    panic!(
        "stored bytes differ at offset {at} (lengths {} and {}):\n  stored:   {:?}\n  expected: {:?}",
        actual.len(),
        expected.len(),
        show(actual),
        show(expected)
    );
}

/// What the client's encoder must turn `raw` into: every bare CR or LF
/// becomes CRLF (as does CR LF itself), and a final CRLF is added when
/// missing.
fn crlf_normalised(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 16 + 2);
    let mut index = 0;
    while index < raw.len() {
        match raw[index] {
            b'\r' if raw.get(index + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                index += 2;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A small message carrying `token` in its Message-ID, Subject and body.
fn token_message(token: &str) -> Vec<u8> {
    format!(
        "Message-ID: <{token}@client.test>\r\nSubject: {token}\r\n\r\nbody of {token}\r\n.{token} starts with a dot\r\n"
    )
    .into_bytes()
}

/// The token of a stored [`token_message`], after checking the file byte
/// for byte against the message the token names.
fn stored_token(stored: &[u8], from: &str, to: &str) -> String {
    let at = find(stored, b"Message-ID: <").expect("a Message-ID") + 13;
    let end = at + find(&stored[at..], b"@").expect("@ in Message-ID");
    let token = String::from_utf8(stored[at..end].to_vec()).unwrap();
    check_stored(
        stored,
        &Expected {
            from: Some(from),
            recipients: &[to],
            with: "ESMTP",
            body: &token_message(&token),
        },
    );
    token
}

const SIMPLE: &[u8] =
    b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: hello\r\n\r\nHello Bob.\r\n";

// ---------------------------------------------------------------------
// TLS modes.
// ---------------------------------------------------------------------

/// The client sends in `mode` to a server offering STARTTLS on its plain
/// listener and TLS on an implicit listener.
async fn send_in_mode(mode: Tls, with: &str) {
    let pki = Pki::new();
    let tls = pki.server.clone();
    let mut server = TestServer::start(Options {
        implicit_tls: true,
        ..Options::with(move |builder, _| builder.tls(tls))
    })
    .await;
    let addr = match mode {
        Tls::Implicit => server.tls_addr.unwrap(),
        _ => server.addr,
    };
    let config = client(addr, mode).tls_config(pki.client()).build().unwrap();
    let envelope = envelope("alice@example.com", &["bob@example.com"]);
    let (result, encrypted) = deliver(&config, &envelope, SIMPLE).await.unwrap();
    assert_eq!(encrypted, mode != Tls::None, "{mode:?}");
    assert_all_accepted(&result, 1);
    let id = check_stored(
        &server.stored_one(),
        &Expected {
            from: Some("alice@example.com"),
            recipients: &["bob@example.com"],
            with,
            body: SIMPLE,
        },
    );
    let envelopes = server.log.envelopes();
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0].session_id, id);
    assert_eq!(envelopes[0].tls.is_some(), mode != Tls::None);
    server.stop().await;
}

#[tokio::test]
async fn tls_none_stays_plaintext_although_starttls_is_offered() {
    send_in_mode(Tls::None, "ESMTP").await;
}

#[tokio::test]
async fn tls_opportunistic_starts_tls_when_offered() {
    send_in_mode(Tls::Opportunistic, "ESMTPS").await;
}

#[tokio::test]
async fn tls_required_starts_tls() {
    send_in_mode(Tls::Required, "ESMTPS").await;
}

#[tokio::test]
async fn tls_implicit_speaks_tls_from_the_first_byte() {
    send_in_mode(Tls::Implicit, "ESMTPS").await;
}

#[tokio::test]
async fn tls_opportunistic_goes_on_in_plaintext_without_starttls() {
    let mut server = TestServer::start(Options::default()).await;
    let config = client(server.addr, Tls::Opportunistic)
        .tls_config(Pki::new().client())
        .build()
        .unwrap();
    let envelope = envelope("alice@example.com", &["bob@example.com"]);
    let (result, encrypted) = deliver(&config, &envelope, SIMPLE).await.unwrap();
    assert!(!encrypted);
    assert_all_accepted(&result, 1);
    check_stored(
        &server.stored_one(),
        &Expected {
            from: Some("alice@example.com"),
            recipients: &["bob@example.com"],
            with: "ESMTP",
            body: SIMPLE,
        },
    );
    server.stop().await;
}

#[tokio::test]
async fn tls_required_against_a_server_without_starttls_sends_no_mail() {
    let mut server = TestServer::start(Options::default()).await;
    let config = client(server.addr, Tls::Required)
        .tls_config(Pki::new().client())
        .build()
        .unwrap();
    let envelope = envelope("alice@example.com", &["bob@example.com"]);
    let error = deliver(&config, &envelope, SIMPLE).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TlsUnavailable);
    assert_eq!(error.step(), Step::StartTls);
    // Deferred like Postfix does, never bounced.
    assert!(error.is_transient());
    assert_eq!(server.log.mails.load(Ordering::SeqCst), 0);
    server.assert_nothing_stored().await;
    server.stop().await;
}

/// A certificate the client does not trust ends the attempt in every TLS
/// mode, opportunistic included: no fallback to plaintext.
#[tokio::test]
async fn an_untrusted_certificate_fails_the_handshake_and_sends_no_mail() {
    for mode in [Tls::Opportunistic, Tls::Required, Tls::Implicit] {
        let pki = Pki::new();
        let tls = pki.server.clone();
        let mut server = TestServer::start(Options {
            implicit_tls: true,
            ..Options::with(move |builder, _| builder.tls(tls))
        })
        .await;
        let addr = match mode {
            Tls::Implicit => server.tls_addr.unwrap(),
            _ => server.addr,
        };
        // Trusts another certificate than the one the server presents.
        let config = client(addr, mode)
            .tls_config(Pki::new().client())
            .build()
            .unwrap();
        let envelope = envelope("alice@example.com", &["bob@example.com"]);
        let error = deliver(&config, &envelope, SIMPLE).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Tls, "{mode:?}");
        assert_eq!(error.step(), Step::TlsHandshake);
        assert!(error.is_transient());
        assert_eq!(server.log.mails.load(Ordering::SeqCst), 0);
        server.assert_nothing_stored().await;
        server.stop().await;
    }
}

/// A server that requires TLS refuses mail from a plaintext client with
/// 530 5.7.0 (RFC 3207 §4), and stores nothing.
#[tokio::test]
async fn a_server_requiring_tls_refuses_a_plaintext_client() {
    let pki = Pki::new();
    let tls = pki.server.clone();
    let mut server = TestServer::start(Options::with(move |builder, _| {
        builder.tls(tls).require_tls(true)
    }))
    .await;
    let config = client(server.addr, Tls::None).build().unwrap();
    let envelope = envelope("alice@example.com", &["bob@example.com"]);
    let error = deliver(&config, &envelope, SIMPLE).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Rejected);
    assert_eq!(error.step(), Step::Mail);
    assert_reply(
        error.reply(),
        "530 5.7.0 Must issue a STARTTLS command first",
    );
    server.assert_nothing_stored().await;
    // The same client with STARTTLS gets through.
    let config = client(server.addr, Tls::Required)
        .tls_config(pki.client())
        .build()
        .unwrap();
    let (result, encrypted) = deliver(&config, &envelope, SIMPLE).await.unwrap();
    assert!(encrypted);
    assert_all_accepted(&result, 1);
    check_stored(
        &server.stored_one(),
        &Expected {
            from: Some("alice@example.com"),
            recipients: &["bob@example.com"],
            with: "ESMTPS",
            body: SIMPLE,
        },
    );
    server.stop().await;
}

// ---------------------------------------------------------------------
// AUTH.
// ---------------------------------------------------------------------

/// A server with STARTTLS and AUTH for alice over `mechanisms`.
async fn auth_server(pki: &Pki, mechanisms: &'static [&'static str]) -> TestServer {
    let tls = pki.server.clone();
    TestServer::start(Options::with(move |builder, log| {
        builder
            .tls(tls)
            .auth(alice(log, mechanisms), AuthPolicy::new())
    }))
    .await
}

async fn send_authenticated(
    mechanisms: &'static [&'static str],
    choice: Option<AuthMechanism>,
    expect_used: &str,
) {
    let pki = Pki::new();
    let mut server = auth_server(&pki, mechanisms).await;
    let mut builder = client(server.addr, Tls::Required)
        .tls_config(pki.client())
        .credentials(Credentials::password("alice", "secret"));
    if let Some(mechanism) = choice {
        builder = builder.auth_mechanism(mechanism);
    }
    let config = builder.build().unwrap();
    let envelope = envelope("alice@example.com", &["bob@example.com"]);
    let (result, _) = deliver(&config, &envelope, SIMPLE).await.unwrap();
    assert_all_accepted(&result, 1);
    assert_eq!(server.log.auth(), vec![expect_used.to_owned()]);
    let envelopes = server.log.envelopes();
    assert_eq!(
        envelopes[0].identity.as_ref().map(|id| id.name.as_str()),
        Some("alice")
    );
    check_stored(
        &server.stored_one(),
        &Expected {
            from: Some("alice@example.com"),
            recipients: &["bob@example.com"],
            with: "ESMTPSA",
            body: SIMPLE,
        },
    );
    server.stop().await;
}

#[tokio::test]
async fn auth_plain_is_the_default_choice() {
    send_authenticated(&["PLAIN", "LOGIN"], None, "PLAIN").await;
}

#[tokio::test]
async fn auth_login_when_it_is_the_only_one_offered() {
    send_authenticated(&["LOGIN"], None, "LOGIN").await;
}

#[tokio::test]
async fn auth_login_when_chosen() {
    send_authenticated(&["PLAIN", "LOGIN"], Some(AuthMechanism::Login), "LOGIN").await;
}

#[tokio::test]
async fn auth_with_a_bad_password_is_refused_with_535() {
    for mechanism in [AuthMechanism::Plain, AuthMechanism::Login] {
        let pki = Pki::new();
        let mut server = auth_server(&pki, &["PLAIN", "LOGIN"]).await;
        let config = client(server.addr, Tls::Required)
            .tls_config(pki.client())
            .credentials(Credentials::password("alice", "wrong"))
            .auth_mechanism(mechanism)
            .build()
            .unwrap();
        let envelope = envelope("alice@example.com", &["bob@example.com"]);
        let error = deliver(&config, &envelope, SIMPLE).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Auth, "{mechanism}");
        assert_eq!(error.step(), Step::Auth);
        assert_reply(
            error.reply(),
            "535 5.7.8 Authentication credentials invalid",
        );
        assert!(error.is_permanent());
        assert_eq!(server.log.auth(), vec![mechanism.as_str().to_owned()]);
        assert_eq!(server.log.mails.load(Ordering::SeqCst), 0);
        server.assert_nothing_stored().await;
        server.stop().await;
    }
}

#[tokio::test]
async fn a_chosen_mechanism_the_server_lacks_fails_without_trying_another() {
    let pki = Pki::new();
    let mut server = auth_server(&pki, &["LOGIN"]).await;
    let config = client(server.addr, Tls::Required)
        .tls_config(pki.client())
        .credentials(Credentials::password("alice", "secret"))
        .auth_mechanism(AuthMechanism::Plain)
        .build()
        .unwrap();
    let envelope = envelope("alice@example.com", &["bob@example.com"]);
    let error = deliver(&config, &envelope, SIMPLE).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth);
    assert!(server.log.auth().is_empty());
    server.assert_nothing_stored().await;
    server.stop().await;
}

/// The client keeps credentials off a plaintext connection even when the
/// server would take them there.
#[tokio::test]
async fn the_client_refuses_plaintext_auth_by_default() {
    let mut server = TestServer::start(Options::with(|builder, log| {
        builder.auth(
            alice(log, &["PLAIN", "LOGIN"]),
            AuthPolicy::new().allow_insecure(true),
        )
    }))
    .await;
    let config = client(server.addr, Tls::None)
        .credentials(Credentials::password("alice", "secret"))
        .build()
        .unwrap();
    let error = Connection::connect(&config).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth);
    assert!(error.to_string().contains("without TLS"), "{error}");
    assert!(server.log.auth().is_empty());
    // Allowed explicitly, the same credentials work.
    let config = client(server.addr, Tls::None)
        .credentials(Credentials::password("alice", "secret"))
        .allow_plaintext_auth(true)
        .build()
        .unwrap();
    let connection = Connection::connect(&config).await.unwrap();
    assert!(connection.is_authenticated());
    connection.quit().await.unwrap();
    assert_eq!(server.log.auth(), vec!["PLAIN".to_owned()]);
    server.stop().await;
}

/// Reads one reply, every line with its CRLF.
async fn read_reply(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Vec<String> {
    let mut lines = Vec::new();
    // Bounded: a reply has at most this many lines here.
    for _ in 0..100 {
        let mut line = String::new();
        tokio::time::timeout(LIMIT, read.read_line(&mut line))
            .await
            .expect("the server went silent")
            .expect("read a reply line");
        assert!(line.ends_with("\r\n"), "{line:?}");
        let last = line.as_bytes().get(3) == Some(&b' ');
        lines.push(line);
        if last {
            return lines;
        }
    }
    panic!("a reply of more than 100 lines: {lines:?}");
}

/// The server neither offers AUTH before TLS nor takes it there: an AUTH
/// command in plaintext gets 538 5.7.11 (RFC 4954 §6).
#[tokio::test]
async fn the_server_refuses_plaintext_auth_by_default() {
    let pki = Pki::new();
    let mut server = auth_server(&pki, &["PLAIN", "LOGIN"]).await;
    let config = client(server.addr, Tls::None)
        .credentials(Credentials::password("alice", "secret"))
        .allow_plaintext_auth(true)
        .build()
        .unwrap();
    let error = Connection::connect(&config).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth);
    assert!(error.to_string().contains("does not offer AUTH"), "{error}");

    // A client that sends AUTH anyway.
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    assert!(read_reply(&mut read).await[0].starts_with("220 "));
    write.write_all(b"EHLO client.test\r\n").await.unwrap();
    let ehlo = read_reply(&mut read).await;
    assert!(ehlo.iter().any(|line| line.contains("STARTTLS")));
    assert!(!ehlo.iter().any(|line| line.contains("AUTH")), "{ehlo:?}");
    let plain = smtp_server::smtp_proto::sasl::plain_response(None, "alice", "secret");
    write
        .write_all(format!("AUTH PLAIN {plain}\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(
        read_reply(&mut read).await,
        vec!["538 5.7.11 Encryption required for requested authentication mechanism\r\n"]
    );
    assert!(server.log.auth().is_empty());
    write.write_all(b"QUIT\r\n").await.unwrap();
    assert!(read_reply(&mut read).await[0].starts_with("221 "));
    server.stop().await;
}

// ---------------------------------------------------------------------
// Extensions.
// ---------------------------------------------------------------------

fn extensions(change: impl FnOnce(&mut Extensions)) -> Extensions {
    let mut extensions = Extensions::default();
    change(&mut extensions);
    extensions
}

/// Three recipients, the middle one unknown, with PIPELINING on and off at
/// either end: the same per-recipient replies and the same stored message.
#[tokio::test]
async fn pipelining_on_and_off_give_the_same_outcome() {
    for server_pipelining in [true, false] {
        for client_pipelining in [true, false] {
            let mut server = TestServer::start(Options::with(move |builder, _| {
                builder.extensions(extensions(|e| e.pipelining = server_pipelining))
            }))
            .await;
            let config = client(server.addr, Tls::None)
                .pipelining(client_pipelining)
                .chunking(false)
                .build()
                .unwrap();
            let envelope = envelope(
                "alice@example.com",
                &[
                    "bob@example.com",
                    "unknown@example.com",
                    "carol@example.com",
                ],
            );
            let mut connection = Connection::connect(&config).await.unwrap();
            assert_eq!(connection.capabilities().pipelining, server_pipelining);
            let result = connection.send(&envelope, SIMPLE).await.unwrap();
            connection.quit().await.unwrap();
            let outcomes: Vec<(String, bool, String)> = result
                .recipients
                .iter()
                .map(|o| {
                    (
                        o.address.to_string(),
                        o.accepted,
                        o.reply().unwrap().to_string(),
                    )
                })
                .collect();
            assert_eq!(
                outcomes,
                vec![
                    (
                        "bob@example.com".into(),
                        true,
                        "250 2.0.0 Message accepted".into()
                    ),
                    (
                        "unknown@example.com".into(),
                        false,
                        "550 5.1.1 No such user".into()
                    ),
                    (
                        "carol@example.com".into(),
                        true,
                        "250 2.0.0 Message accepted".into()
                    ),
                ],
                "server {server_pipelining}, client {client_pipelining}"
            );
            assert_eq!(result.transactions, 1);
            check_stored(
                &server.stored_one(),
                &Expected {
                    from: Some("alice@example.com"),
                    recipients: &["bob@example.com", "carol@example.com"],
                    with: "ESMTP",
                    body: SIMPLE,
                },
            );
            server.stop().await;
        }
    }
}

/// A body of `lines` CRLF lines of 98 octets (100 with CRLF).
fn hundred_octet_lines(lines: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(lines * 100);
    for index in 0..lines {
        body.extend_from_slice(format!("{index:06} {}\r\n", "x".repeat(91)).as_bytes());
    }
    body
}

#[tokio::test]
async fn size_too_big_is_refused_before_anything_is_sent() {
    let mut server = TestServer::start(Options::with(|builder, _| {
        builder.limits(Limits {
            max_message_size: 10_000,
            ..Limits::default()
        })
    }))
    .await;
    let config = client(server.addr, Tls::None).build().unwrap();
    let envelope = envelope("alice@example.com", &["bob@example.com"]);

    // Known sizes are checked against SIZE before MAIL.
    let big = hundred_octet_lines(101);
    for message in [
        Message::from(big.clone()),
        Message::from_reader(std::io::Cursor::new(big.clone())).size(big.len() as u64),
    ] {
        let error = deliver(&config, &envelope, message).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unsupported);
        assert_eq!(error.step(), Step::Validate);
        assert!(error.to_string().contains("10000"), "{error}");
    }
    assert_eq!(server.log.mails.load(Ordering::SeqCst), 0);

    // A stream of unknown size is cut off once it passes the limit, before
    // the end of data, so nothing is delivered.
    let error = deliver(
        &config,
        &envelope,
        Message::from_reader(std::io::Cursor::new(big)),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert_eq!(error.step(), Step::Body);
    server.assert_nothing_stored().await;

    // Exactly at the limit is fine.
    let fits = hundred_octet_lines(100);
    let (result, _) = deliver(&config, &envelope, fits.clone()).await.unwrap();
    assert_all_accepted(&result, 1);
    assert_eq!(
        server.log.envelopes().last().unwrap().mail_parameters.size,
        Some(10_000)
    );
    check_stored(
        &server.stored_one(),
        &Expected {
            from: Some("alice@example.com"),
            recipients: &["bob@example.com"],
            with: "ESMTP",
            body: &fits,
        },
    );
    server.stop().await;
}

#[tokio::test]
async fn eight_bit_content_goes_with_8bitmime() {
    let body = "Subject: Gr\u{fc}\u{df}e\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nSch\u{f6}ne Gr\u{fc}\u{df}e \u{2014} \u{65e5}\u{672c}\r\n"
        .as_bytes();
    let mut server = TestServer::start(Options::default()).await;
    let config = client(server.addr, Tls::None).build().unwrap();
    let envelope = envelope("alice@example.com", &["bob@example.com"]);
    let (result, _) = deliver(&config, &envelope, body).await.unwrap();
    assert_all_accepted(&result, 1);
    assert_eq!(
        server.log.envelopes()[0].mail_parameters.body,
        Some(BodyType::EightBitMime)
    );
    check_stored(
        &server.stored_one(),
        &Expected {
            from: Some("alice@example.com"),
            recipients: &["bob@example.com"],
            with: "ESMTP",
            body,
        },
    );
    server.stop().await;

    // Without 8BITMIME the client refuses before MAIL. (SMTPUTF8 goes too:
    // RFC 6531 §3.1 makes 8BITMIME its prerequisite.)
    let mut server = TestServer::start(Options::with(|builder, _| {
        builder.extensions(extensions(|e| {
            e.eight_bit_mime = false;
            e.smtputf8 = false;
        }))
    }))
    .await;
    let config = client(server.addr, Tls::None).build().unwrap();
    let error = deliver(&config, &envelope, body).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert_eq!(server.log.mails.load(Ordering::SeqCst), 0);
    server.assert_nothing_stored().await;
    server.stop().await;
}

#[tokio::test]
async fn smtputf8_addresses_are_delivered() {
    let from = "j\u{f6}rg@b\u{fc}cher.example";
    let to = "\u{3b4}\u{3bf}\u{3ba}\u{3b9}\u{3bc}\u{3ae}@\u{3c0}\u{3b1}\u{3c1}\u{3ac}\u{3b4}\u{3b5}\u{3b9}\u{3b3}\u{3bc}\u{3b1}.example";
    let body = format!("From: {from}\r\nTo: {to}\r\nSubject: UTF-8\r\n\r\nHi\r\n").into_bytes();
    let mut server = TestServer::start(Options::default()).await;
    let config = client(server.addr, Tls::None).build().unwrap();
    let envelope = envelope(from, &[to]);
    assert!(envelope.needs_smtputf8());
    let (result, _) = deliver(&config, &envelope, body.clone()).await.unwrap();
    assert_all_accepted(&result, 1);
    let recorded = &server.log.envelopes()[0];
    assert!(recorded.mail_parameters.smtputf8);
    assert_eq!(recorded.from.as_ref().map(Address::as_str), Some(from));
    assert_eq!(recorded.recipients[0].address.as_str(), to);
    check_stored(
        &server.stored_one(),
        &Expected {
            from: Some(from),
            recipients: &[to],
            with: "UTF8SMTP",
            body: &body,
        },
    );
    server.stop().await;

    let mut server = TestServer::start(Options::with(|builder, _| {
        builder.extensions(extensions(|e| e.smtputf8 = false))
    }))
    .await;
    let config = client(server.addr, Tls::None).build().unwrap();
    let error = deliver(&config, &envelope, body).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert_eq!(server.log.mails.load(Ordering::SeqCst), 0);
    server.stop().await;
}

/// A message in several BDAT chunks: leading dots are not stuffed and
/// arrive as they are.
#[tokio::test]
async fn chunking_sends_bdat_chunks_stored_byte_exact() {
    let mut body = b"Subject: chunks\r\n\r\n".to_vec();
    for index in 0..120 {
        body.extend_from_slice(format!(".line {index:03} starts with a dot\r\n").as_bytes());
        body.extend_from_slice(b"..two dots\r\n.\r\n");
    }
    let mut server = TestServer::start(Options::default()).await;
    let (transcript, lines) = recording_transcript();
    let config = client(server.addr, Tls::None)
        .chunk_size(1024)
        .transcript(transcript)
        .build()
        .unwrap();
    let envelope = envelope("alice@example.com", &["bob@example.com"]);
    let (result, _) = deliver(&config, &envelope, body.clone()).await.unwrap();
    assert_all_accepted(&result, 1);
    let lines = lines.lock().unwrap().clone();
    let chunks: Vec<&String> = lines.iter().filter(|l| l.starts_with("C: BDAT ")).collect();
    assert!(chunks.len() >= 5, "{chunks:?}");
    assert!(chunks.last().unwrap().ends_with(" LAST"));
    assert!(!lines.iter().any(|l| l == "C: DATA"));
    check_stored(
        &server.stored_one(),
        &Expected {
            from: Some("alice@example.com"),
            recipients: &["bob@example.com"],
            with: "ESMTP",
            body: &body,
        },
    );
    server.stop().await;

    // The same message over DATA when the server does not offer CHUNKING.
    let mut server = TestServer::start(Options::with(|builder, _| {
        builder.extensions(extensions(|e| e.chunking = false))
    }))
    .await;
    let (transcript, lines) = recording_transcript();
    let config = client(server.addr, Tls::None)
        .transcript(transcript)
        .build()
        .unwrap();
    let (result, _) = deliver(&config, &envelope, body.clone()).await.unwrap();
    assert_all_accepted(&result, 1);
    let lines = lines.lock().unwrap().clone();
    assert!(lines.iter().any(|l| l == "C: DATA"));
    assert!(!lines.iter().any(|l| l.starts_with("C: BDAT")));
    check_stored(
        &server.stored_one(),
        &Expected {
            from: Some("alice@example.com"),
            recipients: &["bob@example.com"],
            with: "ESMTP",
            body: &body,
        },
    );
    server.stop().await;
}

/// BINARYMIME: every octet value, bare CR, bare LF and NUL arrive exactly
/// as sent, with nothing normalised.
#[tokio::test]
async fn binarymime_body_is_stored_byte_exact() {
    let mut body =
        b"MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            .to_vec();
    for round in 0..40u32 {
        body.extend((0..=255u8).map(|byte| byte.wrapping_add(round as u8)));
        body.extend_from_slice(b"\n.\r\r.\n\0");
    }
    let mut server = TestServer::start(Options::default()).await;
    let config = client(server.addr, Tls::None)
        .chunk_size(1024)
        .build()
        .unwrap();
    let envelope = envelope("alice@example.com", &["bob@example.com"]);
    let message = Message::from(body.clone()).body_type(BodyType::BinaryMime);
    let (result, _) = deliver(&config, &envelope, message).await.unwrap();
    assert_all_accepted(&result, 1);
    assert_eq!(
        server.log.envelopes()[0].mail_parameters.body,
        Some(BodyType::BinaryMime)
    );
    check_stored(
        &server.stored_one(),
        &Expected {
            from: Some("alice@example.com"),
            recipients: &["bob@example.com"],
            with: "ESMTP",
            body: &body,
        },
    );
    server.stop().await;
}

#[tokio::test]
async fn dsn_parameters_reach_the_handler() {
    let envelope = Envelope::builder()
        .from(address("alice@example.com"))
        .recipient(
            Recipient::from(address("bob@example.com"))
                .notify(Notify::On {
                    success: true,
                    failure: true,
                    delay: false,
                })
                .orcpt("rfc822", "Bob+Smith=1@example.com"),
        )
        .recipient(Recipient::from(address("carol@example.com")).notify(Notify::Never))
        .ret(Ret::Headers)
        .envid("QQ314159 +=x")
        .build()
        .unwrap();
    let mut server = TestServer::start(Options::default()).await;
    let config = client(server.addr, Tls::None).build().unwrap();
    let (result, _) = deliver(&config, &envelope, SIMPLE).await.unwrap();
    assert_all_accepted(&result, 2);
    let recorded = &server.log.envelopes()[0];
    assert_eq!(recorded.mail_parameters.ret, Some(Ret::Headers));
    assert_eq!(
        recorded.mail_parameters.envid.as_deref(),
        Some("QQ314159 +=x")
    );
    assert_eq!(
        recorded.recipients[0].parameters,
        RcptParameters {
            notify: Some(Notify::On {
                success: true,
                failure: true,
                delay: false,
            }),
            orcpt: Some(OriginalRecipient {
                addr_type: "rfc822".into(),
                address: "Bob+Smith=1@example.com".into(),
            }),
        }
    );
    assert_eq!(
        recorded.recipients[1].parameters.notify,
        Some(Notify::Never)
    );
    assert_eq!(recorded.recipients[1].parameters.orcpt, None);
    check_stored(
        &server.stored_one(),
        &Expected {
            from: Some("alice@example.com"),
            recipients: &["bob@example.com", "carol@example.com"],
            with: "ESMTP",
            body: SIMPLE,
        },
    );
    server.stop().await;

    // A server without DSN gets none of them, and the message still goes.
    let mut server = TestServer::start(Options::with(|builder, _| {
        builder.extensions(extensions(|e| e.dsn = false))
    }))
    .await;
    let config = client(server.addr, Tls::None).build().unwrap();
    let (result, _) = deliver(&config, &envelope, SIMPLE).await.unwrap();
    assert_all_accepted(&result, 2);
    let recorded = &server.log.envelopes()[0];
    assert_eq!(recorded.mail_parameters.ret, None);
    assert_eq!(recorded.mail_parameters.envid, None);
    assert!(
        recorded
            .recipients
            .iter()
            .all(|r| r.parameters == RcptParameters::default())
    );
    server.stop().await;
}

/// LMTP: one reply per accepted recipient after the message (one of them a
/// refusal from the handler), one file per delivered recipient.
#[tokio::test]
async fn lmtp_replies_per_recipient_and_stores_one_file_each() {
    for chunking in [true, false] {
        let mut server = TestServer::start(Options::with(|builder, _| builder.lmtp(true))).await;
        let config = client(server.addr, Tls::None)
            .protocol(Protocol::Lmtp)
            .chunking(chunking)
            .build()
            .unwrap();
        let envelope = envelope(
            "alice@example.com",
            &[
                "bob@example.com",
                "unknown@example.com",
                "full-carol@example.com",
                "dave@example.com",
            ],
        );
        let (result, _) = deliver(&config, &envelope, SIMPLE).await.unwrap();
        assert_eq!(result.reply, None);
        let outcomes: Vec<(bool, String)> = result
            .recipients
            .iter()
            .map(|o| (o.accepted, o.reply().unwrap().to_string()))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                (
                    true,
                    "250 2.0.0 <bob@example.com> Message accepted".to_owned()
                ),
                (false, "550 5.1.1 No such user".to_owned()),
                (false, "452 4.2.2 Mailbox full".to_owned()),
                (
                    true,
                    "250 2.0.0 <dave@example.com> Message accepted".to_owned()
                ),
            ],
            "chunking {chunking}"
        );
        let stored = server.stored();
        assert_eq!(stored.len(), 2);
        let mut delivered: Vec<&str> = Vec::new();
        for file in &stored {
            let rcpt = if find(file, b"Delivered-To: bob@").is_some() {
                "bob@example.com"
            } else {
                "dave@example.com"
            };
            check_stored(
                file,
                &Expected {
                    from: Some("alice@example.com"),
                    recipients: &[rcpt],
                    with: "LMTP",
                    body: SIMPLE,
                },
            );
            delivered.push(rcpt);
        }
        delivered.sort_unstable();
        assert_eq!(delivered, ["bob@example.com", "dave@example.com"]);
        server.stop().await;
    }
}

/// 150 recipients against the default limit of 100 per message: the
/// client sends the rest in a follow-up transaction and all 150 arrive.
#[tokio::test]
async fn recipients_past_the_server_limit_go_in_a_second_transaction() {
    let mut server = TestServer::start(Options::default()).await;
    let config = client(server.addr, Tls::None).build().unwrap();
    let recipients: Vec<String> = (0..150).map(|n| format!("r{n:03}@example.com")).collect();
    let to: Vec<&str> = recipients.iter().map(String::as_str).collect();
    let envelope = envelope("alice@example.com", &to);
    let (result, _) = deliver(&config, &envelope, SIMPLE).await.unwrap();
    assert_eq!(result.transactions, 2);
    assert_all_accepted(&result, 150);
    let envelopes = server.log.envelopes();
    assert_eq!(
        envelopes
            .iter()
            .map(|e| e.recipients.len())
            .collect::<Vec<_>>(),
        [100, 50]
    );
    let mut stored = server.stored();
    assert_eq!(stored.len(), 2);
    // Sort the files by their first recipient.
    stored.sort_by_key(|file| find(file, b"Delivered-To: r000@").is_none());
    check_stored(
        &stored[0],
        &Expected {
            from: Some("alice@example.com"),
            recipients: &to[..100],
            with: "ESMTP",
            body: SIMPLE,
        },
    );
    check_stored(
        &stored[1],
        &Expected {
            from: Some("alice@example.com"),
            recipients: &to[100..],
            with: "ESMTP",
            body: SIMPLE,
        },
    );
    server.stop().await;
}

/// A message read from a reader cannot be sent twice: past the limit the
/// recipients keep the server's 452 as their outcome, and only the first
/// 100 get the message.
#[tokio::test]
async fn recipients_past_the_limit_are_reported_for_a_message_that_cannot_be_resent() {
    let mut server = TestServer::start(Options::default()).await;
    let config = client(server.addr, Tls::None).build().unwrap();
    let recipients: Vec<String> = (0..150).map(|n| format!("r{n:03}@example.com")).collect();
    let to: Vec<&str> = recipients.iter().map(String::as_str).collect();
    let envelope = envelope("alice@example.com", &to);
    let message = Message::from_reader(std::io::Cursor::new(SIMPLE));
    let (result, _) = deliver(&config, &envelope, message).await.unwrap();
    assert_eq!(result.transactions, 1);
    assert_eq!(result.accepted().count(), 100);
    for outcome in &result.recipients[..100] {
        assert!(outcome.accepted);
    }
    for outcome in &result.recipients[100..] {
        assert!(!outcome.accepted, "{}", outcome.address);
        assert_reply(outcome.reply(), "452 4.5.3 Too many recipients");
    }
    check_stored(
        &server.stored_one(),
        &Expected {
            from: Some("alice@example.com"),
            recipients: &to[..100],
            with: "ESMTP",
            body: SIMPLE,
        },
    );
    server.stop().await;
}

// ---------------------------------------------------------------------
// Bodies.
// ---------------------------------------------------------------------

/// Leading dots, bare LF and bare CR line ends: the client normalises to
/// CRLF and dot-stuffs, the server unstuffs, over DATA and over BDAT.
#[tokio::test]
async fn leading_dots_and_bare_line_ends_are_stored_normalised() {
    let raw: &[u8] =
        b"Subject: dots\n\n.\n..\n.leading\r\n...three\nbare CR\rend\r\n.\r\nlast line without end";
    let expected = crlf_normalised(raw);
    assert!(expected.ends_with(b"last line without end\r\n"));
    for chunking in [false, true] {
        let mut server = TestServer::start(Options::default()).await;
        let config = client(server.addr, Tls::None)
            .chunking(chunking)
            .build()
            .unwrap();
        let envelope = envelope("alice@example.com", &["bob@example.com"]);
        let (result, _) = deliver(&config, &envelope, raw).await.unwrap();
        assert_all_accepted(&result, 1);
        check_stored(
            &server.stored_one(),
            &Expected {
                from: Some("alice@example.com"),
                recipients: &["bob@example.com"],
                with: "ESMTP",
                body: &expected,
            },
        );
        server.stop().await;
    }
}

/// About 5 MB of LF-terminated lines, some starting with dots, written in
/// odd-sized pieces into a pipe the client reads from.
fn five_megabytes() -> Vec<u8> {
    let mut raw = b"Subject: big\n\n".to_vec();
    let mut index = 0u32;
    while raw.len() < 5 * 1024 * 1024 {
        let line = match index % 7 {
            0 => format!(".{index} leading dot\n"),
            3 => format!("{index} crlf line {}\r\n", "y".repeat(60)),
            _ => format!("{index} {}\n", "z".repeat((index % 90) as usize)),
        };
        raw.extend_from_slice(line.as_bytes());
        index += 1;
    }
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_megabyte_body_streamed_from_a_reader_is_stored_byte_exact() {
    let raw = Arc::new(five_megabytes());
    let expected = crlf_normalised(&raw);
    for chunking in [false, true] {
        let mut server = TestServer::start(Options::default()).await;
        let config = client(server.addr, Tls::None)
            .chunking(chunking)
            .build()
            .unwrap();
        let (reader, mut writer) = tokio::io::duplex(64 * 1024);
        let source = Arc::clone(&raw);
        let feeder = tokio::spawn(async move {
            // Odd piece sizes put CR LF pairs and dots across reads.
            for piece in source.chunks(8191) {
                writer.write_all(piece).await.unwrap();
            }
            writer.shutdown().await.unwrap();
        });
        let envelope = envelope("alice@example.com", &["bob@example.com"]);
        let (result, _) = deliver(&config, &envelope, Message::from_reader(reader))
            .await
            .unwrap();
        feeder.await.unwrap();
        assert_all_accepted(&result, 1);
        check_stored(
            &server.stored_one(),
            &Expected {
                from: Some("alice@example.com"),
                recipients: &["bob@example.com"],
                with: "ESMTP",
                body: &expected,
            },
        );
        server.stop().await;
    }
}

// ---------------------------------------------------------------------
// One pool, many tasks.
// ---------------------------------------------------------------------

const FROM: &str = "load@example.com";
const TO: &str = "sink@example.com";

/// Reads every stored message of the Maildir, checks each byte for byte
/// and returns their tokens; panics on a duplicate.
fn stored_tokens(maildir: &Path) -> BTreeSet<String> {
    let mut tokens = BTreeSet::new();
    for file in stored_files(maildir) {
        let token = stored_token(&file, FROM, TO);
        assert!(tokens.insert(token.clone()), "{token} stored twice");
    }
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_from_twenty_tasks_through_one_pool() {
    let mut server = TestServer::start(Options::default()).await;
    let config = client(server.addr, Tls::None).build().unwrap();
    let pool = Pool::new(
        config,
        PoolConfig {
            max_connections: 8,
            ..PoolConfig::default()
        },
    );
    let envelope = envelope(FROM, &[TO]);
    let mut tasks = Vec::new();
    for task in 0..20 {
        let pool = pool.clone();
        let envelope = envelope.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for n in 0..50 {
                let token = format!("t{task:02}m{n:02}");
                let result = pool.send(&envelope, token_message(&token)).await.unwrap();
                assert_all_accepted(&result, 1);
                sent.push(token);
            }
            sent
        }));
    }
    let mut sent = BTreeSet::new();
    for task in tasks {
        let tokens = tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
        sent.extend(tokens);
    }
    assert_eq!(sent.len(), 1000);
    let stats = pool.stats();
    assert_eq!((stats.sent, stats.failures), (1000, 0));
    assert!(stats.open <= 8, "{stats:?}");
    pool.close().await;
    assert_eq!(stored_tokens(&server.maildir), sent);
    server.stop().await;
}

/// What the sending tasks of the restart and shutdown tests saw.
#[derive(Default)]
struct Sends {
    accepted: Mutex<Vec<(String, Instant)>>,
    failed: Mutex<Vec<(String, smtp_client::Error)>>,
}

impl Sends {
    fn accepted_tokens(&self) -> BTreeSet<String> {
        let accepted = self.accepted.lock().unwrap();
        accepted.iter().map(|(token, _)| token.clone()).collect()
    }

    fn accepted_since(&self, since: Instant) -> usize {
        let accepted = self.accepted.lock().unwrap();
        accepted.iter().filter(|(_, at)| *at >= since).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_recovers_when_the_server_restarts_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("mail");
    let mut first = TestServer::start(Options {
        maildir: Some(maildir.clone()),
        ..Options::default()
    })
    .await;
    let port = first.addr.port();
    let config = client(first.addr, Tls::None)
        .timeouts(Timeouts::uniform(Duration::from_secs(5)))
        .build()
        .unwrap();
    let pool = Pool::new(
        config,
        PoolConfig {
            max_connections: 4,
            ..PoolConfig::default()
        },
    );
    let sends = Arc::new(Sends::default());
    let done = Arc::new(AtomicBool::new(false));
    let envelope = envelope(FROM, &[TO]);
    let mut tasks = Vec::new();
    for task in 0..6 {
        let (pool, sends, done, envelope) = (
            pool.clone(),
            Arc::clone(&sends),
            Arc::clone(&done),
            envelope.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for n in 0..2000 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let token = format!("t{task}m{n:04}");
                match pool.send(&envelope, token_message(&token)).await {
                    Ok(result) => {
                        assert_all_accepted(&result, 1);
                        sends.accepted.lock().unwrap().push((token, Instant::now()));
                    }
                    Err(error) => {
                        sends.failed.lock().unwrap().push((token, error));
                        // The server is away: do not spin.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }));
    }
    wait_until("sends before the restart", || {
        sends.accepted_tokens().len() >= 30
    })
    .await;
    first.stop().await;
    let gap = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = TestServer::start(Options {
        port,
        maildir: Some(maildir.clone()),
        ..Options::default()
    })
    .await;
    assert_eq!(second.addr.port(), port);
    let restarted = Instant::now();
    wait_until("sends after the restart", || {
        sends.accepted_since(restarted) >= 60
    })
    .await;
    done.store(true, Ordering::SeqCst);
    for task in tasks {
        tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
    }
    pool.close().await;
    second.stop().await;

    // Nothing accepted is lost, nothing refused was stored.
    assert_eq!(stored_tokens(&maildir), sends.accepted_tokens());
    // Sends failed only while no server listened, and only transiently.
    for (token, error) in sends.failed.lock().unwrap().iter() {
        assert!(error.is_transient(), "{token}: {error}");
        assert!(
            matches!(error.kind(), ErrorKind::Io | ErrorKind::Closed),
            "{token}: {error}"
        );
    }
    let accepted = sends.accepted.lock().unwrap();
    assert!(accepted.iter().any(|(_, at)| *at < gap));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_loses_nothing_that_got_a_250() {
    let mut server = TestServer::start(Options::with(|builder, _| {
        builder.shutdown_timeout(Duration::from_secs(10))
    }))
    .await;
    let config = client(server.addr, Tls::None)
        .timeouts(Timeouts::uniform(Duration::from_secs(10)))
        .build()
        .unwrap();
    let pool = Pool::new(
        config,
        PoolConfig {
            max_connections: 20,
            ..PoolConfig::default()
        },
    );
    let sends = Arc::new(Sends::default());
    let attempts = Arc::new(AtomicUsize::new(0));
    let envelope = envelope(FROM, &[TO]);
    let mut tasks = Vec::new();
    for task in 0..20 {
        let (pool, sends, attempts, envelope) = (
            pool.clone(),
            Arc::clone(&sends),
            Arc::clone(&attempts),
            envelope.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Until the first failure, which the shutdown brings.
            for n in 0..2000 {
                let token = format!("t{task:02}m{n:04}");
                attempts.fetch_add(1, Ordering::SeqCst);
                // A body of some size, so that shutdown finds transfers in
                // flight.
                let mut message = token_message(&token);
                message.extend_from_slice(&hundred_octet_lines(200));
                match pool.send(&envelope, message).await {
                    Ok(result) => {
                        assert_all_accepted(&result, 1);
                        sends.accepted.lock().unwrap().push((token, Instant::now()));
                    }
                    Err(error) => {
                        sends.failed.lock().unwrap().push((token, error));
                        return;
                    }
                }
            }
            panic!("task {task} never saw the shutdown");
        }));
    }
    wait_until("load before the shutdown", || {
        sends.accepted_tokens().len() >= 200
    })
    .await;
    server.stop().await;
    for task in tasks {
        tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
    }
    let failed = sends.failed.lock().unwrap();
    assert_eq!(failed.len(), 20, "one failure per task");
    let accepted = sends.accepted_tokens();
    assert_eq!(
        accepted.len() + failed.len(),
        attempts.load(Ordering::SeqCst)
    );
    for (token, error) in failed.iter() {
        assert!(error.is_transient(), "{token}: {error}");
        assert!(!accepted.contains(token));
    }
    // Every 250 is in the Maildir, and nothing else is.
    let stored = {
        let mut tokens = BTreeSet::new();
        for file in server.stored() {
            let at = find(&file, b"Message-ID: <").unwrap() + 13;
            let end = at + find(&file[at..], b"@").unwrap();
            let token = String::from_utf8(file[at..end].to_vec()).unwrap();
            let mut body = token_message(&token);
            body.extend_from_slice(&hundred_octet_lines(200));
            check_stored(
                &file,
                &Expected {
                    from: Some(FROM),
                    recipients: &[TO],
                    with: "ESMTP",
                    body: &body,
                },
            );
            assert!(tokens.insert(token));
        }
        tokens
    };
    assert_eq!(stored, accepted);
    assert!(
        std::fs::read_dir(server.maildir.join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "half-written files left in tmp/"
    );
}

/// Shutdown whose grace period ends while messages are still arriving:
/// each message body trickles in from a stream over DATA, so the server
/// cuts transfers in the middle with 421 4.3.2. A cut message gets an error at
/// the client and leaves nothing behind; every 250 is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_that_cuts_transfers_short_stores_only_what_got_a_250() {
    let mut server = TestServer::start(Options::with(|builder, _| {
        builder.shutdown_timeout(Duration::from_millis(100))
    }))
    .await;
    let config = client(server.addr, Tls::None)
        .chunking(false)
        .timeouts(Timeouts::uniform(Duration::from_secs(10)))
        .build()
        .unwrap();
    let pool = Pool::new(
        config,
        PoolConfig {
            max_connections: 20,
            ..PoolConfig::default()
        },
    );
    let sends = Arc::new(Sends::default());
    let envelope = envelope(FROM, &[TO]);
    let mut tasks = Vec::new();
    for task in 0..20 {
        let (pool, sends, envelope) = (pool.clone(), Arc::clone(&sends), envelope.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..500 {
                let token = format!("t{task:02}m{n:03}");
                // Pieces of 6 octets, 20 ms apart: about 350 ms per
                // message, longer than the shutdown's grace period.
                let pieces: Vec<bytes::Bytes> = token_message(&token)
                    .chunks(6)
                    .map(bytes::Bytes::copy_from_slice)
                    .collect();
                let stream = futures::stream::iter(pieces).then(|piece| async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, std::io::Error>(piece)
                });
                match pool.send(&envelope, Message::from_stream(stream)).await {
                    Ok(result) => {
                        assert_all_accepted(&result, 1);
                        sends.accepted.lock().unwrap().push((token, Instant::now()));
                    }
                    Err(error) => {
                        sends.failed.lock().unwrap().push((token, error));
                        return;
                    }
                }
            }
            panic!("task {task} never saw the shutdown");
        }));
    }
    wait_until("load before the shutdown", || {
        sends.accepted_tokens().len() >= 40
    })
    .await;
    server.stop().await;
    for task in tasks {
        tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
    }
    let failed = sends.failed.lock().unwrap();
    assert_eq!(failed.len(), 20, "one failure per task");
    for (token, error) in failed.iter() {
        assert!(error.is_transient(), "{token}: {error}");
    }
    let cut = failed
        .iter()
        .filter(|(_, error)| matches!(error.step(), Step::Body | Step::DataEnd | Step::Data))
        .count();
    assert!(cut > 0, "no transfer was cut short: {failed:?}");
    let accepted = sends.accepted_tokens();
    assert_eq!(stored_tokens(&server.maildir), accepted);
    assert!(
        std::fs::read_dir(server.maildir.join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "half-written files left in tmp/"
    );
}

// ---------------------------------------------------------------------
// `ferry send --auth`, through the library functions the binary runs.
// ---------------------------------------------------------------------

async fn ferry_send(
    server: &TestServer,
    pem: &Path,
    raw: &Path,
    auth: &str,
) -> ferry::outcome::SendOutcome {
    use clap::Parser;
    let port = server.addr.port().to_string();
    let argv = [
        "ferry",
        "send",
        "--server",
        &format!("127.0.0.1:{port}"),
        "--tls",
        "starttls",
        "--ca",
        pem.to_str().unwrap(),
        "--helo",
        HELO,
        "--timeout",
        "20",
        "--from",
        "alice@example.com",
        "--to",
        "bob@example.com",
        "--raw",
        raw.to_str().unwrap(),
        "--user",
        "alice",
        "--password",
        "secret",
        "--auth",
        auth,
    ];
    let ferry::cli::Command::Send(args) = ferry::cli::Cli::try_parse_from(argv).unwrap().command
    else {
        panic!("not a send command");
    };
    let prepared = ferry::send::prepare(&args, |_| None).unwrap();
    ferry::client_run::send_prepared(&args, prepared).await
}

#[tokio::test]
async fn ferry_send_auth_pins_the_mechanism() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let pem = dir.path().join("ca.pem");
    std::fs::write(&pem, &pki.pem).unwrap();
    let raw = dir.path().join("m.eml");
    std::fs::write(&raw, SIMPLE).unwrap();

    for (auth, used) in [("auto", "PLAIN"), ("plain", "PLAIN"), ("login", "LOGIN")] {
        let mut server = auth_server(&pki, &["PLAIN", "LOGIN"]).await;
        let outcome = ferry_send(&server, &pem, &raw, auth).await;
        assert_eq!(outcome.exit_code(), 0, "{auth}: {:?}", outcome.error);
        assert_eq!(server.log.auth(), vec![used.to_owned()], "--auth {auth}");
        check_stored(
            &server.stored_one(),
            &Expected {
                from: Some("alice@example.com"),
                recipients: &["bob@example.com"],
                with: "ESMTPSA",
                body: SIMPLE,
            },
        );
        server.stop().await;
    }

    // --auth plain against a server offering only LOGIN: the send fails as
    // an authentication failure, and the password never goes out.
    let mut server = auth_server(&pki, &["LOGIN"]).await;
    let outcome = ferry_send(&server, &pem, &raw, "plain").await;
    assert_eq!(outcome.exit_code(), 1);
    let error = outcome.error.expect("an error");
    assert_eq!(error.kind, ferry::outcome::FailureKind::Auth);
    assert!(
        error.message.contains("AUTH PLAIN was chosen"),
        "{}",
        error.message
    );
    assert!(server.log.auth().is_empty());
    server.assert_nothing_stored().await;
    server.stop().await;
}
