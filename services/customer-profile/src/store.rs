//! Persistence of customers, behind [`CustomerStore`] so the service speaks only domain terms.

pub mod migrations;

use async_trait::async_trait;
use crm_db::idempotency::{self, IdempotencyClaim, StoredResponse};
use crm_runtime::TenantId;
use sea_orm::entity::prelude::*;
use sea_orm::{DatabaseConnection, Set, TransactionTrait};
use uuid::Uuid;

use crate::domain::{Customer, CustomerKind};
use crate::error::ProfileError;

mod customer_row {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "customers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub kind: String,
        pub display_name: String,
        pub create_time: ChronoDateTimeUtc,
        pub update_time: ChronoDateTimeUtc,
        pub revision: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What a create did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// An earlier request with the same request id exists; nothing was written.
    Replayed(StoredResponse),
}

#[async_trait]
pub trait CustomerStore: Send + Sync + 'static {
    /// Inserts the customer, with its idempotency claim in the same transaction.
    async fn create_customer(
        &self,
        tenant: &TenantId,
        customer: &Customer,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<CreateOutcome, ProfileError>;

    /// The customer with `id` in `tenant`; another tenant's customer is `None`.
    async fn get_customer(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Customer>, ProfileError>;
}

/// [`CustomerStore`] on PostgreSQL or SQLite through sea-orm.
#[derive(Clone)]
pub struct SeaOrmCustomerStore {
    db: DatabaseConnection,
}

impl SeaOrmCustomerStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

fn to_row(tenant: &TenantId, customer: &Customer) -> customer_row::ActiveModel {
    customer_row::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        id: Set(customer.id),
        kind: Set(customer.kind.as_stored().to_owned()),
        display_name: Set(customer.display_name.clone()),
        create_time: Set(customer.create_time),
        update_time: Set(customer.update_time),
        revision: Set(customer.revision),
    }
}

fn from_row(row: customer_row::Model) -> Result<Customer, ProfileError> {
    let kind = CustomerKind::from_stored(&row.kind).ok_or_else(|| {
        ProfileError::Corrupt(format!("customer {} has unknown kind {:?}", row.id, row.kind))
    })?;
    Ok(Customer {
        id: row.id,
        kind,
        display_name: row.display_name,
        create_time: row.create_time,
        update_time: row.update_time,
        revision: row.revision,
    })
}

#[async_trait]
impl CustomerStore for SeaOrmCustomerStore {
    async fn create_customer(
        &self,
        tenant: &TenantId,
        customer: &Customer,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<CreateOutcome, ProfileError> {
        let txn = self.db.begin().await?;
        if let Some(claim) = claim
            && let Some(stored) = idempotency::claim(&txn, tenant.as_str(), claim).await?
        {
            txn.rollback().await?;
            return Ok(CreateOutcome::Replayed(stored));
        }
        customer_row::Entity::insert(to_row(tenant, customer))
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(CreateOutcome::Created)
    }

    async fn get_customer(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Customer>, ProfileError> {
        customer_row::Entity::find_by_id((tenant.as_str().to_owned(), id))
            .one(&self.db)
            .await?
            .map(from_row)
            .transpose()
    }
}
