//! How a customer's purchases become scores: per-day aggregates, the RFM window, RFM
//! scores and segments, value classes, ABC classes with the Pareto report, and lifecycle
//! stages. Pure: no IO, no clock (every rule takes its as-of day).
//!
//! The service keeps one [`Aggregates`] blob per customer and rescores a whole tenant in
//! batch ([`score_population`]); between two batches a single changed customer is scored
//! alone against the last batch's [`Cutoffs`], so the batch stays the only place that
//! needs the whole population in memory.
//!
//! Days are UTC calendar days counted from 1970-01-01 ([`epoch_day`]); money is integer
//! minor units; only means and shares are floating point.

use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, Utc};

/// Seconds in a UTC day (no leap seconds in Unix time).
pub const SECONDS_PER_DAY: i64 = 86_400;

/// Number of periods the stability rule looks back over.
pub const STABILITY_LOOKBACK_PERIODS: usize = 4;

/// Layout version of [`Aggregates::encode`]; bump it when the layout changes so old blobs
/// are recognised instead of misread.
const AGGREGATES_VERSION: u8 = 1;
/// Layout version of [`Cutoffs::encode`].
const CUTOFFS_VERSION: u8 = 1;

/// Why bytes could not be decoded, an aggregate could not be updated, or a parameter was
/// refused.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoreError {
    /// The bytes end inside a value.
    Truncated,
    /// The first byte names a layout this code does not know.
    UnsupportedVersion(u8),
    /// The bytes decode but break an invariant of the value (named in the message).
    Malformed(&'static str),
    /// Bytes remain after a complete value: the blob is not what it claims to be.
    TrailingBytes,
    /// A sum leaves the i64 range; refused rather than wrapped so money stays exact.
    Overflow,
    /// ABC shares must satisfy 0 < a_share <= b_share <= 1.
    InvalidAbcThresholds { a_share: f64, b_share: f64 },
}

impl fmt::Display for ScoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("encoded value is truncated"),
            Self::UnsupportedVersion(version) => {
                write!(f, "unsupported encoding version {version}")
            }
            Self::Malformed(what) => write!(f, "malformed encoded value: {what}"),
            Self::TrailingBytes => f.write_str("trailing bytes after encoded value"),
            Self::Overflow => f.write_str("sum out of the i64 range"),
            Self::InvalidAbcThresholds { a_share, b_share } => write!(
                f,
                "ABC shares must satisfy 0 < a_share <= b_share <= 1 (got {a_share}, {b_share})"
            ),
        }
    }
}

impl std::error::Error for ScoreError {}

/// The UTC day of a Unix time: floor division, so times before 1970 land on the right day.
pub fn epoch_day(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(SECONDS_PER_DAY)
}

/// The UTC day of an instant.
pub fn day_of(time: DateTime<Utc>) -> i64 {
    epoch_day(time.timestamp())
}

// ---------------------------------------------------------------------------------------
// Aggregates
// ---------------------------------------------------------------------------------------

/// What happened on one day for one customer. Refunds land on their own day with zero
/// purchases, so a day may hold a negative net and no purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PurchaseDay {
    pub day: i64,
    pub purchases: i64,
    pub net_minor: i64,
    pub margin_minor: i64,
}

impl PurchaseDay {
    /// A day whose three sums are zero carries nothing and is not kept, so equal histories
    /// have equal encodings.
    fn is_zero(&self) -> bool {
        self.purchases == 0 && self.net_minor == 0 && self.margin_minor == 0
    }

    fn plus(&self, other: &PurchaseDay) -> Result<PurchaseDay, ScoreError> {
        Ok(PurchaseDay {
            day: self.day,
            purchases: checked_sum(self.purchases, other.purchases)?,
            net_minor: checked_sum(self.net_minor, other.net_minor)?,
            margin_minor: checked_sum(self.margin_minor, other.margin_minor)?,
        })
    }
}

fn checked_sum(left: i64, right: i64) -> Result<i64, ScoreError> {
    left.checked_add(right).ok_or(ScoreError::Overflow)
}

/// A customer's purchase history reduced to per-day sums: everything the scores need,
/// small enough to keep one blob per customer. Days are strictly increasing and no day is
/// all zero (the representation is canonical, so merging is exact and order-free).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Aggregates {
    days: Vec<PurchaseDay>,
}

impl Aggregates {
    pub fn new() -> Self {
        Self::default()
    }

    /// The per-day sums, by increasing day.
    pub fn days(&self) -> &[PurchaseDay] {
        &self.days
    }

    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    /// Adds deltas to a day: a purchase is `(1, amount, margin)`, a refund
    /// `(0, -amount, 0)` on the refund's own day, and the negation of either undoes it.
    /// A day left all zero is removed. Fails without change if a sum would overflow.
    pub fn record(
        &mut self,
        day: i64,
        purchases_delta: i64,
        net_delta_minor: i64,
        margin_delta_minor: i64,
    ) -> Result<(), ScoreError> {
        let delta = PurchaseDay {
            day,
            purchases: purchases_delta,
            net_minor: net_delta_minor,
            margin_minor: margin_delta_minor,
        };
        match self.days.binary_search_by_key(&day, |existing| existing.day) {
            Ok(position) => {
                let Some(existing) = self.days.get_mut(position) else {
                    return Ok(());
                };
                let summed = existing.plus(&delta)?;
                if summed.is_zero() {
                    self.days.remove(position);
                } else {
                    *existing = summed;
                }
            }
            Err(position) => {
                if !delta.is_zero() {
                    self.days.insert(position, delta);
                }
            }
        }
        Ok(())
    }

    /// Adds another customer's history day by day (merging duplicate customers). Exact and
    /// commutative, so an unmerge can rebuild the survivor by summing its remaining origin
    /// buckets in any order. Fails without change if a sum would overflow.
    pub fn merge_from(&mut self, other: &Aggregates) -> Result<(), ScoreError> {
        let mut merged = Vec::with_capacity(self.days.len().saturating_add(other.days.len()));
        let mut mine = self.days.iter().peekable();
        let mut theirs = other.days.iter().peekable();
        loop {
            let next = match (mine.peek(), theirs.peek()) {
                (Some(&&left), Some(&&right)) => match left.day.cmp(&right.day) {
                    Ordering::Less => mine.next().copied(),
                    Ordering::Greater => theirs.next().copied(),
                    Ordering::Equal => {
                        mine.next();
                        theirs.next();
                        Some(left.plus(&right)?)
                    }
                },
                (Some(_), None) => mine.next().copied(),
                (None, Some(_)) => theirs.next().copied(),
                (None, None) => break,
            };
            if let Some(day) = next.filter(|day| !day.is_zero()) {
                merged.push(day);
            }
        }
        self.days = merged;
        Ok(())
    }

    /// The stored blob: a version byte, the day count, then per day the gap to the previous
    /// day and the three sums as zigzag varints. Typical days take 6 to 10 bytes, and
    /// decoding is a single pass without allocation beyond the result.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.days.len().saturating_mul(8).saturating_add(2));
        out.push(AGGREGATES_VERSION);
        put_varint(&mut out, self.days.len() as u128);
        let mut previous: Option<i64> = None;
        for day in &self.days {
            match previous {
                // Days strictly increase, so the gap minus one is never negative.
                Some(previous) => {
                    let gap = i128::from(day.day) - i128::from(previous) - 1;
                    put_varint(&mut out, u128::try_from(gap).unwrap_or(0));
                }
                None => put_varint(&mut out, zigzag(i128::from(day.day))),
            }
            put_varint(&mut out, zigzag(i128::from(day.purchases)));
            put_varint(&mut out, zigzag(i128::from(day.net_minor)));
            put_varint(&mut out, zigzag(i128::from(day.margin_minor)));
            previous = Some(day.day);
        }
        out
    }

    /// Reads a blob written by [`Aggregates::encode`], refusing anything that is not a
    /// canonical value (so a corrupt blob fails loudly instead of skewing scores).
    pub fn decode(bytes: &[u8]) -> Result<Self, ScoreError> {
        let mut reader = Reader::new(bytes);
        let version = reader.byte()?;
        if version != AGGREGATES_VERSION {
            return Err(ScoreError::UnsupportedVersion(version));
        }
        let count = reader.varint_u64()?;
        // Each day takes at least four bytes: bound the allocation by the input.
        let capacity = usize::try_from(count)
            .unwrap_or(usize::MAX)
            .min(reader.remaining() / 4);
        let mut days = Vec::with_capacity(capacity);
        let mut previous: Option<i64> = None;
        for _ in 0..count {
            let day = match previous {
                Some(previous) => {
                    let gap = reader.varint_u64()?;
                    let day = i128::from(previous) + 1 + i128::from(gap);
                    i64::try_from(day).map_err(|_| ScoreError::Malformed("day out of range"))?
                }
                None => reader.varint_i64()?,
            };
            let entry = PurchaseDay {
                day,
                purchases: reader.varint_i64()?,
                net_minor: reader.varint_i64()?,
                margin_minor: reader.varint_i64()?,
            };
            if entry.is_zero() {
                return Err(ScoreError::Malformed("all-zero day"));
            }
            days.push(entry);
            previous = Some(day);
        }
        reader.finish()?;
        Ok(Self { days })
    }

    /// The first day with a purchase (refund-only days do not count).
    pub fn first_purchase_day(&self) -> Option<i64> {
        self.days.iter().find(|d| d.purchases > 0).map(|d| d.day)
    }

    /// The last day with a purchase (refund-only days do not count).
    pub fn last_purchase_day(&self) -> Option<i64> {
        self.days.iter().rev().find(|d| d.purchases > 0).map(|d| d.day)
    }

    /// Purchases over the whole history (saturating: a display figure, not a balance).
    pub fn lifetime_purchases(&self) -> i64 {
        self.days.iter().fold(0, |sum, d| sum.saturating_add(d.purchases))
    }

    /// Net revenue over the whole history, refunds deducted (saturating).
    pub fn lifetime_net_minor(&self) -> i64 {
        self.days.iter().fold(0, |sum, d| sum.saturating_add(d.net_minor))
    }

    /// Margin over the whole history (saturating).
    pub fn lifetime_margin_minor(&self) -> i64 {
        self.days
            .iter()
            .fold(0, |sum, d| sum.saturating_add(d.margin_minor))
    }

    /// RFM inputs over the days `d` with `as_of_day - window_days < d <= as_of_day`;
    /// `None` when the window holds no purchase (the customer is outside the RFM
    /// population). Monetary includes refunds booked in the window, so it may be zero or
    /// negative. Sums saturate instead of failing: they are analytics inputs.
    pub fn window(&self, as_of_day: i64, window_days: i64) -> Option<WindowValues> {
        let after_day = as_of_day.saturating_sub(window_days);
        let mut frequency: i64 = 0;
        let mut monetary_minor: i64 = 0;
        let mut last_purchase_day = None;
        for day in self
            .days
            .iter()
            .filter(|d| d.day > after_day && d.day <= as_of_day)
        {
            frequency = frequency.saturating_add(day.purchases);
            monetary_minor = monetary_minor.saturating_add(day.net_minor);
            if day.purchases > 0 {
                last_purchase_day = Some(day.day);
            }
        }
        if frequency < 1 {
            return None;
        }
        Some(WindowValues {
            last_purchase_day: last_purchase_day?,
            frequency,
            monetary_minor,
        })
    }

    /// Days on or before `as_of_day`: every rule that takes an as-of day ignores later
    /// days, so a rescore of the past sees the past only.
    fn days_until(&self, as_of_day: i64) -> impl Iterator<Item = &PurchaseDay> {
        self.days.iter().take_while(move |d| d.day <= as_of_day)
    }
}

/// A customer's RFM inputs over one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowValues {
    /// The latest day in the window with a purchase.
    pub last_purchase_day: i64,
    /// Purchases in the window.
    pub frequency: i64,
    /// Net revenue in the window, refunds booked in it deducted.
    pub monetary_minor: i64,
}

impl WindowValues {
    /// Days since the last purchase, as of the window's end.
    pub fn recency_days(&self, as_of_day: i64) -> i64 {
        as_of_day.saturating_sub(self.last_purchase_day)
    }
}

// ---------------------------------------------------------------------------------------
// Classes
// ---------------------------------------------------------------------------------------

/// The ten customer segments named from the R and F scores (M does not enter: the
/// segments describe behaviour, value has its own classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RfmSegment {
    Champions,
    Loyal,
    PotentialLoyalists,
    New,
    Promising,
    NeedAttention,
    AboutToSleep,
    AtRisk,
    CantLose,
    Hibernating,
}

impl RfmSegment {
    pub const ALL: [RfmSegment; 10] = [
        Self::Champions,
        Self::Loyal,
        Self::PotentialLoyalists,
        Self::New,
        Self::Promising,
        Self::NeedAttention,
        Self::AboutToSleep,
        Self::AtRisk,
        Self::CantLose,
        Self::Hibernating,
    ];

    /// The segment of an (R, F) cell. The ten patterns cover the 5 x 5 grid exactly once;
    /// a score outside 1..=5 is clamped into it so the function is total.
    pub fn from_scores(r: u8, f: u8) -> Self {
        // champions 5[4-5], loyal [3-4][4-5], potential_loyalists [4-5][2-3], new 51,
        // promising 41, need_attention 33, about_to_sleep 3[1-2], at_risk [1-2][3-4],
        // cant_lose [1-2]5, hibernating [1-2][1-2]; laid out row by row.
        let f = f.clamp(1, 5);
        match r.clamp(1, 5) {
            5 => match f {
                1 => Self::New,
                2..=3 => Self::PotentialLoyalists,
                _ => Self::Champions,
            },
            4 => match f {
                1 => Self::Promising,
                2..=3 => Self::PotentialLoyalists,
                _ => Self::Loyal,
            },
            3 => match f {
                1..=2 => Self::AboutToSleep,
                3 => Self::NeedAttention,
                _ => Self::Loyal,
            },
            _ => match f {
                1..=2 => Self::Hibernating,
                3..=4 => Self::AtRisk,
                _ => Self::CantLose,
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Champions => "champions",
            Self::Loyal => "loyal",
            Self::PotentialLoyalists => "potential_loyalists",
            Self::New => "new",
            Self::Promising => "promising",
            Self::NeedAttention => "need_attention",
            Self::AboutToSleep => "about_to_sleep",
            Self::AtRisk => "at_risk",
            Self::CantLose => "cant_lose",
            Self::Hibernating => "hibernating",
        }
    }

    pub fn from_str_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|segment| segment.as_str() == name)
    }
}

/// The eight value classes: R, F and M each high or low against the population mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueClass {
    ImportantValue,
    ImportantDevelopment,
    ImportantRetention,
    ImportantWinBack,
    GeneralValue,
    GeneralDevelopment,
    GeneralRetention,
    GeneralWinBack,
}

impl ValueClass {
    pub const ALL: [ValueClass; 8] = [
        Self::ImportantValue,
        Self::ImportantDevelopment,
        Self::ImportantRetention,
        Self::ImportantWinBack,
        Self::GeneralValue,
        Self::GeneralDevelopment,
        Self::GeneralRetention,
        Self::GeneralWinBack,
    ];

    /// M decides important vs general; R and F decide value, development, retention or
    /// win-back.
    pub fn from_highs(r_high: bool, f_high: bool, m_high: bool) -> Self {
        match (r_high, f_high, m_high) {
            (true, true, true) => Self::ImportantValue,
            (true, false, true) => Self::ImportantDevelopment,
            (false, true, true) => Self::ImportantRetention,
            (false, false, true) => Self::ImportantWinBack,
            (true, true, false) => Self::GeneralValue,
            (true, false, false) => Self::GeneralDevelopment,
            (false, true, false) => Self::GeneralRetention,
            (false, false, false) => Self::GeneralWinBack,
        }
    }

    /// (R high, F high, M high).
    pub fn highs(self) -> (bool, bool, bool) {
        match self {
            Self::ImportantValue => (true, true, true),
            Self::ImportantDevelopment => (true, false, true),
            Self::ImportantRetention => (false, true, true),
            Self::ImportantWinBack => (false, false, true),
            Self::GeneralValue => (true, true, false),
            Self::GeneralDevelopment => (true, false, false),
            Self::GeneralRetention => (false, true, false),
            Self::GeneralWinBack => (false, false, false),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ImportantValue => "important_value",
            Self::ImportantDevelopment => "important_development",
            Self::ImportantRetention => "important_retention",
            Self::ImportantWinBack => "important_win_back",
            Self::GeneralValue => "general_value",
            Self::GeneralDevelopment => "general_development",
            Self::GeneralRetention => "general_retention",
            Self::GeneralWinBack => "general_win_back",
        }
    }

    /// The names the business users know the classes by.
    pub fn chinese(self) -> &'static str {
        match self {
            Self::ImportantValue => "重要价值",
            Self::ImportantDevelopment => "重要发展",
            Self::ImportantRetention => "重要保持",
            Self::ImportantWinBack => "重要挽留",
            Self::GeneralValue => "一般价值",
            Self::GeneralDevelopment => "一般发展",
            Self::GeneralRetention => "一般保持",
            Self::GeneralWinBack => "一般挽留",
        }
    }

    pub fn from_str_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|class| class.as_str() == name)
    }
}

/// ABC class: A holds the customers bringing the first `a_share` of revenue, B the next
/// ones up to `b_share`, C the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AbcClass {
    A,
    B,
    C,
}

impl AbcClass {
    pub const ALL: [AbcClass; 3] = [Self::A, Self::B, Self::C];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::B => "B",
            Self::C => "C",
        }
    }
}

/// Revenue shares closing classes A and B. Fields are private so every value in use has
/// passed [`AbcThresholds::new`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AbcThresholds {
    a_share: f64,
    b_share: f64,
}

impl AbcThresholds {
    /// Refuses shares outside 0 < a_share <= b_share <= 1 (and NaN), which would make
    /// classes empty or overlapping.
    pub fn new(a_share: f64, b_share: f64) -> Result<Self, ScoreError> {
        if a_share > 0.0 && a_share <= b_share && b_share <= 1.0 {
            Ok(Self { a_share, b_share })
        } else {
            Err(ScoreError::InvalidAbcThresholds { a_share, b_share })
        }
    }

    pub fn a_share(&self) -> f64 {
        self.a_share
    }

    pub fn b_share(&self) -> f64 {
        self.b_share
    }
}

impl Default for AbcThresholds {
    /// The classic 80 % / 95 % split.
    fn default() -> Self {
        Self {
            a_share: 0.80,
            b_share: 0.95,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scores
// ---------------------------------------------------------------------------------------

/// One customer's scores. The window values they come from are kept by the caller next to
/// them (recency needs the as-of day, which the scores do not carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CustomerScores {
    /// Recency score 1..=5 (5: bought most recently).
    pub r: u8,
    /// Frequency score 1..=5 (5: bought most often).
    pub f: u8,
    /// Monetary score 1..=5 (5: spent most).
    pub m: u8,
    pub segment: RfmSegment,
    pub value_class: ValueClass,
    pub abc: AbcClass,
}

impl CustomerScores {
    /// The three scores as digits, e.g. "545".
    pub fn rfm_code(&self) -> String {
        format!("{}{}{}", self.r, self.f, self.m)
    }
}

/// Score thresholds of one dimension: the score is 1 plus the number of thresholds the
/// value exceeds. Threshold `s - 1` is the k-th smallest population value with
/// k = ceil((s - 1) * n / 5): a value exceeds it exactly when at least k members are
/// strictly worse, which is when `1 + floor(5 * worse / n) >= s`. So the thresholds give
/// the batch score for members and the would-be score for anyone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct ScoreThresholds {
    exceeded_for: [i64; 4],
}

impl ScoreThresholds {
    fn from_sorted(sorted: &[i64]) -> Self {
        let population = sorted.len();
        let mut exceeded_for = [0; 4];
        for (threshold, step) in exceeded_for.iter_mut().zip(1_usize..) {
            let kth = step.saturating_mul(population).div_ceil(5);
            if let Some(value) = kth.checked_sub(1).and_then(|index| sorted.get(index)) {
                *threshold = *value;
            }
        }
        Self { exceeded_for }
    }

    fn score(&self, value: i64) -> u8 {
        let exceeded = self.exceeded_for.iter().filter(|t| value > **t).count();
        score_from_step(exceeded)
    }
}

/// 1 + step, with step in 0..=4 (clamped so a bad input cannot leave the 1..=5 range).
fn score_from_step(step: usize) -> u8 {
    match u8::try_from(step) {
        Ok(step) if step < 5 => step + 1,
        _ => 5,
    }
}

/// The batch definition: 1 + floor(5 * worse / n).
fn score_from_rank(worse: usize, population: usize) -> u8 {
    score_from_step(worse.saturating_mul(5).checked_div(population).unwrap_or(4))
}

/// What a batch learned about its population, so one customer can be scored alone later
/// with the same results a batch would have given a member ([`Cutoffs::score`]). Stored
/// per tenant via [`Cutoffs::encode`].
#[derive(Debug, Clone, PartialEq)]
pub struct Cutoffs {
    as_of_day: i64,
    window_days: i64,
    population: usize,
    /// Sums rather than means: "above the mean" is decided exactly as
    /// `value * n > sum`, with no rounding to disagree between batch and single scoring.
    sum_last_purchase_day: i128,
    sum_frequency: i128,
    sum_monetary_minor: i128,
    /// R on the last purchase day (a later day is a better recency).
    recency: ScoreThresholds,
    frequency: ScoreThresholds,
    monetary: ScoreThresholds,
    thresholds: AbcThresholds,
    a_min_monetary_minor: Option<i64>,
    b_min_monetary_minor: Option<i64>,
}

impl Cutoffs {
    pub fn as_of_day(&self) -> i64 {
        self.as_of_day
    }

    pub fn window_days(&self) -> i64 {
        self.window_days
    }

    /// Members of the batch's population (customers with a purchase in the window).
    pub fn population(&self) -> usize {
        self.population
    }

    pub fn thresholds(&self) -> AbcThresholds {
        self.thresholds
    }

    /// The smallest monetary of the batch's class A (`None` when A was empty).
    pub fn a_min_monetary_minor(&self) -> Option<i64> {
        self.a_min_monetary_minor
    }

    /// The smallest monetary of the batch's class B (`None` when B was empty).
    pub fn b_min_monetary_minor(&self) -> Option<i64> {
        self.b_min_monetary_minor
    }

    fn mean(&self, sum: i128) -> Option<f64> {
        (self.population > 0).then(|| sum as f64 / self.population as f64)
    }

    /// Mean days since the last purchase; `None` for an empty population.
    pub fn mean_recency_days(&self) -> Option<f64> {
        let total_as_of = i128::from(self.as_of_day).saturating_mul(self.population as i128);
        self.mean(total_as_of.saturating_sub(self.sum_last_purchase_day))
    }

    pub fn mean_frequency(&self) -> Option<f64> {
        self.mean(self.sum_frequency)
    }

    pub fn mean_monetary_minor(&self) -> Option<f64> {
        self.mean(self.sum_monetary_minor)
    }

    /// Strictly above the mean, decided in integers (ties are low).
    fn above_mean(&self, value: i64, sum: i128) -> bool {
        i128::from(value).saturating_mul(self.population as i128) > sum
    }

    fn value_class(&self, values: &WindowValues) -> ValueClass {
        ValueClass::from_highs(
            // Fewer days since than the mean is a later day than the mean.
            self.above_mean(values.last_purchase_day, self.sum_last_purchase_day),
            self.above_mean(values.frequency, self.sum_frequency),
            self.above_mean(values.monetary_minor, self.sum_monetary_minor),
        )
    }

    /// Scores one customer against the last batch's population. For a member of that
    /// population the R, F, M scores, segment and value class are exactly the batch's.
    ///
    /// ABC: A when monetary >= the smallest monetary of the batch's A, else B when >= the
    /// smallest of B, else C. The batch breaks monetary ties by customer key, so a customer
    /// tied with the last member of A may be B in the batch and A here; that is accepted to
    /// keep the cutoffs to two numbers.
    ///
    /// With an empty population (no purchase in the window across the tenant) the customer
    /// would be the best of a population of one: R, F, M are 5 (champions) and the value
    /// class is important value; ABC is C because there is no revenue split to place them
    /// in, as when the batch's total revenue is not positive.
    pub fn score(&self, values: &WindowValues) -> CustomerScores {
        if self.population == 0 {
            return CustomerScores {
                r: 5,
                f: 5,
                m: 5,
                segment: RfmSegment::from_scores(5, 5),
                value_class: ValueClass::ImportantValue,
                abc: AbcClass::C,
            };
        }
        let r = self.recency.score(values.last_purchase_day);
        let f = self.frequency.score(values.frequency);
        let m = self.monetary.score(values.monetary_minor);
        let abc = if self
            .a_min_monetary_minor
            .is_some_and(|a_min| values.monetary_minor >= a_min)
        {
            AbcClass::A
        } else if self
            .b_min_monetary_minor
            .is_some_and(|b_min| values.monetary_minor >= b_min)
        {
            AbcClass::B
        } else {
            AbcClass::C
        };
        CustomerScores {
            r,
            f,
            m,
            segment: RfmSegment::from_scores(r, f),
            value_class: self.value_class(values),
            abc,
        }
    }

    /// Version byte, then zigzag varints (sums as 128-bit), the shares as IEEE-754 bits,
    /// and each ABC minimum as a presence byte plus value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.push(CUTOFFS_VERSION);
        put_varint(&mut out, zigzag(i128::from(self.as_of_day)));
        put_varint(&mut out, zigzag(i128::from(self.window_days)));
        put_varint(&mut out, self.population as u128);
        put_varint(&mut out, zigzag(self.sum_last_purchase_day));
        put_varint(&mut out, zigzag(self.sum_frequency));
        put_varint(&mut out, zigzag(self.sum_monetary_minor));
        for dimension in [&self.recency, &self.frequency, &self.monetary] {
            for threshold in dimension.exceeded_for {
                put_varint(&mut out, zigzag(i128::from(threshold)));
            }
        }
        out.extend_from_slice(&self.thresholds.a_share.to_bits().to_le_bytes());
        out.extend_from_slice(&self.thresholds.b_share.to_bits().to_le_bytes());
        for minimum in [self.a_min_monetary_minor, self.b_min_monetary_minor] {
            match minimum {
                Some(value) => {
                    out.push(1);
                    put_varint(&mut out, zigzag(i128::from(value)));
                }
                None => out.push(0),
            }
        }
        out
    }

    /// Reads bytes written by [`Cutoffs::encode`], refusing values no batch could produce
    /// (decreasing thresholds, invalid shares).
    pub fn decode(bytes: &[u8]) -> Result<Self, ScoreError> {
        let mut reader = Reader::new(bytes);
        let version = reader.byte()?;
        if version != CUTOFFS_VERSION {
            return Err(ScoreError::UnsupportedVersion(version));
        }
        let as_of_day = reader.varint_i64()?;
        let window_days = reader.varint_i64()?;
        let population = usize::try_from(reader.varint_u64()?)
            .map_err(|_| ScoreError::Malformed("population out of range"))?;
        let sum_last_purchase_day = reader.varint_i128()?;
        let sum_frequency = reader.varint_i128()?;
        let sum_monetary_minor = reader.varint_i128()?;
        let mut dimensions = [ScoreThresholds::default(); 3];
        for dimension in &mut dimensions {
            for threshold in &mut dimension.exceeded_for {
                *threshold = reader.varint_i64()?;
            }
            if dimension
                .exceeded_for
                .windows(2)
                .any(|pair| matches!(pair, [lower, upper] if lower > upper))
            {
                return Err(ScoreError::Malformed("decreasing score thresholds"));
            }
        }
        let [recency, frequency, monetary] = dimensions;
        let a_share = reader.f64()?;
        let b_share = reader.f64()?;
        let thresholds = AbcThresholds::new(a_share, b_share)?;
        let a_min_monetary_minor = reader.optional_i64()?;
        let b_min_monetary_minor = reader.optional_i64()?;
        reader.finish()?;
        Ok(Self {
            as_of_day,
            window_days,
            population,
            sum_last_purchase_day,
            sum_frequency,
            sum_monetary_minor,
            recency,
            frequency,
            monetary,
            thresholds,
            a_min_monetary_minor,
            b_min_monetary_minor,
        })
    }
}

/// A population member in ABC order.
struct RankedCustomer {
    /// Position in the caller's population.
    index: usize,
    monetary_minor: i64,
    abc: AbcClass,
}

/// The population by monetary descending, ties by key bytewise ascending (a total order,
/// so the classes do not depend on input order), each with its ABC class.
fn abc_ranking<K: AsRef<[u8]>>(
    population: &[(K, WindowValues)],
    thresholds: AbcThresholds,
) -> (Vec<RankedCustomer>, i128) {
    let mut order: Vec<(usize, &[u8], i64)> = population
        .iter()
        .enumerate()
        .map(|(index, (key, values))| (index, key.as_ref(), values.monetary_minor))
        .collect();
    order.sort_by(|left, right| right.2.cmp(&left.2).then_with(|| left.1.cmp(right.1)));
    let total: i128 = order.iter().map(|entry| i128::from(entry.2)).sum();
    let a_limit = thresholds.a_share * total as f64;
    let b_limit = thresholds.b_share * total as f64;
    let mut revenue_before: i128 = 0;
    let ranked = order
        .into_iter()
        .map(|(index, _, monetary_minor)| {
            let before = revenue_before as f64;
            let abc = if total <= 0 {
                AbcClass::C
            } else if before < a_limit {
                AbcClass::A
            } else if before < b_limit {
                AbcClass::B
            } else {
                AbcClass::C
            };
            revenue_before = revenue_before.saturating_add(i128::from(monetary_minor));
            RankedCustomer {
                index,
                monetary_minor,
                abc,
            }
        })
        .collect();
    (ranked, total)
}

/// Scores a whole population in one pass: R, F, M, segment, value class and ABC for each
/// member, in input order, and the [`Cutoffs`] to score one customer alone later.
///
/// `population` holds the customers whose window has a purchase, each with a key that
/// orders ABC ties (e.g. the customer UUID as text, compared bytewise), and the values of
/// [`Aggregates::window`] for `as_of_day` and `window_days` (kept in the cutoffs so later
/// single scores use the same window).
pub fn score_population<K: AsRef<[u8]>>(
    as_of_day: i64,
    window_days: i64,
    population: &[(K, WindowValues)],
    abc: AbcThresholds,
) -> (Cutoffs, Vec<CustomerScores>) {
    let size = population.len();
    let sorted = |value: fn(&WindowValues) -> i64| {
        let mut values: Vec<i64> = population.iter().map(|(_, v)| value(v)).collect();
        values.sort_unstable();
        values
    };
    let last_purchase_days = sorted(|v| v.last_purchase_day);
    let frequencies = sorted(|v| v.frequency);
    let monetaries = sorted(|v| v.monetary_minor);
    let sum = |values: &[i64]| values.iter().map(|v| i128::from(*v)).sum::<i128>();

    let (ranking, _) = abc_ranking(population, abc);
    let mut classes = vec![AbcClass::C; size];
    for ranked in &ranking {
        if let Some(class) = classes.get_mut(ranked.index) {
            *class = ranked.abc;
        }
    }
    let class_minimum = |class: AbcClass| {
        ranking
            .iter()
            .filter(|ranked| ranked.abc == class)
            .map(|ranked| ranked.monetary_minor)
            .min()
    };

    let cutoffs = Cutoffs {
        as_of_day,
        window_days,
        population: size,
        sum_last_purchase_day: sum(&last_purchase_days),
        sum_frequency: sum(&frequencies),
        sum_monetary_minor: sum(&monetaries),
        recency: ScoreThresholds::from_sorted(&last_purchase_days),
        frequency: ScoreThresholds::from_sorted(&frequencies),
        monetary: ScoreThresholds::from_sorted(&monetaries),
        thresholds: abc,
        a_min_monetary_minor: class_minimum(AbcClass::A),
        b_min_monetary_minor: class_minimum(AbcClass::B),
    };

    // The batch applies the definition directly (worse = members strictly below);
    // `Cutoffs::score` must agree, which the tests check.
    let rank =
        |sorted: &[i64], value: i64| score_from_rank(sorted.partition_point(|other| *other < value), size);
    let scores = population
        .iter()
        .zip(classes)
        .map(|((_, values), abc)| {
            let r = rank(&last_purchase_days, values.last_purchase_day);
            let f = rank(&frequencies, values.frequency);
            let m = rank(&monetaries, values.monetary_minor);
            CustomerScores {
                r,
                f,
                m,
                segment: RfmSegment::from_scores(r, f),
                value_class: cutoffs.value_class(values),
                abc,
            }
        })
        .collect();
    (cutoffs, scores)
}

/// Customers and revenue of one ABC class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AbcTotals {
    pub customers: usize,
    pub monetary_minor: i64,
}

/// How concentrated revenue is: the share of the top 20 % of customers, and each ABC
/// class's size and revenue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParetoReport {
    pub population: usize,
    /// ceil(20 % of the population), taken in ABC order.
    pub top_customers: usize,
    pub top_monetary_minor: i64,
    pub total_monetary_minor: i64,
    /// top / total; 0 when the total is not positive (a share of nothing says nothing).
    pub top_share: f64,
    pub a: AbcTotals,
    pub b: AbcTotals,
    pub c: AbcTotals,
}

/// The Pareto report of a population, in the same order and with the same classes as
/// [`score_population`] (sums saturate to the i64 range).
pub fn pareto_report<K: AsRef<[u8]>>(population: &[(K, WindowValues)], abc: AbcThresholds) -> ParetoReport {
    let (ranking, total) = abc_ranking(population, abc);
    let top_customers = population.len().div_ceil(5);
    let top: i128 = ranking
        .iter()
        .take(top_customers)
        .map(|ranked| i128::from(ranked.monetary_minor))
        .sum();
    let totals = |class: AbcClass| {
        let members = ranking.iter().filter(|ranked| ranked.abc == class);
        AbcTotals {
            customers: members.clone().count(),
            monetary_minor: saturate(members.map(|ranked| i128::from(ranked.monetary_minor)).sum()),
        }
    };
    ParetoReport {
        population: population.len(),
        top_customers,
        top_monetary_minor: saturate(top),
        total_monetary_minor: saturate(total),
        top_share: if total > 0 { top as f64 / total as f64 } else { 0.0 },
        a: totals(AbcClass::A),
        b: totals(AbcClass::B),
        c: totals(AbcClass::C),
    }
}

fn saturate(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

// ---------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------

/// Where a customer is in their relationship with the business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LifecycleStage {
    /// No purchase yet, or only a trial one.
    Exploration,
    /// Buying again but not yet regularly (or not for long).
    Formation,
    /// Buying in most recent periods for a while.
    Stability,
    /// Spending in the latest period fell well below the one before.
    Decline,
    /// No purchase for `ended_after_days`.
    Ended,
}

impl LifecycleStage {
    pub const ALL: [LifecycleStage; 5] = [
        Self::Exploration,
        Self::Formation,
        Self::Stability,
        Self::Decline,
        Self::Ended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exploration => "EXPLORATION",
            Self::Formation => "FORMATION",
            Self::Stability => "STABILITY",
            Self::Decline => "DECLINE",
            Self::Ended => "ENDED",
        }
    }

    pub fn from_str_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|stage| stage.as_str() == name)
    }
}

/// The knobs of [`lifecycle_stage`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LifecycleParams {
    /// Length of the periods compared (a value below 1 counts as 1).
    pub period_days: i64,
    /// Days without a purchase after which the relationship has ended.
    pub ended_after_days: i64,
    /// Decline when the latest period's net is below this fraction of the previous one.
    pub decline_ratio: f64,
    /// How many of the last [`STABILITY_LOOKBACK_PERIODS`] periods need a purchase for
    /// stability.
    pub stable_periods: u32,
}

impl Default for LifecycleParams {
    /// Quarters, a year of silence to end, half the spend to decline, three of four
    /// quarters to be stable.
    fn default() -> Self {
        Self {
            period_days: 90,
            ended_after_days: 365,
            decline_ratio: 0.5,
            stable_periods: 3,
        }
    }
}

/// The stage as of `as_of_day`, from the days on or before it. In order: ENDED when the
/// last purchase is `ended_after_days` or more before; EXPLORATION with at most one
/// purchase; DECLINE when the latest period's net fell below `decline_ratio` times a
/// positive previous period's; STABILITY with purchases in at least `stable_periods` of the
/// last four periods and a first purchase at least two periods back; else FORMATION.
pub fn lifecycle_stage(aggregates: &Aggregates, as_of_day: i64, params: &LifecycleParams) -> LifecycleStage {
    let last_purchase_day = aggregates
        .days_until(as_of_day)
        .filter(|d| d.purchases > 0)
        .map(|d| d.day)
        .last();
    if last_purchase_day.is_some_and(|last| last <= as_of_day.saturating_sub(params.ended_after_days)) {
        return LifecycleStage::Ended;
    }
    stage_while_active(aggregates, as_of_day, params)
}

/// The stage rules other than ENDED.
fn stage_while_active(aggregates: &Aggregates, as_of_day: i64, params: &LifecycleParams) -> LifecycleStage {
    let period_days = params.period_days.max(1);
    let mut lifetime_purchases: i64 = 0;
    let mut first_purchase_day = None;
    let mut recent_net_minor: i64 = 0;
    let mut previous_net_minor: i64 = 0;
    let mut period_has_purchase = [false; STABILITY_LOOKBACK_PERIODS];
    for day in aggregates.days_until(as_of_day) {
        // 0 for (as_of - period, as_of], 1 for the period before, ...
        let period = as_of_day.saturating_sub(day.day) / period_days;
        lifetime_purchases = lifetime_purchases.saturating_add(day.purchases);
        match period {
            0 => recent_net_minor = recent_net_minor.saturating_add(day.net_minor),
            1 => previous_net_minor = previous_net_minor.saturating_add(day.net_minor),
            _ => {}
        }
        if day.purchases > 0 {
            first_purchase_day = first_purchase_day.or(Some(day.day));
            if let Some(flag) = usize::try_from(period)
                .ok()
                .and_then(|period| period_has_purchase.get_mut(period))
            {
                *flag = true;
            }
        }
    }
    if lifetime_purchases <= 1 {
        return LifecycleStage::Exploration;
    }
    if previous_net_minor > 0 && (recent_net_minor as f64) < params.decline_ratio * previous_net_minor as f64
    {
        return LifecycleStage::Decline;
    }
    let active_periods = period_has_purchase.iter().filter(|active| **active).count();
    let settled_since = as_of_day.saturating_sub(period_days.saturating_mul(2));
    if active_periods >= usize::try_from(params.stable_periods).unwrap_or(usize::MAX)
        && first_purchase_day.is_some_and(|first| first <= settled_since)
    {
        return LifecycleStage::Stability;
    }
    LifecycleStage::Formation
}

/// The stage a customer was in when they last bought (as of their last purchase day, never
/// ENDED): for an ENDED customer, what the relationship had become before it ended.
/// `None` without any purchase.
pub fn ended_in(aggregates: &Aggregates, params: &LifecycleParams) -> Option<LifecycleStage> {
    let last_purchase_day = aggregates.last_purchase_day()?;
    Some(stage_while_active(aggregates, last_purchase_day, params))
}

/// How an ended relationship ended, from the stage it ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndedPattern {
    /// Ended while exploring: tried once, never came back.
    EarlyAbort,
    /// Ended while forming a habit.
    MidWay,
    /// Left while stable, without a visible decline first.
    EarlyExit,
    /// Declined, then left: the natural end of a long relationship.
    LongTerm,
}

impl EndedPattern {
    /// `None` for ENDED, which [`ended_in`] never returns.
    pub fn from_stage(stage: LifecycleStage) -> Option<Self> {
        match stage {
            LifecycleStage::Exploration => Some(Self::EarlyAbort),
            LifecycleStage::Formation => Some(Self::MidWay),
            LifecycleStage::Stability => Some(Self::EarlyExit),
            LifecycleStage::Decline => Some(Self::LongTerm),
            LifecycleStage::Ended => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EarlyAbort => "early_abort",
            Self::MidWay => "mid_way",
            Self::EarlyExit => "early_exit",
            Self::LongTerm => "long_term",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encoding helpers
// ---------------------------------------------------------------------------------------

/// Maps small negative and positive numbers to small unsigned ones, so varints stay short
/// for refunds (negative nets) too.
fn zigzag(value: i128) -> u128 {
    ((value << 1) ^ (value >> 127)) as u128
}

fn unzigzag(value: u128) -> i128 {
    ((value >> 1) as i128) ^ ((value & 1) as i128).wrapping_neg()
}

/// LEB128: seven bits per byte, high bit set on all but the last.
fn put_varint(out: &mut Vec<u8>, mut value: u128) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A cursor over encoded bytes that fails instead of reading past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn byte(&mut self) -> Result<u8, ScoreError> {
        let (&first, rest) = self.bytes.split_first().ok_or(ScoreError::Truncated)?;
        self.bytes = rest;
        Ok(first)
    }

    /// Refuses overlong forms (a final zero byte), so each value has one encoding.
    fn varint(&mut self) -> Result<u128, ScoreError> {
        let mut value: u128 = 0;
        let mut shift: u32 = 0;
        loop {
            let byte = self.byte()?;
            let bits = u128::from(byte & 0x7f);
            let shifted = bits
                .checked_shl(shift)
                .filter(|shifted| shifted >> shift == bits)
                .ok_or(ScoreError::Malformed("varint too long"))?;
            value |= shifted;
            if byte & 0x80 == 0 {
                if byte == 0 && shift > 0 {
                    return Err(ScoreError::Malformed("overlong varint"));
                }
                return Ok(value);
            }
            shift = shift.saturating_add(7);
        }
    }

    fn varint_u64(&mut self) -> Result<u64, ScoreError> {
        u64::try_from(self.varint()?).map_err(|_| ScoreError::Malformed("varint too large"))
    }

    fn varint_i128(&mut self) -> Result<i128, ScoreError> {
        Ok(unzigzag(self.varint()?))
    }

    fn varint_i64(&mut self) -> Result<i64, ScoreError> {
        i64::try_from(self.varint_i128()?).map_err(|_| ScoreError::Malformed("varint too large"))
    }

    fn f64(&mut self) -> Result<f64, ScoreError> {
        let (head, rest) = self.bytes.split_at_checked(8).ok_or(ScoreError::Truncated)?;
        let bits: [u8; 8] = head.try_into().map_err(|_| ScoreError::Truncated)?;
        self.bytes = rest;
        Ok(f64::from_bits(u64::from_le_bytes(bits)))
    }

    fn optional_i64(&mut self) -> Result<Option<i64>, ScoreError> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(self.varint_i64()?)),
            _ => Err(ScoreError::Malformed("bad presence byte")),
        }
    }

    fn finish(self) -> Result<(), ScoreError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(ScoreError::TrailingBytes)
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A tiny deterministic generator (Knuth's MMIX constants): reproducible random cases
    /// without a dependency.
    struct Lcg(u64);

    impl Lcg {
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }

        /// Uniform-ish in `low..=high`.
        fn range(&mut self, low: i64, high: i64) -> i64 {
            let span = (high - low + 1) as u64;
            low + (self.next_u64() % span) as i64
        }
    }

    fn values(last_purchase_day: i64, frequency: i64, monetary_minor: i64) -> WindowValues {
        WindowValues {
            last_purchase_day,
            frequency,
            monetary_minor,
        }
    }

    fn random_aggregates(lcg: &mut Lcg) -> Aggregates {
        let mut aggregates = Aggregates::new();
        for _ in 0..lcg.range(0, 12) {
            let day = lcg.range(19_000, 19_060);
            if lcg.range(0, 4) == 0 {
                aggregates.record(day, 0, -lcg.range(1, 5_000), 0).unwrap();
            } else {
                let amount = lcg.range(1, 100_000);
                aggregates.record(day, 1, amount, amount / 3).unwrap();
            }
        }
        aggregates
    }

    #[test]
    fn epoch_day_floors() {
        assert_eq!(epoch_day(0), 0);
        assert_eq!(epoch_day(86_399), 0);
        assert_eq!(epoch_day(86_400), 1);
        assert_eq!(epoch_day(-1), -1);
        let time = DateTime::parse_from_rfc3339("2026-06-30T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(day_of(time), 20_634);
    }

    #[test]
    fn record_keeps_days_sorted_unique_and_drops_zero_days() {
        let mut aggregates = Aggregates::new();
        aggregates.record(10, 1, 500, 100).unwrap();
        aggregates.record(5, 1, 300, 90).unwrap();
        aggregates.record(10, 1, 200, 50).unwrap();
        aggregates.record(7, 0, -100, 0).unwrap();
        aggregates.record(8, 0, 0, 0).unwrap();
        let days: Vec<i64> = aggregates.days().iter().map(|d| d.day).collect();
        assert_eq!(days, vec![5, 7, 10]);
        assert_eq!(aggregates.days()[2].purchases, 2);
        assert_eq!(aggregates.days()[2].net_minor, 700);
        assert_eq!(aggregates.first_purchase_day(), Some(5));
        assert_eq!(aggregates.last_purchase_day(), Some(10));
        assert_eq!(aggregates.lifetime_purchases(), 3);
        assert_eq!(aggregates.lifetime_net_minor(), 900);
        assert_eq!(aggregates.lifetime_margin_minor(), 240);
        // Undoing the refund removes its day.
        aggregates.record(7, 0, 100, 0).unwrap();
        assert_eq!(aggregates.days().len(), 2);
        // Overflow is refused without change.
        let before = aggregates.clone();
        assert_eq!(aggregates.record(5, 0, i64::MAX, 0), Err(ScoreError::Overflow));
        assert_eq!(aggregates, before);
    }

    #[test]
    fn refund_only_days_are_not_purchase_days() {
        let mut aggregates = Aggregates::new();
        aggregates.record(3, 0, -50, 0).unwrap();
        assert_eq!(aggregates.first_purchase_day(), None);
        assert_eq!(aggregates.last_purchase_day(), None);
        aggregates.record(1, 1, 80, 10).unwrap();
        aggregates.record(9, 0, -20, 0).unwrap();
        assert_eq!(aggregates.first_purchase_day(), Some(1));
        assert_eq!(aggregates.last_purchase_day(), Some(1));
    }

    #[test]
    fn merge_is_commutative_associative_and_exact() {
        let mut lcg = Lcg(7);
        for _ in 0..300 {
            let a = random_aggregates(&mut lcg);
            let b = random_aggregates(&mut lcg);
            let c = random_aggregates(&mut lcg);
            let mut ab = a.clone();
            ab.merge_from(&b).unwrap();
            let mut ba = b.clone();
            ba.merge_from(&a).unwrap();
            assert_eq!(ab, ba);
            let mut ab_c = ab.clone();
            ab_c.merge_from(&c).unwrap();
            let mut bc = b.clone();
            bc.merge_from(&c).unwrap();
            let mut a_bc = a.clone();
            a_bc.merge_from(&bc).unwrap();
            assert_eq!(ab_c, a_bc);
            // Merging equals recording the other's days one by one.
            let mut recorded = a.clone();
            for day in b.days() {
                recorded
                    .record(day.day, day.purchases, day.net_minor, day.margin_minor)
                    .unwrap();
            }
            assert_eq!(ab, recorded);
            assert_eq!(
                ab.lifetime_net_minor(),
                a.lifetime_net_minor() + b.lifetime_net_minor()
            );
            // Unmerge by re-summing the remaining buckets; merging a negation cancels.
            let mut negated_b = Aggregates::new();
            for day in b.days() {
                negated_b
                    .record(day.day, -day.purchases, -day.net_minor, -day.margin_minor)
                    .unwrap();
            }
            let mut back = ab.clone();
            back.merge_from(&negated_b).unwrap();
            assert_eq!(back, a);
            assert!(back.days().iter().all(|d| !d.is_zero()));
        }
    }

    #[test]
    fn aggregates_round_trip_and_reject_bad_blobs() {
        let mut lcg = Lcg(11);
        for _ in 0..300 {
            let aggregates = random_aggregates(&mut lcg);
            let blob = aggregates.encode();
            assert_eq!(Aggregates::decode(&blob).unwrap(), aggregates);
            for cut in 0..blob.len() {
                assert!(Aggregates::decode(&blob[..cut]).is_err());
            }
        }
        let mut extremes = Aggregates::new();
        extremes.record(i64::MIN, i64::MAX, i64::MIN, 1).unwrap();
        extremes.record(i64::MAX, -1, i64::MAX, i64::MIN).unwrap();
        assert_eq!(Aggregates::decode(&extremes.encode()).unwrap(), extremes);

        assert_eq!(Aggregates::decode(&[]), Err(ScoreError::Truncated), "empty blob");
        assert_eq!(
            Aggregates::decode(&[9, 0]),
            Err(ScoreError::UnsupportedVersion(9))
        );
        assert_eq!(Aggregates::decode(&[1, 0]).unwrap(), Aggregates::new());
        assert_eq!(Aggregates::decode(&[1, 0, 0]), Err(ScoreError::TrailingBytes));
        // One all-zero day.
        assert!(matches!(
            Aggregates::decode(&[1, 1, 2, 0, 0, 0]),
            Err(ScoreError::Malformed(_))
        ));
        // An overlong varint for the count.
        assert!(matches!(
            Aggregates::decode(&[1, 0x80, 0x00]),
            Err(ScoreError::Malformed(_))
        ));
        // A huge count with no data fails without allocating it.
        let mut huge = vec![1];
        put_varint(&mut huge, u128::from(u64::MAX));
        assert_eq!(Aggregates::decode(&huge), Err(ScoreError::Truncated));
    }

    #[test]
    fn encoding_is_compact() {
        let mut aggregates = Aggregates::new();
        for offset in 0..10 {
            aggregates
                .record(20_000 + offset * 17, 1, 4_999 + offset * 100, 1_500)
                .unwrap();
        }
        assert!(aggregates.encode().len() <= 2 + 10 * 10);
    }

    #[test]
    fn window_edges() {
        let mut aggregates = Aggregates::new();
        aggregates.record(100, 1, 1_000, 0).unwrap(); // as_of - window: excluded
        aggregates.record(101, 2, 500, 0).unwrap(); // first day in
        aggregates.record(150, 0, -200, 0).unwrap(); // refund, no purchase
        aggregates.record(200, 1, 300, 0).unwrap(); // as_of: included
        aggregates.record(201, 1, 9_999, 0).unwrap(); // after as_of: ignored
        assert_eq!(aggregates.window(200, 100), Some(values(200, 3, 600)));
        assert_eq!(aggregates.window(199, 99), Some(values(101, 2, 300)));
        // Only the refund in the window: outside the population.
        assert_eq!(aggregates.window(199, 50), None);
        assert_eq!(aggregates.window(99, 365), None);
        assert_eq!(aggregates.window(200, 0), None);
        assert_eq!(values(150, 1, 0).recency_days(200), 50);
    }

    #[test]
    fn segment_table_covers_all_cells() {
        use RfmSegment::*;
        // Rows R = 5 down to 1, columns F = 1 to 5.
        let table = [
            [New, PotentialLoyalists, PotentialLoyalists, Champions, Champions],
            [Promising, PotentialLoyalists, PotentialLoyalists, Loyal, Loyal],
            [AboutToSleep, AboutToSleep, NeedAttention, Loyal, Loyal],
            [Hibernating, Hibernating, AtRisk, AtRisk, CantLose],
            [Hibernating, Hibernating, AtRisk, AtRisk, CantLose],
        ];
        let mut seen = Vec::new();
        for (row, r) in table.iter().zip((1..=5u8).rev()) {
            for (expected, f) in row.iter().zip(1..=5u8) {
                assert_eq!(RfmSegment::from_scores(r, f), *expected, "cell {r}{f}");
                if !seen.contains(expected) {
                    seen.push(*expected);
                }
            }
        }
        assert_eq!(seen.len(), RfmSegment::ALL.len());
        for segment in RfmSegment::ALL {
            assert_eq!(RfmSegment::from_str_name(segment.as_str()), Some(segment));
        }
        assert_eq!(RfmSegment::from_scores(0, 9), RfmSegment::CantLose);
    }

    #[test]
    fn value_classes_from_highs() {
        let expected = [
            ((true, true, true), "important_value", "重要价值"),
            ((true, false, true), "important_development", "重要发展"),
            ((false, true, true), "important_retention", "重要保持"),
            ((false, false, true), "important_win_back", "重要挽留"),
            ((true, true, false), "general_value", "一般价值"),
            ((true, false, false), "general_development", "一般发展"),
            ((false, true, false), "general_retention", "一般保持"),
            ((false, false, false), "general_win_back", "一般挽留"),
        ];
        for ((r, f, m), name, chinese) in expected {
            let class = ValueClass::from_highs(r, f, m);
            assert_eq!(class.as_str(), name);
            assert_eq!(class.chinese(), chinese);
            assert_eq!(class.highs(), (r, f, m));
            assert_eq!(ValueClass::from_str_name(name), Some(class));
        }
    }

    #[test]
    fn value_class_against_means_with_ties_low() {
        // Means: last day 20, frequency 2, monetary 200.
        let population = [
            ("a", values(30, 3, 300)),
            ("b", values(20, 2, 200)),
            ("c", values(10, 1, 100)),
        ];
        let (cutoffs, scores) = score_population(30, 30, &population, AbcThresholds::default());
        assert_eq!(scores[0].value_class, ValueClass::ImportantValue);
        assert_eq!(scores[1].value_class, ValueClass::GeneralWinBack);
        assert_eq!(scores[2].value_class, ValueClass::GeneralWinBack);
        assert_eq!(cutoffs.mean_recency_days(), Some(10.0));
        assert_eq!(cutoffs.mean_frequency(), Some(2.0));
        assert_eq!(cutoffs.mean_monetary_minor(), Some(200.0));
        // Mixed: recent but rare and cheap.
        assert_eq!(
            cutoffs.score(&values(25, 1, 100)).value_class,
            ValueClass::GeneralDevelopment
        );
        assert_eq!(
            cutoffs.score(&values(15, 5, 201)).value_class,
            ValueClass::ImportantRetention
        );
    }

    #[test]
    fn rfm_scores_follow_the_rank_formula() {
        // Ten members with distinct values: worse = 0..9, score = 1 + floor(worse / 2).
        let population: Vec<(String, WindowValues)> = (0..10)
            .map(|i| (format!("k{i}"), values(100 + i, 1 + i, 1_000 * (i + 1))))
            .collect();
        let (_, scores) = score_population(110, 30, &population, AbcThresholds::default());
        let codes: Vec<String> = scores.iter().map(|s| s.rfm_code()).collect();
        assert_eq!(
            codes,
            [
                "111", "111", "222", "222", "333", "333", "444", "444", "555", "555"
            ]
        );
        // Ties share the score of their lowest rank.
        let tied = [
            ("a", values(5, 1, 10)),
            ("b", values(5, 1, 10)),
            ("c", values(6, 2, 20)),
        ];
        let (_, scores) = score_population(6, 30, &tied, AbcThresholds::default());
        assert_eq!(scores[0].rfm_code(), "111");
        assert_eq!(scores[1].rfm_code(), "111");
        assert_eq!(scores[2].rfm_code(), "444");
        assert_eq!(scores[2].segment, RfmSegment::Loyal);
        // A population of one: nobody is worse.
        let (_, scores) = score_population(6, 30, &tied[..1], AbcThresholds::default());
        assert_eq!(scores[0].rfm_code(), "111");
    }

    #[test]
    fn abc_thresholds_are_validated() {
        assert!(AbcThresholds::new(0.8, 0.95).is_ok());
        assert!(AbcThresholds::new(1.0, 1.0).is_ok());
        assert!(AbcThresholds::new(0.5, 0.5).is_ok());
        for (a, b) in [(0.0, 0.5), (0.9, 0.8), (0.5, 1.1), (f64::NAN, 0.9), (-0.1, 0.5)] {
            assert!(AbcThresholds::new(a, b).is_err(), "{a} {b}");
        }
    }

    #[test]
    fn abc_classes_and_pareto() {
        // Total 1000: A while before < 800, B while before < 950.
        let population = [
            ("d", values(1, 1, 50)),
            ("a", values(1, 1, 500)),
            ("c", values(1, 1, 100)),
            ("b", values(1, 1, 250)),
            ("e", values(1, 1, 50)),
            ("f", values(1, 1, 50)),
        ];
        let (cutoffs, scores) = score_population(1, 30, &population, AbcThresholds::default());
        let classes: Vec<&str> = scores.iter().map(|s| s.abc.as_str()).collect();
        // Order a(0) b(500) c(750) d(850) e(900) f(950): A A A B B C.
        assert_eq!(classes, ["B", "A", "A", "A", "B", "C"]);
        assert_eq!(cutoffs.a_min_monetary_minor(), Some(100));
        assert_eq!(cutoffs.b_min_monetary_minor(), Some(50));
        // At the tie, single scoring says B where the batch said C (documented).
        assert_eq!(cutoffs.score(&values(1, 1, 50)).abc, AbcClass::B);
        assert_eq!(cutoffs.score(&values(1, 1, 49)).abc, AbcClass::C);

        let report = pareto_report(&population, AbcThresholds::default());
        assert_eq!(report.population, 6);
        assert_eq!(report.top_customers, 2);
        assert_eq!(report.top_monetary_minor, 750);
        assert_eq!(report.total_monetary_minor, 1_000);
        assert!((report.top_share - 0.75).abs() < 1e-12);
        assert_eq!(
            report.a,
            AbcTotals {
                customers: 3,
                monetary_minor: 850
            }
        );
        assert_eq!(
            report.b,
            AbcTotals {
                customers: 2,
                monetary_minor: 100
            }
        );
        assert_eq!(
            report.c,
            AbcTotals {
                customers: 1,
                monetary_minor: 50
            }
        );

        // Input order does not matter: ties break on the key.
        let mut reversed = population;
        reversed.reverse();
        let (_, reversed_scores) = score_population(1, 30, &reversed, AbcThresholds::default());
        let mut by_key: Vec<(&str, AbcClass)> = reversed
            .iter()
            .zip(&reversed_scores)
            .map(|((k, _), s)| (*k, s.abc))
            .collect();
        by_key.sort();
        let mut expected: Vec<(&str, AbcClass)> = population
            .iter()
            .zip(&scores)
            .map(|((k, _), s)| (*k, s.abc))
            .collect();
        expected.sort();
        assert_eq!(by_key, expected);
    }

    #[test]
    fn abc_with_non_positive_total_is_all_c() {
        for population in [
            vec![("a", values(1, 1, 0)), ("b", values(1, 1, 0))],
            vec![("a", values(1, 1, 100)), ("b", values(1, 1, -300))],
        ] {
            let (cutoffs, scores) = score_population(1, 30, &population, AbcThresholds::default());
            assert!(scores.iter().all(|s| s.abc == AbcClass::C));
            assert_eq!(cutoffs.a_min_monetary_minor(), None);
            assert_eq!(cutoffs.b_min_monetary_minor(), None);
            assert_eq!(cutoffs.score(&values(1, 1, 1_000_000)).abc, AbcClass::C);
            let report = pareto_report(&population, AbcThresholds::default());
            assert_eq!(report.top_share, 0.0);
            assert_eq!(report.c.customers, 2);
        }
        // Negative members after a positive total: the first customer is always A.
        let population = [("a", values(1, 1, 100)), ("b", values(1, 1, -50))];
        let (_, scores) = score_population(1, 30, &population, AbcThresholds::default());
        assert_eq!(scores[0].abc, AbcClass::A);
        // before = 100 >= 0.95 * 50.
        assert_eq!(scores[1].abc, AbcClass::C);
        // a = b = 1: everything before the total is A.
        let thresholds = AbcThresholds::new(1.0, 1.0).unwrap();
        let population = [("a", values(1, 1, 10)), ("b", values(1, 1, 10))];
        let (_, scores) = score_population(1, 30, &population, thresholds);
        assert!(scores.iter().all(|s| s.abc == AbcClass::A));
    }

    #[test]
    fn empty_population() {
        let population: [(&str, WindowValues); 0] = [];
        let (cutoffs, scores) = score_population(50, 30, &population, AbcThresholds::default());
        assert!(scores.is_empty());
        assert_eq!(cutoffs.population(), 0);
        assert_eq!(cutoffs.mean_frequency(), None);
        let alone = cutoffs.score(&values(40, 1, 100));
        assert_eq!(alone.rfm_code(), "555");
        assert_eq!(alone.segment, RfmSegment::Champions);
        assert_eq!(alone.value_class, ValueClass::ImportantValue);
        assert_eq!(alone.abc, AbcClass::C);
        assert_eq!(Cutoffs::decode(&cutoffs.encode()).unwrap(), cutoffs);
        let report = pareto_report(&population, AbcThresholds::default());
        assert_eq!(report.top_customers, 0);
        assert_eq!(report.top_share, 0.0);
    }

    #[test]
    fn cutoffs_reproduce_the_batch() {
        let mut lcg = Lcg(2026);
        for case in 0..400 {
            let size = match case % 4 {
                0 => lcg.range(1, 7),
                1 => lcg.range(1, 40),
                _ => lcg.range(40, 400),
            } as usize;
            // Narrow ranges in some cases force many ties.
            let spread = if case % 3 == 0 { 3 } else { 400 };
            let as_of_day = 20_000;
            let population: Vec<(String, WindowValues)> = (0..size)
                .map(|_| {
                    let key = format!("{:08x}", lcg.next_u64());
                    let last = as_of_day - lcg.range(0, spread);
                    let frequency = lcg.range(1, spread.min(30));
                    let monetary = lcg.range(-spread, spread * 1_000);
                    (key, values(last, frequency, monetary))
                })
                .collect();
            let a_share = [0.8, 0.5, 1.0, 0.3][case % 4];
            let thresholds = AbcThresholds::new(a_share, 1.0_f64.min(a_share + 0.15)).unwrap();
            let (cutoffs, scores) = score_population(as_of_day, 365, &population, thresholds);
            let decoded = Cutoffs::decode(&cutoffs.encode()).unwrap();
            assert_eq!(decoded, cutoffs);
            let mut monetary_ties = HashMap::new();
            for (_, v) in &population {
                *monetary_ties.entry(v.monetary_minor).or_insert(0) += 1;
            }
            for ((key, v), batch) in population.iter().zip(&scores) {
                let single = decoded.score(v);
                assert_eq!(
                    (single.r, single.f, single.m, single.segment, single.value_class),
                    (batch.r, batch.f, batch.m, batch.segment, batch.value_class),
                    "case {case} customer {key}"
                );
                if monetary_ties[&v.monetary_minor] == 1 {
                    assert_eq!(single.abc, batch.abc, "case {case} customer {key}");
                } else {
                    // At a tie the single score can only be better than the batch's.
                    assert!(single.abc <= batch.abc, "case {case} customer {key}");
                }
                assert!((1..=5).contains(&batch.r) && (1..=5).contains(&batch.f));
                assert!((1..=5).contains(&batch.m));
            }
        }
    }

    #[test]
    fn cutoffs_reject_bad_bytes() {
        let population = [("a", values(1, 2, 300)), ("b", values(2, 1, 100))];
        let (cutoffs, _) = score_population(2, 30, &population, AbcThresholds::default());
        let bytes = cutoffs.encode();
        for cut in 0..bytes.len() {
            assert!(Cutoffs::decode(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Cutoffs::decode(&longer), Err(ScoreError::TrailingBytes));
        let mut version = bytes.clone();
        version[0] = 2;
        assert_eq!(Cutoffs::decode(&version), Err(ScoreError::UnsupportedVersion(2)));
        // Shares b < a.
        let mut shares = cutoffs.clone();
        shares.thresholds = AbcThresholds {
            a_share: 0.9,
            b_share: 0.5,
        };
        assert!(matches!(
            Cutoffs::decode(&shares.encode()),
            Err(ScoreError::InvalidAbcThresholds { .. })
        ));
        let mut decreasing = cutoffs;
        decreasing.frequency.exceeded_for = [3, 2, 4, 5];
        assert!(matches!(
            Cutoffs::decode(&decreasing.encode()),
            Err(ScoreError::Malformed(_))
        ));
    }

    fn history(days: &[(i64, i64, i64)]) -> Aggregates {
        let mut aggregates = Aggregates::new();
        for &(day, purchases, net) in days {
            aggregates.record(day, purchases, net, 0).unwrap();
        }
        aggregates
    }

    #[test]
    fn lifecycle_rules() {
        let params = LifecycleParams::default();
        let as_of = 1_000;
        let stage = |days: &[(i64, i64, i64)]| lifecycle_stage(&history(days), as_of, &params);
        assert_eq!(stage(&[]), LifecycleStage::Exploration);
        assert_eq!(stage(&[(990, 1, 100)]), LifecycleStage::Exploration);
        // Several the same day are several purchases.
        assert_eq!(stage(&[(990, 2, 100)]), LifecycleStage::Formation);
        // Ended at exactly ended_after_days, even with a single purchase.
        assert_eq!(stage(&[(635, 1, 100)]), LifecycleStage::Ended);
        assert_eq!(stage(&[(636, 1, 100)]), LifecycleStage::Exploration);
        assert_eq!(stage(&[(600, 1, 100), (635, 1, 100)]), LifecycleStage::Ended);
        // A later refund does not keep the relationship alive.
        assert_eq!(
            stage(&[(600, 1, 100), (635, 1, 100), (900, 0, -50)]),
            LifecycleStage::Ended
        );
        // Decline: recent (910, 1000] below half of previous (820, 910].
        assert_eq!(stage(&[(850, 1, 1_000), (950, 1, 499)]), LifecycleStage::Decline);
        assert_eq!(
            stage(&[(850, 1, 1_000), (950, 1, 500)]),
            LifecycleStage::Formation
        );
        // A refund in the latest period can cause a decline.
        assert_eq!(
            stage(&[(850, 1, 1_000), (860, 1, 1_000), (950, 0, -1_500)]),
            LifecycleStage::Decline
        );
        // Stability: purchases in 3 of the 4 periods, first purchase <= as_of - 180.
        assert_eq!(
            stage(&[(700, 1, 100), (850, 1, 100), (950, 1, 100)]),
            LifecycleStage::Stability
        );
        assert_eq!(
            stage(&[(820, 1, 100), (850, 1, 100), (950, 1, 100)]),
            LifecycleStage::Stability
        );
        // Period edges: (910,1000], (820,910], (730,820]; day 821 is in the second.
        assert_eq!(
            stage(&[(821, 1, 100), (850, 1, 100), (950, 1, 100)]),
            LifecycleStage::Formation
        );
        // With two periods enough, the first purchase must still be two periods back.
        let two_periods = LifecycleParams {
            stable_periods: 2,
            ..params
        };
        assert_eq!(
            lifecycle_stage(&history(&[(821, 1, 100), (950, 1, 100)]), as_of, &two_periods),
            LifecycleStage::Formation
        );
        assert_eq!(
            lifecycle_stage(&history(&[(820, 1, 100), (950, 1, 100)]), as_of, &two_periods),
            LifecycleStage::Stability
        );
        // Only two periods with purchases.
        assert_eq!(
            stage(&[(500, 1, 100), (850, 1, 100), (950, 1, 100)]),
            LifecycleStage::Formation
        );
        // Days after as_of are ignored everywhere.
        assert_eq!(
            stage(&[(990, 1, 100), (1_001, 5, 100)]),
            LifecycleStage::Exploration
        );
        assert_eq!(stage(&[(600, 2, 100), (1_200, 1, 100)]), LifecycleStage::Ended);
    }

    #[test]
    fn ended_patterns() {
        let params = LifecycleParams::default();
        let cases = [
            (
                vec![(100, 1, 100)],
                LifecycleStage::Exploration,
                EndedPattern::EarlyAbort,
            ),
            (
                vec![(80, 1, 100), (100, 1, 100)],
                LifecycleStage::Formation,
                EndedPattern::MidWay,
            ),
            (
                vec![(-200, 1, 100), (-20, 1, 100), (50, 1, 100), (100, 1, 100)],
                LifecycleStage::Stability,
                EndedPattern::EarlyExit,
            ),
            (
                vec![(-50, 1, 1_000), (100, 1, 100)],
                LifecycleStage::Decline,
                EndedPattern::LongTerm,
            ),
        ];
        for (days, stage, pattern) in cases {
            let aggregates = history(&days);
            assert_eq!(
                lifecycle_stage(&aggregates, 1_000, &params),
                LifecycleStage::Ended
            );
            assert_eq!(ended_in(&aggregates, &params), Some(stage));
            assert_eq!(EndedPattern::from_stage(stage), Some(pattern));
        }
        assert_eq!(ended_in(&Aggregates::new(), &params), None);
        assert_eq!(EndedPattern::from_stage(LifecycleStage::Ended), None);
        for stage in LifecycleStage::ALL {
            assert_eq!(LifecycleStage::from_str_name(stage.as_str()), Some(stage));
        }
    }

    // -- Reference fixtures (tests/fixtures/segmentation, made by make_reference.py) --

    const PURCHASES: &str = include_str!("../../../../tests/fixtures/segmentation/purchases.csv");
    const REFUNDS: &str = include_str!("../../../../tests/fixtures/segmentation/refunds.csv");
    const EXPECTED: &str = include_str!("../../../../tests/fixtures/segmentation/expected.csv");
    const EXPECTED_SUMMARY: &str =
        include_str!("../../../../tests/fixtures/segmentation/expected_summary.csv");

    /// Rows of a simple CSV (no quoting), checking the header.
    fn rows<'a>(text: &'a str, header: &str) -> Vec<Vec<&'a str>> {
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(header));
        lines
            .filter(|line| !line.is_empty())
            .map(|line| line.split(',').collect::<Vec<_>>())
            .collect()
    }

    fn day_of_text(text: &str) -> i64 {
        day_of(DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc))
    }

    fn close(actual: f64, expected: &str) -> bool {
        (actual - expected.parse::<f64>().unwrap()).abs() <= 1e-6
    }

    #[test]
    fn fixture_matches_reference() {
        let summary: HashMap<&str, &str> = rows(EXPECTED_SUMMARY, "metric,value")
            .into_iter()
            .map(|row| (row[0], row[1]))
            .collect();
        let number = |metric: &str| summary[metric].parse::<i64>().unwrap();
        let as_of_day = day_of_text(summary["as_of"]);
        assert_eq!(as_of_day, number("as_of_day"));
        let window_days = number("window_days");
        let thresholds = AbcThresholds::new(
            summary["a_share"].parse().unwrap(),
            summary["b_share"].parse().unwrap(),
        )
        .unwrap();
        let params = LifecycleParams::default();

        let mut aggregates: HashMap<&str, Aggregates> = HashMap::new();
        let mut orders: HashMap<&str, (&str, i64, i64)> = HashMap::new();
        for row in rows(
            PURCHASES,
            "customer,order_id,occur_time,amount_minor,margin_minor,currency",
        ) {
            let day = day_of_text(row[2]);
            let amount: i64 = row[3].parse().unwrap();
            assert_eq!(row[5], "USD");
            aggregates
                .entry(row[0])
                .or_default()
                .record(day, 1, amount, row[4].parse().unwrap())
                .unwrap();
            assert!(orders.insert(row[1], (row[0], day, amount)).is_none());
        }
        for row in rows(REFUNDS, "customer,order_id,refund_id,occur_time,amount_minor") {
            let day = day_of_text(row[3]);
            let amount: i64 = row[4].parse().unwrap();
            let (customer, purchase_day, purchase_amount) = orders[row[1]];
            assert_eq!(customer, row[0]);
            assert!(day >= purchase_day && amount <= purchase_amount);
            aggregates
                .get_mut(row[0])
                .unwrap()
                .record(day, 0, -amount, 0)
                .unwrap();
        }
        for customer_aggregates in aggregates.values() {
            let blob = customer_aggregates.encode();
            assert_eq!(&Aggregates::decode(&blob).unwrap(), customer_aggregates);
        }

        let expected = rows(
            EXPECTED,
            "customer,recency_days,frequency,monetary_minor,r,f,m,rfm_code,segment,value_class,abc,lifecycle_stage,ended_pattern",
        );
        assert_eq!(expected.len() as i64, number("customers"));
        let empty = Aggregates::new();
        let mut population: Vec<(String, WindowValues)> = Vec::new();
        for row in &expected {
            let customer_aggregates = aggregates.get(row[0]).unwrap_or(&empty);
            if let Some(values) = customer_aggregates.window(as_of_day, window_days) {
                population.push((row[0].to_string(), values));
            }
        }
        let (cutoffs, scores) = score_population(as_of_day, window_days, &population, thresholds);
        let by_customer: HashMap<&str, (&WindowValues, &CustomerScores)> = population
            .iter()
            .zip(&scores)
            .map(|((key, values), scores)| (key.as_str(), (values, scores)))
            .collect();

        for row in &expected {
            let customer = row[0];
            match by_customer.get(customer) {
                None => assert!(
                    row[1..=10].iter().all(|cell| cell.is_empty()),
                    "{customer} should be outside the population"
                ),
                Some((values, scores)) => {
                    let actual = [
                        values.recency_days(as_of_day).to_string(),
                        values.frequency.to_string(),
                        values.monetary_minor.to_string(),
                        scores.r.to_string(),
                        scores.f.to_string(),
                        scores.m.to_string(),
                        scores.rfm_code(),
                        scores.segment.as_str().to_string(),
                        scores.value_class.as_str().to_string(),
                        scores.abc.as_str().to_string(),
                    ];
                    assert_eq!(actual.as_slice(), &row[1..=10], "{customer}");
                    // Scored alone against the batch, a member gets the batch's scores.
                    let single = cutoffs.score(values);
                    assert_eq!(
                        (single.r, single.f, single.m, single.segment, single.value_class),
                        (scores.r, scores.f, scores.m, scores.segment, scores.value_class),
                        "{customer}"
                    );
                }
            }
            let customer_aggregates = aggregates.get(customer).unwrap_or(&empty);
            let stage = lifecycle_stage(customer_aggregates, as_of_day, &params);
            assert_eq!(stage.as_str(), row[11], "{customer}");
            let pattern = match stage {
                LifecycleStage::Ended => ended_in(customer_aggregates, &params)
                    .and_then(EndedPattern::from_stage)
                    .map(EndedPattern::as_str)
                    .unwrap(),
                _ => "",
            };
            assert_eq!(pattern, row[12], "{customer}");
        }

        let report = pareto_report(&population, thresholds);
        assert_eq!(report.population as i64, number("population"));
        assert_eq!(cutoffs.population() as i64, number("population"));
        assert!(close(
            cutoffs.mean_recency_days().unwrap(),
            summary["mean_recency_days"]
        ));
        assert!(close(
            cutoffs.mean_frequency().unwrap(),
            summary["mean_frequency"]
        ));
        assert!(close(
            cutoffs.mean_monetary_minor().unwrap(),
            summary["mean_monetary_minor"]
        ));
        assert_eq!(report.total_monetary_minor, number("total_monetary_minor"));
        assert_eq!(report.top_customers as i64, number("top_customers"));
        assert_eq!(report.top_monetary_minor, number("top_monetary_minor"));
        assert!(close(report.top_share, summary["top_share"]));
        for (totals, class) in [(report.a, "a"), (report.b, "b"), (report.c, "c")] {
            assert_eq!(totals.customers as i64, number(&format!("abc_{class}_customers")));
            assert_eq!(
                totals.monetary_minor,
                number(&format!("abc_{class}_monetary_minor"))
            );
        }
        let decoded = Cutoffs::decode(&cutoffs.encode()).unwrap();
        assert_eq!(decoded, cutoffs);
    }
}
