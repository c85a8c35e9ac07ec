//! Holding a message while its attempt is in flight, at a fake MX that is
//! slow to answer the end of data, on the spool and on PostgreSQL: the
//! attempt finishes, the recipient it delivered stays delivered, the one
//! it deferred stays held and is not tried again until the message is
//! released (as Postfix's `postsuper -h` on a message in the active queue).

#[cfg(feature = "postgres")]
mod pg_cluster;
mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use smtp_relay::clock::{Clock, TokioClock};
use smtp_relay::deliver::{Deliverer, DeliveryConfig};
use smtp_relay::inspect::QueueInspect;
use smtp_relay::queue::{MessageKind, NewMessage, QueuedEnvelope, QueuedRecipient, RecipientState};
use smtp_relay::receive::RelayAccess;
use smtp_relay::route::{HostPort, Router};
use smtp_relay::scheduler::{Scheduler, SchedulerConfig};
use support::fake_mx::{FakeMx, Script, ip};

/// How long the fake MX sits on the end of data.
const SLOW_DATA: Duration = Duration::from_millis(800);
/// The first retry after a deferral: short, so a held recipient that was
/// wrongly retried would be seen.
const RETRY: Duration = Duration::from_millis(100);

fn message() -> NewMessage {
    message_to(&["taken@x.test", "busy@x.test"], "held in flight")
}

fn message_to(recipients: &[&str], subject: &str) -> NewMessage {
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
            recipients: recipients
                .iter()
                .map(|r| QueuedRecipient::new(*r))
                .collect(),
        },
        body: Bytes::from(format!("Subject: {subject}\r\n\r\nbody\r\n")),
    }
}

async fn wait(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a scheduler over `store` delivering `x.test` to `mx`, retrying
/// after [`RETRY`], with at most `max_per_destination` connections (the
/// default when `None`); stops when the sender is used or dropped.
fn start_scheduler<S: QueueInspect>(
    store: S,
    mx: &FakeMx,
    max_per_destination: Option<usize>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let mut router = Router::new(RelayAccess::new(Vec::<String>::new(), Vec::new()));
    router.add_route(
        "x.test",
        HostPort {
            host: mx.addr().ip().to_string(),
            port: mx.addr().port(),
        },
    );
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let mut delivery = DeliveryConfig::new("relay.test");
    delivery.timeouts = smtp_client::Timeouts::uniform(Duration::from_secs(5));
    if let Some(max) = max_per_destination {
        delivery.max_per_destination = max;
    }
    let deliverer = Deliverer::new(delivery, router, None, None, Arc::clone(&clock));
    let mut config = SchedulerConfig::new("relay.test");
    config.retry.first = RETRY;
    config.retry.max = RETRY;
    let scheduler = Scheduler::new(store, deliverer, clock, config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        scheduler
            .run(async move {
                let _ = stopped.await;
            })
            .await;
    });
    (stop, running)
}

async fn held_while_in_flight<S: QueueInspect>(store: S, release_at_once: bool) {
    let mx = FakeMx::start(
        ip(1),
        Script::new()
            .no_starttls()
            .data_delay(SLOW_DATA)
            .reject_rcpt("busy@x.test", 451, "4.2.1", "mailbox busy, try later"),
    )
    .await
    .unwrap();
    let (stop, running) = start_scheduler(store.clone(), &mx, None);

    let id = store.enqueue(message()).await.unwrap();
    // The attempt is in flight once the body arrived: the fake MX now sits
    // on its reply for SLOW_DATA.
    assert!(
        mx.wait_until(Duration::from_secs(10), || mx.received().len() == 1)
            .await,
        "the attempt never reached DATA"
    );
    if release_at_once {
        // Held and released while the attempt runs: no second attempt
        // starts beside it.
        assert!(store.set_held(id, true, SystemTime::now()).await.unwrap());
        assert!(store.set_held(id, false, SystemTime::now()).await.unwrap());
        tokio::time::sleep(SLOW_DATA / 2).await;
        assert_eq!(mx.connections(), 1, "a second attempt started");
        assert_eq!(mx.rcpt_commands(), 2, "a second attempt started");
        let _ = stop.send(());
        running.await.unwrap();
        return;
    }
    assert!(store.set_held(id, true, SystemTime::now()).await.unwrap());

    // The attempt ends as it would have: one recipient delivered, the
    // other deferred, and the message still held.
    wait("the attempt in flight to be recorded", async || {
        let listed = store.get(id).await.unwrap().unwrap();
        matches!(listed.message.states[0], RecipientState::Delivered { .. })
    })
    .await;
    let listed = store.get(id).await.unwrap().unwrap();
    assert!(listed.held, "recording the attempt cleared the hold");
    assert!(
        matches!(&listed.message.states[1], RecipientState::Deferred { attempts: 1, last, .. }
            if last.diagnostic.starts_with("451")),
        "{:?}",
        listed.message.states[1]
    );
    let received = mx.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].recipients.len(), 1, "one recipient taken");
    assert_eq!(received[0].recipients[0].0, "taken@x.test");

    // Many retry intervals later, nothing was tried again.
    let rcpts = mx.rcpt_commands();
    let connections = mx.connections();
    tokio::time::sleep(RETRY * 10).await;
    assert_eq!(mx.rcpt_commands(), rcpts, "a held recipient was tried");
    assert_eq!(mx.connections(), connections, "a held message was tried");
    assert!(store.get(id).await.unwrap().unwrap().held);

    // Released, the deferred recipient is tried again (and only it).
    assert!(store.set_held(id, false, SystemTime::now()).await.unwrap());
    assert!(
        mx.wait_until(Duration::from_secs(10), || mx.rcpt_commands() > rcpts)
            .await,
        "the released recipient was never tried"
    );
    wait("the retry to be recorded", async || {
        let listed = store.get(id).await.unwrap().unwrap();
        listed.message.states[1].attempts() >= 2
    })
    .await;
    let listed = store.get(id).await.unwrap().unwrap();
    assert!(matches!(
        listed.message.states[0],
        RecipientState::Delivered { .. }
    ));
    assert!(!listed.held);
    assert_eq!(
        mx.received().len(),
        1,
        "the delivered recipient is not sent twice"
    );
    let _ = stop.send(());
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_hold_during_an_attempt_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let spool =
        smtp_relay::spool::Spool::open(dir.path(), smtp_relay::spool::Durability::Sync).unwrap();
    held_while_in_flight(spool.clone(), false).await;
    drop(spool);
    // The hold and the outcome are both on disk.
    let reopened =
        smtp_relay::spool::Spool::open(dir.path(), smtp_relay::spool::Durability::Sync).unwrap();
    let messages = reopened.snapshot();
    assert_eq!(messages.len(), 1);
    assert!(matches!(
        messages[0].states[0],
        RecipientState::Delivered { .. }
    ));
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hold_during_an_attempt_in_flight() {
    let Some(url) = pg_cluster::database().await else {
        return;
    };
    let store = smtp_relay::postgres::PgQueue::connect(smtp_relay::postgres::PgConfig::new(url))
        .await
        .unwrap();
    held_while_in_flight(store, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_release_during_an_attempt_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let spool =
        smtp_relay::spool::Spool::open(dir.path(), smtp_relay::spool::Durability::Sync).unwrap();
    held_while_in_flight(spool, true).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_release_during_an_attempt_in_flight() {
    let Some(url) = pg_cluster::database().await else {
        return;
    };
    let store = smtp_relay::postgres::PgQueue::connect(smtp_relay::postgres::PgConfig::new(url))
        .await
        .unwrap();
    held_while_in_flight(store, true).await;
}

/// A message claimed while its destination's only connection slot is
/// taken waits for the slot; held meanwhile, it is not attempted when the
/// slot frees, and goes once released.
async fn held_while_waiting_for_a_slot<S: QueueInspect>(store: S) {
    let mx = FakeMx::start(ip(1), Script::new().no_starttls().data_delay(SLOW_DATA))
        .await
        .unwrap();
    let (stop, running) = start_scheduler(store.clone(), &mx, Some(1));

    store
        .enqueue(message_to(&["first@x.test"], "first"))
        .await
        .unwrap();
    assert!(
        mx.wait_until(Duration::from_secs(10), || mx.received().len() == 1)
            .await,
        "the first attempt never reached DATA"
    );
    // The second message is claimed at once and waits for the slot the
    // first one holds for SLOW_DATA; it is held while it waits.
    let waiting = store
        .enqueue(message_to(&["second@x.test"], "second"))
        .await
        .unwrap();
    tokio::time::sleep(SLOW_DATA / 4).await;
    assert!(
        store
            .set_held(waiting, true, SystemTime::now())
            .await
            .unwrap()
    );

    // The slot frees; many retry intervals later the held message was not
    // sent.
    tokio::time::sleep(SLOW_DATA + RETRY * 10).await;
    assert_eq!(mx.received().len(), 1, "a held message was sent");
    assert_eq!(mx.rcpt_commands(), 1, "a held message was tried");
    let listed = store.get(waiting).await.unwrap().unwrap();
    assert!(listed.held);
    assert_eq!(listed.message.states[0].attempts(), 0, "{listed:?}");

    assert!(
        store
            .set_held(waiting, false, SystemTime::now())
            .await
            .unwrap()
    );
    assert!(
        mx.wait_until(Duration::from_secs(10), || mx.received().len() == 2)
            .await,
        "the released message was never sent"
    );
    assert_eq!(mx.received()[1].recipients[0].0, "second@x.test");
    let _ = stop.send(());
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_hold_while_waiting_for_a_slot() {
    let dir = tempfile::tempdir().unwrap();
    let spool =
        smtp_relay::spool::Spool::open(dir.path(), smtp_relay::spool::Durability::Sync).unwrap();
    held_while_waiting_for_a_slot(spool).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hold_while_waiting_for_a_slot() {
    let Some(url) = pg_cluster::database().await else {
        return;
    };
    let store = smtp_relay::postgres::PgQueue::connect(smtp_relay::postgres::PgConfig::new(url))
        .await
        .unwrap();
    held_while_waiting_for_a_slot(store).await;
}
