//! Our side of the comparison without a store: the CSV folded into per-customer
//! [`Aggregates`] (the service's representation: per-day sums over the whole history), each
//! customer's RFM window, then [`score_population`] (R, F, M scores, segments, value classes,
//! ABC) — the work the Polars script does, with the crate's own code.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use anyhow::anyhow;
use crm_segmentation::domain::scores::{
    AbcThresholds, Aggregates, WindowValues, epoch_day, score_population,
};

use super::data::{Event, read_events, read_range, split};
use super::summary::Scored;

/// A multiplicative hash for integer ids (FxHash's step): SipHash would cost more than the
/// folding itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(SEED);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(SEED);
    }
}

pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Every customer of the CSV with its aggregates, in one map per folding thread (each
/// customer in exactly one).
#[derive(Debug, Default)]
pub struct Folded {
    pub parts: Vec<IdMap<Aggregates>>,
    pub rows: u64,
}

impl Folded {
    pub fn customers(&self) -> impl Iterator<Item = (u64, &Aggregates)> {
        self.parts
            .iter()
            .flat_map(|part| part.iter().map(|(id, aggregates)| (*id, aggregates)))
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(|part| part.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn record(customers: &mut IdMap<Aggregates>, event: &Event) -> anyhow::Result<()> {
    customers
        .entry(event.customer_id)
        .or_default()
        .record(
            epoch_day(event.unix_time),
            event.purchases,
            event.net_minor,
            event.margin_minor,
        )
        .map_err(|error| anyhow!("customer {}: {error}", event.customer_id))
}

/// Folds the CSV into aggregates on one thread.
pub fn fold(csv: &Path) -> anyhow::Result<Folded> {
    let mut customers = IdMap::default();
    let rows = read_events(csv, |event| record(&mut customers, &event))?;
    Ok(Folded {
        parts: vec![customers],
        rows,
    })
}

/// Partitions of [`fold_partitioned`]: each holds about 1/64 of the customers, so folding one
/// works in a map small enough to stay in the CPU caches.
const PARTITIONS: usize = 64;

/// One row as kept between parsing and folding (32 bytes instead of 40).
#[derive(Debug, Clone, Copy)]
struct Compact {
    customer_id: u64,
    net_minor: i64,
    margin_minor: i64,
    day: i32,
    purchases: i32,
}

fn partition_of(customer_id: u64) -> usize {
    // Not the map's hash: the map must still see entropy in its top bits within a partition.
    (customer_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % PARTITIONS
}

/// Folds the CSV into aggregates with `threads` threads, the way a columnar engine groups:
/// each thread parses its share of the file into per-partition vectors (customers hashed
/// into 64 partitions), then the threads fold whole partitions, each partition's events
/// freed as soon as it is folded. Random access into the million customers' vectors (a
/// cache miss per row, which dominates [`fold`]) becomes access into small maps.
pub fn fold_partitioned(csv: &Path, threads: usize) -> anyhow::Result<Folded> {
    let threads = threads.max(1);
    let ranges = split(csv, threads as u64)?;
    // Parse: one vector per (range, partition).
    let parsed: Vec<Vec<Vec<Compact>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = ranges
            .iter()
            .map(|(start, end)| {
                scope.spawn(move || -> anyhow::Result<Vec<Vec<Compact>>> {
                    let mut partitions: Vec<Vec<Compact>> = (0..PARTITIONS).map(|_| Vec::new()).collect();
                    read_range(csv, *start, *end, |event| {
                        let compact = Compact {
                            customer_id: event.customer_id,
                            net_minor: event.net_minor,
                            margin_minor: event.margin_minor,
                            day: i32::try_from(epoch_day(event.unix_time))
                                .map_err(|_| anyhow!("time {} out of range", event.unix_time))?,
                            purchases: i32::try_from(event.purchases)
                                .map_err(|_| anyhow!("purchases {} out of range", event.purchases))?,
                        };
                        if let Some(partition) = partitions.get_mut(partition_of(event.customer_id)) {
                            partition.push(compact);
                        }
                        Ok(())
                    })?;
                    Ok(partitions)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().map_err(|_| anyhow!("a parsing thread panicked"))?)
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    // Regroup by partition, so each folding thread owns whole partitions.
    let mut by_partition: Vec<Vec<Vec<Compact>>> = (0..PARTITIONS).map(|_| Vec::new()).collect();
    for per_range in parsed {
        for (partition, events) in per_range.into_iter().enumerate() {
            if let Some(slot) = by_partition.get_mut(partition) {
                slot.push(events);
            }
        }
    }
    let mut shares: Vec<Vec<Vec<Vec<Compact>>>> = (0..threads).map(|_| Vec::new()).collect();
    for (partition, events) in by_partition.into_iter().enumerate() {
        if let Some(share) = shares.get_mut(partition % threads) {
            share.push(events);
        }
    }
    let folded: Vec<(IdMap<Aggregates>, u64)> = std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .into_iter()
            .map(|share| {
                scope.spawn(move || -> anyhow::Result<(IdMap<Aggregates>, u64)> {
                    let mut all: IdMap<Aggregates> = IdMap::default();
                    let mut rows = 0_u64;
                    for partition in share {
                        let mut customers: IdMap<Aggregates> = IdMap::default();
                        for events in partition {
                            for event in events {
                                customers
                                    .entry(event.customer_id)
                                    .or_default()
                                    .record(
                                        i64::from(event.day),
                                        i64::from(event.purchases),
                                        event.net_minor,
                                        event.margin_minor,
                                    )
                                    .map_err(|error| anyhow!("customer {}: {error}", event.customer_id))?;
                                rows += 1;
                            }
                        }
                        all.extend(customers);
                    }
                    Ok((all, rows))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().map_err(|_| anyhow!("a folding thread panicked"))?)
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let rows = folded.iter().map(|(_, rows)| rows).sum();
    Ok(Folded {
        parts: folded.into_iter().map(|(part, _)| part).collect(),
        rows,
    })
}

/// The RFM population of the folded customers with their scores: the windows computed on one
/// thread per part, then [`score_population`].
pub fn score(
    folded: &Folded,
    as_of_day: i64,
    window_days: i64,
    abc: AbcThresholds,
) -> anyhow::Result<Vec<Scored>> {
    let windows: Vec<Vec<(u64, WindowValues)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = folded
            .parts
            .iter()
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .filter_map(|(id, aggregates)| {
                            Some((*id, aggregates.window(as_of_day, window_days)?))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().map_err(|_| anyhow!("a window thread panicked")))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    // Big-endian bytes order like the numbers, so ABC ties break by ascending id as in the
    // Polars script (and as the service's UUIDs, whose text sorts the same).
    let population: Vec<([u8; 8], WindowValues)> = windows
        .iter()
        .flatten()
        .map(|(id, values)| (id.to_be_bytes(), *values))
        .collect();
    let (_, scores) = score_population(as_of_day, window_days, &population, abc);
    Ok(windows
        .iter()
        .flatten()
        .zip(&scores)
        .map(|((id, values), scores)| Scored::new(*id, values.monetary_minor, scores))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recompute::data::{AS_OF_DAY, generate};

    #[test]
    fn both_folds_agree() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("crm-recompute-test-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir)?;
        let csv = dir.join("events.csv");
        generate(&csv, 500, 5_000, 11)?;
        let one = fold(&csv)?;
        let sorted = |folded: &Folded| {
            folded
                .customers()
                .map(|(id, aggregates)| (id, aggregates.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let mut scored = score(&one, AS_OF_DAY, 365, AbcThresholds::default())?;
        scored.sort_by_key(|customer| customer.customer_id);
        assert!(!scored.is_empty() && scored.len() < 500);
        for threads in [1, 2, 3] {
            let other = fold_partitioned(&csv, threads)?;
            assert_eq!(sorted(&one), sorted(&other));
            assert_eq!(one.rows, other.rows);
            let mut other_scored = score(&other, AS_OF_DAY, 365, AbcThresholds::default())?;
            other_scored.sort_by_key(|customer| customer.customer_id);
            assert_eq!(scored, other_scored);
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
