"""`run_study.py sweep --dry-run`: the planned trials, per-trial resources and concurrency, without Ray.

Counts and families are derived from the loaded space objects, so the tests follow edits to the space files."""

from __future__ import annotations

import json
import math
import socket
import sys
from pathlib import Path

import pytest

import run_study
import study.sweep
from study.config import Config
from study.spaces import StudySpace, list_spaces, load_space
from study.collection import describe_trial
from study.sweep import (SweepOptions, local_resources, max_concurrency, plan, prepare_trials, trial_configs,
                         trial_resources)

# Small budgets on the embedded dataset; --warmup-epochs keeps warm-up shorter than the 3 epochs.
FLAGS = ["--dataset", "digits", "--epochs", "3", "--warmup-epochs", "0"]
OVERRIDES = {"dataset": "digits", "epochs": "3", "warmup_epochs": "0"}


@pytest.fixture(autouse=True)
def checked_datasets(monkeypatch) -> list[Config]:
    """The configs the dry run checks the dataset of. The embedded digits set is only recorded (building it
    takes ~0.5 s a check); any other dataset goes through the real check."""
    checked, real_check = [], study.sweep.check_dataset

    def check(config: Config) -> None:
        checked.append(config)
        if config.dataset != "digits":
            real_check(config)

    monkeypatch.setattr(study.sweep, "check_dataset", check)
    return checked


def first_space(design: str) -> str:
    names = [name for name in list_spaces() if load_space(name).design == design]
    if not names:
        pytest.skip(f"no shipped space with design {design!r}")
    return "paper_stability" if "paper_stability" in names else names[0]


def dry_run(capsys, storage: Path, *argv: str) -> tuple[int, str, str]:
    code = run_study.main(["sweep", "--dry-run", "--storage", str(storage), *FLAGS, *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def jsonl(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def expected_one_at_a_time(space: StudySpace) -> int:
    """The loader's rule: per method and seed, the base plus each listed value that differs from the base."""
    per_seed = 0
    for method in space.methods:
        base = space.base_config(method, overrides=OVERRIDES)
        per_seed += 1
        for parameter in space.vary.values():
            if method not in parameter.methods:
                continue
            for choice in parameter.choices:
                config = Config.from_dict({**base.to_dict(), **choice.companions, parameter.name: choice.value})
                per_seed += getattr(config, parameter.name) != getattr(base, parameter.name)
    return per_seed * len(space.seeds)


def expected_grid(space: StudySpace) -> int:
    per_seed = 0
    for method in space.methods:
        axes = [p for p in space.vary.values() if method in p.methods]
        per_seed += math.prod(len(p.choices) for p in axes) if axes else 1
    return per_seed * len(space.seeds)


def results_varied(config: dict) -> str:
    """The `varied` column the sweep's results table gives a trial whose Tune config is this."""
    return describe_trial(config, trial_id="t0").varied


def tune_configs(specs: list) -> list[dict]:
    """The Tune configs the sweep gives these trials."""
    shared, configs = trial_configs(specs, {"workers_per_trial": 1, "max_failures": 1, "train_storage": "t"})
    return [{**config, "options": shared} for config in configs]


def test_one_at_a_time_jsonl_and_text(tmp_path, capsys):
    name = first_space("one_at_a_time")
    space = load_space(name)
    storage = tmp_path / "runs"
    code, out, err = dry_run(capsys, storage, "--space", name, "--format", "jsonl")
    assert code == 0, err
    records = jsonl(out)
    assert len(records) == expected_one_at_a_time(space)
    specs = prepare_trials(space, OVERRIDES, SweepOptions())
    assert [r["trial"] for r in records] == [spec.trial_name for spec in specs]
    for record, spec, config in zip(records, specs, tune_configs(specs), strict=True):
        assert set(record) >= {"method", "family", "value", "seed", "config"}
        assert record["family"] == results_varied(config)  # what the results table's `varied` holds
        assert (record["method"], record["seed"]) == (spec.method, spec.seed)
        assert record["config"] == spec.config.to_dict()  # every field, resolved as the trial trains it
        assert set(record["config"]) == {f for f in Config.__dataclass_fields__}
        assert record["config"]["epochs"] == 3 and record["config"]["dataset"] == "digits"
        if record["family"] == "base":
            assert record["value"] is None
        else:
            assert record["config"][record["family"]] == record["value"]

    code, out, err = dry_run(capsys, storage, "--space", name)
    assert code == 0, err
    lines = out.splitlines()
    assert f"space {space.name}" in lines[0] and f"design {space.design}" in lines[0]
    assert f"{len(records)} trials" in lines[0]
    assert "--dataset digits --epochs 3 --warmup-epochs 0" in out
    per_trial = trial_resources(SweepOptions())
    concurrency = max_concurrency(local_resources(), per_trial)
    assert f"concurrency: {concurrency} trials at a time on this machine" in out
    table = lines[lines.index("") + 1:]
    header, rows = table[0], table[1:]
    assert len(rows) == len(records)
    for row, record in zip(rows, records):  # aligned: each column starts where its header does
        assert row[header.index("family"):].split()[0] == record["family"]
        assert row[header.index("trial"):].split()[0] == record["trial"]
    assert not storage.exists()


def test_grid_jsonl(tmp_path, capsys):
    name = first_space("grid")
    space = load_space(name)
    code, out, err = dry_run(capsys, tmp_path / "runs", "--space", name, "--format", "jsonl")
    assert code == 0, err
    records = jsonl(out)
    assert len(records) == expected_grid(space)
    specs = prepare_trials(space, OVERRIDES, SweepOptions())
    for record, config in zip(records, tune_configs(specs), strict=True):
        assert record["family"] == results_varied(config)
        axes = [p.name for p in space.vary.values() if record["method"] in p.methods]
        if axes:
            assert record["family"] == "grid"
            assert set(record["value"]) == set(axes)  # a mapping: the grid cell
            assert all(record["config"][key] == value for key, value in record["value"].items())
        assert record["config"]["epochs"] == 3
    cells = {(r["method"], r["seed"], json.dumps(r["value"], sort_keys=True)) for r in records}
    assert len(cells) == len(records)


def test_search_one_line_per_method(tmp_path, capsys):
    name = first_space("search")
    space = load_space(name)
    storage = tmp_path / "runs"
    code, out, err = dry_run(capsys, storage, "--space", name, "--format", "jsonl")
    assert code == 0, err
    records = jsonl(out)
    assert [r["method"] for r in records] == list(space.methods)
    for record in records:
        assert record["family"] == "search" == results_varied({"method": record["method"], "seed": 0, "options": {}})
        searched = {n for n, d in space.distributions.items() if record["method"] in d.methods}
        assert set(record["value"]) == searched
        assert record["samples"] == space.num_samples and record["seed"] == space.seeds[0]
        expected = space.config_for(record["method"], {}, space.seeds[0], {**OVERRIDES, "num_workers": 1,
                                                                            "use_gpu": False})
        assert record["config"] == expected.to_dict() and record["config"]["epochs"] == 3

    code, out, err = dry_run(capsys, storage, "--space", name)
    assert code == 0, err
    assert f"{space.num_samples * len(space.methods)} trials" in out.splitlines()[0]
    assert not storage.exists()


def test_address_leaves_concurrency_out_and_contacts_nothing(tmp_path, capsys):
    with socket.socket() as sock:  # nothing listens there: contacting it would fail the command
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, err = dry_run(capsys, tmp_path / "runs", "--space", "quick", "--address", f"127.0.0.1:{port}",
                             "--workers-per-trial", "2", "--gpus-per-worker", "1")
    assert code == 0, err
    assert "concurrency: not computed: --address" in out and "at a time" not in out
    assert "3 CPUs, 2 GPUs" in out  # per trial: 2 workers + the trial's driver CPU
    planned = plan("quick", OVERRIDES, SweepOptions(storage=str(tmp_path / "runs"), address="auto",
                                                    workers_per_trial=2, gpus_per_worker=1))
    assert planned.concurrency is None and planned.available is None


def test_local_concurrency_is_the_sweeps_rule(tmp_path):
    storage = str(tmp_path / "runs")
    options = SweepOptions(storage=storage, workers_per_trial=2, gpus_per_worker=1)
    planned = plan("quick", OVERRIDES, options, available={"CPU": 16, "GPU": 4})
    assert planned.per_trial == trial_resources(options) == {"CPU": 3, "GPU": 2}
    assert planned.concurrency == max_concurrency({"CPU": 16, "GPU": 4}, planned.per_trial) == 2
    capped = plan("quick", OVERRIDES, SweepOptions(storage=storage, max_concurrent=1), available={"CPU": 16, "GPU": 0})
    assert capped.concurrency == 1


@pytest.mark.parametrize("space", ["quick", "lr_search"])
def test_no_ray_and_nothing_written(tmp_path, capsys, monkeypatch, checked_datasets, space):
    """With every Ray module made unimportable, the dry run still plans (so Ray is neither imported nor
    started); the usual dataset check ran; an existing --storage folder is left exactly as it was."""
    if sys.modules.get("ray") is not None:  # imported by an earlier test: modules already bound to it must not start it
        monkeypatch.setattr(sys.modules["ray"], "init", lambda *a, **k: pytest.fail("the dry run started Ray"))
    for name in [name for name in sys.modules if name == "ray" or name.startswith("ray.")] + ["ray"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import ray...` now raises ImportError
    storage = tmp_path / "runs"
    storage.mkdir()
    before = storage.stat().st_mtime_ns
    for output in ("text", "jsonl"):
        code, out, err = dry_run(capsys, storage, "--space", space, "--format", output)
        assert code == 0, err
        assert out and not err
    assert checked_datasets and all(config.dataset == "digits" for config in checked_datasets)
    assert list(storage.iterdir()) == [] and storage.stat().st_mtime_ns == before
    monkeypatch.undo()


@pytest.mark.parametrize(("argv", "named"), [
    (["--format", "xml"], "--format"),
    (["--space", "no_such_space"], "no_such_space"),
    (["--epochs", "0"], "epochs=0"),
    (["--workers-per-trial", "0"], "--workers-per-trial 0"),
    (["--dataset", "cifar10", "--data-root", "/nonexistent-data"], "cifar10 not found"),  # the real check
    (["--gpus-per-worker", "1", "--max-concurrent", "2"] if not local_resources()["GPU"] else ["--max-concurrent", "0"],
     "GPU" if not local_resources()["GPU"] else "--max-concurrent 0"),
], ids=["format", "space", "epochs", "workers", "dataset", "resources"])
def test_bad_input_exits_2_in_one_line(tmp_path, capsys, argv, named):
    storage = tmp_path / "runs"
    try:
        code, _, err = dry_run(capsys, storage, "--space", "quick", *argv)
    except SystemExit as exit_:  # argparse's own errors (bad choices) exit from the parser
        code, err = exit_.code, capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and named in err and err.count("\n") == 1
    assert not storage.exists()


def test_format_needs_dry_run(tmp_path, capsys):
    code = run_study.main(["sweep", "--space", "quick", "--format", "jsonl", "--storage", str(tmp_path / "runs")])
    assert code == 2 and "--dry-run" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_storage_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    code = run_study.main(["sweep", "--space", "quick", "--dry-run", "--storage", str(target), *FLAGS])
    err = capsys.readouterr().err
    assert code == 2 and "is a file" in err and err.count("\n") == 1
    assert target.read_text() == "x"


def test_existing_study_needs_resume_as_in_a_sweep(tmp_path, capsys):
    study = tmp_path / "runs" / "quick-digits"
    study.mkdir(parents=True)
    (study / "study.json").write_text("{}")
    code, _, err = dry_run(capsys, tmp_path / "runs", "--space", "quick")
    assert code == 2 and "pass --resume" in err and err.count("\n") == 1
    code, out, err = dry_run(capsys, tmp_path / "runs", "--space", "quick", "--resume")
    assert code == 0 and "--resume continues it" in out
    assert sorted(path.name for path in study.iterdir()) == ["study.json"]
