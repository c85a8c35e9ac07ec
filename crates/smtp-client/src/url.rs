//! Connection URLs: `smtp://`, `smtps://` and `lmtp://` with optional
//! credentials, port and query parameters (see
//! [`ClientConfig::builder_from_url`](crate::ClientConfig::builder_from_url)).

use crate::config::{Protocol, has_forbidden_byte};
use crate::error::Error;
use crate::tls::Tls;

/// The parts of a connection URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ConnectionUrl {
    pub(crate) protocol: Protocol,
    pub(crate) tls: Tls,
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
    pub(crate) credentials: Option<(String, String)>,
    pub(crate) helo: Option<String>,
}

impl ConnectionUrl {
    pub(crate) fn parse(url: &str) -> Result<ConnectionUrl, Error> {
        let bad = |why: &str| Error::invalid(format!("invalid connection URL: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected smtp://, smtps:// or lmtp://"))?;
        let (protocol, mut tls) = match scheme.to_ascii_lowercase().as_str() {
            "smtp" => (Protocol::Smtp, Tls::Required),
            "smtps" => (Protocol::Smtp, Tls::Implicit),
            "lmtp" => (Protocol::Lmtp, Tls::Opportunistic),
            _ => {
                return Err(bad(&format!(
                    "unknown scheme {scheme:?} (expected smtp, smtps or lmtp)"
                )));
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let authority = match rest.split_once('/') {
            Some((authority, "")) => authority,
            Some(_) => return Err(bad("a connection URL has no path")),
            None => rest,
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let credentials = match userinfo {
            None => None,
            Some(userinfo) => {
                let (user, password) = userinfo
                    .split_once(':')
                    .ok_or_else(|| bad("credentials need user:password"))?;
                let user = percent_decode(user).ok_or_else(|| bad("bad %-escape in the user"))?;
                let password =
                    percent_decode(password).ok_or_else(|| bad("bad %-escape in the password"))?;
                if user.is_empty() {
                    return Err(bad("empty user name"));
                }
                Some((user, password))
            }
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad("bad host or port"))?;
        if host.is_empty() || has_forbidden_byte(&host) {
            return Err(bad("no host"));
        }
        if scheme.eq_ignore_ascii_case("smtps") && query.is_some_and(|q| q.contains("tls=")) {
            return Err(bad(
                "smtps:// is always implicit TLS; use smtp:// with tls=",
            ));
        }
        let mut helo = None;
        for pair in query.into_iter().flat_map(|query| query.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or_else(|| bad("bad %-escape in the query"))?;
            match key {
                "tls" => {
                    tls = match value.to_ascii_lowercase().as_str() {
                        "none" => Tls::None,
                        "opportunistic" => Tls::Opportunistic,
                        "required" | "starttls" => Tls::Required,
                        "implicit" => Tls::Implicit,
                        _ => {
                            return Err(bad(&format!(
                                "tls={value:?}: expected none, opportunistic, required or implicit"
                            )));
                        }
                    }
                }
                "helo" => helo = Some(value),
                _ => return Err(bad(&format!("unknown parameter {key:?}"))),
            }
        }
        Ok(ConnectionUrl {
            protocol,
            tls,
            host,
            port,
            credentials,
            helo,
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            after => Some(parse_port(after.strip_prefix(':')?)?),
        };
        return Some((host.to_owned(), port));
    }
    match text.split_once(':') {
        Some((host, port)) => Some((host.to_owned(), Some(parse_port(port)?))),
        None => Some((text.to_owned(), None)),
    }
}

fn parse_port(text: &str) -> Option<u16> {
    text.parse().ok().filter(|&port| port != 0)
}

/// RFC 3986 §2.1 percent-decoding to UTF-8; `None` for a broken escape or
/// invalid UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientConfig, ErrorKind};

    fn parse(url: &str) -> ConnectionUrl {
        ConnectionUrl::parse(url).unwrap()
    }

    #[test]
    fn the_documented_forms() {
        let submission = parse("smtp://user:pass@mail.example.com:587");
        assert_eq!(submission.tls, Tls::Required);
        assert_eq!(submission.port, Some(587));
        assert_eq!(
            submission.credentials,
            Some(("user".to_owned(), "pass".to_owned()))
        );
        let implicit = parse("smtps://mail.example.com");
        assert_eq!((implicit.tls, implicit.port), (Tls::Implicit, None));
        assert_eq!(
            parse("smtp://mx.example.com:25?tls=opportunistic").tls,
            Tls::Opportunistic
        );
        assert_eq!(parse("smtp://127.0.0.1:2525?tls=none").tls, Tls::None);
        let lmtp = parse("lmtp://localhost:24");
        assert_eq!((lmtp.protocol, lmtp.port), (Protocol::Lmtp, Some(24)));
        let v6 = parse("smtp://[::1]:2525/");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", Some(2525)));
        assert_eq!(
            parse("smtp://h?helo=client.example").helo.as_deref(),
            Some("client.example")
        );
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let url = parse("smtp://alice%40example.com:p%3Ass%2Fw%25rd%C3%A9@h:587");
        assert_eq!(
            url.credentials,
            Some(("alice@example.com".to_owned(), "p:ss/w%rdé".to_owned()))
        );
        // The last @ ends the user information.
        let url = parse("smtp://a@b:c@h");
        assert_eq!(url.credentials, Some(("a@b".to_owned(), "c".to_owned())));
        assert_eq!(url.host, "h");
    }

    #[test]
    fn anything_else_is_refused() {
        for url in [
            "mail.example.com:25",
            "http://h",
            "smtp://",
            "smtp://h:0",
            "smtp://h:port",
            "smtp://h/path",
            "smtp://h?tls=maybe",
            "smtp://h?verify=no",
            "smtp://user@h",
            "smtp://u:%zz@h",
            "smtp://u:%C3@h",
            "smtps://h?tls=none",
            "smtp://:p@h",
        ] {
            let error = ClientConfig::from_url(url).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{url}");
        }
    }

    #[test]
    fn urls_become_configurations_with_the_right_ports() {
        let config = ClientConfig::from_url("smtps://mail.example.com").unwrap();
        assert_eq!(config.port(), 465);
        let config = ClientConfig::from_url("smtp://mail.example.com").unwrap();
        assert_eq!((config.port(), config.tls()), (25, Tls::Required));
        let config = ClientConfig::from_url("lmtp://127.0.0.1").unwrap();
        assert_eq!(config.port(), 24);
    }
}
