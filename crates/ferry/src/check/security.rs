//! Security checks that are safe against any server and never send DATA:
//! STARTTLS command injection (CVE-2011-0411), open relay, VRFY/EXPN,
//! AUTH before TLS, bare LF in a command. With `--intrusive` also the
//! SMTP smuggling end-of-data variants (CVE-2023-51764 family).

use smtp_proto::Reply;
use smtp_proto::ehlo::Capabilities;

use super::conversation::{ProbeError, show};
use super::report::{CheckResult, Section, Status, one_line};

/// The SMTP smuggling variants: each is a line end followed by a dot and
/// a line end in which a CR or LF stands alone. Only `<CRLF>.<CRLF>` ends
/// DATA (RFC 5321 §4.1.1.4); a server that ends the message at any of
/// these lets a sender smuggle a second message past the first one's
/// checks.
pub const SMUGGLING_VARIANTS: [(&str, &[u8]); 5] = [
    ("LF.LF", b"\n.\n"),
    ("LF.CRLF", b"\n.\r\n"),
    ("CRLF.LF", b"\r\n.\n"),
    ("CR.CRLF", b"\r.\r\n"),
    ("CRLF.CR", b"\r\n.\r"),
];

/// Whether PLAIN or LOGIN (which send the password as it is) are offered
/// before TLS (RFC 4954 §4, RFC 8314 §3).
pub fn auth_before_tls(target: &str, caps: &Capabilities, tls: bool) -> CheckResult {
    let rfc = "RFC 4954 §4, RFC 8314 §3";
    if tls {
        return CheckResult::new(
            "security.auth-plaintext",
            target,
            Section::Security,
            Status::Pass,
            "the session is encrypted from the first byte",
            rfc,
        );
    }
    let plain: Vec<&str> = caps
        .auth
        .iter()
        .map(String::as_str)
        .filter(|m| matches!(*m, "PLAIN" | "LOGIN"))
        .collect();
    if plain.is_empty() {
        CheckResult::new(
            "security.auth-plaintext",
            target,
            Section::Security,
            Status::Pass,
            if caps.auth.is_empty() {
                "no AUTH before TLS".to_owned()
            } else {
                format!("before TLS only AUTH {}", caps.auth.join(" "))
            },
            rfc,
        )
    } else {
        CheckResult::new(
            "security.auth-plaintext",
            target,
            Section::Security,
            Status::Fail,
            format!(
                "AUTH {} offered before TLS: passwords can be read on the wire",
                plain.join(" ")
            ),
            rfc,
        )
        .fix("Offer AUTH only after STARTTLS (Postfix: smtpd_tls_auth_only = yes).")
    }
}

/// VRFY or EXPN: a 250/251 confirms mailboxes (RFC 5321 §3.5.3, §7.3).
pub fn enumeration(
    id: &'static str,
    target: &str,
    command: &str,
    reply: Result<&Reply, &ProbeError>,
) -> CheckResult {
    let rfc = "RFC 5321 §3.5.3, §7.3";
    match reply {
        Ok(r) if matches!(r.code(), 250 | 251) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Warn,
            format!("{command} → {}: it confirms mailboxes to anyone", show(r)),
            rfc,
        )
        .fix(format!(
            "Answer {} with 252 (or disable it) so addresses cannot be harvested.",
            command.split(' ').next().unwrap_or(command)
        )),
        Ok(r) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Pass,
            format!("{command} → {}", show(r)),
            rfc,
        ),
        Err(e) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Info,
            format!("{command}: {e}"),
            rfc,
        ),
    }
}

/// The reserved domains (RFC 2606) used as a foreign recipient and
/// sender: the first two that are not the checked domain or host.
pub fn foreign_domains(own: &[&str]) -> (&'static str, &'static str) {
    let candidates = ["example.net", "example.org", "example.com"];
    let mut free = candidates.iter().copied().filter(|c| {
        own.iter().all(|o| {
            let o = o.trim_end_matches('.').to_ascii_lowercase();
            o != *c && !o.ends_with(&format!(".{c}"))
        })
    });
    let first = free.next().unwrap_or("example.net");
    let second = free.next().unwrap_or("example.org");
    (first, second)
}

/// RCPT to a foreign domain accepted without AUTH: possibly an open
/// relay. Nothing is ever sent, so acceptance is reported as possible
/// only (a catch-all that stores everything answers the same).
pub fn open_relay(
    target: &str,
    rcpt: &str,
    mail: Result<&Reply, &ProbeError>,
    reply: Option<Result<&Reply, &ProbeError>>,
) -> CheckResult {
    let id = "security.open-relay";
    let rfc = "RFC 5321 §3.6.2, §7.1";
    let Ok(mail) = mail else {
        return CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Skip,
            "MAIL got no reply",
            rfc,
        );
    };
    if mail.code() / 100 != 2 {
        return CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Pass,
            format!("MAIL from a foreign sender refused: {}", show(mail)),
            rfc,
        );
    }
    match reply {
        Some(Ok(r)) if r.code() / 100 == 2 => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Warn,
            format!(
                "RCPT TO:<{rcpt}> without AUTH → {}: possibly an open relay (no message was sent, so \
                 delivery was not proved; a catch-all test server answers the same)",
                show(r)
            ),
            rfc,
        )
        .fix("Accept RCPT only for your own domains unless the client authenticated or is in your relay networks."),
        Some(Ok(r)) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Pass,
            format!("RCPT TO:<{rcpt}> → {}", show(r)),
            rfc,
        ),
        Some(Err(e)) => CheckResult::new(id, target, Section::Security, Status::Info, format!("RCPT: {e}"), rfc),
        None => CheckResult::new(id, target, Section::Security, Status::Skip, "RCPT not sent", rfc),
    }
}

/// How the server treated `RSET<LF>NOOP<CRLF>`: one malformed line (right)
/// or two commands (it ends lines at a bare LF, as SMTP-smuggling-prone
/// servers do).
pub fn bare_lf(
    target: &str,
    first: Result<&Reply, &ProbeError>,
    second: Option<&Reply>,
) -> CheckResult {
    let id = "security.bare-lf";
    let rfc = "RFC 5321 §2.3.8, §4.1.1.4";
    match (first, second) {
        (Ok(a), Some(b)) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Warn,
            format!(
                "RSET<LF>NOOP<CRLF> → two replies ({}, {}): a bare LF ends a command line",
                show(a),
                show(b)
            ),
            rfc,
        )
        .fix(
            "Accept only CRLF as a line end (in commands and in DATA), or refuse bare LF with 500; \
              servers that end lines at a bare LF are the ones SMTP smuggling exploits.",
        ),
        (Ok(a), None) if a.code() / 100 == 5 => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Pass,
            format!("RSET<LF>NOOP<CRLF> → one reply, {}", show(a)),
            rfc,
        ),
        (Ok(a), None) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Info,
            format!(
                "RSET<LF>NOOP<CRLF> → one reply, {}: the LF was taken as part of the line",
                show(a)
            ),
            rfc,
        ),
        (Err(ProbeError::Closed), _) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Pass,
            "RSET<LF>NOOP<CRLF> → the server closed the connection",
            rfc,
        ),
        (Err(e), _) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Info,
            e.to_string(),
            rfc,
        ),
    }
}

/// The STARTTLS injection probe: `STARTTLS<CRLF>RSET<CRLF>` in one write,
/// then the handshake. A reply to RSET inside TLS means the server kept
/// the plaintext bytes across the handshake (CVE-2011-0411, RFC 3207 §4.2).
pub fn injection(target: &str, outcome: Result<InjectionOutcome, String>) -> CheckResult {
    let id = "security.starttls-injection";
    let rfc = "RFC 3207 §4.2, CVE-2011-0411";
    match outcome {
        Ok(InjectionOutcome::AnsweredInsideTls(bytes)) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Fail,
            format!("RSET sent before the handshake was answered inside TLS: {}", one_line(&bytes)),
            rfc,
        )
        .fix("Discard any input buffered before the TLS handshake (update the MTA: this is CVE-2011-0411)."),
        Ok(InjectionOutcome::AnsweredInPlaintext(bytes)) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Warn,
            format!("RSET sent behind STARTTLS was answered before the handshake: {}", one_line(&bytes)),
            rfc,
        )
        .fix("Do not process commands pipelined behind STARTTLS."),
        Ok(InjectionOutcome::Discarded) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Pass,
            "RSET sent behind STARTTLS was discarded",
            rfc,
        ),
        Ok(InjectionOutcome::Closed) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Pass,
            "the server closed the connection on input behind STARTTLS",
            rfc,
        ),
        Err(why) => CheckResult::new(id, target, Section::Security, Status::Skip, why, rfc),
    }
}

/// What the STARTTLS injection probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InjectionOutcome {
    /// A reply came inside TLS before the client said anything.
    AnsweredInsideTls(String),
    /// The server answered the injected command in plaintext.
    AnsweredInPlaintext(String),
    /// Nothing came, and the session still works.
    Discarded,
    /// The server closed the connection (a safe reaction).
    Closed,
}

/// One smuggling variant's verdict: a 2xx before the real end of data
/// means the server ended the message at the variant.
pub fn smuggling(target: &str, name: &str, reply: Result<Option<&Reply>, String>) -> CheckResult {
    let id = "security.smuggling";
    let rfc = "RFC 5321 §4.1.1.4, CVE-2023-51764";
    match reply {
        Ok(Some(r)) if r.code() / 100 == 2 => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Fail,
            format!(
                "<{name}> ended DATA: {} (the probe message was accepted)",
                show(r)
            ),
            rfc,
        )
        .fix(
            "End DATA only at <CRLF>.<CRLF> and refuse bare CR or LF in messages (update the MTA).",
        ),
        Ok(Some(r)) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Pass,
            format!("<{name}> refused at once: {}", show(r)),
            rfc,
        ),
        Ok(None) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Pass,
            format!("<{name}> did not end DATA (aborted by disconnecting)"),
            rfc,
        ),
        Err(why) => CheckResult::new(
            id,
            target,
            Section::Security,
            Status::Skip,
            format!("<{name}>: {why}"),
            rfc,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_domains_avoid_the_checked_one() {
        assert_eq!(
            foreign_domains(&["mail.example.net"]),
            ("example.org", "example.com")
        );
        assert_eq!(
            foreign_domains(&["example.org", "example.net"]),
            ("example.com", "example.org")
        );
        assert_eq!(foreign_domains(&[]), ("example.net", "example.org"));
    }

    #[test]
    fn auth_before_tls_flags_plain_and_login_only() {
        let mut caps = Capabilities::default();
        assert_eq!(auth_before_tls("t", &caps, false).status, Status::Pass);
        caps.auth = vec!["CRAM-MD5".into()];
        assert_eq!(auth_before_tls("t", &caps, false).status, Status::Pass);
        caps.auth.push("PLAIN".into());
        assert_eq!(auth_before_tls("t", &caps, false).status, Status::Fail);
        assert_eq!(auth_before_tls("t", &caps, true).status, Status::Pass);
    }

    #[test]
    fn bare_lf_verdicts() {
        let ok = Reply::plain(250, "ok");
        let bad = Reply::plain(500, "bad");
        assert_eq!(bare_lf("t", Ok(&ok), Some(&ok)).status, Status::Warn);
        assert_eq!(bare_lf("t", Ok(&bad), None).status, Status::Pass);
        assert_eq!(
            bare_lf("t", Err(&ProbeError::Closed), None).status,
            Status::Pass
        );
    }
}
