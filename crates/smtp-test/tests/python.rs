//! Python's smtplib, the most common SMTP client there is, sending to the
//! test server as a subprocess would in an application's test suite.

use std::time::Duration;

use smtp_test::TestServer;
use smtp_test::faults::Faults;

const SCRIPT: &str = r#"
import smtplib, ssl, sys
from email.message import EmailMessage

port, cafile = int(sys.argv[1]), sys.argv[2]
msg = EmailMessage()
msg["From"] = "Shop <shop@example.com>"
msg["To"] = "dave@example.com"
msg["Subject"] = "Your order"
msg.set_content("Thanks for your order. Track it at https://shop.test/track/77.")
msg.add_alternative("<p>Thanks! <a href='https://shop.test/track/77'>Track</a></p>", subtype="html")
msg.add_attachment(b"\x89PNG\r\n\x1a\n", maintype="image", subtype="png", filename="logo.png")

context = ssl.create_default_context(cafile=cafile)
with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
    smtp.starttls(context=context)
    smtp.login("shop", "pw-123")
    refused = smtp.send_message(msg, to_addrs=["dave@example.com", "550@example.com"])
    print(sorted(refused.items()))
"#;

#[tokio::test]
async fn python_smtplib_sends_over_starttls_with_login() {
    let server = TestServer::builder()
        .tls_self_signed()
        .user("shop", "pw-123")
        .faults(Faults::magic())
        .start()
        .await
        .unwrap();
    let ca = std::env::temp_dir().join(format!("smtp-test-ca-{}.pem", server.port()));
    std::fs::write(&ca, server.ca_pem().unwrap()).unwrap();
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(server.port().to_string())
        .arg(&ca)
        .output()
        .await
        .expect("python3 runs");
    let _ = std::fs::remove_file(&ca);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.transcript()
    );
    // smtplib reports the recipient the magic address refused.
    assert!(
        stdout.contains("('550@example.com', (550, b'5.1.1 Requested action not taken"),
        "{stdout}"
    );

    let msg = server
        .wait_for(|m| m.to("dave@example.com"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(msg.recipients(), ["dave@example.com"]);
    assert_eq!(msg.subject(), Some("Your order"));
    assert!(msg.text().unwrap().contains("Thanks for your order."));
    assert_eq!(msg.links(), ["https://shop.test/track/77"]);
    assert_eq!(msg.attachments()[0].filename(), Some("logo.png"));
    assert_eq!(msg.attachments()[0].content_type(), "image/png");
    assert_eq!(msg.attachments()[0].bytes(), b"\x89PNG\r\n\x1a\n");
    assert_eq!(msg.authenticated_as(), Some("shop"));
    assert!(msg.tls().is_some());
}
