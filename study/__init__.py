"""supcon-study from Python: train, sweep and evaluate SupCon and cross-entropy models.

The names below are the public API (the command line, `run_study.py`, calls the same functions).
`import study` is cheap: only `Config` is imported with the package; every other name is imported on
first use (PEP 562), so a notebook that only builds configs never loads torch or Ray.

- `Config`, `ConfigError`: one validated training configuration (`Config.from_dict`, `Config.from_yaml`).
- `run_training(config, storage=..., name=...)`: train one model under Ray Train (a local Ray runtime, or
  `address=`), as `run_study.py train` does; returns its final metrics with the path of its checkpoint.
  In-process training without Ray is `study.train.train(config, LocalContext(run_dir))`: `study.train` is
  the training-loop module, so the function keeps its module's name rather than being re-exported here.
- `load_space`, `list_spaces`, `StudySpace`: the study spaces (`search_spaces/*.yaml` or your own file).
- `plan(space, overrides, options)`: what a sweep would run, without starting Ray or writing anything.
- `run_sweep(space, overrides, options)`: every trial of a space under Ray Tune; `space` is a shipped
  space's name, a path to a YAML file, or a `StudySpace`. Returns the study folder.
- `collect(study_dir)`: the results and history tables of a (partial) study.
- `run_robustness(checkpoints, ...)`: top-1 error and calibration of checkpoints on corrupted test sets;
  `study_checkpoints(study_dir)` names the checkpoints of a study's completed trials.

The analysis of a study folder (stability, corruption summaries, the report) is the `analysis` package,
which needs neither torch nor Ray.

Example::

    >>> from study import Config, SweepOptions, load_space, plan, run_sweep
    >>> config = Config(method="supcon", epochs=2, temperature=0.1)
    >>> options = SweepOptions(storage="./runs", name="quick-1epoch")
    >>> plan("quick", {"epochs": 1}, options).num_trials  # validates everything, starts nothing
    8
    >>> study_dir = run_sweep(load_space("quick"), {"epochs": 1}, options)  # a few minutes on a CPU
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from study.config import Config, ConfigError

# Public names whose modules import torch or Ray (or load the space files), imported on first access.
_LAZY = {
    "run_training": "study.launch",
    "LocalContext": "study.train",
    "SweepOptions": "study.sweep",
    "SweepPlan": "study.sweep",
    "plan": "study.sweep",
    "run_sweep": "study.sweep",
    "collect": "study.sweep",
    "run_robustness": "study.robustness",
    "study_checkpoints": "study.robustness",
    "StudySpace": "study.spaces",
    "load_space": "study.spaces",
    "list_spaces": "study.spaces",
}

__all__ = ["Config", "ConfigError", *_LAZY]

if TYPE_CHECKING:  # what IDEs and type checkers see; `name as name` marks an explicit re-export
    from study.launch import run_training as run_training
    from study.robustness import run_robustness as run_robustness
    from study.robustness import study_checkpoints as study_checkpoints
    from study.spaces import StudySpace as StudySpace
    from study.spaces import list_spaces as list_spaces
    from study.spaces import load_space as load_space
    from study.sweep import SweepOptions as SweepOptions
    from study.sweep import SweepPlan as SweepPlan
    from study.sweep import collect as collect
    from study.sweep import plan as plan
    from study.sweep import run_sweep as run_sweep
    from study.train import LocalContext as LocalContext


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
