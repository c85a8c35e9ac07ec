//! The `ferry` command: receive mail into a Maildir (`ferry serve`), send one
//! message (`ferry send`) and load-test any SMTP server (`ferry bench`).
//!
//! The binary is a thin `main` over this library, so every piece — Maildir
//! delivery, user lists, certificates, message composition, benchmark
//! reports — is unit-tested on its own.

pub mod bench;
pub mod certs;
pub mod cli;
pub mod client_run;
pub mod compose;
pub mod maildir;
pub mod outcome;
pub mod report;
pub mod send;
pub mod serve;
pub mod store;
pub mod users;
