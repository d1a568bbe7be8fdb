"""Named augmentation policies for the contrastive stage, the linear stage and cross-entropy training.

Every policy maps a PIL RGB image to a normalised float tensor [3, S, S] (S = `image_size`) and adapts
its sizes to S: images below `SMALL_IMAGE_SIZE` pixels (digits, CIFAR) are "small".

- ``crop_flip``: the plain baseline. Small: zero-pad by S/8 (4 px at 32) + random S crop + horizontal
  flip (the standard CIFAR recipe). Large: RandomResizedCrop(S, scale 0.08-1) + flip (the ImageNet recipe).
- ``autoaugment``: crop_flip, then torchvision AutoAugment with the CIFAR10 or IMAGENET policy.
- ``randaugment``: crop_flip, then torchvision RandAugment(N, M) (31 magnitude bins, so M in 0..30).
- ``simaugment``: the paper's SimAugment: random resized crop (scale 0.2-1 small, 0.08-1 large), flip,
  rotation (+-15 degrees, p=0.5), colour distortion (ColorJitter 0.4/0.4/0.4/0.1 with p=0.8, grayscale
  p=0.2: the authors' strength 0.5), a warp (RandomPerspective, corners moved by up to 10% of S, p=0.5),
  then Gaussian blur (p=0.5, sigma 0.1-2, kernel about S/10 made odd, at least 3).
- ``stacked_randaugment``: SimAugment with a RandAugment(N, M) step before the colour jitter, as the
  paper's text defines it. (The authors' TensorFlow code applies it just after the jitter, and has no
  rotation; we follow the paper's text, which the study cites.)

The warp: the authors use a sparse image warp (2x2 control points moved by up to ~10% of the side);
a random perspective with the same maximum corner displacement is the closest smooth, global warp that
torchvision ships.

All randomness comes from torch's global generator, so `torch.manual_seed` makes a policy reproducible
(DataLoader workers get distinct torch seeds). Every step works on PIL images (faster than uint8 tensors
at these sizes) and the image becomes a tensor once, at the end, in numpy: no per-image torch tensor ops,
whose intra-op threads make them 10-30x slower when the cores are busy (see `RandomGaussianBlur`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import AutoAugmentPolicy
from torchvision.transforms import v2

AUGMENTATIONS = ("crop_flip", "autoaugment", "randaugment", "simaugment", "stacked_randaugment")
AUTOAUGMENT_POLICIES = ("cifar", "imagenet")
SMALL_IMAGE_SIZE = 64  # below this, images are "small" (CIFAR-style recipes); same rule as the models' stem
EVAL_CROP_FRACTION = 0.875  # large images: resize the shorter side to S / 0.875, centre-crop S (224 <- 256)
RANDAUGMENT_MAGNITUDE_BINS = 31  # torchvision's default; magnitudes 0..30

def is_small(image_size: int) -> bool:
    """Whether `image_size` gets the small-image (CIFAR-style) recipes."""
    return image_size < SMALL_IMAGE_SIZE


def default_autoaugment_policy(image_size: int) -> str:
    """The AutoAugment policy to use at this resolution: "cifar" for small images, else "imagenet"."""
    return "cifar" if is_small(image_size) else "imagenet"


def blur_kernel_size(image_size: int) -> int:
    """Gaussian-blur kernel for SimAugment: about 10% of the side, odd, at least 3 (23 at 224, 3 at 32)."""
    radius = (image_size // 10) // 2  # the authors' rule: side // 10, made odd around the centre pixel
    return max(3, 2 * radius + 1)


class ResizeCenterCrop:
    """PIL -> PIL (tensors work too): resize the shorter side to `resize_to`, then centre-crop `size` x `size`.

    A square image already at `size` is returned as is when `resize_to == size` (the common case for
    in-memory datasets, which are stored at the model's size)."""

    def __init__(self, size: int, resize_to: int | None = None) -> None:
        self.size = size
        self.resize_to = resize_to or size

    def __call__(self, image: Image.Image) -> Image.Image:
        height, width = v2.functional.get_size(image)  # works for PIL images and tensors alike
        if width == height == self.size and self.resize_to == self.size:
            return image
        scale = self.resize_to / min(width, height)
        new_size = [max(self.size, round(height * scale)), max(self.size, round(width * scale))]
        if new_size != [height, width]:
            image = v2.functional.resize(image, new_size, antialias=True)
        return v2.functional.center_crop(image, [self.size, self.size])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, resize_to={self.resize_to})"


def eval_geometry(image_size: int) -> ResizeCenterCrop:
    """The deterministic PIL -> PIL resize/crop of evaluation: small images are resized (shorter side) and
    centre-cropped to S; large ones resized to S / 0.875 and centre-cropped to S (the ImageNet protocol).
    `study.data.dataset_to_arrays` uses the same geometry."""
    _check_size(image_size)
    if is_small(image_size):
        return ResizeCenterCrop(image_size)
    return ResizeCenterCrop(image_size, round(image_size / EVAL_CROP_FRACTION))


def build_normalize_transform(*, mean: Sequence[float], std: Sequence[float]) -> ToNormalizedTensor:
    """PIL image (or HWC uint8 numpy array) -> normalised float32 tensor [3, H, W]; no geometry. Use it on
    images that already have the model's size (e.g. `study.data.dataset_to_arrays` output)."""
    return ToNormalizedTensor(mean, std)


def build_eval_transform(*, image_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Deterministic evaluation transform: `eval_geometry(image_size)` then tensor + normalise."""
    return v2.Compose([eval_geometry(image_size), build_normalize_transform(mean=mean, std=std)])


def build_train_transform(
    policy: str,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    autoaugment_policy: str = "cifar",
    randaugment_n: int = 2,
    randaugment_m: int = 9,
) -> v2.Compose:
    """The random training transform of a named policy (see the module docstring): PIL RGB image of any
    size -> normalised float32 tensor [3, image_size, image_size].

    `autoaugment_policy` ("cifar" | "imagenet") is chosen by the caller from the dataset
    (`default_autoaugment_policy(image_size)` is the usual choice); `randaugment_n`/`randaugment_m` are
    RandAugment's number of ops and magnitude (0..30), used by randaugment and stacked_randaugment."""
    _check_size(image_size)
    if policy not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation policy {policy!r}; allowed: {' | '.join(AUGMENTATIONS)}")
    if autoaugment_policy not in AUTOAUGMENT_POLICIES:
        raise ValueError(
            f"unknown autoaugment_policy {autoaugment_policy!r}; allowed: {' | '.join(AUTOAUGMENT_POLICIES)}"
        )
    if not isinstance(randaugment_n, int) or randaugment_n < 0:
        raise ValueError(f"invalid randaugment_n={randaugment_n!r}; allowed: an integer >= 0")
    if not isinstance(randaugment_m, int) or not 0 <= randaugment_m < RANDAUGMENT_MAGNITUDE_BINS:
        raise ValueError(
            f"invalid randaugment_m={randaugment_m!r}; allowed: an integer in 0..{RANDAUGMENT_MAGNITUDE_BINS - 1}"
        )

    def randaugment() -> v2.RandAugment:
        return v2.RandAugment(
            num_ops=randaugment_n, magnitude=randaugment_m, num_magnitude_bins=RANDAUGMENT_MAGNITUDE_BINS
        )

    steps: list[Callable] = []
    if policy in ("crop_flip", "autoaugment", "randaugment"):
        steps += _crop_flip(image_size)
        if policy == "autoaugment":
            steps.append(v2.AutoAugment(_AUTOAUGMENT_POLICY[autoaugment_policy]))
        elif policy == "randaugment":
            steps.append(randaugment())
    else:  # simaugment, stacked_randaugment
        scale = (0.2, 1.0) if is_small(image_size) else (0.08, 1.0)
        steps += [
            v2.RandomResizedCrop(image_size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.RandomRotation(15, interpolation=v2.InterpolationMode.BILINEAR)], p=0.5),
        ]
        if policy == "stacked_randaugment":
            steps.append(randaugment())
        steps += [
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomPerspective(distortion_scale=0.2, p=0.5),
            RandomGaussianBlur(blur_kernel_size(image_size), sigma=(0.1, 2.0), p=0.5),
        ]
    steps.append(build_normalize_transform(mean=mean, std=std))
    return v2.Compose(steps)


class RandomGaussianBlur:
    """With probability `p`, blur a PIL image with a Gaussian of `kernel_size` taps (reflect padding) and
    sigma drawn uniformly from `sigma`: torchvision's GaussianBlur semantics, computed separably in numpy.

    Why not torchvision's: it convolves with the full 2-D kernel in torch, about 12 ms of SimAugment's
    15 ms at 224 px, and torch's intra-op threads turn such per-image tensor ops into ~100 ms ones when the
    CPU cores are busy (transforms running in the training process, loader_workers=0). numpy is
    single-threaded and takes ~2 ms here."""

    def __init__(self, kernel_size: int, sigma: tuple[float, float] = (0.1, 2.0), p: float = 0.5) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"invalid kernel_size={kernel_size!r}; allowed: an odd integer >= 1")
        self.kernel_size = kernel_size
        self.sigma = sigma
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        if torch.rand(()) >= self.p:
            return image
        sigma = float(torch.empty(()).uniform_(self.sigma[0], self.sigma[1]))
        return Image.fromarray(np.round(gaussian_blur(np.asarray(image), self.kernel_size, sigma)).astype(np.uint8))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_size={self.kernel_size}, sigma={self.sigma}, p={self.p})"


def gaussian_blur(image: np.ndarray, kernel_size: int, sigma: float) -> np.ndarray:
    """Blur an HWC (or HW) array with a `kernel_size`-tap Gaussian, reflect padding; returns float32."""
    radius = kernel_size // 2
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    taps = np.exp(-(offsets**2) / (2 * sigma**2))
    taps /= taps.sum()
    height, width = image.shape[:2]
    pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image.astype(np.float32), pad, mode="reflect")
    rows = padded[:, 0:width] * taps[0]  # separable: weighted sums of shifted slices, one axis at a time
    for i in range(1, kernel_size):
        rows += padded[:, i : i + width] * taps[i]
    blurred = rows[0:height] * taps[0]
    for i in range(1, kernel_size):
        blurred += rows[i : i + height] * taps[i]
    return blurred


class ToNormalizedTensor:
    """PIL RGB image (or HWC uint8 array) -> float32 tensor [3, H, W], scaled to [0, 1] and normalised
    with `mean`/`std`. In numpy, for the same reason as `RandomGaussianBlur`."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"invalid mean={tuple(mean)!r} / std={tuple(std)!r}; allowed: 3 numbers each, std > 0")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._offset = np.array(self.mean, dtype=np.float32) * 255
        self._scale = 1 / (np.array(self.std, dtype=np.float32) * 255)

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {pixels.shape}")
        normalised = (pixels - self._offset) * self._scale
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


_AUTOAUGMENT_POLICY = {"cifar": AutoAugmentPolicy.CIFAR10, "imagenet": AutoAugmentPolicy.IMAGENET}


def _crop_flip(image_size: int) -> list[Callable]:
    if is_small(image_size):
        padding = max(1, round(image_size / 8))  # 4 px at 32, 2 px at 16
        return [
            ResizeCenterCrop(image_size),  # no-op for images stored at the model's size
            v2.RandomCrop(image_size, padding=padding),
            v2.RandomHorizontalFlip(),
        ]
    return [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
        raise ValueError(f"invalid image_size={image_size!r}; allowed: an integer >= 8")
