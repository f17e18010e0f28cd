//! Calls between the suite's own services on internal RPCs (the all-tenant event feeds): the
//! caller shows the deployment's shared secret, the callee checks it.
//!
//! The feeds carry every tenant's events, so they must never be reachable by a client: the
//! gateway does not route them, and a call without the right token is UNAUTHENTICATED whatever
//! port it arrives on (in one process the public port serves them too).

use std::sync::Arc;
use std::time::Duration;

use crm_db::outbox::Outbox;
use crm_error::ApiError;
use crm_proto::internal_v1::FeedEvent;
use futures::{Stream, StreamExt};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::context::prepare_downstream_headers;

/// The metadata key carrying the token.
pub const INTERNAL_TOKEN_KEY: &str = "x-crm-internal-token";

/// The deployment's internal token: configured, or random for a process on its own.
#[derive(Clone)]
pub struct InternalToken(Arc<str>);

impl std::fmt::Debug for InternalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalToken(********)")
    }
}

impl InternalToken {
    /// The configured token, or a random one (two v4 UUIDs: 244 random bits) that only this
    /// process knows.
    pub fn configured_or_random(configured: Option<&str>) -> Self {
        let token = match configured {
            Some(token) => token.to_owned(),
            None => format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
        };
        Self(token.into())
    }

    /// A server interceptor that lets only callers with this token through.
    pub fn require(&self) -> impl Interceptor + Clone + Send + Sync + 'static {
        let expected = Arc::clone(&self.0);
        move |request: Request<()>| {
            let presented = request
                .metadata()
                .get(INTERNAL_TOKEN_KEY)
                .and_then(|value| value.to_str().ok());
            // Compared in time independent of where the first difference is, so the token
            // cannot be guessed byte by byte from response times.
            if presented.is_some_and(|presented| same_secret(presented.as_bytes(), expected.as_bytes())) {
                Ok(request)
            } else {
                Err(Status::from(ApiError::Unauthenticated {
                    reason: "INTERNAL_TOKEN_INVALID",
                    message: format!("internal service: {INTERNAL_TOKEN_KEY} is missing or wrong"),
                }))
            }
        }
    }

    /// A client interceptor that presents this token, with the deadline and trace carried on.
    pub fn present(&self) -> PresentInternalToken {
        PresentInternalToken(Arc::clone(&self.0))
    }
}

/// Whether two secrets are equal, looking at every byte whatever the first difference.
fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0_u8, |difference, (left, right)| difference | (left ^ right))
            == 0
}

/// See [`InternalToken::present`].
#[derive(Clone)]
pub struct PresentInternalToken(Arc<str>);

impl Interceptor for PresentInternalToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let mut headers = std::mem::take(request.metadata_mut()).into_headers();
        prepare_downstream_headers(&mut headers)?;
        *request.metadata_mut() = MetadataMap::from_headers(headers);
        let value = AsciiMetadataValue::try_from(&*self.0)
            .map_err(|_| Status::from(ApiError::internal("the internal token is not ASCII")))?;
        request.metadata_mut().insert(INTERNAL_TOKEN_KEY, value);
        Ok(request)
    }
}

/// An owner's outbox as an internal feed: every tenant's events after `cursor` (empty for the
/// start) of `event_types` (all when empty), then new ones as they are positioned.
pub fn feed_stream(
    outbox: &Outbox,
    cursor: &str,
    event_types: Vec<String>,
    poll_interval: Duration,
) -> Result<impl Stream<Item = Result<FeedEvent, Status>> + Send + 'static, Status> {
    let after = crm_db::outbox::parse_cursor(cursor)
        .ok_or_else(|| Status::from(ApiError::invalid_field("cursor", "is not a cursor of this feed")))?;
    Ok(outbox
        .subscribe(None, after, event_types, poll_interval)
        .take_until(crate::server::draining())
        .map(|stored| {
            let stored = stored.map_err(|error| Status::from(crm_db::api_error(error)))?;
            Ok(FeedEvent {
                cursor: stored.position.to_string(),
                tenant: stored.tenant_id,
                event_type: stored.event_type,
                payload: stored.payload,
                event_time: Some(prost_types::Timestamp {
                    seconds: stored.create_time.timestamp(),
                    nanos: i32::try_from(stored.create_time.timestamp_subsec_nanos()).unwrap_or(0),
                }),
            })
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_token_passes() {
        let token = InternalToken::configured_or_random(None);
        let other = InternalToken::configured_or_random(None);
        let mut require = token.require();
        let presented = token.present().call(Request::new(())).unwrap();
        assert!(require.call(presented).is_ok());
        let wrong = other.present().call(Request::new(())).unwrap();
        assert_eq!(
            require.call(wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            require.call(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
