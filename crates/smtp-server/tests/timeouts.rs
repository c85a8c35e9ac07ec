//! Timeouts, with tokio's clock paused so they run instantly.
#![allow(clippy::field_reassign_with_default)]

mod common;

use std::time::Duration;

use common::{Behavior, TestBackend, builder, connect};
use smtp_server::Timeouts;

const FOREVER: Duration = Duration::from_secs(24 * 60 * 60);

#[tokio::test(start_paused = true)]
async fn idle_client_gets_421_after_the_command_timeout() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.wait = FOREVER;
    client.hello().await;
    let start = tokio::time::Instant::now();
    assert_eq!(
        client.reply().await,
        "421 4.4.2 Timeout, closing connection\r\n"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5 * 60));
    client.expect_closed().await;
}

#[tokio::test(start_paused = true)]
async fn stalled_data_gets_421_after_the_data_block_timeout() {
    let backend = TestBackend::new();
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.wait = FOREVER;
    client.hello().await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
    client.send("partial").await;
    let start = tokio::time::Instant::now();
    client.expect("421 4.4.2").await;
    assert_eq!(start.elapsed(), Duration::from_secs(3 * 60));
    client.expect_closed().await;
    assert_eq!(
        backend.messages()[0].error,
        Some(smtp_server::BodyError::Aborted)
    );
}

#[tokio::test(start_paused = true)]
async fn slow_handler_gets_421_after_the_data_termination_timeout() {
    let backend = TestBackend::with(Behavior {
        data_delay: Some(Duration::from_secs(60 * 60)),
        ..Behavior::default()
    });
    let server = builder(&backend).build().unwrap();
    let mut client = connect(&server);
    client.wait = FOREVER;
    client.hello().await;
    client
        .send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    client.expect("250 2.1.0").await;
    client.expect("250 2.1.5").await;
    client.expect("354").await;
    client.send("x\r\n.\r\n").await;
    let start = tokio::time::Instant::now();
    client.expect("421 4.4.2").await;
    assert_eq!(start.elapsed(), Duration::from_secs(10 * 60));
}

#[tokio::test(start_paused = true)]
async fn session_deadline_comes_before_the_command_timeout() {
    let backend = TestBackend::new();
    let mut timeouts = Timeouts::default();
    timeouts.session = Duration::from_secs(60);
    let server = builder(&backend).timeouts(timeouts).build().unwrap();
    let start = tokio::time::Instant::now();
    let mut client = connect(&server);
    client.wait = FOREVER;
    client.hello().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    client.send("NOOP\r\n").await;
    client.expect("250").await;
    client.expect("421 4.4.2").await;
    // The deadline counts from the connection, not from the last command.
    assert_eq!(start.elapsed(), Duration::from_secs(60));
    client.expect_closed().await;
}

#[tokio::test(start_paused = true)]
async fn greeting_delay_catches_early_talkers() {
    let backend = TestBackend::new();
    let mut timeouts = Timeouts::default();
    timeouts.greeting_delay = Duration::from_secs(5);
    let server = builder(&backend).timeouts(timeouts).build().unwrap();
    let mut client = connect(&server);
    client.wait = FOREVER;
    tokio::time::sleep(Duration::from_secs(1)).await;
    client.send("EHLO early\r\n").await;
    client.expect("554 5.5.0").await;
    client.expect_closed().await;

    let mut patient = connect(&server);
    patient.wait = FOREVER;
    patient.hello().await;
}
