//! Delivery status notifications the scheduler queues: a failure (bounce),
//! a delay warning or a success notice about some recipients of one
//! message, as an RFC 3464 `multipart/report` (built by [`crate::dsn`]) to
//! the envelope sender with the null reverse-path.

use std::time::SystemTime;

use bytes::Bytes;
use smtp_proto::EnhancedCode;
use smtp_proto::command::BodyType;

use crate::dsn::{
    Action, DiagnosticCode, DsnRequest, OriginalEnvelope, RecipientReport, build_dsn,
};
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
    /// For a delay warning: when the relay gives up.
    pub will_retry_until: Option<SystemTime>,
}

/// The RFC 3463 status of a report: the enhanced code of its reply, else
/// the class of its basic code; its class matches the action (RFC 3464
/// §2.3.4: 5 for failed, 4 for delayed, 2 for delivered and relayed).
fn status(report: &AttemptReport, kind: NoticeKind, expired: bool) -> EnhancedCode {
    match kind {
        NoticeKind::Success => return EnhancedCode::new(2, 0, 0),
        // RFC 3463 §3.5: X.4.7, delivery time expired.
        NoticeKind::Failure if expired => return EnhancedCode::new(5, 4, 7),
        _ => {}
    }
    let class = if kind == NoticeKind::Failure { 5 } else { 4 };
    let mut words = report.diagnostic.split_whitespace();
    let _code = words.next();
    match words.next().and_then(EnhancedCode::parse) {
        Some(code) if code.class == class => code,
        _ => EnhancedCode::new(class, 0, 0),
    }
}

/// Builds the notification about `recipients` of the message `envelope`
/// with content `body`, with [`crate::dsn::build_dsn`]. The result is
/// addressed to the envelope sender, from the null reverse-path, and
/// marked as a notification so it is never itself reported on.
pub fn build(
    kind: NoticeKind,
    envelope: &QueuedEnvelope,
    body: &Bytes,
    recipients: &[NoticeRecipient],
    reporting_mta: &str,
    now: SystemTime,
) -> Result<NewMessage, String> {
    if envelope.kind == MessageKind::Notification {
        return Err("a notification is never reported on".to_owned());
    }
    let sender = envelope.sender.clone().unwrap_or_default();
    let mut original = OriginalEnvelope::new(sender, envelope.received_at);
    original.envid = envelope.envid.clone();
    original.ret = envelope.ret;
    original.smtputf8 = envelope.smtputf8;
    let reports = recipients
        .iter()
        .map(|r| {
            let recipient = &envelope.recipients[r.index];
            let action = match kind {
                NoticeKind::Failure => Action::Failed,
                NoticeKind::Delay => Action::Delayed,
                NoticeKind::Success if r.relayed => Action::Relayed,
                NoticeKind::Success => Action::Delivered,
            };
            let mut report = RecipientReport::new(
                recipient.address.clone(),
                action,
                status(&r.report, kind, r.expired),
            );
            report.original_recipient = recipient.orcpt.clone();
            report.remote_mta = r.report.remote_mta.clone();
            if r.report
                .diagnostic
                .as_bytes()
                .first()
                .is_some_and(u8::is_ascii_digit)
            {
                report.diagnostic = Some(DiagnosticCode::smtp(r.report.diagnostic.clone()));
            }
            report.last_attempt = Some(r.report.at);
            report.will_retry_until = r.will_retry_until;
            report
        })
        .collect();
    let request = DsnRequest::new(reporting_mta, original, reports, now);
    let dsn = build_dsn(&request, body).map_err(|e| e.to_string())?;
    Ok(NewMessage {
        envelope: QueuedEnvelope {
            sender: None,
            ret: None,
            envid: None,
            smtputf8: dsn.smtputf8,
            body_type: dsn.eight_bit.then_some(BodyType::EightBitMime),
            requiretls: false,
            received_at: now,
            kind: MessageKind::Notification,
            recipients: vec![QueuedRecipient::new(dsn.recipient)],
        },
        body: Bytes::from(dsn.bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn statuses_match_the_action() {
        let report = |d: &str| AttemptReport {
            remote_mta: None,
            diagnostic: d.to_owned(),
            at: UNIX_EPOCH,
        };
        let status = |d: &str, kind, expired| status(&report(d), kind, expired).to_string();
        assert_eq!(
            status("550 5.1.1 no such user", NoticeKind::Failure, false),
            "5.1.1"
        );
        assert_eq!(status("554 no", NoticeKind::Failure, false), "5.0.0");
        assert_eq!(
            status("451 4.3.0 later", NoticeKind::Failure, true),
            "5.4.7"
        );
        assert_eq!(status("451 4.3.0 later", NoticeKind::Delay, false), "4.3.0");
        assert_eq!(status("451 later", NoticeKind::Delay, false), "4.0.0");
        assert_eq!(status("250 ok", NoticeKind::Success, false), "2.0.0");
    }
}
