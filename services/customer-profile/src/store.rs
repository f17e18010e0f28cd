//! Persistence of customers, behind [`CustomerStore`] so the service speaks only domain terms.
//!
//! A customer row holds its snapshot (the proto encoding, see `convert`) plus the columns that
//! reads filter and sort on. Identities, tags and attributes are mirrored into their own tables
//! for uniqueness and lookups. Every write is one [`ChangeSet`] applied in one transaction,
//! together with its idempotency claim and its outbox events.

pub mod migrations;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use crm_db::idempotency::{self, IdempotencyClaim, StoredResponse};
use crm_db::outbox::{self, NewEvent};
use crm_runtime::TenantId;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    Condition, DatabaseConnection, DatabaseTransaction, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use uuid::Uuid;

use crate::convert::{decode_snapshot, encode_snapshot};
use crate::domain::{Customer, Identity, IdentityKind, RecordState};
use crate::error::ProfileError;

mod entities {
    pub mod customer {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "customers")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub id: Uuid,
            pub state: String,
            pub merged_into: Option<Uuid>,
            pub kind: String,
            pub display_name: String,
            pub search_name: String,
            pub relationship_level: String,
            pub profile: Vec<u8>,
            pub create_time: ChronoDateTimeUtc,
            pub update_time: ChronoDateTimeUtc,
            pub purge_time: Option<ChronoDateTimeUtc>,
            pub revision: i64,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod identity {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "customer_identities")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub kind: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub value: String,
            pub customer_id: Uuid,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod tag {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "customer_tags")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub customer_id: Uuid,
            #[sea_orm(primary_key, auto_increment = false)]
            pub tag: String,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod attribute {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "customer_attributes")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub customer_id: Uuid,
            #[sea_orm(primary_key, auto_increment = false)]
            pub key: String,
            pub value_text: String,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod merge {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "customer_merges")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub merged_id: Uuid,
            pub survivor_id: Uuid,
            pub survivor_before: Vec<u8>,
            pub merged_before: Vec<u8>,
            pub survivor_revision_after: i64,
            pub create_time: ChronoDateTimeUtc,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod consent {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "consent_changes")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub customer_id: Uuid,
            #[sea_orm(primary_key, auto_increment = false)]
            pub purpose: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub sequence: Uuid,
            pub status: String,
            pub source: String,
            pub change_time: ChronoDateTimeUtc,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod settings {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "tenant_settings")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub tenant_id: String,
            pub default_region: String,
            pub home_country: String,
            pub deleted_retention_days: i32,
            pub update_time: ChronoDateTimeUtc,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

use entities::{attribute, consent, customer, identity, merge, settings, tag};

/// A tenant's profile settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub default_region: String,
    pub home_country: String,
    pub deleted_retention_days: i32,
    pub update_time: Option<DateTime<Utc>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_region: String::new(),
            home_country: String::new(),
            deleted_retention_days: 30,
            update_time: None,
        }
    }
}

/// How a customer row is written.
#[derive(Debug, Clone)]
pub enum Write {
    /// A new customer.
    Insert(Customer),
    /// An existing customer, only if its stored revision is still `expected_revision`.
    Update {
        customer: Customer,
        expected_revision: i64,
    },
}

/// A merge record: enough to undo the merge of `merged` into `survivor`.
#[derive(Debug, Clone)]
pub struct MergeRecord {
    pub survivor_before: Customer,
    pub merged_before: Customer,
    pub survivor_revision_after: i64,
    pub create_time: DateTime<Utc>,
}

/// One consent decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentDecision {
    pub purpose: String,
    pub status: String,
    pub source: String,
    pub change_time: DateTime<Utc>,
}

/// Everything one request changes, applied atomically. Writes apply in order, so a write that
/// releases identities comes before one that claims them.
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    pub writes: Vec<Write>,
    pub record_merges: Vec<MergeRecord>,
    /// Merge records to delete (by merged customer id) once undone.
    pub remove_merges: Vec<Uuid>,
    /// Customers whose merge records (as survivor or as merged) and stored idempotent
    /// responses hold personal data to erase.
    pub forget_merges_of: Vec<Uuid>,
    pub consents: Vec<(Uuid, ConsentDecision)>,
    pub settings: Option<Settings>,
    pub events: Vec<NewEvent>,
}

/// What applying a change set did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// An earlier request with the same request id exists; nothing was written.
    Replayed(StoredResponse),
    /// A customer's revision moved on since it was read; nothing was written.
    Conflict(Uuid),
    /// An identity belongs to another customer; nothing was written.
    IdentityTaken(Identity),
}

/// Filters of a list, already validated.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub kind: Option<String>,
    pub tag: Option<String>,
    pub relationship_level: Option<String>,
    pub attributes: Vec<(String, String)>,
    pub created_after: Option<(DateTime<Utc>, bool)>,
    pub created_before: Option<(DateTime<Utc>, bool)>,
    pub order: ListOrder,
    pub descending: bool,
    /// Keyset position: the sort value and id of the last row of the previous page.
    pub after: Option<(SortValue, Uuid)>,
    pub limit: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListOrder {
    #[default]
    CreateTime,
    UpdateTime,
    DisplayName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortValue {
    Time(DateTime<Utc>),
    Text(String),
}

#[async_trait]
pub trait CustomerStore: Send + Sync + 'static {
    /// Applies a change set, with its idempotency claim, in one transaction.
    async fn apply(
        &self,
        tenant: &TenantId,
        changes: ChangeSet,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<Applied, ProfileError>;
    /// What an earlier request with this id answered.
    async fn replay(
        &self,
        tenant: &TenantId,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredResponse>, ProfileError>;
    /// The customer record with `id`, in any state.
    async fn load(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Customer>, ProfileError>;
    /// Records in any state, in no particular order.
    async fn load_many(&self, tenant: &TenantId, ids: &[Uuid]) -> Result<Vec<Customer>, ProfileError>;
    /// Inserts many new customers and their events in one transaction. `Ok(false)`: an
    /// identity is taken (by another row or an existing customer); nothing was written.
    async fn insert_batch(
        &self,
        tenant: &TenantId,
        customers: &[Customer],
        events: Vec<NewEvent>,
    ) -> Result<bool, ProfileError>;
    /// The owners of those identities that have one.
    async fn owners(
        &self,
        tenant: &TenantId,
        identities: &[Identity],
    ) -> Result<Vec<(Identity, Uuid)>, ProfileError>;
    /// Who owns an identity.
    async fn owner(&self, tenant: &TenantId, identity: &Identity) -> Result<Option<Uuid>, ProfileError>;
    /// Identities of `kind` starting with `prefix` and their owners, at most `limit`.
    async fn identities_with_prefix(
        &self,
        tenant: &TenantId,
        kind: IdentityKind,
        prefix: &str,
        limit: u64,
    ) -> Result<Vec<(String, Uuid)>, ProfileError>;
    /// Active customers whose search name contains `fragment` (lower case), at most `limit`.
    async fn names_containing(
        &self,
        tenant: &TenantId,
        fragment: &str,
        limit: u64,
    ) -> Result<Vec<Customer>, ProfileError>;
    /// A page of active customers.
    async fn list(&self, tenant: &TenantId, query: &ListQuery) -> Result<Vec<Customer>, ProfileError>;
    /// Every active customer (for duplicate detection), at most `limit`.
    async fn all_active(&self, tenant: &TenantId, limit: u64) -> Result<Vec<Customer>, ProfileError>;
    /// The record undoing the merge of `merged_id`.
    async fn merge_record(
        &self,
        tenant: &TenantId,
        merged_id: Uuid,
    ) -> Result<Option<MergeRecord>, ProfileError>;
    /// Every consent decision of a customer, oldest first.
    async fn consents(&self, tenant: &TenantId, customer: Uuid)
    -> Result<Vec<ConsentDecision>, ProfileError>;
    async fn settings(&self, tenant: &TenantId) -> Result<Settings, ProfileError>;
    /// Deleted customers whose purge time has passed are removed with their identities.
    async fn purge_deleted(&self, now: DateTime<Utc>) -> Result<u64, ProfileError>;
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

fn row(tenant: &TenantId, customer: &Customer) -> customer::ActiveModel {
    customer::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        id: Set(customer.id),
        state: Set(customer.state.as_stored().to_owned()),
        merged_into: Set(customer.merged_into),
        kind: Set(customer.kind.as_stored().to_owned()),
        display_name: Set(customer.display_name.clone()),
        search_name: Set(customer.display_name.to_lowercase()),
        relationship_level: Set(customer
            .relationship_level
            .map(|level| level.as_stored())
            .unwrap_or("")
            .to_owned()),
        profile: Set(encode_snapshot(customer)),
        create_time: Set(customer.create_time),
        update_time: Set(customer.update_time),
        purge_time: Set(customer.purge_time),
        revision: Set(customer.revision),
    }
}

fn from_row(model: customer::Model) -> Result<Customer, ProfileError> {
    decode_snapshot(&model.profile)
}

/// Rewrites the mirrored identities, tags and attributes of one customer. Returns the first
/// identity owned by someone else.
/// Deletes a customer's mirrored tags and attributes (the rows `sync_children` rewrites).
async fn delete_tags_and_attributes(
    txn: &DatabaseTransaction,
    tenant_id: &str,
    customer_id: Uuid,
) -> Result<(), DbErr> {
    tag::Entity::delete_many()
        .filter(tag::Column::TenantId.eq(tenant_id))
        .filter(tag::Column::CustomerId.eq(customer_id))
        .exec(txn)
        .await?;
    attribute::Entity::delete_many()
        .filter(attribute::Column::TenantId.eq(tenant_id))
        .filter(attribute::Column::CustomerId.eq(customer_id))
        .exec(txn)
        .await?;
    Ok(())
}

async fn sync_children(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    customer: &Customer,
) -> Result<Option<Identity>, DbErr> {
    let tenant_id = tenant.as_str().to_owned();
    let identities = if customer.state == RecordState::Active || customer.state == RecordState::Deleted {
        customer.identities()
    } else {
        Vec::new()
    };
    let mut release = Condition::all()
        .add(identity::Column::TenantId.eq(tenant_id.clone()))
        .add(identity::Column::CustomerId.eq(customer.id));
    if !identities.is_empty() {
        let mut kept = Condition::any();
        for identity in &identities {
            kept = kept.add(
                Condition::all()
                    .add(identity::Column::Kind.eq(identity.kind.as_stored()))
                    .add(identity::Column::Value.eq(identity.value.clone())),
            );
        }
        release = release.add(kept.not());
    }
    identity::Entity::delete_many().filter(release).exec(txn).await?;
    for wanted in &identities {
        let inserted = identity::Entity::insert(identity::ActiveModel {
            tenant_id: Set(tenant_id.clone()),
            kind: Set(wanted.kind.as_stored().to_owned()),
            value: Set(wanted.value.clone()),
            customer_id: Set(customer.id),
        })
        .on_conflict(
            OnConflict::columns([
                identity::Column::TenantId,
                identity::Column::Kind,
                identity::Column::Value,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
        if inserted == 0 {
            let owner = identity::Entity::find_by_id((
                tenant_id.clone(),
                wanted.kind.as_stored().to_owned(),
                wanted.value.clone(),
            ))
            .one(txn)
            .await?
            .map(|row| row.customer_id);
            if owner != Some(customer.id) {
                return Ok(Some(wanted.clone()));
            }
        }
    }

    delete_tags_and_attributes(txn, &tenant_id, customer.id).await?;
    if customer.state == RecordState::Active {
        if !customer.tags.is_empty() {
            tag::Entity::insert_many(customer.tags.iter().map(|value| tag::ActiveModel {
                tenant_id: Set(tenant_id.clone()),
                customer_id: Set(customer.id),
                tag: Set(value.clone()),
            }))
            .exec_without_returning(txn)
            .await?;
        }
        if !customer.attributes.is_empty() {
            attribute::Entity::insert_many(customer.attributes.iter().map(|(key, value)| {
                attribute::ActiveModel {
                    tenant_id: Set(tenant_id.clone()),
                    customer_id: Set(customer.id),
                    key: Set(key.clone()),
                    value_text: Set(value.canonical_text()),
                }
            }))
            .exec_without_returning(txn)
            .await?;
        }
    }
    Ok(None)
}

impl SeaOrmCustomerStore {
    async fn apply_in(
        &self,
        txn: &DatabaseTransaction,
        tenant: &TenantId,
        changes: &ChangeSet,
    ) -> Result<Applied, DbErr> {
        let tenant_id = tenant.as_str().to_owned();
        for write in &changes.writes {
            let customer = match write {
                Write::Insert(customer) => {
                    customer::Entity::insert(row(tenant, customer))
                        .exec_without_returning(txn)
                        .await?;
                    customer
                }
                Write::Update {
                    customer,
                    expected_revision,
                } => {
                    let mut active = row(tenant, customer);
                    active.tenant_id = sea_orm::ActiveValue::NotSet;
                    active.id = sea_orm::ActiveValue::NotSet;
                    let updated = customer::Entity::update_many()
                        .set(active)
                        .filter(customer::Column::TenantId.eq(tenant_id.clone()))
                        .filter(customer::Column::Id.eq(customer.id))
                        .filter(customer::Column::Revision.eq(*expected_revision))
                        .exec(txn)
                        .await?;
                    if updated.rows_affected != 1 {
                        return Ok(Applied::Conflict(customer.id));
                    }
                    customer
                }
            };
            if let Some(taken) = sync_children(txn, tenant, customer).await? {
                return Ok(Applied::IdentityTaken(taken));
            }
        }
        for record in &changes.record_merges {
            merge::Entity::insert(merge::ActiveModel {
                tenant_id: Set(tenant_id.clone()),
                merged_id: Set(record.merged_before.id),
                survivor_id: Set(record.survivor_before.id),
                survivor_before: Set(encode_snapshot(&record.survivor_before)),
                merged_before: Set(encode_snapshot(&record.merged_before)),
                survivor_revision_after: Set(record.survivor_revision_after),
                create_time: Set(record.create_time),
            })
            .on_conflict(
                OnConflict::columns([merge::Column::TenantId, merge::Column::MergedId])
                    .update_columns([
                        merge::Column::SurvivorId,
                        merge::Column::SurvivorBefore,
                        merge::Column::MergedBefore,
                        merge::Column::SurvivorRevisionAfter,
                        merge::Column::CreateTime,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        }
        if !changes.remove_merges.is_empty() {
            merge::Entity::delete_many()
                .filter(merge::Column::TenantId.eq(tenant_id.clone()))
                .filter(merge::Column::MergedId.is_in(changes.remove_merges.clone()))
                .exec(txn)
                .await?;
        }
        if !changes.forget_merges_of.is_empty() {
            let subjects: Vec<String> = changes
                .forget_merges_of
                .iter()
                .map(|id| crate::domain::customer_name(*id))
                .collect();
            idempotency::forget_subjects(txn, &tenant_id, &subjects, "EraseCustomer").await?;
            merge::Entity::delete_many()
                .filter(merge::Column::TenantId.eq(tenant_id.clone()))
                .filter(
                    Condition::any()
                        .add(merge::Column::MergedId.is_in(changes.forget_merges_of.clone()))
                        .add(merge::Column::SurvivorId.is_in(changes.forget_merges_of.clone())),
                )
                .exec(txn)
                .await?;
        }
        for (customer_id, decision) in &changes.consents {
            consent::Entity::insert(consent::ActiveModel {
                tenant_id: Set(tenant_id.clone()),
                customer_id: Set(*customer_id),
                purpose: Set(decision.purpose.clone()),
                sequence: Set(Uuid::now_v7()),
                status: Set(decision.status.clone()),
                source: Set(decision.source.clone()),
                change_time: Set(decision.change_time),
            })
            .exec_without_returning(txn)
            .await?;
        }
        if let Some(new_settings) = &changes.settings {
            settings::Entity::insert(settings::ActiveModel {
                tenant_id: Set(tenant_id.clone()),
                default_region: Set(new_settings.default_region.clone()),
                home_country: Set(new_settings.home_country.clone()),
                deleted_retention_days: Set(new_settings.deleted_retention_days),
                update_time: Set(new_settings.update_time.unwrap_or_else(Utc::now)),
            })
            .on_conflict(
                OnConflict::column(settings::Column::TenantId)
                    .update_columns([
                        settings::Column::DefaultRegion,
                        settings::Column::HomeCountry,
                        settings::Column::DeletedRetentionDays,
                        settings::Column::UpdateTime,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        }
        outbox::append_all(txn, &changes.events).await?;
        Ok(Applied::Done)
    }
}

#[async_trait]
impl CustomerStore for SeaOrmCustomerStore {
    async fn apply(
        &self,
        tenant: &TenantId,
        changes: ChangeSet,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<Applied, ProfileError> {
        let txn = self.db.begin().await?;
        if let Some(claim) = claim
            && let Some(stored) = idempotency::claim(&txn, tenant.as_str(), claim).await?
        {
            txn.rollback().await?;
            return Ok(Applied::Replayed(stored));
        }
        let applied = self.apply_in(&txn, tenant, &changes).await?;
        if applied == Applied::Done {
            txn.commit().await?;
        } else {
            txn.rollback().await?;
        }
        Ok(applied)
    }

    async fn replay(
        &self,
        tenant: &TenantId,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredResponse>, ProfileError> {
        Ok(idempotency::find(&self.db, tenant.as_str(), method, request_id).await?)
    }

    async fn load(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Customer>, ProfileError> {
        customer::Entity::find_by_id((tenant.as_str().to_owned(), id))
            .one(&self.db)
            .await?
            .map(from_row)
            .transpose()
    }

    async fn load_many(&self, tenant: &TenantId, ids: &[Uuid]) -> Result<Vec<Customer>, ProfileError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        customer::Entity::find()
            .filter(customer::Column::TenantId.eq(tenant.as_str()))
            .filter(customer::Column::Id.is_in(ids.to_vec()))
            .all(&self.db)
            .await?
            .into_iter()
            .map(from_row)
            .collect()
    }

    async fn insert_batch(
        &self,
        tenant: &TenantId,
        customers: &[Customer],
        events: Vec<NewEvent>,
    ) -> Result<bool, ProfileError> {
        // Statements stay well under the bind-parameter limits of both engines.
        const CHUNK: usize = 500;
        let tenant_id = tenant.as_str().to_owned();
        let txn = self.db.begin().await?;
        for chunk in customers.chunks(CHUNK) {
            customer::Entity::insert_many(chunk.iter().map(|customer| row(tenant, customer)))
                .exec_without_returning(&txn)
                .await?;
        }
        let identities: Vec<identity::ActiveModel> = customers
            .iter()
            .flat_map(|customer| {
                let tenant_id = tenant_id.clone();
                customer
                    .identities()
                    .into_iter()
                    .map(move |owned| identity::ActiveModel {
                        tenant_id: Set(tenant_id.clone()),
                        kind: Set(owned.kind.as_stored().to_owned()),
                        value: Set(owned.value),
                        customer_id: Set(customer.id),
                    })
            })
            .collect();
        let wanted = identities.len() as u64;
        let mut inserted = 0;
        for chunk in identities.chunks(CHUNK * 4) {
            inserted += identity::Entity::insert_many(chunk.to_vec())
                .on_conflict(
                    OnConflict::columns([
                        identity::Column::TenantId,
                        identity::Column::Kind,
                        identity::Column::Value,
                    ])
                    .do_nothing()
                    .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
        }
        if inserted != wanted {
            txn.rollback().await?;
            return Ok(false);
        }
        let tags: Vec<tag::ActiveModel> = customers
            .iter()
            .flat_map(|customer| {
                customer.tags.iter().map(|value| tag::ActiveModel {
                    tenant_id: Set(tenant_id.clone()),
                    customer_id: Set(customer.id),
                    tag: Set(value.clone()),
                })
            })
            .collect();
        for chunk in tags.chunks(CHUNK * 4) {
            tag::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&txn)
                .await?;
        }
        let attributes: Vec<attribute::ActiveModel> = customers
            .iter()
            .flat_map(|customer| {
                customer
                    .attributes
                    .iter()
                    .map(|(key, value)| attribute::ActiveModel {
                        tenant_id: Set(tenant_id.clone()),
                        customer_id: Set(customer.id),
                        key: Set(key.clone()),
                        value_text: Set(value.canonical_text()),
                    })
            })
            .collect();
        for chunk in attributes.chunks(CHUNK * 4) {
            attribute::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&txn)
                .await?;
        }
        for chunk in events.chunks(CHUNK) {
            outbox::append_all(&txn, chunk).await?;
        }
        txn.commit().await?;
        Ok(true)
    }

    async fn owners(
        &self,
        tenant: &TenantId,
        identities: &[Identity],
    ) -> Result<Vec<(Identity, Uuid)>, ProfileError> {
        // `tenant_id = ? AND kind = ? AND value IN (…)` walks the primary key; an OR of
        // (kind, value) pairs would make SQLite scan the table once per pair.
        let mut by_kind: BTreeMap<IdentityKind, Vec<String>> = BTreeMap::new();
        for wanted in identities {
            by_kind.entry(wanted.kind).or_default().push(wanted.value.clone());
        }
        let mut owners = Vec::new();
        for (kind, values) in by_kind {
            for chunk in values.chunks(500) {
                let found = identity::Entity::find()
                    .filter(identity::Column::TenantId.eq(tenant.as_str()))
                    .filter(identity::Column::Kind.eq(kind.as_stored()))
                    .filter(identity::Column::Value.is_in(chunk.to_vec()))
                    .all(&self.db)
                    .await?;
                owners.extend(found.into_iter().map(|row| {
                    (
                        Identity {
                            kind,
                            value: row.value,
                        },
                        row.customer_id,
                    )
                }));
            }
        }
        Ok(owners)
    }

    async fn owner(&self, tenant: &TenantId, wanted: &Identity) -> Result<Option<Uuid>, ProfileError> {
        Ok(identity::Entity::find_by_id((
            tenant.as_str().to_owned(),
            wanted.kind.as_stored().to_owned(),
            wanted.value.clone(),
        ))
        .one(&self.db)
        .await?
        .map(|row| row.customer_id))
    }

    async fn identities_with_prefix(
        &self,
        tenant: &TenantId,
        kind: IdentityKind,
        prefix: &str,
        limit: u64,
    ) -> Result<Vec<(String, Uuid)>, ProfileError> {
        let pattern = format!("{}%", escape_like(prefix));
        Ok(identity::Entity::find()
            .filter(identity::Column::TenantId.eq(tenant.as_str()))
            .filter(identity::Column::Kind.eq(kind.as_stored()))
            .filter(
                Expr::col(identity::Column::Value)
                    .like(sea_orm::sea_query::LikeExpr::new(pattern).escape('\\')),
            )
            .order_by_asc(identity::Column::Value)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| (row.value, row.customer_id))
            .collect())
    }

    async fn names_containing(
        &self,
        tenant: &TenantId,
        fragment: &str,
        limit: u64,
    ) -> Result<Vec<Customer>, ProfileError> {
        let pattern = format!("%{}%", escape_like(fragment));
        customer::Entity::find()
            .filter(customer::Column::TenantId.eq(tenant.as_str()))
            .filter(customer::Column::State.eq(RecordState::Active.as_stored()))
            .filter(
                Expr::col(customer::Column::SearchName)
                    .like(sea_orm::sea_query::LikeExpr::new(pattern).escape('\\')),
            )
            .order_by_asc(customer::Column::SearchName)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(from_row)
            .collect()
    }

    async fn list(&self, tenant: &TenantId, query: &ListQuery) -> Result<Vec<Customer>, ProfileError> {
        let tenant_id = tenant.as_str().to_owned();
        let mut select = customer::Entity::find()
            .filter(customer::Column::TenantId.eq(tenant_id.clone()))
            .filter(customer::Column::State.eq(RecordState::Active.as_stored()));
        if let Some(kind) = &query.kind {
            select = select.filter(customer::Column::Kind.eq(kind.clone()));
        }
        if let Some(level) = &query.relationship_level {
            select = select.filter(customer::Column::RelationshipLevel.eq(level.clone()));
        }
        if let Some(wanted) = &query.tag {
            select = select.filter(
                customer::Column::Id.in_subquery(
                    Query::select()
                        .column(tag::Column::CustomerId)
                        .from(tag::Entity)
                        .and_where(tag::Column::TenantId.eq(tenant_id.clone()))
                        .and_where(tag::Column::Tag.eq(wanted.clone()))
                        .to_owned(),
                ),
            );
        }
        for (key, value) in &query.attributes {
            select = select.filter(
                customer::Column::Id.in_subquery(
                    Query::select()
                        .column(attribute::Column::CustomerId)
                        .from(attribute::Entity)
                        .and_where(attribute::Column::TenantId.eq(tenant_id.clone()))
                        .and_where(attribute::Column::Key.eq(key.clone()))
                        .and_where(attribute::Column::ValueText.eq(value.clone()))
                        .to_owned(),
                ),
            );
        }
        if let Some((time, inclusive)) = query.created_after {
            select = select.filter(if inclusive {
                customer::Column::CreateTime.gte(time)
            } else {
                customer::Column::CreateTime.gt(time)
            });
        }
        if let Some((time, inclusive)) = query.created_before {
            select = select.filter(if inclusive {
                customer::Column::CreateTime.lte(time)
            } else {
                customer::Column::CreateTime.lt(time)
            });
        }
        let column = match query.order {
            ListOrder::CreateTime => customer::Column::CreateTime,
            ListOrder::UpdateTime => customer::Column::UpdateTime,
            ListOrder::DisplayName => customer::Column::SearchName,
        };
        if let Some((value, last_id)) = &query.after {
            let value: sea_orm::Value = match value {
                SortValue::Time(time) => (*time).into(),
                SortValue::Text(text) => text.clone().into(),
            };
            let after = if query.descending {
                Condition::any().add(column.lt(value.clone())).add(
                    Condition::all()
                        .add(column.eq(value))
                        .add(customer::Column::Id.lt(*last_id)),
                )
            } else {
                Condition::any().add(column.gt(value.clone())).add(
                    Condition::all()
                        .add(column.eq(value))
                        .add(customer::Column::Id.gt(*last_id)),
                )
            };
            select = select.filter(after);
        }
        select = if query.descending {
            select.order_by_desc(column).order_by_desc(customer::Column::Id)
        } else {
            select.order_by_asc(column).order_by_asc(customer::Column::Id)
        };
        select
            .limit(query.limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(from_row)
            .collect()
    }

    async fn all_active(&self, tenant: &TenantId, limit: u64) -> Result<Vec<Customer>, ProfileError> {
        customer::Entity::find()
            .filter(customer::Column::TenantId.eq(tenant.as_str()))
            .filter(customer::Column::State.eq(RecordState::Active.as_stored()))
            .order_by_asc(customer::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(from_row)
            .collect()
    }

    async fn merge_record(
        &self,
        tenant: &TenantId,
        merged_id: Uuid,
    ) -> Result<Option<MergeRecord>, ProfileError> {
        let Some(record) = merge::Entity::find_by_id((tenant.as_str().to_owned(), merged_id))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(MergeRecord {
            survivor_before: decode_snapshot(&record.survivor_before)?,
            merged_before: decode_snapshot(&record.merged_before)?,
            survivor_revision_after: record.survivor_revision_after,
            create_time: record.create_time,
        }))
    }

    async fn consents(
        &self,
        tenant: &TenantId,
        customer_id: Uuid,
    ) -> Result<Vec<ConsentDecision>, ProfileError> {
        Ok(consent::Entity::find()
            .filter(consent::Column::TenantId.eq(tenant.as_str()))
            .filter(consent::Column::CustomerId.eq(customer_id))
            .order_by_asc(consent::Column::Purpose)
            .order_by_asc(consent::Column::Sequence)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| ConsentDecision {
                purpose: row.purpose,
                status: row.status,
                source: row.source,
                change_time: row.change_time,
            })
            .collect())
    }

    async fn settings(&self, tenant: &TenantId) -> Result<Settings, ProfileError> {
        Ok(settings::Entity::find_by_id(tenant.as_str().to_owned())
            .one(&self.db)
            .await?
            .map(|row| Settings {
                default_region: row.default_region,
                home_country: row.home_country,
                deleted_retention_days: row.deleted_retention_days,
                update_time: Some(row.update_time),
            })
            .unwrap_or_default())
    }

    async fn purge_deleted(&self, now: DateTime<Utc>) -> Result<u64, ProfileError> {
        let expired = customer::Entity::find()
            .filter(customer::Column::State.eq(RecordState::Deleted.as_stored()))
            .filter(customer::Column::PurgeTime.lte(now))
            .limit(500)
            .all(&self.db)
            .await?;
        let mut purged = 0;
        for row in expired {
            let txn = self.db.begin().await?;
            identity::Entity::delete_many()
                .filter(identity::Column::TenantId.eq(row.tenant_id.clone()))
                .filter(identity::Column::CustomerId.eq(row.id))
                .exec(&txn)
                .await?;
            delete_tags_and_attributes(&txn, &row.tenant_id, row.id).await?;
            // A purged customer leaves nothing personal behind: merge snapshots and stored
            // idempotent answers about it go too.
            merge::Entity::delete_many()
                .filter(merge::Column::TenantId.eq(row.tenant_id.clone()))
                .filter(
                    Condition::any()
                        .add(merge::Column::MergedId.eq(row.id))
                        .add(merge::Column::SurvivorId.eq(row.id)),
                )
                .exec(&txn)
                .await?;
            idempotency::forget_subjects(&txn, &row.tenant_id, &[crate::domain::customer_name(row.id)], "")
                .await?;
            consent::Entity::delete_many()
                .filter(consent::Column::TenantId.eq(row.tenant_id.clone()))
                .filter(consent::Column::CustomerId.eq(row.id))
                .exec(&txn)
                .await?;
            let deleted = customer::Entity::delete_many()
                .filter(customer::Column::TenantId.eq(row.tenant_id.clone()))
                .filter(customer::Column::Id.eq(row.id))
                .filter(customer::Column::Revision.eq(row.revision))
                .exec(&txn)
                .await?;
            txn.commit().await?;
            purged += deleted.rows_affected;
        }
        Ok(purged)
    }
}

fn escape_like(raw: &str) -> String {
    raw.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}
