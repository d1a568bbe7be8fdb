"""A sweep with its storage on an S3-compatible server vs on local disk: the same sweep, alternated rounds, on
one Ray runtime, wall-clock side by side.

    python -m benchmarks.storage                   # the quick space at 1 epoch (+1 linear), 2 rounds
    python -m benchmarks.storage --rounds 3 --epochs 2

The S3 server is moto's standalone server (`python -m moto.server`, the test extra's `moto[server]`) in a
process of its own on 127.0.0.1, so it does not share the driver's interpreter; the sweep reaches it as
`--storage s3://bucket/runs?endpoint_override=127.0.0.1:PORT&scheme=http`, as a real bucket is reached.
Everything a study writes goes there: Tune's experiment state and trial results (uploaded by the driver),
each trial's checkpoints (uploaded by the trial), study.json and the tables. Moto keeps objects in memory
and the network is loopback, so this measures the cost of going through the S3 protocol and Tune's remote
syncing, not a real network's latency or bandwidth.

Reported: each storage's median sweep wall over the rounds (after one uncounted warm-up sweep on each),
the median per-trial time (Tune's `time_total_s`, inside the trial), the wall ratio s3 / local, and every
round's wall.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import median, print_header, print_table, ray_runtime

MODES = ("local", "s3")
BUCKET = "bench"
# moto's fake credentials, in the environment before Ray starts: its trial processes inherit them.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}
SERVER_START_SECONDS = 60.0  # a hang guard for the server's start


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process, with the bucket created; returns it and its endpoint."""
    import boto3
    from botocore.exceptions import EndpointConnectionError

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name=CREDENTIALS["AWS_DEFAULT_REGION"])
    deadline = time.monotonic() + SERVER_START_SECONDS
    while True:  # the server answers once it listens; nothing to wait on but the port
        try:
            client.create_bucket(Bucket=BUCKET)
            return server, endpoint
        except EndpointConnectionError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"moto's server did not start on {endpoint}") from None
            time.sleep(0.2)


def run_once(space: str, overrides: dict, storage: str, name: str) -> dict[str, float]:
    from study.storage import read_table
    from study.sweep import SweepOptions, run_sweep

    started = time.perf_counter()
    study = run_sweep(space, overrides, SweepOptions(storage=storage, name=name))
    wall = time.perf_counter() - started
    results: pd.DataFrame = read_table(study / "results.parquet")
    if set(results["status"]) != {"completed"}:
        raise RuntimeError(f"{storage}: trials did not complete: {results['status'].tolist()}")
    return {"wall": wall, "trial": float(results["wall_seconds"].median()), "trials": float(len(results))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="quick", help="a space name or file (default quick)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per trial (and linear epochs)")
    args = parser.parse_args(argv)
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    overrides = {"epochs": args.epochs, "linear_epochs": args.epochs}
    server, endpoint = start_server()
    storages = {"local": "", "s3": f"s3://{BUCKET}/runs?endpoint_override={endpoint}&scheme=http"}
    measured: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp, ray_runtime() as runtime:
            storages["local"] = str(Path(tmp) / "runs")
            for mode in MODES:  # not counted: the first sweep also pays imports, caches and the first upload
                run_once(args.space, overrides, storages[mode], f"warm-up-{mode}")
            for round_number in range(args.rounds):
                # Alternated, the order swapped each round: a machine that slows down does not land on one mode.
                order = MODES if round_number % 2 == 0 else MODES[::-1]
                for mode in order:
                    measured[mode].append(run_once(args.space, overrides, storages[mode], f"{mode}-{round_number}"))
    finally:
        server.kill()
        server.wait()
    trials = int(measured["local"][0]["trials"])
    print_header("Storage on an S3 server vs local disk (benchmarks/storage.py)",
                 f"space {args.space}: {trials} trials x {args.epochs} epoch(s) (+{args.epochs} linear), "
                 f"{args.rounds} alternated rounds, Ray start {runtime.seconds:.1f} s; moto S3 on {endpoint}")
    local_wall = median(run["wall"] for run in measured["local"])
    rows = []
    for mode in MODES:
        wall = median(run["wall"] for run in measured[mode])
        rows.append({"mode": mode, "wall": wall, "trial": median(run["trial"] for run in measured[mode]),
                     "ratio": wall / local_wall, "added": (wall - local_wall) / trials,
                     "walls": " ".join(f"{run['wall']:.1f}" for run in measured[mode])})
    print_table(rows, [("mode", "storage", ""), ("wall", "sweep wall s (median)", ".1f"),
                       ("trial", "trial s (median)", ".2f"), ("ratio", "wall / local", ".3f"),
                       ("added", "s/trial vs local", "+.2f"), ("walls", "walls per round", "")])


if __name__ == "__main__":
    main()
