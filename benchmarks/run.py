"""Run every benchmark, one fresh process each, and print how long each took.

    python -m benchmarks                        # all of them (CPU, under 15 minutes on 2 cores; + gpu on CUDA)
    python benchmarks/run.py                    # the same
    python -m benchmarks --only data corruptions
    python -m benchmarks --skip sweep_efficiency
    python -m benchmarks --only coverage        # the stability intervals' coverage (statistics, not timing)

Each benchmark runs as `python -m benchmarks.<name>` from the repository root, in its own process, so one
benchmark's Ray runtime, torch thread setting or allocator state cannot colour the next one's numbers.
Their tables go straight to this console. `gpu` (ResNet-50 training steps) runs only where CUDA is available.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CPU_BENCHMARKS = ("loss", "memory", "ray_overhead", "sweep_efficiency", "data", "augment", "corruptions",
                  "coverage", "snapshot_copy")
BENCHMARKS = CPU_BENCHMARKS + ("gpu",)


def run_one(name: str) -> tuple[int, float]:
    """Run `python -m benchmarks.<name>`; return its exit code and wall seconds."""
    command = [sys.executable, "-m", f"benchmarks.{name}"]
    print(f"\n$ {' '.join(['python'] + command[1:])}", flush=True)
    started = time.perf_counter()
    returncode = subprocess.call(command, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return returncode, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    parser.add_argument("--skip", nargs="+", choices=BENCHMARKS, default=[], help="run all but these")
    args = parser.parse_args(argv)
    default = BENCHMARKS if torch.cuda.is_available() else CPU_BENCHMARKS
    names = [name for name in (args.only or default) if name not in args.skip]

    started = time.perf_counter()
    outcomes = {name: run_one(name) for name in names}
    total = time.perf_counter() - started
    print("\n== Summary ==")
    for name, (returncode, seconds) in outcomes.items():
        print(f"{name:<18} {seconds:7.1f} s  {'ok' if returncode == 0 else f'FAILED (exit {returncode})'}")
    print(f"{'total':<18} {total:7.1f} s")
    return 0 if all(returncode == 0 for returncode, _ in outcomes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
