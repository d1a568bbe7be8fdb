"""Shared fixtures: one local Ray runtime and one two-node Ray cluster per test session, and the read-only
shared data beside the repo. Also the test tiers: what uses a Ray/cluster/server fixture is marked slow."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import torch
from s3_fixtures import s3_server, s3_study_root  # noqa: F401  (fixtures: the S3 server, a URI per test)

# One intra-op thread per test process: Ray's trial and task processes run beside pytest's on these 2-core
# machines, and oversubscribed BLAS threads slow everything down many times over when the machine is busy.
torch.set_num_threads(1)
# Ray Train's controller polls its workers every 2 s by default, so every Train run (one per test of the
# launch, CLI and fault tests) idles up to 2 s at each state change; the tests' runs last seconds, not hours.
# Set before any Ray runtime starts, so the raylets and every Train process (here or in a subprocess) inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

SHARED = Path(__file__).resolve().parents[2] / "shared"
TESTS = Path(__file__).resolve().parent
# Session fixtures that start a Ray runtime, a cluster or a server: a test using one is in the slow tier.
SLOW_FIXTURES = frozenset({"ray_session", "two_node_cluster", "s3_server"})
# Tests on the two-node cluster run last: its idle processes would tax every test after them. The fault tests
# run just before them: under xdist the other worker has finished the fast tests by then, and these tests time
# their kills against the files Tune writes, which a loaded machine stretches (such a kill once landed in Tune's
# snapshot copy: fault 9 in RELIABILITY.md).
CLUSTER_FIXTURE = "two_node_cluster"
# Under pytest-xdist (the README's `-n 2`, with `--dist loadgroup` from pyproject.toml) the slow tests form one
# group that one worker runs in order, exactly as a serial run does (one local Ray runtime, the cluster last,
# never two of these tests at once), while the other worker takes the fast tests beside them.
SLOW_GROUP = "slow"
CIFAR_SUBSET_TAR = SHARED / "data" / "cifar10-jpeg-subset.tar"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark slow every test that uses a Ray/cluster/S3 session fixture or lives under tests/faults/, put every
    slow test in one xdist group (`SLOW_GROUP`), and move the two-node cluster's tests to the end of the
    session, the fault tests just before them (stable sort: the rest keep their order)."""
    faults = TESTS / "faults"
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SLOW_FIXTURES or faults in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group(SLOW_GROUP))
    items.sort(key=lambda item: (CLUSTER_FIXTURE in getattr(item, "fixturenames", ()),
                                 faults in Path(str(item.path)).parents))


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray runtime sized for the 2-core machines, started once and always shut down.

    Tests that need Ray take this fixture; everything else runs without a cluster."""
    import ray

    from study.launch import connect_ray

    connect_ray(num_cpus=2)  # as the product starts one: loopback only
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def cifar_subset_tar() -> Path:
    """The real CIFAR-10 JPEG subset from ../shared, or a skip saying why it is missing."""
    if not CIFAR_SUBSET_TAR.is_file():
        pytest.skip(f"shared CIFAR-10 subset not found at {CIFAR_SUBSET_TAR} (../shared is absent)")
    return CIFAR_SUBSET_TAR


class TwoNodeCluster:
    """The session's multi-node Ray cluster, held by tests/cluster_holder.py in a process of its own.

    `address` is its GCS address and `env` the environment a driver against it runs with (RAY_ADDRESS set:
    Ray Train's placement-group cleaner looks its cluster up by address, and finds several local Ray
    instances otherwise). Drivers run as subprocesses, never in pytest's process, which holds the session's
    local runtime. `add_node` and `remove_node` change the cluster for the test that calls them: a test that
    adds a node removes it again, so the next test finds the two nodes it expects."""

    def __init__(self, holder: subprocess.Popen, log: Path, ray_temp: str):
        self._holder, self._log, self._lock = holder, log, threading.Lock()
        self.address = self._expect("ADDRESS")[0]
        self.head, self.worker = self._expect("NODES")
        self.env = {**os.environ, "RAY_ADDRESS": self.address, "RAY_TMPDIR": ray_temp,
                    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
                    # The nodes listen on 127.0.0.1 only; a driver must look for its raylet there too.
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

    @property
    def _stdin(self) -> IO[str]:
        assert self._holder.stdin is not None
        return self._holder.stdin

    def _expect(self, word: str) -> list[str]:
        assert self._holder.stdout is not None
        line = self._holder.stdout.readline()
        if not line.startswith(word + " "):
            raise RuntimeError(f"cluster holder answered {line.strip()!r}, expected {word}; its log:\n"
                               + self._log.read_text(errors="replace")[-3000:])
        return line.split()[1:]

    def add_node(self, num_cpus: int) -> str:
        """Start another worker node of `num_cpus` CPUs; returns its node id once it has joined."""
        with self._lock:
            self._stdin.write(f"add {int(num_cpus)}\n")
            self._stdin.flush()
            return self._expect("NODE")[0]

    def remove_node(self, node: str) -> None:
        """SIGKILL every process of worker node `node` (not the head): a machine lost, no graceful shutdown."""
        with self._lock:
            self._stdin.write(f"kill {node}\n")
            self._stdin.flush()
            self._expect("KILLED")

    def shutdown(self) -> None:
        try:
            self._stdin.write("quit\n")
            self._stdin.close()
            self._holder.wait(timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            self._holder.kill()
            self._holder.wait()


@pytest.fixture(scope="session")
def two_node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodeCluster]:
    """A Ray cluster of two 2-CPU nodes (head and one worker) on this machine, loopback only, for the whole
    session: its tests are sorted last (`pytest_collection_modifyitems`) and it is shut down at the end."""
    log = tmp_path_factory.mktemp("cluster") / "holder.log"
    # Its own Ray temp folder: the session's local runtime keeps its files (and its `ray_current_cluster`).
    temp = f"{os.environ.get('RAY_TMPDIR', '/tmp/ray')}-cluster"
    os.makedirs(temp, exist_ok=True)
    # OMP_NUM_THREADS=1: one intra-op thread in every process the nodes start, as in pytest's own (see the
    # top): Ray would give a 2-CPU trial two, and three such trials on 2 shared cores spin more than they train.
    holder = subprocess.Popen([sys.executable, str(TESTS / "cluster_holder.py")], cwd=TESTS.parent, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"),
                              env={**os.environ, "RAY_TMPDIR": temp, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
                                   "OMP_NUM_THREADS": "1"})
    try:
        cluster = TwoNodeCluster(holder, log, temp)
    except BaseException:
        holder.kill()
        holder.wait()
        raise
    try:
        yield cluster
    finally:
        cluster.shutdown()
