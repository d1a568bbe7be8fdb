"""The batched (device) augmentation path against the per-image path: the same crop area / aspect / flip
statistics (read back from images whose pixels encode their coordinates), the same jitter / grayscale
rates, the same sharpness distribution on real images, the same RandAugment / AutoAugment op mix and
magnitudes, each op and warp against torchvision's on a PIL image, independent views, seeded repeats, bad values rejected, tiny end-to-end training runs with
data_pipeline="device", and the same under Ray Train with two workers and inside a one-worker Tune trial."""

from __future__ import annotations

import json
import math
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import chi2_contingency, ks_2samp

from study.augment import RANDAUGMENT_FILL, build_train_transform
from study.batched_augment import BatchAugment, build_batch_augment, resolve_data_pipeline
from study.config import AUGMENTATIONS, RANDAUGMENT_MAX_MAGNITUDE, Config, ConfigError
from study.data import DecodedDataset, collate_decoded

RAW = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # output = pixels / 255
N = 400  # samples per path for the distribution tests


def coordinate_image(width: int = 200, height: int = 150) -> np.ndarray:
    """R = x, G = y, B = 255: every output pixel tells where in the source it came from."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x, y, np.full_like(x, 255)], -1).astype(np.uint8)


def crop_statistics(outputs: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From outputs [N, 3, S, S] in pixel units: (area fraction, log aspect ratio, flipped) of each crop."""
    size = outputs.shape[-1]
    middle = size // 2
    xs = outputs[:, 0, middle, :]
    ys = outputs[:, 1, :, middle]
    w = np.abs(xs[:, -1] - xs[:, 0]) * size / (size - 1)
    h = np.abs(ys[:, -1] - ys[:, 0]) * size / (size - 1)
    flipped = xs[:, -1] < xs[:, 0]
    return w * h / (width * height), np.log(w / h), flipped


def per_image(policy: str, images: list[Image.Image], repeats: int, *, size: int, **kwargs) -> np.ndarray:
    transform = build_train_transform(policy, image_size=size, **RAW, **kwargs)
    return np.stack([transform(image).numpy() for image in images for _ in range(repeats)]) * 255


def batched(policy: str, images: np.ndarray, repeats: int, *, size: int, **kwargs) -> np.ndarray:
    augment = build_batch_augment(policy, image_size=size, **RAW, **kwargs)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).repeat_interleave(repeats, 0)
    return augment(batch).numpy() * 255


def test_crop_area_aspect_and_flip_match_the_per_image_path():
    source = coordinate_image()
    torch.manual_seed(0)
    reference = crop_statistics(per_image("crop_flip", [Image.fromarray(source)], N, size=32), 200, 150)
    ours = crop_statistics(batched("crop_flip", source[None], N, size=32), 200, 150)
    for name, theirs, mine in zip(("area", "log aspect"), reference[:2], ours[:2]):
        assert ks_2samp(theirs, mine).pvalue > 1e-3, name
    # SMALL_CROP_AREA (0.2, 1); the read-back is exact to about a pixel of the source per side
    assert 0.18 < ours[0].min() and ours[0].max() < 1.06
    assert np.log(0.72) < ours[1].min() and ours[1].max() < np.log(1.38)  # CROP_ASPECT_RATIO (0.75, 1.33)
    for flipped in (reference[2], ours[2]):
        assert abs(flipped.mean() - 0.5) < 0.1  # p = 0.5; 4 standard errors at N = 400


def test_large_images_use_the_large_crop_area():
    source = coordinate_image()
    torch.manual_seed(1)
    area, _, _ = crop_statistics(batched("crop_flip", source[None], N, size=64), 200, 150)
    assert area.min() < 0.2 and area.min() > 0.06  # LARGE_CROP_AREA (0.08, 1)


def test_views_of_one_image_are_independent():
    source = torch.from_numpy(coordinate_image()).permute(2, 0, 1)[None].expand(N, -1, -1, -1)
    torch.manual_seed(2)
    views = build_batch_augment("crop_flip", image_size=32, **RAW).views(source, 2).numpy() * 255  # [N, 2, 3, S, S]
    first, _, first_flip = crop_statistics(views[:, 0], 200, 150)
    second, _, second_flip = crop_statistics(views[:, 1], 200, 150)
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.2  # 4 standard errors of a zero correlation
    assert abs(np.corrcoef(first_flip, second_flip)[0, 1]) < 0.2
    colour = build_batch_augment("simclr_augment", image_size=32, **RAW).views(source[:64], 2)
    grey = (colour.amax(2) - colour.amin(2)).amax((-2, -1)) < 1e-6  # [64, 2]: the grayscale draw per view
    assert (grey[:, 0] != grey[:, 1]).any() and not torch.allclose(colour[:, 0], colour[:, 1])


def test_jitter_and_grayscale_rates_match_the_per_image_path():
    colour = (200, 60, 30)
    plain = np.full((1, 32, 32, 3), colour, dtype=np.uint8)  # crops and flips leave a plain colour as it is
    torch.manual_seed(3)
    rates = []
    for outputs in (per_image("simclr_augment", [Image.fromarray(plain[0])], N, size=32),
                    batched("simclr_augment", plain, N, size=32)):
        pixels = np.round(outputs[:, :, 16, 16]).astype(int)
        grey = (pixels.max(1) - pixels.min(1) <= 1)
        jittered = ~grey & (np.abs(pixels - colour).max(1) > 1)
        rates.append((grey.mean(), jittered.sum() / (~grey).sum()))
    for grey, jittered in rates:
        assert 0.14 < grey < 0.26  # RandomGrayscale(p=0.2)
        assert 0.72 < jittered < 0.88  # ColorJitter with p=0.8


@pytest.fixture(scope="module")
def cifar_images(cifar_subset_tar, tmp_path_factory) -> np.ndarray:
    """32 real CIFAR-10 test images (32 px) from the shared JPEG subset."""
    folder = tmp_path_factory.mktemp("cifar")
    with tarfile.open(cifar_subset_tar) as archive:
        members = []
        for member in archive:  # stop early: the archive holds 11,000 images
            if member.isfile() and "/test/" in member.name and member.name.endswith(".jpg"):
                members.append(member)
                if len(members) == 32:
                    break
        archive.extractall(folder, members=members, filter="data")
    return np.stack([np.asarray(Image.open(folder / m.name).convert("RGB")) for m in members])


def _sharpness(outputs: np.ndarray) -> np.ndarray:
    """Mean absolute horizontal + vertical difference per image: blur lowers it, crops to small areas too."""
    return np.abs(np.diff(outputs, axis=-1)).mean((1, 2, 3)) + np.abs(np.diff(outputs, axis=-2)).mean((1, 2, 3))


@pytest.mark.parametrize("policy", ["simclr_augment", "simaugment"])
def test_real_images_grey_rate_and_sharpness_match_the_per_image_path(cifar_images, policy):
    """At 64 px these policies blur with p=0.5: the per-image sharpness distributions agree, and so do
    the grayscale rates (real images are colour; a grey output has three equal channels)."""
    repeats = 8
    torch.manual_seed(4)
    reference = per_image(policy, [Image.fromarray(image) for image in cifar_images], repeats, size=64)
    ours = batched(policy, cifar_images, repeats, size=64)
    assert ks_2samp(_sharpness(reference), _sharpness(ours)).pvalue > 1e-3
    for outputs in (reference, ours):
        grey = (np.ptp(np.round(outputs), axis=1) <= 1).all((1, 2)).mean()
        assert 0.12 < grey < 0.28  # p = 0.2, 256 samples


def test_blur_rate_and_strength_match_the_per_image_blur():
    """The blur step of both paths (p=0.5, sigma ~ U(0.1, 2), kernel 7 at 64 px) on a 1-px checkerboard:
    the contrast left at the centre is 1 unblurred and falls with sigma, so its distribution shows both the
    application rate and the sigma distribution."""
    from study.augment import RandomGaussianBlur, blur_kernel_size

    board = ((np.indices((64, 64)).sum(0) % 2) * 200 + 20).astype(np.uint8)
    board = np.repeat(board[..., None], 3, -1)
    theirs = RandomGaussianBlur(blur_kernel_size(64))
    ours = BatchAugment("simaugment", image_size=64, **RAW).steps[-1]
    torch.manual_seed(7)
    reference = np.stack([np.asarray(theirs(Image.fromarray(board)), dtype=np.float32) for _ in range(N)])
    reference = np.abs(reference[:, 32, 32, 0] - reference[:, 32, 33, 0]) / 200
    batch = torch.from_numpy(board).permute(2, 0, 1)[None].expand(N, -1, -1, -1).float() / 255
    mine = np.round(ours(batch).numpy() * 255)  # the per-image path rounds to uint8
    mine = np.abs(mine[:, 0, 32, 32] - mine[:, 0, 32, 33]) / 200
    assert ks_2samp(reference, mine, method="asymp").pvalue > 1e-3
    for contrast in (reference, mine):
        assert abs((contrast > 0.99).mean() - 0.5) < 0.1  # unblurred or sigma below ~0.3: about half


def test_policy_constants_come_from_the_per_image_path():
    augment = BatchAugment("simaugment", image_size=224, **RAW)
    blur = augment.steps[-1]
    assert blur.p == 0.5 and blur.transform.keywords == {"kernel_size": 23, "sigma": (0.1, 2.0)}
    assert tuple(torch.as_tensor(augment.crop._param_generator.scale).tolist()) == pytest.approx((0.08, 1.0))
    small = BatchAugment("simclr_augment", image_size=32, **RAW)
    transforms = [getattr(step.transform, "func", step.transform).__name__ for step in small.steps]
    assert transforms == ["_colour_jitter", "_grayscale"]  # no blur below 64 px
    assert [step.p for step in small.steps] == [0.8, 0.2]


@pytest.mark.parametrize("policy", AUGMENTATIONS)
def test_every_policy_is_reproducible_and_random(policy):
    augment = build_batch_augment(policy, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    images = torch.randint(0, 256, (8, 3, 40, 40), dtype=torch.uint8)
    torch.manual_seed(5)
    first = augment(images)
    torch.manual_seed(5)
    second = augment(images)
    assert first.shape == (8, 3, 32, 32) and first.dtype == torch.float32 and torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert not torch.equal(first, augment(images))


@pytest.mark.parametrize("policy", ["randaugment", "autoaugment"])
def test_op_policies_pick_ops_per_sample(policy):
    """One plain image repeated: with per-sample ops the outputs of one batch differ from each other."""
    augment = build_batch_augment(policy, image_size=32, **RAW, randaugment_n=1, randaugment_m=9)
    image = torch.from_numpy(coordinate_image(32, 32)).permute(2, 0, 1)[None].expand(64, -1, -1, -1)
    torch.manual_seed(6)
    outputs = augment(image).flatten(1)
    assert len(torch.unique(outputs, dim=0)) > 32


@pytest.mark.parametrize("policy, fill", [("randaugment", 128), ("autoaugment", 0)])
def test_geometric_op_rate_matches_the_per_image_path(policy, fill):
    """The share of views with fill pixels (uncovered by a shear, translation or rotation; the source has
    B = 255 everywhere, so only the fill is (fill, fill, fill)) agrees between the paths: the same op mix."""
    source = coordinate_image(32, 32)
    kwargs = {"randaugment_n": 1, "randaugment_m": 9}
    torch.manual_seed(8)
    rates = []
    for outputs in (per_image(policy, [Image.fromarray(source)], N, size=32, **kwargs),
                    batched(policy, source[None], N, size=32, **kwargs)):
        filled = (np.abs(np.round(outputs) - fill) <= 1).all(1).sum((1, 2)) > 8
        rates.append(filled.mean())
    assert 0.05 < rates[0] and abs(rates[0] - rates[1]) < 0.12  # 3.5 standard errors at N = 400


def _op_effects(outputs: np.ndarray, fill: int) -> dict[str, np.ndarray]:
    """Per view [N, 3, S, S] in pixel units: the fill fraction (pixels a shear / translation / rotation
    uncovered), the angle of the source's x axis in the output (rotation and shear, read back from the
    coordinate code: a least-squares plane R = a u + b v + c over the covered pixels; flips folded), and the
    mean of the source's constant B = 255 channel over the covered pixels (the colour ops' magnitudes)."""
    size = outputs.shape[-1]
    v, u = np.mgrid[0:size, 0:size]
    fills, angles, blues = [], [], []
    for view in np.round(outputs):
        filled = (np.abs(view - fill) <= 1).all(0)
        covered = ~filled
        fills.append(filled.mean())
        if covered.sum() < 8:
            angles.append(0.0)
            blues.append(float(fill))
            continue
        design = np.stack([u[covered], v[covered], np.ones(covered.sum())], 1).astype(float)
        (a, b, _), *_ = np.linalg.lstsq(design, view[0][covered], rcond=None)
        angles.append(math.degrees(math.atan2(b, abs(a))) if abs(a) + abs(b) > 1e-6 else 0.0)
        blues.append(view[2][covered].mean())
    return {"fill fraction": np.array(fills), "x-axis angle": np.array(angles), "blue mean": np.array(blues)}


@pytest.mark.parametrize("policy, fill", [("randaugment", 128), ("autoaugment", 0)])
def test_op_mix_and_magnitudes_match_the_per_image_path(policy, fill):
    """RandAugment at M=9, N=1 (and AutoAugment's CIFAR policy) on a coordinate-coded source at 32 px: the
    distributions of what the ops did (fill fraction, the source's x axis angle, the colour ops' effect on
    the constant channel) agree between the batched and the per-image path (fixed seed, N views each)."""
    source = coordinate_image()
    kwargs = {"randaugment_n": 1, "randaugment_m": 9}
    torch.manual_seed(9)
    reference = _op_effects(per_image(policy, [Image.fromarray(source)], N, size=32, **kwargs), fill)
    ours = _op_effects(batched(policy, source[None], N, size=32, **kwargs), fill)
    # The geometric ops resample with nearest neighbours (PIL per image, kornia batched), which moves the
    # read-back by a few pixels (a shear's fill 138 vs 134 of 1024 pixels, its angle 15.4 vs 15.0 degrees):
    # the op mix is compared by category (chi-square), and, for RandAugment, whose M fixes one magnitude
    # per op, each category's magnitude within that rounding (AutoAugment mixes its sub-policies' magnitudes).
    categories = {"fill fraction": ((0.001, 0.25), 0.02), "x-axis angle": ((5.0, 21.0), 1.0)}
    for name, (edges, tolerance) in categories.items():
        binned = [np.digitize(np.abs(effects[name]), edges) for effects in (reference, ours)]
        table = np.array([[np.sum(b == k) for k in range(len(edges) + 1)] for b in binned])
        table = table[:, table.sum(0) > 0]
        assert chi2_contingency(table).pvalue > 1e-3, (name, table.tolist())
        for k in range(1, len(edges) + 1) if policy == "randaugment" else ():
            assert all((b == k).sum() >= 5 for b in binned), (name, table.tolist())
            theirs, mine = (np.median(np.abs(e[name])[b == k]) for e, b in zip((reference, ours), binned))
            assert abs(theirs - mine) <= tolerance, (name, k, theirs, mine)
    assert ks_2samp(reference["blue mean"], ours["blue mean"]).pvalue > 1e-3
    if policy == "randaugment":  # the ops did act: Rotate +-27 degrees, Shear 0.27 (15 degrees) at M=9
        for effects in (reference, ours):
            assert (np.abs(effects["x-axis angle"]) > 21).mean() > 0.02
            assert (effects["blue mean"] < 200).mean() > 0.05

def test_images_of_different_sizes_are_cropped_one_by_one():
    images = [torch.randint(0, 256, (3, 50 + i, 40 + 3 * i), dtype=torch.uint8) for i in range(3)]
    for policy in ("crop_flip", "pad_crop_flip", "stacked_randaugment"):
        assert build_batch_augment(policy, image_size=32, **RAW)(images).shape == (3, 3, 32, 32)
    base = [(Image.fromarray(image.permute(1, 2, 0).numpy()), i) for i, image in enumerate(images)]
    batch, labels = collate_decoded([DecodedDataset(base)[i] for i in range(3)])
    assert isinstance(batch, list) and labels.tolist() == [0, 1, 2] and batch[0].dtype == torch.uint8


def test_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="data_pipeline='gpu'; allowed: auto | cpu | device"):
        Config(data_pipeline="gpu")
    assert Config().data_pipeline == "auto"
    assert resolve_data_pipeline("auto", "cpu") == "cpu" and resolve_data_pipeline("auto", "cuda") == "device"
    assert resolve_data_pipeline("device", "cpu") == "device"
    with pytest.raises(ValueError, match="data_pipeline"):
        resolve_data_pipeline("tpu", "cpu")
    for kwargs in ({"policy": "jitter"}, {"image_size": 4}, {"randaugment_m": 11}, {"randaugment_n": -1},
                   {"autoaugment_policy": "svhn"}):
        with pytest.raises(ValueError, match="allowed"):
            BatchAugment(**{"policy": "randaugment", "image_size": 32, **RAW, **kwargs})


@pytest.mark.slow  # end-to-end training
@pytest.mark.parametrize("method, pipeline", [("supcon", "device"), ("ce", "device"), ("ce", "cpu")])
def test_training_reports_the_augmentation_share(tmp_path, method, pipeline):
    from study.train import LocalContext, train

    config = Config.from_dict({"dataset": "digits", "width": 0.0625, "epochs": 1, "linear_epochs": 1,
                               "batch_size": 64, "linear_batch_size": 64, "augmentation": "simclr_augment",
                               "method": method, "data_pipeline": pipeline})
    context = LocalContext(tmp_path)
    final = train(config, context)
    assert final["status"] == "completed"
    epochs = [m for m in context.history if m["stage"] != "final"]
    assert epochs and all(0 < m["augment_fraction"] < 1 and math.isfinite(m["loss"]) for m in epochs)


@pytest.mark.slow  # end-to-end trainings
def test_seeded_training_with_the_device_pipeline_repeats_exactly(tmp_path):
    from study.train import LocalContext, train

    config = Config.from_dict({"dataset": "digits", "width": 0.0625, "epochs": 1, "batch_size": 64,
                               "augmentation": "randaugment", "method": "ce", "data_pipeline": "device"})
    losses = []
    for run in range(2):
        context = LocalContext(tmp_path / str(run))
        train(config, context)
        losses.append([m["loss"] for m in context.history if m["stage"] != "final"])
    assert losses[0] == losses[1]


# ------------------------------------------------------------------ under Ray Train and inside a Tune trial
RAY_TINY = {"dataset": "digits", "model": "resnet18", "width": 0.0625, "epochs": 1, "linear_epochs": 1,
            "batch_size": 64, "linear_batch_size": 64, "augmentation": "crop_flip", "data_pipeline": "device"}


def train_recording_workers(config: Config, context, *, folder: str) -> dict:
    """The product's loop, recording each worker's rank, world size, shard and reported epochs to a file of
    its own. Module-level, so that Ray can pickle it to the workers (by value: see `recording_workers`)."""
    from pathlib import Path

    from study.train import train

    reports: list[dict] = []
    report = context.report

    def record(metrics, checkpoint_dir=None):
        reports.append(dict(metrics))
        report(metrics, checkpoint_dir)

    context.report = record
    final = train(config, context)
    Path(folder, f"rank{context.world_rank}.json").write_text(json.dumps(
        {"rank": context.world_rank, "world_size": context.world_size, "device": str(context.device),
         "reports": reports}, default=str))
    return final


def recording_workers(folder):
    import functools
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return functools.partial(train_recording_workers, folder=str(folder))


def test_two_ray_train_workers_each_augment_their_own_shard(ray_session, tmp_path):
    from study.launch import run_training

    folder = tmp_path / "workers"
    folder.mkdir()
    config = Config.from_dict({**RAY_TINY, "method": "supcon", "num_workers": 2})  # gloo on CPU
    final = run_training(config, storage=str(tmp_path / "runs"), name="device-pipeline", max_failures=0,
                         train_fn=recording_workers(folder))
    assert final["status"] == "completed" and 0 <= final["test_top1"] <= 100
    workers = [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank, worker in enumerate(workers):
        assert worker["rank"] == rank and worker["world_size"] == 2
        epochs = [m for m in worker["reports"] if m.get("stage") in ("contrastive", "linear")
                  and m.get("status") == "running"]
        assert [m["stage"] for m in epochs] == ["contrastive", "linear"]
        # every worker augmented on its own device, in its own process: a real share of each of its epochs
        assert all(0 < m["augment_fraction"] < 1 for m in epochs)


def test_one_worker_tune_trial_records_the_augmentation_share(ray_session, tmp_path):
    import pandas as pd

    from study.sweep import SweepOptions, run_sweep

    base = "\n".join(f"  {key}: {value}" for key, value in RAY_TINY.items() if key != "data_pipeline")
    space = tmp_path / "device.yaml"
    space.write_text(f"name: device\nbase:\n{base}\n  lr: 0.5\ndesign: one_at_a_time\nmethods: [ce]\n"
                     "seeds: [0]\nvary:\n  lr: [0.5]\n")
    study = run_sweep(str(space), {"data_pipeline": "device"},
                      SweepOptions(storage=str(tmp_path / "runs"), name="device", max_failures=0, verbose=0))
    results = pd.read_parquet(study / "results.parquet")
    assert list(results["status"]) == ["completed"]
    assert json.loads(results["config"].iloc[0])["data_pipeline"] == "device"
    history = pd.read_parquet(study / "history.parquet")
    epochs = history[history["stage"] != "final"]
    assert len(epochs) >= 1 and "augment_fraction" in history
    assert epochs["augment_fraction"].between(0, 1, inclusive="neither").all()


def test_hue_shift_equals_kornias_on_greys_ties_and_colours():
    """`_adjust_hue` (arithmetic only, for the CPU) against kornia's adjust_hue, per sample, on levels that make
    greys and ties between the channels common (torchvision's precedence: red, then green)."""
    import kornia

    from study.batched_augment import _adjust_hue

    torch.manual_seed(9)
    images = torch.randint(0, 4, (6, 3, 20, 20)).float() / 3
    images[:, :, 0] = torch.rand(6, 3, 20)
    shift = torch.linspace(-math.pi, math.pi, 6)
    assert torch.allclose(_adjust_hue(images, shift), kornia.enhance.adjust_hue(images, shift), atol=1e-5)


def test_jitter_steps_run_in_each_samples_own_order_with_torchvisions_formulas():
    """Replaying the draws of `_colour_jitter` (factors, then a random order of the four steps per sample), each
    sample equals torchvision's ColorJitter steps applied in its own order (torchvision's grey weights differ
    from PIL's in the fourth decimal, hence the tolerance)."""
    from torchvision.transforms.v2 import functional as TF

    from study.batched_augment import _colour_jitter

    images = torch.rand(40, 3, 12, 12)
    strengths = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}
    torch.manual_seed(10)
    ours = _colour_jitter(images.clone(), **strengths)
    torch.manual_seed(10)
    ranges = [(0.6, 1.4)] * 3 + [(-0.1, 0.1)]
    factors = torch.stack([torch.empty(40).uniform_(low, high) for low, high in ranges])
    orders = torch.rand(40, 4).argsort(1)
    steps = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    assert len({tuple(order) for order in orders.tolist()}) > 10  # many different orders in one batch
    for image, order, factor, mine in zip(images, orders, factors.T, ours, strict=True):
        expected = image
        for step in order.tolist():
            expected = steps[step](expected, float(factor[step]))
        assert torch.allclose(mine, expected, atol=2e-3)


def _pil_op_image() -> np.ndarray:
    """A 37 x 29 colour image (not square: catches swapped axes) with gradients, texture and flat levels."""
    y, x = np.mgrid[0:29, 0:37]
    image = np.stack([x * 6, y * 8, (x * y) % 256], -1) + np.random.default_rng(1).integers(-20, 20, (29, 37, 3))
    return image.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("table", ["randaugment", "autoaugment"])
def test_every_op_matches_torchvisions_op_on_a_pil_image(table):
    """Every op of torchvision's RandAugment (fill 128) and AutoAugment (fill 0) tables, at several magnitude
    bins and both signs, on one image: the batched op (float) against the per-image path's op on a PIL image
    (uint8). PIL truncates or rounds each result to a level, and Color / Contrast / Sharpness blend with PIL's
    rounded grey image or mean, so up to 1.5 levels apart; the geometric ops (PIL's pixel centres, nearest
    neighbour, the fill) land on the same pixels."""
    from torchvision.transforms import v2

    from study.batched_augment import _apply_op

    reference = v2.RandAugment(fill=RANDAUGMENT_FILL) if table == "randaugment" else v2.AutoAugment()
    bins, fill = (RANDAUGMENT_MAX_MAGNITUDE + 1, RANDAUGMENT_FILL) if table == "randaugment" else (10, 0)
    space = reference._AUGMENTATION_SPACE
    image = _pil_op_image()
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    for name, (magnitudes_fn, signed) in space.items():
        magnitudes = magnitudes_fn(bins, 29, 37)
        for magnitude_bin in [0] if magnitudes is None else [0, bins // 3, bins - 1]:
            for sign in (1, -1) if signed else (1,):
                magnitude = 0.0 if magnitudes is None else sign * float(magnitudes[magnitude_bin])
                theirs = np.asarray(reference._apply_image_or_video_transform(
                    Image.fromarray(image), name, magnitude, v2.InterpolationMode.NEAREST, reference._fill))
                mine = _apply_op(batch.clone(), torch.tensor([True]), name, torch.tensor([magnitude]), fill=fill / 255)
                difference = np.abs(mine[0].permute(1, 2, 0).numpy() * 255 - theirs)
                if name == "Solarize":  # a level equal to 255 m in float32: torchvision inverts a float tensor's
                    difference[image == round(255 * magnitude)] = 0  # (as here) but not a PIL image's (float64)
                assert difference.max() <= 1.5, (name, magnitude, difference.max())


def test_rotation_and_perspective_match_torchvisions_on_a_pil_image():
    """SimAugment's warps: PIL's bilinear rotation about the centre and perspective transform with a black fill,
    output within one level of PIL's (which truncates) on at least 99.5% of the pixels (the rest: points on
    the image's edge, decided in float32 here and float64 in PIL). The perspective corners are drawn as
    torchvision's RandomPerspective draws them: the same seed gives the same coefficients."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF

    from study.batched_augment import _inverse_affine, _perspective_matrix, _warp_bilinear

    image = _pil_op_image()
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255

    def close(theirs, mine: torch.Tensor) -> float:
        difference = np.abs(mine[0].permute(1, 2, 0).numpy() * 255 - np.asarray(theirs)).max(-1)
        return float((difference <= 1.0001).mean())

    for angle in (-15.0, -9.6, 2.0, 13.4):
        theirs = TF.rotate(Image.fromarray(image), angle, interpolation=v2.InterpolationMode.BILINEAR)
        assert close(theirs, _warp_bilinear(batch, _inverse_affine("Rotate", torch.tensor([angle]), 29, 37))) == 1
    for seed in range(6):
        torch.manual_seed(seed)
        matrix = _perspective_matrix(1, 29, 37, distortion=0.2)
        torch.manual_seed(seed)
        coefficients = v2.RandomPerspective(0.2, p=1.0).make_params([Image.fromarray(image)])["coefficients"]
        assert matrix.flatten()[:8].tolist() == pytest.approx(coefficients, abs=1e-6)
        theirs = TF.perspective(Image.fromarray(image), None, None, interpolation=v2.InterpolationMode.BILINEAR,
                                coefficients=coefficients)
        assert close(theirs, _warp_bilinear(batch, matrix)) >= 0.995


def test_gaussian_blur_equals_the_per_image_blur():
    """The batched blur, each sample with its own sigma, equals `study.augment.gaussian_blur` (before rounding)."""
    from study.augment import gaussian_blur
    from study.batched_augment import _gaussian_blur

    images = np.random.default_rng(2).integers(0, 256, (3, 40, 50, 3)).astype(np.uint8)
    sigma = torch.tensor([0.1, 0.9, 2.0])
    mine = _gaussian_blur(torch.from_numpy(images).permute(0, 3, 1, 2).float(), 7, sigma).permute(0, 2, 3, 1)
    theirs = np.stack([gaussian_blur(image, 7, float(s)) for image, s in zip(images, sigma, strict=True)])
    assert np.abs(mine.numpy() - theirs).max() < 1e-3


@pytest.mark.parametrize("policy", AUGMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_the_input_batch_is_never_modified(policy, dtype):
    """The steps work in place on the crop's output, never on the caller's batch (float input at the
    output size included, where a crop could hand back its input)."""
    augment = build_batch_augment(policy, image_size=32, **RAW)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    images = images if dtype == torch.uint8 else images.float() / 255
    before = images.clone()
    augment(images)
    assert torch.equal(images, before)
