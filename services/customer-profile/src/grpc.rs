//! The tonic service: unpacks requests (proto -> domain, validated by field), calls the use
//! cases, packs answers, maps errors.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crm_cache::Cache;
use crm_db::idempotency::RequestKey;
use crm_db::outbox::Outbox;
use crm_proto::customerprofile_v1 as pb;
use crm_proto::customerprofile_v1::customer_profile_service_server::{
    CustomerProfileService, CustomerProfileServiceServer,
};
use crm_proto::internal_v1 as internal;
use crm_proto::internal_v1::customer_event_feed_service_server::{
    CustomerEventFeedService, CustomerEventFeedServiceServer,
};
use crm_runtime::TenantId;
use futures::{Stream, StreamExt};
use prost::Message;
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::convert::{customer_to_proto, draft_from_proto, timestamp};
use crate::domain::{self, Identity, IdentityKind, Survivorship, parse_customer_name};
use crate::error::ProfileError;
use crate::query::{self, decode_page_token, encode_page_token, parse_list};
use crate::service::{ConsentView, CustomerProfile, ImportOutcome};
use crate::store::{ConsentDecision, ListOrder, SeaOrmCustomerStore, Settings, SortValue};

/// How often a subscriber that is caught up looks for events other processes committed.
const SUBSCRIBE_POLL: Duration = Duration::from_millis(200);
/// Import messages are batches; a batch is bounded so one message cannot hold the service.
const MAX_IMPORT_BATCH: usize = 1000;

pub struct CustomerProfileGrpc {
    service: Arc<CustomerProfile<SeaOrmCustomerStore>>,
    /// (region, number as typed) -> E.164, for lookups: parsing takes ~14 µs (criterion,
    /// `normalize_phone`), most of it hashing the phone metadata's regex patterns, and a call
    /// center looks the same callers up again and again. Only valid numbers are kept.
    parsed_phones: moka::sync::Cache<(String, String), String>,
}

impl CustomerProfileGrpc {
    /// The service over its own database and the shared cache. Starts the outbox sequencer and
    /// the purge of expired soft-deleted customers.
    /// Also returns the internal all-tenant feed of its events (see `crm.internal.v1`).
    pub fn server(
        db: DatabaseConnection,
        cache: Arc<dyn Cache>,
        cache_ttl: Duration,
    ) -> (
        CustomerProfileServiceServer<Self>,
        CustomerEventFeedServiceServer<CustomerEventFeedGrpc>,
    ) {
        let outbox = Outbox::new(db.clone());
        outbox.spawn_sequencer(SUBSCRIBE_POLL);
        let feed = CustomerEventFeedServiceServer::new(CustomerEventFeedGrpc {
            outbox: outbox.clone(),
        });
        let service = Arc::new(CustomerProfile::new(
            SeaOrmCustomerStore::new(db),
            cache,
            cache_ttl,
            outbox,
        ));
        let purger = Arc::clone(&service);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(600));
            loop {
                ticker.tick().await;
                match purger.purge_deleted(chrono::Utc::now()).await {
                    Ok(0) => {}
                    Ok(purged) => {
                        tracing::info!(purged, "purged soft-deleted customers past their retention")
                    }
                    Err(error) => tracing::warn!(%error, "purging soft-deleted customers failed"),
                }
            }
        });
        // Import responses carry one result per row (100k rows is several MB).
        let server = CustomerProfileServiceServer::new(Self {
            service,
            parsed_phones: moka::sync::Cache::new(100_000),
        })
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
        (server, feed)
    }
}

fn record_customer(id: &Uuid) {
    tracing::Span::current().record("customer", tracing::field::display(id));
}

/// The idempotency key of a request: `cleared` is the request with `request_id` emptied.
fn request_identity<M: Message>(
    method: &'static str,
    request_id: &str,
    cleared: &M,
) -> Result<Option<RequestKey>, ProfileError> {
    RequestKey::parse(method, request_id, &cleared.encode_to_vec())
        .map_err(|error| ProfileError::invalid("request_id", error.to_string()))
}

impl CustomerProfileGrpc {
    fn parsed_phone(&self, raw: String, region: &str) -> Result<String, ProfileError> {
        let key = (region.to_owned(), raw);
        if let Some(parsed) = self.parsed_phones.get(&key) {
            return Ok(parsed);
        }
        let parsed = domain::normalize_phone(&key.1, region, "phone")?;
        self.parsed_phones.insert(key, parsed.clone());
        Ok(parsed)
    }

    async fn show(
        &self,
        tenant: &TenantId,
        customer: &domain::Customer,
    ) -> Result<pb::Customer, ProfileError> {
        let settings = self.service.settings(tenant).await?;
        Ok(customer_to_proto(customer, &settings.home_country))
    }
}

fn status_name(status: i32, field: &str) -> Result<&'static str, ProfileError> {
    match pb::ConsentStatus::try_from(status) {
        Ok(pb::ConsentStatus::Granted) => Ok("GRANTED"),
        Ok(pb::ConsentStatus::Denied) => Ok("DENIED"),
        Ok(pb::ConsentStatus::Withdrawn) => Ok("WITHDRAWN"),
        Ok(pb::ConsentStatus::Unspecified) => Err(ProfileError::invalid(field, "must be set")),
        Err(_) => Err(ProfileError::invalid(
            field,
            format!("{status} is not a ConsentStatus"),
        )),
    }
}

fn status_value(name: &str) -> pb::ConsentStatus {
    match name {
        "GRANTED" => pb::ConsentStatus::Granted,
        "DENIED" => pb::ConsentStatus::Denied,
        "WITHDRAWN" => pb::ConsentStatus::Withdrawn,
        _ => pb::ConsentStatus::Unspecified,
    }
}

fn consent_to_proto(customer: Uuid, view: &ConsentView) -> pb::Consent {
    pb::Consent {
        name: format!("{}/consents/{}", domain::customer_name(customer), view.purpose),
        purpose: view.purpose.clone(),
        status: status_value(&view.current.status).into(),
        source: view.current.source.clone(),
        update_time: Some(timestamp(view.current.change_time)),
        history: view
            .history
            .iter()
            .map(|decision| pb::ConsentChange {
                status: status_value(&decision.status).into(),
                source: decision.source.clone(),
                change_time: Some(timestamp(decision.change_time)),
            })
            .collect(),
    }
}

fn settings_to_proto(settings: &Settings) -> pb::TenantSettings {
    pb::TenantSettings {
        name: "tenantSettings".into(),
        default_region: settings.default_region.clone(),
        home_country: settings.home_country.clone(),
        deleted_retention_days: settings.deleted_retention_days,
        update_time: settings.update_time.map(timestamp),
    }
}

fn policy_from_proto(value: i32, field: &str) -> Result<Survivorship, ProfileError> {
    match pb::SurvivorshipPolicy::try_from(value) {
        Ok(pb::SurvivorshipPolicy::Unspecified | pb::SurvivorshipPolicy::SurvivorFirst) => {
            Ok(Survivorship::SurvivorFirst)
        }
        Ok(pb::SurvivorshipPolicy::MostRecent) => Ok(Survivorship::MostRecent),
        Err(_) => Err(ProfileError::invalid(
            field,
            format!("{value} is not a SurvivorshipPolicy"),
        )),
    }
}

fn event_type_names(types: &[i32]) -> Result<Vec<String>, ProfileError> {
    types
        .iter()
        .enumerate()
        .map(
            |(index, value)| match pb::customer_event::Type::try_from(*value) {
                Ok(pb::customer_event::Type::Unspecified) | Err(_) => Err(ProfileError::invalid(
                    format!("types[{index}]"),
                    format!("{value} is not an event type"),
                )),
                Ok(kind) => Ok(kind.as_str_name().to_owned()),
            },
        )
        .collect()
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::CustomerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl CustomerProfileService for CustomerProfileGrpc {
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let customer = message
            .customer
            .as_ref()
            .ok_or_else(|| ProfileError::invalid("customer", "is required"))?;
        let settings = self.service.settings(&tenant).await?;
        let draft = draft_from_proto(customer, "customer", &settings.default_region)?;
        if draft.kind.is_none() {
            return Err(ProfileError::invalid("customer.kind", "must be set").into());
        }
        let identity = request_identity(
            "CreateCustomer",
            &message.request_id,
            &pb::CreateCustomerRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let created = self.service.create_customer(&tenant, draft, identity).await?;
        record_customer(&created.id);
        Ok(Response::new(self.show(&tenant, &created).await?))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let tenant = TenantId::of(&request)?;
        let id = parse_customer_name(&request.get_ref().name, "name")?;
        record_customer(&id);
        let customer = self.service.get_customer(&tenant, id).await?;
        Ok(Response::new(self.show(&tenant, &customer).await?))
    }

    async fn batch_get_customers(
        &self,
        request: Request<pb::BatchGetCustomersRequest>,
    ) -> Result<Response<pb::BatchGetCustomersResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let names = &request.get_ref().names;
        if names.is_empty() || names.len() > 1000 {
            return Err(ProfileError::invalid("names", "must hold 1 to 1000 names").into());
        }
        let ids = names
            .iter()
            .enumerate()
            .map(|(index, name)| parse_customer_name(name, &format!("names[{index}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let customers = self.service.batch_get(&tenant, &ids).await?;
        let settings = self.service.settings(&tenant).await?;
        Ok(Response::new(pb::BatchGetCustomersResponse {
            customers: customers
                .iter()
                .map(|customer| customer_to_proto(customer, &settings.home_country))
                .collect(),
        }))
    }

    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let customer = message
            .customer
            .as_ref()
            .ok_or_else(|| ProfileError::invalid("customer", "is required"))?;
        let id = parse_customer_name(&customer.name, "customer.name")?;
        record_customer(&id);
        let mask: Vec<String> = message
            .update_mask
            .as_ref()
            .map(|mask| mask.paths.clone())
            .unwrap_or_default();
        for (index, path) in mask.iter().enumerate() {
            if !domain::UPDATABLE_FIELDS.contains(&path.as_str()) {
                return Err(ProfileError::invalid(
                    format!("update_mask.paths[{index}]"),
                    format!("{path:?} is not an updatable field"),
                )
                .into());
            }
        }
        let settings = self.service.settings(&tenant).await?;
        let draft = draft_from_proto(customer, "customer", &settings.default_region)?;
        let etag = (!customer.etag.is_empty()).then(|| customer.etag.clone());
        let identity = request_identity(
            "UpdateCustomer",
            &message.request_id,
            &pb::UpdateCustomerRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let updated = self
            .service
            .update_customer(&tenant, id, draft, mask, etag, identity)
            .await?;
        Ok(Response::new(customer_to_proto(&updated, &settings.home_country)))
    }

    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let id = parse_customer_name(&message.name, "name")?;
        record_customer(&id);
        let etag = (!message.etag.is_empty()).then(|| message.etag.clone());
        let identity = request_identity(
            "DeleteCustomer",
            &message.request_id,
            &pb::DeleteCustomerRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let deleted = self.service.delete_customer(&tenant, id, etag, identity).await?;
        Ok(Response::new(self.show(&tenant, &deleted).await?))
    }

    async fn undelete_customer(
        &self,
        request: Request<pb::UndeleteCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let id = parse_customer_name(&message.name, "name")?;
        record_customer(&id);
        let identity = request_identity(
            "UndeleteCustomer",
            &message.request_id,
            &pb::UndeleteCustomerRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let restored = self.service.undelete_customer(&tenant, id, identity).await?;
        Ok(Response::new(self.show(&tenant, &restored).await?))
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let mut list = parse_list(&message.filter, &message.order_by)?;
        let size = query::page_size(message.page_size, "page_size")?;
        if !message.page_token.is_empty() {
            list.after = Some(decode_page_token(
                &message.page_token,
                &message.filter,
                &message.order_by,
            )?);
        }
        // One more than the page tells whether another page exists.
        list.limit = size + 1;
        let mut customers = self.service.list_customers(&tenant, &list).await?;
        let next_page_token = if customers.len() as u64 > size {
            customers.truncate(size as usize);
            customers.last().map(|last| {
                let value = match list.order {
                    ListOrder::CreateTime => SortValue::Time(last.create_time),
                    ListOrder::UpdateTime => SortValue::Time(last.update_time),
                    ListOrder::DisplayName => SortValue::Text(last.display_name.to_lowercase()),
                };
                encode_page_token(&message.filter, &message.order_by, &value, last.id)
            })
        } else {
            None
        };
        let settings = self.service.settings(&tenant).await?;
        Ok(Response::new(pb::ListCustomersResponse {
            customers: customers
                .iter()
                .map(|customer| customer_to_proto(customer, &settings.home_country))
                .collect(),
            next_page_token: next_page_token.unwrap_or_default(),
        }))
    }

    async fn search_customers(
        &self,
        request: Request<pb::SearchCustomersRequest>,
    ) -> Result<Response<pb::SearchCustomersResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let query_text = domain::bounded_text(&message.query, "query", 100, true)?;
        let limit = match message.page_size {
            0 => 20,
            size if (1..=100).contains(&size) => size as usize,
            _ => return Err(ProfileError::invalid("page_size", "must be 0 to 100").into()),
        };
        let hits = self.service.search(&tenant, &query_text, limit).await?;
        let settings = self.service.settings(&tenant).await?;
        Ok(Response::new(pb::SearchCustomersResponse {
            results: hits
                .iter()
                .map(|hit| pb::SearchResult {
                    customer: Some(customer_to_proto(&hit.customer, &settings.home_country)),
                    score: hit.score,
                    matched_field: hit.matched_field.to_owned(),
                })
                .collect(),
        }))
    }

    async fn lookup_customer(
        &self,
        request: Request<pb::LookupCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let settings = self.service.settings(&tenant).await?;
        let identity = match message.key {
            None => {
                return Err(
                    ProfileError::invalid("key", "one of phone, email or external_id is required").into(),
                );
            }
            Some(pb::lookup_customer_request::Key::Phone(phone)) => Identity {
                kind: IdentityKind::Phone,
                value: self.parsed_phone(phone, &settings.default_region)?,
            },
            Some(pb::lookup_customer_request::Key::Email(email)) => Identity {
                kind: IdentityKind::Email,
                value: domain::normalize_email(&email, "email")?,
            },
            Some(pb::lookup_customer_request::Key::ExternalId(external)) => Identity {
                kind: IdentityKind::External,
                value: domain::external_identity_value(&domain::normalize_external_id(
                    &external.system,
                    &external.id,
                    "external_id",
                )?),
            },
        };
        let customer = self.service.lookup(&tenant, identity).await?;
        record_customer(&customer.id);
        Ok(Response::new(customer_to_proto(
            &customer,
            &settings.home_country,
        )))
    }

    async fn find_duplicate_customers(
        &self,
        request: Request<pb::FindDuplicateCustomersRequest>,
    ) -> Result<Response<pb::FindDuplicateCustomersResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let min_score = match message.min_score {
            0.0 => 0.6,
            score if (0.0..=1.0).contains(&score) => score,
            _ => return Err(ProfileError::invalid("min_score", "must be between 0 and 1").into()),
        };
        let limit = match message.page_size {
            0 => 100,
            size if (1..=1000).contains(&size) => size as usize,
            _ => return Err(ProfileError::invalid("page_size", "must be 0 to 1000").into()),
        };
        let only = if message.customer.is_empty() {
            None
        } else {
            Some(parse_customer_name(&message.customer, "customer")?)
        };
        let candidates = self
            .service
            .find_duplicates(&tenant, min_score, limit, only)
            .await?;
        Ok(Response::new(pb::FindDuplicateCustomersResponse {
            candidates: candidates
                .into_iter()
                .map(|pair| pb::DuplicateCandidate {
                    first: domain::customer_name(pair.first),
                    second: domain::customer_name(pair.second),
                    score: pair.score,
                    reasons: pair.reasons.into_iter().map(str::to_owned).collect(),
                })
                .collect(),
        }))
    }

    async fn merge_customers(
        &self,
        request: Request<pb::MergeCustomersRequest>,
    ) -> Result<Response<pb::MergeCustomersResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let survivor = parse_customer_name(&message.survivor, "survivor")?;
        if message.merged.is_empty() || message.merged.len() > 10 {
            return Err(ProfileError::invalid("merged", "must name 1 to 10 customers").into());
        }
        let mut merged = Vec::new();
        for (index, name) in message.merged.iter().enumerate() {
            let id = parse_customer_name(name, &format!("merged[{index}]"))?;
            if id == survivor || merged.contains(&id) {
                return Err(ProfileError::invalid(
                    format!("merged[{index}]"),
                    "must be distinct and not the survivor",
                )
                .into());
            }
            merged.push(id);
        }
        let default_policy = policy_from_proto(message.policy, "policy")?;
        let mut overrides = HashMap::new();
        for (field, value) in &message.field_policies {
            if !domain::UPDATABLE_FIELDS.contains(&field.as_str()) {
                return Err(ProfileError::invalid(
                    format!("field_policies[{field:?}]"),
                    "is not a customer field",
                )
                .into());
            }
            overrides.insert(
                field.clone(),
                policy_from_proto(*value, &format!("field_policies[{field:?}]"))?,
            );
        }
        let identity = request_identity(
            "MergeCustomers",
            &message.request_id,
            &pb::MergeCustomersRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        record_customer(&survivor);
        let outcome = self
            .service
            .merge(
                &tenant,
                survivor,
                &merged,
                |field| overrides.get(field).copied().unwrap_or(default_policy),
                message.validate_only,
                identity,
            )
            .await?;
        Ok(Response::new(pb::MergeCustomersResponse {
            survivor: Some(self.show(&tenant, &outcome.survivor).await?),
            merged: outcome.merged.into_iter().map(domain::customer_name).collect(),
        }))
    }

    async fn unmerge_customer(
        &self,
        request: Request<pb::UnmergeCustomerRequest>,
    ) -> Result<Response<pb::UnmergeCustomerResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let id = parse_customer_name(&message.name, "name")?;
        record_customer(&id);
        let identity = request_identity(
            "UnmergeCustomer",
            &message.request_id,
            &pb::UnmergeCustomerRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let (restored, survivor) = self.service.unmerge(&tenant, id, identity).await?;
        Ok(Response::new(pb::UnmergeCustomerResponse {
            restored: Some(self.show(&tenant, &restored).await?),
            survivor: Some(self.show(&tenant, &survivor).await?),
        }))
    }

    async fn erase_customer(
        &self,
        request: Request<pb::EraseCustomerRequest>,
    ) -> Result<Response<pb::EraseCustomerResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let id = parse_customer_name(&message.name, "name")?;
        record_customer(&id);
        let identity = request_identity(
            "EraseCustomer",
            &message.request_id,
            &pb::EraseCustomerRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let (tombstone, pseudonym) = self.service.erase(&tenant, id, identity).await?;
        Ok(Response::new(pb::EraseCustomerResponse {
            customer: Some(self.show(&tenant, &tombstone).await?),
            pseudonym,
        }))
    }

    async fn set_consent(
        &self,
        request: Request<pb::SetConsentRequest>,
    ) -> Result<Response<pb::Consent>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let customer = parse_customer_name(&message.parent, "parent")?;
        record_customer(&customer);
        let consent = message
            .consent
            .as_ref()
            .ok_or_else(|| ProfileError::invalid("consent", "is required"))?;
        domain::validate_purpose(&consent.purpose, "consent.purpose")?;
        let decision = ConsentDecision {
            purpose: consent.purpose.clone(),
            status: status_name(consent.status, "consent.status")?.to_owned(),
            source: domain::bounded_text(&consent.source, "consent.source", 64, false)?,
            change_time: domain::now(),
        };
        let identity = request_identity(
            "SetConsent",
            &message.request_id,
            &pb::SetConsentRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let view = self
            .service
            .set_consent(&tenant, customer, decision, identity)
            .await?;
        Ok(Response::new(consent_to_proto(customer, &view)))
    }

    async fn list_consents(
        &self,
        request: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let customer = parse_customer_name(&message.parent, "parent")?;
        record_customer(&customer);
        let size = query::page_size(message.page_size, "page_size")? as usize;
        let views = self.service.list_consents(&tenant, customer).await?;
        // Purposes are few per customer; the token is the last purpose of the previous page.
        let start = if message.page_token.is_empty() {
            0
        } else {
            views
                .iter()
                .position(|view| view.purpose > message.page_token)
                .unwrap_or(views.len())
        };
        let page: Vec<&ConsentView> = views[start..].iter().take(size).collect();
        let next_page_token = if start + page.len() < views.len() {
            page.last().map(|view| view.purpose.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListConsentsResponse {
            consents: page
                .into_iter()
                .map(|view| consent_to_proto(customer, view))
                .collect(),
            next_page_token,
        }))
    }

    async fn import_customers(
        &self,
        request: Request<Streaming<pb::ImportCustomersRequest>>,
    ) -> Result<Response<pb::ImportCustomersResponse>, Status> {
        let tenant = TenantId::of(&request)?;
        let mut stream = request.into_inner();
        let settings = self.service.settings(&tenant).await?;
        let mut response = pb::ImportCustomersResponse::default();
        let mut row: i64 = 0;
        while let Some(message) = stream.message().await? {
            if message.customers.len() > MAX_IMPORT_BATCH {
                return Err(ProfileError::invalid(
                    "customers",
                    format!("a batch holds at most {MAX_IMPORT_BATCH} rows"),
                )
                .into());
            }
            let drafts = message
                .customers
                .iter()
                .map(|customer| {
                    let draft = draft_from_proto(customer, "customer", &settings.default_region)?;
                    if draft.kind.is_none() {
                        return Err(ProfileError::invalid("customer.kind", "must be set"));
                    }
                    Ok(draft)
                })
                .collect();
            for outcome in self.service.import_batch(&tenant, drafts).await {
                let (name, label, error) = match outcome {
                    ImportOutcome::Created(id) => {
                        response.created_count += 1;
                        (domain::customer_name(id), "CREATED", String::new())
                    }
                    ImportOutcome::Updated(id) => {
                        response.updated_count += 1;
                        (domain::customer_name(id), "UPDATED", String::new())
                    }
                    ImportOutcome::Failed(error) => {
                        response.failed_count += 1;
                        (String::new(), "FAILED", error)
                    }
                };
                response.results.push(pb::ImportRowResult {
                    row,
                    name,
                    outcome: label.to_owned(),
                    error,
                });
                row += 1;
            }
        }
        Ok(Response::new(response))
    }

    type SubscribeCustomerEventsStream = EventStream;

    async fn subscribe_customer_events(
        &self,
        request: Request<pb::SubscribeCustomerEventsRequest>,
    ) -> Result<Response<Self::SubscribeCustomerEventsStream>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let after = crm_db::outbox::parse_cursor(&message.cursor)
            .ok_or_else(|| ProfileError::invalid("cursor", "is not a cursor of this stream"))?;
        let types = event_type_names(&message.types)?;
        let events = self
            .service
            .outbox()
            .subscribe(Some(tenant.as_str().to_owned()), after, types, SUBSCRIBE_POLL)
            .take_until(crm_runtime::server::draining());
        let stream = events.map(|stored| {
            let stored = stored.map_err(|error| Status::from(crm_db::api_error(error)))?;
            let mut event = pb::CustomerEvent::decode(stored.payload.as_slice()).map_err(|error| {
                Status::from(crm_error::ApiError::internal(format!(
                    "undecodable event: {error}"
                )))
            })?;
            event.cursor = stored.position.to_string();
            event.event_time = Some(timestamp(stored.create_time));
            Ok(event)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_tenant_settings(
        &self,
        request: Request<pb::GetTenantSettingsRequest>,
    ) -> Result<Response<pb::TenantSettings>, Status> {
        let tenant = TenantId::of(&request)?;
        if request.get_ref().name != "tenantSettings" {
            return Err(ProfileError::invalid("name", "must be tenantSettings").into());
        }
        Ok(Response::new(settings_to_proto(
            &self.service.settings(&tenant).await?,
        )))
    }

    async fn update_tenant_settings(
        &self,
        request: Request<pb::UpdateTenantSettingsRequest>,
    ) -> Result<Response<pb::TenantSettings>, Status> {
        let tenant = TenantId::of(&request)?;
        let message = request.into_inner();
        let wanted = message
            .settings
            .as_ref()
            .ok_or_else(|| ProfileError::invalid("settings", "is required"))?;
        let mask: Vec<String> = message
            .update_mask
            .as_ref()
            .map(|mask| mask.paths.clone())
            .unwrap_or_default();
        let wants = |field: &str| mask.is_empty() || mask.iter().any(|path| path == field);
        for (index, path) in mask.iter().enumerate() {
            if !["default_region", "home_country", "deleted_retention_days"].contains(&path.as_str()) {
                return Err(ProfileError::invalid(
                    format!("update_mask.paths[{index}]"),
                    format!("{path:?} is not a settings field"),
                )
                .into());
            }
        }
        let mut settings = self.service.settings(&tenant).await?;
        if wants("default_region") {
            settings.default_region =
                domain::normalize_country(&wanted.default_region, "settings.default_region")?;
        }
        if wants("home_country") {
            settings.home_country = domain::normalize_country(&wanted.home_country, "settings.home_country")?;
        }
        if wants("deleted_retention_days") {
            settings.deleted_retention_days = match wanted.deleted_retention_days {
                0 => 30,
                days if (1..=3650).contains(&days) => days,
                _ => {
                    return Err(ProfileError::invalid(
                        "settings.deleted_retention_days",
                        "must be 1 to 3650",
                    )
                    .into());
                }
            };
        }
        let identity = request_identity(
            "UpdateTenantSettings",
            &message.request_id,
            &pb::UpdateTenantSettingsRequest {
                request_id: String::new(),
                ..message.clone()
            },
        )?;
        let saved = self.service.update_settings(&tenant, settings, identity).await?;
        Ok(Response::new(settings_to_proto(&saved)))
    }
}

/// The internal all-tenant feed of this service's events, for the suite's own consumers.
pub struct CustomerEventFeedGrpc {
    outbox: Outbox,
}

#[tonic::async_trait]
impl CustomerEventFeedService for CustomerEventFeedGrpc {
    type StreamCustomerEventsStream =
        Pin<Box<dyn Stream<Item = Result<internal::StreamCustomerEventsResponse, Status>> + Send + 'static>>;

    async fn stream_customer_events(
        &self,
        request: Request<internal::StreamCustomerEventsRequest>,
    ) -> Result<Response<Self::StreamCustomerEventsStream>, Status> {
        let request = request.into_inner();
        let events = crm_runtime::internal::feed_stream(
            &self.outbox,
            &request.cursor,
            request.event_types,
            SUBSCRIBE_POLL,
        )?;
        Ok(Response::new(Box::pin(events.map(|event| {
            event.map(|event| internal::StreamCustomerEventsResponse { event: Some(event) })
        }))))
    }
}
