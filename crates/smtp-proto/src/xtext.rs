//! RFC 3461 §4 `xtext`, the encoding of the `ENVID`, `ORCPT` and (RFC 4954
//! §5) `AUTH=` parameter values.
//!
//! ```text
//! xtext   = *( xchar / hexchar )
//! xchar   = any ASCII CHAR between "!" (33) and "~" (126) inclusive,
//!           except for "+" and "="
//! hexchar = ASCII "+" immediately followed by two upper case
//!           hexadecimal digits
//! ```
//!
//! ```
//! use smtp_proto::xtext;
//! assert_eq!(xtext::encode("a+b=c d"), "a+2Bb+3Dc+20d");
//! assert_eq!(xtext::decode("a+2Bb+3Dc+20d").unwrap(), "a+b=c d");
//! ```

use std::borrow::Cow;
use std::fmt;

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// True for the octets that stand for themselves in xtext (RFC 3461 §4).
fn is_xchar(byte: u8) -> bool {
    crate::address::class::is(byte, crate::address::class::XCHAR)
}

/// Encodes `value` as xtext: every octet outside `xchar` (including each
/// octet of a non-ASCII character) becomes `+XX` with upper-case hex.
///
/// Encoding never fails; callers that must refuse CR, LF or NUL (they are
/// never meaningful in the parameters that use xtext) check for them first.
pub fn encode(value: &str) -> String {
    let extra = value.bytes().filter(|&b| !is_xchar(b)).count() * 2;
    let mut out = String::with_capacity(value.len() + extra);
    for byte in value.bytes() {
        if is_xchar(byte) {
            out.push(char::from(byte));
        } else {
            out.push('+');
            out.push(char::from(HEX_UPPER[usize::from(byte >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(byte & 0x0f)]));
        }
    }
    out
}

/// Decodes xtext.
///
/// Rejects octets outside 33..=126, a raw `=`, a `+` not followed by two
/// upper-case hex digits, an encoded CR, LF or NUL (they would let a peer
/// smuggle line breaks into DSN fields built from the value), and a result
/// that is not UTF-8.
pub fn decode(xtext: &str) -> Result<String, XtextError> {
    decode_borrowed(xtext).map(Cow::into_owned)
}

/// [`decode`], borrowing the value when it encodes nothing (most ENVIDs
/// and plain addresses do).
pub(crate) fn decode_borrowed(xtext: &str) -> Result<Cow<'_, str>, XtextError> {
    let bytes = xtext.as_bytes();
    if is_plain(bytes) {
        return Ok(Cow::Borrowed(xtext));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b'+' => {
                let high = bytes.get(index + 1).and_then(|&b| hex_value(b));
                let low = bytes.get(index + 2).and_then(|&b| hex_value(b));
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(XtextError::new(XtextErrorKind::BadHexchar));
                };
                let decoded = (high << 4) | low;
                if matches!(decoded, b'\r' | b'\n' | 0) {
                    return Err(XtextError::new(XtextErrorKind::ForbiddenCharacter));
                }
                out.push(decoded);
                index += 3;
            }
            b'\r' | b'\n' | 0 => {
                return Err(XtextError::new(XtextErrorKind::ForbiddenCharacter));
            }
            b'=' => return Err(XtextError::new(XtextErrorKind::RawEquals)),
            _ if is_xchar(byte) => {
                out.push(byte);
                index += 1;
            }
            _ => return Err(XtextError::new(XtextErrorKind::OutOfRange)),
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| XtextError::new(XtextErrorKind::NotUtf8))
}

/// Whether every octet is an xchar (33..=126 but `+` and `=`): lane-wise
/// over fixed blocks with the tail padded by an xchar, which the compiler
/// vectorises (a table lookup per octet does not).
fn is_plain(bytes: &[u8]) -> bool {
    let not_xchar = |b: u8| u8::from((b.wrapping_sub(33) >= 94) | (b == b'+') | (b == b'='));
    let mut any = [0u8; 16];
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        for k in 0..16 {
            any[k] |= not_xchar(block[k]);
        }
    }
    let tail = blocks.remainder();
    let mut padded = [b'x'; 16];
    padded[..tail.len()].copy_from_slice(tail);
    for k in 0..16 {
        any[k] |= not_xchar(padded[k]);
    }
    any.iter().fold(0, |all, &lane| all | lane) == 0
}

/// Upper-case hex digit only: RFC 3461 §4 says "two upper case hexadecimal
/// digits".
fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// A value that is not valid xtext (RFC 3461 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XtextError {
    kind: XtextErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XtextErrorKind {
    BadHexchar,
    RawEquals,
    OutOfRange,
    ForbiddenCharacter,
    NotUtf8,
}

impl XtextError {
    fn new(kind: XtextErrorKind) -> Self {
        Self { kind }
    }
}

impl fmt::Display for XtextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            XtextErrorKind::BadHexchar => "'+' must be followed by two upper-case hex digits",
            XtextErrorKind::RawEquals => "'=' must be encoded as +3D",
            XtextErrorKind::OutOfRange => "character outside '!' to '~' must be hex-encoded",
            XtextErrorKind::ForbiddenCharacter => "CR, LF or NUL is not allowed",
            XtextErrorKind::NotUtf8 => "decoded value is not UTF-8",
        })
    }
}

impl std::error::Error for XtextError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_check_agrees_with_the_xchar_class() {
        for byte in 0..=255u8 {
            assert_eq!(is_plain(&[byte]), is_xchar(byte), "octet {byte}");
            // Every position of every block and of the padded tail.
            for len in [15, 16, 17, 33, 40] {
                for at in 0..len {
                    let mut value = vec![b'a'; len];
                    value[at] = byte;
                    assert_eq!(
                        is_plain(&value),
                        is_xchar(byte),
                        "octet {byte} at {at} of {len}"
                    );
                }
            }
        }
        assert!(is_plain(b""));
    }
    use proptest::prelude::*;

    #[test]
    fn encodes_plus_equals_space_and_controls() {
        assert_eq!(encode("user+tag@example.com"), "user+2Btag@example.com");
        assert_eq!(encode("a=b"), "a+3Db");
        assert_eq!(encode("a b\t"), "a+20b+09");
        assert_eq!(encode("\u{7f}"), "+7F");
        assert_eq!(encode(""), "");
    }

    #[test]
    fn encodes_each_utf8_octet() {
        assert_eq!(encode("é"), "+C3+A9");
    }

    #[test]
    fn decodes_valid_xtext() {
        assert_eq!(
            decode("user+2Btag@example.com").unwrap(),
            "user+tag@example.com"
        );
        assert_eq!(decode("+C3+A9").unwrap(), "é");
        assert_eq!(decode("<>").unwrap(), "<>");
        assert_eq!(decode("").unwrap(), "");
    }

    #[test]
    fn rejects_lowercase_and_short_hex() {
        assert_eq!(decode("a+2b").unwrap_err().kind, XtextErrorKind::BadHexchar);
        assert_eq!(decode("a+2").unwrap_err().kind, XtextErrorKind::BadHexchar);
        assert_eq!(decode("a+").unwrap_err().kind, XtextErrorKind::BadHexchar);
        assert_eq!(decode("+G0").unwrap_err().kind, XtextErrorKind::BadHexchar);
    }

    #[test]
    fn rejects_raw_equals_space_and_non_ascii() {
        assert_eq!(decode("a=b").unwrap_err().kind, XtextErrorKind::RawEquals);
        assert_eq!(decode("a b").unwrap_err().kind, XtextErrorKind::OutOfRange);
        assert_eq!(decode("é").unwrap_err().kind, XtextErrorKind::OutOfRange);
        assert_eq!(
            decode("\u{7f}").unwrap_err().kind,
            XtextErrorKind::OutOfRange
        );
    }

    #[test]
    fn rejects_cr_lf_nul_raw_and_encoded() {
        for bad in ["a\rb", "a\nb", "a\0b", "+0D", "+0A", "+00"] {
            assert_eq!(
                decode(bad).unwrap_err().kind,
                XtextErrorKind::ForbiddenCharacter,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_invalid_utf8_result() {
        assert_eq!(decode("+C3").unwrap_err().kind, XtextErrorKind::NotUtf8);
        assert_eq!(decode("+FF").unwrap_err().kind, XtextErrorKind::NotUtf8);
    }

    #[test]
    fn error_displays_a_reason() {
        assert!(decode("a=b").unwrap_err().to_string().contains("+3D"));
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(value in "[^\r\n\u{0}]*") {
            let encoded = encode(&value);
            prop_assert!(encoded.bytes().all(|b| (33..=126).contains(&b)));
            prop_assert_eq!(decode(&encoded).unwrap(), value);
        }

        #[test]
        fn decode_never_panics(value in any::<String>()) {
            let _ = decode(&value);
        }
    }
}
