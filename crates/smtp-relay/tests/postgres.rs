//! What only the shared PostgreSQL queue does: leases taken over from a
//! dead node, fencing of a stale node's outcome, per-destination slots
//! across nodes, wake-ups by NOTIFY, deduplicated bodies and migrations.
//! Against a real PostgreSQL in a throwaway cluster.
#![cfg(feature = "postgres")]

mod pg_cluster;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use smtp_relay::postgres::{MIGRATIONS, Migrations, PgConfig, PgQueue};
use smtp_relay::queue::{
    AttemptReport, MessageKind, NewMessage, QueueStore, QueuedEnvelope, QueuedRecipient,
    RecipientState,
};

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
}

fn message(recipients: &[&str], body: &str) -> NewMessage {
    NewMessage {
        envelope: QueuedEnvelope {
            sender: Some("a@example.com".to_owned()),
            ret: None,
            envid: None,
            smtputf8: false,
            body_type: None,
            requiretls: false,
            received_at: at(0),
            kind: MessageKind::Normal,
            recipients: recipients
                .iter()
                .map(|r| QueuedRecipient::new(*r))
                .collect(),
        },
        body: Bytes::from(body.to_owned()),
    }
}

fn delivered() -> RecipientState {
    RecipientState::Delivered {
        last: AttemptReport {
            remote_mta: Some("mx.test".to_owned()),
            diagnostic: "250 ok".to_owned(),
            at: at(5),
        },
    }
}

fn deferred() -> RecipientState {
    RecipientState::Deferred {
        attempts: 1,
        next_attempt: at(600),
        last: AttemptReport {
            remote_mta: Some("mx.test".to_owned()),
            diagnostic: "451 4.3.0 later".to_owned(),
            at: at(5),
        },
        warned: false,
    }
}

async fn node(url: &str, name: &str, lease: Duration) -> PgQueue {
    let mut config = PgConfig::new(url);
    config.node = name.to_owned();
    config.lease = lease;
    config.connections = 2;
    PgQueue::connect(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_leases_are_taken_over_within_the_lease_time() {
    let Some(url) = pg_cluster::database().await else {
        return;
    };
    let lease = Duration::from_millis(1500);
    let a = node(&url, "a", lease).await;
    let b = node(&url, "b", lease).await;
    a.enqueue(message(&["r@x.test"], "m\r\n")).await.unwrap();
    assert_eq!(a.claim_due(at(1), 10).await.len(), 1);
    // Node a dies holding the lease: no release, no more renewals.
    let died = Instant::now();
    drop(a);
    assert!(b.claim_due(at(1), 10).await.is_empty(), "a's lease holds");
    let due = b.next_due().await.expect("the lease's end is a due time");
    assert!(due <= SystemTime::now() + lease);
    let claims = loop {
        let claims = b.claim_due(at(1), 10).await;
        if !claims.is_empty() {
            break claims;
        }
        assert!(
            died.elapsed() < lease + Duration::from_secs(1),
            "not taken over within the lease time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(died.elapsed() >= lease - Duration::from_millis(200));
    b.record(claims[0].message.id, vec![(0, delivered())], Vec::new())
        .await
        .unwrap();
    assert!(b.messages().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_renewed_while_the_node_lives() {
    let Some(url) = pg_cluster::database().await else {
        return;
    };
    let lease = Duration::from_millis(600);
    let a = node(&url, "a", lease).await;
    let b = node(&url, "b", lease).await;
    let id = a.enqueue(message(&["r@x.test"], "m\r\n")).await.unwrap();
    assert_eq!(a.claim_due(at(1), 10).await.len(), 1);
    // A slow attempt: three lease times pass, renewed all along.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            b.claim_due(at(1), 10).await.is_empty(),
            "b stole a live lease"
        );
    }
    a.record(id, vec![(0, delivered())], Vec::new())
        .await
        .unwrap();
    assert!(a.messages().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_node_never_overwrites_a_newer_outcome() {
    let Some(url) = pg_cluster::database().await else {
        return;
    };
    let lease = Duration::from_secs(30);
    let a = node(&url, "a", lease).await;
    let b = node(&url, "b", lease).await;
    let id = a
        .enqueue(message(&["r@x.test", "s@x.test"], "m\r\n"))
        .await
        .unwrap();
    assert_eq!(a.claim_due(at(1), 10).await[0].recipients, vec![0, 1]);
    // Node a stalls (a long pause, a network cut) past its lease: as far
    // as the queue knows its lease ran out. Node b claims and defers.
    let sql = pg_cluster::client(&url).await;
    sql.execute(
        "UPDATE ferry_recipients SET lease_owner = 'a-stalled',
         lease_until = now() - interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    let claims = b.claim_due(at(1), 10).await;
    assert_eq!(claims[0].recipients, vec![0, 1]);
    b.record(id, vec![(0, deferred()), (1, deferred())], Vec::new())
        .await
        .unwrap();
    // Node a wakes up and reports its old attempt: discarded.
    let stale = a.record(id, vec![(0, delivered())], Vec::new()).await;
    assert!(stale.is_err(), "the stale outcome must be refused");
    let messages = b.messages().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].states, vec![deferred(), deferred()]);
    let fences: Vec<i64> = sql
        .query("SELECT fence FROM ferry_recipients ORDER BY idx", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(fences, vec![2, 2], "two claims, two fencing values");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_slots_are_shared_by_every_node() {
    let Some(url) = pg_cluster::database().await else {
        return;
    };
    let lease = Duration::from_millis(1500);
    let a = node(&url, "a", lease).await;
    let b = node(&url, "b", lease).await;
    let first = a.acquire_slot("route 127.0.0.1:25", 2).await.unwrap();
    let second = b.acquire_slot("route 127.0.0.1:25", 2).await.unwrap();
    assert_ne!(first.number, second.number);
    // A third delivery waits, on either node.
    let waiting = tokio::time::timeout(
        Duration::from_millis(400),
        a.acquire_slot("route 127.0.0.1:25", 2),
    )
    .await;
    assert!(waiting.is_err(), "a third slot was handed out");
    // Another destination has slots of its own.
    let other = b.acquire_slot("MX of example.net", 2).await.unwrap();
    b.release_slot(other).await;
    b.release_slot(second).await;
    let third = tokio::time::timeout(
        Duration::from_secs(2),
        a.acquire_slot("route 127.0.0.1:25", 2),
    )
    .await
    .expect("a released slot is handed out again")
    .unwrap();
    // A dead node's slot comes back after its lease.
    drop(a);
    let started = Instant::now();
    let taken = tokio::time::timeout(lease * 3, b.acquire_slot("route 127.0.0.1:25", 2))
        .await
        .expect("slots of a dead node come back")
        .unwrap();
    assert!(started.elapsed() < lease + Duration::from_secs(1));
    let _ = (first, third, taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_node_wakes_on_notify() {
    let Some(url) = pg_cluster::database().await else {
        return;
    };
    // A long lease: its slow poll is 30 s, so only NOTIFY can wake it.
    let a = node(&url, "a", Duration::from_secs(60)).await;
    let b = node(&url, "b", Duration::from_secs(60)).await;
    // Let b's LISTEN settle, then take its start-up wake-up.
    tokio::time::timeout(Duration::from_secs(5), b.changed())
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        b.changed().await;
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.enqueue(message(&["r@x.test"], "m\r\n")).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("b woke up")
        .unwrap();
    assert!(woke < Duration::from_secs(5));
}

async fn bodies(sql: &tokio_postgres::Client) -> i64 {
    sql.query_one("SELECT count(*) FROM ferry_bodies", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_stored_once_and_removed_with_the_last_message() {
    let Some(url) = pg_cluster::database().await else {
        return;
    };
    let a = node(&url, "a", Duration::from_secs(30)).await;
    let body = "Subject: newsletter\r\n\r\nthe same body\r\n";
    let one = a
        .enqueue(message(&["r@x.test", "s@y.test", "t@z.test"], body))
        .await
        .unwrap();
    let two = a.enqueue(message(&["u@x.test"], body)).await.unwrap();
    let sql = pg_cluster::client(&url).await;
    assert_eq!(bodies(&sql).await, 1);
    assert_eq!(a.body(two).await.unwrap(), body);
    a.claim_due(at(1), 10).await;
    a.record(
        one,
        vec![(0, delivered()), (1, delivered()), (2, delivered())],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(bodies(&sql).await, 1, "still used by the second message");
    a.record(two, vec![(0, delivered())], Vec::new())
        .await
        .unwrap();
    assert_eq!(bodies(&sql).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_applied_once_or_refused_and_listed() {
    let Some(url) = pg_cluster::database().await else {
        return;
    };
    let mut refuse = PgConfig::new(url.clone());
    refuse.migrations = Migrations::Refuse;
    let err = PgQueue::connect(refuse.clone()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("CREATE TABLE ferry_recipients"), "{text}");
    assert!(text.contains("migration 1: 0001_queue"), "{text}");
    // Three nodes starting together apply the schema once.
    let nodes =
        futures::future::join_all(["a", "b", "c"].map(|n| node(&url, n, Duration::from_secs(30))))
            .await;
    let sql = pg_cluster::client(&url).await;
    let applied: i64 = sql
        .query_one("SELECT count(*) FROM ferry_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, MIGRATIONS.len() as i64);
    // Up to date: refusing is now fine.
    PgQueue::connect(refuse).await.unwrap();
    drop(nodes);
}

/// Claim latency with 1,000,000 messages queued (generated in SQL): one
/// claim of 100, the next due time and one listing page, each timed.
/// Run by hand: `cargo test -p smtp-relay --features postgres --test
/// postgres -- --ignored --nocapture`; the numbers are in
/// docs/benchmarks.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a million messages: run by hand"]
async fn claim_latency_with_a_million_queued() {
    use smtp_relay::inspect::{Filter, QueueInspect};
    let Some(url) = pg_cluster::database().await else {
        return;
    };
    let a = node(&url, "a", Duration::from_secs(60)).await;
    a.enqueue(message(&["seed@x.test"], "the body\r\n"))
        .await
        .unwrap();
    let sql = pg_cluster::client(&url).await;
    let started = Instant::now();
    sql.batch_execute(
        "INSERT INTO ferry_messages (sender, smtputf8, requiretls, received_at, kind, body_hash, body_size)
         SELECT 'a@example.com', false, false, now() - (g % 86400) * interval '1 second', 0,
                (SELECT hash FROM ferry_bodies LIMIT 1), 10
         FROM generate_series(1, 1000000) AS g;
         INSERT INTO ferry_recipients (message_id, idx, address, domain, state, due_at)
         SELECT id, 0, 'r' || id || '@d' || (id % 100) || '.test', 'd' || (id % 100) || '.test', 0, received_at
         FROM ferry_messages WHERE id > 1;
         ANALYZE;",
    )
    .await
    .unwrap();
    eprintln!("generated 1,000,000 messages in {:?}", started.elapsed());
    let t = Instant::now();
    let claims = a.claim_due(SystemTime::now(), 100).await;
    let claim = t.elapsed();
    assert_eq!(claims.len(), 100);
    let t = Instant::now();
    assert!(a.next_due().await.is_some());
    let next_due = t.elapsed();
    let t = Instant::now();
    let page = a
        .list(&Filter::default(), None, 1000, SystemTime::now())
        .await
        .unwrap();
    let list = t.elapsed();
    assert_eq!(page.messages.len(), 1000);
    let t = Instant::now();
    let filtered = a
        .list(
            &Filter {
                domain: Some("d7.test".to_owned()),
                ..Filter::default()
            },
            page.next,
            1000,
            SystemTime::now(),
        )
        .await
        .unwrap();
    let list_domain = t.elapsed();
    assert_eq!(filtered.messages.len(), 1000);
    eprintln!(
        "claim 100: {claim:?}; next due: {next_due:?}; list page of 1000: {list:?}; \
         list page filtered by domain: {list_domain:?}"
    );
}
