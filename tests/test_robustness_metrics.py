"""mCE, relative mCE, CE and severity tables of analysis.robustness, on hand-built tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.robustness import (
    ALEXNET_ERRORS,
    BENCHMARK_CORRUPTIONS,
    HELD_OUT_CORRUPTIONS,
    corruption_summary,
    severity_table,
)


def rows_for(model: str, errors: dict[str, float | list[float]], clean: float | None, method: str = "ce") -> list[dict]:
    """Robustness-table rows: one per severity of each corruption (a float = the same error at every
    severity), plus the clean row."""
    rows = []
    if clean is not None:
        rows.append(dict(model=model, method=method, corruption="clean", severity=0, error=clean, ece=0.01, n=100))
    for name, error in errors.items():
        by_severity = error if isinstance(error, list) else [error] * 5
        for severity, value in enumerate(by_severity, start=1):
            rows.append(dict(model=model, method=method, corruption=name, severity=severity, error=value, ece=0.02, n=100))
    return rows


def alexnet_like(scale: float = 1.0) -> dict[str, float]:
    return {name: ALEXNET_ERRORS[name] * scale for name in BENCHMARK_CORRUPTIONS}


def test_benchmark_names_match_the_corruption_suite():
    from study.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS

    assert BENCHMARK_CORRUPTIONS == CORRUPTIONS
    assert HELD_OUT_CORRUPTIONS == EXTRA_CORRUPTIONS
    assert ALEXNET_ERRORS["clean"] == 0.43478 and ALEXNET_ERRORS["gaussian_noise"] == 0.886428


def test_alexnet_against_itself_is_exactly_100():
    table = pd.DataFrame(rows_for("alexnet_copy", alexnet_like(), ALEXNET_ERRORS["clean"]))
    summary = corruption_summary(table)
    row = summary.iloc[0]
    assert row["mCE"] == 100.0 and row["relative_mCE"] == 100.0
    assert all(row[f"CE_{name}"] == 100.0 for name in BENCHMARK_CORRUPTIONS)
    assert row["n_corruptions"] == 15 and summary.attrs["mce_corruptions"] == list(BENCHMARK_CORRUPTIONS)
    assert "AlexNet" in summary.attrs["baseline_note"]


def test_half_the_baseline_errors_gives_mce_50_for_alexnet_and_model_baselines():
    table = pd.DataFrame(
        rows_for("half", alexnet_like(0.5), ALEXNET_ERRORS["clean"] / 2)
        + rows_for("full", alexnet_like(), ALEXNET_ERRORS["clean"])
    )
    by_alexnet = corruption_summary(table).set_index("model")
    assert by_alexnet.loc["half", "mCE"] == 50.0 and by_alexnet.loc["full", "mCE"] == 100.0
    assert by_alexnet.loc["half", "relative_mCE"] == pytest.approx(50.0)
    by_model = corruption_summary(table, baseline="full").set_index("model")
    assert by_model.loc["half", "mCE"] == 50.0 and by_model.loc["full", "mCE"] == 100.0
    assert "'full'" in corruption_summary(table, baseline="full").attrs["baseline_note"]


def test_ce_sums_over_severities_before_dividing():
    """CE_c = sum_s E / sum_s E_base: a ratio of sums, not a mean of per-severity ratios."""
    base = {"fog": [0.1, 0.2, 0.3, 0.4, 0.5]}
    model = {"fog": [0.2, 0.2, 0.2, 0.2, 0.2]}
    table = pd.DataFrame(rows_for("base", base, 0.05) + rows_for("m", model, 0.05))
    row = corruption_summary(table, baseline="base").set_index("model").loc["m"]
    assert row["CE_fog"] == pytest.approx(100 * 1.0 / 1.5)  # mean of ratios would be 100 * 1.2567
    assert row["mCE"] == pytest.approx(row["CE_fog"]) and row["n_corruptions"] == 1


def test_relative_mce_uses_clean_errors():
    errors = alexnet_like()
    table = pd.DataFrame(rows_for("low_clean", errors, 0.2) + rows_for("alexnet_clean", errors, ALEXNET_ERRORS["clean"]))
    summary = corruption_summary(table).set_index("model")
    # Same corrupted errors: same mCE; a lower clean error means a larger gap, so a larger relative mCE.
    assert summary.loc["low_clean", "mCE"] == summary.loc["alexnet_clean", "mCE"] == 100.0
    clean = ALEXNET_ERRORS["clean"]
    expected = 100 * np.mean([(e - 0.2) / (e - clean) for e in errors.values()])
    assert summary.loc["low_clean", "relative_mCE"] == pytest.approx(expected)
    assert summary.loc["low_clean", "relative_mCE"] > 100
    assert summary.loc["low_clean", "clean_error"] == pytest.approx(20.0)


def test_held_out_corruptions_never_enter_mce():
    held_out_terrible = {name: 0.99 for name in HELD_OUT_CORRUPTIONS}
    held_out_perfect = {name: 0.01 for name in HELD_OUT_CORRUPTIONS}
    base_rows = rows_for("base", {**alexnet_like(), **held_out_perfect}, 0.4)
    with_held_out = pd.DataFrame(base_rows + rows_for("m", {**alexnet_like(0.5), **held_out_terrible}, 0.3))
    without = pd.DataFrame(
        rows_for("base", alexnet_like(), 0.4) + rows_for("m", alexnet_like(0.5), 0.3)
    )
    for baseline in ("base", "alexnet"):
        a = corruption_summary(with_held_out, baseline=baseline).set_index("model").loc["m"]
        b = corruption_summary(without, baseline=baseline).set_index("model").loc["m"]
        assert a["mCE"] == b["mCE"] and a["relative_mCE"] == b["relative_mCE"] and a["n_corruptions"] == 15
    by_model = corruption_summary(with_held_out, baseline="base")
    assert {f"CE_{name}" for name in HELD_OUT_CORRUPTIONS} <= set(by_model.columns)
    by_alexnet = corruption_summary(with_held_out)  # AlexNet has no held-out numbers: no columns, said so
    assert not {f"CE_{name}" for name in HELD_OUT_CORRUPTIONS} & set(by_alexnet.columns)
    assert by_alexnet.attrs["without_baseline"] == list(HELD_OUT_CORRUPTIONS)


def test_mce_over_the_benchmark_corruptions_present():
    subset = {name: ALEXNET_ERRORS[name] / 2 for name in ("fog", "snow", "contrast")}
    summary = corruption_summary(pd.DataFrame(rows_for("m", subset, 0.3)))
    assert summary.loc[0, "mCE"] == 50.0 and summary.loc[0, "n_corruptions"] == 3
    assert summary.attrs["mce_corruptions"] == ["snow", "fog", "contrast"]  # canonical order
    assert [c for c in summary.columns if c.startswith("CE_")] == ["CE_snow", "CE_fog", "CE_contrast"]
    assert summary.loc[0, "method"] == "ce"


@pytest.mark.parametrize(
    "rows, baseline, message",
    [
        (rows_for("m", {"fog": 0.5}, 0.3), "resnet_ce", "baseline 'resnet_ce' is neither 'alexnet' nor a model"),
        (rows_for("m", {"fog": [0.5, 0.5, 0.5, 0.5]}, 0.3), "alexnet", r"severities \[1, 2, 3, 4\] of fog; needed: 1-5"),
        (rows_for("m", {"fog": 0.5}, None), "alexnet", "model 'm' has no clean row"),
        (rows_for("m", {"spatter": 0.5}, 0.3), "alexnet", "none of the 15 benchmark corruptions"),
        (rows_for("m", {"fog": 1.5}, 0.3), "alexnet", r"error=1.5 .* allowed: a fraction in \[0, 1\]"),
        (rows_for("m", {"fog": 0.5}, 0.3) * 2, "alexnet", "several rows for model 'm'"),
        (rows_for("m", {"fog": 0.5, "snow": 0.5}, 0.3) + rows_for("n", {"fog": 0.5}, 0.3), "alexnet", "model 'n' has severities \\[\\] of snow"),
        ([dict(model="m", corruption="fog", severity=6, error=0.1)], "alexnet", "severity 6 for 'fog'"),
        ([dict(model="m", corruption="fog", severity=1)], "alexnet", r"lacks columns \['error'\]"),
    ],
)
def test_bad_tables_raise_one_clear_line(rows, baseline, message):
    with pytest.raises(ValueError, match=message):
        corruption_summary(pd.DataFrame(rows), baseline=baseline)


def test_severity_table_averages_over_corruptions_per_severity():
    table = pd.DataFrame(
        rows_for("a", {"fog": [0.1, 0.2, 0.3, 0.4, 0.5], "snow": [0.3, 0.4, 0.5, 0.6, 0.7], "spatter": 0.9}, 0.05)
    )
    top1 = severity_table(table)
    assert list(top1.columns) == ["clean", 1, 2, 3, 4, 5]
    np.testing.assert_allclose(top1.loc["a"].to_numpy(float), [95, 80, 70, 60, 50, 40])  # spatter held out
    errors = severity_table(table, "error", corruptions=["spatter"])
    np.testing.assert_allclose(errors.loc["a"].to_numpy(float), [5, 90, 90, 90, 90, 90])
    ece = severity_table(table, "ece")
    np.testing.assert_allclose(ece.loc["a"].to_numpy(float), [0.01, 0.02, 0.02, 0.02, 0.02, 0.02])
    with pytest.raises(ValueError, match="unknown value 'accuracy'"):
        severity_table(table, "accuracy")
    with pytest.raises(ValueError, match=r"corruptions \['frost'\] are not in the robustness table"):
        severity_table(table, corruptions=["frost"])
