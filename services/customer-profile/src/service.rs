//! The use cases: validate, apply the domain rules, write through the store (idempotently,
//! with the events in the same transaction), and keep the hot cache right.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crm_cache::{Cache, customer_key};
use crm_db::idempotency::RequestKey;
use crm_db::outbox::{NewEvent, Outbox};
use crm_proto::customerprofile_v1 as pb;
use crm_runtime::TenantId;
use prost::Message;
use uuid::Uuid;

use crate::convert::{decode_snapshot, encode_snapshot};
use crate::domain::{self, Customer, CustomerDraft, Identity, IdentityKind, RecordState, Survivorship};
use crate::error::ProfileError;
use crate::store::{
    Applied, ChangeSet, ConsentDecision, CustomerStore, ListQuery, MergeRecord, Settings, Write,
};

/// The cache entry kind of a customer's profile snapshot.
const CACHE_KIND: &str = "customer";
/// How often an update without an etag is retried when a concurrent write moved the revision.
const UPDATE_ATTEMPTS: usize = 5;

/// What an idempotent request stores as its answer: customer snapshots and a note (merged
/// names, a pseudonym), replayed into the same domain result.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredReply {
    #[prost(bytes = "vec", repeated, tag = "1")]
    customers: Vec<Vec<u8>>,
    #[prost(string, repeated, tag = "2")]
    notes: Vec<String>,
}

impl StoredReply {
    fn of(customers: &[&Customer], notes: Vec<String>) -> Self {
        Self {
            customers: customers
                .iter()
                .map(|customer| encode_snapshot(customer))
                .collect(),
            notes,
        }
    }

    fn customers(&self) -> Result<Vec<Customer>, ProfileError> {
        self.customers
            .iter()
            .map(|bytes| decode_snapshot(bytes))
            .collect()
    }

    fn first_customer(&self) -> Result<Customer, ProfileError> {
        let first = self
            .customers
            .first()
            .ok_or_else(|| ProfileError::Corrupt("empty reply".into()))?;
        decode_snapshot(first)
    }
}

/// The result of a merge.
#[derive(Debug, Clone)]
pub struct MergeOutcome {
    pub survivor: Customer,
    pub merged: Vec<Uuid>,
}

/// A consent with its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentView {
    pub purpose: String,
    pub current: ConsentDecision,
    pub history: Vec<ConsentDecision>,
}

/// A duplicate candidate pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Duplicate {
    pub first: Uuid,
    pub second: Uuid,
    pub score: f64,
    pub reasons: Vec<&'static str>,
}

/// A search hit.
#[derive(Debug, Clone)]
pub struct SearchHit {
    pub customer: Customer,
    pub score: f64,
    pub matched_field: &'static str,
}

/// What one imported row did.
#[derive(Debug, Clone)]
pub enum ImportOutcome {
    Created(Uuid),
    Updated(Uuid),
    Failed(String),
}

pub struct CustomerProfile<S> {
    store: S,
    cache: Arc<dyn Cache>,
    cache_ttl: Duration,
    outbox: Outbox,
    /// Settings change rarely and are read on every write and lookup.
    settings_cache: moka::sync::Cache<TenantId, Settings>,
}

fn event(
    tenant: &TenantId,
    kind: pb::customer_event::Type,
    customer: Uuid,
    merged: &[Uuid],
    pseudonym: &str,
) -> NewEvent {
    let payload = pb::CustomerEvent {
        cursor: String::new(),
        r#type: kind.into(),
        customer: domain::customer_name(customer),
        merged: merged.iter().map(|id| domain::customer_name(*id)).collect(),
        pseudonym: pseudonym.to_owned(),
        event_time: None,
    };
    NewEvent {
        tenant_id: tenant.as_str().to_owned(),
        event_type: kind.as_str_name().to_owned(),
        subject: domain::customer_name(customer),
        payload: payload.encode_to_vec(),
    }
}

fn lookup_key(tenant: &TenantId, identity: &Identity) -> String {
    format!(
        "crm:lookup:{{{}/{}:{}}}",
        tenant.as_str(),
        identity.kind.as_stored(),
        identity.value
    )
}

impl<S: CustomerStore> CustomerProfile<S> {
    pub fn new(store: S, cache: Arc<dyn Cache>, cache_ttl: Duration, outbox: Outbox) -> Self {
        Self {
            store,
            cache,
            cache_ttl,
            outbox,
            settings_cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(5))
                .build(),
        }
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub async fn settings(&self, tenant: &TenantId) -> Result<Settings, ProfileError> {
        if let Some(settings) = self.settings_cache.get(tenant) {
            return Ok(settings);
        }
        let settings = self.store.settings(tenant).await?;
        self.settings_cache.insert(tenant.clone(), settings.clone());
        Ok(settings)
    }

    /// The answer of an earlier request with the same id, checked before anything is computed.
    async fn replayed(
        &self,
        tenant: &TenantId,
        request: Option<&RequestKey>,
    ) -> Result<Option<StoredReply>, ProfileError> {
        let Some(request) = request else { return Ok(None) };
        let Some(stored) = self
            .store
            .replay(tenant, request.method, &request.request_id)
            .await?
        else {
            return Ok(None);
        };
        if stored.fingerprint != request.fingerprint {
            return Err(ProfileError::RequestIdReused {
                request_id: request.request_id.clone(),
            });
        }
        Ok(Some(
            StoredReply::decode(stored.response.as_slice())
                .map_err(|error| ProfileError::Corrupt(error.to_string()))?,
        ))
    }

    /// Applies a change set once per request id. `reply` is what a retry gets back.
    async fn commit(
        &self,
        tenant: &TenantId,
        changes: ChangeSet,
        request: Option<&RequestKey>,
        reply: &StoredReply,
        touched: &[&Customer],
        identities_before: &[Identity],
    ) -> Result<Option<StoredReply>, ProfileError> {
        let claim = request.map(|request| {
            // The first customer of a reply is the one it is about.
            let subject = reply
                .customers
                .first()
                .and_then(|bytes| decode_snapshot(bytes).ok())
                .map(|customer| customer.resource_name())
                .unwrap_or_default();
            request.claim(reply.encode_to_vec(), subject)
        });
        let has_events = !changes.events.is_empty();
        match self.store.apply(tenant, changes, claim.as_ref()).await? {
            Applied::Done => {
                if has_events {
                    self.outbox.notify_committed();
                }
                self.invalidate(tenant, touched, identities_before).await;
                Ok(None)
            }
            Applied::Replayed(stored) => {
                let Some(claim) = claim else {
                    return Err(ProfileError::Corrupt("a replay without a request id".into()));
                };
                if stored.fingerprint != claim.fingerprint {
                    return Err(ProfileError::RequestIdReused {
                        request_id: claim.request_id,
                    });
                }
                Ok(Some(
                    StoredReply::decode(stored.response.as_slice())
                        .map_err(|error| ProfileError::Corrupt(error.to_string()))?,
                ))
            }
            Applied::Conflict(id) => Err(ProfileError::EtagMismatch {
                resource_name: domain::customer_name(id),
            }),
            Applied::IdentityTaken(identity) => Err(ProfileError::IdentityTaken {
                identity: identity.describe(),
            }),
        }
    }

    /// Writes one customer's change with its event, once per request id; a replay answers
    /// with the first result.
    async fn write_one(
        &self,
        tenant: &TenantId,
        write: Write,
        kind: pb::customer_event::Type,
        request: Option<&RequestKey>,
        identities_before: &[Identity],
    ) -> Result<Customer, ProfileError> {
        let after = match &write {
            Write::Insert(customer) | Write::Update { customer, .. } => customer.clone(),
        };
        let changes = ChangeSet {
            writes: vec![write],
            events: vec![event(tenant, kind, after.id, &[], "")],
            ..Default::default()
        };
        let reply = StoredReply::of(&[&after], Vec::new());
        match self
            .commit(tenant, changes, request, &reply, &[&after], identities_before)
            .await?
        {
            None => Ok(after),
            Some(replayed) => replayed.first_customer(),
        }
    }

    /// Drops the cached snapshots and lookups of everything a committed change touched.
    ///
    /// Lookup keys are still plain deletes: a lookup racing a change of ownership can cache
    /// the previous owner until the TTL. The read checks the snapshot still holds the identity
    /// and is active, which covers most of it but not a merge.
    async fn invalidate(&self, tenant: &TenantId, touched: &[&Customer], identities_before: &[Identity]) {
        for customer in touched {
            // A tombstone at the committed revision rather than a delete: a reader that loaded
            // the state before this commit writes its snapshot after this point at a lower
            // version and is refused, instead of leaving the old state cached until the TTL.
            let key = customer_key(CACHE_KIND, tenant.as_str(), &customer.id.to_string());
            self.cache
                .hash_update_if_newer(
                    &key,
                    SNAPSHOT_VERSION_FIELD,
                    tombstone_version(customer.revision),
                    &[],
                    &[SNAPSHOT_FIELD],
                    self.cache_ttl,
                )
                .await;
            // And unconditionally, for a change that did not raise the revision.
            self.cache.hash_delete(&key, &[SNAPSHOT_FIELD]).await;
            for identity in customer.identities() {
                self.cache.delete(&lookup_key(tenant, &identity)).await;
            }
        }
        for identity in identities_before {
            self.cache.delete(&lookup_key(tenant, identity)).await;
        }
    }

    async fn check_referrer_exists(
        &self,
        tenant: &TenantId,
        draft: &CustomerDraft,
    ) -> Result<(), ProfileError> {
        if let Some(referrer) = draft.referrer {
            let found = self.store.load(tenant, referrer).await?;
            if !found.is_some_and(|customer| customer.state == RecordState::Active) {
                return Err(ProfileError::invalid(
                    "customer.referrer",
                    format!("{} does not exist", domain::customer_name(referrer)),
                ));
            }
        }
        Ok(())
    }

    pub async fn create_customer(
        &self,
        tenant: &TenantId,
        draft: CustomerDraft,
        request: Option<RequestKey>,
    ) -> Result<Customer, ProfileError> {
        if let Some(replayed) = self.replayed(tenant, request.as_ref()).await? {
            return replayed.first_customer();
        }
        self.check_referrer_exists(tenant, &draft).await?;
        let customer = Customer::create(draft, domain::now())?;
        self.write_one(
            tenant,
            Write::Insert(customer),
            pb::customer_event::Type::Created,
            request.as_ref(),
            &[],
        )
        .await
    }

    /// The record, from the cache or the store, in any state.
    async fn load_cached(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Customer>, ProfileError> {
        let key = customer_key(CACHE_KIND, tenant.as_str(), &id.to_string());
        if let Some(bytes) = self.cache.hash_get(&key, SNAPSHOT_FIELD).await {
            match decode_snapshot(&bytes) {
                Ok(customer) => return Ok(Some(customer)),
                Err(error) => tracing::warn!(%error, "unreadable cache entry, reading the store"),
            }
        }
        let Some(customer) = self.store.load(tenant, id).await? else {
            return Ok(None);
        };
        self.cache
            .hash_update_if_newer(
                &key,
                SNAPSHOT_VERSION_FIELD,
                snapshot_version(customer.revision),
                &[(SNAPSHOT_FIELD, encode_snapshot(&customer))],
                &[],
                self.cache_ttl,
            )
            .await;
        Ok(Some(customer))
    }

    /// The customer a name refers to: merged-away names resolve to their survivor; deleted
    /// (and purged) customers are NOT_FOUND.
    pub async fn get_customer(&self, tenant: &TenantId, id: Uuid) -> Result<Customer, ProfileError> {
        let mut current = id;
        for _ in 0..MAX_MERGE_CHAIN {
            let customer = self
                .load_cached(tenant, current)
                .await?
                .ok_or_else(|| ProfileError::not_found(domain::customer_name(id)))?;
            match resolved(id, customer)? {
                Resolved::Found(customer) => return Ok(*customer),
                Resolved::MergedInto(survivor) => current = survivor,
            }
        }
        Err(merge_chain_too_long(id))
    }

    /// [`Self::get_customer`] for many names, in their order, failing on the first that
    /// fails. One store read for the batch and one per level of merges to follow, instead of a
    /// cache round trip and a store read per customer: segmentation's follower asks for up to
    /// 1,000 at a time.
    pub async fn batch_get(&self, tenant: &TenantId, ids: &[Uuid]) -> Result<Vec<Customer>, ProfileError> {
        let mut known: HashMap<Uuid, Customer> = HashMap::with_capacity(ids.len());
        let mut wanted: BTreeSet<Uuid> = ids.iter().copied().collect();
        for _ in 0..MAX_MERGE_CHAIN {
            let missing: Vec<Uuid> = wanted.into_iter().filter(|id| !known.contains_key(id)).collect();
            if missing.is_empty() {
                break;
            }
            for customer in self.store.load_many(tenant, &missing).await? {
                known.insert(customer.id, customer);
            }
            wanted = missing
                .iter()
                .filter_map(|id| known.get(id))
                .filter(|customer| customer.state == RecordState::Merged)
                .filter_map(|customer| customer.merged_into)
                .collect();
        }
        ids.iter()
            .map(|id| {
                let mut current = *id;
                for _ in 0..MAX_MERGE_CHAIN {
                    let customer = known
                        .get(&current)
                        .cloned()
                        .ok_or_else(|| ProfileError::not_found(domain::customer_name(*id)))?;
                    match resolved(*id, customer)? {
                        Resolved::Found(customer) => return Ok(*customer),
                        Resolved::MergedInto(survivor) => current = survivor,
                    }
                }
                Err(merge_chain_too_long(*id))
            })
            .collect()
    }

    /// The active customer `id` for a change, failing like a read would.
    async fn load_active(&self, tenant: &TenantId, id: Uuid) -> Result<Customer, ProfileError> {
        match self.store.load(tenant, id).await? {
            Some(customer) if customer.state == RecordState::Active => Ok(customer),
            Some(customer) if customer.state == RecordState::Erased => {
                Err(ProfileError::FailedPrecondition {
                    reason: "CUSTOMER_ERASED",
                    message: format!("{} was erased", domain::customer_name(id)),
                })
            }
            Some(customer) if customer.state == RecordState::Merged => {
                Err(ProfileError::FailedPrecondition {
                    reason: "CUSTOMER_MERGED",
                    message: format!(
                        "{} was merged into {}; change the survivor",
                        domain::customer_name(id),
                        customer
                            .merged_into
                            .map(domain::customer_name)
                            .unwrap_or_default()
                    ),
                })
            }
            _ => Err(ProfileError::not_found(domain::customer_name(id))),
        }
    }

    pub async fn update_customer(
        &self,
        tenant: &TenantId,
        id: Uuid,
        draft: CustomerDraft,
        mask: Vec<String>,
        etag: Option<String>,
        request: Option<RequestKey>,
    ) -> Result<Customer, ProfileError> {
        if let Some(replayed) = self.replayed(tenant, request.as_ref()).await? {
            return replayed.first_customer();
        }
        if mask.iter().any(|field| field == "referrer") || mask.is_empty() {
            self.check_referrer_exists(tenant, &draft).await?;
        }
        for attempt in 0..UPDATE_ATTEMPTS {
            let before = self.load_active(tenant, id).await?;
            if let Some(etag) = &etag
                && *etag != before.etag()
            {
                return Err(ProfileError::EtagMismatch {
                    resource_name: before.resource_name(),
                });
            }
            let mut after = before.clone();
            after.apply_update(draft.clone(), &mask, domain::now())?;
            let write = Write::Update {
                customer: after,
                expected_revision: before.revision,
            };
            let written = self
                .write_one(
                    tenant,
                    write,
                    pb::customer_event::Type::Updated,
                    request.as_ref(),
                    &before.identities(),
                )
                .await;
            match written {
                Ok(customer) => return Ok(customer),
                // Without an etag the caller did not ask for optimistic locking: re-read and retry.
                Err(ProfileError::EtagMismatch { .. }) if etag.is_none() && attempt + 1 < UPDATE_ATTEMPTS => {
                    continue;
                }
                Err(error) => return Err(error),
            }
        }
        Err(ProfileError::EtagMismatch {
            resource_name: domain::customer_name(id),
        })
    }

    pub async fn delete_customer(
        &self,
        tenant: &TenantId,
        id: Uuid,
        etag: Option<String>,
        request: Option<RequestKey>,
    ) -> Result<Customer, ProfileError> {
        if let Some(replayed) = self.replayed(tenant, request.as_ref()).await? {
            return replayed.first_customer();
        }
        let before = self.load_active(tenant, id).await?;
        if let Some(etag) = &etag
            && *etag != before.etag()
        {
            return Err(ProfileError::EtagMismatch {
                resource_name: before.resource_name(),
            });
        }
        let settings = self.settings(tenant).await?;
        let now = domain::now();
        let mut after = before.clone();
        after.state = RecordState::Deleted;
        after.delete_time = Some(now);
        after.purge_time =
            Some(now + chrono::Duration::days(i64::from(settings.deleted_retention_days.max(1))));
        after.touch(now);
        let write = Write::Update {
            customer: after,
            expected_revision: before.revision,
        };
        self.write_one(
            tenant,
            write,
            pb::customer_event::Type::Deleted,
            request.as_ref(),
            &[],
        )
        .await
    }

    pub async fn undelete_customer(
        &self,
        tenant: &TenantId,
        id: Uuid,
        request: Option<RequestKey>,
    ) -> Result<Customer, ProfileError> {
        if let Some(replayed) = self.replayed(tenant, request.as_ref()).await? {
            return replayed.first_customer();
        }
        let before = match self.store.load(tenant, id).await? {
            Some(customer) if customer.state == RecordState::Deleted => customer,
            Some(customer) if customer.state == RecordState::Active => {
                return Err(ProfileError::FailedPrecondition {
                    reason: "CUSTOMER_NOT_DELETED",
                    message: format!("{} is not deleted", domain::customer_name(id)),
                });
            }
            _ => return Err(ProfileError::not_found(domain::customer_name(id))),
        };
        let now = domain::now();
        let mut after = before.clone();
        after.state = RecordState::Active;
        after.delete_time = None;
        after.purge_time = None;
        after.touch(now);
        let write = Write::Update {
            customer: after,
            expected_revision: before.revision,
        };
        self.write_one(
            tenant,
            write,
            pb::customer_event::Type::Undeleted,
            request.as_ref(),
            &[],
        )
        .await
    }

    pub async fn list_customers(
        &self,
        tenant: &TenantId,
        query: &ListQuery,
    ) -> Result<Vec<Customer>, ProfileError> {
        self.store.list(tenant, query).await
    }

    /// Finds customers by a name, phone or email prefix, ranked.
    pub async fn search(
        &self,
        tenant: &TenantId,
        query: &str,
        limit: usize,
    ) -> Result<Vec<SearchHit>, ProfileError> {
        let query = query.trim();
        let mut hits: HashMap<Uuid, (f64, &'static str)> = HashMap::new();
        let mut consider = |id: Uuid, score: f64, field: &'static str| {
            let entry = hits.entry(id).or_insert((score, field));
            if score > entry.0 {
                *entry = (score, field);
            }
        };
        let digits: String = query.chars().filter(char::is_ascii_digit).collect();
        let looks_like_phone =
            digits.len() >= 3 && query.chars().all(|c| c.is_ascii_digit() || " +-().".contains(c));
        if looks_like_phone {
            let settings = self.settings(tenant).await?;
            let mut prefixes = vec![format!("+{digits}")];
            if let Ok(full) = domain::normalize_phone(query, &settings.default_region, "query") {
                prefixes.insert(0, full);
            } else if let Some(metadata) =
                phonenumber::metadata::DATABASE.by_id(settings.default_region.as_str())
            {
                let code = metadata.country_code();
                let national = digits.trim_start_matches('0');
                prefixes.push(format!("+{code}{national}"));
            }
            for prefix in prefixes {
                for (value, owner) in self
                    .store
                    .identities_with_prefix(tenant, IdentityKind::Phone, &prefix, limit as u64)
                    .await?
                {
                    consider(owner, if value == prefix { 1.0 } else { 0.8 }, "phone");
                }
            }
        }
        let lowered = query.to_lowercase();
        if !lowered.is_empty() {
            for (value, owner) in self
                .store
                .identities_with_prefix(tenant, IdentityKind::Email, &lowered, limit as u64)
                .await?
            {
                consider(owner, if value == lowered { 1.0 } else { 0.8 }, "email");
            }
            for customer in self
                .store
                .names_containing(tenant, &lowered, (limit * 4) as u64)
                .await?
            {
                let name = customer.display_name.to_lowercase();
                let score = if name == lowered {
                    0.7
                } else if name.starts_with(&lowered) {
                    0.5
                } else if name.split_whitespace().any(|word| word.starts_with(&lowered)) {
                    0.4
                } else {
                    continue;
                };
                consider(customer.id, score, "name");
            }
        }
        let mut ranked: Vec<(Uuid, f64, &'static str)> = hits
            .into_iter()
            .map(|(id, (score, field))| (id, score, field))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(limit);
        let mut results = Vec::with_capacity(ranked.len());
        for (id, score, matched_field) in ranked {
            if let Ok(customer) = self.get_customer(tenant, id).await {
                results.push(SearchHit {
                    customer,
                    score,
                    matched_field,
                });
            }
        }
        Ok(results)
    }

    /// The call-center path: identity -> owner (cached) -> customer (cached).
    pub async fn lookup(&self, tenant: &TenantId, identity: Identity) -> Result<Customer, ProfileError> {
        let key = lookup_key(tenant, &identity);
        // The owner's snapshot is cached under the identity itself, so a warm lookup is one
        // cache round trip. Every committed change drops the lookup keys of the identities its
        // customers had before and after (`invalidate`), like their snapshot keys.
        if let Some(bytes) = self.cache.get(&key).await
            && let Ok(customer) = decode_snapshot(&bytes)
            // A stale entry can only show someone who no longer owns the identity.
            && customer.state == RecordState::Active
            && customer.identities().contains(&identity)
        {
            return Ok(customer);
        }
        let owner = self
            .store
            .owner(tenant, &identity)
            .await?
            .ok_or_else(|| ProfileError::not_found(identity.describe()))?;
        let customer = self
            .get_customer(tenant, owner)
            .await
            .map_err(|error| match error {
                ProfileError::NotFound { .. } => ProfileError::not_found(identity.describe()),
                other => other,
            })?;
        self.cache
            .set(&key, &encode_snapshot(&customer), self.cache_ttl)
            .await;
        Ok(customer)
    }

    /// Scores pairs of active customers that may be the same party.
    pub async fn find_duplicates(
        &self,
        tenant: &TenantId,
        min_score: f64,
        limit: usize,
        only: Option<Uuid>,
    ) -> Result<Vec<Duplicate>, ProfileError> {
        const SCAN_LIMIT: u64 = 50_000;
        let customers = self.store.all_active(tenant, SCAN_LIMIT).await?;
        // Blocking keys keep the comparison near-linear: a pair is scored only when it shares a
        // name prefix, an email local part or a phone's last seven digits.
        let mut blocks: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, customer) in customers.iter().enumerate() {
            let name = customer.display_name.to_lowercase();
            let prefix: String = name.chars().filter(|c| c.is_alphanumeric()).take(3).collect();
            if !prefix.is_empty() {
                blocks.entry(format!("n:{prefix}")).or_default().push(index);
            }
            for email in &customer.emails {
                if let Some((local, _)) = email.value.split_once('@') {
                    blocks.entry(format!("e:{local}")).or_default().push(index);
                }
            }
            for phone in &customer.phones {
                let tail: String = phone.value.chars().rev().take(7).collect();
                blocks.entry(format!("p:{tail}")).or_default().push(index);
            }
        }
        let mut pairs: BTreeMap<(Uuid, Uuid), Duplicate> = BTreeMap::new();
        for members in blocks.values() {
            if members.len() > 500 {
                continue; // too common to mean anything (a shared switchboard, "info@")
            }
            for (position, &a) in members.iter().enumerate() {
                for &b in &members[position + 1..] {
                    let (first, second) = (&customers[a], &customers[b]);
                    if let Some(only) = only
                        && first.id != only
                        && second.id != only
                    {
                        continue;
                    }
                    let key = if first.id < second.id {
                        (first.id, second.id)
                    } else {
                        (second.id, first.id)
                    };
                    if pairs.contains_key(&key) {
                        continue;
                    }
                    let duplicate = score_pair(first, second);
                    if duplicate.score >= min_score {
                        pairs.insert(
                            key,
                            Duplicate {
                                first: key.0,
                                second: key.1,
                                ..duplicate
                            },
                        );
                    }
                }
            }
        }
        let mut ranked: Vec<Duplicate> = pairs.into_values().collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.first.cmp(&b.first)));
        ranked.truncate(limit);
        Ok(ranked)
    }

    /// Merges `merged` into `survivor`; with `validate_only`, only computes the result.
    pub async fn merge(
        &self,
        tenant: &TenantId,
        survivor_id: Uuid,
        merged_ids: &[Uuid],
        policy_for: impl Fn(&str) -> Survivorship,
        validate_only: bool,
        request: Option<RequestKey>,
    ) -> Result<MergeOutcome, ProfileError> {
        if !validate_only && let Some(replayed) = self.replayed(tenant, request.as_ref()).await? {
            let survivor = replayed.first_customer()?;
            let merged = replayed
                .notes
                .iter()
                .filter_map(|id| Uuid::parse_str(id).ok())
                .collect();
            return Ok(MergeOutcome { survivor, merged });
        }
        let survivor = self.load_active(tenant, survivor_id).await?;
        let mut merged = Vec::with_capacity(merged_ids.len());
        for (index, id) in merged_ids.iter().enumerate() {
            merged.push(self.load_active(tenant, *id).await.map_err(|error| match error {
                ProfileError::NotFound { resource_name } => ProfileError::NotFound { resource_name },
                ProfileError::FailedPrecondition { reason, message } => ProfileError::FailedPrecondition {
                    reason,
                    message: format!("merged[{index}]: {message}"),
                },
                other => other,
            })?);
        }
        let now = domain::now();
        let (result, absorbed) = domain::merge(&survivor, &merged, policy_for, now);
        if validate_only {
            return Ok(MergeOutcome {
                survivor: result,
                merged: merged_ids.to_vec(),
            });
        }
        let mut writes: Vec<Write> = absorbed
            .iter()
            .zip(&merged)
            .map(|(after, before)| Write::Update {
                customer: after.clone(),
                expected_revision: before.revision,
            })
            .collect();
        writes.push(Write::Update {
            customer: result.clone(),
            expected_revision: survivor.revision,
        });
        let changes = ChangeSet {
            writes,
            record_merges: merged
                .iter()
                .map(|before| MergeRecord {
                    survivor_before: survivor.clone(),
                    merged_before: before.clone(),
                    survivor_revision_after: result.revision,
                    create_time: now,
                })
                .collect(),
            events: vec![event(
                tenant,
                pb::customer_event::Type::Merged,
                survivor_id,
                merged_ids,
                "",
            )],
            ..Default::default()
        };
        let notes = merged_ids.iter().map(|id| id.to_string()).collect();
        let reply = StoredReply::of(&[&result], notes);
        let mut touched: Vec<&Customer> = absorbed.iter().collect();
        touched.push(&result);
        let identities_before: Vec<Identity> = merged.iter().flat_map(Customer::identities).collect();
        match self
            .commit(
                tenant,
                changes,
                request.as_ref(),
                &reply,
                &touched,
                &identities_before,
            )
            .await?
        {
            None => Ok(MergeOutcome {
                survivor: result,
                merged: merged_ids.to_vec(),
            }),
            Some(replayed) => {
                let survivor = replayed.first_customer()?;
                let merged = replayed
                    .notes
                    .iter()
                    .filter_map(|id| Uuid::parse_str(id).ok())
                    .collect();
                Ok(MergeOutcome { survivor, merged })
            }
        }
    }

    /// Undoes the merge that absorbed `merged_id`: it comes back as it was; the survivor goes
    /// back to its pre-merge state when nothing changed it since, otherwise it only gives back
    /// the restored customer's identities and lineage.
    pub async fn unmerge(
        &self,
        tenant: &TenantId,
        merged_id: Uuid,
        request: Option<RequestKey>,
    ) -> Result<(Customer, Customer), ProfileError> {
        if let Some(replayed) = self.replayed(tenant, request.as_ref()).await? {
            let mut customers = replayed.customers()?.into_iter();
            return match (customers.next(), customers.next()) {
                (Some(restored), Some(survivor)) => Ok((restored, survivor)),
                _ => Err(ProfileError::Corrupt("unmerge reply needs two customers".into())),
            };
        }
        let Some(record) = self.store.merge_record(tenant, merged_id).await? else {
            return Err(ProfileError::FailedPrecondition {
                reason: "NOT_MERGED",
                message: format!(
                    "{} is not merged into another customer",
                    domain::customer_name(merged_id)
                ),
            });
        };
        let current_merged = self
            .store
            .load(tenant, merged_id)
            .await?
            .ok_or_else(|| ProfileError::not_found(domain::customer_name(merged_id)))?;
        let survivor_now = self.load_active(tenant, record.survivor_before.id).await?;
        let now = domain::now();
        let mut restored = record.merged_before.clone();
        restored.revision = current_merged.revision;
        restored.touch(now);
        let mut survivor_after = if survivor_now.revision == record.survivor_revision_after {
            let mut back = record.survivor_before.clone();
            back.merged_from = survivor_now
                .merged_from
                .iter()
                .copied()
                .filter(|id| *id != merged_id)
                .collect();
            back
        } else {
            let mut kept = survivor_now.clone();
            let returned: BTreeSet<Identity> = record.merged_before.identities().into_iter().collect();
            let own_before: BTreeSet<Identity> = record.survivor_before.identities().into_iter().collect();
            let give_back =
                |identity: &Identity| returned.contains(identity) && !own_before.contains(identity);
            kept.phones.retain(|p| {
                !give_back(&Identity {
                    kind: IdentityKind::Phone,
                    value: p.value.clone(),
                })
            });
            kept.emails.retain(|e| {
                !give_back(&Identity {
                    kind: IdentityKind::Email,
                    value: e.value.clone(),
                })
            });
            kept.external_ids.retain(|x| {
                !give_back(&Identity {
                    kind: IdentityKind::External,
                    value: domain::external_identity_value(x),
                })
            });
            kept.merged_from.retain(|id| *id != merged_id);
            kept
        };
        survivor_after.revision = survivor_now.revision;
        survivor_after.touch(now);
        let changes = ChangeSet {
            // The survivor releases the identities before the restored customer claims them.
            writes: vec![
                Write::Update {
                    customer: survivor_after.clone(),
                    expected_revision: survivor_now.revision,
                },
                Write::Update {
                    customer: restored.clone(),
                    expected_revision: current_merged.revision,
                },
            ],
            remove_merges: vec![merged_id],
            events: vec![event(
                tenant,
                pb::customer_event::Type::Unmerged,
                survivor_now.id,
                &[merged_id],
                "",
            )],
            ..Default::default()
        };
        let reply = StoredReply::of(&[&restored, &survivor_after], Vec::new());
        let identities_before = survivor_now.identities();
        match self
            .commit(
                tenant,
                changes,
                request.as_ref(),
                &reply,
                &[&restored, &survivor_after],
                &identities_before,
            )
            .await?
        {
            None => Ok((restored, survivor_after)),
            Some(replayed) => {
                let mut customers = replayed.customers()?.into_iter();
                match (customers.next(), customers.next()) {
                    (Some(restored), Some(survivor)) => Ok((restored, survivor)),
                    _ => Err(ProfileError::Corrupt("unmerge reply needs two customers".into())),
                }
            }
        }
    }

    /// Erases personal data, keeping a pseudonymous tombstone; erasing twice is a no-op.
    pub async fn erase(
        &self,
        tenant: &TenantId,
        id: Uuid,
        request: Option<RequestKey>,
    ) -> Result<(Customer, String), ProfileError> {
        if let Some(replayed) = self.replayed(tenant, request.as_ref()).await? {
            let customer = replayed.first_customer()?;
            return Ok((
                customer,
                replayed
                    .notes
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| domain::pseudonym(id)),
            ));
        }
        let before = self
            .store
            .load(tenant, id)
            .await?
            .ok_or_else(|| ProfileError::not_found(domain::customer_name(id)))?;
        let pseudonym = domain::pseudonym(id);
        if before.state == RecordState::Erased {
            return Ok((before, pseudonym));
        }
        if before.state == RecordState::Merged {
            return Err(ProfileError::FailedPrecondition {
                reason: "CUSTOMER_MERGED",
                message: format!("{} was merged; erase the survivor", domain::customer_name(id)),
            });
        }
        let mut after = before.clone();
        after.erase(domain::now());
        // Consent decisions are personal too: their history goes with the person. The
        // decision that remains is "withdrawn", so nothing downstream may contact them.
        let consents: Vec<(Uuid, ConsentDecision)> = self
            .consents(tenant, id)
            .await?
            .into_iter()
            .filter(|view| view.current.status != "WITHDRAWN")
            .map(|view| {
                (
                    id,
                    ConsentDecision {
                        purpose: view.purpose,
                        status: "WITHDRAWN".into(),
                        source: "erasure".into(),
                        change_time: after.update_time,
                    },
                )
            })
            .collect();
        // Records merged into this customer are the same person: their snapshots are scrubbed
        // too (they stay MERGED so their names still resolve, to the tombstone).
        let mut writes = Vec::new();
        for absorbed in self.store.load_many(tenant, &before.merged_from).await? {
            if absorbed.state != RecordState::Merged {
                continue;
            }
            let mut scrubbed = absorbed.clone();
            scrubbed.erase(after.update_time);
            scrubbed.state = RecordState::Merged;
            scrubbed.merged_into = absorbed.merged_into;
            writes.push(Write::Update {
                customer: scrubbed,
                expected_revision: absorbed.revision,
            });
        }
        writes.push(Write::Update {
            customer: after.clone(),
            expected_revision: before.revision,
        });
        let mut forget = before.merged_from.clone();
        forget.push(id);
        let changes = ChangeSet {
            writes,
            consents,
            // Merge records keep pre-merge snapshots for unmerge: personal data, so they go too
            // (an erased customer's merges can no longer be undone).
            forget_merges_of: forget,
            events: vec![event(
                tenant,
                pb::customer_event::Type::Erased,
                id,
                &[],
                &pseudonym,
            )],
            ..Default::default()
        };
        let reply = StoredReply::of(&[&after], vec![pseudonym.clone()]);
        match self
            .commit(
                tenant,
                changes,
                request.as_ref(),
                &reply,
                &[&after],
                &before.identities(),
            )
            .await?
        {
            None => Ok((after, pseudonym)),
            Some(replayed) => {
                let customer = replayed.first_customer()?;
                Ok((customer, replayed.notes.into_iter().next().unwrap_or(pseudonym)))
            }
        }
    }

    pub async fn set_consent(
        &self,
        tenant: &TenantId,
        customer_id: Uuid,
        decision: ConsentDecision,
        request: Option<RequestKey>,
    ) -> Result<ConsentView, ProfileError> {
        if self.replayed(tenant, request.as_ref()).await?.is_some() {
            return self
                .consents(tenant, customer_id)
                .await?
                .into_iter()
                .find(|view| view.purpose == decision.purpose)
                .ok_or_else(|| ProfileError::Corrupt("a recorded consent is missing".into()));
        }
        let customer = self.load_active(tenant, customer_id).await?;
        let purpose = decision.purpose.clone();
        let changes = ChangeSet {
            consents: vec![(customer_id, decision.clone())],
            events: vec![event(
                tenant,
                pb::customer_event::Type::Updated,
                customer.id,
                &[],
                "",
            )],
            ..Default::default()
        };
        let reply = StoredReply {
            customers: Vec::new(),
            notes: vec![purpose.clone()],
        };
        self.commit(tenant, changes, request.as_ref(), &reply, &[], &[])
            .await?;
        self.consents(tenant, customer_id)
            .await?
            .into_iter()
            .find(|view| view.purpose == purpose)
            .ok_or_else(|| ProfileError::Corrupt("a recorded consent is missing".into()))
    }

    pub async fn consents(
        &self,
        tenant: &TenantId,
        customer_id: Uuid,
    ) -> Result<Vec<ConsentView>, ProfileError> {
        let mut by_purpose: BTreeMap<String, Vec<ConsentDecision>> = BTreeMap::new();
        for decision in self.store.consents(tenant, customer_id).await? {
            by_purpose
                .entry(decision.purpose.clone())
                .or_default()
                .push(decision);
        }
        Ok(by_purpose
            .into_iter()
            .filter_map(|(purpose, history)| {
                let current = history.last()?.clone();
                Some(ConsentView {
                    purpose,
                    current,
                    history,
                })
            })
            .collect())
    }

    /// The customer's consents for a read: only for a customer that can be read.
    pub async fn list_consents(
        &self,
        tenant: &TenantId,
        customer_id: Uuid,
    ) -> Result<Vec<ConsentView>, ProfileError> {
        let customer = self.get_customer(tenant, customer_id).await?;
        self.consents(tenant, customer.id).await
    }

    /// Imports one batch: each row is created, or updated when its external id is known.
    /// Rows fail alone. New customers are written together in one transaction; rows that
    /// update, repeat a key of the batch, name a referrer, or collide on an identity go one by
    /// one.
    pub async fn import_batch(
        &self,
        tenant: &TenantId,
        rows: Vec<Result<CustomerDraft, ProfileError>>,
    ) -> Vec<ImportOutcome> {
        let mut outcomes: Vec<Option<ImportOutcome>> = vec![None; rows.len()];
        let keys: Vec<Option<Identity>> = rows
            .iter()
            .map(|row| {
                row.as_ref()
                    .ok()
                    .and_then(|draft| draft.external_ids.first())
                    .map(|key| Identity {
                        kind: IdentityKind::External,
                        value: domain::external_identity_value(key),
                    })
            })
            .collect();
        let wanted: Vec<Identity> = keys.iter().flatten().cloned().collect();
        let known: HashMap<Identity, Uuid> = match self.store.owners(tenant, &wanted).await {
            Ok(owners) => owners.into_iter().collect(),
            Err(error) => {
                return rows
                    .iter()
                    .map(|_| ImportOutcome::Failed(error.to_string()))
                    .collect();
            }
        };
        let mut seen = BTreeSet::new();
        let mut bulk: Vec<(usize, CustomerDraft, Customer)> = Vec::new();
        let mut one_by_one: Vec<(usize, CustomerDraft)> = Vec::new();
        let now = domain::now();
        for (index, (row, key)) in rows.into_iter().zip(keys).enumerate() {
            let draft = match row {
                Err(error) => {
                    outcomes[index] = Some(ImportOutcome::Failed(error.to_string()));
                    continue;
                }
                Ok(draft) => draft,
            };
            let Some(key) = key else {
                let error =
                    ProfileError::invalid("customer.external_ids", "an imported row needs an external id");
                outcomes[index] = Some(ImportOutcome::Failed(error.to_string()));
                continue;
            };
            let first_in_batch = seen.insert(key.clone());
            if known.contains_key(&key) || !first_in_batch || draft.referrer.is_some() {
                one_by_one.push((index, draft));
                continue;
            }
            match Customer::create(draft.clone(), now) {
                Ok(customer) => bulk.push((index, draft, customer)),
                Err(error) => outcomes[index] = Some(ImportOutcome::Failed(error.to_string())),
            }
        }
        if !bulk.is_empty() {
            let customers: Vec<Customer> = bulk.iter().map(|(_, _, customer)| customer.clone()).collect();
            let events = customers
                .iter()
                .map(|customer| event(tenant, pb::customer_event::Type::Created, customer.id, &[], ""))
                .collect();
            match self.store.insert_batch(tenant, &customers, events).await {
                Ok(true) => {
                    self.outbox.notify_committed();
                    for (index, _, customer) in &bulk {
                        outcomes[*index] = Some(ImportOutcome::Created(customer.id));
                    }
                }
                // An identity collided: each row finds out alone which one.
                Ok(false) => {
                    one_by_one.extend(bulk.into_iter().map(|(index, draft, _)| (index, draft)));
                    one_by_one.sort_by_key(|(index, _)| *index);
                }
                Err(error) => {
                    for (index, _, _) in &bulk {
                        outcomes[*index] = Some(ImportOutcome::Failed(error.to_string()));
                    }
                }
            }
        }
        for (index, draft) in one_by_one {
            outcomes[index] = Some(match self.import_row(tenant, draft).await {
                Ok(outcome) => outcome,
                Err(error) => ImportOutcome::Failed(error.to_string()),
            });
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| ImportOutcome::Failed("row was not processed".into())))
            .collect()
    }

    async fn import_row(
        &self,
        tenant: &TenantId,
        draft: CustomerDraft,
    ) -> Result<ImportOutcome, ProfileError> {
        let Some(key) = draft.external_ids.first() else {
            return Err(ProfileError::invalid(
                "customer.external_ids",
                "an imported row needs an external id",
            ));
        };
        let identity = Identity {
            kind: IdentityKind::External,
            value: domain::external_identity_value(key),
        };
        match self.store.owner(tenant, &identity).await? {
            Some(owner) => {
                let customer = self.get_customer(tenant, owner).await?;
                let mask: Vec<String> = imported_fields(&draft);
                let updated = self
                    .update_customer(tenant, customer.id, draft, mask, None, None)
                    .await?;
                Ok(ImportOutcome::Updated(updated.id))
            }
            None => Ok(ImportOutcome::Created(
                self.create_customer(tenant, draft, None).await?.id,
            )),
        }
    }

    pub async fn update_settings(
        &self,
        tenant: &TenantId,
        settings: Settings,
        request: Option<RequestKey>,
    ) -> Result<Settings, ProfileError> {
        let mut settings = settings;
        settings.update_time = Some(domain::now());
        let changes = ChangeSet {
            settings: Some(settings.clone()),
            ..Default::default()
        };
        let reply = StoredReply::default();
        self.commit(tenant, changes, request.as_ref(), &reply, &[], &[])
            .await?;
        self.settings_cache.invalidate(tenant);
        self.store.settings(tenant).await
    }

    /// Deletes soft-deleted customers whose retention has passed.
    pub async fn purge_deleted(&self, now: DateTime<Utc>) -> Result<u64, ProfileError> {
        self.store.purge_deleted(now).await
    }
}

/// The fields an import row sets: the ones it has values for.
fn imported_fields(draft: &CustomerDraft) -> Vec<String> {
    let mut fields = vec!["external_ids".to_owned()];
    let mut add = |set: bool, field: &str| {
        if set {
            fields.push(field.to_owned());
        }
    };
    add(draft.kind.is_some(), "kind");
    add(!draft.display_name.is_empty(), "display_name");
    add(draft.person_name != domain::PersonName::default(), "person_name");
    add(!draft.organization_name.is_empty(), "organization_name");
    add(
        draft.classification != domain::Classification::default(),
        "classification",
    );
    add(draft.relationship_level.is_some(), "relationship_level");
    add(!draft.phones.is_empty(), "phones");
    add(!draft.emails.is_empty(), "emails");
    add(!draft.addresses.is_empty(), "addresses");
    add(!draft.attributes.is_empty(), "attributes");
    add(!draft.tags.is_empty(), "tags");
    add(!draft.acquisition_channel.is_empty(), "acquisition_channel");
    add(draft.referrer.is_some(), "referrer");
    fields
}

/// Scores two customers: names weigh 0.6, a shared email local part 0.2, a shared phone tail
/// 0.2.
pub fn score_pair(first: &Customer, second: &Customer) -> Duplicate {
    let name_similarity = strsim::jaro_winkler(
        &first.display_name.to_lowercase(),
        &second.display_name.to_lowercase(),
    );
    let locals = |customer: &Customer| -> BTreeSet<String> {
        customer
            .emails
            .iter()
            .filter_map(|email| email.value.split_once('@').map(|(local, _)| local.to_owned()))
            .collect()
    };
    let tails = |customer: &Customer| -> BTreeSet<String> {
        customer
            .phones
            .iter()
            .map(|phone| phone.value.chars().rev().take(7).collect())
            .collect()
    };
    let shared_email = !locals(first).is_disjoint(&locals(second));
    let shared_phone = !tails(first).is_disjoint(&tails(second));
    let mut reasons = Vec::new();
    if name_similarity >= 0.85 {
        reasons.push("name");
    }
    if shared_email {
        reasons.push("email");
    }
    if shared_phone {
        reasons.push("phone");
    }
    let score =
        0.6 * name_similarity + if shared_email { 0.2 } else { 0.0 } + if shared_phone { 0.2 } else { 0.0 };
    Duplicate {
        first: first.id,
        second: second.id,
        score: (score * 1000.0).round() / 1000.0,
        reasons,
    }
}

/// The cached snapshot of a customer, one field of its hash.
const SNAPSHOT_FIELD: &str = "snapshot";
/// The version of what the hash holds: [`snapshot_version`] or [`tombstone_version`].
const SNAPSHOT_VERSION_FIELD: &str = "version";

/// Invalidating revision `r` leaves version `2r`; a snapshot of revision `r` is version
/// `2r + 1`. So a snapshot of the committed state can fill the hash after its tombstone, and
/// a snapshot of any older state cannot.
fn tombstone_version(revision: i64) -> i64 {
    revision.saturating_mul(2)
}

fn snapshot_version(revision: i64) -> i64 {
    revision.saturating_mul(2).saturating_add(1)
}

/// How many merges deep a name is followed to its survivor (a survivor can be merged later).
const MAX_MERGE_CHAIN: usize = 8;

/// What a stored record means for a read of `asked`.
enum Resolved {
    Found(Box<Customer>),
    MergedInto(Uuid),
}

fn resolved(asked: Uuid, customer: Customer) -> Result<Resolved, ProfileError> {
    match (customer.state, customer.merged_into) {
        (RecordState::Merged, Some(survivor)) => Ok(Resolved::MergedInto(survivor)),
        (RecordState::Deleted, _) | (RecordState::Merged, None) => {
            Err(ProfileError::not_found(domain::customer_name(asked)))
        }
        _ => Ok(Resolved::Found(Box::new(customer))),
    }
}

fn merge_chain_too_long(asked: Uuid) -> ProfileError {
    ProfileError::Corrupt(format!(
        "merge chain of {} is too long",
        domain::customer_name(asked)
    ))
}
