"""Sweeps under a real local Ray runtime: tables, resume, divergence, Optuna search with ASHA."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pandas as pd
import pytest

from study.config import ConfigError
from study.sweep import SweepOptions, max_concurrency, run_sweep, trial_resources

TINY_BASE = """
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
"""


def write_space(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + TINY_BASE + body)
    return path


def test_concurrency_counts_the_trial_driver_and_loader_processes():
    one_worker = trial_resources(SweepOptions(workers_per_trial=1))
    assert one_worker == {"CPU": 1, "GPU": 0}
    assert max_concurrency({"CPU": 2}, one_worker) == 2
    two_workers = trial_resources(SweepOptions(workers_per_trial=2), loader_workers=1)
    assert two_workers["CPU"] == 1 + 2 * 2
    assert max_concurrency({"CPU": 2}, two_workers) == 0  # cannot fit: refused up front, never a hang
    assert max_concurrency({"CPU": 16, "GPU": 4}, trial_resources(SweepOptions(workers_per_trial=2,
                                                                              gpus_per_worker=1))) == 2
    assert max_concurrency({"CPU": 64}, one_worker, requested=3) == 3


def test_progress_lines_count_finished_trials_and_report_status(monkeypatch, capsys):
    from types import SimpleNamespace

    from study import sweep

    def trial(name, status, top1=None):  # an enumerated trial as Tune holds it: its hyperparameters are keys
        options = {"configs": {"ce": {"method": "ce", "lr": 0.5}}, "hyperparameters": {"ce": ["lr"]}}
        config = {"trial": name, "varied": "lr", "method": "ce", "seed": 0, "lr": 0.1, "options": options}
        return SimpleNamespace(config=config, trial_id=name, status=status,
                               last_result={"status": "completed", "stage": "final", "test_top1": top1})

    done, running, finishing = trial("a", "TERMINATED", 50.0), trial("b", "RUNNING"), trial("c", "RUNNING", 61.25)
    callback = sweep._trial_line_callback(total=4)
    callback.setup()
    monkeypatch.setattr(sweep, "STATUS_EVERY_SECONDS", 0)
    callback.on_step_end(iteration=1, trials=[done, running, finishing])
    callback.on_trial_complete(iteration=2, trials=[done, running, finishing], trial=finishing)
    # A searched trial that the scheduler stops: named by its method, floats short, stopped_early.
    searched = SimpleNamespace(config={"method": "supcon", "seed": 0, "options": {}, "lr": 0.0654226749},
                               trial_id="e09e",
                               status="RUNNING", last_result={"status": "running", "stage": "contrastive",
                                                              "val_top1": 12.5})
    callback.on_trial_complete(iteration=3, trials=[done, running, finishing, searched], trial=searched)
    status, finished, stopped = capsys.readouterr().out.splitlines()
    assert status == "[0m00s] 2 running, 1/4 finished"
    assert finished == "[2/4, 0m00s] trial c [ce] lr=0.1: completed, top-1 61.25"
    assert stopped == "[2/4, 0m00s] trial supcon-e09e [supcon] lr=0.06542: stopped_early, top-1 12.50"


def test_grid_sweep_writes_tables_counts_divergence_and_resumes(ray_session, tmp_path):
    space = write_space(tmp_path, "tiny", """
design: one_at_a_time
methods: [supcon, ce]
seeds: [0]
vary:
  lr: [0.5, 1.0e+30]
""")
    storage = tmp_path / "runs"
    options = SweepOptions(storage=str(storage), name="tiny-study", max_failures=0, verbose=0)
    study = run_sweep(str(space), {}, options)

    results = pd.read_parquet(study / "results.parquet")
    assert sorted(results["trial_id"]) == sorted(["supcon-base-seed0", "supcon-lr=1e+30-seed0", "ce-base-seed0",
                                                 "ce-lr=1e+30-seed0"])
    assert pd.read_csv(study / "results.csv").shape == results.shape
    by_id = results.set_index("trial_id")
    assert by_id.loc["ce-lr=1e+30-seed0", "status"] == "diverged"  # the sweep went on regardless
    completed = by_id[by_id["status"] == "completed"]
    assert {"supcon-base-seed0", "ce-base-seed0"} <= set(completed.index)
    assert completed["test_top1"].between(0, 100).all()
    assert all(Path(path).is_file() for path in completed["checkpoint"])
    assert set(results["lr"]) == {0.5, 1e30}
    for column in ("study", "method", "varied", "seed", "epochs_run", "val_top1", "wall_seconds", "config"):
        assert column in results
    assert json.loads(by_id.loc["ce-base-seed0", "config"])["method"] == "ce"

    history = pd.read_parquet(study / "history.parquet")
    supcon_base = history[history["trial_id"] == "supcon-base-seed0"]
    assert list(supcon_base["stage"]) == ["contrastive", "linear"]

    # Resuming a finished study re-runs nothing: rows and checkpoints stay byte-identical.
    before = {path: Path(path).read_bytes() for path in completed["checkpoint"]}
    snapshots = SnapshotFiles(Path(study) / "tune")
    run_sweep(str(space), {}, SweepOptions(storage=str(storage), name="tiny-study", resume=True, verbose=0))
    again = pd.read_parquet(study / "results.parquet").set_index("trial_id")
    assert again.loc[completed.index, "test_top1"].equals(completed["test_top1"])
    assert all(Path(path).read_bytes() == data for path, data in before.items())
    # The resumed run wrote Tune's snapshots atomically too (Tuner.restore got the study's filesystem).
    assert snapshots.replaced_never_rewritten() >= {"experiment_state", "search_gen_state"}


class SnapshotFiles:
    """Tune's snapshot files in an experiment folder, each held open: a file replaced by a rename (an atomic
    write) is a new file at the name while the held one keeps the old bytes; a file rewritten in place (what a
    kill can cut short) is the held file itself, changed."""

    PATTERNS = ("experiment_state-*.json", "search_gen_state-*.json", "tuner.pkl")

    def __init__(self, experiment: Path):
        self.held = {path: (path.open("rb"), path.read_bytes())
                     for pattern in self.PATTERNS for path in experiment.glob(pattern)}
        assert len(self.held) == len(self.PATTERNS), sorted(path.name for path in self.held)

    def replaced_never_rewritten(self) -> set[str]:
        """The kinds of snapshot (name before the first '-' or '.') replaced since; fails on one rewritten in place."""
        replaced = set()
        for path, (file, data) in self.held.items():
            with file:
                if os.fstat(file.fileno()).st_ino != path.stat().st_ino:
                    assert file.read() == data, f"{path.name}: the old file changed after it was replaced"
                    replaced.add(path.name.split("-")[0].split(".")[0])
                else:
                    assert file.read() == data, f"{path.name} was rewritten in place"
        return replaced


def test_search_design_runs_optuna_with_asha_and_persists_the_study(ray_session, tmp_path, monkeypatch):
    space = write_space(tmp_path, "searched", """
design: search
methods: [ce]
seeds: [0]
metric: val_top1
distributions:
  lr: {type: float, low: 0.05, high: 1.0, log: true}
num_samples: 3
sampler: TPESampler
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
""")
    monkeypatch.chdir(tmp_path)  # the space by a relative path: trials run in folders of their own
    study = run_sweep(space.name, {"epochs": 2}, SweepOptions(storage=str(tmp_path / "runs"), name="s", verbose=0))
    results = pd.read_parquet(study / "results.parquet")
    assert len(results) == 3 and set(results["varied"]) == {"search"}
    assert set(results["status"]) <= {"completed", "stopped_early"}
    # The sampler is seeded with the space's first seed: the sweep sampled what a seeded study asks for.
    from study.spaces import load_space

    seeded = optuna.create_study(sampler=load_space(str(space)).make_sampler(seed=0))
    expected = [seeded.ask({"lr": optuna.distributions.FloatDistribution(0.05, 1.0, log=True)}).params["lr"]
                for _ in range(3)]
    assert sorted(results["lr"]) == pytest.approx(sorted(expected))
    optuna_study = optuna.load_study(study_name="searched-ce", storage=f"sqlite:///{study / 'optuna.db'}")
    assert len(optuna_study.trials) == 3


def test_invalid_spaces_are_rejected_before_ray_starts(tmp_path):
    space = write_space(tmp_path, "bad", "design: grid\nmethods: [ce]\nvary:\n  temperature: [0.1, 0.2]\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        run_sweep(str(space), {}, SweepOptions(storage=str(tmp_path / "runs")))
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="not a study folder"):
        run_sweep("quick", {}, SweepOptions(storage=str(tmp_path / "runs"), resume=True))


def write_killed_experiment_state(folder: Path) -> None:
    """An experiment state as a driver killed between Tune's two snapshots leaves it: trial 'a' (id-a) finished,
    'b' (id-b) running. The search snapshot, written before, still counts 'a' as live."""
    from study.collection import TRIAL_KEY

    def trial(trial_id: str, name: str, status: str) -> list[str]:
        state = {"trial_id": trial_id, "status": status, "config": {TRIAL_KEY: name}, "relative_logdir": name}
        return [json.dumps(state), json.dumps({})]

    (folder / "experiment_state-2026-12-07_23-00-00.json").write_text(json.dumps(
        {"trial_data": [trial("id-a", "a", "TERMINATED"), trial("id-b", "b", "RUNNING")]}))


def resumed(limiter, folder: Path):
    """`limiter` as Tune restores it from `folder`: its live trials from the (stale) search snapshot."""
    limiter.live_trials, limiter.num_unfinished_live_trials = {"id-a"}, 1
    limiter.searcher.restore_from_dir(str(folder))
    return limiter


def test_a_resumed_trial_list_frees_the_slots_of_trials_the_experiment_state_has_finished(tmp_path):
    """A driver killed between Tune's two snapshots leaves the concurrency limiter's live trials out of step
    with the experiment state: a trial the state has finished stays 'live' forever. At --max-concurrent 1 the
    resumed sweep then waited forever (tests/test_object_store.py hung so, now and then). After a restore the
    live trials are the experiment state's unfinished ones."""
    from ray.tune.search import ConcurrencyLimiter

    from study.collection import TRIAL_KEY
    from study.sweep import _restored_limiter, _trial_list_searcher

    write_killed_experiment_state(tmp_path)
    (tmp_path / "trial-list-state-x.json").write_text(json.dumps({"handed_out": 2, "trials": 3}))
    configs = [{TRIAL_KEY: name} for name in ("a", "b", "c")]

    stuck = resumed(ConcurrencyLimiter(_trial_list_searcher(configs), max_concurrent=1), tmp_path)
    stuck.on_trial_complete("id-b")
    assert stuck.suggest("id-c") is None  # Tune's own limiter: 'a' holds the only slot for good

    limiter = resumed(_restored_limiter(_trial_list_searcher(configs), max_concurrent=1), tmp_path)
    assert limiter.suggest("id-c") is None  # 'b' runs: the limit holds
    limiter.on_trial_complete("id-b")
    assert limiter.suggest("id-c") == {TRIAL_KEY: "c"}  # only 'c' is left to hand out
    limiter.on_trial_complete("id-c")
    assert limiter.suggest("id-d") == "FINISHED"


def test_a_resumed_optuna_search_frees_the_slots_of_trials_the_experiment_state_has_finished(tmp_path):
    """The same for a search design (Optuna): Tune's own limiter stays stuck, ours suggests again once the
    trial the experiment state runs has finished."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from study.sweep import _optuna_searcher, _restored_limiter

    def searcher(kind):
        return kind(space={"lr": optuna.distributions.FloatDistribution(0.01, 1.0, log=True)}, metric="val_top1",
                    mode="max", sampler=optuna.samplers.RandomSampler(seed=0))

    write_killed_experiment_state(tmp_path)
    before_kill = searcher(OptunaSearch)
    assert before_kill.suggest("id-a") and before_kill.suggest("id-b")
    before_kill.save_to_dir(str(tmp_path), "x")
    result = {"val_top1": 50.0}

    stuck = resumed(ConcurrencyLimiter(searcher(OptunaSearch), max_concurrent=1), tmp_path)
    stuck.on_trial_complete("id-b", result)
    assert stuck.suggest("id-c") is None  # Tune's own limiter: 'a' holds the only slot for good

    limiter = resumed(_restored_limiter(searcher(_optuna_searcher), max_concurrent=1), tmp_path)
    assert limiter.suggest("id-c") is None  # 'b' runs: the limit holds
    limiter.on_trial_complete("id-b", result)
    assert set(limiter.suggest("id-c")) == {"lr"}  # a new sample
