//! What `ferry send` reports: per-recipient results, the final reply, one
//! error, and the exit code derived from them.
//!
//! Exit codes follow sysexits(3) where it has one: 0 when every recipient
//! was accepted, 75 (`EX_TEMPFAIL`) when every failure was transient, 1 on
//! any permanent failure (a 5xx, authentication refused), 2 on usage
//! errors.
//!
//! What is transient is smtp-client's decision ([`smtp_client::Error::is_transient`],
//! [`smtp_client::RecipientOutcome::is_transient`]), never re-derived here:
//! a 4xx, a timeout, a refused or lost connection, and every outcome that
//! is unknown after the message was sent (a lost connection or a garbled
//! or unexpected reply at the end of data: RFC 5321 §6.1 prefers a
//! duplicate to a loss) are transient. TLS failures (no STARTTLS where it
//! is required, a failed handshake, an untrusted certificate) are transient
//! too, as Postfix defers them: they are fixed on the server, and a caller
//! that bounced on them would return mail that a later attempt delivers.
//! A recipient counts as delivered only when the library says it accepted
//! the message, never from a reply code alone.

use std::fmt;

use serde_json::{Value, json};

/// Everything went through.
pub const EXIT_OK: i32 = 0;
/// A permanent failure.
pub const EXIT_PERMANENT: i32 = 1;
/// A usage error or refused input; nothing was sent.
pub const EXIT_USAGE: i32 = 2;
/// Every failure was transient: trying again later may work.
pub const EXIT_TEMPORARY: i32 = 75;

/// A server reply, reduced to what the report shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplySummary {
    /// The three-digit code.
    pub code: u16,
    /// The enhanced status code, `"5.1.1"`, if any.
    pub enhanced: Option<String>,
    /// The reply text, lines joined with `\n`.
    pub message: String,
}

impl ReplySummary {
    /// True for 4xx replies (RFC 5321 §4.2.1).
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// True for 2xx replies.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    fn to_json(&self) -> Value {
        json!({"code": self.code, "enhanced": self.enhanced, "message": self.message})
    }
}

impl From<&smtp_proto::Reply> for ReplySummary {
    fn from(reply: &smtp_proto::Reply) -> Self {
        ReplySummary {
            code: reply.code(),
            enhanced: reply.enhanced().map(|e| e.to_string()),
            message: reply.text(),
        }
    }
}

impl fmt::Display for ReplySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(enhanced) = &self.enhanced {
            write!(f, " {enhanced}")?;
        }
        write!(f, " {}", self.message.replace('\n', " / "))
    }
}

/// One recipient's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientResult {
    /// The address as given.
    pub address: String,
    /// Whether the server took the message for this recipient.
    pub accepted: bool,
    /// Whether a failure for this recipient may pass later (a 4xx, or no
    /// answer at all).
    pub transient: bool,
    /// The deciding reply; `None` when the server never answered for this
    /// recipient (the send failed before, or its outcome is unknown).
    pub reply: Option<ReplySummary>,
}

impl RecipientResult {
    /// True when the server accepted the recipient.
    pub fn accepted(&self) -> bool {
        self.accepted
    }

    /// `accepted`, `rejected`, or `unknown` (no reply).
    pub fn status(&self) -> &'static str {
        match (self.accepted, &self.reply) {
            (true, _) => "accepted",
            (false, Some(_)) => "rejected",
            (false, None) => "unknown",
        }
    }
}

impl From<&smtp_client::RecipientOutcome> for RecipientResult {
    fn from(outcome: &smtp_client::RecipientOutcome) -> Self {
        RecipientResult {
            address: outcome.address.to_string(),
            accepted: outcome.accepted,
            transient: outcome.is_transient(),
            reply: outcome.reply().map(ReplySummary::from),
        }
    }
}

/// The kinds of failure that end a send, as named in the JSON report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Bad command-line input; nothing was sent.
    Usage,
    /// The connection could not be made (refused, unreachable, DNS).
    Connect,
    /// A network step took longer than `--timeout`.
    Timeout,
    /// The server closed the connection or it broke.
    ConnectionLost,
    /// TLS could not be used as `--tls` demands (no STARTTLS, handshake
    /// failure).
    Tls,
    /// The server's certificate was not trusted.
    Certificate,
    /// Authentication was refused, or would have gone out unencrypted.
    Auth,
    /// The server refused the transaction with a reply (MAIL, DATA, ...).
    Rejected,
    /// The server broke the protocol.
    Protocol,
    /// A local file could not be read.
    Io,
}

impl FailureKind {
    /// The name used in the JSON report.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Usage => "usage",
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::ConnectionLost => "connection-lost",
            FailureKind::Tls => "tls",
            FailureKind::Certificate => "certificate",
            FailureKind::Auth => "auth",
            FailureKind::Rejected => "rejected",
            FailureKind::Protocol => "protocol",
            FailureKind::Io => "io",
        }
    }
}

/// The error that ended a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// One clear line for people.
    pub message: String,
    /// The reply behind it, when the server gave one.
    pub reply: Option<ReplySummary>,
    /// Whether trying again later may succeed (smtp-client's verdict for
    /// errors from a send).
    pub transient: bool,
}

impl Failure {
    /// A failure without a server reply, transient as its kind usually is
    /// (see the module documentation).
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        let transient = matches!(
            kind,
            FailureKind::Connect
                | FailureKind::Timeout
                | FailureKind::ConnectionLost
                | FailureKind::Tls
                | FailureKind::Certificate
        );
        Failure {
            kind,
            message: message.into(),
            reply: None,
            transient,
        }
    }

    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

/// The result of one `ferry send`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOutcome {
    /// Every envelope recipient, in order (empty when the send never
    /// started).
    pub recipients: Vec<RecipientResult>,
    /// The reply to the end of the data, if the data was sent.
    pub reply: Option<ReplySummary>,
    /// The error that stopped the send, if any.
    pub error: Option<Failure>,
}

impl SendOutcome {
    /// An outcome that is only an error.
    pub fn failed(failure: Failure) -> SendOutcome {
        SendOutcome {
            error: Some(failure),
            ..SendOutcome::default()
        }
    }

    /// The exit code (see the module documentation).
    pub fn exit_code(&self) -> i32 {
        if self
            .error
            .as_ref()
            .is_some_and(|e| e.kind == FailureKind::Usage)
        {
            return EXIT_USAGE;
        }
        let mut transient = 0;
        let mut permanent = 0;
        let mut count = |is_transient: bool| {
            if is_transient {
                transient += 1
            } else {
                permanent += 1
            }
        };
        for rcpt in self.recipients.iter().filter(|r| !r.accepted()) {
            count(rcpt.transient);
        }
        if let Some(reply) = self.reply.as_ref().filter(|r| !r.is_positive()) {
            count(reply.is_transient());
        }
        if let Some(error) = &self.error {
            count(error.is_transient());
        }
        if permanent > 0 {
            EXIT_PERMANENT
        } else if transient > 0 {
            EXIT_TEMPORARY
        } else if !self.recipients.iter().any(RecipientResult::accepted) || self.reply.is_none() {
            // Nothing failed but nothing was delivered either: not a success.
            EXIT_PERMANENT
        } else {
            EXIT_OK
        }
    }

    /// The `--json` object: `recipients`, `reply`, `error`, `exit`.
    pub fn to_json(&self) -> Value {
        let recipients: Vec<Value> = self
            .recipients
            .iter()
            .map(|r| {
                json!({
                    "address": r.address,
                    "status": r.status(),
                    "code": r.reply.as_ref().map(|reply| reply.code),
                    "enhanced": r.reply.as_ref().and_then(|reply| reply.enhanced.clone()),
                    "message": r.reply.as_ref().map(|reply| reply.message.clone()),
                })
            })
            .collect();
        json!({
            "recipients": recipients,
            "reply": self.reply.as_ref().map(ReplySummary::to_json),
            "error": self.error.as_ref().map(|e| json!({"kind": e.kind.as_str(), "message": e.message})),
            "exit": self.exit_code(),
        })
    }

    /// One line per problem, for standard error; empty on full success.
    pub fn problems(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(error) = &self.error {
            lines.push(error.message.clone());
        }
        // Recipients without a reply share the fate the error line states.
        for rcpt in self.recipients.iter().filter(|r| !r.accepted()) {
            if let Some(reply) = &rcpt.reply {
                lines.push(format!("recipient {} rejected: {reply}", rcpt.address));
            }
        }
        if let Some(reply) = self.reply.as_ref().filter(|r| !r.is_positive()) {
            lines.push(format!("message rejected: {reply}"));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, enhanced: &str, message: &str) -> ReplySummary {
        ReplySummary {
            code,
            enhanced: (!enhanced.is_empty()).then(|| enhanced.to_owned()),
            message: message.to_owned(),
        }
    }

    fn rcpt(address: &str, code: u16) -> RecipientResult {
        RecipientResult {
            address: address.to_owned(),
            accepted: (200..300).contains(&code),
            transient: (400..500).contains(&code),
            reply: Some(reply(code, &format!("{}.1.5", code / 100), "text")),
        }
    }

    fn outcome(codes: &[u16], data: Option<u16>, error: Option<Failure>) -> SendOutcome {
        SendOutcome {
            recipients: codes
                .iter()
                .enumerate()
                .map(|(i, &c)| rcpt(&format!("r{i}@example.com"), c))
                .collect(),
            reply: data.map(|c| reply(c, "", "done")),
            error,
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(outcome(&[250, 250], Some(250), None).exit_code(), 0);
        assert_eq!(outcome(&[250, 450], Some(250), None).exit_code(), 75);
        assert_eq!(outcome(&[250, 550], Some(250), None).exit_code(), 1);
        assert_eq!(outcome(&[450, 550], None, None).exit_code(), 1);
        assert_eq!(outcome(&[250], Some(451), None).exit_code(), 75);
        assert_eq!(outcome(&[250], Some(554), None).exit_code(), 1);
        let refused = Failure::new(FailureKind::Connect, "connection refused");
        assert_eq!(SendOutcome::failed(refused).exit_code(), 75);
        let lost = Failure::new(FailureKind::ConnectionLost, "lost");
        assert_eq!(outcome(&[250], None, Some(lost)).exit_code(), 75);
        // TLS trouble is deferred, as Postfix does.
        let cert = Failure::new(FailureKind::Certificate, "not trusted");
        assert_eq!(SendOutcome::failed(cert).exit_code(), 75);
        // After the data: an unknown outcome is transient, and a recipient
        // without a reply is not delivered.
        let mut unknown = outcome(&[], None, None);
        unknown.recipients.push(RecipientResult {
            address: "r@example.com".to_owned(),
            accepted: false,
            transient: true,
            reply: None,
        });
        let mut garbled = Failure::new(FailureKind::Protocol, "garbled");
        garbled.transient = true;
        unknown.error = Some(garbled);
        assert_eq!(unknown.exit_code(), 75);
        assert_eq!(unknown.to_json()["recipients"][0]["status"], "unknown");
        assert!(unknown.problems() == vec!["garbled".to_owned()]);
        let mut auth = Failure::new(FailureKind::Auth, "authentication failed");
        auth.reply = Some(reply(535, "5.7.8", "no"));
        assert_eq!(SendOutcome::failed(auth.clone()).exit_code(), 1);
        auth.reply = Some(reply(454, "4.7.0", "later"));
        auth.transient = true;
        assert_eq!(SendOutcome::failed(auth).exit_code(), 75);
        let usage = Failure::new(FailureKind::Usage, "bad");
        assert_eq!(SendOutcome::failed(usage).exit_code(), 2);
        // An outcome with no failure and no delivery is not a success.
        assert_eq!(SendOutcome::default().exit_code(), 1);
    }

    #[test]
    fn json_shape() {
        let out = outcome(&[250, 550], Some(250), None);
        let json = out.to_json();
        assert_eq!(
            json,
            json!({
                "recipients": [
                    {"address": "r0@example.com", "status": "accepted", "code": 250,
                     "enhanced": "2.1.5", "message": "text"},
                    {"address": "r1@example.com", "status": "rejected", "code": 550,
                     "enhanced": "5.1.5", "message": "text"},
                ],
                "reply": {"code": 250, "enhanced": null, "message": "done"},
                "error": null,
                "exit": 1,
            })
        );
        let failed = SendOutcome::failed(Failure::new(
            FailureKind::Connect,
            "connection refused: 127.0.0.1:1",
        ));
        assert_eq!(
            failed.to_json(),
            json!({"recipients": [], "reply": null,
                   "error": {"kind": "connect", "message": "connection refused: 127.0.0.1:1"},
                   "exit": 75})
        );
    }

    #[test]
    fn problem_lines() {
        let out = outcome(&[250, 550], Some(250), None);
        assert_eq!(
            out.problems(),
            vec!["recipient r1@example.com rejected: 550 5.1.5 text"]
        );
        assert!(outcome(&[250], Some(250), None).problems().is_empty());
    }
}
