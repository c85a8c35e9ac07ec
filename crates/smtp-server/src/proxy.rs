//! PROXY protocol v1 and v2 header decoding (HAProxy's "PROXY protocol"
//! specification), sans-IO.
//!
//! A trusted proxy sends the header first on the connection, before any
//! SMTP byte; it tells the server who the real client is.
//!
//! ```
//! use smtp_server::proxy::{decode, ProxyHeader};
//! let input = b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 25\r\nEHLO x\r\n";
//! let (header, used) = decode(input, 4096).unwrap().unwrap();
//! assert_eq!(used, 44);
//! match header {
//!     ProxyHeader::Proxied(addrs) => assert_eq!(addrs.source.to_string(), "192.0.2.1:40000"),
//!     other => panic!("{other:?}"),
//! }
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::session::ProxiedAddresses;

/// The 12-octet signature that starts a v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, `<CRLF>` included (specification §2.1).
pub const V1_MAX: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_FIXED: usize = 16;

/// A decoded PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The proxy relays a TCP connection from `source` to `destination`.
    Proxied(ProxiedAddresses),
    /// v2 `LOCAL`: the proxy speaks for itself (health checks); use the
    /// transport addresses.
    Local,
    /// v1 `UNKNOWN` or a v2 address family other than TCP over IPv4/IPv6:
    /// the original addresses are not known; use the transport addresses.
    Unknown,
}

/// Why a PROXY header was refused. The connection should be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// The input does not start with a v1 or v2 signature.
    NotProxy,
    /// The header is longer than allowed.
    TooLong,
    /// The header is malformed; the text says where.
    Malformed(&'static str),
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotProxy => f.write_str("no PROXY protocol header"),
            Self::TooLong => f.write_str("PROXY protocol header too long"),
            Self::Malformed(what) => write!(f, "malformed PROXY protocol header: {what}"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Decodes a header at the start of `input`.
///
/// Returns `Ok(None)` when more bytes are needed, or the header and the
/// number of octets it used. `max` caps the v2 header length (a v1 header
/// is capped at [`V1_MAX`] whatever `max` says).
pub fn decode(input: &[u8], max: usize) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let Some(&first) = input.first() else {
        return Ok(None);
    };
    match first {
        b'P' => decode_v1(input),
        b'\r' => decode_v2(input, max),
        _ => Err(ProxyError::NotProxy),
    }
}

fn decode_v1(input: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let prefix = input.len().min(V1_PREFIX.len());
    if input[..prefix] != V1_PREFIX[..prefix] {
        return Err(ProxyError::NotProxy);
    }
    let window = &input[..input.len().min(V1_MAX)];
    let Some(end) = memchr_crlf(window) else {
        if input.len() >= V1_MAX {
            return Err(ProxyError::TooLong);
        }
        // A CR or LF that does not start a CRLF is not allowed in the line.
        if window
            .iter()
            .enumerate()
            .any(|(index, &byte)| byte == b'\n' || (byte == b'\r' && index + 1 < window.len()))
        {
            return Err(ProxyError::Malformed("bare CR or LF"));
        }
        return Ok(None);
    };
    let line = &input[V1_PREFIX.len()..end];
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("not ASCII"))?;
    if line.bytes().any(|byte| byte == b'\r' || byte == b'\n') {
        return Err(ProxyError::Malformed("bare CR or LF"));
    }
    let used = end + 2;
    let mut fields = line.split(' ');
    let protocol = fields.next().unwrap_or_default();
    if protocol == "UNKNOWN" {
        return Ok(Some((ProxyHeader::Unknown, used)));
    }
    let v6 = match protocol {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyError::Malformed("unknown protocol")),
    };
    let (Some(source), Some(destination), Some(source_port), Some(destination_port), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::Malformed("wrong number of fields"));
    };
    let source = parse_ip(source, v6)?;
    let destination = parse_ip(destination, v6)?;
    let source_port = parse_port(source_port)?;
    let destination_port = parse_port(destination_port)?;
    Ok(Some((
        ProxyHeader::Proxied(ProxiedAddresses {
            source: SocketAddr::new(source, source_port),
            destination: SocketAddr::new(destination, destination_port),
        }),
        used,
    )))
}

fn memchr_crlf(input: &[u8]) -> Option<usize> {
    input.windows(2).position(|pair| pair == b"\r\n")
}

fn parse_ip(text: &str, v6: bool) -> Result<IpAddr, ProxyError> {
    if v6 {
        text.parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyError::Malformed("bad IPv6 address"))
    } else {
        text.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| ProxyError::Malformed("bad IPv4 address"))
    }
}

fn parse_port(text: &str) -> Result<u16, ProxyError> {
    // Ports are plain decimal: no sign, no leading zero (§2.1).
    let valid = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|byte| byte.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !valid {
        return Err(ProxyError::Malformed("bad port"));
    }
    text.parse::<u16>()
        .map_err(|_| ProxyError::Malformed("bad port"))
}

fn decode_v2(input: &[u8], max: usize) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let prefix = input.len().min(V2_SIGNATURE.len());
    if input[..prefix] != V2_SIGNATURE[..prefix] {
        return Err(ProxyError::NotProxy);
    }
    if input.len() < V2_FIXED {
        return Ok(None);
    }
    let version_command = input[12];
    if version_command >> 4 != 2 {
        return Err(ProxyError::Malformed("unsupported version"));
    }
    let command = version_command & 0x0f;
    if command > 1 {
        return Err(ProxyError::Malformed("unknown command"));
    }
    let family = input[13];
    let length = usize::from(u16::from_be_bytes([input[14], input[15]]));
    let total = V2_FIXED + length;
    if total > max.max(V2_FIXED + 36) {
        return Err(ProxyError::TooLong);
    }
    if input.len() < total {
        return Ok(None);
    }
    if command == 0 {
        return Ok(Some((ProxyHeader::Local, total)));
    }
    let body = &input[V2_FIXED..total];
    let header = match family {
        // AF_INET over STREAM
        0x11 => {
            if body.len() < 12 {
                return Err(ProxyError::Malformed("short IPv4 address block"));
            }
            let source = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let destination = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            proxied(
                IpAddr::V4(source),
                IpAddr::V4(destination),
                [body[8], body[9]],
                [body[10], body[11]],
            )
        }
        // AF_INET6 over STREAM
        0x21 => {
            if body.len() < 36 {
                return Err(ProxyError::Malformed("short IPv6 address block"));
            }
            let mut source = [0u8; 16];
            source.copy_from_slice(&body[..16]);
            let mut destination = [0u8; 16];
            destination.copy_from_slice(&body[16..32]);
            proxied(
                IpAddr::V6(Ipv6Addr::from(source)),
                IpAddr::V6(Ipv6Addr::from(destination)),
                [body[32], body[33]],
                [body[34], body[35]],
            )
        }
        // AF_UNSPEC, UDP, UNIX sockets: nothing usable for SMTP.
        0x00 | 0x12 | 0x22 | 0x31 | 0x32 => ProxyHeader::Unknown,
        _ => return Err(ProxyError::Malformed("unknown address family")),
    };
    Ok(Some((header, total)))
}

fn proxied(source: IpAddr, destination: IpAddr, sport: [u8; 2], dport: [u8; 2]) -> ProxyHeader {
    ProxyHeader::Proxied(ProxiedAddresses {
        source: SocketAddr::new(source, u16::from_be_bytes(sport)),
        destination: SocketAddr::new(destination, u16::from_be_bytes(dport)),
    })
}

/// Encodes a v2 header for a TCP connection from `source` to
/// `destination`. For tests and for proxies written with this crate.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let to_v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&to_v6(s).octets());
            out.extend_from_slice(&to_v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(header: ProxyHeader) -> (String, String) {
        match header {
            ProxyHeader::Proxied(a) => (a.source.to_string(), a.destination.to_string()),
            other => panic!("not proxied: {other:?}"),
        }
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let (h, used) = decode(b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 25\r\nrest", 4096)
            .unwrap()
            .unwrap();
        assert_eq!(used, 36);
        assert_eq!(addrs(h), ("1.2.3.4:1111".into(), "5.6.7.8:25".into()));
        let (h, _) = decode(b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n", 4096)
            .unwrap()
            .unwrap();
        assert_eq!(addrs(h), ("[2001:db8::1]:65535".into(), "[::1]:0".into()));
    }

    #[test]
    fn v1_unknown() {
        let (h, used) = decode(b"PROXY UNKNOWN whatever\r\n", 4096)
            .unwrap()
            .unwrap();
        assert_eq!(h, ProxyHeader::Unknown);
        assert_eq!(used, 24);
    }

    #[test]
    fn v1_needs_more_at_every_split() {
        let full = b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 25\r\n";
        for cut in 0..full.len() {
            assert_eq!(decode(&full[..cut], 4096), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn v1_rejects_bad_input() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 25 9\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1111 25\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1111 25\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 25\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 011 25\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +11 25\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 11 25\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 11 25\r\n",
            b"PROXY TCP4 1.2.3.4\n5.6.7.8 11 25\r\n",
        ];
        for input in bad {
            assert!(
                matches!(decode(input, 4096), Err(ProxyError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(decode(b"EHLO x\r\n", 4096), Err(ProxyError::NotProxy));
        assert_eq!(decode(b"PROXX", 4096), Err(ProxyError::NotProxy));
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 120]].concat();
        assert_eq!(decode(&long, 4096), Err(ProxyError::TooLong));
    }

    #[test]
    fn v2_round_trip_and_splits() {
        let source: SocketAddr = "192.0.2.7:4321".parse().unwrap();
        let destination: SocketAddr = "198.51.100.1:25".parse().unwrap();
        let mut header = encode_v2(source, destination);
        let len = header.len();
        header.extend_from_slice(b"EHLO");
        let (h, used) = decode(&header, 4096).unwrap().unwrap();
        assert_eq!(used, len);
        assert_eq!(addrs(h), (source.to_string(), destination.to_string()));
        for cut in 0..len {
            assert_eq!(decode(&header[..cut], 4096), Ok(None), "cut at {cut}");
        }
        let source6: SocketAddr = "[2001:db8::7]:1".parse().unwrap();
        let destination6: SocketAddr = "[2001:db8::1]:587".parse().unwrap();
        let header = encode_v2(source6, destination6);
        let (h, used) = decode(&header, 4096).unwrap().unwrap();
        assert_eq!(used, 16 + 36);
        assert_eq!(addrs(h), (source6.to_string(), destination6.to_string()));
    }

    #[test]
    fn v2_local_unknown_tlvs_and_caps() {
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(decode(&local, 4096), Ok(Some((ProxyHeader::Local, 16))));

        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0x00, 0xd8]);
        unix.extend_from_slice(&[0u8; 216]);
        assert_eq!(decode(&unix, 4096), Ok(Some((ProxyHeader::Unknown, 232))));

        // TLVs after the addresses are skipped.
        let mut tlv = encode_v2("1.1.1.1:1".parse().unwrap(), "2.2.2.2:2".parse().unwrap());
        tlv[15] += 7;
        tlv.extend_from_slice(&[0x04, 0x00, 0x04, b'a', b'b', b'c', b'd']);
        let (_, used) = decode(&tlv, 4096).unwrap().unwrap();
        assert_eq!(used, tlv.len());

        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(decode(&big, 4096), Err(ProxyError::TooLong));

        let mut bad_version = V2_SIGNATURE.to_vec();
        bad_version.extend_from_slice(&[0x11, 0x11, 0x00, 0x0c]);
        assert!(matches!(
            decode(&bad_version, 4096),
            Err(ProxyError::Malformed(_))
        ));

        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]);
        assert!(matches!(
            decode(&short, 4096),
            Err(ProxyError::Malformed(_))
        ));

        let mut wrong_sig = V2_SIGNATURE.to_vec();
        wrong_sig[5] = b'x';
        assert_eq!(decode(&wrong_sig, 4096), Err(ProxyError::NotProxy));
    }
}
