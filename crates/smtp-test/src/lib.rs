//! A test kit for code that sends mail: a real, strict SMTP server
//! (smtp-server) in your test's process, the messages it received with
//! their envelopes and parsed content, waiting and assertions, and faults
//! scripted in a small rule language.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use smtp_test::{faults::Faults, TestServer};
//!
//! let server = TestServer::builder()
//!     .user("alice", "secret")
//!     .faults(Faults::parse(r#"rcpt to "*@blocked.test" reply 550 5.1.1 "no such user""#)?)
//!     .start()
//!     .await?;
//!
//! // The application under test sends through server.url() (here: smtp-client).
//! let config = smtp_client::ClientConfig::from_url(&server.url())?;
//! let envelope =
//!     smtp_client::Envelope::new("app@example.com", ["bob@example.com", "eve@blocked.test"])?;
//! let message = "From: app@example.com\r\nTo: bob@example.com\r\nSubject: Welcome\r\n\r\nyour code is 424242\r\n";
//! let result = smtp_client::Client::new(config).send(&envelope, message).await?;
//! assert_eq!(result.rejected().count(), 1);
//!
//! let msg = server.wait_for(|m| m.to("bob@example.com"), Duration::from_secs(5)).await?;
//! assert_eq!(msg.subject(), Some("Welcome"));
//! assert!(msg.text().unwrap().contains("your code is"));
//! assert_eq!(msg.one_time_code().as_deref(), Some("424242"));
//! assert!(server.transcript().contains("550 5.1.1 no such user"));
//! # Ok(())
//! # }
//! ```
//!
//! - One [`TestServer`] per test, on its own port on `127.0.0.1`; dropping
//!   it stops it.
//! - [`ReceivedMessage`]: envelope (sender, recipients, parameters, TLS,
//!   authenticated user), headers, subject, text and HTML bodies,
//!   attachments, the raw bytes, links and one-time codes.
//! - [`TestServer::wait_for`] returns as soon as a matching message is
//!   in; its error lists what did arrive.
//! - [`TestServer::transcript`] shows every session, AUTH masked, with
//!   the fault rules that fired: print it when a test fails.
//! - [`faults`]: the rule language and the engine, shared with
//!   `ferry serve --faults`.

pub mod faults;
mod message;
mod server;
mod transcript;

pub use message::{Attachment, ReceivedMessage};
pub use server::{StartError, TestServer, TestServerBuilder, WaitError};
pub use transcript::{SessionTranscript, Transcript};
