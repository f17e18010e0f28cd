//! Proto <-> domain conversions. Incoming messages are validated here field by field (the
//! error names the request field); the proto encoding of a customer, wrapped in
//! [`StoredCustomer`], is also its snapshot format in the cache, in merge records and in
//! idempotency records, so both directions are exact.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crm_proto::customerprofile_v1 as pb;
use prost::Message;

use crate::domain::{
    self, AttributeValue, Classification, Customer, CustomerDraft, CustomerKind, EnterpriseSize, ExternalId,
    Labeled, LevelChange, Market, PersonName, PostalAddress, RecordState, RelationshipLevel,
};
use crate::error::ProfileError;

/// What the store and cache keep of a customer: the API resource plus what the API does not
/// show (the MERGED state and its survivor).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredCustomer {
    #[prost(message, optional, tag = "1")]
    pub customer: Option<pb::Customer>,
    #[prost(string, tag = "2")]
    pub state: String,
    #[prost(string, tag = "3")]
    pub merged_into: String,
}

pub fn kind_to_proto(kind: CustomerKind) -> pb::CustomerKind {
    match kind {
        CustomerKind::Consumer => pb::CustomerKind::Consumer,
        CustomerKind::Business => pb::CustomerKind::Business,
        CustomerKind::Intermediary => pb::CustomerKind::Intermediary,
        CustomerKind::PublicInterest => pb::CustomerKind::PublicInterest,
        CustomerKind::Internal => pb::CustomerKind::Internal,
    }
}

/// The domain kind of a proto enum value; `field` names it in the error.
pub fn kind_from_proto(value: i32, field: &str) -> Result<CustomerKind, ProfileError> {
    match pb::CustomerKind::try_from(value) {
        Ok(pb::CustomerKind::Unspecified) => Err(ProfileError::invalid(field, "must be set")),
        Ok(pb::CustomerKind::Consumer) => Ok(CustomerKind::Consumer),
        Ok(pb::CustomerKind::Business) => Ok(CustomerKind::Business),
        Ok(pb::CustomerKind::Intermediary) => Ok(CustomerKind::Intermediary),
        Ok(pb::CustomerKind::PublicInterest) => Ok(CustomerKind::PublicInterest),
        Ok(pb::CustomerKind::Internal) => Ok(CustomerKind::Internal),
        Err(_) => Err(ProfileError::invalid(
            field,
            format!("{value} is not a CustomerKind"),
        )),
    }
}

fn level_to_proto(level: Option<RelationshipLevel>) -> pb::RelationshipLevel {
    match level {
        None => pb::RelationshipLevel::Unspecified,
        Some(RelationshipLevel::Basic) => pb::RelationshipLevel::Basic,
        Some(RelationshipLevel::Reactive) => pb::RelationshipLevel::Reactive,
        Some(RelationshipLevel::Accountable) => pb::RelationshipLevel::Accountable,
        Some(RelationshipLevel::Proactive) => pb::RelationshipLevel::Proactive,
        Some(RelationshipLevel::Partnership) => pb::RelationshipLevel::Partnership,
    }
}

pub fn level_from_proto(value: i32, field: &str) -> Result<Option<RelationshipLevel>, ProfileError> {
    Ok(match pb::RelationshipLevel::try_from(value) {
        Ok(pb::RelationshipLevel::Unspecified) => None,
        Ok(pb::RelationshipLevel::Basic) => Some(RelationshipLevel::Basic),
        Ok(pb::RelationshipLevel::Reactive) => Some(RelationshipLevel::Reactive),
        Ok(pb::RelationshipLevel::Accountable) => Some(RelationshipLevel::Accountable),
        Ok(pb::RelationshipLevel::Proactive) => Some(RelationshipLevel::Proactive),
        Ok(pb::RelationshipLevel::Partnership) => Some(RelationshipLevel::Partnership),
        Err(_) => {
            return Err(ProfileError::invalid(
                field,
                format!("{value} is not a RelationshipLevel"),
            ));
        }
    })
}

fn size_to_proto(size: Option<EnterpriseSize>) -> pb::EnterpriseSize {
    match size {
        None => pb::EnterpriseSize::Unspecified,
        Some(EnterpriseSize::Large) => pb::EnterpriseSize::Large,
        Some(EnterpriseSize::Medium) => pb::EnterpriseSize::Medium,
        Some(EnterpriseSize::Small) => pb::EnterpriseSize::Small,
        Some(EnterpriseSize::Individual) => pb::EnterpriseSize::Individual,
    }
}

fn size_from_proto(value: i32, field: &str) -> Result<Option<EnterpriseSize>, ProfileError> {
    Ok(match pb::EnterpriseSize::try_from(value) {
        Ok(pb::EnterpriseSize::Unspecified) => None,
        Ok(pb::EnterpriseSize::Large) => Some(EnterpriseSize::Large),
        Ok(pb::EnterpriseSize::Medium) => Some(EnterpriseSize::Medium),
        Ok(pb::EnterpriseSize::Small) => Some(EnterpriseSize::Small),
        Ok(pb::EnterpriseSize::Individual) => Some(EnterpriseSize::Individual),
        Err(_) => {
            return Err(ProfileError::invalid(
                field,
                format!("{value} is not an EnterpriseSize"),
            ));
        }
    })
}

fn market_to_proto(market: Option<Market>) -> pb::Market {
    match market {
        None => pb::Market::Unspecified,
        Some(Market::Domestic) => pb::Market::Domestic,
        Some(Market::International) => pb::Market::International,
    }
}

fn state_to_proto(state: RecordState) -> pb::customer::State {
    match state {
        // A merged record is only ever shown through its survivor.
        RecordState::Active | RecordState::Merged => pb::customer::State::Active,
        RecordState::Deleted => pb::customer::State::Deleted,
        RecordState::Erased => pb::customer::State::Erased,
    }
}

pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

pub fn from_timestamp(timestamp: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).ok()?)
}

fn attribute_to_proto(value: &AttributeValue) -> pb::AttributeValue {
    use pb::attribute_value::Value;
    pb::AttributeValue {
        value: Some(match value {
            AttributeValue::Text(text) => Value::StringValue(text.clone()),
            AttributeValue::Int(number) => Value::IntValue(*number),
            AttributeValue::Float(number) => Value::DoubleValue(*number),
            AttributeValue::Bool(flag) => Value::BoolValue(*flag),
            AttributeValue::Time(time) => Value::TimeValue(timestamp(*time)),
        }),
    }
}

fn attribute_from_proto(value: &pb::AttributeValue, field: &str) -> Result<AttributeValue, ProfileError> {
    use pb::attribute_value::Value;
    match &value.value {
        None => Err(ProfileError::invalid(field, "must hold a value")),
        Some(Value::StringValue(text)) => Ok(AttributeValue::Text(domain::bounded_text(
            text,
            field,
            domain::ATTRIBUTE_STRING_MAX_CHARS,
            false,
        )?)),
        Some(Value::IntValue(number)) => Ok(AttributeValue::Int(*number)),
        Some(Value::DoubleValue(number)) if number.is_finite() => Ok(AttributeValue::Float(*number)),
        Some(Value::DoubleValue(_)) => Err(ProfileError::invalid(field, "must be a finite number")),
        Some(Value::BoolValue(flag)) => Ok(AttributeValue::Bool(*flag)),
        Some(Value::TimeValue(time)) => from_timestamp(time)
            .map(AttributeValue::Time)
            .ok_or_else(|| ProfileError::invalid(field, "is not a valid timestamp")),
    }
}

fn check_count(field: &str, count: usize, max: usize) -> Result<(), ProfileError> {
    if count > max {
        return Err(ProfileError::invalid(
            field,
            format!("at most {max} allowed, got {count}"),
        ));
    }
    Ok(())
}

/// Validates and normalises the caller-settable fields of `message` (`prefix` is the request
/// field holding it, e.g. `customer`). Phones are parsed with `default_region`.
pub fn draft_from_proto(
    message: &pb::Customer,
    prefix: &str,
    default_region: &str,
) -> Result<CustomerDraft, ProfileError> {
    let field = |name: &str| format!("{prefix}.{name}");
    let kind = match message.kind {
        0 => None,
        value => Some(kind_from_proto(value, &field("kind"))?),
    };
    check_count(&field("phones"), message.phones.len(), domain::MAX_PHONES)?;
    check_count(&field("emails"), message.emails.len(), domain::MAX_EMAILS)?;
    check_count(
        &field("external_ids"),
        message.external_ids.len(),
        domain::MAX_EXTERNAL_IDS,
    )?;
    check_count(
        &field("addresses"),
        message.addresses.len(),
        domain::MAX_ADDRESSES,
    )?;
    check_count(
        &field("attributes"),
        message.attributes.len(),
        domain::MAX_ATTRIBUTES,
    )?;
    check_count(&field("tags"), message.tags.len(), domain::MAX_TAGS)?;

    let mut phones: Vec<Labeled> = Vec::new();
    for (index, phone) in message.phones.iter().enumerate() {
        let value = domain::normalize_phone(
            &phone.number,
            default_region,
            &format!("{prefix}.phones[{index}].number"),
        )?;
        let label = domain::bounded_text(
            &phone.label,
            &format!("{prefix}.phones[{index}].label"),
            domain::LABEL_MAX_CHARS,
            false,
        )?;
        if !phones.iter().any(|existing| existing.value == value) {
            phones.push(Labeled { value, label });
        }
    }
    let mut emails: Vec<Labeled> = Vec::new();
    for (index, email) in message.emails.iter().enumerate() {
        let value = domain::normalize_email(&email.address, &format!("{prefix}.emails[{index}].address"))?;
        let label = domain::bounded_text(
            &email.label,
            &format!("{prefix}.emails[{index}].label"),
            domain::LABEL_MAX_CHARS,
            false,
        )?;
        if !emails.iter().any(|existing| existing.value == value) {
            emails.push(Labeled { value, label });
        }
    }
    let mut external_ids: Vec<ExternalId> = Vec::new();
    for (index, external) in message.external_ids.iter().enumerate() {
        let value = domain::normalize_external_id(
            &external.system,
            &external.id,
            &format!("{prefix}.external_ids[{index}]"),
        )?;
        if !external_ids.contains(&value) {
            external_ids.push(value);
        }
    }
    let mut addresses = Vec::new();
    for (index, address) in message.addresses.iter().enumerate() {
        let at = |name: &str| format!("{prefix}.addresses[{index}].{name}");
        check_count(
            &at("address_lines"),
            address.address_lines.len(),
            domain::MAX_ADDRESS_LINES,
        )?;
        addresses.push(PostalAddress {
            label: domain::bounded_text(&address.label, &at("label"), domain::LABEL_MAX_CHARS, false)?,
            address_lines: address
                .address_lines
                .iter()
                .map(|line| {
                    domain::bounded_text(line, &at("address_lines"), domain::ADDRESS_LINE_MAX_CHARS, false)
                })
                .collect::<Result<_, _>>()?,
            locality: domain::bounded_text(
                &address.locality,
                &at("locality"),
                domain::TEXT_MAX_CHARS,
                false,
            )?,
            administrative_area: domain::bounded_text(
                &address.administrative_area,
                &at("administrative_area"),
                domain::TEXT_MAX_CHARS,
                false,
            )?,
            postal_code: domain::bounded_text(&address.postal_code, &at("postal_code"), 32, false)?,
            country_code: domain::normalize_country(&address.country_code, &at("country_code"))?,
        });
    }
    let mut attributes = BTreeMap::new();
    for (key, value) in &message.attributes {
        domain::validate_attribute_key(key)?;
        attributes.insert(
            key.clone(),
            attribute_from_proto(value, &format!("{prefix}.attributes[{key:?}]"))?,
        );
    }
    let mut tags: Vec<String> = Vec::new();
    for (index, tag) in message.tags.iter().enumerate() {
        let tag = domain::bounded_text(
            tag,
            &format!("{prefix}.tags[{index}]"),
            domain::TAG_MAX_CHARS,
            true,
        )?;
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    let person_name = message.person_name.clone().unwrap_or_default();
    let classification = message.classification.clone().unwrap_or_default();
    let referrer = if message.referrer.is_empty() {
        None
    } else {
        Some(domain::parse_customer_name(
            &message.referrer,
            &field("referrer"),
        )?)
    };
    Ok(CustomerDraft {
        kind,
        display_name: domain::bounded_text(
            &message.display_name,
            &field("display_name"),
            domain::DISPLAY_NAME_MAX_CHARS,
            false,
        )?,
        person_name: PersonName {
            given_name: domain::bounded_text(
                &person_name.given_name,
                &field("person_name.given_name"),
                domain::NAME_PART_MAX_CHARS,
                false,
            )?,
            family_name: domain::bounded_text(
                &person_name.family_name,
                &field("person_name.family_name"),
                domain::NAME_PART_MAX_CHARS,
                false,
            )?,
        },
        organization_name: domain::bounded_text(
            &message.organization_name,
            &field("organization_name"),
            domain::DISPLAY_NAME_MAX_CHARS,
            false,
        )?,
        classification: Classification {
            enterprise_size: size_from_proto(
                classification.enterprise_size,
                &field("classification.enterprise_size"),
            )?,
            industry: domain::bounded_text(
                &classification.industry,
                &field("classification.industry"),
                domain::TEXT_MAX_CHARS,
                false,
            )?,
            region: domain::bounded_text(
                &classification.region,
                &field("classification.region"),
                domain::TEXT_MAX_CHARS,
                false,
            )?,
            country_code: domain::normalize_country(
                &classification.country_code,
                &field("classification.country_code"),
            )?,
        },
        relationship_level: level_from_proto(message.relationship_level, &field("relationship_level"))?,
        phones,
        emails,
        external_ids,
        addresses,
        attributes,
        tags,
        acquisition_channel: domain::bounded_text(
            &message.acquisition_channel,
            &field("acquisition_channel"),
            64,
            false,
        )?,
        referrer,
    })
}

/// The API resource; `home_country` decides the market.
pub fn customer_to_proto(customer: &Customer, home_country: &str) -> pb::Customer {
    pb::Customer {
        name: customer.resource_name(),
        kind: kind_to_proto(customer.kind).into(),
        display_name: customer.display_name.clone(),
        create_time: Some(timestamp(customer.create_time)),
        update_time: Some(timestamp(customer.update_time)),
        etag: customer.etag(),
        person_name: (customer.person_name != PersonName::default()).then(|| pb::PersonName {
            given_name: customer.person_name.given_name.clone(),
            family_name: customer.person_name.family_name.clone(),
        }),
        organization_name: customer.organization_name.clone(),
        classification: (customer.classification != Classification::default()).then(|| pb::Classification {
            enterprise_size: size_to_proto(customer.classification.enterprise_size).into(),
            industry: customer.classification.industry.clone(),
            region: customer.classification.region.clone(),
            country_code: customer.classification.country_code.clone(),
            market: market_to_proto(customer.market(home_country)).into(),
        }),
        relationship_level: level_to_proto(customer.relationship_level).into(),
        relationship_level_history: customer
            .level_history
            .iter()
            .map(|change| pb::RelationshipLevelChange {
                from_level: level_to_proto(change.from).into(),
                to_level: level_to_proto(change.to).into(),
                change_time: Some(timestamp(change.at)),
            })
            .collect(),
        phones: customer
            .phones
            .iter()
            .map(|phone| pb::PhoneNumber {
                number: phone.value.clone(),
                label: phone.label.clone(),
            })
            .collect(),
        emails: customer
            .emails
            .iter()
            .map(|email| pb::EmailAddress {
                address: email.value.clone(),
                label: email.label.clone(),
            })
            .collect(),
        external_ids: customer
            .external_ids
            .iter()
            .map(|external| pb::ExternalId {
                system: external.system.clone(),
                id: external.id.clone(),
            })
            .collect(),
        addresses: customer
            .addresses
            .iter()
            .map(|address| pb::PostalAddress {
                label: address.label.clone(),
                address_lines: address.address_lines.clone(),
                locality: address.locality.clone(),
                administrative_area: address.administrative_area.clone(),
                postal_code: address.postal_code.clone(),
                country_code: address.country_code.clone(),
            })
            .collect(),
        attributes: customer
            .attributes
            .iter()
            .map(|(key, value)| (key.clone(), attribute_to_proto(value)))
            .collect(),
        tags: customer.tags.clone(),
        acquisition_channel: customer.acquisition_channel.clone(),
        referrer: customer.referrer.map(domain::customer_name).unwrap_or_default(),
        state: state_to_proto(customer.state).into(),
        delete_time: customer.delete_time.map(timestamp),
        purge_time: customer.purge_time.map(timestamp),
        merged_from: customer
            .merged_from
            .iter()
            .map(|id| domain::customer_name(*id))
            .collect(),
    }
}

fn corrupt(what: &str) -> ProfileError {
    ProfileError::Corrupt(format!("customer snapshot has {what}"))
}

fn customer_from_stored(stored: StoredCustomer) -> Result<Customer, ProfileError> {
    let message = stored.customer.ok_or_else(|| corrupt("no customer"))?;
    let parse_time = |time: &Option<prost_types::Timestamp>, what: &str| {
        time.as_ref()
            .and_then(from_timestamp)
            .ok_or_else(|| corrupt(what))
    };
    let classification = message.classification.clone().unwrap_or_default();
    Ok(Customer {
        id: domain::parse_customer_name(&message.name, "name").map_err(|_| corrupt("a bad name"))?,
        kind: kind_from_proto(message.kind, "kind").map_err(|_| corrupt("a bad kind"))?,
        display_name: message.display_name,
        person_name: message
            .person_name
            .map(|name| PersonName {
                given_name: name.given_name,
                family_name: name.family_name,
            })
            .unwrap_or_default(),
        organization_name: message.organization_name,
        classification: Classification {
            enterprise_size: size_from_proto(classification.enterprise_size, "size")
                .map_err(|_| corrupt("a bad size"))?,
            industry: classification.industry,
            region: classification.region,
            country_code: classification.country_code,
        },
        relationship_level: level_from_proto(message.relationship_level, "level")
            .map_err(|_| corrupt("a bad level"))?,
        level_history: message
            .relationship_level_history
            .iter()
            .map(|change| {
                Ok(LevelChange {
                    from: level_from_proto(change.from_level, "level").map_err(|_| corrupt("a bad level"))?,
                    to: level_from_proto(change.to_level, "level").map_err(|_| corrupt("a bad level"))?,
                    at: parse_time(&change.change_time, "a bad level time")?,
                })
            })
            .collect::<Result<_, ProfileError>>()?,
        phones: message
            .phones
            .into_iter()
            .map(|phone| Labeled {
                value: phone.number,
                label: phone.label,
            })
            .collect(),
        emails: message
            .emails
            .into_iter()
            .map(|email| Labeled {
                value: email.address,
                label: email.label,
            })
            .collect(),
        external_ids: message
            .external_ids
            .into_iter()
            .map(|external| ExternalId {
                system: external.system,
                id: external.id,
            })
            .collect(),
        addresses: message
            .addresses
            .into_iter()
            .map(|address| PostalAddress {
                label: address.label,
                address_lines: address.address_lines,
                locality: address.locality,
                administrative_area: address.administrative_area,
                postal_code: address.postal_code,
                country_code: address.country_code,
            })
            .collect(),
        attributes: message
            .attributes
            .iter()
            .map(|(key, value)| {
                Ok((
                    key.clone(),
                    attribute_from_proto(value, key).map_err(|_| corrupt("a bad attribute"))?,
                ))
            })
            .collect::<Result<_, ProfileError>>()?,
        tags: message.tags,
        acquisition_channel: message.acquisition_channel,
        referrer: if message.referrer.is_empty() {
            None
        } else {
            Some(
                domain::parse_customer_name(&message.referrer, "referrer")
                    .map_err(|_| corrupt("a bad referrer"))?,
            )
        },
        state: RecordState::from_stored(&stored.state).ok_or_else(|| corrupt("a bad state"))?,
        merged_into: if stored.merged_into.is_empty() {
            None
        } else {
            Some(uuid::Uuid::parse_str(&stored.merged_into).map_err(|_| corrupt("a bad survivor"))?)
        },
        merged_from: message
            .merged_from
            .iter()
            .map(|name| domain::parse_customer_name(name, "merged_from").map_err(|_| corrupt("bad lineage")))
            .collect::<Result<_, _>>()?,
        delete_time: message.delete_time.as_ref().and_then(from_timestamp),
        purge_time: message.purge_time.as_ref().and_then(from_timestamp),
        create_time: parse_time(&message.create_time, "a bad create_time")?,
        update_time: parse_time(&message.update_time, "a bad update_time")?,
        revision: message
            .etag
            .trim_matches('"')
            .parse()
            .map_err(|_| corrupt("a bad etag"))?,
    })
}

pub fn encode_snapshot(customer: &Customer) -> Vec<u8> {
    StoredCustomer {
        customer: Some(customer_to_proto(customer, "")),
        state: customer.state.as_stored().to_owned(),
        merged_into: customer.merged_into.map(|id| id.to_string()).unwrap_or_default(),
    }
    .encode_to_vec()
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<Customer, ProfileError> {
    let stored = StoredCustomer::decode(bytes).map_err(|error| ProfileError::Corrupt(error.to_string()))?;
    customer_from_stored(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_exactly() {
        let message = pb::Customer {
            kind: pb::CustomerKind::PublicInterest.into(),
            display_name: "City of Lyon".into(),
            phones: vec![pb::PhoneNumber {
                number: "+33 4 72 10 30 30".into(),
                label: "switchboard".into(),
            }],
            emails: vec![pb::EmailAddress {
                address: "Contact@Lyon.FR".into(),
                label: String::new(),
            }],
            external_ids: vec![pb::ExternalId {
                system: "erp".into(),
                id: "C-1".into(),
            }],
            attributes: [(
                "since".to_owned(),
                pb::AttributeValue {
                    value: Some(pb::attribute_value::Value::IntValue(1998)),
                },
            )]
            .into(),
            relationship_level: pb::RelationshipLevel::Partnership.into(),
            classification: Some(pb::Classification {
                country_code: "fr".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let draft = draft_from_proto(&message, "customer", "FR").unwrap();
        let mut customer = Customer::create(draft, domain::now()).unwrap();
        customer.merged_into = Some(uuid::Uuid::now_v7());
        customer.state = RecordState::Merged;
        assert_eq!(decode_snapshot(&encode_snapshot(&customer)).unwrap(), customer);
        assert_eq!(customer.classification.country_code, "FR");
        assert_eq!(customer.emails[0].value, "contact@lyon.fr");
        let shown = customer_to_proto(&customer, "FR");
        assert_eq!(
            shown.classification.unwrap().market,
            i32::from(pb::Market::Domestic)
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: Vec<(pb::Customer, &str)> = vec![
            (
                pb::Customer {
                    kind: 99,
                    ..Default::default()
                },
                "customer.kind",
            ),
            (
                pb::Customer {
                    phones: vec![pb::PhoneNumber {
                        number: "12".into(),
                        label: String::new(),
                    }],
                    ..Default::default()
                },
                "customer.phones[0].number",
            ),
            (
                pb::Customer {
                    emails: vec![pb::EmailAddress {
                        address: "nope".into(),
                        label: String::new(),
                    }],
                    ..Default::default()
                },
                "customer.emails[0].address",
            ),
            (
                pb::Customer {
                    organization_name: "x".repeat(201),
                    ..Default::default()
                },
                "customer.organization_name",
            ),
            (
                pb::Customer {
                    attributes: (0..101)
                        .map(|i| {
                            (
                                format!("k{i}"),
                                pb::AttributeValue {
                                    value: Some(pb::attribute_value::Value::BoolValue(true)),
                                },
                            )
                        })
                        .collect(),
                    ..Default::default()
                },
                "customer.attributes",
            ),
        ];
        for (message, field) in cases {
            match draft_from_proto(&message, "customer", "CN") {
                Err(ProfileError::InvalidField { field: named, .. }) => assert_eq!(named, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
