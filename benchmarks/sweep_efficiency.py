"""Sweep efficiency: a grid of 8 short trials under Ray Tune vs the same trials one after another in a plain
process, and ASHA early stopping over exactly that grid.

    python -m benchmarks.sweep_efficiency               # 8 trials (4 lr x 2 augmentations), 4 epochs each
    python -m benchmarks.sweep_efficiency --epochs 6 --grace-period 2
    python -m benchmarks.sweep_efficiency --no-what-if  # skip the fresh-process-per-trial comparison

The trials: cross-entropy on digits (16 px), ResNet-18 at 1/16 width, batch 128, cosine schedule; the grid
varies lr over [0.05, 0.2, 0.8, 3.2] and augmentation over [crop_flip, simaugment]. The spaces are written
into a temporary folder and run through `study.sweep.run_sweep`, exactly as `run_study.py sweep` runs them.

Definitions (all times wall-clock):
- trial time: Tune's `time_total_s` of the trial (the `wall_seconds` column of results.parquet);
- occupancy (scheduling efficiency) = sum of trial times / (sweep wall x concurrency): the share of the
  trial slots' time spent inside trials, rather than starting actors, scheduling and collecting;
- speed-up = (the 8 trials run one after another by `train(config, LocalContext)` in this process, torch at
  1 thread like a 1-CPU trial) / sweep wall; parallel efficiency = speed-up / concurrency. Below occupancy
  it also counts the trials slowing each other down on shared cores.
ASHA vs grid: the ASHA run is a `search` design whose categorical distributions equal the grid and whose
sampler is Optuna's GridSampler over the same values, so it runs exactly the 8 grid configs (same seed) and
differs only by ASHA (grace 1 epoch, reduction factor 2) stopping some early. Share of epochs = epochs ASHA
trained / epochs the grid trained. ASHA's pick is the best val top-1 among its trials that ran the full
budget (completed); it "matches" when the grid's val top-1 of that config is within 1 point of the grid's
best (selection is on validation, never test).
Actor reuse: study.sweep runs one-worker trials with Tune's `reuse_actors=True` (one trial process serves
the trials of its slot, since 9100bc1). For comparison the grid runs once more with a fresh process per
trial, as before (`study.sweep._reuse_actors` patched to False for that run only): the difference is the
per-trial start cost, and its results must equal the grid's (no state may leak between reused trials).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import yaml

from benchmarks.common import print_header, print_table, quiet, ray_runtime

GRID = {"lr": [0.05, 0.2, 0.8, 3.2], "augmentation": ["crop_flip", "simaugment"]}
BASE = {"dataset": "digits", "image_size": 16, "model": "resnet18", "width": 0.0625, "batch_size": 128,
        "augmentation": "crop_flip", "lr": 0.5, "schedule": "cosine"}
ASHA = {"type": "asha", "grace_period": 1, "reduction_factor": 2}
TOLERANCE_POINTS = 1.0


def write_spaces(folder: Path, epochs: int, asha_options: dict = ASHA) -> tuple[Path, Path]:
    """The grid space and the ASHA-over-the-same-grid search space, as YAML files in `folder`."""
    base = {**BASE, "epochs": epochs}
    grid = {"name": "bench_grid", "design": "grid", "methods": ["ce"], "seeds": [0], "base": base,
            "vary": GRID}
    asha = {"name": "bench_asha", "design": "search", "methods": ["ce"], "seeds": [0], "base": base,
            "distributions": {name: {"type": "categorical", "choices": values} for name, values in GRID.items()},
            "num_samples": len(GRID["lr"]) * len(GRID["augmentation"]),
            "sampler": "GridSampler", "sampler_args": {"search_space": GRID, "seed": 0}, "scheduler": asha_options}
    paths = folder / "bench_grid.yaml", folder / "bench_asha.yaml"
    for path, space in zip(paths, (grid, asha), strict=True):
        path.write_text(yaml.safe_dump(space, sort_keys=False))
    return paths


def run_plain(grid_path: Path, folder: Path) -> pd.DataFrame:
    """The grid's trials one after another in this process (torch at 1 thread, as in a 1-CPU Tune trial)."""
    from study.spaces import load_space
    from study.train import LocalContext, train

    rows = []
    for spec in load_space(str(grid_path)).trials():
        started = time.perf_counter()
        final = train(spec.config, LocalContext(folder / spec.trial_name))
        rows.append({**spec.hyperparameters, "plain_seconds": time.perf_counter() - started,
                     "plain_val_top1": final["val_top1"]})
    return pd.DataFrame(rows)


@dataclass
class SweepRun:
    """One `run_sweep` call: its wall time, results table and when its trials ran (seconds from the call)."""

    wall: float
    results: pd.DataFrame
    spans: list[tuple[float, float]]  # (start, end) of each trial's clock

    def summary(self, label: str, concurrency: int) -> dict[str, float | str | int]:
        total = float(self.results["wall_seconds"].sum())
        return {"how": label, "trials": len(self.results), "wall": self.wall, "sum": total,
                "median": float(self.results["wall_seconds"].median()),
                "occupancy": total / (self.wall * concurrency),
                "first": min(start for start, _ in self.spans),
                "lost": (self.wall * concurrency - total) / len(self.results)}


def run_study(path: Path, storage: Path, name: str, *, fresh_processes: bool = False) -> SweepRun:
    """`run_sweep` on a space file, timed. `fresh_processes`: every trial in a new process, as study.sweep
    did before it reused trial actors (for comparison only)."""
    import study.sweep as sweep_module
    from study.sweep import SweepOptions, run_sweep

    original = sweep_module._reuse_actors
    if fresh_processes:
        sweep_module._reuse_actors = lambda options: False
    try:
        with quiet(f"the sweep {name!r}"):
            called = time.time()
            study = run_sweep(str(path), {}, SweepOptions(storage=str(storage), name=name, verbose=0,
                                                          max_failures=0))
            wall = time.time() - called
    finally:
        sweep_module._reuse_actors = original
    return SweepRun(wall, pd.read_parquet(study / "results.parquet"), trial_spans(study.local_path, called))


def trial_spans(study: Path, called: float) -> list[tuple[float, float]]:
    """(start, end) of every trial's clock, from Tune's result.json files (the first iteration's time counts
    from the trainable's start)."""
    spans = []
    for path in study.glob("tune*/*/result.json"):
        results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if results:
            first, last = results[0], results[-1]
            spans.append((first["timestamp"] - first["time_this_iter_s"] - called, last["timestamp"] - called))
    return spans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial (ASHA needs a few)")
    parser.add_argument("--grace-period", type=int, default=ASHA["grace_period"], help="ASHA's first rung, epochs")
    parser.add_argument("--reduction-factor", type=float, default=ASHA["reduction_factor"])
    parser.add_argument("--no-what-if", action="store_true",
                        help="skip the grid's second run with a fresh process per trial")
    args = parser.parse_args(argv)
    asha_options = {**ASHA, "grace_period": args.grace_period, "reduction_factor": args.reduction_factor}
    torch.set_num_threads(1)
    print_header("Sweep efficiency: 8 trials under Ray Tune vs one after another; ASHA vs the full grid",
                 f"ce on digits 16 px, resnet18 width {BASE['width']}, batch {BASE['batch_size']}, "
                 f"{args.epochs} epochs per trial; grid {GRID}; ASHA {asha_options}")

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as temporary:
        folder = Path(temporary)
        grid_path, asha_path = write_spaces(folder, args.epochs, asha_options)
        plain = run_plain(grid_path, folder / "plain")
        with ray_runtime() as runtime:
            import ray

            from study.sweep import SweepOptions, max_concurrency, trial_resources

            concurrency = max_concurrency(ray.cluster_resources(), trial_resources(SweepOptions()))
            grid_run = run_study(grid_path, folder / "runs", "grid")
            asha_run = run_study(asha_path, folder / "runs", "asha")
            fresh_run = run_study(grid_path, folder / "runs", "grid-fresh", fresh_processes=True) \
                if not args.no_what_if else None
        ray_start = runtime.seconds

    grid, asha = grid_run.results, asha_run.results
    plain_sum = float(plain["plain_seconds"].sum())
    print(f"\nRay runtime start (once, not in the walls below): {ray_start:.1f} s; concurrency allowed: "
          f"{concurrency} trials at a time (1 CPU each)\n")
    rows = [{"how": "plain process, one after another", "trials": len(plain), "wall": plain_sum, "sum": plain_sum,
             "median": float(plain["plain_seconds"].median()), "occupancy": 1.0}]
    same_work = [grid_run.summary(f"Ray Tune grid, {concurrency} at a time", concurrency)]
    if fresh_run is not None:
        same_work.append(fresh_run.summary("the grid, a fresh process per trial", concurrency))
    for row in same_work:  # the same 8 full trials as the plain run (ASHA trains fewer epochs)
        row.update(speed_up=plain_sum / row["wall"], efficiency=plain_sum / row["wall"] / concurrency)
    rows += same_work + [asha_run.summary(f"Ray Tune ASHA over the grid, {concurrency} at a time", concurrency)]
    print_table(rows, [
        ("how", "run", ""), ("trials", "trials", "d"), ("wall", "wall s", ".1f"), ("sum", "sum of trial s", ".1f"),
        ("median", "median trial s", ".1f"), ("occupancy", "occupancy", ".2f"), ("first", "1st trial starts s", ".0f"),
        ("lost", "slot s lost / trial", ".1f"), ("speed_up", "speed-up vs plain", ".2f"),
        ("efficiency", "parallel eff.", ".2f")])
    print("(slot s lost / trial = (wall x concurrency - sum of trial s) / trials: actor start, imports, scheduling; "
          "Tune's timestamps are whole seconds)")

    keys = list(GRID)
    merged = grid[keys + ["status", "epochs_run", "val_top1", "test_top1", "wall_seconds"]].merge(
        asha[keys + ["status", "epochs_run", "val_top1", "wall_seconds"]], on=keys, how="outer",
        suffixes=("_grid", "_asha")).merge(plain[keys + ["plain_val_top1"]], on=keys, how="left")
    columns = [("lr", "lr", "g"), ("augmentation", "augmentation", ""), ("epochs_run_grid", "grid epochs", "d"),
               ("val_top1_grid", "grid val top-1", ".1f"), ("test_top1", "grid test top-1", ".1f"),
               ("plain_val_top1", "plain val top-1", ".1f")]
    if fresh_run is not None:  # the same numbers, or reused trial processes would leak state
        fresh = fresh_run.results[keys + ["val_top1"]].rename(columns={"val_top1": "fresh_val_top1"})
        merged = merged.merge(fresh, on=keys, how="left")
        columns.append(("fresh_val_top1", "fresh-process val top-1", ".1f"))
    columns += [("epochs_run_asha", "ASHA epochs", "d"), ("status_asha", "ASHA status", ""),
                ("val_top1_asha", "ASHA last val top-1", ".1f")]
    merged = merged.sort_values(keys).reset_index(drop=True)
    print()
    print_table(merged.to_dict("records"), columns)

    grid_epochs, asha_epochs = int(grid["epochs_run"].sum()), int(asha["epochs_run"].sum())
    best = grid.loc[grid["val_top1"].idxmax()]
    completed = asha[asha["status"] == "completed"]
    print(f"\nASHA: {asha_epochs} of the grid's {grid_epochs} epochs ({asha_epochs / grid_epochs:.0%}); "
          f"wall {asha_run.wall:.1f} s vs the grid's {grid_run.wall:.1f} s ({asha_run.wall / grid_run.wall:.2f}x); "
          f"{len(completed)} of {len(asha)} trials ran the full budget")
    described = ", ".join(f"{key}={best[key]}" for key in keys)
    print(f"grid's best: {described}: val top-1 {best['val_top1']:.2f}")
    if len(completed) == 0:
        print("ASHA completed no trial: no pick")
        return 0
    pick = completed.loc[completed["val_top1"].idxmax()]
    picked = grid[(grid[keys] == pick[keys]).all(axis=1)].iloc[0]
    gap = best["val_top1"] - picked["val_top1"]
    described = ", ".join(f"{key}={pick[key]}" for key in keys)
    print(f"ASHA's pick: {described}: val top-1 {pick['val_top1']:.2f} in the ASHA run, {picked['val_top1']:.2f} in "
          f"the grid; {gap:.2f} points below the grid's best: "
          f"{'within' if gap <= TOLERANCE_POINTS else 'NOT within'} {TOLERANCE_POINTS:g} point")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
