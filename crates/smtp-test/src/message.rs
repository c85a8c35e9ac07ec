//! A received message: its envelope, the bytes as received, and what
//! mail-parser made of them.

use std::fmt;
use std::sync::Arc;

use mail_parser::{MessageParser, MimeHeaders};
use smtp_server::{Envelope, TlsInfo};

/// One attachment of a [`ReceivedMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    filename: Option<String>,
    content_type: String,
    bytes: Vec<u8>,
}

impl Attachment {
    /// The file name from `Content-Disposition` or `Content-Type`.
    pub fn filename(&self) -> Option<&str> {
        self.filename.as_deref()
    }

    /// The media type, such as `application/pdf`.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The decoded content.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[derive(Debug)]
struct Parsed {
    headers: Vec<(String, String)>,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    attachments: Vec<Attachment>,
}

fn parse(raw: &[u8]) -> Parsed {
    let Some(message) = MessageParser::default().parse(raw) else {
        return Parsed {
            headers: Vec::new(),
            subject: None,
            text: None,
            html: None,
            attachments: Vec::new(),
        };
    };
    let headers = message
        .headers_raw()
        .map(|(name, value)| (name.to_owned(), unfold(value)))
        .collect();
    let text = message
        .text_bodies()
        .find(|part| !part.is_text_html())
        .and_then(|part| part.text_contents())
        .map(str::to_owned);
    let html = message
        .html_bodies()
        .find(|part| part.is_text_html())
        .and_then(|part| part.text_contents())
        .map(str::to_owned);
    let attachments = message
        .attachments()
        .map(|part| Attachment {
            filename: part.attachment_name().map(str::to_owned),
            content_type: part.content_type().map_or_else(
                || "application/octet-stream".to_owned(),
                |ct| match ct.subtype() {
                    Some(subtype) => format!("{}/{subtype}", ct.ctype()),
                    None => ct.ctype().to_owned(),
                },
            ),
            bytes: part.contents().to_vec(),
        })
        .collect();
    Parsed {
        headers,
        subject: message.subject().map(str::to_owned),
        text,
        html,
        attachments,
    }
}

/// A header value without folding and without the space after the colon.
fn unfold(value: &str) -> String {
    value
        .split("\r\n")
        .flat_map(|line| line.split('\n'))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug)]
struct Inner {
    envelope: Envelope,
    raw: Vec<u8>,
    parsed: Parsed,
}

/// A message the [`TestServer`](crate::TestServer) accepted. Cheap to
/// clone.
///
/// The envelope is what the client said in `MAIL` and `RCPT`; the headers
/// and bodies are what mail-parser found in the content (a message that is
/// not MIME at all still has its [`raw`](Self::raw) bytes).
#[derive(Clone)]
pub struct ReceivedMessage {
    inner: Arc<Inner>,
}

impl ReceivedMessage {
    /// A message from its envelope and the bytes as received.
    pub fn new(envelope: Envelope, raw: Vec<u8>) -> Self {
        let parsed = parse(&raw);
        Self {
            inner: Arc::new(Inner {
                envelope,
                raw,
                parsed,
            }),
        }
    }

    /// The whole envelope: `MAIL` parameters, recipients with their
    /// parameters, TLS, identity, HELO name, client address.
    pub fn envelope(&self) -> &Envelope {
        &self.inner.envelope
    }

    /// The reverse-path; `None` for the null path `<>`.
    pub fn from(&self) -> Option<&str> {
        self.inner.envelope.from.as_ref().map(|a| a.as_str())
    }

    /// The envelope recipients, in the order they were accepted.
    pub fn recipients(&self) -> Vec<&str> {
        self.inner
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect()
    }

    /// Whether `address` is an envelope recipient (case-insensitive).
    pub fn to(&self, address: &str) -> bool {
        self.recipients()
            .iter()
            .any(|r| r.eq_ignore_ascii_case(address))
    }

    /// TLS details when the message came over TLS.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.inner.envelope.tls.as_ref()
    }

    /// The authenticated user name, if the client authenticated.
    pub fn authenticated_as(&self) -> Option<&str> {
        self.inner
            .envelope
            .identity
            .as_ref()
            .map(|id| id.name.as_str())
    }

    /// The message as received: dot-unstuffed, with its CRLFs.
    pub fn raw(&self) -> &[u8] {
        &self.inner.raw
    }

    /// Every header field, in order, with folding removed.
    pub fn headers(&self) -> &[(String, String)] {
        &self.inner.parsed.headers
    }

    /// The first header field called `name` (case-insensitive), unfolded
    /// but not decoded.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner
            .parsed
            .headers
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The decoded `Subject`.
    pub fn subject(&self) -> Option<&str> {
        self.inner.parsed.subject.as_deref()
    }

    /// The first `text/plain` body, decoded.
    pub fn text(&self) -> Option<&str> {
        self.inner.parsed.text.as_deref()
    }

    /// The first `text/html` body, decoded.
    pub fn html(&self) -> Option<&str> {
        self.inner.parsed.html.as_deref()
    }

    /// The attachments, in order.
    pub fn attachments(&self) -> &[Attachment] {
        &self.inner.parsed.attachments
    }

    /// Every `http` and `https` link in the text and HTML bodies, in order,
    /// without duplicates. HTML entities `&amp;` in links are decoded.
    ///
    /// ```
    /// # use smtp_test::ReceivedMessage;
    /// # let msg = ReceivedMessage::new(Default::default(),
    /// #     b"Subject: hi\r\n\r\nConfirm at <https://app.test/confirm?t=abc&u=1>.\r\n".to_vec());
    /// assert_eq!(msg.links(), ["https://app.test/confirm?t=abc&u=1"]);
    /// ```
    pub fn links(&self) -> Vec<String> {
        let mut links: Vec<String> = Vec::new();
        for body in [self.text(), self.html()].into_iter().flatten() {
            for link in find_links(body) {
                if !links.contains(&link) {
                    links.push(link);
                }
            }
        }
        links
    }

    /// The first run of 4 to 8 digits standing on its own (not part of a
    /// longer word or number) in the text body, else in the HTML body with
    /// its tags removed: the one-time code of a sign-in mail.
    ///
    /// ```
    /// # use smtp_test::ReceivedMessage;
    /// # let msg = ReceivedMessage::new(Default::default(),
    /// #     b"Subject: hi\r\n\r\nOrder 12 of 2026-12: your code is 482913.\r\n".to_vec());
    /// assert_eq!(msg.one_time_code().as_deref(), Some("482913"));
    /// ```
    pub fn one_time_code(&self) -> Option<String> {
        self.code_of_length(4, 8)
    }

    /// The first run of `min` to `max` digits standing on its own, as in
    /// [`one_time_code`](Self::one_time_code).
    pub fn code_of_length(&self, min: usize, max: usize) -> Option<String> {
        if let Some(code) = self.text().and_then(|text| find_code(text, min, max)) {
            return Some(code);
        }
        self.html()
            .and_then(|html| find_code(&strip_tags(html), min, max))
    }
}

impl fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedMessage")
            .field("from", &self.from())
            .field("recipients", &self.recipients())
            .field("subject", &self.subject())
            .field("octets", &self.raw().len())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ReceivedMessage {
    /// One line: sender, recipients, subject, size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "from <{}> to {} subject {:?} ({} octets)",
            self.from().unwrap_or_default(),
            self.recipients()
                .iter()
                .map(|r| format!("<{r}>"))
                .collect::<Vec<_>>()
                .join(", "),
            self.subject().unwrap_or_default(),
            self.raw().len()
        )
    }
}

/// Characters that end a URL in running text or markup.
fn ends_link(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')' | ']' | '}')
}

fn find_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("http") {
        let candidate = &rest[start..];
        let scheme = if candidate.starts_with("https://") {
            8
        } else if candidate.starts_with("http://") {
            7
        } else {
            rest = &rest[start + 4..];
            continue;
        };
        let end = candidate.find(ends_link).unwrap_or(candidate.len());
        let link = candidate[..end].trim_end_matches(['.', ',', ';', ':', '!', '?']);
        if link.len() > scheme {
            links.push(link.replace("&amp;", "&"));
        }
        rest = &candidate[end.max(scheme)..];
    }
    links
}

fn find_code(text: &str, min: usize, max: usize) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let before = start.checked_sub(1).map(|b| chars[b]);
            let after = chars.get(i).copied();
            let joined = |c: Option<char>| {
                c.is_some_and(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '/'))
            };
            // "1.5" and "3,000" are numbers, not codes; a code may end a
            // sentence.
            let number_after = after == Some('.') || after == Some(',');
            let number_after = number_after && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit());
            let number_before = matches!(before, Some('.' | ','))
                && start >= 2
                && chars[start - 2].is_ascii_digit();
            let len = i - start;
            if (min..=max).contains(&len)
                && !joined(before)
                && !joined(after)
                && !number_after
                && !number_before
            {
                return Some(chars[start..i].iter().collect());
            }
        } else {
            i += 1;
        }
    }
    None
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_come_from_text_and_html_without_duplicates() {
        let text = "Go to https://a.test/x?y=1. Or (http://b.test/z), not httpx://c";
        assert_eq!(
            find_links(text),
            ["https://a.test/x?y=1", "http://b.test/z"]
        );
        let html = r#"<a href="https://a.test/x?y=1&amp;z=2">here</a>"#;
        assert_eq!(find_links(html), ["https://a.test/x?y=1&z=2"]);
        assert!(find_links("https:// nothing").is_empty());
    }

    #[test]
    fn codes_stand_on_their_own() {
        assert_eq!(find_code("code: 123456.", 4, 8).as_deref(), Some("123456"));
        assert_eq!(
            find_code("order A12345 then 9876", 4, 8).as_deref(),
            Some("9876")
        );
        assert_eq!(find_code("price 1,5000 on 2026-12-01", 4, 8), None);
        assert_eq!(find_code("12 345", 4, 8), None);
        assert_eq!(find_code("123456789", 4, 8), None);
        assert_eq!(
            find_code(&strip_tags("<b>4821</b>"), 4, 8).as_deref(),
            Some("4821")
        );
    }

    #[test]
    fn a_mime_message_is_taken_apart() {
        let raw = b"From: App <app@example.com>\r\n\
To: bob@example.com\r\n\
Subject: =?utf-8?q?Welcome_=F0=9F=91=8B?=\r\n\
X-Long: one\r\n two\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: multipart/alternative; boundary=\"b2\"\r\n\
\r\n\
--b2\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Hello Bob, your code is 424242.\r\n\
--b2\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>Hello <a href=\"https://app.test/start\">Bob</a></p>\r\n\
--b2--\r\n\
--b1\r\n\
Content-Type: application/pdf\r\n\
Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0=\r\n\
--b1--\r\n";
        let msg = ReceivedMessage::new(Envelope::default(), raw.to_vec());
        assert_eq!(msg.subject(), Some("Welcome 👋"));
        assert_eq!(msg.header("x-long"), Some("one two"));
        assert_eq!(
            msg.text().map(str::trim_end),
            Some("Hello Bob, your code is 424242.")
        );
        assert!(msg.html().unwrap().contains("<a href="));
        assert_eq!(msg.attachments().len(), 1);
        let pdf = &msg.attachments()[0];
        assert_eq!(pdf.filename(), Some("invoice.pdf"));
        assert_eq!(pdf.content_type(), "application/pdf");
        assert_eq!(pdf.bytes(), b"%PDF-");
        assert_eq!(msg.links(), ["https://app.test/start"]);
        assert_eq!(msg.one_time_code().as_deref(), Some("424242"));
        assert_eq!(msg.raw(), &raw[..]);
    }
}
