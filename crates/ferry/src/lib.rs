//! The `ferry` command: receive mail into a Maildir (`ferry serve`), send one
//! message (`ferry send`), load-test any SMTP server (`ferry bench`) and
//! relay mail through a durable queue (`ferry relay`, `ferry queue`) and
//! check a mail domain or server (`ferry check`).
//!
//! The binary is a thin `main` over this library, so every piece — Maildir
//! delivery, user lists, certificates, message composition, benchmark
//! reports — is unit-tested on its own.

pub mod admin;
pub mod bench;
pub mod certs;
pub mod check;
pub mod cli;
pub mod client_run;
pub mod compose;
pub mod events;
pub mod fd_limit;
pub mod http;
pub mod listener;
pub mod maildir;
pub mod ops;
pub mod outcome;
pub mod queue;
pub mod relay;
pub mod report;
pub mod send;
pub mod serve;
mod serve_config;
pub mod store;
pub mod users;
