//! `ferry serve --faults`: rules from a file, the magic addresses, the
//! transcript naming the rule that fired, and reloading on SIGHUP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

struct Serve {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start(faults: &str, extra: &[&str]) -> Serve {
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
            .args(["--faults", faults])
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
                addr = Some(rest.parse().unwrap());
            }
        }
        Serve {
            child,
            addr: addr.unwrap(),
            lines,
            _dir: dir,
        }
    }

    /// The next output line containing `text`.
    fn wait_line(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line with {text:?}"),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `commands` one at a time and returns the last line of each reply.
fn conversation(addr: SocketAddr, commands: &[&str]) -> Vec<String> {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut read_reply = || {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                return "<closed>".to_owned();
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_owned();
            }
        }
    };
    let mut replies = vec![read_reply()];
    for command in commands {
        writer
            .write_all(format!("{command}\r\n").as_bytes())
            .unwrap();
        replies.push(read_reply());
    }
    replies
}

#[test]
fn rules_from_a_file_fire_show_in_the_transcript_and_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("faults.rules");
    std::fs::write(
        &rules,
        "# refuse one domain\nrcpt to \"*@blocked.test\" reply 550 5.1.1 \"no such user\"\n",
    )
    .unwrap();
    let serve = Serve::start(rules.to_str().unwrap(), &["--transcript"]);
    serve.wait_line("faults from");
    let replies = conversation(
        serve.addr,
        &[
            "EHLO client.test",
            "MAIL FROM:<a@example.com>",
            "RCPT TO:<bob@blocked.test>",
            "RCPT TO:<bob@example.com>",
            "QUIT",
        ],
    );
    assert_eq!(replies[3], "550 5.1.1 no such user");
    assert!(replies[4].starts_with("250 2.1.5"), "{replies:?}");
    let fired = serve.wait_line("!! fault");
    assert!(
        fired.ends_with(
            "!! fault at rcpt: rule on line 2: rcpt to \"*@blocked.test\" reply 550 5.1.1 \"no such user\""
        ),
        "{fired}"
    );

    // A file that does not parse keeps the rules in force.
    std::fs::write(&rules, "rcpt to \"*@x\" reply 5.5.0\n").unwrap();
    serve.signal("HUP");
    let kept = serve.wait_line("faults not reloaded");
    assert!(
        kept.contains("line 1, column 21: expected a reply code"),
        "{kept}"
    );

    std::fs::write(&rules, "mail reply 451 4.3.0 \"reloaded\"\n").unwrap();
    serve.signal("HUP");
    assert!(serve.wait_line("faults reloaded").ends_with("1 rule"));
    let replies = conversation(
        serve.addr,
        &["EHLO client.test", "MAIL FROM:<a@example.com>"],
    );
    assert_eq!(replies[2], "451 4.3.0 reloaded");
}

#[test]
fn magic_addresses_work_from_the_command_line() {
    let serve = Serve::start("magic", &[]);
    let start = Instant::now();
    let replies = conversation(
        serve.addr,
        &[
            "EHLO client.test",
            "MAIL FROM:<a@example.com>",
            "RCPT TO:<550@example.com>",
            "RCPT TO:<slow-1s@example.com>",
            "RCPT TO:<421@example.com>",
            "NOOP",
        ],
    );
    assert!(replies[3].starts_with("550 5.1.1"), "{replies:?}");
    assert!(replies[4].starts_with("250 2.1.5"), "{replies:?}");
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(replies[5].starts_with("421 4.3.2"), "{replies:?}");
    assert_eq!(replies[6], "<closed>");
}

#[test]
fn a_rule_file_that_does_not_parse_stops_the_start_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("bad.rules");
    std::fs::write(&rules, "\nrcpt to \"*@x\" bounce\n").unwrap();
    let output = Command::new(FERRY)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-tls", "--faults"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 2, column 15: unknown condition or action \"bounce\""),
        "{stderr}"
    );
}

#[test]
fn a_drip_reaches_the_wire_of_ferry_serve() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("drip.rules");
    std::fs::write(&rules, "greeting drip 20ms\n").unwrap();
    let serve = Serve::start(rules.to_str().unwrap(), &[]);
    let mut stream = TcpStream::connect(serve.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    let mut octet = [0u8; 1];
    let mut reads = 0;
    let mut greeting = Vec::new();
    while !greeting.ends_with(b"\r\n") {
        let n = stream.read(&mut octet).unwrap();
        assert_eq!(n, 1);
        greeting.push(octet[0]);
        reads += 1;
    }
    assert!(greeting.starts_with(b"220 mx.test ESMTP"));
    // One octet per read, about 20 ms apart.
    assert_eq!(reads, greeting.len());
    assert!(start.elapsed() >= Duration::from_millis(20 * (greeting.len() as u64 - 1)));
}
