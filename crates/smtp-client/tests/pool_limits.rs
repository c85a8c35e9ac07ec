//! The pool against a server's per-client connection limit, refusals at
//! the greeting, retries and the whole-send deadline: a real smtp-server on
//! 127.0.0.1 where its behaviour matters, scripted peers for misbehaviour;
//! and envelopes taken from built messages, delivered to the real server.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Script, config, serve_each};
use smtp_client::{
    Envelope, ErrorKind, Pool, PoolConfig, RecipientOutcomes, RetryPolicy, Step, Timeouts,
};
use smtp_server::{
    Backend, Body, ConnectionInfo, DEFAULT_MAX_CONNECTIONS_PER_IP, Server, Session, SmtpError,
};
use tokio::net::TcpListener;

/// A message's sender and recipients, as the server saw them.
type Seen = (String, Vec<String>);

/// Counts the messages it received and the sessions open at once.
#[derive(Clone, Default)]
struct Sink {
    /// Sender and recipients of every message, as the server saw them.
    envelopes: Arc<std::sync::Mutex<Vec<Seen>>>,
    messages: Arc<AtomicUsize>,
    live: Arc<AtomicUsize>,
    max_live: Arc<AtomicUsize>,
}

struct SinkSession(Sink);

impl Backend for Sink {
    type Session = SinkSession;

    async fn new_session(&self, _: &ConnectionInfo) -> Result<SinkSession, SmtpError> {
        let live = self.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_live.fetch_max(live, Ordering::SeqCst);
        Ok(SinkSession(self.clone()))
    }
}

impl Session for SinkSession {
    async fn data(
        &mut self,
        envelope: &smtp_server::Envelope,
        body: Body,
    ) -> Result<(), SmtpError> {
        let _ = body.read_to_end().await;
        let from = envelope
            .from
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let to = envelope
            .recipients
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        self.0.envelopes.lock().unwrap().push((from, to));
        // A little work per message keeps connections busy, so the sends
        // really compete for them.
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.0.messages.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn close(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A real smtp-server with default limits on 127.0.0.1.
async fn real_server(sink: Sink) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let server = Server::builder(sink)
        .hostname("mx.test")
        .listen("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let listening = server.bind().await.unwrap();
    let addr = listening.local_addrs()[0];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(listening.serve(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sends_through_a_pool_of_40_against_a_limit_of_20_all_arrive() {
    assert_eq!(DEFAULT_MAX_CONNECTIONS_PER_IP, 20);
    let sink = Sink::default();
    let (addr, stop) = real_server(sink.clone()).await;
    let pool = Pool::new(
        config(addr).build().unwrap(),
        PoolConfig {
            max_connections: 40,
            ..PoolConfig::default()
        },
    );
    let envelope = Envelope::new("alice@example.com", ["bob@example.org"]).unwrap();
    let mut tasks = Vec::new();
    for number in 0..200 {
        let pool = pool.clone();
        let envelope = envelope.clone();
        tasks.push(tokio::spawn(async move {
            pool.send(&envelope, format!("Subject: {number}\r\n\r\nHello\r\n"))
                .await
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        let result = task.await.unwrap();
        assert_eq!(result.recipient_outcomes().len(), 1);
        if let Err(error) = result {
            failures.push(error.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(sink.messages.load(Ordering::SeqCst), 200);
    let stats = pool.stats();
    assert_eq!((stats.sent, stats.failures), (200, 0));
    assert!(stats.open <= DEFAULT_MAX_CONNECTIONS_PER_IP, "{stats:?}");
    assert!(
        sink.max_live.load(Ordering::SeqCst) <= DEFAULT_MAX_CONNECTIONS_PER_IP,
        "the server never had more sessions than its limit"
    );
    // The refusals lowered the pool to what the server allows.
    assert!(pool.effective_size() <= DEFAULT_MAX_CONNECTIONS_PER_IP);
    pool.close().await;
    let _ = stop.send(());
}

/// A peer that answers every connection with `421` at once, counting them.
async fn refusing_server(connections: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut script = Script::new(Box::new(tcp));
                script
                    .send("421 4.7.0 Too many connections from your address")
                    .await;
                let _ = script.read_to_end().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_server_refusing_everyone_is_not_hammered() {
    let connections = Arc::new(AtomicUsize::new(0));
    let addr = refusing_server(Arc::clone(&connections)).await;
    let pool = Pool::new(
        config(addr).build().unwrap(),
        PoolConfig {
            max_connections: 8,
            ..PoolConfig::default()
        },
    );
    let envelope = Envelope::new("alice@example.com", ["bob@example.org"]).unwrap();
    let started = Instant::now();
    let mut sends = 0;
    let test_started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let pool = pool.clone();
        let envelope = envelope.clone();
        tasks.spawn(async move {
            let mut done = 0;
            // A worker loop like ferry bench's: send again at once.
            while started.elapsed() < Duration::from_millis(1500) {
                let error = pool.send(&envelope, "x").await.unwrap_err();
                assert_eq!(error.step(), Step::Greeting);
                assert!(error.is_transient());
                assert_eq!(error.reply().unwrap().code(), 421);
                done += 1;
            }
            done
        });
    }
    while let Some(done) = tasks.join_next().await {
        sends += done.unwrap();
    }
    let attempts = connections.load(Ordering::SeqCst);
    assert!(
        test_started.elapsed() < Duration::from_secs(10),
        "sends waited too long"
    );
    // Without a delay this loop makes thousands of connections; with the
    // doubling delay (100 ms, 200 ms, 400 ms, 800 ms, ...) a few rounds of
    // eight, each send trying at most twice.
    assert!(attempts <= 8 * 8, "{attempts} connections in 1.5 s");
    assert!(
        sends > 0 && attempts <= 2 * sends,
        "{sends} sends, {attempts} connections"
    );
}

#[tokio::test]
async fn transient_failures_before_data_are_retried_when_asked() {
    // The first connection of each pair is refused at the greeting, the
    // second serves.
    let (addr, server) = serve_each(4, |index, mut s: Script| async move {
        if index % 2 == 0 {
            s.send("421 4.3.2 busy, try again").await;
            let _ = s.read_to_end().await;
            return;
        }
        s.greet(&[]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<bob@example.org>").await;
        s.send("250 ok").await;
        s.expect("DATA").await;
        s.send("354 go").await;
        s.read_data().await;
        s.send("250 queued").await;
        s.quit().await;
    })
    .await;
    let envelope = Envelope::new("alice@example.com", ["bob@example.org"]).unwrap();
    let retrying = Pool::new(
        config(addr).build().unwrap(),
        PoolConfig {
            retry_transient: RetryPolicy {
                attempts: 1,
                backoff: Duration::from_millis(10),
            },
            ..PoolConfig::default()
        },
    );
    let started = Instant::now();
    retrying.send(&envelope, "x").await.unwrap();
    // The retry waited for the pool's reconnect delay after the refusal.
    assert!(started.elapsed() >= Duration::from_millis(100));
    retrying.close().await;

    let once = Pool::new(config(addr).build().unwrap(), PoolConfig::default());
    let error = once.send(&envelope, "x").await.unwrap_err();
    assert_eq!(
        (error.step(), error.kind()),
        (Step::Greeting, ErrorKind::Closed)
    );
    // Every recipient's fate is in the error.
    assert_eq!(error.recipients().len(), 1);
    assert_eq!(error.recipients()[0].reply().unwrap().code(), 421);
    drop(once);
    server.abort();
}

#[tokio::test]
async fn failures_after_the_data_are_never_retried() {
    let (addr, server) = serve_each(2, |_, mut s: Script| async move {
        s.greet(&[]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<bob@example.org>").await;
        s.send("250 ok").await;
        s.expect("DATA").await;
        s.send("354 go").await;
        s.read_data().await;
        s.send("451 4.3.0 try again later").await;
        let _ = s.read_to_end().await;
    })
    .await;
    let connections = Arc::new(AtomicUsize::new(0));
    let pool = Pool::new(
        config(addr).build().unwrap(),
        PoolConfig {
            retry_transient: RetryPolicy {
                attempts: 3,
                backoff: Duration::from_millis(1),
            },
            ..PoolConfig::default()
        },
    );
    let error = pool
        .send(
            &Envelope::new("alice@example.com", ["bob@example.org"]).unwrap(),
            "x",
        )
        .await
        .unwrap_err();
    assert_eq!(error.step(), Step::DataEnd);
    assert!(error.is_transient());
    assert_eq!(pool.stats().failures, 1);
    drop(connections);
    drop(pool);
    server.abort();
}

#[tokio::test]
async fn the_send_deadline_bounds_a_server_that_never_greets() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let timeouts = Timeouts {
        send_deadline: Some(Duration::from_millis(300)),
        ..Timeouts::default()
    };
    let config = config(addr).timeouts(timeouts).build().unwrap();
    let envelope = Envelope::new("alice@example.com", ["bob@example.org"]).unwrap();
    for send in [
        Box::pin(smtp_client::Client::new(config.clone()).send(&envelope, "x"))
            as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>>,
        Box::pin(async {
            let pool = Pool::new(config.clone(), PoolConfig::default());
            pool.send(&envelope, "x").await
        }),
    ] {
        let started = Instant::now();
        let error = send.await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(
            (error.kind(), error.step()),
            (ErrorKind::Timeout, Step::Greeting)
        );
        assert!(error.to_string().contains("deadline"), "{error}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(error.recipients().len(), 1);
    }
    silent.abort();
}

#[tokio::test]
async fn an_envelope_from_a_built_message_reaches_every_recipient() {
    let sink = Sink::default();
    let (addr, stop) = real_server(sink.clone()).await;
    let message = mail_builder::MessageBuilder::new()
        .from(("Alice Example", "alice@example.com"))
        .to(vec![
            ("Bob", "bob@example.org"),
            ("Carol", "carol@example.org"),
        ])
        .cc("dave@example.org")
        .subject("Envelope from headers")
        .text_body("Hello")
        .attachment("text/plain", "notes.txt", &b"some notes"[..])
        .write_to_vec()
        .unwrap();
    let envelope = Envelope::from_message(&message).unwrap();
    let result = smtp_client::Client::new(config(addr).build().unwrap())
        .send(&envelope, message)
        .await
        .unwrap();
    assert!(result.is_complete());
    let envelopes = sink.envelopes.lock().unwrap().clone();
    assert_eq!(
        envelopes,
        [(
            "alice@example.com".to_owned(),
            vec![
                "bob@example.org".to_owned(),
                "carol@example.org".to_owned(),
                "dave@example.org".to_owned()
            ]
        )]
    );
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lowered_pool_size_lasts_for_the_throttle_period() {
    let sink = Sink::default();
    let (addr, stop) = real_server(sink.clone()).await;
    let pool = Pool::new(
        config(addr).build().unwrap(),
        PoolConfig {
            max_connections: 30,
            throttle_period: Duration::from_secs(3),
            ..PoolConfig::default()
        },
    );
    assert_eq!(pool.effective_size(), 30);
    let envelope = Envelope::new("alice@example.com", ["bob@example.org"]).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let (pool, envelope) = (pool.clone(), envelope.clone());
        tasks.push(tokio::spawn(async move { pool.send(&envelope, "x").await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let started = Instant::now();
    assert!(pool.effective_size() <= DEFAULT_MAX_CONNECTIONS_PER_IP);
    tokio::time::sleep_until((started + Duration::from_millis(3100)).into()).await;
    assert_eq!(pool.effective_size(), 30, "restored after the period");
    assert_eq!(sink.messages.load(Ordering::SeqCst), 60);
    pool.close().await;
    let _ = stop.send(());
}
