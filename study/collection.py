"""Reading a study's trials from the JSON files Ray Tune leaves, never from its pickles.

A study folder on shared storage can be written by anyone with access to it, and Tune pickles much of its
state (`tuner.pkl`, each trial's `params.pkl`, the searchers' state, and cloudpickled blobs inside the trial
states of `experiment_state-*.json`). `ray.tune.ExperimentAnalysis` unpickles those, so reading a study
with it runs whatever code the folder holds. This module reads only JSON:

- `experiment_state-*.json` (the newest, as Tune picks it), parsed with plain `json`: each trial's id,
  status, Tune config, folder (`relative_logdir`) and last result. The cloudpickled blobs inside it
  (`{"_type": "CLOUDPICKLE_FALLBACK", ...}`, and the hex strings of the trial's non-JSON fields) stay
  undecoded strings.
- each trial folder's `result.json` (one JSON object per reported result: the history) and `error.txt`.
- the sweep's own `trial_errors.json` (study.tables.TRIAL_ERRORS_FILE) in the study folder: the trials Tune
  errored. Tune 2.60 leaves a trial whose node was lost RUNNING in its state when it errors it (it
  rewrites the state only through the trial's live actor); such a trial reads `failed` with that error.

No Ray, no torch: `collect` and the report can read a copied study folder on a laptop, and on any
`pyarrow.fs` filesystem (local disk, S3, GCS).

It also defines the trial format: what a Tune trial's config holds (`describe_trial` reads it). An
enumerated trial (grid, one-at-a-time) has at the top level `trial` (its name), `varied` (its family),
`method`, `seed` and each hyperparameter the space varies for its method (named as the config field),
plus any companion field the trial sets; everything else is under `options` (`OPTIONS_KEY`): how the
trial runs (workers, retries, the Train storage path) and what rebuilds its full config (`configs`: the
method's base config, `hyperparameters`: the method's results columns). A searched trial has Optuna's
sample, `method` and `seed` at the top level and the space text, the overrides and how it runs under
`options`. Trackers (TensorBoard's HParams view, `ExperimentAnalysis.dataframe()`) thus see one key per
hyperparameter. Studies made before this format (an enumerated trial's whole spec as one JSON string
under `spec`, a searched trial's fixed part under `fixed`) are read too.
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyarrow.fs import FileSelector, FileSystem, FileType

from study.tables import (
    HISTORY_COLUMNS,
    MODEL_FILE,
    RESULT_FINAL_COLUMNS,
    RESULT_ID_COLUMNS,
    SEARCH,
    TRIAL_ERRORS_FILE,
)

# ------------------------------------------------------------------------------------------- trial format
TRIAL_KEY = "trial"  # an enumerated trial's name, e.g. supcon-base-seed0
VARIED_KEY = "varied"  # its family: "base", the varied hyperparameter, or "grid"
OPTIONS_KEY = "options"  # everything that is not a hyperparameter: how the trial runs, what rebuilds its config
CONFIGS_OPTION = "configs"  # under options: {method: the method's base config dict}
HYPERPARAMETERS_OPTION = "hyperparameters"  # under options: {method: [its results-table hyperparameter columns]}
# Keys of the trial format that are no config field (every other top-level key of an enumerated trial is one).
FORMAT_KEYS = (TRIAL_KEY, VARIED_KEY, OPTIONS_KEY)
LEGACY_SPEC_KEY = "spec"  # before: an enumerated trial's whole spec, one JSON string
LEGACY_FIXED_KEY = "fixed"  # before: a searched trial's fixed part

# ------------------------------------------------------------------------------------------- Tune's files
EXPERIMENT_PREFIX = "tune"  # the study's Tune experiments: tune (enumerated) or tune-<method> (search)
EXPERIMENT_STATE_PREFIX, EXPERIMENT_STATE_SUFFIX = "experiment_state-", ".json"
TRIAL_RESULTS_FILE = "result.json"  # one JSON object per reported result
TRIAL_ERROR_FILE = "error.txt"
TRAINING_STAGES = ("contrastive", "ce", "linear")  # the results that are epochs of the history


@dataclass(frozen=True)
class TrialDescription:
    """What a trial is, read from its Tune config.

    `name`: the trial's name (an enumerated trial's, e.g. `ce-lr=0.1-seed0`; a searched trial's Tune id,
    `trial_id` as given). `varied`: the results table's `varied` (SEARCH for a searched trial). `params`:
    the results table's hyperparameter columns. `config`: the full config dict it trains with, or None for
    a searched trial (rebuilt from the space in the trial). `options`: how it runs (`workers_per_trial`,
    `max_failures`, `train_storage`) and, for a searched trial, `space_file`, `space_text`, `overrides`."""

    name: str
    method: str
    varied: str
    params: dict[str, Any]
    seed: int
    config: dict[str, Any] | None
    options: dict[str, Any]


def describe_trial(config: dict[str, Any], trial_id: str = "") -> TrialDescription:
    """The `TrialDescription` of a Tune trial config, in the current format or the one before it
    (`spec` JSON string; `fixed`). Raises ValueError, naming the keys found, for a config of neither."""
    if TRIAL_KEY in config:  # an enumerated trial
        options = dict(config[OPTIONS_KEY])
        method = config["method"]
        fields = {key: value for key, value in config.items() if key not in FORMAT_KEYS}
        names = options[HYPERPARAMETERS_OPTION][method]
        return TrialDescription(name=config[TRIAL_KEY], method=method, varied=config[VARIED_KEY],
                                params={name: fields.get(name) for name in names}, seed=config["seed"],
                                config={**options[CONFIGS_OPTION][method], **fields}, options=options)
    if LEGACY_SPEC_KEY in config:
        spec = config[LEGACY_SPEC_KEY]
        spec = json.loads(spec) if isinstance(spec, str) else spec
        return TrialDescription(name=spec["trial_name"], method=spec["method"], varied=spec["varied"],
                                params=dict(spec["params"]), seed=spec["seed"], config=spec["config"],
                                options=dict(config.get(OPTIONS_KEY, {})))
    if LEGACY_FIXED_KEY in config:
        fixed = config[LEGACY_FIXED_KEY]
        options = {key: fixed[key] for key in ("space_file", "space_text", "overrides")} | dict(fixed["options"])
        params = {key: value for key, value in config.items() if key != LEGACY_FIXED_KEY}
        return TrialDescription(name=trial_id, method=fixed["method"], varied=SEARCH, params=params,
                                seed=fixed["seed"], config=None, options=options)
    if OPTIONS_KEY in config and "method" in config:  # a searched trial: Optuna's sample at the top level
        params = {key: value for key, value in config.items() if key not in ("method", "seed", OPTIONS_KEY)}
        return TrialDescription(name=trial_id, method=config["method"], varied=SEARCH, params=params,
                                seed=config["seed"], config=None, options=dict(config[OPTIONS_KEY]))
    raise ValueError(f"not a trial config of this toolkit (keys {sorted(config)}); expected {TRIAL_KEY!r} and "
                     f"{OPTIONS_KEY!r}, or the older {LEGACY_SPEC_KEY!r} or {LEGACY_FIXED_KEY!r}")


# ------------------------------------------------------------------------------------------- collection
@dataclass(frozen=True)
class _TrialState:
    """A trial as the experiment-state JSON records it (the JSON fields only)."""

    trial_id: str
    status: str  # Tune's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    config: dict[str, Any]
    folder: str  # the trial's folder on the filesystem
    last_result: dict[str, Any]
    error_file: str | None


def collect_trials(filesystem: FileSystem, study_path: str, space_name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The results table (one row per trial, columns in the order study.tables defines) and the history
    table (one row per trial and epoch) of every trial in the study folder `study_path` on `filesystem`.

    Reads only JSON (see the module docstring); a study interrupted at any point reads as far as Tune
    recorded it (unfinished trials are `pending`)."""
    rows, history = [], []
    recorded = recorded_errors(filesystem, study_path)
    for experiment in _experiments(filesystem, study_path):
        errors = recorded.get(posixpath.basename(experiment), {})
        for state in _trial_states(filesystem, experiment):
            row, trial_history = _trial_row(filesystem, state, space_name, errors.get(state.trial_id))
            rows.append(row)
            history.extend(trial_history)
    results = pd.DataFrame(rows)
    varied = sorted({key for row in rows for key in row.get("_params", {})})
    for key in varied:
        results[key] = [row["_params"].get(key) for row in rows]
    if len(results):
        results = results.drop(columns="_params")
    results = results.reindex(columns=[*RESULT_ID_COLUMNS, *varied, *RESULT_FINAL_COLUMNS])
    return results, pd.DataFrame(history, columns=list(HISTORY_COLUMNS))


def _experiments(filesystem: FileSystem, study_path: str) -> list[str]:
    """The study's Tune experiment folders that hold an experiment state, in name order."""
    found = []
    for entry in sorted(_listing(filesystem, study_path), key=lambda entry: entry.path):
        if entry.type == FileType.Directory and entry.base_name.startswith(EXPERIMENT_PREFIX) \
                and _newest_experiment_state(filesystem, entry.path) is not None:
            found.append(entry.path)
    return found


def _listing(filesystem: FileSystem, path: str) -> list:
    return filesystem.get_file_info(FileSelector(path, allow_not_found=True))


def _newest_experiment_state(filesystem: FileSystem, experiment: str) -> str | None:
    """The experiment state Tune itself would restore: the greatest name (they are named by session start)."""
    names = [entry.path for entry in _listing(filesystem, experiment) if entry.type == FileType.File
             and entry.base_name.startswith(EXPERIMENT_STATE_PREFIX)
             and entry.base_name.endswith(EXPERIMENT_STATE_SUFFIX)]
    return max(names) if names else None


def _read_text(filesystem: FileSystem, path: str) -> str | None:
    if filesystem.get_file_info(path).type != FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.readall().decode("utf-8", errors="replace")


def _trial_states(filesystem: FileSystem, experiment: str) -> list[_TrialState]:
    """Every trial of an experiment-state JSON. Tune stores each trial as a JSON string of its state and
    one of its run metadata; fields Tune could not encode are cloudpickle hex blobs, left as they are."""
    path = _newest_experiment_state(filesystem, experiment)
    text = _read_text(filesystem, path) if path else None
    if not text:
        return []
    states = []
    for trial_json, metadata_json in json.loads(text).get("trial_data", []):
        trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        metadata = json.loads(metadata_json) if isinstance(metadata_json, str) else metadata_json
        states.append(_TrialState(
            trial_id=str(trial["trial_id"]), status=str(trial["status"]), config=trial.get("config") or {},
            folder=posixpath.join(experiment, trial["relative_logdir"]),
            last_result=metadata.get("last_result") or {}, error_file=metadata.get("error_filename")))
    return states


def recorded_trials(filesystem: FileSystem, experiment: str) -> tuple[set[str], set[str]]:
    """What a resumed experiment holds, from its newest experiment state (two empty sets without one): the names
    (`trial` key) of every trial it recorded, and the Tune ids of those not finished (pending, running, paused),
    the ones it runs again."""
    states = _trial_states(filesystem, experiment)
    names = {str(state.config[TRIAL_KEY]) for state in states if TRIAL_KEY in state.config}
    return names, {state.trial_id for state in states if state.status not in ("TERMINATED", "ERROR")}


def recorded_errors(filesystem: FileSystem, study_path: str) -> dict[str, dict[str, str]]:
    """The sweep's record of the trials Tune errored in the study folder `study_path`: {experiment folder name:
    {Tune trial id: error}}, empty without one."""
    text = _read_text(filesystem, posixpath.join(study_path, TRIAL_ERRORS_FILE))
    try:
        recorded = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {str(experiment): {str(trial): str(error) for trial, error in errors.items()}
            for experiment, errors in recorded.items() if isinstance(errors, dict)}


def last_error_line(text: str) -> str:
    """What the results table's `error` says of an error text (Tune's traceback): its last line, or "failed"."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "failed"


def _results(filesystem: FileSystem, folder: str) -> list[dict[str, Any]]:
    """A trial's reported results, oldest first, from its result.json (a line cut short by a kill is skipped)."""
    text = _read_text(filesystem, posixpath.join(folder, TRIAL_RESULTS_FILE)) or ""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _trial_row(filesystem: FileSystem, state: _TrialState, study: str,
               recorded_error: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`recorded_error`: the sweep's record of the trial's error (`recorded_errors`). It counts only while Tune's
    state has the trial unfinished: a finished state (TERMINATED, ERROR) is the later word, e.g. after a
    resumed sweep ran the trial again."""
    described = describe_trial(state.config, trial_id=state.trial_id)
    records = _results(filesystem, state.folder)
    last = state.last_result
    status = trial_status(state.status, last)
    lost = recorded_error is not None and state.status not in ("TERMINATED", "ERROR")
    if lost:
        status = "failed"
    epochs = pd.DataFrame(records)
    epochs = epochs[epochs["stage"].isin(TRAINING_STAGES)] if "stage" in epochs else pd.DataFrame()
    if len(epochs):  # a retried or resumed trial reports again the epochs after its checkpoint: keep the last
        epochs = epochs.drop_duplicates(subset=["stage", "epoch"], keep="last")
    checkpoint = ""
    if status == "completed":
        checkpoint_folder = _latest_checkpoint(last, records)
        if checkpoint_folder:
            checkpoint = posixpath.join(state.folder, checkpoint_folder, MODEL_FILE)
        elif "checkpoint_path" in last:  # multi-worker trials report the Train run's checkpoint path
            checkpoint = posixpath.join(str(last["checkpoint_path"]), MODEL_FILE)
    row = {
        "study": study, "trial_id": described.name, "method": described.method, "varied": described.varied,
        "_params": described.params, "seed": described.seed, "status": status,
        "epochs_run": int(last["epochs_run"]) if status == "completed" and "epochs_run" in last else len(epochs),
        "val_top1": last.get("val_top1", math.nan), "val_top5": last.get("val_top5", math.nan),
        "test_top1": last.get("test_top1", math.nan) if status == "completed" else math.nan,
        "test_top5": last.get("test_top5", math.nan) if status == "completed" else math.nan,
        "wall_seconds": last.get("time_total_s", math.nan), "checkpoint": checkpoint,
        "node_id": last.get("node_id", ""),
        "error": (recorded_error if lost else _error_message(filesystem, state)) if status == "failed" else "",
        "config": json.dumps(described.config if described.config is not None else state.config, sort_keys=True,
                             default=str),
    }
    history = [{"trial_id": described.name, "method": described.method,
                **{key: record.get(key) for key in HISTORY_COLUMNS[2:]}} for record in epochs.to_dict("records")]
    return row, history


def _latest_checkpoint(last: dict[str, Any], records: list[dict[str, Any]]) -> str | None:
    """The folder name of the trial's latest checkpoint: its last result's, or the newest reported one
    (Tune keeps the latest checkpoint whatever `num_to_keep`)."""
    for record in [last, *reversed(records)]:
        if record.get("checkpoint_dir_name"):
            return str(record["checkpoint_dir_name"])
    return None


def trial_status(tune_status: str, last: dict[str, Any]) -> str:
    """The results table's status (study.tables.STATUSES) of a trial with this Tune status and last result."""
    if tune_status == "ERROR":
        return "failed"
    if last.get("status") == "diverged":
        return "diverged"
    if last.get("stage") == "final":
        return "completed"
    return "stopped_early" if tune_status == "TERMINATED" else "pending"


def _error_message(filesystem: FileSystem, state: _TrialState) -> str:
    """The last line of the trial's error.txt (Tune's traceback), or "failed"."""
    for name in (TRIAL_ERROR_FILE, state.error_file):
        if not name:
            continue
        text = _read_text(filesystem, posixpath.join(state.folder, posixpath.basename(name)))
        if text is not None:
            return last_error_line(text)
    return "failed"
