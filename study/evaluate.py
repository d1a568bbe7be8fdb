"""Evaluating a classifier on image arrays: top-1 error and expected calibration error, batch by batch.

Plain PyTorch and numpy, no Ray: `study.robustness` calls `evaluate_model` inside its Ray tasks, and a
notebook or test calls it directly on arrays, memory maps or `study.corrupted_sets.ImageFileArray`s.
ECE uses 15 equal-width confidence bins (Guo et al. 2017); on CUDA the forward pass runs under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from study.corrupted_sets import Images

__all__ = ["ECE_BINS", "expected_calibration_error", "evaluate_model"]

ECE_BINS = 15


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error (Guo et al. 2017): sum over equal-width confidence bins (lo, hi] of
    |bin| / n * |accuracy(bin) - mean confidence(bin)|. `confidences` in [0, 1], `correct` booleans."""
    confidences = np.asarray(confidences, dtype=np.float64).reshape(-1)
    correct = np.asarray(correct).reshape(-1)
    if confidences.shape != correct.shape:
        raise ValueError(f"confidences ({confidences.size}) and correct ({correct.size}) differ in length")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"invalid n_bins={n_bins!r}; allowed: an integer >= 1")
    if confidences.size == 0:
        return float("nan")
    if not np.all((confidences >= 0) & (confidences <= 1)):
        raise ValueError(f"confidences range over [{confidences.min()}, {confidences.max()}]; allowed: [0, 1]")
    # Bin b holds (b / n_bins, (b + 1) / n_bins]; a confidence of exactly 0 joins the first bin.
    bins = np.clip(np.ceil(confidences * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    confidence_sums = np.bincount(bins, weights=confidences, minlength=n_bins)
    correct_sums = np.bincount(bins, weights=correct.astype(np.float64), minlength=n_bins)
    return float(np.abs(correct_sums - confidence_sums).sum() / confidences.size)


def evaluate_model(
    model: torch.nn.Module,
    images: Images,
    labels: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
) -> dict[str, float | int]:
    """Top-1 error and ECE of a classifier on uint8 images.

    Args:
        model: maps normalised float images [B, 3, S, S] to logits [B, C]; put in eval mode here.
        images: uint8 [N, H, W, 3] (an array, memmap or `ImageFileArray`; only `len` and slicing are used).
        labels: int [N].
        mean, std: per-channel normalisation of the model, in [0, 1] pixel units.
        device: where the model runs; on CUDA the forward pass uses bf16 autocast.
        image_size: the size the model expects; images of another size are resized (antialiased) and
            centre-cropped to it. None: use the images as they are.

    Returns:
        {"error": fraction misclassified, "ece": expected calibration error (15 bins), "n": N}.
    """
    labels = np.asarray(labels).reshape(-1)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"invalid batch_size={batch_size!r}; allowed: an integer >= 1")
    device = torch.device(device)
    model = model.to(device).eval()
    mean_tensor = torch.tensor([float(m) for m in mean], device=device).view(1, 3, 1, 1) * 255
    std_tensor = torch.tensor([float(s) for s in std], device=device).view(1, 3, 1, 1) * 255
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _no_autocast()
    confidences, correct = [], []
    with torch.inference_mode(), autocast:
        for start in range(0, len(labels), batch_size):
            batch = np.asarray(images[start : start + batch_size])
            if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
                raise ValueError(f"images must be uint8 [N, H, W, 3], got {batch.dtype} {batch.shape}")
            # Memory maps and Ray's zero-copy arrays are read-only, which torch.from_numpy warns about.
            batch = np.require(batch, requirements=["C_CONTIGUOUS", "WRITEABLE"])
            pixels = torch.from_numpy(batch).to(device, non_blocking=True).permute(0, 3, 1, 2)
            if image_size is not None and pixels.shape[-2:] != (image_size, image_size):
                pixels = _resize_center_crop(pixels, image_size)
            inputs = (pixels.float() - mean_tensor) / std_tensor
            probabilities = torch.softmax(model(inputs).float(), dim=1)
            confidence, prediction = probabilities.max(dim=1)
            target = torch.from_numpy(labels[start : start + batch_size].astype(np.int64)).to(device)
            confidences.append(confidence.cpu().numpy())
            correct.append((prediction == target).cpu().numpy())
    confidence_all = np.concatenate(confidences) if confidences else np.empty(0)
    correct_all = np.concatenate(correct) if correct else np.empty(0, bool)
    n = int(correct_all.size)
    return {
        "error": float(1 - correct_all.mean()) if n else float("nan"),
        "ece": expected_calibration_error(confidence_all, correct_all),
        "n": n,
    }


def _resize_center_crop(pixels: torch.Tensor, size: int) -> torch.Tensor:
    from torchvision.transforms import v2

    height, width = pixels.shape[-2:]
    scale = size / min(height, width)
    target = [max(size, round(height * scale)), max(size, round(width * scale))]
    resized = v2.functional.resize(pixels, target, antialias=True)
    return v2.functional.center_crop(resized, [size, size])


class _no_autocast:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
