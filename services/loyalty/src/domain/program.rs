//! A tenant's loyalty program: currency, earn rate and rounding, the pending and expiry
//! periods, tiers and the referral bonus; its validation; and the integer arithmetic that
//! turns money into points.

use std::collections::BTreeSet;

use chrono::{DateTime, Months, TimeDelta, Utc};

use super::error::DomainError;

/// 1.0x as basis points.
pub const BASIS_POINTS_ONE: u32 = 10_000;
/// Largest number of points one entry may move; keeps every sum of entries far inside i64.
pub const MAX_POINTS_PER_ENTRY: i64 = 1_000_000_000_000;
/// Largest numerator or denominator of an earn rate; keeps `amount × rate × multiplier`
/// inside i128 for every i64 amount.
pub const MAX_EARN_RATE_TERM: i64 = 1_000_000;
/// Largest multiplier, tier or campaign: 100x.
pub const MAX_MULTIPLIER_BASIS_POINTS: u32 = 1_000_000;
/// ISO 4217 exponents run from 0 to 4.
pub const MAX_MINOR_UNIT_EXPONENT: u8 = 4;
pub const MAX_PENDING_DAYS: u32 = 3_650;
pub const MAX_EXPIRY_MONTHS: u32 = 1_200;
pub const MAX_WINDOW_MONTHS: u32 = 120;
pub const MAX_TIERS: usize = 20;
pub const TIER_NAME_MAX_CHARS: usize = 64;
pub const CATEGORY_MAX_CHARS: usize = 64;
/// The shortest month: an expiry of N months is at least `N × 28` days after the earn.
const SHORTEST_MONTH_DAYS: u32 = 28;

/// The program's currency: an ISO 4217 code and how many decimal places its minor unit has
/// (2 for EUR, 0 for JPY, 3 for BHD). Amounts everywhere are integer minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency {
    pub code: String,
    pub minor_unit_exponent: u8,
}

/// `points` points for every `per_major_units` whole units of currency: {1, 1} is 1 point
/// per 1.00; {2, 1} is 1 point per 0.50; {3, 10} is 3 points per 10.00. A rational, so any
/// rate is exact; the division happens once, in [`Rounding::divide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarnRate {
    pub points: i64,
    pub per_major_units: i64,
}

/// How a fractional number of points becomes whole points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Towards zero: 2.9 -> 2.
    Floor,
    /// Halves go up: 2.5 -> 3, 2.49 -> 2.
    HalfUp,
    /// Away from zero: 2.1 -> 3.
    Ceil,
}

impl Rounding {
    /// `numerator / denominator` rounded by this rule; both non-negative, denominator > 0
    /// (a zero denominator gives 0 rather than a panic).
    pub fn divide(self, numerator: i128, denominator: i128) -> i128 {
        if denominator <= 0 || numerator <= 0 {
            return 0;
        }
        match self {
            Self::Floor => numerator / denominator,
            Self::Ceil => numerator / denominator + i128::from(numerator % denominator != 0),
            // Up when the remainder is at least half the denominator; written as
            // `r >= d - r` so odd denominators are exact and nothing can overflow.
            Self::HalfUp => {
                let quotient = numerator / denominator;
                let remainder = numerator % denominator;
                quotient + i128::from(remainder >= denominator - remainder)
            }
        }
    }
}

/// What tier thresholds are measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierBasis {
    /// Points earned (earn lots, net of reversals) in the rolling window.
    QualifyingPoints,
    /// Purchase amount in minor units (net of refunds) in the rolling window.
    QualifyingSpend,
}

/// One tier. Benefits are data here; the service applies the discount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub name: String,
    /// Qualifying value (points or minor units, per [`Program::tier_basis`]) needed to reach
    /// the tier. Strictly increasing along [`Program::tiers`].
    pub threshold: i64,
    /// Earn multiplier on the base rate, in basis points: 15000 = 1.5x.
    pub earn_multiplier_bp: u32,
    /// The long-standing-customer discount, 0 to 100 percent.
    pub discount_percent: u8,
}

/// A tenant's program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub currency: Currency,
    pub earn_rate: EarnRate,
    pub rounding: Rounding,
    /// Days after the purchase before its points can be spent (the return window).
    pub pending_days: u32,
    /// Months after the purchase when its points expire; 0 = never.
    pub expiry_months: u32,
    pub tier_basis: TierBasis,
    /// The rolling window qualifying value is summed over, in months.
    pub tier_window_months: u32,
    /// Downgrades happen only at evaluations, one every this many months per member (the
    /// first one this long after enrolment).
    pub tier_evaluation_period_months: u32,
    /// Lowest first. Empty means the program has no tiers (and the tier settings above are
    /// not checked). A member below the first threshold has no tier (1x earn).
    pub tiers: Vec<Tier>,
    /// Basket lines in these categories neither earn nor qualify (gift cards, tobacco...).
    pub excluded_categories: BTreeSet<String>,
    /// Points for the referrer when a referred customer first buys; 0 = no referral bonus.
    pub referral_bonus_points: i64,
}

impl Program {
    /// Checks every field; the first violation comes back with its path, e.g.
    /// `program.tiers[1].threshold: must exceed the previous tier's`.
    pub fn validate(&self) -> Result<(), DomainError> {
        let code = &self.currency.code;
        if code.len() != 3 || !code.bytes().all(|byte| byte.is_ascii_uppercase()) {
            return Err(DomainError::invalid(
                "program.currency.code",
                "must be three upper-case letters (ISO 4217)",
            ));
        }
        if self.currency.minor_unit_exponent > MAX_MINOR_UNIT_EXPONENT {
            return Err(DomainError::invalid(
                "program.currency.minor_unit_exponent",
                format!("must be at most {MAX_MINOR_UNIT_EXPONENT}"),
            ));
        }
        if !(0..=MAX_EARN_RATE_TERM).contains(&self.earn_rate.points) {
            return Err(DomainError::invalid(
                "program.earn_rate.points",
                format!("must be between 0 and {MAX_EARN_RATE_TERM}"),
            ));
        }
        if !(1..=MAX_EARN_RATE_TERM).contains(&self.earn_rate.per_major_units) {
            return Err(DomainError::invalid(
                "program.earn_rate.per_major_units",
                format!("must be between 1 and {MAX_EARN_RATE_TERM}"),
            ));
        }
        if self.pending_days > MAX_PENDING_DAYS {
            return Err(DomainError::invalid(
                "program.pending_days",
                format!("must be at most {MAX_PENDING_DAYS}"),
            ));
        }
        if self.expiry_months > MAX_EXPIRY_MONTHS {
            return Err(DomainError::invalid(
                "program.expiry_months",
                format!("must be at most {MAX_EXPIRY_MONTHS}"),
            ));
        }
        // Points that expire before they mature could never be spent.
        if self.expiry_months > 0 && self.pending_days >= self.expiry_months * SHORTEST_MONTH_DAYS {
            return Err(DomainError::invalid(
                "program.pending_days",
                format!(
                    "must be shorter than the expiry of {} months ({} days at least)",
                    self.expiry_months,
                    self.expiry_months * SHORTEST_MONTH_DAYS
                ),
            ));
        }
        self.validate_tiers()?;
        for (index, category) in self.excluded_categories.iter().enumerate() {
            validate_label(&format!("program.excluded_categories[{index}]"), category)?;
        }
        if !(0..=MAX_POINTS_PER_ENTRY).contains(&self.referral_bonus_points) {
            return Err(DomainError::invalid(
                "program.referral_bonus_points",
                format!("must be between 0 and {MAX_POINTS_PER_ENTRY}"),
            ));
        }
        Ok(())
    }

    fn validate_tiers(&self) -> Result<(), DomainError> {
        if self.tiers.is_empty() {
            return Ok(());
        }
        if self.tiers.len() > MAX_TIERS {
            return Err(DomainError::invalid(
                "program.tiers",
                format!("must have at most {MAX_TIERS} tiers"),
            ));
        }
        if !(1..=MAX_WINDOW_MONTHS).contains(&self.tier_window_months) {
            return Err(DomainError::invalid(
                "program.tier_window_months",
                format!("must be between 1 and {MAX_WINDOW_MONTHS}"),
            ));
        }
        if !(1..=MAX_WINDOW_MONTHS).contains(&self.tier_evaluation_period_months) {
            return Err(DomainError::invalid(
                "program.tier_evaluation_period_months",
                format!("must be between 1 and {MAX_WINDOW_MONTHS}"),
            ));
        }
        for (index, tier) in self.tiers.iter().enumerate() {
            let path = format!("program.tiers[{index}]");
            let name = tier.name.trim();
            if name.is_empty() {
                return Err(DomainError::invalid(format!("{path}.name"), "must not be empty"));
            }
            if name.chars().count() > TIER_NAME_MAX_CHARS {
                return Err(DomainError::invalid(
                    format!("{path}.name"),
                    format!("must be at most {TIER_NAME_MAX_CHARS} characters"),
                ));
            }
            if let Some(first) = self
                .tiers
                .iter()
                .take(index)
                .position(|other| other.name.trim() == name)
            {
                return Err(DomainError::invalid(
                    format!("{path}.name"),
                    format!("duplicates program.tiers[{first}].name"),
                ));
            }
            if tier.threshold < 0 {
                return Err(DomainError::invalid(
                    format!("{path}.threshold"),
                    "must not be negative",
                ));
            }
            if let Some(previous) = index.checked_sub(1).and_then(|previous| self.tiers.get(previous))
                && tier.threshold <= previous.threshold
            {
                return Err(DomainError::invalid(
                    format!("{path}.threshold"),
                    "must exceed the previous tier's",
                ));
            }
            if !(1..=MAX_MULTIPLIER_BASIS_POINTS).contains(&tier.earn_multiplier_bp) {
                return Err(DomainError::invalid(
                    format!("{path}.earn_multiplier_bp"),
                    format!("must be between 1 and {MAX_MULTIPLIER_BASIS_POINTS}"),
                ));
            }
            if tier.discount_percent > 100 {
                return Err(DomainError::invalid(
                    format!("{path}.discount_percent"),
                    "must be between 0 and 100",
                ));
            }
        }
        Ok(())
    }

    /// When points earned at `earned_at` become spendable.
    pub fn matures_at(&self, earned_at: DateTime<Utc>) -> Result<DateTime<Utc>, DomainError> {
        TimeDelta::try_days(i64::from(self.pending_days))
            .and_then(|pending| earned_at.checked_add_signed(pending))
            .ok_or_else(|| DomainError::invalid("earned_at", "is out of range"))
    }

    /// When points earned at `earned_at` expire: `expiry_months` calendar months later (the
    /// 31st clamps to the month's last day), or never.
    pub fn expires_at(&self, earned_at: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, DomainError> {
        if self.expiry_months == 0 {
            return Ok(None);
        }
        earned_at
            .checked_add_months(Months::new(self.expiry_months))
            .map(Some)
            .ok_or_else(|| DomainError::invalid("earned_at", "is out of range"))
    }

    /// The tier with this name and its rank (0 = lowest).
    pub fn tier(&self, name: &str) -> Option<(usize, &Tier)> {
        self.tiers.iter().enumerate().find(|(_, tier)| tier.name == name)
    }

    /// The earn multiplier of a tier; 1x without a tier or for a name the program no longer
    /// has.
    pub fn tier_multiplier_bp(&self, tier_name: Option<&str>) -> u32 {
        tier_name
            .and_then(|name| self.tier(name))
            .map_or(BASIS_POINTS_ONE, |(_, tier)| tier.earn_multiplier_bp)
    }

    /// `rounding(amount × earn rate × multiplier)`, all in integers:
    /// `amount_minor × rate.points × multiplier_bp / (rate.per_major_units × 10^exponent ×
    /// 10000)`. `field` names the amount in errors.
    pub fn points_for_amount(
        &self,
        field: &str,
        amount_minor: i64,
        multiplier_bp: u32,
    ) -> Result<i64, DomainError> {
        if amount_minor < 0 {
            return Err(DomainError::invalid(field, "must not be negative"));
        }
        let too_many = || DomainError::invalid(field, "earns more points than one entry may hold");
        // Checked although a validated program cannot overflow: an unvalidated one must not
        // panic either.
        let numerator = i128::from(amount_minor)
            .checked_mul(i128::from(self.earn_rate.points))
            .and_then(|product| product.checked_mul(i128::from(multiplier_bp)))
            .ok_or_else(too_many)?;
        let denominator = 10_i128
            .checked_pow(u32::from(self.currency.minor_unit_exponent))
            .and_then(|scale| scale.checked_mul(i128::from(self.earn_rate.per_major_units)))
            .and_then(|scale| scale.checked_mul(i128::from(BASIS_POINTS_ONE)))
            .ok_or_else(too_many)?;
        let points = self.rounding.divide(numerator, denominator);
        i64::try_from(points)
            .ok()
            .filter(|points| *points <= MAX_POINTS_PER_ENTRY)
            .ok_or_else(too_many)
    }
}

/// A category, segment or channel label: not blank, not too long.
pub(crate) fn validate_label(field: &str, label: &str) -> Result<(), DomainError> {
    if label.trim().is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    if label.chars().count() > CATEGORY_MAX_CHARS {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {CATEGORY_MAX_CHARS} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A field path and how to break that field.
    type Mutation = (&'static str, fn(&mut Program));

    /// EUR, 1 point per 1.00, floor, 14 pending days, 12 months expiry, three tiers on
    /// qualifying points over 12 months.
    pub(crate) fn sample_program() -> Program {
        Program {
            currency: Currency {
                code: "EUR".into(),
                minor_unit_exponent: 2,
            },
            earn_rate: EarnRate {
                points: 1,
                per_major_units: 1,
            },
            rounding: Rounding::Floor,
            pending_days: 14,
            expiry_months: 12,
            tier_basis: TierBasis::QualifyingPoints,
            tier_window_months: 12,
            tier_evaluation_period_months: 12,
            tiers: vec![
                Tier {
                    name: "member".into(),
                    threshold: 0,
                    earn_multiplier_bp: 10_000,
                    discount_percent: 0,
                },
                Tier {
                    name: "silver".into(),
                    threshold: 1_000,
                    earn_multiplier_bp: 12_500,
                    discount_percent: 5,
                },
                Tier {
                    name: "gold".into(),
                    threshold: 5_000,
                    earn_multiplier_bp: 15_000,
                    discount_percent: 10,
                },
            ],
            excluded_categories: BTreeSet::from(["gift-card".to_owned()]),
            referral_bonus_points: 200,
        }
    }

    fn field_of(result: Result<(), DomainError>) -> String {
        match result {
            Err(DomainError::InvalidField { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn sample_program_is_valid() {
        assert_eq!(sample_program().validate(), Ok(()));
    }

    #[test]
    fn tier_thresholds_must_increase() {
        let mut program = sample_program();
        program.tiers[1].threshold = 0;
        let error = program.validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            "program.tiers[1].threshold: must exceed the previous tier's"
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<Mutation> = vec![
            ("program.currency.code", |p| p.currency.code = "eur".into()),
            ("program.currency.code", |p| p.currency.code = "EURO".into()),
            ("program.currency.minor_unit_exponent", |p| {
                p.currency.minor_unit_exponent = 5
            }),
            ("program.earn_rate.points", |p| p.earn_rate.points = -1),
            ("program.earn_rate.per_major_units", |p| {
                p.earn_rate.per_major_units = 0
            }),
            ("program.pending_days", |p| p.pending_days = MAX_PENDING_DAYS + 1),
            ("program.pending_days", |p| {
                p.expiry_months = 1;
                p.pending_days = 28;
            }),
            ("program.expiry_months", |p| {
                p.expiry_months = MAX_EXPIRY_MONTHS + 1
            }),
            ("program.tier_window_months", |p| p.tier_window_months = 0),
            ("program.tier_evaluation_period_months", |p| {
                p.tier_evaluation_period_months = 0
            }),
            ("program.tiers[0].name", |p| p.tiers[0].name = "  ".into()),
            ("program.tiers[2].name", |p| p.tiers[2].name = "silver".into()),
            ("program.tiers[0].threshold", |p| p.tiers[0].threshold = -5),
            ("program.tiers[2].earn_multiplier_bp", |p| {
                p.tiers[2].earn_multiplier_bp = 0
            }),
            ("program.tiers[1].discount_percent", |p| {
                p.tiers[1].discount_percent = 101
            }),
            ("program.excluded_categories[0]", |p| {
                p.excluded_categories = BTreeSet::from([" ".to_owned()])
            }),
            ("program.referral_bonus_points", |p| p.referral_bonus_points = -1),
        ];
        for (expected, mutate) in cases {
            let mut program = sample_program();
            mutate(&mut program);
            assert_eq!(field_of(program.validate()), expected);
        }
    }

    #[test]
    fn a_program_without_tiers_ignores_tier_settings() {
        let mut program = sample_program();
        program.tiers.clear();
        program.tier_window_months = 0;
        assert_eq!(program.validate(), Ok(()));
        assert_eq!(program.tier_multiplier_bp(Some("gold")), BASIS_POINTS_ONE);
    }

    #[test]
    fn rounding_rules() {
        // 25 / 10 = 2.5
        assert_eq!(Rounding::Floor.divide(25, 10), 2);
        assert_eq!(Rounding::HalfUp.divide(25, 10), 3);
        assert_eq!(Rounding::Ceil.divide(25, 10), 3);
        // 24 / 10 = 2.4
        assert_eq!(Rounding::HalfUp.divide(24, 10), 2);
        assert_eq!(Rounding::Ceil.divide(24, 10), 3);
        // exact
        for rounding in [Rounding::Floor, Rounding::HalfUp, Rounding::Ceil] {
            assert_eq!(rounding.divide(30, 10), 3);
            assert_eq!(rounding.divide(0, 10), 0);
            assert_eq!(rounding.divide(5, 0), 0);
        }
        // odd denominator: 1/3 stays down, 2/3 goes up under half-up
        assert_eq!(Rounding::HalfUp.divide(1, 3), 0);
        assert_eq!(Rounding::HalfUp.divide(2, 3), 1);
    }

    proptest::proptest! {
        #[test]
        fn rounding_agrees_with_exact_fractions(numerator in 0..1_000_000_i128, denominator in 1..10_000_i128) {
            let floor = Rounding::Floor.divide(numerator, denominator);
            let ceil = Rounding::Ceil.divide(numerator, denominator);
            let half_up = Rounding::HalfUp.divide(numerator, denominator);
            // floor <= n/d < floor + 1, and ceil is floor unless there is a remainder
            proptest::prop_assert!(floor * denominator <= numerator && numerator < (floor + 1) * denominator);
            proptest::prop_assert_eq!(ceil, floor + i128::from(numerator % denominator != 0));
            // half-up is floor(n/d + 1/2) = floor((2n + d) / 2d)
            proptest::prop_assert_eq!(half_up, (2 * numerator + denominator) / (2 * denominator));
        }
    }

    #[test]
    fn points_for_amount_uses_rate_exponent_and_multiplier() {
        let mut program = sample_program();
        // 12.34 EUR at 1 point per 1.00 -> 12.34 -> 12 (floor)
        assert_eq!(program.points_for_amount("amount", 1_234, 10_000), Ok(12));
        // 1.5x -> 18.51 -> 18
        assert_eq!(program.points_for_amount("amount", 1_234, 15_000), Ok(18));
        program.rounding = Rounding::HalfUp;
        assert_eq!(program.points_for_amount("amount", 1_250, 10_000), Ok(13));
        program.rounding = Rounding::Ceil;
        assert_eq!(program.points_for_amount("amount", 1_201, 10_000), Ok(13));
        // 3 points per 10.00 in JPY (no minor unit): 1000 JPY -> 300
        program.currency = Currency {
            code: "JPY".into(),
            minor_unit_exponent: 0,
        };
        program.earn_rate = EarnRate {
            points: 3,
            per_major_units: 10,
        };
        assert_eq!(program.points_for_amount("amount", 1_000, 10_000), Ok(300));
        assert!(program.points_for_amount("amount", -1, 10_000).is_err());
        // i64::MAX yen at 3 per 10 is beyond what one entry may hold
        assert_eq!(
            field_of(program.points_for_amount("amount", i64::MAX, 10_000).map(|_| ())),
            "amount"
        );
    }

    #[test]
    fn maturity_and_expiry_dates() {
        let program = sample_program();
        let earned = "2026-01-31T10:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            program.matures_at(earned).unwrap(),
            "2026-02-14T10:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            program.expires_at(earned).unwrap(),
            Some("2027-01-31T10:00:00Z".parse::<DateTime<Utc>>().unwrap())
        );
        let mut one_month = program.clone();
        one_month.expiry_months = 1;
        one_month.pending_days = 0;
        // January 31st plus a month clamps to February's last day.
        assert_eq!(
            one_month.expires_at(earned).unwrap(),
            Some("2026-02-28T10:00:00Z".parse::<DateTime<Utc>>().unwrap())
        );
        let mut never = program;
        never.expiry_months = 0;
        assert_eq!(never.expires_at(earned).unwrap(), None);
    }
}
