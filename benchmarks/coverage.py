"""Coverage of the stability intervals: nominal vs measured, on studies simulated from a stated model.

    python -m benchmarks.coverage                     # 1000 studies at 3 and at 5 seeds, 90% intervals
    python -m benchmarks.coverage --studies 2000 --confidence 0.95 --sigma 1.0

The model (sizes of the `paper_stability` space): 2 methods; families augmentation (4 settings, base
included), optimizer (3) and learning rate (7); seed j of setting k scores mu_k + sigma * e_kj with e_kj
independent standard normal, sigma = 0.5 top-1 points by default. The true setting means `TRUE_MEANS`
are CIFAR-10-like (the base 94.0 for SupCon and 93.0 for cross-entropy, shared by each method's three
families). Each simulated study draws every seed afresh; each interval is checked against the true
value it is for: the std (ddof=1) and range of the true setting means per (family, method), their
SupCon-minus-cross-entropy differences (the verdicts rest on the range difference), and the true mean of
one setting (best_top1's interval, shown for the base setting).

Contenders: `new`, the intervals `analysis.stability` computes (parametric bootstrap of the seed noise
inverted as a test, see its docstring; Student t for one setting's mean), and `old`, the seed bootstrap it
used before (seeds resampled within each setting, deviations inflated by sqrt(n / (n - 1)), basic
intervals for spreads and their differences, a percentile interval for a mean), copied here verbatim so
the two run on the same simulated studies. A cell's coverage is measured on `--studies` studies, so its
binomial standard error is sqrt(c (1 - c) / studies): 0.95 points at c = 0.9 and 1000 studies.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from analysis.stability import difference_intervals, mean_interval, spread, spread_confidence
from benchmarks.common import print_header, print_table

METHODS = ("supcon", "ce")
TRUE_MEANS = {  # family -> method -> true setting means (top-1 %); the first setting is the base
    "augmentation": {"supcon": (94.0, 93.4, 92.6, 93.8), "ce": (93.0, 91.5, 90.2, 92.4)},
    "optimizer": {"supcon": (94.0, 93.1, 93.6), "ce": (93.0, 90.9, 92.2)},
    "lr": {"supcon": (94.0, 93.7, 93.2, 92.1, 93.9, 93.5, 90.8), "ce": (93.0, 92.1, 90.5, 86.0, 92.7, 91.8, 88.9)},
}


# ------------------------------------------------------------------ the old method (before issue 11, item 8)
def old_bootstrap_setting_means(groups: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """The old seed bootstrap: [n_boot, n_settings] replicate setting means, seeds resampled within each
    setting, deviations from the setting mean inflated by sqrt(n / (n - 1))."""
    sizes = np.array([len(g) for g in groups], dtype=int)
    values = np.full((len(groups), max(sizes.max(initial=1), 1)), np.nan)
    for k, group in enumerate(groups):
        values[k, : len(group)] = group
    n_settings, width = values.shape
    draws = np.floor(rng.random((n_boot, n_settings, width)) * sizes[None, :, None]).astype(int)
    resampled = np.take_along_axis(np.broadcast_to(values, (n_boot, n_settings, width)), draws, axis=2)
    mask = np.arange(width)[None, None, :] < sizes[None, :, None]
    means = np.nanmean(values, axis=1)
    inflation = np.sqrt(sizes / np.maximum(sizes - 1, 1)) * (sizes > 1)
    sums = np.where(mask, resampled - means[None, :, None], 0.0).sum(axis=2)
    return means[None, :] + inflation[None, :] * sums / sizes[None, :]


def old_basic_interval(estimate: float, replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    low_q, high_q = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(2 * estimate - high_q), float(2 * estimate - low_q)


def old_percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    low_q, high_q = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low_q), float(high_q)


# ------------------------------------------------------------------ simulation
def simulate(seeds: int, studies: int, sigma: float, confidence: float, n_boot: int, seed: int) -> list[dict]:
    """Coverage rows for one seed count: per (family, quantity), new and old, with the new misses split
    into below (the whole interval above the truth) and above."""
    rng = np.random.default_rng(seed)
    hits: dict[tuple[str, str], dict[str, list[bool]]] = {}

    def record(family: str, quantity: str, method: str, interval: tuple[float, float], truth: float) -> None:
        cell = hits.setdefault((family, quantity), {})
        cell.setdefault(method, []).append(interval[0] <= truth <= interval[1])
        if method == "new":
            cell.setdefault("below", []).append(truth < interval[0])

    for _ in range(studies):
        for family, per_method in TRUE_MEANS.items():
            groups, curves, olds, truths, estimates = {}, {}, {}, {}, {}
            for method in METHODS:
                mu = np.array(per_method[method])
                groups[method] = [m + sigma * rng.standard_normal(seeds) for m in mu]
                truths[method] = dict(zip(("std", "range"), map(float, spread(mu)), strict=True))
                setting_means = np.array([g.mean() for g in groups[method]])
                estimates[method] = dict(zip(("std", "range"), map(float, spread(setting_means)), strict=True))
                curves[method] = spread_confidence(groups[method], n_boot=n_boot, rng=rng)
                boot = old_bootstrap_setting_means(groups[method], n_boot, rng)
                olds[method] = dict(zip(("std", "range"), spread(boot, axis=1), strict=True))
                for statistic in ("std", "range"):
                    truth, label = truths[method][statistic], f"{statistic}, {method}"
                    record(family, label, "new", curves[method][statistic].interval(confidence), truth)
                    old = old_basic_interval(estimates[method][statistic], olds[method][statistic], confidence)
                    record(family, label, "old", (max(0.0, old[0]), max(0.0, old[1])), truth)
                if family == "lr":  # one setting's mean (best_top1), once per method: the base setting
                    base = groups[method][0]
                    record("base", f"mean, {method}", "new", mean_interval(base, confidence), mu[0])
                    boot = old_bootstrap_setting_means([base], n_boot, rng)[:, 0]
                    record("base", f"mean, {method}", "old", old_percentile_interval(boot, confidence), mu[0])
            differences = difference_intervals(groups["supcon"], groups["ce"], confidence, n_boot=n_boot, rng=rng)
            for statistic in ("std", "range"):
                truth = truths["supcon"][statistic] - truths["ce"][statistic]
                label = f"{statistic} difference"
                record(family, label, "new", differences[statistic], truth)
                estimate = estimates["supcon"][statistic] - estimates["ce"][statistic]
                replicates = olds["supcon"][statistic] - olds["ce"][statistic]
                record(family, label, "old", old_basic_interval(estimate, replicates, confidence), truth)
    rows = []
    for (family, quantity), cell in hits.items():
        new, below = np.mean(cell["new"]), np.mean(cell["below"])
        rows.append({"seeds": seeds, "family": family, "quantity": quantity, "nominal": confidence,
                     "new": new, "below": below, "above": max(0.0, 1 - new - below), "old": np.mean(cell["old"])})
    order = list(TRUE_MEANS) + ["base"]
    return sorted(rows, key=lambda row: order.index(row["family"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coverage", description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=1000, help="simulated studies per seed count")
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 5], help="seeds per setting")
    parser.add_argument("--sigma", type=float, default=0.5, help="seed-noise sd, top-1 points")
    parser.add_argument("--confidence", type=float, default=0.9, help="nominal level of every interval")
    parser.add_argument("--n-boot", type=int, default=2000, help="replicates per interval (the tables' default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.studies < 10 or min(args.seeds) < 2 or args.sigma <= 0 or not 0 < args.confidence < 1 or args.n_boot < 100:
        parser.error("need --studies >= 10, --seeds >= 2, --sigma > 0, 0 < --confidence < 1, --n-boot >= 100")
    se = 100 * np.sqrt(args.confidence * (1 - args.confidence) / args.studies)
    print_header("Coverage of the stability intervals: nominal vs measured on simulated studies",
                 f"{args.studies} studies per seed count, seed noise sd {args.sigma}, nominal {args.confidence:.0%}, "
                 f"{args.n_boot} replicates per interval; binomial standard error of a coverage {se:.2f} points")
    summary = []
    for seeds in args.seeds:
        started = time.perf_counter()
        rows = simulate(seeds, args.studies, args.sigma, args.confidence, args.n_boot, args.seed + seeds)
        seconds = time.perf_counter() - started
        print(f"\n{seeds} seeds per setting ({seconds:.0f} s): coverage, new (misses below / above the truth) vs old")
        print_table(rows, [("family", "family", ""), ("quantity", "interval for", ""), ("nominal", "nominal", ".2f"),
                           ("new", "new", ".3f"), ("below", "new below", ".3f"), ("above", "new above", ".3f"),
                           ("old", "old", ".3f")])
        for name, selected in (("per-family std and range",
                                [r for r in rows if r["quantity"].split(",")[0] in ("std", "range")]),
                               ("differences", [r for r in rows if "difference" in r["quantity"]]),
                               ("one setting's mean", [r for r in rows if r["quantity"].startswith("mean")])):
            summary.append({"seeds": seeds, "what": name, "cells": len(selected),
                            "new_min": min(r["new"] for r in selected), "new_max": max(r["new"] for r in selected),
                            "old_min": min(r["old"] for r in selected), "old_max": max(r["old"] for r in selected)})
    print(f"\nSummary (nominal {args.confidence:.2f}; within 3 points means {args.confidence - 0.03:.2f}-"
          f"{args.confidence + 0.03:.2f}):")
    print_table(summary, [("seeds", "seeds", "d"), ("what", "intervals", ""), ("cells", "cells", "d"),
                          ("new_min", "new min", ".3f"), ("new_max", "new max", ".3f"),
                          ("old_min", "old min", ".3f"), ("old_max", "old max", ".3f")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
