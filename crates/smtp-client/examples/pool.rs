//! Sends many messages from many tasks through one pool and prints the
//! pool's counters.
//!
//! ```text
//! cargo run -p smtp-client --example pool -- [HOST [PORT [MESSAGES [CONNECTIONS]]]]
//! ```
//!
//! Defaults: 127.0.0.1, 2525, 1000 messages, 8 connections. Point it at
//! any test server, for example `ferry serve` or Postfix's `smtp-sink`.

use std::time::Instant;

use smtp_client::{ClientConfig, Envelope, Pool, PoolConfig, Tls};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "127.0.0.1".to_owned());
    let port: u16 = args.next().map_or(Ok(2525), |port| port.parse())?;
    let messages: usize = args.next().map_or(Ok(1000), |count| count.parse())?;
    let connections: usize = args.next().map_or(Ok(8), |count| count.parse())?;

    let config = ClientConfig::builder(host)
        .port(port)
        .tls(Tls::None)
        .build()?;
    let pool = Pool::new(
        config,
        PoolConfig {
            max_connections: connections,
            ..PoolConfig::default()
        },
    );
    let envelope = Envelope::new("sender@example.com", ["recipient@example.org"])?;

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(messages);
    for number in 0..messages {
        let pool = pool.clone();
        let envelope = envelope.clone();
        tasks.push(tokio::spawn(async move {
            let message = format!(
                "From: sender@example.com\r\nTo: recipient@example.org\r\n\
                 Subject: message {number}\r\n\r\nHello number {number}.\r\n"
            );
            pool.send(&envelope, message).await
        }));
    }
    let mut failed = 0;
    for task in tasks {
        if let Err(error) = task.await? {
            failed += 1;
            if failed <= 5 {
                eprintln!("send failed: {error}");
            }
        }
    }
    let elapsed = started.elapsed();
    let stats = pool.stats();
    println!(
        "{} sent, {} failed in {:.2?} ({:.0} messages/s); {} connections open, {} idle",
        stats.sent,
        stats.failures,
        elapsed,
        stats.sent as f64 / elapsed.as_secs_f64(),
        stats.open,
        stats.idle,
    );
    pool.close().await;
    Ok(())
}
