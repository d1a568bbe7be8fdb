"""Files a training run leaves behind: resumable training state and the final exported classifier.

Both are plain dicts of tensors and primitives written with `torch.save` and read back with
`torch.load(weights_only=True)`, so loading a checkpoint never runs pickled code. Writes are atomic
(temporary file in the same folder, fsync, rename): a run killed mid-write leaves the previous file intact,
never a truncated one under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from study.storage import atomic_write
from study.tables import MODEL_FILE

STATE_FILE = "state.pt"  # everything needed to resume training


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not one of ours. A ValueError: a checkpoint handed to a
    command is input, and a bad one is reported like any bad input (one line, exit code 2)."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` to `path` atomically."""
    return atomic_write(path, lambda file: torch.save(obj, file)).local_path


def safe_load(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict with `weights_only=True`; a corrupt file raises `CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, wrong format, disallowed global, ...
        raise CheckpointError(f"checkpoint {path} is unreadable ({_reason(error)})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(value).__name__}, expected a dict")
    return value


def _reason(error: Exception) -> str:
    """One line on why torch.load failed. Torch's weights-only refusal runs to several lines and advises
    loading with weights_only=False, which would run whatever the file pickled: keep only its verdict."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        return f"refused by weights-only loading: {detail[0] if detail else 'unsupported content'}"
    lines = text.strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else 'no detail'}"


def save_classifier(path: str | os.PathLike, classifier: torch.nn.Module, metadata: dict[str, Any]) -> Path:
    """Export the final classifier (encoder + linear layer) with the metadata evaluation needs:
    config, num_classes, image_size, mean, std, and the final metrics."""
    state = {key: value.detach().cpu() for key, value in unwrap(classifier).state_dict().items()}
    return atomic_save({**metadata, "classifier": state}, path)


def load_classifier(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild an exported classifier in eval mode. Returns the model and its metadata (without weights).

    `path` is a `model.pt` file or a folder holding one."""
    from study.config import Config
    from study.models import Classifier, build_encoder

    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    payload = safe_load(path)
    missing = {"config", "classifier", "num_classes", "image_size"} - payload.keys()
    if missing:
        raise CheckpointError(f"checkpoint {path} is not an exported classifier (missing {sorted(missing)})")
    config = Config.from_dict(payload["config"], source=str(path))
    encoder = build_encoder(config.model, width=config.width, stem=config.stem, image_size=payload["image_size"])
    model = Classifier(encoder, payload["num_classes"], normalize_embedding=config.normalize_embedding)
    model.load_state_dict(payload["classifier"])
    model.eval()
    metadata = {key: value for key, value in payload.items() if key != "classifier"}
    metadata["path"] = str(path)
    return model, metadata


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper, if any."""
    return getattr(module, "module", module)
