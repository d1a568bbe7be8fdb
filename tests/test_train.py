"""The training loop without Ray: metrics, checkpoints, resume, divergence, reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from study.checkpoint import load_classifier, safe_load
from study.config import Config
from study.train import LocalContext, stages_of, train

TINY = {"dataset": "digits", "model": "resnet18", "width": 0.0625, "epochs": 1, "linear_epochs": 1,
        "batch_size": 64, "linear_batch_size": 64, "augmentation": "crop_flip"}


def tiny(**changes) -> Config:
    return Config.from_dict({**TINY, **changes})


def test_stages():
    assert stages_of(tiny(method="supcon")) == ["contrastive", "linear"]
    assert stages_of(tiny(method="simclr")) == ["contrastive", "linear"]
    assert stages_of(tiny(method="ce")) == ["ce"]
    assert stages_of(tiny(method="ce", ce_two_stage=True)) == ["ce", "linear"]


@pytest.mark.slow  # end-to-end training
@pytest.mark.parametrize("method", ["supcon", "simclr", "ce"])
def test_each_method_trains_reports_and_exports(tmp_path, method):
    context = LocalContext(tmp_path)
    final = train(tiny(method=method), context)
    assert final["status"] == "completed"
    epochs = [m for m in context.history if m["stage"] != "final"]
    assert [m["stage"] for m in epochs] == stages_of(tiny(method=method))
    for metrics in epochs:
        assert math.isfinite(metrics["loss"]) and metrics["lr"] >= 0
        assert 0 <= metrics["val_top1"] <= metrics["val_top5"] <= 100
        assert metrics["images_per_second"] > 0 and metrics["epoch_seconds"] > 0
    assert 0 <= final["test_top1"] <= final["test_top5"] <= 100
    model, metadata = load_classifier(final["checkpoint"])
    assert metadata["num_classes"] == 10 and metadata["test_top1"] == final["test_top1"]
    logits = model(torch.rand(2, 3, metadata["image_size"], metadata["image_size"]))
    assert logits.shape == (2, 10)


@pytest.mark.slow  # end-to-end training
def test_training_learns_digits(tmp_path):
    """Cross-entropy on digits for a few epochs beats chance by a wide margin."""
    final = train(tiny(method="ce", epochs=4, width=0.125), LocalContext(tmp_path))
    assert final["test_top1"] > 50


@pytest.mark.slow  # end-to-end training
def test_resume_continues_at_the_next_epoch(tmp_path):
    config = tiny(method="supcon", epochs=2, linear_epochs=1)
    interrupted = LocalContext(tmp_path)

    def stop_in_second_epoch(step: int) -> None:
        if len(interrupted.history) == 1:  # the first epoch has been reported and checkpointed
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, interrupted, on_step=stop_in_second_epoch)
    assert [(m["stage"], m["epoch"]) for m in interrupted.history] == [("contrastive", 1)]
    resumed = LocalContext(tmp_path)
    final = train(config, resumed)
    assert [(m["stage"], m["epoch"]) for m in resumed.history] == [("contrastive", 2), ("linear", 1), ("final", 0)]
    assert final["status"] == "completed"
    assert len(list((tmp_path / "checkpoints").glob("checkpoint_*"))) == 2  # keeps the last two


@pytest.mark.slow  # end-to-end training
def test_seeded_runs_are_reproducible_on_cpu(tmp_path):
    first = train(tiny(method="ce"), LocalContext(tmp_path / "a"))
    second = train(tiny(method="ce"), LocalContext(tmp_path / "b"))
    assert first["test_top1"] == second["test_top1"]
    weights_a = safe_load(first["checkpoint"])["classifier"]
    weights_b = safe_load(second["checkpoint"])["classifier"]
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)


def test_non_finite_loss_ends_as_diverged(tmp_path):
    """A learning rate this large overflows within the first epoch: the run stops cleanly, not crashes."""
    context = LocalContext(tmp_path)
    final = train(tiny(method="ce", lr=1e30, epochs=2), context)
    assert final["status"] == "diverged" and final["diverged_epoch"] == 1
    assert context.history[-1]["status"] == "diverged"
    assert "test_top1" not in final


@pytest.mark.slow  # end-to-end training
def test_normalized_embedding_linear_head_on_a_stratified_half(tmp_path):
    """normalize_embedding, the linear projection head and train_fraction together, end to end."""
    from study.augment import build_eval_transform
    from study.data import TransformedDataset, load_dataset
    from study.train import classifier_accuracy

    config = tiny(method="supcon", normalize_embedding=True, projection_head="linear", train_fraction=0.5)
    steps: list[int] = []
    final = train(config, LocalContext(tmp_path), on_step=steps.append)
    assert final["status"] == "completed" and 0 <= final["test_top1"] <= 100
    half = round(0.5 * len(load_dataset("digits").train))
    assert len(steps) == 2 * (half // 64)  # one contrastive and one linear epoch over half the images
    state = safe_load(tmp_path / "checkpoints" / sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[-1]
                      / "state.pt")["networks"]
    head = {key: value.shape for key, value in state["contrastive"].items() if key.startswith("head.")}
    assert head == {"head.linear.weight": (128, 32)}  # one bias-free Linear, encoder width -> projection_dim
    payload = safe_load(final["checkpoint"])
    assert payload["config"]["normalize_embedding"] is True and payload["config"]["train_fraction"] == 0.5
    # the exported model, as robustness evaluation loads it, normalises and gives the reported test numbers
    model, _ = load_classifier(final["checkpoint"])
    features = model.eval().features(torch.rand(3, 3, 16, 16))
    torch.testing.assert_close(features.norm(dim=1), torch.ones(3))
    splits = load_dataset("digits")
    test_set = TransformedDataset(splits.test, build_eval_transform(image_size=16, mean=splits.mean, std=splits.std))
    assert classifier_accuracy(model, test_set, config, LocalContext(tmp_path / "eval")) == (
        final["test_top1"], final["test_top5"])
