//! Sans-IO SMTP protocol.
//!
//! `smtp-proto` turns bytes into protocol values and protocol values into
//! bytes. It performs no I/O and reads no clock, so it can be driven by any
//! runtime and tested entirely in memory. The `smtp-server` and
//! `smtp-client` crates drive it over tokio.
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`command`] | every RFC 5321 verb and ESMTP parameter: server-side parsing, client-side encoding |
//! | [`address`] | RFC 5321 paths and mailboxes, with RFC 6531 UTF-8 |
//! | [`xtext`] | RFC 3461 xtext for `ENVID`, `ORCPT` and `AUTH=` |
//! | [`reply`] | replies and RFC 3463 enhanced status codes; the client's incremental reply decoder |
//! | [`ehlo`] | EHLO capabilities, parsed and formatted |
//! | [`body`] | DATA dot-stuffing and unstuffing, BDAT chunk framing |
//! | [`sasl`] | AUTH PLAIN, LOGIN and XOAUTH2 steps |
//! | [`limits`] | every RFC limit as a named constant |
//! | [`transcript`] | transcript lines, their direction, the hook type and the AUTH masking rule shared by client and server |
//! | `codec` | tokio-util `Decoder`/`Encoder` implementations (default feature `codec`) |
//!
//! Architecture invariants of this crate:
//! - no I/O, no clock, no async runtime: with `default-features = false`
//!   the dependency tree has no tokio;
//! - only `<CRLF>` ends a command line and only `<CRLF>.<CRLF>` ends DATA;
//!   a bare CR or LF is reported, never treated as a line end;
//! - recoverable protocol errors are values that map to exactly one
//!   [`Reply`]; a decoder `Err` means framing is lost.

pub mod address;
pub mod body;
pub mod command;
pub mod ehlo;
pub mod limits;
pub mod reply;
pub mod sasl;
pub mod transcript;
pub mod xtext;

#[cfg(feature = "codec")]
pub mod codec;

pub use reply::{EnhancedCode, Reply};
