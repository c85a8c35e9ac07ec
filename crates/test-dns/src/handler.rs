//! The request handler: failure zones first, then the catalog of served
//! zones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::Name;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder};

/// Answers from the catalog, except for names under a SERVFAIL or no-answer
/// name.
pub(crate) struct TestHandler {
    catalog: Catalog,
    servfail: Vec<Name>,
    no_answer: Vec<Name>,
    queries: Arc<AtomicU64>,
}

impl TestHandler {
    pub(crate) fn new(
        catalog: Catalog,
        servfail: Vec<Name>,
        no_answer: Vec<Name>,
        queries: Arc<AtomicU64>,
    ) -> Self {
        Self {
            catalog,
            servfail,
            no_answer,
            queries,
        }
    }
}

/// Which of `names` is `query` at or below, if any.
fn under(names: &[Name], query: &Name) -> bool {
    names.iter().any(|name| name.zone_of(query))
}

#[async_trait::async_trait]
impl RequestHandler for TestHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let names: Vec<Name> = request
            .queries
            .queries()
            .iter()
            .map(|query| Name::from(query.name().clone()))
            .collect();
        if names.iter().any(|name| under(&self.no_answer, name)) {
            // Nothing is sent; the ResponseInfo only feeds the server's logs.
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            return ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            });
        }
        if names.iter().any(|name| under(&self.servfail, name)) {
            let response = MessageResponseBuilder::new(&request.queries, None)
                .error_msg(&request.metadata, ResponseCode::ServFail);
            return match response_handle.send_response(response).await {
                Ok(info) => info,
                Err(error) => {
                    tracing::warn!(%error, "test-dns: failed to send SERVFAIL");
                    let mut metadata = Metadata::response_from_request(&request.metadata);
                    metadata.response_code = ResponseCode::ServFail;
                    ResponseInfo::from(Header {
                        metadata,
                        counts: HeaderCounts::default(),
                    })
                }
            };
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}
