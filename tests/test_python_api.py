"""The Python API for notebooks: what `study` and `analysis` export, what importing them costs, the space
argument of `plan`/`run_sweep`, and the README's "From Python" block, run as written."""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import analysis
import study
from study.config import ConfigError
from test_plots import synthetic_results, synthetic_robustness
from test_report import write_study

ROOT = Path(__file__).resolve().parent.parent

# The functions the README's "From Python" section names; each docstring shows an example.
WITH_EXAMPLES = {
    study: ["run_training", "plan", "run_sweep", "run_robustness"],
    analysis: ["build_report", "load_study", "corruption_summary", "severity_table"],
}


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in ('torch', 'ray', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.slow  # fresh interpreters (subprocesses)
def test_importing_the_packages_is_cheap():
    assert _imported_after("import analysis") == set()
    assert _imported_after("import study") == set()
    assert _imported_after("from study import Config, ConfigError") == set()
    # The analysis modules themselves run without torch or Ray (a copied results folder on a laptop).
    assert not _imported_after("import analysis.report, analysis.stability, analysis.robustness") & {"torch", "ray"}
    assert not _imported_after("from analysis import *") & {"torch", "ray"}


@pytest.mark.parametrize("package", [study, analysis], ids=lambda p: p.__name__)
def test_every_exported_name_resolves_and_is_documented(package):
    for name in package.__all__:
        value = getattr(package, name)
        assert getattr(value, "__name__", name) == name, f"{package.__name__}.{name} is {value!r}"
        assert inspect.getdoc(value), f"{package.__name__}.{name} has no docstring"
        assert name in dir(package)
    for name in WITH_EXAMPLES[package]:
        assert "Example::" in inspect.getdoc(getattr(package, name)), f"{package.__name__}.{name}: no example"
    assert "Example::" in (package.__doc__ or "")
    with pytest.raises(AttributeError):
        getattr(package, "no_such_name")


def test_exports_are_the_real_functions():
    from analysis.report import build_report
    from analysis.robustness import corruption_summary
    from analysis.stability import spread_difference, stability_table
    from study.launch import run_training
    from study.robustness import run_robustness
    from study.sweep import run_sweep

    assert (study.run_sweep, study.run_training, study.run_robustness) == (run_sweep, run_training, run_robustness)
    assert (analysis.build_report, analysis.corruption_summary) == (build_report, corruption_summary)
    assert (analysis.stability_table, analysis.spread_difference) == (stability_table, spread_difference)
    # `study.train` stays the training-loop module (tests and tools patch it); its `train` is the loop.
    import study.train as loop

    assert inspect.ismodule(loop) and study.train is loop and callable(loop.train)


# ------------------------------------------------------------------------ the space argument
def test_plan_takes_a_name_a_path_or_a_space(tmp_path, monkeypatch):
    from study import SweepOptions, load_space, plan

    monkeypatch.chdir(tmp_path)
    options = SweepOptions(storage=str(tmp_path / "runs"))
    shipped = ROOT / "search_spaces" / "quick.yaml"
    (tmp_path / "my_space").write_text(shipped.read_text())
    plans = [plan(space, {"epochs": 1}, options)  # a Path is a path even without a .yaml suffix or a folder
             for space in ("quick", str(shipped), shipped, load_space("quick"), Path("my_space"))]
    assert {p.num_trials for p in plans} == {8}
    assert len({tuple(t.trial for t in p.trials) for p in plans}) == 1
    assert {p.space.name for p in plans} == {"quick"}

    # An object changed in Python runs as changed (enumerated designs expand it on the driver).
    fewer = dataclasses.replace(load_space("quick"), methods=("ce",))
    assert plan(fewer, {"epochs": 1}, options).num_trials == 4

    with pytest.raises(ConfigError, match="got int"):
        plan(3, {}, options)
    with pytest.raises(ConfigError, match="no such space file"):
        plan(tmp_path / "missing.yaml", {}, options)


def test_a_search_space_object_must_match_its_file():
    """Search trials rebuild the space from its file's text: an edited object would silently not apply."""
    from study import load_space
    from study.sweep import resolve_space

    space = load_space("lr_search")
    assert resolve_space(space) is space
    with pytest.raises(ConfigError, match="differs from its file"):
        resolve_space(dataclasses.replace(space, num_samples=space.num_samples + 1))
    with pytest.raises(ConfigError, match="no such space file"):
        resolve_space(dataclasses.replace(space, path=Path("/nonexistent/space.yaml")))


# ------------------------------------------------------------------------ the README block
def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    titles = [section.splitlines()[0].strip() for section in sections[1:]]
    assert "From Python" in titles and titles.index("From Python") == titles.index("Usage") + 1
    section = sections[1 + titles.index("From Python")]
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.M | re.S)
    assert len(blocks) == 1, "the From Python section holds one python block"
    return blocks[0]


def test_readme_python_block_runs(tmp_path, monkeypatch, capsys):
    """The block runs as written, in a fresh folder. Its two heavy calls (a Ray Tune sweep and a corruption
    evaluation, minutes each) are replaced by stand-ins that check their arguments against the real
    signatures and validation (`plan`), then write the tables those calls write; everything else (configs,
    spaces, the dry-run plan, loading, the stability and robustness summaries, the report) is real."""
    from study import SweepOptions, plan
    from study.robustness import run_robustness as real_run_robustness
    from study.sweep import run_sweep as real_run_sweep

    def run_sweep(space, overrides=None, options=SweepOptions()):
        inspect.signature(real_run_sweep).bind(space, overrides, options)
        planned = plan(space, overrides, options)
        results = synthetic_results()  # a one-at-a-time study, 3 seeds; named as the sweep names trials
        results["trial_id"] = results["trial_id"].str.replace(r"^(supcon|ce)_00_s(\d)$", r"\1-base-seed\2",
                                                              regex=True)
        results["checkpoint"] = [f"{planned.study_dir}/train/{t}/model.pt" if c else ""
                                 for t, c in zip(results["trial_id"], results["checkpoint"])]
        return write_study(planned.study_dir.local_path, results=results)

    def run_robustness(checkpoints, **kwargs):
        inspect.signature(real_run_robustness).bind(checkpoints, **kwargs)
        assert {"supcon-base-seed0", "ce-base-seed0"} <= set(checkpoints)
        table = synthetic_robustness(models=(("supcon-base-seed0", "supcon"), ("ce-base-seed0", "ce")))
        table.to_parquet(kwargs["output"], index=False)
        return table

    monkeypatch.setattr(study, "run_sweep", run_sweep)
    monkeypatch.setattr(study, "run_robustness", run_robustness)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(readme_block(), str(ROOT / "README.md"), "exec"), namespace)

    out = capsys.readouterr().out
    assert "8 trials" in out and "supcon less spread" in out
    assert namespace["html_path"] == tmp_path / "runs" / "quick-2epochs" / "report.html"
    assert namespace["html_path"].is_file() and namespace["md_path"].is_file()
    assert namespace["config"].epochs == 10
