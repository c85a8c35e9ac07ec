//! What `ferry serve` checks at start: warnings for risky settings, and
//! clear refusals for settings it cannot honour.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Starts `ferry serve` with `extra`, waits for `listening on`, stops it
/// and returns what it wrote on standard error.
fn start_and_stop(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(FERRY)
        .args(["serve", "--listen", "127.0.0.1:0", "--hostname", "mx.test"])
        .arg("--maildir")
        .arg(dir.path().join("mail"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("ferry serve printed no `listening on` line");
        if line.starts_with("listening on ") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

#[test]
fn risky_proxy_networks_are_warned_about() {
    let stderr = start_and_stop(&[
        "--no-tls",
        "--proxy-protocol",
        "0.0.0.0/0",
        "--proxy-protocol",
        "::/0",
        "--proxy-protocol",
        "127.0.0.1/8",
    ]);
    assert!(
        stderr.contains("warning: --proxy-protocol 0.0.0.0/0 trusts every source"),
        "{stderr}"
    );
    assert!(stderr.contains("warning: --proxy-protocol ::/0 trusts every source"));
    assert!(stderr.contains("127.0.0.1/8 has host bits set: it trusts all of 127.0.0.0/8"));
}

#[test]
fn an_expired_certificate_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["mx.test".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let stderr = start_and_stop(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    assert!(stderr.contains("warning: --tls-cert"), "{stderr}");
    assert!(stderr.contains("the certificate expired"), "{stderr}");
    // A valid certificate gives no such warning.
    let stderr = start_and_stop(&[]);
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn max_connections_beyond_the_file_descriptor_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(FERRY)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-tls"])
        .arg("--maildir")
        .arg(dir.path().join("mail"))
        .args(["--max-connections", "10000000000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--max-connections 10000000000 needs about 20000000064 file descriptors"),
        "{stderr}"
    );
    assert!(stderr.contains("ulimit -n"), "{stderr}");
}
