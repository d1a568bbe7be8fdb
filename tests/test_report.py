"""The report: built from synthetic study folders (complete, partial, broken), every section present,
table text escaped, and the HTML opens in real headless Chromium without console errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from test_plots import synthetic_pairs, synthetic_results, synthetic_robustness

from analysis.report import FIGURE_DIR, SECTIONS, build_report, load_study

CHROMIUM = Path("/usr/bin/chromium")


def write_study(directory: Path, *, results: pd.DataFrame | None = None, robustness: pd.DataFrame | None = None,
                info: dict | None = None) -> Path:
    """A study folder as the sweep and robustness stages leave it."""
    directory.mkdir(parents=True, exist_ok=True)
    if info is not False:
        info = info or {
            "space": "paper_stability", "design": "one_at_a_time", "dataset": "cifar10", "model": "resnet18",
            "width": 0.25, "epochs": 2, "linear_epochs": 1, "seeds": [0, 1, 2], "metric": "val_top1",
            "num_trials": 120, "hardware": {"platform": "Linux", "cpus": 2, "gpus": []},
            "started": "2025-01-01T00:00:00+00:00", "finished": "2025-01-01T00:09:30+00:00", "wall_seconds": 570.0,
        }
        (directory / "study.json").write_text(json.dumps(info))
    if results is not None:
        results.to_parquet(directory / "results.parquet", index=False)
        results.to_csv(directory / "results.csv", index=False)
    if robustness is not None:
        robustness.to_parquet(directory / "robustness.parquet", index=False)
    if results is not None and "history" not in str(info):
        history = pd.DataFrame([
            {"trial_id": t, "method": m, "stage": "ce" if m == "ce" else "contrastive", "epoch": e,
             "loss": 1.0 / (e + 1), "lr": 0.5, "val_top1": 80.0 + e, "val_top5": 99.0, "images_per_second": 1500.0 + e,
             "augment_fraction": 0.25, "epoch_seconds": 4.0}
            for t, m in zip(results["trial_id"], results["method"], strict=True) for e in range(2)])
        history.to_parquet(directory / "history.parquet", index=False)
    return directory


class _Text(HTMLParser):
    """Collects headings, image sources and external references of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self._in_heading = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h2", "h3"):
            self._in_heading = True
            self.headings.append("")
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)

    def handle_endtag(self, tag):
        if tag in ("h2", "h3"):
            self._in_heading = False

    def handle_data(self, data):
        if self._in_heading:
            self.headings[-1] += data


def parse(path: Path) -> _Text:
    parser = _Text()
    parser.feed(path.read_text())
    return parser


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, Path, Path]:
    study = write_study(tmp_path_factory.mktemp("study") / "paper_stability",
                        results=synthetic_results(), robustness=synthetic_robustness())
    html_path, md_path = build_report(study, n_boot=300)
    return study, html_path, md_path


def test_report_has_every_section(full_report):
    study, html_path, md_path = full_report
    assert html_path == study / "report.html" and md_path == study / "report.md"
    document = parse(html_path)
    for section in SECTIONS:
        assert section in document.headings, section
    markdown = md_path.read_text()
    for section in SECTIONS:
        assert f"\n## {section}\n" in markdown, section
    assert not list(study.glob(".*.tmp")), "temporary files left behind"


def test_report_is_self_contained(full_report):
    study, html_path, md_path = full_report
    document = parse(html_path)
    assert document.external == [], document.external
    assert len(document.images) >= 10 and all(src.startswith("data:image/png;base64,") for src in document.images)
    # The Markdown twin references the same figures as files next to it.
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_path.read_text())
    assert len(linked) == len(document.images)
    for link in linked:
        assert link.startswith(f"{FIGURE_DIR}/") and (study / link).is_file() and (study / link).stat().st_size > 0


def test_report_numbers_and_readings(full_report):
    _, html_path, md_path = full_report
    text = html_path.read_text()
    # Readings are generated from the numbers, including the SupCon-minus-CE spread with its interval.
    assert re.search(r"SupCon&#x27;s top-1 range over learning rates is [\d.]+ points vs [\d.]+ for cross-entropy "
                     r"\(difference -?[\d.]+, 95% CI \[-?[\d.]+, -?[\d.]+\]\)", text)
    assert "Diverged trials count as chance accuracy (10.0% top-1)" in text
    supcon_epochs = 2 * int((synthetic_results()["method"] == "supcon").sum())
    assert (f"contrastive: {supcon_epochs} epochs, median 1500 images/s, 4.0 s per epoch, 25% of it in "
            "augmentation") in text
    assert "paper (Table 2, R50)" in text and ">96.00<" in text  # CIFAR-10 SupCon, Table 2
    assert "mCE" in text and "baseline model" in text  # not ImageNet: a model of the table is the baseline
    markdown = md_path.read_text()
    assert "| trial_id |" in markdown and "config" not in markdown.split("## All trials")[1].split("\n")[4]


def test_pair_study_heat_maps(tmp_path):
    info = {"space": "optimizer_pairs", "design": "grid", "dataset": "cifar10", "model": "resnet18"}
    study = write_study(tmp_path / "pairs", results=synthetic_pairs(), info=info)
    html_path, md_path = build_report(study, n_boot=200)
    text = md_path.read_text()
    assert "(paper Supp. Table 8)" in text and "(paper Supp. Table 9)" in text
    assert "the paper's best optimizer pair is lars / rmsprop (78.7)" in text
    assert (study / FIGURE_DIR / "optimizer_pairs.png").is_file()


def test_searched_study_uses_the_persisted_optuna_study(tmp_path):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = tmp_path / "lr_search"
    rows = []
    for method in ("supcon", "ce"):
        persisted = optuna.create_study(study_name=f"lr_search-{method}", direction="maximize",
                                        storage=f"sqlite:///{tmp_path / 'optuna.db'}")
        for i, lr in enumerate([0.01, 0.03, 0.1, 0.3, 1.0, 3.0]):
            augmentation = ["simaugment", "autoaugment"][i % 2]
            value = 80 + 10 * lr / (1 + lr) + (augmentation == "autoaugment")
            persisted.add_trial(optuna.trial.create_trial(
                params={"lr": lr, "augmentation": augmentation}, value=value,
                distributions={"lr": optuna.distributions.FloatDistribution(1e-3, 10, log=True),
                               "augmentation": optuna.distributions.CategoricalDistribution(
                                   ["simaugment", "autoaugment"])}))
            row = synthetic_results().iloc[0].to_dict()
            rows.append({**row, "trial_id": f"{method}-{i}", "method": method, "varied": "search", "lr": lr,
                         "augmentation": augmentation, "val_top1": value, "test_top1": value - 0.5})
    write_study(study, results=pd.DataFrame(rows), info={"space": "lr_search", "design": "search",
                                                         "dataset": "cifar10"})
    shutil.move(tmp_path / "optuna.db", study / "optuna.db")
    text = build_report(study, n_boot=200)[1].read_text()
    assert "Optuna's evaluator on the persisted studies in optuna.db" in text
    assert "optuna PedAnovaImportanceEvaluator" in text


def test_table_text_is_escaped(full_report):
    _, html_path, md_path = full_report
    text = html_path.read_text()
    # The failed trial's error message has <, > and &: escaped, never markup.
    assert "&lt;tried to allocate 2 GiB&gt; &amp; more" in text
    assert "<tried to allocate" not in text
    assert "&lt;tried to allocate 2 GiB&gt; &amp; more" in md_path.read_text()


def test_partial_study_says_what_is_missing(tmp_path):
    running = small_results()
    running.loc[running.index[:3], "status"] = "pending"
    study = write_study(tmp_path / "running", results=running)
    html_path, md_path = build_report(study, n_boot=200)
    text = html_path.read_text()
    for section in SECTIONS:
        assert section in parse(html_path).headings
    assert "No robustness table" in text
    assert "not finished (status pending)" in text
    assert "planned trial(s) are not in the results table yet" in text
    assert "Failed trials and their errors" in text and "CUDA out of memory" in text


def test_empty_study_folder(tmp_path):
    study = tmp_path / "empty"
    study.mkdir()
    files = load_study(study)
    assert files.info is None and files.results is None and files.robustness is None
    assert any("study.json" in note for note in files.notes)
    html_path, md_path = build_report(study)
    text = html_path.read_text()
    assert "no results.parquet" in text and "study.json" in text
    assert all(section in parse(html_path).headings for section in SECTIONS)
    with pytest.raises(ValueError, match="does not exist"):
        build_report(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="chance \\| apart"):
        build_report(study, diverged="drop")


def small_results(**kwargs) -> pd.DataFrame:
    """Only the base and learning-rate trials: a report with few figures, quick to draw."""
    results = synthetic_results(**kwargs)
    return results.loc[results["varied"].isin(["base", "lr"])].reset_index(drop=True)


def test_broken_robustness_table_is_reported(tmp_path):
    robustness = synthetic_robustness().query("severity != 5")  # an evaluation that did not finish
    study = write_study(tmp_path / "broken", results=small_results(), robustness=robustness)
    html_path, _ = build_report(study, n_boot=200)
    text = html_path.read_text()
    assert "robustness summary:" in text and "severities" in text


def test_diverged_apart_and_unknown_classes(tmp_path):
    results = synthetic_results(dataset="imagefolder:/data/pets").query("varied in ['base', 'temperature']")
    study = write_study(tmp_path / "pets", results=results, info={"space": "t", "dataset": "imagefolder:/data/pets"})
    text = build_report(study, n_boot=200)[0].read_text()
    assert "shown apart instead" in text  # no class count: cannot place them at chance
    text = build_report(study, num_classes=37, n_boot=200)[0].read_text()
    assert "Diverged trials count as chance accuracy (2.7% top-1)" in text


def test_stale_figures_are_removed(tmp_path):
    study = write_study(tmp_path / "s", robustness=synthetic_robustness())
    build_report(study, n_boot=200)
    assert (study / FIGURE_DIR / "top1_vs_severity.png").is_file()
    (study / "robustness.parquet").unlink()
    build_report(study, n_boot=200)
    assert not (study / FIGURE_DIR / "top1_vs_severity.png").exists()


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # a real browser process, twice (where .ci/run installs chromium)
@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless browser check needs Debian's chromium at "
                    "/usr/bin/chromium (apt-get install chromium); .ci/run installs it")
def test_html_opens_in_headless_chromium(full_report, tmp_path):
    _, html_path, _ = full_report
    run = _chromium(["--dump-dom", html_path.as_uri()], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Refused to" in line]
    assert console == [], console
    dom = run.stdout
    for section in SECTIONS:
        assert f">{section}</h2>" in dom, section
    screenshot = Path(os.environ.get("REPORT_SCREENSHOT", tmp_path / "report.png"))
    run = _chromium(["--screenshot=" + str(screenshot), "--window-size=1200,2400", "--hide-scrollbars",
                     html_path.as_uri()], tmp_path)
    assert run.returncode == 0 and screenshot.stat().st_size > 10000, run.stderr[-2000:]


def test_supcon_trailing_at_a_short_budget_is_explained(tmp_path):
    """Issue 11: when SupCon trails cross-entropy after a few pre-training epochs, the report says why in one
    sentence instead of leaving the reader to conclude that SupCon is worse."""
    results = synthetic_results()
    trailing = results.copy()
    supcon = trailing["method"] == "supcon"
    trailing.loc[supcon, ["test_top1", "val_top1"]] -= 10.0  # SupCon now below CE everywhere
    _, md_path = build_report(write_study(tmp_path / "trailing", results=trailing), n_boot=200)
    text = " ".join(md_path.read_text().split())
    assert "2 epochs of contrastive pre-training here, against the paper's 1000 on CIFAR" in text
    _, md_path = build_report(write_study(tmp_path / "leading", results=results), n_boot=200)
    assert "of contrastive pre-training here" not in md_path.read_text()


def memory_bank_study(directory: Path) -> Path:
    """A memory_bank-shaped study (issue 15): SupCon over batch sizes without and with a memory of 4096 keys,
    cross-entropy over the same batch sizes with no memory_size (it ignores the memory), two seeds each; a
    history with the memory's cost per epoch, and a linear stage whose numbers must not count."""
    from test_plots import _row

    rows, history = [], []
    cells = [("supcon", b, m) for b in (128, 256) for m in (0, 4096)] + [("ce", b, None) for b in (128, 256)]
    for method, batch, memory in cells:
        for seed in (0, 1):
            top1 = {"supcon": 80.0, "ce": 78.0}[method] + batch / 128 + (3.0 if memory else 0.0) + (0.5 - seed)
            values = {"batch_size": batch, **({"memory_size": memory} if method == "supcon" else {})}
            trial = f"{method}-b{batch}-m{memory}-s{seed}"
            rows.append(_row(trial, method, "grid", values, seed, top1))
            stage = "contrastive" if method == "supcon" else "ce"
            for epoch in (1, 2):  # peaks grow over a run: each trial's peak is its last epoch's
                history.append({"trial_id": trial, "method": method, "stage": stage, "epoch": epoch, "loss": 1.0,
                                "lr": 0.5, "val_top1": 80.0, "val_top5": 99.0, "images_per_second": 1000.0,
                                "epoch_seconds": 10.0, "augment_fraction": 0.2,
                                "memory_fraction": 0.125 if memory else 0.0,
                                "peak_memory_mb": batch * (2.0 if memory else 1.0) * epoch / 2 + 100 * seed})
            if method == "supcon":
                history.append({"trial_id": trial, "method": method, "stage": "linear", "epoch": 1, "loss": 1.0,
                                "lr": 2.5, "val_top1": 80.0, "val_top5": 99.0, "images_per_second": 1000.0,
                                "epoch_seconds": 99.0, "augment_fraction": 0.2, "memory_fraction": 0.9,
                                "peak_memory_mb": 1.0e6})
    results = pd.DataFrame(rows)
    info = {"space": "memory_bank", "design": "grid", "dataset": "cifar10", "model": "resnet18", "epochs": 2,
            "seeds": [0, 1], "num_trials": len(results)}
    study = write_study(directory, results=results, info=info)
    pd.DataFrame(history).to_parquet(study / "history.parquet", index=False)
    return study


def test_memory_bank_study_has_the_memory_section(tmp_path):
    """Issue 15: top-1 vs batch size without and with the memory per method, and the memory's cost from the
    history (median share of the epoch, median of each trial's peak memory), for the memory_bank space only."""
    from analysis.report import memory_accuracy_table, memory_cost_table

    study = memory_bank_study(tmp_path / "memory_bank")
    files = load_study(study)
    accuracy = memory_accuracy_table(files.results, num_classes=10)
    assert accuracy[["method", "memory"]].values.tolist() == [
        ["SupCon", "off"], ["SupCon", "4096 keys"], ["cross-entropy", "off"]]
    assert accuracy[["batch 128", "batch 256"]].values.tolist() == [[81.0, 82.0], [84.0, 85.0], [79.0, 80.0]]
    assert accuracy["seeds"].tolist() == ["2", "2", "2"]
    cost = memory_cost_table(files.results, files.history)
    assert cost["memory"].tolist() == ["off", "off", "4096 keys", "4096 keys", "off", "off"]
    assert cost["batch size"].tolist() == [128, 256, 128, 256, 128, 256]
    assert cost["epochs"].tolist() == [4] * 6  # the linear stage's epochs are left out
    assert cost["memory share of epoch (%, median)"].tolist() == [0.0, 0.0, 12.5, 12.5, 0.0, 0.0]
    assert cost["epoch seconds (median)"].tolist() == [10.0] * 6
    # Each trial's peak is its last epoch's (batch x 2 with the memory, + 100 per seed); median over 2 seeds.
    assert cost["peak memory MiB (median over trials)"].tolist() == [178.0, 306.0, 306.0, 562.0, 178.0, 306.0]

    _, md_path = build_report(study, n_boot=200)
    text = md_path.read_text()
    assert "### Memory of past batches (paper Sec. 4.1)" in text
    section = text.split("### Memory of past batches")[1].split("\n## ")[0]
    assert "| SupCon | 4096 keys | 84 | 85 | 2 |" in section and "| cross-entropy | off | 79 | 80 | 2 |" in section
    assert "SupCon at batch 128 gains +3.00 points from a memory of 4096 keys (84.00 vs 81.00)" in section
    assert "reaches batch 256 without one (82.00)" in section
    assert "| SupCon | 4096 keys | 128 | 4 | 12.50 | 10 | 306 |" in section
    assert "accuracy_vs_batch_size_by_memory.png" in section  # the figure split by memory
    assert "accuracy_vs_batch_size.png" not in text  # not the one that mixes SupCon with and without memory

    other = build_report(write_study(tmp_path / "other", results=small_results()), n_boot=200)[1].read_text()
    assert "Memory of past batches" not in other


def test_history_without_the_newer_columns(tmp_path):
    """A study written before history.parquet had augment_fraction and epoch_seconds: the throughput line
    reports what there is instead of crashing the report (pd.to_numeric(None) is a scalar, not a Series)."""
    study = write_study(tmp_path / "older", results=small_results())
    history = pd.read_parquet(study / "history.parquet").drop(columns=["augment_fraction", "epoch_seconds"])
    history.to_parquet(study / "history.parquet", index=False)
    text = build_report(study, n_boot=200)[0].read_text()
    assert "Training history of" in text and "images/s, n/a s per epoch" in text
    assert "in augmentation" not in text
