//! MX resolution (RFC 5321 §5.1, RFC 7505) against a real DNS server on
//! loopback.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use smtp_proto::EnhancedCode;
use smtp_relay::dns::{DnsErrorKind, MxResolver, MxTarget};
use test_dns::TestDns;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn resolver(dns: &TestDns, seed: u64) -> MxResolver {
    MxResolver::builder()
        .server(dns.addr())
        .timeout(Duration::from_millis(300))
        .attempts(1)
        .seed(seed)
        .build()
        .expect("resolver")
}

fn names(targets: &[MxTarget]) -> Vec<&str> {
    targets.iter().map(|t| t.exchange.as_str()).collect()
}

#[tokio::test]
async fn mx_records_are_ordered_by_preference_with_all_addresses() {
    let dns = TestDns::builder()
        .mx("example.test", 20, "mx2.example.test")
        .mx("example.test", 10, "mx1.example.test")
        .mx("example.test", 30, "mx3.example.test")
        .a("mx1.example.test", ip(11))
        .aaaa("mx1.example.test", Ipv6Addr::LOCALHOST)
        .a("mx1.example.test", ip(12))
        .a("mx2.example.test", ip(21))
        .aaaa("mx3.example.test", Ipv6Addr::LOCALHOST)
        .start()
        .await
        .unwrap();
    let targets = resolver(&dns, 1).resolve("example.test").await.unwrap();
    assert_eq!(
        names(&targets),
        ["mx1.example.test", "mx2.example.test", "mx3.example.test"]
    );
    assert_eq!(
        targets.iter().map(|t| t.preference).collect::<Vec<_>>(),
        [10, 20, 30]
    );
    let mx1: HashSet<IpAddr> = targets[0].addresses.iter().copied().collect();
    assert_eq!(targets[0].addresses.len(), 3);
    assert!(mx1.contains(&IpAddr::V4(ip(11))) && mx1.contains(&IpAddr::V4(ip(12))));
    // IPv4 before IPv6 within one host.
    assert_eq!(targets[0].addresses[2], IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(targets[1].addresses, [IpAddr::V4(ip(21))]);
    assert_eq!(targets[2].addresses, [IpAddr::V6(Ipv6Addr::LOCALHOST)]);
    assert!(targets.iter().all(|t| !t.implicit));
    // A trailing dot and another case resolve the same.
    let again = resolver(&dns, 1).resolve("EXAMPLE.test.").await.unwrap();
    assert_eq!(names(&again), names(&targets));
}

#[tokio::test]
async fn equal_preferences_are_shuffled_by_the_seed() {
    let mut builder = TestDns::builder().mx("example.test", 5, "first.example.test");
    for (i, host) in ["a", "b", "c", "d"].iter().enumerate() {
        let name = format!("{host}.example.test");
        builder = builder
            .mx("example.test", 10, &name)
            .a(&name, ip(30 + i as u8));
    }
    let dns = builder
        .a("first.example.test", ip(29))
        .mx("example.test", 20, "last.example.test")
        .a("last.example.test", ip(40))
        .start()
        .await
        .unwrap();
    let mut orders = HashSet::new();
    for seed in 0..16 {
        let targets = resolver(&dns, seed).resolve("example.test").await.unwrap();
        let order: Vec<String> = targets.iter().map(|t| t.exchange.clone()).collect();
        assert_eq!(order.len(), 6);
        assert_eq!(order[0], "first.example.test");
        assert_eq!(order[5], "last.example.test");
        let middle: HashSet<&str> = order[1..5].iter().map(String::as_str).collect();
        assert_eq!(middle.len(), 4);
        // The same seed gives the same order.
        let again = resolver(&dns, seed).resolve("example.test").await.unwrap();
        assert_eq!(
            names(&again),
            order.iter().map(String::as_str).collect::<Vec<_>>()
        );
        orders.insert(order);
    }
    assert!(orders.len() > 4, "only {} distinct orders", orders.len());
}

#[tokio::test]
async fn no_mx_means_the_domain_itself_is_the_implicit_mx() {
    let dns = TestDns::builder()
        .aaaa("implicit.test", Ipv6Addr::LOCALHOST)
        .a("implicit.test", ip(50))
        .start()
        .await
        .unwrap();
    let targets = resolver(&dns, 0).resolve("implicit.test").await.unwrap();
    assert_eq!(
        targets,
        [MxTarget {
            exchange: "implicit.test".into(),
            preference: 0,
            addresses: vec![IpAddr::V4(ip(50)), IpAddr::V6(Ipv6Addr::LOCALHOST)],
            implicit: true,
        }]
    );
}

#[tokio::test]
async fn null_mx_is_a_permanent_556_5_1_10() {
    let dns = TestDns::builder()
        .null_mx("nullmx.test")
        .a("nullmx.test", ip(60))
        .start()
        .await
        .unwrap();
    let error = resolver(&dns, 0).resolve("nullmx.test").await.unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::NullMx);
    assert!(error.is_permanent());
    assert_eq!(error.code(), 556);
    assert_eq!(error.enhanced_code(), EnhancedCode::new(5, 1, 10));
    assert!(error.diagnostic().contains("nullmx.test"), "{error}");
    assert_eq!(error.reply().code(), 556);
}

#[tokio::test]
async fn a_root_mx_beside_real_ones_is_ignored() {
    let dns = TestDns::builder()
        .mx("mixed.test", 0, ".")
        .mx("mixed.test", 10, "mx.mixed.test")
        .a("mx.mixed.test", ip(61))
        .start()
        .await
        .unwrap();
    let targets = resolver(&dns, 0).resolve("mixed.test").await.unwrap();
    assert_eq!(names(&targets), ["mx.mixed.test"]);
}

#[tokio::test]
async fn nxdomain_is_a_permanent_550_5_1_2() {
    let dns = TestDns::builder().zone("test").start().await.unwrap();
    let error = resolver(&dns, 0).resolve("nosuch.test").await.unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::NoSuchDomain);
    assert!(error.is_permanent());
    assert_eq!(error.code(), 550);
    assert_eq!(error.enhanced_code(), EnhancedCode::new(5, 1, 2));
    assert!(error.diagnostic().contains("NXDOMAIN"), "{error}");
}

#[tokio::test]
async fn no_mx_and_no_address_is_permanent() {
    let dns = TestDns::builder()
        .txt("textonly.test", "v=spf1 -all")
        .start()
        .await
        .unwrap();
    let error = resolver(&dns, 0)
        .resolve("textonly.test")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::NoMailHost);
    assert!(error.is_permanent());
    assert_eq!(error.enhanced_code(), EnhancedCode::new(5, 4, 4));
}

#[tokio::test]
async fn servfail_is_temporary() {
    let dns = TestDns::builder()
        .servfail("broken.test")
        .start()
        .await
        .unwrap();
    let error = resolver(&dns, 0).resolve("broken.test").await.unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::Temporary);
    assert!(error.is_temporary());
    assert_eq!(error.code(), 451);
    assert_eq!(error.enhanced_code(), EnhancedCode::new(4, 4, 3));
}

#[tokio::test]
async fn a_timeout_is_temporary() {
    let dns = TestDns::builder()
        .no_answer("silent.test")
        .start()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let error = resolver(&dns, 0).resolve("silent.test").await.unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::Temporary);
    assert!(error.is_temporary());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn cnames_are_followed_for_the_domain_and_for_mx_hosts() {
    // The aliases live in zone `test`, their targets in other zones, so the
    // resolver has to follow each CNAME with a query of its own.
    let dns = TestDns::builder()
        .zone("test")
        .cname("alias.test", "real.example")
        .mx("real.example", 10, "mx.real.example")
        .cname("mx.real.example", "host.other.example")
        .a("host.other.example", ip(70))
        .cname("implicit-alias.test", "host.other.example")
        .start()
        .await
        .unwrap();
    let resolver = resolver(&dns, 0);
    let targets = resolver.resolve("alias.test").await.unwrap();
    assert_eq!(names(&targets), ["mx.real.example"]);
    assert_eq!(targets[0].addresses, [IpAddr::V4(ip(70))]);
    let targets = resolver.resolve("implicit-alias.test").await.unwrap();
    assert!(targets[0].implicit);
    assert_eq!(targets[0].addresses, [IpAddr::V4(ip(70))]);
}

#[tokio::test]
async fn mx_hosts_without_address_are_skipped() {
    let dns = TestDns::builder()
        .mx("example.test", 10, "gone.example.test")
        .mx("example.test", 20, "txt.example.test")
        .mx("example.test", 30, "ok.example.test")
        .txt("txt.example.test", "no address here")
        .a("ok.example.test", ip(80))
        .mx("dead.test", 10, "gone.dead.test")
        .mx("dead.test", 20, "also-gone.dead.test")
        .mx("flaky.test", 10, "gone.flaky.test")
        .mx("flaky.test", 20, "mx.broken.test")
        .servfail("broken.test")
        .start()
        .await
        .unwrap();
    let resolver = resolver(&dns, 0);
    let targets = resolver.resolve("example.test").await.unwrap();
    assert_eq!(names(&targets), ["ok.example.test"]);

    let error = resolver.resolve("dead.test").await.unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::NoAddress);
    assert!(error.is_temporary());
    assert_eq!(error.enhanced_code(), EnhancedCode::new(4, 4, 4));
    assert!(error.diagnostic().contains("gone.dead.test"), "{error}");
    assert!(
        error.diagnostic().contains("also-gone.dead.test"),
        "{error}"
    );

    let error = resolver.resolve("flaky.test").await.unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::Temporary);
    assert_eq!(error.enhanced_code(), EnhancedCode::new(4, 4, 3));
}

#[tokio::test]
async fn domain_literals_need_no_dns() {
    let dns = TestDns::builder().start().await.unwrap();
    let resolver = resolver(&dns, 0);
    let targets = resolver.resolve("[127.0.0.9]").await.unwrap();
    assert_eq!(
        targets,
        [MxTarget {
            exchange: "[127.0.0.9]".into(),
            preference: 0,
            addresses: vec![IpAddr::V4(ip(9))],
            implicit: true,
        }]
    );
    let targets = resolver.resolve("[IPv6:::1]").await.unwrap();
    assert_eq!(targets[0].addresses, [IpAddr::V6(Ipv6Addr::LOCALHOST)]);
    let error = resolver.resolve("[999.1.1.1]").await.unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::InvalidDomain);
    assert!(error.is_permanent());
    assert_eq!(dns.query_count(), 0);
}

#[tokio::test]
async fn utf8_domains_are_looked_up_by_their_a_label() {
    let dns = TestDns::builder()
        .mx("xn--bcher-kva.test", 10, "mx.xn--bcher-kva.test")
        .a("mx.xn--bcher-kva.test", ip(90))
        .start()
        .await
        .unwrap();
    let targets = resolver(&dns, 0).resolve("bücher.test").await.unwrap();
    assert_eq!(names(&targets), ["mx.xn--bcher-kva.test"]);
}

#[tokio::test]
async fn lookup_host_resolves_next_hops() {
    let dns = TestDns::builder()
        .a("smarthost.test", ip(100))
        .aaaa("smarthost.test", Ipv6Addr::LOCALHOST)
        .zone("test")
        .servfail("broken.test")
        .start()
        .await
        .unwrap();
    let resolver = resolver(&dns, 0);
    assert_eq!(
        resolver.lookup_host("smarthost.test").await.unwrap(),
        [IpAddr::V4(ip(100)), IpAddr::V6(Ipv6Addr::LOCALHOST)]
    );
    assert_eq!(
        resolver.lookup_host("127.0.0.7").await.unwrap(),
        [IpAddr::V4(ip(7))]
    );
    assert_eq!(
        resolver.lookup_host("[IPv6:::1]").await.unwrap(),
        [IpAddr::V6(Ipv6Addr::LOCALHOST)]
    );
    let error = resolver.lookup_host("nosuch.test").await.unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::NoAddress);
    assert!(error.is_temporary());
    let error = resolver.lookup_host("mx.broken.test").await.unwrap_err();
    assert_eq!(error.kind(), DnsErrorKind::Temporary);
}
