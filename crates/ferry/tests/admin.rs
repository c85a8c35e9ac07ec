//! `ferry relay --admin` and `ferry queue` as processes: every endpoint,
//! the bearer token, the event log, and hold, release, delete (with and
//! without a bounce) and flush observed at a real downstream server
//! (`ferry serve` into a Maildir).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const TOKEN: &str = "s3cret-admin-token";

struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Process {
    fn start(args: &[&str]) -> Process {
        let mut child = Command::new(FERRY)
            .args(args)
            .env("FERRY_TEST_TOKEN", TOKEN)
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
        Process { child, lines }
    }

    /// The address after `prefix` in the first line that has it.
    fn address(&self, prefix: &str) -> SocketAddr {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no {prefix:?} line"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest
                    .trim_start_matches("http://")
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn send(to: SocketAddr, recipient: &str, subject: &str) {
    let out: Output = Command::new(FERRY)
        .args(["send", "--server", &to.to_string(), "--tls", "none"])
        .args(["--timeout", "20", "--helo", "client.test"])
        .args(["--from", "alice@sender.test", "--to", recipient])
        .args(["--subject", subject, "--body", "body"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ferry queue ...` with the token; its stdout (it must succeed).
fn queue(admin: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(FERRY)
        .arg("queue")
        .args(args)
        .args([
            "--admin",
            &admin.to_string(),
            "--admin-token-env",
            "FERRY_TEST_TOKEN",
        ])
        .env("FERRY_TEST_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ferry queue {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn queue_json(admin: SocketAddr, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&queue(admin, &all)).unwrap()
}

/// A raw HTTP request to the admin interface: (status, body).
fn http(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

fn maildir(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("new")) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn id_for(admin: SocketAddr, recipient: &str) -> String {
    let page = queue_json(admin, &["list", "--recipient", recipient]);
    page["messages"][0]["id"].as_str().unwrap().to_owned()
}

#[test]
fn the_admin_interface_and_ferry_queue_drive_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let downstream_port = free_port();
    let down_dir = dir.path().join("downstream");
    let events = dir.path().join("events.log");
    let hop = format!("127.0.0.1:{downstream_port}");
    let relay = Process::start(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--no-tls",
        "--hostname",
        "relay.test",
        "--spool",
        dir.path().join("spool").to_str().unwrap(),
        "--durability",
        "os",
        "--route",
        &format!("dest.test={hop}"),
        "--route",
        &format!("other.test={hop}"),
        "--route",
        &format!("sender.test={hop}"),
        "--retry-min",
        "1h",
        "--admin",
        "127.0.0.1:0",
        "--admin-token-env",
        "FERRY_TEST_TOKEN",
        "--event-log",
        events.to_str().unwrap(),
    ]);
    let admin = relay.address("admin interface on ");
    let smtp = relay.address("listening on ");

    // The token is required on every endpoint.
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/queue"),
        ("GET", "/queue/summary"),
        ("POST", "/queue/flush"),
    ] {
        assert_eq!(http(admin, method, path, None).0, 401, "{method} {path}");
        assert_eq!(http(admin, method, path, Some("wrong")).0, 401);
    }

    // The downstream is down: the first message is deferred, and the
    // next hop backed off; the others wait for it, deferred if they were
    // tried before the backoff began, queued (never tried) if not.
    send(smtp, "a@dest.test", "first");
    send(smtp, "b@dest.test", "held one");
    send(smtp, "c@other.test", "to delete with a bounce");
    send(smtp, "d@other.test", "to delete quietly");
    let count = |state: &str| {
        queue_json(admin, &["list", "--state", state])["messages"]
            .as_array()
            .unwrap()
            .len()
    };
    wait("four waiting messages, the first deferred", || {
        count("deferred") + count("queued") == 4
            && queue_json(
                admin,
                &["list", "--state", "deferred", "--recipient", "a@dest.test"],
            )["messages"]
                .as_array()
                .unwrap()
                .len()
                == 1
    });
    // An attempt that was already running when the backoff began ends in
    // a moment; after that nothing changes until the flush.
    std::thread::sleep(Duration::from_millis(300));
    let deferred = count("deferred");
    let first = id_for(admin, "a@dest.test");
    let held = id_for(admin, "b@dest.test");
    let bounced = id_for(admin, "c@other.test");
    let quiet = id_for(admin, "d@other.test");

    // show, list (table), summary.
    let shown = queue_json(admin, &["show", &first]);
    assert_eq!(shown["sender"], "alice@sender.test");
    assert_eq!(shown["recipients"][0]["state"], "deferred");
    assert!(
        shown["recipients"][0]["last"]["diagnostic"]
            .as_str()
            .unwrap()
            .starts_with('4')
    );
    assert!(shown["recipients"][0]["next_attempt"].as_u64().is_some());
    let table = queue(admin, &["list"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("a@dest.test") && table.contains("deferred"),
        "{table}"
    );
    let summary = queue(admin, &["summary"]);
    assert!(
        summary
            .lines()
            .any(|l| l.starts_with("dest.test") && l.contains(" 2 ")),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("queued {}  deferred {deferred}", 4 - deferred)),
        "{summary}"
    );
    let (status, page) = http(admin, "GET", "/queue?limit=2", Some(TOKEN));
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
    let next = page["next_cursor"].as_str().unwrap();
    let (_, rest) = http(
        admin,
        "GET",
        &format!("/queue?limit=2&cursor={next}"),
        Some(TOKEN),
    );
    let rest: Value = serde_json::from_str(&rest).unwrap();
    assert_eq!(rest["messages"].as_array().unwrap().len(), 2);
    assert_ne!(rest["messages"][0]["id"], page["messages"][0]["id"]);
    assert_eq!(http(admin, "GET", "/queue?state=stuck", Some(TOKEN)).0, 400);
    assert_eq!(
        http(admin, "GET", "/queue/FFFFFFFFFFFFFFF0", Some(TOKEN)).0,
        404
    );
    assert_eq!(http(admin, "GET", "/queue/not-an-id", Some(TOKEN)).0, 400);
    assert_eq!(
        http(admin, "DELETE", "/queue", Some(TOKEN)).0,
        400,
        "bulk needs a filter"
    );

    // Hold one, delete two, then bring the downstream up and flush.
    assert!(queue(admin, &["hold", &held]).contains("held"));
    assert_eq!(
        queue_json(admin, &["show", &held])["recipients"][0]["state"],
        "held"
    );
    queue(admin, &["delete", &bounced, "--bounce"]);
    queue(admin, &["delete", &quiet]);
    assert_eq!(
        http(admin, "GET", &format!("/queue/{quiet}"), Some(TOKEN)).0,
        404
    );
    let _downstream = Process::start(&[
        "serve",
        "--listen",
        &hop,
        "--no-tls",
        "--hostname",
        "downstream.test",
        "--maildir",
        down_dir.to_str().unwrap(),
    ]);
    _downstream.address("listening on ");
    let flushed = queue(admin, &["flush"]);
    assert!(flushed.contains("recipients to retry now"), "{flushed}");
    // The first message and the bounce for the deleted one arrive; the
    // held one and the quietly deleted one do not.
    wait("the flushed message and the bounce", || {
        maildir(&down_dir).len() >= 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let arrived = maildir(&down_dir);
    assert_eq!(arrived.len(), 2, "{arrived:?}");
    assert!(arrived.iter().any(|m| m.contains("Subject: first")));
    let bounce = arrived
        .iter()
        .find(|m| m.contains("report-type=delivery-status"))
        .expect("a bounce for the deleted message");
    assert!(
        bounce.contains("Final-Recipient: rfc822; c@other.test"),
        "{bounce}"
    );
    assert!(bounce.contains("Status: 5.7.1"), "{bounce}");
    assert!(!arrived.iter().any(|m| m.contains("held one")));
    assert!(!arrived.iter().any(|m| m.contains("to delete quietly")));

    // Released, the held message goes out.
    queue(admin, &["release", &held]);
    wait("the released message", || {
        maildir(&down_dir)
            .iter()
            .any(|m| m.contains("Subject: held one"))
    });
    wait("an empty queue", || {
        queue_json(admin, &["list"])["messages"]
            .as_array()
            .unwrap()
            .is_empty()
    });

    // Metrics.
    let (status, metrics) = http(admin, "GET", "/metrics", Some(TOKEN));
    assert_eq!(status, 200);
    for needle in [
        "ferry_messages_accepted_total{kind=\"message\"} 4",
        "ferry_recipients_delivered_total",
        "ferry_recipients_deferred_total{class=",
        "ferry_recipients_bounced_total{class=\"deleted\"} 2",
        "ferry_queue_recipients{state=\"deferred\"} 0",
        "ferry_commit_seconds_bucket",
        "ferry_delivery_seconds_bucket",
        "ferry_queue_oldest_message_seconds",
        "ferry_deliveries_in_flight",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }

    // Events: one JSON line each.
    let log = std::fs::read_to_string(&events).unwrap();
    let kinds: Vec<String> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for kind in ["accept", "attempt", "deferral", "delivery", "bounce"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} event in {log}");
    }
}

#[test]
fn a_non_loopback_admin_address_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(FERRY)
        .args(["relay", "--listen", "127.0.0.1:0", "--no-tls", "--spool"])
        .arg(dir.path())
        .args(["--route", "x.test=127.0.0.1:9", "--admin", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}
