//! Message composition for `ferry send`: RFC 5322 headers and a MIME body
//! built with mail-builder, or a raw message read as it is.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address as HeaderAddress;
use mail_builder::headers::text::Text;

/// Everything `ferry send` composes a message from.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    /// `From:`: an address, or `Name <address>`.
    pub from: String,
    /// `To:` entries.
    pub to: Vec<String>,
    /// `Cc:` entries.
    pub cc: Vec<String>,
    /// `Subject:`, if any.
    pub subject: Option<String>,
    /// The text/plain body.
    pub body: String,
    /// Attachments, in order.
    pub attachments: Vec<Attachment>,
    /// Extra header fields from `--header`, already checked with
    /// [`parse_header`].
    pub headers: Vec<(String, String)>,
}

/// One attached file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file name shown to the recipient (no directories).
    pub name: String,
    /// The MIME type, from [`content_type_for`].
    pub content_type: &'static str,
    /// The file's bytes.
    pub data: Vec<u8>,
}

/// Why a message could not be composed.
#[derive(Debug)]
pub enum ComposeError {
    /// A `--header` value is not `Name: value` with a valid field name.
    BadHeader(String),
    /// A `--header` sets a field ferry writes itself.
    ReservedHeader(String),
    /// A value contains CR, LF or NUL.
    ForbiddenCharacter(&'static str),
    /// An input file could not be read.
    Read {
        /// The file (`-` for standard input).
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// `--body-file` is not UTF-8 text, or holds a NUL.
    NotText(PathBuf),
    /// mail-builder failed to write the message.
    Build(io::Error),
}

impl fmt::Display for ComposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComposeError::BadHeader(h) => write!(
                f,
                "--header {h:?}: expected 'Name: value' with a field name of printable ASCII and no colon"
            ),
            ComposeError::ReservedHeader(name) => write!(
                f,
                "--header {name}: ferry writes this field itself; use --from, --to, --cc, --subject or --attach"
            ),
            ComposeError::ForbiddenCharacter(what) => {
                write!(f, "{what} contains CR, LF or NUL")
            }
            ComposeError::Read { path, source } => write!(f, "{}: {source}", path.display()),
            ComposeError::NotText(path) => write!(
                f,
                "--body-file {}: not UTF-8 text without NUL; send it with --attach or --raw",
                path.display()
            ),
            ComposeError::Build(err) => write!(f, "cannot build the message: {err}"),
        }
    }
}

impl std::error::Error for ComposeError {}

/// Fields that ferry composes itself and `--header` must not repeat
/// (`Date` and `Message-ID` may be given, and then replace ferry's).
const RESERVED: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
];

/// True when `s` holds CR, LF or NUL: the bytes that could end a line or a
/// command early and smuggle protocol text (RFC 5321 §2.3.8).
pub fn has_forbidden(s: &str) -> bool {
    s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// Parses a `--header 'Name: value'`. The name must be RFC 5322 §3.6.8
/// `ftext` (printable ASCII except `:`); the value must hold no CR, LF or
/// NUL. Leading and trailing white space of the value is dropped.
pub fn parse_header(spec: &str) -> Result<(String, String), ComposeError> {
    let (name, value) = spec
        .split_once(':')
        .ok_or_else(|| ComposeError::BadHeader(spec.to_owned()))?;
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b)) {
        return Err(ComposeError::BadHeader(spec.to_owned()));
    }
    if has_forbidden(value) {
        return Err(ComposeError::ForbiddenCharacter("--header value"));
    }
    if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(ComposeError::ReservedHeader(name.to_owned()));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// Splits `Name <address>` into its display name and address; a bare
/// address has no name.
pub fn split_mailbox(value: &str) -> (Option<&str>, &str) {
    let value = value.trim();
    if let Some(open) = value.rfind('<')
        && value.ends_with('>')
    {
        let name = value[..open].trim().trim_matches('"').trim();
        let addr = &value[open + 1..value.len() - 1];
        return ((!name.is_empty()).then_some(name), addr.trim());
    }
    (None, value)
}

/// The MIME type for a file name, from its extension; unknown extensions
/// are `application/octet-stream`.
pub fn content_type_for(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "text" | "log" => "text/plain",
        "csv" => "text/csv",
        "htm" | "html" => "text/html",
        "md" => "text/markdown",
        "xml" => "application/xml",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "ics" => "text/calendar",
        "eml" => "message/rfc822",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "odt" => "application/vnd.oasis.opendocument.text",
        _ => "application/octet-stream",
    }
}

/// Reads a file to attach.
pub fn load_attachment(path: &Path) -> Result<Attachment, ComposeError> {
    let data = std::fs::read(path).map_err(|source| ComposeError::Read {
        path: path.to_owned(),
        source,
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "attachment".to_owned());
    Ok(Attachment {
        name,
        content_type: content_type_for(path),
        data,
    })
}

/// Reads `--body-file` as UTF-8 text.
pub fn load_body(path: &Path) -> Result<String, ComposeError> {
    let bytes = std::fs::read(path).map_err(|source| ComposeError::Read {
        path: path.to_owned(),
        source,
    })?;
    // A NUL cannot travel in a text part (RFC 5322 §2.3, RFC 2045 §2.7):
    // such a file belongs in --attach, or --raw if it is a whole message.
    String::from_utf8(bytes)
        .ok()
        .filter(|text| !text.contains('\0'))
        .ok_or_else(|| ComposeError::NotText(path.to_owned()))
}

/// Reads `--raw FILE`, or standard input for `-`.
pub fn load_raw(path: &Path) -> Result<Vec<u8>, ComposeError> {
    let err = |source| ComposeError::Read {
        path: path.to_owned(),
        source,
    };
    if path == Path::new("-") {
        let mut data = Vec::new();
        io::stdin().lock().read_to_end(&mut data).map_err(err)?;
        Ok(data)
    } else {
        std::fs::read(path).map_err(err)
    }
}

/// A new Message-ID (RFC 5322 §3.6.4) ending in `@domain`, unique per
/// process through a clock reading, the process id, a counter and a
/// per-process random key.
pub fn message_id(domain: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    hasher.write_u64(count);
    let domain = if domain.is_empty() {
        "localhost"
    } else {
        domain
    };
    format!(
        "{:x}.{:x}.{count}.{:016x}@{domain}",
        now.as_secs(),
        std::process::id(),
        hasher.finish()
    )
}

fn header_address(value: &str) -> HeaderAddress<'_> {
    let (name, addr) = split_mailbox(value);
    HeaderAddress::new_address(name, addr)
}

fn address_list(values: &[String]) -> HeaderAddress<'_> {
    if values.len() == 1 {
        header_address(&values[0])
    } else {
        HeaderAddress::new_list(values.iter().map(|v| header_address(v)).collect())
    }
}

impl Draft {
    /// Builds the message: From, To, Cc, Subject, the extra headers, then
    /// Message-ID, Date and MIME-Version (unless given as extra headers),
    /// and a text/plain body, or multipart/mixed with the attachments.
    pub fn compose(&self) -> Result<Vec<u8>, ComposeError> {
        for (what, value) in [("--from", &self.from)]
            .into_iter()
            .chain(self.to.iter().map(|v| ("--to", v)))
            .chain(self.cc.iter().map(|v| ("--cc", v)))
            .chain(self.subject.iter().map(|v| ("--subject", v)))
        {
            if has_forbidden(value) {
                return Err(ComposeError::ForbiddenCharacter(what));
            }
        }
        let mut builder = MessageBuilder::new().from(header_address(&self.from));
        if !self.to.is_empty() {
            builder = builder.to(address_list(&self.to));
        }
        if !self.cc.is_empty() {
            builder = builder.cc(address_list(&self.cc));
        }
        if let Some(subject) = &self.subject {
            builder = builder.subject(subject.as_str());
        }
        let mut has_id = false;
        for (name, value) in &self.headers {
            // mail-builder recognises its own spelling only; use it so that a
            // given Date or Message-ID replaces the generated one.
            let name = if name.eq_ignore_ascii_case("message-id") {
                has_id = true;
                "Message-ID"
            } else if name.eq_ignore_ascii_case("date") {
                "Date"
            } else {
                name.as_str()
            };
            builder = builder.header(name, Text::new(value.as_str()));
        }
        if !has_id {
            let (_, addr) = split_mailbox(&self.from);
            let domain = addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("localhost");
            builder = builder.message_id(message_id(domain));
        }
        builder = builder.text_body(self.body.as_str());
        for attachment in &self.attachments {
            builder = builder.attachment(
                attachment.content_type,
                attachment.name.as_str(),
                attachment.data.as_slice(),
            );
        }
        builder.write_to_vec().map_err(ComposeError::Build)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn header_block(message: &str) -> &str {
        message.split("\r\n\r\n").next().unwrap()
    }

    #[test]
    fn simple_message() {
        let draft = Draft {
            from: "Alice <alice@example.com>".into(),
            to: vec!["bob@example.com".into()],
            cc: vec!["carol@example.org".into(), "Dan <dan@example.net>".into()],
            subject: Some("Hello there".into()),
            body: "Hi Bob,\r\nsee you.\r\n".into(),
            headers: vec![("X-Test".into(), "yes".into())],
            ..Draft::default()
        };
        let message = text(&draft.compose().unwrap());
        let headers = header_block(&message);
        assert!(
            headers.contains("From: \"Alice\" <alice@example.com>\r\n"),
            "{headers}"
        );
        assert!(headers.contains("To: <bob@example.com>\r\n"), "{headers}");
        assert!(headers.contains("Cc: <carol@example.org>, \"Dan\" <dan@example.net>"));
        assert!(headers.contains("Subject: Hello there\r\n"));
        assert!(headers.contains("X-Test: yes\r\n"));
        assert!(headers.contains("MIME-Version: 1.0\r\n"));
        assert!(headers.contains("Date: "));
        assert!(headers.contains("Content-Type: text/plain"), "{headers}");
        let id_line = headers
            .lines()
            .find(|l| l.starts_with("Message-ID: <"))
            .unwrap();
        assert!(id_line.ends_with("@example.com>"), "{id_line}");
        assert!(message.ends_with("Hi Bob,\r\nsee you.\r\n"), "{message}");
        // Every line ends with CRLF.
        assert!(!message.replace("\r\n", "").contains('\n'));
    }

    #[test]
    fn given_message_id_and_date_replace_ferrys() {
        let draft = Draft {
            from: "a@example.com".into(),
            to: vec!["b@example.com".into()],
            headers: vec![
                parse_header("message-id: <fixed@example.com>").unwrap(),
                parse_header("DATE: Mon, 1 Jan 2024 00:00:00 +0000").unwrap(),
            ],
            ..Draft::default()
        };
        let message = text(&draft.compose().unwrap());
        assert_eq!(message.matches("Message-ID:").count(), 1, "{message}");
        assert!(message.contains("Message-ID: <fixed@example.com>\r\n"));
        assert_eq!(message.matches("Date:").count(), 1, "{message}");
    }

    #[test]
    fn attachments_make_multipart() {
        let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let draft = Draft {
            from: "a@example.com".into(),
            to: vec!["b@example.com".into()],
            body: "see attached".into(),
            attachments: vec![Attachment {
                name: "photo.png".into(),
                content_type: "image/png",
                data: data.clone(),
            }],
            ..Draft::default()
        };
        let message = text(&draft.compose().unwrap());
        assert!(
            message.contains("Content-Type: multipart/mixed"),
            "{message}"
        );
        assert!(message.contains("Content-Type: image/png"));
        assert!(message.contains("filename=\"photo.png\""));
        assert!(message.contains("Content-Transfer-Encoding: base64"));
        assert!(message.lines().all(|l| l.len() <= 998));
        // The base64 part decodes back to the file.
        let part = message.split("Content-Type: image/png").nth(1).unwrap();
        let body = part.split("\r\n\r\n").nth(1).unwrap();
        let encoded: String = body.lines().take_while(|l| !l.starts_with("--")).collect();
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .unwrap();
        assert_eq!(decoded, data);
    }

    #[test]
    fn header_validation() {
        assert_eq!(
            parse_header("X-Tag:  hello world ").unwrap(),
            ("X-Tag".into(), "hello world".into())
        );
        assert_eq!(
            parse_header("X-Empty:").unwrap(),
            ("X-Empty".into(), String::new())
        );
        for bad in [
            "NoColon",
            ": value",
            "Bad Name: v",
            "Bad\u{e9}: v",
            "X\t: v",
        ] {
            assert!(
                matches!(parse_header(bad), Err(ComposeError::BadHeader(_))),
                "{bad}"
            );
        }
        for bad in ["X-A: a\r\nBcc: x", "X-A: a\nb", "X-A: a\0"] {
            assert!(
                matches!(parse_header(bad), Err(ComposeError::ForbiddenCharacter(_))),
                "{bad:?}"
            );
        }
        for reserved in ["Subject: x", "to: y", "Content-Type: text/html", "BCC: z"] {
            let err = parse_header(reserved).unwrap_err();
            assert!(matches!(err, ComposeError::ReservedHeader(_)), "{reserved}");
        }
    }

    #[test]
    fn forbidden_characters_in_fields() {
        let draft = Draft {
            from: "a@example.com".into(),
            to: vec!["b@example.com".into()],
            subject: Some("hi\r\nBcc: victim@example.com".into()),
            ..Draft::default()
        };
        let err = draft.compose().unwrap_err();
        assert_eq!(err.to_string(), "--subject contains CR, LF or NUL");
    }

    #[test]
    fn mailbox_splitting() {
        assert_eq!(split_mailbox("a@b"), (None, "a@b"));
        assert_eq!(split_mailbox(" <a@b> "), (None, "a@b"));
        assert_eq!(split_mailbox("Alice <a@b>"), (Some("Alice"), "a@b"));
        assert_eq!(split_mailbox("\"Alice A\" <a@b>"), (Some("Alice A"), "a@b"));
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type_for(Path::new("a/photo.PNG")), "image/png");
        assert_eq!(content_type_for(Path::new("report.pdf")), "application/pdf");
        assert_eq!(content_type_for(Path::new("notes.txt")), "text/plain");
        assert_eq!(
            content_type_for(Path::new("blob")),
            "application/octet-stream"
        );
        assert_eq!(
            content_type_for(Path::new("x.unknown")),
            "application/octet-stream"
        );
    }

    #[test]
    fn message_ids_are_unique() {
        let a = message_id("example.com");
        let b = message_id("example.com");
        assert_ne!(a, b);
        assert!(a.ends_with("@example.com"));
        assert!(!has_forbidden(&a) && !a.contains(' '));
    }

    #[test]
    fn files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.pdf");
        std::fs::write(&path, b"%PDF").unwrap();
        let att = load_attachment(&path).unwrap();
        assert_eq!(att.name, "doc.pdf");
        assert_eq!(att.content_type, "application/pdf");
        assert_eq!(att.data, b"%PDF");
        let bin = dir.path().join("body.bin");
        std::fs::write(&bin, [0xff, 0xfe]).unwrap();
        assert!(matches!(load_body(&bin), Err(ComposeError::NotText(_))));
        let nul = dir.path().join("nul.txt");
        std::fs::write(&nul, b"hello\0world\n").unwrap();
        assert!(matches!(load_body(&nul), Err(ComposeError::NotText(_))));
        assert_eq!(load_raw(&path).unwrap(), b"%PDF");
        let err = load_attachment(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"));
    }
}
