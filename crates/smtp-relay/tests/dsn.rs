//! Delivery status notifications (RFC 3464, RFC 6533) read back with a MIME
//! parser, field by field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use smtp_proto::EnhancedCode;
use smtp_proto::command::{OriginalRecipient, Ret};
use smtp_relay::dsn::{
    Action, DiagnosticCode, DsnError, DsnMessage, DsnRequest, OriginalEnvelope, RecipientReport,
    build_dsn, rfc5322_date,
};

const ORIGINAL: &[u8] = b"From: Alice <alice@example.org>\r\n\
To: bob@example.net, carol@example.net\r\n\
Subject: Quarterly numbers\r\n\
Message-ID: <orig-1@example.org>\r\n\
\r\n\
Hello Bob and Carol,\r\n\
the numbers are attached.\r\n";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// 2025-12-01 14:40:00 UTC and later.
const T0: u64 = 1_764_600_000;

fn failure_request() -> DsnRequest {
    let mut envelope = OriginalEnvelope::new("alice@example.org", at(T0));
    envelope.envid = Some("QQ314159".into());
    envelope.ret = Some(Ret::Full);
    envelope.received_from_mta = Some("client.example.org [192.0.2.7]".into());
    let mut bob = RecipientReport::new(
        "bob@example.net",
        Action::Failed,
        EnhancedCode::new(5, 1, 1),
    );
    bob.original_recipient = Some(OriginalRecipient {
        addr_type: "rfc822".into(),
        address: "Bob@Example.NET".into(),
    });
    bob.remote_mta = Some("mx1.example.net".into());
    bob.diagnostic = Some(DiagnosticCode::smtp(
        "550 5.1.1 <bob@example.net>: no such user",
    ));
    bob.last_attempt = Some(at(T0 + 60));
    let mut carol = RecipientReport::new(
        "carol@example.net",
        Action::Failed,
        EnhancedCode::new(5, 1, 10),
    );
    carol.diagnostic = Some(DiagnosticCode::smtp(
        "556 5.1.10 example.net: domain accepts no mail (null MX, RFC 7505)",
    ));
    carol.last_attempt = Some(at(T0 + 61));
    let mut request = DsnRequest::new(
        "relay.example.org",
        envelope,
        vec![bob, carol],
        at(T0 + 120),
    );
    request.message_id = Some("dsn-1@relay.example.org".into());
    request
}

fn parse(dsn: &DsnMessage) -> Message<'_> {
    MessageParser::default()
        .parse(&dsn.bytes[..])
        .expect("the DSN parses")
}

/// The sub-parts of the multipart/report root.
fn report_parts<'a>(message: &'a Message<'a>) -> Vec<&'a mail_parser::MessagePart<'a>> {
    let root = message.root_part();
    match &root.body {
        PartType::Multipart(ids) => ids.iter().map(|id| &message.parts[*id as usize]).collect(),
        other => panic!("root is not multipart: {other:?}"),
    }
}

fn content_type(part: &mail_parser::MessagePart<'_>) -> String {
    let ct = part.content_type().expect("content type");
    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
}

/// The raw bytes of a part's body.
fn raw_body<'a>(message: &'a Message<'a>, part: &mail_parser::MessagePart<'_>) -> &'a [u8] {
    &message.raw_message()[part.offset_body as usize..part.offset_end as usize]
}

/// Parses a delivery-status body into blocks of (name, value) fields,
/// unfolding continuation lines.
fn status_blocks(body: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).expect("UTF-8 status");
    let mut blocks = Vec::new();
    for block in text.split("\r\n\r\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in block.split("\r\n").filter(|l| !l.is_empty()) {
            if line.starts_with(' ') || line.starts_with('\t') {
                fields.last_mut().expect("continuation").1.push_str(line);
            } else {
                let (name, value) = line.split_once(':').expect("name: value");
                fields.push((name.to_owned(), value.to_owned()));
            }
        }
        if !fields.is_empty() {
            blocks.push(
                fields
                    .into_iter()
                    .map(|(n, v)| (n, v.split_whitespace().collect::<Vec<_>>().join(" ")))
                    .collect(),
            );
        }
    }
    blocks
}

fn fields(block: &[(String, String)]) -> Vec<(&str, &str)> {
    block
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

/// RFC 5322 §2.1.1 and §2.3: CRLF only, lines of at most 998 octets.
fn assert_lines_ok(bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    for line in bytes.split(|&b| b == b'\n') {
        assert!(line.len() <= 999, "line of {} octets", line.len());
    }
    assert!(bytes.ends_with(b"\r\n"));
}

fn boundary(message: &Message<'_>) -> String {
    message
        .root_part()
        .content_type()
        .and_then(|ct| ct.attribute("boundary"))
        .expect("boundary")
        .to_owned()
}

#[test]
fn failure_report_has_every_field() {
    let request = failure_request();
    let dsn = build_dsn(&request, ORIGINAL).unwrap();
    assert_eq!(dsn.recipient, "alice@example.org");
    assert!(!dsn.smtputf8);
    assert!(!dsn.eight_bit);
    assert_lines_ok(&dsn.bytes);
    let message = parse(&dsn);

    let from = message.from().and_then(|a| a.first()).unwrap();
    assert_eq!(from.address(), Some("MAILER-DAEMON@relay.example.org"));
    assert_eq!(from.name(), Some("Mail Delivery System"));
    let to = message.to().and_then(|a| a.first()).unwrap();
    assert_eq!(to.address(), Some("alice@example.org"));
    assert_eq!(
        message.subject(),
        Some("Delivery Status Notification (Failure)")
    );
    let date = message.date().unwrap();
    assert_eq!(
        (
            date.year,
            date.month,
            date.day,
            date.hour,
            date.minute,
            date.second
        ),
        (2025, 12, 1, 14, 42, 0)
    );
    assert_eq!(message.message_id(), Some("dsn-1@relay.example.org"));
    assert_eq!(
        message.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    assert_eq!(
        message.header_raw("MIME-Version").map(str::trim),
        Some("1.0")
    );
    let ct = message.root_part().content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));

    let parts = report_parts(&message);
    assert_eq!(parts.len(), 3);
    assert_eq!(content_type(parts[0]), "text/plain");
    assert_eq!(content_type(parts[1]), "message/delivery-status");
    assert_eq!(content_type(parts[2]), "message/rfc822");

    let raw_text = parts[0].text_contents().unwrap();
    assert!(
        raw_text.contains("\r\n  <bob@example.net>: mx1.example.net said:"),
        "{raw_text}"
    );
    // The prose is wrapped; compare it with its line breaks as spaces.
    let text = raw_text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains("relay.example.org"), "{text}");
    assert!(
        text.contains(
            "<bob@example.net>: mx1.example.net said: 550 5.1.1 <bob@example.net>: no such user"
        ),
        "{text}"
    );
    assert!(text.contains("<carol@example.net>: 556 5.1.10"), "{text}");
    assert!(text.contains("given up"), "{text}");
    assert!(text.contains("original message is attached"), "{text}");

    let blocks = status_blocks(raw_body(&message, parts[1]));
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    assert_eq!(
        fields(&blocks[0]),
        [
            ("Original-Envelope-Id", "QQ314159"),
            ("Reporting-MTA", "dns; relay.example.org"),
            ("Received-From-MTA", "dns; client.example.org [192.0.2.7]"),
            ("Arrival-Date", "Mon, 1 Dec 2025 14:40:00 +0000"),
        ]
    );
    assert_eq!(
        fields(&blocks[1]),
        [
            ("Original-Recipient", "rfc822; Bob@Example.NET"),
            ("Final-Recipient", "rfc822; bob@example.net"),
            ("Action", "failed"),
            ("Status", "5.1.1"),
            ("Remote-MTA", "dns; mx1.example.net"),
            (
                "Diagnostic-Code",
                "smtp; 550 5.1.1 <bob@example.net>: no such user"
            ),
            ("Last-Attempt-Date", "Mon, 1 Dec 2025 14:41:00 +0000"),
        ]
    );
    assert_eq!(
        fields(&blocks[2]),
        [
            ("Final-Recipient", "rfc822; carol@example.net"),
            ("Action", "failed"),
            ("Status", "5.1.10"),
            (
                "Diagnostic-Code",
                "smtp; 556 5.1.10 example.net: domain accepts no mail (null MX, RFC 7505)"
            ),
            ("Last-Attempt-Date", "Mon, 1 Dec 2025 14:41:01 +0000"),
        ]
    );

    // The original comes back byte for byte, and parses as a message.
    assert_eq!(raw_body(&message, parts[2]), ORIGINAL);
    let PartType::Message(original) = &parts[2].body else {
        panic!("not a message: {:?}", parts[2].body);
    };
    assert_eq!(original.subject(), Some("Quarterly numbers"));
    assert_eq!(original.message_id(), Some("orig-1@example.org"));

    // Pure: the same input gives the same bytes.
    assert_eq!(build_dsn(&request, ORIGINAL).unwrap(), dsn);
}

#[test]
fn ret_hdrs_returns_only_the_header() {
    let mut request = failure_request();
    request.envelope.ret = Some(Ret::Headers);
    let dsn = build_dsn(&request, ORIGINAL).unwrap();
    assert_lines_ok(&dsn.bytes);
    let message = parse(&dsn);
    let parts = report_parts(&message);
    assert_eq!(content_type(parts[2]), "text/rfc822-headers");
    let returned = std::str::from_utf8(raw_body(&message, parts[2])).unwrap();
    assert!(
        returned.contains("Subject: Quarterly numbers\r\n"),
        "{returned}"
    );
    assert!(returned.contains("Message-ID: <orig-1@example.org>\r\n"));
    assert!(!returned.contains("Hello Bob"), "{returned}");
    assert!(
        parts[0]
            .text_contents()
            .unwrap()
            .contains("header of the original message is attached")
    );
}

#[test]
fn without_ret_a_failure_returns_the_full_message_unless_too_large() {
    let mut request = failure_request();
    request.envelope.ret = None;
    let dsn = build_dsn(&request, ORIGINAL).unwrap();
    let message = parse(&dsn);
    assert_eq!(content_type(report_parts(&message)[2]), "message/rfc822");

    request.full_message_limit = 64;
    let dsn = build_dsn(&request, ORIGINAL).unwrap();
    let message = parse(&dsn);
    let parts = report_parts(&message);
    assert_eq!(content_type(parts[2]), "text/rfc822-headers");
    assert!(parts[0].text_contents().unwrap().contains("too large"));
}

#[test]
fn delay_report_says_until_when_and_returns_headers() {
    let mut envelope = OriginalEnvelope::new("alice@example.org", at(T0));
    envelope.ret = Some(Ret::Full);
    let mut report = RecipientReport::new(
        "bob@example.net",
        Action::Delayed,
        EnhancedCode::new(4, 4, 1),
    );
    report.remote_mta = Some("mx1.example.net".into());
    report.diagnostic = Some(DiagnosticCode::smtp("451 4.4.1 try again later"));
    report.last_attempt = Some(at(T0 + 4 * 3600));
    report.will_retry_until = Some(at(T0 + 5 * 86_400));
    let request = DsnRequest::new(
        "relay.example.org",
        envelope,
        vec![report],
        at(T0 + 4 * 3600),
    );
    let dsn = build_dsn(&request, ORIGINAL).unwrap();
    assert_lines_ok(&dsn.bytes);
    let message = parse(&dsn);
    assert_eq!(
        message.subject(),
        Some("Delivery Status Notification (Delay)")
    );
    // A generated Message-ID at the reporting MTA.
    assert!(
        message
            .message_id()
            .unwrap()
            .ends_with("@relay.example.org")
    );
    let parts = report_parts(&message);
    let text = parts[0].text_contents().unwrap();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains("not been delivered yet"), "{text}");
    assert!(text.contains("Sat, 6 Dec 2025 14:40:00 +0000"), "{text}");
    let blocks = status_blocks(raw_body(&message, parts[1]));
    assert_eq!(
        fields(&blocks[1]),
        [
            ("Final-Recipient", "rfc822; bob@example.net"),
            ("Action", "delayed"),
            ("Status", "4.4.1"),
            ("Remote-MTA", "dns; mx1.example.net"),
            ("Diagnostic-Code", "smtp; 451 4.4.1 try again later"),
            ("Last-Attempt-Date", "Mon, 1 Dec 2025 18:40:00 +0000"),
            ("Will-Retry-Until", "Sat, 6 Dec 2025 14:40:00 +0000"),
        ]
    );
    assert_eq!(content_type(parts[2]), "text/rfc822-headers");
}

#[test]
fn success_reports_relayed_and_delivered() {
    let envelope = OriginalEnvelope::new("alice@example.org", at(T0));
    let reports = vec![
        RecipientReport::new(
            "bob@example.net",
            Action::Relayed,
            EnhancedCode::new(2, 0, 0),
        ),
        RecipientReport::new(
            "carol@example.net",
            Action::Delivered,
            EnhancedCode::new(2, 0, 0),
        ),
    ];
    let request = DsnRequest::new("relay.example.org", envelope, reports, at(T0));
    let dsn = build_dsn(&request, ORIGINAL).unwrap();
    let message = parse(&dsn);
    assert_eq!(
        message.subject(),
        Some("Delivery Status Notification (Success)")
    );
    let parts = report_parts(&message);
    let blocks = status_blocks(raw_body(&message, parts[1]));
    assert_eq!(blocks[1][1], ("Action".to_owned(), "relayed".to_owned()));
    assert_eq!(blocks[2][1], ("Action".to_owned(), "delivered".to_owned()));
    assert_eq!(content_type(parts[2]), "text/rfc822-headers");
}

#[test]
fn smtputf8_mail_gets_a_global_report() {
    let original = "From: Jürgen <jürgen@bücher.example>\r\n\
To: 用户@example.net\r\n\
Subject: Grüße\r\n\
\r\n\
Schöne Grüße\r\n"
        .as_bytes();
    let mut envelope = OriginalEnvelope::new("jürgen@bücher.example", at(T0));
    envelope.smtputf8 = true;
    envelope.ret = Some(Ret::Full);
    let mut report = RecipientReport::new(
        "用户@example.net",
        Action::Failed,
        EnhancedCode::new(5, 1, 1),
    );
    report.original_recipient = Some(OriginalRecipient {
        addr_type: "utf-8".into(),
        address: "用户@example.net".into(),
    });
    report.remote_mta = Some("mx.example.net".into());
    report.diagnostic = Some(DiagnosticCode::smtp("550 5.1.1 用户不存在"));
    let request = DsnRequest::new("relay.example.org", envelope, vec![report], at(T0));
    let dsn = build_dsn(&request, original).unwrap();
    assert!(dsn.smtputf8, "the To: header is UTF-8");
    assert!(dsn.eight_bit);
    assert_eq!(dsn.recipient, "jürgen@bücher.example");
    assert_lines_ok(&dsn.bytes);

    let message = parse(&dsn);
    let to = message.to().and_then(|a| a.first()).unwrap();
    assert_eq!(to.address(), Some("jürgen@bücher.example"));
    let ct = message.root_part().content_type().unwrap();
    assert_eq!(ct.attribute("report-type"), Some("global-delivery-status"));
    assert_eq!(
        message
            .header_raw("Content-Transfer-Encoding")
            .map(str::trim),
        Some("8bit")
    );
    let parts = report_parts(&message);
    assert_eq!(content_type(parts[0]), "text/plain");
    assert_eq!(
        parts[0].content_type().unwrap().attribute("charset"),
        Some("utf-8")
    );
    assert!(
        parts[0]
            .text_contents()
            .unwrap()
            .contains("550 5.1.1 用户不存在")
    );
    assert_eq!(content_type(parts[1]), "message/global-delivery-status");
    assert_eq!(content_type(parts[2]), "message/global");

    let blocks = status_blocks(raw_body(&message, parts[1]));
    assert_eq!(
        fields(&blocks[1]),
        [
            ("Original-Recipient", "utf-8; 用户@example.net"),
            ("Final-Recipient", "utf-8; 用户@example.net"),
            ("Action", "failed"),
            ("Status", "5.1.1"),
            ("Remote-MTA", "dns; mx.example.net"),
            ("Diagnostic-Code", "smtp; 550 5.1.1 用户不存在"),
        ]
    );
    assert_eq!(raw_body(&message, parts[2]), original);
    let PartType::Message(returned) = &parts[2].body else {
        panic!("message/global is not parsed as a message");
    };
    assert_eq!(returned.subject(), Some("Grüße"));

    // RET=HDRS gives message/global-headers.
    let mut request = request;
    request.envelope.ret = Some(Ret::Headers);
    let dsn = build_dsn(&request, original).unwrap();
    let message = parse(&dsn);
    let parts = report_parts(&message);
    assert_eq!(content_type(parts[2]), "message/global-headers");
    assert!(
        !std::str::from_utf8(raw_body(&message, parts[2]))
            .unwrap()
            .contains("Schöne")
    );
}

#[test]
fn utf8_addresses_in_an_ascii_report_are_escaped() {
    let mut request = failure_request();
    request.recipients[0].original_recipient = Some(OriginalRecipient {
        addr_type: "utf-8".into(),
        address: "bé@example.net".into(),
    });
    let dsn = build_dsn(&request, ORIGINAL).unwrap();
    let message = parse(&dsn);
    let blocks = status_blocks(raw_body(&message, report_parts(&message)[1]));
    assert_eq!(
        blocks[1][0],
        (
            "Original-Recipient".to_owned(),
            "utf-8; b\\x{E9}@example.net".to_owned()
        )
    );
}

#[test]
fn eight_bit_body_without_smtputf8_is_8bit_not_utf8_headers() {
    let original = "From: a@example.org\r\nSubject: x\r\n\r\ncaf\u{e9}\r\n".as_bytes();
    let request = failure_request();
    let dsn = build_dsn(&request, original).unwrap();
    assert!(dsn.eight_bit);
    assert!(!dsn.smtputf8);
    let message = parse(&dsn);
    assert_eq!(
        message
            .header_raw("Content-Transfer-Encoding")
            .map(str::trim),
        Some("8bit")
    );
    let parts = report_parts(&message);
    assert_eq!(content_type(parts[2]), "message/rfc822");
    assert_eq!(
        parts[2]
            .content_transfer_encoding()
            .map(str::to_ascii_lowercase),
        Some("8bit".into())
    );
}

#[test]
fn the_boundary_never_occurs_in_the_content() {
    let request = failure_request();
    let first = build_dsn(&request, ORIGINAL).unwrap();
    let first_boundary = boundary(&parse(&first));
    // An original that contains the boundary the first report used, as a
    // delimiter line and inside text.
    let mut tricky = ORIGINAL.to_vec();
    tricky
        .extend_from_slice(format!("--{first_boundary}\r\nx --{first_boundary}--\r\n").as_bytes());
    let mut request = request;
    request.recipients[0].diagnostic = Some(DiagnosticCode::smtp(format!(
        "550 5.1.1 --{first_boundary}"
    )));
    let dsn = build_dsn(&request, &tricky).unwrap();
    let message = parse(&dsn);
    let b = boundary(&message);
    let marker = format!("--{b}");
    let text = String::from_utf8(dsn.bytes.clone()).unwrap();
    // Exactly the 3 delimiters and the close delimiter.
    assert_eq!(text.matches(&marker).count(), 4, "{text}");
    let parts = report_parts(&message);
    assert_eq!(parts.len(), 3);
    assert_eq!(raw_body(&message, parts[2]), &tricky[..]);
}

#[test]
fn long_lines_and_bare_line_feeds_are_made_safe() {
    let mut original = b"From: a@example.org\nSubject: ".to_vec();
    original.extend(std::iter::repeat_n(b's', 1200));
    original.extend_from_slice(b"\n\nbody line\n");
    original.extend(std::iter::repeat_n(b'b', 1500));
    original.extend_from_slice(b"\n");
    let mut request = failure_request();
    request.recipients[0].diagnostic = Some(DiagnosticCode::smtp(format!(
        "550 5.1.1 {}",
        "very long reason ".repeat(150)
    )));
    request.recipients[1].remote_mta = Some(format!("{}.example.net", "m".repeat(1100)));
    let dsn = build_dsn(&request, &original).unwrap();
    assert_lines_ok(&dsn.bytes);
    let message = parse(&dsn);
    let parts = report_parts(&message);
    // A body line over 998 octets cannot be returned whole.
    assert_eq!(content_type(parts[2]), "text/rfc822-headers");
    assert!(parts[0].text_contents().unwrap().contains("lines too long"));
    let blocks = status_blocks(raw_body(&message, parts[1]));
    let diagnostic = &blocks[1]
        .iter()
        .find(|(n, _)| n == "Diagnostic-Code")
        .unwrap()
        .1;
    assert_eq!(
        diagnostic,
        &format!("smtp; 550 5.1.1 {}", "very long reason ".repeat(150).trim())
    );
}

#[test]
fn null_sender_and_empty_reports_are_refused() {
    let mut request = failure_request();
    request.envelope.sender = String::new();
    assert_eq!(build_dsn(&request, ORIGINAL), Err(DsnError::NullSender));
    request.envelope.sender = "<>".into();
    assert_eq!(build_dsn(&request, ORIGINAL), Err(DsnError::NullSender));
    let mut request = failure_request();
    request.recipients.clear();
    assert_eq!(build_dsn(&request, ORIGINAL), Err(DsnError::NoRecipients));
    let mut request = failure_request();
    request.reporting_mta = "bad host\r\nBcc: x".into();
    assert!(matches!(
        build_dsn(&request, ORIGINAL),
        Err(DsnError::InvalidReportingMta(_))
    ));
}

#[test]
fn diagnostic_from_a_multiline_reply() {
    let reply = smtp_proto::Reply::with_lines(
        550,
        Some(EnhancedCode::new(5, 7, 1)),
        vec!["rejected", "see https://example.net/policy"],
    );
    let diagnostic = DiagnosticCode::from_reply(&reply);
    assert_eq!(diagnostic.diagnostic_type, "smtp");
    assert_eq!(
        diagnostic.text,
        "550 5.7.1 rejected see https://example.net/policy"
    );
    assert_eq!(rfc5322_date(at(T0)), "Mon, 1 Dec 2025 14:40:00 +0000");
}
