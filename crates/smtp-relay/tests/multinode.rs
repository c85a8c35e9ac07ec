//! Three relay nodes (store, scheduler, deliverer each) sharing one
//! PostgreSQL queue deliver to one slow fake MX. One node is killed while
//! it holds leases. Every acknowledged message reaches the MX at least
//! once, the per-destination cap holds across the nodes at every moment
//! (counted as connections open at the MX, busy or idle, and as
//! transactions in DATA), and the dead node's work is picked up within the lease time.
#![cfg(feature = "postgres")]

mod pg_cluster;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use smtp_relay::clock::{Clock, TokioClock};
use smtp_relay::deliver::{Deliverer, DeliveryConfig};
use smtp_relay::postgres::{PgConfig, PgQueue};
use smtp_relay::queue::{MessageKind, NewMessage, QueueStore, QueuedEnvelope, QueuedRecipient};
use smtp_relay::receive::RelayAccess;
use smtp_relay::route::{HostPort, Router};
use smtp_relay::scheduler::{Scheduler, SchedulerConfig};
use smtp_server::{Backend, Body, ConnectionInfo, Envelope, Server, Session, SmtpError};

const CAP: usize = 3;

#[derive(Default)]
struct Counts {
    /// Connections open now, and the most at once.
    open: AtomicUsize,
    max_open: AtomicUsize,
    in_data: AtomicUsize,
    max_in_data: AtomicUsize,
    bodies: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct SlowMx(Arc<Counts>);

struct SlowSession(Arc<Counts>);

impl Backend for SlowMx {
    type Session = SlowSession;
    async fn new_session(&self, _info: &ConnectionInfo) -> Result<SlowSession, SmtpError> {
        let now = self.0.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.max_open.fetch_max(now, Ordering::SeqCst);
        Ok(SlowSession(Arc::clone(&self.0)))
    }
}

/// The session lives as long as its connection.
impl Drop for SlowSession {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Session for SlowSession {
    async fn data(&mut self, _envelope: &Envelope, mut body: Body) -> Result<(), SmtpError> {
        let now = self.0.in_data.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.max_in_data.fetch_max(now, Ordering::SeqCst);
        let mut bytes = Vec::new();
        let mut failed = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(err) => {
                    failed = Some(err);
                    break;
                }
            }
        }
        // A slow server: deliveries stay in flight long enough to be
        // caught by the kill.
        tokio::time::sleep(Duration::from_millis(60)).await;
        self.0.in_data.fetch_sub(1, Ordering::SeqCst);
        if let Some(err) = failed {
            return Err(SmtpError::other(err));
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Some(tag) = text.lines().find_map(|l| l.strip_prefix("X-Tag: ")) {
            self.0.bodies.lock().unwrap().push(tag.to_owned());
        }
        Ok(())
    }
}

async fn slow_mx(counts: Arc<Counts>) -> SocketAddr {
    let server = Server::builder(SlowMx(counts))
        .hostname("mx.test")
        .listen("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addr = listening.local_addrs()[0];
    tokio::spawn(async move {
        let _ = listening.serve(std::future::pending::<()>()).await;
    });
    addr
}

struct Node {
    store: PgQueue,
    task: tokio::task::JoinHandle<()>,
}

async fn start_node(url: &str, name: &str, mx: SocketAddr, lease: Duration) -> Node {
    let mut config = PgConfig::new(url);
    config.node = name.to_owned();
    config.lease = lease;
    config.connections = 3;
    let store = PgQueue::connect(config).await.unwrap();
    let mut router = Router::new(RelayAccess::new(Vec::<String>::new(), Vec::new()));
    router.add_route(
        "x.test",
        HostPort {
            host: mx.ip().to_string(),
            port: mx.port(),
        },
    );
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let mut delivery = DeliveryConfig::new(format!("{name}.relay.test"));
    delivery.max_per_destination = CAP;
    delivery.reuse_connections = false;
    delivery.timeouts = smtp_client::Timeouts::uniform(Duration::from_secs(5));
    let deliverer = Deliverer::new(delivery, router, None, None, Arc::clone(&clock));
    let mut scheduler = SchedulerConfig::new(format!("{name}.relay.test"));
    scheduler.retry.first = Duration::from_millis(200);
    scheduler.retry.max = Duration::from_millis(400);
    scheduler.max_in_flight = 16;
    let scheduler = Scheduler::new(store.clone(), deliverer, clock, scheduler);
    let task = tokio::spawn(async move {
        scheduler.run(std::future::pending::<()>()).await;
    });
    Node { store, task }
}

fn tagged(tag: &str) -> NewMessage {
    NewMessage {
        envelope: QueuedEnvelope {
            sender: Some("a@example.com".to_owned()),
            ret: None,
            envid: None,
            smtputf8: false,
            body_type: None,
            requiretls: false,
            received_at: SystemTime::now(),
            kind: MessageKind::Normal,
            recipients: vec![QueuedRecipient::new("r@x.test")],
        },
        body: Bytes::from(format!("X-Tag: {tag}\r\nSubject: t\r\n\r\nbody\r\n")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_the_queue_and_survive_the_death_of_one() {
    let Some(url) = pg_cluster::database().await else {
        return;
    };
    let counts = Arc::new(Counts::default());
    let mx = slow_mx(Arc::clone(&counts)).await;
    let lease = Duration::from_millis(1500);
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        nodes.push(start_node(&url, name, mx, lease).await);
    }
    // Load all three together; a message counts once its enqueue returned
    // (the point where the relay would have said 250).
    let mut acknowledged = HashSet::new();
    let mut loads = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let store = node.store.clone();
        loads.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..40 {
                let tag = format!("{n}-{i}");
                if store.enqueue(tagged(&tag)).await.is_ok() {
                    acked.push(tag);
                }
            }
            acked
        }));
    }
    for load in loads {
        acknowledged.extend(load.await.unwrap());
    }
    assert_eq!(acknowledged.len(), 120);
    // Kill n1 while it holds leases: abort its scheduler (deliveries in
    // flight die with their connections) and drop its store (no release,
    // no more renewals).
    let sql = pg_cluster::client(&url).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held: i64 = sql
            .query_one(
                "SELECT count(*) FROM ferry_recipients WHERE lease_owner = 'n1'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if held > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "n1 never held a lease");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dead = nodes.remove(0);
    dead.task.abort();
    let _ = dead.task.await;
    drop(dead.store);
    let killed = Instant::now();
    let orphaned: i64 = sql
        .query_one(
            "SELECT count(*) FROM ferry_recipients WHERE lease_owner = 'n1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    // Everything drains through n2 and n3.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut taken_over_after = None;
    loop {
        let (left, n1_left): (i64, i64) = {
            let row = sql
                .query_one(
                    "SELECT count(*), count(*) FILTER (WHERE lease_owner = 'n1')
                     FROM ferry_recipients",
                    &[],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1))
        };
        if n1_left == 0 && taken_over_after.is_none() {
            taken_over_after = Some(killed.elapsed());
        }
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} recipients never delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered: HashSet<String> = counts.bodies.lock().unwrap().iter().cloned().collect();
    let missing: Vec<&String> = acknowledged.difference(&delivered).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    let max = counts.max_in_data.load(Ordering::SeqCst);
    assert!(
        max <= CAP,
        "{max} deliveries in flight at once to one destination; the cap is {CAP}"
    );
    assert!(max >= 2, "the nodes did deliver in parallel ({max})");
    let max_open = counts.max_open.load(Ordering::SeqCst);
    assert!(
        max_open <= CAP,
        "{max_open} connections open at once to one destination; the cap is {CAP}"
    );
    let taken_over_after = taken_over_after.unwrap();
    assert!(
        taken_over_after < lease + Duration::from_secs(2),
        "n1's {orphaned} leases were taken over after {taken_over_after:?}"
    );
    let duplicates = counts.bodies.lock().unwrap().len() - delivered.len();
    assert!(
        duplicates as i64 <= orphaned,
        "{duplicates} duplicates, more than the {orphaned} attempts in flight at the kill"
    );
    for node in nodes {
        node.task.abort();
    }
}
