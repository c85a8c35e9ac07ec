//! Clients that hold a slot without sending mail: byte drips in DATA and
//! BDAT, endless NOOPs, idle connections under load, and timeouts too
//! large to add to a clock.
#![allow(clippy::field_reassign_with_default)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, TestBackend, builder, connect};
use smtp_server::{Limits, Listening, Stress, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

const FOREVER: Duration = Duration::from_secs(24 * 60 * 60);

/// Writes `byte` every `every` until the server sends a whole line or
/// closes; returns what it sent and when.
async fn drip_until_reply(stream: &mut DuplexStream, every: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut ticks = tokio::time::interval_at(start + every, every);
    let mut received = Vec::new();
    loop {
        let mut chunk = [0u8; 512];
        tokio::select! {
            read = stream.read(&mut chunk) => {
                let n = read.unwrap_or(0);
                received.extend_from_slice(&chunk[..n]);
                if n == 0 || received.ends_with(b"\r\n") {
                    break;
                }
            }
            _ = ticks.tick() => {
                if stream.write_all(b"x").await.is_err() {
                    break;
                }
            }
        }
        assert!(start.elapsed() < FOREVER, "the drip never ended");
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        start.elapsed(),
    )
}

async fn in_data(client: &mut Client<DuplexStream>) {
    client.hello().await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
}

#[tokio::test(start_paused = true)]
async fn a_data_drip_is_cut_by_the_minimum_rate() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.wait = FOREVER;
    in_data(&mut client).await;
    // One octet a minute resets the 3-minute data-block timer every time;
    // only the minimum rate (500 octets/s) ends it, at about 3 minutes
    // instead of the 1-hour session limit.
    let (reply, elapsed) = drip_until_reply(&mut client.stream, Duration::from_secs(60)).await;
    assert!(
        reply.starts_with("421 4.4.2") && reply.contains("too slowly"),
        "{reply:?}"
    );
    assert!(
        elapsed >= Duration::from_secs(180) && elapsed < Duration::from_secs(190),
        "{elapsed:?}"
    );
    assert_eq!(
        backend.messages()[0].error,
        Some(smtp_server::BodyError::Aborted)
    );
}

#[tokio::test(start_paused = true)]
async fn a_bdat_drip_is_cut_by_the_minimum_rate() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.wait = FOREVER;
    client.hello().await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nBDAT 100000 LAST\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    let (reply, elapsed) = drip_until_reply(&mut client.stream, Duration::from_secs(100)).await;
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");
    assert!(elapsed < Duration::from_secs(200), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_slow_transfer_above_the_minimum_rate_is_accepted() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.wait = FOREVER;
    in_data(&mut client).await;
    // 1000 octets a second for 5 minutes: longer than the data-block
    // timeout in total, but above the minimum rate all along.
    let line = format!("{}\r\n", "y".repeat(998));
    for _ in 0..300 {
        client.send(&line).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    client.send(".\r\n").await;
    client.expect("250 2.0.0").await;
    assert_eq!(backend.messages()[0].body.len(), 300 * 1000);
}

#[tokio::test(start_paused = true)]
async fn junk_commands_count_as_errors_past_the_limit() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.hello().await;
    // 100 junk commands are free (Postfix's smtpd_junk_command_limit);
    // each one past that counts towards the 20-error limit.
    let mut script = String::new();
    for i in 0..130 {
        script.push_str(["NOOP\r\n", "RSET\r\n", "HELP\r\n", "VRFY bob\r\n"][i % 4]);
    }
    client.send(&script).await;
    let mut answered = 0;
    loop {
        let reply = client.reply().await;
        if reply.starts_with("421 4.7.0") {
            break;
        }
        answered += 1;
        assert!(answered <= 120, "no limit: {reply:?}");
    }
    assert_eq!(answered, 120);
    client.expect_closed().await;
}

#[tokio::test(start_paused = true)]
async fn the_junk_count_starts_again_after_a_message() {
    let backend = TestBackend::new();
    let mut limits = Limits::default();
    limits.max_junk_commands = 3;
    limits.max_errors = 2;
    let server = builder(&backend).limits(limits).build().unwrap();
    let mut client = connect(&server);
    client.hello().await;
    for _ in 0..4 {
        client.send("NOOP\r\n").await;
        client.expect("250").await;
    }
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
    client.send("hi\r\n.\r\n").await;
    client.expect("250 2.0.0").await;
    // Three more are free again; the error from the fourth junk command
    // before the message still counts, so the next error closes.
    for _ in 0..3 {
        client.send("RSET\r\n").await;
        client.expect("250").await;
    }
    client.send("NOOP\r\n").await;
    client.expect("250").await;
    client.expect("421 4.7.0").await;
}

#[tokio::test(start_paused = true)]
async fn timeouts_too_large_for_the_clock_do_not_panic() {
    let backend = TestBackend::new();
    let mut timeouts = Timeouts::default();
    timeouts.command = Duration::MAX;
    timeouts.data_block = Duration::MAX;
    timeouts.data_termination = Duration::MAX;
    timeouts.session = Duration::MAX;
    timeouts.tls_handshake = Duration::MAX;
    timeouts.proxy_header = Duration::MAX;
    let mut stress = Stress::default();
    stress.timeout = Duration::MAX;
    let server = builder(&backend)
        .timeouts(timeouts)
        .stress(stress)
        .build()
        .unwrap();
    let mut client = connect(&server);
    in_data(&mut client).await;
    client.send("x\r\n.\r\nQUIT\r\n").await;
    client.expect("250 2.0.0").await;
    client.expect("221").await;
}

// ----- over TCP: stress mode and dual-stack listeners -----

fn serve(listening: Listening<TestBackend>) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(listening.serve(async move {
        let _ = stopped.await;
    }));
    stop
}

async fn greeted(addr: SocketAddr) -> Client<TcpStream> {
    let mut client = Client::new(TcpStream::connect(addr).await.unwrap());
    client.expect("220 ").await;
    client
}

#[tokio::test]
async fn under_stress_idle_connections_give_their_slots_up() {
    let backend = TestBackend::new();
    let mut limits = Limits::default();
    limits.max_connections = 100;
    limits.max_connections_per_ip = 100;
    // The default mark: three quarters of the slots.
    let mut stress = Stress::default();
    stress.timeout = Duration::from_millis(300);
    // The normal command timeout would hold every idle slot for a minute.
    let mut timeouts = Timeouts::default();
    timeouts.command = Duration::from_secs(60);
    let server = builder(&backend)
        .listen("127.0.0.1:0".parse().unwrap())
        .limits(limits)
        .timeouts(timeouts)
        .stress(stress)
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addr = listening.local_addrs()[0];
    let _stop = serve(listening);

    // Below the mark, idle sessions keep the normal timeout.
    let mut calm = Vec::new();
    for _ in 0..74 {
        calm.push(greeted(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    for client in &mut calm {
        client.send("NOOP\r\n").await;
        client.expect("250").await;
    }
    // Fill every slot with idle connections: the server is under stress.
    let mut idle = calm;
    for _ in 0..26 {
        idle.push(greeted(addr).await);
    }
    let start = std::time::Instant::now();
    let mut refused = Client::new(TcpStream::connect(addr).await.unwrap());
    refused.expect("421 4.7.0").await;
    // Every idle session times out after the stress timeout, also those
    // that were already waiting when stress began.
    for client in &mut idle {
        client.expect("421 4.4.2").await;
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // A client that sends mail gets in again.
    let mut sender = greeted(addr).await;
    sender.send("EHLO client.test\r\n").await;
    sender.expect("250-mx.test").await;
    sender
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    sender.expect("250 2.1.0").await;
    sender.expect("250 2.1.5").await;
    sender.expect("354").await;
    sender.send("hi\r\n.\r\n").await;
    sender.expect("250 2.0.0").await;
}

#[tokio::test]
async fn under_stress_one_protocol_error_closes() {
    let backend = TestBackend::new();
    let mut limits = Limits::default();
    limits.max_connections = 4;
    let mut stress = Stress::default();
    stress.high_water = Some(2);
    let server = builder(&backend)
        .listen("127.0.0.1:0".parse().unwrap())
        .limits(limits)
        .stress(stress)
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addr = listening.local_addrs()[0];
    let _stop = serve(listening);
    let mut first = greeted(addr).await;
    first.send("BOGUS\r\n").await;
    first.expect("500").await;
    first.send("BOGUS\r\n").await;
    first.expect("500").await;
    let _second = greeted(addr).await;
    first.send("BOGUS\r\n").await;
    first.expect("500").await;
    first.expect("421 4.7.0").await;
}

/// A listener on `[::]` (dual-stack), or `None` when this machine has no
/// IPv6 or maps no IPv4 into it.
async fn dual_stack_port() -> Option<u16> {
    let probe = std::net::TcpListener::bind("[::]:0").ok()?;
    let port = probe.local_addr().ok()?.port();
    let connected = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    drop(probe);
    connected.then_some(port)
}

#[tokio::test]
async fn dual_stack_listener_trusts_an_ipv4_proxy_and_counts_ipv4_per_address() {
    if dual_stack_port().await.is_none() {
        eprintln!("skipped: no dual-stack IPv6 listener on this machine");
        return;
    }
    let backend = TestBackend::new();
    let server = builder(&backend)
        .listen("[::]:0".parse().unwrap())
        .proxy_protocol(vec!["127.0.0.1/32".parse().unwrap()])
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let dual: SocketAddr = (
        std::net::Ipv4Addr::LOCALHOST,
        listening.local_addrs()[0].port(),
    )
        .into();
    let _stop = serve(listening);

    // The peer is ::ffff:127.0.0.1 on the [::] listener: it is trusted.
    let mut proxied = Client::new(TcpStream::connect(dual).await.unwrap());
    proxied
        .send("PROXY TCP4 198.51.100.7 127.0.0.1 40000 25\r\n")
        .await;
    proxied.expect("220 ").await;
    proxied.send("EHLO client.test\r\n").await;
    proxied.expect("250-mx.test").await;
    let info = backend.infos()[0].clone();
    assert_eq!(
        info.client_addr().ip().to_string(),
        "198.51.100.7",
        "{info:?}"
    );

    // Without a PROXY header: one slot for 127.0.0.1 across both
    // listeners, whichever form the address takes.
    let backend = TestBackend::new();
    let server = builder(&backend)
        .listen("[::]:0".parse().unwrap())
        .listen("127.0.0.1:0".parse().unwrap())
        .limits(limits_per_ip(1))
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addrs = listening.local_addrs();
    let dual: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, addrs[0].port()).into();
    let _stop = serve(listening);
    let _held = greeted(addrs[1]).await;
    let mut second = Client::new(TcpStream::connect(dual).await.unwrap());
    second.expect("421 4.7.0").await;
}

fn limits_per_ip(n: usize) -> Limits {
    let mut limits = Limits::default();
    limits.max_connections_per_ip = n;
    limits
}

#[tokio::test]
async fn stress_can_be_turned_off() {
    let backend = TestBackend::new();
    let mut limits = Limits::default();
    limits.max_connections = 2;
    let mut stress = Stress::default();
    stress.enabled = false;
    let server = builder(&backend)
        .listen("127.0.0.1:0".parse().unwrap())
        .limits(limits)
        .stress(stress)
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addr = listening.local_addrs()[0];
    let _stop = serve(listening);
    let mut a = greeted(addr).await;
    let _b = greeted(addr).await;
    for _ in 0..3 {
        a.send("BOGUS\r\n").await;
        a.expect("500").await;
    }
    a.stream.shutdown().await.unwrap();
}
