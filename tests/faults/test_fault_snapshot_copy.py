"""Fault 9: the sweep driver killed while Tune copies its experiment snapshot into a local study folder.

Tune writes each snapshot (`experiment_state-*.json`, `search_gen_state-*.json`, a pickle) in the driver's
staging folder and then copies the folder into the study with `pyarrow.fs.copy_files`, the same file names
every time within a run. Here a real process runs that copy, Ray's own code (`StorageContext.syncer`), on the
storage `study.sweep` configures for a local study, and the kernel kills it in the middle of the search
snapshot: RLIMIT_FSIZE below the snapshot's size, with SIGXFSZ at its default action (end the process; Python
ignores it otherwise), so the kill lands at a known byte, every run, and no code of the process runs after it.
"""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
from pathlib import Path

from fault_helpers import REPO

from study.storage import TEMPORARY_SUFFIX

LIMIT_BYTES = 2**20  # the largest file the killed process may write
STAMP = "2026-12-08_10-00-00"  # Tune names a run's snapshots by the run's start: each sync rewrites these names

COPY_THEN_DIE = """
import resource, signal, sys
from ray.train._internal.storage import StorageContext
from study.storage import Location
from study.sweep import SweepOptions, _tune_run_config

staging, experiment = sys.argv[1], Location.of(sys.argv[2])
config = _tune_run_config(experiment, SweepOptions(storage=str(experiment.parent.parent)), total=1)
storage = StorageContext(storage_path=config.storage_path, experiment_dir_name=config.name,
                         storage_filesystem=config.storage_filesystem)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
storage.syncer.sync_up(staging, storage.experiment_fs_path)  # what Tune's experiment snapshot does
storage.syncer.wait()
print("copied in full")
"""


def snapshot(generation: int, payload_bytes: int) -> dict[str, bytes]:
    """One generation of a run's snapshot files, by name (the search snapshot a pickle, as Tune's is)."""
    search = pickle.dumps({"generation": generation, "searcher": b"s" * payload_bytes})
    state = f'{{"generation": {generation}, "trial_data": []}}'.encode()
    return {f"search_gen_state-{STAMP}.json": search, f"experiment_state-{STAMP}.json": state}


def test_a_driver_killed_while_copying_the_search_snapshot_leaves_the_previous_one_whole(tmp_path):
    study = tmp_path / "runs" / "killed-copy"
    experiment, staging = study / "tune", tmp_path / "driver_artifacts"
    experiment.mkdir(parents=True)
    staging.mkdir()
    previous, newer = snapshot(1, 1000), snapshot(2, 4 * LIMIT_BYTES)  # the newer search snapshot cannot fit
    for name, data in previous.items():
        (experiment / name).write_bytes(data)
    for name, data in newer.items():
        (staging / name).write_bytes(data)

    copy = subprocess.run([sys.executable, "-c", COPY_THEN_DIE, str(staging), str(experiment), str(LIMIT_BYTES)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert copy.returncode == -signal.SIGXFSZ, copy.stdout + copy.stderr  # killed mid-copy, as planned

    # Every snapshot file under its name is whole: the previous search snapshot (the one Tune restores from,
    # intact), the experiment state previous or newer. Before the fix the search snapshot was cut at the limit
    # and a resume failed (`EOFError: Ran out of input`, then `KeyError: 'options'`).
    search = f"search_gen_state-{STAMP}.json"
    assert (experiment / search).read_bytes() == previous[search] != newer[search]  # generation 1's, whole
    state = f"experiment_state-{STAMP}.json"
    assert (experiment / state).read_bytes() in (previous[state], newer[state])
    # What the kill left besides: hidden temporaries only, which neither Tune (it restores `*.json`/`*.pkl`,
    # the newest `experiment_state-*.json`) nor `collect` reads.
    left = {path.name for path in experiment.iterdir()} - set(previous) - {".validate_storage_marker"}
    assert all(name.startswith(".") and name.endswith(TEMPORARY_SUFFIX) for name in left), left
    assert not [path for path in Path(experiment).glob("*.json") if path.name not in previous]
