//! Sends one message file and prints the transcript and each recipient's
//! outcome.
//!
//! ```text
//! cargo run -p smtp-client --example send -- HOST PORT FROM TO[,TO...] FILE
//! ```
//!
//! The file is streamed, never read whole. Environment: `SMTP_TLS`
//! (`none`, `opportunistic` (default), `required`, `implicit`),
//! `SMTP_USER` and `SMTP_PASSWORD` for AUTH, `SMTP_INSECURE=1` to accept
//! any certificate (test servers only).

use std::process::ExitCode;

use smtp_client::{Address, Client, ClientConfig, Credentials, Envelope, Message, Tls, TlsConfig};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [host, port, from, to, file] = args.as_slice() else {
        return Err("usage: send HOST PORT FROM TO[,TO...] FILE".into());
    };
    let tls = match std::env::var("SMTP_TLS").as_deref() {
        Ok("none") => Tls::None,
        Ok("required") => Tls::Required,
        Ok("implicit") => Tls::Implicit,
        Ok("opportunistic") | Err(_) => Tls::Opportunistic,
        Ok(other) => return Err(format!("unknown SMTP_TLS {other:?}").into()),
    };
    let insecure = std::env::var("SMTP_INSECURE").is_ok_and(|value| value == "1");
    let mut builder = ClientConfig::builder(host.as_str())
        .port(port.parse()?)
        .tls(tls)
        .tls_config(TlsConfig::new().dangerous_accept_invalid_certs(insecure))
        .transcript(|line| eprintln!("{line}"));
    if let (Ok(user), Ok(password)) = (std::env::var("SMTP_USER"), std::env::var("SMTP_PASSWORD")) {
        builder = builder.credentials(Credentials::password(user, password));
    }
    let config = builder.build()?;

    let from: Option<Address> = if from.is_empty() || from == "<>" {
        None
    } else {
        Some(from.parse()?)
    };
    let to = to
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<Address>, _>>()?;
    let envelope = Envelope::new(from, to)?;
    let file = tokio::fs::File::open(file).await?;
    let size = file.metadata().await?.len();
    let message = Message::from_reader(file).size(size);

    match Client::new(config).send(&envelope, message).await {
        Ok(result) => {
            for outcome in &result.recipients {
                let verdict = if outcome.accepted {
                    "accepted"
                } else {
                    "rejected"
                };
                match &outcome.reply {
                    Some(reply) => println!("{}: {verdict} ({reply})", outcome.address),
                    None => println!("{}: {verdict}", outcome.address),
                }
            }
            Ok(if result.is_complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Err(error) => {
            let kind = if error.is_transient() {
                "temporary"
            } else {
                "permanent"
            };
            eprintln!("{kind} failure at {}: {error}", error.step());
            Ok(ExitCode::from(if error.is_transient() { 75 } else { 1 }))
        }
    }
}
