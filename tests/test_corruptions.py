"""The corruption suite: names, every corruption x severity at 16, 32 and 224 px, seeding, faithfulness to
imagecorruptions, the small-image motion-blur fix, and bad input."""

from __future__ import annotations

import io
import re
import tarfile

import imagecorruptions
import numpy as np
import pytest
from PIL import Image

from study.corruptions import (
    ALL_CORRUPTIONS,
    CORRUPTION_GROUPS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SEVERITIES,
    corrupt,
    corruption_group,
    image_seed,
)

# Corruptions without randomness: the seed cannot change them.
DETERMINISTIC = {
    "defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression", "gaussian_blur",
    "saturate",
}  # fmt: skip


def natural_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth, moderately saturated images with an edge and a little texture: statistics closer to photos
    than uniform noise (on which blurs and saturation changes behave degenerately)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        image = np.zeros((size, size, 3))
        for channel in range(3):
            image[..., channel] = 0.5 + 0.1 * rng.standard_normal()
            for _ in range(3):
                fx, fy, phase = rng.uniform(0.5, 3), rng.uniform(0.5, 3), rng.uniform(0, 2 * np.pi)
                image[..., channel] += 0.12 * np.sin(2 * np.pi * (fx * cols + fy * rows) + phase)
        top, bottom = sorted(rng.integers(0, size, 2))
        image[top:bottom, top:bottom] += rng.uniform(-0.3, 0.3, 3)
        image += 0.03 * rng.standard_normal(image.shape)
        images.append(np.clip(image * 255, 0, 255).astype(np.uint8))
    return np.stack(images)


def mean_damage(images: np.ndarray, name: str, severity: int) -> float:
    return float(np.abs(corrupt(images, name, severity).astype(float) - images).mean())


def test_names_and_groups_match_the_benchmark():
    assert len(CORRUPTIONS) == 15 and len(EXTRA_CORRUPTIONS) == 4
    assert set(EXTRA_CORRUPTIONS) == {"speckle_noise", "gaussian_blur", "spatter", "saturate"}
    assert not set(CORRUPTIONS) & set(EXTRA_CORRUPTIONS)
    assert sorted(n for names in CORRUPTION_GROUPS.values() for n in names) == sorted(CORRUPTIONS)
    assert [len(CORRUPTION_GROUPS[g]) for g in ("noise", "blur", "weather", "digital")] == [3, 4, 4, 4]
    assert set(ALL_CORRUPTIONS) == set(imagecorruptions.get_corruption_names("all"))
    assert corruption_group("frost") == "weather" and corruption_group("spatter") == "extra"


@pytest.mark.parametrize("size, count", [(16, 3), (32, 3), (224, 1)])
def test_every_corruption_and_severity_keeps_shape_dtype_and_is_seeded(size, count):
    images = natural_images(count, size, seed=size)
    before = images.copy()
    for name in ALL_CORRUPTIONS:
        for severity in SEVERITIES:
            first = corrupt(images, name, severity, seed=3)
            assert first.shape == images.shape and first.dtype == np.uint8, (name, severity)
            assert not np.array_equal(first, images), f"{name} severity {severity} left the images unchanged"
            np.testing.assert_array_equal(corrupt(images, name, severity, seed=3), first, err_msg=name)
            if name not in DETERMINISTIC and size < 224:  # one image at 224 px: skip the extra call
                assert not np.array_equal(corrupt(images, name, severity, seed=4), first), (name, severity)
    np.testing.assert_array_equal(images, before)  # the input is never modified


@pytest.mark.parametrize("size", [16, 32])
def test_damage_grows_with_severity(size):
    images = natural_images(6, size, seed=1)
    damage = {name: [mean_damage(images, name, s) for s in SEVERITIES] for name in ALL_CORRUPTIONS}
    for name, by_severity in damage.items():
        assert by_severity[4] > by_severity[0], f"{name}: severity 5 {by_severity[4]:.1f} <= 1 {by_severity[0]:.1f}"
    average = np.mean(list(damage.values()), axis=0)
    assert np.all(np.diff(average) > 0), average


def test_damage_grows_with_severity_on_real_cifar_images(cifar_subset_tar):
    with tarfile.open(cifar_subset_tar) as archive:
        members = [m for m in archive.getmembers() if m.isfile() and "/test/" in m.name and m.name.endswith(".jpg")]
        members = sorted(members, key=lambda m: m.name)[::997][:8]
        images = np.stack(
            [np.asarray(Image.open(io.BytesIO(archive.extractfile(m).read())).convert("RGB")) for m in members]
        )
    assert images.shape[1:] == (32, 32, 3)
    for name in ALL_CORRUPTIONS:
        assert mean_damage(images, name, 5) > mean_damage(images, name, 1), name


def test_matches_imagecorruptions_bit_for_bit_where_the_library_is_valid():
    """At 48 px (no motion-blur truncation) every image equals the library's own function run under that
    image's seed: the batching, seeding and frost cache change nothing."""
    images = natural_images(2, 48, seed=2)
    for name in ALL_CORRUPTIONS:
        function = imagecorruptions.corruption_dict[name]
        for severity in SEVERITIES:
            ours = corrupt(images, name, severity, seed=11)
            for index, image in enumerate(images):
                seed = image_seed(11, name, index)
                np.random.seed(seed)
                kwargs = {"seed": seed} if name in ("impulse_noise", "glass_blur") else {}
                expected = np.uint8(np.asarray(function(Image.fromarray(image), severity, **kwargs)))
                np.testing.assert_array_equal(ours[index], expected, err_msg=f"{name} severity {severity}")


@pytest.mark.parametrize("size", [16, 32])
def test_motion_blur_keeps_a_flat_image_flat_on_small_images(size):
    """The library's kernel loses weight when it is wider than the image (a grey 16 px image darkens from
    128 to 91); the padded version keeps it grey at every severity."""
    grey = np.full((2, size, size, 3), 128, np.uint8)
    for severity in SEVERITIES:
        blurred = corrupt(grey, "motion_blur", severity)
        assert abs(float(blurred.mean()) - 128) <= 1.0, (size, severity, blurred.mean())


def test_chunks_reproduce_the_whole_batch_and_images_are_independent():
    images = natural_images(5, 16, seed=3)
    whole = corrupt(images, "gaussian_noise", 2, seed=5)
    np.testing.assert_array_equal(corrupt(images[2:4], "gaussian_noise", 2, seed=5, start_index=2), whole[2:4])
    # Identical inputs at different positions get different noise.
    twins = np.repeat(images[:1], 2, axis=0)
    noisy = corrupt(twins, "gaussian_noise", 2, seed=5)
    assert not np.array_equal(noisy[0], noisy[1])


def test_callers_numpy_random_state_is_untouched():
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    corrupt(natural_images(2, 16), "frost", 3, seed=9)
    corrupt(natural_images(2, 16), "glass_blur", 3, seed=9)
    np.testing.assert_array_equal(np.random.random(3), expected)


@pytest.mark.parametrize(
    "images, name, severity, seed, message",
    [
        (np.zeros((1, 16, 16, 3), np.uint8), "fog_of_war", 1, 0, "unknown corruption 'fog_of_war'; allowed: gaussian_noise"),
        (np.zeros((1, 16, 16, 3), np.uint8), "fog", 0, 0, "severity 0; allowed: an integer 1-5"),
        (np.zeros((1, 16, 16, 3), np.uint8), "fog", 6, 0, "severity 6"),
        (np.zeros((1, 16, 16, 3), np.uint8), "fog", 2.5, 0, "severity 2.5"),
        (np.zeros((1, 16, 16, 3), np.uint8), "fog", True, 0, "severity True"),
        (np.zeros((1, 16, 16, 3), np.float32), "fog", 1, 0, "dtype float32; allowed: uint8"),
        (np.zeros((16, 16, 3), np.uint8), "fog", 1, 0, "shape (16, 16, 3); allowed: [N, H, W, 3]"),
        (np.zeros((1, 16, 16, 1), np.uint8), "fog", 1, 0, "shape (1, 16, 16, 1)"),
        (np.zeros((1, 4, 16, 3), np.uint8), "fog", 1, 0, "4x16 px; allowed: at least 8"),
        ([[0]], "fog", 1, 0, "numpy uint8 array"),
        (np.zeros((1, 16, 16, 3), np.uint8), "fog", 1, -1, "seed=-1; allowed: an integer >= 0"),
    ],
)
def test_bad_input_names_what_is_allowed(images, name, severity, seed, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        corrupt(images, name, severity, seed=seed)


def test_spatter_without_liquid_leaves_the_image_instead_of_a_nan_image():
    """The library divides 0 by 0 when no liquid passes its threshold (common on small images), giving NaN,
    i.e. a black image after the cast; those images come back unspattered."""
    images = natural_images(40, 8, seed=4)
    ours = corrupt(images, "spatter", 1, seed=0)
    degenerate = []
    for index, image in enumerate(images):
        np.random.seed(image_seed(0, "spatter", index))
        with np.errstate(invalid="ignore"):
            library = np.asarray(imagecorruptions.spatter(Image.fromarray(image), 1))
        if np.isnan(library).any():
            degenerate.append(index)
            assert np.abs(ours[index].astype(int) - image).max() <= 1, index
        else:
            np.testing.assert_array_equal(ours[index], np.uint8(library))
    assert degenerate, "no image hit the library's 0 / 0; the test checks nothing"
