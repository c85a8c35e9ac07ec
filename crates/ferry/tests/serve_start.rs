//! What `ferry serve` checks at start (warnings for risky settings, clear
//! refusals for settings it cannot honour), and limits set from its flags.

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

/// Starts `ferry serve --no-tls` with `extra`; returns the child, its
/// address and the Maildir's temporary directory.
fn serve(extra: &[&str]) -> (std::process::Child, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(FERRY)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--hostname",
            "mx.test",
            "--no-tls",
        ])
        .arg("--maildir")
        .arg(dir.path().join("mail"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("no `listening on` line").unwrap();
        if let Some(rest) = line.strip_prefix("listening on ") {
            break rest.to_owned();
        }
    };
    (child, addr, dir)
}

fn read_reply(reader: &mut impl BufRead) -> String {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            return reply;
        }
        reply.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return reply;
        }
    }
}

#[test]
fn mail_is_refused_with_452_when_the_disk_is_short_of_min_free_space() {
    use std::io::Write;
    let (mut child, addr, _dir) = serve(&["--min-free-space", "18446744073709551615"]);
    let stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    assert!(read_reply(&mut reader).starts_with("220 "));
    writer.write_all(b"EHLO client.test\r\n").unwrap();
    assert!(read_reply(&mut reader).starts_with("250"));
    writer.write_all(b"MAIL FROM:<a@example.com>\r\n").unwrap();
    let reply = read_reply(&mut reader);
    assert!(reply.starts_with("452 4.3.1"), "{reply}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_session_limit_is_set_from_the_command_line() {
    let (mut child, addr, _dir) = serve(&["--session-timeout", "1"]);
    let stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    let mut reader = BufReader::new(stream);
    assert!(read_reply(&mut reader).starts_with("220 "));
    let reply = read_reply(&mut reader);
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let _ = child.kill();
    let _ = child.wait();
}
