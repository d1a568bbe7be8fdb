"""The prepared GPU benchmark (benchmarks/gpu.py) runs end to end on a CPU, and its MFU rests on a sound
FLOP count. Timings are never asserted: they belong to benchmarks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import gpu

RESNET50_FORWARD_FLOPS = 2 * 4.09e9  # per 224 px image: torchvision's 4.09 G multiply-adds


def tables(output: str) -> list[list[list[str]]]:
    """The markdown tables of a benchmark's output, each as its rows of cells (header and rule dropped)."""
    found: list[list[list[str]]] = []
    previous = ""
    for line in output.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                found.append([])
            found[-1].append([cell.strip() for cell in line.strip("|").split("|")])
        previous = line
    return [table[2:] for table in found]


@pytest.mark.slow  # the benchmark end to end: training steps of every method x precision, and the pipeline
def test_smoke_run_measures_every_method_and_precision_and_the_pipeline(capsys):
    assert gpu.main(["--smoke", "--device", "cpu"]) == 0
    steps, pipeline = tables(capsys.readouterr().out)
    assert [row[:2] for row in steps] == [[method, precision] for method in gpu.METHODS for precision in gpu.PRECISIONS]
    assert all(float(row[2]) > 0 for row in steps)  # images/s
    # The SupCon step fed by the batched augmentation: augmentation alone, step alone, their ratio, end to end.
    assert [row[:2] for row in pipeline] == [[policy, "bf16"] for policy in gpu.PIPELINE_POLICIES]
    for row in pipeline:
        augment, step, ratio, goal, end_to_end = row[2], row[3], row[4], row[5], row[6]
        assert float(augment) > 0 and float(step) > 0 and float(end_to_end) > 0  # "0" at < 0.5 views/s: a hang
        augment, step = float(augment), float(step)  # printed to whole views/s: each within 0.5
        assert (augment - 0.5) / (step + 0.5) - 0.01 <= float(ratio) <= (augment + 0.5) / max(step - 0.5, 1e-9) + 0.01
        assert goal == ("met" if float(ratio) >= gpu.PIPELINE_GOAL else "short")


def test_pipeline_can_be_left_out(capsys):
    assert gpu.main(["--smoke", "--device", "cpu", "--methods", "ce", "--precisions", "fp32", "--steps", "1",
                     "--pipeline-policies"]) == 0
    assert [[row[:2] for row in table] for table in tables(capsys.readouterr().out)] == [[["ce", "fp32"]]]


def test_pipeline_step_trains_on_the_augmented_views():
    setting = dataclasses.replace(gpu.SMOKE, warmup=0, steps=1)
    row = gpu.measure_pipeline("autoaugment", setting, torch.device("cpu"), {"bf16": 1.0})
    assert row["policy"] == "autoaugment" and row["mfu"] is not None and row["tflops"] > 0
    assert row["ratio"] == pytest.approx(row["augment_per_s"] / row["step_per_s"])


@pytest.mark.parametrize("method", gpu.METHODS)
def test_resnet50_step_counts_forward_and_backward_flops(method):
    step, images = gpu.make_step(method, "fp32", gpu.Setting(batch=1, views=2), torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        step()
    per_image = counter.get_total_flops() / images
    # Backward costs twice the forward, less the first convolution's input gradient, which nobody needs.
    assert 2.9 * RESNET50_FORWARD_FLOPS < per_image < 3.0 * RESNET50_FORWARD_FLOPS


def test_full_benchmark_needs_a_gpu(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(["--device", "cpu"])
    assert exit_info.value.code == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_known_devices_get_datasheet_peaks_and_given_peaks_win():
    assert gpu.device_peaks("NVIDIA H200", None, None) == {"bf16": 989.4, "fp32": 494.7}
    assert gpu.device_peaks("NVIDIA H200", 800.0, None) == {"bf16": 800.0, "fp32": 494.7}
    assert gpu.device_peaks("cpu", None, None) is None
    assert gpu.device_peaks("cpu", 100.0, 50.0) == {"bf16": 100.0, "fp32": 50.0}
