"""One concept per module: the modules that read corrupted sets, evaluate a model, or render a report's
document import none of the heavy machinery they do not need (checked in a fresh interpreter each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each case imports in a fresh interpreter (a subprocess), seconds apiece: the slow tier.
pytestmark = pytest.mark.slow
HEAVY = ("ray", "torch", "matplotlib", "analysis.plots", "analysis.report")


def imported_after(statement: str) -> set[str]:
    """Which of HEAVY a fresh interpreter holds after running `statement`."""
    code = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        # Reading a corrupted set (either layout) needs neither Ray nor torch.
        ("import study.corrupted_sets", {"ray", "torch"}),
        ("from study.corrupted_sets import load_corrupted, load_cifar_c, load_imagenet_c, NpyWriter", {"ray", "torch"}),
        # Evaluating a model on arrays is PyTorch, without Ray.
        ("import study.evaluate", {"ray"}),
        ("from study.evaluate import evaluate_model, expected_calibration_error", {"ray"}),
        # The atomic writer every stage shares is cheap to import.
        ("import study.storage", {"ray", "torch", "matplotlib"}),
        # The report's document model renders HTML and Markdown without the figures or the builder.
        ("import analysis.document", {"ray", "torch", "matplotlib", "analysis.plots", "analysis.report"}),
        # The robustness and stability tables draw nothing.
        ("import analysis.robustness", {"ray", "torch", "matplotlib", "analysis.plots"}),
    ],
)
def test_module_imports_nothing_it_does_not_need(statement, forbidden):
    assert not imported_after(statement) & forbidden


def test_the_ray_side_is_where_ray_is():
    """Ray lives in study.robustness (generation and evaluation as tasks), which the light modules feed."""
    assert "ray" in imported_after("import study.robustness")
