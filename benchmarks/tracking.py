"""Tracker callbacks' overhead per trial: the same tiny sweep with no `--tracking`, with `tensorboard` and with
`mlflow:sqlite:///...`, in alternated rounds on one Ray runtime.

    python -m benchmarks.tracking                  # 3 rounds x 3 modes, 4 trials of 1 epoch each
    python -m benchmarks.tracking --rounds 3 --trials 6 --epochs 2

The sweep: a search design (cross-entropy on digits, 16 px, ResNet-18 at 1/16 width, lr sampled by TPE with
a fixed seed, so every mode trains the same trials), run through `study.sweep.run_sweep` as
`run_study.py sweep` runs it. Modes: `none` (Tune's defaults: it already writes TensorBoard event files per
trial when tensorboardX is installed, so `tensorboard` names that logger explicitly and should cost nothing
more), `tensorboard`, `mlflow` (one MLflow run per trial in a fresh SQLite store, every metric of every
result; the callback runs in the Tune driver), and `wandb` where the package is installed (offline: a logging
actor per trial writes its run into the trial folder). Reported per mode: the median sweep wall-clock over the rounds
(after one uncounted warm-up sweep), the median per-trial time (Tune's `time_total_s`, inside the trial),
seconds per trial added to the sweep wall against `none` ((wall - wall_none) / trials), the wall ratio, and
the seconds per trial added between each mode's fastest round (less exposed to a machine shared with others).
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from benchmarks.common import median, print_header, print_table, ray_runtime

MODES = ("none", "tensorboard", "mlflow", "wandb")  # wandb only where the package is installed
BASE = {"dataset": "digits", "image_size": 16, "model": "resnet18", "width": 0.0625, "batch_size": 128,
        "augmentation": "crop_flip", "schedule": "cosine"}


def write_space(folder: Path, trials: int, epochs: int) -> Path:
    space = {"name": "bench_tracking", "design": "search", "methods": ["ce"], "seeds": [0],
             "base": {**BASE, "epochs": epochs}, "metric": "val_top1", "num_samples": trials,
             "sampler": "TPESampler", "distributions": {"lr": {"type": "float", "low": 0.05, "high": 0.5, "log": True}}}
    path = folder / "bench_tracking.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def tracking_of(mode: str, folder: Path, name: str) -> tuple[str, ...]:
    if mode == "none":
        return ()
    if mode in ("tensorboard", "wandb"):
        return (mode,)  # wandb: offline runs in the trial folders
    return (f"mlflow:sqlite:///{(folder / f'{name}.db').resolve()}",)


def run_once(space: Path, folder: Path, mode: str, name: str) -> dict[str, float]:
    from study.sweep import SweepOptions, run_sweep

    options = SweepOptions(storage=str(folder / "runs"), name=name, tracking=tracking_of(mode, folder, name))
    started = time.perf_counter()
    study = run_sweep(str(space), {}, options)
    wall = time.perf_counter() - started
    results = pd.read_parquet(study / "results.parquet")
    if set(results["status"]) != {"completed"}:
        raise RuntimeError(f"{mode}: trials did not complete: {results['status'].tolist()}")
    return {"wall": wall, "trial": float(results["wall_seconds"].median())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    modes = tuple(mode for mode in MODES if mode != "wandb" or importlib.util.find_spec("wandb") is not None)
    measured: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp, ray_runtime() as runtime:
        folder = Path(tmp)
        space = write_space(folder, args.trials, args.epochs)
        run_once(space, folder, "none", "warm-up")  # not counted: the first sweep also pays imports and caches
        for round_number in range(args.rounds):
            # Alternated, rotating the order each round: a machine that slows down during the run does not
            # land on one mode.
            order = modes[round_number % len(modes):] + modes[:round_number % len(modes)]
            for mode in order:
                measured[mode].append(run_once(space, folder, mode, f"{mode}-{round_number}"))
    print_header("Tracker callbacks (benchmarks/tracking.py)",
                 f"{args.trials} trials x {args.epochs} epoch(s) per sweep, {args.rounds} alternated rounds, "
                 f"Ray start {runtime.seconds:.1f} s")
    none_wall = median(run["wall"] for run in measured["none"])
    none_best = min(run["wall"] for run in measured["none"])
    rows = []
    for mode in modes:
        wall = median(run["wall"] for run in measured[mode])
        rows.append({"mode": mode, "wall": wall, "trial": median(run["trial"] for run in measured[mode]),
                     "added": (wall - none_wall) / args.trials, "ratio": wall / none_wall,
                     "best_added": (min(run["wall"] for run in measured[mode]) - none_best) / args.trials,
                     "walls": " ".join(f"{run['wall']:.1f}" for run in measured[mode])})
    print_table(rows, [("mode", "tracking", ""), ("wall", "sweep wall s (median)", ".1f"),
                       ("trial", "trial s (median)", ".2f"), ("added", "s/trial vs none", "+.2f"),
                       ("ratio", "wall / none", ".3f"), ("best_added", "s/trial vs none (fastest rounds)", "+.2f"),
                       ("walls", "walls per round", "")])


if __name__ == "__main__":
    main()
