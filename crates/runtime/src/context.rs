//! What a call carries on to the calls it makes: its deadline, its trace and its tenant.
//!
//! tonic enforces an incoming `grpc-timeout` but does not pass it on; the server layer
//! ([`crate::rpc_layer`]) records the deadline for the handler's task, and every outgoing call
//! ([`OutgoingContext`], and the gateway's proxy through [`prepare_downstream_headers`]) gets
//! the remaining budget and the current span's `traceparent`.

use std::time::{Duration, Instant};

use crm_error::ApiError;
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;

use crate::tenant::{TENANT_METADATA_KEY, TenantId};

tokio::task_local! {
    static DEADLINE: Option<Instant>;
}

/// Runs `future` with `deadline` as the deadline of the current call.
pub async fn with_deadline<F: Future>(deadline: Option<Instant>, future: F) -> F::Output {
    DEADLINE.scope(deadline, future).await
}

/// The deadline of the call being served, if its caller set one.
pub fn current_deadline() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok().flatten()
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`, unit one of H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value (at most 8 digits, rounded down to what fits).
pub fn format_grpc_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let micros = timeout.as_micros();
    if micros <= MAX {
        format!("{micros}u")
    } else if timeout.as_millis() <= MAX {
        format!("{}m", timeout.as_millis())
    } else {
        format!("{}S", timeout.as_secs().min(MAX as u64))
    }
}

fn remaining_budget() -> Result<Option<Duration>, Status> {
    match current_deadline() {
        None => Ok(None),
        Some(deadline) => {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                Err(Status::deadline_exceeded(
                    "the caller's deadline passed before the downstream call",
                ))
            } else {
                Ok(Some(remaining))
            }
        }
    }
}

/// Rewrites the headers of a request about to leave this process: the remaining deadline as
/// `grpc-timeout` (never longer than what the request already asked for) and the current
/// span's trace context.
pub fn prepare_downstream_headers(headers: &mut http::HeaderMap) -> Result<(), Status> {
    if let Some(remaining) = remaining_budget()? {
        let requested = headers
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout);
        let budget = requested.map_or(remaining, |requested| requested.min(remaining));
        if let Ok(value) = http::HeaderValue::from_str(&format_grpc_timeout(budget)) {
            headers.insert("grpc-timeout", value);
        }
    }
    crm_telemetry::propagate_trace(&tracing::Span::current(), headers);
    Ok(())
}

/// The interceptor of every generated client one service uses to call another: it sets the
/// tenant and carries the deadline and the trace.
#[derive(Debug, Clone)]
pub struct OutgoingContext {
    tenant: TenantId,
}

impl OutgoingContext {
    pub fn new(tenant: TenantId) -> Self {
        Self { tenant }
    }
}

impl Interceptor for OutgoingContext {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let mut headers = std::mem::take(request.metadata_mut()).into_headers();
        prepare_downstream_headers(&mut headers)?;
        let tenant = http::HeaderValue::from_str(self.tenant.as_str()).map_err(|_| {
            Status::from(ApiError::internal(
                "a validated tenant id is always a header value",
            ))
        })?;
        headers.insert(TENANT_METADATA_KEY, tenant);
        *request.metadata_mut() = MetadataMap::from_headers(headers);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_round_trip() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        for timeout in [
            Duration::from_micros(1500),
            Duration::from_secs(200),
            Duration::from_secs(400_000),
        ] {
            let parsed = parse_grpc_timeout(&format_grpc_timeout(timeout)).unwrap();
            assert!(parsed <= timeout && timeout - parsed < Duration::from_secs(1));
        }
    }

    #[tokio::test]
    async fn outgoing_calls_get_the_remaining_budget_and_the_tenant() {
        let deadline = Instant::now() + Duration::from_millis(800);
        let request = with_deadline(Some(deadline), async {
            let mut interceptor = OutgoingContext::new(TenantId::parse("acme").unwrap());
            interceptor.call(tonic::Request::new(())).unwrap()
        })
        .await;
        let timeout = request.metadata().get("grpc-timeout").unwrap().to_str().unwrap();
        let budget = parse_grpc_timeout(timeout).unwrap();
        assert!(
            budget <= Duration::from_millis(800) && budget > Duration::from_millis(500),
            "{timeout}"
        );
        assert_eq!(request.metadata().get(TENANT_METADATA_KEY).unwrap(), "acme");
    }

    #[tokio::test]
    async fn a_passed_deadline_fails_before_calling() {
        let status = with_deadline(Some(Instant::now()), async {
            OutgoingContext::new(TenantId::parse("acme").unwrap())
                .call(tonic::Request::new(()))
                .unwrap_err()
        })
        .await;
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }

    #[test]
    fn without_a_deadline_no_timeout_is_added() {
        let request = OutgoingContext::new(TenantId::parse("acme").unwrap())
            .call(tonic::Request::new(()))
            .unwrap();
        assert!(request.metadata().get("grpc-timeout").is_none());
    }
}
