//! swaks, the SMTP test tool, as a subprocess: a client nobody here wrote,
//! with STARTTLS, AUTH and an attachment.

use std::time::Duration;

use smtp_test::TestServer;

#[tokio::test]
async fn swaks_sends_an_attachment_over_starttls_with_auth() {
    let server = TestServer::builder()
        .tls_self_signed()
        .user("ops", "pw-456")
        .start()
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("smtp-test-swaks-{}", server.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.txt");
    std::fs::write(&report, "disk usage: 93%\n").unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, server.ca_pem().unwrap()).unwrap();
    let output = tokio::process::Command::new("swaks")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &server.port().to_string(),
        ])
        .args(["--tls", "--tls-verify", "--tls-ca-path"])
        .arg(&ca)
        .args(["--tls-sni", "localhost"])
        .args([
            "--auth",
            "PLAIN",
            "--auth-user",
            "ops",
            "--auth-password",
            "pw-456",
        ])
        .args(["--from", "cron@example.com", "--to", "admin@example.com"])
        .args(["--header", "Subject: Nightly report"])
        .args(["--body", "See attached. Ticket 7731."])
        .arg("--attach")
        .arg(&report)
        .output()
        .await
        .expect("swaks runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "swaks failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        server.transcript()
    );
    let msg = server
        .wait_for(|m| m.to("admin@example.com"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(msg.subject(), Some("Nightly report"));
    assert_eq!(msg.from(), Some("cron@example.com"));
    assert_eq!(msg.authenticated_as(), Some("ops"));
    assert!(msg.tls().is_some());
    assert!(msg.text().unwrap().contains("Ticket 7731"));
    assert_eq!(msg.one_time_code().as_deref(), Some("7731"));
    let attachment = &msg.attachments()[0];
    assert_eq!(attachment.filename(), Some("report.txt"));
    assert_eq!(attachment.bytes(), b"disk usage: 93%\n");
}
