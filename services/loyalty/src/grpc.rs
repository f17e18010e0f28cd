//! The tonic service: requests checked field by field, then handed to [`Loyalty`].

use std::sync::Arc;
use std::time::Duration;

use crm_cache::Cache;
use crm_db::idempotency::RequestKey;
use crm_error::ApiError;
use crm_proto::loyalty_v1 as pb;
use crm_proto::loyalty_v1::loyalty_service_server::{LoyaltyService, LoyaltyServiceServer};
use crm_runtime::TenantId;
use prost::Message;
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::domain::CustomerId;
use crate::error::LoyaltyError;
use crate::service::Loyalty;
use crate::store::{PageOrder, Store};

/// Longest adjustment reason, in characters.
const MAX_REASON_CHARS: usize = 500;
const DEFAULT_PAGE_SIZE: u64 = 50;
const MAX_PAGE_SIZE: i32 = 1000;

pub struct LoyaltyGrpc {
    service: Loyalty,
}

impl LoyaltyGrpc {
    pub fn server(
        db: DatabaseConnection,
        cache: Arc<dyn Cache>,
        cache_ttl: Duration,
    ) -> LoyaltyServiceServer<Self> {
        LoyaltyServiceServer::new(Self {
            service: Loyalty::new(Store::new(db), cache, cache_ttl),
        })
    }
}

fn status(error: LoyaltyError) -> Status {
    Status::from(ApiError::from(error))
}

fn record_customer(customer: &CustomerId) {
    tracing::Span::current().record("customer", tracing::field::display(customer));
}

fn request_key<M: Message>(
    method: &'static str,
    request_id: &str,
    cleared: &M,
) -> Result<Option<RequestKey>, Status> {
    RequestKey::parse(method, request_id, &cleared.encode_to_vec())
        .map_err(|error| status(LoyaltyError::invalid("request_id", error.to_string())))
}

fn page_size(requested: i32) -> Result<u64, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        1..=MAX_PAGE_SIZE => Ok(requested.unsigned_abs().into()),
        _ => Err(status(LoyaltyError::invalid(
            "page_size",
            format!("must be 0 to {MAX_PAGE_SIZE}"),
        ))),
    }
}

#[tonic::async_trait]
impl LoyaltyService for LoyaltyGrpc {
    async fn get_program(
        &self,
        request: Request<pb::GetProgramRequest>,
    ) -> Result<Response<pb::Program>, Status> {
        let tenant = TenantId::of(&request)?;
        let stored = self.service.program(tenant.as_str()).await.map_err(status)?;
        Ok(Response::new(convert::program_to_pb(&stored)))
    }

    async fn update_program(
        &self,
        request: Request<pb::UpdateProgramRequest>,
    ) -> Result<Response<pb::Program>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let Some(requested) = message.program.as_ref() else {
            return Err(status(LoyaltyError::invalid("program", "is required")));
        };
        let program = convert::program_from_pb(requested).map_err(status)?;
        let expected_revision = convert::parse_program_etag(&requested.etag).map_err(status)?;
        let key = request_key(
            "UpdateProgram",
            &message.request_id,
            &pb::UpdateProgramRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let updated = self
            .service
            .update_program(tenant.as_str(), program, expected_revision, key)
            .await
            .map_err(status)?;
        Ok(Response::new(updated))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let tenant = TenantId::of(&request)?;
        let customer = convert::parse_account_name(&request.get_ref().name, "name").map_err(status)?;
        record_customer(&customer);
        let view = self
            .service
            .account(tenant.as_str(), &customer)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::account_to_pb(
            &view.account,
            view.program.as_ref(),
            view.at,
        )))
    }

    async fn adjust_points(
        &self,
        request: Request<pb::AdjustPointsRequest>,
    ) -> Result<Response<pb::LedgerEntry>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let customer = convert::parse_account_name(&message.account, "account").map_err(status)?;
        record_customer(&customer);
        if message.points == 0 {
            return Err(status(LoyaltyError::invalid("points", "must not be 0")));
        }
        let reason = message.reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
            return Err(status(LoyaltyError::invalid(
                "reason",
                format!("is required: 1 to {MAX_REASON_CHARS} characters, not only spaces"),
            )));
        }
        // Required: the entry id derives from it, and the stored entry (not an idempotency
        // record) tells a retry from another request under the same id. Only its form is
        // checked here, as for every request id.
        if message.request_id.is_empty() {
            return Err(status(LoyaltyError::invalid(
                "request_id",
                "is required: the ledger entry's id derives from it",
            )));
        }
        RequestKey::parse("AdjustPoints", &message.request_id, &[])
            .map_err(|error| status(LoyaltyError::invalid("request_id", error.to_string())))?;
        let (_, entry) = self
            .service
            .adjust_points(
                tenant.as_str(),
                &customer,
                message.points,
                reason.to_owned(),
                &message.request_id,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::entry_to_pb(&entry)))
    }

    async fn list_ledger_entries(
        &self,
        request: Request<pb::ListLedgerEntriesRequest>,
    ) -> Result<Response<pb::ListLedgerEntriesResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let customer = convert::parse_account_name(&message.parent, "parent").map_err(status)?;
        record_customer(&customer);
        let limit = page_size(message.page_size)?;
        let after = if message.page_token.is_empty() {
            None
        } else {
            Some(
                message
                    .page_token
                    .parse::<i64>()
                    .ok()
                    .filter(|seq| *seq >= 0)
                    .ok_or_else(|| {
                        status(LoyaltyError::invalid(
                            "page_token",
                            "is not a token this list returned",
                        ))
                    })?,
            )
        };
        let order = if message.oldest_first {
            PageOrder::OldestFirst
        } else {
            PageOrder::NewestFirst
        };
        // One more than asked tells whether a next page exists.
        let mut page = self
            .service
            .ledger_page(tenant.as_str(), &customer, after, limit + 1, order)
            .await
            .map_err(status)?;
        let next_page_token = if page.len() as u64 > limit {
            page.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            page.last().map(|last| last.seq.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListLedgerEntriesResponse {
            entries: page
                .iter()
                .map(|stored| convert::entry_to_pb(&stored.entry))
                .collect(),
            next_page_token,
        }))
    }
}
