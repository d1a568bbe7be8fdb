"""Datasets: the embedded `digits`, torchvision's CIFAR-10/100, and any `imagefolder:PATH`, each split into
train / validation / test.

The validation split is a stratified hold-out from the training data (seeded by `seed`), used for model
selection and tuning; the test split is only for final numbers. Every split is a torch `Dataset` yielding
`(PIL.Image RGB, int label)`; augmentation is applied by wrapping it in `TransformedDataset` or
`MultiViewDataset` with a transform from `study.augment`.

Sizes: `digits` and the CIFARs are held in memory as uint8 arrays and yield images already at
`image_size` (the size models see). `imagefolder` datasets yield images as stored on disk and leave
resizing to the transforms (random-resized crops want the full image; the eval transform resizes and
centre-crops), so that ImageNet-sized folders are never decoded or held in memory up front.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from study.augment import eval_geometry
from study.config import is_real

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder:PATH")
NATIVE_IMAGE_SIZE = {"digits": 16, "cifar10": 32, "cifar100": 32, "imagefolder": 224}

# digits: the test split is fixed (its own seed, independent of the run's seed) so every run is scored on
# the same 360 images; the validation split is drawn from the rest with the run's seed.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 2004_11362  # the paper's arXiv number; any fixed value works
DIGITS_PRERENDER_MAX_SIZE = 64  # above this, digits are upsampled on access instead of stored at full size

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class DatasetSplits:
    """The three splits of a dataset and what models and transforms need to know about it."""

    train: ArrayImageDataset | ImageFileDataset
    val: ArrayImageDataset | ImageFileDataset
    test: ArrayImageDataset | ImageFileDataset
    num_classes: int
    image_size: int  # the size models see (transforms produce image_size x image_size)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str
    class_names: list[str]


# ---------------------------------------------------------------------------------------------- datasets
class SizedDataset(Dataset):
    """A map-style dataset with a length. torch's `Dataset` leaves `__len__` to subclasses, untyped; the
    samplers, shards and step counts of training need it."""

    def __len__(self) -> int:
        raise NotImplementedError


class ImageSource(Protocol):
    """What the wrapping datasets below read: a sized dataset of (PIL image, int label), e.g. an
    `ArrayImageDataset`, an `ImageFileDataset` or a `torch.utils.data.Subset` of one."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Image.Image, int]: ...


class ArrayImageDataset(SizedDataset):
    """In-memory images: uint8 array [N, H, W, 3] and int64 labels [N] -> (PIL RGB image, int label).

    With `image_size` different from H, each image is resized (bilinear) on access, which keeps memory
    at the stored size (e.g. CIFAR at 32 px trained at 64 px)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, image_size: int | None = None) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be a uint8 array [N, H, W, 3], got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = np.ascontiguousarray(images)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_size = image_size or images.shape[1]

    @property
    def targets(self) -> np.ndarray:
        return self.labels

    @property
    def stored_at_image_size(self) -> bool:
        return self.images.shape[1] == self.images.shape[2] == self.image_size

    def subset(self, indices: np.ndarray) -> ArrayImageDataset:
        """A new dataset holding a copy of the selected images."""
        return ArrayImageDataset(self.images[indices], self.labels[indices], image_size=self.image_size)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        image = Image.fromarray(self.images[index])  # uint8 HxWx3 -> RGB
        if not self.stored_at_image_size:
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return image, int(self.labels[index])


class ImageFileDataset(SizedDataset):
    """Images on disk: a list of (path, label) -> (PIL RGB image as stored, int label)."""

    def __init__(self, samples: Sequence[tuple[str, int]]) -> None:
        self.samples = list(samples)

    @property
    def targets(self) -> np.ndarray:
        return np.fromiter((label for _, label in self.samples), dtype=np.int64, count=len(self.samples))

    def subset(self, indices: np.ndarray) -> ImageFileDataset:
        return ImageFileDataset([self.samples[i] for i in indices])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return image.convert("RGB"), label


class TransformedDataset(SizedDataset):
    """`base` (yielding (PIL image, label)) with `transform` applied: -> (tensor [3, H, W], label)."""

    def __init__(self, base: ImageSource, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return self.transform(image), label


class DecodedDataset(SizedDataset):
    """`base` (yielding (PIL image, label)) decoded only: -> (uint8 tensor [3, H, W], label), for the device
    pipeline (`study.batched_augment`), which augments whole batches on the training device. No random
    transform and no resize beyond `base`'s own (an `ArrayImageDataset` not stored at its image size resizes
    to it, as the per-image path sees it; image files stay at their stored size, so the random-resized crop
    sees the full image). Batch with `collate_decoded`."""

    def __init__(self, base: ImageSource) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))), label


def collate_decoded(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
    """A batch of `DecodedDataset` items: images stacked when they share a size, else a list."""
    images = [image for image, _ in items]
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    if len({tuple(image.shape) for image in images}) == 1:
        return torch.stack(images), labels
    return images, labels


class MultiViewDataset(SizedDataset):
    """`n_views` independently augmented views of each image: -> (tensor [V, 3, H, W], label).

    A batch from a DataLoader is then [B, V, 3, H, W], the paper's "multiviewed batch"."""

    def __init__(self, base: ImageSource, transform: Callable[[Image.Image], torch.Tensor], n_views: int = 2) -> None:
        if not isinstance(n_views, int) or n_views < 1:
            raise ValueError(f"invalid n_views={n_views!r}; allowed: an integer >= 1")
        self.base = base
        self.transform = transform
        self.n_views = n_views

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return torch.stack([self.transform(image) for _ in range(self.n_views)]), label


# ---------------------------------------------------------------------------------------------- loading
def load_dataset(
    name: str,
    *,
    root: str | os.PathLike = "./data",
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_fraction: float = 1.0,
    train_seed: int | None = None,
) -> DatasetSplits:
    """Load a named dataset (`DATASETS`) split into train / val / test.

    `root` is where torchvision datasets live (and are downloaded to when `download=True`); `imagefolder:PATH`
    reads PATH (relative to the working directory). `image_size=None` means the dataset's native size
    (digits 16, CIFAR 32, imagefolder 224). `val_fraction` of the training data is held out, stratified by
    class, with `seed` choosing which images. Of the rest, `train_fraction` is kept as the train split
    (`stratified_subset`, with `train_seed`, default `seed`, choosing which images); val and test, and the
    normalisation statistics, do not depend on it."""
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8):
        raise ValueError(f"invalid image_size={image_size!r}; allowed: None or an integer >= 8")
    if not 0 < val_fraction < 1:
        raise ValueError(f"invalid val_fraction={val_fraction!r}; allowed: a number in (0, 1)")
    _check_train_fraction(train_fraction)
    if name == "digits":
        splits = _load_digits(image_size or NATIVE_IMAGE_SIZE["digits"], val_fraction, seed)
    elif name in _CIFAR_FOLDERS:
        splits = _load_cifar(name, Path(root), download, image_size or NATIVE_IMAGE_SIZE[name], val_fraction, seed)
    elif name.startswith("imagefolder:") and len(name) > len("imagefolder:"):
        path = Path(name[len("imagefolder:") :]).expanduser()
        splits = _load_imagefolder(path, image_size or NATIVE_IMAGE_SIZE["imagefolder"], val_fraction, seed)
    else:
        raise ValueError(f"unknown dataset {name!r}; allowed: {' | '.join(DATASETS)}")
    if train_fraction < 1:
        kept = stratified_subset(splits.train.targets, train_fraction, seed=seed if train_seed is None else train_seed)
        splits.train = splits.train.subset(kept)
    return splits


def _check_train_fraction(fraction: float) -> None:
    if not (is_real(fraction) and 0 < fraction <= 1):
        raise ValueError(f"invalid train_fraction={fraction!r}; allowed: a number in (0, 1]")


def stratified_split(
    labels: Sequence[int] | np.ndarray, fraction: float, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices 0..N-1 into (kept, held_out), holding out `fraction` of each class.

    round(fraction * N) indices are held out in total, shared between classes by largest remainder, and
    every class keeps at least one image. Deterministic in `seed`; both index arrays are sorted."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = fraction * counts
    held = np.floor(quotas).astype(np.int64)
    held = np.minimum(held, np.maximum(counts - 1, 0))
    shortfall = int(round(fraction * len(labels))) - int(held.sum())
    for c in np.argsort(-(quotas - np.floor(quotas)), kind="stable"):
        if shortfall <= 0:
            break
        if held[c] + 1 <= counts[c] - 1:
            held[c] += 1
            shortfall -= 1
    rng = np.random.default_rng(seed)
    held_out = []
    for c, n_held in zip(classes, held, strict=True):
        members = np.flatnonzero(labels == c)
        held_out.append(rng.permutation(members)[:n_held])
    held_out_indices = np.sort(np.concatenate(held_out)) if held_out else np.empty(0, np.int64)
    kept = np.ones(len(labels), dtype=bool)
    kept[held_out_indices] = False
    return np.flatnonzero(kept), held_out_indices


def stratified_subset(labels: Sequence[int] | np.ndarray, fraction: float, *, seed: int) -> np.ndarray:
    """The sorted indices of a stratified `fraction` of 0..N-1: max(round(fraction * N), number of classes)
    of them. Every class keeps at least one image, and otherwise about `fraction` of its own (within one
    image on balanced classes; the guaranteed first image of a class too small for one comes out of the
    others' shares).

    Subsets are nested: for one `seed` and labels, a smaller fraction's subset lies inside a larger one's.
    Every image gets a place in one seeded order (`stratified_order`) and a subset is a prefix of it, so no
    apportionment paradox can drop an image when the fraction grows (largest-remainder quotas, as in
    `stratified_split`, could). `fraction` 1 gives all indices."""
    _check_train_fraction(fraction)
    labels = np.asarray(labels)
    count = max(int(round(fraction * len(labels))), len(np.unique(labels)))
    return np.sort(stratified_order(labels, seed=seed)[: min(count, len(labels))])


def stratified_order(labels: Sequence[int] | np.ndarray, *, seed: int) -> np.ndarray:
    """A seeded permutation of 0..N-1 whose every prefix is stratified: each class's images in a seeded random
    order, the j-th of a class of n placed at (j + 1/2) / n along the whole order (its first at 0, so any
    prefix of at least as many images as classes holds every class); ties in a seeded random class order.
    This is the Sainte-Lague divisor method with every class's first seat up front; being one fixed order, it
    never takes an image away as the prefix grows."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    class_rank = rng.permutation(len(classes))
    positions, ranks, members_in_order = [], [], []
    for c, rank in zip(classes, class_rank, strict=True):
        members = rng.permutation(np.flatnonzero(labels == c))
        quantiles = (np.arange(len(members)) + 0.5) / len(members)
        quantiles[0] = 0.0
        positions.append(quantiles)
        ranks.append(np.full(len(members), rank))
        members_in_order.append(members)
    if not members_in_order:
        return np.empty(0, np.int64)
    order = np.lexsort((np.concatenate(ranks), np.concatenate(positions)))  # by position, then class rank
    return np.concatenate(members_in_order)[order].astype(np.int64)


def dataset_to_arrays(dataset: ImageSource, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All images of a split as (uint8 [N, S, S, 3], int64 [N]) at `image_size`, with the evaluation
    geometry of `study.augment.eval_geometry` (for images that are not already S x S). Used to corrupt
    test images (robustness); classify them with `study.augment.build_normalize_transform`."""
    if isinstance(dataset, ArrayImageDataset) and dataset.images.shape[1:3] == (image_size, image_size):
        return dataset.images.copy(), dataset.labels.copy()
    geometry = eval_geometry(image_size)
    images = np.empty((len(dataset), image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty(len(dataset), dtype=np.int64)
    for i in range(len(dataset)):
        image, label = dataset[i]
        if not isinstance(image, Image.Image):
            kind = type(image).__name__
            raise ValueError(f"dataset_to_arrays needs a dataset of (PIL image, label), got {kind} items")
        images[i] = np.asarray(geometry(image.convert("RGB")))
        labels[i] = label
    return images, labels


# ---------------------------------------------------------------------------------------------- digits
@functools.lru_cache(maxsize=1)
def _digits_source() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as uint8 [N, 8, 8] (0..16 scaled to 0..255) and labels."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def _render_digits(images: np.ndarray, size: int) -> np.ndarray:
    """Upsample gray [N, 8, 8] to RGB [N, size, size, 3] with bilinear interpolation (smooth strokes, as a
    camera would see them, rather than nearest-neighbour blocks)."""
    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return np.repeat(out[..., None], 3, axis=-1)


def _load_digits(image_size: int, val_fraction: float, seed: int) -> DatasetSplits:
    images8, labels = _digits_source()
    pool, test = stratified_split(labels, DIGITS_TEST_FRACTION, seed=DIGITS_TEST_SEED)
    train_in_pool, val_in_pool = stratified_split(labels[pool], val_fraction, seed=seed)
    train, val = pool[train_in_pool], pool[val_in_pool]
    stored_size = image_size if image_size <= DIGITS_PRERENDER_MAX_SIZE else 8
    full = ArrayImageDataset(_render_digits(images8, stored_size), labels, image_size=image_size)
    # Normalisation statistics from the non-test images at the native size: independent of the seed.
    native = _render_digits(images8[pool], NATIVE_IMAGE_SIZE["digits"]).astype(np.float64) / 255.0
    mean_rgb, std_rgb = native.mean(axis=(0, 1, 2)), native.std(axis=(0, 1, 2))
    mean = (float(mean_rgb[0]), float(mean_rgb[1]), float(mean_rgb[2]))
    std = (float(std_rgb[0]), float(std_rgb[1]), float(std_rgb[2]))
    return DatasetSplits(
        train=full.subset(train),
        val=full.subset(val),
        test=full.subset(test),
        num_classes=10,
        image_size=image_size,
        mean=mean,
        std=std,
        name="digits",
        class_names=[str(d) for d in range(10)],
    )


# ---------------------------------------------------------------------------------------------- CIFAR
def _load_cifar(
    name: str, root: Path, download: bool, image_size: int, val_fraction: float, seed: int
) -> DatasetSplits:
    from torchvision.datasets import CIFAR10, CIFAR100

    folder = root / _CIFAR_FOLDERS[name]
    if not download and not folder.is_dir():
        raise ValueError(f"{name} not found at {folder}; pass --download (download=True) to fetch it into {root}")
    dataset_cls = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        train_full = dataset_cls(str(root), train=True, download=download)
        test_full = dataset_cls(str(root), train=False, download=download)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
        raise ValueError(
            f"{name} at {folder} is missing or corrupted ({error}); pass --download to fetch it again"
        ) from None
    train_pool = ArrayImageDataset(train_full.data, np.asarray(train_full.targets), image_size=image_size)
    train, val = stratified_split(train_pool.labels, val_fraction, seed=seed)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    return DatasetSplits(
        train=train_pool.subset(train),
        val=train_pool.subset(val),
        test=ArrayImageDataset(test_full.data, np.asarray(test_full.targets), image_size=image_size),
        num_classes=len(train_full.classes),
        image_size=image_size,
        mean=mean,
        std=std,
        name=name,
        class_names=list(train_full.classes),
    )


# ---------------------------------------------------------------------------------------------- imagefolder
def _load_imagefolder(path: Path, image_size: int, val_fraction: float, seed: int) -> DatasetSplits:
    expected = f"expected {path}/train/<class>/<image> and {path}/test/<class>/<image> (or val/ instead of test/)"
    train_dir = path / "train"
    test_dir = path / "test" if (path / "test").is_dir() else path / "val"
    if not path.is_dir():
        raise ValueError(f"imagefolder:{path}: no such directory; {expected}")
    if not train_dir.is_dir() or not test_dir.is_dir():
        found = sorted(entry.name for entry in path.iterdir())[:10]
        raise ValueError(f"imagefolder:{path}: found {found}; {expected}")
    class_names = sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir())
    if not class_names:
        raise ValueError(f"imagefolder:{path}: no class folders in {train_dir}; {expected}")
    class_index = {name: i for i, name in enumerate(class_names)}
    test_classes = sorted(entry.name for entry in os.scandir(test_dir) if entry.is_dir())
    if not test_classes:
        raise ValueError(f"imagefolder:{path}: no class folders in {test_dir}; {expected}")
    unknown = sorted(set(test_classes) - set(class_index))
    if unknown:
        raise ValueError(f"imagefolder:{path}: classes {unknown[:5]} in {test_dir.name}/ are not in train/; {expected}")
    train_samples = _image_files(train_dir, class_index)
    empty = sorted(set(class_names) - {class_names[label] for _, label in train_samples})
    if empty:
        extensions = ", ".join(_IMAGE_EXTENSIONS)
        raise ValueError(f"imagefolder:{path}: no images ({extensions}) in train/ for classes {empty[:5]}; {expected}")
    test_samples = _image_files(test_dir, class_index)
    if not test_samples:
        raise ValueError(f"imagefolder:{path}: no images in {test_dir}; {expected}")
    pool = ImageFileDataset(train_samples)
    train, val = stratified_split(pool.targets, val_fraction, seed=seed)
    return DatasetSplits(
        train=pool.subset(train),
        val=pool.subset(val),
        test=ImageFileDataset(test_samples),
        num_classes=len(class_names),
        image_size=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        name=f"imagefolder:{path}",
        class_names=class_names,
    )


def _image_files(directory: Path, class_index: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) of every image under directory/<class>/ (recursively), in a deterministic order."""
    samples = []
    for class_name, label in class_index.items():
        class_dir = directory / class_name
        if not class_dir.is_dir():
            continue
        for folder, subfolders, files in os.walk(class_dir, followlinks=True):
            subfolders.sort()
            for file_name in sorted(files):
                if file_name.lower().endswith(_IMAGE_EXTENSIONS):
                    samples.append((os.path.join(folder, file_name), label))
    return samples

