//! `ferry relay` as a process: relaying to a `ferry serve` downstream over a
//! route, local delivery into a Maildir, graceful shutdown with mail in the
//! queue, and delivery after a restart.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A running ferry process, killed when dropped.
struct Process {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Process {
    fn start(args: &[&str]) -> Process {
        let mut child = Command::new(FERRY)
            .args(args)
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
                .expect("no `listening on` line");
            if let Some(rest) = line.strip_prefix("listening on ") {
                addr = Some(rest.split(' ').next().unwrap().parse().unwrap());
            }
        }
        Process {
            child,
            addr: addr.unwrap(),
            lines,
        }
    }

    /// SIGTERM, then the exit status and what it printed after.
    fn terminate(&mut self) -> (std::process::ExitStatus, Vec<String>) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader thread ends at end of output: read up to there.
                let mut rest = Vec::new();
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    rest.push(line);
                }
                return (status, rest);
            }
            assert!(Instant::now() < deadline, "ferry did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn downstream(maildir: &Path) -> Process {
    Process::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-tls",
        "--hostname",
        "downstream.test",
        "--maildir",
        maildir.to_str().unwrap(),
    ])
}

fn relay(spool: &Path, extra: &[&str]) -> Process {
    let mut args = vec![
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--no-tls",
        "--hostname",
        "relay.test",
        "--spool",
        spool.to_str().unwrap(),
        "--durability",
        "os",
    ];
    args.extend_from_slice(extra);
    Process::start(&args)
}

fn send(to: SocketAddr, recipient: &str, subject: &str) -> Output {
    Command::new(FERRY)
        .args(["send", "--server", &to.to_string(), "--tls", "none"])
        .args(["--timeout", "20", "--helo", "client.test"])
        .args(["--from", "alice@sender.test", "--to", recipient])
        .args(["--subject", subject, "--body", "relayed body"])
        .output()
        .unwrap()
}

fn messages(maildir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths
        .iter()
        .map(|p| String::from_utf8(std::fs::read(p).unwrap()).unwrap())
        .collect()
}

fn wait_for_messages(maildir: &Path, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = messages(maildir);
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} messages arrived",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn relays_over_a_route_to_a_downstream_server() {
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("downstream");
    let down = downstream(&mail);
    let route = format!("remote.test={}", down.addr);
    let relay = relay(&dir.path().join("spool"), &["--route", &route]);
    let output = send(relay.addr, "bob@remote.test", "over the route");
    assert!(output.status.success(), "{output:?}");
    let stored = wait_for_messages(&mail, 1);
    let message = &stored[0];
    // The downstream's trace fields, then the relay's Received, then the
    // message as submitted.
    assert!(message.starts_with("Return-Path: <alice@sender.test>\r\nDelivered-To: bob@remote.test\r\nReceived: from relay.test"), "{message}");
    assert!(
        message.contains(
            "\r\nReceived: from client.test ([127.0.0.1])\r\n\tby relay.test with ESMTP id "
        ),
        "{message}"
    );
    assert!(message.contains("Subject: over the route\r\n"));
    assert!(message.ends_with("relayed body\r\n"));
}

#[test]
fn local_domains_are_delivered_into_the_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("local");
    let relay = relay(
        &dir.path().join("spool"),
        &[
            "--local-domain",
            "local.test",
            "--maildir",
            mail.to_str().unwrap(),
        ],
    );
    let output = send(relay.addr, "carol@local.test", "local mail");
    assert!(output.status.success(), "{output:?}");
    let stored = wait_for_messages(&mail, 1);
    assert!(
        stored[0].starts_with("Return-Path: <alice@sender.test>\r\nDelivered-To: carol@local.test\r\nReceived: from client.test ([127.0.0.1])\r\n\tby relay.test with ESMTP id "),
        "{}",
        stored[0]
    );
}

#[test]
fn local_domain_without_a_maildir_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(FERRY)
        .args([
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--no-tls",
            "--local-domain",
            "local.test",
        ])
        .arg("--spool")
        .arg(dir.path().join("spool"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--local-domain needs --maildir"),
        "{stderr}"
    );
}

#[test]
fn queued_mail_survives_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mail = dir.path().join("downstream");
    // The downstream is not running yet: the route's port is closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let route = format!("remote.test=127.0.0.1:{port}");
    let mut first = relay(&spool, &["--route", &route, "--retry-schedule", "1s"]);
    let output = send(first.addr, "bob@remote.test", "survives");
    assert!(output.status.success(), "{output:?}");
    std::thread::sleep(Duration::from_millis(300));
    let (status, lines) = first.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        lines.iter().any(|l| l == "shut down; 1 recipients pending"),
        "{lines:?}"
    );
    // The downstream comes up on that port and the relay restarts.
    let down = Process::start(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--no-tls",
        "--maildir",
        mail.to_str().unwrap(),
    ]);
    let second = relay(&spool, &["--route", &route, "--retry-schedule", "1s"]);
    let stored = wait_for_messages(&mail, 1);
    assert!(stored[0].contains("Subject: survives\r\n"));
    drop((second, down));
}

/// One SMTP transaction with exactly these MAIL and RCPT lines; returns
/// the reply to the end of data.
fn submit_lines(to: SocketAddr, mail: &str, rcpts: &[&str], message: &str) -> String {
    use std::io::Write;
    let stream = std::net::TcpStream::connect(to).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut reply = || loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "connection closed");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.trim_end().to_owned();
        }
    };
    assert!(reply().starts_with("220"));
    let mut say = |line: &str| {
        writer.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        reply()
    };
    assert!(say("EHLO client.test").starts_with("250"));
    assert!(say(mail).starts_with("250"));
    for rcpt in rcpts {
        assert!(say(rcpt).starts_with("250"), "{rcpt}");
    }
    assert!(say("DATA").starts_with("354"));
    let end = say(&format!("{message}."));
    let _ = say("QUIT");
    end
}

#[test]
fn success_notices_say_delivered_for_the_maildir_and_relayed_for_a_next_hop_without_dsn() {
    // RFC 3461 §5.2.2 and §5.2.3. `ferry serve` does not offer DSN.
    let dir = tempfile::tempdir().unwrap();
    let down_mail = dir.path().join("downstream");
    let down = downstream(&down_mail);
    let local_mail = dir.path().join("local");
    let remote = format!("remote.test={}", down.addr);
    let sender = format!("sender.test={}", down.addr);
    let relay = relay(
        &dir.path().join("spool"),
        &[
            "--local-domain",
            "local.test",
            "--maildir",
            local_mail.to_str().unwrap(),
            "--route",
            &remote,
            "--route",
            &sender,
        ],
    );
    let end = submit_lines(
        relay.addr,
        "MAIL FROM:<alice@sender.test>",
        &[
            "RCPT TO:<carol@local.test> NOTIFY=SUCCESS",
            "RCPT TO:<bob@remote.test> NOTIFY=SUCCESS,FAILURE",
        ],
        "Subject: notices\r\n\r\nbody\r\n",
    );
    assert!(end.starts_with("250"), "{end}");
    assert_eq!(wait_for_messages(&local_mail, 1).len(), 1);
    // Downstream: bob's copy and one notice per destination, to alice.
    let stored = wait_for_messages(&down_mail, 3);
    assert_eq!(stored.len(), 3);
    let notices: Vec<&String> = stored
        .iter()
        .filter(|m| m.contains("Content-Type: message/delivery-status"))
        .collect();
    assert_eq!(notices.len(), 2, "{stored:?}");
    let action = |recipient: &str| -> Vec<&str> {
        notices
            .iter()
            .filter(|n| n.contains(&format!("Final-Recipient: rfc822; {recipient}\r\n")))
            .flat_map(|n| n.lines().filter_map(|l| l.strip_prefix("Action: ")))
            .collect()
    };
    assert_eq!(action("carol@local.test"), ["delivered"]);
    assert_eq!(action("bob@remote.test"), ["relayed"]);
    for notice in notices {
        assert!(
            notice.starts_with("Return-Path: <>\r\nDelivered-To: alice@sender.test\r\n"),
            "{notice}"
        );
    }
}
