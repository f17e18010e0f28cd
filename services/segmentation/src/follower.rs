//! Follows the internal all-tenant feeds of interaction (purchases, refunds) and
//! customer-profile (created, merged, unmerged, erased), applying each batch of events with the
//! feed's cursor in one transaction ([`Segmentation::apply`]), so every event counts exactly once
//! across crashes, restarts and replicas.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crm_proto::customerprofile_v1 as profile;
use crm_proto::customerprofile_v1::customer_profile_service_client::CustomerProfileServiceClient;
use crm_proto::interaction_v1 as interaction;
use crm_proto::internal_v1 as internal;
use crm_proto::internal_v1::customer_event_feed_service_client::CustomerEventFeedServiceClient;
use crm_proto::internal_v1::interaction_event_feed_service_client::InteractionEventFeedServiceClient;
use crm_runtime::internal::InternalToken;
use futures::StreamExt;
use prost::Message;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::domain::scores;
use crate::error::SegmentationError;
use crate::membership;
use crate::service::{Change, FeedChange, Segmentation};

/// How long a broken feed waits before it reconnects.
const RECONNECT: Duration = Duration::from_secs(1);
/// Events applied per transaction at most: what has arrived, up to this many.
const BATCH: usize = 256;

pub const INTERACTION_SOURCE: &str = "interaction";
pub const CUSTOMER_PROFILE_SOURCE: &str = "customer-profile";

/// Where the feeds are and the token to read them.
#[derive(Clone)]
pub struct Feeds {
    pub customer_profile: Channel,
    pub interaction: Channel,
    pub token: InternalToken,
}

/// Starts following both feeds.
pub fn spawn(service: Arc<Segmentation>, feeds: Feeds) {
    let profile_service = Arc::clone(&service);
    let profile_feeds = feeds.clone();
    tokio::spawn(async move {
        loop {
            if let Err(error) = follow_customer_events(&profile_service, &profile_feeds).await {
                tracing::warn!(%error, "following customer-profile's feed failed; resuming");
            }
            tokio::time::sleep(RECONNECT).await;
        }
    });
    tokio::spawn(async move {
        loop {
            if let Err(error) = follow_interaction_events(&service, &feeds).await {
                tracing::warn!(%error, "following interaction's feed failed; resuming");
            }
            tokio::time::sleep(RECONNECT).await;
        }
    });
}

fn peer(service: &'static str) -> impl Fn(tonic::Status) -> SegmentationError {
    move |status| SegmentationError::Peer { service, status }
}

async fn follow_interaction_events(service: &Segmentation, feeds: &Feeds) -> Result<(), SegmentationError> {
    let cursor = service.store().feed_cursor(INTERACTION_SOURCE).await?;
    let mut client =
        InteractionEventFeedServiceClient::with_interceptor(feeds.interaction.clone(), feeds.token.present());
    let events = client
        .stream_interaction_events(internal::StreamInteractionEventsRequest {
            cursor: cursor_text(cursor),
            event_types: vec![
                interaction::interaction_event::Type::PurchaseRecorded
                    .as_str_name()
                    .into(),
                interaction::interaction_event::Type::RefundRecorded
                    .as_str_name()
                    .into(),
                interaction::interaction_event::Type::FeedbackRecorded
                    .as_str_name()
                    .into(),
            ],
        })
        .await
        .map_err(peer("interaction"))?
        .into_inner()
        .map(|item| item.map(|response| response.event));
    consume(
        service,
        INTERACTION_SOURCE,
        events,
        interaction_change,
        None,
        "interaction",
    )
    .await
}

async fn follow_customer_events(service: &Segmentation, feeds: &Feeds) -> Result<(), SegmentationError> {
    let cursor = service.store().feed_cursor(CUSTOMER_PROFILE_SOURCE).await?;
    let mut client = CustomerEventFeedServiceClient::with_interceptor(
        feeds.customer_profile.clone(),
        feeds.token.present(),
    );
    let events = client
        .stream_customer_events(internal::StreamCustomerEventsRequest {
            cursor: cursor_text(cursor),
            event_types: [
                profile::customer_event::Type::Created,
                profile::customer_event::Type::Updated,
                profile::customer_event::Type::Merged,
                profile::customer_event::Type::Unmerged,
                profile::customer_event::Type::Erased,
                profile::customer_event::Type::Deleted,
                profile::customer_event::Type::Undeleted,
            ]
            .iter()
            .map(|kind| kind.as_str_name().to_owned())
            .collect(),
        })
        .await
        .map_err(peer("customer-profile"))?
        .into_inner()
        .map(|item| item.map(|response| response.event));
    let profiles = CustomerProfileServiceClient::new(feeds.customer_profile.clone());
    consume(
        service,
        CUSTOMER_PROFILE_SOURCE,
        events,
        customer_change,
        Some(profiles),
        "customer-profile",
    )
    .await
}

fn cursor_text(cursor: i64) -> String {
    if cursor == 0 {
        String::new()
    } else {
        cursor.to_string()
    }
}

/// What one feed event means here.
#[derive(Debug, Default)]
struct Decoded {
    change: Option<Change>,
    /// Customers whose profile facts (tags, attributes, kind, level, state) to fetch and store
    /// after the change.
    facts_of: Vec<Uuid>,
}

/// Applies the stream in batches of what has arrived, until it breaks. With `profiles`, the
/// facts events ask for are fetched from customer-profile first and applied with them.
async fn consume(
    service: &Segmentation,
    source: &'static str,
    events: impl futures::Stream<Item = Result<Option<internal::FeedEvent>, tonic::Status>> + Unpin,
    decode: fn(&internal::FeedEvent) -> Result<Decoded, SegmentationError>,
    mut profiles: Option<CustomerProfileServiceClient<Channel>>,
    peer_name: &'static str,
) -> Result<(), SegmentationError> {
    let mut batches = events.ready_chunks(BATCH);
    while let Some(batch) = batches.next().await {
        let mut changes = Vec::with_capacity(batch.len());
        let mut broken = None;
        // (index in `changes` to insert after, tenant, customer), fetched once per batch.
        let mut wanted_facts: Vec<(usize, i64, String, Uuid)> = Vec::new();
        for item in batch {
            match item {
                Ok(Some(event)) => {
                    let position: i64 = event
                        .cursor
                        .parse()
                        .map_err(|_| SegmentationError::corrupt(format!("feed cursor {:?}", event.cursor)))?;
                    let decoded = decode(&event)?;
                    if let Some(change) = decoded.change {
                        changes.push(FeedChange {
                            position,
                            tenant: event.tenant.clone(),
                            change,
                        });
                    }
                    for customer in decoded.facts_of {
                        wanted_facts.push((changes.len(), position, event.tenant.clone(), customer));
                    }
                    // An event of no interest (the feed is filtered, so only a type added
                    // later) is skipped; the cursor moves past it with the next one applied.
                }
                Ok(None) => return Err(SegmentationError::corrupt("a feed response without an event")),
                Err(status) => {
                    broken = Some(status);
                    break;
                }
            }
        }
        if let Some(client) = profiles.as_mut()
            && !wanted_facts.is_empty()
        {
            let fetched = fetch_facts(client, &wanted_facts).await?;
            // Inserted back to front so the earlier indexes stay valid.
            for (index, position, tenant, customer) in wanted_facts.into_iter().rev() {
                let facts = fetched.get(&(tenant.clone(), customer)).cloned().flatten();
                changes.insert(
                    index,
                    FeedChange {
                        position,
                        tenant,
                        change: Change::Facts { customer, facts },
                    },
                );
            }
        }
        let applied = service.apply(source, &changes).await?;
        if applied > 0 {
            tracing::debug!(source, applied, "feed events applied");
        }
        if let Some(status) = broken {
            return Err(peer(peer_name)(status));
        }
    }
    Ok(())
}

fn customer_of(name: &str) -> Result<Uuid, SegmentationError> {
    name.strip_prefix("customers/")
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| SegmentationError::corrupt(format!("an event names customer {name:?}")))
}

fn day_of(timestamp: Option<&prost_types::Timestamp>, fallback: Option<&prost_types::Timestamp>) -> i64 {
    let seconds = timestamp.or(fallback).map_or(0, |time| time.seconds);
    scores::epoch_day(seconds)
}

/// The current profile facts of each (tenant, customer): a deleted customer's when
/// customer-profile answers NOT_FOUND (soft-deleted or purged), None when it has merged the
/// customer into another. One BatchGetCustomers per tenant and 1000
/// customers; a batch failing for a missing customer is read again one by one.
async fn fetch_facts(
    client: &mut CustomerProfileServiceClient<Channel>,
    wanted: &[(usize, i64, String, Uuid)],
) -> Result<HashMap<(String, Uuid), Option<Vec<u8>>>, SegmentationError> {
    let mut by_tenant: BTreeMap<&str, BTreeSet<Uuid>> = BTreeMap::new();
    for (_, _, tenant, customer) in wanted {
        by_tenant.entry(tenant.as_str()).or_default().insert(*customer);
    }
    let mut fetched = HashMap::new();
    for (tenant, customers) in by_tenant {
        let customers: Vec<Uuid> = customers.into_iter().collect();
        for chunk in customers.chunks(1000) {
            let names: Vec<String> = chunk.iter().map(|id| format!("customers/{id}")).collect();
            let batch = client
                .batch_get_customers(with_tenant(
                    tenant,
                    profile::BatchGetCustomersRequest { names: names.clone() },
                )?)
                .await;
            match batch {
                Ok(response) => {
                    let found = response.into_inner().customers;
                    for (id, name) in chunk.iter().zip(&names) {
                        let facts = found
                            .iter()
                            .find(|customer| customer.name == *name)
                            .map(|customer| membership::facts_of(customer).encode_to_vec());
                        fetched.insert((tenant.to_owned(), *id), facts);
                    }
                }
                Err(status) if status.code() == tonic::Code::NotFound => {
                    for (id, name) in chunk.iter().zip(&names) {
                        let facts = match client
                            .get_customer(with_tenant(
                                tenant,
                                profile::GetCustomerRequest { name: name.clone() },
                            )?)
                            .await
                        {
                            Ok(response) => {
                                let customer = response.into_inner();
                                (customer.name == *name)
                                    .then(|| membership::facts_of(&customer).encode_to_vec())
                            }
                            // Soft-deleted (or purged): GetCustomer answers NOT_FOUND. Kept as
                            // a deleted customer, who is in no segment, until UNDELETED.
                            Err(status) if status.code() == tonic::Code::NotFound => {
                                Some(membership::deleted_facts().encode_to_vec())
                            }
                            Err(status) => return Err(peer("customer-profile")(status)),
                        };
                        fetched.insert((tenant.to_owned(), *id), facts);
                    }
                }
                Err(status) => return Err(peer("customer-profile")(status)),
            }
        }
    }
    Ok(fetched)
}

/// A request to a tenant's public API.
fn with_tenant<T>(tenant: &str, message: T) -> Result<tonic::Request<T>, SegmentationError> {
    let mut request = tonic::Request::new(message);
    let value = tenant
        .parse()
        .map_err(|_| SegmentationError::corrupt(format!("a feed event names tenant {tenant:?}")))?;
    request
        .metadata_mut()
        .insert(crm_runtime::tenant::TENANT_METADATA_KEY, value);
    Ok(request)
}

/// What an interaction event changes.
fn interaction_change(event: &internal::FeedEvent) -> Result<Decoded, SegmentationError> {
    use interaction::interaction_event::Record;
    let decoded = interaction::InteractionEvent::decode(event.payload.as_slice())
        .map_err(SegmentationError::corrupt)?;
    let origin_name = if decoded.origin_customer.is_empty() {
        &decoded.customer
    } else {
        &decoded.origin_customer
    };
    let origin = customer_of(origin_name)?;
    let money = |money: Option<&crm_proto::google::r#type::Money>| {
        money.and_then(|money| {
            crm_proto::money::to_minor_units(money).map(|minor| (money.currency_code.clone(), minor))
        })
    };
    let change = match decoded.record {
        Some(Record::Purchase(purchase)) => {
            let Some((currency, amount)) = money(purchase.amount.as_ref()) else {
                return Err(SegmentationError::corrupt(
                    "a purchase event without a readable amount",
                ));
            };
            let margin = money(purchase.margin.as_ref())
                .filter(|(margin_currency, _)| *margin_currency == currency)
                .map_or(0, |(_, margin)| margin);
            Some(Change::Money {
                origin,
                day: day_of(purchase.occur_time.as_ref(), purchase.create_time.as_ref()),
                purchases: 1,
                currency,
                net_minor: amount,
                margin_minor: margin,
            })
        }
        Some(Record::Refund(refund)) => {
            let Some((currency, amount)) = money(refund.amount.as_ref()) else {
                return Err(SegmentationError::corrupt(
                    "a refund event without a readable amount",
                ));
            };
            Some(Change::Money {
                origin,
                day: day_of(refund.occur_time.as_ref(), refund.create_time.as_ref()),
                purchases: 0,
                currency,
                net_minor: amount.saturating_neg(),
                margin_minor: 0,
            })
        }
        Some(Record::Feedback(feedback)) => {
            let survey = feedback.delivered_value.map(|survey| {
                let value = [
                    survey.product_value,
                    survey.service_value,
                    survey.personnel_value,
                    survey.image_value,
                ];
                let cost = [
                    survey.monetary_cost,
                    survey.time_cost,
                    survey.energy_cost,
                    survey.physical_cost,
                ];
                let total = |answers: [i32; 4]| answers.iter().map(|answer| i64::from(*answer)).sum::<i64>();
                (total(value), total(cost))
            });
            (feedback.csat.is_some() || survey.is_some()).then_some(Change::Feedback {
                origin,
                csat: feedback.csat,
                survey,
            })
        }
        _ => None,
    };
    Ok(Decoded {
        change,
        facts_of: Vec::new(),
    })
}

/// What a customer-profile event changes, and whose profile facts to read again.
fn customer_change(event: &internal::FeedEvent) -> Result<Decoded, SegmentationError> {
    use profile::customer_event::Type;
    let decoded =
        profile::CustomerEvent::decode(event.payload.as_slice()).map_err(SegmentationError::corrupt)?;
    let others = || {
        decoded
            .merged
            .iter()
            .map(|name| customer_of(name))
            .collect::<Result<Vec<_>, _>>()
    };
    let customer = customer_of(&decoded.customer)?;
    Ok(match Type::try_from(decoded.r#type) {
        Ok(Type::Created) => Decoded {
            change: Some(Change::Created { customer }),
            facts_of: vec![customer],
        },
        Ok(Type::Updated | Type::Deleted | Type::Undeleted) => Decoded {
            change: None,
            facts_of: vec![customer],
        },
        // Identities, tags and attributes move to the survivor.
        Ok(Type::Merged) => Decoded {
            change: Some(Change::Merged {
                survivor: customer,
                merged: others()?,
            }),
            facts_of: vec![customer],
        },
        // Each side gets its own back.
        Ok(Type::Unmerged) => {
            let restored = others()?;
            let mut facts_of = vec![customer];
            facts_of.extend(restored.iter().copied());
            Decoded {
                change: Some(Change::Unmerged {
                    survivor: customer,
                    restored,
                }),
                facts_of,
            }
        }
        Ok(Type::Erased) => Decoded {
            change: Some(Change::Erased { customer }),
            facts_of: Vec::new(),
        },
        _ => Decoded::default(),
    })
}
