//! RFC 5321 §4.1.2 paths and mailboxes, with RFC 6531 UTF-8 addresses.
//!
//! ```text
//! Reverse-path = Path / "<>"
//! Forward-path = Path                      ; or "<Postmaster>" (§4.1.1.3)
//! Path         = "<" [ A-d-l ":" ] Mailbox ">"
//! Mailbox      = Local-part "@" ( Domain / address-literal )
//! Local-part   = Dot-string / Quoted-string
//! ```
//!
//! Source routes (`A-d-l`) are accepted and dropped, as §4.1.1.3 and
//! Appendix C ask. The length limits of §4.5.3.1 are enforced and reported
//! as their own errors, so a server can say exactly what was wrong.
//!
//! ```
//! use smtp_proto::address::{parse_forward_path, parse_reverse_path, Address};
//! let from = parse_reverse_path("<@relay.example:user@example.com>", false).unwrap();
//! assert_eq!(from.unwrap().as_str(), "user@example.com");
//! assert_eq!(parse_reverse_path("<>", false).unwrap(), None);
//! assert_eq!(parse_forward_path("<postmaster>", false).unwrap(), Address::postmaster());
//! ```

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::limits::{DOMAIN_MAX, LOCAL_PART_MAX, PATH_MAX};

/// A mailbox (`local@domain`), or the special `Postmaster` recipient that
/// has no domain (RFC 5321 §4.1.1.3).
///
/// The address is kept exactly as written: a quoted local part keeps its
/// quotes and escapes, and the case of both parts is preserved (only the
/// destination host may interpret the local part, RFC 5321 §2.4). Two
/// addresses compare equal only when they are written identically.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    text: String,
    /// Byte index of the `@` that separates local part and domain; `None`
    /// only for [`Address::postmaster`].
    at: Option<usize>,
}

impl Address {
    /// Parses a Mailbox without angle brackets: a dot-atom or quoted-string
    /// local part, `@`, then a domain or an address literal (`[192.0.2.1]`,
    /// `[IPv6:2001:db8::1]`).
    ///
    /// Non-ASCII characters (RFC 6531) are accepted only when `utf8` is
    /// true. The mailbox must fit a path, so it is at most
    /// [`PATH_MAX`]` - 2` octets.
    pub fn parse(mailbox: &str, utf8: bool) -> Result<Address, AddressError> {
        if mailbox.is_empty() {
            return Err(AddressError::Empty);
        }
        check_forbidden(mailbox)?;
        if mailbox.len() + 2 > PATH_MAX {
            return Err(AddressError::PathTooLong);
        }
        if !utf8 && !mailbox.is_ascii() {
            return Err(AddressError::Utf8NotPermitted);
        }
        parse_mailbox(mailbox).map(AddressRef::to_address)
    }

    /// The bare `Postmaster` forward-path, which RFC 5321 §4.1.1.3 requires
    /// every server to accept without a domain.
    pub fn postmaster() -> Address {
        Address {
            text: String::from("Postmaster"),
            at: None,
        }
    }

    /// The address as it goes between the angle brackets of a path.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The local part as written, quotes and escapes included
    /// (`"john doe"` for `"john doe"@example.com`); `Postmaster` for
    /// [`Address::postmaster`].
    pub fn local_part(&self) -> &str {
        match self.at {
            Some(at) => &self.text[..at],
            None => &self.text,
        }
    }

    /// The domain or address literal (brackets kept); `None` only for
    /// [`Address::postmaster`].
    pub fn domain(&self) -> Option<&str> {
        self.at.map(|at| &self.text[at + 1..])
    }

    /// True when the address holds any non-ASCII character, so that using
    /// it requires `SMTPUTF8` (RFC 6531 §3.4).
    pub fn is_utf8(&self) -> bool {
        !self.text.is_ascii()
    }
}

/// An [`Address`] borrowed from the text it was parsed from, as
/// [`CommandRef`](crate::command::CommandRef) hands it out: the same
/// checks, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddressRef<'a> {
    text: &'a str,
    /// As in [`Address`].
    at: Option<usize>,
}

impl<'a> AddressRef<'a> {
    /// The bare `Postmaster` forward-path (see [`Address::postmaster`]).
    pub fn postmaster() -> AddressRef<'static> {
        AddressRef {
            text: "Postmaster",
            at: None,
        }
    }

    /// The address as it goes between the angle brackets of a path.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// The local part as written (see [`Address::local_part`]).
    pub fn local_part(&self) -> &'a str {
        match self.at {
            Some(at) => &self.text[..at],
            None => self.text,
        }
    }

    /// The domain or address literal (see [`Address::domain`]).
    pub fn domain(&self) -> Option<&'a str> {
        self.at.map(|at| &self.text[at + 1..])
    }

    /// True when the address holds any non-ASCII character.
    pub fn is_utf8(&self) -> bool {
        !self.text.is_ascii()
    }

    /// The owned [`Address`].
    pub fn to_address(self) -> Address {
        Address {
            text: self.text.to_owned(),
            at: self.at,
        }
    }
}

impl From<AddressRef<'_>> for Address {
    fn from(address: AddressRef<'_>) -> Address {
        address.to_address()
    }
}

impl fmt::Display for AddressRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Address {
    type Err = AddressError;

    /// Parses a mailbox with UTF-8 allowed; see [`Address::parse`].
    fn from_str(mailbox: &str) -> Result<Self, Self::Err> {
        Address::parse(mailbox, true)
    }
}

impl TryFrom<&str> for Address {
    type Error = AddressError;

    /// Parses a mailbox with UTF-8 allowed; see [`Address::parse`].
    fn try_from(mailbox: &str) -> Result<Self, Self::Error> {
        Address::parse(mailbox, true)
    }
}

impl TryFrom<&String> for Address {
    type Error = AddressError;

    /// Parses a mailbox with UTF-8 allowed; see [`Address::parse`].
    fn try_from(mailbox: &String) -> Result<Self, Self::Error> {
        Address::parse(mailbox, true)
    }
}

impl TryFrom<String> for Address {
    type Error = AddressError;

    /// Parses a mailbox with UTF-8 allowed; see [`Address::parse`].
    fn try_from(mailbox: String) -> Result<Self, Self::Error> {
        Address::parse(&mailbox, true)
    }
}

/// Parses a reverse-path (the argument of `MAIL FROM:`), angle brackets
/// included. `<>`, the null reverse-path of bounces, gives `None`.
pub fn parse_reverse_path(path: &str, utf8: bool) -> Result<Option<Address>, AddressError> {
    parse_reverse_path_ref(path, utf8).map(|from| from.map(AddressRef::to_address))
}

/// [`parse_reverse_path`], borrowing the address from `path`.
pub fn parse_reverse_path_ref(
    path: &str,
    utf8: bool,
) -> Result<Option<AddressRef<'_>>, AddressError> {
    check_forbidden(path)?;
    reverse_path_in_line(path, utf8)
}

/// [`parse_reverse_path_ref`] for a path from a command line that has
/// already been checked for control octets (CR, LF and NUL among them).
pub(crate) fn reverse_path_in_line(
    path: &str,
    utf8: bool,
) -> Result<Option<AddressRef<'_>>, AddressError> {
    let inner = path_inner(path)?;
    if inner.is_empty() {
        return Ok(None);
    }
    parse_path_inner(inner, utf8).map(Some)
}

/// Parses a forward-path (the argument of `RCPT TO:`), angle brackets
/// included. `<Postmaster>` in any case gives [`Address::postmaster`].
pub fn parse_forward_path(path: &str, utf8: bool) -> Result<Address, AddressError> {
    parse_forward_path_ref(path, utf8).map(AddressRef::to_address)
}

/// [`parse_forward_path`], borrowing the address from `path`.
pub fn parse_forward_path_ref(path: &str, utf8: bool) -> Result<AddressRef<'_>, AddressError> {
    check_forbidden(path)?;
    forward_path_in_line(path, utf8)
}

/// [`parse_forward_path_ref`] for a path from a command line that has
/// already been checked for control octets (CR, LF and NUL among them).
pub(crate) fn forward_path_in_line(path: &str, utf8: bool) -> Result<AddressRef<'_>, AddressError> {
    let inner = path_inner(path)?;
    if inner.is_empty() {
        return Err(AddressError::Empty);
    }
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok(AddressRef::postmaster());
    }
    parse_path_inner(inner, utf8)
}

/// Why an address or path was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// Nothing where an address was expected (`<>` as a forward-path).
    Empty,
    /// The path is not enclosed in `<` and `>`.
    MissingAngleBrackets,
    /// No `@` and domain after the local part.
    MissingDomain,
    /// The local part is neither a dot-string nor a quoted string.
    InvalidLocalPart,
    /// The domain (or a source-route domain) is not a valid domain name.
    InvalidDomain,
    /// A `[...]` literal that is not an IPv4 or `IPv6:` address.
    InvalidAddressLiteral,
    /// The local part exceeds [`LOCAL_PART_MAX`] octets (RFC 5321 §4.5.3.1.1).
    LocalPartTooLong,
    /// The domain exceeds [`DOMAIN_MAX`] octets (RFC 5321 §4.5.3.1.2).
    DomainTooLong,
    /// The path exceeds [`PATH_MAX`] octets (RFC 5321 §4.5.3.1.3).
    PathTooLong,
    /// A non-ASCII character where UTF-8 is not permitted (RFC 6531 §3.4).
    Utf8NotPermitted,
    /// CR, LF or NUL, which no address may contain.
    ForbiddenCharacter,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressError::Empty => "empty address",
            AddressError::MissingAngleBrackets => "path must be enclosed in angle brackets",
            AddressError::MissingDomain => "address has no domain",
            AddressError::InvalidLocalPart => "invalid local part",
            AddressError::InvalidDomain => "invalid domain",
            AddressError::InvalidAddressLiteral => "invalid address literal",
            AddressError::LocalPartTooLong => "local part longer than 64 octets",
            AddressError::DomainTooLong => "domain longer than 255 octets",
            AddressError::PathTooLong => "path longer than 256 octets",
            AddressError::Utf8NotPermitted => "UTF-8 address not permitted without SMTPUTF8",
            AddressError::ForbiddenCharacter => "CR, LF or NUL in address",
        })
    }
}

impl std::error::Error for AddressError {}

/// Length in octets of the path at the start of `s` (which begins with
/// `<`), up to and including the closing `>`; `None` when it never closes.
///
/// A quoted local part may hold `>` and spaces, so quotes and their
/// backslash escapes are honoured. Used by the command parser to find
/// where the parameters start.
pub(crate) fn path_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'<') {
        return None;
    }
    // Without a quote before it, the first '>' closes the path.
    match memchr::memchr2(b'>', b'"', bytes) {
        Some(at) if bytes[at] == b'>' => return Some(at + 1),
        Some(_) => {}
        None => return None,
    }
    let mut in_quotes = false;
    let mut index = 1;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' if in_quotes => index += 1,
            b'"' => in_quotes = !in_quotes,
            b'>' if !in_quotes => return Some(index + 1),
            _ => {}
        }
        index += 1;
    }
    None
}

/// Validates the argument of HELO, EHLO and LHLO: a domain or an address
/// literal (RFC 5321 §4.1.1.1). Underscores are tolerated in labels because
/// hosts named after Windows machine names send them.
pub(crate) fn is_valid_helo_domain(domain: &str) -> bool {
    if domain.is_empty() || domain.len() > DOMAIN_MAX || !domain.is_ascii() {
        return false;
    }
    if domain.starts_with('[') {
        return validate_address_literal(domain).is_ok();
    }
    validate_domain(domain.as_bytes(), true).is_ok()
}

fn check_forbidden(s: &str) -> Result<(), AddressError> {
    match memchr::memchr3(b'\r', b'\n', 0, s.as_bytes()) {
        Some(_) => Err(AddressError::ForbiddenCharacter),
        None => Ok(()),
    }
}

/// Checks everything a path shares whatever it holds, but the forbidden
/// octets (the caller has), and returns what is between the brackets.
fn path_inner(path: &str) -> Result<&str, AddressError> {
    if path.is_empty() {
        return Err(AddressError::Empty);
    }
    if path.len() > PATH_MAX {
        return Err(AddressError::PathTooLong);
    }
    path.strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .ok_or(AddressError::MissingAngleBrackets)
}

fn parse_path_inner(inner: &str, utf8: bool) -> Result<AddressRef<'_>, AddressError> {
    if !utf8 && !inner.is_ascii() {
        return Err(AddressError::Utf8NotPermitted);
    }
    parse_mailbox(strip_source_route(inner)?)
}

/// Drops an `A-d-l ":"` prefix (`@a.example,@b.example:`) after checking
/// that it is well formed. RFC 5321 §4.1.1.3: servers "SHOULD NOT" use
/// source routes and "MUST" accept and may ignore them.
fn strip_source_route(inner: &str) -> Result<&str, AddressError> {
    if !inner.starts_with('@') {
        return Ok(inner);
    }
    // At-domain holds only a Domain, never a literal, so the first ':' ends it.
    let colon = memchr::memchr(b':', inner.as_bytes()).ok_or(AddressError::InvalidLocalPart)?;
    for at_domain in inner[..colon].split(',') {
        let domain = at_domain
            .strip_prefix('@')
            .ok_or(AddressError::InvalidDomain)?;
        if domain.len() > DOMAIN_MAX {
            return Err(AddressError::DomainTooLong);
        }
        validate_domain(domain.as_bytes(), false)?;
    }
    Ok(&inner[colon + 1..])
}

/// Parses a Mailbox that has passed the character and length checks of
/// its caller.
fn parse_mailbox(mailbox: &str) -> Result<AddressRef<'_>, AddressError> {
    if mailbox.is_empty() {
        return Err(AddressError::Empty);
    }
    let bytes = mailbox.as_bytes();
    let at = if bytes[0] == b'"' {
        let end = quoted_string_len(bytes).ok_or(AddressError::InvalidLocalPart)?;
        match bytes.get(end) {
            Some(b'@') => end,
            Some(_) => return Err(AddressError::InvalidLocalPart),
            None => return Err(AddressError::MissingDomain),
        }
    } else {
        // A dot-string cannot hold '@', so the first one ends it.
        memchr::memchr(b'@', bytes).ok_or(AddressError::MissingDomain)?
    };
    let local = &bytes[..at];
    let domain = &mailbox[at + 1..];
    if local.len() > LOCAL_PART_MAX {
        return Err(AddressError::LocalPartTooLong);
    }
    if domain.is_empty() {
        return Err(AddressError::MissingDomain);
    }
    if domain.len() > DOMAIN_MAX {
        return Err(AddressError::DomainTooLong);
    }
    if local.first() == Some(&b'"') {
        validate_quoted_string(local)?;
    } else {
        validate_dot_string(local)?;
    }
    if domain.starts_with('[') {
        validate_address_literal(domain)?;
    } else {
        validate_domain(domain.as_bytes(), false)?;
    }
    Ok(AddressRef {
        text: mailbox,
        at: Some(at),
    })
}

/// Octet classes of the SMTP grammar, one bit each, so that testing an
/// octet is one table load instead of a chain of comparisons.
pub(crate) mod class {
    /// ASCII `ALPHA / DIGIT`.
    pub(crate) const ALNUM: u8 = 1 << 0;
    /// `Let-dig` (RFC 5321 §4.1.2), plus non-ASCII for U-labels (RFC 6531
    /// §3.3).
    pub(crate) const LET_DIG: u8 = 1 << 1;
    /// `Ldh-str` octets: `Let-dig` and `"-"`.
    pub(crate) const LDH: u8 = 1 << 2;
    /// RFC 5322 `atext` (ASCII only).
    pub(crate) const ATOM: u8 = 1 << 3;
    /// RFC 5322 `atext`, plus non-ASCII (RFC 6531 §3.3).
    pub(crate) const ATEXT: u8 = 1 << 4;
    /// `esmtp-keyword` octets (RFC 5321 §4.1.2): `ALPHA / DIGIT / "-"`.
    pub(crate) const KEYWORD: u8 = 1 << 5;
    /// RFC 3461 §4 `xchar`: `"!"` to `"~"` except `"+"` and `"="`.
    pub(crate) const XCHAR: u8 = 1 << 6;

    static TABLE: [u8; 256] = table();

    const fn table() -> [u8; 256] {
        let specials = b"!#$%&'*+-/=?^_`{|}~";
        let mut table = [0u8; 256];
        let mut index = 0;
        while index < 256 {
            let byte = index as u8;
            let mut bits = 0;
            if byte.is_ascii_alphanumeric() {
                bits |= ALNUM | LET_DIG | LDH | ATOM | ATEXT | KEYWORD;
            }
            if byte >= 0x80 {
                bits |= LET_DIG | LDH | ATEXT;
            }
            if byte == b'-' {
                bits |= LDH | KEYWORD;
            }
            let mut special = 0;
            while special < specials.len() {
                if specials[special] == byte {
                    bits |= ATOM | ATEXT;
                }
                special += 1;
            }
            if byte >= 33 && byte <= 126 && byte != b'+' && byte != b'=' {
                bits |= XCHAR;
            }
            table[index] = bits;
            index += 1;
        }
        table
    }

    /// Whether `byte` is in any of the classes in `classes`.
    #[inline]
    pub(crate) fn is(byte: u8, classes: u8) -> bool {
        TABLE[usize::from(byte)] & classes != 0
    }
}

/// RFC 5322 `atext`, extended by RFC 6531 §3.3 with every non-ASCII octet
/// (whether non-ASCII is allowed at all is checked before parsing).
fn is_atext(byte: u8) -> bool {
    class::is(byte, class::ATEXT)
}

/// `Dot-string = Atom *("." Atom)`.
fn validate_dot_string(local: &[u8]) -> Result<(), AddressError> {
    if local.is_empty() {
        return Err(AddressError::InvalidLocalPart);
    }
    let mut previous_dot = true; // no leading dot
    for &byte in local {
        if byte == b'.' {
            if previous_dot {
                return Err(AddressError::InvalidLocalPart);
            }
            previous_dot = true;
        } else if is_atext(byte) {
            previous_dot = false;
        } else {
            return Err(AddressError::InvalidLocalPart);
        }
    }
    if previous_dot {
        return Err(AddressError::InvalidLocalPart);
    }
    Ok(())
}

/// Length of the quoted string at the start of `bytes` (which begins with
/// `"`), closing quote included.
fn quoted_string_len(bytes: &[u8]) -> Option<usize> {
    let mut index = 1;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' => index += 2,
            b'"' => return Some(index + 1),
            _ => index += 1,
        }
    }
    None
}

/// `Quoted-string = DQUOTE *QcontentSMTP DQUOTE`, where
/// `qtextSMTP = %d32-33 / %d35-91 / %d93-126` (plus non-ASCII, RFC 6531)
/// and `quoted-pairSMTP = %d92 %d32-126`.
fn validate_quoted_string(local: &[u8]) -> Result<(), AddressError> {
    let Some(content) = local
        .strip_prefix(b"\"")
        .and_then(|rest| rest.strip_suffix(b"\""))
    else {
        return Err(AddressError::InvalidLocalPart);
    };
    let mut index = 0;
    while index < content.len() {
        match content[index] {
            b'\\' => match content.get(index + 1) {
                Some(32..=126) => index += 2,
                _ => return Err(AddressError::InvalidLocalPart),
            },
            b'"' => return Err(AddressError::InvalidLocalPart),
            32..=126 | 0x80..=0xff => index += 1,
            _ => return Err(AddressError::InvalidLocalPart),
        }
    }
    Ok(())
}

/// `Domain = sub-domain *("." sub-domain)`,
/// `sub-domain = Let-dig [Ldh-str]`; RFC 6531 §3.3 adds U-labels, whose
/// non-ASCII octets count as letters here (IDNA2008 validation is left to
/// whoever resolves the name). ASCII labels are limited to 63 octets
/// (RFC 1035 §2.3.4). `underscore` tolerates `_` inside labels.
fn validate_domain(domain: &[u8], underscore: bool) -> Result<(), AddressError> {
    if domain.is_empty() {
        return Err(AddressError::InvalidDomain);
    }
    for label in domain.split(|&b| b == b'.') {
        let (Some(&first), Some(&last)) = (label.first(), label.last()) else {
            return Err(AddressError::InvalidDomain);
        };
        if !class::is(first, class::LET_DIG) || !class::is(last, class::LET_DIG) {
            return Err(AddressError::InvalidDomain);
        }
        let ldh = |&b: &u8| class::is(b, class::LDH) || (underscore && b == b'_');
        if !label.iter().all(ldh) {
            return Err(AddressError::InvalidDomain);
        }
        if label.len() > 63 && label.is_ascii() {
            return Err(AddressError::InvalidDomain);
        }
    }
    Ok(())
}

/// `address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
/// General-address-literal ) "]"`. No general-address-literal tag is
/// registered with IANA (RFC 5321 §4.1.3), so only IPv4 and IPv6 pass.
fn validate_address_literal(literal: &str) -> Result<(), AddressError> {
    let inner = literal
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .ok_or(AddressError::InvalidAddressLiteral)?;
    let bytes = inner.as_bytes();
    if bytes.len() >= 5 && bytes[..5].eq_ignore_ascii_case(b"IPv6:") {
        return inner[5..]
            .parse::<Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| AddressError::InvalidAddressLiteral);
    }
    if is_ipv4_literal(bytes) {
        Ok(())
    } else {
        Err(AddressError::InvalidAddressLiteral)
    }
}

/// `IPv4-address-literal = Snum 3("." Snum)`, `Snum = 1*3DIGIT` with a
/// value of at most 255. Leading zeros are allowed by the grammar (and
/// refused by `std::net::Ipv4Addr`, hence the hand parser).
fn is_ipv4_literal(bytes: &[u8]) -> bool {
    let mut parts = 0;
    for snum in bytes.split(|&b| b == b'.') {
        parts += 1;
        if parts > 4 || snum.is_empty() || snum.len() > 3 {
            return false;
        }
        let mut value = 0u16;
        for &digit in snum {
            if !digit.is_ascii_digit() {
                return false;
            }
            value = value * 10 + u16::from(digit - b'0');
        }
        if value > 255 {
            return false;
        }
    }
    parts == 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(mailbox: &str) -> Address {
        Address::parse(mailbox, false).unwrap_or_else(|e| panic!("{mailbox:?}: {e}"))
    }

    fn err(mailbox: &str) -> AddressError {
        Address::parse(mailbox, false).unwrap_err()
    }

    #[test]
    fn octet_classes_match_the_grammar() {
        let specials = b"!#$%&'*+-/=?^_`{|}~";
        for byte in 0..=u8::MAX {
            let alnum = byte.is_ascii_alphanumeric();
            let let_dig = alnum || byte >= 0x80;
            let atom = alnum || specials.contains(&byte);
            let expected = [
                (class::ALNUM, alnum),
                (class::LET_DIG, let_dig),
                (class::LDH, let_dig || byte == b'-'),
                (class::ATOM, atom),
                (class::ATEXT, atom || byte >= 0x80),
                (class::KEYWORD, alnum || byte == b'-'),
                (
                    class::XCHAR,
                    (33..=126).contains(&byte) && byte != b'+' && byte != b'=',
                ),
            ];
            for (bits, want) in expected {
                assert_eq!(
                    class::is(byte, bits),
                    want,
                    "octet {byte:#04x}, class {bits:#x}"
                );
            }
        }
    }

    #[test]
    fn parses_dot_atom_mailbox() {
        let address = ok("first.last+tag@mail.example.com");
        assert_eq!(address.as_str(), "first.last+tag@mail.example.com");
        assert_eq!(address.local_part(), "first.last+tag");
        assert_eq!(address.domain(), Some("mail.example.com"));
        assert!(!address.is_utf8());
        assert_eq!(address.to_string(), "first.last+tag@mail.example.com");
        ok("!#$%&'*+-/=?^_`{|}~@example.com");
        ok("a@b");
        ok("a@1example.com");
    }

    #[test]
    fn keeps_case_as_written() {
        let address = ok("John.Doe@Example.COM");
        assert_eq!(address.local_part(), "John.Doe");
        assert_eq!(address.domain(), Some("Example.COM"));
        assert_ne!(address, ok("john.doe@example.com"));
    }

    #[test]
    fn parses_quoted_local_parts_with_escapes() {
        let address = ok(r#""john doe"@example.com"#);
        assert_eq!(address.local_part(), r#""john doe""#);
        assert_eq!(address.domain(), Some("example.com"));
        let address = ok(r#""a\"b\\c@d"@example.com"#);
        assert_eq!(address.local_part(), r#""a\"b\\c@d""#);
        assert_eq!(address.domain(), Some("example.com"));
        ok(r#""a>b"@example.com"#);
        ok(r#""@"@example.com"#);
        ok(r#"""@example.com"#);
    }

    #[test]
    fn rejects_bad_quoted_local_parts() {
        assert_eq!(err(r#""abc@example.com"#), AddressError::InvalidLocalPart);
        assert_eq!(err(r#""a"b"@example.com"#), AddressError::InvalidLocalPart);
        assert_eq!(err(r#""a"x@example.com"#), AddressError::InvalidLocalPart);
        assert_eq!(err("\"a\tb\"@example.com"), AddressError::InvalidLocalPart);
        assert_eq!(
            err("\"a\\\tb\"@example.com"),
            AddressError::InvalidLocalPart
        );
        assert_eq!(err(r#""abc\"@example.com"#), AddressError::InvalidLocalPart);
        assert_eq!(err(r#""abc""#), AddressError::MissingDomain);
    }

    #[test]
    fn rejects_bad_dot_strings() {
        for bad in [
            ".a@example.com",
            "a.@example.com",
            "a..b@example.com",
            "@example.com",
            "a b@example.com",
            "a(b)@example.com",
            "a,b@example.com",
            "a\"b@example.com",
            "a\\b@example.com",
            "a\tb@example.com",
        ] {
            assert_eq!(err(bad), AddressError::InvalidLocalPart, "{bad:?}");
        }
    }

    #[test]
    fn rejects_missing_domain() {
        assert_eq!(err("user"), AddressError::MissingDomain);
        assert_eq!(err("user@"), AddressError::MissingDomain);
        assert_eq!(err("Postmaster"), AddressError::MissingDomain);
    }

    #[test]
    fn rejects_bad_domains() {
        for bad in [
            "a@-example.com",
            "a@example-.com",
            "a@example..com",
            "a@.example.com",
            "a@example.com.",
            "a@exa_mple.com",
            "a@exa mple.com",
            "a@b@c",
            "a@example.com>",
        ] {
            assert_eq!(err(bad), AddressError::InvalidDomain, "{bad:?}");
        }
        let long_label = format!("a@{}.com", "x".repeat(64));
        assert_eq!(err(&long_label), AddressError::InvalidDomain);
        ok(&format!("a@{}.com", "x".repeat(63)));
    }

    #[test]
    fn parses_ipv4_literals() {
        let address = ok("user@[192.0.2.1]");
        assert_eq!(address.domain(), Some("[192.0.2.1]"));
        ok("user@[0.0.0.0]");
        ok("user@[255.255.255.255]");
        ok("user@[192.000.002.001]");
        for bad in [
            "user@[256.0.0.1]",
            "user@[192.0.2]",
            "user@[192.0.2.1.5]",
            "user@[192.0.2.]",
            "user@[1921.0.2.1]",
            "user@[192.0.2.1",
            "user@[]",
            "user@[a.b.c.d]",
        ] {
            assert_eq!(err(bad), AddressError::InvalidAddressLiteral, "{bad:?}");
        }
    }

    #[test]
    fn parses_ipv6_literals() {
        for good in [
            "user@[IPv6:2001:db8::1]",
            "user@[ipv6:2001:DB8::1]",
            "user@[IPv6:::1]",
            "user@[IPv6:2001:db8:0:0:0:0:0:1]",
            "user@[IPv6:::ffff:192.0.2.1]",
            "user@[IPv6:2001:db8:0:0:0:0:192.0.2.1]",
        ] {
            ok(good);
        }
        for bad in [
            "user@[IPv6:2001:db8::g]",
            "user@[IPv6:192.0.2.1]",
            "user@[IPv6:1:2:3:4:5:6:7:8:9]",
            "user@[IPv6:fe80::1%eth0]",
            "user@[2001:db8::1]",
            "user@[x-tag:anything]",
        ] {
            assert_eq!(err(bad), AddressError::InvalidAddressLiteral, "{bad:?}");
        }
    }

    #[test]
    fn local_part_limit_at_boundary() {
        let at_limit = format!("{}@example.com", "a".repeat(64));
        assert_eq!(ok(&at_limit).local_part().len(), LOCAL_PART_MAX);
        let over = format!("{}@example.com", "a".repeat(65));
        assert_eq!(err(&over), AddressError::LocalPartTooLong);
        let quoted = format!("\"{}\"@example.com", "a".repeat(63));
        assert_eq!(err(&quoted), AddressError::LocalPartTooLong);
    }

    /// A syntactically valid domain of exactly `len` octets: labels of 62
    /// octets, then one of at most 63.
    fn domain_of(len: usize) -> String {
        let mut domain = String::with_capacity(len);
        while len - domain.len() > 63 {
            domain.push_str(&"b".repeat(62));
            domain.push('.');
        }
        domain.push_str(&"b".repeat(len - domain.len()));
        domain
    }

    #[test]
    fn domain_limit_at_boundary() {
        // The domain limit is checked on its own, before the path limit
        // that a mailbox must also satisfy.
        let at_limit = format!("a@{}", domain_of(255));
        assert_eq!(
            parse_mailbox(&at_limit).unwrap().domain().unwrap().len(),
            DOMAIN_MAX
        );
        let over = format!("a@{}", domain_of(256));
        assert_eq!(parse_mailbox(&over), Err(AddressError::DomainTooLong));
        // Through the public API the path limit comes first.
        assert_eq!(err(&over), AddressError::PathTooLong);
    }

    #[test]
    fn path_limit_at_boundary() {
        // "<" + 64 + "@" + 189 + ">" = 256 octets.
        let local = "a".repeat(64);
        let at_limit = format!("<{local}@{}>", domain_of(189));
        assert_eq!(at_limit.len(), PATH_MAX);
        parse_forward_path(&at_limit, false).unwrap();
        parse_reverse_path(&at_limit, false).unwrap().unwrap();
        Address::parse(&at_limit[1..at_limit.len() - 1], false).unwrap();
        let over = format!("<{local}@{}>", domain_of(190));
        assert_eq!(over.len(), PATH_MAX + 1);
        assert_eq!(
            parse_forward_path(&over, false),
            Err(AddressError::PathTooLong)
        );
        assert_eq!(
            parse_reverse_path(&over, false),
            Err(AddressError::PathTooLong)
        );
        assert_eq!(err(&over[1..over.len() - 1]), AddressError::PathTooLong);
    }

    #[test]
    fn source_route_counts_towards_path_length() {
        let route = format!("@{}:", domain_of(60));
        let path = format!("<{route}{}@{}>", "a".repeat(64), domain_of(130));
        assert!(path.len() > PATH_MAX);
        assert_eq!(
            parse_forward_path(&path, false),
            Err(AddressError::PathTooLong)
        );
    }

    #[test]
    fn utf8_only_when_permitted() {
        assert_eq!(err("jöran@example.com"), AddressError::Utf8NotPermitted);
        assert_eq!(err("user@exämple.com"), AddressError::Utf8NotPermitted);
        let address = Address::parse("jöran@bücher.example", true).unwrap();
        assert!(address.is_utf8());
        assert_eq!(address.local_part(), "jöran");
        assert_eq!(address.domain(), Some("bücher.example"));
        Address::parse("\"δοκιμή test\"@παράδειγμα.δοκιμή", true).unwrap();
        Address::parse("用户@例子.广告", true).unwrap();
        assert_eq!(
            parse_forward_path("<用户@例子.广告>", false),
            Err(AddressError::Utf8NotPermitted)
        );
        assert!(
            parse_forward_path("<用户@例子.广告>", true)
                .unwrap()
                .is_utf8()
        );
        assert_eq!(
            "用户@例子.广告".parse::<Address>().unwrap().as_str(),
            "用户@例子.广告"
        );
    }

    #[test]
    fn forbidden_characters() {
        for bad in ["a\r@example.com", "a@exa\nmple.com", "a\0@example.com"] {
            assert_eq!(err(bad), AddressError::ForbiddenCharacter, "{bad:?}");
            assert_eq!(
                Address::parse(bad, true).unwrap_err(),
                AddressError::ForbiddenCharacter
            );
            let path = format!("<{bad}>");
            assert_eq!(
                parse_forward_path(&path, true),
                Err(AddressError::ForbiddenCharacter)
            );
            assert_eq!(
                parse_reverse_path(&path, true),
                Err(AddressError::ForbiddenCharacter)
            );
        }
        assert_eq!(
            err("\"a\r\nb\"@example.com"),
            AddressError::ForbiddenCharacter
        );
    }

    #[test]
    fn empty_inputs() {
        assert_eq!(err(""), AddressError::Empty);
        assert_eq!(parse_reverse_path("", false), Err(AddressError::Empty));
        assert_eq!(parse_forward_path("", false), Err(AddressError::Empty));
        assert_eq!(parse_forward_path("<>", false), Err(AddressError::Empty));
        assert_eq!(parse_reverse_path("<>", false), Ok(None));
    }

    #[test]
    fn paths_need_angle_brackets() {
        for bad in [
            "user@example.com",
            "<user@example.com",
            "user@example.com>",
            "<",
            ">",
        ] {
            assert_eq!(
                parse_forward_path(bad, false),
                Err(AddressError::MissingAngleBrackets),
                "{bad:?}"
            );
            assert_eq!(
                parse_reverse_path(bad, false),
                Err(AddressError::MissingAngleBrackets),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn postmaster_any_case() {
        for path in ["<Postmaster>", "<postmaster>", "<POSTMASTER>"] {
            let address = parse_forward_path(path, false).unwrap();
            assert_eq!(address, Address::postmaster());
            assert_eq!(address.as_str(), "Postmaster");
            assert_eq!(address.local_part(), "Postmaster");
            assert_eq!(address.domain(), None);
            assert!(address.domain().is_none());
            assert!(!address.is_utf8());
        }
        let with_domain = parse_forward_path("<postmaster@example.com>", false).unwrap();
        assert_eq!(with_domain.domain(), Some("example.com"));
        // A bare Postmaster is a recipient only (RFC 5321 §4.1.1.3).
        assert_eq!(
            parse_reverse_path("<Postmaster>", false),
            Err(AddressError::MissingDomain)
        );
    }

    #[test]
    fn source_routes_are_dropped() {
        let address = parse_forward_path("<@a.example,@b.example:user@c.example>", false).unwrap();
        assert_eq!(address.as_str(), "user@c.example");
        let address = parse_reverse_path("<@a.example:user@c.example>", false)
            .unwrap()
            .unwrap();
        assert_eq!(address.as_str(), "user@c.example");
        for (bad, error) in [
            ("<@a.example>", AddressError::InvalidLocalPart),
            ("<@:user@c.example>", AddressError::InvalidDomain),
            ("<@a..example:user@c.example>", AddressError::InvalidDomain),
            (
                "<@a.example,b.example:user@c.example>",
                AddressError::InvalidDomain,
            ),
            ("<@a.example,:user@c.example>", AddressError::InvalidDomain),
            ("<@a.example:>", AddressError::Empty),
            ("<@a.example:Postmaster>", AddressError::MissingDomain),
        ] {
            assert_eq!(parse_forward_path(bad, false), Err(error), "{bad:?}");
        }
    }

    #[test]
    fn path_len_honours_quotes() {
        assert_eq!(path_len("<a@b> SIZE=1"), Some(5));
        assert_eq!(path_len("<>"), Some(2));
        assert_eq!(path_len(r#"<"a>b"@c> X"#), Some(9));
        assert_eq!(path_len(r#"<"a\">b"@c>"#), Some(11));
        assert_eq!(path_len("<a@b"), None);
        assert_eq!(path_len("a@b>"), None);
        assert_eq!(path_len(r#"<"a\"#), None);
    }

    #[test]
    fn helo_domains() {
        for good in [
            "mail.example.com",
            "localhost",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "my_pc.example",
            "192.0.2.1",
        ] {
            assert!(is_valid_helo_domain(good), "{good:?}");
        }
        for bad in ["", "-x", "a b", "[1.2.3]", "bücher.example", "x.", "a..b"] {
            assert!(!is_valid_helo_domain(bad), "{bad:?}");
        }
        assert!(!is_valid_helo_domain(&domain_of(256)));
        assert!(is_valid_helo_domain(&domain_of(255)));
    }

    #[test]
    fn error_display() {
        assert_eq!(
            AddressError::LocalPartTooLong.to_string(),
            "local part longer than 64 octets"
        );
        assert_eq!(
            AddressError::PathTooLong.to_string(),
            "path longer than 256 octets"
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(input in any::<String>(), utf8 in any::<bool>()) {
            let _ = Address::parse(&input, utf8);
            let path = format!("<{input}>");
            let _ = parse_forward_path(&path, utf8);
            let _ = parse_reverse_path(&path, utf8);
            let _ = parse_forward_path(&input, utf8);
            let _ = path_len(&input);
            let _ = is_valid_helo_domain(&input);
        }

        #[test]
        fn parsed_parts_recompose(
            local in "[a-z0-9!#$%&'*+/=?^_`{|}~-]{1,10}(\\.[a-z0-9-]{1,10}){0,3}",
            domain in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,3}",
        ) {
            let mailbox = format!("{local}@{domain}");
            let address = Address::parse(&mailbox, false).unwrap();
            prop_assert_eq!(address.local_part(), local.as_str());
            prop_assert_eq!(address.domain(), Some(domain.as_str()));
            let path = format!("<{mailbox}>");
            prop_assert_eq!(path_len(&path), Some(path.len()));
            prop_assert_eq!(parse_forward_path(&path, false).unwrap(), address);
        }
    }
}
