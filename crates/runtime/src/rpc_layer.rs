//! The server layer every call passes through: one `rpc` span per call (service, method,
//! tenant, and a `customer` field handlers fill in), continuing the caller's W3C trace, and
//! the caller's deadline recorded for the calls this one makes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};
use tracing::Instrument;

use crate::context::{parse_grpc_timeout, with_deadline};
use crate::tenant::TENANT_METADATA_KEY;

#[derive(Debug, Clone, Copy, Default)]
pub struct RpcLayer;

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for RpcService<S>
where
    S: Service<http::Request<B>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
        // Only a well-formed tenant goes into the span; the interceptor rejects the rest.
        let tenant = request
            .headers()
            .get(TENANT_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .filter(|value| value.len() <= 64)
            .unwrap_or("");
        let span = tracing::info_span!(
            "rpc",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            tenant = tenant,
            customer = tracing::field::Empty,
        );
        crm_telemetry::continue_trace(&span, request.headers());
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            .and_then(|timeout| Instant::now().checked_add(timeout));
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(with_deadline(deadline, response.instrument(span)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_callers_deadline_reaches_downstream_calls() {
        let handler = RpcLayer.layer(tower::service_fn(|_request: http::Request<()>| async {
            let mut outgoing = http::HeaderMap::new();
            crate::context::prepare_downstream_headers(&mut outgoing).unwrap();
            Ok::<_, std::convert::Infallible>(outgoing)
        }));
        let request = http::Request::builder()
            .uri("/crm.test.v1.TestService/Call")
            .header("grpc-timeout", "2S")
            .body(())
            .unwrap();
        let outgoing = handler.oneshot(request).await.unwrap();
        let timeout = outgoing
            .get("grpc-timeout")
            .expect("budget passed on")
            .to_str()
            .unwrap();
        let budget = parse_grpc_timeout(timeout).unwrap();
        assert!(
            budget <= Duration::from_secs(2) && budget > Duration::from_millis(1500),
            "{timeout}"
        );
    }
}
