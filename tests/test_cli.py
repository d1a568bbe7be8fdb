"""The command line: bad input exits 2 with a one-line message naming the value, and writes nothing."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import run_study


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = run_study.main(list(argv))
    return code, capsys.readouterr().err


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BAD_TRAIN_ARGS = [
    (["--method", "triplet"], "method='triplet'"),
    (["--temperature", "0"], "temperature=0.0"),
    (["--lr", "-1"], "lr=-1.0"),
    (["--batch-size", "1"], "batch_size=1"),
    (["--epochs", "0"], "epochs=0"),
    (["--width", "0"], "width=0.0"),
    (["--num-workers", "0"], "num_workers=0"),
    (["--model", "vgg"], "model='vgg'"),
    (["--dataset", "mnist"], "dataset='mnist'"),
    (["--augmentation", "mixup"], "augmentation='mixup'"),
    (["--optimizer", "adam"], "optimizer='adam'"),
    (["--schedule", "poly"], "schedule='poly'"),
    (["--epochs", "many"], "epochs='many'"),
]


@pytest.mark.parametrize(("args", "named"), BAD_TRAIN_ARGS, ids=[" ".join(a) for a, _ in BAD_TRAIN_ARGS])
def test_bad_train_flags_exit_2_and_write_nothing(tmp_path, capsys, args, named):
    storage = tmp_path / "runs"
    code, err = run_cli(capsys, "train", "--storage", str(storage), *args)
    assert code == 2
    assert err.startswith("error: ") and named in err and err.count("\n") == 1
    assert not storage.exists()


def test_unknown_key_in_yaml_config(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("method: supcon\ntemprature: 0.1\n")
    code, err = run_cli(capsys, "train", "--config", str(config), "--storage", str(tmp_path / "runs"))
    assert code == 2 and "temprature" in err and "did you mean 'temperature'" in err


def test_storage_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    code, err = run_cli(capsys, "train", "--storage", str(target))
    assert code == 2 and "is a file" in err


def test_unanswering_address_fails_within_seconds(tmp_path, capsys):
    started = time.monotonic()
    code, err = run_cli(capsys, "train", "--storage", str(tmp_path / "runs"), "--address", f"127.0.0.1:{closed_port()}")
    assert code == 2 and "no Ray cluster answers" in err
    assert time.monotonic() - started < 30


def test_malformed_address(tmp_path, capsys):
    code, err = run_cli(capsys, "train", "--storage", str(tmp_path / "runs"), "--address", "nowhere")
    assert code == 2 and "HOST:PORT" in err


def test_main_job_runs_end_to_end_on_a_reduced_budget(ray_session, tmp_path, capsys):
    """`python run_study.py` with no arguments runs quickstart: sweep, corruption evaluation, report."""
    code = run_study.main(["quickstart", "--storage", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data"),
                           "--epochs", "1", "--linear-epochs", "1", "--corruptions", "gaussian_noise,contrast"])
    output = capsys.readouterr().out
    assert code == 0
    finished_lines = [line for line in output.splitlines() if re.match(r"\[[1-8]/8, \d+m\d\ds\] trial ", line)]
    assert len(finished_lines) == 8, output  # one progress line per trial, counted
    study = tmp_path / "runs" / "quick-digits"
    assert f"report: {study / 'report.html'}" in output
    html = (study / "report.html").read_text()
    assert "data:image/png;base64," in html and "supcon" in html.lower()
    results = pd.read_parquet(study / "results.parquet")
    assert len(results) == 8 and set(results["method"]) == {"supcon", "ce"}
    robustness = pd.read_parquet(study / "robustness.parquet")
    assert set(robustness["corruption"]) == {"clean", "gaussian_noise", "contrast"}
    assert set(robustness["model"]) == set(results.loc[results["status"] == "completed", "trial_id"])


def test_no_arguments_means_the_main_job(monkeypatch):
    called = {}
    monkeypatch.setattr(run_study, "command_quickstart", lambda args: called.setdefault("args", args) and 0)
    assert run_study.main([]) == 0
    assert called["args"].command == "quickstart" and called["args"].space == "quick"


@pytest.mark.slow  # a real process: Ray start-up and a training
def test_train_console_shows_our_progress_once_without_ray_train_chatter(tmp_path):
    """A Ray Train run's console: each epoch line once (Train V2 echoes prints through a logger unless told
    not to), and none of Train's per-epoch INFO lines or its State API warnings (the dashboard serves it)."""
    done = subprocess.run([sys.executable, "run_study.py", "train", "--method", "supcon", "--epochs", "2",
                           "--linear-epochs", "1", "--width", "0.0625", "--storage", str(tmp_path / "runs")],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    assert console.count("[contrastive] epoch 1/2 |") == 1, console
    assert console.count("[contrastive] epoch 2/2 |") <= 1  # Ray may not forward a worker's last lines
    for chatter in ("Failed to query Ray Train Controller actor state", "Checkpoint successfully created",
                    "Reporting training result"):
        assert chatter not in console
