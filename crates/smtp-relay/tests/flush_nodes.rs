//! A flush reaches every node sharing a PostgreSQL queue: the node that
//! backed a destination off forgets its backoff when another node flushes
//! (the flush's NOTIFY), and delivers the flushed mail at once.
#![cfg(feature = "postgres")]

mod pg_cluster;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use smtp_relay::clock::{Clock, TokioClock};
use smtp_relay::deliver::{Deliverer, DeliveryConfig};
use smtp_relay::inspect::QueueInspect;
use smtp_relay::postgres::{PgConfig, PgQueue};
use smtp_relay::queue::{
    MessageKind, NewMessage, QueueStore, QueuedEnvelope, QueuedRecipient, RecipientState,
};
use smtp_relay::receive::RelayAccess;
use smtp_relay::route::{HostPort, Router};
use smtp_relay::scheduler::{Scheduler, SchedulerConfig};
use support::fake_mx::{FakeMx, Script};

fn message(tag: &str) -> NewMessage {
    NewMessage {
        envelope: QueuedEnvelope {
            sender: Some("alice@sender.test".to_owned()),
            ret: None,
            envid: None,
            smtputf8: false,
            body_type: None,
            requiretls: false,
            received_at: SystemTime::now(),
            kind: MessageKind::Normal,
            recipients: vec![QueuedRecipient::new("bob@x.test")],
        },
        body: Bytes::from(format!("Subject: {tag}\r\n\r\nbody\r\n")),
    }
}

async fn store(url: &str, node: &str) -> PgQueue {
    let mut config = PgConfig::new(url);
    config.node = node.to_owned();
    config.connections = 2;
    PgQueue::connect(config).await.unwrap()
}

fn scheduler(store: PgQueue, mx: SocketAddr) -> Scheduler<PgQueue> {
    let mut router = Router::new(RelayAccess::new(Vec::<String>::new(), Vec::new()));
    router.add_route(
        "x.test",
        HostPort {
            host: mx.ip().to_string(),
            port: mx.port(),
        },
    );
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let mut delivery = DeliveryConfig::new("n2.relay.test");
    delivery.timeouts = smtp_client::Timeouts::uniform(Duration::from_secs(5));
    let deliverer = Deliverer::new(delivery, router, None, None, Arc::clone(&clock));
    let mut config = SchedulerConfig::new("n2.relay.test");
    // Long enough that only a flush brings the mail back during the test.
    config.retry.first = Duration::from_secs(3600);
    config.retry.max = Duration::from_secs(3600);
    Scheduler::new(store, deliverer, clock, config)
}

async fn wait(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_on_one_node_clears_the_backoff_of_the_others() {
    let Some(url) = pg_cluster::database().await else {
        return;
    };
    // Nothing listens on the MX address yet: connections are refused.
    let mx_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // n1 takes the operator's request; n2 delivers.
    let n1 = store(&url, "n1").await;
    let n2 = store(&url, "n2").await;
    let delivering = scheduler(n2.clone(), mx_addr);
    let running = tokio::spawn({
        let delivering = delivering.clone();
        async move { delivering.run(std::future::pending::<()>()).await }
    });

    let first = n1.enqueue(message("first")).await.unwrap();
    wait("n2's failed attempt", async || {
        n1.get(first).await.unwrap().is_some_and(|listed| {
            matches!(listed.message.states[0], RecipientState::Deferred { .. })
        })
    })
    .await;
    // n2 has backed the destination off: a second message waits with it
    // (parked on n2, still queued), without a connection.
    let second = n1.enqueue(message("second")).await.unwrap();
    wait("the second message parked behind the backoff", async || {
        delivering.parked_recipients() == 1
    })
    .await;
    assert!(
        n1.get(second)
            .await
            .unwrap()
            .is_some_and(|listed| { matches!(listed.message.states[0], RecipientState::Queued) })
    );

    // The destination comes back, and the operator flushes on n1 only.
    let mx = FakeMx::start_on(mx_addr, Script::new().no_starttls())
        .await
        .unwrap();
    assert_eq!(mx.connections(), 0);
    // Only the deferred recipient has a retry time to bring forward.
    assert_eq!(n1.flush(None, SystemTime::now()).await.unwrap(), 1);
    assert!(
        mx.wait_accepted(2, Duration::from_secs(10)).await,
        "n2 kept its backoff after the flush: {} accepted, {} connections",
        mx.accepted().len(),
        mx.connections()
    );
    wait("both messages delivered", async || {
        n1.messages().await.is_empty()
    })
    .await;
    running.abort();
}
