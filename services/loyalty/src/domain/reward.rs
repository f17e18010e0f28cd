//! The rewards catalogue and the decision whether a member may redeem.

use super::error::DomainError;
use super::program::MAX_POINTS_PER_ENTRY;

pub const REWARD_ID_MAX_BYTES: usize = 256;
pub const REWARD_NAME_MAX_CHARS: usize = 200;
/// Most units one redemption may take.
pub const MAX_QUANTITY: u32 = 1_000;

/// A catalogue item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reward {
    pub id: String,
    pub name: String,
    /// Points per unit, more than 0.
    pub points_cost: i64,
    /// Units left; `None` = unlimited. The store decrements it atomically
    /// (`… WHERE stock >= quantity`), so this value only pre-checks.
    pub stock: Option<i64>,
    /// Most units one member may ever redeem (net of cancellations); `None` = no limit.
    pub per_member_limit: Option<u32>,
}

impl Reward {
    /// Checks the reward; `path` prefixes field names (e.g. `reward`).
    pub fn validate(&self, path: &str) -> Result<(), DomainError> {
        if self.id.trim().is_empty() || self.id.len() > REWARD_ID_MAX_BYTES {
            return Err(DomainError::invalid(
                format!("{path}.id"),
                format!("must be 1 to {REWARD_ID_MAX_BYTES} bytes"),
            ));
        }
        if self.name.trim().is_empty() || self.name.chars().count() > REWARD_NAME_MAX_CHARS {
            return Err(DomainError::invalid(
                format!("{path}.name"),
                format!("must be 1 to {REWARD_NAME_MAX_CHARS} characters"),
            ));
        }
        if !(1..=MAX_POINTS_PER_ENTRY).contains(&self.points_cost) {
            return Err(DomainError::invalid(
                format!("{path}.points_cost"),
                format!("must be between 1 and {MAX_POINTS_PER_ENTRY}"),
            ));
        }
        if self.stock.is_some_and(|stock| stock < 0) {
            return Err(DomainError::invalid(
                format!("{path}.stock"),
                "must not be negative",
            ));
        }
        if self.per_member_limit == Some(0) {
            return Err(DomainError::invalid(
                format!("{path}.per_member_limit"),
                "must be at least 1 (leave it unset for no limit)",
            ));
        }
        Ok(())
    }
}

/// Whether a member may redeem `quantity` units of `reward`, having redeemed
/// `member_redeemed_units` before and holding `spendable_points`; returns the points the
/// redemption costs. Checks, in order: quantity, stock, the member's limit, points.
pub fn can_redeem(
    reward: &Reward,
    member_redeemed_units: u32,
    quantity: u32,
    spendable_points: i64,
) -> Result<i64, DomainError> {
    if !(1..=MAX_QUANTITY).contains(&quantity) {
        return Err(DomainError::invalid(
            "quantity",
            format!("must be between 1 and {MAX_QUANTITY}"),
        ));
    }
    if let Some(in_stock) = reward.stock
        && i64::from(quantity) > in_stock
    {
        return Err(DomainError::OutOfStock {
            reward_id: reward.id.clone(),
            requested: quantity,
            in_stock: in_stock.max(0),
        });
    }
    if let Some(limit) = reward.per_member_limit
        && member_redeemed_units.saturating_add(quantity) > limit
    {
        return Err(DomainError::RedemptionLimitReached {
            reward_id: reward.id.clone(),
            limit,
            already_redeemed: member_redeemed_units,
            requested: quantity,
        });
    }
    let needed = reward
        .points_cost
        .checked_mul(i64::from(quantity))
        .filter(|needed| *needed <= MAX_POINTS_PER_ENTRY)
        .ok_or_else(|| DomainError::invalid("quantity", "costs more points than one entry may hold"))?;
    if needed > spendable_points {
        return Err(DomainError::InsufficientPoints {
            needed,
            available: spendable_points.max(0),
        });
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field path and how to break that field.
    type Mutation = (&'static str, fn(&mut Reward));

    fn mug() -> Reward {
        Reward {
            id: "mug".into(),
            name: "Mug".into(),
            points_cost: 500,
            stock: Some(3),
            per_member_limit: Some(2),
        }
    }

    #[test]
    fn redeemable() {
        assert_eq!(can_redeem(&mug(), 0, 2, 1_000), Ok(1_000));
        let unlimited = Reward {
            stock: None,
            per_member_limit: None,
            ..mug()
        };
        assert_eq!(can_redeem(&unlimited, 50, 10, 5_000), Ok(5_000));
    }

    #[test]
    fn refusals_in_order() {
        assert!(matches!(
            can_redeem(&mug(), 0, 0, 1_000),
            Err(DomainError::InvalidField { field, .. }) if field == "quantity"
        ));
        assert_eq!(
            can_redeem(&mug(), 0, 4, 0),
            Err(DomainError::OutOfStock {
                reward_id: "mug".into(),
                requested: 4,
                in_stock: 3,
            })
        );
        assert_eq!(
            can_redeem(&mug(), 1, 2, 0),
            Err(DomainError::RedemptionLimitReached {
                reward_id: "mug".into(),
                limit: 2,
                already_redeemed: 1,
                requested: 2,
            })
        );
        assert_eq!(
            can_redeem(&mug(), 1, 1, 499),
            Err(DomainError::InsufficientPoints {
                needed: 500,
                available: 499,
            })
        );
        let sold_out = Reward {
            stock: Some(0),
            ..mug()
        };
        assert!(matches!(
            can_redeem(&sold_out, 0, 1, 1_000),
            Err(DomainError::OutOfStock { in_stock: 0, .. })
        ));
    }

    #[test]
    fn validation_names_fields() {
        assert_eq!(mug().validate("reward"), Ok(()));
        let cases: Vec<Mutation> = vec![
            ("reward.id", |r| r.id = String::new()),
            ("reward.name", |r| r.name = " ".into()),
            ("reward.points_cost", |r| r.points_cost = 0),
            ("reward.stock", |r| r.stock = Some(-1)),
            ("reward.per_member_limit", |r| r.per_member_limit = Some(0)),
        ];
        for (field, mutate) in cases {
            let mut reward = mug();
            mutate(&mut reward);
            match reward.validate("reward") {
                Err(DomainError::InvalidField { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected {field} to be refused, got {other:?}"),
            }
        }
    }
}
