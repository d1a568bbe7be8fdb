"""Ray overhead: the same training as a plain single-process loop and under Ray Train with one worker.

    python -m benchmarks.ray_overhead                  # SupCon on digits, 6 contrastive + 1 linear epochs
    python -m benchmarks.ray_overhead --epochs 6

The training: SupCon on digits (16 px), ResNet-18 at 1/8 width, batch 128, SimAugment, then the linear stage;
the library's `study.train.train` in both cases. The plain loop is `train(config, LocalContext(...))` in this
process; the Ray run is the TorchTrainer that `study.launch.run_training` builds (`build_trainer(...).fit()`,
with a controller callback added that timestamps every report, since `run_training` returns only the final
metrics). The plain loop runs before and after the Ray run, to bracket the shared machine's drift.

Threads: Ray sets OMP_NUM_THREADS to a worker's CPUs, so the 1-CPU Train worker runs torch on 1 thread; the
plain loop is pinned to the same (torch.set_num_threads(1)), so the comparison is of Ray, not of threads.

Per epoch: the loop's own `epoch_seconds` (the training steps of an epoch; from LocalContext.history and
from the Ray run's reported metrics), and the interval between consecutive reports (an epoch including
validation and saving the checkpoint, which under Ray also persists it to the run's storage). Report times
are taken where the loop reports: in this process for the plain loop, from the worker-stamped checkpoint
folder names for the Ray run (the controller, where callbacks run, only polls the workers every 2 s).
Fixed costs: the Ray runtime's start (`connect_ray`, a local `ray.init`), the run's extra start-up (fit()
called -> first epoch reported, minus the same in the plain loop: worker group, worker imports, Train
setup), its extra teardown (last report -> fit() returns, minus the same in the plain loop), and for
reference a TorchTrainer whose loop does nothing (worker group start and stop alone).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import print_header, print_table, quiet, ray_runtime
from study.config import Config
from study.train import LocalContext, train

CONFIG = {"method": "supcon", "dataset": "digits", "image_size": 16, "model": "resnet18", "width": 0.125,
          "batch_size": 128, "linear_batch_size": 128, "augmentation": "simaugment", "linear_epochs": 1}
GOAL_RATIO = 1.10


@dataclass
class TimedLocalContext(LocalContext):
    """LocalContext that also notes when each report happened (seconds since `started`)."""

    started: float = field(default_factory=time.time)
    report_times: list[float] = field(default_factory=list)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        self.report_times.append(time.time() - self.started)  # when the loop reports, as for the Ray run
        super().report(metrics, checkpoint_dir)


@dataclass
class Run:
    """One training run: its reported metrics with their times (s since the run was called) and its wall."""

    label: str
    metrics: list[dict[str, Any]]
    times: list[float]
    wall: float

    def epochs(self, stage: str = "contrastive") -> list[float]:
        return [m["epoch_seconds"] for m in self.metrics if m.get("stage") == stage]

    def intervals(self, stage: str = "contrastive") -> list[float]:
        """Seconds between a report of `stage` and the report before it (the first epoch excluded)."""
        return [self.times[i] - self.times[i - 1] for i in range(1, len(self.metrics))
                if self.metrics[i].get("stage") == stage and self.metrics[i - 1].get("stage") == stage]

    def images_per_second(self, stage: str = "contrastive") -> float:
        return statistics.median(m["images_per_second"] for m in self.metrics if m.get("stage") == stage)

    @property
    def startup(self) -> float:
        """Call -> first epoch reported."""
        return self.times[0]

    @property
    def teardown(self) -> float:
        """Last report -> the call returned."""
        return self.wall - self.times[-1]


def run_plain(config: Config, folder: Path, label: str) -> Run:
    context = TimedLocalContext(folder)
    context.started = time.time()
    train(config, context)
    wall = time.time() - context.started
    return Run(label, context.history, context.report_times, wall)


def make_recorder(path: Path):
    """A Ray Train UserCallback appending every report to `path` as JSON lines. It runs in the Train
    controller, which polls the workers every 2 s, so its own clock would quantise the times; the time of
    a report is read instead from the name the worker gave the report's checkpoint folder
    (checkpoint_<local date and time, microseconds>), stamped when the loop called report."""
    from ray.train import UserCallback

    class ReportRecorder(UserCallback):
        def __init__(self, path: str) -> None:
            self.path = path

        def after_report(self, run_context, metrics, checkpoint) -> None:
            record = {"time": time.time(), "checkpoint": checkpoint.path if checkpoint else None,
                      "metrics": metrics[0]}
            with open(self.path, "a") as file:
                file.write(json.dumps(record) + "\n")

    return ReportRecorder(str(path))


def report_time(record: dict[str, Any]) -> float:
    """When the worker reported: from its checkpoint folder's name, else when the controller saw it."""
    if record["checkpoint"]:
        stamp = Path(record["checkpoint"]).name.removeprefix("checkpoint_")
        try:
            return datetime.strptime(stamp, "%Y-%m-%d_%H-%M-%S.%f").timestamp()
        except ValueError:
            pass
    return record["time"]


def run_ray(config: Config, storage: Path, name: str) -> Run:
    from study.launch import build_trainer

    storage.mkdir(parents=True, exist_ok=True)
    log = storage / f"{name}-reports.jsonl"
    trainer = build_trainer(config, storage=str(storage), name=name, callbacks=[make_recorder(log)])
    with quiet("the Ray Train run"):
        called = time.time()
        result = trainer.fit()
        wall = time.time() - called
    if result.error is not None:
        raise result.error
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return Run("Ray Train, 1 worker", [r["metrics"] for r in records], [report_time(r) - called for r in records],
               wall)


def empty_loop(_: dict[str, Any]) -> None:
    """A Train loop that does nothing: what is left is the worker group's start and stop."""


def run_empty_trainer(storage: Path) -> float:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(empty_loop, train_loop_config={}, scaling_config=ScalingConfig(num_workers=1),
                           run_config=RunConfig(name="empty", storage_path=str(storage)))
    with quiet("the empty TorchTrainer"):
        started = time.time()
        trainer.fit()
        return time.time() - started


def worker_threads() -> int:
    """torch's thread count inside a 1-CPU Ray worker (Ray sets OMP_NUM_THREADS from the CPUs it holds)."""
    import ray

    @ray.remote(num_cpus=1)
    def threads() -> int:
        return torch.get_num_threads()

    return ray.get(threads.remote())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6, help="contrastive epochs (then 1 linear epoch)")
    args = parser.parse_args(argv)
    config = Config.from_dict({**CONFIG, "epochs": args.epochs})
    torch.set_num_threads(1)
    print_header("Ray overhead: plain loop vs Ray Train with 1 worker, same training",
                 f"supcon on digits 16 px, resnet18 width {config.width}, batch {config.batch_size}, "
                 f"{config.augmentation}, {config.epochs} contrastive + {config.linear_epochs} linear epochs")
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the recorder runs in Ray's controller

    with tempfile.TemporaryDirectory(prefix="bench-ray-overhead-") as temporary:
        folder = Path(temporary)
        before = run_plain(config, folder / "plain-before", "plain loop (before)")
        with ray_runtime() as runtime:
            threads = worker_threads()
            ray_run = run_ray(config, folder / "ray", "supcon-digits")
            empty = run_empty_trainer(folder / "ray")
        ray_start = runtime.seconds
        after = run_plain(config, folder / "plain-after", "plain loop (after)")

    plain_epoch = statistics.mean([statistics.median(before.epochs()), statistics.median(after.epochs())])
    plain_interval = statistics.mean([statistics.median(before.intervals()), statistics.median(after.intervals())])
    print(f"\ntorch threads: plain loop {torch.get_num_threads()}, inside the 1-CPU Ray worker {threads}\n")
    rows = []
    for run in (before, ray_run, after):
        epoch, interval = statistics.median(run.epochs()), statistics.median(run.intervals())
        rows.append({"run": run.label, "epochs": ", ".join(f"{s:.2f}" for s in run.epochs()), "epoch": epoch,
                     "ratio": epoch / plain_epoch, "interval": interval, "interval_ratio": interval / plain_interval,
                     "images": run.images_per_second(), "linear": statistics.median(run.epochs("linear")),
                     "wall": run.wall})
    print_table(rows, [("run", "run", ""), ("epochs", "contrastive epoch_seconds", ""),
                       ("epoch", "median epoch s", ".2f"), ("ratio", "vs plain", ".2f"),
                       ("interval", "median report interval s", ".2f"), ("interval_ratio", "vs plain", ".2f"),
                       ("images", "views/s", ".0f"), ("linear", "linear epoch s", ".2f"), ("wall", "wall s", ".1f")])
    ratio = rows[1]["ratio"]
    print(f"goal: per-epoch time under Ray <= {GOAL_RATIO:.2f}x the plain loop's: "
          f"{'met' if ratio <= GOAL_RATIO else 'MISSED'} ({ratio:.2f}x; plain = mean of the before/after medians)\n")

    plain_startup = statistics.mean([before.startup, after.startup])
    plain_teardown = statistics.mean([before.teardown, after.teardown])
    print_table([
        {"cost": "Ray runtime start (connect_ray: a local ray.init, once per process)", "seconds": ray_start},
        {"cost": "Train run start-up: fit() -> 1st epoch reported, minus the plain loop's "
                 f"({ray_run.startup:.1f} - {plain_startup:.1f})", "seconds": ray_run.startup - plain_startup},
        {"cost": "Train run teardown: last report -> fit() returns, minus the plain loop's "
                 f"({ray_run.teardown:.1f} - {plain_teardown:.1f})", "seconds": ray_run.teardown - plain_teardown},
        {"cost": "for reference: TorchTrainer with an empty loop, fit() wall", "seconds": empty},
        {"cost": "whole run: Ray fit() wall - plain loop wall (mean of before/after)",
         "seconds": ray_run.wall - statistics.mean([before.wall, after.wall])},
    ], [("cost", "fixed cost", ""), ("seconds", "seconds", ".1f")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
