"""Datasets and splits: the embedded digits, CIFAR's missing-data error, imagefolder on real CIFAR JPEGs,
and the wrappers that turn splits into tensors and multi-view batches."""

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from study.augment import build_eval_transform, build_train_transform
from study.config import NAMED_DATASETS
from study.data import (
    DATASETS,
    DIGITS_TEST_FRACTION,
    ArrayImageDataset,
    MultiViewDataset,
    TransformedDataset,
    dataset_to_arrays,
    load_dataset,
    stratified_split,
    stratified_subset,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR_JPEG_TAR = SHARED / "data" / "cifar10-jpeg-subset.tar"
JPEG_CLASSES = ("cat", "dog", "ship")
JPEG_TRAIN_PER_CLASS, JPEG_TEST_PER_CLASS = 8, 3


def _labels(dataset) -> np.ndarray:
    return np.array([dataset[i][1] for i in range(len(dataset))])


def _fingerprint(dataset) -> set[bytes]:
    return {np.asarray(dataset[i][0]).tobytes() + bytes([dataset[i][1]]) for i in range(len(dataset))}


# ---------------------------------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_named_datasets_match_config():
    assert tuple(d for d in DATASETS if ":" not in d) == NAMED_DATASETS


def test_digits_splits_are_disjoint_and_cover_the_1797_images(digits):
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert len(digits.test) == round(DIGITS_TEST_FRACTION * 1797)
    assert len(digits.val) == round(0.1 * (1797 - len(digits.test)))
    # load_digits has no duplicate images, so distinct fingerprints mean disjoint splits covering all 1797
    train, val, test = _fingerprint(digits.train), _fingerprint(digits.val), _fingerprint(digits.test)
    assert len(train | val | test) == 1797


def test_digits_splits_are_stratified(digits):
    for split, fraction in ((digits.test, 0.2), (digits.val, 0.1 * 0.8), (digits.train, 0.9 * 0.8)):
        counts = np.bincount(_labels(split), minlength=10)
        all_counts = np.array([178, 182, 177, 183, 181, 182, 181, 179, 174, 180])  # load_digits per class
        assert np.all(np.abs(counts - fraction * all_counts) <= 2), (counts, fraction * all_counts)


def test_digits_are_deterministic_and_test_split_ignores_the_seed(digits):
    again = load_dataset("digits")
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    other_seed = load_dataset("digits", seed=1)
    assert np.array_equal(other_seed.test.images, digits.test.images)
    assert not np.array_equal(other_seed.val.labels, digits.val.labels) or not np.array_equal(
        other_seed.val.images, digits.val.images
    )
    assert _fingerprint(other_seed.val) | _fingerprint(other_seed.train) == _fingerprint(digits.val) | _fingerprint(
        digits.train
    )


def test_digits_items_are_rgb_images_at_the_model_size(digits):
    image, label = digits.train[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (16, 16)
    assert isinstance(label, int) and 0 <= label < 10
    pixels = np.asarray(image)
    assert pixels.max() > 200 and pixels.min() == 0  # real strokes on a black background
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # grey digits in RGB
    assert digits.num_classes == 10 and digits.class_names == [str(d) for d in range(10)]
    assert digits.image_size == 16 and digits.name == "digits"
    assert all(0 < m < 1 for m in digits.mean) and all(0 < s < 1 for s in digits.std)
    train_pixels = digits.train.images / 255.0
    assert abs(train_pixels.mean() - digits.mean[0]) < 0.02  # statistics of the data, not made up


@pytest.mark.parametrize("size", [32, 96])
def test_digits_at_other_sizes(size):
    splits = load_dataset("digits", image_size=size)
    image, _ = splits.test[3]
    assert image.size == (size, size) and splits.image_size == size
    arrays, labels = dataset_to_arrays(splits.test, size)
    assert arrays.shape == (len(splits.test), size, size, 3) and arrays.dtype == np.uint8
    assert labels.dtype == np.int64 and np.array_equal(labels, splits.test.labels)


# ---------------------------------------------------------------------------------------------- splits
def test_stratified_split_properties():
    labels = np.repeat(np.arange(7), [50, 3, 20, 2, 9, 1, 15])
    kept, held = stratified_split(labels, 0.25, seed=3)
    assert len(held) == round(0.25 * len(labels))
    assert np.intersect1d(kept, held).size == 0 and len(kept) + len(held) == len(labels)
    assert set(labels[kept]) == set(labels)  # every class keeps at least one image
    held_counts = np.bincount(labels[held], minlength=7)
    assert np.all(np.abs(held_counts - 0.25 * np.bincount(labels)) < 1.5)
    again = stratified_split(labels, 0.25, seed=3)
    assert np.array_equal(again[1], held)
    assert not np.array_equal(stratified_split(labels, 0.25, seed=4)[1], held)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*digits.*imagefolder:PATH"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="val_fraction=1.0"):
        load_dataset("digits", val_fraction=1.0)
    with pytest.raises(ValueError, match="image_size=0"):
        load_dataset("digits", image_size=0)


# ---------------------------------------------------------------------------------------------- train_fraction
def _image_set(dataset) -> set[bytes]:
    return {image.tobytes() for image in dataset.images}


def test_train_fraction_keeps_a_stratified_part_of_train_and_leaves_val_and_test(digits):
    half = load_dataset("digits", train_fraction=0.5)
    assert len(half.train) == round(0.5 * len(digits.train))
    assert _image_set(half.train) <= _image_set(digits.train)
    counts, full_counts = np.bincount(half.train.labels, minlength=10), np.bincount(digits.train.labels, minlength=10)
    assert np.all(np.abs(counts - 0.5 * full_counts) <= 1), (counts, full_counts)
    for kept, full in ((half.val, digits.val), (half.test, digits.test)):
        assert np.array_equal(kept.images, full.images) and np.array_equal(kept.labels, full.labels)
    assert half.mean == digits.mean and half.std == digits.std
    tiny = load_dataset("digits", train_fraction=0.001)  # round(1.3) images, raised to one per class
    assert sorted(tiny.train.labels.tolist()) == list(range(10))
    assert load_dataset("digits", train_fraction=1.0).train.images.shape == digits.train.images.shape


def test_train_fraction_subsets_are_seeded_and_nested(digits):
    quarter = _image_set(load_dataset("digits", train_fraction=0.25, train_seed=3).train)
    half = _image_set(load_dataset("digits", train_fraction=0.5, train_seed=3).train)
    assert quarter < half  # nested across fractions for one seed
    assert _image_set(load_dataset("digits", train_fraction=0.5, train_seed=3).train) == half
    assert _image_set(load_dataset("digits", train_fraction=0.5, train_seed=4).train) != half
    # train_seed defaults to the split seed
    assert _image_set(load_dataset("digits", train_fraction=0.5, seed=3).train) == _image_set(
        load_dataset("digits", train_fraction=0.5, seed=3, train_seed=3).train)


def test_stratified_subset_is_nested_and_keeps_every_class():
    labels = np.repeat(np.arange(7), [50, 3, 20, 2, 9, 1, 15])
    previous = np.empty(0, np.int64)
    for fraction in np.linspace(0.01, 1, 60):
        subset = stratified_subset(labels, fraction, seed=5)
        assert len(subset) == max(round(fraction * len(labels)), 7)
        assert np.array_equal(subset, np.unique(subset))  # sorted, no repeats
        assert set(labels[subset]) == set(labels)
        assert np.isin(previous, subset).all()
        previous = subset
    assert np.array_equal(previous, np.arange(len(labels)))
    balanced = np.repeat(np.arange(4), 25)
    for fraction in (0.1, 0.33, 0.5, 0.9):
        counts = np.bincount(balanced[stratified_subset(balanced, fraction, seed=0)], minlength=4)
        assert np.all(np.abs(counts - 25 * fraction) <= 1), (fraction, counts)


def test_supcon_and_ce_runs_of_one_seed_train_on_the_same_images():
    from study.config import Config
    from study.train import load_splits

    def train_images(**values) -> set[bytes]:
        return _image_set(load_splits(Config.from_dict({"dataset": "digits", "train_fraction": 0.3, **values})).train)

    supcon = train_images(method="supcon", seed=2)
    assert train_images(method="ce", seed=2) == supcon
    assert train_images(method="simclr", seed=2, projection_head="linear", normalize_embedding=True) == supcon
    assert train_images(method="ce", seed=7) != supcon  # another seed, another subset
    assert len(supcon) == round(0.3 * len(load_dataset("digits").train))
    val = load_splits(Config.from_dict({"dataset": "digits", "train_fraction": 0.3, "seed": 7})).val
    assert np.array_equal(val.images, load_dataset("digits").val.images)  # val: the same for every seed


@pytest.mark.parametrize(("value", "shown"), [(0, "0.0"), (-0.5, "-0.5"), (1.5, "1.5"), (float("nan"), "nan")])
def test_bad_train_fraction_is_rejected_by_config_in_one_line(value, shown):
    from study.config import Config, ConfigError

    with pytest.raises(ConfigError) as caught:
        Config.from_dict({"train_fraction": value})
    message = str(caught.value)
    assert "\n" not in message
    assert f"invalid train_fraction={shown}; allowed: a number in (0, 1]" in message
    with pytest.raises(ConfigError, match="train_fraction='half'.*expected float"):
        Config.from_dict({"train_fraction": "half"})
    with pytest.raises(ValueError, match=r"invalid train_fraction=.*allowed: a number in \(0, 1\]"):
        load_dataset("digits", train_fraction=value)


# ---------------------------------------------------------------------------------------------- wrappers
def test_transformed_dataset_gives_normalised_tensors(digits):
    transform = build_eval_transform(image_size=16, mean=digits.mean, std=digits.std)
    dataset = TransformedDataset(digits.val, transform)
    tensor, label = dataset[0]
    assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32 and label == digits.val[0][1]
    assert len(dataset) == len(digits.val)


def test_multiview_dataset_gives_distinct_views(digits):
    transform = build_train_transform("simaugment", image_size=16, mean=digits.mean, std=digits.std)
    dataset = MultiViewDataset(digits.train, transform, n_views=3)
    torch.manual_seed(0)
    views, label = dataset[5]
    assert views.shape == (3, 3, 16, 16) and views.dtype == torch.float32 and label == digits.train[5][1]
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    batch, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch.shape == (4, 3, 3, 16, 16) and labels.shape == (4,)
    with pytest.raises(ValueError, match="n_views=0"):
        MultiViewDataset(digits.train, transform, n_views=0)


def test_dataset_to_arrays_matches_items(digits):
    images, labels = dataset_to_arrays(digits.test, 16)
    assert images.shape == (len(digits.test), 16, 16, 3) and images.dtype == np.uint8
    assert labels.shape == (len(digits.test),) and labels.dtype == np.int64
    assert np.array_equal(images[7], np.asarray(digits.test[7][0])) and labels[7] == digits.test[7][1]
    images[0] = 0  # a copy: the dataset is untouched
    assert np.asarray(digits.test[0][0]).any()


def test_array_dataset_resizes_lazily():
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    dataset = ArrayImageDataset(images, np.arange(4), image_size=20)
    assert dataset[2][0].size == (20, 20) and dataset.images.shape == (4, 8, 8, 3)


# ---------------------------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_missing_cifar_names_the_path_and_the_download_flag(tmp_path, name):
    with pytest.raises(ValueError, match="--download") as error:
        load_dataset(name, root=tmp_path)
    assert str(tmp_path) in str(error.value)


class _FakeCifar10:
    """Stands in for torchvision's CIFAR10 (whose files are checksummed) to test our wiring around it."""

    classes = [f"class{i}" for i in range(10)]

    def __init__(self, root, train, download):
        count = 200 if train else 50
        rng = np.random.default_rng(int(train))
        self.data = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 10 for i in range(count)]


@pytest.mark.parametrize("size", [None, 48])
def test_cifar_splits_wrap_torchvision(tmp_path, monkeypatch, size):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _FakeCifar10)
    (tmp_path / "cifar-10-batches-py").mkdir()
    splits = load_dataset("cifar10", root=tmp_path, image_size=size, val_fraction=0.1, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (180, 20, 50)
    assert np.array_equal(np.bincount(splits.val.labels), [2] * 10)
    assert splits.num_classes == 10 and splits.class_names == _FakeCifar10.classes
    assert splits.image_size == (size or 32) and splits.train[0][0].size == (size or 32,) * 2
    assert splits.mean == (0.4914, 0.4822, 0.4465)


# ---------------------------------------------------------------------------------------------- imagefolder
@pytest.fixture(scope="module")
def cifar_jpeg(tmp_path_factory) -> Path:
    """A few classes and images of the shared CIFAR-10 JPEG subset, extracted to a temporary folder."""
    if not CIFAR_JPEG_TAR.is_file():
        pytest.skip(f"shared CIFAR-10 JPEG subset not found at {CIFAR_JPEG_TAR} (../shared is absent)")
    wanted = {"train": JPEG_TRAIN_PER_CLASS, "test": JPEG_TEST_PER_CLASS}
    taken: dict[tuple[str, str], int] = {}
    members = []
    with tarfile.open(CIFAR_JPEG_TAR) as archive:
        for member in archive:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] not in wanted or parts[2] not in JPEG_CLASSES:
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) < wanted[parts[1]]:
                taken[key] = taken.get(key, 0) + 1
                members.append(member)
        target = tmp_path_factory.mktemp("imagefolder")
        archive.extractall(target, members=members, filter="data")
    return target / "cifar10-jpeg"


def test_imagefolder_on_real_cifar_jpegs(cifar_jpeg):
    splits = load_dataset(f"imagefolder:{cifar_jpeg}", image_size=32, val_fraction=0.25, seed=0)
    assert splits.class_names == sorted(JPEG_CLASSES) and splits.num_classes == 3
    assert len(splits.train) + len(splits.val) == 3 * JPEG_TRAIN_PER_CLASS
    assert np.array_equal(np.bincount(_labels(splits.val)), [2, 2, 2])  # 25% of 8 per class
    assert np.array_equal(np.bincount(_labels(splits.test)), [JPEG_TEST_PER_CLASS] * 3)
    train_files = {path for path, _ in splits.train.samples}
    assert not train_files & {path for path, _ in splits.val.samples}
    image, label = splits.test[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (32, 32)
    assert splits.image_size == 32 and splits.mean == (0.485, 0.456, 0.406)
    transform = build_train_transform("autoaugment", image_size=32, mean=splits.mean, std=splits.std)
    assert TransformedDataset(splits.train, transform)[0][0].shape == (3, 32, 32)
    images, labels = dataset_to_arrays(splits.test, 32)
    assert images.shape == (9, 32, 32, 3) and np.array_equal(labels, _labels(splits.test))
    assert np.array_equal(images[4], np.asarray(splits.test[4][0]))


def test_imagefolder_native_size_is_224_and_resized_by_transforms(cifar_jpeg):
    splits = load_dataset(f"imagefolder:{cifar_jpeg}")
    assert splits.image_size == 224
    assert splits.train[0][0].size == (32, 32)  # as stored; transforms bring it to 224
    eval_transform = build_eval_transform(image_size=224, mean=splits.mean, std=splits.std)
    assert TransformedDataset(splits.test, eval_transform)[0][0].shape == (3, 224, 224)
    images, _ = dataset_to_arrays(splits.test, 64)
    assert images.shape == (9, 64, 64, 3)


def _write_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((12, 10, 3), 20 * i, dtype=np.uint8)).save(folder / f"{i}.png")


def test_imagefolder_uses_val_when_there_is_no_test(tmp_path):
    for name in ("a", "b"):
        _write_images(tmp_path / "train" / name, 5)
        _write_images(tmp_path / "val" / name, 2)
    splits = load_dataset(f"imagefolder:{tmp_path}", image_size=16, val_fraction=0.2)
    assert len(splits.test) == 4 and all("/val/" in path for path, _ in splits.test.samples)
    assert len(splits.train) == 8 and len(splits.val) == 2


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "no such directory"),
        ({"images/a": 3}, "found \\['images'\\]"),
        ({"train/a": 3}, "found \\['train'\\]"),
        ({"train/a": 3, "val/x.png": 1}, "no class folders in .*val"),  # raw ImageNet val: flat files
        ({"train/a": 3, "test/b": 2}, "classes \\['b'\\] in test/ are not in train/"),
        ({"train/a": 3, "train/b": 0, "test/a": 2}, "no images .* for classes \\['b'\\]"),
    ],
)
def test_imagefolder_bad_layouts_are_explained(tmp_path, layout, message):
    root = tmp_path / "data"
    for relative, count in layout.items():
        if relative.endswith(".png"):
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(root / relative)
        else:
            _write_images(root / relative, count)
    with pytest.raises(ValueError, match=message) as error:
        load_dataset(f"imagefolder:{root}")
    assert str(root) in str(error.value) and "expected" in str(error.value)
