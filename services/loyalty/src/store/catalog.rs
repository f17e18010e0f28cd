//! The tenant's program, rewards catalogue and campaigns, with the two guarded counters: a
//! reward's stock (never below zero) and a campaign's awarded points (never above its budget).

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{Condition, ConnectionTrait, DatabaseTransaction, QueryOrder, QuerySelect, Set};

use super::entities::{campaign, program, reward};
use super::{Store, StoreError, codec, is_postgres};
use crate::domain::{Campaign, CampaignAward, DomainError, Program, Reward};

/// A tenant's program and its revision (1 for the first version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredProgram {
    pub program: Program,
    pub revision: i64,
    /// When the tenant first set a program; purchases made before it earn nothing. `None`
    /// for a program stored before start times were kept.
    pub start_time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReward {
    pub reward: Reward,
    /// Moves with every definition change (not with stock taken or returned).
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCampaign {
    /// With `awarded_points` as stored.
    pub campaign: Campaign,
    /// Moves with every definition change (not with awards).
    pub revision: i64,
}

impl Store {
    // ---- programs ----

    pub async fn program<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
    ) -> Result<Option<StoredProgram>, StoreError> {
        program::Entity::find_by_id(tenant.to_owned())
            .one(db)
            .await?
            .map(|row| {
                Ok(StoredProgram {
                    program: codec::decode_program(&row.body)?,
                    revision: row.revision,
                    start_time: row.start_time,
                })
            })
            .transpose()
    }

    /// Stores the tenant's program; returns its new revision. With `expected_revision`, only
    /// over that revision (0: only when the tenant has none), else [`StoreError::Conflict`].
    /// The store does not validate: the service calls [`Program::validate`] first. A new
    /// program starts at `start_time`; a replaced one keeps its start.
    pub async fn put_program(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        program: &Program,
        expected_revision: Option<i64>,
        start_time: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let body = codec::encode_program(program);
        let mut query = program::Entity::find_by_id(tenant.to_owned());
        if is_postgres(txn) {
            query = query.lock_exclusive();
        }
        let current = query.one(txn).await?.map(|row| row.revision);
        match (current, expected_revision) {
            (Some(current), Some(expected)) if current != expected => {
                return Err(StoreError::Conflict(format!(
                    "the program is at revision {current}, not {expected}"
                )));
            }
            (None, Some(expected)) if expected != 0 => {
                return Err(StoreError::Conflict(format!(
                    "the program has no revision {expected}: there is none"
                )));
            }
            _ => {}
        }
        match current {
            None => {
                program::Entity::insert(program::ActiveModel {
                    tenant_id: Set(tenant.to_owned()),
                    body: Set(body),
                    revision: Set(1),
                    update_time: Set(Utc::now()),
                    start_time: Set(Some(start_time)),
                })
                .exec_without_returning(txn)
                .await
                .map_err(|error| {
                    unique_as(error, || {
                        StoreError::Conflict("the program was created concurrently".into())
                    })
                })?;
                Ok(1)
            }
            Some(current) => {
                let updated = program::Entity::update_many()
                    .col_expr(program::Column::Body, Expr::value(body))
                    .col_expr(program::Column::Revision, Expr::value(current + 1))
                    .col_expr(program::Column::UpdateTime, Expr::value(Utc::now()))
                    .filter(program::Column::TenantId.eq(tenant))
                    .filter(program::Column::Revision.eq(current))
                    .exec(txn)
                    .await?
                    .rows_affected;
                if updated != 1 {
                    return Err(StoreError::Conflict("the program changed concurrently".into()));
                }
                Ok(current + 1)
            }
        }
    }

    /// Tenants with a program, `limit` at a time after `after` (for the jobs that go
    /// through every tenant).
    pub async fn program_tenants<C: ConnectionTrait>(
        &self,
        db: &C,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<String>, StoreError> {
        let mut query = program::Entity::find()
            .select_only()
            .column(program::Column::TenantId);
        if let Some(after) = after {
            query = query.filter(program::Column::TenantId.gt(after));
        }
        Ok(query
            .order_by_asc(program::Column::TenantId)
            .limit(limit)
            .into_tuple()
            .all(db)
            .await?)
    }

    // ---- rewards ----

    /// Adds a reward; [`StoreError::AlreadyExists`] when its id is taken.
    pub async fn create_reward<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        reward: &Reward,
    ) -> Result<(), StoreError> {
        reward::Entity::insert(reward_active_model(tenant, reward, 1))
            .exec_without_returning(db)
            .await
            .map_err(|error| {
                unique_as(error, || StoreError::AlreadyExists {
                    resource: format!("reward {}", reward.id),
                })
            })?;
        Ok(())
    }

    pub async fn reward<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        reward_id: &str,
    ) -> Result<Option<StoredReward>, StoreError> {
        reward::Entity::find_by_id((tenant.to_owned(), reward_id.to_owned()))
            .one(db)
            .await?
            .map(stored_reward)
            .transpose()
    }

    /// A reward read to be changed: on PostgreSQL its row stays locked (`FOR UPDATE`) until
    /// `txn` ends. [`Store::update_reward`] writes the stock back with the definition, so
    /// without the lock a redemption could take stock between this read and that write and
    /// the write would give the taken units back (SQLite's write transaction is exclusive
    /// already).
    pub async fn lock_reward(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        reward_id: &str,
    ) -> Result<Option<StoredReward>, StoreError> {
        let mut query = reward::Entity::find_by_id((tenant.to_owned(), reward_id.to_owned()));
        if is_postgres(txn) {
            query = query.lock_exclusive();
        }
        query.one(txn).await?.map(stored_reward).transpose()
    }

    /// Rewards by id, `limit` at a time after `after`.
    pub async fn rewards_page<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<StoredReward>, StoreError> {
        let mut query = reward::Entity::find().filter(reward::Column::TenantId.eq(tenant));
        if let Some(after) = after {
            query = query.filter(reward::Column::RewardId.gt(after));
        }
        query
            .order_by_asc(reward::Column::RewardId)
            .limit(limit)
            .all(db)
            .await?
            .into_iter()
            .map(stored_reward)
            .collect()
    }

    /// Replaces a reward's definition, stock included (an administrator setting the stock);
    /// returns the new revision. With `expected_revision`, only over that revision.
    pub async fn update_reward<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        reward: &Reward,
        expected_revision: Option<i64>,
    ) -> Result<i64, StoreError> {
        let current = self
            .reward(db, tenant, &reward.id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                resource: format!("reward {}", reward.id),
            })?
            .revision;
        if let Some(expected) = expected_revision
            && expected != current
        {
            return Err(StoreError::Conflict(format!(
                "reward {} is at revision {current}, not {expected}",
                reward.id
            )));
        }
        let mut model = reward_active_model(tenant, reward, current + 1);
        model.tenant_id = sea_orm::ActiveValue::NotSet;
        model.reward_id = sea_orm::ActiveValue::NotSet;
        let updated = reward::Entity::update_many()
            .set(model)
            .filter(reward::Column::TenantId.eq(tenant))
            .filter(reward::Column::RewardId.eq(reward.id.as_str()))
            .filter(reward::Column::Revision.eq(current))
            .exec(db)
            .await?
            .rows_affected;
        if updated != 1 {
            return Err(StoreError::Conflict(format!(
                "reward {} changed concurrently",
                reward.id
            )));
        }
        Ok(current + 1)
    }

    /// Removes a reward; false when there was none. Past redemptions keep their reward id.
    pub async fn delete_reward<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        reward_id: &str,
    ) -> Result<bool, StoreError> {
        let deleted = reward::Entity::delete_many()
            .filter(reward::Column::TenantId.eq(tenant))
            .filter(reward::Column::RewardId.eq(reward_id))
            .exec(db)
            .await?
            .rows_affected;
        Ok(deleted == 1)
    }

    /// Takes `quantity` units of a reward's stock in one guarded statement
    /// (`stock = stock - q WHERE stock >= q`), so concurrent redemptions can never oversell:
    /// on PostgreSQL a second writer waits for the first and re-checks the new stock. A
    /// reward without stock (unlimited) is left alone. Errors: [`DomainError::OutOfStock`]
    /// (as [`StoreError::Domain`]) and [`StoreError::NotFound`].
    pub async fn take_stock<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        reward_id: &str,
        quantity: u32,
    ) -> Result<(), StoreError> {
        let quantity_points = i64::from(quantity);
        let taken = reward::Entity::update_many()
            .col_expr(
                reward::Column::Stock,
                Expr::col(reward::Column::Stock).sub(quantity_points),
            )
            .filter(reward::Column::TenantId.eq(tenant))
            .filter(reward::Column::RewardId.eq(reward_id))
            .filter(reward::Column::Stock.gte(quantity_points))
            .exec(db)
            .await?
            .rows_affected;
        if taken == 1 {
            return Ok(());
        }
        let row = reward::Entity::find_by_id((tenant.to_owned(), reward_id.to_owned()))
            .one(db)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                resource: format!("reward {reward_id}"),
            })?;
        match row.stock {
            None => Ok(()),
            Some(in_stock) => Err(DomainError::OutOfStock {
                reward_id: reward_id.to_owned(),
                requested: quantity,
                in_stock: Ord::max(in_stock, 0),
            }
            .into()),
        }
    }

    /// Gives `quantity` units back to a reward's stock (a cancelled redemption). False when
    /// the reward is gone; an unlimited reward stays unlimited.
    pub async fn return_stock<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        reward_id: &str,
        quantity: u32,
    ) -> Result<bool, StoreError> {
        reward::Entity::update_many()
            .col_expr(
                reward::Column::Stock,
                Expr::col(reward::Column::Stock).add(i64::from(quantity)),
            )
            .filter(reward::Column::TenantId.eq(tenant))
            .filter(reward::Column::RewardId.eq(reward_id))
            .filter(reward::Column::Stock.is_not_null())
            .exec(db)
            .await?;
        Ok(
            reward::Entity::find_by_id((tenant.to_owned(), reward_id.to_owned()))
                .one(db)
                .await?
                .is_some(),
        )
    }

    // ---- campaigns ----

    /// Adds a campaign (its `awarded_points` as given, normally 0); [`StoreError::AlreadyExists`]
    /// when its id is taken.
    pub async fn create_campaign<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        campaign: &Campaign,
    ) -> Result<(), StoreError> {
        campaign::Entity::insert(campaign_active_model(tenant, campaign, 1))
            .exec_without_returning(db)
            .await
            .map_err(|error| {
                unique_as(error, || StoreError::AlreadyExists {
                    resource: format!("campaign {}", campaign.id),
                })
            })?;
        Ok(())
    }

    pub async fn campaign<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        campaign_id: &str,
    ) -> Result<Option<StoredCampaign>, StoreError> {
        campaign::Entity::find_by_id((tenant.to_owned(), campaign_id.to_owned()))
            .one(db)
            .await?
            .map(stored_campaign)
            .transpose()
    }

    /// Campaigns by id, `limit` at a time after `after`.
    pub async fn campaigns_page<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<StoredCampaign>, StoreError> {
        let mut query = campaign::Entity::find().filter(campaign::Column::TenantId.eq(tenant));
        if let Some(after) = after {
            query = query.filter(campaign::Column::CampaignId.gt(after));
        }
        query
            .order_by_asc(campaign::Column::CampaignId)
            .limit(limit)
            .all(db)
            .await?
            .into_iter()
            .map(stored_campaign)
            .collect()
    }

    /// The campaigns running at `at` (`starts_at <= at < ends_at`), by id: what a quote for
    /// a purchase at `at` considers, in a stable order.
    pub async fn campaigns_running<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<Campaign>, StoreError> {
        self.campaigns_between(db, tenant, at, at).await
    }

    /// The campaigns running at some time in `[from, to]`, by id: what a batch of purchases
    /// made over that span considers (the quote checks each purchase's own time).
    pub async fn campaigns_between<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Campaign>, StoreError> {
        campaign::Entity::find()
            .filter(campaign::Column::TenantId.eq(tenant))
            .filter(campaign::Column::EndsAt.gt(from))
            .filter(campaign::Column::StartsAt.lte(to))
            .order_by_asc(campaign::Column::CampaignId)
            .all(db)
            .await?
            .into_iter()
            .map(|row| stored_campaign(row).map(|stored| stored.campaign))
            .collect()
    }

    /// Replaces a campaign's definition; its awarded points stay as stored. Returns the new
    /// revision. With `expected_revision`, only over that revision.
    pub async fn update_campaign<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        campaign: &Campaign,
        expected_revision: Option<i64>,
    ) -> Result<i64, StoreError> {
        let current = self
            .campaign(db, tenant, &campaign.id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                resource: format!("campaign {}", campaign.id),
            })?
            .revision;
        if let Some(expected) = expected_revision
            && expected != current
        {
            return Err(StoreError::Conflict(format!(
                "campaign {} is at revision {current}, not {expected}",
                campaign.id
            )));
        }
        let mut model = campaign_active_model(tenant, campaign, current + 1);
        model.tenant_id = sea_orm::ActiveValue::NotSet;
        model.campaign_id = sea_orm::ActiveValue::NotSet;
        model.awarded_points = sea_orm::ActiveValue::NotSet;
        let updated = campaign::Entity::update_many()
            .set(model)
            .filter(campaign::Column::TenantId.eq(tenant))
            .filter(campaign::Column::CampaignId.eq(campaign.id.as_str()))
            .filter(campaign::Column::Revision.eq(current))
            .exec(db)
            .await?
            .rows_affected;
        if updated != 1 {
            return Err(StoreError::Conflict(format!(
                "campaign {} changed concurrently",
                campaign.id
            )));
        }
        Ok(current + 1)
    }

    pub async fn delete_campaign<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        campaign_id: &str,
    ) -> Result<bool, StoreError> {
        let deleted = campaign::Entity::delete_many()
            .filter(campaign::Column::TenantId.eq(tenant))
            .filter(campaign::Column::CampaignId.eq(campaign_id))
            .exec(db)
            .await?
            .rows_affected;
        Ok(deleted == 1)
    }

    /// Adds `points` to a campaign's awarded points in one guarded statement
    /// (`awarded + p <= budget`, or no budget), so concurrent purchases never award more than
    /// the budget. [`StoreError::BudgetExhausted`] when it cannot (quote again: the budget
    /// left is smaller than when quoted), [`StoreError::NotFound`] without the campaign.
    pub async fn charge_campaign<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        campaign_id: &str,
        points: i64,
    ) -> Result<(), StoreError> {
        if points < 0 {
            return Err(DomainError::invalid("points", "must not be negative").into());
        }
        let charged = campaign::Entity::update_many()
            .col_expr(
                campaign::Column::AwardedPoints,
                Expr::col(campaign::Column::AwardedPoints).add(points),
            )
            .filter(campaign::Column::TenantId.eq(tenant))
            .filter(campaign::Column::CampaignId.eq(campaign_id))
            .filter(
                Condition::any()
                    .add(campaign::Column::BudgetPoints.is_null())
                    .add(
                        Expr::col(campaign::Column::AwardedPoints)
                            .add(points)
                            .lte(Expr::col(campaign::Column::BudgetPoints)),
                    ),
            )
            .exec(db)
            .await?
            .rows_affected;
        if charged == 1 {
            return Ok(());
        }
        let row = campaign::Entity::find_by_id((tenant.to_owned(), campaign_id.to_owned()))
            .one(db)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                resource: format!("campaign {campaign_id}"),
            })?;
        Err(StoreError::BudgetExhausted {
            campaign_id: campaign_id.to_owned(),
            requested: points,
            remaining: row
                .budget_points
                .map_or(0, |budget| Ord::max(budget - row.awarded_points, 0)),
        })
    }

    /// Charges every award of an earn ([`EarnSource::Purchase`]'s `campaign_awards`) in the
    /// order given; awards of 0 points are skipped.
    ///
    /// [`EarnSource::Purchase`]: crate::domain::EarnSource::Purchase
    pub async fn charge_campaign_awards<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        awards: &[CampaignAward],
    ) -> Result<(), StoreError> {
        for award in awards.iter().filter(|award| award.points > 0) {
            self.charge_campaign(db, tenant, &award.campaign_id, award.points)
                .await?;
        }
        Ok(())
    }
}

fn unique_as(error: DbErr, mapped: impl FnOnce() -> StoreError) -> StoreError {
    if crm_db::is_unique_violation(&error) {
        mapped()
    } else {
        error.into()
    }
}

fn reward_active_model(tenant: &str, reward: &Reward, revision: i64) -> reward::ActiveModel {
    reward::ActiveModel {
        tenant_id: Set(tenant.to_owned()),
        reward_id: Set(reward.id.clone()),
        name: Set(reward.name.clone()),
        points_cost: Set(reward.points_cost),
        stock: Set(reward.stock),
        per_member_limit: Set(reward.per_member_limit.map(i64::from)),
        revision: Set(revision),
    }
}

fn stored_reward(row: reward::Model) -> Result<StoredReward, StoreError> {
    let per_member_limit = row
        .per_member_limit
        .map(|limit| {
            u32::try_from(limit).map_err(|_| {
                StoreError::corrupt(format!("reward {} limit {limit} out of range", row.reward_id))
            })
        })
        .transpose()?;
    Ok(StoredReward {
        reward: Reward {
            id: row.reward_id,
            name: row.name,
            points_cost: row.points_cost,
            stock: row.stock,
            per_member_limit,
        },
        revision: row.revision,
    })
}

fn campaign_active_model(tenant: &str, campaign: &Campaign, revision: i64) -> campaign::ActiveModel {
    let (bonus_kind, bonus_value) = codec::bonus_columns(campaign.bonus);
    campaign::ActiveModel {
        tenant_id: Set(tenant.to_owned()),
        campaign_id: Set(campaign.id.clone()),
        starts_at: Set(campaign.starts_at),
        ends_at: Set(campaign.ends_at),
        conditions: Set(codec::encode_conditions(&campaign.conditions)),
        bonus_kind: Set(bonus_kind.to_owned()),
        bonus_value: Set(bonus_value),
        budget_points: Set(campaign.budget_points),
        awarded_points: Set(campaign.awarded_points),
        revision: Set(revision),
    }
}

fn stored_campaign(row: campaign::Model) -> Result<StoredCampaign, StoreError> {
    Ok(StoredCampaign {
        campaign: Campaign {
            id: row.campaign_id,
            starts_at: row.starts_at,
            ends_at: row.ends_at,
            conditions: codec::decode_conditions(&row.conditions)?,
            bonus: codec::bonus_from_columns(&row.bonus_kind, row.bonus_value)?,
            budget_points: row.budget_points,
            awarded_points: row.awarded_points,
        },
        revision: row.revision,
    })
}
