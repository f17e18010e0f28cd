//! The customer as the domain sees it, and the rules that need no IO: normalisation of
//! identities, validation limits, updates by field, merge, unmerge and erasure.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::error::ProfileError;

/// Longest display name accepted, in characters.
pub const DISPLAY_NAME_MAX_CHARS: usize = 200;
pub const NAME_PART_MAX_CHARS: usize = 100;
pub const TEXT_MAX_CHARS: usize = 100;
pub const LABEL_MAX_CHARS: usize = 32;
pub const MAX_PHONES: usize = 20;
pub const MAX_EMAILS: usize = 20;
pub const MAX_EXTERNAL_IDS: usize = 20;
pub const MAX_ADDRESSES: usize = 10;
pub const MAX_ADDRESS_LINES: usize = 5;
pub const ADDRESS_LINE_MAX_CHARS: usize = 200;
pub const MAX_ATTRIBUTES: usize = 100;
pub const ATTRIBUTE_STRING_MAX_CHARS: usize = 1024;
pub const MAX_TAGS: usize = 50;
pub const TAG_MAX_CHARS: usize = 64;

/// The kind of party a customer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerKind {
    Consumer,
    Business,
    Intermediary,
    PublicInterest,
    Internal,
}

impl CustomerKind {
    /// The stored form, stable across renames of the Rust or proto names.
    pub fn as_stored(self) -> &'static str {
        match self {
            Self::Consumer => "CONSUMER",
            Self::Business => "BUSINESS",
            Self::Intermediary => "INTERMEDIARY",
            Self::PublicInterest => "PUBLIC_INTEREST",
            Self::Internal => "INTERNAL",
        }
    }

    pub fn from_stored(stored: &str) -> Option<Self> {
        Some(match stored {
            "CONSUMER" => Self::Consumer,
            "BUSINESS" => Self::Business,
            "INTERMEDIARY" => Self::Intermediary,
            "PUBLIC_INTEREST" => Self::PublicInterest,
            "INTERNAL" => Self::Internal,
            _ => return None,
        })
    }
}

/// Kotler's relationship levels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RelationshipLevel {
    Basic,
    Reactive,
    Accountable,
    Proactive,
    Partnership,
}

impl RelationshipLevel {
    pub fn as_stored(self) -> &'static str {
        match self {
            Self::Basic => "BASIC",
            Self::Reactive => "REACTIVE",
            Self::Accountable => "ACCOUNTABLE",
            Self::Proactive => "PROACTIVE",
            Self::Partnership => "PARTNERSHIP",
        }
    }

    pub fn from_stored(stored: &str) -> Option<Self> {
        Some(match stored {
            "BASIC" => Self::Basic,
            "REACTIVE" => Self::Reactive,
            "ACCOUNTABLE" => Self::Accountable,
            "PROACTIVE" => Self::Proactive,
            "PARTNERSHIP" => Self::Partnership,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnterpriseSize {
    Large,
    Medium,
    Small,
    Individual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Market {
    Domestic,
    International,
}

/// The lifecycle state of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    Active,
    Deleted,
    Erased,
    /// Merged into another customer; reads resolve to the survivor.
    Merged,
}

impl RecordState {
    pub fn as_stored(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Deleted => "DELETED",
            Self::Erased => "ERASED",
            Self::Merged => "MERGED",
        }
    }

    pub fn from_stored(stored: &str) -> Option<Self> {
        Some(match stored {
            "ACTIVE" => Self::Active,
            "DELETED" => Self::Deleted,
            "ERASED" => Self::Erased,
            "MERGED" => Self::Merged,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PersonName {
    pub given_name: String,
    pub family_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Classification {
    pub enterprise_size: Option<EnterpriseSize>,
    pub industry: String,
    pub region: String,
    /// ISO 3166-1 alpha-2, upper case, or empty.
    pub country_code: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelChange {
    pub from: Option<RelationshipLevel>,
    pub to: Option<RelationshipLevel>,
    pub at: DateTime<Utc>,
}

/// A phone (E.164) or an email (lower case) with a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labeled {
    pub value: String,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExternalId {
    pub system: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PostalAddress {
    pub label: String,
    pub address_lines: Vec<String>,
    pub locality: String,
    pub administrative_area: String,
    pub postal_code: String,
    pub country_code: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Time(DateTime<Utc>),
}

impl AttributeValue {
    /// The canonical text form used for filtering (`attributes.tier = "gold"`).
    pub fn canonical_text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Int(number) => number.to_string(),
            Self::Float(number) => number.to_string(),
            Self::Bool(flag) => flag.to_string(),
            Self::Time(time) => time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        }
    }
}

/// The kinds of identity a customer can be looked up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdentityKind {
    Phone,
    Email,
    External,
}

impl IdentityKind {
    pub fn as_stored(self) -> &'static str {
        match self {
            Self::Phone => "phone",
            Self::Email => "email",
            Self::External => "external",
        }
    }

    pub fn from_stored(stored: &str) -> Option<Self> {
        Some(match stored {
            "phone" => Self::Phone,
            "email" => Self::Email,
            "external" => Self::External,
            _ => return None,
        })
    }
}

/// A normalised identity: unique within a tenant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    pub kind: IdentityKind,
    /// E.164 phone, lower-case email, or `system:id`.
    pub value: String,
}

impl Identity {
    /// The field an identity belongs to, for error messages.
    pub fn describe(&self) -> String {
        format!("{} {}", self.kind.as_stored(), self.value)
    }
}

/// A customer of one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    pub id: Uuid,
    pub kind: CustomerKind,
    pub display_name: String,
    pub person_name: PersonName,
    pub organization_name: String,
    pub classification: Classification,
    pub relationship_level: Option<RelationshipLevel>,
    pub level_history: Vec<LevelChange>,
    pub phones: Vec<Labeled>,
    pub emails: Vec<Labeled>,
    pub external_ids: Vec<ExternalId>,
    pub addresses: Vec<PostalAddress>,
    pub attributes: BTreeMap<String, AttributeValue>,
    pub tags: Vec<String>,
    pub acquisition_channel: String,
    pub referrer: Option<Uuid>,
    pub state: RecordState,
    pub merged_into: Option<Uuid>,
    pub merged_from: Vec<Uuid>,
    pub delete_time: Option<DateTime<Utc>>,
    pub purge_time: Option<DateTime<Utc>>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    /// Incremented on every change; the etag is derived from it.
    pub revision: i64,
}

/// The caller-settable part of a customer, already normalised and validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CustomerDraft {
    pub kind: Option<CustomerKind>,
    pub display_name: String,
    pub person_name: PersonName,
    pub organization_name: String,
    pub classification: Classification,
    pub relationship_level: Option<RelationshipLevel>,
    pub phones: Vec<Labeled>,
    pub emails: Vec<Labeled>,
    pub external_ids: Vec<ExternalId>,
    pub addresses: Vec<PostalAddress>,
    pub attributes: BTreeMap<String, AttributeValue>,
    pub tags: Vec<String>,
    pub acquisition_channel: String,
    pub referrer: Option<Uuid>,
}

/// Top-level fields an update mask may name.
pub const UPDATABLE_FIELDS: [&str; 15] = [
    "kind",
    "display_name",
    "person_name",
    "organization_name",
    "classification",
    "relationship_level",
    "phones",
    "emails",
    "external_ids",
    "addresses",
    "attributes",
    "tags",
    "acquisition_channel",
    "referrer",
    "etag",
];

/// Truncates to microseconds: PostgreSQL's precision, so answers equal later reads.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

impl Customer {
    /// A new customer with a fresh UUIDv7 id from a validated draft.
    pub fn create(draft: CustomerDraft, now: DateTime<Utc>) -> Result<Self, ProfileError> {
        let kind = draft
            .kind
            .ok_or_else(|| ProfileError::invalid("customer.kind", "must be set"))?;
        let display_name = derive_display_name(&draft)?;
        let level_history = match draft.relationship_level {
            Some(level) => vec![LevelChange {
                from: None,
                to: Some(level),
                at: now,
            }],
            None => Vec::new(),
        };
        Ok(Self {
            id: Uuid::now_v7(),
            kind,
            display_name,
            person_name: draft.person_name,
            organization_name: draft.organization_name,
            classification: draft.classification,
            relationship_level: draft.relationship_level,
            level_history,
            phones: draft.phones,
            emails: draft.emails,
            external_ids: draft.external_ids,
            addresses: draft.addresses,
            attributes: draft.attributes,
            tags: draft.tags,
            acquisition_channel: draft.acquisition_channel,
            referrer: draft.referrer,
            state: RecordState::Active,
            merged_into: None,
            merged_from: Vec::new(),
            delete_time: None,
            purge_time: None,
            create_time: now,
            update_time: now,
            revision: 1,
        })
    }

    pub fn resource_name(&self) -> String {
        customer_name(self.id)
    }

    pub fn etag(&self) -> String {
        format!("\"{}\"", self.revision)
    }

    /// Every identity the customer owns, normalised.
    pub fn identities(&self) -> Vec<Identity> {
        let mut identities: Vec<Identity> = self
            .phones
            .iter()
            .map(|phone| Identity {
                kind: IdentityKind::Phone,
                value: phone.value.clone(),
            })
            .chain(self.emails.iter().map(|email| Identity {
                kind: IdentityKind::Email,
                value: email.value.clone(),
            }))
            .chain(self.external_ids.iter().map(|external| Identity {
                kind: IdentityKind::External,
                value: external_identity_value(external),
            }))
            .collect();
        identities.sort();
        identities.dedup();
        identities
    }

    /// Applies the masked fields of `draft`; records a level change; bumps the revision.
    pub fn apply_update(
        &mut self,
        draft: CustomerDraft,
        mask: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), ProfileError> {
        let all = mask.is_empty();
        let wants = |field: &str| all || mask.iter().any(|masked| masked == field);
        if wants("kind") {
            self.kind = draft
                .kind
                .ok_or_else(|| ProfileError::invalid("customer.kind", "must be set"))?;
        }
        if wants("person_name") {
            self.person_name = draft.person_name.clone();
        }
        if wants("organization_name") {
            self.organization_name = draft.organization_name.clone();
        }
        if wants("display_name") {
            let mut basis = draft.clone();
            basis.person_name = self.person_name.clone();
            basis.organization_name = self.organization_name.clone();
            self.display_name = derive_display_name(&basis)?;
        }
        if wants("classification") {
            self.classification = draft.classification;
        }
        if wants("relationship_level") && draft.relationship_level != self.relationship_level {
            self.level_history.push(LevelChange {
                from: self.relationship_level,
                to: draft.relationship_level,
                at: now,
            });
            self.relationship_level = draft.relationship_level;
        }
        if wants("phones") {
            self.phones = draft.phones;
        }
        if wants("emails") {
            self.emails = draft.emails;
        }
        if wants("external_ids") {
            self.external_ids = draft.external_ids;
        }
        if wants("addresses") {
            self.addresses = draft.addresses;
        }
        if wants("attributes") {
            self.attributes = draft.attributes;
        }
        if wants("tags") {
            self.tags = draft.tags;
        }
        if wants("acquisition_channel") {
            self.acquisition_channel = draft.acquisition_channel;
        }
        if wants("referrer") {
            if draft.referrer == Some(self.id) {
                return Err(ProfileError::invalid(
                    "customer.referrer",
                    "a customer cannot refer itself",
                ));
            }
            self.referrer = draft.referrer;
        }
        self.touch(now);
        Ok(())
    }

    pub fn touch(&mut self, now: DateTime<Utc>) {
        self.update_time = now.max(self.update_time);
        self.revision += 1;
    }

    /// The market, from the customer's country and the tenant's home country.
    pub fn market(&self, home_country: &str) -> Option<Market> {
        if self.classification.country_code.is_empty() || home_country.is_empty() {
            return None;
        }
        Some(if self.classification.country_code == home_country {
            Market::Domestic
        } else {
            Market::International
        })
    }

    /// Replaces personal data with a pseudonymous tombstone. Kind, times and lineage stay so
    /// non-personal records elsewhere keep a consistent key.
    pub fn erase(&mut self, now: DateTime<Utc>) {
        self.display_name = format!("erased {}", pseudonym(self.id));
        self.person_name = PersonName::default();
        self.organization_name.clear();
        self.classification = Classification::default();
        self.phones.clear();
        self.emails.clear();
        self.external_ids.clear();
        self.addresses.clear();
        self.attributes.clear();
        self.tags.clear();
        self.acquisition_channel.clear();
        self.referrer = None;
        self.state = RecordState::Erased;
        self.delete_time = None;
        self.purge_time = None;
        self.touch(now);
    }
}

/// The pseudonym of a customer in non-personal records after erasure: stable, not reversible
/// without the profile service (which no longer holds the personal data).
pub fn pseudonym(id: Uuid) -> String {
    format!("anon-{}", id.simple())
}

pub fn customer_name(id: Uuid) -> String {
    format!("customers/{id}")
}

pub fn external_identity_value(external: &ExternalId) -> String {
    format!("{}:{}", external.system, external.id)
}

fn derive_display_name(draft: &CustomerDraft) -> Result<String, ProfileError> {
    if !draft.display_name.trim().is_empty() {
        return normalize_display_name(&draft.display_name);
    }
    let person = [
        draft.person_name.given_name.trim(),
        draft.person_name.family_name.trim(),
    ]
    .iter()
    .filter(|part| !part.is_empty())
    .copied()
    .collect::<Vec<_>>()
    .join(" ");
    let derived = if !draft.organization_name.trim().is_empty() {
        draft.organization_name.trim().to_owned()
    } else {
        person
    };
    if derived.is_empty() {
        return Err(ProfileError::invalid(
            "customer.display_name",
            "must be set, or derivable from person_name or organization_name",
        ));
    }
    normalize_display_name(&derived)
}

/// Trims the name and checks its length.
pub fn normalize_display_name(raw: &str) -> Result<String, ProfileError> {
    bounded_text(raw, "customer.display_name", DISPLAY_NAME_MAX_CHARS, true)
}

/// Trims free text and checks length and control characters.
pub fn bounded_text(
    raw: &str,
    field: &str,
    max_chars: usize,
    required: bool,
) -> Result<String, ProfileError> {
    let trimmed = raw.trim();
    if required && trimmed.is_empty() {
        return Err(ProfileError::invalid(field, "must not be empty"));
    }
    if trimmed.chars().count() > max_chars {
        return Err(ProfileError::invalid(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ProfileError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(trimmed.to_owned())
}

/// Parses a phone in any format into E.164, with `default_region` for national numbers.
pub fn normalize_phone(raw: &str, default_region: &str, field: &str) -> Result<String, ProfileError> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 64 {
        return Err(ProfileError::invalid(
            field,
            "must be a phone number of at most 64 characters",
        ));
    }
    let region = if default_region.is_empty() {
        None
    } else {
        default_region.parse::<phonenumber::country::Id>().ok()
    };
    let parsed = phonenumber::parse(region, raw).map_err(|error| {
        let hint = if region.is_none() {
            " (set the tenant's default_region to accept national numbers)"
        } else {
            ""
        };
        ProfileError::invalid(field, format!("{raw:?} is not a phone number: {error}{hint}"))
    })?;
    if !phonenumber::is_valid(&parsed) {
        return Err(ProfileError::invalid(
            field,
            format!("{raw:?} is not a valid phone number"),
        ));
    }
    Ok(parsed.format().mode(phonenumber::Mode::E164).to_string())
}

/// Trims, lower-cases and validates an email address.
pub fn normalize_email(raw: &str, field: &str) -> Result<String, ProfileError> {
    let normalized = raw.trim().to_lowercase();
    if normalized.len() > 254 {
        return Err(ProfileError::invalid(field, "must be at most 254 characters"));
    }
    let valid = email_address::EmailAddress::parse_with_options(
        &normalized,
        email_address::Options::default()
            .without_display_text()
            .without_domain_literal(),
    )
    .ok()
    .filter(|address| address.domain().contains('.'));
    match valid {
        Some(_) => Ok(normalized),
        None => Err(ProfileError::invalid(
            field,
            format!("{:?} is not an email address", raw.trim()),
        )),
    }
}

/// Checks an external id: a short system name and an id.
pub fn normalize_external_id(system: &str, id: &str, field: &str) -> Result<ExternalId, ProfileError> {
    let system = system.trim().to_lowercase();
    if system.is_empty()
        || system.len() > 32
        || !system
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-')
    {
        return Err(ProfileError::invalid(
            format!("{field}.system"),
            "must be 1 to 32 of [a-z0-9_-]",
        ));
    }
    let id = bounded_text(id, &format!("{field}.id"), 128, true)?;
    Ok(ExternalId { system, id })
}

/// Checks an ISO 3166-1 alpha-2 code (upper-cased); empty stays empty.
pub fn normalize_country(raw: &str, field: &str) -> Result<String, ProfileError> {
    let code = raw.trim().to_uppercase();
    if code.is_empty() {
        return Ok(code);
    }
    if code.len() != 2
        || !code.bytes().all(|byte| byte.is_ascii_uppercase())
        || code.parse::<phonenumber::country::Id>().is_err()
    {
        return Err(ProfileError::invalid(
            field,
            format!("{raw:?} is not an ISO 3166-1 alpha-2 country code"),
        ));
    }
    Ok(code)
}

/// Checks a custom attribute key.
pub fn validate_attribute_key(key: &str) -> Result<(), ProfileError> {
    if key.is_empty()
        || key.len() > 64
        || !key
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
    {
        return Err(ProfileError::invalid(
            format!("customer.attributes[{key:?}]"),
            "keys must be 1 to 64 of [a-z0-9_]",
        ));
    }
    Ok(())
}

/// Checks a consent purpose.
pub fn validate_purpose(purpose: &str, field: &str) -> Result<(), ProfileError> {
    if purpose.is_empty()
        || purpose.len() > 64
        || !purpose
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
    {
        return Err(ProfileError::invalid(field, "must be 1 to 64 of [a-z0-9_]"));
    }
    Ok(())
}

/// Parses `customers/{id}`; `field` names the request field in the error.
pub fn parse_customer_name(name: &str, field: &str) -> Result<Uuid, ProfileError> {
    let id = name
        .strip_prefix("customers/")
        .ok_or_else(|| ProfileError::invalid(field, "must be of the form customers/{customer}"))?;
    Uuid::parse_str(id).map_err(|_| ProfileError::invalid(field, "the customer id must be a UUID"))
}

/// Checks an AIP-155 request id: 1 to 128 printable ASCII characters.
/// Which record wins a single-valued field in a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Survivorship {
    SurvivorFirst,
    MostRecent,
}

/// Merge rules: the survivor absorbs the merged customers.
///
/// Multi-valued fields (identities, addresses, tags, attributes not set on the winner) are
/// unions; single-valued fields follow the policy per field. The merged customers become
/// MERGED records pointing at the survivor, so their names keep resolving.
pub fn merge(
    survivor: &Customer,
    merged: &[Customer],
    policy_for: impl Fn(&str) -> Survivorship,
    now: DateTime<Utc>,
) -> (Customer, Vec<Customer>) {
    let mut result = survivor.clone();
    // Most recent first, so MOST_RECENT picks the newest non-empty value.
    let mut by_recency: Vec<&Customer> = std::iter::once(survivor).chain(merged.iter()).collect();
    by_recency.sort_by(|a, b| b.update_time.cmp(&a.update_time).then(a.id.cmp(&b.id)));
    let pick_text = |field: &str, current: &str, get: &dyn Fn(&Customer) -> String| -> String {
        let candidates: Vec<String> = match policy_for(field) {
            Survivorship::SurvivorFirst => std::iter::once(current.to_owned())
                .chain(by_recency.iter().map(|c| get(c)))
                .collect(),
            Survivorship::MostRecent => by_recency.iter().map(|c| get(c)).collect(),
        };
        candidates
            .into_iter()
            .find(|value| !value.is_empty())
            .unwrap_or_default()
    };
    result.display_name = pick_text("display_name", &survivor.display_name, &|c| {
        c.display_name.clone()
    });
    result.organization_name = pick_text("organization_name", &survivor.organization_name, &|c| {
        c.organization_name.clone()
    });
    result.acquisition_channel = pick_text("acquisition_channel", &survivor.acquisition_channel, &|c| {
        c.acquisition_channel.clone()
    });
    let given = pick_text("person_name", &survivor.person_name.given_name, &|c| {
        c.person_name.given_name.clone()
    });
    let family = pick_text("person_name", &survivor.person_name.family_name, &|c| {
        c.person_name.family_name.clone()
    });
    result.person_name = PersonName {
        given_name: given,
        family_name: family,
    };
    let classification_source = match policy_for("classification") {
        Survivorship::SurvivorFirst if survivor.classification != Classification::default() => Some(survivor),
        _ => by_recency
            .iter()
            .copied()
            .find(|c| c.classification != Classification::default()),
    };
    result.classification = classification_source
        .map(|c| c.classification.clone())
        .unwrap_or_default();
    let level_source = match policy_for("relationship_level") {
        Survivorship::SurvivorFirst if survivor.relationship_level.is_some() => Some(survivor),
        _ => by_recency
            .iter()
            .copied()
            .find(|c| c.relationship_level.is_some()),
    };
    let level = level_source.and_then(|c| c.relationship_level);
    if level != survivor.relationship_level {
        result.level_history.push(LevelChange {
            from: survivor.relationship_level,
            to: level,
            at: now,
        });
        result.relationship_level = level;
    }
    if result.referrer.is_none() {
        result.referrer = by_recency
            .iter()
            .find_map(|c| c.referrer)
            .filter(|referrer| *referrer != survivor.id && !merged.iter().any(|m| m.id == *referrer));
    }
    for other in merged {
        for phone in &other.phones {
            if !result.phones.iter().any(|p| p.value == phone.value) {
                result.phones.push(phone.clone());
            }
        }
        for email in &other.emails {
            if !result.emails.iter().any(|e| e.value == email.value) {
                result.emails.push(email.clone());
            }
        }
        for external in &other.external_ids {
            if !result.external_ids.contains(external) {
                result.external_ids.push(external.clone());
            }
        }
        for address in &other.addresses {
            if !result.addresses.contains(address) {
                result.addresses.push(address.clone());
            }
        }
        for tag in &other.tags {
            if !result.tags.contains(tag) {
                result.tags.push(tag.clone());
            }
        }
        for (key, value) in &other.attributes {
            result
                .attributes
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
        result.merged_from.push(other.id);
        result.create_time = result.create_time.min(other.create_time);
    }
    result.touch(now);
    let absorbed = merged
        .iter()
        .map(|other| {
            let mut gone = other.clone();
            gone.state = RecordState::Merged;
            gone.merged_into = Some(survivor.id);
            gone.phones.clear();
            gone.emails.clear();
            gone.external_ids.clear();
            gone.touch(now);
            gone
        })
        .collect();
    (result, absorbed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(name: &str) -> CustomerDraft {
        CustomerDraft {
            kind: Some(CustomerKind::Consumer),
            display_name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn display_names_are_trimmed_bounded_or_derived() {
        assert_eq!(normalize_display_name("  Ada Lovelace ").unwrap(), "Ada Lovelace");
        assert!(normalize_display_name("   ").is_err());
        assert!(normalize_display_name(&"x".repeat(201)).is_err());
        assert!(normalize_display_name(&"张".repeat(200)).is_ok());
        assert!(normalize_display_name("a\u{0}b").is_err());
        let derived = CustomerDraft {
            kind: Some(CustomerKind::Consumer),
            person_name: PersonName {
                given_name: "Ada".into(),
                family_name: "Lovelace".into(),
            },
            ..Default::default()
        };
        assert_eq!(
            Customer::create(derived, now()).unwrap().display_name,
            "Ada Lovelace"
        );
    }

    #[test]
    fn chinese_mobile_numbers_normalise_to_one_e164_form() {
        for input in [
            "+86 138 0013 8000",
            "13800138000",
            "0086-138-0013-8000",
            "+8613800138000",
        ] {
            assert_eq!(
                normalize_phone(input, "CN", "phone").unwrap(),
                "+8613800138000",
                "{input}"
            );
        }
        assert!(normalize_phone("12345", "CN", "phone").is_err());
        assert!(
            normalize_phone("13800138000", "", "phone").is_err(),
            "a national number needs a region"
        );
        assert_eq!(
            normalize_phone("+1 650-253-0000", "", "phone").unwrap(),
            "+16502530000"
        );
    }

    #[test]
    fn emails_are_lower_cased_and_checked() {
        assert_eq!(
            normalize_email("  Ada@Example.COM ", "email").unwrap(),
            "ada@example.com"
        );
        for bad in ["ada", "ada@", "@example.com", "ada@localhost", "a b@example.com"] {
            assert!(normalize_email(bad, "email").is_err(), "{bad}");
        }
    }

    #[test]
    fn names_parse_only_in_their_pattern() {
        let id = Uuid::now_v7();
        assert_eq!(
            parse_customer_name(&format!("customers/{id}"), "name").unwrap(),
            id
        );
        assert!(parse_customer_name(&id.to_string(), "name").is_err());
        assert!(parse_customer_name("customers/not-a-uuid", "name").is_err());
    }

    #[test]
    fn a_level_change_is_recorded() {
        let mut customer = Customer::create(draft("A"), now()).unwrap();
        let mut change = draft("A");
        change.relationship_level = Some(RelationshipLevel::Proactive);
        customer
            .apply_update(change, &["relationship_level".into()], now())
            .unwrap();
        assert_eq!(customer.level_history.len(), 1);
        assert_eq!(customer.level_history[0].to, Some(RelationshipLevel::Proactive));
        assert_eq!(customer.revision, 2);
    }

    #[test]
    fn erasure_leaves_no_personal_data() {
        let mut customer = Customer::create(
            CustomerDraft {
                phones: vec![Labeled {
                    value: "+8613800138000".into(),
                    label: "mobile".into(),
                }],
                emails: vec![Labeled {
                    value: "ada@example.com".into(),
                    label: String::new(),
                }],
                person_name: PersonName {
                    given_name: "Ada".into(),
                    family_name: "Lovelace".into(),
                },
                ..draft("Ada Lovelace")
            },
            now(),
        )
        .unwrap();
        customer.erase(now());
        assert!(customer.identities().is_empty());
        assert!(!customer.display_name.contains("Ada"));
        assert_eq!(customer.person_name, PersonName::default());
        assert_eq!(customer.state, RecordState::Erased);
    }

    #[test]
    fn merge_unions_identities_and_points_the_merged_at_the_survivor() {
        let survivor = Customer::create(
            CustomerDraft {
                phones: vec![Labeled {
                    value: "+8613800138000".into(),
                    label: String::new(),
                }],
                ..draft("Ada")
            },
            now(),
        )
        .unwrap();
        let other = Customer::create(
            CustomerDraft {
                emails: vec![Labeled {
                    value: "ada@example.com".into(),
                    label: String::new(),
                }],
                tags: vec!["vip".into()],
                ..draft("Ada L.")
            },
            now(),
        )
        .unwrap();
        let (result, absorbed) = merge(
            &survivor,
            std::slice::from_ref(&other),
            |_| Survivorship::SurvivorFirst,
            now(),
        );
        assert_eq!(result.display_name, "Ada");
        assert_eq!(result.identities().len(), 2);
        assert_eq!(result.tags, vec!["vip".to_owned()]);
        assert_eq!(result.merged_from, vec![other.id]);
        assert_eq!(absorbed[0].state, RecordState::Merged);
        assert_eq!(absorbed[0].merged_into, Some(survivor.id));
        assert!(absorbed[0].identities().is_empty());
    }
}
