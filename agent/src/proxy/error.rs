//! Everything that ends a request without the upstream's answer and is not
//! a policy decision, as one type, turned into a response in one place
//! ([`ProxyError::respond`]) — linkerd's `HttpRescue`, ztunnel's
//! `InboundFlagError`. Refusals by policy are `respond::refusal`.

use http::{HeaderValue, Response, StatusCode};

use super::metrics::UpstreamFailure;
use super::{ProxyBody, respond};
use crate::trace::TraceId;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("workload is not enrolled")]
    WorkloadRemoved,
    #[error("request body is over the size limit (limits.max_body_bytes)")]
    BodyTooLarge,
    #[error("the request body's framing is invalid or it ended early")]
    ClientBody,
    #[error("request target cannot be forwarded")]
    BadTarget,
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    #[error("upstream connection failed")]
    UpstreamConnect(#[source] super::BoxError),
    #[error("upstream connection failed")]
    UpstreamProtocol(#[source] super::BoxError),
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            Self::WorkloadRemoved => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ClientBody | Self::BadTarget => StatusCode::BAD_REQUEST,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamConnect(_) | Self::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `reason` of the JSON body.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::WorkloadRemoved => "workload_removed",
            Self::BodyTooLarge => "body_too_large",
            Self::ClientBody => "bad_request_body",
            Self::BadTarget => "bad_request",
            Self::UpstreamTimeout(_) => "upstream_timeout",
            Self::UpstreamConnect(_) | Self::UpstreamProtocol(_) => "upstream_unavailable",
        }
    }

    /// The upstream's fault, for `nodeward_upstream_errors_total`.
    pub fn upstream_failure(&self) -> Option<UpstreamFailure> {
        match self {
            Self::UpstreamTimeout(_) => Some(UpstreamFailure::Timeout),
            Self::UpstreamConnect(_) => Some(UpstreamFailure::Connect),
            Self::UpstreamProtocol(_) => Some(UpstreamFailure::Protocol),
            _ => None,
        }
    }

    /// Whether the client abandoned the request (its body broke off: an
    /// HTTP/2 reset, a dropped connection); it counts against the
    /// connection's cancellation budget.
    pub fn client_gave_up(&self) -> bool {
        matches!(self, Self::ClientBody)
    }

    pub fn respond(&self, request_id: &HeaderValue, trace: Option<&TraceId>) -> Response<ProxyBody> {
        respond::error(self.status(), self.reason(), &self.to_string(), request_id, trace)
    }
}
