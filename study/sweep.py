"""Sweeps: every trial of a study space run by Ray Tune, collected into one tidy results table.

- A trial with one worker runs the training loop directly inside the Tune function trial (a TorchTrainer per
  trial costs 10-30 s and GBs of actors, which would dominate short trials).
- A trial with more workers launches one TorchTrainer from the trial, reporting to Tune through
  `TuneReportCallback`; its Train run is named after the trial id, so a retried trial resumes it.
- `search` designs are searched by Optuna (through Ray Tune's `OptunaSearch`), one Optuna study per method
  persisted in SQLite next to the results, optionally with ASHA early stopping.
- Each trial's hyperparameters, method and seed are keys of its Tune config (the format `study.collection`
  documents), so Tune's dataframe, TensorBoard's HParams view and trackers show them one by one.
- When the sweep ends (or on `collect`), `results.parquet` (one row per trial) and `history.parquet` (one
  row per trial and epoch) are written atomically into the study folder, read from Tune's JSON files only
  (`study.collection`: never its pickles). Analysis reads only those tables. Only `--resume` unpickles.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Union, cast

import pandas as pd
import torch

from study.collection import (
    CONFIGS_OPTION,
    HYPERPARAMETERS_OPTION,
    OPTIONS_KEY,
    TRIAL_KEY,
    VARIED_KEY,
    TrialDescription,
    collect_trials,
    describe_trial,
    last_error_line,
    recorded_errors,
    recorded_trials,
    trial_status,
)
from study.config import Config, ConfigError
from study.launch import (
    RayContext,
    build_trainer,
    check_address,
    check_dataset,
    check_run_name,
    check_storage,
    connect_ray,
    dataset_slug,
    quiet_ray_train_info,
)
from study.spaces import StudySpace, TrialSpec, load_space, parse_space
from study.storage import Location, ray_storage, read_json, write_json, write_table
from study.tables import HISTORY_FILE, RESULTS_FILE, SEARCH, STUDY_FILE, TRIAL_ERRORS_FILE
from study.tracking import Tracker, parse_tracking, tracker_locations, tracking_callbacks
from study.train import train

STATUS_EVERY_SECONDS = 60  # a status line while trials run, between the lines of finished trials
SpaceArgument = Union[str, "os.PathLike[str]", StudySpace]  # what `plan` and `run_sweep` take


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs (not what it trains: that is the space and the config overrides)."""

    storage: str = "./runs"
    name: str | None = None
    address: str | None = None
    workers_per_trial: int = 1
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0
    max_concurrent: int | None = None
    max_failures: int = 1
    optuna_storage: str | None = None
    resume: bool = False
    verbose: int = 0  # Ray Tune's own console output (0: only this module's progress lines; 1-2: its tables too)
    tracking: tuple[str, ...] = ()  # experiment trackers, `--tracking` values (study/tracking.py)


# ----------------------------------------------------------------------------------------- resources
def trial_resources(options: SweepOptions, loader_workers: int = 0) -> dict[str, float]:
    """What one trial occupies. A one-worker trial trains in the trial process itself; a multi-worker trial
    holds one CPU for its driver plus its Train workers (each counting its data-loader processes)."""
    per_worker_cpus = options.cpus_per_worker + loader_workers
    if options.workers_per_trial == 1:
        return {"CPU": per_worker_cpus, "GPU": options.gpus_per_worker}
    return {"CPU": 1 + options.workers_per_trial * per_worker_cpus,
            "GPU": options.workers_per_trial * options.gpus_per_worker}


def max_concurrency(cluster: dict[str, float], per_trial: dict[str, float], requested: int | None = None) -> int:
    """floor(cluster resources / per-trial resources), over CPUs and GPUs, capped by the request.

    Zero means one trial does not fit at all. Too much concurrency does not fail in Ray: it hangs retrying
    to start worker groups, so this is computed rather than left to the scheduler."""
    limits = []
    for resource, need in per_trial.items():
        if need > 0:
            limits.append(math.floor(cluster.get(resource, 0) / need + 1e-9))
    allowed = min(limits) if limits else 1
    return min(allowed, requested) if requested else allowed


def checked_concurrency(available: dict[str, float], per_trial: dict[str, float], requested: int | None,
                        where: str = "the cluster") -> int:
    """`max_concurrency`, refusing (ConfigError) resources where not even one trial fits."""
    concurrency = max_concurrency(available, per_trial, requested)
    if concurrency < 1:
        raise ConfigError(f"one trial needs {per_trial} but {where} has {available}; "
                          "lower --workers-per-trial / --gpus-per-worker")
    return concurrency


def local_resources() -> dict[str, float]:
    """What a local Ray runtime on this machine offers trials, computed without starting one."""
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


# ----------------------------------------------------------------------------------------- trainable
def run_trial(tune_config: dict[str, Any]) -> None:
    """The Tune function trainable of enumerated designs: one expanded trial (current or older format)."""
    described = describe_trial(tune_config)
    assert described.config is not None  # an enumerated trial carries its config
    _train_trial(Config.from_dict(described.config), described.options)


def _train_trial(config: Config, options: dict[str, Any]) -> None:
    """Train one trial: in this process for one worker, under a TorchTrainer for more."""
    import ray.tune

    if options["workers_per_trial"] == 1:
        device = torch.device("cuda" if config.use_gpu and torch.cuda.is_available() else "cpu")
        context = RayContext(world_rank=0, world_size=1, device=device, report_fn=ray.tune.report,
                             get_checkpoint_fn=ray.tune.get_checkpoint, prepare_fn=lambda model: model.to(device),
                             checkpoint_class=ray.tune.Checkpoint, print_progress=False)
        quiet_ray_train_info()
        train(config, context)
        return
    _run_trial_with_torch_trainer(config, options)


def _run_trial_with_torch_trainer(config: Config, options: dict[str, Any]) -> None:
    from ray.tune import get_context
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = get_context().get_trial_id()
    trainer = build_trainer(config.replace(num_workers=options["workers_per_trial"]),
                            storage=options["train_storage"], name=f"train-{trial_id}",
                            max_failures=options["max_failures"], callbacks=[TuneReportCallback()])
    result = trainer.fit()
    if result.error is not None:
        raise result.error


# ----------------------------------------------------------------------------------------- running
def varied_of(spec: TrialSpec | None) -> str:
    """The results table's `varied` column of a trial: its spec's family ("base", the varied hyperparameter,
    or "grid") for enumerated designs; SEARCH for a searched trial (spec None)."""
    return SEARCH if spec is None else spec.varied


def trial_overrides(overrides: dict[str, Any], options: SweepOptions) -> dict[str, Any]:
    """The config overrides every trial of a sweep trains with: the command line's, plus how a trial runs."""
    return {**overrides, "num_workers": options.workers_per_trial, "use_gpu": options.gpus_per_worker > 0}


def prepare_trials(space: StudySpace, overrides: dict[str, Any], options: SweepOptions) -> list[TrialSpec]:
    """Expand and validate every trial before anything runs (errors name the space file and key)."""
    trials = space.trials(trial_overrides(overrides, options))
    if not trials:
        raise ConfigError(f"{space.path}: the space expands to no trials")
    return trials


def _expand(space: StudySpace, overrides: dict[str, Any], options: SweepOptions) -> tuple[list[TrialSpec], Config]:
    """The expanded trials (none for a search design) and the config that stands for them all (datasets,
    loader workers)."""
    if space.design == "search":
        return [], space.config_for(space.methods[0], {}, space.seeds[0], {**overrides, "num_workers": 1})
    trials = prepare_trials(space, overrides, options)
    return trials, trials[0].config


def _check_study_folder(study_dir: Location, options: SweepOptions) -> None:
    if options.resume and not (study_dir / STUDY_FILE).is_file():
        raise ConfigError(f"--resume: {study_dir} is not a study folder (no {STUDY_FILE}); run without --resume")
    if not options.resume and (study_dir / STUDY_FILE).is_file():
        raise ConfigError(f"study {study_dir} exists; pass --resume to continue it or --name to start another")


def _checked_tracking(study_dir: Location, options: SweepOptions) -> tuple[Tracker, ...]:
    """The validated trackers of `options.tracking`. A resumed study keeps the trackers it started with (Tune
    restores its callbacks with the experiment), so --resume refuses a different --tracking."""
    trackers = parse_tracking(options.tracking)
    if options.resume and trackers:
        recorded = read_json(study_dir / STUDY_FILE).get("options", {}).get("tracking", [])
        wanted = [tracker.value for tracker in trackers]  # as study.json records them: no password
        if sorted(wanted) != sorted(recorded):
            raise ConfigError(f"--tracking {' '.join(wanted)}: a resumed study keeps the trackers it started with "
                              f"({' '.join(recorded) or 'none'}); resume without --tracking")
    return trackers


def _is_local(address: str | None) -> bool:
    return not address or address == "local"


def _check_datasets(trials: list[TrialSpec], base: Config) -> None:
    """Each distinct dataset of the trials, checked locally (on a cluster the data may live on the workers alone)."""
    datasets = {(c.dataset, c.data_root, c.image_size, c.val_fraction, c.download): c
                for c in [spec.config for spec in trials] or [base]}
    for config in datasets.values():
        check_dataset(config)


def study_directory(space: StudySpace, overrides: dict[str, Any], options: SweepOptions) -> tuple[str, Location]:
    """The study's name and its folder under `options.storage` (a local folder or an object-store prefix)."""
    dataset = space.base_config(space.methods[0], overrides=overrides).dataset
    name = check_run_name(options.name or f"{space.name}-{dataset_slug(dataset)}")
    try:
        storage = Location.of(options.storage)
    except ValueError as error:
        raise ConfigError(f"--storage {options.storage!r}: {error}") from None
    return name, storage / name


# ----------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class PlannedTrial:
    """One line of a sweep plan: a trial of an enumerated design, or one method of a search design.

    `family` is what the results table's `varied` column will hold (`varied_of`). `value`: the varied value
    (None for a base trial), a mapping for a grid cell, or, for a search, the searched distributions.
    `companions`: fields set alongside the value. A search line stands for `samples` trials."""

    trial: str
    method: str
    family: str
    value: Any
    seed: int
    config: Config
    companions: dict[str, Any]
    samples: int = 1

    def to_json(self) -> dict[str, Any]:
        record = {"method": self.method, "family": self.family, "value": self.value, "seed": self.seed,
                  "config": self.config.to_dict(), "trial": self.trial}
        if self.family == SEARCH:
            record["samples"] = self.samples
        return record


@dataclass(frozen=True)
class SweepPlan:
    """What `run_sweep` would run with the same arguments, computed without Ray."""

    space: StudySpace
    overrides: dict[str, Any]
    options: SweepOptions
    study_name: str
    study_dir: Location
    trials: tuple[PlannedTrial, ...]
    num_trials: int  # trials the sweep runs (a search line stands for several)
    per_trial: dict[str, float]
    available: dict[str, float] | None  # None: a cluster (--address), not contacted
    concurrency: int | None  # None: it depends on the cluster's resources


def plan(space: SpaceArgument, overrides: dict[str, Any] | None = None, options: SweepOptions = SweepOptions(),
         available: dict[str, float] | None = None) -> SweepPlan:
    """The trials, per-trial resources and concurrency `run_sweep(space, overrides, options)` would use,
    after the same validation, without starting Ray or writing anything (--storage is only read).

    `space` is what `run_sweep` takes: a shipped space's name, a path to a YAML file, or a `StudySpace`.
    Concurrency is computed for this machine (`local_resources()`, or `available`) when the sweep would
    start a local runtime, and left out (None) for a cluster address, which is not contacted.

    Example::

        >>> from study.sweep import SweepOptions, plan
        >>> planned = plan("quick", {"epochs": 1}, SweepOptions(storage="./runs", name="quick-1epoch"))
        >>> planned.num_trials, planned.study_dir.name, planned.trials[0].trial
        (8, 'quick-1epoch', 'supcon-base-seed0')
    """
    overrides = dict(overrides or {})
    space = resolve_space(space)
    name, study_dir = study_directory(space, overrides, options)
    _check_study_folder(study_dir, options)
    specs, base = _expand(space, overrides, options)
    if _is_local(options.address):
        _check_datasets(specs, base)
    check_storage(options.storage, probe=False)
    _checked_tracking(study_dir, options)
    if space.design == "search":
        assert space.num_samples is not None  # study/spaces.py requires it of a search design
        trials = tuple(_planned_search(space, method, overrides, options) for method in space.methods)
        num_trials = space.num_samples * len(space.methods)
    else:
        trials = tuple(_planned_trial(spec) for spec in specs)
        num_trials = len(trials)
    per_trial = trial_resources(options, base.loader_workers)
    concurrency = None
    if _is_local(options.address):
        available = local_resources() if available is None else available
        concurrency = checked_concurrency(available, per_trial, options.max_concurrent, where="this machine")
    else:
        available = None
    return SweepPlan(space=space, overrides=overrides, options=options, study_name=name, study_dir=study_dir,
                     trials=trials, num_trials=num_trials, per_trial=per_trial, available=available,
                     concurrency=concurrency)


def _planned_trial(spec: TrialSpec) -> PlannedTrial:
    family = varied_of(spec)
    if family == "grid":
        value: Any = dict(spec.hyperparameters)
    elif family in spec.params:
        value = spec.params[family]
    else:  # the base combination
        value = None
    shown = set(value) if isinstance(value, dict) else {family}
    companions = {key: item for key, item in spec.params.items() if key not in shown}
    return PlannedTrial(trial=spec.trial_name, method=spec.method, family=family, value=value, seed=spec.seed,
                        config=spec.config, companions=companions)


def _planned_search(space: StudySpace, method: str, overrides: dict[str, Any], options: SweepOptions) -> PlannedTrial:
    """A search design's line for one method: the fixed config its samples start from (as `_run_search` and
    `_searched_trial` build it) and the distributions searched on top of it."""
    assert space.num_samples is not None  # study/spaces.py requires it of a search design
    config = space.config_for(method, {}, space.seeds[0], trial_overrides(overrides, options))
    distributions: dict[str, dict[str, Any]] = {}
    for name, distribution in space.distributions.items():
        if method not in distribution.methods:
            continue
        if distribution.type == "categorical":
            distributions[name] = {"type": "categorical", "choices": list(distribution.choices)}
        else:
            distributions[name] = {"type": distribution.type, "low": distribution.low, "high": distribution.high,
                                   "log": distribution.log, "step": distribution.step}
    return PlannedTrial(trial=f"{method}-{SEARCH}", method=method, family=varied_of(None), value=distributions,
                        seed=space.seeds[0], config=config, companions={}, samples=space.num_samples)


def resolve_space(space: SpaceArgument) -> StudySpace:
    """The `StudySpace` a sweep runs: `space` itself, or the space `load_space` reads from a name or a path.

    A `pathlib.Path` (any `os.PathLike`) is always a file path, even without a `.yaml` suffix or a folder.
    A `StudySpace` object is used as it is: enumerated designs expand their trials from it, so a space
    changed with `dataclasses.replace` (fewer seeds, say) runs as changed. Search designs rebuild the space
    in every trial from the text of `space.path`, so a search space must match its file: one that does not
    raises `ConfigError` rather than running trials of a different space.

    Example::

        >>> import dataclasses
        >>> from study.sweep import resolve_space
        >>> resolve_space("quick").name
        'quick'
        >>> space = dataclasses.replace(resolve_space("quick"), seeds=(0,))
        >>> resolve_space(space) is space
        True
    """
    if isinstance(space, StudySpace):
        if space.design == SEARCH:
            if not space.path.is_file():
                raise ConfigError(f"{space.label}: no such space file; a search design's trials read the space "
                                  "from its file")
            if parse_space(space.path.read_text(), space.path, space.label) != space:
                raise ConfigError(f"{space.label}: the StudySpace object differs from its file; a search design's "
                                  "trials read the space from its file, so save the changes to a file and pass its "
                                  "path")
        return space
    if isinstance(space, os.PathLike):
        text = os.fspath(space)
        if not (text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text):
            text = os.path.join(os.curdir, text)  # load_space would take a bare word for a space name
        return load_space(text)
    if isinstance(space, str):
        return load_space(space)
    raise ConfigError(f"space must be a space name, a path to a space file or a StudySpace, got "
                      f"{type(space).__name__}")


def run_sweep(space: SpaceArgument, overrides: dict[str, Any] | None = None,
              options: SweepOptions = SweepOptions()) -> Location:
    """Run (or resume) a study and write its tables. Returns the study folder (a `study.storage.Location`:
    a local folder, or a prefix on the object store `options.storage` names).

    `space`: a shipped space's name ("quick", "paper_stability", ...), a path to a space YAML file (a str
    or a `Path`), or a `StudySpace` (from `load_space`, possibly changed with `dataclasses.replace`; see
    `resolve_space`). `overrides` are config fields every trial trains with; `options` say where and how
    the sweep runs. The folder holds `study.json`, `results.parquet` and `history.parquet`.

    Example::

        >>> from study.sweep import SweepOptions, run_sweep
        >>> study_dir = run_sweep("quick", {"epochs": 1, "linear_epochs": 1},
        ...                       SweepOptions(storage="./runs", name="quick-smoke"))
        >>> sorted(p.name for p in study_dir.list("*.parquet"))
        ['history.parquet', 'results.parquet']
    """
    import ray

    overrides = dict(overrides or {})
    space_argument = space
    space = resolve_space(space)
    name, study_dir = study_directory(space, overrides, options)
    _check_study_folder(study_dir, options)
    trials, base = _expand(space, overrides, options)
    loader_workers = base.loader_workers

    # Every check that can fail runs before the first write: a bad address, dataset or storage leaves nothing.
    if options.address:
        check_address(options.address)
    if _is_local(options.address):  # on a cluster the data may live on the workers alone
        _check_datasets(trials, base)
    check_storage(options.storage)
    trackers = _checked_tracking(study_dir, options)
    # CheckpointConfig(num_to_keep) makes Tune snapshot its state at every checkpoint, which resume relies
    # on; Tune warns about it each time trials checkpoint within 5 s of each other, as short epochs do.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    connect_ray(options.address)
    per_trial = trial_resources(options, loader_workers)
    concurrency = checked_concurrency(ray.cluster_resources(), per_trial, options.max_concurrent)
    started = time.time()
    study_info: dict[str, Any] = read_json(study_dir / STUDY_FILE) if options.resume else {
        "space": space.name, "space_file": str(space.path.resolve()), "design": space.design, "dataset": base.dataset,
        "model": base.model, "width": base.width, "image_size": base.image_size, "epochs": base.epochs,
        "linear_epochs": base.linear_epochs,
        # no expanded trials means a search design, which study/spaces.py makes carry num_samples
        "num_trials": len(trials) or cast(int, space.num_samples) * len(space.methods),
        "seeds": list(space.seeds), "metric": space.metric,
        "overrides": overrides, "options": {**_recorded_options(options), "tracking": [t.value for t in trackers]},
        "tracking": tracker_locations(trackers, study_dir, name), "started": _now(), "hardware": _hardware(),
        "optuna_storage": _recorded_optuna_storage(options) if space.design == SEARCH else None,
    }
    study_dir.mkdir()
    write_json(study_dir / STUDY_FILE, study_info)
    print(f"study {name}: design {space.design}, {len(trials) or space.num_samples} trials per sweep, "
          f"{concurrency} at a time ({per_trial} each); folder {study_dir}", flush=True)

    # A one-worker trial trains in its own process and holds all it needs; a multi-worker trial holds one CPU
    # for its driver, and its TorchTrainer requests the workers (the concurrency limit keeps room for them).
    held = per_trial if options.workers_per_trial == 1 else {"CPU": 1}
    resources = {key: value for key, value in held.items() if value}
    trial_options = {"workers_per_trial": options.workers_per_trial, "max_failures": options.max_failures,
                     "train_storage": (study_dir / "train_runs").uri}
    try:
        if space.design == "search":
            for method in space.methods:
                _run_search(space, method, overrides, options, study_dir, resources, trial_options, concurrency)
        else:
            _run_grid(trials, options, study_dir, resources, trial_options, concurrency)
    except KeyboardInterrupt:
        shown = space_argument if isinstance(space_argument, str) else str(space.path)
        # Quoted for a shell: an object-store URI's query holds `?` and `&`.
        print(f"\ninterrupted: the study is resumable with\n  run_study.py sweep --space {shlex.quote(shown)} "
              f"--storage {shlex.quote(options.storage)} --name {name} --resume", flush=True)
        raise
    wall = time.time() - started
    study_info.update(finished=_now(), wall_seconds=study_info.get("wall_seconds", 0) + wall)
    write_json(study_dir / STUDY_FILE, study_info)
    results, _ = collect(study_dir)
    print(f"\nresults: {study_dir / RESULTS_FILE} ({len(results)} trials: "
          f"{results['status'].value_counts().to_dict()})", flush=True)
    return study_dir


def _run_grid(trials: list[TrialSpec], options: SweepOptions, study_dir: Location, resources: dict[str, float],
              trial_options: dict[str, Any], concurrency: int) -> None:
    """Enumerated designs (grid, one-at-a-time): one Tune trial per expanded trial spec, handed to Tune one by
    one by `_trial_list_searcher` so that each trial's hyperparameters are keys of its own Tune config."""
    from ray import tune

    trainable = tune.with_resources(_restoring_latest_available(run_trial), resources)
    experiment = study_dir / "tune"
    if options.resume and _can_restore(experiment):
        # Tune restores the trial configs it recorded, in the format of the code that made the study: a study
        # made before hyperparameters became Tune keys resumes with its `spec` strings (describe_trial reads both).
        tuner = _restore(experiment, trainable)
    else:
        shared, configs = trial_configs(trials, trial_options)
        tuner = tune.Tuner(
            trainable,
            param_space={OPTIONS_KEY: shared},
            tune_config=tune.TuneConfig(search_alg=_restored_limiter(_trial_list_searcher(configs), concurrency),
                                        num_samples=len(configs), reuse_actors=_reuse_actors(options),
                                        trial_dirname_creator=_trial_dirname, trial_name_creator=_trial_name),
            run_config=_tune_run_config(experiment, options, total=len(trials)),
        )
    _raise_if_interrupted(tuner.fit(), expected=len(trials))


def trial_configs(trials: list[TrialSpec],
                  trial_options: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Tune configs of enumerated trials (the format `study.collection` documents and `describe_trial` reads):
    the part every trial shares (its `options`: how trials run, each method's base config and results columns)
    and, per trial, its top-level keys (`trial`, `varied`, `method`, `seed`, each hyperparameter the space
    varies for the method, and any other field where the trial differs from its method's base config: a
    companion). A trial's full config is its method's base config updated with its top-level fields."""
    bases: dict[str, dict[str, Any]] = {}
    columns: dict[str, list[str]] = {}
    for spec in trials:  # a method's first trial is its base
        bases.setdefault(spec.method, spec.config.to_dict())
        columns.setdefault(spec.method, list(spec.hyperparameters))
    shared = {**trial_options, CONFIGS_OPTION: bases, HYPERPARAMETERS_OPTION: columns}
    configs = []
    for spec in trials:
        fields = spec.config.to_dict()
        base = bases[spec.method]
        changed = {key: value for key, value in fields.items() if value != base.get(key)}
        config = {TRIAL_KEY: spec.trial_name, VARIED_KEY: varied_of(spec), "method": spec.method, "seed": spec.seed,
                  **{key: fields[key] for key in spec.hyperparameters}, **changed}
        configs.append(config)
        # Holds by construction; checked because a wrong rebuild would train another trial than the one planned.
        assert describe_trial({**config, OPTIONS_KEY: shared}).config == fields, spec.trial_name
    return shared, configs


def _trial_list_searcher(configs: list[dict[str, Any]]):
    """A Tune `Searcher` handing out `configs` in order, one per trial, then FINISHED.

    Why not `tune.grid_search`: over a list of dicts it nests each under the grid key, and over a trial index
    the hyperparameters would have to be `sample_from` lambdas present (as None) in every trial. A searcher's
    suggestion is merged at the top level of the trial config, and only the suggestion is what Tune counts
    as the trial's hyperparameters (`evaluated_params`: TensorBoard's HParams, the progress table), so the
    shared `options` stay out of them. Its state (how many were handed out) is saved as JSON, and restored by
    `Tuner.restore`. Ray is imported lazily, so the class is built here."""
    from ray.tune.search import Searcher

    class TrialList(Searcher):
        CKPT_FILE_TMPL = "trial-list-state-{}.json"

        def __init__(self, configs: list[dict[str, Any]]):
            super().__init__(metric=None, mode=None)
            self.configs = configs
            self.handed_out = 0
            self.recorded: set[str] = set()  # trials a resumed experiment already holds: never handed out again
            self.unfinished: set[str] | None = None  # after a restore: the Tune ids of the trials it runs

        # Tune's annotation leaves out the FINISHED its docstring asks for.
        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
            while self.handed_out < len(self.configs):
                self.handed_out += 1
                config = self.configs[self.handed_out - 1]
                if config[TRIAL_KEY] not in self.recorded:
                    return dict(config)
            return Searcher.FINISHED

        def restore_from_dir(self, checkpoint_dir: str) -> None:
            # Tune restores the trials from its experiment state and this count from the file written after it
            # (on an object store, uploaded after it): a driver killed in between leaves the count behind or
            # ahead, and a trial would run twice or never. The trials the experiment state holds decide.
            from pyarrow.fs import LocalFileSystem

            super().restore_from_dir(checkpoint_dir)
            recorded, self.unfinished = recorded_trials(LocalFileSystem(), checkpoint_dir)
            if recorded:
                self.recorded, self.handed_out = recorded, 0

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            pass  # nothing to learn: the list is fixed

        def get_state(self) -> dict[str, Any]:
            return {"handed_out": self.handed_out, "trials": len(self.configs)}

        def set_state(self, state: dict[str, Any]) -> None:
            self.handed_out = int(state["handed_out"])

        def save(self, checkpoint_path: str) -> None:
            Path(checkpoint_path).write_text(json.dumps(self.get_state()))

        def restore(self, checkpoint_path: str) -> None:
            self.set_state(json.loads(Path(checkpoint_path).read_text()))

    return TrialList(configs)


def _restored_limiter(searcher: Any, max_concurrent: int) -> Any:
    """Tune's ConcurrencyLimiter over a searcher that records the experiment state's unfinished trials when it
    is restored (`_trial_list_searcher`, `_optuna_searcher`), with its count of live trials taken from them.

    Tune restores the limiter's live trials from the search snapshot, saved (and on an object store uploaded)
    apart from the experiment state. A driver killed in between leaves a live trial there that the experiment
    state has finished or never held: it never completes again, keeps its slot for good, and at the limit the
    resumed sweep waits forever (seen with --max-concurrent 1). The restored experiment's unfinished trials are
    exactly the live ones."""
    from ray.tune.search import ConcurrencyLimiter

    class RestoredLimiter(ConcurrencyLimiter):
        def suggest(self, trial_id: str) -> dict | None:
            restored: Any = self.searcher
            if restored.unfinished is not None:  # the first suggestion after a restore
                self.live_trials = set(restored.unfinished)
                self.num_unfinished_live_trials = len(self.live_trials)
                restored.unfinished = None
            return super().suggest(trial_id)

    return RestoredLimiter(searcher, max_concurrent=max_concurrent)


def _optuna_searcher(**kwargs: Any) -> Any:
    """Tune's OptunaSearch(**kwargs) that records the experiment state's unfinished trials when it is restored,
    for `_restored_limiter`."""
    from pyarrow.fs import LocalFileSystem
    from ray.tune.search.optuna import OptunaSearch

    class RestorableOptunaSearch(OptunaSearch):
        unfinished: set[str] | None = None  # after a restore: the Tune ids of the trials the experiment runs

        def restore_from_dir(self, checkpoint_dir: str) -> None:
            super().restore_from_dir(checkpoint_dir)
            self.unfinished = recorded_trials(LocalFileSystem(), checkpoint_dir)[1]

    return RestorableOptunaSearch(**kwargs)


def _raise_if_interrupted(results, expected: int) -> None:
    """Tune catches SIGINT (Ctrl-C) itself: it snapshots the experiment and returns from `fit()` as if the
    sweep were done. Unfinished trials mean it was interrupted: raise, so that the study is not marked
    finished and the caller says how to resume it."""
    finished = results.num_terminated + results.num_errors
    if finished < expected:
        raise KeyboardInterrupt(f"{expected - finished} of {expected} trials unfinished")


def _restoring_latest_available(function):
    """`function` as a Tune trainable that survives a trial checkpoint deleted behind Tune's back.

    Tune deletes checkpoints beyond `CheckpointConfig(num_to_keep)` at once but snapshots its experiment
    state only every ~10 s, so a driver killed in between leaves a state that names a deleted checkpoint, and
    Ray 2.60's `Trainable.restore` then fails the trial on every resume (older Tune fell back to the latest
    available checkpoint, ray-project/ray#29099; that went with the storage rewrite). Here the newest
    `checkpoint_*` folder still beside it is restored instead, or, with none left, the trial starts over."""
    from ray.tune.trainable import wrap_function

    # mypy takes only a static base class; this one is the FunctionTrainable subclass Tune builds at run time
    class RestoringLatestAvailable(wrap_function(function)):  # type: ignore[misc]
        def restore(self, checkpoint_path):
            checkpoint = getattr(checkpoint_path, "checkpoint", None)
            if checkpoint is None or _exists(checkpoint.filesystem, checkpoint.path):
                return super().restore(checkpoint_path)
            replacement = _newest_checkpoint_beside(checkpoint)
            if replacement is None:
                print(f"checkpoint {checkpoint.path} is gone and no other remains; the trial starts over", flush=True)
                return None
            print(f"checkpoint {checkpoint.path} is gone (deleted after Tune's last snapshot); "
                  f"restoring {replacement.path}", flush=True)
            return super().restore(type(checkpoint_path)(checkpoint=replacement, metrics=checkpoint_path.metrics))

    return RestoringLatestAvailable


def _exists(filesystem, path: str) -> bool:
    from pyarrow.fs import FileType

    return filesystem.get_file_info(path).type != FileType.NotFound


def _newest_checkpoint_beside(checkpoint):
    """The newest `checkpoint_*` folder next to `checkpoint` on its filesystem (local or remote), or None."""
    from pyarrow.fs import FileSelector, FileType
    from ray.tune import Checkpoint

    parent = checkpoint.path.rstrip("/").rpartition("/")[0]
    entries = checkpoint.filesystem.get_file_info(FileSelector(parent, allow_not_found=True))
    folders = sorted(entry.path for entry in entries
                     if entry.type == FileType.Directory and entry.base_name.startswith("checkpoint_"))
    return Checkpoint(folders[-1], filesystem=checkpoint.filesystem) if folders else None


def _reuse_actors(options: SweepOptions) -> bool:
    """One-worker trials reuse their process: starting one costs ~9 s of a trial slot, reuse ~2 s, with
    identical results (benchmarks/sweep_efficiency.py). A multi-worker trial's process only drives a
    TorchTrainer, so there is nothing to gain."""
    return options.workers_per_trial == 1


def _tune_run_config(experiment: Location, options: SweepOptions, total: int):
    from ray import tune

    # On a local disk, a filesystem that writes each file atomically: Tune copies its snapshots into the
    # study folder, and a driver killed during a plain copy left a truncated one that did not resume.
    storage_path, storage_filesystem = ray_storage(experiment.parent)
    return tune.RunConfig(
        name=experiment.name, storage_path=storage_path, storage_filesystem=storage_filesystem,
        failure_config=tune.FailureConfig(max_failures=options.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[_trial_line_callback(total), _trial_errors_callback(),
                   *tracking_callbacks(parse_tracking(options.tracking, check=False), experiment.parent.name)],
        verbose=options.verbose,
    )


def _can_restore(experiment: Location) -> bool:
    """Whether `experiment` holds a Tune experiment to resume, read through the filesystem it is written with."""
    from ray import tune

    path, filesystem = ray_storage(experiment)
    return tune.Tuner.can_restore(path, storage_filesystem=filesystem)


def _restore(experiment: Location, trainable):
    """`Tuner.restore` of `experiment`, writing on through the filesystem `_tune_run_config` gives a new one
    (Tune takes the restored run's filesystem from this call, not from the study)."""
    from ray import tune

    path, filesystem = ray_storage(experiment)
    return tune.Tuner.restore(path, trainable=trainable, resume_errored=True, storage_filesystem=filesystem)


def _describe(trial) -> TrialDescription:
    """`describe_trial` of a live Tune trial."""
    return describe_trial(trial.config, trial_id=trial.trial_id)


def _trial_name(trial) -> str:
    """A trial's name in Tune (and its folder's start): an enumerated trial's own, `<method>-<id>` for a
    searched one. Kept by this name: a study's experiment state refers to it, so a resume unpickles it."""
    described = _describe(trial)
    return f"{described.method}-{trial.trial_id}" if described.varied == SEARCH else described.name


def _trial_dirname(trial) -> str:
    return f"{_trial_name(trial)}-{trial.trial_id}"


def _run_search(space: StudySpace, method: str, overrides: dict[str, Any], options: SweepOptions,
                study_dir: Location, resources: dict[str, float], trial_options: dict[str, Any],
                concurrency: int) -> None:
    """One Optuna study per method, persisted in SQLite (or --optuna-storage) for importance analyses.

    SQLite cannot live on an object store: for a study there, the database stays on local disk
    (`optuna_sqlite_path`) and a copy is uploaded as `optuna.db` into the study folder when the search ends."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    assert space.num_samples is not None  # study/spaces.py requires it of a search design
    trainable = tune.with_resources(_restoring_latest_available(_searched_trial), resources)
    experiment = study_dir / f"tune-{method}"
    if options.resume and _can_restore(experiment):
        results = _restore(experiment, trainable).fit()
        _upload_optuna_copy(study_dir, options)
        _raise_if_interrupted(results, expected=space.num_samples)
        return
    storage_url = options.optuna_storage or f"sqlite:///{_local_optuna_file(study_dir)}"
    searcher = _optuna_searcher(  # the space's first seed seeds the sampler too: the same space samples the same
        space=space.search_space(method), metric=space.metric, mode=space.mode,
        sampler=space.make_sampler(seed=space.seeds[0]),
        study_name=f"{space.name}-{method}", storage=optuna.storages.RDBStorage(storage_url),
    )
    scheduler = None
    if space.scheduler == "asha":
        # One training_iteration per reported epoch; max_t must cover every stage and the final report,
        # or ASHA would cut a trial that is merely finishing its linear stage.
        base = space.base_config(method, space.seeds[0], overrides)
        max_t = base.epochs + (base.linear_epochs if base.has_linear_stage else 0) + 1
        scheduler = ASHAScheduler(metric=space.metric, mode=space.mode, max_t=max_t,
                                  **space.scheduler_options)
    fixed_overrides = trial_overrides(overrides, options)
    # The space travels as text: a trial may run on a node that cannot see the file, or from another folder.
    # It is under `options` with how the trial runs; Optuna's samples, the method and the seed are the top-level
    # keys (and only the samples are what Tune logs as the trial's hyperparameters).
    run_options = {"space_file": str(space.path), "space_text": space.path.read_text(), "overrides": fixed_overrides,
                   **trial_options}
    tuner = tune.Tuner(
        trainable,
        param_space={"method": method, "seed": space.seeds[0], OPTIONS_KEY: run_options},
        tune_config=tune.TuneConfig(search_alg=_restored_limiter(searcher, max_concurrent=concurrency),
                                    scheduler=scheduler, num_samples=space.num_samples,
                                    reuse_actors=_reuse_actors(options)),
        run_config=_tune_run_config(experiment, options, total=space.num_samples),
    )
    results = tuner.fit()
    _upload_optuna_copy(study_dir, options)
    _raise_if_interrupted(results, expected=space.num_samples)


def _searched_trial(tune_config: dict[str, Any]) -> None:
    """A searched trial: Optuna's sample on top of the space's base config for the method (a trial of a study
    made before the `options` format keeps its part under `fixed`: describe_trial reads both)."""
    described = describe_trial(tune_config)
    options = described.options
    space = parse_space(options["space_text"], options["space_file"], label=options["space_file"])
    config = space.config_for(described.method, described.params, described.seed, options["overrides"])
    _train_trial(config, options)


# ----------------------------------------------------------------------------------------- progress
def _trial_line_callback(total: int):
    """A Tune callback printing one line per finished trial and a status line a minute while trials run
    (Ray is imported lazily, so the class is built here). `total`: the trials this Tuner runs."""
    from ray.tune import Callback

    class _TrialLineCallback(Callback):
        def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):  # Callback.setup's keywords
            self.started = self.last_status = time.monotonic()  # per fit(): a resumed sweep counts anew

        def _elapsed(self) -> str:
            minutes, seconds = divmod(int(time.monotonic() - self.started), 60)
            return f"{minutes}m{seconds:02d}s"

        def _finished_line(self, trials, trial, failed: bool) -> None:
            finished = sum(1 for other in trials if other is trial or other.status in ("TERMINATED", "ERROR"))
            print(f"[{finished}/{total}, {self._elapsed()}] {_trial_line(trial, failed)}", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finished_line(trials, trial, failed=False)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._finished_line(trials, trial, failed=True)

        def on_step_end(self, iteration, trials, **info):
            if time.monotonic() - self.last_status >= STATUS_EVERY_SECONDS:
                self.last_status = time.monotonic()
                running = sum(1 for trial in trials if trial.status == "RUNNING")
                finished = sum(1 for trial in trials if trial.status in ("TERMINATED", "ERROR"))
                print(f"[{self._elapsed()}] {running} running, {finished}/{total} finished", flush=True)

    return _TrialLineCallback()


def _trial_errors_callback():
    """A Tune callback keeping the study folder's TRIAL_ERRORS_FILE: each trial Tune errors, with its error's last
    line, until the trial starts again (a resumed sweep reruns errored trials). Tune 2.60 leaves a trial whose node
    was lost RUNNING in its experiment state (it rewrites a trial's state only through its live actor), so without
    this record `collect` would list the trial `pending`. Written by the driver alone, atomically."""
    from ray.tune import Callback

    class _TrialErrorsCallback(Callback):
        def _update(self, trial, error: str | None) -> None:
            experiment = _trial_experiment(trial)
            recorded = recorded_errors(experiment.filesystem, experiment.parent.path)
            errors = recorded.setdefault(experiment.name, {})
            if error is not None:
                errors[trial.trial_id] = error
            elif errors.pop(trial.trial_id, None) is None:
                return
            write_json(experiment.parent / TRIAL_ERRORS_FILE, recorded)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._update(trial, None)

        def on_trial_error(self, iteration, trials, trial, **info):
            error_file = trial.error_file  # Tune's error.txt in the driver's staging folder, written by now
            text = Path(error_file).read_text(errors="replace") if error_file and Path(error_file).is_file() else ""
            self._update(trial, last_error_line(text))

    return _TrialErrorsCallback()


def _trial_experiment(trial) -> Location:
    """The experiment folder Tune writes a trial's results into now. Taken from the trial, not given to a callback:
    Tune restores its callbacks from tuner.pkl, so one would write into the folder the study was made in, not
    the one it is resumed from."""
    filesystem, path = trial.storage.storage_filesystem, trial.storage.experiment_fs_path
    if filesystem.type_name in ("local", "py::atomic-local"):  # pyarrow's, or study.storage's atomic one
        return Location.of(path)
    return Location(filesystem, path, scheme=filesystem.type_name)


def _trial_line(trial, failed: bool = False) -> str:
    """What a finished trial's progress line says (called as it finishes, before Tune updates its status)."""
    described = _describe(trial)
    result = trial.last_result or {}
    params = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                       for key, value in described.params.items()) or "base"
    status = "failed" if failed else trial_status(trial.status, result)
    if status == "pending":  # finished without its final report: the scheduler stopped it
        status = "stopped_early"
    top1 = result.get("test_top1", result.get("val_top1", math.nan))
    return f"trial {_trial_name(trial)} [{described.method}] {params}: {status}, top-1 {top1:.2f}"


# ----------------------------------------------------------------------------------------- collection
def collect(study_dir: str | os.PathLike | Location) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every trial of a (possibly partial) study and write results.parquet/.csv and history.parquet.

    `study_dir`: a local folder or an object-store URI (`study.storage.Location`); the tables go beside. Reads
    only JSON (Tune's experiment state and each trial's result.json; `study.collection`), never Tune's
    pickles: collecting a study folder someone else wrote runs none of its code."""
    study_dir = Location.of(study_dir)
    info = read_json(study_dir / STUDY_FILE)
    results, history = collect_trials(study_dir.filesystem, study_dir.path, info["space"])
    write_table(results, study_dir / RESULTS_FILE)
    write_table(history, study_dir / HISTORY_FILE, csv=False)
    return results, history


# ----------------------------------------------------------------------------------------- files
OPTUNA_FILE = "optuna.db"  # the SQLite file of a search design's Optuna studies, in the study folder


def optuna_sqlite_path(study_dir: Location) -> Path:
    """Where a search design's SQLite file lives while it runs: in a local study folder itself; for a study
    on an object store (where SQLite cannot live), under $TMPDIR, keyed by the study's URI."""
    if study_dir.is_local:
        return study_dir.local_path / OPTUNA_FILE
    key = hashlib.sha256(study_dir.uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "supcon-study-optuna" / key / OPTUNA_FILE


def _local_optuna_file(study_dir: Location) -> Path:
    """The local SQLite file of a study; for a study on an object store resumed on a machine without one,
    first downloaded from the copy the study folder holds."""
    path = optuna_sqlite_path(study_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    copy = study_dir / OPTUNA_FILE
    if not study_dir.is_local and not path.is_file() and copy.is_file():
        copy.download(path)
    return path.resolve()


def _upload_optuna_copy(study_dir: Location, options: SweepOptions) -> None:
    """For a study on an object store with SQLite (no --optuna-storage): the database's copy in its folder."""
    if study_dir.is_local or options.optuna_storage:
        return
    path = optuna_sqlite_path(study_dir)
    if path.is_file():
        (study_dir / OPTUNA_FILE).upload(path)


def _recorded_optuna_storage(options: SweepOptions) -> str:
    """What study.json says about where the Optuna studies are: `optuna.db` (the file in the study folder),
    or the --optuna-storage URL without its password."""
    if not options.optuna_storage:
        return OPTUNA_FILE
    return _without_password(options.optuna_storage)


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: Optuna would have refused it; record nothing secret
        return url.split("@")[-1]


def _recorded_options(options: SweepOptions) -> dict[str, Any]:
    recorded = dict(options.__dict__)
    if recorded.get("optuna_storage"):
        recorded["optuna_storage"] = _without_password(recorded["optuna_storage"])
    return recorded


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _hardware() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
