//! Sends one message file and prints the transcript and each recipient's
//! outcome.
//!
//! ```text
//! cargo run -p smtp-client --example send -- URL FROM TO[,TO...] FILE
//! ```
//!
//! `URL` says where and how to connect, for example
//! `smtp://alice:secret@mail.example.com:587` (STARTTLS required),
//! `smtps://mail.example.com` (implicit TLS on 465),
//! `smtp://127.0.0.1:2525?tls=none` (plaintext, test servers); see
//! `ClientConfig::from_url`. The file is streamed, never read whole.
//!
//! A server with a certificate from a private CA (a test server, a company
//! relay) is trusted by naming that CA in `SMTP_CA_FILE` (PEM); the
//! certificate is still checked against the host name. When the URL names
//! an IP address but the certificate a host name, set that name in
//! `SMTP_TLS_NAME`.

use std::process::ExitCode;

use smtp_client::{Client, ClientConfig, Envelope, Message, RecipientOutcomes, TlsConfig};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(error) => {
            // Print the error and each cause once.
            let mut text = error.to_string();
            let mut cause = error.source();
            while let Some(inner) = cause {
                text.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            eprintln!("error: {text}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, from, to, file] = args.as_slice() else {
        return Err("usage: send URL FROM TO[,TO...] FILE".into());
    };
    let mut builder = ClientConfig::builder_from_url(url)?;
    if let Ok(ca_file) = std::env::var("SMTP_CA_FILE") {
        let mut tls = TlsConfig::new().add_root_certificates_pem(&std::fs::read(ca_file)?)?;
        if let Ok(name) = std::env::var("SMTP_TLS_NAME") {
            tls = tls.server_name(name);
        }
        builder = builder.tls_config(tls);
    }
    let config = builder.transcript(|line| eprintln!("{line}")).build()?;

    let envelope = if from.is_empty() || from == "<>" {
        Envelope::null_sender(to.split(','))?
    } else {
        Envelope::new(from.as_str(), to.split(','))?
    };
    let file = tokio::fs::File::open(file).await?;
    let size = file.metadata().await?.len();
    let message = Message::from_reader(file).size(size);

    let result = Client::new(config).send(&envelope, message).await;
    for outcome in result.recipient_outcomes() {
        let verdict = if outcome.accepted {
            "accepted"
        } else if outcome.is_transient() {
            "deferred"
        } else {
            "rejected"
        };
        match outcome.reply() {
            Some(reply) => println!("{}: {verdict} ({reply})", outcome.address),
            None => println!("{}: {verdict}", outcome.address),
        }
    }
    Ok(match result {
        Ok(result) if result.is_complete() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(error) => {
            let kind = if error.is_transient() {
                "temporary"
            } else {
                "permanent"
            };
            eprintln!("{kind} failure at {}: {error}", error.step());
            ExitCode::from(if error.is_transient() { 75 } else { 1 })
        }
    })
}
