//! The catalogue's and the redemptions' RPCs (the trait methods in `grpc.rs` call these):
//! requests checked field by field, then handed to [`Loyalty`](crate::service::Loyalty).

use crm_db::idempotency::RequestKey;
use crm_proto::loyalty_v1 as pb;
use crm_runtime::TenantId;
use tonic::{Request, Response, Status};

use super::{LoyaltyGrpc, page_size, record_customer, request_key, required_request_id, status};
use crate::convert::catalog::{
    CampaignPatch, RewardPatch, campaign_from_pb, check_catalog_id, new_catalog_id, parse_catalog_name,
    reward_from_pb,
};
use crate::convert::{self, parse_etag};
use crate::domain::reward::MAX_QUANTITY;
use crate::domain::{Campaign, EntryId, Reward};
use crate::error::LoyaltyError;
use crate::service::{CatalogItem, CatalogPage};

fn required<'a, T>(value: Option<&'a T>, field: &str) -> Result<&'a T, Status> {
    value.ok_or_else(|| status(LoyaltyError::invalid(field, "is required")))
}

impl LoyaltyGrpc {
    // ---- rewards ----

    pub(super) async fn create_reward_rpc(
        &self,
        request: Request<pb::CreateRewardRequest>,
    ) -> Result<Response<pb::Reward>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let requested = required(message.reward.as_ref(), "reward")?;
        let id = new_catalog_id(&message.reward_id, "reward_id").map_err(status)?;
        let reward = reward_from_pb(requested, id).map_err(status)?;
        let key = request_key(
            "CreateReward",
            &message.request_id,
            &pb::CreateRewardRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        self.create_item(&tenant, reward, key).await
    }

    pub(super) async fn update_reward_rpc(
        &self,
        request: Request<pb::UpdateRewardRequest>,
    ) -> Result<Response<pb::Reward>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let requested = required(message.reward.as_ref(), "reward")?;
        let id = parse_catalog_name(&requested.name, Reward::COLLECTION, "reward.name").map_err(status)?;
        let etag = parse_etag(&requested.etag, "reward.etag").map_err(status)?;
        let patch = RewardPatch::parse(requested, message.update_mask.as_ref()).map_err(status)?;
        let key = request_key(
            "UpdateReward",
            &message.request_id,
            &pb::UpdateRewardRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let updated = self
            .service
            .update_catalog_item(
                tenant.as_str(),
                &id,
                etag,
                |reward: &mut Reward| patch.apply(reward),
                key,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(updated))
    }

    pub(super) async fn delete_reward_rpc(
        &self,
        request: Request<pb::DeleteRewardRequest>,
    ) -> Result<Response<()>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let key = request_key(
            "DeleteReward",
            &message.request_id,
            &pb::DeleteRewardRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        self.delete_item::<Reward>(&tenant, &message.name, &message.etag, key)
            .await
    }

    pub(super) async fn get_reward_rpc(
        &self,
        request: Request<pb::GetRewardRequest>,
    ) -> Result<Response<pb::Reward>, Status> {
        let tenant = TenantId::of(&request)?;
        self.get_item::<Reward>(&tenant, &request.get_ref().name).await
    }

    pub(super) async fn list_rewards_rpc(
        &self,
        request: Request<pb::ListRewardsRequest>,
    ) -> Result<Response<pb::ListRewardsResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.get_ref();
        let page = self
            .list_items::<Reward>(&tenant, message.page_size, &message.page_token)
            .await?;
        Ok(Response::new(pb::ListRewardsResponse {
            rewards: page.items,
            next_page_token: page.next_page_token,
        }))
    }

    // ---- campaigns ----

    pub(super) async fn create_campaign_rpc(
        &self,
        request: Request<pb::CreateCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let requested = required(message.campaign.as_ref(), "campaign")?;
        let id = new_catalog_id(&message.campaign_id, "campaign_id").map_err(status)?;
        let campaign = campaign_from_pb(requested, id).map_err(status)?;
        let key = request_key(
            "CreateCampaign",
            &message.request_id,
            &pb::CreateCampaignRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        self.create_item(&tenant, campaign, key).await
    }

    pub(super) async fn update_campaign_rpc(
        &self,
        request: Request<pb::UpdateCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let requested = required(message.campaign.as_ref(), "campaign")?;
        let id =
            parse_catalog_name(&requested.name, Campaign::COLLECTION, "campaign.name").map_err(status)?;
        let etag = parse_etag(&requested.etag, "campaign.etag").map_err(status)?;
        let patch = CampaignPatch::parse(requested, message.update_mask.as_ref()).map_err(status)?;
        let key = request_key(
            "UpdateCampaign",
            &message.request_id,
            &pb::UpdateCampaignRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let updated = self
            .service
            .update_catalog_item(
                tenant.as_str(),
                &id,
                etag,
                |campaign: &mut Campaign| patch.apply(campaign),
                key,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(updated))
    }

    pub(super) async fn delete_campaign_rpc(
        &self,
        request: Request<pb::DeleteCampaignRequest>,
    ) -> Result<Response<()>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let key = request_key(
            "DeleteCampaign",
            &message.request_id,
            &pb::DeleteCampaignRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        self.delete_item::<Campaign>(&tenant, &message.name, &message.etag, key)
            .await
    }

    pub(super) async fn get_campaign_rpc(
        &self,
        request: Request<pb::GetCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let tenant = TenantId::of(&request)?;
        self.get_item::<Campaign>(&tenant, &request.get_ref().name).await
    }

    pub(super) async fn list_campaigns_rpc(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.get_ref();
        let page = self
            .list_items::<Campaign>(&tenant, message.page_size, &message.page_token)
            .await?;
        Ok(Response::new(pb::ListCampaignsResponse {
            campaigns: page.items,
            next_page_token: page.next_page_token,
        }))
    }

    // ---- either kind ----

    async fn create_item<T: CatalogItem>(
        &self,
        tenant: &TenantId,
        item: T,
        key: Option<RequestKey>,
    ) -> Result<Response<T::Message>, Status> {
        let created = self
            .service
            .create_catalog_item(tenant.as_str(), item, key)
            .await
            .map_err(status)?;
        Ok(Response::new(created))
    }

    async fn get_item<T: CatalogItem>(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Response<T::Message>, Status> {
        let id = parse_catalog_name(name, T::COLLECTION, "name").map_err(status)?;
        let item = self
            .service
            .catalog_item::<T>(tenant.as_str(), &id)
            .await
            .map_err(status)?;
        Ok(Response::new(item))
    }

    /// A page of the catalogue; the token is the last id of the previous page.
    async fn list_items<T: CatalogItem>(
        &self,
        tenant: &TenantId,
        requested_size: i32,
        page_token: &str,
    ) -> Result<CatalogPage<T::Message>, Status> {
        let limit = page_size(requested_size)?;
        let after = if page_token.is_empty() {
            None
        } else {
            check_catalog_id(page_token, "page_token").map_err(|_| {
                status(LoyaltyError::invalid(
                    "page_token",
                    "is not a token this list returned",
                ))
            })?;
            Some(page_token)
        };
        self.service
            .catalog_page::<T>(tenant.as_str(), after, limit)
            .await
            .map_err(status)
    }

    async fn delete_item<T: CatalogItem>(
        &self,
        tenant: &TenantId,
        name: &str,
        etag: &str,
        key: Option<RequestKey>,
    ) -> Result<Response<()>, Status> {
        let id = parse_catalog_name(name, T::COLLECTION, "name").map_err(status)?;
        let etag = parse_etag(etag, "etag").map_err(status)?;
        self.service
            .delete_catalog_item::<T>(tenant.as_str(), &id, etag, key)
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }

    // ---- redemptions ----

    pub(super) async fn redeem_reward_rpc(
        &self,
        request: Request<pb::RedeemRewardRequest>,
    ) -> Result<Response<pb::LedgerEntry>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let customer = convert::parse_account_name(&message.account, "account").map_err(status)?;
        record_customer(&customer);
        let reward_id = parse_catalog_name(&message.reward, Reward::COLLECTION, "reward").map_err(status)?;
        let quantity = u32::try_from(message.quantity)
            .ok()
            .filter(|quantity| (1..=MAX_QUANTITY).contains(quantity))
            .ok_or_else(|| {
                status(LoyaltyError::invalid(
                    "quantity",
                    format!("must be 1 to {MAX_QUANTITY}"),
                ))
            })?;
        required_request_id("RedeemReward", &message.request_id)?;
        let (_, entry) = self
            .service
            .redeem_reward(
                tenant.as_str(),
                &customer,
                &reward_id,
                quantity,
                &message.request_id,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::entry_to_pb(&entry)))
    }

    pub(super) async fn cancel_redemption_rpc(
        &self,
        request: Request<pb::CancelRedemptionRequest>,
    ) -> Result<Response<pb::LedgerEntry>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let customer = convert::parse_account_name(&message.account, "account").map_err(status)?;
        record_customer(&customer);
        let redemption_entry_id = EntryId::new(message.redemption_entry_id.clone());
        redemption_entry_id
            .validate("redemption_entry_id")
            .map_err(|error| status(error.into()))?;
        required_request_id("CancelRedemption", &message.request_id)?;
        let (_, entry) = self
            .service
            .cancel_redemption(
                tenant.as_str(),
                &customer,
                &redemption_entry_id,
                &message.request_id,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::entry_to_pb(&entry)))
    }
}
