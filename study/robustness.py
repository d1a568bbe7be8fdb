"""Corruption robustness, the Ray side: generating corrupted test sets and evaluating checkpoints on them,
fanned out as Ray tasks, with a progress bar.

The formats and loaders of corrupted sets are `study.corrupted_sets`, and evaluating one model on arrays is
`study.evaluate`; neither needs Ray, so they run in a notebook or a test without a runtime.

Generation (`generate_corrupted_set`): one Ray task per (corruption, severity, chunk of images), assembled
into the CIFAR-C layout by `study.corrupted_sets.NpyWriter` (atomic per file); a folder is reused only for
the same images, seed and profile (its generation.json).

Evaluation (`evaluate_checkpoints`): top-1 error and expected calibration error (15 equal-width confidence
bins) per (corruption, severity), plus a clean row (corruption "clean", severity 0), and the corrupted set's
corruption profile on every row (`cifar` or `imagenet` for sets generated here, `external` for any other
folder, e.g. the released CIFAR-10-C; `study.corruptions` explains the profiles). One Ray task per
checkpoint (a GPU each when the cluster has GPUs; bf16 autocast there). Corrupted sets are read by path
inside the tasks, so on a multi-node cluster they must sit on a shared filesystem (or the same path on
every node).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch
from tqdm import tqdm

from study.corrupted_sets import (
    CLEAN_FILE,
    ImageFileArray,
    Images,
    NpyWriter,
    adopt_folder,
    corrupted_set_profile,
    dataset_test_split,
    is_complete,
    load_clean,
    load_corrupted,
    remove_stale_temporaries,
    requested_corruptions,
)
from study.corruptions import check_images, check_profile, corrupt, default_profile
from study.evaluate import evaluate_model
from study.storage import Location, Where, is_uri, local_copy, read_table, write_table
from study.tables import (
    ALL_CORRUPTIONS,
    CLEAN,
    MODEL_FILE,
    RESULTS_FILE,
    ROBUSTNESS_COLUMNS,
    ROBUSTNESS_FILE,
    SEVERITIES,
)

__all__ = [
    "generate_corrupted_set",
    "corrupted_set_for_dataset",
    "evaluate_checkpoints",
    "study_checkpoints",
    "check_checkpoints",
    "run_robustness",
    "write_robustness_table",
]

_CHUNK_BYTES = 64 * 2**20  # generation: at most this much image data per task
_CHUNK_IMAGES = 2048  # ... and at most this many images (about 1-3 s of work at 32 px)


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
    names = list(ALL_CORRUPTIONS) if corruptions is None else requested_corruptions(corruptions, lambda _: False)
    n, height, width = images.shape[:3]
    if n == 0:
        raise ValueError("no images to corrupt (N = 0)")
    profile = profile or default_profile(height, width)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    adopt_folder(out_dir, images, labels, seed, profile)
    remove_stale_temporaries(out_dir)

    shape = (5 * n, height, width, 3)
    todo = [name for name in names if not is_complete(out_dir / f"{name}.npy", shape)]
    if todo:
        if chunk_size is None:
            chunk_size = max(1, min(n, _CHUNK_IMAGES, _CHUNK_BYTES // (height * width * 3)))
        _run_generation(images, out_dir, todo, seed, profile, shape, chunk_size, progress)
    return out_dir


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
    jobs = [(name, severity, start, min(start + chunk, n))
            for name in names for severity in SEVERITIES for start in range(0, n, chunk)]
    blocks_per_file = len(SEVERITIES) * math.ceil(n / chunk)
    _ensure_ray()
    window = max(4, 2 * int(ray.available_resources().get("CPU", 1)))  # bounds object-store use
    images_ref = ray.put(images)
    writers: dict[str, NpyWriter] = {}
    pending: dict[ray.ObjectRef, tuple[str, int, int, int]] = {}
    next_job = 0
    bar = _Progress(len(jobs), f"corrupting {n} images x {len(names)} corruptions x 5 severities ({profile} profile)",
                    progress)
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
                writers[name] = NpyWriter(out_dir / f"{name}.npy", shape)
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
    checkpoints: Sequence[Where] | Mapping[str, Where],
    *,
    corrupted: str | os.PathLike,
    corruptions: Sequence[str] | None = None,
    clean: tuple[Images, np.ndarray] | str | os.PathLike | bool | None = None,
    batch_size: int = 256,
    output: Where | None = None,
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
    named = _named_checkpoints(checkpoints)
    corrupted = Path(corrupted).resolve()  # tasks may run in another working directory
    load_corrupted(corrupted, corruptions, class_names=class_names)  # fail here, not in every task
    _ensure_ray()
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    clean_refs = _clean_references(clean, corrupted, named)
    task = _evaluate_checkpoint.options(num_cpus=cpus_per_task, num_gpus=1 if use_gpu else 0)
    refs = {
        task.remote(model_id, location.uri, str(corrupted), corruptions, clean_refs[model_id], batch_size,
                    class_names): model_id
        for model_id, location in named.items()
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


@ray.remote
def _evaluate_checkpoint(
    model_id: str,
    checkpoint: str,  # a local path or an object-store URI (downloaded here: the task may run on any node)
    corrupted: str,
    corruptions: Sequence[str] | None,
    clean: tuple[Images, np.ndarray] | None,  # resolved from the object store by Ray
    batch_size: int,
    class_names: Sequence[str] | None,
) -> list[dict]:
    from study.checkpoint import load_classifier

    with local_copy(checkpoint) as path:
        model, metadata = load_classifier(path)
    device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
    image_size = int(metadata["image_size"])
    method = metadata.get("config", {}).get("method", "")
    settings = dict(mean=metadata["mean"], std=metadata["std"], batch_size=batch_size, device=device,
                    image_size=image_size)
    rows = []
    if clean is not None:
        images, labels = clean
        rows.append({"corruption": CLEAN, "severity": 0, **evaluate_model(model, images, labels, **settings)})
    data = load_corrupted(corrupted, corruptions, class_names=class_names, image_size=image_size)
    for (name, severity), (images, labels) in data.items():
        rows.append({"corruption": name, "severity": severity, **evaluate_model(model, images, labels, **settings)})
    return [{"model": model_id, "method": method, **row} for row in rows]


def _clean_references(clean: Any, corrupted: Path, named: Mapping[str, Location]) -> dict[str, Any]:
    """Per checkpoint, the object-store reference of its clean (images, labels), or None for no clean rows."""
    if clean is False:
        return {model_id: None for model_id in named}
    if clean is None and not (corrupted / CLEAN_FILE).is_file():
        # Each checkpoint's own test split, loaded once per (dataset, data_root, image_size).
        from study.checkpoint import safe_load

        by_split: dict[tuple[str, str, int], Any] = {}
        refs = {}
        for model_id, location in named.items():
            with local_copy(location) as path:
                payload = safe_load(path)
            config = payload.get("config", {})
            key = (config.get("dataset", "digits"), config.get("data_root", "./data"), int(payload["image_size"]))
            if key not in by_split:
                by_split[key] = ray.put(dataset_test_split(*key))
            refs[model_id] = by_split[key]
        return refs
    if clean is None or isinstance(clean, (str, os.PathLike)):
        clean = load_clean(corrupted if clean is None else clean)
    images, labels = clean
    if len(images) != len(labels):
        raise ValueError(f"clean data has {len(images)} images but {len(labels)} labels")
    ref = ray.put((images if isinstance(images, ImageFileArray) else np.asarray(images), np.asarray(labels)))
    return {model_id: ref for model_id in named}


def _named_checkpoints(checkpoints: Sequence[Where] | Mapping[str, Where]) -> dict[str, Location]:
    """{model id: Location of its model.pt}; a run folder stands for the model.pt in it. Local paths are made
    absolute (tasks may run in another working directory); URIs (s3://...) are kept and downloaded by the task."""
    if isinstance(checkpoints, Mapping):
        named = {str(key): Location.of(value) for key, value in checkpoints.items()}
    else:
        named = {}
        for value in checkpoints:
            location = Location.of(value)
            model_id = (location if location.is_dir() else location.parent).name or str(value)
            if model_id in named:
                raise ValueError(f"two checkpoints are named {model_id!r} ({named[model_id]}, {location}); "
                                 "pass a mapping of names")
            named[model_id] = location
    if not named:
        raise ValueError("no checkpoints to evaluate")
    files = {}
    for model_id, location in named.items():
        file = location / MODEL_FILE if location.is_dir() else location
        if not file.is_file():
            raise ValueError(f"checkpoint {file} (model {model_id!r}) does not exist")
        files[model_id] = file
    return files


def check_checkpoints(checkpoints: Sequence[Where] | Mapping[str, Where]) -> None:
    """Read every checkpoint once (downloading those on object storage), so that a missing, truncated or
    foreign one fails before Ray starts: ValueError (`CheckpointError`) naming it."""
    from study.checkpoint import CheckpointError, safe_load

    values = checkpoints.values() if isinstance(checkpoints, Mapping) else checkpoints
    for value in values:
        if not is_uri(value):  # as the user wrote it, so that an error names it so
            path = Path(value)
            safe_load(path / MODEL_FILE if path.is_dir() else path)
            continue
        location = Location.of(value)
        file = location / MODEL_FILE if location.is_dir() else location
        with local_copy(file) as path:
            try:
                safe_load(path)
            except CheckpointError as error:
                raise CheckpointError(str(error).replace(str(path), file.uri)) from None


def study_checkpoints(study_dir: Where) -> dict[str, Path | str]:
    """{trial_id: model.pt} of a study's completed trials that exported a classifier (results.parquet).

    `study_dir`: a local folder (values are Paths) or an object-store URI (values are URIs on the same store:
    Tune records a remote checkpoint as a path on the store's filesystem, `bucket/...`)."""
    study = Location.of(study_dir)
    results_path = study / RESULTS_FILE
    if not results_path.is_file():
        raise ValueError(f"{results_path} is missing; --study needs a sweep's output folder")
    results = read_table(results_path, columns=["trial_id", "status", "checkpoint"])
    found: dict[str, Path | str] = {}
    for trial_id, status, checkpoint in results.itertuples(index=False):
        if status != "completed" or not isinstance(checkpoint, str) or not checkpoint:
            continue
        if is_uri(checkpoint):
            found[str(trial_id)] = checkpoint
        elif study.is_local:
            path = Path(checkpoint)
            if not path.is_absolute() and not path.exists():
                path = study.local_path / path
            found[str(trial_id)] = path
        else:
            on_store = Location(study.filesystem, checkpoint.strip("/"), study.scheme, study.query)
            found[str(trial_id)] = (on_store if on_store.is_file() else study / checkpoint).uri
    if not found:
        raise ValueError(f"{results_path} lists no completed trial with a checkpoint")
    return found


def run_robustness(
    checkpoints: Sequence[Where] | Mapping[str, Where],
    *,
    corrupted: str | os.PathLike | None = None,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    corruptions: Sequence[str] | None = None,
    output: Where | None = None,
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

        with local_copy(next(iter(named.values()))) as first:
            payload = safe_load(first)
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
def write_robustness_table(table: pd.DataFrame, output: Where) -> Location:
    """Write a robustness table atomically as Parquet plus a CSV beside it (a local path or an object-store
    URI: a `.parquet` file, or a folder that gets robustness.parquet); returns the Parquet Location."""
    location = Location.of(output)
    parquet = location if location.name.endswith(".parquet") else location / ROBUSTNESS_FILE
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
