//! One behavioural suite for every queue store: each case is written once,
//! generic over [`QueueStore`], and run against the spool and (with the
//! `postgres` feature) against PostgreSQL in a throwaway cluster.

#[cfg(feature = "postgres")]
mod pg_cluster;

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use smtp_proto::command::{BodyType, Notify, OriginalRecipient, Ret};
use smtp_relay::inspect::{self, Filter, QueueInspect, StateFilter};
use smtp_relay::queue::{
    AttemptReport, MessageKind, NewMessage, QueueStore, QueuedEnvelope, QueuedRecipient,
    RecipientState,
};

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
}

fn message(sender: Option<&str>, recipients: &[&str], body: &str) -> NewMessage {
    NewMessage {
        envelope: QueuedEnvelope {
            sender: sender.map(str::to_owned),
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

fn report(diagnostic: &str) -> AttemptReport {
    AttemptReport {
        remote_mta: Some("mx.example.net".to_owned()),
        diagnostic: diagnostic.to_owned(),
        at: at(60),
    }
}

/// Opens the store under test; `open` again reopens the same queue.
trait Harness {
    type Store: QueueInspect;
    async fn open(&self) -> Self::Store;
}

async fn claim_record_and_finish<H: Harness>(harness: H) {
    let store = harness.open().await;
    let first = store
        .enqueue(message(
            Some("a@example.com"),
            &["b@example.net", "c@example.org"],
            "Subject: 1\r\n\r\none\r\n",
        ))
        .await
        .unwrap();
    let second = store
        .enqueue(message(
            Some("x@example.com"),
            &["y@example.net"],
            "two\r\n",
        ))
        .await
        .unwrap();
    assert_ne!(first, second);
    let claims = store.claim_due(at(1), 10).await;
    assert_eq!(claims.len(), 2);
    let mine = claims.iter().find(|c| c.message.id == first).unwrap();
    assert_eq!(mine.recipients, vec![0, 1]);
    assert!(
        store.claim_due(at(1), 10).await.is_empty(),
        "claimed recipients are not handed out twice"
    );
    assert_eq!(
        store.body(first).await.unwrap(),
        "Subject: 1\r\n\r\none\r\n"
    );
    let deferred = RecipientState::Deferred {
        attempts: 1,
        next_attempt: at(300),
        last: report("451 4.3.0 try later"),
        warned: false,
    };
    store
        .record(
            first,
            vec![
                (
                    0,
                    RecipientState::Delivered {
                        last: report("250 ok"),
                    },
                ),
                (1, deferred.clone()),
            ],
            Vec::new(),
        )
        .await
        .unwrap();
    store
        .record(
            second,
            vec![(
                0,
                RecipientState::Failed {
                    last: report("550 5.1.1 no"),
                },
            )],
            Vec::new(),
        )
        .await
        .unwrap();
    let left = store.messages().await;
    assert_eq!(left.len(), 1, "the finished message left the queue");
    assert_eq!(left[0].id, first);
    assert_eq!(left[0].states[1], deferred);
    assert!(matches!(
        left[0].states[0],
        RecipientState::Delivered { .. }
    ));
    assert_eq!(store.next_due().await, Some(at(300)));
    assert!(store.claim_due(at(299), 10).await.is_empty());
    let again = store.claim_due(at(300), 10).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].recipients, vec![1]);
    assert_eq!(again[0].message.states[1], deferred);
    store
        .record(
            first,
            vec![(
                1,
                RecipientState::Delivered {
                    last: report("250 later"),
                },
            )],
            Vec::new(),
        )
        .await
        .unwrap();
    assert!(store.messages().await.is_empty());
    assert_eq!(store.next_due().await, None);
}

async fn released_claims_are_due_again<H: Harness>(harness: H) {
    let store = harness.open().await;
    let id = store
        .enqueue(message(
            Some("a@example.com"),
            &["b@x.test", "c@x.test"],
            "m\r\n",
        ))
        .await
        .unwrap();
    let claims = store.claim_due(at(1), 10).await;
    assert_eq!(claims[0].recipients, vec![0, 1]);
    store.release(id, &[1]).await;
    let again = store.claim_due(at(1), 10).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].recipients, vec![1]);
}

async fn every_envelope_field_survives_a_reopen<H: Harness>(harness: H) {
    let store = harness.open().await;
    let mut full = message(
        Some("a@example.com"),
        &["b@example.net", "c@example.org", "d@example.org"],
        "Subject: full\r\n\r\nbody\r\n",
    );
    full.envelope.ret = Some(Ret::Headers);
    full.envelope.envid = Some("env-1".to_owned());
    full.envelope.smtputf8 = true;
    full.envelope.body_type = Some(BodyType::EightBitMime);
    full.envelope.requiretls = true;
    full.envelope.recipients[0].notify = Some(Notify::On {
        success: true,
        failure: false,
        delay: true,
    });
    full.envelope.recipients[0].orcpt = Some(OriginalRecipient {
        addr_type: "rfc822".to_owned(),
        address: "b@example.net".to_owned(),
    });
    full.envelope.recipients[1].notify = Some(Notify::Never);
    let expected = full.envelope.clone();
    let id = store.enqueue(full).await.unwrap();
    let claims = store.claim_due(at(1), 10).await;
    let deferred = RecipientState::Deferred {
        attempts: 2,
        next_attempt: at(900),
        last: report("421 4.4.2 busy"),
        warned: true,
    };
    store
        .record(id, vec![(2, deferred.clone())], Vec::new())
        .await
        .unwrap();
    store.release(id, &claims[0].recipients[..2]).await;
    drop(store);
    let store = harness.open().await;
    let messages = store.messages().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(*messages[0].envelope, expected);
    assert_eq!(messages[0].states[2], deferred);
    assert_eq!(messages[0].states[0], RecipientState::Queued);
    assert_eq!(store.recovery().messages, 1);
    assert_eq!(store.recovery().pending_recipients, 3);
}

async fn notices_commit_with_the_outcome<H: Harness>(harness: H) {
    let store = harness.open().await;
    let id = store
        .enqueue(message(Some("a@example.com"), &["b@x.test"], "m\r\n"))
        .await
        .unwrap();
    store.claim_due(at(1), 10).await;
    let mut notice = message(None, &["a@example.com"], "a bounce\r\n");
    notice.envelope.kind = MessageKind::Notification;
    store
        .record(
            id,
            vec![(
                0,
                RecipientState::Failed {
                    last: report("550 5.1.1 no"),
                },
            )],
            vec![notice],
        )
        .await
        .unwrap();
    let messages = store.messages().await;
    assert_eq!(messages.len(), 1, "only the notice is left");
    assert_eq!(messages[0].envelope.kind, MessageKind::Notification);
    assert_eq!(messages[0].envelope.sender, None);
    assert_eq!(store.body(messages[0].id).await.unwrap(), "a bounce\r\n");
}

async fn concurrent_enqueues_are_all_committed<H: Harness>(harness: H) {
    let store = harness.open().await;
    let tasks: Vec<_> = (0..64)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .enqueue(message(
                        Some("a@example.com"),
                        &["b@x.test"],
                        &format!("message {n}\r\n"),
                    ))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        assert!(ids.insert(task.await.unwrap()), "ids are unique");
    }
    drop(store);
    let store = harness.open().await;
    let messages = store.messages().await;
    assert_eq!(messages.len(), 64);
    assert!(messages.iter().all(|m| ids.contains(&m.id)));
    let claims = store.claim_due(at(1), 1000).await;
    assert_eq!(claims.len(), 64);
}

async fn claims_are_bounded_by_max<H: Harness>(harness: H) {
    let store = harness.open().await;
    for n in 0..10 {
        store
            .enqueue(message(
                Some("a@example.com"),
                &["b@x.test", "c@y.test"],
                &format!("m{n}\r\n"),
            ))
            .await
            .unwrap();
    }
    let first = store.claim_due(at(1), 4).await;
    assert_eq!(first.len(), 4);
    assert!(first.iter().all(|c| c.recipients == vec![0, 1]));
    let rest = store.claim_due(at(1), 100).await;
    assert_eq!(rest.len(), 6);
}

async fn listing_filters_and_pages<H: Harness>(harness: H) {
    let store = harness.open().await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let sender = if i % 2 == 0 {
            "a@example.com"
        } else {
            "b@example.com"
        };
        let recipient = format!("r{i}@d{}.test", i % 3);
        ids.push(
            store
                .enqueue(message(Some(sender), &[&recipient], &format!("m{i}\r\n")))
                .await
                .unwrap(),
        );
    }
    let now = at(30 * 60);
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(&Filter::default(), cursor, 10, now)
            .await
            .unwrap();
        assert!(page.messages.len() <= 10);
        seen.extend(page.messages.iter().map(|l| l.message.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every message once, in order");
    let count = |filter: Filter, now| {
        let store = store.clone();
        async move {
            store
                .list(&filter, None, 1000, now)
                .await
                .unwrap()
                .messages
                .len()
        }
    };
    let domain = Filter {
        domain: Some("D0.test".to_owned()),
        ..Filter::default()
    };
    assert_eq!(count(domain, now).await, 9);
    let sender = Filter {
        sender: Some("<b@example.com>".to_owned()),
        ..Filter::default()
    };
    assert_eq!(count(sender, now).await, 12);
    let recipient = Filter {
        recipient: Some("r7@d1.test".to_owned()),
        ..Filter::default()
    };
    assert_eq!(count(recipient, now).await, 1);
    let old = Filter {
        older_than: Some(Duration::from_secs(3600)),
        ..Filter::default()
    };
    assert_eq!(count(old.clone(), now).await, 0);
    assert_eq!(count(old, at(2 * 3600)).await, 25);
    let deferred = Filter {
        state: Some(StateFilter::Deferred),
        ..Filter::default()
    };
    assert_eq!(count(deferred.clone(), now).await, 0);
    store.claim_due(at(1), 1).await;
    store
        .record(
            ids[0],
            vec![(
                0,
                RecipientState::Deferred {
                    attempts: 1,
                    next_attempt: at(3600),
                    last: report("451 4.3.0 later"),
                    warned: false,
                },
            )],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(count(deferred, now).await, 1);
    let queued = Filter {
        state: Some(StateFilter::Queued),
        ..Filter::default()
    };
    assert_eq!(count(queued, now).await, 24);
    let summary = store.summary(now).await.unwrap();
    assert_eq!(
        summary.domains["d0.test"][3], 9,
        "30 minutes old: the 20-40 bucket"
    );
    assert_eq!(summary.domains["d1.test"].iter().sum::<u64>(), 8);
    assert_eq!(summary.domains["d2.test"].iter().sum::<u64>(), 8);
    assert_eq!((summary.queued, summary.deferred, summary.held), (24, 1, 0));
    assert_eq!(summary.oldest, Some(at(0)));
}

async fn held_messages_wait_until_released<H: Harness>(harness: H) {
    let store = harness.open().await;
    let id = store
        .enqueue(message(
            Some("a@example.com"),
            &["b@x.test", "c@y.test"],
            "m\r\n",
        ))
        .await
        .unwrap();
    assert!(store.set_held(id, true, at(1)).await.unwrap());
    assert!(store.claim_due(at(100_000), 10).await.is_empty(), "held");
    let listed = store.get(id).await.unwrap().unwrap();
    assert!(listed.held);
    let held = Filter {
        state: Some(StateFilter::Held),
        ..Filter::default()
    };
    assert_eq!(
        store
            .list(&held, None, 10, at(2))
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
    assert_eq!(store.summary(at(2)).await.unwrap().held, 2);
    drop(store);
    let store = harness.open().await;
    assert!(
        store.claim_due(at(100_000), 10).await.is_empty(),
        "still held after a reopen"
    );
    assert!(store.set_held(id, false, at(5)).await.unwrap());
    assert!(!store.get(id).await.unwrap().unwrap().held);
    let claims = store.claim_due(at(5), 10).await;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].recipients, vec![0, 1]);
    assert!(
        !store
            .set_held(smtp_relay::queue::MessageId(999_999), true, at(5))
            .await
            .unwrap()
    );
}

async fn deleting_bounces_or_not<H: Harness>(harness: H) {
    let store = harness.open().await;
    let quiet = store
        .enqueue(message(Some("a@example.com"), &["b@x.test"], "quiet\r\n"))
        .await
        .unwrap();
    let loud = store
        .enqueue(message(
            Some("a@example.com"),
            &["b@x.test", "c@y.test"],
            "Subject: loud\r\n\r\nloud\r\n",
        ))
        .await
        .unwrap();
    let bounce = store
        .enqueue(message(None, &["b@x.test"], "a bounce\r\n"))
        .await
        .unwrap();
    assert!(inspect::delete(&store, quiet, None, at(10)).await.unwrap());
    assert!(
        inspect::delete(&store, loud, Some("relay.test"), at(10))
            .await
            .unwrap()
    );
    assert!(
        inspect::delete(&store, bounce, Some("relay.test"), at(10))
            .await
            .unwrap()
    );
    assert!(
        !inspect::delete(&store, quiet, None, at(10)).await.unwrap(),
        "gone"
    );
    let left = store.messages().await;
    assert_eq!(left.len(), 1, "one bounce, for the loud message only");
    let notice = &left[0];
    assert_eq!(notice.envelope.sender, None);
    assert_eq!(notice.envelope.kind, MessageKind::Notification);
    assert_eq!(notice.envelope.recipients[0].address, "a@example.com");
    let body = store.body(notice.id).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(text.contains("Final-Recipient: rfc822; c@y.test"), "{text}");
    assert!(text.contains("Status: 5.7.1"), "{text}");
}

async fn flush_makes_deferred_mail_due<H: Harness>(harness: H) {
    let store = harness.open().await;
    let id = store
        .enqueue(message(
            Some("a@example.com"),
            &["b@x.test", "c@y.test"],
            "m\r\n",
        ))
        .await
        .unwrap();
    store.claim_due(at(1), 10).await;
    let later = |n| RecipientState::Deferred {
        attempts: 1,
        next_attempt: at(n),
        last: report("451 4.3.0 later"),
        warned: false,
    };
    store
        .record(id, vec![(0, later(3000)), (1, later(3000))], Vec::new())
        .await
        .unwrap();
    assert!(store.claim_due(at(10), 10).await.is_empty());
    assert_eq!(store.flush(Some("X.test"), at(10)).await.unwrap(), 1);
    let claims = store.claim_due(at(10), 10).await;
    assert_eq!(claims[0].recipients, vec![0], "only the flushed domain");
    assert_eq!(store.flush(None, at(10)).await.unwrap(), 1);
    assert_eq!(store.claim_due(at(10), 10).await[0].recipients, vec![1]);
}

macro_rules! suite {
    ($harness:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn claim_record_and_finish() {
            if let Some(h) = $harness {
                super::claim_record_and_finish(h).await;
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn released_claims_are_due_again() {
            if let Some(h) = $harness {
                super::released_claims_are_due_again(h).await;
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn every_envelope_field_survives_a_reopen() {
            if let Some(h) = $harness {
                super::every_envelope_field_survives_a_reopen(h).await;
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn notices_commit_with_the_outcome() {
            if let Some(h) = $harness {
                super::notices_commit_with_the_outcome(h).await;
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_enqueues_are_all_committed() {
            if let Some(h) = $harness {
                super::concurrent_enqueues_are_all_committed(h).await;
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn listing_filters_and_pages() {
            if let Some(h) = $harness {
                super::listing_filters_and_pages(h).await;
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn held_messages_wait_until_released() {
            if let Some(h) = $harness {
                super::held_messages_wait_until_released(h).await;
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn deleting_bounces_or_not() {
            if let Some(h) = $harness {
                super::deleting_bounces_or_not(h).await;
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn flush_makes_deferred_mail_due() {
            if let Some(h) = $harness {
                super::flush_makes_deferred_mail_due(h).await;
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn claims_are_bounded_by_max() {
            if let Some(h) = $harness {
                super::claims_are_bounded_by_max(h).await;
            }
        }
    };
}

mod spool {
    use smtp_relay::spool::{Durability, Spool};

    pub(crate) struct SpoolHarness(tempfile::TempDir);

    impl super::Harness for SpoolHarness {
        type Store = Spool;
        async fn open(&self) -> Spool {
            Spool::open(self.0.path(), Durability::Sync).unwrap()
        }
    }

    fn harness() -> Option<SpoolHarness> {
        Some(SpoolHarness(tempfile::tempdir().unwrap()))
    }

    suite!(harness());
}

#[cfg(feature = "postgres")]
mod postgres {
    use smtp_relay::postgres::{PgConfig, PgQueue};

    pub(crate) struct PgHarness(String);

    impl super::Harness for PgHarness {
        type Store = PgQueue;
        async fn open(&self) -> PgQueue {
            PgQueue::connect(PgConfig::new(self.0.clone()))
                .await
                .unwrap()
        }
    }

    async fn harness() -> Option<PgHarness> {
        super::pg_cluster::database().await.map(PgHarness)
    }

    suite!(harness().await);
}
