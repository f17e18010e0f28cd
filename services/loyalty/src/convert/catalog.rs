//! Rewards and campaigns between the contract and the domain.
//!
//! Requests are checked field by field under the request's own paths. The domain validates
//! under its own names (`reward.name`, `campaign.ends_at`); [`contract_field`] renames those to
//! the contract's (`reward.display_name`, `campaign.end_time`). List fields are checked here,
//! in the request's order, because the domain keeps them as sets (sorted, without
//! duplicates), whose indices would not be the request's.

use std::collections::BTreeSet;

use chrono::{DateTime, SubsecRound, Utc};
use crm_proto::interaction_v1::Channel;
use crm_proto::loyalty_v1 as pb;
use prost_types::{FieldMask, Timestamp};
use uuid::Uuid;

use super::{revision_etag, timestamp};
use crate::domain::program::validate_label;
use crate::domain::{Campaign, CampaignBonus, CampaignConditions, DomainError, EntryKind, Reward};
use crate::error::LoyaltyError;

/// Longest id a client may choose for a reward or a campaign (AIP-122's 63).
pub const CATALOG_ID_MAX_CHARS: usize = 63;
/// Refused from this year on: every backend stores such times, and no campaign needs more.
const LAST_YEAR: i32 = 9999;

/// A reward's or a campaign's id as a client may choose it: 1 to 63 characters of `a-z`,
/// `0-9` and `-`, starting with a letter or a digit (so a UUID fits).
pub fn check_catalog_id(id: &str, field: &str) -> Result<(), LoyaltyError> {
    let well_formed = !id.is_empty()
        && id.len() <= CATALOG_ID_MAX_CHARS
        && id
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !id.starts_with('-');
    if well_formed {
        Ok(())
    } else {
        Err(LoyaltyError::invalid(
            field,
            format!(
                "must be 1 to {CATALOG_ID_MAX_CHARS} characters of a-z, 0-9 and '-', starting with a \
                 letter or a digit"
            ),
        ))
    }
}

/// The id a create request asks for, or a new UUIDv7 when it names none.
pub fn new_catalog_id(requested: &str, field: &str) -> Result<String, LoyaltyError> {
    if requested.is_empty() {
        return Ok(Uuid::now_v7().to_string());
    }
    check_catalog_id(requested, field)?;
    Ok(requested.to_owned())
}

/// `{collection}/{id}` -> the id.
pub fn parse_catalog_name(name: &str, collection: &str, field: &str) -> Result<String, LoyaltyError> {
    name.strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| check_catalog_id(id, field).is_ok())
        .map(str::to_owned)
        .ok_or_else(|| LoyaltyError::invalid(field, format!("must be {collection}/{{id}}")))
}

pub fn reward_name(id: &str) -> String {
    format!("rewards/{id}")
}

pub fn campaign_name(id: &str) -> String {
    format!("campaigns/{id}")
}

/// A refusal of the domain's validation, under the contract's field names.
pub fn contract_field(error: DomainError) -> LoyaltyError {
    match error {
        DomainError::InvalidField { field, reason } => {
            let renamed = match field.as_str() {
                "reward.name" => "reward.display_name",
                "campaign.starts_at" => "campaign.start_time",
                "campaign.ends_at" => "campaign.end_time",
                "campaign.bonus.basis_points" => "campaign.bonus.extra_multiplier_bp",
                "campaign.bonus.points" => "campaign.bonus.fixed_points",
                other => other,
            };
            LoyaltyError::invalid(renamed, reason)
        }
        other => other.into(),
    }
}

/// The paths an update names: the mask's, or every updatable field for an empty mask (an
/// update of the whole resource). A path outside `fields` is refused on `update_mask`.
fn mask_paths<'a>(
    mask: Option<&'a FieldMask>,
    fields: &'a [&'static str],
) -> Result<Vec<&'a str>, LoyaltyError> {
    let paths: Vec<&str> = match mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths.iter().map(String::as_str).collect(),
        _ => return Ok(fields.to_vec()),
    };
    for path in &paths {
        if !fields.contains(path) {
            return Err(LoyaltyError::invalid(
                "update_mask",
                format!("{path:?} is not an updatable field ({})", fields.join(", ")),
            ));
        }
    }
    Ok(paths)
}

// ---- rewards ----

/// The reward a create request describes, under `id`; [`Reward::validate`] checks ranges.
pub fn reward_from_pb(reward: &pb::Reward, id: String) -> Result<Reward, LoyaltyError> {
    Ok(Reward {
        id,
        name: reward.display_name.trim().to_owned(),
        points_cost: reward.points_cost,
        stock: reward.stock,
        per_member_limit: per_member_limit(reward.per_member_limit)?,
    })
}

fn per_member_limit(limit: Option<i32>) -> Result<Option<u32>, LoyaltyError> {
    limit
        .map(|limit| {
            u32::try_from(limit).map_err(|_| {
                LoyaltyError::invalid(
                    "reward.per_member_limit",
                    "must be at least 1 (leave it unset for no limit)",
                )
            })
        })
        .transpose()
}

pub fn reward_to_pb(reward: &Reward, revision: i64) -> pb::Reward {
    pb::Reward {
        name: reward_name(&reward.id),
        display_name: reward.name.clone(),
        points_cost: reward.points_cost,
        stock: reward.stock,
        per_member_limit: reward
            .per_member_limit
            .map(|limit| i32::try_from(limit).unwrap_or(i32::MAX)),
        etag: revision_etag(revision),
    }
}

/// What an UpdateReward changes: the fields its mask names, converted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewardPatch {
    display_name: Option<String>,
    points_cost: Option<i64>,
    stock: Option<Option<i64>>,
    per_member_limit: Option<Option<u32>>,
}

impl RewardPatch {
    pub const FIELDS: [&'static str; 4] = ["display_name", "points_cost", "stock", "per_member_limit"];

    pub fn parse(reward: &pb::Reward, mask: Option<&FieldMask>) -> Result<Self, LoyaltyError> {
        let mut patch = Self::default();
        for path in mask_paths(mask, &Self::FIELDS)? {
            match path {
                "display_name" => patch.display_name = Some(reward.display_name.trim().to_owned()),
                "points_cost" => patch.points_cost = Some(reward.points_cost),
                "stock" => patch.stock = Some(reward.stock),
                _ => patch.per_member_limit = Some(per_member_limit(reward.per_member_limit)?),
            }
        }
        Ok(patch)
    }

    pub fn apply(&self, reward: &mut Reward) {
        if let Some(display_name) = &self.display_name {
            reward.name.clone_from(display_name);
        }
        if let Some(points_cost) = self.points_cost {
            reward.points_cost = points_cost;
        }
        if let Some(stock) = self.stock {
            reward.stock = stock;
        }
        if let Some(limit) = self.per_member_limit {
            reward.per_member_limit = limit;
        }
    }
}

/// What a ledger entry says of rewards: a redemption's reward and units, a cancellation's
/// redemption (empty and 0 for other entries).
pub fn entry_references(kind: &EntryKind) -> (String, i32, String) {
    match kind {
        EntryKind::Redeem {
            reward: Some(line), ..
        } => (
            reward_name(&line.reward_id),
            i32::try_from(line.quantity).unwrap_or(i32::MAX),
            String::new(),
        ),
        EntryKind::CancelRedemption {
            redemption_entry_id, ..
        } => (String::new(), 0, redemption_entry_id.as_str().to_owned()),
        _ => (String::new(), 0, String::new()),
    }
}

// ---- campaigns ----

/// The campaign a create request describes, under `id`, nothing awarded yet;
/// [`Campaign::validate`] checks ranges and the time box.
pub fn campaign_from_pb(campaign: &pb::Campaign, id: String) -> Result<Campaign, LoyaltyError> {
    Ok(Campaign {
        id,
        starts_at: required_time(campaign.start_time.as_ref(), "campaign.start_time")?,
        ends_at: required_time(campaign.end_time.as_ref(), "campaign.end_time")?,
        conditions: conditions_from_pb(campaign.conditions.as_ref())?,
        bonus: bonus_from_pb(campaign.bonus.as_ref())?,
        budget_points: campaign.budget_points,
        awarded_points: 0,
    })
}

/// A time as stored: microseconds (what PostgreSQL keeps, so the answer equals later reads),
/// from 1970 to the end of year 9999.
pub(crate) fn required_time(time: Option<&Timestamp>, field: &str) -> Result<DateTime<Utc>, LoyaltyError> {
    let time = time.ok_or_else(|| LoyaltyError::invalid(field, "is required"))?;
    u32::try_from(time.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(time.seconds, nanos))
        .filter(|time| time.timestamp() >= 0 && chrono::Datelike::year(time) <= LAST_YEAR)
        .map(|time| time.trunc_subsecs(6))
        .ok_or_else(|| LoyaltyError::invalid(field, format!("must be a time from 1970 to {LAST_YEAR}")))
}

fn conditions_from_pb(
    conditions: Option<&pb::CampaignConditions>,
) -> Result<CampaignConditions, LoyaltyError> {
    let Some(conditions) = conditions else {
        return Ok(CampaignConditions::default());
    };
    let path = "campaign.conditions";
    Ok(CampaignConditions {
        segment_ids: label_set(&conditions.segment_ids, &format!("{path}.segment_ids"), |id| {
            Uuid::parse_str(id)
                .map(|id| id.to_string())
                .map_err(|_| "must be a segment id (the {segment} of segments/{segment})".to_owned())
        })?,
        channels: label_set(&conditions.channels, &format!("{path}.channels"), |channel| {
            Channel::from_str_name(channel)
                .filter(|channel| *channel != Channel::Unspecified)
                .map(|channel| channel.as_str_name().to_owned())
                .ok_or_else(|| "must name a crm.interaction.v1.Channel value such as CHANNEL_WEB".to_owned())
        })?,
        categories: label_set(
            &conditions.categories,
            &format!("{path}.categories"),
            |category| {
                validate_label("category", category)
                    .map(|()| category.to_owned())
                    .map_err(|error| match error {
                        DomainError::InvalidField { reason, .. } => reason,
                        other => other.to_string(),
                    })
            },
        )?,
        min_amount_minor: conditions.min_amount_minor,
        first_purchase_only: conditions.first_purchase_only,
        birthday_only: conditions.birthday_only,
    })
}

/// A list as a set, each item checked (and normalised) by `check`, refusals naming
/// `field[index]`; an item listed twice is refused too.
fn label_set(
    items: &[String],
    field: &str,
    check: impl Fn(&str) -> Result<String, String>,
) -> Result<BTreeSet<String>, LoyaltyError> {
    let mut set = BTreeSet::new();
    for (index, item) in items.iter().enumerate() {
        let item =
            check(item).map_err(|reason| LoyaltyError::invalid(format!("{field}[{index}]"), reason))?;
        if !set.insert(item) {
            return Err(LoyaltyError::invalid(
                format!("{field}[{index}]"),
                "is listed twice",
            ));
        }
    }
    Ok(set)
}

fn bonus_from_pb(bonus: Option<&pb::CampaignBonus>) -> Result<CampaignBonus, LoyaltyError> {
    use pb::campaign_bonus::Kind;
    match bonus.and_then(|bonus| bonus.kind) {
        Some(Kind::ExtraMultiplierBp(basis_points)) => u32::try_from(basis_points)
            .map(|basis_points| CampaignBonus::ExtraMultiplier { basis_points })
            .map_err(|_| LoyaltyError::invalid("campaign.bonus.extra_multiplier_bp", "must not be negative")),
        Some(Kind::FixedPoints(points)) => Ok(CampaignBonus::FixedPoints { points }),
        None => Err(LoyaltyError::invalid(
            "campaign.bonus",
            "is required: extra_multiplier_bp or fixed_points",
        )),
    }
}

pub fn campaign_to_pb(campaign: &Campaign, revision: i64) -> pb::Campaign {
    use pb::campaign_bonus::Kind;
    let conditions = &campaign.conditions;
    let list = |set: &BTreeSet<String>| set.iter().cloned().collect();
    pb::Campaign {
        name: campaign_name(&campaign.id),
        start_time: Some(timestamp(campaign.starts_at)),
        end_time: Some(timestamp(campaign.ends_at)),
        conditions: Some(pb::CampaignConditions {
            segment_ids: list(&conditions.segment_ids),
            channels: list(&conditions.channels),
            categories: list(&conditions.categories),
            min_amount_minor: conditions.min_amount_minor,
            first_purchase_only: conditions.first_purchase_only,
            birthday_only: conditions.birthday_only,
        }),
        bonus: Some(pb::CampaignBonus {
            kind: Some(match campaign.bonus {
                CampaignBonus::ExtraMultiplier { basis_points } => {
                    Kind::ExtraMultiplierBp(i32::try_from(basis_points).unwrap_or(i32::MAX))
                }
                CampaignBonus::FixedPoints { points } => Kind::FixedPoints(points),
            }),
        }),
        budget_points: campaign.budget_points,
        awarded_points: campaign.awarded_points,
        etag: revision_etag(revision),
    }
}

/// What an UpdateCampaign changes: the fields its mask names, converted. The awarded points
/// are the store's, never a request's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignPatch {
    starts_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    conditions: Option<CampaignConditions>,
    bonus: Option<CampaignBonus>,
    budget_points: Option<Option<i64>>,
}

impl CampaignPatch {
    pub const FIELDS: [&'static str; 5] = ["start_time", "end_time", "conditions", "bonus", "budget_points"];

    pub fn parse(campaign: &pb::Campaign, mask: Option<&FieldMask>) -> Result<Self, LoyaltyError> {
        let mut patch = Self::default();
        for path in mask_paths(mask, &Self::FIELDS)? {
            match path {
                "start_time" => {
                    patch.starts_at = Some(required_time(
                        campaign.start_time.as_ref(),
                        "campaign.start_time",
                    )?);
                }
                "end_time" => {
                    patch.ends_at = Some(required_time(campaign.end_time.as_ref(), "campaign.end_time")?);
                }
                "conditions" => patch.conditions = Some(conditions_from_pb(campaign.conditions.as_ref())?),
                "bonus" => patch.bonus = Some(bonus_from_pb(campaign.bonus.as_ref())?),
                _ => patch.budget_points = Some(campaign.budget_points),
            }
        }
        Ok(patch)
    }

    pub fn apply(&self, campaign: &mut Campaign) {
        if let Some(starts_at) = self.starts_at {
            campaign.starts_at = starts_at;
        }
        if let Some(ends_at) = self.ends_at {
            campaign.ends_at = ends_at;
        }
        if let Some(conditions) = &self.conditions {
            campaign.conditions.clone_from(conditions);
        }
        if let Some(bonus) = self.bonus {
            campaign.bonus = bonus;
        }
        if let Some(budget_points) = self.budget_points {
            campaign.budget_points = budget_points;
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn mug() -> pb::Reward {
        pb::Reward {
            display_name: " Mug ".into(),
            points_cost: 500,
            stock: Some(3),
            per_member_limit: Some(2),
            ..Default::default()
        }
    }

    fn time(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    fn launch() -> pb::Campaign {
        pb::Campaign {
            start_time: time(1_767_225_600, 0),
            end_time: time(1_769_904_000, 0),
            conditions: Some(pb::CampaignConditions {
                segment_ids: vec!["0190A7E4-1C2B-7F00-8000-000000000001".into()],
                channels: vec!["CHANNEL_WEB".into(), "CHANNEL_MOBILE_APP".into()],
                categories: vec!["shoes".into()],
                min_amount_minor: 5_000,
                first_purchase_only: true,
                birthday_only: false,
            }),
            bonus: Some(pb::CampaignBonus {
                kind: Some(pb::campaign_bonus::Kind::ExtraMultiplierBp(10_000)),
            }),
            budget_points: Some(100_000),
            awarded_points: 77,
            ..Default::default()
        }
    }

    fn field_of(error: LoyaltyError) -> String {
        match error {
            LoyaltyError::InvalidField { field, .. } => field,
            other => panic!("expected a field violation, got {other:?}"),
        }
    }

    #[test]
    fn catalog_ids_and_names() {
        for good in ["mug", "0190a7e4-1c2b-7f00-8000-000000000001", "a", "gift-card-50"] {
            assert!(check_catalog_id(good, "reward_id").is_ok(), "{good}");
        }
        for bad in ["", "Mug", "-mug", "mug/2", "a b", &"x".repeat(64)] {
            assert_eq!(
                field_of(check_catalog_id(bad, "reward_id").unwrap_err()),
                "reward_id"
            );
        }
        assert_eq!(
            parse_catalog_name("rewards/mug", "rewards", "name").unwrap(),
            "mug"
        );
        for bad in ["rewards/", "rewardsmug", "campaigns/mug", "rewards/mug/x", "mug"] {
            assert_eq!(
                field_of(parse_catalog_name(bad, "rewards", "name").unwrap_err()),
                "name"
            );
        }
        assert_eq!(new_catalog_id("mug", "reward_id").unwrap(), "mug");
        assert!(Uuid::parse_str(&new_catalog_id("", "reward_id").unwrap()).is_ok());
    }

    #[test]
    fn rewards_round_trip() {
        let reward = reward_from_pb(&mug(), "mug".into()).unwrap();
        assert_eq!(
            reward,
            Reward {
                id: "mug".into(),
                name: "Mug".into(),
                points_cost: 500,
                stock: Some(3),
                per_member_limit: Some(2),
            }
        );
        let message = reward_to_pb(&reward, 4);
        assert_eq!(message.name, "rewards/mug");
        assert_eq!(message.etag, "r4");
        assert_eq!(reward_from_pb(&message, "mug".into()).unwrap(), reward);
        let unlimited = Reward {
            stock: None,
            per_member_limit: None,
            ..reward
        };
        let message = reward_to_pb(&unlimited, 1);
        assert_eq!((message.stock, message.per_member_limit), (None, None));
    }

    #[test]
    fn reward_refusals_name_contract_fields() {
        let negative_limit = pb::Reward {
            per_member_limit: Some(-1),
            ..mug()
        };
        assert_eq!(
            field_of(reward_from_pb(&negative_limit, "mug".into()).unwrap_err()),
            "reward.per_member_limit"
        );
        let unnamed = reward_from_pb(
            &pb::Reward {
                display_name: "  ".into(),
                ..mug()
            },
            "mug".into(),
        )
        .unwrap();
        let refusal = unnamed.validate("reward").map_err(contract_field).unwrap_err();
        assert_eq!(field_of(refusal), "reward.display_name");
    }

    #[test]
    fn reward_patches_follow_the_mask() {
        let mut reward = reward_from_pb(&mug(), "mug".into()).unwrap();
        let update = pb::Reward {
            display_name: "Big mug".into(),
            points_cost: 900,
            stock: None,
            per_member_limit: None,
            ..Default::default()
        };
        let only_cost = RewardPatch::parse(
            &update,
            Some(&FieldMask {
                paths: vec!["points_cost".into()],
            }),
        )
        .unwrap();
        only_cost.apply(&mut reward);
        assert_eq!(
            (
                reward.name.as_str(),
                reward.points_cost,
                reward.stock,
                reward.per_member_limit
            ),
            ("Mug", 900, Some(3), Some(2))
        );
        // An empty mask replaces every field: unset stock and limit mean unlimited.
        RewardPatch::parse(&update, None).unwrap().apply(&mut reward);
        assert_eq!(
            (reward.name.as_str(), reward.stock, reward.per_member_limit),
            ("Big mug", None, None)
        );
        let unknown = RewardPatch::parse(
            &update,
            Some(&FieldMask {
                paths: vec!["name".into()],
            }),
        );
        assert_eq!(field_of(unknown.unwrap_err()), "update_mask");
    }

    #[test]
    fn campaigns_round_trip() {
        let campaign = campaign_from_pb(&launch(), "launch".into()).unwrap();
        assert_eq!(campaign.awarded_points, 0, "awarded points are output only");
        assert_eq!(
            campaign.bonus,
            CampaignBonus::ExtraMultiplier { basis_points: 10_000 }
        );
        assert_eq!(
            campaign.conditions.segment_ids,
            BTreeSet::from(["0190a7e4-1c2b-7f00-8000-000000000001".to_owned()])
        );
        assert_eq!(
            campaign.conditions.channels,
            BTreeSet::from(["CHANNEL_MOBILE_APP".to_owned(), "CHANNEL_WEB".to_owned()])
        );
        assert_eq!(campaign.validate("campaign"), Ok(()));
        let message = campaign_to_pb(&campaign, 2);
        assert_eq!(message.name, "campaigns/launch");
        assert_eq!(message.etag, "r2");
        assert_eq!(campaign_from_pb(&message, "launch".into()).unwrap(), campaign);
    }

    #[test]
    fn campaign_times_keep_microseconds() {
        let precise = pb::Campaign {
            start_time: time(1_767_225_600, 123_456_789),
            ..launch()
        };
        let campaign = campaign_from_pb(&precise, "c".into()).unwrap();
        assert_eq!(
            campaign.starts_at,
            Utc.timestamp_opt(1_767_225_600, 123_456_000).single().unwrap()
        );
    }

    #[test]
    fn campaign_refusals_name_contract_fields() {
        type Mutation = (&'static str, fn(&mut pb::Campaign));
        let cases: Vec<Mutation> = vec![
            ("campaign.start_time", |c| c.start_time = None),
            ("campaign.end_time", |c| c.end_time = time(-1, 0)),
            ("campaign.start_time", |c| c.start_time = time(0, -1)),
            ("campaign.bonus", |c| c.bonus = None),
            ("campaign.bonus.extra_multiplier_bp", |c| {
                c.bonus = Some(pb::CampaignBonus {
                    kind: Some(pb::campaign_bonus::Kind::ExtraMultiplierBp(-5)),
                });
            }),
            ("campaign.conditions.channels[1]", |c| {
                c.conditions.as_mut().unwrap().channels[1] = "WEB".into();
            }),
            ("campaign.conditions.channels[1]", |c| {
                c.conditions.as_mut().unwrap().channels[1] = "CHANNEL_WEB".into();
            }),
            ("campaign.conditions.channels[0]", |c| {
                c.conditions.as_mut().unwrap().channels[0] = "CHANNEL_UNSPECIFIED".into();
            }),
            ("campaign.conditions.segment_ids[0]", |c| {
                c.conditions.as_mut().unwrap().segment_ids[0] = "segments/vip".into();
            }),
            ("campaign.conditions.categories[0]", |c| {
                c.conditions.as_mut().unwrap().categories[0] = " ".into();
            }),
        ];
        for (field, mutate) in cases {
            let mut request = launch();
            mutate(&mut request);
            assert_eq!(
                field_of(campaign_from_pb(&request, "c".into()).unwrap_err()),
                field
            );
        }
        // What only the domain checks comes back under the contract's names.
        let mut request = launch();
        request.conditions.as_mut().unwrap().min_amount_minor = -1;
        request.end_time = request.start_time;
        let refusal = campaign_from_pb(&request, "c".into())
            .unwrap()
            .validate("campaign")
            .map_err(contract_field)
            .unwrap_err();
        assert_eq!(field_of(refusal), "campaign.end_time");
        request.bonus = Some(pb::CampaignBonus {
            kind: Some(pb::campaign_bonus::Kind::FixedPoints(0)),
        });
        request.end_time = launch().end_time;
        let refusal = campaign_from_pb(&request, "c".into())
            .unwrap()
            .validate("campaign")
            .map_err(contract_field)
            .unwrap_err();
        assert_eq!(field_of(refusal), "campaign.conditions.min_amount_minor");
    }

    #[test]
    fn campaign_patches_follow_the_mask() {
        let mut campaign = campaign_from_pb(&launch(), "launch".into()).unwrap();
        campaign.awarded_points = 40;
        let update = pb::Campaign {
            budget_points: None,
            bonus: Some(pb::CampaignBonus {
                kind: Some(pb::campaign_bonus::Kind::FixedPoints(25)),
            }),
            ..Default::default()
        };
        let mask = FieldMask {
            paths: vec!["bonus".into(), "budget_points".into()],
        };
        CampaignPatch::parse(&update, Some(&mask))
            .unwrap()
            .apply(&mut campaign);
        assert_eq!(campaign.bonus, CampaignBonus::FixedPoints { points: 25 });
        assert_eq!(campaign.budget_points, None);
        assert_eq!(campaign.awarded_points, 40);
        assert_eq!(campaign.conditions.min_amount_minor, 5_000);
        // The whole resource needs its times.
        assert_eq!(
            field_of(CampaignPatch::parse(&update, None).unwrap_err()),
            "campaign.start_time"
        );
    }
}
