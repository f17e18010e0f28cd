//! Who referred whom (from customer-profile's facts), for referral value.

use std::collections::HashMap;

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, DatabaseTransaction, Set};
use uuid::Uuid;

use super::Store;
use crate::error::SegmentationError;

/// Ids per `IN` list.
const CHUNK: usize = 500;

mod referral {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "referrals")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub customer_id: Uuid,
        pub referrer_id: Uuid,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl Store {
    /// Records who referred `customer` (None: nobody); returns the referrer it had before.
    pub async fn set_referrer(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customer: Uuid,
        referrer: Option<Uuid>,
    ) -> Result<Option<Uuid>, SegmentationError> {
        let before = referral::Entity::find_by_id((tenant.to_owned(), customer))
            .one(txn)
            .await?
            .map(|row| row.referrer_id);
        match referrer {
            Some(referrer) if before != Some(referrer) => {
                referral::Entity::insert(referral::ActiveModel {
                    tenant_id: Set(tenant.to_owned()),
                    customer_id: Set(customer),
                    referrer_id: Set(referrer),
                })
                .on_conflict(
                    OnConflict::columns([referral::Column::TenantId, referral::Column::CustomerId])
                        .update_column(referral::Column::ReferrerId)
                        .to_owned(),
                )
                .exec_without_returning(txn)
                .await?;
            }
            Some(_) => {}
            None if before.is_some() => {
                referral::Entity::delete_many()
                    .filter(referral::Column::TenantId.eq(tenant))
                    .filter(referral::Column::CustomerId.eq(customer))
                    .exec(txn)
                    .await?;
            }
            None => {}
        }
        Ok(before)
    }

    /// The customers each of `referrers` referred.
    pub async fn referred_by<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        referrers: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<Uuid>>, SegmentationError> {
        let mut found: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for chunk in referrers.chunks(CHUNK) {
            for row in referral::Entity::find()
                .filter(referral::Column::TenantId.eq(tenant))
                .filter(referral::Column::ReferrerId.is_in(chunk.iter().copied()))
                .all(db)
                .await?
            {
                found.entry(row.referrer_id).or_default().push(row.customer_id);
            }
        }
        Ok(found)
    }

    /// The referrers of any of `customers`.
    pub async fn referrers_of<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        customers: &[Uuid],
    ) -> Result<Vec<Uuid>, SegmentationError> {
        let mut found = Vec::new();
        for chunk in customers.chunks(CHUNK) {
            found.extend(
                referral::Entity::find()
                    .filter(referral::Column::TenantId.eq(tenant))
                    .filter(referral::Column::CustomerId.is_in(chunk.iter().copied()))
                    .all(db)
                    .await?
                    .into_iter()
                    .map(|row| row.referrer_id),
            );
        }
        Ok(found)
    }
}
