//! Protocol limits, each with the RFC section it comes from.
//!
//! RFC 5321 §4.5.3.1 gives the *minimum* sizes an implementation must
//! accept; a receiver may accept more. Every limit that a peer can push
//! against is configurable in the crates that use these constants, and each
//! configurable limit has a floor below which it cannot be set.

/// RFC 5321 §4.5.3.1.4: a command line, including the verb and `<CRLF>`,
/// is at least 512 octets. This is the floor for [`DEFAULT_COMMAND_LINE_MAX`].
pub const COMMAND_LINE_MIN: usize = 512;

/// Default cap on a command line, including `<CRLF>`.
///
/// Larger than RFC 5321's 512 because ESMTP parameters (RFC 3461 `ENVID`
/// and `ORCPT`, RFC 4954 `AUTH=`) legitimately push MAIL and RCPT past it;
/// Postfix uses the same 2048 (`line_length_limit`).
pub const DEFAULT_COMMAND_LINE_MAX: usize = 2048;

/// RFC 5321 §4.5.3.1.6: a text line of a message, including `<CRLF>`, is at
/// most 1000 octets.
pub const TEXT_LINE_MAX: usize = 1000;

/// RFC 5321 §4.5.3.1.5: a reply line, including the code and `<CRLF>`, is
/// at most 512 octets.
pub const REPLY_LINE_MAX: usize = 512;

/// Default cap, including `<CRLF>`, on one reply line read by a client.
///
/// Real servers exceed [`REPLY_LINE_MAX`] (long EHLO keyword lists, verbose
/// rejections), so clients tolerate up to this much before giving up.
pub const DEFAULT_CLIENT_REPLY_LINE_MAX: usize = 4096;

/// Default cap on the number of lines in one reply read by a client, so a
/// hostile server cannot exhaust memory with an endless multi-line reply.
pub const DEFAULT_CLIENT_REPLY_LINES_MAX: usize = 1000;

/// RFC 5321 §4.5.3.1.1: a local part is at most 64 octets.
pub const LOCAL_PART_MAX: usize = 64;

/// RFC 5321 §4.5.3.1.2: a domain is at most 255 octets.
pub const DOMAIN_MAX: usize = 255;

/// RFC 5321 §4.5.3.1.3: a path, including the angle brackets, is at most
/// 256 octets.
pub const PATH_MAX: usize = 256;

/// RFC 5321 §4.5.3.1.8: the minimum total number of recipients that must
/// be buffered is 100. Servers use it as the default recipient limit;
/// operators may set a lower one (a submission service often does).
pub const RECIPIENTS_MIN: usize = 100;

/// RFC 4954 §4: a SASL response line sent by the client (after base64) is
/// at most 12288 octets.
pub const SASL_LINE_MAX: usize = 12288;

/// Timeouts recommended by RFC 5321 §4.5.3.2. They are plain durations:
/// this crate reads no clock, the I/O crates apply them.
pub mod timeouts {
    use core::time::Duration;

    /// §4.5.3.2.1 ("Initial 220 Message"): waiting for the greeting, 5 minutes.
    pub const GREETING: Duration = Duration::from_secs(5 * 60);
    /// §4.5.3.2.2: reply to MAIL, 5 minutes.
    pub const MAIL: Duration = Duration::from_secs(5 * 60);
    /// §4.5.3.2.3: reply to each RCPT, 5 minutes.
    pub const RCPT: Duration = Duration::from_secs(5 * 60);
    /// §4.5.3.2.4 ("DATA Initiation"): the 354 reply to DATA, 2 minutes.
    pub const DATA_INIT: Duration = Duration::from_secs(2 * 60);
    /// §4.5.3.2.5: each TCP send of a data block, 3 minutes.
    pub const DATA_BLOCK: Duration = Duration::from_secs(3 * 60);
    /// §4.5.3.2.6: reply to the end of data, 10 minutes.
    pub const DATA_TERMINATION: Duration = Duration::from_secs(10 * 60);
    /// §4.5.3.2.7: server waiting for the next command, 5 minutes.
    pub const SERVER_COMMAND: Duration = Duration::from_secs(5 * 60);
}
