"""Every plot function draws a non-empty PNG (and SVG) from a small table, and skips (None) without data."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from analysis import plots
from analysis.robustness import severity_curves
from analysis.stability import hyperparameter_importance

BASE = {"augmentation": "autoaugment", "optimizer": "sgd", "lr": 0.5, "temperature": 0.1, "batch_size": 256,
        "randaugment_m": 9}
FAMILIES = {
    "augmentation": ["randaugment", "simaugment", "stacked_randaugment"],
    "optimizer": ["lars", "rmsprop"],
    "lr": [0.05, 0.1, 1.0, 2.0],
    "temperature": [0.01, 0.05, 0.5, 1.0],
    "batch_size": [64, 128, 512],
    "randaugment_m": [3, 6, 12],
}


def _row(trial_id, method, varied, values, seed, top1, status="completed", dataset="cifar10", error=""):
    return {
        "study": "synthetic", "trial_id": trial_id, "method": method, "varied": varied, **values, "seed": seed,
        "status": status, "epochs_run": 2 if status == "completed" else 1,
        "val_top1": top1 + 0.3 if status in ("completed", "stopped_early") else math.nan,
        "val_top5": 99.0, "test_top1": top1 if status == "completed" else math.nan, "test_top5": 99.5,
        "wall_seconds": 12.5, "checkpoint": f"/runs/{trial_id}/model.pt" if status == "completed" else "",
        "error": error, "config": json.dumps({"method": method, "dataset": dataset, **values, "seed": seed}),
    }


def synthetic_results(seeds=(0, 1, 2), rng_seed=0, dataset="cifar10") -> pd.DataFrame:
    """A one-at-a-time study of both methods over six hyperparameters: SupCon spreads less than CE, SupCon
    diverges at temperature 0.01, and a few trials failed, stopped early or are still running."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for method, penalty in (("supcon", 1.0), ("ce", 3.0)):
        settings = [("base", dict(BASE))]
        for family, values in FAMILIES.items():
            if family == "temperature" and method == "ce":
                continue
            settings += [(family, {**BASE, family: v}) for v in values]
        for k, (varied, values) in enumerate(settings):
            for seed in seeds:
                mean = (91.0 if method == "supcon" else 89.0) - penalty * (k % 4)
                status = "diverged" if method == "supcon" and values["temperature"] == 0.01 else "completed"
                rows.append(_row(f"{method}_{k:02d}_s{seed}", method, varied, values, seed,
                                 mean + 0.4 * rng.standard_normal(), status, dataset))
    rows.append(_row("ce_fail", "ce", "lr", {**BASE, "lr": 5.0}, 0, math.nan, "failed", dataset,
                     error="RuntimeError: CUDA out of memory <tried to allocate 2 GiB> & more"))
    rows.append(_row("ce_asha", "ce", "lr", {**BASE, "lr": 5.0}, 1, 40.0, "stopped_early", dataset))
    rows.append(_row("supcon_pending", "supcon", "lr", {**BASE, "lr": 5.0}, 0, math.nan, "pending", dataset))
    return pd.DataFrame(rows)


def synthetic_pairs(rng_seed=0) -> pd.DataFrame:
    """Grid studies of contrastive-stage x linear-stage optimizers and augmentations for SupCon."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    optimizers = ["lars", "rmsprop", "sgd"]
    augmentations = ["autoaugment", "randaugment", "simaugment"]
    for i, first in enumerate(optimizers):
        for j, second in enumerate(optimizers):
            for seed in (0, 1):
                rows.append(_row(f"opt_{first}_{second}_{seed}", "supcon", "grid",
                                 {"optimizer": first, "linear_optimizer": second, "augmentation": "autoaugment",
                                  "linear_augmentation": "autoaugment"}, seed, 75 + i - j + rng.standard_normal()))
    for i, first in enumerate(augmentations):
        for j, second in enumerate(augmentations):
            rows.append(_row(f"aug_{first}_{second}", "supcon", "grid",
                             {"optimizer": "lars", "linear_optimizer": "rmsprop", "augmentation": first,
                              "linear_augmentation": second}, 0, 76 - i + 0.5 * j))
    return pd.DataFrame(rows)


CORRUPTIONS = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression", "speckle_noise"]


def synthetic_robustness(models=(("supcon_00_s0", "supcon"), ("supcon_00_s1", "supcon"), ("ce_00_s0", "ce")),
                         rng_seed=0) -> pd.DataFrame:
    """A robustness table: clean and 16 corruptions x 5 severities per model, SupCon slightly more robust."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for model, method in models:
        clean = 0.08 if method == "supcon" else 0.10
        slope = 0.06 if method == "supcon" else 0.07
        rows.append({"model": model, "method": method, "corruption": "clean", "severity": 0, "error": clean,
                     "ece": 0.02, "n": 1000})
        for c, corruption in enumerate(CORRUPTIONS):
            for severity in range(1, 6):
                error = min(0.95, clean + slope * severity * (1 + 0.05 * c) + 0.01 * rng.random())
                rows.append({"model": model, "method": method, "corruption": corruption, "severity": severity,
                             "error": error, "ece": 0.02 + 0.015 * severity, "n": 1000})
    return pd.DataFrame(rows)


def assert_images(paths, name):
    assert paths is not None, f"{name} was skipped"
    assert [p.suffix for p in paths] == [".png", ".svg"]
    png, svg = paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    assert not list(png.parent.glob(".*tmp*")), "temporary files left behind"


@pytest.mark.parametrize("policy", ["chance", "apart"])
def test_stability_plots(tmp_path, policy):
    results = synthetic_results()
    for function in (plots.plot_stability_boxes, plots.plot_accuracy_vs_lr, plots.plot_accuracy_vs_temperature,
                     plots.plot_accuracy_vs_batch_size, plots.plot_accuracy_vs_randaugment_magnitude):
        assert_images(function(results, tmp_path / policy, diverged=policy), function.__name__)


def test_pair_heatmaps(tmp_path):
    pairs = synthetic_pairs()
    assert_images(plots.plot_optimizer_pairs(pairs, tmp_path), "optimizer pairs")
    assert_images(plots.plot_augmentation_pairs(pairs, tmp_path), "augmentation pairs")
    table = plots.pair_table(pairs, "optimizer", "linear_optimizer")["supcon"]
    assert table.shape == (3, 3)
    # Cell (lars, lars) is the mean of its two seeds.
    seeds = pairs.loc[pairs["trial_id"].str.startswith("opt_lars_lars"), "test_top1"]
    assert table.loc["lars", "lars"] == pytest.approx(seeds.mean())


def test_importance_plot(tmp_path):
    importance = hyperparameter_importance(synthetic_results())
    assert set(importance["method"]) == {"supcon", "ce"}
    assert_images(plots.plot_importance(importance, tmp_path), "importance")


def test_robustness_plots(tmp_path):
    robustness = synthetic_robustness()
    for value in ("top1", "ece"):
        assert_images(plots.plot_severity(robustness, tmp_path, value=value), f"severity {value}")
    assert_images(plots.plot_corruption_errors(robustness, tmp_path, baseline="ce_00_s0"), "CE bars")
    assert_images(plots.plot_mce(robustness, tmp_path, reference={"paper CE R50": (68.6, 96.2)}), "mCE")
    curves = severity_curves(robustness, "top1")
    assert list(curves.columns) == ["method", "clean", "1", "2", "3", "4", "5"]
    assert curves.loc["ce_00_s0", "clean"] == pytest.approx(90.0)
    with pytest.raises(ValueError, match="top1 \\| error \\| ece"):
        plots.plot_severity(robustness, tmp_path, value="accuracy")


def test_plots_skip_without_data(tmp_path):
    results = synthetic_results()
    only_lr = results.loc[results["varied"].isin(["base", "lr"])]
    assert plots.plot_accuracy_vs_temperature(only_lr, tmp_path) is None
    assert plots.plot_accuracy_vs_lr(only_lr, tmp_path) is not None
    assert plots.plot_optimizer_pairs(results, tmp_path) is None  # no linear_optimizer column
    assert plots.plot_stability_boxes(results.iloc[0:0], tmp_path) is None
    assert plots.plot_importance(pd.DataFrame(), tmp_path) is None
    assert plots.plot_severity(None, tmp_path) is None
    incomplete = synthetic_robustness().query("severity != 5")
    assert plots.plot_corruption_errors(incomplete, tmp_path) is None
    assert not list(tmp_path.glob("accuracy_vs_temperature*"))


# ------------------------------------------------------------------------------------- legibility
STUDY_SIZE = 72  # trials of the paper_stability space: one model each in the robustness stage


def study_models(count=STUDY_SIZE):
    """`count` models with long ids like a sweep's (method, varied family, value, seed, trial id)."""
    values = ["stacked_randaugment", "rmsprop", "0.05", "1.0", "512", "12"]
    return [(f"{method}-paper_stability-cifar10-{values[i % 6]}-seed{i % 3}-trial_{i:05d}_a1b2c3", method)
            for i in range(count) for method in [("supcon", "ce")[i % 2]]]


@pytest.fixture
def drawn_figures(monkeypatch):
    """The figures the plot functions save, kept open for inspection."""
    figures = []
    save = plots.save_figure

    def keep(fig, out_dir, name):
        figures.append(fig)
        return save(fig, out_dir, name)

    monkeypatch.setattr(plots, "save_figure", keep)
    return figures


def overlapping_tick_labels(fig):
    """Pairs of tick labels (texts) whose drawn extents overlap, over every axes of `fig`.

    Each label is the rectangle its text fills, turned by its rotation: two labels of one rotation overlap
    when their rectangles do (rotated labels' axis-aligned extents overlap long before their text does);
    labels of different rotations are compared by their extents."""
    FigureCanvasAgg(fig)  # closed figures keep a bare canvas; draw them on Agg, as save_figure's PNG
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks():
                label = tick.label1
                if label.get_visible() and label.get_text() and low <= tick.get_loc() <= high:
                    extent = label.get_window_extent(renderer)
                    probe = fig.text(0, 0, label.get_text(), fontproperties=label.get_fontproperties())
                    upright = probe.get_window_extent(renderer)  # the text's own width and height
                    probe.remove()
                    labels.append((label.get_text(), label.get_rotation(), extent, upright.width, upright.height))

    def overlap(a, b):
        (_, rotation_a, extent_a, width_a, height_a), (_, rotation_b, extent_b, width_b, height_b) = a, b
        if rotation_a % 180 != rotation_b % 180:
            return extent_a.overlaps(extent_b)
        angle = np.radians(rotation_a)
        along, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
        shift = np.array([(extent_a.x0 + extent_a.x1) - (extent_b.x0 + extent_b.x1),
                          (extent_a.y0 + extent_a.y1) - (extent_b.y0 + extent_b.y1)]) / 2  # centre to centre
        return (abs(shift @ along) < (width_a + width_b) / 2) and (abs(shift @ across) < (height_a + height_b) / 2)

    return [(a[0], b[0]) for a, b in itertools.combinations(labels, 2) if overlap(a, b)]


def test_mce_chart_labels_72_long_model_ids_without_overlap(tmp_path, drawn_figures):
    models = study_models()
    robustness = synthetic_robustness(models)
    reference = {"paper SupCon R50": (60.4, 90.8), "paper CE R50": (68.6, 96.2)}
    assert_images(plots.plot_mce(robustness, tmp_path, reference=reference), "mCE")
    (fig,) = drawn_figures
    assert overlapping_tick_labels(fig) == []
    shown = [label.get_text() for label in fig.axes[0].get_yticklabels()]
    assert len(shown) == STUDY_SIZE + len(reference)
    for model, _ in models:  # every id in full, not cut
        assert any(text.startswith(model) for text in shown), model
    assert fig.get_figheight() > 15  # grows with the number of models

    few = synthetic_robustness(models[:3])
    plots.plot_mce(few, tmp_path / "few")
    assert overlapping_tick_labels(drawn_figures[-1]) == []
    assert drawn_figures[-1].get_figheight() < 5


def test_every_figure_stays_legible_at_study_size(tmp_path, drawn_figures):
    """The other plots label hyperparameter families, settings, corruptions or severities (one legend entry
    per method): none has a label per model or trial, so a 72-model study leaves their ticks apart too."""
    results = synthetic_results()
    assert results["trial_id"].nunique() > STUDY_SIZE
    robustness = synthetic_robustness(study_models())
    drawn = {
        "stability boxes": plots.plot_stability_boxes(results, tmp_path),
        "accuracy vs lr": plots.plot_accuracy_vs_lr(results, tmp_path),
        "accuracy vs temperature": plots.plot_accuracy_vs_temperature(results, tmp_path),
        "importance": plots.plot_importance(hyperparameter_importance(results), tmp_path),
        "optimizer pairs": plots.plot_optimizer_pairs(synthetic_pairs(), tmp_path),
        "severity": plots.plot_severity(robustness, tmp_path, value="top1"),
        "corruption errors": plots.plot_corruption_errors(robustness, tmp_path),
        "mCE": plots.plot_mce(robustness, tmp_path),
    }
    assert all(paths is not None for paths in drawn.values()), drawn
    for title, fig in zip(drawn, drawn_figures, strict=True):
        assert overlapping_tick_labels(fig) == [], title
