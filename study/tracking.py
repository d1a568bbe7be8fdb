"""Experiment trackers of a sweep: `--tracking tensorboard | mlflow:URI | wandb[:online]`, repeatable.

Each tracker is one of Ray Tune's own logger callbacks, added to the sweep's `RunConfig`; nothing here logs a
metric by hand. They run in the Tune driver (the process that runs `run_sweep`), so an `mlflow:sqlite:///...`
store and the TensorBoard event files live on the driver's disk, also on a cluster.

- `tensorboard`: `ray.tune.logger.TBXLoggerCallback`. Tune already adds it by default when tensorboardX is
  installed (unless `TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1`); naming it makes it explicit, checks the package
  before anything runs, and records where the event files are (one `events.out.tfevents.*` per trial folder,
  so `tensorboard --logdir STUDY_FOLDER` shows every trial, with the HParams view once trials end).
- `mlflow:URI`: `ray.air.integrations.mlflow.MLflowLoggerCallback`: one MLflow run per trial in the experiment
  named after the study, the trial's hyperparameters as params and every reported metric (`val_top1`, ...)
  per training iteration (one per epoch, then the final report). URI: `sqlite:///PATH` (MLflow's default
  backend; its file store is legacy), another SQLAlchemy database, or a tracking server `http(s)://HOST:PORT`.
- `wandb`: `ray.air.integrations.wandb.WandbLoggerCallback` in offline mode: each trial's run is written to
  `wandb/` inside its trial folder and `wandb sync` uploads it later (cluster nodes often have no internet).
  `wandb:online` logs to the W&B server directly (after `wandb login`).

`parse_tracking` validates the values (ConfigError, before any compute); `tracking_callbacks` builds the
callbacks; `tracker_locations` says where to open the runs (recorded in study.json, named in the report).
"""

from __future__ import annotations

import importlib.util
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from study.config import ConfigError

TRACKERS = ("tensorboard", "mlflow:URI", "wandb", "wandb:online")  # what --tracking allows, as its errors say
# MLflow tracking URIs the callback can write to: SQLAlchemy databases (scheme+driver allowed) and servers.
MLFLOW_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
MLFLOW_SERVER_SCHEMES = ("http", "https", "databricks")
# The pip extra (pyproject.toml) and the module each tracker's callback imports.
TRACKER_PACKAGES = {"tensorboard": ("tensorboardX", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
                    "wandb": ("wandb", "wandb")}
MAX_PARAM_CHARS = 250  # longer config strings (a whole spec, a space file's text) are not hyperparameters
SERVER_PROBE_SECONDS = 5.0
WANDB_FINISH_SECONDS = 60.0  # the longest a trial's end waits for its offline W&B run to be written
_PASSWORD = re.compile(r"(//[^/?#@:]*:)[^/?#@]*@")  # the password of a URI's user part


@dataclass(frozen=True)
class Tracker:
    """One validated `--tracking` value: `kind` tensorboard | mlflow | wandb; `target` the MLflow tracking URI
    or the W&B mode ("offline" | "online"), empty for TensorBoard."""

    kind: str
    target: str = ""

    @property
    def public_target(self) -> str:
        """`target` as it may be written down: an MLflow URI without its password."""
        return redact_uri(self.target) if self.kind == "mlflow" else self.target

    @property
    def value(self) -> str:
        """The `--tracking` value of this tracker as it may be written down (study.json): no password."""
        return f"{self.kind}:{self.public_target}" if self.target else self.kind

    def location(self, study_dir: str | os.PathLike[str], study_name: str) -> str:
        """Where a user opens this tracker's runs of the study (one line; no password)."""
        if self.kind == "tensorboard":
            return f"tensorboard --logdir {study_dir} (event files in each trial folder)"
        if self.kind == "mlflow":
            return f"mlflow {self.public_target}, experiment {study_name} (one run per trial)"
        if self.target == "offline":
            return f"wandb offline, project {study_name}: wandb/ in each trial folder under {study_dir} (wandb sync)"
        return f"wandb online, project {study_name}"


def redact_uri(text: str) -> str:
    """`text` (a URI, or a `--tracking` value holding one) with the password of a `//USER:PASSWORD@` part
    replaced by `***` (nothing else changes)."""
    return _PASSWORD.sub(r"\1***@", text)


def parse_tracking(values: Iterable[str], check: bool = True) -> tuple[Tracker, ...]:
    """The validated trackers of `--tracking` values (a repeated value counts once).

    Raises ConfigError naming the bad value and what is allowed, before anything runs. With `check` (the
    default) also the pip extra a missing tracker package needs, a missing folder of an MLflow SQLite store,
    and an MLflow server that does not answer; `check=False` only parses values checked before."""
    trackers: list[Tracker] = []
    for value in values:
        tracker = _parse_one(value)
        if check:
            _check_package(tracker, value)
            _check_target(tracker, value)
        if tracker not in trackers:
            trackers.append(tracker)
    return tuple(trackers)


def _parse_one(value: str) -> Tracker:
    kind, _, target = str(value).partition(":")
    allowed = f"allowed: {' | '.join(TRACKERS)}"
    if kind == "tensorboard" and not target:
        return Tracker("tensorboard")
    if kind == "tensorboard":
        raise ConfigError(f"--tracking {value!r}: tensorboard takes no path (Tune writes the event files into "
                          f"each trial folder: tensorboard --logdir STUDY_FOLDER); {allowed}")
    if kind == "wandb" and target in ("", "offline", "online"):
        return Tracker("wandb", target or "offline")
    if kind == "mlflow" and target:
        return Tracker("mlflow", _mlflow_uri(value, target))
    if kind == "mlflow":
        raise ConfigError(f"--tracking {value!r}: mlflow needs a tracking URI, e.g. mlflow:sqlite:////abs/mlflow.db "
                          f"or mlflow:http://127.0.0.1:5000; {allowed}")
    raise ConfigError(f"--tracking {value!r}: unknown tracker; {allowed}")


def _mlflow_uri(value: str, uri: str) -> str:
    scheme = uri.partition(":")[0].lower()
    base = scheme.partition("+")[0]  # postgresql+psycopg2 and the like
    allowed = ", ".join(f"{name}://" for name in (*MLFLOW_DATABASE_SCHEMES, *MLFLOW_SERVER_SCHEMES))
    if ":" not in uri or base not in (*MLFLOW_DATABASE_SCHEMES, *MLFLOW_SERVER_SCHEMES):
        raise ConfigError(f"--tracking {redact_uri(value)!r}: not an MLflow tracking URI; allowed schemes: {allowed} "
                          "(MLflow's file store is legacy: use sqlite:///PATH)")
    if base == "sqlite" and not _sqlite_path(uri):
        raise ConfigError(f"--tracking {value!r}: an MLflow SQLite store needs a file, sqlite:///PATH "
                          "(an in-memory store would be lost when the sweep ends)")
    if base in ("http", "https"):
        try:
            parts = urlsplit(uri)
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError as error:
            raise ConfigError(f"--tracking {redact_uri(value)!r}: not a valid URL ({error})") from None
        if not parts.hostname:
            raise ConfigError(f"--tracking {redact_uri(value)!r}: no host in the MLflow server URI; "
                              "expected http(s)://HOST:PORT")
    return uri


def _sqlite_path(uri: str) -> str:
    """The file of a `sqlite:///PATH` URI (`sqlite:////abs` is absolute, `sqlite:///rel` relative); '' if none."""
    prefix = "sqlite:///"
    return uri[len(prefix):].partition("?")[0] if uri.lower().startswith(prefix) else ""


def _check_package(tracker: Tracker, value: str) -> None:
    module, extra = TRACKER_PACKAGES[tracker.kind]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"--tracking {redact_uri(value)!r}: the {module} package is not installed; "
                          f"pip install 'supcon-study[{extra}]'")


def _check_target(tracker: Tracker, value: str) -> None:
    """What can be checked of a tracker's target without writing: the SQLite file's folder, the server."""
    if tracker.kind != "mlflow":
        return
    path = _sqlite_path(tracker.target)
    if path:
        folder = Path(path).parent
        if not folder.is_dir():
            raise ConfigError(f"--tracking {value!r}: folder {folder} of the MLflow SQLite store does not exist")
        return
    if urlsplit(tracker.target).scheme.lower() in ("http", "https"):
        parts = urlsplit(tracker.target)
        probe = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2],  # urllib takes no user part
                                          path=parts.path.rstrip("/") + "/health", query="", fragment=""))
        try:  # any HTTP answer will do (MLflow servers answer /health); only an unreachable server is refused
            with urllib.request.urlopen(probe, timeout=SERVER_PROBE_SECONDS):
                pass
        except urllib.error.HTTPError:
            pass
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ConfigError(f"--tracking {redact_uri(value)!r}: no MLflow server answers ({reason})") from None


def tracker_locations(trackers: Iterable[Tracker], study_dir: str | os.PathLike[str],
                      study_name: str) -> list[str]:
    """One line per tracker saying where its runs of the study are (for study.json and the report)."""
    return [tracker.location(study_dir, study_name) for tracker in trackers]


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters of a trial as trackers record them: the Tune config's top-level scalar keys.

    Searched samples (`lr`, ...) and, in configs that carry them at the top level, the varied hyperparameters,
    `method` and `seed`; nested runtime options and long strings (a JSON spec, a space file's text) are
    not hyperparameters."""
    return {key: value for key, value in config.items()
            if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= MAX_PARAM_CHARS)}


def tracking_callbacks(trackers: Iterable[Tracker], study_name: str) -> list[Any]:
    """Ray Tune's logger callbacks for `trackers` (from `parse_tracking`), one per tracker."""
    callbacks: list[Any] = []
    for tracker in trackers:
        if tracker.kind == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            callbacks.append(TBXLoggerCallback())
        elif tracker.kind == "mlflow":
            callbacks.append(_mlflow_callback(tracker.target, study_name))
        else:
            callbacks.append(_wandb_callback(tracker.target, study_name))
    return callbacks


def _wandb_callback(mode: str, study_name: str) -> Any:
    """Ray's WandbLoggerCallback in `mode`, with two fixes for offline runs (Ray 2.60):

    - its setup asks for an API key unless WANDB_MODE says offline (its `mode` argument goes to `wandb.init`
      alone), so WANDB_MODE is set while the parent's setup runs, and put back after;
    - a trial's run is written by a logging actor into the trial folder of the driver's staging area, and
      Tune copies that area into the study folder at its last checkpoint, before the callback waits for the
      actors (`on_experiment_end`): the study folder got a truncated run. A trial's end waits for its run
      to be finished instead (offline that takes about a second; online, the upload is not waited for)."""
    import ray
    from ray.air.integrations.wandb import WandbLoggerCallback

    class StudyWandbLoggerCallback(WandbLoggerCallback):
        def setup(self, *args, **kwargs):
            if mode != "offline":
                return super().setup(*args, **kwargs)
            previous = os.environ.get("WANDB_MODE")
            os.environ["WANDB_MODE"] = "offline"
            try:
                return super().setup(*args, **kwargs)
            finally:
                if previous is None:
                    os.environ.pop("WANDB_MODE", None)
                else:
                    os.environ["WANDB_MODE"] = previous

        def log_trial_end(self, trial, failed=False):
            future = self._trial_logging_futures.get(trial)
            super().log_trial_end(trial, failed=failed)  # tells the actor to finish the run
            if mode == "offline" and future is not None and trial in self._trial_logging_futures:
                ray.wait([future], timeout=WANDB_FINISH_SECONDS)
                self._cleanup_logging_actors()

    return StudyWandbLoggerCallback(project=study_name, mode=mode)


def _mlflow_callback(uri: str, study_name: str) -> Any:
    """Ray's MLflowLoggerCallback, logging `trial_params` as a trial's params (not its whole nested config)
    and its results without the `config` copy Tune attaches to each (numbers in it are not metrics)."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class StudyMLflowLoggerCallback(MLflowLoggerCallback):
        def log_trial_start(self, trial):
            # The parent opens the trial's run; params come next, filtered (it would log the whole config).
            self.log_params_on_trial_end, logs_at_end = True, self.log_params_on_trial_end
            try:
                super().log_trial_start(trial)
            finally:
                self.log_params_on_trial_end = logs_at_end
            self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=trial_params(trial.config))

        def log_trial_result(self, iteration, trial, result):
            super().log_trial_result(iteration, trial, {k: v for k, v in result.items() if k != "config"})

    return StudyMLflowLoggerCallback(tracking_uri=uri, experiment_name=study_name, save_artifact=False)

