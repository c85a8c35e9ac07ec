//! The relay end to end on loopback: submission with smtp-client, delivery
//! to scripted smtp-server fake MXs over static routes, retries, expiry,
//! notifications parsed with a MIME parser, relay access.

mod support;

use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders};
use smtp_client::{Envelope, Notify, Recipient, Ret};
use smtp_relay::inspect::QueueInspect;
use smtp_relay::queue::{QueueStore, RecipientState};
use smtp_relay::scheduler::SchedulerConfig;
use support::fake_mx::{FakeMx, Script, ip};
use support::relay::{Raw, Relay, RelayOptions, address, all_deferred, submit, wait_for};

const MESSAGE: &str = "From: alice@sender.test\r\nTo: bob@remote.test\r\nSubject: hello\r\n\r\nbody line\r\n..leading dot\r\n";

fn envelope(from: Option<&str>, to: &[&str]) -> Envelope {
    let to = to.iter().map(|t| address(t));
    match from {
        Some(from) => Envelope::new(address(from), to),
        None => Envelope::null_sender(to),
    }
    .unwrap()
}

/// The fields of one block of a delivery-status part.
type Block = Vec<(String, String)>;

/// Returns the delivery-status part's fields of a notification, one map of
/// field name to value per block (message block first).
fn status_blocks(raw: &[u8]) -> (String, Vec<Block>, String) {
    let message = MessageParser::default().parse(raw).expect("a MIME message");
    let content_type = message.content_type().expect("a content type");
    assert_eq!(content_type.ctype(), "multipart");
    assert_eq!(content_type.subtype(), Some("report"));
    assert_eq!(
        content_type.attribute("report-type"),
        Some("delivery-status")
    );
    let mut status = None;
    let mut original_type = String::new();
    for part in message.parts.iter().skip(1) {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let name = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""));
        if name.ends_with("delivery-status") {
            let text = std::str::from_utf8(
                &raw[part.raw_body_offset() as usize..part.raw_end_offset() as usize],
            )
            .unwrap()
            .to_owned();
            status = Some(text);
        } else if name.starts_with("message/") || name.starts_with("text/rfc822") {
            original_type = name;
        }
    }
    let status = status.expect("a delivery-status part");
    let blocks = status
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            block
                .lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                .collect()
        })
        .collect();
    let subject = message.subject().unwrap_or("").to_owned();
    (subject, blocks, original_type)
}

fn field<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A relay routing `remote.test` to `mx` and `sender.test` (where
/// notifications go) to `sender_mx`.
async fn relay_with_notices(dir: &std::path::Path, mx: &FakeMx, sender_mx: &FakeMx) -> Relay {
    Relay::start(
        dir,
        RelayOptions {
            routes: vec![
                ("remote.test".into(), mx.addr()),
                ("sender.test".into(), sender_mx.addr()),
            ],
            ..RelayOptions::default()
        },
    )
    .await
}

#[tokio::test]
async fn relays_byte_for_byte_with_a_received_header() {
    let mx = FakeMx::start(ip(1), Script::plain()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            routes: vec![("remote.test".into(), mx.addr())],
            ..RelayOptions::default()
        },
    )
    .await;
    let result = submit(
        relay.addr,
        &envelope(
            Some("alice@sender.test"),
            &["bob@remote.test", "carol@remote.test", "dave@REMOTE.test"],
        ),
        MESSAGE,
    )
    .await
    .unwrap();
    assert!(result.is_complete());
    wait_for("delivery", || mx.accepted().len() == 1).await;
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    let delivered = &mx.accepted()[0];
    // One transaction for all recipients of the destination.
    assert_eq!(delivered.recipients.len(), 3);
    assert_eq!(delivered.from.as_deref(), Some("alice@sender.test"));
    let body = String::from_utf8(delivered.body.clone()).unwrap();
    assert!(
        body.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby relay.test with ESMTP id "
        ),
        "{body}"
    );
    // Everything after the trace header is the message as submitted.
    let (_, rest) = body.split_once("+0000\r\n").unwrap();
    assert_eq!(rest, MESSAGE);
    relay.stop().await;
}

#[tokio::test]
async fn dsn_parameters_and_smtputf8_are_passed_on() {
    let mx = FakeMx::start(ip(1), Script::new().no_starttls())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            routes: vec![("remote.test".into(), mx.addr())],
            ..RelayOptions::default()
        },
    )
    .await;
    let envelope = Envelope::builder()
        .from(address("alice@sender.test"))
        .recipient(
            Recipient::from(address("jörg@remote.test"))
                .notify(Notify::On {
                    success: false,
                    failure: true,
                    delay: true,
                })
                .orcpt("utf-8", "jörg@remote.test"),
        )
        .ret(Ret::Headers)
        .envid("ENV-42")
        .smtputf8(true)
        .build()
        .unwrap();
    submit(relay.addr, &envelope, "Subject: grüße\r\n\r\nHallo\r\n")
        .await
        .unwrap();
    wait_for("delivery", || mx.accepted().len() == 1).await;
    let delivered = &mx.accepted()[0];
    assert!(delivered.mail.smtputf8);
    assert_eq!(delivered.mail.ret, Some(Ret::Headers));
    assert_eq!(delivered.mail.envid.as_deref(), Some("ENV-42"));
    let (rcpt, params) = &delivered.recipients[0];
    assert_eq!(rcpt, "jörg@remote.test");
    assert_eq!(
        params.notify,
        Some(Notify::On {
            success: false,
            failure: true,
            delay: true
        })
    );
    assert_eq!(params.orcpt.as_ref().unwrap().address, "jörg@remote.test");
    relay.stop().await;
}

#[tokio::test]
async fn permanent_failures_bounce_once_per_batch_with_every_field() {
    let mx = FakeMx::start(
        ip(1),
        Script::plain()
            .reject_rcpt("bad1@remote.test", 550, "5.1.1", "scripted refusal")
            .reject_rcpt("bad2@remote.test", 553, "5.1.3", "scripted refusal"),
    )
    .await
    .unwrap();
    let sender_mx = FakeMx::start(ip(1), Script::plain()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_notices(dir.path(), &mx, &sender_mx).await;
    let envelope = Envelope::builder()
        .from(address("alice@sender.test"))
        .to(address("good@remote.test"))
        .recipient(
            Recipient::from(address("bad1@remote.test")).orcpt("rfc822", "orig1@remote.test"),
        )
        .to(address("bad2@remote.test"))
        .envid("E1")
        .build()
        .unwrap();
    submit(relay.addr, &envelope, MESSAGE).await.unwrap();
    wait_for("the bounce", || sender_mx.accepted().len() == 1).await;
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    assert_eq!(mx.accepted().len(), 1);
    assert_eq!(mx.accepted()[0].recipients.len(), 1);
    let bounces = sender_mx.accepted();
    assert_eq!(bounces.len(), 1, "one bounce for both failures");
    let bounce = &bounces[0];
    assert_eq!(bounce.from, None, "a bounce has the null reverse-path");
    assert_eq!(bounce.recipients[0].0, "alice@sender.test");
    let body = String::from_utf8(bounce.body.clone()).unwrap();
    let raw = body.as_str();
    let (subject, blocks, original) = status_blocks(raw.as_bytes());
    assert!(subject.contains("(Failure)"), "{subject}");
    assert_eq!(original, "message/rfc822");
    assert_eq!(blocks.len(), 3);
    assert_eq!(field(&blocks[0], "Reporting-MTA"), Some("dns; relay.test"));
    assert_eq!(field(&blocks[0], "Original-Envelope-Id"), Some("E1"));
    assert!(field(&blocks[0], "Arrival-Date").is_some());
    let first = &blocks[1];
    assert_eq!(
        field(first, "Final-Recipient"),
        Some("rfc822; bad1@remote.test")
    );
    assert_eq!(
        field(first, "Original-Recipient"),
        Some("rfc822; orig1@remote.test")
    );
    assert_eq!(field(first, "Action"), Some("failed"));
    assert_eq!(field(first, "Status"), Some("5.1.1"));
    assert_eq!(
        field(first, "Remote-MTA"),
        Some(&*format!("dns; {}", mx.addr().ip()))
    );
    assert_eq!(
        field(first, "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 scripted refusal")
    );
    assert!(field(first, "Last-Attempt-Date").is_some());
    let second = &blocks[2];
    assert_eq!(
        field(second, "Final-Recipient"),
        Some("rfc822; bad2@remote.test")
    );
    assert_eq!(field(second, "Status"), Some("5.1.3"));
    assert_eq!(field(second, "Original-Recipient"), None);
    // The whole original message is returned (no RET=HDRS).
    assert!(raw.contains("\r\nbody line\r\n"));
    relay.stop().await;
}

#[tokio::test]
async fn ret_hdrs_returns_only_the_header_section() {
    let mx = FakeMx::start(
        ip(1),
        Script::plain().reject_rcpt("bad@remote.test", 550, "5.1.1", "scripted refusal"),
    )
    .await
    .unwrap();
    let sender_mx = FakeMx::start(ip(1), Script::plain()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_notices(dir.path(), &mx, &sender_mx).await;
    let envelope = Envelope::builder()
        .from(address("alice@sender.test"))
        .to(address("bad@remote.test"))
        .ret(Ret::Headers)
        .build()
        .unwrap();
    submit(relay.addr, &envelope, MESSAGE).await.unwrap();
    wait_for("the bounce", || sender_mx.accepted().len() == 1).await;
    let body = String::from_utf8(sender_mx.accepted()[0].body.clone()).unwrap();
    let raw = body.as_str();
    let (_, _, original) = status_blocks(raw.as_bytes());
    assert_eq!(original, "text/rfc822-headers");
    assert!(raw.contains("Subject: hello\r\n"));
    assert!(!raw.contains("body line"));
    relay.stop().await;
}

#[tokio::test]
async fn notify_never_and_the_null_sender_get_no_bounce() {
    let mx = FakeMx::start(
        ip(1),
        Script::plain().reject_rcpt("bad@remote.test", 550, "5.1.1", "scripted refusal"),
    )
    .await
    .unwrap();
    let sender_mx = FakeMx::start(ip(1), Script::plain()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_notices(dir.path(), &mx, &sender_mx).await;
    let never = Envelope::builder()
        .from(address("alice@sender.test"))
        .recipient(Recipient::from(address("bad@remote.test")).notify(Notify::Never))
        .build()
        .unwrap();
    let result = submit(relay.addr, &never, MESSAGE).await.unwrap();
    assert!(result.is_complete());
    submit(relay.addr, &envelope(None, &["bad@remote.test"]), MESSAGE)
        .await
        .unwrap();
    wait_for("both messages to fail", || {
        relay.messages().is_empty() && mx.connections() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(relay.messages().is_empty(), "nothing is queued");
    assert!(sender_mx.accepted().is_empty(), "no bounce was sent");
    assert_eq!(sender_mx.connections(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn a_bounce_that_fails_is_never_bounced() {
    // The sender's own domain refuses everything: the bounce fails too, and
    // that failure produces nothing.
    let mx = FakeMx::start(
        ip(1),
        Script::plain().reject_rcpt("bob@remote.test", 550, "5.1.1", "scripted refusal"),
    )
    .await
    .unwrap();
    let sender_mx = FakeMx::start(
        ip(1),
        Script::plain().reject_rcpt("alice@sender.test", 550, "5.1.1", "scripted refusal"),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_notices(dir.path(), &mx, &sender_mx).await;
    submit(
        relay.addr,
        &envelope(Some("alice@sender.test"), &["bob@remote.test"]),
        MESSAGE,
    )
    .await
    .unwrap();
    wait_for("the bounce attempt", || sender_mx.connections() >= 1).await;
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(relay.messages().is_empty());
    assert_eq!(sender_mx.connections(), 1, "exactly one bounce attempt");
    relay.stop().await;
}

#[tokio::test]
async fn temporary_failures_are_retried_with_backoff() {
    let mx = FakeMx::start(ip(1), Script::plain().temp_fail_data(2))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            routes: vec![("remote.test".into(), mx.addr())],
            ..RelayOptions::default()
        },
    )
    .await;
    submit(
        relay.addr,
        &envelope(Some("alice@sender.test"), &["bob@remote.test"]),
        MESSAGE,
    )
    .await
    .unwrap();
    wait_for("the first attempt", || {
        all_deferred(&relay.messages()) && !relay.messages().is_empty()
    })
    .await;
    let start = support::relay::start_time();
    let RecipientState::Deferred {
        attempts,
        next_attempt,
        last,
        ..
    } = relay.messages()[0].states[0].clone()
    else {
        panic!()
    };
    assert_eq!(attempts, 1);
    assert_eq!(last.diagnostic, "451 4.3.0 scripted temporary failure");
    let wait = next_attempt.duration_since(start).unwrap();
    // 5 minutes ±10 %.
    assert!(
        wait >= Duration::from_secs(270) && wait <= Duration::from_secs(330),
        "{wait:?}"
    );
    // Nothing happens before the next attempt is due.
    relay.advance(Duration::from_secs(260)).await;
    assert_eq!(mx.received().len(), 1);
    relay.advance(Duration::from_secs(80)).await;
    wait_for("the second attempt", || mx.received().len() == 2).await;
    wait_for("the second deferral", || {
        matches!(
            relay.messages()[0].states[0],
            RecipientState::Deferred { attempts: 2, .. }
        )
    })
    .await;
    let RecipientState::Deferred { next_attempt, .. } = relay.messages()[0].states[0].clone()
    else {
        panic!()
    };
    // The second retry waits about twice as long.
    let wait = next_attempt.duration_since(relay.clock_now()).unwrap();
    assert!(
        wait >= Duration::from_secs(540) && wait <= Duration::from_secs(660),
        "{wait:?}"
    );
    relay.advance(Duration::from_secs(700)).await;
    wait_for("delivery", || mx.accepted().len() == 1).await;
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    assert_eq!(mx.received().len(), 3);
    relay.stop().await;
}

#[tokio::test]
async fn the_queue_lifetime_ends_in_a_bounce_and_delay_warnings_come_once() {
    let mx = FakeMx::start(ip(1), Script::plain().temp_fail_data(usize::MAX))
        .await
        .unwrap();
    let sender_mx = FakeMx::start(ip(1), Script::plain()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut scheduler = SchedulerConfig::new("relay.test");
    scheduler.retry.first = Duration::from_secs(600);
    scheduler.retry.max = Duration::from_secs(600);
    scheduler.delay_warning = Duration::from_secs(1500);
    scheduler.max_queue_lifetime = Duration::from_secs(3600);
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            routes: vec![
                ("remote.test".into(), mx.addr()),
                ("sender.test".into(), sender_mx.addr()),
            ],
            scheduler,
            ..RelayOptions::default()
        },
    )
    .await;
    let envelope = Envelope::builder()
        .from(address("alice@sender.test"))
        .recipient(
            Recipient::from(address("bob@remote.test")).notify(Notify::On {
                success: false,
                failure: true,
                delay: true,
            }),
        )
        .recipient(Recipient::from(address("carol@remote.test")))
        .build()
        .unwrap();
    submit(relay.addr, &envelope, MESSAGE).await.unwrap();
    wait_for("the first attempt", || mx.received().len() == 1).await;
    // Step through the hour; every attempt fails with 451.
    for step in 0..10 {
        let before = mx.received().len();
        relay.advance(Duration::from_secs(700)).await;
        if relay
            .messages()
            .iter()
            .any(|m| m.envelope.recipients[0].address == "bob@remote.test")
        {
            wait_for("another attempt", || mx.received().len() > before).await;
        }
        wait_for("the attempt to be recorded", || {
            relay
                .messages()
                .iter()
                .filter(|m| m.envelope.recipients[0].address == "bob@remote.test")
                .all(|m| {
                    m.states
                        .iter()
                        .all(|s| !matches!(s, RecipientState::Queued))
                })
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if step == 2 {
            // 25 minutes passed at the third retry: one delay warning.
            wait_for("the delay warning", || sender_mx.accepted().len() == 1).await;
        }
        if relay.messages().is_empty() {
            break;
        }
    }
    wait_for("expiry", || relay.messages().is_empty()).await;
    wait_for("the bounce", || sender_mx.accepted().len() == 2).await;
    let delivered = sender_mx.accepted();
    let subjects: Vec<(String, Vec<Block>)> = delivered
        .iter()
        .map(|d| {
            let body = String::from_utf8(d.body.clone()).unwrap();
            let raw = body.as_str();
            let (subject, blocks, _) = status_blocks(raw.as_bytes());
            (subject, blocks)
        })
        .collect();
    let (delay_subject, delay) = &subjects[0];
    assert!(delay_subject.contains("(Delay)"), "{delay_subject}");
    // Only bob asked for delay warnings.
    assert_eq!(delay.len(), 2);
    assert_eq!(
        field(&delay[1], "Final-Recipient"),
        Some("rfc822; bob@remote.test")
    );
    assert_eq!(field(&delay[1], "Action"), Some("delayed"));
    assert_eq!(field(&delay[1], "Status"), Some("4.3.0"));
    let (bounce_subject, bounce) = &subjects[1];
    assert!(bounce_subject.contains("(Failure)"), "{bounce_subject}");
    // Both recipients expire together: one bounce naming both.
    assert_eq!(bounce.len(), 3);
    for block in &bounce[1..] {
        assert_eq!(field(block, "Action"), Some("failed"));
        assert_eq!(field(block, "Status"), Some("5.4.7"));
        assert_eq!(
            field(block, "Diagnostic-Code"),
            Some("smtp; 451 4.3.0 scripted temporary failure")
        );
    }
    relay.stop().await;
}

/// The MAIL and RCPT lines the DSN tests submit, exactly as a client wrote
/// them: every DSN parameter, `ORCPT` with an xtext-encoded `+`.
const DSN_MAIL: &str = "MAIL FROM:<alice@sender.test> RET=HDRS ENVID=QQ+2B314";
const DSN_RCPTS: [&str; 2] = [
    "RCPT TO:<bob@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+2Bold@remote.test",
    "RCPT TO:<carol@remote.test> NOTIFY=NEVER",
];

/// Submits `MESSAGE` on a raw session with exactly these MAIL and RCPT
/// lines.
async fn submit_lines(relay: std::net::SocketAddr, mail: &str, rcpts: &[&str]) {
    let mut raw = Raw::connect_from("127.0.0.1", relay).await;
    assert!(raw.command("EHLO client.test").await.starts_with("250"));
    assert!(raw.command(mail).await.starts_with("250"), "{mail}");
    for rcpt in rcpts {
        assert!(raw.command(rcpt).await.starts_with("250"), "{rcpt}");
    }
    assert!(raw.command("DATA").await.starts_with("354"));
    let reply = raw.command(&format!("{MESSAGE}.")).await;
    assert!(reply.starts_with("250"), "{reply}");
    assert!(raw.command("QUIT").await.starts_with("221"));
}

#[tokio::test]
async fn a_next_hop_offering_dsn_gets_the_parameters_and_no_success_notice_is_sent() {
    // RFC 3461 §5.2.1: the parameters go on, byte for byte, and the next
    // hop is the one to report success.
    let mx = FakeMx::start(ip(1), Script::new().no_starttls())
        .await
        .unwrap();
    let sender_mx = FakeMx::start(ip(1), Script::new().no_starttls())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_notices(dir.path(), &mx, &sender_mx).await;
    submit_lines(relay.addr, DSN_MAIL, &DSN_RCPTS).await;
    assert!(mx.wait_accepted(1, Duration::from_secs(10)).await);
    // The notice would be queued with the delivery's outcome: an empty
    // queue means none was made.
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    assert_eq!(mx.commands_starting("RCPT"), DSN_RCPTS);
    let mail = &mx.commands_starting("MAIL")[0];
    assert!(mail.starts_with("MAIL FROM:<alice@sender.test> "), "{mail}");
    assert!(mail.contains(" RET=HDRS"), "{mail}");
    assert!(mail.contains(" ENVID=QQ+2B314"), "{mail}");
    assert!(sender_mx.received().is_empty(), "no success notice");
    assert_eq!(sender_mx.connections(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn a_next_hop_without_dsn_gets_none_and_the_relay_reports_relayed() {
    // RFC 3461 §5.2.2: NOTIFY=SUCCESS through a next hop without DSN is
    // answered here, with `Action: relayed`.
    let without_dsn = smtp_server::Extensions {
        dsn: false,
        ..smtp_server::Extensions::default()
    };
    let mx = FakeMx::start(ip(1), Script::new().no_starttls().extensions(without_dsn))
        .await
        .unwrap();
    let sender_mx = FakeMx::start(ip(1), Script::new().no_starttls())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_notices(dir.path(), &mx, &sender_mx).await;
    submit_lines(relay.addr, DSN_MAIL, &DSN_RCPTS).await;
    assert!(mx.wait_accepted(1, Duration::from_secs(10)).await);
    assert!(sender_mx.wait_accepted(1, Duration::from_secs(10)).await);
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    // Nothing a server without DSN does not know.
    assert_eq!(
        mx.commands_starting("RCPT"),
        ["RCPT TO:<bob@remote.test>", "RCPT TO:<carol@remote.test>"]
    );
    let mail = &mx.commands_starting("MAIL")[0];
    assert!(!mail.contains("RET=") && !mail.contains("ENVID="), "{mail}");
    let notices = sender_mx.accepted();
    assert_eq!(notices.len(), 1, "one notice");
    let notice = &notices[0];
    assert_eq!(notice.from, None, "from the null reverse-path");
    assert_eq!(notice.recipients[0].0, "alice@sender.test");
    let (subject, blocks, original) = status_blocks(&notice.body);
    assert_eq!(subject, "Delivery Status Notification (Success)");
    // RFC 3461 §6.3: the notice carries ENVID and ORCPT xtext-decoded.
    assert_eq!(field(&blocks[0], "Original-Envelope-Id"), Some("QQ+314"));
    // Only bob asked for it; carol said NEVER.
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    assert_eq!(
        field(&blocks[1], "Final-Recipient"),
        Some("rfc822; bob@remote.test")
    );
    assert_eq!(
        field(&blocks[1], "Original-Recipient"),
        Some("rfc822; bob+old@remote.test")
    );
    assert_eq!(field(&blocks[1], "Action"), Some("relayed"));
    assert_eq!(field(&blocks[1], "Status"), Some("2.0.0"));
    assert_eq!(field(&blocks[1], "Remote-MTA"), Some("dns; 127.0.0.1"));
    // RET=HDRS: the headers only.
    assert_eq!(original, "text/rfc822-headers");
    relay.stop().await;
}

/// Local delivery into memory, for the `delivered` notice.
#[derive(Debug, Default)]
struct MemoryMailbox {
    stored: std::sync::Mutex<Vec<(Vec<String>, Vec<u8>)>>,
}

impl smtp_relay::deliver::LocalDelivery for MemoryMailbox {
    fn deliver<'a>(
        &'a self,
        envelope: &'a smtp_relay::queue::QueuedEnvelope,
        recipients: &'a [usize],
        body: bytes::Bytes,
    ) -> smtp_relay::deliver::BoxFuture<'a, std::io::Result<()>> {
        Box::pin(async move {
            let to = recipients
                .iter()
                .map(|&n| envelope.recipients[n].address.clone())
                .collect();
            self.stored.lock().unwrap().push((to, body.to_vec()));
            Ok(())
        })
    }
}

#[tokio::test]
async fn local_delivery_reports_delivered() {
    // RFC 3461 §5.2.3: final delivery here gives `Action: delivered`.
    let sender_mx = FakeMx::start(ip(1), Script::new().no_starttls())
        .await
        .unwrap();
    let mailbox = std::sync::Arc::new(MemoryMailbox::default());
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            local_domains: vec!["local.test".into()],
            local: Some(mailbox.clone()),
            routes: vec![("sender.test".into(), sender_mx.addr())],
            ..RelayOptions::default()
        },
    )
    .await;
    submit_lines(
        relay.addr,
        "MAIL FROM:<alice@sender.test>",
        &["RCPT TO:<dora@local.test> NOTIFY=SUCCESS"],
    )
    .await;
    assert!(sender_mx.wait_accepted(1, Duration::from_secs(10)).await);
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    let stored = mailbox.stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, ["dora@local.test"]);
    let (_, blocks, _) = status_blocks(&sender_mx.accepted()[0].body);
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    assert_eq!(
        field(&blocks[1], "Final-Recipient"),
        Some("rfc822; dora@local.test")
    );
    assert_eq!(field(&blocks[1], "Action"), Some("delivered"));
    assert_eq!(field(&blocks[1], "Status"), Some("2.0.0"));
    assert_eq!(field(&blocks[1], "Remote-MTA"), None);
    relay.stop().await;
}

#[tokio::test]
async fn an_unreachable_destination_is_backed_off_as_a_whole() {
    let mx = FakeMx::start(ip(1), Script::plain().greeting_reply(421, "4.3.2", "busy"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            routes: vec![("remote.test".into(), mx.addr())],
            // One connection at a time, so the count of sessions below does
            // not depend on how the attempts interleave.
            max_per_destination: 1,
            ..RelayOptions::default()
        },
    )
    .await;
    let env = envelope(Some("alice@sender.test"), &["bob@remote.test"]);
    submit(relay.addr, &env, MESSAGE).await.unwrap();
    wait_for("the first deferral", || {
        let m = relay.messages();
        !m.is_empty() && all_deferred(&m)
    })
    .await;
    assert_eq!(mx.connections(), 1);
    let batches = relay.spool.commit_batches();
    for _ in 0..3 {
        submit(relay.addr, &env, MESSAGE).await.unwrap();
    }
    // The new messages wait with the destination instead of trying it:
    // parked, with no attempt and no record of their own (the only
    // commits are the three messages themselves).
    wait_for("three parked", || relay.scheduler.parked_recipients() == 3).await;
    assert_eq!(mx.connections(), 1);
    assert_eq!(relay.spool.commit_batches(), batches + 3);
    let messages = relay.messages();
    assert_eq!(messages.len(), 4);
    let RecipientState::Deferred { last, .. } = &messages[0].states[0] else {
        panic!()
    };
    assert!(
        last.diagnostic.starts_with("421 4.3.2 busy"),
        "{}",
        last.diagnostic
    );
    for message in &messages[1..] {
        assert_eq!(message.states, vec![RecipientState::Queued]);
    }
    // When the backoff ends the destination is tried again, once: it still
    // refuses, so every message is deferred or parked again behind the new
    // backoff, and nothing was tried once per message.
    relay.advance(Duration::from_secs(400)).await;
    wait_for("the second attempt", || mx.connections() == 2).await;
    // The one that made the attempt is deferred again; the other three
    // are parked behind the new backoff.
    wait_for("three parked again", || {
        relay.scheduler.parked_recipients() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(mx.connections(), 2);
    relay.stop().await;
}

#[tokio::test]
async fn parked_mail_is_delivered_when_a_flush_clears_the_backoff() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            routes: vec![("remote.test".into(), addr)],
            max_per_destination: 1,
            ..RelayOptions::default()
        },
    )
    .await;
    let env = envelope(Some("alice@sender.test"), &["bob@remote.test"]);
    submit(relay.addr, &env, MESSAGE).await.unwrap();
    wait_for("the first deferral", || {
        let m = relay.messages();
        !m.is_empty() && all_deferred(&m)
    })
    .await;
    for _ in 0..2 {
        submit(relay.addr, &env, MESSAGE).await.unwrap();
    }
    wait_for("two parked", || relay.scheduler.parked_recipients() == 2).await;
    // The destination comes back on the same address; an operator's flush
    // clears the backoff, and the parked messages go without waiting for
    // it to end (the deferred one is due at its own retry time).
    let mx = FakeMx::start_on(addr, Script::plain()).await.unwrap();
    relay.scheduler.clear_backoff();
    wait_for("the parked messages delivered", || mx.accepted().len() == 2).await;
    assert_eq!(relay.scheduler.parked_recipients(), 0);
    relay.advance(Duration::from_secs(400)).await;
    wait_for("the deferred one delivered", || mx.accepted().len() == 3).await;
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    relay.stop().await;
}

#[tokio::test]
async fn parked_mail_that_an_operator_holds_is_not_sent() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            routes: vec![("remote.test".into(), addr)],
            max_per_destination: 1,
            ..RelayOptions::default()
        },
    )
    .await;
    let env = envelope(Some("alice@sender.test"), &["bob@remote.test"]);
    submit(relay.addr, &env, MESSAGE).await.unwrap();
    wait_for("the first deferral", || {
        let m = relay.messages();
        !m.is_empty() && all_deferred(&m)
    })
    .await;
    submit(relay.addr, &env, MESSAGE).await.unwrap();
    wait_for("one parked", || relay.scheduler.parked_recipients() == 1).await;
    let parked = relay.messages()[1].id;
    assert!(
        relay
            .spool
            .set_held(parked, true, relay.clock_now())
            .await
            .unwrap()
    );
    // The destination is back and the backoff cleared: the parked claim
    // goes back to the store, which no longer hands the held message out.
    let mx = FakeMx::start_on(addr, Script::plain()).await.unwrap();
    relay.scheduler.clear_backoff();
    wait_for("nothing parked", || {
        relay.scheduler.parked_recipients() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(mx.accepted().is_empty());
    assert!(
        relay
            .spool
            .set_held(parked, false, relay.clock_now())
            .await
            .unwrap()
    );
    wait_for("the released message delivered", || {
        mx.accepted().len() == 1
    })
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn parked_mail_expires_at_its_queue_lifetime() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = unused.local_addr().unwrap();
    drop(unused);
    let sender_mx = FakeMx::start(ip(1), Script::plain()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut scheduler = SchedulerConfig::new("relay.test");
    // A backoff far longer than the lifetime: only the lifetime can end
    // the wait of the parked message.
    scheduler.retry.first = Duration::from_secs(3600);
    scheduler.retry.max = Duration::from_secs(3600);
    scheduler.max_queue_lifetime = Duration::from_secs(600);
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            routes: vec![
                ("remote.test".into(), dead),
                ("sender.test".into(), sender_mx.addr()),
            ],
            max_per_destination: 1,
            scheduler,
            ..RelayOptions::default()
        },
    )
    .await;
    let env = envelope(Some("alice@sender.test"), &["bob@remote.test"]);
    submit(relay.addr, &env, MESSAGE).await.unwrap();
    wait_for("the first deferral", || {
        let m = relay.messages();
        !m.is_empty() && all_deferred(&m)
    })
    .await;
    relay.advance(Duration::from_secs(60)).await;
    submit(relay.addr, &env, MESSAGE).await.unwrap();
    wait_for("one parked", || relay.scheduler.parked_recipients() == 1).await;
    // The first message's lifetime ends at 600 s: it is due then (its next
    // attempt is capped there) and fails; the second, parked, fails at its
    // own end 60 s later, long before the destination's backoff ends.
    relay.advance(Duration::from_secs(545)).await;
    wait_for("the first bounce", || sender_mx.accepted().len() == 1).await;
    assert_eq!(relay.scheduler.parked_recipients(), 1);
    relay.advance(Duration::from_secs(60)).await;
    wait_for("the second bounce", || sender_mx.accepted().len() == 2).await;
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    assert_eq!(relay.scheduler.parked_recipients(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn accepted_mail_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on the route at first.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = unused.local_addr().unwrap();
    drop(unused);
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            routes: vec![("remote.test".into(), dead)],
            ..RelayOptions::default()
        },
    )
    .await;
    submit(
        relay.addr,
        &envelope(Some("alice@sender.test"), &["bob@remote.test"]),
        MESSAGE,
    )
    .await
    .unwrap();
    wait_for("the deferral", || {
        all_deferred(&relay.messages()) && !relay.messages().is_empty()
    })
    .await;
    relay.stop().await;
    let mx = FakeMx::start(ip(1), Script::plain()).await.unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            routes: vec![("remote.test".into(), mx.addr())],
            ..RelayOptions::default()
        },
    )
    .await;
    assert_eq!(relay.spool.recovery().messages, 1);
    relay.advance(Duration::from_secs(400)).await;
    wait_for("delivery after the restart", || mx.accepted().len() == 1).await;
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    relay.stop().await;
}

#[tokio::test]
async fn foreign_recipients_need_a_relay_network_or_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            local_domains: vec!["local.test".into()],
            relay_networks: vec!["127.0.0.1/32".parse().unwrap()],
            listen: "0.0.0.0:0".parse().unwrap(),
            authenticator: true,
            ..RelayOptions::default()
        },
    )
    .await;
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], relay.addr.port()));
    // From outside the relay networks (a second loopback address).
    let mut outside = Raw::connect_from("127.0.0.2", server).await;
    assert!(
        outside
            .command("EHLO outside.test")
            .await
            .starts_with("250")
    );
    assert!(
        outside
            .command("MAIL FROM:<eve@outside.test>")
            .await
            .starts_with("250")
    );
    assert_eq!(
        outside.command("RCPT TO:<victim@elsewhere.test>").await,
        "554 5.7.1 relay access denied"
    );
    // Mail for a local domain is accepted from anyone.
    assert!(
        outside
            .command("RCPT TO:<postmaster@LOCAL.test>")
            .await
            .starts_with("250")
    );
    assert_eq!(outside.command("RSET").await.get(..3), Some("250"));
    // Authenticated, the same client may relay.
    assert!(
        outside
            .command("AUTH PLAIN AHVzZXIAc2VjcmV0")
            .await
            .starts_with("235")
    );
    assert!(
        outside
            .command("MAIL FROM:<eve@outside.test>")
            .await
            .starts_with("250")
    );
    assert!(
        outside
            .command("RCPT TO:<friend@elsewhere.test>")
            .await
            .starts_with("250")
    );
    // From inside the relay network, no authentication is needed.
    let mut inside = Raw::connect_from("127.0.0.1", server).await;
    assert!(inside.command("EHLO inside.test").await.starts_with("250"));
    assert!(
        inside
            .command("MAIL FROM:<app@inside.test>")
            .await
            .starts_with("250")
    );
    assert!(
        inside
            .command("RCPT TO:<someone@elsewhere.test>")
            .await
            .starts_with("250")
    );
    assert!(inside.command("QUIT").await.starts_with("221"));
    assert!(outside.command("QUIT").await.starts_with("221"));
    drop((inside, outside));
    relay.stop().await;
}

fn smarthost_for(mx: &FakeMx, user: &str, password: &str) -> smtp_relay::route::Smarthost {
    let pem = mx.certificate_pem().unwrap();
    smtp_relay::route::Smarthost {
        address: smtp_relay::route::HostPort {
            host: mx.addr().ip().to_string(),
            port: mx.addr().port(),
        },
        tls: smtp_relay::route::SmarthostTls::Starttls,
        credentials: Some(smtp_client::Credentials::password(user, password)),
        tls_config: smtp_client::TlsConfig::new()
            .webpki_roots(false)
            .add_root_certificates_pem(pem.as_bytes())
            .unwrap()
            .server_name("localhost"),
    }
}

#[tokio::test]
async fn a_smarthost_gets_auth_over_starttls_and_bad_credentials_keep_the_mail() {
    let smarthost = FakeMx::start(ip(1), Script::new().auth("relayuser", "s3cret"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            smarthost: Some(smarthost_for(&smarthost, "relayuser", "s3cret")),
            ..RelayOptions::default()
        },
    )
    .await;
    submit(
        relay.addr,
        &envelope(Some("alice@sender.test"), &["bob@anywhere.test"]),
        MESSAGE,
    )
    .await
    .unwrap();
    wait_for("delivery through the smarthost", || {
        smarthost.accepted().len() == 1
    })
    .await;
    assert_eq!(
        smarthost.accepted()[0].identity.as_deref(),
        Some("relayuser")
    );
    relay.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            smarthost: Some(smarthost_for(&smarthost, "relayuser", "wrong")),
            ..RelayOptions::default()
        },
    )
    .await;
    submit(
        relay.addr,
        &envelope(Some("alice@sender.test"), &["bob@anywhere.test"]),
        MESSAGE,
    )
    .await
    .unwrap();
    wait_for("the deferral", || {
        let m = relay.messages();
        !m.is_empty() && all_deferred(&m)
    })
    .await;
    let RecipientState::Deferred { last, .. } = &relay.messages()[0].states[0] else {
        panic!()
    };
    // A refused login says nothing about the recipient: no bounce, retry.
    assert!(
        last.diagnostic.starts_with("451 4.7.0 535"),
        "{}",
        last.diagnostic
    );
    assert_eq!(smarthost.accepted().len(), 1);
    relay.stop().await;
}
