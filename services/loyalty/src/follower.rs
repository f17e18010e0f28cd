//! Follows the internal all-tenant feeds of interaction (purchases earn, refunds reverse) and
//! customer-profile (merges, unmerges), applying each batch of events with the feed's cursor
//! in one transaction ([`Loyalty::apply_feed`]), so every event counts exactly once across
//! crashes, restarts and replicas.
//!
//! Before a batch of purchases is applied, what its rules need from other services is read:
//! a customer's referrer and birthday from customer-profile, campaign segments' membership from
//! segmentation. Only when a rule needs it: most batches read nothing.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use crm_proto::customerprofile_v1 as profile;
use crm_proto::customerprofile_v1::customer_profile_service_client::CustomerProfileServiceClient;
use crm_proto::interaction_v1 as interaction;
use crm_proto::internal_v1 as internal;
use crm_proto::internal_v1::customer_event_feed_service_client::CustomerEventFeedServiceClient;
use crm_proto::internal_v1::interaction_event_feed_service_client::InteractionEventFeedServiceClient;
use crm_proto::segmentation_v1 as segmentation;
use crm_proto::segmentation_v1::segmentation_service_client::SegmentationServiceClient;
use crm_runtime::internal::InternalToken;
use futures::StreamExt;
use prost::Message;
use tonic::transport::Channel;

use crate::domain::{Birthday, CustomerId};
use crate::error::LoyaltyError;
use crate::service::{FeedChange, FeedItem, Loyalty, ProfileFacts, PurchaseFacts, RefundFacts};

/// How long a broken feed waits before it reconnects.
const RECONNECT: Duration = Duration::from_secs(1);
/// Events applied per transaction at most: what has arrived, up to this many.
const BATCH: usize = 512;
/// Customers per BatchGetCustomers.
const PROFILE_BATCH: usize = 1000;

pub const INTERACTION_SOURCE: &str = "interaction";
pub const CUSTOMER_PROFILE_SOURCE: &str = "customer-profile";

/// The custom attribute holding a customer's birthday for birthday campaigns: a time (its UTC
/// date counts) or text `YYYY-MM-DD` or `MM-DD`.
pub const BIRTHDAY_ATTRIBUTE: &str = "birthday";

/// Where the feeds and the services the rules read are, and the token to read the feeds.
#[derive(Clone)]
pub struct Feeds {
    pub customer_profile: Channel,
    pub interaction: Channel,
    pub segmentation: Channel,
    pub token: InternalToken,
}

/// Starts following both feeds.
pub fn spawn(service: Loyalty, feeds: Feeds) {
    let profile_service = service.clone();
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

/// Why following stopped; the loop logs it and resumes from the stored cursor.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("a feed event cannot be read: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Service(#[from] LoyaltyError),
}

fn peer(service: &'static str) -> impl Fn(tonic::Status) -> FollowError {
    move |status| FollowError::Service(LoyaltyError::Peer { service, status })
}

/// `purchase` with the profile facts and segment memberships its rules need, read as for a
/// recorded purchase: what QuotePoints prices with.
pub(crate) async fn purchase_facts(
    service: &Loyalty,
    feeds: &Feeds,
    tenant: &str,
    purchase: PurchaseFacts,
) -> Result<PurchaseFacts, LoyaltyError> {
    let mut items = [FeedItem {
        position: 0,
        tenant: tenant.to_owned(),
        change: FeedChange::Purchase(purchase),
    }];
    let mut profiles = CustomerProfileServiceClient::new(feeds.customer_profile.clone());
    let mut segments = SegmentationServiceClient::new(feeds.segmentation.clone());
    enrich(service, &mut items, &mut profiles, &mut segments)
        .await
        .map_err(|error| match error {
            FollowError::Service(error) => error,
            FollowError::Corrupt(message) => LoyaltyError::invalid("account", message),
        })?;
    let [item] = items;
    match item.change {
        FeedChange::Purchase(purchase) => Ok(purchase),
        _ => Err(LoyaltyError::Store(crate::store::StoreError::corrupt(
            "a quote lost its purchase",
        ))),
    }
}

fn cursor_text(cursor: i64) -> String {
    if cursor == 0 {
        String::new()
    } else {
        cursor.to_string()
    }
}

async fn follow_interaction_events(service: &Loyalty, feeds: &Feeds) -> Result<(), FollowError> {
    let cursor = service
        .store()
        .feed_cursor(INTERACTION_SOURCE)
        .await
        .map_err(LoyaltyError::from)?;
    let mut client =
        InteractionEventFeedServiceClient::with_interceptor(feeds.interaction.clone(), feeds.token.present());
    let events = client
        .stream_interaction_events(internal::StreamInteractionEventsRequest {
            cursor: cursor_text(cursor),
            event_types: [
                interaction::interaction_event::Type::PurchaseRecorded,
                interaction::interaction_event::Type::RefundRecorded,
            ]
            .iter()
            .map(|kind| kind.as_str_name().to_owned())
            .collect(),
        })
        .await
        .map_err(peer("interaction"))?
        .into_inner();
    let mut profiles = CustomerProfileServiceClient::new(feeds.customer_profile.clone());
    let mut segments = SegmentationServiceClient::new(feeds.segmentation.clone());
    let mut batches = events.ready_chunks(BATCH);
    while let Some(batch) = batches.next().await {
        let (mut items, broken) = decode_batch(batch, interaction_change)?;
        if !items.is_empty() {
            enrich(service, &mut items, &mut profiles, &mut segments).await?;
            let report = service.apply_feed(INTERACTION_SOURCE, &items).await?;
            tracing::debug!(?report, "interaction events applied");
        }
        if let Some(status) = broken {
            return Err(peer("interaction")(status));
        }
    }
    Ok(())
}

async fn follow_customer_events(service: &Loyalty, feeds: &Feeds) -> Result<(), FollowError> {
    let cursor = service
        .store()
        .feed_cursor(CUSTOMER_PROFILE_SOURCE)
        .await
        .map_err(LoyaltyError::from)?;
    let mut client = CustomerEventFeedServiceClient::with_interceptor(
        feeds.customer_profile.clone(),
        feeds.token.present(),
    );
    let events = client
        .stream_customer_events(internal::StreamCustomerEventsRequest {
            cursor: cursor_text(cursor),
            event_types: [
                profile::customer_event::Type::Merged,
                profile::customer_event::Type::Unmerged,
                profile::customer_event::Type::Erased,
            ]
            .iter()
            .map(|kind| kind.as_str_name().to_owned())
            .collect(),
        })
        .await
        .map_err(peer("customer-profile"))?
        .into_inner();
    let mut batches = events.ready_chunks(BATCH);
    while let Some(batch) = batches.next().await {
        let (items, broken) = decode_batch(batch, customer_change)?;
        if !items.is_empty() {
            let report = service.apply_feed(CUSTOMER_PROFILE_SOURCE, &items).await?;
            tracing::debug!(?report, "customer events applied");
        }
        if let Some(status) = broken {
            return Err(peer("customer-profile")(status));
        }
    }
    Ok(())
}

/// Decodes what arrived, up to a broken stream's error (returned to end the batch after the
/// events before it are applied).
fn decode_batch<R>(
    batch: Vec<Result<R, tonic::Status>>,
    decode: fn(&internal::FeedEvent) -> Result<FeedChange, FollowError>,
) -> Result<(Vec<FeedItem>, Option<tonic::Status>), FollowError>
where
    R: FeedResponse,
{
    let mut items = Vec::with_capacity(batch.len());
    for response in batch {
        let event = match response {
            Ok(response) => response.into_event(),
            Err(status) => return Ok((items, Some(status))),
        };
        let Some(event) = event else {
            return Err(FollowError::Corrupt("a feed response without an event".into()));
        };
        let position: i64 = event
            .cursor
            .parse()
            .map_err(|_| FollowError::Corrupt(format!("feed cursor {:?}", event.cursor)))?;
        items.push(FeedItem {
            position,
            tenant: event.tenant.clone(),
            change: decode(&event)?,
        });
    }
    Ok((items, None))
}

/// The two feeds' responses, each wrapping one event.
trait FeedResponse {
    fn into_event(self) -> Option<internal::FeedEvent>;
}

impl FeedResponse for internal::StreamInteractionEventsResponse {
    fn into_event(self) -> Option<internal::FeedEvent> {
        self.event
    }
}

impl FeedResponse for internal::StreamCustomerEventsResponse {
    fn into_event(self) -> Option<internal::FeedEvent> {
        self.event
    }
}

fn customer_of(name: &str) -> Result<CustomerId, FollowError> {
    name.strip_prefix("customers/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(CustomerId::from)
        .ok_or_else(|| FollowError::Corrupt(format!("an event names customer {name:?}")))
}

fn time_of(timestamp: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let timestamp = timestamp?;
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    DateTime::from_timestamp(timestamp.seconds, nanos)
}

fn money(money: Option<&crm_proto::google::r#type::Money>) -> Option<(String, i64)> {
    let money = money?;
    crm_proto::money::to_minor_units(money).map(|minor| (money.currency_code.clone(), minor))
}

/// What a purchase or refund event asks of loyalty.
fn interaction_change(event: &internal::FeedEvent) -> Result<FeedChange, FollowError> {
    use interaction::interaction_event::Record;
    let decoded = interaction::InteractionEvent::decode(event.payload.as_slice())
        .map_err(|error| FollowError::Corrupt(error.to_string()))?;
    let origin_name = if decoded.origin_customer.is_empty() {
        &decoded.customer
    } else {
        &decoded.origin_customer
    };
    Ok(match decoded.record {
        Some(Record::Purchase(purchase)) => {
            let purchase_id = last_segment(&purchase.name, "purchases")?;
            let (currency_code, amount_minor) = money(purchase.amount.as_ref())
                .ok_or_else(|| FollowError::Corrupt("a purchase event without a readable amount".into()))?;
            let purchased_at = time_of(purchase.occur_time.as_ref())
                .or_else(|| time_of(purchase.create_time.as_ref()))
                .ok_or_else(|| FollowError::Corrupt(format!("purchase {purchase_id} has no time")))?;
            let channel = interaction::Channel::try_from(purchase.channel)
                .ok()
                .filter(|channel| *channel != interaction::Channel::Unspecified)
                .map(|channel| channel.as_str_name().to_owned());
            FeedChange::Purchase(PurchaseFacts {
                purchase_id,
                customer: customer_of(origin_name)?,
                purchased_at,
                currency_code,
                amount_minor,
                channel,
                profile: None,
                segment_ids: Default::default(),
            })
        }
        Some(Record::Refund(refund)) => {
            let refund_id = last_segment(&refund.name, "refunds")?;
            let purchase_id = refund
                .name
                .split('/')
                .nth(3)
                .filter(|_| refund.name.split('/').nth(2) == Some("purchases"))
                .ok_or_else(|| FollowError::Corrupt(format!("refund name {:?}", refund.name)))?
                .to_owned();
            let (currency_code, amount_minor) = money(refund.amount.as_ref())
                .ok_or_else(|| FollowError::Corrupt("a refund event without a readable amount".into()))?;
            FeedChange::Refund(RefundFacts {
                refund_id,
                purchase_id,
                customer: customer_of(origin_name)?,
                currency_code,
                amount_minor,
            })
        }
        _ => FeedChange::Nothing,
    })
}

/// The id after the last `/{collection}/` of a resource name.
fn last_segment(name: &str, collection: &str) -> Result<String, FollowError> {
    let mut parts = name.rsplitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(id), Some(kind)) if kind == collection && !id.is_empty() => Ok(id.to_owned()),
        _ => Err(FollowError::Corrupt(format!("resource name {name:?}"))),
    }
}

/// What a customer-profile event asks of loyalty.
fn customer_change(event: &internal::FeedEvent) -> Result<FeedChange, FollowError> {
    use profile::customer_event::Type;
    let decoded = profile::CustomerEvent::decode(event.payload.as_slice())
        .map_err(|error| FollowError::Corrupt(error.to_string()))?;
    let others = || {
        decoded
            .merged
            .iter()
            .map(|name| customer_of(name))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match Type::try_from(decoded.r#type) {
        Ok(Type::Merged) => FeedChange::Merged {
            survivor: customer_of(&decoded.customer)?,
            merged: others()?,
        },
        Ok(Type::Unmerged) => FeedChange::Unmerged {
            survivor: customer_of(&decoded.customer)?,
            restored: others()?,
        },
        Ok(Type::Erased) => FeedChange::Erased {
            customer: customer_of(&decoded.customer)?,
            // A bare id (`anon-…`), not a resource name: nothing can be looked up by it.
            pseudonym: Some(decoded.pseudonym.trim())
                .filter(|pseudonym| !pseudonym.is_empty() && !pseudonym.contains('/'))
                .map(CustomerId::from)
                .ok_or_else(|| FollowError::Corrupt(format!("erasure pseudonym {:?}", decoded.pseudonym)))?,
        },
        _ => FeedChange::Nothing,
    })
}

/// Adds to the batch's purchases the profiles and segment memberships its rules need.
async fn enrich(
    service: &Loyalty,
    items: &mut [FeedItem],
    profiles: &mut CustomerProfileServiceClient<Channel>,
    segments: &mut SegmentationServiceClient<Channel>,
) -> Result<(), FollowError> {
    let needs = service.purchase_needs(items).await?;
    if needs.profiles_of.is_empty() && needs.segments_of.is_empty() {
        return Ok(());
    }
    let mut by_tenant: BTreeMap<&str, Vec<&CustomerId>> = BTreeMap::new();
    for (tenant, customer) in &needs.profiles_of {
        by_tenant.entry(tenant.as_str()).or_default().push(customer);
    }
    let mut facts: HashMap<(String, CustomerId), ProfileFacts> = HashMap::new();
    for (tenant, customers) in by_tenant {
        for chunk in customers.chunks(PROFILE_BATCH) {
            for (customer, found) in read_profiles(profiles, tenant, chunk).await? {
                facts.insert((tenant.to_owned(), customer), found);
            }
        }
    }
    let mut memberships: HashMap<(String, CustomerId), Vec<String>> = HashMap::new();
    for ((tenant, customer), segment_ids) in &needs.segments_of {
        for segment_id in segment_ids {
            let request = with_tenant(
                tenant,
                segmentation::CheckSegmentMembershipRequest {
                    segment: format!("segments/{segment_id}"),
                    customer: format!("customers/{customer}"),
                },
            )?;
            match segments.check_segment_membership(request).await {
                Ok(response) if response.get_ref().member => memberships
                    .entry((tenant.clone(), customer.clone()))
                    .or_default()
                    .push(segment_id.clone()),
                Ok(_) => {}
                // A campaign naming a segment deleted since: nobody is in it.
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(peer("segmentation")(status)),
            }
        }
    }
    for item in items {
        if let FeedChange::Purchase(purchase) = &mut item.change {
            let key = (item.tenant.clone(), purchase.customer.clone());
            purchase.profile = facts.get(&key).cloned();
            if let Some(segment_ids) = memberships.get(&key) {
                purchase.segment_ids.extend(segment_ids.iter().cloned());
            }
        }
    }
    Ok(())
}

/// The referrer and birthday of each customer customer-profile still has (a customer it
/// erased or deleted since the purchase has no facts).
async fn read_profiles(
    client: &mut CustomerProfileServiceClient<Channel>,
    tenant: &str,
    customers: &[&CustomerId],
) -> Result<Vec<(CustomerId, ProfileFacts)>, FollowError> {
    let names: Vec<String> = customers
        .iter()
        .map(|customer| format!("customers/{customer}"))
        .collect();
    let found = match client
        .batch_get_customers(with_tenant(
            tenant,
            profile::BatchGetCustomersRequest { names: names.clone() },
        )?)
        .await
    {
        Ok(response) => response.into_inner().customers,
        // One of them is gone: read them one by one.
        Err(status) if status.code() == tonic::Code::NotFound => {
            let mut found = Vec::new();
            for name in &names {
                match client
                    .get_customer(with_tenant(
                        tenant,
                        profile::GetCustomerRequest { name: name.clone() },
                    )?)
                    .await
                {
                    Ok(response) => found.push(response.into_inner()),
                    Err(status) if status.code() == tonic::Code::NotFound => {}
                    Err(status) => return Err(peer("customer-profile")(status)),
                }
            }
            found
        }
        Err(status) => return Err(peer("customer-profile")(status)),
    };
    let mut facts = Vec::new();
    for (customer, name) in customers.iter().zip(&names) {
        // A merged-away name is answered with its survivor, whose facts are not this buyer's.
        if let Some(record) = found.iter().find(|record| record.name == *name) {
            facts.push(((*customer).clone(), profile_facts(record)));
        }
    }
    Ok(facts)
}

fn profile_facts(customer: &profile::Customer) -> ProfileFacts {
    ProfileFacts {
        referrer: customer_of(&customer.referrer).ok(),
        birthday: customer.attributes.get(BIRTHDAY_ATTRIBUTE).and_then(birthday_of),
    }
}

/// A birthday attribute: a time (its UTC date), or text `YYYY-MM-DD` or `MM-DD`. Anything
/// else is no birthday.
fn birthday_of(value: &profile::AttributeValue) -> Option<Birthday> {
    use profile::attribute_value::Value;
    let (month, day) = match value.value.as_ref()? {
        Value::TimeValue(time) => {
            let date = time_of(Some(time))?.date_naive();
            (date.month(), date.day())
        }
        Value::StringValue(text) => {
            let parts: Vec<&str> = text.trim().split('-').collect();
            match parts.as_slice() {
                [_, month, day] | [month, day] => (month.parse().ok()?, day.parse().ok()?),
                _ => return None,
            }
        }
        _ => return None,
    };
    Birthday::new(month, day).ok()
}

/// A request to a tenant's public API.
fn with_tenant<T>(tenant: &str, message: T) -> Result<tonic::Request<T>, FollowError> {
    let mut request = tonic::Request::new(message);
    let value = tenant
        .parse()
        .map_err(|_| FollowError::Corrupt(format!("a feed event names tenant {tenant:?}")))?;
    request
        .metadata_mut()
        .insert(crm_runtime::tenant::TENANT_METADATA_KEY, value);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> profile::AttributeValue {
        profile::AttributeValue {
            value: Some(profile::attribute_value::Value::StringValue(value.into())),
        }
    }

    #[test]
    fn birthdays_are_read_from_dates_and_month_days() {
        assert_eq!(birthday_of(&text("1990-02-29")), Birthday::new(2, 29).ok());
        assert_eq!(birthday_of(&text("12-31")), Birthday::new(12, 31).ok());
        assert_eq!(birthday_of(&text("13-01")), None);
        assert_eq!(birthday_of(&text("soon")), None);
        let time = profile::AttributeValue {
            value: Some(profile::attribute_value::Value::TimeValue(
                prost_types::Timestamp {
                    seconds: 1_700_000_000, // 2023-11-14T22:13:20Z
                    nanos: 0,
                },
            )),
        };
        assert_eq!(birthday_of(&time), Birthday::new(11, 14).ok());
    }

    #[test]
    fn resource_names_give_their_ids() {
        assert_eq!(
            last_segment("customers/a/purchases/p1", "purchases").unwrap(),
            "p1"
        );
        assert!(last_segment("customers/a/refunds/p1", "purchases").is_err());
        assert!(last_segment("customers/a/purchases/", "purchases").is_err());
        assert_eq!(customer_of("customers/abc").unwrap(), CustomerId::from("abc"));
        assert!(customer_of("customer/abc").is_err());
        assert!(customer_of("customers/").is_err());
    }
}
