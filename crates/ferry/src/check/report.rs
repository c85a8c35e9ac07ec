//! Check results and how they are shown: a table grouped by section for
//! people, one JSON object for programs, and the exit status.

use std::fmt::Write as _;

use serde_json::{Value, json};

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// The server or record does what the RFC asks.
    Pass,
    /// Mail still flows, but something is weaker or riskier than it should be.
    Warn,
    /// Mail fails, or the server is unsafe.
    Fail,
    /// A fact worth knowing, with no verdict.
    Info,
    /// The check could not run (an earlier step failed, or it does not apply).
    Skip,
}

impl Status {
    /// The word shown in the table and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Info => "info",
            Status::Skip => "skip",
        }
    }
}

/// The sections of the report, in the order they are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    /// MX, SPF, DMARC, DKIM, MTA-STS, TLS-RPT, DANE.
    Dns,
    /// TCP reachability and the greeting.
    Connection,
    /// STARTTLS or implicit TLS, the certificate, protocol versions.
    Tls,
    /// EHLO, extensions and command behaviour.
    Protocol,
    /// Injection, relaying, user enumeration, AUTH exposure, line endings.
    Security,
}

impl Section {
    /// The heading shown in the table and the `section` field in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Dns => "dns",
            Section::Connection => "connection",
            Section::Tls => "tls",
            Section::Protocol => "protocol",
            Section::Security => "security",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// A stable identifier, such as `tls.starttls` or `dns.spf.lookups`.
    pub id: &'static str,
    /// What was checked: a domain, `host:port` or `address:port`.
    pub target: String,
    /// Where the result is shown.
    pub section: Section,
    /// The verdict.
    pub status: Status,
    /// The reply, record or measurement that decided it.
    pub evidence: String,
    /// The RFC (and section) the rule comes from.
    pub rfc: &'static str,
    /// For warn and fail: one sentence saying how to fix it.
    pub fix: Option<String>,
}

impl CheckResult {
    /// A result without a fix.
    pub fn new(
        id: &'static str,
        target: &str,
        section: Section,
        status: Status,
        evidence: impl Into<String>,
        rfc: &'static str,
    ) -> Self {
        CheckResult {
            id,
            target: target.to_owned(),
            section,
            status,
            evidence: evidence.into(),
            rfc,
            fix: None,
        }
    }

    /// The same result with a fix; it is kept only for warn and fail.
    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        if matches!(self.status, Status::Warn | Status::Fail) {
            self.fix = Some(fix.into());
        }
        self
    }

    /// The result as a JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "target": self.target,
            "section": self.section.as_str(),
            "status": self.status.as_str(),
            "evidence": self.evidence,
            "rfc": self.rfc,
            "fix": self.fix,
        })
    }
}

/// All results of one run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// What the user asked to check.
    pub target: String,
    /// The results, in the order the checks ran.
    pub results: Vec<CheckResult>,
    /// The conversations, one entry per connection, when `--transcript`
    /// was given: the connection's label and its `C:`/`S:` lines.
    pub transcripts: Vec<(String, Vec<String>)>,
}

impl Report {
    /// An empty report for `target`.
    pub fn new(target: &str) -> Self {
        Report {
            target: target.to_owned(),
            ..Report::default()
        }
    }

    /// Adds a result.
    pub fn push(&mut self, result: CheckResult) {
        self.results.push(result);
    }

    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.results.iter().any(|r| r.status == Status::Fail)
    }

    /// The exit status: 0 when nothing failed, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.failed())
    }

    /// The first result with this id (for tests and callers that act on one
    /// verdict).
    pub fn find(&self, id: &str) -> Option<&CheckResult> {
        self.results.iter().find(|r| r.id == id)
    }

    /// How many results have each status, in the order pass, warn, fail,
    /// info, skip.
    pub fn counts(&self) -> [usize; 5] {
        let mut counts = [0; 5];
        for r in &self.results {
            counts[r.status as usize] += 1;
        }
        counts
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let [pass, warn, fail, info, skip] = self.counts();
        let mut value = json!({
            "target": self.target,
            "results": self.results.iter().map(CheckResult::to_json).collect::<Vec<_>>(),
            "summary": {"pass": pass, "warn": warn, "fail": fail, "info": info, "skip": skip},
            "failed": self.failed(),
        });
        if !self.transcripts.is_empty() {
            value["transcripts"] = self
                .transcripts
                .iter()
                .map(|(label, lines)| json!({"connection": label, "lines": lines}))
                .collect();
        }
        value
    }

    /// The report as a table for people: one block per section, one line
    /// per check, the fix indented under each warn and fail.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mut sections: Vec<Section> = self.results.iter().map(|r| r.section).collect();
        sections.sort();
        sections.dedup();
        let id_width = self.results.iter().map(|r| r.id.len()).max().unwrap_or(0);
        for section in sections {
            let _ = writeln!(out, "{}", section.as_str().to_uppercase());
            let mut target = "";
            for r in self.results.iter().filter(|r| r.section == section) {
                if r.target != target {
                    target = &r.target;
                    let _ = writeln!(out, "  {target}");
                }
                let _ = writeln!(
                    out,
                    "    {:<4}  {:<id_width$}  {}  [{}]",
                    r.status.as_str(),
                    r.id,
                    one_line(&r.evidence),
                    r.rfc,
                );
                if let Some(fix) = &r.fix {
                    let _ = writeln!(out, "          fix: {fix}");
                }
            }
        }
        let [pass, warn, fail, info, skip] = self.counts();
        let _ = writeln!(
            out,
            "{pass} pass, {warn} warn, {fail} fail, {info} info, {skip} skip"
        );
        for (label, lines) in &self.transcripts {
            let _ = writeln!(out, "\nTRANSCRIPT {label}");
            for line in lines {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

/// Evidence on one line: control characters shown as escapes, at most 160
/// characters.
pub fn one_line(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
        if out.chars().count() >= 160 {
            out.push('…');
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut report = Report::new("mx.example.com:25");
        report.push(CheckResult::new(
            "connection.tcp",
            "127.0.0.1:25",
            Section::Connection,
            Status::Pass,
            "connected in 1 ms",
            "RFC 5321 §3.1",
        ));
        report.push(
            CheckResult::new(
                "tls.starttls",
                "127.0.0.1:25",
                Section::Tls,
                Status::Fail,
                "EHLO reply has no STARTTLS",
                "RFC 3207 §4",
            )
            .fix("Configure a certificate and enable STARTTLS."),
        );
        report.push(
            CheckResult::new(
                "protocol.noop",
                "127.0.0.1:25",
                Section::Protocol,
                Status::Pass,
                "250 2.0.0 OK",
                "RFC 5321 §4.1.1.9",
            )
            .fix("never kept for a pass"),
        );
        report
    }

    #[test]
    fn exit_code_follows_failures() {
        let mut report = sample();
        assert_eq!(report.exit_code(), 1);
        report.results.retain(|r| r.status != Status::Fail);
        assert_eq!(report.exit_code(), 0);
    }

    #[test]
    fn fix_is_kept_only_for_warn_and_fail() {
        let report = sample();
        assert!(report.find("tls.starttls").unwrap().fix.is_some());
        assert!(report.find("protocol.noop").unwrap().fix.is_none());
    }

    #[test]
    fn table_groups_by_section_in_order() {
        let table = sample().to_table();
        let connection = table.find("CONNECTION").unwrap();
        let tls = table.find("TLS").unwrap();
        let protocol = table.find("PROTOCOL").unwrap();
        assert!(connection < tls && tls < protocol, "{table}");
        assert!(table.contains("fail  tls.starttls"), "{table}");
        assert!(table.contains("fix: Configure a certificate"), "{table}");
        assert!(table.contains("2 pass, 0 warn, 1 fail"), "{table}");
    }

    #[test]
    fn json_is_one_object_with_every_field() {
        let value = sample().to_json();
        assert_eq!(value["target"], "mx.example.com:25");
        assert_eq!(value["failed"], true);
        let first = &value["results"][1];
        for key in [
            "id", "target", "section", "status", "evidence", "rfc", "fix",
        ] {
            assert!(first.get(key).is_some(), "{key} missing in {first}");
        }
        assert_eq!(first["status"], "fail");
        assert_eq!(value["summary"]["fail"], 1);
    }

    #[test]
    fn evidence_is_one_line() {
        assert_eq!(one_line("250 ok\r\nx"), "250 ok\\r\\nx");
        assert!(one_line(&"a".repeat(500)).chars().count() <= 161);
    }
}
