"""Augmentation policies: valid tensors at every resolution the study uses, randomness, reproducibility,
and the paper's definitions of SimAugment / Stacked RandAugment."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from study.augment import (
    AUGMENTATIONS,
    RandomGaussianBlur,
    blur_kernel_size,
    build_eval_transform,
    build_normalize_transform,
    build_train_transform,
    default_autoaugment_policy,
    eval_geometry,
    gaussian_blur,
)
from study.config import AUGMENTATIONS as CONFIG_AUGMENTATIONS

MEAN, STD = (0.45, 0.45, 0.45), (0.25, 0.25, 0.25)


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
    with pytest.raises(ValueError, match="randaugment_m=31"):
        build_train_transform("randaugment", image_size=32, mean=MEAN, std=STD, randaugment_m=31)
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
