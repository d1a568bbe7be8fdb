"""One report per study: a self-contained HTML file and its Markdown twin.

`build_report(study_dir)` reads what the study folder holds (study.json, results.parquet,
history.parquet, robustness.parquet, optuna.db), computes the stability and robustness comparisons,
draws every figure the data allows, and writes `report.html` (images embedded as base64 PNG, inline CSS,
a Content-Security-Policy that forbids any external resource, so it opens offline) and `report.md` (images
as files in `report_figures/` beside it). It works on a study that is still running or partly failed:
it reports what exists and says what is missing. Both files are written atomically (`study.storage`).
A study on an object store (`s3://...`) is read from there; its report is rendered into a local folder,
then uploaded beside its tables.

This module is the builder: it reads the study folder, computes the numbers, draws the figures and lays them
out as an `analysis.document.Document`, which renders them to HTML and Markdown.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from analysis import paper, plots
from analysis.document import Document, Figure, format_cell, is_number
from analysis.robustness import corruption_summary, corruption_summary_by_model, severity_curves
from analysis.stability import (
    BASE,
    DIVERGED_POLICIES,
    GRID,
    SEARCH,
    best_top1,
    chance_top1,
    format_value,
    hyperparameter_columns,
    hyperparameter_importance,
    method_name,
    spread_difference,
    stability_table,
    stability_trials,
    status_counts,
)
from study.storage import Location, atomic_write, is_uri, read_table

SECTIONS = (
    "What was run",
    "Headline comparison",
    "Stability",
    "Hyperparameter importance",
    "Robustness",
    "Comparison with the paper",
    "Problems and missing pieces",
    "All trials",
)
FIGURE_DIR = "report_figures"
STUDY_INFO_FIELDS = ("space", "design", "dataset", "model", "width", "epochs", "linear_epochs", "seeds",
                     "metric", "num_trials", "hardware", "started", "finished", "wall_seconds")
ACCURACY_PLOTS = (  # (hyperparameter, plot function, words for a reading)
    ("lr", plots.plot_accuracy_vs_lr, "learning rates"),
    ("temperature", plots.plot_accuracy_vs_temperature, "temperatures"),
    ("batch_size", plots.plot_accuracy_vs_batch_size, "batch sizes"),
    ("randaugment_m", plots.plot_accuracy_vs_randaugment_magnitude, "RandAugment magnitudes"),
)


# --------------------------------------------------------------------------------------------- inputs
@dataclass
class StudyFiles:
    """What a study folder holds; None for a table that is absent or unreadable, with a note saying why."""

    directory: Location  # a local folder or an object-store prefix (`study.storage.Location`)
    info: dict[str, Any] | None = None
    results: pd.DataFrame | None = None
    history: pd.DataFrame | None = None
    robustness: pd.DataFrame | None = None
    optuna_storage: Path | str | None = None  # a local SQLite file (a downloaded copy for a remote study) or a URL
    notes: list[str] = field(default_factory=list)


def _read_csv(location: Location) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(location.read_bytes()))


def _read_table(directory: Location, stem: str, notes: list[str], required: bool) -> pd.DataFrame | None:
    """`<stem>.parquet`, else `<stem>.csv`; a note when neither can be read."""
    readers: tuple[tuple[str, Callable[[Location], pd.DataFrame]], ...] = ((".parquet", read_table),
                                                                           (".csv", _read_csv))
    for suffix, reader in readers:
        path = directory / f"{stem}{suffix}"
        if path.is_file():
            try:
                return reader(path)
            except Exception as error:  # a half-copied or corrupt file: report it, keep going
                notes.append(f"{path.name} could not be read ({type(error).__name__}: {error})")
    if required:
        notes.append(f"no {stem}.parquet (or .csv) in {directory}: nothing to report about it yet")
    return None


def load_study(study_dir: str | os.PathLike) -> StudyFiles:
    """Read the tables of a study folder; raise ValueError when the folder does not exist.

    Example::

        >>> from analysis import load_study
        >>> files = load_study("runs/quick-digits")
        >>> files.results.groupby("method")["test_top1"].mean()  # None for an absent table; files.notes says why
    """
    directory = Location.of(study_dir)
    if not directory.is_dir():
        raise ValueError(f"study folder {str(study_dir)!r} does not exist; pass the folder the sweep wrote")
    files = StudyFiles(directory=directory)
    info_path = directory / "study.json"
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
            files.info = info if isinstance(info, dict) else None
        except (json.JSONDecodeError, OSError) as error:
            files.notes.append(f"study.json could not be read ({error})")
    else:
        files.notes.append("no study.json: the study's settings (space, budgets, hardware) are unknown")
    files.results = _read_table(directory, "results", files.notes, required=True)
    files.history = _read_table(directory, "history", files.notes, required=False)
    files.robustness = _read_table(directory, "robustness", files.notes, required=False)
    if files.robustness is None:
        files.notes.append("no robustness.parquet: corruption robustness was not evaluated "
                           "(run `python run_study.py robustness --study DIR`)")
    files.optuna_storage = _optuna_storage(directory, files.info or {}, files.notes)
    return files


def _optuna_storage(directory: Location, info: dict[str, Any], notes: list[str]) -> Path | str | None:
    """Where the study's Optuna studies are, as study.json says: an RDB URL (--optuna-storage), or a SQLite
    file in the study folder (downloaded to a local temporary folder when the study is on an object store)."""
    recorded = info.get("optuna_storage")
    if isinstance(recorded, str) and is_uri(recorded) and not recorded.startswith("sqlite"):
        if "***" in recorded:
            notes.append(f"the Optuna storage {recorded} is recorded without its password; importance is computed "
                         "from the results table")
            return None
        return recorded
    for candidate in directory.list("*.db"):
        if candidate.is_local:
            return candidate.local_path
        return candidate.download(Path(tempfile.mkdtemp(prefix="supcon-report-optuna-")) / candidate.name)
    return None


def _storage_name(storage: Path | str) -> str:
    return storage.name if isinstance(storage, Path) else storage


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


# --------------------------------------------------------------------------------------------- numbers
def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _ci(low: float, high: float, digits: int = 1) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no CI (one seed per setting)"
    return f"[{_fmt(low, digits)}, {_fmt(high, digits)}]"


def _family_words(family: str) -> str:
    words = {"lr": "learning rates", "temperature": "temperatures", "batch_size": "batch sizes",
             "randaugment_m": "RandAugment magnitudes", "augmentation": "augmentations",
             "optimizer": "optimizers", "linear_optimizer": "linear-stage optimizers",
             "linear_augmentation": "linear-stage augmentations", GRID: "the grid", SEARCH: "the searched settings",
             BASE: "the base setting"}
    return words.get(family, family.replace("_", " ") + " values")


def _spread_reading(family: str, difference: pd.DataFrame, table: pd.DataFrame, confidence: float) -> str:
    """'SupCon's top-1 range over learning rates is 3.1 points vs 9.4 for cross-entropy (difference -6.3,
    95% CI [-9.0, -2.1]): ...' or, with one method, its own range."""
    row = difference.loc[difference["family"] == family]
    if len(row):
        r = row.iloc[0]
        verdict = {"inconclusive": "the interval includes 0, so these seeds cannot tell the two apart",
                   "not enough seeds": "one seed per setting, so no interval"}.get(
            r["verdict"], f"the interval excludes 0: {method_name(r['verdict'].split()[0])} is less spread")
        return (f"{method_name(r['first'])}'s top-1 range over {_family_words(family)} is "
                f"{_fmt(r['range_first'])} points vs {_fmt(r['range_second'])} for {method_name(r['second'])} "
                f"(difference {_fmt(r['range_diff'])}, {confidence:.0%} CI "
                f"{_ci(r['range_diff_ci_low'], r['range_diff_ci_high'])}); {verdict}.")
    parts = []
    for _, r in table.loc[table["family"] == family].iterrows():
        parts.append(f"{method_name(r['method'])}'s top-1 range over {_family_words(family)} is {_fmt(r['range'])} "
                     f"points ({confidence:.0%} CI {_ci(r['range_ci_low'], r['range_ci_high'])})")
    return "; ".join(parts) + "." if parts else "Too few finished settings for a reading."


# --------------------------------------------------------------------------------------------- report
def build_report(
    study_dir: str | os.PathLike,
    *,
    out_dir: str | os.PathLike | None = None,
    diverged: str = "chance",
    num_classes: int | None = None,
    baseline: str | None = None,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write `report.html` (self-contained) and `report.md` (figures in `report_figures/`) for a study.

    Args:
        study_dir: the study folder (study.json, results.parquet, optionally history.parquet,
            robustness.parquet, optuna.db). A partial or partly failed study is reported as it is.
        out_dir: where to write; default the study folder.
        diverged: "chance" (diverged trials count as chance accuracy) or "apart" (left out of the numbers
            and shown beside them); the report says which.
        num_classes: classes of the dataset, for chance accuracy when the configs cannot tell
            (imagefolder datasets); without it such a study falls back to showing diverged trials apart.
        baseline: Corruption Error baseline: "alexnet" (published ImageNet-C errors) or a model id of the
            robustness table; default AlexNet for ImageNet, else the cross-entropy model with the lowest
            clean error.
        confidence, n_boot, seed: the intervals' level, and the replicates and random seed of the
            spread intervals' parametric bootstrap (analysis/stability.py).

    Returns:
        (html_path, md_path): local files; for a study on an object store, the local copies of the report
        uploaded beside its tables.

    Example::

        >>> from analysis import build_report
        >>> html_path, md_path = build_report("runs/quick-digits", n_boot=500)
        >>> html_path.name, md_path.name
        ('report.html', 'report.md')
    """
    if diverged not in DIVERGED_POLICIES:
        raise ValueError(f"diverged={diverged!r} is not a policy; allowed: {' | '.join(DIVERGED_POLICIES)}")
    files = load_study(study_dir)
    target = Location.of(out_dir) if out_dir is not None else files.directory
    # Figures are drawn to files: a study on an object store is rendered locally, then uploaded beside its tables.
    out = target.local_path if target.is_local else Path(tempfile.mkdtemp(prefix="supcon-report-"))
    out.mkdir(parents=True, exist_ok=True)
    figure_dir = out / FIGURE_DIR
    builder = _ReportBuilder(files, figure_dir, diverged=diverged, num_classes=num_classes, baseline=baseline,
                             confidence=confidence, n_boot=n_boot, seed=seed)
    document = builder.build()
    info = files.info or {}
    title = f"SupCon vs cross-entropy: study {info.get('space') or files.directory.name}"
    subtitle = (f"{info.get('dataset', 'dataset unknown')}, {info.get('model', 'model unknown')}; report generated "
                f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} from {files.directory}")
    if info.get("tracking"):  # where the same trials can be watched (study/tracking.py writes these lines)
        subtitle += "; trackers: " + "; ".join(map(str, info["tracking"]))
    html_path, md_path = out / "report.html", out / "report.md"
    _write_text(html_path, document.to_html(title, subtitle))
    _write_text(md_path, document.to_markdown(title, subtitle, figure_dir, out))
    # Figures of an earlier report that this one no longer draws would mislead a reader of the folder.
    drawn = {p.name for f in builder.figures for p in (f.png, f.png.with_suffix(".svg"))}
    for stale in figure_dir.glob("*"):
        if stale.is_file() and stale.name not in drawn:
            stale.unlink()
    if not target.is_local:
        _upload_report(out, target, drawn)
    return html_path, md_path


def _upload_report(local: Path, target: Location, drawn: set[str]) -> None:
    """The locally rendered report (html, md, figures) beside the tables of a study on an object store; figures
    of an earlier report that this one no longer draws are removed there too."""
    remote_figures = target / FIGURE_DIR
    for figure in sorted((local / FIGURE_DIR).glob("*")):
        if figure.is_file():
            (remote_figures / figure.name).upload(figure)
    for stale in remote_figures.list():
        if stale.name not in drawn:
            stale.delete()
    for name in ("report.md", "report.html"):  # the html last: its presence says the report is complete
        (target / name).upload(local / name)


class _ReportBuilder:
    """Computes the numbers and figures of one report and lays them out as a Document."""

    def __init__(self, files: StudyFiles, figure_dir: Path, *, diverged: str, num_classes: int | None,
                 baseline: str | None, confidence: float, n_boot: int, seed: int) -> None:
        self.files = files
        self.figure_dir = figure_dir
        self.info = files.info or {}
        self.notes = list(files.notes)
        self.figures: list[Figure] = []
        self.confidence = confidence
        self.stats: dict[str, Any] = {"confidence": confidence, "n_boot": n_boot, "seed": seed}
        self.results = files.results
        if self.results is not None:
            missing = [c for c in ("method", "status", "test_top1") if c not in self.results.columns]
            if missing:
                self.notes.append(f"results table lacks column(s) {', '.join(missing)}; no stability numbers")
                self.results = None
        self.num_classes = num_classes
        self.diverged = diverged
        if self.results is not None and num_classes is None:
            self.num_classes = self._study_num_classes()
        self.policy_note = ""
        if self.results is not None and diverged == "chance":
            try:
                stability_trials(self.results, diverged="chance", num_classes=self.num_classes)
            except ValueError as error:
                self.diverged = "apart"
                self.policy_note = f" (asked to count them as chance, but {error}; shown apart instead)"
        self.baseline = baseline

    def _study_num_classes(self) -> int | None:
        """Classes from study.json's dataset, for configs that do not carry it (searched trials)."""
        key = str(self.info.get("dataset", ""))
        from analysis.stability import DATASET_CLASSES

        return DATASET_CLASSES.get(key)

    # ------------------------------------------------------------------ helpers
    def _try(self, what: str, function: Callable[[], Any]) -> Any:
        """Run a computation on data that may be partial; a ValueError becomes a note, not a crash."""
        try:
            return function()
        except ValueError as error:
            self.notes.append(f"{what}: {error}")
            return None

    def _figure(self, paths: list[Path] | None, title: str, reading: str) -> Figure | None:
        if not paths:
            return None
        figure = Figure(png=paths[0], title=title, reading=reading)
        self.figures.append(figure)
        return figure

    def _policy_sentence(self) -> str:
        if self.diverged == "chance":
            results = self.results
            assert results is not None  # called by _headline only with a stability table, made from results
            chance = self._try("chance accuracy", lambda: chance_top1(results, self.num_classes))
            return (f"Diverged trials count as chance accuracy ({_fmt(chance)}% top-1) in every number and plot; "
                    "they are instabilities, never dropped.")
        return ("Diverged trials are shown apart: left out of the numbers, counted in the n_diverged column and "
                "marked in the plots" + self.policy_note + ".")

    # ------------------------------------------------------------------ layout
    def build(self) -> Document:
        document = Document()
        kwargs: dict[str, Any] = {"diverged": self.diverged, "num_classes": self.num_classes}
        results = self.results
        self.table = self.difference = self.best = None
        if results is not None and len(results):
            self.table = self._try("stability table", lambda: stability_table(results, **kwargs, **self.stats))
            self.difference = self._try("spread difference",
                                        lambda: spread_difference(results, **kwargs, **self.stats))
            self.best = self._try("best top-1", lambda: best_top1(results, **kwargs, **self.stats))
        self.robustness_summary, self.baseline_note = self._robustness_numbers()

        self._what_was_run(document)
        self._headline(document)
        self._stability(document)
        self._importance(document)
        self._robustness(document)
        self._paper(document)
        self._problems(document)
        self._all_trials(document)
        return document

    def _what_was_run(self, document: Document) -> None:
        document.heading("What was run")
        if self.info:
            rows = [(key, _describe(key, self.info[key])) for key in STUDY_INFO_FIELDS if key in self.info]
            rows += [(k, _describe(k, v)) for k, v in self.info.items() if k not in STUDY_INFO_FIELDS]
            document.table(pd.DataFrame(rows, columns=["setting", "value"]), "From study.json")
        else:
            document.paragraph("The study's settings are unknown: study.json is missing or unreadable.")
        results = self.results
        if results is None:
            document.paragraph("No results table yet: no trial has been collected.")
            return
        expected = self.info.get("num_trials")
        document.paragraph(f"{len(results)} trial(s) in the results table"
                           + (f" of {expected} planned." if isinstance(expected, int) else "."))
        if len(results):
            counts = status_counts(results)
            document.table(counts.assign(method=counts["method"].map(method_name)), "Trials per method and status")
        throughput = self._throughput()
        if throughput:
            document.paragraph(throughput)
        varied = self._varied_values()
        if varied:
            document.table(pd.DataFrame(varied, columns=["hyperparameter family", "methods", "values"]),
                           "What each family varies (one-at-a-time families start from the base combination)")

    def _throughput(self) -> str:
        """One line from history.parquet: epochs recorded, the median training speed per stage and the share
        of the epoch spent in augmentation (older studies have no such column)."""
        history = self.files.history
        if history is None or not len(history) or "stage" not in history.columns:
            return ""
        parts = []
        # A column missing from an older study's history reads as no values: pd.to_numeric(None) would be a
        # scalar, without .median().
        no_values = pd.Series(dtype=float)
        for stage, group in history.groupby(history["stage"].astype(str), sort=True):
            speed = pd.to_numeric(group.get("images_per_second", no_values), errors="coerce").median()
            seconds = pd.to_numeric(group.get("epoch_seconds", no_values), errors="coerce").median()
            augment = pd.to_numeric(group.get("augment_fraction", no_values), errors="coerce").median()
            parts.append(f"{stage}: {len(group)} epochs, median {_fmt(speed, 0)} images/s, "
                         f"{_fmt(seconds, 1)} s per epoch"
                         + (f", {_fmt(100 * augment, 0)}% of it in augmentation" if np.isfinite(augment) else ""))
        trials = history["trial_id"].nunique() if "trial_id" in history.columns else "?"
        return f"Training history of {trials} trial(s) — " + "; ".join(parts) + "."

    def _varied_values(self) -> list[tuple[str, str, str]]:
        results = self.results
        assert results is not None  # _what_was_run returns before this without results
        if "varied" not in results.columns:
            return []
        rows = []
        for family in sorted(set(results["varied"].astype(str)) - {BASE}):
            members = results.loc[results["varied"].astype(str) == family]
            methods = ", ".join(method_name(m) for m in sorted(members["method"].astype(str).unique()))
            if family in results.columns:
                values = sorted(members[family].map(format_value).unique(), key=_natural)
                base = results.loc[results["varied"].astype(str) == BASE, family].map(format_value).unique()
                values = sorted(set(values) | set(base), key=_natural)
                rows.append((family, methods, ", ".join(values)))
            else:
                columns = [c for c in hyperparameter_columns(results) if members[c].nunique() > 1]
                rows.append((family, methods, ", ".join(columns) or "–"))
        return rows

    def _headline(self, document: Document) -> None:
        document.heading("Headline comparison")
        if self.table is None or self.best is None:
            document.paragraph("No finished trials to compare yet.")
        else:
            document.paragraph(self._policy_sentence())
            document.paragraph(
                f"Best setting per method, chosen by validation top-1 so the test number is not selected on the "
                f"test set; top-1 is the mean over that setting's seeds with a {self.confidence:.0%} Student-t "
                f"interval over seeds.")
            best = self.best.copy()
            reference = paper.table2_top1(str(self.info.get("dataset", "")))
            frame = pd.DataFrame({
                "method": best["method"].map(method_name), "best setting": best["setting"],
                "seeds": best["n_seeds"], "val top-1": best["val_top1"], "test top-1": best["top1"],
                f"{self.confidence:.0%} CI": [_ci(lo, hi, 2) for lo, hi in zip(best["ci_low"], best["ci_high"],
                                                                                strict=True)],
                "best single trial": best["best_single_trial"],
            })
            if reference:
                frame["paper (Table 2, R50)"] = [reference.get(m, math.nan) for m in best["method"]]
            document.table(frame, "Best top-1 per method")
            document.paragraph(self._best_reading())
            document.paragraph(
                "Spread of top-1 over each hyperparameter's settings (seed means); range = best minus worst "
                "setting, worst drop = the validation-chosen setting minus the worst. Intervals are for the spread "
                "of the settings' true means: they re-simulate the seed noise measured within settings.")
            document.table(_spread_frame(self.table, self.confidence), "Spread per hyperparameter family")
            if self.difference is not None and len(self.difference):
                document.table(_difference_frame(self.difference, self.confidence),
                               "Difference in spread, SupCon minus cross-entropy (negative: SupCon more stable)")
                document.paragraph(self._overall_stability_reading())
        if self.robustness_summary is not None:
            document.paragraph("Corruption robustness (" + self.baseline_note + "):")
            document.table(self._mce_frame(), "mCE and relative mCE (percent; lower is better)")

    def _best_reading(self) -> str:
        assert self.best is not None  # _headline calls it only with a best-top-1 table
        best = self.best.set_index("method")
        if {"supcon", "ce"} <= set(best.index):
            s, c = best.loc["supcon"], best.loc["ce"]
            overlap = not (s["ci_low"] > c["ci_high"] or c["ci_low"] > s["ci_high"])
            gap = s["top1"] - c["top1"]
            tail = ("the intervals overlap, so this difference may be seed noise" if overlap
                    else "the intervals do not overlap") if np.isfinite(s["ci_low"]) and np.isfinite(c["ci_low"]) \
                else "with one seed there is no interval"
            reading = (f"SupCon's best top-1 is {_fmt(s['top1'], 2)} vs {_fmt(c['top1'], 2)} for cross-entropy "
                       f"({'+' if gap >= 0 else ''}{_fmt(gap, 2)} points); {tail}.")
            return reading + (" " + self._short_budget_sentence() if gap < 0 else "")
        return "; ".join(f"{method_name(m)}: best top-1 {_fmt(r['top1'], 2)}" for m, r in best.iterrows()) + "."

    def _short_budget_sentence(self) -> str:
        """Why SupCon can trail at a small budget: its encoder learns from a few epochs of contrastive
        pre-training only, where the paper pre-trains for hundreds."""
        epochs, dataset = self.info.get("epochs"), str(self.info.get("dataset", ""))
        paper_epochs, where = paper.pretrain_epochs(dataset)
        if not isinstance(epochs, (int, float)) or epochs >= paper_epochs:
            return ""
        return (f"SupCon's encoder had {int(epochs)} epochs of contrastive pre-training here, against the "
                f"paper's {paper_epochs} on {where}, and contrastive pre-training converges more slowly than "
                f"cross-entropy, so a short budget favours cross-entropy.")

    def _overall_stability_reading(self) -> str:
        d = self.difference
        assert d is not None  # called only when there is a spread difference
        smaller = int((d["range_diff"] < 0).sum())
        clear = int((d["verdict"] == "supcon less spread").sum())
        against = int((d["verdict"] == "ce less spread").sum())
        with_interval = int((d["verdict"] != "not enough seeds").sum())
        largest = d.loc[d["range_diff"].abs().idxmax()]
        evidence = (f"the {self.confidence:.0%} interval of the difference excludes 0 in favour of SupCon in {clear} "
                    f"and of cross-entropy in {against} of the {with_interval} with intervals" if with_interval
                    else "with one seed per setting there are no intervals, so seed noise cannot be ruled out")
        return (f"SupCon's top-1 range is smaller than cross-entropy's in {smaller} of {len(d)} families; {evidence}. "
                f"Largest gap: {_family_words(largest['family'])}, {_fmt(largest['range_first'])} (SupCon) vs "
                f"{_fmt(largest['range_second'])} (cross-entropy) points.")

    def _stability(self, document: Document) -> None:
        document.heading("Stability")
        results = self.results
        if self.table is None:
            document.paragraph("No results table yet: no stability plots.")
            return
        assert results is not None  # a stability table is made from results
        kwargs: dict[str, Any] = {"diverged": self.diverged, "num_classes": self.num_classes}
        difference = self.difference if self.difference is not None else pd.DataFrame(columns=["family"])
        families = [f for f in self.table["family"].unique() if f != BASE]
        if self.difference is not None and len(self.difference):
            reading = self._overall_stability_reading()
        else:
            reading = " ".join(_spread_reading(f, difference, self.table, self.confidence) for f in families[:3])
        document.figure(self._figure(
            self._try("box plots", lambda: plots.plot_stability_boxes(results, self.figure_dir, **kwargs)),
            "Top-1 over each hyperparameter's settings (paper Fig. 4a; boxes span quartiles, whiskers the range)",
            reading))
        for hyperparameter, function, words in ACCURACY_PLOTS:
            if hyperparameter == "batch_size" and self._memory_varies():
                continue  # the memory section draws it split by memory: one line per method would mix them
            paths = self._try(f"{hyperparameter} plot", partial(function, results, self.figure_dir, **kwargs))
            if paths:
                document.figure(self._figure(paths, f"Top-1 vs {words[:-1] if words.endswith('s') else words}",
                                             self._accuracy_reading(hyperparameter)))
        for row, column, function, reference, label in (
            ("optimizer", "linear_optimizer", plots.plot_optimizer_pairs, paper.OPTIMIZER_PAIRS, "optimizer"),
            ("augmentation", "linear_augmentation", plots.plot_augmentation_pairs, paper.AUGMENTATION_PAIRS,
             "augmentation"),
        ):
            paths = self._try(f"{label} pairs", partial(function, results, self.figure_dir, **kwargs))
            if paths:
                tables = plots.pair_table(results, row, column, **kwargs)
                document.figure(self._figure(paths, f"Top-1 by contrastive-stage x linear-stage {label} "
                                             f"(paper Supp. Table {8 if label == 'optimizer' else 9})",
                                             _pair_reading(tables, reference, label)))
        self._memory(document)

    # ------------------------------------------------------------------ memory (Sec. 4.1)
    def _memory(self, document: Document) -> None:
        """Top-1 vs batch size with and without Sec. 4.1's memory, per method, and the memory's cost from the
        history. Only for studies whose results vary `memory_size` (the memory_bank space)."""
        results = self.results
        if not self._memory_varies():
            return
        assert results is not None  # _memory_varies is False without results
        document.heading("Memory of past batches (paper Sec. 4.1)", level=3)
        kwargs: dict[str, Any] = {"diverged": self.diverged, "num_classes": self.num_classes}
        accuracy = self._try("memory table", lambda: memory_accuracy_table(results, **kwargs))
        if accuracy is None or not len(accuracy):
            document.paragraph("No finished trials with a batch size to compare yet.")
        else:
            document.figure(self._figure(
                self._try("memory plot", lambda: plots.plot_accuracy_vs_batch_size_by_memory(
                    results, self.figure_dir, **kwargs)),
                "Top-1 vs batch size without and with a memory (paper Sec. 4.1, Fig. 4b's axis)",
                _memory_reading(accuracy)))
            document.table(accuracy, "Test top-1 (mean over seeds) per batch size, without and with a memory of "
                                      "past keys; cross-entropy ignores the memory")
            document.paragraph(_memory_reading(accuracy))
        cost = memory_cost_table(results, self.files.history)
        if cost is None or not len(cost):
            document.paragraph("No training history with the memory's cost (memory_fraction, peak_memory_mb) yet.")
        else:
            document.table(cost, "The memory's cost per batch size, from the training history (contrastive or "
                                 "cross-entropy stage): median share of the epoch spent in the memory (keys, "
                                 "enqueue, momentum update) and the median over trials of each trial's peak "
                                 "memory (MiB: CUDA tensors on a GPU, the process's peak resident set on a CPU)")

    def _memory_varies(self) -> bool:
        """Whether the results vary `memory_size` over batch sizes (the memory_bank space)."""
        results = self.results
        if results is None or "memory_size" not in results.columns or "batch_size" not in results.columns:
            return False
        return pd.to_numeric(results["memory_size"], errors="coerce").dropna().nunique() >= 2

    def _accuracy_reading(self, hyperparameter: str) -> str:
        assert self.table is not None  # _stability calls it only with a stability table
        reading = _spread_reading(hyperparameter, self.difference if self.difference is not None
                                  else pd.DataFrame(columns=["family"]), self.table, self.confidence)
        rows = self.table.loc[self.table["family"] == hyperparameter]
        if not len(rows):  # a grid or search over this hyperparameter: no one-at-a-time family
            return f"Top-1 across the {_family_words(hyperparameter)} of the study's grid or search."
        best = "; ".join(f"{method_name(r['method'])} does best at {r['best_setting']} on validation"
                         for _, r in rows.iterrows() if r["best_setting"])
        diverged = int(rows["n_diverged"].sum())
        sentences = [reading, _sentence(best) + "." if best else "",
                     f"{diverged} diverged trial(s), marked x." if diverged else ""]
        return " ".join(s for s in sentences if s)

    def _importance(self, document: Document) -> None:
        document.heading("Hyperparameter importance")
        importance = None
        source = ""
        if self.files.optuna_storage is not None:
            try:
                importance = hyperparameter_importance(self.files.optuna_storage, results=self.results)
                source = f"Optuna's evaluator on the persisted studies in {_storage_name(self.files.optuna_storage)}"
            except Exception as error:  # an external database (SQLAlchemy, Optuna): note it, fall back
                self.notes.append(f"Optuna storage {_storage_name(self.files.optuna_storage)} could not be used "
                                  f"({type(error).__name__}: {error}); importance computed from the results table")
        if (importance is None or not len(importance)) and self.results is not None and len(self.results):
            importance = self._try("importance", lambda: hyperparameter_importance(
                self.results, diverged=self.diverged, num_classes=self.num_classes))
            source = "the results table (no surrogate model)"
        if importance is None or not len(importance):
            document.paragraph("Not enough finished trials with varied hyperparameters to rank them.")
            return
        document.paragraph(f"Computed from {source}; importances sum to 1 per method. One-at-a-time designs: "
                           "the variance of each family's setting means; grids and searches: main-effect "
                           "variance fractions; Optuna studies: Optuna's PED-ANOVA.")
        top = importance.sort_values("importance", ascending=False).groupby("method", sort=False).head(1)
        reading = "; ".join(f"most important for {method_name(r['method'])}: {r['parameter']} "
                            f"({_fmt(r['importance'], 2)})" for _, r in top.iterrows())
        document.figure(self._figure(plots.plot_importance(importance, self.figure_dir),
                                     "Hyperparameter importance per method", _sentence(reading) + "."))
        frame = importance.assign(method=importance["method"].map(method_name))
        document.table(frame, "Importance per hyperparameter")

    # ------------------------------------------------------------------ robustness
    def _robustness_numbers(self) -> tuple[pd.DataFrame | None, str]:
        robustness = self.files.robustness
        if robustness is None or not len(robustness):
            return None, ""
        if self.baseline is None:
            self.baseline = self._default_baseline(robustness)
        baseline = self.baseline
        summary = self._try("robustness summary", lambda: corruption_summary_by_model(robustness, baseline))
        if summary is None:
            self._try("robustness summary", lambda: corruption_summary(robustness, baseline=baseline))
            return None, ""
        return summary, str(summary.attrs.get("baseline_note", f"baseline {self.baseline} = 100"))

    def _default_baseline(self, robustness: pd.DataFrame) -> str:
        """AlexNet for ImageNet; otherwise the cross-entropy model with the lowest clean error (any model
        when there is no cross-entropy one)."""
        if paper.dataset_key(str(self.info.get("dataset", ""))) == "imagenet":
            return "alexnet"
        clean = robustness.loc[robustness["corruption"].astype(str) == "clean"]
        if not len(clean):
            return "alexnet"
        ce = clean.loc[clean["method"].astype(str) == "ce"] if "method" in clean.columns else clean.iloc[0:0]
        pool = ce if len(ce) else clean
        return str(pool.sort_values(["error", "model"]).iloc[0]["model"])

    def _mce_frame(self) -> pd.DataFrame:
        summary = self.robustness_summary
        assert summary is not None  # called only with a robustness summary
        setting = self._model_settings()
        return pd.DataFrame({
            "model": summary.index, "method": summary["method"].map(method_name),
            "setting": [setting.get(m, "–") for m in summary.index],
            "mCE": summary["mCE"], "relative mCE": summary.get("relative_mCE", np.nan),
            "clean error": summary.get("clean_error", np.nan),
        })

    def _model_settings(self) -> dict[str, str]:
        results = self.results
        if results is None or "trial_id" not in results.columns:
            return {}
        hyper = hyperparameter_columns(results)
        settings = {}
        for _, row in results.iterrows():
            varied = str(row.get("varied", ""))
            if varied in hyper:
                label = f"{varied}={format_value(row[varied])}"
            else:
                label = varied
            settings[str(row["trial_id"])] = f"{label}, seed {format_value(row.get('seed'))}"
        return settings

    def _robustness(self, document: Document) -> None:
        document.heading("Robustness")
        robustness = self.files.robustness
        if robustness is None:
            document.paragraph("No robustness table: corruption robustness was not evaluated for this study "
                               "(run `python run_study.py robustness --study DIR`, then rebuild the report).")
            return
        document.paragraph(self._corrupted_set_sentence(robustness))
        if self.robustness_summary is None:
            document.paragraph("The robustness table is incomplete or invalid, so mCE cannot be computed yet; "
                               "see Problems and missing pieces.")
        is_imagenet = paper.dataset_key(str(self.info.get("dataset", ""))) == "imagenet"
        curves = severity_curves(robustness, "top1")
        reference = ({f"paper {method_name(m)} {model}": v for (m, model), v in paper.SEVERITY_TOP1.items()
                      if model == "resnet50"} if is_imagenet else None)
        document.figure(self._figure(
            self._try("severity plot", lambda: plots.plot_severity(robustness, self.figure_dir, value="top1",
                                                                   reference=reference)),
            "Top-1 vs corruption severity, mean over corruptions (paper Supp. Table 6)",
            _severity_reading(curves, "top-1", 1, "%")))
        if "ece" in robustness.columns:
            ece = severity_curves(robustness, "ece")
            reference = ({f"paper {method_name(m)} {model}": v for (m, model), v in paper.SEVERITY_ECE.items()}
                         if is_imagenet else None)
            document.figure(self._figure(
                self._try("ECE plot", lambda: plots.plot_severity(robustness, self.figure_dir, value="ece",
                                                                  reference=reference)),
                "Expected calibration error vs corruption severity (paper Supp. Table 6)",
                _severity_reading(ece, "ECE", 3, "")))
        if self.robustness_summary is not None:
            assert self.baseline is not None  # _robustness_numbers sets it before it makes a summary
            document.figure(self._figure(
                plots.plot_corruption_errors(robustness, self.figure_dir, baseline=self.baseline),
                "Corruption Error per corruption, grouped by family", self._corruption_reading()))
            reference = {"paper CE R50": (68.6, 96.2), "paper SupCon R50": (67.2, 94.6)} \
                if self._imagenet_c_comparable() else None
            document.figure(self._figure(
                plots.plot_mce(robustness, self.figure_dir, baseline=self.baseline, reference=reference),
                "mCE and relative mCE per model (paper Fig. 3, left)", self._mce_reading()))
            document.table(self._mce_frame(), f"mCE table ({self.baseline_note})")

    def _corrupted_set_sentence(self, robustness: pd.DataFrame) -> str:
        """Which corruption profile made the corrupted set (the table's `profile` column, written by
        study.robustness) and whether its numbers compare with the published CIFAR-10-C/100-C."""
        if "profile" not in robustness.columns:
            return ("Corrupted test set: the robustness table does not record its corruption profile (it was "
                    "written before profiles were recorded). A set generated then used the ImageNet-C constants "
                    "at every image size, harsher than the released CIFAR-10-C/100-C, so its numbers are not "
                    "comparable with published CIFAR-10-C/100-C ones; a set given with --corrupted is whatever "
                    "that set is.")
        profiles = sorted({str(value) for value in robustness["profile"].dropna()})
        if len(profiles) != 1:
            return ("Corrupted test sets: the table mixes corruption profiles (" + ", ".join(profiles or ["none"])
                    + "); rows of different profiles are not comparable with each other, and only `cifar`-profile "
                    "rows compare with the published CIFAR-10-C/100-C.")
        profile = profiles[0]
        dataset = str(self.info.get("dataset", ""))
        if profile == "cifar":
            on_cifar = paper.dataset_key(dataset) in ("cifar10", "cifar100")
            return ("Corrupted test set: generated with the `cifar` corruption profile, the per-severity constants "
                    "of make_cifar_c.py (hendrycks/robustness), the script that made the released CIFAR-10-C and "
                    "CIFAR-100-C; its errors and mCE are therefore comparable with published CIFAR-10-C/100-C "
                    "numbers" + ("" if on_cifar else f" in strength, though the images are {dataset or 'not CIFAR'}'s")
                    + " (same constants, our own random draws).")
        if profile == "imagenet":
            return ("Corrupted test set: generated with the `imagenet` corruption profile (the ImageNet-C "
                    "constants), which is not comparable with the published CIFAR-10-C/100-C (made with the "
                    "`cifar` profile; on small images the ImageNet-C constants are much harsher): compare it only "
                    "with other `imagenet`-profile sets (`--corruption-profile cifar` generates a comparable one).")
        return (f"Corrupted test set: given with --corrupted (profile `{profile}`: not generated here), so its "
                "numbers are that set's; they compare with published CIFAR-10-C/100-C numbers only if it is the "
                "released set itself.")

    def _corruption_reading(self) -> str:
        summary = self.robustness_summary
        assert summary is not None  # called only with a robustness summary
        columns = [c for c in summary.columns if str(c).startswith("CE_")]
        parts = []
        for method in plots.method_order(summary["method"]):
            means = summary.loc[summary["method"] == method, columns].astype(float).mean()
            if len(means) and means.notna().any():
                worst = means.idxmax()
                parts.append(f"hardest for {method_name(method)}: {worst[3:].replace('_', ' ')} "
                             f"(CE {_fmt(means[worst])})")
        text = "; ".join(parts)
        return (_sentence(text) + ". " if text else "") + _sentence(self.baseline_note) + "."

    def _mce_reading(self) -> str:
        summary = self.robustness_summary
        assert summary is not None  # called only with a robustness summary
        by_method = summary.groupby("method")[["mCE", "relative_mCE"]].mean()
        if {"supcon", "ce"} <= set(by_method.index):
            s, c = by_method.loc["supcon"], by_method.loc["ce"]
            text = (f"mCE {_fmt(s['mCE'])} for SupCon vs {_fmt(c['mCE'])} for cross-entropy (relative "
                    f"{_fmt(s['relative_mCE'])} vs {_fmt(c['relative_mCE'])})")
            if self._imagenet_c_comparable():
                text += "; the paper's ResNet-50: 67.2 vs 68.6 (relative 94.6 vs 96.2)"
        else:
            text = "; ".join(f"{method_name(str(m))} mCE {_fmt(r['mCE'])}" for m, r in by_method.iterrows())
        return f"{_sentence(text)}. {_sentence(self.baseline_note)}."

    def _imagenet_c_comparable(self) -> bool:
        """Our mCE is on the paper's scale only for ImageNet(-C) against AlexNet."""
        return paper.dataset_key(str(self.info.get("dataset", ""))) == "imagenet" and self.baseline == "alexnet"

    # ------------------------------------------------------------------ paper, problems, table
    def _paper(self, document: Document) -> None:
        document.heading("Comparison with the paper")
        document.paragraph(f"Reference: {paper.SOURCE}.")
        dataset = str(self.info.get("dataset", ""))
        reference = paper.table2_top1(dataset)
        if reference and self.best is not None and len(self.best):
            best = self.best.set_index("method")
            rows: list[tuple[Any, ...]] = [(method_name(m), best["top1"].get(m, math.nan), value)
                    for m, value in reference.items() if m != "max_margin"]
            document.table(pd.DataFrame(rows, columns=["method", "ours: best test top-1", "paper (Table 2)"]),
                           f"Top-1 on {dataset}")
            differences = paper.setting_differences(self.info)
            document.paragraph("Settings differ from the paper's: " + "; ".join(differences) + ", so expect lower "
                               "numbers; the comparison of interest is SupCon against cross-entropy under the same "
                               "budget." if differences else "Setting matches Table 2's model and budget.")
        else:
            document.paragraph(f"The paper reports no top-1 for {dataset or 'this dataset'}; Table 2 covers "
                               "CIFAR-10, CIFAR-100 and ImageNet with ResNet-50.")
        if self.robustness_summary is not None and self._imagenet_c_comparable():
            by_method = self.robustness_summary.groupby("method")[["mCE", "relative_mCE"]].mean()
            rows = []
            for method in ("ce", "supcon"):
                ref = paper.imagenet_c_reference(method, "resnet50")
                assert ref is not None  # paper.IMAGENET_C_MCE holds both methods' ResNet-50
                rows.append((method_name(method), by_method["mCE"].get(method, math.nan), ref["mCE"],
                             by_method["relative_mCE"].get(method, math.nan), ref["relative_mCE"]))
            document.table(pd.DataFrame(rows, columns=["method", "ours: mCE", "paper R50: mCE",
                                                       "ours: relative mCE", "paper R50: relative mCE"]),
                           "ImageNet-C (AlexNet = 100)")
        else:
            document.paragraph("The paper's ImageNet-C numbers (ResNet-50: mCE 68.6 for cross-entropy vs 67.2 for "
                               "SupCon; relative mCE 96.2 vs 94.6) are comparable only to an ImageNet-C evaluation "
                               "against AlexNet, which this study "
                               + ("did not run." if self.files.robustness is None else "is not."))

    def _problems(self, document: Document) -> None:
        document.heading("Problems and missing pieces")
        results = self.results
        notes = list(dict.fromkeys(self.notes))
        if results is not None:
            expected = self.info.get("num_trials")
            status = results["status"].astype(str)
            unfinished = int((~status.isin(["completed", "diverged", "failed", "stopped_early"])).sum())
            if isinstance(expected, int) and expected > len(results):
                notes.append(f"{expected - len(results)} planned trial(s) are not in the results table yet")
            if unfinished:
                statuses = sorted(set(status[~status.isin(["completed", "diverged", "failed", "stopped_early"])]))
                notes.append(f"{unfinished} trial(s) not finished (status {', '.join(statuses)})")
            stopped = int(status.eq("stopped_early").sum())
            if stopped:
                notes.append(f"{stopped} trial(s) stopped early by the scheduler: left out of stability and importance")
            missing_test = int((status.eq("completed")
                                & pd.to_numeric(results["test_top1"], errors="coerce").isna()).sum())
            if missing_test:
                notes.append(f"{missing_test} completed trial(s) have no test top-1")
        document.bullets(notes or ["Nothing missing: every planned trial finished and every table is present."])
        if results is None:
            return
        columns = [c for c in ("trial_id", "method", "varied", "seed", "epochs_run", "error") if c in results.columns]
        failed = results.loc[results["status"].astype(str) == "failed", columns]
        if len(failed):
            document.table(failed.assign(method=failed["method"].map(method_name)), "Failed trials and their errors")
        diverged = results.loc[results["status"].astype(str) == "diverged"]
        if len(diverged):
            hyper = hyperparameter_columns(results)
            frame = diverged[[c for c in ("trial_id", "method", "varied", "seed", "epochs_run")
                              if c in diverged]].copy()
            frame["setting"] = [", ".join(f"{c}={format_value(r[c])}" for c in hyper if c == r.get("varied"))
                                or str(r.get("varied", "")) for _, r in diverged.iterrows()]
            document.table(frame.assign(method=frame["method"].map(method_name)), "Diverged trials (non-finite loss)")

    def _all_trials(self, document: Document) -> None:
        document.heading("All trials")
        if self.results is None:
            document.paragraph("No results table yet.")
            return
        document.paragraph(f"{len(self.results)} row(s) of results.parquet; top-1/top-5 in percent. The HTML "
                           "report folds each trial's full config; the Markdown twin leaves it to results.csv.")
        document.table(self.results, "results.parquet", collapsible=("config",))


_METHOD_ORDER = {"supcon": 0, "simclr": 1, "ce": 2}


def _memory_keys(sizes: pd.Series) -> pd.Series:
    """Memory sizes as integers, 0 for off (a method that ignores the memory has none: NaN)."""
    return pd.to_numeric(sizes, errors="coerce").fillna(0).astype(int)


def _memory_label(size: int) -> str:
    return "off" if size == 0 else f"{size} keys"


def _sorted_by_method_and_memory(frame: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    order = frame.assign(_m=frame["method"].map(_METHOD_ORDER).fillna(9))
    return order.sort_values(["_m", "method", "memory", *extra]).drop(columns="_m").reset_index(drop=True)


def memory_accuracy_table(results: pd.DataFrame, *, diverged: str = "chance",
                          num_classes: int | None = None) -> pd.DataFrame:
    """Mean test top-1 over seeds: one row per method x memory (off, or its size; a method without the
    memory, cross-entropy, is "off"), one column per batch size, plus the seeds per cell (min-max)."""
    trials = stability_trials(results, diverged=diverged, num_classes=num_classes)
    trials = trials.loc[trials["included"]].drop_duplicates("row")
    table = results.reset_index(drop=True).iloc[trials["row"].to_numpy()]
    frame = pd.DataFrame({
        "method": trials["method"].to_numpy(),
        "memory": _memory_keys(table["memory_size"]).to_numpy(),
        "batch_size": pd.to_numeric(table["batch_size"], errors="coerce").to_numpy(),
        "top1": trials["top1"].to_numpy()})
    frame = frame.loc[np.isfinite(frame["batch_size"]) & np.isfinite(frame["top1"])]
    if not len(frame):
        return pd.DataFrame()
    means = frame.pivot_table(index=["method", "memory"], columns="batch_size", values="top1", aggfunc="mean")
    counts = frame.pivot_table(index=["method", "memory"], columns="batch_size", values="top1", aggfunc="size")
    means.columns = [f"batch {int(b)}" for b in means.columns]
    out = means.reset_index()
    out["seeds"] = [f"{int(lo)}" if lo == hi else f"{int(lo)}-{int(hi)}"
                    for lo, hi in zip(counts.min(axis=1), counts.max(axis=1), strict=True)]
    out = _sorted_by_method_and_memory(out)
    out["method"], out["memory"] = out["method"].map(method_name), out["memory"].map(_memory_label)
    return out


def memory_cost_table(results: pd.DataFrame, history: pd.DataFrame | None) -> pd.DataFrame | None:
    """Per method x memory x batch size, from the history's training-stage epochs (not the linear stage):
    median % of the epoch in the memory, median epoch seconds, and the median over trials of each trial's
    peak memory (MiB). None without a history that has the columns (studies before the memory)."""
    if history is None or not len(history) or "memory_fraction" not in history.columns \
            or "trial_id" not in history.columns or "trial_id" not in results.columns:
        return None
    epochs = history.loc[history["stage"].astype(str) != "linear"] if "stage" in history.columns else history
    trials = results.drop_duplicates("trial_id").set_index("trial_id")
    epochs = epochs.loc[epochs["trial_id"].isin(trials.index)]
    if not len(epochs):
        return None
    frame = pd.DataFrame({
        "trial_id": epochs["trial_id"].to_numpy(),
        "method": trials.loc[epochs["trial_id"], "method"].astype(str).to_numpy(),
        "memory": _memory_keys(trials.loc[epochs["trial_id"], "memory_size"]).to_numpy(),
        "batch_size": pd.to_numeric(trials.loc[epochs["trial_id"], "batch_size"], errors="coerce").to_numpy(),
        "fraction": pd.to_numeric(epochs["memory_fraction"], errors="coerce").to_numpy(),
        "seconds": pd.to_numeric(epochs.get("epoch_seconds"), errors="coerce").to_numpy()
        if "epoch_seconds" in epochs.columns else np.nan,
        "peak": pd.to_numeric(epochs["peak_memory_mb"], errors="coerce").to_numpy()
        if "peak_memory_mb" in epochs.columns else np.nan})
    keys = ["method", "memory", "batch_size"]
    peaks = frame.groupby(keys + ["trial_id"])["peak"].max().groupby(level=keys).median()
    cost = frame.groupby(keys).agg(epochs=("fraction", "size"), fraction=("fraction", "median"),
                                   seconds=("seconds", "median"))
    cost["peak"] = peaks
    cost = _sorted_by_method_and_memory(cost.reset_index(), ["batch_size"])
    return pd.DataFrame({
        "method": cost["method"].map(method_name).to_numpy(), "memory": cost["memory"].map(_memory_label).to_numpy(),
        "batch size": cost["batch_size"].astype(int).to_numpy(), "epochs": cost["epochs"].to_numpy(),
        "memory share of epoch (%, median)": (100 * cost["fraction"]).round(2).to_numpy(),
        "epoch seconds (median)": cost["seconds"].round(2).to_numpy(),
        "peak memory MiB (median over trials)": cost["peak"].round(1).to_numpy()})


def _memory_reading(accuracy: pd.DataFrame) -> str:
    """Per method with a memory: the gain of the memory at the smallest batch, and whether the smallest batch
    with the memory reaches the largest batch without it (the paper's 79.1% at 256 vs 78.7% at 6144)."""
    batches = [c for c in accuracy.columns if c.startswith("batch ")]
    if not batches:
        return ""
    small, large = batches[0], batches[-1]
    sentences = []
    for method, group in accuracy.groupby("method", sort=False):
        off = group.loc[group["memory"] == "off"]
        for _, on in group.loc[group["memory"] != "off"].iterrows():
            if not len(off) or not np.isfinite(on[small]) or not np.isfinite(off.iloc[0][small]):
                continue
            gain = on[small] - off.iloc[0][small]
            sentence = (f"{method} at {small} gains {'+' if gain >= 0 else ''}{_fmt(gain, 2)} points from a memory "
                        f"of {on['memory']} ({_fmt(on[small], 2)} vs {_fmt(off.iloc[0][small], 2)})")
            if small != large and np.isfinite(off.iloc[0][large]):
                sentence += (f"; with it, {small} {'reaches' if on[small] >= off.iloc[0][large] else 'stays below'} "
                             f"{large} without one ({_fmt(off.iloc[0][large], 2)})")
            sentences.append(sentence + ".")
    return " ".join(sentences) + (" The paper: 79.1% with a memory of 8192 at batch 256 vs 78.7% at 6144 "
                                  "without (ImageNet, ResNet-50)." if sentences else "")


def _describe(key: str, value: Any) -> str:
    if key == "wall_seconds" and is_number(value) and np.isfinite(value):
        seconds = int(round(float(value)))
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m {seconds % 60:02d}s ({seconds} s)"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_describe(k, v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_describe(key, v) for v in value) if value else "none"
    return format_cell(value)


def _sentence(text: str) -> str:
    """`text` with its first letter capitalised ("cross-entropy does..." -> "Cross-entropy does...")."""
    return text[:1].upper() + text[1:]


def _natural(label: str) -> tuple:
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def _spread_frame(table: pd.DataFrame, confidence: float) -> pd.DataFrame:
    level = f"{confidence:.0%} CI"
    return pd.DataFrame({
        "family": table["family"], "method": table["method"].map(method_name), "settings": table["n_settings"],
        "min seeds": table["min_seeds"], "mean": table["mean"], "std": table["std"],
        f"std {level}": [_ci(lo, hi, 2) for lo, hi in zip(table["std_ci_low"], table["std_ci_high"], strict=True)],
        "range": table["range"],
        f"range {level}": [_ci(lo, hi, 2)
                           for lo, hi in zip(table["range_ci_low"], table["range_ci_high"], strict=True)],
        "worst drop": table["worst_drop"], "best (val)": table["best_setting"], "worst": table["worst_setting"],
        "diverged": table["n_diverged"], "failed": table["n_failed"], "stopped early": table["n_stopped_early"],
        "unfinished": table["n_unfinished"],
    })


def _difference_frame(difference: pd.DataFrame, confidence: float) -> pd.DataFrame:
    level = f"{confidence:.0%} CI"
    return pd.DataFrame({
        "family": difference["family"], "SupCon range": difference["range_first"],
        "CE range": difference["range_second"], "range difference": difference["range_diff"],
        level: [_ci(lo, hi, 2)
                for lo, hi in zip(difference["range_diff_ci_low"], difference["range_diff_ci_high"], strict=True)],
        "std difference": difference["std_diff"],
        f"std {level}": [_ci(lo, hi, 2)
                         for lo, hi in zip(difference["std_diff_ci_low"], difference["std_diff_ci_high"], strict=True)],
        "verdict": difference["verdict"].str.replace("supcon", "SupCon").str.replace("ce less", "cross-entropy less"),
    })


def _pair_reading(tables: dict[str, pd.DataFrame], reference: dict[tuple[str, str], float], label: str) -> str:
    parts = []
    for method, pivot in tables.items():
        stacked = pivot.stack().dropna()
        if not len(stacked):
            continue
        # stack() indexes by (row, column) pairs, which pandas' stubs type as a bare Hashable
        best_row, best_col = cast(tuple[Any, Any], stacked.idxmax())
        worst_row, worst_col = cast(tuple[Any, Any], stacked.idxmin())
        parts.append(f"{method_name(method)} does best with {best_row} / {best_col} ({_fmt(stacked.max())}) and worst "
                     f"with {worst_row} / {worst_col} ({_fmt(stacked.min())}), a spread of "
                     f"{_fmt(stacked.max() - stacked.min())} points")
    best_pair = max(reference, key=lambda pair: reference[pair])
    worst_pair = min(reference, key=lambda pair: reference[pair])
    parts.append(f"the paper's best {label} pair is {best_pair[0]} / {best_pair[1]} ({reference[best_pair]}) and worst "
                 f"{worst_pair[0]} / {worst_pair[1]} ({reference[worst_pair]}), ResNet-50 on ImageNet")
    return _sentence("; ".join(parts)) + "."


def _severity_reading(curves: pd.DataFrame | None, what: str, digits: int, unit: str) -> str:
    if curves is None or not len(curves):
        return ""
    by_method = curves.groupby("method")[[c for c in curves.columns if c != "method"]].mean()
    parts = [f"{method_name(m)} {_fmt(r.get('clean', math.nan), digits)}{unit} clean, "
             f"{_fmt(r.get('5', math.nan), digits)}{unit} at severity 5"
             for m, r in by_method.loc[plots.method_order(by_method.index)].iterrows()]
    return f"Mean {what}: " + "; ".join(parts) + "."
