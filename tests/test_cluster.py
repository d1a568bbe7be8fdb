"""Sweeps on the session's two-node Ray cluster (`two_node_cluster` in tests/conftest.py), driven from a
subprocess (the session's local runtime stays untouched): trials land on both nodes, results gather in one
storage path, trials with two Train workers run through a TorchTrainer launched from the Tune trial, and ASHA
stopping such trials early does not hang the sweep (it did without the dashboard's State API: minutes, until
killed).

It is also the contract test between the stages (issue 12): the real tables of a two-node grid sweep and of
an ASHA search go through the stability analysis and the report, and nothing of the runtime (node, trial
id, paths, timings) is taken for a hyperparameter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

from analysis.report import build_report
from analysis.stability import hyperparameter_columns, stability_table
from study.tables import RUNTIME_COLUMNS

ASHA_EPOCHS = 2  # ASHA's rungs at epochs 1 and 2 (grace 1, factor 2): it can stop a trial at either
# Two samples, one at a time, each a TorchTrainer (~25-35 s apiece on a loaded 2-core machine). With the space's
# seed 2 the seeded sampler draws the same lrs every run (0.027, then 0.0012) and training is deterministic: the
# first completes and the second is cut at epoch 1 (9.7% val top-1 against 12.5%), so both ASHA outcomes occur.
ASHA_SAMPLES = 2
ASHA_SEED = 2

SCRIPT = textwrap.dedent("""
    import json, sys
    from study.sweep import SweepOptions, run_sweep

    space, asha_space, storage, address = sys.argv[1:5]
    single = run_sweep(space, {}, SweepOptions(storage=storage, name="single", address=address, max_failures=0))
    asha = run_sweep(asha_space, {}, SweepOptions(storage=storage, name="asha", address=address, workers_per_trial=2,
                                                  max_concurrent=1, max_failures=0))
    print("RESULT " + json.dumps({"single": str(single), "asha": str(asha)}))
""")
# The smallest trials that still train and evaluate: a 4-channel ResNet-18 on 8-pixel digits.
TINY_BASE = "{dataset: digits, model: resnet18, width: 0.0625, image_size: 8, batch_size: 64, augmentation: crop_flip"


def test_sweep_spreads_over_two_nodes_and_runs_multi_worker_trials(two_node_cluster, tmp_path):
    cluster = two_node_cluster
    space = tmp_path / "two_nodes.yaml"
    space.write_text(textwrap.dedent(f"""
        name: two_nodes
        design: grid
        methods: [ce]
        seeds: [0, 1]
        base: {TINY_BASE}, epochs: 1}}
        vary:
          lr: [0.1, 0.5]
    """))
    asha_space = tmp_path / "asha_two_workers.yaml"
    asha_space.write_text(textwrap.dedent(f"""
        name: asha_two_workers
        design: search
        methods: [ce]
        seeds: [{ASHA_SEED}]
        metric: val_top1
        base: {TINY_BASE}, epochs: {ASHA_EPOCHS}}}
        distributions:
          lr: {{type: float, low: 0.001, high: 2.0, log: true}}
        num_samples: {ASHA_SAMPLES}
        scheduler: {{type: asha, grace_period: 1, reduction_factor: 2}}
    """))
    completed = subprocess.run([sys.executable, "-c", SCRIPT, str(space), str(asha_space), str(tmp_path / "runs"),
                                cluster.address], capture_output=True, text=True, timeout=840, env=cluster.env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = [row for row in completed.stdout.splitlines() if row.startswith("RESULT ")][-1]
    outcome = json.loads(line.removeprefix("RESULT "))
    nodes = [cluster.head, cluster.worker]

    single = pd.read_parquet(f"{outcome['single']}/results.parquet")
    assert len(single) == 4 and (single["status"] == "completed").all()
    assert set(single["node_id"]) == set(nodes)  # four 1-CPU trials fill both 2-CPU nodes

    # Two Train workers per trial: the completed ones trained and evaluated through a TorchTrainer launched
    # from the Tune trial, and ASHA's early stops of such trials did not hang the sweep.
    asha = pd.read_parquet(f"{outcome['asha']}/results.parquet")
    assert len(asha) == ASHA_SAMPLES and set(asha["status"]) == {"completed", "stopped_early"}, asha[["lr", "status"]]
    finished = asha[asha["status"] == "completed"]
    assert finished["test_top1"].between(0, 100).all() and (finished["epochs_run"] == ASHA_EPOCHS).all(), finished
    assert all(path.endswith("model.pt") and Path(path).is_file() for path in finished["checkpoint"]), finished
    stopped = asha[asha["status"] == "stopped_early"]
    # cut at an ASHA rung (epoch 1 or 2 with grace 1 and factor 2), before its final evaluation
    assert (stopped["epochs_run"] <= ASHA_EPOCHS).all() and stopped["test_top1"].isna().all(), stopped

    # The contract between the stages: the real tables feed the analysis and the report.
    assert hyperparameter_columns(single) == ["lr"] and hyperparameter_columns(asha) == ["lr"]
    two_nodes = stability_table(single, n_boot=200)
    one_node = stability_table(single.assign(node_id=nodes[0]), n_boot=200)
    pd.testing.assert_frame_equal(two_nodes, one_node)  # where trials ran does not change the spread
    grid = two_nodes.set_index("family").loc["grid"]
    assert grid["n_settings"] == 2 and grid["min_seeds"] == 2  # two lr settings with both seeds each
    for column in RUNTIME_COLUMNS + ("trial_id",):
        renamed = single.assign(**{column: [f"elsewhere-{i}" for i in range(len(single))]})
        pd.testing.assert_frame_equal(stability_table(renamed, n_boot=200), two_nodes)
    searched = stability_table(asha, n_boot=200)
    assert list(searched["family"]) == ["search"]
    for folder in (outcome["single"], outcome["asha"]):
        html, markdown = build_report(folder, n_boot=200)
        assert html.is_file() and "Spread per hyperparameter family" in markdown.read_text()
