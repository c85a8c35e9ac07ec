//! A minimal receiver: accepts every message and prints it.
//!
//! ```text
//! cargo run -p smtp-server --example receiver -- 127.0.0.1:2525
//! swaks --server 127.0.0.1 --port 2525 --to you@example.net
//! ```

use std::net::SocketAddr;

use smtp_server::{Backend, Body, ConnectionInfo, Envelope, Server, Session, SmtpError};

struct Printer;

struct PrinterSession {
    client: SocketAddr,
}

impl Backend for Printer {
    type Session = PrinterSession;

    async fn new_session(&self, info: &ConnectionInfo) -> Result<PrinterSession, SmtpError> {
        Ok(PrinterSession {
            client: info.client_addr(),
        })
    }
}

impl Session for PrinterSession {
    async fn data(&mut self, envelope: &Envelope, body: Body) -> Result<(), SmtpError> {
        // Bounded by the server's size limit. An error means the message is
        // refused anyway (too large, bare line endings, connection lost);
        // `?` turns it into the matching reply.
        let message = body.read_to_end().await?;
        let from = envelope
            .from
            .as_ref()
            .map_or_else(|| "<>".to_owned(), |address| address.to_string());
        let to: Vec<String> = envelope
            .recipients
            .iter()
            .map(|recipient| recipient.address.to_string())
            .collect();
        println!(
            "message from {from} to {} via {} ({} octets)\n{}",
            to.join(", "),
            self.client,
            message.len(),
            String::from_utf8_lossy(&message)
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2525".to_owned())
        .parse()?;
    let server = Server::builder(Printer)
        .hostname("localhost")
        .listen(addr)
        .build()?;
    let listening = server.bind().await?;
    for addr in listening.local_addrs() {
        println!("listening on {addr}");
    }
    listening
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
