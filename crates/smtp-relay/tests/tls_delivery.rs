//! Delivery over TLS and through trouble, against the scripted fake MX
//! servers of `tests/support` (STARTTLS with a certificate made at test
//! time): opportunistic STARTTLS to a route, plaintext when it is not
//! offered, a smarthost that must do TLS, a connection dropped after DATA,
//! a slow greeting.

mod common;
mod support;

use std::time::Duration;

use common::{Relay, RelayOptions, address, all_deferred, submit, wait_for};
use smtp_client::{Envelope, TlsConfig};
use smtp_relay::queue::RecipientState;
use smtp_relay::route::{HostPort, Smarthost, SmarthostTls};
use support::fake_mx::{FakeMx, Script, ip};

const MESSAGE: &str = "Subject: tls\r\n\r\nover TLS\r\n";

fn envelope() -> Envelope {
    Envelope::new(address("a@sender.test"), [address("b@remote.test")]).unwrap()
}

async fn relay_routed_to(dir: &std::path::Path, mx: &FakeMx) -> Relay {
    Relay::start(
        dir,
        RelayOptions {
            routes: vec![("remote.test".into(), mx.addr())],
            ..RelayOptions::default()
        },
    )
    .await
}

#[tokio::test]
async fn routes_use_starttls_when_offered_and_plaintext_when_not() {
    let with_tls = FakeMx::start(ip(1), Script::new()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_routed_to(dir.path(), &with_tls).await;
    submit(relay.addr, &envelope(), MESSAGE).await.unwrap();
    assert!(with_tls.wait_accepted(1, Duration::from_secs(10)).await);
    assert!(
        with_tls.accepted()[0].tls,
        "opportunistic STARTTLS was used"
    );
    relay.stop().await;

    let without = FakeMx::start(ip(1), Script::new().no_starttls())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_routed_to(dir.path(), &without).await;
    submit(relay.addr, &envelope(), MESSAGE).await.unwrap();
    assert!(without.wait_accepted(1, Duration::from_secs(10)).await);
    assert!(!without.accepted()[0].tls);
    relay.stop().await;
}

fn smarthost(mx: &FakeMx, tls: SmarthostTls) -> Smarthost {
    let mut tls_config = TlsConfig::new()
        .webpki_roots(false)
        .server_name("localhost");
    if let Some(pem) = mx.certificate_pem() {
        tls_config = tls_config
            .add_root_certificates_pem(pem.as_bytes())
            .unwrap();
    }
    Smarthost {
        address: HostPort {
            host: mx.addr().ip().to_string(),
            port: mx.addr().port(),
        },
        tls,
        credentials: None,
        tls_config,
    }
}

#[tokio::test]
async fn a_smarthost_with_required_starttls_is_verified_and_never_plaintext() {
    let good = FakeMx::start(ip(1), Script::new()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            smarthost: Some(smarthost(&good, SmarthostTls::Starttls)),
            ..RelayOptions::default()
        },
    )
    .await;
    submit(relay.addr, &envelope(), MESSAGE).await.unwrap();
    assert!(good.wait_accepted(1, Duration::from_secs(10)).await);
    assert!(good.accepted()[0].tls);
    relay.stop().await;

    // A smarthost that does not offer STARTTLS gets nothing: the mail
    // waits.
    let plain = FakeMx::start(ip(1), Script::new().no_starttls())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            smarthost: Some(smarthost(&plain, SmarthostTls::Starttls)),
            ..RelayOptions::default()
        },
    )
    .await;
    submit(relay.addr, &envelope(), MESSAGE).await.unwrap();
    wait_for("the deferral", || {
        let m = relay.messages();
        !m.is_empty() && all_deferred(&m)
    })
    .await;
    assert!(plain.received().is_empty(), "no message went in plaintext");
    let RecipientState::Deferred { last, .. } = &relay.messages()[0].states[0] else {
        panic!()
    };
    assert!(
        last.diagnostic.starts_with("451 4.7.5 "),
        "{}",
        last.diagnostic
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_connection_dropped_after_data_is_retried() {
    let mx = FakeMx::start(ip(1), Script::new().drop_after_data(1))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_routed_to(dir.path(), &mx).await;
    submit(relay.addr, &envelope(), MESSAGE).await.unwrap();
    wait_for("the deferral", || {
        let m = relay.messages();
        !m.is_empty() && all_deferred(&m)
    })
    .await;
    assert!(mx.accepted().is_empty());
    // The message may have arrived; RFC 5321 §6.1 prefers a duplicate to a
    // loss, so it is sent again.
    relay.advance(Duration::from_secs(400)).await;
    assert!(mx.wait_accepted(1, Duration::from_secs(10)).await);
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_slow_greeting_is_waited_for() {
    let mx = FakeMx::start(
        ip(1),
        Script::new().slow_greeting(Duration::from_millis(700)),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_routed_to(dir.path(), &mx).await;
    submit(relay.addr, &envelope(), MESSAGE).await.unwrap();
    assert!(mx.wait_accepted(1, Duration::from_secs(10)).await);
    relay.stop().await;
}

#[tokio::test]
async fn connections_per_destination_are_capped() {
    let mx = FakeMx::start(ip(1), Script::new().data_delay(Duration::from_millis(300)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            routes: vec![("remote.test".into(), mx.addr())],
            max_per_destination: 2,
            ..RelayOptions::default()
        },
    )
    .await;
    let env = envelope();
    let submissions = (0..8).map(|_| submit(relay.addr, &env, MESSAGE));
    for result in futures::future::join_all(submissions).await {
        result.unwrap();
    }
    assert!(mx.wait_accepted(8, Duration::from_secs(20)).await);
    let most = mx.max_concurrent();
    assert!((1..=2).contains(&most), "{most} connections at once");
    relay.stop().await;
}

#[tokio::test]
async fn a_delivery_in_flight_at_shutdown_is_abandoned_and_retried_after_restart() {
    let slow = FakeMx::start(ip(1), Script::new().data_delay(Duration::from_secs(5)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut scheduler = smtp_relay::scheduler::SchedulerConfig::new("relay.test");
    scheduler.shutdown_grace = Duration::from_millis(100);
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            routes: vec![("remote.test".into(), slow.addr())],
            scheduler,
            ..RelayOptions::default()
        },
    )
    .await;
    submit(relay.addr, &envelope(), MESSAGE).await.unwrap();
    assert!(
        slow.wait_until(Duration::from_secs(10), || slow.rcpt_commands() >= 1)
            .await
    );
    relay.stop().await;
    // Nothing was recorded for the abandoned attempt: still queued.
    let spool =
        smtp_relay::spool::Spool::open(dir.path(), smtp_relay::spool::Durability::Os).unwrap();
    let messages = smtp_relay::queue::QueueStore::messages(&spool).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].states[0], RecipientState::Queued);
    drop(spool);
    let fast = FakeMx::start(ip(1), Script::new()).await.unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            routes: vec![("remote.test".into(), fast.addr())],
            ..RelayOptions::default()
        },
    )
    .await;
    assert!(fast.wait_accepted(1, Duration::from_secs(10)).await);
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    relay.stop().await;
}
