"""Corrupted sets on disk (generation, reuse, killed runs, loaders) and checkpoint evaluation (ECE, error,
the robustness table), with tiny images and models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from study.corruptions import corrupt
from study.corrupted_sets import load_cifar_c, load_corrupted, load_imagenet_c
from study.evaluate import evaluate_model, expected_calibration_error
from study.robustness import corrupted_set_for_dataset, evaluate_checkpoints, generate_corrupted_set
from study.tables import ROBUSTNESS_COLUMNS

REPO = Path(__file__).resolve().parents[1]


def tiny_images(count: int = 6, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return images, np.arange(count, dtype=np.int64) % 3


# ------------------------------------------------------------------------------------------ ECE and error
def test_ece_by_hand():
    # Bin (0.8667, 0.9333]: accuracy 0.5 at confidence 0.9; bin (0.5333, 0.6]: accuracy 1 at 0.6.
    assert expected_calibration_error([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1]) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert expected_calibration_error([0.75, 0.75, 0.75, 0.75], [1, 1, 1, 0]) == pytest.approx(0.0)
    # Bins are right-closed: 1/15 belongs to the first bin, with 0.05.
    assert expected_calibration_error([1 / 15, 0.05], [0, 0]) == pytest.approx((1 / 15 + 0.05) / 2)
    # Over-confidence in separate bins does not cancel.
    assert expected_calibration_error([1.0, 0.1], [0, 1]) == pytest.approx(0.95)


@pytest.mark.parametrize(
    "confidences, correct, n_bins, message",
    [([0.5, 1.2], [1, 0], 15, r"range over \[0.5, 1.2\]; allowed: \[0, 1\]"), ([0.5], [1, 0], 15, "differ in length"),
     ([0.5], [1], 0, "n_bins=0")],
)
def test_ece_rejects_bad_input(confidences, correct, n_bins, message):
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(confidences, correct, n_bins)


class ConstantClassifier(nn.Module):
    """Always 80% sure of class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.tensor([[0.8, 0.2]])).expand(len(x), 2)


class BrightnessClassifier(nn.Module):
    """Class 1 when the normalised input is positive on average; records the input size it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape[-2:]))
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-8 * m, 8 * m], dim=1)


def test_evaluate_model_error_and_ece_do_not_depend_on_batching():
    images, _ = tiny_images(10)
    labels = np.array([0] * 6 + [1] * 4)
    for batch_size in (1, 3, 256):
        result = evaluate_model(ConstantClassifier(), images, labels, mean=(0.5,) * 3, std=(0.5,) * 3, batch_size=batch_size)
        assert result["n"] == 10
        assert result["error"] == pytest.approx(0.4)
        assert result["ece"] == pytest.approx(0.2, abs=1e-6)  # confidence 0.8, accuracy 0.6, one bin


def test_evaluate_model_normalises_and_resizes():
    dark = np.full((3, 8, 8, 3), 40, np.uint8)
    bright = np.full((3, 8, 8, 3), 220, np.uint8)
    images = np.concatenate([dark, bright])
    labels = np.array([0, 0, 0, 1, 1, 1])
    model = BrightnessClassifier()
    result = evaluate_model(model, images, labels, mean=(0.5,) * 3, std=(0.25,) * 3, image_size=16, batch_size=4)
    assert result["error"] == 0.0 and result["n"] == 6
    assert set(model.seen) == {(16, 16)}
    # With a mean above every pixel, everything looks dark: the bright half is misclassified.
    assert evaluate_model(model, images, labels, mean=(0.9,) * 3, std=(0.25,) * 3)["error"] == 0.5
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        evaluate_model(model, images, labels[:5], mean=(0.5,) * 3, std=(0.25,) * 3)


# ------------------------------------------------------------------------------------------ CIFAR-C loader
def write_cifar_c(root: Path, names: list[str], n: int = 4, size: int = 8, labels_per_block: bool = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    labels = np.arange(n) % 2
    np.save(root / "labels.npy", np.tile(labels, 5) if labels_per_block else labels)
    for index, name in enumerate(names):
        blocks = [np.full((n, size, size, 3), 10 * index + severity, np.uint8) for severity in range(1, 6)]
        np.save(root / f"{name}.npy", np.concatenate(blocks))


def test_load_cifar_c_splits_severity_blocks(tmp_path):
    write_cifar_c(tmp_path, ["fog", "snow", "spatter"], labels_per_block=False)
    data = load_cifar_c(tmp_path, corruptions=["snow", "fog"])
    assert list(data) == [(name, s) for name in ("snow", "fog") for s in range(1, 6)]
    images, labels = data[("snow", 4)]
    assert images.shape == (4, 8, 8, 3) and np.all(images == 14)
    np.testing.assert_array_equal(labels, [0, 1, 0, 1])
    assert load_corrupted(tmp_path, ["spatter"])[("spatter", 2)][0][0, 0, 0, 0] == 22


def test_load_cifar_c_requires_the_benchmark_by_default(tmp_path):
    write_cifar_c(tmp_path, ["fog"])
    with pytest.raises(ValueError, match=f"{tmp_path / 'gaussian_noise.npy'} is missing"):
        load_cifar_c(tmp_path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: np.save(root / "fog.npy", np.zeros((5, 8, 8, 1), np.uint8)), r"fog.npy has shape \(5, 8, 8, 1\)"),
        (lambda root: np.save(root / "fog.npy", np.zeros((20, 8, 8, 3), np.float32)), "fog.npy holds float32"),
        (lambda root: os.truncate(root / "fog.npy", 300), "fog.npy is 300 bytes, expected"),
        (lambda root: (root / "fog.npy").write_bytes(b"not numpy"), "fog.npy is not a readable .npy file"),
        (lambda root: np.save(root / "labels.npy", np.zeros(7, np.int64)), "labels.npy has 7 labels for 20 images"),
        (lambda root: (root / "labels.npy").unlink(), "labels.npy is missing"),
    ],
)
def test_load_cifar_c_names_the_bad_path(tmp_path, damage, message):
    write_cifar_c(tmp_path, ["fog"])
    damage(tmp_path)
    with pytest.raises(ValueError, match=message):
        load_cifar_c(tmp_path, ["fog"])


def test_loader_rejects_unknown_corruptions_and_unknown_layouts(tmp_path):
    write_cifar_c(tmp_path / "c", ["fog"])
    with pytest.raises(ValueError, match="unknown corruptions \\['haze'\\]; allowed: gaussian_noise"):
        load_cifar_c(tmp_path / "c", ["haze"])
    with pytest.raises(ValueError, match="is neither a CIFAR-C folder"):
        load_corrupted(tmp_path)


# ------------------------------------------------------------------------------------------ ImageNet-C loader
def write_imagenet_c(root: Path, severities=(1, 2, 3, 4, 5), size=(224, 224)) -> None:
    for severity in severities:
        for wnid, value in (("n02", 200), ("n01", 50)):  # written out of order: labels follow sorted wnids
            folder = root / "fog" / str(severity) / wnid
            folder.mkdir(parents=True)
            Image.new("RGB", size, (value, value, value)).save(folder / "ILSVRC2012_val_1.JPEG", quality=95)


def test_load_imagenet_c_uses_sorted_wnids_and_keeps_224_images(tmp_path):
    write_imagenet_c(tmp_path)
    data = load_imagenet_c(tmp_path, ["fog"])
    images, labels = data[("fog", 3)]
    assert len(images) == 2 and images.shape == (2, 224, 224, 3)
    np.testing.assert_array_equal(labels, [0, 1])  # n01 -> 0, n02 -> 1
    batch = images[0:2]
    assert batch.dtype == np.uint8 and abs(int(batch[0].mean()) - 50) <= 2 and abs(int(batch[1].mean()) - 200) <= 2
    stored = np.asarray(Image.open(tmp_path / "fog" / "3" / "n01" / "ILSVRC2012_val_1.JPEG").convert("RGB"))
    np.testing.assert_array_equal(batch[0], stored)  # 224 px images are used as they are
    relabelled = load_imagenet_c(tmp_path, ["fog"], class_names=["n02", "x", "n01"])
    np.testing.assert_array_equal(relabelled[("fog", 1)][1], [2, 0])


def test_load_imagenet_c_resizes_other_sizes_and_names_bad_paths(tmp_path):
    write_imagenet_c(tmp_path / "big", size=(300, 260))
    assert load_imagenet_c(tmp_path / "big", ["fog"])[("fog", 1)][0][0:2].shape == (2, 224, 224, 3)

    write_imagenet_c(tmp_path / "partial", severities=(1, 2, 3, 4))
    with pytest.raises(ValueError, match=f"{tmp_path / 'partial' / 'fog' / '5'} is missing"):
        load_imagenet_c(tmp_path / "partial", ["fog"])

    write_imagenet_c(tmp_path / "broken")
    bad_file = tmp_path / "broken" / "fog" / "2" / "n02" / "ILSVRC2012_val_1.JPEG"
    bad_file.write_bytes(b"\xff\xd8 not a jpeg")
    images, _ = load_imagenet_c(tmp_path / "broken", ["fog"])[("fog", 2)]
    with pytest.raises(ValueError, match=f"{bad_file} is unreadable"):
        images[0:2]


# ------------------------------------------------------------------------------------------ generation (Ray)
def test_generated_set_round_trips_labels_and_severities(ray_session, tmp_path):
    images, labels = tiny_images(7)
    out = generate_corrupted_set(images, labels, tmp_path / "set", corruptions=["gaussian_noise", "frost"], seed=3, chunk_size=3, progress=False)
    assert np.load(out / "gaussian_noise.npy", mmap_mode="r").shape == (35, 16, 16, 3)
    np.testing.assert_array_equal(np.load(out / "labels.npy"), np.tile(labels, 5))  # the released layout
    data = load_cifar_c(out, ["gaussian_noise", "frost"])
    for (name, severity), (corrupted, block_labels) in data.items():
        np.testing.assert_array_equal(corrupted, corrupt(images, name, severity, seed=3), err_msg=f"{name} {severity}")
        np.testing.assert_array_equal(block_labels, labels)
    assert not list(out.glob(".*"))  # no temporary left behind

    # A rerun reuses every file; another seed or other images in the same folder is refused.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    generate_corrupted_set(images, labels, out, corruptions=["gaussian_noise", "frost"], seed=3, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(ValueError, match="generated from other images or another seed"):
        generate_corrupted_set(images, labels, out, corruptions=["frost"], seed=4, progress=False)
    with pytest.raises(ValueError, match="generated from other images or another seed"):
        generate_corrupted_set(images[::-1].copy(), labels, out, corruptions=["frost"], seed=3, progress=False)


def test_generation_refuses_a_folder_holding_another_set(ray_session, tmp_path):
    write_cifar_c(tmp_path, ["fog"])
    images, labels = tiny_images(4, size=8)
    with pytest.raises(ValueError, match="holds .npy files but no generation.json"):
        generate_corrupted_set(images, labels, tmp_path, corruptions=["fog"], progress=False)


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from study.corrupted_sets import NpyWriter as _NpyWriter

    writer = _NpyWriter(Path(sys.argv[1]) / "gaussian_noise.npy", (35, 16, 16, 3))
    writer.write(0, np.full((7, 16, 16, 3), 7, np.uint8))
    print("half written", flush=True)
    time.sleep(120)
    writer.write(7, np.full((28, 16, 16, 3), 7, np.uint8))
    writer.commit()
    """
)


def test_a_killed_generation_leaves_nothing_a_rerun_trusts(ray_session, tmp_path):
    images, labels = tiny_images(7)
    out = generate_corrupted_set(images, labels, tmp_path, corruptions=["frost"], seed=1, progress=False)

    # A generation process killed in the middle of writing gaussian_noise.npy.
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "half written"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    assert not (out / "gaussian_noise.npy").exists()
    assert [p.name for p in out.glob(".gaussian_noise.npy.*.tmp")], "the killed writer left no temporary file"
    with pytest.raises(ValueError, match="gaussian_noise.npy is missing"):
        load_cifar_c(out, ["gaussian_noise"])

    # Damage under a final name (e.g. a copy cut short) is not trusted either.
    os.truncate(out / "frost.npy", 1000)

    generate_corrupted_set(images, labels, out, corruptions=["frost", "gaussian_noise"], seed=1, progress=False)
    assert not list(out.glob(".*.tmp"))
    data = load_cifar_c(out, ["frost", "gaussian_noise"])
    for name in ("frost", "gaussian_noise"):
        np.testing.assert_array_equal(data[(name, 5)][0], corrupt(images, name, 5, seed=1))


# ------------------------------------------------------------------------------------------ checkpoints (Ray)
def save_tiny_checkpoint(folder: Path, method: str, seed: int) -> Path:
    """A model.pt in the documented export format (study.checkpoint), built by hand."""
    from study.config import Config
    from study.models import Classifier, build_encoder

    torch.manual_seed(seed)
    config = Config.from_dict({"method": method, "dataset": "digits", "model": "resnet18", "width": 0.125})
    model = Classifier(build_encoder("resnet18", width=0.125, stem="cifar", image_size=16), 3)
    folder.mkdir(parents=True)
    payload = {
        "config": config.to_dict(), "classifier": model.state_dict(), "num_classes": 3, "image_size": 16,
        "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "test_top1": 33.3,
    }  # fmt: skip
    torch.save(payload, folder / "model.pt")
    return folder / "model.pt"


def test_evaluate_checkpoints_writes_the_robustness_table(ray_session, tmp_path):
    from analysis.robustness import corruption_summary
    from study.checkpoint import load_classifier

    images, labels = tiny_images(9)
    corrupted = generate_corrupted_set(images, labels, tmp_path / "set", corruptions=["fog", "pixelate"], progress=False)
    checkpoints = [save_tiny_checkpoint(tmp_path / "trial_ce", "ce", 0), save_tiny_checkpoint(tmp_path / "trial_supcon", "supcon", 1)]

    with pytest.raises(ValueError, match="gaussian_noise.npy is missing"):  # the 15 are required by default
        evaluate_checkpoints(checkpoints, corrupted=corrupted, progress=False)
    table = evaluate_checkpoints(
        checkpoints, corrupted=corrupted, corruptions=["fog", "pixelate"], batch_size=4, output=tmp_path / "out", progress=False
    )

    assert list(table.columns) == list(ROBUSTNESS_COLUMNS)
    assert set(table["profile"]) == {"cifar"}  # generated from 16-px images: the `cifar` profile by default
    assert len(table) == 2 * (1 + 2 * 5)
    assert dict(table.groupby("model")["method"].first()) == {"trial_ce": "ce", "trial_supcon": "supcon"}
    clean = table[table["corruption"] == "clean"]
    assert set(clean["severity"]) == {0} and set(table["n"]) == {9}
    # Each row is what evaluate_model gives for that checkpoint and split.
    model, metadata = load_classifier(checkpoints[1])
    expected = evaluate_model(model, corrupt(images, "fog", 2), labels, mean=metadata["mean"], std=metadata["std"])
    row = table[(table["model"] == "trial_supcon") & (table["corruption"] == "fog") & (table["severity"] == 2)].iloc[0]
    assert row["error"] == pytest.approx(expected["error"]) and row["ece"] == pytest.approx(expected["ece"], abs=1e-6)
    clean_expected = evaluate_model(model, images, labels, mean=metadata["mean"], std=metadata["std"])
    assert clean[clean["model"] == "trial_supcon"]["error"].iloc[0] == pytest.approx(clean_expected["error"])

    on_disk = pd.read_parquet(tmp_path / "out" / "robustness.parquet")
    pd.testing.assert_frame_equal(on_disk, table)
    assert len(pd.read_csv(tmp_path / "out" / "robustness.csv")) == len(table)
    summary = corruption_summary(on_disk, baseline="trial_ce")
    assert summary.set_index("model").loc["trial_ce", "mCE"] == pytest.approx(100.0)

    with pytest.raises(ValueError, match="does not exist"):
        evaluate_checkpoints([tmp_path / "nowhere" / "model.pt"], corrupted=corrupted, progress=False)


def test_clean_rows_come_from_the_checkpoints_dataset_without_clean_npy(ray_session, tmp_path):
    """A released-style folder (no clean.npy): the clean rows use the checkpoint's own test split."""
    from study.data import load_dataset

    write_cifar_c(tmp_path / "released", ["fog"], n=4, size=16)
    checkpoint = save_tiny_checkpoint(tmp_path / "trial", "ce", 0)
    table = evaluate_checkpoints([checkpoint], corrupted=tmp_path / "released", corruptions=["fog"], progress=False)
    digits_test = len(load_dataset("digits").test)
    assert table.loc[table["corruption"] == "clean", "n"].tolist() == [digits_test]
    assert set(table["profile"]) == {"external"}  # not generated here: its profile is unknown
    assert set(table.loc[table["corruption"] == "fog", "n"]) == {4}
    no_clean = evaluate_checkpoints([checkpoint], corrupted=tmp_path / "released", corruptions=["fog"], clean=False, progress=False)
    assert "clean" not in set(no_clean["corruption"])


def test_run_robustness_generates_the_datasets_corrupted_copy_then_evaluates(ray_session, tmp_path):
    from study.robustness import run_robustness

    checkpoint = save_tiny_checkpoint(tmp_path / "trial", "supcon", 0)
    table = run_robustness(
        {"t0": checkpoint}, data_root=tmp_path / "data", corruptions=["contrast"], output=tmp_path / "r.parquet", progress=False
    )
    generated = tmp_path / "data" / "corrupted" / "digits-16px-cifar-seed0"  # the profile is part of the key
    assert (generated / "contrast.npy").is_file() and (generated / "clean.npy").is_file()
    assert json.loads((generated / "generation.json").read_text())["profile"] == "cifar"
    assert set(table["profile"]) == {"cifar"}
    assert sorted(set(zip(table["corruption"], table["severity"]))) == [("clean", 0)] + [("contrast", s) for s in range(1, 6)]
    assert table["model"].unique().tolist() == ["t0"] and (tmp_path / "r.csv").is_file()


def test_study_checkpoints_lists_completed_trials_with_a_classifier(tmp_path):
    from study.robustness import study_checkpoints

    (tmp_path / "t1").mkdir()
    pd.DataFrame(
        {
            "trial_id": ["t1", "t2", "t3", "t4"],
            "status": ["completed", "diverged", "completed", "completed"],
            "checkpoint": ["t1/model.pt", "t2/model.pt", "", str(tmp_path / "t4" / "model.pt")],
        }
    ).to_parquet(tmp_path / "results.parquet")
    assert study_checkpoints(tmp_path) == {"t1": tmp_path / "t1" / "model.pt", "t4": tmp_path / "t4" / "model.pt"}
    with pytest.raises(ValueError, match="results.parquet is missing"):
        study_checkpoints(tmp_path / "t1")


# ------------------------------------------------------------------------------------------ corruption profiles
def test_a_cached_imagenet_profile_set_is_not_reused_for_a_cifar_request(ray_session, tmp_path):
    images, labels = tiny_images(5)
    out = generate_corrupted_set(images, labels, tmp_path / "set", corruptions=["contrast"], profile="imagenet", progress=False)
    record = json.loads((out / "generation.json").read_text())
    assert record["profile"] == "imagenet"
    np.testing.assert_array_equal(load_cifar_c(out, ["contrast"])[("contrast", 2)][0], corrupt(images, "contrast", 2, profile="imagenet"))
    with pytest.raises(ValueError, match="its profile is 'imagenet', this request's 'cifar'"):
        generate_corrupted_set(images, labels, out, corruptions=["contrast"], profile="cifar", progress=False)
    with pytest.raises(ValueError, match="its profile is 'imagenet', this request's 'cifar'"):  # None: by size, cifar
        generate_corrupted_set(images, labels, out, corruptions=["contrast"], progress=False)

    # A folder generated before profiles were recorded holds ImageNet-C constants: reused only for `imagenet`.
    del record["profile"]
    (out / "generation.json").write_text(json.dumps(record))
    before = (out / "contrast.npy").stat().st_mtime_ns
    generate_corrupted_set(images, labels, out, corruptions=["contrast"], profile="imagenet", progress=False)
    assert (out / "contrast.npy").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="differs in \\['profile'\\]"):
        generate_corrupted_set(images, labels, out, corruptions=["contrast"], profile="cifar", progress=False)

    # The dataset cache: one folder per profile, `<dataset>-<size>px-<profile>-seed<seed>`.
    cached = corrupted_set_for_dataset("digits", data_root=tmp_path / "data", corruptions=["contrast"], profile="imagenet", progress=False)
    fresh = corrupted_set_for_dataset("digits", data_root=tmp_path / "data", corruptions=["contrast"], progress=False)
    assert (cached.name, fresh.name) == ("digits-16px-imagenet-seed0", "digits-16px-cifar-seed0")
    clean = np.load(fresh / "clean.npy")
    np.testing.assert_array_equal(np.load(fresh / "contrast.npy")[: len(clean)], corrupt(clean, "contrast", 1, profile="cifar"))
    with pytest.raises(ValueError, match="unknown corruption profile 'tiny'; allowed: cifar, imagenet"):
        corrupted_set_for_dataset("digits", data_root=tmp_path / "data", profile="tiny", progress=False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["robustness", "--checkpoint", "a/model.pt", "--corruption-profile", "tiny"],
         "--corruption-profile 'tiny': unknown profile; allowed: cifar, imagenet"),
        (["quickstart", "--corruption-profile", "CIFAR"], "--corruption-profile 'CIFAR': unknown profile; allowed: cifar, imagenet"),
        (["robustness", "--checkpoint", "a/model.pt", "--corrupted", ".", "--corruption-profile", "cifar"],
         "--corruption-profile cifar applies to generated sets only; --corrupted . is used as it is"),
    ],
)
def test_the_corruption_profile_flag_is_validated_before_anything_runs(capsys, tmp_path, monkeypatch, argv, message):
    import run_study

    monkeypatch.chdir(tmp_path)
    assert run_study.main([*argv, *(["--storage", str(tmp_path / "runs")] if argv[0] == "quickstart" else [])]) == 2
    error = capsys.readouterr().err
    assert error == f"error: {message}\n"
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("profile", ["cifar", "imagenet", None])
def test_the_report_says_which_profile_made_the_set_and_whether_it_compares(tmp_path, profile):
    """The robustness table's profile column reaches the report; tables written before it (no column) are
    still read, and said to be of unknown profile."""
    from analysis.report import build_report
    from test_plots import synthetic_robustness
    from test_report import write_study

    table = synthetic_robustness()
    if profile is not None:
        table["profile"] = profile
    text = " ".join(build_report(write_study(tmp_path / "study", robustness=table), n_boot=100)[1].read_text().split())
    expected = {
        "cifar": "generated with the `cifar` corruption profile, the per-severity constants of make_cifar_c.py",
        "imagenet": "generated with the `imagenet` corruption profile (the ImageNet-C constants), which is not comparable "
                    "with the published CIFAR-10-C/100-C",
        None: "the robustness table does not record its corruption profile",
    }[profile]
    assert expected in text
    assert ("comparable with published CIFAR-10-C/100-C numbers" in text) == (profile == "cifar")
    assert "mCE table" in text  # the old table (no profile column) is read as before
