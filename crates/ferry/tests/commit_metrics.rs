//! `ferry_commit_batch_size` on `GET /metrics`: many clients end their
//! DATA at the same moment, the store commits them together, and the
//! histogram shows a commit of more than one message, on the spool and on
//! PostgreSQL.

#[path = "../../smtp-relay/tests/pg_cluster/mod.rs"]
mod pg_cluster;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
/// Clients per round, all ending their DATA together.
const CLIENTS: usize = 16;

struct Relay {
    child: Child,
    smtp: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(store: &[&str]) -> Relay {
    let mut child = Command::new(FERRY)
        .args(["relay", "--listen", "127.0.0.1:0", "--no-tls"])
        .args(["--hostname", "relay.test", "--admin", "127.0.0.1:0"])
        // Nothing listens there: mail stays queued, deferred for an hour.
        .args(["--route", "dest.test=127.0.0.1:9", "--retry-min", "1h"])
        .args(store)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut smtp, mut admin) = (None, None);
    while smtp.is_none() || admin.is_none() {
        let line = lines
            .next()
            .expect("ferry relay printed its addresses")
            .unwrap();
        let address = |rest: &str| -> SocketAddr {
            rest.trim_start_matches("http://")
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        if let Some(rest) = line.strip_prefix("listening on ") {
            smtp = Some(address(rest));
        } else if let Some(rest) = line.strip_prefix("admin interface on ") {
            admin = Some(address(rest));
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Relay {
        child,
        smtp: smtp.unwrap(),
        admin: admin.unwrap(),
    }
}

fn reply(reader: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "connection closed after {all:?}");
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

/// One SMTP session that waits at `barrier` before its end of data.
fn submit(smtp: SocketAddr, n: usize, barrier: &Barrier) {
    let stream = TcpStream::connect(smtp).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    assert!(reply(&mut reader).starts_with("220"));
    for (command, code) in [
        ("EHLO client.test".to_owned(), "250"),
        ("MAIL FROM:<alice@sender.test>".to_owned(), "250"),
        (format!("RCPT TO:<r{n}@dest.test>"), "250"),
        ("DATA".to_owned(), "354"),
    ] {
        write!(writer, "{command}\r\n").unwrap();
        let answer = reply(&mut reader);
        assert!(answer.starts_with(code), "{command}: {answer}");
    }
    write!(writer, "Subject: {n}\r\n\r\nbody {n}\r\n").unwrap();
    barrier.wait();
    writer.write_all(b".\r\n").unwrap();
    let answer = reply(&mut reader);
    assert!(answer.starts_with("250"), "end of data: {answer}");
    writer.write_all(b"QUIT\r\n").unwrap();
}

fn metrics(admin: SocketAddr) -> String {
    let mut stream = TcpStream::connect(admin).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw
}

/// The value of the first sample whose name and labels start `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().last())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .parse()
        .unwrap()
}

/// Rounds of concurrent submissions until one commit took more than one
/// message (at most 5 rounds), then checks the histogram against what was
/// accepted.
fn batches_of_more_than_one_are_counted(relay: &Relay) {
    let mut accepted = 0;
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(CLIENTS));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|n| {
                let barrier = Arc::clone(&barrier);
                let smtp = relay.smtp;
                std::thread::spawn(move || submit(smtp, round * CLIENTS + n, &barrier))
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        accepted += CLIENTS;
        let text = metrics(relay.admin);
        let commits = sample(&text, "ferry_commit_batch_size_count");
        let singles = sample(&text, "ferry_commit_batch_size_bucket{le=\"1\"}");
        let messages = sample(&text, "ferry_commit_batch_size_sum");
        assert_eq!(
            messages, accepted as f64,
            "every accepted message is in one commit batch"
        );
        assert!(commits >= 1.0 && commits <= messages, "{commits} commits");
        assert_eq!(
            sample(&text, "ferry_messages_accepted_total{kind=\"message\"}"),
            accepted as f64
        );
        if singles < commits {
            return;
        }
    }
    panic!("{accepted} messages in 5 rounds of {CLIENTS} together, never two in one commit");
}

#[test]
fn spool_commit_batches_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let relay = start(&["--spool", spool.to_str().unwrap(), "--durability", "sync"]);
    batches_of_more_than_one_are_counted(&relay);
}

#[test]
fn postgres_commit_batches_are_counted() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(url) = runtime.block_on(pg_cluster::database()) else {
        return;
    };
    let relay = start(&["--queue", &url, "--queue-node", "metrics"]);
    batches_of_more_than_one_are_counted(&relay);
}
