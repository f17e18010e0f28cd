//! Forwarding gRPC calls to the peer that owns the service.
//!
//! The proxy works on raw HTTP/2 requests: it neither decodes nor re-encodes messages, so
//! unary and streaming calls, metadata and trailers pass through untouched. Only the deadline
//! (the remaining budget) and the trace context are rewritten on the way out. A peer that
//! cannot be reached answers UNAVAILABLE, which clients may retry.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

/// Forwards every call of one gRPC service to one peer.
#[derive(Clone)]
pub struct GrpcProxy {
    /// The fully qualified gRPC service name, for logs and errors.
    service: &'static str,
    channel: Channel,
}

impl GrpcProxy {
    pub fn new(service: &'static str, channel: Channel) -> Self {
        Self { service, channel }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn status_response(status: Status) -> http::Response<axum::body::Body> {
    status.into_http::<tonic::body::Body>().map(axum::body::Body::new)
}

impl Service<http::Request<axum::body::Body>> for GrpcProxy {
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The channel's readiness is awaited per call, so one slow peer never blocks the router.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<axum::body::Body>) -> Self::Future {
        let channel = self.channel.clone();
        let service = self.service;
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            if let Err(status) = crm_runtime::context::prepare_downstream_headers(&mut parts.headers) {
                return Ok(status_response(status));
            }
            let outgoing = http::Request::from_parts(parts, tonic::body::Body::new(body));
            match channel.oneshot(outgoing).await {
                Ok(response) => Ok(response.map(axum::body::Body::new)),
                Err(error) => {
                    tracing::warn!(service, %error, "peer unreachable");
                    Ok(status_response(Status::unavailable(format!(
                        "{service} is unavailable: {error}"
                    ))))
                }
            }
        })
    }
}

/// Adds a forwarding route for each `(gRPC service name, channel)` to `routes`.
pub fn add_proxy_routes(
    routes: tonic::service::Routes,
    peers: impl IntoIterator<Item = (&'static str, Channel)>,
) -> tonic::service::Routes {
    let mut router = routes.into_axum_router();
    for (service, channel) in peers {
        router = router.route_service(
            &format!("/{service}/{{*method}}"),
            GrpcProxy::new(service, channel),
        );
    }
    tonic::service::Routes::from(router)
}
