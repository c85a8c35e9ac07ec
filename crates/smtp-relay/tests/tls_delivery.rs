//! Delivery over TLS and through trouble, against the scripted fake MX
//! servers of `tests/support` (STARTTLS with a certificate made at test
//! time): opportunistic STARTTLS to a route, plaintext when it is not
//! offered, a smarthost that must do TLS, a connection dropped after DATA,
//! a slow greeting.

mod support;

use std::time::Duration;

use smtp_client::{Envelope, TlsConfig};
use smtp_relay::queue::RecipientState;
use smtp_relay::route::{HostPort, Smarthost, SmarthostTls};
use support::fake_mx::{FakeMx, Script, ip};
use support::relay::{Relay, RelayOptions, address, all_deferred, submit, wait_for};

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
    let messages = spool.snapshot();
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

/// A minimal server whose STARTTLS is broken: it says `220` to STARTTLS
/// and then sends plaintext instead of a TLS handshake. Without STARTTLS
/// it takes the message. Returns its address, the bodies it took and how
/// many connections it saw.
async fn broken_starttls_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (taken, seen) = (bodies.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let taken = taken.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read);
                write.write_all(b"220 broken.test ESMTP\r\n").await.unwrap();
                let mut line = String::new();
                while lines.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-broken.test\r\n250 STARTTLS\r\n",
                        "STAR" => {
                            // Answer the ClientHello with plaintext.
                            let _ = write.write_all(b"220 go ahead\r\n").await;
                            let mut hello = [0u8; 16];
                            let _ = tokio::io::AsyncReadExt::read(&mut lines, &mut hello).await;
                            let _ = write.write_all(b"this is not TLS\r\n").await;
                            return;
                        }
                        "MAIL" | "RCPT" => b"250 ok\r\n",
                        "DATA" => {
                            write.write_all(b"354 go on\r\n").await.unwrap();
                            let mut body = String::new();
                            loop {
                                let mut data = String::new();
                                if lines.read_line(&mut data).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                if data == ".\r\n" {
                                    break;
                                }
                                body.push_str(&data);
                            }
                            taken.lock().unwrap().push(body);
                            b"250 taken\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    (addr, bodies, connections)
}

#[tokio::test]
async fn a_failed_opportunistic_starttls_falls_back_to_plaintext() {
    let (addr, bodies, connections) = broken_starttls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            routes: vec![("remote.test".into(), addr)],
            ..RelayOptions::default()
        },
    )
    .await;
    submit(relay.addr, &envelope(), MESSAGE).await.unwrap();
    wait_for("delivery in plaintext", || {
        bodies.lock().unwrap().len() == 1
    })
    .await;
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    assert!(bodies.lock().unwrap()[0].ends_with("Subject: tls\r\n\r\nover TLS\r\n"));
    // One connection whose handshake failed, one in plaintext.
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    relay.stop().await;
}
