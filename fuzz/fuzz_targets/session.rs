//! A whole SMTP session over an in-memory stream, the client's bytes taken
//! from the input: the server never panics and never hangs, every reply is
//! well formed, and it never says `250` after the end of a message more
//! often than the handler accepted one.
//!
//! Input layout: one byte of configuration flags, two bytes of write sizes,
//! then the client's byte stream. The stream is written in pieces of the
//! two sizes alternately; unless the `RUDE` flag is set the client waits
//! for the greeting and ends a piece after each `DATA` line, as a
//! conforming client waits for `354`. Time is paused, so the server's
//! timeouts pass instantly.
//!
//! To see a session, run the target on one input with `SESSION_TRANSCRIPT`
//! set in the environment: the transcript goes to stderr.
#![no_main]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use smtp_proto::reply::ReplyDecoder;
use smtp_proto::sasl::Credentials;
use smtp_server::{
    AuthPolicy, Authenticator, Backend, BareLineEndings, Body, ConnectionInfo, Envelope,
    Extensions, Identity, Limits, LineKind, Server, Session, SmtpError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LMTP: u8 = 1;
const ACCEPT_BARE_LINE_ENDINGS: u8 = 1 << 1;
const NO_PIPELINING: u8 = 1 << 2;
const RUDE: u8 = 1 << 3;
const HANDLER_RETURNS_EARLY: u8 = 1 << 4;
const HANDLER_REFUSES: u8 = 1 << 5;
const TINY_MESSAGES: u8 = 1 << 6;
const REQUIRE_AUTH: u8 = 1 << 7;

/// Virtual time a session may take: well past the server's one-hour
/// session deadline, so only a hang reaches it.
const VIRTUAL_TIME_LIMIT: Duration = Duration::from_secs(3 * 3600);

#[derive(Default)]
struct Record {
    /// `250` replies the handler allowed after a message: one per accepted
    /// SMTP message, one per recipient of an accepted LMTP message.
    positive_allowed: usize,
}

#[derive(Clone)]
struct FuzzBackend {
    record: Arc<Mutex<Record>>,
    flags: u8,
    max_size: u64,
}

struct FuzzSession {
    backend: FuzzBackend,
}

impl Backend for FuzzBackend {
    type Session = FuzzSession;

    async fn new_session(&self, _info: &ConnectionInfo) -> Result<FuzzSession, SmtpError> {
        Ok(FuzzSession {
            backend: self.clone(),
        })
    }
}

impl FuzzSession {
    /// Reads the body like a real handler; `Ok` only for a clean end.
    async fn take(&mut self, envelope: &Envelope, mut body: Body) -> Result<(), SmtpError> {
        let flags = self.backend.flags;
        if flags & HANDLER_RETURNS_EARLY != 0 {
            return Ok(());
        }
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(SmtpError::other)?;
            size += chunk.len() as u64;
            assert!(
                size <= self.backend.max_size,
                "handler got more than the limit"
            );
        }
        if flags & HANDLER_REFUSES != 0 {
            return Err(SmtpError::new(
                554,
                smtp_proto::EnhancedCode::new(5, 7, 1),
                "Refused",
            ));
        }
        let _ = envelope;
        Ok(())
    }
}

impl Session for FuzzSession {
    async fn data(&mut self, envelope: &Envelope, body: Body) -> Result<(), SmtpError> {
        let result = self.take(envelope, body).await;
        if result.is_ok() {
            self.backend.record.lock().unwrap().positive_allowed += 1;
        }
        result
    }

    async fn lmtp_data(&mut self, envelope: &Envelope, body: Body) -> Vec<Result<(), SmtpError>> {
        let result = self.take(envelope, body).await;
        if result.is_ok() {
            self.backend.record.lock().unwrap().positive_allowed += envelope.recipients.len();
        }
        vec![result; envelope.recipients.len()]
    }
}

/// Accepts user `u` with password `p`.
struct FuzzAuthenticator;

impl Authenticator for FuzzAuthenticator {
    async fn authenticate(
        &self,
        _info: &ConnectionInfo,
        _mechanism: &str,
        credentials: &Credentials,
    ) -> Result<Identity, SmtpError> {
        if credentials.username() == "u" && credentials.as_password() == Some("p") {
            Ok(Identity::new("u"))
        } else {
            Err(smtp_server::invalid_credentials())
        }
    }
}

/// The client's writes: alternating sizes, cut after each `DATA` line
/// unless the client is rude.
fn pieces(stream: &[u8], sizes: [usize; 2], rude: bool) -> Vec<&[u8]> {
    // Where a "DATA\r\n" line ends: a conforming client stops there.
    let mut cuts = Vec::new();
    if !rude {
        let mut line_start = 0;
        for (at, &byte) in stream.iter().enumerate() {
            if byte == b'\n' {
                if stream[line_start..=at].eq_ignore_ascii_case(b"DATA\r\n") {
                    cuts.push(at + 1);
                }
                line_start = at + 1;
            }
        }
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut turn = 0;
    while start < stream.len() {
        let mut end = (start + sizes[turn % 2]).min(stream.len());
        turn += 1;
        if let Some(&cut) = cuts.iter().find(|&&cut| cut > start && cut < end) {
            end = cut;
        }
        out.push(&stream[start..end]);
        start = end;
    }
    out
}

async fn session(flags: u8, sizes: [usize; 2], stream: &[u8]) {
    let record = Arc::new(Mutex::new(Record::default()));
    let max_size = if flags & TINY_MESSAGES != 0 { 64 } else { 4096 };
    let backend = FuzzBackend {
        record: Arc::clone(&record),
        flags,
        max_size,
    };
    let show = std::env::var_os("SESSION_TRANSCRIPT").is_some();
    let mut limits = Limits::default();
    limits.max_message_size = max_size;
    limits.max_line = 512;
    let mut extensions = Extensions::default();
    extensions.pipelining = flags & NO_PIPELINING == 0;
    let bare = if flags & ACCEPT_BARE_LINE_ENDINGS != 0 {
        BareLineEndings::Accept
    } else {
        BareLineEndings::Reject
    };
    let server = Server::builder(backend)
        .hostname("mx.fuzz")
        .limits(limits)
        .extensions(extensions)
        .bare_line_endings(bare)
        .lmtp(flags & LMTP != 0)
        .auth(
            FuzzAuthenticator,
            AuthPolicy::new()
                .allow_insecure(true)
                .require(flags & REQUIRE_AUTH != 0),
        )
        .transcript(move |line| {
            assert!(!line.text.contains(['\r', '\n']));
            assert_eq!(line.text.starts_with('<'), line.kind == LineKind::Summary);
            if show {
                eprintln!("{line}");
            }
        })
        .build()
        .unwrap();

    let (mut client, server_side) = tokio::io::duplex(16 * 1024);
    let info = ConnectionInfo::new(
        "192.0.2.10:40000".parse().unwrap(),
        "192.0.2.1:25".parse().unwrap(),
    );
    let served = tokio::spawn(async move { server.serve_connection(server_side, info).await });

    let rude = flags & RUDE != 0;
    let (mut reader, mut writer) = tokio::io::split(&mut client);
    let write = async {
        for piece in pieces(stream, sizes, rude) {
            if !rude {
                // Paused time advances only when the server is idle: it
                // has answered everything before the next piece.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if writer.write_all(piece).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    };
    let read = async {
        let mut output = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => output.extend_from_slice(&buffer[..n]),
            }
        }
        output
    };
    let ((), output) =
        tokio::time::timeout(VIRTUAL_TIME_LIMIT, async { tokio::join!(write, read) })
            .await
            .expect("session hung");
    let result = tokio::time::timeout(VIRTUAL_TIME_LIMIT, served)
        .await
        .expect("server did not finish");
    match result {
        Ok(_) => {}
        Err(error) => panic!("server task failed: {error}"),
    }

    // Every octet the server sent is part of a well-formed reply.
    let mut decoder = ReplyDecoder::with_limits(4096, 1000);
    let mut bytes = BytesMut::from(&output[..]);
    let mut positive_after_message = 0;
    while let Some(reply) = decoder
        .decode(&mut bytes)
        .unwrap_or_else(|error| panic!("malformed reply ({error:?}) in {:?}", text(&output)))
    {
        assert!((200..600).contains(&reply.code()), "{reply}");
        if reply.code() == 250 && reply.text().ends_with("Message accepted") {
            positive_after_message += 1;
        }
    }
    assert!(
        bytes.is_empty(),
        "partial reply at the end of {:?}",
        text(&output)
    );
    let allowed = record.lock().unwrap().positive_allowed;
    assert!(
        positive_after_message <= allowed,
        "{positive_after_message} positive end-of-data replies for {allowed} accepted: {:?}",
        text(&output)
    );
}

fn text(output: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(output)
}

fuzz_target!(|data: &[u8]| {
    let [flags, first, second, stream @ ..] = data else {
        return;
    };
    let sizes = [usize::from(*first) + 1, usize::from(*second) * 16 + 1];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(session(*flags, sizes, stream));
});
