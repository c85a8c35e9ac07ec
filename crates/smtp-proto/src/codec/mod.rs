//! tokio-util [`Decoder`](tokio_util::codec::Decoder) and
//! [`Encoder`](tokio_util::codec::Encoder) implementations that frame an SMTP
//! connection with `tokio_util::codec::Framed`.
//!
//! [`ServerCodec`] reads commands, AUTH responses and message bodies and
//! writes replies; [`ClientCodec`] reads replies and writes commands and
//! body bytes. Both are thin: the protocol rules live in the sans-IO modules
//! of this crate.

mod client;
mod server;

pub use client::{ClientCodec, ClientCodecError};
pub use server::{AUTH_COMMAND_LINE_MAX, ServerCodec, ServerFrame};
