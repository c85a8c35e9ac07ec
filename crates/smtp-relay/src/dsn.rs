//! Delivery status notifications (RFC 3464, RFC 6533), built as a pure
//! function of their inputs.
//!
//! [`build_dsn`] turns a [`DsnRequest`] — who reports, the original
//! envelope, one [`RecipientReport`] per recipient — and the original
//! message bytes into a complete message ([`DsnMessage`]) to send from the
//! null reverse-path `<>` to the original sender:
//!
//! ```text
//! From: Mail Delivery System <MAILER-DAEMON@reporting.mta>
//! To: <original sender>
//! Subject: Delivery Status Notification (Failure)
//! Date, Message-ID, Auto-Submitted: auto-replied (RFC 3834 §5)
//! MIME-Version: 1.0
//! Content-Type: multipart/report; report-type=delivery-status (RFC 6522)
//!   1. text/plain                 what happened, for people
//!   2. message/delivery-status    the machine-readable fields (RFC 3464 §2)
//!   3. message/rfc822             the original message (RET=FULL), or
//!      text/rfc822-headers        only its header (RET=HDRS)
//! ```
//!
//! For a message that was sent with `SMTPUTF8` the report is the RFC 6533
//! variant: `report-type=global-delivery-status`, parts
//! `message/global-delivery-status` and `message/global` or
//! `message/global-headers`, UTF-8 addresses as `utf-8;` types.
//!
//! Every line ends in CRLF and is at most 998 octets (RFC 5322 §2.1.1); the
//! boundary is chosen so that it does not occur in any part.
//!
//! [`notification_owed`] decides which recipients get a report at all:
//! never for a message from `<>`, and otherwise per the recipient's
//! `NOTIFY` (RFC 3461 §4.1; without one, failures only).
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use smtp_proto::EnhancedCode;
//! use smtp_relay::dsn::{build_dsn, Action, DiagnosticCode, DsnRequest, OriginalEnvelope, RecipientReport};
//!
//! let now = UNIX_EPOCH + Duration::from_secs(1_764_600_000);
//! let envelope = OriginalEnvelope::new("alice@example.org", now);
//! let mut report = RecipientReport::new("bob@example.net", Action::Failed, EnhancedCode::new(5, 1, 1));
//! report.remote_mta = Some("mx.example.net".into());
//! report.diagnostic = Some(DiagnosticCode::smtp("550 5.1.1 no such user"));
//! report.last_attempt = Some(now);
//! let request = DsnRequest::new("relay.example.org", envelope, vec![report], now);
//! let original = b"From: alice@example.org\r\nSubject: hi\r\n\r\nHello\r\n";
//! let dsn = build_dsn(&request, original).unwrap();
//! assert_eq!(dsn.recipient, "alice@example.org");
//! let text = String::from_utf8(dsn.bytes).unwrap();
//! assert!(text.contains("Final-Recipient: rfc822; bob@example.net\r\n"));
//! assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
//! ```

use std::fmt;
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use smtp_proto::command::{Notify, OriginalRecipient, Ret};
use smtp_proto::{EnhancedCode, Reply};

/// The longest line RFC 5322 §2.1.1 allows, without its CRLF.
const MAX_LINE: usize = 998;

/// The length header fields are folded at when they can be (RFC 5322
/// §2.1.1 "SHOULD be no more than 78 characters").
const FOLD_AT: usize = 78;

/// Originals larger than this are returned as headers only, whatever RET
/// says, unless [`DsnRequest::full_message_limit`] is changed.
pub const DEFAULT_FULL_MESSAGE_LIMIT: usize = 10 * 1024 * 1024;

/// What happened to one recipient (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Delivery failed for good.
    Failed,
    /// Not delivered yet; the relay keeps trying.
    Delayed,
    /// Delivered to the recipient's mailbox.
    Delivered,
    /// Handed to a next hop that does not send DSNs (RFC 3461 §4.1: the
    /// last report a sender asking for SUCCESS gets).
    Relayed,
    /// Delivered to a list or alias that expanded to several recipients.
    Expanded,
}

impl Action {
    /// The `Action:` field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Expanded => "expanded",
        }
    }
}

/// Whether a DSN is owed for a recipient whose delivery ended in `action`.
///
/// - Never when the original reverse-path is null (`sender` is empty):
///   notifications about notifications would loop (RFC 5321 §6.1,
///   RFC 3461 §6.2).
/// - `NOTIFY=NEVER`: never.
/// - `NOTIFY=` a list: `failed` needs FAILURE, `delayed` needs DELAY,
///   `delivered`, `relayed` and `expanded` need SUCCESS.
/// - No `NOTIFY`: failures only (RFC 3461 §4.1 leaves DELAY to the MTA;
///   this relay does not send delay warnings unless asked).
///
/// ```
/// use smtp_proto::command::Notify;
/// use smtp_relay::dsn::{notification_owed, Action};
///
/// assert!(notification_owed("a@example.org", None, Action::Failed));
/// assert!(!notification_owed("a@example.org", None, Action::Delayed));
/// assert!(!notification_owed("", None, Action::Failed));
/// assert!(!notification_owed("a@example.org", Some(Notify::Never), Action::Failed));
/// let success = Notify::On { success: true, failure: false, delay: false };
/// assert!(notification_owed("a@example.org", Some(success), Action::Relayed));
/// ```
pub fn notification_owed(sender: &str, notify: Option<Notify>, action: Action) -> bool {
    if sender.is_empty() || sender == "<>" {
        return false;
    }
    let (success, failure, delay) = match notify {
        Some(Notify::Never) => return false,
        Some(Notify::On {
            success,
            failure,
            delay,
        }) => (success, failure, delay),
        None => (false, true, false),
    };
    match action {
        Action::Failed => failure,
        Action::Delayed => delay,
        Action::Delivered | Action::Relayed | Action::Expanded => success,
    }
}

/// The `Diagnostic-Code:` of a recipient (RFC 3464 §2.3.6): the type of
/// diagnostic, `smtp` for an SMTP reply, and its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiagnosticCode {
    /// The diagnostic type, `smtp` for SMTP replies.
    pub diagnostic_type: String,
    /// The diagnostic, e.g. `550 5.1.1 no such user`. Line breaks become
    /// spaces.
    pub text: String,
}

impl DiagnosticCode {
    /// An `smtp;` diagnostic with the reply as text.
    pub fn smtp(text: impl Into<String>) -> Self {
        Self {
            diagnostic_type: "smtp".to_owned(),
            text: text.into(),
        }
    }

    /// The diagnostic for a reply: code, enhanced code and every line of
    /// its text, joined with spaces.
    pub fn from_reply(reply: &Reply) -> Self {
        let mut text = reply.code().to_string();
        if let Some(enhanced) = reply.enhanced() {
            write!(text, " {enhanced}").expect("writing to a String");
        }
        for line in reply.lines() {
            if !line.is_empty() {
                text.push(' ');
                text.push_str(line);
            }
        }
        Self::smtp(text)
    }
}

/// The envelope of the message being reported on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalEnvelope {
    /// The reverse-path, without angle brackets; empty for `<>` (which
    /// [`build_dsn`] refuses).
    pub sender: String,
    /// `ENVID=`, xtext-decoded (RFC 3461 §4.4).
    pub envid: Option<String>,
    /// When the relay accepted the message.
    pub arrival_date: SystemTime,
    /// `RET=` (RFC 3461 §4.3). Without it failures return the full message
    /// (up to [`DsnRequest::full_message_limit`]).
    pub ret: Option<Ret>,
    /// The message was sent with `SMTPUTF8` (RFC 6531): the report uses
    /// the RFC 6533 global types.
    pub smtputf8: bool,
    /// The client the message came from, e.g. `client.example.org
    /// [192.0.2.7]`, reported as `Received-From-MTA:` (RFC 3464 §2.2.4).
    pub received_from_mta: Option<String>,
}

impl OriginalEnvelope {
    /// An envelope with only a sender and an arrival date.
    pub fn new(sender: impl Into<String>, arrival_date: SystemTime) -> Self {
        Self {
            sender: sender.into(),
            envid: None,
            arrival_date,
            ret: None,
            smtputf8: false,
            received_from_mta: None,
        }
    }
}

/// What happened to one recipient (the per-recipient fields of RFC 3464
/// §2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport {
    /// The recipient as the relay last tried it (`Final-Recipient:`).
    pub final_recipient: String,
    /// `ORCPT=` from the original `RCPT TO:` (`Original-Recipient:`).
    pub original_recipient: Option<OriginalRecipient>,
    /// What happened.
    pub action: Action,
    /// The status (`Status:`); its class should match the action: 5 for
    /// failed, 4 for delayed, 2 otherwise.
    pub status: EnhancedCode,
    /// The host that gave the reply (`Remote-MTA: dns; host`).
    pub remote_mta: Option<String>,
    /// The reply or other diagnostic (`Diagnostic-Code:`).
    pub diagnostic: Option<DiagnosticCode>,
    /// When delivery was last tried (`Last-Attempt-Date:`).
    pub last_attempt: Option<SystemTime>,
    /// For delayed recipients: when the relay gives up
    /// (`Will-Retry-Until:`).
    pub will_retry_until: Option<SystemTime>,
}

impl RecipientReport {
    /// A report with only the required fields.
    pub fn new(final_recipient: impl Into<String>, action: Action, status: EnhancedCode) -> Self {
        Self {
            final_recipient: final_recipient.into(),
            original_recipient: None,
            action,
            status,
            remote_mta: None,
            diagnostic: None,
            last_attempt: None,
            will_retry_until: None,
        }
    }
}

/// Everything a DSN says, except the original message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRequest {
    /// The relay's host name (`Reporting-MTA: dns; …`, and the domain of
    /// `MAILER-DAEMON@…`).
    pub reporting_mta: String,
    /// The original envelope.
    pub envelope: OriginalEnvelope,
    /// One report per recipient covered; at least one.
    pub recipients: Vec<RecipientReport>,
    /// The `Date:` of the report.
    pub date: SystemTime,
    /// The `Message-ID:` without angle brackets; derived from the inputs
    /// when `None`.
    pub message_id: Option<String>,
    /// Originals larger than this many octets are returned as headers only.
    pub full_message_limit: usize,
}

impl DsnRequest {
    /// A request with the default Message-ID and size limit.
    pub fn new(
        reporting_mta: impl Into<String>,
        envelope: OriginalEnvelope,
        recipients: Vec<RecipientReport>,
        date: SystemTime,
    ) -> Self {
        Self {
            reporting_mta: reporting_mta.into(),
            envelope,
            recipients,
            date,
            message_id: None,
            full_message_limit: DEFAULT_FULL_MESSAGE_LIMIT,
        }
    }
}

/// A built DSN, ready to be queued with the null reverse-path `<>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnMessage {
    /// The envelope recipient: the original sender.
    pub recipient: String,
    /// The complete message, CRLF line endings.
    pub bytes: Vec<u8>,
    /// The message must be sent with `SMTPUTF8`: its header or its
    /// recipient has non-ASCII characters.
    pub smtputf8: bool,
    /// The body has 8-bit octets and needs `BODY=8BITMIME`.
    pub eight_bit: bool,
}

/// Why a DSN cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DsnError {
    /// The original sender is `<>`: a notification is never sent for it
    /// (RFC 5321 §6.1).
    NullSender,
    /// No recipient to report on.
    NoRecipients,
    /// The reporting MTA is not a usable host name.
    InvalidReportingMta(String),
}

impl fmt::Display for DsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DsnError::NullSender => f.write_str("no DSN is sent for a message from <>"),
            DsnError::NoRecipients => f.write_str("a DSN needs at least one recipient report"),
            DsnError::InvalidReportingMta(name) => {
                write!(f, "invalid reporting MTA name {name:?}")
            }
        }
    }
}

impl std::error::Error for DsnError {}

/// Builds the DSN for `request` about `original` (the message as it was
/// accepted, header and body). See the module documentation.
pub fn build_dsn(request: &DsnRequest, original: &[u8]) -> Result<DsnMessage, DsnError> {
    let sender = request.envelope.sender.trim();
    let sender = sender
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(sender);
    if sender.is_empty() {
        return Err(DsnError::NullSender);
    }
    if request.recipients.is_empty() {
        return Err(DsnError::NoRecipients);
    }
    let mta = request.reporting_mta.trim();
    if mta.is_empty()
        || !mta.is_ascii()
        || mta
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"<>@;\"".contains(&b))
    {
        return Err(DsnError::InvalidReportingMta(request.reporting_mta.clone()));
    }
    let global = request.envelope.smtputf8;

    // What to return of the original (RFC 3461 §4.3): the whole message
    // for failures unless RET=HDRS; only the header for delay and success
    // reports, which do not return content.
    let any_failed = request
        .recipients
        .iter()
        .any(|r| r.action == Action::Failed);
    let wants_full = any_failed && request.envelope.ret != Some(Ret::Headers);
    let (header, _) = split_header(original);
    let mut returned_note = None;
    let returned = if wants_full && original.len() > request.full_message_limit {
        returned_note = Some("The message was too large to return whole; its header follows.");
        Returned::Headers(normalize(header, true))
    } else if wants_full {
        let full = normalize(original, false);
        if full.overlong {
            returned_note =
                Some("The message has lines too long to return whole; its header follows.");
            Returned::Headers(normalize(header, true))
        } else {
            Returned::Full(full)
        }
    } else {
        Returned::Headers(normalize(header, true))
    };

    let text = human_text(request, sender, mta, &returned, returned_note);
    let status = status_fields(request, mta, global);
    let text_part = text.into_bytes();

    let (returned_type, returned_body, returned_desc) = match &returned {
        Returned::Full(body) => (
            if global {
                "message/global"
            } else {
                "message/rfc822"
            },
            &body.bytes,
            "Undelivered message",
        ),
        Returned::Headers(body) => (
            if global {
                "message/global-headers"
            } else {
                "text/rfc822-headers"
            },
            &body.bytes,
            "Message header",
        ),
    };
    let returned_desc = if any_failed {
        returned_desc
    } else {
        "Message header"
    };

    let parts: [&[u8]; 3] = [&text_part, status.as_bytes(), returned_body];
    let eight_bit = parts.iter().any(|part| !part.is_ascii());
    let boundary = pick_boundary(request, &parts);

    let mut out = String::new();
    let to_ascii = sender.is_ascii();
    let headers = [
        (
            "From",
            format!("Mail Delivery System <MAILER-DAEMON@{mta}>"),
        ),
        ("To", format!("<{sender}>")),
        ("Subject", subject(request).to_owned()),
        ("Date", rfc5322_date(request.date)),
        (
            "Message-ID",
            format!(
                "<{}>",
                clean(
                    request
                        .message_id
                        .clone()
                        .unwrap_or_else(|| default_message_id(request, original, mta))
                        .trim_matches(|c| c == '<' || c == '>')
                )
            ),
        ),
        // RFC 3834 §5: a response generated automatically.
        ("Auto-Submitted", "auto-replied".to_owned()),
        ("MIME-Version", "1.0".to_owned()),
        (
            "Content-Type",
            format!(
                "multipart/report; report-type={}; boundary=\"{boundary}\"",
                if global {
                    "global-delivery-status"
                } else {
                    "delivery-status"
                }
            ),
        ),
        (
            "Content-Transfer-Encoding",
            if eight_bit { "8bit" } else { "7bit" }.to_owned(),
        ),
    ];
    for (name, value) in &headers {
        out.push_str(&fold_field(name, value));
    }
    out.push_str("\r\n");
    out.push_str("This is a MIME-formatted delivery status notification.\r\n\r\n");
    let mut bytes = out.into_bytes();

    let text_charset = if text_part.is_ascii() {
        "us-ascii"
    } else {
        "utf-8"
    };
    let cte = |part: &[u8]| if part.is_ascii() { "7bit" } else { "8bit" };
    let part_headers = [
        format!(
            "Content-Type: text/plain; charset={text_charset}\r\nContent-Description: Notification\r\nContent-Transfer-Encoding: {}\r\n",
            cte(&text_part)
        ),
        format!(
            "Content-Type: {}\r\nContent-Description: Delivery report\r\nContent-Transfer-Encoding: {}\r\n",
            if global {
                "message/global-delivery-status"
            } else {
                "message/delivery-status"
            },
            cte(status.as_bytes())
        ),
        format!(
            "Content-Type: {returned_type}\r\nContent-Description: {returned_desc}\r\nContent-Transfer-Encoding: {}\r\n",
            cte(returned_body)
        ),
    ];
    for (head, body) in part_headers.iter().zip(parts) {
        bytes.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        bytes.extend_from_slice(head.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(body);
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            bytes.extend_from_slice(b"\r\n");
        }
        // The CRLF before a boundary belongs to the boundary (RFC 2046
        // §5.1.1); an empty line keeps the part's last line break.
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());

    let header_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len());
    let smtputf8 = !to_ascii || !bytes[..header_end].is_ascii();
    Ok(DsnMessage {
        recipient: sender.to_owned(),
        bytes,
        smtputf8,
        eight_bit,
    })
}

/// The part of the original that is returned.
enum Returned {
    Full(Normalized),
    Headers(Normalized),
}

struct Normalized {
    bytes: Vec<u8>,
    /// A line was longer than [`MAX_LINE`] (only when not folding).
    overlong: bool,
}

/// The header of a message: everything up to and including the empty line,
/// or the whole message when it has no body.
fn split_header(message: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    let mut line_start = 0;
    while i < message.len() {
        if message[i] == b'\n' {
            let line = &message[line_start..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                return (&message[..line_start], &message[i + 1..]);
            }
            line_start = i + 1;
        }
        i += 1;
    }
    (message, &[])
}

/// CRLF line endings everywhere (a bare CR or LF becomes CRLF). With `fold`,
/// header lines longer than [`MAX_LINE`] are broken with CRLF SP (a header
/// continuation); without it, such a line is reported in `overlong`.
fn normalize(input: &[u8], fold: bool) -> Normalized {
    let mut bytes = Vec::with_capacity(input.len() + input.len() / 50 + 2);
    let mut overlong = false;
    let mut line_len = 0;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        match b {
            b'\r' | b'\n' => {
                bytes.extend_from_slice(b"\r\n");
                line_len = 0;
                if b == b'\r' && input.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            _ => {
                if line_len == MAX_LINE {
                    if fold {
                        bytes.extend_from_slice(b"\r\n ");
                        line_len = 1;
                    } else {
                        overlong = true;
                    }
                }
                bytes.push(b);
                line_len += 1;
            }
        }
        i += 1;
    }
    if !bytes.is_empty() && !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    Normalized { bytes, overlong }
}

fn subject(request: &DsnRequest) -> &'static str {
    let has = |action: Action| request.recipients.iter().any(|r| r.action == action);
    if has(Action::Failed) {
        "Delivery Status Notification (Failure)"
    } else if has(Action::Delayed) {
        "Delivery Status Notification (Delay)"
    } else {
        "Delivery Status Notification (Success)"
    }
}

/// The text/plain part.
fn human_text(
    request: &DsnRequest,
    sender: &str,
    mta: &str,
    returned: &Returned,
    note: Option<&str>,
) -> String {
    let mut text = String::new();
    let line = |text: &mut String, s: &str| {
        for wrapped in wrap(s, 76, "") {
            text.push_str(&wrapped);
            text.push_str("\r\n");
        }
    };
    line(&mut text, &format!("This is the mail system at {mta}."));
    line(&mut text, "");
    line(
        &mut text,
        &format!(
            "This report is about your message to the recipients below, accepted on {}.",
            rfc5322_date(request.envelope.arrival_date)
        ),
    );
    let groups = [
        (
            Action::Failed,
            "It could not be delivered to these recipients, and the mail system has given up:",
        ),
        (
            Action::Delayed,
            "It has not been delivered yet to these recipients. The mail system keeps trying; you do not need to send it again:",
        ),
        (Action::Delivered, "It was delivered to these recipients:"),
        (
            Action::Relayed,
            "It was passed on to these recipients' mail systems, which do not send further reports:",
        ),
        (
            Action::Expanded,
            "It was delivered to these lists or aliases, which forwarded it to their members:",
        ),
    ];
    for (action, heading) in groups {
        let recipients: Vec<&RecipientReport> = request
            .recipients
            .iter()
            .filter(|r| r.action == action)
            .collect();
        if recipients.is_empty() {
            continue;
        }
        line(&mut text, "");
        line(&mut text, heading);
        for report in recipients {
            line(&mut text, "");
            let mut entry = format!("  <{}>", clean(&report.final_recipient));
            match (&report.remote_mta, &report.diagnostic) {
                (Some(host), Some(diagnostic)) => {
                    write!(entry, ": {} said: {}", clean(host), clean(&diagnostic.text))
                }
                (None, Some(diagnostic)) => write!(entry, ": {}", clean(&diagnostic.text)),
                (Some(host), None) => {
                    write!(entry, ": via {} (status {})", clean(host), report.status)
                }
                (None, None) => write!(entry, ": status {}", report.status),
            }
            .expect("writing to a String");
            for wrapped in wrap(&entry, 76, "    ") {
                text.push_str(&wrapped);
                text.push_str("\r\n");
            }
            if let Some(until) = report.will_retry_until {
                text.push_str(&format!(
                    "    Delivery will be tried until {}.\r\n",
                    rfc5322_date(until)
                ));
            }
        }
    }
    line(&mut text, "");
    let returned_what = match returned {
        Returned::Full(_) => "The original message is attached.",
        Returned::Headers(_) => "The header of the original message is attached.",
    };
    line(&mut text, note.unwrap_or(returned_what));
    line(
        &mut text,
        &format!("This report was sent to <{}>.", clean(sender)),
    );
    text
}

/// Splits `text` at spaces into lines of at most `width` characters where
/// it can; continuation lines start with `indent`. No line exceeds
/// [`MAX_LINE`] octets.
fn wrap(text: &str, width: usize, indent: &str) -> Vec<String> {
    let body = text.trim_start_matches(' ');
    let mut lines = Vec::new();
    // The first line keeps the text's own indentation.
    let mut current = text[..text.len() - body.len()].to_owned();
    let mut at_start = true;
    for word in body.split(' ').filter(|w| !w.is_empty()) {
        if !at_start && current.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut current));
            current.push_str(indent);
        } else if !at_start {
            current.push(' ');
        }
        current.push_str(word);
        at_start = false;
    }
    lines.push(current);
    lines
        .into_iter()
        .flat_map(|line| hard_split(&line, MAX_LINE))
        .collect()
}

/// Splits at character boundaries into pieces of at most `max` octets.
fn hard_split(line: &str, max: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = line;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        pieces.push(rest[..cut].to_owned());
        rest = &rest[cut..];
    }
    pieces.push(rest.to_owned());
    pieces
}

/// The message/delivery-status body (RFC 3464 §2.1): the per-message
/// fields, then one block per recipient, each block ended by an empty
/// line.
fn status_fields(request: &DsnRequest, mta: &str, global: bool) -> String {
    let mut out = String::new();
    let envelope = &request.envelope;
    if let Some(envid) = &envelope.envid {
        out.push_str(&fold_field(
            "Original-Envelope-Id",
            &text_value(envid, global),
        ));
    }
    out.push_str(&fold_field("Reporting-MTA", &format!("dns; {mta}")));
    if let Some(from) = &envelope.received_from_mta {
        out.push_str(&fold_field(
            "Received-From-MTA",
            &format!("dns; {}", text_value(from, global)),
        ));
    }
    out.push_str(&fold_field(
        "Arrival-Date",
        &rfc5322_date(envelope.arrival_date),
    ));
    for report in &request.recipients {
        out.push_str("\r\n");
        if let Some(orcpt) = &report.original_recipient {
            let addr_type = clean(&orcpt.addr_type);
            out.push_str(&fold_field(
                "Original-Recipient",
                &address_field(&addr_type, &orcpt.address, global),
            ));
        }
        out.push_str(&fold_field(
            "Final-Recipient",
            &address_field("rfc822", &report.final_recipient, global),
        ));
        out.push_str(&fold_field("Action", report.action.as_str()));
        out.push_str(&fold_field("Status", &report.status.to_string()));
        if let Some(host) = &report.remote_mta {
            out.push_str(&fold_field(
                "Remote-MTA",
                &format!("dns; {}", text_value(host, global)),
            ));
        }
        if let Some(diagnostic) = &report.diagnostic {
            out.push_str(&fold_field(
                "Diagnostic-Code",
                &format!(
                    "{}; {}",
                    clean(&diagnostic.diagnostic_type),
                    text_value(&diagnostic.text, global)
                ),
            ));
        }
        if let Some(when) = report.last_attempt {
            out.push_str(&fold_field("Last-Attempt-Date", &rfc5322_date(when)));
        }
        if let Some(until) = report.will_retry_until {
            out.push_str(&fold_field("Will-Retry-Until", &rfc5322_date(until)));
        }
    }
    out
}

/// `addr-type; address`. A non-ASCII address is of type `utf-8` (RFC 6533
/// §3): raw in a global report, with each non-ASCII character written
/// `\x{HEX}` (utf-8-addr-xtext) in an ASCII report.
fn address_field(addr_type: &str, address: &str, global: bool) -> String {
    let address = clean(address);
    let addr_type = if address.is_ascii() {
        addr_type.to_owned()
    } else {
        "utf-8".to_owned()
    };
    format!("{addr_type}; {}", text_value(&address, global))
}

/// A field value: control characters removed, and in an ASCII report
/// non-ASCII characters written `\x{HEX}` (RFC 6533 §3).
fn text_value(value: &str, global: bool) -> String {
    let value = clean(value);
    if global || value.is_ascii() {
        return value;
    }
    let mut out = String::with_capacity(value.len() + 16);
    for c in value.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            write!(out, "\\x{{{:X}}}", c as u32).expect("writing to a String");
        }
    }
    out
}

/// Line breaks and other control characters become spaces, so no input can
/// add a header field or a line.
fn clean(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// `Name: value\r\n`, folded at spaces to stay near [`FOLD_AT`] and always
/// within [`MAX_LINE`] octets (RFC 5322 §2.2.3). A run without spaces
/// longer than the limit is broken where it must be.
fn fold_field(name: &str, value: &str) -> String {
    let value = clean(value);
    let mut out = String::new();
    let mut line = format!("{name}:");
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        if line.len() + 1 + word.len() > FOLD_AT && line.trim() != format!("{name}:") {
            out.push_str(&line);
            out.push_str("\r\n");
            line = String::new();
        }
        line.push(' ');
        line.push_str(word);
        while line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push_str(&line[..cut]);
            out.push_str("\r\n");
            line = format!(" {}", &line[cut..]);
        }
    }
    out.push_str(&line);
    out.push_str("\r\n");
    out
}

/// A boundary that no part contains (RFC 2046 §5.1.1), derived from the
/// content so the function stays pure.
fn pick_boundary(request: &DsnRequest, parts: &[&[u8]]) -> String {
    let mut hasher = DefaultHasher::new();
    request.reporting_mta.hash(&mut hasher);
    for part in parts {
        part.hash(&mut hasher);
    }
    let mut seed = hasher.finish();
    loop {
        let boundary = format!("=_dsn_{seed:016x}");
        let marker = format!("--{boundary}");
        let found = parts.iter().any(|part| {
            part.windows(marker.len())
                .any(|window| window == marker.as_bytes())
        });
        if !found {
            return boundary;
        }
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    }
}

fn default_message_id(request: &DsnRequest, original: &[u8], mta: &str) -> String {
    let mut hasher = DefaultHasher::new();
    original.hash(&mut hasher);
    request.envelope.sender.hash(&mut hasher);
    request.envelope.envid.hash(&mut hasher);
    for report in &request.recipients {
        report.final_recipient.hash(&mut hasher);
        report.action.hash(&mut hasher);
    }
    let secs = request
        .date
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{secs}.{:016x}.dsn@{mta}", hasher.finish())
}

/// Formats `time` as an RFC 5322 §3.3 date in UTC.
pub fn rfc5322_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date, proleptic Gregorian
    // (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let month_name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day} {month_name} {year} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_661)),
            "Tue, 29 Feb 2000 01:01:01 +0000"
        );
    }

    #[test]
    fn folding_keeps_lines_short_and_loses_nothing() {
        let long = "word ".repeat(100);
        let folded = fold_field("Diagnostic-Code", &format!("smtp; {long}"));
        for line in folded.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(line.len() <= FOLD_AT, "{line:?}");
        }
        let unfolded: String = folded.replace("\r\n", "");
        assert_eq!(unfolded, format!("Diagnostic-Code: smtp; {}", long.trim()));
        let run = "x".repeat(2500);
        let folded = fold_field("X", &run);
        assert!(folded.split("\r\n").all(|l| l.len() <= MAX_LINE));
        assert_eq!(
            folded.replace("\r\n ", "").replace("\r\n", ""),
            format!("X: {run}")
        );
    }

    #[test]
    fn values_cannot_inject_lines() {
        let folded = fold_field("Remote-MTA", "dns; evil\r\nBcc: x@example.org");
        assert_eq!(folded.matches("\r\n").count(), 1, "{folded:?}");
    }

    #[test]
    fn normalize_line_endings_and_lengths() {
        let n = normalize(b"a\nb\rc\r\nd", false);
        assert_eq!(n.bytes, b"a\r\nb\r\nc\r\nd\r\n");
        assert!(!n.overlong);
        let long = vec![b'y'; 1500];
        assert!(normalize(&long, false).overlong);
        let folded = normalize(&long, true);
        assert!(!folded.overlong);
        assert!(
            folded
                .bytes
                .split(|&b| b == b'\n')
                .all(|l| l.len() <= MAX_LINE + 1)
        );
    }

    #[test]
    fn wrapping_keeps_indentation() {
        assert_eq!(
            wrap("  <a@b>: one two three", 12, "    "),
            ["  <a@b>: one", "    two", "    three"]
        );
        assert_eq!(wrap("", 10, ""), [""]);
        let long = "x".repeat(2000);
        assert!(wrap(&long, 76, "").iter().all(|l| l.len() <= MAX_LINE));
    }

    #[test]
    fn header_split() {
        let (h, b) = split_header(b"A: 1\r\nB: 2\r\n\r\nbody\r\n");
        assert_eq!((h, b), (&b"A: 1\r\nB: 2\r\n"[..], &b"body\r\n"[..]));
        let (h, b) = split_header(b"A: 1\n\nbody");
        assert_eq!((h, b), (&b"A: 1\n"[..], &b"body"[..]));
        let (h, b) = split_header(b"A: 1\r\n");
        assert_eq!((h, b), (&b"A: 1\r\n"[..], &b""[..]));
    }

    #[test]
    fn utf8_addresses_in_ascii_reports_are_escaped() {
        assert_eq!(
            address_field("rfc822", "a@b.test", false),
            "rfc822; a@b.test"
        );
        assert_eq!(
            address_field("rfc822", "jé@b.test", false),
            "utf-8; j\\x{E9}@b.test"
        );
        assert_eq!(
            address_field("rfc822", "jé@b.test", true),
            "utf-8; jé@b.test"
        );
    }

    #[test]
    fn notify_rules() {
        let all = Notify::On {
            success: true,
            failure: true,
            delay: true,
        };
        let delay_only = Notify::On {
            success: false,
            failure: false,
            delay: true,
        };
        for action in [
            Action::Failed,
            Action::Delayed,
            Action::Delivered,
            Action::Relayed,
            Action::Expanded,
        ] {
            assert!(notification_owed("a@b", Some(all), action));
            assert!(!notification_owed("", Some(all), action));
            assert!(!notification_owed("<>", Some(all), action));
            assert!(!notification_owed("a@b", Some(Notify::Never), action));
            assert_eq!(
                notification_owed("a@b", Some(delay_only), action),
                action == Action::Delayed
            );
            assert_eq!(
                notification_owed("a@b", None, action),
                action == Action::Failed
            );
        }
    }
}
