//! The request handler hickory-server calls for every query: decide (container name, refusal,
//! cache hit — all without waiting), forward what needs the network, and hand the sections to
//! hickory-server's encoder. UDP replies larger than the client takes go out empty with TC set,
//! so the client asks again over TCP.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use hickory_proto::xfer::Protocol;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};

use crate::answer::{self, Decision, Reply};
use crate::metrics::Metrics;
use crate::server::Shared;

/// Serves one listen address: the address a query arrived on picks the network when subnets
/// of two networks overlap.
pub struct Front {
    shared: Arc<Shared>,
    local: IpAddr,
}

impl Front {
    pub fn new(shared: Arc<Shared>, local: IpAddr) -> Self {
        Front { shared, local }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Front {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let start = Instant::now();
        let metrics = &self.shared.metrics;
        let udp = request.protocol() == Protocol::Udp;
        Metrics::inc(if udp {
            &metrics.queries_udp
        } else {
            &metrics.queries_tcp
        });
        let reply = self.shared.reply(request, self.local).await;
        let mut header = reply.header(request.header());
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = answer::reply_edns(request.edns()) {
            builder.edns(e);
        }
        let fits = !udp
            || answer::fits(
                &header,
                request.queries(),
                &reply,
                answer::udp_limit(request.edns()),
            );
        let sent = if fits {
            let message = builder.build(
                header,
                reply.answers.iter(),
                reply.authority.iter(),
                std::iter::empty(),
                reply.additionals.iter(),
            );
            response.send_response(message).await
        } else {
            Metrics::inc(&metrics.truncated);
            header.set_truncated(true);
            response
                .send_response(builder.build_no_records(header))
                .await
        };
        metrics.observe(start.elapsed());
        match sent {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, src = %request.src(), "reply not sent");
                header.into()
            }
        }
    }
}

impl Shared {
    /// The reply to `request` arriving on `local`: answered at once when the table or the
    /// cache can, else after the upstreams (or SERVFAIL when none answers in time).
    pub async fn reply(&self, request: &Request, local: IpAddr) -> Reply {
        // The table guard is dropped before any await: a reload swaps in a new table while
        // forwarded queries wait.
        let decision = {
            let table = self.table.load();
            answer::decide(
                &table,
                &self.rr,
                request.op_code(),
                request.queries(),
                request.src().ip(),
                local,
            )
        };
        let (network, upstreams) = match decision {
            Decision::Reply(m) => {
                match m.code {
                    ResponseCode::Refused => Metrics::inc(&self.metrics.refused),
                    ResponseCode::FormErr | ResponseCode::NotImp => {
                        Metrics::inc(&self.metrics.formerr)
                    }
                    _ => Metrics::inc(&self.metrics.local_answers),
                }
                if m.code == ResponseCode::NXDomain {
                    Metrics::inc(&self.metrics.nxdomain);
                }
                return m;
            }
            Decision::Forward { network, upstreams } => (network, upstreams),
        };
        // decide() forwards only single questions.
        let [q] = request.queries() else {
            return Reply::code(ResponseCode::FormErr);
        };
        let q = q.original();
        if let Some(hit) = self.forwarder.cached(&network, q) {
            Metrics::inc(&self.metrics.cache_hits);
            return Reply::from_upstream(hit);
        }
        match self.forwarder.resolve(&network, q, &upstreams).await {
            Some(up) => {
                if up.response_code() == ResponseCode::NXDomain {
                    Metrics::inc(&self.metrics.nxdomain);
                }
                Reply::from_upstream(up)
            }
            None => {
                Metrics::inc(&self.metrics.servfail);
                Reply::code(ResponseCode::ServFail)
            }
        }
    }
}
