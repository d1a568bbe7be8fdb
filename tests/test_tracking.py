"""Experiment trackers (`--tracking`): validation before anything runs, and a real sweep read back from a real
MLflow SQLite store, TensorBoard event files and (where wandb is installed) an offline W&B run."""

from __future__ import annotations

import importlib.util
import json
import socket

import pandas as pd
import pytest

import run_study
from study import tracking
from study.config import ConfigError
from study.tracking import Tracker, parse_tracking, redact_uri, trial_params

TINY_SEARCH = """
name: tracked
base:
  dataset: digits
  model: resnet18
  width: 0.0625
  epochs: 2
  batch_size: 64
  augmentation: crop_flip
design: search
methods: [ce]
seeds: [0]
metric: val_top1
distributions:
  lr: {type: float, low: 0.05, high: 0.5, log: true}
num_samples: 2
sampler: TPESampler
"""


def _sweep(capsys, *arguments: str) -> tuple[int, str]:
    """`run_study.py sweep ARGUMENTS` in this process: its exit code and its stderr."""
    code = run_study.main(["sweep", *arguments])
    return code, capsys.readouterr().err


def _closed_port() -> int:
    with socket.socket() as probe:  # a port nothing listens on once the socket is closed
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ----------------------------------------------------------------------------------------- validation (fast)
@pytest.mark.parametrize("value, says", [
    ("bogus", "unknown tracker; allowed: tensorboard | mlflow:URI | wandb | wandb:online"),
    ("mlflow", "mlflow needs a tracking URI"),
    ("mlflow:/tmp/mlruns", "not an MLflow tracking URI; allowed schemes: sqlite://"),
    ("mlflow:sqlite://", "an MLflow SQLite store needs a file"),
    ("mlflow:sqlite:////no/such/folder/mlflow.db", "folder /no/such/folder of the MLflow SQLite store does not exist"),
    ("mlflow:http://:5000", "no host in the MLflow server URI"),
    ("tensorboard:/tmp/tb", "tensorboard takes no path"),
    ("wandb:later", "unknown tracker"),
])
def test_a_bad_tracking_value_exits_2_naming_it_before_anything_is_written(value, says, tmp_path, capsys):
    code, err = _sweep(capsys, "--storage", str(tmp_path / "runs"), "--epochs", "1", "--tracking", "tensorboard",
                       "--tracking", value)
    assert code == 2
    assert err.startswith(f"error: --tracking {value!r}: ") and says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # refused before the study folder (or Ray) was started


def test_an_unreachable_mlflow_server_is_refused_without_its_password(tmp_path, capsys):
    uri = f"http://alice:s3cret@127.0.0.1:{_closed_port()}"
    code, err = _sweep(capsys, "--storage", str(tmp_path / "runs"), "--dry-run", "--tracking", f"mlflow:{uri}")
    assert code == 2 and "no MLflow server answers" in err
    assert "s3cret" not in err and "alice:***@127.0.0.1" in err


@pytest.mark.parametrize("kind, extra", [("mlflow:sqlite:///mlflow.db", "mlflow"), ("wandb", "wandb"),
                                         ("tensorboard", "tensorboard")])
def test_a_tracker_whose_package_is_missing_names_the_pip_extra(kind, extra, monkeypatch, tmp_path, capsys):
    module = tracking.TRACKER_PACKAGES[extra][0]
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == module
                        else find_spec(name, *rest))
    monkeypatch.chdir(tmp_path)
    code, err = _sweep(capsys, "--dry-run", "--tracking", kind)
    assert code == 2
    assert f"the {module} package is not installed; pip install 'supcon-study[{extra}]'" in err


def test_parsed_trackers_count_once_and_are_written_down_without_passwords():
    trackers = parse_tracking(["tensorboard", "wandb", "tensorboard", "wandb:online"], check=False)
    assert trackers == (Tracker("tensorboard"), Tracker("wandb", "offline"), Tracker("wandb", "online"))
    secret = Tracker("mlflow", "postgresql+psycopg2://bob:hunter2@db.example:5432/mlflow")
    assert secret.value == "mlflow:postgresql+psycopg2://bob:***@db.example:5432/mlflow"
    assert "hunter2" not in secret.location("/runs/s", "s") and "experiment s" in secret.location("/runs/s", "s")
    assert redact_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"


def test_trial_params_are_the_top_level_scalars_of_the_tune_config():
    config = {"lr": 0.1, "method": "ce", "seed": 3, "augmentation": "crop_flip", "ema": True,
              "fixed": {"space_text": "x" * 5000}, "options": {"workers_per_trial": 1},
              "spec": json.dumps({"config": {"lr": 0.1, "pad": "x" * 400}})}
    assert trial_params(config) == {"lr": 0.1, "method": "ce", "seed": 3, "augmentation": "crop_flip", "ema": True}


def test_resume_refuses_trackers_other_than_those_the_study_started_with(tmp_path, capsys):
    study = tmp_path / "runs" / "quick-digits"
    study.mkdir(parents=True)
    (study / "study.json").write_text(json.dumps({"options": {"tracking": ["tensorboard"]}, "tracking": ["tb"]}))
    store = f"mlflow:sqlite:///{tmp_path / 'mlflow.db'}"
    code, err = _sweep(capsys, "--storage", str(tmp_path / "runs"), "--resume", "--dry-run", "--tracking", store)
    assert code == 2 and "a resumed study keeps the trackers it started with (tensorboard)" in err
    code, _ = _sweep(capsys, "--storage", str(tmp_path / "runs"), "--resume", "--dry-run", "--tracking", "tensorboard")
    assert code == 0


def test_the_report_header_names_the_tracker_locations(tmp_path):
    from analysis.report import build_report

    study = tmp_path / "study"
    study.mkdir()
    location = "mlflow sqlite:////srv/mlflow.db, experiment study (one run per trial)"
    (study / "study.json").write_text(json.dumps({"space": "quick", "tracking": [location]}))
    html_path, markdown_path = build_report(study)
    header = markdown_path.read_text().split("\n\n")[:3]
    assert any(f"trackers: {location}" in part for part in header)
    assert f"trackers: {location}" in html_path.read_text()


# ----------------------------------------------------------------------------------------- a real sweep (slow)
@pytest.mark.slow
def test_a_sweep_logs_each_trial_to_mlflow_and_tensorboard(ray_session, tmp_path, capsys):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    space = tmp_path / "tracked.yaml"
    space.write_text(TINY_SEARCH)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # sqlite:////abs/path
    code = run_study.main(["sweep", "--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "t",
                           "--tracking", f"mlflow:{store}", "--tracking", "tensorboard"])
    assert code == 0, capsys.readouterr().err
    study = tmp_path / "runs" / "t"
    results = pd.read_parquet(study / "results.parquet")
    history = pd.read_parquet(study / "history.parquet")
    assert len(results) == 2 and set(results["status"]) == {"completed"}
    epochs = {trial: group.sort_values("epoch")["val_top1"].tolist() for trial, group in history.groupby("trial_id")}
    assert all(len(values) == 2 for values in epochs.values())

    # MLflow: one run per trial in the study's experiment, lr as a param, val_top1 at every epoch.
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("t")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    trial_of_lr = dict(zip(results["lr"], results["trial_id"], strict=True))
    for run in runs:
        lr = float(run.data.params["lr"])
        assert lr in trial_of_lr  # the searched value itself, not a copy of the nested config
        assert not any(key.startswith(("fixed", "config")) for key in [*run.data.params, *run.data.metrics])
        logged = sorted(client.get_metric_history(run.info.run_id, "val_top1"), key=lambda metric: metric.step)
        assert [metric.step for metric in logged] == [1, 2, 3]  # two epochs, then the final report
        assert [metric.value for metric in logged[:2]] == pytest.approx(epochs[trial_of_lr[lr]])

    # TensorBoard: Tune's event files, one per trial folder, with val_top1 per epoch and the HParams.
    event_files = sorted(study.glob("tune-ce/*/events.out.tfevents.*"))
    assert len(event_files) == 2
    logged_epochs, logged_lrs = [], []
    for path in event_files:
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        scalars = events.Scalars("ray/tune/val_top1")
        assert [event.step for event in scalars] == [1, 2, 3]
        logged_epochs.append(tuple(round(event.value, 3) for event in scalars[:2]))  # event files hold float32
        session = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
        logged_lrs.append(session.session_start_info.hparams["lr"].number_value)  # TensorBoard's HParams view
    assert sorted(logged_epochs) == sorted(tuple(round(value, 3) for value in values) for values in epochs.values())
    assert sorted(logged_lrs) == sorted(results["lr"])

    # study.json says where the runs are; no tracker is only in memory.
    info = json.loads((study / "study.json").read_text())
    assert info["options"]["tracking"] == [f"mlflow:{store}", "tensorboard"]
    assert info["tracking"] == [f"mlflow {store}, experiment t (one run per trial)",
                                f"tensorboard --logdir {study} (event files in each trial folder)"]


@pytest.mark.slow
def test_a_sweep_logs_each_trial_to_an_offline_wandb_run(ray_session, tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    space = tmp_path / "tracked.yaml"
    space.write_text(TINY_SEARCH.replace("num_samples: 2", "num_samples: 1").replace("epochs: 2", "epochs: 1"))
    code = run_study.main(["sweep", "--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "w",
                           "--tracking", "wandb"])
    assert code == 0, capsys.readouterr().err
    offline_runs = list((tmp_path / "runs" / "w").glob("tune-ce/*/wandb/offline-run-*/*.wandb"))
    assert len(offline_runs) == 1
    # The finished run, not a copy taken while it was still being written: its history holds the metrics.
    assert b"val_top1" in offline_runs[0].read_bytes()


def test_config_errors_are_raised_by_the_python_api_too(tmp_path):
    from study.sweep import SweepOptions, plan

    with pytest.raises(ConfigError, match="--tracking 'neptune': unknown tracker"):
        plan("quick", {"epochs": 1}, SweepOptions(storage=str(tmp_path), tracking=("neptune",)))
