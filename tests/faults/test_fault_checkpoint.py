"""Fault 4: a truncated or corrupted checkpoint file.

Resuming reads checkpoints with `torch.load(weights_only=True)`, detects the damage, says so and falls back
to the checkpoint before it (every launcher keeps two); with none readable the run starts over. Never a
crash, never a crash loop. (Under Ray the same code runs on the folders Ray Train or Tune hand over; the
sweep-driver test resumes a Tune trial whose latest checkpoint was truncated.)
"""

from __future__ import annotations

import pickle

import pytest
import torch
from fault_helpers import TINY

from study.checkpoint import STATE_FILE, CheckpointError, safe_load
from study.config import Config
from study.train import LocalContext, train

CONFIG = Config.from_dict({**TINY, "method": "ce", "epochs": 3})


def interrupted_after(epochs: int, run_dir) -> LocalContext:
    """A run killed in the middle of epoch `epochs + 1`, after `epochs` checkpoints were written."""
    context = LocalContext(run_dir)

    def stop(step: int) -> None:
        if len(context.history) == epochs:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(CONFIG, context, on_step=stop)
    return context


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def epochs_trained(context: LocalContext) -> list[int]:
    return [metrics["epoch"] for metrics in context.history if metrics["stage"] == "ce"]


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    interrupted_after(2, tmp_path)
    latest, previous = sorted((tmp_path / "checkpoints").glob("checkpoint_*"))[::-1]
    truncate(latest / STATE_FILE)
    with pytest.raises(CheckpointError, match="unreadable"):
        safe_load(latest / STATE_FILE)

    resumed = LocalContext(tmp_path)
    final = train(CONFIG, resumed)
    out = capsys.readouterr().out
    assert f"checkpoint {latest / STATE_FILE} is unreadable" in out
    assert f"resuming from the older checkpoint {previous}" in out
    assert final["resumed_from"] == "ce:2" and epochs_trained(resumed) == [2, 3]

    # The fallback loses an epoch of work, not correctness: the run ends where an undisturbed one ends.
    undisturbed = train(CONFIG, LocalContext(tmp_path / "undisturbed"))
    assert final["test_top1"] == undisturbed["test_top1"] and final["val_top1"] == undisturbed["val_top1"]


def test_no_readable_checkpoint_starts_over_instead_of_failing(tmp_path, capsys):
    interrupted_after(2, tmp_path)
    for folder in (tmp_path / "checkpoints").glob("checkpoint_*"):
        (folder / STATE_FILE).write_bytes(b"not a checkpoint")
    resumed = LocalContext(tmp_path)
    final = train(CONFIG, resumed)
    assert "no readable checkpoint" in capsys.readouterr().out
    assert "resumed_from" not in final and epochs_trained(resumed) == [1, 2, 3]
    assert final["status"] == "completed"


def test_checkpoints_never_unpickle_code(tmp_path):
    """A state.pt that would run code when unpickled is refused by weights_only loading, not executed."""

    class Payload:
        def __reduce__(self):
            return (exec, ("import pathlib; pathlib.Path('PWNED').touch()",))

    path = tmp_path / STATE_FILE
    with path.open("wb") as file:
        pickle.dump({"networks": Payload()}, file)
    with pytest.raises(CheckpointError, match="unreadable") as refused:
        safe_load(path)
    # One line, and not torch's advice to retry with weights_only=False (which would run the payload).
    assert "\n" not in str(refused.value) and "weights_only=False" not in str(refused.value).replace(" ", "")
    torch.save({"networks": {"w": torch.ones(2)}}, tmp_path / "ok.pt")
    assert torch.equal(safe_load(tmp_path / "ok.pt")["networks"]["w"], torch.ones(2))
    assert not (tmp_path / "PWNED").exists() and not (tmp_path.cwd() / "PWNED").exists()
