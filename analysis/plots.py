"""Figures of the stability and robustness comparisons, as PNG and SVG files.

Every plot function takes tables (DataFrames), writes `<out_dir>/<name>.png` and `.svg` atomically and
returns their paths, or returns None when the table lacks what the plot needs (a study that did not
vary that hyperparameter, no robustness table), so a report can call them all on any study.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402

from analysis import paper  # noqa: E402
from analysis.robustness import corruption_summary_by_model, severity_curves  # noqa: E402
from analysis.stability import BASE, format_value, method_name, stability_trials  # noqa: E402
from study.storage import atomic_write  # noqa: E402
from study.tables import CORRUPTION_GROUPS  # noqa: E402

__all__ = [
    "save_figure", "plot_stability_boxes", "plot_accuracy_vs", "plot_accuracy_vs_lr",
    "plot_accuracy_vs_temperature", "plot_accuracy_vs_batch_size", "plot_accuracy_vs_randaugment_magnitude",
    "plot_pair_heatmap", "plot_optimizer_pairs", "plot_augmentation_pairs", "plot_importance",
    "pair_table", "plot_severity", "plot_corruption_errors", "plot_mce", "corruption_groups",
    "method_color", "method_order",
]

METHOD_COLORS = {"supcon": "#1f77b4", "ce": "#ff7f0e", "simclr": "#2ca02c"}
# Any values: matplotlib's stubs type each keyword apart, so a dict of mixed values must not be narrowed
DIVERGED_STYLE: dict[str, Any] = {"marker": "x", "color": "#d62728", "s": 40, "linewidths": 1.5, "zorder": 5}
FIGURE_DPI = 110


def method_color(method: str) -> str:
    """A fixed colour per method, so SupCon looks the same in every figure."""
    return METHOD_COLORS.get(method, "#7f7f7f")


def method_order(methods: Iterable[str]) -> list[str]:
    order = {"supcon": 0, "ce": 1, "simclr": 2}
    return sorted(set(methods), key=lambda m: (order.get(m, 9), m))


def save_figure(fig: plt.Figure, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Write `fig` as `<out_dir>/<name>.png` and `.svg`, each atomically (`study.storage.atomic_write`), close it,
    and return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix in ("png", "svg"):
        def write(file, suffix: str = suffix) -> None:
            fig.savefig(file, format=suffix, dpi=FIGURE_DPI, bbox_inches="tight",
                        metadata={"Date": None} if suffix == "svg" else None)

        paths.append(atomic_write(out / f"{name}.{suffix}", write).local_path)
    plt.close(fig)
    return paths


# ------------------------------------------------------------------------------------- stability
def plot_stability_boxes(
    results: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    diverged: str = "chance",
    num_classes: int | None = None,
    name: str = "stability_boxes",
) -> list[Path] | None:
    """The paper's Fig. 4a: per hyperparameter family, box plots of top-1 over its settings (seed means),
    one box per method side by side. Diverged trials are marked with a red x: at chance accuracy when
    they count as chance, on the bottom edge when they are shown apart."""
    if results is None or len(results) == 0 or "method" not in results.columns:
        return None
    trials = stability_trials(results, diverged=diverged, num_classes=num_classes)
    families = [f for f in trials["family"].unique() if f != BASE] or list(trials["family"].unique())
    trials = trials.loc[trials["family"].isin(families)]
    if not trials["included"].any() and not trials["diverged"].any():
        return None
    methods = method_order(trials["method"])
    families = sorted(families)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(families) * max(1, len(methods) / 2) + 1.5), 4.2))
    rng = np.random.default_rng(0)  # jitter only
    apart_y = []
    for j, method in enumerate(methods):
        color = method_color(method)
        for i, family in enumerate(families):
            group = trials.loc[(trials["family"] == family) & (trials["method"] == method)]
            x = i + (j - (len(methods) - 1) / 2) * width
            means = group.loc[group["included"]].groupby("setting")["top1"].mean().to_numpy()
            if len(means):
                ax.boxplot([means], positions=[x], widths=width * 0.8, patch_artist=True, showfliers=False,
                           manage_ticks=False, whis=(0, 100),  # whiskers span the full range
                           boxprops={"facecolor": color, "alpha": 0.35, "edgecolor": color},
                           medianprops={"color": color}, whiskerprops={"color": color},
                           capprops={"color": color})
                ax.scatter(x + rng.uniform(-width / 5, width / 5, len(means)), means, s=14, color=color, zorder=4)
            bad = group.loc[group["diverged"]]
            if len(bad):
                if diverged == "chance":
                    ax.scatter(np.full(len(bad), x), bad["chance_top1"], **DIVERGED_STYLE)
                else:
                    apart_y.append(x)
    ax.set_xticks(range(len(families)), [f.replace("_", " ") for f in families])
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Top-1 over each hyperparameter's settings")
    if apart_y:
        bottom = ax.get_ylim()[0]
        ax.scatter(apart_y, np.full(len(apart_y), bottom), clip_on=False, **DIVERGED_STYLE)
    handles: list[Artist] = [plt.Rectangle((0, 0), 1, 1, color=method_color(m), alpha=0.5) for m in methods]
    labels = [method_name(m) for m in methods]
    if trials["diverged"].any():
        handles.append(plt.Line2D([], [], linestyle="", marker="x", color=DIVERGED_STYLE["color"]))
        labels.append("diverged (at chance)" if diverged == "chance" else "diverged (shown apart)")
    ax.legend(handles, labels, loc="best", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out_dir, name)


def _family_points(trials: pd.DataFrame, results: pd.DataFrame, hyperparameter: str) -> pd.DataFrame:
    """Trials of the family that varies `hyperparameter`, with its numeric value as `x`; from a grid or
    search when there is no one-at-a-time family for it."""
    points = trials.loc[trials["family"] == hyperparameter].copy()
    if len(points):
        points["x"] = pd.to_numeric(points["value"], errors="coerce")
        return points
    if hyperparameter not in results.columns:
        return points.assign(x=pd.Series(dtype=float))
    points = trials.loc[trials["family"].isin(["grid", "search"])].drop_duplicates("row").copy()
    column = results.reset_index(drop=True)[hyperparameter]
    points["x"] = pd.to_numeric(column.iloc[points["row"].to_numpy()].to_numpy(), errors="coerce")
    return points


def plot_accuracy_vs(
    results: pd.DataFrame,
    hyperparameter: str,
    out_dir: str | os.PathLike,
    *,
    log_x: bool | int = False,
    label: str | None = None,
    diverged: str = "chance",
    num_classes: int | None = None,
    name: str | None = None,
    reference: float | None = None,
) -> list[Path] | None:
    """Top-1 against a numeric hyperparameter, one line per method (mean over seeds, error bars one std),
    single trials as dots and diverged trials as red x marks (at chance accuracy, or on the bottom edge
    when shown apart). `log_x`: True for a base-10 log axis, an integer for that base. `reference` draws
    a vertical dotted line (the paper's value, e.g. temperature 0.1). None when fewer than two values."""
    if results is None or len(results) == 0 or "method" not in results.columns:
        return None
    trials = stability_trials(results, diverged=diverged, num_classes=num_classes)
    points = _family_points(trials, results, hyperparameter)
    points = points.loc[np.isfinite(points["x"])]
    if log_x:
        points = points.loc[points["x"] > 0]
    if points["x"].nunique() < 2:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    apart_x = []
    for method in method_order(points["method"]):
        color = method_color(method)
        group = points.loc[points["method"] == method]
        used = group.loc[group["included"]]
        if len(used):
            stats = used.groupby("x")["top1"].agg(["mean", "std", "size"]).sort_index()
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), color=color, marker="o",
                        capsize=3, label=method_name(method))
            ax.scatter(used["x"], used["top1"], s=8, color=color, alpha=0.4)
        bad = group.loc[group["diverged"]]
        if len(bad):
            if diverged == "chance":
                ax.scatter(bad["x"], bad["chance_top1"], **DIVERGED_STYLE)
            else:
                apart_x.extend(bad["x"])
    if log_x:
        ax.set_xscale("log", base=10 if log_x is True else int(log_x))
    if apart_x:
        ax.scatter(apart_x, np.full(len(apart_x), ax.get_ylim()[0]), clip_on=False, **DIVERGED_STYLE)
    if points["diverged"].any():
        ax.scatter([], [], label="diverged" + (" (at chance)" if diverged == "chance" else " (shown apart)"),
                   **DIVERGED_STYLE)
    if reference is not None:
        ax.axvline(reference, color="#555555", linestyle=":", linewidth=1, label=f"paper ({format_value(reference)})")
    ax.set_xlabel(label or hyperparameter.replace("_", " "))
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"Top-1 vs {label or hyperparameter.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, name or f"accuracy_vs_{hyperparameter}")


def plot_accuracy_vs_lr(results: pd.DataFrame, out_dir: str | os.PathLike, **kwargs) -> list[Path] | None:
    """Top-1 vs learning rate (log axis)."""
    return plot_accuracy_vs(results, "lr", out_dir, log_x=True, label="learning rate (per 256 images)", **kwargs)


def plot_accuracy_vs_temperature(results: pd.DataFrame, out_dir: str | os.PathLike, **kwargs) -> list[Path] | None:
    """The paper's Fig. 4d: top-1 vs temperature (log axis), diverged trials marked, the paper's 0.1 dotted."""
    kwargs.setdefault("reference", paper.TEMPERATURE)
    return plot_accuracy_vs(results, "temperature", out_dir, log_x=True, label="temperature", **kwargs)


def plot_accuracy_vs_batch_size(results: pd.DataFrame, out_dir: str | os.PathLike, **kwargs) -> list[Path] | None:
    """The paper's Fig. 4b: top-1 vs batch size (log2 axis)."""
    return plot_accuracy_vs(results, "batch_size", out_dir, log_x=2, label="batch size", **kwargs)


def plot_accuracy_vs_batch_size_by_memory(results: pd.DataFrame, out_dir: str | os.PathLike, *,
                                          diverged: str = "chance", num_classes: int | None = None
                                          ) -> list[Path] | None:
    """Paper Sec. 4.1 (the memory_bank space): top-1 vs batch size (log2 axis), one line per method and
    memory size (solid: no memory, dashed: with one; a method without `memory_size`, cross-entropy, is
    "no memory"), mean over seeds with one-std error bars. None without two batch sizes and two memory sizes."""
    if results is None or len(results) == 0 or not {"method", "batch_size", "memory_size"} <= set(results.columns):
        return None
    trials = stability_trials(results, diverged=diverged, num_classes=num_classes)
    points = _family_points(trials, results, "batch_size")
    memory = pd.to_numeric(results.reset_index(drop=True)["memory_size"], errors="coerce").fillna(0)
    points["memory"] = memory.iloc[points["row"].to_numpy()].to_numpy().astype(int)
    points = points.loc[np.isfinite(points["x"]) & (points["x"] > 0) & points["included"]]
    if points["x"].nunique() < 2 or points["memory"].nunique() < 2:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for method in method_order(points["method"]):
        for size, group in points.loc[points["method"] == method].groupby("memory", sort=True):
            stats = group.groupby("x")["top1"].agg(["mean", "std"]).sort_index()
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), color=method_color(method),
                        marker="s" if size else "o", linestyle="--" if size else "-", capsize=3,
                        label=f"{method_name(method)}, " + (f"memory {size}" if size else "no memory"))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Top-1 vs batch size, without and with a memory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "accuracy_vs_batch_size_by_memory")


def plot_accuracy_vs_randaugment_magnitude(results: pd.DataFrame, out_dir: str | os.PathLike,
                                           **kwargs) -> list[Path] | None:
    """The paper's Supp. Fig. 7: top-1 vs RandAugment magnitude."""
    return plot_accuracy_vs(results, "randaugment_m", out_dir, label="RandAugment magnitude", **kwargs)


def pair_table(results: pd.DataFrame, row: str, column: str, *, diverged: str = "chance",
               num_classes: int | None = None) -> dict[str, pd.DataFrame]:
    """Mean top-1 per (row value, column value) for each method that has at least a 2 x 2 table."""
    if results is None or len(results) == 0 or row not in results.columns or column not in results.columns:
        return {}
    trials = stability_trials(results, diverged=diverged, num_classes=num_classes)
    trials = trials.loc[trials["included"]].drop_duplicates("row")
    table = results.reset_index(drop=True)
    tables = {}
    for method in method_order(trials["method"]):
        group = trials.loc[trials["method"] == method]
        source = table.iloc[group["row"].to_numpy()]
        frame = pd.DataFrame({"row": source[row].map(format_value).to_numpy(),
                              "column": source[column].map(format_value).to_numpy(),
                              "top1": group["top1"].to_numpy()})
        frame = frame.loc[(frame["row"] != "NA") & (frame["column"] != "NA")]  # values the table does not know
        pivot = frame.pivot_table(index="row", columns="column", values="top1", aggfunc="mean")
        if pivot.shape[0] >= 2 and pivot.shape[1] >= 2:
            pivot.index.name, pivot.columns.name = row, column
            tables[method] = pivot
    return tables


def plot_pair_heatmap(
    results: pd.DataFrame,
    row: str,
    column: str,
    out_dir: str | os.PathLike,
    *,
    diverged: str = "chance",
    num_classes: int | None = None,
    name: str | None = None,
    title: str | None = None,
) -> list[Path] | None:
    """Heat map of mean top-1 over (row, column) hyperparameter pairs, one panel per method with at least
    a 2 x 2 table (the paper's Supp. Tables 8-9: contrastive-stage rows, linear-stage columns)."""
    tables = pair_table(results, row, column, diverged=diverged, num_classes=num_classes)
    if not tables:
        return None
    low = min(float(np.nanmin(t.to_numpy())) for t in tables.values())
    high = max(float(np.nanmax(t.to_numpy())) for t in tables.values())
    fig, axes = plt.subplots(1, len(tables), figsize=(4.4 * len(tables) + 0.8, 3.9), squeeze=False,
                             layout="constrained")
    for ax, (method, pivot) in zip(axes[0], tables.items(), strict=True):
        image = ax.imshow(pivot.to_numpy(dtype=float), cmap="viridis", vmin=low, vmax=max(high, low + 1e-9))
        ax.set_xticks(range(pivot.shape[1]), [str(c).replace("_", " ") for c in pivot.columns],
                      rotation=30, ha="right")
        ax.set_yticks(range(pivot.shape[0]), [str(r).replace("_", " ") for r in pivot.index])
        ax.set_xlabel(column.replace("_", " "))
        ax.set_ylabel(row.replace("_", " "))
        ax.set_title(method_name(method))
        middle = (low + high) / 2
        for (i, j), value in np.ndenumerate(pivot.to_numpy(dtype=float)):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if value < middle else "black")
    fig.colorbar(image, ax=list(axes[0]), label="test top-1 (%)", shrink=0.85)
    fig.suptitle(title or f"Top-1 by {row.replace('_', ' ')} x {column.replace('_', ' ')}")
    return save_figure(fig, out_dir, name or f"pairs_{row}_{column}")


def plot_optimizer_pairs(results: pd.DataFrame, out_dir: str | os.PathLike, **kwargs) -> list[Path] | None:
    """Supp. Table 8: contrastive-stage optimizer (rows) x linear-stage optimizer (columns)."""
    return plot_pair_heatmap(results, "optimizer", "linear_optimizer", out_dir, name="optimizer_pairs",
                             title="Top-1 by contrastive-stage x linear-stage optimizer", **kwargs)


def plot_augmentation_pairs(results: pd.DataFrame, out_dir: str | os.PathLike, **kwargs) -> list[Path] | None:
    """Supp. Table 9: contrastive-stage augmentation (rows) x linear-stage augmentation (columns)."""
    return plot_pair_heatmap(results, "augmentation", "linear_augmentation", out_dir, name="augmentation_pairs",
                             title="Top-1 by contrastive-stage x linear-stage augmentation", **kwargs)


def plot_importance(importance: pd.DataFrame, out_dir: str | os.PathLike, *,
                    name: str = "hyperparameter_importance") -> list[Path] | None:
    """Bar chart of `hyperparameter_importance`'s output: parameters on the y axis, one bar per method."""
    if importance is None or len(importance) == 0 or not {"method", "parameter", "importance"} <= set(importance):
        return None
    table = importance.pivot_table(index="parameter", columns="method", values="importance", aggfunc="mean")
    table = table.loc[table.max(axis=1).sort_values().index]
    methods = method_order(table.columns)
    height = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(5.6, 1.2 + 0.45 * len(table) * max(1, len(methods) / 1.5)))
    for j, method in enumerate(methods):
        y = np.arange(len(table)) + (j - (len(methods) - 1) / 2) * height
        ax.barh(y, table[method].fillna(0).to_numpy(), height=height * 0.9, color=method_color(method),
                label=method_name(method))
    ax.set_yticks(range(len(table)), [p.replace("_", " ") for p in table.index])
    ax.set_xlabel("importance (sums to 1 per method)")
    evaluators = ", ".join(sorted(set(importance.get("evaluator", pd.Series(dtype=str)).dropna().astype(str))))
    ax.set_title("Hyperparameter importance" + (f"\n({evaluators})" if evaluators else ""), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, out_dir, name)


# ------------------------------------------------------------------------------------- robustness
def corruption_groups() -> dict[str, tuple[str, ...]]:
    """The four corruption families of the benchmark (the schema's)."""
    return dict(CORRUPTION_GROUPS)


def plot_severity(
    robustness: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    value: str = "top1",
    reference: Mapping[str, Sequence[float]] | None = None,
    name: str | None = None,
) -> list[Path] | None:
    """Top-1 (value="top1"), error ("error") or ECE ("ece") against corruption severity (0 = clean), averaged over
    corruptions (Supp. Table 6): one line per method (mean over its models; thin lines per model when it
    has several). `reference`: {label: six values} drawn dashed (the paper's numbers)."""
    if value not in ("top1", "error", "ece"):
        raise ValueError(f"value={value!r} is not plottable against severity; allowed: top1 | error | ece")
    curves = severity_curves(robustness, value)
    if curves is None or len(curves) == 0:
        return None
    columns = [c for c in curves.columns if c != "method"]
    x = np.array([0 if c == "clean" else int(c) for c in columns])
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for method in method_order(curves["method"]):
        rows = curves.loc[curves["method"] == method, columns].to_numpy(dtype=float)
        color = method_color(method)
        if len(rows) > 1:
            for r in rows:
                ax.plot(x, r, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(x, np.nanmean(rows, axis=0), color=color, marker="o",
                label=f"{method_name(method)} ({len(rows)} model{'s' if len(rows) > 1 else ''})")
    for label, values in (reference or {}).items():
        ax.plot(range(len(values)), values, linestyle="--", color="#555555", linewidth=1, label=label)
    ax.set_xticks(range(6), ["clean", "1", "2", "3", "4", "5"])
    ax.set_xlabel("corruption severity")
    ylabel = {"top1": "top-1 (%)", "error": "top-1 error (%)", "ece": "expected calibration error"}[value]
    ax.set_ylabel(ylabel + ", mean over corruptions", fontsize=9)
    ax.set_title({"top1": "Top-1", "error": "Error", "ece": "Calibration"}[value] + " vs corruption severity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, name or f"{value}_vs_severity")


def _baseline_label(baseline: str) -> str:
    return "AlexNet" if str(baseline).lower() == "alexnet" else str(baseline)


def plot_corruption_errors(
    robustness: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    baseline: str = "alexnet",
    name: str = "corruption_errors",
) -> list[Path] | None:
    """Corruption Error per corruption (mean over each method's models), bars grouped by the four
    corruption families (noise, blur, weather, digital; held-out corruptions last)."""
    summary = corruption_summary_by_model(robustness, baseline)
    if summary is None or len(summary) == 0:
        return None
    present = [c[3:] for c in summary.columns if str(c).startswith("CE_")]
    if not present:
        return None
    groups = corruption_groups()
    ordered: list[tuple[str, str]] = [(g, c) for g, names in groups.items() for c in names if c in present]
    ordered += [("held out", c) for c in present if all(c != o for _, o in ordered)]
    methods = method_order(summary["method"])
    width = 0.8 / len(methods)
    starts: list[float] = []
    x = 0.0
    for i, (group, _) in enumerate(ordered):
        if i and group != ordered[i - 1][0]:
            x += 0.8  # a gap between families
        starts.append(x)
        x += 1
    positions = np.array(starts)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(ordered) * max(1, len(methods) / 2) + 2), 4.2))
    for j, method in enumerate(methods):
        values = summary.loc[summary["method"] == method, [f"CE_{c}" for _, c in ordered]].astype(float).mean()
        ax.bar(positions + (j - (len(methods) - 1) / 2) * width, values.to_numpy(), width=width * 0.95,
               color=method_color(method), label=method_name(method))
    ax.set_xticks(positions, [c.replace("_", " ") for _, c in ordered], rotation=45, ha="right", fontsize=8)
    for group in dict.fromkeys(g for g, _ in ordered):
        span = positions[[g == group for g, _ in ordered]]
        ax.annotate(group, xy=((span.min() + span.max()) / 2, 1.0), xycoords=("data", "axes fraction"),
                    ha="center", va="bottom", fontsize=9, fontweight="bold")
    ax.axhline(100, color="#555555", linestyle=":", linewidth=1)
    ax.set_ylabel(f"Corruption Error (%, {_baseline_label(baseline)} = 100)")
    ax.set_title("Corruption Error by corruption family", pad=18)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out_dir, name)


MCE_ROW_INCHES = 0.22  # the mCE chart's height per bar: 7-point labels, one per row, never overlap


def plot_mce(
    robustness: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    baseline: str = "alexnet",
    reference: Mapping[str, Sequence[float]] | None = None,
    name: str = "mce",
) -> list[Path] | None:
    """mCE and relative mCE per model, bars coloured by method (the paper's Fig. 3, left). `reference`:
    {label: (mCE, relative mCE)} drawn as hatched grey bars below ours (the paper's ResNet-50).

    Horizontal bars, one row per model with its id on the y axis, and a figure that grows with the number of
    models: a study's 72 trial ids stay legible, where labels under vertical bars would overlap."""
    summary = corruption_summary_by_model(robustness, baseline)
    if summary is None or len(summary) == 0 or "mCE" not in summary.columns:
        return None
    summary = summary.sort_values(["method", "mCE"])
    labels = [f"{model} ({method_name(m)})" for model, m in zip(summary.index, summary["method"], strict=True)]
    colors = [method_color(m) for m in summary["method"]]
    reference = reference or {}
    labels += list(reference)
    rows = np.arange(len(labels))
    longest = max(len(label) for label in labels)
    fig, axes = plt.subplots(1, 2, sharey=True, layout="constrained",
                             figsize=(max(7.0, 5.0 + 0.06 * longest), max(3.0, 1.3 + MCE_ROW_INCHES * len(labels))))
    for ax, column in zip(axes, ("mCE", "relative_mCE"), strict=True):
        values = (summary[column].astype(float).to_numpy() if column in summary.columns
                  else np.full(len(summary), np.nan))
        ax.barh(rows[:len(values)], values, color=colors, height=0.75)
        for k, numbers in enumerate(reference.values()):
            ax.barh(len(values) + k, numbers[0 if column == "mCE" else 1], color="#bbbbbb", hatch="//", height=0.75)
        ax.axvline(100, color="#555555", linestyle=":", linewidth=1)
        ax.set_title(column.replace("_", " "))
        ax.set_xlabel(f"% ({_baseline_label(baseline)} = 100)")
        ax.grid(axis="x", alpha=0.3)
        for i, v in enumerate(values):
            if np.isfinite(v):
                ax.text(v, i, f" {v:.1f}", ha="left", va="center", fontsize=6.5)
        finite = values[np.isfinite(values)]
        ax.set_xlim(0, max([110.0, *finite, *(n[0 if column == "mCE" else 1] for n in reference.values())]) * 1.12)
    axes[0].set_yticks(rows, labels, fontsize=7)
    axes[0].set_ylim(len(labels) - 0.5, -0.5)  # the first model on top
    axes[1].tick_params(axis="y", labelleft=False)
    fig.suptitle("Mean Corruption Error")
    return save_figure(fig, out_dir, name)
