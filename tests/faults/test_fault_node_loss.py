"""Fault 8: a whole node lost while a trial trains on it.

A third node joins the session's two-node cluster, a sweep of three 2-CPU trials fills the three 2-CPU nodes
(one trial per node, so one trial surely runs on the new node), and once that trial has saved a checkpoint
every process of its node is SIGKILLed (`TwoNodeCluster.remove_node`: no graceful shutdown, as a machine
lost). The driver is the real command line (`python run_study.py sweep --address ...`) in a subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from fault_helpers import PATIENCE_SECONDS, start, tail, wait_for, write_space

from study.tables import RESULTS_FILE, TRIAL_ERRORS_FILE

EPOCHS = 3  # the kill lands after a checkpoint of epoch 1 or 2; two epochs left leave it time to land
# Where the lost trial must not finish before the kill lands: an epoch takes 0.5-1 s here, and 3 epochs were seen
# to finish before it did (the trial completed on the node, then the node was lost).
SURE_EPOCHS = 10
LRS = (0.1, 0.2, 0.5)


def reported(trial: Path) -> list[dict[str, Any]]:
    """What a trial has reported so far (Tune's result.json, written by the driver), oldest first."""
    records = []
    text = (trial / "result.json").read_text() if (trial / "result.json").is_file() else ""
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # the line being written
            continue
    return records


def checkpointed_on(experiment: Path, node: str) -> tuple[Path, int] | None:
    """A trial folder whose trial reported, from `node`, an epoch with a checkpoint now on storage, and that epoch."""
    for trial in sorted(experiment.glob("ce-*")):
        for record in reported(trial):
            folder = record.get("checkpoint_dir_name")
            if record.get("node_id") == node and folder and (trial / folder).is_dir():
                return trial, int(record["epoch"])
    return None


def sweep_losing_a_node(cluster, tmp_path: Path, *flags: str,
                        epochs: int = EPOCHS) -> tuple[Path, Path, int, str, str]:
    """Run the sweep of three trials of `epochs` epochs, one per node (`flags` added to its command line), and kill
    the added node once its trial has a checkpoint on storage. Returns the study folder, the lost trial's folder,
    the epoch of that checkpoint, the lost node's id and the driver's output."""
    body = "design: grid\nmethods: [ce]\nseeds: [0]\nvary:\n  lr: [" + ", ".join(map(str, LRS)) + "]\n"
    space = write_space(tmp_path, "node_loss", body, epochs=epochs, image_size=8)
    storage, log = tmp_path / "runs", tmp_path / "driver.log"
    experiment = storage / "node-loss" / "tune"
    lost = cluster.add_node(2)
    removed = False
    try:
        # 2 CPUs a trial on three 2-CPU nodes: Ray places one trial on each node.
        driver = start(["run_study.py", "sweep", "--space", str(space), "--storage", str(storage), "--name",
                        "node-loss", "--address", cluster.address, "--cpus-per-worker", "2", *flags], log,
                       env=cluster.env)
        try:
            found = wait_for(lambda: checkpointed_on(experiment, lost), "a checkpoint of the trial on the added node",
                             process=driver, log=log)
            assert found is not None  # wait_for returns only what is truthy; for the type checker
            victim, saved_epoch = found
            cluster.remove_node(lost)
            removed = True
            assert driver.wait(timeout=PATIENCE_SECONDS) == 0, tail(log)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    finally:
        if not removed:  # the fixture's contract: the next test finds the two nodes it expects
            cluster.remove_node(lost)
    return storage / "node-loss", victim, saved_epoch, lost, log.read_text(errors="replace")


def test_a_lost_node_s_trial_resumes_from_its_checkpoint_on_a_surviving_node(two_node_cluster, tmp_path):
    cluster = two_node_cluster
    study, victim, saved_epoch, lost, output = sweep_losing_a_node(cluster, tmp_path)
    log = tmp_path / "driver.log"

    # Every trial exactly once, all completed with every epoch run.
    results = pd.read_parquet(study / RESULTS_FILE)
    assert sorted(results["trial_id"]) == sorted(f"ce-lr={lr}-seed0" for lr in LRS), results
    assert set(results["status"]) == {"completed"} and set(results["epochs_run"]) == {EPOCHS}, results
    assert sum(" completed, top-1 " in line for line in output.splitlines()) == len(LRS), tail(log)

    # The lost trial finished on a surviving node, from its checkpoint, not from epoch 1.
    row = results.set_index("trial_id").loc[victim.name.rsplit("-", 1)[0]]
    assert row["node_id"] in (cluster.head, cluster.worker), (row["node_id"], lost)
    records = [record for record in reported(victim) if record.get("stage") == "ce"]
    before = [record["epoch"] for record in records if record["node_id"] == lost]
    after = [record["epoch"] for record in records if record["node_id"] != lost]
    final = reported(victim)[-1]
    assert final["stage"] == "final" and final["node_id"] == row["node_id"]
    resumed_at = int(final["resumed_from"].removeprefix("ce:"))  # the epoch it resumed at, e.g. "ce:2"
    # From the newest checkpoint the driver had recorded from the lost node (the one the test saw, or later).
    assert before == list(range(1, max(before) + 1)) and saved_epoch < resumed_at == max(before) + 1, records
    assert after == list(range(resumed_at, EPOCHS + 1)), records  # each later epoch once, none before the resume
    assert f"resuming at stage 'ce', epoch {resumed_at}" in output, tail(log)
    assert Path(row["checkpoint"]).is_file()


def test_a_lost_node_s_trial_without_retries_left_is_collected_failed(two_node_cluster, tmp_path):
    """With `--max-failures 0` Tune errors the lost trial but, its actor being dead already, never rewrites its
    entry of the experiment state, which keeps it RUNNING: `collect` listed it `pending`, with no error. The
    sweep's own record of the trials Tune errored (study.tables.TRIAL_ERRORS_FILE) makes it `failed`. A resumed
    sweep reruns it (to `completed`) and drops it from that record, in the folder it resumes from."""
    study, victim, _, _, output = sweep_losing_a_node(two_node_cluster, tmp_path, "--max-failures", "0",
                                                      epochs=SURE_EPOCHS)
    log = tmp_path / "driver.log"
    results = pd.read_parquet(study / RESULTS_FILE).set_index("trial_id")
    name = victim.name.rsplit("-", 1)[0]
    assert sorted(results.index) == sorted(f"ce-lr={lr}-seed0" for lr in LRS), results
    assert reported(victim)[-1]["stage"] != "final", "the trial finished before its node was lost"
    assert results.loc[name, "status"] == "failed" and results.loc[name, "error"], results.loc[name]
    others = results.drop(index=name)
    assert set(others["status"]) == {"completed"} and set(others["error"]) == {""}, others
    assert f"trial {name} [ce] lr=" in output and ": failed, top-1 " in output, tail(log)

    # `--resume` runs it again from its checkpoint (Tune's state has it unfinished) and drops it from the record.
    recorded = json.loads((study / TRIAL_ERRORS_FILE).read_text())
    assert list(recorded["tune"]) == [victim.name.rsplit("-", 1)[1]], recorded
    space, storage = tmp_path / "node_loss.yaml", tmp_path / "runs"
    resumed = start(["run_study.py", "sweep", "--space", str(space), "--storage", str(storage), "--name", "node-loss",
                     "--address", two_node_cluster.address, "--cpus-per-worker", "2", "--max-failures", "0",
                     "--resume"], log, env=two_node_cluster.env)
    assert resumed.wait(timeout=PATIENCE_SECONDS) == 0, tail(log)
    results = pd.read_parquet(study / RESULTS_FILE)
    assert set(results["status"]) == {"completed"} and len(results) == len(LRS), results
    assert json.loads((study / TRIAL_ERRORS_FILE).read_text()) == {"tune": {}}
