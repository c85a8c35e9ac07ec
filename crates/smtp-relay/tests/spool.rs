//! The spool: commit, claim, record, recover, and recovery from a log cut
//! at every octet of its last record.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use proptest::prelude::*;
use smtp_proto::command::{Notify, OriginalRecipient, Ret};
use smtp_relay::queue::{
    AttemptReport, MessageKind, NewMessage, QueueStore, QueuedEnvelope, QueuedRecipient,
    RecipientState,
};
use smtp_relay::spool::{Durability, Spool};

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
}

fn message(sender: &str, recipients: &[&str], body: &str) -> NewMessage {
    NewMessage {
        envelope: QueuedEnvelope {
            sender: Some(sender.to_owned()),
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

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

fn report(diagnostic: &str) -> AttemptReport {
    AttemptReport {
        remote_mta: Some("mx.example.net".to_owned()),
        diagnostic: diagnostic.to_owned(),
        at: at(60),
    }
}

#[tokio::test]
async fn committed_messages_and_states_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = {
        let spool = Spool::open(dir.path(), Durability::Sync).unwrap();
        let mut full = message(
            "a@example.com",
            &["b@example.net", "c@example.org"],
            "Subject: 1\r\n\r\none\r\n",
        );
        full.envelope.ret = Some(Ret::Headers);
        full.envelope.envid = Some("env-1".to_owned());
        full.envelope.smtputf8 = true;
        full.envelope.recipients[0].notify = Some(Notify::On {
            success: true,
            failure: false,
            delay: true,
        });
        full.envelope.recipients[0].orcpt = Some(OriginalRecipient {
            addr_type: "rfc822".to_owned(),
            address: "b@example.net".to_owned(),
        });
        let first = spool.enqueue(full).await.unwrap();
        let second = spool
            .enqueue(message("x@example.com", &["y@example.net"], "two\r\n"))
            .await
            .unwrap();
        assert_ne!(first, second);
        let claims = spool.claim_due(at(1), 10).await;
        assert_eq!(claims.len(), 2);
        assert_eq!(claims[0].recipients, vec![0, 1]);
        // Claimed recipients are not handed out twice.
        assert!(spool.claim_due(at(1), 10).await.is_empty());
        let deferred = RecipientState::Deferred {
            attempts: 1,
            next_attempt: at(300),
            last: report("451 4.3.0 try later"),
            warned: false,
        };
        spool
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
        spool
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
        // The second message is finished and left the queue.
        let left = spool.snapshot();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].states[1], deferred);
        assert_eq!(spool.next_due().await, Some(at(300)));
        assert!(spool.claim_due(at(299), 10).await.is_empty());
        assert_eq!(
            spool.body(first).await.unwrap(),
            "Subject: 1\r\n\r\none\r\n"
        );
        (first, second)
    };
    let spool = Spool::open(dir.path(), Durability::Sync).unwrap();
    assert_eq!(spool.recovery().messages, 1);
    assert_eq!(spool.recovery().pending_recipients, 1);
    assert_eq!(spool.recovery().truncated_bytes, 0);
    let messages = spool.snapshot();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].id, first);
    let envelope = &messages[0].envelope;
    assert_eq!(envelope.ret, Some(Ret::Headers));
    assert_eq!(envelope.envid.as_deref(), Some("env-1"));
    assert!(envelope.smtputf8);
    assert_eq!(
        envelope.recipients[0].notify,
        Some(Notify::On {
            success: true,
            failure: false,
            delay: true
        })
    );
    assert_eq!(
        envelope.recipients[0].orcpt.as_ref().unwrap().address,
        "b@example.net"
    );
    assert!(matches!(
        messages[0].states[0],
        RecipientState::Delivered { .. }
    ));
    assert!(matches!(
        messages[0].states[1],
        RecipientState::Deferred { attempts: 1, .. }
    ));
    assert_eq!(
        spool.body(first).await.unwrap(),
        "Subject: 1\r\n\r\none\r\n"
    );
    let claims = spool.claim_due(at(300), 10).await;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].recipients, vec![1]);
    // A released claim is due again.
    spool.release(first, &[1]).await;
    assert_eq!(spool.claim_due(at(300), 10).await.len(), 1);
    // New ids never repeat one the log still mentions.
    let third = spool
        .enqueue(message("a@example.com", &["b@example.net"], "3\r\n"))
        .await
        .unwrap();
    assert!(third > second);
}

#[tokio::test]
async fn finished_segments_are_deleted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), Durability::Os).unwrap();
        let id = spool
            .enqueue(message("a@example.com", &["b@example.net"], "x\r\n"))
            .await
            .unwrap();
        spool
            .record(
                id,
                vec![(
                    0,
                    RecipientState::Delivered {
                        last: report("250 ok"),
                    },
                )],
                Vec::new(),
            )
            .await
            .unwrap();
    }
    let spool = Spool::open(dir.path(), Durability::Os).unwrap();
    assert!(spool.snapshot().is_empty());
    // Only the fresh active segment is left.
    assert_eq!(segments(dir.path()).len(), 1);
}

#[tokio::test]
async fn a_long_deferred_message_is_copied_forward_so_old_segments_go() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with_segment_size(dir.path(), Durability::Os, 4096).unwrap();
    let old = spool
        .enqueue(message(
            "a@example.com",
            &["slow@example.net", "fast@example.net"],
            "the old one\r\n",
        ))
        .await
        .unwrap();
    let deferred = RecipientState::Deferred {
        attempts: 3,
        next_attempt: at(3600),
        last: report("451 4.3.0 later"),
        warned: true,
    };
    spool
        .record(
            old,
            vec![
                (0, deferred.clone()),
                (
                    1,
                    RecipientState::Delivered {
                        last: report("250 ok"),
                    },
                ),
            ],
            Vec::new(),
        )
        .await
        .unwrap();
    // Claimed while everything moves under it.
    assert_eq!(spool.claim_due(at(3600), 10).await.len(), 1);
    let filler = "x".repeat(1000);
    for n in 0..80 {
        let id = spool
            .enqueue(message(
                "a@example.com",
                &["b@example.net"],
                &format!("{n}{filler}\r\n"),
            ))
            .await
            .unwrap();
        spool
            .record(
                id,
                vec![(
                    0,
                    RecipientState::Delivered {
                        last: report("250 ok"),
                    },
                )],
                Vec::new(),
            )
            .await
            .unwrap();
    }
    let files = segments(dir.path()).len();
    // 80 KiB went through 4 KiB segments; the old message's segment did not
    // stay behind with every one after it.
    assert!(files <= 4, "{files} segments left");
    // Still claimed: not handed out twice.
    assert!(spool.claim_due(at(3600), 10).await.is_empty());
    assert_eq!(spool.body(old).await.unwrap(), "the old one\r\n");
    drop(spool);
    let spool = Spool::open_with_segment_size(dir.path(), Durability::Os, 4096).unwrap();
    let messages = spool.snapshot();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].id, old);
    assert_eq!(messages[0].states[0], deferred);
    assert!(matches!(
        messages[0].states[1],
        RecipientState::Delivered { .. }
    ));
    assert_eq!(spool.body(old).await.unwrap(), "the old one\r\n");
}

#[tokio::test]
async fn concurrent_enqueues_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), Durability::Sync).unwrap();
    let before = spool.commit_batches();
    let enqueues = (0..200).map(|n| {
        let spool = spool.clone();
        async move {
            spool
                .enqueue(message(
                    "a@example.com",
                    &["b@example.net"],
                    &format!("m{n}\r\n"),
                ))
                .await
                .unwrap()
        }
    });
    let ids = futures::future::join_all(enqueues).await;
    assert_eq!(ids.len(), 200);
    let batches = spool.commit_batches() - before;
    // All 200 requests were handed over before the first answer came back,
    // so the committer took them in a few batches, not one sync each.
    assert!(batches < 50, "{batches} commit batches for 200 messages");
    assert_eq!(spool.snapshot().len(), 200);
}

/// Many tasks on several threads commit at once, with segments so small
/// that the log rotates every few batches: every message acknowledged and
/// every outcome recorded comes back after a reopen, with no record cut
/// and its own body.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_commits_keep_the_log_whole_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with_segment_size(dir.path(), Durability::Sync, 4096).unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|task| {
            let spool = spool.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..10 {
                    let body = format!("task {task} message {n} {}\r\n", "x".repeat(150));
                    let id = spool
                        .enqueue(message(
                            "a@example.com",
                            &["b@example.net", "c@example.org"],
                            &body,
                        ))
                        .await
                        .unwrap();
                    // Half the messages get one recipient delivered.
                    if n % 2 == 0 {
                        spool
                            .record(
                                id,
                                vec![(
                                    0,
                                    RecipientState::Delivered {
                                        last: report("250 ok"),
                                    },
                                )],
                                Vec::new(),
                            )
                            .await
                            .unwrap();
                    }
                    ids.push((id, body, n % 2 == 0));
                }
                ids
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    // Many segments: the log rotated while requests kept arriving.
    assert!(segments(dir.path()).len() > 5, "{:?}", segments(dir.path()));
    drop(spool);
    let spool = Spool::open_with_segment_size(dir.path(), Durability::Sync, 4096).unwrap();
    assert_eq!(spool.recovery().truncated_bytes, 0);
    let messages = spool.snapshot();
    assert_eq!(messages.len(), acknowledged.len());
    for (id, body, delivered) in acknowledged {
        let message = messages
            .iter()
            .find(|m| m.id == id)
            .expect("an acknowledged message");
        assert_eq!(spool.body(id).await.unwrap(), body);
        assert_eq!(
            matches!(message.states[0], RecipientState::Delivered { .. }),
            delivered
        );
        assert_eq!(message.states[1], RecipientState::Queued);
    }
}

#[tokio::test]
async fn notices_commit_with_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), Durability::Sync).unwrap();
    let id = spool
        .enqueue(message("a@example.com", &["b@example.net"], "x\r\n"))
        .await
        .unwrap();
    let mut bounce = message("", &["a@example.com"], "bounce\r\n");
    bounce.envelope.sender = None;
    bounce.envelope.kind = MessageKind::Notification;
    spool
        .record(
            id,
            vec![(
                0,
                RecipientState::Failed {
                    last: report("550 no"),
                },
            )],
            vec![bounce],
        )
        .await
        .unwrap();
    drop(spool);
    let spool = Spool::open(dir.path(), Durability::Sync).unwrap();
    let messages = spool.snapshot();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].envelope.kind, MessageKind::Notification);
    assert_eq!(messages[0].envelope.sender, None);
    assert_eq!(spool.body(messages[0].id).await.unwrap(), "bounce\r\n");
}

/// Builds a spool holding two committed messages and a last record, and
/// returns the segment holding them and the offsets where the last record
/// starts and ends.
async fn spool_with_last_record(dir: &Path, last_is_update: bool) -> (PathBuf, u64, u64) {
    let spool = Spool::open(dir, Durability::Os).unwrap();
    let first = spool
        .enqueue(message("a@example.com", &["b@example.net"], "first\r\n"))
        .await
        .unwrap();
    spool
        .enqueue(message("a@example.com", &["c@example.net"], "second\r\n"))
        .await
        .unwrap();
    let segment = segments(dir).pop().unwrap();
    let start = std::fs::metadata(&segment).unwrap().len();
    if last_is_update {
        spool
            .record(
                first,
                vec![(
                    0,
                    RecipientState::Delivered {
                        last: report("250 ok"),
                    },
                )],
                Vec::new(),
            )
            .await
            .unwrap();
    } else {
        spool
            .enqueue(message(
                "a@example.com",
                &["d@example.net", "e@example.net"],
                "third\r\n",
            ))
            .await
            .unwrap();
    }
    let end = std::fs::metadata(&segment).unwrap().len();
    drop(spool);
    (segment, start, end)
}

async fn recover_cut_at_every_offset(last_is_update: bool) {
    let source = tempfile::tempdir().unwrap();
    let (segment, start, end) = spool_with_last_record(source.path(), last_is_update).await;
    let bytes = std::fs::read(&segment).unwrap();
    let name = segment.file_name().unwrap();
    for cut in start..=end {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), &bytes[..cut as usize]).unwrap();
        let spool = Spool::open(dir.path(), Durability::Os).unwrap();
        let messages = spool.snapshot();
        let complete = cut == end;
        let bodies: Vec<Bytes> = {
            let mut bodies = Vec::new();
            for m in &messages {
                bodies.push(spool.body(m.id).await.unwrap());
            }
            bodies
        };
        if last_is_update {
            // The update either happened entirely or not at all.
            assert_eq!(messages.len(), if complete { 1 } else { 2 }, "cut at {cut}");
        } else {
            assert_eq!(messages.len(), if complete { 3 } else { 2 }, "cut at {cut}");
            assert!(
                complete || bodies.iter().all(|b| b != "third\r\n"),
                "cut at {cut}"
            );
        }
        assert!(
            bodies.contains(&Bytes::from_static(b"second\r\n")),
            "cut at {cut}"
        );
        let partial = if complete { 0 } else { cut - start };
        assert_eq!(spool.recovery().truncated_bytes, partial, "cut at {cut}");
        // The cut spool goes on working and recovers again cleanly.
        spool
            .enqueue(message("a@example.com", &["f@example.net"], "after\r\n"))
            .await
            .unwrap();
        drop(spool);
        let again = Spool::open(dir.path(), Durability::Os).unwrap();
        assert_eq!(again.recovery().truncated_bytes, 0, "cut at {cut}");
        assert_eq!(again.snapshot().len(), messages.len() + 1, "cut at {cut}");
    }
}

#[tokio::test]
async fn a_message_record_cut_at_every_offset_recovers() {
    recover_cut_at_every_offset(false).await;
}

#[tokio::test]
async fn an_update_record_cut_at_every_offset_recovers() {
    recover_cut_at_every_offset(true).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// A flipped octet anywhere in the last record loses that record and
    /// nothing before it; a flip elsewhere never yields a wrong message.
    #[test]
    fn a_damaged_last_record_is_cut(flip in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let source = tempfile::tempdir().unwrap();
            let (segment, start, end) = spool_with_last_record(source.path(), false).await;
            let mut bytes = std::fs::read(&segment).unwrap();
            let at = start as usize + flip.index((end - start) as usize);
            bytes[at] ^= mask;
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(segment.file_name().unwrap()), &bytes).unwrap();
            let spool = Spool::open(dir.path(), Durability::Os).unwrap();
            let messages = spool.snapshot();
            prop_assert_eq!(messages.len(), 2);
            prop_assert_eq!(spool.recovery().truncated_bytes, end - start);
            Ok(())
        })?;
    }

    /// Whatever the envelope holds, it comes back as it went in.
    #[test]
    fn envelopes_round_trip(
        sender in proptest::option::of("[a-z]{1,8}@[a-z]{1,8}\\.example"),
        recipients in proptest::collection::vec("[a-zé]{1,8}@[a-z]{1,8}\\.example", 1..5),
        envid in proptest::option::of("[!-~]{1,20}"),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut new = message("x@y", &[], "");
            new.envelope.sender = sender.clone();
            new.envelope.envid = envid.clone();
            new.envelope.recipients = recipients.iter().map(QueuedRecipient::new).collect();
            new.body = Bytes::from(body.clone());
            let expected = new.envelope.clone();
            {
                let spool = Spool::open(dir.path(), Durability::Os).unwrap();
                spool.enqueue(new).await.unwrap();
            }
            let spool = Spool::open(dir.path(), Durability::Os).unwrap();
            let messages = spool.snapshot();
            prop_assert_eq!(messages.len(), 1);
            prop_assert_eq!(&*messages[0].envelope, &expected);
            prop_assert_eq!(spool.body(messages[0].id).await.unwrap(), Bytes::from(body.clone()));
            Ok(())
        })?;
    }
}
