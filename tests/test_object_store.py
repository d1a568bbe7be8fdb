"""Studies on object storage, end to end, against a real S3-compatible server (moto's, on 127.0.0.1:
tests/s3_fixtures.py) and the session's two-node Ray cluster (tests/conftest.py).

- A search sweep (`run_study.py sweep --storage s3://...`, a driver process against the cluster) writes every
  study file into the bucket (study.json, the tables, each trial's checkpoints, the copy of Optuna's SQLite
  database) and none to the driver's local disk (Ray's own driver artifacts may stay there).
- A sweep driver SIGKILLed after a trial finished is finished by `--resume` from the bucket, every trial once.
- `robustness --study s3://...` and `report --study s3://...` read the study from the bucket and write their
  outputs beside its tables there; the report's local copy, whose path is printed, is the same HTML.

The files in the bucket are listed and read with boto3, not with the code under test (`study.storage`).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from faults.fault_helpers import PATIENCE_SECONDS, recorded_trials, start, tail, wait_for, write_space
from s3_fixtures import S3Server

import run_study
from study.storage import Location, read_table
from study.sweep import OPTUNA_FILE
from study.tables import HISTORY_FILE, MODEL_FILE, RESULTS_FILE, ROBUSTNESS_FILE, STUDY_FILE

REPO = Path(__file__).resolve().parents[1]
# What a study writes of its own (Tune's files aside), by name: none of them may be on the driver's disk.
STUDY_FILES = (STUDY_FILE, RESULTS_FILE, "results.csv", HISTORY_FILE, MODEL_FILE, "state.pt", ROBUSTNESS_FILE,
               "report.html", "report.md")
SEARCH_SPACE = textwrap.dedent("""
    name: s3_search
    design: search
    methods: [ce]
    seeds: [0]
    metric: val_top1
    base: {dataset: digits, image_size: 16, model: resnet18, width: 0.0625, epochs: 1, batch_size: 64,
           augmentation: crop_flip}
    distributions:
      lr: {type: float, low: 0.05, high: 1.0, log: true}
    num_samples: 2
""")


def key_of(uri: str) -> str:
    """The object key (prefix) of an `s3://bucket/key?query` URI."""
    return uri.split("?")[0].removeprefix("s3://").split("/", 1)[1]


def run_cli(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python run_study.py ARGV` from the repository, in the folder `cwd`; fails the test on a non-zero exit."""
    try:
        completed = subprocess.run([sys.executable, str(REPO / "run_study.py"), *argv], cwd=cwd, env=env,
                                   capture_output=True, text=True, timeout=PATIENCE_SECONDS)
    except subprocess.TimeoutExpired as timeout:  # say where it stuck: the command's own output
        output = [text.decode(errors="replace") if isinstance(text, bytes) else text or ""
                  for text in (timeout.stdout, timeout.stderr)]
        pytest.fail(f"run_study.py {' '.join(argv)} still running after {PATIENCE_SECONDS} s:\n"
                    + output[0][-4000:] + output[1][-6000:])
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


def local_study_files(*folders: Path) -> list[Path]:
    """Files under `folders` named as a study's own files, and anything under a folder named `s3:` (what a
    URI taken for a path, `Path("s3://bucket/...")`, creates)."""
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and (path.name in STUDY_FILES or "s3:" in path.relative_to(folder).parts):
                found.append(path)
    return found


@pytest.fixture(scope="module")
def search_study(s3_server: S3Server, two_node_cluster, tmp_path_factory: pytest.TempPathFactory):
    """A 2-trial Optuna search swept on the two-node cluster into the bucket by a driver process; returns
    (the study's URI, its key prefix, the driver's working folder, its temp folder)."""
    folder = tmp_path_factory.mktemp("s3-search")
    space = folder / "s3_search.yaml"
    space.write_text(SEARCH_SPACE)
    cwd, temp = folder / "cwd", folder / "tmp"
    cwd.mkdir()
    temp.mkdir()
    storage = s3_server.uri("search-study")
    run_cli(["sweep", "--space", str(space), "--storage", storage, "--name", "searched", "--address",
             two_node_cluster.address], cwd, {**two_node_cluster.env, "TMPDIR": str(temp)})
    study = Location.of(storage) / "searched"
    return study.uri, key_of(study.uri), cwd, temp


def test_a_cluster_sweep_writes_every_study_file_to_the_bucket(s3_server, two_node_cluster, search_study):
    uri, prefix, cwd, temp = search_study
    keys = set(s3_server.keys(prefix))
    for name in (STUDY_FILE, RESULTS_FILE, "results.csv", HISTORY_FILE, OPTUNA_FILE):
        assert f"{prefix}/{name}" in keys, sorted(keys)

    results = pd.read_parquet(io.BytesIO(s3_server.read(f"{prefix}/{RESULTS_FILE}")))
    assert len(results) == 2 and set(results["status"]) == {"completed"}, results
    assert results["trial_id"].is_unique
    # Each trial's checkpoint, as results.parquet names it (a path on the store), is an object in the bucket.
    for checkpoint in results["checkpoint"]:
        assert checkpoint.startswith(f"{s3_server.bucket}/{prefix}/tune-ce/"), checkpoint
        assert checkpoint.removeprefix(f"{s3_server.bucket}/") in keys
    history = pd.read_parquet(io.BytesIO(s3_server.read(f"{prefix}/{HISTORY_FILE}")))
    assert sorted(history["trial_id"].unique()) == sorted(results["trial_id"])

    # The Optuna database's copy in the bucket holds both samples, finished.
    database = cwd.parent / "optuna-copy.db"
    database.write_bytes(s3_server.read(f"{prefix}/{OPTUNA_FILE}"))
    with sqlite3.connect(database) as connection:
        states = [state for (state,) in connection.execute("SELECT state FROM trials")]
    assert states == ["COMPLETE", "COMPLETE"]

    # Nothing of the study on the driver's disk: not in its working folder (where `s3:/bucket/...` would be),
    # nor the repository's, nor its temp folder (which holds only the live SQLite file the copy came from).
    assert not list(cwd.iterdir())
    assert not (REPO / "s3:").exists()
    assert not local_study_files(cwd, temp)
    assert [path.name for path in temp.rglob("*") if path.is_file()] == [OPTUNA_FILE]
    assert not local_study_files(Path(two_node_cluster.env["RAY_TMPDIR"]))  # Ray's driver artifacts: Tune's only


def test_b_sigkilled_driver_resumes_from_the_bucket(s3_server, two_node_cluster, s3_study_root, tmp_path):
    space = write_space(tmp_path, "killed", "design: one_at_a_time\nmethods: [ce]\nvary:\n  lr: [0.5, 0.1, 1.0]\n",
                        epochs=2, image_size=16)
    cwd, log = tmp_path / "cwd", tmp_path / "driver.log"
    cwd.mkdir()
    study = Location.of(s3_study_root) / "killed"
    argv = ["run_study.py", "sweep", "--space", str(space), "--storage", s3_study_root, "--name", "killed",
            "--max-concurrent", "1", "--address", two_node_cluster.address]
    driver = start([str(REPO / argv[0]), *argv[1:]], log, cwd=cwd, env=two_node_cluster.env)
    try:
        def one_finished_one_running() -> bool:
            statuses = {trial["status"] for trial in recorded_trials(study / "tune")}
            return {"TERMINATED", "RUNNING"} <= statuses

        wait_for(one_finished_one_running, "a finished and a running trial in the bucket's snapshot",
                 process=driver, log=log)
        os.kill(driver.pid, signal.SIGKILL)  # a driver attached to a cluster: its trials go with its job
        driver.wait(timeout=PATIENCE_SECONDS)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()

    # The kill may land while Tune uploads its snapshot, file by file: the experiment state new, the trial list's
    # state (how many trials it handed out, uploaded after it) one trial behind. Resuming must not run again the
    # trial the experiment state already holds (it did: twice in results.parquet), whichever file is behind.
    recorded = recorded_trials(study / "tune")
    (list_state,) = [key for key in s3_server.keys(f"{key_of(study.uri)}/tune") if "/trial-list-state-" in key]
    s3_server.client.put_object(Bucket=s3_server.bucket, Key=list_state,
                                Body=json.dumps({"handed_out": len(recorded) - 1, "trials": 3}).encode())

    assert run_study.main(["collect", "--study", study.uri]) == 0
    before = read_table(study / RESULTS_FILE).set_index("trial_id")
    finished = before[before["status"] == "completed"]
    assert 1 <= len(finished) < 3, before["status"]

    resumed = run_cli(argv[1:] + ["--resume"], cwd, two_node_cluster.env)
    assert "3 trials" in resumed.stdout, resumed.stdout[-2000:]

    after = pd.read_parquet(io.BytesIO(s3_server.read(f"{key_of(study.uri)}/{RESULTS_FILE}")))
    assert sorted(after["trial_id"]) == ["ce-base-seed0", "ce-lr=0.1-seed0", "ce-lr=1.0-seed0"]  # each once
    assert set(after["status"]) == {"completed"} and set(after["epochs_run"]) == {2}
    after = after.set_index("trial_id")
    # The trials finished before the kill were not run again: the same checkpoint and test accuracy.
    pd.testing.assert_series_equal(after.loc[finished.index, "checkpoint"], finished["checkpoint"])
    pd.testing.assert_series_equal(after.loc[finished.index, "test_top1"], finished["test_top1"])
    keys = set(s3_server.keys(key_of(study.uri)))
    assert all(path.removeprefix(f"{s3_server.bucket}/") in keys for path in after["checkpoint"])
    assert not list(cwd.iterdir()), tail(log)


def test_c_robustness_and_report_from_the_bucket(s3_server, two_node_cluster, search_study, capsys):
    uri, prefix, cwd, _ = search_study
    # robustness downloads each checkpoint in its task (on either node) and writes its table into the bucket;
    # its corrupted-set cache stays in the driver's folder (data, not the study).
    run_cli(["robustness", "--study", uri, "--corruptions", "gaussian_noise", "--address",
             two_node_cluster.address], cwd, two_node_cluster.env)
    robustness = pd.read_parquet(io.BytesIO(s3_server.read(f"{prefix}/{ROBUSTNESS_FILE}")))
    assert robustness["model"].nunique() == 2

    assert run_study.main(["report", "--study", uri]) == 0
    printed = capsys.readouterr().out
    keys = set(s3_server.keys(prefix))
    assert {f"{prefix}/report.html", f"{prefix}/report.md"} <= keys
    html = s3_server.read(f"{prefix}/report.html")
    assert b"Robustness" in html and b"<html" in html
    # Every figure the Markdown shows is in the bucket beside it.
    figures = re.findall(r"\]\((report_figures/[^)]+)\)", s3_server.read(f"{prefix}/report.md").decode())
    assert figures and all(f"{prefix}/{figure}" in keys for figure in figures)
    # The printed local copy exists and is the same report; where the report is is said once.
    assert printed.count("local copy to open") == 1, printed
    local = Path(re.search(r"local copy to open: (\S+)", printed).group(1))
    assert local.is_file() and local.read_bytes() == html
    assert not local_study_files(cwd)


def test_the_resume_hint_of_an_interrupted_sweep_pastes_into_a_shell(s3_server, s3_study_root, tmp_path, monkeypatch,
                                                                    capsys):
    """The printed resume command keeps an object-store URI whole in a shell: its query's `&` sent the command
    into the background and ran `scheme=http --name ...` as another one (the hint was not quoted)."""
    import ray

    import study.sweep

    space = write_space(tmp_path, "hinted", "design: one_at_a_time\nmethods: [ce]\nvary:\n  lr: [0.1]\n", epochs=1)
    monkeypatch.setattr(study.sweep, "connect_ray", lambda address=None: None)  # no Ray: interrupted at once
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study.sweep, "_run_grid", interrupted)
    assert run_study.main(["sweep", "--space", str(space), "--storage", s3_study_root, "--name", "hinted"]) == 130
    hint = re.search(r"resumable with\n\s+run_study\.py (sweep .*--resume)\n", capsys.readouterr().out)
    assert hint, "no resume hint printed"
    echoed = subprocess.run(["bash", "-c", f"printf '%s\\n' {hint.group(1)}; wait"], capture_output=True, text=True)
    assert echoed.stdout.splitlines() == ["sweep", "--space", str(space), "--storage", s3_study_root, "--name",
                                          "hinted", "--resume"], echoed
