//! An in-process authoritative DNS server on loopback that serves test zones.
//!
//! Tests that need DNS — MX resolution, implicit MX, null MX, SERVFAIL,
//! CNAME chains, TXT and TLSA look-ups — start a [`TestDns`] with the
//! records they need and point their resolver at [`TestDns::addr`]. The
//! server answers on `127.0.0.1` over UDP and TCP on the same (random) port,
//! built on `hickory-server`'s catalog and in-memory zones, so answers are
//! real authoritative DNS responses: `NOERROR` with records, `NOERROR` with
//! no records and the zone's SOA ("no data"), or `NXDOMAIN` for a name that
//! does not exist in a served zone.
//!
//! # Zones
//!
//! Every record lives in a zone. A record goes into the longest zone
//! declared with [`TestDnsBuilder::zone`] that contains its name; when no
//! declared zone contains it, into the zone made of the name's last two
//! labels (`mx1.example.test` → zone `example.test`). Each zone gets an SOA
//! and an NS record at its apex. A query for a name outside every served
//! zone is answered `REFUSED` (the server is not authoritative for it).
//!
//! Besides served zones, [`TestDnsBuilder::servfail`] makes every query at
//! or below a name fail with `SERVFAIL`, and [`TestDnsBuilder::no_answer`]
//! makes the server stay silent for them, so the resolver times out.
//!
//! # Example
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let dns = test_dns::TestDns::builder()
//!     .a("mx1.example.test", Ipv4Addr::new(127, 0, 0, 2))
//!     .mx("example.test", 10, "mx1.example.test")
//!     .txt("example.test", "v=spf1 -all")
//!     .null_mx("nullmx.test")
//!     .servfail("broken.test")
//!     .start()
//!     .await?;
//! let addr = dns.addr(); // UDP and TCP on 127.0.0.1, this port
//! assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
//! drop(dns); // stops the server
//! # Ok(())
//! # }
//! ```
//!
//! # Adding record types
//!
//! [`TestDnsBuilder::record`] adds any record `hickory-proto` can encode,
//! so a type without a shorthand method needs no change here. A shorthand
//! for a new type is a small `impl TestDnsBuilder` block calling
//! [`TestDnsBuilder::record`], best in a module of its own.

#[cfg(feature = "dnssec")]
mod dnssec;
mod handler;

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::rr::rdata::{self, MX, NS, SOA, TLSA, TXT};
use hickory_proto::rr::{LowerName, Record};
use hickory_server::Server;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

pub use hickory_proto::rr::{Name, RData, RecordType};

use handler::TestHandler;

/// The TTL of records added without [`TestDnsBuilder::ttl`].
pub const DEFAULT_TTL: u32 = 300;

/// How long the TCP listener waits for a query on an open connection.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running test DNS server. Dropping it stops the server.
///
/// Built with [`TestDns::builder`]; see the crate documentation for an
/// example.
pub struct TestDns {
    addr: SocketAddr,
    queries: Arc<AtomicU64>,
    #[cfg_attr(not(feature = "dnssec"), allow(dead_code))]
    trust_anchors: String,
    server: Server<TestHandler>,
}

impl std::fmt::Debug for TestDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDns")
            .field("addr", &self.addr)
            .field("queries", &self.query_count())
            .finish()
    }
}

impl TestDns {
    /// Starts describing the zones to serve.
    pub fn builder() -> TestDnsBuilder {
        TestDnsBuilder::default()
    }

    /// The address the server answers on, over both UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many DNS requests the server has received so far (over UDP and
    /// TCP, answered or not).
    pub fn query_count(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        // The server's tasks live in a JoinSet that aborts them when the
        // server is dropped; cancelling first also closes open TCP streams.
        self.server.shutdown_token().cancel();
    }
}

/// Describes the records and failure zones of a [`TestDns`].
///
/// Every method that takes a name accepts it with or without the trailing
/// dot; names are absolute. An invalid name or value does not panic: the
/// first such error is returned by [`TestDnsBuilder::start`].
#[derive(Debug, Default)]
pub struct TestDnsBuilder {
    ttl: Option<u32>,
    zones: Vec<Name>,
    records: Vec<Record>,
    servfail: Vec<Name>,
    no_answer: Vec<Name>,
    /// Zones to sign (see `dnssec.rs`).
    #[cfg_attr(not(feature = "dnssec"), allow(dead_code))]
    signed: Vec<Name>,
    error: Option<String>,
}

impl TestDnsBuilder {
    /// Sets the TTL of the records added after this call (default
    /// [`DEFAULT_TTL`]).
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Declares a zone the server is authoritative for, even if it holds no
    /// records besides its SOA and NS: every name below it that has no
    /// record is answered `NXDOMAIN`. Records whose name is inside a
    /// declared zone are served from the longest such zone.
    pub fn zone(mut self, zone: &str) -> Self {
        if let Some(name) = self.parse_name(zone) {
            self.zones.push(name);
        }
        self
    }

    /// Adds a record with any data `hickory-proto` can encode. The other
    /// record methods are shorthands for this one.
    pub fn record(mut self, name: &str, data: RData) -> Self {
        if let Some(name) = self.parse_name(name) {
            let ttl = self.ttl.unwrap_or(DEFAULT_TTL);
            self.records.push(Record::from_rdata(name, ttl, data));
        }
        self
    }

    /// Adds an `A` record.
    pub fn a(self, name: &str, addr: Ipv4Addr) -> Self {
        self.record(name, RData::A(rdata::A(addr)))
    }

    /// Adds an `AAAA` record.
    pub fn aaaa(self, name: &str, addr: Ipv6Addr) -> Self {
        self.record(name, RData::AAAA(rdata::AAAA(addr)))
    }

    /// Adds an `MX` record: mail for `domain` goes to `exchange` with the
    /// given preference (lower is preferred).
    pub fn mx(mut self, domain: &str, preference: u16, exchange: &str) -> Self {
        match self.parse_name(exchange) {
            Some(exchange) => self.record(domain, RData::MX(MX::new(preference, exchange))),
            None => self,
        }
    }

    /// Adds the null MX of RFC 7505 §3: a single `MX 0 .`, saying the domain
    /// accepts no mail.
    pub fn null_mx(self, domain: &str) -> Self {
        self.record(domain, RData::MX(MX::new(0, Name::root())))
    }

    /// Adds a `CNAME` record: `name` is an alias of `target`.
    pub fn cname(mut self, name: &str, target: &str) -> Self {
        match self.parse_name(target) {
            Some(target) => self.record(name, RData::CNAME(rdata::CNAME(target))),
            None => self,
        }
    }

    /// Adds a `TXT` record with one text. Texts longer than 255 octets are
    /// split into several character-strings (RFC 7208 §3.3 joins them back
    /// without spaces), at character boundaries.
    pub fn txt(self, name: &str, text: &str) -> Self {
        let mut parts = Vec::new();
        let mut rest = text;
        while rest.len() > 255 {
            let mut cut = 255;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            parts.push(rest[..cut].to_owned());
            rest = &rest[cut..];
        }
        parts.push(rest.to_owned());
        self.record(name, RData::TXT(TXT::new(parts)))
    }

    /// Adds a `TLSA` record (RFC 6698 §2.1) with the numeric certificate
    /// usage, selector and matching type and the association data, e.g.
    /// `tlsa("_25._tcp.mx1.example.test", 3, 1, 1, &sha256_of_spki)`.
    pub fn tlsa(
        self,
        name: &str,
        usage: u8,
        selector: u8,
        matching: u8,
        association_data: &[u8],
    ) -> Self {
        let tlsa = TLSA::new(
            usage.into(),
            selector.into(),
            matching.into(),
            association_data.to_vec(),
        );
        self.record(name, RData::TLSA(tlsa))
    }

    /// Makes every query for `name` or a name below it fail with
    /// `SERVFAIL`, as a broken or unreachable authoritative server would.
    pub fn servfail(mut self, name: &str) -> Self {
        if let Some(name) = self.parse_name(name) {
            self.servfail.push(name);
        }
        self
    }

    /// Makes the server never answer queries for `name` or a name below it,
    /// over UDP or TCP, so the client times out.
    pub fn no_answer(mut self, name: &str) -> Self {
        if let Some(name) = self.parse_name(name) {
            self.no_answer.push(name);
        }
        self
    }

    /// Binds `127.0.0.1` on a free port for UDP and TCP and starts serving.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] when a name or record
    /// given to the builder was invalid, or with the socket error.
    pub async fn start(self) -> io::Result<TestDns> {
        if let Some(error) = self.error {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, error));
        }
        let (catalog, trust_anchors) = build_catalog(&self.zones, self.records, &self.signed)?;
        let queries = Arc::new(AtomicU64::new(0));
        let handler = TestHandler::new(catalog, self.servfail, self.no_answer, queries.clone());
        let (udp, tcp) = bind_same_port().await?;
        let addr = udp.local_addr()?;
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT, 64);
        Ok(TestDns {
            addr,
            queries,
            trust_anchors,
            server,
        })
    }

    fn parse_name(&mut self, name: &str) -> Option<Name> {
        match Name::from_str(name) {
            Ok(mut parsed) => {
                parsed.set_fqdn(true);
                Some(parsed)
            }
            Err(error) => {
                self.error
                    .get_or_insert_with(|| format!("invalid DNS name {name:?}: {error}"));
                None
            }
        }
    }
}

/// Puts every record in its zone and makes one in-memory zone handler per
/// zone, each with an SOA and an NS record at its apex.
fn build_catalog(
    declared: &[Name],
    records: Vec<Record>,
    signed: &[Name],
) -> io::Result<(Catalog, String)> {
    #[cfg_attr(not(feature = "dnssec"), allow(unused_mut))]
    let mut trust_anchors = String::new();
    #[cfg(not(feature = "dnssec"))]
    let _ = signed;
    let mut zones: BTreeMap<Name, Vec<Record>> = BTreeMap::new();
    for zone in declared {
        zones.entry(zone.clone()).or_default();
    }
    for record in records {
        let zone = zone_for(declared, &record.name);
        zones.entry(zone).or_default().push(record);
    }
    let mut catalog = Catalog::new();
    for (origin, records) in zones {
        let mut handler = new_zone_handler(origin.clone());
        let serial = 1;
        let ns = Name::from_str("ns.invalid.")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let soa = SOA::new(
            ns.clone(),
            Name::from_str("hostmaster.invalid.")
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?,
            serial,
            3600,
            600,
            86400,
            // The negative-caching TTL (RFC 2308 §5): short, tests restart
            // servers with other records.
            1,
        );
        let apex = [
            Record::from_rdata(origin.clone(), DEFAULT_TTL, RData::SOA(soa)),
            Record::from_rdata(origin.clone(), DEFAULT_TTL, RData::NS(NS(ns))),
        ];
        for record in apex.into_iter().chain(records) {
            let what = format!("{} {}", &record.name, record.record_type());
            let apex_cname = record.record_type() == RecordType::CNAME && record.name == origin;
            if !handler.upsert_mut(record, serial) {
                let why = if apex_cname {
                    " (a CNAME cannot sit at a zone apex beside its SOA and NS, RFC 1034 §3.6.2; \
                     declare a parent zone with TestDnsBuilder::zone)"
                } else {
                    ""
                };
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("record {what} cannot be added to zone {origin}{why}"),
                ));
            }
        }
        #[cfg(feature = "dnssec")]
        if signed.contains(&origin) {
            trust_anchors.push_str(&dnssec::sign(&mut handler, &origin)?);
            trust_anchors.push('\n');
        }
        let handler: Arc<dyn ZoneHandler> = Arc::new(handler);
        catalog.upsert(LowerName::new(&origin), vec![handler]);
    }
    Ok((catalog, trust_anchors))
}

#[cfg(not(feature = "dnssec"))]
fn new_zone_handler(origin: Name) -> InMemoryZoneHandler {
    InMemoryZoneHandler::empty(origin, ZoneType::Primary, AxfrPolicy::Deny)
}

#[cfg(feature = "dnssec")]
fn new_zone_handler(origin: Name) -> InMemoryZoneHandler {
    InMemoryZoneHandler::empty(origin, ZoneType::Primary, AxfrPolicy::Deny, None)
}

/// The zone a record name belongs to: the longest declared zone containing
/// it, else its last two labels.
fn zone_for(declared: &[Name], name: &Name) -> Name {
    declared
        .iter()
        .filter(|zone| zone.zone_of(name))
        .max_by_key(|zone| zone.num_labels())
        .cloned()
        .unwrap_or_else(|| name.trim_to(2))
}

/// Binds a UDP socket on a free loopback port and a TCP listener on the same
/// port (resolvers use one port for both), retrying when another process
/// holds the TCP side of the port the kernel picked for UDP.
async fn bind_same_port() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    for _ in 0..50 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free port for UDP and TCP")))
}
