"""A sweep on a two-node Ray cluster started on this machine, in a subprocess of its own (the session's local
runtime stays untouched): trials land on both nodes, results gather in one storage path, a trial with two
Train workers runs through a TorchTrainer launched from the Tune trial, and ASHA stopping such trials early
does not hang the sweep (it did without the dashboard's State API: minutes, until killed).

It is also the contract test between the stages (issue 12): the real tables of a two-node grid sweep and of
an ASHA search go through the stability analysis and the report, and nothing of the runtime (node, trial
id, paths, timings) is taken for a hyperparameter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from analysis.report import build_report
from analysis.stability import hyperparameter_columns, stability_table
from study.tables import RUNTIME_COLUMNS

SCRIPT = textwrap.dedent("""
    import json, socket, sys
    import ray
    from ray.cluster_utils import Cluster
    from study.sweep import SweepOptions, run_sweep

    space, multi_space, asha_space, storage = sys.argv[1:5]
    # As `ray start --head` runs it: with the dashboard, here on loopback only and on a free port (the test
    # session's runtime may hold Ray's default one).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dashboard_port = probe.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": True,
                                                            "dashboard_host": "127.0.0.1",
                                                            "dashboard_port": dashboard_port})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    single = run_sweep(space, {}, SweepOptions(storage=storage, name="single", verbose=0, max_failures=0))
    multi = run_sweep(multi_space, {}, SweepOptions(storage=storage, name="multi", workers_per_trial=2,
                                                        max_concurrent=1, verbose=0, max_failures=0))
    asha = run_sweep(asha_space, {}, SweepOptions(storage=storage, name="asha", workers_per_trial=2,
                                                  max_concurrent=1, max_failures=0))
    print("RESULT " + json.dumps({"nodes": nodes, "single": str(single), "multi": str(multi), "asha": str(asha)}))
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.mark.slow  # a two-node cluster and three sweeps in a subprocess (no session fixture marks it): minutes
def test_sweep_spreads_over_two_nodes_and_runs_multi_worker_trials(tmp_path):
    space = tmp_path / "two_nodes.yaml"
    space.write_text(textwrap.dedent("""
        name: two_nodes
        design: grid
        methods: [ce]
        seeds: [0, 1]
        base: {dataset: digits, model: resnet18, width: 0.0625, epochs: 1, batch_size: 64,
               augmentation: crop_flip}
        vary:
          lr: [0.1, 0.5]
    """))
    multi_space = tmp_path / "two_workers.yaml"
    multi_space.write_text(space.read_text().replace("two_nodes", "two_workers").replace("seeds: [0, 1]", "seeds: [0]")
                           .replace("lr: [0.1, 0.5]", "lr: [0.5]"))
    asha_space = tmp_path / "asha_two_workers.yaml"
    asha_space.write_text(textwrap.dedent("""
        name: asha_two_workers
        design: search
        methods: [ce]
        seeds: [0]
        metric: val_top1
        base: {dataset: digits, model: resnet18, width: 0.0625, epochs: 4, batch_size: 64, augmentation: crop_flip}
        distributions:
          lr: {type: float, low: 0.001, high: 2.0, log: true}
        num_samples: 4
        scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
    """))
    completed = subprocess.run([sys.executable, "-c", SCRIPT, str(space), str(multi_space), str(asha_space),
                                str(tmp_path / "runs")], capture_output=True, text=True, timeout=840)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = [row for row in completed.stdout.splitlines() if row.startswith("RESULT ")][-1]
    outcome = json.loads(line.removeprefix("RESULT "))
    assert len(outcome["nodes"]) == 2

    single = pd.read_parquet(f"{outcome['single']}/results.parquet")
    assert len(single) == 4 and (single["status"] == "completed").all()
    assert set(single["node_id"]) == set(outcome["nodes"])  # four 1-CPU trials fill both 2-CPU nodes

    multi = pd.read_parquet(f"{outcome['multi']}/results.parquet")
    assert len(multi) == 1 and (multi["status"] == "completed").all()
    assert multi["test_top1"].between(0, 100).all()
    assert all(path.endswith("model.pt") for path in multi["checkpoint"])

    asha = pd.read_parquet(f"{outcome['asha']}/results.parquet")
    assert len(asha) == 4 and set(asha["status"]) == {"completed", "stopped_early"}, asha[["lr", "status"]]
    stopped = asha[asha["status"] == "stopped_early"]
    # cut at an ASHA rung (epochs 1, 2 or 4 with grace 1 and factor 2), before its final evaluation
    assert (stopped["epochs_run"] <= 4).all() and stopped["test_top1"].isna().all(), stopped

    # The contract between the stages: the real tables feed the analysis and the report.
    assert hyperparameter_columns(single) == ["lr"] and hyperparameter_columns(asha) == ["lr"]
    two_nodes = stability_table(single, n_boot=200)
    one_node = stability_table(single.assign(node_id=outcome["nodes"][0]), n_boot=200)
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
