//! Follows the internal all-tenant feeds of interaction (purchases, refunds) and
//! customer-profile (created, merged, unmerged, erased), applying each batch of events with the
//! feed's cursor in one transaction ([`Segmentation::apply`]), so every event counts exactly once
//! across crashes, restarts and replicas.

use std::sync::Arc;
use std::time::Duration;

use crm_proto::customerprofile_v1 as profile;
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
        .into_inner()
        .map(|item| item.map(|response| response.event));
    consume(
        service,
        CUSTOMER_PROFILE_SOURCE,
        events,
        customer_change,
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

/// Applies the stream in batches of what has arrived, until it breaks.
async fn consume(
    service: &Segmentation,
    source: &'static str,
    events: impl futures::Stream<Item = Result<Option<internal::FeedEvent>, tonic::Status>> + Unpin,
    decode: fn(&internal::FeedEvent) -> Result<Option<Change>, SegmentationError>,
    peer_name: &'static str,
) -> Result<(), SegmentationError> {
    let mut batches = events.ready_chunks(BATCH);
    while let Some(batch) = batches.next().await {
        let mut changes = Vec::with_capacity(batch.len());
        let mut broken = None;
        for item in batch {
            match item {
                Ok(Some(event)) => {
                    let position: i64 = event
                        .cursor
                        .parse()
                        .map_err(|_| SegmentationError::corrupt(format!("feed cursor {:?}", event.cursor)))?;
                    if let Some(change) = decode(&event)? {
                        changes.push(FeedChange {
                            position,
                            tenant: event.tenant.clone(),
                            change,
                        });
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

/// What an interaction event changes.
fn interaction_change(event: &internal::FeedEvent) -> Result<Option<Change>, SegmentationError> {
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
    Ok(match decoded.record {
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
        _ => None,
    })
}

/// What a customer-profile event changes.
fn customer_change(event: &internal::FeedEvent) -> Result<Option<Change>, SegmentationError> {
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
    Ok(match Type::try_from(decoded.r#type) {
        Ok(Type::Created) => Some(Change::Created {
            customer: customer_of(&decoded.customer)?,
        }),
        Ok(Type::Merged) => Some(Change::Merged {
            survivor: customer_of(&decoded.customer)?,
            merged: others()?,
        }),
        Ok(Type::Unmerged) => Some(Change::Unmerged {
            survivor: customer_of(&decoded.customer)?,
            restored: others()?,
        }),
        Ok(Type::Erased) => Some(Change::Erased {
            customer: customer_of(&decoded.customer)?,
        }),
        _ => None,
    })
}
