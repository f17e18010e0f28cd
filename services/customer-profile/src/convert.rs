//! Proto <-> domain conversions. The proto encoding of a customer is also its snapshot format
//! in the cache and in idempotency records, so both directions are exact.

use chrono::{DateTime, Utc};
use crm_proto::customerprofile_v1 as pb;
use prost::Message;

use crate::domain::{Customer, CustomerKind, parse_customer_name};
use crate::error::ProfileError;

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

pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

fn from_timestamp(timestamp: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let timestamp = timestamp?;
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).ok()?)
}

pub fn customer_to_proto(customer: &Customer) -> pb::Customer {
    pb::Customer {
        name: customer.resource_name(),
        kind: kind_to_proto(customer.kind).into(),
        display_name: customer.display_name.clone(),
        create_time: Some(timestamp(customer.create_time)),
        update_time: Some(timestamp(customer.update_time)),
        etag: customer.etag(),
    }
}

fn customer_from_proto(message: pb::Customer) -> Result<Customer, ProfileError> {
    let corrupt = |what: &str| ProfileError::Corrupt(format!("customer snapshot has {what}"));
    Ok(Customer {
        id: parse_customer_name(&message.name, "name").map_err(|_| corrupt("a bad name"))?,
        kind: kind_from_proto(message.kind, "kind").map_err(|_| corrupt("a bad kind"))?,
        display_name: message.display_name,
        create_time: from_timestamp(message.create_time).ok_or_else(|| corrupt("a bad create_time"))?,
        update_time: from_timestamp(message.update_time).ok_or_else(|| corrupt("a bad update_time"))?,
        revision: message
            .etag
            .trim_matches('"')
            .parse()
            .map_err(|_| corrupt("a bad etag"))?,
    })
}

pub fn encode_snapshot(customer: &Customer) -> Vec<u8> {
    customer_to_proto(customer).encode_to_vec()
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<Customer, ProfileError> {
    let message = pb::Customer::decode(bytes).map_err(|error| ProfileError::Corrupt(error.to_string()))?;
    customer_from_proto(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_exactly() {
        let customer = Customer::create(CustomerKind::PublicInterest, "City of Lyon", Utc::now()).unwrap();
        assert_eq!(decode_snapshot(&encode_snapshot(&customer)).unwrap(), customer);
    }

    #[test]
    fn unspecified_and_unknown_kinds_are_refused_by_field() {
        let error = kind_from_proto(0, "customer.kind").unwrap_err();
        assert!(matches!(error, ProfileError::InvalidField { ref field, .. } if field == "customer.kind"));
        assert!(kind_from_proto(99, "customer.kind").is_err());
    }
}
