//! Three `ferry relay --queue postgres://...` processes on one PostgreSQL
//! deliver to a slow Postfix `smtp-sink`; one is killed with SIGKILL while
//! it holds leases. Every message a client got a 250 for reaches the sink,
//! and the survivors take the dead node's work over within the lease.

#[path = "../../smtp-relay/tests/pg_cluster/mod.rs"]
mod pg_cluster;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn relay(url: &str, node: &str, sink: u16) -> (Killed, SocketAddr) {
    let mut child = Command::new(FERRY)
        .args(["relay", "--listen", "127.0.0.1:0", "--no-tls"])
        .args(["--hostname", &format!("{node}.relay.test")])
        .args(["--queue", url, "--queue-node", node, "--queue-lease", "2s"])
        .args(["--route", &format!("sink.test=127.0.0.1:{sink}")])
        .args([
            "--max-per-destination",
            "4",
            "--retry-min",
            "1s",
            "--retry-max",
            "2s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("ferry relay printed its address")
            .unwrap();
        if let Some(rest) = line.strip_prefix("listening on ") {
            break rest.split(' ').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), addr)
}

fn send(to: SocketAddr, tag: &str) -> bool {
    Command::new(FERRY)
        .args(["send", "--server", &to.to_string(), "--tls", "none"])
        .args(["--timeout", "20", "--helo", "client.test"])
        .args(["--from", "alice@sender.test", "--to", "bob@sink.test"])
        .args(["--subject", tag, "--body", "clustered"])
        .status()
        .unwrap()
        .success()
}

fn delivered_tags(dump: &Path) -> Vec<String> {
    let mut tags = Vec::new();
    let mut stack = vec![dump.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(text) = std::fs::read_to_string(&path)
                && let Some(tag) = text.lines().find_map(|l| l.strip_prefix("Subject: "))
            {
                tags.push(tag.trim().to_owned());
            }
        }
    }
    tags
}

#[test]
fn three_relay_processes_share_a_queue_and_survive_a_kill() {
    if !Path::new(SMTP_SINK).exists() {
        assert!(
            std::env::var_os("FERRY_REQUIRE_POSTGRES").is_none(),
            "{SMTP_SINK} is missing"
        );
        eprintln!("\n!!!!!!!! SKIPPING: no {SMTP_SINK} (Debian package postfix) !!!!!!!!\n");
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = runtime.block_on(pg_cluster::database()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let sink_port = free_port();
    // A slow sink: one second before it answers DATA, so deliveries are in
    // flight (and leases held) when the node dies.
    std::fs::create_dir_all(&dump).unwrap();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let mut sink = Command::new(SMTP_SINK);
    if root {
        // smtp-sink drops privileges when started as root.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dump, std::fs::Permissions::from_mode(0o777)).unwrap();
        sink.args(["-u", "nobody"]);
    }
    let _sink = Killed(
        sink.args(["-w", "1", "-d"])
            .arg(format!("{}/%M.", dump.display()))
            .arg(format!("127.0.0.1:{sink_port}"))
            .arg("100")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut nodes: Vec<(Killed, SocketAddr)> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| relay(&url, n, sink_port))
        .collect();
    let mut acknowledged = HashSet::new();
    for i in 0..24 {
        let tag = format!("m{i}");
        if send(nodes[i % 3].1, &tag) {
            acknowledged.insert(tag);
        }
    }
    assert_eq!(acknowledged.len(), 24, "every submission was accepted");
    // Kill n1 while it holds leases.
    let sql = runtime.block_on(pg_cluster::client(&url));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let held: i64 = runtime
            .block_on(sql.query_one(
                "SELECT count(*) FROM ferry_recipients WHERE lease_owner = 'n1'",
                &[],
            ))
            .unwrap()
            .get(0);
        if held > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "n1 never held a lease");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mut n1, _) = nodes.remove(0);
    n1.0.kill().unwrap();
    n1.0.wait().unwrap();
    let killed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut taken_over = None;
    loop {
        let row = runtime
            .block_on(sql.query_one(
                "SELECT count(*), count(*) FILTER (WHERE lease_owner = 'n1')
                 FROM ferry_recipients",
                &[],
            ))
            .unwrap();
        let (left, n1_left): (i64, i64) = (row.get(0), row.get(1));
        if n1_left == 0 && taken_over.is_none() {
            taken_over = Some(killed.elapsed());
        }
        if left == 0 {
            break;
        }
        if Instant::now() >= deadline {
            let rows = runtime
                .block_on(sql.query(
                    "SELECT state, attempts, coalesce(last_diagnostic, ''), coalesce(lease_owner, '')
                     FROM ferry_recipients LIMIT 5",
                    &[],
                ))
                .unwrap();
            let states: Vec<(i16, i32, String, String)> = rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect();
            panic!("{left} recipients still queued: {states:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let taken_over = taken_over.unwrap();
    assert!(
        taken_over < Duration::from_secs(2) + Duration::from_secs(2),
        "the dead node's leases were taken over after {taken_over:?} (lease 2 s)"
    );
    // The sink writes its dump file when the transaction ends.
    std::thread::sleep(Duration::from_millis(300));
    let delivered: HashSet<String> = delivered_tags(&dump).into_iter().collect();
    let missing: Vec<&String> = acknowledged.difference(&delivered).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    drop(nodes);
}
