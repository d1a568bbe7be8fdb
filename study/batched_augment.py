"""Every policy of `study.augment` on whole batches, on the training device (`data_pipeline: device`).

At the paper's scale the per-image CPU pipeline (`study.augment.build_train_transform`), not the GPU,
sets a trial's speed (issue 14). `BatchAugment` runs the same policies on a batch of decoded uint8 (or
float in [0, 1]) images where the model runs, with per-sample random parameters, and returns the
normalised float batch the model sees. It is built on kornia because kornia is a maintained, tested
library of batched, differentiable, device-agnostic augmentations (per-sample parameters, GPU and CPU),
so nothing here is a hand-written image kernel except a few one-line colour blends.

Every constant comes from `study.augment` (crop area and aspect, jitter strength and probabilities,
blur sigma / kernel / probability, RandAugment's 0..10 magnitude scale and grey fill, the AutoAugment
policy per size), and AutoAugment's / RandAugment's op tables are torchvision's own (the tables the
per-image path uses), so both paths sample the same op mix and magnitudes. All randomness comes from
torch's global generator (kornia draws its parameters there too), so `torch.manual_seed` makes a batch
reproducible; every sample, and so every view of one image, gets its own parameters.

Where the batched path differs from the per-image path (listed in FIDELITY.md):
- Arithmetic: the per-image path works on uint8 PIL images and rounds after every step; this path stays
  in float [0, 1] until normalisation (differences of about 1/255 per step).
- Random-resized crop: the boxes come from kornia's `RandomResizedCrop` sampler, which samples as
  torchvision does (area uniform, log-aspect uniform, 10 tries, the same fallback); each box is cut from
  the uint8 image and resized with torch's antialiased bilinear resize (uint8 on the CPU, as torchvision
  resizes uint8 tensors; float on a GPU), close to PIL's resize of the per-image path but not bit-equal.
  (kornia's own crop converts the full-size batch to float first and resizes without antialiasing: 2-3x
  slower on the CPU at 224 px.)
- Colour jitter: kornia's `ColorJitter` uses torchvision's formulas (multiplicative brightness, blends
  towards the grey mean / grey image, torchvision's hue shift, here computed by `_adjust_hue`, faster on
  the CPU than kornia's, same result) and draws the factors per sample, but one random order of the four
  steps per batch, not per image.
- AutoAugment / RandAugment: torchvision's op tables with per-sample op choice, probability, magnitude and
  sign (kornia's own `auto.RandAugment`/`AutoAugment` choose the ops once per batch, and its RandAugment
  takes M on a 0..30 scale with TF's translate and enhance ranges, so they are not used); the ops are
  kornia's (`warp_affine` with nearest sampling and the policy's fill, `equalize`, `posterize`,
  `sharpness`) and torch blends. Equalize uses kornia's histogram, which can differ from PIL's by a level.
- Rotation (SimAugment) and the perspective warp use kornia's bilinear warps with zero fill, as
  torchvision's; pixel-centre conventions (align_corners) differ by up to half a pixel.
- Gaussian blur: kornia's separable blur with reflect padding, sigma drawn per sample, the same kernel size.
- Images of different sizes (an image folder) arrive as a list: the crop runs per image on the full
  decoded image (same statistics), everything after it on the batch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import kornia.augmentation as K
import kornia.enhance
import torch
import torch.nn.functional as F
from kornia.geometry.transform import get_rotation_matrix2d, warp_affine
from torch import nn
from torchvision.transforms import v2

from study.augment import (
    _AUTOAUGMENT_POLICY,
    AUTOAUGMENT_POLICIES,
    BLUR_P,
    BLUR_SIGMA,
    COLOUR_JITTER_P,
    COLOUR_JITTER_STRENGTH,
    CROP_ASPECT_RATIO,
    GRAYSCALE_P,
    LARGE_CROP_AREA,
    RANDAUGMENT_FILL,
    SMALL_CROP_AREA,
    blur_kernel_size,
    is_small,
)
from study.config import AUGMENTATIONS, DATA_PIPELINES, RANDAUGMENT_MAX_MAGNITUDE

# torchvision's own op tables (name -> (magnitudes(num_bins, height, width), signed)), shared with the
# per-image path so both sample the same magnitudes.
_RANDAUGMENT_SPACE = v2.RandAugment._AUGMENTATION_SPACE
_AUTOAUGMENT_SPACE = v2.AutoAugment._AUGMENTATION_SPACE
_AUTOAUGMENT_BINS = 10  # torchvision AutoAugment's magnitude bins


def resolve_data_pipeline(data_pipeline: str, device: torch.device | str) -> str:
    """"cpu" or "device": `auto` is the device pipeline on GPU runs and the CPU pipeline otherwise."""
    if data_pipeline not in DATA_PIPELINES:
        raise ValueError(f"invalid data_pipeline={data_pipeline!r}; allowed: {' | '.join(DATA_PIPELINES)}")
    if data_pipeline == "auto":
        return "device" if torch.device(device).type == "cuda" else "cpu"
    return data_pipeline


class BatchAugment(nn.Module):
    """A named policy of `study.augment` on batches: uint8 [B, 3, H, W] (or float in [0, 1], or a list of
    [3, H_i, W_i] images of different sizes) -> normalised float32 [B, 3, S, S] on this module's device.

    `views(images, n)` returns n independent augmentations of each image, [B, n, 3, S, S]."""

    mean: torch.Tensor  # buffers [1, 3, 1, 1], registered in __init__
    std: torch.Tensor
    crop: K.RandomCrop | K.RandomResizedCrop

    def __init__(
        self,
        policy: str,
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        autoaugment_policy: str = "cifar",
        randaugment_n: int = 2,
        randaugment_m: int = 9,
    ) -> None:
        super().__init__()
        if policy not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation policy {policy!r}; allowed: {' | '.join(AUGMENTATIONS)}")
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
            raise ValueError(f"invalid image_size={image_size!r}; allowed: an integer >= 8")
        if autoaugment_policy not in AUTOAUGMENT_POLICIES:
            raise ValueError(
                f"unknown autoaugment_policy {autoaugment_policy!r}; allowed: {' | '.join(AUTOAUGMENT_POLICIES)}")
        if not isinstance(randaugment_n, int) or randaugment_n < 0:
            raise ValueError(f"invalid randaugment_n={randaugment_n!r}; allowed: an integer >= 0")
        if not isinstance(randaugment_m, int) or not 0 <= randaugment_m <= RANDAUGMENT_MAX_MAGNITUDE:
            raise ValueError(f"invalid randaugment_m={randaugment_m!r}; allowed: an integer in "
                             f"0..{RANDAUGMENT_MAX_MAGNITUDE} (the paper's TF RandAugment scale)")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"invalid mean={tuple(mean)!r} / std={tuple(std)!r}; allowed: 3 numbers each, std > 0")
        self.policy, self.image_size = policy, image_size
        self.autoaugment_policy = autoaugment_policy
        self.randaugment_n, self.randaugment_m = randaugment_n, randaugment_m
        size = (image_size, image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        if policy == "pad_crop_flip":
            self.crop = K.RandomCrop(size, padding=max(1, round(image_size / 8)), fill=0.0)
        else:
            area = SMALL_CROP_AREA if is_small(image_size) else LARGE_CROP_AREA
            self.crop = K.RandomResizedCrop(size, scale=area, ratio=CROP_ASPECT_RATIO)
        s = COLOUR_JITTER_STRENGTH
        jitter = _with_batched_hue(K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=COLOUR_JITTER_P))
        grey = K.RandomGrayscale(p=GRAYSCALE_P)
        kernel = blur_kernel_size(image_size)
        blur = K.RandomGaussianBlur((kernel, kernel), BLUR_SIGMA, border_type="reflect", p=BLUR_P)

        # The steps after crop + flip, in the per-image path's order (strings: the op-table policies).
        steps: list[nn.Module | str] = []
        if policy == "autoaugment":
            steps.append("autoaugment")
        elif policy == "randaugment":
            steps.append("randaugment")
        elif policy == "simclr_augment":
            steps += [jitter, grey] + ([] if is_small(image_size) else [blur])
        elif policy in ("simaugment", "stacked_randaugment"):
            steps.append(K.RandomRotation(15.0, p=0.5))
            if policy == "stacked_randaugment":
                steps.append("randaugment")
            steps += [jitter, grey, K.RandomPerspective(distortion_scale=0.2, p=0.5), blur]
        self.steps = steps
        self.modules_ = nn.ModuleList([step for step in steps if isinstance(step, nn.Module)])

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def views(self, images: torch.Tensor | list[torch.Tensor], n_views: int) -> torch.Tensor:
        """n_views independent augmentations of every image: [B, n_views, 3, S, S]."""
        if isinstance(images, (list, tuple)):
            repeated: torch.Tensor | list[torch.Tensor] = [image for image in images for _ in range(n_views)]
            batch = len(images)
        else:
            batch = images.shape[0]
            images = images.to(self.device, non_blocking=True)  # one copy to the device, then the repeats
            repeated = images.unsqueeze(1).expand(-1, n_views, *images.shape[1:]).flatten(0, 1)
        return self(repeated).view(batch, n_views, 3, self.image_size, self.image_size)

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        x = self._crop(images)  # a new tensor: every step below may work in place
        _random_horizontal_flip_(x)
        for step in self.steps:
            if step == "autoaugment":
                x = _autoaugment(x, self.autoaugment_policy)
            elif step == "randaugment":
                x = _randaugment(x, self.randaugment_n, self.randaugment_m)
            else:
                assert isinstance(step, nn.Module)  # the strings are the two op-table policies above
                x = step(x)
        return x.sub_(self.mean).div_(self.std)

    def _crop(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """The crop on the full decoded images: one batched call, or one call per image for a list of
        differently sized images (its statistics do not depend on the batch)."""
        if isinstance(images, (list, tuple)):
            if len({tuple(image.shape) for image in images}) == 1:
                images = torch.stack(list(images))
            else:
                return torch.cat([self._crop(image.unsqueeze(0)) for image in images])
        x = images.to(self.device, non_blocking=True)
        if self.policy != "pad_crop_flip":
            boxes = self.crop.forward_parameters(x.shape)["src"]  # kornia's sampler: torchvision's statistics
            return _crop_resize(x, boxes, self.image_size)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = _resize_centre_crop(x, self.image_size)  # as study.augment.ResizeCenterCrop
        return self.crop(_to_unit_float(x))

    def extra_repr(self) -> str:
        return (f"policy={self.policy!r}, image_size={self.image_size}, "
                f"autoaugment_policy={self.autoaugment_policy!r}, "
                f"randaugment_n={self.randaugment_n}, randaugment_m={self.randaugment_m}")


def build_batch_augment(policy: str, *, image_size: int, mean: Sequence[float], std: Sequence[float],
                        autoaugment_policy: str = "cifar", randaugment_n: int = 2, randaugment_m: int = 9,
                        device: torch.device | str = "cpu") -> BatchAugment:
    """`BatchAugment` on `device`; the arguments are `study.augment.build_train_transform`'s."""
    return BatchAugment(policy, image_size=image_size, mean=mean, std=std, autoaugment_policy=autoaugment_policy,
                        randaugment_n=randaugment_n, randaugment_m=randaugment_m).to(device)


# ---------------------------------------------------------------------------------------------- helpers
def _random_horizontal_flip_(x: torch.Tensor) -> None:
    """Mirror each sample of x with probability 1/2 (torchvision's RandomHorizontalFlip(0.5)), in place."""
    flipped = (torch.rand(len(x)) < 0.5).nonzero().squeeze(1).to(x.device)
    x.index_copy_(0, flipped, x.index_select(0, flipped).flip(-1))


def _with_batched_hue(jitter: K.ColorJitter) -> K.ColorJitter:
    """kornia's ColorJitter with a faster hue step: the same hue shift (within 2e-6) in about a third of the
    time on the CPU, where kornia's HSV conversions were most of a SimCLR view's time. A kornia without the
    `_hue_fn` hook keeps its own (tests/test_batched_augment.py notices)."""
    if hasattr(jitter, "_hue_fn"):
        jitter._hue_fn = _adjust_hue
    return jitter


def _adjust_hue(image: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """kornia.enhance.adjust_hue's contract (`factor`: a shift per sample in radians), computed as torchvision's
    RGB -> HSV hue (its formulas, in sextants h in [-1, 5)), the shift, and HSV -> RGB in closed form:
    f(n) = V - C clamp(min(k, 4 - k), 0, 1) with k = (n + h + 6 turns) mod 6, n = 5, 3, 1 for R, G, B, and
    chroma C = V S = max - min. Elementwise maxima instead of torchvision's `aminmax` over the channel dimension
    and no gathers: the step took 47-65 ms instead of 62-74 ms for 32 views at 224 px on one core here
    (BENCHMARKS.md section 6)."""
    turns = torch.as_tensor(factor, dtype=image.dtype, device=image.device) / (2 * math.pi)
    red, green, blue = image.unbind(-3)
    value = torch.maximum(torch.maximum(red, green), blue)
    chroma = value - torch.minimum(torch.minimum(red, green), blue)
    is_red, is_green = value == red, value == green  # torchvision's precedence: red, then green, then blue
    difference = torch.where(is_red, green - blue, torch.where(is_green, blue - red, red - green))
    offset = torch.where(is_red, 0.0, torch.where(is_green, 2.0, 4.0))
    sextant = difference / torch.where(chroma > 0, chroma, 1.0) + offset
    n = torch.tensor([5.0, 3.0, 1.0], dtype=image.dtype, device=image.device).view(3, 1, 1)
    k = (sextant + 6 * turns.view(-1, 1, 1)).unsqueeze(-3).add(n).remainder_(6)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return value.unsqueeze(-3) - chroma.unsqueeze(-3) * ramp


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.float()


def _crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Cut each box (kornia's [B, 4, 2] corners, inclusive pixel coordinates) out of x and resize it to
    size x size (bilinear, antialiased, half-pixel centres as torchvision): float [B, 3, size, size] in [0, 1]."""
    corners = boxes.round().long().tolist()
    resized = torch.empty(len(x), 3, size, size, device=x.device)  # each crop is converted to float as it lands
    for row, image, ((left, top), _, (right, bottom), _) in zip(resized, x, corners, strict=True):
        crop = image[None, :, top : bottom + 1, left : right + 1]
        if crop.dtype == torch.uint8 and crop.device.type != "cpu":  # uint8 resizing is a CPU kernel
            crop = crop.float()
        row.copy_(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0])
    return resized.div_(255) if x.dtype == torch.uint8 else resized


def _resize_centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    scale = size / min(height, width)
    new = (max(size, round(height * scale)), max(size, round(width * scale)))
    if new != (height, width):
        if x.dtype == torch.uint8 and x.device.type != "cpu":  # uint8 resizing is a CPU kernel
            x = _to_unit_float(x)
        x = F.interpolate(x, size=new, mode="bilinear", antialias=True, align_corners=False)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return x[..., top : top + size, left : left + size]


def _randaugment(x: torch.Tensor, num_ops: int, magnitude: int) -> torch.Tensor:
    """torchvision's RandAugment(num_ops, magnitude, 11 bins, fill 128) with a per-sample op and sign."""
    names = list(_RANDAUGMENT_SPACE)
    height, width = x.shape[-2:]
    for _ in range(num_ops):
        op = torch.randint(len(names), (len(x),))
        negate = torch.rand(len(x)) <= 0.5
        for index, name in enumerate(names):
            chosen = op == index
            if chosen.any():
                magnitudes_fn, signed = _RANDAUGMENT_SPACE[name]
                magnitudes = magnitudes_fn(RANDAUGMENT_MAX_MAGNITUDE + 1, height, width)
                value = torch.zeros(int(chosen.sum())) if magnitudes is None else (
                    torch.full((int(chosen.sum()),), float(magnitudes[magnitude])))
                if signed:
                    value = torch.where(negate[chosen], -value, value)
                x = _apply_op(x, chosen, name, value, fill=RANDAUGMENT_FILL / 255)
    return x


def _autoaugment(x: torch.Tensor, policy: str) -> torch.Tensor:
    """torchvision's AutoAugment (CIFAR10 or IMAGENET policy, black fill) with a per-sample sub-policy,
    application draw, magnitude and sign."""
    policies = _autoaugment_policies(policy)
    height, width = x.shape[-2:]
    chosen_policy = torch.randint(len(policies), (len(x),))
    for slot in range(2):
        applied = torch.rand(len(x))
        negate = torch.rand(len(x)) <= 0.5
        groups: dict[tuple[str, float, int | None], list[int]] = {}
        for index, subpolicy in enumerate(policies):
            groups.setdefault(subpolicy[slot], []).append(index)
        for (name, probability, magnitude_id), indices in groups.items():
            chosen = torch.isin(chosen_policy, torch.tensor(indices)) & (applied <= probability)
            if not chosen.any():
                continue
            magnitudes_fn, signed = _AUTOAUGMENT_SPACE[name]
            magnitudes = magnitudes_fn(_AUTOAUGMENT_BINS, height, width)
            count = int(chosen.sum())
            value = torch.zeros(count) if magnitudes is None else torch.full((count,), float(magnitudes[magnitude_id]))
            if signed:
                value = torch.where(negate[chosen], -value, value)
            x = _apply_op(x, chosen, name, value, fill=0.0)
    return x


@functools.cache
def _autoaugment_policies(policy: str) -> list:
    """torchvision's sub-policies, [((name, probability, magnitude bin), (name, probability, magnitude bin))]."""
    return v2.AutoAugment(_AUTOAUGMENT_POLICY[policy])._policies


def _apply_op(
    x: torch.Tensor, chosen: torch.Tensor, name: str, magnitude: torch.Tensor, *, fill: float
) -> torch.Tensor:
    """Apply op `name` of torchvision's AutoAugment/RandAugment tables to the samples `chosen` (a CPU bool
    mask) of x, in place, each with its own `magnitude` (CPU float tensor)."""
    if name == "Identity":
        return x
    index = chosen.nonzero().squeeze(1).to(x.device)
    part = x.index_select(0, index)
    magnitude = magnitude.to(x.device, x.dtype)
    out = _op(part, name, magnitude, fill)
    return x.index_copy_(0, index, out)


def _op(x: torch.Tensor, name: str, m: torch.Tensor, fill: float) -> torch.Tensor:
    n, _, height, width = x.shape
    if name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        if name == "Rotate":  # counter-clockwise about the centre, as torchvision's F.rotate
            centre = torch.tensor([[(width - 1) / 2, (height - 1) / 2]], device=x.device).expand(n, 2)
            matrix = get_rotation_matrix2d(centre, m, torch.ones(n, 2, device=x.device))
        else:
            matrix = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
            matrix[:, 0, 0] = matrix[:, 1, 1] = 1
            if name == "ShearX":  # origin at the top-left corner: output (x, y) reads input (x + m y, y)
                matrix[:, 0, 1] = -m
            elif name == "ShearY":
                matrix[:, 1, 0] = -m
            elif name == "TranslateX":  # whole pixels, as torchvision's int(magnitude)
                matrix[:, 0, 2] = m.trunc()
            else:
                matrix[:, 1, 2] = m.trunc()
        fill_value = torch.full((3,), fill, device=x.device, dtype=x.dtype)
        return warp_affine(x, matrix, (height, width), mode="nearest", padding_mode="fill", fill_value=fill_value)
    factor = (1 + m).view(n, 1, 1, 1)
    if name == "Brightness":
        return (x * factor).clamp(0, 1)
    if name == "Color":
        return _blend(x, kornia.color.rgb_to_grayscale(x), factor)
    if name == "Contrast":
        grey_mean = kornia.color.rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
        return _blend(x, grey_mean, factor)
    if name == "Sharpness":
        return kornia.enhance.sharpness(x, 1 + m).clamp(0, 1)
    if name == "Posterize":
        return kornia.enhance.posterize(x, m.trunc().to(torch.int64))
    if name == "Solarize":  # m: the threshold as a fraction of the maximum value
        return torch.where(x >= m.view(n, 1, 1, 1), 1 - x, x)
    if name == "AutoContrast":
        low = x.amin(dim=(-2, -1), keepdim=True)
        high = x.amax(dim=(-2, -1), keepdim=True)
        span = high - low
        return torch.where(span > 0, (x - low) / span.clamp_min(1e-12), x).clamp(0, 1)
    if name == "Equalize":
        return kornia.enhance.equalize(x)
    if name == "Invert":
        return 1 - x
    raise ValueError(f"unknown augmentation op {name!r}")  # pragma: no cover - tables are fixed


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp(0, 1)
