"""End to end under a real local Ray runtime: Ray Train with one worker, metrics, checkpoint, resume."""

from __future__ import annotations

import json
from pathlib import Path

from study.checkpoint import load_classifier
from study.config import Config
from study.launch import run_training

TINY = {"dataset": "digits", "model": "resnet18", "width": 0.0625, "batch_size": 64, "linear_batch_size": 64,
        "augmentation": "crop_flip", "epochs": 2, "linear_epochs": 1}


def test_ray_train_run_restarts_from_checkpoint_and_resumes_on_rerun(ray_session, tmp_path):
    storage = str(tmp_path / "runs")
    config = Config.from_dict(TINY)
    # A worker failure after the first epoch: Ray Train restarts the worker group, which resumes at the
    # next epoch from the checkpoint instead of starting over.
    first = run_training(config, storage=storage, name="digits-supcon", max_failures=1, fail_after_epochs=1)
    assert first["status"] == "completed" and 0 <= first["test_top1"] <= 100
    assert first["resumed_from"] == "contrastive:2"
    model, metadata = load_classifier(first["checkpoint"])
    assert metadata["config"]["epochs"] == 2 and metadata["test_top1"] == first["test_top1"]
    written = json.loads((Path(first["run_path"]) / "metrics.json").read_text())
    assert written["test_top1"] == first["test_top1"]

    # A second run started with the same name on the same storage picks up the finished run's state.
    second = run_training(config, storage=storage, name="digits-supcon")
    assert second["resumed_from"] == "finished"
    assert second["test_top1"] == first["test_top1"]
