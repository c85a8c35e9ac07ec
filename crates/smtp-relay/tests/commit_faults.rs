//! "250 only after stable storage" when storage fails: a write or sync
//! error in the spool's group commit gives every waiting session a 4xx
//! (`451 4.3.0`, or `452 4.3.1` for a full file system), nothing of the
//! failed batch is reported accepted or comes back after a restart, and
//! once the fault clears later messages are accepted again.
//!
//! Faults come from the spool's commit hook (a seam inside the committer)
//! and, when the tests run as root, from a real small tmpfs filled until
//! `ENOSPC`.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use smtp_client::{ClientConfig, Envelope, Tls};
use smtp_proto::EnhancedCode;
use smtp_relay::clock::{Clock, TokioClock};
use smtp_relay::queue::{MessageKind, NewMessage, QueueStore, QueuedEnvelope, QueuedRecipient};
use smtp_relay::receive::{RelayAccess, RelayBackend};
use smtp_relay::spool::{CommitHook, CommitPoint, Durability, Spool};
use smtp_server::Server;
use tokio::sync::oneshot;

/// Which commit point fails, and with what kind of error; `None`: no fault.
type FaultSwitch = Arc<Mutex<Option<(CommitPoint, io::ErrorKind)>>>;

fn hook(switch: &FaultSwitch) -> CommitHook {
    let switch = Arc::clone(switch);
    Arc::new(move |point| match *switch.lock().unwrap() {
        Some((at, kind)) if at == point => Err(io::Error::new(kind, "injected fault")),
        _ => Ok(()),
    })
}

fn set(switch: &FaultSwitch, fault: Option<(CommitPoint, io::ErrorKind)>) {
    *switch.lock().unwrap() = fault;
}

fn new_message(subject: &str) -> NewMessage {
    NewMessage {
        envelope: QueuedEnvelope {
            sender: Some("a@example.com".to_owned()),
            ret: None,
            envid: None,
            smtputf8: false,
            body_type: None,
            requiretls: false,
            received_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            kind: MessageKind::Normal,
            recipients: vec![QueuedRecipient::new("b@example.net")],
        },
        body: Bytes::from(format!("Subject: {subject}\r\n\r\nbody\r\n")),
    }
}

/// The subjects of every message in the spool, sorted.
async fn subjects(spool: &Spool) -> Vec<String> {
    let mut subjects = Vec::new();
    for message in spool.snapshot() {
        let body = spool.body(message.id).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let subject = text
            .lines()
            .find_map(|line| line.strip_prefix("Subject: "))
            .unwrap()
            .to_owned();
        subjects.push(subject);
    }
    subjects.sort();
    subjects
}

/// Enqueues `count` messages at once (one commit batch or a few), named
/// `prefix-N`; returns how many were acknowledged and every error.
async fn enqueue_many(spool: &Spool, prefix: &str, count: usize) -> (usize, Vec<io::Error>) {
    let sends = (0..count).map(|n| spool.enqueue(new_message(&format!("{prefix}-{n}"))));
    let results = futures::future::join_all(sends).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    (ok, results.into_iter().filter_map(Result::err).collect())
}

/// Opens the spool in `dir` again, as a restart does. The committer thread
/// of the dropped one exits once its last handle is gone, and opening
/// always appends to a new segment, so it cannot interfere.
fn reopen(dir: &Path) -> Spool {
    Spool::open(dir, Durability::Sync).unwrap()
}

async fn fault_refuses_the_batch_and_the_spool_recovers(point: CommitPoint, kind: io::ErrorKind) {
    let dir = tempfile::tempdir().unwrap();
    let switch = FaultSwitch::default();
    {
        let spool =
            Spool::open_with_commit_hook(dir.path(), Durability::Sync, 1 << 20, hook(&switch))
                .unwrap();
        assert_eq!(enqueue_many(&spool, "before", 3).await.0, 3);
        set(&switch, Some((point, kind)));
        let (ok, errors) = enqueue_many(&spool, "refused", 8).await;
        assert_eq!(ok, 0, "nothing is acknowledged while {point:?} fails");
        assert_eq!(errors.len(), 8);
        for error in &errors {
            assert_eq!(error.kind(), kind, "{error}");
        }
        // Nothing of the failed batches entered the queue.
        assert_eq!(subjects(&spool).await, ["before-0", "before-1", "before-2"]);
        set(&switch, None);
        assert_eq!(enqueue_many(&spool, "after", 2).await.0, 2);
        assert_eq!(
            subjects(&spool).await,
            ["after-0", "after-1", "before-0", "before-1", "before-2"]
        );
    }
    let spool = reopen(dir.path());
    // The refused records were written (a sync fault comes after the
    // write, a write fault after half of it) and cut off again by the
    // committer itself: recovery finds nothing to cut and nothing refused.
    assert_eq!(spool.recovery().truncated_bytes, 0);
    assert_eq!(
        subjects(&spool).await,
        ["after-0", "after-1", "before-0", "before-1", "before-2"]
    );
}

#[tokio::test]
async fn a_failed_sync_refuses_the_batch_and_nothing_of_it_comes_back() {
    fault_refuses_the_batch_and_the_spool_recovers(CommitPoint::Sync, io::ErrorKind::Other).await;
}

#[tokio::test]
async fn a_short_write_on_a_full_disk_keeps_its_kind_and_is_cut_off() {
    fault_refuses_the_batch_and_the_spool_recovers(CommitPoint::Write, io::ErrorKind::StorageFull)
        .await;
}

#[tokio::test]
async fn a_crash_while_the_spool_is_failing_brings_back_nothing_refused() {
    // The fault never clears: the process dies (the spool is dropped)
    // after refusing a batch, without another commit to repair before.
    let dir = tempfile::tempdir().unwrap();
    let switch = FaultSwitch::default();
    {
        let spool =
            Spool::open_with_commit_hook(dir.path(), Durability::Sync, 1 << 20, hook(&switch))
                .unwrap();
        assert_eq!(enqueue_many(&spool, "kept", 2).await.0, 2);
        set(&switch, Some((CommitPoint::Sync, io::ErrorKind::Other)));
        assert_eq!(enqueue_many(&spool, "refused", 4).await.0, 0);
    }
    let spool = reopen(dir.path());
    assert_eq!(subjects(&spool).await, ["kept-0", "kept-1"]);
}

/// A relay that only accepts (no scheduler), over `spool`, on loopback.
struct AcceptingRelay {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl AcceptingRelay {
    async fn start(spool: Spool) -> AcceptingRelay {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
        let access = RelayAccess::new(Vec::<String>::new(), RelayAccess::loopback());
        let backend = RelayBackend::new(spool, access, "relay.test", clock, 10 * 1024 * 1024);
        let server = Server::builder(backend)
            .hostname("relay.test")
            .listen("127.0.0.1:0".parse().unwrap())
            .build()
            .unwrap();
        let listening = server.bind().await.unwrap();
        let addr = listening.local_addrs()[0];
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = listening
                .serve(async {
                    let _ = stopped.await;
                })
                .await;
        });
        AcceptingRelay {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

/// Submits one message per subject, all at once, each on its own
/// connection; returns each one's final reply (code and enhanced code).
async fn submit_all(relay: SocketAddr, subjects: &[String]) -> Vec<(u16, Option<EnhancedCode>)> {
    let config = ClientConfig::builder(relay.ip().to_string())
        .port(relay.port())
        .tls(Tls::None)
        .hello_name("client.test")
        .build()
        .unwrap();
    let sends = subjects.iter().map(|subject| {
        let config = config.clone();
        let body = format!("Subject: {subject}\r\n\r\n{}\r\n", "x".repeat(100));
        async move {
            let envelope = Envelope::new("a@example.com", ["b@example.net"]).unwrap();
            match smtp_client::Client::new(config).send(&envelope, body).await {
                Ok(result) => {
                    let reply = result.reply.expect("a reply to the end of data");
                    (reply.code(), reply.enhanced())
                }
                Err(error) => {
                    let reply = error.reply().expect("a reply, not a broken connection");
                    (reply.code(), reply.enhanced())
                }
            }
        }
    });
    futures::future::join_all(sends).await
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{prefix}-{n}")).collect()
}

#[tokio::test]
async fn sessions_waiting_on_a_failed_commit_get_451_or_452_and_never_250() {
    let dir = tempfile::tempdir().unwrap();
    let switch = FaultSwitch::default();
    let spool =
        Spool::open_with_commit_hook(dir.path(), Durability::Sync, 1 << 20, hook(&switch)).unwrap();
    let relay = AcceptingRelay::start(spool.clone()).await;

    set(&switch, Some((CommitPoint::Sync, io::ErrorKind::Other)));
    for reply in submit_all(relay.addr, &names("eio", 6)).await {
        assert_eq!(reply, (451, Some(EnhancedCode::new(4, 3, 0))));
    }
    set(
        &switch,
        Some((CommitPoint::Write, io::ErrorKind::StorageFull)),
    );
    for reply in submit_all(relay.addr, &names("full", 6)).await {
        // RFC 5321 §4.2.3 and RFC 3463 §3.4: insufficient storage.
        assert_eq!(reply, (452, Some(EnhancedCode::new(4, 3, 1))));
    }
    assert!(spool.snapshot().is_empty(), "nothing refused is queued");

    set(&switch, None);
    for reply in submit_all(relay.addr, &names("ok", 4)).await {
        assert_eq!(reply.0, 250);
    }
    relay.stop().await;
    drop(spool);
    let spool = reopen(dir.path());
    assert_eq!(subjects(&spool).await, names("ok", 4));
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallFileSystem {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl SmallFileSystem {
    /// `Err` with the reason when it cannot be mounted here.
    fn mount(size: &str) -> Result<SmallFileSystem, String> {
        // Only root may mount.
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| format!("cannot run id: {e}"))?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("not root: cannot mount a tmpfs".to_owned());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mount = dir.path().join("fs");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed: {status}"));
        }
        Ok(SmallFileSystem { _dir: dir, mount })
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.mount)
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            // Still busy: detach it now, the kernel frees it when idle.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

#[tokio::test]
async fn a_real_full_file_system_gives_452_and_accepts_again_once_space_is_freed() {
    let fs = match SmallFileSystem::mount("2m") {
        Ok(fs) => fs,
        Err(reason) => {
            println!("skipped: {reason}");
            return;
        }
    };
    let spool_dir = fs.mount.join("spool");
    // Most of the file system taken by something else.
    let filler = fs.mount.join("filler");
    std::fs::write(&filler, vec![0u8; 1536 * 1024]).unwrap();
    let spool = Spool::open(&spool_dir, Durability::Sync).unwrap();
    let relay = AcceptingRelay::start(spool.clone()).await;
    let client = ClientConfig::builder("127.0.0.1")
        .port(relay.addr.port())
        .tls(Tls::None)
        .hello_name("client.test")
        .build()
        .unwrap();
    let envelope = Envelope::new("a@example.com", ["b@example.net"]).unwrap();
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    // 64 KiB messages into about 500 KiB of room: bounded, and full well
    // before the end.
    for n in 0..40 {
        let subject = format!("fill-{n:02}");
        let body = format!("Subject: {subject}\r\n\r\n{}\r\n", "y".repeat(64 * 1024));
        let sent = smtp_client::Client::new(client.clone())
            .send(&envelope, body)
            .await;
        match sent {
            Ok(_) => accepted.push(subject),
            Err(error) => {
                let reply = error.reply().expect("a reply");
                assert_eq!(
                    (reply.code(), reply.enhanced()),
                    (452, Some(EnhancedCode::new(4, 3, 1))),
                    "{error}"
                );
                refused.push(subject);
                if refused.len() == 3 {
                    break;
                }
            }
        }
    }
    assert!(!accepted.is_empty(), "some messages fit");
    assert_eq!(refused.len(), 3, "the file system filled up");
    assert_eq!(subjects(&spool).await, accepted);

    // Space comes back: later messages are accepted.
    std::fs::remove_file(&filler).unwrap();
    for n in 0..3 {
        let subject = format!("later-{n}");
        let body = format!("Subject: {subject}\r\n\r\nafter the disk was freed\r\n");
        smtp_client::Client::new(client.clone())
            .send(&envelope, body)
            .await
            .unwrap();
        accepted.push(subject);
    }
    relay.stop().await;
    drop(spool);
    // Let the committer thread of the dropped spool finish.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let spool = reopen(&spool_dir);
    assert_eq!(spool.recovery().truncated_bytes, 0);
    accepted.sort();
    assert_eq!(subjects(&spool).await, accepted);
    drop(spool);
    // The committer thread lets go of its file before the unmount.
    tokio::time::sleep(Duration::from_millis(50)).await;
}
