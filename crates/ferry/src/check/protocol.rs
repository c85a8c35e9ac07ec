//! Protocol checks: EHLO and its extensions, the fresh EHLO after
//! STARTTLS, pipelining order, the null sender and postmaster, SIZE, and
//! NOOP/RSET/QUIT/unknown commands (RFC 5321, RFC 1870, RFC 2920, RFC 3207).

use smtp_proto::Reply;
use smtp_proto::ehlo::Capabilities;

use super::conversation::{ProbeError, show};
use super::report::{CheckResult, Section, Status};

/// Whether an EHLO keyword line is well-formed: `ehlo-keyword` is
/// `(ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`, parameters are printable
/// characters separated by spaces (RFC 5321 §4.1.1.1).
pub fn ehlo_line_ok(line: &str) -> bool {
    let mut parts = line.splitn(2, ' ');
    let keyword = parts.next().unwrap_or_default();
    let mut chars = keyword.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '-');
    let params_ok = parts
        .next()
        .is_none_or(|p| p.bytes().all(|b| (33..=126).contains(&b) || b == b' '));
    first_ok && rest_ok && params_ok
}

/// The EHLO reply: positive, and every keyword line well-formed.
pub fn ehlo(
    target: &str,
    reply: Result<&Reply, &ProbeError>,
) -> (CheckResult, Option<Capabilities>) {
    let rfc = "RFC 5321 §4.1.1.1";
    match reply {
        Ok(reply) if reply.code() == 250 => {
            let bad: Vec<&str> = reply
                .lines()
                .iter()
                .skip(1)
                .map(|l| l.as_ref())
                // A bare `250` last line (smtp-sink sends one) carries nothing.
                .filter(|l| !l.is_empty() && !ehlo_line_ok(l))
                .collect();
            let caps = Capabilities::from_reply(reply);
            let result = if caps.domain.is_empty() {
                CheckResult::new(
                    "protocol.ehlo",
                    target,
                    Section::Protocol,
                    Status::Warn,
                    "250 without a domain on its first line",
                    rfc,
                )
                .fix("Put the server's host name first in the EHLO reply.")
            } else if !bad.is_empty() {
                CheckResult::new(
                    "protocol.ehlo",
                    target,
                    Section::Protocol,
                    Status::Warn,
                    format!("malformed extension lines: {}", bad.join(" | ")),
                    rfc,
                )
                .fix("Announce each extension as KEYWORD [params], one per line.")
            } else {
                CheckResult::new(
                    "protocol.ehlo",
                    target,
                    Section::Protocol,
                    Status::Pass,
                    format!(
                        "250 {} with {} extensions",
                        caps.domain,
                        reply.lines().len() - 1
                    ),
                    rfc,
                )
            };
            (result, Some(caps))
        }
        Ok(reply) => (
            CheckResult::new(
                "protocol.ehlo",
                target,
                Section::Protocol,
                Status::Fail,
                format!(
                    "{}: no ESMTP, so no STARTTLS, SIZE or 8BITMIME",
                    show(reply)
                ),
                rfc,
            )
            .fix("Enable ESMTP (EHLO) on the server."),
            None,
        ),
        Err(err) => (
            CheckResult::new(
                "protocol.ehlo",
                target,
                Section::Protocol,
                Status::Fail,
                format!("no EHLO reply: {err}"),
                rfc,
            )
            .fix("Make the server answer EHLO."),
            None,
        ),
    }
}

/// Which of the extensions senders look for are announced.
pub fn extensions(target: &str, caps: &Capabilities) -> CheckResult {
    let known = [
        ("PIPELINING", caps.pipelining),
        ("SIZE", caps.size.is_some()),
        ("8BITMIME", caps.eight_bit_mime),
        ("SMTPUTF8", caps.smtputf8),
        ("CHUNKING", caps.chunking),
        ("DSN", caps.dsn),
        ("REQUIRETLS", caps.requiretls),
        ("ENHANCEDSTATUSCODES", caps.enhanced_status_codes),
    ];
    let on: Vec<&str> = known.iter().filter(|k| k.1).map(|k| k.0).collect();
    let off: Vec<&str> = known.iter().filter(|k| !k.1).map(|k| k.0).collect();
    let mut evidence = format!(
        "offered: {}",
        if on.is_empty() {
            "none".into()
        } else {
            on.join(" ")
        }
    );
    if !off.is_empty() {
        evidence.push_str(&format!("; not offered: {}", off.join(" ")));
    }
    if let Some(size) = caps.size.filter(|s| *s > 0) {
        evidence.push_str(&format!("; SIZE limit {size} octets"));
    }
    CheckResult::new(
        "protocol.extensions",
        target,
        Section::Protocol,
        Status::Info,
        evidence,
        "RFC 2920, 1870, 6152, 6531, 3030, 3461, 8689, 2034",
    )
}

/// The EHLO after STARTTLS: it must succeed and must not offer STARTTLS
/// again (RFC 3207 §4.2).
pub fn ehlo_after_tls(
    target: &str,
    reply: Result<&Reply, &ProbeError>,
) -> (CheckResult, Option<Capabilities>) {
    let rfc = "RFC 3207 §4.2";
    match reply {
        Ok(reply) if reply.code() == 250 => {
            let caps = Capabilities::from_reply(reply);
            let result = if caps.starttls {
                CheckResult::new(
                    "protocol.ehlo-after-tls",
                    target,
                    Section::Protocol,
                    Status::Fail,
                    "STARTTLS is offered again inside TLS",
                    rfc,
                )
                .fix("Stop announcing STARTTLS once the session is encrypted.")
            } else {
                CheckResult::new(
                    "protocol.ehlo-after-tls",
                    target,
                    Section::Protocol,
                    Status::Pass,
                    format!("250 {}, no STARTTLS", caps.domain),
                    rfc,
                )
            };
            (result, Some(caps))
        }
        other => (
            CheckResult::new(
                "protocol.ehlo-after-tls",
                target,
                Section::Protocol,
                Status::Fail,
                match other {
                    Ok(reply) => show(reply),
                    Err(err) => err.to_string(),
                },
                rfc,
            )
            .fix("Accept a fresh EHLO after the TLS handshake."),
            None,
        ),
    }
}

/// A simple command that must get a given reply class.
pub fn simple(
    id: &'static str,
    target: &str,
    reply: Result<&Reply, &ProbeError>,
    expect: &[u16],
    rfc: &'static str,
    fix: &str,
) -> CheckResult {
    match reply {
        Ok(reply) if expect.contains(&reply.code()) => CheckResult::new(
            id,
            target,
            Section::Protocol,
            Status::Pass,
            show(reply),
            rfc,
        ),
        Ok(reply) => CheckResult::new(
            id,
            target,
            Section::Protocol,
            if reply.code() / 100 == 2 {
                Status::Fail
            } else {
                Status::Warn
            },
            format!("{} (expected {:?})", show(reply), expect),
            rfc,
        )
        .fix(fix),
        Err(err) => CheckResult::new(
            id,
            target,
            Section::Protocol,
            Status::Fail,
            err.to_string(),
            rfc,
        )
        .fix(fix),
    }
}

/// The replies to the group `MAIL FROM:<>`, `RCPT TO:<postmaster…>`, a
/// nested `MAIL FROM:<>` (503) and `RSET`, sent pipelined when the server
/// offers PIPELINING: the null sender, postmaster, and reply order.
pub fn mail_group(
    out: &mut Vec<CheckResult>,
    target: &str,
    postmaster: &str,
    pipelined: bool,
    submission: bool,
    replies: &[Result<Reply, ProbeError>],
) {
    let get = |i: usize| replies.get(i).and_then(|r| r.as_ref().ok());
    let mail = get(0);
    if submission && let Some(refused) = mail.filter(|r| r.code() == 530) {
        // RFC 6409 §4.3: a submission server may require AUTH first.
        let evidence = format!(
            "MAIL FROM:<> → {}: AUTH comes first on submission (give --user to check further)",
            show(refused)
        );
        for id in ["protocol.null-sender", "protocol.postmaster"] {
            out.push(CheckResult::new(
                id,
                target,
                Section::Protocol,
                Status::Skip,
                evidence.clone(),
                "RFC 6409 §4.3",
            ));
        }
        return;
    }
    match mail {
        Some(r) if r.code() == 250 => out.push(CheckResult::new(
            "protocol.null-sender",
            target,
            Section::Protocol,
            Status::Pass,
            format!("MAIL FROM:<> → {}", show(r)),
            "RFC 5321 §4.5.5, §6.1",
        )),
        _ => {
            let evidence = match replies.first() {
                Some(Ok(r)) => show(r),
                Some(Err(e)) => e.to_string(),
                None => "no reply".into(),
            };
            out.push(
                CheckResult::new(
                    "protocol.null-sender",
                    target,
                    Section::Protocol,
                    Status::Fail,
                    format!("MAIL FROM:<> → {evidence}"),
                    "RFC 5321 §4.5.5, §6.1",
                )
                .fix("Accept the null reverse-path: bounces and DSNs use it."),
            );
            out.push(CheckResult::new(
                "protocol.postmaster",
                target,
                Section::Protocol,
                Status::Skip,
                "MAIL was refused",
                "RFC 5321 §4.5.1",
            ));
            if pipelined {
                out.push(CheckResult::new(
                    "protocol.pipelining",
                    target,
                    Section::Protocol,
                    Status::Skip,
                    "MAIL was refused, so the order cannot be told",
                    "RFC 2920 §3.1",
                ));
            }
            return;
        }
    }
    match replies.get(1) {
        Some(Ok(r)) if r.code() / 100 == 2 => out.push(CheckResult::new(
            "protocol.postmaster",
            target,
            Section::Protocol,
            Status::Pass,
            format!("RCPT TO:{postmaster} → {}", show(r)),
            "RFC 5321 §4.5.1",
        )),
        Some(Ok(r)) => out.push(
            CheckResult::new(
                "protocol.postmaster",
                target,
                Section::Protocol,
                if r.code() / 100 == 4 {
                    Status::Warn
                } else {
                    Status::Fail
                },
                format!("RCPT TO:{postmaster} → {}", show(r)),
                "RFC 5321 §4.5.1",
            )
            .fix("Accept mail for postmaster (RFC 5321 requires it), also from the null sender."),
        ),
        other => out.push(
            CheckResult::new(
                "protocol.postmaster",
                target,
                Section::Protocol,
                Status::Fail,
                format!(
                    "RCPT TO:{postmaster} → {}",
                    match other {
                        Some(Err(e)) => e.to_string(),
                        _ => "no reply".into(),
                    }
                ),
                "RFC 5321 §4.5.1",
            )
            .fix("Accept mail for postmaster."),
        ),
    }
    if pipelined {
        let codes: Vec<String> = replies
            .iter()
            .map(|r| match r {
                Ok(r) => r.code().to_string(),
                Err(e) => format!("({e})"),
            })
            .collect();
        let in_order = replies.len() == 4
            && get(2).is_some_and(|r| r.code() / 100 == 5)
            && get(3).is_some_and(|r| r.code() == 250);
        out.push(
            CheckResult::new(
                "protocol.pipelining",
                target,
                Section::Protocol,
                if in_order { Status::Pass } else { Status::Fail },
                format!(
                    "MAIL, RCPT, nested MAIL, RSET in one write → {}",
                    codes.join(", ")
                ),
                "RFC 2920 §3.1",
            )
            .fix("Answer pipelined commands one reply each, in the order sent."),
        );
    }
}

/// `MAIL FROM:<> SIZE=limit+1` must be refused with 552 (RFC 1870 §6.1).
pub fn size_over_limit(
    target: &str,
    limit: u64,
    reply: Result<&Reply, &ProbeError>,
) -> CheckResult {
    let rfc = "RFC 1870 §6.1";
    let id = "protocol.size-limit";
    match reply {
        Ok(r) if r.code() == 552 => CheckResult::new(
            id,
            target,
            Section::Protocol,
            Status::Pass,
            format!("SIZE={} → {}", limit + 1, show(r)),
            rfc,
        ),
        Ok(r) if r.code() / 100 == 2 => CheckResult::new(
            id,
            target,
            Section::Protocol,
            Status::Fail,
            format!("SIZE={} over the announced {limit} → {}", limit + 1, show(r)),
            rfc,
        )
        .fix("Refuse MAIL whose SIZE exceeds the announced limit with 552, before the sender transfers it."),
        Ok(r) => CheckResult::new(
            id,
            target,
            Section::Protocol,
            Status::Warn,
            format!("SIZE={} → {} (RFC 1870 asks for 552)", limit + 1, show(r)),
            rfc,
        )
        .fix("Refuse a declared size over the limit with 552 so senders bounce instead of retrying."),
        Err(e) => CheckResult::new(id, target, Section::Protocol, Status::Fail, e.to_string(), rfc)
            .fix("Answer MAIL with a SIZE parameter."),
    }
}

/// QUIT: 221, then the server closes (RFC 5321 §4.1.1.10).
pub fn quit(target: &str, reply: Result<&Reply, &ProbeError>, closed: bool) -> CheckResult {
    let rfc = "RFC 5321 §4.1.1.10";
    match reply {
        Ok(r) if r.code() == 221 && closed => CheckResult::new(
            "protocol.quit",
            target,
            Section::Protocol,
            Status::Pass,
            format!("{} and the connection closed", show(r)),
            rfc,
        ),
        Ok(r) if r.code() == 221 => CheckResult::new(
            "protocol.quit",
            target,
            Section::Protocol,
            Status::Warn,
            format!("{} but the connection stayed open", show(r)),
            rfc,
        )
        .fix("Close the connection after replying 221 to QUIT."),
        other => CheckResult::new(
            "protocol.quit",
            target,
            Section::Protocol,
            Status::Warn,
            match other {
                Ok(r) => show(r),
                Err(e) => e.to_string(),
            },
            rfc,
        )
        .fix("Reply 221 to QUIT, then close."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_keyword_grammar() {
        assert!(ehlo_line_ok("SIZE 1000"));
        assert!(ehlo_line_ok("AUTH PLAIN LOGIN"));
        assert!(ehlo_line_ok("X-LINK2STATE"));
        assert!(!ehlo_line_ok("-BAD"));
        assert!(!ehlo_line_ok(""));
        assert!(!ehlo_line_ok("SIZE\u{7}"));
    }

    #[test]
    fn pipelined_group_order() {
        let ok = |code| Ok(Reply::plain(code, "x"));
        let mut out = Vec::new();
        mail_group(
            &mut out,
            "t",
            "<postmaster>",
            true,
            false,
            &[ok(250), ok(250), ok(503), ok(250)],
        );
        assert!(out.iter().all(|r| r.status == Status::Pass), "{out:?}");
        let mut out = Vec::new();
        mail_group(
            &mut out,
            "t",
            "<postmaster>",
            true,
            false,
            &[ok(250), ok(550), ok(250), ok(503)],
        );
        let order = out.iter().find(|r| r.id == "protocol.pipelining").unwrap();
        assert_eq!(order.status, Status::Fail);
        let postmaster = out.iter().find(|r| r.id == "protocol.postmaster").unwrap();
        assert_eq!(postmaster.status, Status::Fail);
        // A submission server that wants AUTH first is not at fault.
        let mut out = Vec::new();
        mail_group(&mut out, "t", "<postmaster>", false, true, &[ok(530)]);
        assert!(out.iter().all(|r| r.status == Status::Skip), "{out:?}");
        let mut out = Vec::new();
        mail_group(&mut out, "t", "<postmaster>", false, false, &[ok(530)]);
        assert_eq!(out[0].status, Status::Fail);
    }

    #[test]
    fn size_over_limit_wants_552() {
        assert_eq!(
            size_over_limit("t", 10, Ok(&Reply::plain(552, "too big"))).status,
            Status::Pass
        );
        assert_eq!(
            size_over_limit("t", 10, Ok(&Reply::plain(250, "ok"))).status,
            Status::Fail
        );
        assert_eq!(
            size_over_limit("t", 10, Ok(&Reply::plain(550, "no"))).status,
            Status::Warn
        );
    }
}
