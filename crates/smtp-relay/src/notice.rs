//! Delivery status notifications the scheduler queues: a failure (bounce),
//! a delay warning or a success notice about some recipients of one
//! message, as an RFC 3464 `multipart/report` to the envelope sender with
//! the null reverse-path.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use smtp_proto::command::Ret;

use crate::queue::{AttemptReport, MessageKind, NewMessage, QueuedEnvelope, QueuedRecipient};

/// What a notification reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// The recipients failed (`Action: failed`).
    Failure,
    /// Still trying (`Action: delayed`).
    Delay,
    /// Delivered (`Action: delivered`) or handed to a next hop
    /// (`Action: relayed`).
    Success,
}

/// One recipient a notification reports on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeRecipient {
    /// Its index in the message's recipients.
    pub index: usize,
    /// The last attempt.
    pub report: AttemptReport,
    /// Failed because the queue lifetime ran out.
    pub expired: bool,
    /// Handed to a next hop rather than delivered here.
    pub relayed: bool,
}

/// Formats `time` as an RFC 5322 §3.3 date in UTC.
pub fn rfc5322_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Days to a civil date (proleptic Gregorian, era arithmetic).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day} {month} {year} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The RFC 3463 status of a report: the enhanced code of its reply, else
/// the class of its basic code.
fn status(report: &AttemptReport, kind: NoticeKind, expired: bool) -> String {
    if kind == NoticeKind::Success {
        return "2.0.0".to_owned();
    }
    if expired {
        // RFC 3463 §3.5: delivery time expired.
        return "4.4.7".to_owned();
    }
    let mut words = report.diagnostic.split_whitespace();
    let code = words.next().unwrap_or("");
    if let Some(enhanced) = words.next()
        && enhanced.split('.').count() == 3
        && enhanced
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && enhanced.starts_with(['2', '4', '5'])
    {
        return enhanced.to_owned();
    }
    match code.as_bytes().first() {
        Some(b'5') => "5.0.0".to_owned(),
        Some(b'2') => "2.0.0".to_owned(),
        _ => "4.0.0".to_owned(),
    }
}

/// Whether the header section ends (an empty line) at `at`.
fn header_end(body: &[u8]) -> usize {
    body.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(body.len(), |at| at + 4)
}

/// Folds text from a peer into one header-safe line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn address_type(recipient: &QueuedRecipient) -> &'static str {
    if recipient.address.is_ascii() {
        "rfc822"
    } else {
        // RFC 6533 §3.
        "utf-8"
    }
}

/// Builds the notification about `recipients` of the message `envelope`
/// with content `body`. The result is addressed to the envelope sender,
/// from the null reverse-path, and marked as a notification so it is never
/// itself reported on.
///
/// The report follows RFC 3464: a human-readable part, the
/// `message/delivery-status` part (`message/global-delivery-status` for
/// SMTPUTF8 mail, RFC 6533), and the original message (failures, unless
/// `RET=HDRS`) or its header section (otherwise).
pub fn build(
    kind: NoticeKind,
    envelope: &QueuedEnvelope,
    body: &Bytes,
    recipients: &[NoticeRecipient],
    reporting_mta: &str,
    now: SystemTime,
) -> Result<NewMessage, String> {
    let sender = envelope
        .sender
        .clone()
        .ok_or("no notification goes to the null reverse-path")?;
    if envelope.kind == MessageKind::Notification {
        return Err("a notification is never reported on".to_owned());
    }
    let utf8 = envelope.smtputf8 || !sender.is_ascii();
    let seed = crate::queue::unix_millis(now) ^ (body.len() as u64) << 20;
    let mut boundary = format!("=_ferry_{seed:x}");
    while body
        .windows(boundary.len())
        .any(|w| w == boundary.as_bytes())
    {
        boundary.push('x');
    }
    let (subject, intro) = match kind {
        NoticeKind::Failure => (
            "Undelivered Mail Returned to Sender",
            "Your message could not be delivered to the following recipients. \
             This is a permanent error; I have given up.",
        ),
        NoticeKind::Delay => (
            "Delayed Mail (still being retried)",
            "Your message has not been delivered yet to the following recipients. \
             I will keep trying; you do not need to resend it.",
        ),
        NoticeKind::Success => (
            "Successful Mail Delivery Report",
            "Your message was delivered (or handed on) to the following recipients.",
        ),
    };
    let date = rfc5322_date(now);
    let mut out = String::new();
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n\
         To: <{sender}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{seed:x}.dsn@{reporting_mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated delivery status notification.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         This is the mail system at host {reporting_mta}.\r\n\
         \r\n\
         {intro}\r\n\
         \r\n"
    ));
    for r in recipients {
        let recipient = &envelope.recipients[r.index];
        out.push_str(&format!(
            "<{}>: {}\r\n",
            one_line(&recipient.address),
            one_line(&r.report.diagnostic)
        ));
    }
    let report_type = if utf8 {
        "message/global-delivery-status"
    } else {
        "message/delivery-status"
    };
    out.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: {report_type}\r\n\r\n\
         Reporting-MTA: dns; {reporting_mta}\r\n"
    ));
    if let Some(envid) = &envelope.envid {
        out.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(envid)));
    }
    out.push_str(&format!(
        "Arrival-Date: {}\r\n",
        rfc5322_date(envelope.received_at)
    ));
    for r in recipients {
        let recipient = &envelope.recipients[r.index];
        out.push_str(&format!(
            "\r\nFinal-Recipient: {}; {}\r\n",
            address_type(recipient),
            one_line(&recipient.address)
        ));
        if let Some(orcpt) = &recipient.orcpt {
            out.push_str(&format!(
                "Original-Recipient: {}; {}\r\n",
                one_line(&orcpt.addr_type),
                one_line(&orcpt.address)
            ));
        }
        let action = match kind {
            NoticeKind::Failure => "failed",
            NoticeKind::Delay => "delayed",
            NoticeKind::Success if r.relayed => "relayed",
            NoticeKind::Success => "delivered",
        };
        out.push_str(&format!(
            "Action: {action}\r\nStatus: {}\r\n",
            status(&r.report, kind, r.expired)
        ));
        if let Some(remote) = &r.report.remote_mta {
            out.push_str(&format!("Remote-MTA: dns; {}\r\n", one_line(remote)));
        }
        let diagnostic = one_line(&r.report.diagnostic);
        if diagnostic
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_digit)
        {
            out.push_str(&format!("Diagnostic-Code: smtp; {diagnostic}\r\n"));
        }
        out.push_str(&format!(
            "Last-Attempt-Date: {}\r\n",
            rfc5322_date(r.report.at)
        ));
    }
    let full = kind == NoticeKind::Failure && envelope.ret != Some(Ret::Headers);
    let (content_type, content) = match (full, utf8) {
        (true, false) => ("message/rfc822", &body[..]),
        (true, true) => ("message/global", &body[..]),
        (false, false) => ("text/rfc822-headers", &body[..header_end(body)]),
        (false, true) => ("message/global-headers", &body[..header_end(body)]),
    };
    out.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n"
    ));
    let mut message = out.into_bytes();
    message.extend_from_slice(content);
    if !message.ends_with(b"\r\n") {
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Ok(NewMessage {
        envelope: QueuedEnvelope {
            sender: None,
            ret: None,
            envid: None,
            smtputf8: utf8,
            body_type: Some(smtp_proto::command::BodyType::EightBitMime),
            requiretls: false,
            received_at: now,
            kind: MessageKind::Notification,
            recipients: vec![QueuedRecipient::new(sender)],
        },
        body: Bytes::from(message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc5322_date(t), "Tue, 14 Nov 2023 22:13:20 +0000");
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc5322_date(leap), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn statuses() {
        let report = |d: &str| AttemptReport {
            remote_mta: None,
            diagnostic: d.to_owned(),
            at: UNIX_EPOCH,
        };
        assert_eq!(
            status(
                &report("550 5.1.1 no such user"),
                NoticeKind::Failure,
                false
            ),
            "5.1.1"
        );
        assert_eq!(
            status(&report("554 no"), NoticeKind::Failure, false),
            "5.0.0"
        );
        assert_eq!(
            status(&report("451 4.3.0 later"), NoticeKind::Failure, true),
            "4.4.7"
        );
        assert_eq!(
            status(&report("451 later"), NoticeKind::Delay, false),
            "4.0.0"
        );
        assert_eq!(
            status(&report("250 ok"), NoticeKind::Success, false),
            "2.0.0"
        );
    }
}
