"""Corruption robustness metrics (Hendrycks & Dietterich, ICLR 2019), as pure functions of a robustness table.

The table is `robustness.parquet` (one row per model x corruption x severity): columns `model`,
`corruption` ("clean" for the clean test set), `severity` (0 for clean, 1-5), `error` (top-1 error, a
fraction in [0, 1]), and optionally `method`, `ece` (fraction) and `n`.

- Corruption Error `CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}` and relative
  `rCE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} - E^base_clean)`.
- `mCE` and `relative_mCE` are their means over the 15 benchmark corruptions that the table holds, never
  over the 4 held-out ones (which still get a `CE_` column when the baseline has them). All in percent.
- Baselines: "alexnet" uses AlexNet's published ImageNet-C errors (`ALEXNET_ERRORS`, the values every paper
  uses). Only AlexNet's per-corruption averages over severities are published, so its per-severity errors
  are each taken as that average: `sum_s E^AlexNet_{s,c} = 5 * average`, which is exactly what the averages
  encode. They only make sense for ImageNet-C; for any other dataset name a model of the same table (for
  example the cross-entropy run) as the baseline, and report `summary.attrs["baseline_note"]`.

No Ray, no torch: runs on a laptop from a copied results folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from study.tables import BENCHMARK_CORRUPTIONS, CLEAN, HELD_OUT_CORRUPTIONS, SEVERITIES

__all__ = [
    "ALEXNET_ERRORS",
    "BENCHMARK_CORRUPTIONS",
    "HELD_OUT_CORRUPTIONS",
    "CLEAN",
    "SEVERITIES",
    "corruption_summary",
    "severity_table",
    "check_robustness_table",
    "severity_curves",
    "corruption_summary_by_model",
]

# AlexNet's top-1 error on ImageNet-C per corruption, averaged over severities, and on clean ImageNet
# (Hendrycks & Dietterich 2019). The 15 corruption keys are the benchmark, in their canonical order.
ALEXNET_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
    CLEAN: 0.43478,
}
ALEXNET = "alexnet"
_ALEXNET_NOTE = "AlexNet's published ImageNet-C errors (Hendrycks & Dietterich 2019) = 100"
SEVERITY_VALUES = ("top1", "error", "ece")


def check_robustness_table(table: pd.DataFrame, value: str = "error") -> pd.DataFrame:
    """Validate a robustness table and return a copy with `severity` as int.

    Raises ValueError (one line) for missing columns, errors outside [0, 1], clean rows with a severity
    other than 0, corrupted rows with a severity outside 1-5, or duplicate (model, corruption, severity)."""
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"expected a pandas DataFrame robustness table, got {type(table).__name__}")
    needed = ["model", "corruption", "severity", value]
    missing = [column for column in needed if column not in table.columns]
    if missing:
        raise ValueError(f"robustness table lacks columns {missing}; needed: {needed}")
    table = table.copy()
    table["model"] = table["model"].astype(str)
    table["corruption"] = table["corruption"].astype(str)
    severity = pd.to_numeric(table["severity"], errors="coerce")
    if severity.isna().any() or (severity != severity.round()).any():
        raise ValueError(f"robustness table has non-integer severities {sorted(set(table['severity']))[:5]}")
    table["severity"] = severity.astype(int)
    values = pd.to_numeric(table[value], errors="coerce")
    bad = values.isna() | (values < 0) | (values > 1)
    if bad.any():
        row = table[bad].iloc[0]
        raise ValueError(
            f"{value}={row[value]} for model {row['model']!r}, {row['corruption']} severity {row['severity']}; "
            f"allowed: a fraction in [0, 1]"
        )
    table[value] = values.astype(float)
    is_clean = table["corruption"] == CLEAN
    bad_clean = is_clean & (table["severity"] != 0)
    bad_corrupted = ~is_clean & ~table["severity"].isin(SEVERITIES)
    if bad_clean.any() or bad_corrupted.any():
        row = table[bad_clean | bad_corrupted].iloc[0]
        raise ValueError(
            f"severity {row['severity']} for {row['corruption']!r} (model {row['model']!r}); allowed: 0 for "
            f"'clean', 1-5 for a corruption"
        )
    duplicated = table.duplicated(["model", "corruption", "severity"])
    if duplicated.any():
        row = table[duplicated].iloc[0]
        raise ValueError(
            f"robustness table has several rows for model {row['model']!r}, {row['corruption']} severity "
            f"{row['severity']}; allowed: one per (model, corruption, severity)"
        )
    return table


def corruption_summary(table: pd.DataFrame, baseline: str = ALEXNET) -> pd.DataFrame:
    """mCE, relative mCE and per-corruption CE, in percent, one row per model.

    Args:
        table: a robustness table (see the module docstring). Every model needs a clean row and all five
            severities of every corruption the table holds (the same corruptions for every model).
        baseline: "alexnet" (published ImageNet-C errors) or the name of a model in `table`.

    Returns:
        Columns `model`, `method` (when the table has it), `mCE`, `relative_mCE`, `clean_error`,
        `n_corruptions` (benchmark corruptions averaged into mCE) and `CE_<corruption>` per corruption,
        benchmark ones first in canonical order. `attrs` holds `baseline`, `baseline_note` (one line for a
        report), `mce_corruptions` (the list averaged) and `without_baseline` (corruptions left without a CE
        column because the baseline has no numbers for them: the held-out ones under AlexNet).

    Example::

        >>> import pandas as pd
        >>> from analysis import corruption_summary
        >>> table = pd.read_parquet("runs/quick-digits/robustness.parquet")
        >>> summary = corruption_summary(table, baseline="ce-base-seed0")  # a CE model of the table = 100
        >>> summary[["model", "mCE", "relative_mCE", "clean_error"]]
        >>> summary.attrs["baseline_note"]
    """
    table = check_robustness_table(table)
    models = list(dict.fromkeys(table["model"]))
    present = set(table.loc[table["corruption"] != CLEAN, "corruption"])
    benchmark = [name for name in BENCHMARK_CORRUPTIONS if name in present]
    if not benchmark:
        raise ValueError(
            f"robustness table holds none of the 15 benchmark corruptions (has {sorted(present)}); mCE needs "
            f"at least one of {', '.join(BENCHMARK_CORRUPTIONS)}"
        )
    others = sorted(present - set(benchmark), key=_corruption_order)

    if not isinstance(baseline, str):
        raise ValueError(f"baseline must be 'alexnet' or a model name, got {baseline!r}")
    if baseline.lower() == ALEXNET:
        base_sums, base_clean = _alexnet_sums(benchmark)
        note = _ALEXNET_NOTE
        without_baseline, others = others, []  # AlexNet has published numbers for the benchmark only
    elif baseline in models:
        sums, clean = _severity_sums(table, [baseline], benchmark + others)
        base_sums, base_clean = sums[baseline], clean[baseline]
        note = f"baseline model {baseline!r} of this table = 100"
        without_baseline = []
    else:
        raise ValueError(
            f"baseline {baseline!r} is neither 'alexnet' nor a model in the table; models: {', '.join(models)}"
        )

    corruptions = benchmark + others
    sums, clean = _severity_sums(table, models, corruptions)
    methods = table.groupby("model", sort=False)["method"].first() if "method" in table.columns else None
    rows = []
    for model in models:
        row: dict[str, object] = {"model": model}
        if methods is not None:
            row["method"] = methods[model]
        ce = {name: _ratio(sums[model][name][0], base_sums[name][0]) for name in corruptions}
        relative = {name: _ratio(sums[model][name][1], base_sums[name][1]) for name in benchmark}
        row["mCE"] = 100 * float(np.mean([ce[name] for name in benchmark]))
        row["relative_mCE"] = 100 * float(np.mean([relative[name] for name in benchmark]))
        row["clean_error"] = 100 * clean[model]
        row["n_corruptions"] = len(benchmark)
        row.update({f"CE_{name}": 100 * ce[name] for name in corruptions})
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary.attrs.update(
        baseline=baseline,
        baseline_note=note,
        mce_corruptions=benchmark,
        baseline_clean_error=base_clean,
        without_baseline=without_baseline,  # corruptions in the table that get no CE column
    )
    return summary


def severity_table(
    table: pd.DataFrame, value: str = "top1", corruptions: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per model, columns `clean`, 1, 2, 3, 4, 5: a metric averaged over corruptions per severity
    (Supp. Table 6 of the SupCon paper).

    Args:
        value: "top1" (accuracy, percent), "error" (percent) or "ece" (expected calibration error, fraction).
        corruptions: the corruptions averaged; default the benchmark corruptions present (the held-out ones
            only when no benchmark corruption is present).

    Example::

        >>> import pandas as pd
        >>> from analysis import severity_table
        >>> table = pd.read_parquet("runs/quick-digits/robustness.parquet")
        >>> severity_table(table, "top1").round(1)  # rows: models; columns: clean, 1, ..., 5
    """
    if value not in SEVERITY_VALUES:
        raise ValueError(f"unknown value {value!r}; allowed: {', '.join(SEVERITY_VALUES)}")
    column = "ece" if value == "ece" else "error"
    table = check_robustness_table(table, column)
    present = [name for name in dict.fromkeys(table["corruption"]) if name != CLEAN]
    if corruptions is None:
        chosen = [name for name in BENCHMARK_CORRUPTIONS if name in present] or sorted(present, key=_corruption_order)
    else:
        chosen = list(corruptions)
        absent = [name for name in chosen if name not in present]
        if absent:
            raise ValueError(f"corruptions {absent} are not in the robustness table; present: {', '.join(present)}")
    if not chosen:
        raise ValueError("robustness table holds no corrupted rows; a severity table needs at least one corruption")
    rows = table[table["corruption"].isin(chosen) | (table["corruption"] == CLEAN)]
    models = list(dict.fromkeys(table["model"]))
    result = pd.DataFrame(index=pd.Index(models, name="model"), columns=[CLEAN, *SEVERITIES], dtype=float)
    for model, group in rows.groupby("model", sort=False):
        clean = group.loc[group["corruption"] == CLEAN, column]
        result.loc[model, CLEAN] = clean.iloc[0] if len(clean) else np.nan
        corrupted = group[group["corruption"] != CLEAN]
        for severity in SEVERITIES:
            at_severity = corrupted[corrupted["severity"] == severity]
            missing = sorted(set(chosen) - set(at_severity["corruption"]))
            if missing:
                raise ValueError(f"model {model!r} lacks severity {severity} of {missing}")
            result.loc[model, severity] = at_severity[column].mean()
    if value == "top1":
        result = 100 * (1 - result)
    elif value == "error":
        result = 100 * result
    result.attrs.update(value=value, corruptions=chosen)
    return result


def _severity_sums(
    table: pd.DataFrame, models: Iterable[str], corruptions: Sequence[str]
) -> tuple[dict[str, dict[str, tuple[float, float]]], dict[str, float]]:
    """Per model: {corruption: (sum_s E_s, sum_s (E_s - E_clean))} and the clean error."""
    sums: dict[str, dict[str, tuple[float, float]]] = {}
    cleans: dict[str, float] = {}
    for model in models:
        rows = table[table["model"] == model]
        clean = rows.loc[rows["corruption"] == CLEAN, "error"]
        if clean.empty:
            raise ValueError(
                f"model {model!r} has no clean row (corruption 'clean', severity 0); relative mCE needs it"
            )
        cleans[model] = float(clean.iloc[0])
        sums[model] = {}
        for name in corruptions:
            errors = rows[rows["corruption"] == name].sort_values("severity")
            if list(errors["severity"]) != list(SEVERITIES):
                raise ValueError(
                    f"model {model!r} has severities {list(errors['severity'])} of {name}; needed: 1-5 "
                    f"(every model needs every corruption in the table)"
                )
            sums[model][name] = _sums(errors["error"].to_numpy(float), cleans[model])
    return sums, cleans


def _alexnet_sums(corruptions: Sequence[str]) -> tuple[dict[str, tuple[float, float]], float]:
    clean = ALEXNET_ERRORS[CLEAN]
    # Only averages over severities are published: each severity's error is taken as the average, summed
    # the same way as a model's errors so that AlexNet against itself gives exactly 100.
    return {name: _sums(np.full(len(SEVERITIES), ALEXNET_ERRORS[name]), clean) for name in corruptions}, clean


def _sums(errors: np.ndarray, clean: float) -> tuple[float, float]:
    return float(np.sum(errors)), float(np.sum(errors - clean))


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator; a zero denominator (a baseline with no error on a corruption, or for relative
    CE no worse than on clean data) gives inf, or NaN when the numerator is zero too."""
    if denominator != 0:
        return numerator / denominator
    return float("nan") if numerator == 0 else float("inf") * np.sign(numerator)


def _corruption_order(name: str) -> tuple[int, str]:
    order = BENCHMARK_CORRUPTIONS + HELD_OUT_CORRUPTIONS
    return (order.index(name), name) if name in order else (len(order), name)


# ------------------------------------------------------------------------------------- per-model tables
# What the figures and the report show: the summaries indexed by model id with each model's method, or None
# when the table cannot give them (no table, missing columns or severities), so a report works on any study.
def _model_methods(robustness: pd.DataFrame) -> dict[str, str]:
    if "method" not in robustness.columns:
        return {}
    pairs = robustness[["model", "method"]].drop_duplicates("model")
    return dict(zip(pairs["model"].astype(str), pairs["method"].astype(str), strict=True))


def _by_model(frame: pd.DataFrame) -> pd.DataFrame:
    """A per-model table indexed by model id as strings, whether the model is the index or a column."""
    if "model" in frame.columns:
        frame = frame.set_index("model")
    frame = frame.copy()
    frame.index = frame.index.astype(str)
    return frame


def _has_robustness(robustness: pd.DataFrame | None) -> bool:
    return (robustness is not None and len(robustness) > 0
            and {"model", "corruption", "severity", "error"} <= set(robustness.columns))


def severity_curves(robustness: pd.DataFrame, value: str = "top1") -> pd.DataFrame | None:
    """Per model: top-1 (%, value="top1"), error (%, "error") or ECE ("ece") at clean and severities 1-5,
    averaged over corruptions by `severity_table`, with a `method` column; None when
    the table cannot give it (no table, no such column, incomplete severities)."""
    column = "ece" if value == "ece" else "error"
    if not _has_robustness(robustness) or column not in robustness.columns:
        return None
    try:
        table = _by_model(severity_table(robustness, value=value))
    except ValueError:
        return None
    table.columns = [str(c) for c in table.columns]
    wanted = [c for c in ["clean", "1", "2", "3", "4", "5"] if c in table.columns]
    return _with_methods(table[wanted], robustness)


def _with_methods(table: pd.DataFrame, robustness: pd.DataFrame) -> pd.DataFrame:
    """`table` (indexed by model) with a first `method` column taken from the robustness table."""
    methods = _model_methods(robustness)
    table = table.drop(columns="method", errors="ignore")
    table.insert(0, "method", [methods.get(m, "model") for m in table.index])
    return table


def corruption_summary_by_model(robustness: pd.DataFrame, baseline: str = ALEXNET) -> pd.DataFrame | None:
    """`corruption_summary` indexed by model (str), with a `method` column; None when
    unavailable."""
    if not _has_robustness(robustness):
        return None
    try:
        summary = corruption_summary(robustness, baseline=baseline)
    except ValueError:
        return None
    attrs = dict(summary.attrs)
    summary = _with_methods(_by_model(summary), robustness)
    summary.attrs.update(attrs)
    return summary
