//! The RFC 5321 §4.4 `Received:` trace header.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::session::Envelope;

/// Builds a `Received:` header (RFC 5321 §4.4, RFC 5322 §3.6.7).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use smtp_server::ReceivedHeader;
/// let header = ReceivedHeader::new("mx.example.net")
///     .from("client.example.org", Some("192.0.2.1".parse().unwrap()))
///     .protocol("ESMTPS")
///     .id("1A2B")
///     .recipient("user@example.net")
///     .date(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
///     .to_string();
/// assert_eq!(
///     header,
///     "Received: from client.example.org ([192.0.2.1])\r\n\tby mx.example.net with ESMTPS id 1A2B\r\n\tfor <user@example.net>; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedHeader {
    by: String,
    helo: Option<String>,
    ip: Option<IpAddr>,
    protocol: String,
    id: Option<String>,
    recipient: Option<String>,
    date: SystemTime,
}

impl ReceivedHeader {
    /// A header for a message received by `by` (this server's name), now.
    pub fn new(by: impl Into<String>) -> Self {
        Self {
            by: by.into(),
            helo: None,
            ip: None,
            protocol: "ESMTP".to_owned(),
            id: None,
            recipient: None,
            date: SystemTime::now(),
        }
    }

    /// A header filled from a transaction: the `HELO` name, client address,
    /// protocol, session id, and the recipient when there is exactly one
    /// (naming more would disclose Bcc recipients).
    pub fn for_envelope(by: impl Into<String>, envelope: &Envelope) -> Self {
        let mut header = Self::new(by)
            .from(
                envelope.helo.clone(),
                envelope.client_addr.map(|addr| addr.ip()),
            )
            .protocol(envelope.protocol())
            .id(envelope.session_id.clone());
        if let [only] = envelope.recipients.as_slice() {
            header = header.recipient(only.address.as_str());
        }
        header
    }

    /// The client's `HELO` name and address (the `from` clause).
    pub fn from(mut self, helo: impl Into<String>, ip: Option<IpAddr>) -> Self {
        self.helo = Some(helo.into());
        self.ip = ip;
        self
    }

    /// The `with` protocol (RFC 3848 names: `ESMTP`, `ESMTPSA`, `LMTP`...).
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocol = protocol.into();
        self
    }

    /// The `id` clause.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The `for` clause: one recipient address, without angle brackets.
    pub fn recipient(mut self, address: impl Into<String>) -> Self {
        self.recipient = Some(address.into());
        self
    }

    /// The date stamp (default: when the header was created).
    pub fn date(mut self, date: SystemTime) -> Self {
        self.date = date;
        self
    }
}

/// Keeps peer-supplied text from breaking the header: control characters
/// and characters that would end a comment or clause become `_`.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || c == '(' || c == ')' || c == ';' || c == ' ' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

impl std::fmt::Display for ReceivedHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Received:")?;
        if let Some(helo) = &self.helo {
            write!(f, " from {}", clean(helo))?;
            match self.ip {
                Some(IpAddr::V4(ip)) => write!(f, " ([{ip}])")?,
                Some(IpAddr::V6(ip)) => write!(f, " ([IPv6:{ip}])")?,
                None => {}
            }
            f.write_str("\r\n\t")?;
        } else {
            f.write_str(" ")?;
        }
        write!(f, "by {} with {}", clean(&self.by), clean(&self.protocol))?;
        if let Some(id) = &self.id {
            write!(f, " id {}", clean(id))?;
        }
        if let Some(recipient) = &self.recipient {
            let recipient: String = recipient
                .chars()
                .map(|c| if c.is_control() || c == '>' { '_' } else { c })
                .collect();
            write!(f, "\r\n\tfor <{recipient}>")?;
        }
        write!(f, "; {}\r\n", rfc5322_date(self.date))
    }
}

/// Formats `time` as an RFC 5322 §3.3 date in UTC.
pub(crate) fn rfc5322_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
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

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        let at = |secs| rfc5322_date(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(at(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 +0000");
    }

    #[test]
    fn hostile_helo_cannot_inject() {
        let header = ReceivedHeader::new("mx")
            .from("evil\r\nX-Injected: 1 (", Some("::1".parse().unwrap()))
            .date(UNIX_EPOCH)
            .to_string();
        assert_eq!(
            header,
            "Received: from evil__X-Injected:_1__ ([IPv6:::1])\r\n\tby mx with ESMTP; Thu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
