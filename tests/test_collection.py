"""Trials as Tune sees them (hyperparameters as their own config keys) and reading a study without running its code.

- The trial format: `describe_trial` reads the current format and the one before it; every enumerated trial's
  Tune config rebuilds exactly the config it was planned with.
- A tiny real sweep: each hyperparameter is a key of the trial config Tune sees (`ExperimentAnalysis.dataframe()`
  has `config/lr`, Tune's `evaluated_params` are the hyperparameters and nothing runtime); then pickles that run
  code are planted wherever Tune pickles in that study folder, and `collect`, `build_report` and the robustness
  listing never run them, while `ExperimentAnalysis` on the same folder does.
- A study in the format of the code before (each trial's spec one JSON string under `spec`) resumes to the end.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from study.collection import describe_trial
from study.spaces import load_space
from study.sweep import SweepOptions, prepare_trials, run_sweep, trial_configs

TINY_SPACE = """name: {name}
base:
  dataset: digits
  model: resnet18
  width: 0.0625
  epochs: 1
  linear_epochs: 1
  batch_size: 64
  linear_batch_size: 64
  augmentation: crop_flip
  lr: 0.5
design: one_at_a_time
methods: [ce]
seeds: [0]
vary:
  lr: [0.5, 0.1]
"""
TRIAL_OPTIONS = {"workers_per_trial": 1, "max_failures": 0, "train_storage": "/nowhere/train_runs"}


def tiny_space(folder: Path, name: str = "tiny") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(TINY_SPACE.format(name=name))
    return path


# ----------------------------------------------------------------------------------------- the trial format
def test_enumerated_trial_configs_have_flat_hyperparameters_and_rebuild_every_trial():
    # optimizer_pairs varies optimizers with companion fields (lr, schedule) and two methods: the hardest case.
    space = load_space("optimizer_pairs")
    trials = prepare_trials(space, {}, SweepOptions())
    shared, configs = trial_configs(trials, TRIAL_OPTIONS)
    assert len(configs) == len(trials)
    for spec, config in zip(trials, configs, strict=True):
        assert config["trial"] == spec.trial_name and config["method"] == spec.method and config["seed"] == spec.seed
        for name, value in spec.hyperparameters.items():  # each varied hyperparameter is its own key
            assert config[name] == value
        assert all(not isinstance(value, dict) for value in config.values())  # flat: nothing nested
        assert "options" not in config and "workers_per_trial" not in config  # runtime stays in the shared part
        described = describe_trial({**config, "options": shared})
        assert described.config == spec.config.to_dict()  # the trial trains what was planned
        assert (described.name, described.varied, described.params) == (spec.trial_name, spec.varied,
                                                                          spec.hyperparameters)
        assert described.options["workers_per_trial"] == 1


def test_describe_trial_reads_the_format_before_and_searched_trials():
    spec = {"trial_name": "ce-lr=0.1-seed0", "method": "ce", "varied": "lr", "params": {"lr": 0.1}, "seed": 3,
            "config": {"method": "ce", "lr": 0.1}}
    old = describe_trial({"spec": json.dumps(spec), "options": TRIAL_OPTIONS})
    assert (old.name, old.method, old.varied, old.params, old.seed, old.config) == (
        "ce-lr=0.1-seed0", "ce", "lr", {"lr": 0.1}, 3, {"method": "ce", "lr": 0.1})
    assert old.options == TRIAL_OPTIONS
    fixed = {"method": "supcon", "space_file": "s.yaml", "space_text": "name: s", "overrides": {}, "seed": 0,
             "options": TRIAL_OPTIONS}
    old_searched = describe_trial({"fixed": fixed, "lr": 0.25}, trial_id="e09e")
    searched = describe_trial({"method": "supcon", "seed": 0, "lr": 0.25,
                               "options": {"space_file": "s.yaml", "space_text": "name: s", "overrides": {},
                                           **TRIAL_OPTIONS}}, trial_id="e09e")
    for described in (old_searched, searched):
        assert (described.name, described.method, described.varied, described.params, described.seed) == (
            "e09e", "supcon", "search", {"lr": 0.25}, 0)
        assert described.config is None and described.options["space_text"] == "name: s"
        assert described.options["workers_per_trial"] == 1
    with pytest.raises(ValueError, match="not a trial config"):
        describe_trial({"lr": 0.1})


# ----------------------------------------------------------------------------------------- a real sweep
class _RunsCode:
    """A pickle that, when loaded, creates `marker` (as code planted in a shared study folder would run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant_pickles(study: Path, markers: Path) -> list[Path]:
    """Replace every pickle Tune left in the study folder by one that runs code, also the cloudpickled blobs in
    its experiment-state JSON. Returns the planted files."""
    from ray._common.utils import binary_to_hex

    planted = []
    for path in sorted(study.rglob("*")):  # tuner.pkl, each trial's params.pkl, the search algorithm's state
        if path.is_file() and (path.suffix == ".pkl" or path.read_bytes()[:1] == b"\x80"):  # a pickle's first byte
            path.write_bytes(pickle.dumps(_RunsCode(markers / f"{path.parent.name}-{path.name}")))
            planted.append(path)
    for path in sorted(study.rglob("experiment_state-*.json")):
        state = json.loads(path.read_text())
        for index, pair in enumerate(state["trial_data"]):
            trial, metadata = json.loads(pair[0]), json.loads(pair[1])
            blob = binary_to_hex(pickle.dumps(_RunsCode(markers / f"experiment-state-trial{index}")))
            trial["results"] = blob  # a field Tune stores as a cloudpickle hex string
            trial["storage"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": blob}  # Tune's JSON fallback
            metadata["checkpoint_manager"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": blob}
            state["trial_data"][index] = [json.dumps(trial), json.dumps(metadata)]
        path.write_text(json.dumps(state))
        planted.append(path)
    return planted


@pytest.mark.slow
def test_hyperparameters_reach_tune_as_keys_and_reading_a_study_runs_none_of_its_pickles(ray_session, tmp_path):
    from ray.tune import ExperimentAnalysis

    from analysis.report import build_report
    from study.robustness import study_checkpoints
    from study.sweep import collect

    study = run_sweep(str(tiny_space(tmp_path)), {}, SweepOptions(storage=str(tmp_path / "runs"), name="tiny",
                                                                  max_failures=0)).local_path
    experiment = study / "tune"
    frame = ExperimentAnalysis(str(experiment)).dataframe()
    assert sorted(frame["config/lr"]) == [0.1, 0.5]  # its own column, not inside a JSON string
    assert set(frame["config/method"]) == {"ce"} and set(frame["config/seed"]) == {0}
    assert "config/spec" not in frame
    state = json.loads(sorted(experiment.glob("experiment_state-*.json"))[-1].read_text())
    # What Tune counts as a trial's hyperparameters (TensorBoard's HParams view, its progress table): no runtime.
    evaluated = [json.loads(trial)["evaluated_params"] for trial, _ in state["trial_data"]]
    assert sorted(evaluated, key=lambda params: params["lr"]) == [
        {"trial": "ce-lr=0.1-seed0", "varied": "lr", "method": "ce", "seed": 0, "lr": 0.1},
        {"trial": "ce-base-seed0", "varied": "base", "method": "ce", "seed": 0, "lr": 0.5}]
    before = pd.read_parquet(study / "results.parquet")
    history_before = pd.read_parquet(study / "history.parquet")
    assert set(before["status"]) == {"completed"} and sorted(before["lr"]) == [0.1, 0.5]

    markers = tmp_path / "markers"
    markers.mkdir()
    planted = _plant_pickles(study, markers)
    assert {path.name.split("-")[0] for path in planted} >= {"tuner.pkl", "params.pkl", "search_gen_state",
                                                             "experiment_state"}
    results, history = collect(study)
    report_html, _ = build_report(study, n_boot=50)
    listed = study_checkpoints(study)
    assert list(markers.iterdir()) == []  # nothing planted ran
    assert report_html.is_file() and set(listed) == set(before["trial_id"])
    columns = ["trial_id", "status", "lr", "test_top1", "checkpoint", "epochs_run"]
    pd.testing.assert_frame_equal(results[columns].sort_values("trial_id").reset_index(drop=True),
                                  before[columns].sort_values("trial_id").reset_index(drop=True))
    pd.testing.assert_frame_equal(history, history_before)
    # The same folder read by Tune's own reader runs the planted code: the plants are real.
    with contextlib.suppress(Exception):  # what it unpickled is no Tune object, so it then fails: irrelevant
        ExperimentAnalysis(str(experiment))
    assert list(markers.iterdir())


def _old_format_spec(spec) -> str:
    """An enumerated trial's spec as the code before this format carried it in its Tune config (`spec`)."""
    return json.dumps({"trial_name": spec.trial_name, "method": spec.method, "varied": spec.varied,
                       "params": spec.hyperparameters, "seed": spec.seed, "config": spec.config.to_dict()})


@pytest.mark.slow
def test_a_study_in_the_format_before_resumes_to_the_end(ray_session, tmp_path):
    """The first run is the old driver's Tuner (the `spec` JSON strings under grid_search) with a trainable that
    fails every trial; resuming with today's code retries them (resume_errored) from their old-format configs."""
    from ray import tune

    from study import sweep

    space_path = tiny_space(tmp_path, "old")
    options = SweepOptions(storage=str(tmp_path / "runs"), name="old-study", max_failures=0)
    space = load_space(str(space_path))
    trials = prepare_trials(space, {}, options)
    study = tmp_path / "runs" / "old-study"
    study.mkdir(parents=True)
    (study / "study.json").write_text(json.dumps({"space": space.name, "design": space.design}))
    trial_options = {"workers_per_trial": 1, "max_failures": 0, "train_storage": str(study / "train_runs")}

    def run_trial(config):  # named as the old trainable: the restored trials refer to it by name
        raise RuntimeError("the first run fails")

    tuner = tune.Tuner(
        tune.with_resources(sweep._restoring_latest_available(run_trial), {"CPU": 1}),
        param_space={"spec": tune.grid_search([_old_format_spec(spec) for spec in trials]), "options": trial_options},
        tune_config=tune.TuneConfig(max_concurrent_trials=2, trial_dirname_creator=sweep._trial_dirname,
                                    trial_name_creator=sweep._trial_name),
        run_config=tune.RunConfig(name="tune", storage_path=str(study), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    assert tuner.fit().num_errors == len(trials)
    failed = sweep.collect(study)[0]
    assert set(failed["status"]) == {"failed"} and set(failed["error"]) == {"RuntimeError: the first run fails"}

    run_sweep(str(space_path), {}, SweepOptions(storage=options.storage, name="old-study", resume=True))
    results = pd.read_parquet(study / "results.parquet").set_index("trial_id")
    assert sorted(results.index) == sorted(spec.trial_name for spec in trials)
    assert set(results["status"]) == {"completed"}
    assert results.loc["ce-lr=0.1-seed0", "lr"] == 0.1 and results.loc["ce-lr=0.1-seed0", "varied"] == "lr"
    assert all(Path(path).is_file() for path in results["checkpoint"])
    assert json.loads(results.loc["ce-base-seed0", "config"])["lr"] == 0.5


def test_progress_line_of_an_old_format_trial():
    from study import sweep

    spec = prepare_trials(load_space("quick"), {"epochs": 1}, SweepOptions())[0]
    trial = SimpleNamespace(config={"spec": _old_format_spec(spec), "options": TRIAL_OPTIONS}, trial_id="a_00000",
                            status="TERMINATED", last_result={"stage": "final", "test_top1": 50.0})
    assert sweep._trial_line(trial).startswith(f"trial {spec.trial_name} [{spec.method}] ")


# ----------------------------------------------------------------------------------------- errors Tune left out
def _experiment_state(experiment: Path, *trials: tuple[str, str, dict]) -> None:
    """An experiment state of enumerated trials (Tune id, Tune status, last result), each with an error.txt."""
    options = {"configs": {"ce": {"method": "ce", "lr": 0.5}}, "hyperparameters": {"ce": ["lr"]}}
    data = []
    for trial_id, status, last in trials:
        config = {"trial": f"ce-{trial_id}", "varied": "lr", "method": "ce", "seed": 0, "lr": 0.1, "options": options}
        (experiment / trial_id).mkdir(parents=True)
        (experiment / trial_id / "error.txt").write_text("Failure # 1\nValueError: from error.txt\n")
        state = {"trial_id": trial_id, "status": status, "config": config, "relative_logdir": trial_id}
        data.append([json.dumps(state), json.dumps({"last_result": last})])
    (experiment / "experiment_state-2026-12-08_00-00-00.json").write_text(json.dumps({"trial_data": data}))


def test_a_trial_tune_left_running_reads_failed_when_the_sweep_recorded_its_error(tmp_path):
    """Tune 2.60 keeps a trial whose node was lost RUNNING in its experiment state when it errors it; the sweep's
    errors file says it failed. Tune's finished states win (a resumed sweep reran the trial); without the file,
    nothing changes."""
    from pyarrow.fs import LocalFileSystem

    from study.collection import collect_trials
    from study.tables import TRIAL_ERRORS_FILE

    final = {"stage": "final", "status": "completed", "test_top1": 50.0, "epochs_run": 1}
    experiment = tmp_path / "tune"
    _experiment_state(experiment, ("lost", "RUNNING", {"stage": "ce", "epoch": 1}), ("rerun", "TERMINATED", final),
                      ("raised", "ERROR", {}), ("running", "RUNNING", {"stage": "ce", "epoch": 1}))

    def table() -> dict[str, tuple[str, str]]:
        results, _ = collect_trials(LocalFileSystem(), str(tmp_path), "tiny")
        return {row.trial_id: (row.status, row.error) for row in results.itertuples()}

    before = {"ce-lost": ("pending", ""), "ce-rerun": ("completed", ""),
              "ce-raised": ("failed", "ValueError: from error.txt"), "ce-running": ("pending", "")}
    assert table() == before
    recorded = {"lost": "ActorDiedError: node lost", "rerun": "stale", "raised": "stale"}
    (tmp_path / TRIAL_ERRORS_FILE).write_text(json.dumps({"tune-other": {"running": "another experiment's"}}))
    assert table() == before
    (tmp_path / TRIAL_ERRORS_FILE).write_text(json.dumps({"tune": recorded}))
    assert table() == {**before, "ce-lost": ("failed", "ActorDiedError: node lost")}


def test_the_errors_callback_records_an_errored_trial_until_it_starts_again(tmp_path):
    from pyarrow.fs import LocalFileSystem

    from study import sweep
    from study.storage import atomic_local_filesystem
    from study.tables import TRIAL_ERRORS_FILE

    error_file = tmp_path / "staging" / "error.txt"
    error_file.parent.mkdir()
    error_file.write_text("Failure # 1 (occurred at 2026-12-08)\nray.exceptions.ActorDiedError: The actor died\n")
    # As Tune holds them: error.txt in the driver's staging folder, the storage the experiment is written to.
    lost = SimpleNamespace(trial_id="a_1", error_file=str(error_file), storage=SimpleNamespace(
        storage_filesystem=atomic_local_filesystem(), experiment_fs_path=str(tmp_path / "tune")))
    other = SimpleNamespace(trial_id="b_2", error_file=None, storage=SimpleNamespace(
        storage_filesystem=LocalFileSystem(), experiment_fs_path=str(tmp_path / "tune")))
    callback = sweep._trial_errors_callback()
    recorded = tmp_path / TRIAL_ERRORS_FILE  # in the study folder, beside the experiment's

    callback.on_trial_start(iteration=1, trials=[lost, other], trial=lost)
    assert not recorded.exists()  # nothing to clear: nothing written
    callback.on_trial_error(iteration=2, trials=[lost, other], trial=lost)
    callback.on_trial_error(iteration=3, trials=[lost, other], trial=other)  # no error.txt: "failed"
    assert json.loads(recorded.read_text()) == {"tune": {"a_1": "ray.exceptions.ActorDiedError: The actor died",
                                                         "b_2": "failed"}}
    callback.on_trial_start(iteration=4, trials=[lost, other], trial=lost)  # a resumed sweep runs it again
    assert json.loads(recorded.read_text()) == {"tune": {"b_2": "failed"}}
    from ray import cloudpickle

    cloudpickle.loads(cloudpickle.dumps(callback))  # Tune pickles it into tuner.pkl
