//! The tonic service: requests checked field by field, then handed to [`Loyalty`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crm_cache::Cache;
use crm_db::idempotency::RequestKey;
use crm_error::ApiError;
use crm_proto::loyalty_v1 as pb;
use crm_proto::loyalty_v1::loyalty_service_server::{LoyaltyService, LoyaltyServiceServer};
use crm_runtime::TenantId;
use futures::{Stream, StreamExt};
use prost::Message;
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::domain::CustomerId;
use crate::error::LoyaltyError;
use crate::follower::{self, Feeds};
use crate::service::{Loyalty, PurchaseFacts};
use crate::store::{PageOrder, Store};

mod catalog;

/// Longest adjustment reason or accrual description, in characters.
const MAX_REASON_CHARS: usize = 500;
/// Longest AccruePoints source label.
const MAX_SOURCE_CHARS: usize = 64;
/// Source labels of the service's own earns, which AccruePoints may not use.
const RESERVED_SOURCES: [&str; 2] = ["purchase", "referral"];
const DEFAULT_PAGE_SIZE: u64 = 50;
/// How often a caught-up event stream looks for events another process recorded.
const SUBSCRIBE_POLL: Duration = Duration::from_millis(200);

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::LoyaltyEvent, Status>> + Send>>;
const MAX_PAGE_SIZE: i32 = 1000;

pub struct LoyaltyGrpc {
    service: Loyalty,
    /// The services a quote reads like a recorded purchase (profiles, segments).
    feeds: Feeds,
}

impl LoyaltyGrpc {
    /// The service, with its followers of interaction's and customer-profile's feeds and its
    /// jobs (every `job_interval`) started.
    pub fn server(
        db: DatabaseConnection,
        cache: Arc<dyn Cache>,
        cache_ttl: Duration,
        feeds: Feeds,
        job_interval: Duration,
        expiry_notice_days: u32,
    ) -> LoyaltyServiceServer<Self> {
        let service =
            Loyalty::new(Store::new(db), cache, cache_ttl).with_expiry_notice_days(expiry_notice_days);
        service.outbox().spawn_sequencer(SUBSCRIBE_POLL);
        follower::spawn(service.clone(), feeds.clone());
        crate::service::spawn_jobs(service.clone(), job_interval);
        LoyaltyServiceServer::new(Self { service, feeds })
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

/// A `request_id` a ledger entry's id derives from: required. The stored entry (not an
/// idempotency record) tells a retry from another request under the same id, so only its form
/// is checked here, as for every request id.
fn required_request_id(method: &'static str, request_id: &str) -> Result<(), Status> {
    if request_id.is_empty() {
        return Err(status(LoyaltyError::invalid(
            "request_id",
            "is required: the ledger entry's id derives from it",
        )));
    }
    RequestKey::parse(method, request_id, &[])
        .map(|_| ())
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
        required_request_id("AdjustPoints", &message.request_id)?;
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

    async fn accrue_points(
        &self,
        request: Request<pb::AccruePointsRequest>,
    ) -> Result<Response<pb::LedgerEntry>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let customer = convert::parse_account_name(&message.account, "account").map_err(status)?;
        record_customer(&customer);
        if message.points < 1 {
            return Err(status(LoyaltyError::invalid("points", "must be at least 1")));
        }
        let source = message.source.as_str();
        let well_formed = (1..=MAX_SOURCE_CHARS).contains(&source.len())
            && source.bytes().all(|byte| {
                byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-'
            });
        if !well_formed || RESERVED_SOURCES.contains(&source) {
            return Err(status(LoyaltyError::invalid(
                "source",
                format!(
                    "must be 1 to {MAX_SOURCE_CHARS} of [a-z0-9_-], not {}",
                    RESERVED_SOURCES.join(" or ")
                ),
            )));
        }
        let description = message.description.trim();
        if description.chars().count() > MAX_REASON_CHARS {
            return Err(status(LoyaltyError::invalid(
                "description",
                format!("must be at most {MAX_REASON_CHARS} characters"),
            )));
        }
        required_request_id("AccruePoints", &message.request_id)?;
        let (_, entry) = self
            .service
            .accrue_points(
                tenant.as_str(),
                &customer,
                message.points,
                source.to_owned(),
                description.to_owned(),
                &message.request_id,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::entry_to_pb(&entry)))
    }

    async fn quote_points(
        &self,
        request: Request<pb::QuotePointsRequest>,
    ) -> Result<Response<pb::PointsQuote>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let customer = convert::parse_account_name(&message.account, "account").map_err(status)?;
        record_customer(&customer);
        let basket = convert::basket_from_pb(&message.lines).map_err(status)?;
        let channel = match message.channel.as_str() {
            "" => None,
            name => match crm_proto::interaction_v1::Channel::from_str_name(name) {
                Some(channel) if channel != crm_proto::interaction_v1::Channel::Unspecified => {
                    Some(name.to_owned())
                }
                _ => {
                    return Err(status(LoyaltyError::invalid(
                        "channel",
                        "must be an interaction Channel value name such as CHANNEL_WEB",
                    )));
                }
            },
        };
        let purchased_at = match &message.purchase_time {
            None => chrono::Utc::now(),
            Some(time) => convert::catalog::required_time(Some(time), "purchase_time").map_err(status)?,
        };
        let purchase = PurchaseFacts {
            purchase_id: String::new(),
            customer,
            purchased_at,
            currency_code: basket.currency_code.clone(),
            amount_minor: basket
                .lines
                .iter()
                .map(|line| line.amount_minor)
                .fold(0, i64::saturating_add),
            channel,
            profile: None,
            segment_ids: Default::default(),
        };
        let purchase = follower::purchase_facts(&self.service, &self.feeds, tenant.as_str(), purchase)
            .await
            .map_err(status)?;
        let view = self
            .service
            .quote_points(tenant.as_str(), &basket, &purchase)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::quote_to_pb(&view)))
    }

    type SubscribeLoyaltyEventsStream = EventStream;

    async fn subscribe_loyalty_events(
        &self,
        request: Request<pb::SubscribeLoyaltyEventsRequest>,
    ) -> Result<Response<Self::SubscribeLoyaltyEventsStream>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let after = crm_db::outbox::parse_cursor(&message.cursor)
            .ok_or_else(|| status(LoyaltyError::invalid("cursor", "is not a cursor of this stream")))?;
        let mut types = Vec::new();
        for (index, value) in message.types.iter().enumerate() {
            match pb::loyalty_event::Type::try_from(*value) {
                Ok(pb::loyalty_event::Type::Unspecified) | Err(_) => {
                    return Err(status(LoyaltyError::invalid(
                        format!("types[{index}]"),
                        format!("{value} is not an event type"),
                    )));
                }
                Ok(kind) => types.push(kind.as_str_name().to_owned()),
            }
        }
        let events = self
            .service
            .outbox()
            .subscribe(Some(tenant.as_str().to_owned()), after, types, SUBSCRIBE_POLL)
            .take_until(crm_runtime::server::draining());
        let stream = events.map(|stored| {
            let stored = stored.map_err(|error| Status::from(crm_db::api_error(error)))?;
            let mut event = pb::LoyaltyEvent::decode(stored.payload.as_slice())
                .map_err(|error| Status::from(ApiError::internal(format!("undecodable event: {error}"))))?;
            event.cursor = stored.position.to_string();
            event.event_time = Some(convert::timestamp(stored.create_time));
            Ok(event)
        });
        Ok(Response::new(Box::pin(stream)))
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

    // The catalogue's and the redemptions' handlers are in grpc/catalog.rs.

    async fn create_reward(
        &self,
        request: Request<pb::CreateRewardRequest>,
    ) -> Result<Response<pb::Reward>, Status> {
        self.create_reward_rpc(request).await
    }

    async fn get_reward(
        &self,
        request: Request<pb::GetRewardRequest>,
    ) -> Result<Response<pb::Reward>, Status> {
        self.get_reward_rpc(request).await
    }

    async fn list_rewards(
        &self,
        request: Request<pb::ListRewardsRequest>,
    ) -> Result<Response<pb::ListRewardsResponse>, Status> {
        self.list_rewards_rpc(request).await
    }

    async fn update_reward(
        &self,
        request: Request<pb::UpdateRewardRequest>,
    ) -> Result<Response<pb::Reward>, Status> {
        self.update_reward_rpc(request).await
    }

    async fn delete_reward(&self, request: Request<pb::DeleteRewardRequest>) -> Result<Response<()>, Status> {
        self.delete_reward_rpc(request).await
    }

    async fn redeem_reward(
        &self,
        request: Request<pb::RedeemRewardRequest>,
    ) -> Result<Response<pb::LedgerEntry>, Status> {
        self.redeem_reward_rpc(request).await
    }

    async fn cancel_redemption(
        &self,
        request: Request<pb::CancelRedemptionRequest>,
    ) -> Result<Response<pb::LedgerEntry>, Status> {
        self.cancel_redemption_rpc(request).await
    }

    async fn create_campaign(
        &self,
        request: Request<pb::CreateCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        self.create_campaign_rpc(request).await
    }

    async fn get_campaign(
        &self,
        request: Request<pb::GetCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        self.get_campaign_rpc(request).await
    }

    async fn list_campaigns(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        self.list_campaigns_rpc(request).await
    }

    async fn update_campaign(
        &self,
        request: Request<pb::UpdateCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        self.update_campaign_rpc(request).await
    }

    async fn delete_campaign(
        &self,
        request: Request<pb::DeleteCampaignRequest>,
    ) -> Result<Response<()>, Status> {
        self.delete_campaign_rpc(request).await
    }
}
