//! The connection pool against scripted servers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Script, config, serve_each};
use smtp_client::{Envelope, ErrorKind, Pool, PoolConfig, Step};

fn envelope() -> Envelope {
    Envelope::new("alice@example.com", ["bob@example.org"]).unwrap()
}

/// What the server saw, across all connections.
#[derive(Default)]
struct Seen {
    live: AtomicUsize,
    max_live: AtomicUsize,
    messages: AtomicUsize,
    quits: AtomicUsize,
    noops: AtomicUsize,
}

/// How a session behaves after its first message.
#[derive(Clone, Copy, PartialEq)]
enum After {
    /// Keep serving.
    Serve,
    /// Close the connection silently.
    Close,
    /// Answer the next command with 421 and close.
    Reply421,
}

/// Serves transactions (without PIPELINING, so one reply per command)
/// until QUIT or EOF; `delay` is spent before each end-of-data reply.
async fn session(s: Script, seen: Arc<Seen>, delay: Duration, after: After) {
    // Pooled connections sit idle for long stretches of (paused) time.
    let mut s = s.with_read_limit(Duration::from_secs(24 * 3600));
    let live = seen.live.fetch_add(1, Ordering::SeqCst) + 1;
    seen.max_live.fetch_max(live, Ordering::SeqCst);
    s.greet(&["8BITMIME"]).await;
    let mut delivered = 0;
    while let Some(line) = s.try_line().await {
        if delivered > 0 && after == After::Reply421 {
            s.send("421 4.4.2 idle too long, closing").await;
            break;
        }
        match line.split(' ').next().unwrap_or_default() {
            "MAIL" | "RCPT" | "RSET" => s.send("250 ok").await,
            "NOOP" => {
                seen.noops.fetch_add(1, Ordering::SeqCst);
                s.send("250 ok").await;
            }
            "DATA" => {
                s.send("354 go").await;
                s.read_data().await;
                tokio::time::sleep(delay).await;
                seen.messages.fetch_add(1, Ordering::SeqCst);
                delivered += 1;
                s.send("250 queued").await;
                if after == After::Close {
                    break;
                }
            }
            "QUIT" => {
                seen.quits.fetch_add(1, Ordering::SeqCst);
                s.send("221 bye").await;
                break;
            }
            other => panic!("unexpected command {other:?}"),
        }
    }
    seen.live.fetch_sub(1, Ordering::SeqCst);
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn sequential_sends_reuse_one_connection() {
    let seen = Arc::new(Seen::default());
    let server_seen = Arc::clone(&seen);
    let (addr, server) = serve_each(10, move |_, s| {
        session(s, Arc::clone(&server_seen), Duration::ZERO, After::Serve)
    })
    .await;
    let pool = Pool::new(config(addr).build().unwrap(), PoolConfig::default());
    for _ in 0..3 {
        pool.send(&envelope(), "x").await.unwrap();
    }
    let stats = pool.stats();
    assert_eq!(
        (stats.open, stats.idle, stats.sent, stats.failures),
        (1, 1, 3, 0)
    );
    pool.close().await;
    assert_eq!(pool.stats().open, 0);
    eventually("QUIT on close", || seen.quits.load(Ordering::SeqCst) == 1).await;
    server.abort();
    assert_eq!(seen.messages.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn the_cap_holds_for_live_connections_under_concurrency() {
    let seen = Arc::new(Seen::default());
    let server_seen = Arc::clone(&seen);
    let (addr, server) = serve_each(50, move |_, s| {
        session(
            s,
            Arc::clone(&server_seen),
            Duration::from_millis(20),
            After::Serve,
        )
    })
    .await;
    let settings = PoolConfig {
        max_connections: 2,
        // Retire connections often, so replacements race with new sends.
        max_messages_per_connection: 3,
        ..PoolConfig::default()
    };
    let pool = Pool::new(config(addr).build().unwrap(), settings);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(
            async move { pool.send(&envelope(), "x").await },
        ));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(pool.stats().open <= 2);
    assert_eq!(pool.stats().sent, 16);
    pool.close().await;
    eventually("every session ended", || {
        seen.live.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(seen.messages.load(Ordering::SeqCst), 16);
    let max_live = seen.max_live.load(Ordering::SeqCst);
    assert!(max_live <= 2, "{max_live} connections were open at once");
    server.abort();
}

#[tokio::test]
async fn a_connection_is_retired_after_its_message_limit() {
    let seen = Arc::new(Seen::default());
    let server_seen = Arc::clone(&seen);
    let accepted = Arc::new(AtomicUsize::new(0));
    let server_accepted = Arc::clone(&accepted);
    let (addr, server) = serve_each(10, move |_, s| {
        server_accepted.fetch_add(1, Ordering::SeqCst);
        session(s, Arc::clone(&server_seen), Duration::ZERO, After::Serve)
    })
    .await;
    let settings = PoolConfig {
        max_messages_per_connection: 1,
        ..PoolConfig::default()
    };
    let pool = Pool::new(config(addr).build().unwrap(), settings);
    for _ in 0..3 {
        pool.send(&envelope(), "x").await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    // Each retired connection says QUIT, in the background.
    eventually("three QUITs", || seen.quits.load(Ordering::SeqCst) == 3).await;
    assert_eq!(pool.stats().open, 0);
    server.abort();
}

#[tokio::test]
async fn a_connection_closed_while_idle_is_replaced_transparently() {
    for after in [After::Close, After::Reply421] {
        let seen = Arc::new(Seen::default());
        let server_seen = Arc::clone(&seen);
        let (addr, server) = serve_each(10, move |index, s| {
            // The first connection dies after one message; later ones live.
            let after = if index == 0 { after } else { After::Serve };
            session(s, Arc::clone(&server_seen), Duration::ZERO, after)
        })
        .await;
        let pool = Pool::new(config(addr).build().unwrap(), PoolConfig::default());
        pool.send(&envelope(), "one").await.unwrap();
        eventually("first session ended", || {
            after == After::Reply421 || seen.live.load(Ordering::SeqCst) == 0
        })
        .await;
        let result = pool.send(&envelope(), "two").await.unwrap();
        assert!(result.is_complete());
        let stats = pool.stats();
        assert_eq!((stats.sent, stats.failures, stats.open), (2, 0, 1));
        assert_eq!(seen.messages.load(Ordering::SeqCst), 2);
        pool.close().await;
        server.abort();
    }
}

#[tokio::test]
async fn a_connection_that_failed_mid_transaction_is_dropped() {
    let (addr, server) = serve_each(10, move |index, mut s| async move {
        s.greet(&[]).await;
        s.expect("MAIL FROM:<alice@example.com>").await;
        s.send("250 ok").await;
        s.expect("RCPT TO:<bob@example.org>").await;
        s.send("250 ok").await;
        s.expect("DATA").await;
        s.send("354 go").await;
        s.read_data().await;
        if index == 0 {
            // Gone before the reply to the end of data: the client cannot
            // know whether the message was taken, so it must not resend.
            return;
        }
        s.send("250 ok").await;
        s.quit().await;
    })
    .await;
    let pool = Pool::new(config(addr).build().unwrap(), PoolConfig::default());
    let error = pool.send(&envelope(), "x").await.unwrap_err();
    assert_eq!(
        (error.kind(), error.step()),
        (ErrorKind::Closed, Step::DataEnd)
    );
    assert!(error.is_transient());
    let stats = pool.stats();
    assert_eq!((stats.open, stats.idle, stats.failures), (0, 0, 1));
    pool.send(&envelope(), "x").await.unwrap();
    pool.close().await;
    server.abort();
}

#[tokio::test]
async fn an_idle_connection_is_checked_with_noop_before_reuse() {
    let seen = Arc::new(Seen::default());
    let server_seen = Arc::clone(&seen);
    let (addr, server) = serve_each(10, move |_, s| {
        session(s, Arc::clone(&server_seen), Duration::ZERO, After::Serve)
    })
    .await;
    let settings = PoolConfig {
        check_after_idle: Duration::ZERO,
        ..PoolConfig::default()
    };
    let pool = Pool::new(config(addr).build().unwrap(), settings);
    pool.send(&envelope(), "x").await.unwrap();
    pool.send(&envelope(), "x").await.unwrap();
    assert_eq!(seen.noops.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().open, 1);
    pool.close().await;
    server.abort();
}

#[tokio::test]
async fn a_noop_failure_means_a_fresh_connection() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let server_accepted = Arc::clone(&accepted);
    let (addr, server) = serve_each(10, move |index, mut s| {
        server_accepted.fetch_add(1, Ordering::SeqCst);
        async move {
            s.greet(&[]).await;
            if index == 0 {
                for reply in ["250 ok", "250 ok", "354 go"] {
                    s.line().await;
                    s.send(reply).await;
                }
                s.read_data().await;
                s.send("250 ok").await;
                s.expect("NOOP").await;
                s.send("421 4.3.2 going away").await;
                return;
            }
            for reply in ["250 ok", "250 ok", "354 go"] {
                s.line().await;
                s.send(reply).await;
            }
            s.read_data().await;
            s.send("250 ok").await;
            s.quit().await;
        }
    })
    .await;
    let settings = PoolConfig {
        check_after_idle: Duration::ZERO,
        ..PoolConfig::default()
    };
    let pool = Pool::new(config(addr).build().unwrap(), settings);
    pool.send(&envelope(), "x").await.unwrap();
    pool.send(&envelope(), "x").await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    pool.close().await;
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_and_max_lifetime_retire_connections() {
    let seen = Arc::new(Seen::default());
    let server_seen = Arc::clone(&seen);
    let accepted = Arc::new(AtomicUsize::new(0));
    let server_accepted = Arc::clone(&accepted);
    let (addr, server) = serve_each(10, move |_, s| {
        server_accepted.fetch_add(1, Ordering::SeqCst);
        session(s, Arc::clone(&server_seen), Duration::ZERO, After::Serve)
    })
    .await;
    let settings = PoolConfig {
        idle_timeout: Duration::from_secs(30),
        max_lifetime: Duration::from_secs(100),
        check_after_idle: Duration::from_secs(3600),
        ..PoolConfig::default()
    };
    let pool = Pool::new(config(addr).build().unwrap(), settings);
    pool.send(&envelope(), "x").await.unwrap();
    tokio::time::sleep(Duration::from_secs(31)).await;
    // Idle too long: a new connection.
    pool.send(&envelope(), "x").await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        pool.send(&envelope(), "x").await.unwrap();
    }
    // 100 seconds after the second connection opened it is retired.
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    pool.close().await;
    server.abort();
}
