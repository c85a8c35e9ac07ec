//! Out of file descriptors, the accept loop backs off instead of spinning,
//! logs the problem once rather than for every attempt, and serves again
//! as soon as descriptors are free.
//!
//! One test alone in this file: it lowers the process's RLIMIT_NOFILE.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Client, TestBackend, builder};
use tokio::net::TcpStream;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64)
}

#[tokio::test]
async fn accept_backs_off_when_out_of_file_descriptors() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .init();

    let backend = TestBackend::new();
    let server = builder(&backend)
        .listen("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addr = listening.local_addrs()[0];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(listening.serve(async move {
        let _ = stopped.await;
    }));
    let mut first = Client::new(TcpStream::connect(addr).await.unwrap());
    first.expect("220 ").await;

    let original = getrlimit(Resource::Nofile);
    if std::fs::read_dir("/proc/self/fd").is_err() {
        eprintln!("skipped: no /proc/self/fd");
        return;
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(open_fds() + 16),
            maximum: original.maximum,
        },
    )
    .unwrap();
    // Take every descriptor left, then free one for the client's socket:
    // the server's accept has none.
    let mut filler = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        filler.push(file);
        assert!(filler.len() < 10_000);
    }
    filler.pop();
    let pending = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let warnings = log.count("accept failed") + log.count("accept still failing");
    // A fixed 50 ms pause logged about 30 warnings here.
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} warnings: {}",
        String::from_utf8_lossy(&log.0.lock().unwrap())
    );

    // Descriptors free again: the waiting client is served.
    drop(filler);
    setrlimit(Resource::Nofile, original).unwrap();
    let mut pending = Client::new(pending);
    pending.wait = Duration::from_secs(5);
    pending.expect("220 ").await;
    first.send("QUIT\r\n").await;
    first.expect("221").await;
    let _ = stop.send(());
}
