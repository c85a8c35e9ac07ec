//! Queries a running TestDns with hickory-resolver over UDP and TCP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use test_dns::{RData, TestDns};

fn resolver(addr: SocketAddr, tcp: bool) -> TokioResolver {
    let mut connection = if tcp {
        ConnectionConfig::tcp()
    } else {
        ConnectionConfig::udp()
    };
    connection.port = addr.port();
    let server = NameServerConfig::new(addr.ip(), true, vec![connection]);
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_millis(500);
    opts.attempts = 1;
    opts.cache_size = 0;
    TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![server]),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .expect("resolver")
}

fn response_code(error: &NetError) -> Option<ResponseCode> {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no)) => Some(no.response_code),
        NetError::Dns(DnsError::ResponseCode(code)) => Some(*code),
        _ => None,
    }
}

async fn zones() -> TestDns {
    TestDns::builder()
        .a("mx1.example.test", Ipv4Addr::new(127, 0, 0, 2))
        .aaaa("mx1.example.test", Ipv6Addr::LOCALHOST)
        .a("mx2.example.test", Ipv4Addr::new(127, 0, 0, 3))
        .mx("example.test", 10, "mx1.example.test")
        .mx("example.test", 20, "mx2.example.test.")
        .cname("alias.example.test", "mx1.example.test")
        .txt("example.test", "v=spf1 ip4:127.0.0.0/8 -all")
        .tlsa("_25._tcp.mx1.example.test", 3, 1, 1, &[0xab; 32])
        .null_mx("nullmx.test")
        .servfail("broken.test")
        .start()
        .await
        .expect("start test dns")
}

#[tokio::test]
async fn answers_a_aaaa_mx_txt_tlsa_over_udp_and_tcp() {
    let dns = zones().await;
    assert_eq!(dns.addr().ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    for tcp in [false, true] {
        let resolver = resolver(dns.addr(), tcp);
        let a = resolver.ipv4_lookup("mx1.example.test.").await.unwrap();
        assert_eq!(
            a.answers()
                .iter()
                .map(|r| r.data.clone())
                .collect::<Vec<_>>(),
            vec![RData::A(Ipv4Addr::new(127, 0, 0, 2).into())]
        );
        let aaaa = resolver.ipv6_lookup("mx1.example.test.").await.unwrap();
        assert_eq!(
            aaaa.answers()
                .iter()
                .map(|r| r.data.clone())
                .collect::<Vec<_>>(),
            vec![RData::AAAA(Ipv6Addr::LOCALHOST.into())]
        );
        let mx = resolver.mx_lookup("example.test.").await.unwrap();
        let mut got: Vec<(u16, String)> = mx
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                _ => None,
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (10, "mx1.example.test.".to_owned()),
                (20, "mx2.example.test.".to_owned())
            ]
        );
        let txt = resolver.txt_lookup("example.test.").await.unwrap();
        match &txt.answers()[0].data {
            RData::TXT(txt) => assert_eq!(txt.to_string(), "v=spf1 ip4:127.0.0.0/8 -all"),
            other => panic!("not TXT: {other:?}"),
        }
        let tlsa = resolver
            .tlsa_lookup("_25._tcp.mx1.example.test.")
            .await
            .unwrap();
        match &tlsa.answers()[0].data {
            RData::TLSA(tlsa) => {
                assert_eq!(u8::from(tlsa.cert_usage), 3);
                assert_eq!(u8::from(tlsa.selector), 1);
                assert_eq!(u8::from(tlsa.matching), 1);
                assert_eq!(tlsa.cert_data, vec![0xab; 32]);
            }
            other => panic!("not TLSA: {other:?}"),
        }
    }
    assert!(dns.query_count() >= 10, "{}", dns.query_count());
}

#[tokio::test]
async fn cname_is_answered_with_its_target() {
    let dns = zones().await;
    let resolver = resolver(dns.addr(), false);
    let ips: Vec<IpAddr> = resolver
        .lookup_ip("alias.example.test.")
        .await
        .unwrap()
        .iter()
        .collect();
    assert!(
        ips.contains(&IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
        "{ips:?}"
    );
}

#[tokio::test]
async fn null_mx_is_served_as_mx_0_root() {
    let dns = zones().await;
    let mx = resolver(dns.addr(), false)
        .mx_lookup("nullmx.test.")
        .await
        .unwrap();
    let records: Vec<_> = mx.answers().iter().map(|r| r.data.clone()).collect();
    match records.as_slice() {
        [RData::MX(mx)] => {
            assert_eq!(mx.preference, 0);
            assert!(mx.exchange.is_root());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unknown_name_in_a_served_zone_is_nxdomain_and_missing_type_is_nodata() {
    let dns = zones().await;
    let resolver = resolver(dns.addr(), false);
    let error = resolver
        .ipv4_lookup("nosuch.example.test.")
        .await
        .unwrap_err();
    assert!(error.is_nx_domain(), "{error:?}");
    let error = resolver.mx_lookup("mx2.example.test.").await.unwrap_err();
    assert!(error.is_no_records_found(), "{error:?}");
    assert_eq!(response_code(&error), Some(ResponseCode::NoError));
}

#[tokio::test]
async fn declared_empty_zone_gives_nxdomain_outside_zone_is_refused() {
    let dns = TestDns::builder().zone("test").start().await.unwrap();
    let resolver = resolver(dns.addr(), false);
    let error = resolver.mx_lookup("nosuch.test.").await.unwrap_err();
    assert!(error.is_nx_domain(), "{error:?}");
    let error = resolver.mx_lookup("example.org.").await.unwrap_err();
    assert_eq!(
        response_code(&error),
        Some(ResponseCode::Refused),
        "{error:?}"
    );
}

#[tokio::test]
async fn servfail_zone_answers_servfail() {
    let dns = zones().await;
    let resolver = resolver(dns.addr(), false);
    for name in ["broken.test.", "mx.broken.test."] {
        let error = resolver.mx_lookup(name).await.unwrap_err();
        assert_eq!(
            response_code(&error),
            Some(ResponseCode::ServFail),
            "{error:?}"
        );
    }
}

#[tokio::test]
async fn no_answer_zone_times_out() {
    let dns = TestDns::builder()
        .no_answer("silent.test")
        .a("ok.test", Ipv4Addr::LOCALHOST)
        .start()
        .await
        .unwrap();
    let resolver = resolver(dns.addr(), false);
    let error = resolver.mx_lookup("silent.test.").await.unwrap_err();
    assert!(matches!(error, NetError::Timeout), "{error:?}");
    assert!(resolver.ipv4_lookup("ok.test.").await.is_ok());
}

#[tokio::test]
async fn long_txt_is_split_into_strings() {
    let text = "x".repeat(300);
    let dns = TestDns::builder()
        .txt("long.test", &text)
        .start()
        .await
        .unwrap();
    let txt = resolver(dns.addr(), true)
        .txt_lookup("long.test.")
        .await
        .unwrap();
    match &txt.answers()[0].data {
        RData::TXT(txt) => {
            let parts: Vec<&[u8]> = txt.txt_data.iter().map(|p| &p[..]).collect();
            assert_eq!(parts.len(), 2);
            assert_eq!(parts.concat(), text.as_bytes());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn invalid_name_is_an_error_from_start() {
    let error = TestDns::builder()
        .a("bad..name", Ipv4Addr::LOCALHOST)
        .start()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("bad..name"), "{error}");
}

#[tokio::test]
async fn dropping_stops_the_server() {
    let dns = zones().await;
    let addr = dns.addr();
    drop(dns);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The TCP port is closed once the server is gone.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
