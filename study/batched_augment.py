"""Every policy of `study.augment` on whole batches, on the training device (`data_pipeline: device`).

At the paper's scale the per-image CPU pipeline (`study.augment.build_train_transform`), not the GPU,
sets a trial's speed (issue 14). `BatchAugment` runs the same policies on a batch of decoded uint8 (or
float in [0, 1]) images where the model runs, with per-sample random parameters, and returns the
normalised float batch the model sees.

What it is built from, and why: the crop's box sampler and the grey conversion are kornia's (a maintained
library of batched augmentations). The ops themselves are short compositions of torch ops (a gather,
`grid_sample`, a depthwise convolution, a histogram, in-place blends) written to reproduce what the per-image
path's PIL / torchvision ops do, pixel for pixel where PIL's conventions allow. kornia's versions were tried
first and replaced op by op (2026-12-08, measured on one core at 224 px): its `warp_affine` with a fill
samples the image and a mask (10x slower than one gather) and uses other pixel centres than PIL; its colour
jitter draws one order of the four steps per batch and allocates a full-size tensor per clamp; its
`equalize`, `sharpness` and `posterize` use full-size masks and `torch.where`, which run unvectorised on the
CPU, and its equalize histogram differed from PIL's by a level. With kornia's ops the batched path was
slower per core than the per-image path for five of the seven policies (BENCHMARKS.md section 6); now
every policy is faster. tests/test_batched_augment.py compares each op with torchvision's on a PIL image.

Every constant comes from `study.augment` (crop area and aspect, jitter strength and probabilities,
blur sigma / kernel / probability, RandAugment's 0..10 magnitude scale and grey fill, the AutoAugment
policy per size), and AutoAugment's / RandAugment's op tables are torchvision's own (the tables the
per-image path uses), so both paths sample the same op mix and magnitudes. All randomness comes from
torch's global generator (kornia's crop sampler draws there too), so `torch.manual_seed` makes a batch
reproducible; every sample, and so every view of one image, gets its own parameters.

Where the batched path differs from the per-image path (listed in FIDELITY.md):
- Arithmetic: the per-image path works on uint8 PIL images and rounds after every step; this path stays
  in float [0, 1] until normalisation (differences of about 1/255 per step; ops on levels, Posterize and
  Equalize, take the truncated level floor(255 x) as torchvision's float-to-uint8 conversion does).
- Random-resized crop: the boxes come from kornia's `RandomResizedCrop` sampler, which samples as
  torchvision does (area uniform, log-aspect uniform, 10 tries, the same fallback); each box is cut from
  the uint8 image and resized with torch's antialiased bilinear resize (uint8 on the CPU, as torchvision
  resizes uint8 tensors; float on a GPU), close to PIL's resize of the per-image path but not bit-equal.
  (kornia's own crop converts the full-size batch to float first and resizes without antialiasing: 2-3x
  slower on the CPU at 224 px.)
- Colour jitter, Color, Contrast and Sharpness blend with an unrounded grey image / grey mean, where PIL
  rounds them to a level (outputs up to 1.5 levels apart).
- Rotation and perspective (SimAugment): PIL's bilinear transform, but the inside/outside decision for a
  point on the image's edge is made in float32 (PIL: float64), so a few edge pixels differ.
- Images of different sizes (an image folder) arrive as a list: the crop runs per image on the full
  decoded image (same statistics), everything after it on the batch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import kornia.augmentation as K
import kornia.color
import torch
import torch.nn.functional as F
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
_SHARPNESS_KERNEL = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13  # PIL's SMOOTH filter, as kornia's


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
        jitter = _RandomApply(functools.partial(_colour_jitter, brightness=0.8 * s, contrast=0.8 * s,
                                                saturation=0.8 * s, hue=0.2 * s), COLOUR_JITTER_P)
        grey = _RandomApply(_grayscale, GRAYSCALE_P)
        blur = _RandomApply(functools.partial(_random_gaussian_blur, kernel_size=blur_kernel_size(image_size),
                                              sigma=BLUR_SIGMA), BLUR_P)

        # The steps after crop + flip, in the per-image path's order.
        steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
        if policy == "autoaugment":
            steps.append(functools.partial(_autoaugment, policy=autoaugment_policy))
        elif policy == "randaugment":
            steps.append(functools.partial(_randaugment, num_ops=randaugment_n, magnitude=randaugment_m))
        elif policy == "simclr_augment":
            steps += [jitter, grey] + ([] if is_small(image_size) else [blur])
        elif policy in ("simaugment", "stacked_randaugment"):
            steps.append(_RandomApply(functools.partial(_random_rotation, degrees=15.0), 0.5))
            if policy == "stacked_randaugment":
                steps.append(functools.partial(_randaugment, num_ops=randaugment_n, magnitude=randaugment_m))
            steps += [jitter, grey, _RandomApply(functools.partial(_random_perspective, distortion=0.2), 0.5), blur]
        self.steps = steps

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


@dataclass(frozen=True)
class _RandomApply:
    """torchvision's RandomApply per sample: `transform` (a function of a batch that draws its own parameters
    per sample) on each sample with probability p; in place."""

    transform: Callable[[torch.Tensor], torch.Tensor]
    p: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        chosen = (torch.rand(len(x)) < self.p).nonzero().squeeze(1)
        if not len(chosen):
            return x
        chosen = chosen.to(x.device)
        return x.index_copy_(0, chosen, self.transform(x.index_select(0, chosen)))


def _colour_jitter(x: torch.Tensor, *, brightness: float, contrast: float, saturation: float,
                   hue: float) -> torch.Tensor:
    """torchvision's ColorJitter(brightness, contrast, saturation, hue) on each sample: the factors (brightness,
    contrast, saturation uniform in [max(0, 1 - v), 1 + v], hue uniform in [-hue, hue] turns) and the order of the
    four steps drawn per sample, as torchvision draws them per image; torchvision's formulas, each clamped to
    [0, 1], PIL's luma weights for the grey image and mean. (kornia's ColorJitter draws one order per batch, and
    on the CPU spent most of its time allocating full-size tensors for its clamps.)

    The samples are sorted by their order, so that at every position of the order the samples that take one
    step form contiguous runs, each stepped in place as a slice: no gathers per step."""
    ranges = [(max(0.0, 1 - v), 1 + v) for v in (brightness, contrast, saturation)] + [(-hue, hue)]
    factors = torch.stack([torch.empty(len(x)).uniform_(low, high) for low, high in ranges])
    order = torch.rand(len(x), 4).argsort(1)  # a random order of the four steps per sample
    code = order @ torch.tensor([64, 16, 4, 1])  # the order as a base-4 number: sorting groups its prefixes
    by_order = code.argsort()
    steps: list[list[int]] = order[by_order].tolist()
    code, factors = code[by_order], factors[:, by_order].to(x.device, x.dtype)
    by_order = by_order.to(x.device)
    part = x.index_select(0, by_order)
    for position in range(4):
        start = 0
        for count in torch.unique_consecutive(code // 4 ** (3 - position), return_counts=True)[1].tolist():
            step = steps[start][position]
            _jitter_step_(part[start : start + count], step, factors[step, start : start + count])
            start += count
    return x.index_copy_(0, by_order, part)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """PIL's convert("L") kept as three equal channels (torchvision's Grayscale(3))."""
    return kornia.color.rgb_to_grayscale(x).expand_as(x)


def _jitter_step_(x: torch.Tensor, step: int, factor: torch.Tensor) -> None:
    """Step `step` of torchvision's ColorJitter (0 brightness, 1 contrast, 2 saturation, 3 hue) on x, in place."""
    if step == 3:
        x.copy_(_adjust_hue(x, factor * (2 * math.pi)))
        return
    factor = factor.view(-1, 1, 1, 1)
    if step == 0:
        x.mul_(factor).clamp_(0, 1)
        return
    grey = kornia.color.rgb_to_grayscale(x)  # PIL's L: 0.299 R + 0.587 G + 0.114 B
    if step == 1:
        grey = grey.mean(dim=(-3, -2, -1), keepdim=True)
    x.mul_(factor).add_(grey.mul_(1 - factor)).clamp_(0, 1)


def _adjust_hue(image: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """kornia.enhance.adjust_hue's contract (`factor`: a shift per sample in radians), computed as torchvision's
    RGB -> HSV hue (its sextants h in [-1, 5): red maximum (g - b) / C, green 2 + (b - r) / C, blue 4 + (r - g) / C,
    red first on ties), the shift, and HSV -> RGB in closed form: f(n) = V - C clamp(2 - |k - 2|, 0, 1) with
    k = (n + h + 6 turns) mod 6, n = 5, 3, 1 for R, G, B, and chroma C = max - min.

    Arithmetic only, mostly in place: on the CPU `torch.where` and bool masks run unvectorised (25x slower than a
    subtraction here) and every new full-size tensor costs page faults, so the channel masks are signs and the
    sextant is one weighted sum (4.6-5.7 ms instead of 13.8-15.6 ms for 8 images at 224 px on one core)."""
    shift = torch.as_tensor(factor, dtype=image.dtype, device=image.device).view(-1, 1, 1) * (3 / math.pi)
    red, green, blue = image.unbind(-3)
    value = torch.maximum(torch.maximum(red, green), blue)
    chroma = value - torch.minimum(torch.minimum(red, green), blue)
    not_red = (value - red).sign_()  # 1 where red is not the maximum, else 0
    blue_max = (value - green).sign_().mul_(not_red)  # 1 where neither red nor green is
    # h C = (g - b) + [red not max] (2b - r - g) + [blue max] (2r - g - b); offset 2 [red not max] + 2 [blue max]
    numerator = (green - blue).addcmul_(not_red, 2 * blue - red - green).addcmul_(blue_max, 2 * red - green - blue)
    sextant = numerator.div_(chroma.clamp_min(1e-12)).add_(not_red.add_(blue_max), alpha=2).add_(shift)
    out = torch.empty_like(image)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = sextant + n
        k.sub_(torch.floor(k / 6), alpha=6)  # mod 6
        ramp = k.sub_(2).abs_().neg_().add_(2).clamp_(0, 1)
        torch.addcmul(value, chroma, ramp, value=-1, out=out.select(-3, channel))
    return out


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


def _randaugment(x: torch.Tensor, *, num_ops: int, magnitude: int) -> torch.Tensor:
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


def _autoaugment(x: torch.Tensor, *, policy: str) -> torch.Tensor:
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
    if name == "Identity" or (name == "Posterize" and bool((magnitude >= 8).all())):  # 8 bits keep every level
        return x
    index = chosen.nonzero().squeeze(1).to(x.device)
    part = x.index_select(0, index)
    magnitude = magnitude.to(x.device, x.dtype)
    out = _op(part, name, magnitude, fill)
    return x.index_copy_(0, index, out)


def _op(x: torch.Tensor, name: str, m: torch.Tensor, fill: float) -> torch.Tensor:
    n, _, height, width = x.shape
    if name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        return _affine_nearest(x, _inverse_affine(name, m, height, width), fill)
    factor = (1 + m).view(n, 1, 1, 1)
    if name == "Brightness":
        return (x * factor).clamp(0, 1)
    if name == "Color":
        return _blend(x, kornia.color.rgb_to_grayscale(x), factor)
    if name == "Contrast":
        grey_mean = kornia.color.rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
        return _blend(x, grey_mean, factor)
    if name == "Sharpness":
        return _sharpness(x, 1 + m)
    if name == "Posterize":  # keep the top m bits of the level (torchvision's bit mask; the level truncated)
        quantum = torch.exp2(8 - m.trunc()).view(n, 1, 1, 1)
        return x.mul(255).floor_().div_(quantum).floor_().mul_(quantum / 255)
    if name == "Solarize":  # invert the values >= m: |x - [x >= m]|, the step as ceil(m - x) (no `where`)
        below = (m.view(n, 1, 1, 1) - x).ceil_().clamp_(0, 1)
        return below.add_(x).sub_(1).abs_()
    if name == "AutoContrast":
        low = x.amin(dim=(-2, -1), keepdim=True)
        span = x.amax(dim=(-2, -1), keepdim=True) - low
        flat = span == 0  # a flat channel stays as it is (small tensors: no full-size `where`, slow on the CPU)
        return (x - low.masked_fill(flat, 0)).div_(span.masked_fill(flat, 1)).clamp_(0, 1)
    if name == "Equalize":
        return _equalize(x)
    if name == "Invert":
        return 1 - x
    raise ValueError(f"unknown augmentation op {name!r}")  # pragma: no cover - tables are fixed


def _inverse_affine(name: str, m: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[n, 2, 3]: the input point each output point reads, in PIL's pixel coordinates (pixel i spans [i, i + 1)),
    for torchvision's geometric RandAugment / AutoAugment ops on PIL images: F.affine's inverse matrix with the
    centre torchvision passes (shears about (0, 0), translations by whole pixels) and PIL's Image.rotate (about
    (W/2, H/2), counter-clockwise by m degrees)."""
    matrix = torch.zeros(len(m), 2, 3, dtype=m.dtype, device=m.device)
    matrix[:, 0, 0] = matrix[:, 1, 1] = 1
    if name == "ShearX":  # reads (x + m y, y)
        matrix[:, 0, 1] = m
    elif name == "ShearY":
        matrix[:, 1, 0] = m
    elif name == "TranslateX":  # torchvision's int(magnitude): reads (x - t, y)
        matrix[:, 0, 2] = -m.trunc()
    elif name == "TranslateY":
        matrix[:, 1, 2] = -m.trunc()
    else:  # Rotate, as PIL's Image.rotate builds it
        cos, sin = torch.deg2rad(m).cos(), torch.deg2rad(-m).sin()
        cx, cy = width / 2, height / 2
        matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 0, 2] = cos, sin, cx - cos * cx - sin * cy
        matrix[:, 1, 0], matrix[:, 1, 1], matrix[:, 1, 2] = -sin, cos, cy + sin * cx - cos * cy
    return matrix


def _source_points(matrix: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_in, y_in), each [n, H, W]: the input point (PIL's pixel coordinates) that output pixel (x, y) reads, its
    centre (x + 1/2, y + 1/2) mapped by `matrix`: [n, 2, 3] affine or [n, 3, 3] projective, PIL's AFFINE and
    PERSPECTIVE data (Geometry.c's affine_transform / perspective_transform)."""
    xs = torch.arange(width, device=matrix.device, dtype=matrix.dtype).add_(0.5)
    ys = torch.arange(height, device=matrix.device, dtype=matrix.dtype).add_(0.5).view(-1, 1)

    def apply(row: torch.Tensor) -> torch.Tensor:  # [n, 3] -> [n, H, W]
        return row[:, 0, None, None] * xs + (row[:, 1, None, None] * ys + row[:, 2, None, None])

    x_in, y_in = apply(matrix[:, 0]), apply(matrix[:, 1])
    if matrix.shape[1] == 3:
        denominator = apply(matrix[:, 2])
        x_in.div_(denominator)
        y_in.div_(denominator)
    return x_in, y_in


def _affine_nearest(x: torch.Tensor, matrix: torch.Tensor, fill: float) -> torch.Tensor:
    """PIL's nearest-neighbour affine transform, per sample: output pixel (x, y) takes the input pixel that
    contains matrix @ (x + 1/2, y + 1/2, 1), or `fill` outside the image. One gather from the image padded with
    a one-pixel border of fill, onto which every outside point is clamped: no masks, no sampling grid (about
    10x faster on the CPU than kornia's `warp_affine` with a fill, which samples the image and a mask)."""
    n, channels, height, width = x.shape
    x_in, y_in = _source_points(matrix.to(x), height, width)
    column = x_in.floor_().clamp_(-1, width).add_(1)
    index = y_in.floor_().clamp_(-1, height).add_(1).mul_(width + 2).add_(column).long()
    padded = F.pad(x, (1, 1, 1, 1), value=fill).flatten(2)
    return padded.gather(2, index.view(n, 1, -1).expand(n, channels, -1)).view(n, channels, height, width)


def _warp_bilinear(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """PIL's bilinear transform with a black fill, per sample: the input is sampled at the point minus half a
    pixel with edge pixels repeated (grid_sample, border padding, align_corners=False), and an output pixel whose
    point lies outside the input is black."""
    _, _, height, width = x.shape
    x_in, y_in = _source_points(matrix.to(x), height, width)
    grid = torch.stack((x_in * (2 / width) - 1, y_in * (2 / height) - 1), -1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    outside = x_in.div_(width).floor_().abs_().add_(y_in.div_(height).floor_().abs_())  # 0 inside
    return out.mul_(outside.clamp_(max=1).neg_().add_(1).unsqueeze(1))


def _random_gaussian_blur(x: torch.Tensor, *, kernel_size: int, sigma: tuple[float, float]) -> torch.Tensor:
    """`study.augment.RandomGaussianBlur`'s blur on each sample, its sigma uniform in `sigma`."""
    return _gaussian_blur(x, kernel_size, torch.empty(len(x)).uniform_(*sigma).to(x.device, x.dtype))


def _gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each sample of x [n, C, H, W] with its own sigma [n]: taps exp(-d^2 / 2 sigma^2), normalised, over
    d = -r..r (`study.augment.gaussian_blur`'s kernel), reflect padding, rows then columns. One depthwise
    convolution per axis over every sample's channels, laid out channels-last: oneDNN's fast layout for it (4
    images at 224 px: 2.5 ms, kornia's gaussian_blur2d 8.4 ms, on one core here)."""
    n, channels, height, width = x.shape
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    taps = torch.exp(-(offsets**2) / (2 * sigma.view(-1, 1) ** 2))
    taps = (taps / taps.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # [n C, k]
    padded = F.pad(x, (radius,) * 4, mode="reflect").reshape(1, n * channels, height + 2 * radius, width + 2 * radius)
    y = F.conv2d(padded.contiguous(memory_format=torch.channels_last), taps.view(-1, 1, 1, kernel_size),
                 groups=n * channels)
    y = F.conv2d(y, taps.view(-1, 1, kernel_size, 1), groups=n * channels)
    return y.contiguous().view(n, channels, height, width)


def _random_rotation(x: torch.Tensor, *, degrees: float) -> torch.Tensor:
    """torchvision's RandomRotation(degrees, BILINEAR) on PIL images, per sample: an angle uniform in
    [-degrees, degrees], PIL's rotate about the centre with a black fill."""
    angles = torch.empty(len(x)).uniform_(-degrees, degrees)
    return _warp_bilinear(x, _inverse_affine("Rotate", angles, *x.shape[-2:]))


def _random_perspective(x: torch.Tensor, *, distortion: float) -> torch.Tensor:
    """torchvision's RandomPerspective(distortion) on PIL images (bilinear, black fill), per sample."""
    return _warp_bilinear(x, _perspective_matrix(len(x), *x.shape[-2:], distortion=distortion))


def _perspective_matrix(n: int, height: int, width: int, *, distortion: float) -> torch.Tensor:
    """torchvision's RandomPerspective(distortion) on PIL images, per sample: each corner moves inwards by a
    whole number of pixels drawn uniformly below distortion x half the side (+1), and the PIL coefficients map
    each moved corner back onto the original one (torchvision's `_get_perspective_coeffs`, solved in float64 and
    rounded to float32 as there): [n, 3, 3]."""
    bound_x, bound_y = int(distortion * (width // 2)) + 1, int(distortion * (height // 2)) + 1

    def draw(low: int, high: int) -> torch.Tensor:
        return torch.randint(low, high, (n,))

    moved = torch.stack([  # top left, top right, bottom right, bottom left: [n, 4, 2]
        torch.stack([draw(0, bound_x), draw(0, bound_y)], -1),
        torch.stack([draw(width - bound_x, width), draw(0, bound_y)], -1),
        torch.stack([draw(width - bound_x, width), draw(height - bound_y, height)], -1),
        torch.stack([draw(0, bound_x), draw(height - bound_y, height)], -1),
    ], 1).double()
    corners = torch.tensor([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=torch.float64)
    system = torch.zeros(n, 8, 8, dtype=torch.float64)
    for i in range(4):
        (x, y), (u, v) = moved[:, i].unbind(-1), corners[i]
        system[:, 2 * i, :3] = system[:, 2 * i + 1, 3:6] = torch.stack([x, y, torch.ones(n, dtype=torch.float64)], -1)
        system[:, 2 * i, 6:] = torch.stack([-u * x, -u * y], -1)
        system[:, 2 * i + 1, 6:] = torch.stack([-v * x, -v * y], -1)
    coefficients = torch.linalg.solve(system, corners.flatten().expand(n, 8)).float()
    return torch.cat([coefficients, torch.ones(n, 1)], 1).view(n, 3, 3)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize (torchvision's equalize), per image and channel, on the truncated levels
    floor(255 x): with H the level histogram, step = (pixels - H[top level]) // 255 and the lookup table
    level -> (step // 2 + pixels below the level) // step, or the identity when step is 0."""
    n, channels = x.shape[:2]
    levels = x.mul(255).long().view(n * channels, -1)
    histogram = torch.zeros(n * channels, 256, dtype=torch.long, device=x.device)
    histogram.scatter_add_(1, levels, torch.ones_like(levels))
    top = histogram.gather(1, levels.amax(1, keepdim=True))
    step = (levels.shape[1] - top) // 255
    below = histogram.cumsum(1) - histogram
    lut = (below + step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(max=255)
    lut = torch.where(step == 0, torch.arange(256, device=x.device), lut)  # [n C, 256]: a small `where`
    return lut.gather(1, levels).view_as(x).to(x.dtype).div_(255)


def _sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """kornia.enhance.sharpness (PIL's ImageEnhance.Sharpness: blend with the 3x3-smoothed image, whose one-pixel
    border keeps the input), equal within float rounding and several times faster on the CPU: the depthwise
    convolution runs channels-last (oneDNN's fast layout for it) and the border is a copy, not kornia's
    full-size mask and `where` (1.7 ms instead of 24.9 ms for 5 images at 224 px on one core)."""
    kernel = _SHARPNESS_KERNEL.to(x).expand(x.shape[-3], 1, 3, 3)
    smooth = F.conv2d(x.contiguous(memory_format=torch.channels_last), kernel, groups=x.shape[-3]).clamp_(0, 1)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return degenerate.lerp_(x, factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp(0, 1)
