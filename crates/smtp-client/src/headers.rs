//! A small RFC 5322 header reader: just enough to take an envelope from a
//! message's originator and destination fields (§3.6.2, §3.6.3, §3.6.6).
//!
//! It unfolds fields (§2.2.3), skips comments (§3.2.2, nested, with
//! quoted-pairs), keeps quoted local parts, drops display names, and reads
//! groups (§3.4: `team: a@example.com, b@example.com;`). Encoded words
//! (RFC 2047) only occur in display names and comments, which are skipped.

use smtp_proto::address::Address;

use crate::error::Error;

/// One unfolded header field.
struct Field<'a> {
    name: &'a str,
    value: String,
}

/// The fields of the header section: everything up to the first empty line
/// (or the whole text when there is none).
fn fields(message: &[u8]) -> Vec<Field<'_>> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    for raw in message.split(|&byte| byte == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(line);
        if line[0] == b' ' || line[0] == b'\t' {
            // §2.2.3: a folded continuation; unfolding removes the CRLF only.
            if let Some(last) = fields.last_mut() {
                last.value.push_str(&text);
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&byte| byte == b':') else {
            // Not a field (an mbox "From " line, say): ignored.
            continue;
        };
        let Ok(name) = std::str::from_utf8(&line[..colon]) else {
            continue;
        };
        let name = name.trim_end();
        if name.is_empty() || name.contains(' ') {
            continue;
        }
        fields.push(Field {
            name,
            value: String::from_utf8_lossy(&line[colon + 1..]).into_owned(),
        });
    }
    fields
}

/// The addr-specs of an address list (§3.4), in order.
pub(crate) fn address_list(value: &str) -> Result<Vec<String>, Error> {
    let mut addresses = Vec::new();
    // The current mailbox as written, comments removed.
    let mut current = String::new();
    // The text inside `<...>` of the current mailbox, when it has one.
    let mut angle: Option<String> = None;
    let mut in_angle = false;
    let mut chars = value.chars().peekable();
    let mut finish = |current: &mut String, angle: &mut Option<String>| -> Result<(), Error> {
        let spec = match angle.take() {
            Some(inner) => strip_route(&inner),
            None => remove_whitespace(current),
        };
        current.clear();
        if !spec.is_empty() {
            addresses.push(spec);
        }
        Ok(())
    };
    while let Some(c) = chars.next() {
        match c {
            '(' => skip_comment(&mut chars)?,
            '"' => {
                let quoted = quoted_string(&mut chars)?;
                if in_angle {
                    angle.get_or_insert_with(String::new).push_str(&quoted);
                } else {
                    current.push_str(&quoted);
                }
            }
            '<' if !in_angle => {
                in_angle = true;
                // Whatever came before was the display name.
                angle = Some(String::new());
            }
            '>' if in_angle => in_angle = false,
            ':' if !in_angle => {
                // §3.4: a group's display name ends here.
                current.clear();
            }
            ',' | ';' if !in_angle => finish(&mut current, &mut angle)?,
            c if in_angle => angle.get_or_insert_with(String::new).push(c),
            c => current.push(c),
        }
    }
    if in_angle {
        return Err(Error::invalid(format!("unclosed <...> in {value:?}")));
    }
    finish(&mut current, &mut angle)?;
    Ok(addresses)
}

/// Skips a comment after its `(`, nested comments and quoted-pairs included.
fn skip_comment(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<(), Error> {
    let mut depth = 1;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
    Err(Error::invalid("unclosed comment in an address header"))
}

/// A quoted string after its opening `"`, returned with its quotes and
/// quoted-pairs as written (an addr-spec keeps them, RFC 5321 §4.1.2).
fn quoted_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, Error> {
    let mut text = String::from('"');
    while let Some(c) = chars.next() {
        text.push(c);
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    text.push(next);
                }
            }
            '"' => return Ok(text),
            _ => {}
        }
    }
    Err(Error::invalid(
        "unclosed quoted string in an address header",
    ))
}

/// Whitespace (CFWS) outside quoted strings is not part of an addr-spec.
fn remove_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        if quoted {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
        } else if c == '"' {
            quoted = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// `<@relay.example:user@example.com>` (the obsolete route, §4.4) is
/// `user@example.com`.
fn strip_route(inner: &str) -> String {
    let spec = remove_whitespace(inner);
    match spec.strip_prefix('@') {
        Some(_) => spec
            .split_once(':')
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or_default(),
        None => spec,
    }
}

/// The sender and recipients the header fields name, as RFC 5322 §3.6.6
/// says: the newest resent block (`Resent-Sender` or `Resent-From`,
/// `Resent-To`, `Resent-Cc`, `Resent-Bcc`) when there is one, otherwise
/// `Sender` or the first `From` mailbox, and `To`, `Cc`, `Bcc`.
pub(crate) fn envelope_addresses(message: &[u8]) -> Result<(Address, Vec<Address>), Error> {
    let fields = fields(message);
    let is_resent =
        |field: &Field<'_>| field.name.len() > 7 && field.name[..7].eq_ignore_ascii_case("resent-");
    // §3.6.6: resent blocks are prepended, so the first is the newest.
    // A block ends where its fields stop or a field name repeats.
    let mut block: Vec<&Field<'_>> = Vec::new();
    if let Some(start) = fields.iter().position(is_resent) {
        for field in fields[start..].iter().take_while(|f| is_resent(f)) {
            if block
                .iter()
                .any(|seen| seen.name.eq_ignore_ascii_case(field.name))
            {
                break;
            }
            block.push(field);
        }
    }
    let (prefix, pool): (&str, Vec<&Field<'_>>) = if block.is_empty() {
        ("", fields.iter().collect())
    } else {
        ("resent-", block)
    };
    let named = |name: &str| {
        let full = format!("{prefix}{name}");
        pool.iter()
            .filter(move |field| field.name.eq_ignore_ascii_case(&full))
            .map(|field| field.value.as_str())
            .collect::<Vec<&str>>()
    };
    let parse = |text: &str, field: &str| {
        Address::parse(text, true).map_err(|error| {
            Error::invalid(format!(
                "invalid address {text:?} in {prefix}{field}: ({error})"
            ))
        })
    };
    let mut sender = None;
    for field in ["sender", "from"] {
        if let Some(value) = named(field).first()
            && let Some(first) = address_list(value)?.first()
        {
            sender = Some(parse(first, field)?);
            break;
        }
    }
    let Some(sender) = sender else {
        return Err(Error::invalid(format!(
            "the message has no {prefix}From or {prefix}Sender mailbox"
        )));
    };
    let mut recipients: Vec<Address> = Vec::new();
    for field in ["to", "cc", "bcc"] {
        for value in named(field) {
            for text in address_list(value)? {
                let address = parse(&text, field)?;
                if !recipients
                    .iter()
                    .any(|known| known.as_str().eq_ignore_ascii_case(address.as_str()))
                {
                    recipients.push(address);
                }
            }
        }
    }
    if recipients.is_empty() {
        return Err(Error::invalid(format!(
            "the message names no recipient in {prefix}To, {prefix}Cc or {prefix}Bcc"
        )));
    }
    Ok((sender, recipients))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(value: &str) -> Vec<String> {
        address_list(value).unwrap()
    }

    #[test]
    fn display_names_and_angle_brackets() {
        assert_eq!(
            list("Alice Example <alice@example.com>, bob@example.org"),
            ["alice@example.com", "bob@example.org"]
        );
        assert_eq!(
            list("\"Example, Alice <boss>\" <alice@example.com>"),
            ["alice@example.com"]
        );
    }

    #[test]
    fn comments_are_skipped_even_nested() {
        assert_eq!(
            list("alice@example.com (Alice (the (first)) \\) one), (x) bob (B) @ example.org"),
            ["alice@example.com", "bob@example.org"]
        );
        assert!(address_list("a@example.com (open").is_err());
    }

    #[test]
    fn groups_give_their_members() {
        assert_eq!(
            list("Team: a@example.com, B <b@example.com>;, c@example.com"),
            ["a@example.com", "b@example.com", "c@example.com"]
        );
        assert!(list("undisclosed-recipients:;").is_empty());
    }

    #[test]
    fn quoted_local_parts_are_kept() {
        assert_eq!(
            list("\"john doe\"@example.com, <\"a,b\"@example.com>"),
            ["\"john doe\"@example.com", "\"a,b\"@example.com"]
        );
    }

    #[test]
    fn obsolete_routes_are_dropped() {
        assert_eq!(
            list("<@relay.example:user@example.com>"),
            ["user@example.com"]
        );
    }

    #[test]
    fn folded_fields_are_unfolded() {
        let message = b"From: Alice\r\n <alice@example.com>\r\nTo: a@example.org,\r\n\tb@example.org\r\nSubject: x\r\n\r\nTo: body@example.org\r\n";
        let (sender, recipients) = envelope_addresses(message).unwrap();
        assert_eq!(sender.as_str(), "alice@example.com");
        let recipients: Vec<&str> = recipients.iter().map(Address::as_str).collect();
        assert_eq!(recipients, ["a@example.org", "b@example.org"]);
    }

    #[test]
    fn sender_wins_over_from_and_cc_bcc_count() {
        let message = b"From: a@example.com, b@example.com\nSender: secretary@example.com\nTo: x@example.org\nCc: y@example.org, X@example.org\nBcc: z@example.org\n\nbody";
        let (sender, recipients) = envelope_addresses(message).unwrap();
        assert_eq!(sender.as_str(), "secretary@example.com");
        let recipients: Vec<&str> = recipients.iter().map(Address::as_str).collect();
        assert_eq!(
            recipients,
            ["x@example.org", "y@example.org", "z@example.org"]
        );
    }

    #[test]
    fn the_newest_resent_block_decides() {
        let message = b"Resent-From: fwd2@example.com\r\nResent-To: final@example.org\r\nResent-Date: Mon, 1 Dec 2025 10:00:00 +0000\r\nResent-From: fwd1@example.com\r\nResent-To: middle@example.org\r\nFrom: author@example.com\r\nTo: first@example.org\r\n\r\n";
        let (sender, recipients) = envelope_addresses(message).unwrap();
        assert_eq!(sender.as_str(), "fwd2@example.com");
        let recipients: Vec<&str> = recipients.iter().map(Address::as_str).collect();
        assert_eq!(recipients, ["final@example.org"]);
    }

    #[test]
    fn missing_or_bad_fields_are_input_errors() {
        for message in [
            &b"To: a@example.org\r\n\r\n"[..],
            b"From: a@example.com\r\n\r\n",
            b"From: a@example.com\r\nTo: not-an-address\r\n\r\n",
            b"From: a@example.com\r\nTo: <a@example.org\r\n\r\n",
        ] {
            let error = envelope_addresses(message).unwrap_err();
            assert_eq!(error.kind(), crate::ErrorKind::InvalidInput);
        }
    }
}
