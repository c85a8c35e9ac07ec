//! `ferry check` against real servers on loopback: smtp-server with each
//! defect switched on, raw scripted servers for the misbehaviour
//! smtp-server cannot show (STARTTLS injection, bare LF as a line end,
//! TLS 1.0/1.1 only, smuggling), a test DNS server with the zones of each
//! scenario, and an HTTPS server for MTA-STS policies under a test CA.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferry::check::report::{Report, Status};
use ferry::check::{self, Progress};
use ferry::cli::{Cli, Command};
use futures::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use smtp_server::smtp_proto::address::Address;
use smtp_server::smtp_proto::command::RcptParameters;
use smtp_server::smtp_proto::sasl::Credentials;
use smtp_server::smtp_proto::{EnhancedCode, Reply};
use smtp_server::{
    AuthPolicy, Authenticator, Backend, Body, ConnectionInfo, Envelope, Identity, Server, Session,
    SmtpError, TlsConfig,
};
use test_dns::TestDns;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A 2048-bit RSA public key (SubjectPublicKeyInfo, base64) for DKIM
/// records; only the public half exists.
const RSA_2048: &str = include_str!("data/rsa2048.pub.b64");
/// A 1024-bit one.
const RSA_1024: &str = include_str!("data/rsa1024.pub.b64");

// ---------------------------------------------------------------- certificates

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    dir: tempfile::TempDir,
}

struct Leaf {
    chain_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ferry check test CA");
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Ca { params, key, dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Leaf {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

fn rustls_server(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn spki_sha256(der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::prelude::X509Certificate::from_der(der).unwrap();
    ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw)
        .as_ref()
        .to_vec()
}

// ---------------------------------------------------------------- smtp-server

/// What the smtp-server test server does wrong.
#[derive(Default)]
struct Spec {
    tls: Option<(String, String)>,
    open_relay: bool,
    vrfy_confirms: bool,
    insecure_auth: bool,
    user: Option<(&'static str, &'static str)>,
    hostname: &'static str,
    /// Listen with implicit TLS instead of plain SMTP.
    implicit: bool,
}

#[derive(Clone)]
struct TestBackend {
    open_relay: bool,
    vrfy_confirms: bool,
}

struct TestSession {
    backend: TestBackend,
}

impl Backend for TestBackend {
    type Session = TestSession;
    async fn new_session(&self, _info: &ConnectionInfo) -> Result<TestSession, SmtpError> {
        Ok(TestSession {
            backend: self.clone(),
        })
    }
}

impl Session for TestSession {
    async fn rcpt(
        &mut self,
        _transaction: &Envelope,
        to: &Address,
        _parameters: &RcptParameters,
    ) -> Result<(), SmtpError> {
        let local = to.domain().is_none_or(|d| d.ends_with(".test"));
        if local || self.backend.open_relay {
            Ok(())
        } else {
            Err(SmtpError::new(
                550,
                EnhancedCode::new(5, 7, 1),
                "Relaying denied",
            ))
        }
    }

    async fn data(&mut self, _envelope: &Envelope, mut body: Body) -> Result<(), SmtpError> {
        while let Some(chunk) = body.next().await {
            chunk.map_err(SmtpError::other)?;
        }
        Ok(())
    }

    async fn vrfy(&mut self, argument: &str) -> Result<Reply, SmtpError> {
        if self.backend.vrfy_confirms {
            Ok(Reply::new(
                250,
                EnhancedCode::new(2, 1, 5),
                format!("<{argument}@good.test>"),
            ))
        } else {
            Ok(Reply::new(
                252,
                EnhancedCode::new(2, 5, 0),
                "Cannot VRFY user",
            ))
        }
    }
}

struct OneUser(&'static str, &'static str);

impl Authenticator for OneUser {
    async fn authenticate(
        &self,
        _info: &ConnectionInfo,
        _mechanism: &str,
        credentials: &Credentials,
    ) -> Result<Identity, SmtpError> {
        if credentials.username() == self.0 && credentials.as_password() == Some(self.1) {
            Ok(Identity::new(self.0))
        } else {
            Err(smtp_server::invalid_credentials())
        }
    }
}

async fn start_smtp(spec: Spec) -> SocketAddr {
    let backend = TestBackend {
        open_relay: spec.open_relay,
        vrfy_confirms: spec.vrfy_confirms,
    };
    let mut builder = Server::builder(backend).hostname(if spec.hostname.is_empty() {
        "mx.good.test"
    } else {
        spec.hostname
    });
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    builder = if spec.implicit {
        builder.listen_tls(any)
    } else {
        builder.listen(any)
    };
    if let Some((cert, key)) = &spec.tls {
        builder = builder.tls(TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap());
    }
    if let Some((user, password)) = spec.user {
        builder = builder.auth(
            OneUser(user, password),
            AuthPolicy::new().allow_insecure(spec.insecure_auth),
        );
    }
    let listening = builder.build().unwrap().bind().await.unwrap();
    let addr = listening.local_addrs()[0];
    tokio::spawn(listening.serve(std::future::pending::<()>()));
    addr
}

// ---------------------------------------------------------------- scripted server

/// A hand-written SMTP server for the defects smtp-server refuses to have.
#[derive(Clone, Default)]
struct Script {
    /// End command lines at a bare LF, as aiosmtpd does.
    lf_lines: bool,
    /// Keep plaintext pipelined behind STARTTLS and run it inside TLS.
    inject: bool,
    /// Answer only TLS 1.0/1.1 ClientHellos (with a ServerHello) and
    /// refuse TLS 1.2+ with a protocol_version alert.
    legacy_only: bool,
    /// End DATA at <LF>.<LF> too.
    smuggle: bool,
    /// Wait this long before the greeting.
    greeting_delay: Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
}

async fn start_script(script: Script) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(60), scripted(tcp, script)).await;
            });
        }
    });
    addr
}

enum Next {
    Upgrade,
    Done,
}

async fn scripted(mut tcp: TcpStream, script: Script) -> std::io::Result<()> {
    tokio::time::sleep(script.greeting_delay).await;
    tcp.write_all(b"220 raw.test ESMTP scripted\r\n").await?;
    let mut buf = Vec::new();
    if let Next::Done = script_session(&mut tcp, &mut buf, &script, false).await? {
        return Ok(());
    }
    if script.legacy_only {
        let mut head = [0u8; 5];
        tcp.read_exact(&mut head).await?;
        let mut hello = vec![0u8; u16::from_be_bytes([head[3], head[4]]) as usize];
        tcp.read_exact(&mut hello).await?;
        let (major, minor) = (hello[4], hello[5]);
        let has_supported_versions = hello.windows(2).any(|w| w == [0, 43]);
        if (major, minor) < (3, 3) && !has_supported_versions {
            // ServerHello: version, random, empty session id, suite, null compression.
            let mut body = vec![major, minor];
            body.extend_from_slice(&[7u8; 32]);
            body.extend_from_slice(&[0, 0x00, 0x2f, 0]);
            let mut handshake = vec![2, 0, 0, body.len() as u8];
            handshake.extend_from_slice(&body);
            let mut record = vec![22, major, minor, 0, handshake.len() as u8];
            record.extend_from_slice(&handshake);
            tcp.write_all(&record).await?;
        } else {
            tcp.write_all(&[21, 3, 3, 0, 2, 2, 70]).await?;
        }
        return Ok(());
    }
    let Some(config) = script.tls.clone() else {
        return Ok(());
    };
    let leftover = if script.inject {
        std::mem::take(&mut buf)
    } else {
        Vec::new()
    };
    let mut tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
    let mut buf = leftover;
    script_session(&mut tls, &mut buf, &script, true).await?;
    Ok(())
}

async fn next_line<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    lf: bool,
) -> Option<Vec<u8>> {
    loop {
        let end: Option<(usize, usize)> = if lf {
            buf.iter().position(|b| *b == b'\n').map(|i| (i, 1))
        } else {
            buf.windows(2).position(|w| w == b"\r\n").map(|i| (i, 2))
        };
        if let Some((at, len)) = end {
            let mut line: Vec<u8> = buf.drain(..at + len).collect();
            line.truncate(at);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Some(line);
        }
        let mut chunk = [0u8; 4096];
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn script_session<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    script: &Script,
    tls: bool,
) -> std::io::Result<Next> {
    let mut in_mail = false;
    loop {
        let Some(line) = next_line(io, buf, script.lf_lines).await else {
            return Ok(Next::Done);
        };
        if line.contains(&b'\n') {
            io.write_all(b"500 5.5.2 Bare LF not allowed\r\n").await?;
            continue;
        }
        let upper = String::from_utf8_lossy(&line).to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or_default().to_owned();
        let reply: String = match verb.as_str() {
            "EHLO" => {
                let starttls = if !tls && (script.tls.is_some() || script.legacy_only) {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                format!("250-raw.test\r\n250-PIPELINING\r\n{starttls}250 8BITMIME\r\n")
            }
            "HELO" | "NOOP" => "250 OK\r\n".into(),
            "RSET" => {
                in_mail = false;
                "250 OK\r\n".into()
            }
            "STARTTLS" if !tls => {
                io.write_all(b"220 Go ahead\r\n").await?;
                return Ok(Next::Upgrade);
            }
            "MAIL" if in_mail => "503 Nested MAIL\r\n".into(),
            "MAIL" => {
                in_mail = true;
                "250 OK\r\n".into()
            }
            "RCPT" if upper.contains("EXAMPLE.") => "550 Relaying denied\r\n".into(),
            "RCPT" => "250 OK\r\n".into(),
            "VRFY" => "252 Cannot VRFY\r\n".into(),
            "DATA" => {
                io.write_all(b"354 Go\r\n").await?;
                loop {
                    let ended = buf.windows(5).any(|w| w == b"\r\n.\r\n")
                        || (script.smuggle && buf.windows(3).any(|w| w == b"\n.\n"));
                    if ended {
                        buf.clear();
                        break;
                    }
                    let mut chunk = [0u8; 4096];
                    match io.read(&mut chunk).await {
                        Ok(0) | Err(_) => return Ok(Next::Done),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                in_mail = false;
                "250 Queued\r\n".into()
            }
            "QUIT" => {
                io.write_all(b"221 Bye\r\n").await?;
                return Ok(Next::Done);
            }
            _ => "500 Unknown command\r\n".into(),
        };
        io.write_all(reply.as_bytes()).await?;
    }
}

// ---------------------------------------------------------------- HTTPS for MTA-STS

/// Serves `/.well-known/mta-sts.txt` by Host: a status, a content type and
/// a body per host.
async fn start_https(
    config: Arc<rustls::ServerConfig>,
    sites: HashMap<String, (u16, &'static str, String)>,
) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sites = Arc::new(sites);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let config = config.clone();
            let sites = sites.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut chunk = [0u8; 2048];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).to_string();
                let host = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Host: "))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                let response = match sites.get(&host) {
                    Some((status, kind, body)) if *status == 200 => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    Some((status, _, location)) => format!(
                        "HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .into()
                    }
                };
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

// ---------------------------------------------------------------- running checks

async fn run(args: &[&str]) -> Report {
    let cli = Cli::try_parse_from(["ferry", "check"].iter().chain(args.iter()).copied()).unwrap();
    let Command::Check(args) = cli.command else {
        panic!("not a check command")
    };
    check::check(&args, &Progress::silent()).await.unwrap()
}

/// The status of check `id` (the first one), with the whole table in the
/// panic message when it is missing.
fn status(report: &Report, id: &str) -> Status {
    match report.find(id) {
        Some(result) => result.status,
        None => panic!("no {id} in\n{}", report.to_table()),
    }
}

fn expect(report: &Report, id: &str, want: Status) {
    let got = status(report, id);
    assert_eq!(
        got,
        want,
        "{id}: {:?}\n{}",
        report.find(id),
        report.to_table()
    );
}

fn no_failures(report: &Report) {
    let failed: Vec<_> = report
        .results
        .iter()
        .filter(|r| r.status == Status::Fail)
        .collect();
    assert!(
        failed.is_empty(),
        "failures: {failed:#?}\n{}",
        report.to_table()
    );
}

const FAST: [&str; 4] = ["--timeout", "2", "--greeting-timeout", "10"];

fn with_fast<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend_from_slice(&FAST);
    all
}

/// Runs the ferry binary (with the fast timeouts) off the reactor.
async fn ferry(args: &[&str], env: Option<(&str, &str)>) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    command.args(args);
    if args.first() == Some(&"check") && !args.contains(&"--help") {
        command.args(FAST);
    }
    if let Some((name, value)) = env {
        command.env(name, value);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

// ---------------------------------------------------------------- server checks

#[tokio::test]
async fn good_server_passes_every_server_check() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["mx.good.test"], false);
    let addr = start_smtp(Spec {
        tls: Some((leaf.chain_pem, leaf.key_pem)),
        ..Spec::default()
    })
    .await;
    let dns = TestDns::builder()
        .a("mx.good.test", Ipv4Addr::LOCALHOST)
        .start()
        .await
        .unwrap();
    let target = format!("mx.good.test:{}", addr.port());
    let dns_addr = dns.addr().to_string();
    let ca_path = ca.path();
    let ca_path = ca_path.to_str().unwrap();
    let report = run(&with_fast(&[
        &target,
        "--dns-server",
        &dns_addr,
        "--ca",
        ca_path,
        "--transcript",
    ]))
    .await;
    no_failures(&report);
    for id in [
        "connection.tcp",
        "connection.greeting",
        "tls.starttls",
        "tls.version",
        "tls.chain",
        "tls.name",
        "tls.expiry",
        "tls.key",
        "tls.legacy-versions",
        "tls.modern-reachable",
        "protocol.ehlo",
        "protocol.ehlo-after-tls",
        "protocol.noop",
        "protocol.rset",
        "protocol.unknown-command",
        "protocol.null-sender",
        "protocol.postmaster",
        "protocol.pipelining",
        "protocol.size-limit",
        "protocol.quit",
        "security.auth-plaintext",
        "security.vrfy",
        "security.expn",
        "security.open-relay",
        "security.bare-lf",
        "security.starttls-injection",
    ] {
        expect(&report, id, Status::Pass);
    }
    // No PTR for 127.0.0.1 in this zone.
    expect(&report, "connection.fcrdns", Status::Warn);
    expect(&report, "protocol.extensions", Status::Info);
    let extensions = &report.find("protocol.extensions").unwrap().evidence;
    assert!(
        extensions.starts_with("offered: PIPELINING SIZE 8BITMIME"),
        "{extensions}"
    );
    // A name without addresses is reported, and nothing else is tried.
    let missing = run(&with_fast(&[
        "nowhere.good.test:25",
        "--dns-server",
        &dns_addr,
    ]))
    .await;
    expect(&missing, "connection.resolve", Status::Fail);
    assert_eq!(missing.results.len(), 1);
    assert_eq!(report.exit_code(), 0);
    // The transcript has both directions and never a DATA command.
    let lines: Vec<&String> = report.transcripts.iter().flat_map(|(_, l)| l).collect();
    assert!(lines.iter().any(|l| l.starts_with("C: EHLO")));
    assert!(lines.iter().any(|l| l.starts_with("S: 220")));
    assert!(!lines.iter().any(|l| l.trim() == "C: DATA"));
}

#[tokio::test]
async fn implicit_tls_is_checked_from_the_first_byte() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["mx.good.test"], false);
    let addr = start_smtp(Spec {
        tls: Some((leaf.chain_pem, leaf.key_pem)),
        implicit: true,
        ..Spec::default()
    })
    .await;
    let ca_path = ca.path();
    let report = run(&with_fast(&[
        &addr.to_string(),
        "--implicit-tls",
        "--ca",
        ca_path.to_str().unwrap(),
    ]))
    .await;
    no_failures(&report);
    for id in [
        "tls.implicit",
        "tls.chain",
        "tls.legacy-versions",
        "protocol.ehlo",
        "security.auth-plaintext",
    ] {
        expect(&report, id, Status::Pass);
    }
    assert!(report.find("tls.starttls").is_none());
    assert!(report.find("security.starttls-injection").is_none());
    // Plain SMTP on that port is not TLS.
    let plain = start_smtp(Spec::default()).await;
    let report = run(&with_fast(&[&plain.to_string(), "--implicit-tls"])).await;
    expect(&report, "tls.implicit", Status::Fail);
}

#[tokio::test]
async fn no_starttls_is_reported() {
    let addr = start_smtp(Spec::default()).await;
    let report = run(&with_fast(&[&addr.to_string()])).await;
    expect(&report, "tls.starttls", Status::Warn);
    expect(&report, "tls.legacy-versions", Status::Skip);
    expect(&report, "security.starttls-injection", Status::Skip);
    expect(&report, "protocol.null-sender", Status::Pass);
}

#[tokio::test]
async fn expired_certificate_fails_expiry_and_warns_chain() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["mx.good.test"], true);
    let addr = start_smtp(Spec {
        tls: Some((leaf.chain_pem, leaf.key_pem)),
        ..Spec::default()
    })
    .await;
    let ca_path = ca.path();
    let report = run(&with_fast(&[
        &addr.to_string(),
        "--ca",
        ca_path.to_str().unwrap(),
    ]))
    .await;
    expect(&report, "tls.expiry", Status::Fail);
    // Opportunistic port 25 semantics: a warning, mail still flows.
    expect(&report, "tls.chain", Status::Warn);
    assert!(
        report
            .find("tls.chain")
            .unwrap()
            .evidence
            .to_lowercase()
            .contains("expired")
    );
    assert_eq!(report.exit_code(), 1);
}

#[tokio::test]
async fn wrong_name_and_untrusted_chain_are_warnings_when_opportunistic() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["other.test"], false);
    let addr = start_smtp(Spec {
        tls: Some((leaf.chain_pem, leaf.key_pem)),
        ..Spec::default()
    })
    .await;
    let dns = TestDns::builder()
        .a("mx.good.test", Ipv4Addr::LOCALHOST)
        .start()
        .await
        .unwrap();
    let target = format!("mx.good.test:{}", addr.port());
    let dns_addr = dns.addr().to_string();
    // Without --ca the test CA is unknown: untrusted chain.
    let report = run(&with_fast(&[&target, "--dns-server", &dns_addr])).await;
    expect(&report, "tls.name", Status::Warn);
    expect(&report, "tls.chain", Status::Warn);
    assert!(
        report
            .find("tls.chain")
            .unwrap()
            .evidence
            .contains("UnknownIssuer")
    );
}

#[tokio::test]
async fn open_relay_vrfy_and_plaintext_auth_are_reported() {
    let addr = start_smtp(Spec {
        open_relay: true,
        vrfy_confirms: true,
        insecure_auth: true,
        user: Some(("alice", "secret")),
        ..Spec::default()
    })
    .await;
    let report = run(&with_fast(&[&addr.to_string()])).await;
    expect(&report, "security.open-relay", Status::Warn);
    assert!(
        report
            .find("security.open-relay")
            .unwrap()
            .evidence
            .contains("possibly")
    );
    expect(&report, "security.vrfy", Status::Warn);
    expect(&report, "security.auth-plaintext", Status::Fail);
}

#[tokio::test]
async fn authenticated_submission_over_tls_only_with_masked_transcript() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["mx.good.test"], false);
    let addr = start_smtp(Spec {
        tls: Some((leaf.chain_pem, leaf.key_pem)),
        user: Some(("alice@good.test", "secret-password")),
        ..Spec::default()
    })
    .await;
    let ca_path = ca.path();
    // The password reaches the child process through its environment.
    let output = ferry(
        &[
            "check",
            &addr.to_string(),
            "--json",
            "--transcript",
            "--user",
            "alice@good.test",
            "--password-env",
            "FERRY_CHECK_TEST_PASSWORD",
            "--ca",
            ca_path.to_str().unwrap(),
        ],
        Some(("FERRY_CHECK_TEST_PASSWORD", "secret-password")),
    )
    .await;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let result = |id: &str| {
        json["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {id} in {json:#}"))
    };
    assert_eq!(result("security.auth-after-tls")["status"], "pass");
    assert_eq!(result("security.auth-credentials")["status"], "pass");
    assert_eq!(result("security.auth-foreign-sender")["status"], "warn");
    assert_eq!(result("security.open-relay")["status"], "skip");
    let text = json["transcripts"].to_string();
    assert!(text.contains("AUTH PLAIN ***\""), "{text}");
    assert!(!text.contains("secret-password"));
    use base64::Engine as _;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode("\0alice@good.test\0secret-password");
    assert!(!text.contains(&encoded));
    assert_eq!(output.status.code(), Some(0), "{json:#}");
}

#[tokio::test]
async fn wrong_password_fails_and_sets_exit_status() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["mx.good.test"], false);
    let addr = start_smtp(Spec {
        tls: Some((leaf.chain_pem, leaf.key_pem)),
        user: Some(("alice", "right")),
        ..Spec::default()
    })
    .await;
    let ca_path = ca.path();
    let output = ferry(
        &[
            "check",
            &addr.to_string(),
            "--user",
            "alice",
            "--password-env",
            "FERRY_CHECK_WRONG",
            "--ca",
            ca_path.to_str().unwrap(),
        ],
        Some(("FERRY_CHECK_WRONG", "wrong")),
    )
    .await;
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("fail  security.auth-credentials"), "{table}");
    assert_eq!(output.status.code(), Some(1));
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [
        vec!["check", "127.0.0.1:25", "--intrusive"],
        vec!["check", "not a host:25"],
        vec!["check", "127.0.0.1:25", "--user", "u"],
    ] {
        let output = ferry(&args, None).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
    let help = ferry(&["check", "--help"], None).await;
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("DATA is never sent"), "{help}");
    assert!(help.contains("<LF>.<LF>"), "{help}");
}

#[tokio::test]
async fn starttls_injection_is_detected() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["raw.test"], false);
    let addr = start_script(Script {
        inject: true,
        tls: Some(rustls_server(&leaf)),
        ..Script::default()
    })
    .await;
    let report = run(&with_fast(&[&addr.to_string()])).await;
    expect(&report, "security.starttls-injection", Status::Fail);
    let safe = start_script(Script {
        tls: Some(rustls_server(&leaf)),
        ..Script::default()
    })
    .await;
    let report = run(&with_fast(&[&safe.to_string()])).await;
    expect(&report, "security.starttls-injection", Status::Pass);
}

#[tokio::test]
async fn bare_lf_line_ends_are_detected() {
    let addr = start_script(Script {
        lf_lines: true,
        ..Script::default()
    })
    .await;
    let report = run(&with_fast(&[&addr.to_string()])).await;
    expect(&report, "security.bare-lf", Status::Warn);
    let strict = start_script(Script::default()).await;
    let report = run(&with_fast(&[&strict.to_string()])).await;
    expect(&report, "security.bare-lf", Status::Pass);
}

#[tokio::test]
async fn legacy_only_tls_is_reachable_only_by_legacy_senders() {
    let addr = start_script(Script {
        legacy_only: true,
        ..Script::default()
    })
    .await;
    let report = run(&with_fast(&[&addr.to_string()])).await;
    expect(&report, "tls.starttls", Status::Fail);
    expect(&report, "tls.legacy-versions", Status::Warn);
    assert!(
        report
            .find("tls.legacy-versions")
            .unwrap()
            .evidence
            .contains("TLS 1.0 and TLS 1.1")
    );
    expect(&report, "tls.modern-reachable", Status::Fail);
    // The plaintext checks still ran, on a fresh connection.
    expect(&report, "protocol.noop", Status::Pass);
}

#[tokio::test]
async fn slow_greeting_within_five_minutes_is_not_a_failure() {
    let addr = start_script(Script {
        greeting_delay: Duration::from_millis(2500),
        ..Script::default()
    })
    .await;
    // The step timeout (1 s) is shorter than the delay; the greeting
    // timeout is not.
    let report = run(&[
        &addr.to_string(),
        "--timeout",
        "1",
        "--greeting-timeout",
        "10",
    ])
    .await;
    expect(&report, "connection.greeting", Status::Pass);
    assert!(
        report
            .find("connection.greeting")
            .unwrap()
            .evidence
            .contains("after 2")
    );
}

#[tokio::test]
async fn unreachable_server_fails_with_the_port_25_hint_only_on_25() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let report = run(&with_fast(&[&format!("127.0.0.1:{port}")])).await;
    expect(&report, "connection.tcp", Status::Fail);
    assert_eq!(report.results.len(), 1);
    assert!(
        !report
            .find("connection.tcp")
            .unwrap()
            .fix
            .as_ref()
            .unwrap()
            .contains("port 25")
    );
}

#[tokio::test]
async fn intrusive_smuggling_probes_find_lf_dot_lf() {
    let addr = start_script(Script {
        smuggle: true,
        ..Script::default()
    })
    .await;
    let report = run(&with_fast(&[
        &addr.to_string(),
        "--intrusive",
        "--rcpt",
        "me@raw.test",
    ]))
    .await;
    let smuggling: Vec<_> = report
        .results
        .iter()
        .filter(|r| r.id == "security.smuggling")
        .collect();
    assert_eq!(smuggling.len(), 5, "{}", report.to_table());
    let failed: Vec<_> = smuggling
        .iter()
        .filter(|r| r.status == Status::Fail)
        .collect();
    // <LF>.<LF> ends DATA there, and so does <CRLF>.<LF>, which holds it.
    let names: Vec<&str> = failed
        .iter()
        .map(|r| r.evidence.split('>').next().unwrap())
        .collect();
    assert_eq!(names, ["<LF.LF", "<CRLF.LF"], "{}", report.to_table());
    // smtp-server ends DATA only at <CRLF>.<CRLF>.
    let safe = start_smtp(Spec::default()).await;
    let report = run(&with_fast(&[
        &safe.to_string(),
        "--intrusive",
        "--rcpt",
        "me@good.test",
    ]))
    .await;
    let results: Vec<_> = report
        .results
        .iter()
        .filter(|r| r.id == "security.smuggling")
        .collect();
    assert_eq!(results.len(), 5);
    assert!(
        results.iter().all(|r| r.status == Status::Pass),
        "{}",
        report.to_table()
    );
}

// ---------------------------------------------------------------- domain checks

struct Domain {
    _dns: TestDns,
    dns_addr: String,
    smtp_port: u16,
    https_port: u16,
    ca: Ca,
}

impl Domain {
    async fn check(&self, domain: &str, extra: &[&str]) -> Report {
        self.check_trusting(domain, extra, true).await
    }

    /// `with_anchor` false: the IANA root keys only, which do not lead to
    /// the test zones.
    async fn check_trusting(&self, domain: &str, extra: &[&str], with_anchor: bool) -> Report {
        let smtp_port = self.smtp_port.to_string();
        let https_port = self.https_port.to_string();
        let ca = self.ca.path();
        let anchors = self.ca.dir.path().join("anchors");
        let mut args = vec![domain];
        if with_anchor {
            args.extend(["--dnssec-trust-anchor", anchors.to_str().unwrap()]);
        }
        args.extend([
            "--dns-server",
            &self.dns_addr,
            "--test-mx-port",
            &smtp_port,
            "--test-mta-sts-port",
            &https_port,
            "--ca",
            ca.to_str().unwrap(),
        ]);
        args.extend_from_slice(extra);
        run(&with_fast(&args)).await
    }
}

/// One DNS server with every scenario's zone, one SMTP server on
/// 127.0.0.1 with a certificate for mx.good.test, and one HTTPS server for
/// the MTA-STS policies.
async fn domains() -> Domain {
    let ca = Ca::new();
    let leaf = ca.leaf(&["mx.good.test"], false);
    let tlsa = spki_sha256(&leaf.der);
    let smtp = start_smtp(Spec {
        tls: Some((leaf.chain_pem.clone(), leaf.key_pem.clone())),
        ..Spec::default()
    })
    .await;
    let web_leaf = ca.leaf(
        &[
            "mta-sts.good.test",
            "mta-sts.sts.test",
            "mta-sts.redirect.test",
            "mta-sts.ctype.test",
        ],
        false,
    );
    let enforce =
        |mx: &str| format!("version: STSv1\r\nmode: enforce\r\nmx: {mx}\r\nmax_age: 604800\r\n");
    let mut sites = HashMap::new();
    sites.insert(
        "mta-sts.good.test".to_owned(),
        (200, "text/plain", enforce("mx.good.test")),
    );
    sites.insert(
        "mta-sts.sts.test".to_owned(),
        (200, "text/plain", enforce("other.sts.test")),
    );
    sites.insert(
        "mta-sts.redirect.test".to_owned(),
        (301, "", "https://elsewhere.test/".to_owned()),
    );
    sites.insert(
        "mta-sts.ctype.test".to_owned(),
        (200, "text/html", enforce("mx.good.test")),
    );
    let https_port = start_https(rustls_server(&web_leaf), sites).await;
    let lo = Ipv4Addr::LOCALHOST;
    let many_includes: String = (0..11).map(|i| format!(" include:i{i}.spf.test")).collect();
    let mut builder = TestDns::builder()
        // good.test: everything right.
        .mx("good.test", 10, "mx.good.test")
        .a("mx.good.test", lo)
        .txt("good.test", "v=spf1 ip4:127.0.0.1 -all")
        .txt(
            "_dmarc.good.test",
            "v=DMARC1; p=reject; rua=mailto:dmarc@good.test",
        )
        .txt(
            "_smtp._tls.good.test",
            "v=TLSRPTv1; rua=mailto:tls@good.test",
        )
        .txt("_mta-sts.good.test", "v=STSv1; id=20260101")
        .a("mta-sts.good.test", lo)
        .txt(
            "sel._domainkey.good.test",
            &format!("v=DKIM1; k=rsa; p={}", RSA_2048.trim()),
        )
        .txt(
            "old._domainkey.keys.test",
            &format!("v=DKIM1; k=rsa; p={}", RSA_1024.trim()),
        )
        .txt("gone._domainkey.keys.test", "v=DKIM1; p=")
        .tlsa("_25._tcp.mx.good.test", 3, 1, 1, &tlsa)
        .signed("good.test")
        .record(
            "1.0.0.127.in-addr.arpa",
            test_dns::RData::PTR(hickory_proto::rr::rdata::PTR(
                "mx.good.test.".parse().unwrap(),
            )),
        )
        // mx.closed.test: nothing listens there, so the DNS-only scenarios
        // spend no time on server checks.
        .a("mx.closed.test", Ipv4Addr::new(127, 0, 0, 2))
        .mx("keys.test", 10, "mx.closed.test")
        // spf.test: two SPF records; spf2.test: +all, ptr, too many look-ups.
        .mx("spf.test", 10, "mx.closed.test")
        .txt("spf.test", "v=spf1 -all")
        .txt("spf.test", "v=spf1 mx -all")
        .mx("spf2.test", 10, "mx.closed.test")
        .txt("spf2.test", &format!("v=spf1 ptr{many_includes} +all"))
        // none.test: DMARC monitoring only, and a partial pct.
        .mx("none.test", 10, "mx.closed.test")
        .txt("_dmarc.none.test", "v=DMARC1; p=none; pct=50")
        // null.test: null MX; mixed.test: null MX with another.
        .null_mx("null.test")
        .null_mx("mixed.test")
        .mx("mixed.test", 10, "mx.closed.test")
        // implicit.test: no MX, an address.
        .a("implicit.test", lo)
        // mxbad.test: an alias, an IP literal, an unresolvable host.
        .mx("mxbad.test", 10, "alias.mxbad.test")
        .cname("alias.mxbad.test", "mx.good.test")
        .mx("mxbad.test", 20, "192.0.2.1")
        .mx("mxbad.test", 30, "gone.mxbad.test")
        // sts.test: MTA-STS enforce whose policy names another MX, and an MX
        // whose certificate (mx.good.test) does not match its name.
        .mx("sts.test", 10, "mx.sts.test")
        .a("mx.sts.test", lo)
        .txt("_mta-sts.sts.test", "v=STSv1; id=1")
        .a("mta-sts.sts.test", lo)
        .mx("redirect.test", 10, "mx.closed.test")
        .txt("_mta-sts.redirect.test", "v=STSv1; id=1")
        .a("mta-sts.redirect.test", lo)
        .mx("badcert.test", 10, "mx.closed.test")
        .txt("_mta-sts.badcert.test", "v=STSv1; id=1")
        .a("mta-sts.badcert.test", lo)
        .mx("ctype.test", 10, "mx.closed.test")
        .txt("_mta-sts.ctype.test", "v=STSv1; id=1")
        .a("mta-sts.ctype.test", lo)
        // danebad.test: validated TLSA that does not match; daneplain.test:
        // TLSA without DNSSEC.
        .mx("danebad.test", 10, "mx.danebad.test")
        .a("mx.danebad.test", lo)
        .tlsa("_25._tcp.mx.danebad.test", 3, 1, 1, &[0u8; 32])
        .signed("danebad.test")
        .mx("daneplain.test", 10, "mx.daneplain.test")
        .a("mx.daneplain.test", lo)
        .tlsa("_25._tcp.mx.daneplain.test", 3, 1, 1, &tlsa);
    for i in 0..11 {
        builder = builder.txt(&format!("i{i}.spf.test"), "v=spf1 ip4:192.0.2.1 -all");
    }
    let dns = builder.start().await.unwrap();
    let anchors = ca.dir.path().join("anchors");
    std::fs::write(&anchors, dns.trust_anchors()).unwrap();
    Domain {
        dns_addr: dns.addr().to_string(),
        _dns: dns,
        smtp_port: smtp.port(),
        https_port,
        ca,
    }
}

#[tokio::test]
async fn good_domain_passes_everything() {
    let d = domains().await;
    let report = d.check("good.test", &["--dkim-selector", "sel"]).await;
    no_failures(&report);
    for id in [
        "dns.mx",
        "dns.mx-host",
        "dns.spf",
        "dns.spf-lookups",
        "dns.dmarc",
        "dns.dmarc-policy",
        "dns.dkim",
        "dns.tls-rpt",
        "dns.mta-sts",
        "dns.mta-sts-policy",
        "dns.mta-sts-mx",
        "dns.mta-sts-enforce",
        "dns.dane",
        "tls.dane",
        "connection.fcrdns",
        "tls.chain",
        "tls.name",
        "protocol.postmaster",
        "security.open-relay",
    ] {
        expect(&report, id, Status::Pass);
    }
    assert!(
        report
            .find("protocol.postmaster")
            .unwrap()
            .evidence
            .contains("postmaster@good.test")
    );
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test]
async fn dkim_key_sizes_and_revoked_keys() {
    let d = domains().await;
    let report = d.check("keys.test", &["--dkim-selector", "old"]).await;
    expect(&report, "dns.dkim", Status::Warn);
    let report = d.check("keys.test", &["--dkim-selector", "gone"]).await;
    expect(&report, "dns.dkim", Status::Fail);
    let report = d.check("keys.test", &["--dkim-selector", "missing"]).await;
    expect(&report, "dns.dkim", Status::Fail);
}

#[tokio::test]
async fn broken_spf_and_weak_dmarc() {
    let d = domains().await;
    let report = d.check("spf.test", &[]).await;
    expect(&report, "dns.spf", Status::Fail);
    assert!(
        report
            .find("dns.spf")
            .unwrap()
            .evidence
            .contains("2 SPF records")
    );
    expect(&report, "dns.dmarc", Status::Warn);
    let report = d.check("spf2.test", &[]).await;
    expect(&report, "dns.spf-lookups", Status::Fail);
    expect(&report, "dns.spf-all", Status::Fail);
    expect(&report, "dns.spf-ptr", Status::Warn);
    let report = d.check("none.test", &[]).await;
    expect(&report, "dns.dmarc", Status::Pass);
    expect(&report, "dns.dmarc-policy", Status::Warn);
    expect(&report, "dns.dmarc-pct", Status::Warn);
}

#[tokio::test]
async fn null_mx_alone_mixed_and_implicit_mx() {
    let d = domains().await;
    let report = d.check("null.test", &[]).await;
    expect(&report, "dns.null-mx", Status::Info);
    assert!(
        report.find("connection.tcp").is_none(),
        "no server checks for a null MX"
    );
    let report = d.check("mixed.test", &[]).await;
    expect(&report, "dns.null-mx", Status::Fail);
    let report = d.check("implicit.test", &[]).await;
    expect(&report, "dns.mx", Status::Warn);
    expect(&report, "connection.tcp", Status::Pass);
    let report = d.check("nothing.test", &[]).await;
    expect(&report, "dns.mx", Status::Fail);
}

#[tokio::test]
async fn mx_pointing_at_cname_ip_literal_or_nothing() {
    let d = domains().await;
    let report = d.check("mxbad.test", &[]).await;
    let hosts: Vec<_> = report
        .results
        .iter()
        .filter(|r| r.id == "dns.mx-host")
        .collect();
    let by_target = |t: &str, s: Status| hosts.iter().any(|r| r.target == t && r.status == s);
    assert!(
        by_target("alias.mxbad.test", Status::Warn),
        "{}",
        report.to_table()
    );
    assert!(
        by_target("192.0.2.1", Status::Fail),
        "{}",
        report.to_table()
    );
    assert!(
        by_target("gone.mxbad.test", Status::Fail),
        "{}",
        report.to_table()
    );
    let mx = report.find("dns.mx").unwrap();
    assert!(
        mx.evidence
            .contains("10 alias.mxbad.test, 20 192.0.2.1, 30 gone.mxbad.test"),
        "{mx:?}"
    );
}

#[tokio::test]
async fn mta_sts_enforce_with_a_mismatching_mx_breaks_delivery() {
    let d = domains().await;
    let report = d.check("sts.test", &[]).await;
    expect(&report, "dns.mta-sts-policy", Status::Pass);
    expect(&report, "dns.mta-sts-mx", Status::Fail);
    expect(&report, "dns.mta-sts-enforce", Status::Fail);
    // Under enforce the misnamed certificate is a failure, not a warning.
    expect(&report, "tls.name", Status::Fail);
    let report = d.check("redirect.test", &[]).await;
    expect(&report, "dns.mta-sts-policy", Status::Fail);
    assert!(
        report
            .find("dns.mta-sts-policy")
            .unwrap()
            .evidence
            .contains("redirect")
    );
    let report = d.check("ctype.test", &[]).await;
    expect(&report, "dns.mta-sts-policy", Status::Fail);
    assert!(
        report
            .find("dns.mta-sts-policy")
            .unwrap()
            .evidence
            .contains("text/html")
    );
}

#[tokio::test]
async fn dane_tlsa_matching_not_matching_and_unsigned() {
    let d = domains().await;
    let report = d.check("danebad.test", &[]).await;
    expect(&report, "dns.dane", Status::Pass);
    expect(&report, "tls.dane", Status::Fail);
    let report = d.check("daneplain.test", &[]).await;
    expect(&report, "dns.dane", Status::Warn);
    assert!(report.find("tls.dane").is_none());
    // The signed zone, but no trust anchor that leads to it: the same TLSA
    // records are not validated.
    let report = d.check_trusting("good.test", &[], false).await;
    expect(&report, "dns.dane", Status::Warn);
    assert!(
        report
            .find("dns.dane")
            .unwrap()
            .evidence
            .contains("not DNSSEC-validated")
    );
}
