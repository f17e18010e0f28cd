//! The synthetic data set of `crm-recompute` and its CSV format.
//!
//! One row per event, integers only:
//!
//! ```text
//! customer_id,unix_time,purchases,net_minor,margin_minor
//! 417,1689012345,1,5399,1210     a purchase: 1, its amount, its margin
//! 417,1690000000,0,-5399,0       a refund: 0, minus the refunded amount, no margin
//! ```
//!
//! Customers are `0..customers`; each has at least one purchase, the rest of the purchases go
//! to customers drawn with a heavy skew (a few customers buy very often). Each customer is
//! active over a span of the three years ending on [`AS_OF_DAY`], so some have not bought for
//! over a year (outside the RFM population), and each has a spending scale drawn from a Pareto
//! distribution, amounts varying around it log-normally. About 2 % of purchases are refunded,
//! in full or in part, a few days to two months later. Rows are in random customer order, not
//! sorted. The same seed gives the same file, byte for byte.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, bail};

/// The header line of the CSV.
pub const CSV_HEADER: &str = "customer_id,unix_time,purchases,net_minor,margin_minor";

/// 2023-07-01 UTC as a day number (days since 1970-01-01).
pub const FIRST_DAY: i64 = 19_539;
/// Days covered: 2023-07-01 to 2026-06-30 inclusive.
pub const SPAN_DAYS: i64 = 1_096;
/// 2026-06-30, the last day of the data and the as-of day of the scores.
pub const AS_OF_DAY: i64 = FIRST_DAY + SPAN_DAYS - 1;

const SECONDS_PER_DAY: i64 = 86_400;
/// Share of purchases refunded.
const REFUND_SHARE: f64 = 0.02;
/// Skew of the extra purchases: customer rank = customers x u^SKEW, so the top 1 % of ranks
/// get 0.01^(1/SKEW) (about 16 %) of them.
const SKEW: f64 = 2.5;

/// SplitMix64: tiny, fast and good enough for synthetic data; deterministic everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1_u64 << 53) as f64)
    }

    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// One customer's habits.
#[derive(Debug, Clone, Copy)]
struct Profile {
    /// First active day, as an offset from [`FIRST_DAY`].
    start: i64,
    /// Active days from `start` (at least 1).
    days: i64,
    /// Typical amount in minor units.
    scale: f64,
}

fn profile(seed: u64, customer: u64) -> Profile {
    let mut rng = Rng::new(seed ^ customer.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let start = i64::try_from(rng.below(SPAN_DAYS as u64)).unwrap_or(0);
    let remaining = SPAN_DAYS - start;
    // sqrt skews spans long: most customers stay a good while, some buy once and vanish.
    let days = 1 + ((remaining - 1) as f64 * rng.unit().sqrt()) as i64;
    let pareto = (1.0 - rng.unit()).powf(-1.0 / 1.3).min(60.0);
    Profile {
        start,
        days,
        scale: 2_000.0 * pareto,
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Generated {
    pub customers: u64,
    pub purchases: u64,
    pub refunds: u64,
    pub bytes: u64,
}

/// Writes the data set to `path`: `customers` customers, `purchases` purchases and about 2 %
/// as many refunds.
pub fn generate(path: &Path, customers: u64, purchases: u64, seed: u64) -> anyhow::Result<Generated> {
    if customers == 0 || purchases < customers {
        bail!("need at least one customer and at least one purchase per customer");
    }
    let profiles: Vec<Profile> = (0..customers).map(|id| profile(seed, id)).collect();
    // Ranks are spread over ids by a multiplicative permutation, so heavy buyers are not the
    // low ids.
    let mut multiplier = 2_654_435_761_u64 % customers;
    while customers > 1 && gcd(multiplier, customers) != 1 {
        multiplier = (multiplier + 1) % customers;
    }
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    writeln!(out, "{CSV_HEADER}")?;
    let mut rng = Rng::new(seed);
    let mut written = Generated {
        customers,
        ..Generated::default()
    };
    let mut line = String::with_capacity(64);
    for n in 0..purchases {
        let customer = if n < customers {
            n
        } else {
            let rank = ((customers as f64) * rng.unit().powf(SKEW)) as u64;
            ((u128::from(rank.min(customers - 1)) * u128::from(multiplier)) % u128::from(customers)) as u64
        };
        let Some(habits) = profiles.get(customer as usize).copied() else {
            continue;
        };
        let day = FIRST_DAY + habits.start + i64::try_from(rng.below(habits.days as u64)).unwrap_or(0);
        let time = day * SECONDS_PER_DAY + i64::try_from(rng.below(SECONDS_PER_DAY as u64)).unwrap_or(0);
        let amount = ((habits.scale * (0.6 * rng.normal()).exp()).round() as i64).max(99);
        let margin = (amount as f64 * (0.05 + 0.4 * rng.unit())) as i64;
        line.clear();
        push_row(&mut line, customer, time, 1, amount, margin);
        out.write_all(line.as_bytes())?;
        written.purchases += 1;
        if rng.unit() < REFUND_SHARE {
            const DELAYS: [i64; 8] = [0, 0, 1, 3, 7, 14, 30, 60];
            let delay = DELAYS
                .get(rng.below(DELAYS.len() as u64) as usize)
                .copied()
                .unwrap_or(0);
            let refund_day = (day + delay).min(AS_OF_DAY);
            let refund_time =
                refund_day * SECONDS_PER_DAY + i64::try_from(rng.below(SECONDS_PER_DAY as u64)).unwrap_or(0);
            let refunded = if rng.unit() < 0.6 {
                amount
            } else {
                1 + i64::try_from(rng.below(amount as u64)).unwrap_or(0)
            };
            line.clear();
            push_row(&mut line, customer, refund_time.max(time), 0, -refunded, 0);
            out.write_all(line.as_bytes())?;
            written.refunds += 1;
        }
    }
    out.flush()?;
    written.bytes = std::fs::metadata(path)?.len();
    Ok(written)
}

fn push_row(line: &mut String, customer: u64, time: i64, purchases: i64, net: i64, margin: i64) {
    use std::fmt::Write as _;
    let _ = writeln!(line, "{customer},{time},{purchases},{net},{margin}");
}

/// One row of the CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub customer_id: u64,
    pub unix_time: i64,
    pub purchases: i64,
    pub net_minor: i64,
    pub margin_minor: i64,
}

fn parse_i64(field: &[u8]) -> Option<i64> {
    let (negative, digits) = match field.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, field),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut value: i64 = 0;
    for byte in digits {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(byte - b'0');
    }
    Some(if negative { -value } else { value })
}

fn parse_line(line: &[u8]) -> Option<Event> {
    let mut fields = line.split(|byte| *byte == b',');
    let mut next = || fields.next().and_then(parse_i64);
    let event = Event {
        customer_id: u64::try_from(next()?).ok()?,
        unix_time: next()?,
        purchases: next()?,
        net_minor: next()?,
        margin_minor: next()?,
    };
    fields.next().is_none().then_some(event)
}

/// Reads the CSV row by row (streaming: memory stays flat whatever the file's size), calling
/// `each` per row. Returns the number of rows.
pub fn read_events(path: &Path, each: impl FnMut(Event) -> anyhow::Result<()>) -> anyhow::Result<u64> {
    let length = std::fs::metadata(path)
        .with_context(|| format!("open {}", path.display()))?
        .len();
    read_range(path, 0, length, each)
}

/// Splits the file into `parts` byte ranges of whole lines, for [`read_range`].
pub fn split(path: &Path, parts: u64) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let length = file.metadata()?.len();
    let mut bounds = vec![0];
    for part in 1..parts.max(1) {
        let guess = length / parts * part;
        let previous = bounds.last().copied().unwrap_or(0);
        if guess <= previous {
            continue;
        }
        file.seek(SeekFrom::Start(guess))?;
        let mut rest = Vec::new();
        let mut reader = BufReader::new(&mut file);
        let skipped = reader.read_until(b'\n', &mut rest)? as u64;
        let bound = (guess + skipped).min(length);
        if bound > previous {
            bounds.push(bound);
        }
    }
    bounds.push(length);
    bounds.dedup();
    Ok(bounds
        .windows(2)
        .filter_map(|pair| match pair {
            [start, end] => Some((*start, *end)),
            _ => None,
        })
        .collect())
}

/// Reads the rows in bytes `start..end` of the file (whole lines, as [`split`] makes them;
/// the range from 0 starts with the header, which is checked and skipped).
pub fn read_range(
    path: &Path,
    start: u64,
    end: u64,
    mut each: impl FnMut(Event) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    file.seek(SeekFrom::Start(start))?;
    let mut reader = BufReader::with_capacity(1 << 20, file.take(end.saturating_sub(start)));
    let mut line = Vec::with_capacity(128);
    if start == 0 {
        reader.read_until(b'\n', &mut line)?;
        if trim_end(&line) != CSV_HEADER.as_bytes() {
            bail!("{} does not start with the header {CSV_HEADER}", path.display());
        }
    }
    let mut rows = 0_u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let content = trim_end(&line);
        if content.is_empty() {
            continue;
        }
        let Some(event) = parse_line(content) else {
            bail!(
                "{}: not a row of {CSV_HEADER}: {:?}",
                path.display(),
                String::from_utf8_lossy(content)
            );
        };
        each(event)?;
        rows += 1;
    }
    Ok(rows)
}

fn trim_end(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line.get(end - 1), Some(b'\n' | b'\r')) {
        end -= 1;
    }
    line.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_refuses_garbage() {
        assert_eq!(
            parse_line(b"417,1689012345,0,-5399,0"),
            Some(Event {
                customer_id: 417,
                unix_time: 1_689_012_345,
                purchases: 0,
                net_minor: -5399,
                margin_minor: 0,
            })
        );
        assert_eq!(parse_line(b"417,1689012345,0,-5399"), None);
        assert_eq!(parse_line(b"417,1689012345,0,-5399,0,9"), None);
        assert_eq!(parse_line(b"-1,1,1,1,1"), None);
        assert_eq!(parse_line(b"1,x,1,1,1"), None);
    }

    #[test]
    fn same_seed_same_file() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("crm-recompute-test-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir)?;
        let (a, b) = (dir.join("a.csv"), dir.join("b.csv"));
        let generated = generate(&a, 100, 1_000, 7)?;
        generate(&b, 100, 1_000, 7)?;
        assert_eq!(std::fs::read(&a)?, std::fs::read(&b)?);
        let mut customers = std::collections::BTreeSet::new();
        let mut purchases = 0;
        let rows = read_events(&a, |event| {
            customers.insert(event.customer_id);
            purchases += event.purchases;
            assert!((FIRST_DAY * 86_400..(AS_OF_DAY + 1) * 86_400).contains(&event.unix_time));
            Ok(())
        })?;
        assert_eq!(rows, generated.purchases + generated.refunds);
        for parts in [1, 2, 3, 7] {
            let mut total = 0;
            for (start, end) in split(&a, parts)? {
                total += read_range(&a, start, end, |_| Ok(()))?;
            }
            assert_eq!(total, rows);
        }
        assert_eq!(customers.len(), 100);
        assert_eq!(purchases, 1_000);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
