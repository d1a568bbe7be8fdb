"""Corrupted test sets on disk: their formats, loaders, and the records that let a generated set be reused.
No Ray: reading a corrupted set (and evaluating on it, `study.evaluate`) works in any process; generating
one as Ray tasks is `study.robustness`.

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

Generated files are written atomically (`NpyWriter`: a hidden `.<name>.npy.*.tmp` file in the same folder,
fsync, rename), so a killed run leaves only temporaries, which no loader reads and the next run deletes; a
`.npy` under its final name is complete, and is reused only when its header and size match (`is_complete`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from study.corruptions import CIFAR_SOURCE
from study.storage import TEMPORARY_SUFFIX, atomic_write, fsync_folder
from study.tables import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, HELD_OUT_CORRUPTIONS, SEVERITIES

__all__ = [
    "LABELS_FILE",
    "CLEAN_FILE",
    "GENERATION_FILE",
    "EXTERNAL_PROFILE",
    "LEGACY_PROFILE",
    "IMAGENET_C_SIZE",
    "Images",
    "CorruptedSet",
    "load_cifar_c",
    "load_imagenet_c",
    "load_corrupted",
    "load_clean",
    "dataset_test_split",
    "ImageFileArray",
    "requested_corruptions",
    "npy_shape",
    "is_complete",
    "corrupted_set_profile",
    "adopt_folder",
    "remove_stale_temporaries",
    "NpyWriter",
]

LABELS_FILE = "labels.npy"
CLEAN_FILE = "clean.npy"
GENERATION_FILE = "generation.json"
EXTERNAL_PROFILE = "external"  # the profile column for corrupted sets not generated here (no generation.json)
LEGACY_PROFILE = "imagenet"  # the profile of sets generated before generation.json recorded one
IMAGENET_C_SIZE = 224  # ImageNet-C images are stored at the size models see
_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")

Images = Any  # np.ndarray uint8 [N, H, W, 3], a memmap of one, or an ImageFileArray
CorruptedSet = dict[tuple[str, int], tuple[Images, np.ndarray]]


# ------------------------------------------------------------------------------------------------ loaders
def load_cifar_c(root: str | os.PathLike, corruptions: Sequence[str] | None = None) -> CorruptedSet:
    """A CIFAR-C layout folder as {(corruption, severity): (images, labels)}, images memory-mapped.

    `corruptions`: None means the 15 benchmark corruptions (all required) plus whichever held-out ones the
    folder has. Missing files, wrong shapes or dtypes, truncated or unreadable files: ValueError naming the
    path."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"CIFAR-C folder {root} does not exist")
    names = requested_corruptions(corruptions, lambda name: (root / f"{name}.npy").is_file())
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
        shape = npy_shape(path)
        if len(shape) != 4 or shape[-1] != 3 or shape[0] % 5:
            raise ValueError(f"{path} has shape {shape}; expected (5*N, H, W, 3) uint8")
        if rows is not None and shape[0] != rows:
            raise ValueError(f"{path} has {shape[0]} images, other corruptions {rows}")
        rows = shape[0]
        n = rows // 5
        if len(labels) not in (n, rows):
            raise ValueError(f"{labels_path} has {len(labels)} labels for {rows} images in {path}; "
                             f"expected {rows} or {n}")
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
    names = requested_corruptions(corruptions, lambda name: (root / name).is_dir())
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
            result[(name, severity)] = (ImageFileArray(paths, image_size, threads=threads),
                                        np.asarray(labels, np.int64))
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


def requested_corruptions(corruptions: Sequence[str] | None, present: Callable[[str], bool]) -> list[str]:
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


def npy_shape(path: Path) -> tuple[int, ...]:
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


def load_clean(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Clean images and their labels: a generated set's folder (its `clean.npy`) or a `.npy` of clean images
    with `labels.npy` beside it (CIFAR-C labels: the first block is the test order)."""
    path = Path(path)
    images_path = path / CLEAN_FILE if path.is_dir() else path
    labels_path = images_path.parent / LABELS_FILE
    shape = npy_shape(images_path)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{images_path} has shape {shape}; expected clean images (N, H, W, 3) uint8")
    if not labels_path.is_file():
        raise ValueError(f"{labels_path} is missing; clean images need the labels beside them")
    labels = np.load(labels_path)[: shape[0]]
    if len(labels) != shape[0]:
        raise ValueError(f"{labels_path} has {len(labels)} labels for {shape[0]} clean images in {images_path}")
    return np.load(images_path), labels


def dataset_test_split(dataset: str, data_root: str, image_size: int) -> tuple[Images, np.ndarray]:
    """A dataset's test split at `image_size`: uint8 arrays, or for image folders the files (absolute paths),
    decoded batch by batch in the task."""
    from study.data import dataset_to_arrays, load_dataset

    splits = load_dataset(dataset, root=data_root, image_size=image_size)
    samples = getattr(splits.test, "samples", None)
    if samples is not None:
        paths = [os.path.abspath(path) for path, _ in samples]
        return ImageFileArray(paths, image_size), np.asarray([label for _, label in samples], np.int64)
    return dataset_to_arrays(splits.test, image_size)


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


# ------------------------------------------------------------------------------------------------ generated sets
def adopt_folder(out_dir: Path, images: np.ndarray, labels: np.ndarray, seed: int, profile: str) -> None:
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
        raise ValueError(f"{out_dir} holds .npy files but no {GENERATION_FILE}; refusing to mix sets, "
                         "choose another folder")
    else:
        atomic_write(record_path, lambda file: file.write(json.dumps(record, indent=2).encode()))
    tiled = np.tile(labels.astype(np.int64), len(SEVERITIES))
    for path, array in ((out_dir / LABELS_FILE, tiled), (out_dir / CLEAN_FILE, np.ascontiguousarray(images))):
        if not (path.is_file() and _same_array(path, array)):
            atomic_write(path, partial(np.save, arr=array, allow_pickle=False))


def _same_array(path: Path, array: np.ndarray) -> bool:
    try:
        return bool(np.array_equal(np.load(path, mmap_mode="r"), array))
    except Exception:
        return False


def is_complete(path: Path, shape: tuple[int, ...]) -> bool:
    if not path.is_file():
        return False
    try:
        return npy_shape(path) == shape
    except ValueError:
        return False


def remove_stale_temporaries(out_dir: Path) -> None:
    # Left by killed runs; one generator per folder at a time.
    for path in out_dir.glob(f".*{TEMPORARY_SUFFIX}"):
        path.unlink(missing_ok=True)



class NpyWriter:
    """Assembles one .npy from blocks arriving in any order, in a hidden temporary file renamed into place
    (after fsync) only when complete."""

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path = path
        self.temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")
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
