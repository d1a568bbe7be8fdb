"""Faults 2 and 3: the sweep driver (`python run_study.py sweep`) killed with SIGKILL, or stopped with Ctrl-C.

Both drivers are real subprocesses with their own local Ray runtime; the resumes run in this process on the
session's Ray runtime, through the same `run_study.main`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import time

import pandas as pd
from fault_helpers import PATIENCE_SECONDS, alive, descendants, reap, recorded_trials, start, tail, wait_for, write_space

import run_study
from study.checkpoint import MODEL_FILE, STATE_FILE


def sweep_argv(space, storage, name: str) -> list[str]:
    return ["sweep", "--space", str(space), "--storage", str(storage), "--name", name, "--max-concurrent", "1"]


def test_sigkilled_sweep_driver_resumes_without_rerunning_finished_trials(ray_session, tmp_path):
    space = write_space(tmp_path, "killed", "design: one_at_a_time\nmethods: [ce]\nvary:\n  lr: [0.5, 0.1, 1.0, 2.0]\n")
    storage, log = tmp_path / "runs", tmp_path / "driver.log"
    study, argv = storage / "killed", sweep_argv(space, storage, "killed")
    driver = start(["run_study.py", *argv], log)
    family: list[int] = []
    try:
        def trial_in_flight():
            """A trial Tune has recorded as running from a checkpoint, before its end, once it has recorded
            another as finished (Tune forces a snapshot every second checkpoint of a trial)."""
            recorded = recorded_trials(study / "tune")
            if not any(trial["status"] == "TERMINATED" for trial in recorded):
                return None
            for trial in recorded:
                if trial["status"] != "RUNNING" or not trial["checkpoint"]:
                    continue
                for folder in (study / "tune").glob(f"*-{trial['trial_id']}"):
                    if not list(folder.glob(f"*/{MODEL_FILE}")):
                        return folder
            return None

        in_flight = wait_for(trial_in_flight, "a trial mid-training after another finished", process=driver, log=log)
        family = descendants(driver.pid)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=PATIENCE_SECONDS)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        reap(family)  # a SIGKILLed driver leaves Ray's dashboard and runtime-env agents orphaned

    # The kill may also land while a checkpoint is written: the in-flight trial's newest one is cut in half.
    newest = max(in_flight.glob("checkpoint_*"), key=lambda path: path.name)
    data = (newest / STATE_FILE).read_bytes()
    (newest / STATE_FILE).write_bytes(data[: len(data) // 2])

    assert run_study.main(["collect", "--study", str(study)]) == 0
    before = pd.read_parquet(study / "results.parquet").set_index("trial_id")
    finished = before[before["status"] == "completed"]
    assert len(finished) >= 1 and len(finished) < 4
    checkpoint_bytes = {path: open(path, "rb").read() for path in finished["checkpoint"]}

    assert run_study.main([*argv, "--resume"]) == 0

    after = pd.read_parquet(study / "results.parquet").set_index("trial_id")
    assert sorted(after.index) == sorted(["ce-base-seed0", "ce-lr=0.1-seed0", "ce-lr=1.0-seed0", "ce-lr=2.0-seed0"])
    assert after.index.is_unique and set(after["status"]) == {"completed"}
    pd.testing.assert_frame_equal(after.loc[finished.index], finished)  # finished rows: not a byte changed ...
    assert all(open(path, "rb").read() == data for path, data in checkpoint_bytes.items())  # ... nor checkpoints
    assert set(after["epochs_run"]) == {3}

    # The trial killed mid-training resumed from a checkpoint (the newest readable, before the truncated one),
    # not from scratch, and its history holds each epoch once.
    resumed_id = in_flight.name.rsplit("-", 1)[0]
    final_result = json.loads((in_flight / "result.json").read_text().splitlines()[-1])
    assert final_result["stage"] == "final" and final_result["resumed_from"].startswith("ce:")
    history = pd.read_parquet(study / "history.parquet")
    assert list(history[history["trial_id"] == resumed_id]["epoch"]) == [1, 2, 3]
    assert "finished" in json.loads((study / "study.json").read_text())


def test_ctrl_c_stops_a_sweep_within_seconds_and_says_how_to_resume(ray_session, tmp_path):
    space = write_space(tmp_path, "interrupted", "design: one_at_a_time\nmethods: [ce]\nvary:\n  lr: [0.5, 0.1]\n")
    storage, log = tmp_path / "runs", tmp_path / "driver.log"
    study = storage / "interrupted"
    driver = start(["run_study.py", *sweep_argv(space, storage, "interrupted")], log)
    family: list[int] = []
    try:
        wait_for(lambda: list((study / "tune").glob(f"*/checkpoint_000000/{STATE_FILE}")),
                 "the first trial's first checkpoint", process=driver, log=log)
        family = descendants(driver.pid)
        os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        sent = time.monotonic()
        code = driver.wait(timeout=60)  # a hang guard; it takes a few seconds (RELIABILITY.md)
        print(f"the sweep stopped {time.monotonic() - sent:.1f} s after Ctrl-C")
        # Nothing keeps running: Tune stops the trials and Ray shuts its processes down.
        wait_for(lambda: not [pid for pid in family if alive(pid)], "Ray's processes to exit", timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        reap(family)

    output = log.read_text()
    assert code == 130, tail(log)
    hint = re.search(r"resumable with\n\s+(run_study\.py sweep .*--resume)\n", output)
    assert hint, tail(log)
    assert "finished" not in json.loads((study / "study.json").read_text())  # not marked done ...
    assert not (study / "results.parquet").exists()  # ... nor tabulated as if it were

    # The printed command resumes the study to the end.
    assert run_study.main(shlex.split(hint.group(1))[1:]) == 0
    results = pd.read_parquet(study / "results.parquet")
    assert sorted(results["trial_id"]) == ["ce-base-seed0", "ce-lr=0.1-seed0"]
    assert set(results["status"]) == {"completed"}
