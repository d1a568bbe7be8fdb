"""End to end under a real local Ray runtime: Ray Train with one worker, metrics, checkpoint, resume."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from study.checkpoint import load_classifier
from study.config import Config
from study.launch import run_training
from study.train import RunContext, train

TINY = {"dataset": "digits", "model": "resnet18", "width": 0.0625, "batch_size": 64, "linear_batch_size": 64,
        "augmentation": "crop_flip", "epochs": 2, "linear_epochs": 1}


def train_failing_once(config: Config, context: RunContext, *, after_epochs: int) -> dict[str, Any]:
    """The product's loop, with one injected worker crash: a fresh run (no checkpoint yet) raises once
    `after_epochs` epochs have been reported; the restarted run resumes from its checkpoint and goes on.

    Module-level, so that Ray can pickle it to the workers (by value: see `failing_once_after`)."""
    if context.latest_checkpoint() is None:
        context.report = _failing_after(context.report, after_epochs)  # type: ignore[method-assign]
    return train(config, context)


def _failing_after(report: Callable[..., None], epochs: int) -> Callable[..., None]:
    count = 0

    def report_then_fail(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        nonlocal count
        report(metrics, checkpoint_dir)
        count += 1
        if count >= epochs:
            raise RuntimeError(f"injected failure after {epochs} reported epoch(s)")

    return report_then_fail


def failing_once_after(epochs: int) -> Callable[[Config, RunContext], dict[str, Any]]:
    """A `train_fn` for `run_training` that crashes the fresh worker once after `epochs` reported epochs.

    Ray's workers cannot import this test module (pytest puts tests/ on the driver's sys.path only), so the
    module's functions travel by value rather than by reference."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return functools.partial(train_failing_once, after_epochs=epochs)


def test_ray_train_run_restarts_from_checkpoint_and_resumes_on_rerun(ray_session, tmp_path):
    storage = str(tmp_path / "runs")
    config = Config.from_dict(TINY)
    # A worker failure after the first epoch: Ray Train restarts the worker group, which resumes at the
    # next epoch from the checkpoint instead of starting over.
    first = run_training(config, storage=storage, name="digits-supcon", max_failures=1,
                         train_fn=failing_once_after(1))
    assert first["status"] == "completed" and 0 <= first["test_top1"] <= 100
    assert first["resumed_from"] == "contrastive:2"
    model, metadata = load_classifier(first["checkpoint"])
    assert metadata["config"]["epochs"] == 2 and metadata["test_top1"] == first["test_top1"]
    written = json.loads((Path(first["run_path"]) / "metrics.json").read_text())
    assert written["test_top1"] == first["test_top1"]

    # A second run started with the same name on the same storage picks up the finished run's state.
    snapshot = Path(first["run_path"]) / "checkpoint_manager_snapshot.json"  # Ray Train's record of the run
    with snapshot.open("rb") as held:
        recorded = held.read()
        second = run_training(config, storage=storage, name="digits-supcon")
        # Train rewrote its snapshot by a rename (atomically: a kill leaves the old one or the new one), not in
        # place: the file held open is the old one, unchanged.
        held.seek(0)
        assert os.fstat(held.fileno()).st_ino != snapshot.stat().st_ino and held.read() == recorded
    assert second["resumed_from"] == "finished"
    assert second["test_top1"] == first["test_top1"]
