"""The common-corruption suite of Hendrycks & Dietterich (ICLR 2019): 15 benchmark corruptions in 4 groups
plus 4 held-out ones, each at severities 1-5.

Two corruption profiles, i.e. two sets of per-severity constants:

- `imagenet`: the ImageNet-C constants. The corruption functions come from `imagecorruptions-imaug`, the
  maintained fork of `imagecorruptions` (the reference re-implementation of the ImageNet-C code);
- `cifar`: the constants of `make_cifar_c.py` (hendrycks/robustness, `ImageNet-C/create_c/make_cifar_c.py`,
  the script that made the released CIFAR-10-C and CIFAR-100-C), every one cited in `CIFAR_CONSTANTS`, with
  that script's own 32-px choices: frost textures scaled to 0.2 and drawn from the first five, motion-blur
  radii of 6-9 px, a zoom that keeps the centre, pixelate scaled back up with a box filter, snow quantised to
  8 bits before its motion blur, and an elastic transform with a random affine step whose constants are
  fractions of the image size. `imagecorruptions` hard-codes the ImageNet-C constants inside each function,
  so the `cifar` corruptions are our code (`_cifar_*` below), built on the package's helpers where they
  apply (`disk`, `plasma_fractal`, `_motion_blur`, the numba pixel shuffle of glass_blur, the frost
  textures). The script assumes 32 x 32 images; here its pixel constants apply at any size: loops and
  crops run over the image's own height and width, fog's plasma map is the smallest power-of-two square
  covering the image, and the elastic constants are fractions of the shorter side (IMSIZE, 32 in the script
  and 64 in make_tinyimagenet_c.py).

`profile=None` picks by size: `cifar` for images under `CIFAR_PROFILE_BELOW` (64) px on both sides (CIFAR,
small ImageFolders, the 16-px digits), `imagenet` from 64 px. Only `cifar`-profile sets compare with the
released CIFAR-10-C/100-C. This module adds what a study needs around the corruptions:

- one batched entry point, `corrupt(images, name, severity, seed, profile)`, on uint8 `[N, H, W, 3]` arrays;
- reproducibility: image i is corrupted under its own seed derived from `(seed, name, start_index + i)`,
  which seeds numpy's global RNG (used by most corruptions) and is passed to the two corruptions that take
  a seed of their own (impulse_noise -> scikit-image, glass_blur -> numba's RNG). The caller's numpy RNG
  state is restored afterwards. Because the severity is not part of the seed, an image gets the same random
  draws at every severity (the same noise field, frost crop, blur angle), scaled by the severity's
  constants: severities differ only in strength. A chunk `images[a:b]` with `start_index=a` is corrupted
  exactly as rows a..b of the whole batch, so work can be split freely;
- small images (the library refuses below 32 px; everything here runs down to `MIN_IMAGE_SIZE`). Every
  corruption is applied at the image's own resolution, with its profile's constants, except for one fix:
  the library's motion-blur kernel (used by motion_blur and snow) stops adding shifted copies once a shift
  leaves the image, so on images narrower than the kernel (41 px at motion_blur severity 5) it loses weight
  and darkens the image (a grey 16 px image drops from 128 to 91). Those two corruptions pad such images
  by edge replication (what ImageMagick's motion blur, used for the original ImageNet-C, does at borders),
  corrupt, and crop back, which for wide enough images is exactly the library's result (in both profiles;
  the `cifar` kernels are 13-29 px wide, so only images under 29 px are padded);
- spatter (severities 1-3) divides 0 by 0 when no pixel of its random liquid layer passes the threshold,
  which happens on small images (about 1 in 100 CIFAR images at 32 px, 1 in 4 at 8 px) and turns the image
  into NaN, i.e. black once cast to uint8; such images come back unspattered instead (both profiles);
- speed: frost textures are read from disk and rescaled once per process instead of once per image
  (bit-identical to the library, about 10x faster at 32 px), and zoom_blur zooms channels as 2-D images
  (bit-identical, 2x faster; it is the slowest corruption, about 1/4 of all the work at 224 px). The rest loops
  over images: the library's functions are per image and their numeric work dominates (batching brightness
  over N gave no speed-up).
  The `cifar` zoom_blur zooms each distinct (crop size, output size) once per image: scipy's zoom depends
  on the factor only through the output size, so factors sharing both give the same layer (bit-identical,
  and it makes up for the script's denser factors: 82 zooms over the five severities vs ImageNet-C's 63).

Note on scale: the `imagenet` profile on 32-px or 16-px images is much harsher than the released
CIFAR-10-C (whose constants are the `cifar` profile), so errors on such sets are comparable only with each
other. Constants that are absolute in pixels (blur radii, elastic displacement, frost texture scale) are
relatively much stronger on tiny images (also the `cifar` ones on 16-px digits, made for 32 px); noise,
brightness, contrast, saturate, pixelate and JPEG act per pixel and are resolution-independent. numba's
internal RNG (glass_blur) is left seeded by the last image; nothing else outside numpy's global RNG is
touched. Not thread-safe: numpy's global RNG is process-wide (each Ray task runs in its own worker process).
"""

from __future__ import annotations

import functools
import importlib.resources
import zlib
from io import BytesIO

import cv2
import imagecorruptions
import numpy as np
from imagecorruptions.corruptions import _motion_blur, _shuffle_pixels_njit_glass_blur, disk, plasma_fractal
from PIL import Image
from scipy.ndimage import map_coordinates
from scipy.ndimage import zoom as scipy_zoom
from skimage.color import hsv2rgb, rgb2hsv
from skimage.filters import gaussian
from skimage.util import random_noise

from study.config import is_integer
from study.tables import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, CORRUPTION_GROUPS, HELD_OUT_CORRUPTIONS, SEVERITIES

__all__ = [
    "CORRUPTIONS",
    "CORRUPTION_GROUPS",
    "EXTRA_CORRUPTIONS",
    "ALL_CORRUPTIONS",
    "SEVERITIES",
    "MIN_IMAGE_SIZE",
    "PROFILES",
    "CIFAR_PROFILE_BELOW",
    "CIFAR_CONSTANTS",
    "CIFAR_FROST_SCALE",
    "CIFAR_FROST_TEXTURES",
    "CIFAR_SOURCE",
    "check_images",
    "check_profile",
    "corrupt",
    "corruption_group",
    "default_profile",
    "image_seed",
]

# The suite's names and severities live in the schema (study/tables.py); these names are this module's API.
CORRUPTIONS = BENCHMARK_CORRUPTIONS
EXTRA_CORRUPTIONS = HELD_OUT_CORRUPTIONS  # held out
MIN_IMAGE_SIZE = 8  # below this, pixelate at severity 5 collapses images to nothing
PROFILES: tuple[str, ...] = ("cifar", "imagenet")  # sets of per-severity constants (module docstring)
# profile=None: `cifar` when both sides are under this many pixels (the released 32-px CIFAR-C sets; Tiny
# ImageNet-C, at 64 px, has constants of its own), `imagenet` from here on. Issue 16's rule, not a source's.
CIFAR_PROFILE_BELOW = 64

# ---------------------------------------------------------------------------------------- the `cifar` profile
# Every constant below is copied from the script that made the released CIFAR-10-C / CIFAR-100-C; each entry
# names the function and line of that file it comes from (tests/test_corruptions.py pins them to it again).
CIFAR_SOURCE = (
    "hendrycks/robustness ImageNet-C/create_c/make_cifar_c.py (commit ca360085d57889288c4143fddd8a707bbcae01bd)"
)
CIFAR_CONSTANTS: dict[str, tuple] = {
    # noise
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # make_cifar_c.py:131, gaussian_noise: std
    "shot_noise": (500, 250, 100, 75, 50),  # make_cifar_c.py:138, shot_noise: Poisson photons per unit
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # make_cifar_c.py:145, impulse_noise: s&p amount
    # blur
    # make_cifar_c.py:184, defocus_blur: (disk radius, alias blur)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    # make_cifar_c.py:167, glass_blur: (sigma, max delta, iterations)
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),  # make_cifar_c.py:198, motion_blur: (radius, sigma)
    # make_cifar_c.py:216-217, zoom_blur: np.arange(start, stop, step) of zoom factors, kept as the
    # arguments because float aranges are not round (the first holds 7 factors, 1.06 included)
    "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
    # weather
    "snow": (  # make_cifar_c.py:251-255, snow: (mean, std, zoom, threshold, blur radius, blur sigma, image weight)
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    # make_cifar_c.py:238, frost: (image weight, frost weight)
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # make_cifar_c.py:229, fog: (strength, wibble decay)
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # make_cifar_c.py:342, brightness: added to HSV value
    # digital
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # make_cifar_c.py:334, contrast: factor about the channel means
    "elastic_transform": (  # make_cifar_c.py:385-389, elastic_transform: (alpha, sigma, affine) / IMSIZE (line 384: 32)
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # make_cifar_c.py:374, pixelate: downscale factor
    "jpeg_compression": (80, 65, 58, 50, 40),  # make_cifar_c.py:364, jpeg_compression: JPEG quality
    # held out
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),  # make_cifar_c.py:152, speckle_noise: std
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),  # make_cifar_c.py:159, gaussian_blur: sigma
    "spatter": (  # make_cifar_c.py:279-283, spatter: (mean, std, sigma, threshold, intensity, mud)
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    # make_cifar_c.py:353, saturate: (factor, offset) of the HSV saturation
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}  # fmt: skip
CIFAR_FROST_SCALE = 0.2  # make_cifar_c.py:242, frost: cv2.resize(frost, (0, 0), fx=0.2, fy=0.2)
CIFAR_FROST_TEXTURES = 5  # make_cifar_c.py:239, frost: np.random.randint(5), i.e. frost1-frost5 (frost6 never)
_CIFAR_MOTION_ANGLES = (-45, 45)  # make_cifar_c.py:204, motion_blur: angle ~ U(-45, 45) degrees
_CIFAR_SNOW_ANGLES = (-135, -45)  # make_cifar_c.py:268, snow: angle ~ U(-135, -45) degrees
_CIFAR_SPATTER_WATER = (175, 238, 238)  # make_cifar_c.py:308-310, spatter: "pale turquoise", RGB 0-255
_CIFAR_SPATTER_MUD = (63, 42, 20)  # make_cifar_c.py:323-325, spatter: "mud brown", RGB 0-255
_CIFAR_SPATTER_KERNEL = ((-2, -1, 0), (-1, 1, 1), (0, 1, 2))  # make_cifar_c.py:299, spatter: `ker`

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


def default_profile(height: int, width: int) -> str:
    """The profile `corrupt(..., profile=None)` uses for images of this size: `cifar` when both sides are
    under `CIFAR_PROFILE_BELOW` (64) px, else `imagenet`."""
    return "cifar" if max(int(height), int(width)) < CIFAR_PROFILE_BELOW else "imagenet"


def check_profile(profile: object) -> None:
    """ValueError naming the allowed values unless `profile` is None or one of `PROFILES`."""
    if profile is not None and profile not in PROFILES:
        raise ValueError(
            f"unknown corruption profile {profile!r}; allowed: {', '.join(PROFILES)} (or None: by image size)"
        )


def corrupt(
    images: np.ndarray,
    name: str,
    severity: int,
    seed: int = 0,
    profile: str | None = None,
    *,
    start_index: int = 0,
) -> np.ndarray:
    """Corrupt a batch of images with one corruption at one severity.

    Args:
        images: uint8 array `[N, H, W, 3]` (RGB), H and W at least `MIN_IMAGE_SIZE`.
        name: one of `ALL_CORRUPTIONS` (the 15 benchmark `CORRUPTIONS` or the 4 `EXTRA_CORRUPTIONS`).
        severity: 1-5.
        seed: non-negative integer; the same seed gives the same output.
        profile: "cifar" (the constants of the released CIFAR-10-C), "imagenet" (ImageNet-C's), or None:
            by size, `cifar` below 64 px (`default_profile`).
        start_index: index of `images[0]` in a larger batch, so that chunks reproduce the whole batch.

    Returns:
        A new uint8 array of the same shape.
    """
    _check_name(name)
    _check_severity(severity)
    check_profile(profile)
    check_images(images)
    for label, value in (("seed", seed), ("start_index", start_index)):
        if not (is_integer(value) and value >= 0):
            raise ValueError(f"invalid {label}={value!r}; allowed: an integer >= 0")
    severity = int(severity)
    if profile is None:
        profile = default_profile(images.shape[1], images.shape[2])
    one = _corrupt_one if profile == "imagenet" else _corrupt_one_cifar
    corrupted = np.empty_like(images)
    saved_state = np.random.get_state()
    try:
        for offset, image in enumerate(images):
            this_seed = image_seed(seed, name, start_index + offset)
            np.random.seed(this_seed)
            corrupted[offset] = one(np.ascontiguousarray(image), name, severity, this_seed)
    finally:
        np.random.set_state(saved_state)
    return corrupted


def _corrupt_one(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """One HWC uint8 image -> corrupted HWC uint8 image, `imagenet` profile (numpy's global RNG seeded)."""
    function = imagecorruptions.corruption_dict[name]
    height, width = image.shape[:2]
    if name == "frost":
        result = _frost(image, severity)
    elif name in _MOTION_KERNEL_WIDTHS and min(height, width) < _MOTION_KERNEL_WIDTHS[name][severity - 1]:
        result = _padded(image, _MOTION_KERNEL_WIDTHS[name][severity - 1],
                         lambda padded: np.asarray(function(Image.fromarray(padded), severity)))
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


def _padded(image: np.ndarray, kernel_width: int, function) -> np.ndarray:
    """`function` (a motion blur) on the image padded by edge replication to at least the kernel's width,
    cropped back: the library's kernel stops adding shifted copies once a shift leaves the image."""
    height, width = image.shape[:2]
    if min(height, width) >= kernel_width:
        return function(image)
    pad = kernel_width - min(height, width)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return np.asarray(function(padded))[pad : pad + height, pad : pad + width]


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


@functools.cache
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


# ---------------------------------------------------------------------------------------- the `cifar` profile
# Each `_cifar_<name>(x, c, seed)` takes one HWC uint8 image, its severity's constants `c` from
# CIFAR_CONSTANTS and the image's seed (numpy's global RNG is already seeded with it), and returns floats in
# 0-255 that `_corrupt_one_cifar` truncates to uint8, as make_cifar_c.py's driver does (np.uint8, line 458).
def _corrupt_one_cifar(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """One HWC uint8 image -> corrupted HWC uint8 image, `cifar` profile (numpy's global RNG seeded)."""
    c = CIFAR_CONSTANTS[name][severity - 1]
    function = _CIFAR_FUNCTIONS[name]
    if name in ("motion_blur", "snow"):
        radius = c[0] if name == "motion_blur" else c[4]
        result = _padded(image, 2 * radius + 1, lambda padded: function(padded, c, seed))  # the library's width
    else:
        result = function(image, c, seed)
    return np.uint8(np.clip(np.asarray(result), 0, 255))


def _cifar_gaussian_noise(x: np.ndarray, c: float, seed: int) -> np.ndarray:
    x = x / 255.0
    return np.clip(x + np.random.normal(size=x.shape, scale=c), 0, 1) * 255


def _cifar_shot_noise(x: np.ndarray, c: int, seed: int) -> np.ndarray:
    x = x / 255.0
    return np.clip(np.random.poisson(x * c) / c, 0, 1) * 255


def _cifar_impulse_noise(x: np.ndarray, c: float, seed: int) -> np.ndarray:
    # scikit-image's salt-and-pepper under the image's seed, as imagecorruptions.impulse_noise draws it.
    return np.clip(random_noise(x / 255.0, mode="s&p", rng=seed, amount=c), 0, 1) * 255


def _cifar_speckle_noise(x: np.ndarray, c: float, seed: int) -> np.ndarray:
    x = x / 255.0
    return np.clip(x + x * np.random.normal(size=x.shape, scale=c), 0, 1) * 255


def _cifar_gaussian_blur(x: np.ndarray, c: float, seed: int) -> np.ndarray:
    return np.clip(gaussian(x / 255.0, sigma=c, channel_axis=-1), 0, 1) * 255


def _cifar_glass_blur(x: np.ndarray, c: tuple, seed: int) -> np.ndarray:
    """Blur, shuffle each pixel with a neighbour up to c[1] away (c[2] passes, the package's numba loop over
    the image's own size, seeded), blur again."""
    sigma = c[0]
    blurred = np.uint8(gaussian(x / 255.0, sigma=sigma, channel_axis=-1) * 255)
    shuffled = _shuffle_pixels_njit_glass_blur(blurred.shape[0], blurred.shape[1], blurred, c, seed)
    return np.clip(gaussian(shuffled / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255


def _cifar_defocus_blur(x: np.ndarray, c: tuple, seed: int) -> np.ndarray:
    kernel = disk(radius=c[0], alias_blur=c[1])  # the package's anti-aliased disk (same as the script's)
    x = x / 255.0
    channels = [cv2.filter2D(x[:, :, channel], -1, kernel) for channel in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0, 1) * 255


def _cifar_motion_blur(x: np.ndarray, c: tuple, seed: int) -> np.ndarray:
    # The package's re-implementation of ImageMagick's motion blur (the script calls ImageMagick itself).
    angle = np.random.uniform(*_CIFAR_MOTION_ANGLES)
    return np.clip(_motion_blur(x, radius=c[0], sigma=c[1], angle=angle), 0, 255)


def _cifar_zoom_blur(x: np.ndarray, c: tuple, seed: int) -> np.ndarray:
    """The mean of the image and its zooms by each factor, each zoom keeping the centre (the script's
    clipped_zoom, make_cifar_c.py:112-122, generalised to H != W). Channels are zoomed as 2-D images
    (bit-identical to zooming (f, f, 1)), and each distinct (crop, output) size once (module docstring)."""
    x = (x / 255.0).astype(np.float32)
    height, width = x.shape[:2]
    factors = np.arange(*c)
    accumulated = np.zeros_like(x)
    layers: dict[tuple[int, int, int, int], np.ndarray] = {}
    for factor in factors:
        crop_height, crop_width = int(np.ceil(height / factor)), int(np.ceil(width / factor))
        # scipy.ndimage.zoom's own output shape; it depends on the factor only through it.
        key = (crop_height, crop_width, int(round(crop_height * factor)), int(round(crop_width * factor)))
        if key not in layers:
            top, left = (height - crop_height) // 2, (width - crop_width) // 2
            crop = x[top : top + crop_height, left : left + crop_width]
            zoomed = np.stack([scipy_zoom(crop[..., k], (factor, factor), order=1) for k in range(3)], axis=-1)
            trim_top, trim_left = (zoomed.shape[0] - height) // 2, (zoomed.shape[1] - width) // 2
            layers[key] = zoomed[trim_top : trim_top + height, trim_left : trim_left + width]
        accumulated += layers[key]
    return np.clip((x + accumulated) / (len(factors) + 1), 0, 1) * 255


def _centre_zoom(layer: np.ndarray, factor: float) -> np.ndarray:
    """A [H, W, 1] array zoomed by `factor` about its centre, cropped back to H x W (snow's clipped_zoom)."""
    height, width = layer.shape[:2]
    crop_height, crop_width = int(np.ceil(height / factor)), int(np.ceil(width / factor))
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    zoomed = scipy_zoom(layer[top : top + crop_height, left : left + crop_width], (factor, factor, 1), order=1)
    trim_top, trim_left = (zoomed.shape[0] - height) // 2, (zoomed.shape[1] - width) // 2
    return zoomed[trim_top : trim_top + height, trim_left : trim_left + width]


def _cifar_snow(x: np.ndarray, c: tuple, seed: int) -> np.ndarray:
    mean, std, zoom, threshold, radius, sigma, image_weight = c
    x = x.astype(np.float32) / 255.0
    height, width = x.shape[:2]
    flakes = _centre_zoom(np.random.normal(size=(height, width), loc=mean, scale=std)[..., np.newaxis], zoom)
    flakes[flakes < threshold] = 0
    # The script hands ImageMagick an 8-bit greyscale PNG (truncated) and reads an 8-bit one back (rounded,
    # as imagecorruptions.snow rounds its blurred layer).
    flakes = (np.clip(flakes[..., 0], 0, 1) * 255).astype(np.uint8)
    angle = np.random.uniform(*_CIFAR_SNOW_ANGLES)
    flakes = np.round(np.clip(_motion_blur(flakes, radius=radius, sigma=sigma, angle=angle), 0, 255)) / 255.0
    flakes = flakes[..., np.newaxis]
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(height, width, 1)
    x = image_weight * x + (1 - image_weight) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(x + flakes + np.rot90(flakes, k=2), 0, 1) * 255


def _cifar_frost(x: np.ndarray, c: tuple, seed: int) -> np.ndarray:
    image_weight, frost_weight = c
    height, width = x.shape[:2]
    texture = _cifar_frost_texture(np.random.randint(CIFAR_FROST_TEXTURES), height, width)
    top = np.random.randint(0, texture.shape[0] - height)
    left = np.random.randint(0, texture.shape[1] - width)
    crop = texture[top : top + height, left : left + width][..., [2, 1, 0]]  # BGR -> RGB
    return np.clip(image_weight * x + frost_weight * crop, 0, 255)


@functools.lru_cache(maxsize=64)
def _cifar_frost_texture(index: int, height: int, width: int) -> np.ndarray:
    """Texture `index` at the script's scale (0.2), read and scaled once per process. The smallest scaled
    textures are 63 px high, so for images that large or larger (the `cifar` profile asked for explicitly)
    the texture is scaled to cover the image instead, as the `imagenet` profile does."""
    texture = cv2.resize(_frost_texture(index), (0, 0), fx=CIFAR_FROST_SCALE, fy=CIFAR_FROST_SCALE)
    if texture.shape[0] <= height or texture.shape[1] <= width:
        return _rescaled_frost(index, height, width)
    texture.setflags(write=False)
    return texture


def _cifar_fog(x: np.ndarray, c: tuple, seed: int) -> np.ndarray:
    strength, decay = c
    height, width = x.shape[:2]
    x = x / 255.0
    peak = x.max()
    # The package's diamond-square plasma, on the smallest power-of-two square covering the image (32 at
    # 32 px, the script's mapsize).
    size = 1 << (max(height, width) - 1).bit_length()
    x = x + strength * plasma_fractal(mapsize=size, wibbledecay=decay)[:height, :width][..., np.newaxis]
    return np.clip(x * peak / (peak + strength), 0, 1) * 255


def _cifar_brightness(x: np.ndarray, c: float, seed: int) -> np.ndarray:
    hsv = rgb2hsv(x / 255.0)
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
    return np.clip(hsv2rgb(hsv), 0, 1) * 255


def _cifar_saturate(x: np.ndarray, c: tuple, seed: int) -> np.ndarray:
    hsv = rgb2hsv(x / 255.0)
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] * c[0] + c[1], 0, 1)
    return np.clip(hsv2rgb(hsv), 0, 1) * 255


def _cifar_contrast(x: np.ndarray, c: float, seed: int) -> np.ndarray:
    x = x / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def _cifar_elastic_transform(x: np.ndarray, c: tuple, seed: int) -> np.ndarray:
    """A random affine warp (three anchor points moved by up to `affine` px), then a smooth random
    displacement field (uniform noise, Gaussian-smoothed by `sigma`, scaled by `alpha`); all three constants
    are fractions of the image size."""
    size = min(x.shape[:2])  # the script's IMSIZE
    alpha, sigma, affine = (fraction * size for fraction in c)
    image: np.ndarray = x.astype(np.float32) / 255.0  # then cv2's warped copy
    height, width = image.shape[:2]
    centre = np.array((height, width), dtype=np.float32) // 2
    step = size // 3
    anchors = np.array([centre + step, [centre[0] + step, centre[1] - step], centre - step], dtype=np.float32)
    moved = anchors + np.random.uniform(-affine, affine, size=anchors.shape).astype(np.float32)
    warp = cv2.getAffineTransform(anchors, moved)
    image = cv2.warpAffine(image, warp, (width, height), borderMode=cv2.BORDER_REFLECT_101)
    shifts = [
        (gaussian(np.random.uniform(-1, 1, size=(height, width)), sigma, mode="reflect", truncate=3) * alpha)
        .astype(np.float32)
        for _ in range(2)
    ]  # first the row displacement, then the column one
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coordinates = [(rows + shifts[0]).reshape(-1), (cols + shifts[1]).reshape(-1)]
    warped = [map_coordinates(image[..., k], coordinates, order=1, mode="reflect").reshape(height, width)
              for k in range(3)]
    return np.clip(np.stack(warped, axis=-1), 0, 1) * 255


def _cifar_pixelate(x: np.ndarray, c: float, seed: int) -> np.ndarray:
    height, width = x.shape[:2]
    small = Image.fromarray(x).resize((int(width * c), int(height * c)), Image.Resampling.BOX)
    return np.asarray(small.resize((width, height), Image.Resampling.BOX))  # box up, not nearest as ImageNet-C


def _cifar_jpeg_compression(x: np.ndarray, c: int, seed: int) -> np.ndarray:
    encoded = BytesIO()
    Image.fromarray(x).save(encoded, "JPEG", quality=c)
    return np.asarray(Image.open(encoded))


def _cifar_spatter(x: np.ndarray, c: tuple, seed: int) -> np.ndarray:
    """Water (c[5] == 0): a thresholded smooth liquid layer shaded by the distance to its edges, added in
    pale turquoise; mud (c[5] == 1): the thresholded layer, blurred, replaces the image with mud brown. As in
    imagecorruptions (and the script), except that a layer with no liquid leaves the image as it is
    instead of dividing 0 by 0 into a NaN (black) image."""
    mean, std, sigma, threshold, intensity, mud = c
    x = x.astype(np.float32) / 255.0
    liquid = gaussian(np.random.normal(size=x.shape[:2], loc=mean, scale=std), sigma=sigma)
    liquid[liquid < threshold] = 0
    if mud == 0:
        liquid = (liquid * 255).astype(np.uint8)
        # Edge distance, truncated at 20 px, smoothed, equalised and embossed (Canny 50/150, distance
        # threshold 20 and the 3x3 blurs: make_cifar_c.py:292-301, the same as imagecorruptions.spatter).
        distance = cv2.distanceTransform(255 - cv2.Canny(liquid, 50, 150), cv2.DIST_L2, 5)
        _, distance = cv2.threshold(distance, 20, 20, cv2.THRESH_TRUNC)
        distance = cv2.equalizeHist(cv2.blur(distance, (3, 3)).astype(np.uint8))
        distance = cv2.filter2D(distance, cv2.CV_8U, np.array(_CIFAR_SPATTER_KERNEL))
        shade = liquid * cv2.blur(distance, (3, 3)).astype(np.float32)
        peak = shade.max()
        if peak == 0:
            return x * 255
        shade = (shade / peak * intensity)[..., np.newaxis]
        water = np.array(_CIFAR_SPATTER_WATER, dtype=np.float32) / 255.0
        return np.clip(x + shade * water, 0, 1) * 255
    cover = gaussian(np.where(liquid > threshold, 1, 0).astype(np.float32), sigma=intensity)
    cover[cover < 0.8] = 0  # make_cifar_c.py:319
    cover = cover[..., np.newaxis]
    mud_colour = np.array(_CIFAR_SPATTER_MUD, dtype=np.float32) / 255.0
    return np.clip(x * (1 - cover) + mud_colour * cover, 0, 1) * 255


_CIFAR_FUNCTIONS = {name: globals()[f"_cifar_{name}"] for name in ALL_CORRUPTIONS}
assert set(CIFAR_CONSTANTS) == set(ALL_CORRUPTIONS)
assert all(len(constants) == len(SEVERITIES) for constants in CIFAR_CONSTANTS.values())


def _check_name(name: object) -> None:
    if name not in ALL_CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; allowed: {', '.join(ALL_CORRUPTIONS)}")


def _check_severity(severity: object) -> None:
    if not (is_integer(severity) and 1 <= severity <= 5):
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
