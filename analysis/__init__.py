"""The analysis of a study folder, from Python: stability, corruption robustness and the report.

Everything here is a pure function of the tables a study folder holds (`results.parquet`,
`history.parquet`, `robustness.parquet`, `study.json`), so it runs on a laptop from a copied folder:
`import analysis` imports neither torch nor Ray, and each name below is imported on first use (PEP 562).

- `load_study(study_dir)`: the folder's tables (`.results`, `.history`, `.robustness`, `.info`).
- `build_report(study_dir)`: writes `report.html` (self-contained) and `report.md`; returns both paths.
- Stability (`analysis.stability`), each taking a results table: `stability_table` (spread of top-1 per
  hyperparameter family and method, with intervals that re-simulate the seed noise), `spread_difference` (SupCon minus
  cross-entropy spread per family, with a verdict), `best_top1` (best setting per method, selected on
  validation), `stability_trials` (the long per-trial table behind them), `status_counts` and
  `hyperparameter_importance`.
- Robustness (`analysis.robustness`), each taking a robustness table: `corruption_summary` (mCE,
  relative mCE and per-corruption CE per model) and `severity_table` (a metric per severity, averaged over
  corruptions).

Example::

    >>> from analysis import build_report, corruption_summary, load_study, spread_difference, stability_table
    >>> files = load_study("runs/quick-digits")
    >>> stability = stability_table(files.results, n_boot=500)  # one row per (family, method)
    >>> stability[["family", "method", "std", "std_ci_low", "std_ci_high"]]
    >>> spread_difference(files.results)[["family", "range_diff", "verdict"]]
    >>> corruption_summary(files.robustness, baseline="ce-base-seed0")[["model", "mCE"]]
    >>> html, markdown = build_report("runs/quick-digits")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "load_study": "analysis.report",
    "build_report": "analysis.report",
    "stability_table": "analysis.stability",
    "spread_difference": "analysis.stability",
    "best_top1": "analysis.stability",
    "stability_trials": "analysis.stability",
    "status_counts": "analysis.stability",
    "hyperparameter_importance": "analysis.stability",
    "corruption_summary": "analysis.robustness",
    "severity_table": "analysis.robustness",
}

__all__ = list(_LAZY)

if TYPE_CHECKING:  # what IDEs and type checkers see; `name as name` marks an explicit re-export
    from analysis.report import build_report as build_report
    from analysis.report import load_study as load_study
    from analysis.robustness import corruption_summary as corruption_summary
    from analysis.robustness import severity_table as severity_table
    from analysis.stability import best_top1 as best_top1
    from analysis.stability import hyperparameter_importance as hyperparameter_importance
    from analysis.stability import spread_difference as spread_difference
    from analysis.stability import stability_table as stability_table
    from analysis.stability import stability_trials as stability_trials
    from analysis.stability import status_counts as status_counts


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
