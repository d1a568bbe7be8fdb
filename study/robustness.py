"""Corruption robustness, the evaluation side: corrupted test sets on disk, their loaders, and the evaluation
of trained checkpoints on clean and corrupted data, fanned out as Ray tasks.

On disk:
- CIFAR-C layout (released CIFAR-10-C / CIFAR-100-C, and sets generated here): a folder with one
  `<corruption>.npy` of shape (5*N, H, W, 3) uint8, severities 1-5 in blocks of N in test-set order, and
  `labels.npy` ((5*N,) as released, the test labels once per block; (N,) is accepted too). Sets generated
  here add `clean.npy` (the N source images, so evaluation needs no dataset) and `generation.json` (N, H, W,
  seed, corruption profile and a fingerprint of the source, so a folder is reused only for the same images,
  seed and profile; a record without a profile is from before profiles existed, i.e. `imagenet`).
- ImageNet-C layout: `<root>/<corruption>/<severity>/<wnid>/*.JPEG`; labels follow ImageNet's class order
  (sorted wnids, as torchvision's ImageFolder), or a given `class_names` list. Its images were made by
  resizing to 256 and centre-cropping 224 before corrupting, so 224 x 224 images are used as they are (the
  reference evaluation only centre-crops 224) and any other size gets the toolkit's evaluation geometry
  (`study.augment.eval_geometry`, resize to 256 and centre-crop 224 at 224 px).

Generation writes every file atomically (temporary file in the same folder, fsync, rename), so a killed run
leaves only hidden `.<name>.npy.*.tmp` files, which no loader reads and the next run deletes; a `.npy` under
its final name is complete, and is reused only when its header and size match.

Evaluation: top-1 error and expected calibration error (15 equal-width confidence bins) per (corruption,
severity), plus a clean row (corruption "clean", severity 0), and the corrupted set's corruption profile on
every row (`cifar` or `imagenet` for sets generated here, `external` for any other folder, e.g. the released
CIFAR-10-C; `study.corruptions` explains the profiles). One Ray task per checkpoint (a GPU each when
the cluster has GPUs; bf16 autocast there). Corrupted sets are read by path inside the tasks, so on a
multi-node cluster they must sit on a shared filesystem (or the same path on every node).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import ray
import torch
from tqdm import tqdm

from study.files import TEMPORARY_SUFFIX, atomic_write, fsync_folder, write_table
from study.corruptions import CIFAR_SOURCE, check_images, check_profile, corrupt, default_profile
from study.tables import (ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, CLEAN, HELD_OUT_CORRUPTIONS, MODEL_FILE,
                          RESULTS_FILE, ROBUSTNESS_COLUMNS, ROBUSTNESS_FILE, SEVERITIES)

__all__ = [
    "ECE_BINS",
    "ROBUSTNESS_COLUMNS",
    "expected_calibration_error",
    "evaluate_model",
    "load_cifar_c",
    "load_imagenet_c",
    "load_corrupted",
    "ImageFileArray",
    "generate_corrupted_set",
    "corrupted_set_for_dataset",
    "corrupted_set_profile",
    "evaluate_checkpoints",
    "study_checkpoints",
    "run_robustness",
]

ECE_BINS = 15
LABELS_FILE = "labels.npy"
CLEAN_FILE = "clean.npy"
GENERATION_FILE = "generation.json"
EXTERNAL_PROFILE = "external"  # the profile column for corrupted sets not generated here (no generation.json)
LEGACY_PROFILE = "imagenet"  # the profile of sets generated before generation.json recorded one
IMAGENET_C_SIZE = 224  # ImageNet-C images are stored at the size models see
_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
_CHUNK_BYTES = 64 * 2**20  # generation: at most this much image data per task
_CHUNK_IMAGES = 2048  # ... and at most this many images (about 1-3 s of work at 32 px)
_TEMP_SUFFIX = TEMPORARY_SUFFIX

Images = Any  # np.ndarray uint8 [N, H, W, 3], a memmap of one, or an ImageFileArray
CorruptedSet = dict[tuple[str, int], tuple[Images, np.ndarray]]


# ------------------------------------------------------------------------------------------------ metrics
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
    resized = v2.functional.resize(pixels, [max(size, round(height * scale)), max(size, round(width * scale))], antialias=True)
    return v2.functional.center_crop(resized, [size, size])


class _no_autocast:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# ------------------------------------------------------------------------------------------------ loaders
def load_cifar_c(root: str | os.PathLike, corruptions: Sequence[str] | None = None) -> CorruptedSet:
    """A CIFAR-C layout folder as {(corruption, severity): (images, labels)}, images memory-mapped.

    `corruptions`: None means the 15 benchmark corruptions (all required) plus whichever held-out ones the
    folder has. Missing files, wrong shapes or dtypes, truncated or unreadable files: ValueError naming the
    path."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"CIFAR-C folder {root} does not exist")
    names = _requested(corruptions, lambda name: (root / f"{name}.npy").is_file())
    labels_path = root / LABELS_FILE
    if not labels_path.is_file():
        raise ValueError(f"{labels_path} is missing; a CIFAR-C folder holds labels.npy and <corruption>.npy files")
    try:
        labels = np.load(labels_path, allow_pickle=False)
    except Exception as error:
        raise ValueError(f"{labels_path} is unreadable ({type(error).__name__}: {error})") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{labels_path} holds {labels.dtype} {labels.shape}; expected integer labels [5*N] or [N]")
    result: CorruptedSet = {}
    rows = None
    for name in names:
        path = root / f"{name}.npy"
        if not path.is_file():
            raise ValueError(f"{path} is missing (corruption {name!r} requested)")
        shape = _npy_shape(path)
        if len(shape) != 4 or shape[-1] != 3 or shape[0] % 5:
            raise ValueError(f"{path} has shape {shape}; expected (5*N, H, W, 3) uint8")
        if rows is not None and shape[0] != rows:
            raise ValueError(f"{path} has {shape[0]} images, other corruptions {rows}")
        rows = shape[0]
        n = rows // 5
        if len(labels) not in (n, rows):
            raise ValueError(f"{labels_path} has {len(labels)} labels for {rows} images in {path}; expected {rows} or {n}")
        images = np.load(path, mmap_mode="r")
        for severity in SEVERITIES:
            block = slice((severity - 1) * n, severity * n)
            result[(name, severity)] = (images[block], np.asarray(labels[block] if len(labels) == rows else labels))
    return result


def load_imagenet_c(
    root: str | os.PathLike,
    corruptions: Sequence[str] | None = None,
    *,
    class_names: Sequence[str] | None = None,
    image_size: int = IMAGENET_C_SIZE,
    threads: int = 8,
) -> CorruptedSet:
    """An ImageNet-C layout folder `<root>/<corruption>/<severity>/<wnid>/*.JPEG` as {(corruption, severity):
    (ImageFileArray, labels)}; images are decoded lazily, batch by batch.

    Labels index `class_names` (the model's classes in training order); default the sorted wnids, which is
    ImageNet's class order, and then every (corruption, severity) must hold the same classes."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"ImageNet-C folder {root} does not exist")
    names = _requested(corruptions, lambda name: (root / name).is_dir())
    class_index = {name: index for index, name in enumerate(class_names)} if class_names is not None else None
    result: CorruptedSet = {}
    for name in names:
        for severity in SEVERITIES:
            folder = root / name / str(severity)
            if not folder.is_dir():
                raise ValueError(f"{folder} is missing (corruption {name!r}, severity {severity})")
            wnids = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
            if not wnids:
                raise ValueError(f"{folder} holds no class folders; expected {folder}/<wnid>/*.JPEG")
            if class_index is None:
                class_index = {wnid: index for index, wnid in enumerate(wnids)}
            if set(wnids) - set(class_index) or (class_names is None and len(wnids) != len(class_index)):
                unknown = sorted(set(wnids) ^ set(class_index))[:5]
                raise ValueError(f"{folder} holds other classes than the first folder read (differing: {unknown})")
            paths, labels = [], []
            for wnid in wnids:
                files = sorted(f for f in os.listdir(folder / wnid) if f.lower().endswith(_IMAGE_EXTENSIONS))
                paths += [str(folder / wnid / f) for f in files]
                labels += [class_index[wnid]] * len(files)
            if not paths:
                raise ValueError(f"{folder} holds no images ({', '.join(_IMAGE_EXTENSIONS)})")
            result[(name, severity)] = (ImageFileArray(paths, image_size, threads=threads), np.asarray(labels, np.int64))
    return result


def load_corrupted(
    path: str | os.PathLike,
    corruptions: Sequence[str] | None = None,
    *,
    class_names: Sequence[str] | None = None,
    image_size: int = IMAGENET_C_SIZE,
) -> CorruptedSet:
    """A corrupted test set in either layout: CIFAR-C when `path` holds labels.npy, ImageNet-C when it holds
    corruption folders. `class_names` and `image_size` only apply to ImageNet-C."""
    path = Path(path)
    if (path / LABELS_FILE).is_file():
        return load_cifar_c(path, corruptions)
    if path.is_dir() and any((path / name).is_dir() for name in ALL_CORRUPTIONS):
        return load_imagenet_c(path, corruptions, class_names=class_names, image_size=image_size)
    raise ValueError(
        f"{path} is neither a CIFAR-C folder (labels.npy + <corruption>.npy) nor an ImageNet-C folder "
        f"(<corruption>/<severity>/<class>/*.JPEG)"
    )


class ImageFileArray:
    """Image files as a lazily decoded uint8 array [N, S, S, 3]: `len()` and slicing decode only the rows
    asked for (in threads; PIL releases the GIL while decoding). S x S images are used as they are, others
    get the evaluation geometry (`study.augment.eval_geometry`)."""

    def __init__(self, paths: Sequence[str], image_size: int, *, threads: int = 8) -> None:
        self.paths = list(paths)
        self.image_size = int(image_size)
        self.threads = max(1, int(threads))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.image_size, self.image_size, 3)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int | slice) -> np.ndarray:
        if isinstance(index, slice):
            paths = self.paths[index]
            if len(paths) <= 1 or self.threads == 1:
                decoded = [self._read(p) for p in paths]
            else:
                with ThreadPoolExecutor(min(self.threads, len(paths))) as pool:
                    decoded = list(pool.map(self._read, paths))
            return np.stack(decoded) if decoded else np.empty((0, *self.shape[1:]), np.uint8)
        return self._read(self.paths[index])

    def _read(self, path: str) -> np.ndarray:
        from PIL import Image

        from study.augment import eval_geometry

        try:
            with Image.open(path) as file:
                image = file.convert("RGB")
        except Exception as error:
            raise ValueError(f"{path} is unreadable ({type(error).__name__}: {error})") from None
        if image.size != (self.image_size, self.image_size):
            image = eval_geometry(self.image_size)(image)
        return np.asarray(image, dtype=np.uint8)


def _requested(corruptions: Sequence[str] | None, present: Callable[[str], bool]) -> list[str]:
    """The corruptions to load: the given ones (validated), or the benchmark plus held-out ones present."""
    if corruptions is None:
        return list(BENCHMARK_CORRUPTIONS) + [name for name in HELD_OUT_CORRUPTIONS if present(name)]
    names = list(dict.fromkeys(corruptions))
    unknown = [name for name in names if name not in ALL_CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruptions {unknown}; allowed: {', '.join(ALL_CORRUPTIONS)}")
    if not names:
        raise ValueError(f"no corruptions given; allowed: any of {', '.join(ALL_CORRUPTIONS)}")
    return names


def _npy_shape(path: Path) -> tuple[int, ...]:
    """Shape of a complete C-order uint8 .npy file; ValueError naming the path when it is not one."""
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(file)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            data_start = file.tell()
    except Exception as error:
        raise ValueError(f"{path} is not a readable .npy file ({type(error).__name__}: {error})") from None
    if dtype != np.uint8 or fortran_order:
        raise ValueError(f"{path} holds {dtype} ({'Fortran' if fortran_order else 'C'} order); expected C-order uint8")
    expected = data_start + math.prod(shape)
    actual = path.stat().st_size
    if actual != expected:
        raise ValueError(f"{path} is {actual} bytes, expected {expected} for shape {shape} (truncated or damaged)")
    return tuple(shape)


# ------------------------------------------------------------------------------------------------ generation
def generate_corrupted_set(
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    corruptions: Sequence[str] | None = None,
    seed: int = 0,
    profile: str | None = None,
    progress: bool = True,
    chunk_size: int | None = None,
) -> Path:
    """Write a corrupted copy of a test split in the CIFAR-C layout, as Ray tasks, and return `out_dir`.

    Args:
        images: uint8 [N, H, W, 3], the clean test images in test-set order.
        labels: int [N].
        out_dir: the folder; created if needed. Files already there and complete are reused when the folder
            was generated from the same images with the same seed and profile (else ValueError).
        corruptions: default all 19 (15 benchmark + 4 held out, as the released CIFAR-10-C).
        seed: passed to `study.corruptions.corrupt`, which seeds every image separately.
        profile: the corruption constants, "cifar" (the released CIFAR-10-C's) or "imagenet"; None: by image
            size (`study.corruptions.default_profile`: `cifar` below 64 px).
        progress: show a progress bar (tqdm) with a line per finished task.
        chunk_size: images per task (default: at most 2048 and 64 MiB).

    Starts a local Ray runtime when none is running.
    """
    check_images(images)
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers [{len(images)}], got {labels.dtype} {labels.shape}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"invalid seed={seed!r}; allowed: an integer >= 0")
    check_profile(profile)
    names = list(ALL_CORRUPTIONS) if corruptions is None else _requested(corruptions, lambda _: False)
    n, height, width = images.shape[:3]
    if n == 0:
        raise ValueError("no images to corrupt (N = 0)")
    profile = profile or default_profile(height, width)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _adopt_folder(out_dir, images, labels, seed, profile)
    _remove_stale_temporaries(out_dir)

    shape = (5 * n, height, width, 3)
    todo = [name for name in names if not _complete(out_dir / f"{name}.npy", shape)]
    if todo:
        if chunk_size is None:
            chunk_size = max(1, min(n, _CHUNK_IMAGES, _CHUNK_BYTES // (height * width * 3)))
        _run_generation(images, out_dir, todo, seed, profile, shape, chunk_size, progress)
    return out_dir


def _adopt_folder(out_dir: Path, images: np.ndarray, labels: np.ndarray, seed: int, profile: str) -> None:
    """Record (or check) what the folder is generated from; write labels.npy and clean.npy."""
    n, height, width = images.shape[:3]
    fingerprint = hashlib.sha256()
    fingerprint.update(np.ascontiguousarray(images).data)
    fingerprint.update(np.ascontiguousarray(labels.astype(np.int64)).data)
    from importlib.metadata import version

    record = {
        "layout": "cifar-c",
        "n": int(n),
        "height": int(height),
        "width": int(width),
        "seed": int(seed),
        "profile": profile,
        "constants": CIFAR_SOURCE if profile == "cifar" else "ImageNet-C (imagecorruptions)",
        "severities": list(SEVERITIES),
        "source_sha256": fingerprint.hexdigest(),
        "library": f"imagecorruptions-imaug {version('imagecorruptions-imaug')}",
    }
    record_path = out_dir / GENERATION_FILE
    if record_path.is_file():
        try:
            existing = json.loads(record_path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{record_path} is unreadable ({error}); delete the folder or choose another") from None
        existing.setdefault("profile", LEGACY_PROFILE)
        keys = ("n", "height", "width", "seed", "profile", "source_sha256")
        differing = [key for key in keys if existing.get(key) != record[key]]
        if differing:
            profiles = (f"; its profile is {existing['profile']!r}, this request's {profile!r}"
                        if "profile" in differing else "")
            raise ValueError(
                f"{out_dir} holds a corrupted set generated from other images or another seed or corruption "
                f"profile (differs in {differing}{profiles}); choose another folder or delete it"
            )
    elif any(out_dir.glob("*.npy")):
        raise ValueError(f"{out_dir} holds .npy files but no {GENERATION_FILE}; refusing to mix sets, choose another folder")
    else:
        atomic_write(record_path, lambda file: file.write(json.dumps(record, indent=2).encode()))
    tiled = np.tile(labels.astype(np.int64), len(SEVERITIES))
    for path, array in ((out_dir / LABELS_FILE, tiled), (out_dir / CLEAN_FILE, np.ascontiguousarray(images))):
        if not (path.is_file() and _same_array(path, array)):
            atomic_write(path, lambda file, array=array: np.save(file, array, allow_pickle=False))


def _same_array(path: Path, array: np.ndarray) -> bool:
    try:
        return bool(np.array_equal(np.load(path, mmap_mode="r"), array))
    except Exception:
        return False


def _complete(path: Path, shape: tuple[int, ...]) -> bool:
    if not path.is_file():
        return False
    try:
        return _npy_shape(path) == shape
    except ValueError:
        return False


def _remove_stale_temporaries(out_dir: Path) -> None:
    # Left by killed runs; one generator per folder at a time.
    for path in out_dir.glob(f".*{_TEMP_SUFFIX}"):
        path.unlink(missing_ok=True)


@ray.remote(num_cpus=1)
def _corrupt_chunk(
    images: np.ndarray, name: str, severity: int, seed: int, profile: str, start: int, stop: int
) -> np.ndarray:
    return corrupt(images[start:stop], name, severity, seed=seed, profile=profile, start_index=start)


def _run_generation(
    images: np.ndarray,
    out_dir: Path,
    names: list[str],
    seed: int,
    profile: str,
    shape: tuple[int, ...],
    chunk: int,
    progress: bool,
) -> None:
    n = images.shape[0]
    jobs = [(name, severity, start, min(start + chunk, n)) for name in names for severity in SEVERITIES for start in range(0, n, chunk)]
    blocks_per_file = len(SEVERITIES) * math.ceil(n / chunk)
    _ensure_ray()
    window = max(4, 2 * int(ray.available_resources().get("CPU", 1)))  # bounds object-store use
    images_ref = ray.put(images)
    writers: dict[str, _NpyWriter] = {}
    pending: dict[ray.ObjectRef, tuple[str, int, int, int]] = {}
    next_job = 0
    bar = _Progress(len(jobs), f"corrupting {n} images x {len(names)} corruptions x 5 severities ({profile} profile)", progress)
    try:
        while next_job < len(jobs) or pending:
            while next_job < len(jobs) and len(pending) < window:
                name, severity, start, stop = jobs[next_job]
                pending[_corrupt_chunk.remote(images_ref, name, severity, seed, profile, start, stop)] = jobs[next_job]
                next_job += 1
            [ready], _ = ray.wait(list(pending), num_returns=1)
            name, severity, start, stop = pending.pop(ready)
            block = ray.get(ready)
            if name not in writers:
                writers[name] = _NpyWriter(out_dir / f"{name}.npy", shape)
            writer = writers[name]
            writer.write((severity - 1) * n + start, block)
            del block, ready
            if writer.blocks == blocks_per_file:
                writers.pop(name).commit()
                bar.note(f"{name} done")
            bar.update(1)
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        bar.close()


class _NpyWriter:
    """Assembles one .npy from blocks arriving in any order, in a hidden temporary file renamed into place
    (after fsync) only when complete."""

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path = path
        self.temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}{_TEMP_SUFFIX}")
        self.array = np.lib.format.open_memmap(self.temporary, mode="w+", dtype=np.uint8, shape=shape)
        self.blocks = 0

    def write(self, offset: int, block: np.ndarray) -> None:
        self.array[offset : offset + len(block)] = block
        self.blocks += 1

    def commit(self) -> None:
        self.array.flush()
        del self.array
        with open(self.temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(self.temporary, self.path)
        fsync_folder(self.path.parent)

    def abort(self) -> None:
        self.__dict__.pop("array", None)
        self.temporary.unlink(missing_ok=True)


def corrupted_set_for_dataset(
    dataset: str,
    *,
    data_root: str | os.PathLike = "./data",
    image_size: int | None = None,
    out_dir: str | os.PathLike | None = None,
    corruptions: Sequence[str] | None = None,
    seed: int = 0,
    profile: str | None = None,
    download: bool = False,
    progress: bool = True,
) -> Path:
    """Generate (or reuse) the corrupted copy of a dataset's test split; returns its folder.

    The default folder is `<data_root>/corrupted/<dataset>-<size>px-<profile>-seed<seed>`, so sets of
    different corruption profiles never share a folder. `image_size` None is the dataset's native size (the
    size its models see by default); `profile` None is by that size (`cifar` below 64 px)."""
    from study.data import dataset_to_arrays, load_dataset

    check_profile(profile)
    splits = load_dataset(dataset, root=data_root, download=download, image_size=image_size)
    images, labels = dataset_to_arrays(splits.test, splits.image_size)
    profile = profile or default_profile(splits.image_size, splits.image_size)
    if out_dir is None:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset).strip("_")
        out_dir = Path(data_root) / "corrupted" / f"{safe}-{splits.image_size}px-{profile}-seed{seed}"
    return generate_corrupted_set(
        images, labels, out_dir, corruptions=corruptions, seed=seed, profile=profile, progress=progress
    )


# ------------------------------------------------------------------------------------------------ checkpoints
def evaluate_checkpoints(
    checkpoints: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    *,
    corrupted: str | os.PathLike,
    corruptions: Sequence[str] | None = None,
    clean: tuple[Images, np.ndarray] | str | os.PathLike | bool | None = None,
    batch_size: int = 256,
    output: str | os.PathLike | None = None,
    use_gpu: bool | None = None,
    cpus_per_task: int = 1,
    class_names: Sequence[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate trained checkpoints on clean data and every (corruption, severity), one Ray task each.

    Args:
        checkpoints: `model.pt` files (or run folders holding one); a mapping names them (the `model`
            column, e.g. trial ids), else the name is the run folder's name.
        corrupted: a CIFAR-C or ImageNet-C folder (`load_corrupted`), readable from every node.
        corruptions: restrict to these (default: the 15 benchmark ones plus held-out ones present).
        clean: the clean rows' data: None takes `clean.npy` from the corrupted folder when it is there
            (generated sets), else each checkpoint's own dataset test split (`study.data`); a folder or a
            `.npy` path of clean images; `(images, labels)` arrays; False for no clean rows.
        output: write the table there, atomically: a `.parquet` path (a `.csv` beside it), or a folder
            (robustness.parquet + robustness.csv in it).
        use_gpu: one GPU per task; None means when the cluster has GPUs.
        class_names: ImageNet-C only: the models' classes in training order (default sorted wnids).

    Returns:
        A DataFrame with `ROBUSTNESS_COLUMNS`: model, method, corruption ("clean" for clean data),
        severity (0 for clean), error and ece (fractions), n, and profile (`corrupted_set_profile`).
    """
    named = {model_id: path.resolve() for model_id, path in _named_checkpoints(checkpoints).items()}
    corrupted = Path(corrupted).resolve()  # tasks may run in another working directory
    load_corrupted(corrupted, corruptions, class_names=class_names)  # fail here, not in every task
    _ensure_ray()
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    clean_refs = _clean_references(clean, corrupted, named)
    task = _evaluate_checkpoint.options(num_cpus=cpus_per_task, num_gpus=1 if use_gpu else 0)
    refs = {
        task.remote(model_id, str(path), str(corrupted), corruptions, clean_refs[model_id], batch_size, class_names): model_id
        for model_id, path in named.items()
    }
    rows: dict[str, list[dict]] = {}
    bar = _Progress(len(refs), f"evaluating {len(refs)} checkpoint(s)", progress)
    try:
        pending = list(refs)
        while pending:
            [ready], pending = ray.wait(pending, num_returns=1)
            model_id = refs[ready]
            rows[model_id] = ray.get(ready)
            clean_rows = [row for row in rows[model_id] if row["corruption"] == CLEAN]
            mean_error = np.mean([row["error"] for row in rows[model_id] if row["corruption"] != CLEAN])
            clean_text = f"clean error {clean_rows[0]['error']:.4f}, " if clean_rows else ""
            bar.note(f"{model_id}: {clean_text}mean corrupted error {mean_error:.4f}")
            bar.update(1)
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    finally:
        bar.close()
    profile = corrupted_set_profile(corrupted)
    table = pd.DataFrame(
        [{**row, "profile": profile} for model_id in named for row in rows[model_id]], columns=list(ROBUSTNESS_COLUMNS)
    )
    table = table.astype({"severity": "int64", "n": "int64", "error": "float64", "ece": "float64"})
    if output is not None:
        write_robustness_table(table, output)
    return table


def corrupted_set_profile(folder: str | os.PathLike) -> str:
    """The corruption profile of a corrupted-set folder: its generation.json's (`cifar` or `imagenet`;
    `imagenet` for records older than profiles), or `external` for a folder not generated here (released
    CIFAR-10-C/100-C, ImageNet-C, or anything else)."""
    record_path = Path(folder) / GENERATION_FILE
    if not record_path.is_file():
        return EXTERNAL_PROFILE
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{record_path} is unreadable ({error})") from None
    return str(record.get("profile", LEGACY_PROFILE))


@ray.remote
def _evaluate_checkpoint(
    model_id: str,
    checkpoint: str,
    corrupted: str,
    corruptions: Sequence[str] | None,
    clean: tuple[Images, np.ndarray] | None,  # resolved from the object store by Ray
    batch_size: int,
    class_names: Sequence[str] | None,
) -> list[dict]:
    from study.checkpoint import load_classifier

    model, metadata = load_classifier(checkpoint)
    device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
    image_size = int(metadata["image_size"])
    method = metadata.get("config", {}).get("method", "")
    settings = dict(mean=metadata["mean"], std=metadata["std"], batch_size=batch_size, device=device, image_size=image_size)
    rows = []
    if clean is not None:
        images, labels = clean
        rows.append({"corruption": CLEAN, "severity": 0, **evaluate_model(model, images, labels, **settings)})
    data = load_corrupted(corrupted, corruptions, class_names=class_names, image_size=image_size)
    for (name, severity), (images, labels) in data.items():
        rows.append({"corruption": name, "severity": severity, **evaluate_model(model, images, labels, **settings)})
    return [{"model": model_id, "method": method, **row} for row in rows]


def _clean_references(clean: Any, corrupted: Path, named: Mapping[str, Path]) -> dict[str, Any]:
    """Per checkpoint, the object-store reference of its clean (images, labels), or None for no clean rows."""
    if clean is False:
        return {model_id: None for model_id in named}
    if clean is None and not (corrupted / CLEAN_FILE).is_file():
        # Each checkpoint's own test split, loaded once per (dataset, data_root, image_size).
        from study.checkpoint import safe_load

        by_split: dict[tuple[str, str, int], Any] = {}
        refs = {}
        for model_id, path in named.items():
            payload = safe_load(path / MODEL_FILE if path.is_dir() else path)
            config = payload.get("config", {})
            key = (config.get("dataset", "digits"), config.get("data_root", "./data"), int(payload["image_size"]))
            if key not in by_split:
                by_split[key] = ray.put(_dataset_test_split(*key))
            refs[model_id] = by_split[key]
        return refs
    if clean is None or isinstance(clean, (str, os.PathLike)):
        path = corrupted if clean is None else Path(clean)
        images_path = path / CLEAN_FILE if path.is_dir() else path
        labels_path = images_path.parent / LABELS_FILE
        shape = _npy_shape(images_path)
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{images_path} has shape {shape}; expected clean images (N, H, W, 3) uint8")
        if not labels_path.is_file():
            raise ValueError(f"{labels_path} is missing; clean images need the labels beside them")
        labels = np.load(labels_path)[: shape[0]]  # CIFAR-C labels: the first block is the test order
        if len(labels) != shape[0]:
            raise ValueError(f"{labels_path} has {len(labels)} labels for {shape[0]} clean images in {images_path}")
        clean = (np.load(images_path), labels)
    images, labels = clean
    if len(images) != len(labels):
        raise ValueError(f"clean data has {len(images)} images but {len(labels)} labels")
    ref = ray.put((images if isinstance(images, ImageFileArray) else np.asarray(images), np.asarray(labels)))
    return {model_id: ref for model_id in named}


def _dataset_test_split(dataset: str, data_root: str, image_size: int) -> tuple[Images, np.ndarray]:
    """A dataset's test split at `image_size`: uint8 arrays, or for image folders the files (absolute paths),
    decoded batch by batch in the task."""
    from study.data import dataset_to_arrays, load_dataset

    splits = load_dataset(dataset, root=data_root, image_size=image_size)
    samples = getattr(splits.test, "samples", None)
    if samples is not None:
        paths = [os.path.abspath(path) for path, _ in samples]
        return ImageFileArray(paths, image_size), np.asarray([label for _, label in samples], np.int64)
    return dataset_to_arrays(splits.test, image_size)


def _named_checkpoints(checkpoints: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike]) -> dict[str, Path]:
    if isinstance(checkpoints, Mapping):
        named = {str(key): Path(value) for key, value in checkpoints.items()}
    else:
        named = {}
        for value in checkpoints:
            path = Path(value)
            model_id = (path if path.is_dir() else path.parent).name or str(path)
            if model_id in named:
                raise ValueError(f"two checkpoints are named {model_id!r} ({named[model_id]}, {path}); pass a mapping of names")
            named[model_id] = path
    if not named:
        raise ValueError("no checkpoints to evaluate")
    for model_id, path in named.items():
        file = path / MODEL_FILE if path.is_dir() else path
        if not file.is_file():
            raise ValueError(f"checkpoint {file} (model {model_id!r}) does not exist")
    return named


def study_checkpoints(study_dir: str | os.PathLike) -> dict[str, Path]:
    """{trial_id: model.pt} of a study's completed trials that exported a classifier (results.parquet)."""
    study_dir = Path(study_dir)
    results_path = study_dir / RESULTS_FILE
    if not results_path.is_file():
        raise ValueError(f"{results_path} is missing; --study needs a sweep's output folder")
    results = pd.read_parquet(results_path, columns=["trial_id", "status", "checkpoint"])
    found = {}
    for trial_id, status, checkpoint in results.itertuples(index=False):
        if status != "completed" or not isinstance(checkpoint, str) or not checkpoint:
            continue
        path = Path(checkpoint)
        if not path.is_absolute() and not path.exists():
            path = study_dir / path
        found[str(trial_id)] = path
    if not found:
        raise ValueError(f"{results_path} lists no completed trial with a checkpoint")
    return found


def run_robustness(
    checkpoints: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    *,
    corrupted: str | os.PathLike | None = None,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    corruptions: Sequence[str] | None = None,
    output: str | os.PathLike | None = None,
    seed: int = 0,
    profile: str | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> pd.DataFrame:
    """What `run_study.py robustness` does: evaluate checkpoints on `corrupted` (a CIFAR-C or ImageNet-C
    folder), or, without it, on a corrupted copy of `dataset`'s test split generated (or reused) under
    `<data_root>/corrupted/` at the checkpoints' image size, with corruption `profile` ("cifar" or
    "imagenet"; None: by that size). `dataset` and `data_root` default to the first checkpoint's config.

    Example::

        >>> from study import run_robustness, study_checkpoints
        >>> table = run_robustness(study_checkpoints("runs/quick-digits"),
        ...                        output="runs/quick-digits/robustness.parquet")
        >>> table.columns[:4].tolist()
        ['model', 'method', 'corruption', 'severity']
    """
    check_profile(profile)
    if corrupted is not None and profile is not None:
        raise ValueError(f"profile={profile!r} applies to generated sets only; {corrupted} is used as it is")
    named = _named_checkpoints(checkpoints)
    if corrupted is None:
        from study.checkpoint import safe_load

        first = next(iter(named.values()))
        payload = safe_load(first / MODEL_FILE if first.is_dir() else first)
        config = payload.get("config", {})
        corrupted = corrupted_set_for_dataset(
            dataset or config.get("dataset", "digits"),
            data_root=data_root or config.get("data_root", "./data"),
            image_size=int(payload["image_size"]),
            corruptions=corruptions,
            seed=seed,
            profile=profile,
            progress=progress,
        )
    return evaluate_checkpoints(
        named, corrupted=corrupted, corruptions=corruptions, batch_size=batch_size, output=output, progress=progress
    )


# ------------------------------------------------------------------------------------------------ plumbing
def write_robustness_table(table: pd.DataFrame, output: str | os.PathLike) -> Path:
    """Write a robustness table atomically as Parquet plus a CSV beside it; returns the Parquet path."""
    output = Path(output)
    parquet = output if output.suffix == ".parquet" else output / ROBUSTNESS_FILE
    parquet.parent.mkdir(parents=True, exist_ok=True)
    return write_table(table, parquet)


def _ensure_ray() -> None:
    if not ray.is_initialized():
        ray.init()


class _Progress:
    """A tqdm bar with a line per finished task, or nothing when progress is off."""

    def __init__(self, total: int, description: str, enabled: bool) -> None:
        self.total, self.done, self.started = total, 0, time.monotonic()
        self.bar = tqdm(total=total, desc=description, unit="task") if enabled else None

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(f"[{self.done + 1}/{self.total}, {time.monotonic() - self.started:.0f} s] {text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
