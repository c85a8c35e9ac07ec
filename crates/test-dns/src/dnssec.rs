//! DNSSEC-signed test zones (feature `dnssec`).
//!
//! [`TestDnsBuilder::signed`] signs a zone with a fresh ECDSA P-256 key
//! (RFC 6605) when the server starts: every RRset gets an RRSIG and the
//! apex a DNSKEY. Validators trust the zone through
//! [`TestDns::trust_anchors`], the DNSKEY records in zone-file format, as a
//! trust-anchor file for that zone (there is no chain from the root).

use std::io;
use std::time::Duration;

use hickory_proto::dnssec::crypto::EcdsaSigningKey;
use hickory_proto::dnssec::rdata::DNSKEY;
use hickory_proto::dnssec::{Algorithm, DnssecSigner, SigningKey};
use hickory_proto::rr::Name;
use hickory_server::store::in_memory::InMemoryZoneHandler;

use crate::{TestDns, TestDnsBuilder};

/// How long the signatures are valid.
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

impl TestDnsBuilder {
    /// Signs `zone` (declaring it as a zone if it is not one yet).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let dns = test_dns::TestDns::builder()
    ///     .tlsa("_25._tcp.mx.signed.test", 3, 1, 1, &[0; 32])
    ///     .signed("signed.test")
    ///     .start()
    ///     .await?;
    /// assert!(dns.trust_anchors().starts_with("signed.test. "));
    /// # Ok(())
    /// # }
    /// ```
    pub fn signed(mut self, zone: &str) -> Self {
        if let Some(name) = self.parse_name(zone) {
            if !self.zones.contains(&name) {
                self.zones.push(name.clone());
            }
            self.signed.push(name);
        }
        self
    }
}

impl TestDns {
    /// The DNSKEY records of the signed zones, one per line in zone-file
    /// format (`signed.test. 300 IN DNSKEY 257 3 13 ...`), for a
    /// validator's trust-anchor file. Empty when no zone is signed.
    pub fn trust_anchors(&self) -> &str {
        &self.trust_anchors
    }
}

/// Signs `handler`'s zone with a new key; returns the trust-anchor line.
pub(crate) fn sign(handler: &mut InMemoryZoneHandler, origin: &Name) -> io::Result<String> {
    let invalid =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
    let algorithm = Algorithm::ECDSAP256SHA256;
    let pkcs8 = EcdsaSigningKey::generate_pkcs8(algorithm).map_err(|e| invalid(&e))?;
    let key = EcdsaSigningKey::from_pkcs8(&pkcs8, algorithm).map_err(|e| invalid(&e))?;
    let public = key.to_public_key().map_err(|e| invalid(&e))?;
    let dnskey = DNSKEY::from_key(&public);
    let line = format!("{} {} IN DNSKEY {}", origin, crate::DEFAULT_TTL, dnskey);
    let signer = DnssecSigner::new(dnskey, Box::new(key), origin.clone(), SIGNATURE_LIFETIME);
    handler
        .add_zone_signing_key_mut(signer)
        .map_err(|e| invalid(&e))?;
    handler.secure_zone_mut().map_err(|e| invalid(&e))?;
    Ok(line)
}
