//! `GET /queue` pages through a large queue generated directly in the
//! store, on both stores, one bounded page at a time. The counts keep the
//! test to seconds; the 1,000,000-message run is the ignored test at the
//! end (`cargo test -p ferry --test admin_pages -- --ignored`).

#[path = "../../smtp-relay/tests/pg_cluster/mod.rs"]
mod pg_cluster;

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ferry::admin::{AdminState, router};
use serde_json::Value;
use smtp_relay::inspect::QueueInspect;
use smtp_relay::queue::{MessageKind, NewMessage, QueueStore, QueuedEnvelope, QueuedRecipient};
use smtp_relay::spool::{Durability, Spool};

fn message(n: usize) -> NewMessage {
    NewMessage {
        envelope: QueuedEnvelope {
            sender: Some(format!("s{}@example.com", n % 7)),
            ret: None,
            envid: None,
            smtputf8: false,
            body_type: None,
            requiretls: false,
            received_at: SystemTime::now() - Duration::from_secs(3600),
            kind: MessageKind::Normal,
            recipients: vec![QueuedRecipient::new(format!("r{n}@d{}.test", n % 10))],
        },
        body: Bytes::from(format!("Subject: {n}\r\n\r\nbody\r\n")),
    }
}

async fn fill<S: QueueStore + Clone>(store: &S, count: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..16 {
        let store = store.clone();
        tasks.spawn(async move {
            for n in (chunk..count).step_by(16) {
                store.enqueue(message(n)).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Value {
    let response = ferry::http::request(
        "GET",
        &addr.to_string(),
        path,
        &[],
        b"",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200, "{path}");
    serde_json::from_slice(&response.body).unwrap()
}

/// Pages through everything with `limit`, then through one domain.
async fn page_through<S: QueueInspect + Send + Sync + 'static>(store: S, count: usize) {
    let app = router(AdminState {
        store,
        reporting_mta: "relay.test".to_owned(),
        token: None,
        metrics: None,
        on_flush: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ferry::admin::serve(listener, app, std::future::pending()));
    let started = Instant::now();
    let mut seen = HashSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/queue?limit=1000&cursor={c}"),
            None => "/queue?limit=1000".to_owned(),
        };
        let page = get(addr, &path).await;
        let messages = page["messages"].as_array().unwrap();
        assert!(messages.len() <= 1000, "a page is bounded");
        for m in messages {
            assert!(
                seen.insert(m["id"].as_str().unwrap().to_owned()),
                "no repeats"
            );
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), count);
    assert!(pages >= count / 1000);
    let page = get(addr, "/queue?domain=d3.test&limit=1000").await;
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), count.div_ceil(10).min(1000));
    assert!(messages.iter().all(|m| {
        m["recipients"][0]["address"]
            .as_str()
            .unwrap()
            .ends_with("@d3.test")
    }));
    let summary = get(addr, "/queue/summary").await;
    assert_eq!(summary["queued"].as_u64().unwrap() as usize, count);
    eprintln!(
        "paged {count} messages in {pages} pages in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_through_a_large_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), Durability::Os).unwrap();
    fill(&spool, 20_000).await;
    page_through(spool, 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_through_a_large_postgres_queue() {
    let Some(url) = pg_cluster::database().await else {
        return;
    };
    let store = smtp_relay::postgres::PgQueue::connect(smtp_relay::postgres::PgConfig::new(url))
        .await
        .unwrap();
    fill(&store, 5_000).await;
    page_through(store, 5_000).await;
}

/// The size: 1,000,000 queued messages, paged in bounded memory
/// (each page is at most 1,000 messages whatever the queue holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a million messages: minutes, run by hand"]
async fn pages_through_a_million_queued_messages() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), Durability::Os).unwrap();
    fill(&spool, 1_000_000).await;
    page_through(spool, 1_000_000).await;
}
