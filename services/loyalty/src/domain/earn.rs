//! How many points a purchase earns: the base rate with the tier multiplier, campaign
//! bonuses within their budgets, the referral bonus, and how many points a refund takes
//! back. One calculation serves both earning and quoting ([`quote_points`] has no side
//! effect; the service turns its quote into an [`Earn`] operation).

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, NaiveDate, Utc};

use super::error::DomainError;
use super::ids::CustomerId;
use super::ledger::EarnSource;
use super::operation::Earn;
use super::program::{MAX_MULTIPLIER_BASIS_POINTS, MAX_POINTS_PER_ENTRY, Program, validate_label};

/// Most lines one basket may have.
pub const MAX_BASKET_LINES: usize = 1_000;
pub const CAMPAIGN_ID_MAX_BYTES: usize = 256;

/// A customer's birthday, as customer-profile keeps it (no year needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Birthday {
    month: u32,
    day: u32,
}

impl Birthday {
    /// Refuses days that no year has (February 30th); February 29th is accepted.
    pub fn new(month: u32, day: u32) -> Result<Self, DomainError> {
        // 2024 is a leap year, so every real month/day pair is a date in it.
        if NaiveDate::from_ymd_opt(2024, month, day).is_none() {
            return Err(DomainError::invalid("birthday", "is not a day of the year"));
        }
        Ok(Self { month, day })
    }

    pub fn month(&self) -> u32 {
        self.month
    }

    pub fn day(&self) -> u32 {
        self.day
    }

    /// Whether `date` (in the tenant's time zone) is the birthday. Someone born on February
    /// 29th celebrates on February 28th in other years, so the promotion is never lost.
    pub fn falls_on(&self, date: NaiveDate) -> bool {
        if date.month() == self.month && date.day() == self.day {
            return true;
        }
        let leap_day = self.month == 2 && self.day == 29;
        leap_day && !date.leap_year() && date.month() == 2 && date.day() == 28
    }
}

/// What a campaign adds when it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignBonus {
    /// Extra points at this multiple of the *base* rate (without the tier multiplier), on
    /// the campaign's qualifying amount: 10000 doubles the base points.
    ExtraMultiplier { basis_points: u32 },
    /// A fixed number of points per qualifying purchase.
    FixedPoints { points: i64 },
}

/// When a campaign applies. Empty sets mean "no condition".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CampaignConditions {
    /// The customer must be in at least one of these segments.
    pub segment_ids: BTreeSet<String>,
    /// The purchase must come through one of these channels.
    pub channels: BTreeSet<String>,
    /// Only basket lines in these categories count (for `min_amount_minor` and the
    /// multiplier bonus).
    pub categories: BTreeSet<String>,
    /// The qualifying amount must reach this (minor units); 0 = any amount.
    pub min_amount_minor: i64,
    /// Only a customer's first purchase (an opening promotion).
    pub first_purchase_only: bool,
    /// Only on the customer's birthday.
    pub birthday_only: bool,
}

/// A time-boxed bonus rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub id: String,
    /// Applies to purchases made in `[starts_at, ends_at)`.
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub conditions: CampaignConditions,
    pub bonus: CampaignBonus,
    /// The most points the campaign may ever award; `None` = unlimited.
    pub budget_points: Option<i64>,
    /// Points awarded so far (kept by the store, which adds each award atomically).
    pub awarded_points: i64,
}

impl Campaign {
    /// Checks the campaign; `path` prefixes field names (e.g. `campaign`).
    pub fn validate(&self, path: &str) -> Result<(), DomainError> {
        if self.id.trim().is_empty() || self.id.len() > CAMPAIGN_ID_MAX_BYTES {
            return Err(DomainError::invalid(
                format!("{path}.id"),
                format!("must be 1 to {CAMPAIGN_ID_MAX_BYTES} bytes"),
            ));
        }
        if self.ends_at <= self.starts_at {
            return Err(DomainError::invalid(
                format!("{path}.ends_at"),
                "must be after starts_at",
            ));
        }
        let conditions = &self.conditions;
        for (name, labels) in [
            ("segment_ids", &conditions.segment_ids),
            ("channels", &conditions.channels),
            ("categories", &conditions.categories),
        ] {
            for (index, label) in labels.iter().enumerate() {
                validate_label(&format!("{path}.conditions.{name}[{index}]"), label)?;
            }
        }
        if conditions.min_amount_minor < 0 {
            return Err(DomainError::invalid(
                format!("{path}.conditions.min_amount_minor"),
                "must not be negative",
            ));
        }
        match self.bonus {
            CampaignBonus::ExtraMultiplier { basis_points } => {
                if !(1..=MAX_MULTIPLIER_BASIS_POINTS).contains(&basis_points) {
                    return Err(DomainError::invalid(
                        format!("{path}.bonus.basis_points"),
                        format!("must be between 1 and {MAX_MULTIPLIER_BASIS_POINTS}"),
                    ));
                }
            }
            CampaignBonus::FixedPoints { points } => {
                if !(1..=MAX_POINTS_PER_ENTRY).contains(&points) {
                    return Err(DomainError::invalid(
                        format!("{path}.bonus.points"),
                        format!("must be between 1 and {MAX_POINTS_PER_ENTRY}"),
                    ));
                }
            }
        }
        if self.budget_points.is_some_and(|budget| budget < 0) {
            return Err(DomainError::invalid(
                format!("{path}.budget_points"),
                "must not be negative",
            ));
        }
        if self.awarded_points < 0 {
            return Err(DomainError::invalid(
                format!("{path}.awarded_points"),
                "must not be negative",
            ));
        }
        Ok(())
    }

    /// Points still available; `None` = unlimited.
    pub fn remaining_budget(&self) -> Option<i64> {
        self.budget_points
            .map(|budget| budget.saturating_sub(self.awarded_points).max(0))
    }

    pub fn is_running_at(&self, at: DateTime<Utc>) -> bool {
        self.starts_at <= at && at < self.ends_at
    }
}

/// One line of a basket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasketLine {
    /// Minor units, not negative.
    pub amount_minor: i64,
    pub category: Option<String>,
}

/// What is being bought. A purchase known only by its total is a one-line basket without a
/// category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Basket {
    pub currency_code: String,
    pub lines: Vec<BasketLine>,
}

/// Facts about the member and the purchase that the caller knows and the domain does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarnContext {
    /// The member's tier now (its multiplier applies).
    pub tier: Option<String>,
    pub purchased_at: DateTime<Utc>,
    /// The purchase's date in the tenant's time zone (for birthdays).
    pub purchase_local_date: NaiveDate,
    pub channel: Option<String>,
    /// Segments the customer is in.
    pub segment_ids: BTreeSet<String>,
    pub is_first_purchase: bool,
    pub birthday: Option<Birthday>,
}

/// What one campaign added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignAward {
    pub campaign_id: String,
    /// Points awarded, at most the campaign's remaining budget.
    pub points: i64,
    /// What the campaign would have awarded without a budget; more than `points` when the
    /// budget ran out.
    pub uncapped_points: i64,
}

/// The points a basket earns, with its breakdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarnQuote {
    /// The basket total without excluded categories; counts for spend-based tiers.
    pub eligible_amount_minor: i64,
    /// `rounding(eligible amount × earn rate × tier multiplier)`.
    pub base_points: i64,
    pub tier_multiplier_bp: u32,
    /// Campaigns whose conditions matched, in the order given.
    pub campaign_awards: Vec<CampaignAward>,
    /// `base_points` plus every award.
    pub total_points: i64,
}

impl EarnQuote {
    /// The EARN operation for this quote (entry id: [`EntryId::accrual`] of `purchase_id`).
    /// `origin_customer` is the customer who bought, when the account is a survivor of a
    /// merge.
    ///
    /// [`EntryId::accrual`]: super::ids::EntryId::accrual
    pub fn to_earn(
        &self,
        purchase_id: &str,
        purchased_at: DateTime<Utc>,
        origin_customer: Option<CustomerId>,
    ) -> Earn {
        Earn {
            points: self.total_points,
            earned_at: purchased_at,
            source: EarnSource::Purchase {
                purchase_id: purchase_id.to_owned(),
                spend_minor: self.eligible_amount_minor,
                campaign_awards: self.campaign_awards.clone(),
            },
            origin_customer,
        }
    }
}

/// Points for a basket: `rounding(eligible amount × earn rate × tier multiplier)` plus, for
/// every campaign running at the purchase time whose conditions hold, its bonus (each
/// rounded on its own, each capped by its remaining budget). Pure: quoting and earning call
/// the same function, and nothing is charged until the EARN entry is stored.
pub fn quote_points(
    program: &Program,
    campaigns: &[Campaign],
    basket: &Basket,
    context: &EarnContext,
) -> Result<EarnQuote, DomainError> {
    if basket.currency_code != program.currency.code {
        return Err(DomainError::invalid(
            "basket.currency_code",
            format!("must be the program's currency {}", program.currency.code),
        ));
    }
    if basket.lines.is_empty() {
        return Err(DomainError::invalid("basket.lines", "must not be empty"));
    }
    if basket.lines.len() > MAX_BASKET_LINES {
        return Err(DomainError::invalid(
            "basket.lines",
            format!("must have at most {MAX_BASKET_LINES} lines"),
        ));
    }
    for (index, line) in basket.lines.iter().enumerate() {
        if line.amount_minor < 0 {
            return Err(DomainError::invalid(
                format!("basket.lines[{index}].amount_minor"),
                "must not be negative",
            ));
        }
    }

    let eligible_lines: Vec<&BasketLine> = basket
        .lines
        .iter()
        .filter(|line| {
            line.category
                .as_ref()
                .is_none_or(|category| !program.excluded_categories.contains(category))
        })
        .collect();
    // Summing before rounding: per-line rounding would lose a fraction on every line.
    let eligible_amount_minor = sum_amounts(eligible_lines.iter().copied())?;
    let tier_multiplier_bp = program.tier_multiplier_bp(context.tier.as_deref());
    let base_points = program.points_for_amount("basket", eligible_amount_minor, tier_multiplier_bp)?;

    let mut campaign_awards = Vec::new();
    let mut total_points = base_points;
    for campaign in campaigns {
        let Some(qualifying_amount) = campaign_qualifying_amount(campaign, &eligible_lines, context)? else {
            continue;
        };
        let uncapped_points = match campaign.bonus {
            CampaignBonus::ExtraMultiplier { basis_points } => {
                program.points_for_amount("basket", qualifying_amount, basis_points)?
            }
            CampaignBonus::FixedPoints { points } => points.max(0),
        };
        let points = campaign
            .remaining_budget()
            .map_or(uncapped_points, |remaining| uncapped_points.min(remaining));
        total_points = total_points
            .checked_add(points)
            .filter(|total| *total <= MAX_POINTS_PER_ENTRY)
            .ok_or_else(|| DomainError::invalid("basket", "earns more points than one entry may hold"))?;
        campaign_awards.push(CampaignAward {
            campaign_id: campaign.id.clone(),
            points,
            uncapped_points,
        });
    }

    Ok(EarnQuote {
        eligible_amount_minor,
        base_points,
        tier_multiplier_bp,
        campaign_awards,
        total_points,
    })
}

/// The amount a campaign applies to, or `None` when it does not apply to this purchase.
fn campaign_qualifying_amount(
    campaign: &Campaign,
    eligible_lines: &[&BasketLine],
    context: &EarnContext,
) -> Result<Option<i64>, DomainError> {
    let conditions = &campaign.conditions;
    if !campaign.is_running_at(context.purchased_at) {
        return Ok(None);
    }
    if !conditions.segment_ids.is_empty() && conditions.segment_ids.is_disjoint(&context.segment_ids) {
        return Ok(None);
    }
    if !conditions.channels.is_empty()
        && !context
            .channel
            .as_ref()
            .is_some_and(|channel| conditions.channels.contains(channel))
    {
        return Ok(None);
    }
    if conditions.first_purchase_only && !context.is_first_purchase {
        return Ok(None);
    }
    if conditions.birthday_only
        && !context
            .birthday
            .is_some_and(|birthday| birthday.falls_on(context.purchase_local_date))
    {
        return Ok(None);
    }
    let qualifying_amount = if conditions.categories.is_empty() {
        sum_amounts(eligible_lines.iter().copied())?
    } else {
        sum_amounts(eligible_lines.iter().copied().filter(|line| {
            line.category
                .as_ref()
                .is_some_and(|category| conditions.categories.contains(category))
        }))?
    };
    // A category campaign needs at least one line of its categories, whatever its minimum.
    if !conditions.categories.is_empty() && qualifying_amount == 0 {
        return Ok(None);
    }
    if qualifying_amount < conditions.min_amount_minor {
        return Ok(None);
    }
    Ok(Some(qualifying_amount))
}

fn sum_amounts<'a>(lines: impl Iterator<Item = &'a BasketLine>) -> Result<i64, DomainError> {
    lines
        .map(|line| line.amount_minor)
        .try_fold(0_i64, i64::checked_add)
        .ok_or_else(|| DomainError::invalid("basket.lines", "total is out of range"))
}

/// The referrer's bonus for a purchase, if it earns one: the program pays a bonus, the
/// purchase is the referred customer's first, there is a referrer and it is not the
/// customer themself. Apply it as an EARN on the referrer's account with entry id
/// [`EntryId::referral`](super::ids::EntryId::referral) of the purchase, so it is paid once.
pub fn referral_bonus(
    program: &Program,
    referrer: Option<&CustomerId>,
    referred: &CustomerId,
    is_first_purchase: bool,
) -> Option<ReferralBonus> {
    let referrer = referrer?;
    if !is_first_purchase || program.referral_bonus_points <= 0 || referrer == referred {
        return None;
    }
    Some(ReferralBonus {
        referrer: referrer.clone(),
        points: program.referral_bonus_points,
    })
}

/// A referral bonus to pay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferralBonus {
    pub referrer: CustomerId,
    pub points: i64,
}

impl ReferralBonus {
    /// The EARN operation paying it.
    pub fn to_earn(&self, referred: &CustomerId, purchase_id: &str, purchased_at: DateTime<Utc>) -> Earn {
        Earn {
            points: self.points,
            earned_at: purchased_at,
            source: EarnSource::Referral {
                referred_customer: referred.clone(),
                purchase_id: purchase_id.to_owned(),
            },
            origin_customer: None,
        }
    }
}

/// Points one refund takes back from an accrual of `accrual_points` for a purchase of
/// `purchase_amount_minor`: proportional to the refunded share, rounded down on the
/// cumulative refunded amount. Rounding the running total (not each refund) means partial
/// refunds add up to exactly the accrual once the whole purchase is refunded, and never
/// take more than a single full refund would.
pub fn reversal_points(
    accrual_points: i64,
    purchase_amount_minor: i64,
    refunded_before_minor: i64,
    refund_minor: i64,
) -> Result<i64, DomainError> {
    if accrual_points < 0 {
        return Err(DomainError::invalid("accrual_points", "must not be negative"));
    }
    if purchase_amount_minor < 0 {
        return Err(DomainError::invalid("purchase.amount", "must not be negative"));
    }
    if refunded_before_minor < 0 || refund_minor < 0 {
        return Err(DomainError::invalid("refund.amount", "must not be negative"));
    }
    let refunded_after = refunded_before_minor
        .checked_add(refund_minor)
        .filter(|after| *after <= purchase_amount_minor)
        .ok_or_else(|| {
            DomainError::invalid("refund.amount", "exceeds what is left of the purchase to refund")
        })?;
    if purchase_amount_minor == 0 {
        return Ok(0);
    }
    let reversed_through =
        |refunded: i64| i128::from(accrual_points) * i128::from(refunded) / i128::from(purchase_amount_minor);
    // Both terms are at most accrual_points, so the difference fits an i64.
    i64::try_from(reversed_through(refunded_after) - reversed_through(refunded_before_minor))
        .map_err(|_| DomainError::invalid("refund.amount", "is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field path and how to break that field.
    type Mutation = (&'static str, fn(&mut Campaign));
    use crate::domain::program::tests::sample_program;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn basket(lines: &[(i64, Option<&str>)]) -> Basket {
        Basket {
            currency_code: "EUR".into(),
            lines: lines
                .iter()
                .map(|(amount_minor, category)| BasketLine {
                    amount_minor: *amount_minor,
                    category: category.map(str::to_owned),
                })
                .collect(),
        }
    }

    fn context() -> EarnContext {
        EarnContext {
            tier: None,
            purchased_at: at("2026-06-15T12:00:00Z"),
            purchase_local_date: NaiveDate::from_ymd_opt(2026, 6, 15).unwrap(),
            channel: Some("store".into()),
            segment_ids: BTreeSet::from(["champions".to_owned()]),
            is_first_purchase: false,
            birthday: None,
        }
    }

    fn campaign(id: &str, bonus: CampaignBonus) -> Campaign {
        Campaign {
            id: id.into(),
            starts_at: at("2026-06-01T00:00:00Z"),
            ends_at: at("2026-07-01T00:00:00Z"),
            conditions: CampaignConditions::default(),
            bonus,
            budget_points: None,
            awarded_points: 0,
        }
    }

    #[test]
    fn base_points_with_tier_multiplier_and_exclusions() {
        let program = sample_program();
        let mut context = context();
        context.tier = Some("gold".into());
        // 99.99 eligible (the gift card does not earn) x 1.5 = 149.985 -> 149
        let quote = quote_points(
            &program,
            &[],
            &basket(&[(5_000, Some("shoes")), (4_999, None), (10_000, Some("gift-card"))]),
            &context,
        )
        .unwrap();
        assert_eq!(quote.eligible_amount_minor, 9_999);
        assert_eq!(quote.tier_multiplier_bp, 15_000);
        assert_eq!(quote.base_points, 149);
        assert_eq!(quote.total_points, 149);
        assert!(quote.campaign_awards.is_empty());
    }

    #[test]
    fn lines_are_summed_before_rounding() {
        let program = sample_program();
        // Three lines of 0.50: per-line floor would give 0, the sum earns 1.
        let quote = quote_points(
            &program,
            &[],
            &basket(&[(50, None), (50, None), (50, None)]),
            &context(),
        )
        .unwrap();
        assert_eq!(quote.base_points, 1);
    }

    #[test]
    fn basket_validation_names_fields() {
        let program = sample_program();
        let mut wrong_currency = basket(&[(100, None)]);
        wrong_currency.currency_code = "USD".into();
        let cases = [
            (wrong_currency, "basket.currency_code"),
            (basket(&[]), "basket.lines"),
            (basket(&[(100, None), (-1, None)]), "basket.lines[1].amount_minor"),
            (basket(&[(i64::MAX, None), (1, None)]), "basket.lines"),
        ];
        for (basket, field) in cases {
            match quote_points(&program, &[], &basket, &context()) {
                Err(DomainError::InvalidField { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected {field} to be refused, got {other:?}"),
            }
        }
    }

    #[test]
    fn multiplier_campaign_uses_the_base_rate_and_fixed_campaign_adds_points() {
        let program = sample_program();
        let mut context = context();
        context.tier = Some("gold".into());
        let campaigns = [
            campaign("double", CampaignBonus::ExtraMultiplier { basis_points: 10_000 }),
            campaign("fixed", CampaignBonus::FixedPoints { points: 50 }),
        ];
        let quote = quote_points(&program, &campaigns, &basket(&[(10_000, None)]), &context).unwrap();
        assert_eq!(quote.base_points, 150); // 100 x 1.5
        assert_eq!(quote.campaign_awards[0].points, 100); // +1x of the base rate, not of gold's
        assert_eq!(quote.campaign_awards[1].points, 50);
        assert_eq!(quote.total_points, 300);
    }

    #[test]
    fn campaign_conditions() {
        let program = sample_program();
        let bonus = CampaignBonus::FixedPoints { points: 10 };
        let applies = |campaign: Campaign, context: &EarnContext, basket: &Basket| {
            !quote_points(&program, &[campaign], basket, context)
                .unwrap()
                .campaign_awards
                .is_empty()
        };
        let one = basket(&[(2_000, Some("shoes"))]);

        // Time box: start inclusive, end exclusive.
        let mut timed = campaign("t", bonus);
        timed.starts_at = context().purchased_at;
        assert!(applies(timed.clone(), &context(), &one));
        timed.ends_at = context().purchased_at;
        timed.starts_at = at("2026-01-01T00:00:00Z");
        assert!(!applies(timed, &context(), &one));

        let mut by_segment = campaign("s", bonus);
        by_segment.conditions.segment_ids = BTreeSet::from(["at-risk".to_owned()]);
        assert!(!applies(by_segment.clone(), &context(), &one));
        by_segment.conditions.segment_ids.insert("champions".into());
        assert!(applies(by_segment, &context(), &one));

        let mut by_channel = campaign("c", bonus);
        by_channel.conditions.channels = BTreeSet::from(["mobile-app".to_owned()]);
        assert!(!applies(by_channel.clone(), &context(), &one));
        let mut app = context();
        app.channel = Some("mobile-app".into());
        assert!(applies(by_channel.clone(), &app, &one));
        app.channel = None;
        assert!(!applies(by_channel, &app, &one));

        let mut minimum = campaign("m", bonus);
        minimum.conditions.min_amount_minor = 2_000;
        assert!(applies(minimum.clone(), &context(), &one));
        minimum.conditions.min_amount_minor = 2_001;
        assert!(!applies(minimum, &context(), &one));

        let mut opening = campaign("o", bonus);
        opening.conditions.first_purchase_only = true;
        assert!(!applies(opening.clone(), &context(), &one));
        let mut first = context();
        first.is_first_purchase = true;
        assert!(applies(opening, &first, &one));

        let mut birthday = campaign("b", bonus);
        birthday.conditions.birthday_only = true;
        assert!(!applies(birthday.clone(), &context(), &one));
        let mut born_today = context();
        born_today.birthday = Some(Birthday::new(6, 15).unwrap());
        assert!(applies(birthday.clone(), &born_today, &one));
        born_today.birthday = Some(Birthday::new(6, 16).unwrap());
        assert!(!applies(birthday, &born_today, &one));
    }

    #[test]
    fn category_campaign_counts_only_its_lines() {
        let program = sample_program();
        let mut shoes = campaign("shoes", CampaignBonus::ExtraMultiplier { basis_points: 20_000 });
        shoes.conditions.categories = BTreeSet::from(["shoes".to_owned()]);
        shoes.conditions.min_amount_minor = 3_000;
        let mixed = basket(&[(3_000, Some("shoes")), (7_000, Some("food"))]);
        let quote = quote_points(&program, &[shoes.clone()], &mixed, &context()).unwrap();
        assert_eq!(quote.base_points, 100);
        assert_eq!(quote.campaign_awards[0].points, 60); // 2x extra on 30.00
        let below_minimum = basket(&[(2_999, Some("shoes")), (7_000, Some("food"))]);
        let quote = quote_points(&program, &[shoes.clone()], &below_minimum, &context()).unwrap();
        assert!(quote.campaign_awards.is_empty());
        // A fixed bonus limited to categories needs one of its lines.
        shoes.bonus = CampaignBonus::FixedPoints { points: 5 };
        shoes.conditions.min_amount_minor = 0;
        let quote = quote_points(&program, &[shoes], &basket(&[(7_000, Some("food"))]), &context()).unwrap();
        assert!(quote.campaign_awards.is_empty());
    }

    #[test]
    fn budget_caps_the_award() {
        let program = sample_program();
        let mut capped = campaign("capped", CampaignBonus::FixedPoints { points: 50 });
        capped.budget_points = Some(1_000);
        capped.awarded_points = 970;
        let quote = quote_points(&program, &[capped.clone()], &basket(&[(1_000, None)]), &context()).unwrap();
        assert_eq!(
            quote.campaign_awards,
            vec![CampaignAward {
                campaign_id: "capped".into(),
                points: 30,
                uncapped_points: 50,
            }]
        );
        assert_eq!(quote.total_points, 40);
        capped.awarded_points = 1_000;
        let quote = quote_points(&program, &[capped], &basket(&[(1_000, None)]), &context()).unwrap();
        assert_eq!(quote.campaign_awards[0].points, 0);
        assert_eq!(quote.total_points, 10);
    }

    #[test]
    fn quote_becomes_an_earn() {
        let program = sample_program();
        let quote = quote_points(&program, &[], &basket(&[(1_234, None)]), &context()).unwrap();
        let earn = quote.to_earn("order-1", context().purchased_at, None);
        assert_eq!(earn.points, 12);
        assert_eq!(
            earn.source,
            EarnSource::Purchase {
                purchase_id: "order-1".into(),
                spend_minor: 1_234,
                campaign_awards: vec![],
            }
        );
    }

    #[test]
    fn campaign_validation_names_fields() {
        let valid = campaign("c", CampaignBonus::FixedPoints { points: 1 });
        assert_eq!(valid.validate("campaign"), Ok(()));
        let cases: Vec<Mutation> = vec![
            ("campaign.id", |c| c.id = " ".into()),
            ("campaign.ends_at", |c| c.ends_at = c.starts_at),
            ("campaign.conditions.channels[0]", |c| {
                c.conditions.channels = BTreeSet::from([String::new()])
            }),
            ("campaign.conditions.min_amount_minor", |c| {
                c.conditions.min_amount_minor = -1
            }),
            ("campaign.bonus.points", |c| {
                c.bonus = CampaignBonus::FixedPoints { points: 0 }
            }),
            ("campaign.bonus.basis_points", |c| {
                c.bonus = CampaignBonus::ExtraMultiplier { basis_points: 0 }
            }),
            ("campaign.budget_points", |c| c.budget_points = Some(-1)),
            ("campaign.awarded_points", |c| c.awarded_points = -1),
        ];
        for (field, mutate) in cases {
            let mut campaign = valid.clone();
            mutate(&mut campaign);
            match campaign.validate("campaign") {
                Err(DomainError::InvalidField { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected {field} to be refused, got {other:?}"),
            }
        }
    }

    #[test]
    fn birthdays() {
        assert!(Birthday::new(2, 30).is_err());
        assert!(Birthday::new(13, 1).is_err());
        let leap = Birthday::new(2, 29).unwrap();
        let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert!(leap.falls_on(date(2028, 2, 29)));
        assert!(!leap.falls_on(date(2028, 2, 28)));
        assert!(leap.falls_on(date(2027, 2, 28)));
        assert!(!leap.falls_on(date(2027, 3, 1)));
        let ordinary = Birthday::new(12, 31).unwrap();
        assert!(ordinary.falls_on(date(2026, 12, 31)));
        assert!(!ordinary.falls_on(date(2026, 12, 30)));
    }

    #[test]
    fn referral_rules() {
        let program = sample_program();
        let referrer = CustomerId::from("ann");
        let referred = CustomerId::from("bob");
        assert_eq!(
            referral_bonus(&program, Some(&referrer), &referred, true),
            Some(ReferralBonus {
                referrer: referrer.clone(),
                points: 200,
            })
        );
        assert_eq!(referral_bonus(&program, Some(&referrer), &referred, false), None);
        assert_eq!(referral_bonus(&program, None, &referred, true), None);
        assert_eq!(referral_bonus(&program, Some(&referred), &referred, true), None);
        let mut no_bonus = program;
        no_bonus.referral_bonus_points = 0;
        assert_eq!(referral_bonus(&no_bonus, Some(&referrer), &referred, true), None);
    }

    proptest::proptest! {
        #[test]
        fn partial_refunds_never_exceed_and_always_complete(
            accrual_points in 0..10_000_i64,
            refunds in proptest::collection::vec(1..5_000_i64, 1..8),
        ) {
            let purchase: i64 = refunds.iter().sum();
            let mut refunded = 0;
            let mut reversed = 0;
            for refund in refunds {
                let points = reversal_points(accrual_points, purchase, refunded, refund).unwrap();
                proptest::prop_assert!(points >= 0);
                refunded += refund;
                reversed += points;
                // Never more than the refunded share (rounded down).
                proptest::prop_assert!(i128::from(reversed) * i128::from(purchase)
                    <= i128::from(accrual_points) * i128::from(refunded));
            }
            proptest::prop_assert_eq!(reversed, accrual_points);
        }

        #[test]
        fn quote_total_is_base_plus_awards_within_budgets(
            amounts in proptest::collection::vec(0..100_000_i64, 1..5),
            budget in proptest::option::of(0..500_i64),
            awarded in 0..600_i64,
            extra_bp in 1..30_000_u32,
        ) {
            let program = sample_program();
            let lines: Vec<(i64, Option<&str>)> = amounts.iter().map(|amount| (*amount, None)).collect();
            let mut multiplier = campaign("x", CampaignBonus::ExtraMultiplier { basis_points: extra_bp });
            multiplier.budget_points = budget;
            multiplier.awarded_points = awarded;
            let fixed = campaign("f", CampaignBonus::FixedPoints { points: 25 });
            let quote = quote_points(&program, &[multiplier, fixed], &basket(&lines), &context()).unwrap();
            let awards: i64 = quote.campaign_awards.iter().map(|award| award.points).sum();
            proptest::prop_assert_eq!(quote.total_points, quote.base_points + awards);
            proptest::prop_assert_eq!(quote.base_points, quote.eligible_amount_minor / 100);
            let first = &quote.campaign_awards[0];
            proptest::prop_assert!(first.points <= first.uncapped_points);
            if let Some(budget) = budget {
                proptest::prop_assert!(first.points <= (budget - awarded).max(0));
            }
        }
    }

    #[test]
    fn partial_refunds_add_up_to_the_accrual() {
        // 100 points for 30.00, refunded 10.00 three times: 33 + 33 + 34.
        assert_eq!(reversal_points(100, 3_000, 0, 1_000), Ok(33));
        assert_eq!(reversal_points(100, 3_000, 1_000, 1_000), Ok(33));
        assert_eq!(reversal_points(100, 3_000, 2_000, 1_000), Ok(34));
        assert_eq!(reversal_points(100, 3_000, 0, 3_000), Ok(100));
        assert_eq!(reversal_points(0, 3_000, 0, 3_000), Ok(0));
        assert_eq!(reversal_points(100, 0, 0, 0), Ok(0));
        assert!(reversal_points(100, 3_000, 2_000, 1_001).is_err());
        assert!(reversal_points(100, 3_000, 0, -1).is_err());
    }
}
