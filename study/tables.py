"""The schema of the files between the stages: table columns, status values, families, file names.

The sweep writes `results.parquet` (one row per trial) and `history.parquet` (one row per trial and
epoch) beside `study.json`; robustness writes `robustness.parquet`; the analysis reads them. Every fact
about those files is defined here once, and `study` and `analysis` both import it. No torch, no Ray: the
analysis imports this module on a laptop without either.

Results table, in column order: `RESULT_ID_COLUMNS`, then one column per varied hyperparameter (named as
the config field), then `RESULT_FINAL_COLUMNS`. Runtime columns (`RUNTIME_COLUMNS`: where and how long a
trial ran, and its files) are recorded but never enter the statistics: `hyperparameter_columns` leaves
them out with every other standard column.
"""

from __future__ import annotations

from collections.abc import Iterable

# ------------------------------------------------------------------------------------------- file names
STUDY_FILE = "study.json"
RESULTS_FILE = "results.parquet"
RESULTS_CSV = "results.csv"
HISTORY_FILE = "history.parquet"
ROBUSTNESS_FILE = "robustness.parquet"
MODEL_FILE = "model.pt"  # a trial's final classifier, for evaluation
# {Tune experiment folder name: {Tune trial id: its error's last line}} of every trial Tune errored, written by the
# sweep as Tune reports it: Tune's experiment state can keep such a trial RUNNING (its node was lost). In the study
# folder, not the experiment's: Tune copies an experiment folder's *.json down on resume and back up over ours.
TRIAL_ERRORS_FILE = "trial_errors.json"

# ------------------------------------------------------------------------------------------- results
RESULT_ID_COLUMNS = ("study", "trial_id", "method", "varied")
METRIC_COLUMNS = ("val_top1", "val_top5", "test_top1", "test_top5")
# What ran where and for how long, and the trial's files: recorded, never a hyperparameter.
RUNTIME_COLUMNS = ("wall_seconds", "checkpoint", "node_id")
RESULT_FINAL_COLUMNS = (
    "seed", "status", "epochs_run", *METRIC_COLUMNS, "wall_seconds", "checkpoint", "node_id", "error", "config",
)  # fmt: skip
STANDARD_RESULT_COLUMNS = RESULT_ID_COLUMNS + RESULT_FINAL_COLUMNS

# Trial statuses: completed, diverged (a non-finite loss), failed (an error), stopped_early (by the
# scheduler, e.g. ASHA), pending (no final report yet: still running, or the sweep was interrupted).
STATUSES = ("completed", "diverged", "failed", "stopped_early", "pending")

# `varied` values that are not a hyperparameter name: the base combination of a one-at-a-time design, a
# grid cell, a searched trial.
BASE, GRID, SEARCH = "base", "grid", "search"

# ------------------------------------------------------------------------------------------- history
# augment_fraction: the share of the epoch spent in augmentation (device pipeline) or waiting for the
# loader, which augments (cpu pipeline); a slow pipeline shows up in the report's training-history line.
# memory_fraction: the share spent in Sec. 4.1's memory (keys, enqueue, momentum update; 0 without one);
# peak_memory_mb: the run's peak so far, MiB -- CUDA tensors (max_memory_allocated) on a GPU, the process's
# peak resident set (ru_maxrss) on a CPU. Both feed the report's memory section.
HISTORY_COLUMNS = ("trial_id", "method", "stage", "epoch", "loss", "lr", "val_top1", "val_top5",
                   "images_per_second", "epoch_seconds", "augment_fraction", "memory_fraction",
                   "peak_memory_mb")  # fmt: skip


# ------------------------------------------------------------------------------------------- robustness
# The common-corruption suite of Hendrycks & Dietterich (ICLR 2019): 15 benchmark corruptions in four
# families, and four held out for validation (never part of mCE), each at severities 1-5.
CORRUPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
BENCHMARK_CORRUPTIONS: tuple[str, ...] = tuple(name for group in CORRUPTION_GROUPS.values() for name in group)
HELD_OUT_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = BENCHMARK_CORRUPTIONS + HELD_OUT_CORRUPTIONS
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
CLEAN = "clean"  # the `corruption` of the clean test set's rows (severity 0)
# One row per model x corruption x severity; `profile` names the constants that made a generated set.
ROBUSTNESS_COLUMNS = ("model", "method", "corruption", "severity", "error", "ece", "n", "profile")


def hyperparameter_columns(columns: Iterable[str]) -> list[str]:
    """The hyperparameter columns among a results table's columns: every column that is not standard
    (identity, metrics, status, runtime, files)."""
    return [column for column in columns if column not in STANDARD_RESULT_COLUMNS]
