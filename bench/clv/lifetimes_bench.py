#!/usr/bin/env python3
"""BG/NBD + Gamma-Gamma with lifetimes 0.11.3: the baseline of `crm-clv` (bench/src/bin/crm-clv.rs).

    python3 -m venv /tmp/clv-venv
    /tmp/clv-venv/bin/pip install -r bench/clv/requirements.txt
    /tmp/clv-venv/bin/python bench/clv/lifetimes_bench.py tests/fixtures/clv/cdnow_summary.csv --task fit
    /tmp/clv-venv/bin/python bench/clv/lifetimes_bench.py CUSTOMERS.csv --task score

Reads a summary CSV (columns frequency, recency, T, monetary_value, found by name; weeks)
with pandas (`float_precision="round_trip"`, so the floats are the same bits Rust parses)
and runs lifetimes as its documentation does:

- `--task fit`: `BetaGeoFitter().fit(frequency, recency, T)` on every customer, then
  `GammaGammaFitter().fit(frequency, monetary_value)` on the customers with frequency > 0,
  `--repeat` times in this process; elapsed_s is the best run, first_s the first;
- `--task score`: the same two fits once, then for every customer
  `conditional_probability_alive`, `conditional_expected_number_of_purchases_up_to_time(52,
  ...)` and `customer_lifetime_value(bgf, ..., time=12, discount_rate=0.01, freq="W")`.

Prints one JSON line (flat, numbers only): elapsed_s (the work above; not the import of
lifetimes, import_s, nor reading the CSV, parse_s), fit_bg_s, fit_gg_s, score_s,
peak_rss_kib (getrusage ru_maxrss of this process right after the work), the parameters in
the data's units under bg.* and gg.* with each model's total log-likelihood, and for the
score task the sums of P(alive), expected purchases and CLV over all customers (computed
after the clock stops): the same keys as crm-clv's own measurements.
"""

import argparse
import json
import resource
import sys
import time

HORIZON_WEEKS = 52
CLV_MONTHS = 12
CLV_DISCOUNT_RATE = 0.01
CLV_FREQ = "W"


def fit(BetaGeoFitter, GammaGammaFitter, data):
    started = time.perf_counter()
    bgf = BetaGeoFitter(penalizer_coef=0.0).fit(data["frequency"], data["recency"], data["T"])
    fit_bg_s = time.perf_counter() - started
    started = time.perf_counter()
    repeat = data[data["frequency"] > 0]
    ggf = GammaGammaFitter(penalizer_coef=0.0).fit(repeat["frequency"], repeat["monetary_value"])
    fit_gg_s = time.perf_counter() - started
    return bgf, ggf, fit_bg_s, fit_gg_s, len(repeat)


def fit_report(np, BetaGeoFitter, GammaGammaFitter, data, bgf, ggf, gg_customers):
    r, alpha, a, b = (float(bgf.params_[name]) for name in ["r", "alpha", "a", "b"])
    p, q, v = (float(ggf.params_[name]) for name in ["p", "q", "v"])
    repeat = data[data["frequency"] > 0]
    # Total log-likelihoods in the data's units, as tests/fixtures/clv/make_fixtures.py.
    bg_ll = -len(data) * BetaGeoFitter._negative_log_likelihood(
        np.log([r, alpha, a, b]),
        data["frequency"].values,
        data["recency"].values,
        data["T"].values,
        np.ones(len(data)),
        0.0,
    )
    gg_ll = -len(repeat) * GammaGammaFitter._negative_log_likelihood(
        np.log([p, q, v]),
        repeat["frequency"].values.astype(float),
        repeat["monetary_value"].values.astype(float),
        np.ones(len(repeat)),
        0.0,
    )
    return {
        "bg.r": r,
        "bg.alpha": alpha,
        "bg.a": a,
        "bg.b": b,
        "bg.log_likelihood": float(bg_ll),
        "bg.customers": len(data),
        "gg.p": p,
        "gg.q": q,
        "gg.v": v,
        "gg.log_likelihood": float(gg_ll),
        "gg.customers": gg_customers,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--task", choices=["fit", "score"], required=True)
    parser.add_argument("--repeat", type=int, default=1, help="runs in this process (fit task); the best is reported")
    parser.add_argument(
        "--check-cdnow",
        action="store_true",
        help="also report whether the CSV equals lifetimes' own CDNOW sample (cdnow_matches_lifetimes = 1)",
    )
    args = parser.parse_args()

    started = time.perf_counter()
    try:
        import numpy as np
        import pandas as pd
        import lifetimes
        from lifetimes import BetaGeoFitter, GammaGammaFitter
    except ImportError as error:
        sys.exit(
            f"lifetimes is not usable with this python ({error}): python3 -m venv /tmp/clv-venv && "
            "/tmp/clv-venv/bin/pip install -r bench/clv/requirements.txt, then pass "
            "--python /tmp/clv-venv/bin/python to crm-clv"
        )
    import_s = time.perf_counter() - started

    started = time.perf_counter()
    data = pd.read_csv(
        args.csv,
        usecols=["frequency", "recency", "T", "monetary_value"],
        float_precision="round_trip",
    )
    parse_s = time.perf_counter() - started

    report = {"import_s": import_s, "parse_s": parse_s, "customers": len(data)}
    if args.task == "fit":
        times = []
        for run in range(max(args.repeat, 1)):
            started = time.perf_counter()
            bgf, ggf, fit_bg_s, fit_gg_s, gg_customers = fit(BetaGeoFitter, GammaGammaFitter, data)
            elapsed = time.perf_counter() - started
            times.append(elapsed)
            report[f"run.{run + 1}_s"] = elapsed
            if elapsed <= min(times):
                report.update({"fit_bg_s": fit_bg_s, "fit_gg_s": fit_gg_s})
        report["elapsed_s"] = min(times)
        report["first_s"] = times[0]
    else:
        started = time.perf_counter()
        bgf, ggf, fit_bg_s, fit_gg_s, gg_customers = fit(BetaGeoFitter, GammaGammaFitter, data)
        scoring = time.perf_counter()
        x, t_x, big_t, m = data["frequency"], data["recency"], data["T"], data["monetary_value"]
        p_alive = bgf.conditional_probability_alive(x.values, t_x.values, big_t.values)
        purchases = bgf.conditional_expected_number_of_purchases_up_to_time(HORIZON_WEEKS, x, t_x, big_t)
        clv = ggf.customer_lifetime_value(
            bgf, x, t_x, big_t, m, time=CLV_MONTHS, discount_rate=CLV_DISCOUNT_RATE, freq=CLV_FREQ
        )
        elapsed = time.perf_counter() - started
        report.update(
            {
                "elapsed_s": elapsed,
                "fit_bg_s": fit_bg_s,
                "fit_gg_s": fit_gg_s,
                "score_s": elapsed - (scoring - started),
            }
        )
    report["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    report.update(fit_report(np, BetaGeoFitter, GammaGammaFitter, data, bgf, ggf, gg_customers))
    if args.task == "score":
        values = {"sum.p_alive": p_alive, "sum.expected_purchases": purchases, "sum.clv": clv}
        for key, series in values.items():
            array = np.asarray(series, dtype=float)
            report[f"nonfinite.{key[4:]}"] = int((~np.isfinite(array)).sum())
            report[key] = float(np.nansum(array))
    if args.check_cdnow:
        from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value

        shipped = load_cdnow_summary_data_with_monetary_value()
        same = len(shipped) == len(data) and all(
            np.array_equal(shipped[column].values, data[column].values)
            for column in ["frequency", "recency", "T", "monetary_value"]
        )
        report["cdnow_matches_lifetimes"] = int(same)
    report["lifetimes_version_ok"] = int(lifetimes.__version__ == "0.11.3")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
