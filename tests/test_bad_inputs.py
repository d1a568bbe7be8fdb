"""Bad input anywhere (CLI flags, YAML configs, space files, data paths, corrupted-set folders): exit code 2, one
line naming the offending value, and nothing written.

Complements tests/test_cli.py (train flags, a YAML typo, a storage file, an unanswering address for `train`)
and tests/test_config.py (every Config field class); RELIABILITY.md lists them all. Cases run through
`run_study.main` in this process, with Ray forbidden to start (each must be rejected before Ray), from a
scratch working directory whose whole tree is compared before and after. A few run as real subprocesses.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

import run_study
from study.checkpoint import save_classifier
from study.config import Config
from study.models import Classifier, build_encoder

REPO = Path(__file__).resolve().parents[1]
BASE = "base: {dataset: digits, model: resnet18, width: 0.0625, epochs: 1, batch_size: 64}\n"
GRID = "design: grid\nmethods: [ce]\n" + BASE


@dataclass(frozen=True)
class Case:
    """`argv(root)` builds the command in the scratch folder `root`; `named` must appear in the message."""

    id: str
    argv: Callable[[Path], list[str]]
    named: str


def space(root: Path, name: str, text: str) -> str:
    path = root / "spaces" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return str(path)


def image_tree(root: Path, layout: dict[str, int]) -> Path:
    """An imagefolder-style tree: {'train/a': 3, ...} -> that many 8x8 PNGs per folder."""
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            Image.fromarray(np.full((8, 8, 3), index * 20, np.uint8)).save(root / folder / f"{index}.png")
    return root


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def not_a_study(root: Path) -> list[str]:
    (root / "runs" / "someone-elses-folder").mkdir(parents=True)
    (root / "runs" / "someone-elses-folder" / "notes.txt").write_text("not a study")
    return ["sweep", "--space", "quick", "--storage", "runs", "--name", "someone-elses-folder", "--resume"]


def storage_file(root: Path) -> list[str]:
    (root / "runs.txt").write_text("a file")
    return ["sweep", "--space", "quick", "--storage", "runs.txt"]


CASES = [
    # ---- the sweep command line
    Case("unknown space name", lambda r: ["sweep", "--space", "nope"], "'nope'"),
    Case("missing space file", lambda r: ["sweep", "--space", "spaces/missing.yaml"], "spaces/missing.yaml"),
    Case("workers per trial 0", lambda r: ["sweep", "--workers-per-trial", "0"], "--workers-per-trial 0"),
    Case("negative gpus per worker", lambda r: ["sweep", "--gpus-per-worker", "-1"], "--gpus-per-worker -1"),
    Case("max concurrent 0", lambda r: ["sweep", "--max-concurrent", "0"], "--max-concurrent 0"),
    Case("override out of range", lambda r: ["sweep", "--space", "quick", "--epochs", "0"], "epochs=0"),
    Case("override of a varied field", lambda r: ["sweep", "--space", "quick", "--lr", "0.1"], "'lr'"),
    Case("resume of a folder that is not a study", not_a_study, "someone-elses-folder"),
    # a name is one folder under --storage: a stray '..' would write outside it (issue 13)
    Case("sweep name that leaves the storage", lambda r: ["sweep", "--space", "quick", "--name", "../../elsewhere"],
         "'../../elsewhere'"),
    Case("sweep name with a slash", lambda r: ["sweep", "--space", "quick", "--name", "a/b"], "'a/b'"),
    Case("train name that leaves the storage", lambda r: ["train", "--name", "../elsewhere"], "'../elsewhere'"),
    Case("storage that is a file", storage_file, "runs.txt"),
    Case("storage beneath a file", lambda r: ["sweep", "--storage", str(storage_file(r)[-1]) + "/runs"], "runs.txt"),
    Case("storage on a read-only filesystem", lambda r: ["sweep", "--storage", "/sys/supcon-runs"], "/sys/supcon-runs"),
    Case("sweep address that does not answer",
         lambda r: ["sweep", "--space", "quick", "--address", f"127.0.0.1:{closed_port()}"], "127.0.0.1:"),
    Case("collect of a folder that is not a study", lambda r: ["collect", "--study", str(r)], "not a study folder"),
    Case("report of a folder that is not a study", lambda r: ["report", "--study", "nowhere"], "nowhere"),
    # ---- space files: unknown names of every kind, typos, ranges, types, empty grids, method mismatches
    Case("space: top-level key typo", lambda r: ["sweep", "--space", space(r, "s", "desing: grid\nmethods: [ce]\n")],
         "desing: unknown key (did you mean 'design'?)"),
    Case("space: unknown design", lambda r: ["sweep", "--space", space(r, "s", "design: random\nmethods: [ce]\n" + BASE)],
         "'random'"),
    Case("space: unknown method", lambda r: ["sweep", "--space", space(r, "s", GRID.replace("[ce]", "[supcon, triplet]") + "vary: {lr: [0.1]}\n")],
         "'triplet'"),
    Case("space: empty grid", lambda r: ["sweep", "--space", space(r, "s", GRID + "vary: {lr: []}\n")], "vary.lr"),
    Case("space: temperature varied for ce", lambda r: ["sweep", "--space", space(r, "s", GRID + "vary: {temperature: [0.1, 0.5]}\n")],
         "method 'ce' cannot take temperature"),
    Case("space: varied-field typo", lambda r: ["sweep", "--space", space(r, "s", GRID + "vary: {temprature: [0.1]}\n")],
         "'temprature'"),
    Case("space: varied value out of range", lambda r: ["sweep", "--space", space(r, "s", GRID + "vary: {lr: [0.1, -1]}\n")],
         "lr=-1.0"),
    Case("space: wrong type in base", lambda r: ["sweep", "--space", space(r, "s", GRID.replace("epochs: 1", "epochs: three") + "vary: {lr: [0.1]}\n")],
         "epochs='three'"),
    Case("space: selects on the test split", lambda r: ["sweep", "--space", space(r, "s", GRID + "metric: test_top1\nvary: {lr: [0.1]}\n")],
         "'test_top1'"),
    Case("space: negative seed", lambda r: ["sweep", "--space", space(r, "s", GRID + "seeds: [-1]\nvary: {lr: [0.1]}\n")],
         "seed -1"),
    Case("space: unknown Optuna sampler", lambda r: ["sweep", "--space", space(r, "s", "design: search\nmethods: [ce]\n" + BASE
         + "distributions: {lr: {type: float, low: 0.01, high: 1.0}}\nnum_samples: 2\nsampler: MagicSampler\n")], "'MagicSampler'"),
    Case("space: search bounds reversed", lambda r: ["sweep", "--space", space(r, "s", "design: search\nmethods: [ce]\n" + BASE
         + "distributions: {lr: {type: float, low: 1.0, high: 0.01}}\nnum_samples: 2\n")], "low=1.0, high=0.01"),
    Case("space: no samples", lambda r: ["sweep", "--space", space(r, "s", "design: search\nmethods: [ce]\n" + BASE
         + "distributions: {lr: {type: float, low: 0.01, high: 1.0}}\nnum_samples: 0\n")], "num_samples"),
    Case("space: not YAML", lambda r: ["sweep", "--space", space(r, "s", "design: grid\nmethods: [ce\n")], "not valid YAML"),
    # ---- YAML run configs
    Case("config: missing file", lambda r: ["train", "--config", "missing.yaml"], "missing.yaml"),
    Case("config: unknown stem", lambda r: ["train", "--config", space(r, "c", "stem: tiny\n")], "stem='tiny'"),
    Case("config: list for an int", lambda r: ["train", "--config", space(r, "c", "epochs: [1, 2]\n")], "epochs=[1, 2]"),
    Case("config: fraction out of range", lambda r: ["train", "--config", space(r, "c", "val_fraction: 1.5\n")],
         "val_fraction=1.5"),
    # ---- data paths: missing datasets and wrong layouts, before Ray starts
    Case("imagefolder that does not exist", lambda r: ["train", "--dataset", f"imagefolder:{r}/imagenet"], "/imagenet: no such directory"),
    Case("imagefolder without train/", lambda r: ["train", "--dataset", f"imagefolder:{image_tree(r / 'flat', {'a': 2, 'b': 2})}"],
         "found ['a', 'b']"),
    Case("imagefolder without val/ or test/", lambda r: ["sweep", "--dataset", f"imagefolder:{image_tree(r / 'half', {'train/a': 2})}"],
         "found ['train']"),
    Case("cifar not downloaded", lambda r: ["train", "--dataset", "cifar100", "--data-root", "empty"],
         "empty/cifar-100-python"),
    # ---- robustness command
    Case("robustness: checkpoint that does not exist", lambda r: ["robustness", "--checkpoint", "nope/model.pt"],
         "nope/model.pt"),
    Case("robustness: unknown corruption", lambda r: ["robustness", "--checkpoint", space(r, "c", "x"), "--corruptions", "fog,smog"],
         "'smog'"),
    Case("robustness: corrupted folder missing", lambda r: ["robustness", "--checkpoint", space(r, "c", "x"), "--corrupted", "nodir"],
         "nodir"),
    Case("robustness: batch size 0", lambda r: ["robustness", "--checkpoint", space(r, "c", "x"), "--batch-size", "0"],
         "--batch-size 0"),
]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and modification time."""
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*"))}


@pytest.fixture
def no_ray(monkeypatch):
    """Bad input is rejected before Ray starts: starting it fails the test."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init called for a bad input")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_exits_2_naming_the_value_and_writes_nothing(case, tmp_path, monkeypatch, capsys, no_ray):
    monkeypatch.chdir(tmp_path)
    argv = case.argv(tmp_path)  # builds the scratch files the case needs
    before = tree(tmp_path)
    code = run_study.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert case.named in err, err
    assert tree(tmp_path) == before


@pytest.mark.parametrize("argv, named", [
    (["train", "--temprature", "0.1"], "--temprature"),  # a flag typo
    (["sweeep"], "'sweeep'"),  # a command typo
], ids=["flag typo", "command typo"])
def test_unknown_flags_and_commands_exit_2_naming_them(argv, named, tmp_path, monkeypatch, capsys, no_ray):
    """argparse rejects them itself: exit 2, its usage line, then one `error:` line naming the word."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_study.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert named in err.strip().splitlines()[-1] and "error:" in err.strip().splitlines()[-1]
    assert not list(tmp_path.iterdir())


def test_imagenet_c_folder_missing_a_severity(ray_session, tmp_path, monkeypatch, capsys):
    """Checked in the driver before any evaluation task runs (the command connects to Ray first)."""
    monkeypatch.chdir(tmp_path)
    encoder = build_encoder("resnet18", width=0.0625, image_size=16)
    save_classifier(tmp_path / "model.pt", Classifier(encoder, 10), {
        "config": Config.from_dict({"width": 0.0625}).to_dict(), "num_classes": 10, "image_size": 16,
        "mean": [0.5] * 3, "std": [0.25] * 3})
    imagenet_c = tmp_path / "imagenet-c"
    image_tree(imagenet_c, {f"gaussian_noise/{severity}/n01440764": 1 for severity in (1, 2, 4, 5)})
    before = tree(tmp_path)
    code = run_study.main(["robustness", "--checkpoint", "model.pt", "--corrupted", str(imagenet_c),
                           "--corruptions", "gaussian_noise"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{imagenet_c}/gaussian_noise/3 is missing" in err and "severity 3" in err
    assert tree(tmp_path) == before


def test_a_checkpoint_that_is_not_one(ray_session, tmp_path, monkeypatch, capsys):
    """A file that torch's weights-only loading refuses: one line, without torch's advice to load it unsafely."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.pt").write_text("my notes, not a model")
    before = tree(tmp_path)
    code = run_study.main(["robustness", "--checkpoint", "notes.pt", "--corruptions", "fog"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: checkpoint notes.pt is unreadable (") and err.count("\n") == 1
    assert "weights_only" not in err
    assert tree(tmp_path) == before


@pytest.mark.slow  # real processes, each importing torch and Ray
@pytest.mark.parametrize("argv, named", [
    (["sweep", "--space", "nope"], "'nope'"),
    (["train", "--dataset", "imagefolder:/nonexistent/imagenet"], "/nonexistent/imagenet"),
    (["sweep", "--address", "127.0.0.1:{port}"], "no Ray cluster answers"),
], ids=["unknown space", "missing dataset", "address that does not answer"])
def test_bad_input_in_a_real_process(argv, named, tmp_path):
    """The installed entry point as a user runs it: exit status 2, one stderr line, no Ray, nothing written."""
    argv = [arg.format(port=closed_port()) for arg in argv]
    done = subprocess.run([sys.executable, str(REPO / "run_study.py"), *argv, "--storage", "runs"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and named in done.stderr
    assert "Started a local Ray instance" not in done.stdout + done.stderr
    assert not list(tmp_path.iterdir())
