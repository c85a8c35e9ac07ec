//! MX resolution per RFC 5321 §5.1, and address look-ups for configured
//! next hops.
//!
//! [`MxResolver::resolve`] turns a recipient domain into the ordered list of
//! hosts to try, each with all its addresses:
//!
//! - MX records sorted by preference, lowest first; hosts of equal
//!   preference in random order (RFC 5321 §5.1: "the sender-SMTP MUST
//!   randomize them to spread the load"). The randomness comes from a seed
//!   that tests fix with [`MxResolverBuilder::seed`].
//! - No MX records: the domain itself is the only host, preference 0 (the
//!   "implicit MX", RFC 5321 §5.1).
//! - A null MX (RFC 7505 §3, a single MX whose exchange is `.`): a
//!   permanent error, `556 5.1.10` (RFC 7505 §4.2, RFC 7505 §5).
//! - The domain does not exist (NXDOMAIN): permanent, `550 5.1.2`.
//! - The domain exists but has neither MX nor address records: permanent,
//!   `550 5.4.4`.
//! - SERVFAIL, REFUSED, time-outs and network errors: temporary,
//!   `451 4.4.3`, so the message is deferred, never bounced.
//! - An MX host without any address is skipped (RFC 5321 §5.1); when every
//!   host is skipped the error is temporary (`451 4.4.4`, or `451 4.4.3`
//!   when a look-up failed).
//! - CNAMEs are followed by the resolver, for the domain and for MX hosts.
//! - A domain literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`, RFC 5321
//!   §4.1.3) is delivered to that address without DNS.
//!
//! Addresses of one host are listed IPv4 first, then IPv6, each family in
//! the order the DNS gave them; the caller tries every address of a host
//! before the next host.
//!
//! [`MxResolver::lookup_host`] resolves a configured host name (a static
//! route or a smarthost) to its addresses.
//!
//! ```no_run
//! # async fn demo() -> Result<(), smtp_relay::dns::DnsError> {
//! use smtp_relay::dns::MxResolver;
//!
//! let resolver = MxResolver::builder()
//!     .server("127.0.0.1:5353".parse().unwrap())
//!     .build()?;
//! match resolver.resolve("example.test").await {
//!     Ok(targets) => {
//!         for target in targets {
//!             println!("{} (pref {}): {:?}", target.exchange, target.preference, target.addresses);
//!         }
//!     }
//!     Err(error) if error.is_permanent() => println!("bounce: {}", error.reply()),
//!     Err(error) => println!("defer: {}", error.reply()),
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as ResolverDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use smtp_proto::{EnhancedCode, Reply};

/// One host to deliver to, with every address it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxTarget {
    /// The host name in ASCII (A-label) form without the trailing dot, as
    /// used for TLS server names; for a domain literal, the literal as
    /// written (`[192.0.2.1]`).
    pub exchange: String,
    /// The MX preference; 0 for an implicit MX and for a domain literal.
    pub preference: u16,
    /// The addresses: IPv4 first, then IPv6. Never empty.
    pub addresses: Vec<IpAddr>,
    /// True when the host is the domain itself because it has no MX
    /// records (RFC 5321 §5.1), or a domain literal.
    pub implicit: bool,
}

/// What went wrong, which decides whether to bounce or to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DnsErrorKind {
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    /// Permanent, `556 5.1.10`.
    NullMx,
    /// The domain does not exist (NXDOMAIN). Permanent, `550 5.1.2`.
    NoSuchDomain,
    /// The domain exists but has no MX and no address records, so there is
    /// no implicit MX either. Permanent, `550 5.4.4`.
    NoMailHost,
    /// Not a valid domain name or address literal. Permanent, `550 5.1.2`.
    InvalidDomain,
    /// Every MX host (or the configured host of [`MxResolver::lookup_host`])
    /// has no address. Temporary, `451 4.4.4`: DNS data for mail hosts is
    /// often fixed within the queue lifetime.
    NoAddress,
    /// A DNS failure: SERVFAIL, REFUSED, a time-out or a network error.
    /// Temporary, `451 4.4.3`.
    Temporary,
}

/// A DNS failure, classified as permanent or temporary, with the reply and
/// enhanced status code the relay reports for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsError {
    kind: DnsErrorKind,
    name: String,
    detail: String,
}

impl DnsError {
    fn new(kind: DnsErrorKind, name: &str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            detail: detail.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> DnsErrorKind {
        self.kind
    }

    /// The domain or host name that was being resolved, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when retrying cannot help: the recipient fails at once.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.kind,
            DnsErrorKind::NullMx
                | DnsErrorKind::NoSuchDomain
                | DnsErrorKind::NoMailHost
                | DnsErrorKind::InvalidDomain
        )
    }

    /// True when the recipient should be deferred and tried again later.
    pub fn is_temporary(&self) -> bool {
        !self.is_permanent()
    }

    /// The three-digit reply code reported for this error.
    pub fn code(&self) -> u16 {
        match self.kind {
            DnsErrorKind::NullMx => 556,
            DnsErrorKind::NoSuchDomain | DnsErrorKind::NoMailHost | DnsErrorKind::InvalidDomain => {
                550
            }
            DnsErrorKind::NoAddress | DnsErrorKind::Temporary => 451,
        }
    }

    /// The RFC 3463 enhanced status code reported for this error.
    pub fn enhanced_code(&self) -> EnhancedCode {
        match self.kind {
            // RFC 7505 §5 registers 5.1.10 "Recipient address has null MX".
            DnsErrorKind::NullMx => EnhancedCode::new(5, 1, 10),
            // RFC 3463 §3.2: X.1.2 "Bad destination system address".
            DnsErrorKind::NoSuchDomain | DnsErrorKind::InvalidDomain => EnhancedCode::new(5, 1, 2),
            // RFC 3463 §3.5: X.4.4 "Unable to route".
            DnsErrorKind::NoMailHost => EnhancedCode::new(5, 4, 4),
            DnsErrorKind::NoAddress => EnhancedCode::new(4, 4, 4),
            // RFC 3463 §3.5: X.4.3 "Directory server failure".
            DnsErrorKind::Temporary => EnhancedCode::new(4, 4, 3),
        }
    }

    /// A one-line human-readable explanation, e.g. `example.test: domain
    /// does not exist (NXDOMAIN)`.
    pub fn diagnostic(&self) -> String {
        format!("{}: {}", self.name, self.detail)
    }

    /// The error as an SMTP reply, for the queue's "last reply" and for a
    /// DSN's Diagnostic-Code, e.g. `556 5.1.10 nullmx.test: domain accepts
    /// no mail (null MX, RFC 7505)`.
    pub fn reply(&self) -> Reply {
        Reply::new(self.code(), self.enhanced_code(), self.diagnostic())
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.code(),
            self.enhanced_code(),
            self.diagnostic()
        )
    }
}

impl std::error::Error for DnsError {}

/// Where the resolver sends its queries.
#[derive(Debug, Clone)]
enum Source {
    System,
    Server(SocketAddr),
}

/// Configures an [`MxResolver`].
#[derive(Debug, Clone)]
pub struct MxResolverBuilder {
    source: Source,
    timeout: Option<Duration>,
    attempts: Option<usize>,
    seed: Option<u64>,
}

impl MxResolverBuilder {
    /// Sends every query to this recursive resolver over UDP, falling back
    /// to TCP for truncated answers (`--dns-server IP:PORT`). Without it the
    /// system configuration (`/etc/resolv.conf`) is used. With a given
    /// server the hosts file is not consulted.
    pub fn server(mut self, addr: SocketAddr) -> Self {
        self.source = Source::Server(addr);
        self
    }

    /// How long to wait for one answer before trying again or giving up
    /// (default: the system's, or 5 seconds with [`server`](Self::server)).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How many times to try each query (default: the system's, or 2).
    pub fn attempts(mut self, attempts: usize) -> Self {
        self.attempts = Some(attempts.max(1));
        self
    }

    /// Fixes the seed that orders MX hosts of equal preference, so tests
    /// see a reproducible order. Without it the seed is random.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Builds the resolver. Fails (temporarily) only when the system
    /// configuration cannot be read.
    pub fn build(self) -> Result<MxResolver, DnsError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match self.source {
            Source::System => TokioResolver::builder(provider).map_err(|error| {
                DnsError::new(
                    DnsErrorKind::Temporary,
                    "resolver",
                    format!("cannot read the system DNS configuration: {error}"),
                )
            })?,
            Source::Server(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                let mut opts = ResolverOpts::default();
                opts.use_hosts_file = ResolveHosts::Never;
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    provider,
                )
                .with_options(opts)
            }
        };
        let opts = builder.options_mut();
        if let Some(timeout) = self.timeout {
            opts.timeout = timeout;
        }
        if let Some(attempts) = self.attempts {
            opts.attempts = attempts;
        }
        // Retry over TCP when a UDP answer is an error, which also covers
        // servers that mishandle EDNS over UDP.
        opts.try_tcp_on_error = true;
        let resolver = builder.build().map_err(|error| {
            DnsError::new(
                DnsErrorKind::Temporary,
                "resolver",
                format!("cannot set up the DNS resolver: {error}"),
            )
        })?;
        let seed = self
            .seed
            .unwrap_or_else(|| RandomState::new().hash_one(std::time::SystemTime::now()));
        Ok(MxResolver {
            resolver,
            rng: Mutex::new(SplitMix64(seed)),
        })
    }
}

/// Resolves recipient domains to delivery targets (RFC 5321 §5.1) and host
/// names to addresses. Cheap to share behind an `Arc`; answers are cached
/// by the underlying resolver for their TTL.
pub struct MxResolver {
    resolver: TokioResolver,
    rng: Mutex<SplitMix64>,
}

impl fmt::Debug for MxResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MxResolver").finish_non_exhaustive()
    }
}

impl MxResolver {
    /// Starts configuring a resolver; by default it uses the system
    /// configuration.
    pub fn builder() -> MxResolverBuilder {
        MxResolverBuilder {
            source: Source::System,
            timeout: None,
            attempts: None,
            seed: None,
        }
    }

    /// A resolver with the system configuration (`/etc/resolv.conf`).
    pub fn system() -> Result<Self, DnsError> {
        Self::builder().build()
    }

    /// A resolver that asks only `addr` (`--dns-server IP:PORT`).
    pub fn with_server(addr: SocketAddr) -> Result<Self, DnsError> {
        Self::builder().server(addr).build()
    }

    /// The hosts to try for mail to `domain`, in order. See the module
    /// documentation for every rule. `domain` may be a U-label (it is
    /// converted to its A-label form), may end with a dot, or may be a
    /// domain literal.
    pub async fn resolve(&self, domain: &str) -> Result<Vec<MxTarget>, DnsError> {
        if let Some(literal) = parse_literal(domain)? {
            return Ok(vec![MxTarget {
                exchange: domain.to_owned(),
                preference: 0,
                addresses: vec![literal],
                implicit: true,
            }]);
        }
        let name = parse_name(domain)?;
        let mut exchanges: Vec<(u16, Name)> = match self.resolver.mx_lookup(name.clone()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.clone())),
                    _ => None,
                })
                .collect(),
            Err(error) => match classify(&error) {
                Failure::NxDomain => {
                    return Err(DnsError::new(
                        DnsErrorKind::NoSuchDomain,
                        domain,
                        "domain does not exist (NXDOMAIN)",
                    ));
                }
                Failure::NoData => Vec::new(),
                Failure::Temporary(detail) => {
                    return Err(DnsError::new(
                        DnsErrorKind::Temporary,
                        domain,
                        format!("MX lookup failed: {detail}"),
                    ));
                }
            },
        };
        if exchanges.is_empty() {
            return self.implicit_mx(domain, name).await;
        }
        // RFC 7505 §3: a null MX is the only MX of the domain and names the
        // root. Other MX records naming the root cannot be delivered to and
        // are dropped.
        if exchanges.len() == 1 && exchanges[0].1.is_root() {
            return Err(DnsError::new(
                DnsErrorKind::NullMx,
                domain,
                "domain accepts no mail (null MX, RFC 7505)",
            ));
        }
        exchanges.retain(|(_, exchange)| !exchange.is_root());
        // A host listed twice keeps its most preferred entry.
        exchanges.sort_by_key(|(preference, _)| *preference);
        let mut seen = Vec::<Name>::new();
        exchanges.retain(|(_, exchange)| {
            let fresh = !seen.contains(exchange);
            if fresh {
                seen.push(exchange.clone());
            }
            fresh
        });
        self.shuffle_equal_preferences(&mut exchanges);

        let lookups = exchanges
            .iter()
            .map(|(_, exchange)| self.addresses(exchange.clone()));
        let results = futures::future::join_all(lookups).await;
        let mut targets = Vec::new();
        let mut failures = Vec::new();
        let mut temporary = false;
        for ((preference, exchange), result) in exchanges.into_iter().zip(results) {
            let host = host_text(&exchange);
            match result {
                Ok(addresses) if !addresses.is_empty() => targets.push(MxTarget {
                    exchange: host,
                    preference,
                    addresses,
                    implicit: false,
                }),
                Ok(_) => failures.push(format!("{host}: no address")),
                Err(AddressFailure::NxDomain) => {
                    failures.push(format!("{host}: host does not exist"));
                }
                Err(AddressFailure::Temporary(detail)) => {
                    temporary = true;
                    failures.push(format!("{host}: {detail}"));
                }
            }
        }
        if targets.is_empty() {
            let kind = if temporary {
                DnsErrorKind::Temporary
            } else {
                DnsErrorKind::NoAddress
            };
            return Err(DnsError::new(
                kind,
                domain,
                format!("no MX host has an address ({})", failures.join("; ")),
            ));
        }
        Ok(targets)
    }

    /// The addresses of a configured next hop (a static route or a
    /// smarthost): IPv4 first, then IPv6. An IP address or a bracketed
    /// literal is returned as it is. A host that does not exist or has no
    /// address is a temporary [`DnsErrorKind::NoAddress`]: it is the
    /// operator's configuration, and mail waits in the queue until it is
    /// fixed rather than bouncing.
    pub async fn lookup_host(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if let Some(literal) = parse_literal(host)? {
            return Ok(vec![literal]);
        }
        let name = parse_name(host)?;
        match self.addresses(name).await {
            Ok(addresses) if !addresses.is_empty() => Ok(addresses),
            Ok(_) => Err(DnsError::new(
                DnsErrorKind::NoAddress,
                host,
                "host has no A or AAAA record",
            )),
            Err(AddressFailure::NxDomain) => Err(DnsError::new(
                DnsErrorKind::NoAddress,
                host,
                "host does not exist (NXDOMAIN)",
            )),
            Err(AddressFailure::Temporary(detail)) => Err(DnsError::new(
                DnsErrorKind::Temporary,
                host,
                format!("address lookup failed: {detail}"),
            )),
        }
    }

    /// RFC 5321 §5.1: no MX records, so the domain itself is the host.
    async fn implicit_mx(&self, domain: &str, name: Name) -> Result<Vec<MxTarget>, DnsError> {
        match self.addresses(name.clone()).await {
            Ok(addresses) if !addresses.is_empty() => Ok(vec![MxTarget {
                exchange: host_text(&name),
                preference: 0,
                addresses,
                implicit: true,
            }]),
            Ok(_) => Err(DnsError::new(
                DnsErrorKind::NoMailHost,
                domain,
                "domain has no MX, A or AAAA record",
            )),
            // The MX query said the name exists, the address queries say it
            // does not: the data changed in between, or the servers
            // disagree. Retry rather than bounce.
            Err(AddressFailure::NxDomain) => Err(DnsError::new(
                DnsErrorKind::Temporary,
                domain,
                "inconsistent answers: no MX, then NXDOMAIN for the address",
            )),
            Err(AddressFailure::Temporary(detail)) => Err(DnsError::new(
                DnsErrorKind::Temporary,
                domain,
                format!("address lookup for the implicit MX failed: {detail}"),
            )),
        }
    }

    /// A and AAAA of `name`, queried together. Empty when the name exists
    /// without addresses. One family failing temporarily while the other
    /// answers still gives the addresses found.
    async fn addresses(&self, name: Name) -> Result<Vec<IpAddr>, AddressFailure> {
        let (v4, v6) = futures::join!(
            self.resolver.lookup(name.clone(), RecordType::A),
            self.resolver.lookup(name, RecordType::AAAA)
        );
        let mut addresses = Vec::new();
        let mut nxdomain = 0;
        let mut temporary = None;
        for result in [v4, v6] {
            match result {
                Ok(lookup) => {
                    addresses.extend(lookup.answers().iter().filter_map(
                        |record| match &record.data {
                            RData::A(a) => Some(IpAddr::V4(a.0)),
                            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                            _ => None,
                        },
                    ));
                }
                Err(error) => match classify(&error) {
                    Failure::NxDomain => nxdomain += 1,
                    Failure::NoData => {}
                    Failure::Temporary(detail) => temporary = Some(detail),
                },
            }
        }
        // The A answer came first; keep the families apart and in DNS order.
        addresses.sort_by_key(|ip| ip.is_ipv6());
        addresses.dedup();
        if !addresses.is_empty() {
            Ok(addresses)
        } else if let Some(detail) = temporary {
            Err(AddressFailure::Temporary(detail))
        } else if nxdomain > 0 {
            Err(AddressFailure::NxDomain)
        } else {
            Ok(addresses)
        }
    }

    /// Fisher–Yates over each run of equal preference (the input is sorted).
    fn shuffle_equal_preferences(&self, exchanges: &mut [(u16, Name)]) {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut start = 0;
        while start < exchanges.len() {
            let preference = exchanges[start].0;
            let end = start
                + exchanges[start..]
                    .iter()
                    .take_while(|(p, _)| *p == preference)
                    .count();
            let run = &mut exchanges[start..end];
            for i in (1..run.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                run.swap(i, j);
            }
            start = end;
        }
    }
}

/// How one query failed.
enum Failure {
    /// The name does not exist.
    NxDomain,
    /// The name exists but has no record of the type asked for.
    NoData,
    /// Anything else: the answer is unknown.
    Temporary(String),
}

/// How an address look-up (A and AAAA together) failed.
enum AddressFailure {
    NxDomain,
    Temporary(String),
}

fn classify(error: &NetError) -> Failure {
    match error {
        NetError::Dns(ResolverDnsError::NoRecordsFound(no)) => match no.response_code {
            ResponseCode::NXDomain => Failure::NxDomain,
            ResponseCode::NoError => Failure::NoData,
            code => Failure::Temporary(format!("server answered {code}")),
        },
        NetError::Dns(ResolverDnsError::ResponseCode(code)) => {
            Failure::Temporary(format!("server answered {code}"))
        }
        NetError::Timeout => Failure::Temporary("timed out".to_owned()),
        other => Failure::Temporary(other.to_string()),
    }
}

/// A domain literal (RFC 5321 §4.1.3): `Ok(None)` when `text` is not
/// bracketed, an error when it is bracketed but not a literal we can
/// deliver to.
fn parse_literal(text: &str) -> Result<Option<IpAddr>, DnsError> {
    let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
        return Ok(None);
    };
    let invalid = |what: &str| DnsError::new(DnsErrorKind::InvalidDomain, text, what.to_owned());
    if let Some((tag, rest)) = inner.split_once(':')
        && tag.eq_ignore_ascii_case("IPv6")
    {
        return rest
            .parse::<Ipv6Addr>()
            .map(|ip| Some(IpAddr::V6(ip)))
            .map_err(|_| invalid("invalid IPv6 address literal"));
    }
    if inner.contains(':') {
        return Err(invalid(
            "unsupported address literal (only IPv4 and IPv6: literals)",
        ));
    }
    inner
        .parse::<Ipv4Addr>()
        .map(|ip| Some(IpAddr::V4(ip)))
        .map_err(|_| invalid("invalid IPv4 address literal"))
}

/// A fully qualified name for `domain` (A-labels for a U-label input), so
/// no search domain is ever appended.
fn parse_name(domain: &str) -> Result<Name, DnsError> {
    let trimmed = domain.strip_suffix('.').unwrap_or(domain);
    if trimmed.is_empty() {
        return Err(DnsError::new(
            DnsErrorKind::InvalidDomain,
            domain,
            "empty domain",
        ));
    }
    let mut name = Name::from_utf8(trimmed).map_err(|error| {
        DnsError::new(
            DnsErrorKind::InvalidDomain,
            domain,
            format!("invalid domain name: {error}"),
        )
    })?;
    name.set_fqdn(true);
    Ok(name)
}

/// A host name as text: ASCII, without the trailing dot.
fn host_text(name: &Name) -> String {
    let text = name.to_ascii();
    text.strip_suffix('.').map(str::to_owned).unwrap_or(text)
}

/// SplitMix64 (Steele, Lea and Flood 2014): a small, well-mixed generator;
/// shuffling MX hosts needs no cryptographic randomness.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (bound > 0), without modulo bias.
    fn below(&mut self, bound: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % bound;
        loop {
            let value = self.next();
            if value < zone {
                return value % bound;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(
            parse_literal("[192.0.2.1]").unwrap(),
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
        );
        assert_eq!(
            parse_literal("[IPv6:2001:db8::1]").unwrap(),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            parse_literal("[ipv6:::1]").unwrap(),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(parse_literal("example.test").unwrap(), None);
        for bad in [
            "[300.0.0.1]",
            "[IPv6:nope]",
            "[x-tag:foo]",
            "[]",
            "[2001:db8::1]",
        ] {
            let error = parse_literal(bad).unwrap_err();
            assert!(error.is_permanent(), "{bad}");
            assert_eq!(error.kind(), DnsErrorKind::InvalidDomain, "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            parse_name("Example.Test.").unwrap().to_ascii(),
            "example.test."
        );
        assert_eq!(
            host_text(&parse_name("bücher.test").unwrap()),
            "xn--bcher-kva.test"
        );
        assert_eq!(
            parse_name("").unwrap_err().kind(),
            DnsErrorKind::InvalidDomain
        );
        assert_eq!(
            parse_name("a..b").unwrap_err().kind(),
            DnsErrorKind::InvalidDomain
        );
    }

    #[test]
    fn error_codes() {
        let null = DnsError::new(DnsErrorKind::NullMx, "n.test", "x");
        assert!(null.is_permanent());
        assert_eq!(null.to_string(), "556 5.1.10 n.test: x");
        let nx = DnsError::new(DnsErrorKind::NoSuchDomain, "n.test", "x");
        assert_eq!(
            (nx.code(), nx.enhanced_code().to_string()),
            (550, "5.1.2".into())
        );
        let temp = DnsError::new(DnsErrorKind::Temporary, "n.test", "x");
        assert!(temp.is_temporary());
        assert_eq!(temp.reply().code(), 451);
        assert_eq!(temp.reply().enhanced(), Some(EnhancedCode::new(4, 4, 3)));
        let none = DnsError::new(DnsErrorKind::NoAddress, "n.test", "x");
        assert!(none.is_temporary());
        assert_eq!(none.enhanced_code(), EnhancedCode::new(4, 4, 4));
    }

    #[test]
    fn rng_below_is_in_range_and_seeded() {
        let mut a = SplitMix64(7);
        let mut b = SplitMix64(7);
        for bound in 1..50 {
            let x = a.below(bound);
            assert!(x < bound);
            assert_eq!(x, b.below(bound));
        }
    }
}
