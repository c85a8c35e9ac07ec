//! MX delivery through a real DNS server on loopback (test-dns) to fake MX
//! servers on 127.0.0.x.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use smtp_client::Envelope;
use smtp_relay::deliver::MxLookup;
use smtp_relay::dns::MxResolver;
use smtp_relay::queue::RecipientState;
use support::fake_mx::{FakeMx, Script, ip};
use support::relay::{Relay, RelayOptions, address, all_deferred, submit, wait_for};
use test_dns::TestDns;

const MESSAGE: &str = "Subject: mx\r\n\r\nhello\r\n";

fn lookup(dns: &TestDns) -> Arc<dyn MxLookup> {
    Arc::new(
        MxResolver::builder()
            .server(dns.addr())
            .timeout(Duration::from_millis(500))
            .attempts(1)
            .seed(3)
            .build()
            .unwrap(),
    )
}

/// A port that is free on 127.0.0.2 and 127.0.0.3 (the MX hosts share the
/// relay's single MX port).
async fn mx_pair(second: Script) -> (u16, FakeMx) {
    for _ in 0..20 {
        let probe = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let addr = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 3), port));
        if std::net::TcpListener::bind(addr).is_ok() {
            return (port, FakeMx::start_on(addr, second.clone()).await.unwrap());
        }
    }
    panic!("no common free port");
}

#[tokio::test]
async fn every_address_of_an_exchanger_before_the_next_by_preference() {
    // mx1 (preference 10) refuses connections; mx2 takes the mail.
    let (port, mx2) = mx_pair(Script::plain()).await;
    let dns = TestDns::builder()
        .mx("example.test", 20, "mx2.example.test")
        .mx("example.test", 10, "mx1.example.test")
        .a("mx1.example.test", Ipv4Addr::new(127, 0, 0, 2))
        .a("mx2.example.test", Ipv4Addr::new(127, 0, 0, 3))
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            resolver: Some(lookup(&dns)),
            mx_port: port,
            ..RelayOptions::default()
        },
    )
    .await;
    let env = Envelope::new(address("a@sender.test"), [address("bob@example.test")]).unwrap();
    submit(relay.addr, &env, MESSAGE).await.unwrap();
    wait_for("delivery at the second MX", || mx2.accepted().len() == 1).await;
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    assert_eq!(mx2.accepted()[0].recipients[0].0, "bob@example.test");
    relay.stop().await;
}

#[tokio::test]
async fn a_cname_and_an_implicit_mx_are_followed() {
    let (port, mx) = mx_pair(Script::plain()).await;
    let dns = TestDns::builder()
        .zone("test")
        // No MX: the domain's own address is the implicit MX.
        .a("implicit.test", Ipv4Addr::new(127, 0, 0, 3))
        .mx("alias-target.test", 10, "mx.alias-target.test")
        .cname("alias.test", "alias-target.test")
        .a("mx.alias-target.test", Ipv4Addr::new(127, 0, 0, 3))
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            resolver: Some(lookup(&dns)),
            mx_port: port,
            ..RelayOptions::default()
        },
    )
    .await;
    let env = Envelope::new(
        address("a@sender.test"),
        [address("x@implicit.test"), address("y@alias.test")],
    )
    .unwrap();
    submit(relay.addr, &env, MESSAGE).await.unwrap();
    // Two destinations, two transactions.
    wait_for("both deliveries", || mx.accepted().len() == 2).await;
    wait_for("an empty queue", || relay.messages().is_empty()).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_null_mx_fails_at_once_and_servfail_defers() {
    let sender_mx = FakeMx::start(ip(1), Script::plain()).await.unwrap();
    let dns = TestDns::builder()
        .null_mx("nomail.test")
        .servfail("broken.test")
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        RelayOptions {
            resolver: Some(lookup(&dns)),
            routes: vec![("sender.test".into(), sender_mx.addr())],
            ..RelayOptions::default()
        },
    )
    .await;
    let env = Envelope::new(address("a@sender.test"), [address("x@nomail.test")]).unwrap();
    submit(relay.addr, &env, MESSAGE).await.unwrap();
    wait_for("the bounce", || sender_mx.accepted().len() == 1).await;
    let bounce = String::from_utf8(sender_mx.accepted()[0].body.clone()).unwrap();
    assert!(bounce.contains("Status: 5.1.10\r\n"), "{bounce}");
    assert!(
        bounce.contains("Diagnostic-Code: smtp; 556 5.1.10 "),
        "{bounce}"
    );

    let env = Envelope::new(address("a@sender.test"), [address("x@broken.test")]).unwrap();
    submit(relay.addr, &env, MESSAGE).await.unwrap();
    wait_for("the deferral", || {
        let m = relay.messages();
        !m.is_empty() && all_deferred(&m)
    })
    .await;
    let RecipientState::Deferred { last, .. } = &relay.messages()[0].states[0] else {
        panic!()
    };
    assert!(
        last.diagnostic.starts_with("451 4.4.3 "),
        "{}",
        last.diagnostic
    );
    assert_eq!(sender_mx.accepted().len(), 1, "no bounce for a deferral");
    relay.stop().await;
}
