"""What the atomic filesystem costs Ray's copies into a local study folder: Ray's own upload
(`ray.train._internal.storage._upload_to_fs_path`, what Tune's experiment snapshot and a trial's checkpoint
persist run) onto pyarrow's LocalFileSystem (what Ray resolves a local path to) vs onto
`study.storage.atomic_local_filesystem()` (what the study gives Ray since RELIABILITY.md fault 9).

    python -m benchmarks.snapshot_copy                    # 100 trials' driver files, a 100 MB checkpoint, 5 rounds
    python -m benchmarks.snapshot_copy --trials 400 --checkpoint-mb 200

Two copies, each into the same folder round after round (Tune rewrites the same names at every snapshot):
- the snapshot: a driver staging folder as Tune keeps one, per trial `result.json` (30 kB), `progress.csv`
  (15 kB), `events.out.tfevents` (15 kB), `params.json` and `params.pkl` (1 kB each), and at the top
  `experiment_state-*.json` (40 kB per trial, as in the tests' sweeps), `search_gen_state-*.json` and
  `tuner.pkl`; Tune copies all of it at every snapshot, in a background thread of the driver;
- a checkpoint: one `state.pt` of `--checkpoint-mb`, which a trial's report copies before training goes on.
Reported: the median wall of each copy over the rounds (alternated, after one uncounted copy on each), and
the difference per file and per MB. The atomic copy writes through Python and fsyncs each file and its
folder; LocalFileSystem's copy leaves the data in the page cache for the kernel to write back later, so part
of the difference is disk time the plain copy defers, not avoids.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs

from benchmarks.common import print_header, print_table
from study.storage import atomic_local_filesystem

TRIAL_FILES = {"result.json": 30_000, "progress.csv": 15_000, "events.out.tfevents.0": 15_000, "params.json": 1_000,
               "params.pkl": 1_000}
STAMP = "2026-12-08_10-00-00"


def write_staging(folder: Path, trials: int) -> int:
    """A driver staging folder of `trials` trials; returns its number of files."""
    for trial in range(trials):
        (folder / f"trial-{trial:04d}").mkdir(parents=True)
        for name, size in TRIAL_FILES.items():
            (folder / f"trial-{trial:04d}" / name).write_bytes(os.urandom(size))
    for name, size in {f"experiment_state-{STAMP}.json": 40_000 * trials, f"search_gen_state-{STAMP}.json": 5_000,
                       "tuner.pkl": 16_000}.items():
        (folder / name).write_bytes(os.urandom(size))
    return trials * len(TRIAL_FILES) + 3


def timed_copy(source: Path, filesystem: pafs.FileSystem, destination: Path) -> float:
    from ray.train._internal.storage import _upload_to_fs_path

    started = time.perf_counter()
    _upload_to_fs_path(str(source), filesystem, str(destination))
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.snapshot_copy", description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=100, help="trials in the snapshot's staging folder")
    parser.add_argument("--checkpoint-mb", type=int, default=100, help="size of the checkpoint's state.pt")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-snapshot-", dir=os.environ.get("BENCH_DIR")) as folder:
        root = Path(folder)
        files = write_staging(root / "staging", args.trials)
        (root / "checkpoint").mkdir()
        (root / "checkpoint" / "state.pt").write_bytes(os.urandom(args.checkpoint_mb * 10**6))
        print_header("Ray's copies into a local study: LocalFileSystem vs the atomic filesystem "
                     "(benchmarks/snapshot_copy.py)",
                     f"snapshot: {args.trials} trials, {files} files; checkpoint: {args.checkpoint_mb} MB; "
                     f"{args.rounds} alternated rounds; folder {root}")
        kinds = {"LocalFileSystem": pafs.LocalFileSystem(), "atomic": atomic_local_filesystem()}
        walls: dict[tuple[str, str], list[float]] = {}
        for round_ in range(args.rounds + 1):
            order = list(kinds) if round_ % 2 == 0 else list(reversed(kinds))
            for kind in order:
                for copy in ("snapshot", "checkpoint"):
                    source = root / ("staging" if copy == "snapshot" else "checkpoint")
                    wall = timed_copy(source, kinds[kind], root / "study" / kind / copy)
                    if round_:  # the first round creates the folders: uncounted
                        walls.setdefault((copy, kind), []).append(wall)
        rows = []
        for copy, units, unit in (("snapshot", files, "ms/file"), ("checkpoint", args.checkpoint_mb, "ms/MB")):
            plain_walls, atomic_walls = walls[(copy, "LocalFileSystem")], walls[(copy, "atomic")]
            plain, atomic = statistics.median(plain_walls), statistics.median(atomic_walls)
            rows.append({"copy": copy, "plain": plain * 1000, "atomic": atomic * 1000,
                         "extra": f"{(atomic - plain) * 1000 / units:.2f} {unit}",
                         "rounds": " ".join(f"{p * 1000:.0f}/{a * 1000:.0f}"
                                            for p, a in zip(plain_walls, atomic_walls, strict=True))})
        print_table(rows, [("copy", "copy", ""), ("plain", "LocalFileSystem ms (median)", ".0f"),
                           ("atomic", "atomic ms (median)", ".0f"), ("extra", "extra", ""),
                           ("rounds", "ms per round (plain/atomic)", "")])


if __name__ == "__main__":
    main()
