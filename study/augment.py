"""Named augmentation policies for the contrastive stage, the linear stage and cross-entropy training.

Every policy maps a PIL RGB image to a normalised float tensor [3, S, S] (S = `image_size`) and adapts
its sizes to S: images below `SMALL_IMAGE_SIZE` pixels (digits, CIFAR) are "small".

Every policy except ``pad_crop_flip`` starts as the authors' TF preprocessing does
(google-research supcon/preprocessing.py `_preprocess_image_for_train`: random crop, then flip, then the
augmentation type): a random-resized crop of area fraction 0.2-1 (small) or 0.08-1 (large) and aspect
ratio 0.75-1.33, resized to S, then a horizontal flip. No padding.

- ``crop_flip``: the random-resized crop + flip alone (the authors' augmentation_type=IDENTITY; the
  PyTorch reference's CE and SupCon crop, RandomResizedCrop(32, scale=(0.2, 1))).
- ``pad_crop_flip``: the classic CE CIFAR recipe, at every size: zero-pad by S/8 (4 px at 32), random
  S x S crop, flip (inputs of other sizes are first resized/centre-cropped to S).
- ``simclr_augment``: the authors' views (augmentation_type=SIMCLR, strength 0.5, torchvision-style
  jitter): crop + flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale p=0.2, and for large images
  only a Gaussian blur (p=0.5, sigma 0.1-2, kernel about S/10 made odd); no blur below 64 px (their CIFAR
  flags set blur_probability=0).
- ``autoaugment``: crop + flip, then torchvision AutoAugment with the CIFAR10 or IMAGENET policy.
- ``randaugment``: crop + flip, then RandAugment(N, M) with M on the paper's TF scale 0..10
  (`RANDAUGMENT_MAX_MAGNITUDE`): torchvision's RandAugment with 11 magnitude bins, so each geometric op
  gets M/10 of its maximum (M=9: shear 0.27, rotation 27 degrees), and TF's grey fill (128). The ops
  whose semantics differ from TF's are listed in `_randaugment`'s docstring.
- ``simaugment``: the paper's SimAugment: crop + flip, rotation (+-15 degrees, p=0.5), the colour
  distortion of simclr_augment, a warp (RandomPerspective, corners moved by up to 10% of S, p=0.5), then
  Gaussian blur (p=0.5 at every size; same kernel and sigma as simclr_augment).
- ``stacked_randaugment``: SimAugment with a RandAugment(N, M) step (same scale as ``randaugment``)
  before the colour jitter, as the paper's text defines it. (The authors' TensorFlow code applies it just
  after the jitter, with N=2, M=10 fixed, and has no rotation; we follow the paper's text, which the study
  cites.)

The warp: the authors use a sparse image warp (2x2 control points moved by up to ~10% of the side);
a random perspective with the same maximum corner displacement is the closest smooth, global warp that
torchvision ships. (The authors' runs leave it off: supcon/hparams.py ImagePreprocessing.warp_probability
defaults to 0 and supcon/hparams_flags.py has no flag to set it, which is why simclr_augment has none.)

All randomness comes from torch's global generator, so `torch.manual_seed` makes a policy reproducible
(DataLoader workers get distinct torch seeds). Every step works on PIL images (faster than uint8 tensors
at these sizes) and the image becomes a tensor once, at the end, in numpy: no per-image torch tensor ops,
whose intra-op threads make them 10-30x slower when the cores are busy (see `RandomGaussianBlur`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import AutoAugmentPolicy, v2

from study.config import AUGMENTATIONS, RANDAUGMENT_MAX_MAGNITUDE

AUTOAUGMENT_POLICIES = ("cifar", "imagenet")
SMALL_IMAGE_SIZE = 64  # below this, images are "small" (CIFAR-style recipes); same rule as the models' stem
EVAL_CROP_FRACTION = 0.875  # large images: resize the shorter side to S / 0.875, centre-crop S (224 <- 256)

# Random-resized crop (all policies but pad_crop_flip): area fraction of the source image.
# Small: google-research supcon/scripts/configs.sh CIFAR10_FLAGS --crop_area_range=0.2,1.0; the same as
# HobbitLong/SupContrast main_supcon.py and main_ce.py RandomResizedCrop(size=32, scale=(0.2, 1.)).
SMALL_CROP_AREA = (0.2, 1.0)
# Large: supcon/hparams_flags.py crop_area_range default ['0.08', '1.0'] (IMAGENET_FLAGS leaves it).
LARGE_CROP_AREA = (0.08, 1.0)
# Aspect ratio (width / height): supcon/preprocessing.py _distorted_crop_window
# aspect_ratio_range=(0.75, 1.33); torchvision's default (3/4, 4/3), used by the PyTorch reference, is the
# same up to rounding.
CROP_ASPECT_RATIO = (0.75, 1.33)

# Colour distortion (simclr_augment, simaugment, stacked_randaugment). Strength s = 0.5: the authors' CIFAR
# scripts supcon/scripts/supcon_cifar10_resnet50.sh and cross_entropy_cifar10_resnet50.sh
# (--augmentation_type=SIMCLR --augmentation_magnitude=0.5). supcon/preprocessing.py _jitter_colors with
# use_pytorch_impl (configs.sh CIFAR10_FLAGS --use_pytorch_color_jitter=True) is torchvision's ColorJitter
# with brightness = contrast = saturation = 0.8 * s and hue = 0.2 * s, in random order.
COLOUR_JITTER_STRENGTH = 0.5
COLOUR_JITTER_P = 0.8  # supcon/preprocessing.py _simclr_augment: _random_apply(_jitter_colors, p=0.8)
GRAYSCALE_P = 0.2  # supcon/preprocessing.py _simclr_augment: _random_apply(_rgb_to_gray, p=0.2)
# Gaussian blur: supcon/preprocessing.py _gaussian_blur draws sigma ~ U(0.1, 2.0); probability 0.5 from
# configs.sh IMAGENET_FLAGS --blur_probability=0.5 (CIFAR10_FLAGS --blur_probability=0: none when small).
BLUR_SIGMA = (0.1, 2.0)
BLUR_P = 0.5

# RandAugment's grey fill, where a geometric op uncovers the image: tensorflow/models
# official/vision/image_classification/augment.py (imported by supcon/preprocessing.py as `augment`)
# RandAugment.distort replace_value = [128] * 3; torchvision's default is 0 (black).
RANDAUGMENT_FILL = 128


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
    RandAugment's number of ops and magnitude, M on the paper's TF scale 0..10
    (`RANDAUGMENT_MAX_MAGNITUDE`), used by randaugment and stacked_randaugment."""
    _check_size(image_size)
    if policy not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation policy {policy!r}; allowed: {' | '.join(AUGMENTATIONS)}")
    if autoaugment_policy not in AUTOAUGMENT_POLICIES:
        raise ValueError(
            f"unknown autoaugment_policy {autoaugment_policy!r}; allowed: {' | '.join(AUTOAUGMENT_POLICIES)}"
        )
    if not isinstance(randaugment_n, int) or randaugment_n < 0:
        raise ValueError(f"invalid randaugment_n={randaugment_n!r}; allowed: an integer >= 0")
    if not isinstance(randaugment_m, int) or not 0 <= randaugment_m <= RANDAUGMENT_MAX_MAGNITUDE:
        raise ValueError(
            f"invalid randaugment_m={randaugment_m!r}; allowed: an integer in 0..{RANDAUGMENT_MAX_MAGNITUDE} "
            "(the paper's TF RandAugment scale)"
        )

    if policy == "pad_crop_flip":
        steps = _pad_crop_flip(image_size)
    else:
        steps = _random_resized_crop_flip(image_size)
    if policy == "autoaugment":
        steps.append(v2.AutoAugment(_AUTOAUGMENT_POLICY[autoaugment_policy]))
    elif policy == "randaugment":
        steps.append(_randaugment(randaugment_n, randaugment_m))
    elif policy == "simclr_augment":
        steps += _colour_distortion()
        if not is_small(image_size):
            steps.append(_gaussian_blur(image_size))
    elif policy in ("simaugment", "stacked_randaugment"):
        steps.append(v2.RandomApply([v2.RandomRotation(15, interpolation=v2.InterpolationMode.BILINEAR)], p=0.5))
        if policy == "stacked_randaugment":
            steps.append(_randaugment(randaugment_n, randaugment_m))
        steps += _colour_distortion()
        steps += [v2.RandomPerspective(distortion_scale=0.2, p=0.5), _gaussian_blur(image_size)]
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


def _random_resized_crop_flip(image_size: int) -> list[Callable]:
    """The authors' start of every view (supcon/preprocessing.py `_preprocess_image_for_train`): a random
    crop of the whole image (area and aspect ratio as set at `SMALL_CROP_AREA` .. `CROP_ASPECT_RATIO`),
    resized to S (bilinear), then a horizontal flip with p=0.5 (`_flip`)."""
    area = SMALL_CROP_AREA if is_small(image_size) else LARGE_CROP_AREA
    return [
        v2.RandomResizedCrop(image_size, scale=area, ratio=CROP_ASPECT_RATIO, antialias=True),
        v2.RandomHorizontalFlip(),
    ]


def _pad_crop_flip(image_size: int) -> list[Callable]:
    """The classic CE CIFAR recipe (He et al. 2016, Sec. 4.2: pad 4 px, random 32 x 32 crop, flip), with
    the padding scaled to S/8 (4 px at 32, 2 px at 16, 28 at 224); zero padding."""
    padding = max(1, round(image_size / 8))
    return [
        ResizeCenterCrop(image_size),  # no-op for square images stored at the model's size
        v2.RandomCrop(image_size, padding=padding),
        v2.RandomHorizontalFlip(),
    ]


def _colour_distortion() -> list[Callable]:
    """SimCLR's colour distortion at the authors' strength (see `COLOUR_JITTER_STRENGTH`): torchvision's
    ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, then grayscale with p=0.2."""
    s = COLOUR_JITTER_STRENGTH
    jitter = v2.ColorJitter(brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s)
    return [v2.RandomApply([jitter], p=COLOUR_JITTER_P), v2.RandomGrayscale(p=GRAYSCALE_P)]


def _gaussian_blur(image_size: int) -> RandomGaussianBlur:
    return RandomGaussianBlur(blur_kernel_size(image_size), sigma=BLUR_SIGMA, p=BLUR_P)


def _randaugment(num_ops: int, magnitude: int) -> v2.RandAugment:
    """RandAugment(N, M) with M on TF's level scale 0..10 (tensorflow/models
    official/vision/image_classification/augment.py, _MAX_LEVEL = 10; supcon/preprocessing.py imports it):
    torchvision's op ranges split into RANDAUGMENT_MAX_MAGNITUDE + 1 = 11 bins, linspace(0, max, 11)[M] =
    M / 10 * max, as TF's level / _MAX_LEVEL * max; TF's grey fill (`RANDAUGMENT_FILL`).

    Where torchvision's ops differ from TF's (TF's level-to-arg functions, augment.py `level_to_arg`, at
    level L = M):
    - Same: ShearX/ShearY (+-L/10 * 0.3, origin at the top-left corner, nearest, fill 128), Rotate
      (+-L/10 * 30 degrees about the centre, nearest, fill 128), AutoContrast and Equalize (PIL's).
    - TranslateX/Y: TF shifts by +-L/10 * translate_const, an absolute 100 px (RandAugment's default), at
      every image size (at 32 px, L >= 4 moves the whole image out: a grey square); torchvision shifts by
      +-M/10 * 150/331 * width (14.5 px at most at 32 px).
    - Brightness/Color/Contrast/Sharpness: TF's enhance factor is L/10 * 1.8 + 0.1, unsigned (M=9: 1.72;
      M=5: 1.0, a no-op; below 5 it always darkens / desaturates / flattens / blurs); torchvision's is
      1 +- M/10 * 0.9 with a random sign (M=9: 1.81 or 0.19).
    - Contrast: TF blends towards sum(histogram) / 256 = pixel count / 256 (4 at 32 x 32, 196 at 224 x 224,
      clipped to 255), not the mean grey level as torchvision (and PIL) do.
    - Posterize: TF keeps int(L/10 * 4) bits: 0 bits (a black image) for L < 2.5, and a weaker op as L
      grows (M=9: 3 bits); torchvision keeps 8 - round(M/10 * 4) bits (M=0: 8, a no-op; M=9: 4).
    - Solarize: TF inverts pixels >= int(L/10 * 256), a weaker op as L grows (M=9: >= 230; M=10: a no-op);
      torchvision inverts pixels >= 255 * (1 - M/10), stronger as M grows (M=9: >= 25.5).
    - Op set: TF also has Invert, Cutout (a grey square of side 2 * int(L/10 * 40) px) and SolarizeAdd
      (adds int(L/10 * 110) to pixels < 128); torchvision has Identity. Each layer picks uniformly among
      TF's 16 ops plus a no-op default branch (1/17 each), torchvision's among its 14.
    - Both always apply the picked op (TF draws a per-op probability in [0.2, 0.8] but never uses it).
    """
    return v2.RandAugment(
        num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=RANDAUGMENT_MAX_MAGNITUDE + 1,
        fill=RANDAUGMENT_FILL,
    )


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
        raise ValueError(f"invalid image_size={image_size!r}; allowed: an integer >= 8")
