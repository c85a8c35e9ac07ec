//! DNS checks for a mail domain: the MX set (RFC 5321 §5.1, RFC 7505),
//! SPF (RFC 7208), DMARC (RFC 7489), DKIM keys (RFC 6376, RFC 8301),
//! TLS-RPT (RFC 8460), DANE TLSA records (RFC 7672), and forward-confirmed
//! reverse DNS for server addresses.
//!
//! Look-ups go through hickory-resolver, to the system's resolver or
//! `--dns-server`. TLSA records count only when hickory's DNSSEC validator
//! proves them secure from the trust anchors (the IANA root keys, or
//! `--dnssec-trust-anchor`), as RFC 7672 §2.1 requires.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::report::{CheckResult, Section, Status};

/// Why a look-up found nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsFailure {
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// The name exists but has no record of this type.
    NoData,
    /// SERVFAIL, a timeout or another error.
    Failed(String),
}

impl std::fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsFailure::NxDomain => f.write_str("NXDOMAIN"),
            DnsFailure::NoData => f.write_str("no records"),
            DnsFailure::Failed(why) => f.write_str(why),
        }
    }
}

/// A TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// 0 full certificate, 1 SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 exact, 1 SHA-256, 2 SHA-512.
    pub matching: u8,
    /// The association data.
    pub data: Vec<u8>,
}

/// The resolver for all checks.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    /// The same resolvers, validating DNSSEC in-process (for TLSA).
    validator: TokioResolver,
    /// Where the AD-bit queries go.
    server: Option<SocketAddr>,
    timeout: Duration,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").field("server", &self.server).finish()
    }
}

fn failure(err: NetError) -> DnsFailure {
    match err {
        NetError::Dns(DnsError::NoRecordsFound(no)) => match no.response_code {
            ResponseCode::NXDomain => DnsFailure::NxDomain,
            ResponseCode::NoError => DnsFailure::NoData,
            code => DnsFailure::Failed(format!("{code}")),
        },
        NetError::Dns(DnsError::ResponseCode(code)) => DnsFailure::Failed(format!("{code}")),
        other => DnsFailure::Failed(other.to_string()),
    }
}

fn fqdn(name: &str) -> Result<Name, DnsFailure> {
    let mut name =
        Name::from_str(name).map_err(|e| DnsFailure::Failed(format!("{name:?}: {e}")))?;
    name.set_fqdn(true);
    Ok(name)
}

/// A domain name without its trailing dot, in lower case.
pub fn plain_name(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

impl Dns {
    /// A resolver asking `server` (`--dns-server`), or the system's
    /// resolvers when `None`. TLSA records are validated with DNSSEC
    /// against `anchors` (the IANA root keys when `None`).
    pub fn new(
        server: Option<SocketAddr>,
        timeout: Duration,
        anchors: Option<TrustAnchors>,
    ) -> Result<Dns, String> {
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout.min(Duration::from_secs(10));
        opts.attempts = 2;
        // Answers must be today's: a checker that caches would hide fixes.
        opts.cache_size = 0;
        opts.ndots = 0;
        let (config, server) = match server {
            Some(addr) => {
                // Only the given server: not /etc/hosts either.
                opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                (ResolverConfig::from_name_servers(vec![ns]), Some(addr))
            }
            None => {
                let (config, _) = hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?;
                let first = config
                    .name_servers()
                    .first()
                    .map(|ns| SocketAddr::new(ns.ip, 53));
                (config, first)
            }
        };
        let build = |opts: ResolverOpts, anchors: Option<Arc<TrustAnchors>>| {
            let mut builder =
                TokioResolver::builder_with_config(config.clone(), TokioRuntimeProvider::default())
                    .with_options(opts);
            if let Some(anchors) = anchors {
                builder = builder.with_trust_anchor(anchors);
            }
            builder
                .build()
                .map_err(|e| format!("cannot set up the resolver: {e}"))
        };
        let resolver = build(opts.clone(), None)?;
        let mut validating = opts;
        validating.validate = true;
        let validator = build(validating, Some(Arc::new(anchors.unwrap_or_default())))?;
        Ok(Dns {
            resolver,
            validator,
            server,
            timeout,
        })
    }

    async fn records(&self, name: &str, kind: RecordType) -> Result<Vec<RData>, DnsFailure> {
        let name = fqdn(name)?;
        let lookup = self.resolver.lookup(name, kind).await.map_err(failure)?;
        let records: Vec<RData> = lookup
            .answers()
            .iter()
            .filter(|r| r.record_type() == kind)
            .map(|r| r.data.clone())
            .collect();
        if records.is_empty() {
            return Err(DnsFailure::NoData);
        }
        Ok(records)
    }

    /// MX records, as (preference, exchange without the trailing dot; `.`
    /// for a null MX).
    pub async fn mx(&self, name: &str) -> Result<Vec<(u16, String)>, DnsFailure> {
        let records = self.records(name, RecordType::MX).await?;
        Ok(records
            .into_iter()
            .filter_map(|r| match r {
                RData::MX(mx) => {
                    let exchange = if mx.exchange.is_root() {
                        ".".to_owned()
                    } else {
                        plain_name(&mx.exchange)
                    };
                    Some((mx.preference, exchange))
                }
                _ => None,
            })
            .collect())
    }

    /// TXT records, each joined from its strings (RFC 7208 §3.3).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsFailure> {
        let records = self.records(name, RecordType::TXT).await?;
        Ok(records
            .into_iter()
            .filter_map(|r| match r {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect())
    }

    /// A and AAAA addresses of `name` (either may be missing).
    pub async fn addrs(&self, name: &str) -> Result<Vec<IpAddr>, DnsFailure> {
        let v4 = self.records(name, RecordType::A).await;
        let v6 = self.records(name, RecordType::AAAA).await;
        let mut out = Vec::new();
        for records in [&v4, &v6].into_iter().flatten() {
            for r in records {
                match r {
                    RData::A(a) => out.push(IpAddr::V4(a.0)),
                    RData::AAAA(a) => out.push(IpAddr::V6(a.0)),
                    _ => {}
                }
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        match (v4, v6) {
            (Err(DnsFailure::Failed(why)), _) | (_, Err(DnsFailure::Failed(why))) => {
                Err(DnsFailure::Failed(why))
            }
            (Err(DnsFailure::NxDomain), _) => Err(DnsFailure::NxDomain),
            _ => Err(DnsFailure::NoData),
        }
    }

    /// The CNAME target of `name`, if it is an alias.
    pub async fn cname(&self, name: &str) -> Option<String> {
        let records = self.records(name, RecordType::CNAME).await.ok()?;
        records.into_iter().find_map(|r| match r {
            RData::CNAME(target) => Some(plain_name(&target.0)),
            _ => None,
        })
    }

    /// PTR names of `ip`, asked of the resolver directly (hickory-resolver
    /// answers loopback reverse names itself, RFC 6761 §6.3).
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsFailure> {
        let name = Name::from(ip);
        let answers = self.raw_query(&name.to_ascii(), RecordType::PTR).await?;
        let names: Vec<String> = answers
            .into_iter()
            .filter_map(|r| match r {
                RData::PTR(ptr) => Some(plain_name(&ptr.0)),
                _ => None,
            })
            .collect();
        if names.is_empty() {
            return Err(DnsFailure::NoData);
        }
        Ok(names)
    }

    /// TLSA records at `name` and whether they are DNSSEC-validated: every
    /// record proven secure by hickory's validator from the trust anchors
    /// down (RFC 4035 §5). Records that only the non-validating look-up
    /// finds are returned as not validated.
    pub async fn tlsa(&self, name: &str) -> Result<(Vec<Tlsa>, bool), DnsFailure> {
        let query = fqdn(name)?;
        let to_tlsa = |data: &RData| match data {
            RData::TLSA(t) => Some(Tlsa {
                usage: t.cert_usage.into(),
                selector: t.selector.into(),
                matching: t.matching.into(),
                data: t.cert_data.clone(),
            }),
            _ => None,
        };
        if let Ok(lookup) = self.validator.lookup(query.clone(), RecordType::TLSA).await {
            let answers: Vec<_> = lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == RecordType::TLSA)
                .collect();
            if !answers.is_empty() {
                let secure = answers.iter().all(|r| r.proof == Proof::Secure);
                let records = answers.iter().filter_map(|r| to_tlsa(&r.data)).collect();
                return Ok((records, secure));
            }
        }
        // Not provable (an unsigned zone, or a validation failure): what
        // the zone says without DNSSEC.
        let records: Vec<Tlsa> = self
            .records(name, RecordType::TLSA)
            .await?
            .iter()
            .filter_map(to_tlsa)
            .collect();
        if records.is_empty() {
            return Err(DnsFailure::NoData);
        }
        Ok((records, false))
    }

    /// One query straight to the resolver (for PTR, which hickory-resolver
    /// answers itself for loopback, RFC 6761 §6.3): the answer records.
    async fn raw_query(&self, name: &str, kind: RecordType) -> Result<Vec<RData>, DnsFailure> {
        let Some(server) = self.server else {
            return Err(DnsFailure::Failed("no resolver address to ask".into()));
        };
        let query_name = fqdn(name)?;
        let mut message = Message::new(rand_id(), MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        message.set_edns(edns);
        message.add_query(Query::query(query_name, kind));
        let bytes = message
            .to_vec()
            .map_err(|e| DnsFailure::Failed(format!("cannot encode the query: {e}")))?;
        let answer = self.exchange(server, &bytes).await?;
        let response = Message::from_vec(&answer)
            .map_err(|e| DnsFailure::Failed(format!("unreadable answer: {e}")))?;
        if response.metadata.id != message.metadata.id {
            return Err(DnsFailure::Failed("answer with a different id".into()));
        }
        match response.metadata.response_code {
            ResponseCode::NoError => {}
            ResponseCode::NXDomain => return Err(DnsFailure::NxDomain),
            code => return Err(DnsFailure::Failed(format!("{code}"))),
        }
        let records = response
            .answers
            .iter()
            .filter(|r| r.record_type() == kind)
            .map(|r| r.data.clone())
            .collect();
        Ok(records)
    }

    /// One query over UDP, again over TCP when the answer is truncated.
    async fn exchange(&self, server: SocketAddr, query: &[u8]) -> Result<Vec<u8>, DnsFailure> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limit = self.timeout.min(Duration::from_secs(10));
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .map_err(|_| DnsFailure::Failed("bind address".into()))?;
        let udp = tokio::net::UdpSocket::bind(bind)
            .await
            .map_err(|e| DnsFailure::Failed(e.to_string()))?;
        udp.connect(server)
            .await
            .map_err(|e| DnsFailure::Failed(e.to_string()))?;
        udp.send(query)
            .await
            .map_err(|e| DnsFailure::Failed(e.to_string()))?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(limit, udp.recv(&mut buf))
            .await
            .map_err(|_| DnsFailure::Failed(format!("no DNS answer from {server}")))?
            .map_err(|e| DnsFailure::Failed(e.to_string()))?;
        buf.truncate(n);
        // TC is bit 1 of the third octet.
        if buf.len() > 2 && buf[2] & 0x02 == 0 {
            return Ok(buf);
        }
        let tcp = async {
            let mut stream = tokio::net::TcpStream::connect(server).await?;
            let mut framed = (query.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(query);
            stream.write_all(&framed).await?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await?;
            let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
            stream.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        tokio::time::timeout(limit, tcp)
            .await
            .map_err(|_| DnsFailure::Failed(format!("no DNS answer from {server} over TCP")))?
            .map_err(|e| DnsFailure::Failed(e.to_string()))
    }
}

fn rand_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}

/// One MX host with its addresses.
#[derive(Debug, Clone)]
pub struct MxHost {
    /// Preference (lower first).
    pub preference: u16,
    /// Host name.
    pub name: String,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
}

/// What the MX look-up means for delivery.
#[derive(Debug, Clone)]
pub enum MxSet {
    /// Hosts to deliver to, in preference order (possibly the implicit MX).
    Hosts(Vec<MxHost>),
    /// A null MX (RFC 7505): the domain accepts no mail.
    Null,
    /// Nothing to deliver to.
    None,
}

/// The MX checks; returns the hosts the server checks run against.
pub async fn mx(dns: &Dns, domain: &str, out: &mut Vec<CheckResult>) -> MxSet {
    let records = match dns.mx(domain).await {
        Ok(records) => records,
        Err(DnsFailure::NoData) => {
            // RFC 5321 §5.1: no MX means the domain itself is the MX.
            return match dns.addrs(domain).await {
                Ok(addrs) => {
                    out.push(
                        CheckResult::new(
                            "dns.mx",
                            domain,
                            Section::Dns,
                            Status::Warn,
                            format!(
                                "no MX: senders use the domain's own address (implicit MX) {}",
                                join(&addrs)
                            ),
                            "RFC 5321 §5.1",
                        )
                        .fix(format!(
                            "Publish an MX record for {domain} naming the mail server."
                        )),
                    );
                    MxSet::Hosts(vec![MxHost {
                        preference: 0,
                        name: domain.to_owned(),
                        addrs,
                    }])
                }
                Err(err) => {
                    out.push(
                        CheckResult::new(
                            "dns.mx",
                            domain,
                            Section::Dns,
                            Status::Fail,
                            format!("no MX and no address ({err}): mail to {domain} cannot be delivered"),
                            "RFC 5321 §5.1",
                        )
                        .fix(format!(
                            "Publish an MX record for {domain}, or a null MX (MX 0 .) if it receives no mail."
                        )),
                    );
                    MxSet::None
                }
            };
        }
        Err(DnsFailure::NxDomain) => {
            out.push(
                CheckResult::new(
                    "dns.mx",
                    domain,
                    Section::Dns,
                    Status::Fail,
                    format!("{domain} does not exist (NXDOMAIN)"),
                    "RFC 5321 §5.1",
                )
                .fix("Check the spelling, or register and publish the domain."),
            );
            return MxSet::None;
        }
        Err(err) => {
            out.push(
                CheckResult::new(
                    "dns.mx",
                    domain,
                    Section::Dns,
                    Status::Fail,
                    format!("MX look-up failed: {err}; senders defer mail"),
                    "RFC 5321 §5.1",
                )
                .fix("Make the domain's name servers answer (a SERVFAIL or timeout defers all mail)."),
            );
            return MxSet::None;
        }
    };
    let mut records = records;
    records.sort();
    let null = records.iter().any(|(_, e)| e == ".");
    if null {
        if records.len() == 1 && records[0].0 == 0 {
            out.push(CheckResult::new(
                "dns.null-mx",
                domain,
                Section::Dns,
                Status::Info,
                format!("MX 0 . — {domain} declares it accepts no mail"),
                "RFC 7505 §3",
            ));
            return MxSet::Null;
        }
        out.push(
            CheckResult::new(
                "dns.null-mx",
                domain,
                Section::Dns,
                Status::Fail,
                format!(
                    "a null MX mixed with other MX records: {}",
                    records
                        .iter()
                        .map(|(p, e)| format!("{p} {e}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "RFC 7505 §3",
            )
            .fix("Either publish only MX 0 . (no mail) or remove it and keep the real MX hosts."),
        );
    }
    out.push(CheckResult::new(
        "dns.mx",
        domain,
        Section::Dns,
        Status::Pass,
        format!(
            "in preference order: {}",
            records
                .iter()
                .map(|(p, e)| format!("{p} {e}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "RFC 5321 §5.1",
    ));
    let mut hosts = Vec::new();
    for (preference, exchange) in records.into_iter().filter(|(_, e)| e != ".") {
        if exchange.parse::<IpAddr>().is_ok() {
            out.push(
                CheckResult::new(
                    "dns.mx-host",
                    &exchange,
                    Section::Dns,
                    Status::Fail,
                    format!("MX {preference} {exchange} is an IP address, not a host name"),
                    "RFC 5321 §5.1, RFC 1035 §3.3.9",
                )
                .fix(format!(
                    "Point the MX at a host name with an A/AAAA record for {exchange}."
                )),
            );
            continue;
        }
        if let Some(target) = dns.cname(&exchange).await {
            out.push(
                CheckResult::new(
                    "dns.mx-host",
                    &exchange,
                    Section::Dns,
                    Status::Warn,
                    format!("{exchange} is a CNAME for {target}"),
                    "RFC 5321 §5.1, RFC 2181 §10.3",
                )
                .fix(format!("Point the MX directly at {target}.")),
            );
        }
        match dns.addrs(&exchange).await {
            Ok(addrs) => {
                out.push(CheckResult::new(
                    "dns.mx-host",
                    &exchange,
                    Section::Dns,
                    Status::Pass,
                    format!("MX {preference} resolves to {}", join(&addrs)),
                    "RFC 5321 §5.1",
                ));
                hosts.push(MxHost {
                    preference,
                    name: exchange,
                    addrs,
                });
            }
            Err(err) => out.push(
                CheckResult::new(
                    "dns.mx-host",
                    &exchange,
                    Section::Dns,
                    Status::Fail,
                    format!("MX {preference} {exchange} does not resolve: {err}"),
                    "RFC 5321 §5.1",
                )
                .fix(format!(
                    "Publish A/AAAA records for {exchange} or remove the MX."
                )),
            ),
        }
    }
    if hosts.is_empty() {
        MxSet::None
    } else {
        MxSet::Hosts(hosts)
    }
}

fn join(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Records at `name` starting with `tag` (case-insensitive, followed by a
/// space, `;` or the end).
fn tagged(records: &[String], tag: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| {
            let lower = r.to_ascii_lowercase();
            lower.starts_with(tag)
                && matches!(
                    lower.as_bytes().get(tag.len()),
                    None | Some(b' ') | Some(b';') | Some(b'\t')
                )
        })
        .cloned()
        .collect()
}

/// RFC 7208 §4.6.4: at most 10 terms that cause DNS queries.
pub const SPF_LOOKUP_LIMIT: usize = 10;

/// What SPF evaluation of one record found.
#[derive(Debug, Default)]
struct SpfWalk {
    lookups: usize,
    errors: Vec<String>,
    ptr: bool,
    plus_all: bool,
}

/// Checks one SPF record's syntax and counts its DNS-querying terms,
/// following include and redirect (RFC 7208 §4.6, §5, §6).
fn spf_terms(record: &str, walk: &mut SpfWalk) -> Vec<String> {
    let mut follow = Vec::new();
    for term in record.split_whitespace().skip(1) {
        let lower = term.to_ascii_lowercase();
        if let Some((name, value)) = lower.split_once('=') {
            // A modifier (§6): name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )
            let valid_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !valid_name {
                walk.errors.push(format!("bad modifier {term:?}"));
            } else if name == "redirect" {
                walk.lookups += 1;
                follow.push(value.to_owned());
            }
            continue;
        }
        let (qualifier, rest) = match lower.chars().next() {
            Some(c @ ('+' | '-' | '~' | '?')) => (c, &lower[1..]),
            _ => ('+', lower.as_str()),
        };
        let (mechanism, arg) = match rest.find([':', '/']) {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        match mechanism {
            "all" => {
                if arg.is_some() {
                    walk.errors.push(format!("{term:?}: all takes no argument"));
                }
                if qualifier == '+' {
                    walk.plus_all = true;
                }
            }
            "include" => {
                walk.lookups += 1;
                match arg.and_then(|a| a.strip_prefix(':')) {
                    Some(domain) if !domain.is_empty() => follow.push(domain.to_owned()),
                    _ => walk
                        .errors
                        .push(format!("{term:?}: include needs a domain")),
                }
            }
            "a" | "mx" => walk.lookups += 1,
            "ptr" => {
                walk.lookups += 1;
                walk.ptr = true;
            }
            "exists" => {
                walk.lookups += 1;
                if arg.is_none_or(|a| a.len() < 2) {
                    walk.errors.push(format!("{term:?}: exists needs a domain"));
                }
            }
            "ip4" => {
                let ok = arg.and_then(|a| a.strip_prefix(':')).is_some_and(|a| {
                    let (ip, len) = a.split_once('/').unwrap_or((a, "32"));
                    ip.parse::<std::net::Ipv4Addr>().is_ok()
                        && len.parse::<u8>().is_ok_and(|l| l <= 32)
                });
                if !ok {
                    walk.errors.push(format!("{term:?}: not an IPv4 network"));
                }
            }
            "ip6" => {
                let ok = arg.and_then(|a| a.strip_prefix(':')).is_some_and(|a| {
                    let (ip, len) = a.split_once('/').unwrap_or((a, "128"));
                    ip.parse::<std::net::Ipv6Addr>().is_ok()
                        && len.parse::<u8>().is_ok_and(|l| l <= 128)
                });
                if !ok {
                    walk.errors.push(format!("{term:?}: not an IPv6 network"));
                }
            }
            _ => walk.errors.push(format!("unknown mechanism {term:?}")),
        }
    }
    follow
}

/// The SPF checks (RFC 7208).
pub async fn spf(dns: &Dns, domain: &str, out: &mut Vec<CheckResult>) {
    let rfc = "RFC 7208 §4.5";
    let records = match dns.txt(domain).await {
        Ok(records) => tagged(&records, "v=spf1"),
        Err(DnsFailure::NoData) | Err(DnsFailure::NxDomain) => Vec::new(),
        Err(err) => {
            out.push(
                CheckResult::new("dns.spf", domain, Section::Dns, Status::Fail, format!("TXT look-up failed: {err}"), rfc)
                    .fix("Make the name servers answer TXT queries (a temporary error defers mail at strict receivers)."),
            );
            return;
        }
    };
    match records.len() {
        0 => {
            out.push(
                CheckResult::new(
                    "dns.spf",
                    domain,
                    Section::Dns,
                    Status::Warn,
                    "no SPF record",
                    rfc,
                )
                .fix(format!(
                    "Publish a TXT record at {domain} such as \"v=spf1 mx -all\"."
                )),
            );
            return;
        }
        1 => {}
        n => {
            out.push(
                CheckResult::new(
                    "dns.spf",
                    domain,
                    Section::Dns,
                    Status::Fail,
                    format!(
                        "{n} SPF records (a permanent error for every receiver): {}",
                        records.join(" | ")
                    ),
                    rfc,
                )
                .fix("Merge them into exactly one v=spf1 record."),
            );
            return;
        }
    }
    let record = &records[0];
    let mut walk = SpfWalk::default();
    let mut queue = spf_terms(record, &mut walk);
    let mut seen = 0;
    // Follow include/redirect, bounded: past the limit the result is
    // already a permerror (§4.6.4).
    while let Some(next) = queue.pop() {
        seen += 1;
        if seen > 20 || walk.lookups > SPF_LOOKUP_LIMIT {
            break;
        }
        if next.contains('%') {
            continue; // macros expand per message (§7); not followed
        }
        match dns.txt(&next).await {
            Ok(txts) => {
                let found = tagged(&txts, "v=spf1");
                match found.first() {
                    Some(r) if found.len() == 1 => {
                        let mut inner = SpfWalk::default();
                        queue.extend(spf_terms(r, &mut inner));
                        walk.lookups += inner.lookups;
                        walk.ptr |= inner.ptr;
                        walk.errors
                            .extend(inner.errors.into_iter().map(|e| format!("in {next}: {e}")));
                    }
                    _ => walk
                        .errors
                        .push(format!("{next} has {} SPF records", found.len())),
                }
            }
            Err(err) => walk.errors.push(format!("{next}: {err}")),
        }
    }
    out.push(if walk.errors.is_empty() {
        CheckResult::new(
            "dns.spf",
            domain,
            Section::Dns,
            Status::Pass,
            record.clone(),
            "RFC 7208 §4.5, §12",
        )
    } else {
        CheckResult::new(
            "dns.spf",
            domain,
            Section::Dns,
            Status::Fail,
            format!("{record}: {}", walk.errors.join("; ")),
            "RFC 7208 §4.6, §5",
        )
        .fix("Correct the record: receivers treat a syntax error as a permanent error (permerror).")
    });
    out.push(
        CheckResult::new(
            "dns.spf-lookups",
            domain,
            Section::Dns,
            if walk.lookups > SPF_LOOKUP_LIMIT {
                Status::Fail
            } else {
                Status::Pass
            },
            format!(
                "{} DNS-querying terms (limit {SPF_LOOKUP_LIMIT}), includes followed",
                walk.lookups
            ),
            "RFC 7208 §4.6.4",
        )
        .fix(
            "Reduce include/a/mx/ptr/exists terms to 10 or fewer (flatten includes into ip4/ip6).",
        ),
    );
    if walk.plus_all {
        out.push(
            CheckResult::new(
                "dns.spf-all",
                domain,
                Section::Dns,
                Status::Fail,
                "+all: every host on the internet may send as this domain",
                "RFC 7208 §5.1",
            )
            .fix("End the record with -all (or ~all) instead of +all."),
        );
    }
    if walk.ptr {
        out.push(
            CheckResult::new(
                "dns.spf-ptr",
                domain,
                Section::Dns,
                Status::Warn,
                "uses the ptr mechanism (slow, unreliable, some receivers ignore it)",
                "RFC 7208 §5.5",
            )
            .fix("Replace ptr with ip4/ip6 or a mechanisms."),
        );
    }
}

/// Parses `tag=value; tag=value` lists (DMARC, DKIM, MTA-STS TXT, TLS-RPT).
pub fn tag_list(record: &str) -> Result<Vec<(String, String)>, String> {
    let mut tags = Vec::new();
    for part in record.split(';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not tag=value"))?;
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad tag name {name:?}"));
        }
        if tags.iter().any(|(n, _): &(String, String)| n == name) {
            return Err(format!("tag {name} appears twice"));
        }
        tags.push((name.to_owned(), value.trim().to_owned()));
    }
    Ok(tags)
}

fn tag<'a>(tags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The DMARC checks (RFC 7489 §6.3, §6.6.3).
pub async fn dmarc(dns: &Dns, domain: &str, out: &mut Vec<CheckResult>) {
    let rfc = "RFC 7489 §6.3";
    let name = format!("_dmarc.{domain}");
    let records = match dns.txt(&name).await {
        Ok(records) => tagged(&records, "v=dmarc1"),
        Err(DnsFailure::NoData) | Err(DnsFailure::NxDomain) => Vec::new(),
        Err(err) => {
            out.push(
                CheckResult::new(
                    "dns.dmarc",
                    domain,
                    Section::Dns,
                    Status::Fail,
                    format!("{name}: {err}"),
                    rfc,
                )
                .fix("Make the name servers answer for _dmarc."),
            );
            return;
        }
    };
    let record = match records.as_slice() {
        [] => {
            out.push(
                CheckResult::new("dns.dmarc", domain, Section::Dns, Status::Warn, format!("no DMARC record at {name}"), rfc)
                    .fix(format!("Publish TXT \"v=DMARC1; p=none; rua=mailto:dmarc@{domain}\" at {name}, then tighten p.")),
            );
            return;
        }
        [one] => one.clone(),
        many => {
            out.push(
                CheckResult::new(
                    "dns.dmarc",
                    domain,
                    Section::Dns,
                    Status::Fail,
                    format!("{} DMARC records: receivers ignore them all", many.len()),
                    "RFC 7489 §6.6.3",
                )
                .fix("Keep exactly one v=DMARC1 record."),
            );
            return;
        }
    };
    let tags = match tag_list(&record) {
        Ok(tags) => tags,
        Err(err) => {
            out.push(CheckResult::new("dns.dmarc", domain, Section::Dns, Status::Fail, format!("{record}: {err}"), rfc)
                .fix("Write the record as v=DMARC1; p=...; with tag=value pairs separated by semicolons."));
            return;
        }
    };
    let first_is_v = tags.first().is_some_and(|(n, v)| n == "v" && v == "DMARC1");
    let policy = tag(&tags, "p");
    let mut errors = Vec::new();
    if !first_is_v {
        errors.push("v=DMARC1 must be the first tag".to_owned());
    }
    match policy {
        Some("none" | "quarantine" | "reject") => {}
        Some(other) => errors.push(format!("p={other} is not none, quarantine or reject")),
        None => errors.push("no p= tag".to_owned()),
    }
    if let Some(sp) = tag(&tags, "sp")
        && !matches!(sp, "none" | "quarantine" | "reject")
    {
        errors.push(format!("sp={sp} is not none, quarantine or reject"));
    }
    let pct = tag(&tags, "pct").map(|p| p.parse::<u8>().ok().filter(|p| *p <= 100));
    if let Some(None) = pct {
        errors.push("pct must be 0 to 100".to_owned());
    }
    if !errors.is_empty() {
        out.push(
            CheckResult::new(
                "dns.dmarc",
                domain,
                Section::Dns,
                Status::Fail,
                format!("{record}: {}", errors.join("; ")),
                rfc,
            )
            .fix("Fix the record's syntax; receivers ignore a malformed DMARC record."),
        );
        return;
    }
    out.push(CheckResult::new(
        "dns.dmarc",
        domain,
        Section::Dns,
        Status::Pass,
        record.clone(),
        rfc,
    ));
    let policy = policy.unwrap_or("none");
    out.push(match policy {
        "none" => CheckResult::new(
            "dns.dmarc-policy",
            domain,
            Section::Dns,
            Status::Warn,
            "p=none: monitoring only, forged mail is still delivered",
            "RFC 7489 §6.3",
        )
        .fix("Once reports show your own mail passes, move to p=quarantine and then p=reject."),
        _ => CheckResult::new(
            "dns.dmarc-policy",
            domain,
            Section::Dns,
            Status::Pass,
            format!("p={policy}"),
            "RFC 7489 §6.3",
        ),
    });
    if let Some(Some(pct)) = pct
        && pct < 100
    {
        out.push(
            CheckResult::new(
                "dns.dmarc-pct",
                domain,
                Section::Dns,
                Status::Warn,
                format!("pct={pct}: the policy applies to only {pct}% of failing mail"),
                "RFC 7489 §6.3",
            )
            .fix("Raise pct to 100 (or remove it) once the policy is safe."),
        );
    }
}

/// The DKIM key check for one selector (RFC 6376 §3.6.1, RFC 8301 §3.2).
pub async fn dkim(dns: &Dns, domain: &str, selector: &str, out: &mut Vec<CheckResult>) {
    let name = format!("{selector}._domainkey.{domain}");
    let rfc = "RFC 6376 §3.6.1, RFC 8301 §3.2";
    let records = match dns.txt(&name).await {
        Ok(records) => records,
        Err(err) => {
            out.push(
                CheckResult::new(
                    "dns.dkim",
                    &name,
                    Section::Dns,
                    Status::Fail,
                    format!("no key record: {err}"),
                    rfc,
                )
                .fix(format!(
                    "Publish the selector's public key as TXT at {name}."
                )),
            );
            return;
        }
    };
    let record = records.join("");
    let tags = match tag_list(&record) {
        Ok(tags) => tags,
        Err(err) => {
            out.push(
                CheckResult::new(
                    "dns.dkim",
                    &name,
                    Section::Dns,
                    Status::Fail,
                    err.to_string(),
                    rfc,
                )
                .fix("Write the key record as v=DKIM1; k=rsa; p=BASE64."),
            );
            return;
        }
    };
    if let Some(v) = tag(&tags, "v")
        && v != "DKIM1"
    {
        out.push(
            CheckResult::new(
                "dns.dkim",
                &name,
                Section::Dns,
                Status::Fail,
                format!("v={v}"),
                rfc,
            )
            .fix("Use v=DKIM1 or leave v out."),
        );
        return;
    }
    let kind = tag(&tags, "k").unwrap_or("rsa");
    let Some(p) = tag(&tags, "p") else {
        out.push(
            CheckResult::new(
                "dns.dkim",
                &name,
                Section::Dns,
                Status::Fail,
                "no p= tag",
                rfc,
            )
            .fix("Add the public key as p=."),
        );
        return;
    };
    let p: String = p.chars().filter(|c| !c.is_whitespace()).collect();
    if p.is_empty() {
        out.push(
            CheckResult::new(
                "dns.dkim",
                &name,
                Section::Dns,
                Status::Fail,
                "p= is empty: the key is revoked",
                "RFC 6376 §3.6.1",
            )
            .fix("Publish the current key, or stop signing with this selector."),
        );
        return;
    }
    use base64::Engine as _;
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&p) else {
        out.push(
            CheckResult::new(
                "dns.dkim",
                &name,
                Section::Dns,
                Status::Fail,
                "p= is not base64",
                rfc,
            )
            .fix("Publish the key as base64."),
        );
        return;
    };
    match kind {
        "ed25519" => out.push(
            CheckResult::new(
                "dns.dkim",
                &name,
                Section::Dns,
                if der.len() == 32 {
                    Status::Pass
                } else {
                    Status::Fail
                },
                format!("Ed25519 key, {} octets", der.len()),
                "RFC 8463 §3",
            )
            .fix("An Ed25519 key is 32 octets of raw public key."),
        ),
        "rsa" => {
            let bits = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der)
                .ok()
                .and_then(|(_, spki)| match spki.parsed() {
                    Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                        let m: Vec<u8> = rsa
                            .modulus
                            .iter()
                            .copied()
                            .skip_while(|b| *b == 0)
                            .collect();
                        m.first().map(|f| m.len() * 8 - f.leading_zeros() as usize)
                    }
                    _ => None,
                });
            out.push(match bits {
                None => CheckResult::new(
                    "dns.dkim",
                    &name,
                    Section::Dns,
                    Status::Fail,
                    "p= is not an RSA public key",
                    rfc,
                )
                .fix("Publish the DER SubjectPublicKeyInfo of the RSA key."),
                Some(b) if b < 1024 => CheckResult::new(
                    "dns.dkim",
                    &name,
                    Section::Dns,
                    Status::Fail,
                    format!("RSA {b} bits: verifiers must not accept it"),
                    rfc,
                )
                .fix("Generate a 2048-bit key and publish it under a new selector."),
                Some(b) if b < 2048 => CheckResult::new(
                    "dns.dkim",
                    &name,
                    Section::Dns,
                    Status::Warn,
                    format!("RSA {b} bits (2048 recommended)"),
                    rfc,
                )
                .fix("Move to a 2048-bit key under a new selector."),
                Some(b) => CheckResult::new(
                    "dns.dkim",
                    &name,
                    Section::Dns,
                    Status::Pass,
                    format!("RSA {b} bits"),
                    rfc,
                ),
            });
        }
        other => out.push(
            CheckResult::new(
                "dns.dkim",
                &name,
                Section::Dns,
                Status::Fail,
                format!("unknown key type k={other}"),
                rfc,
            )
            .fix("Use k=rsa or k=ed25519."),
        ),
    }
}

/// The TLS-RPT record (RFC 8460 §3).
pub async fn tls_rpt(dns: &Dns, domain: &str, out: &mut Vec<CheckResult>) {
    let name = format!("_smtp._tls.{domain}");
    let rfc = "RFC 8460 §3";
    let records = match dns.txt(&name).await {
        Ok(records) => tagged(&records, "v=tlsrptv1"),
        Err(_) => Vec::new(),
    };
    let result = match records.as_slice() {
        [] => CheckResult::new(
            "dns.tls-rpt",
            domain,
            Section::Dns,
            Status::Info,
            format!("no TLS-RPT record at {name}: nobody reports TLS failures to you"),
            rfc,
        ),
        [one] => match tag_list(one) {
            Ok(tags) => {
                let rua = tag(&tags, "rua").unwrap_or_default();
                let ok = !rua.is_empty()
                    && rua.split(',').all(|u| {
                        let u = u.trim();
                        u.starts_with("mailto:") || u.starts_with("https:")
                    });
                if ok {
                    CheckResult::new(
                        "dns.tls-rpt",
                        domain,
                        Section::Dns,
                        Status::Pass,
                        one.clone(),
                        rfc,
                    )
                } else {
                    CheckResult::new(
                        "dns.tls-rpt",
                        domain,
                        Section::Dns,
                        Status::Fail,
                        format!("{one}: rua must list mailto: or https: addresses"),
                        rfc,
                    )
                    .fix(format!(
                        "Publish \"v=TLSRPTv1; rua=mailto:tlsrpt@{domain}\"."
                    ))
                }
            }
            Err(err) => CheckResult::new(
                "dns.tls-rpt",
                domain,
                Section::Dns,
                Status::Fail,
                format!("{one}: {err}"),
                rfc,
            )
            .fix("Write the record as v=TLSRPTv1; rua=mailto:..."),
        },
        many => CheckResult::new(
            "dns.tls-rpt",
            domain,
            Section::Dns,
            Status::Fail,
            format!("{} TLS-RPT records", many.len()),
            rfc,
        )
        .fix("Keep exactly one v=TLSRPTv1 record."),
    };
    out.push(result);
}

/// The TLSA look-up for one MX host: records and whether they are
/// DNSSEC-validated.
#[derive(Debug, Clone)]
pub struct DaneRecords {
    /// The MX host.
    pub host: String,
    /// Its TLSA records.
    pub records: Vec<Tlsa>,
    /// The resolver validated them (AD bit).
    pub validated: bool,
}

/// Looks up `_25._tcp.<host>` (RFC 7672 §2.2) and reports what was found.
pub async fn dane_records(
    dns: &Dns,
    host: &str,
    port: u16,
    out: &mut Vec<CheckResult>,
) -> Option<DaneRecords> {
    let name = format!("_{port}._tcp.{host}");
    let rfc = "RFC 7672 §2.2";
    match dns.tlsa(&name).await {
        Ok((records, validated)) => {
            let shown = records
                .iter()
                .map(|r| format!("{} {} {}", r.usage, r.selector, r.matching))
                .collect::<Vec<_>>()
                .join(", ");
            if !validated {
                out.push(CheckResult::new("dns.dane", host, Section::Dns, Status::Warn, format!("TLSA {shown} at {name}, but not DNSSEC-validated: senders ignore them"), rfc)
                    .fix("Sign the zone with DNSSEC (and check with a validating resolver), or remove the TLSA records."));
                return None;
            }
            let legacy: Vec<&Tlsa> = records.iter().filter(|r| r.usage < 2).collect();
            if legacy.len() == records.len() {
                out.push(
                    CheckResult::new(
                        "dns.dane",
                        host,
                        Section::Dns,
                        Status::Fail,
                        format!(
                            "TLSA {shown}: only PKIX usages 0/1, which SMTP senders do not use"
                        ),
                        "RFC 7672 §3.1.3",
                    )
                    .fix("Publish usage 3 (DANE-EE) or 2 (DANE-TA) records."),
                );
                return None;
            }
            out.push(CheckResult::new(
                "dns.dane",
                host,
                Section::Dns,
                Status::Pass,
                format!("DNSSEC-validated TLSA {shown} at {name}"),
                rfc,
            ));
            Some(DaneRecords {
                host: host.to_owned(),
                records,
                validated,
            })
        }
        Err(DnsFailure::NoData) | Err(DnsFailure::NxDomain) => {
            out.push(CheckResult::new(
                "dns.dane",
                host,
                Section::Dns,
                Status::Info,
                format!("no TLSA at {name}: no DANE"),
                rfc,
            ));
            None
        }
        Err(err) => {
            out.push(CheckResult::new("dns.dane", host, Section::Dns, Status::Fail, format!("TLSA look-up at {name} failed: {err}; DANE senders defer mail"), "RFC 7672 §2.1")
                .fix("Make the name servers answer TLSA queries (with DNSSEC, a failure is not a denial of existence)."));
            None
        }
    }
}

/// Whether a TLSA record matches the served chain (RFC 6698 §2.1,
/// RFC 7672 §3.1: usage 3 against the leaf, usage 2 against the issuers).
pub fn tlsa_matches(record: &Tlsa, chain: &[CertificateDer<'static>]) -> bool {
    let candidates: Vec<&CertificateDer<'static>> = match record.usage {
        3 => chain.first().into_iter().collect(),
        2 => chain.iter().skip(1).collect(),
        _ => return false,
    };
    candidates.into_iter().any(|cert| {
        let selected: Vec<u8> = match record.selector {
            0 => cert.as_ref().to_vec(),
            1 => match X509Certificate::from_der(cert.as_ref()) {
                Ok((_, parsed)) => parsed.public_key().raw.to_vec(),
                Err(_) => return false,
            },
            _ => return false,
        };
        let digest: Vec<u8> = match record.matching {
            0 => selected,
            1 => ring::digest::digest(&ring::digest::SHA256, &selected)
                .as_ref()
                .to_vec(),
            2 => ring::digest::digest(&ring::digest::SHA512, &selected)
                .as_ref()
                .to_vec(),
            _ => return false,
        };
        digest == record.data
    })
}

/// The DANE verdict for one address, after the handshake.
pub fn dane_match(
    target: &str,
    dane: &DaneRecords,
    chain: Option<&[CertificateDer<'static>]>,
) -> CheckResult {
    let rfc = "RFC 7672 §3.1, RFC 6698 §2.1";
    match chain {
        None => CheckResult::new(
            "tls.dane",
            target,
            Section::Tls,
            Status::Fail,
            "TLSA published but no TLS handshake: DANE senders will not deliver",
            rfc,
        )
        .fix("Make STARTTLS work; with DANE, senders never fall back to plaintext."),
        Some(chain) => {
            let matched: Vec<String> = dane
                .records
                .iter()
                .filter(|r| tlsa_matches(r, chain))
                .map(|r| format!("{} {} {}", r.usage, r.selector, r.matching))
                .collect();
            if matched.is_empty() {
                CheckResult::new("tls.dane", target, Section::Tls, Status::Fail, format!("no TLSA record of {} matches the served certificate", dane.host), rfc)
                    .fix("Publish TLSA records for the certificate in use before switching certificates (3 1 1 of the current key).")
            } else {
                CheckResult::new(
                    "tls.dane",
                    target,
                    Section::Tls,
                    Status::Pass,
                    format!("served certificate matches TLSA {}", matched.join(", ")),
                    rfc,
                )
            }
        }
    }
}

/// Forward-confirmed reverse DNS for `ip`, and whether the server's own
/// names match it (RFC 8314 does not ask it, but RFC 5321 §4.1.4 lets
/// receivers check; many do).
pub async fn fcrdns(dns: &Dns, target: &str, ip: IpAddr, names: &[String]) -> CheckResult {
    let rfc = "RFC 5321 §4.1.4, RFC 1912 §2.1";
    let ptrs = match dns.ptr(ip).await {
        Ok(ptrs) => ptrs,
        Err(err) => {
            return CheckResult::new(
                "connection.fcrdns",
                target,
                Section::Connection,
                Status::Warn,
                format!("no PTR for {ip} ({err}): many receivers distrust mail from it"),
                rfc,
            )
            .fix(format!(
                "Ask the address owner to publish a PTR record for {ip} naming the server."
            ));
        }
    };
    let mut confirmed = Vec::new();
    for ptr in &ptrs {
        if let Ok(addrs) = dns.addrs(ptr).await
            && addrs.contains(&ip)
        {
            confirmed.push(ptr.clone());
        }
    }
    if confirmed.is_empty() {
        return CheckResult::new(
            "connection.fcrdns",
            target,
            Section::Connection,
            Status::Warn,
            format!("PTR {} does not resolve back to {ip}", ptrs.join(", ")),
            rfc,
        )
        .fix("Publish an A/AAAA record for the PTR name that points at this address.");
    }
    let mut lowered: Vec<String> = names
        .iter()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    lowered.dedup();
    if lowered.iter().all(|n| confirmed.contains(n)) {
        CheckResult::new(
            "connection.fcrdns",
            target,
            Section::Connection,
            Status::Pass,
            format!(
                "{ip} ↔ {}; greeting and EHLO names match",
                confirmed.join(", ")
            ),
            rfc,
        )
    } else {
        CheckResult::new(
            "connection.fcrdns",
            target,
            Section::Connection,
            Status::Warn,
            format!(
                "{ip} ↔ {}, but the server calls itself {}",
                confirmed.join(", "),
                lowered.join(", ")
            ),
            rfc,
        )
        .fix("Use the PTR name as the server's host name in its greeting and EHLO reply.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(record: &str) -> SpfWalk {
        let mut walk = SpfWalk::default();
        spf_terms(record, &mut walk);
        walk
    }

    #[test]
    fn spf_syntax_and_counting() {
        let w =
            walk("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx include:_spf.example.net -all");
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        assert_eq!(w.lookups, 3);
        assert!(!walk("v=spf1 ip4:192.0.2.300 -all").errors.is_empty());
        assert!(!walk("v=spf1 foo:bar -all").errors.is_empty());
        assert!(walk("v=spf1 +all").plus_all);
        assert!(walk("v=spf1 all").plus_all);
        assert!(!walk("v=spf1 -all").plus_all);
        assert!(walk("v=spf1 ptr -all").ptr);
        assert_eq!(walk("v=spf1 redirect=_spf.example.net").lookups, 1);
    }

    #[test]
    fn tag_lists() {
        let tags = tag_list("v=DMARC1; p=reject; pct=50").unwrap();
        assert_eq!(tag(&tags, "p"), Some("reject"));
        assert!(tag_list("v=DMARC1; p").is_err());
        assert!(tag_list("v=DMARC1; p=none; p=reject").is_err());
    }

    #[test]
    fn tlsa_3_1_1_matches_the_leaf_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.example.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let (_, parsed) = X509Certificate::from_der(der.as_ref()).unwrap();
        let spki_hash = ring::digest::digest(&ring::digest::SHA256, parsed.public_key().raw);
        let record = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: spki_hash.as_ref().to_vec(),
        };
        assert!(tlsa_matches(&record, std::slice::from_ref(&der)));
        let wrong = Tlsa {
            data: vec![0; 32],
            ..record.clone()
        };
        assert!(!tlsa_matches(&wrong, std::slice::from_ref(&der)));
        let full = Tlsa {
            usage: 3,
            selector: 0,
            matching: 0,
            data: der.as_ref().to_vec(),
        };
        assert!(tlsa_matches(&full, std::slice::from_ref(&der)));
    }
}
