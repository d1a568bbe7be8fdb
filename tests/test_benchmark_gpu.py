"""The prepared GPU benchmark (benchmarks/gpu.py) runs end to end on a CPU, and its MFU rests on a sound
FLOP count. Timings are never asserted: they belong to benchmarks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import gpu

RESNET50_FORWARD_FLOPS = 2 * 4.09e9  # per 224 px image: torchvision's 4.09 G multiply-adds


def test_smoke_run_measures_every_method_and_precision(capsys):
    assert gpu.main(["--smoke", "--device", "cpu"]) == 0
    table = [line.strip("|").split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in row] for row in table[2:]]  # after the header and its rule
    assert [row[:2] for row in rows] == [[method, precision] for method in gpu.METHODS for precision in gpu.PRECISIONS]
    assert all(float(row[2]) > 0 for row in rows)  # images/s


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
