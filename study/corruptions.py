"""The common-corruption suite of Hendrycks & Dietterich (ICLR 2019): 15 benchmark corruptions in 4 groups
plus 4 held-out ones, each at severities 1-5.

The corruption functions themselves come from `imagecorruptions-imaug`, the maintained fork of
`imagecorruptions` (the reference re-implementation of the ImageNet-C code, ImageNet-C constants). This module
adds what a study needs around them:

- one batched entry point, `corrupt(images, name, severity, seed)`, on uint8 `[N, H, W, 3]` arrays;
- reproducibility: image i is corrupted under its own seed derived from `(seed, name, start_index + i)`,
  which seeds numpy's global RNG (used by most corruptions) and is passed to the two corruptions that take
  a seed of their own (impulse_noise -> scikit-image, glass_blur -> numba's RNG). The caller's numpy RNG
  state is restored afterwards. Because the severity is not part of the seed, an image gets the same random
  draws at every severity (the same noise field, frost crop, blur angle), scaled by the severity's
  constants: severities differ only in strength. A chunk `images[a:b]` with `start_index=a` is corrupted
  exactly as rows a..b of the whole batch, so work can be split freely;
- small images (the library refuses below 32 px; everything here runs down to `MIN_IMAGE_SIZE`). Every
  corruption is applied at the image's own resolution, with the ImageNet-C constants, except for one fix:
  the library's motion-blur kernel (used by motion_blur and snow) stops adding shifted copies once a shift
  leaves the image, so on images narrower than the kernel (41 px at motion_blur severity 5) it loses weight
  and darkens the image (a grey 16 px image drops from 128 to 91). Those two corruptions pad such images
  by edge replication (what ImageMagick's motion blur, used for the original ImageNet-C, does at borders),
  corrupt, and crop back, which for wide enough images is exactly the library's result;
- spatter (severities 1-3) divides 0 by 0 when no pixel of its random liquid layer passes the threshold,
  which happens on small images (about 1 in 100 CIFAR images at 32 px, 1 in 4 at 8 px) and turns the image
  into NaN, i.e. black once cast to uint8; such images come back unspattered instead;
- speed: frost textures are read from disk and rescaled once per process instead of once per image
  (bit-identical to the library, about 10x faster at 32 px), and zoom_blur zooms channels as 2-D images
  (bit-identical, 2x faster; it is the slowest corruption, about 1/4 of all the work at 224 px). The rest loops over images: the library's
  functions are per image and their numeric work dominates (batching brightness over N gave no speed-up).

Note on scale: CIFAR-10-C was made with weaker, CIFAR-specific constants; sets generated here at 32 px or
16 px use the ImageNet-C constants, so they are harsher than the released CIFAR-10-C and their errors are
comparable only with each other. Constants that are absolute in pixels (blur radii, elastic displacement,
frost texture scale) are relatively much stronger on tiny images; noise, brightness, contrast, saturate,
pixelate and JPEG act per pixel and are resolution-independent. numba's internal RNG (glass_blur) is
left seeded by the last image; nothing else outside numpy's global RNG is touched. Not thread-safe: numpy's
global RNG is process-wide (each Ray task runs in its own worker process).
"""

from __future__ import annotations

import functools
import importlib.resources
import numbers
import zlib

import cv2
import imagecorruptions
import numpy as np
from PIL import Image
from scipy.ndimage import zoom as scipy_zoom

__all__ = [
    "CORRUPTIONS",
    "CORRUPTION_GROUPS",
    "EXTRA_CORRUPTIONS",
    "ALL_CORRUPTIONS",
    "SEVERITIES",
    "MIN_IMAGE_SIZE",
    "check_images",
    "corrupt",
    "corruption_group",
    "image_seed",
]

CORRUPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
CORRUPTIONS: tuple[str, ...] = tuple(name for group in CORRUPTION_GROUPS.values() for name in group)
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")  # held out
ALL_CORRUPTIONS: tuple[str, ...] = CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
MIN_IMAGE_SIZE = 8  # below this, pixelate at severity 5 collapses images to nothing

# Width (2 * radius + 1) of the library's motion-blur kernel per severity, for the two corruptions using it.
_MOTION_KERNEL_WIDTHS = {"motion_blur": (21, 31, 31, 31, 41), "snow": (21, 25, 25, 25, 25)}
_SEEDED_CORRUPTIONS = ("impulse_noise", "glass_blur")  # take their own `seed` argument
# Same constants as imagecorruptions.frost (checked bit-for-bit against it in the tests).
_FROST_MIX = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))
# Same expressions as imagecorruptions.zoom_blur (float arange, so copied verbatim rather than rounded).
_ZOOM_FACTORS = (
    np.arange(1, 1.11, 0.01),
    np.arange(1, 1.16, 0.01),
    np.arange(1, 1.21, 0.02),
    np.arange(1, 1.26, 0.02),
    np.arange(1, 1.31, 0.03),
)
_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")

assert set(ALL_CORRUPTIONS) == set(imagecorruptions.get_corruption_names("all"))
assert CORRUPTIONS == tuple(imagecorruptions.get_corruption_names("common"))


def corruption_group(name: str) -> str:
    """The group ("noise", "blur", "weather", "digital", or "extra" for the held-out four) of a corruption."""
    _check_name(name)
    for group, names in CORRUPTION_GROUPS.items():
        if name in names:
            return group
    return "extra"


def image_seed(seed: int, name: str, index: int) -> int:
    """The 32-bit seed image `index` of a batch is corrupted under: independent across corruptions and
    images, shared across severities."""
    entropy = [int(seed), zlib.crc32(name.encode()), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0, *, start_index: int = 0) -> np.ndarray:
    """Corrupt a batch of images with one corruption at one severity.

    Args:
        images: uint8 array `[N, H, W, 3]` (RGB), H and W at least `MIN_IMAGE_SIZE`.
        name: one of `ALL_CORRUPTIONS` (the 15 benchmark `CORRUPTIONS` or the 4 `EXTRA_CORRUPTIONS`).
        severity: 1-5.
        seed: non-negative integer; the same seed gives the same output.
        start_index: index of `images[0]` in a larger batch, so that chunks reproduce the whole batch.

    Returns:
        A new uint8 array of the same shape.
    """
    _check_name(name)
    _check_severity(severity)
    check_images(images)
    for label, value in (("seed", seed), ("start_index", start_index)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"invalid {label}={value!r}; allowed: an integer >= 0")
    severity = int(severity)
    function = imagecorruptions.corruption_dict[name]
    corrupted = np.empty_like(images)
    saved_state = np.random.get_state()
    try:
        for offset, image in enumerate(images):
            this_seed = image_seed(seed, name, start_index + offset)
            np.random.seed(this_seed)
            corrupted[offset] = _corrupt_one(np.ascontiguousarray(image), name, severity, this_seed, function)
    finally:
        np.random.set_state(saved_state)
    return corrupted


def _corrupt_one(image: np.ndarray, name: str, severity: int, seed: int, function) -> np.ndarray:
    """One HWC uint8 image -> corrupted HWC uint8 image (numpy's global RNG already seeded)."""
    height, width = image.shape[:2]
    if name == "frost":
        result = _frost(image, severity)
    elif name in _MOTION_KERNEL_WIDTHS and min(height, width) < _MOTION_KERNEL_WIDTHS[name][severity - 1]:
        pad = _MOTION_KERNEL_WIDTHS[name][severity - 1] - min(height, width)
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        result = np.asarray(function(Image.fromarray(padded), severity))[pad : pad + height, pad : pad + width]
    elif name in _SEEDED_CORRUPTIONS:
        result = function(Image.fromarray(image), severity, seed=seed)
    elif name == "spatter":
        result = _spatter(image, severity, function)
    elif name == "zoom_blur":
        result = _zoom_blur(image, severity)
    else:
        result = function(Image.fromarray(image), severity)
    # Truncation, not rounding, as imagecorruptions.corrupt and the original ImageNet-C scripts do.
    return np.uint8(np.clip(np.asarray(result), 0, 255))


def _zoom_blur(image: np.ndarray, severity: int) -> np.ndarray:
    """imagecorruptions.zoom_blur, zooming each channel as a 2-D image: bit-identical (the channel axis had
    zoom 1, so its interpolation weights are exactly 1 and 0) and twice as fast."""
    x = (image / 255.0).astype(np.float32)
    height, width = x.shape[:2]
    factors = _ZOOM_FACTORS[severity - 1]
    accumulated = np.zeros_like(x)
    for factor in factors:
        # The library's clipped_zoom: crop the centre 1/factor, zoom it back up, keep the top-left H x W.
        crop_height, crop_width = int(np.ceil(height / float(factor))), int(np.ceil(width / float(factor)))
        top, left = (height - crop_height) // 2, (width - crop_width) // 2
        crop = x[top : top + crop_height, left : left + crop_width]
        layer = np.stack([scipy_zoom(crop[..., c], (factor, factor), order=1) for c in range(3)], axis=-1)
        layer = layer[:height, :width]
        accumulated[: layer.shape[0], : layer.shape[1]] += layer
    return np.clip((x + accumulated) / (len(factors) + 1), 0, 1) * 255


def _spatter(image: np.ndarray, severity: int, function) -> np.ndarray:
    """imagecorruptions.spatter, without its 0 / 0 when no pixel of the liquid layer passes the threshold
    (severities 1-3, common below 64 px): no liquid means no spatter, not a NaN (black) image."""
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.asarray(function(Image.fromarray(image), severity))
    if np.isnan(result).any():
        unspattered = np.clip(image.astype(np.float32) / 255.0, 0, 1) * 255  # the library's x + 0, in float32
        result = np.where(np.isnan(result), unspattered, result)
    return result


def _frost(image: np.ndarray, severity: int) -> np.ndarray:
    """imagecorruptions.frost with the texture read and rescaled once per (texture, image size)."""
    image_weight, frost_weight = _FROST_MIX[severity - 1]
    texture_index = np.random.randint(6)
    texture = _rescaled_frost(texture_index, image.shape[0], image.shape[1])
    top = np.random.randint(0, texture.shape[0] - image.shape[0])
    left = np.random.randint(0, texture.shape[1] - image.shape[1])
    crop = texture[top : top + image.shape[0], left : left + image.shape[1]][..., [2, 1, 0]]  # BGR -> RGB
    return np.clip(image_weight * image + frost_weight * crop, 0, 255)


@functools.lru_cache(maxsize=None)
def _frost_texture(index: int) -> np.ndarray:
    reference = importlib.resources.files("imagecorruptions") / "frost" / _FROST_FILES[index]
    with importlib.resources.as_file(reference) as path:
        texture = cv2.imread(str(path))
    if texture is None:
        raise RuntimeError(f"cannot read the frost texture {path} shipped with imagecorruptions")
    return texture


@functools.lru_cache(maxsize=64)
def _rescaled_frost(index: int, height: int, width: int) -> np.ndarray:
    """The texture scaled so that it covers an image of this size, exactly as imagecorruptions.frost does."""
    texture = _frost_texture(index)
    texture_height, texture_width = texture.shape[:2]
    scale = 1.0
    if texture_height < height and texture_width >= width:
        scale = height / texture_height
    elif texture_height >= height and texture_width < width:
        scale = width / texture_width
    elif texture_height < height and texture_width < width:
        scale = max(height / texture_height, width / texture_width)
    scale *= 1.1
    size = (int(np.ceil(texture_width * scale)), int(np.ceil(texture_height * scale)))
    rescaled = cv2.resize(texture, dsize=size, interpolation=cv2.INTER_CUBIC)
    rescaled.setflags(write=False)
    return rescaled


def _check_name(name: object) -> None:
    if name not in ALL_CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; allowed: {', '.join(ALL_CORRUPTIONS)}")


def _check_severity(severity: object) -> None:
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or not 1 <= severity <= 5:
        raise ValueError(f"invalid severity {severity!r}; allowed: an integer 1-5")


def check_images(images: object) -> None:
    """ValueError (naming what is allowed) unless `images` is a uint8 array [N, H, W, 3] of images at least
    `MIN_IMAGE_SIZE` px on each side."""
    if not isinstance(images, np.ndarray):
        raise ValueError(f"images must be a numpy uint8 array [N, H, W, 3], got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"images have dtype {images.dtype}; allowed: uint8 [N, H, W, 3] in 0-255")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images have shape {images.shape}; allowed: [N, H, W, 3] (RGB, channels last)")
    if min(images.shape[1:3]) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"images are {images.shape[1]}x{images.shape[2]} px; allowed: at least {MIN_IMAGE_SIZE} px per side"
        )
