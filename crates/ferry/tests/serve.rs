//! `ferry serve` and `ferry send` / `ferry bench` as separate processes on
//! loopback, checking the Maildir byte for byte.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A running `ferry serve`, stopped with SIGTERM when dropped.
struct Serve {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    lines: mpsc::Receiver<String>,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        Self::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// Serves into `dir/mail`.
    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Serve {
        let mut child = Command::new(FERRY)
            .args(["serve", "--listen", "127.0.0.1:0", "--hostname", "mx.test"])
            .arg("--maildir")
            .arg(dir.path().join("mail"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addr = None;
        while addr.is_none() {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .expect("ferry serve printed no `listening on` line");
            if let Some(rest) = line.strip_prefix("listening on ") {
                addr = Some(rest.split(' ').next().unwrap().parse().unwrap());
            }
        }
        Serve {
            child,
            addr: addr.unwrap(),
            dir,
            lines,
        }
    }

    fn maildir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    fn cert(&self) -> PathBuf {
        self.maildir().join("ferry-cert.pem")
    }

    fn messages(&self) -> Vec<Vec<u8>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.maildir().join("new"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("ferry serve did not stop on SIGTERM");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn send(server: &Serve, extra: &[&str]) -> Output {
    Command::new(FERRY)
        .args([
            "send",
            "--server",
            &server.addr.to_string(),
            "--timeout",
            "20",
        ])
        .args(["--helo", "client.test"])
        .args(extra)
        .output()
        .unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {} / {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Splits a stored file into its trace header block (Return-Path,
/// Delivered-To, the folded Received field) and the message.
fn split_stored<'a>(stored: &'a [u8], message: &[u8]) -> &'a str {
    assert!(
        stored.ends_with(message),
        "stored message does not end with the sent bytes:\n{}",
        String::from_utf8_lossy(stored)
    );
    std::str::from_utf8(&stored[..stored.len() - message.len()]).unwrap()
}

fn write(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn raw_message_over_starttls_is_stored_byte_exact() {
    let mut serve = Serve::start(&[]);
    let raw = serve.dir.path().join("m.eml");
    // Bare LF line ends and a leading dot: the client normalises to CRLF
    // and dot-stuffs, the server unstuffs.
    let raw = write(&raw, b"Subject: raw\n\n.leading dot\nbody\n");
    let cert = serve.cert();
    let out = send(
        &serve,
        &[
            "--ca",
            cert.to_str().unwrap(),
            "--from",
            "alice@example.com",
            "--to",
            "bob@example.com",
            "--raw",
            &raw,
            "--json",
        ],
    );
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["exit"], 0);
    assert_eq!(report["error"], serde_json::Value::Null);
    assert_eq!(report["recipients"][0]["address"], "bob@example.com");
    assert_eq!(report["recipients"][0]["status"], "accepted");
    assert_eq!(report["reply"]["code"], 250);

    let messages = serve.messages();
    assert_eq!(messages.len(), 1);
    let sent = b"Subject: raw\r\n\r\n.leading dot\r\nbody\r\n";
    let head = split_stored(&messages[0], sent);
    let prefix = "Return-Path: <alice@example.com>\r\nDelivered-To: bob@example.com\r\n\
                  Received: from client.test ([127.0.0.1])\r\n\tby mx.test (ferry) with ESMTPS id ";
    assert!(head.starts_with(prefix), "{head}");
    assert!(head.contains("\r\n\tfor <bob@example.com>; "), "{head}");
    assert!(
        head.ends_with("\r\n") && head.matches("\r\n").count() == 5,
        "{head}"
    );

    assert!(serve.terminate().success());
    // The process has exited; its last lines may still be on their way
    // through the reader thread, which ends at end of file.
    let mut rest = Vec::new();
    while let Ok(line) = serve.lines.recv_timeout(Duration::from_secs(5)) {
        rest.push(line);
    }
    assert!(rest.iter().any(|l| l == "shut down"), "{rest:?}");
}

#[test]
fn composed_message_with_auth_and_attachment() {
    let serve = Serve::start(&["--user", "alice:s3cret", "--require-auth"]);
    let attachment = serve.dir.path().join("photo.png");
    let attachment = write(&attachment, &[0x89, b'P', b'N', b'G', 0, 1, 2, 3]);
    let cert = serve.cert();
    let cert = cert.to_str().unwrap();
    let base = [
        "--ca",
        cert,
        "--from",
        "Alice <alice@example.com>",
        "--to",
        "bob@example.com",
        "--cc",
        "carol@example.com",
        "--bcc",
        "dan@example.com",
        "--subject",
        "Hello",
        "--body",
        "Hi there",
        "--attach",
        &attachment,
        "--header",
        "X-Test: yes",
        "--user",
        "alice",
    ];
    let wrong = send(
        &serve,
        &[&base[..], &["--password", "nope", "--json"]].concat(),
    );
    let report = json(&wrong);
    assert_eq!(wrong.status.code(), Some(1), "{report}");
    assert_eq!(report["error"]["kind"], "auth");
    assert!(serve.messages().is_empty());

    let out = send(&serve, &[&base[..], &["--password", "s3cret"]].concat());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let messages = serve.messages();
    assert_eq!(messages.len(), 1);
    let stored = String::from_utf8(messages[0].clone()).unwrap();
    assert!(stored.starts_with(
        "Return-Path: <alice@example.com>\r\nDelivered-To: bob@example.com\r\n\
         Delivered-To: carol@example.com\r\nDelivered-To: dan@example.com\r\n\
         Received: from client.test ([127.0.0.1])\r\n\tby mx.test (ferry) with ESMTPSA id "
    ));
    for needle in [
        "\r\nFrom: \"Alice\" <alice@example.com>\r\n",
        "\r\nSubject: Hello\r\n",
        "\r\nX-Test: yes\r\n",
        "Content-Type: image/png",
        "Hi there",
    ] {
        assert!(stored.contains(needle), "{needle:?} missing in\n{stored}");
    }
    assert!(!stored.contains("Bcc") && stored.matches("dan@example.com").count() == 1);
}

#[test]
fn usage_errors_send_nothing() {
    let serve = Serve::start(&["--no-tls"]);
    let out = send(
        &serve,
        &[
            "--tls",
            "none",
            "--from",
            "a@example.com",
            "--to",
            "b@example.com\r\nRSET",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json(&out)["error"]["kind"], "usage");
    let out = send(&serve, &["--tls", "none", "--to", "b@example.com"]);
    assert_eq!(out.status.code(), Some(2), "missing --from is a clap error");
    assert!(serve.messages().is_empty());
}

#[test]
fn untrusted_certificate_is_deferred_not_bounced() {
    let serve = Serve::start(&[]);
    let out = send(
        &serve,
        &["--from", "a@example.com", "--to", "b@example.com", "--json"],
    );
    // As Postfix does: exit 75, so a caller retries instead of bouncing.
    assert_eq!(out.status.code(), Some(75));
    assert_eq!(json(&out)["error"]["kind"], "certificate");
    assert!(serve.messages().is_empty());
}

#[test]
fn bench_against_sink() {
    let serve = Serve::start(&["--sink", "--no-tls"]);
    let out = Command::new(FERRY)
        .args([
            "bench",
            "--server",
            &serve.addr.to_string(),
            "--tls",
            "none",
        ])
        .args([
            "--messages",
            "60",
            "--concurrency",
            "4",
            "--size",
            "2000",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    assert_eq!(report["messages"], 60);
    assert_eq!(report["delivered"], 60);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["bytes"], 120_000);
    assert!(report["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(!serve.maildir().join("new").exists() || serve.messages().is_empty());
}

#[test]
fn transcript_shows_the_conversation_with_auth_masked() {
    let serve = Serve::start(&["--user", "alice:s3cret", "--transcript"]);
    let cert = serve.cert();
    let out = send(
        &serve,
        &[
            "--ca",
            cert.to_str().unwrap(),
            "--user",
            "alice",
            "--password",
            "s3cret",
            "--from",
            "alice@example.com",
            "--to",
            "bob@example.com",
            "--subject",
            "Transcript",
            "--body",
            "hello",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut transcript = Vec::new();
    while let Ok(line) = serve.lines.recv_timeout(Duration::from_secs(5)) {
        let done = line.ends_with("C: QUIT");
        transcript.push(line);
        if done {
            break;
        }
    }
    let text = transcript.join("\n");
    for expected in [
        "C: EHLO client.test",
        "C: STARTTLS",
        "S: 235 2.7.0",
        "C: MAIL FROM:<alice@example.com>",
        "C: RCPT TO:<bob@example.com>",
        "C: QUIT",
    ] {
        assert!(text.contains(expected), "{expected:?} missing in\n{text}");
    }
    assert!(
        transcript.iter().all(|line| line.starts_with('[')),
        "{text}"
    );
    // Neither the password nor its base64 forms appear.
    for secret in ["s3cret", "czNjcmV0", "AGFsaWNlAHMzY3JldA=="] {
        assert!(!text.contains(secret), "{secret} leaked into\n{text}");
    }
}

/// The README's tour: `ferry bench` with more workers than the server's
/// per-client limit (20) gets no `421 Too many connections` failures: the
/// pool waits for its connections instead.
#[test]
fn bench_with_more_workers_than_the_per_ip_limit_has_no_failures() {
    let serve = Serve::start(&["--sink"]);
    let out = Command::new(FERRY)
        .args([
            "bench",
            "--server",
            &serve.addr.to_string(),
            "--tls",
            "none",
        ])
        .args(["--concurrency", "32", "--messages", "2000", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["delivered"], 2000, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    drop(serve);
}

/// RFC 5321's 100 recipients is the default, not a floor: a submission
/// service may allow five.
#[test]
fn serve_honours_a_recipient_limit_below_the_rfc_default() {
    use std::io::Write as _;
    let serve = Serve::start(&["--sink", "--no-tls", "--max-recipients", "5"]);
    let stream = std::net::TcpStream::connect(serve.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut reply = || {
        let mut last = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(!line.is_empty(), "connection closed");
            if line.as_bytes().get(3) != Some(&b'-') {
                last.push_str(&line);
                return last;
            }
        }
    };
    assert!(reply().starts_with("220 "));
    writer.write_all(b"EHLO client.test\r\n").unwrap();
    assert!(reply().starts_with("250 "));
    writer.write_all(b"MAIL FROM:<a@client.test>\r\n").unwrap();
    assert!(reply().starts_with("250 2.1.0"));
    for index in 0..6 {
        writer
            .write_all(format!("RCPT TO:<user{index}@mx.test>\r\n").as_bytes())
            .unwrap();
        let answer = reply();
        if index < 5 {
            assert!(answer.starts_with("250 2.1.5"), "{answer}");
        } else {
            assert_eq!(answer, "452 4.5.3 Too many recipients\r\n");
        }
    }
    writer.write_all(b"QUIT\r\n").unwrap();
    assert!(reply().starts_with("221"));
}

/// A tmpfs of `size` mounted on `at`, unmounted (lazily if still busy) on
/// drop.
struct SmallFileSystem(PathBuf);

impl SmallFileSystem {
    /// `Err` with the reason when it cannot be mounted here.
    fn mount(at: &Path, size: &str) -> Result<SmallFileSystem, String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("not root: cannot mount a tmpfs".to_owned());
        }
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed: {status}"));
        }
        Ok(SmallFileSystem(at.to_owned()))
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A plain SMTP conversation; returns the last line of each reply.
fn converse(addr: SocketAddr, steps: &[&[u8]]) -> Vec<String> {
    use std::io::Write;
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let read_reply = |reader: &mut BufReader<std::net::TcpStream>| loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "connection closed");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.trim_end().to_owned();
        }
    };
    let mut replies = vec![read_reply(&mut reader)];
    for step in steps {
        writer.write_all(step).unwrap();
        replies.push(read_reply(&mut reader));
    }
    replies
}

#[test]
fn a_full_file_system_gives_452_at_data_and_at_mail() {
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    let fs = match SmallFileSystem::mount(&mail, "1m") {
        Ok(fs) => fs,
        Err(reason) => {
            println!("skipped: {reason}");
            return;
        }
    };
    let filler = mail.join("filler");
    std::fs::write(&filler, vec![0u8; 800 * 1024]).unwrap();
    // Without the free-space check at MAIL the body meets ENOSPC.
    let mut serve = Serve::start_in(dir, &["--no-tls", "--min-free-space", "0"]);
    let body = format!("Subject: big\r\n\r\n{}\r\n.\r\n", "z".repeat(400 * 1024));
    let transaction: [&[u8]; 5] = [
        b"EHLO client.test\r\n",
        b"MAIL FROM:<a@example.com>\r\n",
        b"RCPT TO:<b@example.net>\r\n",
        b"DATA\r\n",
        body.as_bytes(),
    ];
    let replies = converse(serve.addr, &transaction);
    assert!(replies[4].starts_with("354"), "{replies:?}");
    assert!(replies[5].starts_with("452 4.3.1"), "{replies:?}");
    // Nothing half written is left for a reader of new/.
    assert!(serve.messages().is_empty());
    // Space freed: the same message is stored.
    std::fs::remove_file(&filler).unwrap();
    let replies = converse(serve.addr, &transaction);
    assert!(replies[5].starts_with("250"), "{replies:?}");
    assert_eq!(serve.messages().len(), 1);
    serve.terminate();
    let dir = std::mem::replace(&mut serve.dir, tempfile::tempdir().unwrap());
    drop(serve);
    // With the default check (1.5 times the size limit free) the same
    // file system is too small for any message: refused at MAIL.
    let mut serve = Serve::start_in(dir, &["--no-tls"]);
    let replies = converse(
        serve.addr,
        &[b"EHLO client.test\r\n", b"MAIL FROM:<a@example.com>\r\n"],
    );
    assert!(replies[2].starts_with("452 4.3.1"), "{replies:?}");
    serve.terminate();
    drop(fs);
}
