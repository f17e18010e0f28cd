#!/usr/bin/env python3
"""RFM + ABC with Polars: the baseline of `crm-recompute` (bench/src/bin/crm-recompute.rs).

    python3 -m venv /tmp/polars-venv
    /tmp/polars-venv/bin/pip install -r bench/recompute/requirements.txt
    /tmp/polars-venv/bin/python bench/recompute/rfm_abc_polars.py EVENTS.csv --as-of-day 20634

Reads the CSV written by `crm-recompute` (customer_id,unix_time,purchases,net_minor,
margin_minor: a purchase has purchases 1, a refund 0 and a negative net) and computes, as
DESIGN.md section 5 and services/segmentation/src/domain/scores.rs define them (the pandas
reference is tests/fixtures/segmentation/make_reference.py):

- the RFM window: events on days d with as_of_day - window_days < d <= as_of_day (UTC days);
  frequency = purchases, monetary = net (refunds deducted), last purchase day; the population
  is the customers with at least one purchase in it;
- R, F, M scores: 1 + floor(5 * members with a strictly worse value / n) (a later last
  purchase day is a better recency);
- the segment from (R, F); the value class from R, F, M above or below the population mean
  (recency: fewer days than the mean is high);
- ABC: by monetary descending (ties by customer id ascending), A while the revenue before the
  customer is under 80 % of the total, B under 95 %, C the rest (all C when the total is not
  positive).

Prints one JSON line: elapsed_s (from reading the CSV to the scored frame; not the import of
polars, which is import_s), peak_rss_kib (getrusage ru_maxrss of this process), rows of the
scored frame, and the checks (counts per class and score, digests) under check.*, computed
after the clock stops, in the same form as crm-recompute's own measurements.
"""

import argparse
import json
import resource
import sys
import time

SEGMENTS = [
    "champions",
    "loyal",
    "potential_loyalists",
    "new",
    "promising",
    "need_attention",
    "about_to_sleep",
    "at_risk",
    "cant_lose",
    "hibernating",
]
VALUE_CLASSES = [
    "important_value",  # R high, F high, M high
    "important_development",  # +-+
    "important_retention",  # -++
    "important_win_back",  # --+
    "general_value",  # ++-
    "general_development",  # +--
    "general_retention",  # -+-
    "general_win_back",  # ---
]
ABC = ["A", "B", "C"]
DIGEST_MODULUS = 1_000_003


def scored_frame(pl, path, as_of_day, window_days, a_share, b_share):
    events = pl.scan_csv(
        path,
        schema={
            "customer_id": pl.Int64,
            "unix_time": pl.Int64,
            "purchases": pl.Int64,
            "net_minor": pl.Int64,
            "margin_minor": pl.Int64,
        },
    ).with_columns(day=pl.col("unix_time") // 86_400)
    window = events.filter((pl.col("day") > as_of_day - window_days) & (pl.col("day") <= as_of_day))
    pop = (
        window.group_by("customer_id")
        .agg(
            frequency=pl.col("purchases").sum(),
            monetary=pl.col("net_minor").sum(),
            last_day=pl.col("day").filter(pl.col("purchases") > 0).max(),
        )
        .filter(pl.col("frequency") >= 1)
    )
    n = pl.len()

    def score(column):
        worse = pl.col(column).rank("min").cast(pl.Int64) - 1
        return (1 + (5 * worse) // n).cast(pl.Int8)

    r, f = pl.col("r"), pl.col("f")
    segment = (
        pl.when((r == 5) & (f >= 4)).then(pl.lit("champions"))
        .when(r.is_between(3, 4) & (f >= 4)).then(pl.lit("loyal"))
        .when((r >= 4) & f.is_between(2, 3)).then(pl.lit("potential_loyalists"))
        .when((r == 5) & (f == 1)).then(pl.lit("new"))
        .when((r == 4) & (f == 1)).then(pl.lit("promising"))
        .when((r == 3) & (f == 3)).then(pl.lit("need_attention"))
        .when((r == 3) & (f <= 2)).then(pl.lit("about_to_sleep"))
        .when((r <= 2) & f.is_between(3, 4)).then(pl.lit("at_risk"))
        .when((r <= 2) & (f == 5)).then(pl.lit("cant_lose"))
        .otherwise(pl.lit("hibernating"))
    )
    recency = as_of_day - pl.col("last_day")
    r_high = recency < recency.mean()
    f_high = pl.col("frequency") > pl.col("frequency").mean()
    m_high = pl.col("monetary") > pl.col("monetary").mean()
    value_class = (
        pl.when(m_high)
        .then(
            pl.when(r_high & f_high).then(pl.lit("important_value"))
            .when(r_high).then(pl.lit("important_development"))
            .when(f_high).then(pl.lit("important_retention"))
            .otherwise(pl.lit("important_win_back"))
        )
        .otherwise(
            pl.when(r_high & f_high).then(pl.lit("general_value"))
            .when(r_high).then(pl.lit("general_development"))
            .when(f_high).then(pl.lit("general_retention"))
            .otherwise(pl.lit("general_win_back"))
        )
    )
    total = pl.col("monetary").sum()
    before = (pl.col("monetary").cum_sum() - pl.col("monetary")).cast(pl.Float64)
    abc = (
        pl.when(total <= 0).then(pl.lit("C"))
        .when(before < a_share * total.cast(pl.Float64)).then(pl.lit("A"))
        .when(before < b_share * total.cast(pl.Float64)).then(pl.lit("B"))
        .otherwise(pl.lit("C"))
    )
    return (
        pop.with_columns(r=score("last_day"), f=score("frequency"), m=score("monetary"))
        .with_columns(segment=segment, value_class=value_class)
        .sort(["monetary", "customer_id"], descending=[True, False])
        .with_columns(abc=abc)
        .collect()
    )


def checks(pl, frame):
    out = {"population": frame.height, "monetary_total": int(frame["monetary"].sum())}
    for column, names in [("segment", SEGMENTS), ("value_class", VALUE_CLASSES), ("abc", ABC)]:
        counts = dict(frame.group_by(column).len().iter_rows())
        for name in names:
            out[f"{column}.{name}"] = int(counts.get(name, 0))
    for column in ["r", "f", "m"]:
        counts = dict(frame.group_by(column).len().iter_rows())
        for score in range(1, 6):
            out[f"{column}.{score}"] = int(counts.get(score, 0))
    weight = pl.col("customer_id") % DIGEST_MODULUS + 1
    numbered = frame.select(
        weight.alias("w"),
        pl.col("r").cast(pl.Int64),
        pl.col("f").cast(pl.Int64),
        pl.col("m").cast(pl.Int64),
        pl.col("segment").replace_strict(SEGMENTS, range(1, 11), return_dtype=pl.Int64),
        pl.col("value_class").replace_strict(VALUE_CLASSES, range(1, 9), return_dtype=pl.Int64),
        pl.col("abc").replace_strict(ABC, range(1, 4), return_dtype=pl.Int64),
    )
    for column in ["r", "f", "m", "segment", "value_class", "abc"]:
        out[f"digest.{column}"] = int((numbered["w"] * numbered[column]).sum())
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--as-of-day", type=int, required=True, help="UTC day number (days since 1970-01-01)")
    parser.add_argument("--window-days", type=int, default=365)
    parser.add_argument("--a-share", type=float, default=0.8)
    parser.add_argument("--b-share", type=float, default=0.95)
    args = parser.parse_args()

    started = time.perf_counter()
    try:
        import polars as pl
    except ImportError:
        sys.exit(
            "polars is not installed for this python: python3 -m venv /tmp/polars-venv && "
            "/tmp/polars-venv/bin/pip install -r bench/recompute/requirements.txt, then pass "
            "--python /tmp/polars-venv/bin/python to crm-recompute"
        )
    import_s = time.perf_counter() - started

    started = time.perf_counter()
    frame = scored_frame(pl, args.csv, args.as_of_day, args.window_days, args.a_share, args.b_share)
    elapsed_s = time.perf_counter() - started
    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    report = {
        "elapsed_s": elapsed_s,
        "import_s": import_s,
        "peak_rss_kib": peak_rss_kib,
        "rows": frame.height,
        "threads": pl.thread_pool_size(),
    }
    report.update({f"check.{key}": value for key, value in checks(pl, frame).items()})
    print(json.dumps(report))


if __name__ == "__main__":
    main()
