//! `ferry relay --webhook https://…` against a local HTTPS endpoint whose
//! certificate a CA made at test time signed: with `--webhook-ca` or
//! `SSL_CERT_FILE` naming that CA the events arrive; without either the
//! certificate is not trusted and nothing is sent.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CA, and a server configuration for 127.0.0.1 signed by it; the CA's
/// PEM is written to `ca_path`.
fn pki(ca_path: &Path) -> Arc<rustls::ServerConfig> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "webhook test CA");
    let ca = params.self_signed(&ca_key).unwrap();
    std::fs::write(ca_path, ca.pem()).unwrap();
    let issuer = rcgen::Issuer::from_params(&params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server.der().clone()],
            rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    Arc::new(config)
}

/// What the endpoint saw: a request (its path and body) or a failed
/// handshake.
#[derive(Debug)]
enum Seen {
    Request { path: String, body: String },
    Handshake(String),
}

/// Serves HTTPS on a loopback port: every request is answered 204 and
/// reported.
async fn endpoint(
    config: Arc<rustls::ServerConfig>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(err) => {
                        let _ = tx.send(Seen::Handshake(err.to_string()));
                        return;
                    }
                };
                let mut raw = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    let Ok(n) = tls.read(&mut buffer).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    raw.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&raw).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() < length {
                        continue;
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    assert!(head.starts_with("POST "), "{head}");
                    let _ = tx.send(Seen::Request {
                        path,
                        body: body[..length].to_owned(),
                    });
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                    return;
                }
            });
        }
    });
    (addr, rx)
}

fn relay(
    webhook: &str,
    ca: Option<&Path>,
    cert_file: Option<&Path>,
    spool: &Path,
) -> (Relay, SocketAddr) {
    let mut command = Command::new(FERRY);
    command
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    if let Some(file) = cert_file {
        command.env("SSL_CERT_FILE", file);
    }
    command
        .args(["relay", "--listen", "127.0.0.1:0", "--no-tls"])
        .args(["--hostname", "relay.test", "--spool"])
        .arg(spool)
        .args(["--route", "dest.test=127.0.0.1:9", "--retry-min", "1h"])
        .args(["--webhook", webhook]);
    if let Some(ca) = ca {
        command.arg("--webhook-ca").arg(ca);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let smtp = loop {
        let line = lines
            .next()
            .expect("ferry relay printed its address")
            .unwrap();
        if let Some(rest) = line.strip_prefix("listening on ") {
            break rest.split(' ').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Relay(child), smtp)
}

fn send(to: SocketAddr) {
    let status = Command::new(FERRY)
        .args(["send", "--server", &to.to_string(), "--tls", "none"])
        .args(["--timeout", "20", "--helo", "client.test"])
        .args(["--from", "alice@sender.test", "--to", "bob@dest.test"])
        .args(["--subject", "hooked", "--body", "body"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Sends a message through a relay whose webhook is the endpoint, with
/// `--webhook-ca` or `SSL_CERT_FILE` naming the test CA, and checks its
/// accept event arrives.
async fn accept_event_arrives(with_option: bool) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let (addr, mut seen) = endpoint(pki(&ca)).await;
    let url = format!("https://{addr}/events");
    let (option, env) = if with_option {
        (Some(ca.as_path()), None)
    } else {
        (None, Some(ca.as_path()))
    };
    let (_relay, smtp) = relay(&url, option, env, &dir.path().join("spool"));
    tokio::task::spawn_blocking(move || send(smtp))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while !kinds.iter().any(|k| k == "accept") {
        let next = tokio::time::timeout(Duration::from_secs(20), seen.recv())
            .await
            .expect("events reached the webhook")
            .unwrap();
        let Seen::Request { path, body } = next else {
            panic!("{next:?}");
        };
        assert_eq!(path, "/events");
        for line in body.lines() {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            kinds.push(event["event"].as_str().unwrap().to_owned());
            if event["event"] == "accept" {
                assert_eq!(event["sender"], "alice@sender.test");
                assert_eq!(event["recipients"][0], "bob@dest.test");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_an_https_webhook_trusted_with_webhook_ca() {
    accept_event_arrives(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_an_https_webhook_trusted_with_ssl_cert_file() {
    accept_event_arrives(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_webhook_certificate_gets_no_events() {
    let dir = tempfile::tempdir().unwrap();
    // The CA is made but not given to the relay: neither the system's
    // roots nor the webpki roots know it.
    let (addr, mut seen) = endpoint(pki(&dir.path().join("ca.pem"))).await;
    let url = format!("https://{addr}/events");
    let (_relay, smtp) = relay(&url, None, None, &dir.path().join("spool"));
    tokio::task::spawn_blocking(move || send(smtp))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(20), seen.recv())
        .await
        .expect("the relay tried the webhook")
        .unwrap();
    // The relay refused the certificate: its alert names the unknown CA.
    assert!(
        matches!(&next, Seen::Handshake(reason) if reason.contains("UnknownCA")),
        "an untrusted certificate must fail the handshake: {next:?}"
    );
}
