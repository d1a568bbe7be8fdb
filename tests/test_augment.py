"""Augmentation policies: valid tensors at every resolution the study uses, randomness, reproducibility,
the authors' random-resized crop and SimCLR views, RandAugment on the paper's TF magnitude scale, and the
paper's definitions of SimAugment / Stacked RandAugment."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from study.augment import (
    AUGMENTATIONS,
    RandomGaussianBlur,
    ToNormalizedTensor,
    blur_kernel_size,
    build_eval_transform,
    build_normalize_transform,
    build_train_transform,
    default_autoaugment_policy,
    eval_geometry,
    gaussian_blur,
)
from study.config import AUGMENTATIONS as CONFIG_AUGMENTATIONS
from study.config import RANDAUGMENT_MAX_MAGNITUDE

MEAN, STD = (0.45, 0.45, 0.45), (0.25, 0.25, 0.25)
RAW = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # output = pixels / 255, to read pixel values back


def natural_image(size: int, seed: int = 0) -> Image.Image:
    """A smooth colour image with edges (not pure noise, so blur and colour ops change it visibly)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y)) for _ in range(3)]
    image = (np.stack(channels, -1) * 0.4 + 0.5) * 255
    image[size // 4 : size // 2, size // 4 : 3 * size // 4] = rng.integers(0, 256, 3)  # a solid block
    return Image.fromarray(image.clip(0, 255).astype(np.uint8))


def digit_image() -> Image.Image:
    """A real 8x8 digit, upsampled to 16x16 as the digits dataset stores it."""
    from study.data import load_dataset

    return load_dataset("digits").train[0][0]


@pytest.fixture(scope="module")
def images() -> dict[int, Image.Image]:
    return {16: digit_image(), 32: natural_image(32), 224: natural_image(224)}


def test_policy_names_match_config():
    assert AUGMENTATIONS == CONFIG_AUGMENTATIONS


@pytest.mark.parametrize("size", [16, 32, 224])
@pytest.mark.parametrize("policy", AUGMENTATIONS)
def test_policy_yields_finite_float_tensor(policy, size, images):
    transform = build_train_transform(
        policy, image_size=size, mean=MEAN, std=STD, autoaugment_policy=default_autoaugment_policy(size)
    )
    torch.manual_seed(0)
    for _ in range(3):
        out = transform(images[size])
        assert type(out) is torch.Tensor
        assert out.dtype == torch.float32 and out.shape == (3, size, size)
        assert torch.isfinite(out).all()
        assert out.std() > 0  # not a blank image


@pytest.mark.parametrize("size", [16, 32, 224])
@pytest.mark.parametrize("policy", AUGMENTATIONS)
def test_policy_is_random_and_reproducible(policy, size, images):
    transform = build_train_transform(policy, image_size=size, mean=MEAN, std=STD)
    torch.manual_seed(123)
    first = [transform(images[size]) for _ in range(4)]
    torch.manual_seed(123)
    second = [transform(images[size]) for _ in range(4)]
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    distinct = {tuple(out.flatten().tolist()) for out in first}
    assert len(distinct) > 1, f"{policy} gave the same output four times"


@pytest.mark.parametrize("policy", AUGMENTATIONS)
@pytest.mark.parametrize(("size", "input_size"), [(32, (48, 40)), (224, (300, 260)), (16, (8, 8))])
def test_policy_resizes_inputs_of_other_sizes(policy, size, input_size):
    image = natural_image(max(input_size)).resize(input_size)
    out = build_train_transform(policy, image_size=size, mean=MEAN, std=STD)(image)
    assert out.shape == (3, size, size)


def test_eval_transform_is_deterministic_and_centre_crops():
    image = natural_image(320).resize((400, 300))
    transform = build_eval_transform(image_size=224, mean=MEAN, std=STD)
    a, b = transform(image), transform(image)
    assert a.shape == (3, 224, 224) and torch.equal(a, b)
    # Large images: shorter side to 256 (224 / 0.875), then the central 224 x 224.
    expected = image.resize((341, 256), Image.BILINEAR).crop((58, 16, 282, 240))
    reference = build_normalize_transform(mean=MEAN, std=STD)(expected)
    assert (a - reference).abs().max() < 0.05  # PIL vs tensor resampling differ by rounding only


def test_eval_transform_small_images_are_only_normalised():
    image = natural_image(32)
    out = build_eval_transform(image_size=32, mean=MEAN, std=STD)(image)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    assert torch.allclose(out, (pixels - 0.45) / 0.25, atol=1e-6)
    assert eval_geometry(32)(image) is image  # no resampling at the stored size


def test_normalisation_uses_mean_and_std():
    mean, std = (0.2, 0.5, 0.8), (0.1, 0.2, 0.4)
    colour = np.array([0.3, 0.5, 0.4])  # (colour - mean) / std = (1, 0, -1)
    image = Image.fromarray(np.full((16, 16, 3), np.round(colour * 255), dtype=np.uint8))
    out = build_eval_transform(image_size=16, mean=mean, std=std)(image)
    assert torch.allclose(out.mean(dim=(1, 2)), torch.tensor([1.0, 0.0, -1.0]), atol=0.03)


def test_unknown_names_are_rejected_with_allowed_values():
    with pytest.raises(ValueError, match="unknown augmentation policy 'mixup'.*crop_flip.*stacked_randaugment"):
        build_train_transform("mixup", image_size=32, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="autoaugment_policy 'svhn'.*cifar \\| imagenet"):
        build_train_transform("autoaugment", image_size=32, mean=MEAN, std=STD, autoaugment_policy="svhn")
    with pytest.raises(ValueError, match="randaugment_m=11.*0..10"):
        build_train_transform("randaugment", image_size=32, mean=MEAN, std=STD, randaugment_m=11)
    with pytest.raises(ValueError, match="image_size=4"):
        build_train_transform("crop_flip", image_size=4, mean=MEAN, std=STD)


def _step_types(transform) -> list[str]:
    names = []
    for step in transform.transforms:
        inner = step.transforms[0] if isinstance(step, v2.RandomApply) else step
        names.append(type(inner).__name__)
    return names


def test_simaugment_order_follows_the_paper():
    steps = _step_types(build_train_transform("simaugment", image_size=224, mean=MEAN, std=STD))
    order = ["RandomResizedCrop", "RandomHorizontalFlip", "RandomRotation", "ColorJitter",
             "RandomPerspective", "RandomGaussianBlur"]  # fmt: skip
    assert [s for s in steps if s in order] == order
    assert "RandAugment" not in steps


def test_stacked_randaugment_is_simaugment_with_randaugment_before_colour_jitter():
    stacked = build_train_transform(
        "stacked_randaugment", image_size=32, mean=MEAN, std=STD, randaugment_n=3, randaugment_m=5
    )
    steps = _step_types(stacked)
    simaugment = _step_types(build_train_transform("simaugment", image_size=32, mean=MEAN, std=STD))
    assert [s for s in steps if s != "RandAugment"] == simaugment
    assert steps.index("RandAugment") == steps.index("ColorJitter") - 1
    randaugment = next(t for t in stacked.transforms if isinstance(t, v2.RandAugment))
    assert (randaugment.num_ops, randaugment.magnitude) == (3, 5)
    assert randaugment.num_magnitude_bins == RANDAUGMENT_MAX_MAGNITUDE + 1  # the TF scale, as randaugment


@pytest.mark.parametrize(("policy", "size", "expected"), [("cifar", 32, "CIFAR10"), ("imagenet", 224, "IMAGENET")])
def test_autoaugment_policy_is_passed_through(policy, size, expected):
    transform = build_train_transform("autoaugment", image_size=size, mean=MEAN, std=STD, autoaugment_policy=policy)
    autoaugment = next(t for t in transform.transforms if isinstance(t, v2.AutoAugment))
    assert autoaugment.policy.name == expected
    assert default_autoaugment_policy(size) == policy


def test_blur_kernel_scales_with_image_size():
    assert [blur_kernel_size(s) for s in (16, 32, 64, 96, 224)] == [3, 3, 7, 9, 23]


@pytest.mark.parametrize(("size", "kernel"), [(16, 3), (224, 23)])
def test_separable_blur_matches_torchvision(size, kernel):
    image = np.random.default_rng(size).uniform(0, 255, (size, size, 3)).astype(np.float32)
    ours = gaussian_blur(image, kernel, 1.7)
    as_tensor = torch.from_numpy(image).permute(2, 0, 1)
    reference = v2.functional.gaussian_blur(as_tensor, [kernel, kernel], [1.7, 1.7]).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-3)
    assert np.abs(ours - image).mean() > 10  # it did blur the noise


def test_random_blur_applies_with_its_probability():
    image = natural_image(32)
    blur = RandomGaussianBlur(3, sigma=(1.0, 2.0), p=0.5)
    torch.manual_seed(0)
    changed = [not np.array_equal(np.asarray(blur(image)), np.asarray(image)) for _ in range(200)]
    assert 70 < sum(changed) < 130


def test_normalize_transform_rejects_bad_statistics():
    with pytest.raises(ValueError, match="std"):
        build_normalize_transform(mean=MEAN, std=(0.2, 0.0, 0.2))


# ------------------------------------------------------------------- the authors' crop, SimCLR views, RandAugment
def coordinate_image() -> Image.Image:
    """32 x 32: red = 8x + 4, green = 8y + 4 (the source coordinates), blue = 255 (zero padding shows)."""
    y, x = np.mgrid[0:32, 0:32]
    return Image.fromarray(np.stack([8 * x + 4, 8 * y + 4, np.full_like(x, 255)], -1).astype(np.uint8))


def _geometry(transform: v2.Compose) -> v2.Compose:
    """The steps of a policy before its first photometric one (AutoAugment, RandAugment, the tensor)."""
    stops = (v2.AutoAugment, v2.RandAugment, ToNormalizedTensor)
    steps = transform.transforms
    return v2.Compose(steps[: next(i for i, step in enumerate(steps) if isinstance(step, stops))])


@pytest.mark.parametrize("policy", ["crop_flip", "autoaugment", "randaugment"])
def test_small_images_get_a_random_resized_crop_without_padding(policy):
    geometry = _geometry(build_train_transform(policy, image_size=32, **RAW))
    image = coordinate_image()
    torch.manual_seed(0)
    areas = []
    for _ in range(150):
        out = np.asarray(geometry(image)).astype(int)
        assert out.shape == (32, 32, 3)
        assert (out[..., 2] == 255).all(), "zero padding"
        # Bilinear resampling keeps the coordinates linear: their span is the crop's share of each side.
        areas.append(np.ptp(out[..., 0]) / 248 * np.ptp(out[..., 1]) / 248)
    areas = np.array(areas)
    # Area fraction ~ U(0.2, 1) (configs.sh CIFAR10_FLAGS --crop_area_range=0.2,1.0); pad-and-crop keeps >= 0.76.
    assert areas.min() < 0.3 and areas.max() > 0.85 and 0.45 < areas.mean() < 0.7


@pytest.mark.parametrize("policy", [p for p in AUGMENTATIONS if p != "pad_crop_flip"])
@pytest.mark.parametrize(("size", "area"), [(16, (0.2, 1.0)), (32, (0.2, 1.0)), (64, (0.08, 1.0)), (224, (0.08, 1.0))])
def test_every_policy_starts_with_the_authors_crop_and_flip(policy, size, area):
    steps = build_train_transform(policy, image_size=size, mean=MEAN, std=STD).transforms
    crop, flip = steps[:2]
    assert isinstance(crop, v2.RandomResizedCrop) and isinstance(flip, v2.RandomHorizontalFlip)
    assert crop.size == (size, size) and tuple(crop.scale) == area and tuple(crop.ratio) == (0.75, 1.33)
    assert not any(isinstance(step, v2.RandomCrop) for step in steps)


def test_pad_crop_flip_zero_pads_and_crops_without_resampling():
    geometry = _geometry(build_train_transform("pad_crop_flip", image_size=32, **RAW))
    image = coordinate_image()
    torch.manual_seed(0)
    padded = 0
    for _ in range(60):
        out = np.asarray(geometry(image)).astype(int)
        pad = (out == 0).all(-1)
        assert (pad | (out[..., 2] == 255)).all()  # every pixel is zero padding or the image
        assert (out[~pad][:, :2] % 8 == 4).all()  # image pixels are source pixels: shifted, not resampled
        assert pad.all(1).sum() <= 4 and pad.all(0).sum() <= 4  # at most S/8 = 4 rows / columns of padding
        padded += pad.any()
    assert padded > 40  # only a crop at offset (4, 4) shows no padding


def test_simclr_augment_jitters_and_greys_at_the_authors_rates():
    transform = build_train_transform("simclr_augment", image_size=32, **RAW)
    colour = (200, 60, 30)
    image = Image.new("RGB", (32, 32), colour)  # crops and flips leave a plain colour as it is
    torch.manual_seed(0)
    grey = jittered = 0
    n = 400
    for _ in range(n):
        pixels = np.unique(np.round(transform(image).numpy() * 255).astype(int).reshape(3, -1).T, axis=0)
        assert len(pixels) == 1  # still a plain colour: no blur, warp or rotation at 32 px
        if len(set(pixels[0])) == 1:
            grey += 1
        elif tuple(pixels[0]) != colour:
            jittered += 1
    assert 0.14 < grey / n < 0.26  # RandomGrayscale(p=0.2)
    assert 0.72 < jittered / (n - grey) < 0.88  # RandomApply(ColorJitter, p=0.8)


def test_simclr_augment_blurs_only_large_images():
    def steps(size):
        return build_train_transform("simclr_augment", image_size=size, mean=MEAN, std=STD).transforms

    assert _step_types(build_train_transform("simclr_augment", image_size=32, mean=MEAN, std=STD)) == [
        "RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGrayscale", "ToNormalizedTensor"]
    jitter = steps(32)[2]
    assert jitter.p == 0.8 and steps(32)[3].p == 0.2
    assert (jitter.transforms[0].brightness, jitter.transforms[0].hue) == ((0.6, 1.4), (-0.1, 0.1))
    for size in (16, 32):
        assert not any(isinstance(step, RandomGaussianBlur) for step in steps(size))
    for size, kernel in ((64, 7), (224, 23)):
        blur = [step for step in steps(size) if isinstance(step, RandomGaussianBlur)]
        assert len(blur) == 1 and (blur[0].kernel_size, blur[0].sigma, blur[0].p) == (kernel, (0.1, 2.0), 0.5)


@pytest.mark.parametrize("policy", ["randaugment", "stacked_randaugment"])
def test_randaugment_magnitude_follows_the_tf_formula(policy):
    """At M=9, TF's RandAugment shears by +-9/10 * 0.3 = 0.27 and rotates by +-9/10 * 30 = 27 degrees,
    filling with grey 128. References from PIL alone: AFFINE maps output (x, y) to input (x + 0.27 y, y),
    TF's shear_x matrix [1, level, 0, 0, 1, 0]."""
    transform = build_train_transform(policy, image_size=32, mean=MEAN, std=STD, randaugment_n=1, randaugment_m=9)
    randaugment = next(step for step in transform.transforms if isinstance(step, v2.RandAugment))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    grey, nearest = (128, 128, 128), Image.Resampling.NEAREST

    def affine(*matrix):
        return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=nearest, fillcolor=grey)

    references = {
        "ShearX": [affine(1, s, 0, 0, 1, 0) for s in (0.27, -0.27)],
        "ShearY": [affine(1, 0, 0, s, 1, 0) for s in (0.27, -0.27)],
        "Rotate": [image.rotate(a, resample=nearest, fillcolor=grey) for a in (27, -27)],
        "old scale": [affine(1, s, 0, 0, 1, 0) for s in (0.09, -0.09)] + [image.rotate(a, resample=nearest) for a in (9, -9)],
    }
    torch.manual_seed(0)
    # One op per call, each op 1/14 of the time: 300 calls see every op (and both signs, mostly).
    seen = {np.asarray(randaugment(image)).tobytes() for _ in range(300)}
    found = {op for op, images in references.items() if any(np.asarray(ref).tobytes() in seen for ref in images)}
    assert found == {"ShearX", "ShearY", "Rotate"}
