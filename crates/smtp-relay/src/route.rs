//! Routing: which next hop a recipient's domain goes to.
//!
//! In this order (first match wins): a static route sends its domain to a
//! fixed host (a local domain too); a local domain is delivered locally; a
//! smarthost takes
//! everything else; without one, the domain's MX records decide
//! (RFC 5321 §5.1).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use smtp_client::{Credentials, TlsConfig};

use crate::receive::RelayAccess;

/// A host and port, as given by `HOST:PORT` or `[IP]:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// A DNS name or an IP address (without brackets).
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = String;

    /// Parses `HOST:PORT`, `IP:PORT`, `[IPv4]:PORT` or `[IPv6]:PORT`.
    ///
    /// ```
    /// use smtp_relay::route::HostPort;
    /// let hop: HostPort = "[::1]:2526".parse().unwrap();
    /// assert_eq!((hop.host.as_str(), hop.port), ("::1", 2526));
    /// let hop: HostPort = "smtp.example.net:587".parse().unwrap();
    /// assert_eq!(hop.host, "smtp.example.net");
    /// assert!("smtp.example.net".parse::<HostPort>().is_err());
    /// ```
    fn from_str(text: &str) -> Result<Self, String> {
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (ip, port) = rest
                .split_once("]:")
                .ok_or_else(|| format!("{text:?}: expected [IP]:PORT"))?;
            ip.parse::<IpAddr>()
                .map_err(|_| format!("{text:?}: {ip:?} is not an IP address"))?;
            (ip, port)
        } else {
            text.rsplit_once(':')
                .ok_or_else(|| format!("{text:?}: expected HOST:PORT"))?
        };
        if host.is_empty() || host.contains(':') && !text.starts_with('[') {
            return Err(format!("{text:?}: expected HOST:PORT (IPv6 as [IP]:PORT)"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{text:?}: {port:?} is not a port"))?;
        if port == 0 {
            return Err(format!("{text:?}: port 0"));
        }
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How the relay talks to its smarthost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmarthostTls {
    /// `STARTTLS`, required (no plaintext fallback).
    Starttls,
    /// TLS from the first byte (RFC 8314, port 465).
    Implicit,
    /// Plaintext, or STARTTLS when offered; only without credentials.
    Opportunistic,
}

/// A smarthost: the next hop for every domain without a local delivery or
/// a route.
#[derive(Clone)]
pub struct Smarthost {
    /// Where it listens.
    pub address: HostPort,
    /// How to protect the connection.
    pub tls: SmarthostTls,
    /// Credentials for `AUTH`; only sent over TLS.
    pub credentials: Option<Credentials>,
    /// Certificates to trust (default: the Mozilla roots); the host name is
    /// always verified.
    pub tls_config: TlsConfig,
}

impl fmt::Debug for Smarthost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smarthost")
            .field("address", &self.address)
            .field("tls", &self.tls)
            .field("credentials", &self.credentials.as_ref().map(|_| "****"))
            .finish_non_exhaustive()
    }
}

/// Where a recipient goes next. Also the unit of per-destination
/// concurrency limits and of connection-level backoff.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A local domain: into the local store.
    Local,
    /// A static route (`--route DOMAIN=HOST:PORT`).
    Route(HostPort),
    /// The smarthost.
    Smarthost,
    /// Direct delivery to the domain's mail exchangers (lower-cased).
    Mx(String),
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Local => f.write_str("local"),
            Destination::Route(hop) => write!(f, "route {hop}"),
            Destination::Smarthost => f.write_str("smarthost"),
            Destination::Mx(domain) => write!(f, "MX of {domain}"),
        }
    }
}

/// Picks the [`Destination`] of each recipient.
///
/// ```
/// use smtp_relay::receive::RelayAccess;
/// use smtp_relay::route::{Destination, Router};
/// let mut router = Router::new(RelayAccess::new(["example.net"], []));
/// router.add_route("partner.example", "[127.0.0.1]:2526".parse().unwrap());
/// assert_eq!(router.route("bob@Example.NET"), Destination::Local);
/// assert!(matches!(router.route("ann@partner.example"), Destination::Route(_)));
/// assert_eq!(router.route("eve@example.org"), Destination::Mx("example.org".into()));
/// ```
#[derive(Debug, Clone)]
pub struct Router {
    access: RelayAccess,
    routes: HashMap<String, HostPort>,
    smarthost: Option<Smarthost>,
}

impl Router {
    /// A router with the local domains of `access`, no routes and no
    /// smarthost.
    pub fn new(access: RelayAccess) -> Self {
        Self {
            access,
            routes: HashMap::new(),
            smarthost: None,
        }
    }

    /// Sends `domain` (compared without regard to ASCII case) to `hop`.
    pub fn add_route(&mut self, domain: &str, hop: HostPort) {
        self.routes
            .insert(domain.trim_end_matches('.').to_ascii_lowercase(), hop);
    }

    /// Sends everything not local and not routed to `smarthost`.
    pub fn set_smarthost(&mut self, smarthost: Smarthost) {
        self.smarthost = Some(smarthost);
    }

    /// The smarthost, if any.
    pub fn smarthost(&self) -> Option<&Smarthost> {
        self.smarthost.as_ref()
    }

    /// Where `recipient` (a mailbox) goes.
    pub fn route(&self, recipient: &str) -> Destination {
        let domain = recipient
            .rsplit_once('@')
            .map_or("", |(_, domain)| domain)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        // A route wins even for a local domain: that is how local mail
        // goes to a mailbox server instead of the local Maildir.
        if let Some(hop) = self.routes.get(&domain) {
            Destination::Route(hop.clone())
        } else if self.access.is_local_domain(&domain) {
            Destination::Local
        } else if self.smarthost.is_some() {
            Destination::Smarthost
        } else {
            Destination::Mx(domain)
        }
    }
}
