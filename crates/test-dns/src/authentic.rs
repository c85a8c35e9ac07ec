//! Answers flagged as DNSSEC-validated.
//!
//! A validating recursive resolver sets the AD (authentic data) bit on
//! answers whose signatures it verified (RFC 4035 §3.2.3); a client such as
//! an MTA doing DANE trusts that bit from its own resolver (RFC 7672 §2.1).
//! [`TestDnsBuilder::authentic`] makes the test server answer names as such
//! a resolver would, so DANE logic can be tested without signing zones.
//! The records themselves carry no signatures.

use hickory_proto::rr::Record;
use hickory_server::net::NetError;
use hickory_server::server::{ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;

use crate::TestDnsBuilder;

impl TestDnsBuilder {
    /// Sets the AD bit on every answer for `name` or a name below it, as a
    /// validating resolver does for a DNSSEC-signed zone whose signatures
    /// it verified.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let dns = test_dns::TestDns::builder()
    ///     .tlsa("_25._tcp.mx.signed.test", 3, 1, 1, &[0; 32])
    ///     .authentic("signed.test")
    ///     .start()
    ///     .await?;
    /// # drop(dns);
    /// # Ok(())
    /// # }
    /// ```
    pub fn authentic(mut self, name: &str) -> Self {
        if let Some(name) = self.parse_name(name) {
            self.authentic.push(name);
        }
        self
    }
}

/// Wraps a response handle and sets the AD bit on what it sends.
#[derive(Clone)]
pub(crate) struct AuthenticResponse<R> {
    inner: R,
}

impl<R> AuthenticResponse<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self { inner }
    }
}

#[async_trait::async_trait]
impl<R: ResponseHandler> ResponseHandler for AuthenticResponse<R> {
    async fn send_response<'a>(
        &mut self,
        mut response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        response.metadata_mut().authentic_data = true;
        self.inner.send_response(response).await
    }
}
