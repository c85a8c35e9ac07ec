//! Listeners over loopback TCP: implicit TLS, certificate replacement,
//! PROXY protocol, connection limits and graceful shutdown.
#![allow(clippy::field_reassign_with_default)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, TestBackend, builder, server_name, test_tls, tls_connector};
use smtp_server::{IpNet, Limits, Listening, proxy};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Starts serving; dropping or firing the sender shuts the server down.
fn serve(
    listening: Listening<TestBackend>,
) -> (oneshot::Sender<()>, JoinHandle<std::io::Result<()>>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(listening.serve(async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

async fn tcp(addr: SocketAddr) -> Client<TcpStream> {
    Client::new(TcpStream::connect(addr).await.unwrap())
}

#[tokio::test]
async fn plain_and_implicit_tls_listeners_with_certificate_replacement() {
    let backend = TestBackend::new();
    let (tls, first_root) = test_tls("mx.test");
    let server = builder(&backend)
        .listen(loopback())
        .listen_tls(loopback())
        .tls(tls.clone())
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addrs = listening.local_addrs();
    assert_eq!(addrs.len(), 2);
    assert_ne!(addrs[0].port(), 0);
    let (stop, task) = serve(listening);

    let mut plain = tcp(addrs[0]).await;
    let ehlo = plain.hello().await;
    assert!(ehlo.contains("STARTTLS"));

    let stream = TcpStream::connect(addrs[1]).await.unwrap();
    let stream = tls_connector(&first_root)
        .connect(server_name("mx.test"), stream)
        .await
        .unwrap();
    let mut secure = Client::new(stream);
    let ehlo = secure.hello().await;
    assert!(!ehlo.contains("STARTTLS"), "already encrypted: {ehlo:?}");
    assert!(ehlo.contains("REQUIRETLS"));
    assert!(backend.infos().iter().any(|info| info.tls.is_some()));

    // A renewed certificate applies to new handshakes only.
    let (renewed, second_root) = test_tls("mx.test");
    tls.replace(renewed.current());
    let stream = TcpStream::connect(addrs[1]).await.unwrap();
    let refused = tls_connector(&first_root)
        .connect(server_name("mx.test"), stream)
        .await;
    assert!(refused.is_err(), "the old certificate is gone");
    let stream = TcpStream::connect(addrs[1]).await.unwrap();
    let stream = tls_connector(&second_root)
        .connect(server_name("mx.test"), stream)
        .await
        .unwrap();
    Client::new(stream).hello().await;
    secure.send("NOOP\r\n").await;
    secure.expect("250").await;

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn proxy_protocol_from_trusted_networks_only() {
    let backend = TestBackend::new();
    let server = builder(&backend)
        .listen(loopback())
        .proxy_protocol(vec!["127.0.0.0/8".parse::<IpNet>().unwrap()])
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addr = listening.local_addrs()[0];
    let (_stop, _task) = serve(listening);

    let mut v1 = tcp(addr).await;
    v1.send("PROXY TCP4 203.0.113.9 192.0.2.1 51000 25\r\n")
        .await;
    v1.hello().await;
    v1.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    v1.expect("250 2.1.0").await;
    v1.expect("250 2.1.5").await;
    v1.expect("354").await;
    v1.send("x\r\n.\r\n").await;
    v1.expect("250 2.0.0").await;
    let message = &backend.messages()[0];
    assert_eq!(
        message.envelope.client_addr,
        Some("203.0.113.9:51000".parse().unwrap())
    );

    let mut v2 = tcp(addr).await;
    let header = proxy::encode_v2(
        "[2001:db8::5]:4000".parse().unwrap(),
        "[2001:db8::1]:25".parse().unwrap(),
    );
    v2.send(header).await;
    v2.hello().await;
    let infos = backend.infos();
    let proxied = infos.last().unwrap().proxied.unwrap();
    assert_eq!(proxied.source, "[2001:db8::5]:4000".parse().unwrap());
    assert_eq!(infos.last().unwrap().client_addr(), proxied.source);

    // A connection from a trusted network without a valid header is closed.
    let mut bad = tcp(addr).await;
    bad.send("EHLO x\r\n").await;
    bad.expect_closed().await;
}

#[tokio::test]
async fn proxy_header_from_an_untrusted_peer_is_just_a_bad_command() {
    let backend = TestBackend::new();
    let server = builder(&backend)
        .listen(loopback())
        .proxy_protocol(vec!["192.0.2.0/24".parse::<IpNet>().unwrap()])
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addr = listening.local_addrs()[0];
    let (_stop, _task) = serve(listening);
    let mut client = tcp(addr).await;
    client.expect("220").await;
    client
        .send("PROXY TCP4 203.0.113.9 192.0.2.1 51000 25\r\n")
        .await;
    client.expect("500 5.5.1").await;
    assert!(backend.infos()[0].proxied.is_none());
}

#[tokio::test]
async fn connection_limits_total_and_per_address() {
    let backend = TestBackend::new();
    let mut limits = Limits::default();
    limits.max_connections_per_ip = 1;
    let server = builder(&backend)
        .listen(loopback())
        .limits(limits)
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addr = listening.local_addrs()[0];
    let (_stop, _task) = serve(listening);
    let mut first = tcp(addr).await;
    first.expect("220").await;
    let mut second = tcp(addr).await;
    assert_eq!(
        second.reply().await,
        "421 4.7.0 Too many connections from your address\r\n"
    );
    second.expect_closed().await;
    first.send("QUIT\r\n").await;
    first.expect("221").await;
    first.expect_closed().await;
    // The slot is free again once the first connection is gone.
    let mut third = None;
    for _ in 0..50 {
        let mut client = tcp(addr).await;
        if client.reply().await.starts_with("220") {
            third = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(third.is_some());

    let backend = TestBackend::new();
    let mut limits = Limits::default();
    limits.max_connections = 1;
    let server = builder(&backend)
        .listen(loopback())
        .limits(limits)
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addr = listening.local_addrs()[0];
    let (_stop, _task) = serve(listening);
    let mut first = tcp(addr).await;
    first.expect("220").await;
    let mut second = tcp(addr).await;
    assert_eq!(
        second.reply().await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_transactions_finish() {
    let backend = TestBackend::new();
    let server = builder(&backend)
        .listen(loopback())
        .shutdown_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addr = listening.local_addrs()[0];
    let (stop, task) = serve(listening);

    let mut idle = tcp(addr).await;
    idle.hello().await;
    let mut busy = tcp(addr).await;
    busy.hello().await;
    busy.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    busy.expect("250 2.1.0").await;
    busy.expect("250 2.1.5").await;
    busy.expect("354").await;
    busy.send("first half\r\n").await;

    stop.send(()).unwrap();
    assert_eq!(idle.reply().await, "421 4.3.2 Server shutting down\r\n");
    idle.expect_closed().await;
    // New connections are refused once the listener is gone.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err());

    busy.send("second half\r\n.\r\n").await;
    busy.expect("250 2.0.0").await;
    assert_eq!(busy.reply().await, "421 4.3.2 Server shutting down\r\n");
    busy.expect_closed().await;
    task.await.unwrap().unwrap();
    assert_eq!(backend.messages()[0].body, b"first half\r\nsecond half\r\n");
}

#[tokio::test]
async fn shutdown_deadline_closes_transactions_in_flight() {
    let backend = TestBackend::new();
    let server = builder(&backend)
        .listen(loopback())
        .shutdown_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addr = listening.local_addrs()[0];
    let (stop, task) = serve(listening);
    let mut busy = tcp(addr).await;
    busy.hello().await;
    busy.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    busy.expect("250 2.1.0").await;
    busy.expect("250 2.1.5").await;
    busy.expect("354").await;
    busy.send("never finished\r\n").await;
    stop.send(()).unwrap();
    assert_eq!(busy.reply().await, "421 4.3.2 Server shutting down\r\n");
    busy.expect_closed().await;
    task.await.unwrap().unwrap();
    let message = &backend.messages()[0];
    assert_eq!(message.error, Some(smtp_server::BodyError::Aborted));
}

#[tokio::test]
async fn spawned_server_shutdown_waits_for_the_transaction_in_flight() {
    let backend = TestBackend::new();
    let server = builder(&backend)
        .listen(loopback())
        .shutdown_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = server.bind().await.unwrap().spawn();
    assert_eq!(handle.local_addrs().len(), 1);
    let addr = handle.local_addr();
    let mut busy = tcp(addr).await;
    busy.hello().await;
    busy.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    busy.expect("250 2.1.0").await;
    busy.expect("250 2.1.5").await;
    busy.expect("354").await;
    busy.send("first half\r\n").await;

    let shutdown = tokio::spawn(handle.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the transaction"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections"
    );
    busy.send("second half\r\n.\r\n").await;
    busy.expect("250 2.0.0").await;
    assert_eq!(busy.reply().await, "421 4.3.2 Server shutting down\r\n");
    busy.expect_closed().await;
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown returns once the connection ended")
        .unwrap()
        .unwrap();
    assert_eq!(backend.messages()[0].body, b"first half\r\nsecond half\r\n");
}

#[tokio::test]
async fn spawned_server_abort_closes_connections_without_a_reply() {
    let backend = TestBackend::new();
    let server = builder(&backend).listen(loopback()).build().unwrap();
    let handle = server.bind().await.unwrap().spawn();
    let addr = handle.local_addr();
    let mut client = tcp(addr).await;
    client.hello().await;
    handle.abort().await;
    client.expect_closed().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn dropping_a_spawned_server_shuts_it_down_gracefully() {
    let backend = TestBackend::new();
    let server = builder(&backend).listen(loopback()).build().unwrap();
    let handle = server.bind().await.unwrap().spawn();
    let addr = handle.local_addr();
    let mut client = tcp(addr).await;
    client.hello().await;
    drop(handle);
    assert_eq!(client.reply().await, "421 4.3.2 Server shutting down\r\n");
    client.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_self_signed_configuration_serves_implicit_tls_for_its_names() {
    let generated = smtp_server::TlsConfig::self_signed(["mx.test", "127.0.0.1"]).unwrap();
    assert!(
        generated
            .certificate_pem
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let backend = TestBackend::new();
    let server = builder(&backend)
        .listen_tls(loopback())
        .tls(generated.tls)
        .build()
        .unwrap();
    let handle = server.bind().await.unwrap().spawn();
    for name in ["mx.test", "127.0.0.1"] {
        let stream = TcpStream::connect(handle.local_addr()).await.unwrap();
        let stream = tls_connector(&generated.certificate_der)
            .connect(server_name(name), stream)
            .await
            .unwrap();
        Client::new(stream).hello().await;
    }
    assert!(smtp_server::TlsConfig::self_signed(Vec::<String>::new()).is_err());
    handle.shutdown().await.unwrap();
}

/// Two accept loops on one port (`reuse_port` and `bind_at`), the second
/// on its own single-threaded runtime in another thread: connections are
/// served whichever loop takes them, the connection limit counts them
/// together, and each loop shuts down on its own signal.
#[tokio::test]
async fn accept_loops_on_two_runtimes_share_the_port_and_the_limits() {
    let backend = TestBackend::new();
    let mut limits = Limits::default();
    limits.max_connections = 4;
    let server = builder(&backend)
        .listen(loopback())
        .limits(limits)
        .reuse_port(true)
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addrs = listening.local_addrs();
    let addr = addrs[0];
    // Without reuse_port a second bind is refused before any socket call.
    let plain = builder(&backend).listen(addr).build().unwrap();
    assert_eq!(
        plain.bind_at(&addrs).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    assert_eq!(
        server.bind_at(&[]).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );

    let (stop_other, stopped_other) = oneshot::channel::<()>();
    let (bound_tx, bound_rx) = oneshot::channel::<SocketAddr>();
    let other = std::thread::spawn({
        let server = server.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let second = server.bind_at(&addrs).unwrap();
                let _ = bound_tx.send(second.local_addrs()[0]);
                second
                    .serve(async move {
                        let _ = stopped_other.await;
                    })
                    .await
            })
        }
    });
    assert_eq!(bound_rx.await.unwrap(), addr);
    let (stop, task) = serve(listening);

    // Four sessions at once, wherever the kernel puts them; a fifth is
    // over the shared limit of four.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = tcp(addr).await;
        client.hello().await;
        clients.push(client);
    }
    let mut over = tcp(addr).await;
    assert_eq!(
        over.reply().await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    for client in &mut clients {
        client
            .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
            .await;
        client.expect("250 2.1.0").await;
        client.expect("250 2.1.5").await;
        client.expect("354").await;
        client.send("Subject: t\r\n\r\nbody\r\n.\r\nQUIT\r\n").await;
        client.expect("250 2.0.0").await;
        client.expect("221").await;
    }
    assert_eq!(backend.messages().len(), 4);

    let _ = stop.send(());
    task.await.unwrap().unwrap();
    let _ = stop_other.send(());
    tokio::task::spawn_blocking(move || other.join().unwrap())
        .await
        .unwrap()
        .unwrap();
}
