"""Stability of SupCon vs cross-entropy under hyperparameter changes (the paper's Sec. 4.3, Fig. 4a).

Pure functions of a sweep's `results.parquet` table (one row per trial; see the shared interfaces). The
unit of the analysis is a *setting*: one combination of hyperparameter values, replicated over seeds.
For each hyperparameter family (the `varied` column of a one-at-a-time design; the whole grid or search
otherwise) and each method, the spread is measured over the settings' seed-mean accuracies, so seed noise
is averaged out before the spread is taken.

Trial statuses:
- `completed` with a finite metric: used.
- `diverged`: an instability of the method, never dropped silently. Policy `"chance"` (default) counts it
  as chance accuracy (100 / num_classes); policy `"apart"` leaves it out of the numbers and reports it
  beside them. Every returned frame records the policy in a `diverged_policy` column.
- `failed` (a crash), `stopped_early` (ASHA cut its budget) and anything else (still running): left out
  and counted.

Intervals (issue 11, item 8). The model: within a cell (one family and method), seed j of setting k
scores x_kj = mu_k + e_kj with independent Gaussian seed noise e_kj ~ N(0, sigma^2), one sigma for all
settings of the cell (a diverged seed counted as chance enters as a value like any other). The intervals
are for the spread of the *true* setting means mu_k, which the table's std (ddof=1) and range estimate
from the observed setting means; spread_difference's are for the SupCon-minus-cross-entropy difference of
those spreads; best_top1's is for the true mean of one setting. Seed noise inflates any spread of
observed means (E std^2 = std(mu)^2 + sigma^2 / n), by an amount that depends on the true spread itself,
so no shift of a bootstrap distribution (the basic interval the tables used before) removes it; and
resampling 3 seeds (10 distinct resamples) understates the noise. That seed bootstrap covered 76-89% at
nominal 90% for spreads and 69-82% for one setting's mean (benchmarks/coverage.py).

Method: a parametric bootstrap of the seed noise, inverted as a test. For a candidate true spread theta,
the setting means of spread theta closest to the observed ones are: for the std, the observed means
scaled about their mean (the std's distribution depends on mu only through its std, so the choice is
immaterial there); for the range, below the observed range the observed means clipped into the window of
width theta that moves them least (weighted least squares), above it the average of the least-squares
stretch (only the two extreme settings move out) and of scaling about the mean. Neither is exact for the
range, whose distribution depends on how close the other settings are to the extremes: in simulation the
stretch alone over-covered when several settings are near-tied at an extreme, the scaling alone
under-covered when the extremes stand clear. Each of n_boot replicates adds simulated noise, sigma *
z_k / sqrt(n_k), to those means, with sigma^2 drawn from its fiducial distribution sigma_hat^2 *
df / chi2(df) (sigma_hat^2 the pooled within-setting variance, df = sum(n_k - 1)), so the few degrees of
freedom of a 3-seed study are paid for instead of taking sigma_hat for sigma (which covered about 83%).
A replicate's draw is the largest theta at which its simulated spread is still below the observed one
(0 when its noise alone spreads more): a generalized pivotal quantity whose distribution is the test's
p-value function, and the interval is its central quantiles. For the std with sigma known this is the
exact noncentral chi-square interval. The interval can lie below the observed spread, and is [0, 0] when
the observed spread is smaller than noise alone makes it more than (1 + c) / 2 of the time. A difference
pairs the two cells' draws replicate by replicate, their sigmas drawn with one shared chi-square on
Welch-Satterthwaite degrees of freedom (independent draws, Fisher's Behrens-Fisher solution, over-cover:
92-93% at nominal 90%). One setting's mean gets the Student t interval (exact under the model). With no
setting of 2 or more seeds, or fewer than 2 settings, there is no noise estimate and the intervals are
NaN.

Measured coverage (`python -m benchmarks.coverage`, 1000 studies of the paper_stability sizes per seed
count, seed noise sd 0.5; BENCHMARKS.md section 5): at nominal 90%, 0.873-0.921 for the 24 spread
intervals and 0.886-0.910 for the 12 differences at 3 and 5 seeds (the old seed bootstrap: 0.757-0.888);
at nominal 95% and 3 seeds, 0.942-0.956. Where the seed noise dominates a small family's spread the
intervals turn conservative (0.94 at nominal 90% for 3 settings whose spread is half a seed mean's noise).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from study.tables import BASE, GRID, SEARCH, STATUSES
from study.tables import hyperparameter_columns as _hyperparameter_columns

DIVERGED_POLICIES = ("chance", "apart")
DESIGN_FAMILIES = (GRID, SEARCH)
# Classes of the named datasets, for chance accuracy when a config does not carry `num_classes`.
DATASET_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}
METHOD_NAMES = {"supcon": "SupCon", "ce": "cross-entropy", "simclr": "SimCLR"}
# The settings of one cell: groups[k] holds setting k's per-seed values (a list or a 1-D array).
SeedGroups = Sequence[Sequence[float] | np.ndarray]


# --------------------------------------------------------------------------------------------- helpers
def method_name(method: str) -> str:
    """How a method is written in prose and legends."""
    return METHOD_NAMES.get(method, str(method))


def hyperparameter_columns(results: pd.DataFrame) -> list[str]:
    """The hyperparameter columns of a results table: every column the schema (study/tables.py) does not
    define, so nothing of the runtime (node, trial id, paths, timings) is ever taken for a hyperparameter."""
    return _hyperparameter_columns(results.columns)


def format_value(value: object) -> str:
    """A hyperparameter value as a short, stable label (0.5, 1e-05, 'lars')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NA"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"
    return str(value)


def _check_policy(diverged: str) -> None:
    if diverged not in DIVERGED_POLICIES:
        raise ValueError(f"diverged={diverged!r} is not a policy; allowed: {' | '.join(DIVERGED_POLICIES)}")


def _check_columns(results: pd.DataFrame, needed: Iterable[str]) -> None:
    missing = [c for c in needed if c not in results.columns]
    if missing:
        raise ValueError(f"results table lacks column(s) {', '.join(missing)}; it needs {', '.join(needed)}")


def _config_of(row_config: object) -> dict:
    if isinstance(row_config, dict):
        return row_config
    if isinstance(row_config, str) and row_config.strip():
        try:
            parsed = json.loads(row_config)
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _find_key(mapping: dict, key: str, depth: int = 3) -> Any:
    """`mapping[key]`, or the first value of `key` in nested mappings (a searched trial's config nests the
    fixed settings), or None."""
    if key in mapping:
        return mapping[key]
    if depth > 0:
        for value in mapping.values():
            if isinstance(value, dict):
                found = _find_key(value, key, depth - 1)
                if found is not None:
                    return found
    return None


def trial_num_classes(results: pd.DataFrame, num_classes: int | None = None) -> pd.Series:
    """Number of classes of each trial's dataset: `num_classes` when given, else the config's
    `num_classes`, else the named dataset's; NaN when it cannot be told (an imagefolder dataset)."""
    if num_classes is not None:
        if not (isinstance(num_classes, (int, np.integer)) and num_classes >= 2):
            raise ValueError(f"num_classes={num_classes!r} is invalid; allowed: an integer >= 2")
        return pd.Series(float(num_classes), index=results.index)
    configs = (results["config"] if "config" in results.columns
               else pd.Series([None] * len(results), index=results.index))
    values = []
    for config in configs:
        parsed = _config_of(config)
        classes = _find_key(parsed, "num_classes") or DATASET_CLASSES.get(str(_find_key(parsed, "dataset") or ""))
        values.append(float(classes) if classes else math.nan)
    return pd.Series(values, index=results.index, dtype=float)


def chance_top1(results: pd.DataFrame, num_classes: int | None = None) -> float:
    """Chance top-1 (percent) of the study's dataset, 100 / num_classes; NaN when it cannot be told."""
    classes = trial_num_classes(results, num_classes).dropna().unique()
    if len(classes) == 0:
        return math.nan
    if len(classes) > 1:
        raise ValueError(f"trials have different numbers of classes {sorted(classes)}; pass num_classes=")
    return 100.0 / classes[0]


def _hyperparameter_frame(results: pd.DataFrame) -> pd.DataFrame:
    """Hyperparameter values per trial: the table's columns, plus any family named in `varied` that has no
    column. Missing values (a base trial, which sets no hyperparameter itself) are read from the trial's
    config JSON, so the base combination carries its values like every other setting."""
    columns = hyperparameter_columns(results)
    frame = results[columns].astype(object).copy()
    if "varied" in results.columns:
        named = set(results["varied"].dropna().astype(str)) - {BASE, GRID, SEARCH}
        for name in sorted(named - set(columns)):
            frame[name] = None
    if "config" in results.columns and len(frame.columns):
        configs = [_config_of(c) for c in results["config"]]
        for name in frame.columns:
            missing = frame[name].isna().to_numpy()
            if missing.any():
                frame.loc[missing, name] = [configs[i].get(name) for i in np.flatnonzero(missing)]
    return frame


# ------------------------------------------------------------------------------------- trial level
def stability_trials(
    results: pd.DataFrame,
    *,
    diverged: str = "chance",
    num_classes: int | None = None,
    metric: str = "test_top1",
) -> pd.DataFrame:
    """One row per (hyperparameter family, trial): the long table every stability number and plot uses.

    Families: each value of `varied` other than base/grid/search is a one-at-a-time family, and the
    method's `base` trials join each of its families (the base combination is one of the values the
    family varies over); `grid` and `search` trials form one family each; a method with only base trials
    has the family `base`. Columns: family, method, trial_id, seed, status, setting (label of the
    combination), value (the family's hyperparameter value for one-at-a-time families, else the setting
    label), top1 (the metric after the diverged policy; NaN when left out), val_top1 (same policy),
    diverged (bool), included (bool: counts in the statistics), reason (why not included, else ""),
    chance_top1, diverged_policy."""
    _check_policy(diverged)
    _check_columns(results, ("method", "status", metric))
    results = results.reset_index(drop=True)
    hyper = _hyperparameter_frame(results)
    varied = (results["varied"].astype(str) if "varied" in results.columns
              else pd.Series(["all"] * len(results)))
    status = results["status"].astype(str)
    classes = trial_num_classes(results, num_classes)
    chance = 100.0 / classes
    is_diverged = status.eq("diverged")
    if diverged == "chance" and (is_diverged & chance.isna()).any():
        trial = results.loc[is_diverged & chance.isna()].iloc[0]
        raise ValueError(
            f"cannot tell the number of classes for diverged trial {trial.get('trial_id', '?')!r}; "
            "pass num_classes= or use diverged='apart'"
        )
    metric_values = pd.to_numeric(results[metric], errors="coerce")
    val_values = (pd.to_numeric(results["val_top1"], errors="coerce") if "val_top1" in results.columns
                  else pd.Series(math.nan, index=results.index))

    # A setting is the full combination of hyperparameter values, compared as labels.
    keys = [tuple(format_value(v) for v in row) for row in hyper.itertuples(index=False)]
    columns = list(hyper.columns)
    memberships = []  # (family, method, row in results)
    for method, group in results.groupby("method", sort=True):
        families = sorted(set(varied[group.index]) - {BASE, GRID, SEARCH})
        for i in group.index:
            for family in (families or [BASE]) if varied[i] == BASE else [varied[i]]:
                memberships.append((family, method, i))
    out = pd.DataFrame(memberships, columns=["family", "method", "row"])
    if out.empty:
        return _empty_trials()
    settings, values, setting_keys = {}, {}, {}
    for (family, _method), group in out.groupby(["family", "method"], sort=False):
        # Label a setting by what varies within this family and method only.
        member_keys = [keys[i] for i in group["row"]]
        varying = [j for j in range(len(columns)) if len({k[j] for k in member_keys}) > 1]
        for index, i in zip(group.index, group["row"], strict=True):
            setting_keys[index] = keys[i]
            if family in columns:
                settings[index], values[index] = keys[i][columns.index(family)], hyper.at[i, family]
            elif varying:
                settings[index] = values[index] = ", ".join(f"{columns[j]}={keys[i][j]}" for j in varying)
            else:
                settings[index] = values[index] = family
    out["setting"] = pd.Series(settings)
    out["value"] = pd.Series(values, dtype=object)
    out["_key"] = pd.Series(setting_keys)

    source = out["row"].to_numpy()
    out["trial_id"] = results["trial_id"].to_numpy()[source] if "trial_id" in results.columns else source
    out["seed"] = results["seed"].to_numpy()[source] if "seed" in results.columns else 0
    out["status"] = status.to_numpy()[source]
    out["diverged"] = is_diverged.to_numpy()[source]
    out["chance_top1"] = chance.to_numpy()[source]
    raw = metric_values.to_numpy()[source]
    raw_val = val_values.to_numpy()[source]
    top1 = np.where(out["status"].eq("completed"), raw, np.nan)
    val = np.where(out["status"].eq("completed"), raw_val, np.nan)
    if diverged == "chance":
        top1 = np.where(out["diverged"], out["chance_top1"], top1)
        val = np.where(out["diverged"], out["chance_top1"], val)
    out["top1"] = top1
    out["val_top1"] = val
    reason = []
    for state, value, is_div in zip(out["status"], raw, out["diverged"], strict=True):
        if state == "completed":
            reason.append("" if np.isfinite(value) else "no " + metric)
        elif is_div:
            reason.append("" if diverged == "chance" else "diverged (shown apart)")
        elif state in ("failed", "stopped_early"):
            reason.append(state)
        else:
            reason.append("unfinished")
    out["reason"] = reason
    out["included"] = out["reason"].eq("") & np.isfinite(out["top1"])
    out["diverged_policy"] = diverged
    # One trial per (setting, seed) within a family: a one-at-a-time trial at the base value and the base
    # trial itself are the same experiment; keep the family's own trial.
    out["_own"] = [varied[i] != BASE for i in out["row"]]
    out = out.sort_values(["family", "method", "_own"], ascending=[True, True, False], kind="stable")
    seeds = out["seed"].astype(str)
    keys = list(zip(out["family"], out["method"], out["_key"], seeds, strict=True))
    duplicate = pd.Series(keys, index=out.index).duplicated()
    out = out.loc[~duplicate].sort_values(["family", "method", "row"], kind="stable")
    return out.drop(columns=["_own", "_key"]).reset_index(drop=True)


def _empty_trials() -> pd.DataFrame:
    return pd.DataFrame(columns=[
        "family", "method", "setting", "value", "trial_id", "seed", "status", "diverged", "chance_top1",
        "top1", "val_top1", "reason", "included", "diverged_policy",
    ])


# ------------------------------------------------------------------------------------- intervals
SPREAD_STATISTICS = ("std", "range")
# Candidate true spreads on which a replicate's simulated range is followed: a coarse pass over [0, top],
# then a fine pass over the span where the replicates' roots lie. `top` (see _range_roots) is a spread at
# which all but a fraction _TOP_TAIL of the replicates have reached the observed range.
_COARSE_GRID, _FINE_GRID, _TOP_TAIL = 24, 104, 1e-3


def spread(setting_means: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(std with ddof=1, range) of setting means along `axis`."""
    return np.std(setting_means, axis=axis, ddof=1), np.ptp(setting_means, axis=axis)


@dataclass(frozen=True)
class SpreadConfidence:
    """Fiducial draws of one spread (`statistic`: "std" or "range") of a cell's true setting means.

    `draws[b]` is the largest true spread at which noise replicate b, added to the setting means of that
    spread, still spreads less than the observed `estimate` (0 when the replicate's noise alone already
    spreads more): the generalized pivotal quantity of the module docstring. Their distribution is a confidence
    distribution: its quantiles are confidence limits. Kept in replicate order, so that two cells
    simulated with the same seed-noise scales can be paired replicate by replicate."""

    statistic: str
    estimate: float
    draws: np.ndarray

    def interval(self, confidence: float) -> tuple[float, float]:
        """Central interval: the (1 - c) / 2 and (1 + c) / 2 quantiles of the draws for c = `confidence`.

        [0, 0] when more than (1 + c) / 2 of the replicates spread more than observed from noise alone,
        i.e. the observed spread is smaller than seed noise by itself makes it (the usual convention of
        intervals from noncentral distributions)."""
        _check_confidence(confidence)
        low, high = np.quantile(self.draws, [(1 - confidence) / 2, (1 + confidence) / 2])
        return float(low), float(high)


def _direction(means: np.ndarray, statistic: str) -> np.ndarray:
    """Centred setting means scaled to spread 1 (evenly spaced ones when the observed spread is 0)."""
    centred = means - means.mean()
    size = float(np.std(centred, ddof=1) if statistic == "std" else np.ptp(centred))
    if size > 0:
        return centred / size
    even = np.linspace(-1.0, 1.0, len(means))
    return even / (np.std(even, ddof=1) if statistic == "std" else np.ptp(even))


def _std_roots(means: np.ndarray, noise: np.ndarray, observed: float) -> np.ndarray:
    """Per replicate, the largest true std theta at which the simulated std is still below the observed
    one (0 if none). The setting means of std theta are centre + theta * u with std(u) = 1, so the
    simulated variance is the quadratic theta^2 + 2 theta p + q, solved exactly."""
    k = noise.shape[1]
    u = _direction(means, "std")
    centred = noise - noise.mean(axis=1, keepdims=True)
    p = centred @ u / (k - 1)
    q = (centred * centred).sum(axis=1) / (k - 1)
    discriminant = p * p - q + observed * observed
    root = -p + np.sqrt(np.clip(discriminant, 0.0, None))
    return np.where(discriminant > 0, np.clip(root, 0.0, None), 0.0)


def _range_means(means: np.ndarray, weights: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Setting means with range exactly theta, close to the observed ones: [G, K].

    Below the observed range: the weighted least-squares projection, the observed means clipped into the
    window [a, a + theta] that moves them least. Above it: the average of the least-squares projection
    (only the two extreme settings move out, in inverse proportion to their weights) and of scaling all
    means about their weighted mean; see the module docstring for why."""
    observed = float(np.ptp(means))
    if observed == 0:
        return means.mean() + theta[:, None] * _direction(means, "range")[None, :]
    out = np.empty((len(theta), len(means)))
    below = theta <= observed
    if below.any():
        width = theta[below][:, None]
        low, high = np.full(width.shape, means.min()), means.max() - width
        for _ in range(60):  # the clipping loss is convex in a: bisect on the sign of its derivative
            a = (low + high) / 2
            outside = np.clip(a - means, 0, None) - np.clip(means - a - width, 0, None)
            slope = (weights * outside).sum(axis=1, keepdims=True)
            low, high = np.where(slope < 0, a, low), np.where(slope < 0, high, a)
        a = (low + high) / 2
        out[below] = np.clip(means[None, :], a, a + width)
    above = ~below
    if above.any():
        extra = theta[above] - observed
        top, bottom = int(np.argmax(means)), int(np.argmin(means))
        stretched = np.repeat(means[None, :], int(above.sum()), axis=0)
        stretched[:, top] += extra * weights[bottom] / (weights[top] + weights[bottom])
        stretched[:, bottom] -= extra * weights[top] / (weights[top] + weights[bottom])
        centre = float(np.average(means, weights=weights))
        scaled = centre + (theta[above] / observed)[:, None] * (means - centre)[None, :]
        out[above] = (stretched + scaled) / 2
    return out


def _simulated_ranges(means: np.ndarray, weights: np.ndarray, theta: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Range of (setting means of range theta) + noise replicate: [G, B]."""
    setting = _range_means(means, weights, theta)
    high = setting[:, :1] + noise[None, :, 0]
    low = high.copy()
    for j in range(1, noise.shape[1]):  # a loop over settings keeps the [G, B] temporaries few
        value = setting[:, j : j + 1] + noise[None, :, j]
        np.maximum(high, value, out=high)
        np.minimum(low, value, out=low)
    return high - low


def _grid_roots(theta: np.ndarray, simulated: np.ndarray, observed: float) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate (column of `simulated`, [G, B]), the largest theta at which the simulated spread is
    still below `observed` (linear between grid points; theta[0] if it never is, theta[-1] if it stays
    below), and whether that crossing lies inside the grid."""
    below = simulated < observed
    count = len(theta)
    last = count - 1 - np.argmax(below[::-1], axis=0)  # last grid point still below
    never = ~below.any(axis=0)
    after = np.minimum(last + 1, count - 1)
    columns = np.arange(simulated.shape[1])
    v0, v1 = simulated[last, columns], simulated[after, columns]
    fraction = np.clip(np.divide(observed - v0, v1 - v0, out=np.ones_like(v0), where=v1 > v0), 0.0, 1.0)
    roots = theta[last] + fraction * (theta[after] - theta[last])
    roots = np.where(never, theta[0], np.where(last == count - 1, theta[-1], roots))
    return roots, ~never & (last < count - 1)


def _range_roots(means: np.ndarray, weights: np.ndarray, noise: np.ndarray, observed: float) -> np.ndarray:
    """Per replicate, the true range at which its simulated range reaches the observed one."""
    # The range is a seminorm: range(m + e) >= range(m) - range(e), so at `top` every replicate whose
    # noise alone spreads less than the (1 - _TOP_TAIL) quantile has reached `observed`.
    top = observed + float(np.quantile(np.ptp(noise, axis=1), 1 - _TOP_TAIL))
    coarse = np.linspace(0.0, top, _COARSE_GRID)
    roots, _ = _grid_roots(coarse, _simulated_ranges(means, weights, coarse, noise), observed)
    start, stop = np.quantile(roots, [_TOP_TAIL / 2, 1 - _TOP_TAIL / 2])
    step = coarse[1] - coarse[0]
    start, stop = max(0.0, start - step), min(top, stop + step)
    if stop > start:
        fine = np.linspace(start, stop, _FINE_GRID)
        fine_roots, inside = _grid_roots(fine, _simulated_ranges(means, weights, fine, noise), observed)
        roots = np.where(inside | ((fine_roots == 0.0) & (start == 0.0)), fine_roots, roots)
    return roots


def _noise_scales(df: float, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Draws of sigma / sigma_hat from the fiducial distribution of a seed-noise sd with `df` degrees of
    freedom: sqrt(df / chi2(df))."""
    return np.sqrt(df / rng.chisquare(df, n_boot)) if math.isfinite(df) else np.ones(n_boot)


def _cell(groups: SeedGroups) -> tuple[np.ndarray, np.ndarray, int, float] | None:
    """(setting means, seeds per setting, within-setting df, pooled seed-noise sd) of one cell, or None
    when there is nothing to go on: fewer than 2 settings, or no setting with 2 seeds."""
    arrays = [np.asarray(g, dtype=float).ravel() for g in groups]
    for k, values in enumerate(arrays):
        if len(values) == 0 or not np.isfinite(values).all():
            raise ValueError(f"setting {k} has {'no values' if len(values) == 0 else 'non-finite values'}; "
                             "allowed: one or more finite values per setting")
    sizes = np.array([len(a) for a in arrays], dtype=int)
    df = int((sizes - 1).sum())
    if len(arrays) < 2 or df == 0:
        return None
    within = float(sum(((a - a.mean()) ** 2).sum() for a in arrays))
    return np.array([a.mean() for a in arrays]), sizes, df, math.sqrt(within / df)


def _spread_draws(cell: tuple[np.ndarray, np.ndarray, int, float], scales: np.ndarray,
                  rng: np.random.Generator) -> dict[str, SpreadConfidence]:
    means, sizes, _, sigma = cell
    noise = (sigma * scales)[:, None] * rng.standard_normal((len(scales), len(means))) / np.sqrt(sizes)[None, :]
    std, range_ = (float(x) for x in spread(means))
    return {"std": SpreadConfidence("std", std, _std_roots(means, noise, std)),
            "range": SpreadConfidence("range", range_, _range_roots(means, sizes.astype(float), noise, range_))}


def spread_confidence(
    groups: SeedGroups,
    *,
    n_boot: int = 2000,
    rng: np.random.Generator | int | None = None,
) -> dict[str, SpreadConfidence]:
    """Fiducial draws of the std and the range of the true setting means of one cell (the method is in
    the module docstring). `groups[k]` holds setting k's per-seed values. Returns {"std": ...,
    "range": ...}, or {} when there is nothing to go on: fewer than 2 settings, or no setting with 2 seeds
    (no estimate of the seed noise)."""
    _check_boot(n_boot)
    cell = _cell(groups)
    if cell is None:
        return {}
    rng = np.random.default_rng(rng)
    return _spread_draws(cell, _noise_scales(cell[2], n_boot, rng), rng)


def spread_intervals(
    groups: SeedGroups,
    confidence: float = 0.95,
    *,
    n_boot: int = 2000,
    rng: np.random.Generator | int | None = None,
) -> dict[str, tuple[float, float]]:
    """Confidence intervals for the std and the range of the true setting means of one cell:
    {"std": (low, high), "range": (low, high)}, NaN when `spread_confidence` has nothing to go on."""
    _check_confidence(confidence)
    draws = spread_confidence(groups, n_boot=n_boot, rng=rng)
    return {s: draws[s].interval(confidence) if draws else (math.nan, math.nan) for s in SPREAD_STATISTICS}


def difference_intervals(
    first: SeedGroups,
    second: SeedGroups,
    confidence: float = 0.95,
    *,
    n_boot: int = 2000,
    rng: np.random.Generator | int | None = None,
) -> dict[str, tuple[float, float]]:
    """Confidence intervals for the difference (first - second) of the std and of the range of the true
    setting means of two independent cells (SupCon's and cross-entropy's settings of one family).

    Each replicate pairs a fiducial draw of each cell's spread; the two cells' seed-noise sds are drawn
    with one shared chi-square scale on Welch-Satterthwaite degrees of freedom, as Welch's t interval
    does for a difference of means (independent scales, Fisher's Behrens-Fisher solution, over-cover).
    NaN when either cell has nothing to go on."""
    _check_confidence(confidence)
    _check_boot(n_boot)
    first_cell, second_cell = _cell(first), _cell(second)
    if first_cell is None or second_cell is None:
        return dict.fromkeys(SPREAD_STATISTICS, (math.nan, math.nan))
    cells = first_cell, second_cell
    rng = np.random.default_rng(rng)
    # Variance of a setting mean from seed noise, per cell, and its Satterthwaite degrees of freedom.
    parts = [sigma * sigma * float(np.mean(1.0 / sizes)) for _, sizes, _, sigma in cells]
    total = sum(parts)
    df = (total * total / sum(p * p / cell[2] for p, cell in zip(parts, cells, strict=True))) if total > 0 else math.inf
    scales = _noise_scales(df, n_boot, rng)
    draws = [_spread_draws(cell, scales, rng) for cell in cells]
    tail = (1 - confidence) / 2
    out = {}
    for statistic in SPREAD_STATISTICS:
        difference = draws[0][statistic].draws - draws[1][statistic].draws
        low, high = np.quantile(difference, [tail, 1 - tail])
        out[statistic] = (float(low), float(high))
    return out


def mean_interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
    """Student-t interval for the true mean of one setting from its seeds (NaN with fewer than 2)."""
    _check_confidence(confidence)
    seeds = np.asarray(values, dtype=float).ravel()
    if not np.isfinite(seeds).all():
        raise ValueError("values must be finite; got NaN or inf")
    if len(seeds) < 2:
        return math.nan, math.nan
    from scipy import stats  # a dependency of scikit-learn; imported here to keep the module light

    half = float(stats.t.ppf((1 + confidence) / 2, len(seeds) - 1)) * seeds.std(ddof=1) / math.sqrt(len(seeds))
    return float(seeds.mean() - half), float(seeds.mean() + half)


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, (int, float, np.floating)) and 0 < confidence < 1):
        raise ValueError(f"confidence={confidence!r} is invalid; allowed: a number in (0, 1)")


def _check_boot(n_boot: int) -> None:
    if not (isinstance(n_boot, (int, np.integer)) and not isinstance(n_boot, bool) and n_boot >= 100):
        raise ValueError(f"n_boot={n_boot!r} is invalid; allowed: an integer >= 100")


def _check_bootstrap(confidence: float, n_boot: int) -> None:
    _check_confidence(confidence)
    _check_boot(n_boot)


def _setting_groups(trials: pd.DataFrame, column: str = "top1") -> tuple[list[str], list[np.ndarray]]:
    used = trials.loc[trials["included"]]
    labels, groups = [], []
    for label, group in used.groupby("setting", sort=False):
        labels.append(str(label))
        groups.append(group[column].to_numpy(dtype=float))
    return labels, groups


# ------------------------------------------------------------------------------------- statistics
def stability_table(
    results: pd.DataFrame,
    *,
    diverged: str = "chance",
    num_classes: int | None = None,
    metric: str = "test_top1",
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Spread of top-1 per hyperparameter family and method.

    One row per (family, method) with: n (trials used), n_settings, min_seeds (fewest seeds of a
    setting), mean (of setting means), std (ddof=1) and range (max - min) of the setting means with
    CIs for the std and range of the true setting means (std_ci_low/high, range_ci_low/high; the
    parametric bootstrap of the module docstring with `n_boot` replicates; NaN with fewer than 2
    settings or 1 seed each),
    worst_drop (the metric of the best setting, chosen by validation top-1 when the table has it, minus
    the worst setting's), best_setting, worst_setting, best_selected_by, n_diverged, n_failed,
    n_stopped_early, n_unfinished, n_missing, chance_top1, diverged_policy, confidence."""
    _check_bootstrap(confidence, n_boot)
    trials = stability_trials(results, diverged=diverged, num_classes=num_classes, metric=metric)
    rng = np.random.default_rng(seed)
    rows = []
    for (family, method), group in trials.groupby(["family", "method"], sort=True):
        labels, groups = _setting_groups(group)
        means = np.array([g.mean() for g in groups])
        std, rng_ = (spread(means) if len(means) >= 2 else (math.nan, math.nan))
        curves = spread_confidence(groups, n_boot=n_boot, rng=rng)
        std_ci = curves["std"].interval(confidence) if curves else (math.nan, math.nan)
        range_ci = curves["range"].interval(confidence) if curves else (math.nan, math.nan)
        best, worst, selected_by, drop = _best_and_worst(group, labels, means)
        counts = group["reason"].value_counts()
        rows.append({
            "family": family, "method": method, "n": int(group["included"].sum()),
            "n_settings": len(groups), "min_seeds": min((len(g) for g in groups), default=0),
            "mean": float(means.mean()) if len(means) else math.nan,
            "std": float(std), "std_ci_low": std_ci[0], "std_ci_high": std_ci[1],
            "range": float(rng_), "range_ci_low": range_ci[0], "range_ci_high": range_ci[1],
            "worst_drop": drop, "best_setting": best, "worst_setting": worst, "best_selected_by": selected_by,
            "n_diverged": int(group["diverged"].sum()), "n_failed": int(counts.get("failed", 0)),
            "n_stopped_early": int(counts.get("stopped_early", 0)),
            "n_unfinished": int(counts.get("unfinished", 0)), "n_missing": int(counts.get("no " + metric, 0)),
            "chance_top1": float(group["chance_top1"].iloc[0]) if len(group) else math.nan,
            "diverged_policy": diverged, "confidence": confidence,
        })
    return pd.DataFrame(rows, columns=_STABILITY_COLUMNS)


_STABILITY_COLUMNS = [
    "family", "method", "n", "n_settings", "min_seeds", "mean", "std", "std_ci_low", "std_ci_high", "range",
    "range_ci_low", "range_ci_high", "worst_drop", "best_setting", "worst_setting", "best_selected_by",
    "n_diverged", "n_failed", "n_stopped_early", "n_unfinished", "n_missing", "chance_top1",
    "diverged_policy", "confidence",
]


def _best_and_worst(group: pd.DataFrame, labels: list[str], means: np.ndarray) -> tuple[str, str, str, float]:
    if len(labels) == 0:
        return "", "", "", math.nan
    used = group.loc[group["included"]]
    val_means = used.groupby("setting", sort=False)["val_top1"].mean().reindex(labels).to_numpy(dtype=float)
    if np.isfinite(val_means).any():
        best = int(np.nanargmax(val_means))
        selected_by = "val_top1"
    else:
        best = int(np.argmax(means))
        selected_by = "test_top1"
    worst = int(np.argmin(means))
    return labels[best], labels[worst], selected_by, float(means[best] - means[worst])


def spread_difference(
    results: pd.DataFrame,
    *,
    first: str = "supcon",
    second: str = "ce",
    diverged: str = "chance",
    num_classes: int | None = None,
    metric: str = "test_top1",
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Difference in spread, `first` minus `second` (SupCon minus cross-entropy by default), per family
    that both methods have: std_diff and range_diff with CIs for the difference of the true spreads
    (`difference_intervals`: the parametric bootstrap of the module docstring, each method's seed noise
    simulated on its own) and a verdict: "<first> less spread" / "<second> less spread" when the CI of the
    range difference excludes 0, "inconclusive" otherwise (or "not enough seeds" without a CI)."""
    _check_bootstrap(confidence, n_boot)
    trials = stability_trials(results, diverged=diverged, num_classes=num_classes, metric=metric)
    rng = np.random.default_rng(seed)
    rows = []
    for family in sorted(trials["family"].unique()):
        a = trials.loc[(trials["family"] == family) & (trials["method"] == first)]
        b = trials.loc[(trials["family"] == family) & (trials["method"] == second)]
        _, groups_a = _setting_groups(a)
        _, groups_b = _setting_groups(b)
        if len(groups_a) < 2 or len(groups_b) < 2:
            continue
        std_a, range_a = spread(np.array([g.mean() for g in groups_a]))
        std_b, range_b = spread(np.array([g.mean() for g in groups_b]))
        row = {
            "family": family, "first": first, "second": second,
            "std_first": float(std_a), "std_second": float(std_b), "std_diff": float(std_a - std_b),
            "range_first": float(range_a), "range_second": float(range_b), "range_diff": float(range_a - range_b),
            "std_diff_ci_low": math.nan, "std_diff_ci_high": math.nan,
            "range_diff_ci_low": math.nan, "range_diff_ci_high": math.nan,
            "verdict": "not enough seeds", "diverged_policy": diverged, "confidence": confidence,
        }
        intervals = difference_intervals(groups_a, groups_b, confidence, n_boot=n_boot, rng=rng)
        if np.isfinite(intervals["range"][0]):
            for statistic, (low, high) in intervals.items():
                row[f"{statistic}_diff_ci_low"], row[f"{statistic}_diff_ci_high"] = low, high
            if row["range_diff_ci_high"] < 0:
                row["verdict"] = f"{first} less spread"
            elif row["range_diff_ci_low"] > 0:
                row["verdict"] = f"{second} less spread"
            else:
                row["verdict"] = "inconclusive"
        rows.append(row)
    return pd.DataFrame(rows, columns=_DIFFERENCE_COLUMNS)


_DIFFERENCE_COLUMNS = [
    "family", "first", "second", "std_first", "std_second", "std_diff", "std_diff_ci_low", "std_diff_ci_high",
    "range_first", "range_second", "range_diff", "range_diff_ci_low", "range_diff_ci_high", "verdict",
    "diverged_policy", "confidence",
]


def best_top1(
    results: pd.DataFrame,
    *,
    diverged: str = "chance",
    num_classes: int | None = None,
    metric: str = "test_top1",
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Best setting per method and its top-1 with a CI over seeds.

    The best setting is chosen by mean validation top-1 (test top-1 when the table has no validation
    numbers), over every setting of the method (a setting is the full combination of hyperparameter
    values), so the reported test number is not selected on the test set. Columns: method, setting,
    n_seeds, val_top1, top1 (mean over seeds), ci_low, ci_high (Student t interval for the setting's
    true mean, clipped to [0, 100]; NaN with one seed), best_single_trial (the highest metric of any
    trial, for reference), selected_by, diverged_policy, confidence. `n_boot` and `seed` are checked and
    otherwise unused (the t interval needs no simulation); they keep the three tables' signatures alike."""
    _check_bootstrap(confidence, n_boot)
    trials = stability_trials(results, diverged=diverged, num_classes=num_classes, metric=metric)
    rows = []
    hyper = _hyperparameter_frame(results.reset_index(drop=True))
    for method, group in trials.loc[trials["included"]].groupby("method", sort=True):
        # Settings over the full combination; a base trial sits in several families, count it once, and
        # count one trial per (combination, seed).
        ids = group.drop_duplicates("row")
        combos = hyper.iloc[ids["row"].to_numpy()] if len(hyper.columns) else None
        labels = (["all"] * len(ids) if combos is None else
                  [", ".join(f"{c}={format_value(v)}" for c, v in zip(hyper.columns, row, strict=True))
                   for row in combos.itertuples(index=False)])
        ids = ids.assign(setting=labels)
        ids = ids.loc[~ids[["setting", "seed"]].astype(str).duplicated()]
        stats = ids.groupby("setting", sort=False).agg(
            val_top1=("val_top1", "mean"), top1=("top1", "mean"), n_seeds=("top1", "size"))
        if stats["val_top1"].notna().any():
            best_label, selected_by = stats["val_top1"].idxmax(), "val_top1"
        else:
            best_label, selected_by = stats["top1"].idxmax(), metric
        values = ids.loc[ids["setting"] == best_label, "top1"].to_numpy(dtype=float)
        ci: tuple[float, ...] = (math.nan, math.nan)
        if len(values) >= 2:  # top-1 is a percentage: the interval stays within [0, 100]
            ci = tuple(min(max(x, 0.0), 100.0) for x in mean_interval(values, confidence))
        rows.append({
            "method": method, "setting": _setting_name(best_label, ids, results), "n_seeds": int(len(values)),
            "val_top1": float(stats.at[best_label, "val_top1"]), "top1": float(values.mean()),
            "ci_low": ci[0], "ci_high": ci[1], "best_single_trial": float(ids["top1"].max()),
            "selected_by": selected_by, "diverged_policy": diverged, "confidence": confidence,
        })
    return pd.DataFrame(rows, columns=[
        "method", "setting", "n_seeds", "val_top1", "top1", "ci_low", "ci_high", "best_single_trial",
        "selected_by", "diverged_policy", "confidence",
    ])


def _setting_name(label: str, ids: pd.DataFrame, results: pd.DataFrame) -> str:
    """How a reader knows a setting: "base", or "lr=0.1" for a one-at-a-time change from the base, or
    the combination of the hyperparameters that vary for this method."""
    rows = ids.loc[ids["setting"] == label, "row"].to_numpy()
    if "varied" in results.columns:
        varied = set(results["varied"].astype(str).to_numpy()[rows])
        hyper = _hyperparameter_frame(results.reset_index(drop=True))
        if varied <= {BASE}:
            return BASE
        if len(varied) == 1 and (name := next(iter(varied))) in hyper.columns:
            return f"{name}={format_value(hyper[name].iloc[rows[0]])}"
    return _short_setting(label, ids)


def _short_setting(label: str, ids: pd.DataFrame) -> str:
    """Drop from a full-combination label the hyperparameters that never vary for this method."""
    parts = [p.split("=", 1) for p in label.split(", ") if "=" in p]
    if not parts:
        return label
    all_labels = [[p.split("=", 1) for p in other.split(", ") if "=" in p] for other in ids["setting"].unique()]
    varying = {name for j, (name, _) in enumerate(parts) if len({lab[j][1] for lab in all_labels}) > 1}
    kept = [f"{name}={value}" for name, value in parts if name in varying]
    return ", ".join(kept) if kept else "base"


def status_counts(results: pd.DataFrame) -> pd.DataFrame:
    """Trials per method and status (one column per status present, plus `total`)."""
    _check_columns(results, ("method", "status"))
    counts = pd.crosstab(results["method"].astype(str), results["status"].astype(str))
    ordered = [s for s in STATUSES if s in counts.columns] + [s for s in counts.columns if s not in STATUSES]
    counts = counts[ordered]
    counts["total"] = counts.sum(axis=1)
    counts.index.name = "method"
    counts.columns.name = None
    return counts.reset_index()


# ------------------------------------------------------------------------------------- importance
IMPORTANCE_COLUMNS = ["method", "parameter", "importance", "variance_fraction", "evaluator", "n_trials"]


def hyperparameter_importance(
    source: object,
    *,
    results: pd.DataFrame | None = None,
    method: str | None = None,
    target: str = "val_top1",
    diverged: str = "chance",
    num_classes: int | None = None,
    evaluator: object | None = None,
) -> pd.DataFrame:
    """Importance of each hyperparameter for each method, normalised to sum 1 per method.

    `source` is one of:
    - a results table (DataFrame): computed from the table without a surrogate model. One-at-a-time
      designs: a hyperparameter's importance is the variance of its family's setting means. Grid and
      searched designs: its main-effect variance fraction (the variance of the mean `target` per value,
      numeric values binned into quintiles when they have more than 6 distinct values, over the total
      variance; for a full grid this is fANOVA's first-order term). Trials that ran their full budget
      only; diverged trials follow `diverged`.
    - an `optuna.Study`, or a path/URL of an Optuna RDB storage (a `.db` file is read as SQLite; every
      study in it is used): Optuna's `get_param_importances` with `evaluator` (Optuna's default,
      PED-ANOVA, when None). The method is `method`, else the study name's suffix after its last "-"
      (the sweep names studies "<space>-<method>"). Pass the `results` table to keep only the trials that
      ran their full budget: ASHA-stopped trials reach Optuna as COMPLETE with a truncated value, and are
      matched to the table's `stopped_early` rows by their parameter values.

    Returns columns method, parameter, importance, variance_fraction (NaN for Optuna's evaluators),
    evaluator, n_trials; empty when there is too little to compute."""
    if isinstance(source, pd.DataFrame):
        return _table_importance(source, method=method, target=target, diverged=diverged, num_classes=num_classes)
    import optuna  # optional for table-only analyses

    if isinstance(source, optuna.Study):
        studies = [source]
    elif isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        studies = load_optuna_studies(source)
    else:
        raise ValueError(f"source of type {type(source).__name__} is not a results DataFrame, an optuna.Study "
                         "or an Optuna storage path/URL")
    frames = [_optuna_importance(study, results=results, method=method, evaluator=evaluator) for study in studies]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=IMPORTANCE_COLUMNS)


def load_optuna_studies(storage: object) -> list:
    """Every Optuna study in an RDB storage given as a URL or a path (a file path is read as SQLite)."""
    import optuna

    text = str(storage.__fspath__() if hasattr(storage, "__fspath__") else storage)
    if "://" not in text:
        from pathlib import Path

        path = Path(text)
        if not path.is_file():
            raise ValueError(f"Optuna storage {text!r} does not exist; allowed: an existing SQLite file or a URL")
        text = f"sqlite:///{path.resolve()}"
    names = optuna.get_all_study_names(storage=text)
    return [optuna.load_study(study_name=name, storage=text) for name in names]


def _optuna_importance(study, *, results: pd.DataFrame | None, method: str | None, evaluator) -> pd.DataFrame:
    import optuna

    name = study.study_name or ""
    study_method = method or (name.rsplit("-", 1)[-1] if "-" in name else name) or "all"
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if results is not None and "status" in results.columns:
        cut = results.loc[results["status"].astype(str).eq("stopped_early")]
        if "method" in cut.columns:
            cut = cut.loc[cut["method"].astype(str).eq(study_method)]
        cut_keys = {tuple(sorted((k, format_value(r[k])) for k in r.index if k in hyperparameter_columns(results)
                                 and pd.notna(r[k]))) for _, r in cut.iterrows()}
        trials = [t for t in trials
                  if tuple(sorted((k, format_value(v)) for k, v in t.params.items())) not in cut_keys]
    if len(trials) < 2:
        return pd.DataFrame(columns=IMPORTANCE_COLUMNS)
    filtered = optuna.create_study(directions=study.directions)
    filtered.add_trials(trials)
    evaluator_name = type(evaluator).__name__ if evaluator is not None else "PedAnovaImportanceEvaluator"
    try:
        importances = optuna.importance.get_param_importances(filtered, evaluator=evaluator)
    except (ValueError, RuntimeError):
        return pd.DataFrame(columns=IMPORTANCE_COLUMNS)
    total = sum(importances.values())
    rows = [{"method": study_method, "parameter": p, "importance": (v / total if total > 0 else math.nan),
             "variance_fraction": math.nan, "evaluator": f"optuna {evaluator_name}", "n_trials": len(trials)}
            for p, v in importances.items()]
    return pd.DataFrame(rows, columns=IMPORTANCE_COLUMNS)


def _table_importance(results: pd.DataFrame, *, method: str | None, target: str, diverged: str,
                      num_classes: int | None) -> pd.DataFrame:
    metric = target if target in results.columns and pd.to_numeric(results[target], errors="coerce").notna().any() \
        else "test_top1"
    trials = stability_trials(results, diverged=diverged, num_classes=num_classes, metric=metric)
    trials = trials.loc[trials["included"]]
    if method is not None:
        trials = trials.loc[trials["method"] == method]
    hyper = _hyperparameter_frame(results.reset_index(drop=True))
    rows = []
    for name, group in trials.groupby("method", sort=True):
        families = [f for f in group["family"].unique() if f in hyper.columns]
        if families:  # one-at-a-time: the variance each family's settings span
            variances = {}
            for family in families:
                means = group.loc[group["family"] == family].groupby("setting")["top1"].mean().to_numpy()
                if len(means) >= 2:
                    variances[family] = float(np.var(means))
            fractions = dict.fromkeys(variances, math.nan)
            evaluator = "one-at-a-time setting variance"
            n_trials = int(group["row"].nunique())
        else:  # grid or search: main-effect variance fraction of each varying hyperparameter
            unique = group.drop_duplicates("row")
            y = unique["top1"].to_numpy(dtype=float)
            if len(y) < 3 or np.var(y) == 0:
                continue
            variances, fractions = {}, {}
            for column in hyper.columns:
                x = hyper.iloc[unique["row"].to_numpy()][column]
                labels = _binned(x)
                if labels.nunique() < 2:
                    continue
                means = pd.Series(y).groupby(labels.to_numpy()).transform("mean").to_numpy()
                variances[column] = float(np.mean((means - y.mean()) ** 2))
                fractions[column] = variances[column] / float(np.var(y))
            evaluator = "main-effect variance fraction"
            n_trials = len(y)
        total = sum(variances.values())
        for parameter, variance in sorted(variances.items(), key=lambda kv: -kv[1]):
            rows.append({"method": name, "parameter": parameter,
                         "importance": variance / total if total > 0 else math.nan,
                         "variance_fraction": fractions[parameter], "evaluator": evaluator, "n_trials": n_trials})
    return pd.DataFrame(rows, columns=IMPORTANCE_COLUMNS)


def _binned(values: pd.Series) -> pd.Series:
    """Labels grouping a hyperparameter's values: quintile bins for numbers with many distinct values."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all() and numeric.nunique() > 6:
        return pd.qcut(numeric.rank(method="first"), 5, labels=False).astype(str).reset_index(drop=True)
    return values.map(format_value).reset_index(drop=True)
