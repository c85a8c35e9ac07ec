//! `ferry bench --duration` is a hard bound, whatever the server does.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Runs `ferry bench` for `secs` against `addr`; kills it and fails the
/// test if it is still running well after that.
fn bench_for(addr: &str, secs: u64) -> (std::process::Output, Duration) {
    let start = Instant::now();
    let mut child = Command::new(FERRY)
        .args([
            "bench",
            "--server",
            addr,
            "--tls",
            "none",
            "--duration",
            &secs.to_string(),
            "--concurrency",
            "4",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let bound = Duration::from_secs(secs + 8);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferry bench --duration {secs} still running after {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child.wait_with_output().unwrap(), start.elapsed())
}

#[test]
fn bench_against_a_server_that_never_greets_ends_on_time() {
    // Accepts connections (the kernel's backlog does) and never writes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (out, elapsed) = bench_for(&addr, 1);
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["delivered"], 0, "{report}");
    assert_eq!(report["cancelled"], 4, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    // Nothing was delivered: not a success.
    assert_eq!(out.status.code(), Some(1), "{report}");
    drop(listener);
}
